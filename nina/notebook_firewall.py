"""The JupyterHub host's notebook firewall: tenancy isolation of the researchers' containers.

flwr's Control API (the SuperLink's facts.SUPERLINK_CONTROL_PORT) has no user authentication:
whoever reaches it lists, starts and stops every run of that SuperLink. The Nectar security
group lets the JupyterHub host, all of it, reach every tenancy's Control API, so the boundary
between tenancies is this host's packet filter. Each tenancy's notebook containers sit on their
own docker bridge (`nina.jupyterhub.tenancy_bridge`, `nbr-<hash>`), and a container of tenancy
A may open a connection to A's Control API and to nothing of tenancy B.

`rules(plan)` is an `iptables-restore` document (filter table, for `--noflush`: it declares and
fills only nina's own chains, facts.NOTEBOOK_IPTABLES_CHAINS, each flushed and refilled as a
whole in one commit, so applying it again changes nothing):

- forward chain (jumped to first from docker's facts.DOCKER_USER_CHAIN): replies accepted; a new
  TCP connection from a tenancy's bridge to its own SuperLink's fixed address and Control API
  port accepted; DNS to the hub's DNS servers accepted (docker's embedded resolver forwards a
  container's queries from the container's namespace, so they pass here: to
  nina:cloud.dns_nameservers, or else to the server segment's DHCP allocation pool, where
  Neutron's DHCP port answers DNS and no planned host is); from any notebook bridge dropped:
  the cloud metadata address, the server segment (every SuperLink, Keycloak, the database,
  ...), every organisation segment, every VPN
  pool, any notebook bridge (another tenancy's containers, and the same network's when docker
  passes bridged frames through iptables); nothing may open a connection into a notebook
  bridge; the rest (the internet: pip, git) returns to docker's own chains, which still apply
  (an `internal` network stays internal).
- input chain (jumped to first from INPUT): from a notebook bridge to the host itself only
  replies and the hub's API (facts.JUPYTERHUB_HUB_PORT on the hub's fixed address, where the
  notebook servers report); on a shared host ("one large VM") also the Control API of the
  tenancy whose SuperLink runs there. The host's sshd, the hub's proxy, Keycloak, the docker
  API on TCP, anything else: dropped.

`rules6(plan)` drops every IPv6 packet from or to a notebook bridge (Nectar has no IPv6; a
container could otherwise reach the host's services over link-local addresses).

Only traffic in or out of a notebook bridge (`nbr-+`) matches any rule: docker's default bridge
and any other network on the host are left to docker, so the firewall cannot break what it does
not know about, and a notebook never sits on another network (the spawner's pre-spawn hook
puts it on its tenancy's, or refuses it).

`script(plan)` (facts.NOTEBOOK_FIREWALL_BIN) applies both documents with `iptables-restore
--noflush -w` and makes sure that DOCKER-USER exists and is jumped to from FORWARD (as docker
does) and that each parent chain jumps to nina's chain exactly once, as its first rule;
`unit()` (facts.NOTEBOOK_FIREWALL_UNIT) runs it after docker.service, whenever docker starts or
restarts. `firewall_files(plan)` is both, for the hub host's delivery, which restarts `UNITS`.

Pure: never imports pulumi; deterministic output.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from functools import lru_cache

import jinja2

from nina import facts, jupyterhub, templating
from nina.plan import Host, Plan
from nina.render import DeliveredFile, service_files

UNITS = (facts.NOTEBOOK_FIREWALL_UNIT,)  # what a delivery of `firewall_files` restarts
BRIDGES = f"{facts.JUPYTERHUB_BRIDGE_PREFIX}+"  # iptables' wildcard: every notebook bridge
FORWARD = facts.NOTEBOOK_IPTABLES_CHAINS["forward"]
INPUT = facts.NOTEBOOK_IPTABLES_CHAINS["input"]
# The parent chain each of nina's chains is jumped to from (first rule, exactly once).
PARENTS = {FORWARD: facts.DOCKER_USER_CHAIN, INPUT: "INPUT"}
IFNAMSIZ = 16  # Linux interface names: at most 15 characters


class NotebookFirewallError(ValueError):
    """The plan cannot give the hub host a notebook firewall (the message says why and what to do)."""


@dataclass(frozen=True)
class TenancyPath:
    """One tenancy as the firewall sees it: its bridge and its SuperLink's Control API."""

    tenancy: str
    bridge: str
    superlink_ip: str


@dataclass(frozen=True)
class Inputs:
    hub: Host
    tenancies: tuple[TenancyPath, ...]
    blocked: tuple[tuple[str, str], ...]  # (network, why), dropped from every notebook bridge
    # Where docker's resolver asks on a notebook's behalf (from the container's namespace, so
    # through these rules): iptables destination arguments.
    resolvers: tuple[str, ...]


def inputs(plan: Plan) -> Inputs:
    """What the rules derive from; NotebookFirewallError for a plan without a hub or tenancies."""
    try:
        hub = jupyterhub.jupyterhub_host(plan)
    except ValueError as exc:
        raise NotebookFirewallError(f"notebook firewall: {exc} (nina:hosts: give one host the role jupyterhub)") from None
    if not plan.tenancies:
        raise NotebookFirewallError("notebook firewall: the plan has no tenancies, so no notebook may reach any SuperLink")
    paths = []
    for t in plan.tenancies:
        bridge = jupyterhub.tenancy_bridge(t.name)
        if not bridge.startswith(facts.JUPYTERHUB_BRIDGE_PREFIX) or len(bridge) >= IFNAMSIZ:
            raise NotebookFirewallError(f"notebook firewall: tenancy {t.name!r}'s bridge {bridge!r} is not a notebook bridge name")
        paths.append(TenancyPath(t.name, bridge, _ipv4(t.superlink_ip, f"tenancy {t.name!r}'s SuperLink address")))
    for what, values in (("bridge", [p.bridge for p in paths]), ("SuperLink address", [p.superlink_ip for p in paths])):
        if len(set(values)) != len(values):
            raise NotebookFirewallError(f"notebook firewall: two tenancies share a {what}: {values}")
    blocked = [(f"{facts.CLOUD_METADATA_ADDRESS}/32", "cloud metadata service")]
    for seg in plan.segments:
        blocked.append((str(seg.cidr), f"segment {seg.name}"))
    for t in plan.tenancies:
        if t.vpn is not None:
            blocked.append((str(t.vpn.pool), f"VPN pool of {t.name}"))
    return Inputs(hub, tuple(paths), tuple(dict.fromkeys(blocked)), _resolvers(plan))


def _resolvers(plan: Plan) -> tuple[str, ...]:
    """The DNS servers of the hub's segment: nina:cloud.dns_nameservers when set, else Neutron's
    DHCP port of the server segment (dnsmasq answers DNS there), which holds an address of the
    segment's allocation pool (`Segment.pool`, where no planned host ever is)."""
    servers = [str(a) for a in plan.cfg.cloud.dns_nameservers]
    if servers:
        return tuple(f"-d {_ipv4(a, 'DNS server')}/32" for a in dict.fromkeys(servers))
    server = next(s for s in plan.segments if s.kind == "server")
    start, end = server.pool
    return (f"-m iprange --dst-range {start}-{end}",)


def _ipv4(value: str, what: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except (ipaddress.AddressValueError, ValueError):
        raise NotebookFirewallError(f"notebook firewall: {what} {value!r} is not an IPv4 address") from None


def _comment(text: str) -> str:
    return f'-m comment --comment "nina: {text}"'


def _header(hub: Host, family: str) -> list[str]:
    return [
        f"# nina-fl: the notebook firewall of the JupyterHub host {hub.name} ({family}), rendered by",
        "# nina.notebook_firewall from the plan. Apply with `iptables-restore --noflush`: only these chains",
        f"# change. {facts.NOTEBOOK_FIREWALL_BIN} applies it and keeps the jumps to them.",
        "*filter",
        f":{FORWARD} - [0:0]",
        f":{INPUT} - [0:0]",
    ]


def rules(plan: Plan) -> str:
    """The IPv4 `iptables-restore --noflush` document (see the module docstring)."""
    data = inputs(plan)
    hub_ip = _ipv4(data.hub.fixed_ip, f"the hub host {data.hub.name}'s address")
    new = "-m conntrack --ctstate NEW"
    replies = "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
    control = f"-p tcp -m tcp --dport {facts.SUPERLINK_CONTROL_PORT} {new}"
    lines = _header(data.hub, "IPv4")
    f, i = f"-A {FORWARD}", f"-A {INPUT}"
    lines += [
        "# Forwarded: replies to what a notebook opened",
        f"{f} -i {BRIDGES} {replies}",
        f"{f} -o {BRIDGES} {replies}",
        "# each tenancy's notebooks: its own SuperLink's Control API",
    ]
    on_hub = [p for p in data.tenancies if p.superlink_ip == hub_ip]  # the "one large VM"
    for p in data.tenancies:
        if p not in on_hub:
            lines.append(f"{f} -i {p.bridge} -d {p.superlink_ip}/32 {control} {_comment(f'{p.tenancy} Control API')} -j ACCEPT")
    lines.append("# DNS: docker's resolver asks the host's DNS servers from the container's namespace")
    for dest in data.resolvers:
        for proto in ("udp", "tcp"):
            lines.append(f"{f} -i {BRIDGES} {dest} -p {proto} -m {proto} --dport {facts.DNS_PORT} {new} {_comment('DNS')} -j ACCEPT")
    lines.append("# ... and nothing else of the platform, of the cloud, or of another notebook network")
    for net, why in data.blocked:
        lines.append(f"{f} -i {BRIDGES} -d {net} {_comment(why)} -j DROP")
    lines += [
        f"{f} -o {BRIDGES} {_comment('nothing opens a connection into a notebook network')} -j DROP",
        "# the rest from a notebook (the internet) returns to docker's own chains",
        "# To the host itself: replies, the hub's API",
        f"{i} -i {BRIDGES} {replies}",
        f"{i} -i {BRIDGES} -d {hub_ip}/32 -p tcp -m tcp --dport {facts.JUPYTERHUB_HUB_PORT} {new} {_comment('hub API')} -j ACCEPT",
    ]
    for p in on_hub:
        lines.append(f"{i} -i {p.bridge} -d {hub_ip}/32 {control} {_comment(f'{p.tenancy} Control API')} -j ACCEPT")
    lines += [f"{i} -i {BRIDGES} -j DROP", "COMMIT"]
    return "\n".join(lines) + "\n"


def rules6(plan: Plan) -> str:
    """The IPv6 `ip6tables-restore --noflush` document: nothing from or to a notebook bridge."""
    data = inputs(plan)
    lines = _header(data.hub, "IPv6: Nectar has none, notebooks get none")
    lines += [
        f"-A {FORWARD} -i {BRIDGES} -j DROP",
        f"-A {FORWARD} -o {BRIDGES} -j DROP",
        f"-A {INPUT} -i {BRIDGES} -j DROP",
        "COMMIT",
    ]
    return "\n".join(lines) + "\n"


@lru_cache(maxsize=1)
def _env() -> jinja2.Environment:
    return templating.environment("notebook_firewall")


def script(plan: Plan) -> str:
    """facts.NOTEBOOK_FIREWALL_BIN: applies `rules` and `rules6`, keeps exactly one jump to each chain."""
    v4, v6 = rules(plan), rules6(plan)
    for doc in (v4, v6):
        assert "\nNINA_RULES\n" not in doc  # the heredoc's terminator
    return (
        _env()
        .get_template("nina-notebook-firewall.sh.j2")
        .render(host=inputs(plan).hub.name, rules_v4=v4, rules_v6=v6, parents=PARENTS, bridges=BRIDGES)
    )


def unit() -> str:
    """facts.NOTEBOOK_FIREWALL_UNIT: oneshot, after docker.service, re-run whenever docker (re)starts."""
    return _env().get_template("nina-notebook-firewall.service.j2").render()


def firewall_files(plan: Plan) -> list[DeliveredFile]:
    """The program and its unit, for the JupyterHub host's delivery (which restarts `UNITS`)."""
    return service_files(facts.NOTEBOOK_FIREWALL_BIN, script(plan), facts.NOTEBOOK_FIREWALL_UNIT, unit())
