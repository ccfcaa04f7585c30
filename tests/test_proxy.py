"""The reverse proxy (nina.proxy): the sites from the plan, determinism, `nginx -t` of the
rendered configuration, nina-proxy-certs against fake certbot/systemctl (placeholders, the
idempotent certbot step), and real nginx on loopback in a private network namespace
(tests/proxylab.py) in front of HTTPS upstreams with local-CA certificates."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from harness import INSTANCE, Registration, Run, payload_of, run_program, stack_config
from systemd import needs_systemd_analyze, verify_text

from nina import facts, firewall, localpki, proxy, services
from nina.config import load_config
from nina.plan import Plan, build_plan

HERE = Path(__file__).resolve().parent
NGINX = shutil.which("nginx") or ""
SHELLCHECK = shutil.which("shellcheck") or ""
DOMAIN = "fl.example.edu.au"
AUTH, HUB = f"auth.{DOMAIN}", f"hub.{DOMAIN}"
needs_nginx = pytest.mark.skipif(not NGINX, reason="nginx missing (scripts/bootstrap --test-tools installs nginx-light)")


def _can_unshare() -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"):
        return False
    return subprocess.run(["unshare", "-n", "true"], capture_output=True, timeout=10).returncode == 0


needs_netns = pytest.mark.skipif(not NGINX or not _can_unshare(), reason="needs nginx, ip, root and `unshare -n`")


def raw_config(hosts: list[dict] | None = None, **access: object) -> dict:
    return {
        "environment": "test",
        "network": {"server_cidr": "10.100.0.0/24", "admin_cidrs": ["203.0.113.0/24"]},
        "hosts": hosts
        or [
            {"name": "gateway", "roles": ["bastion", "proxy"]},
            {"name": "idp", "roles": ["keycloak"]},
            {"name": "notebooks", "roles": ["jupyterhub"]},
        ],
        "organisations": [{"slug": "org-a", "name": "A", "placement": "cloud", "partition_id": 0, "cidr": "10.101.0.0/24"}],
        "researcher_access": {"public_domain": DOMAIN, "acme_email": "fl-ops@example.edu.au", **access},
        "keycloak": {"sha256": "ab" * 32},  # required with a keycloak host and researcher_access
    }


def make_plan(hosts: list[dict] | None = None, **access: object) -> Plan:
    return build_plan(load_config(raw_config(hosts, **access)))


@pytest.fixture(scope="module")
def plan() -> Plan:
    return make_plan()


def test_sites_come_from_the_plan_the_config_and_the_port_table(plan):
    sites = proxy.sites(plan)
    assert [(s.service, s.server_name, s.upstream_host, s.upstream_ip, s.upstream_port, s.websocket) for s in sites] == [
        ("keycloak", AUTH, "idp", "10.100.0.11", facts.KEYCLOAK_PORT, False),
        ("jupyterhub", HUB, "notebooks", "10.100.0.12", facts.JUPYTERHUB_PORT, True),
    ]
    # The port nginx dials is the one the port table opens to the proxy.
    for s in sites:
        flows = [f for f in firewall.PORT_TABLE if f.to == s.service and "proxy" in f.sources]
        assert [f.port for f in flows] == [s.upstream_port]


def test_no_researcher_access_or_no_host_no_site():
    raw = raw_config()
    del raw["researcher_access"]
    assert proxy.sites(build_plan(load_config(raw))) == ()
    # Only the services that have a host get a site (a hub without Keycloak is refused by nina.config).
    only_idp = make_plan([{"name": "gateway", "roles": ["bastion", "proxy"]}, {"name": "idp", "roles": ["keycloak"]}])
    assert [s.service for s in proxy.sites(only_idp)] == ["keycloak"]
    with pytest.raises(ValueError, match="no public service"):
        proxy.proxy_conf(())


def test_a_new_public_service_is_one_entry_of_data():
    """A public service is one PublicService: its port from the port table (a Grafana site
    made by hand here, for a monitoring host without the grafana role that the real entry needs)."""
    hosts = [{"name": "gateway", "roles": ["bastion", "proxy"]}, {"name": "mon", "roles": ["monitoring"]}]
    grafana = proxy.PublicService("grafana", "monitoring", websocket=True)
    (site,) = proxy.sites(make_plan(hosts), (*proxy.PUBLIC_SERVICES, grafana))
    assert (site.server_name, site.upstream_host, site.upstream_port) == (f"grafana.{DOMAIN}", "mon", facts.GRAFANA_PORT)
    with pytest.raises(ValueError, match="exactly one"):
        proxy.upstream_port("superlink-main")  # nothing of it is open to the proxy


def test_an_upstream_on_the_proxy_host_may_not_need_nginx_s_port(monkeypatch):
    # JupyterHub (8000) and Keycloak (8443) may share the proxy's host: the manual's "one large VM".
    hosts = [{"name": "gateway", "roles": ["bastion", "proxy", "jupyterhub", "keycloak"]}]
    assert {(s.service, s.upstream_host, s.upstream_port) for s in proxy.sites(make_plan(hosts))} == {
        ("keycloak", "gateway", facts.KEYCLOAK_PORT),
        ("jupyterhub", "gateway", facts.JUPYTERHUB_PORT),
    }
    # A port table that put an upstream on nginx's 443 would be refused where they share a host.
    table = tuple(
        dataclasses.replace(f, port=facts.HTTPS_PORT) if f.to == "jupyterhub" and "proxy" in f.sources else f for f in firewall.PORT_TABLE
    )
    monkeypatch.setattr(firewall, "PORT_TABLE", table)
    with pytest.raises(ValueError, match=r"jupyterhub on the proxy host 'gateway' would listen on port 443"):
        proxy.sites(make_plan(hosts))


def test_the_delivery_is_deterministic_and_complete(plan):
    ca = _pki()["ca"]
    first = proxy.proxy_delivery(plan, ca)
    assert first == proxy.proxy_delivery(make_plan(), ca)
    payload = json.loads(first)
    paths = [f["path"] for f in payload["files"]]
    conf_d = facts.NGINX_CONF_D
    assert paths == [
        facts.NGINX_CONF,
        f"{conf_d}/nina-proxy.conf",
        f"{conf_d}/nina-keycloak.conf",
        f"{conf_d}/nina-jupyterhub.conf",
        facts.PROXY_UPSTREAM_CA,
        facts.PROXY_CERTS_BIN,
        f"{facts.SYSTEMD_SYSTEM_DIR}/{facts.PROXY_CERTS_UNIT}",
    ]
    assert payload["restart"] == [facts.PROXY_CERTS_UNIT] == list(services.proxy.UNITS)
    assert payload["prune"] == [conf_d]
    by_path = {f["path"]: f for f in payload["files"]}
    assert by_path[facts.PROXY_UPSTREAM_CA]["content"] == ca
    assert by_path[facts.PROXY_CERTS_BIN]["mode"] == 0o755
    hub = by_path[f"{conf_d}/nina-jupyterhub.conf"]["content"]
    auth = by_path[f"{conf_d}/nina-keycloak.conf"]["content"]
    for conf, name, host, upstream in ((auth, AUTH, "idp", "10.100.0.11:8443"), (hub, HUB, "notebooks", "10.100.0.12:8000")):
        assert f"server_name {name};" in conf
        assert f"ssl_certificate {facts.LETSENCRYPT_LIVE}/{name}/fullchain.pem;" in conf
        assert f"proxy_pass https://{upstream};" in conf and f"proxy_ssl_name {host};" in conf
        assert "proxy_ssl_verify on;" in conf and f"proxy_ssl_trusted_certificate {facts.PROXY_UPSTREAM_CA};" in conf
    assert "$connection_upgrade" in hub and "$connection_upgrade" not in auth
    assert f"access_log {facts.NGINX_LOG_DIR}/jupyterhub.access.log;" in hub
    # Another CA, another public domain: only what names them changes.
    other = json.loads(proxy.proxy_delivery(make_plan(), _pki("other")["ca"]))
    assert [f["path"] for f in other["files"] if by_path[f["path"]]["content"] != f["content"]] == [facts.PROXY_UPSTREAM_CA]


def test_staging_uses_let_s_encrypt_s_staging_server(plan):
    assert f"SERVER={facts.ACME_SERVER}\n" in proxy.certs_script(plan, proxy.sites(plan))
    staging = make_plan(acme_staging=True)
    assert f"SERVER={facts.ACME_STAGING_SERVER}\n" in proxy.certs_script(staging, proxy.sites(staging))


def test_proxy_service_installs_nginx_and_certbot():
    svc = services.proxy.SERVICE
    assert svc.built and {"nginx", "certbot", "openssl"} <= set(svc.packages)
    assert {d.path for d in svc.directories} == {facts.PROXY_ETC, facts.ACME_WEBROOT}


@pytest.mark.skipif(not SHELLCHECK, reason="shellcheck missing")
def test_certs_script_is_shellcheck_clean(plan, tmp_path):
    script = tmp_path / "nina-proxy-certs"
    script.write_text(proxy.certs_script(plan, proxy.sites(plan)))
    subprocess.run(["bash", "-n", str(script)], check=True)
    out = subprocess.run([SHELLCHECK, "-s", "bash", str(script)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout


# --- the program (mock harness) -------------------------------------------------------------------

HOSTS = raw_config()["hosts"]
REMOTE_COMMAND = "command:remote:Command"


def program(**access: object) -> Run:
    cfg = {**stack_config("test"), "nina:hosts": HOSTS, "nina:keycloak": {"sha256": "ab" * 32}}
    if access:
        cfg["nina:researcher_access"] = access
    run = run_program(cfg)
    assert run.error is None, run.error
    return run


@pytest.fixture(scope="module")
def runs() -> dict[str, Run]:
    return {
        "none": program(),
        "access": program(public_domain=DOMAIN, acme_email="fl-ops@example.edu.au"),
        "other-domain": program(public_domain="fl.example.org", acme_email="fl-ops@example.edu.au"),
    }


def test_the_proxy_host_gets_its_delivery_only_with_researcher_access(runs):
    def installs(run: Run) -> dict[str, Registration]:
        return {r.name: r for r in run.of_type(REMOTE_COMMAND) if r.name.endswith("-proxy-install")}

    assert installs(runs["none"]) == {}
    (name, command) = next(iter(installs(runs["access"]).items()))
    assert name == "gateway-proxy-install" and len(installs(runs["access"])) == 1
    payload = json.loads(payload_of(command.inputs["stdin"]))
    assert payload["restart"] == [facts.PROXY_CERTS_UNIT]
    files = {f["path"]: f["content"] for f in payload["files"]}
    assert files[facts.PROXY_UPSTREAM_CA] == runs["access"].outputs["ca_cert_pem"]
    assert f"server_name {HUB};" in files[f"{facts.NGINX_CONF_D}/nina-jupyterhub.conf"]
    # It runs after the host's base delivery.
    parent = next(r for r in runs["access"].registrations if r.name == "gateway-proxy" and r.type == "nina:flower:FileDelivery")
    assert [d.rsplit("::", 1)[1] for d in parent.dependencies] == ["gateway-base-install"]


def test_researcher_access_and_its_names_replace_no_vm_and_change_only_deliveries(runs):
    """Turning researcher access on adds the proxy's delivery and the Keycloak and JupyterHub
    components (certificates, secrets, deliveries), never a VM; a new public domain changes the
    three deliveries that name it, nothing else (not even a certificate: the internal ones name hosts)."""
    none, access, other = ({r.urn: r for r in runs[k].registrations} for k in ("none", "access", "other-domain"))
    for run in runs.values():
        assert {r.urn: r.inputs for r in run.of_type(INSTANCE)} == {r.urn: r.inputs for r in runs["none"].of_type(INSTANCE)}
    added = {access[u].name for u in set(access) - set(none)}
    leaf = {f"{svc}{part}" for svc in ("keycloak", "jupyterhub") for part in ("", "-key", "-csr", "-cert")}
    assert added == {
        "gateway-proxy",
        "gateway-proxy-install",
        "idp-keycloak",
        "idp-keycloak-install",
        "notebooks-jupyterhub",
        "notebooks-jupyterhub-install",
        "jupyterhub-oidc-client-secret",
        "keycloak-bootstrap-admin-password",
        *leaf,
    }, added
    assert set(other) == set(access)
    changed = {access[u].name for u in access if access[u].inputs != other[u].inputs}
    assert changed == {"gateway-proxy-install", "idp-keycloak-install", "notebooks-jupyterhub-install"}, changed


# --- nginx -t and nina-proxy-certs on this machine ------------------------------------------------

REWRITTEN = (facts.NGINX_DIR, "/etc/letsencrypt", facts.NGINX_LOG_DIR, facts.ACME_WEBROOT, facts.NGINX_PID)


def rewrite(text: str, root: Path) -> str:
    """The rendered files with their absolute paths under `root`."""
    for prefix in REWRITTEN:
        text = text.replace(prefix, f"{root}{prefix}")
    return text


def place(plan: Plan, ca: str, root: Path) -> Path:
    """The delivery's files under `root` (paths rewritten), with the directories nginx needs; the main conf."""
    for f in proxy.files(plan, ca):
        target = root / f.path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(rewrite(f.content, root))
        target.chmod(f.mode)
    for d in (facts.NGINX_LOG_DIR, os.path.dirname(facts.NGINX_PID), facts.ACME_WEBROOT, facts.LETSENCRYPT_LIVE, facts.LETSENCRYPT_RENEWAL):
        (root / d.lstrip("/")).mkdir(parents=True, exist_ok=True)
    return root / facts.NGINX_CONF.lstrip("/")


def nginx_t(conf: Path, root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([NGINX, "-t", "-c", str(conf), "-e", str(root / "nginx-error.log")], capture_output=True, text=True)


@needs_nginx
def test_nginx_t_accepts_the_rendered_configuration_and_refuses_a_missing_certificate(plan, tmp_path):
    conf = place(plan, _pki()["ca"], tmp_path)
    out = nginx_t(conf, tmp_path)
    assert out.returncode != 0 and "cannot load certificate" in out.stderr, out.stderr  # what the placeholders are for
    for name in (AUTH, HUB):
        _write_cert(tmp_path / facts.LETSENCRYPT_LIVE.lstrip("/") / name, _pki()["le"][name])
    out = nginx_t(conf, tmp_path)
    assert out.returncode == 0, out.stderr
    assert "[warn]" not in out.stderr, out.stderr


FAKE_CERTBOT = r"""#!/bin/bash
# Records its arguments; exits 1 if $CERTBOT_FAIL names the domain; else writes a lineage as
# certbot does (refusing, as certbot does, a live directory it did not make).
set -euo pipefail
echo "$*" >> "$CERTBOT_LOG"
while (($#)); do case $1 in --cert-name) name=$2; shift;; --server) server=$2; shift;; esac; shift; done
[[ " ${CERTBOT_FAIL:-} " == *" $name "* ]] && exit 1
if [[ -e "$NINA_LETSENCRYPT_LIVE/$name" && ! -L "$NINA_LETSENCRYPT_LIVE/$name/fullchain.pem" ]]; then
    echo "live directory exists for $name" >&2; exit 1
fi
mkdir -p "$NINA_LETSENCRYPT_LIVE/$name" "$CERTBOT_ARCHIVE/$name"
cp "$CERTBOT_CERTS/$name.pem" "$CERTBOT_ARCHIVE/$name/fullchain1.pem"
cp "$CERTBOT_CERTS/$name.key" "$CERTBOT_ARCHIVE/$name/privkey1.pem"
ln -sfn "$CERTBOT_ARCHIVE/$name/fullchain1.pem" "$NINA_LETSENCRYPT_LIVE/$name/fullchain.pem"
ln -sfn "$CERTBOT_ARCHIVE/$name/privkey1.pem" "$NINA_LETSENCRYPT_LIVE/$name/privkey.pem"
printf 'server = %s\n' "$server" > "$NINA_LETSENCRYPT_RENEWAL/$name.conf"
"""


@needs_nginx
def test_certs_script_makes_placeholders_then_asks_certbot_once(plan, tmp_path):
    """First run, DNS not ready: placeholders, nginx -t, reload, exit 1 naming both names. Then
    certbot succeeds (after the placeholder is gone); then nothing more is asked; a change of ACME
    server asks again, forcing the renewal."""
    root = tmp_path / "root"
    conf = place(plan, _pki()["ca"], root)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    certs = tmp_path / "issued"
    certs.mkdir()
    for name in (AUTH, HUB):
        cert, key = _pki()["le"][name]
        (certs / f"{name}.pem").write_text(cert)
        (certs / f"{name}.key").write_text(key)
    _script(bin_dir / "certbot", FAKE_CERTBOT)
    _script(bin_dir / "systemctl", f'#!/bin/bash\necho "$*" >> {tmp_path}/systemctl.log\n')
    _script(bin_dir / "nginx", f'#!/bin/bash\nexec {NGINX} -c {conf} -e {root}/nginx-error.log "$@"\n')
    live, renewal = root / facts.LETSENCRYPT_LIVE.lstrip("/"), root / facts.LETSENCRYPT_RENEWAL.lstrip("/")
    env = {
        **os.environ,
        "CERTBOT": str(bin_dir / "certbot"),
        "SYSTEMCTL": str(bin_dir / "systemctl"),
        "NGINX": str(bin_dir / "nginx"),
        "NINA_LETSENCRYPT_LIVE": str(live),
        "NINA_LETSENCRYPT_RENEWAL": str(renewal),
        "NINA_ACME_WEBROOT": str(root / facts.ACME_WEBROOT.lstrip("/")),
        "CERTBOT_LOG": str(tmp_path / "certbot.log"),
        "CERTBOT_ARCHIVE": str(root / "etc/letsencrypt/archive"),
        "CERTBOT_CERTS": str(certs),
    }
    script = root / facts.PROXY_CERTS_BIN.lstrip("/")

    def run(**extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(script)], env={**env, **extra}, capture_output=True, text=True, timeout=60)

    def certbot_calls() -> list[str]:
        log = tmp_path / "certbot.log"
        calls = log.read_text().splitlines() if log.exists() else []
        log.unlink(missing_ok=True)
        return calls

    out = run(CERTBOT_FAIL=f"{AUTH} {HUB}")
    assert out.returncode == 1 and f"no Let's Encrypt certificate yet for {AUTH} {HUB}" in out.stderr, out.stderr
    for name in (AUTH, HUB):
        placeholder = x509.load_pem_x509_certificate((live / name / "fullchain.pem").read_bytes())
        assert placeholder.subject == placeholder.issuer  # self-signed
        assert placeholder.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName) == [name]
        assert oct((live / name / "privkey.pem").stat().st_mode & 0o777) == "0o600"
    assert (tmp_path / "systemctl.log").read_text() == f"reload-or-restart {facts.NGINX_UNIT}\n"
    calls = certbot_calls()
    assert len(calls) == 2 and all("certonly --non-interactive --agree-tos" in c for c in calls)
    assert f"--cert-name {AUTH} --domain {AUTH}" in calls[0] and f"--server {facts.ACME_SERVER}" in calls[0]
    assert f"--deploy-hook systemctl reload {facts.NGINX_UNIT}" in calls[0] and "--webroot --webroot-path" in calls[0]

    out = run()
    assert out.returncode == 0, out.stderr
    assert len(certbot_calls()) == 2
    assert (live / AUTH / "fullchain.pem").read_text() == _pki()["le"][AUTH][0]
    assert nginx_t(conf, root).returncode == 0

    out = run()
    assert out.returncode == 0, out.stderr
    assert certbot_calls() == []  # idempotent: certbot.timer renews from here

    (renewal / f"{HUB}.conf").write_text(f"server = {facts.ACME_STAGING_SERVER}\n")
    out = run()
    assert out.returncode == 0, out.stderr
    (call,) = certbot_calls()
    assert f"--cert-name {HUB}" in call and call.endswith("--force-renewal --break-my-certs")


# --- real nginx on loopback ------------------------------------------------------------------------


@pytest.fixture
def lab_root() -> Iterator[Path]:
    """A directory nginx's workers (www-data) may read: pytest's tmp_path is private to root."""
    root = Path(tempfile.mkdtemp(prefix="nina-proxylab-"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@needs_netns
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_real_nginx_proxies_each_name_to_its_upstream(plan, lab_root):
    pki = _pki()
    conf = place(plan, pki["ca"], lab_root)
    # In the lab, nginx and the upstreams share one namespace: nginx listens on 127.0.0.1 only, so
    # the upstreams keep their own addresses for their ports.
    for path in conf.parent.rglob("*.conf"):
        path.write_text(
            path.read_text()
            .replace(f"listen {facts.HTTPS_PORT} ", f"listen 127.0.0.1:{facts.HTTPS_PORT} ")
            .replace(f"listen {facts.HTTP_PORT}", f"listen 127.0.0.1:{facts.HTTP_PORT}")
        )
    for name in (AUTH, HUB):
        _write_cert(lab_root / facts.LETSENCRYPT_LIVE.lstrip("/") / name, pki["le"][name])
    challenge = lab_root / facts.ACME_WEBROOT.lstrip("/") / ".well-known/acme-challenge"
    challenge.mkdir(parents=True)
    (challenge / "token-1").write_text("token-1.thumbprint")
    for p in [challenge, challenge.parent]:
        p.chmod(0o755)
    (challenge / "token-1").chmod(0o644)
    files = {}
    for label, (cert, key) in {**pki["upstreams"], **pki["bad"]}.items():
        files[label] = {"cert": str(lab_root / f"{label}.crt"), "key": str(lab_root / f"{label}.key")}
        Path(files[label]["cert"]).write_text(cert)
        Path(files[label]["key"]).write_text(key)
    le_ca = lab_root / "le-ca.crt"
    le_ca.write_text(pki["le_ca"])
    sites = proxy.sites(plan)
    spec = {
        "nginx": [NGINX, "-c", str(conf), "-e", str(lab_root / "nginx-error.log"), "-g", "daemon off;"],
        "upstreams": [{"name": s.upstream_host, "ip": s.upstream_ip, "port": s.upstream_port, **files[s.upstream_host]} for s in sites],
        "client_ca": str(le_ca),
        "requests": [
            {"id": "auth", "port": 443, "sni": AUTH, "host": AUTH, "headers": {"X-Forwarded-For": "198.51.100.66"}},
            {"id": "hub", "port": 443, "sni": HUB, "host": HUB, "path": "/hub/login"},
            {"id": "auth-realm", "port": 443, "sni": AUTH, "host": AUTH, "path": f"/realms/{facts.KEYCLOAK_REALM}/account"},
            {"id": "auth-admin", "port": 443, "sni": AUTH, "host": AUTH, "path": "/admin/master/console/"},
            {"id": "auth-master", "port": 443, "sni": AUTH, "host": AUTH, "path": "/realms/master/protocol/openid-connect/token"},
            {"id": "hub-admin-path", "port": 443, "sni": HUB, "host": HUB, "path": "/admin/"},
            {"id": "hub-ws", "port": 443, "sni": HUB, "host": HUB, "path": "/user/a/api/kernels/1/channels", "websocket": True},
            {"id": "auth-ws", "port": 443, "sni": AUTH, "host": AUTH, "websocket": True},
            {"id": "unknown-sni", "port": 443, "sni": f"evil.{DOMAIN}", "host": f"evil.{DOMAIN}"},
            {"id": "no-sni", "port": 443, "sni": None, "host": AUTH},
            {"id": "unknown-host", "port": 443, "sni": HUB, "host": "evil.example"},
            {"id": "sni-host-mismatch", "port": 443, "sni": HUB, "host": AUTH},
            {"id": "acme", "port": 80, "tls": False, "host": HUB, "path": f"{facts.ACME_CHALLENGE_PATH}token-1"},
            {"id": "acme-missing", "port": 80, "tls": False, "host": HUB, "path": f"{facts.ACME_CHALLENGE_PATH}nope"},
            {"id": "http", "port": 80, "tls": False, "host": HUB, "path": "/hub/login?next=x"},
            {"id": "http-unknown", "port": 80, "tls": False, "host": "evil.example", "path": f"{facts.ACME_CHALLENGE_PATH}token-1"},
            {"id": "other-ca", "port": 443, "sni": AUTH, "host": AUTH, "replace": 0, "with": files["other-ca"]},
            {"id": "wrong-name", "port": 443, "sni": AUTH, "host": AUTH, "replace": 0, "with": files["wrong-name"]},
        ],
    }
    (lab_root / "spec.json").write_text(json.dumps(spec))
    out = subprocess.run(
        ["unshare", "-n", sys.executable, str(HERE / "proxylab.py"), str(lab_root / "spec.json")],
        capture_output=True,
        text=True,
        timeout=90,
    )
    logs = lab_root / facts.NGINX_LOG_DIR.lstrip("/")
    log = "".join(p.read_text() for p in (lab_root / "nginx-error.log", logs / "error.log") if p.exists())
    assert out.returncode == 0, out.stderr + log
    r = json.loads(out.stdout)

    for rid, upstream, name in (("auth", "idp", AUTH), ("hub", "notebooks", HUB)):
        assert r[rid]["status"] == 200, (rid, r[rid], log)
        body = json.loads(r[rid]["body"])
        assert body["upstream"] == upstream
        seen = {k.lower(): v for k, v in body["headers"]}
        assert seen["host"] == name and seen["x-forwarded-proto"] == "https" and seen["x-forwarded-host"] == name
        assert seen["x-forwarded-for"] == "127.0.0.1"  # the client's claim is replaced
        sent = [(k.lower(), v) for k, v in r[rid]["headers"]]
        for header, value in proxy.SECURITY_HEADERS:
            assert [v for k, v in sent if k == header.lower()] == [value], (header, sent)
    # Keycloak's admin console and API and its master realm are not public; the researchers' realm is.
    assert r["auth-realm"]["status"] == 200 and json.loads(r["auth-realm"]["body"])["upstream"] == "idp"
    assert r["auth-admin"]["status"] == 404 and r["auth-master"]["status"] == 404, (r["auth-admin"], r["auth-master"])
    assert r["hub-admin-path"]["status"] == 200  # only Keycloak's site blocks these paths
    assert r["hub-ws"]["status"] == 101 and r["hub-ws"]["accept_ok"] and r["hub-ws"]["echo_ok"], r["hub-ws"]
    assert r["auth-ws"]["status"] == 200  # Keycloak's site passes no upgrade on
    assert "upgrade" not in {k.lower() for k, _ in json.loads(r["auth-ws"]["body"])["headers"]}
    assert r["unknown-sni"]["outcome"] == "handshake refused" and "UNRECOGNIZED_NAME" in r["unknown-sni"]["error"].upper()
    assert r["no-sni"]["outcome"] == "handshake refused"
    assert r["unknown-host"]["outcome"] in ("closed without an answer", "closed"), r["unknown-host"]
    assert r["sni-host-mismatch"]["status"] == 421
    assert (r["acme"]["status"], r["acme"]["body"]) == (200, "token-1.thumbprint")
    assert r["acme-missing"]["status"] == 404
    assert r["http"]["status"] == 301 and ["Location", f"https://{HUB}/hub/login?next=x"] in r["http"]["headers"]
    assert r["http-unknown"]["outcome"] == "closed without an answer"
    assert r["other-ca"]["status"] == 502 and r["wrong-name"]["status"] == 502
    assert "upstream SSL certificate verify error" in log and "upstream SSL certificate does not match" in log, log
    assert "/hub/login" in (logs / "jupyterhub.access.log").read_text()
    assert "/hub/login" not in (logs / "keycloak.access.log").read_text()


# --- throwaway PKI -----------------------------------------------------------------------------------

_PKI: dict[str, dict] = {}


def _ca(label: str) -> tuple[str, str]:
    key = localpki.generate_key("ECDSA", "P256").private_key_pem
    return key, localpki.self_signed_ca(key, {"common_name": f"throwaway {label} CA"}, 24)


def _leaf(ca: tuple[str, str], name: str) -> tuple[str, str]:
    key = localpki.generate_key("ECDSA", "P256").private_key_pem
    csr = localpki.cert_request(key, {"common_name": name}, dns_names=[name])
    return localpki.sign_certificate(csr, ca[0], ca[1], 24, facts.SERVER_CERT_USES), key


def _pki(label: str = "local") -> dict:
    """A local CA with upstream certificates for the plan's hosts, a stand-in "Let's Encrypt" CA
    with certificates for the public names, and bad upstream certificates (made once per label)."""
    if label not in _PKI:
        local, le, other = _ca(label), _ca("Let's Encrypt"), _ca("other")
        _PKI[label] = {
            "ca": local[1],
            "upstreams": {h: _leaf(local, h) for h in ("idp", "notebooks")},
            "bad": {"other-ca": _leaf(other, "idp"), "wrong-name": _leaf(local, "notebooks")},
            "le_ca": le[1],
            "le": _le_certs(le),
        }
    return _PKI[label]


def _le_certs(le: tuple[str, str]) -> dict[str, tuple[str, str]]:
    out = {}
    for name in (AUTH, HUB):
        cert, key = _leaf(le, name)
        out[name] = (cert + le[1], key)  # fullchain: leaf, then the issuer
    return out


def _write_cert(directory: Path, cert_key: tuple[str, str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "fullchain.pem").write_text(cert_key[0])
    (directory / "privkey.pem").write_text(cert_key[1])
    (directory / "privkey.pem").chmod(0o600)


def _script(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


@needs_systemd_analyze
def test_systemd_analyze_verifies_the_certs_unit(plan, tmp_path):
    script = tmp_path / "nina-proxy-certs"
    _script(script, proxy.certs_script(plan, proxy.sites(plan)))

    def verify(unit_text: str) -> list[str]:
        return verify_text(tmp_path, facts.PROXY_CERTS_UNIT, unit_text, {facts.PROXY_CERTS_BIN: str(script)}, "nina")

    assert verify(proxy.certs_unit()) == []
    assert verify(proxy.certs_unit().replace("Type=oneshot", "Type=oneshoot"))  # the check can fail
