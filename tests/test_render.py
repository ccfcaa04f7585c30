"""The rendering layer (nina.render): units, configs, the admin flwr CLI config and delivery payloads.

Checked with the real tools where there is one: systemd-analyze for units, the pinned flwr's own
project loader for the admin pyproject, bash for supernode.conf.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import exporter
import pytest
from systemd import needs_systemd_analyze, verify_text

from nina import facts, render
from nina.plan import Member

TEMPLATES = Path(render.__file__).parent / "templates"
CA = "-----BEGIN CERTIFICATE-----\nMIIBdummyCA\n-----END CERTIFICATE-----\n"
CERT = "-----BEGIN CERTIFICATE-----\nMIIBdummyLEAF\n-----END CERTIFICATE-----\n"
KEY = "-----BEGIN EC PRIVATE KEY-----\nMIGkdummy\n-----END EC PRIVATE KEY-----\n"
SSH_KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAdummy\n-----END OPENSSH PRIVATE KEY-----\n"
SSH_PUB = "ecdsa-sha2-nistp384 AAAAE2VjZHNhLXNoYTItbmlzdHAzODQAAAAIbmlzdHAzODQAAABhBdummy\n"
MEMBER = Member("main", "org-a", "Organisation A", "cloud", 1, False)

NO_ARG_RENDERERS = [
    render.run_superlink_sh,
    render.superlink_service,
    render.run_supernode_sh,
    render.supernode_service,
    render.install_files_script,
    render.membership_script,
    render.prepare_volume_script,
    render.journald_conf,
    render.logrotate_conf,
    render.node_exporter_defaults,
]


def unit_directives(text: str) -> dict[str, list[str]]:
    """`Key=value` lines of a unit file, keyed `Section.Key` (repeatable keys keep every value)."""
    out: dict[str, list[str]] = {}
    section = ""
    for line in text.splitlines():
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out.setdefault(f"{section}.{key}", []).append(value)
    return out


def test_render_never_imports_pulumi():
    code = (
        "import sys, nina.render, cloudinit.userdata\n"
        "bad = sorted(m for m in sys.modules if m == 'pulumi' or m.startswith('pulumi'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent.parent)


def test_the_superuser_is_one_fact():
    """`"root"` as an owner or group is written once, as facts.ROOT_USER."""
    import ast

    repo = Path(__file__).parent.parent
    found = set()
    for path in [*repo.glob("nina/**/*.py"), *repo.glob("cloudinit/*.py")]:
        if any(isinstance(n, ast.Constant) and n.value == "root" for n in ast.walk(ast.parse(path.read_text()))):
            found.add(str(path.relative_to(repo)))
    assert found == {"nina/facts.py", "nina/rehearse.py"}  # the rehearsal's is a directory name, not an owner
    assert facts.ROOT_USER == "root"


def test_templates_are_clean_text():
    """No tabs or trailing blanks (they would force escaped strings in user-data), newline at end."""
    # The templates nina.render uses (other modules keep theirs in subdirectories).
    names = sorted(set(re.findall(r'"([\w.-]+\.j2)"', Path(render.__file__).read_text())))
    assert len(names) >= 11, names
    for path in (TEMPLATES / n for n in names):
        text = path.read_text()
        assert text.endswith("\n"), path.name
        for n, line in enumerate(text.splitlines(), 1):
            assert "\t" not in line and line == line.rstrip(), f"{path.name}:{n} has a tab or trailing blank"


@pytest.mark.parametrize("fn", NO_ARG_RENDERERS, ids=lambda f: f.__name__)
def test_renders_deterministically_without_leftovers(fn):
    first, second = fn(), fn()
    assert first == second
    assert first.endswith("\n") and not first.endswith("\n\n")
    assert "{{" not in first and "{%" not in first
    assert "PRIVATE KEY-----" not in first


def test_superlink_unit():
    d = unit_directives(render.superlink_service())
    assert d["Service.User"] == [facts.SERVICE_USERS["superlink"]]
    assert d["Service.Group"] == [facts.SYSTEM_GROUP]
    assert d["Service.WorkingDirectory"] == [facts.SUPERLINK_OPT]
    assert f"PATH={facts.FLOWER_VENV}/bin:/usr/bin:/bin" in d["Service.Environment"]
    assert "FLWR_TELEMETRY_ENABLED=0" in d["Service.Environment"] and "FLWR_DISABLE_UPDATE_CHECK=1" in d["Service.Environment"]
    assert d["Service.ExecStart"] == [f"/bin/bash {facts.SUPERLINK_RUN_SCRIPT}"]
    assert d["Service.Restart"] == ["always"] and d["Service.RestartSec"] == ["5"]
    assert d["Unit.After"] == ["network-online.target"] and d["Unit.Wants"] == ["network-online.target"]
    assert d["Unit.RequiresMountsFor"] == [facts.SUPERLINK_STATE_DIR]
    assert d["Unit.ConditionPathExists"] == [f"{facts.SUPERLINK_CERTS}/{facts.SERVER_KEY_FILE}"]
    assert d["Install.WantedBy"] == ["multi-user.target"]
    assert "Install.Alias" not in d


def test_supernode_unit():
    d = unit_directives(render.supernode_service())
    assert d["Service.User"] == [facts.SERVICE_USERS["supernode"]]
    assert d["Service.Group"] == [facts.SYSTEM_GROUP]
    assert d["Service.WorkingDirectory"] == [facts.SUPERNODE_OPT]
    assert f"PATH={facts.FLOWER_VENV}/bin:/usr/bin:/bin" in d["Service.Environment"]
    assert "FLWR_TELEMETRY_ENABLED=0" in d["Service.Environment"] and "FLWR_DISABLE_UPDATE_CHECK=1" in d["Service.Environment"]
    assert d["Service.ExecStart"] == [f"/bin/bash {facts.SUPERNODE_RUN_SCRIPT}"]
    assert d["Unit.ConditionPathExists"] == [facts.SUPERNODE_CONF]
    assert d["Service.Restart"] == ["always"]
    assert "Install.Alias" not in d


@needs_systemd_analyze
@pytest.mark.parametrize(
    "name, fn",
    [
        ("superlink.service", render.superlink_service),
        ("supernode.service", render.supernode_service),
        (facts.SUPERLINK_BACKUP_SERVICE, render.superlink_backup_service),
        (facts.SUPERLINK_BACKUP_TIMER, render.superlink_backup_timer),
        (facts.ENV_SYNC_SERVICE, lambda: render.env_sync_service(facts.SUPERLINK_UNIT)),
        (facts.ENV_SYNC_SERVICE, lambda: render.env_sync_service(facts.SUPERNODE_UNIT)),
    ],
)
def test_systemd_analyze_verify(tmp_path, name, fn):
    # tests/systemd.py: a parse problem is a line naming our unit, whatever the exit code.
    assert verify_text(tmp_path, name, fn()) == []


@needs_systemd_analyze
def test_systemd_analyze_catches_broken_unit(tmp_path):
    """The check above can fail: a typo'd key and a bad value in our unit are reported."""
    bad = render.superlink_service().replace("RestartSec=5", "RestarSec=5").replace("Restart=always", "Restart=alwayz")
    assert len(verify_text(tmp_path, "superlink.service", bad)) >= 2


def _source_conf(tmp_path: Path, text: str) -> dict[str, str]:
    conf = tmp_path / "supernode.conf"
    conf.write_text(text)
    keys = [
        "superlink_server",
        "superlink_port",
        "local_address",
        "local_port",
        "local_partition",
        "client_credentials_key",
        "client_credentials_pub",
        "ca_certificate",
    ]
    script = f'set -eu; source "{conf}"; ' + "; ".join(f'echo "{k}=${k}"' for k in keys)
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout
    return dict(line.split("=", 1) for line in out.splitlines())


def test_supernode_conf_sources_in_bash(tmp_path):
    text = render.supernode_conf(MEMBER, f"10.100.0.40:{facts.SUPERLINK_FLEET_PORT}")
    assert text.count("\n# ") + text.startswith("# ") >= 5, "keys should be commented (manual 4.1.3.3.1)"
    sourced = _source_conf(tmp_path, text)
    # Exactly these settings, none about the rest of the federation (no partition count).
    assert {line.split("=", 1)[0] for line in text.splitlines() if line and not line.startswith("#")} == set(sourced)
    assert sourced == {
        "superlink_server": "10.100.0.40",
        "superlink_port": str(facts.SUPERLINK_FLEET_PORT),
        "local_address": facts.LOOPBACK,
        "local_port": str(facts.SUPERNODE_CLIENTAPPIO_PORT),
        "local_partition": "1",
        "client_credentials_key": facts.SUPERNODE_KEY_FILE,
        "client_credentials_pub": facts.SUPERNODE_PUB_FILE,
        "ca_certificate": facts.CA_CERT_FILE,
    }


@pytest.mark.parametrize("address", ["10.100.0.40", "10.100.0.40:", "10.100.0.40:99999", "10.0.0.1;rm -rf /:9092", ":9092"])
def test_supernode_conf_refuses_bad_address(address):
    with pytest.raises(ValueError, match="superlink address"):
        render.supernode_conf(MEMBER, address)


def _read_connection(home, monkeypatch, name):
    """The SuperLink connection `name` as flwr's CLI reads it from `home`/config.toml."""
    import click
    from flwr.cli.flower_config import read_superlink_connection

    monkeypatch.setenv("FLWR_HOME", str(home))
    try:
        return read_superlink_connection(name)
    except click.ClickException as exc:
        raise ValueError(exc.message) from None


def test_admin_flwr_config_accepted_by_flwr(tmp_path, monkeypatch):
    (tmp_path / facts.FLWR_CONFIG_FILE).write_text(render.admin_flwr_config("main"))
    conn = _read_connection(tmp_path, monkeypatch, facts.SUPERLINK_ADMIN_CONNECTION)
    assert conn.address == f"{facts.LOOPBACK}:{facts.SUPERLINK_CONTROL_PORT}"
    assert conn.root_certificates == f"{facts.SUPERLINK_CERTS}/{facts.CA_CERT_FILE}"
    # An address and no simulation options: flwr treats it as a user-managed SuperLink (it
    # starts a local simulation SuperLink only for an options-only connection) over TLS.
    assert conn.options is None and conn.insecure is False
    # Without a connection argument the CLI picks the default, which is the same one.
    assert _read_connection(tmp_path, monkeypatch, None).address == conn.address
    # flwr wrote no file of its own next to it (it writes a default config only when none exists).
    assert sorted(p.name for p in tmp_path.iterdir()) == [facts.FLWR_CONFIG_FILE]


def test_admin_flwr_config_broken_is_refused_by_flwr(tmp_path, monkeypatch):
    """The reader check above can fail: the same file with the connection renamed is refused."""
    text = render.admin_flwr_config("main").replace(f"[superlink.{facts.SUPERLINK_ADMIN_CONNECTION}]", "[superlink.other]")
    (tmp_path / facts.FLWR_CONFIG_FILE).write_text(text)
    with pytest.raises(ValueError, match="not found"):
        _read_connection(tmp_path, monkeypatch, facts.SUPERLINK_ADMIN_CONNECTION)


def test_admin_flwr_config_rejects_non_slug():
    with pytest.raises(ValueError):
        render.admin_flwr_config('x"]\n[evil')


def _files(payload: str) -> dict[str, dict]:
    data = json.loads(payload)
    return {f["path"]: f for f in data["files"]}


def test_superlink_delivery(render_plans):
    tenancy = render_plans["test"].tenancies[0]
    payload = render.superlink_delivery(tenancy, CA, CERT, KEY)
    assert payload == render.superlink_delivery(tenancy, CA, CERT, KEY)
    assert payload == json.dumps(json.loads(payload), sort_keys=True) + "\n"
    assert json.loads(payload)["restart"] == ["superlink.service", "nina-superlink-backup.timer", "nina-federation-metrics.timer"]
    files = _files(payload)
    c = facts.SUPERLINK_CERTS
    sl, g = facts.SERVICE_USERS["superlink"], facts.SYSTEM_GROUP
    expect = {
        f"{c}/ca.crt": (CA, 0o644, sl, g),
        f"{c}/server.pem": (CERT, 0o644, sl, g),
        f"{c}/server.key": (KEY, 0o600, sl, g),
        facts.LOCAL_CA_TRUST: (CA, 0o644, "root", "root"),
        f"{facts.SUPERLINK_ADMIN_FLWR_HOME}/{facts.FLWR_CONFIG_FILE}": (render.admin_flwr_config(tenancy.name), 0o644, "root", "root"),
        # The service's program and unit travel with its delivery (changing them replaces no VM).
        facts.SUPERLINK_RUN_SCRIPT: (render.run_superlink_sh(), 0o755, "root", "root"),
        f"{facts.SYSTEMD_SYSTEM_DIR}/{facts.SUPERLINK_UNIT}": (render.superlink_service(), 0o644, "root", "root"),
        facts.MEMBERSHIP_BIN: (render.membership_script(), 0o755, "root", "root"),
        # The daily backup of the SuperLink's state (nina.host.state_backup).
        facts.SUPERLINK_BACKUP_BIN: (render.launcher("state_backup"), 0o755, "root", "root"),
        # The federation's health metrics every minute (nina.host.federation_metrics; tests/test_federation_metrics.py).
        facts.FEDERATION_METRICS_BIN: (render.launcher("federation_metrics"), 0o755, "root", "root"),
        f"{facts.SYSTEMD_SYSTEM_DIR}/{facts.FEDERATION_METRICS_SERVICE}": (
            render.federation_metrics_service(tenancy.name),
            0o644,
            "root",
            "root",
        ),
        f"{facts.SYSTEMD_SYSTEM_DIR}/{facts.FEDERATION_METRICS_TIMER}": (render.federation_metrics_timer(), 0o644, "root", "root"),
    }
    # The tenancy's training environment: its lock and the step that installs it (nina-env-sync).
    env_files = render.environment_files(tenancy.environment_lock, facts.SUPERLINK_UNIT)
    expect |= {f.path: (f.content, f.mode, f.owner, f.group) for f in env_files}
    units = {f"{facts.SYSTEMD_SYSTEM_DIR}/{u}" for u in (facts.SUPERLINK_BACKUP_SERVICE, facts.SUPERLINK_BACKUP_TIMER)}
    assert {p: (f["content"], f["mode"], f["owner"], f["group"]) for p, f in files.items() if p not in units} == expect
    data = json.loads(payload)
    assert data["run"] == [facts.ENV_SYNC_SERVICE]
    # A changed lock alone restarts the SuperLink only through nina-env-sync, once the venv holds it.
    assert set(data["restart_when"][facts.SUPERLINK_UNIT]) == set(files) - {f.path for f in env_files}
    assert f"--restart {facts.SUPERLINK_UNIT}" in files[f"{facts.SYSTEMD_SYSTEM_DIR}/{facts.ENV_SYNC_SERVICE}"]["content"]
    with pytest.raises(ValueError, match="not a Flower unit"):
        render.env_sync_service("sshd.service")
    with pytest.raises(ValueError, match="nina env lock"):
        render.environment_files("flwr==1.31.0\n", facts.SUPERLINK_UNIT)
    assert (
        f"ExecStart={facts.HOST_PYTHON} -I {facts.SUPERLINK_BACKUP_BIN} backup --keep {facts.SUPERLINK_BACKUP_KEEP}"
        in files[min(units)]["content"]
    )
    assert f"OnCalendar={facts.SUPERLINK_BACKUP_SCHEDULE}" in files[max(units)]["content"]


def test_supernode_delivery(render_plans):
    plan = render_plans["test"]
    member = plan.members()[0]
    address = plan.tenancies[0].fleet_address
    payload = render.supernode_delivery(member, address, CA, SSH_KEY, SSH_PUB, plan.tenancies[0].environment_lock)
    assert json.loads(payload)["restart"] == ["supernode.service"]
    files = _files(payload)
    c, sn = facts.SUPERNODE_CERTS, facts.SERVICE_USERS["supernode"]
    assert files[f"{c}/{facts.SUPERNODE_KEY_FILE}"]["mode"] == 0o600
    assert files[f"{c}/{facts.SUPERNODE_KEY_FILE}"]["owner"] == sn
    assert files[f"{c}/{facts.SUPERNODE_PUB_FILE}"]["content"] == SSH_PUB
    assert files[f"{c}/{facts.CA_CERT_FILE}"]["content"] == CA
    assert files[facts.SUPERNODE_CONF]["content"] == render.supernode_conf(member, address)
    assert (files[facts.SUPERNODE_RUN_SCRIPT]["content"], files[facts.SUPERNODE_RUN_SCRIPT]["mode"]) == (render.run_supernode_sh(), 0o755)
    assert files[f"{facts.SYSTEMD_SYSTEM_DIR}/{facts.SUPERNODE_UNIT}"]["content"] == render.supernode_service()
    assert files[facts.LOCAL_CA_TRUST]["owner"] == "root"
    assert files[facts.FLOWER_ENV_LOCK]["content"] == plan.tenancies[0].environment_lock
    assert (files[facts.FLOWER_ENV_LOCK]["mode"], files[facts.FLOWER_ENV_LOCK]["owner"]) == (0o644, "root")
    assert f"--restart {facts.SUPERNODE_UNIT}" in files[f"{facts.SYSTEMD_SYSTEM_DIR}/{facts.ENV_SYNC_SERVICE}"]["content"]
    assert json.loads(payload)["run"] == [facts.ENV_SYNC_SERVICE]
    # The deprecated flag is not passed (the run script's comment names it, its command does not).
    commands = [ln for ln in files[facts.SUPERNODE_RUN_SCRIPT]["content"].splitlines() if not ln.lstrip().startswith("#")]
    assert not any("--auth-supernode-public-key" in ln for ln in commands)
    assert "--auth-supernode-public-key" not in payload.replace(json.dumps(files[facts.SUPERNODE_RUN_SCRIPT]["content"]), "")


def test_delivery_refuses_wrong_material(render_plans):
    tenancy = render_plans["test"].tenancies[0]
    member = render_plans["test"].members()[0]
    with pytest.raises(ValueError, match="server key"):
        render.superlink_delivery(tenancy, CA, CERT, CERT)
    with pytest.raises(ValueError, match="private key"):
        # a SEC1 PEM key is refused by flower-supernode (exit 302): only OpenSSH format works
        render.supernode_delivery(member, tenancy.fleet_address, CA, KEY, SSH_PUB, tenancy.environment_lock)


@pytest.mark.parametrize("path", ["etc/x", "/etc/../root/x", "/etc//x", "/etc/x/", "/"])
def test_delivered_file_refuses_bad_paths(path):
    with pytest.raises(ValueError):
        render.DeliveredFile(path, "x", 0o644, "root", "root")


def test_delivery_payload_refuses_duplicates_and_bad_units():
    f = render.DeliveredFile("/etc/x", "x", 0o644, "root", "root")
    with pytest.raises(ValueError, match="duplicate"):
        render.delivery_payload([f, f], [])
    with pytest.raises(ValueError, match="unit"):
        render.delivery_payload([f], ["superlink; reboot"])


def test_housekeeping_files():
    import configparser

    journald = configparser.ConfigParser()
    journald.read_string(render.journald_conf())
    assert dict(journald["Journal"]) == {
        "systemmaxuse": facts.JOURNALD_SYSTEM_MAX_USE,
        "systemkeepfree": facts.JOURNALD_SYSTEM_KEEP_FREE,
    }
    args = exporter.rendered_args()
    # The systemd collector reports the services' units and nothing else (node exporter anchors the regex).
    [unit_include] = [a for a in args if a.startswith("--collector.systemd.unit-include=")]
    regex = re.compile(unit_include.split("=", 1)[1])
    for unit in ("superlink.service", "supernode.service", "keycloak.service", "jupyterhub.service", "openvpn-server@server.service"):
        assert regex.fullmatch(unit), unit
    for unit in ("cron.service", "superlinkXservice", "superlink.service.d", "getty@tty1.service"):
        assert not regex.fullmatch(unit), unit
    assert "\\" not in unit_include  # no backslash for systemd's EnvironmentFile to reinterpret
    assert args == [
        f"--web.listen-address=:{facts.NODE_EXPORTER_PORT}",
        "--collector.systemd",
        unit_include,
        "--collector.systemd.enable-restarts-metrics",
        "--collector.textfile",
        f"--collector.textfile.directory={facts.NODE_EXPORTER_TEXTFILE_DIR}",
    ]
    logrotate = render.logrotate_conf()
    body = [line.strip() for line in logrotate.splitlines() if line.strip() and not line.startswith("#")]
    assert body[0] == f"{facts.NODE_EXPORTER_LOG} {{" and body[-1] == "}"
    assert set(body[1:-1]) == {"weekly", "rotate 10", "copytruncate", "compress", "delaycompress", "notifempty", "missingok"}


def test_node_exporter_on_a_tunnel_address_only():
    """An on-premise kit host's exporter listens on its VPN address alone, after the VPN client,
    retried until the address exists; anything but an IPv4 address is refused."""
    text = render.node_exporter_defaults("192.168.99.10")
    assert f'ARGS="--web.listen-address=192.168.99.10:{facts.NODE_EXPORTER_PORT} ' in text
    assert f'ARGS="--web.listen-address=:{facts.NODE_EXPORTER_PORT} ' in render.node_exporter_defaults()
    for bad in ("0.0.0.0; rm -rf /", "host.example", "192.168.99.10 --web.config.file=/tmp/x"):
        with pytest.raises(ValueError, match="not an IPv4 address"):
            render.node_exporter_defaults(bad)
    dropin = render.node_exporter_vpn_dropin().splitlines()
    assert f"After={facts.OPENVPN_CLIENT_UNIT}" in dropin and "StartLimitIntervalSec=0" in dropin
    assert "Restart=always" in dropin and f"RestartSec={facts.NODE_EXPORTER_RETRY_SECONDS}" in dropin
