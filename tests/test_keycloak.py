"""Keycloak as code (nina.keycloak): the database step against a real PostgreSQL started here,
the realm against Keycloak's representation, the server's files with systemd-analyze.

The PostgreSQL tests start the machine's PostgreSQL 15+ (`initdb`, `pg_ctl`) in a temporary
directory, on a unix socket there and on 127.0.0.1 with a free port (password logins), as an
unprivileged user when run as root; they skip, saying why, where it is not installed
(`scripts/bootstrap --test-tools` installs it). Keycloak itself is not installed here: what the
realm tests cannot check is said in `test_realm_is_a_realm_representation`.
"""

from __future__ import annotations

import copy
import glob
import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from systemd import needs_systemd_analyze, verify

from nina import config, facts, keycloak, render, services
from nina.plan import build_plan


def _pg_bindir() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return str(Path(found[-1]).parent) if found and int(Path(found[-1]).parts[-3]) >= 15 else None


PG_BIN = _pg_bindir()
needs_postgres = pytest.mark.skipif(
    PG_BIN is None or not shutil.which("psql"),
    reason="PostgreSQL 15+ (initdb, pg_ctl, psql) not installed (scripts/bootstrap --test-tools installs it)",
)
ADMIN = "postgres"
# A password with everything that breaks naive quoting: quotes, a backslash, a psql colon, a dollar.
HOSTILE_PASSWORD = "pa'ss\"wo\\rd:'x' $$; DROP ROLE postgres; --"
KEYCLOAK = keycloak.database_spec("keycloak")
GRAFANA = keycloak.database_spec("grafana")


@dataclass
class Postgres:
    socket_dir: str
    port: int

    def psql(
        self, *args: str, user: str = ADMIN, db: str = "postgres", password: str | None = None, tcp: bool = False, env: dict | None = None
    ) -> subprocess.CompletedProcess[str]:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        environ.update(env or {})
        if password is not None:
            environ["PGPASSWORD"] = password
        host = facts.LOOPBACK if tcp else self.socket_dir
        argv = ["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", host, "-p", str(self.port), "-U", user, "-d", db, *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=environ)

    def run_step(
        self, spec: keycloak.DatabaseSpec, sql_dir: Path, role_password: str, sql: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """The database step as its unit runs it: psql -f the rendered file as the role itself,
        in its database, over TCP with its password (database_env's PG*)."""
        path = sql_dir / f"{spec.database}.sql"
        path.write_text(keycloak.database_sql(spec) if sql is None else sql)
        return self.psql("-f", str(path), user=spec.role, db=spec.database, password=role_password, tcp=True)

    def trove_prepare(self, spec: keycloak.DatabaseSpec, role_password: str) -> None:
        """What Trove's PostgreSQL guest agent runs as its superuser for pulumi-openstack's
        database.Instance `databases` and `users`: the database from template0, the user with its
        password, ALL on the database to it (the password passed as a psql variable, quoted by %L)."""
        sql = (
            f"CREATE DATABASE \"{spec.database}\" WITH ENCODING = 'UTF8' LC_COLLATE = 'C.UTF-8' LC_CTYPE = 'C.UTF-8' TEMPLATE template0;\n"
            "SELECT format('CREATE USER %I WITH PASSWORD %L', :'role', :'password') \\gexec\n"
            f'GRANT ALL PRIVILEGES ON DATABASE "{spec.database}" TO "{spec.role}";\n'
        )
        environ = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        argv = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", self.socket_dir, "-p", str(self.port), "-U", ADMIN, "-d", "postgres",
                "-v", f"role={spec.role}", "-v", f"password={role_password}"]  # fmt: skip
        proc = subprocess.run(argv, input=sql, capture_output=True, text=True, timeout=60, env=environ)
        assert proc.returncode == 0, proc.stderr

    def catalog(self) -> str:
        """Everything the step could change: roles (with their password verifiers and settings),
        every database's attributes and ACL, and each database's schema (objects, owners, ACLs)."""
        environ = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        common = ["-h", self.socket_dir, "-p", str(self.port), "-U", ADMIN]
        out = [
            subprocess.run(
                [f"{PG_BIN}/pg_dumpall", *common, "--globals-only"], capture_output=True, text=True, check=True, env=environ
            ).stdout
        ]
        q = self.psql(
            "-c",
            "SELECT datname, pg_get_userbyid(datdba), pg_encoding_to_char(encoding), datcollate, datctype, datacl FROM pg_database ORDER BY 1",
        )
        out.append(q.stdout)
        out.append(self.psql("-c", "SELECT setdatabase, setrole, setconfig FROM pg_db_role_setting ORDER BY 1, 2").stdout)
        for db in sorted(self.psql("-c", "SELECT datname FROM pg_database WHERE NOT datistemplate").stdout.split()):
            out.append(
                subprocess.run(
                    [f"{PG_BIN}/pg_dump", *common, "--schema-only", "--create", "-d", db],
                    capture_output=True,
                    text=True,
                    check=True,
                    env=environ,
                ).stdout
            )
            out.append(self.psql("-c", "SELECT nspname, pg_get_userbyid(nspowner), nspacl FROM pg_namespace ORDER BY 1", db=db).stdout)
        # pg_dump 15.14+ fences its output with \restrict <random key> ... \unrestrict <key>.
        return "\n".join(line for line in "\n".join(out).splitlines() if not line.startswith(("\\restrict ", "\\unrestrict ")))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((facts.LOOPBACK, 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def pg() -> Iterator[Postgres]:
    if PG_BIN is None or not shutil.which("psql"):
        pytest.skip("PostgreSQL 15+ (initdb, pg_ctl, psql) not installed (scripts/bootstrap --test-tools installs it)")
    top = tempfile.mkdtemp(prefix="nina-pg-")
    # PostgreSQL refuses to run as root: as root, the server's files are nobody's and it runs as nobody.
    as_user: list[str] = []
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        os.chmod(top, 0o700)
        os.chown(top, nobody.pw_uid, nobody.pw_gid)
        as_user = ["runuser", "-u", "nobody", "--"]
    data, sock, log = f"{top}/data", f"{top}/sock", f"{top}/log"
    pwfile = f"{top}/pw"

    def run(*argv: str) -> None:
        proc = subprocess.run([*as_user, *argv], capture_output=True, text=True, timeout=120, cwd=top)
        if proc.returncode:
            raise AssertionError(f"{argv[0]} failed: {proc.stdout}{proc.stderr}")

    run("mkdir", "-m", "0700", sock)
    run("sh", "-c", f"umask 077; echo admin-password > {pwfile}")
    run(
        f"{PG_BIN}/initdb", "-D", data, "-U", ADMIN, f"--pwfile={pwfile}", "--auth-local=trust", "--auth-host=scram-sha-256",
        "-E", "UTF8", "--locale=C.UTF-8",
    )  # fmt: skip
    port = _free_port()
    opts = f"-k {sock} -p {port} -c listen_addresses={facts.LOOPBACK} -c fsync=off"
    run(f"{PG_BIN}/pg_ctl", "-D", data, "-l", log, "-o", opts, "-w", "-t", "60", "start")
    try:
        yield Postgres(sock, port)
    finally:
        subprocess.run([*as_user, f"{PG_BIN}/pg_ctl", "-D", data, "-m", "immediate", "-w", "stop"], capture_output=True, cwd=top)
        shutil.rmtree(top, ignore_errors=True)


GRAFANA_PASSWORD = "grafana-password-0123456789"


@pytest.fixture(scope="module")
def keycloak_db(pg: Postgres, tmp_path_factory) -> tuple[Postgres, str, str]:
    """Both services' databases and roles made as Trove makes them (keycloak's with the hostile
    password), then keycloak's step run once as its role; (pg, catalog before, catalog after)."""
    pg.trove_prepare(KEYCLOAK, HOSTILE_PASSWORD)
    pg.trove_prepare(GRAFANA, GRAFANA_PASSWORD)
    sql_dir = tmp_path_factory.mktemp("sql")
    before = pg.catalog()
    first = pg.run_step(KEYCLOAK, sql_dir, HOSTILE_PASSWORD)
    assert first.returncode == 0, first.stderr
    return pg, before, pg.catalog()


def _role_mode_problems(pg: Postgres, spec: keycloak.DatabaseSpec, password: str) -> list[str]:
    """What the step must have left: the schema the role's, PUBLIC without rights on it, the
    role's search_path in its database the schema, and an unqualified table landing there."""
    problems = []
    owner = pg.psql("-c", f"SELECT pg_get_userbyid(nspowner), nspacl FROM pg_namespace WHERE nspname = '{spec.schema}'", db=spec.database)
    if owner.stdout.strip() not in (f"{spec.role}|", f"{spec.role}|{{{spec.role}=UC/{spec.role}}}"):
        problems.append(f"schema owner/acl: {owner.stdout.strip()!r}")
    path = pg.psql("-c", "SHOW search_path", user=spec.role, db=spec.database, password=password, tcp=True)
    if path.stdout.strip() != spec.schema:
        problems.append(f"search_path: {path.stdout.strip()!r} {path.stderr.strip()}")
    return problems


# --- the database step (role mode) -----------------------------------------------------------


@needs_postgres
def test_database_step_makes_the_roles_schema(keycloak_db):
    pg, before, after = keycloak_db
    assert before != after
    assert _role_mode_problems(pg, KEYCLOAK, HOSTILE_PASSWORD) == []
    # The role stays what Trove made: a login and nothing more.
    role = pg.psql("-c", "SELECT rolcanlogin, rolsuper, rolcreatedb, rolcreaterole FROM pg_roles WHERE rolname = 'keycloak'")
    assert role.stdout.strip() == "t|f|f|f"
    owner = pg.psql("-c", "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'keycloakdb_server'")
    assert owner.stdout.strip() == ADMIN


@needs_postgres
def test_database_step_run_again_changes_nothing(keycloak_db, tmp_path):
    pg, _, after = keycloak_db
    for _ in range(2):
        again = pg.run_step(KEYCLOAK, tmp_path, HOSTILE_PASSWORD)
        assert again.returncode == 0, again.stderr
        assert pg.catalog() == after


@needs_postgres
def test_role_creates_tables_in_its_schema_and_nowhere_else(keycloak_db, tmp_path):
    pg, _, _ = keycloak_db
    grafana = pg.run_step(GRAFANA, tmp_path, GRAFANA_PASSWORD)  # the other service's schema exists too
    assert grafana.returncode == 0, grafana.stderr

    def as_keycloak(sql: str, db: str = KEYCLOAK.database) -> subprocess.CompletedProcess[str]:
        return pg.psql("-c", sql, user="keycloak", db=db, password=HOSTILE_PASSWORD, tcp=True)

    made = as_keycloak("CREATE TABLE realm_probe (id int); SELECT schemaname FROM pg_tables WHERE tablename = 'realm_probe'")
    assert made.returncode == 0, made.stderr
    assert made.stdout.strip() == "keycloak"  # unqualified: its search_path is its schema
    assert as_keycloak("CREATE TABLE keycloak.qualified_probe (id int); DROP TABLE keycloak.qualified_probe, realm_probe").returncode == 0
    for sql, db in (
        ("CREATE TABLE public.probe (id int)", KEYCLOAK.database),
        ("CREATE TABLE public.probe (id int)", GRAFANA.database),
        ("CREATE TABLE grafana.probe (id int)", GRAFANA.database),
        ("CREATE SCHEMA probe", GRAFANA.database),
        ("CREATE TABLE public.probe (id int)", "postgres"),
        ("CREATE DATABASE probe", "postgres"),
    ):
        refused = as_keycloak(sql, db)
        assert refused.returncode != 0, f"{sql} in {db} was allowed"
        assert "permission denied" in refused.stderr, refused.stderr
    # ... and the other way round.
    refused = pg.psql(
        "-c", "CREATE TABLE keycloak.probe (id int)", user="grafana", db=KEYCLOAK.database, password=GRAFANA_PASSWORD, tcp=True
    )
    assert refused.returncode != 0 and "permission denied" in refused.stderr, refused.stderr


@needs_postgres
def test_the_same_step_serves_grafana(keycloak_db, tmp_path):
    pg, _, _ = keycloak_db
    assert pg.run_step(GRAFANA, tmp_path, GRAFANA_PASSWORD).returncode == 0
    state = pg.catalog()
    assert pg.run_step(GRAFANA, tmp_path, GRAFANA_PASSWORD).returncode == 0
    assert pg.catalog() == state
    assert _role_mode_problems(pg, GRAFANA, GRAFANA_PASSWORD) == []


@needs_postgres
def test_step_refuses_the_wrong_role_database_or_schema_in_one_line(keycloak_db, tmp_path):
    pg, _, _ = keycloak_db
    state = pg.catalog()
    sql = keycloak.database_sql(KEYCLOAK)
    # keycloak's script run as grafana (in grafana's database), and in the wrong database.
    wrong_user = pg.run_step(GRAFANA, tmp_path, GRAFANA_PASSWORD, sql=sql)
    assert wrong_user.returncode != 0 and "run this as role keycloak" in wrong_user.stderr, wrong_user.stderr
    path = tmp_path / "step.sql"
    path.write_text(sql)
    wrong_db = pg.psql("-f", str(path), user="keycloak", db="postgres", password=HOSTILE_PASSWORD, tcp=True)
    assert wrong_db.returncode != 0 and "run this in database keycloakdb_server" in wrong_db.stderr, wrong_db.stderr
    assert pg.catalog() == state
    # A schema of that name that another role owns is refused, not taken over.
    spec = keycloak.DatabaseSpec(database="squat_db", role="squat", schema="squat")
    pg.trove_prepare(spec, "squat-password-0123456789")
    assert pg.psql("-c", "CREATE SCHEMA squat", db="squat_db").returncode == 0
    refused = pg.run_step(spec, tmp_path, "squat-password-0123456789")
    assert refused.returncode != 0 and "exists and is not owned by squat" in refused.stderr, refused.stderr


@needs_postgres
def test_these_checks_catch_a_broken_step(pg, tmp_path):
    """The checks above can fail: a step without its search_path leaves a problem, and one that
    creates the schema unguarded fails its second run."""
    spec = keycloak.DatabaseSpec(database="broken_db", role="broken", schema="broken")
    pg.trove_prepare(spec, "broken-password-0123456789")
    sql = keycloak.database_sql(spec)
    no_path = sql[: sql.index("-- Its own search_path")]
    assert pg.run_step(spec, tmp_path, "broken-password-0123456789", sql=no_path).returncode == 0
    assert any("search_path" in p for p in _role_mode_problems(pg, spec, "broken-password-0123456789"))
    unguarded = "\\set ON_ERROR_STOP on\nCREATE SCHEMA broken AUTHORIZATION broken;\n"
    pg.psql("-c", "DROP SCHEMA broken", db="broken_db")
    assert pg.run_step(spec, tmp_path, "broken-password-0123456789", sql=unguarded).returncode == 0
    assert pg.run_step(spec, tmp_path, "broken-password-0123456789", sql=unguarded).returncode != 0


def test_the_sql_is_constant_text_with_checked_names():
    sql = keycloak.database_sql(KEYCLOAK)
    assert sql == keycloak.database_sql(keycloak.database_spec("keycloak"))
    assert "\\set database keycloakdb_server\n\\set role keycloak\n\\set schema keycloak\n" in sql
    # Role mode: nothing that needs more than the role's own rights, no password in it.
    for word in ("CREATE ROLE", "CREATE DATABASE", "CREATE USER", "GRANT", "DROP", "password", "PASSWORD"):
        assert word not in sql.split("-- Where we are")[1], word


@pytest.mark.parametrize(
    "field, name",
    [
        ("database", "keycloakdb_server; DROP DATABASE postgres"),
        ("role", "Keycloak"),
        ("role", 'kc"x'),
        ("role", "kc\nx"),
        ("schema", "pg_keycloak"),
        ("schema", "public"),
        ("role", "postgres"),
        ("database", "template1"),
        ("role", "x" * 64),
        ("role", ""),
        ("schema", "1abc"),
        ("database", ":'password'"),
    ],
)
def test_hostile_names_are_refused(field, name):
    fields = {"database": "db", "role": "r", "schema": "s", field: name}
    with pytest.raises(ValueError, match=f"{field} name"):
        keycloak.DatabaseSpec(**fields)


def test_every_database_has_a_schema_and_role():
    assert set(facts.DATABASE_SCHEMAS) == set(facts.DATABASES)
    for role in facts.DATABASES.values():
        keycloak.database_spec(role)  # valid names
    with pytest.raises(ValueError, match="no database"):
        keycloak.database_spec("jupyterhub")


def test_env_files_refuse_what_would_need_quoting():
    assert keycloak.database_env("10.100.0.5", KEYCLOAK, "b" * 32) == (
        f"PGHOST=10.100.0.5\nPGPORT=5432\nPGUSER=keycloak\nPGDATABASE=keycloakdb_server\nPGPASSWORD={'b' * 32}\n"
    )
    for bad in ("short", "a b" * 10, 'quote"d' * 4, "line\nbreak" * 3, "dollar$" * 4):
        with pytest.raises(ValueError, match="EnvironmentFile"):
            keycloak.keycloak_env(bad, "x" * 32)
        with pytest.raises(ValueError, match="EnvironmentFile"):
            keycloak.database_env("10.100.0.5", KEYCLOAK, bad)
    with pytest.raises(ValueError, match="host"):
        keycloak.database_env("10.100.0.5\nPGUSER=evil", KEYCLOAK, "x" * 32)


# --- the realm -----------------------------------------------------------------------------

ACCESS = {"public_domain": "fl.example.edu.au", "acme_email": "fl-ops@example.edu.au"}
SECRETS = {"jupyterhub": "j" * 40, "grafana": "g" * 40}
SHA256 = "ab" * 32


@pytest.fixture
def multi_cfg():
    from conftest import render_raw_configs

    raw = copy.deepcopy(render_raw_configs()["multi-tenancy"])
    raw["researcher_access"] = ACCESS
    raw["keycloak"] = {"sha256": SHA256}
    raw["hosts"] = [{"name": "gateway", "roles": ["bastion", "proxy"]}, {"name": "access", "roles": ["keycloak", "jupyterhub"]}]
    return config.load_config(raw)


def _tenancies(cfg: config.StackConfig) -> list[str]:
    return [t.name for t in build_plan(cfg).tenancies]


def test_realm_roles_groups_and_clients(multi_cfg):
    r = keycloak.realm(multi_cfg, _tenancies(multi_cfg), SECRETS)
    assert r["realm"] == facts.KEYCLOAK_REALM and r["enabled"] is True
    assert [role["name"] for role in r["roles"]["realm"]] == ["jupyter_admin", "jupyter_user", "superlink_user"]
    groups = {g["name"]: g for g in r["groups"]}
    assert sorted(groups) == ["jupyter-admins", "tenancy-alpha", "tenancy-beta"]
    assert groups["tenancy-alpha"]["realmRoles"] == ["jupyter_user", "superlink_user"]
    assert groups["tenancy-beta"]["attributes"] == {"nina_tenancy": ["beta"]}
    assert groups["jupyter-admins"]["realmRoles"] == sorted(facts.KEYCLOAK_ROLES)
    clients = {c["clientId"]: c for c in r["clients"]}
    assert clients["jupyterhub"]["redirectUris"] == ["https://hub.fl.example.edu.au/hub/oauth_callback"]
    assert clients["grafana"]["redirectUris"] == ["https://grafana.fl.example.edu.au/login/generic_oauth"]
    assert clients["jupyterhub"]["secret"] == SECRETS["jupyterhub"] and clients["jupyterhub"]["publicClient"] is False
    groups_mapper = next(m for m in clients["jupyterhub"]["protocolMappers"] if m["protocolMapper"] == "oidc-group-membership-mapper")
    assert groups_mapper["config"]["claim.name"] == "groups"
    assert groups_mapper["config"]["id.token.claim"] == groups_mapper["config"]["access.token.claim"] == "true"
    # Only the clients whose secrets are given (Grafana's comes with the monitoring issue).
    only_hub = keycloak.realm(multi_cfg, _tenancies(multi_cfg), {"jupyterhub": SECRETS["jupyterhub"]})
    assert [c["clientId"] for c in only_hub["clients"]] == ["jupyterhub"]


def test_realm_json_is_deterministic_and_follows_the_config(multi_cfg):
    tenancies = _tenancies(multi_cfg)
    text = keycloak.realm_json(multi_cfg, tenancies, SECRETS)
    assert text == keycloak.realm_json(multi_cfg, tenancies, dict(reversed(SECRETS.items())))
    assert json.loads(text) == keycloak.realm(multi_cfg, tenancies, SECRETS)
    renamed = multi_cfg.model_copy(update={"keycloak": config.KeycloakConfig(realm="research")})
    assert json.loads(keycloak.realm_json(renamed, tenancies, SECRETS))["realm"] == "research"
    moved = multi_cfg.model_copy(
        update={"researcher_access": config.ResearcherAccess(public_domain="fl.other.org", acme_email=ACCESS["acme_email"])}
    )
    assert "https://hub.fl.other.org/hub/oauth_callback" in keycloak.realm_json(moved, tenancies, SECRETS)


def test_realm_refuses_what_it_cannot_build(multi_cfg):
    tenancies = _tenancies(multi_cfg)
    with pytest.raises(ValueError, match="unknown OIDC clients"):
        keycloak.realm(multi_cfg, tenancies, {"superlink": "s" * 40})
    with pytest.raises(ValueError, match="at least 32"):
        keycloak.realm(multi_cfg, tenancies, {"jupyterhub": "short"})
    with pytest.raises(ValueError, match="duplicate"):
        keycloak.realm(multi_cfg, ["alpha", "alpha"], SECRETS)
    with pytest.raises(ValueError, match="not a slug"):
        keycloak.realm(multi_cfg, ["Alpha Team"], SECRETS)
    with pytest.raises(ValueError, match="researcher_access"):
        keycloak.realm(multi_cfg.model_copy(update={"researcher_access": None}), tenancies, SECRETS)


# Field -> type of Keycloak's representations (org.keycloak.representations.idm, 26.x) that the
# realm uses: RealmRepresentation, RolesRepresentation, RoleRepresentation, GroupRepresentation,
# ClientRepresentation, ProtocolMapperRepresentation. Keycloak's JSON reader fails on unknown
# fields of these (Jackson's FAIL_ON_UNKNOWN_PROPERTIES is on for imports), so a misspelt key
# would break the import there; here it breaks this test.
_REPRESENTATIONS: dict[str, dict[str, type | tuple[type, str]]] = {
    "realm": {
        "realm": str, "displayName": str, "enabled": bool, "sslRequired": str, "registrationAllowed": bool,
        "loginWithEmailAllowed": bool, "duplicateEmailsAllowed": bool, "resetPasswordAllowed": bool,
        "editUsernameAllowed": bool, "bruteForceProtected": bool, "roles": (dict, "roles"),
        "groups": (list, "group"), "clients": (list, "client"),
    },
    "roles": {"realm": (list, "role")},
    "role": {"name": str, "description": str, "composite": bool},
    "group": {"name": str, "path": str, "realmRoles": list, "attributes": dict, "subGroups": (list, "group")},
    "client": {
        "clientId": str, "name": str, "enabled": bool, "protocol": str, "publicClient": bool, "clientAuthenticatorType": str,
        "secret": str, "standardFlowEnabled": bool, "implicitFlowEnabled": bool, "directAccessGrantsEnabled": bool,
        "serviceAccountsEnabled": bool, "frontchannelLogout": bool, "fullScopeAllowed": bool, "rootUrl": str, "baseUrl": str,
        "redirectUris": list, "webOrigins": list, "attributes": dict, "protocolMappers": (list, "mapper"),
    },
    "mapper": {"name": str, "protocol": str, "protocolMapper": str, "consentRequired": bool, "config": dict},
}  # fmt: skip
# Protocol mapper ids Keycloak 26 ships (OIDC), and the config keys each reads.
_MAPPERS = {
    "oidc-group-membership-mapper": {"claim.name", "full.path", "id.token.claim", "access.token.claim", "userinfo.token.claim", "introspection.token.claim"},
    "oidc-usermodel-realm-role-mapper": {
        "claim.name", "multivalued", "jsonType.label", "id.token.claim", "access.token.claim", "userinfo.token.claim", "introspection.token.claim",
    },
}  # fmt: skip


def _check(value: object, kind: str, where: str) -> list[str]:
    problems: list[str] = []
    if not isinstance(value, dict):
        return [f"{where}: not an object"]
    fields = _REPRESENTATIONS[kind]
    for key, item in value.items():
        if key not in fields:
            problems.append(f"{where}.{key}: not a field of the {kind} representation")
            continue
        spec = fields[key]
        typ, inner = spec if isinstance(spec, tuple) else (spec, None)
        if not isinstance(item, typ):
            problems.append(f"{where}.{key}: {type(item).__name__}, not {typ.__name__}")
        elif inner and isinstance(item, list):
            problems += [p for i, sub in enumerate(item) for p in _check(sub, inner, f"{where}.{key}[{i}]")]
        elif inner:
            problems += _check(item, inner, f"{where}.{key}")
        elif isinstance(item, dict):  # Map<String, String>, or Map<String, List<String>> (group attributes)
            for k, v in item.items():
                if not isinstance(k, str) or not (isinstance(v, str) or (isinstance(v, list) and all(isinstance(s, str) for s in v))):
                    problems.append(f"{where}.{key}.{k}: not a string or list of strings")
        elif isinstance(item, list) and not all(isinstance(s, str) for s in item):
            problems.append(f"{where}.{key}: not a list of strings")
    return problems


def test_realm_is_a_realm_representation(multi_cfg):
    """A structural check against Keycloak's representation classes: every key a field, every
    value of its type, mappers of ids Keycloak ships with config keys they read, role names the
    groups use defined, redirect URIs absolute https. Not checkable without a running Keycloak:
    that the import succeeds, that the tokens then carry `groups` and `roles`, and how a second
    import treats the existing realm (partialImport's OVERWRITE keeps users; `kc.sh import
    --override true` replaces the realm, users included)."""
    r = json.loads(keycloak.realm_json(multi_cfg, _tenancies(multi_cfg), SECRETS))
    assert _check(r, "realm", "realm") == []
    defined = {role["name"] for role in r["roles"]["realm"]}
    for group in r["groups"]:
        assert set(group["realmRoles"]) <= defined
        assert group["path"] == "/" + group["name"]
    for client in r["clients"]:
        assert client["protocol"] == "openid-connect"
        assert all(u.startswith("https://") and "*" not in u for u in client["redirectUris"])
        for mapper in client["protocolMappers"]:
            assert set(mapper["config"]) <= _MAPPERS[mapper["protocolMapper"]], mapper
    # The check itself catches what it is there for.
    broken = copy.deepcopy(r)
    broken["clients"][0]["redirectUri"] = broken["clients"][0].pop("redirectUris")
    broken["groups"][0]["realmRoles"] = "jupyter_user"
    assert len(_check(broken, "realm", "realm")) == 2


# --- the server's files ----------------------------------------------------------------------


def _all_in_one() -> config.StackConfig:
    from conftest import render_raw_configs

    raw = copy.deepcopy(render_raw_configs()["all-in-one"])
    raw["researcher_access"] = ACCESS
    raw["keycloak"] = {"version": "26.3.1", "sha256": SHA256}
    return config.load_config(raw)


def test_keycloak_conf():
    cfg = _all_in_one()
    conf = keycloak.keycloak_conf(cfg, "10.100.0.5")
    options = dict(line.split("=", 1) for line in conf.splitlines() if line and not line.startswith("#"))
    assert options == {
        "db": "postgres",
        "db-url": "jdbc:postgresql://10.100.0.5:5432/keycloakdb_server",
        "db-username": "keycloak",
        "db-schema": "keycloak",
        "hostname": "https://auth.fl.example.edu.au",
        "hostname-admin": f"https://localhost:{facts.KEYCLOAK_PORT}",  # through an operator's SSH tunnel
        "proxy-headers": "xforwarded",
        "http-enabled": "false",
        "https-port": str(facts.KEYCLOAK_PORT),
        "https-certificate-file": f"{facts.KEYCLOAK_CERTS}/{facts.SERVER_CERT_FILE}",
        "https-certificate-key-file": f"{facts.KEYCLOAK_CERTS}/{facts.SERVER_KEY_FILE}",
        "health-enabled": "true",
        "http-management-port": str(facts.KEYCLOAK_MANAGEMENT_PORT),
    }
    assert not any("password" in key for key in options)  # it is KC_DB_PASSWORD in keycloak.env
    with pytest.raises(ValueError, match="host"):
        keycloak.keycloak_conf(cfg, "10.100.0.5/db?x=1")


def test_no_secret_outside_the_secret_files():
    cfg = _all_in_one()
    env = keycloak.keycloak_env("d" * 32, "a" * 32)
    assert (
        env
        == f"KC_DB_PASSWORD={'d' * 32}\nKC_BOOTSTRAP_ADMIN_USERNAME={facts.KEYCLOAK_BOOTSTRAP_ADMIN}\nKC_BOOTSTRAP_ADMIN_PASSWORD={'a' * 32}\n"
    )
    public = [
        keycloak.keycloak_conf(cfg, "10.100.0.5"),
        keycloak.keycloak_unit(cfg),
        keycloak.database_unit(KEYCLOAK),
        keycloak.database_sql(KEYCLOAK),
    ]
    assert not any("d" * 32 in text or "a" * 32 in text for text in public)


@needs_systemd_analyze
def test_units_pass_systemd_analyze_verify(tmp_path):
    cfg = _all_in_one()
    home = keycloak.keycloak_home(cfg)
    assert home == f"{facts.KEYCLOAK_OPT}/keycloak-26.3.1"
    units = tmp_path / "units"
    units.mkdir()
    # Stand-ins for the programs the units run (kc.sh is not installed here; the launchers are
    # delivered; psql may not be), at paths systemd-analyze can check exist and are executable.
    stand_ins = {
        f"{home}/bin/kc.sh": "kc.sh",
        facts.PSQL: "psql",
        facts.KEYCLOAK_INSTALL_BIN: "install",
        facts.KEYCLOAK_REALM_BIN: "realm",
    }
    for name in stand_ins.values():
        (tmp_path / name).write_text("#!/bin/sh\nexit 0\n")
        (tmp_path / name).chmod(0o755)
    (tmp_path / "data").mkdir()
    rendered = {
        facts.KEYCLOAK_UNIT: keycloak.keycloak_unit(cfg),
        facts.KEYCLOAK_DB_UNIT: keycloak.database_unit(KEYCLOAK),
        facts.KEYCLOAK_INSTALL_UNIT: keycloak.install_unit(cfg),
        facts.KEYCLOAK_REALM_UNIT: keycloak.realm_unit(cfg),
    }
    unit = rendered[facts.KEYCLOAK_UNIT]
    assert f"ExecStart={home}/bin/kc.sh --config-file={facts.KEYCLOAK_CONF} start --optimized\n" in unit
    assert (
        f"Requires={facts.KEYCLOAK_INSTALL_UNIT} {facts.KEYCLOAK_DB_UNIT}\n" in unit and f"User={facts.SERVICE_USERS['keycloak']}\n" in unit
    )
    assert f"ReadWritePaths={home}/data\n" in unit and "ProtectSystem=strict\n" in unit
    install = rendered[facts.KEYCLOAK_INSTALL_UNIT]
    assert (
        f"ExecStart={facts.KEYCLOAK_INSTALL_BIN} --version 26.3.1 --sha256 {SHA256} --jdk {facts.KEYCLOAK_JDK_PACKAGE} --config {facts.KEYCLOAK_CONF}\n"
        in install
    )
    assert f"Before={facts.KEYCLOAK_UNIT}\n" in install and "Type=oneshot\n" in install
    realm = rendered[facts.KEYCLOAK_REALM_UNIT]
    assert f"After={facts.KEYCLOAK_UNIT}\nRequires={facts.KEYCLOAK_UNIT}\n" in realm and f"EnvironmentFile={facts.KEYCLOAK_ENV}\n" in realm
    db_unit = rendered[facts.KEYCLOAK_DB_UNIT]
    assert f"-d keycloakdb_server -f {facts.KEYCLOAK_DB_SQL}" in db_unit and f"EnvironmentFile={facts.KEYCLOAK_DB_ENV}" in db_unit
    for name, text in rendered.items():
        for path, stand_in in stand_ins.items():
            text = text.replace(path, str(tmp_path / stand_in))
        (units / name).write_text(text.replace(f"{home}/data", str(tmp_path / "data")))
    assert verify(units, list(rendered), "keycloak") == []
    # ... and it does report a broken unit.
    (units / facts.KEYCLOAK_REALM_UNIT).write_text(
        (units / facts.KEYCLOAK_REALM_UNIT).read_text().replace("Type=oneshot", "Type=sometimes")
    )
    assert any("sometimes" in line for line in verify(units, [facts.KEYCLOAK_REALM_UNIT]))


def test_install_unit_needs_the_digest():
    cfg = _all_in_one()
    unset = cfg.model_copy(update={"keycloak": cfg.keycloak.model_copy(update={"sha256": None})})
    with pytest.raises(ValueError, match=r"nina:keycloak.sha256 is not set; compute it with `curl -fsSL https://github.com/keycloak"):
        keycloak.install_unit(unset)


def test_certificate_names_the_host_its_domain_its_ip_and_loopback():
    plan = build_plan(_all_in_one())
    cert = keycloak.certificate(plan)
    host = next(h for h in plan.hosts if "keycloak" in h.roles)
    assert cert.common_name == host.name == "gateway" and cert.server is True
    assert cert.dns_names == ("gateway", "gateway.myproject.cloud.edu.au", "localhost")
    assert cert.ip_addresses == (host.fixed_ip, facts.LOOPBACK)
    no_domain = build_plan(_all_in_one().model_copy(update={"cloud": config.CloudConfig()}))
    assert keycloak.certificate(no_domain).dns_names == ("gateway", "localhost")
    from conftest import render_raw_configs

    with pytest.raises(ValueError, match="exactly one"):
        keycloak.certificate(build_plan(config.load_config(render_raw_configs()["test"])))


CLOUD_INIT = shutil.which("cloud-init") or ""


@pytest.mark.skipif(not CLOUD_INIT, reason="cloud-init missing (scripts/bootstrap --test-tools installs it)")
def test_a_keycloak_hosts_user_data_passes_cloud_init_schema_within_budget(multi_cfg, tmp_path):
    import base64

    from cloudinit.userdata import user_data

    plan = build_plan(multi_cfg)
    host = next(h for h in plan.hosts if "keycloak" in h.roles)
    text = user_data(plan, host, {v.name: "0" * 36 for v in host.volumes})
    encoded = len(base64.b64encode(text.encode()))
    assert encoded <= facts.USER_DATA_TARGET, encoded
    assert facts.POSTGRES_CLIENT_PACKAGE in text and facts.KEYCLOAK_CERTS in text
    path = tmp_path / "access.yaml"
    path.write_text(text)
    # Without PYTHONPATH: this project's `cloudinit` package would shadow cloud-init's own.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([CLOUD_INIT, "schema", "-c", str(path)], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0 and "Valid cloud-config" in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "keycloak_cfg, key, words",
    [
        ({"version": "25.0.6"}, "nina:keycloak.version", ("26.x.y",)),
        ({"version": "latest"}, "nina:keycloak.version", ("exact release",)),
        ({"jdk_package": "openjdk-17-jre-headless"}, "nina:keycloak.jdk_package", (">= 21",)),
        ({"jdk_package": "default-jre"}, "nina:keycloak.jdk_package", ("openjdk-NN-jre-headless",)),
        ({"realm": "Researchers"}, "nina:keycloak.realm", ("DNS-safe",)),
        ({"realms": "x"}, "nina:keycloak.realms", ("unknown key",)),
        ({"sha256": "abc"}, "nina:keycloak.sha256", ("64 hex", "| sha256sum")),
        ({"sha256": "g" * 64}, "nina:keycloak.sha256", ("64 hex",)),
    ],
)
def test_keycloak_config_errors_name_the_key(cfg_valid, keycloak_cfg, key, words):
    raw = cfg_valid()
    raw["keycloak"] = keycloak_cfg
    with pytest.raises(config.ConfigError) as err:
        config.load_config(raw)
    (problem,) = err.value.problems
    assert problem[0] == key
    assert all(w in problem[1] for w in words), problem


def test_keycloak_sha256_is_required_with_a_keycloak_host_and_researcher_access(cfg_valid):
    raw = cfg_valid()
    raw["researcher_access"] = ACCESS
    raw["hosts"] = [{"name": "gateway", "roles": ["bastion", "proxy", "keycloak"]}]
    raw["keycloak"] = {"version": "26.3.1"}
    with pytest.raises(config.ConfigError) as err:
        config.load_config(raw)
    (problem,) = err.value.problems
    url = "https://github.com/keycloak/keycloak/releases/download/26.3.1/keycloak-26.3.1.zip"
    assert problem[0] == "nina:keycloak.sha256" and f"curl -fsSL {url} | sha256sum" in problem[1], problem
    raw["keycloak"]["sha256"] = "AB" * 32
    assert config.load_config(raw).keycloak.sha256 == "ab" * 32  # as sha256sum prints it
    del raw["researcher_access"], raw["keycloak"]["sha256"]
    raw["hosts"] = [{"name": "gateway", "roles": ["bastion", "keycloak"]}]
    assert config.load_config(raw).keycloak.sha256 is None  # no public services: nothing installs Keycloak


def test_keycloak_config_defaults(cfg_valid):
    kc = config.load_config(cfg_valid()).keycloak
    assert (kc.version, kc.jdk_package, kc.realm) == (facts.KEYCLOAK_VERSION, facts.KEYCLOAK_JDK_PACKAGE, facts.KEYCLOAK_REALM)


def test_delivery_payload_carries_the_files_with_their_modes():
    cfg = _all_in_one()
    secrets = keycloak.KeycloakSecrets(
        db_password="D" * 32,
        bootstrap_admin_password="B" * 32,
        client_secrets={"jupyterhub": "J" * 40},
        cert_pem="-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        key_pem="-----BEGIN EC PRIVATE KEY-----\nMIGk\n-----END EC PRIVATE KEY-----\n",
    )
    text = keycloak.keycloak_delivery(cfg, ["main"], "10.100.0.5", secrets)
    assert text == keycloak.keycloak_delivery(cfg, ["main"], "10.100.0.5", secrets)
    payload = json.loads(text)
    files = {f["path"]: f for f in payload["files"]}
    backup_timer = render.db_backup_units("keycloakdb_server")[1]
    assert payload["restart"] == [
        facts.KEYCLOAK_INSTALL_UNIT,
        facts.KEYCLOAK_DB_UNIT,
        facts.KEYCLOAK_UNIT,
        facts.KEYCLOAK_REALM_UNIT,
        backup_timer,
    ]
    assert payload["restart"] == list(services.keycloak.UNITS)
    for unit in payload["restart"]:
        assert f"{facts.SYSTEMD_SYSTEM_DIR}/{unit}" in files
    assert "PGUSER=keycloak" in files[facts.KEYCLOAK_DB_ENV]["content"]
    for secret in ("D" * 32, "B" * 32, "J" * 40, "MIGk"):
        holders = sorted(p for p, f in files.items() if secret in f["content"])
        assert holders, secret
        assert all(files[p]["mode"] == 0o600 for p in holders), (secret, holders)
    assert all(files[p]["owner"] == "root" for p in (facts.KEYCLOAK_ENV, facts.KEYCLOAK_DB_ENV, facts.KEYCLOAK_REALM_FILE))
    key = files[f"{facts.KEYCLOAK_CERTS}/{facts.SERVER_KEY_FILE}"]
    assert (key["owner"], key["group"], key["mode"]) == (facts.SERVICE_USERS["keycloak"], facts.SYSTEM_GROUP, 0o600)
    assert json.loads(files[facts.KEYCLOAK_REALM_FILE]["content"])["clients"][0]["secret"] == "J" * 40
    for program, module in ((facts.KEYCLOAK_INSTALL_BIN, "keycloak_install"), (facts.KEYCLOAK_REALM_BIN, "keycloak_realm")):
        assert (files[program]["mode"], files[program]["owner"]) == (0o755, "root")
        assert f'runpy.run_module("nina.host.{module}"' in files[program]["content"]
        assert f"nina/host/{module}.py" in render.host_programs()
    # No admin credential of the database anywhere: the step logs in as the keycloak role.
    env = dict(line.split("=", 1) for line in files[facts.KEYCLOAK_DB_ENV]["content"].splitlines())
    assert env == {
        "PGHOST": "10.100.0.5",
        "PGPORT": "5432",
        "PGUSER": "keycloak",
        "PGDATABASE": "keycloakdb_server",
        "PGPASSWORD": "D" * 32,
    }


def test_the_install_runs_root_s_build_in_a_private_tmp():
    """`kc.sh build` runs a JVM as root, which writes under java.io.tmpdir (/tmp): on a shared
    host other service users (the superlink user runs researchers' ServerApps) could have put
    their own directories or links at the names it uses there. The install unit gets its own /tmp."""
    lines = keycloak.install_unit(_all_in_one()).splitlines()
    assert "PrivateTmp=yes" in lines
