"""Keycloak (manual 4.1.2.8-4.1.2.10, 4.1.2.17.1). Its delivery is `nina.keycloak.keycloak_delivery`
(`<host>-keycloak`): keycloak.conf, the secrets' environment files, the realm file, the
certificate, and the units of nina-keycloak-install (the JDK and the verified release, built),
the database step, keycloak.service and nina-keycloak-realm (the realm applied in place).

The JDK is not a package here: nina:keycloak.jdk_package is config, and what this module lists is
fixed for the life of a VM (user-data), so nina-keycloak-install apt-installs it from its unit's
arguments instead; changing it re-runs the delivery, not the VM. The release's directory under
facts.KEYCLOAK_OPT, and the keycloak user's `data/` in it, depend on nina:keycloak.version: the
install program makes them."""

from nina import facts
from nina.services.model import Directory, Service, User

_USER = facts.SERVICE_USERS["keycloak"]
_ROOT = facts.ROOT_USER
SERVICE = Service(
    name="keycloak",
    summary="identity provider for researchers (HTTPS 8443 to the proxy)",
    shared=True,
    # psql for the database step (nina.keycloak.database_sql); the zip is unpacked by Python.
    packages=(facts.POSTGRES_CLIENT_PACKAGE,),
    user=User(_USER, facts.KEYCLOAK_OPT),
    directories=(
        # root's: the keycloak user must not change what it runs (it writes only the release's data/).
        Directory(facts.KEYCLOAK_OPT, 0o755, _ROOT, _ROOT),
        Directory(facts.KEYCLOAK_ETC, 0o755, _ROOT, _ROOT),
        # The server key is the keycloak user's (0600); the directory lets only fl_system through.
        Directory(facts.KEYCLOAK_CERTS, 0o750, _ROOT, facts.SYSTEM_GROUP),
    ),
)
# In the order a delivery restarts them (systemd orders them by their After= anyway).
# Its database on the managed Postgres (facts.DATABASES), backed up daily by nina-db-backup.
DATABASE = next(db for db, role in facts.DATABASES.items() if role == _USER)
_BACKUP_SERVICE, _BACKUP_TIMER = (u.format(database=DATABASE) for u in (facts.DB_BACKUP_SERVICE, facts.DB_BACKUP_TIMER))
UNITS = (facts.KEYCLOAK_INSTALL_UNIT, facts.KEYCLOAK_DB_UNIT, facts.KEYCLOAK_UNIT, facts.KEYCLOAK_REALM_UNIT, _BACKUP_TIMER)
# What the timer runs: the unit alerts watch it too (nina.monitoring).
WATCHED = (_BACKUP_SERVICE,)
