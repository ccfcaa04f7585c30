"""nina.host.backups in-process: the freshness metrics' pieces (the programs that use them are
tested as the host runs them in tests/test_state_backup.py and tests/test_db_backup.py)."""

from __future__ import annotations

import argparse

import pytest
from promtext import one, promtool_ok, samples

from nina import facts
from nina.host import backups
from nina.host.failure import Failure


def test_a_backup_name_is_its_time():
    assert backups.seconds("19700101T000000Z") == 0
    assert backups.seconds("20261207T031500Z") == backups.seconds("20261207T031500Z-2") == 1796613300
    for bad in ("20261340T000000Z", "20261207T031500", "x20261207T031500Z", "20261207T031500Z-", ".partial-abc", ""):
        assert backups.seconds(bad) is None, bad


def test_exposition_is_valid_and_leaves_out_an_unknown_newest():
    text = backups.exposition("keycloakdb_server", False, 1796613300, None)
    found = samples(text)
    assert one(found, "nina_backup_last_run_success", what="keycloakdb_server") == 0
    assert one(found, "nina_backup_last_run_timestamp_seconds", what="keycloakdb_server") == 1796613300
    assert "nina_backup_last_success_timestamp_seconds" not in text  # not even its HELP line
    promtool_ok(text)
    assert backups.exposition("x", True, 2, 1) == backups.exposition("x", True, 2, 1)  # deterministic


def _commands(what, listing=lambda: ["20261207T031500Z"], backup=lambda keep: "made") -> backups.Commands:
    def nothing(name: str) -> str:
        return name

    return backups.Commands(lambda msg: None, backup, listing, nothing, what)


def test_no_metrics_without_a_what_and_none_named_outside_the_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("NINA_TEXTFILE_DIR", str(tmp_path))
    monkeypatch.setenv("NINA_NOW", "20261207T040000Z")

    def unknown() -> str:
        raise Failure("name the database with --database", 2)

    assert backups.record(_commands(unknown), True) is None and list(tmp_path.iterdir()) == []
    for hostile in ("../../etc/cron.d/x", "a/b", "", "A", "x" * 64, "a\n"):
        assert "cannot name a metrics file" in (backups.record(_commands(lambda h=hostile: h), True) or ""), hostile
    assert list(tmp_path.iterdir()) == []

    def unlistable() -> list[str]:
        raise OSError("not mounted")

    assert backups.record(_commands(lambda: "keycloakdb_server", unlistable), False) is None
    found = samples((tmp_path / facts.BACKUP_METRICS_FILE.format(what="keycloakdb_server")).read_text())
    assert one(found, "nina_backup_last_run_success", what="keycloakdb_server") == 0
    assert one(found, "nina_backup_last_run_timestamp_seconds", what="keycloakdb_server") == backups.seconds("20261207T040000Z")
    assert "nina_backup_last_success_timestamp_seconds" not in found


def test_an_unexpected_error_is_recorded_as_a_failed_run_and_still_raised(tmp_path, monkeypatch):
    monkeypatch.setenv("NINA_TEXTFILE_DIR", str(tmp_path))

    def crash(keep: int) -> str:
        raise RuntimeError("a bug")

    args = argparse.Namespace(command="backup", keep=3)
    with pytest.raises(RuntimeError):
        backups.run(args, _commands(lambda: "superlink-state", backup=crash))
    found = samples((tmp_path / "nina_backup_superlink-state.prom").read_text())
    assert one(found, "nina_backup_last_run_success", what="superlink-state") == 0
    assert backups.run(args, _commands(lambda: "superlink-state")) == 0
    assert (
        one(samples((tmp_path / "nina_backup_superlink-state.prom").read_text()), "nina_backup_last_run_success", what="superlink-state")
        == 1
    )


def test_a_link_planted_as_the_metrics_file_is_replaced_not_followed(tmp_path, monkeypatch):
    """Attack: whoever could write the textfile directory plants nina_backup_<what>.prom as a
    link to a file root owns; the root-run backup's metrics must replace the link, never write
    through it (the directory itself is trust-checked: tests/test_state_backup.py)."""
    textfile, victim = tmp_path / "textfile", tmp_path / "victim"
    textfile.mkdir(mode=0o755)
    victim.write_text("root's\n")
    planted = textfile / facts.BACKUP_METRICS_FILE.format(what="grafanadb_server")
    planted.symlink_to(victim)
    monkeypatch.setenv("NINA_TEXTFILE_DIR", str(textfile))
    assert backups.record(_commands(lambda: "grafanadb_server"), True) is None
    assert victim.read_text() == "root's\n" and not planted.is_symlink()
    assert one(samples(planted.read_text()), "nina_backup_last_run_success", what="grafanadb_server") == 1
