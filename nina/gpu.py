"""A cloud GPU SuperNode's delivery (`<host>-gpu`, services.gpu): nina-gpu-driver
(nina.host.gpu_driver), its configuration (the branch of nina:gpu.driver_branch and its Ubuntu
packages) and its oneshot unit, started on every delivery. Pure: no pulumi."""

from __future__ import annotations

import json
from functools import lru_cache

import jinja2

from nina import facts, render, services, templating


@lru_cache(maxsize=1)
def _env() -> jinja2.Environment:
    return templating.environment("gpu")


def driver_packages(branch: int) -> list[str]:
    """Ubuntu's packages of the NVIDIA server driver `branch` (nvidia-smi is in the utils package)."""
    if type(branch) is not int or branch not in facts.GPU_DRIVER_BRANCHES:
        raise ValueError(f"driver branch {branch!r} is not one of {facts.GPU_DRIVER_BRANCHES}")
    return [p.format(branch=branch) for p in facts.GPU_DRIVER_PACKAGES]


def driver_conf(branch: int) -> str:
    """facts.GPU_DRIVER_CONF: what nina.host.gpu_driver.parse_config reads."""
    return json.dumps({"branch": branch, "packages": driver_packages(branch)}, indent=2, sort_keys=True) + "\n"


def driver_service(branch: int) -> str:
    """facts.GPU_DRIVER_UNIT."""
    driver_packages(branch)
    return _env().get_template("gpu-driver.service.j2").render(branch=branch)


def gpu_delivery(branch: int) -> str:
    """The `<host>-gpu` payload: no secret; a changed branch changes the conf and the unit, and the
    delivery's run step installs the new driver (and reboots once)."""
    files = [
        render.DeliveredFile(facts.GPU_DRIVER_CONF, driver_conf(branch), 0o644),
        render.DeliveredFile(facts.GPU_DRIVER_BIN, render.launcher("gpu_driver"), 0o755),
        render.DeliveredFile(f"{facts.SYSTEMD_SYSTEM_DIR}/{facts.GPU_DRIVER_UNIT}", driver_service(branch), 0o644),
    ]
    return render.delivery_payload(files, list(services.gpu.UNITS), run=list(services.gpu.STEPS))
