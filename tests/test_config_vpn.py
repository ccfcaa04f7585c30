"""Config rules added with the OpenVPN hub: pools per tenancy, bring-your-own keys."""

from __future__ import annotations

import pytest

from nina import localpki
from nina.config import ConfigError, load_config
from nina.plan import build_plan


def cfg(**orgs_and_more):
    base = {
        "environment": "uat",
        "network": {"admin_cidrs": ["203.0.113.0/24"]},
        "organisations": [{"slug": "metro-north", "name": "Metro North", "placement": "onprem", "partition_id": 0}],
    }
    base.update(orgs_and_more)
    return base


def problems(raw) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        load_config(raw)
    return dict(info.value.problems)


def test_tenancies_with_on_premise_organisations_need_their_own_pools():
    t = [
        {"name": "a", "organisations": [{"slug": "x", "name": "X", "placement": "onprem", "partition_id": 0}]},
        {"name": "b", "organisations": [{"slug": "y", "name": "Y", "placement": "onprem", "partition_id": 0}]},
    ]
    found = problems(cfg(organisations=None, tenancies=t))
    assert "give it its own vpn_pool_cidr" in found["nina:tenancies[1].vpn_pool_cidr"]
    t[1]["vpn_pool_cidr"] = "192.168.100.0/24"
    config = load_config(cfg(organisations=None, tenancies=t))
    assert [str(config.vpn_pool(x)) for x in config.all_tenancies] == ["192.168.99.0/24", "192.168.100.0/24"]
    t[1]["vpn_pool_cidr"] = "10.100.0.0/24"  # the server segment
    assert "overlaps" in problems(cfg(organisations=None, tenancies=t))["nina:tenancies[1].vpn_pool_cidr"]


def test_cloud_only_tenancy_has_no_vpn():
    config = load_config(cfg(organisations=[{"slug": "a", "name": "A", "placement": "cloud", "partition_id": 0, "cidr": "10.101.0.0/24"}]))
    assert config.vpn_pool(config.all_tenancies[0]) is None


def test_organisation_may_bring_its_own_csr_and_supernode_key():
    key = localpki.generate_key()
    csr = localpki.cert_request(key.private_key_pem, {"common_name": "metro-north"})
    org = {
        "slug": "metro-north",
        "name": "Metro North",
        "placement": "onprem",
        "partition_id": 0,
        "vpn_csr_pem": csr,
        "supernode_public_key": key.public_key_openssh,
    }
    config = load_config(cfg(organisations=[org]))
    assert config.all_tenancies[0].organisations[0].vpn_csr_pem == csr


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("vpn_csr_pem", "not a csr", "not a PEM certificate signing request"),
        ("supernode_public_key", "ssh-ed25519 AAAA", "not an OpenSSH public key"),
    ],
)
def test_bad_brought_keys_name_the_key_and_the_fix(field, value, message):
    org = {"slug": "metro-north", "name": "Metro North", "placement": "onprem", "partition_id": 0, field: value}
    assert message in problems(cfg(organisations=[org]))[f"nina:organisations[0].{field}"]


@pytest.mark.parametrize(
    "extra,message",
    [
        ("key", "holds 2 PEM blocks (CERTIFICATE REQUEST, EC PRIVATE KEY)"),
        ("csr", "holds 2 PEM blocks (CERTIFICATE REQUEST, CERTIFICATE REQUEST)"),
        ("junk", "holds text outside its PEM block"),
    ],
)
def test_a_csr_field_holds_exactly_one_csr(extra, message):
    key = localpki.generate_key()
    csr = localpki.cert_request(key.private_key_pem, {"common_name": "metro-north"})
    value = csr + {"key": key.private_key_pem, "csr": csr, "junk": "Subject: CN=metro-north\n"}[extra]
    org = {"slug": "metro-north", "name": "Metro North", "placement": "onprem", "partition_id": 0, "vpn_csr_pem": value}
    found = problems(cfg(organisations=[org]))
    assert list(found) == ["nina:organisations[0].vpn_csr_pem"]
    assert found["nina:organisations[0].vpn_csr_pem"].startswith(message)
    assert "paste only the CSR file" in found["nina:organisations[0].vpn_csr_pem"]


def test_a_csr_is_signed_as_the_canonical_block():
    key = localpki.generate_key()
    csr = localpki.cert_request(key.private_key_pem, {"common_name": "metro-north"})
    org = {"slug": "metro-north", "name": "Metro North", "placement": "onprem", "partition_id": 0, "vpn_csr_pem": "\n" + csr.rstrip("\n")}
    (member,) = build_plan(load_config(cfg(organisations=[org]))).tenancies[0].members
    assert member.own_vpn_csr == csr


def test_csr_with_the_wrong_common_name_is_refused():
    key = localpki.generate_key()
    csr = localpki.cert_request(key.private_key_pem, {"common_name": "someone-else"})
    org = {"slug": "metro-north", "name": "Metro North", "placement": "onprem", "partition_id": 0, "vpn_csr_pem": csr}
    assert "must be the organisation slug 'metro-north'" in problems(cfg(organisations=[org]))["nina:organisations[0].vpn_csr_pem"]


def test_cloud_organisations_cannot_bring_keys():
    key = localpki.generate_key()
    org = {
        "slug": "a",
        "name": "A",
        "placement": "cloud",
        "partition_id": 0,
        "cidr": "10.101.0.0/24",
        "supernode_public_key": key.public_key_openssh,
        "vpn_csr_pem": localpki.cert_request(key.private_key_pem, {"common_name": "a"}),
    }
    found = problems(cfg(organisations=[org]))
    assert "nina makes its key" in found["nina:organisations[0].supernode_public_key"]
    assert "gets no VPN certificate" in found["nina:organisations[0].vpn_csr_pem"]
