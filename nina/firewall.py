"""The manual's port table (section 3.3.1) as data, with who may reach each port.

Every security-group rule the program declares is derived from PORT_TABLE (see
`nina.plan._rules`); a port that is not here is not open. Zones are security groups:
`managed` is on every host; role zones (`bastion`, `proxy`, `keycloak`, `jupyterhub`,
`monitoring`, `gpu`) only where a host has that role; `superlink` and `vpn` expand to one
zone per tenancy. Sources are zones (remote_group_id), `admin` (nina:network.admin_cidrs),
`public` (0.0.0.0/0), or `supernodes` (the tenancy's cloud organisation segments and, when
it has on-premise organisations, its OpenVPN server, which masquerades the VPN pool).
"""

from __future__ import annotations

from dataclasses import dataclass

from nina import facts


@dataclass(frozen=True)
class Flow:
    component: str
    to: str
    protocol: str
    port: int
    sources: tuple[str, ...]
    manual_ref: str
    port_max: int | None = None


PORT_TABLE: tuple[Flow, ...] = (
    Flow("SSH to the bastion", "bastion", "tcp", facts.SSH_PORT, ("admin",), "3.3.1 Global SSH"),
    Flow("SSH from the bastion", "managed", "tcp", facts.SSH_PORT, ("bastion",), "3.3.1 Global SSH"),
    Flow("Reverse proxy HTTPS", "proxy", "tcp", facts.HTTPS_PORT, ("public",), "3.3.1 ReverseProxy Nginx"),
    # Not in 3.3.1: Let's Encrypt's HTTP-01 challenge (4.1.2.6) comes to port 80. nginx serves only
    # the challenge directory there and redirects everything else to HTTPS (nina.proxy).
    Flow("Reverse proxy HTTP (ACME challenges, redirect)", "proxy", "tcp", facts.HTTP_PORT, ("public",), "4.1.2.6 Let's Encrypt HTTP-01"),
    Flow("JupyterHub HTTPS", "jupyterhub", "tcp", facts.JUPYTERHUB_PORT, ("proxy",), "3.3.1 UserInterface JupyterHub (4.1.2.13's 8000)"),
    Flow("Keycloak HTTPS", "keycloak", "tcp", facts.KEYCLOAK_PORT, ("proxy", "jupyterhub", "monitoring"), "3.3.1 IAM Keycloak"),
    Flow("Flower Fleet API", "superlink", "tcp", facts.SUPERLINK_FLEET_PORT, ("supernodes",), "3.3.1 Flower SuperLink 9092"),
    # Not from the admin CIDRs: they are public addresses, and the SuperLink has only a private one,
    # so no packet from them could ever match. Operators reach it through an SSH tunnel via the
    # bastion to its 127.0.0.1:9093 (`nina validate`; README "Deployment validation").
    Flow("Flower Control API", "superlink", "tcp", facts.SUPERLINK_CONTROL_PORT, ("jupyterhub",), "3.3.1 Flower SuperLink 9093"),
    Flow("OpenVPN UDP", "vpn", "udp", facts.OPENVPN_UDP_PORT, ("public",), "3.3.1 Nectar.VPN OpenVPN"),
    Flow("OpenVPN TCP fallback", "vpn", "tcp", facts.OPENVPN_TCP_PORT, ("public",), "3.3.1 Nectar.VPN OpenVPN"),
    Flow("Prometheus node exporter", "managed", "tcp", facts.NODE_EXPORTER_PORT, ("monitoring",), "3.3.1 Monitoring Node Exporter"),
    Flow("NVIDIA DCGM exporter", "gpu", "tcp", facts.DCGM_EXPORTER_PORT, ("monitoring",), "5.1.1 GPU monitoring"),
    Flow("Grafana", "monitoring", "tcp", facts.GRAFANA_PORT, ("proxy",), "3.3.1 Monitoring Grafana"),
)

# Rows of 3.3.1 that never get an ingress rule, and why. Tests check these stay closed.
NEVER_OPEN: dict[int, str] = {
    facts.SUPERLINK_SERVERAPPIO_PORT: "ServerAppIo is served without TLS by flwr: bound to 127.0.0.1",
    facts.SUPERNODE_CLIENTAPPIO_PORT: "ClientAppIo is served without TLS by flwr: bound to 127.0.0.1 (9094-9099)",
    facts.PROMETHEUS_PORT: "Prometheus is read by Grafana on the same host",
}
# Postgres (3.3.1 IAM Postgres 5432) is the managed Trove instance: Neutron rules cannot
# reach it, so its allow-list is set from the hosts that use it (see nina.plan, components.database).
DATABASE_CLIENT_ROLES = ("keycloak", "monitoring")
# Zones that exist once per tenancy (`superlink-<tenancy>`, `vpn-<tenancy>`).
PER_TENANCY_ZONES = ("superlink", "vpn")
