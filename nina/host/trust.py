"""Whether root may rely on a path: the one check of every root-run nina program.

A service account (supernode, superlink: they run researchers' code) must never be able to choose
what root runs or where root writes. So before root runs a program or writes a file, every
component of the path (as given, and as resolved) must be owned by root and writable by nobody
else: a directory another user or group can write to lets them rename an entry and plant their
own (a venv's bin/python, a symlink to /etc). A root-owned directory with the sticky bit (/tmp)
is the one exception: there nobody can rename or remove what is not theirs. The caller's own
uid counts as root's (tests and `--root` runs by an unprivileged user; on hosts it is root).

`problem`/`exec_problem` say why a path is not to be relied on (None: it is); `open_dir` walks to
a directory without following links, checking each component, and returns a descriptor to work
in (nina-install-files, nina-membership), so nothing can be swapped between the check and the use.
A site kit's install.sh runs `main` (`trust.py [--parents|--exec] PATH...`: prints the first
problem, exit 1) with the system python3 before it changes a directory or runs the venv's python.

A module of nina (nina.host): standard library only.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import stat
import sys

ADVICE = (
    "root does not run programs from, or write through, a path that others can change: "
    "make it root's and writable by root only (chown root:root, chmod go-w), or move it aside, then run again"
)


class Untrusted(Exception):
    """A path root must not rely on; the message is one line naming the path and what was found."""


def _trusted_uids() -> set[int]:
    return {0, os.geteuid()}


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return f"gid {gid}"


def stat_problem(path: str, st: os.stat_result) -> str | None:
    """Why an entry (lstat) is not to be relied on: owned by someone else, or writable by them."""
    mode = st.st_mode
    if st.st_uid not in _trusted_uids():
        what = "a symbolic link owned by" if stat.S_ISLNK(mode) else "owned by"
        return f"{path} is {what} {_user(st.st_uid)}, not root"
    if stat.S_ISLNK(mode):
        return None  # a link cannot be changed in place; where it points is checked on its own
    if stat.S_ISDIR(mode) and mode & stat.S_ISVTX and st.st_uid == 0:
        return None  # /tmp: nobody can rename or remove another's entry
    # Everyone first: a mode 0777 directory is writable by far more than its group.
    if mode & stat.S_IWOTH:
        return f"{path} is writable by everyone (mode {stat.S_IMODE(mode):04o})"
    if mode & stat.S_IWGRP:
        return f"{path} is writable by group {_group(st.st_gid)} (mode {stat.S_IMODE(mode):04o})"
    return None


def _walk(path: str, parents_only: bool) -> str | None:
    parts = [p for p in path.split("/") if p]
    current = ""
    for i, name in enumerate(parts):
        current += "/" + name
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            return None  # the rest does not exist yet: root makes it, in a directory checked above
        except OSError as exc:
            return f"{current} cannot be checked ({exc.strerror})"
        if i == len(parts) - 1 and parents_only:
            if stat.S_ISLNK(st.st_mode):
                return f"{current} is a symbolic link (to {os.readlink(current)})"
            return None
        why = stat_problem(current, st)
        if why:
            return why
    return None


def problem(path: str, parents_only: bool = False) -> str | None:
    """None if only root can change what `path` names: each component of the path as given and
    as resolved is root's and writable by root only (missing components are fine: root creates
    them). With `parents_only`, `path` itself may be anyone's but must not be a symbolic link
    (root is about to set its owner and mode)."""
    if not os.path.isabs(path):
        return f"{path} is not an absolute path"
    why = _walk(path, parents_only)
    if why or parents_only:
        return why
    return _walk(os.path.realpath(path), False)


def exec_problem(path: str) -> str | None:
    """As `problem`, for a program root is about to run: also its `#!` interpreter (a venv's
    console scripts name the venv's python)."""
    why = problem(path)
    if why:
        return why
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # its resolved path was checked just above
    except FileNotFoundError:
        return f"{path} does not exist"
    except OSError as exc:
        return f"{path} cannot be read ({exc.strerror})"
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return f"{path} is not a regular file"
        head = os.read(fd, 256)
    finally:
        os.close(fd)
    if head.startswith(b"#!"):
        words = head[2:].split(b"\n", 1)[0].split()
        if words:
            interpreter = os.fsdecode(words[0])
            why = problem(interpreter)
            if why:
                return f"{why} (the interpreter of {path})"
    return None


def open_dir(path: str, create: bool = False, strict: bool = True, mode: int = 0o755) -> int:
    """A descriptor of directory `path`, reached from / one component at a time without following
    a symbolic link (refused), each checked with `stat_problem`; missing ones are made (`mode`)
    with `create`. With `strict=False` only the last directory is checked for its owner and
    mode (the SuperLink's state volume, which its service user owns, holds root's own directory).
    Raises Untrusted, or OSError (FileNotFoundError without `create`)."""
    if not os.path.isabs(path):
        raise Untrusted(f"{path} is not an absolute path")
    parts = [p for p in path.split("/") if p]
    fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
    current = ""
    try:
        for i, name in enumerate(parts):
            current += "/" + name
            flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
            try:
                nfd = os.open(name, flags, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                with contextlib.suppress(FileExistsError):  # made meanwhile by another installer
                    os.mkdir(name, mode, dir_fd=fd)
                nfd = os.open(name, flags, dir_fd=fd)
            except OSError:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode):
                    raise Untrusted(f"{current} is a symbolic link (to {os.readlink(name, dir_fd=fd)})") from None
                raise Untrusted(f"{current} is not a directory") from None
            os.close(fd)
            fd = nfd
            if strict or i == len(parts) - 1:
                why = stat_problem(current, os.fstat(fd))
                if why:
                    raise Untrusted(why)
    except BaseException:
        os.close(fd)
        raise
    return fd


def main(argv: list[str]) -> int:
    """`trust.py [--parents|--exec] PATH...`: print the first problem and exit 1, or exit 0."""
    flag = argv[0] if argv and argv[0] in ("--parents", "--exec") else ""
    paths = argv[1:] if flag else argv
    if not paths:
        print("usage: trust.py [--parents|--exec] PATH...", file=sys.stderr)
        return 2
    for path in paths:
        why = exec_problem(path) if flag == "--exec" else problem(path, parents_only=flag == "--parents")
        if why:
            print(why)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
