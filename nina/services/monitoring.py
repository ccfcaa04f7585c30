"""The monitoring host (manual 5.1-5.3): Prometheus and Alertmanager from Ubuntu's archive. Its
delivery is `nina.monitoring.monitoring_delivery` (`<host>-monitoring`): prometheus.yml, the
file_sd targets, the alert rules, alertmanager.yml and both units' arguments. Prometheus's time
series are on the host's Cinder volume (facts.MONITORING_VOLUME, nina:monitoring.volume_gb).
Grafana is not in Ubuntu's archive (Grafana Labs' own apt repository only): it is the role
`grafana` on this host (nina.services.grafana), installed from its pinned .deb by a delivery."""

from nina import facts
from nina.services.model import Directory, Service

SERVICE = Service(
    name="monitoring",
    summary="Prometheus and Alertmanager (loopback only; scrape the exporters, alert by e-mail or webhook)",
    shared=True,
    packages=("prometheus", "prometheus-alertmanager"),
    directories=(
        Directory(facts.PROMETHEUS_RULES_DIR, 0o755, facts.ROOT_USER, facts.ROOT_USER),
        Directory(facts.PROMETHEUS_FILE_SD_DIR, 0o755, facts.ROOT_USER, facts.ROOT_USER),
    ),
)
# Restarted when the delivery changes their files (not for target files alone: Prometheus rereads those).
UNITS = (facts.PROMETHEUS_UNIT, facts.ALERTMANAGER_UNIT)
