"""The OpenVPN hub's files (nina.vpn), the prune feature of nina-install-files and the vpn
host's user-data: content, determinism, and checks with the real tools (openvpn parses and
loads the configs and the tls-crypt-v2 keys, bash/shellcheck, the forwarding script against fake
ip/iptables/sysctl, systemd-analyze, cloud-init schema). The real tunnel is test_vpn_tunnel.py.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import vpn_hub_payload
from systemd import needs_systemd_analyze, verify
from vpnlab import rewrite

from cloudinit.userdata import user_data
from nina import facts, render, tlscrypt, vpn
from nina.plan import Member

OPENVPN = shutil.which("openvpn") or ""  # "" when missing (the tests skip)
SHELLCHECK = shutil.which("shellcheck") or ""  # "" when missing (the tests skip)
CLOUD_INIT = shutil.which("cloud-init") or ""  # "" when missing (the tests skip)
TEMPLATES = Path(vpn.__file__).parent / "templates" / "vpn"
PUBLIC_IP = "203.0.113.10"
READY = "Initialization Sequence Completed"
CA = "-----BEGIN CERTIFICATE-----\nMIIBdummyCA\n-----END CERTIFICATE-----\n"
CERT = "-----BEGIN CERTIFICATE-----\nMIIBdummyLEAF\n-----END CERTIFICATE-----\n"
KEY = "-----BEGIN EC PRIVATE KEY-----\nMIGkdummy\n-----END EC PRIVATE KEY-----\n"
TC_SERVER_RAW = bytes(range(128))
TC_CLIENT_RAW = bytes(range(256))


def directives(conf: str) -> list[list[str]]:
    """Non-comment lines of an OpenVPN config, split into words."""
    return [line.split() for line in conf.splitlines() if line.strip() and not line.lstrip().startswith(("#", ";"))]


def first(conf: str, name: str) -> list[str] | None:
    return next((d[1:] for d in directives(conf) if d[0] == name), None)


def _can_unshare() -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    return subprocess.run(["unshare", "-n", "true"], capture_output=True, timeout=10).returncode == 0


needs_openvpn = pytest.mark.skipif(not OPENVPN, reason="openvpn missing (scripts/bootstrap --test-tools installs it)")
needs_netns = pytest.mark.skipif(not OPENVPN or not _can_unshare(), reason="needs openvpn, root and `unshare -n`")


@pytest.fixture(scope="module")
def hub(vpn_tenancy):
    return vpn_tenancy.vpn


@pytest.fixture(scope="module")
def onprem(vpn_tenancy):
    return [m for m in vpn_tenancy.members if m.vpn_address]


@pytest.fixture(scope="module")
def delivery(vpn_pki):
    """vpn.vpn_delivery with the session's real PKI (conftest.vpn_hub_payload)."""
    return functools.partial(vpn_hub_payload, vpn_pki)


# --- purity and templates --------------------------------------------------------------------


def test_vpn_never_imports_pulumi():
    code = "import sys, nina.vpn\nassert not [m for m in sys.modules if m.startswith('pulumi')]\n"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent.parent, timeout=60)


def test_templates_are_clean_text():
    names = sorted(p.name for p in TEMPLATES.glob("*.j2"))
    assert len(names) >= 6, names
    for name in names:
        text = (TEMPLATES / name).read_text()
        assert text.endswith("\n"), name
        for n, line in enumerate(text.splitlines(), 1):
            assert "\t" not in line and line == line.rstrip(), f"{name}:{n}"


def test_everything_renders_deterministically(hub, onprem, delivery):
    outputs = lambda: [  # noqa: E731
        vpn.client_conf("metro-north", "vpn-main", PUBLIC_IP, facts.OPENVPN_UDP_PORT, facts.OPENVPN_TCP_PORT),
        vpn.server_conf(hub),
        vpn.server_tcp_conf(hub),
        vpn.forwarding_script(hub),
        vpn.forwarding_unit(),
        vpn.openvpn_server_dropin(),
        *(vpn.ccd_entry(hub, m) for m in onprem),
        delivery(hub, onprem),
    ]
    a, b = outputs(), outputs()
    assert a == b
    for text in a:
        assert text.endswith("\n") and not text.endswith("\n\n")
        assert "{{" not in text and "{%" not in text
    for text in a[:-1]:  # the configs and scripts (the payload is one JSON line)
        assert all(len(line) < 256 for line in text.splitlines())  # openvpn's limit, comments included


# --- client.conf ---------------------------------------------------------------------------------


def test_client_conf_is_the_manuals_made_robust():
    conf = vpn.client_conf("metro-north", "vpn-main", PUBLIC_IP, 1194, 443)
    d = directives(conf)
    names = [x[0] for x in d]
    assert names[0] == "client" and first(conf, "dev") == ["tap"]
    for flag in ("nobind", "persist-key", "persist-tun"):
        assert [flag] in d
    assert first(conf, "remote-cert-tls") == ["server"]
    assert first(conf, "verify-x509-name") == ["vpn-main", "name"]
    certs = facts.OPENVPN_CLIENT_CERTS
    assert certs == "/etc/openvpn/clientcerts"
    assert first(conf, "tls-crypt-v2") == ["/etc/openvpn/clientcerts/private/tls-crypt-v2.key"]
    assert first(conf, "tls-auth") is None
    assert first(conf, "ca") == ["/etc/openvpn/clientcerts/ca.crt"]
    assert first(conf, "cert") == ["/etc/openvpn/clientcerts/issued/metro-north.crt"]
    assert first(conf, "key") == ["/etc/openvpn/clientcerts/private/metro-north.key"]
    assert first(conf, "verb") == ["3"]
    assert first(conf, "server-poll-timeout") == [str(facts.OPENVPN_SERVER_POLL_TIMEOUT)]
    # Two connection blocks, UDP first, at the end (options after a block would not apply to it).
    blocks = re.findall(r"<connection>\n(.*?)</connection>", conf, re.S)
    assert [directives(b) for b in blocks] == [
        [["remote", PUBLIC_IP, "1194"], ["proto", "udp"], ["explicit-exit-notify", "1"]],
        [["remote", PUBLIC_IP, "443"], ["proto", "tcp-client"]],
    ]
    assert conf.rstrip().endswith("</connection>")
    assert not {"keepalive", "ping", "ping-restart", "remote", "proto"} & set(names[: names.index("<connection>")])
    assert [vpn.client_certs_paths("metro-north")["key"]] == first(conf, "key")


@pytest.mark.parametrize(
    "args, match",
    [
        (("Metro_North", "vpn-main", PUBLIC_IP, 1194, 443), "slug"),
        (("../etc", "vpn-main", PUBLIC_IP, 1194, 443), "slug"),
        (("metro-north", "vpn main", PUBLIC_IP, 1194, 443), "server name"),
        (("metro-north", "vpn-main", "203.0.113.10\nremote evil", 1194, 443), "public address"),
        (("metro-north", "vpn-main", PUBLIC_IP, 0, 443), "UDP port"),
        (("metro-north", "vpn-main", PUBLIC_IP, 1194, "443"), "TCP port"),
    ],
)
def test_client_conf_refuses_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        vpn.client_conf(*args)


# --- server configs ------------------------------------------------------------------------------


def test_server_confs(hub):
    udp, tcp = vpn.server_conf(hub), vpn.server_tcp_conf(hub)
    pki = facts.OPENVPN_SERVER_PKI
    for conf, port, proto, dev in (
        (udp, facts.OPENVPN_UDP_PORT, "udp", facts.OPENVPN_TAP_UDP),
        (tcp, facts.OPENVPN_TCP_PORT, "tcp-server", facts.OPENVPN_TAP_TCP),
    ):
        d = directives(conf)
        assert first(conf, "port") == [str(port)] and first(conf, "proto") == [proto]
        assert first(conf, "dev") == [dev] and first(conf, "dev-type") == ["tap"]
        assert ["mode", "server"] in d and ["tls-server"] in d
        assert ["push", '"route-gateway', f'{hub.server_ip}"'] in d
        assert [x for x in d if x[0] == "push" and x[1] == '"route'] == [
            ["push", '"route', str(n.network_address), f'{n.netmask}"'] for n in hub.routes
        ]
        assert first(conf, "ca") == [f"{pki}/ca.crt"]
        assert first(conf, "cert") == [f"{pki}/issued/server.crt"]
        assert first(conf, "key") == [f"{pki}/private/server.key"]
        assert first(conf, "tls-crypt-v2") == [f"{pki}/private/tls-crypt-v2-server.key"] and first(conf, "tls-auth") is None
        assert first(conf, "script-security") == ["2"]
        allow = facts.OPENVPN_ALLOW_DIR
        assert first(conf, "tls-crypt-v2-verify") == [f'"{facts.VPN_VERIFY_BIN}', "tls-crypt-v2", f'{allow}"']
        assert first(conf, "tls-verify") == [f'"{facts.VPN_VERIFY_BIN}', "tls-verify", f'{allow}"']
        assert first(conf, "dh") == ["none"]
        assert first(conf, "remote-cert-tls") == ["client"]
        assert first(conf, "client-config-dir") == [facts.OPENVPN_CCD_DIR] and ["ccd-exclusive"] in d
        assert first(conf, "keepalive") == ["10", "60"]
        assert ["persist-key"] in d and ["persist-tun"] in d
        assert first(conf, "user") == ["nobody"] and first(conf, "group") == ["nogroup"]
        assert first(conf, "verb") == ["3"]
        names = {x[0] for x in d}
        # journald gets the logs (manual 5.4); no `server` (it would ifconfig the tap), no dynamic pool
        assert not names & {"daemon", "log", "log-append", "server", "ifconfig", "ifconfig-pool", "client-to-client", "duplicate-cn"}
    assert ["explicit-exit-notify", "1"] in directives(udp) and first(tcp, "explicit-exit-notify") is None
    assert first(udp, "management") == [facts.OPENVPN_MANAGEMENT_SOCKETS[0], "unix"]
    assert first(tcp, "management") == [facts.OPENVPN_MANAGEMENT_SOCKETS[1], "unix"]
    assert all(sock.startswith(facts.OPENVPN_RUN_DIR + "/") for sock in facts.OPENVPN_MANAGEMENT_SOCKETS)
    # The two instances differ only in transport, device, management socket and that one line.
    same = lambda conf: [x for x in directives(conf) if x[0] not in ("port", "proto", "dev", "management", "explicit-exit-notify")]  # noqa: E731
    assert same(udp) == same(tcp)


def test_server_conf_refuses_inconsistent_plans(hub):
    with pytest.raises(ValueError, match="inside the VPN pool"):
        vpn.server_conf(dataclasses.replace(hub, superlink_ip="192.168.99.50"))
    with pytest.raises(ValueError, match="outside the VPN pool"):
        vpn.server_conf(dataclasses.replace(hub, routes=(hub.pool,)))


def test_ccd_entries(hub, onprem, vpn_tenancy):
    assert [m.vpn_address for m in onprem] == [str(hub.pool.network_address + facts.VPN_CLIENT_OFFSET + m.partition_id) for m in onprem]
    for m in onprem:
        text = vpn.ccd_entry(hub, m)
        assert directives(text) == [["ifconfig-push", m.vpn_address, str(hub.pool.netmask)]]
        assert m.slug in text.splitlines()[0]
    cloud = Member("main", "org-c", "C", "cloud", 5, False)
    with pytest.raises(ValueError, match="no VPN address"):
        vpn.ccd_entry(hub, cloud)
    for bad in ("10.0.0.5", hub.server_ip, str(hub.pool.broadcast_address), "not-an-ip"):
        with pytest.raises(ValueError):
            vpn.ccd_entry(hub, dataclasses.replace(onprem[0], vpn_address=bad))


# --- openvpn itself reads the files ----------------------------------------------------------------


def _run_until(argv: list[str], pattern: str, log: Path, timeout: float = 8) -> str:
    """Start argv in a private network namespace, stop at `pattern`, exit or timeout; its output."""
    with open(log, "w") as out:
        proc = subprocess.Popen(
            ["unshare", "-n", *argv], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None and not re.search(pattern, log.read_text()):
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    return log.read_text()


def _place(root: Path, files: dict[str, str], modes: dict[str, int] | None = None) -> None:
    for path, text in files.items():
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod((modes or {}).get(path, 0o600 if "/private/" in path else 0o644))


@needs_netns
@pytest.mark.parametrize("which", ["server_conf", "server_tcp_conf"])
def test_openvpn_starts_each_server_instance(tmp_path, hub, onprem, delivery, which):
    """openvpn loads the config, the PKI, the tls-crypt-v2 server key and the CCD dir and comes up
    (in a private namespace: it creates its own tap there)."""
    payload = json.loads(delivery(hub, onprem))
    _place(tmp_path, {f["path"]: f["content"] for f in payload["files"]}, {f["path"]: f["mode"] for f in payload["files"]})
    conf = tmp_path / "server.conf"
    conf.write_text(rewrite(getattr(vpn, which)(hub), tmp_path))
    out = _run_until([OPENVPN, "--config", str(conf)], READY, tmp_path / "openvpn.log")
    assert READY in out, out
    assert "Options error" not in out and "WARNING" not in out, out  # e.g. no key readable by others


@needs_netns
def test_openvpn_loads_the_client_conf(tmp_path, vpn_pki):
    """The client parses, loads its keys and starts the UDP connection (no server: nothing more);
    no option is silently ignored."""
    cert, key = vpn_pki["clients"]["metro-north"]
    paths = vpn.client_certs_paths("metro-north")
    files = {
        paths["ca"]: vpn_pki["ca"],
        paths["cert"]: cert,
        paths["key"]: key,
        paths["tls_crypt_v2"]: vpn_pki["tls_crypt_v2"]["metro-north"],
    }
    _place(tmp_path, files)
    conf = tmp_path / "client.conf"
    conf.write_text(rewrite(vpn.client_conf("metro-north", "vpn-main", PUBLIC_IP, 1194, 443), tmp_path))
    out = _run_until([OPENVPN, "--config", str(conf)], r"UDPv4 link remote: \[AF_INET\]203\.0\.113\.10:1194", tmp_path / "openvpn.log")
    assert f"UDPv4 link remote: [AF_INET]{PUBLIC_IP}:1194" in out, out
    assert "Options error" not in out and "is ignored" not in out, out


@needs_netns
def test_openvpn_config_check_can_fail(tmp_path):
    conf = tmp_path / "client.conf"
    conf.write_text(
        vpn.client_conf("metro-north", "vpn-main", PUBLIC_IP, 1194, 443).replace("remote-cert-tls server", "remote-cert-tls sever")
    )
    out = _run_until([OPENVPN, "--config", str(conf)], "Options error", tmp_path / "openvpn.log")
    assert "Options error" in out


# --- tls-crypt-v2 keys (nina.tlscrypt) -------------------------------------------------------------


def test_tls_crypt_v2_keys_are_deterministic_and_carry_the_organisation():
    server = tlscrypt.server_key(TC_SERVER_RAW)
    assert server == tlscrypt.server_key(TC_SERVER_RAW.hex()) == tlscrypt.server_key_file(server)
    client = tlscrypt.client_key(server, TC_CLIENT_RAW, "metro-north")
    assert client == tlscrypt.client_key(server, TC_CLIENT_RAW.hex(), "metro-north") == tlscrypt.client_key_file(client)
    assert all(len(line) <= 64 for line in client.splitlines())
    kc, meta = tlscrypt.unwrap(server, client)
    assert kc == TC_CLIENT_RAW
    kid = tlscrypt.key_id(TC_CLIENT_RAW)
    assert meta == b"\x00nina-fl metro-north " + kid.encode() and tlscrypt.client_key_id(client) == kid
    # Another organisation, or other bytes: another key; another server key cannot unwrap it.
    assert tlscrypt.client_key(server, TC_CLIENT_RAW, "sunshine-coast") != client
    other = tlscrypt.server_key(bytes(reversed(TC_SERVER_RAW)))
    with pytest.raises(ValueError, match="not made with this server key"):
        tlscrypt.unwrap(other, client)


@needs_openvpn
def test_tls_crypt_v2_matches_openvpn(tmp_path):
    """Our unwrap opens a client key that openvpn made, and openvpn makes client keys from our
    server key: the two agree on the format of both files."""
    srv, cli = tmp_path / "srv.key", tmp_path / "cli.key"
    subprocess.run([OPENVPN, "--genkey", "tls-crypt-v2-server", str(srv)], check=True, capture_output=True, timeout=30)
    subprocess.run(
        [OPENVPN, "--tls-crypt-v2", str(srv), "--genkey", "tls-crypt-v2-client", str(cli)], check=True, capture_output=True, timeout=30
    )
    kc, meta = tlscrypt.unwrap(srv.read_text(), cli.read_text())
    assert len(kc) == tlscrypt.CLIENT_KEY_BYTES and meta[0] == 1 and len(meta) == 9  # openvpn's default: a timestamp
    assert tlscrypt.server_key_file(srv.read_text()) == srv.read_text()
    assert tlscrypt.client_key_file(cli.read_text()) == cli.read_text()
    ours = tmp_path / "ours.key"
    ours.write_text(tlscrypt.server_key(os.urandom(128)))
    made = subprocess.run(
        [OPENVPN, "--tls-crypt-v2", str(ours), "--genkey", "tls-crypt-v2-client", str(tmp_path / "c.key")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert made.returncode == 0, made.stdout + made.stderr
    assert tlscrypt.unwrap(ours.read_text(), (tmp_path / "c.key").read_text())[1][0] == 1


@pytest.mark.parametrize(
    "bad",
    [TC_SERVER_RAW[:-1], TC_SERVER_RAW + b"\x00", TC_SERVER_RAW.hex()[:-1] + "g", bytes(128), "0" * 256, None, 42],
)
def test_tls_crypt_v2_server_key_refuses_bad_input(bad):
    with pytest.raises(ValueError):
        tlscrypt.server_key(bad)


def test_tls_crypt_v2_key_files_refuse_tampering():
    server = tlscrypt.server_key(TC_SERVER_RAW)
    client = tlscrypt.client_key(server, TC_CLIENT_RAW, "metro-north")
    lines = client.splitlines()
    for bad in (
        client + client,  # two blocks
        "junk\n" + client,
        "\n".join(lines[:3] + lines[4:]) + "\n",  # a line missing: the length field no longer matches
        client.replace("client key", "server key"),
        server,
    ):
        with pytest.raises(ValueError):
            tlscrypt.client_key_file(bad)
    with pytest.raises(ValueError):
        tlscrypt.server_key_file(client)
    with pytest.raises(ValueError, match="slug"):
        tlscrypt.client_key(server, TC_CLIENT_RAW, "Not A Slug")


# --- delivery --------------------------------------------------------------------------------------


def test_vpn_delivery(hub, onprem, vpn_tenancy, vpn_pki, delivery):
    payload = json.loads(delivery(hub, vpn_tenancy.members))
    files = {f["path"]: f for f in payload["files"]}
    pki = facts.OPENVPN_SERVER_PKI
    assert files[facts.OPENVPN_SERVER_CONF]["content"] == vpn.server_conf(hub)
    assert files[facts.OPENVPN_TCP_SERVER_CONF]["content"] == vpn.server_tcp_conf(hub)
    assert files[f"{pki}/ca.crt"]["content"] == vpn_pki["ca"] and files[f"{pki}/issued/server.crt"]["content"] == vpn_pki["server_cert"]
    assert files[f"{pki}/private/server.key"]["content"] == vpn_pki["server_key"]
    assert files[f"{pki}/private/tls-crypt-v2-server.key"]["content"] == vpn_pki["tls_crypt_v2_server"]
    for path in (f"{pki}/private/server.key", f"{pki}/private/tls-crypt-v2-server.key"):
        assert files[path]["mode"] == 0o600
    assert files[facts.VPN_VERIFY_BIN]["mode"] == 0o755 and "nina.host.vpn_verify" in files[facts.VPN_VERIFY_BIN]["content"]
    assert all(f["owner"] == f["group"] == "root" for f in files.values())
    assert files[facts.VPN_FORWARDING_BIN]["mode"] == 0o755 and files[facts.VPN_FORWARDING_BIN]["content"] == vpn.forwarding_script(hub)
    assert files[f"{facts.SYSTEMD_SYSTEM_DIR}/{facts.VPN_FORWARDING_UNIT}"]["content"] == vpn.forwarding_unit()
    assert files[facts.OPENVPN_SERVER_DROPIN]["content"] == vpn.openvpn_server_dropin()
    executables = (facts.VPN_FORWARDING_BIN, facts.VPN_VERIFY_BIN)
    assert all(f["mode"] == 0o644 for p, f in files.items() if "/private/" not in p and p not in executables)
    ccd = {p.rsplit("/", 1)[1]: f["content"] for p, f in files.items() if p.startswith(facts.OPENVPN_CCD_DIR + "/")}
    assert ccd == {m.slug: vpn.ccd_entry(hub, m) for m in onprem}  # only on-premise members
    allowed = {p.rsplit("/", 1)[1]: f["content"] for p, f in files.items() if p.startswith(facts.OPENVPN_ALLOW_DIR + "/")}
    assert allowed == {m.slug: vpn.allow_entry(m.slug, vpn_pki["admitted"][m.slug]) for m in onprem}
    for m in onprem:  # the certificate's SHA-256 as openssl prints it, and the key's id
        cert = vpn_pki["clients"][m.slug][0]
        der = subprocess.run(["openssl", "x509", "-outform", "DER"], input=cert.encode(), capture_output=True, check=True).stdout
        assert f"cert-sha256 {hashlib.sha256(der).hexdigest()}\n" in allowed[m.slug]
        assert f"tls-crypt-v2 {tlscrypt.client_key_id(vpn_pki['tls_crypt_v2'][m.slug])}\n" in allowed[m.slug]
    assert payload["prune"] == [facts.OPENVPN_CCD_DIR, facts.OPENVPN_ALLOW_DIR]
    assert payload["hot"] == {d: list(facts.OPENVPN_MANAGEMENT_SOCKETS) for d in (facts.OPENVPN_CCD_DIR, facts.OPENVPN_ALLOW_DIR)}
    assert payload["restart"] == [facts.VPN_FORWARDING_UNIT, facts.OPENVPN_SERVER_UNIT, facts.OPENVPN_TCP_SERVER_UNIT]


def test_vpn_delivery_refuses_wrong_material(hub, onprem, vpn_pki, delivery):
    with pytest.raises(ValueError, match="CA certificate"):
        delivery(hub, onprem, ca=KEY)
    with pytest.raises(ValueError, match="server key"):
        delivery(hub, onprem, key=CERT)
    with pytest.raises(ValueError, match="tls-crypt-v2 server key"):
        delivery(hub, onprem, tc_server=vpn_pki["tls_crypt_v2"]["metro-north"])
    twin = dataclasses.replace(onprem[1], vpn_address=onprem[0].vpn_address)
    with pytest.raises(ValueError, match="share the VPN address"):
        delivery(hub, [onprem[0], twin])
    with pytest.raises(ValueError, match="must be exactly the on-premise members"):
        delivery(hub, onprem, admitted={onprem[0].slug: vpn_pki["admitted"][onprem[0].slug]})
    with pytest.raises(ValueError):  # an allow entry from something that is not one certificate
        delivery(hub, onprem, admitted={m.slug: vpn.Admitted(CERT, "0" * 32) for m in onprem})


def test_delivery_payload_prune_argument():
    files = [render.DeliveredFile("/etc/app/conf.d/a.conf", "x\n", 0o644, "root", "root")]
    assert "prune" not in json.loads(render.delivery_payload(files, []))  # existing payloads unchanged
    assert json.loads(render.delivery_payload(files, [], prune=["/etc/app/conf.d"]))["prune"] == ["/etc/app/conf.d"]
    assert json.loads(render.delivery_payload(files, [], ["/etc/app/conf.d/sub"]))["prune"] == ["/etc/app/conf.d/sub"]
    for bad in ["/", "/etc", "/etc/app", "etc/app/conf.d", "/etc/app/conf.d/../x", "/srv/other/dir", "/etc/app/conf.d/"]:
        with pytest.raises(ValueError, match="prune"):
            render.delivery_payload(files, [], prune=[bad])
    with pytest.raises(ValueError, match="must be lists"):
        render.delivery_payload(files, [], prune="/etc/app/conf.d")


# --- nina-install-files: prune ---------------------------------------------------------------------


@dataclass
class Installer:
    """nina-install-files under --root, with a fake systemctl that logs its calls."""

    script: Path
    root: Path
    calls: Path
    fake: Path

    def __call__(self, payload: str, *args: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "NINA_SYSTEMCTL": str(self.fake), "NINA_UPDATE_CA_CERTIFICATES": str(self.fake)}
        return subprocess.run(
            [sys.executable, str(self.script), "--root", str(self.root), *args],
            input=payload,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )


@pytest.fixture
def install(tmp_path) -> Installer:
    script = tmp_path / "nina-install-files"
    script.write_text(render.install_files_script(render.SOURCE_ROOT))
    calls = tmp_path / "calls.log"
    fake = tmp_path / "fake-systemctl"
    fake.write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')
    fake.chmod(0o755)
    return Installer(script, tmp_path / "root", calls, fake)


def test_install_files_prunes_removed_organisations(install, hub, onprem, vpn_pki, delivery):
    first_payload = delivery(hub, onprem)
    assert install(first_payload).returncode == 0
    root = install.root
    ccd = root / facts.OPENVPN_CCD_DIR.lstrip("/")
    assert sorted(p.name for p in ccd.iterdir()) == sorted(m.slug for m in onprem)
    # Things prune must leave alone: a file in the parent, a subdirectory and its file, a
    # symlink, a file in an unrelated directory.
    parent_file = ccd.parent / "notes.txt"
    parent_file.write_text("keep\n")
    (ccd / "sub").mkdir()
    (ccd / "sub" / "inner").write_text("keep\n")
    (ccd / "link").symlink_to(parent_file)
    other = root / "etc/other/ccd"
    other.mkdir(parents=True)
    (other / "stray").write_text("keep\n")
    install.calls.unlink()

    kept, gone = onprem[0], onprem[1]
    second_payload = delivery(hub, [kept])
    dry = install(second_payload, "--dry-run")
    assert dry.returncode == 0 and f"would remove {facts.OPENVPN_CCD_DIR}/{gone.slug}" in dry.stdout
    assert (ccd / gone.slug).exists() and not install.calls.exists()  # the dry run removed and ran nothing
    # Only a client-config-dir entry went: no restart, that organisation is disconnected instead.
    assert "would run" not in dry.stdout
    for sock in facts.OPENVPN_MANAGEMENT_SOCKETS:
        assert f"would disconnect {gone.slug} via {sock}" in dry.stdout

    proc = install(second_payload)
    assert proc.returncode == 0, proc.stderr
    assert f"removed {facts.OPENVPN_CCD_DIR}/{gone.slug}" in proc.stdout
    assert f"removed {facts.OPENVPN_ALLOW_DIR}/{gone.slug}" in proc.stdout
    assert "nina-install-files: 2 changed, 12 unchanged" in proc.stdout
    assert sorted(p.name for p in ccd.iterdir()) == sorted([kept.slug, "sub", "link"])
    assert parent_file.read_text() == "keep\n" and (ccd / "sub" / "inner").exists() and (other / "stray").exists()
    assert not install.calls.exists()  # no systemctl at all
    for sock in facts.OPENVPN_MANAGEMENT_SOCKETS:  # no server runs under this root
        assert proc.stdout.count(f"disconnect {gone.slug} via {sock}: not running") == 1  # once, though two of its files went

    # Onboarding it again: a new entry, nothing to restart and nobody to disconnect.
    back = install(first_payload)
    assert back.returncode == 0 and "only per-connection entries changed: no restart" in back.stdout
    assert f"wrote {facts.OPENVPN_CCD_DIR}/{gone.slug}" in back.stdout and "disconnect " not in back.stdout
    assert not install.calls.exists()
    # A renewed server certificate beside a removal: both instances restart (which drops every
    # connection anyway), nobody is disconnected one by one.
    renewed, renewed_key = vpn_pki["sign"](hub.certificate.common_name, facts.SERVER_CERT_USES)
    last_payload = delivery(hub, [kept], cert=renewed, key=renewed_key)
    both = install(last_payload)
    assert both.returncode == 0 and "nina-install-files: 4 changed" in both.stdout and "disconnect" not in both.stdout
    assert install.calls.read_text().splitlines() == [
        "daemon-reload",
        f"enable {facts.VPN_FORWARDING_UNIT} {' '.join(vpn.SERVER_UNITS)}",
        f"restart {facts.VPN_FORWARDING_UNIT} {' '.join(vpn.SERVER_UNITS)}",
    ]

    install.calls.unlink()
    again = install(last_payload)
    assert "0 changed, 12 unchanged" in again.stdout and not install.calls.exists()


def test_install_files_prune_of_a_missing_directory_is_fine(install):
    payload = render.delivery_payload(
        [render.DeliveredFile("/etc/app/x/a.conf", "a\n", 0o644, "root", "root")], [], prune=["/etc/app/x/never-made"]
    )
    proc = install(payload)
    assert proc.returncode == 0 and "1 changed, 0 unchanged" in proc.stdout


@pytest.mark.parametrize(
    "prune", [["/"], ["/etc"], ["/etc/app"], ["/var/lib/other"], ["etc/app/x"], ["/etc/app/x/../y"], "/etc/app/x", [42]]
)
def test_install_files_refuses_unsafe_prune(install, prune):
    payload = json.dumps(
        {
            "files": [{"path": "/etc/app/x/a.conf", "content": "a\n", "mode": 0o644, "owner": "root", "group": "root"}],
            "restart": [],
            "prune": prune,
        }
    )
    proc = install(payload)
    assert proc.returncode == 2 and "nothing was written" in proc.stderr, proc.stderr
    assert not install.root.exists()


# --- the forwarding script -------------------------------------------------------------------------

FAKE = r"""#!/bin/bash
echo "$(basename "$0") $*" >> "$FAKE_DIR/calls.log"
case "$(basename "$0") $*" in
  "ip -4 route get "*) [ -n "$FAKE_ROUTE" ] && echo "$FAKE_ROUTE" || exit 2 ;;
  "ip link show "*) exit 1 ;;
  "iptables -w -t "*" -n -L "*) exit 1 ;;
  "iptables -w -t "*" -C "*) exit 1 ;;
esac
exit 0
"""


@dataclass
class Forwarding:
    """nina-vpn-forwarding with fake ip/iptables/sysctl; a call gives (process, the fakes' calls)."""

    script: Path
    dropin: Path
    fakes: Path
    workdir: Path

    def __call__(self, route: str, wait: str = "1") -> tuple[subprocess.CompletedProcess, list[str]]:
        env = {
            **os.environ,
            "IP": str(self.fakes / "ip"),
            "IPTABLES": str(self.fakes / "iptables"),
            "SYSCTL": str(self.fakes / "sysctl"),
            "FAKE_DIR": str(self.workdir),
            "FAKE_ROUTE": route,
            "NINA_SYSCTL_DROPIN": str(self.dropin),
            "NINA_ROUTE_WAIT": wait,
        }
        proc = subprocess.run(["bash", str(self.script)], env=env, capture_output=True, text=True, timeout=60)
        log = self.workdir / "calls.log"
        return proc, (log.read_text().splitlines() if log.exists() else [])


@pytest.fixture
def forwarding(tmp_path, hub) -> Forwarding:
    script = tmp_path / "nina-vpn-forwarding"
    script.write_text(vpn.forwarding_script(hub))
    script.chmod(0o755)
    fakes = tmp_path / "fakes"
    fakes.mkdir()
    for tool in ("ip", "iptables", "sysctl"):
        (fakes / tool).write_text(FAKE)
        (fakes / tool).chmod(0o755)
    return Forwarding(script, tmp_path / "sysctl.d" / "60-nina-vpn.conf", fakes, tmp_path)


def test_forwarding_script_parses_and_passes_shellcheck(forwarding):
    subprocess.run(["bash", "-n", str(forwarding.script)], check=True, timeout=30)
    if not SHELLCHECK:
        pytest.skip("shellcheck missing (scripts/bootstrap --test-tools installs it)")
    proc = subprocess.run(
        [SHELLCHECK, "--shell=bash", "--severity=style", str(forwarding.script)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout


def test_forwarding_script_rules_against_fakes(forwarding, hub):
    proc, calls = forwarding(f"{hub.superlink_ip} via 10.110.0.1 dev ens7 src {hub.internal_ip} uid 0")
    assert proc.returncode == 0, proc.stderr
    assert "internal interface (route to the SuperLink 10.110.0.40): ens7" in proc.stdout
    assert "sysctl -q -w net.ipv4.ip_forward=1" in calls
    assert forwarding.dropin.read_text().splitlines()[-1] == "net.ipv4.ip_forward = 1"
    assert f"ip -4 route get {hub.superlink_ip}" in calls
    br, pool, sl = facts.OPENVPN_BRIDGE, str(hub.pool), hub.superlink_ip
    # the bridge with the pool's first address, both taps as isolated ports
    assert f"ip link add name {br} type bridge" in calls
    assert f"ip addr replace {hub.server_ip}/{hub.pool.prefixlen} dev {br}" in calls
    for tap in (facts.OPENVPN_TAP_UDP, facts.OPENVPN_TAP_TCP):
        assert f"ip tuntap add dev {tap} mode tap" in calls
        assert f"ip link set dev {tap} master {br}" in calls
        assert f"ip link set dev {tap} type bridge_slave isolated on" in calls
    chains = facts.VPN_IPTABLES_CHAINS
    ipt = [c.removeprefix("iptables -w ") for c in calls if c.startswith("iptables")]
    assert f"-t nat -I POSTROUTING 1 -j {chains['nat']}" in ipt
    assert f"-t filter -I FORWARD 1 -j {chains['forward']}" in ipt
    assert f"-t filter -I INPUT 1 -j {chains['input']}" in ipt
    nat = [c for c in ipt if c.startswith(f"-t nat -A {chains['nat']} ")]
    assert nat == [f"-t nat -A {chains['nat']} -s {pool} -o ens7 -j MASQUERADE"]  # the interface `ip route get` named
    fwd = [c.removeprefix(f"-t filter -A {chains['forward']} ") for c in ipt if c.startswith(f"-t filter -A {chains['forward']} ")]
    assert fwd[0] == f"-i {br} -o {br} -j DROP"  # organisation to organisation, before any ACCEPT
    accepts = [r for r in fwd if r.endswith("-j ACCEPT")]
    new_from_pool = [r for r in accepts if "NEW" in r and (f"-i {br}" in r or f"-s {pool}" in r)]
    assert new_from_pool == [
        f"-i {br} -s {pool} -o ens7 -d {sl}/32 -p tcp --dport {facts.SUPERLINK_FLEET_PORT} -m conntrack --ctstate NEW -j ACCEPT"
    ]
    to_pool = sorted(r for r in accepts if "NEW" in r and f"-o {br}" in r)
    assert to_pool == sorted(
        f"-s {n} -o {br} -d {pool} -p tcp --dport {p} -m conntrack --ctstate NEW -j ACCEPT"
        for n in hub.routes
        for p in (facts.NODE_EXPORTER_PORT, facts.DCGM_EXPORTER_PORT)
    )
    assert all("ESTABLISHED,RELATED" in r for r in accepts if "NEW" not in r)
    assert fwd[-4:] == [f"-i {br} -j DROP", f"-o {br} -j DROP", f"-s {pool} -j DROP", f"-d {pool} -j DROP"]
    inp = [c.removeprefix(f"-t filter -A {chains['input']} ") for c in ipt if c.startswith(f"-t filter -A {chains['input']} ")]
    assert inp[-1] == f"-i {br} -j DROP" and all(r.startswith(f"-i {br} ") for r in inp)
    # Only its own chains are flushed: never a whole table or a built-in chain.
    assert not [c for c in ipt if re.search(r" -F( |$)", c) and not any(ch in c for ch in chains.values())]


def test_forwarding_script_hard_codes_no_interface(hub):
    """It finds the internal interface at boot (run for real, twice, in test_vpn_tunnel.py)."""
    code = [line for line in vpn.forwarding_script(hub).splitlines() if not line.lstrip().startswith("#")]
    assert not [line for line in code if re.search(r"\b(eth|ens|enp)\d", line)]


@pytest.mark.parametrize(
    "route, message",
    [
        ("", "no route to the SuperLink"),
        ("local 10.110.0.40 dev lo table local src 10.110.0.40 uid 0", "not an internal interface"),
        (f"10.110.0.40 dev {facts.OPENVPN_BRIDGE} src 192.168.99.1 uid 0", "not an internal interface"),
    ],
)
def test_forwarding_script_refuses_without_internal_interface(forwarding, route, message):
    proc, calls = forwarding(route)
    assert proc.returncode == 1 and message in proc.stderr, proc.stderr
    assert not [c for c in calls if c.startswith("iptables")]


# --- units -----------------------------------------------------------------------------------------


def test_units(hub):
    unit = vpn.forwarding_unit()
    assert "Type=oneshot" in unit and "RemainAfterExit=yes" in unit
    assert "After=network-online.target" in unit and "Wants=network-online.target" in unit
    assert f"ExecStart={facts.VPN_FORWARDING_BIN}" in unit and "WantedBy=multi-user.target" in unit
    assert {line.removeprefix("Before=") for line in unit.splitlines() if line.startswith("Before=")} == set(vpn.SERVER_UNITS)
    dropin = vpn.openvpn_server_dropin()
    assert "ConditionPathExists=/etc/openvpn/server/%i.conf" in dropin
    assert f"Requires={facts.VPN_FORWARDING_UNIT}" in dropin and f"After={facts.VPN_FORWARDING_UNIT}" in dropin


@needs_systemd_analyze
def test_systemd_analyze_verifies_unit_and_dropin(tmp_path, hub):
    units = tmp_path / "units"
    (units / f"{facts.OPENVPN_SERVER_UNIT_TEMPLATE}.d").mkdir(parents=True)
    script = tmp_path / "nina-vpn-forwarding"
    script.write_text(vpn.forwarding_script(hub))
    script.chmod(0o755)
    (units / facts.VPN_FORWARDING_UNIT).write_text(vpn.forwarding_unit().replace(facts.VPN_FORWARDING_BIN, str(script)))
    # openvpn-server@.service as the Debian/Ubuntu package ships it, when it is installed here.
    shipped = Path("/lib/systemd/system") / facts.OPENVPN_SERVER_UNIT_TEMPLATE
    if not shipped.exists():
        pytest.skip("openvpn's openvpn-server@.service not installed")
    shutil.copy(shipped, units / facts.OPENVPN_SERVER_UNIT_TEMPLATE)

    def problems(dropin: str) -> list[str]:
        (units / f"{facts.OPENVPN_SERVER_UNIT_TEMPLATE}.d" / "nina.conf").write_text(dropin)
        return verify(units, [facts.VPN_FORWARDING_UNIT, facts.OPENVPN_SERVER_UNIT], "nina")

    assert problems(vpn.openvpn_server_dropin()) == []
    assert problems(vpn.openvpn_server_dropin().replace("ConditionPathExists", "ConditionPathExist"))  # the check can fail


# --- user-data of the vpn host ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def vpn_user_data(render_plans):
    plan = render_plans["uat"]
    host = plan.host_by_name["vpn-main"]
    return plan, host, user_data(plan, host)


def test_vpn_user_data(vpn_user_data, hub):
    _plan, host, text = vpn_user_data
    doc = yaml.safe_load(text)
    assert host.roles == ("vpn",)
    assert {"openvpn", "iptables"} <= set(doc["packages"])
    files = {f["path"]: f for f in doc["write_files"]}
    # The forwarding script, its unit and the servers' drop-in come with the VPN delivery (in place).
    assert {facts.VPN_FORWARDING_BIN, f"{facts.SYSTEMD_SYSTEM_DIR}/{facts.VPN_FORWARDING_UNIT}", facts.OPENVPN_SERVER_DROPIN}.isdisjoint(
        files
    )
    cmds = doc["runcmd"]
    assert ["install", "-d", "-m", "0755", "-o", "root", "-g", "root", facts.OPENVPN_CCD_DIR] in cmds
    assert not any("openvpn-server@" in c or facts.VPN_FORWARDING_UNIT in c for c in map(" ".join, cmds[1:]))  # delivery starts them
    assert "BEGIN" not in text and "PRIVATE" not in text and "Static key" not in text
    assert not any(p.startswith(facts.OPENVPN_SERVER_DIR) and not p.startswith(facts.OPENVPN_SERVER_DROPIN) for p in files)


@pytest.mark.skipif(not CLOUD_INIT, reason="cloud-init missing (scripts/bootstrap --test-tools installs it)")
def test_vpn_user_data_passes_cloud_init_schema(vpn_user_data, tmp_path):
    path = tmp_path / "vpn.yaml"
    path.write_text(vpn_user_data[2])
    proc = subprocess.run([CLOUD_INIT, "schema", "-c", str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "Valid cloud-config" in proc.stdout, proc.stdout + proc.stderr


def test_vpn_role_without_a_hub_is_refused(render_plans):
    plan = render_plans["test"]
    host = dataclasses.replace(plan.hosts[0], name="vpn-nowhere", roles=("vpn",))
    with pytest.raises(ValueError, match="no tenancy's VPN"):
        user_data(plan, host)


def test_hot_directories_must_be_pruned_and_name_sockets(install):
    conf = render.DeliveredFile("/etc/app/x/ccd/org-a", "a\n", 0o644, "root", "root")
    with pytest.raises(ValueError, match="must also be a prune directory"):
        render.delivery_payload([conf], [], hot={"/etc/app/x/ccd": ["/run/app/a.sock"]})
    with pytest.raises(ValueError, match="needs a list of absolute, normalised socket paths"):
        render.delivery_payload([conf], [], prune=["/etc/app/x/ccd"], hot={"/etc/app/x/ccd": "/run/app/a.sock"})
    # The installer refuses the same mistakes in a hand-made payload, before writing anything.
    ok = json.loads(render.delivery_payload([conf], [], prune=["/etc/app/x/ccd"], hot={"/etc/app/x/ccd": ["/run/app/a.sock"]}))
    for bad, message in (
        (dict(ok, hot={"/etc/app/x/other": ["/run/app/a.sock"]}), "must also be a prune directory"),
        (dict(ok, hot={"/etc/app/x/ccd": ["relative.sock"]}), "absolute, normalised socket paths"),
        (dict(ok, hot=["/etc/app/x/ccd"]), '"hot" must be an object'),
    ):
        proc = install(json.dumps(bad))
        assert proc.returncode == 2 and message in proc.stderr and "nothing was written" in proc.stderr, proc.stderr
        assert not install.root.exists()
