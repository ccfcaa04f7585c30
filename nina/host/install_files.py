"""nina-install-files: install files delivered by nina (pulumi-command pipes a payload on stdin).

Payload (JSON): {"files": [{"path", "content", "mode", "owner", "group"}, ...], "restart": [unit, ...],
"prune": [dir, ...] (optional), "hot": {dir: [management socket, ...]} (optional),
"run": [unit, ...] (optional), "restart_when": {unit: [path, ...]} (optional)}.
`check_payload` is the one definition of this schema: nina.render checks every payload it
renders with it (and each DeliveredFile with `check_file`), so a payload nina makes is one the
installer takes.
Nothing is written through a symbolic link or into a directory that anyone but root can change
(nina.host.trust: a service account could have planted it): every directory of the payload is
checked first, and then nothing is written (exit 1, one line naming the path); each directory
is then reached one component at a time without following links, and written through that
descriptor. Each file is written atomically (temp file in the same directory, then rename) with its
mode and owner; files whose content, mode and owner are unchanged are left alone. Then, in
each "prune" directory, regular files that the payload does not carry are deleted (only
directly inside it: no recursion, symlinks and subdirectories are left alone); a prune
directory must be at least three levels deep (/a/b/c) and lie at or under the directory of
a delivered file. If anything was written or deleted: `systemctl daemon-reload`,
`update-ca-certificates` when the local CA changed, then `systemctl enable` and `restart`
of the listed units.

"restart_when" narrows a restart: a unit it names is restarted only when one of its paths
changed or was removed (a payload that carries two services' files: JupyterHub's and the hub
host's firewall); the other "restart" units are restarted on any change, as before.

"run" units (oneshot steps) are started (`systemctl start`, in order) on every run, whether or
not anything changed, after the restarts: a delivery re-run after a failed step runs it again.
A step that fails fails the run (exit 1, naming the unit); the steps after it do not run.

A "hot" directory (also pruned) holds files the service reads per connection (OpenVPN's
client-config-dir and allow-list; sshd's authorized keys, with no socket: sshd reads them at
each login). When every change lies directly in hot directories, nothing is reloaded or
restarted: for each such file that was changed or removed (not for new ones), the client named
by the file is disconnected through each OpenVPN management socket (`client-kill` of each of
its connections listed by `status 2`), so it reconnects at once under its new entry or is
refused. A socket that does not exist means that instance is not running (nothing to
disconnect); any other failure to disconnect is an error (exit 1).

  --root DIR  prefix every path with DIR (tests). Owners that do not exist on this machine,
              or cannot be set by a non-root caller, fall back to the caller's uid/gid with
              a warning; systemctl and update-ca-certificates are skipped unless
              NINA_SYSTEMCTL / NINA_UPDATE_CA_CERTIFICATES name a command to run instead.
  --dry-run   print what would change and which commands would run; touch nothing. Without
              --root it refuses no owner: one that does not exist yet is a warning (a real
              run needs it), and a caller who is not root sees what root would change.

Exit codes: 0 ok, 2 bad input (nothing written), 1 a write or command failed, or a path was refused.
A module of nina (nina.host): standard library and nina.facts only, as it runs on the host's python3.
"""

from __future__ import annotations

import argparse
import contextlib
import grp
import json
import os
import posixpath
import pwd
import re
import secrets
import shlex
import socket
import stat
import subprocess
import sys
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypedDict, cast

from nina import facts
from nina.host import trust

if TYPE_CHECKING:
    from typing import TypeGuard  # Python 3.10; only the type checker needs it

LOCAL_CA_TRUST = facts.LOCAL_CA_TRUST
# \Z, not $: a name or unit with a trailing newline is refused too.
NAME_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}\Z")
UNIT_RE = re.compile(r"^[A-Za-z0-9@_.:-]+\.(service|socket|timer|path|target|mount)\Z")
PROG = "nina-install-files"


class BadInput(Exception):
    pass


class FileEntry(TypedDict):
    """One entry of the payload's "files" (as check_payload has checked it)."""

    path: str
    content: str
    mode: int
    owner: str
    group: str


def warn(msg: str) -> None:
    print(f"{PROG}: warning: {msg}", file=sys.stderr)


def normalised(path: object) -> TypeGuard[str]:
    return (
        isinstance(path, str)
        and path.startswith("/")
        and "\0" not in path
        and path != "/"
        and ".." not in path.split("/")
        and posixpath.normpath(path) == path
    )


def check_prune(prune: Iterable[object], paths: Iterable[str]) -> None:
    parents = {posixpath.dirname(p) for p in paths}
    for d in prune:
        if not normalised(d):
            raise BadInput(f"prune: {d!r} must be an absolute, normalised directory other than /")
        if len(d.strip("/").split("/")) < 3:
            raise BadInput(f"prune: {d} is too close to / (at least three levels, like /etc/app/dir)")
        if not any(d == p or d.startswith(p + "/") for p in parents):
            raise BadInput(f"prune: {d} is not at or under the directory of a delivered file")


def check_hot(hot: object, prune: list[Any]) -> None:
    if not isinstance(hot, dict):
        raise BadInput('"hot" must be an object: directory -> list of management sockets')
    for d, sockets in hot.items():
        if d not in prune:
            raise BadInput(f"hot: {d} must also be a prune directory")
        # [] : the service reads the files per use and holds no connection to cut (sshd's keys).
        if not isinstance(sockets, list) or not all(isinstance(x, str) and normalised(x) for x in sockets):
            raise BadInput(f"hot: {d} needs a list of absolute, normalised socket paths")


def check_file(f: object, where: str) -> FileEntry:
    """One entry of "files", or BadInput naming `where` (also nina.render.DeliveredFile's check)."""
    if not isinstance(f, dict) or set(f) != {"path", "content", "mode", "owner", "group"}:
        raise BadInput(f"{where}: needs exactly path, content, mode, owner, group")
    path = f["path"]
    if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
        raise BadInput(f"{where}: path {path!r} must be absolute")
    if ".." in path.split("/") or posixpath.normpath(path) != path or path == "/":
        raise BadInput(f"{where}: path {path!r} must be normalised and must not contain '..'")
    if not isinstance(f["content"], str):
        raise BadInput(f"{where}: content must be a string")
    mode = f["mode"]
    if not isinstance(mode, int) or isinstance(mode, bool) or not 0 <= mode <= 0o777:
        raise BadInput(f"{where}: mode must be an integer between 0 and 0o777")
    for key in ("owner", "group"):
        if not isinstance(f[key], str) or not NAME_RE.match(f[key]):
            raise BadInput(f"{where}: {key} {f[key]!r} is not a user or group name")
    return cast(FileEntry, f)


def check_run(payload: Any) -> list[str]:
    """The payload's "run" units (none without the key)."""
    run = payload.get("run", [])
    if not isinstance(run, list):
        raise BadInput('"run" must be a list')
    for unit in run:
        if not isinstance(unit, str) or not UNIT_RE.match(unit):
            raise BadInput(f"run: {unit!r} is not a systemd unit name")
    return run


def check_restart_when(payload: Any) -> dict[str, list[str]]:
    """The payload's "restart_when" ({} without the key): each unit one of "restart", each path a delivered file's."""
    when = payload.get("restart_when", {})
    if not isinstance(when, dict):
        raise BadInput('"restart_when" must be an object: unit -> list of delivered paths')
    paths = {f.get("path") for f in payload.get("files", []) if isinstance(f, dict)}
    for unit, watched in when.items():
        if unit not in payload.get("restart", []):
            raise BadInput(f"restart_when: {unit!r} is not one of the units to restart")
        if not isinstance(watched, list) or not watched or not all(isinstance(p, str) and p in paths for p in watched):
            raise BadInput(f"restart_when: {unit} needs a non-empty list of delivered paths")
    return when


def restarts(restart: list[str], when: Mapping[str, list[str]], changed: Iterable[str]) -> list[str]:
    """The units of `restart` to restart, given the changed paths."""
    moved = set(changed)
    return [u for u in restart if u not in when or moved & set(when[u])]


def check_payload(payload: object) -> tuple[list[FileEntry], list[str], list[str], dict[str, list[str]]]:
    keys = {"files", "restart", "prune", "hot", "run", "restart_when"}
    if not isinstance(payload, dict) or set(payload) - keys:
        raise BadInput('payload must be an object with keys "files", "restart" and optionally "prune", "hot", "run" and "restart_when"')
    check_run(payload)
    files = payload.get("files")
    restart = payload.get("restart", [])
    prune = payload.get("prune", [])
    if not isinstance(files, list) or not isinstance(restart, list) or not isinstance(prune, list):
        raise BadInput('"files", "restart" and "prune" must be lists')
    seen: set[str] = set()
    for i, f in enumerate(files):
        path = check_file(f, f"files[{i}]")["path"]
        if path in seen:
            raise BadInput(f"files[{i}]: duplicate path {path}")
        seen.add(path)
    for unit in restart:
        if not isinstance(unit, str) or not UNIT_RE.match(unit):
            raise BadInput(f"restart: {unit!r} is not a systemd unit name")
    check_prune(prune, seen)
    check_restart_when(payload)
    hot = payload.get("hot", {})
    check_hot(hot, prune)
    return cast(list[FileEntry], files), restart, prune, cast(dict[str, list[str]], hot)


UNKNOWN_ID = -1  # a dry run's owner that does not exist yet: matches no file, so it "would write"


def resolve_ids(files: Iterable[FileEntry], root: str, dry_run: bool = False) -> dict[str, tuple[int, int]]:
    """uid/gid per file; under --root unknown names map to the caller (with a warning). A dry run
    without --root refuses no owner: one that does not exist yet (an earlier step of a real run,
    like a site kit's install.sh, creates it) is UNKNOWN_ID, and a caller who is not root is told
    what root would do."""
    ids: dict[str, tuple[int, int]] = {}
    as_root = os.geteuid() == 0
    for f in files:
        try:
            uid = pwd.getpwnam(f["owner"]).pw_uid
        except KeyError:
            if not root and not dry_run:
                raise BadInput(f"{f['path']}: user {f['owner']!r} does not exist") from None
            uid = os.getuid() if root else UNKNOWN_ID
            warn(f"user {f['owner']!r} does not exist here; {f['path']} " + (f"keeps uid {uid}" if root else "needs it"))
        try:
            gid = grp.getgrnam(f["group"]).gr_gid
        except KeyError:
            if not root and not dry_run:
                raise BadInput(f"{f['path']}: group {f['group']!r} does not exist") from None
            gid = os.getgid() if root else UNKNOWN_ID
            warn(f"group {f['group']!r} does not exist here; {f['path']} " + (f"keeps gid {gid}" if root else "needs it"))
        if not as_root and (uid, gid) != (os.getuid(), os.getgid()):
            if root:
                warn(f"not root: {f['path']} keeps the caller's uid/gid")
                uid, gid = os.getuid(), os.getgid()
            elif not dry_run:
                raise BadInput(f"{f['path']}: only root can give files to {f['owner']}:{f['group']}")
        ids[f["path"]] = (uid, gid)
    return ids


def unchanged(dir_fd: int, name: str, data: bytes, mode: int, uid: int, gid: int) -> bool:
    """Whether `name` in the directory `dir_fd` is a regular file (not a link) with this content,
    mode and owner (False if it cannot be read)."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError:  # missing, a symlink, or not readable by a caller who is not root (a dry run)
        return False
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode) or (st.st_mode & 0o7777, st.st_uid, st.st_gid) != (mode, uid, gid):
            return False
        return fh.read() == data


def write_at(dir_fd: int, name: str, data: bytes, mode: int, uid: int, gid: int) -> None:
    """Write `name` in the directory `dir_fd` atomically: a new temporary file there (never
    through a link), fsynced, renamed over `name` (which replaces a link, never follows it)."""
    tmp = f".nina-install-{secrets.token_hex(8)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fchmod(fh.fileno(), mode)
            if (uid, gid) != (os.getuid(), os.getgid()) or os.geteuid() == 0:
                os.fchown(fh.fileno(), uid, gid)
            os.fsync(fh.fileno())
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise


def write_atomic(target: str, data: bytes, mode: int, uid: int, gid: int, strict: bool = True) -> None:
    """`write_at` by path: its directory is reached (made if missing) with trust.open_dir, so
    nothing is written through a link or into a directory someone other than root can change
    (trust.Untrusted). `strict=False`: only that directory itself must be root's (nina-membership)."""
    parent, name = os.path.split(target)
    dir_fd = trust.open_dir(parent, create=True, strict=strict)
    try:
        write_at(dir_fd, name, data, mode, uid, gid)
    finally:
        os.close(dir_fd)


def untrusted_dirs(directories: Iterable[str]) -> list[str]:
    """What trust.open_dir finds wrong with each of `directories` (as far as they exist)."""
    found: list[str] = []
    for d in dict.fromkeys(directories):
        try:
            os.close(trust.open_dir(d))
        except FileNotFoundError:
            pass  # made by the installer, root's, inside a directory that was checked
        except trust.Untrusted as exc:
            found.append(str(exc))
        except OSError as exc:
            found.append(f"{d} cannot be checked ({exc.strerror})")
    return found


def _exists(dir_fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def strays(dir_fd: int, directory: str, keep: set[str]) -> list[str]:
    """Regular files directly in `directory` (open as `dir_fd`) that the payload does not carry (sorted)."""
    with os.scandir(dir_fd) as entries:
        return sorted(p for e in entries if (p := posixpath.join(directory, e.name)) not in keep and e.is_file(follow_symlinks=False))


MANAGEMENT_TIMEOUT = 10  # seconds
CLIENT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")  # no spaces or newlines: one management command


def _answer(reader: Iterable[str]) -> str:
    """The next SUCCESS:/ERROR: line (real-time ">..." notifications are skipped)."""
    for line in reader:
        if line.startswith(("SUCCESS:", "ERROR:")):
            return line.strip()
    raise OSError("the management interface closed without an answer")


def _client_ids(reader: Iterable[str], name: str) -> list[str]:
    """Client IDs of `name`'s connections from a `status 2` listing (columns named by its HEADER)."""
    header: list[str] | None = None
    ids: list[str] = []
    for line in reader:
        fields = line.rstrip("\r\n").split(",")
        if fields[0] == "END":
            return ids
        if fields[:2] == ["HEADER", "CLIENT_LIST"]:
            header = fields[1:]
        elif fields[0] == "CLIENT_LIST" and header and len(fields) == len(header):
            row = dict(zip(header, fields, strict=False))
            if row.get("Common Name") == name:
                ids.append(row["Client ID"])
    raise OSError("the management interface closed in the middle of `status 2`")


def management_disconnect(sock_path: str, name: str) -> str:
    """Disconnect every connection of certificate `name` through an OpenVPN management socket
    (`client-kill`, which tells the client to reconnect at once). Returns what happened."""
    directory, base = os.path.split(sock_path)
    cwd = os.open(".", os.O_RDONLY)
    try:
        # A relative name keeps under the 107-byte limit of a unix socket path (--root in tests).
        try:
            os.chdir(directory)
        except FileNotFoundError:
            return "not running"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(MANAGEMENT_TIMEOUT)
            try:
                s.connect(base)
            except (FileNotFoundError, ConnectionRefusedError):
                return "not running"
            reader = s.makefile("r", encoding="utf-8", errors="replace", newline="\n")
            s.sendall(b"status 2\n")
            ids = _client_ids(reader, name)
            for cid in ids:
                s.sendall(f"client-kill {cid}\n".encode())
                answer = _answer(reader)
                if not answer.startswith("SUCCESS:"):
                    raise OSError(f"client-kill {cid}: {answer}")
            s.sendall(b"quit\n")
            return f"disconnected {len(ids)} connection(s)" if ids else "not connected"
    finally:
        os.fchdir(cwd)
        os.close(cwd)


def hot_only(changed: Iterable[str], hot: Mapping[str, list[str]]) -> bool:
    """Whether every changed path lies directly in a hot directory."""
    return bool(hot) and all(posixpath.dirname(p) in hot for p in changed)


def commands(restart: list[str], ca_changed: bool) -> list[list[str]]:
    systemctl = shlex.split(os.environ.get("NINA_SYSTEMCTL", "systemctl"))
    update_ca = shlex.split(os.environ.get("NINA_UPDATE_CA_CERTIFICATES", "update-ca-certificates"))
    cmds = [[*systemctl, "daemon-reload"]]
    if ca_changed:
        cmds.append(update_ca)
    if restart:
        cmds.append([*systemctl, "enable", *restart])
        cmds.append([*systemctl, "restart", *restart])
    return cmds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog=PROG, description="Install a nina delivery payload read from stdin.")
    ap.add_argument("--root", default="", help="prefix every path with this directory (tests)")
    ap.add_argument("--dry-run", action="store_true", help="show what would change; touch nothing")
    args = ap.parse_args(argv)
    root = os.path.realpath(args.root) if args.root else ""
    try:
        try:
            payload = json.loads(sys.stdin.read())
        except ValueError as exc:
            raise BadInput(f"stdin is not a JSON payload: {exc}") from None
        files, restart, prune, hot = check_payload(payload)
        run = check_run(payload)
        when = check_restart_when(payload)
        ids = resolve_ids(files, root, args.dry_run)
    except BadInput as exc:
        print(f"{PROG}: error: {exc}; nothing was written", file=sys.stderr)
        return 2

    # Nothing is written through a link or into a directory others can change (nina.host.trust):
    # checked for every directory first, so a refusal writes nothing, and again on the way in.
    problems = untrusted_dirs([root + posixpath.dirname(f["path"]) for f in files] + [root + d for d in prune])
    if problems and not args.dry_run:
        print(f"{PROG}: refused: {'; '.join(problems)}; {trust.ADVICE}; nothing was written", file=sys.stderr)
        return 1
    for why in problems:
        warn(f"a real run refuses this (unless fixed first): {why}")

    changed: list[str] = []
    existed: set[str] = set()  # changed paths that were there before (clients may be connected under them)
    for f in files:
        parent, name = posixpath.split(root + f["path"])
        data = f["content"].encode("utf-8")
        uid, gid = ids[f["path"]]
        try:
            dir_fd: int | None = trust.open_dir(parent, create=not args.dry_run)
        except (FileNotFoundError, trust.Untrusted) as exc:
            if not args.dry_run:  # changed since the check above
                print(f"{PROG}: error: cannot write {root + f['path']}: {exc}; {trust.ADVICE}", file=sys.stderr)
                return 1
            dir_fd = None  # a dry run: it would be made, or was named above
        except OSError as exc:
            print(f"{PROG}: error: cannot write {root + f['path']}: {exc}", file=sys.stderr)
            return 1
        try:
            if dir_fd is not None and unchanged(dir_fd, name, data, f["mode"], uid, gid):
                print(f"unchanged {f['path']}")
                continue
            changed.append(f["path"])
            if dir_fd is not None and _exists(dir_fd, name):
                existed.add(f["path"])
            desc = f"{f['path']} (mode {f['mode']:04o}, {f['owner']}:{f['group']})"
            if dir_fd is None or args.dry_run:
                print(f"would write {desc}")
                continue
            try:
                write_at(dir_fd, name, data, f["mode"], uid, gid)
            except OSError as exc:
                print(f"{PROG}: error: cannot write {root + f['path']}: {exc}", file=sys.stderr)
                return 1
            print(f"wrote {desc}")
        finally:
            if dir_fd is not None:
                os.close(dir_fd)
    written = len(changed)

    keep = {f["path"] for f in files}
    for directory in dict.fromkeys(prune):
        try:
            dir_fd = trust.open_dir(root + directory)
        except FileNotFoundError:
            continue
        except trust.Untrusted as exc:
            if args.dry_run:
                continue  # named above
            print(f"{PROG}: error: cannot prune {root + directory}: {exc}; {trust.ADVICE}", file=sys.stderr)
            return 1
        try:
            for path in strays(dir_fd, directory, keep):
                changed.append(path)
                existed.add(path)
                if args.dry_run:
                    print(f"would remove {path}")
                    continue
                try:
                    os.unlink(posixpath.basename(path), dir_fd=dir_fd)
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    print(f"{PROG}: error: cannot remove {root + path}: {exc}", file=sys.stderr)
                    return 1
                print(f"removed {path}")
        finally:
            os.close(dir_fd)

    if changed and hot_only(changed, hot):
        rc = disconnect(sorted(p for p in changed if p in existed), hot, root, args.dry_run, len(changed), len(files) - written)
        return rc or run_steps(run, root, args.dry_run)

    cmds = commands(restarts(restart, when, changed), LOCAL_CA_TRUST in changed) if changed else []
    overridden = "NINA_SYSTEMCTL" in os.environ or "NINA_UPDATE_CA_CERTIFICATES" in os.environ
    for cmd in cmds:
        line = " ".join(shlex.quote(c) for c in cmd)
        if args.dry_run:
            print(f"would run {line}")
        elif root and not overridden:
            print(f"skipped under --root: {line}")
        else:
            print(f"running {line}", flush=True)
            rc = subprocess.call(cmd)
            if rc != 0:
                print(f"{PROG}: error: {line} exited {rc}", file=sys.stderr)
                return 1
    verb = "would change" if args.dry_run else "changed"
    print(f"{PROG}: {len(changed)} {verb}, {len(files) - written} unchanged")
    return run_steps(run, root, args.dry_run)


def run_steps(run: list[str], root: str, dry_run: bool) -> int:
    """Start each "run" unit (a oneshot step), in order, stopping at the first that fails."""
    systemctl = shlex.split(os.environ.get("NINA_SYSTEMCTL", "systemctl"))
    for unit in run:
        line = shlex.join([*systemctl, "start", unit])
        if dry_run:
            print(f"would run {line}")
            continue
        if root and "NINA_SYSTEMCTL" not in os.environ:
            print(f"skipped under --root: {line}")
            continue
        print(f"running {line}", flush=True)
        rc = subprocess.call([*systemctl, "start", unit])
        if rc != 0:
            print(f"{PROG}: error: step {unit} failed ({line} exited {rc}); see `journalctl -u {unit}`", file=sys.stderr)
            return 1
    return 0


def disconnect(paths: list[str], hot: Mapping[str, list[str]], root: str, dry_run: bool, n_changed: int, n_unchanged: int) -> int:
    """Only hot files changed: no restart; disconnect the clients whose entries changed or went."""
    print("only per-connection entries changed: no restart")
    done: set[tuple[str, str]] = set()  # a client named by files in two hot directories goes once per socket
    for path in paths:
        name = posixpath.basename(path)
        if not CLIENT_NAME_RE.match(name):
            warn(f"{path}: {name!r} cannot be a certificate name; not disconnecting it")
            continue
        for sock in hot[posixpath.dirname(path)]:
            if (name, sock) in done:
                continue
            done.add((name, sock))
            if dry_run:
                print(f"would disconnect {name} via {sock}")
                continue
            try:
                result = management_disconnect(root + sock, name)
            except OSError as exc:
                print(f"{PROG}: error: cannot disconnect {name} via {sock}: {exc}", file=sys.stderr)
                return 1
            print(f"disconnect {name} via {sock}: {result}")
    verb = "would change" if dry_run else "changed"
    print(f"{PROG}: {n_changed} {verb}, {n_unchanged} unchanged")
    return 0


if __name__ == "__main__":
    sys.exit(main())
