"""ServerApp: FedAvg over every connected SuperNode; fails if an expected partition misses a round.

Each round it prints one line `NINA-ROUND {json}` (round, partition ids and hosts that answered,
losses) and at the end `NINA-SUMMARY {json}`; with run config `summary-path` it also writes the
summary there. A missing partition, an error reply, too few nodes or a node whose training
environment differs from run config `environment` (the tenancy's pins) raises RuntimeError, so the
run ends as failed (`flwr ls` shows it) and the summary says why, naming node, package and versions.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from nina_validation import environment, task

app = ServerApp()


def _expected(spec: str, seen: set[int]) -> set[int]:
    """The partitions that must answer this round: those of run config `expected-partitions`
    (the stack's membership: `nina rehearse` and the README's runs name them), or, when it is
    empty, every partition that has answered in any round so far. SuperNodes report only their
    own partition id: ids have gaps after removals, so no count could stand in for the list."""
    spec = spec.strip()
    if spec:
        return {int(p) for p in spec.replace(" ", "").split(",") if p}
    return set(seen)


def _emit(prefix: str, data: dict) -> None:
    print(f"{prefix} {json.dumps(data, sort_keys=True)}", flush=True)


def _finish(summary: dict, path: str) -> None:
    _emit("NINA-SUMMARY", summary)
    if path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(p.suffix + ".tmp")
        tmp.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
        tmp.replace(p)


def _reply(content: RecordDict) -> tuple[int, str]:
    """The partition id and host name a node's reply states, or ValueError saying what is missing
    or mistyped (an old or altered ClientApp: its reply is an error reply, not a crash)."""
    try:
        metrics, node = content["metrics"], content["node"]
        pid = task.integer(metrics["partition-id"])
        for key in ("loss-before", "loss-after"):
            task.number(metrics[key])
        host = node["hostname"]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"malformed reply ({type(exc).__name__}: {exc})"[:200]) from None
    if not isinstance(host, str):
        raise ValueError(f"malformed reply (hostname is a {type(host).__name__}, not a string)")
    return pid, host


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    rounds = int(cfg["num-server-rounds"])
    expected_nodes = max(int(cfg.get("expected-nodes", 0)), 1)
    summary_path = str(cfg.get("summary-path", ""))
    summary: dict = {"ok": False, "rounds": [], "num-server-rounds": rounds, "expected-nodes": expected_nodes}
    try:
        deadline = time.monotonic() + float(cfg.get("wait-seconds", 120))
        while len(nodes := sorted(grid.get_node_ids())) < expected_nodes:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"only {len(nodes)} of {expected_nodes} expected SuperNodes connected within {cfg.get('wait-seconds')} s"
                )
            time.sleep(1)
        expected_env = environment.parse_pins(str(cfg.get("environment", "")))
        model = task.to_record(task.initial_model())
        seen: set[int] = set()
        for rnd in range(1, rounds + 1):
            nodes = sorted(grid.get_node_ids())
            config = ConfigRecord(
                {
                    "server-round": rnd,
                    "local-epochs": int(cfg["local-epochs"]),
                    "learning-rate": float(cfg["learning-rate"]),
                    "environment-packages": ",".join(sorted(expected_env)),
                }
            )
            messages = [
                Message(
                    content=RecordDict({"arrays": model, "config": config}),
                    dst_node_id=n,
                    message_type=MessageType.TRAIN,
                    group_id=str(rnd),
                )
                for n in nodes
            ]
            replies = list(grid.send_and_receive(messages, timeout=float(cfg.get("round-timeout", 120))))
            good = [r for r in replies if not r.has_error()]
            errors = {int(r.metadata.src_node_id): r.error.reason for r in replies if r.has_error()}
            answered: dict[int, dict[str, Any]] = {}
            envs: dict[str, dict[str, Any]] = {}
            env_errors: list[str] = []
            for r in list(good):
                try:
                    pid, host = _reply(r.content)
                except ValueError as exc:  # counted as that node's error reply
                    errors[int(r.metadata.src_node_id)] = str(exc)
                    good.remove(r)
                    continue
                m = r.content["metrics"]
                # Its report, with the whole installed set for `nina validate`'s comparison with the whole lock.
                record, problems = environment.judged(f"partition {pid} ({host})", r.content.get("environment", None), expected_env)
                if record is not None:
                    envs[str(pid)] = record
                env_errors += problems
                answered[pid] = {
                    "host": host,
                    "node-id": int(r.metadata.src_node_id),
                    "loss-before": task.number(m["loss-before"]),
                    "loss-after": task.number(m["loss-after"]),
                }
            seen |= set(answered)
            expected = _expected(str(cfg.get("expected-partitions", "")), seen)
            missing = sorted(expected - set(answered))
            line = {
                "round": rnd,
                "partitions": sorted(answered),
                "hosts": {str(p): a["host"] for p, a in sorted(answered.items())},
                "nodes-asked": len(nodes),
                "expected": sorted(expected),
                "missing": missing,
                "errors": {str(k): v for k, v in errors.items()},
                "loss-after": {str(p): round(a["loss-after"], 6) for p, a in sorted(answered.items())},
                "environments": dict(sorted(envs.items())),
                "environment-errors": env_errors,
            }
            summary["rounds"].append(line)
            _emit("NINA-ROUND", line)
            if missing or errors or not good:
                raise RuntimeError(
                    f"round {rnd}: partitions {missing} did not answer"
                    + (f"; error replies {errors}" if errors else "")
                    + (f" ({len(nodes)} nodes connected)" if not good else "")
                )
            if env_errors:
                raise RuntimeError(f"round {rnd}: a node's training environment is not its tenancy's: " + "; ".join(env_errors))
            model = aggregate_arrayrecords([r.content for r in good], "num-examples")
        summary["ok"] = True
    except Exception as exc:
        summary["error"] = f"{type(exc).__name__}: {exc}"
        _finish(summary, summary_path)
        raise
    _finish(summary, summary_path)
