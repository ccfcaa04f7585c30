"""`nina config check`: the repo's stacks pass, broken stack files fail with exit 2 and a clear
line per problem, never a traceback; and the installed console script works."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nina.cli import main

VENV_BIN = Path(sys.executable).parent


def check(directory: Path, stack: str = "test", *extra: str) -> list[str]:
    return ["config", "check", "--stack", stack, "--dir", str(directory), *extra]


def run(capsys, argv: list[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def write(tmp_path: Path, text: str | bytes, stack: str = "x") -> Path:
    path = tmp_path / f"Pulumi.{stack}.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def fail(capsys, tmp_path: Path, text: str | bytes) -> str:
    """Writes a stack file, checks it, asserts exit 2 with nothing on stdout; returns stderr."""
    write(tmp_path, text)
    code, out, err = run(capsys, check(tmp_path, "x"))
    assert code == 2, err
    assert out == ""
    assert err.strip()
    return err


VALID = """\
config:
  nina:environment: dev
  nina:network:
    admin_cidrs: [203.0.113.0/24]
  nina:organisations:
    - {slug: org-a, name: A, placement: onprem, partition_id: 0}
"""


# ---------------------------------------------------------------------------------------
# the repo's stacks
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("stack", ["test", "uat"])
def test_repo_stacks_ok(capsys, cfg_repo_root, stack):
    assert run(capsys, check(cfg_repo_root, stack)) == (0, "ok\n", "")


def test_default_dir_is_cwd(capsys, cfg_repo_root, monkeypatch):
    monkeypatch.chdir(cfg_repo_root)
    assert run(capsys, ["config", "check", "--stack", "uat"]) == (0, "ok\n", "")


def test_qualified_stack_name(capsys, cfg_repo_root):
    # `pulumi stack select org/nina-fl/test` keeps its config in Pulumi.test.yaml.
    assert run(capsys, check(cfg_repo_root, "myorg/nina-fl/test"))[0] == 0


def test_other_namespaces_ignored(capsys, tmp_path):
    write(tmp_path, VALID + "  openstack:region: Melbourne\n  openstack:password:\n    secure: AAAB\n")
    assert run(capsys, check(tmp_path, "x")) == (0, "ok\n", "")


# ---------------------------------------------------------------------------------------
# invalid configs
# ---------------------------------------------------------------------------------------


def test_broken_copy_of_test_stack(capsys, cfg_repo_root, tmp_path):
    text = (cfg_repo_root / "Pulumi.test.yaml").read_text()
    assert "203.0.113.0/24" in text and "cidr: 10.102.0.0/24" in text
    broken = text.replace("203.0.113.0/24", "0.0.0.0/0").replace("cidr: 10.102.0.0/24", "cidr: 10.101.0.0/24")
    broken = broken.replace("state_volume_gb:", "state_volume_gbs:")
    write(tmp_path, broken, "test")
    code, out, err = run(capsys, check(tmp_path, "test"))
    assert (code, out) == (2, "")
    lines = err.splitlines()
    assert lines[0] == f"{tmp_path / 'Pulumi.test.yaml'}: invalid stack config (1 problem):"
    # pydantic's shape errors come first; fix them and the cross-field rules show.
    assert "  nina:superlink.state_volume_gbs: unknown key; remove it or fix its spelling" in err

    write(tmp_path, broken.replace("state_volume_gbs:", "state_volume_gb:"), "test")
    code, out, err = run(capsys, check(tmp_path, "test"))
    assert code == 2
    ssh, overlap = sorted(err.splitlines()[1:])  # exactly two problems
    assert ssh.startswith("  nina:network.admin_cidrs[0]: 0.0.0.0/0 opens SSH")
    assert "allow_ssh_from_anywhere: true" in ssh
    assert overlap.startswith("  nina:organisations[1].cidr: 10.101.0.0/24 overlaps 10.101.0.0/24 (nina:organisations[0].cidr)")


def test_uat_as_it_was_before_partition_ids_were_required(capsys, cfg_repo_root, tmp_path):
    # The live uat stack's file without its ids: one line per organisation, naming the key
    # and the id list order gave it (so writing them down changes nothing).
    text = (cfg_repo_root / "Pulumi.uat.yaml").read_text()
    assert text.count("      partition_id: ") == 2
    write(tmp_path, "".join(line for line in text.splitlines(keepends=True) if "partition_id:" not in line), "uat")
    code, out, err = run(capsys, check(tmp_path, "uat"))
    assert (code, out) == (2, "")
    lines = err.splitlines()
    assert lines[0].endswith("invalid stack config (2 problems):")
    for i, line in enumerate(lines[1:]):
        assert line.startswith(f"  nina:organisations[{i}].partition_id: is required"), line
        assert f"add partition_id: {i} (" in line and "changes nothing for a live stack" in line, line
    # Adding an organisation after that: it is proposed the next id after the highest.
    appended = text + "    - {slug: new-site, name: New Site, placement: onprem}\n"
    write(tmp_path, appended.replace("partition_id: 0", "partition_id: 4"), "uat")
    code, _, err = run(capsys, check(tmp_path, "uat"))
    assert code == 2 and err.splitlines()[1:] == [
        "  nina:organisations[2].partition_id: is required (it fixes the organisation's partition and, on premise, its VPN address for good); "
        "add partition_id: 5 (the next after the highest in this tenancy, 4: ids of removed organisations are never reused; "
        "if 'new-site' is already deployed, keep its id from the stack outputs, tenancies.main.organisations.new-site.partition_id)"
    ], err


def test_every_problem_on_its_own_line(capsys, tmp_path):
    err = fail(capsys, tmp_path, "config:\n  nina:environment: Bad_Name\n  nina:protect: perhaps\n  nina:nework: {}\n")
    lines = err.splitlines()
    assert "(4 problems)" in lines[0]
    keys = sorted(line.split(": ")[0].strip() for line in lines[1:])
    assert keys == ["nina:environment", "nina:network", "nina:nework", "nina:protect"]


def test_empty_file_reports_required_keys(capsys, tmp_path):
    err = fail(capsys, tmp_path, "")
    assert "nina:environment: is required" in err and "nina:network: is required" in err


def test_file_without_config_key(capsys, tmp_path):
    err = fail(capsys, tmp_path, "secretsprovider: passphrase\n")
    assert "nina:environment: is required" in err


# ---------------------------------------------------------------------------------------
# stack-file problems: one line, exit 2
# ---------------------------------------------------------------------------------------


def one_line(err: str) -> str:
    assert len(err.splitlines()) == 1, err
    return err


def test_missing_stack(capsys, cfg_repo_root):
    code, out, err = run(capsys, check(cfg_repo_root, "prod"))
    assert (code, out) == (2, "")
    one_line(err)
    assert "Pulumi.prod.yaml: no such stack file" in err
    assert "stacks here: test, uat" in err


def test_missing_dir(capsys, tmp_path):
    code, _, err = run(capsys, check(tmp_path / "nope", "test"))
    assert code == 2
    assert "does not exist" in one_line(err)


def test_stack_file_is_a_directory(capsys, tmp_path):
    (tmp_path / "Pulumi.x.yaml").mkdir()
    code, _, err = run(capsys, check(tmp_path, "x"))
    assert code == 2 and "cannot read" in one_line(err)


def test_invalid_yaml(capsys, tmp_path):
    err = one_line(fail(capsys, tmp_path, "config:\n  nina:environment: [test\n  nina:x: 1\n"))
    assert "not valid YAML" in err and "line " in err


def test_tab_indentation(capsys, tmp_path):
    assert "not valid YAML (line 2" in one_line(fail(capsys, tmp_path, "config:\n\tnina:environment: test\n"))


def test_not_utf8(capsys, tmp_path):
    assert "not valid YAML" in one_line(fail(capsys, tmp_path, b"config:\n  nina:environment: \xff\xfe\xfa\n"))


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("- config\n", "top level is a list"),
        ("just a string\n", "top level is a string"),
        ("config: [nina:environment]\n", "`config` is a list"),
        ("config: 7\n", "`config` is a number"),
    ],
)
def test_wrong_shape(capsys, tmp_path, text, words):
    assert words in one_line(fail(capsys, tmp_path, text))


def test_duplicate_keys(capsys, tmp_path):
    err = one_line(fail(capsys, tmp_path, VALID + "  nina:environment: prod\n"))
    assert "duplicate key 'nina:environment'" in err and "line 7" in err


def test_anchors_and_merge_keys_work(capsys, tmp_path):
    text = VALID + "  nina:hosts:\n    - &gw {name: gw, roles: [bastion], flavor: m3.small}\n    - {<<: *gw, name: web, roles: [proxy]}\n"
    write(tmp_path, text)
    assert run(capsys, check(tmp_path, "x")) == (0, "ok\n", "")


def test_alias_cycle(capsys, tmp_path):
    assert "refers to itself" in one_line(fail(capsys, tmp_path, VALID + "  nina:hosts: &h [*h]\n"))


def test_alias_bomb(capsys, tmp_path):
    lines = ["config:", "  a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for prev, name in zip("abcdef", "bcdefg", strict=False):
        lines.append(f"  {name}: &{name} [{', '.join([f'*{prev}'] * 10)}]")
    lines.append("  nina:hosts: [*g]")
    assert "too large" in one_line(fail(capsys, tmp_path, "\n".join(lines) + "\n"))


def test_deeply_nested(capsys, tmp_path):
    assert "nested too deeply" in one_line(fail(capsys, tmp_path, "config:\n  nina:x: " + "[" * 3000 + "]" * 3000 + "\n"))


# ---------------------------------------------------------------------------------------
# secrets and stray namespaces
# ---------------------------------------------------------------------------------------


def test_secure_value_refused(capsys, tmp_path):
    err = fail(capsys, tmp_path, VALID.replace("nina:environment: dev", "nina:environment:\n    secure: v1:abcd"))
    lines = err.splitlines()
    assert "(1 problem)" in lines[0]  # not also "must be a string"
    assert lines[1].startswith("  nina:environment: nina config holds no secrets;")
    assert "plain text" in lines[1]


def test_nested_secure_value_refused(capsys, tmp_path):
    err = fail(capsys, tmp_path, VALID.replace("[203.0.113.0/24]", "[{secure: v1:abcd}]"))
    assert "  nina:network.admin_cidrs[0]: nina config holds no secrets;" in err
    assert len(err.splitlines()) == 2


def test_project_namespace_key(capsys, tmp_path):
    err = fail(capsys, tmp_path, VALID + "  nina-fl:protect: false\n")
    assert "nina-fl:protect: is in the project namespace" in err and "rename it to nina:protect" in err


def test_key_without_namespace(capsys, tmp_path):
    assert "protect: has no namespace; write it as nina:protect" in fail(capsys, tmp_path, VALID + "  protect: false\n")


# ---------------------------------------------------------------------------------------
# usage
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [[], ["config"], ["config", "check"], ["config", "lint", "--stack", "x"], ["bogus"]])
def test_usage_errors_exit_2(capsys, argv):
    code, out, err = run(capsys, argv)
    assert code == 2 and out == ""
    assert "usage: nina" in err


def test_help_exits_0(capsys):
    code, out, _ = run(capsys, ["config", "check", "--help"])
    assert code == 0 and "--stack" in out and "--dir" in out


def test_cli_does_not_import_pulumi(cfg_repo_root):
    code = (
        "import sys; from nina.cli import main; rc = main(['config', 'check', '--stack', 'test', '--dir', sys.argv[1]]);"
        "assert not [m for m in sys.modules if m == 'pulumi' or m.startswith('pulumi.')], 'pulumi imported';"
        "sys.exit(rc)"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(cfg_repo_root)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "ok\n"


# ---------------------------------------------------------------------------------------
# the installed console script
# ---------------------------------------------------------------------------------------


def test_console_script(cfg_repo_root, tmp_path):
    nina = cfg_repo_root / ".venv" / "bin" / "nina"  # what scripts/bootstrap installs
    if not nina.exists():
        nina = VENV_BIN / "nina"
    assert nina.exists(), "run scripts/bootstrap to install the `nina` console script"
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run(
        [str(nina), "config", "check", "--stack", "test"], cwd=cfg_repo_root, capture_output=True, text=True, timeout=60, env=env
    )
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "ok\n", "")

    (tmp_path / "Pulumi.bad.yaml").write_text(VALID.replace("onprem", "on-prem"))
    proc = subprocess.run(
        [str(nina), "config", "check", "--stack", "bad", "--dir", str(tmp_path)], capture_output=True, text=True, timeout=60, env=env
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert "nina:organisations[0].placement: 'on-prem' is not allowed" in proc.stderr
    assert "Traceback" not in proc.stderr


SMTP_AUTH = """\
  nina:monitoring:
    smtp: {smarthost: "smtp.example.edu.au:587", from: fl-ops@example.edu.au, to: [oncall@example.edu.au], auth_username: fl-ops}
"""


def test_the_smtp_password_is_the_one_secret_input(capsys, tmp_path):
    """nina:monitoring_smtp_password, and only it, is taken as a Pulumi secret, exactly when an
    SMTP user name needs it; in plain text it is refused."""
    secret = "  nina:monitoring_smtp_password:\n    secure: v1:abcd\n"
    write(tmp_path, VALID + SMTP_AUTH + secret)
    code, out, err = run(capsys, check(tmp_path, "x"))
    assert code == 0 and out.strip() == "ok", err
    missing = fail(capsys, tmp_path, VALID + SMTP_AUTH)
    assert "nina:monitoring_smtp_password: is not set" in missing and "pulumi config set --secret" in missing
    plain = fail(capsys, tmp_path, VALID + SMTP_AUTH + "  nina:monitoring_smtp_password: hunter2hunter2\n")
    assert "must be a secret, not plain text" in plain and "hunter2" not in plain
    stray = fail(capsys, tmp_path, VALID + secret)
    assert "nothing uses it" in stray
