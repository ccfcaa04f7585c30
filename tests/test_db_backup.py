"""nina-db-backup (nina.host.db_backup): backups of the Trove databases and their restore, against a
real PostgreSQL started here (tests/test_keycloak.py's `pg`: initdb in a temporary directory, on a
unix socket and 127.0.0.1), its database and role made exactly as Trove makes them and the keycloak
database step run first, then tables and rows made as the keycloak role.

The program runs as the host runs it (its launcher, root), reading the role's settings from an
env file `nina.keycloak.database_env` wrote, with the test's paths in the environment
(NINA_DB_BACKUP_ROOT, NINA_DB_ENV_FILE, NINA_SYSTEMCTL: a stand-in for `systemctl is-active`),
and the machine's pg_dump, pg_restore and psql. Also: its units pass `systemd-analyze verify`, the
keycloak host's user-data with the backups' volume passes `cloud-init schema` within budget.
"""

from __future__ import annotations

import base64
import calendar
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from backuplab import BackupProgram
from promtext import one, promtool_ok
from systemd import needs_systemd_analyze, verify
from test_keycloak import ADMIN, CLOUD_INIT, PG_BIN, SHA256, Postgres, needs_postgres, pg  # noqa: F401

from nina import config, facts, keycloak, render, services
from nina.host import db_backup
from nina.plan import build_plan

KEYCLOAK = keycloak.database_spec("keycloak")
# What pulumi-random makes for the role (letters and digits): database_env takes nothing else.
PASSWORD = "Kc0rolePassw0rdFromPulumiRandom7"
NAME = "20261207T031500Z"
ROWS = 20000
figures: dict[str, float] = {}


@pytest.fixture(scope="module")
def kc(pg: Postgres, tmp_path_factory) -> Postgres:  # noqa: F811 (the fixture imported above)
    """keycloakdb_server and the keycloak role as Trove makes them, the database step run, then a
    Keycloak-like schema made as the role: tables with keys, a foreign key, a sequence, an index,
    bytea, ROWS users."""
    pg.trove_prepare(KEYCLOAK, PASSWORD)
    step = pg.run_step(KEYCLOAK, tmp_path_factory.mktemp("sql"), PASSWORD)
    assert step.returncode == 0, step.stderr
    made = as_role(
        pg,
        "CREATE TABLE realm (id varchar(36) PRIMARY KEY, name text NOT NULL UNIQUE, attrs jsonb);"
        "CREATE TABLE user_entity (id bigserial PRIMARY KEY, realm_id varchar(36) NOT NULL REFERENCES realm(id),"
        " username text NOT NULL, secret bytea, created timestamptz NOT NULL DEFAULT '2026-01-01');"
        "CREATE INDEX user_by_name ON user_entity (realm_id, username);"
        "INSERT INTO realm VALUES ('r1', 'nina-fl', '{\"ssl\": \"all\"}'), ('r2', 'master', NULL);"
        f"INSERT INTO user_entity (realm_id, username, secret) SELECT CASE WHEN i % 7 = 0 THEN 'r2' ELSE 'r1' END,"
        f" 'user-' || i, sha256(i::text::bytea) FROM generate_series(1, {ROWS}) i;",
    )
    assert made.returncode == 0, made.stderr
    return pg


def as_role(server: Postgres, sql: str) -> subprocess.CompletedProcess[str]:
    return server.psql("-c", sql, user=KEYCLOAK.role, db=KEYCLOAK.database, password=PASSWORD, tcp=True)


def snapshot(server: Postgres) -> str:
    """The keycloak schema whole, as the admin sees it: definitions, owners, ACLs and every row."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    proc = subprocess.run(
        [f"{PG_BIN}/pg_dump", "-h", server.socket_dir, "-p", str(server.port), "-U", ADMIN, "--schema", KEYCLOAK.schema, KEYCLOAK.database],
        capture_output=True,
        text=True,
        check=True,
        env=environ,
    )
    # pg_dump 15.14+ fences its output with \restrict <random key> ... \unrestrict <key>.
    return "\n".join(line for line in proc.stdout.splitlines() if not line.startswith(("\\restrict ", "\\unrestrict ")))


class Lab(BackupProgram):
    """nina-db-backup as the host runs it, with the test's env file, backup root and systemctl."""

    def __init__(self, tmp: Path, server: Postgres) -> None:
        self.root = tmp / "backups"
        self.root.mkdir(mode=0o755)
        self.dir = self.root / KEYCLOAK.database
        self.env_file = tmp / "database.env"
        self.env_file.write_text(keycloak.database_env(facts.LOOPBACK, KEYCLOAK, PASSWORD, port=server.port))
        self.env_file.chmod(0o600)
        super().__init__(
            tmp,
            "db_backup",
            "nina-db-backup",
            NINA_DB_BACKUP_ROOT=str(self.root),
            NINA_DB_ENV_FILE=str(self.env_file),
            NINA_PG_BINDIR=str(PG_BIN),
        )

    def __call__(self, *args: str, now: str = NAME, **env: str) -> subprocess.CompletedProcess[str]:
        # Every database's env file is the test's (NINA_DB_ENV_FILE): name the one under test, as
        # the units do (two databases have clients now: keycloak's and grafana's).
        db = [] if "--database" in args else ["--database", KEYCLOAK.database]
        proc = self.run(*db, *args, now=now, timeout=300, **env)
        if proc.returncode:  # every failure: one line, no traceback
            assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith("nina-db-backup: error: "), proc.stderr
        assert PASSWORD not in proc.stdout + proc.stderr
        return proc

    def names(self) -> list[str]:
        return self("list").stdout.split()


@pytest.fixture
def lab(kc: Postgres, tmp_path: Path) -> Lab:
    return Lab(tmp_path, kc)


def _damage(server: Postgres) -> None:
    """What a bad day does: rows lost and changed, a table gone, and what a newer Keycloak would add
    since the backup (a table whose foreign key points at one the backup holds, a new column)."""
    proc = as_role(
        server,
        "DELETE FROM user_entity WHERE id % 3 = 0; UPDATE realm SET attrs = '{}' WHERE id = 'r1';"
        "ALTER TABLE user_entity ADD COLUMN email text; CREATE TABLE migration_2 (realm_id varchar(36) REFERENCES realm(id));"
        "INSERT INTO migration_2 VALUES ('r1');",
    )
    assert proc.returncode == 0, proc.stderr


@needs_postgres
def test_backup_then_restore_gives_back_the_same_schema_and_rows_twice(kc, lab):
    before = snapshot(kc)
    started = time.monotonic()
    made = lab("backup", "--keep", "3")
    figures["backup_s"] = time.monotonic() - started
    assert made.returncode == 0, made.stderr
    assert f"to {lab.dir / NAME} in " in made.stdout and "schema keycloak" in made.stdout
    # The layout: root's directories 0700, the archive 0600, SHA256SUMS over it; nothing partial.
    backup = lab.dir / NAME
    assert sorted(p.name for p in backup.iterdir()) == ["SHA256SUMS", "keycloakdb_server.dump"]
    assert lab.dir.stat().st_mode & 0o777 == 0o700 and backup.stat().st_mode & 0o777 == 0o700
    dump = backup / "keycloakdb_server.dump"
    assert dump.stat().st_mode & 0o777 == 0o600 and dump.stat().st_uid == os.geteuid()
    figures["dump_bytes"] = dump.stat().st_size
    digest = subprocess.run(["sha256sum", "keycloakdb_server.dump"], cwd=backup, capture_output=True, text=True, check=True).stdout
    assert (backup / "SHA256SUMS").read_text() == digest  # sha256sum -c reads it
    assert sorted(p.name for p in lab.dir.iterdir()) == [NAME] and lab.names() == [NAME]
    # A custom-format archive of the schema alone, as the manual's pg_dump -Fc makes.
    assert dump.read_bytes()[:5] == b"PGDMP"

    _damage(kc)
    assert snapshot(kc) != before
    for attempt in (1, 2):  # the second restore, onto restored data, changes nothing
        started = time.monotonic()
        restored = lab("restore", NAME if attempt == 1 else str(backup))
        figures[f"restore_{attempt}_s"] = time.monotonic() - started
        assert restored.returncode == 0, restored.stderr
        assert f"start {facts.KEYCLOAK_UNIT} now" in restored.stdout
        assert snapshot(kc) == before, attempt
    assert f"is-active --quiet {facts.KEYCLOAK_UNIT}" in lab.calls.read_text()
    # The role still works as Keycloak needs it: unqualified names land in its schema.
    rows = as_role(kc, "SELECT count(*), count(DISTINCT secret) FROM user_entity; SHOW search_path")
    assert rows.stdout.split() == [f"{ROWS}|{ROWS}", "keycloak"], rows.stdout
    print(f"\n{ROWS} rows: backup {figures['backup_s']:.2f}s ({figures['dump_bytes']} bytes), "
          f"restore {figures['restore_1_s']:.2f}s, again {figures['restore_2_s']:.2f}s")  # fmt: skip


@needs_postgres
def test_a_restore_that_fails_half_way_changes_nothing(kc, lab):
    """One transaction: the schema is dropped, then its CREATE is refused (the role lost CREATE on
    its database): everything is rolled back, the damaged state stays as it was, and says so."""
    assert lab("backup").returncode == 0
    _damage(kc)
    damaged = snapshot(kc)
    assert kc.psql("-c", f"REVOKE CREATE ON DATABASE {KEYCLOAK.database} FROM {KEYCLOAK.role}").returncode == 0
    try:
        proc = lab("restore", NAME)
    finally:
        assert kc.psql("-c", f"GRANT ALL PRIVILEGES ON DATABASE {KEYCLOAK.database} TO {KEYCLOAK.role}").returncode == 0
    assert proc.returncode == 1 and f"restoring {NAME} into keycloakdb_server failed, the database is unchanged: " in proc.stderr
    assert "permission denied for database keycloakdb_server" in proc.stderr, proc.stderr
    assert snapshot(kc) == damaged
    assert lab("restore", NAME).returncode == 0 and snapshot(kc) != damaged


@needs_postgres
def test_restore_refuses_a_tampered_or_incomplete_backup_and_changes_nothing(kc, lab):
    assert lab("backup").returncode == 0
    as_role(kc, "INSERT INTO realm VALUES ('r9', 'after-the-backup', NULL)")
    state = snapshot(kc)
    dump = lab.dir / NAME / "keycloakdb_server.dump"
    good = dump.read_bytes()
    dump.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    proc = lab("restore", NAME)
    assert proc.returncode == 2 and "keycloakdb_server.dump does not match SHA256SUMS" in proc.stderr, proc.stderr
    dump.write_bytes(good)
    (lab.dir / NAME / "planted.sql").write_text("DROP SCHEMA keycloak CASCADE;\n")
    proc = lab("restore", NAME)
    assert proc.returncode == 2 and "expected only keycloakdb_server.dump and SHA256SUMS" in proc.stderr, proc.stderr
    (lab.dir / NAME / "planted.sql").unlink()
    (lab.dir / NAME / "SHA256SUMS").write_text("")
    assert "SHA256SUMS should hold one line" in lab("restore", NAME).stderr
    for bad in ("../keycloakdb_server", "latest", f"{NAME}/..", "/etc"):
        proc = lab("restore", bad)
        assert proc.returncode == 2 and "is not a backup name" in proc.stderr, (bad, proc.stderr)
    assert "no backup 20991231T000000Z" in lab("restore", "20991231T000000Z").stderr
    assert snapshot(kc) == state
    as_role(kc, "DELETE FROM realm WHERE id = 'r9'")


@needs_postgres
def test_restore_refuses_while_keycloak_is_active(kc, lab):
    assert lab("backup").returncode == 0
    as_role(kc, "INSERT INTO realm VALUES ('r8', 'while-running', NULL)")
    state = snapshot(kc)
    lab.active.write_text("")
    proc = lab("restore", NAME)
    assert proc.returncode == 2
    assert proc.stderr == (
        f"nina-db-backup: error: {facts.KEYCLOAK_UNIT} is active; stop it first (`sudo systemctl stop {facts.KEYCLOAK_UNIT}`),"
        " restore, then start it\n"
    )
    assert snapshot(kc) == state
    lab.active.unlink()
    assert lab("restore", NAME).returncode == 0 and "while-running" not in snapshot(kc)


@needs_postgres
def test_retention_keeps_the_newest(lab):
    names = [f"2026120{d}T031500Z" for d in range(1, 6)]
    for name in names:
        assert lab("backup", "--keep", "3", now=name).returncode == 0
    assert lab.names() == names[-3:]
    again = lab("backup", "--keep", "3", now=names[-1])  # the same second: a name of its own
    assert again.returncode == 0 and "removed the old backup 20261203T031500Z" in again.stderr
    assert lab.names() == [*names[-2:], f"{names[-1]}-1"]
    assert lab("backup", "--keep", "0").returncode == 2
    assert lab.names() == [*names[-2:], f"{names[-1]}-1"]
    # Each run's freshness metrics (nina.host.backups), named by the database: the newest backup's time.
    what = KEYCLOAK.database
    found = lab.metrics(what)
    assert one(found, "nina_backup_last_run_success", what=what) == 1
    assert one(found, "nina_backup_last_success_timestamp_seconds", what=what) == calendar.timegm(
        time.strptime(names[-1], "%Y%m%dT%H%M%SZ")
    )
    assert [p.name for p in lab.textfile.iterdir()] == [f"nina_backup_{what}.prom"]
    promtool_ok((lab.textfile / f"nina_backup_{what}.prom").read_text())


@needs_postgres
def test_failures_are_one_line_and_leave_no_partial_backup(kc, lab, tmp_path):
    # A wrong password: pg_dump's own reason, no backup, no partial directory.
    lab.env_file.write_text(lab.env_file.read_text().replace(PASSWORD, "Wrong0Password0123456789"))
    proc = lab("backup")
    assert proc.returncode == 1 and "pg_dump of keycloakdb_server as keycloak failed: " in proc.stderr, proc.stderr
    assert "password authentication failed" in proc.stderr
    assert list(lab.dir.iterdir()) == []
    found = lab.metrics(KEYCLOAK.database)  # a failed run says so; no backup, so no time of one
    assert one(found, "nina_backup_last_run_success", what=KEYCLOAK.database) == 0
    assert "nina_backup_last_success_timestamp_seconds" not in found
    lab.env_file.write_text(keycloak.database_env(facts.LOOPBACK, KEYCLOAK, PASSWORD, port=kc.port))
    # The env file: only root may read it; it must be the role's.
    lab.env_file.chmod(0o644)
    assert "must be a file only root reads (mode 0644" in lab("backup").stderr
    lab.env_file.chmod(0o600)
    lab.env_file.write_text(lab.env_file.read_text().replace("PGUSER=keycloak", "PGUSER=postgres"))
    assert "is for postgres in keycloakdb_server, not keycloak in keycloakdb_server" in lab("backup").stderr
    lab.env_file.write_text(f"PGHOST=127.0.0.1\n{PASSWORD}\n")
    proc = lab("backup")
    assert "database.env:2: expected PGNAME=value" in proc.stderr
    lab.env_file.unlink()
    assert "database.env is missing" in lab("backup").stderr
    lab.env_file.write_text(keycloak.database_env(facts.LOOPBACK, KEYCLOAK, PASSWORD, port=kc.port))
    lab.env_file.chmod(0o600)
    # The volume not mounted: never onto the root disk.
    proc = lab("backup", NINA_REQUIRE_MOUNT="1")
    assert proc.returncode == 2 and f"{lab.root} is not mounted" in proc.stderr
    assert "unknown database 'x'" in lab("--database", "x", "list").stderr
    # No client: one line naming the package.
    proc = lab("list", NINA_PG_BINDIR="/nonexistent/nina")
    assert proc.returncode == 0  # list needs none
    proc = lab("backup", NINA_PG_BINDIR="/nonexistent/nina")
    assert proc.returncode == 1 and "/nonexistent/nina/pg_dump is missing (install postgresql-client)" in proc.stderr
    assert list(lab.dir.iterdir()) == []


@needs_postgres
def test_the_password_is_never_on_a_command_line(kc, lab, tmp_path):
    """Every client nina-db-backup starts, logged by a stand-in that then runs the real one."""
    shims, log = tmp_path / "shims", tmp_path / "argv.log"
    shims.mkdir()
    for name in ("pg_dump", "pg_restore", "psql"):
        (shims / name).write_text(f'#!/bin/sh\nprintf "%s\\n" "$0 $*" >> {log}\nexec {PG_BIN}/{name} "$@"\n')
        (shims / name).chmod(0o755)
    env = {"NINA_PG_BINDIR": str(shims), "NINA_DB_CLIENT_USER": ""}
    assert lab("backup", **env).returncode == 0
    assert lab("restore", NAME, **env).returncode == 0
    argv = log.read_text()
    called = [line.split()[0].rsplit("/", 1)[1] for line in argv.splitlines()]
    # backup: the dump, its listing, a whole read; restore: listing, whole read, the script, psql.
    assert called == ["pg_dump", *["pg_restore"] * 5, "psql"], called
    assert PASSWORD not in argv and "PGPASSWORD" not in argv
    t = db_backup.target("keycloakdb_server")
    for built in (db_backup.dump_argv(t), db_backup.list_argv(), db_backup.script_argv(), db_backup.apply_argv(t)):
        assert not any("password" in a.lower() and a != "--no-password" for a in built), built


@needs_postgres
@pytest.mark.skipif(os.geteuid() != 0, reason="the clients change user only when nina-db-backup runs as root")
def test_the_clients_run_as_nobody_not_root(lab):
    import tempfile

    shims = Path(tempfile.mkdtemp(prefix="nina-shims-"))
    try:
        shims.chmod(0o755)
        log = shims / "users.log"
        log.touch(mode=0o666)
        log.chmod(0o666)
        for name in ("pg_dump", "pg_restore", "psql"):
            (shims / name).write_text(f'#!/bin/sh\necho "$(id -un) $(basename $0)" >> {log}\nexec {PG_BIN}/{name} "$@"\n')
            (shims / name).chmod(0o755)
        assert lab("backup", NINA_PG_BINDIR=str(shims)).returncode == 0
        assert lab("restore", NAME, NINA_PG_BINDIR=str(shims)).returncode == 0
        users = {line.split()[0] for line in log.read_text().splitlines()}
        assert users == {facts.DB_BACKUP_CLIENT_USER}, log.read_text()
    finally:
        shutil.rmtree(shims)


def test_the_target_comes_from_facts():
    t = db_backup.target("keycloakdb_server")
    assert (t.database, t.role, t.schema, t.unit) == (KEYCLOAK.database, KEYCLOAK.role, KEYCLOAK.schema, facts.KEYCLOAK_UNIT)
    assert t.env_file == facts.KEYCLOAK_DB_ENV or "NINA_DB_ENV_FILE" in os.environ


# --- the units, the delivery, the plan, the config ---------------------------------------------


def _cfg(**database: object) -> config.StackConfig:
    from conftest import render_raw_configs

    raw = json.loads(json.dumps(render_raw_configs()["all-in-one"]))
    raw["researcher_access"] = {"public_domain": "fl.example.edu.au", "acme_email": "fl-ops@example.edu.au"}
    raw["keycloak"] = {"sha256": SHA256}
    raw["database"] = database
    return config.load_config(raw)


def _secrets() -> keycloak.KeycloakSecrets:
    return keycloak.KeycloakSecrets(
        db_password="D" * 32,
        bootstrap_admin_password="B" * 32,
        client_secrets={"jupyterhub": "J" * 40},
        cert_pem="-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        key_pem="-----BEGIN EC PRIVATE KEY-----\nMIGk\n-----END EC PRIVATE KEY-----\n",
    )


def test_keycloak_delivery_carries_the_backup_and_enables_its_timer():
    payload = json.loads(keycloak.keycloak_delivery(_cfg(backup_keep=30), ["main"], "10.100.0.5", _secrets()))
    files = {f["path"]: f for f in payload["files"]}
    service, timer = render.db_backup_units("keycloakdb_server")
    assert (service, timer) == ("nina-db-backup-keycloakdb_server.service", "nina-db-backup-keycloakdb_server.timer")
    assert timer in payload["restart"] and payload["restart"] == list(services.keycloak.UNITS)
    assert service in services.keycloak.WATCHED and service not in payload["restart"]
    unit = files[f"{facts.SYSTEMD_SYSTEM_DIR}/{service}"]["content"]
    assert f"ExecStart={facts.HOST_PYTHON} -I {facts.DB_BACKUP_BIN} --database keycloakdb_server backup --keep 30\n" in unit
    assert (
        f"RequiresMountsFor={facts.DB_BACKUP_VOLUME}\n" in unit
        and f"ReadWritePaths={facts.DB_BACKUP_VOLUME} -{facts.NODE_EXPORTER_TEXTFILE_DIR}\n" in unit
    )
    assert f"ConditionPathExists={facts.KEYCLOAK_DB_ENV}\n" in unit and "D" * 32 not in unit
    timer_text = files[f"{facts.SYSTEMD_SYSTEM_DIR}/{timer}"]["content"]
    assert (
        "Persistent=true\n" in timer_text
        and "RandomizedDelaySec=" in timer_text
        and f"OnCalendar={facts.DB_BACKUP_SCHEDULE}\n" in timer_text
    )
    program = files[facts.DB_BACKUP_BIN]
    assert (program["mode"], program["owner"]) == (0o755, "root") and 'run_module("nina.host.db_backup"' in program["content"]
    assert "nina/host/db_backup.py" in render.host_programs()
    assert (
        keycloak.keycloak_delivery(_cfg(backup_keep=30), ["main"], "10.100.0.5", _secrets()) == json.dumps(payload, sort_keys=True) + "\n"
    )


@needs_systemd_analyze
def test_backup_units_pass_systemd_analyze_verify(tmp_path):
    units = tmp_path / "units"
    units.mkdir()
    program = tmp_path / "nina-db-backup"
    program.write_text("#!/bin/sh\nexit 0\n")
    program.chmod(0o755)
    names = []
    for f in render.db_backup_files("keycloakdb_server", 14)[1:]:
        name = f.path.rsplit("/", 1)[1]
        (units / name).write_text(f.content.replace(facts.DB_BACKUP_BIN, str(program)))
        names.append(name)
    assert verify(units, names, "nina-db-backup") == []
    # ... and it does report a broken unit.
    (units / names[0]).write_text((units / names[0]).read_text().replace("Type=oneshot", "Type=sometimes"))
    assert any("sometimes" in line for line in verify(units, [names[0]]))


def test_the_keycloak_host_always_has_the_backups_volume():
    plan = build_plan(_cfg(backup_volume_gb=35))
    (host,) = [h for h in plan.hosts if "keycloak" in h.roles]
    (vol,) = [v for v in host.volumes if v.name == facts.DB_BACKUP_VOLUME_NAME]
    assert (vol.size_gb, vol.mount_point, vol.owner) == (35, facts.DB_BACKUP_VOLUME, facts.ROOT_USER)
    assert not [h for h in plan.hosts if "keycloak" not in h.roles and any(v.name == facts.DB_BACKUP_VOLUME_NAME for v in h.volumes)]
    # Turning the database or researcher access off changes no host (no VM is replaced).
    from conftest import render_raw_configs

    raw = json.loads(json.dumps(render_raw_configs()["all-in-one"]))
    raw["database"] = {"enabled": False}
    off = build_plan(config.load_config(raw))
    assert [h.volumes for h in off.hosts] == [h.volumes for h in build_plan(_cfg()).hosts]


@pytest.mark.parametrize(
    "database, key, words",
    [
        ({"backup_keep": 0}, "nina:database.backup_keep", ("greater than or equal to 1",)),
        ({"backup_keep": "14"}, "nina:database.backup_keep", ("whole number",)),
        ({"backup_volume_gb": 0}, "nina:database.backup_volume_gb", ("greater than or equal to 1",)),
        ({"datastore_version": "17"}, "nina:database.datastore_version", ("pg_dump refuses a newer server", "use 16 or older")),
    ],
)
def test_backup_config_errors_name_the_key(cfg_valid, database, key, words):
    raw = cfg_valid()
    raw["database"] = database
    with pytest.raises(config.ConfigError) as err:
        config.load_config(raw)
    (problem,) = err.value.problems
    assert problem[0] == key and all(w in problem[1] for w in words), problem


def test_backup_config_defaults(cfg_valid):
    db = config.load_config(cfg_valid()).database
    assert (db.backup_keep, db.backup_volume_gb) == (facts.DB_BACKUP_KEEP, facts.DB_BACKUP_VOLUME_GB)
    assert config.load_config({**cfg_valid(), "database": {"datastore_version": "15"}}).database.datastore_version == "15"


@pytest.mark.skipif(not CLOUD_INIT, reason="cloud-init missing (scripts/bootstrap --test-tools installs it)")
@pytest.mark.parametrize("shape", ["own host", "one large VM"])
def test_keycloak_user_data_with_the_volume_passes_cloud_init_schema_within_budget(shape, researcher_raw, tmp_path):
    from cloudinit.userdata import user_data

    if shape == "own host":
        plan = build_plan(config.load_config({**researcher_raw(), "keycloak": {"sha256": SHA256}}))
    else:
        plan = build_plan(_cfg())
    (host,) = [h for h in plan.hosts if "keycloak" in h.roles]
    assert shape != "one large VM" or set(host.roles) == {"bastion", "proxy", "keycloak", "jupyterhub", "superlink"}
    text = user_data(plan, host, {v.name: "0f3c2a1e-5b6d-4c7e-8f90-a1b2c3d4e5f6" for v in host.volumes})
    encoded = len(base64.b64encode(text.encode()))
    print(f"\n{shape} ({host.name}): user-data {encoded} bytes after base64 (target {facts.USER_DATA_TARGET})")
    assert encoded <= facts.USER_DATA_TARGET, encoded
    assert f"- {facts.DB_BACKUP_VOLUME}\n" in text or facts.DB_BACKUP_VOLUME in text
    path = tmp_path / "user-data.yaml"
    path.write_text(text)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the repo's cloudinit/ would hide cloud-init's
    proc = subprocess.run(
        [shutil.which("cloud-init") or "cloud-init", "schema", "-c", str(path)], capture_output=True, text=True, timeout=120, env=env
    )
    assert proc.returncode == 0 and "Valid cloud-config" in proc.stdout, proc.stdout + proc.stderr
