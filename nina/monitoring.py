"""Monitoring and alerting on the monitoring host (manual 5.1-5.3): Prometheus and Alertmanager as data.

Pure like `nina.render`: never imports pulumi; every document is built as plain data and dumped
(JSON with sorted keys, YAML with PyYAML), every port and path comes from `nina.facts`, every
threshold from `nina:monitoring` (`config.MonitoringConfig`), so the same plan gives
byte-identical files.

What is scraped (`targets`): each Nectar host's node exporter at its fixed IP on
facts.NODE_EXPORTER_PORT, each on-premise organisation's node exporter at its fixed VPN address
(`Member.vpn_address`: the monitoring host reaches the pool through the router's route to its
tenancy's OpenVPN server, which forwards only the exporter ports into the tunnel), and NVIDIA's
DCGM exporter on facts.DCGM_EXPORTER_PORT of each cloud SuperNode with a GPU. Every target is
labelled `host`, `role` (a shared host's roles joined with ','), `tenancy` and `organisation`
where they apply. They go into file_sd documents: `platform.json` for the shared hosts of
nina:hosts and `tenancy-<name>.json` per tenancy (its SuperLink, VPN and SuperNode hosts), so
adding an organisation changes only its tenancy's file; the delivery makes that directory hot
(Prometheus rereads file_sd files itself: nothing restarts).

Labels: Prometheus's default `honor_labels: false` keeps the target's labels when a scraped
series carries the same label (the series' own goes to `exported_<label>`): an on-premise host,
which its organisation runs, cannot speak for another tenancy or organisation. The federation
alerts aggregate `by (tenancy, organisation)` with `min`, so a host can only make itself look
offline, never hide another.

Alerts (`rule_files`): CPU load, memory, disk space of the priority mounts ("/" and every
volume of the plan), failed and flapping systemd units (every unit of the service definitions:
`nina.services.watched_units`), GPU temperature and memory, exporters down, and the federation,
certificate and backup metrics that node exporter's textfile collector exposes (METRICS). The
expressions the thresholds apply to are functions (`cpu_load_expr`, `memory_available_expr`, ...),
which nina.dashboards plots with the same thresholds, narrowed to one host.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from nina import config, facts, services
from nina.plan import Host, Plan
from nina.render import DeliveredFile, delivery_payload

# The metrics another part of nina exports through node exporter's textfile collector.
METRICS = {
    "supernode_online": "nina_federation_supernode_online",  # {tenancy, organisation} 1/0
    "supernodes_registered": "nina_federation_supernodes_registered",  # {tenancy}
    "supernodes_online": "nina_federation_supernodes_online",  # {tenancy}
    "runs": "nina_federation_runs_total",  # {tenancy, status}
    "runs_failed": "nina_federation_runs_failed_total",  # {tenancy} counter
    "certificate_expiry": "nina_certificate_expiry_timestamp_seconds",  # {path, subject}
    # The collectors' own health: they stop exporting the series above when they cannot read.
    "federation_scrape_success": "nina_federation_scrape_success",  # {tenancy} 1/0
    "federation_scrape_timestamp": "nina_federation_scrape_timestamp_seconds",  # when it last ran
    "certificate_read_errors": "nina_certificate_read_errors",  # {path} 1/0
    # Each backup run's (nina.host.backups), per thing backed up (`what`).
    "backup_last_run_success": "nina_backup_last_run_success",  # {what} 1/0
    "backup_last_run_timestamp": "nina_backup_last_run_timestamp_seconds",  # {what}
    "backup_last_success": "nina_backup_last_success_timestamp_seconds",  # {what} the newest backup's time
}
# DCGM exporter's metric names (manual 5.3.5-5.3.6).
DCGM_TEMPERATURE = "DCGM_FI_DEV_GPU_TEMP"
DCGM_FB_USED = "DCGM_FI_DEV_FB_USED"
DCGM_FB_FREE = "DCGM_FI_DEV_FB_FREE"
# ... and those nina.dashboards plots besides (dcgm-exporter's default counters).
DCGM_UTILISATION = "DCGM_FI_DEV_GPU_UTIL"  # percent
DCGM_POWER = "DCGM_FI_DEV_POWER_USAGE"  # watts

# The labels every target carries (a shared host's roles joined with ','); nina.dashboards
# selects and groups by them.
HOST_LABEL = "host"
ROLE_LABEL = "role"
TENANCY_LABEL = "tenancy"
ORGANISATION_LABEL = "organisation"

NODE_JOB = "node"
DCGM_JOB = "dcgm"
# A target's exporter, carried in its file_sd labels and dropped by relabelling (`__` labels
# vanish after it): each job keeps its own exporter's targets from the same files.
EXPORTER_LABEL = "__nina_exporter"
PLATFORM_FILE = "platform.json"
RECEIVER = "nina-operations"
SEVERITIES = ("low", "medium", "high")


@dataclass(frozen=True)
class Target:
    """One exporter Prometheus scrapes."""

    file: str  # the file_sd document it is in
    job: str  # NODE_JOB or DCGM_JOB
    address: str  # ip:port
    labels: Mapping[str, str] = field(default_factory=dict)


def _tenancy_file(tenancy: str) -> str:
    return f"tenancy-{tenancy}.json"


def _host_labels(host: Host) -> dict[str, str]:
    labels = {HOST_LABEL: host.name, ROLE_LABEL: ",".join(host.roles)}
    if host.tenancy:
        labels[TENANCY_LABEL] = host.tenancy
    if host.org:
        labels[ORGANISATION_LABEL] = host.org
        labels["placement"] = "cloud"
    return labels


def targets(plan: Plan) -> list[Target]:
    """Every exporter of the plan, sorted by file, job and address."""
    shared = {g.name for g in plan.cfg.hosts}
    found: list[Target] = []
    for host in plan.hosts:
        file = PLATFORM_FILE if host.name in shared or host.tenancy is None else _tenancy_file(host.tenancy)
        labels = _host_labels(host)
        found.append(Target(file, NODE_JOB, f"{host.fixed_ip}:{facts.NODE_EXPORTER_PORT}", labels))
        if host.gpu and "supernode" in host.roles:
            found.append(Target(file, DCGM_JOB, f"{host.fixed_ip}:{facts.DCGM_EXPORTER_PORT}", labels))
    for tenancy in plan.tenancies:
        for m in tenancy.members:
            if m.vpn_address is None:
                continue
            labels = {
                HOST_LABEL: f"supernode-{m.slug}",
                ROLE_LABEL: "supernode",
                TENANCY_LABEL: m.tenancy,
                ORGANISATION_LABEL: m.slug,
                "placement": "onprem",
            }
            found.append(Target(_tenancy_file(tenancy.name), NODE_JOB, f"{m.vpn_address}:{facts.NODE_EXPORTER_PORT}", labels))
            if m.gpu:  # its kit's DCGM exporter, on the same VPN address (through the same tunnel)
                found.append(Target(_tenancy_file(tenancy.name), DCGM_JOB, f"{m.vpn_address}:{facts.DCGM_EXPORTER_PORT}", labels))
    return sorted(found, key=lambda t: (t.file, t.job, t.address))


def file_sd_documents(plan: Plan) -> dict[str, list[dict[str, Any]]]:
    """file name -> file_sd document (a list of target groups, one per target): the platform's
    file and one per tenancy, each present even when empty."""
    docs: dict[str, list[dict[str, Any]]] = {PLATFORM_FILE: []}
    for tenancy in plan.tenancies:
        docs[_tenancy_file(tenancy.name)] = []
    for t in targets(plan):
        docs[t.file].append({"targets": [t.address], "labels": {**t.labels, EXPORTER_LABEL: t.job}})
    return dict(sorted(docs.items()))


def _json(doc: Any) -> str:
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


class _Dumper(yaml.SafeDumper):
    """PyYAML's safe dumper without anchors and aliases (a shared list is written out each time)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _yaml(doc: Any) -> str:
    return yaml.dump(doc, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=1000, allow_unicode=False)


def file_sd_files(plan: Plan) -> dict[str, str]:
    """file name -> JSON text of `file_sd_documents`."""
    return {name: _json(doc) for name, doc in file_sd_documents(plan).items()}


def monitoring_host(plan: Plan) -> Host | None:
    """The host with role monitoring (at most one: nina.config), if any."""
    return next((h for h in plan.hosts if "monitoring" in h.roles), None)


# --- prometheus.yml ----------------------------------------------------------------------


def _rel(path: str, base: str) -> str:
    return posixpath.relpath(path, posixpath.dirname(base))


def prometheus_config(
    plan: Plan,
    *,
    scrape_interval: str = f"{facts.SCRAPE_INTERVAL_SECONDS}s",
    scrape_timeout: str = f"{facts.SCRAPE_TIMEOUT_SECONDS}s",
    evaluation_interval: str = f"{facts.EVALUATION_INTERVAL_SECONDS}s",
    file_sd_refresh: str = f"{facts.FILE_SD_REFRESH_SECONDS}s",
    prometheus_address: str = f"{facts.LOOPBACK}:{facts.PROMETHEUS_PORT}",
    alertmanager_address: str = f"{facts.LOOPBACK}:{facts.ALERTMANAGER_PORT}",
) -> dict[str, Any]:
    """prometheus.yml as data. Rule and file_sd paths are relative to the file's directory
    (Prometheus resolves them there), so the same text works under facts.PROMETHEUS_ETC and in a
    test's directory. The parameters exist for tests (short intervals, other addresses)."""
    mon = monitoring_host(plan)
    own = {HOST_LABEL: mon.name, ROLE_LABEL: ",".join(mon.roles)} if mon else {}
    file_sd = [
        {
            "files": [posixpath.join(_rel(facts.PROMETHEUS_FILE_SD_DIR, facts.PROMETHEUS_CONFIG), "*.json")],
            "refresh_interval": file_sd_refresh,
        }
    ]

    def exporter_job(job: str) -> dict[str, Any]:
        return {
            "job_name": job,
            "file_sd_configs": file_sd,
            "relabel_configs": [{"source_labels": [EXPORTER_LABEL], "regex": job, "action": "keep"}],
        }

    return {
        "global": {
            "scrape_interval": scrape_interval,
            "scrape_timeout": scrape_timeout,
            "evaluation_interval": evaluation_interval,
            "external_labels": {"environment": plan.cfg.environment},
        },
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [alertmanager_address]}]}]},
        "rule_files": [posixpath.join(_rel(facts.PROMETHEUS_RULES_DIR, facts.PROMETHEUS_CONFIG), "*.yml")],
        "scrape_configs": [
            {"job_name": "prometheus", "static_configs": [{"targets": [prometheus_address], "labels": own}]},
            {"job_name": "alertmanager", "static_configs": [{"targets": [alertmanager_address], "labels": own}]},
            exporter_job(NODE_JOB),
            exporter_job(DCGM_JOB),
        ],
    }


def prometheus_yml(plan: Plan, **params: str) -> str:
    return "# nina-fl: rendered by nina.monitoring; changes here are overwritten by the next delivery.\n" + _yaml(
        prometheus_config(plan, **params)
    )


# --- alert rules -------------------------------------------------------------------------


def priority_mounts(plan: Plan) -> tuple[str, ...]:
    """The mount points whose free space alerts watch (manual 5.3.3): / and every volume of the plan."""
    return tuple(sorted({"/", *(v.mount_point for h in plan.hosts for v in h.volumes)}))


def _escape(value: str) -> str:
    """`value` as a literal in a regular expression (RE2's metacharacters escaped)."""
    return re.sub(r"([.^$*+?()\[\]{}|\\])", r"\\\1", value)


def _any_of(values: Sequence[str]) -> str:
    """A PromQL raw-string regex matching exactly `values`."""
    if any("`" in v for v in values):
        raise ValueError(f"a backquote cannot go into a PromQL raw string: {values}")
    return "`" + "|".join(_escape(v) for v in values) + "`"


def _selector(metric: str, *matchers: str) -> str:
    """`metric{m1, m2}` of the non-empty matchers (the bare name without any)."""
    used = [m for m in matchers if m]
    return f"{metric}{{{', '.join(used)}}}" if used else metric


# The ratios the host and GPU alerts compare with nina:monitoring.alerts (manual 5.3.1-5.3.6),
# and nina.dashboards plots with the same thresholds. `match` narrows every selector (a
# dashboard's `host="$host"`); the alerts pass none.
def cpu_load_expr(match: str = "") -> str:
    """15-minute load per CPU (5.3.1)."""
    idle = _selector("node_cpu_seconds_total", match, 'mode="idle"')
    return f"{_selector('node_load15', match)} / count without (cpu, mode) ({idle})"


def memory_available_expr(match: str = "") -> str:
    """Available memory as a share of the total (5.3.2)."""
    return f"{_selector('node_memory_MemAvailable_bytes', match)} / {_selector('node_memory_MemTotal_bytes', match)}"


def disk_free_expr(plan: Plan, match: str = "") -> str:
    """Free space of the priority mounts as a share of their size (5.3.3)."""
    mounts = f"mountpoint=~{_any_of(priority_mounts(plan))}"
    return f"{_selector('node_filesystem_avail_bytes', match, mounts)} / {_selector('node_filesystem_size_bytes', match, mounts)}"


def unit_state_expr(state: str, match: str = "") -> str:
    """1 for each watched unit in systemd state `state` (failed, active, ...), 0 for the others (5.3.4)."""
    return _selector("node_systemd_unit_state", match, f"name=~{_any_of(services.watched_units())}", f'state="{state}"')


def gpu_memory_used_expr(match: str = "") -> str:
    """Frame buffer used as a share of the total (5.3.6)."""
    used = _selector(DCGM_FB_USED, match)
    return f"{used} / ({used} + {_selector(DCGM_FB_FREE, match)})"


def backup_timers() -> str:
    """PromQL: every backup timer a host has loaded (node exporter's systemd collector, any state; a
    timer's series has no `type` label), labelled `what` as its program labels its metrics
    (nina.host.backups): facts.SUPERLINK_BACKUP_WHAT for the SuperLink's, the database's name for
    each of facts.DB_BACKUP_TIMER."""
    prefix, _, suffix = facts.DB_BACKUP_TIMER.partition("{database}")
    databases = f"{_escape(prefix)}(.+){_escape(suffix)}"
    loaded = "max without (state) (node_systemd_unit_state{{name{0}}})"
    superlink = loaded.format(f"=`{facts.SUPERLINK_BACKUP_TIMER}`")
    db = loaded.format(f"=~`{databases}`")
    return (
        f'label_replace({superlink}, "what", "{facts.SUPERLINK_BACKUP_WHAT}", "name", ".*")'
        f' or label_replace({db}, "what", "$1", "name", `{databases}`)'
    )


def _rule(name: str, expr: str, severity: str, summary: str, description: str, for_: str | None = None) -> dict[str, Any]:
    rule: dict[str, Any] = {"alert": name, "expr": expr}
    if for_:
        rule["for"] = for_
    rule["labels"] = {"severity": severity}
    rule["annotations"] = {"summary": summary, "description": description}
    return rule


def _group(name: str, rules: list[dict[str, Any]]) -> dict[str, Any]:
    return {"groups": [{"name": name, "rules": rules}]}


def rule_documents(plan: Plan) -> dict[str, dict[str, Any]]:
    """file name -> Prometheus rule file as data (facts.PROMETHEUS_RULES_DIR), thresholds from
    nina:monitoring.alerts."""
    a = plan.cfg.monitoring.alerts
    on = "{{ $labels.host }} ({{ $labels.instance }})"
    cpu = cpu_load_expr()
    mem = memory_available_expr()
    disk = disk_free_expr(plan)
    units = _any_of(services.watched_units())
    host = [
        *(
            _rule(
                "HostCpuLoadHigh",
                f"{cpu} > {limit}",
                sev,
                f"CPU load high on {on}",
                f"15-minute load per CPU is {{{{ $value | humanizePercentage }}}} (above {limit:g}) for {a.host_for}.",
                a.host_for,
            )
            for sev, limit in (("medium", a.cpu_load_medium), ("high", a.cpu_load_high))
        ),
        *(
            _rule(
                "HostMemoryLow",
                f"{mem} < {limit}",
                sev,
                f"Memory low on {on}",
                f"Available memory is {{{{ $value | humanizePercentage }}}} of the total (below {limit:g}) for {a.host_for}.",
                a.host_for,
            )
            for sev, limit in (("medium", a.memory_available_medium), ("high", a.memory_available_high))
        ),
        *(
            _rule(
                "HostDiskSpaceLow",
                f"{disk} < {limit}",
                sev,
                f"Disk space low on {on} at {{{{ $labels.mountpoint }}}}",
                f"{{{{ $labels.mountpoint }}}} has {{{{ $value | humanizePercentage }}}} free (below {limit:g}) for {a.disk_for}.",
                a.disk_for,
            )
            for sev, limit in (("low", a.disk_free_low), ("medium", a.disk_free_medium), ("high", a.disk_free_high))
        ),
    ]
    unit_rules = [
        _rule(
            "SystemdUnitFailed",
            f"{unit_state_expr('failed')} == 1",
            "high",
            f"{{{{ $labels.name }}}} failed on {on}",
            f"systemd reports {{{{ $labels.name }}}} failed for {a.host_for}; see `systemctl status {{{{ $labels.name }}}}` and its journal.",
            a.host_for,
        ),
        _rule(
            "SystemdUnitFlapping",
            f"increase(node_systemd_service_restart_total{{name=~{units}}}[{a.host_for}]) >= {a.unit_restarts}",
            "medium",
            f"{{{{ $labels.name }}}} keeps restarting on {on}",
            f"systemd restarted {{{{ $labels.name }}}} at least {a.unit_restarts} times in {a.host_for}; see its journal.",
        ),
    ]
    gpu = [
        _rule(
            "GpuTemperatureHigh",
            f"{DCGM_TEMPERATURE} >= {a.gpu_temperature_celsius}",
            "high",
            f"GPU {{{{ $labels.gpu }}}} hot on {on}",
            f"GPU {{{{ $labels.gpu }}}} is at {{{{ $value }}}} °C (alert at {a.gpu_temperature_celsius} °C) for {a.gpu_for}: check cooling, possible hardware fault.",
            a.gpu_for,
        ),
        _rule(
            "GpuMemoryHigh",
            f"{gpu_memory_used_expr()} > {a.gpu_memory_used}",
            "low",
            f"GPU {{{{ $labels.gpu }}}} memory nearly full on {on}",
            f"GPU {{{{ $labels.gpu }}}} uses {{{{ $value | humanizePercentage }}}} of its memory (above {a.gpu_memory_used:g}) for {a.gpu_for}; "
            "long training runs do this, other jobs may not start.",
            a.gpu_for,
        ),
    ]
    target = [
        _rule(
            "TargetDown",
            "up == 0",
            "high",
            f"{{{{ $labels.job }}}} exporter down on {on}",
            f"Prometheus could not scrape {{{{ $labels.instance }}}} (job {{{{ $labels.job }}}}) for {a.target_down_for}: host down, exporter stopped, or the network (VPN) in between.",
            a.target_down_for,
        ),
    ]
    m = METRICS
    federation = [
        _rule(
            "SuperNodeOffline",
            f"min by (tenancy, organisation) ({m['supernode_online']}) == 0",
            "high",
            "SuperNode of {{ $labels.organisation }} offline in {{ $labels.tenancy }}",
            f"The SuperLink of tenancy {{{{ $labels.tenancy }}}} has not seen {{{{ $labels.organisation }}}}'s SuperNode online for {a.supernode_offline_for}.",
            a.supernode_offline_for,
        ),
        _rule(
            "FederationNoSuperNodeOnline",
            f"max by (tenancy) ({m['supernodes_registered']}) > 0 and max by (tenancy) ({m['supernodes_online']}) == 0",
            "high",
            "No SuperNode online in {{ $labels.tenancy }}",
            f"Tenancy {{{{ $labels.tenancy }}}} has registered SuperNodes but none online for {a.supernode_offline_for}: no run can proceed.",
            a.supernode_offline_for,
        ),
        _rule(
            "FederationRunsFailed",
            f"sum by (tenancy) (increase({m['runs_failed']}[{a.runs_failed_window}])) > 0",
            "medium",
            "Flower runs failed in {{ $labels.tenancy }}",
            f"Flower runs of tenancy {{{{ $labels.tenancy }}}} failed in the last {a.runs_failed_window}; see `flwr ls` on its SuperLink.",
        ),
        # Without these, a collector that stopped or cannot read would silence the alerts above.
        _rule(
            "FederationMetricsFailing",
            f"{m['federation_scrape_success']} == 0",
            "medium",
            f"Federation metrics of {{{{ $labels.tenancy }}}} cannot be read on {on}",
            f"nina-federation-metrics has not read the SuperLink's state for {a.federation_metrics_stale}, so the SuperNode alerts are blind; "
            "see `journalctl -u nina-federation-metrics.service`.",
            a.federation_metrics_stale,
        ),
        _rule(
            "FederationMetricsStale",
            f"time() - {m['federation_scrape_timestamp']} > {config.duration_seconds(a.federation_metrics_stale)}",
            "medium",
            f"Federation metrics stale on {on}",
            f"nina-federation-metrics last wrote its metrics more than {a.federation_metrics_stale} ago (it runs every minute), "
            "so the SuperNode alerts are blind; see `systemctl status nina-federation-metrics.timer`.",
        ),
    ]
    certificates = [
        _rule(
            "CertificateExpiringSoon",
            f"({m['certificate_expiry']} - time()) < {a.certificate_expiry_days} * 86400",
            "medium",
            f"Certificate {{{{ $labels.subject }}}} on {on} expires soon",
            f"{{{{ $labels.path }}}} ({{{{ $labels.subject }}}}) expires in {{{{ $value | humanizeDuration }}}} (alert below {a.certificate_expiry_days} days).",
        ),
        _rule(
            "CertificateUnreadable",
            f"{m['certificate_read_errors']} == 1",
            "medium",
            f"Certificate {{{{ $labels.path }}}} on {on} cannot be read",
            "nina-cert-expiry could not read {{ $labels.path }} as a certificate, so its expiry is not watched; see `journalctl -u nina-cert-expiry.service`.",
        ),
    ]
    journal = "see `systemctl list-units 'nina-*backup*'` and the backup unit's journal"
    backups = [
        _rule(
            "BackupFailed",
            f"{m['backup_last_run_success']} == 0",
            "medium",
            f"Backup of {{{{ $labels.what }}}} failed on {on}",
            f"The last backup run of {{{{ $labels.what }}}} failed; {journal}. The backups made before are kept.",
        ),
        _rule(
            "BackupStale",
            f"time() - {m['backup_last_success']} > {config.duration_seconds(a.backup_stale)}",
            "high",
            f"No recent backup of {{{{ $labels.what }}}} on {on}",
            f"The newest backup of {{{{ $labels.what }}}} is {{{{ $value | humanizeDuration }}}} old (alert above {a.backup_stale}): "
            f"its timer stopped or its runs fail; {journal}.",
        ),
        _rule(
            "BackupMissing",
            f"(({backup_timers()}) == 1) unless on (instance, what) {m['backup_last_run_success']}",
            "medium",
            f"No backup metrics of {{{{ $labels.what }}}} on {on}",
            f"{{{{ $labels.name }}}} exists but no run of it has left its metrics for {a.backup_stale}: it never ran (or, for the "
            f"SuperLink's, there is no state yet), or {facts.NODE_EXPORTER_TEXTFILE_DIR} lost them; {journal}.",
            a.backup_stale,
        ),
    ]
    return {
        "backups.yml": _group("nina-backups", backups),
        "certificates.yml": _group("nina-certificates", certificates),
        "federation.yml": _group("nina-federation", federation),
        "gpu.yml": _group("nina-gpu", gpu),
        "host.yml": _group("nina-host", host),
        "targets.yml": _group("nina-targets", target),
        "units.yml": _group("nina-units", unit_rules),
    }


def rule_files(plan: Plan) -> dict[str, str]:
    """file name -> YAML text of `rule_documents`."""
    return {name: _yaml(doc) for name, doc in rule_documents(plan).items()}


# --- alertmanager.yml ----------------------------------------------------------------------


def alertmanager_config(cfg: config.StackConfig, smtp_password: str | None = None) -> dict[str, Any]:
    """alertmanager.yml as data: one receiver, RECEIVER, with e-mail (nina:monitoring.smtp) and/or
    the webhook (nina:monitoring.webhook_url); none configured: alerts only show in Alertmanager.
    `smtp_password` (a secret, never config) is required with smtp.auth_username, refused without."""
    mon = cfg.monitoring
    smtp = mon.smtp
    glob: dict[str, Any] = {"resolve_timeout": "5m"}
    receiver: dict[str, Any] = {"name": RECEIVER}
    if smtp is not None:
        if smtp.auth_username and not smtp_password:
            raise ValueError("nina:monitoring.smtp.auth_username is set: pass the relay's password as smtp_password (a secret)")
        if smtp_password and not smtp.auth_username:
            raise ValueError("smtp_password given but nina:monitoring.smtp.auth_username is not set; set it or pass no password")
        glob.update({"smtp_smarthost": smtp.smarthost, "smtp_from": smtp.sender, "smtp_require_tls": smtp.require_tls})
        if smtp.auth_username:
            glob.update({"smtp_auth_username": smtp.auth_username, "smtp_auth_password": smtp_password})
        receiver["email_configs"] = [{"to": ", ".join(smtp.to), "send_resolved": True}]
    elif smtp_password:
        raise ValueError("smtp_password given but nina:monitoring.smtp is not set")
    if mon.webhook_url:
        if mon.webhook_kind == "slack":
            receiver["slack_configs"] = [{"api_url": mon.webhook_url, "send_resolved": True}]
        elif mon.webhook_kind == "msteams":
            receiver["msteams_configs"] = [{"webhook_url": mon.webhook_url, "send_resolved": True}]
        else:
            receiver["webhook_configs"] = [{"url": mon.webhook_url, "send_resolved": True}]
    same = ["alertname", "instance", "mountpoint", "name", "gpu"]
    return {
        "global": glob,
        "route": {
            "receiver": RECEIVER,
            "group_by": ["alertname", "tenancy", "host"],
            "group_wait": "30s",
            "group_interval": "5m",
            "repeat_interval": "4h",
        },
        # A higher severity of the same alert on the same thing silences the lower ones; a
        # federation with no SuperNode online says it once, not once per organisation.
        "inhibit_rules": [
            {"source_matchers": ['severity="high"'], "target_matchers": ['severity=~"medium|low"'], "equal": same},
            {"source_matchers": ['severity="medium"'], "target_matchers": ['severity="low"'], "equal": same},
            {
                "source_matchers": ['alertname="FederationNoSuperNodeOnline"'],
                "target_matchers": ['alertname="SuperNodeOffline"'],
                "equal": ["tenancy"],
            },
        ],
        "receivers": [receiver],
    }


def alertmanager_yml(cfg: config.StackConfig, smtp_password: str | None = None) -> str:
    return "# nina-fl: rendered by nina.monitoring; changes here are overwritten by the next delivery.\n" + _yaml(
        alertmanager_config(cfg, smtp_password)
    )


# --- command lines and units ----------------------------------------------------------------


def prometheus_args(
    cfg: config.StackConfig,
    *,
    config_file: str = facts.PROMETHEUS_CONFIG,
    tsdb: str = facts.PROMETHEUS_TSDB,
    listen: str = f"{facts.LOOPBACK}:{facts.PROMETHEUS_PORT}",
) -> list[str]:
    """Prometheus's arguments: retention by time (nina:monitoring.retention_days) and by size
    (facts.PROMETHEUS_RETENTION_SHARE of nina:monitoring.volume_gb), loopback only."""
    mon = cfg.monitoring
    size_gb = max(1, int(mon.volume_gb * facts.PROMETHEUS_RETENTION_SHARE))
    return [
        f"--config.file={config_file}",
        f"--storage.tsdb.path={tsdb}",
        f"--storage.tsdb.retention.time={mon.retention_days}d",
        f"--storage.tsdb.retention.size={size_gb}GB",
        f"--web.listen-address={listen}",
    ]


def alertmanager_args(
    *,
    config_file: str = facts.ALERTMANAGER_CONFIG,
    storage: str = facts.ALERTMANAGER_STORAGE,
    listen: str = f"{facts.LOOPBACK}:{facts.ALERTMANAGER_PORT}",
) -> list[str]:
    """Alertmanager's arguments: loopback only, no cluster port (a single instance)."""
    return [f"--config.file={config_file}", f"--storage.path={storage}", f"--web.listen-address={listen}", "--cluster.listen-address="]


def _defaults(what: str, args: Sequence[str]) -> str:
    for a in args:
        if '"' in a or "\\" in a or "$" in a or "`" in a or "\n" in a:
            raise ValueError(f"argument {a!r} cannot go into a systemd EnvironmentFile between double quotes")
    return f'# {what} arguments (manual 5.2.3). Rendered by nina.monitoring.\nARGS="{" ".join(args)}"\n'


def prometheus_defaults(cfg: config.StackConfig) -> str:
    """facts.PROMETHEUS_DEFAULTS: the ARGS Debian's prometheus.service passes."""
    return _defaults("Prometheus", prometheus_args(cfg))


def alertmanager_defaults() -> str:
    """facts.ALERTMANAGER_DEFAULTS: the ARGS of Debian's prometheus-alertmanager.service."""
    return _defaults("Alertmanager", alertmanager_args())


def prometheus_dropin() -> str:
    """facts.PROMETHEUS_DROPIN: Prometheus starts only with its volume mounted (never on the root disk)."""
    return f"# nina-fl: the time series live on the monitoring volume.\n[Unit]\nRequiresMountsFor={facts.MONITORING_VOLUME}\n"


# --- delivery ------------------------------------------------------------------------------


def files(plan: Plan, smtp_password: str | None = None) -> list[DeliveredFile]:
    """Everything the monitoring host's delivery installs."""
    root = facts.ROOT_USER
    return [
        DeliveredFile(facts.PROMETHEUS_CONFIG, prometheus_yml(plan), 0o644),
        *(DeliveredFile(posixpath.join(facts.PROMETHEUS_RULES_DIR, n), t, 0o644) for n, t in rule_files(plan).items()),
        *(DeliveredFile(posixpath.join(facts.PROMETHEUS_FILE_SD_DIR, n), t, 0o644) for n, t in file_sd_files(plan).items()),
        # Alertmanager (the prometheus user) reads it; it may hold the SMTP password.
        DeliveredFile(facts.ALERTMANAGER_CONFIG, alertmanager_yml(plan.cfg, smtp_password), 0o640, root, facts.PROMETHEUS_USER),
        DeliveredFile(facts.PROMETHEUS_DEFAULTS, prometheus_defaults(plan.cfg), 0o644),
        DeliveredFile(facts.ALERTMANAGER_DEFAULTS, alertmanager_defaults(), 0o644),
        DeliveredFile(facts.PROMETHEUS_DROPIN, prometheus_dropin(), 0o644),
    ]


def monitoring_delivery(plan: Plan, smtp_password: str | None = None) -> str:
    """The `<host>-monitoring` payload: Prometheus's config, rules and targets, Alertmanager's
    config, both units' arguments; restarts services.monitoring.UNITS. The rules and targets
    directories are pruned (a removed tenancy takes its file along); the targets directory is
    hot, as Prometheus rereads file_sd files itself: adding an organisation restarts nothing."""
    if monitoring_host(plan) is None:
        raise ValueError("no host has the monitoring role; add 'monitoring' to a host's roles in nina:hosts")
    return delivery_payload(
        files(plan, smtp_password),
        list(services.monitoring.UNITS),
        prune=[facts.PROMETHEUS_RULES_DIR, facts.PROMETHEUS_FILE_SD_DIR],
        hot={facts.PROMETHEUS_FILE_SD_DIR: []},
    )
