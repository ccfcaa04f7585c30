"""nina-env-sync: make the Flower venv hold exactly its tenancy's training environment lock.

  nina-env-sync [--lock FILE] [--venv DIR] [--restart UNIT ...] [--check] [--pip-arg ARG ...]

The lock (facts.FLOWER_ENV_LOCK, delivered by the SuperLink's and the SuperNode's deliveries, and
carried by site kits) is a requirements file of exact pins with sha256 hashes (`nina env lock`).
The venv (facts.FLOWER_VENV) is in sync when the distributions installed in it are exactly the
lock's, at the lock's versions, besides pip itself (KEPT). Then nothing is done (exit 0, "in
sync"). Otherwise, in place:

1. `<venv>/bin/python -I -m pip install --require-hashes --no-deps -r <lock>`: each file checked
   against the lock's hashes, nothing pulled in that the lock does not name;
2. `pip uninstall -y` of what is installed and not in the lock (a package of the previous
   environment);
3. the venv is read again and must now be in sync (else exit 1, naming the differences);
4. `systemctl try-restart` of the --restart units (the Flower service that imports from the
   venv), so it runs the new environment; only when something changed.

In place rather than a fresh venv swapped in: the venv's path is fixed in the units, flwr's
entry points and the kits' scripts (facts.FLOWER_VENV), and pip reinstalls only what changed
(a torch environment is gigabytes). A failed step leaves the service running what it had
loaded; running again (the next delivery, or by hand) finishes the job.

With --check: only compare, print the differences, exit 1 when not in sync. Exit codes: 0 in
sync (or made so); 1 not in sync, a step failed or the lock unreadable; 2 bad arguments. A module of nina (nina.host): standard library and nina.facts only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from nina import facts

PROG = "nina-env-sync"
# What a venv has of its own and the lock never names.
KEPT = frozenset({"pip"})
# The only lines a lock holds (what `nina env lock` writes, and pip reads as nothing but pins): a
# requirement `name==version`, then, joined to it by ` \`, indented `--hash=sha256:<hex>` lines; and
# comments. Anything else pip would read as an option of its own (`--index-url`, `-r FILE`, `-e URL`,
# `--no-binary`, `--config-settings`...), as root: refused. The version: PEP 440's characters only
# (no `;marker`, `@url`, `,` or wildcard).
_REQUIREMENT = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][A-Za-z0-9.+!_-]*)(?: \\)?\Z")
_HASH = re.compile(r"    --hash=sha256:[0-9a-f]{64}(?: \\)?\Z")
_COMMENT = re.compile(r"[ \t]*(#.*)?\Z")
# The listing's line of the venv's output: after it, JSON [[name, version], ...]. Whatever else the
# venv's python prints (a package's .pth file runs at every start, -I or not) is not the listing.
_LISTING = "nina-env-sync listing: "
_LIST_SCRIPT = (
    "import importlib.metadata as m, json, sys\n"
    f"sys.stdout.write({_LISTING!r})\n"
    "json.dump(sorted([d.metadata['Name'], d.version] for d in m.distributions() if d.metadata['Name']), sys.stdout)\n"
)


class SyncError(Exception):
    """A step failed; the message says which and why."""


def canonical(name: str) -> str:
    """PEP 503's normalised project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_lock(text: str) -> dict[str, str]:
    """canonical name -> version of each requirement of a lock; ValueError on any other line."""
    pins: dict[str, str] = {}
    continued = False  # the line before ended with ` \`: this one must be a hash
    for line in text.splitlines():
        if continued:
            m = _HASH.match(line)
            if m is None:
                raise ValueError(f"lock line {line[:80]!r} continues a requirement and is not `    --hash=sha256:<64 hex digits>`")
        elif _COMMENT.match(line):
            continue
        else:
            m = _REQUIREMENT.match(line)
            if m is None:
                raise ValueError(f"lock line {line[:80]!r} is not `name==version` (a lock holds pins, their hashes and comments only)")
            pins[canonical(m.group(1))] = m.group(2)
        continued = line.endswith(" \\")
    if continued:
        raise ValueError(f"lock line {line[:80]!r} ends with ` \\` and no hash line follows (a truncated lock)")
    return pins


def installed(python: str) -> dict[str, str]:
    """canonical name -> version of every distribution the venv's python sees (its site-packages)."""
    try:
        out = subprocess.run([python, "-I", "-c", _LIST_SCRIPT], capture_output=True, text=True, timeout=120, check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise SyncError(f"cannot list the venv's packages with {python}: {exc}") from None
    lines = [line for line in out.splitlines() if line.startswith(_LISTING)]
    try:
        pairs = json.loads(lines[-1].removeprefix(_LISTING)) if lines else None
    except ValueError:
        pairs = None
    if not isinstance(pairs, list) or not all(isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in pairs):
        raise SyncError(f"cannot list the venv's packages with {python}: it printed {out[-200:]!r}, not the listing") from None
    return {canonical(name): version for name, version in pairs}


def differences(lock: dict[str, str], have: dict[str, str]) -> list[str]:
    """One line per difference between the venv and the lock (sorted; empty: in sync)."""
    lines = []
    for name in sorted(set(lock) | set(have)):
        if name in KEPT and name not in lock:
            continue
        want, got = lock.get(name), have.get(name)
        if want is None:
            lines.append(f"{name} {got} is installed, the lock has no {name}")
        elif got is None:
            lines.append(f"{name} is missing, the lock has {want}")
        elif got != want:
            lines.append(f"{name} {got} is installed, the lock has {want}")
    return lines


def _run(cmd: list[str], what: str) -> None:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    except (OSError, subprocess.SubprocessError) as exc:
        raise SyncError(f"{what}: {exc}") from None
    if done.returncode != 0:
        said = " | ".join(line.strip() for line in (done.stderr or done.stdout).splitlines() if line.strip())[-800:]
        raise SyncError(f"{what} failed (exit {done.returncode}): {said}")


def sync(lock_path: str, venv: str, restart: list[str], pip_args: list[str], log: object = print) -> bool:
    """Bring `venv` in line with the lock; True when something changed (and `restart` was restarted)."""
    say = log if callable(log) else print
    lock = read_lock(lock_path)
    python = os.path.join(venv, "bin", "python")
    diff = differences(lock, installed(python))
    if not diff:
        say(f"{PROG}: {venv} is in sync with {lock_path} ({len(lock)} packages)")
        return False
    for line in diff:
        say(f"{PROG}: {line}")
    pip = [python, "-I", "-m", "pip", "--disable-pip-version-check", "--no-input"]
    _run([*pip, "install", "--quiet", "--require-hashes", "--no-deps", *pip_args, "-r", lock_path], "pip install of the lock")
    extra = sorted(name for name in installed(python) if name not in lock and name not in KEPT)
    if extra:
        _run([*pip, "uninstall", "--quiet", "--yes", *extra], f"pip uninstall of {', '.join(extra)}")
    left = differences(lock, installed(python))
    if left:
        raise SyncError(f"{venv} still differs from {lock_path} after installing it: {'; '.join(left)}")
    say(f"{PROG}: {venv} now holds {lock_path} ({len(lock)} packages)")
    if restart:
        systemctl = shlex.split(os.environ.get("NINA_SYSTEMCTL", "systemctl"))
        _run([*systemctl, "try-restart", *restart], f"systemctl try-restart {' '.join(restart)}")
        say(f"{PROG}: restarted {' '.join(restart)} (if running)")
    return True


def read_lock(path: str) -> dict[str, str]:
    try:
        text = Path(path).read_text(encoding="utf-8")
        pins = parse_lock(text)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise SyncError(f"cannot read the lock {path}: {exc}") from None
    if not pins or "flwr" not in pins:
        raise SyncError(f"{path} is not a training environment lock (no flwr in it)")
    return pins


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description="Make the Flower venv hold exactly its training environment lock.")
    parser.add_argument("--lock", default=facts.FLOWER_ENV_LOCK, help=f"the lock (default {facts.FLOWER_ENV_LOCK})")
    parser.add_argument("--venv", default=facts.FLOWER_VENV, help=f"the venv (default {facts.FLOWER_VENV})")
    parser.add_argument("--restart", action="append", default=[], metavar="UNIT", help="try-restart this unit after a change")
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when not in sync")
    parser.add_argument("--pip-arg", action="append", default=[], metavar="ARG", help="pass ARG to pip install (e.g. --no-index)")
    args = parser.parse_args(argv)
    try:
        if args.check:
            lock = read_lock(args.lock)
            diff = differences(lock, installed(os.path.join(args.venv, "bin", "python")))
            for line in diff:
                print(f"{PROG}: {line}")
            print(f"{PROG}: {args.venv} is {'not ' if diff else ''}in sync with {args.lock}")
            return 1 if diff else 0
        sync(args.lock, args.venv, args.restart, args.pip_arg)
    except SyncError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
