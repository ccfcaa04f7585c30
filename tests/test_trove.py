"""The Trove allow-list script, run with bash against a stand-in `openstack` CLI that records
its calls and answers like python-troveclient 8.11 (`show -f json` gives `public` and
`allowed_cidrs`). The stand-in's argument handling is checked against the real troveclient
parser, so a wrong flag fails here rather than during `pulumi up`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nina.trove import restrict_access_script

FAKE_OPENSTACK = textwrap.dedent("""\
    #!{python}
    import json, os, sys
    state_file = os.environ["FAKE_STATE"]
    state = json.load(open(state_file))
    args = sys.argv[1:]
    with open(os.environ["FAKE_LOG"], "a") as log:
        log.write(json.dumps(args) + "\\n")
    assert args[:2] == ["database", "instance"], args
    verb, instance, rest = args[2], args[3], args[4:]
    if verb == "show":
        state["polls"] += 1
        if "-c" in rest and rest[rest.index("-c") + 1] == "status":
            print("BUILD" if state["polls"] < 2 else "ACTIVE")
        else:
            print(json.dumps({{"public": state["public"], "allowed_cidrs": state["cidrs"]}}))
    elif verb == "update":
        from troveclient.osc.v1.database_instances import UpdateDatabaseInstance
        parsed = UpdateDatabaseInstance(None, None).get_parser("openstack database instance update").parse_args(args[3:])
        if not os.environ.get("FAKE_IGNORE_UPDATE"):
            state["public"] = parsed.public
            state["cidrs"] = parsed.allowed_cidrs
    json.dump(state, open(state_file, "w"))
""")


@pytest.fixture()
def fake_cloud(tmp_path: Path):
    tool = tmp_path / "openstack"
    tool.write_text(FAKE_OPENSTACK.format(python=sys.executable))
    tool.chmod(0o755)
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"public": True, "cidrs": ["0.0.0.0/0"], "polls": 0}))
    env = {
        **os.environ,
        "OPENSTACK": str(tool),
        "FAKE_STATE": str(state),
        "FAKE_LOG": str(tmp_path / "log"),
        "NINA_DB_INSTANCE_ID": "db-1",
        "NINA_DB_POLL_SECONDS": "0",
    }
    return tmp_path, env


def run_script(tmp_path: Path, env: dict, cidrs: list[str]) -> subprocess.CompletedProcess:
    script = tmp_path / "restrict.sh"
    script.write_text(restrict_access_script(cidrs))
    return subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60)


def test_restricts_to_the_given_cidrs_and_verifies(fake_cloud):
    tmp_path, env = fake_cloud
    result = run_script(tmp_path, env, ["10.100.0.11/32", "10.100.0.12/32"])
    assert result.returncode == 0, result.stderr
    assert "restricted to 10.100.0.11/32, 10.100.0.12/32" in result.stdout
    calls = [json.loads(line) for line in (tmp_path / "log").read_text().splitlines()]
    update = next(c for c in calls if c[2] == "update")
    assert update == [
        "database",
        "instance",
        "update",
        "db-1",
        "--is-private",
        "--allowed-cidr",
        "10.100.0.11/32",
        "--allowed-cidr",
        "10.100.0.12/32",
    ]
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["public"] is False and state["cidrs"] == ["10.100.0.11/32", "10.100.0.12/32"]


def test_fails_when_the_allow_list_did_not_take(fake_cloud):
    tmp_path, env = fake_cloud
    result = run_script(tmp_path, {**env, "FAKE_IGNORE_UPDATE": "1"}, ["10.100.0.0/24"])
    assert result.returncode != 0
    assert "expected private with ['10.100.0.0/24']" in result.stderr


def test_refuses_an_empty_or_world_open_allow_list():
    with pytest.raises(ValueError):
        restrict_access_script([])
    with pytest.raises(ValueError):
        restrict_access_script(["0.0.0.0/0"])


def test_script_is_shellcheck_clean(tmp_path):
    if not shutil.which("shellcheck"):
        pytest.skip("shellcheck not installed (scripts/bootstrap --test-tools installs it)")
    script = tmp_path / "restrict.sh"
    script.write_text(restrict_access_script(["10.100.0.0/24"]))
    result = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
