"""Grafana in the program (components/grafana.py, components/platform.py) under mocks: the
`<host>-grafana` delivery on the monitoring host after the Trove instance, its secrets pulumi-random
and secret wherever they are held, the realm and grafana.ini holding the same client secret, the
port table's 3000 only from the proxy, the Trove allow-list, and config changes that replace no VM."""

from __future__ import annotations

import configparser
import copy
import json
from typing import Any

import pytest
from harness import Run, before_and_after, changed_names, instances_unchanged, payload_of, run_program, stack_config

from nina import facts
from nina.config import load_config
from nina.plan import build_plan

RANDOM_PASSWORD = "random:index/randomPassword:RandomPassword"
SHA = "ab" * 32
HOSTS = [
    {"name": "gateway", "roles": ["bastion", "proxy"]},
    {"name": "idp", "roles": ["keycloak"]},
    {"name": "monitor", "roles": ["monitoring", "grafana"]},
]


def _config(access: bool = True, hosts: list[dict] | None = None, **changes: Any) -> dict[str, Any]:
    cfg = copy.deepcopy(stack_config("test"))
    cfg["nina:hosts"] = copy.deepcopy(hosts or HOSTS)
    cfg["nina:keycloak"] = {"sha256": "cd" * 32}
    cfg["nina:grafana"] = {"sha256": SHA}
    if access:
        cfg["nina:researcher_access"] = {"public_domain": "fl.example.edu.au", "acme_email": "fl-ops@example.edu.au"}
    cfg.update({f"nina:{k}": v for k, v in changes.items()})
    return cfg


def _run(cfg: dict[str, Any]) -> Run:
    result = run_program(cfg)
    assert result.error is None, result.error
    return result


@pytest.fixture(scope="module")
def run() -> Run:
    return _run(_config())


@pytest.fixture(scope="module")
def private() -> Run:
    return _run(
        _config(access=False, hosts=[{"name": "gateway", "roles": ["bastion"]}, {"name": "monitor", "roles": ["monitoring", "grafana"]}])
    )


def _install(run: Run, name: str = "monitor-grafana"):
    [found] = [r for r in run.registrations if r.name == f"{name}-install"]
    return found


def _files(run: Run, name: str = "monitor-grafana") -> dict[str, dict[str, Any]]:
    return {f["path"]: f for f in json.loads(payload_of(_install(run, name).inputs["stdin"]))["files"]}


def test_the_delivery_runs_after_the_database_and_the_base_delivery_as_secret_stdin(run):
    install = _install(run)
    assert "stdin" in install.secret_inputs and "PRIVATE KEY" not in install.inputs["create"]
    parent = next(r for r in run.registrations if r.name == "monitor-grafana" and r.type == "nina:flower:FileDelivery")
    grafana = next(r for r in run.registrations if r.type == "nina:monitoring:Grafana")
    assert parent.parent == grafana.urn
    # After the host's base delivery and the Trove instance (its database and role exist then).
    trove = [r for r in run.registrations if r.type == "openstack:database/instance:Instance"]
    assert len(trove) == 1
    deps = {run.by_urn[d].name for d in parent.dependencies if d in run.by_urn}
    assert {"monitor-base-install", trove[0].name} <= deps, deps


def test_the_realm_and_grafana_hold_the_same_client_secret_and_every_secret_is_pulumi_random(run):
    realm = json.loads(_files(run, "idp-keycloak")[facts.KEYCLOAK_REALM_FILE]["content"])
    (client,) = [c for c in realm["clients"] if c["clientId"] == "grafana"]
    files = _files(run)
    assert files[f"{facts.GRAFANA_SECRETS}/oauth-client-secret"]["content"] == client["secret"]
    assert client["redirectUris"] == ["https://grafana.fl.example.edu.au/login/generic_oauth"]
    passwords = {r.name: r.outputs["result"] for r in run.of_type(RANDOM_PASSWORD)}
    assert passwords["grafana-oidc-client-secret"] == client["secret"]
    assert files[f"{facts.GRAFANA_SECRETS}/admin-password"]["content"] == passwords["grafana-admin-password"]
    assert files[f"{facts.GRAFANA_SECRETS}/secret-key"]["content"] == passwords["grafana-secret-key"]
    assert files[f"{facts.GRAFANA_SECRETS}/database-password"]["content"] == passwords["grafana-db-password"]
    ini = configparser.RawConfigParser()
    ini.read_string(files[facts.GRAFANA_INI]["content"])
    assert ini["auth.generic_oauth"]["enabled"] == "true" and ini["server"]["http_addr"] == run.outputs["hosts"]["monitor"]["fixed_ip"]
    trove = next(r for r in run.registrations if r.type == "openstack:database/instance:Instance")
    (network,) = trove.inputs["networks"]
    assert ini["database"]["host"] == f"{network['fixedIpV4']}:{facts.POSTGRES_PORT}"
    for name, data in run.user_data().items():
        for value in passwords.values():
            assert value not in data, name


def test_grafana_is_reached_only_from_the_proxy_on_3000(run, private):
    def rules(r: Run) -> set[str]:
        return {x.name for x in r.of_type("openstack:networking/secGroupRule:SecGroupRule") if x.name.endswith(f"-{facts.GRAFANA_PORT}")}

    assert rules(run) == {f"proxy->monitoring-tcp-{facts.GRAFANA_PORT}"}
    assert rules(private) == set()  # no proxy: nothing reaches 3000 (Grafana listens on loopback)
    ini = configparser.RawConfigParser()
    ini.read_string(_files(private)[facts.GRAFANA_INI]["content"])
    assert ini["server"]["http_addr"] == facts.LOOPBACK and ini["auth.generic_oauth"]["enabled"] == "false"
    assert f"{facts.GRAFANA_SECRETS}/oauth-client-secret" not in _files(private)
    assert not [r for r in private.of_type(RANDOM_PASSWORD) if r.name == "grafana-oidc-client-secret"]


def test_postgres_admits_the_keycloak_and_monitoring_hosts(run):
    hosts = run.outputs["hosts"]
    assert sorted(run.outputs["database"]["allowed_cidrs"]) == sorted(f"{hosts[h]['fixed_ip']}/32" for h in ("idp", "monitor"))


def test_a_new_release_changes_only_the_grafana_delivery_and_no_vm():
    before, after = before_and_after(_config(), _config(grafana={"sha256": "ef" * 32, "version": "12.1.0"}), "test")
    instances_unchanged(before, after)
    gone, added, changed = changed_names(before, after)
    assert (gone, added, changed) == (set(), set(), {"monitor-grafana-install"})
    unit = _files(after)[f"{facts.SYSTEMD_SYSTEM_DIR}/{facts.GRAFANA_INSTALL_UNIT}"]["content"]
    assert f"--version 12.1.0 --sha256 {'ef' * 32}" in unit


def test_the_delivery_provisions_nina_dashboards(run):
    """The Platform hands the delivery nina.dashboards' files: all of them, byte for byte."""
    from nina import dashboards

    delivered = {p: f["content"] for p, f in _files(run).items() if p.startswith(f"{facts.GRAFANA_DASHBOARDS_DIR}/")}
    expected = dashboards.dashboard_files(
        build_plan(load_config({k.split(":", 1)[1]: v for k, v in _config().items() if k.startswith("nina:")}))
    )
    assert delivered == {f"{facts.GRAFANA_DASHBOARDS_DIR}/{n}": t for n, t in expected.items()}
    assert len(delivered) == len(dashboards.UIDS)


def test_a_dashboard_change_changes_only_the_grafana_delivery_no_vm_and_restarts_nothing(monkeypatch):
    """A change of nina.dashboards' output (here two versions of one dashboard put in its place):
    only `<host>-grafana` changes, only in the hot dashboards' directory, so nina-install-files
    restarts nothing."""
    from nina import dashboards

    def runs(title: str) -> Run:
        monkeypatch.setattr(
            dashboards, "dashboard_files", lambda plan: {"federation.json": json.dumps({"uid": "nina-federation", "title": title})}
        )
        return _run(_config())

    before, after = runs("Federation"), runs("Federation, v2")
    instances_unchanged(before, after)
    assert changed_names(before, after) == (set(), set(), {"monitor-grafana-install"})
    old, new = _files(before), _files(after)
    assert {p for p in set(old) | set(new) if old.get(p) != new.get(p)} == {f"{facts.GRAFANA_DASHBOARDS_DIR}/federation.json"}
    assert json.loads(payload_of(_install(after).inputs["stdin"]))["hot"] == {facts.GRAFANA_DASHBOARDS_DIR: []}
