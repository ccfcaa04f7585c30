"""Managed Postgres on the Nectar Database service (Trove) for Keycloak and Grafana (manual 4.1.2.8, 5.2.1).

Trove's allow-list defaults to 0.0.0.0/0 and the Trove resource cannot set it, so a
pulumi-command step makes the instance private and limits it to the allowed CIDRs, then reads
the setting back and fails the deployment if it did not take.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_command as command
import pulumi_openstack as openstack
import pulumi_random as random

from nina import facts
from nina.trove import restrict_access_script


@dataclass(frozen=True, kw_only=True)
class DatabaseArgs:
    instance_name: str  # the Trove instance's cloud-side name
    flavor: str
    datastore_version: str
    size_gb: int
    network_id: pulumi.Input[str]
    fixed_ip: str
    allowed_cidrs: Sequence[str]  # the only clients Trove's allow-list admits
    protect: bool


class Database(pulumi.ComponentResource):
    address: str
    passwords: dict[str, pulumi.Output[str]]

    def __init__(self, name: str, args: DatabaseArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("nina:database:Postgres", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.address = args.fixed_ip
        self.passwords = {}
        users = []
        for database, owner in facts.DATABASES.items():
            password = random.RandomPassword(f"{owner}-db-password", length=facts.SERVICE_PASSWORD_LENGTH, special=False, opts=child)
            self.passwords[owner] = password.result
            users.append(openstack.database.InstanceUserArgs(name=owner, password=password.result, databases=[database]))
        flavor = openstack.compute.get_flavor_output(name=args.flavor, opts=pulumi.InvokeOutputOptions(parent=self))
        self.instance = openstack.database.Instance(
            name,
            name=args.instance_name,
            datastore=openstack.database.InstanceDatastoreArgs(type=facts.TROVE_DATASTORE, version=args.datastore_version),
            flavor_id=flavor.id,
            size=args.size_gb,
            networks=[openstack.database.InstanceNetworkArgs(uuid=args.network_id, fixed_ip_v4=args.fixed_ip)],
            databases=[openstack.database.InstanceDatabaseArgs(name=d) for d in facts.DATABASES],
            users=users,
            opts=pulumi.ResourceOptions(parent=self, protect=args.protect),
        )
        self.access = command.local.Command(
            f"{name}-restrict-access",
            create=restrict_access_script(args.allowed_cidrs),
            interpreter=["/bin/bash", "-c"],
            environment={"NINA_DB_INSTANCE_ID": self.instance.id},
            triggers=[self.instance.id],
            opts=child,
        )
        self.register_outputs({"address": self.address, "access": self.access.stdout})
