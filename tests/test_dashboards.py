"""nina.dashboards: the Grafana dashboards, generated with grafana-foundation-sdk.

Checked as data (deterministic, fixed uids, one datasource, the plan's tenancies, thresholds from
nina:monitoring.alerts, expressions from nina.monitoring), decoded back with the SDK's own models
(nothing the SDK does not know is kept), every PromQL expression parsed by the real `promtool`, and
the platform, per-host and federation queries evaluated by a real Prometheus scraping a real node
exporter whose textfile directory holds the real nina-federation-metrics and nina-cert-expiry
output (scripts/bootstrap --test-tools installs prometheus and the node exporter).
"""

from __future__ import annotations

import datetime as dt
import http.server
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from exporter import rendered_args as rendered_node_exporter_args
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models.dashboard import Dashboard as DashboardModel
from test_cert_expiry import Host as CertHost
from test_cert_expiry import make_cert
from test_federation_metrics import flwr_like
from test_monitoring import (
    NODE_EXPORTER,
    PROMETHEUS,
    PROMTOOL,
    TOOLS,
    free_port,
    get_json,
    make_plan,
    raw_config,
    stop_all,
    wait_for,
    write_tree,
)

from nina import dashboards, facts, monitoring, services
from nina.config import load_config
from nina.host import backups, federation_metrics
from nina.plan import Plan, build_plan

needs_promtool = pytest.mark.skipif(not PROMTOOL, reason=f"promtool missing; {TOOLS}")
needs_servers = pytest.mark.skipif(not (PROMETHEUS and NODE_EXPORTER), reason=f"prometheus or node exporter missing; {TOOLS}")

# What the variables stand for in the tests: the loopback host below and the test plan's tenancy.
LOOPBACK_HOST = "superlink-alpha"
TENANCY = "alpha"
# The units the loopback host's (stand-in) systemd series report, and their state.
UNITS = {"ssh.service": "active", "superlink.service": "failed", "cron.service": "failed"}


@pytest.fixture(scope="module")
def plan() -> Plan:
    return make_plan()


@pytest.fixture(scope="module")
def boards(plan) -> dict[str, dict[str, Any]]:
    return {name: json.loads(text) for name, text in dashboards.dashboard_files(plan).items()}


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in board["panels"] if p["type"] != "row"]


def queries(board: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expr) of every target."""
    return [(p["title"], t["expr"]) for p in panels(board) for t in p["targets"]]


def concrete(expr: str, tenancy: str = TENANCY, host: str = LOOPBACK_HOST) -> str:
    if "DCGM_" in expr and host == LOOPBACK_HOST:
        host = GPU_HOST
    """The expression as Grafana sends it, the template variables substituted."""
    out = expr.replace("$__rate_interval", "1m").replace("$tenancy", tenancy).replace("$host", host)
    assert "$" not in out, out
    return out


# --- as data ------------------------------------------------------------------------------------


def test_files_are_deterministic_and_named_by_fixed_uids(plan, boards):
    files = dashboards.dashboard_files(plan)
    assert files == dashboards.dashboard_files(make_plan())  # byte-identical from an equal plan
    assert list(files) == sorted(files) == sorted(f"{uid}.json" for uid in dashboards.UIDS.values())
    assert {b["uid"] for b in boards.values()} == {"nina-platform", "nina-host", "nina-gpu", "nina-federation"}
    for name, text in files.items():
        assert text.endswith("}\n") and not text.endswith("\n\n")
        assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n", name  # sorted keys
        board = boards[name]
        assert name == f"{board['uid']}.json"
        ids = [p["id"] for p in board["panels"]]
        assert ids == list(range(1, len(ids) + 1)), name  # unique, stable
        for p in panels(board):
            assert p["title"] and len(p["description"]) > 20, (name, p["title"])  # written for an operator
            refs = [t["refId"] for t in p["targets"]]
            assert p["targets"] and len(set(refs)) == len(refs), (name, p["title"])


def test_same_bytes_in_another_interpreter(plan):
    """No set or hash order leaks into the files: another process with another hash seed writes the same."""
    code = (
        "import sys, json; sys.path.insert(0, 'tests'); from test_monitoring import make_plan; "
        "from nina import dashboards; print(json.dumps(dashboards.dashboard_files(make_plan())))"
    )
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONHASHSEED": "0" if os.environ.get("PYTHONHASHSEED") != "0" else "1"}
    out = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=120, check=True).stdout
    assert json.loads(out) == dashboards.dashboard_files(plan)


def test_every_panel_query_and_variable_uses_the_provisioned_datasource(boards):
    assert facts.GRAFANA_DATASOURCE_UID == "nina-prometheus"
    expected = {"type": "prometheus", "uid": facts.GRAFANA_DATASOURCE_UID}
    seen = 0
    for board in boards.values():
        for p in panels(board):
            assert p["datasource"] == expected, p["title"]
            for t in p["targets"]:
                assert t["datasource"] == expected, p["title"]
                seen += 1
        for v in board.get("templating", {}).get("list", []):
            if v["type"] == "query":
                assert v["datasource"] == expected
    assert seen > 30
    # ... and no other datasource uid anywhere in the text.
    for text in dashboards.dashboard_files(make_plan()).values():
        assert set(re.findall(r'"uid": "([^"]+)"', text)) - set(dashboards.UIDS.values()) == {facts.GRAFANA_DATASOURCE_UID}


def test_the_sdk_decodes_every_dashboard_and_loses_nothing(boards):
    """Schema check with the SDK's own models: decoding then encoding keeps every field (an
    unknown or mistyped one would be dropped or fail); the SDK only adds its defaults."""
    register_default_plugins()

    def within(small: Any, big: Any, where: str) -> None:
        if isinstance(small, dict):
            assert isinstance(big, dict), where
            for k, v in small.items():
                assert k in big, f"{where}.{k} dropped by the SDK's model"
                within(v, big[k], f"{where}.{k}")
        elif isinstance(small, list):
            assert isinstance(big, list) and len(big) == len(small), where
            for i, (s, b) in enumerate(zip(small, big, strict=True)):
                within(s, b, f"{where}[{i}]")
        else:
            assert small == big, where

    for name, board in boards.items():
        decoded = DashboardModel.from_json(board)
        again = json.loads(JSONEncoder(sort_keys=True).encode(decoded))
        within(board, again, name)
        assert DashboardModel.from_json(again).uid == board["uid"]
    # A misspelt field is not in the model: the SDK drops it, and the check says so.
    broken = json.loads(json.dumps(boards["nina-gpu.json"]))
    broken["panels"][0]["descripton"] = broken["panels"][0].pop("description")
    with pytest.raises(AssertionError, match=r"panels\[0\]\.descripton dropped"):
        within(broken, json.loads(JSONEncoder(sort_keys=True).encode(DashboardModel.from_json(broken))), "nina-gpu.json")


def test_variables_host_and_the_plans_tenancies(boards):
    (host,) = boards["nina-host.json"]["templating"]["list"]
    assert host["name"] == "host" and host["query"] == f'label_values(up{{job="{monitoring.NODE_JOB}"}}, host)'
    (gpu,) = boards["nina-gpu.json"]["templating"]["list"]
    assert gpu["name"] == "host" and gpu["query"] == f'label_values(up{{job="{monitoring.DCGM_JOB}"}}, host)'
    assert gpu["multi"] and gpu["includeAll"]
    (tenancy,) = boards["nina-federation.json"]["templating"]["list"]
    assert tenancy["type"] == "custom" and tenancy["query"] == "alpha,beta"
    assert [o["value"] for o in tenancy["options"]] == ["alpha", "beta"] and tenancy["current"]["value"] == "alpha"
    # Another tenancy in the plan: it is offered, and only the federation dashboard changes.
    raw = raw_config()
    raw["tenancies"].append(
        {
            "name": "gamma",
            "organisations": [{"slug": "g-one", "name": "G One", "placement": "cloud", "partition_id": 0, "cidr": "10.123.0.0/24"}],
        }
    )
    more = dashboards.dashboard_files(build_plan(load_config(raw)))
    (tenancy,) = json.loads(more["nina-federation.json"])["templating"]["list"]
    assert tenancy["query"] == "alpha,beta,gamma"
    before = dashboards.dashboard_files(make_plan())
    assert {n for n in more if more[n] != before[n]} == {"nina-federation.json"}
    # Every federation query is narrowed to the chosen tenancy.
    for title, expr in queries(boards["nina-federation.json"]):
        assert 'tenancy="$tenancy"' in expr, title


def _thresholds(board: dict[str, Any], title: str) -> list[float]:
    (p,) = [p for p in panels(board) if p["title"] == title]
    return [s["value"] for s in p["fieldConfig"]["defaults"]["thresholds"]["steps"][1:]]


def test_thresholds_come_from_the_alert_config(boards):
    a = make_plan().cfg.monitoring.alerts
    platform, gpu = boards["nina-platform.json"], boards["nina-gpu.json"]
    assert _thresholds(platform, "CPU load per CPU") == [a.cpu_load_medium, a.cpu_load_high]
    assert _thresholds(platform, "Memory available") == [a.memory_available_high, a.memory_available_medium]
    assert _thresholds(platform, "Disk free on the priority mounts") == [a.disk_free_high, a.disk_free_medium, a.disk_free_low]
    assert _thresholds(platform, "Certificate days left") == [a.certificate_expiry_days]
    assert _thresholds(gpu, "Temperature") == [a.gpu_temperature_celsius]
    assert _thresholds(gpu, "Frame buffer used (share)") == [a.gpu_memory_used]
    # Colours by severity: below the high limit red, then orange (medium), yellow (low), green.
    (disk,) = [p for p in panels(platform) if p["title"] == "Disk free on the priority mounts"]
    assert [s["color"] for s in disk["fieldConfig"]["defaults"]["thresholds"]["steps"]] == ["red", "orange", "yellow", "green"]
    # The network panel draws what is sent below zero: no minimum cuts it off.
    (net,) = [p for p in panels(boards["nina-host.json"]) if p["title"] == "Network"]
    assert "min" not in net["fieldConfig"]["defaults"] and any(t["expr"].startswith("-rate(") for t in net["targets"])
    # Other limits in nina:monitoring: the panels follow.
    other = make_plan(alerts={"gpu_temperature_celsius": 78, "cpu_load_medium": 0.7, "cpu_load_high": 0.9, "certificate_expiry_days": 14})
    changed = {n: json.loads(t) for n, t in dashboards.dashboard_files(other).items()}
    assert _thresholds(changed["nina-gpu.json"], "Temperature") == [78]
    assert _thresholds(changed["nina-platform.json"], "CPU load per CPU") == [0.7, 0.9]
    assert _thresholds(changed["nina-platform.json"], "Certificate days left") == [14]


def test_expressions_are_nina_monitorings(plan, boards):
    """The alert expressions themselves, and only metric names nina.monitoring defines for nina's
    own and DCGM's metrics (nothing retyped)."""
    exprs = {e for b in boards.values() for _, e in queries(b)}
    assert monitoring.cpu_load_expr() in exprs and monitoring.memory_available_expr() in exprs
    assert monitoring.disk_free_expr(plan) in exprs
    assert f"{monitoring.unit_state_expr('failed')} == 1" in exprs
    assert monitoring.gpu_memory_used_expr('host=~"$host"') in exprs
    assert monitoring.cpu_load_expr('host="$host"') in exprs
    # The alert rules use the same text.
    rules = {r["expr"] for doc in monitoring.rule_documents(plan).values() for r in doc["groups"][0]["rules"]}
    assert f"{monitoring.cpu_load_expr()} > {plan.cfg.monitoring.alerts.cpu_load_medium}" in rules
    names = {n for e in exprs for n in re.findall(r"\b(nina_[a-z_]+|DCGM_[A-Z_]+)\b", e)}
    defined = {*monitoring.METRICS.values(), *(v for k, v in vars(monitoring).items() if k.startswith("DCGM_") and k != "DCGM_JOB")}
    assert names <= defined and len(names) >= 14, names - defined
    assert set(monitoring.METRICS.values()) <= names  # every metric of nina's collectors is on a panel
    # Every federation metric the collector writes has a panel.
    assert {v for k, v in monitoring.METRICS.items() if v.startswith("nina_federation_")} <= names


# --- promtool ------------------------------------------------------------------------------------


def promtool_check(exprs: list[tuple[str, str]], directory: Path) -> subprocess.CompletedProcess[str]:
    """Each expression as a recording rule; `promtool check rules` parses them all."""
    rules = [{"record": f"dashboard:query:{i}", "expr": e} for i, (_, e) in enumerate(exprs)]
    path = directory / "dashboards.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}, sort_keys=False))
    return subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)


@needs_promtool
def test_promtool_parses_every_expression(boards, tmp_path):
    exprs = [(t, concrete(e)) for b in boards.values() for t, e in queries(b)]
    proc = promtool_check(exprs, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in proc.stdout, proc.stdout
    # The GPU dashboard's "All": Grafana sends the values as a regex alternation.
    gpu = [(t, e.replace("$host", "supernode-a-one|supernode-x")) for t, e in queries(boards["nina-gpu.json"])]
    assert promtool_check(gpu, tmp_path).returncode == 0
    # One broken expression fails the check, and promtool names it.
    broken = [*exprs, ("broken", concrete(monitoring.cpu_load_expr('host="$host"')).replace(")", "", 1))]
    proc = promtool_check(broken, tmp_path)
    assert proc.returncode != 0 and "parse error" in proc.stdout + proc.stderr, proc.stdout + proc.stderr


# --- a real Prometheus ------------------------------------------------------------------------------


GPU_HOST = "supernode-a-one"  # the test plan's GPU SuperNode
# Per GPU: temperature (C), frame buffer used and free (MiB), utilisation (%), power (W).
GPUS = {"0": (62, 30000, 10960, 97, 301.5), "1": (88, 4000, 36960, 3, 65.25)}


class _Dcgm(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        names = (
            monitoring.DCGM_TEMPERATURE,
            monitoring.DCGM_FB_USED,
            monitoring.DCGM_FB_FREE,
            monitoring.DCGM_UTILISATION,
            monitoring.DCGM_POWER,
        )
        body = "".join(
            f"# TYPE {name} gauge\n"
            + "".join(
                f'{name}{{gpu="{g}",UUID="GPU-{g}",device="nvidia{g}",modelName="NVIDIA A100",Hostname="{GPU_HOST}"}} {values[i]}\n'
                for g, values in GPUS.items()
            )
            for i, name in enumerate(names)
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


class Live:
    def __init__(self, api: str, plan: Plan) -> None:
        self.api = api
        self.plan = plan

    def query(self, expr: str) -> list[dict[str, Any]]:
        url = f"{self.api}/query?query={urllib.parse.quote(expr)}"
        body = get_json(url)
        assert body["status"] == "success", body
        result = body["data"]["result"]
        return result if isinstance(result, list) else [result]


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> Iterator[Live]:
    """One Prometheus (the rendered config and rules, 1 s intervals) scraping one node exporter on
    loopback as superlink-alpha, its textfile directory written by the real collectors: the
    federation's (a flwr-like state: a-one online, a-two past its deadline) and the certificates'."""
    if not (PROMETHEUS and NODE_EXPORTER):
        pytest.skip(f"prometheus or node exporter missing; {TOOLS}")
    tmp = tmp_path_factory.mktemp("live")
    plan = make_plan(alerts={"target_down_for": "5s"})
    certs = CertHost(tmp / "host")
    (certs.certs / "server.pem").write_text(make_cert(LOOPBACK_HOST, dt.datetime.now(dt.UTC) + dt.timedelta(days=90)))
    proc, _ = certs.run()
    assert proc.returncode == 0, proc.stderr
    members = tmp / "members"
    members.mkdir(mode=0o750)
    (members / "a-one.node_id").write_text(f"{2**64 - 5}\n")  # online in flwr_like's state
    (members / "a-two.node_id").write_text("7\n")  # its heartbeat deadline passed
    flwr_like(tmp / "state.db")
    assert (
        federation_metrics.main(
            ["--tenancy", TENANCY, "--state-db", str(tmp / "state.db"), "--members-dir", str(members), "--textfile-dir", str(certs.out)]
        )
        == 0
    )
    # A backup program's metrics as nina.host.backups writes them (newest backup 3 h old, run ok).
    now = int(time.time())
    (certs.out / facts.BACKUP_METRICS_FILE.format(what=facts.SUPERLINK_BACKUP_WHAT)).write_text(
        backups.exposition(facts.SUPERLINK_BACKUP_WHAT, True, now, now - 3 * 3600)
    )
    assert sorted(p.name for p in certs.out.iterdir()) == sorted(
        [facts.CERT_EXPIRY_FILE, facts.FEDERATION_METRICS_FILE, facts.BACKUP_METRICS_FILE.format(what=facts.SUPERLINK_BACKUP_WHAT)]
    )
    # The one stand-in: the systemd collector needs systemd's D-Bus, absent here, so the unit series
    # it would export (its metric, labels and one series per state) come through the textfile
    # collector: a watched unit active, a watched one failed, an unwatched one failed.
    (certs.out / "units.prom").write_text(
        "# HELP node_systemd_unit_state Systemd unit\n# TYPE node_systemd_unit_state gauge\n"
        + "".join(
            f'node_systemd_unit_state{{name="{unit}",state="{state}",type="simple"}} {int(state == now)}\n'
            for unit, now in UNITS.items()
            for state in ("activating", "active", "deactivating", "failed", "inactive")
        )
    )

    logs = [tmp / "node-exporter.log", tmp / "prometheus.log"]
    exporter = f"127.0.0.2:{free_port('127.0.0.2')}"
    args = [a for a in rendered_node_exporter_args() if not a.startswith(("--web.listen-address=", "--collector.textfile.directory="))]
    started = [
        subprocess.Popen(
            [NODE_EXPORTER, *args, f"--web.listen-address={exporter}", f"--collector.textfile.directory={certs.out}"],
            stdout=subprocess.DEVNULL,
            stderr=logs[0].open("w"),
        )
    ]
    # The second stand-in: DCGM exporter's text (its metric names and labels, two GPUs) served on
    # loopback as GPU_HOST's dcgm target, since there is no GPU here.
    dcgm = http.server.ThreadingHTTPServer(("127.0.0.3", 0), _Dcgm)
    threading.Thread(target=dcgm.serve_forever, daemon=True).start()
    try:
        prom_addr = f"127.0.0.1:{free_port('127.0.0.1')}"
        am_addr = f"127.0.0.1:{free_port('127.0.0.1')}"  # nothing there: alerts are evaluated, not sent
        conf_dir = tmp / "prometheus"
        conf_dir.mkdir()
        conf = write_tree(
            conf_dir, plan, scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s", file_sd_refresh="1s",
            prometheus_address=prom_addr, alertmanager_address=am_addr,
        )  # fmt: skip
        # superlink-alpha's node exporter is the one above; every other target an unused loopback port.
        sl, gpu = plan.host_by_name[LOOPBACK_HOST], plan.host_by_name[GPU_HOST]
        mapped = {
            f"{sl.fixed_ip}:{facts.NODE_EXPORTER_PORT}": exporter,
            f"{gpu.fixed_ip}:{facts.DCGM_EXPORTER_PORT}": f"127.0.0.3:{dcgm.server_port}",
        }
        targets_dir = conf_dir / os.path.relpath(facts.PROMETHEUS_FILE_SD_DIR, facts.PROMETHEUS_ETC)
        for n, path in enumerate(sorted(targets_dir.glob("*.json"))):
            doc = json.loads(path.read_text())
            for i, group in enumerate(doc):
                (addr,) = group["targets"]
                loop = f"127.0.{10 + n}.{10 + i}"
                group["targets"] = [mapped.get(addr) or f"{loop}:{free_port(loop)}"]
            path.write_text(json.dumps(doc))
        started.append(
            subprocess.Popen(
                [PROMETHEUS, *monitoring.prometheus_args(plan.cfg, config_file=str(conf), tsdb=str(tmp / "tsdb"), listen=prom_addr)],
                stdout=subprocess.DEVNULL,
                stderr=logs[1].open("w"),
            )
        )
        live = Live(f"http://{prom_addr}/api/v1", plan)
        deadline = time.monotonic() + 60
        # Several scrapes (rates need two samples in their window) and TargetDown firing.
        wait_for(
            "superlink-alpha scraped and TargetDown firing",
            lambda: (
                live.query(f'count_over_time(up{{host="{LOOPBACK_HOST}", job="node"}}[1m]) >= 5')
                and live.query(f'up{{host="{GPU_HOST}", job="dcgm"}} == 1')
                and live.query('ALERTS{alertname="TargetDown", alertstate="firing"}')
            ),
            deadline,
            logs,
        )
        yield live
    finally:
        dcgm.shutdown()
        dcgm.server_close()
        stop_all(started)


@needs_servers
@pytest.mark.timeout(180)
@pytest.mark.parametrize("name", ["nina-platform.json", "nina-host.json", "nina-federation.json", "nina-gpu.json"])
def test_a_real_prometheus_answers_every_query(live, boards, name):
    """Every query of the dashboard returns series (the GPU dashboard's from the DCGM stand-in)."""
    answered: dict[str, int] = {}
    for title, expr in queries(boards[name]):
        result = live.query(concrete(expr))
        assert result, f"{name}: {title!r}: {concrete(expr)} returned nothing"
        answered[title] = len(result)
    assert set(answered) == {t for t, _ in queries(boards[name])}
    print(f"\n{name}: {len(answered)} panels answered by the real Prometheus: {answered}")


@needs_servers
@pytest.mark.timeout(180)
def test_real_values_on_the_panels(live, boards):
    """Not only series: the values the panels show are the loopback host's and the fake tenancy's."""

    def by(expr: str, label: str) -> dict[str, float]:
        return {r["metric"].get(label, ""): float(r["value"][1]) for r in live.query(concrete(expr))}

    fed = dict(queries(boards["nina-federation.json"]))
    assert by(fed["SuperNode online per organisation"], "organisation") == {"a-one": 1.0, "a-two": 0.0}
    registered, online = (e for t, e in queries(boards["nina-federation.json"]) if t == "SuperNodes registered and online")
    assert by(registered, "") == {"": 2.0} and by(online, "") == {"": 1.0}
    assert by(fed["Metrics collector"], "") == {"": 1.0}
    assert set(by(fed["Runs by status"], "status")) == set(federation_metrics.RUN_STATUSES)
    # Another tenancy's dashboard shows nothing of alpha's.
    assert not live.query(concrete(fed["SuperNode online per organisation"], tenancy="beta"))
    platform = dict(queries(boards["nina-platform.json"]))
    days = by(platform["Certificate days left"], "host")
    assert list(days) == [LOOPBACK_HOST] and 89 < days[LOOPBACK_HOST] <= 90
    assert by(platform["Certificates unreadable"], "") == {"": 0.0}
    hours = by(platform["Hours since the newest backup"], "what")
    assert list(hours) == [facts.SUPERLINK_BACKUP_WHAT] and 3 <= hours[facts.SUPERLINK_BACKUP_WHAT] < 3.5
    assert by(platform["Backup runs failed"], "") == {"": 0.0}
    assert 0 <= by(platform["Hours since the last backup run"], "what")[facts.SUPERLINK_BACKUP_WHAT] < 0.5
    gpus = {t: e for t, e in queries(boards["nina-gpu.json"])}
    assert by(gpus["Temperature"], "gpu") == {g: v[0] for g, v in GPUS.items()}
    assert by(gpus["Frame buffer used (share)"], "gpu") == pytest.approx({g: v[1] / (v[1] + v[2]) for g, v in GPUS.items()})
    assert by(gpus["Utilisation"], "gpu") == {g: v[3] for g, v in GPUS.items()}
    assert by(gpus["Power"], "gpu") == {g: v[4] for g, v in GPUS.items()}
    # GPU 1 at 88 C is past the dashboard's (and the alert's) line, GPU 0 is not.
    (line,) = _thresholds(boards["nina-gpu.json"], "Temperature")
    assert GPUS["1"][0] >= line > GPUS["0"][0]
    # Only watched units: cron is not one of nina's.
    assert "cron.service" not in services.watched_units() and {"ssh.service", "superlink.service"} <= set(services.watched_units())
    assert by(platform["Failed units"], "name") == {"superlink.service": 1.0}
    host = dict(queries(boards["nina-host.json"]))
    assert by(host["Watched units active"], "name") == {"ssh.service": 1.0, "superlink.service": 0.0}
    load = by(platform["CPU load per CPU"], "host")
    assert list(load) == [LOOPBACK_HOST] and load[LOOPBACK_HOST] >= 0
    assert by(platform["Disk free on the priority mounts"], "mountpoint").keys() == {"/"}
    down = by(platform["Targets down"], "")[""]
    up = {
        r["metric"]["host"] + "/" + r["metric"]["job"]: float(r["value"][1])
        for r in live.query(platform["Targets up/down per job and host"])
    }
    assert up[f"{LOOPBACK_HOST}/node"] == 1.0 and down == sum(1 for v in up.values() if v == 0) > 0
    firing = {r["metric"]["alertname"] for r in live.query(platform["Firing alerts"])}
    assert "TargetDown" in firing
    # The per-host variable lists the node job's hosts, the loopback one among them.
    # The variables' label_values: the node job's hosts (every host of the plan and the on-premise
    # SuperNodes), the DCGM job's (the GPU SuperNode), as Grafana asks Prometheus for them.
    for board, job in (("nina-host.json", monitoring.NODE_JOB), ("nina-gpu.json", monitoring.DCGM_JOB)):
        (variable,) = boards[board]["templating"]["list"]
        match = re.fullmatch(r"label_values\((.+), host\)", variable["query"])
        assert match, variable["query"]
        hosts = get_json(f"{live.api}/label/host/values?match[]=" + urllib.parse.quote(match[1]))["data"]
        assert hosts == sorted({t.labels["host"] for t in monitoring.targets(live.plan) if t.job == job}), board
    assert LOOPBACK_HOST in hosts or job == monitoring.DCGM_JOB
