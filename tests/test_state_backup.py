"""nina-superlink-backup (nina.host.state_backup): backups of the SuperLink's state and their restore.

The program is run as the host runs it (its launcher, with the test's paths in the environment)
against a SQLite database in WAL mode that a writer keeps changing, and, in the slow test,
against the real SuperLink of a rehearsal: its registrations survive a lost state volume.
"""

from __future__ import annotations

import calendar
import os
import shlex
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from backuplab import BackupProgram
from promtext import one, promtool_ok

from nina import facts, troubleshooting

NAME = "20261203T020000Z"


class Backup(BackupProgram):
    def __init__(self, tmp: Path) -> None:
        self.state = tmp / "state"
        self.state.mkdir(mode=0o750)
        self.db = self.state / "superlink_state.db"
        self.members = self.state / "members"
        self.members.mkdir(mode=0o750)
        self.backups = tmp / "backups"
        super().__init__(
            tmp,
            "state_backup",
            "nina-superlink-backup",
            NINA_STATE_DB=str(self.db),
            NINA_MEMBERS_DIR=str(self.members),
            NINA_BACKUP_DIR=str(self.backups),
        )

    def __call__(self, *args: str, now: str = NAME) -> subprocess.CompletedProcess:
        return self.run(*args, now=now, timeout=60)


def rows(db: Path) -> list[tuple]:
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT id, value FROM node ORDER BY id").fetchall()
    finally:
        con.close()


@pytest.fixture
def lab(tmp_path) -> Backup:
    b = Backup(tmp_path)
    con = sqlite3.connect(b.db)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE node (id INTEGER PRIMARY KEY, value TEXT)")
    con.executemany("INSERT INTO node VALUES (?, ?)", [(i, f"key-{i}") for i in range(50)])
    con.commit()
    con.close()
    (b.members / "metro-north.node_id").write_text("123\n")
    (b.members / "metro-north.pub").write_text("ecdsa-sha2-nistp384 AAAA\n")
    (b.members / "metro-north.lock").write_text("")
    return b


def test_a_backup_is_consistent_while_a_writer_holds_the_wal(lab):
    writer = sqlite3.connect(lab.db)
    writer.execute("INSERT INTO node VALUES (100, 'committed, only in the WAL')")
    writer.commit()  # not checkpointed: a copy of the .db file alone would miss it
    writer.execute("BEGIN")
    writer.execute("INSERT INTO node VALUES (101, 'not committed')")
    try:
        proc = lab("backup")
    finally:
        writer.rollback()
        writer.close()
    assert proc.returncode == 0, proc.stderr
    assert f"to {lab.backups / NAME}" in proc.stdout
    copy = lab.backups / NAME / "state.db"
    got = rows(copy)
    assert (100, "committed, only in the WAL") in got and all(r[0] != 101 for r in got) and len(got) == 51
    assert sorted(p.name for p in (lab.backups / NAME / "members").iterdir()) == ["metro-north.node_id", "metro-north.pub"]
    sums = (lab.backups / NAME / "SHA256SUMS").read_text().splitlines()
    assert [line.split("  ")[1] for line in sums] == ["state.db", "members/metro-north.node_id", "members/metro-north.pub"]
    assert (lab.backups / NAME).stat().st_mode & 0o777 == 0o700 and lab.backups.stat().st_mode & 0o777 == 0o700
    assert lab("list").stdout == f"{NAME}\n"


def test_old_backups_are_removed_beyond_keep(lab):
    names = [f"2026120{d}T020000Z" for d in range(1, 6)]
    for name in names:
        assert lab("backup", "--keep", "3", now=name).returncode == 0
    assert lab("list").stdout.split() == names[-3:]
    again = lab("backup", "--keep", "3", now=names[-1])  # the same second: a name of its own
    assert again.returncode == 0 and lab("list").stdout.split() == [*names[-2:], f"{names[-1]}-1"]
    assert lab("backup", "--keep", "0").returncode == 2


def test_restore_puts_the_state_back_and_drops_a_stale_wal(lab):
    assert lab("backup").returncode == 0
    # The volume's state goes wrong: rows lost, a WAL from another life, a record changed.
    con = sqlite3.connect(lab.db)
    con.execute("DELETE FROM node WHERE id < 40")
    con.commit()
    con.close()
    (lab.state / "superlink_state.db-wal").write_bytes(b"stale")
    (lab.members / "metro-north.node_id").write_text("999\n")
    (lab.members / "intruder.node_id").write_text("7\n")
    proc = lab("restore", NAME)
    assert proc.returncode == 0, proc.stderr
    assert "start superlink.service now" in proc.stdout
    assert len(rows(lab.db)) == 50 and not (lab.state / "superlink_state.db-wal").exists()
    assert (lab.members / "metro-north.node_id").read_text() == "123\n" and not (lab.members / "intruder.node_id").exists()
    assert lab.db.stat().st_mode & 0o777 == 0o600
    assert "is-active --quiet superlink.service" in lab.calls.read_text()


def test_restore_refuses_a_running_superlink_a_tampered_backup_and_bad_names(lab):
    assert lab("backup").returncode == 0
    lab.active.write_text("")
    proc = lab("restore", NAME)
    assert proc.returncode == 2 and "superlink.service is running; stop it first" in proc.stderr
    lab.active.unlink()
    for bad in ("../state", "latest", f"{NAME}/.."):
        proc = lab("restore", bad)
        assert proc.returncode == 2 and "is not a backup name" in proc.stderr, bad
    assert "no backup 20991231T000000Z" in lab("restore", "20991231T000000Z").stderr
    record = lab.backups / NAME / "members" / "metro-north.node_id"
    record.write_text("666\n")
    proc = lab("restore", NAME)
    assert proc.returncode == 2 and "members/metro-north.node_id does not match SHA256SUMS" in proc.stderr
    assert (lab.members / "metro-north.node_id").read_text() == "123\n"  # nothing was touched
    record.write_text("123\n")
    (lab.backups / NAME / "members" / "planted.pub").write_text("x\n")
    proc = lab("restore", NAME)
    assert proc.returncode == 2 and "differ from SHA256SUMS" in proc.stderr


def test_a_link_planted_as_the_database_is_replaced_not_followed(lab, tmp_path):
    """The state directory is the superlink user's: a link there must not make root write elsewhere."""
    assert lab("backup").returncode == 0
    victim = tmp_path / "victim"
    victim.write_text("root's file\n")
    lab.db.unlink()
    lab.db.symlink_to(victim)
    proc = lab("restore", NAME)
    assert proc.returncode == 0, proc.stderr
    assert victim.read_text() == "root's file\n" and not lab.db.is_symlink() and len(rows(lab.db)) == 50


@pytest.mark.troubleshooting("state-volume-full")
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root and unshare to mount a small tmpfs")
def test_restore_onto_a_full_state_volume_says_so(lab):
    """A real full file system: the state directory is a 1 MiB tmpfs (in a mount namespace of
    its own, gone with it), filled up; the restore fails and says why, and the row's check (`df -h`
    on the state directory, run in that namespace) shows the volume full."""
    assert lab("backup").returncode == 0
    row = troubleshooting.row("state-volume-full")
    state = shlex.quote(str(lab.state))
    saved = shlex.quote(str(lab.state.parent / "state-saved"))
    check = troubleshooting.fill(row.check, {"state_dir": str(lab.state)})
    script = "\n".join(
        [
            "set -u; exec 2>&1",
            f"cp -a {state} {saved}",
            f"mount -t tmpfs -o size=1m,mode=0750 nina-state {state}",
            f"cp -a {saved}/. {state}/",
            f"dd if=/dev/zero of={state}/filler bs=64k 2>/dev/null || true",  # until the volume is full
            f'{shlex.quote(str(lab.launcher))} restore {NAME}; echo "restore exit $?"',
            "echo '--- check'",
            check,
        ]
    )
    env = {**lab.env, "NINA_NOW": NAME}
    proc = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    out, check_out = (proc.stdout + proc.stderr).split("--- check", 1)
    assert "restore exit 1" in out, out
    assert troubleshooting.fill(row.symptom, {}) in out, out
    assert f"{facts.SUPERLINK_BACKUP_BIN.rsplit('/', 1)[1]}: error:" in out, out
    used = [line.split() for line in check_out.splitlines() if line.endswith(str(lab.state))]
    assert used and used[0][4] == "100%", check_out
    assert rows(lab.db) == [(i, f"key-{i}") for i in range(50)]  # the state outside the namespace never changed


def test_backup_without_a_database_is_one_clear_error(lab):
    lab.db.unlink()
    proc = lab("backup")
    assert proc.returncode == 2 and "no state database at" in proc.stderr and "Traceback" not in proc.stderr


def _stamp(name: str) -> float:
    return calendar.timegm(time.strptime(name, "%Y%m%dT%H%M%SZ"))


def test_every_backup_run_leaves_its_freshness_metrics(lab):
    """nina.host.backups: the outcome of each run, when it ended, when the newest backup was taken;
    a failed run keeps the newest backup's time (the alerts tell a failure from a silent timer)."""
    what = facts.SUPERLINK_BACKUP_WHAT
    prom = lab.textfile / facts.BACKUP_METRICS_FILE.format(what=what)
    assert lab("backup").returncode == 0
    found = lab.metrics(what)
    assert one(found, "nina_backup_last_run_success", what=what) == 1
    assert one(found, "nina_backup_last_run_timestamp_seconds", what=what) == _stamp(NAME)
    assert one(found, "nina_backup_last_success_timestamp_seconds", what=what) == _stamp(NAME)
    assert prom.stat().st_mode & 0o777 == 0o644 and [p.name for p in lab.textfile.iterdir()] == [prom.name]
    promtool_ok(prom.read_text())
    later = "20261204T020000Z"
    lab.db.write_bytes(b"not a database" * 100)
    proc = lab("backup", now=later)
    assert proc.returncode == 1 and len(proc.stderr.splitlines()) == 1, proc.stderr
    found = lab.metrics(what)
    assert one(found, "nina_backup_last_run_success", what=what) == 0
    assert one(found, "nina_backup_last_run_timestamp_seconds", what=what) == _stamp(later)
    assert one(found, "nina_backup_last_success_timestamp_seconds", what=what) == _stamp(NAME)
    promtool_ok(prom.read_text())
    # list, restore and a mistyped --keep are no backup runs: the metrics stay as they are.
    text = prom.read_text()
    assert lab("list").returncode == 0 and lab("backup", "--keep", "0").returncode == 2 and lab("restore", "latest").returncode == 2
    assert prom.read_text() == text


def test_metrics_that_cannot_be_written_fail_the_run_but_keep_the_backup(lab, tmp_path):
    lab.textfile.chmod(0o777)  # anyone could plant files here: root writes nothing into it
    proc = lab("backup")
    assert proc.returncode == 1 and f"the backup is made, but cannot write {lab.textfile}/" in proc.stderr, proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and lab("list").stdout == f"{NAME}\n"
    lab.textfile.chmod(0o755)
    lab.textfile.rmdir()
    lab.textfile.symlink_to(tmp_path / "state")  # a link is not followed either
    proc = lab("backup", now="20261204T020000Z")
    assert proc.returncode == 1 and "the backup is made, but cannot write" in proc.stderr, proc.stderr
    assert not list((tmp_path / "state").glob("*.prom"))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_registrations_survive_a_lost_state_volume(reh_rehearsal, tmp_path):
    """The real SuperLink: back up while it runs, lose its state, restore, start it again: every
    organisation's registration is back (same node ids) and the federation runs."""
    r = reh_rehearsal()
    r.start_superlink()
    ids = r.register_all()
    b = Backup(tmp_path)
    b.env.update(NINA_STATE_DB=str(r.state_db), NINA_MEMBERS_DIR=str(r.root / facts.SUPERLINK_MEMBERS_DIR.lstrip("/")))
    proc = b("backup")
    assert proc.returncode == 0, proc.stderr
    r.stop_superlink()
    for path in r.state_db.parent.glob(r.state_db.name + "*"):
        path.unlink()  # the volume's content is gone
    for record in (r.root / facts.SUPERLINK_MEMBERS_DIR.lstrip("/")).glob("*.node_id"):
        record.unlink()
    assert r.registered() == {}
    proc = b("restore", NAME)
    assert proc.returncode == 0, proc.stderr
    r.restart_superlink()
    assert r.registered() == ids
    deadline = time.monotonic() + 60
    while {str(n["node-id"]) for n in r.nodes()} != set(ids.values()):
        assert time.monotonic() < deadline, r.nodes()
        time.sleep(0.5)
    r.start_supernodes()
    r.wait_online(len(r.members), timeout=120)
    result = r.run_app(1, tag="restored")
    assert result.ok, (result.error, result.output[-2000:])
