"""The one place that defines each fact: ports, paths, users, versions, Nectar defaults.

Everything else (config defaults, firewall rules, rendered files, tests) derives from here.
Sources: the operations manual (sections 3.3.1 ports, 4.1.1 directory layout, 4.1.2.17
systemd) and ../shared/notes/facts.md for flwr behaviour (README, "Which flwr release", for 1.31).
"""

from __future__ import annotations

import posixpath

# --- versions -------------------------------------------------------------------------
FLWR_VERSION = "1.31.0"
# --- training environments (issue 13; README, "Training environments") ---------------------
# A tenancy's Flower venv (its SuperLink, its cloud SuperNodes, hospitals' systemd SuperNodes and
# the kit's CPU and CUDA images) installs one lock: flwr and the environment's pinned packages,
# resolved by `nina env lock` with uv for the hosts' Python (Ubuntu 24.04's python3) and platform,
# from PyPI files uploaded before ENV_EXCLUDE_NEWER (so resolving again gives the same lock).
ENV_PYTHON_VERSION = "3.12"
ENV_PYTHON_PLATFORM = "x86_64-manylinux_2_28"
ENV_EXCLUDE_NEWER = "2026-12-01T00:00:00Z"
ENV_VARIANTS = ("cpu", "cuda")
# The built-in environment every tenancy gets unless it names another: flwr and what the
# validation app imports (numpy; the same release as this project's venv, for the rehearsal).
ENV_DEFAULT = "default"
ENV_DEFAULT_PACKAGES = ("numpy==2.4.6",)
# The committed locks: <project>/environments/<name>.lock.
ENV_LOCK_DIR = "environments"
ENV_LOCK_SUFFIX = ".lock"
# `nina validate` compares each node's whole installed set with its tenancy's lock and lists at
# most this many differences per node (then "and N more"): a wrong venv differs in dozens.
ENV_DIFFERENCES_LISTED = 8
# Characters of any one string of a node's report that nina rehearse/validate show (a hostname, a
# version, a GPU note); the rest is cut, so a hostile node cannot flood the operator's terminal.
REPORT_STRING_CHARS = 300
REPORT_ERROR_CHARS = 4000  # of the ServerApp's error, which joins every node's problem
UBUNTU_RELEASE = "24.04"
# Keycloak (manual 4.1.2.9: 26.3.0 on OpenJDK 21): the defaults of nina:keycloak.version / jdk_package.
KEYCLOAK_VERSION = "26.3.0"
KEYCLOAK_JDK_PACKAGE = "openjdk-21-jre-headless"
# Where the keycloak host downloads the pinned release (checked against nina:keycloak.sha256).
KEYCLOAK_RELEASE_URL = "https://github.com/keycloak/keycloak/releases/download/{version}/keycloak-{version}.zip"
# Grafana OSS (not in Ubuntu's archive): the default of nina:grafana.version, and the pinned .deb the
# monitoring host downloads (checked against nina:grafana.sha256) and apt-get installs.
GRAFANA_VERSION = "12.0.2"
GRAFANA_RELEASE_URL = "https://dl.grafana.com/oss/release/grafana_{version}_amd64.deb"
# A Grafana release as nina pins it (nina:grafana.version, nina-grafana-install --version): three
# numbers without leading zeros, as dl.grafana.com's file names and dpkg's version spell them.
GRAFANA_VERSION_PATTERN = r"(0|[1-9]\d{0,2})\.(0|[1-9]\d{0,2})\.(0|[1-9]\d{0,2})"

# --- Nectar / QCIF defaults -------------------------------------------------------------
DEFAULT_AVAILABILITY_ZONE = "QRIScloud"
DEFAULT_EXTERNAL_NETWORK = "QRIScloud"
DEFAULT_IMAGE = "NeCTAR Ubuntu 24.04 LTS (Noble) amd64"
DEFAULT_LOGIN_USER = "ubuntu"
# sshd reads login keys only from AUTHORIZED_KEYS_DIR/<user> (root's files, never a home
# directory's: nothing there survives an operator's removal): user-data writes the drop-in and
# the automation key's line at first boot, every host's base delivery the whole file for the
# login user, the automation key and one line per operator of the config.
AUTHORIZED_KEYS_DIR = "/etc/ssh/nina-authorized-keys"
LOGIN_AUTHORIZED_KEYS = f"{AUTHORIZED_KEYS_DIR}/{DEFAULT_LOGIN_USER}"
SSHD_DROPIN = "/etc/ssh/sshd_config.d/10-nina-authorized-keys.conf"  # first: sshd takes an option's first value
SSH_UNIT = "ssh.service"  # Debian's and Ubuntu's OpenSSH server
SSH_SOCKET = "ssh.socket"  # Ubuntu 24.04 starts it by socket activation: both stop it listening
NOVA_USER_DATA_LIMIT = 65535  # bytes, after base64
USER_DATA_TARGET = 16 * 1024  # the hosts-v2 budget per host (bytes after base64), measured by benchmarks/program.py
# Known AZ -> the external network that routers and floating IPs must use in that AZ.
AZ_EXTERNAL_NETWORKS: dict[str, str] = {
    "QRIScloud": "QRIScloud",
    "melbourne-qh2": "melbourne",
    "monash-01": "monash",
    "monash-02": "monash",
    "auckland": "auckland",
    "intersect": "intersect",
    "tasmania": "tasmania",
    "tasmania-02": "tasmania",
}

# --- ports (manual 3.3.1) ------------------------------------------------------------
SSH_PORT = 22
HTTP_PORT = 80  # the proxy only: Let's Encrypt HTTP-01 challenges, everything else redirected to HTTPS
HTTPS_PORT = 443
KEYCLOAK_PORT = 8443
POSTGRES_PORT = 5432
SUPERLINK_SERVERAPPIO_PORT = 9091  # never TLS: bound to loopback
SUPERLINK_FLEET_PORT = 9092
SUPERLINK_CONTROL_PORT = 9093
SUPERNODE_CLIENTAPPIO_PORT = 9094  # never TLS: bound to loopback (range 9094-9099)
OPENVPN_UDP_PORT = 1194
OPENVPN_TCP_PORT = 443
NODE_EXPORTER_PORT = 9900
DCGM_EXPORTER_PORT = 9400
GRAFANA_PORT = 3000
GRAFANA_DATASOURCE_UID = "nina-prometheus"  # the provisioned Prometheus datasource every dashboard panel uses
PROMETHEUS_PORT = 9090
DNS_PORT = 53
LOOPBACK = "127.0.0.1"

# An organisation's slug (DNS label, also a certificate CN and a file name).
SLUG_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?\Z"
# Where the delivery installs the host programs (nina.host, with this module) on each host:
# one directory per version (content hash), `current` pointing at the one in use.
HOST_LIB_DIR = "/usr/local/lib/nina"
HOST_LIB_CURRENT = "/usr/local/lib/nina/current"
# The host programs (and the kit's installer) run with the system's python3 (root-owned,
# outside any venv), as `-I`; standard library only.
HOST_PYTHON = "/usr/bin/python3"

# --- users and groups (manual 4.1.2.1) ---------------------------------------------
ROOT_USER = "root"  # the superuser, and its group: owner of every system file nina writes
SYSTEM_GROUP = "fl_system"
SERVICE_USERS = {
    "superlink": "superlink",
    "supernode": "supernode",
    "keycloak": "keycloak",
    "jupyterhub": "jupyterhub",
    # Made at first boot (its own group too, as the .deb expects: its postinst then adds neither).
    "grafana": "grafana",
}

# --- directory layout (manual 4.1.1) -----------------------------------------------
FLOWER_VENV = "/opt/python/flower_env"
# The tenancy's lock as its hosts hold it (delivered), installed into FLOWER_VENV by nina-env-sync.
FLOWER_ENV_LOCK = "/opt/python/flower_env.lock"
ENV_SYNC_BIN = "/usr/local/sbin/nina-env-sync"
ENV_SYNC_SERVICE = "nina-env-sync.service"  # a delivery's "run" step (nina.host.env_sync)
ENV_SYNC_TIMEOUT = "1h"  # pip installing a CUDA environment (torch and its nvidia-* wheels) takes minutes
JUPYTER_VENV = "/opt/python/jupyter_env"
ETC_FLWR = "/etc/flwr"
SUPERLINK_ETC = "/etc/flwr/superlink"
SUPERLINK_CERTS = "/etc/flwr/superlink/certs"
SUPERLINK_OPT = "/opt/flwr/superlink"
# The SuperLink state DB lives on a Cinder volume mounted here, so it survives a new VM.
SUPERLINK_STATE_DIR = "/opt/flwr/superlink/state"
SUPERLINK_STATE_DB = "/opt/flwr/superlink/state/superlink_state.db"
# Which organisation holds which registered node id (written by nina-membership).
SUPERLINK_MEMBERS_DIR = "/opt/flwr/superlink/state/members"
# nina-superlink-backup (nina.host.state_backup): the state database and the membership records,
# daily (SUPERLINK_BACKUP_TIMER), on the root disk: off the state volume, so a lost or corrupted
# volume does not take its backups with it (a lost VM does: copy them off-site, see README).
SUPERLINK_BACKUP_BIN = "/usr/local/sbin/nina-superlink-backup"
SUPERLINK_BACKUP_DIR = "/var/backups/nina/superlink"
SUPERLINK_BACKUP_KEEP = 14
SUPERLINK_BACKUP_SERVICE = "nina-superlink-backup.service"
SUPERLINK_BACKUP_TIMER = "nina-superlink-backup.timer"
SUPERLINK_BACKUP_SCHEDULE = "*-*-* 02:30:00"
# flwr 1.26+ reads SuperLink connections from $FLWR_HOME/config.toml (no longer from an app's
# pyproject.toml): the SuperLink host's admin FLWR_HOME holds one named connection to the local
# Control API, so that `flwr supernode register|unregister|ls <...> local` can run there.
SUPERLINK_ADMIN_CONNECTION = "local"
SUPERNODE_ETC = "/etc/flwr/supernode"
SUPERNODE_CERTS = "/etc/flwr/supernode/certs"
SUPERNODE_OPT = "/opt/flwr/supernode"
SUPERNODE_DATA = "/media/data"
SSL_CERTS = "/etc/ssl/certs"
SSL_PRIVATE = "/etc/ssl/private"
LOCAL_CA_TRUST = "/usr/local/share/ca-certificates/nina-local-ca.crt"
OPENVPN_ETC = "/etc/openvpn"
JUPYTERHUB_ETC = "/etc/jupyterhub"
JUPYTERHUB_OPT = "/opt/jupyterhub"
KEYCLOAK_OPT = "/opt/keycloak"  # the unpacked release lives in keycloak-<nina:keycloak.version>/ below it
KEYCLOAK_ETC = "/etc/keycloak"
KEYCLOAK_CONF = "/etc/keycloak/keycloak.conf"  # no secrets: those are in KEYCLOAK_ENV
KEYCLOAK_ENV = "/etc/keycloak/keycloak.env"  # root's 0600, read by systemd: database password, bootstrap admin
KEYCLOAK_CERTS = "/etc/keycloak/certs"  # the local-CA server certificate and key of the internal HTTPS port
KEYCLOAK_REALM_FILE = "/etc/keycloak/realm.json"  # root's 0600: carries the OIDC clients' secrets
KEYCLOAK_DB_SQL = "/etc/keycloak/database.sql"  # the idempotent database step (nina.keycloak.database_sql)
KEYCLOAK_DB_ENV = "/etc/keycloak/database.env"  # root's 0600: libpq's PG* for the keycloak role (its Trove password)
KEYCLOAK_UNIT = "keycloak.service"
KEYCLOAK_DB_UNIT = "nina-keycloak-database.service"  # oneshot, re-run by every delivery; keycloak.service requires it
# nina-keycloak-install (nina.host.keycloak_install): JDK, the verified release under KEYCLOAK_OPT,
# `kc.sh build`; its oneshot unit runs before keycloak.service, which requires it.
KEYCLOAK_INSTALL_BIN = "/usr/local/sbin/nina-keycloak-install"
KEYCLOAK_INSTALL_UNIT = "nina-keycloak-install.service"
KEYCLOAK_DATA_DIR = "data"  # in the release's directory: the only one the keycloak user writes
# nina-keycloak-realm (nina.host.keycloak_realm): applies KEYCLOAK_REALM_FILE through the admin REST
# API after keycloak.service is up, re-run by every delivery.
KEYCLOAK_REALM_BIN = "/usr/local/sbin/nina-keycloak-realm"
KEYCLOAK_REALM_UNIT = "nina-keycloak-realm.service"
KEYCLOAK_MANAGEMENT_PORT = 9000  # Keycloak 26's management interface (/health/ready), same TLS as KEYCLOAK_PORT
KEYCLOAK_ADMIN_CLIENT = "admin-cli"  # the master realm's client the bootstrap admin gets a token from
KEYCLOAK_READY_WAIT_SECONDS = 300  # how long nina-keycloak-realm waits for /health/ready
KEYCLOAK_REALM = "nina-fl"  # the default of nina:keycloak.realm
KEYCLOAK_MASTER_REALM = "master"  # Keycloak's administration realm: never the researchers'
KEYCLOAK_BOOTSTRAP_ADMIN = "nina-bootstrap-admin"  # Keycloak's temporary admin of the master realm
# The realm roles (manual 4.1.2.10) and the group of platform administrators that holds them all.
# pulumi-random secrets (letters and digits): the managed Postgres roles', Keycloak's bootstrap
# admin's, and the OIDC clients' (Keycloak and the hub hold the same value).
SERVICE_PASSWORD_LENGTH = 32
OIDC_CLIENT_SECRET_LENGTH = 48
KEYCLOAK_ROLES = ("jupyter_admin", "jupyter_user", "superlink_user")
KEYCLOAK_ADMIN_GROUP = "jupyter-admins"
KEYCLOAK_TENANCY_GROUP_PREFIX = "tenancy-"  # one group per tenancy: tenancy-<name>
KEYCLOAK_GROUPS_CLAIM = "groups"  # the token claim with the user's groups (JupyterHub's claim_groups_key)
KEYCLOAK_ROLES_CLAIM = "roles"  # the token claim with the user's realm roles
# The OIDC clients: client id -> (the facts.PUBLIC_NAMES service it serves, its redirect path).
KEYCLOAK_CLIENTS = {
    "jupyterhub": ("jupyterhub", "/hub/oauth_callback"),  # oauthenticator's callback
    "grafana": ("grafana", "/login/generic_oauth"),  # Grafana's generic OAuth callback
}
POSTGRES_CLIENT_PACKAGE = "postgresql-client"
PSQL = "/usr/bin/psql"
NGINX_CONF_D = "/etc/nginx/conf.d"
# The public host name of each service nginx serves: `<name>.<nina:researcher_access.public_domain>`.
PUBLIC_NAMES = {"keycloak": "auth", "jupyterhub": "hub", "grafana": "grafana"}

# --- reverse proxy on the proxy host (nina.proxy, manual 4.1.2.5-4.1.2.7) -----------------
NGINX_DIR = "/etc/nginx"
NGINX_CONF = "/etc/nginx/nginx.conf"  # nina's own: only conf.d (no Debian default site on port 80)
NGINX_UNIT = "nginx.service"
NGINX_USER = "www-data"  # Debian's and Ubuntu's nginx workers
NGINX_PID = "/run/nginx.pid"  # what Debian's nginx.service expects
NGINX_LOG_DIR = "/var/log/nginx"  # rotated by the nginx package's logrotate (manual 5.4, table 7)
PROXY_ETC = "/etc/nginx/nina"
PROXY_UPSTREAM_CA = (
    "/etc/nginx/nina/local-ca.crt"  # the local CA nginx verifies upstreams with (a copy: LOCAL_CA_TRUST belongs to the Flower deliveries)
)
ACME_WEBROOT = "/var/www/nina-acme"  # certbot --webroot writes challenges here; nginx serves them on port 80
ACME_CHALLENGE_PATH = "/.well-known/acme-challenge/"
LETSENCRYPT_DIR = "/etc/letsencrypt"
LETSENCRYPT_LIVE = f"{LETSENCRYPT_DIR}/live"  # certbot's <name>/fullchain.pem and privkey.pem
LETSENCRYPT_ARCHIVE = f"{LETSENCRYPT_DIR}/archive"  # where live/<name>/*.pem link to (certbot's versions)
LETSENCRYPT_RENEWAL = f"{LETSENCRYPT_DIR}/renewal"  # certbot's <name>.conf: a lineage certbot renews (certbot.timer)
ACME_SERVER = "https://acme-v02.api.letsencrypt.org/directory"
ACME_STAGING_SERVER = "https://acme-staging-v02.api.letsencrypt.org/directory"  # nina:researcher_access.acme_staging
PROXY_CERTS_BIN = "/usr/local/sbin/nina-proxy-certs"  # placeholders, nginx -t and reload, certbot for missing certificates
PROXY_CERTS_UNIT = "nina-proxy-certs.service"
PROXY_PLACEHOLDER_DAYS = 30  # the self-signed stand-in nginx starts with until Let's Encrypt has issued
PROXY_HSTS_MAX_AGE = 365 * 24 * 3600

# File names inside the cert directories (manual 4.1.2.17.3 / 4.1.3.3.1).
CA_CERT_FILE = "ca.crt"
SERVER_CERT_FILE = "server.pem"
SERVER_KEY_FILE = "server.key"
SUPERNODE_KEY_FILE = "client_credentials"
SUPERNODE_PUB_FILE = "client_credentials.pub"

# Programs nina installs on every host (user-data, no secrets).
INSTALL_FILES_BIN = "/usr/local/sbin/nina-install-files"
MEMBERSHIP_BIN = "/usr/local/sbin/nina-membership"
PREPARE_VOLUME_BIN = "/usr/local/sbin/nina-prepare-volume"
# The last step of first boot: checks what user-data promised (packages, users, directories,
# files, venv, units, volumes) and only then writes BOOTSTRAP_MARKER. Deliveries refuse a host
# without the marker (its bootstrap failed or is unfinished).
BOOTSTRAP_CHECK_BIN = "/usr/local/sbin/nina-bootstrap-check"
BOOTSTRAP_MARKER = "/var/lib/nina/bootstrap-ok"
CLOUD_INIT_OUTPUT_LOG = "/var/log/cloud-init-output.log"

# --- addressing inside a segment ------------------------------------------------------
# Fixed addresses are planned from the config (offsets from the network address), so that
# they are known before any VM or certificate. DHCP hands out only what lies above.
DATABASE_OFFSET = 5  # the managed Postgres (Trove) instance
SHARED_HOST_OFFSET = 10  # nina:hosts[i]           -> .10 + i
SUPERLINK_OFFSET = 40  # tenancy i's SuperLink       -> .40 + i
VPN_SERVER_OFFSET = 70  # tenancy i's OpenVPN server -> .70 + i (UAT issue)
SUPERNODE_OFFSET = 10  # the SuperNode in its own organisation segment
DHCP_POOL_OFFSET = 100  # dynamic addresses start here
VPN_CLIENT_OFFSET = 10  # an organisation's fixed VPN address: pool + 10 + partition id
MAX_SEGMENT_PREFIX = 24  # every segment must hold the static range and a pool

# --- Grafana on the monitoring host (nina.grafana; role grafana, only beside monitoring) ----------
# The .deb's layout: /etc/grafana (its postinst makes every file there root:grafana 0640),
# grafana-server.service reading /etc/default/grafana-server, /var/lib/grafana (grafana's).
GRAFANA_ETC = "/etc/grafana"
GRAFANA_INI = "/etc/grafana/grafana.ini"
GRAFANA_CERTS = "/etc/grafana/certs"  # the local-CA server certificate and key of GRAFANA_PORT
GRAFANA_SECRETS = "/etc/grafana/secrets"  # root:grafana 0640 files grafana.ini reads with $__file{}
GRAFANA_PROVISIONING = "/etc/grafana/provisioning"
GRAFANA_DATASOURCES_DIR = "/etc/grafana/provisioning/datasources"
GRAFANA_PROVIDERS_DIR = "/etc/grafana/provisioning/dashboards"
GRAFANA_DASHBOARDS_DIR = "/etc/grafana/nina-dashboards"  # root-written dashboard JSON, pruned
GRAFANA_DATA = "/var/lib/grafana"  # the package's; sessions and plugins (the database is on Trove)
GRAFANA_LOGS = "/var/log/grafana"
GRAFANA_UNIT = "grafana-server.service"
GRAFANA_DROPIN = "/etc/systemd/system/grafana-server.service.d/nina.conf"
GRAFANA_DASHBOARD_FOLDER = "NINA FL"
GRAFANA_DASHBOARD_PROVIDER = "nina-fl"
# nina-grafana-install (nina.host.grafana_install): the verified .deb, apt-get installed.
GRAFANA_INSTALL_BIN = "/usr/local/sbin/nina-grafana-install"
GRAFANA_INSTALL_UNIT = "nina-grafana-install.service"
GRAFANA_DOWNLOADS = "/var/cache/nina-grafana"  # root's 0700: the verified .deb and the install record
# The database step (root's, outside /etc/grafana so the package never hands grafana its env).
GRAFANA_NINA_ETC = "/etc/nina-grafana"
GRAFANA_DB_SQL = "/etc/nina-grafana/database.sql"
GRAFANA_DB_ENV = "/etc/nina-grafana/database.env"  # root's 0600: libpq's PG* for the grafana role
GRAFANA_DB_UNIT = "nina-grafana-database.service"
GRAFANA_ADMIN_USER = "admin"  # Grafana's built-in server admin (its password: a pulumi-random secret)

# Databases on the managed Postgres (manual 4.3.1): name -> owner role.
DATABASES = {"keycloakdb_server": "keycloak", "grafanadb_server": "grafana"}
# ... and the schema each role owns in its database (PostgreSQL 15+ lets no role but the database
# owner create objects in `public`). Trove makes the databases and roles (ALL on its database to
# each role); nina.keycloak.database_sql, run as the role itself, makes these schemas.
DATABASE_SCHEMAS = {"keycloakdb_server": "keycloak", "grafanadb_server": "grafana"}
TROVE_DATASTORE = "postgresql"
# nina-db-backup (nina.host.db_backup): daily `pg_dump -Fc` of a service's schema as its own role
# (libpq's PG* from the service's root-only env file), restored with `pg_restore` in one
# transaction. Each database -> (its env file, the unit that uses it: restore refuses while it is
# active).
DATABASE_CLIENTS = {"keycloakdb_server": (KEYCLOAK_DB_ENV, KEYCLOAK_UNIT), "grafanadb_server": (GRAFANA_DB_ENV, GRAFANA_UNIT)}
DB_BACKUP_BIN = "/usr/local/sbin/nina-db-backup"
# The backups' Cinder volume on the host with the keycloak role (nina.plan), root's; one directory
# per database below it: <volume>/<database>/<UTC time>/<database>.dump and SHA256SUMS.
DB_BACKUP_VOLUME = "/media/db-backups"
DB_BACKUP_VOLUME_NAME = "db-backups"  # the Volume's name in the plan (resource-name suffix)
DB_BACKUP_VOLUME_GB = 20  # default of nina:database.backup_volume_gb
DB_BACKUP_KEEP = 14  # default of nina:database.backup_keep (daily: two weeks)
DB_BACKUP_SERVICE = "nina-db-backup-{database}.service"  # one pair per database, from one template
DB_BACKUP_TIMER = "nina-db-backup-{database}.timer"
DB_BACKUP_SCHEDULE = "*-*-* 03:15:00"  # after the SuperLink's (SUPERLINK_BACKUP_SCHEDULE)
PG_DUMP = "/usr/bin/pg_dump"  # postgresql-client's (POSTGRES_CLIENT_PACKAGE, 16 on Ubuntu 24.04)
PG_RESTORE = "/usr/bin/pg_restore"
# pg_dump refuses a server newer than itself: nina:database.datastore_version may not exceed this.
POSTGRES_CLIENT_MAJOR = 16
# pg_dump, pg_restore and psql run as this user (root keeps the files and passes descriptors):
# they parse what the network sends, and need none of root's powers for it.
DB_BACKUP_CLIENT_USER = "nobody"

# --- PKI ---------------------------------------------------------------------------------
CA_VALIDITY_HOURS = 10 * 365 * 24
CA_EARLY_RENEWAL_HOURS = 365 * 24
LEAF_VALIDITY_HOURS = 2 * 365 * 24
LEAF_EARLY_RENEWAL_HOURS = 60 * 24
KEY_ALGORITHM = "ECDSA"
KEY_CURVE = "P384"

# --- journald / logrotate (manual 5.4) --------------------------------------------------
JOURNALD_SYSTEM_MAX_USE = "1G"
JOURNALD_SYSTEM_KEEP_FREE = "2G"

# --- rendering layer (nina.render, cloudinit.userdata) -----------------------------------
ANY_ADDRESS = "0.0.0.0"
SERVICE_SHELL = "/bin/false"  # manual 4.1.2.1: service users get no shell
BASH = "/bin/bash"
SERVICE_BASE_PATH = "/usr/bin:/bin"  # appended to the venv's bin/ in the flower units' PATH
SYSTEMD_SYSTEM_DIR = "/etc/systemd/system"
SUPERLINK_UNIT = "superlink.service"
SUPERNODE_UNIT = "supernode.service"
SUPERLINK_RUN_SCRIPT = "/opt/flwr/superlink/run_superlink.sh"
SUPERNODE_RUN_SCRIPT = "/opt/flwr/supernode/run_supernode.sh"
SUPERNODE_CONF = "/etc/flwr/supernode/supernode.conf"
# Flower's home (installed FABs, FFS objects). The SuperLink's is on the state volume.
SUPERLINK_FLWR_HOME = "/opt/flwr/superlink/state/flwr-home"
SUPERNODE_FLWR_HOME = "/opt/flwr/supernode/flwr-home"
# FLWR_HOME of the `flwr` CLI that nina-membership runs as root on the SuperLink host: root's
# alone (not on the state volume, whose top directory the superlink user owns). The SuperLink
# delivery writes its config.toml (FLWR_CONFIG_FILE) with SUPERLINK_ADMIN_CONNECTION.
SUPERLINK_ADMIN_FLWR_HOME = "/var/lib/nina/admin-flwr-home"
FLWR_CONFIG_FILE = "config.toml"
MEMBERSHIP_WAIT_SECONDS = 120  # how long nina-membership waits for the Control API
MEMBERSHIP_BATCH_PARALLEL = 16  # how many registrations of a register-many batch run at once
JUPYTERHUB_CONFIG = "/etc/jupyterhub/config"

# --- JupyterHub (manual 4.1.2.10-4.1.2.15; nina.jupyterhub) --------------------------------------
# The JupyterHub host's venv (JUPYTER_VENV) and the test extra of pyproject.toml pin the same releases.
JUPYTERHUB_PACKAGES = ("jupyterhub==6.1.1", "oauthenticator==17.4.0", "dockerspawner==14.0.0", "jupyterhub-idle-culler==2.0.0")
# JupyterHub's client in the realm (nina:keycloak.realm; KEYCLOAK_CLIENTS), confidential, standard
# flow. Realm groups (the Keycloak facts above): `tenancy-<name>` lets a researcher into
# JupyterHub with that tenancy's federation; KEYCLOAK_ADMIN_GROUP administers the hub. The groups
# come in KEYCLOAK_GROUPS_CLAIM (Keycloak's group mapper, no full path).
JUPYTERHUB_CLIENT_ID = "jupyterhub"
USERNAME_CLAIM = "preferred_username"
JUPYTERHUB_CONFIG_FILE = "jupyterhub_config.py"  # in JUPYTERHUB_CONFIG: the fixed template
JUPYTERHUB_SETTINGS_FILE = "jupyterhub_settings.json"  # ... beside it: the settings as data (holds the client secret)
JUPYTERHUB_RUNTIME_MODULE = "nina_jupyterhub"  # ... and beside it the module it calls (nina/jupyterhub_runtime.py)
JUPYTERHUB_HUB_PORT = 8081  # the hub's own API, where the notebook containers report
# The hub's proxy (configurable-http-proxy), internal HTTPS with a local-CA certificate, reached
# only by nginx: 8000 as in the manual's procedure (4.1.2.13), not table 3.3.1's 443, which nginx
# holds when the proxy shares the VM (the manual's "one large VM"); no privileged port either.
JUPYTERHUB_PORT = 8000
JUPYTERHUB_STATE_FILES = {"db": "jupyterhub.sqlite", "cookie_secret": "jupyterhub_cookie_secret"}  # in JUPYTERHUB_OPT
# configurable-http-proxy: Ubuntu 24.04's package (4.5.3, on the distribution's nodejs 18), not
# npm's current release, which needs node 20 (README, "Researcher access: JupyterHub").
JUPYTERHUB_PROXY_PACKAGE = "node-configurable-http-proxy"
JUPYTERHUB_PROXY_BIN = "/usr/bin/configurable-http-proxy"
# The hub's unit: `jupyterhub -f` from JUPYTER_VENV as the jupyterhub user; its TLS key pair (the
# local CA's, for nginx) in the system's directories. The key stays root's (0600): systemd hands
# it to the service as a credential (LoadCredential=), which is the path the settings name.
JUPYTERHUB_UNIT = "jupyterhub.service"
JUPYTERHUB_SSL_CERT = "/etc/ssl/certs/jupyterhub.pem"
JUPYTERHUB_SSL_KEY = "/etc/ssl/private/jupyterhub.key"
JUPYTERHUB_KEY_CREDENTIAL = "jupyterhub.key"
JUPYTERHUB_KEY_CREDENTIAL_PATH = "/run/credentials/jupyterhub.service/jupyterhub.key"
# The hub host's docker steps (nina.host.hub_docker), oneshot units started by every delivery:
# the tenancies' networks and the notebook images' pre-pull (manual 4.1.2.14), from a plan file.
JUPYTERHUB_DOCKER_BIN = "/usr/local/sbin/nina-jupyterhub-docker"
JUPYTERHUB_DOCKER_PLAN = "/etc/jupyterhub/docker-plan.json"
JUPYTERHUB_NETWORKS_UNIT = "nina-jupyterhub-networks.service"
JUPYTERHUB_IMAGES_UNIT = "nina-jupyterhub-images.service"
# The label that marks a network as a nina tenancy network (value: the tenancy): only those are
# ever removed, and only when no container uses them.
JUPYTERHUB_NETWORK_LABEL = "org.nina-fl.tenancy"
# Each (tenancy, notebook image) gets a derived image (nina.jupyterhub.notebook_builds): the
# configured image with the tenancy's training-environment lock installed (pip --require-hashes
# --no-deps) in a venv that sees the image's own packages, its bin first on PATH and a kernel for
# it. Built by the images step from a context the delivery writes, tagged
# <JUPYTERHUB_BUILD_REPO>/<tenancy>/<image name>:<JUPYTERHUB_BUILD_TAG_CHARS hex of its content's
# sha256> and labelled JUPYTERHUB_BUILD_LABEL=<tenancy> (only images so labelled are ever removed).
# A path component of a docker image reference (distribution's grammar): nina.config's image
# check and nina-jupyterhub-docker's check of the derived images' tags.
DOCKER_PATH_COMPONENT_PATTERN = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
JUPYTERHUB_BUILDS = "/etc/jupyterhub/builds"  # per tenancy a build context: Dockerfile.<image name> each, lock, kernel.json
JUPYTERHUB_BUILD_REPO = "nina-notebook"
JUPYTERHUB_BUILD_TAG_CHARS = 12
JUPYTERHUB_BUILD_LABEL = "org.nina-fl.notebook-tenancy"
JUPYTERHUB_BUILD_BASE_LABEL = "org.nina-fl.notebook-base"
JUPYTERHUB_BUILD_FILES = {"dockerfile": "Dockerfile", "lock": "environment.lock", "kernel": "kernel.json"}
NOTEBOOK_ENV = "/opt/nina/env"  # in the derived image: the venv holding the tenancy's lock
NOTEBOOK_ENV_LOCK = "/opt/nina/environment.lock"
NOTEBOOK_KERNELS_DIR = "/usr/local/share/jupyter/kernels"  # a system kernelspec directory of Jupyter's
NOTEBOOK_KERNEL_NAME = "nina"
# The docker-stacks images' notebook user: their Dockerfiles define ENV NB_UID and end with USER ${NB_UID}.
NOTEBOOK_UID_VARIABLE = "NB_UID"
DOCKER_GROUP = "docker"
DOCKER_DAEMON_JSON = "/etc/docker/daemon.json"
# Where docker takes its networks' subnets on the JupyterHub host (docker0 and one per tenancy):
# never a range of the plan (nina.config refuses a segment or VPN pool that overlaps it).
DOCKER_ADDRESS_POOL = "172.30.0.0/16"
DOCKER_ADDRESS_POOL_SIZE = 24
# Docker waits for its data root's volume at boot (a drop-in with RequiresMountsFor=).
DOCKER_DROPIN = "/etc/systemd/system/docker.service.d/nina-data-root.conf"
DOCKER_LOG_MAX_SIZE = "10m"  # per container log file (json-file driver), DOCKER_LOG_MAX_FILES of them
DOCKER_LOG_MAX_FILES = 3
# One directory per tenancy with what its researchers' containers get read-only: the CA
# certificate and a flwr config.toml whose connection (named for the tenancy) is its SuperLink.
JUPYTERHUB_TENANCIES = "/etc/jupyterhub/tenancies"
JUPYTERHUB_SSL_CERT = f"{SSL_CERTS}/jupyterhub.pem"  # the hub's internal HTTPS certificate (local CA)
# The notebook images researchers choose from (nina:researcher_access.notebook_images), pulled
# before first use (manual 4.1.2.14).
JUPYTERHUB_IMAGES = (
    "quay.io/jupyter/datascience-notebook",
    "quay.io/jupyter/pytorch-notebook",
    "quay.io/jupyter/tensorflow-notebook",
)
JUPYTERHUB_IDLE_TIMEOUT = 3600  # seconds without activity before the idle culler stops a notebook
# How long a hub login lasts (JupyterHub's cookie_max_age_days, 14 days by default): group
# membership (the tenancy) and the allowed groups are checked only when a researcher logs in
# through Keycloak, so this bounds how long one removed there can still start notebooks.
JUPYTERHUB_LOGIN_HOURS = 8
JUPYTERHUB_NETWORK_PREFIX = "nina-"  # docker network per tenancy: nina-<tenancy>
# ... whose Linux bridge is named nbr-<first 10 hex digits of sha256(tenancy)> (at most 15
# characters, whatever the tenancy's name): the hub host's firewall matches notebook traffic by it.
JUPYTERHUB_BRIDGE_PREFIX = "nbr-"
JUPYTERHUB_BRIDGE_HASH_CHARS = 10
# The JupyterHub host's notebook firewall (nina.notebook_firewall): a notebook container reaches its
# own tenancy's SuperLink Control API and the hub's API, never another tenancy, the platform's
# segments, the VPN pools, the cloud's metadata service or the host's other services.
CLOUD_METADATA_ADDRESS = "169.254.169.254"  # Nova's metadata service (user-data, instance details)
DOCKER_UNIT = "docker.service"
DOCKER_USER_CHAIN = "DOCKER-USER"  # docker's filter chain for user rules, jumped to from FORWARD before its own
NOTEBOOK_FIREWALL_BIN = "/usr/local/sbin/nina-notebook-firewall"
NOTEBOOK_FIREWALL_UNIT = "nina-notebook-firewall.service"
NOTEBOOK_IPTABLES_CHAINS = {"forward": "NINA-NOTEBOOK-FORWARD", "input": "NINA-NOTEBOOK-INPUT"}  # iptables and ip6tables
# Docker's data root on the JupyterHub host's Cinder volume: images and the per-user named volumes
# (JUPYTERHUB_USER_VOLUME) survive a new VM.
JUPYTERHUB_VOLUME = "/media/jupyterhub"
JUPYTERHUB_DOCKER_ROOT = "/media/jupyterhub/docker"
JUPYTERHUB_VOLUME_NAME = "docker"  # the Volume's name in the plan (resource-name suffix)
JUPYTERHUB_VOLUME_GB = 100  # default of nina:jupyterhub.volume_gb: three notebook images are ~15 GB
JUPYTERHUB_USER_VOLUME = "jupyterhub-user-{username}"  # DockerSpawner expands {username}
# Inside a notebook container (the docker-stacks images' user jovyan).
NOTEBOOK_DIR = "/home/jovyan/work"
NOTEBOOK_FLWR_HOME = "/home/jovyan/.flwr"
NOTEBOOK_CA_CERT = "/etc/nina/ca.crt"
# Cinder volumes: a virtio disk shows up as /dev/disk/by-id/virtio-<first 20 chars of its id>.
VOLUME_BY_ID_PREFIX = "/dev/disk/by-id/virtio-"
VOLUME_SERIAL_LENGTH = 20
VOLUME_WAIT_SECONDS = 300
VOLUME_DEVICE_TIMEOUT = "5min"  # fstab x-systemd.device-timeout
FSTAB = "/etc/fstab"
# Host housekeeping files (manual 5.2.2 and 5.4).
JOURNALD_DROPIN = "/etc/systemd/journald.conf.d/nina.conf"
JOURNALD_UNIT = "systemd-journald.service"
NODE_EXPORTER_DEFAULTS = "/etc/default/prometheus-node-exporter"
NODE_EXPORTER_LOGROTATE = "/etc/logrotate.d/prometheus-node-exporter"
NODE_EXPORTER_LOG = "/var/log/prometheus/prometheus-node-exporter.log"
NODE_EXPORTER_UNIT = "prometheus-node-exporter.service"
# On an on-premise kit host the exporter listens on the organisation's VPN address only, which
# exists once the tunnel is up: this drop-in orders it after the VPN client and retries until then.
NODE_EXPORTER_VPN_DROPIN = "/etc/systemd/system/prometheus-node-exporter.service.d/nina-vpn.conf"
NODE_EXPORTER_RETRY_SECONDS = 10
# Where node exporter's textfile collector reads `*.prom` files: the default of Debian's and Ubuntu's
# prometheus-node-exporter (its --collector.textfile.directory; the package makes it root:root 0755),
# set explicitly in NODE_EXPORTER_DEFAULTS all the same. nina's metrics files there (README,
# "Operations: federation and certificate metrics") are written atomically by root-run programs.
NODE_EXPORTER_TEXTFILE_DIR = "/var/lib/prometheus/node-exporter"
# nina-federation-metrics (nina.host.federation_metrics), on each SuperLink host, every minute: the
# SuperLink's state (read only) and nina-membership's records as metrics of the federation's health.
FEDERATION_METRICS_BIN = "/usr/local/sbin/nina-federation-metrics"
FEDERATION_METRICS_FILE = "nina_federation.prom"  # in NODE_EXPORTER_TEXTFILE_DIR
FEDERATION_METRICS_SERVICE = "nina-federation-metrics.service"
FEDERATION_METRICS_TIMER = "nina-federation-metrics.timer"
FEDERATION_METRICS_SCHEDULE = "minutely"
FEDERATION_METRICS_DB_TIMEOUT = 2.0  # seconds to wait for a locked state database before reporting it
# nina-cert-expiry (nina.host.cert_expiry), on every host, hourly: notAfter of the certificates nina
# puts there (CERTIFICATE_PATHS) as metrics.
CERT_EXPIRY_BIN = "/usr/local/sbin/nina-cert-expiry"
CERT_EXPIRY_FILE = "nina_certificates.prom"  # in NODE_EXPORTER_TEXTFILE_DIR
CERT_EXPIRY_SERVICE = "nina-cert-expiry.service"
CERT_EXPIRY_TIMER = "nina-cert-expiry.timer"
CERT_EXPIRY_SCHEDULE = "hourly"
# The backup programs (nina.host.backups) after each backup run, success or failure: when the
# newest backup was taken and whether the last run succeeded, one file per thing backed up (`what`:
# SUPERLINK_BACKUP_WHAT, or a database of DATABASE_CLIENTS), so nothing misses a timer gone quiet.
BACKUP_METRICS_FILE = "nina_backup_{what}.prom"  # in NODE_EXPORTER_TEXTFILE_DIR
SUPERLINK_BACKUP_WHAT = "superlink-state"
OPENSSL = "/usr/bin/openssl"  # Ubuntu's openssl package (priority important: on every host)

# --- monitoring host (nina.monitoring, manual 5.1-5.3) -------------------------------------------
# Prometheus and Alertmanager from Ubuntu's archive (Grafana, which is not in it, is role grafana
# on the same host: the Grafana facts above, README "Operations: Grafana"). Both listen on loopback only: nothing outside the host reaches them
# (firewall.NEVER_OPEN), and the monitoring host never carries the SuperLink (whose Control API
# is also 9093: nina.config refuses it).
ALERTMANAGER_PORT = 9093
PROMETHEUS_USER = "prometheus"  # made by the Debian/Ubuntu package; runs Prometheus and Alertmanager
PROMETHEUS_ETC = "/etc/prometheus"
PROMETHEUS_CONFIG = "/etc/prometheus/prometheus.yml"
PROMETHEUS_RULES_DIR = "/etc/prometheus/nina-rules"  # one rule file per alert family, pruned
PROMETHEUS_FILE_SD_DIR = "/etc/prometheus/nina-targets"  # file_sd: platform.json, tenancy-<name>.json; hot
PROMETHEUS_DEFAULTS = "/etc/default/prometheus"  # ARGS of Debian's prometheus.service
PROMETHEUS_UNIT = "prometheus.service"
PROMETHEUS_DROPIN = "/etc/systemd/system/prometheus.service.d/nina.conf"  # waits for the data volume
ALERTMANAGER_CONFIG = "/etc/prometheus/alertmanager.yml"  # root:prometheus 0640 (may hold the SMTP password)
ALERTMANAGER_DEFAULTS = "/etc/default/prometheus-alertmanager"
ALERTMANAGER_UNIT = "prometheus-alertmanager.service"
ALERTMANAGER_STORAGE = "/var/lib/prometheus/alertmanager"  # silences and notification log (the package's)
# Prometheus's time series on the monitoring host's Cinder volume (nina:monitoring.volume_gb).
MONITORING_VOLUME = "/media/monitoring"
MONITORING_VOLUME_NAME = "metrics"  # the Volume's name in the plan (resource-name suffix)
PROMETHEUS_TSDB = "/media/monitoring/prometheus"  # made by Prometheus on the mounted volume
# Size-based retention keeps this share of the volume (time-based: nina:monitoring.retention_days).
PROMETHEUS_RETENTION_SHARE = 0.8
SCRAPE_INTERVAL_SECONDS = 30  # manual 5.2.3
SCRAPE_TIMEOUT_SECONDS = 10
EVALUATION_INTERVAL_SECONDS = 30
FILE_SD_REFRESH_SECONDS = 60  # besides inotify: a missed change is picked up within this

# --- OpenVPN (manual 4.1.2.3-4.1.2.4, 4.1.3.2) ----------------------------------------------
OPENVPN_DEVICE = "tap"  # the manual's tap device (one per server: tap0)
OPENVPN_SERVER_DIR = "/etc/openvpn/server"
OPENVPN_SERVER_CONF = "/etc/openvpn/server/server.conf"
OPENVPN_SERVER_UNIT = "openvpn-server@server.service"
OPENVPN_CCD_DIR = "/etc/openvpn/server/ccd"
OPENVPN_SERVER_PKI = "/etc/openvpn/server/pki"  # ca.crt, issued/server.crt, private/server.key, private/tls-crypt-v2-server.key
# One file per on-premise organisation (name = slug = certificate CN): the SHA-256 of its current VPN
# certificate and the id of its current tls-crypt-v2 key, checked per connection by VPN_VERIFY_BIN.
OPENVPN_ALLOW_DIR = "/etc/openvpn/server/allowed"
OPENVPN_CLIENT_CONF = "/etc/openvpn/client/client.conf"
OPENVPN_CLIENT_UNIT = "openvpn-client@client.service"
OPENVPN_CLIENT_CERTS = "/etc/openvpn/clientcerts"  # ca.crt, issued/<slug>.crt, private/<slug>.key, private/tls-crypt-v2.key
OPENVPN_KEEPALIVE = (10, 60)

# --- certificate profiles (shared by pulumi-tls resources and nina.localpki) ---------------
CA_SUBJECT = {
    "common_name": "NINA Federated Learning local CA",
    "organization": "QCIF",
    "organizational_unit": "NINA",
    "country": "AU",
    "province": "Queensland",
}
LEAF_ORGANIZATION = "QCIF"
CA_CERT_USES = ("cert_signing", "crl_signing", "digital_signature")
SERVER_CERT_USES = ("digital_signature", "key_encipherment", "server_auth")
CLIENT_CERT_USES = ("digital_signature", "key_encipherment", "client_auth")

# --- OpenVPN hub on the VPN host (nina.vpn) -------------------------------------------------
# Two server instances share one address plan: UDP (server.conf, the manual's) and the TCP 443
# fallback (server-tcp.conf). Each owns a persistent tap device; both taps are isolated ports of
# one Linux bridge that holds the pool's first address, so an organisation keeps its fixed
# address whichever transport it uses (see nina/vpn.py).
OPENVPN_TCP_SERVER_CONF = "/etc/openvpn/server/server-tcp.conf"
OPENVPN_TCP_SERVER_UNIT = "openvpn-server@server-tcp.service"
OPENVPN_SERVER_UNIT_TEMPLATE = "openvpn-server@.service"
OPENVPN_SERVER_DROPIN = "/etc/systemd/system/openvpn-server@.service.d/nina.conf"
OPENVPN_BRIDGE = "br-nina-vpn"  # holds the pool's first address (VpnPlan.server_ip)
OPENVPN_TAP_UDP = "tap-nina-udp"  # port of OPENVPN_BRIDGE, used by server.conf
OPENVPN_TAP_TCP = "tap-nina-tcp"  # port of OPENVPN_BRIDGE, used by server-tcp.conf
OPENVPN_CA_FILE = "ca.crt"  # the files under OPENVPN_SERVER_PKI and OPENVPN_CLIENT_CERTS
OPENVPN_ISSUED_DIR = "issued"
OPENVPN_PRIVATE_DIR = "private"
OPENVPN_SERVER_CERT_NAME = "server"  # issued/server.crt, private/server.key
OPENVPN_TLS_CRYPT_V2_SERVER_FILE = "tls-crypt-v2-server.key"  # in the server's private/
OPENVPN_TLS_CRYPT_V2_CLIENT_FILE = "tls-crypt-v2.key"  # in a site's private/: its own control-channel key
OPENVPN_USER = "nobody"
OPENVPN_GROUP = "nogroup"
OPENVPN_SERVER_POLL_TIMEOUT = 10  # seconds a client waits on UDP before trying TCP
# Each instance's management interface (a unix socket, root only: the Debian/Ubuntu package's
# tmpfiles.d makes /run/openvpn-server 0710 root). nina-install-files uses it to disconnect one
# organisation whose client-config-dir entry changed or went, instead of restarting the servers.
OPENVPN_RUN_DIR = "/run/openvpn-server"
OPENVPN_MANAGEMENT_SOCKETS = (f"{OPENVPN_RUN_DIR}/server.sock", f"{OPENVPN_RUN_DIR}/server-tcp.sock")  # UDP, TCP
# Both server instances run it per connection (--tls-crypt-v2-verify, --tls-verify): nina.host.vpn_verify.
VPN_VERIFY_BIN = "/usr/local/sbin/nina-vpn-verify"
VPN_FORWARDING_BIN = "/usr/local/sbin/nina-vpn-forwarding"
VPN_FORWARDING_UNIT = "nina-vpn-forwarding.service"
VPN_SYSCTL_DROPIN = "/etc/sysctl.d/60-nina-vpn.conf"
VPN_ROUTE_WAIT_SECONDS = 120  # how long the forwarding script waits for a route to the SuperLink
VPN_IPTABLES_CHAINS = {"nat": "NINA-VPN-NAT", "forward": "NINA-VPN-FORWARD", "input": "NINA-VPN-INPUT"}

# --- site kits for on-premise SuperNodes (nina.kit, manual 4.1.3, 5.7) ----------------------
SUPERNODE_CONTAINERS = "/opt/flwr/supernode/containers"  # Dockerfiles and run scripts (install.sh --containers)
SITEKIT_SUFFIX = "-sitekit"  # <slug>-sitekit/ inside <slug>-sitekit.tar.gz

# --- offline rehearsal (nina.rehearse, `nina rehearse`) ---------------------------------------
# The stack outputs a rehearsal assembles carry a documentation address (RFC 5737 TEST-NET-1)
# as the VPN server's public IP: nothing is dialled there, it only fills the kits' client.conf.
REHEARSAL_PUBLIC_IP = "192.0.2.1"
REHEARSAL_CONNECTION = "rehearsal"  # SuperLink connection the rehearsal writes into its CLI's config.toml
REHEARSAL_ROUNDS = 3
REHEARSAL_START_TIMEOUT = 60  # seconds for a SuperLink's Control API / nodes to come up
REHEARSAL_ROUND_TIMEOUT = 60  # seconds the validation app waits for one round's replies
REHEARSAL_STOP_TIMEOUT = 10  # seconds between SIGTERM and SIGKILL of a process group

# --- deployment validation (nina.validate, `nina validate`, manual 4.2) -----------------------
VALIDATE_CONNECTION = "nina-validate"  # SuperLink connection nina validate writes into its private FLWR_HOME
VALIDATE_ROUNDS = 3
VALIDATE_ROUND_TIMEOUT = 120  # seconds the validation app waits for the nodes, and for one round's replies
VALIDATE_TUNNEL_TIMEOUT = 60  # seconds for the SSH tunnel's local port to accept
SSH_CONNECT_TIMEOUT = 20  # seconds for each SSH hop's TCP connection
SSH_HOST_KEY_ALIAS = "nina-{environment}-{host}"  # how `nina validate` names hosts in known_hosts

# --- certificate expiry metrics (nina.host.cert_expiry) --------------------------------------
# Every certificate nina puts on a host (globs; a host has those of its roles, the rest match
# nothing): the local CA's copies, the SuperLink's, the VPN server's and sites', Keycloak's,
# JupyterHub's, and Let's Encrypt's on the proxy. nina-cert-expiry reads each only if it lies,
# links resolved, under one of CERTIFICATE_DIRS (certbot's live/ links point into its archive/).
CERTIFICATE_PATHS = (
    LOCAL_CA_TRUST,
    f"{SUPERLINK_CERTS}/{CA_CERT_FILE}",
    f"{SUPERLINK_CERTS}/{SERVER_CERT_FILE}",
    f"{SUPERNODE_CERTS}/{CA_CERT_FILE}",
    f"{OPENVPN_SERVER_PKI}/{OPENVPN_CA_FILE}",
    f"{OPENVPN_SERVER_PKI}/{OPENVPN_ISSUED_DIR}/*.crt",
    f"{OPENVPN_CLIENT_CERTS}/{OPENVPN_CA_FILE}",
    f"{OPENVPN_CLIENT_CERTS}/{OPENVPN_ISSUED_DIR}/*.crt",
    f"{KEYCLOAK_CERTS}/{SERVER_CERT_FILE}",
    f"{GRAFANA_CERTS}/{SERVER_CERT_FILE}",
    JUPYTERHUB_SSL_CERT,
    f"{JUPYTERHUB_CONFIG}/{CA_CERT_FILE}",
    f"{JUPYTERHUB_TENANCIES}/*/{CA_CERT_FILE}",
    PROXY_UPSTREAM_CA,
    f"{LETSENCRYPT_LIVE}/*/fullchain.pem",
)
# ... the directory part of each of those (up to its first wildcard), and certbot's archive.
CERTIFICATE_DIRS = tuple(sorted({posixpath.dirname(p.split("*", 1)[0]) for p in CERTIFICATE_PATHS} | {LETSENCRYPT_ARCHIVE}))

# --- NVIDIA GPUs (issue 13: cloud GPU SuperNodes, hospital GPU sites) ----------------
# Ubuntu's packaged NVIDIA server driver (restricted, noble-updates): nvidia-driver-<N>-server and
# nvidia-utils-<N>-server (nvidia-smi). The branches nina:gpu.driver_branch accepts, and its default.
GPU_DRIVER_BRANCHES = (535, 570, 580)
GPU_DRIVER_BRANCH = 580
GPU_DRIVER_PACKAGES = ("nvidia-driver-{branch}-server", "nvidia-utils-{branch}-server")
# The NVIDIA Container Toolkit: `nvidia-ctk` configures docker's runtime and writes podman's CDI spec;
# docker's `--gpus` needs its hook on the PATH; podman reads the spec from one of these.
NVIDIA_CTK = "nvidia-ctk"
NVIDIA_CONTAINER_HOOK = "nvidia-container-runtime-hook"
NVIDIA_CDI_SPECS = ("/etc/cdi/nvidia.yaml", "/var/run/cdi/nvidia.yaml")
# The cloud GPU SuperNode's driver step (nina.host.gpu_driver): a oneshot unit run by every
# SuperNode delivery of a GPU host and at each boot; its marker (one line: the branch it rebooted
# for) allows one reboot per driver branch, never a loop.
GPU_DRIVER_UNIT = "nina-gpu-driver.service"
GPU_DRIVER_BIN = "/usr/local/sbin/nina-gpu-driver"
GPU_DRIVER_CONF = "/etc/nina/gpu-driver.json"
GPU_DRIVER_MARKER = "/var/lib/nina/gpu-driver-reboot"
REBOOT_REQUIRED = "/var/run/reboot-required"
# The reboot `pulumi up` waits for (nina-gpu-driver's `reboot` and `ready` steps, the commands
# `<host>-gpu-reboot` and `<host>-gpu-ready` after `<host>-gpu`). The install step records a
# pending reboot for this boot under /run (a reboot clears it; the record names its boot id) and
# schedules it GPU_REBOOT_DELAY_SECONDS later as a transient systemd timer (not `shutdown -r`, whose
# /run/nologin would refuse the automation user's next login); the reboot step replaces it with one
# GPU_REBOOT_NOW_SECONDS later, after sshd stops listening. `<host>-gpu-ready` redials for about
# GPU_REBOOT_WAIT_SECONDS, then waits at most GPU_READY_WAIT_SECONDS for the boot-time unit and DCGM.
BOOT_ID = "/proc/sys/kernel/random/boot_id"
GPU_REBOOT_PENDING = "/run/nina/gpu-reboot-pending"
GPU_REBOOT_UNIT = "nina-gpu-reboot"  # transient: .timer and .service (systemd-run --unit)
GPU_REBOOT_NOW_UNIT = "nina-gpu-reboot-now"
GPU_REBOOT_DELAY_SECONDS = 60
GPU_REBOOT_NOW_SECONDS = 5
GPU_REBOOT_WAIT_SECONDS = 600
GPU_READY_WAIT_SECONDS = 900
# pulumi-command (1.2) redials a connection with pulumi's retry.Until: the first wait 0.1 s, each
# next one 1.5 times longer, at most 5 s; dial_error_limit counts the failed dials.
PULUMI_DIAL_RETRY = (0.1, 1.5, 5.0)
# NVIDIA's CUDA apt repository for Ubuntu 24.04 (DCGM and its exporter are there, not in Ubuntu's
# archive). Its signing key (3bf863cc.pub) is fetched by the host and accepted only with this
# fingerprint, then written as the keyring the source names (signed-by), trusted for nothing else.
NVIDIA_REPO_URL = "https://developer.download.nvidia.com/compute/cuda/repos/ubuntu2404/x86_64/"
NVIDIA_REPO_KEY_URL = NVIDIA_REPO_URL + "3bf863cc.pub"
NVIDIA_REPO_FINGERPRINT = "EB693B3035CD5710E231E123A4B469963BF863CC"
NVIDIA_REPO_KEYRING = "/usr/share/keyrings/nina-nvidia-cuda.gpg"
NVIDIA_REPO_LIST = "/etc/apt/sources.list.d/nina-nvidia-cuda.list"
# DCGM 4 (its host engine, nvidia-dcgm.service, the vendor's unit) for the CUDA major version of
# the driver branch (580 brings CUDA 13), and the exporter, run by nina's unit on the host's fixed
# address only (port DCGM_EXPORTER_PORT, which the port table opens to the monitoring host alone).
GPU_CUDA_MAJOR = {535: 12, 570: 12, 580: 13}
DCGM_PACKAGES = ("datacenter-gpu-manager-4-core", "datacenter-gpu-manager-4-cuda{cuda}", "datacenter-gpu-manager-exporter")
# nina:gpu.dcgm_version (optional; unpinned by default) pins DCGM's own packages, the first two
# above (`<package>=<version>`), which NVIDIA versions together (e.g. 1:4.5.2-1); the exporter has
# its own version scheme and stays unpinned. A strict Debian version: [epoch:]upstream[-revision],
# no spaces, no '=' or shell characters (it reaches apt-get's argv and the driver's configuration).
DCGM_PINNED_PACKAGES = DCGM_PACKAGES[:2]
DEBIAN_VERSION_PATTERN = r"(?:[0-9]{1,5}:)?[0-9][A-Za-z0-9.+~]{0,63}(?:-[A-Za-z0-9.+~]{1,32})?"
DCGM_UNIT = "nvidia-dcgm.service"
DCGM_HOSTENGINE = "localhost:5555"
DCGM_EXPORTER_BIN = "/usr/bin/dcgm-exporter"
DCGM_EXPORTER_UNIT = "nina-dcgm-exporter.service"
# A site's readiness check (install.sh --check): how long to wait for the VPN server's TCP port.
VPN_PROBE_SECONDS = 5
