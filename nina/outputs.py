"""The stack outputs document: the contract between the program and the site-kit exporter.

One typed schema (the pydantic models below) for the document that
`pulumi stack output --json --show-secrets` prints:

- **writing**: components/platform.py (with Pulumi Outputs as values), nina.rehearse and the
  test fixture (plain strings) build it with the functions at the end of this module. They
  only place values under the schema's field names (`_place` refuses any other set of keys),
  never look inside them, so either kind of value works;
- **reading**: `read(raw)` validates a document against the schema and returns a `Document`,
  or raises `OutputsError` naming each bad key by its JSON path with what to do, in the same
  `key: problem` form as bad stack config (nina.config). Shape and type problems come from
  pydantic; cross-field rules (fleet address on the SuperLink's IP, VPN pool and routes,
  which private keys the stack holds) are checked afterwards by plain functions that know
  each value's path. nina.kit reads with it; the kit's own checks of keys against each other
  and the CA follow in nina.kit.

Top-level keys:

    environment, ca_cert_pem, platform_signing_key, tenancies, hosts,
    bastion_ip, database, researcher_access                                   (public)
    supernode_private_keys, vpn_client_private_keys, vpn_tls_crypt_v2_keys,
    database_passwords, ops_ssh_private_key, platform_signing_private_key_pem (secret)

Pure: never imports pulumi.
"""

from __future__ import annotations

import ipaddress
import json
import re
import types
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, StrictBool, StrictInt, StrictStr, TypeAdapter, ValidationError

from nina import environments, facts, pem, text, tlscrypt
from nina.keys import KeyError_, check_openssh_public_key
from nina.localpki import fingerprint_sha256
from nina.plan import Host as HostPlan
from nina.plan import Member, Plan, TenancyPlan, VpnPlan

ONPREM, CLOUD = "onprem", "cloud"
# What `pulumi stack output --json` prints for a secret without --show-secrets.
SECRET_PLACEHOLDER = "[secret]"
HIDDEN = f"is hidden ({SECRET_PLACEHOLDER!r}); export the outputs with `pulumi stack output --json --show-secrets`"
# The outputs the program marks secret (one mapping each, so the public ones stay readable).
SECRET_KEYS = (
    "supernode_private_keys",
    "vpn_client_private_keys",
    "vpn_tls_crypt_v2_keys",
    "database_passwords",
    "ops_ssh_private_key",
    "platform_signing_private_key_pem",
)
_SHA256_HEX_RE = re.compile(r"^[0-9a-f]{64}\Z")

_SLUG_RE = re.compile(facts.SLUG_PATTERN)
_SERVER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}\Z")
_HOST_RE = re.compile(r"^[A-Za-z0-9.-]+\Z")
_PLAIN_KEY_RE = re.compile(r"^[A-Za-z0-9_-]+\Z")


class OutputsError(ValueError):
    """The outputs document is unusable. `problems` holds (JSON path, what is wrong and what to do)."""

    def __init__(self, problems: Iterable[tuple[str, str]]):
        self.problems = list(problems)
        super().__init__(self.message())

    def message(self) -> str:
        return "\n".join(f"{path}: {problem}" for path, problem in self.problems)


# ---------------------------------------------------------------------------------------
# Value types: each checks one kind of value and says what it expected
# ---------------------------------------------------------------------------------------


def show(value: Any, limit: int = 60) -> str:
    """repr() for a message, cut short; safe for huge integers (str() refuses > 4300 digits)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**60:
        return f"a {'negative ' if value < 0 else ''}number of about {len(format(abs(value), 'x')) * 4 * 3 // 10} digits"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _encodable(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("holds a character that is not valid text (a lone surrogate); re-export the outputs") from None
    # Multi-line values (PEM, keys) may hold line breaks; nothing else invisible.
    problem = text.refusal(value, newlines=True)
    if problem is not None:
        raise ValueError(problem)
    return value


def _non_empty(value: str) -> str:
    if not value.strip():
        raise ValueError("is empty; expected a non-empty string")
    problem = text.refusal(value)  # names, hosts, roles: one line of printable text
    if problem is not None:
        raise ValueError(problem)
    return value


def _non_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("is empty; expected a non-empty string")
    return value


def _one_line(value: str) -> str:
    if any(ch in value for ch in "\r\n"):
        raise ValueError("holds a line break; write the name on one line")
    return value


def _ipv4(value: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise ValueError(f"{show(value)} is not an IPv4 address") from None


def _network(value: str) -> str:
    try:
        return str(ipaddress.IPv4Network(value))
    except ValueError:
        raise ValueError(f"{show(value)} is not an IPv4 network like '10.110.0.0/24'") from None


def _port(value: int) -> int:
    if not 0 < value < 65536:
        raise ValueError(f"{show(value)} is not a TCP/UDP port (1-65535)")
    return value


def _address(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not _HOST_RE.match(host) or not port.isdigit() or len(port) > 5 or not 0 < int(port) < 65536:
        raise ValueError(f"{show(value)} is not an address like '10.110.0.40:{facts.SUPERLINK_FLEET_PORT}'")
    return value


def _slug(value: str) -> str:
    if not _SLUG_RE.match(value):
        raise ValueError("is not a slug (lower-case letters, digits and '-')")
    return value


def _server_name(value: str) -> str:
    if not _SERVER_NAME_RE.match(value):
        raise ValueError(f"{show(value)} is not a certificate name (letters, digits, '.', '-', '_')")
    return value


_REEXPORT = "; re-export the outputs with `pulumi stack output --json --show-secrets`"


def _strict(parse: Callable[[str], str]) -> Callable[[str], str]:
    """A field holding exactly one PEM object of `parse`'s kind, written back canonically (nina.pem)."""

    def check(value: str) -> str:
        try:
            return parse(value)
        except pem.PemError as exc:
            raise ValueError(f"{exc}{_REEXPORT}") from None

    return check


def _ca_certificate(value: str) -> str:
    try:
        ca = x509.load_pem_x509_certificate(value.encode())
        fingerprint_sha256(value)
        try:
            constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            constraints = None
        if constraints is None or not constraints.ca:
            raise ValueError("it is not a CA: basicConstraints CA:TRUE is missing")
    except ValueError as exc:
        raise ValueError(f"is not a usable CA certificate ({exc})") from None
    return value


def _supernode_public_key(value: str) -> str:
    try:
        check_openssh_public_key(value)
    except UnsupportedAlgorithm:
        raise ValueError("is a key type flwr does not accept; use `ssh-keygen -t ecdsa -b 384`") from None
    except KeyError_ as exc:
        raise ValueError(str(exc)) from None
    return value.strip() + "\n"


def _not_hidden(value: Any) -> Any:
    if value == SECRET_PLACEHOLDER:
        raise ValueError(HIDDEN)
    return value


# The "expected" half of a type error names these (see _expected).
Str = Annotated[StrictStr, AfterValidator(_encodable)]
Text = Annotated[Str, AfterValidator(_non_empty)]
Ipv4 = Annotated[Str, AfterValidator(_ipv4)]
Network = Annotated[Str, AfterValidator(_network)]
Port = Annotated[StrictInt, AfterValidator(_port)]
Address = Annotated[Str, AfterValidator(_address)]
Slug = Annotated[Str, AfterValidator(_slug)]
Secret = Annotated[Str, BeforeValidator(_not_hidden)]
SecretMap = Annotated[dict[Str, Secret], BeforeValidator(_not_hidden)]
OpensshPrivateKey = Annotated[Secret, AfterValidator(_strict(pem.openssh_private_key))]
PemPrivateKey = Annotated[Secret, AfterValidator(_strict(pem.private_key))]
TlsCryptV2Key = Annotated[Secret, AfterValidator(tlscrypt.client_key_file)]


class _Model(BaseModel):
    # Unknown keys are errors: an outputs file from another program must not half-work.
    model_config = ConfigDict(extra="forbid", frozen=True)


class Superlink(_Model):
    host: Text
    internal_ip: Ipv4
    fleet_address: Address
    control_address: Address
    server_names: list[Annotated[Str, AfterValidator(_server_name)]]


class Vpn(_Model):
    host: Text
    public_ip: Ipv4
    internal_ip: Ipv4
    udp_port: Port
    tcp_port: Port
    pool_cidr: Network
    server_ip: Ipv4
    server_name: Annotated[Text, AfterValidator(_server_name)]
    routes: list[Network]

    @property
    def pool(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.pool_cidr)

    @property
    def route_networks(self) -> tuple[ipaddress.IPv4Network, ...]:
        return tuple(ipaddress.IPv4Network(r) for r in self.routes)


class KeysHeld(_Model):
    vpn: StrictBool
    supernode: StrictBool


class Organisation(_Model):
    display_name: Annotated[Text, AfterValidator(_one_line)]
    placement: Literal["onprem", "cloud"]
    partition_id: StrictInt  # never renumbered; nothing in an organisation depends on the others
    gpu: StrictBool
    supernode_public_key_openssh: Annotated[Str, AfterValidator(_non_blank), AfterValidator(_supernode_public_key)]
    vpn_address: Ipv4 | None
    vpn_client_cert_pem: Annotated[Str, AfterValidator(_strict(pem.certificate))] | None
    # Which private keys the organisation keeps at home (it sent a CSR / a public key instead).
    keys_held_by_organisation: KeysHeld

    @property
    def onprem(self) -> bool:
        return self.placement == ONPREM


def _environment_lock(value: str) -> str:
    from nina.host import env_sync

    if not value.startswith(environments.HEADER_START) or f"\n{environments.REQUIREMENTS_PREFIX}" not in value:
        raise ValueError("is not a training environment lock that `nina env lock` wrote")
    pins = env_sync.parse_lock(value)
    if "flwr" not in pins:
        raise ValueError("names no flwr; it is not a training environment lock")
    return value


class TrainingEnvironment(_Model):
    """The tenancy's training environment (README, "Training environments"): what its Flower venvs,
    its kits' venvs and images install, and what `nina validate` compares every node with."""

    name: Slug
    variant: Literal["cpu", "cuda"]
    lock: Annotated[Str, AfterValidator(_environment_lock)]

    @property
    def pins(self) -> dict[str, str]:
        """Every pin of the lock (canonical name -> version)."""
        from nina.host import env_sync

        return env_sync.parse_lock(self.lock)

    @property
    def requirements(self) -> dict[str, str]:
        """The environment's own pins (flwr and its packages), as the lock's header states them."""
        from nina.host import env_sync

        line = next(line for line in self.lock.splitlines() if line.startswith(environments.REQUIREMENTS_PREFIX))
        return env_sync.parse_lock("\n".join(line.removeprefix(environments.REQUIREMENTS_PREFIX).split()))


class Tenancy(_Model):
    superlink: Superlink
    vpn: Vpn | None
    organisations: dict[Slug, Organisation]
    environment: TrainingEnvironment


class Host(_Model):
    roles: list[Text]
    fixed_ip: Ipv4
    floating_ip: Ipv4 | None


def _sha256_hex(value: str) -> str:
    if not _SHA256_HEX_RE.match(value):
        raise ValueError(f"{show(value)} is not a SHA-256 in lower-case hex (64 digits)")
    return value


def _p384_public_key(value: str) -> str:
    if not pem.is_p384(value):
        raise ValueError("is not an ECDSA P-384 public key; the kits' signatures are checked with `openssl dgst -sha384`")
    return value


class SigningKey(_Model):
    """The platform's kit-signing key (public half): sites check its SHA-256 out of band."""

    public_key_pem: Annotated[Str, AfterValidator(_strict(pem.public_key)), AfterValidator(_p384_public_key)]
    sha256: Annotated[Str, AfterValidator(_sha256_hex)]  # of the DER SubjectPublicKeyInfo (nina.pem.public_key_sha256)


class Database(_Model):
    address: Ipv4
    port: Port
    allowed_cidrs: list[Network]


def _https_url(value: str) -> str:
    if not re.fullmatch(r"https://[A-Za-z0-9.-]+(:[0-9]{1,5})?", value):
        raise ValueError(f"{show(value)} is not an https:// URL of a host name")
    return value


class ResearcherTenancy(_Model):
    keycloak_group: Slug  # researchers in this realm group use the tenancy's federation
    flwr_connection_toml: Annotated[Str, AfterValidator(_non_blank)]  # the flwr config.toml its notebooks get


class ResearcherAccess(_Model):
    """What researchers are told (nina:researcher_access): the public URLs, the realm, and per
    tenancy the realm group and the flwr connection a notebook of that tenancy has."""

    urls: dict[Text, Annotated[Text, AfterValidator(_https_url)]]
    realm: Text
    tenancies: dict[Slug, ResearcherTenancy]


class Document(_Model):
    environment: Text
    ca_cert_pem: Annotated[Str, AfterValidator(_strict(pem.certificate)), AfterValidator(_ca_certificate)]
    platform_signing_key: SigningKey
    tenancies: dict[Slug, Tenancy]
    hosts: dict[Text, Host]
    bastion_ip: Ipv4 | None
    database: Database | None
    researcher_access: ResearcherAccess | None
    supernode_private_keys: Annotated[dict[Str, OpensshPrivateKey], BeforeValidator(_not_hidden)]
    vpn_client_private_keys: Annotated[dict[Str, PemPrivateKey], BeforeValidator(_not_hidden)]
    vpn_tls_crypt_v2_keys: Annotated[dict[Str, TlsCryptV2Key], BeforeValidator(_not_hidden)]
    database_passwords: SecretMap
    ops_ssh_private_key: OpensshPrivateKey
    platform_signing_private_key_pem: PemPrivateKey

    @property
    def ca_fingerprint(self) -> str:
        return fingerprint_sha256(self.ca_cert_pem)

    def organisations(self) -> Iterator[tuple[str, str, Organisation]]:
        """(tenancy name, slug, organisation) in document order."""
        for name, t in self.tenancies.items():
            for slug, org in t.organisations.items():
                yield name, slug, org


# ---------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------


def at(path: str, key: Any) -> str:
    """The JSON path of `key` under `path`: a.b, a[0], a["odd key"]."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    key = str(key)
    if _PLAIN_KEY_RE.match(key):
        return f"{path}.{key}" if path else key
    return f"{path}[{json.dumps(key)}]"


def kind(value: Any) -> str:
    if value is None:
        return "null"
    kinds = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list", dict: "an object"}
    return kinds.get(type(value), type(value).__name__)


# Pydantic's error types -> what the value should have been.
_EXPECTED = {
    "int_type": "an integer",
    "bool_type": "true or false",
    "string_type": "a string",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
    "list_type": "a list",
}
_PROBE = object()  # a value no field accepts: its type error names the field's kind


def _strip(annotation: Any) -> tuple[Any, bool]:
    """(the annotation without Annotated and `| None`, whether it allowed null)."""
    nullable = False
    while True:
        if get_origin(annotation) is Annotated:
            annotation = get_args(annotation)[0]
        elif get_origin(annotation) in (Union, types.UnionType):
            args = [a for a in get_args(annotation) if a is not type(None)]
            nullable = nullable or len(args) < len(get_args(annotation))
            annotation = args[0]
        else:
            return annotation, nullable


def _expected_at(loc: tuple[Any, ...]) -> str | None:
    """What the (missing) field at `loc` of a Document should hold, read from the schema."""
    annotation: Any = Document
    nullable = False
    for part in loc:
        bare, _ = _strip(annotation)
        if isinstance(bare, type) and issubclass(bare, BaseModel):
            if part not in bare.model_fields:
                return None
            annotation = bare.model_fields[part].annotation
        elif get_origin(bare) in (dict, list):
            annotation = get_args(bare)[-1]  # dict[K, V] / list[V] -> V
        else:
            return None
    bare, nullable = _strip(annotation)
    try:
        TypeAdapter(bare).validate_python(_PROBE)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        if err["type"] == "literal_error":
            return f"one of {err['ctx']['expected']}"
        if err["type"] in _EXPECTED:
            return _EXPECTED[err["type"]] + (" or null" if nullable else "")
    return None


def _path(loc: Iterable[Any]) -> str:
    path = ""
    for part in loc:
        path = at(path, part)
    return path or "(top level)"


def _describe(err: Mapping[str, Any], loc: tuple[Any, ...]) -> str:
    kind_, value = err["type"], err.get("input")
    if kind_ == "missing":
        expected = _expected_at(loc)
        message = f"missing; expected {expected}" if expected else "missing"
        if len(loc) == 1 and loc[0] in ("platform_signing_key", "platform_signing_private_key_pem"):
            message += "; a stack deployed before kits were signed has no platform signing key yet: run `pulumi up` once, then export"
        elif len(loc) == 1:  # a whole top-level key: a partial or hand-made document
            message += "; export the whole document with `pulumi stack output --json --show-secrets`"
        return message
    if kind_ == "extra_forbidden":
        return "unknown key; the outputs of this program have no such key (an outputs file from another program or version?)"
    if kind_ == "value_error":
        return str(err["ctx"]["error"]) if "ctx" in err else str(err["msg"])
    if value == SECRET_PLACEHOLDER:
        return HIDDEN
    if kind_ == "literal_error":
        return f"{show(value)} is neither '{ONPREM}' nor '{CLOUD}'" if loc and loc[-1] == "placement" else f"{show(value)}: {err['msg']}"
    if kind_ in _EXPECTED:
        return f"is {kind(value)}; expected {_EXPECTED[kind_]}"
    return str(err["msg"])


def _problems(exc: ValidationError) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        if loc and loc[-1] == "[key]":  # the mapping key itself is bad
            loc = loc[:-1]
            what = {"tenancies": "the tenancy name", "organisations": "the organisation slug"}.get(str(loc[-2]) if len(loc) > 1 else "")
            message = _describe(err, loc)
            problems.append((_path(loc), f"{what} {message}" if what else f"the key {message}"))
            continue
        problems.append((_path(loc), _describe(err, loc)))
    return problems


def read(raw: Any) -> Document:
    """Validate an outputs document (parsed JSON). Raises OutputsError with every problem, never anything else."""
    if not isinstance(raw, Mapping):
        raise OutputsError(
            [("(top level)", f"is {kind(raw)}; expected the JSON object printed by `pulumi stack output --json --show-secrets`")]
        )
    # Pulumi leaves out a stack output whose value is None (`pulumi stack output --json` has no
    # such key), so an absent top-level key that may be null is null: `database` without the
    # managed Postgres, `researcher_access` without researcher access.
    present = {**{name: None for name in NULLABLE_TOP_LEVEL}, **raw}
    try:
        doc = Document.model_validate(present)
    except ValidationError as exc:
        raise OutputsError(_problems(exc)) from None
    problems = list(_semantic_problems(doc))
    if problems:
        raise OutputsError(problems)
    return doc


NULLABLE_TOP_LEVEL = tuple(name for name, f in Document.model_fields.items() if _strip(f.annotation)[1])


def _semantic_problems(doc: Document) -> Iterator[tuple[str, str]]:
    """Rules across fields, each reported at the path of the value to fix."""
    owner: dict[str, str] = {}
    for name, t in doc.tenancies.items():
        tp = at("tenancies", name)
        yield from _check_tenancy(name, t, tp)
        for slug, org in t.organisations.items():
            op = at(at(tp, "organisations"), slug)
            if slug in owner:
                yield op, f"slug also used in tenancy {owner[slug]!r}; slugs are unique across the stack"
                continue
            owner[slug] = name
            yield from _check_organisation(slug, org, t, op)
    yield from _check_secrets(doc)
    yield from _check_signing_key(doc)


def _check_signing_key(doc: Document) -> Iterator[tuple[str, str]]:
    key = doc.platform_signing_key
    if pem.public_key_sha256(key.public_key_pem) != key.sha256:
        yield "platform_signing_key.sha256", "is not the SHA-256 of platform_signing_key.public_key_pem; re-export the outputs"
    private = serialization.load_pem_private_key(doc.platform_signing_private_key_pem.encode(), password=None)
    public = serialization.load_pem_public_key(key.public_key_pem.encode())
    if private.public_key() != public:
        yield "platform_signing_private_key_pem", "does not belong to platform_signing_key.public_key_pem; re-export the outputs"


def _check_tenancy(name: str, t: Tenancy, tp: str) -> Iterator[tuple[str, str]]:
    slp = at(tp, "superlink")
    sl = t.superlink
    if sl.fleet_address.rpartition(":")[0] != sl.internal_ip:
        yield (
            at(slp, "fleet_address"),
            f"{sl.fleet_address!r} is not on the SuperLink's internal IP {sl.internal_ip}; SuperNodes "
            "(over the VPN or the cloud network) reach the Fleet API only there",
        )
    v = t.vpn
    if v is None:
        return
    vp = at(tp, "vpn")
    if ipaddress.IPv4Address(v.server_ip) not in v.pool:
        yield at(vp, "server_ip"), f"{v.server_ip} is outside pool_cidr {v.pool}"
    if not any(ipaddress.IPv4Address(sl.internal_ip) in r for r in v.route_networks):
        yield (
            at(vp, "routes"),
            f"no route covers the SuperLink's internal IP {sl.internal_ip}; on-premise SuperNodes could not reach it through the VPN",
        )


def _check_organisation(slug: str, org: Organisation, t: Tenancy, op: str) -> Iterator[tuple[str, str]]:
    if org.partition_id < 0:
        yield at(op, "partition_id"), f"{show(org.partition_id)} must be 0 or more"
    twin = next((s for s, o in t.organisations.items() if s < slug and o.partition_id == org.partition_id), None)
    if twin is not None:
        yield at(op, "partition_id"), f"{org.partition_id} is also the partition id of {twin!r}; partition ids are unique within a tenancy"
    if not org.onprem:
        return
    if t.vpn is None:
        tenancy_path = op.rsplit(".organisations", 1)[0]
        yield (
            at(tenancy_path, "vpn"),
            f"is null, but organisation {slug!r} is on premise and joins through the VPN; "
            "deploy the tenancy's VPN server (pulumi up) before exporting its kit",
        )
    if org.vpn_address is None:
        yield at(op, "vpn_address"), "is null; an on-premise organisation needs its fixed VPN address"
    elif t.vpn is not None and ipaddress.IPv4Address(org.vpn_address) not in t.vpn.pool:
        yield at(op, "vpn_address"), f"{org.vpn_address} is outside the tenancy's VPN pool {t.vpn.pool}"
    if org.vpn_client_cert_pem is None:
        yield at(op, "vpn_client_cert_pem"), "is null; an on-premise organisation needs its VPN client certificate"


def _check_secrets(doc: Document) -> Iterator[tuple[str, str]]:
    """Each private key is in the stack exactly when the organisation does not keep it itself."""
    for name, slug, org in doc.organisations():
        op = at(at(at("tenancies", name), "organisations"), slug)
        held = at(op, "keys_held_by_organisation")
        wanted = [("supernode_private_keys", doc.supernode_private_keys, org.keys_held_by_organisation.supernode, "supernode")]
        if org.onprem:
            wanted.append(("vpn_client_private_keys", doc.vpn_client_private_keys, org.keys_held_by_organisation.vpn, "vpn"))
            if slug not in doc.vpn_tls_crypt_v2_keys:
                yield at("vpn_tls_crypt_v2_keys", slug), f"missing; the kit of {slug!r} needs its own tls-crypt-v2 key"
        for table_name, table, kept, flag in wanted:
            where = at(table_name, slug)
            if kept and slug in table:
                yield where, f"present, but {held}.{flag} is true: the organisation keeps this key, so the stack must not hold it"
            elif not kept and slug not in table:
                yield where, f"missing; the kit of {slug!r} needs it (or set {held}.{flag} if the organisation keeps this key itself)"


# ---------------------------------------------------------------------------------------
# Writing: place values (Pulumi Outputs or plain strings) under the schema's field names
# ---------------------------------------------------------------------------------------


def _place(model: type[_Model], **values: Any) -> dict[str, Any]:
    """`values` as a document part of `model`; refuses any key set other than the model's fields."""
    fields = set(model.model_fields)
    if set(values) != fields:
        raise ValueError(
            f"{model.__name__} outputs need exactly {sorted(fields)}: missing {sorted(fields - set(values))}, "
            f"unknown {sorted(set(values) - fields)}"
        )
    return {name: values[name] for name in model.model_fields}


def superlink(t: TenancyPlan) -> dict[str, Any]:
    return _place(
        Superlink,
        host=t.superlink_host,
        internal_ip=t.superlink_ip,
        fleet_address=t.fleet_address,
        control_address=t.control_address,
        server_names=list(t.certificate.dns_names),
    )


def vpn(v: VpnPlan, public_ip: Any) -> dict[str, Any]:
    return _place(
        Vpn,
        host=v.host,
        public_ip=public_ip,
        internal_ip=v.internal_ip,
        udp_port=facts.OPENVPN_UDP_PORT,
        tcp_port=facts.OPENVPN_TCP_PORT,
        pool_cidr=str(v.pool),
        server_ip=v.server_ip,
        server_name=v.certificate.common_name,
        routes=[str(r) for r in v.routes],
    )


def organisation(m: Member, public_key_openssh: Any, vpn_client_cert_pem: Any, *, stand_in_keys: bool = False) -> dict[str, Any]:
    """`stand_in_keys`: the caller made every private key itself (the rehearsal), so none is
    held by the organisation whatever its config says."""
    return _place(
        Organisation,
        display_name=m.display_name,
        placement=m.placement,
        partition_id=m.partition_id,
        gpu=m.gpu,
        supernode_public_key_openssh=public_key_openssh,
        vpn_address=m.vpn_address,
        vpn_client_cert_pem=vpn_client_cert_pem,
        keys_held_by_organisation=_place(
            KeysHeld,
            vpn=m.own_vpn_csr is not None and not stand_in_keys,
            supernode=m.own_supernode_public_key is not None and not stand_in_keys,
        ),
    )


def tenancy(t: TenancyPlan, vpn_doc: dict[str, Any] | None, organisations: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    environment = _place(TrainingEnvironment, name=t.environment.name, variant=t.environment.variant, lock=t.environment_lock)
    return _place(Tenancy, superlink=superlink(t), vpn=vpn_doc, organisations=dict(organisations), environment=environment)


def host(h: HostPlan, fixed_ip: Any, floating_ip: Any) -> dict[str, Any]:
    return _place(Host, roles=list(h.roles), fixed_ip=fixed_ip, floating_ip=floating_ip)


def signing_key(public_key_pem: Any, sha256: Any) -> dict[str, Any]:
    return _place(SigningKey, public_key_pem=public_key_pem, sha256=sha256)


def database(plan: Plan, address: Any) -> dict[str, Any]:
    return _place(Database, address=address, port=facts.POSTGRES_PORT, allowed_cidrs=list(plan.database_allowed_cidrs))


def researcher_access(plan: Plan) -> dict[str, Any] | None:
    """The researchers' part of the outputs, from the plan alone (None without nina:researcher_access):
    the public URL of each service nginx serves, the realm, and per tenancy its realm group and the
    flwr connection (config.toml) its notebooks get, so `flwr run . <tenancy>` works from a notebook."""
    from nina import jupyterhub, proxy  # they build on the plan; the document only places their values

    access = plan.cfg.researcher_access
    if access is None:
        return None
    return _place(
        ResearcherAccess,
        urls={site.service: access.public_url(site.service) for site in proxy.sites(plan)},
        realm=plan.cfg.keycloak.realm,
        tenancies={
            t.name: _place(
                ResearcherTenancy,
                keycloak_group=jupyterhub.tenancy_group(t.name),
                flwr_connection_toml=jupyterhub.tenancy_flwr_config(jupyterhub.TenancyAccess(t.name, t.control_address)),
            )
            for t in plan.tenancies
        },
    )


def document(
    plan: Plan,
    *,
    ca_cert_pem: Any,
    platform_signing_key: Any,
    tenancies: Mapping[str, Any],
    hosts: Mapping[str, Any],
    bastion_ip: Any,
    database: Any,
    secrets: Mapping[str, Any],
) -> dict[str, Any]:
    """The whole document; `secrets` holds exactly SECRET_KEYS (wrapped as secrets by the caller)."""
    if set(secrets) != set(SECRET_KEYS):
        raise ValueError(f"secret outputs must be exactly {SECRET_KEYS}, got {sorted(secrets)}")
    return _place(
        Document,
        environment=plan.cfg.environment,
        ca_cert_pem=ca_cert_pem,
        platform_signing_key=platform_signing_key,
        tenancies=dict(tenancies),
        hosts=dict(hosts),
        bastion_ip=bastion_ip,
        database=database,
        researcher_access=researcher_access(plan),
        **{key: secrets[key] for key in SECRET_KEYS},
    )
