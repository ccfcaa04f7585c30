"""Offline rehearsal of a stack's federation on this machine: real Flower, real PKI, no cloud.

    nina rehearse --stack NAME [--dir DIR] [--rounds N] [--keep DIR] [--insecure]

From the validated stack config (nina.cli.check_stack + nina.plan.build_plan) a rehearsal:

1. makes the PKI with nina.localpki from the plan's certificate specs (CA, each tenancy's
   SuperLink certificate, one SuperNode key per organisation, VPN client certificates and
   tls-crypt-v2 keys for on-premise organisations) in pulumi-tls's and OpenVPN's formats;
2. assembles the stack outputs with nina.outputs, as the program does (`stack_outputs`; the VPN's
   public IP is the documentation address facts.REHEARSAL_PUBLIC_IP) and builds and extracts
   every organisation's site kit with nina.kit.build_kit;
3. installs the SuperLink's delivery (nina.render.superlink_delivery) with the real
   nina-install-files under a temporary root, starts the SuperLink from the rendered
   run_superlink.sh (TLS, --enable-supernode-auth, state DB under the root), registers every
   SuperNode key with the real nina-membership (`register-many`, started with the SuperLink:
   Rehearsal.start_federation), starts one SuperNode per organisation from its kit's
   run_supernode.sh and etc/flwr/supernode/ once every key is registered;
4. runs validation_app/ with `flwr run` against the Control API and checks that every
   organisation answered in every round.

Rehearsal-only edits, each printed: the copy of run_superlink.sh listens on free loopback ports
(9091-9093 if free) instead of 0.0.0.0; each kit's supernode.conf copy gets
superlink_server=127.0.0.1, the rehearsal's Fleet port and a distinct local_port; the admin flwr
CLI config (config.toml) names the rehearsal's Control port and the CA under the temporary root.
`insecure=True` (benchmarks) also drops TLS and SuperNode authentication from the script copies.

Every SuperNode is supervised as its kit's supernode.service would be under systemd (Supervisor,
with the unit's Restart= and RestartSec=): when one exits by itself (flwr 1.25.0 drops SuperNodes,
see the README) the rest of its process group is stopped and it is started again after RestartSec;
every exit and restart is logged and `restarts()` counts them. Stopping one (or closing the
rehearsal) never restarts it.

Every process the rehearsal starts runs in its own process group and is stopped (SIGTERM, then
SIGKILL) when the Rehearsal closes, also on errors and Ctrl-C. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nina import environments, facts, flwrcli, kit, localpki, outputs, pem, render, tlscrypt
from nina.host.membership import Failure, Worker, parse_json, script_interpreter  # one reader of flwr's JSON output
from nina.plan import Certificate, Member, Plan, TenancyPlan
from nina.text import shown

REPO_ROOT = Path(__file__).resolve().parent.parent
VALIDATION_APP = REPO_ROOT / "validation_app"
ROUND_PREFIX = "NINA-ROUND "
SUMMARY_PREFIX = "NINA-SUMMARY "


class RehearsalError(Exception):
    """The rehearsal could not be set up or a step failed; the message says which and why."""


# ---------------------------------------------------------------------------------------
# PKI and stack outputs
# ---------------------------------------------------------------------------------------


@dataclass
class Pki:
    ca_cert: str
    ca_key: str
    superlinks: dict[str, tuple[str, str]]  # tenancy -> (cert, key) PEM
    supernodes: dict[str, localpki.KeyPair]  # slug -> OpenSSH key pair
    vpn_clients: dict[str, tuple[str, str]]  # slug -> (cert, key) PEM
    tls_crypt_v2_servers: dict[str, str]  # tenancy -> server key file
    tls_crypt_v2: dict[str, str]  # slug -> its client key file
    notes: list[str] = field(default_factory=list)


def _key() -> localpki.KeyPair:
    return localpki.generate_key(facts.KEY_ALGORITHM, facts.KEY_CURVE)


def _leaf(spec: Certificate, ca_cert: str, ca_key: str) -> tuple[str, str]:
    """A leaf certificate as nina:pki:LeafCertificate makes it (subject, SANs, uses, validity)."""
    key = _key().private_key_pem
    csr = localpki.cert_request(
        key, {"common_name": spec.common_name, "organization": facts.LEAF_ORGANIZATION}, spec.dns_names, spec.ip_addresses
    )
    uses = facts.SERVER_CERT_USES if spec.server else facts.CLIENT_CERT_USES
    return localpki.sign_certificate(csr, ca_key, ca_cert, facts.LEAF_VALIDITY_HOURS, uses), key


def build_pki(plan: Plan) -> Pki:
    ca_key = _key().private_key_pem
    ca_cert = localpki.self_signed_ca(ca_key, facts.CA_SUBJECT, facts.CA_VALIDITY_HOURS, facts.CA_CERT_USES)
    pki = Pki(ca_cert, ca_key, {}, {}, {}, {}, {})
    for t in plan.tenancies:
        pki.superlinks[t.name] = _leaf(t.certificate, ca_cert, ca_key)
        for m in t.members:
            pki.supernodes[m.slug] = _key()
            if m.own_supernode_public_key or m.own_vpn_csr:
                pki.notes.append(f"{m.slug} keeps its own keys in the stack; the rehearsal uses stand-in keys for it")
        if t.vpn is not None:
            server = pki.tls_crypt_v2_servers[t.name] = tlscrypt.server_key(secrets.token_bytes(tlscrypt.SERVER_KEY_BYTES))
            for spec in t.vpn.clients:
                pki.vpn_clients[spec.common_name] = _leaf(spec, ca_cert, ca_key)
                pki.tls_crypt_v2[spec.common_name] = tlscrypt.client_key(
                    server, secrets.token_bytes(tlscrypt.CLIENT_KEY_BYTES), spec.common_name
                )
    return pki


def stack_outputs(plan: Plan, pki: Pki) -> dict[str, Any]:
    """The outputs `pulumi stack output --json --show-secrets` would print, shaped by nina.outputs
    as components/platform.py shapes them. Public IPs are the documentation address."""
    public_ip = facts.REHEARSAL_PUBLIC_IP
    tenancies: dict[str, Any] = {}
    for t in plan.tenancies:
        orgs = {}
        for m in t.members:
            client = pki.vpn_clients.get(m.slug)
            orgs[m.slug] = outputs.organisation(
                m, pki.supernodes[m.slug].public_key_openssh, client[0] if client else None, stand_in_keys=True
            )  # see build_pki
        tenancies[t.name] = outputs.tenancy(t, outputs.vpn(t.vpn, public_ip) if t.vpn is not None else None, orgs)
    signing = _key()
    return outputs.document(
        plan,
        ca_cert_pem=pki.ca_cert,
        platform_signing_key=outputs.signing_key(signing.public_key_pem, pem.public_key_sha256(signing.public_key_pem)),
        tenancies=tenancies,
        hosts={h.name: outputs.host(h, h.fixed_ip, public_ip if h.public else None) for h in plan.hosts},
        bastion_ip=public_ip,
        database=None,
        secrets={
            "supernode_private_keys": {slug: k.private_key_openssh for slug, k in pki.supernodes.items()},
            "vpn_client_private_keys": {slug: c[1] for slug, c in pki.vpn_clients.items()},
            "vpn_tls_crypt_v2_keys": dict(pki.tls_crypt_v2),
            "database_passwords": {},
            "ops_ssh_private_key": _key().private_key_openssh,
            "platform_signing_private_key_pem": signing.private_key_pem,
        },
    )


def extract_kit(archive: bytes, dest: Path) -> Path:
    """Extract a kit archive into dest; returns the kit's top directory."""
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        top = {m.name.split("/")[0] for m in tar.getmembers()}
        if len(top) != 1:
            raise RehearsalError(f"a kit must have one top directory, found {sorted(top)}")
        tar.extractall(dest, filter="data")
    return dest / top.pop()


# ---------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------


def port_free(port: int, host: str = facts.LOOPBACK) -> bool:
    """Whether a server could listen on `port` now.

    SO_REUSEADDR, as gRPC sets on its listeners: connections the killed SuperLink closed
    linger in TIME_WAIT for a minute and must not count as busy, but a live listener does.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def ephemeral_floor() -> int:
    """The lowest port the kernel hands out to outgoing connections (Linux's default: 32768)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def pick_ports(preferred: Sequence[int], taken: set[int] | None = None) -> list[int]:
    """The preferred ports if all are free (and not taken), else the next free ones above them.

    Never ports from the kernel's ephemeral range: between choosing a port and the server
    binding it, any outgoing connection on this machine could take it as its source port.
    """
    taken = taken if taken is not None else set()
    if all(port_free(p) and p not in taken for p in preferred):
        chosen = list(preferred)
    else:
        chosen = []
        candidate, ceiling = max(preferred) + 1, ephemeral_floor()
        while len(chosen) < len(preferred):
            if candidate >= ceiling:
                raise RehearsalError(f"no free loopback ports between {max(preferred) + 1} and {ceiling - 1}")
            if candidate not in taken and port_free(candidate):
                chosen.append(candidate)
            candidate += 1
    taken.update(chosen)
    return chosen


def _replace_once(text: str, old: str, new: str, what: str) -> str:
    if text.count(old) != 1:
        raise RehearsalError(f"{what}: expected {old!r} exactly once in the rendered file (the template changed?)")
    return text.replace(old, new)


def _set_line(text: str, pattern: str, new: str, what: str) -> str:
    rx = re.compile(pattern, re.M)
    if len(rx.findall(text)) != 1:
        raise RehearsalError(f"{what}: expected one line matching {pattern!r}")
    return rx.sub(new.replace("\\", r"\\"), text)


def _drop_option(script: str, option: str, what: str, replacement: str | None = None) -> str:
    """Remove (or replace) the continuation line `  --option ...` of the exec command."""
    lines = script.splitlines()
    idx = [i for i, line in enumerate(lines) if line.strip().startswith(option + " ") or line.strip() in (option, option + " \\")]
    if len(idx) != 1:
        raise RehearsalError(f"{what}: expected one {option} line")
    i = idx[0]
    last = not lines[i].rstrip().endswith("\\")
    if replacement is not None:
        lines[i] = f"  {replacement}" + ("" if last else " \\")
    else:
        del lines[i]
        if last:
            lines[i - 1] = lines[i - 1].rstrip().removesuffix("\\").rstrip()
    return "\n".join(lines) + "\n"


def _write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


def _venv() -> Path:
    venv = Path(sys.prefix)
    missing = [
        n for n in ("activate", "flwr", "flower-superlink", "flower-supernode", "flower-superexec") if not (venv / "bin" / n).exists()
    ]
    if missing:
        raise RehearsalError(
            f"{venv} is not a venv with flwr {facts.FLWR_VERSION} (missing bin/{', bin/'.join(missing)}); run nina from the project's venv"
        )
    return venv


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = facts.REHEARSAL_STOP_TIMEOUT) -> int | None:
        """Signal the process group; SIGKILL it if it outlives `timeout`. Returns the exit code."""
        pgid = self.popen.pid  # start_new_session: the group id is the leader's pid
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
            self.popen.wait(timeout=timeout)
        # Children that outlived the leader (superexec, app processes) share its group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        return self.popen.returncode


# ---------------------------------------------------------------------------------------
# Supervision: a SuperNode runs as its systemd unit (Restart=, RestartSec=) would run it
# ---------------------------------------------------------------------------------------

# systemd's defaults (systemd-system.conf(5)) for what a unit does not set.
SYSTEMD_DEFAULT_RESTART_SEC = 0.1  # RestartSec=100ms
SYSTEMD_DEFAULT_START_LIMIT_INTERVAL = 10.0  # DefaultStartLimitIntervalSec=10s
SYSTEMD_DEFAULT_START_LIMIT_BURST = 5  # DefaultStartLimitBurst=5
# Exits that count as clean for Restart=on-failure / on-success (systemd.service(5)).
_CLEAN_SIGNALS = frozenset({signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGPIPE})
_RESTART_VALUES = ("no", "always", "on-success", "on-failure", "on-abnormal")
_TIME_UNITS = {"": 1.0, "s": 1.0, "sec": 1.0, "ms": 0.001, "msec": 0.001, "m": 60.0, "min": 60.0}


def _timespan(value: str, what: str) -> float:
    """A systemd time span as the units use them: `5`, `5s`, `100ms`, `1min` (one term)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*", value)
    if not m or m.group(2) not in _TIME_UNITS:
        raise RehearsalError(f"{what}: cannot read the time span {value!r}")
    return float(m.group(1)) * _TIME_UNITS[m.group(2)]


def _exit_text(returncode: int) -> str:
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-returncode).name}"
        return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


@dataclass(frozen=True)
class RestartPolicy:
    """What a unit's `Restart=` and `RestartSec=` (and `StartLimitIntervalSec=`/`StartLimitBurst=`)
    make systemd do when the main process exits by itself; read from the unit with `from_unit`."""

    unit: str
    restart: str = "no"
    restart_sec: float = SYSTEMD_DEFAULT_RESTART_SEC
    start_limit_interval: float = SYSTEMD_DEFAULT_START_LIMIT_INTERVAL
    start_limit_burst: int = SYSTEMD_DEFAULT_START_LIMIT_BURST

    @classmethod
    def from_unit(cls, text: str, unit: str) -> RestartPolicy:
        section, found = "", {}
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith(("#", ";")):
                continue
            if line.startswith("[") and line.endswith("]"):
                section = line[1:-1]
                continue
            key, sep, value = line.partition("=")
            if sep:
                found[(section, key.strip())] = value.strip()  # the last assignment wins, as in systemd
        restart = found.get(("Service", "Restart"), "no")
        if restart not in _RESTART_VALUES:
            raise RehearsalError(f"{unit}: Restart={restart} is not one the rehearsal supervises ({', '.join(_RESTART_VALUES)})")
        kwargs: dict[str, Any] = {"restart": restart}
        if ("Service", "RestartSec") in found:
            kwargs["restart_sec"] = _timespan(found[("Service", "RestartSec")], f"{unit}: RestartSec")
        if ("Unit", "StartLimitIntervalSec") in found:
            kwargs["start_limit_interval"] = _timespan(found[("Unit", "StartLimitIntervalSec")], f"{unit}: StartLimitIntervalSec")
        if ("Unit", "StartLimitBurst") in found:
            kwargs["start_limit_burst"] = int(found[("Unit", "StartLimitBurst")])
        return cls(unit, **kwargs)

    def restarts_after(self, returncode: int) -> bool:
        """Whether systemd restarts the unit after its main process ended with `returncode`
        (Popen's: negative for a signal) by itself, not through a stop."""
        signalled = returncode < 0
        clean = returncode == 0 or (signalled and -returncode in _CLEAN_SIGNALS)
        return {
            "no": False,
            "always": True,
            "on-success": clean,
            "on-failure": not clean,
            "on-abnormal": signalled and not clean,
        }[self.restart]

    def describe(self) -> str:
        return f"{self.unit}: Restart={self.restart}, RestartSec={self.restart_sec:g}s"


class Supervisor:
    """Runs one service process as systemd runs its unit under `policy`.

    When the main process exits by itself, what is left of its process group is stopped (as
    systemd's default KillMode=control-group does) and, if the policy restarts after that exit,
    it is started again after RestartSec, unless the start limit is hit (StartLimitBurst starts
    within StartLimitIntervalSec: the unit "failed"). `stop()` (systemctl stop) never leads to a
    restart. `restarts` counts the restarts; every exit and restart is logged through `log`.
    """

    def __init__(self, name: str, start: Callable[[], Proc], policy: RestartPolicy, log: Callable[[str], None], poll: float = 0.1):
        self.name = name
        self.policy = policy
        self.restarts = 0
        self.exits: list[int] = []  # return codes of the exits by itself
        self.state = "running"  # running, restarting, stopped, exited (no restart), failed (start limit or start error)
        self._start = start
        self._say = log
        self._poll = poll
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self.proc = start()
        self._starts = [time.monotonic()]
        self._thread = threading.Thread(target=self._watch, name=f"supervise-{name}", daemon=True)
        self._thread.start()

    @property
    def active(self) -> bool:
        """Running or waiting for its restart (systemd: active or activating)."""
        return self.state in ("running", "restarting")

    def _watch(self) -> None:
        while not self._stopping.is_set():
            if self.proc.popen.poll() is None:
                self._stopping.wait(self._poll)
                continue
            with self._lock:
                if self._stopping.is_set():
                    return
                rc = self.proc.popen.returncode
                self.proc.stop()  # the rest of its group (superexec, app processes)
                self.exits.append(rc)
                if not self.policy.restarts_after(rc):
                    self.state = "exited"
                    self._say(f"{self.name} exited ({_exit_text(rc)}); not restarted ({self.policy.describe()})")
                    return
                self.state = "restarting"
                self._say(f"{self.name} exited ({_exit_text(rc)}); restarting in {self.policy.restart_sec:g} s ({self.policy.describe()})")
            if self._stopping.wait(self.policy.restart_sec):
                return
            with self._lock:
                if self._stopping.is_set():
                    return
                now = time.monotonic()
                self._starts = [t for t in self._starts if now - t < self.policy.start_limit_interval]
                if len(self._starts) >= self.policy.start_limit_burst:
                    self.state = "failed"
                    self._say(
                        f"{self.name}: start request repeated too quickly ({len(self._starts)} starts within "
                        f"{self.policy.start_limit_interval:g} s); not restarted, as systemd would leave {self.policy.unit} failed"
                    )
                    return
                try:
                    self.proc = self._start()
                except Exception as exc:
                    self.state = "failed"
                    self._say(f"{self.name}: restart failed: {exc}")
                    return
                self._starts.append(now)
                self.restarts += 1
                self.state = "running"
                self._say(f"{self.name} restarted (restart {self.restarts}, pid {self.proc.popen.pid})")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to the main process only, as a crash ends it; supervision carries on."""
        with self._lock, contextlib.suppress(ProcessLookupError):
            self.proc.popen.send_signal(sig)

    def stop(self, timeout: float = facts.REHEARSAL_STOP_TIMEOUT) -> None:
        """Stop it for good (systemctl stop): the process group is stopped and never restarted."""
        self._stopping.set()
        with self._lock:  # a start in progress finishes first, and is stopped below
            self.state = "stopped"
            proc = self.proc
        proc.stop(timeout=timeout)
        self._thread.join(timeout=timeout)


@dataclass
class RunResult:
    ok: bool
    rounds: list[dict[str, Any]]
    error: str | None
    seconds: float
    output: str
    expected: list[int]
    full_lock: int | None = None  # packages of the whole lock each node was compared with; None: the definition's pins only

    def table(self) -> str:
        lines = [f"{'round':>5}  {'partitions':<16} hosts"]
        for r in self.rounds:
            parts = ",".join(str(p) for p in r.get("partitions", [])) or "-"
            hosts = ", ".join(f"{p}@{h}" for p, h in sorted(r.get("hosts", {}).items())) or "-"
            miss = f"  MISSING {r['missing']}" if r.get("missing") else ""
            lines.append(f"{r.get('round', '?'):>5}  {parts:<16} {hosts}{miss}")
            # Each distinct environment once, with the partitions that reported it.
            groups: dict[str, list[str]] = {}
            for p, env in sorted(r.get("environments", {}).items(), key=lambda kv: int(kv[0]) if kv[0].isdigit() else 0):
                gpu = f"gpu {'usable' if env.get('gpu-usable') else 'not usable'} ({env.get('gpu-how', '?')})"
                pkgs = " ".join(str(env.get("packages", "")).split(","))
                groups.setdefault(f"python {env.get('python', '?')}, {pkgs}, {gpu}, {installed_set(env)}", []).append(p)
            for text, parts_of in groups.items():
                lines.append(f"{'':>5}  {'env ' + ','.join(parts_of):<16} {text}")
            for problem in r.get("environment-errors", []):
                lines.append(f"{'':>5}  {'ENV DIFFERS':<16} {problem}")
            for problem in r.get("lock-differences", []):
                lines.append(f"{'':>5}  {'LOCK DIFFERS':<16} {problem}")
        if self.full_lock is None:
            lines.append("environments compared with the definition's pins (full-lock comparison: validate only)")
        else:
            lines.append(f"environments compared with the tenancy's whole lock ({self.full_lock} packages)")
        return "\n".join(lines)


def installed_set(env: dict[str, Any]) -> str:
    """A node's whole installed set in a table cell: how many, and a digest to tell sets apart."""
    dists = env.get("distributions")
    if not isinstance(dists, list):
        return "installed set not reported"
    digest = hashlib.sha256("\n".join(map(str, dists)).encode()).hexdigest()[:12]
    return f"{len(dists)} installed (sha256 {digest})"


# ---------------------------------------------------------------------------------------
# The rehearsal of one tenancy
# ---------------------------------------------------------------------------------------


class Rehearsal:
    """One tenancy's federation on loopback. Use as a context manager: closing stops everything.

        with Rehearsal(plan, workdir) as r:
            r.start_superlink(); r.register_all(); r.start_supernodes(); r.wait_online(len(r.members))
            result = r.run_app(rounds=2)

    `fleet_bind`: the Fleet API's listen address (default loopback; "0.0.0.0" to let a test dial
    another loopback name). `pki`/`outputs` may be shared between tenancies of one stack.
    """

    def __init__(
        self,
        plan: Plan,
        workdir: Path | str,
        tenancy: str | None = None,
        *,
        insecure: bool = False,
        log: Callable[[str], None] = print,
        fleet_bind: str = facts.LOOPBACK,
        pki: Pki | None = None,
        ports_taken: set[int] | None = None,
        app_dir: Path | str = VALIDATION_APP,
    ) -> None:
        self.plan = plan
        self.tenancy: TenancyPlan = next((t for t in plan.tenancies if tenancy in (None, t.name)), None)  # type: ignore[assignment]
        if self.tenancy is None:
            raise RehearsalError(f"no tenancy {tenancy!r}; the stack has {', '.join(t.name for t in plan.tenancies)}")
        self.members: tuple[Member, ...] = self.tenancy.members
        self.dir = Path(workdir) / self.tenancy.name
        self.insecure = insecure
        self.say = log
        self.fleet_bind = fleet_bind
        self.pki = pki
        self.app_dir = Path(app_dir)
        self.venv = _venv()
        self._taken = ports_taken if ports_taken is not None else set()
        self.procs: dict[str, Proc] = {}
        self.supervisors: dict[str, Supervisor] = {}  # slug -> its SuperNode's supervisor
        self._registrations: list[subprocess.Popen] = []  # nina-membership register-many runs
        self._ls: Worker | None = None  # the interpreter that answers nodes() (`flwr supernode ls`)
        self._ls_lock = threading.Lock()
        self.marks: dict[str, float] = {}  # time.monotonic() of start_federation's steps (benchmarks)
        self.superlink: Proc | None = None
        self.kits: dict[str, Path] = {}
        self.node_ports: dict[str, int] = {}
        self.edits: list[str] = []
        self._prepared = False

    # --- setup ---------------------------------------------------------------------------

    def __enter__(self) -> Rehearsal:
        try:
            self.prepare()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def root(self) -> Path:
        return self.dir / "root"

    def _rooted(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    @property
    def ca_path(self) -> Path:
        return self._rooted(f"{facts.SUPERLINK_CERTS}/{facts.CA_CERT_FILE}")

    @property
    def state_db(self) -> Path:
        return self._rooted(facts.SUPERLINK_STATE_DB)

    @property
    def admin_flwr_home(self) -> Path:
        return self._rooted(facts.SUPERLINK_ADMIN_FLWR_HOME)

    @property
    def cli_home(self) -> Path:
        """FLWR_HOME of the operator's `flwr run` (its config.toml names facts.REHEARSAL_CONNECTION)."""
        return self.dir / "cli-home"

    def prepare(self) -> None:
        if self._prepared:
            return
        t = self.tenancy
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o700)  # kits and keys live here
        if self.pki is None:
            self.pki = build_pki(self.plan)
        outputs = kit.parse_outputs(stack_outputs(self.plan, self.pki))
        for m in self.members:
            self.kits[m.slug] = extract_kit(kit.build_kit(outputs, m.slug), self.dir / "kits")

        # The SuperLink host's files, through the real installer.
        bindir = self.dir / "bin"
        installer = _write(bindir / "nina-install-files", render.install_files_script(render.SOURCE_ROOT), 0o755)
        self.membership = _write(bindir / "nina-membership", render.membership_script(render.SOURCE_ROOT), 0o755)
        cert, key = self.pki.superlinks[t.name]
        payload = render.superlink_delivery(t, self.pki.ca_cert, cert, key)
        proc = subprocess.run(
            [sys.executable, str(installer), "--root", str(self.root)],
            input=payload,
            text=True,
            capture_output=True,
            timeout=60,
            env=self._env(),
        )
        if proc.returncode != 0:
            raise RehearsalError(f"nina-install-files failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")

        self.serverappio_port, self.fleet_port, self.control_port = pick_ports(
            (facts.SUPERLINK_SERVERAPPIO_PORT, facts.SUPERLINK_FLEET_PORT, facts.SUPERLINK_CONTROL_PORT), self._taken
        )
        for i, m in enumerate(self.members):
            self.node_ports[m.slug] = pick_ports((facts.SUPERNODE_CLIENTAPPIO_PORT + i,), self._taken)[0]

        self._superlink_script = _write(self.dir / "run_superlink.sh", self._superlink_sh(), 0o755)
        admin = self.admin_flwr_home / facts.FLWR_CONFIG_FILE
        if not admin.is_file():
            raise RehearsalError(f"the SuperLink delivery did not install {admin}")
        admin.write_text(self._cli_config(facts.SUPERLINK_ADMIN_CONNECTION))
        self.edits.append(f"admin flwr CLI config: Control API {facts.LOOPBACK}:{self.control_port}, CA {self.ca_path}")
        self.cli_home.mkdir(mode=0o700, exist_ok=True)
        (self.cli_home / facts.FLWR_CONFIG_FILE).write_text(self._cli_config(facts.REHEARSAL_CONNECTION))
        self._prepared = True

    def _env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "FLWR_TELEMETRY_ENABLED": "0",
                "FLWR_DISABLE_UPDATE_CHECK": "1",
                "NO_COLOR": "1",
                "TERM": "dumb",
                "PATH": f"{self.venv / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}",
            }
        )
        env.update(extra)
        return env

    def _superlink_sh(self) -> str:
        text = render.run_superlink_sh()
        what = "run_superlink.sh (rehearsal copy)"
        sa, fl, co = facts.SUPERLINK_SERVERAPPIO_PORT, facts.SUPERLINK_FLEET_PORT, facts.SUPERLINK_CONTROL_PORT
        text = _replace_once(
            text,
            f'--serverappio-api-address "{facts.LOOPBACK}:{sa}"',
            f'--serverappio-api-address "{facts.LOOPBACK}:{self.serverappio_port}"',
            what,
        )
        text = _replace_once(
            text, f'--fleet-api-address "{facts.ANY_ADDRESS}:{fl}"', f'--fleet-api-address "{self.fleet_bind}:{self.fleet_port}"', what
        )
        text = _replace_once(
            text, f'--control-api-address "{facts.ANY_ADDRESS}:{co}"', f'--control-api-address "{facts.LOOPBACK}:{self.control_port}"', what
        )
        self.edits.append(
            f"run_superlink.sh copy: ServerAppIo {facts.LOOPBACK}:{self.serverappio_port}, "
            f"Fleet {self.fleet_bind}:{self.fleet_port}, Control {facts.LOOPBACK}:{self.control_port}"
        )
        if self.insecure:
            for opt in ("--ssl-ca-certfile", "--ssl-certfile", "--ssl-keyfile"):
                text = _drop_option(text, opt, what)
            text = _drop_option(text, "--enable-supernode-auth", what, replacement="--insecure")
            self.edits.append("run_superlink.sh copy: --insecure, no TLS files, no --enable-supernode-auth (benchmark mode)")
        return text

    def _cli_config(self, name: str) -> str:
        """A flwr CLI config.toml whose default SuperLink connection `name` is this rehearsal's Control API."""
        return flwrcli.connection(name, f"{facts.LOOPBACK}:{self.control_port}", None if self.insecure else str(self.ca_path))

    # --- SuperLink -----------------------------------------------------------------------

    def _spawn(self, name: str, cmd: list[str], env: dict[str, str]) -> Proc:
        logs = self.dir / "logs"
        logs.mkdir(exist_ok=True)
        log = logs / f"{name}.log"
        fh = open(log, "a")  # noqa: SIM115 - the child process writes to it after we return
        fh.write(f"--- {time.strftime('%H:%M:%S')} {' '.join(cmd)}\n")
        fh.flush()
        try:
            popen = subprocess.Popen(
                cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, cwd=self.dir
            )
        finally:
            fh.close()
        proc = Proc(name, popen, log)
        self.procs[name] = proc
        return proc

    def start_superlink(self, timeout: float = facts.REHEARSAL_START_TIMEOUT, *, wait: bool = True) -> Proc:
        if self.superlink is not None and self.superlink.alive():
            raise RehearsalError("the SuperLink is already running")
        state = self._rooted(facts.SUPERLINK_STATE_DIR)
        state.mkdir(parents=True, exist_ok=True)
        env = self._env(
            PYTHONENV=str(self.venv),
            CONF_DIR=str(self._rooted(facts.SUPERLINK_ETC)),
            STATE_DIR=str(state),
            FLWR_HOME=str(self._rooted(facts.SUPERLINK_FLWR_HOME)),
        )
        self.superlink = self._spawn("superlink", ["bash", str(self._superlink_script)], env)
        return self._wait_superlink(timeout) if wait else self.superlink

    def _wait_superlink(self, timeout: float) -> Proc:
        """Wait until the SuperLink's Control and Fleet APIs accept connections."""
        assert self.superlink is not None
        deadline = time.monotonic() + timeout
        while not self._listening(self.control_port) or not self._listening(self.fleet_port):
            if not self.superlink.alive():
                raise RehearsalError(
                    f"the SuperLink exited with code {self.superlink.popen.returncode}:\n{self.superlink.output()[-3000:]}"
                )
            if time.monotonic() > deadline:
                raise RehearsalError(f"the SuperLink's APIs did not come up within {timeout:g} s:\n{self.superlink.output()[-3000:]}")
            time.sleep(0.2)
        return self.superlink

    @staticmethod
    def _listening(port: int) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(1)
            return s.connect_ex((facts.LOOPBACK, port)) == 0

    def stop_superlink(self) -> None:
        if self.superlink is not None:
            self.superlink.stop()

    def kill_superlink(self) -> None:
        """SIGKILL the SuperLink's whole process group (as a crashed VM would lose it)."""
        if self.superlink is not None:
            self.superlink.stop(signal.SIGKILL)

    def restart_superlink(self, timeout: float = facts.REHEARSAL_START_TIMEOUT) -> Proc:
        """Start the SuperLink again on the same ports and state DB."""
        if self.superlink is not None and self.superlink.alive():
            self.stop_superlink()
        deadline = time.monotonic() + timeout
        while not all(port_free(p) for p in (self.serverappio_port, self.control_port)):
            if time.monotonic() > deadline:
                busy = [p for p in (self.serverappio_port, self.control_port) if not port_free(p)]
                raise RehearsalError(f"the SuperLink's ports {busy} still have a listener {timeout:g} s after it stopped")
            time.sleep(0.2)
        return self.start_superlink(timeout)

    # --- membership ----------------------------------------------------------------------

    def _membership_env(self, retry_interval: float) -> dict[str, str]:
        return self._env(
            NINA_FLWR=str(self.venv / "bin" / "flwr"),
            NINA_MEMBERS_DIR=str(self._rooted(facts.SUPERLINK_MEMBERS_DIR)),
            NINA_FLWR_HOME=str(self.admin_flwr_home),
            NINA_CONTROL_WAIT=str(facts.REHEARSAL_START_TIMEOUT),
            NINA_RETRY_INTERVAL=f"{retry_interval:g}",
        )

    def _membership(self, *args: str, stdin: str | None = None) -> dict[str, Any]:
        proc = subprocess.run(
            [sys.executable, str(self.membership), *args],
            input=stdin or "",
            text=True,
            capture_output=True,
            env=self._membership_env(1),
            timeout=facts.REHEARSAL_START_TIMEOUT + 60,
        )
        if proc.returncode != 0:
            raise RehearsalError(f"nina-membership {' '.join(args)} failed (exit {proc.returncode}): {proc.stderr.strip()}")
        return json.loads(proc.stdout)

    def public_key(self, slug: str) -> str:
        """The organisation's SuperNode public key, from its kit."""
        return (self.kits[slug] / facts.SUPERNODE_CERTS.lstrip("/") / facts.SUPERNODE_PUB_FILE).read_text()

    def register(self, slug: str) -> str:
        """Register the organisation's SuperNode key (from its kit) with nina-membership; returns the node id."""
        return self._membership("register", slug, stdin=self.public_key(slug))["node-id"]

    def _start_registrations(self, slugs: Sequence[str]) -> subprocess.Popen:
        """`nina-membership register-many` for `slugs`, not waiting (see _finish_registrations)."""
        logs = self.dir / "logs"
        logs.mkdir(exist_ok=True)
        with open(logs / "nina-membership.log", "a") as err:
            proc = subprocess.Popen(
                [sys.executable, str(self.membership), "register-many"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                env=self._membership_env(0.2),  # its retries cost no process start-up: one interpreter
                start_new_session=True,
            )
        self._registrations.append(proc)
        assert proc.stdin is not None
        proc.stdin.write(json.dumps({slug: self.public_key(slug) for slug in slugs}))
        proc.stdin.close()
        return proc

    def _finish_registrations(self, proc: subprocess.Popen, registered: Callable[[str], object] | None = None) -> dict[str, str]:
        """Read register-many's line per organisation as it comes (calling `registered(slug)`);
        slug -> node id. Bounded: the process is killed if it outlives the Control API wait."""
        budget = facts.REHEARSAL_START_TIMEOUT + 60
        watchdog = threading.Timer(budget, proc.kill)
        watchdog.start()
        ids, errors = {}, []
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                doc = json.loads(line)
                if "error" in doc:
                    errors.append(f"{doc['slug']}: {doc['error']}")
                    continue
                ids[doc["slug"]] = str(doc["node-id"])
                if registered is not None:
                    registered(doc["slug"])
            code = proc.wait(timeout=30)
        finally:
            watchdog.cancel()
        if code != 0 or errors:
            log = self.dir / "logs" / "nina-membership.log"
            raise RehearsalError(f"nina-membership register-many failed (exit {code}): {'; '.join(errors) or f'see {log}'}")
        return ids

    def unregister(self, slug: str) -> dict[str, Any]:
        return self._membership("unregister", slug)

    def registered(self) -> dict[str, str]:
        """slug -> node id, as `nina-membership list` records them."""
        return {m["slug"]: str(m["node-id"]) for m in self._membership("list")["members"]}

    def register_all(self) -> dict[str, str]:
        """Register every organisation's key with one `nina-membership register-many`; slug -> node id."""
        if self.insecure:
            return {}  # no --enable-supernode-auth: nothing to register
        return self._finish_registrations(self._start_registrations([m.slug for m in self.members]))

    def start_federation(self, timeout: float = facts.REHEARSAL_START_TIMEOUT, *, registration: str = "batch") -> dict[str, str]:
        """SuperLink, registrations and SuperNodes, overlapped (returns slug -> node id; {} insecure).

        Secured: `nina-membership register-many` starts with the SuperLink (it retries until the
        Control API answers; its registrations run at once), and the SuperNodes start together
        as soon as its last line says every key is registered. (When the batch registered one
        key after the other, starting each SuperNode as soon as its own key was registered made
        it slower with flwr 1.31: on 2 cores the SuperNodes' start-up, about 1.4 s of CPU each,
        slowed the remaining registrations.) Insecure: the SuperNodes start once the
        SuperLink's APIs listen.
        Either way no SuperNode starts before its SuperLink listens, so the two differ only by
        the registrations. Then `wait_online`. `registration="each"` (benchmarks: what the
        deployment does) runs one `nina-membership register <slug>` per organisation at once
        once the Control API listens, each starting its SuperNode when done.
        """
        self.marks = {"start": time.monotonic()}
        if self.insecure:
            self.start_superlink(timeout)
            self.marks["listening"] = time.monotonic()
            self.start_supernodes()
            self.marks["supernodes started"] = time.monotonic()
            return {}
        if self.superlink is not None and self.superlink.alive():
            raise RehearsalError("the SuperLink is already running")
        if registration == "each":
            return self._start_federation_each(timeout)
        self.start_superlink(timeout=0, wait=False)
        registrations = self._start_registrations([m.slug for m in self.members])
        self._wait_superlink(timeout)
        self.marks["listening"] = time.monotonic()

        done: set[str] = set()

        def registered(slug: str) -> None:
            # Lines come as registrations finish: start the SuperNodes with the last one, not
            # once register-many has also exited.
            self.marks.setdefault("first registered", time.monotonic())
            done.add(slug)
            if len(done) == len(self.members):
                self.marks["registered"] = time.monotonic()
                self.start_supernodes()
                self.marks["supernodes started"] = time.monotonic()

        return self._finish_registrations(registrations, registered)

    def _start_federation_each(self, timeout: float) -> dict[str, str]:
        self.start_superlink(timeout)
        self.marks["listening"] = time.monotonic()
        ids: dict[str, str] = {}
        errors: list[str] = []
        lock = threading.Lock()

        def one(slug: str) -> None:
            try:
                node = self.register(slug)
            except (RehearsalError, subprocess.TimeoutExpired) as exc:
                errors.append(str(exc))
                return
            with lock:
                self.marks.setdefault("first registered", time.monotonic())
                ids[slug] = node
                self.start_supernode(slug)

        threads = [threading.Thread(target=one, args=(m.slug,)) for m in self.members]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise RehearsalError("; ".join(errors))
        self.marks["supernodes started"] = self.marks["registered"] = time.monotonic()
        return ids

    def _flwr(self, *args: str, home: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
        env = self._env(FLWR_HOME=str(home or self.cli_home))
        return subprocess.run(
            [str(self.venv / "bin" / "flwr"), *args], capture_output=True, text=True, env=env, timeout=timeout, stdin=subprocess.DEVNULL
        )

    def nodes(self) -> list[dict[str, Any]]:
        """`flwr supernode ls` with the admin CLI config (empty if the Control API does not answer).

        wait_online polls this every half second while SuperNodes start: a `flwr` process per poll
        (Python start-up and `import flwr`, about 1.3 s of CPU with flwr 1.31) would take a good
        part of 2 cores from what it measures, so every poll runs in one interpreter kept for the
        rehearsal (nina-membership's Worker: the same command line, forked from it)."""
        argv = ["supernode", "ls", facts.SUPERLINK_ADMIN_CONNECTION, "--format", "json"]
        flwr = str(self.venv / "bin" / "flwr")
        python = script_interpreter(flwr)
        if python is None:  # not a Python script: one process per poll
            try:
                proc = self._flwr(*argv, home=self.admin_flwr_home, timeout=30)
            except subprocess.TimeoutExpired:
                return []
            stdout = proc.stdout
        else:
            with self._ls_lock:
                try:
                    if self._ls is None or self._ls.proc.poll() is not None:
                        env = flwrcli.env(self.admin_flwr_home, self._env())
                        self._ls = Worker(python, flwr, env)
                    _, stdout, _ = self._ls.run(argv, timeout=30)
                except Failure:
                    self._ls = None  # killed on a timeout, or it exited: a new one next time
                    return []
        doc = parse_json(stdout) or {}
        return list(doc.get("nodes") or [])

    def wait_online(self, count: int, timeout: float = facts.REHEARSAL_START_TIMEOUT) -> float:
        """Wait until `count` nodes are online; returns the seconds waited."""
        start = time.monotonic()
        while True:
            online = [n for n in self.nodes() if n.get("status") == "online"]
            if len(online) >= count:
                return time.monotonic() - start
            if time.monotonic() - start > timeout:
                raise RehearsalError(f"{len(online)} of {count} SuperNodes online after {timeout:g} s; logs in {self.dir / 'logs'}")
            time.sleep(0.5)

    # --- SuperNodes ----------------------------------------------------------------------

    def supernode_conf_dir(self, slug: str, *, superlink_host: str = facts.LOOPBACK) -> Path:
        """A copy of the kit's etc/flwr/supernode/ with the rehearsal's edits to supernode.conf."""
        src = self.kits[slug] / facts.SUPERNODE_ETC.lstrip("/")
        dst = self.dir / "nodes" / slug / "etc"
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(src, dst)
        conf = dst / posixpath_name(facts.SUPERNODE_CONF)
        text = conf.read_text()
        what = f"{slug}: supernode.conf (rehearsal copy)"
        text = _set_line(text, r"^superlink_server=.*$", f"superlink_server={superlink_host}", what)
        text = _set_line(text, r"^superlink_port=.*$", f"superlink_port={self.fleet_port}", what)
        text = _set_line(text, r"^local_port=.*$", f"local_port={self.node_ports[slug]}", what)
        conf.write_text(text)
        return dst

    def _supernode_script(self, slug: str, trust_ca: bool) -> Path:
        script = self.kits[slug] / facts.SUPERNODE_RUN_SCRIPT.lstrip("/")
        if not self.insecure and trust_ca:
            return script  # the kit's own script, unchanged
        text = script.read_text()
        what = f"{slug}: run_supernode.sh (rehearsal copy)"
        if self.insecure:
            text = _drop_option(text, "--root-certificates", what, replacement="--insecure")
            text = _drop_option(text, "--auth-supernode-private-key", what)
        else:
            text = _drop_option(text, "--root-certificates", what)
        return _write(self.dir / "nodes" / slug / "run_supernode.sh", text, 0o755)

    def restart_policy(self, slug: str) -> RestartPolicy:
        """Restart=/RestartSec= of the organisation's own supernode.service (from its kit, the
        unit nina.render renders for cloud SuperNodes too)."""
        unit = self.kits[slug] / facts.SUPERNODE_OPT.lstrip("/") / facts.SUPERNODE_UNIT
        return RestartPolicy.from_unit(unit.read_text(), facts.SUPERNODE_UNIT)

    def start_supernode(
        self, slug: str, *, superlink_host: str = facts.LOOPBACK, trust_ca: bool = True, env: dict[str, str] | None = None
    ) -> Proc:
        """Start the organisation's SuperNode from its kit's run_supernode.sh, supervised as its
        supernode.service would be (see Supervisor; the restarts are logged and counted in
        `restarts()`). `trust_ca=False` drops --root-certificates (system trust store);
        `superlink_host` is the name it dials."""
        name = f"supernode-{slug}"
        old = self.supervisors.get(slug)
        if old is not None and old.active:
            raise RehearsalError(f"{name} is already running")
        conf_dir = self.supernode_conf_dir(slug, superlink_host=superlink_host)
        script = self._supernode_script(slug, trust_ca)
        env = self._env(
            PYTHONENV=str(self.venv), CONF_DIR=str(conf_dir), FLWR_HOME=str(self.dir / "nodes" / slug / "flwr-home"), **(env or {})
        )
        sup = Supervisor(name, lambda: self._spawn(name, ["bash", str(script)], env), self.restart_policy(slug), self.say)
        self.supervisors[slug] = sup
        return sup.proc

    def start_supernodes(self, slugs: Iterable[str] | None = None) -> None:
        for slug in list(slugs) if slugs is not None else [m.slug for m in self.members]:
            self.start_supernode(slug)

    def stop_supernode(self, slug: str) -> None:
        """Stop the SuperNode for good (systemctl stop): no restart follows."""
        sup = self.supervisors.get(slug)
        if sup is not None:
            sup.stop()

    def kill_supernode(self, slug: str) -> None:
        """SIGKILL the SuperNode's main process, as a crash would end it: its supervisor stops
        the rest of its group and restarts it after RestartSec, as systemd would."""
        self.supervisors[slug].kill(signal.SIGKILL)

    def supernode(self, slug: str) -> Proc:
        """The SuperNode's current process (a restart makes a new one)."""
        return self.supervisors[slug].proc

    def restarts(self) -> dict[str, int]:
        """slug -> how many times its supervisor restarted its SuperNode."""
        return {slug: sup.restarts for slug, sup in self.supervisors.items()}

    # --- the validation app --------------------------------------------------------------

    def _app_copy(self) -> Path:
        return flwrcli.app_copy(self.app_dir, self.dir / "app")

    def start_app(
        self,
        rounds: int = facts.REHEARSAL_ROUNDS,
        expected_partitions: Iterable[int] | None = None,
        round_timeout: float = facts.REHEARSAL_ROUND_TIMEOUT,
        tag: str = "run",
    ) -> AppRun:
        """Submit the validation app with `flwr run --stream` (not waiting); see AppRun.wait."""
        expected = sorted(expected_partitions) if expected_partitions is not None else sorted(m.partition_id for m in self.members)
        app = self._app_copy()
        summary = self.dir / f"{tag}-summary.json"
        summary.unlink(missing_ok=True)
        run_config = validation_run_config(expected, rounds, round_timeout, str(summary), rehearsal_pins(self.tenancy))
        cmd = flwrcli.run_command(self.venv / "bin" / "flwr", app, facts.REHEARSAL_CONNECTION, run_config)
        proc = self._spawn(f"flwr-{tag}", cmd, self._env(FLWR_HOME=str(self.cli_home)))
        budget = round_timeout * (rounds + 1) + 90
        return AppRun(self, proc, summary, expected, time.monotonic(), budget)

    def run_app(
        self,
        rounds: int = facts.REHEARSAL_ROUNDS,
        expected_partitions: Iterable[int] | None = None,
        round_timeout: float = facts.REHEARSAL_ROUND_TIMEOUT,
        tag: str = "run",
    ) -> RunResult:
        return self.start_app(rounds, expected_partitions, round_timeout, tag).wait()

    # --- teardown ------------------------------------------------------------------------

    def close(self) -> None:
        """Stop every process this rehearsal started (process groups), SuperNodes first; their
        supervisors first of all, so that no stop leads to a restart."""
        with self._ls_lock:
            if self._ls is not None:
                with contextlib.suppress(Exception):
                    self._ls.close()
                self._ls = None
        for sup in self.supervisors.values():
            with contextlib.suppress(Exception):
                sup.stop()
        for reg in self._registrations:
            if reg.poll() is not None:
                continue
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(reg.pid, signal.SIGKILL)  # its own session: it and its flwr interpreter
            with contextlib.suppress(Exception):
                reg.wait(timeout=facts.REHEARSAL_STOP_TIMEOUT)
        order = sorted(self.procs.values(), key=lambda p: (p.name == "superlink", p.name))
        for proc in order:
            with contextlib.suppress(Exception):
                proc.stop()


def posixpath_name(path: str) -> str:
    return path.rsplit("/", 1)[-1]


@dataclass
class AppRun:
    rehearsal: Rehearsal
    proc: Proc
    summary_path: Path
    expected: list[int]
    started: float
    budget: float

    def rounds_so_far(self) -> list[dict[str, Any]]:
        return _round_lines(self.proc.output())

    def wait(self) -> RunResult:
        try:
            self.proc.popen.wait(timeout=max(1.0, self.started + self.budget - time.monotonic()))
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
        self.proc.stop()
        seconds = time.monotonic() - self.started
        summary = None
        with contextlib.suppress(OSError, ValueError):
            summary = json.loads(self.summary_path.read_text())
        return judge_run(
            self.proc.output(),
            summary,
            self.expected,
            self.proc.popen.returncode,
            f"`flwr run` did not finish within {self.budget:g} s" if timed_out else None,
            seconds,
            f"see {self.proc.log}",
        )


def validation_run_config(
    expected: Sequence[int],
    rounds: int,
    round_timeout: float,
    summary_path: str | None = None,
    environment: Mapping[str, str] | None = None,
) -> str:
    """The `--run-config` of a validation run that every partition in `expected` must answer, each
    with exactly the `environment` pins (name -> version) installed."""
    pins = ",".join(f"{name}=={version}" for name, version in sorted((environment or {}).items()))
    if any(c in pins for c in '"\\ \n'):
        raise ValueError(f"environment pins {pins[:80]!r} hold a quote, backslash or blank")
    text = (
        f"num-server-rounds={int(rounds)} expected-nodes={len(expected)} "
        f'expected-partitions="{",".join(map(str, expected))}" wait-seconds={int(round_timeout)} '
        f'round-timeout={int(round_timeout)} environment="{pins}"'
    )
    return text + (f' summary-path="{summary_path}"' if summary_path else "")


def rehearsal_pins(tenancy: TenancyPlan) -> dict[str, str]:
    """What the rehearsal (and `nina validate`, from the outputs' lock header) compares each node
    with: the environment's own pins (flwr and its packages). The rest of the lock (their
    dependencies) is nina-env-sync's to install and check on hosts; the rehearsal's SuperNodes run
    in this project's venv (Python 3.11, the test tools' packaging and uv beside flwr), not in a
    venv of the hosts' Python 3.12 lock."""
    return tenancy.environment.pins()


def judge_run(
    out: str,
    summary: dict[str, Any] | None,
    expected: Sequence[int],
    returncode: int | None,
    timeout_error: str | None,
    seconds: float,
    hint: str,
    *,
    lock: Mapping[str, str] | None = None,
) -> RunResult:
    """Judge a validation run from its `flwr run --stream` output (and the summary file, if read).

    Two modes: without `lock` (`nina rehearse`, whose nodes run this project's venv) each node's
    environment is judged by the definition's pins the ServerApp compared; with `lock` (`nina
    validate`: the tenancy's whole lock, canonical name -> version) each node's whole installed
    set must also be the lock's (environments.lock_differences)."""
    if summary is None:
        summary = next((json.loads(line.split(SUMMARY_PREFIX, 1)[1]) for line in out.splitlines() if SUMMARY_PREFIX in line), None)
    # Everything below comes from the nodes' reports, through the ServerApp: each string bounded and
    # printable before it reaches a table, an error or the operator's terminal; a shape the app does
    # not write is a failed run, not a traceback.
    # The ServerApp's own error joins every node's problem: longer, but printable too.
    app_error = summary.get("error") if isinstance(summary, dict) else None
    summary = _tame(summary)
    malformed = None
    if summary is not None and (not isinstance(summary, dict) or not isinstance(summary.get("rounds", []), list)):
        summary, malformed = None, "the ServerApp's summary is malformed (not an object with a list of rounds)"
    raw_rounds = summary.get("rounds", []) if summary else _tame(_round_lines(out))
    rounds = []
    for i, r in enumerate(raw_rounds, 1):
        why = _round_shape(r)
        if why is None:
            rounds.append(r)
        elif malformed is None:
            malformed = f"round line {i} from the ServerApp is malformed: {why}"
    error = None
    if timeout_error:
        error = timeout_error
    elif malformed is not None:
        error = malformed
    elif summary is None:
        error = f"the ServerApp wrote no summary (flwr run exit {returncode}); {hint}"
    elif not summary.get("ok"):
        error = (
            shown(app_error, facts.REPORT_ERROR_CHARS) if isinstance(app_error, str) and app_error else "the ServerApp reported a failure"
        )
    elif returncode not in (0, None):
        error = f"`flwr run` exited with code {returncode}"
    if lock is not None:  # validate mode: every round's nodes against the whole lock (the table lists them too)
        rounds = [{**r, "lock-differences": _lock_problems(r, lock)} for r in rounds]
    if error is None:
        # The app already checks this; check again here so a changed app cannot pass silently.
        for r in rounds:
            missing = sorted(set(expected) - set(r.get("partitions", [])))
            if missing:
                error = f"round {r.get('round')}: partitions {missing} did not answer"
                break
            if r.get("environment-errors"):
                error = f"round {r.get('round')}: a node's training environment is not its tenancy's: " + "; ".join(r["environment-errors"])
                break
            unreported = sorted(set(map(str, r.get("partitions", []))) - set(r.get("environments", {})))
            if unreported:
                error = f"round {r.get('round')}: partitions {', '.join(unreported)} reported no training environment"
                break
            if r.get("lock-differences"):
                error = f"round {r.get('round')}: a node's installed packages are not its tenancy's lock: " + "; ".join(
                    r["lock-differences"]
                )
                break
        if not rounds:
            error = "no rounds ran"
    return RunResult(error is None, rounds, error and shown(error), seconds, out, list(expected), None if lock is None else len(lock))


def _tame(value: Any) -> Any:
    """A parsed report with every string (keys too) bounded to facts.REPORT_STRING_CHARS and printable."""
    if isinstance(value, str):
        return shown(value, facts.REPORT_STRING_CHARS)
    if isinstance(value, dict):
        return {_tame(k): _tame(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_tame(v) for v in value]
    return value


def _round_shape(r: Any) -> str | None:
    """Why a round line is not what the validation app writes (None: it is)."""
    if not isinstance(r, dict):
        return "not an object"
    if not isinstance(r.get("round", 0), int):
        return "round is not a number"
    if not isinstance(r.get("partitions", []), list) or not all(type(p) is int for p in r.get("partitions", [])):
        return "partitions is not a list of numbers"
    for key in ("hosts", "environments"):
        if not isinstance(r.get(key, {}), dict):
            return f"{key} is not an object"
    for key in ("environment-errors", "missing"):
        if not isinstance(r.get(key, []), list):
            return f"{key} is not a list"
    for p, env in r.get("environments", {}).items():
        if not isinstance(env, dict):
            return f"the environment of partition {p} is not an object"
        if not isinstance(env.get("distributions", []), list):
            return f"the installed set of partition {p} is not a list"
    return None


def _lock_problems(r: dict[str, Any], lock: Mapping[str, str]) -> list[str]:
    """Each partition's differences from the whole lock in one round, naming partition and host."""
    problems = []
    hosts = r.get("hosts", {})
    for p, env in sorted(r.get("environments", {}).items(), key=lambda kv: int(kv[0]) if kv[0].isdigit() else 0):
        who = f"partition {p} ({hosts.get(p, '?')})"
        dists = env.get("distributions")
        if not isinstance(dists, list):
            problems.append(f"{who} reported no installed set (an old validation app?)")
            continue
        try:
            found = environments.lock_differences(dict(lock), dists)
        except ValueError as exc:
            found = [str(exc)]
        problems += [f"{who}: {d}" for d in found]
    return problems


def _round_lines(out: str) -> list[dict[str, Any]]:
    rounds = []
    for line in out.splitlines():
        if ROUND_PREFIX in line:
            with contextlib.suppress(ValueError):
                rounds.append(json.loads(line.split(ROUND_PREFIX, 1)[1]))
    return rounds


# ---------------------------------------------------------------------------------------
# The whole stack (what `nina rehearse` runs)
# ---------------------------------------------------------------------------------------


@dataclass
class TenancyReport:
    tenancy: str
    ok: bool
    reason: str | None
    ready_seconds: float | None
    result: RunResult | None
    restarts: dict[str, int] = field(default_factory=dict)  # slug -> SuperNode restarts by its supervisor


def rehearse(
    plan: Plan, workdir: Path, *, rounds: int = facts.REHEARSAL_ROUNDS, insecure: bool = False, log: Callable[[str], None] = print
) -> list[TenancyReport]:
    """Rehearse every tenancy of the plan in turn (one SuperLink at a time); never raises RehearsalError."""
    reports = []
    pki = build_pki(plan)
    for note in pki.notes:
        log(f"note: {note}")
    for t in plan.tenancies:
        log(f"== tenancy {t.name}: {len(t.members)} organisation(s): {', '.join(m.slug for m in t.members)}")
        try:
            with Rehearsal(plan, workdir, t.name, insecure=insecure, log=log, pki=pki) as r:
                log(
                    f"kits built and extracted in {r.dir / 'kits'} (VPN public IP {facts.REHEARSAL_PUBLIC_IP} is a "
                    "documentation address: the VPN is not rehearsed)"
                )
                for edit in r.edits:
                    log(f"rehearsal edit: {edit}")
                t0 = time.monotonic()
                ids = r.start_federation()
                for slug, node in ids.items():
                    log(f"registered {slug} with nina-membership register-many: node {node}")
                log(
                    f"rehearsal edit: each kit's supernode.conf copy: superlink_server={facts.LOOPBACK}, "
                    f"superlink_port={r.fleet_port}, local_port " + ", ".join(f"{s}={p}" for s, p in r.node_ports.items())
                )
                r.wait_online(len(r.members))
                ready = time.monotonic() - t0
                log(f"federation ready: {len(r.members)} SuperNode(s) online after {ready:.1f} s")
                result = r.run_app(rounds)
                log(result.table())
                log(f"run time {result.seconds:.1f} s")
                restarts = r.restarts()
                restarted = ", ".join(f"{slug} {n}" for slug, n in restarts.items() if n)
                log(f"SuperNode restarts (supervised as {r.restart_policy(t.members[0].slug).describe()}): {restarted or 'none'}")
                reports.append(TenancyReport(t.name, result.ok, result.error, ready, result, restarts))
        except RehearsalError as exc:
            reports.append(TenancyReport(t.name, False, str(exc), None, None))
        except subprocess.TimeoutExpired as exc:
            reports.append(TenancyReport(t.name, False, f"timed out: {exc}", None, None))
    return reports
