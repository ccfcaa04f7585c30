"""The deployment plan: what exists, derived from a validated StackConfig as plain data.

Segments, hosts (with their fixed addresses), volumes, security groups, firewall rules,
certificates and SuperNode membership are all decided here, before any resource exists, so
that addresses are known to certificates and rules without waiting on a VM. The Pulumi
components only turn this plan into resources; the renderers only turn it into files.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property
from ipaddress import IPv4Network

from nina import environments, facts, pem
from nina.config import StackConfig
from nina.environments import Environment
from nina.firewall import DATABASE_CLIENT_ROLES, PER_TENANCY_ZONES, PORT_TABLE, Flow


@dataclass(frozen=True)
class Segment:
    name: str  # "server" or "org-<slug>"
    cidr: IPv4Network
    kind: str  # "server" | "org"

    @property
    def gateway_ip(self) -> str:
        return str(self.cidr.network_address + 1)

    @property
    def pool(self) -> tuple[str, str]:
        return str(self.cidr.network_address + facts.DHCP_POOL_OFFSET), str(self.cidr.broadcast_address - 1)

    def address(self, offset: int) -> str:
        return str(self.cidr.network_address + offset)


@dataclass(frozen=True)
class Volume:
    name: str  # resource-name suffix, e.g. "state"
    size_gb: int
    mount_point: str
    owner: str  # user that owns the mounted tree


@dataclass(frozen=True)
class Host:
    name: str  # VM name and hostname
    roles: tuple[str, ...]
    segment: str
    fixed_ip: str
    flavor: str
    public: bool  # gets a floating IP
    tenancy: str | None = None  # for the superlink role, and for a SuperNode's federation
    org: str | None = None  # for a cloud SuperNode
    volumes: tuple[Volume, ...] = ()
    security_groups: tuple[str, ...] = ()
    gpu: bool = False
    # Networks this host routes for (the VPN pool behind an OpenVPN server): its port must
    # accept them as source addresses, and the router sends them to it.
    routed_cidrs: tuple[str, ...] = ()


@dataclass(frozen=True)
class Rule:
    """One ingress rule; `name` is deterministic (`from->to-proto-port`) so previews stay stable."""

    name: str
    security_group: str
    protocol: str
    port_min: int
    port_max: int
    remote_group: str | None
    remote_cidr: str | None
    description: str


@dataclass(frozen=True)
class Certificate:
    """A leaf certificate signed by the local CA."""

    name: str
    common_name: str
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    server: bool  # server auth (else client auth)


def host_certificate(name: str, cfg: StackConfig, host: Host, loopback: bool = True) -> Certificate:
    """A service host's local-CA server certificate for its internal HTTPS: CN and DNS name the
    host's name (what nginx's proxy_ssl_name checks), `<host>.<nina:cloud.dns_domain>` when set,
    IP its fixed address; with `loopback`, also localhost and 127.0.0.1 (an operator's SSH tunnel,
    programs on the host itself)."""
    names = [host.name]
    if cfg.cloud.dns_domain:
        names.append(f"{host.name}.{cfg.cloud.dns_domain}")
    ips = [host.fixed_ip]
    if loopback:
        names.append("localhost")
        ips.append(facts.LOOPBACK)
    return Certificate(name=name, common_name=host.name, dns_names=tuple(dict.fromkeys(names)), ip_addresses=tuple(ips), server=True)


@dataclass(frozen=True)
class Member:
    """An organisation's SuperNode in its tenancy's federation. Nothing here depends on the
    rest of the membership (no count, no list position): a site kit made from it stays valid
    whoever joins or leaves."""

    tenancy: str
    slug: str
    display_name: str
    placement: str
    partition_id: int  # stated in the config, never renumbered
    gpu: bool
    vpn_address: str | None = None  # fixed VPN address (on-premise organisations)
    own_vpn_csr: str | None = None  # the organisation keeps its VPN key: sign this CSR
    own_supernode_public_key: str | None = None  # ... and its SuperNode key: register this
    kit_generation: int = 1  # raised in the config to replace the organisation's kit (keys, certificates)

    @property
    def key_suffix(self) -> str:
        """Part of the names of the organisation's key and certificate resources: a new
        generation names new resources, so Pulumi makes new keys and certificates (and drops
        the old ones), and the VPN hub and SuperLink admit only the new ones. Generation 1 has
        no suffix (the names of stacks deployed before generations existed)."""
        return "" if self.kit_generation == 1 else f"-g{self.kit_generation}"


@dataclass(frozen=True)
class VpnPlan:
    """A tenancy's OpenVPN server (manual 4.1.2.3-4.1.2.4): tap device, fixed client addresses."""

    host: str
    internal_ip: str
    pool: IPv4Network
    routes: tuple[IPv4Network, ...]  # pushed to clients: the server segment
    superlink_ip: str
    certificate: Certificate
    clients: tuple[Certificate, ...]  # one per on-premise organisation, CN = slug

    @property
    def server_ip(self) -> str:
        return str(self.pool.network_address + 1)


@dataclass(frozen=True)
class TenancyPlan:
    name: str
    superlink_host: str
    superlink_ip: str
    members: tuple[Member, ...]
    certificate: Certificate
    vpn: VpnPlan | None = None
    # Its training environment and the committed lock its Flower venvs and kits install.
    environment: Environment = environments.DEFAULT
    environment_lock: str = ""

    @property
    def fleet_address(self) -> str:
        return f"{self.superlink_ip}:{facts.SUPERLINK_FLEET_PORT}"

    @property
    def control_address(self) -> str:
        return f"{self.superlink_ip}:{facts.SUPERLINK_CONTROL_PORT}"


@dataclass(frozen=True)
class Plan:
    cfg: StackConfig
    segments: tuple[Segment, ...]
    hosts: tuple[Host, ...]
    tenancies: tuple[TenancyPlan, ...]
    security_groups: tuple[str, ...]
    rules: tuple[Rule, ...]
    database_allowed_cidrs: tuple[str, ...]
    database_ip: str | None

    @cached_property
    def host_by_name(self) -> dict[str, Host]:
        return {h.name: h for h in self.hosts}

    @property
    def bastion(self) -> Host:
        return next(h for h in self.hosts if "bastion" in h.roles)

    def members(self) -> list[Member]:
        return [m for t in self.tenancies for m in t.members]

    @property
    def name_prefix(self) -> str:
        """What every cloud-side name starts with: `nina-<env>-`."""
        return f"nina-{self.cfg.environment}-"

    def prefix(self, name: str) -> str:
        """Cloud-side name of a resource (VMs, networks, groups): `nina-<env>-<name>`."""
        return self.name_prefix + name


# ---------------------------------------------------------------------------------------


def build_plan(cfg: StackConfig) -> Plan:
    server = Segment("server", cfg.network.server_cidr, "server")
    segments = [server]
    hosts: list[Host] = []
    tenancies = cfg.all_tenancies
    shared_superlink = any("superlink" in g.roles for g in cfg.hosts)

    def superlink_volume() -> Volume:
        return Volume("state", cfg.superlink.state_volume_gb, facts.SUPERLINK_STATE_DIR, facts.SERVICE_USERS["superlink"])

    # docker's data root on the JupyterHub host (images, researchers' volumes); root's, as dockerd is.
    hub_volume = Volume(facts.JUPYTERHUB_VOLUME_NAME, cfg.jupyterhub.volume_gb, facts.JUPYTERHUB_VOLUME, facts.ROOT_USER)

    for i, group in enumerate(cfg.hosts):
        roles = tuple(sorted(group.roles))
        on_it = "superlink" in roles
        hosts.append(
            Host(
                name=group.name,
                roles=roles,
                segment=server.name,
                fixed_ip=server.address(facts.SHARED_HOST_OFFSET + i),
                flavor=group.flavor,
                public=bool({"bastion", "proxy"} & set(roles)),
                tenancy=tenancies[0].name if on_it else None,
                volumes=((superlink_volume(),) if on_it else ()) + ((hub_volume,) if "jupyterhub" in roles else ()),
            )
        )

    # Prometheus's time series on the monitoring host's own volume (the role is on a shared host).
    metrics = Volume(facts.MONITORING_VOLUME_NAME, cfg.monitoring.volume_gb, facts.MONITORING_VOLUME, facts.PROMETHEUS_USER)
    hosts = [replace(h, volumes=(*h.volumes, metrics)) if "monitoring" in h.roles else h for h in hosts]
    # The Trove databases' backups (nina-db-backup) on the own volume of each host whose service
    # uses a database (keycloak's, grafana's; one volume when both share a host), root's: they
    # outlive a lost VM. Always with the role (like the hub's volume), whatever nina:database or
    # nina:researcher_access say, so turning those on or off attaches nothing and replaces no VM.
    db_backups = Volume(facts.DB_BACKUP_VOLUME_NAME, cfg.database.backup_volume_gb, facts.DB_BACKUP_VOLUME, facts.ROOT_USER)
    hosts = [replace(h, volumes=(*h.volumes, db_backups)) if {"keycloak", "grafana"} & set(h.roles) else h for h in hosts]

    def tenancy_host(role: str, index: int, tenancy: str, offset: int, flavor: str, public: bool, **extra) -> Host:
        """Tenancy `index`'s own VM for `role` in the server segment, at `.offset + index`."""
        return Host(
            name=f"{role}-{tenancy}",
            roles=(role,),
            segment=server.name,
            fixed_ip=server.address(offset + index),
            flavor=flavor,
            public=public,
            tenancy=tenancy,
            **extra,
        )

    superlink_of: dict[str, Host] = {}
    if shared_superlink:
        superlink_of[tenancies[0].name] = next(h for h in hosts if "superlink" in h.roles)
    for t, ten in enumerate(tenancies):
        if ten.name in superlink_of:
            continue
        host = tenancy_host(
            "superlink", t, ten.name, facts.SUPERLINK_OFFSET, cfg.superlink.flavor, public=False, volumes=(superlink_volume(),)
        )
        hosts.append(host)
        superlink_of[ten.name] = host

    vpn_of: dict[str, Host] = {}
    for t, ten in enumerate(tenancies):
        if cfg.vpn_pool(ten) is None:
            continue
        vpn_of[ten.name] = tenancy_host(
            "vpn", t, ten.name, facts.VPN_SERVER_OFFSET, cfg.vpn.flavor, public=True, routed_cidrs=(str(cfg.vpn_pool(ten)),)
        )
        hosts.append(vpn_of[ten.name])

    members_of: dict[str, tuple[Member, ...]] = {}
    for ten in tenancies:
        ids = cfg.partition_ids(ten)
        pool = cfg.vpn_pool(ten)
        members_of[ten.name] = tuple(
            Member(
                ten.name,
                o.slug,
                o.name,
                o.placement,
                ids[o.slug],
                o.gpu,
                vpn_address=str(pool.network_address + facts.VPN_CLIENT_OFFSET + ids[o.slug]) if pool and o.placement == "onprem" else None,
                own_vpn_csr=None if o.vpn_csr_pem is None else pem.csr(o.vpn_csr_pem),  # canonical (checked by nina.config)
                own_supernode_public_key=o.supernode_public_key,
                kit_generation=o.kit_generation,
            )
            for o in ten.organisations
        )
        for org in ten.organisations:
            if org.placement != "cloud":
                continue
            assert org.cidr is not None  # guaranteed by config validation
            seg = Segment(f"org-{org.slug}", org.cidr, "org")
            segments.append(seg)
            flavor = org.flavor or (cfg.supernode.gpu_flavor if org.gpu else None) or cfg.supernode.flavor
            volumes = (
                (Volume("data", cfg.supernode.data_volume_gb, facts.SUPERNODE_DATA, facts.SERVICE_USERS["supernode"]),)
                if cfg.supernode.data_volume_gb
                else ()
            )
            hosts.append(
                Host(
                    name=f"supernode-{org.slug}",
                    roles=("supernode",),
                    segment=seg.name,
                    fixed_ip=seg.address(facts.SUPERNODE_OFFSET),
                    flavor=flavor,
                    public=False,
                    tenancy=ten.name,
                    org=org.slug,
                    volumes=volumes,
                    gpu=org.gpu,
                )
            )

    zones_of = {h.name: _zones(h) for h in hosts}
    hosts = [Host(**{**h.__dict__, "security_groups": tuple(zones_of[h.name])}) for h in hosts]
    present_zones = sorted({z for zs in zones_of.values() for z in zs})
    rules = _rules(cfg, hosts, present_zones, segments)

    tenancy_plans = []
    for ten in tenancies:
        sl = superlink_of[ten.name]
        vpn = None
        if ten.name in vpn_of:
            vh = vpn_of[ten.name]
            pool = cfg.vpn_pool(ten)
            assert pool is not None, "a tenancy with a VPN host has on-premise organisations"
            vpn = VpnPlan(
                host=vh.name,
                internal_ip=vh.fixed_ip,
                pool=pool,
                routes=(cfg.network.server_cidr,),
                superlink_ip=sl.fixed_ip,
                certificate=Certificate(vh.name, vh.name, (vh.name,), (), server=True),
                clients=tuple(
                    Certificate(f"vpn-client-{m.slug}{m.key_suffix}", m.slug, (), (), server=False)
                    for m in members_of[ten.name]
                    if m.vpn_address
                ),
            )
        tenancy_plans.append(
            TenancyPlan(
                name=ten.name,
                superlink_host=sl.name,
                superlink_ip=sl.fixed_ip,
                members=members_of[ten.name],
                certificate=_superlink_certificate(cfg, sl),
                vpn=vpn,
                environment=cfg.training_environment_of(ten),
                environment_lock=environments.read_lock(cfg.training_environment_of(ten)),
            )
        )

    consumers = [h.fixed_ip + "/32" for h in hosts if set(DATABASE_CLIENT_ROLES) & set(h.roles)]
    db_cidrs = tuple(consumers) if consumers else (str(cfg.network.server_cidr),)

    return Plan(
        cfg=cfg,
        segments=tuple(segments),
        hosts=tuple(hosts),
        tenancies=tuple(tenancy_plans),
        security_groups=tuple(present_zones),
        rules=tuple(rules),
        database_allowed_cidrs=db_cidrs if cfg.database.enabled else (),
        database_ip=server.address(facts.DATABASE_OFFSET) if cfg.database.enabled else None,
    )


def _zones(host: Host) -> list[str]:
    """Security groups of a host: `managed` for all, one per role (per tenancy for SuperLinks)."""
    zones = ["managed"]
    for role in host.roles:
        if role in ("superlink", "vpn"):
            zones.append(f"{role}-{host.tenancy}")
        elif role != "supernode":  # SuperNodes accept nothing but `managed` (SSH from bastion, exporter)
            zones.append(role)
    if host.gpu:
        zones.append("gpu")
    return sorted(set(zones))


def _superlink_certificate(cfg: StackConfig, host: Host) -> Certificate:
    names = [host.name, f"superlink-{host.tenancy}", "localhost"]
    if cfg.cloud.dns_domain:
        names += [f"{n}.{cfg.cloud.dns_domain}" for n in (host.name, f"superlink-{host.tenancy}")]
    return Certificate(
        name=f"superlink-{host.tenancy}",
        common_name=f"superlink-{host.tenancy}",
        dns_names=tuple(dict.fromkeys(names)),
        ip_addresses=(host.fixed_ip, facts.LOOPBACK),
        server=True,
    )


def _cidr_name(cidr: str) -> str:
    return cidr.replace("/", "_")


def _rules(cfg: StackConfig, hosts: list[Host], zones: list[str], segments: list[Segment]) -> list[Rule]:
    """Every ingress rule, derived from PORT_TABLE; nothing else opens a port."""
    rules: dict[str, Rule] = {}
    for flow in PORT_TABLE:
        for dst in _targets(flow, zones):
            for src_name, group, cidr in _sources(cfg, flow, dst, zones, segments):
                ports = str(flow.port) if flow.port_max in (None, flow.port) else f"{flow.port}-{flow.port_max}"
                name = f"{src_name}->{dst}-{flow.protocol}-{ports}"
                rules[name] = Rule(
                    name=name,
                    security_group=dst,
                    protocol=flow.protocol,
                    port_min=flow.port,
                    port_max=flow.port_max or flow.port,
                    remote_group=group,
                    remote_cidr=cidr,
                    description=f"{flow.component} (manual {flow.manual_ref})",
                )
    return [rules[k] for k in sorted(rules)]


def _targets(flow: Flow, zones: list[str]) -> list[str]:
    if flow.to in PER_TENANCY_ZONES:
        return [z for z in zones if z.startswith(flow.to + "-")]
    return [flow.to] if flow.to in zones else []


def _sources(cfg: StackConfig, flow: Flow, dst: str, zones: list[str], segments: list[Segment]):
    for src in flow.sources:
        if src == "admin":
            for net in cfg.network.admin_cidrs:
                yield f"admin-{_cidr_name(str(net))}", None, str(net)
        elif src == "public":
            yield "public", None, "0.0.0.0/0"
        elif src == "supernodes":
            tenancy = dst.removeprefix("superlink-")
            ten = next(t for t in cfg.all_tenancies if t.name == tenancy)
            for org in ten.organisations:
                if org.placement == "cloud":
                    yield f"org-{org.slug}", None, str(org.cidr)
            # On-premise SuperNodes arrive through the tenancy's OpenVPN server, which
            # masquerades the pool onto the server segment (manual 4.1.2.4.1) and forwards
            # nothing from the pool but this port (see nina/vpn.py).
            if cfg.vpn_pool(ten) is not None:
                yield f"vpn-{tenancy}", f"vpn-{tenancy}", None
        elif src in zones:
            yield src, src, None
