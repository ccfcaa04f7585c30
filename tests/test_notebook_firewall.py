"""The JupyterHub host's notebook firewall (nina.notebook_firewall): the rendered rules, the
program and its unit with the real tools (shellcheck, systemd-analyze), and real packets.

The packet test builds, in network namespaces named `nfw-<pid>-<tag>-<role>` (all deleted at the
end, also on failure; traffic stays inside them):

    container ns "ca" (alpha) --veth-- [nbr-<alpha>]                        [seg0] --veth-- SuperLink ns "sla" (alpha's .40)
    container ns "cb" (beta)  --veth-- [nbr-<beta>]   hub ns "hub"  --veth-- [    ] --veth-- SuperLink ns "slb" (beta's .41)
    container ns "cd"         --veth-- [docker0]      (the hub host)         seg ns: the server segment's gateway, and
                                                                            stand-ins for 169.254.169.254 and the internet

The hub namespace gets what docker gives a host (ip_forward, DOCKER-USER jumped to first from
FORWARD with its old trailing RETURN, FORWARD policy DROP and the per-bridge accepts and
masquerade, without docker's inter-network isolation chains, so that the isolation seen is the
rules' doing), then the rendered `nina-notebook-firewall` is run in it, the program its unit
runs, with the real iptables-restore. Every connection is a real TCP connect with a 1 s timeout.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from systemd import needs_systemd_analyze, verify_text

from nina import facts, jupyterhub, notebook_firewall, render
from nina.config import load_config
from nina.plan import Plan, build_plan

IP = shutil.which("ip") or ""
IPTABLES = shutil.which("iptables") or ""
SHELLCHECK = shutil.which("shellcheck") or ""
TOOLS_HINT = "scripts/bootstrap --test-tools installs it"
CONTROL, FLEET = facts.SUPERLINK_CONTROL_PORT, facts.SUPERLINK_FLEET_PORT
NOTEBOOK_PORT = 8888  # a listener in each container (another tenancy's notebook must not reach it)
INTERNET = "198.51.100.7"  # RFC 5737 TEST-NET-2: "the internet" in the lab, served by the seg namespace
CONNECT_TIMEOUT = 1.0
FWD, INP = notebook_firewall.FORWARD, notebook_firewall.INPUT


def _two_tenancies(cfg_valid) -> dict:
    raw = cfg_valid()
    raw["environment"] = "multi"
    raw["network"] = {"server_cidr": "10.120.0.0/24", "admin_cidrs": ["203.0.113.0/24"]}
    raw.pop("organisations")
    raw["tenancies"] = [
        {
            "name": "alpha",
            "organisations": [
                {"slug": "a-one", "name": "A One", "placement": "cloud", "partition_id": 0, "cidr": "10.121.0.0/24"},
                {"slug": "a-two", "name": "A Two", "placement": "onprem", "partition_id": 1},
            ],
        },
        {
            "name": "beta",
            "organisations": [{"slug": "b-one", "name": "B One", "placement": "cloud", "partition_id": 0, "cidr": "10.122.0.0/24"}],
        },
    ]
    raw["hosts"] = [
        {"name": "gateway", "roles": ["bastion", "proxy"]},
        {"name": "idp", "roles": ["keycloak"]},
        {"name": "hub", "roles": ["jupyterhub"]},
    ]
    raw["researcher_access"] = {"public_domain": "fl.example.edu.au", "acme_email": "ops@example.edu.au"}
    raw["keycloak"] = {"sha256": "0" * 64}  # required with a keycloak host and researcher access
    return raw


@pytest.fixture(scope="module")
def plan(cfg_valid) -> Plan:
    """Two tenancies (alpha with a cloud and an on-premise organisation, so a VPN pool; beta with a
    cloud one), the hub on its own host."""
    return build_plan(load_config(_two_tenancies(cfg_valid)))


def _rules(doc: str) -> list[str]:
    return [line for line in doc.splitlines() if line.startswith("-A ")]


# --- the rendered rules ------------------------------------------------------------------------


def test_rules_from_the_plan(plan):
    doc = notebook_firewall.rules(plan)
    hub = jupyterhub.jupyterhub_host(plan)
    alpha, beta = (next(t for t in plan.tenancies if t.name == n) for n in ("alpha", "beta"))
    a_br, b_br = jupyterhub.tenancy_bridge("alpha"), jupyterhub.tenancy_bridge("beta")
    rules = _rules(doc)
    accepts = [r for r in rules if r.startswith(f"-A {FWD}") and "-j ACCEPT" in r and "ctstate NEW" in r]
    dns = [r for r in accepts if f"--dport {facts.DNS_PORT}" in r]
    # DNS (docker's resolver asks from the container's namespace) to Neutron's DHCP port, somewhere
    # in the server segment's allocation pool, where no planned host is ...
    start, end = next(s for s in plan.segments if s.kind == "server").pool
    pool = range(int(ipaddress.IPv4Address(start)), int(ipaddress.IPv4Address(end)) + 1)
    assert all(int(ipaddress.IPv4Address(h.fixed_ip)) not in pool for h in plan.hosts if h.segment == "server")
    assert dns == [
        f"-A {FWD} -i nbr-+ -m iprange --dst-range {start}-{end} -p {p} -m {p} --dport 53 -m conntrack --ctstate NEW "
        '-m comment --comment "nina: DNS" -j ACCEPT'
        for p in ("udp", "tcp")
    ]
    # ... and exactly one new connection per tenancy: its bridge to its SuperLink's Control API.
    assert [r for r in accepts if r not in dns] == [
        f"-A {FWD} -i {a_br} -d {alpha.superlink_ip}/32 -p tcp -m tcp --dport {CONTROL} -m conntrack --ctstate NEW "
        '-m comment --comment "nina: alpha Control API" -j ACCEPT',
        f"-A {FWD} -i {b_br} -d {beta.superlink_ip}/32 -p tcp -m tcp --dport {CONTROL} -m conntrack --ctstate NEW "
        '-m comment --comment "nina: beta Control API" -j ACCEPT',
    ]
    drops = {r.split(" -d ")[1].split()[0] for r in rules if " -d " in r and r.endswith("-j DROP")}
    assert drops == {
        f"{facts.CLOUD_METADATA_ADDRESS}/32",
        str(plan.cfg.network.server_cidr),
        "10.121.0.0/24",
        "10.122.0.0/24",
        str(alpha.vpn.pool),
    }
    # Every drop comes after the accepts (the SuperLinks are in the server segment).
    assert max(rules.index(r) for r in accepts) < min(i for i, r in enumerate(rules) if r.endswith("-j DROP"))
    # To the host: replies, the hub's API on its address, nothing else.
    assert [r for r in rules if r.startswith(f"-A {INP}")] == [
        f"-A {INP} -i nbr-+ -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        f"-A {INP} -i nbr-+ -d {hub.fixed_ip}/32 -p tcp -m tcp --dport {facts.JUPYTERHUB_HUB_PORT} -m conntrack --ctstate NEW "
        '-m comment --comment "nina: hub API" -j ACCEPT',
        f"-A {INP} -i nbr-+ -j DROP",
    ]
    # Only notebook bridges' traffic matches anything (docker0 and other networks are docker's),
    # in both families; nina's chains only; deterministic.
    six = notebook_firewall.rules6(plan)
    for line in [*rules, *_rules(six)]:
        assert re.search(r" -[io] nbr-", line), line
        assert line.split()[1] in (FWD, INP)
    assert _rules(six) == [f"-A {FWD} -i nbr-+ -j DROP", f"-A {FWD} -o nbr-+ -j DROP", f"-A {INP} -i nbr-+ -j DROP"]
    assert doc == notebook_firewall.rules(build_plan(plan.cfg))
    assert ":DOCKER-USER" not in doc and ":INPUT" not in doc and "COMMIT" in doc


def test_dns_to_the_configured_nameservers(cfg_valid):
    raw = _two_tenancies(cfg_valid)
    raw["cloud"] = {"dns_nameservers": ["10.120.0.3", "8.8.8.8"]}
    rules = _rules(notebook_firewall.rules(build_plan(load_config(raw))))
    dns = [r.split(" -p ")[0].split(" -d ")[1] for r in rules if "--dport 53" in r]
    assert dns == ["10.120.0.3/32", "10.120.0.3/32", "8.8.8.8/32", "8.8.8.8/32"]  # UDP and TCP each
    assert not any("iprange" in r for r in rules)


def test_superlink_on_the_hub_host_is_reached_through_input(cfg_valid):
    """The manual's "one large VM": the SuperLink shares the hub's host, so its Control API is the
    host's own port, allowed from its tenancy's bridge in the input chain."""
    raw = cfg_valid()
    raw["hosts"] = [{"name": "gateway", "roles": ["bastion", "proxy", "keycloak", "jupyterhub", "superlink"], "flavor": "m3.large"}]
    raw["researcher_access"] = {"public_domain": "fl.example.edu.au", "acme_email": "ops@example.edu.au"}
    raw["keycloak"] = {"sha256": "0" * 64}
    plan = build_plan(load_config(raw))
    (tenancy,) = plan.tenancies
    hub = jupyterhub.jupyterhub_host(plan)
    assert tenancy.superlink_ip == hub.fixed_ip
    rules = _rules(notebook_firewall.rules(plan))
    control = [r for r in rules if f"--dport {CONTROL}" in r]
    assert control == [
        f"-A {INP} -i {jupyterhub.tenancy_bridge(tenancy.name)} -d {hub.fixed_ip}/32 -p tcp -m tcp --dport {CONTROL} "
        f'-m conntrack --ctstate NEW -m comment --comment "nina: {tenancy.name} Control API" -j ACCEPT'
    ]
    assert rules.index(control[0]) < rules.index(f"-A {INP} -i nbr-+ -j DROP")


def test_config_mistakes_give_clear_errors(cfg_valid, plan):
    hubless = build_plan(load_config(cfg_valid()))
    with pytest.raises(notebook_firewall.NotebookFirewallError, match=r"0 hosts with role jupyterhub.*give one host the role jupyterhub"):
        notebook_firewall.rules(hubless)
    with pytest.raises(notebook_firewall.NotebookFirewallError, match="the plan has no tenancies"):
        notebook_firewall.firewall_files(dataclasses.replace(plan, tenancies=()))
    bad = dataclasses.replace(plan, tenancies=(dataclasses.replace(plan.tenancies[0], superlink_ip="10.120.0.400"),))
    with pytest.raises(notebook_firewall.NotebookFirewallError, match=re.escape("SuperLink address '10.120.0.400' is not an IPv4 address")):
        notebook_firewall.rules6(bad)
    twice = dataclasses.replace(
        plan, tenancies=(plan.tenancies[0], dataclasses.replace(plan.tenancies[1], superlink_ip=plan.tenancies[0].superlink_ip))
    )
    with pytest.raises(notebook_firewall.NotebookFirewallError, match="two tenancies share a SuperLink address"):
        notebook_firewall.rules(twice)
    assert issubclass(notebook_firewall.NotebookFirewallError, ValueError)


def test_firewall_files_make_a_valid_delivery(plan):
    files = notebook_firewall.firewall_files(plan)
    assert [(f.path, f.mode, f.owner) for f in files] == [
        (facts.NOTEBOOK_FIREWALL_BIN, 0o755, "root"),
        (f"{facts.SYSTEMD_SYSTEM_DIR}/{facts.NOTEBOOK_FIREWALL_UNIT}", 0o644, "root"),
    ]
    assert notebook_firewall.UNITS == (facts.NOTEBOOK_FIREWALL_UNIT,)
    payload = json.loads(render.delivery_payload(files, list(notebook_firewall.UNITS)))  # the installer's own check
    assert payload["restart"] == [facts.NOTEBOOK_FIREWALL_UNIT]
    script = files[0].content
    assert notebook_firewall.rules(plan) in script and notebook_firewall.rules6(plan) in script
    unit = files[1].content
    for line in ("Type=oneshot", "RemainAfterExit=yes", f"ExecStart={facts.NOTEBOOK_FIREWALL_BIN}"):
        assert line in unit.splitlines()
    assert f"After={facts.DOCKER_UNIT}" in unit and f"PartOf={facts.DOCKER_UNIT}" in unit
    assert f"WantedBy={facts.DOCKER_UNIT} multi-user.target" in unit


@pytest.mark.skipif(not SHELLCHECK, reason=f"shellcheck missing ({TOOLS_HINT})")
def test_shellcheck(plan, tmp_path):
    script = tmp_path / "nina-notebook-firewall"
    script.write_text(notebook_firewall.script(plan))
    proc = subprocess.run([SHELLCHECK, "-s", "bash", str(script)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout


@needs_systemd_analyze
def test_systemd_analyze_verifies_the_unit(plan, tmp_path):
    script = tmp_path / "nina-notebook-firewall"
    script.write_text(notebook_firewall.script(plan))
    script.chmod(0o755)

    def verify(unit_text: str) -> list[str]:
        return verify_text(tmp_path, facts.NOTEBOOK_FIREWALL_UNIT, unit_text, {facts.NOTEBOOK_FIREWALL_BIN: str(script)}, "nina")

    assert verify(notebook_firewall.unit()) == []
    assert verify(notebook_firewall.unit().replace("PartOf=", "PartsOf="))  # the check can fail


# --- real packets -------------------------------------------------------------------------------

LISTENER = r"""
import selectors, socket, sys
sel = selectors.DefaultSelector()
for spec in sys.argv[1:]:
    host, port = spec.rsplit(":", 1)
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, int(port)))
    s.listen(16)
    sel.register(s, selectors.EVENT_READ)
print("listening", flush=True)
while True:
    for key, _ in sel.select():
        conn, peer = key.fileobj.accept()
        try:
            conn.sendall(f"{peer[0]}\n".encode())
        except OSError:
            pass
        finally:
            conn.close()
"""

# Tries every host:port at once (threads), prints {"host:port": "OK <peer the listener saw>" | "FAIL <why>"}.
PROBE = r"""
import concurrent.futures, json, socket, sys
timeout = float(sys.argv[1])
def probe(spec):
    host, port = spec.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as s:
            s.settimeout(timeout)
            return "OK " + s.recv(200).decode().strip()
    except OSError as exc:
        return "FAIL " + type(exc).__name__
with concurrent.futures.ThreadPoolExecutor(len(sys.argv) - 2 or 1) as pool:
    print(json.dumps(dict(zip(sys.argv[2:], pool.map(probe, sys.argv[2:])))))
"""


def _lab_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    for tool in ("ip", "iptables", "iptables-restore", "iptables-save", "ip6tables", "ip6tables-restore", "ip6tables-save"):
        if not shutil.which(tool):
            return f"{tool} missing ({TOOLS_HINT})"
    probe = f"nfw-{os.getpid()}-probe-{secrets.token_hex(2)}"
    try:
        add = subprocess.run([IP, "netns", "add", probe], capture_output=True, text=True, timeout=15)
        if add.returncode != 0:
            return f"`ip netns add` fails: {add.stderr.strip()}"
        ipt = subprocess.run([IP, "netns", "exec", probe, IPTABLES, "-w", "-S"], capture_output=True, text=True, timeout=15)
        if ipt.returncode != 0:
            return f"iptables does not work in a namespace: {ipt.stderr.strip()}"
    finally:
        subprocess.run([IP, "netns", "del", probe], capture_output=True, timeout=15)
    return None


@dataclasses.dataclass
class Lab:
    workdir: Path
    tag: str = dataclasses.field(default_factory=lambda: f"nfw-{os.getpid()}-{secrets.token_hex(2)}")
    namespaces: list[str] = dataclasses.field(default_factory=list)
    procs: list[subprocess.Popen] = dataclasses.field(default_factory=list)

    def run(self, *argv: str, ns: str | None = None, check: bool = True, timeout: float = 15) -> subprocess.CompletedProcess:
        cmd = [IP, "netns", "exec", ns, *argv] if ns else list(argv)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip()}")
        return proc

    def netns(self, role: str) -> str:
        name = f"{self.tag}-{role}"
        self.run(IP, "netns", "add", name)
        self.namespaces.append(name)
        self.run(IP, "link", "set", "lo", "up", ns=name)
        return name

    def veth(self, ns_a: str, dev_a: str, ns_b: str, dev_b: str) -> None:
        """A veth pair made directly in the two namespaces (nothing appears in the caller's)."""
        self.run(IP, "link", "add", dev_a, "netns", ns_a, "type", "veth", "peer", "name", dev_b, "netns", ns_b)
        self.run(IP, "link", "set", dev_a, "up", ns=ns_a)
        self.run(IP, "link", "set", dev_b, "up", ns=ns_b)

    def bridge(self, ns: str, name: str, *addresses: str) -> None:
        self.run(IP, "link", "add", name, "type", "bridge", ns=ns)
        for address in addresses:
            self.run(IP, "addr", "add", address, "dev", name, *(["nodad"] if ":" in address else []), ns=ns)
        self.run(IP, "link", "set", name, "up", ns=ns)

    def listen(self, ns: str, *specs: str) -> None:
        script = self.workdir / "listener.py"
        script.write_text(LISTENER)
        log = self.workdir / f"listener-{ns}.log"
        with open(log, "w") as out:
            proc = subprocess.Popen(
                [IP, "netns", "exec", ns, sys.executable, str(script), *specs], stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.procs.append(proc)
        deadline = time.monotonic() + 10
        while "listening" not in log.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"listener in {ns} did not start: {log.read_text()}")
            time.sleep(0.02)

    def probe(self, targets: dict[str, list[str]]) -> dict[str, dict[str, str]]:
        """ns -> {host:port -> "OK <peer>"|"FAIL ..."}: every namespace's targets at once."""
        script = self.workdir / "probe.py"
        script.write_text(PROBE)
        running = {
            ns: subprocess.Popen(
                [IP, "netns", "exec", ns, sys.executable, str(script), str(CONNECT_TIMEOUT), *specs], stdout=subprocess.PIPE, text=True
            )
            for ns, specs in targets.items()
        }
        return {ns: json.loads(p.communicate(timeout=CONNECT_TIMEOUT + 15)[0]) for ns, p in running.items()}

    def close(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        for ns in reversed(self.namespaces):
            subprocess.run([IP, "netns", "del", ns], capture_output=True, timeout=15)
        self.namespaces.clear()


@pytest.fixture
def lab(tmp_path):
    reason = _lab_unavailable()
    if reason:
        pytest.skip(reason)
    lab = Lab(tmp_path)
    try:
        yield lab
    finally:
        lab.close()
        leftover = subprocess.run([IP, "netns", "list"], capture_output=True, text=True, timeout=15).stdout
        assert lab.tag not in leftover


def ok(result: str) -> bool:
    return result.startswith("OK")


def dropped(result: str) -> bool:
    """No answer at all (a DROP), not a refusal: the packet never reached its destination."""
    return result == "FAIL TimeoutError"


def _saved(lab: Lab, ns: str) -> str:
    """Both families' filter tables, without comments and counters."""
    out = []
    for save in ("iptables-save", "ip6tables-save"):
        for line in lab.run(save, "-t", "filter", ns=ns).stdout.splitlines():
            if not line.startswith("#"):
                out.append(re.sub(r" \[\d+:\d+\]$", "", line))
    return "\n".join(out)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_real_packets_tenancy_isolation(plan, lab):
    started = time.monotonic()
    hub_host = jupyterhub.jupyterhub_host(plan)
    alpha, beta = (next(t for t in plan.tenancies if t.name == n) for n in ("alpha", "beta"))
    server = plan.cfg.network.server_cidr
    prefix = server.prefixlen
    hub_ip, gateway = hub_host.fixed_ip, str(server.network_address + 1)
    meta = facts.CLOUD_METADATA_ADDRESS
    subnets = {"alpha": "172.31.1", "beta": "172.31.2", "docker0": "172.17.0"}  # docker-like /24s
    bridges = {"alpha": jupyterhub.tenancy_bridge("alpha"), "beta": jupyterhub.tenancy_bridge("beta"), "docker0": "docker0"}
    v6 = {"alpha": "fd00:a::"}  # a ULA on alpha's bridge: what IPv6 a container could use to reach the host

    # The server segment: a bridge holding its gateway, the metadata address and "the internet".
    hub, seg = lab.netns("hub"), lab.netns("seg")
    dhcp = next(s for s in plan.segments if s.kind == "server").pool[0]  # Neutron's DHCP port, answering DNS
    lab.bridge(seg, "seg0", f"{gateway}/{prefix}", f"{dhcp}/32", f"{meta}/32", f"{INTERNET}/32")
    lab.veth(hub, "up0", seg, "p-hub")
    lab.run(IP, "link", "set", "p-hub", "master", "seg0", ns=seg)
    lab.run(IP, "addr", "add", f"{hub_ip}/{prefix}", "dev", "up0", ns=hub)
    lab.run(IP, "route", "add", "default", "via", gateway, ns=hub)
    superlinks = {}
    for t, role in ((alpha, "sla"), (beta, "slb")):
        ns = superlinks[t.name] = lab.netns(role)
        lab.veth(ns, "eth0", seg, f"p-{role}")
        lab.run(IP, "link", "set", f"p-{role}", "master", "seg0", ns=seg)
        lab.run(IP, "addr", "add", f"{t.superlink_ip}/{prefix}", "dev", "eth0", ns=ns)
        lab.listen(ns, f"{t.superlink_ip}:{CONTROL}", f"{t.superlink_ip}:{FLEET}")
    lab.listen(seg, f"{meta}:80", f"{INTERNET}:443", f"{dhcp}:{facts.DNS_PORT}")

    # The hub host: a bridge per tenancy (docker's network), docker0, one "container" on each.
    containers = {}
    for name, role in (("alpha", "ca"), ("beta", "cb"), ("docker0", "cd")):
        net, br = subnets[name], bridges[name]
        lab.bridge(hub, br, f"{net}.1/24", *([f"{v6[name]}1/64"] if name in v6 else []))
        ns = containers[name] = lab.netns(role)
        lab.veth(ns, "eth0", hub, f"v-{role}")
        lab.run(IP, "link", "set", f"v-{role}", "master", br, ns=hub)
        lab.run(IP, "addr", "add", f"{net}.2/24", "dev", "eth0", ns=ns)
        if name in v6:
            lab.run(IP, "addr", "add", f"{v6[name]}2/64", "dev", "eth0", "nodad", ns=ns)
        lab.run(IP, "route", "add", "default", "via", f"{net}.1", ns=ns)
        lab.listen(ns, f"{net}.2:{NOTEBOOK_PORT}")
    lab.listen(
        hub,
        f"{hub_ip}:{facts.JUPYTERHUB_HUB_PORT}",
        f"{hub_ip}:{facts.SSH_PORT}",
        f"{hub_ip}:{facts.JUPYTERHUB_PORT}",
        f"{v6['alpha']}1:{facts.SSH_PORT}",
    )

    # What docker does to a host: forwarding, DOCKER-USER first in FORWARD (with the RETURN older
    # releases append), policy DROP, per bridge the accepts and the masquerade.
    lab.run("sysctl", "-q", "-w", "net.ipv4.ip_forward=1", ns=hub)
    for argv in (
        ["-N", "DOCKER-USER"],
        ["-A", "DOCKER-USER", "-j", "RETURN"],
        ["-A", "FORWARD", "-j", "DOCKER-USER"],
        ["-P", "FORWARD", "DROP"],
    ):
        lab.run("iptables", "-w", *argv, ns=hub)
    for name, br in bridges.items():
        lab.run("iptables", "-w", "-A", "FORWARD", "-o", br, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT", ns=hub)
        lab.run("iptables", "-w", "-A", "FORWARD", "-i", br, "-j", "ACCEPT", ns=hub)
        lab.run(
            "iptables", "-w", "-t", "nat", "-A", "POSTROUTING", "-s", f"{subnets[name]}.0/24", "!", "-o", br, "-j", "MASQUERADE", ns=hub
        )
    setup = time.monotonic() - started

    a_sl, b_sl = f"{alpha.superlink_ip}:{CONTROL}", f"{beta.superlink_ip}:{CONTROL}"
    a_nb, b_nb = f"{subnets['alpha']}.2:{NOTEBOOK_PORT}", f"{subnets['beta']}.2:{NOTEBOOK_PORT}"
    hub_api, hub_ssh, hub_proxy = (f"{hub_ip}:{p}" for p in (facts.JUPYTERHUB_HUB_PORT, facts.SSH_PORT, facts.JUPYTERHUB_PORT))
    hub_ssh6 = f"{v6['alpha']}1:{facts.SSH_PORT}"
    internet, dns = f"{INTERNET}:443", f"{dhcp}:{facts.DNS_PORT}"
    targets = {
        containers["alpha"]: [
            a_sl,
            b_sl,
            f"{alpha.superlink_ip}:{FLEET}",
            b_nb,
            f"{meta}:80",
            hub_api,
            hub_ssh,
            hub_proxy,
            hub_ssh6,
            internet,
            dns,
            f"{beta.superlink_ip}:{facts.DNS_PORT}",  # nothing listens: refused if it got there
            f"{subnets['alpha']}.1:{facts.SSH_PORT}",
        ],
        containers["beta"]: [b_sl, a_sl, a_nb, hub_api, hub_ssh],
        containers["docker0"]: [a_sl, b_sl, hub_ssh, a_nb],
    }

    # Before the rules, docker's own rules let everything through: the test can fail.
    before = lab.probe(targets)
    ca, cb, cd = containers["alpha"], containers["beta"], containers["docker0"]
    assert before[ca][b_sl] == f"OK {hub_ip}", before  # alpha reaches beta's Control API (masqueraded)
    assert before[ca][f"{beta.superlink_ip}:{facts.DNS_PORT}"] == "FAIL ConnectionRefusedError", before  # a closed port answers
    assert ok(before[ca][b_nb]) and ok(before[ca][hub_ssh]) and ok(before[ca][f"{meta}:80"]) and ok(before[ca][hub_ssh6]), before

    # The program the unit runs, with the real iptables-restore, in the hub's namespace.
    program = lab.workdir / "nina-notebook-firewall"
    program.write_text(notebook_firewall.script(plan))
    program.chmod(0o755)
    applied = time.monotonic()
    first = lab.run("bash", str(program), ns=hub)
    apply_seconds = time.monotonic() - applied
    assert "IPv4: applied" in first.stdout and "IPv6: applied" in first.stdout, first.stdout + first.stderr

    after = lab.probe(targets)
    a, b, d = after[ca], after[cb], after[cd]
    assert a[a_sl] == f"OK {hub_ip}", a  # alpha -> its own Control API
    assert b[b_sl] == f"OK {hub_ip}", b  # beta -> its own
    assert dropped(b[a_sl]) and dropped(a[b_sl]), after  # never the other's
    assert dropped(a[f"{alpha.superlink_ip}:{FLEET}"]), a  # nor another port of its own SuperLink
    assert dropped(a[b_nb]) and dropped(b[a_nb]), after  # nor the other tenancy's containers
    assert dropped(a[f"{meta}:80"]), a  # nor the metadata service
    assert a[hub_api] == f"OK {subnets['alpha']}.2" and b[hub_api] == f"OK {subnets['beta']}.2", after  # the hub's API
    for target in (hub_ssh, hub_proxy, hub_ssh6, f"{subnets['alpha']}.1:{facts.SSH_PORT}"):
        assert dropped(a[target]), (target, a)  # nor the host's other services, over IPv4 or IPv6
    assert dropped(b[hub_ssh]), b
    assert ok(a[internet]), a  # the rest (the internet) is docker's to decide: allowed
    assert ok(a[dns]), a  # DNS, as docker's resolver asks it from the container's namespace
    assert dropped(a[f"{beta.superlink_ip}:{facts.DNS_PORT}"]), a  # ... only of the DNS server
    # docker0's container is none of nina's business: untouched.
    assert ok(d[a_sl]) and ok(d[b_sl]) and ok(d[hub_ssh]), d
    assert dropped(d[a_nb]), d  # ... but it cannot open a connection into a notebook network

    # Idempotent: a second run leaves the same rule set; a jump added twice, or a rule put ahead
    # of nina's in DOCKER-USER, is put right.
    saved = _saved(lab, hub)
    assert saved.count(f"-A DOCKER-USER -j {FWD}") == 2 and saved.count(f"-A INPUT -j {INP}") == 2  # IPv4 and IPv6
    lab.run("bash", str(program), ns=hub)
    assert _saved(lab, hub) == saved
    lab.run("iptables", "-w", "-A", "DOCKER-USER", "-j", FWD, ns=hub)
    lab.run("iptables", "-w", "-I", "DOCKER-USER", "1", "-s", "10.9.9.9/32", "-j", "ACCEPT", ns=hub)
    lab.run("iptables", "-w", "-A", "INPUT", "-j", INP, ns=hub)
    lab.run("bash", str(program), ns=hub)
    docker_user = lab.run("iptables", "-w", "-S", "DOCKER-USER", ns=hub).stdout.splitlines()
    assert docker_user[1:] == [f"-A DOCKER-USER -j {FWD}", "-A DOCKER-USER -s 10.9.9.9/32 -j ACCEPT", "-A DOCKER-USER -j RETURN"]
    lab.run("iptables", "-w", "-D", "DOCKER-USER", "-s", "10.9.9.9/32", "-j", "ACCEPT", ns=hub)
    assert _saved(lab, hub) == saved
    # The live chains are the rendered ones.
    live = (
        lab.run("iptables", "-w", "-S", FWD, ns=hub).stdout.splitlines()[1:]
        + lab.run("iptables", "-w", "-S", INP, ns=hub).stdout.splitlines()[1:]
    )
    assert len(live) == len(_rules(notebook_firewall.rules(plan)))
    again = lab.probe({ca: [a_sl, b_sl]})[ca]
    assert ok(again[a_sl]) and dropped(again[b_sl]), again

    total = time.monotonic() - started
    print(f"\nnotebook firewall lab: setup {setup:.2f} s, one apply {apply_seconds:.2f} s, whole test {total:.2f} s")
    assert total < 60


def test_program_fails_loudly_when_iptables_refuses(plan, tmp_path):
    """No silent half-firewall: a refused rule set stops the program (and so fails its unit)."""
    program = tmp_path / "nina-notebook-firewall"
    program.write_text(notebook_firewall.script(plan))
    refuse = tmp_path / "iptables-restore"
    refuse.write_text("#!/bin/sh\ncat >/dev/null\necho 'iptables-restore: line 9 failed' >&2\nexit 1\n")
    refuse.chmod(0o755)
    env = {**os.environ, "IPTABLES": "true", "IPTABLES_RESTORE": str(refuse)}
    proc = subprocess.run(["bash", str(program)], capture_output=True, text=True, timeout=30, env=env)
    assert proc.returncode == 1
    assert f"nina-notebook-firewall: error: {refuse} refused the IPv4 rules" in proc.stderr
    env["IPTABLES_RESTORE"] = str(tmp_path / "missing")
    proc = subprocess.run(["bash", str(program)], capture_output=True, text=True, timeout=30, env=env)
    assert proc.returncode == 1 and "not found (the iptables package)" in proc.stderr
