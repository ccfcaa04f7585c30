"""`systemd-analyze verify` of rendered units in tests (scripts/bootstrap --test-tools installs it;
the tests skip where it is missing).

On a machine where systemd is not PID 1 (a container) `verify` checks how each unit parses (unknown
keys, bad values) and that its programs exist and are executable, but not that User= exists or that
RequiresMountsFor= is a mount; parse problems are printed as "<file>:<line>: ..." yet exit 0, so a
test looks at the lines that name its unit. Lines about other units (a distribution's units pulled
in as dependencies) are not its business."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

SYSTEMD_ANALYZE = shutil.which("systemd-analyze") or ""
needs_systemd_analyze = pytest.mark.skipif(
    not SYSTEMD_ANALYZE, reason="systemd-analyze missing (scripts/bootstrap --test-tools installs it)"
)


def verify(units: Path, names: Sequence[str], about: str | None = None) -> list[str]:
    """`systemd-analyze verify` of the unit files `names` in directory `units` (units they name are
    found beside them: SYSTEMD_UNIT_PATH): the lines of its output that mention `about` (default:
    any of `names`). It exits 0, or reports such a line."""
    proc = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", *(str(units / n) for n in names)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SYSTEMD_UNIT_PATH": f"{units}:"},
        cwd=units,
    )
    marks = [about] if about else list(names)
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if any(m in line for m in marks)]
    assert proc.returncode == 0 or lines, proc.stdout + proc.stderr
    return lines


def verify_text(units: Path, name: str, text: str, programs: Mapping[str, str] | None = None, about: str | None = None) -> list[str]:
    """`verify` of one unit rendered as `text`, written as `units`/`name`, with each program path of
    `programs` replaced by its stand-in here (verify checks that ExecStart's program exists)."""
    for path, here in (programs or {}).items():
        text = text.replace(path, here)
    (units / name).write_text(text)
    return verify(units, [name], about)
