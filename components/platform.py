"""The whole Nectar side of a stack, wired from the plan (the only place the parts meet).

The Platform only wires: it hands each component the part of the plan it uses, and the
resources (ids, connections, deliveries) other components made, in dependency order.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_random as random

from cloudinit.userdata import user_data
from components.access import OperatorAccess, OperatorAccessArgs
from components.database import Database, DatabaseArgs
from components.flower import DeliveryTarget, FileDelivery, SuperNodeRegistration, SuperNodeRegistrationArgs, deliver
from components.host import Host, HostArgs
from components.network import Network, NetworkArgs
from components.pki import CertificateAuthority, CertificateAuthorityArgs, LeafCertificate, LeafCertificateArgs, SuperNodeKey
from components.security import SecurityGroups, SecurityGroupsArgs
from nina import facts, outputs, render, services, vpn
from nina.plan import Host as HostPlan
from nina.plan import Member, Plan, TenancyPlan
from nina.services import Service


@dataclass
class PlatformArgs:
    plan: Plan


class Platform(pulumi.ComponentResource):
    outputs: dict[str, Any]

    def __init__(self, name: str, args: PlatformArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("nina:platform:Platform", name, None, opts)
        plan, cfg = args.plan, args.plan.cfg
        child = pulumi.ResourceOptions(parent=self)

        network = Network(
            "network",
            NetworkArgs(
                name_prefix=plan.name_prefix,
                external_network=cfg.cloud.external_network,
                availability_zone=cfg.cloud.availability_zone,
                segments=plan.segments,
                dns_nameservers=[str(ip) for ip in cfg.cloud.dns_nameservers],
                routes={cidr: h.fixed_ip for h in plan.hosts for cidr in h.routed_cidrs},
            ),
            child,
        )
        groups = SecurityGroups(
            "security",
            SecurityGroupsArgs(name_prefix=plan.name_prefix, environment=cfg.environment, zones=plan.security_groups, rules=plan.rules),
            child,
        )
        ca = CertificateAuthority("ca", CertificateAuthorityArgs(protect=cfg.protect), child)
        access = OperatorAccess("access", OperatorAccessArgs(key_pair_name=plan.prefix("ops")), child)

        hosts: dict[str, Host] = {}
        for h in plan.hosts:
            hosts[h.name] = Host(
                h.name,
                _host_args(
                    plan,
                    h,
                    network_id=network.network_ids[h.segment],
                    subnet_id=network.subnet_ids[h.segment],
                    security_group_ids=[groups.ids[z] for z in h.security_groups],
                    key_pair=access.key_pair_name,
                ),
                child,
            )
        access.bastion_ip = hosts[plan.bastion.name].floating_ip
        # Every host's `<host>-base` delivery (host programs, journald/logrotate/node exporter
        # settings); each service's own delivery `<host>-<service>` runs after it.
        base_payload = render.base_delivery()
        targets: dict[str, DeliveryTarget] = {}
        for host_name, host in hosts.items():
            target = DeliveryTarget(host_name, access.connection(host.fixed_ip), host.instance)
            targets[host_name] = dataclasses.replace(target, base=deliver(services.BASE, target, base_payload, child))

        self.ca, self.access, self.hosts, self.targets = ca, access, hosts, targets
        self.child = child
        # Secret outputs, one mapping each so the public outputs stay readable.
        self.supernode_private_keys: dict[str, pulumi.Output[str]] = {}
        self.vpn_client_private_keys: dict[str, pulumi.Output[str]] = {}
        self.vpn_tls_auth_keys: dict[str, pulumi.Output[str]] = {}
        tenancy_outputs = {t.name: self._tenancy(t) for t in plan.tenancies}

        database_outputs: dict[str, Any] | None = None
        database_passwords: dict[str, pulumi.Output[str]] = {}
        if cfg.database.enabled:
            assert plan.database_ip is not None
            db = Database(
                "postgres",
                DatabaseArgs(
                    instance_name=plan.prefix("postgres"),
                    flavor=cfg.database.flavor,
                    datastore_version=cfg.database.datastore_version,
                    size_gb=cfg.database.size_gb,
                    network_id=network.network_ids["server"],
                    fixed_ip=plan.database_ip,
                    allowed_cidrs=plan.database_allowed_cidrs,
                    protect=cfg.protect,
                ),
                child,
            )
            database_passwords = db.passwords
            database_outputs = outputs.database(plan, db.address)

        self.outputs = outputs.document(
            plan,
            ca_cert_pem=ca.cert_pem,
            tenancies=tenancy_outputs,
            hosts={name: outputs.host(plan.host_by_name[name], h.fixed_ip, h.floating_ip) for name, h in hosts.items()},
            bastion_ip=access.bastion_ip,
            database=database_outputs,
            secrets={
                "supernode_private_keys": pulumi.Output.secret(self.supernode_private_keys),
                "vpn_client_private_keys": pulumi.Output.secret(self.vpn_client_private_keys),
                "vpn_tls_auth_keys": pulumi.Output.secret(self.vpn_tls_auth_keys),
                "database_passwords": pulumi.Output.secret(database_passwords),
                "ops_ssh_private_key": pulumi.Output.secret(access.private_key_openssh),
            },
        )
        self.register_outputs(self.outputs)

    # ---------------------------------------------------------------------------------------

    def _deliver(self, host: str, service: Service, payload: pulumi.Input[str], *after: pulumi.Resource) -> FileDelivery:
        """The delivery `<host>-<service>`, after the host's base delivery and `after`."""
        return deliver(service, self.targets[host], payload, self.child, after)

    def _tenancy(self, t: TenancyPlan) -> dict[str, Any]:
        ca = self.ca
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

        orgs = {m.slug: self._member(t, m, superlink_files, vpn_clients.get(m.slug)) for m in t.members}
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

    def _member(self, t: TenancyPlan, m: Member, superlink_files: FileDelivery, vpn_client: LeafCertificate | None) -> dict[str, Any]:
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
                superlink=self.targets[t.superlink_host].connection,
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


def _host_args(
    plan: Plan,
    h: HostPlan,
    *,
    network_id: pulumi.Input[str],
    subnet_id: pulumi.Input[str],
    security_group_ids: list[pulumi.Input[str]],
    key_pair: pulumi.Input[str],
) -> HostArgs:
    """A planned host's VM: its cloud settings from the plan, its ids from the network and groups."""
    cloud = plan.cfg.cloud
    return HostArgs(
        cloud_name=plan.prefix(h.name),
        flavor=h.flavor,
        image=cloud.image,
        availability_zone=cloud.availability_zone,
        key_pair=key_pair,
        network_id=network_id,
        subnet_id=subnet_id,
        security_group_ids=security_group_ids,
        fixed_ip=h.fixed_ip,
        # Pure rendering; the Host supplies its volumes' ids.
        user_data=functools.partial(user_data, plan, h),
        metadata={"nina-environment": plan.cfg.environment, "nina-roles": ",".join(h.roles)},
        volumes=h.volumes,
        protect_volumes=plan.cfg.protect,
        routed_cidrs=h.routed_cidrs,
        floating_ip_pool=cloud.external_network if h.public else None,
    )
