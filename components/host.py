"""A VM with its fixed port, state volumes and optional floating IP (manual 3.1, 3.3).

The port is created before the VM, so the fixed address (already decided by the plan) is
reserved before any VM or certificate. Volumes do not depend on the VM: replacing the VM
re-attaches the same volumes, so state (e.g. the SuperLink database) survives.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import pulumi
import pulumi_openstack as openstack

from cloudinit.userdata import user_data
from nina.plan import Host as HostPlan
from nina.plan import Plan


@dataclass
class HostArgs:
    plan: Plan
    host: HostPlan
    network_id: pulumi.Input[str]
    subnet_id: pulumi.Input[str]
    security_group_ids: list[pulumi.Input[str]]
    key_pair: pulumi.Input[str]


class Host(pulumi.ComponentResource):
    instance: openstack.compute.Instance
    fixed_ip: str
    floating_ip: pulumi.Output[str] | None

    def __init__(self, name: str, args: HostArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("nina:compute:Host", name, None, opts)
        plan, host, cloud = args.plan, args.host, args.plan.cfg.cloud
        child = pulumi.ResourceOptions(parent=self)
        self.fixed_ip = host.fixed_ip
        self.port = openstack.networking.Port(
            f"{name}-port",
            name=plan.prefix(host.name),
            network_id=args.network_id,
            fixed_ips=[openstack.networking.PortFixedIpArgs(subnet_id=args.subnet_id, ip_address=host.fixed_ip)],
            security_group_ids=args.security_group_ids,
            allowed_address_pairs=[openstack.networking.PortAllowedAddressPairArgs(ip_address=c) for c in host.routed_cidrs] or None,
            admin_state_up=True,
            opts=child,
        )
        volumes: dict[str, openstack.blockstorage.Volume] = {}
        for vol in host.volumes:
            volumes[vol.name] = openstack.blockstorage.Volume(
                f"{name}-{vol.name}",
                name=plan.prefix(f"{host.name}-{vol.name}"),
                size=vol.size_gb,
                availability_zone=cloud.availability_zone,
                description=f"{vol.mount_point} of {host.name}",
                opts=pulumi.ResourceOptions(parent=self, protect=plan.cfg.protect),
            )
        volume_ids: Mapping[str, pulumi.Output[str]] = {k: v.id for k, v in volumes.items()}
        rendered = (
            pulumi.Output.all(**volume_ids).apply(lambda ids: user_data(plan, host, ids)) if volume_ids else user_data(plan, host, {})
        )
        # The VM holds the pre-created port: it must be deleted before its replacement is created.
        self.instance = openstack.compute.Instance(
            name,
            name=plan.prefix(host.name),
            flavor_name=host.flavor,
            image_name=cloud.image,
            availability_zone=cloud.availability_zone,
            key_pair=args.key_pair,
            networks=[openstack.compute.InstanceNetworkArgs(port=self.port.id)],
            user_data=rendered,
            metadata={"nina-environment": plan.cfg.environment, "nina-roles": ",".join(host.roles)},
            opts=pulumi.ResourceOptions(parent=self, delete_before_replace=True),
        )
        for vol_name, volume in volumes.items():
            openstack.compute.VolumeAttach(
                f"{name}-{vol_name}-attach",
                instance_id=self.instance.id,
                volume_id=volume.id,
                opts=pulumi.ResourceOptions(parent=self, delete_before_replace=True),
            )
        self.floating_ip = None
        if host.public:
            fip = openstack.networking.FloatingIp(
                f"{name}-fip",
                pool=cloud.external_network,
                port_id=self.port.id,
                description=f"public address of {host.name}",
                opts=child,
            )
            self.floating_ip = fip.address
        self.register_outputs({"fixed_ip": self.fixed_ip, "floating_ip": self.floating_ip})
