"""Grafana on the monitoring host (nina.grafana, nina.services.grafana): grafana.ini parsed back
field by field, the provisioning documents, the delivery (modes, owners, secrets, the hot
dashboards' directory, determinism), the config's refusals, `systemd-analyze verify` of the units,
the delivered database step run twice against a real PostgreSQL (tests/test_keycloak.py's `pg`,
Trove-like), the grafana site through `nginx -t`, and the user-data with Grafana within budget and
valid for `cloud-init schema`. Grafana itself is not run: it is not in Debian's or Ubuntu's archive
(README, "Operations: Grafana")."""

from __future__ import annotations

import base64
import configparser
import copy
import json
import os
import shutil
import subprocess
import sys
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml
from systemd import needs_systemd_analyze, verify
from test_keycloak import ADMIN, CLOUD_INIT, PG_BIN, Postgres, needs_postgres, pg  # noqa: F401
from test_proxy import NGINX, _ca, _leaf, _write_cert, nginx_t, place

from nina import config, facts, grafana, keycloak, localpki, monitoring, proxy, render, services
from nina.plan import Plan, build_plan

DOMAIN = "fl.example.edu.au"
SHA = "ab" * 32
DB_HOST = "10.100.0.5"
HOSTS = [
    {"name": "gateway", "roles": ["bastion", "proxy"]},
    {"name": "idp", "roles": ["keycloak"]},
    {"name": "mon", "roles": ["monitoring", "grafana"]},
]


def raw_config(hosts: list[dict] | None = None, access: bool = True, **grafana_cfg: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "environment": "test",
        "network": {"server_cidr": "10.100.0.0/24", "admin_cidrs": ["203.0.113.0/24"]},
        "hosts": copy.deepcopy(hosts or HOSTS),
        "organisations": [{"slug": "org-a", "name": "A", "placement": "cloud", "partition_id": 0, "cidr": "10.101.0.0/24"}],
        "keycloak": {"sha256": "cd" * 32},
        "grafana": {"sha256": SHA, **grafana_cfg},
    }
    if access:
        raw["researcher_access"] = {"public_domain": DOMAIN, "acme_email": "fl-ops@example.edu.au"}
    return raw


def make_plan(hosts: list[dict] | None = None, access: bool = True, **grafana_cfg: Any) -> Plan:
    return build_plan(config.load_config(raw_config(hosts, access, **grafana_cfg)))


@pytest.fixture(scope="module")
def public_plan() -> Plan:
    return make_plan()


@pytest.fixture(scope="module")
def private_plan() -> Plan:
    return make_plan(access=False)


def parse_ini(text: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser()
    parser.read_string(text)
    return parser


_PKI: dict[str, Any] = {}


def pki(plan: Plan) -> dict[str, str]:
    """The local CA and Grafana's certificate as the components make it (certificate(plan))."""
    if "ca" not in _PKI:
        ca_key = localpki.generate_key().private_key_pem
        _PKI["ca"] = (ca_key, localpki.self_signed_ca(ca_key, facts.CA_SUBJECT, 24))
    spec = grafana.certificate(plan)
    key = localpki.generate_key().private_key_pem
    csr = localpki.cert_request(key, {"common_name": spec.common_name}, spec.dns_names, spec.ip_addresses)
    cert = localpki.sign_certificate(csr, _PKI["ca"][0], _PKI["ca"][1], 24, facts.SERVER_CERT_USES)
    return {"ca": _PKI["ca"][1], "cert": cert, "key": key}


def secrets(plan: Plan, client: str | None = "C" * 48) -> grafana.GrafanaSecrets:
    p = pki(plan)
    return grafana.GrafanaSecrets(
        db_password="D" * 32,
        admin_password="A" * 32,
        secret_key="K" * 48,
        client_secret=client if grafana.public(plan) else None,
        ca_pem=p["ca"],
        cert_pem=p["cert"],
        key_pem=p["key"],
    )


DASHBOARDS = {"federation.json": json.dumps({"uid": "nina-federation", "title": "Federation", "panels": []})}


def payload(plan: Plan, dashboards: dict[str, str] | None = None, sec: grafana.GrafanaSecrets | None = None) -> dict[str, Any]:
    return json.loads(grafana.grafana_delivery(plan, DB_HOST, sec or secrets(plan), DASHBOARDS if dashboards is None else dashboards))


# --- grafana.ini -------------------------------------------------------------------------------


def test_grafana_ini_behind_the_proxy_field_by_field(public_plan):
    ini = parse_ini(grafana.grafana_ini(public_plan, DB_HOST))
    mon = next(h for h in public_plan.hosts if h.name == "mon")
    idp = next(h for h in public_plan.hosts if h.name == "idp")
    server = dict(ini["server"])
    assert server == {
        "protocol": "https",
        "http_addr": mon.fixed_ip,
        "http_port": str(facts.GRAFANA_PORT),
        "domain": f"grafana.{DOMAIN}",
        "root_url": f"https://grafana.{DOMAIN}/",
        "enforce_domain": "false",
        "cert_file": f"{facts.GRAFANA_CERTS}/{facts.SERVER_CERT_FILE}",
        "cert_key": f"{facts.GRAFANA_CERTS}/{facts.SERVER_KEY_FILE}",
        "enable_gzip": "true",
    }
    assert dict(ini["database"]) == {
        "type": "postgres",
        "host": f"{DB_HOST}:{facts.POSTGRES_PORT}",
        "name": "grafanadb_server",
        "user": "grafana",
        "password": "$__file{" + f"{facts.GRAFANA_SECRETS}/database-password" + "}",
        "ssl_mode": "require",
    }
    sec = ini["security"]
    assert sec["admin_password"] == "$__file{" + f"{facts.GRAFANA_SECRETS}/admin-password" + "}"
    assert sec["secret_key"] == "$__file{" + f"{facts.GRAFANA_SECRETS}/secret-key" + "}"
    assert (sec["cookie_secure"], sec["disable_gravatar"]) == ("true", "true")
    assert all(ini["analytics"][k] == "false" for k in ("reporting_enabled", "check_for_updates", "check_for_plugin_updates"))
    assert (ini["users"]["allow_sign_up"], ini["auth.anonymous"]["enabled"]) == ("false", "false")
    # Only through Keycloak: no login form, no basic auth with the admin's password.
    assert (ini["auth"]["disable_login_form"], ini["auth.basic"]["enabled"]) == ("true", "false")
    oauth = ini["auth.generic_oauth"]
    realm = f"/realms/{facts.KEYCLOAK_REALM}/protocol/openid-connect"
    assert oauth["enabled"] == "true" and oauth["client_id"] == "grafana"
    assert oauth["client_secret"] == "$__file{" + f"{facts.GRAFANA_SECRETS}/oauth-client-secret" + "}"
    assert oauth["auth_url"] == f"https://auth.{DOMAIN}{realm}/auth"  # the browser: the public name
    assert oauth["token_url"] == f"https://{idp.fixed_ip}:{facts.KEYCLOAK_PORT}{realm}/token"  # Grafana: the fixed IP
    assert oauth["api_url"] == f"https://{idp.fixed_ip}:{facts.KEYCLOAK_PORT}{realm}/userinfo"
    assert (oauth["tls_client_ca"], oauth["tls_skip_verify_insecure"]) == (f"{facts.GRAFANA_CERTS}/{facts.CA_CERT_FILE}", "false")
    # Operators (the realm's admin group) are Editors; anyone else gets no role and is refused.
    assert oauth["role_attribute_path"] == f"contains(groups[*], '{facts.KEYCLOAK_ADMIN_GROUP}') && 'Editor'"
    assert (oauth["role_attribute_strict"], oauth["allow_assign_grafana_admin"], oauth["use_pkce"]) == ("true", "false", "true")
    assert ini["auth"]["signout_redirect_url"].startswith(
        f"https://auth.{DOMAIN}{realm}/logout?client_id=grafana&post_logout_redirect_uri="
    )
    # The redirect URI Keycloak allows is the one Grafana sends: root_url + login/generic_oauth.
    realm_doc = keycloak.realm(public_plan.cfg, ["main"], {"grafana": "C" * 48})
    (client,) = realm_doc["clients"]
    assert client["redirectUris"] == [server["root_url"].rstrip("/") + facts.KEYCLOAK_CLIENTS["grafana"][1]]
    # ... and the logout returns to the address the client allows.
    logout = urllib.parse.urlparse(ini["auth"]["signout_redirect_url"])
    assert urllib.parse.parse_qs(logout.query)["post_logout_redirect_uri"] == [client["attributes"]["post.logout.redirect.uris"]]


def test_grafana_ini_without_the_proxy_listens_on_loopback_with_basic_login(private_plan):
    ini = parse_ini(grafana.grafana_ini(private_plan, DB_HOST))
    assert (ini["server"]["http_addr"], ini["server"]["root_url"]) == (facts.LOOPBACK, f"https://localhost:{facts.GRAFANA_PORT}/")
    assert ini["auth.generic_oauth"]["enabled"] == "false" and ini["auth"]["disable_login_form"] == "false"
    assert not ini.has_section("auth.basic") or ini["auth.basic"]["enabled"] != "false"
    assert proxy.sites(private_plan) == ()
    # Nor with researcher access but no Keycloak to log in through: not public.
    hosts = [{"name": "gateway", "roles": ["bastion", "proxy"]}, {"name": "mon", "roles": ["monitoring", "grafana"]}]
    no_idp = make_plan(hosts)
    assert not grafana.public(no_idp) and [s.service for s in proxy.sites(no_idp)] == []
    assert parse_ini(grafana.grafana_ini(no_idp, DB_HOST))["server"]["http_addr"] == facts.LOOPBACK


def test_grafanas_metrics_endpoint_is_off_and_never_public(public_plan, private_plan):
    """Attack: GET https://grafana.<domain>/metrics. Grafana serves its internal metrics there
    without a login by default ([metrics] enabled = true, no basic_auth_username): user and
    dashboard counts, versions, request paths. Nothing scrapes them (no Grafana target in the
    Prometheus config), so they are off, and nginx answers 404 for /metrics anyway."""
    for plan in (public_plan, private_plan):
        assert parse_ini(grafana.grafana_ini(plan, DB_HOST))["metrics"]["enabled"] == "false"
    (site,) = [s for s in proxy.sites(public_plan) if s.service == "grafana"]
    assert "/metrics" in site.blocked
    prom = monitoring.prometheus_config(public_plan)
    assert f":{facts.GRAFANA_PORT}" not in json.dumps(prom) and "grafana" not in [j["job_name"] for j in prom["scrape_configs"]]


def test_no_dashboard_can_be_shared_with_people_who_have_not_logged_in(public_plan, private_plan):
    """Careless operator: "Share externally" (public dashboards, on by default since Grafana 11)
    makes a dashboard's data (every tenancy and hospital) readable by anyone with the link, and a
    local snapshot's key reads its data without a login (GET /api/snapshots/:key) too; the
    dashboards are for operators only, so both are off, not just the external snapshot server."""
    for plan in (public_plan, private_plan):
        ini = parse_ini(grafana.grafana_ini(plan, DB_HOST))
        assert ini["public_dashboards"]["enabled"] == "false"
        assert (ini["snapshots"]["enabled"], ini["snapshots"]["external_enabled"]) == ("false", "false")


def test_an_operator_taken_out_of_the_group_loses_grafana_within_a_day(public_plan):
    """Careless offboarding: Grafana maps the realm's groups to a role at login only, and its
    session cookie lasts login_maximum_lifetime_duration (30 days by default, renewed without
    Keycloak), so someone taken out of the operators' group kept their role, over every tenancy's
    dashboards, for up to a month. A session now ends within a day; the next login goes through
    Keycloak and role_attribute_strict again."""
    auth = parse_ini(grafana.grafana_ini(public_plan, DB_HOST))["auth"]
    assert auth["login_maximum_lifetime_duration"] == grafana.SESSION_LIFETIME == "1d"
    assert auth["login_maximum_inactive_lifetime_duration"] == grafana.SESSION_IDLE == "8h"


def test_a_keycloak_login_is_never_a_grafana_admin(public_plan):
    """Attack (a stolen operator's Keycloak login, or an operator without SSH): an org Admin can
    mint service account tokens, which pass nginx without Keycloak, survive offboarding and the
    one-day session; and add data sources, which make the monitoring host fetch any address it
    reaches (the Trove instance, other hosts' ports, the cloud's metadata service). Everything an
    Admin would change is provisioned as code, so operators get Editor: dashboards and Explore
    over the one provisioned Prometheus, no data sources, users or tokens."""
    oauth = parse_ini(grafana.grafana_ini(public_plan, DB_HOST))["auth.generic_oauth"]
    assert oauth["role_attribute_path"].endswith("&& 'Editor'") and "Admin" not in oauth["role_attribute_path"]
    assert (oauth["role_attribute_strict"], oauth["allow_assign_grafana_admin"]) == ("true", "false")


def test_grafana_alerting_is_off_so_an_editor_sends_nothing_anywhere(public_plan, private_plan):
    """Attack (an operator's Keycloak login, Editor): Grafana's own alerting lets Editors add
    contact points, whose webhooks the monitoring host then POSTs to any address it reaches. nina
    alerts through Prometheus and Alertmanager (nina.monitoring), so Grafana's is off; [alerting]
    (legacy, which Grafana 11 refuses to start with) is left unset."""
    for plan in (public_plan, private_plan):
        ini = parse_ini(grafana.grafana_ini(plan, DB_HOST))
        assert ini["unified_alerting"]["enabled"] == "false" and not ini.has_section("alerting")


def test_grafana_ini_is_deterministic_and_refuses_a_hostile_database_host(public_plan):
    assert grafana.grafana_ini(public_plan, DB_HOST) == grafana.grafana_ini(make_plan(), DB_HOST)
    for bad in ("db\n[security]\nadmin_password = x", "db host", "", "a;b"):
        with pytest.raises(ValueError, match="database host"):
            grafana.grafana_ini(public_plan, bad)


def test_certificate_names_the_host_loopback_and_localhost(public_plan):
    cert = grafana.certificate(public_plan)
    mon = next(h for h in public_plan.hosts if h.name == "mon")
    assert (cert.common_name, cert.dns_names, cert.ip_addresses, cert.server) == (
        "mon",
        ("mon", "localhost"),
        (mon.fixed_ip, facts.LOOPBACK),
        True,
    )
    # nginx's proxy_ssl_name is the host's plan name: the certificate names it.
    (site,) = [s for s in proxy.sites(public_plan) if s.service == "grafana"]
    assert site.upstream_host in cert.dns_names and site.upstream_port == facts.GRAFANA_PORT and site.websocket


# --- provisioning ------------------------------------------------------------------------------


def test_the_datasource_is_the_loopback_prometheus_with_the_shared_uid():
    doc = yaml.safe_load(grafana.datasources_yaml())
    (ds,) = doc["datasources"]
    assert doc["apiVersion"] == 1 and doc["prune"] is True
    assert ds["uid"] == facts.GRAFANA_DATASOURCE_UID == "nina-prometheus"
    assert (ds["type"], ds["url"], ds["access"], ds["isDefault"], ds["editable"]) == (
        "prometheus",
        f"http://{facts.LOOPBACK}:{facts.PROMETHEUS_PORT}",
        "proxy",
        True,
        False,
    )


def test_the_dashboard_provider_reads_root_files_and_allows_no_ui_changes():
    (p,) = yaml.safe_load(grafana.providers_yaml())["providers"]
    assert (p["type"], p["allowUiUpdates"], p["disableDeletion"], p["folder"]) == ("file", False, True, facts.GRAFANA_DASHBOARD_FOLDER)
    assert p["options"]["path"] == facts.GRAFANA_DASHBOARDS_DIR and p["updateIntervalSeconds"] == grafana.DASHBOARD_UPDATE_SECONDS


# --- the delivery ------------------------------------------------------------------------------


def test_delivery_files_modes_owners_and_units(public_plan):
    doc = payload(public_plan)
    files = {f["path"]: f for f in doc["files"]}
    group = facts.SERVICE_USERS["grafana"]
    for name, value in (
        ("database-password", "D" * 32),
        ("admin-password", "A" * 32),
        ("secret-key", "K" * 48),
        ("oauth-client-secret", "C" * 48),
    ):
        f = files[f"{facts.GRAFANA_SECRETS}/{name}"]
        assert (f["content"], f["mode"], f["owner"], f["group"]) == (value, 0o640, "root", group), name
    ini = files[facts.GRAFANA_INI]
    assert (ini["mode"], ini["owner"], ini["group"]) == (0o640, "root", group)
    assert "D" * 32 not in ini["content"] and "C" * 48 not in ini["content"]  # only $__file{} references
    key = files[f"{facts.GRAFANA_CERTS}/{facts.SERVER_KEY_FILE}"]
    assert (key["mode"], key["owner"], key["group"]) == (0o640, "root", group)
    env = files[facts.GRAFANA_DB_ENV]
    assert (
        (env["mode"], env["owner"]) == (0o600, "root")
        and "PGUSER=grafana\n" in env["content"]
        and "PGDATABASE=grafanadb_server\n" in env["content"]
    )
    assert files[facts.GRAFANA_DB_SQL]["content"] == keycloak.database_sql(keycloak.database_spec("grafana"))
    assert files[f"{facts.GRAFANA_DASHBOARDS_DIR}/federation.json"]["mode"] == 0o644
    assert doc["restart"] == list(services.grafana.UNITS)
    assert doc["restart"][:3] == [facts.GRAFANA_INSTALL_UNIT, facts.GRAFANA_DB_UNIT, facts.GRAFANA_UNIT]
    # Dashboards: hot (Grafana rereads them, nothing restarts) and pruned (one left out is deleted).
    assert doc["hot"] == {facts.GRAFANA_DASHBOARDS_DIR: []}
    assert set(doc["prune"]) == {facts.GRAFANA_DASHBOARDS_DIR, facts.GRAFANA_DATASOURCES_DIR, facts.GRAFANA_PROVIDERS_DIR}
    # The database's backup comes along, for grafanadb_server, with the grafana role's env file.
    service, timer = render.db_backup_units("grafanadb_server")
    assert (
        timer in doc["restart"]
        and f"ConditionPathExists={facts.GRAFANA_DB_ENV}\n" in files[f"{facts.SYSTEMD_SYSTEM_DIR}/{service}"]["content"]
    )
    assert facts.DATABASE_CLIENTS["grafanadb_server"] == (facts.GRAFANA_DB_ENV, facts.GRAFANA_UNIT)
    unit = files[f"{facts.SYSTEMD_SYSTEM_DIR}/{facts.GRAFANA_INSTALL_UNIT}"]["content"]
    assert f"--version {facts.GRAFANA_VERSION} --sha256 {SHA}" in unit


def test_a_dashboard_change_changes_only_the_dashboards_directory(public_plan):
    sec = secrets(public_plan)
    before = {f["path"]: f for f in payload(public_plan, sec=sec)["files"]}
    other = {"federation.json": json.dumps({"uid": "nina-federation", "title": "Federation v2"}), "hosts.json": "{}"}
    after = {f["path"]: f for f in payload(public_plan, other, sec=sec)["files"]}
    changed = {p for p in set(before) | set(after) if before.get(p) != after.get(p)}
    assert changed == {f"{facts.GRAFANA_DASHBOARDS_DIR}/federation.json", f"{facts.GRAFANA_DASHBOARDS_DIR}/hosts.json"}
    # Deterministic: the same inputs in another order give the same bytes.
    assert grafana.grafana_delivery(public_plan, DB_HOST, sec, dict(reversed(list(other.items())))) == grafana.grafana_delivery(
        public_plan, DB_HOST, sec, other
    )


@pytest.mark.parametrize(
    "dashboards, words",
    [
        ({"../evil.json": "{}"}, "file name"),
        ({"Federation.JSON": "{}"}, "file name"),
        ({"a/b.json": "{}"}, "file name"),
        ({"x.yaml": "{}"}, "file name"),
        ({"x.json": "not json"}, "not JSON"),
        ({"x.json": "[1, 2]"}, "not a JSON object"),
    ],
)
def test_bad_dashboards_are_refused_with_their_name(public_plan, dashboards, words):
    with pytest.raises(ValueError, match=words):
        payload(public_plan, dashboards)


def test_secrets_are_checked(public_plan, private_plan):
    good = secrets(public_plan)
    for field, bad in (("db_password", "short"), ("admin_password", "a b" * 10), ("secret_key", "x\ny" * 10), ("client_secret", "'" * 40)):
        with pytest.raises(ValueError):
            payload(public_plan, sec=_replace(good, **{field: bad}))
    with pytest.raises(ValueError, match="OIDC client's secret"):
        payload(public_plan, sec=_replace(good, client_secret=None))
    with pytest.raises(ValueError, match="no OIDC client"):
        payload(private_plan, sec=_replace(secrets(private_plan), client_secret="C" * 48))
    with pytest.raises(ValueError, match="server key"):
        payload(public_plan, sec=_replace(good, key_pem="not a key"))
    files = {f["path"] for f in payload(private_plan)["files"]}
    assert f"{facts.GRAFANA_SECRETS}/oauth-client-secret" not in files


def _replace(s: grafana.GrafanaSecrets, **changes: Any) -> grafana.GrafanaSecrets:
    import dataclasses

    return dataclasses.replace(s, **changes)


# --- config ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, key, words",
    [
        (
            {"grafana": {}},
            "nina:grafana.sha256",
            ("required with a grafana host", "curl -fsSL https://dl.grafana.com/oss/release/grafana_12.0.2_amd64.deb | sha256sum"),
        ),
        ({"grafana": {"sha256": SHA, "version": "latest"}}, "nina:grafana.version", ("pin an exact release 11.x.y or later",)),
        ({"grafana": {"sha256": SHA, "version": "10.4.3"}}, "nina:grafana.version", ("pin an exact release",)),
        ({"grafana": {"sha256": SHA, "version": "12.0.2; rm -rf /"}}, "nina:grafana.version", ("pin an exact release",)),
        ({"grafana": {"sha256": SHA, "version": 12}}, "nina:grafana.version", ()),
        # Careless: a leading zero names no release (dl.grafana.com has no grafana_012.0.2, and dpkg
        # would report 12.0.2, never equal to it).
        ({"grafana": {"sha256": SHA, "version": "012.0.2"}}, "nina:grafana.version", ("pin an exact release",)),
        ({"grafana": {"sha256": SHA, "version": "12.00.2"}}, "nina:grafana.version", ("pin an exact release",)),
        ({"grafana": {"sha256": "xyz"}}, "nina:grafana.sha256", ("not a SHA-256", "sha256sum")),
        ({"grafana": {"sha256": SHA, "url": "http://evil"}}, "nina:grafana.url", ()),
        ({"database": {"enabled": False}}, "nina:database.enabled", ("grafanadb_server",)),
        (
            {
                "hosts": [
                    {"name": "gateway", "roles": ["bastion", "proxy", "grafana"]},
                    {"name": "idp", "roles": ["keycloak"]},
                    {"name": "mon", "roles": ["monitoring"]},
                ]
            },
            "nina:hosts[0].roles",
            ("'grafana' must be on the host with the 'monitoring' role",),
        ),
    ],
)
def test_config_refusals_name_the_key_and_the_fix(change, key, words):
    raw = {**raw_config(), **change}
    with pytest.raises(config.ConfigError) as err:
        config.load_config(raw)
    problems = [p for p in err.value.problems if p[0] == key]
    assert problems, err.value.problems
    assert any(all(w in p[1] for w in words) for p in problems), problems


def test_grafana_may_share_the_monitoring_host_but_never_the_superlinks():
    cfg = config.load_config(raw_config())
    assert cfg.grafana.version == facts.GRAFANA_VERSION and cfg.grafana.sha256 == SHA
    assert config.load_config(raw_config(sha256=SHA.upper())).grafana.sha256 == SHA
    # The superlink role on the monitoring host is refused already (nina.config); grafana follows monitoring.
    hosts = [
        {"name": "gateway", "roles": ["bastion", "proxy"]},
        {"name": "idp", "roles": ["keycloak"]},
        {"name": "mon", "roles": ["monitoring", "grafana", "superlink"]},
    ]
    with pytest.raises(config.ConfigError, match="never share a VM with the SuperLink"):
        config.load_config(raw_config(hosts))


# --- plan: volumes and the Trove allow-list ------------------------------------------------------


def test_the_grafana_host_gets_the_backups_volume_and_reaches_the_database(public_plan):
    mon = next(h for h in public_plan.hosts if h.name == "mon")
    assert [v.name for v in mon.volumes] == [facts.MONITORING_VOLUME_NAME, facts.DB_BACKUP_VOLUME_NAME]
    assert any(mon.fixed_ip in str(c) or c == f"{mon.fixed_ip}/32" for c in public_plan.database_allowed_cidrs)
    # On one host with Keycloak: one backups volume serves both databases.
    shared = make_plan(
        [{"name": "gateway", "roles": ["bastion", "proxy"]}, {"name": "ops", "roles": ["keycloak", "monitoring", "grafana"]}]
    )
    (ops,) = [h for h in shared.hosts if h.name == "ops"]
    assert [v.name for v in ops.volumes].count(facts.DB_BACKUP_VOLUME_NAME) == 1


# --- real tools ---------------------------------------------------------------------------------


@needs_systemd_analyze
def test_units_pass_systemd_analyze_verify(public_plan, tmp_path):
    units = tmp_path / "units"
    units.mkdir()
    stand_in = tmp_path / "program"
    stand_in.write_text("#!/bin/sh\nexit 0\n")
    stand_in.chmod(0o755)
    files = {f["path"]: f["content"] for f in payload(public_plan)["files"]}
    names = []
    for path, text in files.items():
        if path.startswith(facts.SYSTEMD_SYSTEM_DIR + "/") and path.endswith((".service", ".timer")):
            name = path.rsplit("/", 1)[1]
            for program in (facts.GRAFANA_INSTALL_BIN, facts.DB_BACKUP_BIN, facts.PSQL, f"{grafana.HOME}/bin/grafana"):
                text = text.replace(program, str(stand_in))
            (units / name).write_text(text)
            names.append(name)
    assert {facts.GRAFANA_INSTALL_UNIT, facts.GRAFANA_DB_UNIT, facts.GRAFANA_UNIT} <= set(names)
    assert verify(units, names) == []
    # ... and it does report a broken unit.
    (units / facts.GRAFANA_UNIT).write_text((units / facts.GRAFANA_UNIT).read_text().replace("Type=simple", "Type=sometimes"))
    assert any("sometimes" in line for line in verify(units, [facts.GRAFANA_UNIT]))


KC_PASSWORD, GR_PASSWORD = "Kc0rolePassw0rdFromPulumiRandom7", "Gr0rolePassw0rdFromPulumiRandom7"


@pytest.fixture(scope="module")
def trove(pg: Postgres, tmp_path_factory) -> Postgres:  # noqa: F811 (the fixture imported above)
    """Both databases and roles as Trove makes them, Keycloak's step run once."""
    pg.trove_prepare(keycloak.database_spec("keycloak"), KC_PASSWORD)
    pg.trove_prepare(keycloak.database_spec("grafana"), GR_PASSWORD)
    assert pg.run_step(keycloak.database_spec("keycloak"), tmp_path_factory.mktemp("sql"), KC_PASSWORD).returncode == 0
    return pg


def _delivered(plan: Plan) -> dict[str, str]:
    sec = _replace(secrets(plan), db_password=GR_PASSWORD)
    return {f["path"]: f["content"] for f in payload(plan, sec=sec)["files"]}


@needs_postgres
def test_the_delivered_database_step_run_twice_leaves_the_same_catalog_and_cannot_touch_keycloaks(trove, public_plan, tmp_path):
    server = trove
    kc, gr = keycloak.database_spec("keycloak"), keycloak.database_spec("grafana")
    files = _delivered(public_plan)
    env = dict(line.split("=", 1) for line in files[facts.GRAFANA_DB_ENV].splitlines())
    assert (env["PGUSER"], env["PGDATABASE"], env["PGHOST"], env["PGPASSWORD"]) == ("grafana", "grafanadb_server", DB_HOST, GR_PASSWORD)
    catalogs = []
    for _ in range(2):
        step = server.run_step(gr, tmp_path, GR_PASSWORD, sql=files[facts.GRAFANA_DB_SQL])
        assert step.returncode == 0, step.stderr
        catalogs.append(server.catalog())
    assert catalogs[0] == catalogs[1]
    path = server.psql("-c", "SHOW search_path", user="grafana", db=gr.database, password=GR_PASSWORD, tcp=True)
    assert path.stdout.strip() == gr.schema
    # Grafana's role cannot reach into Keycloak's schema or make anything in its database (it may
    # connect: PostgreSQL grants CONNECT to PUBLIC, and Trove leaves that as it is).
    made = server.psql(
        "-c", "CREATE TABLE IF NOT EXISTS realm_probe (id int)", user="keycloak", db=kc.database, password=KC_PASSWORD, tcp=True
    )
    assert made.returncode == 0, made.stderr
    for sql, db in (
        ("CREATE TABLE keycloak.probe (id int)", kc.database),
        ("SELECT * FROM keycloak.realm_probe", kc.database),
        ("CREATE SCHEMA probe", kc.database),
        ("CREATE TABLE public.probe (id int)", gr.database),
    ):
        denied = server.psql("-c", sql, user="grafana", db=db, password=GR_PASSWORD, tcp=True)
        assert denied.returncode != 0, (sql, denied.stdout)


def _grafana_schema(server: Postgres) -> str:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    out = subprocess.run(
        [f"{PG_BIN}/pg_dump", "-h", server.socket_dir, "-p", str(server.port), "-U", ADMIN, "--schema", "grafana", "grafanadb_server"],
        capture_output=True, text=True, check=True, env=environ,
    ).stdout  # fmt: skip
    return "\n".join(line for line in out.splitlines() if not line.startswith(("\\restrict ", "\\unrestrict ")))


@needs_postgres
def test_grafanas_database_backup_and_restore_round_trip(trove, public_plan, tmp_path):
    """nina-db-backup --database grafanadb_server as the delivered backup unit runs it: a backup of
    schema grafana as the grafana role, damage, restore (twice): the schema and rows come back."""
    server = trove
    files = _delivered(public_plan)
    assert server.run_step(keycloak.database_spec("grafana"), tmp_path, GR_PASSWORD, sql=files[facts.GRAFANA_DB_SQL]).returncode == 0
    as_grafana = lambda sql: server.psql("-c", sql, user="grafana", db="grafanadb_server", password=GR_PASSWORD, tcp=True)  # noqa: E731
    made = as_grafana(
        "CREATE TABLE IF NOT EXISTS dashboard (id bigserial PRIMARY KEY, uid text UNIQUE NOT NULL, data jsonb);"
        "TRUNCATE dashboard; INSERT INTO dashboard (uid, data) SELECT 'd-' || i, jsonb_build_object('n', i) FROM generate_series(1, 500) i;"
    )
    assert made.returncode == 0, made.stderr
    before = _grafana_schema(server)
    service, _timer = render.db_backup_units("grafanadb_server")
    unit = files[f"{facts.SYSTEMD_SYSTEM_DIR}/{service}"]
    assert f"--database grafanadb_server backup --keep {facts.DB_BACKUP_KEEP}" in unit
    env_file = tmp_path / "database.env"
    env_file.write_text(keycloak.database_env(facts.LOOPBACK, keycloak.database_spec("grafana"), GR_PASSWORD, port=server.port))
    env_file.chmod(0o600)
    systemctl = tmp_path / "systemctl"
    systemctl.write_text(f'#!/bin/sh\necho "$*" >> {tmp_path}/systemctl.log\nexit 3\n')  # grafana-server is stopped
    systemctl.chmod(0o755)
    launcher = tmp_path / "nina-db-backup"
    launcher.write_text(render.launcher("db_backup", render.SOURCE_ROOT).replace(facts.HOST_PYTHON, sys.executable, 1))
    launcher.chmod(0o755)
    (tmp_path / "backups").mkdir(mode=0o755)
    env = {
        "PATH": os.environ["PATH"],
        "NINA_DB_BACKUP_ROOT": str(tmp_path / "backups"),
        "NINA_DB_ENV_FILE": str(env_file),
        "NINA_SYSTEMCTL": str(systemctl),
        "NINA_PG_BINDIR": str(PG_BIN),
        "NINA_NOW": "20261207T031500Z",
    }

    def db_backup(*args: str) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(launcher), "--database", "grafanadb_server", *args], env=env, capture_output=True, text=True, timeout=300
        )
        assert GR_PASSWORD not in proc.stdout + proc.stderr
        return proc

    made = db_backup("backup", "--keep", "2")
    assert made.returncode == 0 and "schema grafana" in made.stdout, made.stderr
    assert sorted(p.name for p in (tmp_path / "backups/grafanadb_server/20261207T031500Z").iterdir()) == [
        "SHA256SUMS",
        "grafanadb_server.dump",
    ]
    assert as_grafana("DELETE FROM dashboard WHERE id % 2 = 0; ALTER TABLE dashboard ADD COLUMN extra text").returncode == 0
    assert _grafana_schema(server) != before
    for _ in range(2):
        restored = db_backup("restore", "20261207T031500Z")
        assert restored.returncode == 0, restored.stderr
        assert f"start {facts.GRAFANA_UNIT} now" in restored.stdout
        assert _grafana_schema(server) == before
    assert f"is-active --quiet {facts.GRAFANA_UNIT}" in (tmp_path / "systemctl.log").read_text()


@pytest.mark.skipif(not NGINX, reason="nginx missing (scripts/bootstrap --test-tools installs nginx-light)")
def test_nginx_t_accepts_the_grafana_site_with_websockets(public_plan, tmp_path):
    local, le = _ca("local"), _ca("Let's Encrypt")
    conf = place(public_plan, local[1], tmp_path)
    site = tmp_path / facts.NGINX_CONF_D.lstrip("/") / "nina-grafana.conf"
    text = site.read_text()
    assert f"server_name grafana.{DOMAIN};" in text and "Upgrade" in text
    assert "location ^~ /metrics {\n        return 404;" in text  # Grafana's own metrics take no login
    mon = next(h for h in public_plan.hosts if h.name == "mon")
    assert f"{mon.fixed_ip}:{facts.GRAFANA_PORT}" in text and "proxy_ssl_name mon;" in text
    for name in (f"auth.{DOMAIN}", f"grafana.{DOMAIN}"):
        cert, key = _leaf(le, name)
        _write_cert(tmp_path / facts.LETSENCRYPT_LIVE.lstrip("/") / name, (cert + le[1], key))
    out = nginx_t(conf, tmp_path)
    assert out.returncode == 0 and "[warn]" not in out.stderr, out.stderr


@pytest.mark.skipif(not CLOUD_INIT, reason="cloud-init missing (scripts/bootstrap --test-tools installs it)")
def test_the_monitoring_hosts_user_data_with_grafana_passes_cloud_init_schema_within_budget(public_plan, tmp_path):
    from cloudinit.userdata import user_data

    mon = next(h for h in public_plan.hosts if h.name == "mon")
    text = user_data(public_plan, mon, {v.name: "0f3c2a1e-5b6d-4c7e-8f90-a1b2c3d4e5f6" for v in mon.volumes})
    encoded = len(base64.b64encode(text.encode()))
    print(f"\nmonitoring+grafana host: user-data {encoded} bytes after base64 (target {facts.USER_DATA_TARGET})")
    assert encoded <= facts.USER_DATA_TARGET, encoded
    assert facts.DB_BACKUP_VOLUME in text and facts.GRAFANA_DASHBOARDS_DIR in text
    # Nothing of the delivery's secrets or dashboards: user-data never changes with them.
    assert "nina-federation" not in text and "D" * 32 not in text
    path = tmp_path / "user-data.yaml"
    path.write_text(text)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [shutil.which("cloud-init") or "cloud-init", "schema", "-c", str(path)], capture_output=True, text=True, timeout=120, env=env
    )
    assert proc.returncode == 0 and "Valid cloud-config" in proc.stdout, proc.stdout + proc.stderr


def test_host_programs_include_the_installer_and_the_shared_download():
    programs = render.host_programs()
    assert "nina/host/grafana_install.py" in programs and "nina/host/download.py" in programs
    assert Path(render.SOURCE_ROOT, "nina/host/grafana_install.py").is_file()


def test_the_real_installer_restarts_nothing_for_a_dashboard_change_and_prunes_a_removed_one(public_plan, tmp_path):
    """nina-install-files (this checkout's, under --root, with a recording systemctl) on the
    delivery: the first install enables and restarts the units; a changed or added dashboard
    restarts nothing; a dashboard left out is deleted; a grafana.ini change restarts them again."""
    from test_monitoring import install

    root, log = tmp_path / "root", tmp_path / "systemctl.log"
    root.mkdir()
    sec = secrets(public_plan)
    install(root, grafana.grafana_delivery(public_plan, DB_HOST, sec, DASHBOARDS), log)
    restart = f"restart {' '.join(services.grafana.UNITS)}"
    assert log.read_text().splitlines()[-1] == restart
    dash = root / facts.GRAFANA_DASHBOARDS_DIR.lstrip("/")
    lines = len(log.read_text().splitlines())
    changed = {"federation.json": json.dumps({"uid": "nina-federation", "title": "v2"}), "hosts.json": "{}"}
    said = install(root, grafana.grafana_delivery(public_plan, DB_HOST, sec, changed), log)
    assert len(log.read_text().splitlines()) == lines, said
    assert sorted(p.name for p in dash.iterdir()) == ["federation.json", "hosts.json"] and "v2" in (dash / "federation.json").read_text()
    install(root, grafana.grafana_delivery(public_plan, DB_HOST, sec, {"hosts.json": "{}"}), log)
    assert sorted(p.name for p in dash.iterdir()) == ["hosts.json"] and len(log.read_text().splitlines()) == lines
    # Anything else (here the database host in grafana.ini) restarts Grafana's units.
    install(root, grafana.grafana_delivery(public_plan, "10.100.0.6", sec, {"hosts.json": "{}"}), log)
    assert log.read_text().splitlines()[-1] == restart
