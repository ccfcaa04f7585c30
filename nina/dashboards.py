"""Grafana dashboards as code (manual 5.5.1): the operators' default dashboards, built with Grafana
Labs' grafana-foundation-sdk and dumped as JSON for Grafana's file provisioning.

Pure like `nina.monitoring`: never imports pulumi; `dashboard_files(plan)` gives file name ->
dashboard JSON (sorted keys, two-space indent, a final newline), so the same plan gives
byte-identical files. Four dashboards, their uids fixed (`UIDS`) so links and bookmarks survive
a redelivery:

- platform overview: scrape targets up/down per job and host, the firing alerts, CPU load,
  available memory and free disk of the priority mounts per host, failed watched units,
  certificate days left;
- per host (variable `host`, the node job's `host` label): CPU, load, memory, disk per mount,
  network, the watched systemd units' state;
- GPU (variable `host`, the DCGM job's hosts): temperature, frame buffer used and total,
  utilisation, power per GPU;
- federation (variable `tenancy`, the plan's tenancies): SuperNodes registered and online, each
  organisation's SuperNode online, runs by status, failed runs, the collector's health.

Nothing is retyped: every expression is built from `nina.monitoring` (the alert expressions
themselves, `METRICS`, the DCGM names, the job names and the labels its targets carry: host,
role, tenancy, organisation) and every threshold from nina:monitoring.alerts, the same the alert
rules fire at. Every panel and query uses the one provisioned Prometheus datasource,
facts.GRAFANA_DATASOURCE_UID.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as builders
from grafana_foundation_sdk.builders import prometheus, stat, statetimeline, table, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models import prometheus as prometheus_model

from nina import config, facts, monitoring
from nina.plan import Plan

UIDS = {"platform": "nina-platform", "host": "nina-host", "gpu": "nina-gpu", "federation": "nina-federation"}
TAGS = ["nina-fl"]
REFRESH = "1m"
# Grafana's colours by the alert severities of nina.monitoring.SEVERITIES.
SEVERITY_COLOURS = {"low": "yellow", "medium": "orange", "high": "red"}
OK = "green"
_HOST = monitoring.HOST_LABEL  # also the variables' names
_TENANCY = monitoring.TENANCY_LABEL
_ORG = monitoring.ORGANISATION_LABEL


def datasource() -> common.DataSourceRef:
    """The provisioned Prometheus datasource (facts.GRAFANA_DATASOURCE_UID)."""
    return common.DataSourceRef(type_val="prometheus", uid=facts.GRAFANA_DATASOURCE_UID)


@dataclass(frozen=True)
class Query:
    """One PromQL target of a panel."""

    expr: str
    legend: str = ""
    instant: bool = False  # the last value only (tables, stats), not a range
    table: bool = False  # an instant query as a table (one row per series, its labels as columns)


def _target(q: Query, ref: str) -> prometheus.Dataquery:
    t = prometheus.Dataquery().expr(q.expr).ref_id(ref).datasource(datasource())
    if q.legend:
        t = t.legend_format(q.legend)
    if q.instant or q.table:
        t = t.instant()
    if q.table:
        t = t.format(prometheus_model.PromQueryFormat.TABLE)
    return t


def _steps(base: str, steps: Sequence[tuple[float, str]]) -> builders.ThresholdsConfig:
    """Absolute thresholds: `base` below the lowest value, then each colour from its value on."""
    ordered = [model.Threshold(value=None, color=base), *(model.Threshold(value=v, color=c) for v, c in sorted(steps))]
    return builders.ThresholdsConfig().mode(model.ThresholdsMode.ABSOLUTE).steps(ordered)


def _above(levels: Sequence[tuple[str, float]]) -> builders.ThresholdsConfig:
    """A value at or above a severity's limit takes its colour (CPU load, GPU temperature)."""
    return _steps(OK, [(limit, SEVERITY_COLOURS[sev]) for sev, limit in levels])


def _below(levels: Sequence[tuple[str, float]]) -> builders.ThresholdsConfig:
    """A value below a severity's limit takes its colour (free memory, free disk): the highest
    severity's (lowest) limit is the base, each higher limit hands over to the next lower severity."""
    ordered = sorted(levels, key=lambda sl: sl[1])  # high (lowest limit) first
    colours = [SEVERITY_COLOURS[sev] for sev, _ in ordered]
    steps = [(limit, colour) for (_, limit), colour in zip(ordered, [*colours[1:], OK], strict=True)]
    return _steps(colours[0], steps)


def _mapping(bad: str, good: str) -> list[model.ValueMapping]:
    """0 shows as `bad` in red, 1 as `good` in green."""
    return [
        model.ValueMap(options={"0": model.ValueMappingResult(text=bad, color="red"), "1": model.ValueMappingResult(text=good, color=OK)})
    ]


class _Board:
    """A dashboard under construction: numbers its panels (ids from 1) and their targets (A, B, ...)."""

    def __init__(self, key: str, title: str, description: str) -> None:
        self.board = (
            builders.Dashboard(title)
            .uid(UIDS[key])
            .description(description)
            .tags(TAGS)
            .refresh(REFRESH)
            .time("now-6h", "now")
            .timezone(common.TimeZoneBrowser)
            .readonly()
        )
        self.next_id = 1

    def variable(self, variable: builders.QueryVariable | builders.CustomVariable) -> None:
        self.board = self.board.with_variable(variable)

    def add(
        self,
        panel: timeseries.Panel | stat.Panel | table.Panel | statetimeline.Panel,
        title: str,
        description: str,
        queries: Sequence[Query],
        *,
        width: int = 12,
        height: int = 8,
    ) -> None:
        panel = panel.id(self.next_id).title(title).description(description).datasource(datasource()).span(width).height(height)
        for i, q in enumerate(queries):
            panel = panel.with_target(_target(q, chr(ord("A") + i)))
        self.next_id += 1
        self.board = self.board.with_panel(panel)

    def json(self) -> str:
        return JSONEncoder(sort_keys=True, indent=2).encode(self.board.build()) + "\n"


def _graph(unit: str, thresholds: builders.ThresholdsConfig | None = None, *, minimum: float | None = 0) -> timeseries.Panel:
    """A time series panel; its thresholds, if any, drawn as dashed lines."""
    p = timeseries.Panel().unit(unit)
    if minimum is not None:
        p = p.min(minimum)
    if thresholds is not None:
        style = common_builders.GraphThresholdsStyleConfig().mode(common.GraphThresholdsStyleMode.DASHED)
        p = p.thresholds(thresholds).thresholds_style(style)
    return p


def _stat(unit: str, thresholds: builders.ThresholdsConfig, mappings: list[model.ValueMapping] | None = None) -> stat.Panel:
    p = (
        stat.Panel()
        .unit(unit)
        .thresholds(thresholds)
        .color_mode(common.BigValueColorMode.BACKGROUND)
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]))
    )
    return p.mappings(mappings) if mappings else p


def _timeline(mappings: list[model.ValueMapping]) -> statetimeline.Panel:
    return statetimeline.Panel().mappings(mappings).thresholds(_steps("red", [(1, OK)]))


def _host_variable(job: str, description: str, *, every: bool) -> builders.QueryVariable:
    """The `host` label of `job`'s targets (`up` has one series per target, scraped or not)."""
    v = (
        builders.QueryVariable(_HOST)
        .label("Host")
        .description(description)
        .datasource(datasource())
        .query(f'label_values(up{{job="{job}"}}, {_HOST})')
        .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(model.VariableSort.ALPHABETICAL_ASC)
    )
    return v.multi(True).include_all(True) if every else v


# --- platform overview ----------------------------------------------------------------------


def platform(plan: Plan) -> str:
    a = plan.cfg.monitoring.alerts
    m = monitoring.METRICS
    b = _Board(
        "platform",
        "nina-fl / Platform overview",
        "Every host of the platform at a glance: what Prometheus cannot scrape, what alerts fire, and the figures the alerts watch.",
    )
    b.add(
        _stat("none", _steps(OK, [(1, "red")])),
        "Targets down",
        "Exporters Prometheus cannot scrape now (host down, exporter stopped, or the VPN in between). TargetDown fires after "
        f"{a.target_down_for}.",
        [Query("count(up == 0) or vector(0)", instant=True)],
        width=6,
        height=6,
    )
    b.add(
        _stat("none", _steps(OK, [(1, "red")])),
        "Alerts firing",
        "Alert rules firing now (all severities); the table beside lists them.",
        [Query('count(ALERTS{alertstate="firing"}) or vector(0)', instant=True)],
        width=6,
        height=6,
    )
    b.add(
        table.Panel(),
        "Firing alerts",
        "Every firing alert with its labels (severity, host, tenancy, ...). Alertmanager sends them to the operators' receiver; "
        "silence them there, not here.",
        [Query('ALERTS{alertstate="firing"}', table=True)],
        width=12,
        height=6,
    )
    b.add(
        _timeline(_mapping("down", "up")),
        "Targets up/down per job and host",
        "1 (up) when Prometheus scraped the exporter, 0 (down) when it could not: node (every host and on-premise SuperNode), "
        "dcgm (GPU SuperNodes), prometheus and alertmanager.",
        [Query("up", legend=f"{{{{job}}}} {{{{{_HOST}}}}}")],
        width=24,
        height=10,
    )
    b.add(
        _graph("percentunit", _above([("medium", a.cpu_load_medium), ("high", a.cpu_load_high)])),
        "CPU load per CPU",
        f"15-minute load average divided by the CPUs (manual 5.3.1); HostCpuLoadHigh fires above the lines for {a.host_for}.",
        [Query(monitoring.cpu_load_expr(), legend=f"{{{{{_HOST}}}}}")],
        width=8,
    )
    b.add(
        _graph("percentunit", _below([("medium", a.memory_available_medium), ("high", a.memory_available_high)]), minimum=0),
        "Memory available",
        f"Available memory as a share of the total (manual 5.3.2); HostMemoryLow fires below the lines for {a.host_for}.",
        [Query(monitoring.memory_available_expr(), legend=f"{{{{{_HOST}}}}}")],
        width=8,
    )
    b.add(
        _graph(
            "percentunit",
            _below([("low", a.disk_free_low), ("medium", a.disk_free_medium), ("high", a.disk_free_high)]),
        ),
        "Disk free on the priority mounts",
        f"Free space of {', '.join(monitoring.priority_mounts(plan))} as a share of their size (manual 5.3.3); "
        f"HostDiskSpaceLow fires below the lines for {a.disk_for}.",
        [Query(monitoring.disk_free_expr(plan), legend=f"{{{{{_HOST}}}}} {{{{mountpoint}}}}")],
        width=8,
    )
    b.add(
        table.Panel().thresholds(_steps(OK, [(1, "red")])),
        "Failed units",
        f"Watched systemd units in state failed (SystemdUnitFailed fires after {a.host_for}); see `systemctl status` and the "
        "unit's journal on the host.",
        [Query(f"{monitoring.unit_state_expr('failed')} == 1", table=True)],
        width=10,
    )
    b.add(
        table.Panel().unit("d").thresholds(_steps("red", [(a.certificate_expiry_days, OK)])),
        "Certificate days left",
        f"Days until each watched certificate expires, per host and file (nina-cert-expiry); CertificateExpiringSoon fires below "
        f"{a.certificate_expiry_days} days. Files it could not read show in {m['certificate_read_errors']}.",
        [Query(f"({m['certificate_expiry']} - time()) / 86400", table=True)],
        width=10,
    )
    b.add(
        _stat("none", _steps(OK, [(1, SEVERITY_COLOURS["medium"])])),
        "Certificates unreadable",
        "Watched certificate files nina-cert-expiry could not read (CertificateUnreadable): their expiry is not watched; "
        "see `journalctl -u nina-cert-expiry.service` on the host.",
        [Query(f"sum({m['certificate_read_errors']}) or vector(0)", instant=True)],
        width=4,
    )
    stale_hours = config.duration_seconds(a.backup_stale) / 3600
    b.add(
        table.Panel().unit("h").thresholds(_steps(OK, [(stale_hours, "red")])),
        "Hours since the newest backup",
        f"Age of the newest backup of each thing backed up (the SuperLinks' state, the Trove databases), per host; "
        f"BackupStale fires above {a.backup_stale}. See `systemctl list-timers 'nina-*backup*'` on the host.",
        [Query(f"(time() - {m['backup_last_success']}) / 3600", table=True)],
        width=10,
    )
    b.add(
        table.Panel().unit("h"),
        "Hours since the last backup run",
        "When each backup program last ran, successful or not (its timer runs daily): a run much older than a day means the "
        "timer is stopped; BackupMissing fires when a loaded timer has never left its metrics.",
        [Query(f"(time() - {m['backup_last_run_timestamp']}) / 3600", table=True)],
        width=10,
    )
    b.add(
        _stat("none", _steps(OK, [(1, SEVERITY_COLOURS["medium"])])),
        "Backup runs failed",
        "Things whose last backup run failed (BackupFailed); the backups made before are kept. See the backup unit's journal.",
        [Query(f"count({m['backup_last_run_success']} == 0) or vector(0)", instant=True)],
        width=4,
    )
    return b.json()


# --- per host -------------------------------------------------------------------------------


def host(plan: Plan) -> str:
    a = plan.cfg.monitoring.alerts
    b = _Board(
        "host",
        "nina-fl / Host",
        "One host in detail: CPU, load, memory, disks, network and the systemd units nina watches. Pick the host above.",
    )
    b.variable(_host_variable(monitoring.NODE_JOB, "A host whose node exporter Prometheus scrapes.", every=False))
    on = f'{_HOST}="${_HOST}"'
    b.add(
        _graph("percentunit", minimum=0),
        "CPU busy",
        "Share of CPU time not idle, by mode (user, system, iowait, ...), all CPUs together.",
        [
            Query(
                f'sum by (mode) (rate(node_cpu_seconds_total{{{on}, mode!="idle"}}[$__rate_interval])) '
                f'/ scalar(count(node_cpu_seconds_total{{{on}, mode="idle"}}))',
                legend="{{mode}}",
            )
        ],
    )
    b.add(
        _graph("percentunit", _above([("medium", a.cpu_load_medium), ("high", a.cpu_load_high)])),
        "Load per CPU",
        f"15-minute load average divided by the CPUs (manual 5.3.1); HostCpuLoadHigh fires above the lines for {a.host_for}.",
        [Query(monitoring.cpu_load_expr(on), legend="load15 / CPUs")],
    )
    b.add(
        _graph("bytes"),
        "Memory",
        "Total and available memory (available: free plus what the kernel can reclaim).",
        [
            Query(f"node_memory_MemTotal_bytes{{{on}}}", legend="total"),
            Query(f"node_memory_MemAvailable_bytes{{{on}}}", legend="available"),
        ],
    )
    b.add(
        _graph("percentunit", _below([("medium", a.memory_available_medium), ("high", a.memory_available_high)])),
        "Memory available (share)",
        f"Available memory as a share of the total (manual 5.3.2); HostMemoryLow fires below the lines for {a.host_for}.",
        [Query(monitoring.memory_available_expr(on), legend="available")],
    )
    b.add(
        _graph("percentunit", _below([("low", a.disk_free_low), ("medium", a.disk_free_medium), ("high", a.disk_free_high)])),
        "Disk free per mount",
        "Free space as a share of the size, every mounted file system node exporter reports. The alerts watch only the "
        f"priority mounts ({', '.join(monitoring.priority_mounts(plan))}), below the lines for {a.disk_for}.",
        [Query(f"node_filesystem_avail_bytes{{{on}}} / node_filesystem_size_bytes{{{on}}}", legend="{{mountpoint}}")],
    )
    b.add(
        _graph("bps", minimum=None),
        "Network",
        "Bits per second received (positive) and sent (negative) per interface, loopback left out.",
        [
            Query(f'rate(node_network_receive_bytes_total{{{on}, device!="lo"}}[$__rate_interval]) * 8', legend="{{device}} in"),
            Query(f'-rate(node_network_transmit_bytes_total{{{on}, device!="lo"}}[$__rate_interval]) * 8', legend="{{device}} out"),
        ],
        width=12,
    )
    b.add(
        _timeline(_mapping("not active", "active")),
        "Watched units active",
        "The systemd units of nina's services this host runs (the alerts' watched units): active or not. A failed one also "
        "shows on the platform overview.",
        [Query(monitoring.unit_state_expr("active", on), legend="{{name}}")],
        width=12,
    )
    return b.json()


# --- GPU ----------------------------------------------------------------------------------


def gpu(plan: Plan) -> str:
    a = plan.cfg.monitoring.alerts
    b = _Board(
        "gpu",
        "nina-fl / GPU",
        "The GPUs of the cloud GPU SuperNodes, from NVIDIA's DCGM exporter: temperature, memory, utilisation and power per GPU.",
    )
    b.variable(_host_variable(monitoring.DCGM_JOB, "GPU SuperNodes whose DCGM exporter Prometheus scrapes.", every=True))
    on = f'{_HOST}=~"${_HOST}"'
    per_gpu = f"{{{{{_HOST}}}}} GPU {{{{gpu}}}}"
    b.add(
        _graph("celsius", _above([("high", a.gpu_temperature_celsius)])),
        "Temperature",
        f"GPU temperature (manual 5.3.5); GpuTemperatureHigh fires at or above {a.gpu_temperature_celsius} °C for {a.gpu_for}.",
        [Query(f"{monitoring.DCGM_TEMPERATURE}{{{on}}}", legend=per_gpu)],
    )
    b.add(
        _graph("percentunit", _above([("low", a.gpu_memory_used)])),
        "Frame buffer used (share)",
        f"Frame buffer used as a share of the total (manual 5.3.6); GpuMemoryHigh fires above {a.gpu_memory_used:g} for {a.gpu_for}.",
        [Query(monitoring.gpu_memory_used_expr(on), legend=per_gpu)],
    )
    b.add(
        _graph("decmbytes"),
        "Frame buffer used and total",
        "Frame buffer memory used and in total per GPU (MiB, as DCGM reports it).",
        [
            Query(f"{monitoring.DCGM_FB_USED}{{{on}}}", legend=f"{per_gpu} used"),
            Query(f"{monitoring.DCGM_FB_USED}{{{on}}} + {monitoring.DCGM_FB_FREE}{{{on}}}", legend=f"{per_gpu} total"),
        ],
    )
    b.add(
        _graph("percent"),
        "Utilisation",
        "Share of time the GPU was busy (DCGM's GPU utilisation, 0-100).",
        [Query(f"{monitoring.DCGM_UTILISATION}{{{on}}}", legend=per_gpu)],
    )
    b.add(
        _graph("watt"),
        "Power",
        "Power draw per GPU (watts, as DCGM reports it).",
        [Query(f"{monitoring.DCGM_POWER}{{{on}}}", legend=per_gpu)],
        width=24,
    )
    return b.json()


# --- federation ---------------------------------------------------------------------------


def federation(plan: Plan) -> str:
    a = plan.cfg.monitoring.alerts
    m = monitoring.METRICS
    names = [t.name for t in plan.tenancies]
    b = _Board(
        "federation",
        "nina-fl / Federation",
        "One tenancy's federation, from its SuperLink (nina-federation-metrics): which SuperNodes are online, and its Flower runs. "
        "Pick the tenancy above.",
    )
    tenancy = (
        builders.CustomVariable(_TENANCY)
        .label("Tenancy")
        .description("A tenancy of the plan (nina:tenancies).")
        .values(",".join(names))
        .options([model.VariableOption(selected=i == 0, text=n, value=n) for i, n in enumerate(names)])
    )
    if names:
        tenancy = tenancy.current(model.VariableOption(selected=True, text=names[0], value=names[0]))
    b.variable(tenancy)
    on = f'{_TENANCY}="${_TENANCY}"'
    b.add(
        _stat("none", _steps(OK, [])),
        "SuperNodes registered",
        "SuperNodes whose key is registered at the tenancy's SuperLink.",
        [Query(f"max({m['supernodes_registered']}{{{on}}})", instant=True)],
        width=6,
        height=6,
    )
    b.add(
        _stat("none", _steps("red", [(1, OK)])),
        "SuperNodes online",
        f"Registered SuperNodes online now; FederationNoSuperNodeOnline fires when none is for {a.supernode_offline_for}.",
        [Query(f"max({m['supernodes_online']}{{{on}}})", instant=True)],
        width=6,
        height=6,
    )
    b.add(
        _stat("none", _steps(OK, [(1, "orange")])),
        f"Runs failed ({a.runs_failed_window})",
        f"Flower runs that finished failed in the last {a.runs_failed_window} (FederationRunsFailed); see `flwr ls` on the SuperLink.",
        [Query(f"sum(increase({m['runs_failed']}{{{on}}}[{a.runs_failed_window}]))", instant=True)],
        width=6,
        height=6,
    )
    b.add(
        _stat("none", _steps("red", [(1, OK)]), _mapping("offline", "online")),
        "Metrics collector",
        "Whether nina-federation-metrics could read the SuperLink's state (1); when it cannot, every panel here is blind "
        f"(FederationMetricsFailing after {a.federation_metrics_stale}).",
        [Query(f"min({m['federation_scrape_success']}{{{on}}})", instant=True)],
        width=6,
        height=6,
    )
    b.add(
        _graph("none"),
        "SuperNodes registered and online",
        "Registered and online SuperNodes over time.",
        [
            Query(f"max({m['supernodes_registered']}{{{on}}})", legend="registered"),
            Query(f"max({m['supernodes_online']}{{{on}}})", legend="online"),
        ],
    )
    b.add(
        _timeline(_mapping("offline", "online")),
        "SuperNode online per organisation",
        f"Each organisation's SuperNode: online or not (not registered counts as offline); SuperNodeOffline fires after "
        f"{a.supernode_offline_for} offline.",
        [Query(f"min by ({_ORG}) ({m['supernode_online']}{{{on}}})", legend=f"{{{{{_ORG}}}}}")],
    )
    b.add(
        _graph("none"),
        "Runs by status",
        "Runs in the SuperLink's state by status (pending, starting, running, finished:completed|failed|stopped).",
        [Query(f"sum by (status) ({m['runs']}{{{on}}})", legend="{{status}}")],
    )
    b.add(
        _graph("none"),
        "Failed runs",
        "Runs that finished failed, in total since the SuperLink's state began.",
        [Query(f"sum({m['runs_failed']}{{{on}}})", legend="failed")],
    )
    b.add(
        _graph("s", _above([("medium", config.duration_seconds(a.federation_metrics_stale))])),
        "Age of the federation metrics",
        f"Seconds since nina-federation-metrics last wrote them (it runs every minute); FederationMetricsStale fires above "
        f"{a.federation_metrics_stale}.",
        [Query(f"time() - max({m['federation_scrape_timestamp']}{{{on}}})", legend="age")],
    )
    b.add(
        _timeline(_mapping("down", "up")),
        "Exporters of the tenancy",
        "The tenancy's scrape targets (SuperLink, VPN and SuperNode hosts, on-premise ones through the VPN): up or down.",
        [Query(f"up{{{on}}}", legend=f"{{{{job}}}} {{{{{_HOST}}}}}")],
    )
    return b.json()


def dashboard_files(plan: Plan) -> dict[str, str]:
    """file name (`<uid>.json`) -> dashboard JSON, sorted by name."""
    made = {"platform": platform, "host": host, "gpu": gpu, "federation": federation}
    return dict(sorted((f"{UIDS[key]}.json", build(plan)) for key, build in made.items()))
