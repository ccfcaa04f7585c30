"""Deployment validation (manual 4.2) from the operator's machine, through the bastion.

    nina validate (--stack NAME | --outputs FILE|-) [--tenancy NAME]... [--identity FILE | --agent]
                  [--user NAME] [--known-hosts FILE] [--rounds N] [--round-timeout S]

For each tenancy of the stack outputs (nina.outputs) it opens an SSH tunnel from a free port
on the operator's loopback to the SuperLink's own `127.0.0.1:9093` (the Control API listens on
every address of the SuperLink VM, which has only a private one; the certificate's SANs hold
127.0.0.1), jumping through the bastion's floating IP:

    ssh -N -L 127.0.0.1:<free port>:127.0.0.1:9093 -o ProxyCommand='ssh ... -W <superlink ip>:22 <user>@<bastion>' <user>@<superlink ip>

(`ProxyCommand` with an explicit inner ssh rather than `-J`: options given on the command line,
such as the identity and the known-hosts handling, do not apply to `-J`'s hop.) It then checks
that the Control API answers TLS for 127.0.0.1 with a certificate from the stack's CA, runs
validation_app/ with `flwr run` against the tunnel (nina.flwrcli), prints the per-round table
as `nina rehearse` does, and tears the tunnel down: on success, on error, on Ctrl-C and SIGTERM
(the caller turns SIGTERM into KeyboardInterrupt), and, through PR_SET_PDEATHSIG, even when
nina itself is killed.

Host keys: `StrictHostKeyChecking=accept-new` (trust on first use, refuse a changed key) in
the operator's known_hosts (or `known_hosts`), each host recorded under the alias
`nina-<environment>-<host>` (facts.SSH_HOST_KEY_ALIAS) so that stacks reusing the same private
addresses do not collide. `BatchMode=yes`: never a password or passphrase prompt; a key with a
passphrase must be in the agent (`agent=True`).

Pure: never imports pulumi.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from nina import facts, flwrcli
from nina.outputs import Document
from nina.rehearse import REPO_ROOT, RunResult, judge_run, validation_run_config

VALIDATION_APP = REPO_ROOT / "validation_app"
# ssh's own chatter that says nothing about a failure.
_NOISE = ("Warning: Permanently added", "debug", "Authenticated to", "Transferred:", "Bytes per second")


class ValidateError(Exception):
    """A tenancy could not be validated (tunnel, Control API or run); one line naming the fix."""


class InputError(Exception):
    """The outputs or options cannot be used; one line naming the problem and the fix."""


# ---------------------------------------------------------------------------------------
# What to reach, and how
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One tenancy's SuperLink as the operator reaches it."""

    tenancy: str
    host: str
    ip: str
    control_port: int  # on the SuperLink's loopback
    partitions: dict[str, int]  # slug -> partition id
    on_bastion: bool  # the SuperLink runs on the bastion itself (the "one large VM")

    @property
    def expected(self) -> list[int]:
        return sorted(self.partitions.values())


@dataclass(frozen=True)
class Access:
    """How to log in: the bastion's address, the login, and which key (None: agent/own config)."""

    environment: str
    bastion_host: str
    bastion_ip: str
    user: str = facts.DEFAULT_LOGIN_USER
    identity: Path | None = None
    known_hosts: Path | None = None
    ssh: str = "ssh"

    def alias(self, host: str) -> str:
        return facts.SSH_HOST_KEY_ALIAS.format(environment=self.environment, host=host)


def targets(doc: Document, only: Sequence[str] | None = None) -> list[Target]:
    """The tenancies to validate (all, or those named in `only`, in the document's order)."""
    if only:
        unknown = [n for n in only if n not in doc.tenancies]
        if unknown:
            raise InputError(
                f"--tenancy {', '.join(unknown)}: no such tenancy in the stack outputs; the stack has {', '.join(doc.tenancies)}"
            )
    found = []
    for name, t in doc.tenancies.items():
        if only and name not in only:
            continue
        port = int(t.superlink.control_address.rpartition(":")[2])
        host = doc.hosts.get(t.superlink.host)
        found.append(
            Target(
                tenancy=name,
                host=t.superlink.host,
                ip=t.superlink.internal_ip,
                control_port=port,
                partitions={slug: org.partition_id for slug, org in t.organisations.items()},
                on_bastion=host is not None and "bastion" in host.roles,
            )
        )
    return found


def access(doc: Document, **kwargs: object) -> Access:
    """The bastion of the stack outputs (its floating IP and host name) and the given login options."""
    if doc.bastion_ip is None:
        raise InputError("bastion_ip: is null, so the stack has no bastion to tunnel through yet; run `pulumi up` first")
    host = next((name for name, h in doc.hosts.items() if "bastion" in h.roles), "bastion")
    return Access(environment=doc.environment, bastion_host=host, bastion_ip=doc.bastion_ip, **kwargs)  # type: ignore[arg-type]


def ssh_options(a: Access, alias: str) -> list[str]:
    """Options every hop gets: no prompts, known-hosts handling, bounded connects, no shared masters."""
    opts = [
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=accept-new",
        "-o",
        f"HostKeyAlias={alias}",
        "-o",
        f"ConnectTimeout={facts.SSH_CONNECT_TIMEOUT}",
        "-o",
        "ServerAliveInterval=15",
        "-o",
        "ServerAliveCountMax=3",
        "-o",
        "ControlMaster=no",
        "-o",
        "ControlPath=none",
        "-o",
        "ForwardAgent=no",
    ]
    if a.known_hosts is not None:
        opts += ["-o", f"UserKnownHostsFile={a.known_hosts}"]
    if a.identity is not None:
        opts += ["-i", str(a.identity), "-o", "IdentitiesOnly=yes"]
    return opts


def tunnel_command(a: Access, t: Target, local_port: int) -> list[str]:
    """The ssh command line of the tunnel from 127.0.0.1:`local_port` to the SuperLink's Control API."""
    forward = ["-N", "-o", "ExitOnForwardFailure=yes", "-L", f"{facts.LOOPBACK}:{local_port}:{facts.LOOPBACK}:{t.control_port}"]
    if t.on_bastion:
        return [a.ssh, *ssh_options(a, a.alias(a.bastion_host)), *forward, f"{a.user}@{a.bastion_ip}"]
    jump = [a.ssh, *ssh_options(a, a.alias(a.bastion_host)), "-W", f"{t.ip}:{facts.SSH_PORT}", f"{a.user}@{a.bastion_ip}"]
    # ssh runs ProxyCommand with /bin/sh after expanding %-tokens: quote for the shell, double each %.
    proxy = " ".join(shlex.quote(arg) for arg in jump).replace("%", "%%")
    return [a.ssh, *ssh_options(a, a.alias(t.host)), "-o", f"ProxyCommand={proxy}", *forward, f"{a.user}@{t.ip}"]


def describe(a: Access, t: Target, local_port: int) -> str:
    via = "on the bastion" if t.on_bastion else f"via {a.user}@{a.bastion_ip} ({a.bastion_host})"
    return f"{facts.LOOPBACK}:{local_port} -> {a.user}@{t.ip} ({t.host}) {facts.LOOPBACK}:{t.control_port}, {via}"


# ---------------------------------------------------------------------------------------
# The tunnel
# ---------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((facts.LOOPBACK, 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """SIGTERM the child when nina dies, even by SIGKILL (Linux; elsewhere the finally blocks only)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def spawn(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start `cmd` in its own process group (so one signal stops it and its children), output to `log`."""
    with open(log, "ab") as fh:
        return subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,  # nina starts no threads
            env=env,
        )


def stop(proc: subprocess.Popen, timeout: float = facts.REHEARSAL_STOP_TIMEOUT) -> None:
    """SIGTERM the process group, SIGKILL it if it lingers; waits for the leader."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # children (the ProxyCommand's ssh) share the group


def ssh_failure(text: str, a: Access, t: Target) -> str:
    """One line: what ssh said (the lines that matter), and what to do about it."""
    lines = list(dict.fromkeys(" ".join(line.split()) for line in text.splitlines()))
    lines = [line for line in lines if line and not line.startswith(_NOISE) and not line.startswith("---")]

    def said(*needles: str) -> str:
        hits = [line for line in lines if any(n in line.lower() for n in needles)] or lines
        return "; ".join(hits)[-400:] or "no message"

    kh = str(a.known_hosts) if a.known_hosts else "~/.ssh/known_hosts"
    low = text.lower()
    names = {a.bastion_ip: f"the bastion {a.bastion_host}", t.ip: f"the SuperLink host {t.host}"}
    if "remote host identification has changed" in low or "host key verification failed" in low:
        changed = re.search(r"Host key for (\S+) has changed", text)
        alias = changed.group(1) if changed else f"{a.alias(a.bastion_host)} or {a.alias(t.host)}"
        return (
            f"the host key of {alias} is not the one {kh} recorded for it (ssh: {said('has changed', 'verification failed')}); "
            f"if that VM was replaced, remove the old entry (`ssh-keygen -R {alias} -f {kh}`) and run again; "
            "otherwise stop: the connection may be intercepted"
        )
    if "permission denied" in low or "too many authentication failures" in low:
        key = f"the key {a.identity}" if a.identity else "the keys of your agent and ssh config"
        refused = re.search(r"@([0-9.]+): Permission denied", text)
        who = names.get(refused.group(1), refused.group(1)) if refused else "the bastion or the SuperLink host"
        return (
            f"{who} refused {key} for {a.user} (ssh: {said('permission denied', 'authentication failures')}); use your own key "
            "(--identity FILE or --agent; its .pub line must be in nina:operators and delivered by `pulumi up`), or the automation key "
            "(stack output ops_ssh_private_key, the default); "
            "--user for another login"
        )
    if "address already in use" in low or "cannot listen to port" in low:
        return f"the local port is taken (ssh: {said('already in use', 'cannot listen')})"
    if "stdio forwarding failed" in low or ("open failed" in low and not t.on_bastion):
        return (
            f"the bastion could not connect to the SuperLink host {t.host} at {t.ip}:{facts.SSH_PORT} "
            f"(ssh: {said('open failed', 'forwarding failed')}); check that the VM is running (`openstack server show {t.host}`)"
        )
    if any(s in low for s in ("timed out", "no route to host", "connection refused", "network is unreachable", "could not resolve")):
        return (
            f"cannot reach the bastion at {a.bastion_ip}:{facts.SSH_PORT} (ssh: {said('connect to host', 'resolve')}); "
            "check bastion_ip in the stack outputs and that your public address is in nina:network.admin_cidrs"
        )
    return f"ssh failed (ssh: {said()})"


@contextlib.contextmanager
def tunnel(a: Access, t: Target, workdir: Path, timeout: float = facts.VALIDATE_TUNNEL_TIMEOUT) -> Iterator[int]:
    """An SSH tunnel to the tenancy's Control API; yields the local port. Always torn down."""
    log = workdir / f"ssh-{t.tenancy}.log"
    for attempt in range(3):
        port = free_port()
        log.write_bytes(b"")
        proc = spawn(tunnel_command(a, t, port), log)
        try:
            _wait_listening(proc, port, log, a, t, timeout)
        except _PortTaken:
            stop(proc)
            if attempt == 2:
                raise ValidateError(f"could not find a free local port for the tunnel: {ssh_failure(log.read_text(), a, t)}") from None
            continue
        except BaseException:
            stop(proc)
            raise
        try:
            yield port
        finally:
            stop(proc)
        return


class _PortTaken(Exception):
    pass


def _wait_listening(proc: subprocess.Popen, port: int, log: Path, a: Access, t: Target, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            said = log.read_text(errors="replace")
            message = ssh_failure(said, a, t)
            if message.startswith("the local port is taken"):
                raise _PortTaken
            raise ValidateError(f"the SSH tunnel {describe(a, t, port)} failed (ssh exit {proc.returncode}): {message}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(1)
            if s.connect_ex((facts.LOOPBACK, port)) == 0:
                return
        if time.monotonic() > deadline:
            raise ValidateError(
                f"the SSH tunnel {describe(a, t, port)} did not come up within {timeout:g} s: {ssh_failure(log.read_text(), a, t)}"
            )
        time.sleep(0.2)


def probe_control(port: int, ca_pem: str, t: Target, ssh_log: Path, timeout: float = 15) -> None:
    """A TLS handshake with the Control API through the tunnel, verified as flwr verifies it:
    against the stack's CA, for the name 127.0.0.1 the CLI dials."""
    ctx = ssl.create_default_context(cadata=ca_pem)
    ctx.set_alpn_protocols(["h2"])
    where = f"the Control API on {t.host} ({facts.LOOPBACK}:{t.control_port} on the VM)"
    try:
        with socket.create_connection((facts.LOOPBACK, port), timeout=timeout) as raw, ctx.wrap_socket(raw, server_hostname=facts.LOOPBACK):
            return
    except ssl.SSLCertVerificationError as exc:
        raise ValidateError(
            f"{where} presented a certificate that does not verify against the stack's CA for {facts.LOOPBACK} "
            f"({exc.verify_message}); re-run `pulumi up` so the SuperLink gets its current certificate"
        ) from None
    except (OSError, ssl.SSLError) as exc:
        time.sleep(0.3)  # let ssh log why the channel closed
        said = ssh_log.read_text(errors="replace")
        why = next((" ".join(line.split()) for line in said.splitlines() if "open failed" in line), None)
        raise ValidateError(
            f"{where} does not answer through the tunnel ({why or exc}); check the SuperLink "
            f"(`sudo systemctl status {facts.SUPERLINK_UNIT}` on {t.host})"
        ) from None


# ---------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------


def run_app(
    flwr: Path,
    port: int,
    ca_file: Path,
    expected: Sequence[int],
    workdir: Path,
    *,
    rounds: int,
    round_timeout: float,
    app_src: Path = VALIDATION_APP,
    tag: str = "run",
    environment: Mapping[str, str] | None = None,
    lock: Mapping[str, str] | None = None,
) -> RunResult:
    """validation_app/ with `flwr run` against the tunnel's local port; judged as the rehearsal
    judges, and with `lock` (the tenancy's whole lock) each node's whole installed set too."""
    address = f"{facts.LOOPBACK}:{port}"
    flwrcli.write_connection(workdir / "flwr-home", facts.VALIDATE_CONNECTION, address, str(ca_file))
    app = flwrcli.app_copy(app_src, workdir / f"app-{tag}")
    # No summary-path: the ServerApp runs on the SuperLink host; its NINA-SUMMARY line streams back.
    run_config = validation_run_config(expected, rounds, round_timeout, environment=environment)
    log = workdir / f"flwr-{tag}.log"
    env = flwrcli.env(workdir / "flwr-home", dict(os.environ))
    started = time.monotonic()
    proc = spawn(flwrcli.run_command(flwr, app, facts.VALIDATE_CONNECTION, run_config), log, env)
    budget = round_timeout * (rounds + 1) + 90
    timed_out = None
    try:
        proc.wait(timeout=budget)
    except subprocess.TimeoutExpired:
        timed_out = f"`flwr run` did not finish within {budget:g} s"
    finally:
        stop(proc)
    out = log.read_text(errors="replace")
    return judge_run(
        out, None, expected, proc.returncode, timed_out, time.monotonic() - started, "its output ends: " + _tail(out), lock=lock
    )


def _tail(out: str, lines: int = 3) -> str:
    kept = [" ".join(line.split()) for line in out.splitlines() if line.strip()]
    return " | ".join(kept[-lines:]) or "(nothing)"


@dataclass
class Report:
    tenancy: str
    ok: bool
    reason: str | None
    result: RunResult | None


def validate(
    doc: Document,
    a: Access,
    chosen: Sequence[Target],
    flwr: Path,
    *,
    ops_key: str | None = None,
    rounds: int = facts.VALIDATE_ROUNDS,
    round_timeout: float = facts.VALIDATE_ROUND_TIMEOUT,
    log: Callable[[str], None] = print,
    workdir: Path | None = None,
) -> list[Report]:
    """Validate each tenancy in turn; raises only KeyboardInterrupt (after tearing everything down).

    Works in `workdir` (default: a private temporary directory, removed afterwards): the CA,
    `ops_key` (the automation key from the outputs, used instead of `a.identity`) as a 0600
    file, the ssh and flwr logs."""
    tmp = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="nina-validate-"))
    try:
        tmp.mkdir(parents=True, exist_ok=True)
        tmp.chmod(0o700)
        ca_file = tmp / "ca.crt"
        ca_file.write_text(doc.ca_cert_pem)
        if ops_key is not None:
            a = dataclasses.replace(a, identity=write_key(tmp, ops_key))
        reports = []
        for t in chosen:
            orgs = ", ".join(f"{slug} ({pid})" for slug, pid in t.partitions.items())
            log(f"== tenancy {t.tenancy}: SuperLink {t.host} ({t.ip}); organisations {orgs or 'none'}")
            if not t.partitions:
                reports.append(Report(t.tenancy, False, "the tenancy has no organisations in the stack outputs; nothing to validate", None))
                continue
            try:
                with tunnel(a, t, tmp) as port:
                    log(f"tunnel: {describe(a, t, port)}")
                    probe_control(port, doc.ca_cert_pem, t, tmp / f"ssh-{t.tenancy}.log")
                    log(
                        f"Control API answers TLS for {facts.LOOPBACK} with the stack's CA; running validation_app "
                        f"({rounds} round(s), partitions {','.join(map(str, t.expected))})"
                    )
                    # Every node must hold the environment's pins (flwr and its packages; the ServerApp
                    # compares them) and nothing but the whole lock, each at the lock's version (judged here).
                    env = doc.tenancies[t.tenancy].environment
                    result = run_app(
                        flwr,
                        port,
                        ca_file,
                        t.expected,
                        tmp,
                        rounds=rounds,
                        round_timeout=round_timeout,
                        tag=t.tenancy,
                        environment=env.requirements,
                        lock=env.pins,
                    )
                log(result.table())
                log(f"run time {result.seconds:.1f} s")
                who = ", ".join(f"{pid} {slug}" for slug, pid in sorted(t.partitions.items(), key=lambda kv: kv[1]))
                reports.append(Report(t.tenancy, result.ok, result.error and f"{result.error} (partitions: {who})", result))
            except ValidateError as exc:
                reports.append(Report(t.tenancy, False, str(exc), None))
        return reports
    finally:
        if workdir is None:
            shutil.rmtree(tmp, ignore_errors=True)


def write_key(directory: Path, key: str) -> Path:
    """The operators' private key from the outputs as a 0600 file (created so, never wider)."""
    path = directory / "ops_ssh_key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key if key.endswith("\n") else key + "\n")
    return path
