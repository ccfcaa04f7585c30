"""SSH access: the automation key of the `ubuntu` login on every VM (the Nova key pair's; its
line is in each host's login keys from first boot, written by user-data), and SSH connections
to private hosts through the bastion with it, used only by pulumi-command to deliver files and
membership. People log in with their own keys (`nina:operators`), which every host's base
delivery writes next to this one (`nina.render.authorized_keys`)."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_command as command
import pulumi_openstack as openstack
import pulumi_tls as tls

from nina import facts


@dataclass(frozen=True)
class OperatorAccessArgs:
    key_pair_name: str  # the Nova key pair's cloud-side name


class OperatorAccess(pulumi.ComponentResource):
    private_key_openssh: pulumi.Output[str]
    public_key_openssh: pulumi.Output[str]
    key_pair_name: pulumi.Output[str]

    def __init__(self, name: str, args: OperatorAccessArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("nina:compute:OperatorAccess", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        # Nova key pairs force VM replacement when changed: this key takes no config input.
        key = tls.PrivateKey("ops-ssh-key", algorithm="ED25519", opts=child)
        keypair = openstack.compute.Keypair("ops-keypair", name=args.key_pair_name, public_key=key.public_key_openssh, opts=child)
        self.private_key_openssh = key.private_key_openssh
        self.public_key_openssh = key.public_key_openssh
        self.key_pair_name = keypair.name
        self.bastion_ip: pulumi.Output[str] | None = None
        self.register_outputs({"key_pair_name": self.key_pair_name})

    def connection(self, host_ip: str, dial_error_limit: int = 30) -> command.remote.ConnectionArgs:
        """SSH to a private host's fixed address, jumping through the bastion's floating IP.
        `dial_error_limit` is the host's (the hop from the bastion, which stays up): a GPU host's
        ready step gives it the budget of a reboot (nina.gpu.reboot_dial_error_limit)."""
        assert self.bastion_ip is not None, "set bastion_ip before connecting"
        return command.remote.ConnectionArgs(
            host=host_ip,
            user=facts.DEFAULT_LOGIN_USER,
            private_key=self.private_key_openssh,
            dial_error_limit=dial_error_limit,
            proxy=command.remote.ProxyConnectionArgs(
                host=self.bastion_ip,
                user=facts.DEFAULT_LOGIN_USER,
                private_key=self.private_key_openssh,
                dial_error_limit=30,
            ),
        )
