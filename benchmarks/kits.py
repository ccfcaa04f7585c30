#!/usr/bin/env python3
"""Benchmark: `export_kits(outputs, None, out_dir)` for a stack of N organisations.

Builds realistic outputs (benchmarks/outputs_fixture.py: real P-384 PKI; every 5th
organisation in the cloud, every 7th keeping its own keys), then times parsing, checking,
rendering, archiving and writing every kit. Target (2 cores): 100 organisations < 5 s.

    .venv/bin/python benchmarks/kits.py [--orgs 100] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from outputs_fixture import build_outputs, many_tenancies

from nina.kit import export_kits

TARGET_SECONDS = 5.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orgs", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    t0 = time.perf_counter()
    outputs = build_outputs(many_tenancies(args.orgs)).outputs
    fixture = time.perf_counter() - t0
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeat):
            out = Path(tmp) / f"run{i}"
            start = time.perf_counter()
            paths = export_kits(outputs, None, out)
            times.append(time.perf_counter() - start)
            size = sum(p.stat().st_size for p in paths)
            assert len(paths) == args.orgs
            if i:
                first = sorted((Path(tmp) / "run0").iterdir())
                assert [p.read_bytes() for p in first] == [p.read_bytes() for p in sorted(out.iterdir())], "not deterministic"
    best, median = min(times), statistics.median(times)
    print(f"outputs for {args.orgs} organisations built in {fixture:.2f} s (fixture, not timed below)")
    print(
        f"export_kits(all): {args.orgs} kits, {size / 1024:.0f} KiB in total; "
        f"best {best:.2f} s, median {median:.2f} s over {args.repeat} runs "
        f"({1000 * median / args.orgs:.1f} ms per kit); target < {TARGET_SECONDS:.0f} s: "
        f"{'ok' if median < TARGET_SECONDS else 'MISSED'}"
    )
    return 0 if median < TARGET_SECONDS else 1


if __name__ == "__main__":
    sys.exit(main())
