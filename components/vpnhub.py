"""A tenancy's OpenVPN hub (manual 4.1.2.3-4.1.2.4): its PKI and the VPN host's delivery.

The VM itself is a `Host` with role `vpn` (its port accepts the pool as source addresses, and
the router routes the pool to it), declared with the other hosts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_random as random

from components import identity
from components.flower import DeliveryTarget, deliver
from components.pki import CertificateAuthority, LeafCertificate, LeafCertificateArgs
from nina import facts, services, vpn
from nina.plan import Member, VpnPlan


@dataclass(frozen=True, kw_only=True)
class VpnHubArgs:
    vpn: VpnPlan
    members: Sequence[Member]  # the tenancy's organisations: on-premise ones get a client-config-dir entry
    ca: CertificateAuthority
    target: DeliveryTarget  # the VPN host
    formerly_under: pulumi.Resource  # where live stacks hold these resources (components.identity)


class VpnHub(pulumi.ComponentResource):
    """The server certificate, the tls-auth key, one client certificate per on-premise
    organisation (its own CSR signed, if it sent one), and the delivery of the server configs
    and the client-config-dir (pruned, so a removed organisation is refused)."""

    tls_auth_key: pulumi.Output[str]
    client_cert_pems: dict[str, pulumi.Output[str]]
    client_private_keys: dict[str, pulumi.Output[str]]  # the clients whose key nina made

    def __init__(self, name: str, args: VpnHubArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("nina:vpn:VpnHub", name, None, opts)
        moved = identity.moved(self, args.formerly_under)
        v, ca = args.vpn, args.ca
        server = LeafCertificate(v.certificate.name, LeafCertificateArgs(v.certificate, ca), moved)
        ta_bytes = random.RandomBytes(f"{v.host}-tls-auth", length=facts.TLS_AUTH_KEY_BYTES, opts=moved)
        self.tls_auth_key = ta_bytes.hex.apply(vpn.tls_auth_key)
        members = {m.slug: m for m in args.members}
        self.client_cert_pems, self.client_private_keys = {}, {}
        for spec in v.clients:
            member = members[spec.common_name]
            client = LeafCertificate(spec.name, LeafCertificateArgs(spec, ca, csr_pem=member.own_vpn_csr), moved)
            self.client_cert_pems[member.slug] = client.cert_pem
            if client.private_key_pem is not None:
                self.client_private_keys[member.slug] = client.private_key_pem
        payload = pulumi.Output.all(ca.cert_pem, server.cert_pem, server.private_key_pem, self.tls_auth_key).apply(
            lambda parts: vpn.vpn_delivery(v, args.members, *parts)
        )
        deliver(services.vpn.SERVICE, args.target, payload, moved)
        self.register_outputs({"server_cert_pem": server.cert_pem, "client_cert_pems": self.client_cert_pems})
