"""One definition per service: what a host needs at first boot to run it, stated once.

Each module here defines one `Service` (its name is the role that puts it on a host): its
Debian packages, its service user, its directories (manual 4.1.1), its Python venv (pinned
requirements, programs) and fixed first-boot files. The cloud-init renderer (`cloudinit.userdata`) builds every host's fixed
bootstrap from the services of its roles, and the role list of the config model comes from
here; a site kit's install.sh sets up the services of `site_kit()` (nina.kit). What evolves (programs, units, configs, keys) is not here: each service's delivery
(`nina.render.base_delivery`, `superlink_delivery`, `supernode_delivery`,
`nina.vpn.vpn_delivery`, `nina.proxy.proxy_delivery`, `nina.keycloak.keycloak_delivery`, `nina.grafana.grafana_delivery`) carries it in place and restarts the `UNITS` of its module. The port
table (`nina.firewall.PORT_TABLE`) stays central, one place to review for security.

Pure: standard library and nina.facts only (no pulumi).
"""

from __future__ import annotations

from collections.abc import Iterable

from nina.services import (
    base,
    bastion,
    gpu,
    grafana,
    jupyterhub,
    keycloak,
    monitoring,
    proxy,
    superlink,
    supernode,
    vpn,
)
from nina.services.model import VENV_DIRECTORIES, VENV_PACKAGES, Directory, FixedFile, Service, User, Venv

__all__ = [
    "BASE",
    "ROLES",
    "SERVICES",
    "SHARED_ROLES",
    "VENV_DIRECTORIES",
    "VENV_PACKAGES",
    "Directory",
    "FixedFile",
    "Service",
    "User",
    "Venv",
    "directories",
    "files",
    "for_roles",
    "packages",
    "site_kit",
    "users",
    "venvs",
    "watched_units",
]

BASE = base.SERVICE
# In the order the manual introduces them; a host's services are the base plus its roles'.
SERVICES: dict[str, Service] = {
    s.name: s
    for s in (
        bastion.SERVICE,
        proxy.SERVICE,
        keycloak.SERVICE,
        jupyterhub.SERVICE,
        monitoring.SERVICE,
        grafana.SERVICE,
        superlink.SERVICE,
        supernode.SERVICE,
        vpn.SERVICE,
    )
}
ROLES = tuple(SERVICES)
SHARED_ROLES = tuple(name for name, s in SERVICES.items() if s.shared)


_MODULES = (base, bastion, proxy, keycloak, jupyterhub, monitoring, grafana, superlink, supernode, vpn, gpu)
# gpu is no role: the plan gives it to the hosts with Host.gpu (its delivery, nina.gpu).
assert {m.SERVICE.name for m in _MODULES} == {BASE.name, gpu.SERVICE.name, *SERVICES}


def watched_units() -> tuple[str, ...]:
    """The systemd units worth watching on nina's hosts: for the base service and every service,
    its module's UNITS (what its delivery restarts), WATCHED (what it runs otherwise, e.g. nginx)
    and CLIENT_UNITS (the VPN client of on-premise hosts). Sorted, once each. The node exporter's
    systemd collector reports only these (nina.render), and the unit alerts watch them (nina.monitoring)."""
    found: set[str] = set()
    for module in _MODULES:
        for attr in ("UNITS", "WATCHED", "CLIENT_UNITS"):
            found.update(getattr(module, attr, ()))
    return tuple(sorted(found))


def for_roles(roles: Iterable[str]) -> list[Service]:
    """The base service and the services of `roles`, in SERVICES order; unknown roles are refused."""
    wanted = set(roles)
    unknown = wanted - set(SERVICES)
    if unknown:
        raise ValueError(f"unknown roles {sorted(unknown)}; known: {', '.join(ROLES)}")
    return [BASE, *(s for name, s in SERVICES.items() if name in wanted)]


def site_kit(onprem: bool) -> list[Service]:
    """What a site kit's install.sh sets up (nina.kit): a SuperNode host's services, as a cloud
    SuperNode VM gets them, plus the VPN client for an on-premise organisation."""
    return [*for_roles(["supernode"]), *([vpn.CLIENT] if onprem else [])]


def packages(services: Iterable[Service]) -> list[str]:
    return sorted({p for s in services for p in s.packages})


def users(services: Iterable[Service]) -> list[User]:
    return [s.user for s in services if s.user is not None]


def directories(services: Iterable[Service]) -> list[Directory]:
    """Every directory of `services`, sorted by path (so parents come first). Two services may
    both list a directory only with the same mode and owners."""
    found: dict[str, Directory] = {}
    for s in services:
        for d in s.directories:
            other = found.setdefault(d.path, d)
            if other != d:
                raise ValueError(f"services disagree about {d.path}: {other} vs {d} ({s.name})")
    return [found[p] for p in sorted(found)]


def venvs(services: Iterable[Service]) -> list[Venv]:
    """One venv per path, in the order services name them, with the programs of every service
    that uses it; services that share a venv must pin the same requirements."""
    found: dict[str, Venv] = {}
    for s in services:
        if s.venv is None:
            continue
        other = found.setdefault(s.venv.path, s.venv)
        if other.requirements != s.venv.requirements:
            raise ValueError(f"services disagree about the venv {s.venv.path}: {other.requirements} vs {s.venv.requirements} ({s.name})")
        programs = tuple(dict.fromkeys((*other.programs, *s.venv.programs)))
        found[s.venv.path] = Venv(other.path, other.requirements, programs)
    return list(found.values())


def files(services: Iterable[Service]) -> list[FixedFile]:
    """The fixed files of `services` (user-data); two services may name a file only with the same content."""
    found: dict[str, FixedFile] = {}
    for s in services:
        for f in s.files:
            if found.setdefault(f.path, f) != f:
                raise ValueError(f"services disagree about {f.path} ({s.name})")
    return list(found.values())
