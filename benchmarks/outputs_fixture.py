"""Realistic stack outputs (`pulumi stack output --json --show-secrets`) for the site-kit tests
and benchmark, with a real PKI: an ECDSA P-384 CA, VPN client certificates signed by it (CN =
slug), SEC1 VPN keys and OpenSSH SuperNode keys as pulumi-tls writes them (`nina.localpki`), and
OpenVPN tls-crypt-v2 keys (one per on-premise organisation). Organisations that keep their own keys send a CSR and an OpenSSH
public key; their private halves are returned beside the outputs (`Built.held`), never in them.

    from outputs_fixture import build_outputs, default_tenancies, many_tenancies
    built = build_outputs(default_tenancies())
    built.outputs      # the JSON document
    built.held         # slug -> {"vpn_key_pem": ..., "supernode_key_openssh": ...}

The outputs come from a stack config through nina.config, nina.plan and nina.outputs, as the
program makes them (only the key material and public IPs are the fixture's own), so an
impossible stack cannot be built here either. Kept out of the `nina` package on purpose:
tests import it from benchmarks/.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass, field
from typing import Any

from nina import facts, localpki, outputs, pem, tlscrypt
from nina.config import load_config
from nina.plan import build_plan

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
    orgs: tuple[OrgSpec, ...]  # a VPN server exists when one of them is on premise (nina.plan)


@dataclass
class Built:
    outputs: dict[str, Any]
    held: dict[str, dict[str, str]] = field(default_factory=dict)
    ca_key_pem: str = ""


def default_tenancies() -> list[TenancySpec]:
    """Two on-premise hospitals, one cloud lab and one hospital that keeps its own keys in tenancy
    `main`; a second tenancy `beta` with one more on-premise clinic (for cross-tenancy checks)."""
    return [
        TenancySpec(
            "main",
            (
                OrgSpec("hospital-a", "Hospital A (Brisbane)", "onprem"),
                OrgSpec("hospital-b", "Hospital B & Partners", "onprem", gpu=True),
                OrgSpec("cloud-lab", "Cloud Lab", "cloud"),
                OrgSpec("hospital-own", "Hospital Own Keys", "onprem", own_keys=True),
            ),
        ),
        TenancySpec("beta", (OrgSpec("beta-clinic", "Beta Clinic", "onprem"),)),
    ]


def many_tenancies(n: int) -> list[TenancySpec]:
    """One tenancy with n organisations: every 5th in the cloud; of the on-premise ones every 3rd
    has a GPU and every 7th keeps its own keys (a stack config allows neither for a cloud one
    without more settings)."""
    orgs = []
    for i in range(n):
        cloud = i % 5 == 4
        orgs.append(
            OrgSpec(
                f"org-{i:03d}",
                f"Organisation {i}",
                "cloud" if cloud else "onprem",
                gpu=not cloud and i % 3 == 0,
                own_keys=not cloud and i % 7 == 6,
            )
        )
    return [TenancySpec("main", tuple(orgs))]


def _bytes(seed: str, size: int) -> bytes:
    """`size` bytes derived from `seed` (deterministic stand-ins for pulumi-random's RandomBytes)."""
    return b"".join(hashlib.sha512(f"{seed}/{i}".encode()).digest() for i in range(-(-size // 64)))[:size]


def _key(seed: str) -> localpki.KeyPair:
    return localpki.generate_key("ECDSA", "P384", seed=seed.encode())


def config_for(tenancies, environment, held_keys):
    """The stack config that declares `tenancies` (own-key organisations send a CSR and a public key)."""
    out = []
    cloud_index = 0
    for t, ten in enumerate(tenancies):
        orgs = []
        for i, spec in enumerate(ten.orgs):
            org = {"slug": spec.slug, "name": spec.display_name, "placement": spec.placement, "partition_id": i, "gpu": spec.gpu}
            if spec.placement == "cloud":
                org["cidr"] = f"10.{111 + cloud_index // 256}.{cloud_index % 256}.0/24"
                cloud_index += 1
            if spec.own_keys:
                sn, vk = held_keys[spec.slug]
                org["supernode_public_key"] = sn.public_key_openssh
                if spec.placement == "onprem":
                    org["vpn_csr_pem"] = localpki.cert_request(vk.private_key_pem, {"common_name": spec.slug})
            orgs.append(org)
        out.append({"name": ten.name, "organisations": orgs, **({"vpn_pool_cidr": f"192.168.{99 + t}.0/24"} if t else {})})
    return {
        "environment": environment,
        "network": {"server_cidr": str(SERVER_CIDR), "vpn_pool_cidr": "192.168.99.0/24", "admin_cidrs": ["203.0.113.0/24"]},
        "database": {"enabled": True},
        "tenancies": out,
    }


def public_ips(plan) -> dict[str, str]:
    """Documentation addresses for the public hosts: the bastion .2, VPN servers .7 on."""
    ips, vpn_index, other = {}, 0, 20
    for h in plan.hosts:
        if not h.public:
            continue
        if plan.bastion.name == h.name:
            ips[h.name] = "203.0.113.2"
        elif "vpn" in h.roles:
            ips[h.name] = f"203.0.113.{7 + vpn_index}"
            vpn_index += 1
        else:
            ips[h.name] = f"203.0.113.{other}"
            other += 1
    return ips


def ca(environment: str = "uat") -> tuple[str, str]:
    """The fixture's CA for `environment`: (key PEM, certificate PEM), the same on every call."""
    ca_key = _key(f"{environment}/ca")
    return ca_key.private_key_pem, localpki.self_signed_ca(
        ca_key.private_key_pem, {"common_name": f"NINA {environment} CA", "organization": "QCIF"}, facts.CA_VALIDITY_HOURS
    )


def signing_key(environment: str = "uat") -> localpki.KeyPair:
    """The fixture's platform signing key for `environment`, the same on every call."""
    return _key(f"{environment}/platform-signing")


def build_outputs(tenancies: list[TenancySpec], environment: str = "uat") -> Built:
    """The outputs of a stack declaring `tenancies`: its config goes through nina.config and
    nina.plan, and nina.outputs shapes the document, as components/platform.py does."""
    ca_key, ca_cert = ca(environment)
    built = Built(outputs={}, ca_key_pem=ca_key)
    specs = {o.slug: o for t in tenancies for o in t.orgs}
    keys = {slug: (_key(f"{environment}/{slug}/supernode"), _key(f"{environment}/{slug}/vpn")) for slug in specs}
    plan = build_plan(load_config(config_for(tenancies, environment, keys)))
    ips = public_ips(plan)
    signing = signing_key(environment)
    tenancy_docs: dict[str, Any] = {}
    sn_keys: dict[str, str] = {}
    vpn_keys: dict[str, str] = {}
    tc_keys: dict[str, str] = {}
    for t in plan.tenancies:
        orgs: dict[str, Any] = {}
        for m in t.members:
            sn, vk = keys[m.slug]
            own = specs[m.slug].own_keys
            if own:
                built.held.setdefault(m.slug, {})["supernode_key_openssh"] = sn.private_key_openssh
            else:
                sn_keys[m.slug] = sn.private_key_openssh
            vpn_cert = None
            if m.vpn_address is not None:
                csr = m.own_vpn_csr or localpki.cert_request(vk.private_key_pem, {"common_name": m.slug})
                vpn_cert = localpki.sign_certificate(csr, ca_key, ca_cert, facts.LEAF_VALIDITY_HOURS, facts.CLIENT_CERT_USES)
                if own:
                    built.held[m.slug]["vpn_key_pem"] = vk.private_key_pem
                else:
                    vpn_keys[m.slug] = vk.private_key_pem
            orgs[m.slug] = outputs.organisation(m, sn.public_key_openssh, vpn_cert)
        vpn_doc = None
        if t.vpn is not None:
            vpn_doc = outputs.vpn(t.vpn, ips[t.vpn.host])
            server = tlscrypt.server_key(_bytes(f"{environment}/{t.name}/tls-crypt-v2", tlscrypt.SERVER_KEY_BYTES))
            for m in t.members:
                if m.vpn_address is not None:
                    tc_keys[m.slug] = tlscrypt.client_key(
                        server, _bytes(f"{environment}/{m.slug}/tls-crypt-v2", tlscrypt.CLIENT_KEY_BYTES), m.slug
                    )
        tenancy_docs[t.name] = outputs.tenancy(t, vpn_doc, orgs)
    built.outputs = outputs.document(
        plan,
        ca_cert_pem=ca_cert,
        platform_signing_key=outputs.signing_key(signing.public_key_pem, pem.public_key_sha256(signing.public_key_pem)),
        tenancies=tenancy_docs,
        hosts={h.name: outputs.host(h, h.fixed_ip, ips.get(h.name)) for h in plan.hosts},
        bastion_ip=ips[plan.bastion.name],
        database=outputs.database(plan, plan.database_ip),
        secrets={
            "supernode_private_keys": sn_keys,
            "vpn_client_private_keys": vpn_keys,
            "vpn_tls_crypt_v2_keys": tc_keys,
            "database_passwords": {
                "keycloak": "kc-" + hashlib.sha256(b"kc").hexdigest()[:24],
                "grafana": "gf-" + hashlib.sha256(b"gf").hexdigest()[:24],
            },
            "ops_ssh_private_key": _key(f"{environment}/ops").private_key_openssh,
            "platform_signing_private_key_pem": signing.private_key_pem,
        },
    )
    return built
