"""What every host runs: the node exporter (manual 5.2.2), journald and logrotate limits (5.4),
the launchers of the nina host programs, and nina-cert-expiry's hourly certificate expiry metrics. Its delivery (`nina.render.base_delivery`,
`<host>-base`) carries their configs, so changing a limit re-runs a delivery, not the VM."""

from __future__ import annotations

from nina import facts
from nina.services.model import VENV_PACKAGES, Service

SERVICE = Service(
    name="base",
    summary="node exporter, journald and logrotate limits, nina host programs",
    packages=("prometheus-node-exporter", *VENV_PACKAGES),
)
# Restarted when the base delivery changes their files.
UNITS = (facts.JOURNALD_UNIT, facts.NODE_EXPORTER_UNIT, facts.CERT_EXPIRY_TIMER)
# What it runs besides: the unit alerts watch these too (nina.monitoring).
WATCHED = (facts.SSH_UNIT,)
