"""A cloud SuperNode with a GPU (`gpu: true`, issue 13): Ubuntu's NVIDIA server driver of branch
nina:gpu.driver_branch, and DCGM with its exporter from NVIDIA's repository (key pinned by
fingerprint), installed and loaded by its delivery `nina.gpu.gpu_delivery` (`<host>-gpu`),
in place: a new branch re-runs that delivery and replaces no VM. Nothing of it is in user-data.
After the delivery, pulumi carries out the reboot its step left pending and waits for the host to
come back with its GPU and DCGM (`<host>-gpu-reboot`, `<host>-gpu-ready`: nina-gpu-driver's
`reboot` and `ready` steps, run over SSH, not units).

Not a role: the plan gives it to the hosts whose organisation has `gpu: true` (Host.gpu), which
are also the only hosts in the `gpu` zone (port facts.DCGM_EXPORTER_PORT from the monitoring host)."""

from nina import facts
from nina.services.model import Service

SERVICE = Service(
    name="gpu",
    summary="NVIDIA server driver (Ubuntu's packages, branch from nina:gpu.driver_branch, one reboot per branch), DCGM and its exporter",
)
# Enabled (it runs at every boot) and restarted when the delivery changes its files; and started on
# every delivery (a oneshot that stays active once the driver answers, so only a failed one runs
# again). The unit alerts watch it: a driver that does not load leaves it failed.
UNITS = (facts.GPU_DRIVER_UNIT,)
STEPS = UNITS
# Started by the step once the driver answers (DCGM's host engine, the exporter on the fixed address).
WATCHED = (facts.DCGM_UNIT, facts.DCGM_EXPORTER_UNIT)
