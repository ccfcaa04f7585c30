"""Membership changes never touch another site (issue 9, "stable identity").

The real program (`__main__.py`) under the mock harness, for stack `uat` grown to five
organisations (on premise, one keeping its own keys, one in the cloud). Then the first
organisation is removed, a new one is added at the end and the others are reordered. Every
remaining organisation keeps its partition id and VPN address, its site kit (exported from the
stack outputs as `nina kit export` does) is byte-identical, and no VM is replaced: no
openstack Instance appears, disappears or has an input changed. What does change is only what
belongs to the organisations that left or came.
"""

from __future__ import annotations

import copy
import functools
import json
from typing import Any

import pytest
from harness import Run, before_and_after, changed_names, instances_unchanged, payload_of, stack_config

from nina import facts, localpki
from nina.kit import build_kit

REMOTE_COMMAND = "command:remote:Command"


@functools.cache
def _own_keys() -> dict[str, str]:
    """townsville's CSR and public key (made once: an ECDSA signature is randomised)."""
    key = localpki.generate_key(seed=b"test_membership/townsville")
    return {
        "vpn_csr_pem": localpki.cert_request(key.private_key_pem, {"common_name": "townsville"}),
        "supernode_public_key": key.public_key_openssh,
    }


def grown_uat() -> dict[str, Any]:
    """Pulumi.uat.yaml with three more organisations after its own two."""
    config = copy.deepcopy(stack_config("uat"))
    orgs = config["nina:organisations"]
    assert [(o["slug"], o["partition_id"]) for o in orgs] == [("metro-north", 0), ("gold-coast", 1)]
    orgs += [
        {"slug": "sunshine-coast", "name": "Sunshine Coast HHS", "placement": "onprem", "partition_id": 2, "gpu": True},
        {"slug": "townsville", "name": "Townsville HHS", "placement": "onprem", "partition_id": 3, **_own_keys()},
        {"slug": "qimr-lab", "name": "QIMR Cloud Lab", "placement": "cloud", "partition_id": 4, "cidr": "10.111.0.0/24"},
    ]
    return config


def changed_membership(config: dict[str, Any]) -> dict[str, Any]:
    """The first organisation removed, the others reordered, a new one added at the end with
    the id `nina config check` proposes (the next after the highest)."""
    config = copy.deepcopy(config)
    first, *rest = config["nina:organisations"]
    assert first["slug"] == "metro-north"
    rest.reverse()
    rest.append({"slug": "cairns", "name": "Cairns and Hinterland HHS", "placement": "onprem", "partition_id": 5})
    config["nina:organisations"] = rest
    return config


@pytest.fixture(scope="module")
def runs() -> tuple[Run, Run]:
    return before_and_after(grown_uat(), changed_membership(grown_uat()), "uat")


REMAINING = ["gold-coast", "sunshine-coast", "townsville", "qimr-lab"]


def exported(run: Run) -> dict[str, Any]:
    """The outputs as `pulumi stack output --json --show-secrets` prints them."""
    return json.loads(json.dumps(run.outputs))


def test_the_order_really_changed(runs):
    before, after = runs
    assert list(before.outputs["tenancies"]["main"]["organisations"]) == ["metro-north", *REMAINING]
    assert list(after.outputs["tenancies"]["main"]["organisations"]) == [*reversed(REMAINING), "cairns"]


def test_every_remaining_organisation_keeps_its_partition_vpn_address_and_outputs(runs):
    before, after = (r.outputs["tenancies"]["main"]["organisations"] for r in runs)
    for slug in REMAINING:
        assert after[slug] == before[slug], slug
    assert {s: (o["partition_id"], o["vpn_address"]) for s, o in after.items()} == {
        "gold-coast": (1, "192.168.99.11"),
        "sunshine-coast": (2, "192.168.99.12"),
        "townsville": (3, "192.168.99.13"),
        "qimr-lab": (4, None),
        "cairns": (5, "192.168.99.15"),  # not metro-north's .10: a new organisation never inherits an address
    }


def test_every_remaining_organisations_kit_is_byte_identical(runs):
    before, after = (exported(r) for r in runs)
    for slug in REMAINING:
        assert build_kit(after, slug) == build_kit(before, slug), slug
    # ... while the new organisation's kit is its own.
    assert build_kit(after, "cairns") not in {build_kit(before, slug) for slug in REMAINING}


def test_no_vm_is_replaced_and_no_instance_input_changes(runs):
    assert len(instances_unchanged(*runs)) == 4  # gateway, SuperLink, VPN, qimr-lab's SuperNode


def test_only_what_belongs_to_the_leaving_and_the_new_organisation_changes(runs):
    before, after = ({r.urn: r for r in run.registrations} for run in runs)
    gone, added, changed = changed_names(*runs)
    assert gone and all("metro-north" in name for name in gone), gone
    assert added and all("cairns" in name for name in added), added
    # The VPN server's delivery: metro-north's client-config-dir and allow entries go, cairns's come.
    assert changed == {"vpn-main-vpn-install"}, changed

    def vpn_files(regs: dict) -> dict[str, dict]:
        delivery = next(r for r in regs.values() if r.name == "vpn-main-vpn-install")
        return {f["path"]: f for f in json.loads(payload_of(delivery.inputs["stdin"]))["files"]}

    old, new = vpn_files(before), vpn_files(after)
    ccd, allow = facts.OPENVPN_CCD_DIR + "/", facts.OPENVPN_ALLOW_DIR + "/"
    assert set(old) - set(new) == {ccd + "metro-north", allow + "metro-north"}
    assert set(new) - set(old) == {ccd + "cairns", allow + "cairns"}
    assert all(new[p] == old[p] for p in set(old) & set(new))
