"""Grafana on the monitoring host (issue 12 item 5; manual 5.1). Role `grafana`, which nina.config
allows only on the host that also has `monitoring` (Grafana reads Prometheus on that host's
loopback; never the SuperLink's VM). Its delivery is `nina.grafana.grafana_delivery`
(`<host>-grafana`): grafana.ini, the provisioned datasource and dashboards, the secrets' files,
the certificate, and the units of nina-grafana-install (the pinned, verified .deb from
dl.grafana.com, apt-get installed: Grafana is not in Ubuntu's archive), the database step on the
managed Postgres (grafanadb_server, its own schema), grafana-server's drop-in and the database's
daily backup.

What first boot makes: the grafana user and its own group (before the .deb, whose postinst then
adds neither, so the delivery can hand root:grafana files to it before Grafana is installed), psql
and pg_dump (postgresql-client), and the root-owned directories of nina's files."""

from nina import facts
from nina.services.model import Directory, Service, User

_USER = facts.SERVICE_USERS["grafana"]
_ROOT = facts.ROOT_USER
SERVICE = Service(
    name="grafana",
    summary="Grafana OSS dashboards over the monitoring host's Prometheus (HTTPS 3000 to the proxy only)",
    shared=True,
    packages=(facts.POSTGRES_CLIENT_PACKAGE,),
    user=User(_USER, facts.GRAFANA_DATA),
    directories=(
        # root's: Grafana reads what is here, never changes it (the package's postinst makes the
        # files root:grafana 0640 itself).
        Directory(facts.GRAFANA_ETC, 0o755, _ROOT, _ROOT),
        Directory(facts.GRAFANA_CERTS, 0o750, _ROOT, _USER),
        Directory(facts.GRAFANA_SECRETS, 0o750, _ROOT, _USER),
        Directory(facts.GRAFANA_PROVISIONING, 0o755, _ROOT, _ROOT),
        Directory(facts.GRAFANA_DATASOURCES_DIR, 0o755, _ROOT, _ROOT),
        Directory(facts.GRAFANA_PROVIDERS_DIR, 0o755, _ROOT, _ROOT),
        Directory(facts.GRAFANA_DASHBOARDS_DIR, 0o755, _ROOT, _ROOT),
        # Its own (sessions, plugins; logs): its unit writes only here (the package's postinst makes them grafana:grafana).
        Directory(facts.GRAFANA_DATA, 0o755, _USER, facts.SYSTEM_GROUP),
        Directory(facts.GRAFANA_LOGS, 0o755, _USER, facts.SYSTEM_GROUP),
        # The database step's files and the downloads: root's alone.
        Directory(facts.GRAFANA_NINA_ETC, 0o700, _ROOT, _ROOT),
        Directory(facts.GRAFANA_DOWNLOADS, 0o700, _ROOT, _ROOT),
    ),
)
# Its database on the managed Postgres (facts.DATABASES), backed up daily by nina-db-backup.
DATABASE = next(db for db, role in facts.DATABASES.items() if role == _USER)
_BACKUP_SERVICE, _BACKUP_TIMER = (u.format(database=DATABASE) for u in (facts.DB_BACKUP_SERVICE, facts.DB_BACKUP_TIMER))
# In the order a delivery restarts them (systemd orders them by their After= anyway).
UNITS = (facts.GRAFANA_INSTALL_UNIT, facts.GRAFANA_DB_UNIT, facts.GRAFANA_UNIT, _BACKUP_TIMER)
# What the timer runs: the unit alerts watch it too (nina.monitoring).
WATCHED = (_BACKUP_SERVICE,)
