"""Researcher access in the program (components/researcher.py) under mocks: Keycloak and JupyterHub
are deliveries on their hosts; the realm and the hub share one client secret, kept secret; realm,
membership and image changes replace no VM; the port table still decides every rule."""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import pytest
from cryptography import x509
from harness import Run, before_and_after, changed_names, instances_unchanged, payload_of, run_program

from nina import facts

REMOTE_COMMAND = "command:remote:Command"
RANDOM_PASSWORD = "random:index/randomPassword:RandomPassword"


def _pulumi_config(raw: dict[str, Any]) -> dict[str, Any]:
    return {f"nina:{k}": v for k, v in raw.items()}


@pytest.fixture(scope="module")
def raw(researcher_raw) -> dict[str, Any]:
    return researcher_raw()


@pytest.fixture(scope="module")
def run(raw) -> Run:
    result = run_program(_pulumi_config(raw))
    assert result.error is None, result.error
    return result


def _delivery(run: Run, name: str):
    [found] = [r for r in run.of_type(REMOTE_COMMAND) if r.name == f"{name}-install"]
    return found


def _files(run: Run, name: str) -> dict[str, dict[str, Any]]:
    return {f["path"]: f for f in json.loads(payload_of(_delivery(run, name).inputs["stdin"]))["files"]}


def test_keycloak_and_jupyterhub_are_delivered_to_their_hosts_as_secret_stdin(run):
    names = {r.name.removesuffix("-install") for r in run.of_type(REMOTE_COMMAND) if r.name.endswith("-install")}
    assert {"gateway-proxy", "idp-keycloak", "hub-jupyterhub"} <= names
    for name in ("idp-keycloak", "hub-jupyterhub"):
        delivery = _delivery(run, name)
        assert "stdin" in delivery.secret_inputs, name
        assert "PRIVATE KEY" not in delivery.inputs["create"]


def test_the_realm_and_the_hub_hold_the_same_client_secret_which_is_secret(run):
    kc, hub = _files(run, "idp-keycloak"), _files(run, "hub-jupyterhub")
    realm = json.loads(kc[facts.KEYCLOAK_REALM_FILE]["content"])
    [client] = [c for c in realm["clients"] if c["clientId"] == facts.JUPYTERHUB_CLIENT_ID]
    settings_path = f"{facts.JUPYTERHUB_CONFIG}/{facts.JUPYTERHUB_SETTINGS_FILE}"
    oauth = json.loads(hub[settings_path]["content"])["traits"]["GenericOAuthenticator"]
    assert oauth["client_secret"] == client["secret"]
    assert len(client["secret"]) == facts.OIDC_CLIENT_SECRET_LENGTH
    # Made by pulumi-random, and secret wherever it is held.
    passwords = {r.name: r for r in run.of_type(RANDOM_PASSWORD)}
    assert passwords[f"{facts.JUPYTERHUB_CLIENT_ID}-oidc-client-secret"].outputs["result"] == client["secret"]
    for path in (facts.KEYCLOAK_REALM_FILE, facts.KEYCLOAK_ENV):
        assert kc[path]["mode"] == 0o600, path
    assert hub[settings_path]["mode"] & 0o007 == 0
    # Nothing of them in any VM's user-data.
    for name, data in run.user_data().items():
        for r in passwords.values():
            assert r.outputs["result"] not in data, (name, r.name)


def test_keycloak_and_the_hub_have_local_ca_certificates_for_their_names_and_addresses(run):
    certs = {r.name: r for r in run.of_type("tls:index/locallySignedCert:LocallySignedCert")}
    for service, host in (("keycloak", "idp"), ("jupyterhub", "hub")):
        parsed = x509.load_pem_x509_certificate(certs[f"{service}-cert"].outputs["certPem"].encode())
        sans = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        ip = next(h for h in run.outputs["hosts"].items() if h[0] == host)[1]["fixed_ip"]
        assert host in sans.get_values_for_type(x509.DNSName)
        assert ip in [str(a) for a in sans.get_values_for_type(x509.IPAddress)]


def test_the_researchers_outputs_name_the_public_urls_and_each_tenancys_connection(run):
    part = run.outputs["researcher_access"]
    assert part["urls"] == {"keycloak": "https://auth.fl.example.edu.au", "jupyterhub": "https://hub.fl.example.edu.au"}
    assert set(part["tenancies"]) == {"main", "beta"}
    assert not run.output_secret["researcher_access"]


def test_user_data_of_the_one_large_vm_with_researcher_access_fits_the_budget(raw):
    big = copy.deepcopy(raw)
    big["tenancies"] = big["tenancies"][:1]
    big["hosts"] = [{"name": "gateway", "roles": ["bastion", "proxy", "keycloak", "jupyterhub", "superlink"], "flavor": "m3.xlarge"}]
    result = run_program(_pulumi_config(big))
    assert result.error is None, result.error
    sizes = {name: len(base64.b64encode(data.encode())) for name, data in result.user_data().items()}
    assert max(sizes.values()) <= facts.USER_DATA_TARGET, sizes
    names = {r.name.removesuffix("-install") for r in result.of_type(REMOTE_COMMAND) if r.name.endswith("-install")}
    assert {"gateway-proxy", "gateway-keycloak", "gateway-jupyterhub", "gateway-superlink"} <= names


NEW_ORG = {"slug": "org-d", "name": "D", "placement": "cloud", "partition_id": 1, "cidr": "10.103.0.0/24"}


def test_membership_changes_leave_keycloak_and_the_hub_alone(raw):
    grown = copy.deepcopy(raw)
    grown["tenancies"][1]["organisations"].append(NEW_ORG)
    before, after = before_and_after(_pulumi_config(raw), _pulumi_config(grown), "test")
    instances_unchanged_except_new(before, after)
    gone, _added, changed = changed_names(before, after)
    assert not gone
    assert not {n for n in changed if n.startswith(("idp-", "gateway-proxy"))}, changed
    # The hub's firewall drops traffic to every organisation segment, so a new cloud
    # organisation changes its rules, and nothing else of the hub's delivery.
    old, new = _files(before, "hub-jupyterhub"), _files(after, "hub-jupyterhub")
    assert set(old) == set(new)
    assert {p for p in old if old[p] != new[p]} == {facts.NOTEBOOK_FIREWALL_BIN}


def test_a_new_tenancy_changes_the_realm_and_the_hub_in_place(raw):
    grown = copy.deepcopy(raw)
    grown["tenancies"].append({"name": "gamma", "organisations": [{**NEW_ORG, "partition_id": 0}]})
    before, after = before_and_after(_pulumi_config(raw), _pulumi_config(grown), "test")
    instances_unchanged_except_new(before, after)
    _gone, _added, changed = changed_names(before, after)
    assert {"idp-keycloak-install", "hub-jupyterhub-install"} <= changed
    realm = json.loads(_files(after, "idp-keycloak")[facts.KEYCLOAK_REALM_FILE]["content"])
    assert "tenancy-gamma" in {g["name"] for g in realm["groups"]}


def test_other_notebook_images_change_only_the_hubs_delivery(raw):
    other = copy.deepcopy(raw)
    other["researcher_access"]["notebook_images"] = ["quay.io/jupyter/scipy-notebook"]
    before, after = before_and_after(_pulumi_config(raw), _pulumi_config(other), "test")
    instances_unchanged(before, after)
    gone, added, changed = changed_names(before, after)
    assert not gone and not added
    assert changed == {"hub-jupyterhub-install"}, changed


def instances_unchanged_except_new(before: Run, after: Run) -> None:
    """No VM of `before` is replaced or changed (new ones may appear)."""
    old = {r.urn: r.inputs for r in before.of_type("openstack:compute/instance:Instance")}
    new = {r.urn: r.inputs for r in after.of_type("openstack:compute/instance:Instance")}
    assert set(old) <= set(new)
    for urn, inputs in old.items():
        assert new[urn] == inputs, urn


def test_researcher_rules_are_the_port_table_rows(run):
    """Keycloak only from nginx and the hub, the hub only from nginx, each SuperLink's Control API
    only from the hub (operators tunnel through the bastion to its loopback), nginx public."""
    by_target: dict[str, set[tuple[str, int]]] = {}
    for r in run.of_type("openstack:networking/secGroupRule:SecGroupRule"):
        source, _, rest = r.name.partition("->")
        zone, _proto, port = rest.rsplit("-", 2)
        by_target.setdefault(zone, set()).add((source, int(port)))
    assert by_target["keycloak"] == {("proxy", facts.KEYCLOAK_PORT), ("jupyterhub", facts.KEYCLOAK_PORT)}
    assert by_target["jupyterhub"] == {("proxy", facts.JUPYTERHUB_PORT)}
    for tenancy in ("main", "beta"):
        control = {s for s, p in by_target[f"superlink-{tenancy}"] if p == facts.SUPERLINK_CONTROL_PORT}
        assert control == {"jupyterhub"}, control
    assert by_target["proxy"] == {("public", facts.HTTPS_PORT), ("public", facts.HTTP_PORT)}


def test_postgres_admits_only_the_keycloak_host(run):
    idp = run.outputs["hosts"]["idp"]["fixed_ip"]
    assert run.outputs["database"]["allowed_cidrs"] == [f"{idp}/32"]


def test_a_tenancys_environment_change_updates_its_notebook_images_and_replaces_no_vm(raw, tmp_path, monkeypatch):
    """Another training environment for main (a lock committed beside the default: here the
    default's resolution under a header of its own, so no PyPI is needed) changes main's SuperLink
    and SuperNodes' deliveries and the hub's, whose plan builds main's images from the new lock;
    no VM and no user-data changes, and beta's images keep their tags."""
    from nina import environments

    default = environments.DEFAULT
    other = environments.Environment("tabular", packages=default.packages)
    text = environments.read_lock(default)
    (tmp_path / default.lock_file).write_text(text)
    (tmp_path / other.lock_file).write_text(environments.header(other) + text.removeprefix(environments.header(default)))
    monkeypatch.setattr(environments, "LOCK_DIR", tmp_path)
    changed_raw = copy.deepcopy(raw)
    changed_raw["training_environments"] = {"tabular": {"packages": list(other.packages)}}
    changed_raw["tenancies"][0]["training_environment"] = "tabular"
    before, after = before_and_after(_pulumi_config(raw), _pulumi_config(changed_raw), "test")
    instances_unchanged(before, after)
    assert before.user_data() == after.user_data()
    gone, added, changed = changed_names(before, after)
    assert not gone and not added
    assert "hub-jupyterhub-install" in changed
    assert {n for n in changed if n != "hub-jupyterhub-install" and not n.endswith(("-superlink-install", "-supernode-install"))} == set()
    old, new = _files(before, "hub-jupyterhub"), _files(after, "hub-jupyterhub")
    old_builds = {(b["tenancy"], b["base"]): b["image"] for b in json.loads(old[facts.JUPYTERHUB_DOCKER_PLAN]["content"])["builds"]}
    new_builds = {(b["tenancy"], b["base"]): b["image"] for b in json.loads(new[facts.JUPYTERHUB_DOCKER_PLAN]["content"])["builds"]}
    assert set(old_builds) == set(new_builds)
    assert {k for k in old_builds if old_builds[k] != new_builds[k]} == {k for k in old_builds if k[0] == "main"}
    lock = environments.read_lock(other)
    assert {p for p, f in new.items() if p.startswith(f"{facts.JUPYTERHUB_BUILDS}/main/") and f["content"] == lock}
    assert all(f["content"] != lock for p, f in new.items() if p.startswith(f"{facts.JUPYTERHUB_BUILDS}/beta/"))
