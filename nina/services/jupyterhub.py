"""JupyterHub (manual 4.1.2.10-4.1.2.15, 4.1.2.17.2): docker, the hub's venv, its proxy and user.

Its configuration and delivery (`<host>-jupyterhub`) are `nina.jupyterhub` (`files`,
`jupyterhub_delivery`); here is what the host needs at first boot: docker.io with its data root
on the host's Cinder volume (`facts.JUPYTERHUB_VOLUME`, in the plan), Ubuntu's
configurable-http-proxy, the venv `facts.JUPYTER_VENV` with the pinned hub packages, and the
service user `jupyterhub` in the `docker` group (the manual's choice: root-equivalent on this
host, README "Researcher access: JupyterHub")."""

from __future__ import annotations

import json

from nina import facts
from nina.services.model import PYTHON_ROOT, Directory, FixedFile, Service, User, Venv

_USER = facts.SERVICE_USERS["jupyterhub"]


def docker_daemon_json() -> str:
    """/etc/docker/daemon.json: docker's data root (images, the per-user volumes) on the hub's
    volume, its networks' subnets from facts.DOCKER_ADDRESS_POOL, bounded container logs, and containers that outlive a restart of dockerd (upgrades)."""
    daemon = {
        "data-root": facts.JUPYTERHUB_DOCKER_ROOT,
        # Docker's own pools (172.17-31/16, 192.168/20s) may cover a plan segment or VPN pool.
        "default-address-pools": [{"base": facts.DOCKER_ADDRESS_POOL, "size": facts.DOCKER_ADDRESS_POOL_SIZE}],
        "live-restore": True,
        "log-driver": "json-file",
        "log-opts": {"max-size": facts.DOCKER_LOG_MAX_SIZE, "max-file": str(facts.DOCKER_LOG_MAX_FILES)},
    }
    return json.dumps(daemon, indent=2, sort_keys=True) + "\n"


def docker_dropin() -> str:
    """docker.service's drop-in: at boot, dockerd waits for its data root's volume (and does not
    start on the root disk if the volume is missing)."""
    return f"# nina-fl: docker's data root is on the JupyterHub volume.\n[Unit]\nRequiresMountsFor={facts.JUPYTERHUB_DOCKER_ROOT}\n"


SERVICE = Service(
    name="jupyterhub",
    summary="notebooks from which researchers start Flower runs (DockerSpawner, one docker network per tenancy)",
    shared=True,
    packages=("docker.io", facts.JUPYTERHUB_PROXY_PACKAGE),
    user=User(_USER, facts.JUPYTERHUB_OPT, groups=(facts.DOCKER_GROUP,)),
    directories=(
        PYTHON_ROOT,
        Directory(facts.JUPYTERHUB_ETC, 0o755),
        Directory(facts.JUPYTERHUB_CONFIG, 0o750),
        # The hub's state (sqlite, cookie secret, pid file): the only place it writes.
        Directory(facts.JUPYTERHUB_OPT, 0o750, _USER),
    ),
    venv=Venv(facts.JUPYTER_VENV, facts.JUPYTERHUB_PACKAGES, ("jupyterhub",)),
    files=(FixedFile(facts.DOCKER_DAEMON_JSON, docker_daemon_json()), FixedFile(facts.DOCKER_DROPIN, docker_dropin())),
    # dockerd starts when its package is installed, before runcmd mounts the volume: restarted then.
    restart_after_mount=(facts.DOCKER_UNIT,),
)
# Restarted when the hub's delivery changes its files; STEPS run on every delivery.
UNITS = (facts.JUPYTERHUB_UNIT,)
STEPS = (facts.JUPYTERHUB_NETWORKS_UNIT, facts.JUPYTERHUB_IMAGES_UNIT)
