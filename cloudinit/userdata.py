"""cloud-init user-data for each host of the plan.

`user_data(plan, host, volume_ids)` returns `#cloud-config` YAML (made with PyYAML, never
string-built) that prepares a fresh Ubuntu 24.04 VM for its roles: hostname, packages, the
`fl_system` group and service users (manual 4.1.2.1), the directory layout (4.1.1), the
node exporter on its port (5.2.2), journald/logrotate limits (5.4), the nina host programs,
for Flower roles the venv, wrapper scripts and systemd units (4.1.2.17, 4.1.3.3), and
for the `vpn` role the OpenVPN hub's bridge/forwarding script, its unit and a drop-in that
keeps the server instances down until their configs arrive (`nina.vpn`, 4.1.2.4).

User-data is readable by anyone on the VM through the metadata service, so it holds no
secrets: certificates and keys come later over SSH (`nina.render.*_delivery` piped into
`nina-install-files`), which also starts the Flower services. Output is deterministic (no
timestamps, stable order) because any change to user-data replaces the VM.

Only keys of the cloud-init 22.4 schema are used (Ubuntu 24.04 ships 24.x; the tests
validate with 22.4). All files are owned by root, so none needs `defer: true` (a file
owned by a user that cloud-init creates in the same run would; `_file` sets it then).
"""

from __future__ import annotations

import base64
import posixpath
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import yaml

from nina import facts, render
from nina.plan import Host, Plan, VpnPlan

FLOWER_ROLES = ("superlink", "supernode")
BASE_PACKAGES = ("prometheus-node-exporter", "python3-venv")
# Extra Debian packages per role. Roles other than superlink/supernode get only the base for
# now: their services (nginx, Keycloak, JupyterHub, monitoring) arrive with later issues.
ROLE_PACKAGES: dict[str, tuple[str, ...]] = {"vpn": ("iptables", "openvpn")}
# Service users (manual 4.1.2.1) and their home (= runtime directory, manual 4.1.1 table 6).
SERVICE_HOMES = {
    "superlink": facts.SUPERLINK_OPT,
    "supernode": facts.SUPERNODE_OPT,
    "keycloak": facts.KEYCLOAK_OPT,
    "jupyterhub": facts.JUPYTERHUB_OPT,
}
_VOLUME_ID_RE = re.compile(r"^[A-Za-z0-9-]+$")
_NO_VOLUMES: Mapping[str, str] = MappingProxyType({})
ROOT = "root"
# The first runcmd line: the runcmd script stops at the first failing step (and -x logs each
# step to /var/log/cloud-init-output.log), so cloud-init reports the failure.
BOOTSTRAP_STRICT = "set -eux"


class _Dumper(yaml.SafeDumper):
    """Multi-line strings as literal blocks (readable, and smaller than escaped strings); no aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


class _Cmd(list):
    """A runcmd argv list, emitted on one line (`- [systemctl, enable, x]`)."""


def _cmd(dumper: yaml.SafeDumper, value: _Cmd) -> yaml.SequenceNode:
    return dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=True)


_Dumper.add_representer(str, _str)
_Dumper.add_representer(_Cmd, _cmd)


def _file(path: str, content: str, mode: int, owner: str = ROOT, group: str = ROOT) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "path": path,
        "owner": f"{owner}:{group}",
        "permissions": f"{mode:04o}",
        "content": content,
    }
    if owner != ROOT or group != ROOT:
        entry["defer"] = True  # users and fl_system exist only after users-groups has run
    return entry


def _dir(path: str, mode: int, owner: str = ROOT, group: str = facts.SYSTEM_GROUP) -> list[str]:
    return ["install", "-d", "-m", f"{mode:04o}", "-o", owner, "-g", group, path]


def _service_users(roles: tuple[str, ...]) -> list[dict[str, Any]]:
    users = []
    for role in roles:
        if role not in facts.SERVICE_USERS:
            continue
        users.append(
            {
                "name": facts.SERVICE_USERS[role],
                "system": True,
                "shell": facts.SERVICE_SHELL,
                "homedir": SERVICE_HOMES[role],
                "no_create_home": True,
                "lock_passwd": True,
                "groups": [facts.SYSTEM_GROUP],
            }
        )
    return users


def _directories(roles: set[str]) -> list[list[str]]:
    """The manual 4.1.1 layout for the host's roles; private directories (certs) are 0750."""
    sl, sn = facts.SERVICE_USERS["superlink"], facts.SERVICE_USERS["supernode"]
    dirs: list[list[str]] = []
    if roles & {*FLOWER_ROLES, "jupyterhub"}:
        python_root = posixpath.dirname(facts.FLOWER_VENV)
        dirs.append(_dir(python_root, 0o2775))  # group fl_system, g+w (manual 4.1.2.11)
    if roles & set(FLOWER_ROLES):
        dirs.append(_dir(facts.ETC_FLWR, 0o755))
        dirs.append(_dir(posixpath.dirname(facts.SUPERLINK_OPT), 0o755))
    if "superlink" in roles:
        dirs += [
            _dir(facts.SUPERLINK_ETC, 0o750),
            _dir(facts.SUPERLINK_CERTS, 0o750),
            _dir(facts.SUPERLINK_OPT, 0o755, sl),
            _dir(facts.SUPERLINK_STATE_DIR, 0o750, sl),
            _dir(facts.SUPERLINK_ADMIN_APP, 0o755, ROOT, ROOT),
        ]
    if "supernode" in roles:
        dirs += [
            _dir(facts.SUPERNODE_ETC, 0o750),
            _dir(facts.SUPERNODE_CERTS, 0o750),
            _dir(facts.SUPERNODE_OPT, 0o755, sn),
            _dir(facts.SUPERNODE_DATA, 0o750, sn),
        ]
    if "keycloak" in roles:
        dirs.append(_dir(facts.KEYCLOAK_OPT, 0o750, facts.SERVICE_USERS["keycloak"]))
    if "jupyterhub" in roles:
        jh = facts.SERVICE_USERS["jupyterhub"]
        dirs += [
            _dir(facts.JUPYTERHUB_ETC, 0o755),
            _dir(facts.JUPYTERHUB_CONFIG, 0o750),
            _dir(facts.JUPYTERHUB_OPT, 0o755, jh),
        ]
    return dirs


def _checks(
    host: Host,
    packages: list[str],
    files: list[dict[str, Any]],
    runcmd: list[list[str]],
    venv_programs: list[str],
    flwr_version: str,
    active: list[str],
) -> list[list[str]]:
    """The postconditions of this user-data, as nina-bootstrap-check lines (function + arguments)."""
    mounts = {v.mount_point for v in host.volumes}
    checks: list[list[str]] = [["package", p] for p in packages]
    checks.append(["member", facts.DEFAULT_LOGIN_USER, facts.SYSTEM_GROUP])
    checks += [["member", u["name"], facts.SYSTEM_GROUP] for u in _service_users(host.roles)]
    for cmd in runcmd:
        if cmd[:2] == ["install", "-d"] and cmd[-1] not in mounts:
            mode, owner, group, path = cmd[3], cmd[5], cmd[7], cmd[8]
            checks.append(["path", mode, owner, group, path])
    for f in files:
        owner, group = f["owner"].split(":")
        checks.append(["path", f["permissions"], owner, group, f["path"]])
    if venv_programs:
        checks.append(["python_dist", facts.FLOWER_VENV, "flwr", flwr_version])
        checks += [["executable", f"{facts.FLOWER_VENV}/bin/{p}"] for p in venv_programs]
    checks += [["mounted", m] for m in sorted(mounts)]
    checks += [["active", u] for u in active]
    return checks


def _vpn_plan(plan: Plan, host: Host) -> VpnPlan:
    for tenancy in plan.tenancies:
        if tenancy.vpn is not None and tenancy.vpn.host == host.name:
            return tenancy.vpn
    raise ValueError(f"host {host.name} has the vpn role but no tenancy's VPN runs on it")


def user_data(plan: Plan, host: Host, volume_ids: Mapping[str, str] = _NO_VOLUMES) -> str:
    """`#cloud-config` user-data for `host`; `volume_ids` maps each host volume's name to its OpenStack id."""
    roles = set(host.roles)
    unknown = roles - {"bastion", "proxy", "keycloak", "jupyterhub", "monitoring", "vpn", *FLOWER_ROLES}
    if unknown:
        raise ValueError(f"host {host.name}: unknown roles {sorted(unknown)}")
    missing = [v.name for v in host.volumes if v.name not in volume_ids]
    if missing:
        raise ValueError(f"host {host.name}: no OpenStack volume id for volume(s) {missing}")

    packages = sorted({*BASE_PACKAGES, *(p for r in host.roles for p in ROLE_PACKAGES.get(r, ()))})
    files = [
        _file(facts.RECEIVE_BIN, render.receive_script(), 0o755),
        _file(facts.INSTALL_FILES_BIN, render.install_files_script(), 0o755),
        _file(facts.JOURNALD_DROPIN, render.journald_conf(), 0o644),
        _file(facts.NODE_EXPORTER_DEFAULTS, render.node_exporter_defaults(), 0o644),
        _file(facts.NODE_EXPORTER_LOGROTATE, render.logrotate_conf(), 0o644),
    ]
    runcmd: list[list[str]] = [["usermod", "-a", "-G", facts.SYSTEM_GROUP, facts.DEFAULT_LOGIN_USER]]
    runcmd += _directories(roles)

    if host.volumes:
        files.append(_file(facts.PREPARE_VOLUME_BIN, render.prepare_volume_script(), 0o755))
    for vol in host.volumes:
        vid = volume_ids[vol.name]
        if not _VOLUME_ID_RE.match(vid):
            raise ValueError(f"host {host.name}: volume id {vid!r} for {vol.name!r} is not an OpenStack id")
        runcmd.append([facts.PREPARE_VOLUME_BIN, vid, vol.mount_point, vol.owner])

    venv_programs: list[str] = []
    if roles & set(FLOWER_ROLES):
        # The venv (manual 4.1.2.11) with the pinned flwr; the units start once certs arrive.
        runcmd.append(["python3", "-m", "venv", facts.FLOWER_VENV])
        runcmd.append(
            [f"{facts.FLOWER_VENV}/bin/pip", "install", "--quiet", "--disable-pip-version-check", f"flwr=={plan.cfg.flower.version}"]
        )
    # Services' programs and units arrive with their deliveries (nina.render, nina.vpn), not here.
    if "superlink" in roles:
        files.append(_file(facts.MEMBERSHIP_BIN, render.membership_script(), 0o755))
        venv_programs += ["flower-superlink", "flwr"]
    if "supernode" in roles:
        venv_programs.append("flower-supernode")
    if "vpn" in roles:
        _vpn_plan(plan, host)  # a vpn role must carry a tenancy's hub (its files come with the VPN delivery)
        runcmd.append(_dir(facts.OPENVPN_CCD_DIR, 0o755, ROOT, ROOT))
    restarted = [facts.JOURNALD_UNIT, facts.NODE_EXPORTER_UNIT]
    runcmd.append(["systemctl", "restart", *restarted])

    # Fail loudly (cloud-init runs runcmd as one /bin/sh script whose status is its last
    # command's): stop at the first failing step, then check every promise before the marker.
    checks = _checks(host, packages, files, runcmd, venv_programs, plan.cfg.flower.version, restarted)
    files.append(_file(facts.BOOTSTRAP_CHECK_BIN, render.bootstrap_check_script(host.name, checks), 0o755))
    steps: list[str | list[str]] = [BOOTSTRAP_STRICT, *(_Cmd(c) for c in runcmd), _Cmd([facts.BOOTSTRAP_CHECK_BIN])]

    doc: dict[str, Any] = {"hostname": host.name}
    if plan.cfg.cloud.dns_domain:
        doc["fqdn"] = f"{host.name}.{plan.cfg.cloud.dns_domain}"
    doc.update(
        {
            "manage_etc_hosts": True,
            "package_update": True,
            "packages": packages,
            "groups": [facts.SYSTEM_GROUP],
            "users": ["default", *_service_users(host.roles)],
            "write_files": files,
            "runcmd": steps,
        }
    )
    body = yaml.dump(doc, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=1000, allow_unicode=False)
    text = f"#cloud-config\n# nina-fl host {host.name} (roles: {', '.join(host.roles)}). No secrets here: user-data is readable on the VM.\n{body}"
    size = len(base64.b64encode(text.encode("utf-8")))
    if size > facts.NOVA_USER_DATA_LIMIT:
        raise ValueError(f"host {host.name}: user-data is {size} bytes after base64, over Nova's {facts.NOVA_USER_DATA_LIMIT}")
    return text
