"""What nina's backup programs share (nina-superlink-backup: nina.host.state_backup, nina-db-backup:
nina.host.db_backup): the `backup [--keep N] | list | restore NAME` command line, its dispatch, and
its exit codes (0 ok, 1 failed, 2 bad input or refused; every failure one line on stderr).

A module of nina (nina.host): standard library and nina.facts only.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

from nina.host.failure import Failure


@dataclass(frozen=True)
class Commands:
    """A backup program's three commands; `backup` and `restore` return the line to print."""

    say: Callable[[str], None]
    backup: Callable[[int], str]  # keep -> what was done
    listing: Callable[[], list[str]]  # the backups' names, newest last
    restore: Callable[[str], str]  # name -> what was done and what to start now


def command_line(
    prog: str, description: str, *, keep: int, backup_help: str, restore_help: str, name_help: str | None = None
) -> argparse.ArgumentParser:
    """The parser of `backup [--keep N]`, `list` and `restore NAME` (a program may add options of its own)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("backup", help=backup_help)
    b.add_argument("--keep", type=int, default=keep, help="backups to keep (the newest)")
    sub.add_parser("list", help="the backups, newest last")
    r = sub.add_parser("restore", help=restore_help)
    r.add_argument("name", help=name_help)
    return parser


def run(args: argparse.Namespace, commands: Commands) -> int:
    """Run the command `args` names; a Failure or OSError is one line on stderr and the exit code."""
    try:
        if args.command == "backup":
            if args.keep < 1:
                raise Failure("--keep must be at least 1", 2)
            print(commands.backup(args.keep))
        elif args.command == "list":
            for name in commands.listing():
                print(name)
        else:
            print(commands.restore(args.name))
    except Failure as exc:
        commands.say(f"error: {exc}")
        return exc.code
    except OSError as exc:
        commands.say(f"error: {exc}")
        return 1
    return 0
