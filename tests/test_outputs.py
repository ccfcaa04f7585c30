"""The stack outputs schema (nina.outputs): one definition that writes and reads the document.

The document here is the kit fixture's (conftest `kit_built`: real PKI, built with the same
writer functions as components/platform.py); tests/test_program.py reads the mock program's
own outputs with the schema, and tests/test_kit.py covers the kit's messages per mutation.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nina import localpki, outputs


def _walk(value, prefix=()):
    """(path, value) for every key of every object in a parsed JSON document."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield (*prefix, k), v
            yield from _walk(v, (*prefix, k))


def _get(doc, path):
    for key in path:
        doc = doc[key]
    return doc


def test_the_writers_document_reads_back_unchanged(kit_built):
    doc = outputs.read(kit_built.outputs)
    # Same values in, same values out: the reader normalises nothing the writer wrote.
    assert json.loads(doc.model_dump_json()) == json.loads(json.dumps(kit_built.outputs))


def test_every_removed_key_is_named_with_the_kind_it_needs(kit_built):
    # For each key of the document (secret maps' own entries aside, which are checked per
    # organisation): removing it gives one problem at its path that says what it should hold.
    checked = nullable_checked = 0
    for path, _ in list(_walk(kit_built.outputs)):
        if path[0] in outputs.SECRET_KEYS and len(path) > 1:
            continue
        if len(path) > 1 and path[-2] in ("tenancies", "organisations", "hosts"):
            continue  # a whole tenancy/organisation/host: its absence is valid
        doc = copy.deepcopy(kit_built.outputs)
        del _get(doc, path[:-1])[path[-1]]
        if len(path) == 1 and path[0] in outputs.NULLABLE_TOP_LEVEL:
            # Pulumi drops a None-valued stack output: an absent nullable top-level key reads
            # exactly as null does (`bastion_ip`, `database`, `researcher_access`).
            assert _outcome(doc) == _outcome(_with(doc, path[0], None)), path
            nullable_checked += 1
            continue
        with pytest.raises(outputs.OutputsError) as info:
            outputs.read(doc)
        (where, problem), *rest = info.value.problems
        assert not rest, info.value.message()
        assert where == _path(path) and problem.startswith("missing; expected "), (path, problem)
        assert problem.split("expected ", 1)[1].split(";")[0] in {
            "an integer",
            "a string",
            "true or false",
            "an object",
            "an object or null",
            "a string or null",
            "a list",
            "one of 'onprem' or 'cloud'",
            "one of 'cpu' or 'cuda'",
        }, problem
        checked += 1
    assert checked > 40
    assert nullable_checked == len(outputs.NULLABLE_TOP_LEVEL) == 3


def _with(doc: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    return {**doc, key: value}


def _outcome(doc: dict[str, Any]) -> Any:
    """What reading `doc` gives: the document, or the problems."""
    try:
        return outputs.read(doc).model_dump()
    except outputs.OutputsError as err:
        return err.problems


def _path(keys):
    path = ""
    for k in keys:
        path = outputs.at(path, k)
    return path


HOSTILE = {
    # value placed at a path -> the start of the one message expected
    "huge-port": (("tenancies", "main", "vpn", "udp_port"), 10**5000, "tenancies.main.vpn.udp_port: a number of about"),
    "huge-partition": (
        ("tenancies", "main", "organisations", "hospital-a", "partition_id"),
        -(10**5000),
        "tenancies.main.organisations.hospital-a.partition_id: a negative number of about",
    ),
    "lone-surrogate": (
        ("tenancies", "main", "organisations", "hospital-a", "display_name"),
        "Clinic \udc80",
        "tenancies.main.organisations.hospital-a.display_name: holds a character that is not valid text",
    ),
    "nul": (("environment",), "uat\x00", "environment: contains a control or invisible character (U+0000 NUL"),
    "hidden-entry": (("supernode_private_keys", "hospital-a"), "[secret]", "supernode_private_keys.hospital-a: is hidden"),
    "hidden-single": (("ops_ssh_private_key",), "[secret]", "ops_ssh_private_key: is hidden"),
    "unknown-key": (("tenancies", "main", "superlink", "extra"), 1, "tenancies.main.superlink.extra: unknown key"),
    "float-not-int": (("database", "port"), 5432.0, "database.port: is a number; expected an integer"),
    "bad-slug-key": (("tenancies", "Main Tenancy"), "a copy of tenancy beta", 'tenancies["Main Tenancy"]: the tenancy name is not a slug'),
    "list-for-object": (("hosts", "gateway"), [], "hosts.gateway: is a list; expected an object"),
    "route-not-network": (
        ("tenancies", "main", "vpn", "routes"),
        ["10.0.0.0/33"],
        "tenancies.main.vpn.routes[0]: '10.0.0.0/33' is not an IPv4 network",
    ),
    "null-name": (("tenancies", "main", "superlink", "host"), None, "tenancies.main.superlink.host: is null; expected a string"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_values_get_one_message_never_a_traceback(kit_built, name):
    path, value, message = HOSTILE[name]
    doc = copy.deepcopy(kit_built.outputs)
    if value == "a copy of tenancy beta":
        value = doc["tenancies"].pop("beta")
    _get(doc, path[:-1])[path[-1]] = value
    with pytest.raises(outputs.OutputsError) as info:
        outputs.read(doc)
    assert len(info.value.problems) == 1 and info.value.message().startswith(message), info.value.message()


@pytest.mark.parametrize("raw", [None, [], "{}", 3])
def test_a_document_that_is_not_an_object(raw):
    with pytest.raises(outputs.OutputsError, match=r"^\(top level\): is .*; expected the JSON object printed by `pulumi stack output"):
        outputs.read(raw)


def test_the_writer_places_exactly_the_schemas_fields():
    with pytest.raises(ValueError, match=r"Host outputs need exactly .* missing \['floating_ip'\], unknown \['public_ip'\]"):
        outputs._place(outputs.Host, roles=[], fixed_ip="10.0.0.1", public_ip=None)
    assert list(outputs._place(outputs.Host, floating_ip=None, fixed_ip="10.0.0.1", roles=[])) == list(outputs.Host.model_fields)


# --- property: any change to a valid document ends in a Document or an OutputsError -------------

_hostile_text = st.text(
    alphabet=st.one_of(st.characters(codec="utf-8"), st.sampled_from([*"\n\r\t\x00\x1b\u202e\u2028\ufeff", "\ud800"])),
    max_size=40,
)
_leaf_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([float("nan"), float("inf"), -0.0, 1.5, 10**4000]),
    _hostile_text,
    st.sampled_from(["[secret]", "10.0.0.1", "10.0.0.1:9092", "0.0.0.0/0", "x" * 5000]),
)
_values = st.recursive(
    _leaf_values, lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(_hostile_text, inner, max_size=3)), max_leaves=6
)


@settings(max_examples=int(__import__("os").environ.get("OUTPUTS_FUZZ", 100)), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_change_to_a_valid_document_is_read_or_refused_by_key(kit_built, data):
    doc = copy.deepcopy(kit_built.outputs)
    paths = [p for p, _ in _walk(doc)]
    for _ in range(data.draw(st.integers(1, 3), label="changes")):
        path = data.draw(st.sampled_from(paths), label="path")
        parent: Any = doc
        for key in path[:-1]:  # an earlier change may have removed or replaced the way there
            parent = parent.get(key) if isinstance(parent, dict) else None
        if not isinstance(parent, dict) or path[-1] not in parent:
            continue
        action = data.draw(st.sampled_from(["set", "delete", "add"]), label="action")
        if action == "set":
            parent[path[-1]] = data.draw(_values, label="value")
        elif action == "delete":
            del parent[path[-1]]
        else:
            parent[data.draw(_hostile_text, label="new key")] = data.draw(_values, label="new value")
    try:
        read = outputs.read(doc)
    except outputs.OutputsError as exc:
        assert exc.problems
        for where, problem in exc.problems:
            assert where.strip() and problem.strip()
        # The message can go to a terminal: nothing in it may be a control character.
        assert all(ch == "\n" or ch.isprintable() for ch in exc.message()), repr(exc.message())
    else:
        assert isinstance(read, outputs.Document)


# --- strict material: exactly one PEM object of the expected kind per field (nina.pem) ---------


def _strict_cases(built) -> dict[str, tuple[Any, str, str]]:
    """name -> (mutation of the document, the path refused, the start of its problem)."""
    doc = built.outputs
    ca = doc["ca_cert_pem"]
    org = doc["tenancies"]["main"]["organisations"]["hospital-a"]
    cert = org["vpn_client_cert_pem"]
    vpn_key = doc["vpn_client_private_keys"]["hospital-a"]
    sn_key = doc["supernode_private_keys"]["hospital-a"]
    org_path = "tenancies.main.organisations.hospital-a"

    def at_org(value):
        return lambda d: d["tenancies"]["main"]["organisations"]["hospital-a"].__setitem__("vpn_client_cert_pem", value)

    return {
        "key-appended-to-ca": (lambda d: d.__setitem__("ca_cert_pem", ca + vpn_key), "ca_cert_pem", "holds 2 PEM blocks"),
        "key-appended-to-client-cert": (at_org(cert + vpn_key), f"{org_path}.vpn_client_cert_pem", "holds 2 PEM blocks"),
        "two-ca-certificates": (lambda d: d.__setitem__("ca_cert_pem", ca + built.other_ca), "ca_cert_pem", "holds 2 PEM blocks"),
        "trailing-junk": (lambda d: d.__setitem__("ca_cert_pem", ca + "junk\n"), "ca_cert_pem", "holds text outside its PEM block"),
        "leading-junk": (at_org("Bag Attributes\n" + cert), f"{org_path}.vpn_client_cert_pem", "holds text outside its PEM block"),
        "wrong-block-type": (at_org(vpn_key), f"{org_path}.vpn_client_cert_pem", "is a PEM block 'EC PRIVATE KEY'"),
        "cert-as-vpn-key": (
            lambda d: d["vpn_client_private_keys"].__setitem__("hospital-a", cert),
            "vpn_client_private_keys.hospital-a",
            "is a PEM block 'CERTIFICATE'",
        ),
        "two-openssh-keys": (
            lambda d: d["supernode_private_keys"].__setitem__("hospital-a", sn_key + sn_key),
            "supernode_private_keys.hospital-a",
            "holds 2 PEM blocks",
        ),
        "junk-after-ops-key": (
            lambda d: d.__setitem__("ops_ssh_private_key", doc["ops_ssh_private_key"] + "ssh-ed25519 AAAA\n"),
            "ops_ssh_private_key",
            "holds text outside its PEM block",
        ),
        "bad-base64": (
            lambda d: d.__setitem__("ca_cert_pem", ca.replace("\n", "\n!", 1)),
            "ca_cert_pem",
            "is not a well-formed PEM block",
        ),
    }


_STRICT_NAMES = [
    "key-appended-to-ca",
    "key-appended-to-client-cert",
    "two-ca-certificates",
    "trailing-junk",
    "leading-junk",
    "wrong-block-type",
    "cert-as-vpn-key",
    "two-openssh-keys",
    "junk-after-ops-key",
    "bad-base64",
]


@pytest.mark.parametrize("name", _STRICT_NAMES)
def test_pem_fields_hold_exactly_one_object_of_their_kind(kit_built, kit_fixture_module, name):
    class Built:
        outputs = kit_built.outputs
        other_ca = kit_fixture_module.ca("other")[1]

    cases = _strict_cases(Built)
    assert sorted(cases) == sorted(_STRICT_NAMES)
    mutate, where, start = cases[name]
    doc = copy.deepcopy(kit_built.outputs)
    mutate(doc)
    with pytest.raises(outputs.OutputsError) as info:
        outputs.read(doc)
    assert len(info.value.problems) == 1, info.value.message()
    path, problem = info.value.problems[0]
    assert path == where and problem.startswith(start), info.value.message()
    assert "re-export the outputs" in problem
    if "key-appended" in name:
        assert "a private key (EC PRIVATE KEY) is appended" in problem


def test_pem_fields_are_read_back_canonically(kit_built):
    # Other line widths and blank space around the block: the same object,
    # written back as OpenSSL and pulumi-tls write them.
    doc = copy.deepcopy(kit_built.outputs)
    ca = doc["ca_cert_pem"]
    body = "".join(ca.splitlines()[1:-1])
    lines = [body[i : i + 76] for i in range(0, len(body), 76)]
    doc["ca_cert_pem"] = "\n\n-----BEGIN CERTIFICATE-----\n" + "\n".join(lines) + "\n-----END CERTIFICATE-----"
    assert outputs.read(doc).ca_cert_pem == ca


def test_the_signing_key_halves_and_fingerprint_must_agree(kit_built, kit_fixture_module):
    other = kit_fixture_module.signing_key("other")
    rsa = localpki.generate_key("RSA")
    cases = {
        "platform_signing_key.sha256": lambda d: d["platform_signing_key"].__setitem__("sha256", "0" * 64),
        "platform_signing_private_key_pem": lambda d: d.__setitem__("platform_signing_private_key_pem", other.private_key_pem),
        "platform_signing_key.public_key_pem": lambda d: d["platform_signing_key"].__setitem__("public_key_pem", rsa.public_key_pem),
    }
    for where, mutate in cases.items():
        doc = copy.deepcopy(kit_built.outputs)
        mutate(doc)
        with pytest.raises(outputs.OutputsError) as info:
            outputs.read(doc)
        assert [p for p, _ in info.value.problems] == [where], info.value.message()
    doc = copy.deepcopy(kit_built.outputs)
    del doc["platform_signing_key"]
    with pytest.raises(outputs.OutputsError) as info:
        outputs.read(doc)
    assert "run `pulumi up` once" in info.value.message()


def test_researcher_access_outputs_what_a_researcher_is_told(researcher_raw, tmp_path, monkeypatch):
    """The public URLs nginx serves, and per tenancy its realm group and the flwr connection its
    notebooks get, read by the real flwr as `flwr run . <tenancy>` would read it."""
    from flwr.cli.flower_config import read_superlink_connection

    from nina import facts
    from nina.config import load_config
    from nina.plan import build_plan

    plan = build_plan(load_config(researcher_raw()))
    part = outputs.researcher_access(plan)
    assert part is not None
    assert part["urls"] == {"keycloak": "https://auth.fl.example.edu.au", "jupyterhub": "https://hub.fl.example.edu.au"}
    assert part["realm"] == facts.KEYCLOAK_REALM
    assert [(name, t["keycloak_group"]) for name, t in part["tenancies"].items()] == [("main", "tenancy-main"), ("beta", "tenancy-beta")]
    for t in plan.tenancies:
        home = tmp_path / t.name
        home.mkdir()
        (home / facts.FLWR_CONFIG_FILE).write_text(part["tenancies"][t.name]["flwr_connection_toml"])
        monkeypatch.setenv("FLWR_HOME", str(home))
        conn = read_superlink_connection(t.name)
        assert (conn.address, conn.root_certificates, conn.insecure) == (t.control_address, facts.NOTEBOOK_CA_CERT, False)
    # Deterministic, and the schema reads it back; a stack without researcher access has none.
    assert outputs.researcher_access(plan) == part
    assert outputs.ResearcherAccess.model_validate(part).model_dump() == part
    assert outputs.researcher_access(build_plan(load_config(_without_researcher_access(researcher_raw())))) is None


def _without_researcher_access(raw: dict[str, Any]) -> dict[str, Any]:
    del raw["researcher_access"]
    return raw


@pytest.mark.parametrize(
    ("where", "value", "problem"),
    [
        (("urls", "jupyterhub"), "http://hub.fl.example.edu.au", "is not an https:// URL"),
        (("urls", "jupyterhub"), "https://hub.example/evil path", "is not an https:// URL"),
        (("tenancies", "main", "keycloak_group"), "../admins", "slug"),
        (("tenancies", "main", "flwr_connection_toml"), "  ", "is empty"),
    ],
)
def test_researcher_access_refuses_bad_values(kit_built, researcher_raw, where, value, problem):
    from nina.config import load_config
    from nina.plan import build_plan

    doc = copy.deepcopy(kit_built.outputs)
    doc["researcher_access"] = outputs.researcher_access(build_plan(load_config(researcher_raw())))
    outputs.read(doc)  # valid as written
    _get(doc["researcher_access"], where[:-1])[where[-1]] = value
    with pytest.raises(outputs.OutputsError) as info:
        outputs.read(doc)
    assert info.value.problems[0][0] == "researcher_access." + ".".join(where), info.value.message()
    assert problem in info.value.problems[0][1], info.value.message()
