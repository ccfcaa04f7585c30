"""The boot lab: the stack's hosts booted for real from their user-data, in systemd-nspawn
containers on network namespaces this module makes (test helper; root only).

    operator ns (203.0.113.200, in admin_cidrs) ─┐            ┌─ server segment bridge ── bastion, SuperLink, VPN server
    hospital ns (198.51.100.10, own network) ────┤  router ns ├─ org segment bridges ──── cloud SuperNodes
                                                 └─ (floating ├─ 100.64.0.1:3128: labproxy.py, the registries' proxy
                                                     IPs: DNAT)

- **Image**: a root filesystem built once by `debootstrap` from the Debian archive this
  machine uses, then made to behave like Nectar's Ubuntu 24.04 image where user-data relies on
  it (`build_image`; the README's boot-lab section lists what still differs). Cached by content.
- **Hosts**: each container is an overlay over the image with its own network namespace
  (`eth0`), systemd as PID 1 and cloud-init fed a NoCloud seed: the user-data the program
  declared (taken from a mock run), meta-data with an instance id and the operator key (as
  Nova's key pair), and a network config with the planned fixed address.
- **Network**: the router namespace holds one bridge per segment (gateway `.1`, as the
  subnets), routes between them, and does what Neutron's router does for floating IPs (DNAT
  in, SNAT out) and for the declared RouterRoutes (a VPN pool via its OpenVPN server). From
  outside (operator, hospital) only the floating IPs' public ports are forwarded (bastion SSH,
  VPN UDP 1194/TCP 443). Security groups are *not* enforced inside.
- **Registries**: nothing in the lab routes outside it. apt (HTTPS sources) and pip go through
  `labproxy.py`, which only tunnels to the registry hosts.

Everything the lab creates (namespaces, cgroups, mounts, loop devices, processes) is named
with a random tag and removed in `close()`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nina import facts

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("NINA_BOOTLAB_CACHE", "/var/cache/nina-bootlab"))
IMAGE_RECIPE = 4  # bump when the image recipe below changes (the cache key includes it)
# What Nectar's Ubuntu 24.04 cloud image has that a minbase Debian lacks and user-data or
# the delivery relies on.
IMAGE_PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "udev",
    "openssh-server",
    "sudo",
    "iproute2",
    "ca-certificates",
    "lsb-release",
    "e2fsprogs",
    "python3",
    "locales",
    "util-linux",
    "kmod",
    "iputils-ping",
    "procps",
)
IMAGE_APT_PACKAGES = ("cloud-init", "systemd-resolved", "logrotate", "netbase", "less")
REGISTRY_ADDRESS = "100.64.0.1"
REGISTRY_PORT = 3128
OPERATOR_IP = "203.0.113.200"
EXTERNAL_ROUTER_IP = "203.0.113.254"
EXTERNAL_CIDR = "203.0.113.0/24"
HOSPITAL_CIDR = "198.51.100.0/24"
BOOT_TIMEOUT = 600
SSH_TIMEOUT = 300
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def missing_tools() -> str | None:
    """Why the lab cannot run here, or None."""
    if os.geteuid() != 0:
        return "the boot lab needs root (namespaces, cgroups, loop devices, systemd-nspawn)"
    for tool in ("debootstrap", "systemd-nspawn", "ip", "iptables", "ssh", "losetup", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} is missing (scripts/bootstrap --test-tools installs it)"
    if not Path("/dev/net/tun").exists():
        return "/dev/net/tun is missing"
    if not Path("/sys/fs/cgroup").exists():
        return "no cgroup file system"
    probe = f"nblprobe{secrets.token_hex(3)}"
    ok = subprocess.run(["ip", "netns", "add", probe], capture_output=True).returncode == 0
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    if not ok:
        return "network namespaces cannot be created here"
    return None


def run(
    cmd: Sequence[str], *, check: bool = True, timeout: float = 120, input: str | None = None, capture: bool = True
) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(cmd), capture_output=capture, text=True, timeout=timeout, input=input)
    if check and proc.returncode != 0:
        raise LabError(f"{shlex.join(cmd)} exited {proc.returncode}: {(proc.stderr or '')[-2000:]}{(proc.stdout or '')[-2000:]}")
    return proc


class LabError(Exception):
    pass


# --- the image ---------------------------------------------------------------------------------


def _host_apt() -> tuple[str, str]:
    """(suite, mirror URI) of this machine's Debian archive."""
    suite = ""
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("VERSION_CODENAME="):
            suite = line.split("=", 1)[1].strip('"')
    mirror = "http://deb.debian.org/debian"
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.exists():
        m = re.search(r"^URIs:\s*(\S+)", sources.read_text(), re.M)
        if m:
            mirror = m.group(1)
    if not suite:
        raise LabError("cannot tell this machine's Debian suite from /etc/os-release")
    return suite, mirror.rstrip("/")


def _registry_ca() -> str:
    """The extra CA certificates this machine trusts (the registry's TLS inspection), as PEM."""
    extra = sorted(Path("/usr/local/share/ca-certificates").glob("*.crt"))
    return "".join(p.read_text() for p in extra)


def lab_cloud_cfg() -> str:
    return yaml.safe_dump(
        {
            "datasource_list": ["NoCloud", "None"],
            "apt": {"preserve_sources_list": True},
            "system_info": {
                "default_user": {
                    "name": "ubuntu",
                    "lock_passwd": True,
                    "gecos": "Ubuntu",
                    "groups": ["adm", "sudo"],
                    "sudo": ["ALL=(ALL) NOPASSWD:ALL"],
                    "shell": "/bin/bash",
                },
                "network": {"renderers": ["networkd"], "activators": ["networkd"]},
            },
        },
        sort_keys=True,
    )


def registry_hosts() -> list[str]:
    _suite, mirror = _host_apt()
    host = re.sub(r"^\w+://", "", mirror).split("/", 1)[0]
    return sorted({host, "pypi.org", "files.pythonhosted.org"})


def _image_files(suite: str, mirror: str) -> dict[str, str]:
    https = re.sub(r"^http://", "https://", mirror)
    security = https.rsplit("/", 1)[0] + "/debian-security"
    proxy = f"http://{REGISTRY_ADDRESS}:{REGISTRY_PORT}"
    return {
        "etc/cloud/cloud.cfg.d/90-nina-lab.cfg": lab_cloud_cfg(),
        "etc/apt/sources.list": (f"deb {https} {suite} main\ndeb {https} {suite}-updates main\ndeb {security} {suite}-security main\n"),
        "etc/apt/apt.conf.d/90nina-lab-proxy": f'Acquire::https::Proxy "{proxy}";\nAcquire::Retries "3";\n',
        "etc/pip.conf": f"[global]\nproxy = {proxy}\ncert = /etc/ssl/certs/ca-certificates.crt\ntimeout = 60\n",
        "etc/locale.gen": "en_US.UTF-8 UTF-8\nC.UTF-8 UTF-8\n",
        "usr/local/share/ca-certificates/nina-lab-registry.crt": _registry_ca(),
    }


def image_key() -> str:
    suite, mirror = _host_apt()
    recipe = json.dumps([IMAGE_RECIPE, suite, mirror, IMAGE_PACKAGES, IMAGE_APT_PACKAGES, _image_files(suite, mirror)], sort_keys=True)
    return hashlib.sha256(recipe.encode()).hexdigest()[:16]


def build_image(log=print) -> Path:
    """The lab's root filesystem (cached under CACHE by recipe; built once, ~1-2 minutes)."""
    suite, mirror = _host_apt()
    CACHE.mkdir(parents=True, exist_ok=True)
    key = image_key()
    final = CACHE / f"rootfs-{key}"
    with open(CACHE / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / ".nina-lab-complete").exists():
            return final
        for old in CACHE.glob("rootfs-*"):
            shutil.rmtree(old, ignore_errors=True)
        tmp = CACHE / f"build-{key}"
        shutil.rmtree(tmp, ignore_errors=True)
        t0 = time.monotonic()
        log(f"boot lab: debootstrap {suite} from {mirror} into {tmp}")
        run(["debootstrap", "--variant=minbase", f"--include={','.join(IMAGE_PACKAGES)}", suite, str(tmp), mirror], timeout=900)
        shutil.copy("/etc/resolv.conf", tmp / "etc/resolv.conf")
        env = "DEBIAN_FRONTEND=noninteractive"
        run(
            ["chroot", str(tmp), "sh", "-c", f"{env} apt-get install -y -q --no-install-recommends {' '.join(IMAGE_APT_PACKAGES)}"],
            timeout=900,
        )
        for rel, text in _image_files(suite, mirror).items():
            path = tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        run(["chroot", str(tmp), "locale-gen"], timeout=300)
        run(["chroot", str(tmp), "update-locale", "LANG=en_US.UTF-8"])
        run(["chroot", str(tmp), "update-ca-certificates"], timeout=300)
        run(["chroot", str(tmp), "systemctl", "enable", "systemd-networkd", "systemd-resolved"])
        # NVMe-oF autoconnect (nvme-cli, a recommends of the node exporter) fails without a kernel of its own.
        run(["chroot", str(tmp), "systemctl", "mask", "nvmf-autoconnect.service"])
        # What a cloud image ships blank: identity per instance.
        (tmp / "etc/machine-id").write_text("")
        for key_file in (tmp / "etc/ssh").glob("ssh_host_*"):
            key_file.unlink()
        (tmp / "etc/resolv.conf").unlink()
        os.symlink("../run/systemd/resolve/stub-resolv.conf", tmp / "etc/resolv.conf")
        run(["chroot", str(tmp), "apt-get", "clean"])
        (tmp / ".nina-lab-complete").write_text(f"{suite} {mirror} built in {time.monotonic() - t0:.0f} s\n")
        tmp.rename(final)
        log(f"boot lab: image {final.name} built in {time.monotonic() - t0:.0f} s")
        return final


# --- the stack, as the program declared it -----------------------------------------------------


@dataclass
class DeclaredHost:
    name: str  # the Instance resource name
    hostname: str
    fixed_ip: str
    cidr: str
    gateway: str
    user_data: str
    floating_ip: str | None
    volumes: list[tuple[str, str]]  # (volume id as user-data names it, mount point)
    roles: tuple[str, ...]  # the Instance's `nina-roles` metadata


@dataclass
class DeclaredCommand:
    name: str
    host: str
    user: str
    proxy_host: str | None
    create: str
    stdin: str | None
    delete: str | None


@dataclass
class Declared:
    """What a mock run of the program declared, in the lab's terms."""

    hosts: dict[str, DeclaredHost]
    commands: list[DeclaredCommand]
    operator_public_key: str
    operator_private_key: str
    outputs: dict[str, Any]
    # The router's static routes (RouterRoute: destination CIDR -> next hop), e.g. a VPN pool via
    # its OpenVPN server: what lets the monitoring host scrape on-premise exporters through the tunnel.
    routes: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_run(cls, run: Any) -> Declared:
        by_type: dict[str, list[Any]] = {}
        for r in run.registrations:
            by_type.setdefault(r.type, []).append(r)
        subnets = {f"{r.name}-id": r.inputs for r in by_type.get("openstack:networking/subnet:Subnet", [])}
        ports = {f"{r.name}-id": r.inputs for r in by_type.get("openstack:networking/port:Port", [])}
        fips = {r.inputs["portId"]: r.outputs["address"] for r in by_type.get("openstack:networking/floatingIp:FloatingIp", [])}
        hosts = {}
        for inst in by_type["openstack:compute/instance:Instance"]:
            port_id = inst.inputs["networks"][0]["port"]
            fixed = ports[port_id]["fixedIps"][0]
            subnet = subnets[fixed["subnetId"]]
            doc = yaml.safe_load(inst.inputs["userData"])
            volumes = [(c[1], c[2]) for c in doc.get("runcmd", []) if isinstance(c, list) and c[0].endswith("nina-prepare-volume")]
            hosts[inst.name] = DeclaredHost(
                inst.name,
                doc["hostname"],
                fixed["ipAddress"],
                subnet["cidr"],
                subnet["gatewayIp"],
                inst.inputs["userData"],
                fips.get(port_id),
                volumes,
                tuple(inst.inputs["metadata"]["nina-roles"].split(",")),
            )
        commands = []
        for cmd in by_type.get("command:remote:Command", []):
            conn = cmd.inputs["connection"]
            proxy = conn.get("proxy") or {}
            commands.append(
                DeclaredCommand(
                    cmd.name,
                    conn["host"],
                    conn["user"],
                    proxy.get("host"),
                    cmd.inputs["create"],
                    cmd.inputs.get("stdin"),
                    cmd.inputs.get("delete"),
                )
            )
        keypair = by_type["openstack:compute/keypair:Keypair"][0]
        private = run.outputs["ops_ssh_private_key"]
        routes = {r.inputs["destinationCidr"]: r.inputs["nextHop"] for r in by_type.get("openstack:networking/routerRoute:RouterRoute", [])}
        return cls(hosts, commands, keypair.inputs["publicKey"].strip(), private, run.outputs, routes)


# --- the lab -------------------------------------------------------------------------------


@dataclass
class Machine:
    lab: Lab
    name: str
    netns: str
    root: Path  # overlay mount point
    layers: Path
    proc: subprocess.Popen | None = None
    cgroups: list[Path] = field(default_factory=list)
    log: Path | None = None

    def leader(self) -> int:
        assert self.proc is not None
        for _ in range(100):
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
            with contextlib.suppress(OSError):
                kids = children.read_text().split()
                if kids:
                    return int(kids[0])
            if self.proc.poll() is not None:
                raise LabError(f"{self.name}: systemd-nspawn exited {self.proc.returncode}; see {self.log}")
            time.sleep(0.1)
        raise LabError(f"{self.name}: no container leader appeared")

    def sh(self, script: str, *, check: bool = True, timeout: float = 120, input: str | None = None) -> subprocess.CompletedProcess:
        """Run a shell script inside the container as root (its namespaces, a clean environment)."""
        cmd = ["nsenter", "-t", str(self.leader()), "-a", "env", "-i", f"PATH={PATH}", "LC_ALL=C.UTF-8", "sh", "-c", script]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input)
        if check and proc.returncode != 0:
            raise LabError(f"{self.name}: `{script}` exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return proc

    def wait_for(self, script: str, timeout: float, what: str) -> str:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            with contextlib.suppress(LabError, subprocess.TimeoutExpired):
                proc = self.sh(script, check=False, timeout=30)
                last = proc.stdout + proc.stderr
                if proc.returncode == 0:
                    return proc.stdout
            time.sleep(2)
        raise LabError(f"{self.name}: {what} not within {timeout:g} s; last output: {last[-2000:]}")

    def cloud_init_status(self, timeout: float = BOOT_TIMEOUT) -> dict[str, Any]:
        """Wait until cloud-init has finished (done or error); its `status --long` as a dict."""
        self.wait_for("cloud-init status | grep -Eq 'status: (done|error|disabled)'", timeout, "cloud-init to finish")
        out = self.sh("cloud-init status --long", check=False).stdout
        status = re.search(r"^status: (\S+)", out, re.M)
        return {"status": status.group(1) if status else "?", "text": out}

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # nspawn: a clean poweroff of the container
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None
        run(["umount", "-l", str(self.root)], check=False)
        for cg in reversed(self.cgroups):
            with contextlib.suppress(OSError):
                for sub in sorted(cg.rglob("*"), reverse=True):
                    if sub.is_dir():
                        sub.rmdir()
                cg.rmdir()
        self.cgroups = []


class Lab:
    """A lab for one declared stack. Use as a context manager; `close()` removes everything."""

    def __init__(self, declared: Declared, workdir: Path, image: Path, log=print) -> None:
        self.declared = declared
        self.dir = workdir
        self.image = image
        self.log = log
        self.tag = secrets.token_hex(2)
        self.router = f"nbl{self.tag}-router"
        self.netns: list[str] = []
        self.machines: dict[str, Machine] = {}
        self.bridges: dict[str, str] = {}  # cidr -> bridge name in the router ns
        self.links = 0
        self.procs: list[subprocess.Popen] = []
        self.loops: list[str] = []
        self.volume_loops: dict[str, str] = {}  # volume id -> loop device (survives a replaced VM)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.deny_file = self.dir / "proxy-deny"
        self.deny_file.write_text("")
        self.key = self.dir / "operator_key"
        self.key.write_text(declared.operator_private_key)
        self.key.chmod(0o600)
        self.ssh_config = self.dir / "ssh_config"
        self.ssh_config.write_text(
            f"Host *\n  IdentityFile {self.key}\n  IdentitiesOnly yes\n  StrictHostKeyChecking no\n"
            "  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n  BatchMode yes\n  ConnectTimeout 10\n"
            "  ServerAliveInterval 10\n"
        )
        self.operator = f"nbl{self.tag}-op"
        self.hospital_ns: dict[str, str] = {}

    # --- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> Lab:
        try:
            self._network()
            self._proxy()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        def stop(m: Machine) -> None:
            with contextlib.suppress(Exception):
                m.stop()

        if self.machines:
            with ThreadPoolExecutor(len(self.machines)) as pool:
                list(pool.map(stop, list(self.machines.values())))
        for p in self.procs:
            with contextlib.suppress(Exception):
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(timeout=10)
        for loop in self.loops:
            run(["losetup", "-d", loop], check=False)
        for ns in reversed(self.netns):
            run(["ip", "netns", "del", ns], check=False)
        self.netns = []

    # --- network -----------------------------------------------------------------------------

    def _ns(self, name: str) -> str:
        run(["ip", "netns", "add", name])
        self.netns.append(name)
        run(["ip", "-n", name, "link", "set", "lo", "up"])
        return name

    def rip(self, *args: str, ns: str | None = None) -> None:
        run(["ip", "-n", ns or self.router, *args])

    def ipt(self, *args: str, ns: str | None = None) -> None:
        run(["ip", "netns", "exec", ns or self.router, "iptables", "-w", *args])

    def _bridge(self, cidr: str, gateway: str) -> str:
        if cidr in self.bridges:
            return self.bridges[cidr]
        name = f"br{len(self.bridges)}"
        prefix = ipaddress.ip_network(cidr).prefixlen
        self.rip("link", "add", name, "type", "bridge")
        self.rip("addr", "add", f"{gateway}/{prefix}", "dev", name)
        self.rip("link", "set", name, "up")
        self.bridges[cidr] = name
        return name

    def _link(self, ns: str, bridge: str, ifname: str = "eth0") -> None:
        """A veth from `bridge` in the router namespace to `ifname` in `ns`."""
        self.links += 1
        outer = f"nbl{self.tag}v{self.links}"
        run(["ip", "link", "add", outer, "netns", self.router, "type", "veth", "peer", "name", ifname, "netns", ns])
        self.rip("link", "set", outer, "master", bridge)
        self.rip("link", "set", outer, "up")

    def _network(self) -> None:
        self._ns(self.router)
        run(["ip", "netns", "exec", self.router, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
        self.rip("addr", "add", f"{REGISTRY_ADDRESS}/32", "dev", "lo")
        for h in self.declared.hosts.values():
            self._bridge(h.cidr, h.gateway)
        for cidr, next_hop in sorted(self.declared.routes.items()):  # as Neutron's router does with RouterRoutes
            self.rip("route", "add", cidr, "via", next_hop)
        ext = self._bridge(EXTERNAL_CIDR, EXTERNAL_ROUTER_IP)
        hosp_gw = str(next(iter(ipaddress.ip_network(HOSPITAL_CIDR).hosts())))
        hosp = self._bridge(HOSPITAL_CIDR, hosp_gw)
        # Outside (operator, hospitals) reaches only the floating IPs' public ports and the proxy.
        self.ipt("-P", "FORWARD", "DROP")
        self.ipt("-A", "FORWARD", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT")
        inside = [b for c, b in self.bridges.items() if b not in (ext, hosp)]
        for a in inside:
            for b in inside:
                self.ipt("-A", "FORWARD", "-i", a, "-o", b, "-j", "ACCEPT")
        self.ipt("-A", "INPUT", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT")
        self.ipt("-A", "INPUT", "-d", REGISTRY_ADDRESS, "-p", "tcp", "--dport", str(REGISTRY_PORT), "-j", "ACCEPT")
        self.ipt("-A", "INPUT", "-p", "icmp", "-j", "ACCEPT")
        for outside in (ext, hosp):
            self.ipt("-A", "INPUT", "-i", outside, "-j", "DROP")
        for h in self.declared.hosts.values():
            if not h.floating_ip:
                continue
            self.rip("addr", "add", f"{h.floating_ip}/32", "dev", ext)
            self.ipt("-t", "nat", "-A", "POSTROUTING", "-s", h.fixed_ip, "-o", ext, "-j", "SNAT", "--to-source", h.floating_ip)
            self.ipt("-t", "nat", "-A", "POSTROUTING", "-s", h.fixed_ip, "-o", hosp, "-j", "SNAT", "--to-source", h.floating_ip)
            for proto, port in self._public_ports(h):
                self.ipt(
                    "-t",
                    "nat",
                    "-A",
                    "PREROUTING",
                    "-d",
                    h.floating_ip,
                    "-p",
                    proto,
                    "--dport",
                    str(port),
                    "-j",
                    "DNAT",
                    "--to-destination",
                    h.fixed_ip,
                )
                self.ipt("-A", "FORWARD", "-d", h.fixed_ip, "-p", proto, "--dport", str(port), "-j", "ACCEPT")
        self._ns(self.operator)
        self._link(self.operator, ext)
        self.rip("addr", "add", f"{OPERATOR_IP}/24", "dev", "eth0", ns=self.operator)
        self.rip("link", "set", "eth0", "up", ns=self.operator)
        self.rip("route", "add", "default", "via", EXTERNAL_ROUTER_IP, ns=self.operator)

    @staticmethod
    def _public_ports(h: DeclaredHost) -> list[tuple[str, int]]:
        if "vpn" in h.roles:
            return [("udp", facts.OPENVPN_UDP_PORT), ("tcp", facts.OPENVPN_TCP_PORT)]
        return [("tcp", facts.SSH_PORT)]

    def _proxy(self) -> None:
        allow = [a for h in registry_hosts() for a in ("--allow", f"{h}:443")]
        cmd = [
            sys.executable,
            str(HERE / "labproxy.py"),
            "--netns",
            f"/run/netns/{self.router}",
            "--listen",
            f"{REGISTRY_ADDRESS}:{REGISTRY_PORT}",
            "--deny-file",
            str(self.deny_file),
            "--log",
            str(self.dir / "proxy.log"),
            *allow,
        ]
        errors = open(self.dir / "proxy.err", "w")  # noqa: SIM115 - the proxy's own log, for as long as it runs
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
            start_new_session=True,
        )
        self.procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if "listening" not in line:
            raise LabError(f"the lab's registry proxy did not start: {(self.dir / 'proxy.err').read_text()}")

    def deny_registries(self, ip: str, denied: bool = True) -> None:
        """Make the proxy refuse (or serve again) one host: a registry outage for that host."""
        ips = set(self.deny_file.read_text().split())
        ips = ips | {ip} if denied else ips - {ip}
        self.deny_file.write_text("\n".join(sorted(ips)) + "\n")

    # --- machines -----------------------------------------------------------------------------

    def _cgroups(self, name: str) -> list[Path]:
        groups = []
        for hierarchy in ("/sys/fs/cgroup/systemd", "/sys/fs/cgroup/unified", "/sys/fs/cgroup"):
            base = Path(hierarchy)
            if (base / "cgroup.procs").exists():
                cg = base / f"nina-bootlab-{self.tag}-{name}"
                cg.mkdir(exist_ok=True)
                groups.append(cg)
                if hierarchy == "/sys/fs/cgroup":
                    break
        return groups

    def loop_device(self, name: str, size_mb: int = 1024) -> str:
        backing = self.dir / f"{name}.img"
        if not backing.exists():
            with open(backing, "wb") as f:
                f.truncate(size_mb * 1024 * 1024)
        loop = run(["losetup", "-f", "--show", str(backing)]).stdout.strip()
        self.loops.append(loop)
        return loop

    def boot(
        self,
        name: str,
        *,
        seed: dict[str, str] | None,
        cidr: str,
        gateway: str,
        binds: Sequence[tuple[str, str]] = (),
        extra_files: dict[str, str] | None = None,
    ) -> Machine:
        """Boot a container on the segment of `cidr` (a bridge in the router ns), with a NoCloud seed or none.
        Its disk is always fresh, as a new VM's is (only volumes, the loop devices, carry over)."""
        if name in self.machines:
            self.machines.pop(name).stop()
        ns_name = f"nbl{self.tag}-{name}"[:40]
        if ns_name not in self.netns:
            self._ns(ns_name)
            self._link(ns_name, self._bridge(cidr, gateway))
        layers = self.dir / "machines" / name
        if layers.exists():
            shutil.rmtree(layers)
        for sub in ("upper", "work", "root"):
            (layers / sub).mkdir(parents=True, exist_ok=True)
        root = layers / "root"
        run(
            [
                "mount",
                "-t",
                "overlay",
                "overlay",
                "-o",
                f"lowerdir={self.image},upperdir={layers / 'upper'},workdir={layers / 'work'}",
                str(root),
            ]
        )
        machine = Machine(self, name, ns_name, root, layers)
        self.machines[name] = machine
        if seed is not None:
            seed_dir = root / "var/lib/cloud/seed/nocloud"
            seed_dir.mkdir(parents=True, exist_ok=True)
            for fname, text in seed.items():
                (seed_dir / fname).write_text(text)
        for rel, text in (extra_files or {}).items():
            path = root / rel.lstrip("/")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        machine.cgroups = self._cgroups(name)
        machine.log = layers / "nspawn.log"
        cmd = [
            "systemd-nspawn",
            "-q",
            "-D",
            str(root),
            "-b",
            "--register=no",
            "--keep-unit",
            f"--machine={name}",
            f"--network-namespace-path=/run/netns/{ns_name}",
            "--console=read-only",
            "--bind=/dev/net/tun",
            "--capability=CAP_NET_ADMIN",
        ]
        cmd += [f"--bind={src}:{dst}" for src, dst in binds]
        procs_files = [str(cg / "cgroup.procs") for cg in machine.cgroups]

        def enter_cgroups() -> None:
            for f in procs_files:
                with open(f, "w") as fh:
                    fh.write(str(os.getpid()))

        console = open(machine.log, "w")  # noqa: SIM115 - the container's console, for as long as it runs
        machine.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=console,
            stderr=subprocess.STDOUT,
            preexec_fn=enter_cgroups,
            env={
                "PATH": PATH,
                "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "0",
                # /proc/sys/net writable: per network namespace, as on a VM
                "SYSTEMD_NSPAWN_API_VFS_WRITABLE": "network",
            },
        )
        machine.leader()
        return machine

    def boot_declared(self, host: DeclaredHost, *, instance_id: str | None = None) -> Machine:
        """Boot a declared host from its user-data, with its volumes as loop devices at their by-id paths."""
        binds = []
        for vid, _mount in host.volumes:
            if vid not in self.volume_loops:
                self.volume_loops[vid] = self.loop_device(f"volume-{vid}")
            loop = self.volume_loops[vid]
            binds.append((loop, f"{facts.VOLUME_BY_ID_PREFIX}{vid[: facts.VOLUME_SERIAL_LENGTH]}"))
        prefix = ipaddress.ip_network(host.cidr).prefixlen
        meta = {
            "instance-id": instance_id or f"i-{host.name}-1",
            "local-hostname": host.hostname,
            "public-keys": [self.declared.operator_public_key],
        }
        network = {
            "version": 2,
            "ethernets": {
                "eth0": {
                    "match": {"name": "eth0"},
                    "addresses": [f"{host.fixed_ip}/{prefix}"],
                    "routes": [{"to": "0.0.0.0/0", "via": host.gateway}],
                }
            },
        }
        seed = {
            "meta-data": yaml.safe_dump(meta, sort_keys=True),
            "user-data": host.user_data,
            "network-config": yaml.safe_dump(network, sort_keys=True),
        }
        return self.boot(host.name, seed=seed, cidr=host.cidr, gateway=host.gateway, binds=binds)

    def boot_plain(self, name: str, ip: str, cidr: str, gateway: str) -> Machine:
        """A plain container (no cloud-init: the hospital's own server), static address on `cidr`."""
        prefix = ipaddress.ip_network(cidr).prefixlen
        files = {
            "etc/cloud/cloud-init.disabled": "",
            "etc/hostname": f"{name}\n",
            "etc/systemd/network/10-eth0.network": f"[Match]\nName=eth0\n\n[Network]\nAddress={ip}/{prefix}\nGateway={gateway}\n",
        }
        machine = self.boot(name, seed=None, cidr=cidr, gateway=gateway, extra_files=files)
        machine.wait_for("systemctl is-system-running --wait >/dev/null 2>&1; ip -4 addr show eth0 | grep -q inet", 120, "network")
        return machine

    # --- the operator ------------------------------------------------------------------------

    def ssh_cmd(self, cmd: DeclaredCommand | None = None, *, host: str | None = None, extra: Sequence[str] = ()) -> list[str]:
        """`ssh -J` through the bastion, from the operator namespace, with the stack's operator key."""
        target = host or (cmd.host if cmd else None)
        proxy = cmd.proxy_host if cmd else self.bastion_ip
        user = cmd.user if cmd else "ubuntu"
        argv = ["ip", "netns", "exec", self.operator, "ssh", "-F", str(self.ssh_config), *extra]
        if proxy:
            argv += ["-J", f"{user}@{proxy}"]
        return [*argv, f"{user}@{target}"]

    @property
    def bastion_ip(self) -> str:
        return next(c.proxy_host for c in self.declared.commands if c.proxy_host)

    def wait_ssh(self, host_ip: str, timeout: float = SSH_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            proc = subprocess.run([*self.ssh_cmd(host=host_ip), "true"], capture_output=True, text=True, timeout=60)
            if proc.returncode == 0:
                return
            last = proc.stderr
            time.sleep(3)
        raise LabError(f"ssh to {host_ip} through the bastion did not work within {timeout:g} s: {last}")

    def run_declared(self, cmd: DeclaredCommand, timeout: float = 900) -> subprocess.CompletedProcess:
        """Run a declared remote command as pulumi-command would: its `create` over SSH, its stdin piped."""
        return subprocess.run([*self.ssh_cmd(cmd), cmd.create], input=cmd.stdin or "", capture_output=True, text=True, timeout=timeout)

    def tunnel(self, host_ip: str, remote_port: int) -> tuple[int, subprocess.Popen]:
        """An SSH tunnel from the operator namespace's loopback to `host_ip`'s loopback port."""
        local = 19000 + remote_port % 1000
        argv = self.ssh_cmd(
            host=host_ip, extra=["-N", "-o", "ExitOnForwardFailure=yes", "-L", f"127.0.0.1:{local}:127.0.0.1:{remote_port}"]
        )
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        self.procs.append(proc)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            probe = subprocess.run(
                [
                    "ip",
                    "netns",
                    "exec",
                    self.operator,
                    sys.executable,
                    "-c",
                    f"import socket; socket.create_connection(('127.0.0.1', {local}), 2)",
                ],
                capture_output=True,
            )
            if probe.returncode == 0:
                return local, proc
            if proc.poll() is not None:
                raise LabError(
                    f"the SSH tunnel to {host_ip}:{remote_port} exited: {proc.stderr.read().decode(errors='replace') if proc.stderr else ''}"
                )
            time.sleep(1)
        raise LabError(f"the SSH tunnel to {host_ip}:{remote_port} did not come up")


def listening(machine: Machine) -> set[tuple[str, str, int]]:
    """(protocol, address, port) of every listening socket in the container."""
    out = machine.sh("ss -Hltun").stdout
    found = set()
    for line in out.splitlines():
        parts = line.split()
        if len(parts) < 5:
            continue
        addr, _, port = parts[4].rpartition(":")
        found.add((parts[0], _normal_address(addr), int(port)))
    return found


def _normal_address(addr: str) -> str:
    """ss's local address as IPv4: `*`/`[::]` (any, dual stack) -> 0.0.0.0; `[::ffff:a.b.c.d]` -> a.b.c.d; `%lo` dropped."""
    addr = addr.strip("[]").split("%", 1)[0]
    if addr in ("*", "::"):
        return "0.0.0.0"
    return addr.removeprefix("::ffff:")


def port_of(machine: Machine, port: int) -> set[str]:
    return {addr for _, addr, p in listening(machine) if p == port}


def stat(machine: Machine, paths: Iterable[str]) -> dict[str, str]:
    quoted = " ".join(shlex.quote(p) for p in paths)
    out = machine.sh(f"stat -c '%n %a %U %G' {quoted}").stdout
    return {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in out.splitlines()}
