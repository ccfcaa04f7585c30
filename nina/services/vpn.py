"""A tenancy's OpenVPN hub (manual 4.1.2.4, UDP and TCP instances). Its delivery is
`nina.vpn.vpn_delivery` (`<host>-vpn`): PKI, server configs, client-config-dir, forwarding."""

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
