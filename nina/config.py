"""Stack configuration: the `nina:` namespace of `Pulumi.<stack>.yaml`, validated.

`load_config(raw)` takes the namespace as a plain dict (keys without the `nina:` prefix) and
returns a `StackConfig` or raises `ConfigError` whose message names every bad key and its fix.
Shape and type errors come from pydantic; cross-field rules (overlaps, uniqueness,
co-location, ...) are checked afterwards by plain functions that know each key's path.

This module never imports pulumi: the CLI (`nina config check`) and the tests use it as is.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from ipaddress import IPv4Network
from typing import Annotated, Any, Literal, get_args

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StrictInt, ValidationError, field_validator

from nina import environments, facts, services, text

NAMESPACE = "nina"
# \Z, not $: `$` also matches before a trailing newline, which would let "abc\n" through.
SLUG_RE = re.compile(facts.SLUG_PATTERN)
SLUG_FIX = "use 1-40 lowercase letters, digits and '-', not starting or ending with '-' (e.g. 'metro-north')"
# Roles of the shared hosts. Each tenancy additionally gets its own SuperLink VM unless the
# single tenancy's SuperLink is co-located on a shared host (the manual's "one large VM").
# The services (nina.services) say which roles are shared; Role spells them for the type checker.
SHARED_ROLES = services.SHARED_ROLES
Role = Literal["bastion", "proxy", "keycloak", "jupyterhub", "monitoring", "grafana", "superlink"]
if set(get_args(Role)) != set(SHARED_ROLES):
    raise RuntimeError(f"nina.config.Role {get_args(Role)} must list exactly the shared services {SHARED_ROLES}")
SUPPORTED_FLWR_VERSIONS = (facts.FLWR_VERSION,)
MAX_TENANCIES = facts.VPN_SERVER_OFFSET - facts.SUPERLINK_OFFSET
MAX_SHARED_HOSTS = facts.SUPERLINK_OFFSET - facts.SHARED_HOST_OFFSET
MAX_DNS_NAME = 253  # RFC 1035: a full name, dots included
# An admin network (or all of them together) broader than this needs allow_ssh_from_anywhere.
MIN_ADMIN_PREFIX = 8
# Segments must be RFC 1918 space. `IPv4Network.is_private` is not that test: it also
# accepts loopback, link-local, TEST-NET and 0.0.0.0/8 ranges, none of which Neutron can route.
RFC1918 = (IPv4Network("10.0.0.0/8"), IPv4Network("172.16.0.0/12"), IPv4Network("192.168.0.0/16"))
# A string that must not be empty (flavor, image, AZ names): "" only fails at deploy time.
NonEmptyStr = Annotated[str, Field(min_length=1)]


def _written_out(example: str):
    """Refuse numbers (and booleans) where an address is due: pydantic would turn `cidr: 10`
    into 0.0.0.10/32 and `cidr: yes` into 0.0.0.1/32."""

    def check(value: Any) -> Any:
        if isinstance(value, (int, float)):
            raise ValueError(
                f"{value!r} is a {'boolean' if isinstance(value, bool) else 'number'}, not an address; write it like {example}"
            )
        return value

    return BeforeValidator(check)


Cidr = Annotated[IPv4Network, _written_out("10.10.0.0/24")]
Address = Annotated[ipaddress.IPv4Address, _written_out("8.8.8.8")]


class ConfigError(Exception):
    """An invalid stack config. `problems` holds (key, message) pairs, key like `nina:network.server_cidr`."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__(self.message())

    def message(self) -> str:
        head = f"invalid stack config ({len(self.problems)} problem{'s' if len(self.problems) != 1 else ''}):"
        return "\n".join([head, *(f"  {key}: {msg}" for key, msg in self.problems)])


class _Strict(BaseModel):
    # Unknown keys are errors: a typo must not silently fall back to a default.
    model_config = ConfigDict(extra="forbid", frozen=True)


def _slug(value: str) -> str:
    if not isinstance(value, str) or not SLUG_RE.match(value):
        raise ValueError(f"{_show(value)} is not DNS-safe; {SLUG_FIX}")
    return value


class CloudConfig(_Strict):
    availability_zone: NonEmptyStr = facts.DEFAULT_AVAILABILITY_ZONE
    external_network: NonEmptyStr = facts.DEFAULT_EXTERNAL_NETWORK
    image: NonEmptyStr = facts.DEFAULT_IMAGE
    dns_nameservers: list[Address] = Field(default_factory=list)
    # Optional DNS domain (Designate zone, e.g. "myproject.cloud.edu.au"); host names in it
    # are added to certificate SANs.
    dns_domain: str | None = None

    @field_validator("dns_domain")
    @classmethod
    def _domain(cls, value: str | None) -> str | None:
        if value is None:
            return value
        value = value.rstrip(".")
        if len(value) > MAX_DNS_NAME:
            raise ValueError(f"is {len(value)} characters; a DNS name has at most {MAX_DNS_NAME}")
        if not all(SLUG_RE.match(label) for label in value.split(".")):
            raise ValueError(f"{_show(value)} is not a DNS domain; use dot-separated DNS-safe labels like 'myproject.cloud.edu.au'")
        return value


def _dns_domain(value: str) -> str:
    value = value.rstrip(".")
    if len(value) > MAX_DNS_NAME:
        raise ValueError(f"is {len(value)} characters; a DNS name has at most {MAX_DNS_NAME}")
    if not all(SLUG_RE.match(label) for label in value.split(".")) or "." not in value:
        raise ValueError(f"{_show(value)} is not a DNS domain; use dot-separated DNS-safe labels like 'fl.example.edu.au'")
    return value


# A docker image reference (distribution's grammar, lower-case registry): [registry[:port]/]path[:tag][@sha256:...].
# It reaches `docker pull` (nina-jupyterhub-docker, which refuses anything else) and DockerSpawner.
_IMAGE_PATH = facts.DOCKER_PATH_COMPONENT_PATTERN
_IMAGE_DOMAIN = r"(?:[a-z0-9]|[a-z0-9][a-z0-9-]*[a-z0-9])(?:\.(?:[a-z0-9]|[a-z0-9][a-z0-9-]*[a-z0-9]))*(?::[0-9]{1,5})?"
IMAGE_RE = re.compile(
    rf"(?:{_IMAGE_DOMAIN}/)?{_IMAGE_PATH}(?:/{_IMAGE_PATH})*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})?(?:@sha256:[0-9a-f]{{64}})?\Z"
)
MAX_IMAGE_REFERENCE = 255  # what nina-jupyterhub-docker accepts


def image_name(image: str) -> str:
    """The label researchers pick an image by: its last path part, without tag or digest."""
    return image.split("@", 1)[0].rsplit("/", 1)[-1].split(":", 1)[0]


def _image(value: str) -> str:
    if len(value) > MAX_IMAGE_REFERENCE or not IMAGE_RE.match(value):
        raise ValueError(
            f"{_show(value)} is not a docker image reference; write [registry[:port]/]path[:tag][@sha256:<64 hex>] "
            f"in lower case, at most {MAX_IMAGE_REFERENCE} characters, like 'quay.io/jupyter/scipy-notebook:2025-03-14'"
        )
    return value


ImageRef = Annotated[str, Field(min_length=1), AfterValidator(_image)]


class ResearcherAccess(_Strict):
    """The researchers' way in (manual 2, 3.2.2, 4.1.2.5-4.1.2.15): nginx on the proxy host serves
    each public service at `<facts.PUBLIC_NAMES[service]>.<public_domain>` over HTTPS, with Let's
    Encrypt certificates for which `acme_email` receives the expiry notices."""

    public_domain: str
    acme_email: str
    # Let's Encrypt's staging CA (untrusted certificates, generous rate limits): for test stacks.
    acme_staging: bool = False
    # The notebook images researchers choose from in JupyterHub (pulled on the host before first use).
    notebook_images: list[ImageRef] = Field(default_factory=lambda: list(facts.JUPYTERHUB_IMAGES), min_length=1)

    @field_validator("public_domain")
    @classmethod
    def _domain(cls, value: str) -> str:
        value = _dns_domain(value)
        if value.rsplit(".", 1)[-1].isdigit():
            raise ValueError(
                f"{_show(value)} ends in an all-digit top-level label (an address is no domain); "
                "use the DNS domain whose records you control, like 'fl.example.edu.au'"
            )
        longest = max(facts.PUBLIC_NAMES.values(), key=len)
        if len(f"{longest}.{value}") > MAX_DNS_NAME:
            raise ValueError(
                f"makes the public name {longest}.<domain> {len(longest) + 1 + len(value)} characters long; "
                f"a DNS name has at most {MAX_DNS_NAME}: use a domain of at most {MAX_DNS_NAME - len(longest) - 1} characters"
            )
        return value

    @field_validator("notebook_images")
    @classmethod
    def _distinct_names(cls, value: list[str]) -> list[str]:
        names = [image_name(i) for i in value]
        shared = sorted({n for n in names if names.count(n) > 1})
        if shared:
            raise ValueError(
                f"images {', '.join(repr(i) for i in value if image_name(i) in shared)} share the name {shared[0]!r} "
                "(the last path part, which researchers pick an image by); list each image once, with names of their own"
            )
        return value

    @field_validator("acme_email")
    @classmethod
    def _email(cls, value: str) -> str:
        local, _, domain = value.partition("@")
        bad = ValueError(f"{_show(value)} is not an e-mail address Let's Encrypt accepts; use e.g. 'fl-ops@example.edu.au'")
        if not re.fullmatch(r"[A-Za-z0-9._%+-]{1,64}", local):
            raise bad
        try:
            _dns_domain(domain.lower())
        except ValueError:
            raise bad from None
        return value

    def public_name(self, service: str) -> str:
        """The public host name of `service` (a key of facts.PUBLIC_NAMES)."""
        return f"{facts.PUBLIC_NAMES[service]}.{self.public_domain}"

    def public_url(self, service: str) -> str:
        return f"https://{self.public_name(service)}"


class NetworkConfig(_Strict):
    server_cidr: Cidr = IPv4Network("10.100.0.0/24")
    vpn_pool_cidr: Cidr = IPv4Network("192.168.99.0/24")
    admin_cidrs: list[Cidr] = Field(min_length=1)
    # SSH from 0.0.0.0/0 is refused unless this is set deliberately.
    allow_ssh_from_anywhere: bool = False


class HostGroup(_Strict):
    """A shared VM and the roles it runs (the manual allows one VM per role or one large VM)."""

    name: str
    roles: list[Role] = Field(min_length=1)
    flavor: NonEmptyStr = "m3.small"

    _name = field_validator("name")(classmethod(lambda cls, v: _slug(v)))


class SuperLinkSizing(_Strict):
    flavor: NonEmptyStr = "m3.medium"
    state_volume_gb: int = Field(default=20, ge=1, le=2000)


class SuperNodeSizing(_Strict):
    flavor: NonEmptyStr = "m3.medium"
    gpu_flavor: NonEmptyStr | None = None
    data_volume_gb: int = Field(default=0, ge=0, le=10000)


class GpuConfig(_Strict):
    """Cloud SuperNodes of organisations with `gpu: true` (nina.gpu): Ubuntu's NVIDIA server driver
    nvidia-driver-<branch>-server. A new branch is delivered in place (one reboot per branch), no new VM;
    DCGM's packages are pinned to dcgm_version when it is set."""

    driver_branch: StrictInt = facts.GPU_DRIVER_BRANCH
    # DCGM's packages (facts.DCGM_PINNED_PACKAGES) at this version; None: the repository's newest.
    dcgm_version: str | None = None

    @field_validator("dcgm_version", mode="before")
    @classmethod
    def _dcgm_version(cls, value: Any) -> Any:
        if value is None:
            return value
        if not isinstance(value, str) or not re.fullmatch(facts.DEBIAN_VERSION_PATTERN, value):
            raise ValueError(
                f"{_show(value)} is not a Debian package version; write the one apt offers, like '1:4.5.2-1' "
                f"(on a GPU host: apt-cache madison {facts.DCGM_PINNED_PACKAGES[0]}), or remove the key to install the newest"
            )
        return value

    @field_validator("driver_branch")
    @classmethod
    def _branch(cls, value: int) -> int:
        if value not in facts.GPU_DRIVER_BRANCHES:
            known = ", ".join(map(str, facts.GPU_DRIVER_BRANCHES))
            raise ValueError(
                f"{value} is not a driver branch nina installs; use one of {known} (Ubuntu {facts.UBUNTU_RELEASE}'s "
                f"nvidia-driver-<branch>-server), default {facts.GPU_DRIVER_BRANCH}"
            )
        return value


class JupyterHubSizing(_Strict):
    """The Cinder volume of the host with role jupyterhub: docker's data root (the notebook images,
    each researcher's named volume). It exists whenever that host does, researcher access or not,
    so that turning nina:researcher_access on or off never replaces the VM."""

    volume_gb: int = Field(default=facts.JUPYTERHUB_VOLUME_GB, ge=20, le=10000)


class VpnSizing(_Strict):
    flavor: NonEmptyStr = "m3.small"


class DatabaseConfig(_Strict):
    """The managed Postgres (Nectar Database service, i.e. Trove) for Keycloak and Grafana."""

    enabled: bool = True
    flavor: NonEmptyStr = "db3.small"
    size_gb: int = Field(default=10, ge=1, le=1000)
    datastore_version: NonEmptyStr = "16"
    # nina-db-backup on the hosts with the keycloak or grafana role: the daily backups kept (the newest), and the
    # Cinder volume they live on (made whenever that host exists, so these settings replace no VM).
    backup_keep: StrictInt = Field(default=facts.DB_BACKUP_KEEP, ge=1, le=366)
    backup_volume_gb: StrictInt = Field(default=facts.DB_BACKUP_VOLUME_GB, ge=1, le=10000)

    @field_validator("datastore_version")
    @classmethod
    def _datastore_version(cls, value: str) -> str:
        m = re.match(r"(\d+)", value)
        if m and int(m.group(1)) > facts.POSTGRES_CLIENT_MAJOR:
            raise ValueError(
                f"{_show(value)} is newer than the hosts' PostgreSQL client ({facts.POSTGRES_CLIENT_MAJOR}, Ubuntu "
                f"{facts.UBUNTU_RELEASE}'s postgresql-client), whose pg_dump refuses a newer server; use "
                f"{facts.POSTGRES_CLIENT_MAJOR} or older"
            )
        return value


# Keycloak 26 is the first with the options nina writes (hostname v2 as a URL, proxy-headers,
# bootstrap-admin); it runs on OpenJDK 21 (17 is deprecated for it).
MIN_KEYCLOAK_MAJOR = 26
MIN_JDK_MAJOR = 21


def keycloak_sha256_fix(version: str = "<nina:keycloak.version>") -> str:
    """How an operator computes nina:keycloak.sha256 for `version`."""
    url = facts.KEYCLOAK_RELEASE_URL.format(version=version)
    return f"compute it with `curl -fsSL {url} | sha256sum` and set the 64 hex digits"


class KeycloakConfig(_Strict):
    """Keycloak on the `keycloak` host (manual 4.1.2.9-4.1.2.10): pinned versions and the realm's name."""

    version: str = facts.KEYCLOAK_VERSION
    jdk_package: str = facts.KEYCLOAK_JDK_PACKAGE
    realm: str = facts.KEYCLOAK_REALM
    # The SHA-256 of the release's zip (facts.KEYCLOAK_RELEASE_URL): the host installs nothing
    # else. Required with a keycloak host and nina:researcher_access (`_check_keycloak`).
    sha256: str | None = None

    @field_validator("sha256")
    @classmethod
    def _sha256(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", value):
            raise ValueError(f"{_show(value)} is not a SHA-256 (64 hex digits); {keycloak_sha256_fix()}")
        return value.lower() if value is not None else None

    @field_validator("version")
    @classmethod
    def _version(cls, value: str) -> str:
        m = re.fullmatch(r"(\d{1,3})\.(\d{1,3})\.(\d{1,3})", value)
        if not m or int(m.group(1)) < MIN_KEYCLOAK_MAJOR:
            raise ValueError(
                f"{_show(value)} is not a Keycloak release nina supports; pin an exact release "
                f"{MIN_KEYCLOAK_MAJOR}.x.y or later such as {facts.KEYCLOAK_VERSION!r}"
            )
        return value

    @field_validator("jdk_package")
    @classmethod
    def _jdk(cls, value: str) -> str:
        m = re.fullmatch(r"openjdk-(\d{2})-jre-headless", value)
        if not m or int(m.group(1)) < MIN_JDK_MAJOR:
            raise ValueError(
                f"{_show(value)} is not a JDK package Keycloak {MIN_KEYCLOAK_MAJOR} runs on; "
                f"use an Ubuntu package openjdk-NN-jre-headless with NN >= {MIN_JDK_MAJOR}, e.g. {facts.KEYCLOAK_JDK_PACKAGE!r}"
            )
        return value

    @field_validator("realm")
    @classmethod
    def _realm(cls, value: str) -> str:
        _slug(value)
        if value == facts.KEYCLOAK_MASTER_REALM:
            raise ValueError(
                f"{value!r} is Keycloak's own administration realm (its admins are Keycloak's); "
                f"name the researchers' realm something else, like {facts.KEYCLOAK_REALM!r}"
            )
        return value


def grafana_sha256_fix(version: str = "<nina:grafana.version>") -> str:
    """How an operator computes nina:grafana.sha256 for `version`."""
    url = facts.GRAFANA_RELEASE_URL.format(version=version)
    return f"compute it with `curl -fsSL {url} | sha256sum` and set the 64 hex digits"


# Grafana 11 is the first whose generic OAuth has role_attribute_strict and allow_assign_grafana_admin
# as nina writes them, and whose provisioning reads `$__file{}` in every option.
MIN_GRAFANA_MAJOR = 11


class GrafanaConfig(_Strict):
    """Grafana on the monitoring host (role grafana): the pinned OSS release and its digest."""

    version: str = facts.GRAFANA_VERSION
    # The SHA-256 of the .deb (facts.GRAFANA_RELEASE_URL): the host installs nothing else.
    # Required with a grafana host (`_check_grafana`).
    sha256: str | None = None

    @field_validator("sha256")
    @classmethod
    def _sha256(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", value):
            raise ValueError(f"{_show(value)} is not a SHA-256 (64 hex digits); {grafana_sha256_fix()}")
        return value.lower() if value is not None else None

    @field_validator("version")
    @classmethod
    def _version(cls, value: str) -> str:
        m = re.fullmatch(facts.GRAFANA_VERSION_PATTERN, value) if isinstance(value, str) else None
        if not m or int(m.group(1)) < MIN_GRAFANA_MAJOR:
            raise ValueError(
                f"{_show(value)} is not a Grafana OSS release nina supports; pin an exact release "
                f"{MIN_GRAFANA_MAJOR}.x.y or later such as {facts.GRAFANA_VERSION!r}"
            )
        return value


class FlowerConfig(_Strict):
    version: str = facts.FLWR_VERSION

    @field_validator("version")
    @classmethod
    def _supported(cls, value: str) -> str:
        if value not in SUPPORTED_FLWR_VERSIONS:
            raise ValueError(
                f"flwr {_show(value)} is not supported; use {' or '.join(SUPPORTED_FLWR_VERSIONS)} "
                "(other releases differ in CLI config, dependencies or ports; see README, Which flwr release)"
            )
        return value


class TrainingEnvironment(_Strict):
    """A training environment (README, "Training environments"): flwr and these exact pins,
    locked in environments/<name>.lock by `nina env lock`."""

    variant: Literal["cpu", "cuda"] = "cpu"
    packages: list[str] = Field(default_factory=list, max_length=200)
    exclude_newer: str = facts.ENV_EXCLUDE_NEWER

    @field_validator("packages")
    @classmethod
    def _pins(cls, value: list[str]) -> list[str]:
        names = []
        for pin in value:
            name, _ = environments.parse_pin(pin)
            if name == "flwr":
                raise ValueError(f"{pin!r}: flwr comes from nina:flower.version ({facts.FLWR_VERSION}); leave it out of packages")
            if name in names:
                raise ValueError(f"{name} is listed twice; keep one pin")
            names.append(name)
        return value

    @field_validator("exclude_newer")
    @classmethod
    def _date(cls, value: str) -> str:
        if not environments.EXCLUDE_NEWER_RE.match(value):
            raise ValueError(f"{_show(value)} is not a UTC time like {facts.ENV_EXCLUDE_NEWER!r} (files uploaded before it are used)")
        return value


# A Prometheus duration of one unit ("30m", "1h"): what `for:` and range windows take.
DURATION_RE = re.compile(r"[1-9][0-9]{0,5}(s|m|h|d)\Z")


def _duration(value: str) -> str:
    if not isinstance(value, str) or not DURATION_RE.match(value):
        raise ValueError(f"{_show(value)} is not a duration; write a whole number and one unit s, m, h or d, like '30m' or '1h'")
    return value


Duration = Annotated[str, BeforeValidator(_duration)]
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration_seconds(duration: str) -> int:
    """A Duration ("10m", DURATION_RE) in seconds."""
    if not DURATION_RE.match(duration):
        raise ValueError(f"{duration!r} is not a duration like '10m'")
    return int(duration[:-1]) * _UNIT_SECONDS[duration[-1]]


# Backups run daily, each up to RandomizedDelaySec (30 min) late and taking up to its TimeoutStartSec
# (2 h): a newest backup younger than this is never late.
BACKUP_STALE_MIN = "26h"
Ratio = Annotated[float, Field(gt=0, lt=1)]


class AlertThresholds(_Strict):
    """Alert thresholds (manual 5.3; nina.monitoring renders the rules). Ratios lie between 0 and 1;
    `*_for` and windows are Prometheus durations."""

    # 15-minute load per CPU (5.3.1): medium above 0.8, high above 0.95, for host_for.
    cpu_load_medium: Ratio = 0.8
    cpu_load_high: Ratio = 0.95
    # Available / total memory (5.3.2): medium below 0.1, high below 0.05, for host_for.
    memory_available_medium: Ratio = 0.10
    memory_available_high: Ratio = 0.05
    # Free / size of each priority mount (5.3.3): low, medium, high severity below these, for disk_for.
    disk_free_low: Ratio = 0.30
    disk_free_medium: Ratio = 0.20
    disk_free_high: Ratio = 0.10
    host_for: Duration = "30m"  # CPU, memory, failed units (5.3.4), and the window restarts are counted in
    disk_for: Duration = "5m"
    unit_restarts: StrictInt = Field(default=3, ge=1, le=1000)  # restarts within host_for: a unit flaps
    gpu_temperature_celsius: StrictInt = Field(default=85, ge=40, le=120)  # 5.3.5: at or above, for gpu_for
    gpu_memory_used: Ratio = 0.90  # 5.3.6: used / total frame buffer above this, for gpu_for
    gpu_for: Duration = "1h"
    target_down_for: Duration = "5m"  # an exporter does not answer
    supernode_offline_for: Duration = "30m"  # nina_federation_supernode_online is 0
    runs_failed_window: Duration = "1h"  # a failed run alerts for this long
    # The federation metrics (written every minute) are older than this, or cannot be read for this long.
    federation_metrics_stale: Duration = "10m"
    certificate_expiry_days: StrictInt = Field(default=30, ge=1, le=365)  # fewer days left: alert
    # The newest backup (daily timers: nina-superlink-backup, nina-db-backup) is older than this, or a
    # host with a backup timer has had no backup metrics for this long.
    backup_stale: Duration = BACKUP_STALE_MIN

    @field_validator("backup_stale")
    @classmethod
    def _backup_stale(cls, value: str) -> str:
        if duration_seconds(value) < duration_seconds(BACKUP_STALE_MIN):
            raise ValueError(
                f"{_show(value)} is shorter than the time between two daily backups can be; write {BACKUP_STALE_MIN!r} or more"
            )
        return value


class SmtpReceiver(_Strict):
    """Alertmanager's e-mail receiver. The password is no config: it is the secret input of
    nina.monitoring.monitoring_delivery (`smtp_password`), needed when auth_username is set."""

    smarthost: str  # host:port of the relay, e.g. smtp.example.edu.au:587
    sender: str = Field(alias="from")
    to: list[str] = Field(min_length=1)
    auth_username: NonEmptyStr | None = None
    require_tls: bool = True

    @field_validator("smarthost")
    @classmethod
    def _smarthost(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not re.fullmatch(r"[A-Za-z0-9.-]+", host):
            raise ValueError(f"{_show(value)} is not host:port; write the relay like 'smtp.example.edu.au:587'")
        return value

    @field_validator("sender")
    @classmethod
    def _sender(cls, value: str) -> str:
        return _mail_address(value)

    @field_validator("to")
    @classmethod
    def _to(cls, value: list[str]) -> list[str]:
        return [_mail_address(v) for v in value]


def _mail_address(value: str) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+", value):
        raise ValueError(f"{_show(value)} is not an e-mail address; write one like 'fl-ops@example.edu.au'")
    return value


class MonitoringConfig(_Strict):
    """The monitoring host (role monitoring, manual 5): Prometheus's retention and volume, the
    alert thresholds and Alertmanager's receivers (none: alerts only in Alertmanager itself)."""

    retention_days: StrictInt = Field(default=30, ge=1, le=3650)
    volume_gb: StrictInt = Field(default=50, ge=5, le=10000)
    alerts: AlertThresholds = AlertThresholds()
    smtp: SmtpReceiver | None = None
    # A Slack incoming webhook (webhook_kind slack), a Microsoft Teams workflow/connector URL
    # (msteams: Alertmanager 0.26+, Ubuntu 24.04's), or any receiver of Alertmanager's JSON (generic).
    webhook_url: str | None = None
    webhook_kind: Literal["slack", "msteams", "generic"] = "slack"

    @field_validator("webhook_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"https://[A-Za-z0-9.-]+(:[0-9]{1,5})?/\S*", value):
            raise ValueError(f"{_show(value, 40)} is not an https:// URL; paste the webhook URL your Slack or Teams channel gave you")
        return value


class Organisation(_Strict):
    slug: str
    name: str = Field(min_length=1, max_length=120)
    placement: Literal["cloud", "onprem"]
    # Required, and never renumbered: it fixes the organisation's partition and (on premise)
    # its VPN address. Optional here only so that `_check_partitions` can report a missing one
    # with the id to write down, instead of pydantic's bare "required".
    partition_id: StrictInt | None = Field(default=None, ge=0)
    gpu: bool = False
    # The organisation's own segment inside Nectar; required for `cloud`, not for `onprem`.
    cidr: Cidr | None = None
    flavor: NonEmptyStr | None = None
    # Bring-your-own keys: an organisation that keeps its private keys at home supplies a
    # PEM certificate signing request for its VPN client certificate (CN = slug) and/or the
    # OpenSSH public key of its SuperNode key pair; then no private key of theirs is in the stack.
    vpn_csr_pem: NonEmptyStr | None = None
    supernode_public_key: NonEmptyStr | None = None
    # Raise by one to replace the organisation's kit (a lost laptop, a leaked key): new VPN and
    # SuperNode keys, certificates and tls-crypt-v2 key; the old ones are refused by the VPN hub
    # and the SuperLink at once. No other organisation's kit changes.
    kit_generation: StrictInt = Field(default=1, ge=1, le=9999)

    _slug_ok = field_validator("slug")(classmethod(lambda cls, v: _slug(v)))


class Tenancy(_Strict):
    """One federation: its own SuperLink (and in UAT its own OpenVPN server and pool)."""

    name: str
    organisations: list[Organisation] = Field(min_length=1)
    # This tenancy's OpenVPN pool; defaults to nina:network.vpn_pool_cidr (one tenancy only).
    vpn_pool_cidr: Cidr | None = None
    # Partition ids of removed organisations: never given out again (their VPN addresses with them).
    retired_partition_ids: list[Annotated[StrictInt, Field(ge=0)]] = Field(default_factory=list)
    # Its training environment (nina:training_environments, or the built-in facts.ENV_DEFAULT).
    training_environment: str = facts.ENV_DEFAULT

    _name = field_validator("name")(classmethod(lambda cls, v: _slug(v)))


class Operator(_Strict):
    """A person who logs in to every host (as the image's login user) with their own SSH key."""

    name: str
    # One bare OpenSSH public key line (ed25519, RSA 3072+, ECDSA), as `ssh-keygen` wrote the .pub.
    ssh_public_key: NonEmptyStr

    _name = field_validator("name")(classmethod(lambda cls, v: _slug(v)))


class StackConfig(_Strict):
    environment: str
    cloud: CloudConfig = CloudConfig()
    network: NetworkConfig
    hosts: list[HostGroup] = Field(default_factory=lambda: [HostGroup(name="gateway", roles=["bastion"])])
    superlink: SuperLinkSizing = SuperLinkSizing()
    supernode: SuperNodeSizing = SuperNodeSizing()
    gpu: GpuConfig = GpuConfig()
    jupyterhub: JupyterHubSizing = JupyterHubSizing()
    vpn: VpnSizing = VpnSizing()
    database: DatabaseConfig = DatabaseConfig()
    keycloak: KeycloakConfig = KeycloakConfig()
    # Grafana on the monitoring host (used when a host has the grafana role).
    grafana: GrafanaConfig = GrafanaConfig()
    flower: FlowerConfig = FlowerConfig()
    # `organisations` (with `retired_partition_ids`) is the one-tenancy shorthand; `tenancies` the general form.
    organisations: list[Organisation] | None = None
    retired_partition_ids: list[Annotated[StrictInt, Field(ge=0)]] = Field(default_factory=list)
    tenancies: list[Tenancy] | None = None
    # Training environments by name (README, "Training environments"); the one-tenancy shorthand's choice.
    training_environments: dict[str, TrainingEnvironment] = Field(default_factory=dict)
    training_environment: str = facts.ENV_DEFAULT
    # Protect the CA and state volumes from deletion (turn off only for throwaway stacks).
    protect: bool = True
    # People who may log in to every host; their keys are delivered in place (no VM replaced).
    operators: list[Operator] = Field(default_factory=list)
    # Researchers' access (nginx, Keycloak, JupyterHub); None: the stack has no public services.
    researcher_access: ResearcherAccess | None = None
    # The monitoring host's Prometheus and Alertmanager (used when a host has the monitoring role).
    monitoring: MonitoringConfig = MonitoringConfig()

    _env = field_validator("environment")(classmethod(lambda cls, v: _slug(v)))

    # ---- derived views (valid only after load_config's checks) -------------------------
    @property
    def all_tenancies(self) -> list[Tenancy]:
        if self.tenancies is not None:
            return self.tenancies
        # model_construct: `organisations: []` is reported by load_config, not by a crash here.
        return [
            Tenancy.model_construct(
                name="main",
                organisations=list(self.organisations or []),
                retired_partition_ids=list(self.retired_partition_ids),
                training_environment=self.training_environment,
            )
        ]

    def training_environment_of(self, tenancy: Tenancy) -> environments.Environment:
        """The definition of the tenancy's training environment (valid after load_config)."""
        name = tenancy.training_environment
        if name == facts.ENV_DEFAULT:
            return environments.DEFAULT
        env = self.training_environments[name]
        return environments.Environment(name, env.variant, tuple(env.packages), env.exclude_newer)

    def vpn_pool(self, tenancy: Tenancy) -> IPv4Network | None:
        """The tenancy's VPN pool, or None when it has no on-premise organisation (no VPN)."""
        if not any(o.placement == "onprem" for o in tenancy.organisations):
            return None
        return tenancy.vpn_pool_cidr or self.network.vpn_pool_cidr

    def partition_ids(self, tenancy: Tenancy) -> dict[str, int]:
        """Partition id per org slug, as the config states them (every one is required)."""
        ids = {o.slug: o.partition_id for o in tenancy.organisations}
        missing = [slug for slug, i in ids.items() if i is None]
        if missing:
            raise ValueError(f"organisations {missing} have no partition_id; load the config with load_config")
        return {slug: i for slug, i in ids.items() if i is not None}


def _next_id(tenancy: Tenancy) -> int:
    """The next id after the highest taken, by an organisation or by one that was removed."""
    taken = [o.partition_id for o in tenancy.organisations if o.partition_id is not None]
    return 1 + max([*taken, *tenancy.retired_partition_ids], default=-1)


def proposed_partition_ids(tenancy: Tenancy) -> dict[int, int]:
    """The id to write down for each organisation (by list index) that states none.

    While no organisation of the tenancy has one (a config from before ids were required),
    the ids list order gave them until then: 0..n-1, so a live stack keeps its partitions and
    VPN addresses. Otherwise the next ids after the highest one taken, in list order: an id
    freed by a removal is never handed out again (a new organisation never inherits an old
    VPN address)."""
    orgs = tenancy.organisations
    if all(o.partition_id is None for o in orgs):
        return {i: i for i in range(len(orgs))}
    missing = [i for i, o in enumerate(orgs) if o.partition_id is None]
    return {i: _next_id(tenancy) + k for k, i in enumerate(missing)}


# ---------------------------------------------------------------------------------------
# Loading and error reporting
# ---------------------------------------------------------------------------------------

_TYPE_FIXES = {
    "missing": "is required; add it",
    "ip_v4_network": "must be an IPv4 network in CIDR form with no host bits set, e.g. 10.10.0.0/24",
    "ip_v4_address": "must be an IPv4 address, e.g. 8.8.8.8",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "int_type": "must be a whole number",
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "string_type": "must be a string",
    "list_type": "must be a list",
    "model_type": "must be a mapping of keys to values",
    "model_attributes_type": "must be a mapping of keys to values",
    "dict_type": "must be a mapping of keys to values",
    "too_short": "must not be empty; list at least one entry",
    "string_too_short": "must not be empty; give a value, or leave an optional key out to use its default",
    "recursion_loop": "refers to itself (a YAML alias cycle); write the value out",
}


def _key(loc: Iterable[Any]) -> str:
    out = NAMESPACE + ":"
    first = True
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("" if first else ".") + str(part)
        first = False
    return out


def _error_key(err: Mapping[str, Any]) -> str:
    loc = tuple(err["loc"])
    if err["type"] == "invalid_key" and loc:
        # The last part is the offending mapping key itself, not a list index.
        return _key(loc[:-1]) + ("" if len(loc) == 1 else ".") + str(loc[-1])
    return _key(loc)


def _show(value: Any, limit: int = 60) -> str:
    """repr() for a message, cut short: the input may be a whole misplaced subtree."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(err: Mapping[str, Any]) -> str:
    kind = err["type"]
    if kind == "invalid_key":
        return f"key {_show(err['input'])} is not a string; keys are names such as 'server_cidr'"
    if kind == "string_too_long":
        return f"is too long; use at most {err['ctx']['max_length']} characters"
    if kind == "extra_forbidden":
        return "unknown key; remove it or fix its spelling (see README, 'Stack config')"
    if kind == "value_error":
        return str(err["ctx"]["error"]) if "ctx" in err else err["msg"]
    if kind == "literal_error":
        return f"{_show(err['input'])} is not allowed; {err['msg'].lower()}"
    if kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        return f"{_show(err['input'])}: {err['msg'].lower()}"
    if kind.startswith("ip_v4") and "input" in err:
        return f"{_show(err['input'])} {_TYPE_FIXES.get(kind, err['msg'])}"
    if kind in _TYPE_FIXES:
        return _TYPE_FIXES[kind]
    return err["msg"]


# The only secrets nina cannot make itself, each set with `pulumi config set --secret nina:<key>`:
# never part of StackConfig (no plain copy in the model), read by __main__ as Pulumi secrets.
SECRET_INPUTS = {"monitoring_smtp_password": "the password of nina:monitoring.smtp.auth_username at the SMTP relay"}


def plain_secret_problem(key: str) -> tuple[str, str]:
    """A secret input (`key`: its name without the namespace) set in plain text in the stack file."""
    full = f"{NAMESPACE}:{key}"
    return (full, f"must be a secret, not plain text in the stack file; set it with `pulumi config set --secret {full}`")


def secret_input_problems(cfg: StackConfig, present: Iterable[str]) -> list[tuple[str, str]]:
    """What is wrong with the secret inputs set (`present`: their keys) for `cfg`: each is needed
    exactly when the setting it serves is made."""
    smtp = cfg.monitoring.smtp
    needed = {"monitoring_smtp_password"} if smtp is not None and smtp.auth_username is not None else set()
    have = set(present)
    problems = []
    for key in sorted(needed - have):
        problems.append(
            (
                f"{NAMESPACE}:{key}",
                f"is not set, but nina:monitoring.smtp.auth_username is; set {SECRET_INPUTS[key]} with "
                f"`pulumi config set --secret {NAMESPACE}:{key}`",
            )
        )
    for key in sorted(have - needed):
        problems.append(
            (
                f"{NAMESPACE}:{key}",
                "is set, but nothing uses it (nina:monitoring.smtp.auth_username is not set); "
                f"remove it (`pulumi config rm {NAMESPACE}:{key}`) or set the user name",
            )
        )
    return problems


def load_config(raw: Mapping[str, Any]) -> StackConfig:
    """Validate the `nina:` namespace (keys without prefix). Raises ConfigError, never anything else."""
    if not isinstance(raw, Mapping):
        raise ConfigError([(NAMESPACE + ":", "the stack config must be a mapping of keys to values")])
    try:
        cfg = StackConfig.model_validate(dict(raw))
    except ValidationError as exc:
        problems = [(_error_key(e), _describe(e)) for e in exc.errors(include_url=False)]
        raise ConfigError(problems) from None
    problems = list(_semantic_problems(cfg))
    if problems:
        raise ConfigError(problems)
    return cfg


def _semantic_problems(cfg: StackConfig) -> Iterable[tuple[str, str]]:
    yield from _check_text(cfg, ())
    yield from _check_tenancy_form(cfg)
    yield from _check_monitoring(cfg)
    if cfg.tenancies is None and cfg.organisations is None:
        return
    yield from _check_names(cfg)
    yield from _check_partitions(cfg)
    yield from _check_segments(cfg)
    yield from _check_ssh(cfg)
    yield from _check_cloud(cfg)
    yield from _check_hosts(cfg)
    yield from _check_keycloak(cfg)
    yield from _check_grafana(cfg)
    yield from _check_vpn(cfg)
    yield from _check_own_keys(cfg)
    yield from _check_operators(cfg)
    yield from _check_training_environments(cfg)


# PEM fields and the key line (a trailing newline): the only strings that may hold line breaks.
_MULTILINE_FIELDS = frozenset({"vpn_csr_pem", "supernode_public_key", "ssh_public_key"})  # the key check refuses more than one line


def _check_text(value: Any, loc: tuple[Any, ...]) -> Iterable[tuple[str, str]]:
    """Every string of the config, wherever it is, free of control and invisible characters."""
    if isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _check_text(getattr(value, name), (*loc, name))
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _check_text(item, (*loc, i))
    elif isinstance(value, str):
        problem = text.refusal(value, newlines=bool(loc) and loc[-1] in _MULTILINE_FIELDS)
        if problem is not None:
            yield (_key(loc), problem)


def _tenancy_key(cfg: StackConfig, t: int) -> str:
    return "nina:organisations" if cfg.tenancies is None else f"nina:tenancies[{t}].organisations"


def _check_tenancy_form(cfg: StackConfig) -> Iterable[tuple[str, str]]:
    if cfg.tenancies is not None and cfg.organisations is not None:
        yield ("nina:organisations", "give either nina:organisations (one tenancy) or nina:tenancies, not both")
    elif cfg.tenancies is None and cfg.organisations is None:
        yield ("nina:organisations", "is required; list the organisations (or use nina:tenancies for several federations)")
    elif cfg.organisations is not None and not cfg.organisations:
        yield ("nina:organisations", "must not be empty; list at least one organisation")
    elif cfg.tenancies is not None and not cfg.tenancies:
        yield ("nina:tenancies", "must not be empty; list at least one tenancy")
    elif cfg.tenancies is not None and len(cfg.tenancies) > MAX_TENANCIES:
        yield ("nina:tenancies", f"{len(cfg.tenancies)} tenancies; at most {MAX_TENANCIES} are supported")
    if cfg.tenancies is not None and cfg.retired_partition_ids:
        yield (
            "nina:retired_partition_ids",
            "belongs to the one-tenancy shorthand (nina:organisations); with nina:tenancies, give each tenancy its own retired_partition_ids",
        )


def _check_names(cfg: StackConfig) -> Iterable[tuple[str, str]]:
    seen_t: dict[str, int] = {}
    for t, ten in enumerate(cfg.all_tenancies):
        if ten.name in seen_t:
            yield (
                f"nina:tenancies[{t}].name",
                f"duplicate tenancy name {ten.name!r} (also tenancies[{seen_t[ten.name]}]); give each a unique name",
            )
        seen_t.setdefault(ten.name, t)
    seen: dict[str, str] = {}
    for t, ten in enumerate(cfg.all_tenancies):
        for o, org in enumerate(ten.organisations):
            key = f"{_tenancy_key(cfg, t)}[{o}].slug"
            if org.slug in seen:
                yield (
                    key,
                    f"duplicate organisation slug {org.slug!r} (also {seen[org.slug]}); slugs name site kits and must be unique across the stack",
                )
            seen.setdefault(org.slug, key)


def _check_partitions(cfg: StackConfig) -> Iterable[tuple[str, str]]:
    """Every organisation states its partition id; ids are unique within a tenancy. Gaps are
    fine (an organisation was removed): ids are never renumbered."""
    for t, ten in enumerate(cfg.all_tenancies):
        seen: dict[int, int] = {}
        for o, org in enumerate(ten.organisations):
            if org.partition_id is None:
                continue
            if org.partition_id in seen:
                yield (
                    f"{_tenancy_key(cfg, t)}[{o}].partition_id",
                    f"duplicate partition id {org.partition_id} (also organisation [{seen[org.partition_id]}]); partition ids are unique within a tenancy: "
                    f"keep the deployed organisation's id and give the other partition_id: {_next_id(ten)} (the next after the highest taken)",
                )
            seen.setdefault(org.partition_id, o)
            if org.partition_id in ten.retired_partition_ids:
                yield (
                    f"{_tenancy_key(cfg, t)}[{o}].partition_id",
                    f"{org.partition_id} is a retired partition id (a removed organisation's, in retired_partition_ids): "
                    f"it is never given out again; give {org.slug!r} partition_id: {_next_id(ten)}",
                )
        proposals = proposed_partition_ids(ten)
        first_ids = len(proposals) == len(ten.organisations)
        for o, proposed in proposals.items():
            slug = ten.organisations[o].slug
            why = (
                "the id list order gives it today, as no organisation of this tenancy states one yet: "
                "writing these down changes nothing for a live stack"
                if first_ids
                else f"the next after the highest in this tenancy, {_next_id(ten) - 1}: ids of removed organisations are never reused; "
                f"if {slug!r} is already deployed, keep its id from the stack outputs, tenancies.{ten.name}.organisations.{slug}.partition_id"
            )
            yield (
                f"{_tenancy_key(cfg, t)}[{o}].partition_id",
                f"is required (it fixes the organisation's partition and, on premise, its VPN address for good); add partition_id: {proposed} ({why})",
            )


def _check_segments(cfg: StackConfig) -> Iterable[tuple[str, str]]:
    segments: list[tuple[str, IPv4Network]] = [
        ("nina:network.server_cidr", cfg.network.server_cidr),
        ("nina:network.vpn_pool_cidr", cfg.network.vpn_pool_cidr),
    ]
    for t, ten in enumerate(cfg.all_tenancies):
        for o, org in enumerate(ten.organisations):
            key = f"{_tenancy_key(cfg, t)}[{o}].cidr"
            if org.placement == "cloud" and org.cidr is None:
                yield (
                    key,
                    f"organisation {org.slug!r} is placed in the cloud and needs its own segment; add a CIDR such as 10.{101 + o}.0.0/24",
                )
            elif org.placement == "onprem" and org.cidr is not None:
                yield (
                    key,
                    f"organisation {org.slug!r} is on premise and joins over the VPN; remove cidr (its address comes from nina:network.vpn_pool_cidr)",
                )
            elif org.cidr is not None:
                segments.append((key, org.cidr))
    for t, ten in enumerate(cfg.all_tenancies):
        if ten.vpn_pool_cidr is not None:
            segments.append((f"nina:tenancies[{t}].vpn_pool_cidr", ten.vpn_pool_cidr))
    for key, net in segments:
        if net.prefixlen > facts.MAX_SEGMENT_PREFIX:
            yield (
                key,
                f"{net} is too small; use a /{facts.MAX_SEGMENT_PREFIX} or larger (fixed addresses use .10-.99, DHCP starts at .{facts.DHCP_POOL_OFFSET})",
            )
        if not any(net.subnet_of(private) for private in RFC1918):
            yield (key, f"{net} is not a private range; use an RFC 1918 network (inside 10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16)")
    for i, (key_a, a) in enumerate(segments):
        for key_b, b in segments[i + 1 :]:
            if a.overlaps(b):
                yield (key_b, f"{b} overlaps {a} ({key_a}); give every segment its own range")
    docker = IPv4Network(facts.DOCKER_ADDRESS_POOL)
    if any("jupyterhub" in h.roles for h in cfg.hosts):
        for key, net in segments:
            if net.overlaps(docker):
                yield (
                    key,
                    f"{net} overlaps {docker}, where docker on the JupyterHub host makes its networks "
                    "(facts.DOCKER_ADDRESS_POOL); choose a range outside it",
                )


def _check_ssh(cfg: StackConfig) -> Iterable[tuple[str, str]]:
    if cfg.network.allow_ssh_from_anywhere:
        return
    opt_in = "list your admin networks, or set nina:network.allow_ssh_from_anywhere: true to accept that risk"
    for i, net in enumerate(cfg.network.admin_cidrs):
        if net.prefixlen == 0:
            yield (f"nina:network.admin_cidrs[{i}]", f"0.0.0.0/0 opens SSH to the whole internet; {opt_in}")
        elif net.prefixlen < MIN_ADMIN_PREFIX:
            yield (
                f"nina:network.admin_cidrs[{i}]",
                f"{net} is broader than a /{MIN_ADMIN_PREFIX} ({net.num_addresses:,} addresses) and opens SSH to a large part of the internet; {opt_in}",
            )
    if any(net.prefixlen < MIN_ADMIN_PREFIX for net in cfg.network.admin_cidrs):
        return
    total = sum(n.num_addresses for n in ipaddress.collapse_addresses(cfg.network.admin_cidrs))
    if total > 2 ** (32 - MIN_ADMIN_PREFIX):
        yield (
            "nina:network.admin_cidrs",
            f"together cover {total:,} addresses, more than a /{MIN_ADMIN_PREFIX}: SSH would be open to a large part of the internet; {opt_in}",
        )


def _check_cloud(cfg: StackConfig) -> Iterable[tuple[str, str]]:
    domain = cfg.cloud.dns_domain
    if domain:
        # Host names in the domain go into certificates' SANs: each at most 253 characters.
        names = [h.name for h in cfg.hosts]
        names += [f"{role}-{t.name}" for t in cfg.all_tenancies for role in ("superlink", "vpn")]
        names += [f"supernode-{o.slug}" for t in cfg.all_tenancies for o in t.organisations]
        longest = max(names, key=len, default="")
        if names and len(longest) + 1 + len(domain) > MAX_DNS_NAME:
            yield (
                "nina:cloud.dns_domain",
                f"is {len(domain)} characters; with host name {longest!r} it makes a name of "
                f"{len(longest) + 1 + len(domain)}, over DNS's {MAX_DNS_NAME}; use a domain of at most {MAX_DNS_NAME - 1 - len(longest)} characters",
            )
    expected = facts.AZ_EXTERNAL_NETWORKS.get(cfg.cloud.availability_zone)
    if expected is not None and cfg.cloud.external_network != expected:
        yield (
            "nina:cloud.external_network",
            f"{cfg.cloud.external_network!r} does not serve availability zone {cfg.cloud.availability_zone!r}; routers and floating IPs there use {expected!r}",
        )
    gpu_orgs = [
        org.slug for ten in cfg.all_tenancies for org in ten.organisations if org.gpu and org.placement == "cloud" and not org.flavor
    ]
    if gpu_orgs and not cfg.supernode.gpu_flavor:
        yield (
            "nina:supernode.gpu_flavor",
            f"cloud organisations {', '.join(gpu_orgs)} want a GPU; set a GPU flavor (e.g. 'reservation:<id>') or a per-organisation flavor",
        )


def _check_hosts(cfg: StackConfig) -> Iterable[tuple[str, str]]:
    if len(cfg.hosts) > MAX_SHARED_HOSTS:
        yield ("nina:hosts", f"{len(cfg.hosts)} shared hosts; at most {MAX_SHARED_HOSTS} are supported")
    names: dict[str, int] = {}
    where: dict[str, int] = {}
    for h, host in enumerate(cfg.hosts):
        if host.name in names:
            yield (f"nina:hosts[{h}].name", f"duplicate host name {host.name!r}; give each shared host a unique name")
        names.setdefault(host.name, h)
        if host.name.startswith(("superlink-", "supernode-", "vpn-")):
            yield (f"nina:hosts[{h}].name", f"{host.name!r} is reserved for per-tenancy and per-organisation hosts; choose another name")
        for role in sorted(set(host.roles)):
            if host.roles.count(role) > 1:
                yield (f"nina:hosts[{h}].roles", f"role {role!r} is listed {host.roles.count(role)} times; list each role once")
        for role in host.roles:
            if role in where and where[role] != h:
                yield (
                    f"nina:hosts[{h}].roles",
                    f"role {role!r} is already on hosts[{where[role]}]; each shared role runs on exactly one host",
                )
            where.setdefault(role, h)
        if "monitoring" in host.roles and "superlink" in host.roles:
            yield (
                f"nina:hosts[{h}].roles",
                "monitoring may never share a VM with the SuperLink (Prometheus 9090/9091/9093 clash with the SuperLink's ports); put them on separate hosts",
            )
    if "bastion" not in where:
        yield (
            "nina:hosts",
            "no host has the 'bastion' role; one host must carry it (operators and pulumi reach the private hosts through it)",
        )
    if cfg.researcher_access is not None and "proxy" not in where:
        yield (
            "nina:researcher_access",
            "is set, but no host in nina:hosts has the 'proxy' role; add 'proxy' to a host's roles (nginx serves the public names there)",
        )
    if cfg.researcher_access is not None and "jupyterhub" in where and "keycloak" not in where:
        yield (
            "nina:hosts",
            "a host has the 'jupyterhub' role but none has 'keycloak'; JupyterHub logs researchers in through Keycloak, so add 'keycloak' to a host's roles",
        )
    if cfg.researcher_access is not None and "keycloak" in where and not cfg.database.enabled:
        yield (
            "nina:database.enabled",
            "is false, but Keycloak keeps its realm and users in the managed Postgres (keycloakdb_server); set it to true",
        )
    if "superlink" in where and len(cfg.all_tenancies) > 1:
        yield (
            f"nina:hosts[{where['superlink']}].roles",
            "a shared host can carry the SuperLink only with a single tenancy; every tenancy gets its own SuperLink VM, so remove 'superlink' here",
        )


def _check_keycloak(cfg: StackConfig) -> Iterable[tuple[str, str]]:
    has_keycloak = any("keycloak" in h.roles for h in cfg.hosts)
    if has_keycloak and cfg.researcher_access is not None and cfg.keycloak.sha256 is None:
        yield (
            "nina:keycloak.sha256",
            f"is required with a keycloak host and nina:researcher_access: the host installs Keycloak {cfg.keycloak.version} "
            f"only if the zip's SHA-256 matches; {keycloak_sha256_fix(cfg.keycloak.version)}",
        )


def _check_grafana(cfg: StackConfig) -> Iterable[tuple[str, str]]:
    for h, host in enumerate(cfg.hosts):
        if "grafana" not in host.roles:
            continue
        if "monitoring" not in host.roles:
            yield (
                f"nina:hosts[{h}].roles",
                "'grafana' must be on the host with the 'monitoring' role (Grafana reads Prometheus on that host's loopback); "
                "add 'monitoring' here or move 'grafana' to that host",
            )
        if not cfg.database.enabled:
            yield (
                "nina:database.enabled",
                "is false, but Grafana keeps its users and settings in the managed Postgres (grafanadb_server); set it to true",
            )
        if cfg.grafana.sha256 is None:
            yield (
                "nina:grafana.sha256",
                f"is required with a grafana host: the host installs Grafana {cfg.grafana.version} only if the .deb's "
                f"SHA-256 matches; {grafana_sha256_fix(cfg.grafana.version)}",
            )


def _check_vpn(cfg: StackConfig) -> Iterable[tuple[str, str]]:
    users: dict[IPv4Network, int] = {}
    for t, ten in enumerate(cfg.all_tenancies):
        pool = cfg.vpn_pool(ten)
        if pool is None:
            continue
        if pool in users:
            yield (
                f"nina:tenancies[{t}].vpn_pool_cidr",
                f"tenancy {ten.name!r} would share the VPN pool {pool} with tenancies[{users[pool]}]; each tenancy has its own OpenVPN server, so give it its own vpn_pool_cidr (e.g. 192.168.{100 + t}.0/24)",
            )
        users.setdefault(pool, t)
        # An on-premise organisation's VPN address is pool + VPN_CLIENT_OFFSET + its partition
        # id: it must be a host address of the pool (not its broadcast address).
        highest = pool.num_addresses - 2 - facts.VPN_CLIENT_OFFSET
        for o, org in enumerate(ten.organisations):
            if org.placement == "onprem" and org.partition_id is not None and org.partition_id > highest:
                pool_key = f"nina:tenancies[{t}].vpn_pool_cidr" if ten.vpn_pool_cidr is not None else "nina:network.vpn_pool_cidr"
                yield (
                    f"{_tenancy_key(cfg, t)}[{o}].partition_id",
                    f"{org.partition_id} puts {org.slug!r} outside the VPN pool {pool} (its address is pool .{facts.VPN_CLIENT_OFFSET} + partition id, "
                    f"so ids up to {highest} fit); use a larger pool in {pool_key}, or an id up to {highest} that no organisation has had",
                )


def _check_own_keys(cfg: StackConfig) -> Iterable[tuple[str, str]]:
    from nina.keys import KeyError_, check_csr, check_openssh_public_key

    for t, ten in enumerate(cfg.all_tenancies):
        for o, org in enumerate(ten.organisations):
            base = f"{_tenancy_key(cfg, t)}[{o}]"
            if org.vpn_csr_pem is not None:
                if org.placement != "onprem":
                    yield (
                        f"{base}.vpn_csr_pem",
                        f"organisation {org.slug!r} is not on premise and gets no VPN certificate; remove vpn_csr_pem",
                    )
                else:
                    try:
                        check_csr(org.vpn_csr_pem, org.slug)
                    except KeyError_ as exc:
                        yield (f"{base}.vpn_csr_pem", str(exc))
            if org.supernode_public_key is not None and org.placement != "onprem":
                yield (
                    f"{base}.supernode_public_key",
                    f"organisation {org.slug!r} runs its SuperNode on a Nectar VM that nina provisions, so nina makes its key; remove supernode_public_key",
                )
            elif org.supernode_public_key is not None:
                try:
                    check_openssh_public_key(org.supernode_public_key)
                except KeyError_ as exc:
                    yield (f"{base}.supernode_public_key", str(exc))


def _check_operators(cfg: StackConfig) -> Iterable[tuple[str, str]]:
    """Each operator's key is a usable login key; names and keys are unique (a key twice would
    leave its holder in when one entry is removed)."""
    from nina.keys import KeyError_, operator_authorized_key

    names: dict[str, int] = {}
    keys: dict[str, int] = {}
    for i, op in enumerate(cfg.operators):
        base = f"nina:operators[{i}]"
        if op.name in names:
            yield (f"{base}.name", f"duplicate operator name {op.name!r} (also operators[{names[op.name]}]); give each person one entry")
        names.setdefault(op.name, i)
        if text.refusal(op.ssh_public_key, newlines=True) is not None:
            continue  # reported by _check_text
        try:
            key = operator_authorized_key(op.ssh_public_key)
        except KeyError_ as exc:
            yield (f"{base}.ssh_public_key", str(exc))
            continue
        if key in keys:
            other = cfg.operators[keys[key]].name
            yield (
                f"{base}.ssh_public_key",
                f"is the same key as operators[{keys[key]}] ({other!r}); every operator logs in with a key of their own, "
                "so removing one entry cuts that person off",
            )
        keys.setdefault(key, i)


def operator_keys(cfg: StackConfig) -> list[tuple[str, str]]:
    """(name, canonical `type base64`) of each operator, in config order (after load_config)."""
    from nina.keys import operator_authorized_key

    return [(op.name, operator_authorized_key(op.ssh_public_key)) for op in cfg.operators]


def _check_monitoring(cfg: StackConfig) -> Iterable[tuple[str, str]]:
    """Severity levels in order: a higher severity is the stricter threshold."""
    a = cfg.monitoring.alerts
    key = "nina:monitoring.alerts"
    if a.cpu_load_high <= a.cpu_load_medium:
        yield (
            f"{key}.cpu_load_high",
            f"{a.cpu_load_high} is not above cpu_load_medium ({a.cpu_load_medium}); high severity needs the higher load, e.g. 0.95 and 0.8",
        )
    if a.memory_available_high >= a.memory_available_medium:
        yield (
            f"{key}.memory_available_high",
            f"{a.memory_available_high} is not below memory_available_medium ({a.memory_available_medium}); "
            "high severity needs less memory left, e.g. 0.05 and 0.1",
        )
    if not a.disk_free_high < a.disk_free_medium < a.disk_free_low:
        yield (
            f"{key}.disk_free_high",
            f"disk_free_high ({a.disk_free_high}) < disk_free_medium ({a.disk_free_medium}) < disk_free_low ({a.disk_free_low}) "
            "must hold (less free space, higher severity); e.g. 0.1, 0.2 and 0.3",
        )


def _check_training_environments(cfg: StackConfig) -> Iterable[tuple[str, str]]:
    for name in cfg.training_environments:
        key = f"nina:training_environments.{name}"
        if name == facts.ENV_DEFAULT:
            yield (key, f"{name!r} is the built-in environment (flwr and {', '.join(facts.ENV_DEFAULT_PACKAGES)}); give yours another name")
        elif not isinstance(name, str) or not SLUG_RE.match(name):
            yield (f"nina:training_environments.{_show(name)}", f"the name is not DNS-safe; {SLUG_FIX}")
    if cfg.tenancies is not None and cfg.training_environment != facts.ENV_DEFAULT:
        yield (
            "nina:training_environment",
            "belongs to the one-tenancy shorthand (nina:organisations); with nina:tenancies, give each tenancy its own training_environment",
        )
    known = sorted({facts.ENV_DEFAULT, *cfg.training_environments})
    checked: dict[str, int | None] = {}  # environment -> the CUDA major of its lock (None: none, or no lock)
    for t, ten in enumerate(cfg.all_tenancies):
        key = "nina:training_environment" if cfg.tenancies is None else f"nina:tenancies[{t}].training_environment"
        name = ten.training_environment
        if name not in known:
            yield (
                key,
                f"{_show(name)} is not a training environment; use one of {', '.join(known)} or define it in nina:training_environments",
            )
            continue
        if name != facts.ENV_DEFAULT and not SLUG_RE.match(name):
            continue
        if name not in checked:
            checked[name] = None
            try:
                checked[name] = environments.cuda_major(environments.parse(environments.read_lock(cfg.training_environment_of(ten))))
            except (environments.LockError, ValueError) as exc:
                yield (key if name == facts.ENV_DEFAULT else f"nina:training_environments.{name}", str(exc))
        # A CUDA runtime newer than the cloud GPU hosts' driver can run: torch would see no GPU.
        cuda, branch = checked[name], cfg.gpu.driver_branch
        gpu_cloud = sorted(org.slug for org in ten.organisations if org.gpu and org.placement == "cloud")
        if cuda is not None and gpu_cloud and cuda > facts.GPU_CUDA_MAJOR[branch]:
            newest = max(facts.GPU_DRIVER_BRANCHES, key=lambda b: facts.GPU_CUDA_MAJOR[b])
            yield (
                "nina:gpu.driver_branch",
                f"driver branch {branch} runs CUDA up to {facts.GPU_CUDA_MAJOR[branch]}, but tenancy {ten.name}'s environment "
                f"{name!r} installs CUDA {cuda} runtime wheels for its GPU organisations {', '.join(gpu_cloud)} (they would see "
                f"no usable GPU); use driver_branch {newest} or an environment whose packages are built for CUDA {facts.GPU_CUDA_MAJOR[branch]}",
            )
