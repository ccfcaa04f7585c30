"""The whole Nectar side of a stack, wired from the plan (the only place the parts meet).

The Platform only wires: it hands each component the part of the plan it uses, and the
resources (ids, connections, deliveries) other components made, in dependency order.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import pulumi

from cloudinit.userdata import user_data
from components.access import OperatorAccess, OperatorAccessArgs
from components.database import Database, DatabaseArgs
from components.flower import DeliveryTarget, deliver, reboot_and_wait
from components.grafana import Grafana, GrafanaArgs
from components.host import Host, HostArgs
from components.network import Network, NetworkArgs
from components.pki import CertificateAuthority, CertificateAuthorityArgs, SigningKey, SigningKeyArgs
from components.researcher import JupyterHub, JupyterHubArgs, Keycloak, KeycloakArgs
from components.security import SecurityGroups, SecurityGroupsArgs
from components.tenancy import Tenancy, TenancyArgs
from nina import config, dashboards, facts, gpu, grafana, jupyterhub, keycloak, monitoring, outputs, proxy, render, services
from nina.plan import Host as HostPlan
from nina.plan import Plan


@dataclass
class PlatformArgs:
    plan: Plan
    # nina:monitoring_smtp_password (a Pulumi secret), when nina:monitoring.smtp.auth_username is set
    smtp_password: pulumi.Output[str] | None = None


class Platform(pulumi.ComponentResource):
    outputs: dict[str, Any]

    def __init__(self, name: str, args: PlatformArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("nina:platform:Platform", name, None, opts)
        plan, cfg = args.plan, args.plan.cfg
        child = pulumi.ResourceOptions(parent=self)

        network = Network(
            "network",
            NetworkArgs(
                name_prefix=plan.name_prefix,
                external_network=cfg.cloud.external_network,
                availability_zone=cfg.cloud.availability_zone,
                segments=plan.segments,
                dns_nameservers=[str(ip) for ip in cfg.cloud.dns_nameservers],
                routes={cidr: h.fixed_ip for h in plan.hosts for cidr in h.routed_cidrs},
            ),
            child,
        )
        groups = SecurityGroups(
            "security",
            SecurityGroupsArgs(name_prefix=plan.name_prefix, environment=cfg.environment, zones=plan.security_groups, rules=plan.rules),
            child,
        )
        ca = CertificateAuthority("ca", CertificateAuthorityArgs(protect=cfg.protect), child)
        signing = SigningKey("platform-signing", SigningKeyArgs(protect=cfg.protect), child)
        access = OperatorAccess("access", OperatorAccessArgs(key_pair_name=plan.prefix("ops")), child)

        hosts: dict[str, Host] = {}
        for h in plan.hosts:
            hosts[h.name] = Host(
                h.name,
                _host_args(
                    plan,
                    h,
                    network_id=network.network_ids[h.segment],
                    subnet_id=network.subnet_ids[h.segment],
                    security_group_ids=[groups.ids[z] for z in h.security_groups],
                    key_pair=access.key_pair_name,
                    automation_public_key=access.public_key_openssh,
                ),
                child,
            )
        access.bastion_ip = hosts[plan.bastion.name].floating_ip
        # Every host's `<host>-base` delivery (host programs, journald/logrotate/node exporter
        # settings, the login user's keys: the automation key and the operators'); each
        # service's own delivery `<host>-<service>` runs after it.
        operators = config.operator_keys(cfg)
        base_payload = access.public_key_openssh.apply(lambda pub: render.base_delivery(pub, operators))
        targets: dict[str, DeliveryTarget] = {}
        for host_name, host in hosts.items():
            target = DeliveryTarget(host_name, access.connection(host.fixed_ip), host.instance)
            targets[host_name] = dataclasses.replace(target, base=deliver(services.BASE, target, base_payload, child))

        # The reverse proxy (`<proxy host>-proxy`): only with nina:researcher_access and a host
        # with role proxy. Its sites are plan data, so a change to them re-runs this delivery only.
        proxy_host = proxy.proxy_host(plan)
        if cfg.researcher_access is not None and proxy_host is not None and proxy.sites(plan):
            proxy_payload = ca.cert_pem.apply(lambda ca_pem: proxy.proxy_delivery(plan, ca_pem))
            deliver(services.proxy.SERVICE, targets[proxy_host], proxy_payload, child)

        tenancies = {
            t.name: Tenancy(
                t.name,
                TenancyArgs(
                    tenancy=t,
                    ca=ca,
                    superlink=targets[t.superlink_host],
                    vpn=targets[t.vpn.host] if t.vpn is not None else None,
                    vpn_public_ip=hosts[t.vpn.host].floating_ip if t.vpn is not None else None,
                    supernodes={h.org: targets[h.name] for h in plan.hosts if h.org is not None and h.tenancy == t.name},
                    formerly_under=self,
                ),
                child,
            )
            for t in plan.tenancies
        }

        # GPU SuperNodes (`<host>-gpu`, organisations with gpu: true): the NVIDIA driver of
        # nina:gpu.driver_branch, DCGM and its exporter on the host's fixed address, in place (a
        # new branch replaces no VM). After the tenancy's deliveries: its step may leave the
        # host's one reboot for the branch pending, which `<host>-gpu-reboot` carries out and
        # `<host>-gpu-ready` waits for (a dial budget of facts.GPU_REBOOT_WAIT_SECONDS).
        for h in plan.hosts:
            if h.gpu and h.tenancy is not None:
                gpu_delivery = deliver(
                    services.gpu.SERVICE,
                    targets[h.name],
                    gpu.gpu_delivery(cfg.gpu.driver_branch, h.fixed_ip, cfg.gpu.dcgm_version),
                    child,
                    after=[tenancies[h.tenancy]],
                )
                reboot_and_wait(
                    f"{h.name}-{services.gpu.SERVICE.name}",
                    gpu_delivery,
                    targets[h.name],
                    access.connection(h.fixed_ip, dial_error_limit=gpu.reboot_dial_error_limit()),
                )

        database_outputs: dict[str, Any] | None = None
        db: Database | None = None
        database_passwords: dict[str, pulumi.Output[str]] = {}
        if cfg.database.enabled:
            assert plan.database_ip is not None
            db = Database(
                "postgres",
                DatabaseArgs(
                    instance_name=plan.prefix("postgres"),
                    flavor=cfg.database.flavor,
                    datastore_version=cfg.database.datastore_version,
                    size_gb=cfg.database.size_gb,
                    network_id=network.network_ids["server"],
                    fixed_ip=plan.database_ip,
                    allowed_cidrs=plan.database_allowed_cidrs,
                    protect=cfg.protect,
                ),
                child,
            )
            database_passwords = db.passwords
            database_outputs = outputs.database(plan, db.address)

        # Monitoring (`<monitoring host>-monitoring`): Prometheus's targets come from the plan, so
        # adding an organisation changes its tenancy's target file in place (no restart, no VM).
        monitor = monitoring.monitoring_host(plan)
        if monitor is not None:
            if args.smtp_password is None:
                monitoring_payload: pulumi.Input[str] = monitoring.monitoring_delivery(plan)
            else:
                monitoring_payload = args.smtp_password.apply(lambda pw: monitoring.monitoring_delivery(plan, pw))  # stays secret
            deliver(services.monitoring.SERVICE, targets[monitor.name], monitoring_payload, child)

        # Researcher access (nina:researcher_access): Keycloak with its realm, JupyterHub logging in
        # through it. Both are deliveries: the realm, the clients' secrets and the hub's settings
        # change files on running hosts, never a VM.
        served = {site.service for site in proxy.sites(plan)}
        idp: Keycloak | None = None
        if cfg.researcher_access is not None and "keycloak" in served:
            assert db is not None, "nina.config refuses Keycloak without the managed Postgres"
            assert plan.database_ip is not None
            db_host, tenancy_names = plan.database_ip, [t.name for t in plan.tenancies]
            idp = Keycloak(
                "keycloak",
                KeycloakArgs(
                    target=targets[keycloak.keycloak_host(plan).name],
                    ca=ca,
                    certificate=keycloak.certificate(plan),
                    clients=keycloak.client_ids(plan),
                    db_password=db.passwords[facts.SERVICE_USERS["keycloak"]],
                    database=db.instance,
                    render=lambda secrets: keycloak.keycloak_delivery(cfg, tenancy_names, db_host, secrets),
                ),
                child,
            )
            if "jupyterhub" in served:
                JupyterHub(
                    "jupyterhub",
                    JupyterHubArgs(
                        target=targets[jupyterhub.jupyterhub_host(plan).name],
                        ca=ca,
                        certificate=jupyterhub.certificate(plan),
                        client_secret=idp.client_secrets[facts.JUPYTERHUB_CLIENT_ID],
                        render=lambda secret, ca_pem, cert, key: jupyterhub.jupyterhub_delivery(plan, secret, ca_pem, cert, key),
                    ),
                    child,
                )

        # Grafana (`<monitoring host>-grafana`, a host with role grafana): after the Trove instance;
        # it logs in through Keycloak when nginx serves it. Dashboards are a parameter of the
        # delivery (nina.dashboards renders them): a dashboard change re-runs this delivery only.
        graf = grafana.grafana_host(plan)
        if graf is not None:
            assert db is not None and plan.database_ip is not None, "nina.config refuses Grafana without the managed Postgres"
            grafana_db_host = plan.database_ip
            client_secret = idp.client_secrets["grafana"] if idp is not None and grafana.public(plan) else None
            boards = dashboards.dashboard_files(plan)
            Grafana(
                "grafana",
                GrafanaArgs(
                    target=targets[graf.name],
                    ca=ca,
                    certificate=grafana.certificate(plan),
                    db_password=db.passwords[facts.SERVICE_USERS["grafana"]],
                    database=db.instance,
                    client_secret=client_secret,
                    render=lambda secrets: grafana.grafana_delivery(plan, grafana_db_host, secrets, dashboards=boards),
                ),
                child,
            )

        # Secret outputs, one mapping each so the public outputs stay readable.
        supernode_private_keys = {slug: key for t in tenancies.values() for slug, key in t.supernode_private_keys.items()}
        vpn_client_private_keys = {slug: key for t in tenancies.values() for slug, key in t.vpn_client_private_keys.items()}
        vpn_tls_crypt_v2_keys = {slug: key for t in tenancies.values() for slug, key in t.vpn_tls_crypt_v2_keys.items()}
        self.outputs = outputs.document(
            plan,
            ca_cert_pem=ca.cert_pem,
            platform_signing_key=outputs.signing_key(signing.public_key_pem, signing.sha256),
            tenancies={name: t.document for name, t in tenancies.items()},
            hosts={name: outputs.host(plan.host_by_name[name], h.fixed_ip, h.floating_ip) for name, h in hosts.items()},
            bastion_ip=access.bastion_ip,
            database=database_outputs,
            secrets={
                "supernode_private_keys": pulumi.Output.secret(supernode_private_keys),
                "vpn_client_private_keys": pulumi.Output.secret(vpn_client_private_keys),
                "vpn_tls_crypt_v2_keys": pulumi.Output.secret(vpn_tls_crypt_v2_keys),
                "database_passwords": pulumi.Output.secret(database_passwords),
                "ops_ssh_private_key": pulumi.Output.secret(access.private_key_openssh),
                "platform_signing_private_key_pem": pulumi.Output.secret(signing.private_key_pem),
            },
        )
        self.register_outputs(self.outputs)


def _host_args(
    plan: Plan,
    h: HostPlan,
    *,
    network_id: pulumi.Input[str],
    subnet_id: pulumi.Input[str],
    security_group_ids: list[pulumi.Input[str]],
    key_pair: pulumi.Input[str],
    automation_public_key: pulumi.Input[str],
) -> HostArgs:
    """A planned host's VM: its cloud settings from the plan, its ids from the network and groups."""
    cloud = plan.cfg.cloud
    return HostArgs(
        cloud_name=plan.prefix(h.name),
        flavor=h.flavor,
        image=cloud.image,
        availability_zone=cloud.availability_zone,
        key_pair=key_pair,
        automation_public_key=automation_public_key,
        network_id=network_id,
        subnet_id=subnet_id,
        security_group_ids=security_group_ids,
        fixed_ip=h.fixed_ip,
        # Pure rendering; the Host supplies its volumes' ids and the automation key.
        user_data=lambda ids, key: user_data(plan, h, ids, key),
        metadata={"nina-environment": plan.cfg.environment, "nina-roles": ",".join(h.roles)},
        volumes=h.volumes,
        protect_volumes=plan.cfg.protect,
        routed_cidrs=h.routed_cidrs,
        floating_ip_pool=cloud.external_network if h.public else None,
    )
