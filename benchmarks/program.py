#!/usr/bin/env python3
"""Benchmark: evaluate the real Pulumi program under mocks for 1, 10 and 100 organisations.

Prints, per size: wall time to evaluate, resources declared, and the longest dependency
chain (in resources) ending at any VM; then t(100)/t(10). Targets (issue 2, 2 cores):
100 organisations < 15 s, t(100)/t(10) < 12, chain to every VM <= 4 and no VM depending
on another VM or a certificate.

    .venv/bin/python benchmarks/program.py [--sizes 1 10 100] [--repeat 3]
"""

from __future__ import annotations

import argparse
import base64
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from harness import INSTANCE, run_program, stack_config

from nina import facts

CERTS = {"tls:index/locallySignedCert:LocallySignedCert", "tls:index/selfSignedCert:SelfSignedCert", "tls:index/certRequest:CertRequest"}


def config_with(n: int) -> dict:
    cfg = stack_config("test")
    cfg["nina:organisations"] = [
        {
            "slug": f"org-{i:03d}",
            "name": f"Organisation {i}",
            "placement": "cloud",
            "partition_id": i,
            "cidr": f"10.{101 + i // 256}.{i % 256}.0/24",
        }
        for i in range(n)
    ]
    return cfg


def chain_stats(run) -> tuple[int, bool]:
    """Longest dependency chain to any VM, and whether every VM is free of VM/certificate dependencies."""
    vms = [r.urn for r in run.registrations if r.type == INSTANCE]
    clean = all(not ({run.by_urn[u].type for u in run.upstream(vm)} & (CERTS | {INSTANCE})) for vm in vms)
    return max(run.chain_length(vm) for vm in vms), clean


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 10, 100])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    run_program(config_with(1))  # warm imports
    times: dict[int, float] = {}
    print(f"{'orgs':>5} {'seconds (median)':>17} {'resources':>10} {'longest chain to a VM':>22} {'VMs wait on VM/cert':>20}")
    for n in args.sizes:
        samples = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            run = run_program(config_with(n))
            samples.append(time.perf_counter() - start)
            assert run.error is None, run.error
        times[n] = statistics.median(samples)
        chain, clean = chain_stats(run)
        custom = sum(1 for r in run.registrations if r.custom)
        print(f"{n:>5} {times[n]:>17.2f} {custom:>10} {chain:>22} {'no' if clean else 'YES':>20}")
    if 10 in times and 100 in times:
        print(f"t(100)/t(10) = {times[100] / times[10]:.1f}")
    # user-data as Nova measures it (base64), for the repo's stacks and the manual's "one large VM".
    sizes = {
        f"{stack}/{name}": len(base64.b64encode(ud.encode()))
        for stack in ("test", "uat")
        for name, ud in run_program(stack_config(stack), stack).user_data().items()
    }
    sizes.update(one_large_vm_sizes())
    largest = max(sizes, key=sizes.__getitem__)
    print(f"largest user-data: {sizes[largest]} bytes after base64 ({largest}; target <= {facts.USER_DATA_TARGET}, Nova's limit 65535)")
    for name, size in sorted(sizes.items()):
        print(f"  {name:<40} {size:>6}")
    return 0


def one_large_vm_sizes() -> dict[str, int]:
    """The all-in-one host of the tests' render configs: bastion, proxy, Keycloak, JupyterHub, SuperLink."""
    from conftest import RENDER_FAKE_VOLUME_ID, render_raw_configs

    from cloudinit.userdata import user_data
    from nina.config import load_config
    from nina.plan import build_plan

    plan = build_plan(load_config(render_raw_configs()["all-in-one"]))
    host = plan.host_by_name["gateway"]
    ud = user_data(plan, host, {v.name: RENDER_FAKE_VOLUME_ID for v in host.volumes})
    return {"all-in-one/gateway (" + ",".join(host.roles) + ")": len(base64.b64encode(ud.encode()))}


if __name__ == "__main__":
    raise SystemExit(main())
