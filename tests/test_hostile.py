"""Every hostile or careless input of tests/hostile.py is refused cleanly: exit 2, one line per
problem naming what is wrong, no traceback (benchmarks/hostile_inputs.py prints the counts)."""

from __future__ import annotations

from pathlib import Path

import hostile
import pytest

CASES = hostile.cases()


@pytest.mark.parametrize("case", CASES, ids=[f"{c.cls}: {c.name}" for c in CASES])
def test_refused_cleanly(case: hostile.Case, tmp_path: Path) -> None:
    outcome = hostile.run_in_process(case, tmp_path)
    assert outcome.verdict == "refused", (outcome.code, outcome.stderr[-2000:])
    lines = outcome.stderr.splitlines()
    assert lines and all(line.strip() for line in lines), outcome.stderr
    assert case.expect in outcome.stderr, outcome.stderr
    # What is printed is itself printable: a refusal never echoes the control character.
    assert all(ch == "\n" or ch.isprintable() for ch in outcome.stderr), repr(outcome.stderr)


def test_judge_tells_the_outcomes_apart() -> None:
    assert hostile.judge(2, "nina: x: bad\n", crashed=False).verdict == "refused"
    assert hostile.judge(2, "", crashed=False).verdict == "failed"
    assert hostile.judge(0, "", crashed=False).verdict == "accepted"
    assert hostile.judge(1, "Traceback (most recent call last):\n", crashed=False).verdict == "crashed"
    assert hostile.judge(None, "", crashed=True).verdict == "crashed"


def test_a_valid_stack_passes_the_same_runner(tmp_path: Path) -> None:
    """The runner itself: the unbroken input is accepted, so a refusal above is the case's own."""
    ok = hostile.Case("control", "valid uat", hostile._stack_text(hostile.uat_text()), "")
    assert hostile.run_in_process(ok, tmp_path).verdict == "accepted"
