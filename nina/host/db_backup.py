"""nina-db-backup: backups of a service's database on the managed Postgres (Trove), and their restore (manual 4.3.1, 4.3.2).

  nina-db-backup [--database DB] backup [--keep N]   pg_dump the service's schema now
  nina-db-backup [--database DB] list                the backups, newest last
  nina-db-backup [--database DB] restore NAME        put backup NAME back (its service must be stopped)

DB is a database of facts.DATABASE_CLIENTS (default: the only one, or the one whose env file this host has). Its
role and schema come from facts.DATABASES and facts.DATABASE_SCHEMAS, its libpq settings (PGHOST,
PGPORT, PGUSER, PGDATABASE, PGPASSWORD: the service's own Trove role, never an admin) from the
service's env file (root's, 0600, delivered with the service), and pass to pg_dump, pg_restore and
psql in their environment, never on a command line. Those three run as facts.DB_BACKUP_CLIENT_USER
(they parse what the network sends; root keeps the files and hands them descriptors).

backup: `pg_dump -Fc --schema <schema>` as the role, into a new directory (root's, 0700) under
facts.DB_BACKUP_VOLUME/<database>/, checked with `pg_restore --list` (an archive of that database
and schema) and read to its end by pg_restore, then SHA256SUMS, then renamed to <UTC time>/ with <database>.dump (0600):
a backup is whole or absent. `--keep N` removes all but the newest N. The volume must be mounted
(a Cinder volume, so backups outlive the VM; not copied off-site: README).

restore: checks the backup against SHA256SUMS and `pg_restore --list`, refuses while the service
using the database is active (stop it first), has pg_restore write the archive as SQL
(`--no-owner`: the role owns what it restores) into a root-only file beside the backups, and only
when that succeeded applies it in one transaction as the role (`psql --single-transaction`):
drop the schema with everything in it (objects a newer release made since the backup included),
replay the archive. All or nothing: a failure rolls everything back. Run it again and the result is the same. Start the service afterwards.

Environment overrides (tests): NINA_DB_BACKUP_ROOT (instead of the volume, not checked for a
mount unless NINA_REQUIRE_MOUNT=1), NINA_DB_ENV_FILE, NINA_SYSTEMCTL, NINA_PG_BINDIR,
NINA_DB_CLIENT_USER ("" runs the clients as the caller), NINA_NOW (YYYYmmddTHHMMSSZ).
Exit codes: 0 ok, 1 failed, 2 bad input or refused. A module of nina (nina.host): standard
library and nina.facts only.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from nina import facts
from nina.host import backups as backups_cli
from nina.host import trust
from nina.host.common import sha256_file, utc_stamp
from nina.host.failure import Failure, sayer

PROG = "nina-db-backup"
NAME_RE = re.compile(r"^\d{8}T\d{6}Z(-\d+)?\Z")
PG_NAME_RE = re.compile(r"[a-z_][a-z0-9_]{0,62}")
ENV_KEY_RE = re.compile(r"PG[A-Z]+")
SUMS = "SHA256SUMS"
CLIENT_PATH = "/usr/bin:/bin"

say = sayer(PROG)


@dataclass(frozen=True)
class Target:
    """A database to back up: its names, the env file with the role's libpq settings, the unit using it."""

    database: str
    role: str
    schema: str
    env_file: str
    unit: str

    @property
    def dump(self) -> str:
        return f"{self.database}.dump"


def target(database: str | None) -> Target:
    known = facts.DATABASE_CLIENTS
    if database is None:
        present = [db for db, (env_file, _unit) in known.items() if len(known) == 1 or os.path.exists(_env_file(env_file))]
        if len(present) != 1:
            raise Failure(
                f"name the database with --database ({', '.join(sorted(known))}); this host has env files of {present or 'none'}", 2
            )
        database = present[0]
    if database not in known:
        raise Failure(f"unknown database {database!r}; known: {', '.join(sorted(known))}", 2)
    env_file, unit = known[database]
    t = Target(database, facts.DATABASES[database], facts.DATABASE_SCHEMAS[database], _env_file(env_file), unit)
    for name in (t.database, t.role, t.schema):
        if not PG_NAME_RE.fullmatch(name):
            raise Failure(f"{name!r} is not a PostgreSQL name nina writes (facts)", 2)
    return t


def _env_file(path: str) -> str:
    return os.environ.get("NINA_DB_ENV_FILE", path)


def _root() -> str:
    return os.environ.get("NINA_DB_BACKUP_ROOT", facts.DB_BACKUP_VOLUME)


def _bin(name: str) -> str:
    default = {"pg_dump": facts.PG_DUMP, "pg_restore": facts.PG_RESTORE, "psql": facts.PSQL}[name]
    bindir = os.environ.get("NINA_PG_BINDIR")
    return os.path.join(bindir, name) if bindir else default


# --- the role's libpq settings ---------------------------------------------------------------


def read_env(t: Target) -> dict[str, str]:
    """The PG* settings of `t`'s env file, which must be root's alone (a password is in it)."""
    why = trust.problem(t.env_file)
    if why:
        raise Failure(f"will not read {t.env_file}: {why}", 2)
    try:
        fd = os.open(t.env_file, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise Failure(f"{t.env_file} is missing (the {t.unit.removesuffix('.service')} delivery writes it)", 2) from None
    with open(fd, encoding="utf-8") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode) or stat.S_IMODE(st.st_mode) & 0o077:
            raise Failure(f"{t.env_file} must be a file only root reads (mode {stat.S_IMODE(st.st_mode):04o}; chmod 600 it)", 2)
        lines = fh.read(64 * 1024).splitlines()
    env: dict[str, str] = {}
    for n, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not ENV_KEY_RE.fullmatch(key):
            raise Failure(f"{t.env_file}:{n}: expected PGNAME=value", 2)  # never the line: it may hold the password
        env[key] = value
    for key in ("PGHOST", "PGUSER", "PGPASSWORD"):
        if not env.get(key):
            raise Failure(f"{t.env_file} sets no {key}", 2)
    if env["PGUSER"] != t.role or env.get("PGDATABASE", t.database) != t.database:
        raise Failure(f"{t.env_file} is for {env['PGUSER']} in {env.get('PGDATABASE')}, not {t.role} in {t.database}", 2)
    return env


def client_env(settings: dict[str, str]) -> dict[str, str]:
    """The clients' whole environment: a fixed PATH and locale, and the role's PG* (the password included)."""
    return {
        "PATH": CLIENT_PATH,
        "LC_ALL": "C.UTF-8",
        "HOME": "/",
        "PGAPPNAME": PROG,
        "PGCONNECT_TIMEOUT": "30",
        **settings,
    }


def _as_client() -> dict[str, Any]:
    """subprocess arguments that run a client as facts.DB_BACKUP_CLIENT_USER (when root)."""
    name = os.environ.get("NINA_DB_CLIENT_USER", facts.DB_BACKUP_CLIENT_USER)
    if not name or os.geteuid() != 0:
        return {"cwd": "/"}
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        raise Failure(f"user {name} does not exist (pg_dump and pg_restore run as it)", 2) from None
    return {"cwd": "/", "user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}


# --- the commands (no secret in any of them) ----------------------------------------------------


def dump_argv(t: Target) -> list[str]:
    return [_bin("pg_dump"), "--no-password", "--format=custom", f"--schema={t.schema}", f"--dbname={t.database}"]


def list_argv() -> list[str]:
    return [_bin("pg_restore"), "--list"]


def read_argv() -> list[str]:
    """The whole archive read (every data block decompressed), nothing written."""
    return [_bin("pg_restore"), "--file=/dev/null"]


def script_argv() -> list[str]:
    """The archive as SQL: without owners (the role owns what it restores)."""
    return [_bin("pg_restore"), "--no-owner", "--file=-"]


def apply_argv(t: Target) -> list[str]:
    """psql in one transaction: check who and where, drop the schema with all it holds, replay the archive."""
    preamble = (
        "SET client_min_messages = warning; "
        f"DO $$ BEGIN IF current_user <> '{t.role}' OR current_database() <> '{t.database}' THEN "
        f"RAISE EXCEPTION 'nina: restore as {t.role} in {t.database}, not as % in %', current_user, current_database(); "
        "END IF; END $$; "
        f"DROP SCHEMA IF EXISTS {t.schema} CASCADE;"
    )
    return [_bin("psql"), "--no-psqlrc", "--quiet", "--no-password", "--set=ON_ERROR_STOP=1", "--single-transaction",
            f"--dbname={t.database}", f"--command={preamble}", "--file=-"]  # fmt: skip


def _said(stderr: bytes | str) -> str:
    """One line from a client's stderr: its first error, else its last line."""
    text = stderr.decode("utf-8", "replace") if isinstance(stderr, bytes) else stderr
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower() or "fatal" in ln.lower()]
    line = (errors or lines or ["(nothing on stderr)"])[0]
    return line if len(line) <= 300 else line[:297] + "..."


def _run(argv: list[str], env: dict[str, str], **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(argv, env=env, stderr=subprocess.PIPE, check=False, **_as_client(), **kwargs)
    except FileNotFoundError:
        raise Failure(f"{argv[0]} is missing (install {facts.POSTGRES_CLIENT_PACKAGE})") from None
    except PermissionError as exc:
        raise Failure(f"cannot run {argv[0]}: {exc.strerror}") from None


def check_archive(t: Target, path: str) -> int:
    """`pg_restore --list` of the archive: readable, of `t`'s database and schema. Its number of entries."""
    with open(path, "rb") as fh:
        proc = _run(list_argv(), client_env({}), stdin=fh, stdout=subprocess.PIPE)
    if proc.returncode:
        raise Failure(f"{path} is not a readable pg_dump archive: {_said(proc.stderr)}")
    listing = proc.stdout.decode("utf-8", "replace").splitlines()
    if f";     dbname: {t.database}" not in listing:
        raise Failure(f"{path} is not an archive of database {t.database}")
    if not any(re.fullmatch(rf"\d+; \d+ \d+ SCHEMA - {t.schema} \S+", line) for line in listing):
        raise Failure(f"{path} does not hold schema {t.schema}")
    with open(path, "rb") as fh:  # every data block read and decompressed, not just the table of contents
        whole = _run(read_argv(), client_env({}), stdin=fh, stdout=subprocess.DEVNULL)
    if whole.returncode:
        raise Failure(f"{path} cannot be read to its end: {_said(whole.stderr)}")
    return sum(1 for line in listing if line and not line.startswith(";"))


# --- the backup directory ----------------------------------------------------------------------


@contextlib.contextmanager
def backup_dir(t: Target) -> Iterator[str]:
    """The database's backup directory (root's alone, made if missing), locked for this run."""
    root = _root()
    must_mount = "NINA_DB_BACKUP_ROOT" not in os.environ or os.environ.get("NINA_REQUIRE_MOUNT") == "1"
    if must_mount and not os.path.ismount(root):
        raise Failure(f"{root} is not mounted (the backups' volume); see `journalctl -b -u cloud-init` and /etc/fstab", 2)
    path = os.path.join(root, t.database)
    try:
        fd = trust.open_dir(path, create=True, mode=0o700)
    except trust.Untrusted as exc:
        raise Failure(f"{path}: {exc}", 2) from None
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) & 0o077:
            os.fchmod(fd, 0o700)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Failure(f"another {PROG} is working on {path}; try again when it has finished", 2) from None
        yield path
    finally:
        os.close(fd)


def _names(path: str) -> list[str]:
    return sorted(n for n in os.listdir(path) if NAME_RE.match(n))


def backups(t: Target) -> list[str]:
    with backup_dir(t) as path:
        return _names(path)


def backup(t: Target, keep: int) -> tuple[str, int, int]:
    """A new backup of `t`: (its name, the archive's size in bytes, its entries)."""
    settings = read_env(t)
    with backup_dir(t) as path:
        for stale in os.listdir(path):
            if stale.startswith(".partial-"):  # a run that died: never a backup
                shutil.rmtree(os.path.join(path, stale), ignore_errors=True)
        name, n = utc_stamp(), 1
        while os.path.exists(os.path.join(path, name)):
            name, n = f"{utc_stamp()}-{n}", n + 1
        work = tempfile.mkdtemp(prefix=".partial-", dir=path)
        try:
            dump = os.path.join(work, t.dump)
            fd = os.open(dump, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            with open(fd, "wb") as out:
                proc = _run(dump_argv(t), client_env(settings), stdout=out)
                out.flush()
                os.fsync(out.fileno())
            if proc.returncode:
                raise Failure(f"pg_dump of {t.database} as {t.role} failed: {_said(proc.stderr)}")
            entries = check_archive(t, dump)
            with open(os.path.join(work, SUMS), "w", encoding="utf-8") as fh:
                fh.write(f"{sha256_file(dump)}  {t.dump}\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(work, 0o700)
            os.rename(work, os.path.join(path, name))
            dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        for old in _names(path)[:-keep]:
            shutil.rmtree(os.path.join(path, old))
            say(f"removed the old backup {old} of {t.database} (keeping {keep})")
        return name, os.path.getsize(os.path.join(path, name, t.dump)), entries


def _checked(t: Target, path: str, name: str) -> str:
    """The archive of backup `name`, once it matches its SHA256SUMS and reads as an archive of `t`."""
    if not NAME_RE.match(name):
        raise Failure(f"{name!r} is not a backup name; `{PROG} list` shows them", 2)
    where = os.path.join(path, name)
    if name not in _names(path):
        raise Failure(f"no backup {name} in {path}; `{PROG} list` shows them", 2)
    try:
        with open(os.path.join(where, SUMS), encoding="utf-8") as fh:
            lines = fh.read(4096).splitlines()
    except OSError as exc:
        raise Failure(f"backup {name} has no readable {SUMS}: {exc.strerror}", 2) from None
    digest, _, rel = (lines[0] if len(lines) == 1 else "").partition("  ")
    if not re.fullmatch(r"[0-9a-f]{64}", digest) or rel != t.dump:
        raise Failure(f"backup {name}: {SUMS} should hold one line for {t.dump}", 2)
    present = sorted(os.listdir(where))
    if present != sorted([SUMS, t.dump]):
        raise Failure(f"backup {name}: expected only {t.dump} and {SUMS}, found {present}", 2)
    dump = os.path.join(where, t.dump)
    if sha256_file(dump) != digest:
        raise Failure(f"backup {name}: {t.dump} does not match {SUMS} (changed since the backup); not restoring it", 2)
    check_archive(t, dump)
    return dump


def _active(unit: str) -> bool:
    systemctl = os.environ.get("NINA_SYSTEMCTL", "systemctl")
    return subprocess.run([systemctl, "is-active", "--quiet", unit], check=False).returncode == 0


def restore(t: Target, name: str) -> None:
    settings = read_env(t)
    with backup_dir(t) as path:
        if os.path.isabs(name) and os.path.dirname(os.path.normpath(name)) == path:
            name = os.path.basename(os.path.normpath(name))  # the directory's path, as `list` helps find it
        dump = _checked(t, path, name)
        if _active(t.unit):
            raise Failure(f"{t.unit} is active; stop it first (`sudo systemctl stop {t.unit}`), restore, then start it", 2)
        env = client_env(settings)
        # The archive as SQL first, whole, into root's own directory: psql commits only a script
        # that pg_restore wrote to its end (a stream cut short would be committed as it stands).
        work = tempfile.mkdtemp(prefix=".partial-restore-", dir=path)
        try:
            script = os.path.join(work, "restore.sql")
            sfd = os.open(script, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            with open(dump, "rb") as src, open(sfd, "wb") as out:
                made = _run(script_argv(), env, stdin=src, stdout=out)
            if made.returncode:
                raise Failure(f"pg_restore could not read backup {name}: {_said(made.stderr)}; the database is unchanged")
            with open(script, "rb") as src:
                applied = _run(apply_argv(t), env, stdin=src, stdout=subprocess.DEVNULL)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        if applied.returncode:
            raise Failure(f"restoring {name} into {t.database} failed, the database is unchanged: {_said(applied.stderr)}")


def main(argv: list[str] | None = None) -> int:
    parser = backups_cli.command_line(
        PROG,
        "Backups of a service's database on the managed Postgres, and their restore.",
        keep=facts.DB_BACKUP_KEEP,
        backup_help="pg_dump the service's schema now",
        restore_help="put a backup back (the service must be stopped)",
        name_help="a backup's name (`list`), or its directory",
    )
    parser.add_argument("--database", help=f"one of {', '.join(sorted(facts.DATABASE_CLIENTS))} (default: the one this host uses)")
    args = parser.parse_args(argv)

    def do_backup(keep: int) -> str:
        t = target(args.database)
        started = time.monotonic()
        name, size, entries = backup(t, keep)
        where = os.path.join(_root(), t.database, name)
        return (
            f"backed up {t.database} (schema {t.schema}, {entries} entries, {size} bytes) to {where} in {time.monotonic() - started:.1f}s"
        )

    def do_list() -> list[str]:
        return backups(target(args.database))

    def do_restore(name: str) -> str:
        t = target(args.database)
        started = time.monotonic()
        restore(t, name)
        return f"restored {name} into {t.database} (schema {t.schema}) in {time.monotonic() - started:.1f}s; start {t.unit} now"

    return backups_cli.run(args, backups_cli.Commands(say, do_backup, do_list, do_restore, lambda: target(args.database).database))


if __name__ == "__main__":
    sys.exit(main())
