"""Site kits: what one organisation's ICT team needs to run its SuperNode on premise.

    build_kit(outputs, slug) -> bytes                  one deterministic <slug>-sitekit.tar.gz
    export_kits(outputs, slugs | None, out_dir) -> [Path]   write them (mode 0600)

`outputs` is the stack outputs document (`pulumi stack output --json --show-secrets`). It is
validated first (`parse_outputs`): a missing or ill-typed field raises `KitError`, one line per
problem naming its JSON path. Keys and certificates of the organisation are checked against
each other and against the CA before a kit is made (`KitError` again).

A kit holds the manual's client-side layout (4.1.3) for ONE organisation, with the very files
the cloud SuperNodes get (`nina.render` renders both), the OpenVPN client (`nina.vpn`), the
container build and run files (4.1.3.3.2, 5.7), `install.sh` (verifies `SHA256SUMS` before it
changes anything, then installs the files with the cloud hosts' nina-install-files, which the
kit carries with its payloads), `SHA256SUMS` and a README for the organisation's ICT team.

Pure: never imports pulumi, reads only its templates (nina/templates/kit). Same outputs give
byte-identical archives: sorted entries, mtime 0, uid/gid 0 (root), explicit modes, and a gzip
header without time or file name.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import ipaddress
import json
import os
import re
import shlex
import tarfile
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from nina import facts, render, services, templating
from nina import vpn as vpn_files
from nina.config import SLUG_RE
from nina.keys import KeyError_, check_openssh_public_key
from nina.localpki import fingerprint_sha256
from nina.plan import Member

ARCHIVE_SUFFIX = ".tar.gz"
ONPREM, CLOUD = "onprem", "cloud"
# Container images built by containers/build.sh (manual 5.7 names them supernode_cpu/_cuda).
IMAGES = {
    "cpu": f"nina-supernode-cpu:flwr-{facts.FLWR_VERSION}",
    "cuda": f"nina-supernode-cuda:flwr-{facts.FLWR_VERSION}",
}
BASE_IMAGES = {
    "cpu": f"ubuntu:{facts.UBUNTU_RELEASE}",
    # The manual uses the -devel image; -runtime has the CUDA/cuDNN libraries and is GBs smaller.
    "cuda": f"nvidia/cuda:12.9.1-cudnn-runtime-ubuntu{facts.UBUNTU_RELEASE}",
}
CONTAINER_NAME = "nina-supernode"
TAR_MTIME = 0
DIR_MODE, PRIVATE_DIR_MODE = 0o755, 0o700

_SECRET_PLACEHOLDER = "[secret]"  # what `pulumi stack output --json` prints without --show-secrets
_SERVER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")
_HOST_RE = re.compile(r"^[A-Za-z0-9.-]+$")
_PLAIN_KEY_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_TLS_AUTH_RE = re.compile(r"-----BEGIN OpenVPN Static key V1-----\n((?:[0-9a-fA-F]+\n)+)-----END OpenVPN Static key V1-----\n?\Z")


# ---------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------


class KitError(ValueError):
    """The outputs cannot make a kit. `problems` holds (JSON path, what is wrong and what to do)."""

    def __init__(self, problems: Iterable[tuple[str, str]]):
        self.problems = list(problems)
        super().__init__(self.message())

    def message(self) -> str:
        return "\n".join(f"{path}: {problem}" for path, problem in self.problems)


class UnknownOrganisation(KitError):
    """A requested slug is not in the outputs."""

    def __init__(self, slugs: Sequence[str], known: Sequence[str]):
        self.slugs, self.known = list(slugs), sorted(known)
        listing = ", ".join(self.known) if self.known else "none (the outputs have no organisations)"
        super().__init__([(f"organisation {s!r}", f"not in the stack outputs; known slugs: {listing}") for s in slugs])


# ---------------------------------------------------------------------------------------
# Validation of the outputs document
# ---------------------------------------------------------------------------------------


def _at(path: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    key = str(key)
    if _PLAIN_KEY_RE.match(key):
        return f"{path}.{key}" if path else key
    return f"{path}[{json.dumps(key)}]"


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list", dict: "an object"}.get(
        type(value), type(value).__name__
    )


_KINDS = {
    "object": (lambda v: isinstance(v, Mapping), "an object"),
    "string": (lambda v: isinstance(v, str), "a string"),
    "text": (lambda v: isinstance(v, str) and v.strip() != "", "a non-empty string"),
    "integer": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "boolean": (lambda v: isinstance(v, bool), "true or false"),
    "strings": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of strings"),
}


class _Checker:
    """Collects problems while reading the document, so that all of them are reported at once."""

    def __init__(self) -> None:
        self.problems: list[tuple[str, str]] = []

    def bad(self, path: str, problem: str) -> None:
        self.problems.append((path or "(top level)", problem))

    def get(self, obj: Mapping[str, Any], key: str, path: str, kind: str, *, null: bool = False) -> Any:
        """obj[key] if it is of `kind` (None if null is allowed); None after recording a problem."""
        where = _at(path, key)
        test, expected = _KINDS[kind]
        if key not in obj:
            self.bad(where, f"missing; expected {expected}" + (" or null" if null else ""))
            return None
        value = obj[key]
        if value is None and null:
            return None
        if value == _SECRET_PLACEHOLDER:
            self.bad(where, "is hidden ('[secret]'); export the outputs with `pulumi stack output --json --show-secrets`")
            return None
        if not test(value):
            self.bad(where, f"is {_kind(value)}; expected {expected}" + (" or null" if null else ""))
            return None
        return value

    def ip(self, obj: Mapping[str, Any], key: str, path: str, *, null: bool = False) -> str | None:
        value = self.get(obj, key, path, "string", null=null)
        if value is None:
            return None
        try:
            return str(ipaddress.IPv4Address(value))
        except ValueError:
            self.bad(_at(path, key), f"{value!r} is not an IPv4 address")
            return None

    def port(self, obj: Mapping[str, Any], key: str, path: str) -> int | None:
        value = self.get(obj, key, path, "integer")
        if value is not None and not 0 < value < 65536:
            self.bad(_at(path, key), f"{value} is not a TCP/UDP port (1-65535)")
            return None
        return value

    def network(self, value: str, where: str) -> ipaddress.IPv4Network | None:
        try:
            return ipaddress.IPv4Network(value)
        except ValueError:
            self.bad(where, f"{value!r} is not an IPv4 network like '10.110.0.0/24'")
            return None

    def address(self, obj: Mapping[str, Any], key: str, path: str) -> str | None:
        """An 'ip-or-host:port' address."""
        value = self.get(obj, key, path, "string")
        if value is None:
            return None
        host, sep, port = value.rpartition(":")
        if not sep or not _HOST_RE.match(host) or not port.isdigit() or not 0 < int(port) < 65536:
            self.bad(_at(path, key), f"{value!r} is not an address like '10.110.0.40:{facts.SUPERLINK_FLEET_PORT}'")
            return None
        return value

    def pem(self, obj: Mapping[str, Any], key: str, path: str, marker: str, *, null: bool = False) -> str | None:
        value = self.get(obj, key, path, "string", null=null)
        if value is None:
            return None
        if f"-----BEGIN {marker}-----" not in value or f"-----END {marker}-----" not in value:
            self.bad(_at(path, key), f"does not look like a PEM block '{marker}'")
            return None
        return value if value.endswith("\n") else value + "\n"


@dataclass(frozen=True)
class VpnServer:
    host: str
    public_ip: str
    internal_ip: str
    udp_port: int
    tcp_port: int
    pool: ipaddress.IPv4Network
    server_ip: str
    server_name: str
    routes: tuple[ipaddress.IPv4Network, ...]


@dataclass(frozen=True)
class Tenancy:
    name: str
    superlink_host: str
    superlink_ip: str
    fleet_address: str
    vpn: VpnServer | None


@dataclass(frozen=True)
class Organisation:
    slug: str
    tenancy: str
    display_name: str
    placement: str
    partition_id: int
    num_partitions: int
    gpu: bool
    supernode_public_key: str  # OpenSSH line, ends in a newline
    vpn_address: str | None
    vpn_cert_pem: str | None
    holds_vpn_key: bool
    holds_supernode_key: bool
    path: str  # JSON path of the organisation, for messages

    @property
    def onprem(self) -> bool:
        return self.placement == ONPREM

    def member(self) -> Member:
        """The plan's Member for this organisation: what nina.render takes."""
        return Member(
            self.tenancy,
            self.slug,
            self.display_name,
            self.placement,
            self.partition_id,
            self.num_partitions,
            self.gpu,
            vpn_address=self.vpn_address,
        )


@dataclass(frozen=True)
class StackOutputs:
    environment: str
    ca_cert_pem: str
    ca_fingerprint: str
    tenancies: Mapping[str, Tenancy]
    organisations: Mapping[str, Organisation]  # by slug, sorted
    supernode_private_keys: Mapping[str, Any] | None
    vpn_client_private_keys: Mapping[str, Any] | None
    vpn_tls_auth_keys: Mapping[str, Any] | None


def parse_outputs(raw: Any) -> StackOutputs:
    """Validate the stack outputs document; raises KitError with every problem found."""
    if not isinstance(raw, Mapping):
        raise KitError(
            [("(top level)", f"is {_kind(raw)}; expected the JSON object printed by `pulumi stack output --json --show-secrets`")]
        )
    c = _Checker()
    environment = c.get(raw, "environment", "", "text")
    ca_pem = c.pem(raw, "ca_cert_pem", "", "CERTIFICATE")
    fingerprint = ""
    if ca_pem is not None:
        try:
            ca = x509.load_pem_x509_certificate(ca_pem.encode())
            fingerprint = fingerprint_sha256(ca_pem)
            _require_ca(ca)
        except ValueError as exc:
            c.bad("ca_cert_pem", f"is not a usable CA certificate ({exc})")
    secret_maps: dict[str, Mapping[str, Any] | None] = {}
    unusable: set[str] = set()  # secret maps that are there but ill-typed (reported once)
    for name in ("supernode_private_keys", "vpn_client_private_keys", "vpn_tls_auth_keys"):
        before = len(c.problems)
        secret_maps[name] = _optional_map(c, raw, name)
        if len(c.problems) != before:
            unusable.add(name)

    tenancies: dict[str, Tenancy] = {}
    orgs: dict[str, Organisation] = {}
    raw_tenancies = c.get(raw, "tenancies", "", "object") or {}
    for name, t_raw in raw_tenancies.items():
        tp = _at("tenancies", name)
        if not isinstance(name, str) or not SLUG_RE.match(name):
            c.bad(tp, "the tenancy name is not a slug (lower-case letters, digits and '-')")
            continue
        if not isinstance(t_raw, Mapping):
            c.bad(tp, f"is {_kind(t_raw)}; expected an object")
            continue
        tenancy = _parse_tenancy(c, name, t_raw, tp)
        raw_orgs = c.get(t_raw, "organisations", tp, "object") or {}
        for slug, o_raw in raw_orgs.items():
            op = _at(_at(tp, "organisations"), slug)
            if not isinstance(slug, str) or not SLUG_RE.match(slug):
                c.bad(op, "the organisation slug is not a slug (lower-case letters, digits and '-')")
                continue
            if slug in orgs:
                c.bad(op, f"slug also used in tenancy {orgs[slug].tenancy!r}; slugs are unique across the stack")
                continue
            if not isinstance(o_raw, Mapping):
                c.bad(op, f"is {_kind(o_raw)}; expected an object")
                continue
            org = _parse_org(c, slug, name, o_raw, op, tenancy)
            if org is not None:
                orgs[slug] = org
        if tenancy is not None:
            tenancies[name] = tenancy

    _check_secrets_present(c, list(orgs.values()), secret_maps, unusable)
    if c.problems:
        raise KitError(c.problems)
    return StackOutputs(
        environment=environment,
        ca_cert_pem=ca_pem,
        ca_fingerprint=fingerprint,
        tenancies=tenancies,
        organisations=dict(sorted(orgs.items())),
        **secret_maps,
    )


def _require_ca(ca: x509.Certificate) -> None:
    try:
        constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise ValueError("it is not a CA: basicConstraints CA:TRUE is missing")


def _optional_map(c: _Checker, raw: Mapping[str, Any], name: str) -> Mapping[str, Any] | None:
    """A secrets map; None if absent (a problem only if an organisation needs it)."""
    if name not in raw:
        return None
    return c.get(raw, name, "", "object", null=True)


def _parse_tenancy(c: _Checker, name: str, t_raw: Mapping[str, Any], tp: str) -> Tenancy | None:
    before = len(c.problems)
    sl = c.get(t_raw, "superlink", tp, "object")
    slp = _at(tp, "superlink")
    host = internal_ip = fleet = None
    if sl is not None:
        host = c.get(sl, "host", slp, "text")
        internal_ip = c.ip(sl, "internal_ip", slp)
        fleet = c.address(sl, "fleet_address", slp)
    vpn_raw = c.get(t_raw, "vpn", tp, "object", null=True)
    vpn = _parse_vpn(c, vpn_raw, _at(tp, "vpn")) if vpn_raw is not None else None
    if fleet is not None and internal_ip is not None and fleet.rpartition(":")[0] != internal_ip:
        c.bad(
            _at(slp, "fleet_address"),
            f"{fleet!r} is not on the SuperLink's internal IP {internal_ip}; SuperNodes "
            "(over the VPN or the cloud network) reach the Fleet API only there",
        )
    if vpn is not None and internal_ip is not None and not any(ipaddress.IPv4Address(internal_ip) in r for r in vpn.routes):
        c.bad(
            _at(_at(tp, "vpn"), "routes"),
            f"no route covers the SuperLink's internal IP {internal_ip}; on-premise SuperNodes could not reach it through the VPN",
        )
    if len(c.problems) != before:
        return None
    return Tenancy(name, host, internal_ip, fleet, vpn)


def _parse_vpn(c: _Checker, v: Mapping[str, Any], vp: str) -> VpnServer | None:
    before = len(c.problems)
    host = c.get(v, "host", vp, "text")
    public_ip = c.ip(v, "public_ip", vp)
    internal_ip = c.ip(v, "internal_ip", vp)
    udp_port = c.port(v, "udp_port", vp)
    tcp_port = c.port(v, "tcp_port", vp)
    pool_s = c.get(v, "pool_cidr", vp, "string")
    pool = c.network(pool_s, _at(vp, "pool_cidr")) if pool_s is not None else None
    server_ip = c.ip(v, "server_ip", vp)
    if pool is not None and server_ip is not None and ipaddress.IPv4Address(server_ip) not in pool:
        c.bad(_at(vp, "server_ip"), f"{server_ip} is outside pool_cidr {pool}")
    server_name = c.get(v, "server_name", vp, "text")
    if server_name is not None and not _SERVER_NAME_RE.match(server_name):
        c.bad(_at(vp, "server_name"), f"{server_name!r} is not a certificate name (letters, digits, '.', '-', '_')")
    routes_raw = c.get(v, "routes", vp, "strings") or []
    routes = tuple(r for i, s in enumerate(routes_raw) if (r := c.network(s, _at(_at(vp, "routes"), i))) is not None)
    if len(c.problems) != before:
        return None
    return VpnServer(host, public_ip, internal_ip, udp_port, tcp_port, pool, server_ip, server_name, routes)


def _parse_org(c: _Checker, slug: str, tenancy_name: str, o: Mapping[str, Any], op: str, tenancy: Tenancy | None) -> Organisation | None:
    before = len(c.problems)
    display_name = c.get(o, "display_name", op, "text")
    if display_name is not None and any(ch in display_name for ch in "\r\n\x00"):
        c.bad(_at(op, "display_name"), "holds a line break; write the name on one line")
    placement = c.get(o, "placement", op, "string")
    if placement is not None and placement not in (ONPREM, CLOUD):
        c.bad(_at(op, "placement"), f"{placement!r} is neither '{ONPREM}' nor '{CLOUD}'")
    partition_id = c.get(o, "partition_id", op, "integer")
    num_partitions = c.get(o, "num_partitions", op, "integer")
    if num_partitions is not None and num_partitions < 1:
        c.bad(_at(op, "num_partitions"), f"{num_partitions} must be at least 1")
    elif partition_id is not None and num_partitions is not None and not 0 <= partition_id < num_partitions:
        c.bad(_at(op, "partition_id"), f"{partition_id} must be in 0..{num_partitions - 1} (num_partitions {num_partitions})")
    gpu = c.get(o, "gpu", op, "boolean")
    public_key = c.get(o, "supernode_public_key_openssh", op, "text")
    if public_key is not None:
        try:
            check_openssh_public_key(public_key)
        except UnsupportedAlgorithm:
            c.bad(_at(op, "supernode_public_key_openssh"), "is a key type flwr 1.25 does not accept; use `ssh-keygen -t ecdsa -b 384`")
        except KeyError_ as exc:
            c.bad(_at(op, "supernode_public_key_openssh"), str(exc))
        public_key = public_key.strip() + "\n"
    vpn_address = c.ip(o, "vpn_address", op, null=True)
    vpn_cert = c.pem(o, "vpn_client_cert_pem", op, "CERTIFICATE", null=True)
    held = c.get(o, "keys_held_by_organisation", op, "object")
    hp = _at(op, "keys_held_by_organisation")
    holds_vpn = c.get(held, "vpn", hp, "boolean") if held is not None else None
    holds_sn = c.get(held, "supernode", hp, "boolean") if held is not None else None

    if placement == ONPREM and tenancy is not None:
        vpn = tenancy.vpn
        if vpn is None:
            c.bad(
                _at(_at("tenancies", tenancy_name), "vpn"),
                f"is null, but organisation {slug!r} is on premise and joins through the VPN; "
                "deploy the tenancy's VPN server (pulumi up) before exporting its kit",
            )
        if "vpn_address" in o and o["vpn_address"] is None:
            c.bad(_at(op, "vpn_address"), "is null; an on-premise organisation needs its fixed VPN address")
        elif vpn is not None and vpn_address is not None and ipaddress.IPv4Address(vpn_address) not in vpn.pool:
            c.bad(_at(op, "vpn_address"), f"{vpn_address} is outside the tenancy's VPN pool {vpn.pool}")
        if "vpn_client_cert_pem" in o and o["vpn_client_cert_pem"] is None:
            c.bad(_at(op, "vpn_client_cert_pem"), "is null; an on-premise organisation needs its VPN client certificate")
    if len(c.problems) != before:
        return None
    return Organisation(
        slug,
        tenancy_name,
        display_name,
        placement,
        partition_id,
        num_partitions,
        gpu,
        public_key,
        vpn_address if placement == ONPREM else None,
        vpn_cert if placement == ONPREM else None,
        bool(holds_vpn),
        bool(holds_sn),
        op,
    )


def _check_secrets_present(
    c: _Checker, orgs: Sequence[Organisation], maps: Mapping[str, Mapping[str, Any] | None], unusable: set[str]
) -> None:
    """Each secret is there exactly when the organisation does not hold it itself."""
    needs: dict[str, list[tuple[Organisation, str, str | None]]] = {name: [] for name in maps}
    for org in orgs:
        needs["supernode_private_keys"].append((org, org.slug, None if org.holds_supernode_key else "supernode"))
        if org.onprem:
            needs["vpn_client_private_keys"].append((org, org.slug, None if org.holds_vpn_key else "vpn"))
            needs["vpn_tls_auth_keys"].append((org, org.tenancy, ""))
    for name, wanted in needs.items():
        table = maps.get(name)
        if name in unusable:
            continue
        if table is None:
            slugs = sorted({org.slug for org, _, flag in wanted if flag is not None})
            if slugs:
                c.bad(name, f"missing; needed for the kits of {', '.join(slugs)}")
            continue
        seen: set[str] = set()
        for org, key, flag in wanted:
            where = _at(name, key)
            if flag is None:  # the organisation keeps this key: the stack must not have it
                held = f"{_at(org.path, 'keys_held_by_organisation')}.{'supernode' if name.startswith('supernode') else 'vpn'}"
                if key in table:
                    c.bad(where, f"present, but {held} is true: the organisation keeps this key, so the stack must not hold it")
                continue
            if key in seen:
                continue
            seen.add(key)
            if key not in table:
                hint = (
                    f" (or set {_at(org.path, 'keys_held_by_organisation')}.{flag} if the organisation keeps this key itself)"
                    if flag
                    else ""
                )
                c.bad(where, f"missing; the kit of {org.slug!r} needs it{hint}")
            elif table[key] == _SECRET_PLACEHOLDER:
                c.bad(where, "is hidden ('[secret]'); export the outputs with `pulumi stack output --json --show-secrets`")
            elif not isinstance(table[key], str):
                c.bad(where, f"is {_kind(table[key])}; expected a string")


# ---------------------------------------------------------------------------------------
# Checks of one organisation's keys and certificates
# ---------------------------------------------------------------------------------------


def _secret(maps: Mapping[str, Any] | None, key: str) -> str:
    value = maps[key]  # presence checked by parse_outputs
    return value if value.endswith("\n") else value + "\n"


def tls_auth_key(out: StackOutputs, tenancy: str) -> str:
    """The tenancy's tls-auth key, formatted by nina.vpn exactly as the VPN server gets it."""
    match = _TLS_AUTH_RE.search(_secret(out.vpn_tls_auth_keys, tenancy))
    if match is None:
        raise ValueError("no BEGIN/END block of hex lines")
    return vpn_files.tls_auth_key(match.group(1).replace("\n", ""))


def _check_org_crypto(out: StackOutputs, org: Organisation) -> None:
    problems: list[tuple[str, str]] = []
    ca = x509.load_pem_x509_certificate(out.ca_cert_pem.encode())
    if not org.holds_supernode_key:
        where = _at("supernode_private_keys", org.slug)
        pem = _secret(out.supernode_private_keys, org.slug)
        try:
            key = serialization.load_ssh_private_key(pem.encode(), password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            problems.append((where, f"is not an unencrypted OpenSSH private key ({exc}); flwr 1.25 reads only that format"))
        else:
            public = serialization.load_ssh_public_key(org.supernode_public_key.encode())
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                problems.append((where, "is not an ECDSA key; flwr 1.25 accepts only NIST-curve ECDSA SuperNode keys"))
            elif key.public_key() != public:
                problems.append(
                    (where, f"does not belong to {_at(org.path, 'supernode_public_key_openssh')} (the key registered at the SuperLink)")
                )
    if org.onprem:
        where = _at(org.path, "vpn_client_cert_pem")
        try:
            cert = x509.load_pem_x509_certificate(org.vpn_cert_pem.encode())
        except ValueError as exc:
            problems.append((where, f"is not a PEM certificate ({exc})"))
        else:
            try:
                cert.verify_directly_issued_by(ca)
            except (ValueError, TypeError, InvalidSignature):
                problems.append((where, "is not signed by ca_cert_pem; the VPN server would refuse it"))
            cns = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
            if cns != [org.slug]:
                problems.append(
                    (where, f"has common name {cns[0] if cns else 'none'!r}; the VPN pins addresses by CN, so it must be {org.slug!r}")
                )
            if not org.holds_vpn_key:
                kwhere = _at("vpn_client_private_keys", org.slug)
                try:
                    vkey = serialization.load_pem_private_key(_secret(out.vpn_client_private_keys, org.slug).encode(), None)
                except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
                    problems.append((kwhere, f"is not an unencrypted PEM private key ({exc})"))
                else:
                    if vkey.public_key() != cert.public_key():
                        problems.append((kwhere, f"does not belong to {where}"))
        try:
            tls_auth_key(out, org.tenancy)
        except ValueError as exc:
            problems.append(
                (
                    _at("vpn_tls_auth_keys", org.tenancy),
                    f"is not an OpenVPN static key ({exc}); expected "
                    "the '-----BEGIN OpenVPN Static key V1-----' block `openvpn --genkey secret` writes",
                )
            )
    if problems:
        raise KitError(problems)


# ---------------------------------------------------------------------------------------
# The kit's files
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KitFile:
    """One file of a kit, and where install.sh puts it."""

    path: str  # relative to the kit's top directory
    content: bytes
    mode: int
    dest: str | None = None  # absolute path on the host; None: not installed (README, ...)
    owner: str = facts.ROOT_USER
    group: str = facts.ROOT_USER
    scope: str = "all"  # all | systemd | containers (install.sh --containers)
    tag: str = ""  # the service a change restarts: vpn | supernode | exporter
    about: str = ""  # one line for the README


@dataclass(frozen=True)
class KitDir:
    """A directory install.sh makes, or gives its mode and owners (a service's, nina.services)."""

    path: str
    mode: int
    owner: str = facts.ROOT_USER
    group: str = facts.ROOT_USER
    scope: str = "all"  # all | systemd


@dataclass(frozen=True)
class KitPayload:
    """A payload of the kit (PAYLOADS_DIR/<name>.json) that install.sh pipes into nina-install-files."""

    path: str  # relative to the kit's top directory
    tag: str  # the service whose restart a change calls for (KitFile.tag), or "" for none
    scope: str  # all | systemd | containers


# --- what install.sh sets up besides files: the services of a SuperNode host (nina.services) ---

_SUPERNODE_USER = services.supernode.SERVICE.user
assert _SUPERNODE_USER is not None
SUPERNODE_USER = _SUPERNODE_USER.name


def _site_services(org: Organisation) -> list[services.Service]:
    return services.site_kit(org.onprem)


def _accounts(org: Organisation) -> list[services.User]:
    """The service users install.sh creates (in facts.SYSTEM_GROUP), as a cloud SuperNode VM has them."""
    return services.users(_site_services(org))


def _packages(org: Organisation) -> tuple[list[str], list[str]]:
    """The services' Debian packages: (always, only with the venv, i.e. not with --containers)."""
    every = services.packages(_site_services(org))
    return [p for p in every if p not in services.VENV_PACKAGES], [p for p in every if p in services.VENV_PACKAGES]


def _service_directories(org: Organisation) -> list[services.Directory]:
    return services.directories(_site_services(org))


def _data_directory(org: Organisation) -> KitDir:
    """The training data directory (manual 4.1.3.3.2), as the SuperNode service lays it out: install.sh
    creates it if missing and never changes it if present (it holds the organisation's data)."""
    (d,) = [d for d in _service_directories(org) if d.path == facts.SUPERNODE_DATA]
    return KitDir(d.path, d.mode, d.owner, d.group)


def _rel(path: str) -> str:
    return path.lstrip("/")


def _text(value: str) -> bytes:
    return (value if value.endswith("\n") else value + "\n").encode()


def _vpn_paths(slug: str) -> dict[str, str]:
    """ca, cert, key, tls_auth: where nina.vpn's client.conf expects them."""
    return vpn_files.client_certs_paths(slug)


def _supernode_paths() -> dict[str, str]:
    certs = facts.SUPERNODE_CERTS
    return {
        "ca": f"{certs}/{facts.CA_CERT_FILE}",
        "key": f"{certs}/{facts.SUPERNODE_KEY_FILE}",
        "pub": f"{certs}/{facts.SUPERNODE_PUB_FILE}",
    }


def _payload_files(out: StackOutputs, org: Organisation) -> list[KitFile]:
    """Everything but install.sh, README.md and SHA256SUMS."""
    tenancy = out.tenancies[org.tenancy]
    sn_user, grp = SUPERNODE_USER, facts.SYSTEM_GROUP
    sn = _supernode_paths()
    try:
        conf = render.supernode_conf(org.member(), tenancy.fleet_address)
    except ValueError as exc:
        raise KitError([(_at(_at("tenancies", org.tenancy), "superlink.fleet_address"), str(exc))]) from None
    unit_in_kit = f"{facts.SUPERNODE_OPT}/{facts.SUPERNODE_UNIT}"
    files = [
        KitFile(
            _rel(facts.SUPERNODE_CONF),
            _text(conf),
            0o644,
            facts.SUPERNODE_CONF,
            sn_user,
            grp,
            tag="supernode",
            about=f"SuperNode settings (manual 4.1.3.3.1): SuperLink {tenancy.fleet_address}, partition "
            f"{org.partition_id} of {org.num_partitions}",
        ),
        KitFile(
            _rel(sn["ca"]),
            _text(out.ca_cert_pem),
            0o644,
            sn["ca"],
            sn_user,
            grp,
            tag="supernode",
            about="the NINA platform's CA certificate: the SuperNode trusts the SuperLink through it",
        ),
        KitFile(
            _rel(sn["pub"]),
            _text(org.supernode_public_key),
            0o644,
            sn["pub"],
            sn_user,
            grp,
            tag="supernode",
            about="the SuperNode's public key, registered at the SuperLink",
        ),
        KitFile(
            _rel(facts.SUPERNODE_RUN_SCRIPT),
            _text(render.run_supernode_sh()),
            0o755,
            facts.SUPERNODE_RUN_SCRIPT,
            tag="supernode",
            about="the SuperNode wrapper script (systemd ExecStart and container ENTRYPOINT)",
        ),
        KitFile(
            _rel(unit_in_kit),
            _text(render.supernode_service()),
            0o644,
            f"{facts.SYSTEMD_SYSTEM_DIR}/{facts.SUPERNODE_UNIT}",
            scope="systemd",
            tag="supernode",
            about=f"the systemd unit, installed as {facts.SYSTEMD_SYSTEM_DIR}/{facts.SUPERNODE_UNIT}",
        ),
        KitFile(
            _rel(facts.NODE_EXPORTER_DEFAULTS),
            _text(render.node_exporter_defaults()),
            0o644,
            facts.NODE_EXPORTER_DEFAULTS,
            tag="exporter",
            about=f"node exporter arguments: listen on port {facts.NODE_EXPORTER_PORT} (manual 5.2.2)",
        ),
    ]
    if not org.holds_supernode_key:
        files.append(
            KitFile(
                _rel(sn["key"]),
                _text(_secret(out.supernode_private_keys, org.slug)),
                0o600,
                sn["key"],
                sn_user,
                grp,
                tag="supernode",
                about="SECRET: the SuperNode's private key (OpenSSH format); it proves the node's identity",
            )
        )
    if org.onprem:
        vpn = tenancy.vpn
        vp = _vpn_paths(org.slug)
        files += [
            KitFile(
                _rel(facts.OPENVPN_CLIENT_CONF),
                _text(vpn_files.client_conf(org.slug, vpn.server_name, vpn.public_ip, vpn.udp_port, vpn.tcp_port)),
                0o644,
                facts.OPENVPN_CLIENT_CONF,
                tag="vpn",
                about=f"OpenVPN client settings: UDP {vpn.udp_port}, fallback TCP {vpn.tcp_port}, to {vpn.public_ip}",
            ),
            KitFile(
                _rel(vp["ca"]),
                _text(out.ca_cert_pem),
                0o644,
                vp["ca"],
                tag="vpn",
                about="the CA certificate the VPN server's certificate is checked against",
            ),
            KitFile(
                _rel(vp["cert"]),
                _text(org.vpn_cert_pem),
                0o644,
                vp["cert"],
                tag="vpn",
                about=f"your VPN client certificate (CN {org.slug})",
            ),
            KitFile(
                _rel(vp["tls_auth"]),
                _text(tls_auth_key(out, org.tenancy)),
                0o600,
                vp["tls_auth"],
                tag="vpn",
                about="SECRET: the VPN's tls-auth key (shared by the tenancy's VPN clients)",
            ),
        ]
        if not org.holds_vpn_key:
            files.append(
                KitFile(
                    _rel(vp["key"]),
                    _text(_secret(out.vpn_client_private_keys, org.slug)),
                    0o600,
                    vp["key"],
                    tag="vpn",
                    about="SECRET: your VPN client private key",
                )
            )
    files += _container_files(org)
    return files


@lru_cache(maxsize=1)
def _env() -> jinja2.Environment:
    env = templating.environment(
        "kit",
        trim_blocks=True,
        lstrip_blocks=True,
        # bash has `${#array[@]}`: Jinja comments use {## ##} here.
        comment_start_string="{##",
        comment_end_string="##}",
    )
    env.filters["q"] = lambda v: shlex.quote(str(v))
    env.filters["mode"] = lambda v: f"{v:04o}"
    env.globals.update(
        facts=facts,
        flwr_version=facts.FLWR_VERSION,
        images=IMAGES,
        base_images=BASE_IMAGES,
        container_name=CONTAINER_NAME,
        supernode_user=SUPERNODE_USER,
    )
    return env


def _render(name: str, **context: Any) -> str:
    return _env().get_template(name).render(**context)


def _container_files(org: Organisation) -> list[KitFile]:
    files = []
    for variant in ("cpu", "cuda"):
        name = f"Dockerfile.{variant}"
        files.append(
            KitFile(
                f"containers/{name}",
                _text(_render("Dockerfile.j2", variant=variant)),
                0o644,
                f"{facts.SUPERNODE_CONTAINERS}/{name}",
                scope="containers",
                about=f"container image, {'CPU only' if variant == 'cpu' else 'NVIDIA GPU (CUDA)'} (manual 5.7)",
            )
        )
    files.append(
        KitFile(
            "containers/build.sh",
            _text(_render("build.sh.j2")),
            0o755,
            f"{facts.SUPERNODE_CONTAINERS}/build.sh",
            scope="containers",
            about="builds an image: `./build.sh cpu` or `./build.sh cuda`",
        )
    )
    for engine in ("docker", "podman"):
        for gpu in (False, True):
            name = f"run-{engine}{'-gpu' if gpu else ''}.sh"
            files.append(
                KitFile(
                    f"containers/{name}",
                    _text(_render("run.sh.j2", engine=engine, gpu=gpu, slug=org.slug, onprem=org.onprem)),
                    0o755,
                    f"{facts.SUPERNODE_CONTAINERS}/{name}",
                    scope="containers",
                    about=f"runs the SuperNode with {engine}{', GPU pass-through' if gpu else ', CPU only'}",
                )
            )
    return files


def _directories(org: Organisation) -> list[KitDir]:
    """The services' directories (parents first) with their modes and owners, the venv's only in
    systemd mode. Other parents of the files (system directories, the container files') are
    made by nina-install-files when missing, root's and 0755, as on the cloud hosts."""
    return [
        KitDir(d.path, d.mode, d.owner, d.group, scope="systemd" if d in services.VENV_DIRECTORIES else "all")
        for d in _service_directories(org)
        if d.path != facts.SUPERNODE_DATA
    ]


# --- the kit's own copy of the cloud hosts' installer, and its payloads --------------------

INSTALLER_DIR = "installer"  # the programs: INSTALLER_DIR/nina/host/install_files.py, ...
PAYLOADS_DIR = "payloads"


def _installer_files(files: Sequence[KitFile]) -> tuple[list[KitFile], list[KitPayload]]:
    """nina-install-files as the cloud hosts get it (render.installer_programs), and one payload
    (render.delivery_payload, so the installer's own check has passed) per service and scope of
    the files that have a destination, in install order: every scope first."""
    programs = [
        KitFile(
            f"{INSTALLER_DIR}/{rel}",
            source.encode(),  # byte for byte what the cloud hosts run
            0o644,
            about=f"nina-install-files, the platform's file installer (as on its cloud hosts): install.sh runs it with {facts.HOST_PYTHON}"
            if rel.endswith("/install_files.py")
            else "part of the installer (the platform's fixed paths and names)"
            if rel.endswith("/facts.py")
            else "part of the installer (a Python package marker)",
        )
        for rel, source in render.installer_programs().items()
    ]
    groups: dict[tuple[str, str], list[KitFile]] = {}
    for f in files:
        if f.dest is not None:
            groups.setdefault((f.scope, f.tag), []).append(f)
    payload_files, payloads = [], []
    for (scope, tag), group in sorted(groups.items(), key=lambda g: (g[0][0] != "all", g[0])):
        name = tag if scope == "all" else f"{tag}-{scope}" if tag else scope
        entries = [render.DeliveredFile(f.dest, f.content.decode(), f.mode, f.owner, f.group) for f in group if f.dest]
        try:
            payload = render.delivery_payload(entries, [])  # install.sh restarts the services itself
        except ValueError as exc:
            raise KitError([(f"{PAYLOADS_DIR}/{name}.json", str(exc))]) from None
        secret = any((f.mode & 0o077) == 0 for f in group)
        what = {"supernode": "the SuperNode's", "vpn": "the VPN client's", "exporter": "the node exporter's"}.get(tag, "the container")
        when = {"systemd": " (not with --containers)", "containers": " (only with --containers)"}.get(scope, "")
        payload_files.append(
            KitFile(
                f"{PAYLOADS_DIR}/{name}.json",
                payload.encode(),
                0o600,
                about=("SECRET: " if secret else "")
                + f"{what} files above{when}, as nina-install-files takes them (destinations, owners, modes, contents)",
            )
        )
        payloads.append(KitPayload(f"{PAYLOADS_DIR}/{name}.json", tag, scope))
    return programs + payload_files, payloads


def _held_keys(org: Organisation) -> list[dict[str, str]]:
    """Keys the organisation keeps: where install.sh expects them, and what they must match."""
    held = []
    if org.holds_supernode_key:
        sn = _supernode_paths()
        held.append(
            {
                "dest": sn["key"],
                "kind": "openssh",
                "match": _rel(sn["pub"]),
                "owner": SUPERNODE_USER,
                "group": facts.SYSTEM_GROUP,
                "tag": "supernode",
                "what": "the SuperNode private key (OpenSSH format) whose public key you sent us",
            }
        )
    if org.onprem and org.holds_vpn_key:
        vp = _vpn_paths(org.slug)
        held.append(
            {
                "dest": vp["key"],
                "kind": "x509",
                "match": _rel(vp["cert"]),
                "owner": facts.ROOT_USER,
                "group": facts.ROOT_USER,
                "tag": "vpn",
                "what": "the VPN private key from which you made the certificate signing request",
            }
        )
    return held


def _secrets(org: Organisation) -> list[str]:
    secrets = [] if org.holds_supernode_key else ["the SuperNode's private key"]
    if org.onprem:
        secrets += ([] if org.holds_vpn_key else ["your VPN private key"]) + ["the VPN's tls-auth key"]
    return secrets


def _sha256sums(files: Sequence[KitFile]) -> bytes:
    lines = [f"{hashlib.sha256(f.content).hexdigest()}  {f.path}\n" for f in sorted(files, key=lambda f: f.path)]
    return "".join(lines).encode()


def kit_files(outputs: Mapping[str, Any] | StackOutputs, slug: str) -> list[KitFile]:
    """Every file of `slug`'s kit (paths relative to the kit's top directory), sorted by path."""
    out = outputs if isinstance(outputs, StackOutputs) else parse_outputs(outputs)
    org = out.organisations.get(slug)
    if org is None:
        raise UnknownOrganisation([slug], list(out.organisations))
    _check_org_crypto(out, org)
    tenancy = out.tenancies[org.tenancy]
    files = _payload_files(out, org)
    installer, payloads = _installer_files(files)
    files += installer
    held = _held_keys(org)
    context = {
        "org": org,
        "tenancy": tenancy,
        "vpn": tenancy.vpn,
        "environment": out.environment,
        "kit_name": f"{org.slug}{facts.SITEKIT_SUFFIX}",
        "held": held,
        "ubuntu": facts.UBUNTU_RELEASE,
        "accounts": _accounts(org),
        "packages_base": _packages(org)[0],
        "packages_systemd": _packages(org)[1],
    }
    install = _render(
        "install.sh.j2",
        payloads=payloads,
        installer_dir=INSTALLER_DIR,
        payloads_dir=PAYLOADS_DIR,
        dirs=_directories(org),
        data_dir=_data_directory(org),
        units=([facts.OPENVPN_CLIENT_UNIT] if org.onprem else []) + [facts.SUPERNODE_UNIT, facts.NODE_EXPORTER_UNIT],
        **context,
    )
    files.append(KitFile("install.sh", _text(install), 0o755, about="the installer: checks SHA256SUMS, then installs (see below)"))
    files.sort(key=lambda f: f.path)
    readme = _render(
        "README.md.j2",
        files=files,
        ca_fingerprint=out.ca_fingerprint,
        vpn_paths=_vpn_paths(org.slug),
        supernode_paths=_supernode_paths(),
        tap_device=f"{facts.OPENVPN_DEVICE}0",
        secrets=_secrets(org),
        **context,
    )
    files.append(KitFile("README.md", _text(readme), 0o644))
    files.append(KitFile("SHA256SUMS", _sha256sums(files), 0o644))
    files.sort(key=lambda f: f.path)
    return files


# ---------------------------------------------------------------------------------------
# The archive
# ---------------------------------------------------------------------------------------


def _dir_mode(rel: str) -> int:
    """Directories holding private keys are 0700 in the archive; the top directory too (it holds secrets)."""
    private = {_rel(f"{facts.OPENVPN_CLIENT_CERTS}/{facts.OPENVPN_PRIVATE_DIR}"), _rel(facts.SUPERNODE_CERTS), PAYLOADS_DIR, ""}
    return PRIVATE_DIR_MODE if rel in private else DIR_MODE


def _tarinfo(name: str, mode: int, size: int = 0, directory: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.mode = mode
    info.size = size
    info.mtime = TAR_MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = facts.ROOT_USER
    return info


def archive(top: str, files: Sequence[KitFile]) -> bytes:
    """A deterministic .tar.gz of `files` under `top/`."""
    dirs = {""}
    for f in files:
        parts = f.path.split("/")
        dirs.update("/".join(parts[:i]) for i in range(1, len(parts)))
    entries: list[tuple[tuple[str, ...], tarfile.TarInfo, bytes | None]] = []
    for d in dirs:
        name = f"{top}/{d}" if d else top
        entries.append((tuple(name.split("/")), _tarinfo(name, _dir_mode(d), directory=True), None))
    for f in files:
        name = f"{top}/{f.path}"
        entries.append((tuple(name.split("/")), _tarinfo(name, f.mode, len(f.content)), f.content))
    entries.sort(key=lambda e: e[0])
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for _, info, content in entries:
            tar.addfile(info, io.BytesIO(content) if content is not None else None)
    packed = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=packed, mtime=0, compresslevel=9) as gz:
        gz.write(raw.getvalue())
    return packed.getvalue()


def build_kit(outputs: Mapping[str, Any] | StackOutputs, slug: str) -> bytes:
    """`slug`'s site kit as a deterministic .tar.gz (top directory `<slug>-sitekit/`)."""
    return archive(f"{slug}{facts.SITEKIT_SUFFIX}", kit_files(outputs, slug))


def kit_filename(slug: str) -> str:
    return f"{slug}{facts.SITEKIT_SUFFIX}{ARCHIVE_SUFFIX}"


def export_kits(outputs: Mapping[str, Any] | StackOutputs, slugs: Sequence[str] | None, out_dir: str | Path) -> list[Path]:
    """Write `<slug>-sitekit.tar.gz` (mode 0600) into out_dir for each slug (None: every organisation).

    All kits are built before any is written, so a problem with one writes nothing. Each file
    is created 0600 under a temporary name and renamed into place.
    """
    out = outputs if isinstance(outputs, StackOutputs) else parse_outputs(outputs)
    wanted = list(out.organisations) if slugs is None else list(dict.fromkeys(slugs))
    unknown = [s for s in wanted if s not in out.organisations]
    if unknown:
        raise UnknownOrganisation(unknown, list(out.organisations))
    kits = {slug: build_kit(out, slug) for slug in wanted}
    directory = Path(out_dir)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    written = []
    for slug, data in kits.items():
        target = directory / kit_filename(slug)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=directory)  # created 0600
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        written.append(target)
    return written
