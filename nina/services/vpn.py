"""A tenancy's OpenVPN hub (manual 4.1.2.4, UDP and TCP instances). Its delivery is
`nina.vpn.vpn_delivery` (`<host>-vpn`): PKI, server configs, client-config-dir, forwarding."""

from nina import facts
from nina.services.model import ROOT, Directory, Service

SERVICE = Service(
    name="vpn",
    summary="OpenVPN hub for on-premise SuperNodes",
    packages=("iptables", "openvpn"),
    directories=(Directory(facts.OPENVPN_CCD_DIR, 0o755, ROOT, ROOT),),
)
