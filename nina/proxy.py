"""The reverse proxy on the proxy host (manual 4.1.2.5-4.1.2.7): nginx and certbot as plain files.

Pure like `nina.render`: never imports pulumi, renders Jinja2 templates from
nina/templates/proxy with StrictUndefined, takes every port and path from `nina.facts`, and
gives byte-identical output for the same plan.

What it serves: each public service of `PUBLIC_SERVICES` that has a host in the plan, at
`nina:researcher_access.public_name(service)` (facts.PUBLIC_NAMES under the public domain), on
port 443 with a Let's Encrypt certificate for that name, proxied over HTTPS to the service's
host: its fixed address, the port the port table lets the proxy reach it on
(`nina.firewall.PORT_TABLE`, so the rule and the proxy cannot disagree), the certificate
verified against the local CA (a copy at facts.PROXY_UPSTREAM_CA) with the host's plan name as
the expected name (each upstream's local-CA certificate names its host). A TLS handshake
without a known name is rejected, a request whose Host is unknown or differs from its SNI name
gets no answer (444) or 421. Port 80 serves only the ACME challenge directory and redirects
everything else to HTTPS. WebSocket upgrades pass for the services that need them (JupyterHub,
Grafana Live).

Certificates: certbot, HTTP-01 through the webroot on port 80 (README, "Researcher access: the
proxy", says why not DNS-01), one certificate per name, renewed by the Debian/Ubuntu
certbot.timer, which reloads nginx through the deploy hook certbot saved. nginx cannot start
without its certificates and certbot needs nginx on port 80, so `nina-proxy-certs`
(facts.PROXY_CERTS_BIN, run by its unit when the delivery changed) puts a self-signed
placeholder where a name's certificate is still missing, checks the configuration, reloads
nginx, and then asks certbot for each missing certificate.
"""

from __future__ import annotations

import posixpath
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import jinja2

from nina import facts, firewall, services, templating
from nina.plan import Plan
from nina.render import DeliveredFile, delivery_payload, service_files


@dataclass(frozen=True)
class PublicService:
    """A service researchers reach through the proxy."""

    name: str  # a key of facts.PUBLIC_NAMES (its public host name)
    role: str  # the host role that runs it (its upstream), and the port-table zone the proxy reaches
    websocket: bool  # pass WebSocket upgrades on
    max_body: str = "1m"  # nginx client_max_body_size
    # Paths nginx answers 404 for (prefixes): what must not be public although the service serves it.
    blocked: tuple[str, ...] = ()
    # The port-table zone the proxy reaches it in, when not `role`'s own.
    zone: str | None = None
    # Roles the plan must also have for it to be served (Grafana: the Keycloak it logs in through).
    needs: tuple[str, ...] = ()


# In the order nginx's files are written.
PUBLIC_SERVICES: tuple[PublicService, ...] = (
    # Keycloak's admin console and API, and its master realm (where the bootstrap admin logs in),
    # are for operators only, through an SSH tunnel to the Keycloak host (README): never public.
    PublicService("keycloak", "keycloak", websocket=False, blocked=("/admin/", f"/realms/{facts.KEYCLOAK_MASTER_REALM}/")),
    # Notebook kernels and terminals are WebSockets; notebooks are saved whole (PUT of the JSON).
    PublicService("jupyterhub", "jupyterhub", websocket=True, max_body="64m"),
    # Grafana (role grafana, on the monitoring host: the port table's monitoring zone), WebSocket
    # for Grafana Live; only with Keycloak, as only operators logged in through it may see it.
    # Its /metrics (off in grafana.ini, and never public: it takes no login) answers 404 here too.
    PublicService("grafana", "grafana", websocket=True, zone="monitoring", needs=("keycloak",), blocked=("/metrics",)),
)

# Sent with every answer (`always`: errors too), replacing what an upstream sends.
SECURITY_HEADERS: tuple[tuple[str, str], ...] = (
    ("Strict-Transport-Security", f"max-age={facts.PROXY_HSTS_MAX_AGE}"),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "SAMEORIGIN"),
    ("Referrer-Policy", "strict-origin-when-cross-origin"),
)
CONF_FILE = "nina-proxy.conf"  # in facts.NGINX_CONF_D: what every site shares
DEPLOY_HOOK = f"systemctl reload {facts.NGINX_UNIT}"


@dataclass(frozen=True)
class Site:
    """One server block: a public name and the upstream it is proxied to."""

    service: str
    server_name: str
    upstream_host: str  # the plan's host name: the name its certificate must carry (proxy_ssl_name)
    upstream_ip: str
    upstream_port: int
    websocket: bool
    max_body: str
    blocked: tuple[str, ...] = ()  # path prefixes answered 404

    @property
    def conf_file(self) -> str:
        return f"nina-{self.service}.conf"


@lru_cache(maxsize=1)
def _env() -> jinja2.Environment:
    return templating.environment("proxy", trim_blocks=True)


def _render(template: str, **context: object) -> str:
    return _env().get_template(template).render(conf_d=facts.NGINX_CONF_D, **context)


def upstream_port(role: str) -> int:
    """The port of `role` that the port table opens to the proxy (exactly one row)."""
    ports = {f.port for f in firewall.PORT_TABLE if f.to == role and "proxy" in f.sources}
    if len(ports) != 1:
        raise ValueError(f"the port table opens {sorted(ports)} of {role!r} to the proxy; the proxy needs exactly one")
    return ports.pop()


def sites(plan: Plan, public: Sequence[PublicService] = PUBLIC_SERVICES) -> tuple[Site, ...]:
    """The server blocks of `plan`: each public service whose role a host carries (none if the
    stack has no nina:researcher_access)."""
    access = plan.cfg.researcher_access
    if access is None:
        return ()
    found = []
    for svc in public:
        host = next((h for h in plan.hosts if svc.role in h.roles), None)
        if host is None or not all(any(r in h.roles for h in plan.hosts) for r in svc.needs):
            continue
        port = upstream_port(svc.zone or svc.role)
        if "proxy" in host.roles and port in (facts.HTTP_PORT, facts.HTTPS_PORT):
            raise ValueError(
                f"{svc.name} on the proxy host {host.name!r} would listen on port {port}, which nginx holds there; "
                f"put {svc.role!r} on another host in nina:hosts"
            )
        found.append(Site(svc.name, access.public_name(svc.name), host.name, host.fixed_ip, port, svc.websocket, svc.max_body, svc.blocked))
    return tuple(found)


def proxy_host(plan: Plan) -> str | None:
    """The host with role proxy (at most one: nina.config), if any."""
    return next((h.name for h in plan.hosts if "proxy" in h.roles), None)


# --- files ----------------------------------------------------------------------------------


def nginx_conf() -> str:
    """facts.NGINX_CONF: workers, TLS defaults, and only facts.NGINX_CONF_D included."""
    return _render("nginx.conf.j2")


def proxy_conf(found: Sequence[Site]) -> str:
    """CONF_FILE: the default servers that refuse unknown names, port 80 (ACME challenges, the
    redirect to HTTPS) and the WebSocket map."""
    if not found:
        raise ValueError("no public service to serve")
    return _render("proxy.conf.j2", name=CONF_FILE, sites=found)


def site_conf(site: Site) -> str:
    """A service's server block (Site.conf_file in facts.NGINX_CONF_D)."""
    return _render("site.conf.j2", name=site.conf_file, site=site, headers=SECURITY_HEADERS)


def certs_script(plan: Plan, found: Sequence[Site]) -> str:
    """facts.PROXY_CERTS_BIN: placeholders, `nginx -t`, reload, certbot for missing certificates."""
    access = plan.cfg.researcher_access
    if access is None or not found:
        raise ValueError("no nina:researcher_access or no public service: nothing to certify")
    return _render(
        "nina-proxy-certs.sh.j2",
        server=facts.ACME_STAGING_SERVER if access.acme_staging else facts.ACME_SERVER,
        email=shlex.quote(access.acme_email),
        names=[shlex.quote(s.server_name) for s in found],
        deploy_hook=DEPLOY_HOOK,
    )


def certs_unit() -> str:
    """facts.PROXY_CERTS_UNIT: runs facts.PROXY_CERTS_BIN (oneshot), after nginx."""
    return _render("nina-proxy-certs.service.j2")


def _pem(value: str, what: str) -> str:
    if not isinstance(value, str) or "BEGIN CERTIFICATE" not in value:
        raise ValueError(f"{what} does not look right: expected 'BEGIN CERTIFICATE' in it")
    return value if value.endswith("\n") else value + "\n"


def files(plan: Plan, ca_cert_pem: str) -> list[DeliveredFile]:
    """Everything the proxy host's delivery installs."""
    found = sites(plan)
    conf_d = facts.NGINX_CONF_D
    return [
        DeliveredFile(facts.NGINX_CONF, nginx_conf(), 0o644),
        DeliveredFile(posixpath.join(conf_d, CONF_FILE), proxy_conf(found), 0o644),
        *(DeliveredFile(posixpath.join(conf_d, s.conf_file), site_conf(s), 0o644) for s in found),
        DeliveredFile(facts.PROXY_UPSTREAM_CA, _pem(ca_cert_pem, "CA certificate"), 0o644),
        *service_files(facts.PROXY_CERTS_BIN, certs_script(plan, found), facts.PROXY_CERTS_UNIT, certs_unit()),
    ]


def proxy_delivery(plan: Plan, ca_cert_pem: str) -> str:
    """The `<host>-proxy` payload: nginx's configuration, the local CA, nina-proxy-certs and its
    unit, which the delivery restarts (it checks the configuration and reloads nginx itself).
    facts.NGINX_CONF_D is pruned: a service that leaves the list takes its server block along."""
    return delivery_payload(files(plan, ca_cert_pem), list(services.proxy.UNITS), prune=[facts.NGINX_CONF_D])
