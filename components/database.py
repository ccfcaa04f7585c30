"""Managed Postgres on the Nectar Database service (Trove) for Keycloak and Grafana (manual 4.1.2.8, 5.2.1).

Trove's allow-list defaults to 0.0.0.0/0 and the Trove resource cannot set it, so a
pulumi-command step makes the instance private and limits it to the plan's CIDRs, then reads
the setting back and fails the deployment if it did not take.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_command as command
import pulumi_openstack as openstack
import pulumi_random as random

from nina import facts
from nina.plan import Plan
from nina.trove import restrict_access_script


@dataclass
class DatabaseArgs:
    plan: Plan
    network_id: pulumi.Input[str]


class Database(pulumi.ComponentResource):
    address: str
    passwords: dict[str, pulumi.Output[str]]

    def __init__(self, name: str, args: DatabaseArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("nina:database:Postgres", name, None, opts)
        plan, db = args.plan, args.plan.cfg.database
        assert plan.database_ip is not None
        child = pulumi.ResourceOptions(parent=self)
        self.address = plan.database_ip
        self.passwords = {}
        users = []
        for database, owner in facts.DATABASES.items():
            password = random.RandomPassword(f"{owner}-db-password", length=32, special=False, opts=child)
            self.passwords[owner] = password.result
            users.append(openstack.database.InstanceUserArgs(name=owner, password=password.result, databases=[database]))
        flavor = openstack.compute.get_flavor_output(name=db.flavor, opts=pulumi.InvokeOutputOptions(parent=self))
        self.instance = openstack.database.Instance(
            name,
            name=plan.prefix("postgres"),
            datastore=openstack.database.InstanceDatastoreArgs(type=facts.TROVE_DATASTORE, version=db.datastore_version),
            flavor_id=flavor.id,
            size=db.size_gb,
            networks=[openstack.database.InstanceNetworkArgs(uuid=args.network_id, fixed_ip_v4=plan.database_ip)],
            databases=[openstack.database.InstanceDatabaseArgs(name=d) for d in facts.DATABASES],
            users=users,
            opts=pulumi.ResourceOptions(parent=self, protect=plan.cfg.protect),
        )
        self.access = command.local.Command(
            f"{name}-restrict-access",
            create=restrict_access_script(plan.database_allowed_cidrs),
            interpreter=["/bin/bash", "-c"],
            environment={"NINA_DB_INSTANCE_ID": self.instance.id},
            triggers=[self.instance.id],
            opts=child,
        )
        self.register_outputs({"address": self.address, "access": self.access.stdout})
