"""cloud-init user-data for each host of the plan.

`user_data(plan, host, volume_ids)` returns `#cloud-config` YAML (made with PyYAML, never
string-built): the small fixed bootstrap of a fresh Ubuntu 24.04 VM, built from the services of
its roles (`nina.services`): hostname, packages, the `fl_system` group and service users
(manual 4.1.2.1), the directory layout (4.1.1), state volumes, each service's venv with its
pins (4.1.2.11: the Flower venv with flwr, JupyterHub's) and the first-boot check. Everything that evolves (host programs and their
receiver, units, run scripts, configs) comes with the per-service deliveries.

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
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import yaml

from nina import facts, render, services
from nina.plan import Host, Plan, VpnPlan

_VOLUME_ID_RE = re.compile(r"^[A-Za-z0-9-]+$")
_NO_VOLUMES: Mapping[str, str] = MappingProxyType({})
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


def _file(path: str, content: str, mode: int, owner: str = facts.ROOT_USER, group: str = facts.ROOT_USER) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "path": path,
        "owner": f"{owner}:{group}",
        "permissions": f"{mode:04o}",
        "content": content,
    }
    if owner != facts.ROOT_USER or group != facts.ROOT_USER:
        entry["defer"] = True  # users and fl_system exist only after users-groups has run
    return entry


def _dirs(dirs: list[services.Directory]) -> list[list[str]]:
    """One `install -d` per mode and owners (it sets both on directories that exist, too), in the
    order of each kind's first directory; `dirs` come sorted by path, so parents come first."""
    kinds: dict[tuple[int, str, str], list[str]] = {}
    for d in dirs:
        kinds.setdefault((d.mode, d.owner, d.group), []).append(d.path)
    return [["install", "-d", "-m", f"{mode:04o}", "-o", owner, "-g", group, *paths] for (mode, owner, group), paths in kinds.items()]


def _user(u: services.User) -> dict[str, Any]:
    return {
        "name": u.name,
        "system": True,
        "shell": facts.SERVICE_SHELL,
        "homedir": u.home,
        "no_create_home": True,
        "lock_passwd": True,
        "groups": [facts.SYSTEM_GROUP],
    }


def _checks(
    host: Host,
    users: list[services.User],
    packages: list[str],
    files: list[dict[str, Any]],
    dirs: list[services.Directory],
    venvs: list[services.Venv],
    active: list[str],
) -> list[list[str]]:
    """The postconditions of this user-data, as nina-bootstrap-check lines (function + arguments)."""
    mounts = {v.mount_point for v in host.volumes}
    checks: list[list[str]] = [["package", p] for p in packages]
    checks.append(["member", facts.DEFAULT_LOGIN_USER, facts.SYSTEM_GROUP])
    checks += [["member", u.name, g] for u in users for g in (facts.SYSTEM_GROUP, *u.groups)]
    for d in dirs:
        if d.path not in mounts:
            checks.append(["path", f"{d.mode:04o}", d.owner, d.group, d.path])
    for f in files:
        owner, group = f["owner"].split(":")
        checks.append(["path", f["permissions"], owner, group, f["path"]])
    for venv in venvs:
        checks += [["python_dist", venv.path, name, version] for name, version in venv.pins()]
        checks += [["executable", f"{venv.path}/bin/{p}"] for p in venv.programs]
    checks += [["mounted", m] for m in sorted(mounts)]
    checks += [["active", u] for u in active]
    return checks


def _vpn_plan(plan: Plan, host: Host) -> VpnPlan:
    for tenancy in plan.tenancies:
        if tenancy.vpn is not None and tenancy.vpn.host == host.name:
            return tenancy.vpn
    raise ValueError(f"host {host.name} has the vpn role but no tenancy's VPN runs on it")


# nina plan's stand-in for the automation key (the stack's, known only once it exists).
AUTOMATION_KEY_PLACEHOLDER = "# here: the stack's automation key (output ops_ssh_private_key, the Nova key pair's)\n"


def user_data(plan: Plan, host: Host, volume_ids: Mapping[str, str] = _NO_VOLUMES, automation_public_key: str | None = None) -> str:
    """`#cloud-config` user-data for `host`; `volume_ids` maps each host volume's name to its
    OpenStack id; `automation_public_key` is the stack's (pulumi-command's) OpenSSH public key,
    the only login key until the base delivery adds the operators' (None: a placeholder line)."""
    try:
        svcs = services.for_roles(host.roles)
    except ValueError as exc:
        raise ValueError(f"host {host.name}: {exc}") from None
    missing = [v.name for v in host.volumes if v.name not in volume_ids]
    if missing:
        raise ValueError(f"host {host.name}: no OpenStack volume id for volume(s) {missing}")

    packages = services.packages(svcs)
    service_users = services.users(svcs)
    users = [_user(u) for u in service_users]
    # Only first-boot programs: the receiver travels in each delivery's command; configs,
    # units and the other host programs arrive with the deliveries.
    # Login keys only from root's files (render.sshd_dropin); until the base delivery rewrites
    # the login user's, it holds the automation key alone. sshd may have started before
    # write_files (a first connection, socket activation): reload it so it reads the drop-in.
    keys = AUTOMATION_KEY_PLACEHOLDER if automation_public_key is None else render.authorized_keys(automation_public_key, [])
    files: list[dict[str, Any]] = [
        _file(facts.SSHD_DROPIN, render.sshd_dropin(), 0o644),
        _file(facts.LOGIN_AUTHORIZED_KEYS, keys, 0o644),
        *(_file(f.path, f.content, f.mode) for f in services.files(svcs)),
    ]
    runcmd: list[list[str]] = [
        ["systemctl", "try-reload-or-restart", facts.SSH_UNIT],
        ["usermod", "-a", "-G", facts.SYSTEM_GROUP, facts.DEFAULT_LOGIN_USER],
    ]
    dirs = services.directories(svcs)
    runcmd += _dirs(dirs)

    if host.volumes:
        files.append(_file(facts.PREPARE_VOLUME_BIN, render.prepare_volume_script(), 0o755))
    for vol in host.volumes:
        vid = volume_ids[vol.name]
        if not _VOLUME_ID_RE.match(vid):
            raise ValueError(f"host {host.name}: volume id {vid!r} for {vol.name!r} is not an OpenStack id")
        runcmd.append([facts.PREPARE_VOLUME_BIN, vid, vol.mount_point, vol.owner])
    # Services whose data lives on a volume started (with their package) before it was mounted.
    restart = list(dict.fromkeys(u for s in svcs for u in s.restart_after_mount))
    if restart:
        runcmd.append(["systemctl", "restart", *restart])
    # Groups that packages create (docker): only now do they exist.
    runcmd += [["usermod", "-a", "-G", ",".join(u.groups), u.name] for u in service_users if u.groups]

    venvs = services.venvs(svcs)
    for venv in venvs:
        # One venv per service definition (manual 4.1.2.11), with its pins; the units start once
        # their deliveries arrive.
        runcmd.append(["python3", "-m", "venv", venv.path])
        runcmd.append([f"{venv.path}/bin/pip", "install", "--quiet", "--disable-pip-version-check", *venv.requirements])
    if "vpn" in host.roles:
        _vpn_plan(plan, host)  # a vpn role must carry a tenancy's hub (its files come with the VPN delivery)

    # Fail loudly (cloud-init runs runcmd as one /bin/sh script whose status is its last
    # command's): stop at the first failing step, then check every promise before the marker.
    active = [facts.NODE_EXPORTER_UNIT, *restart]
    checks = _checks(host, service_users, packages, files, dirs, venvs, active)
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
            "users": ["default", *users],
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
