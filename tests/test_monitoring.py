"""Monitoring and alerting (nina.monitoring, nina:monitoring, the monitoring service): targets from
the plan, deterministic documents, the real tools on them (`promtool check config|rules`,
`promtool test rules` with a firing and a quiet case per alert rule, `amtool check-config`), and a
real Prometheus on loopback scraping a real node exporter whose textfile collector says a
SuperNode is offline, with a real Alertmanager passing the alerts on to a webhook."""

from __future__ import annotations

import copy
import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml
from exporter import rendered_args as rendered_node_exporter_args

from nina import facts, firewall, monitoring, render, services
from nina.config import ConfigError, load_config
from nina.plan import Plan, build_plan

PROMTOOL = shutil.which("promtool") or ""
AMTOOL = shutil.which("amtool") or ""
PROMETHEUS = shutil.which("prometheus") or ""
ALERTMANAGER = shutil.which("prometheus-alertmanager") or ""
NODE_EXPORTER = shutil.which("prometheus-node-exporter") or ""
TOOLS = "scripts/bootstrap --test-tools installs it (Debian packages prometheus, prometheus-alertmanager, prometheus-node-exporter)"
needs_promtool = pytest.mark.skipif(not PROMTOOL, reason=f"promtool missing; {TOOLS}")
needs_amtool = pytest.mark.skipif(not AMTOOL, reason=f"amtool missing; {TOOLS}")
needs_servers = pytest.mark.skipif(
    not (PROMETHEUS and ALERTMANAGER and NODE_EXPORTER), reason=f"prometheus, alertmanager or node exporter missing; {TOOLS}"
)


def raw_config(**monitoring_keys: Any) -> dict[str, Any]:
    """Two tenancies: alpha with a cloud GPU organisation and an on-premise one, beta with a cloud one."""
    return {
        "environment": "mon",
        "network": {"server_cidr": "10.120.0.0/24", "admin_cidrs": ["203.0.113.0/24"]},
        "hosts": [{"name": "gateway", "roles": ["bastion", "proxy"]}, {"name": "mon", "roles": ["monitoring"]}],
        "supernode": {"gpu_flavor": "reservation:gpu", "data_volume_gb": 100},
        "tenancies": [
            {
                "name": "alpha",
                "organisations": [
                    {"slug": "a-one", "name": "A One", "placement": "cloud", "partition_id": 0, "cidr": "10.121.0.0/24", "gpu": True},
                    {"slug": "a-two", "name": "A Two", "placement": "onprem", "partition_id": 1},
                ],
            },
            {
                "name": "beta",
                "organisations": [{"slug": "b-one", "name": "B One", "placement": "cloud", "partition_id": 0, "cidr": "10.122.0.0/24"}],
            },
        ],
        "monitoring": monitoring_keys,
    }


def make_plan(**monitoring_keys: Any) -> Plan:
    return build_plan(load_config(raw_config(**monitoring_keys)))


@pytest.fixture(scope="module")
def plan() -> Plan:
    return make_plan()


def write_tree(directory: Path, plan: Plan, **params: str) -> Path:
    """prometheus.yml with its rules and targets beside it, as on the host (relative paths)."""
    conf = directory / "prometheus.yml"
    conf.write_text(monitoring.prometheus_yml(plan, **params))
    rules = directory / os.path.relpath(facts.PROMETHEUS_RULES_DIR, facts.PROMETHEUS_ETC)
    targets = directory / os.path.relpath(facts.PROMETHEUS_FILE_SD_DIR, facts.PROMETHEUS_ETC)
    rules.mkdir()
    targets.mkdir()
    for name, text in monitoring.rule_files(plan).items():
        (rules / name).write_text(text)
    for name, text in monitoring.file_sd_files(plan).items():
        (targets / name).write_text(text)
    return conf


def run(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, **{"timeout": 60, **kw})


# --- config -------------------------------------------------------------------------------------


def test_monitoring_config_defaults_follow_the_manual(plan):
    mon = plan.cfg.monitoring
    a = mon.alerts
    assert (mon.retention_days, mon.volume_gb, mon.smtp, mon.webhook_url) == (30, 50, None, None)
    assert (a.cpu_load_medium, a.cpu_load_high, a.memory_available_medium, a.memory_available_high) == (0.8, 0.95, 0.1, 0.05)
    assert (a.disk_free_low, a.disk_free_medium, a.disk_free_high) == (0.3, 0.2, 0.1)
    assert (a.gpu_temperature_celsius, a.gpu_memory_used, a.gpu_for) == (85, 0.9, "1h")
    assert (a.supernode_offline_for, a.certificate_expiry_days, a.host_for, a.federation_metrics_stale) == ("30m", 30, "30m", "10m")
    assert a.backup_stale == "26h"


@pytest.mark.parametrize(
    ("keys", "key", "words"),
    [
        ({"alerts": {"cpu_load_high": 0.7}}, "nina:monitoring.alerts.cpu_load_high", ["cpu_load_medium", "0.95"]),
        ({"alerts": {"memory_available_high": 0.2}}, "nina:monitoring.alerts.memory_available_high", ["below", "0.05"]),
        ({"alerts": {"disk_free_medium": 0.4}}, "nina:monitoring.alerts.disk_free_high", ["must hold", "0.3"]),
        ({"alerts": {"supernode_offline_for": "30 minutes"}}, "nina:monitoring.alerts.supernode_offline_for", ["'30m'"]),
        ({"alerts": {"cpu_load_medium": 80}}, "nina:monitoring.alerts.cpu_load_medium", ["less than 1"]),
        ({"alerts": {"certificate_expiry_days": 0}}, "nina:monitoring.alerts.certificate_expiry_days", ["greater than or equal to 1"]),
        ({"alerts": {"backup_stale": "1h"}}, "nina:monitoring.alerts.backup_stale", ["daily backups", "'26h' or more"]),
        ({"alerts": {"backup_stale": "2 days"}}, "nina:monitoring.alerts.backup_stale", ["'30m' or '1h'"]),
        ({"retention_days": "a month"}, "nina:monitoring.retention_days", ["whole number"]),
        ({"volume_gb": 1}, "nina:monitoring.volume_gb", ["greater than or equal to 5"]),
        (
            {"smtp": {"smarthost": "smtp.example.edu.au", "from": "ops@example.edu.au", "to": ["a@example.edu.au"]}},
            "nina:monitoring.smtp.smarthost",
            [":587"],
        ),
        (
            {"smtp": {"smarthost": "smtp.example.edu.au:587", "from": "ops", "to": ["a@example.edu.au"]}},
            "nina:monitoring.smtp.from",
            ["e-mail"],
        ),
        (
            {"smtp": {"smarthost": "smtp.example.edu.au:587", "from": "ops@example.edu.au", "to": []}},
            "nina:monitoring.smtp.to",
            ["at least one"],
        ),
        (
            {"smtp": {"smarthost": "smtp.example.edu.au:587", "from": "o@example.edu.au", "to": ["a@example.edu.au"], "password": "x"}},
            "nina:monitoring.smtp.password",
            ["unknown key"],
        ),
        ({"webhook_url": "http://hooks.slack.com/services/x"}, "nina:monitoring.webhook_url", ["https://"]),
        ({"webhook_kind": "discord"}, "nina:monitoring.webhook_kind", ["slack", "msteams", "generic"]),
    ],
)
def test_bad_monitoring_config_names_the_key_and_the_fix(keys, key, words):
    with pytest.raises(ConfigError) as err:
        load_config(raw_config(**keys))
    found = dict(err.value.problems)
    assert key in found, err.value.message()
    for w in words:
        assert w in found[key], found[key]


# --- targets ------------------------------------------------------------------------------------


def test_targets_cover_every_host_and_onprem_member(plan):
    got = {(t.file, t.job, t.address): dict(t.labels) for t in monitoring.targets(plan)}
    ne, dcgm = facts.NODE_EXPORTER_PORT, facts.DCGM_EXPORTER_PORT
    # Every host of the plan, at its fixed IP, once.
    node = {a for (_, job, a) in got if job == "node"}
    assert {f"{h.fixed_ip}:{ne}" for h in plan.hosts} <= node
    alpha = next(t for t in plan.tenancies if t.name == "alpha")
    onprem = next(m for m in alpha.members if m.slug == "a-two")
    assert onprem.vpn_address is not None
    assert got[("tenancy-alpha.json", "node", f"{onprem.vpn_address}:{ne}")] == {
        "host": "supernode-a-two",
        "role": "supernode",
        "tenancy": "alpha",
        "organisation": "a-two",
        "placement": "onprem",
    }
    gpu = plan.host_by_name["supernode-a-one"]
    assert got[("tenancy-alpha.json", "dcgm", f"{gpu.fixed_ip}:{dcgm}")]["organisation"] == "a-one"
    assert [k for k in got if k[1] == "dcgm"] == [("tenancy-alpha.json", "dcgm", f"{gpu.fixed_ip}:{dcgm}")]
    assert got[("platform.json", "node", f"{plan.host_by_name['mon'].fixed_ip}:{ne}")] == {"host": "mon", "role": "monitoring"}
    assert got[("platform.json", "node", f"{plan.host_by_name['gateway'].fixed_ip}:{ne}")] == {"host": "gateway", "role": "bastion,proxy"}
    sl = plan.host_by_name["superlink-beta"]
    assert got[("tenancy-beta.json", "node", f"{sl.fixed_ip}:{ne}")] == {"host": "superlink-beta", "role": "superlink", "tenancy": "beta"}
    assert len(node) == len(plan.hosts) + 1  # the hosts and the on-premise SuperNode
    assert set(monitoring.file_sd_files(plan)) == {"platform.json", "tenancy-alpha.json", "tenancy-beta.json"}


def test_adding_an_organisation_changes_only_its_tenancy_file():
    before = make_plan()
    raw = raw_config()
    raw["tenancies"][1]["organisations"].append({"slug": "b-two", "name": "B Two", "placement": "onprem", "partition_id": 1})
    raw["tenancies"][1]["vpn_pool_cidr"] = "192.168.101.0/24"
    after = build_plan(load_config(raw))
    old, new = monitoring.file_sd_files(before), monitoring.file_sd_files(after)
    assert [n for n in new if old.get(n) != new[n]] == ["tenancy-beta.json"]
    assert monitoring.prometheus_yml(before) == monitoring.prometheus_yml(after)
    assert monitoring.rule_files(before) == monitoring.rule_files(after)
    assert monitoring.alertmanager_yml(before.cfg) == monitoring.alertmanager_yml(after.cfg)


def test_documents_are_data_dumped_deterministically(plan):
    again = make_plan()
    assert monitoring.monitoring_delivery(plan) == monitoring.monitoring_delivery(again)
    for name, text in monitoring.file_sd_files(plan).items():
        assert json.loads(text) == monitoring.file_sd_documents(plan)[name]
        assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"
    assert yaml.safe_load(monitoring.prometheus_yml(plan)) == monitoring.prometheus_config(plan)
    for name, text in monitoring.rule_files(plan).items():
        assert yaml.safe_load(text) == monitoring.rule_documents(plan)[name]
        assert "&id" not in text and "*id" not in text  # no YAML anchors
    assert yaml.safe_load(monitoring.alertmanager_yml(plan.cfg)) == monitoring.alertmanager_config(plan.cfg)


def test_units_come_from_the_service_definitions():
    units = set(services.watched_units())
    expected = {
        *services.base.UNITS,
        *services.proxy.UNITS,
        *services.superlink.UNITS,
        *services.supernode.UNITS,
        *services.vpn.UNITS,
        *services.vpn.CLIENT_UNITS,
        *services.monitoring.UNITS,
        *services.keycloak.UNITS,
        facts.NGINX_UNIT,
        facts.SSH_UNIT,
        facts.SUPERLINK_BACKUP_SERVICE,
    }
    assert expected <= units
    assert {facts.SUPERLINK_UNIT, facts.SUPERNODE_UNIT, facts.OPENVPN_SERVER_UNIT, facts.OPENVPN_TCP_SERVER_UNIT} <= units
    assert {facts.KEYCLOAK_UNIT, facts.NODE_EXPORTER_UNIT, facts.PROMETHEUS_UNIT, facts.ALERTMANAGER_UNIT} <= units


def test_priority_mounts_are_root_and_every_volume(plan):
    assert monitoring.priority_mounts(plan) == tuple(
        sorted(("/", facts.MONITORING_VOLUME, facts.SUPERLINK_STATE_DIR, facts.SUPERNODE_DATA))
    )


def test_monitoring_host_gets_its_volume_and_never_the_superlink(plan):
    mon = plan.host_by_name["mon"]
    assert [(v.name, v.size_gb, v.mount_point, v.owner) for v in mon.volumes] == [
        (facts.MONITORING_VOLUME_NAME, 50, facts.MONITORING_VOLUME, facts.PROMETHEUS_USER)
    ]
    assert make_plan(volume_gb=200).host_by_name["mon"].volumes[0].size_gb == 200
    assert all(not h.volumes or h.name == "mon" or "monitoring" not in h.roles for h in plan.hosts)
    bad = raw_config()
    bad["hosts"] = [{"name": "gateway", "roles": ["bastion"]}, {"name": "big", "roles": ["monitoring", "superlink"]}]
    bad["tenancies"] = bad["tenancies"][:1]
    with pytest.raises(ConfigError, match="never share a VM with the SuperLink"):
        load_config(bad)


def test_port_table_exporters_only_from_monitoring_and_servers_internal(plan):
    rows = {(f.to, f.port): f.sources for f in firewall.PORT_TABLE}
    assert rows[("managed", facts.NODE_EXPORTER_PORT)] == ("monitoring",)
    assert rows[("gpu", facts.DCGM_EXPORTER_PORT)] == ("monitoring",)
    opened = {f.port for f in firewall.PORT_TABLE}
    assert facts.PROMETHEUS_PORT not in opened and facts.PROMETHEUS_PORT in firewall.NEVER_OPEN
    assert not [f for f in firewall.PORT_TABLE if f.to == "monitoring" and f.port == facts.ALERTMANAGER_PORT]
    names = {r.name for r in plan.rules}
    assert "monitoring->managed-tcp-9900" in names and "monitoring->gpu-tcp-9400" in names
    assert not [
        r for r in plan.rules if r.port_min in (facts.PROMETHEUS_PORT, facts.ALERTMANAGER_PORT) and r.security_group == "monitoring"
    ]
    # Both servers listen on loopback only.
    assert f"--web.listen-address={facts.LOOPBACK}:{facts.PROMETHEUS_PORT}" in monitoring.prometheus_args(plan.cfg)
    assert f"--web.listen-address={facts.LOOPBACK}:{facts.ALERTMANAGER_PORT}" in monitoring.alertmanager_args()
    assert "--cluster.listen-address=" in monitoring.alertmanager_args()


def test_service_definition():
    svc = services.SERVICES["monitoring"]
    assert svc.built and svc.shared
    assert set(svc.packages) == {"prometheus", "prometheus-alertmanager"}
    assert not [p for p in svc.packages if "grafana" in p]
    assert {d.path for d in svc.directories} == {facts.PROMETHEUS_RULES_DIR, facts.PROMETHEUS_FILE_SD_DIR}
    assert services.monitoring.UNITS == (facts.PROMETHEUS_UNIT, facts.ALERTMANAGER_UNIT)


# --- delivery -----------------------------------------------------------------------------------


def test_delivery_payload(plan):
    payload = json.loads(monitoring.monitoring_delivery(plan, smtp_password=None))
    by_path = {f["path"]: f for f in payload["files"]}
    assert payload["restart"] == [facts.PROMETHEUS_UNIT, facts.ALERTMANAGER_UNIT]
    assert payload["prune"] == [facts.PROMETHEUS_RULES_DIR, facts.PROMETHEUS_FILE_SD_DIR]
    assert payload["hot"] == {facts.PROMETHEUS_FILE_SD_DIR: []}
    for name in ("platform.json", "tenancy-alpha.json", "tenancy-beta.json"):
        assert f"{facts.PROMETHEUS_FILE_SD_DIR}/{name}" in by_path
    for name in monitoring.rule_files(plan):
        assert by_path[f"{facts.PROMETHEUS_RULES_DIR}/{name}"]["mode"] == 0o644
    am = by_path[facts.ALERTMANAGER_CONFIG]
    assert (am["mode"], am["owner"], am["group"]) == (0o640, "root", facts.PROMETHEUS_USER)
    args = by_path[facts.PROMETHEUS_DEFAULTS]["content"]
    assert "--storage.tsdb.retention.time=30d" in args and "--storage.tsdb.retention.size=40GB" in args
    assert f"--storage.tsdb.path={facts.PROMETHEUS_TSDB}" in args and facts.PROMETHEUS_TSDB.startswith(facts.MONITORING_VOLUME + "/")
    assert f"RequiresMountsFor={facts.MONITORING_VOLUME}" in by_path[facts.PROMETHEUS_DROPIN]["content"]
    retention = json.loads(monitoring.monitoring_delivery(make_plan(retention_days=7, volume_gb=10)))
    defaults = next(f["content"] for f in retention["files"] if f["path"] == facts.PROMETHEUS_DEFAULTS)
    assert "retention.time=7d" in defaults and "retention.size=8GB" in defaults


def test_delivery_needs_a_monitoring_host():
    raw = raw_config()
    raw["hosts"] = [{"name": "gateway", "roles": ["bastion"]}]
    with pytest.raises(ValueError, match="no host has the monitoring role"):
        monitoring.monitoring_delivery(build_plan(load_config(raw)))


def install(root: Path, payload: str, log: Path) -> str:
    """Runs the real nina-install-files (this checkout's, as a host's python3 -I runs it) on the payload under `root`."""
    recorder = root.parent / "systemctl"
    recorder.write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    recorder.chmod(0o755)
    code = f"import runpy, sys; sys.path.insert(0, {str(Path(render.SOURCE_ROOT))!r}); runpy.run_module('nina.host.install_files', run_name='__main__')"
    out = run(["python3", "-I", "-c", code, "--root", str(root)], input=payload, env={**os.environ, "NINA_SYSTEMCTL": str(recorder)})
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_delivery_installs_and_target_changes_restart_nothing(tmp_path):
    root, log = tmp_path / "root", tmp_path / "systemctl.log"
    root.mkdir()
    install(root, monitoring.monitoring_delivery(make_plan()), log)
    assert log.read_text().splitlines()[-1] == f"restart {facts.PROMETHEUS_UNIT} {facts.ALERTMANAGER_UNIT}"
    etc = root / facts.PROMETHEUS_ETC.lstrip("/")
    if PROMTOOL:  # the tree as installed, with its relative rule and target paths
        out = run([PROMTOOL, "check", "config", str(etc / "prometheus.yml")])
        assert out.returncode == 0, out.stdout + out.stderr
    # A new organisation changes only its tenancy's target file, which Prometheus rereads itself.
    raw = raw_config()
    raw["tenancies"][1]["organisations"].append(
        {"slug": "b-two", "name": "B Two", "placement": "cloud", "partition_id": 1, "cidr": "10.123.0.0/24"}
    )
    lines = len(log.read_text().splitlines())
    said = install(root, monitoring.monitoring_delivery(build_plan(load_config(raw))), log)
    assert len(log.read_text().splitlines()) == lines, said
    assert "b-two" in (root / facts.PROMETHEUS_FILE_SD_DIR.lstrip("/") / "tenancy-beta.json").read_text()
    # A tenancy that goes takes its file along (pruned), and a threshold change restarts both.
    raw = raw_config(alerts={"cpu_load_medium": 0.7})
    raw["tenancies"] = raw["tenancies"][:1]
    install(root, monitoring.monitoring_delivery(build_plan(load_config(raw))), log)
    assert sorted(p.name for p in (root / facts.PROMETHEUS_FILE_SD_DIR.lstrip("/")).iterdir()) == ["platform.json", "tenancy-alpha.json"]
    assert log.read_text().splitlines()[-1] == f"restart {facts.PROMETHEUS_UNIT} {facts.ALERTMANAGER_UNIT}"
    assert "> 0.7" in (root / facts.PROMETHEUS_RULES_DIR.lstrip("/") / "host.yml").read_text()


SMTP = {"smarthost": "smtp.example.edu.au:587", "from": "fl-alerts@example.edu.au", "to": ["ops@example.edu.au", "oncall@example.edu.au"]}


def test_alertmanager_receivers_from_config():
    cfg = make_plan(smtp={**SMTP, "auth_username": "fl-alerts"}, webhook_url="https://hooks.slack.com/services/T0/B0/xyz").cfg
    doc = monitoring.alertmanager_config(cfg, smtp_password="s3cret")
    (receiver,) = doc["receivers"]
    assert receiver["email_configs"] == [{"to": "ops@example.edu.au, oncall@example.edu.au", "send_resolved": True}]
    assert receiver["slack_configs"] == [{"api_url": "https://hooks.slack.com/services/T0/B0/xyz", "send_resolved": True}]
    assert doc["global"]["smtp_auth_password"] == "s3cret" and doc["global"]["smtp_smarthost"] == "smtp.example.edu.au:587"
    with pytest.raises(ValueError, match="smtp_password"):
        monitoring.alertmanager_config(cfg)
    with pytest.raises(ValueError, match="auth_username is not set"):
        monitoring.alertmanager_config(make_plan(smtp=SMTP).cfg, smtp_password="x")
    teams = make_plan(webhook_url="https://example.webhook.office.com/webhookb2/x", webhook_kind="msteams").cfg
    assert monitoring.alertmanager_config(teams)["receivers"][0]["msteams_configs"][0]["webhook_url"].endswith("/x")
    assert monitoring.alertmanager_config(make_plan().cfg)["receivers"] == [{"name": monitoring.RECEIVER}]


# --- the real tools -------------------------------------------------------------------------------


@needs_promtool
def test_promtool_checks_config_and_rules(plan, tmp_path):
    conf = write_tree(tmp_path, plan)
    out = run([PROMTOOL, "check", "config", str(conf)])
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout + out.stderr
    rules = sorted((tmp_path / os.path.relpath(facts.PROMETHEUS_RULES_DIR, facts.PROMETHEUS_ETC)).glob("*.yml"))
    assert len(rules) == len(monitoring.rule_files(plan))
    out = run([PROMTOOL, "check", "rules", *map(str, rules)])
    assert out.returncode == 0, out.stdout + out.stderr


# promtool test rules: each case has the input series, when to evaluate, and the alerts expected
# then (labels without severity, severity, the value the annotations show).
NODE = {"instance": "10.120.0.11:9900", "job": "node", "host": "mon", "role": "monitoring"}
GPU = {
    "instance": "10.121.0.10:9400",
    "job": "dcgm",
    "host": "supernode-a-one",
    "role": "supernode",
    "tenancy": "alpha",
    "organisation": "a-one",
    "gpu": "0",
}
SUPERLINK = {"instance": "10.120.0.40:9900", "job": "node", "host": "superlink-alpha", "role": "superlink", "tenancy": "alpha"}
KEYCLOAK_HOST = {"instance": "10.120.0.12:9900", "job": "node", "host": "keycloak", "role": "keycloak,proxy"}
ONPREM = {
    "instance": "192.168.99.11:9900",
    "job": "node",
    "host": "supernode-a-two",
    "role": "supernode",
    "tenancy": "alpha",
    "organisation": "a-two",
}


def _series(name: str, labels: Mapping[str, str]) -> str:
    return name + "{" + ", ".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


def _go_humanize_duration(v: float) -> str:
    d = int(v)
    s, m, h, days = d % 60, (d // 60) % 60, (d // 3600) % 24, d // 86400
    if days:
        return f"{days}d {h}h {m}m {s}s"
    if h:
        return f"{h}h {m}m {s}s"
    return f"{m}m {s}s" if m else f"{v:.4g}s"


def _go_value(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(v)


def expand(template: str, labels: Mapping[str, str], value: float | None) -> str:
    """Prometheus's expansion of the few template forms the rules use, for the expected annotations."""

    def one(m: re.Match[str]) -> str:
        expr = m.group(1).strip()
        if expr.startswith("$labels."):
            return labels.get(expr.removeprefix("$labels."), "")
        assert value is not None, f"the case needs the value for {expr!r}"
        if expr == "$value":
            return _go_value(value)
        fn = expr.split("|")[1].strip()
        return {"humanizePercentage": lambda v: "%.4g%%" % (v * 100), "humanizeDuration": _go_humanize_duration}[fn](value)

    return re.sub(r"\{\{(.*?)\}\}", one, template)


def _flat(x: float, n: int) -> str:
    return f"{x}+0x{n}"


def rule_cases() -> list[dict[str, Any]]:
    """(alert, [(series name, labels, values)], eval minutes, [(labels, severity, value)]) per case."""
    disk = {**NODE, "device": "/dev/vda1", "fstype": "ext4"}
    cpus = [("node_cpu_seconds_total", {**NODE, "cpu": str(c), "mode": "idle"}, "0+60x80") for c in range(4)]
    cases: list[tuple[str, list[tuple[str, dict[str, str], str]], int, list[tuple[dict[str, str], str, float | None]]]] = []
    for load, sevs in ((2.0, ()), (3.4, ("medium",)), (3.9, ("medium", "high"))):
        cases.append(("HostCpuLoadHigh", [("node_load15", NODE, _flat(load, 80)), *cpus], 35, [(NODE, s, load / 4) for s in sevs]))
    cases.append(("HostCpuLoadHigh", [("node_load15", NODE, _flat(3.9, 80)), *cpus], 20, []))  # not for 30m yet
    for avail, sevs in ((500, ()), (80, ("medium",)), (40, ("medium", "high"))):
        series = [("node_memory_MemAvailable_bytes", NODE, _flat(avail, 80)), ("node_memory_MemTotal_bytes", NODE, _flat(1000, 80))]
        cases.append(("HostMemoryLow", series, 35, [(NODE, s, avail / 1000) for s in sevs]))
    disks: tuple[tuple[str, int, tuple[str, ...]], ...] = (
        ("/", 50, ()),
        ("/", 25, ("low",)),
        (facts.SUPERLINK_STATE_DIR, 15, ("low", "medium")),
        (facts.MONITORING_VOLUME, 5, ("low", "medium", "high")),
        ("/boot", 5, ()),  # not a priority mount
    )
    for mount, avail, levels in disks:
        labels = {**disk, "mountpoint": mount}
        series = [("node_filesystem_avail_bytes", labels, _flat(avail, 20)), ("node_filesystem_size_bytes", labels, _flat(100, 20))]
        cases.append(("HostDiskSpaceLow", series, 10, [(labels, s, avail / 100) for s in levels]))
    units = services.watched_units()
    unit_labels = [{**NODE, "name": u, "state": "failed", "type": "simple"} for u in units]
    other = {**NODE, "name": "apt-daily.service", "state": "failed", "type": "oneshot"}
    cases.append(
        (
            "SystemdUnitFailed",
            [("node_systemd_unit_state", lb, _flat(1, 40)) for lb in (*unit_labels, other)],
            35,
            [(lb, "high", None) for lb in unit_labels],
        )
    )
    cases.append(("SystemdUnitFailed", [("node_systemd_unit_state", lb, _flat(0, 40)) for lb in unit_labels], 35, []))
    restarting = {**NODE, "name": facts.SUPERLINK_UNIT}
    cases.append(
        ("SystemdUnitFlapping", [("node_systemd_service_restart_total", restarting, "0+1x40")], 35, [(restarting, "medium", None)])
    )
    cases.append(("SystemdUnitFlapping", [("node_systemd_service_restart_total", restarting, "0+0x30 1+0x10")], 35, []))
    cases.append(("SystemdUnitFlapping", [("node_systemd_service_restart_total", {**NODE, "name": "apt-daily.service"}, "0+1x40")], 35, []))
    cases.append(("GpuTemperatureHigh", [("DCGM_FI_DEV_GPU_TEMP", GPU, _flat(90, 80))], 65, [(GPU, "high", 90)]))
    cases.append(("GpuTemperatureHigh", [("DCGM_FI_DEV_GPU_TEMP", GPU, _flat(90, 80))], 30, []))  # not for 1h yet
    cases.append(("GpuTemperatureHigh", [("DCGM_FI_DEV_GPU_TEMP", GPU, _flat(80, 80))], 65, []))
    for used, fire in ((95, True), (50, False)):
        series = [("DCGM_FI_DEV_FB_USED", GPU, _flat(used, 80)), ("DCGM_FI_DEV_FB_FREE", GPU, _flat(100 - used, 80))]
        cases.append(("GpuMemoryHigh", series, 65, [(GPU, "low", used / 100)] if fire else []))
    cases.append(("TargetDown", [("up", ONPREM, _flat(0, 20))], 10, [(ONPREM, "high", None)]))
    cases.append(("TargetDown", [("up", ONPREM, _flat(1, 20))], 10, []))
    online = "nina_federation_supernode_online"
    offline = {"tenancy": "alpha", "organisation": "a-two"}
    fed = [
        (online, {**SUPERLINK, "organisation": "a-two"}, _flat(0, 40)),
        (online, {**SUPERLINK, "organisation": "a-one"}, _flat(1, 40)),
        # The on-premise host itself claims to be online: the SuperLink's 0 still wins (min).
        (online, {**ONPREM, "exported_organisation": "a-two"}, _flat(1, 40)),
    ]
    cases.append(("SuperNodeOffline", fed, 35, [(offline, "high", None)]))
    cases.append(("SuperNodeOffline", fed, 20, []))  # not for 30m yet
    cases.append(("SuperNodeOffline", [(online, {**SUPERLINK, "organisation": "a-two"}, _flat(1, 40))], 35, []))
    for on, fire in ((0, True), (1, False)):
        series = [
            ("nina_federation_supernodes_registered", SUPERLINK, _flat(2, 40)),
            ("nina_federation_supernodes_online", SUPERLINK, _flat(on, 40)),
        ]
        cases.append(("FederationNoSuperNodeOnline", series, 35, [({"tenancy": "alpha"}, "high", None)] if fire else []))
    cases.append(
        (
            "FederationRunsFailed",
            [("nina_federation_runs_failed_total", SUPERLINK, "0+0x10 1+0x30")],
            20,
            [({"tenancy": "alpha"}, "medium", None)],
        )
    )
    cases.append(("FederationRunsFailed", [("nina_federation_runs_failed_total", SUPERLINK, _flat(0, 40))], 20, []))
    ok = "nina_federation_scrape_success"
    cases.append(("FederationMetricsFailing", [(ok, SUPERLINK, "1+0x5 0+0x20")], 20, [(SUPERLINK, "medium", None)]))
    cases.append(("FederationMetricsFailing", [(ok, SUPERLINK, "1+0x5 0+0x20")], 10, []))  # not for 10m yet
    cases.append(("FederationMetricsFailing", [(ok, SUPERLINK, _flat(1, 25))], 20, []))
    ran = "nina_federation_scrape_timestamp_seconds"
    cases.append(("FederationMetricsStale", [(ran, SUPERLINK, "0+60x5 300+0x20")], 20, [(SUPERLINK, "medium", None)]))  # stopped at 5m
    cases.append(("FederationMetricsStale", [(ran, SUPERLINK, "0+60x25")], 20, []))  # written every minute
    unreadable = {**SUPERLINK, "path": "/etc/flwr/superlink/certs/server.pem"}
    cases.append(("CertificateUnreadable", [("nina_certificate_read_errors", unreadable, _flat(1, 10))], 5, [(unreadable, "medium", None)]))
    cases.append(("CertificateUnreadable", [("nina_certificate_read_errors", unreadable, _flat(0, 10))], 5, []))
    cert = {**SUPERLINK, "path": "/etc/flwr/superlink/certs/server.pem", "subject": "CN=superlink-alpha"}
    cases.append(
        (
            "CertificateExpiringSoon",
            [("nina_certificate_expiry_timestamp_seconds", cert, _flat(10 * 86400, 20))],
            10,
            [(cert, "medium", 10 * 86400 - 600)],
        )
    )
    cases.append(("CertificateExpiringSoon", [("nina_certificate_expiry_timestamp_seconds", cert, _flat(60 * 86400, 20))], 10, []))
    # Backups (nina.host.backups): a failed run at once; the newest backup older than
    # backup_stale (26h); a backup timer whose runs have left no metrics for as long.
    ran = "nina_backup_last_run_success"
    state = {**SUPERLINK, "what": facts.SUPERLINK_BACKUP_WHAT}
    cases.append(("BackupFailed", [(ran, state, "1+0x5 0+0x10")], 10, [(state, "medium", None)]))
    cases.append(("BackupFailed", [(ran, state, _flat(1, 15))], 10, []))
    newest = "nina_backup_last_success_timestamp_seconds"
    cases.append(("BackupStale", [(newest, state, _flat(-27 * 3600, 20))], 10, [(state, "high", 27 * 3600 + 600)]))  # 27h before 0
    cases.append(("BackupStale", [(newest, state, _flat(-25 * 3600, 20))], 10, []))
    kc_db, other_db = "keycloakdb_server", "grafanadb_server"
    timers: dict[str, tuple[dict[str, str], str]] = {
        facts.SUPERLINK_BACKUP_TIMER: (SUPERLINK, facts.SUPERLINK_BACKUP_WHAT),
        facts.DB_BACKUP_TIMER.format(database=kc_db): (KEYCLOAK_HOST, kc_db),
        facts.DB_BACKUP_TIMER.format(database=other_db): (KEYCLOAK_HOST, other_db),
    }
    loaded = [
        ("node_systemd_unit_state", {**host, "name": timer, "state": st}, _flat(1 if st == "active" else 0, 1700))
        for timer, (host, _what) in timers.items()
        for st in ("active", "inactive", "failed")
    ]
    loaded.append(("node_systemd_unit_state", {**KEYCLOAK_HOST, "name": "apt-daily.timer", "state": "active"}, _flat(1, 1700)))
    missing: list[tuple[dict[str, str], str, float | None]] = [
        ({**host, "name": timer, "what": what}, "medium", None) for timer, (host, what) in timers.items()
    ]
    cases.append(("BackupMissing", loaded, 27 * 60, missing))
    cases.append(("BackupMissing", loaded, 25 * 60, []))  # not for backup_stale yet
    reported = [
        (ran, {**SUPERLINK, "what": facts.SUPERLINK_BACKUP_WHAT}, _flat(0, 1700)),
        (ran, {**KEYCLOAK_HOST, "what": kc_db}, _flat(1, 1700)),
    ]
    cases.append(("BackupMissing", loaded + reported, 27 * 60, missing[2:]))  # a failed run counts as reported
    cases.append(("BackupMissing", loaded + reported + [(ran, {**KEYCLOAK_HOST, "what": other_db}, _flat(1, 1700))], 27 * 60, []))
    return [{"alert": a, "series": s, "at": t, "expect": e} for a, s, t, e in cases]


def _rule(plan: Plan, alert: str, severity: str) -> dict[str, Any]:
    for doc in monitoring.rule_documents(plan).values():
        for rule in doc["groups"][0]["rules"]:
            if rule["alert"] == alert and rule["labels"]["severity"] == severity:
                return rule
    raise AssertionError(f"no rule {alert} with severity {severity}")


def promtool_tests(plan: Plan) -> dict[str, dict[str, Any]]:
    """rule file -> the `promtool test rules` document of its alerts' cases, which loads that file
    alone: each case evaluates only its own rules (the backup cases run 27 hours at 1m steps)."""
    file_of = {r["alert"]: name for name, doc in monitoring.rule_documents(plan).items() for r in doc["groups"][0]["rules"]}
    docs: dict[str, dict[str, Any]] = {}
    for case in rule_cases():
        exp = []
        for labels, severity, value in case["expect"]:
            rule = _rule(plan, case["alert"], severity)
            full = {**labels, "severity": severity}
            exp.append({"exp_labels": full, "exp_annotations": {k: expand(v, full, value) for k, v in rule["annotations"].items()}})
        rule_file = file_of[case["alert"]]
        doc = docs.setdefault(rule_file, {"rule_files": [rule_file], "evaluation_interval": "1m", "tests": []})
        doc["tests"].append(
            {
                "interval": "1m",
                "name": f"{case['alert']} at {case['at']}m: {len(exp)} alert(s)",
                "input_series": [{"series": _series(n, lb), "values": v} for n, lb, v in case["series"]],
                "alert_rule_test": [{"eval_time": f"{case['at']}m", "alertname": case["alert"], "exp_alerts": exp}],
            }
        )
    return dict(sorted(docs.items()))


def test_every_alert_rule_has_a_firing_and_a_quiet_case(plan):
    cases = rule_cases()
    rules = {(r["alert"], r["labels"]["severity"]) for d in monitoring.rule_documents(plan).values() for r in d["groups"][0]["rules"]}
    fired = {(c["alert"], sev) for c in cases for _, sev, _ in c["expect"]}
    assert fired == rules
    quiet = {c["alert"] for c in cases if not c["expect"]}
    assert quiet == {a for a, _ in rules}
    # ... and a case where a lower severity fires but not a higher one.
    partial = {
        c["alert"] for c in cases if c["expect"] and len({s for _, s, _ in c["expect"]}) < len({s for a, s in rules if a == c["alert"]})
    }
    assert partial == {"HostCpuLoadHigh", "HostMemoryLow", "HostDiskSpaceLow"}


@needs_promtool
def test_promtool_test_rules(plan, tmp_path):
    for name, text in monitoring.rule_files(plan).items():
        (tmp_path / name).write_text(text)
    docs = promtool_tests(plan)
    assert sorted(docs) == sorted(monitoring.rule_files(plan))  # every rule file is tested
    for name, doc in docs.items():
        (tmp_path / f"test-{name}").write_text(yaml.safe_dump(doc, sort_keys=False))
    out = run([PROMTOOL, "test", "rules", *(f"test-{name}" for name in docs)], cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-3000:]
    assert out.stdout.count("SUCCESS") == len(docs), out.stdout


@needs_promtool
def test_promtool_test_rules_follow_config_thresholds(tmp_path):
    # Stricter thresholds from the config: a GPU at 80 °C now alerts, after 10 minutes.
    plan = make_plan(alerts={"gpu_temperature_celsius": 75, "gpu_for": "10m"})
    (tmp_path / "gpu.yml").write_text(monitoring.rule_files(plan)["gpu.yml"])
    rule = _rule(plan, "GpuTemperatureHigh", "high")
    full = {**GPU, "severity": "high"}
    doc = {
        "rule_files": ["gpu.yml"],
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": _series("DCGM_FI_DEV_GPU_TEMP", GPU), "values": _flat(80, 30)}],
                "alert_rule_test": [
                    {"eval_time": "5m", "alertname": "GpuTemperatureHigh", "exp_alerts": []},
                    {
                        "eval_time": "15m",
                        "alertname": "GpuTemperatureHigh",
                        "exp_alerts": [
                            {"exp_labels": full, "exp_annotations": {k: expand(v, full, 80) for k, v in rule["annotations"].items()}}
                        ],
                    },
                ],
            }
        ],
    }
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(doc))
    out = run([PROMTOOL, "test", "rules", "tests.yml"], cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr


def _amtool_version() -> tuple[int, ...]:
    out = run([AMTOOL, "--version"])
    m = re.search(r"version (\d+)\.(\d+)", out.stdout + out.stderr)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


@needs_amtool
@pytest.mark.parametrize(
    ("keys", "password"),
    [
        ({}, None),
        ({"smtp": SMTP}, None),
        ({"smtp": {**SMTP, "auth_username": "fl-alerts"}, "webhook_url": "https://hooks.slack.com/services/T0/B0/xyz"}, "s3cret"),
        ({"webhook_url": "https://alerts.example.edu.au/hook", "webhook_kind": "generic"}, None),
        ({"webhook_url": "https://example.webhook.office.com/webhookb2/x", "webhook_kind": "msteams"}, None),
    ],
)
def test_amtool_checks_alertmanager_config(tmp_path, keys, password):
    if keys.get("webhook_kind") == "msteams" and _amtool_version() < (0, 26):
        pytest.skip("msteams_configs needs Alertmanager 0.26 (Ubuntu 24.04 has it; this amtool is older)")
    conf = tmp_path / "alertmanager.yml"
    conf.write_text(monitoring.alertmanager_yml(make_plan(**keys).cfg, smtp_password=password))
    out = run([AMTOOL, "check-config", str(conf)])
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


# --- a real Prometheus, node exporter and Alertmanager on loopback -------------------------------


def free_port(address: str) -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.load(r)


class _Hook(http.server.BaseHTTPRequestHandler):
    received: ClassVar[list[Any]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append(json.loads(body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def stop_all(started: list[subprocess.Popen[bytes]]) -> None:
    """Terminate every process still running, then wait for each (killing one that will not stop)."""
    for p in started:
        if p.poll() is None:
            p.terminate()
    for p in started:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=5)


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    stop_all(started)


def wait_for(what: str, check, deadline: float, proc_logs: list[Path]) -> Any:
    last: Any = None
    while time.monotonic() < deadline:
        try:
            got = check()
        except OSError as exc:  # not listening yet
            last = exc
        else:
            if got:
                return got
            last = got
        time.sleep(0.5)
    logs = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in proc_logs if p.exists())
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}\n{logs}")


@needs_servers
def test_real_prometheus_scrapes_and_fires(tmp_path, procs):
    started = time.monotonic()
    deadline = started + 60
    plan = make_plan(alerts={"supernode_offline_for": "5s", "target_down_for": "5s"})

    # The node exporter of superlink-alpha on 127.0.0.2, with the textfile collector's file.
    sl = plan.host_by_name["superlink-alpha"]
    textfile = tmp_path / "textfile"
    textfile.mkdir()
    (textfile / "nina_federation.prom").write_text(
        "# TYPE nina_federation_supernode_online gauge\n"
        'nina_federation_supernode_online{tenancy="alpha",organisation="a-one"} 1\n'
        'nina_federation_supernode_online{tenancy="alpha",organisation="a-two"} 0\n'
        "# TYPE nina_certificate_expiry_timestamp_seconds gauge\n"
        f'nina_certificate_expiry_timestamp_seconds{{path="/etc/flwr/superlink/certs/server.pem",subject="CN=superlink-alpha"}} {int(time.time()) + 90 * 86400}\n'
    )
    exporter = f"127.0.0.2:{free_port('127.0.0.2')}"
    logs = [tmp_path / "node-exporter.log", tmp_path / "prometheus.log", tmp_path / "alertmanager.log"]
    # The arguments every host's base delivery gives it, but on loopback (no systemd here: that collector fails, the rest works).
    base_args = rendered_node_exporter_args()
    assert f"--web.listen-address=:{facts.NODE_EXPORTER_PORT}" in base_args
    assert f"--collector.textfile.directory={facts.NODE_EXPORTER_TEXTFILE_DIR}" in base_args
    # The same collectors; the listen address and the textfile directory are the test's.
    args = [a for a in base_args if not a.startswith(("--web.listen-address=", "--collector.textfile.directory="))]
    procs.append(
        subprocess.Popen(
            [NODE_EXPORTER, *args, f"--web.listen-address={exporter}", f"--collector.textfile.directory={textfile}"],
            stdout=subprocess.DEVNULL, stderr=logs[0].open("w"),
        )
    )  # fmt: skip

    # Every target mapped to its own loopback address: the exporter above for superlink-alpha,
    # nothing listening for the others (they are down). The test rewrites the documents, not the renderer.
    prom_addr, am_addr = f"127.0.0.1:{free_port('127.0.0.1')}", f"127.0.0.1:{free_port('127.0.0.1')}"
    conf = write_tree(tmp_path, plan, scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s", file_sd_refresh="1s",
                      prometheus_address=prom_addr, alertmanager_address=am_addr)  # fmt: skip
    targets_dir = tmp_path / os.path.relpath(facts.PROMETHEUS_FILE_SD_DIR, facts.PROMETHEUS_ETC)
    mapped: dict[str, str] = {}
    for n, path in enumerate(sorted(targets_dir.glob("*.json"))):
        doc = json.loads(path.read_text())
        for i, group in enumerate(doc):
            (addr,) = group["targets"]
            loop = f"127.0.{10 + n}.{10 + i}"
            mapped[addr] = exporter if addr == f"{sl.fixed_ip}:{facts.NODE_EXPORTER_PORT}" else f"{loop}:{free_port(loop)}"
            group["targets"] = [mapped[addr]]
        path.write_text(json.dumps(doc))
    assert exporter in mapped.values()

    # Alertmanager with the rendered config, its receiver pointed at a webhook on loopback (and quick).
    hook = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    _Hook.received = []
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    am_doc = copy.deepcopy(monitoring.alertmanager_config(plan.cfg))
    am_doc["receivers"] = [
        {"name": monitoring.RECEIVER, "webhook_configs": [{"url": f"http://127.0.0.1:{hook.server_port}/", "send_resolved": True}]}
    ]
    am_doc["route"].update(group_wait="1s", group_interval="1s")
    (tmp_path / "alertmanager.yml").write_text(yaml.safe_dump(am_doc))
    try:
        procs.append(
            subprocess.Popen(
                [ALERTMANAGER, *monitoring.alertmanager_args(config_file=str(tmp_path / "alertmanager.yml"), storage=str(tmp_path / "am"), listen=am_addr)],
                stdout=subprocess.DEVNULL, stderr=logs[2].open("w"),
            )
        )  # fmt: skip
        procs.append(
            subprocess.Popen(
                [PROMETHEUS, *monitoring.prometheus_args(plan.cfg, config_file=str(conf), tsdb=str(tmp_path / "tsdb"), listen=prom_addr)],
                stdout=subprocess.DEVNULL, stderr=logs[1].open("w"),
            )
        )  # fmt: skip
        api = f"http://{prom_addr}/api/v1"

        def up() -> dict[str, str]:
            active = get_json(f"{api}/targets")["data"]["activeTargets"]
            health = {t["labels"].get("host", "") + "/" + t["labels"]["job"]: t["health"] for t in active}
            scraped = "unknown" not in health.values()
            return (
                health
                if scraped and {health.get("superlink-alpha/node"), health.get("mon/prometheus"), health.get("mon/alertmanager")} == {"up"}
                else {}
            )

        health = wait_for("targets up", up, deadline, logs)
        assert health["supernode-b-one/node"] == "down" and health["supernode-a-one/dcgm"] == "down"
        assert len(health) == len(mapped) + 2

        unreachable = {k for k, v in health.items() if v == "down"}

        def firing() -> list[dict[str, Any]]:
            alerts = [a for a in get_json(f"{api}/alerts")["data"]["alerts"] if a["state"] == "firing"]
            down = {a["labels"]["host"] + "/" + a["labels"]["job"] for a in alerts if a["labels"]["alertname"] == "TargetDown"}
            offline = [a for a in alerts if a["labels"]["alertname"] == "SuperNodeOffline"]
            return alerts if offline and down == unreachable else []

        alerts = wait_for("SuperNodeOffline and TargetDown firing", firing, deadline, logs)
        offline = [a["labels"] for a in alerts if a["labels"]["alertname"] == "SuperNodeOffline"]
        assert offline == [{"alertname": "SuperNodeOffline", "tenancy": "alpha", "organisation": "a-two", "severity": "high"}]
        down = {a["labels"]["host"] for a in alerts if a["labels"]["alertname"] == "TargetDown"}
        assert {"supernode-b-one", "supernode-a-two", "gateway", "vpn-alpha"} <= down and "superlink-alpha" not in down
        assert "CertificateExpiringSoon" not in {a["labels"]["alertname"] for a in alerts}  # 90 days left

        def notified() -> list[dict[str, Any]]:
            return [a for body in list(_Hook.received) for a in body["alerts"] if a["labels"]["alertname"] == "SuperNodeOffline"]

        sent = wait_for("Alertmanager's webhook notification", notified, deadline, logs)
        assert sent[0]["labels"]["organisation"] == "a-two" and sent[0]["labels"]["environment"] == "mon"
        print(f"real Prometheus run: targets up, alerts firing and notified in {time.monotonic() - started:.1f}s")
    finally:
        hook.shutdown()
        hook.server_close()


def test_an_onprem_gpu_member_is_scraped_for_dcgm_on_its_vpn_address():
    raw = raw_config()
    raw["tenancies"][0]["organisations"] = [{**o, "gpu": True} if o["slug"] == "a-two" else o for o in raw["tenancies"][0]["organisations"]]
    plan = build_plan(load_config(raw))
    member = next(m for t in plan.tenancies for m in t.members if m.slug == "a-two")
    got = {(t.file, t.job, t.address): dict(t.labels) for t in monitoring.targets(plan)}
    assert got[("tenancy-alpha.json", "dcgm", f"{member.vpn_address}:{facts.DCGM_EXPORTER_PORT}")]["placement"] == "onprem"
    assert (
        got[("tenancy-alpha.json", "dcgm", f"{member.vpn_address}:{facts.DCGM_EXPORTER_PORT}")]
        == got[("tenancy-alpha.json", "node", f"{member.vpn_address}:{facts.NODE_EXPORTER_PORT}")]
    )
