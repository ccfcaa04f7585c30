"""The stack outputs document: the contract between the program and the site-kit exporter.

One definition of its shape, used by components/platform.py (with Pulumi Outputs as values)
and by nina.rehearse (with plain strings): these functions only place values, they never
look inside them, so either kind works. nina.kit.parse_outputs is the reader.

Top-level keys (`pulumi stack output --json --show-secrets`):

    environment, ca_cert_pem, tenancies, hosts, bastion_ip, database        (public)
    supernode_private_keys, vpn_client_private_keys, vpn_tls_auth_keys,
    database_passwords, ops_ssh_private_key                                   (secret)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nina import facts
from nina.plan import Host, Member, Plan, TenancyPlan, VpnPlan

# The outputs the program marks secret (one mapping each, so the public ones stay readable).
SECRET_KEYS = ("supernode_private_keys", "vpn_client_private_keys", "vpn_tls_auth_keys", "database_passwords", "ops_ssh_private_key")


def superlink(t: TenancyPlan) -> dict[str, Any]:
    return {
        "host": t.superlink_host,
        "internal_ip": t.superlink_ip,
        "fleet_address": t.fleet_address,
        "control_address": t.control_address,
        "server_names": list(t.certificate.dns_names),
    }


def vpn(v: VpnPlan, public_ip: Any) -> dict[str, Any]:
    return {
        "host": v.host,
        "public_ip": public_ip,
        "internal_ip": v.internal_ip,
        "udp_port": facts.OPENVPN_UDP_PORT,
        "tcp_port": facts.OPENVPN_TCP_PORT,
        "pool_cidr": str(v.pool),
        "server_ip": v.server_ip,
        "server_name": v.certificate.common_name,
        "routes": [str(r) for r in v.routes],
    }


def organisation(m: Member, public_key_openssh: Any, vpn_client_cert_pem: Any, *, stand_in_keys: bool = False) -> dict[str, Any]:
    """`stand_in_keys`: the caller made every private key itself (the rehearsal), so none is
    held by the organisation whatever its config says."""
    return {
        "display_name": m.display_name,
        "placement": m.placement,
        "partition_id": m.partition_id,
        "num_partitions": m.num_partitions,
        "gpu": m.gpu,
        "supernode_public_key_openssh": public_key_openssh,
        "vpn_address": m.vpn_address,
        "vpn_client_cert_pem": vpn_client_cert_pem,
        # Which private keys the organisation keeps at home (sent a CSR / a public key instead).
        "keys_held_by_organisation": {
            "vpn": m.own_vpn_csr is not None and not stand_in_keys,
            "supernode": m.own_supernode_public_key is not None and not stand_in_keys,
        },
    }


def tenancy(t: TenancyPlan, vpn_doc: dict[str, Any] | None, organisations: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    return {"superlink": superlink(t), "vpn": vpn_doc, "organisations": dict(organisations)}


def host(h: Host, fixed_ip: Any, floating_ip: Any) -> dict[str, Any]:
    return {"roles": list(h.roles), "fixed_ip": fixed_ip, "floating_ip": floating_ip}


def database(plan: Plan, address: Any) -> dict[str, Any]:
    return {"address": address, "port": facts.POSTGRES_PORT, "allowed_cidrs": list(plan.database_allowed_cidrs)}


def document(
    plan: Plan,
    *,
    ca_cert_pem: Any,
    tenancies: Mapping[str, Any],
    hosts: Mapping[str, Any],
    bastion_ip: Any,
    database: Any,
    secrets: Mapping[str, Any],
) -> dict[str, Any]:
    """The whole document; `secrets` holds exactly SECRET_KEYS (wrapped as secrets by the caller)."""
    if set(secrets) != set(SECRET_KEYS):
        raise ValueError(f"secret outputs must be exactly {SECRET_KEYS}, got {sorted(secrets)}")
    return {
        "environment": plan.cfg.environment,
        "ca_cert_pem": ca_cert_pem,
        "tenancies": dict(tenancies),
        "hosts": dict(hosts),
        "bastion_ip": bastion_ip,
        "database": database,
        **{key: secrets[key] for key in SECRET_KEYS},
    }
