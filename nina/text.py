"""Strings that reach files, terminals and READMEs: which characters they may not hold.

Control characters (line breaks, escapes, NUL), format characters (bidirectional overrides,
zero-width marks), surrogates, private-use and unassigned code points, and line or paragraph
separators are refused in every name and value of the stack config and outputs: a line break
in a name splits a config line, an escape sequence rewrites an operator's terminal, a bidi
override makes a README say something else than its bytes. PEM fields allow line breaks only.
"""

from __future__ import annotations

import unicodedata

from nina.host import common

_REFUSED = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}
_CONTROL_NAMES = {"\n": "LINE FEED", "\r": "CARRIAGE RETURN", "\t": "TAB", "\x1b": "ESCAPE", "\x00": "NUL", "\x7f": "DELETE"}


def unsafe_character(value: str, *, newlines: bool = False) -> str | None:
    """A description of the first character `value` may not hold (None if it holds none)."""
    for i, ch in enumerate(value):
        if newlines and ch == "\n":
            continue
        if unicodedata.category(ch) in _REFUSED:
            name = "LONE SURROGATE" if unicodedata.category(ch) == "Cs" else _CONTROL_NAMES.get(ch) or unicodedata.name(ch, "")
            label = f"U+{ord(ch):04X}" + (f" {name}" if name else "")
            return f"{label} at position {i + 1}"
    return None


def refusal(value: str, *, newlines: bool = False) -> str | None:
    """The problem message for a string holding a refused character, or None."""
    found = unsafe_character(value, newlines=newlines)
    if found is None:
        return None
    return f"contains a control or invisible character ({found}); write it as plain printable text"


# Text that someone else wrote (a node's report), escaped and bounded for the operator's terminal:
# the one function nina.host's programs use too (they cannot import this module on a host).
shown = common.printable
