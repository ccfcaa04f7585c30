"""Prometheus and Grafana (manual 5.2): not built yet (operations issue)."""

from nina.services.model import Service

SERVICE = Service(name="monitoring", summary="Prometheus, Alertmanager and Grafana", shared=True, built=False)
