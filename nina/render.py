"""The rendering layer: files for hosts and SuperLink/SuperNode deliveries, as plain strings.

Pure: never imports pulumi, reads nothing but its templates (nina/templates, Jinja2 with
StrictUndefined), and every value comes from `nina.facts`, the plan or the arguments.
Output is deterministic (no timestamps, stable order), so re-rendering an unchanged plan
gives byte-identical files and Pulumi sees no diff.

Two kinds of output:
- files without secrets (scripts, units, configs) that go into cloud-init user-data
  (`cloudinit.userdata`) and, later, into site kits;
- delivery payloads (`superlink_delivery`, `supernode_delivery`): JSON that pulumi-command
  pipes over SSH into `nina-install-files` on the host. These carry keys, so they only
  travel over SSH stdin and never appear in user-data.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2

from nina import config, environments, facts, services, templating
from nina.host import install_files as installer
from nina.plan import Member, TenancyPlan

_HOST_RE = re.compile(r"^[A-Za-z0-9.-]+$")


@lru_cache(maxsize=1)
def _env() -> jinja2.Environment:
    env = templating.environment()
    # TOML basic strings and Python string literals: JSON escaping is valid for both.
    env.filters["toml_str"] = lambda v: json.dumps(str(v))
    env.filters["py_str"] = lambda v: json.dumps(str(v))
    env.globals.update(
        facts=facts,
        flwr_version=facts.FLWR_VERSION,
        certs_subdir=posixpath.relpath(facts.SUPERLINK_CERTS, facts.SUPERLINK_ETC),
        state_db_name=posixpath.relpath(facts.SUPERLINK_STATE_DB, facts.SUPERLINK_STATE_DIR),
        conf_name=posixpath.relpath(facts.SUPERNODE_CONF, facts.SUPERNODE_ETC),
        slug_pattern=config.SLUG_RE.pattern,
    )
    # The SuperNode's certs/ sits in the same place relative to its etc dir.
    assert posixpath.relpath(facts.SUPERNODE_CERTS, facts.SUPERNODE_ETC) == env.globals["certs_subdir"]
    return env


def _render(name: str, **context: object) -> str:
    return _env().get_template(name).render(**context)


# --- Flower services ---------------------------------------------------------------------


def run_superlink_sh() -> str:
    """The SuperLink wrapper script (installed at facts.SUPERLINK_RUN_SCRIPT)."""
    return _render("run_superlink.sh.j2")


def superlink_backup_service() -> str:
    """facts.SUPERLINK_BACKUP_SERVICE: one run of nina-superlink-backup (nina.host.state_backup)."""
    return _render("superlink-backup.service.j2")


def superlink_backup_timer() -> str:
    """facts.SUPERLINK_BACKUP_TIMER: daily, catching up a missed run after downtime."""
    return _render("superlink-backup.timer.j2")


def db_backup_units(database: str) -> tuple[str, str]:
    """The service and timer names of `database`'s backups (facts.DB_BACKUP_SERVICE, DB_BACKUP_TIMER)."""
    if database not in facts.DATABASE_CLIENTS:
        raise ValueError(f"no service of database {database!r} in facts.DATABASE_CLIENTS")
    return facts.DB_BACKUP_SERVICE.format(database=database), facts.DB_BACKUP_TIMER.format(database=database)


def db_backup_files(database: str, keep: int) -> list[DeliveredFile]:
    """nina-db-backup (nina.host.db_backup) and `database`'s daily backup: its oneshot service
    (hardened; `--keep` from nina:database.backup_keep) and timer, for the delivery of the service
    that uses the database (facts.DATABASE_CLIENTS: its env file and unit)."""
    if not isinstance(keep, int) or keep < 1:
        raise ValueError(f"keep {keep!r} must be a positive number of backups")
    service, timer = db_backup_units(database)
    env_file, _unit = facts.DATABASE_CLIENTS[database]
    names = {"database": database, "role": facts.DATABASES[database], "schema": facts.DATABASE_SCHEMAS[database]}
    return [
        DeliveredFile(facts.DB_BACKUP_BIN, launcher("db_backup"), 0o755),
        DeliveredFile(
            f"{facts.SYSTEMD_SYSTEM_DIR}/{service}",
            _render("db-backup.service.j2", **names, env_file=env_file, keep=keep, timer=timer),
            0o644,
        ),
        DeliveredFile(f"{facts.SYSTEMD_SYSTEM_DIR}/{timer}", _render("db-backup.timer.j2", database=database, service=service), 0o644),
    ]


def federation_metrics_service(tenancy_name: str) -> str:
    """facts.FEDERATION_METRICS_SERVICE: one run of nina-federation-metrics (nina.host.federation_metrics)
    for the tenancy, sandboxed: root's uid reading, writing only node exporter's textfile directory."""
    if not config.SLUG_RE.match(tenancy_name):
        raise ValueError(f"tenancy name {tenancy_name!r} is not a slug")
    return _render("federation-metrics.service.j2", tenancy=tenancy_name)


def federation_metrics_timer() -> str:
    """facts.FEDERATION_METRICS_TIMER: every minute."""
    return _render("federation-metrics.timer.j2")


def cert_expiry_service() -> str:
    """facts.CERT_EXPIRY_SERVICE: one run of nina-cert-expiry (nina.host.cert_expiry), sandboxed as above."""
    return _render("cert-expiry.service.j2")


def cert_expiry_timer() -> str:
    """facts.CERT_EXPIRY_TIMER: hourly, catching up a missed run after downtime."""
    return _render("cert-expiry.timer.j2")


def env_sync_service(unit: str) -> str:
    """facts.ENV_SYNC_SERVICE: one run of nina-env-sync (nina.host.env_sync) that try-restarts `unit`."""
    if unit not in (facts.SUPERLINK_UNIT, facts.SUPERNODE_UNIT):
        raise ValueError(f"{unit!r} is not a Flower unit")
    return _render("env-sync.service.j2", unit=unit)


def environment_files(lock: str, unit: str) -> list[DeliveredFile]:
    """The tenancy's training environment lock and the step that installs it into the Flower venv
    (nina-env-sync, run by every delivery: a no-op when in sync). A changed lock restarts `unit`
    through nina-env-sync only, once the venv holds it."""
    if not lock.startswith(environments.HEADER_START):
        raise ValueError("the environment lock is not one that `nina env lock` wrote (see nina.environments)")
    return [
        DeliveredFile(facts.FLOWER_ENV_LOCK, lock, 0o644),
        DeliveredFile(facts.ENV_SYNC_BIN, launcher("env_sync"), 0o755),
        DeliveredFile(f"{facts.SYSTEMD_SYSTEM_DIR}/{facts.ENV_SYNC_SERVICE}", env_sync_service(unit), 0o644),
    ]


def _flower_payload(files: list[DeliveredFile], units: Sequence[str], lock: str, unit: str) -> str:
    """A Flower service's payload: its files and the environment's; the service is restarted by a
    change of its own files (the installer) or of the venv (nina-env-sync), never twice for a lock."""
    own = [f.path for f in files]
    return delivery_payload([*files, *environment_files(lock, unit)], list(units), run=[facts.ENV_SYNC_SERVICE], restart_when={unit: own})


def superlink_service() -> str:
    """The systemd unit `superlink.service` (installed in facts.SYSTEMD_SYSTEM_DIR)."""
    return _render("superlink.service.j2")


def run_supernode_sh() -> str:
    """The SuperNode wrapper script (facts.SUPERNODE_RUN_SCRIPT; also a container ENTRYPOINT)."""
    return _render("run_supernode.sh.j2")


def supernode_service() -> str:
    """The systemd unit `supernode.service`."""
    return _render("supernode.service.j2")


def _split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not _HOST_RE.match(host) or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"superlink address {address!r} must look like '10.100.0.40:{facts.SUPERLINK_FLEET_PORT}'")
    return host, int(port)


def supernode_conf(member: Member, superlink_address: str) -> str:
    """supernode.conf (manual 4.1.3.3.1) for a member; `superlink_address` is the Fleet API "ip:port"."""
    host, port = _split_address(superlink_address)
    return _render(
        "supernode.conf.j2",
        slug=member.slug,
        tenancy=member.tenancy,
        superlink_server=host,
        superlink_port=port,
        partition_id=int(member.partition_id),
    )


def admin_flwr_config(tenancy_name: str) -> str:
    """The flwr CLI's config.toml in the SuperLink host's admin FLWR_HOME (facts.SUPERLINK_ADMIN_FLWR_HOME):
    one SuperLink connection, facts.SUPERLINK_ADMIN_CONNECTION, to the local Control API."""
    if not config.SLUG_RE.match(tenancy_name):
        raise ValueError(f"tenancy name {tenancy_name!r} is not a slug")
    return _render("admin_flwr_config.toml.j2", tenancy_name=tenancy_name)


# --- delivery payloads (secrets: SSH stdin only) -----------------------------------------


@dataclass(frozen=True)
class DeliveredFile:
    """One entry of a payload's "files", checked when it is made by the installer's own check."""

    path: str
    content: str
    mode: int
    owner: str = facts.ROOT_USER
    group: str = facts.ROOT_USER

    def __post_init__(self) -> None:
        try:
            installer.check_file(asdict(self), f"delivered file {self.path!r}")
        except installer.BadInput as exc:
            raise ValueError(str(exc)) from None


def checked_payload(payload: Mapping[str, Any]) -> str:
    """The JSON of an installer payload (sorted keys), or ValueError where `nina-install-files`
    would refuse it: the schema is the installer's `check_payload`, defined once."""
    try:
        installer.check_payload(json.loads(json.dumps(payload)))  # what the host will read
    except installer.BadInput as exc:
        raise ValueError(f"{installer.PROG} would refuse this payload: {exc}") from None
    return json.dumps(payload, sort_keys=True) + "\n"


def delivery_payload(
    files: Sequence[DeliveredFile],
    restart: Sequence[str],
    prune: Sequence[str] = (),
    hot: Mapping[str, Sequence[str]] | None = None,
    run: Sequence[str] = (),
    restart_when: Mapping[str, Sequence[str]] | None = None,
) -> str:
    """The JSON that `nina-install-files` reads on stdin (sorted keys, files in the given order).

    `prune`: directories in which `nina-install-files` deletes the regular files that the
    payload does not carry (not recursive); each must lie at or under the directory of a
    delivered file. Without it the payload has no "prune" key (unchanged from before).

    `hot`: directory -> OpenVPN management sockets. The service reads the files directly in
    such a directory per connection, so changing or removing one restarts nothing: instead the
    client named by the file is disconnected (`client-kill`) through each socket. Any other
    change still restarts `restart`. Each hot directory must also be pruned.

    `run`: oneshot units started on every delivery, changed or not, after the restarts (steps
    that must happen again when a delivery is re-run, like the hub host's docker steps).
    Without it the payload has no "run" key.

    `restart_when`: unit of `restart` -> delivered paths: that unit is restarted only when one of
    them changed (the others on any change). Without it the payload has no "restart_when" key.

    Checked by `checked_payload` (ValueError with the installer's reason).
    """
    payload: dict[str, Any] = {"files": [asdict(f) for f in files], "restart": restart}
    if prune:
        payload["prune"] = prune
    if hot:
        payload["hot"] = dict(hot)
    if run:
        payload["run"] = list(run)
    if restart_when:
        payload["restart_when"] = {unit: list(paths) for unit, paths in restart_when.items()}
    return checked_payload(payload)


def checked_text(value: str, what: str, marker: str) -> str:
    """`value` with a final newline, or ValueError if it lacks `marker` (a PEM block's kind)."""
    if marker not in value:
        raise ValueError(f"{what} does not look right: expected {marker!r} in it")
    return value if value.endswith("\n") else value + "\n"


_text = checked_text


def service_files(program: str, program_text: str, unit: str, unit_text: str) -> list[DeliveredFile]:
    """A service's program (root-owned, 0755) and its systemd unit, delivered in place: changing
    either re-runs the delivery (daemon-reload, enable, restart) and replaces no VM."""
    return [
        DeliveredFile(program, program_text, 0o755),
        DeliveredFile(f"{facts.SYSTEMD_SYSTEM_DIR}/{unit}", unit_text, 0o644),
    ]


def _ca_trust(ca_cert_pem: str) -> DeliveredFile:
    return DeliveredFile(facts.LOCAL_CA_TRUST, ca_cert_pem, 0o644)


def superlink_delivery(tenancy: TenancyPlan, ca_cert_pem: str, cert_pem: str, key_pem: str) -> str:
    """Certificates, key and the admin CLI config for a tenancy's SuperLink, nina-membership, the
    state's daily backup and the federation metrics every minute (their timers); restarts
    superlink.service and enables and (re)starts the timers."""
    ca = _text(ca_cert_pem, "CA certificate", "BEGIN CERTIFICATE")
    user, group = facts.SERVICE_USERS["superlink"], facts.SYSTEM_GROUP
    certs = facts.SUPERLINK_CERTS
    files = [
        DeliveredFile(f"{certs}/{facts.CA_CERT_FILE}", ca, 0o644, user, group),
        DeliveredFile(f"{certs}/{facts.SERVER_CERT_FILE}", _text(cert_pem, "server certificate", "BEGIN CERTIFICATE"), 0o644, user, group),
        DeliveredFile(f"{certs}/{facts.SERVER_KEY_FILE}", _text(key_pem, "server key", "PRIVATE KEY"), 0o600, user, group),
        _ca_trust(ca),
        DeliveredFile(f"{facts.SUPERLINK_ADMIN_FLWR_HOME}/{facts.FLWR_CONFIG_FILE}", admin_flwr_config(tenancy.name), 0o644),
        *service_files(facts.SUPERLINK_RUN_SCRIPT, run_superlink_sh(), facts.SUPERLINK_UNIT, superlink_service()),
        DeliveredFile(facts.MEMBERSHIP_BIN, membership_script(), 0o755),
        DeliveredFile(facts.SUPERLINK_BACKUP_BIN, launcher("state_backup"), 0o755),
        DeliveredFile(f"{facts.SYSTEMD_SYSTEM_DIR}/{facts.SUPERLINK_BACKUP_SERVICE}", superlink_backup_service(), 0o644),
        DeliveredFile(f"{facts.SYSTEMD_SYSTEM_DIR}/{facts.SUPERLINK_BACKUP_TIMER}", superlink_backup_timer(), 0o644),
        DeliveredFile(facts.FEDERATION_METRICS_BIN, launcher("federation_metrics"), 0o755),
        DeliveredFile(f"{facts.SYSTEMD_SYSTEM_DIR}/{facts.FEDERATION_METRICS_SERVICE}", federation_metrics_service(tenancy.name), 0o644),
        DeliveredFile(f"{facts.SYSTEMD_SYSTEM_DIR}/{facts.FEDERATION_METRICS_TIMER}", federation_metrics_timer(), 0o644),
    ]
    return _flower_payload(files, services.superlink.UNITS, tenancy.environment_lock, facts.SUPERLINK_UNIT)


AUTOMATION_KEY_COMMENT = "nina-automation"  # pulumi-command only; never give it to a person
OPERATOR_KEY_COMMENT = "nina-operator:"


def authorized_keys(automation_public_key: str, operators: Sequence[tuple[str, str]]) -> str:
    """The login user's whole keys file (facts.LOGIN_AUTHORIZED_KEYS, the only one sshd reads:
    `sshd_dropin`): the automation key (pulumi-command's, the Nova
    key pair's) first, then one line per operator, `type base64 nina-operator:<name>`.

    `operators` are (name, canonical key) as `config.operator_keys` gives them. Every line is
    a bare key (no options), so an operator removed from the config has no line left."""
    fields = automation_public_key.split()
    if len(fields) < 2 or not fields[0].startswith(("ssh-", "ecdsa-sha2-")):
        raise ValueError("the automation public key is not an OpenSSH public key line")
    lines = [f"{fields[0]} {fields[1]} {AUTOMATION_KEY_COMMENT}"]
    for name, key in operators:
        if not config.SLUG_RE.match(name) or len(key.split()) != 2:
            raise ValueError(f"operator {name!r}: pass config.operator_keys(cfg), a name and a bare `type base64` key")
        lines.append(f"{key} {OPERATOR_KEY_COMMENT}{name}")
    return "".join(line + "\n" for line in lines)


def sshd_dropin() -> str:
    """sshd's drop-in (user-data, fixed): login keys only from the files nina writes."""
    return (
        "# nina-fl: logins use only the keys nina writes (the automation key, nina:operators), never\n"
        "# ~/.ssh/authorized_keys. The file is rewritten whole by each host's <host>-base delivery.\n"
        f"AuthorizedKeysFile {facts.AUTHORIZED_KEYS_DIR}/%u\n"
    )


def base_delivery(automation_public_key: str, operators: Sequence[tuple[str, str]] = ()) -> str:
    """Every host's `<host>-base` delivery: the journald and logrotate limits, the node exporter's
    settings (manual 5.2.2, 5.4), the nina-install-files launcher, nina-cert-expiry with its hourly
    timer (certificate expiry metrics) and the login user's
    authorized keys (the automation key and the operators', in facts.AUTHORIZED_KEYS_DIR, which
    is pruned and hot: a change to the keys alone restarts nothing); restarts what they configure."""
    files = [
        DeliveredFile(facts.JOURNALD_DROPIN, journald_conf(), 0o644),
        DeliveredFile(facts.NODE_EXPORTER_DEFAULTS, node_exporter_defaults(), 0o644),
        DeliveredFile(facts.NODE_EXPORTER_LOGROTATE, logrotate_conf(), 0o644),
        DeliveredFile(facts.INSTALL_FILES_BIN, install_files_script(), 0o755),
        DeliveredFile(facts.CERT_EXPIRY_BIN, launcher("cert_expiry"), 0o755),
        DeliveredFile(f"{facts.SYSTEMD_SYSTEM_DIR}/{facts.CERT_EXPIRY_SERVICE}", cert_expiry_service(), 0o644),
        DeliveredFile(f"{facts.SYSTEMD_SYSTEM_DIR}/{facts.CERT_EXPIRY_TIMER}", cert_expiry_timer(), 0o644),
        DeliveredFile(facts.LOGIN_AUTHORIZED_KEYS, authorized_keys(automation_public_key, operators), 0o644),
    ]
    # The keys are hot without a socket: sshd reads them at each login, so adding or removing an
    # operator restarts nothing (a removed operator's open sessions are not cut: everyone logs in
    # as the one login user, so there is no session of theirs alone to end).
    return delivery_payload(files, list(services.base.UNITS), prune=[facts.AUTHORIZED_KEYS_DIR], hot={facts.AUTHORIZED_KEYS_DIR: []})


def supernode_delivery(
    member: Member,
    superlink_address: str,
    ca_cert_pem: str,
    private_key_openssh: str,
    public_key_openssh: str,
    environment_lock: str,
) -> str:
    """CA, OpenSSH key pair and supernode.conf for a member's SuperNode, and its tenancy's training
    environment lock (`environment_files`); restarts supernode.service."""
    ca = _text(ca_cert_pem, "CA certificate", "BEGIN CERTIFICATE")
    user, group = facts.SERVICE_USERS["supernode"], facts.SYSTEM_GROUP
    certs = facts.SUPERNODE_CERTS
    files = [
        DeliveredFile(f"{certs}/{facts.CA_CERT_FILE}", ca, 0o644, user, group),
        DeliveredFile(
            f"{certs}/{facts.SUPERNODE_KEY_FILE}",
            _text(private_key_openssh, "SuperNode private key", "BEGIN OPENSSH PRIVATE KEY"),
            0o600,
            user,
            group,
        ),
        DeliveredFile(
            f"{certs}/{facts.SUPERNODE_PUB_FILE}", _text(public_key_openssh, "SuperNode public key", "ecdsa-sha2-nistp"), 0o644, user, group
        ),
        DeliveredFile(facts.SUPERNODE_CONF, supernode_conf(member, superlink_address), 0o644, user, group),
        _ca_trust(ca),
        *service_files(facts.SUPERNODE_RUN_SCRIPT, run_supernode_sh(), facts.SUPERNODE_UNIT, supernode_service()),
    ]
    return _flower_payload(files, services.supernode.UNITS, environment_lock, facts.SUPERNODE_UNIT)


# --- host programs (no secrets: they go into user-data) ----------------------------------


_PACKAGE_DIR = Path(__file__).resolve().parent
# The source tree that holds the `nina` package: the lib directory for host programs run from
# a checkout (tests, the rehearsal) instead of a host's facts.HOST_LIB_CURRENT.
SOURCE_ROOT = str(_PACKAGE_DIR.parent)
# What the delivery installs on every host: nina.host and the one module it imports. The first
# five are nina-install-files with what it imports (trust: the check of every root-run program), which site kits carry too (nina.kit).
INSTALLER_PROGRAM_FILES = ("__init__.py", "facts.py", "host/__init__.py", "host/install_files.py", "host/trust.py")
HOST_PROGRAM_FILES = (
    *INSTALLER_PROGRAM_FILES,
    "host/failure.py",
    "host/common.py",
    "host/backups.py",
    "host/membership.py",
    "host/vpn_verify.py",
    "host/state_backup.py",
    "host/db_backup.py",
    "host/download.py",
    "host/keycloak_install.py",
    "host/grafana_install.py",
    "host/keycloak_realm.py",
    "host/metrics.py",
    "host/federation_metrics.py",
    "host/cert_expiry.py",
    "host/hub_docker.py",
    "host/env_sync.py",
    "host/gpu_driver.py",
)


@lru_cache(maxsize=1)
def host_programs() -> dict[str, str]:
    """relpath -> source of the host programs (nina.host and nina.facts) that deliveries install."""
    return {f"nina/{rel}": (_PACKAGE_DIR / rel).read_text(encoding="utf-8") for rel in HOST_PROGRAM_FILES}


def installer_programs() -> dict[str, str]:
    """The part of host_programs() that nina-install-files needs (`python3 -I -B` with it on sys.path
    runs `nina.host.install_files`): what a site kit carries to install its files."""
    return {f"nina/{rel}": host_programs()[f"nina/{rel}"] for rel in INSTALLER_PROGRAM_FILES}


def delivery_bundle(payload: str) -> str:
    """What a delivery pipes into the receiver (`receive_command`): the host programs and the installer's payload."""
    return json.dumps({"programs": host_programs(), "payload": json.loads(payload)}, sort_keys=True) + "\n"


def delivery_revision(create: str, bundle: str) -> str:
    """A digest of what re-runs a delivery (its command and its bundle; its VM aside): steps that
    must re-run exactly when it does take it as a trigger (a GPU host's reboot and ready steps)."""
    return hashlib.sha256(json.dumps([create, bundle]).encode()).hexdigest()


def receive_argv(lib: str, program: str) -> list[str]:
    """The receiver (nina.host.receive: installs a delivery's host programs as a version under
    `lib` and runs nina.host.`program` from it) as the host's own python3 runs it: the source
    is on the command line, so the receiver travels with every delivery instead of user-data."""
    source = (_PACKAGE_DIR / "host" / "receive.py").read_text(encoding="utf-8")
    return [facts.HOST_PYTHON, "-I", "-c", source, lib, program]


def receive_command(lib: str = facts.HOST_LIB_DIR, program: str = "install_files") -> str:
    """The shell command of a delivery, after `bootstrap_guard`: the receiver as root, the bundle on stdin."""
    return "sudo " + shlex.join(receive_argv(lib, program))


def launcher(module: str, lib: str = facts.HOST_LIB_CURRENT) -> str:
    """A root-owned program file that runs nina.host.`module` from `lib` with the host's python3 -I."""
    return (
        f"#!{facts.HOST_PYTHON} -I\n"
        f'"""Runs nina.host.{module} from {lib} (installed there by a delivery\'s receiver)."""\n'
        "import runpy\nimport sys\n\n"
        f"sys.path.insert(0, {json.dumps(lib)})\n"
        f'runpy.run_module("nina.host.{module}", run_name="__main__")\n'
    )


def install_files_script(lib: str = facts.HOST_LIB_CURRENT) -> str:
    """`nina-install-files` (facts.INSTALL_FILES_BIN): a launcher of nina.host.install_files in `lib`."""
    return launcher("install_files", lib)


def membership_script(lib: str = facts.HOST_LIB_CURRENT) -> str:
    """`nina-membership` (facts.MEMBERSHIP_BIN): a launcher of nina.host.membership in `lib`."""
    return launcher("membership", lib)


def bootstrap_check_script(host: str, checks: Sequence[Sequence[str]]) -> str:
    """`nina-bootstrap-check` (facts.BOOTSTRAP_CHECK_BIN): the host's first-boot postconditions, each
    a line `<check> <args...>` (functions of the script: package, member, path, python_dist,
    executable, active, mounted); writes facts.BOOTSTRAP_MARKER only if all hold."""
    known = {"package", "member", "path", "python_dist", "executable", "active", "mounted"}
    lines = []
    for check in checks:
        if not check or check[0] not in known:
            raise ValueError(f"unknown bootstrap check {list(check)!r}")
        lines.append(shlex.join(check))
    return _render("nina-bootstrap-check.sh.j2", host=host, checks=lines)


def bootstrap_guard() -> str:
    """The shell prefix of every delivery: wait for first boot to end, then refuse (exit 1, saying
    why, with cloud-init's own account) a host whose bootstrap did not write facts.BOOTSTRAP_MARKER."""
    return (
        "sudo cloud-init status --wait >/dev/null 2>&1; "
        f"if ! test -f {facts.BOOTSTRAP_MARKER}; then "
        f'echo "nina: refusing to deliver to $(hostname): its first-boot bootstrap failed or did not finish '
        f'({facts.BOOTSTRAP_MARKER} is missing). cloud-init says:" >&2; '
        "sudo cloud-init status --long >&2; "
        f"sudo tail -n 40 {facts.CLOUD_INIT_OUTPUT_LOG} >&2; "
        f"echo \"nina: fix the cause, then replace this VM (or run 'sudo {facts.BOOTSTRAP_CHECK_BIN}' after fixing it by hand)\" >&2; "
        "exit 1; fi"
    )


def prepare_volume_script() -> str:
    """`nina-prepare-volume` (facts.PREPARE_VOLUME_BIN): formats (once) and mounts a Cinder volume."""
    return _render("nina-prepare-volume.sh.j2")


# --- host housekeeping (manual 5.2.2, 5.4) -----------------------------------------------


def journald_conf() -> str:
    """Drop-in for /etc/systemd/journald.conf.d (facts.JOURNALD_DROPIN)."""
    return _render("journald.conf.j2")


def logrotate_conf() -> str:
    """/etc/logrotate.d/prometheus-node-exporter (manual 5.4.2)."""
    return _render("logrotate-node-exporter.j2")


def node_exporter_vpn_dropin() -> str:
    """The exporter's drop-in on an on-premise kit host (facts.NODE_EXPORTER_VPN_DROPIN): after the
    VPN client, and retried every facts.NODE_EXPORTER_RETRY_SECONDS until the tunnel address exists."""
    return (
        "# nina-fl: the node exporter listens on this organisation's VPN address only (nina.render).\n"
        f"[Unit]\nAfter={facts.OPENVPN_CLIENT_UNIT}\nStartLimitIntervalSec=0\n\n"
        f"[Service]\nRestart=always\nRestartSec={facts.NODE_EXPORTER_RETRY_SECONDS}\n"
    )


def node_exporter_defaults(listen_ip: str | None = None) -> str:
    """/etc/default/prometheus-node-exporter: listen on facts.NODE_EXPORTER_PORT (manual 5.2.2), on
    every address of a cloud host, on `listen_ip` alone where given (an on-premise kit host's VPN
    address: the hospital's own network never sees the exporter); the
    systemd collector limited to the units worth watching (services.watched_units), as a regex
    without backslashes (`[.]`), which systemd's EnvironmentFile and the shell keep as written."""
    units = services.watched_units()
    if any(not re.fullmatch(r"[A-Za-z0-9@._-]+", u) for u in units):
        raise ValueError(f"a unit name outside [A-Za-z0-9@._-] cannot go into the node exporter's unit regex: {units}")
    if listen_ip is not None and not re.fullmatch(r"[0-9]{1,3}(\.[0-9]{1,3}){3}", listen_ip):
        raise ValueError(f"{listen_ip!r} is not an IPv4 address for the node exporter to listen on")
    return _render(
        "node-exporter.default.j2",
        unit_include="(" + "|".join(u.replace(".", "[.]") for u in units) + ")",
        listen_ip=listen_ip or "",
    )
