"""Grafana as code on the monitoring host (issue 12 item 5): grafana.ini, provisioning, units, delivery.

- `grafana_ini(plan, db_host)`: grafana.ini built as data (configparser) from the plan: HTTPS on
  facts.GRAFANA_PORT with the local-CA certificate of `certificate(plan)`, on the monitoring
  host's fixed IP when nginx serves Grafana (`public(plan)`), else on 127.0.0.1 only (an
  operator's SSH tunnel); its database on the managed Postgres (grafanadb_server, role grafana,
  whose search_path is its own schema: the database step); every secret a `$__file{}` reference
  to a root:grafana 0640 file; no sign-up, no analytics, no gravatar, nothing readable without
  a login (no snapshots, public dashboards or /metrics); and, when public, login only
  through the Keycloak realm (generic OAuth), where only the operators' group gets a role (Editor)
  and everyone else is refused (`role_attribute_strict`): dashboards show every tenancy and
  hospital.
- `datasources_yaml()`, `providers_yaml()`: the provisioned Prometheus datasource (uid
  facts.GRAFANA_DATASOURCE_UID, the monitoring host's loopback Prometheus, not editable) and the
  file provider of the dashboards (root's directory, no UI changes), as data dumped with PyYAML.
- `grafana_delivery(plan, db_host, secrets, dashboards)`: the `<host>-grafana` payload; the
  dashboards (file name -> JSON text, from nina.dashboards) go into a hot, pruned directory that
  Grafana rereads itself, so a dashboard change restarts nothing and replaces no VM.

Pure: never imports pulumi; deterministic (sorted dashboards, fixed section order).
"""

from __future__ import annotations

import configparser
import io
import json
import posixpath
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import jinja2
import yaml

from nina import config, facts, keycloak, proxy, render, templating
from nina.plan import Certificate, Host, Plan, host_certificate
from nina.services import grafana as service

SERVICE = "grafana"
HOME = "/usr/share/grafana"  # the .deb's home path (bin/grafana, conf/defaults.ini, public/)
PLUGINS = posixpath.join(facts.GRAFANA_DATA, "plugins")
PROMETHEUS_URL = f"http://{facts.LOOPBACK}:{facts.PROMETHEUS_PORT}"
CA_FILE = posixpath.join(facts.GRAFANA_CERTS, facts.CA_CERT_FILE)
DASHBOARD_UPDATE_SECONDS = 30  # how often Grafana rereads the dashboards' directory
# Grafana maps the realm's groups to a role at login only: a session ends within a day (and after
# 8 idle hours), so someone taken out of the operators' group loses Grafana by the next login
# through Keycloak, not after Grafana's default 30 days.
SESSION_LIFETIME = "1d"
SESSION_IDLE = "8h"
# The secrets grafana.ini reads with $__file{} (root:grafana 0640 in facts.GRAFANA_SECRETS).
SECRET_FILES = {
    "database_password": "database-password",
    "admin_password": "admin-password",
    "secret_key": "secret-key",
    "client_secret": "oauth-client-secret",
}
# Only the operators' group (the realm's administrators) may log in, as Editors: dashboards and
# Explore over the provisioned Prometheus. Not Admin: an Admin's service account tokens would pass
# nginx without Keycloak and outlive offboarding, and an Admin's data sources would make this host
# fetch any address it reaches; what an Admin would change is provisioned as code.
ROLE_ATTRIBUTE_PATH = f"contains({facts.KEYCLOAK_GROUPS_CLAIM}[*], '{facts.KEYCLOAK_ADMIN_GROUP}') && 'Editor'"
_DASHBOARD_NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,95}\.json")
_SECRET_RE = re.compile(r"[A-Za-z0-9._~+/=-]{16,256}")


@lru_cache(maxsize=1)
def _env() -> jinja2.Environment:
    return templating.environment("grafana")


def _render(name: str, **context: object) -> str:
    return _env().get_template(name).render(**context)


def grafana_host(plan: Plan) -> Host | None:
    """The host with role grafana (at most one, and it has role monitoring: nina.config)."""
    return next((h for h in plan.hosts if "grafana" in h.roles), None)


def _host(plan: Plan) -> Host:
    host = grafana_host(plan)
    if host is None:
        raise ValueError("no host has the grafana role; add 'grafana' to the monitoring host's roles in nina:hosts")
    return host


def public(plan: Plan) -> bool:
    """Does nginx serve Grafana (nina:researcher_access with a keycloak host: proxy.sites)? Then
    it listens on its fixed IP for the proxy and logs people in through Keycloak."""
    return any(site.service == SERVICE for site in proxy.sites(plan))


def certificate(plan: Plan) -> Certificate:
    """The local-CA server certificate of Grafana's HTTPS (nina.plan.host_certificate: the host's
    names, localhost for an operator's SSH tunnel, its fixed IP and 127.0.0.1)."""
    return host_certificate("grafana", plan.cfg, _host(plan))


def _secret_ref(key: str) -> str:
    return "$__file{" + posixpath.join(facts.GRAFANA_SECRETS, SECRET_FILES[key]) + "}"


def settings(plan: Plan, db_host: str) -> dict[str, dict[str, str]]:
    """grafana.ini as data: section -> option -> value, in the order written."""
    host = _host(plan)
    if not isinstance(db_host, str) or not re.fullmatch(r"[A-Za-z0-9.-]{1,253}", db_host):
        raise ValueError(f"database host {db_host!r} is not a host name or address")
    spec = keycloak.database_spec(facts.SERVICE_USERS["grafana"])
    is_public = public(plan)
    access = plan.cfg.researcher_access
    if is_public:
        assert access is not None
        root_url, domain, listen = access.public_url(SERVICE) + "/", access.public_name(SERVICE), host.fixed_ip
    else:
        root_url, domain, listen = f"https://localhost:{facts.GRAFANA_PORT}/", "localhost", facts.LOOPBACK
    ini: dict[str, dict[str, str]] = {
        "paths": {
            "data": facts.GRAFANA_DATA,
            "logs": facts.GRAFANA_LOGS,
            "plugins": PLUGINS,
            "provisioning": facts.GRAFANA_PROVISIONING,
        },
        "server": {
            "protocol": "https",
            "http_addr": listen,
            "http_port": str(facts.GRAFANA_PORT),
            "domain": domain,
            "root_url": root_url,
            "enforce_domain": "false",
            "cert_file": posixpath.join(facts.GRAFANA_CERTS, facts.SERVER_CERT_FILE),
            "cert_key": posixpath.join(facts.GRAFANA_CERTS, facts.SERVER_KEY_FILE),
            "enable_gzip": "true",
        },
        "database": {
            "type": "postgres",
            "host": f"{db_host}:{facts.POSTGRES_PORT}",
            "name": spec.database,
            "user": spec.role,
            "password": _secret_ref("database_password"),
            "ssl_mode": "require",
        },
        "security": {
            "admin_user": facts.GRAFANA_ADMIN_USER,
            "admin_password": _secret_ref("admin_password"),
            "secret_key": _secret_ref("secret_key"),
            "cookie_secure": "true",
            "cookie_samesite": "lax",
            "disable_gravatar": "true",
            "allow_embedding": "false",
            "content_security_policy": "true",
        },
        "analytics": {
            "reporting_enabled": "false",
            "check_for_updates": "false",
            "check_for_plugin_updates": "false",
            "feedback_links_enabled": "false",
        },
        "users": {"allow_sign_up": "false", "allow_org_create": "false", "auto_assign_org": "true", "auto_assign_org_role": "Viewer"},
        "auth.anonymous": {"enabled": "false"},
        # The dashboards show every tenancy and hospital: none is shared with anyone not logged in,
        # neither as a public ("shared externally") dashboard nor as a snapshot, whose key alone reads it.
        "snapshots": {"enabled": "false", "external_enabled": "false"},
        "public_dashboards": {"enabled": "false"},
        # nina alerts through Prometheus and Alertmanager; Grafana's alerting would let Editors add
        # contact points whose webhooks this host POSTs to any address it reaches.
        "unified_alerting": {"enabled": "false"},
        "news": {"news_feed_enabled": "false"},
        # Its own /metrics would be served without a login (no basic_auth_username); nothing scrapes it.
        "metrics": {"enabled": "false"},
        "plugins": {"plugin_admin_enabled": "false"},
    }
    if is_public:
        assert access is not None
        realm = f"/realms/{plan.cfg.keycloak.realm}/protocol/openid-connect"
        internal = f"https://{keycloak.keycloak_host(plan).fixed_ip}:{facts.KEYCLOAK_PORT}{realm}"
        logout = f"{access.public_url('keycloak')}{realm}/logout?" + urllib.parse.urlencode(
            {"client_id": "grafana", "post_logout_redirect_uri": root_url}
        )
        ini["auth"] = {
            "disable_login_form": "true",
            "oauth_allow_insecure_email_lookup": "false",
            "signout_redirect_url": logout,
            "login_maximum_lifetime_duration": SESSION_LIFETIME,
            "login_maximum_inactive_lifetime_duration": SESSION_IDLE,
        }
        # The admin's password would be a public login otherwise: it is for the host (grafana cli) only.
        ini["auth.basic"] = {"enabled": "false"}
        ini["auth.generic_oauth"] = {
            "enabled": "true",
            "name": "NINA FL (Keycloak)",
            "allow_sign_up": "true",
            "auto_login": "false",
            "client_id": "grafana",
            "client_secret": _secret_ref("client_secret"),
            "scopes": "openid email profile",
            "use_pkce": "true",
            "use_refresh_token": "true",
            # The browser goes to the public name; Grafana itself to Keycloak's fixed IP (the port
            # table lets the monitoring zone reach 8443), verified against the local CA.
            "auth_url": f"{access.public_url('keycloak')}{realm}/auth",
            "token_url": f"{internal}/token",
            "api_url": f"{internal}/userinfo",
            "tls_client_ca": CA_FILE,
            "tls_skip_verify_insecure": "false",
            "login_attribute_path": "preferred_username",
            "email_attribute_path": "email",
            "name_attribute_path": "name",
            "groups_attribute_path": facts.KEYCLOAK_GROUPS_CLAIM,
            "role_attribute_path": ROLE_ATTRIBUTE_PATH,
            # No role from the path (not an operator): no login at all.
            "role_attribute_strict": "true",
            "allow_assign_grafana_admin": "false",
            "skip_org_role_sync": "false",
        }
    else:
        ini["auth"] = {"disable_login_form": "false"}
        ini["auth.generic_oauth"] = {"enabled": "false"}
    return ini


def grafana_ini(plan: Plan, db_host: str) -> str:
    """facts.GRAFANA_INI: `settings` written by configparser (no interpolation: `$__file{}`)."""
    parser = configparser.RawConfigParser()
    for section, options in settings(plan, db_host).items():
        parser[section] = options
    out = io.StringIO()
    out.write("; nina-fl: rendered by nina.grafana; changes here are overwritten by the next delivery.\n")
    parser.write(out)
    return out.getvalue().rstrip("\n") + "\n"


# --- provisioning -------------------------------------------------------------------------------


def _yaml(doc: Any) -> str:
    return "# nina-fl: rendered by nina.grafana.\n" + yaml.safe_dump(doc, sort_keys=False, default_flow_style=False, width=1000)


def datasources() -> dict[str, Any]:
    """The datasource provisioning document: Prometheus on this host's loopback, the default, not editable."""
    return {
        "apiVersion": 1,
        "prune": True,
        "datasources": [
            {
                "name": "Prometheus",
                "type": "prometheus",
                "uid": facts.GRAFANA_DATASOURCE_UID,
                "access": "proxy",
                "url": PROMETHEUS_URL,
                "isDefault": True,
                "editable": False,
                "jsonData": {"httpMethod": "POST", "timeInterval": f"{facts.SCRAPE_INTERVAL_SECONDS}s"},
            }
        ],
    }


def providers() -> dict[str, Any]:
    """The dashboard provider: the JSON files of facts.GRAFANA_DASHBOARDS_DIR in one folder,
    never changed or deleted from the UI."""
    return {
        "apiVersion": 1,
        "providers": [
            {
                "name": facts.GRAFANA_DASHBOARD_PROVIDER,
                "orgId": 1,
                "folder": facts.GRAFANA_DASHBOARD_FOLDER,
                "type": "file",
                "disableDeletion": True,
                "allowUiUpdates": False,
                "updateIntervalSeconds": DASHBOARD_UPDATE_SECONDS,
                "options": {"path": facts.GRAFANA_DASHBOARDS_DIR, "foldersFromFilesStructure": False},
            }
        ],
    }


def datasources_yaml() -> str:
    return _yaml(datasources())


def providers_yaml() -> str:
    return _yaml(providers())


def checked_dashboards(dashboards: Mapping[str, str]) -> list[tuple[str, str]]:
    """(file name, JSON text) sorted by name: each name a plain `<name>.json`, each text a JSON
    object (a dashboard). Anything else is refused with the name."""
    found = []
    for name in sorted(dashboards):
        text = dashboards[name]
        if not isinstance(name, str) or not _DASHBOARD_NAME_RE.fullmatch(name):
            raise ValueError(f"dashboard file name {name!r} is refused: use lowercase letters, digits, '.', '_', '-' ending in .json")
        try:
            doc = json.loads(text) if isinstance(text, str) else None
        except ValueError as exc:
            raise ValueError(f"dashboard {name} is not JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise ValueError(f"dashboard {name} is not a JSON object (a dashboard)")
        found.append((name, text if text.endswith("\n") else text + "\n"))
    return found


# --- units --------------------------------------------------------------------------------------


def install_unit(cfg: config.StackConfig) -> str:
    """facts.GRAFANA_INSTALL_UNIT: nina-grafana-install with nina:grafana.version and sha256."""
    if cfg.grafana.sha256 is None:
        raise ValueError(f"nina:grafana.sha256 is not set; {config.grafana_sha256_fix(cfg.grafana.version)}")
    return _render("install.service.j2", version=cfg.grafana.version, sha256=cfg.grafana.sha256)


def grafana_unit() -> str:
    """facts.GRAFANA_UNIT: `grafana server` as the grafana user, after and requiring the install
    and the database step, hardened; writes only its data and log directories."""
    return _render("grafana-server.service.j2", user=facts.SERVICE_USERS["grafana"], home=HOME)


# --- the delivery (`<host>-grafana`) -----------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class GrafanaSecrets:
    """What the `<host>-grafana` delivery carries that must never be in user-data."""

    db_password: str  # the grafana role's (Trove's user): Grafana's and the database step's
    admin_password: str  # Grafana's built-in admin (facts.GRAFANA_ADMIN_USER)
    secret_key: str  # Grafana's key for the secrets it stores in its database
    client_secret: str | None  # its OIDC client's, the value the realm holds (when public)
    ca_pem: str  # the local CA: Keycloak's token endpoint is verified with it
    cert_pem: str  # the local-CA server certificate of facts.GRAFANA_PORT
    key_pem: str


def _secret(value: str | None, what: str) -> str:
    if not isinstance(value, str) or not _SECRET_RE.fullmatch(value):
        raise ValueError(f"{what} must be 16-256 characters of letters, digits and ._~+/=- (pulumi-random with special=False)")
    return value


def files(plan: Plan, db_host: str, secrets: GrafanaSecrets, dashboards: Mapping[str, str]) -> list[render.DeliveredFile]:
    """Everything the `<host>-grafana` delivery installs."""
    spec = keycloak.database_spec(facts.SERVICE_USERS["grafana"])
    root, group = facts.ROOT_USER, facts.SERVICE_USERS["grafana"]
    unit_dir = facts.SYSTEMD_SYSTEM_DIR
    is_public = public(plan)
    if is_public and secrets.client_secret is None:
        raise ValueError("Grafana is served through the proxy and logs in through Keycloak: pass its OIDC client's secret")
    if not is_public and secrets.client_secret is not None:
        raise ValueError("Grafana is not served through the proxy (no nina:researcher_access or no keycloak host): it has no OIDC client")
    values = {
        "database_password": _secret(secrets.db_password, "the database password"),
        "admin_password": _secret(secrets.admin_password, "the admin password"),
        "secret_key": _secret(secrets.secret_key, "the secret key"),
    }
    if secrets.client_secret is not None:
        values["client_secret"] = _secret(secrets.client_secret, "the OIDC client secret")
    return [
        render.DeliveredFile(facts.GRAFANA_INI, grafana_ini(plan, db_host), 0o640, root, group),
        *(
            render.DeliveredFile(posixpath.join(facts.GRAFANA_SECRETS, SECRET_FILES[k]), v, 0o640, root, group)
            for k, v in sorted(values.items())
        ),
        render.DeliveredFile(CA_FILE, render._text(secrets.ca_pem, "CA certificate", "BEGIN CERTIFICATE"), 0o644),
        render.DeliveredFile(
            posixpath.join(facts.GRAFANA_CERTS, facts.SERVER_CERT_FILE),
            render._text(secrets.cert_pem, "server certificate", "BEGIN CERTIFICATE"),
            0o644,
        ),
        render.DeliveredFile(
            posixpath.join(facts.GRAFANA_CERTS, facts.SERVER_KEY_FILE),
            render._text(secrets.key_pem, "server key", "PRIVATE KEY"),
            0o640,
            root,
            group,
        ),
        render.DeliveredFile(posixpath.join(facts.GRAFANA_DATASOURCES_DIR, "nina.yaml"), datasources_yaml(), 0o644),
        render.DeliveredFile(posixpath.join(facts.GRAFANA_PROVIDERS_DIR, "nina.yaml"), providers_yaml(), 0o644),
        *(render.DeliveredFile(posixpath.join(facts.GRAFANA_DASHBOARDS_DIR, n), t, 0o644) for n, t in checked_dashboards(dashboards)),
        render.DeliveredFile(facts.GRAFANA_DB_SQL, keycloak.database_sql(spec), 0o644),
        render.DeliveredFile(facts.GRAFANA_DB_ENV, keycloak.database_env(db_host, spec, secrets.db_password), 0o600),
        render.DeliveredFile(facts.GRAFANA_INSTALL_BIN, render.launcher("grafana_install"), 0o755),
        render.DeliveredFile(f"{unit_dir}/{facts.GRAFANA_INSTALL_UNIT}", install_unit(plan.cfg), 0o644),
        render.DeliveredFile(
            f"{unit_dir}/{facts.GRAFANA_DB_UNIT}",
            keycloak.database_unit(spec, sql_file=facts.GRAFANA_DB_SQL, env_file=facts.GRAFANA_DB_ENV),
            0o644,
        ),
        render.DeliveredFile(f"{unit_dir}/{facts.GRAFANA_UNIT}", grafana_unit(), 0o644),
        *render.db_backup_files(service.DATABASE, plan.cfg.database.backup_keep),
    ]


def grafana_delivery(plan: Plan, db_host: str, secrets: GrafanaSecrets, dashboards: Mapping[str, str]) -> str:
    """The `<host>-grafana` payload: grafana.ini, its secrets' files, the certificates, the
    provisioning, the dashboards, the database step, the install program and the units, and the
    database's daily backup. Restarts services.grafana.UNITS on a change, except for the
    dashboards' directory, which is hot and pruned: Grafana rereads it itself
    (DASHBOARD_UPDATE_SECONDS), so a dashboard change restarts nothing, and a dashboard left out
    is deleted. The provisioning directories are pruned too."""
    return render.delivery_payload(
        files(plan, db_host, secrets, dashboards),
        list(service.UNITS),
        prune=[facts.GRAFANA_DATASOURCES_DIR, facts.GRAFANA_PROVIDERS_DIR, facts.GRAFANA_DASHBOARDS_DIR],
        hot={facts.GRAFANA_DASHBOARDS_DIR: []},
    )
