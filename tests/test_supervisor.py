"""The rehearsal's supervisor (nina.rehearse.Supervisor, RestartPolicy): a SuperNode runs as its
systemd unit would run it. In-process, with tiny Python children instead of SuperNodes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from test_render import unit_directives

from nina import facts, render
from nina.rehearse import Proc, RehearsalError, RestartPolicy, Supervisor


def _wait_for(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def _gone(pid: int) -> bool:
    """Whether no process `pid` is left (a zombie counts as gone: it is only waiting to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


class Children:
    """Starts `python -c code` as the rehearsal starts a SuperNode (own process group, log file)."""

    def __init__(self, tmp_path: Path, code: str) -> None:
        self.tmp_path, self.code = tmp_path, code
        self.started: list[Proc] = []

    def __call__(self) -> Proc:
        log = self.tmp_path / f"child-{len(self.started)}.log"
        with open(log, "w") as fh:
            popen = subprocess.Popen(
                [sys.executable, "-c", self.code, str(self.tmp_path)], stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
            )
        proc = Proc(f"child-{len(self.started)}", popen, log)
        self.started.append(proc)
        return proc


SLEEPER = "import time; time.sleep(600)"
EXIT_3 = "import time; time.sleep(0.2); raise SystemExit(3)"
EXIT_0 = "raise SystemExit(0)"
# Leaves a grandchild in its process group (as flower-supernode leaves flower-superexec), then exits.
WITH_GRANDCHILD = """
import subprocess, sys, pathlib, time
g = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
out = pathlib.Path(sys.argv[1]) / "grandchildren"
with open(out, "a") as fh:
    fh.write(f"{g.pid}\\n")
time.sleep(0.3)
raise SystemExit(1)
"""


def policy(restart: str = "always", restart_sec: float = 0.1, burst: int = 100) -> RestartPolicy:
    return RestartPolicy("test.service", restart, restart_sec, 60.0, burst)


class Supervised:
    """Makes Supervisors that log into `logs`; `stop_all()` stops every one it made."""

    def __init__(self) -> None:
        self.made: list[Supervisor] = []
        self.logs: list[str] = []

    def __call__(self, start: Children, pol: RestartPolicy) -> Supervisor:
        sup = Supervisor("child", start, pol, self.logs.append, poll=0.02)
        self.made.append(sup)
        return sup

    def stop_all(self) -> None:
        for sup in self.made:
            sup.stop()


@pytest.fixture
def supervised():
    made = Supervised()
    try:
        yield made
    finally:
        made.stop_all()


# --- the policy, read from the unit --------------------------------------------------------


def test_policy_of_the_supernode_unit_is_the_units_own():
    unit = render.supernode_service()
    d = unit_directives(unit)
    p = RestartPolicy.from_unit(unit, facts.SUPERNODE_UNIT)
    assert p.restart == d["Service.Restart"][-1] == "always"
    assert p.restart_sec == float(d["Service.RestartSec"][-1]) > 0
    assert (p.start_limit_interval, p.start_limit_burst) == (10.0, 5)  # systemd's defaults: the unit sets none
    assert p.describe() == f"{facts.SUPERNODE_UNIT}: Restart=always, RestartSec={d['Service.RestartSec'][-1]}s"


def test_policy_parsing():
    text = """[Unit]
StartLimitIntervalSec=1min
StartLimitBurst=3
[Service]
# Restart=no
Restart=on-failure
RestartSec=100ms
Restart=always
"""
    p = RestartPolicy.from_unit(text, "x.service")
    assert (p.restart, p.restart_sec, p.start_limit_interval, p.start_limit_burst) == ("always", 0.1, 60.0, 3)
    bare = RestartPolicy.from_unit("[Service]\nExecStart=/bin/true\n", "y.service")
    assert (bare.restart, bare.restart_sec) == ("no", 0.1)
    with pytest.raises(RehearsalError, match="Restart=sometimes"):
        RestartPolicy.from_unit("[Service]\nRestart=sometimes\n", "z.service")
    with pytest.raises(RehearsalError, match="RestartSec"):
        RestartPolicy.from_unit("[Service]\nRestart=always\nRestartSec=5 fortnights\n", "z.service")


@pytest.mark.parametrize(
    "restart, restarted",
    [
        # returncodes: 0, 1, SIGTERM (clean for systemd), SIGKILL, SIGSEGV
        ("always", [True, True, True, True, True]),
        ("no", [False, False, False, False, False]),
        ("on-failure", [False, True, False, True, True]),
        ("on-success", [True, False, True, False, False]),
        ("on-abnormal", [False, False, False, True, True]),
    ],
)
def test_policy_restarts_after(restart, restarted):
    codes = [0, 1, -signal.SIGTERM, -signal.SIGKILL, -signal.SIGSEGV]
    assert [policy(restart).restarts_after(c) for c in codes] == restarted


# --- the supervisor ------------------------------------------------------------------------


def test_a_process_that_exits_is_restarted_after_restart_sec(tmp_path, supervised):
    start = Children(tmp_path, EXIT_3)
    sup = supervised(start, policy("always", 0.1))
    _wait_for(lambda: sup.restarts >= 2, 30, "two restarts")
    assert sup.exits[:2] == [3, 3]
    assert len({p.popen.pid for p in start.started}) == len(start.started) >= 3
    assert any("child exited (exit code 3); restarting in 0.1 s (test.service: Restart=always" in line for line in supervised.logs)
    assert any("child restarted (restart 1," in line for line in supervised.logs)


def test_kill_is_a_crash_and_is_restarted(tmp_path, supervised):
    start = Children(tmp_path, SLEEPER)
    sup = supervised(start, policy("always", 0.1))
    first = sup.proc
    sup.kill()
    _wait_for(lambda: sup.restarts == 1 and sup.proc is not first, 30, "the restart")
    assert first.popen.returncode == -signal.SIGKILL and sup.exits == [-signal.SIGKILL]
    assert sup.proc.alive() and sup.state == "running"
    assert any("child exited (killed by SIGKILL)" in line for line in supervised.logs)


def test_stop_never_restarts_and_leaves_nothing_running(tmp_path, supervised):
    start = Children(tmp_path, SLEEPER)
    sup = supervised(start, policy("always", 0.0))
    pid = sup.proc.popen.pid
    sup.stop()
    assert sup.state == "stopped" and not sup.active
    assert not sup._thread.is_alive()  # nothing is left that could restart it
    assert len(start.started) == 1 and sup.restarts == 0 and sup.exits == []
    assert _gone(pid)


def test_stop_while_waiting_to_restart(tmp_path, supervised):
    start = Children(tmp_path, EXIT_0)
    sup = supervised(start, policy("always", 600.0))  # would restart only after 10 minutes
    _wait_for(lambda: sup.state == "restarting", 30, "the exit")
    sup.stop()
    assert sup.state == "stopped" and not sup._thread.is_alive()
    assert len(start.started) == 1 and sup.restarts == 0


def test_the_rest_of_the_group_is_stopped_before_the_restart(tmp_path, supervised):
    start = Children(tmp_path, WITH_GRANDCHILD)
    sup = supervised(start, policy("always", 0.1))
    _wait_for(lambda: sup.restarts >= 1, 30, "a restart")
    grandchildren = [int(line) for line in (tmp_path / "grandchildren").read_text().split()]
    # KillMode=control-group: nothing of the exited run outlives it (SIGKILL lands in a moment)
    _wait_for(lambda: _gone(grandchildren[0]), 10, "the first run's grandchild to go")
    sup.stop()
    last = [int(line) for line in (tmp_path / "grandchildren").read_text().split()][-1]
    _wait_for(lambda: _gone(last), 10, "the last grandchild to go")  # reparented to init, reaped by it


def test_on_failure_does_not_restart_a_clean_exit(tmp_path, supervised):
    sup = supervised(Children(tmp_path, EXIT_0), policy("on-failure", 0.0))
    _wait_for(lambda: sup.state == "exited", 30, "the exit")
    assert sup.restarts == 0 and sup.exits == [0] and not sup.active
    assert any("not restarted" in line for line in supervised.logs)


def test_start_limit_leaves_it_failed(tmp_path, supervised):
    start = Children(tmp_path, EXIT_0)
    sup = supervised(start, policy("always", 0.0, burst=3))
    _wait_for(lambda: sup.state == "failed", 30, "the start limit")
    assert len(start.started) == 3 and sup.restarts == 2
    assert any("start request repeated too quickly" in line for line in supervised.logs)


def test_no_orphans_after_stop(tmp_path, supervised):
    start = Children(tmp_path, SLEEPER)
    sup = supervised(start, policy("always", 0.05))
    for _ in range(2):
        before = sup.proc
        os.kill(before.popen.pid, signal.SIGKILL)
        _wait_for(lambda b=before: sup.proc is not b, 30, "a restart")  # type: ignore[misc]
    sup.stop()
    assert sup.restarts == 2
    assert all(_gone(p.popen.pid) for p in start.started)
