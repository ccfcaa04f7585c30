"""Site kits: what one organisation's ICT team needs to run its SuperNode on premise.

    build_kit(outputs, slug) -> bytes                  one deterministic <slug>-sitekit.tar.gz
    export_kits(outputs, slugs | None, out_dir) -> [Path]   write them (mode 0600)

`outputs` is the stack outputs document (`pulumi stack output --json --show-secrets`). It is
validated first (`parse_outputs`): a missing or ill-typed field raises `KitError`, one line per
problem naming its JSON path. Keys and certificates of the organisation are checked against
each other and against the CA before a kit is made (`KitError` again).

A kit holds the manual's client-side layout (4.1.3) for ONE organisation, with the very files
the cloud SuperNodes get (`nina.render` renders both), the OpenVPN client (`nina.vpn`), the
container build and run files (4.1.3.3.2, 5.7), `install.sh` (verifies the platform's signature
of `SHA256SUMS` against the key fingerprint the site got out of band, and `SHA256SUMS`, before it
changes anything, then installs the files with the cloud hosts' nina-install-files, which the
kit carries with its payloads), `SHA256SUMS`, its signature `SHA256SUMS.sig` (made with the
stack's platform signing key), the platform's public key and a README for the organisation's
ICT team.

Pure: never imports pulumi, reads only its templates (nina/templates/kit). Same outputs give
byte-identical archives: sorted entries, mtime 0, uid/gid 0 (root), explicit modes, and a gzip
header without time or file name.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import posixpath
import shlex
import tarfile
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from nina import environments, facts, gpu, render, services, templating, troubleshooting
from nina import outputs as schema
from nina import vpn as vpn_files
from nina.plan import Member

ARCHIVE_SUFFIX = ".tar.gz"
ONPREM, CLOUD = schema.ONPREM, schema.CLOUD
# Container images built by containers/build.sh (manual 5.7 names them supernode_cpu/_cuda).
IMAGES = {
    "cpu": f"nina-supernode-cpu:flwr-{facts.FLWR_VERSION}",
    "cuda": f"nina-supernode-cuda:flwr-{facts.FLWR_VERSION}",
}
BASE_IMAGES = {
    "cpu": f"ubuntu:{facts.UBUNTU_RELEASE}",
    # For a lock without CUDA runtime wheels. The manual uses the -devel image; -runtime has the
    # CUDA/cuDNN libraries and is GBs smaller.
    "cuda": f"nvidia/cuda:12.9.1-cudnn-runtime-ubuntu{facts.UBUNTU_RELEASE}",
}
# A lock that brings CUDA's libraries as wheels (PyPI's torch: nvidia-cuda-runtime and the rest,
# environments.cuda_major) needs only CUDA's `base` image of that major: no second copy of CUDA and
# cuDNN, and the image's NVIDIA_REQUIRE_CUDA, which the container toolkit checks against the host's
# driver, is the wheels' major (13.0 is what driver branch 580 runs; 12.9 is the -cudnn-runtime
# image's own requirement, unchanged).
CUDA_WHEELS_BASE_IMAGES = {
    12: f"nvidia/cuda:12.9.1-base-ubuntu{facts.UBUNTU_RELEASE}",
    13: f"nvidia/cuda:13.0.2-base-ubuntu{facts.UBUNTU_RELEASE}",
}


def base_images(tenancy_name: str, environment: schema.TrainingEnvironment) -> dict[str, str]:
    """Each image's base for a tenancy's training environment (its lock's CUDA wheels, if any)."""
    major = environments.cuda_major(environment.pins)
    if major is None:
        return dict(BASE_IMAGES)
    if major not in CUDA_WHEELS_BASE_IMAGES:
        known = ", ".join(map(str, CUDA_WHEELS_BASE_IMAGES))
        key = schema.at(schema.at("tenancies", tenancy_name), "environment.lock")
        raise KitError(
            [(key, f"environment {environment.name!r} brings CUDA {major} runtime wheels; the kit's CUDA image knows CUDA {known}")]
        )
    return {**BASE_IMAGES, "cuda": CUDA_WHEELS_BASE_IMAGES[major]}


CONTAINER_NAME = "nina-supernode"
LOCK_NAME = posixpath.basename(facts.FLOWER_ENV_LOCK)  # the lock's name beside the Dockerfiles
TAR_MTIME = 0
DIR_MODE, PRIVATE_DIR_MODE = 0o755, 0o700


# ---------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------


class KitError(schema.OutputsError):
    """The outputs cannot make a kit. `problems` holds (JSON path, what is wrong and what to do)."""


class UnknownOrganisation(KitError):
    """A requested slug is not in the outputs."""

    def __init__(self, slugs: Sequence[str], known: Sequence[str]):
        self.slugs, self.known = list(slugs), sorted(known)
        listing = ", ".join(self.known) if self.known else "none (the outputs have no organisations)"
        super().__init__([(f"organisation {s!r}", f"not in the stack outputs; known slugs: {listing}") for s in slugs])


# ---------------------------------------------------------------------------------------
# The outputs document, read with its schema (nina.outputs)
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tenancy:
    name: str
    superlink_host: str
    superlink_ip: str
    fleet_address: str
    vpn: schema.Vpn | None
    environment: schema.TrainingEnvironment  # its training environment: the lock the kit installs


@dataclass(frozen=True)
class OrgVpn:
    """An on-premise organisation's VPN material and its tenancy's VPN server."""

    address: str
    cert_pem: str
    server: schema.Vpn


@dataclass(frozen=True)
class Organisation:
    """One organisation of the validated outputs, with where it sits (what the kit uses)."""

    slug: str
    tenancy: str
    display_name: str
    placement: str
    partition_id: int
    gpu: bool
    supernode_public_key: str  # OpenSSH line, ends in a newline
    vpn: OrgVpn | None  # exactly for on-premise organisations
    holds_vpn_key: bool
    holds_supernode_key: bool
    path: str  # JSON path of the organisation, for messages

    @property
    def onprem(self) -> bool:
        return self.placement == ONPREM

    @property
    def vpn_address(self) -> str | None:
        return self.vpn.address if self.vpn is not None else None

    def member(self) -> Member:
        """The plan's Member for this organisation: what nina.render takes."""
        return Member(
            self.tenancy,
            self.slug,
            self.display_name,
            self.placement,
            self.partition_id,
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
    supernode_private_keys: Mapping[str, str]
    vpn_client_private_keys: Mapping[str, str]
    vpn_tls_crypt_v2_keys: Mapping[str, str]  # slug -> the organisation's own tls-crypt-v2 client key
    signing_key_pem: str  # the platform's kit-signing key (secret)
    signing_public_key_pem: str
    signing_key_sha256: str


def parse_outputs(raw: Any) -> StackOutputs:
    """Validate the stack outputs document (nina.outputs.read); raises KitError with every problem found."""
    try:
        doc = schema.read(raw)
    except schema.OutputsError as exc:
        raise KitError(exc.problems) from None
    orgs: dict[str, Organisation] = {}
    for name, slug, o in doc.organisations():
        server = doc.tenancies[name].vpn
        # nina.outputs.read has checked that an on-premise organisation has all three.
        org_vpn = (
            OrgVpn(o.vpn_address, o.vpn_client_cert_pem, server)
            if o.onprem and o.vpn_address is not None and o.vpn_client_cert_pem is not None and server is not None
            else None
        )
        orgs[slug] = Organisation(
            slug=slug,
            tenancy=name,
            display_name=o.display_name,
            placement=o.placement,
            partition_id=o.partition_id,
            gpu=o.gpu,
            supernode_public_key=o.supernode_public_key_openssh,
            vpn=org_vpn,
            holds_vpn_key=o.keys_held_by_organisation.vpn,
            holds_supernode_key=o.keys_held_by_organisation.supernode,
            path=schema.at(schema.at(schema.at("tenancies", name), "organisations"), slug),
        )
    return StackOutputs(
        environment=doc.environment,
        ca_cert_pem=doc.ca_cert_pem,
        ca_fingerprint=doc.ca_fingerprint,
        tenancies={
            name: Tenancy(name, t.superlink.host, t.superlink.internal_ip, t.superlink.fleet_address, t.vpn, t.environment)
            for name, t in doc.tenancies.items()
        },
        organisations=dict(sorted(orgs.items())),
        supernode_private_keys=doc.supernode_private_keys,
        vpn_client_private_keys=doc.vpn_client_private_keys,
        vpn_tls_crypt_v2_keys=doc.vpn_tls_crypt_v2_keys,
        signing_key_pem=doc.platform_signing_private_key_pem,
        signing_public_key_pem=doc.platform_signing_key.public_key_pem,
        signing_key_sha256=doc.platform_signing_key.sha256,
    )


# ---------------------------------------------------------------------------------------
# Checks of one organisation's keys and certificates
# ---------------------------------------------------------------------------------------


def _secret(maps: Mapping[str, str], key: str) -> str:
    value = maps[key]  # presence checked by nina.outputs.read
    return value if value.endswith("\n") else value + "\n"


def _check_org_crypto(out: StackOutputs, org: Organisation) -> None:
    problems: list[tuple[str, str]] = []
    ca = x509.load_pem_x509_certificate(out.ca_cert_pem.encode())
    if not org.holds_supernode_key:
        where = schema.at("supernode_private_keys", org.slug)
        pem = _secret(out.supernode_private_keys, org.slug)
        try:
            key = serialization.load_ssh_private_key(pem.encode(), password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            problems.append((where, f"is not an unencrypted OpenSSH private key ({exc}); flwr reads only that format"))
        else:
            public = serialization.load_ssh_public_key(org.supernode_public_key.encode())
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                problems.append((where, "is not an ECDSA key; flwr accepts only NIST-curve ECDSA SuperNode keys"))
            elif key.public_key() != public:
                problems.append(
                    (
                        where,
                        f"does not belong to {schema.at(org.path, 'supernode_public_key_openssh')} (the key registered at the SuperLink)",
                    )
                )
    if org.vpn is not None:
        where = schema.at(org.path, "vpn_client_cert_pem")
        try:
            cert = x509.load_pem_x509_certificate(org.vpn.cert_pem.encode())
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
                kwhere = schema.at("vpn_client_private_keys", org.slug)
                try:
                    vkey = serialization.load_pem_private_key(_secret(out.vpn_client_private_keys, org.slug).encode(), None)
                except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
                    problems.append((kwhere, f"is not an unencrypted PEM private key ({exc})"))
                else:
                    if vkey.public_key() != cert.public_key():
                        problems.append((kwhere, f"does not belong to {where}"))
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
    """ca, cert, key, tls_crypt_v2: where nina.vpn's client.conf expects them."""
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
        raise KitError([(schema.at(schema.at("tenancies", org.tenancy), "superlink.fleet_address"), str(exc))]) from None
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
            about=f"SuperNode settings (manual 4.1.3.3.1): SuperLink {tenancy.fleet_address}, partition {org.partition_id}",
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
            _rel(facts.FLOWER_ENV_LOCK),
            _text(tenancy.environment.lock),
            0o644,
            facts.FLOWER_ENV_LOCK,
            scope="systemd",
            tag="supernode",
            about=f"the tenancy's training environment {tenancy.environment.name!r} ({tenancy.environment.variant}): "
            "the lock install.sh makes the Flower venv hold (pip --require-hashes --no-deps)",
        ),
        KitFile(
            f"containers/{LOCK_NAME}",
            _text(tenancy.environment.lock),
            0o644,
            f"{facts.SUPERNODE_CONTAINERS}/{LOCK_NAME}",
            scope="containers",
            about="the same lock, for build.sh: both images install it (pip --require-hashes --no-deps)",
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
            _text(render.node_exporter_defaults(org.vpn_address if org.onprem else None)),
            0o644,
            facts.NODE_EXPORTER_DEFAULTS,
            tag="exporter",
            about=f"node exporter arguments: listen on port {facts.NODE_EXPORTER_PORT} (manual 5.2.2)"
            + (f" of the tunnel address {org.vpn_address} only" if org.onprem else ""),
        ),
    ]
    if org.onprem:
        files.append(
            KitFile(
                _rel(facts.NODE_EXPORTER_VPN_DROPIN),
                _text(render.node_exporter_vpn_dropin()),
                0o644,
                facts.NODE_EXPORTER_VPN_DROPIN,
                tag="exporter",
                about="node exporter after the VPN client, retried until the tunnel address exists",
            )
        )
    if org.onprem and org.gpu and org.vpn_address is not None:
        files.append(
            KitFile(
                _rel(DCGM_EXPORTER_UNIT_PATH),
                _text(gpu.exporter_service(org.vpn_address, vpn=True)),
                0o644,
                DCGM_EXPORTER_UNIT_PATH,
                tag="exporter",
                about=f"NVIDIA's DCGM exporter on the tunnel address {org.vpn_address} only (started where DCGM is installed)",
            )
        )
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
    if org.vpn is not None:
        vpn = org.vpn.server
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
                _text(org.vpn.cert_pem),
                0o644,
                vp["cert"],
                tag="vpn",
                about=f"your VPN client certificate (CN {org.slug})",
            ),
            KitFile(
                _rel(vp["tls_crypt_v2"]),
                _text(out.vpn_tls_crypt_v2_keys[org.slug]),
                0o600,
                vp["tls_crypt_v2"],
                tag="vpn",
                about="SECRET: your organisation's own tls-crypt-v2 key (the VPN's control channel; no other site has it)",
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
    files += _container_files(org, base_images(org.tenancy, tenancy.environment))
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
        container_name=CONTAINER_NAME,
        supernode_user=SUPERNODE_USER,
        # What a site installs for its GPU (the checks' advice): the branch the cloud GPU hosts run.
        gpu_driver_packages=[p.format(branch=facts.GPU_DRIVER_BRANCH) for p in facts.GPU_DRIVER_PACKAGES],
        lock_name=LOCK_NAME,
    )
    return env


def _render(name: str, **context: Any) -> str:
    return _env().get_template(name).render(**context)


def _container_files(org: Organisation, bases: Mapping[str, str]) -> list[KitFile]:
    files = []
    for variant in ("cpu", "cuda"):
        name = f"Dockerfile.{variant}"
        files.append(
            KitFile(
                f"containers/{name}",
                _text(_render("Dockerfile.j2", variant=variant, base_image=bases[variant])),
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
        for with_gpu in (False, True):
            name = f"run-{engine}{'-gpu' if with_gpu else ''}.sh"
            files.append(
                KitFile(
                    f"containers/{name}",
                    _text(_render("run.sh.j2", engine=engine, gpu=with_gpu, slug=org.slug, onprem=org.onprem)),
                    0o755,
                    f"{facts.SUPERNODE_CONTAINERS}/{name}",
                    scope="containers",
                    about=f"runs the SuperNode with {engine}{', GPU pass-through' if with_gpu else ', CPU only'}",
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
    programs.append(
        KitFile(
            f"{INSTALLER_DIR}/nina/host/env_sync.py",
            render.host_programs()["nina/host/env_sync.py"].encode(),
            0o644,
            about="nina-env-sync (as on the cloud hosts): install.sh makes the Flower venv hold exactly the training environment lock",
        )
    )
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
        secrets += ([] if org.holds_vpn_key else ["your VPN private key"]) + ["your tls-crypt-v2 key"]
    return secrets


# The kit's signature: SHA256SUMS signed with the platform key (ECDSA P-384, SHA-384, DER), which
# `openssl dgst -sha384 -verify PLATFORM_KEY_FILE -signature SIGNATURE_FILE SHA256SUMS` checks.
# RFC 6979 deterministic ECDSA, so the same outputs still give a byte-identical kit.
SUMS_FILE, SIGNATURE_FILE, PLATFORM_KEY_FILE = "SHA256SUMS", "SHA256SUMS.sig", "platform-key.pem"
# An on-premise GPU organisation's DCGM exporter unit (nina.gpu), on its VPN address.
DCGM_EXPORTER_UNIT_PATH = f"{facts.SYSTEMD_SYSTEM_DIR}/{facts.DCGM_EXPORTER_UNIT}"


def sign_manifest(out: StackOutputs, manifest: bytes) -> bytes:
    key = serialization.load_pem_private_key(out.signing_key_pem.encode(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):  # nina.outputs checked the public half is P-384
        raise KitError([("platform_signing_private_key_pem", "is not an ECDSA key")])
    return key.sign(manifest, ec.ECDSA(hashes.SHA384(), deterministic_signing=True))


def _sha256sums(files: Sequence[KitFile]) -> bytes:
    lines = [f"{hashlib.sha256(f.content).hexdigest()}  {f.path}\n" for f in sorted(files, key=lambda f: f.path)]
    return "".join(lines).encode()


def _troubleshooting(org: Organisation, tenancy: Tenancy) -> str:
    """The kit README's troubleshooting table: nina.troubleshooting's site rows with this organisation's values."""
    host, _, port = tenancy.fleet_address.rpartition(":")
    return troubleshooting.table(troubleshooting.SITE, {"slug": org.slug, "superlink_host": host, "fleet_port": port}, vpn=org.onprem)


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
        "base_images": base_images(org.tenancy, tenancy.environment),
        "kit_name": f"{org.slug}{facts.SITEKIT_SUFFIX}",
        "held": held,
        "ubuntu": facts.UBUNTU_RELEASE,
        "accounts": _accounts(org),
        "packages_base": _packages(org)[0],
        "packages_systemd": _packages(org)[1],
    }
    install = _render(
        "install.sh.j2",
        platform_key_file=PLATFORM_KEY_FILE,
        signature_file=SIGNATURE_FILE,
        payloads=payloads,
        installer_dir=INSTALLER_DIR,
        payloads_dir=PAYLOADS_DIR,
        dirs=_directories(org),
        data_dir=_data_directory(org),
        units=([facts.OPENVPN_CLIENT_UNIT] if org.onprem else [])
        + [facts.SUPERNODE_UNIT, facts.NODE_EXPORTER_UNIT]
        + ([facts.DCGM_EXPORTER_UNIT] if org.onprem and org.gpu else []),
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
        platform_key_file=PLATFORM_KEY_FILE,
        signature_file=SIGNATURE_FILE,
        troubleshooting=_troubleshooting(org, tenancy),
        **context,
    )
    files.append(KitFile("README.md", _text(readme), 0o644))
    files.append(KitFile(PLATFORM_KEY_FILE, out.signing_public_key_pem.encode(), 0o644))
    manifest = _sha256sums(files)
    files.append(KitFile(SUMS_FILE, manifest, 0o644))
    files.append(KitFile(SIGNATURE_FILE, sign_manifest(out, manifest), 0o644))
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
