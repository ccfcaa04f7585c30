"""Security groups and rules, exactly as the plan derives them from the port table
(`nina.firewall.PORT_TABLE`). Rule resource names are the deterministic `from->to-proto-port`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_openstack as openstack

from nina.plan import Rule


@dataclass(frozen=True, kw_only=True)
class SecurityGroupsArgs:
    name_prefix: str  # cloud-side names are `<name_prefix><zone>`
    environment: str  # named in each group's description
    zones: Sequence[str]  # one group each
    rules: Sequence[Rule]  # ingress rules between them (nina.plan from the port table)


class SecurityGroups(pulumi.ComponentResource):
    ids: dict[str, pulumi.Output[str]]

    def __init__(self, name: str, args: SecurityGroupsArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("nina:network:SecurityGroups", name, None, opts)
        self.ids = {}
        for zone in args.zones:
            sg = openstack.networking.SecGroup(
                f"sg-{zone}",
                name=f"{args.name_prefix}{zone}",
                description=f"nina {args.environment}: {zone} (rules from the port table, manual 3.3.1)",
                opts=pulumi.ResourceOptions(parent=self),
            )
            self.ids[zone] = sg.id
        # Every rule field forces replacement, and Neutron rejects a duplicate rule, so a
        # changed rule must be deleted before its replacement is created.
        rule_opts = pulumi.ResourceOptions(parent=self, delete_before_replace=True)
        for rule in args.rules:
            openstack.networking.SecGroupRule(
                rule.name,
                direction="ingress",
                ethertype="IPv4",
                protocol=rule.protocol,
                port_range_min=rule.port_min,
                port_range_max=rule.port_max,
                remote_group_id=self.ids[rule.remote_group] if rule.remote_group else None,
                remote_ip_prefix=rule.remote_cidr,
                security_group_id=self.ids[rule.security_group],
                description=rule.description,
                opts=rule_opts,
            )
        self.register_outputs({"security_group_ids": self.ids})
