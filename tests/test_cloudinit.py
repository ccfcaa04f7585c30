"""cloud-init user-data per host (cloudinit.userdata), validated with the real `cloud-init schema`."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess

import pytest
import yaml
from conftest import vpn_hub_payload

from cloudinit.userdata import AUTOMATION_KEY_PLACEHOLDER, user_data
from nina import facts, render

CLOUD_INIT = shutil.which("cloud-init") or ""  # "" when missing (the tests skip)
# The system's cloud-init is a Python program: without PYTHONPATH, so this repository's `cloudinit`
# package (a checkout on PYTHONPATH, as in a worktree) cannot shadow its own.
CLOUD_INIT_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
SECRET_MARKERS = ("PRIVATE KEY", "OPENSSH", "-----BEGIN")
CA_PEM = "-----BEGIN CERTIFICATE-----\nMIIBdummy\n-----END CERTIFICATE-----\n"
KEY_PEM = "-----BEGIN EC PRIVATE KEY-----\nMIGkdummy\n-----END EC PRIVATE KEY-----\n"


def all_hosts(plans):
    return [(name, plan, host) for name, plan in plans.items() for host in plan.hosts]


def host_ids(plans):
    return [f"{name}/{host.name}" for name, _, host in all_hosts(plans)]


@pytest.fixture(scope="module")
def rendered(render_plans, render_volume_ids):
    """(plan name, host name) -> (host, user-data text, parsed document)."""
    out = {}
    for name, plan, host in all_hosts(render_plans):
        text = user_data(plan, host, render_volume_ids(host))
        out[(name, host.name)] = (host, text, yaml.safe_load(text))
    return out


def files_of(doc):
    return {f["path"]: f for f in doc["write_files"]}


@pytest.mark.skipif(not CLOUD_INIT, reason="cloud-init missing (scripts/bootstrap --test-tools installs it)")
def test_every_user_data_passes_cloud_init_schema(rendered, tmp_path):
    for (plan, host), (_, text, _) in rendered.items():
        path = tmp_path / f"{plan}-{host}.yaml"
        path.write_text(text)
        proc = subprocess.run([CLOUD_INIT, "schema", "-c", str(path)], capture_output=True, text=True, timeout=120, env=CLOUD_INIT_ENV)
        assert proc.returncode == 0 and "Valid cloud-config" in proc.stdout, (plan, host, proc.stdout, proc.stderr)


@pytest.mark.skipif(not CLOUD_INIT, reason="cloud-init missing (scripts/bootstrap --test-tools installs it)")
def test_cloud_init_schema_catches_errors(rendered, tmp_path):
    """The schema check can fail: a wrong type for a key we use is reported."""
    _, text, _ = rendered[("test", "superlink-main")]
    path = tmp_path / "bad.yaml"
    path.write_text(text.replace("package_update: true", "package_update: 'sometimes'"))
    proc = subprocess.run([CLOUD_INIT, "schema", "-c", str(path)], capture_output=True, text=True, timeout=120, env=CLOUD_INIT_ENV)
    assert proc.returncode != 0, proc.stdout


def test_header_size_and_no_secrets(rendered):
    for key, (_, text, doc) in rendered.items():
        assert text.startswith("#cloud-config\n"), key
        assert len(base64.b64encode(text.encode())) <= facts.NOVA_USER_DATA_LIMIT, key
        for marker in SECRET_MARKERS:
            assert marker not in text, (key, marker)
        assert isinstance(doc, dict) and doc["hostname"] == key[1]


def test_byte_identical_across_renders(render_plans, render_volume_ids, rendered):
    for name, plan, host in all_hosts(render_plans):
        assert user_data(plan, host, render_volume_ids(host)) == rendered[(name, host.name)][1]


def test_multiline_contents_are_literal_blocks(rendered):
    """Scripts stay readable (and small) in user-data: no escaped one-line strings."""
    _, text, _ = rendered[("all-in-one", "gateway")]
    for event in yaml.parse(text):
        if isinstance(event, yaml.ScalarEvent) and "\n" in event.value:
            assert event.style == "|", event.value[:80]


def test_base_for_every_host(rendered):
    for key, (_host, _, doc) in rendered.items():
        assert doc["package_update"] is True
        assert {"python3-venv", "prometheus-node-exporter"} <= set(doc["packages"]), key
        assert doc["groups"] == [facts.SYSTEM_GROUP]
        assert doc["users"][0] == "default"
        assert ["usermod", "-a", "-G", facts.SYSTEM_GROUP, facts.DEFAULT_LOGIN_USER] in doc["runcmd"]
        # Fail loudly: the runcmd script stops at the first failing step, and its last step
        # checks the bootstrap's promises before writing the marker deliveries require.
        assert doc["runcmd"][0] == "set -eux"
        assert doc["runcmd"][-1] == [facts.BOOTSTRAP_CHECK_BIN]
        # Their configs come with <host>-base; only sshd is reloaded, for the login-keys drop-in
        # (and docker restarted on its data root's volume, on the JupyterHub host).
        docker = [["systemctl", "restart", facts.DOCKER_UNIT]] if "jupyterhub" in _host.roles else []
        assert [c for c in doc["runcmd"][1:] if c[0] == "systemctl"] == [["systemctl", "try-reload-or-restart", facts.SSH_UNIT], *docker]
        check = files_of(doc)[facts.BOOTSTRAP_CHECK_BIN]
        assert check["permissions"] == "0755" and check["owner"] == "root:root"
        assert f"member {facts.DEFAULT_LOGIN_USER} {facts.SYSTEM_GROUP}\n" in check["content"]
        assert "\nactive prometheus-node-exporter.service\n" in check["content"]
        files = files_of(doc)
        # A small fixed bootstrap: the first-boot programs and sshd's login keys (the drop-in, and
        # the automation key until <host>-base adds the operators'), nothing that evolves (not
        # even the receiver).
        fixed = {facts.DOCKER_DAEMON_JSON, facts.DOCKER_DROPIN} if "jupyterhub" in _host.roles else set()
        assert (
            set(files) <= {facts.PREPARE_VOLUME_BIN, facts.BOOTSTRAP_CHECK_BIN, facts.SSHD_DROPIN, facts.LOGIN_AUTHORIZED_KEYS} | fixed
        ), key
        assert files[facts.LOGIN_AUTHORIZED_KEYS]["content"] == AUTOMATION_KEY_PLACEHOLDER, key  # rendered without the stack's key
        for f in doc["write_files"]:
            assert set(f) >= {"path", "owner", "permissions", "content"}, f["path"]
            assert f.get("defer", False) == (f["owner"] != "root:root"), f["path"]


def mkdirs(doc) -> dict[str, list[str]]:
    """path -> [mode, owner, group] of the user-data's `install -d` steps."""
    return {p: [c[3], c[5], c[7]] for c in doc["runcmd"] if c[:2] == ["install", "-d"] for p in c[8:]}


AUTOMATION_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPDEImfmeTlW3dqFjuqMjGoELhWvK0J/gdOCFqWrdsHY"


def test_base_delivery_carries_what_evolves():
    files = {f["path"]: f for f in json.loads(render.base_delivery(AUTOMATION_KEY))["files"]}
    assert files[facts.INSTALL_FILES_BIN]["content"] == render.install_files_script()
    assert files[facts.INSTALL_FILES_BIN]["mode"] == 0o755
    assert files[facts.JOURNALD_DROPIN]["content"] == render.journald_conf()
    assert files[facts.NODE_EXPORTER_DEFAULTS]["content"] == render.node_exporter_defaults()
    assert files[facts.NODE_EXPORTER_LOGROTATE]["content"] == render.logrotate_conf()
    assert files[facts.LOGIN_AUTHORIZED_KEYS]["content"] == f"{AUTOMATION_KEY} nina-automation\n"
    assert json.loads(render.base_delivery(AUTOMATION_KEY))["restart"] == [
        facts.JOURNALD_UNIT,
        facts.NODE_EXPORTER_UNIT,
        facts.CERT_EXPIRY_TIMER,
    ]


def test_service_users_follow_roles(rendered):
    for key, (host, _, doc) in rendered.items():
        users = {u["name"]: u for u in doc["users"][1:]}
        assert set(users) == {facts.SERVICE_USERS[r] for r in host.roles if r in facts.SERVICE_USERS}, key
        for u in users.values():
            assert u["system"] is True and u["shell"] == "/bin/false"
            assert u["groups"] == [facts.SYSTEM_GROUP]


def test_superlink_host(render_plans, rendered):
    host, text, doc = rendered[("test", "superlink-main")]
    version = render_plans["test"].cfg.flower.version
    assert f"flwr=={version}" in text
    assert ["python3", "-m", "venv", facts.FLOWER_VENV] in doc["runcmd"]
    files = files_of(doc)
    # The service's program and unit come with its delivery (in place), not with user-data.
    assert facts.SUPERLINK_RUN_SCRIPT not in files and f"/etc/systemd/system/{facts.SUPERLINK_UNIT}" not in files
    assert facts.MEMBERSHIP_BIN not in files  # it comes with the SuperLink's delivery
    assert files[facts.PREPARE_VOLUME_BIN]["content"] == render.prepare_volume_script()
    assert not any(facts.SUPERLINK_UNIT in c or facts.SUPERNODE_UNIT in c for c in doc["runcmd"])
    # The state volume is prepared with its id, after its mount point exists, before the venv.
    cmds = doc["runcmd"]
    prep = next(i for i, c in enumerate(cmds) if c[0] == facts.PREPARE_VOLUME_BIN)
    vol = host.volumes[0]
    assert cmds[prep][1:] == [cmds[prep][1], facts.SUPERLINK_STATE_DIR, facts.SERVICE_USERS["superlink"]]
    assert cmds[prep][1] == "0f3c2a1e-5b6d-4c7e-8f90-a1b2c3d4e5f6" and vol.mount_point == facts.SUPERLINK_STATE_DIR
    dirs = mkdirs(doc)
    assert max(i for i, c in enumerate(cmds) if c[:2] == ["install", "-d"]) < prep
    assert dirs[facts.SUPERLINK_CERTS] == ["0750", "root", facts.SYSTEM_GROUP]
    # root's alone where root reads, writes or runs (nina.host.trust): the service writes only to its volume.
    assert dirs[facts.SUPERLINK_OPT] == ["0755", "root", facts.SYSTEM_GROUP]
    assert dirs[facts.SUPERLINK_STATE_DIR] == ["0750", facts.SERVICE_USERS["superlink"], facts.SYSTEM_GROUP]
    assert dirs["/opt/python"] == ["0755", "root", "root"]


def test_supernode_host(rendered):
    _, text, doc = rendered[("test", "supernode-test-org-a")]
    files = files_of(doc)
    assert facts.SUPERNODE_RUN_SCRIPT not in files and f"/etc/systemd/system/{facts.SUPERNODE_UNIT}" not in files
    assert not any(facts.SUPERNODE_UNIT in c for c in doc["runcmd"])
    assert facts.MEMBERSHIP_BIN not in files and facts.PREPARE_VOLUME_BIN not in files  # no data volume here
    dirs = mkdirs(doc)
    assert {facts.SUPERNODE_ETC, facts.SUPERNODE_CERTS, facts.SUPERNODE_OPT, facts.SUPERNODE_DATA} <= set(dirs)
    assert dirs[facts.SUPERNODE_OPT] == ["0755", "root", facts.SYSTEM_GROUP]
    assert dirs[facts.SUPERNODE_FLWR_HOME] == ["0750", facts.SERVICE_USERS["supernode"], facts.SYSTEM_GROUP]
    assert f"flwr=={facts.FLWR_VERSION}" in text


def test_supernode_data_volume(rendered):
    _, _, doc = rendered[("all-in-one", "supernode-test-org-a")]
    prep = [c for c in doc["runcmd"] if c[0] == facts.PREPARE_VOLUME_BIN]
    assert prep == [
        [facts.PREPARE_VOLUME_BIN, "0f3c2a1e-5b6d-4c7e-8f90-a1b2c3d4e5f6", facts.SUPERNODE_DATA, facts.SERVICE_USERS["supernode"]]
    ]


def test_base_only_roles_get_no_flower(rendered):
    for key in [("test", "gateway"), ("all-in-one", "monitor")]:
        _, _text, doc = rendered[key]
        assert "flwr" not in " ".join(" ".join(c) for c in doc["runcmd"])
        assert not any(p.startswith(("/etc/systemd/system/", "/opt/flwr")) for p in files_of(doc))
        assert doc["users"] == ["default"]


def test_all_in_one_host(rendered):
    _host, _, doc = rendered[("all-in-one", "gateway")]
    assert doc["fqdn"] == "gateway.myproject.cloud.edu.au"
    assert {facts.KEYCLOAK_OPT, facts.JUPYTERHUB_ETC, facts.JUPYTERHUB_CONFIG, facts.JUPYTERHUB_OPT, facts.SUPERLINK_CERTS} <= set(
        mkdirs(doc)
    )
    assert "fqdn" not in rendered[("test", "gateway")][2]


def test_volume_ids_are_required_and_checked(render_plans):
    plan = render_plans["test"]
    host = plan.host_by_name["superlink-main"]
    with pytest.raises(ValueError, match="state"):
        user_data(plan, host)
    with pytest.raises(ValueError, match="not an OpenStack id"):
        user_data(plan, host, {"state": "abc; reboot"})


def test_vpn_host(render_plans, rendered, vpn_pki):
    """The OpenVPN hub (details and the real tunnel: test_vpn.py, test_vpn_tunnel.py)."""
    from nina import vpn

    host, text, doc = rendered[("uat", "vpn-main")]
    hub = next(t.vpn for t in render_plans["uat"].tenancies if t.vpn is not None)
    assert host.roles == ("vpn",) and {"openvpn", "iptables"} <= set(doc["packages"])
    files = files_of(doc)
    # The hub's bridge/forwarding script, its unit and the servers' drop-in come with the VPN delivery.
    assert {facts.VPN_FORWARDING_BIN, f"/etc/systemd/system/{facts.VPN_FORWARDING_UNIT}", facts.OPENVPN_SERVER_DROPIN}.isdisjoint(files)
    assert not any(facts.VPN_FORWARDING_UNIT in c for c in doc["runcmd"])
    members = render_plans["uat"].tenancies[0].members
    payload = json.loads(vpn_hub_payload(vpn_pki, hub, members, ca=CA_PEM, cert=CA_PEM, key=KEY_PEM))
    delivered = {f["path"]: f for f in payload["files"]}
    assert (
        delivered[facts.VPN_FORWARDING_BIN]["content"] == vpn.forwarding_script(hub)
        and delivered[facts.VPN_FORWARDING_BIN]["mode"] == 0o755
    )
    assert delivered[f"/etc/systemd/system/{facts.VPN_FORWARDING_UNIT}"]["content"] == vpn.forwarding_unit()
    assert delivered[facts.OPENVPN_SERVER_DROPIN]["content"] == vpn.openvpn_server_dropin()
    assert payload["restart"] == [facts.VPN_FORWARDING_UNIT, facts.OPENVPN_SERVER_UNIT, facts.OPENVPN_TCP_SERVER_UNIT]
    assert "flwr" not in text and doc["users"] == ["default"]
    for key, (other, _, other_doc) in rendered.items():
        if "vpn" not in other.roles:
            assert facts.VPN_FORWARDING_BIN not in files_of(other_doc) and "openvpn" not in other_doc["packages"], key


def _hub_plan(cfg_valid, hosts):
    from nina.config import load_config
    from nina.plan import build_plan

    raw = cfg_valid()
    raw["hosts"] = hosts
    return build_plan(load_config(raw))


def test_jupyterhub_hosts(cfg_valid, rendered, render_volume_ids, tmp_path):
    """The JupyterHub host, alone and on the manual's "one large VM": its volume mounted before
    docker is restarted onto it, the hub's venv with its pins beside the Flower venv, the jupyterhub
    user added to docker once the package made the group, daemon.json as data; within 16 KiB."""
    alone = _hub_plan(cfg_valid, [{"name": "gateway", "roles": ["bastion", "proxy"]}, {"name": "hub", "roles": ["jupyterhub"]}])
    hub = alone.host_by_name["hub"]
    hub_text = user_data(alone, hub, render_volume_ids(hub))
    large_host, large_text, _ = rendered[("all-in-one", "gateway")]
    for host, text in ((hub, hub_text), (large_host, large_text)):
        doc = yaml.safe_load(text)
        assert len(base64.b64encode(text.encode())) <= facts.USER_DATA_TARGET, host.name
        assert {"docker.io", facts.JUPYTERHUB_PROXY_PACKAGE} <= set(doc["packages"])
        cmds = doc["runcmd"]
        prep = next(i for i, c in enumerate(cmds) if c[:1] == [facts.PREPARE_VOLUME_BIN] and c[2] == facts.JUPYTERHUB_VOLUME)
        assert cmds[prep][3] == "root"
        restart = cmds.index(["systemctl", "restart", facts.DOCKER_UNIT])
        usermod = cmds.index(["usermod", "-a", "-G", facts.DOCKER_GROUP, "jupyterhub"])
        venv = cmds.index(["python3", "-m", "venv", facts.JUPYTER_VENV])
        assert prep < restart < usermod < venv
        assert cmds[venv + 1] == [
            f"{facts.JUPYTER_VENV}/bin/pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            *facts.JUPYTERHUB_PACKAGES,
        ]
        files = files_of(doc)
        assert json.loads(files[facts.DOCKER_DAEMON_JSON]["content"])["data-root"] == facts.JUPYTERHUB_DOCKER_ROOT
        assert files[facts.DOCKER_DAEMON_JSON]["owner"] == "root:root" and files[facts.DOCKER_DAEMON_JSON]["permissions"] == "0644"
        check = files[facts.BOOTSTRAP_CHECK_BIN]["content"]
        for line in (
            "member jupyterhub docker",
            f"mounted {facts.JUPYTERHUB_VOLUME}",
            f"active {facts.DOCKER_UNIT}",
            f"python_dist {facts.JUPYTER_VENV} jupyterhub 6.1.1",
            f"python_dist {facts.JUPYTER_VENV} jupyterhub-idle-culler 2.0.0",
            f"executable {facts.JUPYTER_VENV}/bin/jupyterhub",
            f"path 0750 jupyterhub {facts.SYSTEM_GROUP} {facts.JUPYTERHUB_OPT}",
        ):
            assert f"\n{line}\n" in check, (host.name, line)
    # ... and the Flower venv on the one large VM, with the SuperLink's state volume (and, with its
    # keycloak role, the databases' backups).
    assert f"python_dist {facts.FLOWER_VENV} flwr {facts.FLWR_VERSION}\n" in large_text
    assert [v.mount_point for v in large_host.volumes] == [facts.SUPERLINK_STATE_DIR, facts.JUPYTERHUB_VOLUME, facts.DB_BACKUP_VOLUME]
    assert f"mounted {facts.DB_BACKUP_VOLUME}" in large_text
    if CLOUD_INIT:
        path = tmp_path / "hub.yaml"
        path.write_text(hub_text)
        proc = subprocess.run([CLOUD_INIT, "schema", "-c", str(path)], capture_output=True, text=True, timeout=120, env=CLOUD_INIT_ENV)
        assert proc.returncode == 0 and "Valid cloud-config" in proc.stdout, proc.stdout + proc.stderr


def test_user_data_sizes(rendered, capsys):
    """Prints each host's user-data size (base64, as Nova counts it); all within facts.USER_DATA_TARGET."""
    sizes = {f"{plan}/{host}": len(base64.b64encode(text.encode())) for (plan, host), (_, text, _) in rendered.items()}
    with capsys.disabled():
        print("\nuser-data bytes (base64):", json.dumps(sizes, sort_keys=True))
    assert max(sizes.values()) <= facts.USER_DATA_TARGET, sizes
