"""Keys, certificates and membership delivered in place over SSH (pulumi-command).

user-data is immutable bootstrap without secrets; everything that changes during the life of
a VM (certificates, SuperNode keys, supernode.conf with num-partitions, SuperLink
registrations) goes through these resources, so onboarding an organisation or renewing a
certificate updates files on running hosts instead of replacing them.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_command as command

from components.access import OperatorAccess
from components.host import Host
from nina import facts, render

# Wait for first-boot bootstrap (users, venv, installer) and refuse a host whose bootstrap failed.
_WAIT_FOR_BOOT = render.bootstrap_guard()


@dataclass
class FileDeliveryArgs:
    access: OperatorAccess
    host: Host
    payload: pulumi.Input[str]  # nina.render delivery payload (JSON, secret)


class FileDelivery(pulumi.ComponentResource):
    def __init__(self, name: str, args: FileDeliveryArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("nina:flower:FileDelivery", name, None, opts)
        self.command = command.remote.Command(
            f"{name}-install",
            connection=args.access.connection(args.host.fixed_ip),
            create=f"{_WAIT_FOR_BOOT}\n{render.receive_command()}",
            # The host programs travel with every delivery, so changing one re-runs deliveries, not VMs.
            stdin=pulumi.Output.secret(args.payload).apply(render.delivery_bundle),
            # A new VM (same address, fresh disk) needs its files again.
            triggers=[args.host.instance.id],
            logging=command.remote.Logging.STDERR,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[args.host.instance]),
        )
        self.register_outputs({})


@dataclass
class SuperNodeRegistrationArgs:
    access: OperatorAccess
    superlink: Host
    slug: str
    public_key_openssh: pulumi.Input[str]
    after: list[pulumi.Resource]


class SuperNodeRegistration(pulumi.ComponentResource):
    """Registers an organisation's SuperNode key with its SuperLink (`flwr supernode register`);
    deleting the resource (organisation removed from the config) unregisters it."""

    def __init__(self, name: str, args: SuperNodeRegistrationArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("nina:flower:SuperNodeRegistration", name, None, opts)
        # No VM id in the triggers: registrations live on the state volume and survive a new
        # SuperLink VM, and a replace would unregister the node (flwr never re-admits a key).
        self.command = command.remote.Command(
            f"{name}-register",
            connection=args.access.connection(args.superlink.fixed_ip),
            create=f"{_WAIT_FOR_BOOT}\nsudo {facts.MEMBERSHIP_BIN} register {args.slug}",
            delete=f"sudo {facts.MEMBERSHIP_BIN} unregister {args.slug}",
            stdin=args.public_key_openssh,
            opts=pulumi.ResourceOptions(parent=self, depends_on=args.after),
        )
        self.register_outputs({})
