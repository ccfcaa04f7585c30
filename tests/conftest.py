"""Shared pytest fixtures. Names are prefixed per area (`cfg_` for the stack-config tests)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

CFG_REPO_ROOT = Path(__file__).resolve().parent.parent
CFG_VALID = {
    "environment": "test",
    "network": {"server_cidr": "10.100.0.0/24", "admin_cidrs": ["203.0.113.0/24"]},
    "organisations": [
        {"slug": "org-a", "name": "Organisation A", "placement": "cloud", "partition_id": 0, "cidr": "10.101.0.0/24"},
        {"slug": "org-b", "name": "Organisation B", "placement": "onprem", "partition_id": 1},
    ],
}


@pytest.fixture(scope="session")
def cfg_repo_root() -> Path:
    """The repository root (holds Pulumi.test.yaml and Pulumi.uat.yaml)."""
    return CFG_REPO_ROOT


@pytest.fixture(scope="session")
def cfg_valid():
    """A factory for a fresh, valid `nina:` namespace (keys without prefix) that tests may mutate."""
    return lambda: copy.deepcopy(CFG_VALID)


@pytest.fixture(scope="session")
def researcher_raw():
    """A factory for a valid `nina:` namespace with researcher access: two tenancies (main with
    the base config's organisations, beta with one), nginx on the gateway, Keycloak and
    JupyterHub on hosts of their own."""

    def make() -> dict:
        raw = copy.deepcopy(CFG_VALID)
        orgs = raw.pop("organisations")
        beta = {"slug": "org-c", "name": "C", "placement": "cloud", "partition_id": 0, "cidr": "10.102.0.0/24"}
        raw["tenancies"] = [{"name": "main", "organisations": orgs}, {"name": "beta", "organisations": [beta]}]
        raw["hosts"] = [
            {"name": "gateway", "roles": ["bastion", "proxy"]},
            {"name": "idp", "roles": ["keycloak"]},
            {"name": "hub", "roles": ["jupyterhub"]},
        ]
        raw["researcher_access"] = {"public_domain": "fl.example.edu.au", "acme_email": "ops@example.edu.au"}
        # Required with a keycloak host and researcher access (the release's digest; any for tests).
        raw["keycloak"] = {"sha256": "0" * 64}
        return raw

    return make


# --- rendering layer (test_render.py, test_cloudinit.py, test_scripts.py): `render_` prefix ---

RENDER_FAKE_VOLUME_ID = "0f3c2a1e-5b6d-4c7e-8f90-a1b2c3d4e5f6"


def _render_raw(stack: str) -> dict:
    import yaml

    doc = yaml.safe_load((CFG_REPO_ROOT / f"Pulumi.{stack}.yaml").read_text())
    return {k.removeprefix("nina:"): v for k, v in doc["config"].items()}


def render_raw_configs() -> dict[str, dict]:
    """Small stack configs (keys without `nina:`) covering every host role and volume kind."""
    test = _render_raw("test")
    uat = _render_raw("uat")
    all_in_one = copy.deepcopy(test)
    all_in_one["cloud"] = {"dns_domain": "myproject.cloud.edu.au"}
    all_in_one["hosts"] = [
        {"name": "gateway", "roles": ["bastion", "proxy", "keycloak", "jupyterhub", "superlink"], "flavor": "m3.large"},
        {"name": "monitor", "roles": ["monitoring"]},
    ]
    all_in_one["supernode"] = {"flavor": "m3.medium", "gpu_flavor": "reservation:abc", "data_volume_gb": 100}
    all_in_one["organisations"][1]["gpu"] = True
    multi = {
        "environment": "multi",
        "network": {"server_cidr": "10.120.0.0/24", "admin_cidrs": ["203.0.113.0/24"]},
        "tenancies": [
            {
                "name": "alpha",
                "organisations": [
                    {"slug": "a-one", "name": "A One", "placement": "cloud", "partition_id": 0, "cidr": "10.121.0.0/24"},
                    {"slug": "a-two", "name": "A Two", "placement": "onprem", "partition_id": 1},
                ],
            },
            {
                "name": "beta",
                "organisations": [
                    {"slug": "b-one", "name": "B One", "placement": "cloud", "cidr": "10.122.0.0/24", "partition_id": 0},
                ],
            },
        ],
    }
    return {"test": test, "uat": uat, "all-in-one": all_in_one, "multi-tenancy": multi}


@pytest.fixture(scope="session")
def render_plans():
    """name -> Plan for each of `render_raw_configs()` (built once per session)."""
    from nina.config import load_config
    from nina.plan import build_plan

    return {name: build_plan(load_config(raw)) for name, raw in render_raw_configs().items()}


@pytest.fixture(scope="session")
def render_volume_ids():
    """host -> {volume name: fake OpenStack volume id}, as the component would resolve them."""
    return lambda host: {v.name: RENDER_FAKE_VOLUME_ID for v in host.volumes}


# --- OpenVPN hub (test_vpn.py, test_vpn_tunnel.py): `vpn_` prefix -------------------------------


@pytest.fixture(scope="session")
def vpn_raw_uat():
    """A factory for the uat stack config (keys without `nina:`): one tenancy, two on-premise orgs."""
    return lambda: copy.deepcopy(_render_raw("uat"))


@pytest.fixture(scope="session")
def vpn_tenancy(vpn_raw_uat):
    """The uat plan's tenancy that has an OpenVPN hub (its `.vpn` is a VpnPlan)."""
    from nina.config import load_config
    from nina.plan import build_plan

    plan = build_plan(load_config(vpn_raw_uat()))
    return next(t for t in plan.tenancies if t.vpn is not None)


@pytest.fixture(scope="session")
def vpn_pki(vpn_tenancy):
    """A real local PKI for the hub (nina.localpki, ECDSA P-384, the pulumi-tls profiles):
    {"ca", "ca_key", "server_cert", "server_key", "clients": {slug: (cert, key)},
    "tls_crypt_v2_server": server key file, "tls_crypt_v2": {slug: client key file},
    "admitted": {slug: nina.vpn.Admitted} (the hub's allow-list of those clients),
    "sign": fn(cn, uses, ca=..., ca_key=...) -> (cert, key), "other_ca": (cert, key)}."""
    import secrets

    from nina import facts, localpki, tlscrypt, vpn

    def new_ca(cn: str) -> tuple[str, str]:
        key = localpki.generate_key().private_key_pem
        return localpki.self_signed_ca(key, {**facts.CA_SUBJECT, "common_name": cn}, 48, facts.CA_CERT_USES), key

    ca, ca_key = new_ca(facts.CA_SUBJECT["common_name"])

    def sign(cn: str, uses=facts.CLIENT_CERT_USES, issuer: tuple[str, str] = (ca, ca_key)) -> tuple[str, str]:
        key = localpki.generate_key().private_key_pem
        csr = localpki.cert_request(key, {"common_name": cn, "organization": facts.LEAF_ORGANIZATION})
        return localpki.sign_certificate(csr, issuer[1], issuer[0], 48, uses), key

    v = vpn_tenancy.vpn
    server_cert, server_key = sign(v.certificate.common_name, facts.SERVER_CERT_USES)
    tc_server = tlscrypt.server_key(secrets.token_bytes(tlscrypt.SERVER_KEY_BYTES))
    clients = {c.common_name: sign(c.common_name) for c in v.clients}
    tc = {slug: tlscrypt.client_key(tc_server, secrets.token_bytes(tlscrypt.CLIENT_KEY_BYTES), slug) for slug in clients}
    return {
        "ca": ca,
        "ca_key": ca_key,
        "server_cert": server_cert,
        "server_key": server_key,
        "tls_crypt_v2_server": tc_server,
        "tls_crypt_v2": tc,
        "admitted": {slug: vpn.Admitted(cert, tlscrypt.client_key_id(tc[slug])) for slug, (cert, _) in clients.items()},
        "clients": clients,
        "sign": sign,
        "other_ca": new_ca("Some other CA"),
    }


def vpn_hub_payload(pki: dict, hub, members, *, ca=None, cert=None, key=None, tc_server=None, admitted=None) -> str:
    """nina.vpn.vpn_delivery with `pki` (a `vpn_pki`), any part replaceable; the allow-list admits
    the on-premise organisations among `members` with their material in `pki`, or `admitted`."""
    from nina import vpn

    if admitted is None:
        admitted = {m.slug: pki["admitted"][m.slug] for m in members if m.vpn_address}
    return vpn.vpn_delivery(
        hub,
        members,
        ca or pki["ca"],
        cert or pki["server_cert"],
        key or pki["server_key"],
        tc_server or pki["tls_crypt_v2_server"],
        admitted,
    )


@pytest.fixture
def vpn_lab(tmp_path):
    """A factory `vpn_lab(vpn_plan) -> tests.vpnlab.VpnLab`; every lab is torn down afterwards
    (processes killed, namespaces deleted), also when the test fails. Skips when network
    namespaces, openvpn or iptables are not available."""
    import vpnlab

    reason = vpnlab.netns_unavailable_reason()
    if reason:
        pytest.skip(reason)
    labs: list[Any] = []

    def make(vpn_plan):
        lab = vpnlab.VpnLab(tmp_path / f"lab{len(labs)}", vpn_plan)
        labs.append(lab)
        return lab

    try:
        yield make
    finally:
        for lab in labs:
            lab.close()


# --- site kits (test_kit.py): `kit_` prefix -----------------------------------------------------


@pytest.fixture(scope="session")
def kit_fixture_module():
    """benchmarks/outputs_fixture.py (realistic stack outputs with a real PKI), shared with benchmarks/kits.py."""
    import sys

    bench = str(CFG_REPO_ROOT / "benchmarks")
    if bench not in sys.path:
        sys.path.insert(0, bench)
    import outputs_fixture  # benchmarks/ is put on sys.path just above

    return outputs_fixture


@pytest.fixture(scope="session")
def kit_built(kit_fixture_module):
    """Outputs of a stack with tenancy `main` (hospital-a, hospital-b on premise, cloud-lab in the
    cloud, hospital-own on premise keeping its own keys) and tenancy `beta` (beta-clinic); `.held`
    has hospital-own's private keys. Built once: do not mutate (use `kit_outputs`)."""
    return kit_fixture_module.build_outputs(kit_fixture_module.default_tenancies())


@pytest.fixture
def kit_outputs(kit_built):
    """A fresh deep copy of `kit_built.outputs` that a test may mutate."""
    return copy.deepcopy(kit_built.outputs)


@pytest.fixture(scope="session")
def kit_archives(kit_built):
    """slug -> the .tar.gz bytes of its site kit, for every organisation of `kit_built`."""
    from nina import kit

    parsed = kit.parse_outputs(kit_built.outputs)
    return {slug: kit.build_kit(parsed, slug) for slug in parsed.organisations}


# --- offline rehearsal (test_rehearse.py): `reh_` prefix ------------------------------------------


@pytest.fixture(scope="session")
def reh_uat_plan():
    """The uat stack's plan (two on-premise organisations in one tenancy), from Pulumi.uat.yaml."""
    from nina.cli import check_stack
    from nina.plan import build_plan

    return build_plan(check_stack(CFG_REPO_ROOT / "Pulumi.uat.yaml"))


@pytest.fixture
def reh_rehearsal(reh_uat_plan, tmp_path):
    """A factory `reh_rehearsal(plan=None, **kwargs) -> nina.rehearse.Rehearsal` (prepared: PKI, kits,
    SuperLink files installed) for the uat plan (or `plan`); every rehearsal is closed afterwards (all its processes
    stopped), also when the test fails."""
    from nina.rehearse import Rehearsal

    made: list[Any] = []

    def make(plan=None, log=lambda line: None, **kwargs):
        r = Rehearsal(plan or reh_uat_plan, tmp_path / f"reh{len(made)}", log=log, **kwargs)
        made.append(r)
        r.prepare()
        return r

    try:
        yield make
    finally:
        for r in made:
            r.close()
