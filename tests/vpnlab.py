"""A network-namespace lab for the OpenVPN hub: real openvpn, real iptables, no host changes.

Layout (every namespace and link is created here, named with a random tag, and deleted in
`close()`, which also kills every process the lab started):

    client ns "<name>"  --veth 10.255.<n>.2/30--  server ns "srv"  --veth--  internal ns "int"
    (openvpn client)         public side .1         (openvpn servers,          (the SuperLink:
                                                     nina-vpn-forwarding)       TCP listeners)

The server namespace's internal link carries `VpnPlan.internal_ip` and the internal namespace
`VpnPlan.superlink_ip`, both with the prefix of the first pushed route (the server segment);
the internal namespace has no route back to the VPN pool, so anything that reaches it from a
client must have been masqueraded by the server.

Files are plain `{absolute path: bytes}` maps placed under a per-party root directory, and
configs are rewritten to point there (`rewrite`), so a test can plug in freshly rendered
files or the contents of an exported site kit alike.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import posixpath
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from nina import facts, render
from nina.plan import VpnPlan

OPENVPN = shutil.which("openvpn") or ""  # "" when missing (the tests skip)
IP = shutil.which("ip") or ""  # "" when missing (the tests skip)
IPTABLES = shutil.which("iptables") or ""  # "" when missing (the tests skip)
# Directives a test run must not keep: no privilege drop (files live in a root-only tmp dir),
# no daemonising, no log files (the lab reads stdout).
DROPPED_DIRECTIVES = ("user", "group", "daemon", "log", "log-append")
ETC_OPENVPN = "/etc/openvpn"
COMMAND_TIMEOUT = 15

LISTENER = r"""
import selectors, socket, sys
log = open(sys.argv[1], "a", buffering=1)
sel = selectors.DefaultSelector()
for port in sys.argv[3:]:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[2], int(port)))
    s.listen(16)
    sel.register(s, selectors.EVENT_READ, int(port))
print("listening", flush=True)
while True:
    for key, _ in sel.select():
        conn, peer = key.fileobj.accept()
        log.write(f"{key.data} {peer[0]}\n")
        try:
            conn.sendall(f"{peer[0]}\n".encode())
        finally:
            conn.close()
"""

CONNECT = r"""
import socket, sys
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))
    s.settimeout(float(sys.argv[3]))
    print("OK " + s.recv(200).decode().strip())
except OSError as exc:
    print("FAIL " + type(exc).__name__)
"""


def netns_unavailable_reason() -> str | None:
    """Why the lab cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    for tool, name in ((OPENVPN, "openvpn"), (IP, "ip (iproute2)"), (IPTABLES, "iptables")):
        if not tool:
            return f"{name} missing (scripts/bootstrap --test-tools installs it)"
    probe = f"nina-probe-{secrets.token_hex(3)}"
    try:
        add = subprocess.run([IP, "netns", "add", probe], capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
        if add.returncode != 0:
            return f"`ip netns add` fails: {add.stderr.strip()}"
        tap = subprocess.run(
            [IP, "netns", "exec", probe, IP, "tuntap", "add", "dev", "taptest", "mode", "tap"],
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
        )
        if tap.returncode != 0:
            return f"cannot create a tap device in a namespace: {tap.stderr.strip()}"
        ipt = subprocess.run(
            [IP, "netns", "exec", probe, IPTABLES, "-w", "-t", "nat", "-S"], capture_output=True, text=True, timeout=COMMAND_TIMEOUT
        )
        if ipt.returncode != 0:
            return f"iptables does not work in a namespace: {ipt.stderr.strip()}"
    finally:
        subprocess.run([IP, "netns", "del", probe], capture_output=True, timeout=COMMAND_TIMEOUT)
    return None


def rewrite(conf: str, root: Path) -> str:
    """A rendered OpenVPN config with /etc/openvpn/... under `root` and without DROPPED_DIRECTIVES.

    A config that runs nina-vpn-verify runs a launcher of this checkout's nina.host.vpn_verify
    instead, written here under `root`/.lab-programs (the delivered launcher, which a test's
    delivery may compare, runs the host's installed copy under /usr/local/lib/nina)."""
    verify = f'"{facts.VPN_VERIFY_BIN} '
    if verify in conf:
        launcher = root / ".lab-programs" / posixpath.basename(facts.VPN_VERIFY_BIN)
        launcher.parent.mkdir(parents=True, exist_ok=True)
        launcher.write_text(render.launcher("vpn_verify", render.SOURCE_ROOT).replace(facts.HOST_PYTHON, sys.executable, 1))
        launcher.chmod(0o755)
        conf = conf.replace(verify, f'"{launcher} ')
    out = []
    for line in conf.splitlines():
        words = line.split()
        if words and words[0] in DROPPED_DIRECTIVES:
            continue
        if words and words[0].startswith(("#", ";")):
            out.append(line)  # comments stay as they are (openvpn limits every line to 256 characters)
            continue
        out.append(line.replace(f" {ETC_OPENVPN}/", f" {root}{ETC_OPENVPN}/"))
    return "\n".join(out) + "\n"


def place(root: Path, files: dict[str, bytes]) -> None:
    for path, data in files.items():
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        target.chmod(0o600 if "/private/" in path or path.endswith(".key") else 0o644)


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def running(self) -> bool:
        return self.popen.poll() is None


@dataclass
class Client:
    name: str
    ns: str
    public_ip: str  # the server's address as this client sees it
    root: Path
    proc: Proc | None = None


@dataclass
class VpnLab:
    """See the module docstring. Use as a context manager, or call close() in a finally."""

    workdir: Path
    vpn: VpnPlan
    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    namespaces: list[str] = field(default_factory=list)
    procs: list[Proc] = field(default_factory=list)
    clients: dict[str, Client] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.server_root = self.workdir / "server-root"
        self.server_root.mkdir(parents=True, exist_ok=True)
        self.listener_log = self.workdir / "listener-seen.log"
        try:
            self.srv = self._netns("srv")
            self.int = self._netns("int")
            prefix = self.vpn.routes[0].prefixlen
            self.internal_if, _ = self._veth(self.srv, f"{self.vpn.internal_ip}/{prefix}", self.int, f"{self.vpn.superlink_ip}/{prefix}")
        except BaseException:
            self.close()
            raise

    # --- plumbing -------------------------------------------------------------------------

    def run(
        self,
        *argv: str,
        ns: str | None = None,
        check: bool = True,
        timeout: float = COMMAND_TIMEOUT,
        env: dict[str, str] | None = None,
        input: str | None = None,
    ) -> subprocess.CompletedProcess:
        cmd = [IP, "netns", "exec", ns, *argv] if ns else list(argv)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, input=input)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip()}")
        return proc

    def _netns(self, role: str) -> str:
        name = f"nina-{self.tag}-{role}"
        self.run(IP, "netns", "add", name)
        self.namespaces.append(name)
        self.run(IP, "link", "set", "lo", "up", ns=name)
        return name

    def _veth(self, ns_a: str, addr_a: str, ns_b: str, addr_b: str) -> tuple[str, str]:
        n = len(self.namespaces) + len(self.clients)
        a, b = f"nv{self.tag}{n}a", f"nv{self.tag}{n}b"  # <= 15 characters
        self.run(IP, "link", "add", a, "netns", ns_a, "type", "veth", "peer", "name", b, "netns", ns_b)
        for ns, dev, addr in ((ns_a, a, addr_a), (ns_b, b, addr_b)):
            self.run(IP, "addr", "add", addr, "dev", dev, ns=ns)
            self.run(IP, "link", "set", dev, "up", ns=ns)
        return a, b

    def spawn(self, name: str, argv: list[str], ns: str) -> Proc:
        log = self.workdir / f"{name}.log"
        out = open(log, "w")  # noqa: SIM115 - handed to the child process
        try:
            popen = subprocess.Popen(
                [IP, "netns", "exec", ns, *argv], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        finally:
            out.close()
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc | None, timeout: float = 5) -> None:
        if proc is None or not proc.running():
            return
        try:
            os.killpg(proc.popen.pid, signal.SIGTERM)
            proc.popen.wait(timeout=timeout)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.popen.pid, signal.SIGKILL)
            proc.popen.wait(timeout=timeout)

    def close(self) -> None:
        live = [p for p in self.procs if p.running()]
        for proc in live:  # all at once: openvpn takes a moment to exit (exit notifications)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.popen.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for proc in live:
            try:
                proc.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.popen.pid, signal.SIGKILL)
                    proc.popen.wait(timeout=5)
                except (ProcessLookupError, subprocess.TimeoutExpired):  # cleanup must go on
                    pass
        for ns in reversed(self.namespaces):
            subprocess.run([IP, "netns", "del", ns], capture_output=True, timeout=COMMAND_TIMEOUT)
        self.namespaces.clear()

    def __enter__(self) -> VpnLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the parties ----------------------------------------------------------------------

    def add_client(self, name: str) -> Client:
        """A client namespace with its own /30 link to the server namespace."""
        n = len(self.clients)
        net = ipaddress.IPv4Network(f"10.255.{n}.0/30")
        ns = self._netns(f"c{n}")
        server_addr, client_addr = net.network_address + 1, net.network_address + 2
        self._veth(self.srv, f"{server_addr}/30", ns, f"{client_addr}/30")
        client = Client(name, ns, str(server_addr), self.workdir / f"client-{name}-root")
        self.clients[name] = client
        return client

    def install_server_files(self, files: dict[str, bytes]) -> None:
        place(self.server_root, files)

    def start_listener(self, *ports: int) -> Proc:
        script = self.workdir / "listener.py"
        script.write_text(LISTENER)
        proc = self.spawn(
            "listener", [sys.executable, str(script), str(self.listener_log), self.vpn.superlink_ip, *map(str, ports)], self.int
        )
        if not wait_for(proc, "listening", 10):
            raise RuntimeError(f"listener did not start: {proc.output()}")
        return proc

    def listener_seen(self) -> list[tuple[int, str]]:
        if not self.listener_log.exists():
            return []
        return [(int(p), peer) for p, peer in (line.split() for line in self.listener_log.read_text().splitlines())]

    def run_forwarding(self, script_text: str, env: dict[str, str] | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
        script = self.workdir / "nina-vpn-forwarding"
        script.write_text(script_text)
        script.chmod(0o755)
        full = {
            **os.environ,
            "NINA_SYSCTL_DROPIN": str(self.server_root / "etc/sysctl.d/60-nina-vpn.conf"),
            "NINA_ROUTE_WAIT": "5",
            **(env or {}),
        }
        return self.run("bash", str(script), ns=self.srv, check=False, env=full, timeout=timeout)

    def start_server(self, name: str, conf_text: str) -> Proc:
        """An openvpn server in the server namespace from a rendered config (paths under server_root).

        The management socket goes where the config says, under server_root, but is named
        relative to `--cd` (a unix socket path is limited to 107 bytes; tmp paths are longer)."""
        conf = self.workdir / f"{name}.conf"
        lines, run_dir = [], None
        for line in rewrite(conf_text, self.server_root).splitlines():
            words = line.split()
            if words[:1] == ["management"]:
                sock = self.server_root / words[1].lstrip("/")
                run_dir = sock.parent
                run_dir.mkdir(parents=True, exist_ok=True, mode=0o710)
                line = f"management {sock.name} {' '.join(words[2:])}"
            lines.append(line)
        conf.write_text("\n".join(lines) + "\n")
        cd = ["--cd", str(run_dir)] if run_dir else []
        return self.spawn(name, [OPENVPN, *cd, "--config", str(conf)], self.srv)

    def start_client(self, client: Client, conf_text: str, files: dict[str, bytes], name: str | None = None) -> Proc:
        """An openvpn client in `client`'s namespace from a rendered config and its files."""
        self.stop(client.proc)
        place(client.root, files)
        conf = self.workdir / f"{name or client.name}.conf"
        conf.write_text(rewrite(conf_text, client.root))
        client.proc = self.spawn(name or client.name, [OPENVPN, "--config", str(conf)], client.ns)
        return client.proc

    # --- observations ---------------------------------------------------------------------

    def addresses(self, ns: str) -> dict[str, list[str]]:
        """device -> IPv4 addresses/prefix in a namespace."""
        out = json.loads(self.run(IP, "-j", "-4", "addr", "show", ns=ns).stdout or "[]")
        return {d["ifname"]: [f"{a['local']}/{a['prefixlen']}" for a in d.get("addr_info", [])] for d in out}

    def connect(self, ns: str, host: str, port: int, timeout: float = 2.0) -> str | None:
        """What the listener answered (the source address it saw), or None if no connection."""
        proc = self.run(sys.executable, "-c", CONNECT, host, str(port), str(timeout), ns=ns, check=False, timeout=timeout + 10)
        line = proc.stdout.strip()
        return line[3:] if line.startswith("OK ") else None


def wait_for(proc: Proc, pattern: str, timeout: float, interval: float = 0.1) -> re.Match | None:
    """Wait until `pattern` (a regex) appears in the process's output; None on timeout or exit."""
    regex = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while True:
        found = regex.search(proc.output())
        if found or time.monotonic() > deadline:
            return found
        if not proc.running():
            return regex.search(proc.output())
        time.sleep(interval)
