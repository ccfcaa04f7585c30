"""A VM with its fixed port, state volumes and optional floating IP (manual 3.1, 3.3).

The port is created before the VM, so the fixed address (already decided by the plan) is
reserved before any VM or certificate. Volumes do not depend on the VM: replacing the VM
re-attaches the same volumes, so state (e.g. the SuperLink database) survives.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import pulumi
import pulumi_openstack as openstack

from nina.plan import Volume

UserData = Callable[[Mapping[str, str], str], str]
"""Renders a host's user-data from its volumes' OpenStack ids (volume name -> id) and the
automation key's OpenSSH public key; pure, as `cloudinit.userdata.user_data` with the plan
and host bound."""


@dataclass(frozen=True, kw_only=True)
class HostArgs:
    cloud_name: str  # the port's and VM's cloud-side name; a volume's is `<cloud_name>-<volume>`
    flavor: str
    image: str
    availability_zone: str
    key_pair: pulumi.Input[str]
    automation_public_key: pulumi.Input[str]  # the key pair's public key, in user-data's login keys
    network_id: pulumi.Input[str]
    subnet_id: pulumi.Input[str]
    security_group_ids: Sequence[pulumi.Input[str]]
    fixed_ip: str
    user_data: UserData
    metadata: Mapping[str, str]
    volumes: Sequence[Volume] = ()
    protect_volumes: bool = True
    # Networks the host routes (the VPN pool behind an OpenVPN server): its port accepts them as sources.
    routed_cidrs: Sequence[str] = ()
    floating_ip_pool: str | None = None  # the external network of a public host's floating IP


class Host(pulumi.ComponentResource):
    instance: openstack.compute.Instance
    fixed_ip: str
    floating_ip: pulumi.Output[str] | None

    def __init__(self, name: str, args: HostArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("nina:compute:Host", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.fixed_ip = args.fixed_ip
        self.port = openstack.networking.Port(
            f"{name}-port",
            name=args.cloud_name,
            network_id=args.network_id,
            fixed_ips=[openstack.networking.PortFixedIpArgs(subnet_id=args.subnet_id, ip_address=args.fixed_ip)],
            security_group_ids=list(args.security_group_ids),
            allowed_address_pairs=[openstack.networking.PortAllowedAddressPairArgs(ip_address=c) for c in args.routed_cidrs] or None,
            admin_state_up=True,
            opts=child,
        )
        volumes: dict[str, openstack.blockstorage.Volume] = {}
        for vol in args.volumes:
            volumes[vol.name] = openstack.blockstorage.Volume(
                f"{name}-{vol.name}",
                name=f"{args.cloud_name}-{vol.name}",
                size=vol.size_gb,
                availability_zone=args.availability_zone,
                description=f"{vol.mount_point} of {name}",
                opts=pulumi.ResourceOptions(parent=self, protect=args.protect_volumes),
            )
        volume_ids: Mapping[str, pulumi.Output[str]] = {k: v.id for k, v in volumes.items()}
        rendered = pulumi.Output.all(pulumi.Output.all(**volume_ids) if volume_ids else {}, args.automation_public_key).apply(
            lambda ids_key: args.user_data(ids_key[0], ids_key[1])
        )
        # The VM holds the pre-created port: it must be deleted before its replacement is created.
        self.instance = openstack.compute.Instance(
            name,
            name=args.cloud_name,
            flavor_name=args.flavor,
            image_name=args.image,
            availability_zone=args.availability_zone,
            key_pair=args.key_pair,
            networks=[openstack.compute.InstanceNetworkArgs(port=self.port.id)],
            user_data=rendered,
            metadata=dict(args.metadata),
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
        if args.floating_ip_pool is not None:
            fip = openstack.networking.FloatingIp(
                f"{name}-fip",
                pool=args.floating_ip_pool,
                port_id=self.port.id,
                description=f"public address of {name}",
                opts=child,
            )
            self.floating_ip = fip.address
        self.register_outputs({"fixed_ip": self.fixed_ip, "floating_ip": self.floating_ip})
