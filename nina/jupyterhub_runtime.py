"""What JupyterHub runs from its config (installed beside it as `nina_jupyterhub.py`).

The rendered `jupyterhub_config.py` is a fixed template that calls `configure(c, settings_file)`:
the settings file (written by `nina.jupyterhub`) is plain data, and this module is the only
logic: it sets the traits the settings name, and installs the spawner's `pre_spawn_hook`,
which gives each researcher's notebook the federation of their tenancy (its docker network,
the CA certificate and a flwr config.toml naming the tenancy's SuperLink, mounted read-only) and
its notebook images (the configured ones with the tenancy's training environment installed).

Standalone: standard library only (the hub's venv imports it by file, without nina).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

PRE_SPAWN_HOOK = "pre_spawn_hook"
BRIDGE_OPTION = "com.docker.network.bridge.name"


class NoTenancy(PermissionError):
    """The user is in no tenancy group: there is no federation to give their notebook."""


class UnfilteredNetwork(PermissionError):
    """The tenancy's docker network is not on the bridge the host's notebook firewall filters."""


def check_network(found: Any, tenancy: Mapping[str, Any]) -> None:
    """Refuse a tenancy network (docker's inspection of it) whose Linux bridge is not the tenancy's:
    the notebook firewall matches bridges by name, so on any other a notebook reaches every
    tenancy's SuperLink."""
    options = (found.get("Options") if isinstance(found, Mapping) else None) or {}
    bridge = options.get(BRIDGE_OPTION) if isinstance(options, Mapping) else None
    if bridge != tenancy["bridge"]:
        raise UnfilteredNetwork(
            f"docker network {tenancy['network']} is on bridge {bridge!r}, not {tenancy['bridge']!r}, which the notebook "
            "firewall filters: no notebook starts on it; remove it (`docker network rm`) and deliver the hub again"
        )


def load(settings_file: str | Path) -> dict[str, Any]:
    data = json.loads(Path(settings_file).read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("traits"), dict) or not isinstance(data.get("tenancies"), list):
        raise ValueError(f"{settings_file}: not a nina JupyterHub settings file (needs 'traits' and 'tenancies')")
    return data


def tenancy_for(groups: Iterable[str], tenancies: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    """The first tenancy (in the settings' order, the plan's) whose group the user is in."""
    have = set(groups)
    for tenancy in tenancies:
        if tenancy["group"] in have:
            return tenancy
    raise NoTenancy(f"in none of the tenancy groups {[t['group'] for t in tenancies]}; ask an operator to add you to one")


def make_pre_spawn_hook(tenancies: Sequence[Mapping[str, Any]]) -> Any:
    """The spawner's pre_spawn_hook: the notebook of a user gets their tenancy's environment and,
    with DockerSpawner, its network and read-only mounts (other spawners have neither); then, with
    DockerSpawner, it returns the check (awaited by JupyterHub) that docker has that network on the
    tenancy's bridge (`check_network`)."""

    def pre_spawn_hook(spawner: Any) -> Any:
        tenancy = tenancy_for((g.name for g in spawner.user.groups), tenancies)
        spawner.environment = {**spawner.environment, **tenancy["environment"]}
        spawner.log.info("nina: %s spawns with tenancy %s", spawner.user.name, tenancy["name"])
        if not spawner.has_trait("network_name"):
            return None
        spawner.network_name = tenancy["network"]
        # The tenancy's derived images (its training environment installed), by the labels the
        # researcher picks from. DockerSpawner.start resolves user_options' image through
        # allowed_images *after* this hook (and sets self.image from it), so the override is the
        # mapping itself, not only self.image.
        images = tenancy.get("images")
        if images:
            spawner.allowed_images = dict(images)
            spawner.image = tenancy["image"]
        spawner.volumes = {**spawner.volumes, **tenancy["volumes"]}
        docker = getattr(spawner, "docker", None)
        if docker is None:
            return None

        async def verify() -> None:  # JupyterHub awaits what the hook returns
            check_network(await docker("inspect_network", tenancy["network"]), tenancy)

        return verify()

    return pre_spawn_hook


def configure(c: Any, settings_file: str | Path) -> dict[str, Any]:
    """Apply the settings file to the JupyterHub config `c`; returns the settings."""
    settings = load(settings_file)
    for section, traits in settings["traits"].items():
        target = getattr(c, section)
        for name, value in traits.items():
            setattr(target, name, value)
    setattr(c.Spawner, PRE_SPAWN_HOOK, make_pre_spawn_hook(settings["tenancies"]))
    return settings
