"""Resource identity: a live stack's resources keep their URNs, or are found through an alias.

A resource whose URN changes (new name, type or parent chain) is deleted and created anew by
`pulumi up` unless an alias names its old URN: a new CA key would invalidate every hospital's
kit, a new SuperNode key unregisters the organisation, and the Cinder volumes hold state.
`fixtures/urns-7975d59.json` lists every URN the program declared at commit 7975d59 (before
the components took focused arguments and the Platform's private methods became components),
for the repo's stacks and two more shapes (several tenancies with cloud and on-premise
organisations; the "one large VM"). Each must still be declared, or be taken over through an
alias as the engine resolves aliases (`harness.engine_match`).

The fixture records live stacks' identity: never regenerate it to make this test pass. When a
resource's identity changes on purpose, add the resource's alias, not a new fixture.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from harness import Run, engine_match, run_program, stack_config

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "urns-7975d59.json"


def cases() -> dict[str, tuple[dict, str]]:
    """Config (full keys) and stack name of each recorded case."""
    from conftest import render_raw_configs

    raw = render_raw_configs()
    full = lambda c: {f"nina:{k}": v for k, v in c.items()}  # noqa: E731
    return {
        "test": (stack_config("test"), "test"),
        "uat": (stack_config("uat"), "uat"),
        "multi-tenancy": (full(raw["multi-tenancy"]), "test"),
        "all-in-one": (full(raw["all-in-one"]), "test"),
    }


def declared(case: str) -> Run:
    config, stack = cases()[case]
    run = run_program(config, stack)
    assert run.error is None, run.error
    return run


def recorded(case: str) -> set[str]:
    return set(json.loads(FIXTURE.read_text())["urns"][case])


@pytest.mark.parametrize("case", ["test", "uat", "multi-tenancy", "all-in-one"])
def test_every_resource_of_a_live_stack_keeps_its_identity(case):
    run = declared(case)
    old = recorded(case)
    match = engine_match(run, old)
    assert not match.errors, match.errors
    lost = match.lost(old)
    assert not lost, f"{len(lost)} resource(s) would be deleted and created anew:\n" + "\n".join(sorted(lost))
    # ... and nothing physical is new: only the new components (which hold no cloud state).
    created = sorted(r.urn for r in run.registrations if r.urn not in match.old_of)
    assert all(not r.custom for r in run.registrations if r.urn not in match.old_of), created


def record() -> None:
    """Writes the fixture from the program as it is now (only at a commit whose identities a
    live stack holds: see the module docstring)."""
    urns = {case: sorted(r.urn for r in declared(case).registrations) for case in sorted(cases())}
    doc = {"commit": "7975d59", "urns": urns}
    FIXTURE.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    record()
