"""The real Pulumi program (`__main__.py`) under mocks, for the repo's stack files and variants."""

from __future__ import annotations

import base64
import copy
import json
import re

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from harness import INSTANCE, Run, run_program, stack_config

from nina import facts, localpki, pem, tlscrypt
from nina.config import load_config
from nina.firewall import NEVER_OPEN, PER_TENANCY_ZONES, PORT_TABLE
from nina.plan import build_plan

RULE = "openstack:networking/secGroupRule:SecGroupRule"
SECGROUP = "openstack:networking/secGroup:SecGroup"
REMOTE_COMMAND = "command:remote:Command"
PRIVATE_KEY = "tls:index/privateKey:PrivateKey"
CERT_TYPES = {
    "tls:index/selfSignedCert:SelfSignedCert",
    "tls:index/locallySignedCert:LocallySignedCert",
    "tls:index/certRequest:CertRequest",
    PRIVATE_KEY,
}
# Resources whose inputs must not change when only membership changes.
STABLE_TYPES = CERT_TYPES | {
    INSTANCE,
    RULE,
    SECGROUP,
    "openstack:networking/network:Network",
    "openstack:networking/subnet:Subnet",
    "openstack:networking/port:Port",
    "openstack:networking/router:Router",
    "openstack:blockstorage/volume:Volume",
    "openstack:compute/volumeAttach:VolumeAttach",
    "openstack:database/instance:Instance",
    "openstack:compute/keypair:Keypair",
}
KEY_MARKERS = re.compile(r"PRIVATE KEY|OPENSSH|BEGIN CERTIFICATE")


def nina_namespace(config: dict) -> dict:
    return {k.split(":", 1)[1]: v for k, v in config.items() if k.startswith("nina:")}


def with_org(config: dict, org: dict) -> dict:
    new = copy.deepcopy(config)
    new["nina:organisations"] = [*new["nina:organisations"], org]
    return new


@pytest.fixture(scope="module")
def test_run() -> Run:
    run = run_program(stack_config("test"), "test")
    assert run.error is None, run.error
    return run


@pytest.fixture(scope="module")
def uat_run() -> Run:
    run = run_program(stack_config("uat"), "uat")
    assert run.error is None, run.error
    return run


# --- security groups --------------------------------------------------------------------


def _rules(run: Run) -> set[tuple]:
    return {
        (
            r.name,
            r.inputs["protocol"],
            r.inputs["portRangeMin"],
            r.inputs["portRangeMax"],
            r.inputs.get("remoteIpPrefix"),
            bool(r.inputs.get("remoteGroupId")),
        )
        for r in run.of_type(RULE)
    }


def test_test_stack_rules_are_exactly_the_port_table_rows_that_apply(test_run):
    # Written out by hand from manual 3.3.1 for Pulumi.test.yaml: bastion only shared host,
    # one SuperLink, two cloud organisations. An oracle independent of nina.plan.
    admin = "203.0.113.0/24"
    assert _rules(test_run) == {
        ("admin-203.0.113.0_24->bastion-tcp-22", "tcp", 22, 22, admin, False),
        ("bastion->managed-tcp-22", "tcp", 22, 22, None, True),
        ("org-test-org-a->superlink-main-tcp-9092", "tcp", 9092, 9092, "10.101.0.0/24", False),
        ("org-test-org-b->superlink-main-tcp-9092", "tcp", 9092, 9092, "10.102.0.0/24", False),
    }


def test_uat_fleet_api_is_open_only_to_the_tenancys_vpn_server(uat_run):
    # The OpenVPN server masquerades its pool onto the server segment (manual 4.1.2.4.1) and
    # forwards nothing from the pool but the Fleet port, so the SuperLink admits its group.
    fleet = [r for r in uat_run.of_type(RULE) if r.inputs["portRangeMin"] == facts.SUPERLINK_FLEET_PORT]
    assert [r.name for r in fleet] == ["vpn-main->superlink-main-tcp-9092"]
    assert fleet[0].inputs["remoteGroupId"] == "sg-vpn-main-id" and not fleet[0].inputs.get("remoteIpPrefix")
    vpn = {r.name for r in uat_run.of_type(RULE) if "->vpn-main-" in r.name}
    assert vpn == {"public->vpn-main-udp-1194", "public->vpn-main-tcp-443"}


def test_every_declared_rule_comes_from_the_port_table_and_nothing_is_world_open_unless_public():
    # A fuller config: all shared roles, two tenancies, cloud and on-premise organisations.
    cfg = nina_namespace(stack_config("test"))
    cfg["hosts"] = [
        {"name": "gateway", "roles": ["bastion", "proxy"]},
        {"name": "services", "roles": ["keycloak", "jupyterhub"]},
        {"name": "monitor", "roles": ["monitoring"]},
    ]
    cfg["supernode"] = {"gpu_flavor": "reservation:abc"}
    orgs = cfg.pop("organisations")
    orgs[1]["gpu"] = True
    cfg["tenancies"] = [
        {"name": "alpha", "organisations": orgs},
        {"name": "beta", "organisations": [{"slug": "hospital-c", "name": "C", "placement": "onprem", "partition_id": 0}]},
    ]
    run = run_program({f"nina:{k}": v for k, v in cfg.items()})
    assert run.error is None, run.error
    table = {(f.to, f.protocol, f.port) for f in PORT_TABLE}
    public = {(f.to, f.protocol, f.port) for f in PORT_TABLE if "public" in f.sources}
    groups = {r.name: r.inputs["name"] for r in run.of_type(SECGROUP)}
    assert run.of_type(RULE)
    for r in run.of_type(RULE):
        zone = r.name.split("->", 1)[1].rsplit("-", 2)[0]
        zone = zone.split("-", 1)[0] if zone.startswith(PER_TENANCY_ZONES) else zone
        key = (zone, r.inputs["protocol"], r.inputs["portRangeMin"])
        assert key in table, f"{r.name} is not in the port table"
        assert r.inputs["portRangeMin"] not in NEVER_OPEN
        if r.inputs.get("remoteIpPrefix") == "0.0.0.0/0":
            assert key in public, f"{r.name} is world-open but the table does not say public"
        assert r.inputs.get("remoteIpPrefix") or r.inputs.get("remoteGroupId"), r.name
    names = {r.name for r in run.of_type(RULE)}
    # Control API: the researcher-facing host only (operators tunnel through the bastion, so no
    # rule from the admin CIDRs, which could never match a private address); Fleet of tenancy
    # beta: VPN pool only.
    assert {n for n in names if n.endswith("-tcp-9093")} == {
        "jupyterhub->superlink-alpha-tcp-9093",
        "jupyterhub->superlink-beta-tcp-9093",
    }
    assert {n for n in names if n.endswith("superlink-beta-tcp-9092")} == {"vpn-beta->superlink-beta-tcp-9092"}
    assert "monitoring->gpu-tcp-9400" in names and "public->proxy-tcp-443" in names and "public->proxy-tcp-80" in names
    assert set(groups) == {
        f"sg-{z}"
        for z in (
            "bastion",
            "gpu",
            "jupyterhub",
            "keycloak",
            "managed",
            "monitoring",
            "proxy",
            "superlink-alpha",
            "superlink-beta",
            "vpn-beta",
        )
    }
    # The database allow-list is the two hosts that use it, not the segment.
    plan = build_plan(load_config(cfg))
    assert plan.database_allowed_cidrs == ("10.100.0.11/32", "10.100.0.12/32")


def test_rules_are_replaced_delete_first(test_run):
    assert all(r.delete_before_replace for r in test_run.of_type(RULE))


# --- secrets ------------------------------------------------------------------------------


def test_private_keys_and_passwords_are_secret_outputs(test_run):
    for name in ("supernode_private_keys", "database_passwords", "ops_ssh_private_key", "platform_signing_private_key_pem"):
        assert test_run.output_secret[name], name
    assert set(test_run.outputs["supernode_private_keys"]) == {"test-org-a", "test-org-b"}
    assert all("OPENSSH PRIVATE KEY" in v for v in test_run.outputs["supernode_private_keys"].values())
    for name in ("environment", "ca_cert_pem", "platform_signing_key", "tenancies", "hosts", "database"):
        assert not test_run.output_secret[name], f"{name} should stay readable"
        assert "PRIVATE KEY" not in repr(test_run.outputs[name])


def test_the_platform_signing_key_is_protected_and_its_fingerprint_public(test_run):
    (key,) = [r for r in test_run.of_type(PRIVATE_KEY) if r.name == "platform-signing-key"]
    assert key.inputs["algorithm"] == "ECDSA" and key.inputs["ecdsaCurve"] == "P384"
    assert key.protect
    public = test_run.outputs["platform_signing_key"]
    assert public["public_key_pem"] == key.outputs["publicKeyPem"]
    assert public["sha256"] == pem.public_key_sha256(key.outputs["publicKeyPem"])
    assert test_run.outputs["platform_signing_private_key_pem"] == key.outputs["privateKeyPem"]


def test_tls_private_keys_are_secret_in_state(test_run):
    # Whatever consumes a private key receives it as a secret input.
    consumers = [
        r
        for r in test_run.registrations
        if r.type
        in ("tls:index/certRequest:CertRequest", "tls:index/locallySignedCert:LocallySignedCert", "tls:index/selfSignedCert:SelfSignedCert")
    ]
    assert consumers
    for r in consumers:
        key_inputs = {k for k in r.inputs if k in ("privateKeyPem", "caPrivateKeyPem")}
        assert key_inputs and key_inputs <= r.secret_inputs, r.name


def test_deliveries_pass_keys_only_as_secret_stdin(test_run):
    deliveries = [r for r in test_run.of_type(REMOTE_COMMAND) if r.name.endswith("-install")]
    # One `<host>-base` per host (gateway, SuperLink, two cloud SuperNodes), one per service.
    assert sorted(r.name.removesuffix("-install") for r in deliveries) == [
        "gateway-base",
        "superlink-main-base",
        "superlink-main-superlink",
        "supernode-test-org-a-base",
        "supernode-test-org-a-supernode",
        "supernode-test-org-b-base",
        "supernode-test-org-b-supernode",
    ]
    for r in deliveries:
        assert "stdin" in r.secret_inputs
        assert "PRIVATE KEY" not in r.inputs["create"]
        assert "privateKey" in r.inputs["connection"]


# --- user-data ----------------------------------------------------------------------------


def test_user_data_holds_no_key_material_or_password(test_run):
    secrets = []
    for key in test_run.of_type(PRIVATE_KEY):
        secrets += [key.outputs["privateKeyPem"], key.outputs["privateKeyOpenssh"]]
    secrets += [r.outputs["result"] for r in test_run.of_type("random:index/randomPassword:RandomPassword")]
    assert len(secrets) == 2 * 6 + 2  # CA, platform signing key, SuperLink leaf, ops, two SuperNodes; two DB passwords
    # Compare on the base64 body lines of keys, so a reformatted copy is still caught.
    needles = {line for s in secrets for line in s.splitlines() if len(line) >= 16 and "-----" not in line}
    for name, data in test_run.user_data().items():
        assert not KEY_MARKERS.search(data), f"{name}: key material in user-data"
        leaked = [n for n in needles if n in data]
        assert not leaked, f"{name}: secret material in user-data"


def test_user_data_fits_nova_limit(test_run):
    for name, data in test_run.user_data().items():
        assert len(base64.b64encode(data.encode())) <= facts.NOVA_USER_DATA_LIMIT, name


def test_two_runs_give_byte_identical_user_data(test_run):
    again = run_program(stack_config("test"), "test")
    assert again.user_data() == test_run.user_data()
    assert len(test_run.user_data()) == 4


# --- membership changes -------------------------------------------------------------------


def _inputs_by_urn(run: Run) -> dict[str, tuple[str, dict]]:
    return {r.urn: (r.type, r.inputs) for r in run.registrations}


NEW_ORG = {"slug": "test-org-c", "name": "Test Organisation C", "placement": "cloud", "partition_id": 2, "cidr": "10.103.0.0/24"}


def test_adding_an_organisation_changes_no_existing_vm_network_group_or_certificate(test_run):
    grown = run_program(with_org(stack_config("test"), NEW_ORG))
    assert grown.error is None, grown.error
    before, after = _inputs_by_urn(test_run), _inputs_by_urn(grown)
    assert set(before) <= set(after), "adding an organisation deleted something"
    changed = {urn for urn in before if before[urn][1] != after[urn][1]}
    # Nothing that exists changes, not even another SuperNode's delivered files: they carry
    # nothing about the rest of the membership (no partition count).
    assert not changed, changed
    added = set(after) - set(before)
    assert any("test-org-c-registration" in urn for urn in added)
    assert any(urn.endswith("::supernode-test-org-c") and after[urn][0] == INSTANCE for urn in added)


def test_removing_an_organisation_drops_its_registration_and_changes_no_other_vm(test_run):
    cfg = stack_config("test")
    cfg = {**cfg, "nina:organisations": cfg["nina:organisations"][:1]}
    shrunk = run_program(cfg)
    assert shrunk.error is None, shrunk.error
    before, after = _inputs_by_urn(test_run), _inputs_by_urn(shrunk)
    gone = set(before) - set(after)
    assert any("test-org-b-registration-register" in urn for urn in gone)
    registration = next(r for r in test_run.registrations if r.name == "test-org-b-registration-register")
    assert "unregister test-org-b" in registration.inputs["delete"]
    for urn in set(before) & set(after):
        if before[urn][0] in STABLE_TYPES:
            assert before[urn][1] == after[urn][1], urn


# --- placement, options, conventions -----------------------------------------------------


def test_everything_is_in_one_availability_zone(test_run, uat_run):
    for run in (test_run, uat_run):
        zoned = [r for r in run.registrations if "availabilityZone" in r.inputs]
        assert {r.inputs["availabilityZone"] for r in zoned} == {facts.DEFAULT_AVAILABILITY_ZONE}
        assert {r.type for r in zoned} >= {INSTANCE, "openstack:blockstorage/volume:Volume"}
        for router in run.of_type("openstack:networking/router:Router"):
            assert router.inputs["availabilityZoneHints"] == [facts.DEFAULT_AVAILABILITY_ZONE]


def test_vms_release_ports_before_replacement_and_state_is_protected(test_run):
    assert all(r.delete_before_replace for r in test_run.of_type(INSTANCE))
    assert all(r.delete_before_replace for r in test_run.of_type("openstack:compute/volumeAttach:VolumeAttach"))
    assert all(r.protect for r in test_run.of_type("openstack:blockstorage/volume:Volume"))
    ca = [r for r in test_run.registrations if r.name in ("ca-key", "ca-cert")]
    assert len(ca) == 2 and all(r.protect for r in ca)
    # Each VM is attached to its pre-created port with the planned fixed address.
    ports = {r.name: r.inputs for r in test_run.of_type("openstack:networking/port:Port")}
    assert ports["superlink-main-port"]["fixedIps"][0]["ipAddress"] == "10.100.0.40"
    for vm in test_run.of_type(INSTANCE):
        assert vm.inputs["networks"] == [{"port": f"{vm.name}-port-id"}]


def test_every_resource_has_a_nina_component_parent(test_run):
    components = {r.urn for r in test_run.registrations if not r.custom}
    assert all(r.type.startswith("nina:") for r in test_run.registrations if not r.custom)
    for r in test_run.registrations:
        if r.custom:
            assert r.parent in components, f"{r.name} is not parented to a component"


def test_the_platform_only_wires_components(test_run, uat_run):
    # Components declare the resources; the Platform's own children are components.
    for run in (test_run, uat_run):
        (platform,) = run.of_type("nina:platform:Platform")
        children = [r for r in run.registrations if r.parent == platform.urn]
        assert children and not [r.name for r in children if r.custom]
        assert {r.type for r in children} >= {"nina:flower:Tenancy", "nina:compute:Host", "nina:flower:FileDelivery"}


def test_no_vm_waits_on_another_vm_or_a_certificate_and_chains_are_short(test_run, uat_run):
    for run in (test_run, uat_run):
        for vm in run.of_type(INSTANCE):
            upstream = {run.by_urn[u].type for u in run.upstream(vm.urn)}
            assert INSTANCE not in upstream and not (upstream & (CERT_TYPES - {PRIVATE_KEY})), vm.name
            assert run.chain_length(vm.urn) <= 4, vm.name


def test_invalid_config_stops_with_one_message_and_declares_nothing():
    cfg = stack_config("test")
    cfg["nina:network"] = {**cfg["nina:network"], "admin_cidrs": ["0.0.0.0/0"]}
    run = run_program(cfg)
    assert run.error is not None
    assert "nina:network.admin_cidrs[0]" in run.error and "allow_ssh_from_anywhere" in run.error
    assert "Traceback" not in run.error
    assert not [r for r in run.registrations if r.custom]


def test_stack_outputs_are_the_site_kit_contract(test_run, uat_run):
    tenancy = test_run.outputs["tenancies"]["main"]
    assert tenancy["superlink"]["fleet_address"] == "10.100.0.40:9092"
    assert tenancy["superlink"]["control_address"] == "10.100.0.40:9093"
    orgs = tenancy["organisations"]
    assert {s: (o["partition_id"], o["placement"]) for s, o in orgs.items()} == {"test-org-a": (0, "cloud"), "test-org-b": (1, "cloud")}
    assert not {k for o in orgs.values() for k in o if "num" in k or "count" in k}  # nothing membership-wide
    assert all(o["supernode_public_key_openssh"].startswith("ecdsa-sha2-nistp384 ") for o in orgs.values())
    assert test_run.outputs["hosts"]["gateway"]["floating_ip"]
    assert test_run.outputs["hosts"]["superlink-main"]["floating_ip"] is None
    assert test_run.outputs["ca_cert_pem"].startswith("-----BEGIN CERTIFICATE-----")
    uat_orgs = uat_run.outputs["tenancies"]["main"]["organisations"]
    assert {o["placement"] for o in uat_orgs.values()} == {"onprem"}
    assert set(uat_run.outputs["supernode_private_keys"]) == set(uat_orgs)


@pytest.mark.parametrize("stack", ["test", "uat"])
def test_the_programs_outputs_read_with_the_outputs_schema(stack, test_run, uat_run):
    # The document Platform writes (Pulumi Outputs resolved by the mocks) is what nina.outputs
    # reads: the kit exporter would take it as it is.
    from nina import outputs

    run = {"test": test_run, "uat": uat_run}[stack]
    doc = outputs.read(run.outputs)
    assert {slug for _, slug, _ in doc.organisations()} == set(run.outputs["supernode_private_keys"])


def _shape(value):
    """Keys and value kinds, not values: what a reader of the outputs relies on."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return sorted({json.dumps(_shape(v), sort_keys=True) for v in value})
    return type(value).__name__


def test_rehearsal_outputs_have_the_programs_shape(uat_run, reh_uat_plan):
    # The rehearsal builds its kits from outputs it assembles itself; they must be the real
    # program's outputs in all but values (no database in a rehearsal).
    from nina.rehearse import build_pki, stack_outputs

    rehearsed = stack_outputs(reh_uat_plan, build_pki(reh_uat_plan))
    real = uat_run.outputs
    assert set(rehearsed) == set(real)
    for key in set(real) - {"database", "database_passwords"}:
        assert _shape(rehearsed[key]) == _shape(real[key]), key
    assert set(rehearsed["tenancies"]["main"]["organisations"]) == set(real["tenancies"]["main"]["organisations"])


# --- the OpenVPN hub (stack uat) -----------------------------------------------------------


def test_uat_declares_a_vpn_server_that_routes_its_pool(uat_run):
    vms = {r.name for r in uat_run.of_type(INSTANCE)}
    assert vms == {"gateway", "superlink-main", "vpn-main"}
    port = next(r for r in uat_run.of_type("openstack:networking/port:Port") if r.name == "vpn-main-port")
    assert port.inputs["allowedAddressPairs"] == [{"ipAddress": "192.168.99.0/24"}]
    (route,) = uat_run.of_type("openstack:networking/routerRoute:RouterRoute")
    assert (route.inputs["destinationCidr"], route.inputs["nextHop"]) == ("192.168.99.0/24", "10.110.0.70")
    assert any(r.name == "vpn-main-fip" for r in uat_run.of_type("openstack:networking/floatingIp:FloatingIp"))


def test_uat_outputs_carry_each_organisations_vpn_material(uat_run):
    tenancy = uat_run.outputs["tenancies"]["main"]
    v = tenancy["vpn"]
    assert (v["udp_port"], v["tcp_port"], v["pool_cidr"], v["server_ip"], v["server_name"]) == (
        1194,
        443,
        "192.168.99.0/24",
        "192.168.99.1",
        "vpn-main",
    )
    assert v["public_ip"] and v["routes"] == ["10.110.0.0/24"]
    orgs = tenancy["organisations"]
    assert {s: o["vpn_address"] for s, o in orgs.items()} == {"metro-north": "192.168.99.10", "gold-coast": "192.168.99.11"}
    for slug, org in orgs.items():
        cert = x509.load_pem_x509_certificate(org["vpn_client_cert_pem"].encode())
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == slug
    assert uat_run.output_secret["vpn_client_private_keys"] and uat_run.output_secret["vpn_tls_crypt_v2_keys"]
    assert set(uat_run.outputs["vpn_client_private_keys"]) == set(orgs) == set(uat_run.outputs["vpn_tls_crypt_v2_keys"])
    # Each organisation its own tls-crypt-v2 key, wrapped with the hub's server key (the one delivered).
    server_key = next(
        f["content"]
        for f in json.loads(next(r for r in uat_run.registrations if r.name == "vpn-main-vpn-install").inputs["stdin"])["payload"]["files"]
        if f["path"].endswith("/" + facts.OPENVPN_TLS_CRYPT_V2_SERVER_FILE)
    )
    keys = uat_run.outputs["vpn_tls_crypt_v2_keys"]
    assert len(set(keys.values())) == len(keys)
    for slug, key in keys.items():
        assert tlscrypt.unwrap(server_key, key)[1] == b"\x00nina-fl " + f"{slug} {tlscrypt.client_key_id(key)}".encode()


def test_removing_an_onprem_organisation_removes_its_vpn_entry_and_registration_only(uat_run):
    cfg = stack_config("uat")
    cfg = {**cfg, "nina:organisations": cfg["nina:organisations"][:1]}
    shrunk = run_program(cfg, "uat")
    assert shrunk.error is None, shrunk.error
    before, after = _inputs_by_urn(uat_run), _inputs_by_urn(shrunk)
    gone = {urn.rsplit("::", 1)[1] for urn in set(before) - set(after)}
    assert "gold-coast-registration-register" in gone and "vpn-client-gold-coast-cert" in gone
    assert not {n for n in gone if before_type(uat_run, n) in (INSTANCE, RULE, SECGROUP)}
    for urn in set(before) & set(after):
        if before[urn][0] in STABLE_TYPES:
            assert before[urn][1] == after[urn][1], urn
    # The VPN server's delivered files change: gold-coast's client-config-dir and allow entries are gone.
    old = next(r for r in uat_run.registrations if r.name == "vpn-main-vpn-install").inputs["stdin"]
    new = next(r for r in shrunk.registrations if r.name == "vpn-main-vpn-install").inputs["stdin"]
    old_paths = {f["path"] for f in json.loads(old)["payload"]["files"]}
    new_paths = {f["path"] for f in json.loads(new)["payload"]["files"]}
    assert old_paths - new_paths == {f"{facts.OPENVPN_CCD_DIR}/gold-coast", f"{facts.OPENVPN_ALLOW_DIR}/gold-coast"}
    assert {facts.OPENVPN_CCD_DIR, facts.OPENVPN_ALLOW_DIR} <= set(json.loads(new)["payload"].get("prune", []))


def before_type(run: Run, name: str) -> str:
    return next(r.type for r in run.registrations if r.name == name)


def test_an_organisation_that_keeps_its_keys_has_none_in_the_stack():
    key = localpki.generate_key()
    csr = localpki.cert_request(key.private_key_pem, {"common_name": "gold-coast"})
    cfg = stack_config("uat")
    orgs = copy.deepcopy(cfg["nina:organisations"])
    orgs[1].update(vpn_csr_pem=csr, supernode_public_key=key.public_key_openssh)
    run = run_program({**cfg, "nina:organisations": orgs}, "uat")
    assert run.error is None, run.error
    assert "gold-coast" not in run.outputs["supernode_private_keys"]
    assert "gold-coast" not in run.outputs["vpn_client_private_keys"]
    org = run.outputs["tenancies"]["main"]["organisations"]["gold-coast"]
    assert org["keys_held_by_organisation"] == {"vpn": True, "supernode": True}
    assert org["supernode_public_key_openssh"] == key.public_key_openssh
    cert = x509.load_pem_x509_certificate(org["vpn_client_cert_pem"].encode())
    assert cert.public_key() == x509.load_pem_x509_csr(csr.encode()).public_key()  # the CSR's key, signed
    registration = next(r for r in run.registrations if r.name == "gold-coast-registration-register")
    assert registration.inputs["stdin"] == key.public_key_openssh
    assert not [r for r in run.registrations if r.name.startswith(("vpn-client-gold-coast-key", "supernode-gold-coast-auth"))]


def test_every_delivery_refuses_a_host_whose_bootstrap_failed(test_run, uat_run):
    """No remote create runs before the guard: it waits for first boot and refuses a host
    without the bootstrap marker (the boot lab shows it refusing a host whose pip failed)."""
    from nina import render

    for run in (test_run, uat_run):
        commands = run.of_type(REMOTE_COMMAND)
        assert commands
        for cmd in commands:
            assert cmd.inputs["create"].startswith(render.bootstrap_guard() + "\n"), cmd.name
            assert "|| true" not in cmd.inputs["create"], cmd.name


def test_editing_host_programs_units_and_run_scripts_replaces_no_vm(test_run, uat_run, monkeypatch):
    """Host programs, units and run scripts travel with the deliveries: editing any of them changes
    delivery commands only, never an Instance (whose user-data change would replace the VM)."""
    from nina import render, vpn

    edited = {rel: src + "# edited\n" for rel, src in render.host_programs().items()}
    monkeypatch.setattr(render, "host_programs", lambda: edited)
    receive_argv = render.receive_argv  # the receiver, in every delivery's command

    def edited_receiver(lib, program):
        argv = receive_argv(lib, program)
        return [*argv[:3], argv[3] + "# edited\n", *argv[4:]]

    monkeypatch.setattr(render, "receive_argv", edited_receiver)
    for name in ("run_superlink_sh", "superlink_service", "run_supernode_sh", "supernode_service"):
        original = getattr(render, name)
        monkeypatch.setattr(render, name, lambda f=original: f() + "# edited\n")
    for name in ("forwarding_script", "forwarding_unit", "openvpn_server_dropin"):
        original = getattr(vpn, name)
        monkeypatch.setattr(vpn, name, lambda *a, f=original: f(*a) + "# edited\n")
    for stack, base in (("test", test_run), ("uat", uat_run)):
        run = run_program(stack_config(stack), stack)
        assert run.error is None, run.error
        before, after = _inputs_by_urn(base), _inputs_by_urn(run)
        assert set(before) == set(after)
        changed = {urn for urn in before if before[urn][1] != after[urn][1]}
        assert not {urn for urn in changed if before[urn][0] in STABLE_TYPES}, changed
        deliveries = {urn for urn in before if before[urn][0] == REMOTE_COMMAND and "nina:flower:FileDelivery$" in urn}
        assert changed == deliveries, changed ^ deliveries  # every delivery carries the programs, nothing else moved


def test_user_data_is_small_and_carries_no_delivered_program(test_run, uat_run):
    """No delivered program is in any user-data, and every host's user-data (base64, as Nova
    counts it) is within the 16 KiB target: the test and uat stacks, and the manual's "one large
    VM" (bastion, proxy, Keycloak, JupyterHub and SuperLink on one host) run through the program."""
    from conftest import render_raw_configs

    from nina import render

    all_in_one = run_program({f"nina:{k}": v for k, v in render_raw_configs()["all-in-one"].items()}, "test")
    assert all_in_one.error is None, all_in_one.error
    sizes = {}
    receiver = render.receive_argv("/lib", "install_files")[3]
    for stack, run in (("test", test_run), ("uat", uat_run), ("all-in-one", all_in_one)):
        for name, data in run.user_data().items():
            sizes[f"{stack}/{name}"] = len(base64.b64encode(data.encode()))
            for rel in render.host_programs():
                if rel.startswith("nina/host/") and not rel.endswith("__init__.py"):
                    assert render.host_programs()[rel] not in data, (name, rel)
            assert receiver not in data and "def install(lib" not in data, name
    assert "all-in-one/gateway" in sizes and len(sizes) >= 11, sizes
    over = {name: size for name, size in sizes.items() if size > facts.USER_DATA_TARGET}
    assert not over, f"over the {facts.USER_DATA_TARGET}-byte target: {over}"
