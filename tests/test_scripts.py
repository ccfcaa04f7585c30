"""The rendered programs, run for real: wrapper scripts against the pinned flwr's own argument
parsers, nina-install-files on a real delivery payload, nina-membership against a fake
`flwr`, nina-prepare-volume against fake disk tools, plus one end-to-end run of a real
SuperLink and SuperNode (in a private network namespace) wired by these files.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from nina import facts, render
from nina.plan import Member

SHELLCHECK = shutil.which("shellcheck") or ""  # "" when missing (the tests skip)
CA = "-----BEGIN CERTIFICATE-----\nMIIBdummyCA\n-----END CERTIFICATE-----\n"
CERT = "-----BEGIN CERTIFICATE-----\nMIIBdummyLEAF\n-----END CERTIFICATE-----\n"
KEY = "-----BEGIN EC PRIVATE KEY-----\nMIGkdummy\n-----END EC PRIVATE KEY-----\n"
PUB_A = "ecdsa-sha2-nistp384 AAAAE2VjZHNhLXNoYTItbmlzdHAzODQAAAAIbmlzdHAzODQAAABhBAAAA= org-a\n"
PUB_B = "ecdsa-sha2-nistp384 AAAAE2VjZHNhLXNoYTItbmlzdHAzODQAAAAIbmlzdHAzODQAAABhBBBBB=\n"
MEMBER = Member("main", "org-a", "Organisation A", "cloud", 1, False)
SHELL_SCRIPTS = {
    "run_superlink.sh": render.run_superlink_sh,
    "run_supernode.sh": render.run_supernode_sh,
    "nina-prepare-volume": render.prepare_volume_script,
    "nina-bootstrap-check": lambda: render.bootstrap_check_script(
        "lab",
        [
            ["package", "python3-venv"],
            ["member", "ubuntu", "fl_system"],
            ["path", "2775", "root", "fl_system", "/opt/python"],
            ["python_dist", "/opt/python/flower_env", "flwr", "1.25.0"],
            ["executable", "/bin/sh"],
            ["mounted", "/"],
            ["active", "x.service"],
        ],
    ),
}


def write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


# --- static checks -----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SHELL_SCRIPTS))
def test_shell_scripts_parse_and_pass_shellcheck(tmp_path, name):
    script = write(tmp_path / name, SHELL_SCRIPTS[name](), 0o755)
    subprocess.run(["bash", "-n", str(script)], check=True)
    if not SHELLCHECK:
        pytest.skip("shellcheck missing (scripts/bootstrap --test-tools installs it)")
    proc = subprocess.run([SHELLCHECK, "--shell=bash", "--severity=style", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


@pytest.mark.parametrize("fn", [render.install_files_script, render.membership_script], ids=lambda f: f.__name__)
def test_python_scripts_use_only_the_stdlib(tmp_path, fn):
    # -I -S: no site-packages and no user paths, as with the host's bare python3.
    script = write(tmp_path / "prog", fn(render.SOURCE_ROOT), 0o755)
    assert script.read_text().startswith("#!/usr/bin/python3 -I\n")
    proc = subprocess.run([sys.executable, "-I", "-S", str(script), "--help"], capture_output=True, text=True, input="")
    assert proc.returncode in (0, 2) and "usage" in (proc.stdout + proc.stderr).lower(), proc.stderr


# --- wrapper scripts against the pinned flwr's parsers --------------------------------------

SHIM = """#!{python}
import json, os, sys
from {module} import {func} as make_parser
args = make_parser().parse_args(sys.argv[1:])  # exits 2 on an unknown flag, like the real program
env = {{k: os.environ.get(k) for k in ("FLWR_TELEMETRY_ENABLED", "FLWR_DISABLE_UPDATE_CHECK", "FLWR_HOME", "PATH")}}
print("SHIM " + json.dumps({{"args": vars(args), "env": env}}, default=str))
"""


@pytest.fixture
def fake_venv(tmp_path):
    """A venv whose activate is empty and whose flower-* programs only parse their arguments."""
    venv = tmp_path / "venv"
    write(venv / "bin" / "activate", "")
    write(
        venv / "bin" / "flower-superlink",
        SHIM.format(python=sys.executable, module="flwr.server.app", func="_parse_args_run_superlink"),
        0o755,
    )
    write(
        venv / "bin" / "flower-supernode",
        SHIM.format(python=sys.executable, module="flwr.supernode.cli.flower_supernode", func="_parse_args_run_supernode"),
        0o755,
    )
    return venv


def run_wrapper(tmp_path, text, env):
    script = write(tmp_path / "wrapper.sh", text, 0o755)
    base = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    proc = subprocess.run(["bash", str(script)], env={**base, **env}, capture_output=True, text=True, timeout=60)
    parsed = [json.loads(line[5:]) for line in proc.stdout.splitlines() if line.startswith("SHIM ")]
    return proc, (parsed[0] if parsed else None)


def test_superlink_command_line_parses_in_flwr(tmp_path, fake_venv):
    conf, state, home = tmp_path / "conf", tmp_path / "state", tmp_path / "home"
    env = {"PYTHONENV": str(fake_venv), "CONF_DIR": str(conf), "STATE_DIR": str(state), "FLWR_HOME": str(home)}
    proc, out = run_wrapper(tmp_path, render.run_superlink_sh(), env)
    assert proc.returncode == 0, proc.stderr
    args = out["args"]
    assert args["ssl_ca_certfile"] == f"{conf}/certs/{facts.CA_CERT_FILE}"
    assert args["ssl_certfile"] == f"{conf}/certs/{facts.SERVER_CERT_FILE}"
    assert args["ssl_keyfile"] == f"{conf}/certs/{facts.SERVER_KEY_FILE}"
    assert args["enable_supernode_auth"] is True and args["insecure"] is False
    assert args["auth_list_public_keys"] is None
    assert args["database"] == f"{state}/superlink_state.db"
    assert args["serverappio_api_address"] == f"127.0.0.1:{facts.SUPERLINK_SERVERAPPIO_PORT}"
    assert args["fleet_api_address"] == f"0.0.0.0:{facts.SUPERLINK_FLEET_PORT}"
    assert args["control_api_address"] == f"0.0.0.0:{facts.SUPERLINK_CONTROL_PORT}"
    assert out["env"]["FLWR_TELEMETRY_ENABLED"] == "0" and out["env"]["FLWR_DISABLE_UPDATE_CHECK"] == "1"
    assert out["env"]["FLWR_HOME"] == str(home) and home.is_dir()
    assert out["env"]["PATH"].split(":")[0] == f"{fake_venv}/bin"


def test_superlink_defaults_are_the_manual_layout(tmp_path, fake_venv):
    env = {"PYTHONENV": str(fake_venv), "FLWR_HOME": str(tmp_path / "home")}
    proc, out = run_wrapper(tmp_path, render.run_superlink_sh(), env)
    assert proc.returncode == 0, proc.stderr
    assert out["args"]["ssl_keyfile"] == f"{facts.SUPERLINK_CERTS}/{facts.SERVER_KEY_FILE}"
    assert out["args"]["database"] == facts.SUPERLINK_STATE_DB


def test_superlink_wrong_flag_is_rejected_by_flwr(tmp_path, fake_venv):
    """The parser check can fail: a flag flwr does not know makes it exit 2."""
    bad = render.run_superlink_sh().replace("--enable-supernode-auth", "--enable-supernode-authentication")
    proc, out = run_wrapper(tmp_path, bad, {"PYTHONENV": str(fake_venv), "FLWR_HOME": str(tmp_path / "h")})
    assert proc.returncode == 2 and out is None and "unrecognized arguments" in proc.stderr


def supernode_env(tmp_path, fake_venv, conf_text):
    conf = tmp_path / "conf"
    if conf_text is not None:
        write(conf / "supernode.conf", conf_text)
    return conf, {"PYTHONENV": str(fake_venv), "CONF_DIR": str(conf), "FLWR_HOME": str(tmp_path / "home")}


def test_supernode_command_line_parses_in_flwr(tmp_path, fake_venv):
    from flwr.common.config import parse_config_args

    conf, env = supernode_env(tmp_path, fake_venv, render.supernode_conf(MEMBER, f"10.100.0.40:{facts.SUPERLINK_FLEET_PORT}"))
    proc, out = run_wrapper(tmp_path, render.run_supernode_sh(), env)
    assert proc.returncode == 0, proc.stderr
    args = out["args"]
    assert args["root_certificates"] == f"{conf}/certs/{facts.CA_CERT_FILE}"
    assert args["superlink"] == f"10.100.0.40:{facts.SUPERLINK_FLEET_PORT}"
    assert args["clientappio_api_address"] == f"127.0.0.1:{facts.SUPERNODE_CLIENTAPPIO_PORT}"
    # The node config carries the partition id only: nothing that changes when others join or leave.
    assert args["node_config"] == "partition-id=1"
    assert parse_config_args([args["node_config"]]) == {"partition-id": 1}
    assert args["auth_supernode_private_key"] == f"{conf}/certs/{facts.SUPERNODE_KEY_FILE}"
    assert args["auth_supernode_public_key"] is None and args["insecure"] is False
    assert out["env"]["FLWR_TELEMETRY_ENABLED"] == "0" and out["env"]["FLWR_DISABLE_UPDATE_CHECK"] == "1"
    assert "Partition id: 1\n" in proc.stdout


def test_supernode_wrong_flag_is_rejected_by_flwr(tmp_path, fake_venv):
    _, env = supernode_env(tmp_path, fake_venv, render.supernode_conf(MEMBER, "10.100.0.40:9092"))
    bad = render.run_supernode_sh().replace("--clientappio-api-address", "--clientapp-address")
    proc, out = run_wrapper(tmp_path, bad, env)
    assert proc.returncode == 2 and out is None


def test_supernode_without_conf_fails_clearly(tmp_path, fake_venv):
    _, env = supernode_env(tmp_path, fake_venv, None)
    proc, out = run_wrapper(tmp_path, render.run_supernode_sh(), env)
    assert proc.returncode == 1 and out is None and "supernode.conf is missing" in proc.stderr
    conf_text = render.supernode_conf(MEMBER, "10.100.0.40:9092").replace("local_partition=1", "local_partition=")
    _, env = supernode_env(tmp_path, fake_venv, conf_text)
    proc, out = run_wrapper(tmp_path, render.run_supernode_sh(), env)
    assert proc.returncode == 1 and "local_partition is not set" in proc.stderr


# --- nina-install-files ---------------------------------------------------------------------


@dataclass
class Installer:
    """nina-install-files; with fake_commands, systemctl and update-ca-certificates log to `calls`."""

    script: Path
    calls: Path
    fake: Path

    def __call__(self, payload: str, *args: str, fake_commands: bool = False) -> subprocess.CompletedProcess:
        env = dict(os.environ)
        env.pop("NINA_SYSTEMCTL", None)
        env.pop("NINA_UPDATE_CA_CERTIFICATES", None)
        if fake_commands:
            env.update(NINA_SYSTEMCTL=f"{self.fake} systemctl", NINA_UPDATE_CA_CERTIFICATES=f"{self.fake} update-ca-certificates")
        return subprocess.run([sys.executable, str(self.script), *args], input=payload, env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture
def installer(tmp_path) -> Installer:
    script = write(tmp_path / "bin" / "nina-install-files", render.install_files_script(render.SOURCE_ROOT), 0o755)
    calls = tmp_path / "calls.log"
    fake = write(tmp_path / "bin" / "fake-cmd", f'#!/bin/sh\necho "$*" >> {calls}\n', 0o755)
    return Installer(script, calls, fake)


def _expected_uid(user: str) -> int:
    """Under --root an unknown user maps to the caller; a non-root caller always keeps its uid."""
    if os.geteuid() != 0:
        return os.getuid()
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        return os.getuid()


def test_install_files_writes_delivery_once(tmp_path, installer, render_plans):
    payload = render.superlink_delivery(render_plans["test"].tenancies[0], CA, CERT, KEY)
    root = tmp_path / "root"
    first = installer(payload, "--root", str(root))
    assert first.returncode == 0, first.stderr
    assert "17 changed, 0 unchanged" in first.stdout
    for f in json.loads(payload)["files"]:
        target = root / f["path"].lstrip("/")
        st = target.stat()
        assert target.read_text() == f["content"]
        assert stat.S_IMODE(st.st_mode) == f["mode"], f["path"]
        assert st.st_uid == _expected_uid(f["owner"]), f["path"]
    key = root / facts.SUPERLINK_CERTS.lstrip("/") / facts.SERVER_KEY_FILE
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert not [p for p in key.parent.iterdir() if p.name.startswith(".nina-install-")]  # no temp files left
    assert (
        "skipped under --root: systemctl restart superlink.service nina-superlink-backup.timer nina-federation-metrics.timer"
        in first.stdout
    )

    second = installer(payload, "--root", str(root))
    assert second.returncode == 0 and "0 changed, 17 unchanged" in second.stdout
    # Only the environment step (a no-op when the venv is in sync) runs again.
    assert "wrote" not in second.stdout and "systemctl restart" not in second.stdout

    key.chmod(0o644)  # a mode drift is repaired
    third = installer(payload, "--root", str(root))
    assert "1 changed, 16 unchanged" in third.stdout and stat.S_IMODE(key.stat().st_mode) == 0o600


def test_install_files_runs_units_only_on_change(tmp_path, installer, render_plans):
    tenancy = render_plans["test"].tenancies[0]
    root = tmp_path / "root"
    first = installer(render.superlink_delivery(tenancy, CA, CERT, KEY), "--root", str(root), fake_commands=True)
    assert first.returncode == 0, first.stderr
    assert installer.calls.read_text().splitlines() == [
        "systemctl daemon-reload",
        "update-ca-certificates",
        "systemctl enable superlink.service nina-superlink-backup.timer nina-federation-metrics.timer",
        "systemctl restart superlink.service nina-superlink-backup.timer nina-federation-metrics.timer",
        f"systemctl start {facts.ENV_SYNC_SERVICE}",
    ]
    installer.calls.unlink()
    installer(render.superlink_delivery(tenancy, CA, CERT, KEY), "--root", str(root), fake_commands=True)
    assert installer.calls.read_text().splitlines() == [f"systemctl start {facts.ENV_SYNC_SERVICE}"]
    installer.calls.unlink()
    # Another lock alone: the SuperLink is not restarted by the installer (nina-env-sync restarts it
    # once the venv holds the new lock).
    other = dataclasses.replace(tenancy, environment_lock=tenancy.environment_lock + "# another lock\n")
    assert installer(render.superlink_delivery(other, CA, CERT, KEY), "--root", str(root), fake_commands=True).returncode == 0
    assert installer.calls.read_text().splitlines() == [
        "systemctl daemon-reload",
        "systemctl enable nina-superlink-backup.timer nina-federation-metrics.timer",
        "systemctl restart nina-superlink-backup.timer nina-federation-metrics.timer",
        f"systemctl start {facts.ENV_SYNC_SERVICE}",
    ]
    installer(render.superlink_delivery(tenancy, CA, CERT, KEY), "--root", str(root), fake_commands=True)
    installer.calls.unlink()
    # A new server certificate (same CA): restart, but no update-ca-certificates.
    renewed = render.superlink_delivery(tenancy, CA, CERT.replace("LEAF", "LEAF2"), KEY)
    assert installer(renewed, "--root", str(root), fake_commands=True).returncode == 0
    assert installer.calls.read_text().splitlines() == [
        "systemctl daemon-reload",
        "systemctl enable superlink.service nina-superlink-backup.timer nina-federation-metrics.timer",
        "systemctl restart superlink.service nina-superlink-backup.timer nina-federation-metrics.timer",
        f"systemctl start {facts.ENV_SYNC_SERVICE}",
    ]


def test_install_files_dry_run_touches_nothing(tmp_path, installer, render_plans):
    payload = render.superlink_delivery(render_plans["test"].tenancies[0], CA, CERT, KEY)
    root = tmp_path / "root"
    root.mkdir()
    proc = installer(payload, "--root", str(root), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert list(root.iterdir()) == []
    assert proc.stdout.count("would write") == 17
    assert "would run update-ca-certificates" in proc.stdout
    assert "would run systemctl restart superlink.service" in proc.stdout
    # Even with real commands configured, a dry run runs none of them.
    proc = installer(payload, "--root", str(root), "--dry-run", fake_commands=True)
    assert proc.returncode == 0 and list(root.iterdir()) == [] and not installer.calls.exists()


def _payload(path: str, owner: str = "root") -> str:
    return json.dumps({"files": [{"path": path, "content": "x\n", "mode": 0o644, "owner": owner, "group": "root"}], "restart": []})


def _file(**changes) -> dict:
    return {"path": "/etc/app/conf.d/a.conf", "content": "x\n", "mode": 0o644, "owner": "root", "group": "root", **changes}


def _with(**changes) -> dict:
    return {"files": [_file()], "restart": ["app.service"], **changes}


_CCD = "/etc/app/conf.d"
# One table of payloads, for the renderer (nina.render.checked_payload) and the installer alike:
# (payload, None if both accept it, else what both say).
PAYLOADS = {
    "minimal": ({"files": [], "restart": []}, None),
    "no restart key": ({"files": [_file()]}, None),
    "prune and hot": (_with(prune=[_CCD], hot={_CCD: ["/run/app/a.sock"]}), None),
    "prune below a file's directory": (_with(prune=[f"{_CCD}/sub"]), None),
    "not an object": ([], "payload must be an object"),
    "unknown key": (_with(extra=1), "payload must be an object"),
    "no files": ({"restart": []}, '"files", "restart" and "prune" must be lists'),
    "files an object": ({"files": {}, "restart": []}, "must be lists"),
    "restart a string": ({"files": [], "restart": "app.service"}, "must be lists"),
    "prune a string": (_with(prune=_CCD), "must be lists"),
    "file without keys": ({"files": [{"path": "/x"}], "restart": []}, "needs exactly path, content, mode, owner, group"),
    "file with an extra key": ({"files": [_file(x=1)]}, "needs exactly path, content, mode, owner, group"),
    "file not an object": ({"files": ["/etc/x"]}, "needs exactly path"),
    "relative path": ({"files": [_file(path="relative/file")]}, "must be absolute"),
    "path not a string": ({"files": [_file(path=5)]}, "must be absolute"),
    "NUL in path": ({"files": [_file(path="/etc/a\0b")]}, "must be absolute"),
    "path with ..": ({"files": [_file(path="/etc/../escape")]}, "must be normalised"),
    "path with .": ({"files": [_file(path="/etc/./x")]}, "must be normalised"),
    "path with //": ({"files": [_file(path="/etc//x")]}, "must be normalised"),
    "path ending in /": ({"files": [_file(path="/etc/x/")]}, "must be normalised"),
    "path /": ({"files": [_file(path="/")]}, "must be normalised"),
    "duplicate path": ({"files": [_file(), _file(content="y\n")]}, "files[1]: duplicate path /etc/app/conf.d/a.conf"),
    "content not a string": ({"files": [_file(content=5)]}, "content must be a string"),
    "mode too large": ({"files": [_file(mode=0o4755)]}, "mode must be an integer between 0 and 0o777"),
    "mode negative": ({"files": [_file(mode=-1)]}, "mode must be an integer"),
    "mode a string": ({"files": [_file(mode="0644")]}, "mode must be an integer"),
    "mode a boolean": ({"files": [_file(mode=True)]}, "mode must be an integer"),
    "owner upper case": ({"files": [_file(owner="Root")]}, "owner 'Root' is not a user or group name"),
    "owner with a newline": ({"files": [_file(owner="root\n")]}, "is not a user or group name"),
    "group with a space": ({"files": [_file(group="fl system")]}, "group 'fl system' is not a user or group name"),
    "unit with a command": (_with(restart=["foo; reboot"]), "is not a systemd unit name"),
    "unit with a newline": (_with(restart=["app.service\n"]), "is not a systemd unit name"),
    "unit not a string": (_with(restart=[5]), "is not a systemd unit name"),
    "prune /": (_with(prune=["/"]), "must be an absolute, normalised directory"),
    "prune too shallow": (_with(prune=["/etc/app"]), "too close to /"),
    "prune relative": (_with(prune=["etc/app/conf.d"]), "must be an absolute, normalised directory"),
    "prune with ..": (_with(prune=["/etc/app/conf.d/../x"]), "must be an absolute, normalised directory"),
    "prune ending in /": (_with(prune=[f"{_CCD}/"]), "must be an absolute, normalised directory"),
    "prune elsewhere": (_with(prune=["/srv/other/dir"]), "is not at or under the directory of a delivered file"),
    "hot not pruned": (_with(hot={_CCD: ["/run/app/a.sock"]}), "must also be a prune directory"),
    "hot a list": (_with(prune=[_CCD], hot=[_CCD]), '"hot" must be an object'),
    "hot socket a string": (_with(prune=[_CCD], hot={_CCD: "/run/app/a.sock"}), "needs a list of absolute, normalised socket paths"),
    "hot socket not a string": (_with(prune=[_CCD], hot={_CCD: [42]}), "needs a list of absolute, normalised socket paths"),
    "hot socket relative": (_with(prune=[_CCD], hot={_CCD: ["a.sock"]}), "needs a list of absolute, normalised socket paths"),
}


@pytest.mark.parametrize(("payload", "refusal"), PAYLOADS.values(), ids=PAYLOADS.keys())
def test_renderer_and_installer_refuse_the_same_payloads(tmp_path, installer, payload, refusal):
    """The payload schema is the installer's check_payload, which the renderer calls too."""
    root = tmp_path / "root"
    root.mkdir()
    proc = installer(json.dumps(payload), "--root", str(root), fake_commands=True)
    if refusal is None:
        assert json.loads(render.checked_payload(payload)) == payload
        assert proc.returncode == 0, proc.stderr
        return
    with pytest.raises(ValueError) as refused:
        render.checked_payload(payload)
    assert refusal in str(refused.value)
    assert proc.returncode == 2 and refusal in proc.stderr and "nothing was written" in proc.stderr, proc.stderr
    assert str(refused.value).split(": ", 1)[1] in proc.stderr  # the very same reason
    assert list(root.iterdir()) == []


def test_install_files_refuses_what_is_not_json(tmp_path, installer):
    proc = installer("not json", "--root", str(tmp_path))
    assert proc.returncode == 2 and "stdin is not a JSON payload" in proc.stderr


def test_install_files_without_root_refuses_unknown_owner(tmp_path, installer):
    target = tmp_path / "real" / "file"
    proc = installer(_payload(str(target), owner="nina-no-such-user"))
    assert proc.returncode == 2 and "does not exist" in proc.stderr and not target.exists()


def test_install_files_dry_run_refuses_no_owner(tmp_path, installer):
    """A dry run may come before the step that creates an owner (a site kit's `install.sh --dry-run`
    on a fresh host): it says so and what it would write, where a real run refuses."""
    target = tmp_path / "real" / "file"
    proc = installer(_payload(str(target), owner="nina-no-such-user"), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert f"would write {target} (mode 0644, nina-no-such-user:root)" in proc.stdout
    assert f"user 'nina-no-such-user' does not exist here; {target} needs it" in proc.stderr
    assert not target.parent.exists()


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv to run as another user")
def test_install_files_dry_run_as_a_user_shows_what_root_would_do(tmp_path):
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="nina-dry-", dir="/tmp"))
    try:
        work.chmod(0o755)
        script = write(work / "nina-install-files", render.install_files_script(render.SOURCE_ROOT), 0o755)
        secret, plain = work / "etc/app/conf.d/secret.key", work / "etc/app/conf.d/plain.conf"
        write(secret, "old\n", 0o600)  # root's, unreadable for the caller
        write(plain, "same\n", 0o644)
        (work / "etc").chmod(0o755)
        entry = {"mode": 0o600, "owner": "root", "group": "root"}
        payload = {
            "files": [
                {**entry, "path": str(secret), "content": "new\n"},
                {**entry, "path": str(plain), "content": "same\n", "mode": 0o644},
            ],
            "restart": [],
        }
        as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", str(script)]
        dry = subprocess.run([*as_nobody, "--dry-run"], input=json.dumps(payload), capture_output=True, text=True, timeout=60)
        assert dry.returncode == 0, dry.stderr
        assert f"would write {secret} (mode 0600, root:root)" in dry.stdout and f"unchanged {plain}" in dry.stdout
        assert secret.read_text() == "old\n"
        real = subprocess.run(as_nobody, input=json.dumps(payload), capture_output=True, text=True, timeout=60)
        assert real.returncode == 2 and "only root can give files to root:root" in real.stderr
    finally:
        shutil.rmtree(work)


# --- nina-membership against a fake flwr ----------------------------------------------------

FAKE_FLWR = '''#!{python}
"""Behaves like flwr 1.31's `flwr supernode register|unregister <key file|node id> <connection> --format json`,
run as its own process or by nina-membership's batch interpreter (runpy, one process for many calls).

FAKE_RENDEZVOUS=<s>: a call first waits (up to <s> seconds) until another call is in flight,
so that calls which can run at once are seen to (max_active in the state). Each call records
its process and its parent ("pid", "ppid")."""
import fcntl, json, os, sys, time
state_file = {state!r}

def update(change):
    with open(state_file + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = json.load(open(state_file)) if os.path.exists(state_file) else {{"next": 1001, "nodes": {{}}, "calls": [], "active": 0, "max_active": 0}}
        result = change(state)
        json.dump(state, open(state_file, "w"))
        return result

def enter(state):
    state["active"] += 1
    state["max_active"] = max(state["max_active"], state["active"])

update(enter)
wait = float(os.environ.get("FAKE_RENDEZVOUS", "0"))
deadline = time.monotonic() + wait
while wait and time.monotonic() < deadline and update(lambda st: st["max_active"]) < 2:
    time.sleep(0.02)
argv = sys.argv[1:]

def call(state):
    state["active"] -= 1
    state["calls"].append({{"argv": argv, "env": {{k: os.environ.get(k) for k in ("FLWR_TELEMETRY_ENABLED", "FLWR_DISABLE_UPDATE_CHECK", "FLWR_HOME")}},
                            "key": open(argv[2]).read() if argv[1] == "register" else None, "pid": os.getpid(),
                            "ppid": os.getppid()}})
    mode = os.environ.get("FAKE_MODE", "ok")
    if mode.startswith("unavailable") and int(mode.split(":")[1]) >= len(state["calls"]):
        return {{"success": False, "error-message": "Loading project configuration... \\nSuccess\\n Connection to the SuperLink is unavailable. Please check your network connection and 'address' in the federation configuration.\\n\\n"}}
    if mode == "refuse":
        return {{"success": False, "error-message": "Loading project configuration... \\nSuccess\\n The provided public key is invalid.\\n\\n"}}
    if argv[1] == "register":
        node_id = state["next"]; state["next"] += 1
        state["nodes"][str(node_id)] = open(argv[2]).read()
        return {{"success": True, "node-id": node_id}}
    if argv[1] == "unregister":
        if state["nodes"].pop(argv[2], None) is None:
            return {{"success": False, "error-message": "Loading project configuration... \\nSuccess\\n Node ID not found for this account.\\n\\n"}}
        return {{"success": True, "node-id": int(argv[2])}}

out = update(call)
print(json.dumps(out, indent=2))  # rich prints it over several lines
sys.exit(0)  # flwr (1.25 to 1.31) exits 0 even when it printed an error
'''


@dataclass
class Membership:
    """nina-membership against a fake flwr; a call gives (process, its JSON result or None)."""

    script: Path
    flwr: Path
    state: Path
    members: Path
    workdir: Path

    @property
    def home(self) -> Path:
        return self.workdir / "flwr-home"

    def __call__(self, *args: str, stdin: str = "", **env: str) -> tuple[subprocess.CompletedProcess, Any]:
        full = {
            **os.environ,
            "NINA_FLWR": str(self.flwr),
            "NINA_MEMBERS_DIR": str(self.members),
            "NINA_FLWR_HOME": str(self.home),
            "NINA_RETRY_INTERVAL": "0.05",
            **env,
        }
        proc = subprocess.run([sys.executable, str(self.script), *args], input=stdin, env=full, capture_output=True, text=True, timeout=60)
        result = json.loads(proc.stdout) if proc.returncode == 0 and len(proc.stdout.splitlines()) == 1 else None  # register-many: lines
        return proc, result

    def calls(self) -> list[Any]:
        return json.loads(self.state.read_text())["calls"] if self.state.exists() else []


@pytest.fixture
def membership(tmp_path) -> Membership:
    script = write(tmp_path / "nina-membership", render.membership_script(render.SOURCE_ROOT), 0o755)
    state = tmp_path / "fake-flwr.json"
    flwr = write(tmp_path / "flwr", FAKE_FLWR.format(python=sys.executable, state=str(state)), 0o755)
    write(tmp_path / "flwr-home" / facts.FLWR_CONFIG_FILE, render.admin_flwr_config("main"))  # as the SuperLink delivery installs it
    return Membership(script, flwr, state, tmp_path / "members", tmp_path)


def test_membership_register_is_idempotent(membership):
    proc, out = membership("register", "org-a", stdin=PUB_A)
    assert proc.returncode == 0, proc.stderr
    assert out == {"slug": "org-a", "node-id": "1001", "changed": True}
    [call] = membership.calls()
    assert call["argv"][:2] == ["supernode", "register"]
    assert call["argv"][3:] == [facts.SUPERLINK_ADMIN_CONNECTION, "--format", "json"]
    assert call["key"] == PUB_A
    assert call["env"]["FLWR_TELEMETRY_ENABLED"] == "0" and call["env"]["FLWR_DISABLE_UPDATE_CHECK"] == "1"
    assert call["env"]["FLWR_HOME"] == str(membership.home)
    assert (membership.members / "org-a.node_id").read_text() == "1001\n"
    assert (membership.members / "org-a.pub").read_text() == PUB_A
    assert not list(membership.members.glob("*pending*"))

    proc, out = membership("register", "org-a", stdin=PUB_A)
    assert proc.returncode == 0 and out["changed"] is False and out["node-id"] == "1001"
    assert len(membership.calls()) == 1  # nothing ran

    proc, out = membership("list")
    assert out == {"members": [{"slug": "org-a", "node-id": "1001"}]}


def test_membership_key_change_replaces_node(membership):
    membership("register", "org-a", stdin=PUB_A)
    proc, out = membership("register", "org-a", stdin=PUB_B)
    assert proc.returncode == 0, proc.stderr
    assert out == {"slug": "org-a", "node-id": "1002", "changed": True}
    calls = membership.calls()
    assert [c["argv"][1] for c in calls] == ["register", "unregister", "register"]
    assert calls[1]["argv"][2] == "1001" and calls[2]["key"] == PUB_B
    assert (membership.members / "org-a.pub").read_text() == PUB_B


def test_membership_refuses_without_the_cli_config(membership):
    """Without the delivered config.toml flwr would write its own default, whose "local" connection
    starts a simulation SuperLink: nina-membership refuses before running flwr."""
    (membership.home / facts.FLWR_CONFIG_FILE).unlink()
    proc, out = membership("register", "org-a", stdin=PUB_A)
    assert proc.returncode == 1 and out is None and "config.toml is missing" in proc.stderr
    assert membership.calls() == [] and not (membership.home / facts.FLWR_CONFIG_FILE).exists()


def test_membership_unregister(membership):
    membership("register", "org-a", stdin=PUB_A)
    proc, out = membership("unregister", "org-a")
    assert proc.returncode == 0 and out == {"slug": "org-a", "node-id": "1001", "changed": True}
    assert membership.calls()[-1]["argv"][:3] == ["supernode", "unregister", "1001"]
    assert not (membership.members / "org-a.node_id").exists() and not (membership.members / "org-a.pub").exists()
    n = len(membership.calls())
    proc, out = membership("unregister", "org-a")  # unknown now: fine, and flwr is not asked
    assert proc.returncode == 0 and out["changed"] is False and len(membership.calls()) == n


def test_membership_unregister_of_node_already_gone(membership):
    membership.members.mkdir()
    (membership.members / "org-x.node_id").write_text("4242\n")
    (membership.members / "org-x.pub").write_text(PUB_A)
    proc, out = membership("unregister", "org-x")
    assert proc.returncode == 0 and out["node-id"] == "4242"
    assert "already unregistered" in proc.stderr and not (membership.members / "org-x.node_id").exists()


def test_membership_fails_on_success_false_with_exit_0(membership):
    proc, out = membership("register", "org-a", stdin=PUB_A, FAKE_MODE="refuse")
    assert proc.returncode == 1 and out is None
    assert "public key is invalid" in proc.stderr
    assert not (membership.members / "org-a.node_id").exists() and not list(membership.members.glob("*.pub"))


def test_membership_waits_for_control_api(membership):
    proc, out = membership("register", "org-a", stdin=PUB_A, FAKE_MODE="unavailable:2")
    assert proc.returncode == 0, proc.stderr
    assert out["node-id"] == "1001" and len(membership.calls()) == 3
    assert proc.stderr.count("Control API not ready") == 2


def test_membership_gives_up_when_control_api_stays_down(membership):
    start = time.monotonic()
    proc, _ = membership("register", "org-a", stdin=PUB_A, FAKE_MODE="unavailable:1000", NINA_CONTROL_WAIT="0.5")
    assert proc.returncode == 1 and "unavailable" in proc.stderr
    assert time.monotonic() - start < 20


def _concurrently(membership: Membership, runs: list[tuple[str, str]], **env: str) -> list[subprocess.CompletedProcess]:
    """`nina-membership register <slug>` for every (slug, key) at once, as pulumi runs registrations."""
    full = {
        **os.environ,
        "NINA_FLWR": str(membership.flwr),
        "NINA_MEMBERS_DIR": str(membership.members),
        "NINA_FLWR_HOME": str(membership.home),
        **env,
    }
    procs = [
        subprocess.Popen(
            [sys.executable, str(membership.script), "register", slug],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=full,
            text=True,
        )
        for slug, _ in runs
    ]
    for proc, (_, key) in zip(procs, runs, strict=True):
        assert proc.stdin is not None
        proc.stdin.write(key)
        proc.stdin.close()
    for proc in procs:
        proc.wait(timeout=60)
    return [subprocess.CompletedProcess(p.args, p.returncode, p.stdout.read(), p.stderr.read()) for p in procs]  # type: ignore[union-attr]


def test_membership_registers_organisations_at_once(membership):
    # Each call waits (up to 20 s) for another to be in flight: with one lock for all
    # organisations the second could not start until the first was done.
    done = _concurrently(membership, [("org-a", PUB_A), ("org-b", PUB_B)], FAKE_RENDEZVOUS="20")
    assert [p.returncode for p in done] == [0, 0], [p.stderr for p in done]
    state = json.loads(membership.state.read_text())
    assert state["max_active"] == 2
    assert sorted(json.loads(p.stdout)["node-id"] for p in done) == ["1001", "1002"]
    _, out = membership("list")
    assert sorted(m["slug"] for m in out["members"]) == ["org-a", "org-b"]
    assert {(membership.members / f"{s}.pub").read_text() for s in ("org-a", "org-b")} == {PUB_A, PUB_B}


def test_membership_runs_for_one_organisation_take_turns(membership):
    done = _concurrently(membership, [("org-a", PUB_A), ("org-a", PUB_A)], FAKE_RENDEZVOUS="1")
    assert [p.returncode for p in done] == [0, 0], [p.stderr for p in done]
    state = json.loads(membership.state.read_text())
    assert state["max_active"] == 1 and len(state["calls"]) == 1  # the second found the record
    assert sorted(json.loads(p.stdout)["changed"] for p in done) == [False, True]


def test_membership_register_many_in_one_interpreter(membership):
    """Every flwr command of the batch, retries included, runs in a process forked from one
    interpreter started for the batch (which imported what flwr's script imports, once)."""
    keys = json.dumps({"org-a": PUB_A, "org-b": PUB_B})
    proc, _ = membership("register-many", stdin=keys, FAKE_MODE="unavailable:1")
    assert proc.returncode == 0, proc.stderr
    lines = sorted((json.loads(line) for line in proc.stdout.splitlines()), key=lambda d: d["slug"])
    assert [(d["slug"], d["changed"]) for d in lines] == [("org-a", True), ("org-b", True)]
    assert sorted(d["node-id"] for d in lines) == ["1001", "1002"]
    assert "Control API not ready" in proc.stderr
    calls = membership.calls()
    assert [c["argv"][:2] for c in calls] == [["supernode", "register"]] * 3  # a retry while "unavailable", org-a, org-b
    assert sorted(c["key"] for c in calls[1:]) == sorted([PUB_A, PUB_B])
    assert len({c["pid"] for c in calls}) == 3 and len({c["ppid"] for c in calls}) == 1  # one interpreter forked for each
    assert all(c["argv"][3:] == [facts.SUPERLINK_ADMIN_CONNECTION, "--format", "json"] for c in calls)
    assert all(c["env"]["FLWR_TELEMETRY_ENABLED"] == "0" and c["env"]["FLWR_DISABLE_UPDATE_CHECK"] == "1" for c in calls)
    assert all(c["env"]["FLWR_HOME"] == str(membership.home) for c in calls)
    node_b = next(d["node-id"] for d in lines if d["slug"] == "org-b")
    assert (membership.members / "org-b.node_id").read_text() == f"{node_b}\n" and (membership.members / "org-b.pub").read_text() == PUB_B

    proc, _ = membership("register-many", stdin=keys)  # the same keys again: nothing to do
    assert proc.returncode == 0 and [json.loads(line)["changed"] for line in proc.stdout.splitlines()] == [False, False]
    assert len(membership.calls()) == 3
    proc, _ = membership("register", "org-c", stdin=PUB_A)  # a single registration runs flwr on its own
    assert membership.calls()[-1]["ppid"] != calls[0]["ppid"]


def test_membership_register_many_registers_organisations_at_once(membership):
    # Each call waits (up to 20 s) for another to be in flight: registered one after the other,
    # the second could not start before the first was done.
    keys = {"org-a": PUB_A, "org-b": PUB_B}
    proc, _ = membership("register-many", stdin=json.dumps(keys), FAKE_RENDEZVOUS="20")
    assert proc.returncode == 0, proc.stderr
    state = json.loads(membership.state.read_text())
    assert state["max_active"] == 2 and len(state["calls"]) == 2
    assert sorted(json.loads(line)["slug"] for line in proc.stdout.splitlines()) == sorted(keys)
    for slug, key in keys.items():
        assert (membership.members / f"{slug}.pub").read_text() == key


def test_membership_register_many_reports_each_failure(membership):
    proc, _ = membership("register-many", stdin=json.dumps({"org-a": PUB_A}), FAKE_MODE="refuse")
    assert proc.returncode == 1
    [line] = [json.loads(line) for line in proc.stdout.splitlines()]
    assert line["slug"] == "org-a" and "public key is invalid" in line["error"]
    assert not (membership.members / "org-a.node_id").exists()


@pytest.mark.parametrize("stdin", ["", "[]", "{}", json.dumps({"Org_A": PUB_A}), json.dumps({"org-a": "ssh-rsa AAAA"}), "not json"])
def test_membership_register_many_refuses_bad_input(membership, stdin):
    proc, _ = membership("register-many", stdin=stdin)
    assert proc.returncode == 2, proc.stderr
    assert membership.calls() == []


@pytest.mark.parametrize(
    "args, stdin",
    [
        (("register", "Org_A"), PUB_A),
        (("register", "org-a"), "-----BEGIN PUBLIC KEY-----\nMHY=\n-----END PUBLIC KEY-----\n"),
        (("register", "org-a"), "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIdummy\n"),
        (("register", "org-a"), PUB_A + PUB_B),
        (("frobnicate", "org-a"), ""),
        ((), ""),
    ],
)
def test_membership_refuses_bad_input(membership, args, stdin):
    proc, _ = membership(*args, stdin=stdin)
    assert proc.returncode == 2, proc.stderr
    assert membership.calls() == []


# --- nina-prepare-volume against fake disk tools -------------------------------------------

FAKE_TOOL = """#!/bin/bash
echo "$(basename "$0") $*" >> "$FAKE_DIR/calls.log"
case "$(basename "$0")" in
  blkid)
    if [ -f "$FAKE_DIR/fs" ]; then cat "$FAKE_DIR/fs"; else exit 2; fi ;;
  mkfs.ext4)
    printf 'UUID=6f1e2d3c-aaaa-bbbb-cccc-0123456789ab\\nTYPE=ext4\\n' > "$FAKE_DIR/fs" ;;
  mountpoint)
    [ -f "$FAKE_DIR/mounted" ] || exit 1 ;;
  mount)
    touch "$FAKE_DIR/mounted" ;;
esac
exit 0
"""
VOLUME_ID = "0f3c2a1e-5b6d-4c7e-8f90-a1b2c3d4e5f6"


@dataclass
class PrepareVolume:
    """nina-prepare-volume with fake disk tools; `attach()` makes the disk appear."""

    script: Path
    fake_bin: Path
    by_id: Path
    device: Path
    fstab: Path
    mnt: Path
    workdir: Path

    @property
    def fs(self) -> Path:
        return self.workdir / "fs"

    def attach(self) -> None:
        self.by_id.mkdir(exist_ok=True)
        (self.by_id / f"virtio-{VOLUME_ID[:20]}").symlink_to(self.device)

    def __call__(self, volume_id: str = VOLUME_ID, wait: str = "3") -> subprocess.CompletedProcess:
        env = {
            **os.environ,
            "PATH": f"{self.fake_bin}:{os.environ['PATH']}",
            "FAKE_DIR": str(self.workdir),
            "NINA_BY_ID_PREFIX": f"{self.by_id}/virtio-",
            "NINA_FSTAB": str(self.fstab),
            "NINA_VOLUME_WAIT": wait,
        }
        return subprocess.run(
            ["bash", str(self.script), volume_id, str(self.mnt), "superlink"], env=env, capture_output=True, text=True, timeout=60
        )

    def calls(self) -> list[str]:
        log = self.workdir / "calls.log"
        return log.read_text().splitlines() if log.exists() else []


@pytest.fixture
def prepare_volume(tmp_path) -> PrepareVolume:
    script = write(tmp_path / "nina-prepare-volume", render.prepare_volume_script(), 0o755)
    fake_bin = tmp_path / "fakebin"
    for tool in ("blkid", "mkfs.ext4", "mount", "mountpoint", "systemctl", "chown"):
        write(fake_bin / tool, FAKE_TOOL, 0o755)
    device = write(tmp_path / "dev" / "vdb", "")
    fstab = write(tmp_path / "fstab", "LABEL=cloudimg-rootfs / ext4 discard,errors=remount-ro 0 1\n")
    return PrepareVolume(script, fake_bin, tmp_path / "by-id", device, fstab, tmp_path / "mnt" / "state", tmp_path)


def test_prepare_volume_formats_once_and_mounts(prepare_volume):
    prepare_volume.attach()
    first = prepare_volume()
    assert first.returncode == 0, first.stderr
    calls = prepare_volume.calls()
    assert f"mkfs.ext4 -q -L state {prepare_volume.device}" in calls
    assert f"mount {prepare_volume.device} {prepare_volume.mnt}" in calls
    assert f"chown superlink:{facts.SYSTEM_GROUP} {prepare_volume.mnt}" in calls
    assert "systemctl daemon-reload" in calls
    lines = prepare_volume.fstab.read_text().splitlines()
    assert lines[1] == (
        f"UUID=6f1e2d3c-aaaa-bbbb-cccc-0123456789ab {prepare_volume.mnt} ext4 "
        f"defaults,nofail,x-systemd.device-timeout={facts.VOLUME_DEVICE_TIMEOUT} 0 2"
    )
    assert prepare_volume.mnt.is_dir()

    n = len(calls)
    second = prepare_volume()
    assert second.returncode == 0, second.stderr
    again = prepare_volume.calls()[n:]
    assert not any(c.startswith(("mkfs", "mount ", "systemctl")) for c in again), again
    assert len(prepare_volume.fstab.read_text().splitlines()) == 2


def test_prepare_volume_never_reformats(prepare_volume):
    prepare_volume.attach()
    prepare_volume.fs.write_text("UUID=11111111-2222-3333-4444-555555555555\nTYPE=xfs\n")
    proc = prepare_volume()
    assert proc.returncode == 0, proc.stderr
    assert not any(c.startswith("mkfs") for c in prepare_volume.calls())
    assert " xfs defaults,nofail" in prepare_volume.fstab.read_text()


def test_prepare_volume_leaves_partitioned_disk_alone(prepare_volume):
    prepare_volume.attach()
    prepare_volume.fs.write_text("PTUUID=abcd\nPTTYPE=gpt\n")
    proc = prepare_volume()
    assert proc.returncode == 1 and "not touching it" in proc.stderr
    assert not any(c.startswith(("mkfs", "mount")) for c in prepare_volume.calls())


def test_prepare_volume_times_out_without_disk(prepare_volume):
    proc = prepare_volume(wait="1")
    assert proc.returncode == 1 and VOLUME_ID in proc.stderr and "did not appear" in proc.stderr


def test_prepare_volume_refuses_odd_volume_id(prepare_volume):
    proc = prepare_volume(volume_id="../../etc")
    assert proc.returncode == 2


# --- end to end: real SuperLink and SuperNode from these files ------------------------------

E2E_DRIVER = r"""
import json, os, signal, subprocess, sys, time
from pathlib import Path
cfg = json.loads(sys.argv[1])
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
root, venv = Path(cfg["root"]), cfg["venv"]
procs, result = [], {}
def start(script, env, log):
    return subprocess.Popen(["bash", script], env={**os.environ, **env}, stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)
try:
    procs.append(start(cfg["superlink_sh"], cfg["superlink_env"], root / "superlink.log"))
    reg = subprocess.run([sys.executable, cfg["membership"], "register", "org-a"], input=cfg["pub"],
                         env={**os.environ, **cfg["membership_env"]}, capture_output=True, text=True, timeout=120)
    result["register"] = [reg.returncode, reg.stdout, reg.stderr]
    procs.append(start(cfg["supernode_sh"], cfg["supernode_env"], root / "supernode.log"))
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        ls = subprocess.run([venv + "/bin/flwr", "supernode", "ls", cfg["connection"], "--format", "json"], capture_output=True,
                            text=True, env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_HOME": cfg["admin_home"]})
        result["ls"] = ls.stdout
        if '"online"' in ls.stdout:
            break
        time.sleep(1)
    unreg = subprocess.run([sys.executable, cfg["membership"], "unregister", "org-a"],
                           env={**os.environ, **cfg["membership_env"]}, capture_output=True, text=True, timeout=120)
    result["unregister"] = [unreg.returncode, unreg.stdout, unreg.stderr]
finally:
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(timeout=10)
        except Exception:
            os.killpg(p.pid, signal.SIGKILL)
    result["superlink_log"] = (root / "superlink.log").read_text()[-3000:]
    result["supernode_log"] = (root / "supernode.log").read_text()[-3000:] if (root / "supernode.log").exists() else ""
print("RESULT " + json.dumps(result))
"""


def _real_keys():
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=1)
    later = now + datetime.timedelta(days=2)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "nina test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(later)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA384())
    )
    key = ec.generate_private_key(ec.SECP384R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "superlink-main")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(2)
        .not_valid_before(now)
        .not_valid_after(later)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(facts.LOOPBACK))]), critical=False
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    node = ec.generate_private_key(ec.SECP384R1())
    pem = serialization.Encoding.PEM
    return {
        "ca": ca.public_bytes(pem).decode(),
        "cert": cert.public_bytes(pem).decode(),
        "key": key.private_bytes(pem, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()).decode(),
        "node_key": node.private_bytes(pem, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()).decode(),
        "node_pub": node.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode() + "\n",
    }


def _netns_available() -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"):
        return False
    return subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not _netns_available(), reason="needs root and `unshare -n` (a private network namespace for ports 9091-9094)")
def test_end_to_end_real_flower(tmp_path, render_plans):
    """Deliver with nina-install-files, start the rendered SuperLink, register with nina-membership,
    start the rendered SuperNode: it must come online with the delivered key; then unregister."""
    keys = _real_keys()
    plan = render_plans["test"]
    tenancy = plan.tenancies[0]
    member = tenancy.members[0]
    root = tmp_path / "root"
    installer = write(tmp_path / "nina-install-files", render.install_files_script(render.SOURCE_ROOT), 0o755)
    payloads = [
        render.superlink_delivery(tenancy, keys["ca"], keys["cert"], keys["key"]),
        render.supernode_delivery(
            member,
            f"{facts.LOOPBACK}:{facts.SUPERLINK_FLEET_PORT}",
            keys["ca"],
            keys["node_key"],
            keys["node_pub"],
            tenancy.environment_lock,
        ),
    ]
    for payload in payloads:
        subprocess.run([sys.executable, str(installer), "--root", str(root)], input=payload, text=True, check=True, capture_output=True)
    admin_home = root / facts.SUPERLINK_ADMIN_FLWR_HOME.lstrip("/")
    admin_config = admin_home / facts.FLWR_CONFIG_FILE
    # The delivered CLI config names the host's CA path; point it at the test root.
    admin_config.write_text(admin_config.read_text().replace(f'"{facts.SUPERLINK_CERTS}/', f'"{root}{facts.SUPERLINK_CERTS}/'))
    venv = sys.prefix
    cfg = {
        "root": str(tmp_path),
        "venv": venv,
        "admin_home": str(admin_home),
        "connection": facts.SUPERLINK_ADMIN_CONNECTION,
        "pub": keys["node_pub"],
        "superlink_sh": str(write(tmp_path / "run_superlink.sh", render.run_superlink_sh(), 0o755)),
        "supernode_sh": str(write(tmp_path / "run_supernode.sh", render.run_supernode_sh(), 0o755)),
        "membership": str(write(tmp_path / "nina-membership", render.membership_script(render.SOURCE_ROOT), 0o755)),
        "superlink_env": {
            "PYTHONENV": venv,
            "CONF_DIR": f"{root}{facts.SUPERLINK_ETC}",
            "STATE_DIR": str(tmp_path / "state"),
            "FLWR_HOME": str(tmp_path / "state" / "flwr-home"),
        },
        "supernode_env": {"PYTHONENV": venv, "CONF_DIR": f"{root}{facts.SUPERNODE_ETC}", "FLWR_HOME": str(tmp_path / "sn-home")},
        "membership_env": {
            "NINA_FLWR": f"{venv}/bin/flwr",
            "NINA_MEMBERS_DIR": str(tmp_path / "state" / "members"),
            "NINA_FLWR_HOME": str(admin_home),
            "NINA_RETRY_INTERVAL": "1",
            "NINA_CONTROL_WAIT": "60",
        },
    }
    driver = write(tmp_path / "driver.py", E2E_DRIVER)
    proc = subprocess.run(["unshare", "-n", sys.executable, str(driver), json.dumps(cfg)], capture_output=True, text=True, timeout=150)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    result = json.loads(lines[0][7:])
    rc, out, err = result["register"]
    assert rc == 0, (err, result["superlink_log"])
    node_id = json.loads(out)["node-id"]
    ls = json.loads(result["ls"])
    assert any(n["node-id"] == node_id and n["status"] == "online" for n in ls["nodes"]), (result["ls"], result["supernode_log"])
    assert (tmp_path / "state" / "superlink_state.db").is_file()
    rc, out, err = result["unregister"]
    assert rc == 0 and json.loads(out)["node-id"] == node_id, err


# --- nina-bootstrap-check: the first boot's postconditions ----------------------------------


def _bootstrap_check(tmp_path, checks):
    script = write(tmp_path / "nina-bootstrap-check", render.bootstrap_check_script("lab", checks), 0o755)
    marker = tmp_path / "state" / "bootstrap-ok"
    proc = subprocess.run([str(script)], capture_output=True, text=True, env={**os.environ, "NINA_BOOTSTRAP_MARKER": str(marker)})
    return proc, marker


def test_bootstrap_check_writes_the_marker_only_when_every_check_holds(tmp_path):
    import grp
    import pwd

    me, group = pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name
    good = write(tmp_path / "file", "x", 0o640)
    ok = [
        ["path", "0640", me, group, str(good)],
        ["executable", "/bin/sh"],
        ["python_dist", str(Path(sys.executable).parent.parent), "pytest", pytest.__version__],
    ]
    proc, marker = _bootstrap_check(tmp_path, ok)
    assert proc.returncode == 0 and marker.read_text() == "ok\n", proc.stderr

    marker.unlink()
    link = tmp_path / "link"
    link.symlink_to(good)
    bad = [
        (["path", "0600", me, group, str(good)], f"{good} is '640 {me} {group}', expected '600 {me} {group}'"),
        (["path", "0640", me, group, str(link)], f"{link} is missing (or a symlink)"),
        (["path", "0640", me, group, str(tmp_path / "nope")], "is missing"),
        (["executable", str(good)], "is not an executable"),
        (["python_dist", str(Path(sys.executable).parent.parent), "pytest", "0.0.1"], "does not have pytest==0.0.1"),
        (["python_dist", str(tmp_path), "flwr", "1.25.0"], "bin/python is missing"),
        (["package", "no-such-package-nina"], "Debian package no-such-package-nina is not installed"),
        (["member", "no-such-user-nina", "fl_system"], "user no-such-user-nina does not exist"),
        (["member", me, "no-such-group-nina"], f"user {me} is not in group no-such-group-nina"),
        (["mounted", str(tmp_path)], "is not mounted"),
    ]
    proc, marker = _bootstrap_check(tmp_path, ok + [c for c, _ in bad])
    assert proc.returncode == 1 and not marker.exists(), proc.stdout
    for _, message in bad:
        assert message in proc.stderr, (message, proc.stderr)
    assert proc.stderr.count("FAILED:") == len(bad), proc.stderr  # every failure named, not only the first


def test_bootstrap_check_refuses_unknown_checks():
    with pytest.raises(ValueError, match="unknown bootstrap check"):
        render.bootstrap_check_script("lab", [["rm", "-rf", "/"]])
    with pytest.raises(ValueError, match="unknown bootstrap check"):
        render.bootstrap_check_script("lab", [[]])


def test_bootstrap_check_quotes_its_arguments(tmp_path):
    odd = write(tmp_path / "a file; touch pwned", "x", 0o644)
    proc, _ = _bootstrap_check(tmp_path, [["executable", str(odd)]])
    assert proc.returncode == 1 and "is not an executable" in proc.stderr
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()


def test_bootstrap_guard_refuses_a_host_without_the_marker(tmp_path):
    """The delivery prefix, run with stand-ins for sudo/cloud-init/hostname: no marker, no delivery."""
    bin_dir = tmp_path / "bin"
    write(bin_dir / "sudo", '#!/bin/sh\nexec "$@"\n', 0o755)
    write(
        bin_dir / "cloud-init",
        "#!/bin/sh\n[ \"$2\" = --long ] && echo 'status: error' && echo \"detail: ('scripts-user', ...)\"\nexit 1\n",
        0o755,
    )
    write(bin_dir / "hostname", "#!/bin/sh\necho lab-host\n", 0o755)
    write(bin_dir / "tail", "#!/bin/sh\necho '+ pip install flwr==1.25.0'\necho 'ERROR: No matching distribution'\n", 0o755)
    marker = facts.BOOTSTRAP_MARKER
    guard = render.bootstrap_guard().replace(marker, str(tmp_path / "marker"))
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}
    proc = subprocess.run(["bash", "-c", f"{guard}\necho DELIVERED"], capture_output=True, text=True, env=env)
    assert proc.returncode == 1 and "DELIVERED" not in proc.stdout
    assert "nina: refusing to deliver to lab-host: its first-boot bootstrap failed or did not finish" in proc.stderr
    assert "status: error" in proc.stderr and "No matching distribution" in proc.stderr, proc.stderr
    (tmp_path / "marker").write_text("ok\n")
    proc = subprocess.run(["bash", "-c", f"{guard}\necho DELIVERED"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0 and proc.stdout == "DELIVERED\n", proc.stderr


# --- host programs: real modules, delivered with their receiver (nina.host.receive) ---------


def test_host_programs_import_only_the_standard_library_and_nina_facts():
    import ast

    for rel, source in render.host_programs().items():
        for node in ast.walk(ast.parse(source)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] if node.module != "nina" else [f"nina.{a.name}" for a in node.names]
            for name in names:
                top = name.split(".")[0]
                delivered = name == "nina.facts" or name.startswith("nina.host")  # what the delivery installs
                assert delivered or top in sys.stdlib_module_names or name == "__future__", (rel, name)
    receive = render.receive_argv("/lib", "install_files")[3]
    assert "import nina" not in receive and "from nina" not in receive


def _bundle(payload: dict) -> str:
    return render.delivery_bundle(json.dumps(payload))


def test_receive_installs_a_version_and_runs_the_installer(tmp_path):
    lib, root = tmp_path / "lib", tmp_path / "root"
    payload = {
        "files": [{"path": "/etc/nina-test/a.conf", "content": "a\n", "mode": 0o640, "owner": "root", "group": "root"}],
        "restart": [],
    }
    env = {**os.environ, "NINA_SYSTEMCTL": "true", "NINA_UPDATE_CA_CERTIFICATES": "true"}
    argv = [*render.receive_argv(str(lib), "install_files"), "--root", str(root)]  # arguments after PROGRAM are its own
    proc = subprocess.run(argv, input=_bundle(payload), capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert (root / "etc/nina-test/a.conf").read_text() == "a\n"
    current = lib / "current"
    assert (
        current.is_symlink()
        and (current / "nina/host/install_files.py").read_text() == render.host_programs()["nina/host/install_files.py"]
    )
    versions = [p.name for p in lib.iterdir() if not p.name.startswith(".") and p.name != "current"]
    assert versions == [os.readlink(current)]
    assert stat.S_IMODE((current / "nina/host/install_files.py").stat().st_mode) == 0o644
    # The same bundle again: same version, nothing new.
    proc = subprocess.run(argv, input=_bundle(payload), capture_output=True, text=True, env=env)
    assert proc.returncode == 0 and sorted(p.name for p in lib.iterdir() if not p.name.startswith(".")) == sorted(["current", versions[0]])


def test_receive_tolerates_another_delivery_installing_the_same_version(tmp_path, monkeypatch):
    """Two services' deliveries to one host may arrive together with the same programs. The one
    that loses the rename finds the version in place, drops its copy and goes on."""
    from nina.host import receive

    lib, programs = tmp_path / "lib", render.host_programs()
    real_rename = os.rename

    def rename_after_a_rival(src, dst):
        monkeypatch.setattr(receive.os, "rename", real_rename)
        receive.install(str(lib), programs)  # the rival delivery wins the race
        real_rename(src, dst)  # now fails: the version directory exists and is not empty

    monkeypatch.setattr(receive.os, "rename", rename_after_a_rival)
    target = receive.install(str(lib), programs)
    assert sorted(p.name for p in lib.iterdir()) == sorted(["current", os.path.basename(target)])
    assert (lib / "current" / "nina/host/install_files.py").read_text() == programs["nina/host/install_files.py"]


@pytest.mark.parametrize(
    ("stdin", "args", "message"),
    [
        ("not json", ["install_files"], "is not JSON"),
        ("[]", ["install_files"], "the bundle must be"),
        ('{"programs": {}, "payload": {}}', ["install_files"], "the bundle must be"),
        ('{"programs": {"nina/../x.py": ""}, "payload": {}}', ["install_files"], "bad program path"),
        ('{"programs": {"/etc/x.py": ""}, "payload": {}}', ["install_files"], "bad program path"),
        ('{"programs": {"nina/host/other.py": ""}, "payload": {}}', ["install_files"], "has no nina/host/install_files.py"),
        ('{"programs": {"nina/host/x.py": ""}, "payload": {}}', ["../x"], "usage"),
    ],
)
def test_receive_refuses_a_malformed_bundle_without_installing(tmp_path, stdin, args, message):
    lib = tmp_path / "lib"
    argv = render.receive_argv(str(lib), "install_files")[:-1]  # the receiver as a delivery runs it, without its PROGRAM
    proc = subprocess.run([*argv, *args], input=stdin, capture_output=True, text=True)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert not lib.exists()
