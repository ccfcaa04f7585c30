"""The whole Nectar side of a stack, wired from the plan (the only place the parts meet)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_random as random

from components.access import OperatorAccess, OperatorAccessArgs
from components.database import Database, DatabaseArgs
from components.flower import FileDelivery, FileDeliveryArgs, SuperNodeRegistration, SuperNodeRegistrationArgs
from components.host import Host, HostArgs
from components.network import Network, NetworkArgs
from components.pki import CertificateAuthority, CertificateAuthorityArgs, LeafCertificate, LeafCertificateArgs, SuperNodeKey
from components.security import SecurityGroups, SecurityGroupsArgs
from nina import facts, outputs, render, services, vpn
from nina.plan import Member, Plan, TenancyPlan
from nina.services import Service


@dataclass
class PlatformArgs:
    plan: Plan


class Platform(pulumi.ComponentResource):
    outputs: dict[str, Any]

    def __init__(self, name: str, args: PlatformArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("nina:platform:Platform", name, None, opts)
        self.plan = plan = args.plan
        self.child = pulumi.ResourceOptions(parent=self)

        network = Network("network", NetworkArgs(plan), self.child)
        groups = SecurityGroups("security", SecurityGroupsArgs(plan), self.child)
        self.ca = CertificateAuthority("ca", CertificateAuthorityArgs(protect=plan.cfg.protect), self.child)
        self.access = OperatorAccess("access", OperatorAccessArgs(plan), self.child)

        self.hosts: dict[str, Host] = {}
        for h in plan.hosts:
            self.hosts[h.name] = Host(
                h.name,
                HostArgs(
                    plan=plan,
                    host=h,
                    network_id=network.network_ids[h.segment],
                    subnet_id=network.subnet_ids[h.segment],
                    security_group_ids=[groups.ids[z] for z in h.security_groups],
                    key_pair=self.access.key_pair_name,
                ),
                self.child,
            )
        self.access.bastion_ip = self.hosts[plan.bastion.name].floating_ip
        # Every host's `<host>-base` delivery (host programs, journald/logrotate/node exporter
        # settings); each service's own delivery `<host>-<service>` runs after it (`_deliver`).
        base_payload = render.base_delivery()
        self.base: dict[str, FileDelivery] = {
            name: FileDelivery(f"{name}-{services.BASE.name}", FileDeliveryArgs(self.access, h, base_payload), self.child)
            for name, h in self.hosts.items()
        }

        # Secret outputs, one mapping each so the public outputs stay readable.
        self.supernode_private_keys: dict[str, pulumi.Output[str]] = {}
        self.vpn_client_private_keys: dict[str, pulumi.Output[str]] = {}
        self.vpn_tls_auth_keys: dict[str, pulumi.Output[str]] = {}
        tenancy_outputs = {t.name: self._tenancy(t) for t in plan.tenancies}

        database_outputs: dict[str, Any] | None = None
        database_passwords: dict[str, pulumi.Output[str]] = {}
        if plan.cfg.database.enabled:
            db = Database("postgres", DatabaseArgs(plan, network.network_ids["server"]), self.child)
            database_passwords = db.passwords
            database_outputs = outputs.database(plan, db.address)

        self.outputs = outputs.document(
            plan,
            ca_cert_pem=self.ca.cert_pem,
            tenancies=tenancy_outputs,
            hosts={name: outputs.host(plan.host_by_name[name], h.fixed_ip, h.floating_ip) for name, h in self.hosts.items()},
            bastion_ip=self.access.bastion_ip,
            database=database_outputs,
            secrets={
                "supernode_private_keys": pulumi.Output.secret(self.supernode_private_keys),
                "vpn_client_private_keys": pulumi.Output.secret(self.vpn_client_private_keys),
                "vpn_tls_auth_keys": pulumi.Output.secret(self.vpn_tls_auth_keys),
                "database_passwords": pulumi.Output.secret(database_passwords),
                "ops_ssh_private_key": pulumi.Output.secret(self.access.private_key_openssh),
            },
        )
        self.register_outputs(self.outputs)

    # ---------------------------------------------------------------------------------------

    def _deliver(self, host: str, service: Service, payload: pulumi.Input[str], *after: pulumi.Resource) -> FileDelivery:
        """The delivery `<host>-<service>`, after the host's base delivery and `after`."""
        return FileDelivery(
            f"{host}-{service.name}",
            FileDeliveryArgs(self.access, self.hosts[host], payload),
            pulumi.ResourceOptions(parent=self, depends_on=[self.base[host], *after]),
        )

    def _tenancy(self, t: TenancyPlan) -> dict[str, Any]:
        ca = self.ca
        superlink = self.hosts[t.superlink_host]
        leaf = LeafCertificate(t.certificate.name, LeafCertificateArgs(t.certificate, ca), self.child)
        payload = pulumi.Output.all(ca.cert_pem, leaf.cert_pem, leaf.private_key_pem).apply(
            lambda pems: render.superlink_delivery(t, *pems)
        )
        superlink_files = self._deliver(t.superlink_host, services.superlink.SERVICE, payload)

        vpn_clients: dict[str, LeafCertificate] = {}
        vpn_output = None
        if t.vpn is not None:
            vpn_clients = self._vpn(t)
            vpn_output = outputs.vpn(t.vpn, self.hosts[t.vpn.host].floating_ip)

        orgs = {m.slug: self._member(t, m, superlink, superlink_files, vpn_clients.get(m.slug)) for m in t.members}
        return outputs.tenancy(t, vpn_output, orgs)

    def _vpn(self, t: TenancyPlan) -> dict[str, LeafCertificate]:
        """The tenancy's OpenVPN server material and one client certificate per on-premise organisation."""
        assert t.vpn is not None
        ca, v = self.ca, t.vpn
        server_cert = LeafCertificate(v.certificate.name, LeafCertificateArgs(v.certificate, ca), self.child)
        ta_bytes = random.RandomBytes(f"{v.host}-tls-auth", length=facts.TLS_AUTH_KEY_BYTES, opts=self.child)
        ta_key = ta_bytes.hex.apply(vpn.tls_auth_key)
        self.vpn_tls_auth_keys[t.name] = ta_key
        members = {m.slug: m for m in t.members}
        clients: dict[str, LeafCertificate] = {}
        for spec in v.clients:
            member = members[spec.common_name]
            client = clients[member.slug] = LeafCertificate(
                spec.name, LeafCertificateArgs(spec, ca, csr_pem=member.own_vpn_csr), self.child
            )
            if client.private_key_pem is not None:
                self.vpn_client_private_keys[member.slug] = client.private_key_pem
        payload = pulumi.Output.all(ca.cert_pem, server_cert.cert_pem, server_cert.private_key_pem, ta_key).apply(
            lambda parts: vpn.vpn_delivery(v, t.members, *parts)
        )
        self._deliver(v.host, services.vpn.SERVICE, payload)
        return clients

    def _member(
        self, t: TenancyPlan, m: Member, superlink: Host, superlink_files: FileDelivery, vpn_client: LeafCertificate | None
    ) -> dict[str, Any]:
        if m.own_supernode_public_key is not None:
            public_key: pulumi.Input[str] = m.own_supernode_public_key.strip() + "\n"
            private_key = None
        else:
            key = SuperNodeKey(f"supernode-{m.slug}", self.child)
            public_key, private_key = key.public_key_openssh, key.private_key_openssh
            self.supernode_private_keys[m.slug] = private_key
        registration = SuperNodeRegistration(
            f"{m.slug}-registration",
            SuperNodeRegistrationArgs(
                access=self.access,
                superlink=superlink,
                slug=m.slug,
                public_key_openssh=public_key,
                after=[superlink_files],
            ),
            self.child,
        )
        node_host = self.hosts.get(f"supernode-{m.slug}")
        if node_host is not None and private_key is not None:
            node_payload = pulumi.Output.all(self.ca.cert_pem, private_key, public_key).apply(
                lambda v: render.supernode_delivery(m, t.fleet_address, *v)
            )
            self._deliver(f"supernode-{m.slug}", services.supernode.SERVICE, node_payload, registration)
        return outputs.organisation(m, public_key, vpn_client.cert_pem if vpn_client is not None else None)
