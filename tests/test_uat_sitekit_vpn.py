"""The UAT stack end to end, as far as this machine allows: the real Pulumi program (under
mocks whose PKI is real, see harness.py) yields the OpenVPN server's delivered
files and the stack outputs; `nina kit export` turns the outputs into a site kit; then real
openvpn runs the server from the delivered files and the forwarding script from the VPN
host's delivery, and a client from the kit's own files, in network namespaces.

Checks: the kit's client gets its fixed address and reaches the SuperLink's Fleet API through
the tunnel; after the organisation is removed from the config (a new `pulumi up`'s delivery),
its kit is refused; after another organisation's `kit_generation` is raised, its old kit is
refused and the new kit (exported from the new outputs) connects, with nothing restarted; a
kit whose certificate comes from another CA is refused.
"""

from __future__ import annotations

import copy
import io
import json
import tarfile
from typing import Any

import pytest
from harness import payload_of, run_program, stack_config
from test_vpn_tunnel import READY, deliver
from vpnlab import wait_for

from nina import facts, localpki
from nina.config import load_config
from nina.kit import build_kit
from nina.plan import build_plan

pytestmark = pytest.mark.slow


def stack_outputs(run, public_ip: str) -> dict:
    """What `pulumi stack output --json --show-secrets` would print, with the floating IP
    OpenStack would have given the VPN host (here: the lab's address for it)."""
    outputs = json.loads(json.dumps(run.outputs))
    outputs["tenancies"]["main"]["vpn"]["public_ip"] = public_ip
    return outputs


def kit_files(kit: bytes, slug: str) -> tuple[str, dict[str, bytes]]:
    """client.conf text and the {absolute path: bytes} the kit installs under /etc/openvpn."""
    files = {}
    with tarfile.open(fileobj=io.BytesIO(kit), mode="r:gz") as tar:
        for member in tar.getmembers():
            if member.isfile():
                rel = member.name.split("/", 1)[1]
                data = tar.extractfile(member)
                assert data is not None
                files["/" + rel] = data.read()
    conf = files.pop(facts.OPENVPN_CLIENT_CONF).decode()
    return conf, {p: b for p, b in files.items() if p.startswith(facts.OPENVPN_CLIENT_CERTS + "/")}


def delivered_payload(run, host: str) -> str:
    return payload_of(next(r for r in run.registrations if r.name == f"{host}-vpn-install").inputs["stdin"])


def forwarding_script_from_delivery(run, host: str) -> str:
    """The hub's bridge/forwarding script, as the VPN host's delivery installs it."""
    files = json.loads(delivered_payload(run, host))["files"]
    return next(f["content"] for f in files if f["path"] == facts.VPN_FORWARDING_BIN)


@pytest.mark.timeout(240)
def test_uat_site_kits_join_over_openvpn_and_removal_refuses(vpn_lab):
    config = stack_config("uat")
    run = run_program(config, "uat")
    assert run.error is None, run.error
    raw = {k.split(":", 1)[1]: v for k, v in config.items() if k.startswith("nina:")}
    tenancy = build_plan(load_config(raw)).tenancies[0]
    v = tenancy.vpn
    assert v is not None
    lab = vpn_lab(v)
    keep, gone = [m for m in tenancy.members if m.vpn_address][:2]
    ck, cg = lab.add_client(keep.slug), lab.add_client(gone.slug)
    outputs = stack_outputs(run, ck.public_ip)

    # The VPN host as `pulumi up` leaves it: user-data's forwarding script, delivered files.
    calls = lab.workdir / "systemctl-calls.log"
    deliver(lab, delivered_payload(run, v.host), calls)
    fwd = lab.run_forwarding(forwarding_script_from_delivery(run, v.host))
    assert fwd.returncode == 0, fwd.stderr
    lab.start_listener(facts.SUPERLINK_FLEET_PORT)
    servers: dict[str, Any] = {}

    def start_servers():
        for name, path in (("server", facts.OPENVPN_SERVER_CONF), ("server-tcp", facts.OPENVPN_TCP_SERVER_CONF)):
            lab.stop(servers.get(name))
            servers[name] = lab.start_server(name, (lab.server_root / path.lstrip("/")).read_text())
        for name, proc in servers.items():
            assert wait_for(proc, READY, 10), (name, proc.output()[-2000:])

    start_servers()

    # Each organisation installs its own kit (exported from the stack outputs).
    kits = {m.slug: build_kit(outputs, m.slug) for m in (keep, gone)}
    conf_k, files_k = kit_files(kits[keep.slug], keep.slug)
    conf_g, files_g = kit_files(kits[gone.slug], gone.slug)
    assert not any(gone.slug in p for p in files_k) and not any(keep.slug in p for p in files_g)
    # Every client dials the hub's public address; in the lab each client namespace has its
    # own link to the hub, so the second one dials the hub's address on that link.
    pk = lab.start_client(ck, conf_k, files_k)
    pg = lab.start_client(cg, conf_g.replace(ck.public_ip, cg.public_ip), files_g)
    assert wait_for(pk, READY, 15), pk.output()[-3000:]
    assert wait_for(pg, READY, 15), pg.output()[-3000:]
    assert lab.addresses(ck.ns).get("tap0") == [f"{keep.vpn_address}/{v.pool.prefixlen}"]
    assert lab.addresses(cg.ns).get("tap0") == [f"{gone.vpn_address}/{v.pool.prefixlen}"]
    assert lab.connect(ck.ns, v.superlink_ip, facts.SUPERLINK_FLEET_PORT) == v.internal_ip
    lab.stop(pg)

    # The organisation leaves the config: the next `pulumi up` delivers the hub's files again.
    smaller = copy.deepcopy(config)
    smaller["nina:organisations"] = [o for o in smaller["nina:organisations"] if o["slug"] != gone.slug]
    run2 = run_program(smaller, "uat")
    assert run2.error is None, run2.error
    out = deliver(lab, delivered_payload(run2, v.host), calls).stdout
    assert f"removed {facts.OPENVPN_CCD_DIR}/{gone.slug}" in out
    start_servers()
    assert wait_for(pk, f"(?s){READY}.*{READY}", 20), pk.output()[-2000:]
    assert lab.connect(ck.ns, v.superlink_ip, facts.SUPERLINK_FLEET_PORT) == v.internal_ip
    refused = lab.start_client(cg, conf_g.replace(ck.public_ip, cg.public_ip), files_g, name=f"{gone.slug}-removed")
    # Refused before TLS: its tls-crypt-v2 key is no longer admitted.
    assert wait_for(servers["server"], f"nina-vpn-verify: refused: {gone.slug} is not admitted", 20), servers["server"].output()[-2000:]
    lab.stop(refused)
    assert READY not in refused.output()

    # The remaining organisation's kit is replaced (a leaked key): one config change.
    replaced = copy.deepcopy(smaller)
    next(o for o in replaced["nina:organisations"] if o["slug"] == keep.slug)["kit_generation"] = 2
    run3 = run_program(replaced, "uat")
    assert run3.error is None, run3.error
    pids = {name: proc.popen.pid for name, proc in servers.items()}
    out = deliver(lab, delivered_payload(run3, v.host), calls).stdout
    assert "only per-connection entries changed: no restart" in out and f"wrote {facts.OPENVPN_ALLOW_DIR}/{keep.slug}" in out, out
    assert f"disconnect {keep.slug} via {facts.OPENVPN_MANAGEMENT_SOCKETS[0]}: disconnected 1 connection(s)" in out, out
    assert wait_for(servers["server"], f"nina-vpn-verify: refused: {keep.slug}: tls-crypt-v2 key", 30), servers["server"].output()[-2000:]
    lab.stop(pk)
    assert pk.output().count(READY) == 2  # the first connection and the reconnection after the removal, no more
    new_kit = build_kit(stack_outputs(run3, ck.public_ip), keep.slug)
    assert new_kit != kits[keep.slug]
    conf_n, files_n = kit_files(new_kit, keep.slug)
    pn = lab.start_client(ck, conf_n, files_n, name=f"{keep.slug}-new-kit")
    assert wait_for(pn, READY, 20), pn.output()[-3000:]
    assert lab.addresses(ck.ns).get("tap0") == [f"{keep.vpn_address}/{v.pool.prefixlen}"]
    assert lab.connect(ck.ns, v.superlink_ip, facts.SUPERLINK_FLEET_PORT) == v.internal_ip
    assert {name: proc.popen.pid for name, proc in servers.items()} == pids

    # A kit whose client certificate comes from another CA (same CN; the current tls-crypt-v2 key,
    # so it gets as far as TLS) fails TLS.
    other_key = localpki.generate_key().private_key_pem
    other_ca = localpki.self_signed_ca(other_key, {**facts.CA_SUBJECT, "common_name": "not the NINA CA"}, 48, facts.CA_CERT_USES)
    key = localpki.generate_key().private_key_pem
    cert = localpki.sign_certificate(
        localpki.cert_request(key, {"common_name": keep.slug}), other_key, other_ca, 48, facts.CLIENT_CERT_USES
    )
    forged = dict(files_n)
    forged[f"{facts.OPENVPN_CLIENT_CERTS}/issued/{keep.slug}.crt"] = cert.encode()
    forged[f"{facts.OPENVPN_CLIENT_CERTS}/private/{keep.slug}.key"] = key.encode()
    lab.stop(pn)
    bad = lab.start_client(ck, conf_n, forged, name=f"{keep.slug}-forged")
    assert wait_for(servers["server"], "VERIFY ERROR", 15), servers["server"].output()[-2000:]
    assert READY not in bad.output()
