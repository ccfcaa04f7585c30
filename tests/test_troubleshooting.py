"""nina.troubleshooting: every row is proven by exactly one test (the one it names, marked
`@pytest.mark.troubleshooting(<row id>)`), and README.md's operator table is what the module renders."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from nina import troubleshooting
from nina.troubleshooting import ROWS, Row, TroubleshootingError

TESTS = Path(__file__).parent
ROOT = TESTS.parent


def _marked() -> dict[str, list[str]]:
    """row id -> the tests (`tests/<file>::<test>`) whose decorators name it, read from the test files' syntax."""
    found: dict[str, list[str]] = {}
    for path in sorted(TESTS.glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.FunctionDef):
                continue
            for deco in node.decorator_list:
                if isinstance(deco, ast.Call) and ast.unparse(deco.func) == "pytest.mark.troubleshooting":
                    for arg in deco.args:
                        assert isinstance(arg, ast.Constant) and isinstance(arg.value, str), (
                            f"{path.name}::{node.name}: row ids must be literals"
                        )
                        found.setdefault(arg.value, []).append(f"tests/{path.name}::{node.name}")
    return found


def test_every_row_is_proven_by_exactly_the_test_it_names():
    marked = _marked()
    ids = [r.id for r in ROWS]
    assert len(ids) == len(set(ids)), ids
    assert set(marked) <= set(ids), f"markers name unknown rows: {sorted(set(marked) - set(ids))}"
    for r in ROWS:
        assert marked.get(r.id) == [r.test], f"row {r.id}: marked by {marked.get(r.id)}, names {r.test}"


def test_a_row_without_a_test_or_with_two_is_caught(monkeypatch):
    """The coverage check itself can fail: a row naming a test that does not mark it."""
    orphan = Row("orphan", troubleshooting.OPERATOR, "x", "y", "z", "true", "w", "v", "tests/test_troubleshooting.py::nowhere")
    monkeypatch.setattr(troubleshooting, "ROWS", (*ROWS, orphan))
    monkeypatch.setattr(sys.modules[__name__], "ROWS", troubleshooting.ROWS)
    with pytest.raises(AssertionError, match="row orphan: marked by None"):
        test_every_row_is_proven_by_exactly_the_test_it_names()


def test_the_readme_section_is_the_rendered_one():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = troubleshooting.readme_section()
    assert section in readme, "README.md's troubleshooting table is stale: run .venv/bin/python -m nina.troubleshooting --write README.md"
    assert troubleshooting.replace_section(readme, section) == readme


def test_write_regenerates_only_the_section(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# before\n\n{troubleshooting.BEGIN}\nold table\n{troubleshooting.END}\n\n## after\n")
    proc = subprocess.run(
        [sys.executable, "-m", "nina.troubleshooting", "--write", str(readme)], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, proc.stderr
    assert readme.read_text() == f"# before\n\n{troubleshooting.readme_section()}\n## after\n"
    readme.write_text("no markers\n")
    proc = subprocess.run(
        [sys.executable, "-m", "nina.troubleshooting", "--write", str(readme)], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 1 and "must hold the markers" in proc.stderr and proc.stderr.count("\n") == 1
    assert readme.read_text() == "no markers\n"


def test_every_placeholder_is_known_and_the_tables_are_filled():
    known = set(troubleshooting.FIXED) | set(troubleshooting.PER_SITE)
    for r in ROWS:
        assert r.audience in troubleshooting.AUDIENCES, r.id
        for field in ("symptom", "where", "cause", "check", "shows", "fix"):
            assert troubleshooting.placeholders(getattr(r, field)) <= known, (r.id, field)
    site = troubleshooting.table(troubleshooting.SITE, {"slug": "metro-north", "superlink_host": "10.10.0.10", "fleet_port": "9092"})
    assert "{" not in site and "<slug>" not in site and "10.10.0.10:9092" in site
    operator = troubleshooting.table(troubleshooting.OPERATOR)
    assert "<slug>" in operator and "{" not in operator
    # One row per line, six cells each: no cell text breaks the table.
    for table in (site, operator):
        for line in table.splitlines():
            assert line.replace("\\|", "").count("|") == 7, line
    assert troubleshooting.table(troubleshooting.SITE) == troubleshooting.table(troubleshooting.SITE)


def test_careless_input_is_refused():
    with pytest.raises(TroubleshootingError, match="no value for nope"):
        troubleshooting.fill("ls {nope}", {})
    with pytest.raises(TroubleshootingError, match="audience"):
        troubleshooting.rows("everyone")
    with pytest.raises(KeyError):
        troubleshooting.row("no-such-row")
    with pytest.raises(TroubleshootingError, match="markers"):
        troubleshooting.replace_section(f"{troubleshooting.BEGIN}\n{troubleshooting.END}\n{troubleshooting.BEGIN}\n", "x")


def test_a_pipe_in_a_cell_is_escaped():
    assert troubleshooting._cell("a | b") == "a \\| b"


@pytest.mark.skipif(not __import__("shutil").which("shellcheck"), reason="shellcheck is not installed")
def test_check_commands_pass_shellcheck(tmp_path):
    values = {name: "x" for name in troubleshooting.PER_SITE}
    for r in ROWS:
        script = tmp_path / f"{r.id}.sh"
        script.write_text("#!/bin/sh\n" + troubleshooting.fill(r.check, values) + "\n")
        proc = subprocess.run(["shellcheck", "-s", "sh", str(script)], capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, (r.id, proc.stdout)
