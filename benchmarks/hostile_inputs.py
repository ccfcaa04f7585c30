#!/usr/bin/env python3
"""Hostile and careless inputs to the `nina` CLI (tests/hostile.py): how each class ends.

    .venv/bin/python benchmarks/hostile_inputs.py [--against CHECKOUT] [--verbose]

Each case runs `python -m nina.cli ...` in its own process (2 GiB of memory, 60 s), from this
checkout's code or, with --against, another checkout's (for before/after figures: the corpus
is this checkout's). Prints, per class: tried, refused cleanly (exit 2, one line per problem,
no traceback), crashed (traceback, killed, timed out), accepted (exit 0), and other exits.
"""

from __future__ import annotations

import argparse
import collections
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "tests"))

import hostile  # noqa: E402

MEMORY = 2 * 1024**3
TIMEOUT = 60


def _limit() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY, MEMORY))


def run(case: hostile.Case, code_root: Path) -> hostile.Outcome:
    with tempfile.TemporaryDirectory(prefix="nina-hostile-") as tmp:
        argv = case.prepare(Path(tmp))
        env = {**os.environ, "PYTHONPATH": str(code_root)}
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "nina.cli", *argv],
                cwd=code_root,
                env=env,
                capture_output=True,
                timeout=TIMEOUT,
                preexec_fn=_limit,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return hostile.Outcome("crashed", None, f"timed out after {TIMEOUT} s")
        stderr = proc.stderr.decode(errors="replace")
        if proc.returncode < 0:
            return hostile.Outcome("crashed", proc.returncode, f"killed by signal {-proc.returncode}\n{stderr}")
        return hostile.judge(proc.returncode, stderr, crashed=False)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--against", type=Path, default=HERE, help="checkout whose nina.cli to run (default: this one)")
    ap.add_argument("--verbose", action="store_true", help="print each case's verdict and last stderr line")
    args = ap.parse_args()
    counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for case in hostile.cases():
        outcome = run(case, args.against.resolve())
        counts[case.cls][outcome.verdict] += 1
        if args.verbose:
            last = (outcome.stderr.strip().splitlines() or [""])[-1]
            print(f"{outcome.verdict:<9} {case.cls:<22} {case.name:<38} {last[:110]}")
    print(f"\ncode: {args.against.resolve()}")
    print(f"{'class':<22} {'tried':>5} {'refused':>8} {'crashed':>8} {'accepted':>9} {'other':>6}")
    total: collections.Counter[str] = collections.Counter()
    for cls, c in counts.items():
        total.update(c)
        print(f"{cls:<22} {sum(c.values()):>5} {c['refused']:>8} {c['crashed']:>8} {c['accepted']:>9} {c['failed']:>6}")
    print(f"{'all':<22} {sum(total.values()):>5} {total['refused']:>8} {total['crashed']:>8} {total['accepted']:>9} {total['failed']:>6}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
