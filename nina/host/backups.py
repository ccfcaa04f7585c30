"""What nina's backup programs share (nina-superlink-backup: nina.host.state_backup, nina-db-backup:
nina.host.db_backup): the `backup [--keep N] | list | restore NAME` command line, its dispatch, and
its exit codes (0 ok, 1 failed, 2 bad input or refused; every failure one line on stderr), and
the freshness metrics every `backup` run leaves, success or failure, for node exporter's textfile
collector (nina.monitoring alerts on them: BackupFailed, BackupStale, BackupMissing):

  nina_backup_last_run_success{what}                1 if the last backup run succeeded, else 0
  nina_backup_last_run_timestamp_seconds{what}      when the last backup run ended (Unix time)
  nina_backup_last_success_timestamp_seconds{what}  when the newest backup there is was taken (Unix
                                                    time, from its name; absent when none can be listed)

`what` is the thing backed up (facts.SUPERLINK_BACKUP_WHAT, or the database's name); each has its
own file, facts.BACKUP_METRICS_FILE, in facts.NODE_EXPORTER_TEXTFILE_DIR (NINA_TEXTFILE_DIR in
tests), written atomically (nina.host.metrics). A run whose `what` is unknown (a manual run naming
no database where the host has several) writes none. A backup that succeeded but whose metrics
cannot be written exits 1: the unit fails, and its alert says so.

A module of nina (nina.host): standard library and nina.facts only.
"""

from __future__ import annotations

import argparse
import calendar
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from nina import facts
from nina.host import metrics, trust
from nina.host.common import utc_stamp
from nina.host.failure import Failure

WHAT_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}\Z")
STAMP_RE = re.compile(r"(\d{8}T\d{6}Z)(-\d+)?\Z")


@dataclass(frozen=True)
class Commands:
    """A backup program's three commands; `backup` and `restore` return the line to print."""

    say: Callable[[str], None]
    backup: Callable[[int], str]  # keep -> what was done
    listing: Callable[[], list[str]]  # the backups' names, newest last
    restore: Callable[[str], str]  # name -> what was done and what to start now
    what: Callable[[], str | None]  # the metrics' `what` label; None: unknown, no metrics


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
            if args.keep < 1:  # a typing error, not a failed backup: no metrics
                raise Failure("--keep must be at least 1", 2)
            try:
                done = commands.backup(args.keep)
            except BaseException:
                problem = record(commands, False)
                if problem:
                    commands.say(f"error: {problem}")
                raise
            print(done)
            problem = record(commands, True)
            if problem:
                raise Failure(f"the backup is made, but {problem}")
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


# --- the freshness metrics -----------------------------------------------------------------------


def seconds(stamp: str) -> int | None:
    """The Unix time of a backup's name (facts: YYYYmmddTHHMMSSZ, maybe -N), None if it is none."""
    m = STAMP_RE.match(stamp)
    if not m:
        return None
    try:
        return calendar.timegm(time.strptime(m.group(1), "%Y%m%dT%H%M%SZ"))
    except ValueError:
        return None


def exposition(what: str, ok: bool, ran: int, newest: int | None) -> str:
    """The text of `what`'s metrics file: the last run's outcome and end, the newest backup's time."""
    last = metrics.Family("nina_backup_last_run_success", "gauge", "1 if the last backup run succeeded, else 0 (see the unit's journal)")
    ended = metrics.Family("nina_backup_last_run_timestamp_seconds", "gauge", "When the last backup run ended (Unix time)")
    success = metrics.Family("nina_backup_last_success_timestamp_seconds", "gauge", "When the newest backup there is was taken (Unix time)")
    last.add(1 if ok else 0, what=what)
    ended.add(ran, what=what)
    if newest is not None:
        success.add(newest, what=what)
    return metrics.exposition([last, ended, success])


def record(commands: Commands, ok: bool) -> str | None:
    """Write the metrics of a backup run that succeeded (`ok`) or failed; what went wrong, or None."""
    try:
        what = commands.what()
    except (Failure, OSError):
        what = None
    if what is None:
        return None
    if not WHAT_RE.match(what):
        return f"{what!r} cannot name a metrics file"
    try:
        stamps = [s for s in (seconds(n) for n in commands.listing()) if s is not None]
    except (Failure, OSError):
        stamps = []  # what cannot be listed has no newest backup to show
    ran = seconds(utc_stamp()) or int(time.time())
    directory = os.environ.get("NINA_TEXTFILE_DIR", facts.NODE_EXPORTER_TEXTFILE_DIR)
    name = facts.BACKUP_METRICS_FILE.format(what=what)
    try:
        metrics.write(directory, name, exposition(what, ok, ran, max(stamps, default=None)))
    except (OSError, trust.Untrusted) as exc:
        return f"cannot write {os.path.join(directory, name)}: {exc}"
    return None
