"""Keycloak as code (manual 4.1.2.8-4.1.2.10): the database step, the realm and the server's files.

- `database_sql(spec)`: the psql script that makes a service's schema (and its search_path) in
  the database Trove made for it, run as the service's own role, idempotently (keycloak's, and
  grafana's with the same function);
- `realm(...)`, `realm_json(...)`: the realm as data in Keycloak's RealmRepresentation (what
  `kc.sh import` and the admin REST API's realm and partial imports read): realm roles, one
  group per tenancy, OIDC clients with redirect URIs from the public domain and the secrets
  passed in (pulumi-random in the components), a groups claim;
- `keycloak_conf`, `keycloak_env`, `keycloak_unit`, `database_unit`, `database_env`: the files
  of the `<host>-keycloak` delivery.

Pure: never imports pulumi; every value comes from nina.facts, the config or the arguments.
Deterministic: the same inputs give byte-identical text. Secrets (passwords, client secrets)
appear only in `keycloak_env`, `database_env` and the realm JSON, which are delivered over SSH
(root's, 0600) and never go into user-data.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import jinja2

from nina import config, facts, proxy, templating
from nina.plan import Certificate, Host, Plan, host_certificate

# A PostgreSQL identifier nina writes unquoted-safe: lowercase, at most 63 bytes (NAMEDATALEN - 1).
_PG_NAME_RE = re.compile(r"[a-z_][a-z0-9_]{0,62}")
# Roles PostgreSQL reserves or that would hand out more than a service's own rights.
_RESERVED_NAMES = frozenset({"public", "postgres", "template0", "template1", "pg_catalog", "information_schema", "none", "current_user"})
# Secrets that go into a systemd EnvironmentFile: what pulumi-random makes with special=False
# (and base64/URL-safe alphabets); anything else could need quoting there.
_ENV_SECRET_RE = re.compile(r"[A-Za-z0-9._~+/=-]{16,256}")


@lru_cache(maxsize=1)
def _env() -> jinja2.Environment:
    return templating.environment("keycloak")


def _render(name: str, **context: object) -> str:
    return _env().get_template(name).render(**context)


# --- the database step (manual 4.1.2.8, 4.3.1) ------------------------------------------------


@dataclass(frozen=True)
class DatabaseSpec:
    """A service's database on the managed Postgres, the schema it owns there and its login role."""

    database: str
    role: str
    schema: str

    def __post_init__(self) -> None:
        for what, name in (("database", self.database), ("role", self.role), ("schema", self.schema)):
            if not isinstance(name, str) or not _PG_NAME_RE.fullmatch(name) or name in _RESERVED_NAMES or name.startswith("pg_"):
                raise ValueError(
                    f"{what} name {name!r} is refused: use 1-63 lowercase letters, digits and '_', starting with a letter "
                    "or '_', not a name PostgreSQL reserves (pg_*, public, postgres, template0/1)"
                )


def database_spec(role: str) -> DatabaseSpec:
    """The spec of `role`'s database as facts.DATABASES and facts.DATABASE_SCHEMAS state it."""
    found = [db for db, owner in facts.DATABASES.items() if owner == role]
    if len(found) != 1:
        raise ValueError(f"no database of role {role!r} in facts.DATABASES")
    return DatabaseSpec(database=found[0], role=role, schema=facts.DATABASE_SCHEMAS[found[0]])


def database_sql(spec: DatabaseSpec) -> str:
    """The idempotent psql script for `spec`, run as the service's own login role in its own
    database ("role mode": Trove made both and granted the role ALL on the database; no admin
    credential exists). Makes the role's schema and its search_path there; refuses, in one line,
    a wrong user or database and a schema of that name that another role owns."""
    if not isinstance(spec, DatabaseSpec):
        raise TypeError("pass a DatabaseSpec (its names are checked when it is made)")
    return _render("database.sql.j2", spec=spec)


def _env_value(value: str, what: str) -> str:
    if not isinstance(value, str) or not _ENV_SECRET_RE.fullmatch(value):
        raise ValueError(
            f"{what} must be 16-256 characters of letters, digits and ._~+/=- (pulumi-random with special=False); "
            "anything else would need quoting in a systemd EnvironmentFile"
        )
    return value


def _env_name(value: str, what: str) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9._-]{1,253}", value):
        raise ValueError(f"{what} {value!r} is not a host or user name")
    return value


def database_env(db_host: str, spec: DatabaseSpec, role_password: str, port: int = facts.POSTGRES_PORT) -> str:
    """The database step's EnvironmentFile (facts.KEYCLOAK_DB_ENV, root's 0600): libpq's PG* for
    the service's own role in its own database (its Trove password); no admin anywhere."""
    if not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"port {port!r} is not a TCP port")
    lines = [
        f"PGHOST={_env_name(db_host, 'database host')}",
        f"PGPORT={port}",
        f"PGUSER={spec.role}",
        f"PGDATABASE={spec.database}",
        f"PGPASSWORD={_env_value(role_password, 'the role password')}",
    ]
    return "".join(line + "\n" for line in lines)


def database_unit(spec: DatabaseSpec, sql_file: str = facts.KEYCLOAK_DB_SQL, env_file: str = facts.KEYCLOAK_DB_ENV) -> str:
    """The oneshot unit that runs database_sql (facts.KEYCLOAK_DB_UNIT); keycloak.service requires it."""
    return _render("database.service.j2", spec=spec, sql_file=sql_file, env_file=env_file)


# --- the realm (manual 4.1.2.10) ---------------------------------------------------------------

_ROLE_DESCRIPTIONS = {
    "jupyter_admin": "administers JupyterHub",
    "jupyter_user": "uses JupyterHub notebooks",
    "superlink_user": "submits runs to the tenancy's SuperLink",
}
assert set(_ROLE_DESCRIPTIONS) == set(facts.KEYCLOAK_ROLES)
_CLIENT_NAMES = {"jupyterhub": "JupyterHub", "grafana": "Grafana"}
assert set(_CLIENT_NAMES) == set(facts.KEYCLOAK_CLIENTS)
_MIN_CLIENT_SECRET = 32


def _mapper(name: str, mapper: str, extra: Mapping[str, str]) -> dict[str, Any]:
    return {
        "name": name,
        "protocol": "openid-connect",
        "protocolMapper": mapper,
        "consentRequired": False,
        "config": {
            "id.token.claim": "true",
            "access.token.claim": "true",
            "userinfo.token.claim": "true",
            "introspection.token.claim": "true",
            **extra,
        },
    }


def _client(client_id: str, public_url: str, redirect_path: str, secret: str) -> dict[str, Any]:
    if not isinstance(secret, str) or len(secret) < _MIN_CLIENT_SECRET or not secret.isascii() or not secret.isprintable():
        raise ValueError(f"the secret of client {client_id!r} must be at least {_MIN_CLIENT_SECRET} printable ASCII characters")
    return {
        "clientId": client_id,
        "name": _CLIENT_NAMES[client_id],
        "enabled": True,
        "protocol": "openid-connect",
        "publicClient": False,
        "clientAuthenticatorType": "client-secret",
        "secret": secret,
        "standardFlowEnabled": True,
        "implicitFlowEnabled": False,
        "directAccessGrantsEnabled": False,
        "serviceAccountsEnabled": False,
        "frontchannelLogout": True,
        "fullScopeAllowed": True,
        "rootUrl": public_url,
        "baseUrl": public_url + "/",
        # Exact URIs, no wildcards: Keycloak sends codes only there.
        "redirectUris": [public_url + redirect_path],
        "webOrigins": [public_url],
        "attributes": {"pkce.code.challenge.method": "S256", "post.logout.redirect.uris": public_url + "/"},
        "protocolMappers": [
            _mapper("groups", "oidc-group-membership-mapper", {"claim.name": facts.KEYCLOAK_GROUPS_CLAIM, "full.path": "false"}),
            _mapper(
                "realm roles",
                "oidc-usermodel-realm-role-mapper",
                {"claim.name": facts.KEYCLOAK_ROLES_CLAIM, "multivalued": "true", "jsonType.label": "String"},
            ),
        ],
    }


def tenancy_group(tenancy: str) -> str:
    """The realm group of a tenancy's researchers (`tenancy-<name>`)."""
    if not isinstance(tenancy, str) or not config.SLUG_RE.match(tenancy):
        raise ValueError(f"tenancy name {tenancy!r} is not a slug")
    return facts.KEYCLOAK_TENANCY_GROUP_PREFIX + tenancy


def realm(cfg: config.StackConfig, tenancies: Sequence[str], client_secrets: Mapping[str, str]) -> dict[str, Any]:
    """The realm as Keycloak's RealmRepresentation: name `nina:keycloak.realm`, the realm roles,
    the administrators' group and one group per tenancy (`tenancies`: the plan's names, in plan
    order), and one confidential OIDC client per entry of `client_secrets` (client id, a key of
    facts.KEYCLOAK_CLIENTS -> its secret) redirecting to `nina:researcher_access`'s public URL."""
    access = cfg.researcher_access
    if access is None:
        raise ValueError("the realm needs nina:researcher_access.public_domain (its clients redirect to the public names)")
    unknown = set(client_secrets) - set(facts.KEYCLOAK_CLIENTS)
    if unknown:
        raise ValueError(f"unknown OIDC clients {sorted(unknown)}; known: {', '.join(facts.KEYCLOAK_CLIENTS)}")
    if len(set(tenancies)) != len(tenancies):
        raise ValueError(f"duplicate tenancy names in {list(tenancies)}")
    member_roles = ["jupyter_user", "superlink_user"]
    groups = [
        {"name": facts.KEYCLOAK_ADMIN_GROUP, "path": "/" + facts.KEYCLOAK_ADMIN_GROUP, "realmRoles": sorted(facts.KEYCLOAK_ROLES)},
        *(
            {"name": tenancy_group(t), "path": "/" + tenancy_group(t), "realmRoles": member_roles, "attributes": {"nina_tenancy": [t]}}
            for t in tenancies
        ),
    ]
    clients = []
    for client_id in facts.KEYCLOAK_CLIENTS:  # facts order, whatever order the secrets came in
        if client_id in client_secrets:
            service, path = facts.KEYCLOAK_CLIENTS[client_id]
            clients.append(_client(client_id, access.public_url(service), path, client_secrets[client_id]))
    return {
        "realm": cfg.keycloak.realm,
        "displayName": "NINA Federated Learning",
        "enabled": True,
        "sslRequired": "all",
        "registrationAllowed": False,
        "loginWithEmailAllowed": True,
        "duplicateEmailsAllowed": False,
        "resetPasswordAllowed": False,
        "editUsernameAllowed": False,
        "bruteForceProtected": True,
        "roles": {"realm": [{"name": r, "description": _ROLE_DESCRIPTIONS[r], "composite": False} for r in facts.KEYCLOAK_ROLES]},
        "groups": groups,
        "clients": clients,
    }


def realm_json(cfg: config.StackConfig, tenancies: Sequence[str], client_secrets: Mapping[str, str]) -> str:
    """`realm(...)` as the JSON delivered to facts.KEYCLOAK_REALM_FILE (sorted keys, stable)."""
    return json.dumps(realm(cfg, tenancies, client_secrets), indent=2, sort_keys=True) + "\n"


# --- the server's files (manual 4.1.2.9) --------------------------------------------------------


def keycloak_home(cfg: config.StackConfig) -> str:
    """Where the pinned release is unpacked: facts.KEYCLOAK_OPT/keycloak-<version>."""
    return posixpath.join(facts.KEYCLOAK_OPT, f"keycloak-{cfg.keycloak.version}")


def keycloak_conf(cfg: config.StackConfig, db_host: str, spec: DatabaseSpec | None = None) -> str:
    """facts.KEYCLOAK_CONF: the database on the managed Postgres (its own schema), the public
    hostname, HTTPS only on facts.KEYCLOAK_PORT with the local-CA certificate, behind nginx."""
    if cfg.researcher_access is None:
        raise ValueError("keycloak.conf needs nina:researcher_access.public_domain (Keycloak's hostname)")
    return _render(
        "keycloak.conf.j2",
        version=cfg.keycloak.version,
        db_host=_env_name(db_host, "database host"),
        spec=spec or database_spec(facts.SERVICE_USERS["keycloak"]),
        public_url=cfg.researcher_access.public_url("keycloak"),
    )


def keycloak_env(db_password: str, bootstrap_admin_password: str) -> str:
    """facts.KEYCLOAK_ENV (root's 0600, systemd's EnvironmentFile): the database password and
    Keycloak's temporary bootstrap admin (used only while the master realm has no admin)."""
    lines = [
        f"KC_DB_PASSWORD={_env_value(db_password, 'the database password')}",
        f"KC_BOOTSTRAP_ADMIN_USERNAME={facts.KEYCLOAK_BOOTSTRAP_ADMIN}",
        f"KC_BOOTSTRAP_ADMIN_PASSWORD={_env_value(bootstrap_admin_password, 'the bootstrap admin password')}",
    ]
    return "".join(line + "\n" for line in lines)


def keycloak_unit(cfg: config.StackConfig) -> str:
    """facts.KEYCLOAK_UNIT: `kc.sh --config-file=facts.KEYCLOAK_CONF start --optimized` as the
    keycloak user, after (and requiring) the install and database units; writes only data/."""
    return _render("keycloak.service.j2", version=cfg.keycloak.version, home=keycloak_home(cfg))


def install_unit(cfg: config.StackConfig) -> str:
    """facts.KEYCLOAK_INSTALL_UNIT: nina-keycloak-install with nina:keycloak.version, sha256 and
    jdk_package (so changing any of them re-runs the delivery, not the VM)."""
    kc = cfg.keycloak
    if kc.sha256 is None:
        raise ValueError(f"nina:keycloak.sha256 is not set; {config.keycloak_sha256_fix(kc.version)}")
    return _render("install.service.j2", version=kc.version, sha256=kc.sha256, jdk=kc.jdk_package, home=keycloak_home(cfg))


def realm_unit(cfg: config.StackConfig) -> str:
    """facts.KEYCLOAK_REALM_UNIT: nina-keycloak-realm after keycloak.service, with the bootstrap admin."""
    return _render("realm.service.j2", realm=cfg.keycloak.realm)


def keycloak_host(plan: Plan) -> Host:
    """The host with the keycloak role (exactly one: nina.config allows each shared role once)."""
    hosts = [h for h in plan.hosts if "keycloak" in h.roles]
    if len(hosts) != 1:
        raise ValueError(f"the plan has {len(hosts)} hosts with the keycloak role; Keycloak needs exactly one")
    return hosts[0]


def client_ids(plan: Plan) -> list[str]:
    """The realm's OIDC clients: those of facts.KEYCLOAK_CLIENTS whose service nginx serves
    (JupyterHub, Grafana), in facts order."""
    served = {site.service for site in proxy.sites(plan)}
    return [client for client, (service, _path) in facts.KEYCLOAK_CLIENTS.items() if service in served]


def certificate(plan: Plan) -> Certificate:
    """The local-CA server certificate of the keycloak host's internal HTTPS (facts.KEYCLOAK_PORT
    and the management port; nina.plan.host_certificate): its names, localhost and 127.0.0.1
    (where nina-keycloak-realm reaches it on the host)."""
    return host_certificate("keycloak", plan.cfg, keycloak_host(plan))


# --- the delivery (`<host>-keycloak`; not declared by the components yet) ------------------------


@dataclass(frozen=True, kw_only=True)
class KeycloakSecrets:
    """What the `<host>-keycloak` delivery carries that must never be in user-data."""

    db_password: str  # the keycloak role's (Trove's user), for Keycloak and the database step
    bootstrap_admin_password: str
    client_secrets: Mapping[str, str]  # OIDC client id -> secret (facts.KEYCLOAK_CLIENTS)
    cert_pem: str  # the local-CA server certificate of facts.KEYCLOAK_PORT
    key_pem: str


def keycloak_delivery(cfg: config.StackConfig, tenancies: Sequence[str], db_host: str, secrets: KeycloakSecrets) -> str:
    """The `<host>-keycloak` payload for nina-install-files: keycloak.conf, the database step (SQL,
    its environment), keycloak.env, the realm JSON, the certificate, the launchers of
    nina-keycloak-install and nina-keycloak-realm, the four units, and the database's daily
    backup (nina-db-backup, its service and timer: `render.db_backup_files`). Secrets are root's 0600
    (systemd reads the environment files as root), the key the keycloak user's 0600. Restarts
    services.keycloak.UNITS: the install (a no-op when installed), the database step, Keycloak,
    the realm's apply, and the backup timer."""
    from nina import render  # the payload schema is the installer's, defined once there
    from nina.services import keycloak as service

    spec = database_spec(facts.SERVICE_USERS["keycloak"])
    user, group = facts.SERVICE_USERS["keycloak"], facts.SYSTEM_GROUP
    unit_dir = facts.SYSTEMD_SYSTEM_DIR
    files = [
        render.DeliveredFile(facts.KEYCLOAK_CONF, keycloak_conf(cfg, db_host, spec), 0o644),
        render.DeliveredFile(facts.KEYCLOAK_ENV, keycloak_env(secrets.db_password, secrets.bootstrap_admin_password), 0o600),
        render.DeliveredFile(facts.KEYCLOAK_REALM_FILE, realm_json(cfg, tenancies, secrets.client_secrets), 0o600),
        render.DeliveredFile(facts.KEYCLOAK_DB_SQL, database_sql(spec), 0o644),
        render.DeliveredFile(facts.KEYCLOAK_DB_ENV, database_env(db_host, spec, secrets.db_password), 0o600),
        render.DeliveredFile(
            f"{facts.KEYCLOAK_CERTS}/{facts.SERVER_CERT_FILE}",
            render._text(secrets.cert_pem, "server certificate", "BEGIN CERTIFICATE"),
            0o644,
            user,
            group,
        ),
        render.DeliveredFile(
            f"{facts.KEYCLOAK_CERTS}/{facts.SERVER_KEY_FILE}",
            render._text(secrets.key_pem, "server key", "PRIVATE KEY"),
            0o600,
            user,
            group,
        ),
        render.DeliveredFile(facts.KEYCLOAK_INSTALL_BIN, render.launcher("keycloak_install"), 0o755),
        render.DeliveredFile(facts.KEYCLOAK_REALM_BIN, render.launcher("keycloak_realm"), 0o755),
        render.DeliveredFile(f"{unit_dir}/{facts.KEYCLOAK_INSTALL_UNIT}", install_unit(cfg), 0o644),
        render.DeliveredFile(f"{unit_dir}/{facts.KEYCLOAK_DB_UNIT}", database_unit(spec), 0o644),
        render.DeliveredFile(f"{unit_dir}/{facts.KEYCLOAK_UNIT}", keycloak_unit(cfg), 0o644),
        render.DeliveredFile(f"{unit_dir}/{facts.KEYCLOAK_REALM_UNIT}", realm_unit(cfg), 0o644),
        *render.db_backup_files(spec.database, cfg.database.backup_keep),
    ]
    return render.delivery_payload(files, list(service.UNITS))
