"""Realistic stack outputs (`pulumi stack output --json --show-secrets`) for the site-kit tests
and benchmark, with a real PKI: an ECDSA P-384 CA, VPN client certificates signed by it (CN =
slug), SEC1 VPN keys and OpenSSH SuperNode keys as pulumi-tls writes them (`nina.localpki`), and
OpenVPN tls-auth static keys. Organisations that keep their own keys send a CSR and an OpenSSH
public key; their private halves are returned beside the outputs (`Built.held`), never in them.

    from outputs_fixture import build_outputs, default_tenancies, many_tenancies
    built = build_outputs(default_tenancies())
    built.outputs      # the JSON document
    built.held         # slug -> {"vpn_key_pem": ..., "supernode_key_openssh": ...}

Kept out of the `nina` package on purpose: tests import it from benchmarks/.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass, field
from typing import Any

from nina import facts, localpki
from nina import vpn as vpn_files

SERVER_CIDR = ipaddress.IPv4Network("10.110.0.0/24")


@dataclass(frozen=True)
class OrgSpec:
    slug: str
    display_name: str
    placement: str  # "onprem" | "cloud"
    gpu: bool = False
    own_keys: bool = False  # keeps its VPN and SuperNode private keys (sent a CSR and a public key)


@dataclass(frozen=True)
class TenancySpec:
    name: str
    orgs: tuple[OrgSpec, ...]
    vpn: bool = True


@dataclass
class Built:
    outputs: dict[str, Any]
    held: dict[str, dict[str, str]] = field(default_factory=dict)
    ca_key_pem: str = ""


def default_tenancies() -> list[TenancySpec]:
    """Two on-premise hospitals, one cloud lab and one hospital that keeps its own keys in tenancy
    `main`; a second tenancy `beta` with one more on-premise clinic (for cross-tenancy checks)."""
    return [
        TenancySpec("main", (
            OrgSpec("hospital-a", "Hospital A (Brisbane)", "onprem"),
            OrgSpec("hospital-b", "Hospital B & Partners", "onprem", gpu=True),
            OrgSpec("cloud-lab", "Cloud Lab", "cloud"),
            OrgSpec("hospital-own", "Hospital Own Keys", "onprem", own_keys=True),
        )),
        TenancySpec("beta", (OrgSpec("beta-clinic", "Beta Clinic", "onprem"),)),
    ]


def many_tenancies(n: int) -> list[TenancySpec]:
    """One tenancy with n organisations: every 5th in the cloud, every 7th keeps its own keys."""
    orgs = tuple(
        OrgSpec(f"org-{i:03d}", f"Organisation {i}", "cloud" if i % 5 == 4 else "onprem",
                gpu=i % 3 == 0, own_keys=i % 7 == 6)
        for i in range(n)
    )
    return [TenancySpec("main", orgs)]


def tls_auth_key(seed: str) -> str:
    """An OpenVPN static key (2048 bits) in `openvpn --genkey secret` format."""
    data = b"".join(hashlib.sha512(f"{seed}/{i}".encode()).digest() for i in range(4))
    assert len(data) == facts.TLS_AUTH_KEY_BYTES
    return vpn_files.tls_auth_key(data.hex())


def _key(seed: str) -> localpki.KeyPair:
    return localpki.generate_key("ECDSA", "P384", seed=seed.encode())


def build_outputs(tenancies: list[TenancySpec], environment: str = "uat") -> Built:
    ca_key = _key(f"{environment}/ca")
    ca_cert = localpki.self_signed_ca(ca_key.private_key_pem, {"common_name": f"NINA {environment} CA", "organization": "QCIF"},
                                      facts.CA_VALIDITY_HOURS)
    built = Built(outputs={}, ca_key_pem=ca_key.private_key_pem)
    hosts: dict[str, Any] = {"bastion": {"roles": ["bastion"], "fixed_ip": str(SERVER_CIDR.network_address + 10),
                                         "floating_ip": "203.0.113.2"}}
    tenancy_out: dict[str, Any] = {}
    sn_keys: dict[str, str] = {}
    vpn_keys: dict[str, str] = {}
    tls_keys: dict[str, str] = {}
    cloud_index = 0
    for t, ten in enumerate(tenancies):
        superlink_ip = str(SERVER_CIDR.network_address + facts.SUPERLINK_OFFSET + t)
        sl_host = f"superlink-{ten.name}"
        hosts[sl_host] = {"roles": ["superlink"], "fixed_ip": superlink_ip, "floating_ip": None}
        vpn = None
        pool = ipaddress.IPv4Network(f"192.168.{99 + t}.0/24")
        if ten.vpn:
            vpn_host = f"vpn-{ten.name}"
            vpn_ip = str(SERVER_CIDR.network_address + facts.VPN_SERVER_OFFSET + t)
            public_ip = f"203.0.113.{7 + t}"
            hosts[vpn_host] = {"roles": ["vpn"], "fixed_ip": vpn_ip, "floating_ip": public_ip}
            vpn = {"host": vpn_host, "public_ip": public_ip, "internal_ip": vpn_ip,
                   "udp_port": facts.OPENVPN_UDP_PORT, "tcp_port": facts.OPENVPN_TCP_PORT,
                   "pool_cidr": str(pool), "server_ip": str(pool.network_address + 1), "server_name": vpn_host,
                   "routes": [str(SERVER_CIDR)]}
            tls_keys[ten.name] = tls_auth_key(f"{environment}/{ten.name}/ta")
        orgs: dict[str, Any] = {}
        for p, spec in enumerate(ten.orgs):
            onprem = spec.placement == "onprem"
            sn = _key(f"{environment}/{spec.slug}/supernode")
            org: dict[str, Any] = {
                "display_name": spec.display_name, "placement": spec.placement, "partition_id": p,
                "num_partitions": len(ten.orgs), "gpu": spec.gpu,
                "supernode_public_key_openssh": sn.public_key_openssh,
                "vpn_address": None, "vpn_client_cert_pem": None,
                "keys_held_by_organisation": {"vpn": spec.own_keys and onprem, "supernode": spec.own_keys},
            }
            if spec.own_keys:
                built.held.setdefault(spec.slug, {})["supernode_key_openssh"] = sn.private_key_openssh
            else:
                sn_keys[spec.slug] = sn.private_key_openssh
            if onprem and vpn is not None:
                vk = _key(f"{environment}/{spec.slug}/vpn")
                csr = localpki.cert_request(vk.private_key_pem, {"common_name": spec.slug})
                org["vpn_client_cert_pem"] = localpki.sign_certificate(csr, ca_key.private_key_pem, ca_cert,
                                                                       facts.LEAF_VALIDITY_HOURS, facts.CLIENT_CERT_USES)
                org["vpn_address"] = str(pool.network_address + facts.VPN_CLIENT_OFFSET + p)
                if spec.own_keys:
                    built.held[spec.slug]["vpn_key_pem"] = vk.private_key_pem
                else:
                    vpn_keys[spec.slug] = vk.private_key_pem
            if not onprem:
                seg = ipaddress.IPv4Network(f"10.{111 + cloud_index // 256}.{cloud_index % 256}.0/24")
                cloud_index += 1
                hosts[f"supernode-{spec.slug}"] = {"roles": ["supernode"], "fixed_ip": str(seg.network_address + facts.SUPERNODE_OFFSET),
                                                   "floating_ip": None}
            orgs[spec.slug] = org
        tenancy_out[ten.name] = {
            "superlink": {"host": sl_host, "internal_ip": superlink_ip,
                          "fleet_address": f"{superlink_ip}:{facts.SUPERLINK_FLEET_PORT}",
                          "control_address": f"{superlink_ip}:{facts.SUPERLINK_CONTROL_PORT}",
                          "server_names": [sl_host, "localhost"]},
            "vpn": vpn,
            "organisations": orgs,
        }
    built.outputs = {
        "environment": environment,
        "ca_cert_pem": ca_cert,
        "tenancies": tenancy_out,
        "hosts": hosts,
        "bastion_ip": "203.0.113.2",
        "database": {"address": str(SERVER_CIDR.network_address + facts.DATABASE_OFFSET), "port": facts.POSTGRES_PORT,
                     "allowed_cidrs": [str(SERVER_CIDR)]},
        "supernode_private_keys": sn_keys,
        "vpn_client_private_keys": vpn_keys,
        "vpn_tls_auth_keys": tls_keys,
        "database_passwords": {"keycloak": "kc-" + hashlib.sha256(b"kc").hexdigest()[:24],
                               "grafana": "gf-" + hashlib.sha256(b"gf").hexdigest()[:24]},
        "ops_ssh_private_key": _key(f"{environment}/ops").private_key_openssh,
    }
    return built
