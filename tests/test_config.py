"""The stack config (`nina.config`): one test per validation rule, defaults, the repo's stacks,
and a property test that no malformed input escapes as anything but a ConfigError."""

from __future__ import annotations

import contextlib
import copy
import io
import re
import string
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

import pydantic
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nina import facts
from nina.cli import main
from nina.config import MAX_SHARED_HOSTS, MAX_TENANCIES, ConfigError, StackConfig, load_config
from nina.plan import build_plan

# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------


def org(slug: str, placement: str = "onprem", **kw: Any) -> dict[str, Any]:
    return {"slug": slug, "name": slug.title(), "placement": placement, **kw}


def cloud_org(slug: str, cidr: str, **kw: Any) -> dict[str, Any]:
    return org(slug, "cloud", cidr=cidr, **kw)


def numbered(orgs: Any) -> Any:
    """`orgs` with a partition id from list position for each organisation that states none
    (every organisation must state one; the partition-id tests build their lists by hand)."""
    if not isinstance(orgs, list):
        return orgs
    return [{"partition_id": i, **o} if isinstance(o, dict) else o for i, o in enumerate(orgs)]


def base(**overrides: Any) -> dict[str, Any]:
    """A small valid config (shorthand form); `None` values remove a key. Organisations given
    without a partition id get one from their position (see `numbered`)."""
    raw: dict[str, Any] = {
        "environment": "test",
        "network": {"admin_cidrs": ["203.0.113.0/24"]},
        "organisations": [cloud_org("org-a", "10.101.0.0/24"), org("org-b")],
    }
    raw.update(overrides)
    raw["organisations"] = numbered(raw["organisations"])
    if isinstance(raw.get("tenancies"), list):
        raw["tenancies"] = [
            {**t, "organisations": numbered(t["organisations"])} if isinstance(t, dict) and "organisations" in t else t
            for t in raw["tenancies"]
        ]
    return {k: v for k, v in raw.items() if v is not None}


def two_tenancies(**overrides: Any) -> dict[str, Any]:
    return base(
        **{
            "organisations": None,
            "tenancies": [
                {"name": "alpha", "organisations": [cloud_org("a-one", "10.101.0.0/24"), org("a-two")]},
                {"name": "beta", "vpn_pool_cidr": "192.168.100.0/24", "organisations": [org("b-one"), cloud_org("b-two", "10.102.0.0/24")]},
            ],
            **overrides,
        }
    )


def problems(raw: Any) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        load_config(raw)
    err = info.value
    assert err.problems, "a ConfigError always names at least one problem"
    text = str(err)
    for key, msg in err.problems:
        assert key.startswith("nina:"), key
        assert f"  {key}: {msg}" in text  # one problem per line, key first
    return err.problems


def problem(raw: Any, key: str, *words: str) -> str:
    """The message for exactly `key`; asserts it mentions every word (the fix)."""
    found = problems(raw)
    msgs = [m for k, m in found if k == key]
    assert msgs, f"no problem at {key}; got {found}"
    msg = msgs[0]
    for word in words:
        assert word.lower() in msg.lower(), f"{word!r} not in {msg!r}"
    return msg


def ok(raw: Any) -> StackConfig:
    return load_config(raw)


# ---------------------------------------------------------------------------------------
# defaults and forms
# ---------------------------------------------------------------------------------------


def test_defaults():
    cfg = ok(base())
    assert cfg.cloud.availability_zone == "QRIScloud" == facts.DEFAULT_AVAILABILITY_ZONE
    assert cfg.cloud.external_network == "QRIScloud" == facts.DEFAULT_EXTERNAL_NETWORK
    assert cfg.cloud.image == "NeCTAR Ubuntu 24.04 LTS (Noble) amd64"
    assert cfg.cloud.dns_nameservers == [] and cfg.cloud.dns_domain is None
    assert cfg.network.server_cidr == IPv4Network("10.100.0.0/24")
    assert cfg.network.vpn_pool_cidr == IPv4Network("192.168.99.0/24")
    assert cfg.network.allow_ssh_from_anywhere is False
    assert [(h.name, h.roles, h.flavor) for h in cfg.hosts] == [("gateway", ["bastion"], "m3.small")]
    assert cfg.superlink.flavor == "m3.medium" and cfg.superlink.state_volume_gb == 20
    assert cfg.supernode.flavor == "m3.medium" and cfg.supernode.gpu_flavor is None
    assert cfg.supernode.data_volume_gb == 0
    assert cfg.database.enabled and cfg.database.flavor == "db3.small"
    assert cfg.flower.version == facts.FLWR_VERSION
    assert cfg.protect is True
    for flavor in (cfg.superlink.flavor, cfg.supernode.flavor, *(h.flavor for h in cfg.hosts)):
        assert flavor.startswith("m3.")


def test_shorthand_gives_one_tenancy_main():
    cfg = ok(base())
    assert cfg.tenancies is None
    [ten] = cfg.all_tenancies
    assert ten.name == "main"
    assert [o.slug for o in ten.organisations] == ["org-a", "org-b"]


def test_tenancies_form():
    cfg = ok(two_tenancies())
    assert [t.name for t in cfg.all_tenancies] == ["alpha", "beta"]


def test_config_is_frozen():
    cfg = ok(base())
    with pytest.raises(pydantic.ValidationError):
        cfg.environment = "other"


def _stack_namespace(path: Path) -> dict[str, Any]:
    doc = yaml.safe_load(path.read_text())
    return {k.removeprefix("nina:"): v for k, v in doc["config"].items() if k.startswith("nina:")}


@pytest.mark.parametrize("stack", ["test", "uat"])
def test_repo_stack_files_load(cfg_repo_root, stack):
    cfg = ok(_stack_namespace(cfg_repo_root / f"Pulumi.{stack}.yaml"))
    assert cfg.environment == stack
    [ten] = cfg.all_tenancies
    # Every organisation states its id (written down as list order gave them before ids were required).
    assert [o.partition_id for o in ten.organisations] == list(range(len(ten.organisations)))


def test_conftest_valid_config_loads(cfg_valid):
    ok(cfg_valid())


# ---------------------------------------------------------------------------------------
# shape: unknown keys, types, required keys
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        (base(enviroment="test"), "nina:enviroment"),
        (base(network={"admin_cidrs": ["203.0.113.0/24"], "sever_cidr": "10.1.0.0/24"}), "nina:network.sever_cidr"),
        (base(cloud={"availabilty_zone": "QRIScloud"}), "nina:cloud.availabilty_zone"),
        (base(hosts=[{"name": "gw", "roles": ["bastion"], "flavour": "m3.small"}]), "nina:hosts[0].flavour"),
        (base(organisations=[org("a"), org("b", partition=1)]), "nina:organisations[1].partition"),
        (base(superlink={"state_volume": 10}), "nina:superlink.state_volume"),
        (base(supernode={"gpu": "x"}), "nina:supernode.gpu"),
        (base(database={"enable": False}), "nina:database.enable"),
        (base(flower={"versions": "1.25.0"}), "nina:flower.versions"),
    ],
)
def test_unknown_keys_are_errors(raw, key):
    problem(raw, key, "unknown key", "spelling")


def test_unknown_keys_in_tenancies():
    raw = two_tenancies()
    raw["tenancies"][1]["organisation"] = []
    raw["tenancies"][0]["organisations"][1]["cidrs"] = "10.9.0.0/24"
    found = dict(problems(raw))
    assert "unknown key" in found["nina:tenancies[1].organisation"]
    assert "unknown key" in found["nina:tenancies[0].organisations[1].cidrs"]


@pytest.mark.parametrize(
    ("raw", "key", "words"),
    [
        ({}, "nina:environment", ("required", "add")),
        (base(network=None), "nina:network", ("required",)),
        (base(network={}), "nina:network.admin_cidrs", ("required",)),
        (base(network={"admin_cidrs": []}), "nina:network.admin_cidrs", ("empty",)),
        (base(network={"admin_cidrs": "203.0.113.0/24"}), "nina:network.admin_cidrs", ("list",)),
        (base(network={"admin_cidrs": ["203.0.113.7/24"]}), "nina:network.admin_cidrs[0]", ("no host bits", "e.g.")),
        (base(network={"admin_cidrs": ["not-a-cidr"]}), "nina:network.admin_cidrs[0]", ("cidr",)),
        (
            base(network={"admin_cidrs": ["203.0.113.0/24"], "allow_ssh_from_anywhere": "maybe"}),
            "nina:network.allow_ssh_from_anywhere",
            ("true or false",),
        ),
        (base(network=["10.0.0.0/8"]), "nina:network", ("mapping",)),
        (base(organisations=[org("a", placement="moon")]), "nina:organisations[0].placement", ("'moon'", "cloud", "onprem")),
        (base(organisations=[org("a", partition_id=-1)]), "nina:organisations[0].partition_id", ("-1", "greater than or equal to 0")),
        (base(organisations=[org("a", kit_generation=0)]), "nina:organisations[0].kit_generation", ("greater than or equal to 1",)),
        (
            base(researcher_access={"public_domain": "fl", "acme_email": "ops@example.edu.au"}),
            "nina:researcher_access.public_domain",
            ("not a DNS domain",),
        ),
        (
            base(researcher_access={"public_domain": "fl.example.edu.au", "acme_email": "ops"}),
            "nina:researcher_access.acme_email",
            ("not an e-mail address",),
        ),
        (base(researcher_access={"public_domain": "fl.example.edu.au"}), "nina:researcher_access.acme_email", ("required",)),
        (
            base(researcher_access={"public_domain": "fl.example.edu.au", "acme_email": "ops@example.edu.au"}),
            "nina:researcher_access",
            ("no host in nina:hosts has the 'proxy' role",),
        ),
        (base(organisations=[org("a", kit_generation="2")]), "nina:organisations[0].kit_generation", ("whole number",)),
        (base(organisations=[org("a", kit_generation=True)]), "nina:organisations[0].kit_generation", ("whole number",)),
        # `true` is no partition (YAML's true would otherwise pass as 1).
        (base(organisations=[org("a", partition_id=True)]), "nina:organisations[0].partition_id", ("whole number",)),
        (base(organisations=[org("a", partition_id="first")]), "nina:organisations[0].partition_id", ("whole number",)),
        (base(organisations=[org("a", name="")]), "nina:organisations[0].name", ("empty",)),
        (base(organisations=[org("a", name="x" * 121)]), "nina:organisations[0].name", ("at most 120",)),
        (base(organisations=[{"slug": "a", "placement": "onprem"}]), "nina:organisations[0].name", ("required",)),
        (base(organisations=["org-a"]), "nina:organisations[0]", ("mapping",)),
        (base(hosts=[{"name": "gw", "roles": ["bastion", "dns"]}]), "nina:hosts[0].roles[1]", ("'dns'", "bastion")),
        (base(hosts=[{"name": "gw", "roles": []}]), "nina:hosts[0].roles", ("empty",)),
        (base(superlink={"state_volume_gb": 0}), "nina:superlink.state_volume_gb", ("greater than or equal to 1",)),
        (base(supernode={"data_volume_gb": 10**6}), "nina:supernode.data_volume_gb", ("less than or equal to 10000",)),
        (base(jupyterhub={"volume_gb": 5}), "nina:jupyterhub.volume_gb", ("greater than or equal to 20",)),
        (base(jupyterhub={"volume_gb": "big"}), "nina:jupyterhub.volume_gb", ("whole number",)),
        (base(jupyterhub={"volume": 50}), "nina:jupyterhub.volume", ("unknown key",)),
        (base(database={"size_gb": 1.5}), "nina:database.size_gb", ("whole number",)),
        (base(cloud={"dns_nameservers": ["8.8.8"]}), "nina:cloud.dns_nameservers[0]", ("ipv4 address",)),
        (base(protect="no way"), "nina:protect", ("true or false",)),
        (base(environment=7), "nina:environment", ("string",)),
    ],
)
def test_shape_errors(raw, key, words):
    problem(raw, key, *words)


@pytest.mark.parametrize("key", ["flavor", "gpu_flavor"])
def test_empty_flavor_refused(key):
    # Added rule: an empty flavor/image would only fail at `pulumi up` time.
    problem(base(supernode={key: ""}), f"nina:supernode.{key}", "empty", "default")


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        (base(cloud={"image": ""}), "nina:cloud.image"),
        (base(cloud={"availability_zone": ""}), "nina:cloud.availability_zone"),
        (base(cloud={"external_network": ""}), "nina:cloud.external_network"),
        (base(hosts=[{"name": "gw", "roles": ["bastion"], "flavor": ""}]), "nina:hosts[0].flavor"),
        (base(superlink={"flavor": ""}), "nina:superlink.flavor"),
        (base(database={"flavor": ""}), "nina:database.flavor"),
        (base(database={"datastore_version": ""}), "nina:database.datastore_version"),
        (base(organisations=[org("a", flavor="")]), "nina:organisations[0].flavor"),
    ],
)
def test_empty_names_refused(raw, key):
    problem(raw, key, "empty")


@pytest.mark.parametrize("value", [True, 0, 167772160, 1.5])
def test_numbers_are_not_addresses(value):
    # Added rule: pydantic turned `cidr: 10` into 0.0.0.10/32 and `yes` into 0.0.0.1/32.
    problem(base(network={"admin_cidrs": [value]}), "nina:network.admin_cidrs[0]", "not an address", "10.10.0.0/24")
    problem(base(network={"admin_cidrs": ["1.2.3.0/24"], "server_cidr": value}), "nina:network.server_cidr", "not an address")
    problem(base(organisations=[cloud_org("a", value)]), "nina:organisations[0].cidr", "not an address")
    problem(base(cloud={"dns_nameservers": [value]}), "nina:cloud.dns_nameservers[0]", "not an address", "8.8.8.8")


def test_bare_address_is_a_host_network():
    assert ok(base(network={"admin_cidrs": ["203.0.113.9"]})).network.admin_cidrs == [IPv4Network("203.0.113.9/32")]


def test_non_string_keys():
    problem({**base(), 1: "x"}, "nina:1", "not a string")
    problem(base(network={"admin_cidrs": ["203.0.113.0/24"], 5: 6}), "nina:network.5", "not a string")


@pytest.mark.parametrize("raw", [None, [], "environment: test", 42])
def test_not_a_mapping(raw):
    problem(raw, "nina:", "mapping")


def test_all_problems_reported_at_once():
    found = problems(base(environment="Bad_Env", protect="x", network={"admin_cidrs": ["1.2.3.4/8"]}))
    assert {k for k, _ in found} == {"nina:environment", "nina:protect", "nina:network.admin_cidrs[0]"}
    msg = str(ConfigError(found))
    assert msg.splitlines()[0] == "invalid stack config (3 problems):"
    assert str(ConfigError([("nina:x", "y")])).splitlines()[0] == "invalid stack config (1 problem):"


def test_long_inputs_are_cut_short_in_messages():
    msg = problem(base(organisations=[org("a", placement="x" * 10_000)]), "nina:organisations[0].placement")
    assert len(msg) < 200


# ---------------------------------------------------------------------------------------
# tenancy form
# ---------------------------------------------------------------------------------------


def test_organisations_and_tenancies_both_given():
    raw = two_tenancies(organisations=[org("x")])
    problem(raw, "nina:organisations", "either", "not both")


def test_neither_organisations_nor_tenancies():
    problem(base(organisations=None), "nina:organisations", "required", "nina:tenancies")


def test_empty_organisations():
    # Used to crash with a pydantic ValidationError from StackConfig.all_tenancies.
    problem(base(organisations=[]), "nina:organisations", "empty", "at least one")


def test_empty_tenancies():
    problem(base(organisations=None, tenancies=[]), "nina:tenancies", "empty", "at least one")


def test_tenancy_without_organisations():
    raw = two_tenancies()
    raw["tenancies"][0]["organisations"] = []
    problem(raw, "nina:tenancies[0].organisations", "empty")


def test_too_many_tenancies():
    tenancies = [
        {"name": f"t{i}", "vpn_pool_cidr": f"192.168.{100 + i}.0/24", "organisations": [org(f"o{i}")]} for i in range(MAX_TENANCIES + 1)
    ]
    problem(base(organisations=None, tenancies=tenancies), "nina:tenancies", f"at most {MAX_TENANCIES}")
    ok(base(organisations=None, tenancies=tenancies[:MAX_TENANCIES]))


# ---------------------------------------------------------------------------------------
# names: slugs, uniqueness
# ---------------------------------------------------------------------------------------

BAD_SLUGS = {
    "uppercase": "Org-A",
    "underscore": "org_a",
    "leading dash": "-org",
    "trailing dash": "org-",
    "too long": "a" * 41,
    "dot": "org.a",
    "space": "org a",
    "empty": "",
    "trailing newline": "org\n",
    "non-ascii": "orgé",
}


@pytest.mark.parametrize("slug", BAD_SLUGS.values(), ids=BAD_SLUGS.keys())
def test_org_slug_not_dns_safe(slug):
    raw = two_tenancies()
    raw["tenancies"][1]["organisations"][0]["slug"] = slug
    problem(raw, "nina:tenancies[1].organisations[0].slug", "not DNS-safe", "lowercase", "e.g.")


@pytest.mark.parametrize("slug", BAD_SLUGS.values(), ids=BAD_SLUGS.keys())
def test_other_names_not_dns_safe(slug):
    problem(base(environment=slug), "nina:environment", "not DNS-safe")
    problem(base(hosts=[{"name": slug, "roles": ["bastion"]}]), "nina:hosts[0].name", "not DNS-safe")
    raw = two_tenancies()
    raw["tenancies"][0]["name"] = slug
    problem(raw, "nina:tenancies[0].name", "not DNS-safe")


@pytest.mark.parametrize("slug", ["a", "0", "a" * 40, "metro-north", "a-b-c", "9lives"])
def test_good_slugs(slug):
    ok(base(environment=slug, organisations=[org(slug)]))


def test_duplicate_org_slug_across_tenancies():
    raw = two_tenancies()
    raw["tenancies"][1]["organisations"][0]["slug"] = "a-one"
    msg = problem(raw, "nina:tenancies[1].organisations[0].slug", "duplicate", "'a-one'", "unique")
    assert "nina:tenancies[0].organisations[0].slug" in msg  # names the first occurrence


def test_duplicate_org_slug_in_shorthand():
    problem(base(organisations=[org("x"), org("y"), org("x")]), "nina:organisations[2].slug", "duplicate", "unique")


def test_duplicate_tenancy_names():
    raw = two_tenancies()
    raw["tenancies"][1]["name"] = "alpha"
    problem(raw, "nina:tenancies[1].name", "duplicate", "'alpha'", "unique")


def test_dns_domain():
    assert ok(base(cloud={"dns_domain": "myproject.cloud.edu.au."})).cloud.dns_domain == "myproject.cloud.edu.au"
    for bad in ("", "My.Domain", "a..b", "-a.b", "a.b\n"):
        problem(base(cloud={"dns_domain": bad}), "nina:cloud.dns_domain", "not a DNS domain", "like")


# ---------------------------------------------------------------------------------------
# partition ids
# ---------------------------------------------------------------------------------------


def test_duplicate_partition_ids():
    raw = base(organisations=[org("a", partition_id=0), org("b", partition_id=1), org("c", partition_id=1)])
    problem(raw, "nina:organisations[2].partition_id", "duplicate partition id 1", "unique within a tenancy")


def test_duplicate_partition_ids_in_tenancy():
    raw = two_tenancies()
    for o in raw["tenancies"][1]["organisations"]:
        o["partition_id"] = 0
    problem(raw, "nina:tenancies[1].organisations[1].partition_id", "duplicate")


def test_same_partition_id_in_different_tenancies_is_fine():
    raw = two_tenancies()
    raw["tenancies"][0]["organisations"][0]["partition_id"] = 0
    raw["tenancies"][1]["organisations"][0]["partition_id"] = 0
    ok(raw)


def _by_hand(orgs: list[dict[str, Any]], **network: Any) -> dict[str, Any]:
    """base() with exactly these organisations (no ids filled in)."""
    raw = base(**({"network": {"admin_cidrs": ["203.0.113.0/24"], **network}} if network else {}))
    raw["organisations"] = orgs
    return raw


def test_a_missing_partition_id_is_one_message_with_the_list_order_id_when_none_is_stated():
    # A config written before ids were required: the proposals are the ids list order gave,
    # so writing them down keeps a live stack's partitions and VPN addresses.
    raw = _by_hand([org("a"), cloud_org("b", "10.101.0.0/24"), org("c")])
    found = problems(raw)
    assert [k for k, _ in found] == [f"nina:organisations[{i}].partition_id" for i in range(3)]
    for i, (_, msg) in enumerate(found):
        assert f"add partition_id: {i} (" in msg, msg
        assert "changes nothing for a live stack" in msg, msg
    for i, o in enumerate(raw["organisations"]):
        o["partition_id"] = i
    plan = build_plan(ok(raw))
    assert [(m.slug, m.partition_id, m.vpn_address) for m in plan.members()] == [
        ("a", 0, "192.168.99.10"),
        ("b", 1, None),
        ("c", 2, "192.168.99.12"),
    ]


def test_a_missing_partition_id_gets_the_next_after_the_highest_never_a_freed_one():
    # b (1) was removed: the gap stays, and the new organisations take 4 and 5, not 1.
    raw = _by_hand([org("a", partition_id=0), org("new-one"), org("c", partition_id=2), org("d", partition_id=3), org("new-two")])
    found = problems(raw)
    assert [k for k, _ in found] == ["nina:organisations[1].partition_id", "nina:organisations[4].partition_id"]
    assert "add partition_id: 4 (the next after the highest in this tenancy, 3" in found[0][1], found[0][1]
    assert "add partition_id: 5 (" in found[1][1], found[1][1]
    assert "tenancies.main.organisations.new-one.partition_id" in found[0][1]  # an already deployed one keeps its id
    assert "changes nothing" not in found[0][1]


def test_a_missing_partition_id_is_reported_per_tenancy():
    raw = two_tenancies()
    del raw["tenancies"][1]["organisations"][0]["partition_id"]
    found = problems(raw)
    assert [k for k, _ in found] == ["nina:tenancies[1].organisations[0].partition_id"]
    assert "add partition_id: 2 (" in found[0][1] and "tenancies.beta.organisations.b-one" in found[0][1]


def test_gaps_in_partition_ids_are_normal():
    cfg = ok(_by_hand([org("d", partition_id=7), org("a", partition_id=0), cloud_org("c", "10.101.0.0/24", partition_id=2)]))
    assert cfg.partition_ids(cfg.all_tenancies[0]) == {"d": 7, "a": 0, "c": 2}
    plan = build_plan(cfg)
    assert {m.slug: m.vpn_address for m in plan.members()} == {"d": "192.168.99.17", "a": "192.168.99.10", "c": None}


def test_the_highest_partition_id_must_give_a_host_address_of_the_vpn_pool():
    # pool .10 + id: in a /24, 244 is .254 (the last host address), 245 would be the broadcast.
    cfg = ok(_by_hand([org("a", partition_id=244), cloud_org("far-cloud", "10.101.0.0/24", partition_id=900)]))
    assert build_plan(cfg).members()[0].vpn_address == "192.168.99.254"
    msg = problem(
        _by_hand([org("a", partition_id=0), org("b", partition_id=245)]),
        "nina:organisations[1].partition_id",
        "245",
        "outside the VPN pool 192.168.99.0/24",
        "ids up to 244",
        "larger pool in nina:network.vpn_pool_cidr",
    )
    assert len(problems(_by_hand([org("a", partition_id=0), org("b", partition_id=245)]))) == 1, msg
    # A larger pool, as the message says, makes room.
    assert ok(_by_hand([org("a", partition_id=0), org("b", partition_id=500)], vpn_pool_cidr="192.168.98.0/23"))
    raw = _by_hand([org("a", partition_id=0), org("b", partition_id=501)], vpn_pool_cidr="192.168.98.0/23")
    assert [k for k, _ in problems(raw)] == ["nina:organisations[1].partition_id"]
    problem(raw, "nina:organisations[1].partition_id", "ids up to 500")
    raw = two_tenancies()
    raw["tenancies"][1]["organisations"][0]["partition_id"] = 300
    problem(raw, "nina:tenancies[1].organisations[0].partition_id", "192.168.100.0/24", "nina:tenancies[1].vpn_pool_cidr")


def test_partition_ids_stay_with_their_organisation_when_the_list_changes():
    # Remove the first, reorder, append: nobody else's id or VPN address moves.
    before = build_plan(ok(_by_hand([org("a", partition_id=0), org("b", partition_id=1), org("c", partition_id=2)])))
    after = build_plan(ok(_by_hand([org("c", partition_id=2), org("b", partition_id=1), org("d", partition_id=3)])))
    old = {m.slug: m for m in before.members()}
    for m in after.members():
        if m.slug in old:
            assert m == old[m.slug]
    assert {m.slug: m.vpn_address for m in after.members()} == {"c": "192.168.99.12", "b": "192.168.99.11", "d": "192.168.99.13"}


# ---------------------------------------------------------------------------------------
# segments
# ---------------------------------------------------------------------------------------


def test_cloud_org_without_cidr():
    problem(base(organisations=[org("a", "cloud")]), "nina:organisations[0].cidr", "needs its own segment", "add a cidr")


def test_onprem_org_with_cidr():
    problem(base(organisations=[org("a", cidr="10.101.0.0/24")]), "nina:organisations[0].cidr", "on premise", "remove cidr")


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        (base(organisations=[cloud_org("a", "10.101.0.0/25")]), "nina:organisations[0].cidr"),
        (base(network={"admin_cidrs": ["203.0.113.0/24"], "server_cidr": "10.100.0.0/28"}), "nina:network.server_cidr"),
        (base(network={"admin_cidrs": ["203.0.113.0/24"], "vpn_pool_cidr": "192.168.99.0/26"}), "nina:network.vpn_pool_cidr"),
    ],
)
def test_segment_smaller_than_24(raw, key):
    problem(raw, key, "too small", "/24 or larger")


def test_segment_24_and_larger_ok():
    ok(base(organisations=[cloud_org("a", "10.64.0.0/16")], network={"admin_cidrs": ["1.2.3.0/24"], "server_cidr": "10.100.0.0/24"}))


@pytest.mark.parametrize(
    "cidr",
    [
        "8.8.8.0/24",  # public
        "100.64.0.0/24",  # carrier-grade NAT, not RFC 1918
        "127.0.0.0/24",  # loopback: `is_private` accepted these before
        "169.254.0.0/24",  # link-local
        "203.0.113.0/24",  # TEST-NET-3
        "172.32.0.0/24",  # just outside 172.16.0.0/12
        "0.0.0.0/8",
    ],
)
def test_public_cidrs_refused(cidr):
    problem(base(organisations=[cloud_org("a", cidr)]), "nina:organisations[0].cidr", "not a private range", "RFC 1918")
    problem(base(network={"admin_cidrs": ["1.2.3.0/24"], "server_cidr": cidr}), "nina:network.server_cidr", "RFC 1918")
    problem(base(network={"admin_cidrs": ["1.2.3.0/24"], "vpn_pool_cidr": cidr}), "nina:network.vpn_pool_cidr", "RFC 1918")


@pytest.mark.parametrize("cidr", ["10.200.0.0/24", "172.16.5.0/24", "172.31.255.0/24", "192.168.1.0/24"])
def test_rfc1918_cidrs_accepted(cidr):
    ok(base(organisations=[cloud_org("a", cidr)]))


def test_org_overlaps_server():
    msg = problem(base(organisations=[cloud_org("a", "10.100.0.0/16")]), "nina:organisations[0].cidr", "overlaps", "own range")
    assert "nina:network.server_cidr" in msg


def test_org_overlaps_vpn_pool():
    msg = problem(base(organisations=[cloud_org("a", "192.168.0.0/16")]), "nina:organisations[0].cidr", "overlaps")
    assert "nina:network.vpn_pool_cidr" in msg


def test_server_overlaps_vpn_pool():
    raw = base(network={"admin_cidrs": ["1.2.3.0/24"], "server_cidr": "192.168.0.0/16"})
    msg = problem(raw, "nina:network.vpn_pool_cidr", "overlaps")
    assert "nina:network.server_cidr" in msg


def test_orgs_overlap_across_tenancies():
    raw = two_tenancies()
    raw["tenancies"][1]["organisations"][1]["cidr"] = "10.101.0.0/24"
    msg = problem(raw, "nina:tenancies[1].organisations[1].cidr", "overlaps")
    assert "nina:tenancies[0].organisations[0].cidr" in msg


# ---------------------------------------------------------------------------------------
# SSH, cloud, GPU, flower
# ---------------------------------------------------------------------------------------


def test_ssh_from_anywhere_refused():
    raw = base(network={"admin_cidrs": ["203.0.113.0/24", "0.0.0.0/0"]})
    problem(raw, "nina:network.admin_cidrs[1]", "whole internet", "allow_ssh_from_anywhere: true")


def test_ssh_from_anywhere_accepted_when_allowed():
    cfg = ok(base(network={"admin_cidrs": ["0.0.0.0/0"], "allow_ssh_from_anywhere": True}))
    assert cfg.network.admin_cidrs == [IPv4Network("0.0.0.0/0")]


def test_az_external_network_mismatch():
    problem(base(cloud={"availability_zone": "melbourne-qh2"}), "nina:cloud.external_network", "'QRIScloud'", "'melbourne'")
    problem(base(cloud={"external_network": "monash"}), "nina:cloud.external_network", "does not serve", "'QRIScloud'")


def test_az_external_network_match():
    for az, net in facts.AZ_EXTERNAL_NETWORKS.items():
        ok(base(cloud={"availability_zone": az, "external_network": net}))
    ok(base(cloud={"availability_zone": "somewhere-new", "external_network": "anything"}))  # unknown AZ: no opinion


def test_gpu_org_without_gpu_flavor():
    raw = base(organisations=[cloud_org("gpu-org", "10.101.0.0/24", gpu=True), org("cpu-org")])
    msg = problem(raw, "nina:supernode.gpu_flavor", "gpu-org", "set a gpu flavor", "per-organisation flavor")
    assert "cpu-org" not in msg


def test_gpu_org_with_flavor_ok():
    ok(base(organisations=[cloud_org("a", "10.101.0.0/24", gpu=True)], supernode={"gpu_flavor": "reservation:abc"}))
    ok(base(organisations=[cloud_org("a", "10.101.0.0/24", gpu=True, flavor="g3.large")]))
    ok(base(organisations=[org("a", gpu=True)]))  # on premise: its own hardware


def test_unsupported_flwr_version():
    problem(base(flower={"version": "1.26.0"}), "nina:flower.version", "not supported", facts.FLWR_VERSION)
    assert ok(base(flower={"version": facts.FLWR_VERSION})).flower.version == facts.FLWR_VERSION


# ---------------------------------------------------------------------------------------
# hosts and co-location
# ---------------------------------------------------------------------------------------


def hosts(*groups: tuple[str, list[str]]) -> list[dict[str, Any]]:
    return [{"name": n, "roles": r} for n, r in groups]


def test_monitoring_and_superlink_on_one_host():
    raw = base(hosts=hosts(("gw", ["bastion"]), ("big", ["monitoring", "superlink"])))
    problem(raw, "nina:hosts[1].roles", "monitoring", "superlink", "separate hosts")


def test_role_on_two_hosts():
    raw = base(hosts=hosts(("gw", ["bastion", "proxy"]), ("web", ["proxy"])))
    msg = problem(raw, "nina:hosts[1].roles", "'proxy'", "exactly one host")
    assert "hosts[0]" in msg


def test_role_listed_twice_on_one_host():
    # Added rule: a repeated role used to pass silently.
    problem(base(hosts=hosts(("gw", ["bastion", "bastion"]))), "nina:hosts[0].roles", "'bastion'", "listed 2 times", "once")


def test_no_bastion():
    problem(base(hosts=hosts(("web", ["proxy"]))), "nina:hosts", "bastion", "one host must carry it")
    problem(base(hosts=[]), "nina:hosts", "bastion")


def test_shared_superlink_with_two_tenancies():
    raw = two_tenancies(hosts=hosts(("gw", ["bastion"]), ("big", ["superlink", "keycloak"])))
    problem(raw, "nina:hosts[1].roles", "single tenancy", "remove 'superlink'")


def test_shared_superlink_with_duplicate_tenancy_names_still_refused():
    raw = two_tenancies(hosts=hosts(("gw", ["bastion", "superlink"])))
    raw["tenancies"][1]["name"] = "alpha"
    found = dict(problems(raw))
    assert "single tenancy" in found["nina:hosts[0].roles"]


def test_shared_superlink_with_one_tenancy_ok():
    ok(base(hosts=hosts(("one-large-vm", ["bastion", "proxy", "keycloak", "jupyterhub", "superlink"]), ("mon", ["monitoring"]))))


@pytest.mark.parametrize("name", ["superlink-main", "supernode-org-a", "vpn-main", "vpn-x"])
def test_reserved_host_names(name):
    problem(base(hosts=hosts((name, ["bastion"]))), "nina:hosts[0].name", "reserved", "choose another name")


def test_duplicate_host_names():
    problem(base(hosts=hosts(("gw", ["bastion"]), ("gw", ["proxy"]))), "nina:hosts[1].name", "duplicate host name", "unique")


def test_too_many_hosts():
    many = hosts(("h0", ["bastion"]), *((f"h{i}", ["proxy"] if i == 1 else ["keycloak"]) for i in range(1, MAX_SHARED_HOSTS + 1)))
    problem(base(hosts=many), "nina:hosts", f"at most {MAX_SHARED_HOSTS}")


# ---------------------------------------------------------------------------------------
# property: malformed input never escapes as anything but ConfigError
# ---------------------------------------------------------------------------------------

FULL: dict[str, Any] = {
    "environment": "uat",
    "cloud": {
        "availability_zone": "QRIScloud",
        "external_network": "QRIScloud",
        "image": "img",
        "dns_nameservers": ["8.8.8.8"],
        "dns_domain": "example.org",
    },
    "network": {
        "server_cidr": "10.100.0.0/24",
        "vpn_pool_cidr": "192.168.99.0/24",
        "admin_cidrs": ["203.0.113.0/24"],
        "allow_ssh_from_anywhere": False,
    },
    "hosts": [{"name": "gateway", "roles": ["bastion", "proxy"], "flavor": "m3.small"}, {"name": "mon", "roles": ["monitoring"]}],
    "superlink": {"flavor": "m3.medium", "state_volume_gb": 20},
    "supernode": {"flavor": "m3.medium", "gpu_flavor": "g1", "data_volume_gb": 5},
    "database": {"enabled": True, "flavor": "db3.small", "size_gb": 10, "datastore_version": "16"},
    "flower": {"version": facts.FLWR_VERSION},
    "tenancies": [
        {
            "name": "alpha",
            "organisations": [
                {"slug": "a-one", "name": "A1", "placement": "cloud", "cidr": "10.101.0.0/24", "gpu": True, "partition_id": 1},
                {"slug": "a-two", "name": "A2", "placement": "onprem", "partition_id": 0},
            ],
        },
        {
            "name": "beta",
            "organisations": [
                {"slug": "b-one", "name": "B1", "placement": "cloud", "cidr": "10.102.0.0/24", "flavor": "m3.large", "partition_id": 0}
            ],
        },
    ],
    "protect": False,
}
SHORT = {k: v for k, v in FULL.items() if k != "tenancies"} | {"organisations": FULL["tenancies"][0]["organisations"]}
KNOWN_KEYS = sorted(
    {
        "environment",
        "cloud",
        "network",
        "hosts",
        "superlink",
        "supernode",
        "database",
        "flower",
        "organisations",
        "tenancies",
        "protect",
        "availability_zone",
        "external_network",
        "image",
        "dns_nameservers",
        "dns_domain",
        "server_cidr",
        "vpn_pool_cidr",
        "admin_cidrs",
        "allow_ssh_from_anywhere",
        "name",
        "roles",
        "flavor",
        "state_volume_gb",
        "gpu_flavor",
        "data_volume_gb",
        "enabled",
        "size_gb",
        "datastore_version",
        "version",
        "slug",
        "placement",
        "partition_id",
        "gpu",
        "cidr",
        "secure",
    }
)

cidr_like = st.one_of(
    st.builds(lambda ip, p: f"{ip}/{p}", st.ip_addresses(v=4), st.integers(0, 33)),
    st.builds(lambda ip: str(ip), st.ip_addresses(v=4)),
    st.from_regex(r"\A[0-9./]{0,20}\Z"),
)
slug_like = st.from_regex(r"\A[a-zA-Z0-9_.\- ]{0,45}\n?\Z")
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True),
    st.text(max_size=20),
    cidr_like,
    slug_like,
    st.sampled_from(KNOWN_KEYS),
    st.sampled_from(["cloud", "onprem", "bastion", "superlink", "monitoring", facts.FLWR_VERSION, "0.0.0.0/0"]),
)
json_trees = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.one_of(st.sampled_from(KNOWN_KEYS), st.text(max_size=8), st.integers(0, 3)), children, max_size=4)
    ),
    max_leaves=12,
)


def _paths(tree: Any, here: tuple = ()) -> list[tuple]:
    out = [here]
    if isinstance(tree, dict):
        for k, v in tree.items():
            out += _paths(v, (*here, k))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            out += _paths(v, (*here, i))
    return out


def _mutate(data: st.DataObject, raw: Any) -> Any:
    # Depth first, then a path at that depth: the few top-level keys are hit as often as the
    # many leaves.
    paths = _paths(raw)
    depth = data.draw(st.sampled_from(sorted({len(p) for p in paths})), label="depth")
    path = data.draw(st.sampled_from([p for p in paths if len(p) == depth]), label="path")
    kind = data.draw(st.sampled_from(["replace", "delete", "extra", "wrap", "duplicate", "empty", "swap"]), label="kind")
    if not path:
        return data.draw(json_trees) if kind == "replace" else raw
    parent = raw
    for part in path[:-1]:
        parent = parent[part]
    last = path[-1]
    if kind == "replace":
        parent[last] = data.draw(json_trees, label="value")
    elif kind == "delete":
        del parent[last]
    elif kind == "extra" and isinstance(parent, dict):
        parent[data.draw(st.one_of(st.sampled_from(KNOWN_KEYS), st.text(max_size=10)), label="key")] = data.draw(json_trees)
    elif kind == "extra" and isinstance(parent, list):
        parent.insert(last, data.draw(json_trees, label="item"))
    elif kind == "wrap":
        parent[last] = data.draw(st.sampled_from([[parent[last]], {"secure": parent[last]}, {"x": parent[last]}]))
    elif kind == "duplicate" and isinstance(parent, list):
        parent.append(copy.deepcopy(parent[last]))
    elif kind == "empty":
        parent[last] = type(parent[last])() if isinstance(parent[last], (dict, list, str)) else None
    elif kind == "swap":  # a valid value from elsewhere in the config, in the wrong place
        other = data.draw(st.sampled_from(_paths(FULL)[1:]), label="from")
        value: Any = FULL
        for part in other:
            value = value[part]
        parent[last] = copy.deepcopy(value)
    return raw


@settings(max_examples=int(__import__("os").environ.get("CFG_FUZZ", 300)), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_malformed_configs_only_raise_config_error(data):
    raw = copy.deepcopy(data.draw(st.sampled_from([FULL, SHORT]), label="base"))
    for _ in range(data.draw(st.sampled_from([1, 1, 1, 2, 2, 3, 5]), label="mutations")):
        raw = _mutate(data, raw)
    try:
        cfg = load_config(raw)
    except ConfigError as err:
        assert err.problems
        for key, msg in err.problems:
            assert isinstance(key, str) and key.startswith("nina:"), key
            assert isinstance(msg, str) and msg.strip()
            assert key in str(err)
    else:
        assert isinstance(cfg, StackConfig)
        for ten in cfg.all_tenancies:
            ids = cfg.partition_ids(ten)
            assert len(set(ids.values())) == len(ten.organisations) and min(ids.values()) >= 0


EDGE_VALUES: list[Any] = [
    None,
    [],
    {},
    "",
    0,
    -1,
    True,
    2**70,
    1.5,
    "x",
    "0.0.0.0/0",
    "10.0.0.0/8",
    [{}],
    [None],
    {"secure": "x"},
    {"x": 1},
]


@pytest.mark.parametrize("name", ["full", "short"])
def test_edge_value_at_every_key(name):
    """Deterministic sweep: every key deleted, and every edge value put at every key."""
    start = FULL if name == "full" else SHORT
    for path in _paths(start)[1:]:
        for value in [..., *EDGE_VALUES]:  # `...` marks deletion
            raw = copy.deepcopy(start)
            parent: Any = raw
            for part in path[:-1]:
                parent = parent[part]
            if value is ...:
                del parent[path[-1]]
            else:
                parent[path[-1]] = copy.deepcopy(value)
            try:
                load_config(raw)
            except ConfigError as err:
                assert all(k.startswith("nina:") for k, _ in err.problems), (path, value)


def test_full_configs_used_by_the_property_test_are_valid():
    ok(copy.deepcopy(FULL))
    ok(copy.deepcopy(SHORT))


# The CLI on random files: exit 0 or 2, never a traceback.

yaml_noise = st.text(alphabet=string.printable + "é\u2028\x00\ufeff", max_size=200)


def _stack_text(data: st.DataObject) -> str | bytes:
    kind = data.draw(st.sampled_from(["dumped", "noise", "edited", "bytes", "tagged"]), label="file kind")
    if kind == "tagged":  # a value PyYAML constructs with a tag that cannot hold it
        lines = yaml.safe_dump({"config": {f"nina:{k}": v for k, v in FULL.items()}}).splitlines()
        scalars = [i for i, line in enumerate(lines) if re.match(r"^\s*(- )?[\w:]+: \S", line)]
        i = data.draw(st.sampled_from(scalars), label="line")
        tag = data.draw(st.sampled_from(["!!bool", "!!int", "!!float", "!!timestamp", "!!binary", "!!null", "!!str", ""]), label="tag")
        value = data.draw(
            st.one_of(st.sampled_from(["maybe", "2026-02-30", "9" * 5000, "0x", "1e999", "%%%", "-.inf", "0o9"]), yaml_noise.map(repr)),
            label="value",
        )
        head = lines[i].split(": ", 1)[0]
        lines[i] = f"{head}: {tag} {value}".rstrip()
        return "\n".join(lines)
    if kind == "dumped":
        raw = copy.deepcopy(data.draw(st.sampled_from([FULL, SHORT])))
        for _ in range(data.draw(st.integers(0, 3))):
            raw = _mutate(data, raw)
        doc: Any = {"config": {f"nina:{k}" if isinstance(k, str) else k: v for k, v in raw.items()} if isinstance(raw, dict) else raw}
        if data.draw(st.booleans()):
            doc = data.draw(st.sampled_from([doc, {"config": data.draw(json_trees)}, data.draw(json_trees)]))
        return yaml.safe_dump(doc, allow_unicode=True)
    if kind == "noise":
        return data.draw(yaml_noise)
    if kind == "bytes":
        return data.draw(st.binary(max_size=100))
    lines = yaml.safe_dump({"config": {f"nina:{k}": v for k, v in FULL.items()}}).splitlines()
    i = data.draw(st.integers(0, len(lines) - 1))
    lines[i] = data.draw(
        st.sampled_from([lines[i][1:], "  " + lines[i], lines[i] + ": x", lines[i].replace(":", ""), "\t" + lines[i], "&a *a"])
    )
    return "\n".join(lines)


@pytest.fixture(scope="module")
def cfg_fuzz_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@settings(max_examples=int(__import__("os").environ.get("CFG_FUZZ", 200)), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_config_check_on_random_files(cfg_fuzz_dir, data):
    text = _stack_text(data)
    path = cfg_fuzz_dir / "Pulumi.fuzz.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["config", "check", "--stack", "fuzz", "--dir", str(cfg_fuzz_dir)])
    assert code in (0, 2)
    assert "Traceback" not in err.getvalue()
    if code == 0:
        assert out.getvalue() == "ok\n" and not err.getvalue()
    else:
        assert err.getvalue().strip() and not out.getvalue()


def test_a_retired_partition_id_is_never_given_out_again():
    """Removing the organisation with the highest id frees nothing: its id goes to
    retired_partition_ids, and `config check` proposes the next after it for a newcomer."""
    raw = base(organisations=numbered([org("a"), org("b"), org("c")]))
    assert [o["partition_id"] for o in raw["organisations"]] == [0, 1, 2]
    raw["organisations"] = [*raw["organisations"][:2], org("d")]  # c (id 2) leaves, d comes without an id
    assert problem(raw, "nina:organisations[2].partition_id", "add partition_id: 2")  # without the record: c's id again
    raw["retired_partition_ids"] = [2]
    assert problem(raw, "nina:organisations[2].partition_id", "add partition_id: 3")
    raw["organisations"][2]["partition_id"] = 2  # taken anyway
    assert problem(raw, "nina:organisations[2].partition_id", "retired partition id", "partition_id: 3")
    raw["organisations"][2]["partition_id"] = 3
    plan = build_plan(ok(raw))
    assert {m.slug: (m.partition_id, m.vpn_address) for m in plan.tenancies[0].members}["d"] == (3, "192.168.99.13")


def test_retired_partition_ids_belong_to_their_tenancy():
    raw = two_tenancies()
    raw["retired_partition_ids"] = [5]
    assert problem(raw, "nina:retired_partition_ids", "each tenancy its own retired_partition_ids")
    raw = two_tenancies()
    raw["tenancies"][0]["retired_partition_ids"] = [-1]
    assert problem(raw, "nina:tenancies[0].retired_partition_ids[0]", "greater than or equal to 0")


def test_researcher_access_needs_keycloak_for_the_hub_and_postgres_for_keycloak(researcher_raw):
    ok(researcher_raw())
    hubless_idp = researcher_raw()
    hubless_idp["hosts"] = [h for h in hubless_idp["hosts"] if h["name"] != "idp"]
    problem(hubless_idp, "nina:hosts", "'jupyterhub' role but none has 'keycloak'", "add 'keycloak'")
    no_db = researcher_raw()
    no_db["database"] = {"enabled": False}
    problem(no_db, "nina:database.enabled", "Keycloak keeps its realm", "set it to true")
    # Without researcher access the same hosts are only VMs: nothing is delivered to them.
    del no_db["researcher_access"]
    ok(no_db)


# ---------------------------------------------------------------------------------------
# notebook images and the realm's name: refused here, not by the hub host or Keycloak
# ---------------------------------------------------------------------------------------

_ACCESS = {"public_domain": "fl.example.edu.au", "acme_email": "ops@example.edu.au"}


def _with_images(images: list[str]) -> dict[str, Any]:
    return base(hosts=[{"name": "gateway", "roles": ["bastion", "proxy"]}], researcher_access={**_ACCESS, "notebook_images": images})


@pytest.mark.parametrize(
    "images",
    [
        ["-q"],  # an option of `docker pull`
        ["--config=/tmp/x"],
        ["foo bar"],
        ["Quay.io/jupyter/scipy-notebook"],  # docker refuses upper case in repositories
        ["quay.io/jupyter/scipy-notebook:"],
        ["quay.io/jupyter/scipy-notebook@sha256:abc"],
        ["a" * 300],
        ['quay.io/x"y'],
    ],
)
def test_notebook_images_that_are_no_image_references_are_refused(images):
    problem(_with_images(images), "nina:researcher_access.notebook_images[0]", "image")


@pytest.mark.parametrize("images", [["a/scipy-notebook:1", "b/scipy-notebook:2"], ["x/foo", "x/foo"]])
def test_notebook_images_sharing_a_name_are_refused(images):
    problem(_with_images(images), "nina:researcher_access.notebook_images", "name")


def test_good_notebook_images_pass():
    images = [
        "quay.io/jupyter/scipy-notebook:2025-03-14",
        "localhost:5000/team/pytorch-notebook",
        "registry.example.edu.au:443/a_b/c__d/e-f.g@sha256:" + "a" * 64,
        "tensorflow-notebook",
    ]
    cfg = ok(_with_images(images))
    assert cfg.researcher_access is not None and cfg.researcher_access.notebook_images == images


def test_the_keycloak_master_realm_is_refused():
    problem(base(keycloak={"realm": "master"}), "nina:keycloak.realm", "master")


@pytest.mark.parametrize(
    "domain, words",
    [
        ("10.0.0.1", ("top-level",)),  # an address, not a domain: certbot fails at the first `pulumi up`
        ("fl.example.123", ("top-level",)),
        # 253 characters: grafana.<it> is a DNS name of 261, which no resolver or CA takes.
        (".".join(["b" * 40] * 6) + ".abcdefg", ("grafana.", "253")),
    ],
)
def test_a_public_domain_whose_public_names_cannot_exist_is_refused(domain, words):
    raw = base(hosts=[{"name": "gateway", "roles": ["bastion", "proxy"]}], researcher_access={**_ACCESS, "public_domain": domain})
    problem(raw, "nina:researcher_access.public_domain", *words)


def test_a_segment_in_docker_s_address_pool_is_refused_with_a_jupyterhub_host(researcher_raw):
    """Docker on the hub host takes its networks from facts.DOCKER_ADDRESS_POOL: a plan range there
    would be shadowed on that host (its notebooks could not reach that segment's SuperLink)."""
    from nina import facts

    raw = researcher_raw()
    raw["tenancies"][1]["organisations"][0]["cidr"] = "172.30.5.0/24"
    problem(raw, "nina:tenancies[1].organisations[0].cidr", facts.DOCKER_ADDRESS_POOL, "choose a range outside it")
    # Without a JupyterHub host there is no docker: the range is fine.
    raw["hosts"] = [h for h in raw["hosts"] if "jupyterhub" not in h["roles"]]
    ok(raw)


# --- nina:gpu (issue 13) --------------------------------------------------------------------


def test_gpu_driver_branch_defaults_to_facts():
    assert load_config(base()).gpu.driver_branch == facts.GPU_DRIVER_BRANCH
    assert load_config(base(gpu={"driver_branch": 570})).gpu.driver_branch == 570


@pytest.mark.parametrize("branch", [0, 570.0, "580", 575, -1, 5800, True, None, [580]])
def test_gpu_driver_branch_outside_the_known_ones_is_refused(branch):
    problem(base(gpu={"driver_branch": branch}), "nina:gpu.driver_branch")


def test_gpu_driver_branch_refusal_names_the_branches():
    problem(base(gpu={"driver_branch": 575}), "nina:gpu.driver_branch", *map(str, facts.GPU_DRIVER_BRANCHES), "nvidia-driver")


def test_gpu_unknown_key_is_refused():
    problems(base(gpu={"driver": 580}))


def test_gpu_dcgm_version_is_unpinned_by_default_and_kept_as_written():
    assert load_config(base()).gpu.dcgm_version is None
    for version in ("1:4.5.2-1", "4.4.1-1", "1:4.2.3~rc1-1ubuntu2", "4.5.2"):
        assert load_config(base(gpu={"dcgm_version": version})).gpu.dcgm_version == version


@pytest.mark.parametrize(
    "version",
    [
        "",
        " 1:4.5.2-1",
        "1:4.5.2-1\n",
        "latest",
        "4.5.2-1 --allow-unauthenticated",
        "1:4.5.2-1;reboot",
        "=1:4.5.2-1",
        "v4.5.2",
        "1:4.5.2-",
        ":4.5.2-1",
        "x:4.5.2-1",
        "4.5.2-1/noble",
        4.5,
        4,
        True,
        ["1:4.5.2-1"],
        "1" * 200,
    ],
)
def test_gpu_dcgm_version_that_is_not_a_debian_version_is_refused(version):
    problem(base(gpu={"dcgm_version": version}), "nina:gpu.dcgm_version", "apt-cache madison datacenter-gpu-manager-4-core", "1:4.5.2-1")


# --- training environments (nina:training_environments, issue 13) ------------------------------


def test_training_environment_defaults_to_the_built_in_one() -> None:
    from nina import environments

    cfg = ok(base())
    assert cfg.training_environment_of(cfg.all_tenancies[0]) == environments.DEFAULT
    cfg = ok(two_tenancies())
    assert {cfg.training_environment_of(t).name for t in cfg.all_tenancies} == {facts.ENV_DEFAULT}


def readme_cuda_example() -> dict[str, Any]:
    """README's CUDA training environment stanza (Training environments), as config (keys without `nina:`)."""
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    blocks = [b.split("\n", 1)[1] for b in text.split("```")[1::2]]
    [block] = [b for b in blocks if b.startswith("  nina:training_environments:\n    pytorch-cuda:")]
    return {k.removeprefix("nina:"): v for k, v in yaml.safe_load(block).items()}


def test_the_readme_cuda_example_is_a_tenancys_environment_with_its_committed_lock() -> None:
    """The stanza README shows, used by a tenancy with a cloud GPU organisation: `nina config
    check` accepts it (its committed lock matches it), and the driver must run the lock's CUDA."""
    from nina import environments

    example = readme_cuda_example()
    raw = base(organisations=[cloud_org("org-a", "10.101.0.0/24", gpu=True), org("org-b", gpu=True)], **example)
    raw["training_environment"] = "pytorch-cuda"
    raw["supernode"] = {"gpu_flavor": "reservation:0000"}
    cfg = ok(raw)
    env = cfg.training_environment_of(cfg.all_tenancies[0])
    assert (env.name, env.variant) == ("pytorch-cuda", "cuda")
    pins = environments.parse(environments.read_lock(env))
    assert pins["torch"] == env.pins()["torch"] and pins["flwr"] == facts.FLWR_VERSION
    # PyPI's Linux torch wheels carry the CUDA runtime as wheels: CUDA 13's for torch 2.15.
    assert environments.cuda_major(pins) == 13 and {"nvidia-cublas", "nvidia-cudnn-cu13", "triton"} <= set(pins)
    # Driver branches 535 and 570 run CUDA 12 at most: their GPU hosts would see no usable GPU.
    for branch in (535, 570):
        problem({**raw, "gpu": {"driver_branch": branch}}, "nina:gpu.driver_branch", f"branch {branch}", "CUDA 13", "org-a", "580")
    assert ok({**raw, "gpu": {"driver_branch": 580}})
    # Only cloud GPU hosts get nina's driver: with none, the branch is not judged against the lock.
    assert ok(
        {**raw, "gpu": {"driver_branch": 570}, "organisations": numbered([cloud_org("org-a", "10.101.0.0/24"), org("org-b", gpu=True)])}
    )


def test_training_environment_refusals(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nina import environments

    problem(base(training_environment="tabular"), "nina:training_environment", "not a training environment", "nina:training_environments")
    problem(base(training_environments={"default": {"packages": ["numpy==2.4.6"]}}), "nina:training_environments.default", "built-in")
    problem(base(training_environments={"Tab Ular": {}}), "nina:training_environments.'Tab Ular'", "DNS-safe")
    problem(base(training_environments={"tab": {"packages": ["numpy>=2"]}}), "nina:training_environments.tab.packages", "exact pin")
    problem(
        base(training_environments={"tab": {"packages": ["flwr==1.30.0"]}}),
        "nina:training_environments.tab.packages",
        "nina:flower.version",
    )
    problem(
        base(training_environments={"tab": {"packages": ["numpy==2.4.6", "NumPy==2.4.5"]}}),
        "nina:training_environments.tab.packages",
        "twice",
    )
    problem(base(training_environments={"tab": {"variant": "rocm"}}), "nina:training_environments.tab.variant", "cpu")
    problem(base(training_environments={"tab": {"exclude_newer": "now"}}), "nina:training_environments.tab.exclude_newer", "UTC time")
    two = two_tenancies(training_environment="default")
    assert ok(two)
    two["training_environment"] = "tab"
    two["training_environments"] = {"tab": {}}
    problem(two, "nina:training_environment", "one-tenancy shorthand")
    two = two_tenancies(training_environments={"tab": {"packages": ["numpy==2.4.6"]}})
    two["tenancies"][1]["training_environment"] = "nosuch"
    problem(two, "nina:tenancies[1].training_environment", "'nosuch' is not a training environment", "default, tab")
    # A defined environment that is used needs its committed lock, matching its definition.
    monkeypatch.setattr(environments, "LOCK_DIR", tmp_path)
    two["tenancies"][1]["training_environment"] = "tab"
    problem(two, "nina:training_environments.tab", "has no lock", "nina env lock tab")
    problem(two, "nina:tenancies[0].training_environment", "has no lock environments/default.lock", "nina env lock default")
    (tmp_path / "default.lock").write_text(environments.read_lock(environments.DEFAULT, environments.REPO_ROOT / facts.ENV_LOCK_DIR))
    (tmp_path / "tab.lock").write_text(environments.read_lock(environments.DEFAULT, environments.REPO_ROOT / facts.ENV_LOCK_DIR))
    problem(two, "nina:training_environments.tab", "does not match the environment's definition", "nina env lock tab")


@pytest.mark.parametrize("name", ["../../etc/passwd", "a/b", "-rf", "..", "tab\n", "tåb", "tab\u202e", "x" * 64])
def test_a_hostile_environment_name_is_refused_and_names_no_file(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The name becomes environments/<name>.lock and a `nina env lock NAME` argument: a path, a
    # leading dash or a control character must be refused before any file is read by that name.
    from nina import environments

    read: list[str] = []
    real = environments.read_lock

    def reading(env: environments.Environment, lock_dir: Path | None = None) -> str:
        read.append(env.name)
        return real(env, lock_dir)

    monkeypatch.setattr(environments, "read_lock", reading)
    found = problems(base(training_environments={name: {}}, training_environment=name))
    assert any(k.startswith("nina:training_environments.") and "not DNS-safe" in m for k, m in found), found
    assert name not in read
