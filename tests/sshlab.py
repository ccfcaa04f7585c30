"""A network-namespace lab for `nina validate`: the operator, a bastion and a SuperLink host.

    operator ns "…-op"   --veth 192.0.2.2/24 ─ <bastion_ip>/24--   bastion ns "…-bastion"
    (nina validate)                                                  (sshd on :22, no IP forwarding)
    bastion ns  --<bastion fixed ip>/24 ─ <superlink ip>/24--  SuperLink ns "…-sl"
                                                               (sshd on :22; the rehearsal's SuperLink,
                                                                Control API on this namespace's loopback)

The operator namespace routes the server segment through the bastion, so a direct connection
to the SuperLink is attempted and dropped there (forwarding off), as Nectar's security groups
drop it; the only way in is SSH. Both sshds are real OpenSSH servers with host keys made here,
accepting only the lab's authorised keys for the user running the test (root: namespaces).
Every namespace and process is created here, named with a random tag, and removed in `close()`.
`inside(ns)` moves the calling thread into a namespace (setns), so an in-process
nina.rehearse.Rehearsal starts its processes there.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from vpnlab import Proc  # one process record for both labs

IP = shutil.which("ip") or ""  # "" when missing (the tests skip)
SSH = shutil.which("ssh") or ""
SSH_KEYGEN = shutil.which("ssh-keygen") or ""
SSHD = shutil.which("sshd") or ("/usr/sbin/sshd" if os.path.exists("/usr/sbin/sshd") else "")
COMMAND_TIMEOUT = 15
CLONE_NEWNET = 0x40000000
OPERATOR_IP = "192.0.2.2"

CONNECT = r"""
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])).close()
    print("OK")
except OSError as exc:
    print("FAIL " + type(exc).__name__)
"""


def unavailable_reason() -> str | None:
    """Why the lab cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    for tool, name in ((IP, "ip (iproute2)"), (SSH, "ssh (openssh-client)"), (SSH_KEYGEN, "ssh-keygen"), (SSHD, "sshd (openssh-server)")):
        if not tool:
            return f"{name} missing (scripts/bootstrap --test-tools installs it)"
    probe = f"nina-probe-{secrets.token_hex(3)}"
    try:
        add = subprocess.run([IP, "netns", "add", probe], capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
        if add.returncode != 0:
            return f"`ip netns add` fails: {add.stderr.strip()}"
    finally:
        subprocess.run([IP, "netns", "del", probe], capture_output=True, timeout=COMMAND_TIMEOUT)
    return None


def keygen(path: Path, kind: str = "ed25519") -> Path:
    subprocess.run([SSH_KEYGEN, "-q", "-t", kind, "-N", "", "-C", path.name, "-f", str(path)], check=True, timeout=COMMAND_TIMEOUT)
    return path


@dataclass
class SshLab:
    """See the module docstring. `bastion_ip`/`bastion_fixed_ip`/`superlink_ip`/`prefix` come
    from the stack's plan and outputs, so the outputs document needs no edits."""

    workdir: Path
    bastion_ip: str
    bastion_fixed_ip: str
    superlink_ip: str
    prefix: int
    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    namespaces: list[str] = field(default_factory=list)
    procs: list[Proc] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.workdir.chmod(0o700)
        self.user = pwd.getpwuid(os.geteuid()).pw_name
        self.authorized_keys = self.workdir / "authorized_keys"
        try:
            self.op = self._netns("op")
            self.bastion = self._netns("bastion")
            self.sl = self._netns("sl")
            self._veth(self.op, f"{OPERATOR_IP}/24", self.bastion, f"{self.bastion_ip}/24")
            self._veth(self.bastion, f"{self.bastion_fixed_ip}/{self.prefix}", self.sl, f"{self.superlink_ip}/{self.prefix}")
            self.run("sysctl", "-qw", "net.ipv4.ip_forward=0", ns=self.bastion)
            segment = str(ipaddress.IPv4Network(f"{self.superlink_ip}/{self.prefix}", strict=False))
            self.run(IP, "route", "add", segment, "via", self.bastion_ip, ns=self.op)
            self.run(IP, "route", "add", "default", "via", self.bastion_fixed_ip, ns=self.sl)
        except BaseException:
            self.close()
            raise

    # --- plumbing -------------------------------------------------------------------------

    def run(self, *argv: str, ns: str | None = None, check: bool = True, timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess:
        cmd = [IP, "netns", "exec", ns, *argv] if ns else list(argv)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip()}")
        return proc

    def _netns(self, role: str) -> str:
        name = f"nina-{self.tag}-{role}"
        self.run(IP, "netns", "add", name)
        self.namespaces.append(name)
        self.run(IP, "link", "set", "lo", "up", ns=name)
        return name

    def _veth(self, ns_a: str, addr_a: str, ns_b: str, addr_b: str) -> None:
        n = len(self.namespaces)
        a, b = f"nv{self.tag}{n}a", f"nv{self.tag}{n}b"  # <= 15 characters
        self.run(IP, "link", "add", a, "netns", ns_a, "type", "veth", "peer", "name", b, "netns", ns_b)
        for ns, dev, addr in ((ns_a, a, addr_a), (ns_b, b, addr_b)):
            self.run(IP, "addr", "add", addr, "dev", dev, ns=ns)
            self.run(IP, "link", "set", dev, "up", ns=ns)

    @contextlib.contextmanager
    def inside(self, ns: str) -> Iterator[None]:
        """Run the block's calling thread (and every process it starts) in namespace `ns`."""
        libc = ctypes.CDLL(None, use_errno=True)
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(f"/run/netns/{ns}", os.O_RDONLY)
        try:
            if libc.setns(target, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns into {ns} failed")
            try:
                yield
            finally:
                if libc.setns(own, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns back failed")
        finally:
            os.close(own)
            os.close(target)

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

    def stop(self, proc: Proc, timeout: float = 5) -> None:
        if proc.running():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.popen.pid, signal.SIGTERM)
        try:
            proc.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.popen.pid, signal.SIGKILL)
            proc.popen.wait(timeout=timeout)

    def close(self) -> None:
        for proc in self.procs:
            if proc.running():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.popen.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.popen.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.popen.wait(timeout=5)
        for ns in reversed(self.namespaces):
            subprocess.run([IP, "netns", "del", ns], capture_output=True, timeout=COMMAND_TIMEOUT)
        self.namespaces.clear()

    # --- the parties ----------------------------------------------------------------------

    def authorise(self, public_key_file: Path) -> None:
        with open(self.authorized_keys, "a") as fh:
            fh.write(public_key_file.read_text())
        self.authorized_keys.chmod(0o600)

    def start_sshd(self, name: str, ns: str, address: str) -> Proc:
        """A real sshd on `address`:22 in `ns` that lets the lab's keys in as the test's user."""
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
        d = self.workdir / name
        d.mkdir(mode=0o700, exist_ok=True)
        hostkey = d / "ssh_host_ed25519_key"
        if not hostkey.exists():
            keygen(hostkey)
        conf = d / "sshd_config"
        conf.write_text(
            "\n".join(
                [
                    f"ListenAddress {address}:22",
                    f"HostKey {hostkey}",
                    "PidFile none",
                    f"AuthorizedKeysFile {self.authorized_keys}",
                    "StrictModes no",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "PermitRootLogin prohibit-password",
                    f"AllowUsers {self.user}",
                    "AllowTcpForwarding local",
                    "AllowAgentForwarding no",
                    "X11Forwarding no",
                    "PermitTTY no",
                    "LogLevel VERBOSE",
                ]
            )
            + "\n"
        )
        proc = self.spawn(name, [SSHD, "-D", "-e", "-f", str(conf)], ns)
        deadline = time.monotonic() + 10
        while "Server listening on" not in proc.output():
            if not proc.running() or time.monotonic() > deadline:
                raise RuntimeError(f"sshd {name} did not start: {proc.output()}")
            time.sleep(0.1)
        return proc

    def host_key(self, name: str) -> str:
        return (self.workdir / name / "ssh_host_ed25519_key.pub").read_text().split()[1]

    # --- observations ---------------------------------------------------------------------

    def connect(self, ns: str, host: str, port: int, timeout: float = 3.0) -> str:
        """ "OK" if a TCP connection from `ns` to host:port succeeds, else "FAIL <error>"."""
        return self.run(
            sys.executable, "-c", CONNECT, host, str(port), str(timeout), ns=ns, check=False, timeout=timeout + 10
        ).stdout.strip()

    def pids(self, ns: str) -> list[int]:
        """Processes in a namespace now (`ip netns pids`)."""
        return [int(p) for p in self.run(IP, "netns", "pids", ns, check=False).stdout.split()]

    def settled_pids(self, ns: str, timeout: float = 10) -> list[int]:
        """Processes in a namespace once those already told to stop have gone (`stop` waits for
        a process group's leader only; e.g. the ProxyCommand ssh of a tunnel exits a moment
        later): an empty list, or what is still there after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while (left := self.pids(ns)) and time.monotonic() < deadline:
            time.sleep(0.2)
        return left
