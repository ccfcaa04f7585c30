"""nina-membership: admit or remove an organisation's SuperNode at this SuperLink (flwr, the version in nina.facts).

  nina-membership register <slug>    OpenSSH public key on stdin
  nina-membership register-many      {"<slug>": "<OpenSSH public key>", ...} on stdin
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

Concurrency: each organisation has its own lock (<slug>.lock in the members directory), so
registrations of different organisations (pulumi runs the SuperNodeRegistration resources in
parallel) run at once, and two runs for one organisation take turns. `list` takes no lock:
every record is written atomically.

register-many registers each organisation of the input as `register <slug>` does (same
records, same locks, same idempotency), up to facts.MEMBERSHIP_BATCH_PARALLEL organisations at
once (threads, as pulumi runs the registration resources in parallel), and prints one JSON line
per organisation as soon as it is done, in the order they finish ({"slug", "node-id",
"changed"} or {"slug", "error"}); exit 1 if any failed. When flwr is a Python script (a venv's
console script), its `flwr supernode ...` commands run in processes forked from one interpreter
started for the batch (Worker), which imported what the script imports once: the same command,
arguments and environment, once per organisation, without a Python start-up and `import flwr`
per key, and several at once (each `flwr supernode register` spends most of its time, about
0.2 s with flwr 1.31, in grpc closing its channel).

As root (sudo) it runs flwr only if flwr, its interpreter and the CLI's FLWR_HOME are root's
alone, with nothing a service user or group could change on the way (nina.host.trust); the members
directory (on the state volume, whose top directory superlink owns) is opened without
following links and must itself be root's; anything else is refused in one line, running nothing.

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
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

from nina import facts
from nina.host import install_files, trust
from nina.host.failure import Failure, sayer

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
FLWR_TIMEOUT = 120  # seconds one flwr command may take


say = sayer(PROG)


# The members directory, open (main): every record and lock is read and written through this
# descriptor, never by path. The directory lies on the SuperLink's state volume, whose top
# directory the superlink user owns; trust.open_dir reached it without following a link and
# checked that it is root's and writable by root only, so nothing can be swapped under it.
_members_fd = -1


def record(slug: str, ext: str) -> str:
    return os.path.join(MEMBERS_DIR, f"{slug}.{ext}")


def read(path: str) -> str | None:
    try:
        fd = os.open(os.path.basename(path), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=_members_fd)
    except FileNotFoundError:
        return None
    with open(fd, encoding="utf-8") as fh:
        return fh.read(1 << 16)


def write_atomic(path: str, text: str, mode: int = 0o644) -> None:
    """As the installer writes files: a temporary file in the same directory, fsynced, renamed."""
    install_files.write_at(_members_fd, os.path.basename(path), text.encode("utf-8"), mode, os.getuid(), os.getgid())


def unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.basename(path), dir_fd=_members_fd)


def refused(why: str) -> Failure:
    return Failure(f"refused: {why}; {trust.ADVICE}; nothing was run")


def check_paths() -> None:
    """Root runs flwr (and its interpreter) and lets it read its connection config and write FLWR_HOME
    only where no service account can change them (nina.host.trust): a superlink or supernode
    user that could rename the venv or plant a link would otherwise choose what root runs.
    The program checks guard root (sudo on the SuperLink host): run unprivileged (the rehearsal,
    tests) flwr runs as the caller, with nothing to take, from wherever its venv is (a CI
    runner's Python lies in a world-writable tool cache)."""
    whys = [trust.exec_problem(FLWR), trust.problem(FLWR_HOME), trust.problem(os.path.join(FLWR_HOME, facts.FLWR_CONFIG_FILE))]
    for why in whys if os.geteuid() == 0 else []:
        if why:
            raise refused(why)
    try:
        os.close(trust.open_dir(FLWR_HOME, create=True, mode=0o700))
    except trust.Untrusted as exc:
        raise refused(str(exc)) from None


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


def flwr_env() -> dict[str, str]:
    return dict(os.environ, FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1", FLWR_HOME=FLWR_HOME, NO_COLOR="1", TERM="dumb")


def run_flwr(argv: list[str]) -> tuple[int, str, str]:
    """One flwr command in its own process: (exit code, stdout, stderr)."""
    try:
        proc = subprocess.run([FLWR, *argv], env=flwr_env(), capture_output=True, text=True, timeout=FLWR_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise Failure(f"cannot run {FLWR}: {exc}") from None
    return proc.returncode, proc.stdout, proc.stderr


# The batch's interpreter: runs a Python script (flwr's console script) as `python SCRIPT ARGS...`
# would, once per request line ({"id", "argv", "timeout"}) on stdin, each in a process of its own
# forked from it, and answers each with one line {"id", "code", "stdout", "stderr"} on the stdout it
# started with, as each is done: requests run at once (flwr's CLI redirects sys.stdout and closes
# its grpc channel with a wait of about 0.2 s, so it cannot share one process with itself).
# Before the first request it runs the script's own top-level import statements (flwr's
# `from flwr.cli.app import app`: Python start-up and `import flwr` cost about 1.3 s of CPU with
# flwr 1.31), nothing else of it, so each request costs a fork instead. No grpc channel exists in
# it when it forks (grpc starts its threads with the first channel, in a child). A child's file
# descriptors 1 and 2 (so also what rich and logging write) go to temporary files, and SIGALRM
# ends a child that outlives its request's timeout.
WORKER_SOURCE = r"""
import ast, json, math, os, runpy, select, signal, sys, tempfile
script = sys.argv[1]
answers = os.fdopen(os.dup(1), "w")
null = os.open(os.devnull, os.O_RDWR)
os.dup2(null, 1); os.dup2(null, 2)
try:
    with open(script, "rb") as fh:
        tree = ast.parse(fh.read(), script)
    imports = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    exec(compile(ast.Module(body=imports, type_ignores=[]), script, "exec"), {"__name__": "__nina_preload__"})
except BaseException:
    pass  # each request runs the whole script and reports what fails

def child(argv, timeout, wfd):
    try:
        signal.alarm(max(1, math.ceil(timeout)))
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            os.dup2(null, 0); os.dup2(out.fileno(), 1); os.dup2(err.fileno(), 2)
            sys.argv = [script, *argv]
            code = 0
            try:
                runpy.run_path(script, run_name="__main__")
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            except BaseException as exc:
                print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
                code = 1
            finally:
                for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
                    try:
                        stream.flush()
                    except Exception:
                        pass
            out.seek(0); err.seek(0)
            answer = {"code": code, "stdout": out.read().decode("utf-8", "replace"), "stderr": err.read().decode("utf-8", "replace")}
        data = memoryview(json.dumps(answer).encode("utf-8"))
        while data:
            data = data[os.write(wfd, data):]
    finally:
        os._exit(0)

pending = {}  # read end of a child's answer pipe -> [request id, pid, bytes so far]
buffered, ended = b"", False
while not ended or pending:
    readable, _, _ = select.select(list(pending) + ([] if ended else [0]), [], [])
    for fd in readable:
        if fd == 0:
            data = os.read(0, 1 << 16)
            ended = not data
            buffered += data
            while b"\n" in buffered:
                line, buffered = buffered.split(b"\n", 1)
                if line.strip():
                    request = json.loads(line)
                    r, w = os.pipe()
                    pid = os.fork()
                    if pid == 0:
                        os.close(r)
                        child(request["argv"], float(request["timeout"]), w)
                    os.close(w)
                    pending[r] = [request["id"], pid, b""]
            continue
        data = os.read(fd, 1 << 16)
        if data:
            pending[fd][2] += data
            continue
        os.close(fd)
        rid, pid, text = pending.pop(fd)
        _, status = os.waitpid(pid, 0)
        try:
            answer = json.loads(text)
        except ValueError:
            answer = {"code": 1, "stdout": "", "stderr": f"the command's process ended without an answer (wait status {status})"}
        answer["id"] = rid
        answers.write(json.dumps(answer) + "\n"); answers.flush()
os._exit(0)  # every answer is out: no interpreter finalization (flwr's modules) to wait for
"""


def script_interpreter(path: str) -> str | None:
    """The Python interpreter named by `path`'s #! line, if it is a Python script (None otherwise)."""
    try:
        with open(path, "rb") as fh:
            first = fh.readline(512)
    except OSError:
        return None
    parts = first[2:].decode("utf-8", "replace").split() if first.startswith(b"#!") else []
    if parts and os.path.basename(parts[0]) == "env" and len(parts) > 1:
        parts = [shutil.which(parts[1]) or parts[1]]
    if parts and os.path.basename(parts[0]).startswith("python") and os.access(parts[0], os.X_OK):
        return parts[0]
    return None


class Worker:
    """One interpreter running every flwr command of a batch (see WORKER_SOURCE), several at once:
    `run` may be called from several threads, each waits for its own answer. `script` and `env`
    default to this program's flwr and its environment (the rehearsal passes its own, to poll
    `flwr supernode ls` without starting a flwr process per poll)."""

    def __init__(self, python: str, script: str | None = None, env: dict[str, str] | None = None) -> None:
        # -I: not the caller's working directory (`-c` would put it first on sys.path: a
        # superlink user's directory there could shadow `json` for root), nor PYTHON* variables.
        self.proc = subprocess.Popen(
            [python, "-I", "-c", WORKER_SOURCE, script or FLWR],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=flwr_env() if env is None else env,
            text=True,
        )
        self._send = threading.Lock()
        self._answered = threading.Condition()
        self._answers: dict[int, dict[str, Any]] = {}
        self._requests = 0
        self._ended = False
        threading.Thread(target=self._read, name="nina-membership-worker", daemon=True).start()

    def _read(self) -> None:
        """Hand each answer line to the request it names."""
        assert self.proc.stdout is not None
        try:
            for line in self.proc.stdout:
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    answer = json.loads(line)
                    with self._answered:
                        self._answers[int(answer["id"])] = answer
                        self._answered.notify_all()
        except (OSError, ValueError):
            pass
        finally:
            with self._answered:
                self._ended = True
                self._answered.notify_all()

    def run(self, argv: list[str], timeout: float = FLWR_TIMEOUT) -> tuple[int, str, str]:
        assert self.proc.stdin is not None
        with self._send:
            self._requests += 1
            rid = self._requests
            try:
                self.proc.stdin.write(json.dumps({"id": rid, "argv": argv, "timeout": timeout}) + "\n")
                self.proc.stdin.flush()
            except (OSError, ValueError) as exc:
                raise Failure(f"the flwr interpreter of the batch failed: {exc}") from None
        with self._answered:
            if not self._answered.wait_for(lambda: rid in self._answers or self._ended, timeout):
                self.proc.kill()
                self.proc.wait()
                raise Failure(f"flwr {' '.join(argv[:2])} did not answer within {timeout:g} s")
            answer = self._answers.pop(rid, None)
        if answer is None:
            raise Failure(f"the flwr interpreter of the batch exited (code {self.proc.wait()})")
        return int(answer["code"]), str(answer["stdout"]), str(answer["stderr"])

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


WORKER: Worker | None = None  # set for a batch: flwr commands run there instead of one process each


def flwr(*args: str) -> dict[str, Any]:
    """Run one flwr CLI command; return its JSON. Retries while the Control API is unavailable."""
    config = os.path.join(FLWR_HOME, facts.FLWR_CONFIG_FILE)
    if not os.path.isfile(config):
        # Without it flwr writes its own default, whose "local" connection starts a simulation SuperLink.
        raise Failure(f"{config} is missing (it comes with the SuperLink's delivery)")
    argv = ["supernode", *args, CONNECTION, "--format", "json"]
    deadline = time.monotonic() + WAIT
    while True:
        code, stdout, stderr = WORKER.run(argv) if WORKER is not None else run_flwr(argv)
        result = parse_json(stdout)
        if result is not None and result.get("success") is True and code == 0:
            return result
        message = (result or {}).get("error-message") or (stdout + stderr).strip()
        message = " ".join(message.split()) or f"exit code {code}, no output"
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
        unlink(record(slug, ext))


def checked_key(pubkey: str) -> str:
    pub = pubkey.strip()
    if "\n" in pub or not PUBKEY_RE.match(pub):
        raise Failure("stdin must hold one OpenSSH ECDSA public key line (ecdsa-sha2-nistp384 AAAA...)", 2)
    return pub + "\n"


@contextlib.contextmanager
def locked(slug: str) -> Iterator[None]:
    """The organisation's own lock: runs for one organisation take turns, others run at once."""
    fd = os.open(f"{slug}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=_members_fd)
    with open(fd, "w", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def register(slug: str, pubkey: str) -> dict[str, Any]:
    pub = checked_key(pubkey)
    node_id = (read(record(slug, "node_id")) or "").strip()
    if node_id and read(record(slug, "pub")) == pub:
        return {"slug": slug, "node-id": node_id, "changed": False}
    if node_id:
        say(f"{slug}: key changed, unregistering node {node_id} first")
        unregister_node(node_id)
        remove_records(slug)
    # flwr reads the key from a path: a private directory of root's, not the members directory
    # (whose parent the superlink user could rename under it).
    with tempfile.TemporaryDirectory(prefix="nina-membership-") as tmp:
        pending = os.path.join(tmp, f"{slug}.pub")
        with open(pending, "w", encoding="utf-8") as fh:
            fh.write(pub)
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
    for name in sorted(os.listdir(_members_fd)):
        if name.endswith(".node_id") and not name.startswith("."):
            slug = name[: -len(".node_id")]
            out.append({"slug": slug, "node-id": (read(record(slug, "node_id")) or "").strip()})
    return {"members": out}


def register_many(text: str) -> int:
    """register-many: one JSON line per organisation as it is done; 1 if any failed."""
    try:
        keys = json.loads(text)
    except ValueError as exc:
        raise Failure(f"stdin must hold a JSON object {{slug: public key}}: {exc}", 2) from None
    if not isinstance(keys, dict) or not keys:
        raise Failure("stdin must hold a non-empty JSON object {slug: public key}", 2)
    checked = {}
    for slug, pub in keys.items():
        if not SLUG_RE.match(str(slug)) or not isinstance(pub, str):
            raise Failure(f"{slug!r} is not an organisation slug with a key", 2)
        try:
            checked[slug] = checked_key(pub)
        except Failure as exc:
            raise Failure(f"{slug}: {exc}", 2) from None
    global WORKER
    python = script_interpreter(FLWR)
    why = trust.exec_problem(python) if python and os.geteuid() == 0 else None  # `#!/usr/bin/env python3`: the one PATH finds
    if why:
        raise refused(why)
    WORKER = Worker(python) if python else None
    queue = list(checked.items())
    failures: list[str] = []
    lock = threading.Lock()  # the queue, the failures and stdout

    def registrar() -> None:
        while True:
            with lock:
                if not queue:
                    return
                slug, pub = queue.pop(0)
            try:
                with locked(slug):
                    result = register(slug, pub)
            except Failure as exc:
                result = {"slug": slug, "error": str(exc)}
                say(f"{slug}: error: {exc}")
            except Exception as exc:  # a thread must report, not die silently
                result = {"slug": slug, "error": f"{type(exc).__name__}: {exc}"}
                say(f"{slug}: error: {result['error']}")
            with lock:
                if "error" in result:
                    failures.append(slug)
                print(json.dumps(result, sort_keys=True), flush=True)

    threads = [threading.Thread(target=registrar, name=f"register-{i}") for i in range(min(len(queue), facts.MEMBERSHIP_BATCH_PARALLEL))]
    try:
        for t in threads:
            t.start()
    finally:
        for t in threads:
            if t.ident is not None:  # started
                t.join()
        if WORKER is not None:
            WORKER.close()
            WORKER = None
    return 1 if failures else 0


def main(argv: list[str]) -> int:
    usage = f"usage: {PROG} register <slug> < key.pub | register-many < keys.json | unregister <slug> | list"
    if len(argv) == 1 and argv[0] in ("list", "register-many"):
        cmd, slug = argv[0], ""  # no slug
    elif len(argv) == 2 and argv[0] in ("register", "unregister"):
        cmd, slug = argv
        if not SLUG_RE.match(slug):
            print(f"{PROG}: error: {slug!r} is not an organisation slug\n{usage}", file=sys.stderr)
            return 2
    else:
        print(usage, file=sys.stderr)
        return 2
    global _members_fd
    try:
        if cmd != "list":
            check_paths()
        try:
            _members_fd = trust.open_dir(MEMBERS_DIR, create=True, strict=False, mode=0o750)
        except trust.Untrusted as exc:
            raise refused(str(exc)) from None
        if cmd == "register-many":
            return register_many(sys.stdin.read())
        if cmd == "register":
            pub = sys.stdin.read()
            with locked(slug):
                result = register(slug, pub)
        elif cmd == "unregister":
            with locked(slug):
                result = unregister(slug)
        else:
            result = members()
    except Failure as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.code
    except OSError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    finally:
        if _members_fd >= 0:
            os.close(_members_fd)
            _members_fd = -1
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
