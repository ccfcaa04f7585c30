"""What nina's root-run host programs share: one error type with its exit code, and one way to
say things on stderr. A module of nina (nina.host): standard library only."""

from __future__ import annotations

import sys
from collections.abc import Callable


class Failure(Exception):
    """A failure to report in one line; `code` is the exit code (1 failed, 2 bad input or refused)."""

    def __init__(self, msg: str, code: int = 1) -> None:
        super().__init__(msg)
        self.code = code


def sayer(prog: str) -> Callable[[str], None]:
    """`say(msg)` for program `prog`: `prog: msg` on stderr, flushed at once."""

    def say(msg: str) -> None:
        print(f"{prog}: {msg}", file=sys.stderr, flush=True)

    return say
