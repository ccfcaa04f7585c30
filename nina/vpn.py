"""The OpenVPN hub of a tenancy (manual 4.1.2.3-4.1.2.4, client 4.1.3.2) as plain files.

Pure like `nina.render`: never imports pulumi, renders Jinja2 templates from
nina/templates/vpn with StrictUndefined, takes every port and path from `nina.facts`, and
gives byte-identical output for the same input.

Design: UDP with a TCP 443 fallback, one fixed address per organisation
----------------------------------------------------------------------------
OpenVPN 2.6 listens on one transport per process, so the hub runs two server instances:
`server.conf` (UDP facts.OPENVPN_UDP_PORT, the manual's, unit openvpn-server@server) and
`server-tcp.conf` (TCP facts.OPENVPN_TCP_PORT, unit openvpn-server@server-tcp). Two processes
cannot share one tap device, and two tap devices that each carry the same subnet on one host
make the return path ambiguous. So neither instance configures an address (no `server`
directive, which would `ifconfig` its tap); instead:

- `nina-vpn-forwarding` (run at boot by facts.VPN_FORWARDING_UNIT, before both instances)
  creates the Linux bridge facts.OPENVPN_BRIDGE holding the pool's first address
  (`VpnPlan.server_ip`, e.g. 192.168.99.1/24) and two persistent tap devices
  (facts.OPENVPN_TAP_UDP, facts.OPENVPN_TAP_TCP) as its ports, with bridge port isolation
  so that no frame passes from one tap to the other;
- each instance runs `mode server` + `tls-server` on its own tap (`dev-type tap`) and
  pushes `route-gateway <server_ip>` and a route to each network in `VpnPlan.routes`;
- each organisation's address comes from its client-config-dir file (`ifconfig-push
  <Member.vpn_address> <netmask>`, file name = certificate CN = slug), read by whichever
  instance the client reached: the address is the same over UDP and TCP. `ccd-exclusive`
  refuses any certificate without such a file.

Admission: revocation without a CRL
-----------------------------------
Each on-premise organisation has its own tls-crypt-v2 client key (nina.tlscrypt; no key is
shared by the tenancy's sites) and a file in facts.OPENVPN_ALLOW_DIR naming the SHA-256 of its
current certificate and the id of its current tls-crypt-v2 key. Both instances run
`nina-vpn-verify` (nina.host.vpn_verify) per connection: the key is checked before any TLS,
the certificate at the TLS handshake. So an organisation that leaves (its files pruned) and a
replaced kit (its files rewritten: `kit_generation`, a new CSR or key) are refused at once,
although the CA signed the old certificate and an organisation of that name is still admitted.
These files and the client-config-dir are "hot": changing them restarts nothing and
disconnects only the organisation concerned. An allow-list of the current certificates needs no
record of the old ones, which a CRL would (Pulumi keeps no history of replaced certificates).

There is no dynamic pool: a client without a CCD file never gets in. An organisation that
connects over both transports at once would hold its address twice (its own problem; the
client config uses one connection at a time). The client tries UDP first and falls back
to TCP after facts.OPENVPN_SERVER_POLL_TIMEOUT seconds without an answer.

Routing and firewall (forwarding_script): IP forwarding on; the internal interface is found
at boot (`ip -4 route get <superlink_ip>`); the pool is masqueraded onto it (manual
4.1.2.4.1); forwarded traffic from the pool may only reach the SuperLink's Fleet API, the
server segment may only reach the organisations' exporters, anything else to or from the
pool is dropped, in particular organisation to organisation (manual 3.2.4), which the bridge
port isolation already stops at layer 2. From the pool, this host accepts only replies and ping.

Certificates must carry key usage and extended key usage (`remote-cert-tls` on both sides:
serverAuth for the server, clientAuth for clients), as facts.SERVER_CERT_USES and
facts.CLIENT_CERT_USES give them.
"""

from __future__ import annotations

import ipaddress
import posixpath
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

import jinja2

from nina import config, facts, localpki, pem, services, templating, tlscrypt
from nina.host import vpn_verify
from nina.plan import Member, VpnPlan
from nina.render import DeliveredFile, delivery_payload, launcher, service_files

SERVER_UNITS = services.vpn.SERVER_UNITS
_HOST_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")


@lru_cache(maxsize=1)
def _env() -> jinja2.Environment:
    return templating.environment("vpn")


def _render(name: str, **context: object) -> str:
    return _env().get_template(name).render(**context)


# --- checks ---------------------------------------------------------------------------------


def _slug(slug: str) -> str:
    if not isinstance(slug, str) or not config.SLUG_RE.match(slug):
        raise ValueError(f"{slug!r} is not an organisation slug; {config.SLUG_FIX}")
    return slug


def _host(value: str, what: str) -> str:
    if not isinstance(value, str) or not _HOST_RE.match(value) or ".." in value:
        raise ValueError(f"{what} {value!r} must be an IPv4 address or a DNS name")
    return value


def _port(value: int, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 65536:
        raise ValueError(f"{what} {value!r} must be a port number (1-65535)")
    return value


def _ipv4(value: str, what: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(value)
    except (ipaddress.AddressValueError, TypeError, ValueError):
        raise ValueError(f"{what} {value!r} is not an IPv4 address") from None


def _check_vpn(vpn: VpnPlan) -> None:
    pool = vpn.pool
    if not isinstance(pool, ipaddress.IPv4Network) or pool.prefixlen > 30:
        raise ValueError(f"VPN pool {pool!r} must be an IPv4 network of /30 or larger")
    _ipv4(vpn.superlink_ip, "SuperLink address")
    _ipv4(vpn.internal_ip, "VPN server internal address")
    if ipaddress.IPv4Address(vpn.superlink_ip) in pool:
        raise ValueError(f"the SuperLink {vpn.superlink_ip} lies inside the VPN pool {pool}")
    for net in vpn.routes:
        if not isinstance(net, ipaddress.IPv4Network) or net.overlaps(pool):
            raise ValueError(f"pushed route {net!r} must be an IPv4 network outside the VPN pool {pool}")
    _host(vpn.certificate.common_name, "server certificate CN")


def _pem(value: str, what: str, marker: str) -> str:
    if not isinstance(value, str) or marker not in value:
        raise ValueError(f"{what} does not look right: expected {marker!r} in it")
    return value if value.endswith("\n") else value + "\n"


# --- client (on-premise organisation) -------------------------------------------------------


def client_certs_paths(slug: str) -> dict[str, str]:
    """Where the client config expects its files (manual 4.1.2.3.1): ca, cert, key, tls_crypt_v2."""
    base = facts.OPENVPN_CLIENT_CERTS
    return {
        "ca": f"{base}/{facts.OPENVPN_CA_FILE}",
        "cert": f"{base}/{facts.OPENVPN_ISSUED_DIR}/{_slug(slug)}.crt",
        "key": f"{base}/{facts.OPENVPN_PRIVATE_DIR}/{slug}.key",
        "tls_crypt_v2": f"{base}/{facts.OPENVPN_PRIVATE_DIR}/{facts.OPENVPN_TLS_CRYPT_V2_CLIENT_FILE}",
    }


def client_conf(slug: str, server_name: str, public_ip: str, udp_port: int, tcp_port: int) -> str:
    """/etc/openvpn/client/client.conf (facts.OPENVPN_CLIENT_CONF) for organisation `slug`.

    UDP `public_ip:udp_port` first, then TCP `tcp_port`; the server certificate must carry
    serverAuth and the CN `server_name` (VpnPlan.certificate.common_name).
    """
    return _render(
        "client.conf.j2",
        slug=_slug(slug),
        server_name=_host(server_name, "server name"),
        public_ip=_host(public_ip, "public address"),
        udp_port=_port(udp_port, "UDP port"),
        tcp_port=_port(tcp_port, "TCP port"),
        certs=facts.OPENVPN_CLIENT_CERTS,
    )


# --- server ---------------------------------------------------------------------------------


def _server(vpn: VpnPlan, proto: str) -> str:
    _check_vpn(vpn)
    udp = proto == "udp"
    return _render(
        "server.conf.j2",
        host=vpn.host,
        proto_name="UDP" if udp else "TCP fallback",
        unit=SERVER_UNITS[0] if udp else SERVER_UNITS[1],
        management=facts.OPENVPN_MANAGEMENT_SOCKETS[0] if udp else facts.OPENVPN_MANAGEMENT_SOCKETS[1],
        sibling=SERVER_UNITS[1] if udp else SERVER_UNITS[0],
        port=facts.OPENVPN_UDP_PORT if udp else facts.OPENVPN_TCP_PORT,
        proto=proto,
        device=facts.OPENVPN_TAP_UDP if udp else facts.OPENVPN_TAP_TCP,
        server_ip=vpn.server_ip,
        prefix=vpn.pool.prefixlen,
        routes=[(str(n.network_address), str(n.netmask)) for n in vpn.routes],
        pki=facts.OPENVPN_SERVER_PKI,
        verify=facts.VPN_VERIFY_BIN,
    )


def server_conf(vpn: VpnPlan) -> str:
    """The UDP instance, facts.OPENVPN_SERVER_CONF (manual 4.1.2.4), unit openvpn-server@server."""
    return _server(vpn, "udp")


def server_tcp_conf(vpn: VpnPlan) -> str:
    """The TCP fallback instance, facts.OPENVPN_TCP_SERVER_CONF, unit openvpn-server@server-tcp."""
    return _server(vpn, "tcp-server")


def ccd_entry(vpn: VpnPlan, member: Member) -> str:
    """The client-config-dir file of an on-premise member (named after its slug = cert CN)."""
    _slug(member.slug)
    if member.vpn_address is None:
        raise ValueError(f"organisation {member.slug!r} has no VPN address (it is not on premise)")
    address = _ipv4(member.vpn_address, f"VPN address of {member.slug!r}")
    pool = vpn.pool
    if address not in pool or address in (pool.network_address, pool.broadcast_address) or str(address) == vpn.server_ip:
        raise ValueError(f"VPN address {address} of {member.slug!r} is not a client address of the pool {pool}")
    return _render("ccd.j2", slug=member.slug, address=str(address), netmask=str(pool.netmask))


# --- host: forwarding, units ----------------------------------------------------------------


def forwarding_script(vpn: VpnPlan) -> str:
    """`nina-vpn-forwarding` (facts.VPN_FORWARDING_BIN): bridge, ip_forward, NAT and filter rules."""
    _check_vpn(vpn)
    return _render(
        "nina-vpn-forwarding.sh.j2",
        host=vpn.host,
        pool=str(vpn.pool),
        server_ip=vpn.server_ip,
        prefix=vpn.pool.prefixlen,
        superlink_ip=vpn.superlink_ip,
        routes=[str(n) for n in vpn.routes],
        chains=facts.VPN_IPTABLES_CHAINS,
    )


def forwarding_unit() -> str:
    """facts.VPN_FORWARDING_UNIT: oneshot, after network-online, before both server instances."""
    return _render("forwarding.service.j2", server_units=SERVER_UNITS)


def openvpn_server_dropin() -> str:
    """facts.OPENVPN_SERVER_DROPIN for openvpn-server@.service: start only once delivered."""
    return _render("openvpn-server.dropin.conf.j2")


# --- delivery -------------------------------------------------------------------------------


def server_pki_paths() -> dict[str, str]:
    """Where server.conf expects its files under facts.OPENVPN_SERVER_PKI."""
    pki, name = facts.OPENVPN_SERVER_PKI, facts.OPENVPN_SERVER_CERT_NAME
    return {
        "ca": f"{pki}/{facts.OPENVPN_CA_FILE}",
        "cert": f"{pki}/{facts.OPENVPN_ISSUED_DIR}/{name}.crt",
        "key": f"{pki}/{facts.OPENVPN_PRIVATE_DIR}/{name}.key",
        "tls_crypt_v2": f"{pki}/{facts.OPENVPN_PRIVATE_DIR}/{facts.OPENVPN_TLS_CRYPT_V2_SERVER_FILE}",
    }


@dataclass(frozen=True)
class Admitted:
    """What one on-premise organisation may connect with: its current VPN client certificate
    and the id of its current tls-crypt-v2 client key (nina.tlscrypt.key_id)."""

    cert_pem: str
    tls_crypt_v2_key_id: str


def allow_entry(slug: str, admitted: Admitted) -> str:
    """The organisation's file in facts.OPENVPN_ALLOW_DIR (nina.host.vpn_verify reads it per connection)."""
    fingerprint = localpki.fingerprint_sha256(pem.certificate(admitted.cert_pem))
    return vpn_verify.allow_entry(_slug(slug), fingerprint, admitted.tls_crypt_v2_key_id)


def verify_program() -> str:
    """facts.VPN_VERIFY_BIN: a launcher of nina.host.vpn_verify (installed by every delivery's receiver)."""
    return launcher("vpn_verify")


def vpn_delivery(
    vpn: VpnPlan,
    members: Sequence[Member],
    ca_cert_pem: str,
    server_cert_pem: str,
    server_key_pem: str,
    tls_crypt_v2_server_key: str,
    admitted: Mapping[str, Admitted],
) -> str:
    """Payload for the VPN host: both server configs, the PKI, the admission check
    (nina-vpn-verify), and per on-premise member one client-config-dir file (its address) and one
    allow file (its current certificate and tls-crypt-v2 key), `admitted[slug]`. Others are
    pruned: a removed organisation is refused, and so is a replaced kit's certificate or key.
    A change to the configs or the PKI restarts the forwarding unit and both instances; a change
    only to the per-organisation files restarts nothing and disconnects just the organisations
    concerned.

    `tls_crypt_v2_server_key` is the server key file (nina.tlscrypt.server_key).
    """
    paths = server_pki_paths()
    server_tc = tlscrypt.server_key_file(tls_crypt_v2_server_key)
    files = [
        DeliveredFile(facts.OPENVPN_SERVER_CONF, server_conf(vpn), 0o644),
        DeliveredFile(facts.OPENVPN_TCP_SERVER_CONF, server_tcp_conf(vpn), 0o644),
        DeliveredFile(paths["ca"], _pem(ca_cert_pem, "CA certificate", "BEGIN CERTIFICATE"), 0o644),
        DeliveredFile(paths["cert"], _pem(server_cert_pem, "VPN server certificate", "BEGIN CERTIFICATE"), 0o644),
        DeliveredFile(paths["key"], _pem(server_key_pem, "VPN server key", "PRIVATE KEY"), 0o600),
        DeliveredFile(paths["tls_crypt_v2"], server_tc, 0o600),
        DeliveredFile(facts.VPN_VERIFY_BIN, verify_program(), 0o755),
        # The hub's bridge, forwarding and firewall (started before the servers: their drop-in
        # Requires it), delivered in place like the rest.
        *service_files(facts.VPN_FORWARDING_BIN, forwarding_script(vpn), facts.VPN_FORWARDING_UNIT, forwarding_unit()),
        DeliveredFile(facts.OPENVPN_SERVER_DROPIN, openvpn_server_dropin(), 0o644),
    ]
    on_premise = sorted((m for m in members if m.vpn_address is not None), key=lambda m: m.slug)
    if set(admitted) != {m.slug for m in on_premise}:
        raise ValueError(f"admitted organisations {sorted(admitted)} must be exactly the on-premise members {[m.slug for m in on_premise]}")
    seen: dict[str, str] = {}
    for m in on_premise:
        entry = ccd_entry(vpn, m)
        assert m.vpn_address is not None
        if m.vpn_address in seen:
            raise ValueError(f"{m.slug!r} and {seen[m.vpn_address]!r} share the VPN address {m.vpn_address}")
        seen[m.vpn_address] = m.slug
        files.append(DeliveredFile(posixpath.join(facts.OPENVPN_CCD_DIR, m.slug), entry, 0o644))
        files.append(DeliveredFile(posixpath.join(facts.OPENVPN_ALLOW_DIR, m.slug), allow_entry(m.slug, admitted[m.slug]), 0o644))
    # Onboarding, removing or replacing an organisation's kit changes only its own files here:
    # no restart, only that organisation is disconnected (see nina-install-files, "hot").
    sockets = list(facts.OPENVPN_MANAGEMENT_SOCKETS)
    return delivery_payload(
        files,
        list(services.vpn.UNITS),
        prune=[facts.OPENVPN_CCD_DIR, facts.OPENVPN_ALLOW_DIR],
        hot={facts.OPENVPN_CCD_DIR: sockets, facts.OPENVPN_ALLOW_DIR: sockets},
    )
