"""Rehearsal timings: federation ready and per-run time, secured vs --insecure, for n organisations.

    .venv/bin/python benchmarks/rehearse.py [--orgs 2 5 10] [--rounds 3] [--repeat 3] [--keep DIR]

For each n, a one-tenancy stack with n on-premise organisations (the uat layout) is rehearsed
twice, side by side, with nina.rehearse.Rehearsal: secured (TLS, --enable-supernode-auth, keys registered with
nina-membership) and insecure (no TLS, no auth). Prints the time from starting the SuperLink to
every SuperNode online (`flwr supernode ls`), the `flwr run` time of the validation app, and the
secured/insecure run-time ratio (target <= 1.10). Real processes on loopback; no cloud.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nina.config import load_config
from nina.plan import build_plan
from nina.rehearse import Rehearsal

TARGET_RATIO = 1.10  # issue 4: secured/insecure run time


def plan_for(n: int):
    return build_plan(
        load_config(
            {
                "environment": "bench",
                "network": {"server_cidr": "10.110.0.0/24", "vpn_pool_cidr": "192.168.99.0/24", "admin_cidrs": ["203.0.113.0/24"]},
                "organisations": [
                    {"slug": f"org-{i:02d}", "name": f"Organisation {i}", "placement": "onprem", "partition_id": i} for i in range(n)
                ],
            }
        )
    )


def start(r: Rehearsal, n: int) -> float:
    """Bring the federation up; seconds from starting the SuperLink to every SuperNode online."""
    t0 = time.monotonic()
    r.start_superlink()
    r.register_all()
    r.start_supernodes()
    r.wait_online(n, timeout=120)
    return time.monotonic() - t0


def run_once(r: Rehearsal, rounds: int, label: str, failures: list[str]) -> float | None:
    """The run's seconds, or None (recorded in `failures`) if not every organisation answered."""
    result = r.run_app(rounds)
    if not result.ok:
        failures.append(f"{label}: {result.error} (logs: {r.dir / 'logs'})")
        return None
    return result.seconds


def measure(n: int, rounds: int, repeat: int, workdir: Path) -> dict[str, Any]:
    """Both federations up side by side (ports are picked apart), runs alternated so that
    machine noise hits both alike; medians of `repeat` runs each."""
    plan = plan_for(n)
    quiet = lambda line: None  # noqa: E731
    taken: set[int] = set()  # shared, so the second federation gets other ports
    with (
        Rehearsal(plan, workdir / f"{n}-secured", log=quiet, ports_taken=taken) as secured,
        Rehearsal(plan, workdir / f"{n}-insecure", insecure=True, log=quiet, ports_taken=taken) as insecure,
    ):
        ready = {"secured": start(secured, n), "insecure": start(insecure, n)}
        runs: dict[str, list[float]] = {"secured": [], "insecure": []}
        failures: list[str] = []
        for i in range(repeat):
            order = [("secured", secured), ("insecure", insecure)]
            for label, r in order if i % 2 == 0 else reversed(order):
                seconds = run_once(r, rounds, f"{n} orgs {label}, run {i + 1}", failures)
                if seconds is not None:
                    runs[label].append(seconds)
    median = {k: statistics.median(v) if v else float("nan") for k, v in runs.items()}
    return {"ready": ready, "runs": runs, "median": median, "failures": failures}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--orgs", type=int, nargs="+", default=[2, 5, 10])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=3, help="runs per federation (median reported)")
    ap.add_argument("--keep", type=Path, help="work in this directory and keep it (logs under */logs/)")
    args = ap.parse_args()
    print(f"{'orgs':>4}  {'ready secured':>13}  {'ready insecure':>14}  {'run secured':>11}  {'run insecure':>12}  {'ratio':>5}")
    failed = 0
    with contextlib.ExitStack() as stack:
        tmp = args.keep or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="nina-bench-rehearse-")))
        for n in args.orgs:
            m = measure(n, args.rounds, args.repeat, tmp)
            rs, ri = m["ready"]["secured"], m["ready"]["insecure"]
            ts, ti = m["median"]["secured"], m["median"]["insecure"]
            ratio = ts / ti if ti else float("nan")
            flag = "" if ratio <= TARGET_RATIO else f"  (> {TARGET_RATIO:.2f})"
            print(f"{n:>4}  {rs:>12.1f}s  {ri:>13.1f}s  {ts:>10.1f}s  {ti:>11.1f}s  {ratio:>5.2f}{flag}", flush=True)
            print(
                f"      runs secured {' '.join(f'{t:.1f}' for t in m['runs']['secured'])}"
                f" | insecure {' '.join(f'{t:.1f}' for t in m['runs']['insecure'])}",
                flush=True,
            )
            for failure in m["failures"]:
                print(f"      FAILED (not in the median) {failure}", flush=True)
            failed += len(m["failures"])
    print(
        f"({args.rounds} rounds of validation_app per run, median of {args.repeat} alternated runs; "
        "ready = SuperLink start to all SuperNodes online)"
    )
    if failed:
        print(f"{failed} run(s) failed: an organisation did not answer a round (see FAILED lines)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
