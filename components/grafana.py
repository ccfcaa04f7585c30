"""Grafana on the monitoring host (issue 12 item 5): its certificate, its secrets and its delivery
(`<host>-grafana`, after the Trove instance that made its database and role). What goes into the
files is rendered by nina.grafana; the Platform binds that renderer to the plan (and the
dashboards), so this component never sees it. A dashboard change changes only this delivery's
payload: no VM, and nothing restarts (Grafana rereads its dashboards' directory)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pulumi

from components.flower import DeliveryTarget, FileDelivery, deliver
from components.pki import CertificateAuthority, LeafCertificate, LeafCertificateArgs
from components.researcher import _secret
from nina import facts, services
from nina.grafana import GrafanaSecrets
from nina.plan import Certificate


@dataclass(frozen=True, kw_only=True)
class GrafanaArgs:
    target: DeliveryTarget  # the host with role grafana (and monitoring)
    ca: CertificateAuthority
    certificate: Certificate  # its HTTPS (nina.grafana.certificate)
    db_password: pulumi.Input[str]  # the grafana role's, which the Trove instance created
    database: pulumi.Resource  # the Trove instance: its database and role exist before the database step
    client_secret: pulumi.Input[str] | None  # its OIDC client's (the realm's value) when nginx serves it
    render: Callable[[GrafanaSecrets], str]  # nina.grafana.grafana_delivery bound to the plan and dashboards


class Grafana(pulumi.ComponentResource):
    """Grafana's certificate, its admin password and secret key (pulumi-random), and its delivery."""

    delivery: FileDelivery

    def __init__(self, name: str, args: GrafanaArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("nina:monitoring:Grafana", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        admin_password = _secret("grafana-admin-password", facts.SERVICE_PASSWORD_LENGTH, child)
        secret_key = _secret("grafana-secret-key", facts.OIDC_CLIENT_SECRET_LENGTH, child)
        leaf = LeafCertificate(args.certificate.name, LeafCertificateArgs(args.certificate, args.ca), child)
        assert leaf.private_key_pem is not None
        has_client = args.client_secret is not None

        def payload(values: list) -> str:
            db_password, admin, key, ca_pem, cert_pem, key_pem, client = values
            return args.render(
                GrafanaSecrets(
                    db_password=db_password,
                    admin_password=admin,
                    secret_key=key,
                    client_secret=client if has_client else None,
                    ca_pem=ca_pem,
                    cert_pem=cert_pem,
                    key_pem=key_pem,
                )
            )

        rendered = pulumi.Output.all(
            args.db_password, admin_password, secret_key, args.ca.cert_pem, leaf.cert_pem, leaf.private_key_pem, args.client_secret or ""
        ).apply(payload)
        self.delivery = deliver(services.grafana.SERVICE, args.target, pulumi.Output.secret(rendered), child, after=[args.database])
        self.register_outputs({"cert_pem": leaf.cert_pem})
