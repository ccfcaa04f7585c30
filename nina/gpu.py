"""A cloud GPU SuperNode's delivery (`<host>-gpu`, services.gpu): nina-gpu-driver
(nina.host.gpu_driver), its configuration (the branch of nina:gpu.driver_branch and its Ubuntu
packages, DCGM's pinned to nina:gpu.dcgm_version when set) and its oneshot unit, started on every
delivery; and the two steps pulumi runs after it (`<host>-gpu-reboot`, `<host>-gpu-ready`:
components.flower.reboot_and_wait) with the ready step's dial budget. Pure: no pulumi."""

from __future__ import annotations

import ipaddress
import json
import re
from functools import lru_cache

import jinja2

from nina import facts, render, services, templating
from nina.host import gpu_driver


@lru_cache(maxsize=1)
def _env() -> jinja2.Environment:
    return templating.environment("gpu", trim_blocks=True, lstrip_blocks=True)


def driver_packages(branch: int, dcgm_version: str | None = None) -> list[str]:
    """Ubuntu's packages of the NVIDIA server driver `branch` (nvidia-smi is in the utils package),
    then DCGM's from NVIDIA's repository, pinned to `dcgm_version` if given
    (nina.host.gpu_driver.packages_of)."""
    if type(branch) is not int or branch not in facts.GPU_DRIVER_BRANCHES:
        raise ValueError(f"driver branch {branch!r} is not one of {facts.GPU_DRIVER_BRANCHES}")
    if dcgm_version is not None and not (isinstance(dcgm_version, str) and re.fullmatch(facts.DEBIAN_VERSION_PATTERN, dcgm_version)):
        raise ValueError(f"DCGM version {dcgm_version!r} is not a Debian package version")
    return gpu_driver.packages_of(branch, dcgm_version)


def apt_source() -> str:
    """facts.NVIDIA_REPO_LIST: NVIDIA's repository, trusted only with the pinned key's keyring."""
    return (
        "# nina-fl: NVIDIA's CUDA repository (DCGM and its exporter), signed by the key nina-gpu-driver\n"
        f"# pinned by fingerprint ({facts.NVIDIA_REPO_FINGERPRINT}).\n"
        f"deb [signed-by={facts.NVIDIA_REPO_KEYRING}] {facts.NVIDIA_REPO_URL} /\n"
    )


def exporter_service(listen_ip: str, vpn: bool = False) -> str:
    """facts.DCGM_EXPORTER_UNIT: dcgm-exporter on `listen_ip` alone: a cloud host's fixed address,
    or (`vpn`, an on-premise site kit's) the organisation's VPN address, after the VPN client and
    retried until the tunnel address exists."""
    ipaddress.IPv4Address(listen_ip)
    return _env().get_template("dcgm-exporter.service.j2").render(listen_ip=listen_ip, vpn=vpn)


def driver_conf(branch: int, dcgm_version: str | None = None) -> str:
    """facts.GPU_DRIVER_CONF: what nina.host.gpu_driver.parse_config reads."""
    conf = {"branch": branch, "dcgm_version": dcgm_version, "packages": driver_packages(branch, dcgm_version)}
    return json.dumps(conf, indent=2, sort_keys=True) + "\n"


def driver_service(branch: int) -> str:
    """facts.GPU_DRIVER_UNIT."""
    driver_packages(branch)
    return _env().get_template("gpu-driver.service.j2").render(branch=branch)


def gpu_delivery(branch: int, listen_ip: str, dcgm_version: str | None = None) -> str:
    """The `<host>-gpu` payload: no secret; a changed branch changes the conf and the unit, and the
    delivery's run step installs the new driver (and reboots once); a changed DCGM pin changes the
    conf only, and the step installs that version (no reboot). The exporter's unit is not
    restarted by the installer (DCGM is not installed before the step runs): the step restarts it."""
    files = [
        render.DeliveredFile(facts.NVIDIA_REPO_LIST, apt_source(), 0o644),
        render.DeliveredFile(f"{facts.SYSTEMD_SYSTEM_DIR}/{facts.DCGM_EXPORTER_UNIT}", exporter_service(listen_ip), 0o644),
        render.DeliveredFile(facts.GPU_DRIVER_CONF, driver_conf(branch, dcgm_version), 0o644),
        render.DeliveredFile(facts.GPU_DRIVER_BIN, render.launcher("gpu_driver"), 0o755),
        render.DeliveredFile(f"{facts.SYSTEMD_SYSTEM_DIR}/{facts.GPU_DRIVER_UNIT}", driver_service(branch), 0o644),
    ]
    return render.delivery_payload(files, list(services.gpu.UNITS), run=list(services.gpu.STEPS))


def reboot_dial_error_limit(seconds: float = facts.GPU_REBOOT_WAIT_SECONDS) -> int:
    """The dial_error_limit of `<host>-gpu-ready`'s connection: the failed dials after which
    pulumi-command's waits between them (facts.PULUMI_DIAL_RETRY) add up to `seconds`. A dial that
    itself takes time (a VM that does not answer) only makes the budget longer."""
    first, factor, cap = facts.PULUMI_DIAL_RETRY
    waited, delay, failures = 0.0, first, 0
    while waited < seconds:
        failures += 1
        waited += min(delay, cap)
        delay *= factor
    return failures


def reboot_step() -> str:
    """`<host>-gpu-reboot`'s command, after the delivery guard: its stdout is the step's report."""
    return f"sudo {facts.GPU_DRIVER_BIN} reboot"


def ready_step() -> str:
    """`<host>-gpu-ready`'s command, after the delivery guard: the reboot step's report on stdin."""
    return f"sudo {facts.GPU_DRIVER_BIN} ready"
