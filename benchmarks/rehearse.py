"""Rehearsal timings: time to ready and per-run time, secured vs --insecure, for n organisations.

    .venv/bin/python benchmarks/rehearse.py [--orgs 2 5 10] [--rounds 3] [--repeat 3] [--no-runs] [--keep DIR]

For each n, a one-tenancy stack with n on-premise organisations (the uat layout) is rehearsed
with nina.rehearse.Rehearsal, secured (TLS, --enable-supernode-auth, keys registered with
nina-membership register-many) and insecure (no TLS, no auth):

- ready: `repeat` fresh federations of each kind, alternated, one at a time; each measured the
  same way, from starting the SuperLink to every SuperNode online (`flwr supernode ls`, polled
  by Rehearsal.wait_online), with Rehearsal.start_federation's bring-up. Prints the medians, the
  secured/insecure ratio and the target (issue 9: <= 1.10 at 10 organisations), and where the
  time went (median seconds from the SuperLink's start to its APIs listening, to the last key
  registered, to every SuperNode online).
- run (unless --no-runs): both federations up side by side, `repeat` `flwr run`s of the
  validation app each, alternated so that machine noise hits both alike; medians and ratio.

Real processes on loopback; no cloud. Timings are noisy on a shared machine: run it quiet.
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
from nina.plan import Plan, build_plan
from nina.rehearse import Rehearsal

READY_TARGET = 1.10  # issue 9: secured/insecure time to ready at 10 organisations
RUN_TARGET = 1.10  # issue 4: secured/insecure run time
VARIANTS = ("secured", "insecure")


def plan_for(n: int) -> Plan:
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


def start(r: Rehearsal, n: int, registration: str = "batch") -> dict[str, float]:
    """Bring the federation up; seconds from starting the SuperLink to each step and to every SuperNode online."""
    r.start_federation(registration=registration)
    r.wait_online(n, timeout=180)
    online = time.monotonic()
    t0 = r.marks["start"]
    steps = {k: v - t0 for k, v in r.marks.items() if k != "start"}
    return {**steps, "ready": online - t0}


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def measure_ready(n: int, repeat: int, workdir: Path, registration: str = "batch") -> dict[str, list[dict[str, float]]]:
    """`repeat` fresh federations of each kind, alternated, one at a time."""
    plan = plan_for(n)
    quiet = lambda line: None  # noqa: E731
    trials: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
    for i in range(repeat):
        for variant in VARIANTS if i % 2 == 0 else reversed(VARIANTS):
            with Rehearsal(plan, workdir / f"{n}-ready-{variant}-{i}", insecure=variant == "insecure", log=quiet) as r:
                trials[variant].append(start(r, n, registration))
    return trials


def run_once(r: Rehearsal, rounds: int, label: str, failures: list[str]) -> float | None:
    """The run's seconds, or None (recorded in `failures`) if not every organisation answered."""
    result = r.run_app(rounds)
    if not result.ok:
        failures.append(f"{label}: {result.error} (logs: {r.dir / 'logs'})")
        return None
    return result.seconds


def measure_runs(n: int, rounds: int, repeat: int, workdir: Path) -> dict[str, Any]:
    """Both federations up side by side (ports are picked apart), runs alternated; medians of `repeat` runs each."""
    plan = plan_for(n)
    quiet = lambda line: None  # noqa: E731
    taken: set[int] = set()  # shared, so the second federation gets other ports
    with (
        Rehearsal(plan, workdir / f"{n}-secured", log=quiet, ports_taken=taken) as secured,
        Rehearsal(plan, workdir / f"{n}-insecure", insecure=True, log=quiet, ports_taken=taken) as insecure,
    ):
        start(secured, n)
        start(insecure, n)
        runs: dict[str, list[float]] = {"secured": [], "insecure": []}
        failures: list[str] = []
        for i in range(repeat):
            order = [("secured", secured), ("insecure", insecure)]
            for label, r in order if i % 2 == 0 else reversed(order):
                seconds = run_once(r, rounds, f"{n} orgs {label}, run {i + 1}", failures)
                if seconds is not None:
                    runs[label].append(seconds)
        restarts = {label: sum(r.restarts().values()) for label, r in order}
    median = {k: statistics.median(v) if v else float("nan") for k, v in runs.items()}
    return {"runs": runs, "median": median, "failures": failures, "restarts": restarts}


def _median(trials: list[dict[str, float]], key: str) -> float:
    values = [t[key] for t in trials if key in t]
    return statistics.median(values) if values else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--orgs", type=int, nargs="+", default=[2, 5, 10])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=3, help="federations / runs per kind (median reported)")
    ap.add_argument("--no-runs", action="store_true", help="measure time to ready only")
    ap.add_argument(
        "--registration",
        choices=("batch", "each"),
        default="batch",
        help="secured bring-up: one nina-membership register-many (default), or one `register <slug>` process per organisation at once",
    )
    ap.add_argument("--keep", type=Path, help="work in this directory and keep it (logs under */logs/)")
    args = ap.parse_args()
    failed = 0
    with contextlib.ExitStack() as stack:
        tmp = args.keep or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="nina-bench-rehearse-")))
        print(
            f"time to ready (SuperLink start -> every SuperNode online), median of {args.repeat} alternated fresh federations;"
            f" secured registration: {args.registration}"
        )
        print(f"{'orgs':>4}  {'secured':>8}  {'insecure':>8}  {'ratio':>5}  target")
        for n in args.orgs:
            trials = measure_ready(n, args.repeat, tmp, args.registration)
            rs, ri = _median(trials["secured"], "ready"), _median(trials["insecure"], "ready")
            ratio = _ratio(rs, ri)
            target = f"<= {READY_TARGET:.2f} " + ("met" if ratio <= READY_TARGET else "NOT met") if n == 10 else "(set at 10 organisations)"
            print(f"{n:>4}  {rs:>7.1f}s  {ri:>7.1f}s  {ratio:>5.2f}  {target}", flush=True)
            for v in VARIANTS:
                readies = " ".join(f"{t['ready']:.1f}" for t in trials[v])
                print(f"      {v:<8} ready {readies}", flush=True)
            print(
                f"      where (medians, s from SuperLink start): APIs listening secured {_median(trials['secured'], 'listening'):.1f}"
                f" / insecure {_median(trials['insecure'], 'listening'):.1f}; secured first key registered"
                f" {_median(trials['secured'], 'first registered'):.1f}, last {_median(trials['secured'], 'registered'):.1f};"
                f" SuperNodes all started secured {_median(trials['secured'], 'supernodes started'):.1f}"
                f" / insecure {_median(trials['insecure'], 'supernodes started'):.1f}",
                flush=True,
            )
        if not args.no_runs:
            print(
                f"\nrun time of validation_app ({args.rounds} rounds), both federations side by side, median of {args.repeat} alternated runs"
            )
            print(f"{'orgs':>4}  {'secured':>8}  {'insecure':>8}  {'ratio':>5}  target")
            for n in args.orgs:
                m = measure_runs(n, args.rounds, args.repeat, tmp)
                ts, ti = m["median"]["secured"], m["median"]["insecure"]
                ratio = _ratio(ts, ti)
                flag = "met" if ratio <= RUN_TARGET else "NOT met"
                print(f"{n:>4}  {ts:>7.1f}s  {ti:>7.1f}s  {ratio:>5.2f}  <= {RUN_TARGET:.2f} {flag}", flush=True)
                print(
                    f"      runs secured {' '.join(f'{t:.1f}' for t in m['runs']['secured'])}"
                    f" | insecure {' '.join(f'{t:.1f}' for t in m['runs']['insecure'])};"
                    f" SuperNode restarts secured {m['restarts']['secured']}, insecure {m['restarts']['insecure']}",
                    flush=True,
                )
                for failure in m["failures"]:
                    print(f"      FAILED (not in the median) {failure}", flush=True)
                failed += len(m["failures"])
    if failed:
        print(f"{failed} run(s) failed: an organisation did not answer a round (see FAILED lines)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
