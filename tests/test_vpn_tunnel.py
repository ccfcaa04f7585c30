"""The OpenVPN hub for real: rendered configs, real openvpn 2.6, real iptables, in network
namespaces (tests/vpnlab.py), with certificates from nina.localpki.

Every test delivers the hub's payload with the real `nina-install-files --root`, runs the
rendered `nina-vpn-forwarding` inside the server namespace (it finds the internal interface
itself) and starts both server instances from the delivered configs. Clients use the
rendered client.conf with paths rewritten into a temp dir. Bounded: every command has a
timeout, the lab fixture always kills its processes and deletes its namespaces.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import vpn_hub_payload
from vpnlab import Client, VpnLab, wait_for

from nina import facts, localpki, render, tlscrypt, troubleshooting, vpn
from nina.config import load_config
from nina.plan import TenancyPlan, build_plan

pytestmark = pytest.mark.slow

READY = "Initialization Sequence Completed"
CCD = facts.OPENVPN_CCD_DIR
FLEET, CONTROL = facts.SUPERLINK_FLEET_PORT, facts.SUPERLINK_CONTROL_PORT
ORG_PORT = 7000  # a listener on each organisation's tunnel address (should be unreachable from others)


@dataclass
class Hub:
    lab: VpnLab
    tenancy: TenancyPlan
    pki: dict
    deliver_log: Path
    servers: dict

    @property
    def vpn(self):
        return self.tenancy.vpn

    def member(self, slug: str):
        return next(m for m in self.tenancy.members if m.slug == slug)

    def client_files(self, slug: str, cert_key: tuple[str, str] | None = None, tc: str | None = None) -> dict[str, bytes]:
        cert, key = cert_key or self.pki["clients"][slug]
        paths = vpn.client_certs_paths(slug)
        return {
            paths["ca"]: self.pki["ca"].encode(),
            paths["cert"]: cert.encode(),
            paths["key"]: key.encode(),
            paths["tls_crypt_v2"]: (tc or self.pki["tls_crypt_v2"][slug]).encode(),
        }

    def connect_client(self, client: Client, slug: str | None = None, cert_key=None, name: str | None = None, tc: str | None = None):
        slug = slug or client.name
        conf = vpn.client_conf(slug, self.vpn.certificate.common_name, client.public_ip, facts.OPENVPN_UDP_PORT, facts.OPENVPN_TCP_PORT)
        return self.lab.start_client(client, conf, self.client_files(slug, cert_key, tc), name=name)

    def two_connected(self) -> tuple[list, list[Client], list, dict[str, int]]:
        """The first two on-premise organisations, each connected from its own client: (members,
        clients, client processes, the server instances' pids)."""
        members = [m for m in self.tenancy.members if m.vpn_address][:2]
        clients = [self.lab.add_client(m.slug) for m in members]
        procs = [self.connect_client(c) for c in clients]
        for proc in procs:
            assert wait_for(proc, READY, 15), proc.output()[-2000:]
        return members, clients, procs, self.server_pids()

    def server_pids(self) -> dict[str, int]:
        return {name: proc.popen.pid for name, proc in self.servers.items()}

    def tunnel_address(self, client: Client) -> list[str]:
        return self.lab.addresses(client.ns).get("tap0", [])

    def start_servers(self) -> None:
        root = self.lab.server_root
        for name, path in (("server", facts.OPENVPN_SERVER_CONF), ("server-tcp", facts.OPENVPN_TCP_SERVER_CONF)):
            self.lab.stop(self.servers.get(name))
            self.servers[name] = self.lab.start_server(name, (root / path.lstrip("/")).read_text())
        for name, proc in self.servers.items():
            assert wait_for(proc, READY, 10), (name, proc.output()[-2000:])


def hub_payload(tenancy: TenancyPlan, pki: dict, admitted: dict | None = None) -> str:
    """The VPN host's delivery for `tenancy` (conftest.vpn_hub_payload)."""
    assert tenancy.vpn is not None
    return vpn_hub_payload(pki, tenancy.vpn, tenancy.members, admitted=admitted)


def deliver(lab: VpnLab, payload: str, calls: Path) -> subprocess.CompletedProcess:
    """The real nina-install-files, into the lab's server root; systemctl is a recorder."""
    script = lab.workdir / "nina-install-files"
    script.write_text(render.install_files_script(render.SOURCE_ROOT))
    fake = lab.workdir / "fake-systemctl"
    fake.write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')
    fake.chmod(0o755)
    env = {**os.environ, "NINA_SYSTEMCTL": str(fake), "NINA_UPDATE_CA_CERTIFICATES": str(fake)}
    proc = subprocess.run(
        [sys.executable, str(script), "--root", str(lab.server_root)], input=payload, env=env, capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, proc.stderr
    return proc


def start_hub(vpn_lab, tenancy: TenancyPlan, pki: dict) -> Hub:
    v = tenancy.vpn
    assert v is not None
    lab = vpn_lab(v)
    hub = Hub(lab, tenancy, pki, lab.workdir / "systemctl-calls.log", {})
    deliver(lab, hub_payload(tenancy, pki), hub.deliver_log)
    fwd = lab.run_forwarding(vpn.forwarding_script(v))
    assert fwd.returncode == 0, fwd.stderr
    assert f"internal interface (route to the SuperLink {v.superlink_ip}): {lab.internal_if}" in fwd.stdout
    lab.start_listener(FLEET, CONTROL)
    hub.start_servers()
    return hub


def rules(lab: VpnLab) -> str:
    return lab.run("iptables", "-w", "-S", ns=lab.srv).stdout + lab.run("iptables", "-w", "-t", "nat", "-S", ns=lab.srv).stdout


def drop_counter(lab: VpnLab, rule_index: int) -> int:
    chain = facts.VPN_IPTABLES_CHAINS["forward"]
    out = lab.run("iptables", "-w", "-L", chain, "-v", "-x", "-n", ns=lab.srv).stdout.splitlines()
    return int(out[2 + rule_index].split()[0])


@pytest.mark.timeout(120)
def test_udp_client_gets_its_address_and_only_the_fleet_api(vpn_lab, vpn_tenancy, vpn_pki):
    """(a) fixed address over UDP; (b) Fleet API reached, masqueraded; (c) nothing else; the
    forwarding script found the internal interface, set ip_forward and is idempotent."""
    hub = start_hub(vpn_lab, vpn_tenancy, vpn_pki)
    lab, v = hub.lab, hub.vpn
    org = next(m for m in vpn_tenancy.members if m.vpn_address)
    client = lab.add_client(org.slug)
    proc = hub.connect_client(client)
    assert wait_for(proc, READY, 15), proc.output()[-3000:]

    # (a) exactly its fixed address, over UDP, with the route to the server segment via the hub
    assert "UDPv4 link remote" in proc.output()
    assert hub.tunnel_address(client) == [f"{org.vpn_address}/{v.pool.prefixlen}"]
    routes = lab.run("ip", "-4", "route", ns=client.ns).stdout
    assert f"{v.routes[0]} via {v.server_ip} dev tap0" in routes
    assert "default" not in routes  # no redirect-gateway: only the server segment goes through the VPN

    # (b) the SuperLink's Fleet API answers, and sees the hub's internal address (masquerade)
    assert lab.connect(client.ns, v.superlink_ip, FLEET) == v.internal_ip
    # (c) the Control API listens too, but is not forwarded; nor is the hub itself open
    assert lab.connect(client.ns, v.superlink_ip, CONTROL, timeout=1) is None
    assert [port for port, _ in lab.listener_seen()] == [FLEET]
    assert lab.connect(client.ns, v.server_ip, facts.SSH_PORT, timeout=1) is None

    # The rules the script made, with the interface it found; a second run changes nothing.
    before = rules(lab)
    assert f"-A {facts.VPN_IPTABLES_CHAINS['nat']} -s {v.pool} -o {lab.internal_if} -j MASQUERADE" in before
    assert lab.run("sysctl", "-n", "net.ipv4.ip_forward", ns=lab.srv).stdout.strip() == "1"
    again = lab.run_forwarding(vpn.forwarding_script(v))
    assert again.returncode == 0, again.stderr
    assert rules(lab) == before
    assert before.count(f"-j {facts.VPN_IPTABLES_CHAINS['forward']}") == 1
    assert "isolated on" in lab.run("ip", "-d", "link", "show", "dev", facts.OPENVPN_TAP_UDP, ns=lab.srv).stdout
    assert lab.connect(client.ns, v.superlink_ip, FLEET) == v.internal_ip  # still works after the re-run


@pytest.mark.timeout(180)
def test_tcp_fallback_keeps_the_address_and_organisations_are_isolated(vpn_lab, vpn_tenancy, vpn_pki):
    """With UDP blocked, an organisation falls back to TCP 443 and keeps its fixed address;
    two organisations (one per transport) reach the SuperLink but never each other."""
    hub = start_hub(vpn_lab, vpn_tenancy, vpn_pki)
    lab, v = hub.lab, hub.vpn
    a, b = [m for m in vpn_tenancy.members if m.vpn_address][:2]
    ca, cb = lab.add_client(a.slug), lab.add_client(b.slug)
    # A firewall in front of B drops UDP (as some hospital networks do).
    b_addr = str(ipaddress.IPv4Address(cb.public_ip) + 1)
    lab.run("iptables", "-w", "-I", "INPUT", "-s", b_addr, "-p", "udp", "--dport", str(facts.OPENVPN_UDP_PORT), "-j", "DROP", ns=lab.srv)
    pa, pb = hub.connect_client(ca), hub.connect_client(cb)
    assert wait_for(pa, READY, 15), pa.output()[-3000:]
    assert wait_for(pb, READY, facts.OPENVPN_SERVER_POLL_TIMEOUT + 15), pb.output()[-3000:]
    assert "UDPv4 link remote" in pa.output()
    assert f"TCP connection established with [AF_INET]{cb.public_ip}:{facts.OPENVPN_TCP_PORT}" in pb.output()
    assert hub.tunnel_address(ca) == [f"{a.vpn_address}/{v.pool.prefixlen}"]
    assert hub.tunnel_address(cb) == [f"{b.vpn_address}/{v.pool.prefixlen}"]
    assert f"{b.slug}/{b_addr}" in hub.servers["server-tcp"].output()  # B is served by the TCP instance
    assert f"{b.slug}/" not in hub.servers["server"].output()
    assert lab.connect(ca.ns, v.superlink_ip, FLEET) == v.internal_ip
    assert lab.connect(cb.ns, v.superlink_ip, FLEET) == v.internal_ip

    # Each organisation listens on its tunnel address; the other cannot reach it, neither on the
    # shared subnet (bridge port isolation) nor routed through the hub (the FORWARD drop).
    for client in (ca, cb):
        listener = lab.spawn(
            f"org-listener-{client.name}",
            [sys.executable, str(lab.workdir / "listener.py"), str(lab.workdir / f"seen-{client.name}"), "0.0.0.0", str(ORG_PORT)],
            client.ns,
        )
        assert wait_for(listener, "^listening", 15), listener.output()  # else "unreachable" would prove nothing
    assert lab.connect(ca.ns, b.vpn_address, ORG_PORT, timeout=1) is None
    assert lab.connect(cb.ns, a.vpn_address, ORG_PORT, timeout=1) is None
    assert drop_counter(lab, 0) == 0
    lab.run("ip", "route", "add", f"{b.vpn_address}/32", "via", v.server_ip, "dev", "tap0", ns=ca.ns)
    assert lab.connect(ca.ns, b.vpn_address, ORG_PORT, timeout=1) is None
    assert drop_counter(lab, 0) > 0  # rule 0: -i bridge -o bridge -j DROP
    assert all((lab.workdir / f"seen-{m.slug}").read_text() == "" for m in (a, b))  # no connection ever arrived


def _lab_paths(lab: VpnLab) -> dict[str, str]:
    """The troubleshooting rows' VPN host paths, inside the lab's server root."""
    return {name: str(lab.server_root / troubleshooting.FIXED[name].lstrip("/")) for name in ("allow_dir", "ccd_dir")}


def _check(row_id: str, values: dict[str, str]) -> subprocess.CompletedProcess:
    """Troubleshooting row `row_id`'s check, as the table prints it, with the lab's values."""
    command = troubleshooting.fill(troubleshooting.row(row_id).check, values)
    return subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=30)


@pytest.mark.troubleshooting("vpn-not-admitted")
@pytest.mark.timeout(180)
def test_removed_organisation_is_disconnected_and_refused_without_a_restart(vpn_lab, vpn_tenancy, vpn_pki, vpn_raw_uat):
    """(d) removing an organisation from the config prunes its CCD and allow files on delivery,
    which restarts nothing: that organisation alone is disconnected through the management
    sockets and its (still valid) kit is refused on reconnecting, at its tls-crypt-v2 key, before
    any TLS; the other stays connected."""
    hub = start_hub(vpn_lab, vpn_tenancy, vpn_pki)
    lab, v = hub.lab, hub.vpn
    (keep, gone), (ck, cg), (pk, pg), servers_before = hub.two_connected()

    raw = vpn_raw_uat()
    raw["organisations"] = [o for o in raw["organisations"] if o["slug"] != gone.slug]
    tenancy2 = build_plan(load_config(raw)).tenancies[0]
    assert tenancy2.vpn is not None and {m.slug: m.vpn_address for m in tenancy2.members}[keep.slug] == keep.vpn_address
    hub.deliver_log.unlink(missing_ok=True)
    out = deliver(lab, hub_payload(tenancy2, vpn_pki), hub.deliver_log).stdout
    assert f"removed {CCD}/{gone.slug}" in out and f"removed {facts.OPENVPN_ALLOW_DIR}/{gone.slug}" in out
    assert "no restart" in out and not hub.deliver_log.exists(), out  # systemctl was not called at all
    assert f"disconnect {gone.slug} via {facts.OPENVPN_MANAGEMENT_SOCKETS[0]}: disconnected 1 connection(s)" in out, out
    assert f"disconnect {gone.slug} via {facts.OPENVPN_MANAGEMENT_SOCKETS[1]}: not connected" in out, out
    ccd = lab.server_root / CCD.lstrip("/")
    assert sorted(p.name for p in ccd.iterdir()) == [keep.slug]

    # The removed organisation's client tries again at once and is refused before TLS (its
    # control-channel key is no longer admitted): the server drops it without an answer.
    refusal = (
        re.escape(f"nina-vpn-verify: refused: {gone.slug} is not admitted (no ")
        + r"\S*"
        + re.escape(f"{facts.OPENVPN_ALLOW_DIR}/{gone.slug})")
    )
    assert wait_for(hub.servers["server"], refusal, 30), hub.servers["server"].output()[-2000:]
    assert wait_for(hub.servers["server"], "TLS CRYPT V2 VERIFY SCRIPT ERROR", 10)  # OpenVPN logs it after the script's line
    values = {"slug": gone.slug, **_lab_paths(lab)}
    assert troubleshooting.fill(troubleshooting.row("vpn-not-admitted").symptom, values) in hub.servers["server"].output()
    shown = _check("vpn-not-admitted", values)
    assert shown.returncode != 0 and shown.stderr.count("No such file or directory") == 2, shown.stderr
    assert _check("vpn-not-admitted", {**values, "slug": keep.slug}).returncode == 0  # the admitted one has both
    lab.stop(pg)
    assert pg.output().count(READY) == 1 and hub.tunnel_address(cg) == [], pg.output()[-1000:]
    # The other organisation never noticed: same servers, one connection, still routed.
    assert hub.server_pids() == servers_before
    assert all(proc.running() for proc in hub.servers.values())
    assert pk.output().count(READY) == 1, pk.output()[-2000:]
    assert hub.tunnel_address(ck) == [f"{keep.vpn_address}/{v.pool.prefixlen}"]
    assert lab.connect(ck.ns, v.superlink_ip, FLEET) == v.internal_ip


def test_certificate_from_another_ca_is_refused(vpn_lab, vpn_tenancy, vpn_pki):
    """(e) a client certificate with a valid organisation CN but from another CA fails TLS."""
    hub = start_hub(vpn_lab, vpn_tenancy, vpn_pki)
    lab, v = hub.lab, hub.vpn
    org = next(m for m in vpn_tenancy.members if m.vpn_address)
    client = lab.add_client(org.slug)
    foreign = vpn_pki["sign"](org.slug, facts.CLIENT_CERT_USES, issuer=vpn_pki["other_ca"])
    proc = hub.connect_client(client, cert_key=foreign)
    server_log = lambda: hub.servers["server"].output()  # noqa: E731
    deadline = time.monotonic() + 15
    while "VERIFY ERROR" not in server_log() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert f"VERIFY ERROR: depth=0, error=unable to get local issuer certificate: CN={org.slug}" in server_log(), server_log()[-2000:]
    assert wait_for(hub.servers["server"], "TLS handshake failed", 10)
    assert READY not in proc.output() and hub.tunnel_address(client) == []
    # The right certificate still works in the same place.
    ok = hub.connect_client(client, name=f"{org.slug}-own-cert")
    assert wait_for(ok, READY, 15), ok.output()[-2000:]
    assert hub.tunnel_address(client) == [f"{org.vpn_address}/{v.pool.prefixlen}"]


@pytest.mark.troubleshooting("vpn-replaced-kit", "vpn-no-answer")
@pytest.mark.timeout(180)
def test_replaced_kit_old_key_and_certificate_refused_new_kit_connects_without_a_restart(vpn_lab, vpn_tenancy, vpn_pki):
    """(f) Revocation: the organisation's kit is replaced (new certificate and key, new
    tls-crypt-v2 key; what `kit_generation` does). The delivery rewrites only its allow file:
    nothing restarts, that organisation alone is disconnected; its old kit is refused at the
    tls-crypt-v2 key, its old certificate (CA-signed, same CN, the organisation still admitted)
    at the TLS handshake even with the new key; the new kit connects with the same address."""
    hub = start_hub(vpn_lab, vpn_tenancy, vpn_pki)
    lab, v = hub.lab, hub.vpn
    (org, other), (co, cx), (old, px), servers_before = hub.two_connected()

    new_cert = vpn_pki["sign"](org.slug)
    new_tc = tlscrypt.client_key(vpn_pki["tls_crypt_v2_server"], secrets.token_bytes(tlscrypt.CLIENT_KEY_BYTES), org.slug)
    admitted = {m.slug: vpn_pki["admitted"][m.slug] for m in vpn_tenancy.members if m.vpn_address}
    admitted[org.slug] = vpn.Admitted(new_cert[0], tlscrypt.client_key_id(new_tc))
    hub.deliver_log.unlink(missing_ok=True)
    out = deliver(lab, hub_payload(vpn_tenancy, vpn_pki, admitted), hub.deliver_log).stdout
    assert f"wrote {facts.OPENVPN_ALLOW_DIR}/{org.slug}" in out and "nina-install-files: 1 changed" in out, out
    assert "no restart" in out and not hub.deliver_log.exists(), out
    assert f"disconnect {org.slug} via {facts.OPENVPN_MANAGEMENT_SOCKETS[0]}: disconnected 1 connection(s)" in out, out

    server = hub.servers["server"]
    # The old kit reconnects at once: refused at its control-channel key.
    assert wait_for(server, re.escape(f"nina-vpn-verify: refused: {org.slug}: tls-crypt-v2 key"), 30), server.output()[-2000:]
    values = {"slug": org.slug, **_lab_paths(lab)}
    assert troubleshooting.fill(troubleshooting.row("vpn-replaced-kit").symptom, values) in server.output()
    old_id, new_id = tlscrypt.client_key_id(vpn_pki["tls_crypt_v2"][org.slug]), tlscrypt.client_key_id(new_tc)
    assert f"tls-crypt-v2 key {old_id} is not its current key" in server.output()
    shown = _check("vpn-replaced-kit", values)
    assert shown.returncode == 0 and new_id in shown.stdout and old_id not in shown.stdout, shown
    # The site's view: the old kit's client never completes its handshake. The same client config
    # with a shorter hand-window (5 s, not OpenVPN's 60 s: a lab edit, to keep the test short)
    # logs the same failure; the fingerprint of its VPN certificate (what the site's check prints)
    # is not the one the allow file admits.
    lab.stop(old)
    conf = vpn.client_conf(org.slug, v.certificate.common_name, co.public_ip, facts.OPENVPN_UDP_PORT, facts.OPENVPN_TCP_PORT)
    site_view = lab.start_client(co, conf + "hand-window 5\n", hub.client_files(org.slug), name=f"{org.slug}-old-kit-again")
    site_symptom = troubleshooting.fill(troubleshooting.row("vpn-no-answer").symptom, {})
    assert wait_for(site_view, re.escape(site_symptom), 30), site_view.output()[-2000:]
    assert "TLS key negotiation failed to occur within 5 seconds" in site_view.output()
    lab.stop(site_view)
    issued = co.root / troubleshooting.FIXED["vpn_issued_dir"].lstrip("/")
    site = _check("vpn-no-answer", {"slug": org.slug, "vpn_issued_dir": str(issued)})
    assert site.returncode == 0 and "Fingerprint=" in site.stdout, site
    kit_fp = site.stdout.split("=", 1)[1].strip()
    assert kit_fp == localpki.fingerprint_sha256(vpn_pki["clients"][org.slug][0])  # the old kit's certificate
    admitted = shown.stdout.lower()
    assert kit_fp.replace(":", "").lower() not in admitted, (kit_fp, admitted)
    assert localpki.fingerprint_sha256(new_cert[0]).replace(":", "").lower() in admitted, admitted
    assert old.output().count(READY) == 1 and hub.tunnel_address(co) == []
    # The old certificate with the new key gets through the control channel, and is refused at TLS.
    mixed = hub.connect_client(co, tc=new_tc, name=f"{org.slug}-old-cert")
    assert wait_for(server, re.escape(f"nina-vpn-verify: refused: {org.slug}: certificate"), 30), server.output()[-2000:]
    assert wait_for(server, "VERIFY SCRIPT ERROR", 10), server.output()[-2000:]
    lab.stop(mixed)
    assert READY not in mixed.output() and hub.tunnel_address(co) == []
    # The new kit connects, with the organisation's fixed address.
    new = hub.connect_client(co, cert_key=new_cert, tc=new_tc, name=f"{org.slug}-new-kit")
    assert wait_for(new, READY, 20), new.output()[-2000:]
    assert hub.tunnel_address(co) == [f"{org.vpn_address}/{v.pool.prefixlen}"]
    assert lab.connect(co.ns, v.superlink_ip, FLEET) == v.internal_ip
    # The other organisation never noticed.
    assert hub.server_pids() == servers_before
    assert px.output().count(READY) == 1 and hub.tunnel_address(cx) == [f"{other.vpn_address}/{v.pool.prefixlen}"]
