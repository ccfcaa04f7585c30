"""Replacing one organisation's kit with one config change (issue 10, "revocation that works").

The real program under the mock harness, for the five-organisation `uat` of test_membership.
Raising `kit_generation` of one on-premise organisation (sunshine-coast), of the cloud
organisation (qimr-lab) and of the one that keeps its own keys (townsville) gives each new keys
and certificates: new resource names, so `pulumi up` makes new ones and deletes the old. The VPN
hub's allow-list then names only the new certificate and tls-crypt-v2 key (the old ones are
refused: test_vpn_tunnel.py, real OpenVPN), and the registration re-registers the new SuperNode
key (the old one is refused: test_rehearse.py, real flwr). No other organisation's kit, and no
VM, changes.
"""

from __future__ import annotations

import copy
import io
import json
import tarfile
from typing import Any

import pytest
from harness import Run, before_and_after, changed_names, instances_unchanged, payload_of
from test_membership import exported, grown_uat

from nina import facts
from nina.kit import build_kit

REPLACED = ("sunshine-coast", "qimr-lab", "townsville")
UNTOUCHED = ("metro-north", "gold-coast")


def replaced(config: dict[str, Any]) -> dict[str, Any]:
    config = copy.deepcopy(config)
    for org in config["nina:organisations"]:
        if org["slug"] in REPLACED:
            org["kit_generation"] = 2
    return config


@pytest.fixture(scope="module")
def runs() -> tuple[Run, Run]:
    return before_and_after(grown_uat(), replaced(grown_uat()), "uat")


def kit_files(kit: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(kit), mode="r:gz") as tar:
        return {m.name.split("/", 1)[1]: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]


def test_other_kits_are_byte_identical_and_the_replaced_ones_are_new(runs):
    before, after = (exported(r) for r in runs)
    for slug in UNTOUCHED:
        assert build_kit(after, slug) == build_kit(before, slug), slug
    secret = lambda doc, table, slug: doc[table].get(slug)  # noqa: E731
    for slug in REPLACED:
        old, new = kit_files(build_kit(before, slug)), kit_files(build_kit(after, slug))
        assert old != new, slug
        org_b, org_a = (d["tenancies"]["main"]["organisations"][slug] for d in (before, after))
        # Same place in the federation: partition and address stay.
        assert (org_a["partition_id"], org_a["vpn_address"]) == (org_b["partition_id"], org_b["vpn_address"])
        if org_b["placement"] == "onprem":
            assert org_a["vpn_client_cert_pem"] != org_b["vpn_client_cert_pem"], slug
            assert secret(after, "vpn_tls_crypt_v2_keys", slug) != secret(before, "vpn_tls_crypt_v2_keys", slug)
            path = f"{facts.OPENVPN_CLIENT_CERTS.lstrip('/')}/private/{facts.OPENVPN_TLS_CRYPT_V2_CLIENT_FILE}"
            assert old[path] != new[path]
        if org_b["keys_held_by_organisation"]["supernode"]:
            # Its SuperNode key is its own: nina cannot replace it (the organisation sends a new one).
            assert org_a["supernode_public_key_openssh"] == org_b["supernode_public_key_openssh"]
        else:
            assert org_a["supernode_public_key_openssh"] != org_b["supernode_public_key_openssh"], slug
            assert secret(after, "supernode_private_keys", slug) != secret(before, "supernode_private_keys", slug)
        if org_b["keys_held_by_organisation"]["vpn"]:
            assert slug not in after["vpn_client_private_keys"]  # re-signed from its own CSR
        elif org_b["placement"] == "onprem":
            assert after["vpn_client_private_keys"][slug] != before["vpn_client_private_keys"][slug]


def test_no_vm_is_replaced(runs):
    assert len(instances_unchanged(*runs)) == 4


def test_only_the_replaced_organisations_resources_change(runs):
    before, after = ({r.urn: r for r in run.registrations} for run in runs)
    gone, added, changed = changed_names(*runs)
    assert gone and all(any(slug in name for slug in REPLACED) for name in gone), gone
    assert added and all(any(f"{slug}-g2" in name for slug in REPLACED) for name in added), added
    assert {n.replace("-g2", "") for n in added} == gone
    # townsville registers its own key, which did not change: its registration stays.
    assert changed == {
        "vpn-main-vpn-install",
        "sunshine-coast-registration-register",
        "qimr-lab-registration-register",
        "supernode-qimr-lab-supernode-install",
    }, changed

    def vpn_files(regs: dict) -> dict[str, str]:
        delivery = next(r for r in regs.values() if r.name == "vpn-main-vpn-install")
        return {f["path"]: f["content"] for f in json.loads(payload_of(delivery.inputs["stdin"]))["files"]}

    old, new = vpn_files(before), vpn_files(after)
    assert set(old) == set(new)
    # Only the allow entries of the on-premise organisations replaced: nothing restarts, they alone are disconnected.
    assert {p for p in old if old[p] != new[p]} == {f"{facts.OPENVPN_ALLOW_DIR}/sunshine-coast", f"{facts.OPENVPN_ALLOW_DIR}/townsville"}
