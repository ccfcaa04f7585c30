"""Researcher access (manual 4.1.2.8-4.1.2.17): Keycloak with its realm, and JupyterHub logging in
through it. Each is a service delivered in place (`<host>-keycloak`, `<host>-jupyterhub`): the
realm, the OIDC clients' secrets and the hub's configuration change files on running hosts, never
a VM. What goes into the files is rendered by nina.keycloak and nina.jupyterhub; the Platform binds
those renderers to the plan, so these components never see it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pulumi
import pulumi_random as random

from components.flower import DeliveryTarget, FileDelivery, deliver
from components.pki import CertificateAuthority, LeafCertificate, LeafCertificateArgs
from nina import facts, services
from nina.keycloak import KeycloakSecrets
from nina.plan import Certificate


def _secret(name: str, length: int, opts: pulumi.ResourceOptions) -> pulumi.Output[str]:
    # Letters and digits only: the values go into systemd EnvironmentFiles and JSON unquoted-safe.
    return random.RandomPassword(name, length=length, special=False, opts=opts).result


@dataclass(frozen=True, kw_only=True)
class KeycloakArgs:
    target: DeliveryTarget  # the host with role keycloak
    ca: CertificateAuthority
    certificate: Certificate  # its internal HTTPS (nina.keycloak.certificate)
    clients: Sequence[str]  # the realm's OIDC clients (keys of facts.KEYCLOAK_CLIENTS)
    db_password: pulumi.Input[str]  # the keycloak role's, which the Trove instance created
    database: pulumi.Resource  # the Trove instance: its database and role exist before the database step
    render: Callable[[KeycloakSecrets], str]  # nina.keycloak.keycloak_delivery bound to the plan


class Keycloak(pulumi.ComponentResource):
    """Keycloak's certificate, the OIDC clients' secrets, its bootstrap admin and its delivery."""

    client_secrets: dict[str, pulumi.Output[str]]
    delivery: FileDelivery

    def __init__(self, name: str, args: KeycloakArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("nina:access:Keycloak", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        unknown = set(args.clients) - set(facts.KEYCLOAK_CLIENTS)
        if unknown:
            raise ValueError(f"unknown OIDC clients {sorted(unknown)}")
        self.client_secrets = {c: _secret(f"{c}-oidc-client-secret", facts.OIDC_CLIENT_SECRET_LENGTH, child) for c in args.clients}
        admin_password = _secret("keycloak-bootstrap-admin-password", facts.SERVICE_PASSWORD_LENGTH, child)
        leaf = LeafCertificate(args.certificate.name, LeafCertificateArgs(args.certificate, args.ca), child)
        assert leaf.private_key_pem is not None
        clients = list(self.client_secrets)

        def payload(values: list) -> str:
            db_password, admin, cert_pem, key_pem, *client_values = values
            return args.render(
                KeycloakSecrets(
                    db_password=db_password,
                    bootstrap_admin_password=admin,
                    client_secrets=dict(zip(clients, client_values, strict=True)),
                    cert_pem=cert_pem,
                    key_pem=key_pem,
                )
            )

        rendered = pulumi.Output.all(
            args.db_password, admin_password, leaf.cert_pem, leaf.private_key_pem, *(self.client_secrets[c] for c in clients)
        ).apply(payload)
        self.delivery = deliver(services.keycloak.SERVICE, args.target, rendered, child, after=[args.database])
        self.register_outputs({"cert_pem": leaf.cert_pem})


@dataclass(frozen=True, kw_only=True)
class JupyterHubArgs:
    target: DeliveryTarget  # the host with role jupyterhub
    ca: CertificateAuthority
    certificate: Certificate  # its internal HTTPS (nina.jupyterhub.certificate)
    client_secret: pulumi.Input[str]  # its OIDC client's, the same value the realm holds
    # nina.jupyterhub.jupyterhub_delivery bound to the plan: (client secret, CA, certificate, key) -> payload
    render: Callable[[str, str, str, str], str]


class JupyterHub(pulumi.ComponentResource):
    """JupyterHub's certificate and its delivery (configuration, units, networks, firewall)."""

    delivery: FileDelivery

    def __init__(self, name: str, args: JupyterHubArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("nina:access:JupyterHub", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        leaf = LeafCertificate(args.certificate.name, LeafCertificateArgs(args.certificate, args.ca), child)
        assert leaf.private_key_pem is not None
        rendered = pulumi.Output.all(args.client_secret, args.ca.cert_pem, leaf.cert_pem, leaf.private_key_pem).apply(
            lambda v: args.render(v[0], v[1], v[2], v[3])
        )
        self.delivery = deliver(services.jupyterhub.SERVICE, args.target, rendered, child)
        self.register_outputs({"cert_pem": leaf.cert_pem})
