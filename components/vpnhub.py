"""A tenancy's OpenVPN hub (manual 4.1.2.3-4.1.2.4): its PKI and the VPN host's delivery.

The VM itself is a `Host` with role `vpn` (its port accepts the pool as source addresses, and
the router routes the pool to it), declared with the other hosts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pulumi
import pulumi_random as random

from components import identity
from components.flower import DeliveryTarget, deliver
from components.pki import CertificateAuthority, LeafCertificate, LeafCertificateArgs
from nina import services, tlscrypt, vpn
from nina.plan import Member, VpnPlan


@dataclass(frozen=True, kw_only=True)
class VpnHubArgs:
    vpn: VpnPlan
    members: Sequence[Member]  # the tenancy's organisations: on-premise ones get a client-config-dir entry
    ca: CertificateAuthority
    target: DeliveryTarget  # the VPN host
    formerly_under: pulumi.Resource  # where live stacks hold these resources (components.identity)


def _client_key(slug: str) -> Callable[[list[str]], str]:
    return lambda keys: tlscrypt.client_key(keys[0], keys[1], slug)


def _admitted(parts: list[str]) -> vpn.Admitted:
    return vpn.Admitted(parts[0], tlscrypt.key_id(parts[1]))


class VpnHub(pulumi.ComponentResource):
    """The server certificate, the tls-crypt-v2 server key, per on-premise organisation a client
    certificate (its own CSR signed, if it sent one) and its own tls-crypt-v2 client key, and the
    delivery of the server configs, the client-config-dir and the allow-list of each
    organisation's current certificate and key (pruned and rewritten, so a removed organisation
    and a replaced kit are refused)."""

    client_cert_pems: dict[str, pulumi.Output[str]]
    client_private_keys: dict[str, pulumi.Output[str]]  # the clients whose key nina made
    tls_crypt_v2_keys: dict[str, pulumi.Output[str]]  # slug -> its tls-crypt-v2 client key file

    def __init__(self, name: str, args: VpnHubArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("nina:vpn:VpnHub", name, None, opts)
        moved = identity.moved(self, args.formerly_under)
        v, ca = args.vpn, args.ca
        server = LeafCertificate(v.certificate.name, LeafCertificateArgs(v.certificate, ca), moved)
        # tls-crypt-v2 (nina.tlscrypt): the wrapping is computed, deterministically, from random bytes.
        server_tc = random.RandomBytes(f"{v.host}-tls-crypt-v2-server", length=tlscrypt.SERVER_KEY_BYTES, opts=moved)
        # RandomBytes' hex is secret, and so is everything computed from it.
        server_tc_key: pulumi.Output[str] = server_tc.hex.apply(tlscrypt.server_key)
        members = {m.slug: m for m in args.members}
        self.client_cert_pems, self.client_private_keys, self.tls_crypt_v2_keys = {}, {}, {}
        admitted: dict[str, pulumi.Output[vpn.Admitted]] = {}
        for spec in v.clients:
            member = members[spec.common_name]
            client = LeafCertificate(spec.name, LeafCertificateArgs(spec, ca, csr_pem=member.own_vpn_csr), moved)
            self.client_cert_pems[member.slug] = client.cert_pem
            if client.private_key_pem is not None:
                self.client_private_keys[member.slug] = client.private_key_pem
            # Named like the certificate (with the kit generation): a replaced kit gets a new key too.
            kc = random.RandomBytes(f"{spec.name}-tls-crypt-v2", length=tlscrypt.CLIENT_KEY_BYTES, opts=moved)
            self.tls_crypt_v2_keys[member.slug] = pulumi.Output.all(server_tc_key, kc.hex).apply(_client_key(member.slug))
            admitted[member.slug] = pulumi.Output.all(client.cert_pem, kc.hex).apply(_admitted)
        payload = pulumi.Output.all(
            ca.cert_pem, server.cert_pem, server.private_key_pem, server_tc_key, pulumi.Output.all(**admitted)
        ).apply(lambda parts: vpn.vpn_delivery(v, args.members, *parts))
        deliver(services.vpn.SERVICE, args.target, payload, moved)
        self.register_outputs({"server_cert_pem": server.cert_pem, "client_cert_pems": self.client_cert_pems})
