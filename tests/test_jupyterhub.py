"""JupyterHub's rendered configuration (nina.jupyterhub): loaded by the real JupyterHub, and a
browser-less OAuth login against a real OIDC provider configured from the same realm definition."""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from systemd import needs_systemd_analyze, verify_text
from traitlets.config import Config, PyFileConfigLoader

from nina import facts, jupyterhub, jupyterhub_runtime, localpki, notebook_firewall, services
from nina.config import load_config
from nina.plan import Plan, build_plan

REPO = Path(__file__).resolve().parent.parent
NODE_DIR = REPO / ".cache" / "node"
# The proxy the hub host runs: the distribution's package (Debian's node-configurable-http-proxy
# 4.5.3 here, Ubuntu 24.04's on the host: the same upstream release and Debian packaging).
PROXY_BIN = Path(facts.JUPYTERHUB_PROXY_BIN)
# Debian's node finds the packaged node modules itself; another node (NodeSource's) needs the path.
PROXY_COMMAND = ("/usr/bin/env", "NODE_PATH=/usr/share/nodejs:/usr/lib/nodejs", str(PROXY_BIN))
SECRET = "test-client-secret-0123456789"


@pytest.fixture(scope="module")
def plan(cfg_valid) -> Plan:
    raw = cfg_valid()
    orgs = raw.pop("organisations")
    raw["tenancies"] = [
        {"name": "main", "organisations": orgs},
        {
            "name": "beta",
            "organisations": [{"slug": "org-c", "name": "C", "placement": "cloud", "partition_id": 0, "cidr": "10.102.0.0/24"}],
        },
    ]
    raw["hosts"] = [
        {"name": "gateway", "roles": ["bastion", "proxy"]},
        {"name": "idp", "roles": ["keycloak"]},
        {"name": "hub", "roles": ["jupyterhub"]},
    ]
    raw["researcher_access"] = {"public_domain": "fl.example.edu.au", "acme_email": "ops@example.edu.au"}
    raw["keycloak"] = {"sha256": "ab" * 32}  # required with a keycloak host and researcher_access
    return build_plan(load_config(raw))


def _load(config_file: Path) -> Config:
    loader = PyFileConfigLoader(config_file.name, path=str(config_file.parent))
    return loader.load_config()


def _write(files: dict[str, str]) -> None:
    for path, text in files.items():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)


def _local(hub: jupyterhub.HubInputs, root: Path, **changes: Any) -> jupyterhub.HubInputs:
    return dataclasses.replace(
        hub,
        config_dir=str(root / "config"),
        state_dir=str(root / "state"),
        tenancies_dir=str(root / "tenancies"),
        python=sys.executable,
        proxy_command=PROXY_COMMAND,
        **changes,
    )


def test_names_and_urls(plan):
    hub = jupyterhub.inputs(plan)
    s = jupyterhub.settings(hub, SECRET)
    oauth = s["traits"]["GenericOAuthenticator"]
    idp = plan.host_by_name["idp"].fixed_ip
    realm = f"/realms/{facts.KEYCLOAK_REALM}/protocol/openid-connect"
    assert oauth["authorize_url"] == f"https://auth.fl.example.edu.au{realm}/auth"
    assert oauth["token_url"] == f"https://{idp}:{facts.KEYCLOAK_PORT}{realm}/token"
    assert oauth["userdata_url"] == f"https://{idp}:{facts.KEYCLOAK_PORT}{realm}/userinfo"
    assert oauth["oauth_callback_url"] == "https://hub.fl.example.edu.au/hub/oauth_callback"
    assert oauth["client_id"] == "jupyterhub" and oauth["client_secret"] == SECRET
    assert oauth["allowed_groups"] == ["tenancy-main", "tenancy-beta", facts.KEYCLOAK_ADMIN_GROUP]
    # No JupyterHub admins: the admins' group gets the operator role, which cannot open notebooks.
    assert "admin_groups" not in oauth
    [operator] = [r for r in s["traits"]["JupyterHub"]["load_roles"] if r["name"] == jupyterhub.OPERATOR_ROLE]
    assert operator["groups"] == [facts.KEYCLOAK_ADMIN_GROUP]
    assert not {"admin:users", "access:servers", "tokens", "admin:servers"} & set(operator["scopes"])
    assert "claim_groups_key" not in oauth and oauth["auth_state_groups_key"] == "oauth_user.groups"
    assert jupyterhub.realm_groups(plan) == ["tenancy-main", "tenancy-beta", facts.KEYCLOAK_ADMIN_GROUP]
    assert jupyterhub.realm_client(hub)["redirectUris"] == [oauth["oauth_callback_url"]]
    spawner = s["traits"]["DockerSpawner"]
    assert spawner["allowed_images"] == {i.rsplit("/", 1)[1]: i for i in facts.JUPYTERHUB_IMAGES}
    assert [(t["name"], t["network"]) for t in s["tenancies"]] == [("main", "nina-main"), ("beta", "nina-beta")]
    # Each tenancy's bridge has a fixed name the kernel accepts (at most 15 characters), its own.
    bridges = [jupyterhub.tenancy_bridge(t) for t in ("main", "beta", "a-very-long-tenancy-name-indeed")]
    assert all(len(b) <= 15 and b.startswith("nbr-") for b in bridges) and len(set(bridges)) == 3
    assert jupyterhub.tenancy_bridge("main") == jupyterhub.tenancy_bridge("main")
    assert s["traits"]["JupyterHub"]["bind_url"] == f"https://{plan.host_by_name['hub'].fixed_ip}:{facts.JUPYTERHUB_PORT}"
    # Deterministic: the same inputs give the same bytes.
    ca = "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n"
    assert jupyterhub.files(hub, SECRET, ca) == jupyterhub.files(jupyterhub.inputs(plan), SECRET, ca)


def test_refuses_what_cannot_work(plan, cfg_valid):
    with pytest.raises(ValueError, match="client secret"):
        jupyterhub.settings(jupyterhub.inputs(plan), "")
    images = dataclasses.replace(jupyterhub.inputs(plan), images=("a/x:1", "b/x:2"))
    with pytest.raises(ValueError, match="share a name"):
        jupyterhub.settings(images, SECRET)
    with pytest.raises(ValueError, match="researcher_access"):
        jupyterhub.inputs(build_plan(load_config(cfg_valid())))


def test_pinned_releases_are_the_test_extras():
    """The host's venv pins (facts) and the test venv's (pyproject) are the same releases; the
    proxy is the distribution's on both (never a second copy from npm)."""
    text = (REPO / "pyproject.toml").read_text()
    for pin in facts.JUPYTERHUB_PACKAGES:
        assert f'"{pin}"' in text, pin
    package = json.loads((REPO / "tests" / "node" / "package.json").read_text())
    assert "configurable-http-proxy" not in package["dependencies"]
    assert facts.JUPYTERHUB_PROXY_PACKAGE in services.jupyterhub.SERVICE.packages


def test_rendered_config_loads_in_jupyterhub(plan, tmp_path):
    """The rendered files, loaded as JupyterHub loads its config, configure the real classes."""
    from dockerspawner import DockerSpawner
    from jupyterhub.app import JupyterHub
    from oauthenticator.generic import GenericOAuthenticator

    hub = jupyterhub.inputs(plan)
    local = _local(hub, tmp_path)
    _write(jupyterhub.files(local, SECRET, "ca"))
    config = _load(tmp_path / "config" / facts.JUPYTERHUB_CONFIG_FILE)
    app = JupyterHub(config=config)
    assert app.bind_url == hub.bind_url and app.hub_bind_url == hub.hub_bind_url
    assert [svc["name"] for svc in app.services] == [jupyterhub.IDLE_CULLER]
    auth = GenericOAuthenticator(config=config)
    assert auth.allowed_groups == {"tenancy-main", "tenancy-beta", facts.KEYCLOAK_ADMIN_GROUP} and auth.manage_groups
    assert not auth.admin_groups  # operators get a role, not JupyterHub admin (which opens any notebook)
    assert auth.token_url.startswith(hub.keycloak_internal_url) and auth.authorize_url.startswith(hub.keycloak_public_url)
    assert auth.http_request_kwargs == {"ca_certs": str(tmp_path / "config" / facts.CA_CERT_FILE)}
    user = SimpleNamespace(name="rita", groups=[SimpleNamespace(name="tenancy-beta")])
    spawner = DockerSpawner(config=config, user=user)
    assert spawner.allowed_images == {i.rsplit("/", 1)[1]: i for i in facts.JUPYTERHUB_IMAGES}
    assert spawner.volumes == {facts.JUPYTERHUB_USER_VOLUME: facts.NOTEBOOK_DIR} and spawner.pull_policy == "never"
    hook = spawner.pre_spawn_hook
    assert callable(hook)
    # The hook gives a tenancy-beta researcher beta's network, environment and read-only files,
    # and returns the check of docker's network (no docker here: see the next-but-one test).
    check = hook(spawner)
    assert inspect.iscoroutine(check)
    check.close()
    assert spawner.network_name == "nina-beta"
    assert spawner.environment["NINA_TENANCY"] == "beta" and spawner.environment["FLWR_HOME"] == facts.NOTEBOOK_FLWR_HOME
    mounted = {v["bind"]: Path(k) for k, v in spawner.volumes.items() if isinstance(v, dict)}
    conf = tomllib.loads(mounted[f"{facts.NOTEBOOK_FLWR_HOME}/{facts.FLWR_CONFIG_FILE}"].read_text())
    beta = next(t for t in plan.tenancies if t.name == "beta")
    assert conf["superlink"]["beta"] == {"address": beta.control_address, "root-certificates": facts.NOTEBOOK_CA_CERT}
    assert mounted[facts.NOTEBOOK_CA_CERT].read_text() == "ca"
    outsider = SimpleNamespace(name="olga", groups=[SimpleNamespace(name="other")])
    with pytest.raises(jupyterhub_runtime.NoTenancy):
        jupyterhub_runtime.make_pre_spawn_hook(jupyterhub.settings(local, SECRET)["tenancies"])(SimpleNamespace(user=outsider))


def test_notebook_flwr_config_is_read_by_flwr(plan, tmp_path, monkeypatch):
    """What a notebook terminal's `flwr run . main` reads: the connection `main`, TLS with the CA."""
    from flwr.cli.flower_config import read_superlink_connection

    main = next(t for t in jupyterhub.inputs(plan).tenancies if t.name == "main")
    (tmp_path / facts.FLWR_CONFIG_FILE).write_text(jupyterhub.tenancy_flwr_config(main))
    monkeypatch.setenv("FLWR_HOME", str(tmp_path))
    conn = read_superlink_connection("main")
    assert conn.address == f"{plan.tenancies[0].superlink_ip}:{facts.SUPERLINK_CONTROL_PORT}"
    assert conn.root_certificates == facts.NOTEBOOK_CA_CERT and conn.insecure is False


def test_config_loader_fails_on_broken_settings(plan, tmp_path):
    """The load test above can fail: a settings file without its traits is refused at load."""
    _write(jupyterhub.files(_local(jupyterhub.inputs(plan), tmp_path), SECRET, "ca"))
    (tmp_path / "config" / facts.JUPYTERHUB_SETTINGS_FILE).write_text('{"tenancies": []}')
    with pytest.raises(ValueError, match="settings file"):
        _load(tmp_path / "config" / facts.JUPYTERHUB_CONFIG_FILE)


def _netns_available() -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"):
        return False
    return subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.skipif(not _netns_available(), reason="needs root and `unshare -n` (a private network namespace for the servers' ports)")
@pytest.mark.skipif(
    not PROXY_BIN.exists() or not (NODE_DIR / "node_modules").is_dir() or not shutil.which("node"),
    reason="needs node, node-configurable-http-proxy and scripts/bootstrap --test-tools (.cache/node)",
)
def test_oauth_login_against_real_oidc_provider(plan, tmp_path):
    """JupyterHub with the rendered config (only the spawner class replaced: no docker here) and a
    real OIDC provider configured from the same realm definition: a tenancy-main researcher gets
    a hub session, an admin gets an admin session, a user in no tenancy group is refused (403),
    and the hub called the token and userinfo endpoints on the internal address."""
    port = facts.KEYCLOAK_PORT
    public_idp, internal_idp, hub_url = f"https://localhost:{port}", f"https://127.0.0.1:{port}", "http://127.0.0.1:8000"
    # The local CA signs the provider's certificate, valid for both of its names.
    ca_key = localpki.generate_key()
    ca = localpki.self_signed_ca(ca_key.private_key_pem, facts.CA_SUBJECT, 24)
    key = localpki.generate_key()
    csr = localpki.cert_request(key.private_key_pem, {"common_name": "idp"}, ["localhost"], ["127.0.0.1"])
    cert = localpki.sign_certificate(csr, ca_key.private_key_pem, ca, 24, facts.SERVER_CERT_USES)
    hub = _local(
        jupyterhub.inputs(plan),
        tmp_path,
        public_url=hub_url,
        keycloak_public_url=public_idp,
        keycloak_internal_url=internal_idp,
        bind_url=hub_url,
        hub_bind_url="http://127.0.0.1:8081",
        ssl_cert=None,
        ssl_key=None,
    )
    files = jupyterhub.files(hub, SECRET, ca)
    settings_path = f"{hub.config_dir}/{facts.JUPYTERHUB_SETTINGS_FILE}"
    settings = json.loads(files[settings_path])
    settings["traits"]["JupyterHub"]["spawner_class"] = "simple"  # the one change: no docker in the test
    files[settings_path] = json.dumps(settings)
    _write(files)
    (tmp_path / "state").mkdir()
    for name, text in (("idp.pem", cert), ("idp.key", key.private_key_pem)):
        (tmp_path / name).write_text(text)
    # The provider from the realm definition: the hub's client, redirect URI, the groups claim.
    client = jupyterhub.realm_client(hub)
    path = jupyterhub.realm_path()
    admin = facts.KEYCLOAK_ADMIN_GROUP
    users = {
        "alice": {"password": "alice-pw", "email": "alice@example.edu.au", "groups": [jupyterhub.tenancy_group("main")]},
        "carol": {"password": "carol-pw", "email": "carol@example.edu.au", "groups": [jupyterhub.tenancy_group("beta"), admin]},
        "bob": {"password": "bob-pw", "email": "bob@example.edu.au", "groups": ["other"]},
    }
    provider_settings = {
        "node_modules": str(NODE_DIR / "node_modules"),
        "issuer": f"{public_idp}/realms/{facts.KEYCLOAK_REALM}",
        "routes": {"authorization": f"{path}/auth", "token": f"{path}/token", "userinfo": f"{path}/userinfo", "jwks": f"{path}/certs"},
        "host": "127.0.0.1",
        "port": port,
        "tls": {"cert": str(tmp_path / "idp.pem"), "key": str(tmp_path / "idp.key")},
        "client": {"client_id": client["clientId"], "client_secret": SECRET, "redirect_uris": client["redirectUris"]},
        "users": users,
        "groups_claim": client["groupsClaim"],
    }
    (tmp_path / "provider.json").write_text(json.dumps(provider_settings))
    scenario = {
        "node": shutil.which("node"),
        "provider_script": str(REPO / "tests" / "node" / "oidc_provider.mjs"),
        "provider_settings": str(tmp_path / "provider.json"),
        "provider_probe": f"{internal_idp}/.well-known/openid-configuration",
        "jupyterhub": str(Path(sys.executable).parent / "jupyterhub"),
        "hub_config": f"{hub.config_dir}/{facts.JUPYTERHUB_CONFIG_FILE}",
        "hub_cwd": str(tmp_path / "state"),
        "hub_url": hub_url,
        "ca_file": hub.ca_file,
        "users": [{"name": n, "password": u["password"]} for n, u in users.items()],
    }
    (tmp_path / "scenario.json").write_text(json.dumps(scenario))
    driver = REPO / "tests" / "jupyterhub_login.py"
    proc = subprocess.run(
        ["unshare", "-n", "-p", "-f", "--kill-child", sys.executable, str(driver), str(tmp_path / "scenario.json")],
        capture_output=True,
        text=True,
        timeout=200,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    result = json.loads(lines[0][len("RESULT ") :])
    context = f"{result.get('error')}\nhub log:\n{result['hub_log'][-6000:]}\nprovider log:\n{result['provider_log'][-3000:]}"
    assert "error" not in result, context
    got = result["users"]
    alice, carol, bob = got["alice"], got["carol"], got["bob"]
    # The browser went to the public authorize URL and back to the hub's callback.
    assert alice["steps"][0].startswith(f"{public_idp}{path}/auth"), alice["steps"]
    assert alice["callback_status"] == 302 and alice["home_status"] == 200, context
    assert alice["api_user"]["name"] == "alice" and alice["api_user"]["admin"] is False, alice
    assert jupyterhub.tenancy_group("main") in alice["api_user"]["groups"]
    # An operator (the admins' group): the admin page and the server list, never a researcher's notebook.
    assert carol["callback_status"] == 302 and carol["api_user"]["admin"] is False, carol
    assert carol["admin_page_status"] == 200 and alice["admin_page_status"] == 403, (carol, alice)
    assert {"admin-ui", "list:users", "delete:servers"} <= set(carol["api_user"]["scopes"]), carol["api_user"]
    # Only her own (`...!user=carol`, every user's); none over other users' servers or tokens.
    broad = [s for s in carol["api_user"]["scopes"] if "!" not in s]
    assert not any(s.startswith(("access:servers", "tokens", "admin:users", "admin:servers")) for s in broad), broad
    assert "access:servers" in " ".join(alice["api_user"]["scopes"])  # the check sees scopes at all
    assert bob["callback_status"] == 403 and "home_status" not in bob, bob
    # Which host each endpoint was called on: authorize by the browser on the public name,
    # token and userinfo by the hub on the internal address.
    calls = [json.loads(line) for line in result["provider_log"].splitlines() if line.startswith("{")]
    hosts: dict[str, set[str]] = {c["path"]: set() for c in calls}
    for c in calls:
        hosts[c["path"]].add(c["host"])
    assert hosts[f"{path}/auth"] == {f"localhost:{port}"}, hosts
    assert hosts[f"{path}/token"] == {f"127.0.0.1:{port}"} and hosts[f"{path}/userinfo"] == {f"127.0.0.1:{port}"}, hosts
    # The idle culler ran as the hub's managed service.
    assert re.search(r"Starting managed service idle-culler", result["hub_log"]), result["hub_log"][-3000:]


def test_the_keycloak_realm_holds_what_the_hub_relies_on():
    """One stack, both renderers: the realm nina.keycloak builds has the hub's realm name, its
    client with the hub's callback, the groups the hub allows and administers with, and the
    groups claim by name, as nina.jupyterhub expects them (the login test's OIDC provider is
    configured from nina.jupyterhub's side of this contract)."""
    import copy

    from conftest import render_raw_configs

    from nina import keycloak
    from nina.config import load_config

    raw = copy.deepcopy(render_raw_configs()["multi-tenancy"])
    raw["researcher_access"] = {"public_domain": "fl.example.edu.au", "acme_email": "fl-ops@example.edu.au"}
    raw["keycloak"] = {"realm": "fl-research", "sha256": "ab" * 32}
    raw["hosts"] = [{"name": "gateway", "roles": ["bastion", "proxy"]}, {"name": "access", "roles": ["keycloak", "jupyterhub"]}]
    plan = build_plan(load_config(raw))
    hub = jupyterhub.inputs(plan)
    realm = keycloak.realm(plan.cfg, [t.name for t in plan.tenancies], {"jupyterhub": "s" * 40})
    assert realm["realm"] == hub.realm == "fl-research"
    assert set(jupyterhub.realm_groups(plan)) <= {g["name"] for g in realm["groups"]}
    want = jupyterhub.realm_client(hub)
    client = next(c for c in realm["clients"] if c["clientId"] == want["clientId"])
    assert set(want["redirectUris"]) <= set(client["redirectUris"]) and client["publicClient"] is False
    mappers = [
        m
        for m in client.get("protocolMappers", []) + realm.get("protocolMappers", [])
        if m["protocolMapper"] == "oidc-group-membership-mapper"
    ]
    assert [(m["config"]["claim.name"], m["config"]["full.path"]) for m in mappers] == [(want["groupsClaim"], "false")]


# --- the hub host's delivery ------------------------------------------------------------------------


def _pki(plan: Plan) -> dict[str, str]:
    """A local CA and the hub's certificate as `certificate(plan)` asks for it."""
    ca_key = localpki.generate_key()
    ca = localpki.self_signed_ca(ca_key.private_key_pem, facts.CA_SUBJECT, 24)
    spec = jupyterhub.certificate(plan)
    key = localpki.generate_key()
    csr = localpki.cert_request(key.private_key_pem, {"common_name": spec.common_name}, list(spec.dns_names), list(spec.ip_addresses))
    cert = localpki.sign_certificate(csr, ca_key.private_key_pem, ca, 24, facts.SERVER_CERT_USES)
    return {"ca": ca, "cert": cert, "key": key.private_key_pem}


@pytest.fixture(scope="module")
def pki(plan) -> dict[str, str]:
    return _pki(plan)


def _delivery(plan: Plan, pki: dict[str, str], secret: str = SECRET) -> dict[str, Any]:
    return json.loads(jupyterhub.jupyterhub_delivery(plan, secret, pki["ca"], pki["cert"], pki["key"]))


def test_certificate_names_the_hub_host(plan, cfg_valid):
    hub = plan.host_by_name["hub"]
    spec = jupyterhub.certificate(plan)
    assert (spec.common_name, spec.dns_names, spec.ip_addresses, spec.server) == ("hub", ("hub",), (hub.fixed_ip,), True)
    raw = cfg_valid()
    raw["cloud"] = {"dns_domain": "myproject.cloud.edu.au"}
    raw["hosts"] = [{"name": "gateway", "roles": ["bastion", "proxy", "keycloak", "jupyterhub", "superlink"]}]
    large = build_plan(load_config(raw))
    assert jupyterhub.certificate(large).dns_names == ("gateway", "gateway.myproject.cloud.edu.au")
    # nginx verifies the upstream by the plan's host name (proxy_ssl_name): the certificate carries it.
    from nina import proxy

    site = next(s for s in proxy.sites(plan) if s.service == "jupyterhub")
    assert site.upstream_host in jupyterhub.certificate(plan).dns_names


def test_delivery_carries_the_hub_with_owners_that_keep_it_from_its_own_config(plan, pki):
    payload = _delivery(plan, pki)
    files = {f["path"]: f for f in payload["files"]}
    hub = jupyterhub.inputs(plan)
    # Everything files() renders, byte for byte.
    for path, text in jupyterhub.files(hub, SECRET, pki["ca"]).items():
        assert files[path]["content"] == text, path
    # Root owns every file (the hub cannot change its config, code or units); only the settings,
    # which hold the client secret, are readable by the hub's group alone; the key is root's.
    assert {f["owner"] for f in payload["files"]} == {"root"}
    settings = files[f"{facts.JUPYTERHUB_CONFIG}/{facts.JUPYTERHUB_SETTINGS_FILE}"]
    assert (settings["mode"], settings["group"]) == (0o640, "jupyterhub") and SECRET in settings["content"]
    key = files[facts.JUPYTERHUB_SSL_KEY]
    assert (key["mode"], key["owner"], key["group"]) == (0o600, "root", "root")
    assert files[facts.JUPYTERHUB_SSL_CERT]["mode"] == 0o644
    secret_holders = {p for p, f in files.items() if SECRET in f["content"] or "PRIVATE KEY" in f["content"]}
    assert secret_holders == {settings["path"], key["path"]}
    assert all(f["mode"] & 0o022 == 0 for f in payload["files"])
    # The hub reads its key as a systemd credential, at the path the settings name.
    unit = files[f"{facts.SYSTEMD_SYSTEM_DIR}/{facts.JUPYTERHUB_UNIT}"]["content"]
    assert f"LoadCredential={facts.JUPYTERHUB_KEY_CREDENTIAL}:{facts.JUPYTERHUB_SSL_KEY}\n" in unit
    traits = json.loads(settings["content"])["traits"]["JupyterHub"]
    assert traits["ssl_key"] == facts.JUPYTERHUB_KEY_CREDENTIAL_PATH and traits["ssl_cert"] == facts.JUPYTERHUB_SSL_CERT
    assert facts.JUPYTERHUB_KEY_CREDENTIAL_PATH.endswith(f"/{facts.JUPYTERHUB_UNIT}/{facts.JUPYTERHUB_KEY_CREDENTIAL}")
    assert f"ExecStart={facts.JUPYTER_VENV}/bin/jupyterhub -f {facts.JUPYTERHUB_CONFIG}/{facts.JUPYTERHUB_CONFIG_FILE}\n" in unit
    assert "User=jupyterhub\n" in unit and f"ReadWritePaths={facts.JUPYTERHUB_OPT}\n" in unit
    # The docker steps: their program, the plan they read (each tenancy's network and bridge).
    plan_file = json.loads(files[facts.JUPYTERHUB_DOCKER_PLAN]["content"])
    assert plan_file["networks"] == [
        {"tenancy": t, "network": jupyterhub.tenancy_network(t), "bridge": jupyterhub.tenancy_bridge(t)} for t in ("main", "beta")
    ]
    assert plan_file["images"] == list(facts.JUPYTERHUB_IMAGES)
    assert files[facts.JUPYTERHUB_DOCKER_BIN]["mode"] == 0o755 and "nina.host.hub_docker" in files[facts.JUPYTERHUB_DOCKER_BIN]["content"]
    from nina import render

    assert "nina/host/hub_docker.py" in render.host_programs()
    # The host's notebook firewall travels with it (its own unit, restarted by its own files).
    from nina import notebook_firewall

    assert {f.path for f in notebook_firewall.firewall_files(plan)} <= set(files)
    # Only its own files' changes restart the hub; the steps run on every delivery.
    assert payload["restart"] == [facts.JUPYTERHUB_UNIT, facts.NOTEBOOK_FIREWALL_UNIT]
    own = set(payload["restart_when"][facts.JUPYTERHUB_UNIT])
    assert {settings["path"], key["path"], facts.JUPYTERHUB_SSL_CERT, f"{facts.SYSTEMD_SYSTEM_DIR}/{facts.JUPYTERHUB_UNIT}"} <= own
    assert not own & {facts.JUPYTERHUB_DOCKER_PLAN, facts.NOTEBOOK_FIREWALL_BIN} and not any(
        p.startswith(facts.JUPYTERHUB_TENANCIES) for p in own
    )
    assert payload["restart_when"][facts.NOTEBOOK_FIREWALL_UNIT] == [f.path for f in notebook_firewall.firewall_files(plan)]
    assert payload["run"] == [facts.JUPYTERHUB_NETWORKS_UNIT, facts.JUPYTERHUB_IMAGES_UNIT]
    # A restart of the hub (a delivery) leaves the researchers' running notebooks alone.
    assert traits["cleanup_servers"] is False
    # Deterministic: the same inputs give the same bytes; the secret moves only the settings.
    again = jupyterhub.jupyterhub_delivery(plan, SECRET, pki["ca"], pki["cert"], pki["key"])
    assert again == jupyterhub.jupyterhub_delivery(plan, SECRET, pki["ca"], pki["cert"], pki["key"])
    other = {f["path"]: f for f in _delivery(plan, pki, "another-secret-0123456789")["files"]}
    assert {p for p in files if files[p] != other[p]} == {settings["path"]}


def test_delivery_refuses_bad_material(plan, pki):
    with pytest.raises(ValueError, match="JupyterHub key"):
        jupyterhub.jupyterhub_delivery(plan, SECRET, pki["ca"], pki["cert"], pki["cert"])
    with pytest.raises(ValueError, match="client secret"):
        jupyterhub.jupyterhub_delivery(plan, "", pki["ca"], pki["cert"], pki["key"])


@needs_systemd_analyze
def test_systemd_analyze_verifies_every_unit(tmp_path):
    units = {facts.JUPYTERHUB_UNIT: jupyterhub.service_unit(), **{u: jupyterhub.step_unit(u) for u in services.jupyterhub.STEPS}}
    # The hub requires the notebook firewall's unit: verify finds it beside it.
    (tmp_path / facts.NOTEBOOK_FIREWALL_UNIT).write_text(notebook_firewall.unit().replace(facts.NOTEBOOK_FIREWALL_BIN, "/bin/true"))

    # The programs the units run, as they exist here (verify checks that they are executables).
    program = tmp_path / "nina-jupyterhub-docker"
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    here = {
        f"{facts.JUPYTER_VENV}/bin/jupyterhub": str(Path(sys.executable).parent / "jupyterhub"),
        facts.JUPYTERHUB_DOCKER_BIN: str(program),
    }

    def verify(name: str, text: str) -> list[str]:
        return verify_text(tmp_path, name, text, {f"={path} ": f"={local} " for path, local in here.items()})

    for name, text in units.items():
        assert verify(name, text) == [], name
    # The check can fail: a typo'd key and a bad value are reported.
    assert verify(facts.JUPYTERHUB_UNIT, jupyterhub.service_unit().replace("ProtectHome=yes", "ProtectHome=maybe"))
    assert verify(facts.JUPYTERHUB_IMAGES_UNIT, jupyterhub.step_unit(facts.JUPYTERHUB_IMAGES_UNIT).replace("Type=oneshot", "Typ=oneshot"))


def test_installer_runs_the_steps_on_every_delivery_and_restarts_the_hub_only_on_change(plan, pki, tmp_path):
    """The real nina-install-files (under --root, systemctl a logging stand-in): the first delivery
    writes, restarts the hub and the firewall and runs both steps; the same delivery again
    restarts nothing but runs the steps again; a new client secret restarts the hub alone, a
    changed firewall the firewall alone; a failing step fails the delivery, naming it."""
    from nina import render

    payload = jupyterhub.jupyterhub_delivery(plan, SECRET, pki["ca"], pki["cert"], pki["key"])
    log = tmp_path / "systemctl.log"
    stand_in = tmp_path / "systemctl"
    stand_in.write_text(f'#!/bin/sh\necho "$*" >>{log}\ncase "$*" in *"$NINA_FAIL"*) [ -n "$NINA_FAIL" ] && exit 3;; esac\nexit 0\n')
    stand_in.chmod(0o755)
    root = tmp_path / "root"
    root.mkdir()
    env = {**os.environ, "NINA_SYSTEMCTL": str(stand_in), "PYTHONPATH": render.SOURCE_ROOT, "NINA_FAIL": ""}

    def install(payload: str = payload, **extra: str) -> subprocess.CompletedProcess[str]:
        log.write_text("")
        cmd = [
            sys.executable,
            "-I",
            "-c",
            "import sys; sys.path.insert(0, sys.argv.pop(1)); import runpy; runpy.run_module('nina.host.install_files', run_name='__main__')",
        ]
        return subprocess.run(
            [*cmd, render.SOURCE_ROOT, "--root", str(root)], input=payload, capture_output=True, text=True, env={**env, **extra}
        )

    first = install()
    assert first.returncode == 0, first.stderr
    steps = [f"start {facts.JUPYTERHUB_NETWORKS_UNIT}", f"start {facts.JUPYTERHUB_IMAGES_UNIT}"]
    both = f"{facts.JUPYTERHUB_UNIT} {facts.NOTEBOOK_FIREWALL_UNIT}"
    assert log.read_text().splitlines() == ["daemon-reload", f"enable {both}", f"restart {both}", *steps]
    second = install()
    assert second.returncode == 0 and log.read_text().splitlines() == steps, second.stdout
    new_secret = jupyterhub.jupyterhub_delivery(plan, "a-new-client-secret-0123", pki["ca"], pki["cert"], pki["key"])
    assert install(new_secret).returncode == 0
    assert log.read_text().splitlines() == ["daemon-reload", f"enable {facts.JUPYTERHUB_UNIT}", f"restart {facts.JUPYTERHUB_UNIT}", *steps]
    edited = json.loads(new_secret)
    for f in edited["files"]:
        if f["path"] == facts.NOTEBOOK_FIREWALL_BIN:
            f["content"] += "# edited\n"
    assert install(json.dumps(edited)).returncode == 0
    fw = facts.NOTEBOOK_FIREWALL_UNIT
    assert log.read_text().splitlines() == ["daemon-reload", f"enable {fw}", f"restart {fw}", *steps]
    failed = install(json.dumps(edited), NINA_FAIL=facts.JUPYTERHUB_NETWORKS_UNIT)
    assert failed.returncode == 1 and f"step {facts.JUPYTERHUB_NETWORKS_UNIT} failed" in failed.stderr
    assert log.read_text().splitlines() == steps[:1]  # the images step does not run after it


def test_restart_when_is_checked_where_it_is_made():
    from nina import render

    f = render.DeliveredFile("/etc/jupyterhub/x.conf", "x\n", 0o644)
    with pytest.raises(ValueError, match="not one of the units to restart"):
        render.delivery_payload([f], ["a.service"], restart_when={"b.service": [f.path]})
    with pytest.raises(ValueError, match="non-empty list of delivered paths"):
        render.delivery_payload([f], ["a.service"], restart_when={"a.service": ["/etc/other"]})
    with pytest.raises(ValueError, match="not a systemd unit name"):
        render.delivery_payload([f], ["a.service"], run=["a; reboot"])


def test_the_hub_runs_only_behind_the_notebook_firewall():
    """Fail closed: if the notebook firewall cannot be applied (iptables refused it, ip6tables
    missing, ...), no hub spawns notebooks onto bridges that reach every tenancy's Control API.
    The hub requires the firewall's unit and starts after it; the firewall restarts with docker
    (PartOf), and the hub, which requires docker, with it."""
    unit = jupyterhub.service_unit()
    values: dict[str, list[str]] = {}
    for line in unit.splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            values.setdefault(key, []).extend(value.split())
    assert facts.NOTEBOOK_FIREWALL_UNIT in values["Requires"], values["Requires"]
    assert facts.NOTEBOOK_FIREWALL_UNIT in values["After"], values["After"]


def test_a_researcher_removed_in_keycloak_loses_the_hub_within_hours(plan):
    """Groups (the tenancy a notebook gets) and the allowed groups are checked at login only:
    without auth state, oauthenticator's refresh_user is a no-op. JupyterHub's login cookie (and
    the OAuth tokens derived from it) last cookie_max_age_days, 14 by default: a researcher removed
    from a tenancy group, or disabled, in Keycloak spawned that tenancy's notebooks for two weeks.
    Bounded to facts.JUPYTERHUB_LOGIN_HOURS: then the hub sends them through Keycloak again."""
    traits = jupyterhub.settings(jupyterhub.inputs(plan), SECRET)["traits"]["JupyterHub"]
    assert traits["cookie_max_age_days"] * 24 <= 12, traits.get("cookie_max_age_days")
    assert traits["cookie_max_age_days"] == facts.JUPYTERHUB_LOGIN_HOURS / 24


def test_a_notebook_never_starts_on_a_network_the_firewall_does_not_filter(plan):
    """The firewall matches the tenancy bridges by name (nbr-<hash>). A network `nina-<tenancy>`
    made another way (by hand, before the delivery; or left while the networks step failed
    because a container held it) has another bridge, which no rule matches: from it a notebook
    reaches every tenancy's Control API. The pre-spawn hook asks docker and refuses it."""
    import asyncio

    tenancies = jupyterhub.settings(jupyterhub.inputs(plan), SECRET)["tenancies"]
    beta = next(t for t in tenancies if t["name"] == "beta")
    hook = jupyterhub_runtime.make_pre_spawn_hook(tenancies)

    class Spawner:
        def __init__(self, bridge: str | None) -> None:
            self.user = SimpleNamespace(name="rita", groups=[SimpleNamespace(name="tenancy-beta")])
            self.environment: dict[str, str] = {}
            self.volumes: dict[str, object] = {}
            self.network_name = ""
            self.log = SimpleNamespace(info=lambda *a: None)
            self.asked: list[tuple[str, tuple[object, ...]]] = []
            self.bridge = bridge

        def has_trait(self, name: str) -> bool:
            return name == "network_name"

        async def docker(self, method: str, *args: object) -> dict[str, object]:
            self.asked.append((method, args))
            options = {} if self.bridge is None else {"com.docker.network.bridge.name": self.bridge}
            return {"Name": "nina-beta", "Driver": "bridge", "Options": options}

    async def spawn(spawner: Spawner) -> None:
        result = hook(spawner)
        if result is not None:
            await result

    good = Spawner(jupyterhub.tenancy_bridge("beta"))
    asyncio.run(spawn(good))
    assert good.network_name == "nina-beta" and good.asked == [("inspect_network", ("nina-beta",))]
    assert beta["bridge"] == jupyterhub.tenancy_bridge("beta")
    for wrong in (None, "br-0123456789ab", jupyterhub.tenancy_bridge("main")):
        with pytest.raises(PermissionError, match="bridge"):
            asyncio.run(spawn(Spawner(wrong)))


# --- the tenancies' notebook images (their training environment installed) -------------------------


def test_each_tenancy_gets_a_derived_notebook_image_of_each_configured_one(plan, pki, tmp_path):
    hub = jupyterhub.inputs(plan)
    builds = jupyterhub.notebook_builds(hub)
    assert [(b.tenancy, b.base) for b in builds] == [(t, i) for t in ("main", "beta") for i in facts.JUPYTERHUB_IMAGES]
    for b in builds:
        tenancy = next(t for t in plan.tenancies if t.name == b.tenancy)
        files = dict(b.files)
        assert set(files) == {f"Dockerfile.{b.label}", facts.JUPYTERHUB_BUILD_FILES["lock"], facts.JUPYTERHUB_BUILD_FILES["kernel"]}
        assert b.dockerfile == f"Dockerfile.{b.label}"
        dockerfile = files[b.dockerfile]
        assert re.search(rf"^FROM {re.escape(b.base)}\n", dockerfile, re.M)
        # The tenancy's committed lock, whole, installed as the hosts install it, into a venv that
        # sees the image's own packages; its bin first on PATH; back to the notebook user.
        assert files[facts.JUPYTERHUB_BUILD_FILES["lock"]] == tenancy.environment_lock
        assert f"python3 -m venv --system-site-packages {facts.NOTEBOOK_ENV}" in dockerfile
        assert "--require-hashes --no-deps -r " + facts.NOTEBOOK_ENV_LOCK in dockerfile
        assert f"\nENV PATH={facts.NOTEBOOK_ENV}/bin:${{PATH}}\n" in dockerfile
        assert dockerfile.rstrip().splitlines()[-1] == "USER ${NB_UID}"
        kernel = json.loads(files[facts.JUPYTERHUB_BUILD_FILES["kernel"]])
        assert kernel["argv"][:3] == [f"{facts.NOTEBOOK_ENV}/bin/python", "-m", "ipykernel_launcher"] and kernel["language"] == "python"
        assert b.image == f"{facts.JUPYTERHUB_BUILD_REPO}/{b.tenancy}/{b.label}:{b.image.rsplit(':', 1)[1]}"
        assert b.context == f"{facts.JUPYTERHUB_BUILDS}/{b.tenancy}"
    assert len({b.image for b in builds}) == len(builds)
    # Deterministic: the same config gives the same tags, files and plan.
    assert jupyterhub.notebook_builds(jupyterhub.inputs(plan)) == builds
    # The delivery writes each context and the plan the images step reads (which it accepts).
    payload = _delivery(plan, pki)
    delivered = {f["path"]: f for f in payload["files"]}
    for b in builds:
        for name, text in b.files:
            entry = delivered[f"{b.context}/{name}"]
            assert (entry["content"], entry["mode"], entry["owner"]) == (text, 0o644, "root")
    # Each tenancy's lock is delivered once, beside its images' Dockerfiles.
    for t in plan.tenancies:
        under = sorted(p for p in delivered if p.startswith(f"{facts.JUPYTERHUB_BUILDS}/{t.name}/"))
        assert [p.rsplit("/", 1)[1] for p in under] == sorted(
            ["environment.lock", "kernel.json", *(f"Dockerfile.{jupyterhub.config.image_name(i)}" for i in facts.JUPYTERHUB_IMAGES)]
        )
    plan_text = delivered[facts.JUPYTERHUB_DOCKER_PLAN]["content"]
    assert json.loads(plan_text)["builds"] == [
        {"tenancy": b.tenancy, "base": b.base, "image": b.image, "context": b.context, "dockerfile": b.dockerfile} for b in builds
    ]
    from nina.host import hub_docker

    (tmp_path / "docker-plan.json").write_text(plan_text)
    assert hub_docker.load_plan(str(tmp_path / "docker-plan.json"))["builds"] == json.loads(plan_text)["builds"]
    # The settings map each label the researcher picks to the tenancy's derived image.
    tenancies = {
        t["name"]: t for t in json.loads(delivered[f"{facts.JUPYTERHUB_CONFIG}/{facts.JUPYTERHUB_SETTINGS_FILE}"]["content"])["tenancies"]
    }
    for t in ("main", "beta"):
        mine = [b for b in builds if b.tenancy == t]
        assert tenancies[t]["images"] == {b.label: b.image for b in mine} and tenancies[t]["image"] == mine[0].image


def test_a_changed_lock_changes_only_that_tenancys_tags(plan):
    hub = jupyterhub.inputs(plan)
    main, beta = hub.tenancies
    changed = dataclasses.replace(main, lock=main.lock + "# changed\n")
    before = {(b.tenancy, b.base): b.image for b in jupyterhub.notebook_builds(hub)}
    after = {(b.tenancy, b.base): b.image for b in jupyterhub.notebook_builds(dataclasses.replace(hub, tenancies=(changed, beta)))}
    assert {k for k in before if before[k] != after[k]} == {("main", i) for i in facts.JUPYTERHUB_IMAGES}
    # A tenancy without a lock has no notebook image to build: refused, naming it.
    with pytest.raises(ValueError, match="'main' has no training environment lock"):
        jupyterhub.notebook_builds(dataclasses.replace(hub, tenancies=(dataclasses.replace(main, lock=""), beta)))


def test_the_spawner_runs_the_tenancys_derived_image_of_the_label_picked(plan):
    """The real DockerSpawner: its start() resolves user_options' image through allowed_images
    *after* the pre-spawn hook, so the hook maps the labels; what start() then pulls and runs is
    the user's tenancy's derived image (a label of no image is still refused by dockerspawner)."""
    import asyncio

    from dockerspawner import DockerSpawner
    from tornado import web

    settings = jupyterhub.settings(jupyterhub.inputs(plan), SECRET)
    traits = settings["traits"]["DockerSpawner"]
    builds = {(b.tenancy, b.label): b.image for b in jupyterhub.notebook_builds(jupyterhub.inputs(plan))}
    hook = jupyterhub_runtime.make_pre_spawn_hook(settings["tenancies"])

    class Started(Exception):
        pass

    def spawn(group: str, options: dict[str, str]) -> str:
        user = SimpleNamespace(name="rita", groups=[SimpleNamespace(name=group)], url="/user/rita/")
        spawner = DockerSpawner(user=user, **traits)
        spawner.user_options = options
        tenancy = next(t for t in settings["tenancies"] if t["group"] == group)

        async def docker(method: str, *args: object) -> dict[str, object]:
            assert method == "inspect_network"
            return {"Options": {jupyterhub_runtime.BRIDGE_OPTION: tenancy["bridge"]}}

        pulled: list[str] = []

        async def pull_image(image: str) -> None:
            pulled.append(image)
            raise Started

        spawner.docker = docker
        spawner.pull_image = pull_image

        async def run() -> None:
            checked = hook(spawner)
            if checked is not None:
                await checked
            await spawner.start()

        with pytest.raises(Started):
            asyncio.run(run())
        assert spawner.image == pulled[0]
        return pulled[0]

    labels = [jupyterhub.config.image_name(i) for i in facts.JUPYTERHUB_IMAGES]
    assert spawn("tenancy-beta", {}) == builds[("beta", labels[0])]
    assert spawn("tenancy-beta", {"image": labels[1]}) == builds[("beta", labels[1])]
    assert spawn("tenancy-main", {"image": labels[2]}) == builds[("main", labels[2])]
    # The upstream reference or another tenancy's image are not labels: refused.
    for wrong in (facts.JUPYTERHUB_IMAGES[1], builds[("main", labels[1])]):
        with pytest.raises(web.HTTPError):
            spawn("tenancy-beta", {"image": wrong})
