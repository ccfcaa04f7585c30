"""nina.host.trust: the one check root-run programs make before relying on a path (in-process)."""

from __future__ import annotations

import os
import stat

import pytest

from nina.host import trust

NOBODY = 65534


def _tree(tmp_path, mode=0o755):
    d = tmp_path / "opt"
    d.mkdir()
    d.chmod(mode)
    (d / "prog").write_text("#!/bin/sh\n")
    return d


def test_a_root_only_path_is_trusted(tmp_path):
    d = _tree(tmp_path)
    assert trust.problem(str(d / "prog")) is None
    assert trust.exec_problem(str(d / "prog")) is None
    assert trust.problem(str(d / "not-yet" / "made")) is None  # root makes it, inside a checked directory


@pytest.mark.parametrize(
    ("mode", "words"),
    [
        (0o775, "is writable by group"),
        (0o757, "is writable by everyone (mode 0757)"),
        # Writable by group and by everyone: the refusal says everyone, not only its group.
        (0o777, "is writable by everyone (mode 0777)"),
    ],
)
def test_a_directory_others_can_write_is_refused_naming_who(tmp_path, mode, words):
    d = _tree(tmp_path, mode)
    why = trust.problem(str(d / "prog"))
    assert why is not None and why.startswith(f"{d} ") and words in why, why


def test_a_sticky_root_directory_is_the_one_exception(tmp_path):
    d = _tree(tmp_path, 0o1777)
    assert trust.problem(str(d / "prog")) is None


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown)")
def test_an_entry_owned_by_another_user_is_refused_and_a_link_to_it_too(tmp_path):
    d = _tree(tmp_path)
    os.chown(d / "prog", NOBODY, NOBODY)
    assert trust.problem(str(d / "prog")) == f"{d / 'prog'} is owned by {trust._user(NOBODY)}, not root"
    # A root-owned link whose target is someone else's: the resolved path is checked too.
    (tmp_path / "link").symlink_to(d / "prog")
    assert "not root" in (trust.problem(str(tmp_path / "link")) or "")


def test_the_interpreter_of_a_script_is_checked_too(tmp_path):
    d = _tree(tmp_path)
    bad = tmp_path / "shared"
    bad.mkdir()
    bad.chmod(0o777)
    (bad / "python").write_text("")
    (d / "prog").write_text(f"#!{bad / 'python'} -I\n")
    why = trust.exec_problem(str(d / "prog"))
    assert why == f"{bad} is writable by everyone (mode 0777) (the interpreter of {d / 'prog'})"


def test_open_dir_never_follows_a_link_and_checks_each_component(tmp_path):
    d = _tree(tmp_path)
    (tmp_path / "via").symlink_to(d)
    with pytest.raises(trust.Untrusted, match=r"is a symbolic link \(to "):
        trust.open_dir(str(tmp_path / "via"))
    fd = trust.open_dir(str(d / "made" / "here"), create=True, mode=0o700)
    try:
        assert stat.S_IMODE(os.fstat(fd).st_mode) == 0o700
    finally:
        os.close(fd)
    d.chmod(0o777)
    with pytest.raises(trust.Untrusted, match="writable by everyone"):
        trust.open_dir(str(d / "made"))


def test_relative_paths_and_the_command_line(tmp_path, capsys):
    assert trust.problem("opt/prog") == "opt/prog is not an absolute path"
    d = _tree(tmp_path, 0o777)
    assert trust.main([str(d / "prog")]) == 1 and "writable by everyone" in capsys.readouterr().out
    assert trust.main(["--parents", str(d)]) == 0  # the directory itself may be anyone's: root sets its mode
    assert trust.main([]) == 2
