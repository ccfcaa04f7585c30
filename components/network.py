"""Network segments: the server segment and (stack `test`) one segment per cloud organisation,
all on one router to the external network, so segments are routed to each other and traffic
between them is filtered by security groups (the manual's cloud-only variant, section 2.1)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pulumi
import pulumi_openstack as openstack

from nina.plan import Segment


@dataclass(frozen=True, kw_only=True)
class NetworkArgs:
    name_prefix: str  # cloud-side names are `<name_prefix><segment>` (and `<name_prefix>router`)
    external_network: str
    availability_zone: str
    segments: Sequence[Segment]
    dns_nameservers: Sequence[str]
    # Destination CIDR -> the fixed IP of the host that routes it (a VPN pool -> its OpenVPN server).
    routes: Mapping[str, str]


class Network(pulumi.ComponentResource):
    network_ids: dict[str, pulumi.Output[str]]
    subnet_ids: dict[str, pulumi.Output[str]]

    def __init__(self, name: str, args: NetworkArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("nina:network:Network", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        external = openstack.networking.get_network_output(name=args.external_network, opts=pulumi.InvokeOutputOptions(parent=self))
        self.router = openstack.networking.Router(
            "router",
            name=f"{args.name_prefix}router",
            external_network_id=external.id,
            availability_zone_hints=[args.availability_zone],
            opts=child,
        )
        self.network_ids, self.subnet_ids = {}, {}
        interfaces = []
        for seg in args.segments:
            net = openstack.networking.Network(
                f"net-{seg.name}",
                name=f"{args.name_prefix}{seg.name}",
                admin_state_up=True,
                opts=child,
            )
            start, end = seg.pool
            subnet = openstack.networking.Subnet(
                f"subnet-{seg.name}",
                name=f"{args.name_prefix}{seg.name}",
                network_id=net.id,
                cidr=str(seg.cidr),
                ip_version=4,
                gateway_ip=seg.gateway_ip,
                allocation_pools=[openstack.networking.SubnetAllocationPoolArgs(start=start, end=end)],
                dns_nameservers=list(args.dns_nameservers) or None,
                opts=child,
            )
            interfaces.append(
                openstack.networking.RouterInterface(f"router-{seg.name}", router_id=self.router.id, subnet_id=subnet.id, opts=child)
            )
            self.network_ids[seg.name] = net.id
            self.subnet_ids[seg.name] = subnet.id
        # Traffic to a VPN pool (e.g. monitoring scraping on-premise exporters) goes to the
        # tenancy's OpenVPN server.
        for cidr, next_hop in args.routes.items():
            openstack.networking.RouterRoute(
                f"route-{cidr.replace('/', '_')}",
                router_id=self.router.id,
                destination_cidr=cidr,
                next_hop=next_hop,
                opts=pulumi.ResourceOptions(parent=self, depends_on=list(interfaces)),
            )
        self.register_outputs({"router_id": self.router.id, "subnet_ids": self.subnet_ids})
