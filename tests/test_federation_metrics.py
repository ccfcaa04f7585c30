"""nina-federation-metrics (nina.host.federation_metrics): the federation's health as node exporter metrics.

The program runs as the host runs it (its launcher, with the test's paths as arguments) against the
real SuperLink of a rehearsal (flwr facts.FLWR_VERSION): two organisations registered, one
SuperNode started, the other left offline, then one run of the validation app (finished:completed),
then the SuperLink stopped. Its output is read back with prometheus_client's parser
and checked with `promtool check metrics` (scripts/bootstrap --test-tools installs promtool). A
missing, corrupt, foreign or locked database gives scrape_success 0, one line on stderr, exit 3.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from promtext import one, promtool_ok, samples
from systemd import needs_systemd_analyze, verify_text

from nina import facts, render
from nina.host import federation_metrics, metrics


def launcher(tmp: Path) -> Path:
    path = tmp / "nina-federation-metrics"
    path.write_text(render.launcher("federation_metrics", render.SOURCE_ROOT).replace(facts.HOST_PYTHON, sys.executable, 1))
    path.chmod(0o755)
    return path


def collect(tmp: Path, db: Path, members: Path, tenancy: str = "uat") -> tuple[subprocess.CompletedProcess, str]:
    out = tmp / "textfile"
    out.mkdir(exist_ok=True, mode=0o755)
    proc = subprocess.run(
        [str(launcher(tmp)), "--tenancy", tenancy, "--state-db", str(db), "--members-dir", str(members), "--textfile-dir", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    prom = out / facts.FEDERATION_METRICS_FILE
    return proc, prom.read_text() if prom.exists() else ""


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_online_and_offline_organisations_of_a_real_superlink(reh_rehearsal, tmp_path):
    r = reh_rehearsal()
    tenancy = r.tenancy.name
    r.start_superlink()
    ids = r.register_all()
    assert len(ids) == 2, ids
    up, down = sorted(ids)
    r.start_supernode(up)
    r.wait_online(1, timeout=120)
    members = r.root / facts.SUPERLINK_MEMBERS_DIR.lstrip("/")
    state_files = sorted(p.name for p in r.state_db.parent.iterdir())
    start = time.monotonic()
    proc, text = collect(tmp_path, r.state_db, members, tenancy)
    took = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    found = samples(text)
    t = {"tenancy": tenancy}
    assert one(found, "nina_federation_scrape_success", **t) == 1
    assert abs(one(found, "nina_federation_scrape_timestamp_seconds") - time.time()) < 60
    assert one(found, "nina_federation_supernode_online", tenancy=tenancy, organisation=up) == 1
    assert one(found, "nina_federation_supernode_online", tenancy=tenancy, organisation=down) == 0
    assert one(found, "nina_federation_supernodes_registered", **t) == 2
    assert one(found, "nina_federation_supernodes_online", **t) == 1
    assert one(found, "nina_federation_runs_failed_total", **t) == 0
    assert {dict(k)["status"]: v for k, v in found["nina_federation_runs_total"].items()} == dict.fromkeys(
        federation_metrics.RUN_STATUSES, 0
    )
    promtool_ok(text)
    # Read only: nothing made or left beside the database (its -wal and -shm are the SuperLink's).
    assert sorted(p.name for p in r.state_db.parent.iterdir()) == state_files
    assert (tmp_path / "textfile" / facts.FEDERATION_METRICS_FILE).stat().st_mode & 0o777 == 0o644
    assert [p.name for p in (tmp_path / "textfile").iterdir()] == [facts.FEDERATION_METRICS_FILE]  # no temporary file left
    print(f"\nfederation metrics of a live SuperLink (flwr {facts.FLWR_VERSION}): {took:.2f} s per run, {len(text)} bytes")

    # A real run of the validation app on the online SuperNode: flwr records it finished:completed.
    partition = next(m.partition_id for m in r.members if m.slug == up)
    result = r.run_app(1, expected_partitions=[partition], tag="metrics")
    assert result.ok, (result.error, result.output[-2000:])
    proc, text = collect(tmp_path, r.state_db, members, tenancy)
    assert proc.returncode == 0, proc.stderr
    runs = {dict(k)["status"]: v for k, v in samples(text)["nina_federation_runs_total"].items()}
    assert runs == {**dict.fromkeys(federation_metrics.RUN_STATUSES, 0), "finished:completed": 1}
    promtool_ok(text)

    # The SuperLink stopped: its database (everything checkpointed into it) is read without
    # making its -wal/-shm again (its unit's read-only file system would not let it).
    r.stop_superlink()
    left = sorted(p.name for p in r.state_db.parent.iterdir())
    print(f"state directory after the SuperLink stopped: {left}")
    proc, text = collect(tmp_path, r.state_db, members, tenancy)
    assert proc.returncode == 0, proc.stderr
    assert one(samples(text), "nina_federation_supernodes_registered", **t) == 2
    assert sorted(p.name for p in r.state_db.parent.iterdir()) == left

    # Runs: flwr's schema (this database), a run per status through its primary task.
    copy = tmp_path / "copy.db"
    src = sqlite3.connect(f"file:{r.state_db}?mode=ro", uri=True)
    dst = sqlite3.connect(copy)
    src.backup(dst)
    src.close()
    when = "2026-12-07T00:00:00+00:00"
    rows = [  # starting_at, running_at, finished_at, sub_status
        (None, None, None, ""),
        (when, None, None, ""),
        (when, when, None, ""),
        (when, when, when, "completed"),
        (when, when, when, "failed"),
        (when, when, when, "failed"),
        (when, None, when, "stopped"),
    ]
    for i, (starting, running, finished, sub) in enumerate(rows, start=1):
        dst.execute(
            "INSERT INTO task (task_id, type, run_id, pending_at, starting_at, running_at, finished_at, sub_status, details) "
            "VALUES (?, 'serverapp', ?, ?, ?, ?, ?, ?, '')",
            (1000 + i, i, when, starting, running, finished, sub),
        )
        dst.execute("INSERT INTO run (run_id, primary_task_id, fab_id) VALUES (?, ?, 'x')", (i, 1000 + i))
    dst.commit()
    dst.close()
    proc, text = collect(tmp_path, copy, members, tenancy)
    assert proc.returncode == 0, proc.stderr
    found = samples(text)
    assert {dict(k)["status"]: v for k, v in found["nina_federation_runs_total"].items()} == {
        "pending": 1,
        "starting": 1,
        "running": 1,
        "finished:completed": 2,  # the validation app's and one of these
        "finished:failed": 2,
        "finished:stopped": 1,
    }
    assert one(found, "nina_federation_runs_failed_total", **t) == 2
    promtool_ok(text)


def flwr_like(db: Path, journal: str = "WAL") -> None:
    """A database with the columns the collector reads (flwr 1.31's names), for the failure cases."""
    con = sqlite3.connect(db)
    con.execute(f"PRAGMA journal_mode={journal}")
    con.execute("CREATE TABLE node (node_id INTEGER, status TEXT, online_until REAL)")
    con.execute("CREATE TABLE run (run_id INTEGER, primary_task_id INTEGER)")
    con.execute("CREATE TABLE task (task_id INTEGER, starting_at TEXT, running_at TEXT, finished_at TEXT, sub_status TEXT)")
    future = time.time() + 3600
    con.executemany(
        "INSERT INTO node VALUES (?, ?, ?)",
        [
            (-5, "online", future),  # a node id of 2**64 - 5 (flwr stores uint64 as sint64)
            (7, "online", time.time() - 1),  # flwr has not yet marked it offline: its deadline passed
            (8, "unregistered", None),
        ],
    )
    con.commit()
    con.close()


@pytest.fixture
def members(tmp_path) -> Path:
    d = tmp_path / "members"
    d.mkdir(mode=0o750)
    (d / "org-a.node_id").write_text(f"{2**64 - 5}\n")
    (d / "org-b.node_id").write_text("7\n")
    (d / "org-c.node_id").write_text("8\n")
    (d / "org-a.pub").write_text("ecdsa-sha2-nistp384 AAAA\n")
    (d / "org-a.lock").write_text("")
    return d


def test_online_is_flwrs_notion_and_ids_are_unsigned(tmp_path, members):
    db = tmp_path / "state.db"
    flwr_like(db)
    proc, text = collect(tmp_path, db, members, "main")
    assert proc.returncode == 0, proc.stderr
    found = samples(text)
    assert {dict(k)["organisation"]: v for k, v in found["nina_federation_supernode_online"].items()} == {
        "org-a": 1,
        "org-b": 0,  # status still says online, its heartbeat deadline has passed
        "org-c": 0,  # unregistered
    }
    assert one(found, "nina_federation_supernodes_registered", tenancy="main") == 2
    assert one(found, "nina_federation_supernodes_online", tenancy="main") == 1
    promtool_ok(text)
    # Deterministic: the same state gives the same file but for the time stamp.
    again = collect(tmp_path, db, members, "main")[1]
    strip = lambda s: [line for line in s.splitlines() if not line.startswith("nina_federation_scrape_timestamp_seconds ")]  # noqa: E731
    assert strip(again) == strip(text)


def _failure(tmp_path: Path, db: Path, members: Path, expect: str) -> None:
    proc, text = collect(tmp_path, db, members, "main")
    assert proc.returncode == 3, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("nina-federation-metrics: error: ") and expect in proc.stderr, proc.stderr
    assert "reported as nina_federation_scrape_success 0" in proc.stderr
    found = samples(text)
    assert one(found, "nina_federation_scrape_success", tenancy="main") == 0
    assert set(found) == {"nina_federation_scrape_success", "nina_federation_scrape_timestamp_seconds"}
    promtool_ok(text)


def test_missing_database(tmp_path, members):
    _failure(tmp_path, tmp_path / "nowhere.db", members, "no state database at")


def test_garbage_database(tmp_path, members):
    db = tmp_path / "state.db"
    db.write_bytes(b"not sqlite at all " * 100)
    _failure(tmp_path, db, members, "is not an SQLite database")


def test_corrupt_database(tmp_path, members):
    db = tmp_path / "state.db"
    flwr_like(db, journal="DELETE")
    data = bytearray(db.read_bytes())
    data[100:] = b"\xff" * (len(data) - 100)  # the header survives, the pages do not
    db.write_bytes(bytes(data))
    _failure(tmp_path, db, members, "state.db")


def test_foreign_database(tmp_path, members):
    db = tmp_path / "state.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE something (x)")
    con.commit()
    con.close()
    _failure(tmp_path, db, members, f"is not a state database of flwr {facts.FLWR_VERSION}")


def test_locked_database_is_reported_not_waited_for(tmp_path, members):
    db = tmp_path / "state.db"
    flwr_like(db, journal="DELETE")  # rollback journal: an exclusive writer keeps readers out
    writer = sqlite3.connect(db, isolation_level=None)
    writer.execute("BEGIN EXCLUSIVE")
    try:
        start = time.monotonic()
        _failure(tmp_path, db, members, "is locked")
        took = time.monotonic() - start
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert took < facts.FEDERATION_METRICS_DB_TIMEOUT + 10
    print(f"\nlocked state database reported after {took:.2f} s (timeout {facts.FEDERATION_METRICS_DB_TIMEOUT:g} s)")


def test_a_link_as_the_database_is_not_followed(tmp_path, members):
    real = tmp_path / "real.db"
    flwr_like(real)
    db = tmp_path / "state.db"
    db.symlink_to(real)
    _failure(tmp_path, db, members, "is not a regular file")


def test_bad_tenancy_and_unwritable_directory(tmp_path, members):
    db = tmp_path / "state.db"
    flwr_like(db)
    proc = subprocess.run(
        [str(launcher(tmp_path)), "--tenancy", 'x"y', "--state-db", str(db), "--members-dir", str(members), "--stdout"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "is not a tenancy name" in proc.stderr and "Traceback" not in proc.stderr
    target = tmp_path / "elsewhere"
    target.mkdir()
    link = tmp_path / "textfile-link"
    link.symlink_to(target)
    proc = subprocess.run(
        [str(launcher(tmp_path)), "--tenancy", "main", "--state-db", str(db), "--members-dir", str(members), "--textfile-dir", str(link)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1 and "cannot write" in proc.stderr and "symbolic link" in proc.stderr, proc.stderr
    assert list(target.iterdir()) == []


SETPRIV, UNSHARE = shutil.which("setpriv") or "", shutil.which("unshare") or ""
WRITER = """
import sqlite3, sys, time
con = sqlite3.connect(sys.argv[1])
con.execute("INSERT INTO node VALUES (9, 'online', ?)", (time.time() + 3600,))
con.commit()  # in the WAL only, while this connection stays open
print("ready", flush=True)
sys.stdin.read()
con.close()
"""


@pytest.mark.skipif(
    os.geteuid() != 0 or not SETPRIV or not UNSHARE or not os.path.exists(facts.HOST_PYTHON),
    reason="needs root, util-linux's unshare and setpriv, and the host's python3",
)
def test_as_its_unit_runs_it(members):
    """The unit's sandbox, approximated: root's uid with only CAP_DAC_READ_SEARCH and no_new_privs,
    the state and the records mounted read only; the database, -wal and -shm are another user's,
    0600, held open by its writer (as the SuperLink holds them). It reads what the writer committed
    to the WAL and makes nothing."""
    with tempfile.TemporaryDirectory(dir="/tmp") as top:
        base = Path(top)
        base.chmod(0o755)
        state, out = base / "state", base / "textfile"
        state.mkdir(mode=0o750)
        out.mkdir(mode=0o755)
        db = state / "superlink_state.db"
        flwr_like(db)
        db.chmod(0o600)
        os.chown(state, 65534, 65534)
        os.chown(db, 65534, 65534)
        writer = subprocess.Popen(
            [SETPRIV, "--reuid=65534", "--regid=65534", "--clear-groups", facts.HOST_PYTHON, "-I", "-c", WRITER, str(db)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert writer.stdout is not None and writer.stdout.readline() == "ready\n"
            before = sorted((p.name, p.stat().st_uid, p.stat().st_mode & 0o777) for p in state.iterdir())
            assert [name for name, _, _ in before] == [db.name, f"{db.name}-shm", f"{db.name}-wal"]
            program = base / "nina-federation-metrics"
            program.write_text(render.launcher("federation_metrics", render.SOURCE_ROOT))
            program.chmod(0o755)
            args = ["--tenancy", "main", "--state-db", str(db), "--members-dir", str(members), "--textfile-dir", str(out)]
            script = 'for d in "$1" "$2"; do mount --bind "$d" "$d" && mount -o remount,bind,ro "$d" || exit 99; done; shift 2; exec "$@"'
            sandbox = [SETPRIV, "--bounding-set=-all,+dac_read_search", "--inh-caps=-all", "--no-new-privs", str(program), *args]
            proc = subprocess.run(
                [UNSHARE, "-m", "sh", "-c", script, "sh", str(state), str(members), *sandbox], capture_output=True, text=True, timeout=60
            )
            assert proc.returncode == 0, proc.stderr
            found = samples((out / facts.FEDERATION_METRICS_FILE).read_text())
            assert one(found, "nina_federation_scrape_success", tenancy="main") == 1
            assert one(found, "nina_federation_supernodes_registered", tenancy="main") == 3  # two of flwr_like's and the WAL's
            assert sorted((p.name, p.stat().st_uid, p.stat().st_mode & 0o777) for p in state.iterdir()) == before
            # Without CAP_DAC_READ_SEARCH the superlink user's database stays closed to it.
            proc = subprocess.run(
                [UNSHARE, "-m", "sh", "-c", script, "sh", str(state), str(members), SETPRIV, "--bounding-set=-all", *sandbox[2:]],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert proc.returncode == 3 and "Permission denied; reported as nina_federation_scrape_success 0" in proc.stderr, proc.stderr
        finally:
            writer.communicate("", timeout=30)
        # The writer gone (the SuperLink stopped: -wal and -shm checkpointed and removed): read as well.
        assert [p.name for p in state.iterdir()] == [db.name]
        (out / facts.FEDERATION_METRICS_FILE).unlink()
        proc = subprocess.run(
            [UNSHARE, "-m", "sh", "-c", script, "sh", str(state), str(members), *sandbox], capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0, proc.stderr
        found = samples((out / facts.FEDERATION_METRICS_FILE).read_text())
        assert one(found, "nina_federation_supernodes_registered", tenancy="main") == 3
        assert [p.name for p in state.iterdir()] == [db.name]


def test_text_format_escaping():
    assert metrics.escape_label('a\\b"c\nd') == 'a\\\\b\\"c\\nd'
    fam = metrics.Family("x", "gauge", "h").add(1.5, a='q"').add(2, a="\\")
    text = metrics.exposition([fam, metrics.Family("empty", "gauge", "nothing")])
    assert text == '# HELP x h\n# TYPE x gauge\nx{a="q\\""} 1.5\nx{a="\\\\"} 2\n'
    assert [s.labels["a"] for f in text_string_to_metric_families(text) for s in f.samples] == ['q"', "\\"]


def test_units_and_delivery(render_plans, tmp_path):
    tenancy = render_plans["test"].tenancies[0]
    service = render.federation_metrics_service(tenancy.name)
    assert f"ExecStart={facts.HOST_PYTHON} -I {facts.FEDERATION_METRICS_BIN} --tenancy {tenancy.name}\n" in service
    assert f"ReadWritePaths={facts.NODE_EXPORTER_TEXTFILE_DIR}\n" in service and "ProtectSystem=strict\n" in service
    assert "CapabilityBoundingSet=CAP_DAC_READ_SEARCH\n" in service and "SuccessExitStatus=3\n" in service
    with pytest.raises(ValueError):
        render.federation_metrics_service('x"\nExecStartPre=/bin/sh')
    assert f"OnCalendar={facts.FEDERATION_METRICS_SCHEDULE}\n" in render.federation_metrics_timer()
    payload = json.loads(render.superlink_delivery(tenancy, CA, CERT, KEY))
    files = {f["path"]: f for f in payload["files"]}
    assert files[facts.FEDERATION_METRICS_BIN]["content"] == render.launcher("federation_metrics")
    assert files[facts.FEDERATION_METRICS_BIN]["mode"] == 0o755
    assert files[f"{facts.SYSTEMD_SYSTEM_DIR}/{facts.FEDERATION_METRICS_SERVICE}"]["content"] == service
    assert files[f"{facts.SYSTEMD_SYSTEM_DIR}/{facts.FEDERATION_METRICS_TIMER}"]["content"] == render.federation_metrics_timer()
    assert facts.FEDERATION_METRICS_TIMER in payload["restart"] and facts.FEDERATION_METRICS_SERVICE not in payload["restart"]
    assert "nina/host/federation_metrics.py" in render.host_programs() and "nina/host/metrics.py" in render.host_programs()


@needs_systemd_analyze
@pytest.mark.parametrize(
    "name, text",
    [
        (facts.FEDERATION_METRICS_SERVICE, lambda: render.federation_metrics_service("main")),
        (facts.FEDERATION_METRICS_TIMER, render.federation_metrics_timer),
    ],
)
def test_systemd_analyze_verify(tmp_path, name, text):
    assert verify_text(tmp_path, name, text()) == []


CA = "-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n"
CERT = "-----BEGIN CERTIFICATE-----\nSL\n-----END CERTIFICATE-----\n"
KEY = "-----BEGIN PRIVATE KEY-----\nK\n-----END PRIVATE KEY-----\n"


def test_a_crafted_state_cannot_flood_the_metrics(tmp_path, members):
    """The state database is the superlink user's, and researchers' ServerApps run as that user:
    run statuses it makes up (10,000 distinct, each 1,000 characters) must not become 10,000
    series of node exporter's and Prometheus's (about 10 MB a minute on the SuperLink's root
    disk). They are counted as one status, finished:other."""
    db = tmp_path / "state.db"
    flwr_like(db)
    con = sqlite3.connect(db)
    n = 10_000
    con.executemany("INSERT INTO run VALUES (?, ?)", [(i, i) for i in range(n)])
    con.executemany("INSERT INTO task VALUES (?, '1', '2', '3', ?)", [(i, f"{i:05d}" + "x" * 995) for i in range(n)])
    con.execute("INSERT INTO run VALUES (?, ?)", (n, n))
    con.execute("INSERT INTO task VALUES (?, '1', '2', '3', 'failed')", (n,))
    con.commit()
    con.close()
    proc, text = collect(tmp_path, db, members, "main")
    assert proc.returncode == 0, proc.stderr
    assert len(text) < 10_000, len(text)
    found = samples(text)
    statuses = {dict(k)["status"]: v for k, v in found["nina_federation_runs_total"].items()}
    assert statuses == {**dict.fromkeys(federation_metrics.RUN_STATUSES, 0), "finished:failed": 1, "finished:other": n}
    promtool_ok(text)
