"""A tenancy's OpenVPN hub (manual 4.1.2.4, UDP and TCP instances). Its delivery is
`nina.vpn.vpn_delivery` (`<host>-vpn`): PKI, server configs, client-config-dir, forwarding.

`CLIENT` is the other end (manual 4.1.3.2): the OpenVPN client of an on-premise SuperNode host,
which its site kit sets up (`nina.kit`); no cloud host runs it, so it is not a role."""

from nina import facts
from nina.services.model import Directory, Service

SERVICE = Service(
    name="vpn",
    summary="OpenVPN hub for on-premise SuperNodes",
    packages=("iptables", "openvpn"),
    directories=(Directory(facts.OPENVPN_CCD_DIR, 0o755, facts.ROOT_USER, facts.ROOT_USER),),
)
# The OpenVPN instances (UDP, TCP) and the forwarding unit they require.
SERVER_UNITS = (facts.OPENVPN_SERVER_UNIT, facts.OPENVPN_TCP_SERVER_UNIT)
UNITS = (facts.VPN_FORWARDING_UNIT, *SERVER_UNITS)

CLIENT = Service(
    name="vpn-client",
    summary="OpenVPN client of an on-premise SuperNode host (its site kit)",
    packages=("openvpn",),
    directories=(
        Directory(facts.OPENVPN_CLIENT_CERTS, 0o755, facts.ROOT_USER, facts.ROOT_USER),
        Directory(f"{facts.OPENVPN_CLIENT_CERTS}/{facts.OPENVPN_ISSUED_DIR}", 0o755, facts.ROOT_USER, facts.ROOT_USER),
        Directory(f"{facts.OPENVPN_CLIENT_CERTS}/{facts.OPENVPN_PRIVATE_DIR}", 0o700, facts.ROOT_USER, facts.ROOT_USER),
    ),
)
CLIENT_UNITS = (facts.OPENVPN_CLIENT_UNIT,)
