"""Rehearsal timings: federation ready and per-run time, secured vs --insecure, for n organisations.

    .venv/bin/python benchmarks/rehearse.py [--orgs 2 5 10] [--rounds 3]

For each n, a one-tenancy stack with n on-premise organisations (the uat layout) is rehearsed
twice with nina.rehearse.Rehearsal: secured (TLS, --enable-supernode-auth, keys registered with
nina-membership) and insecure (no TLS, no auth). Prints the time from starting the SuperLink to
every SuperNode online (`flwr supernode ls`), the `flwr run` time of the validation app, and the
secured/insecure run-time ratio (target <= 1.10). Real processes on loopback; no cloud.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nina.config import load_config  # noqa: E402
from nina.plan import build_plan  # noqa: E402
from nina.rehearse import Rehearsal  # noqa: E402


def plan_for(n: int):
    return build_plan(load_config({
        "environment": "bench",
        "network": {"server_cidr": "10.110.0.0/24", "vpn_pool_cidr": "192.168.99.0/24", "admin_cidrs": ["203.0.113.0/24"]},
        "organisations": [{"slug": f"org-{i:02d}", "name": f"Organisation {i}", "placement": "onprem"} for i in range(n)],
    }))


def measure(n: int, rounds: int, insecure: bool, workdir: Path) -> tuple[float, float]:
    plan = plan_for(n)
    with Rehearsal(plan, workdir / f"{n}-{'insecure' if insecure else 'secured'}", insecure=insecure,
                   log=lambda line: None) as r:
        t0 = time.monotonic()
        r.start_superlink()
        r.register_all()
        r.start_supernodes()
        r.wait_online(n, timeout=120)
        ready = time.monotonic() - t0
        result = r.run_app(rounds)
        if not result.ok:
            raise SystemExit(f"{n} orgs ({'insecure' if insecure else 'secured'}): run failed: {result.error}")
        return ready, result.seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--orgs", type=int, nargs="+", default=[2, 5, 10])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    print(f"{'orgs':>4}  {'ready secured':>13}  {'ready insecure':>14}  {'run secured':>11}  {'run insecure':>12}  {'ratio':>5}")
    with tempfile.TemporaryDirectory(prefix="nina-bench-rehearse-") as tmp:
        for n in args.orgs:
            rs, ts = measure(n, args.rounds, False, Path(tmp))
            ri, ti = measure(n, args.rounds, True, Path(tmp))
            ratio = ts / ti if ti else float("nan")
            flag = "" if ratio <= 1.10 else "  (> 1.10)"
            print(f"{n:>4}  {rs:>12.1f}s  {ri:>13.1f}s  {ts:>10.1f}s  {ti:>11.1f}s  {ratio:>5.2f}{flag}", flush=True)
    print(f"({args.rounds} rounds of validation_app per run; ready = SuperLink start to all SuperNodes online)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
