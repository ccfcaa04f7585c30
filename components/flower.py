"""Keys, certificates and membership delivered in place over SSH (pulumi-command).

user-data is immutable bootstrap without secrets; everything that changes during the life of
a VM (certificates, SuperNode keys, supernode.conf, SuperLink
registrations) goes through these resources, so onboarding an organisation or renewing a
certificate updates files on running hosts instead of replacing them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_command as command
import pulumi_openstack as openstack

from nina import facts, gpu, render
from nina.services import Service

# Wait for first-boot bootstrap (users, venv, installer) and refuse a host whose bootstrap failed.
_WAIT_FOR_BOOT = render.bootstrap_guard()


@dataclass(frozen=True)
class DeliveryTarget:
    """A host as its deliveries see it."""

    host: str  # its name: its deliveries are `<host>-<service>`
    connection: command.remote.ConnectionArgs  # SSH to its fixed address through the bastion
    instance: openstack.compute.Instance  # a new VM (same address, fresh disk) needs its files again
    base: pulumi.Resource | None = None  # its `<host>-base` delivery, which every other delivery follows


@dataclass(frozen=True)
class FileDeliveryArgs:
    target: DeliveryTarget
    payload: pulumi.Input[str]  # nina.render delivery payload (JSON, secret)
    after: Sequence[pulumi.Resource] = ()  # besides the host's base delivery


class FileDelivery(pulumi.ComponentResource):
    def __init__(self, name: str, args: FileDeliveryArgs, opts: pulumi.ResourceOptions | None = None):
        target = args.target
        after = [*([target.base] if target.base is not None else []), *args.after]
        opts = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(depends_on=after)) if after else opts
        super().__init__("nina:flower:FileDelivery", name, None, opts)
        create = f"{_WAIT_FOR_BOOT}\n{render.receive_command()}"
        # The host programs travel with every delivery, so changing one re-runs deliveries, not VMs.
        bundle = pulumi.Output.secret(args.payload).apply(render.delivery_bundle)
        # What re-runs the command besides its VM (steps that follow it take both as triggers).
        self.revision: pulumi.Output[str] = bundle.apply(lambda text: render.delivery_revision(create, text))
        self.command = command.remote.Command(
            f"{name}-install",
            connection=target.connection,
            create=create,
            stdin=bundle,
            # A new VM (same address, fresh disk) needs its files again.
            triggers=[target.instance.id],
            logging=command.remote.Logging.STDERR,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[target.instance]),
        )
        self.register_outputs({})


def deliver(
    service: Service,
    target: DeliveryTarget,
    payload: pulumi.Input[str],
    opts: pulumi.ResourceOptions,
    after: Sequence[pulumi.Resource] = (),
) -> FileDelivery:
    """The delivery `<host>-<service>` of a service's payload, after the host's base delivery and `after`."""
    return FileDelivery(f"{target.host}-{service.name}", FileDeliveryArgs(target, payload, after), opts)


def reboot_and_wait(
    name: str, delivery: FileDelivery, target: DeliveryTarget, wait_connection: command.remote.ConnectionArgs
) -> tuple[command.remote.Command, command.remote.Command]:
    """A GPU host's `<name>-reboot` and `<name>-ready` after its delivery `<name>` (nina.gpu):
    the reboot its driver step left pending, then, over `wait_connection` (a dial budget as long
    as a reboot), the wait for the new boot's driver, GPU and DCGM. Both re-run exactly when the
    delivery does (its VM and its revision are their triggers); the ready step reads the reboot
    step's report (its stdout) on stdin."""
    triggers = [target.instance.id, delivery.revision]
    reboot = command.remote.Command(
        f"{name}-reboot",
        connection=target.connection,
        create=f"{_WAIT_FOR_BOOT}\n{gpu.reboot_step()}",
        triggers=triggers,
        logging=command.remote.Logging.STDERR,
        opts=pulumi.ResourceOptions(parent=delivery, depends_on=[delivery.command]),
    )
    ready = command.remote.Command(
        f"{name}-ready",
        connection=wait_connection,
        create=f"{_WAIT_FOR_BOOT}\n{gpu.ready_step()}",
        stdin=reboot.stdout,
        triggers=triggers,
        logging=command.remote.Logging.STDERR,
        opts=pulumi.ResourceOptions(parent=delivery, depends_on=[reboot]),
    )
    return reboot, ready


@dataclass(frozen=True)
class SuperNodeRegistrationArgs:
    superlink: command.remote.ConnectionArgs  # SSH to the tenancy's SuperLink host
    slug: str
    public_key_openssh: pulumi.Input[str]
    after: Sequence[pulumi.Resource]  # the SuperLink's delivery (nina-membership, a running SuperLink)


class SuperNodeRegistration(pulumi.ComponentResource):
    """Registers an organisation's SuperNode key with its SuperLink (`flwr supernode register`);
    deleting the resource (organisation removed from the config) unregisters it."""

    def __init__(self, name: str, args: SuperNodeRegistrationArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("nina:flower:SuperNodeRegistration", name, None, opts)
        # No VM id in the triggers: registrations live on the state volume and survive a new
        # SuperLink VM, and a replace would unregister the node (flwr never re-admits a key).
        self.command = command.remote.Command(
            f"{name}-register",
            connection=args.superlink,
            create=f"{_WAIT_FOR_BOOT}\nsudo {facts.MEMBERSHIP_BIN} register {args.slug}",
            delete=f"sudo {facts.MEMBERSHIP_BIN} unregister {args.slug}",
            stdin=args.public_key_openssh,
            opts=pulumi.ResourceOptions(parent=self, depends_on=list(args.after)),
        )
        self.register_outputs({})
