"""A tenancy (one federation): its SuperLink's certificate and delivery, its OpenVPN hub, and
its members' SuperNode keys, registrations and cloud SuperNode deliveries."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_command as command

from components import identity
from components.flower import DeliveryTarget, SuperNodeRegistration, SuperNodeRegistrationArgs, deliver
from components.pki import CertificateAuthority, LeafCertificate, LeafCertificateArgs, SuperNodeKey
from components.vpnhub import VpnHub, VpnHubArgs
from nina import outputs, render, services
from nina.plan import Member as MemberPlan
from nina.plan import TenancyPlan


@dataclass(frozen=True, kw_only=True)
class MemberArgs:
    member: MemberPlan
    fleet_address: str  # the tenancy's SuperLink Fleet API, in supernode.conf
    environment_lock: str  # the tenancy's training environment lock (nina.environments)
    ca_cert_pem: pulumi.Input[str]
    superlink: command.remote.ConnectionArgs  # where the SuperNode key is registered
    superlink_files: pulumi.Resource  # the SuperLink's delivery: registering needs nina-membership there
    node: DeliveryTarget | None  # the organisation's cloud SuperNode host (None on premise)
    formerly_under: pulumi.Resource  # where live stacks hold these resources (components.identity)


class Member(pulumi.ComponentResource):
    """An organisation in its federation: its SuperNode key (unless it sent its public key),
    the key's registration with the SuperLink, and (cloud SuperNode) the node's delivery."""

    public_key_openssh: pulumi.Input[str]
    private_key_openssh: pulumi.Output[str] | None  # None when the organisation keeps its key

    def __init__(self, name: str, args: MemberArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("nina:flower:Member", name, None, opts)
        moved = identity.moved(self, args.formerly_under)
        m = args.member
        if m.own_supernode_public_key is not None:
            self.public_key_openssh = m.own_supernode_public_key.strip() + "\n"
            self.private_key_openssh = None
        else:
            key = SuperNodeKey(f"supernode-{m.slug}{m.key_suffix}", moved)
            self.public_key_openssh, self.private_key_openssh = key.public_key_openssh, key.private_key_openssh
        registration = SuperNodeRegistration(
            f"{m.slug}-registration",
            SuperNodeRegistrationArgs(
                superlink=args.superlink, slug=m.slug, public_key_openssh=self.public_key_openssh, after=[args.superlink_files]
            ),
            moved,
        )
        if args.node is not None and self.private_key_openssh is not None:
            payload = pulumi.Output.all(args.ca_cert_pem, self.private_key_openssh, self.public_key_openssh).apply(
                lambda keys: render.supernode_delivery(m, args.fleet_address, keys[0], keys[1], keys[2], args.environment_lock)
            )
            deliver(services.supernode.SERVICE, args.node, payload, moved, after=[registration])
        self.register_outputs({"public_key_openssh": self.public_key_openssh})


@dataclass(frozen=True, kw_only=True)
class TenancyArgs:
    tenancy: TenancyPlan
    ca: CertificateAuthority
    superlink: DeliveryTarget  # the tenancy's SuperLink host
    vpn: DeliveryTarget | None  # its OpenVPN host, when it has on-premise organisations
    vpn_public_ip: pulumi.Input[str] | None  # that host's floating IP, in the stack outputs
    supernodes: Mapping[str, DeliveryTarget]  # slug -> the organisation's cloud SuperNode host
    formerly_under: pulumi.Resource  # where live stacks hold these resources (components.identity)


class Tenancy(pulumi.ComponentResource):
    """One federation: the SuperLink's leaf certificate and delivery, the VPN hub (if any) and
    one `Member` per organisation; `document` is its part of the stack outputs."""

    document: dict[str, Any]
    supernode_private_keys: dict[str, pulumi.Output[str]]
    vpn_client_private_keys: dict[str, pulumi.Output[str]]
    vpn_tls_crypt_v2_keys: dict[str, pulumi.Output[str]]  # slug -> its own tls-crypt-v2 client key

    def __init__(self, name: str, args: TenancyArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("nina:flower:Tenancy", name, None, opts)
        child, moved = pulumi.ResourceOptions(parent=self), identity.moved(self, args.formerly_under)
        t, ca = args.tenancy, args.ca
        leaf = LeafCertificate(t.certificate.name, LeafCertificateArgs(t.certificate, ca), moved)
        payload = pulumi.Output.all(ca.cert_pem, leaf.cert_pem, leaf.private_key_pem).apply(
            lambda pems: render.superlink_delivery(t, *pems)
        )
        superlink_files = deliver(services.superlink.SERVICE, args.superlink, payload, moved)

        hub, vpn_doc = None, None
        if t.vpn is not None:
            assert args.vpn is not None, f"tenancy {t.name} has a VPN plan but no VPN host"
            hub = VpnHub(
                t.vpn.host,
                VpnHubArgs(vpn=t.vpn, members=t.members, ca=ca, target=args.vpn, formerly_under=args.formerly_under),
                child,
            )
            vpn_doc = outputs.vpn(t.vpn, args.vpn_public_ip)
        self.vpn_tls_crypt_v2_keys = dict(hub.tls_crypt_v2_keys) if hub is not None else {}
        self.vpn_client_private_keys = dict(hub.client_private_keys) if hub is not None else {}

        self.supernode_private_keys = {}
        organisations = {}
        for m in t.members:
            member = Member(
                m.slug,
                MemberArgs(
                    member=m,
                    fleet_address=t.fleet_address,
                    environment_lock=t.environment_lock,
                    ca_cert_pem=ca.cert_pem,
                    superlink=args.superlink.connection,
                    superlink_files=superlink_files,
                    node=args.supernodes.get(m.slug),
                    formerly_under=args.formerly_under,
                ),
                child,
            )
            if member.private_key_openssh is not None:
                self.supernode_private_keys[m.slug] = member.private_key_openssh
            vpn_cert = hub.client_cert_pems.get(m.slug) if hub is not None else None
            organisations[m.slug] = outputs.organisation(m, member.public_key_openssh, vpn_cert)
        self.document = outputs.tenancy(t, vpn_doc, organisations)
        self.register_outputs({"superlink_cert_pem": leaf.cert_pem})
