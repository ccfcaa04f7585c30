"""nina-superlink-backup: consistent backups of a SuperLink's state, and their restore (manual 4.3, 5).

  nina-superlink-backup backup [--keep N]   the state database and nina-membership's records, now
  nina-superlink-backup list                the backups, newest last
  nina-superlink-backup restore NAME        put backup NAME back (the SuperLink must be stopped)

The state database (facts.SUPERLINK_STATE_DB: every registered SuperNode key, the runs) is copied
with SQLite's online backup API while the SuperLink runs, never as a file copy (which can catch a
half-written page or miss the write-ahead log), then checked with `PRAGMA integrity_check`. The
organisations' records of nina-membership (facts.SUPERLINK_MEMBERS_DIR: which slug holds which
node id) go with it, so `nina-membership register` stays idempotent after a restore. A backup is a
directory facts.SUPERLINK_BACKUP_DIR/<UTC time>/ (root's, 0700) with state.db, members/ and
SHA256SUMS; `--keep N` (default facts.SUPERLINK_BACKUP_KEEP) removes all but the newest N.

restore refuses while superlink.service is active (stop it first: a running SuperLink would keep
writing its own state), checks the backup's SHA256SUMS and integrity, then replaces the state
database (and drops a stale -wal/-shm beside it, which SQLite would otherwise replay onto the
restored file) and the records. The state directory lies on the SuperLink's volume, whose top
directory the superlink user owns: root writes there only through a descriptor of the directory,
creating its file without following links, and renames it into place; the records directory is
root's (nina.host.trust). Start superlink.service afterwards.

Environment overrides (tests): NINA_STATE_DB, NINA_MEMBERS_DIR, NINA_BACKUP_DIR, NINA_SYSTEMCTL,
NINA_NOW (a UTC time YYYYmmddTHHMMSSZ instead of the clock).
Exit codes: 0 ok, 1 failed, 2 bad input or refused. A module of nina (nina.host): standard
library and nina.facts only.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator

from nina import facts
from nina.host import backups as backups_cli
from nina.host import trust
from nina.host.common import sha256_file, utc_stamp
from nina.host.failure import Failure, sayer

PROG = "nina-superlink-backup"
STATE_DB = os.environ.get("NINA_STATE_DB", facts.SUPERLINK_STATE_DB)
MEMBERS_DIR = os.environ.get("NINA_MEMBERS_DIR", facts.SUPERLINK_MEMBERS_DIR)
BACKUP_DIR = os.environ.get("NINA_BACKUP_DIR", facts.SUPERLINK_BACKUP_DIR)
SYSTEMCTL = os.environ.get("NINA_SYSTEMCTL", "systemctl")
NAME_RE = re.compile(r"^\d{8}T\d{6}Z(-\d+)?$")
RECORD_RE = re.compile(facts.SLUG_PATTERN.removesuffix(r"\Z").removesuffix("$") + r"\.(node_id|pub)\Z")
DB_FILE, MEMBERS, SUMS = "state.db", "members", "SHA256SUMS"


say = sayer(PROG)


def _integrity(path: str) -> None:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        result = con.execute("PRAGMA integrity_check").fetchall()
    except sqlite3.DatabaseError as exc:
        raise Failure(f"{path} is not a sound SQLite database: {exc}") from None
    finally:
        con.close()
    if result != [("ok",)]:
        raise Failure(f"{path} fails SQLite's integrity check: {result[:3]}")


def _backup_root() -> int:
    """A descriptor of the backup directory (root's alone, made if missing)."""
    try:
        return trust.open_dir(BACKUP_DIR, create=True, mode=0o700)
    except trust.Untrusted as exc:
        raise Failure(f"{BACKUP_DIR}: {exc}", 2) from None


def backups() -> list[str]:
    fd = _backup_root()
    try:
        return sorted(n for n in os.listdir(fd) if NAME_RE.match(n))
    finally:
        os.close(fd)


def _records() -> Iterator[tuple[str, bytes]]:
    """nina-membership's records (name, content), read through a descriptor of their directory."""
    try:
        fd = trust.open_dir(MEMBERS_DIR, strict=False)
    except FileNotFoundError:
        return
    except trust.Untrusted as exc:
        raise Failure(f"{MEMBERS_DIR}: {exc}", 2) from None
    try:
        for name in sorted(os.listdir(fd)):
            if RECORD_RE.match(name):
                rfd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                with open(rfd, "rb") as fh:
                    yield name, fh.read(64 * 1024)
    finally:
        os.close(fd)


def backup(keep: int) -> str:
    if not os.path.exists(STATE_DB):
        raise Failure(f"no state database at {STATE_DB} (has the SuperLink ever started?)", 2)
    root = _backup_root()
    os.close(root)
    name = utc_stamp()
    n = 1
    while os.path.exists(os.path.join(BACKUP_DIR, name)):
        name = f"{utc_stamp()}-{n}"
        n += 1
    work = tempfile.mkdtemp(prefix=".partial-", dir=BACKUP_DIR)
    try:
        target = os.path.join(work, DB_FILE)
        source = sqlite3.connect(f"file:{STATE_DB}?mode=ro", uri=True, timeout=30)
        dest = sqlite3.connect(target)
        try:
            source.backup(dest)  # SQLite's online backup: a consistent snapshot while the SuperLink writes
        except sqlite3.DatabaseError as exc:
            raise Failure(f"cannot back up {STATE_DB}: {exc}") from None
        finally:
            dest.close()
            source.close()
        _integrity(target)
        os.mkdir(os.path.join(work, MEMBERS), 0o700)
        for record, data in _records():
            with open(os.path.join(work, MEMBERS, record), "wb") as fh:
                fh.write(data)
        files = [DB_FILE, *(f"{MEMBERS}/{r}" for r in sorted(os.listdir(os.path.join(work, MEMBERS))))]
        with open(os.path.join(work, SUMS), "w", encoding="utf-8") as fh:
            fh.writelines(f"{sha256_file(os.path.join(work, f))}  {f}\n" for f in files)
        os.chmod(work, 0o700)
        os.rename(work, os.path.join(BACKUP_DIR, name))
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    for old in backups()[:-keep]:
        shutil.rmtree(os.path.join(BACKUP_DIR, old))
        say(f"removed the old backup {old} (keeping {keep})")
    return name


def _checked(name: str) -> str:
    if not NAME_RE.match(name):
        raise Failure(f"{name!r} is not a backup name; `{PROG} list` shows them", 2)
    path = os.path.join(BACKUP_DIR, name)
    if name not in backups():
        raise Failure(f"no backup {name} in {BACKUP_DIR}; `{PROG} list` shows them", 2)
    try:
        with open(os.path.join(path, SUMS), encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except OSError as exc:
        raise Failure(f"backup {name} has no readable {SUMS}: {exc.strerror}", 2) from None
    listed = {}
    for line in lines:
        digest, _, rel = line.partition("  ")
        record = rel.removeprefix(f"{MEMBERS}/")
        if not re.fullmatch(r"[0-9a-f]{64}", digest) or not (rel == DB_FILE or (record != rel and RECORD_RE.match(record))):
            raise Failure(f"backup {name}: unexpected line in {SUMS}: {line[:80]!r}", 2)
        listed[rel] = digest
    present = {DB_FILE, *(f"{MEMBERS}/{r}" for r in os.listdir(os.path.join(path, MEMBERS)))}
    if set(listed) != present:
        raise Failure(f"backup {name}: its files differ from {SUMS} (missing or added: {sorted(set(listed) ^ present)})", 2)
    for rel, digest in listed.items():
        if sha256_file(os.path.join(path, rel)) != digest:
            raise Failure(f"backup {name}: {rel} does not match {SUMS} (changed since the backup)", 2)
    _integrity(os.path.join(path, DB_FILE))
    return path


def _active() -> bool:
    return subprocess.run([SYSTEMCTL, "is-active", "--quiet", facts.SUPERLINK_UNIT], check=False).returncode == 0


def _owner() -> tuple[int, int]:
    """The superlink user and fl_system group (the caller's own ids where they do not exist: tests)."""
    try:
        return pwd.getpwnam(facts.SERVICE_USERS["superlink"]).pw_uid, grp.getgrnam(facts.SYSTEM_GROUP).gr_gid
    except KeyError:
        return os.getuid(), os.getgid()


def restore(name: str) -> None:
    path = _checked(name)
    if _active():
        raise Failure(f"{facts.SUPERLINK_UNIT} is running; stop it first (`systemctl stop {facts.SUPERLINK_UNIT}`), then restore", 2)
    state_dir, db_name = os.path.split(STATE_DB)
    parent = os.path.dirname(state_dir)
    why = trust.problem(parent)
    if why:
        raise Failure(f"will not write into {state_dir}: {why}", 2)
    dfd = os.open(state_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        tmp = f".{db_name}.restore-{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dfd)
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dfd)
        with open(out, "wb") as dst, open(os.path.join(path, DB_FILE), "rb") as src:
            shutil.copyfileobj(src, dst)
            uid, gid = _owner()
            os.fchown(dst.fileno(), uid, gid)
            dst.flush()
            os.fsync(dst.fileno())
        for stale in (f"{db_name}-wal", f"{db_name}-shm", f"{db_name}-journal"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(stale, dir_fd=dfd)
        os.rename(tmp, db_name, src_dir_fd=dfd, dst_dir_fd=dfd)
        os.fsync(dfd)
    finally:
        os.close(dfd)
    try:
        mfd = trust.open_dir(MEMBERS_DIR, create=True, strict=False, mode=0o750)
    except trust.Untrusted as exc:
        raise Failure(f"{MEMBERS_DIR}: {exc}", 2) from None
    try:
        for old in os.listdir(mfd):
            if RECORD_RE.match(old):
                os.unlink(old, dir_fd=mfd)
        for record in sorted(os.listdir(os.path.join(path, MEMBERS))):
            with open(os.path.join(path, MEMBERS, record), "rb") as fh:
                data = fh.read()
            rfd = os.open(record, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=mfd)
            with open(rfd, "wb") as out_fh:
                out_fh.write(data)
    finally:
        os.close(mfd)


def main(argv: list[str] | None = None) -> int:
    parser = backups_cli.command_line(
        PROG,
        "Backups of the SuperLink's state, and their restore.",
        keep=facts.SUPERLINK_BACKUP_KEEP,
        backup_help="back up the state database and the membership records now",
        restore_help="put a backup back (the SuperLink must be stopped)",
    )
    args = parser.parse_args(argv)

    def do_backup(keep: int) -> str:
        return f"backed up {STATE_DB} and {MEMBERS_DIR} to {os.path.join(BACKUP_DIR, backup(keep))}"

    def do_restore(name: str) -> str:
        restore(name)
        return f"restored {name} to {STATE_DB} and {MEMBERS_DIR}; start {facts.SUPERLINK_UNIT} now"

    return backups_cli.run(args, backups_cli.Commands(say, do_backup, backups, do_restore, lambda: facts.SUPERLINK_BACKUP_WHAT))


if __name__ == "__main__":
    sys.exit(main())
