"""nina-membership: admit or remove an organisation's SuperNode at this SuperLink (flwr, the version in nina.facts).

  nina-membership register <slug>    OpenSSH public key on stdin
  nina-membership unregister <slug>
  nina-membership list

Runs `flwr supernode register|unregister <...> <facts.SUPERLINK_ADMIN_CONNECTION> --format json` with
FLWR_HOME=<facts.SUPERLINK_ADMIN_FLWR_HOME>, whose config.toml (delivered with the SuperLink) names the
local Control API under that connection, and records which organisation holds which node id in
<facts.SUPERLINK_MEMBERS_DIR>/<slug>.node_id and <slug>.pub (on the state volume).
register is idempotent: with a record whose key equals the input it does nothing; with a
different key it unregisters the old node first. unregister of an unknown slug is a no-op.
The Control API may still be starting: unavailable errors are retried for up to
NINA_CONTROL_WAIT seconds. flwr (1.25 and later) prints {"success": false, ...} and may
still exit 0, so success is read from the JSON, never from the exit code alone.

Environment overrides (tests): NINA_FLWR, NINA_MEMBERS_DIR, NINA_CONNECTION, NINA_FLWR_HOME,
NINA_CONTROL_WAIT, NINA_RETRY_INTERVAL.
Exit codes: 0 ok, 2 bad input, 1 flwr failed. A module of nina (nina.host): standard library and nina.facts only.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import subprocess
import sys
import time
from typing import Any

from nina import facts
from nina.host import install_files

PROG = "nina-membership"
FLWR = os.environ.get("NINA_FLWR", f"{facts.FLOWER_VENV}/bin/flwr")
MEMBERS_DIR = os.environ.get("NINA_MEMBERS_DIR", facts.SUPERLINK_MEMBERS_DIR)
CONNECTION = os.environ.get("NINA_CONNECTION", facts.SUPERLINK_ADMIN_CONNECTION)
FLWR_HOME = os.environ.get("NINA_FLWR_HOME", facts.SUPERLINK_ADMIN_FLWR_HOME)
WAIT = float(os.environ.get("NINA_CONTROL_WAIT", str(facts.MEMBERSHIP_WAIT_SECONDS)))
INTERVAL = float(os.environ.get("NINA_RETRY_INTERVAL", "5"))
SLUG_RE = re.compile(facts.SLUG_PATTERN)
PUBKEY_RE = re.compile(r"^ecdsa-sha2-nistp(256|384|521) [A-Za-z0-9+/]+={0,2}( [^\r\n]*)?$")
# Errors that mean "the Control API is not up yet": retried until WAIT runs out.
TRANSIENT = ("unavailable", "connection refused", "failed to connect", "deadline exceeded")
NOT_FOUND = "node id not found"


class Failure(Exception):
    def __init__(self, msg: str, code: int = 1) -> None:
        super().__init__(msg)
        self.code = code


def say(msg: str) -> None:
    print(f"{PROG}: {msg}", file=sys.stderr, flush=True)


def record(slug: str, ext: str) -> str:
    return os.path.join(MEMBERS_DIR, f"{slug}.{ext}")


def read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except FileNotFoundError:
        return None


def write_atomic(path: str, text: str, mode: int = 0o644) -> None:
    """As the installer writes files: a temporary file in the same directory, fsynced, renamed."""
    install_files.write_atomic(path, text.encode("utf-8"), mode, os.getuid(), os.getgid())


def parse_json(out: str) -> dict[str, Any] | None:
    """The first JSON object in flwr's output (rich may pretty-print it over several lines)."""
    decoder = json.JSONDecoder()
    for i, ch in enumerate(out):
        if ch == "{":
            try:
                obj, _ = decoder.raw_decode(out, i)
            except ValueError:
                continue
            if isinstance(obj, dict):
                return obj
    return None


def flwr(*args: str) -> dict[str, Any]:
    """Run one flwr CLI command; return its JSON. Retries while the Control API is unavailable."""
    env = dict(os.environ, FLWR_TELEMETRY_ENABLED="0", FLWR_HOME=FLWR_HOME, NO_COLOR="1", TERM="dumb")
    config = os.path.join(FLWR_HOME, facts.FLWR_CONFIG_FILE)
    if not os.path.isfile(config):
        # Without it flwr writes its own default, whose "local" connection starts a simulation SuperLink.
        raise Failure(f"{config} is missing (it comes with the SuperLink's delivery)")
    cmd = [FLWR, "supernode", *args, CONNECTION, "--format", "json"]
    deadline = time.monotonic() + WAIT
    while True:
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise Failure(f"cannot run {FLWR}: {exc}") from None
        result = parse_json(proc.stdout)
        if result is not None and result.get("success") is True and proc.returncode == 0:
            return result
        message = (result or {}).get("error-message") or (proc.stdout + proc.stderr).strip()
        message = " ".join(message.split()) or f"exit code {proc.returncode}, no output"
        if any(t in message.lower() for t in TRANSIENT) and time.monotonic() < deadline:
            say(f"Control API not ready ({message}); retrying in {INTERVAL:g}s")
            time.sleep(INTERVAL)
            continue
        raise Failure(f"flwr supernode {args[0]} failed: {message}")


def unregister_node(node_id: str) -> None:
    try:
        flwr("unregister", node_id)
    except Failure as exc:
        if NOT_FOUND not in str(exc).lower():
            raise
        say(f"node {node_id} was already unregistered")


def remove_records(slug: str) -> None:
    for ext in ("node_id", "pub"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(record(slug, ext))


def register(slug: str, pubkey: str) -> dict[str, Any]:
    pub = pubkey.strip()
    if "\n" in pub or not PUBKEY_RE.match(pub):
        raise Failure("stdin must hold one OpenSSH ECDSA public key line (ecdsa-sha2-nistp384 AAAA...)", 2)
    pub += "\n"
    node_id = (read(record(slug, "node_id")) or "").strip()
    if node_id and read(record(slug, "pub")) == pub:
        return {"slug": slug, "node-id": node_id, "changed": False}
    if node_id:
        say(f"{slug}: key changed, unregistering node {node_id} first")
        unregister_node(node_id)
        remove_records(slug)
    pending = record(slug, "pending.pub")
    write_atomic(pending, pub)
    try:
        result = flwr("register", pending)
    except Failure as exc:
        if "already in use" in str(exc).lower():
            raise Failure(
                f"{exc} (the key is registered but {slug} has no record here: find its node id with "
                f"`FLWR_HOME={FLWR_HOME} flwr supernode ls {CONNECTION}` and write it to {record(slug, 'node_id')}, "
                f"the key to {record(slug, 'pub')})"
            ) from None
        raise
    finally:
        os.unlink(pending)
    new_id = result.get("node-id")
    if new_id is None or not str(new_id).isdigit():
        raise Failure(f"flwr supernode register returned no node id: {json.dumps(result, sort_keys=True)}")
    write_atomic(record(slug, "pub"), pub)
    write_atomic(record(slug, "node_id"), f"{new_id}\n")
    return {"slug": slug, "node-id": str(new_id), "changed": True}


def unregister(slug: str) -> dict[str, Any]:
    node_id = (read(record(slug, "node_id")) or "").strip()
    if not node_id:
        remove_records(slug)
        return {"slug": slug, "node-id": None, "changed": False}
    unregister_node(node_id)
    remove_records(slug)
    return {"slug": slug, "node-id": node_id, "changed": True}


def members() -> dict[str, Any]:
    out: list[dict[str, str]] = []
    for name in sorted(os.listdir(MEMBERS_DIR)):
        if name.endswith(".node_id") and not name.startswith("."):
            slug = name[: -len(".node_id")]
            out.append({"slug": slug, "node-id": (read(record(slug, "node_id")) or "").strip()})
    return {"members": out}


def main(argv: list[str]) -> int:
    usage = f"usage: {PROG} register <slug> < key.pub | unregister <slug> | list"
    if len(argv) == 1 and argv[0] == "list":
        cmd, slug = "list", ""  # list takes no slug
    elif len(argv) == 2 and argv[0] in ("register", "unregister"):
        cmd, slug = argv
        if not SLUG_RE.match(slug):
            print(f"{PROG}: error: {slug!r} is not an organisation slug\n{usage}", file=sys.stderr)
            return 2
    else:
        print(usage, file=sys.stderr)
        return 2
    os.makedirs(MEMBERS_DIR, mode=0o750, exist_ok=True)
    with open(os.path.join(MEMBERS_DIR, ".lock"), "w", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # pulumi may run several members at once
        try:
            if cmd == "register":
                result = register(slug, sys.stdin.read())
            elif cmd == "unregister":
                result = unregister(slug)
            else:
                result = members()
        except Failure as exc:
            print(f"{PROG}: error: {exc}", file=sys.stderr)
            return exc.code
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
