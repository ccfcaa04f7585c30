"""A cloud GPU SuperNode's delivery (nina.gpu, `<host>-gpu`): the driver step's files and unit
(`systemd-analyze verify`), its place in the program under the mock harness (only GPU hosts get it;
a new nina:gpu.driver_branch changes that delivery and replaces no VM; port 9400 only from the
monitoring host), and nothing of it in user-data."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess

import pytest
from harness import INSTANCE, Registration, before_and_after, changed_names, instances_unchanged, payload_of, run_program, stack_config

from nina import facts, gpu, render, services
from nina.host import gpu_driver

SYSTEMD_ANALYZE = shutil.which("systemd-analyze") or ""
REMOTE_COMMAND = "command:remote:Command"
RULE = "openstack:networking/secGroupRule:SecGroupRule"


IP = "10.101.0.10"
EXPORTER = f"{facts.SYSTEMD_SYSTEM_DIR}/{facts.DCGM_EXPORTER_UNIT}"


def test_delivery_carries_the_step_its_conf_and_units():
    payload = json.loads(gpu.gpu_delivery(570, IP))
    files = {f["path"]: f for f in payload["files"]}
    assert set(files) == {
        facts.NVIDIA_REPO_LIST,
        EXPORTER,
        facts.GPU_DRIVER_CONF,
        facts.GPU_DRIVER_BIN,
        f"{facts.SYSTEMD_SYSTEM_DIR}/{facts.GPU_DRIVER_UNIT}",
    }
    assert gpu_driver.parse_config(files[facts.GPU_DRIVER_CONF]["content"]) == gpu_driver.Config(
        570,
        (
            "nvidia-driver-570-server",
            "nvidia-utils-570-server",
            "datacenter-gpu-manager-4-core",
            "datacenter-gpu-manager-4-cuda12",
            "datacenter-gpu-manager-exporter",
        ),
    )
    # 580 is CUDA 13: DCGM's build for it.
    assert "datacenter-gpu-manager-4-cuda13" in gpu.driver_packages(580)
    # NVIDIA's repository is trusted only with the pinned keyring, for this source alone.
    assert files[facts.NVIDIA_REPO_LIST]["content"].endswith(f"deb [signed-by={facts.NVIDIA_REPO_KEYRING}] {facts.NVIDIA_REPO_URL} /\n")
    # The exporter listens on the host's fixed address only, never on all addresses.
    assert f"--address {IP}:{facts.DCGM_EXPORTER_PORT} " in files[EXPORTER]["content"]
    assert ":9400 " not in files[EXPORTER]["content"].replace(f"{IP}:9400 ", "")
    assert files[facts.GPU_DRIVER_BIN]["mode"] == 0o755 and files[facts.GPU_DRIVER_BIN]["content"] == render.launcher("gpu_driver")
    assert payload["restart"] == [facts.GPU_DRIVER_UNIT] and payload["run"] == [facts.GPU_DRIVER_UNIT]
    assert all((f["owner"], f["group"]) == ("root", "root") for f in payload["files"])
    assert "nina/host/gpu_driver.py" in render.host_programs()
    # The unit alerts and the node exporter's systemd collector watch the step.
    assert {facts.GPU_DRIVER_UNIT, facts.DCGM_UNIT, facts.DCGM_EXPORTER_UNIT} <= set(services.watched_units())


def test_delivery_is_deterministic_and_refuses_unknown_branches():
    assert gpu.gpu_delivery(580, IP) == gpu.gpu_delivery(580, IP) != gpu.gpu_delivery(570, IP)
    for bad in (575, "580", 580.0, True):
        with pytest.raises(ValueError, match="not one of"):
            gpu.gpu_delivery(bad, IP)  # type: ignore[arg-type]
    for ip in ("0.0.0.0 --web", "", "10.0.0.300", "::"):
        with pytest.raises(ValueError):
            gpu.gpu_delivery(580, ip)


@pytest.mark.skipif(not SYSTEMD_ANALYZE, reason="systemd-analyze missing (scripts/bootstrap --test-tools installs it)")
def test_units_pass_systemd_analyze_verify(tmp_path):
    # dcgm-exporter is not installed here (NVIDIA's repository): verify checks that ExecStart's
    # program exists, so the exporter's unit is verified with a TEST DOUBLE at the same place in a
    # copy whose ExecStart names the double; every other line is the rendered unit's.
    double = tmp_path / "test-doubles" / "dcgm-exporter"
    double.parent.mkdir()
    double.write_text("#!/bin/sh\n# TEST DOUBLE of dcgm-exporter\nexit 0\n")
    double.chmod(0o755)
    units = {
        facts.GPU_DRIVER_UNIT: gpu.driver_service(580),
        facts.DCGM_EXPORTER_UNIT: gpu.exporter_service(IP).replace(f"ExecStart={facts.DCGM_EXPORTER_BIN} ", f"ExecStart={double} "),
        # Required by the exporter's unit: the vendor's unit, as far as verify needs it.
        "vpn-" + facts.DCGM_EXPORTER_UNIT: gpu.exporter_service("192.168.99.11", vpn=True).replace(
            f"ExecStart={facts.DCGM_EXPORTER_BIN} ", f"ExecStart={double} "
        ),
        facts.DCGM_UNIT: "[Unit]\nDescription=TEST DOUBLE of DCGM's host engine unit\n[Service]\nExecStart=/bin/true\n",
    }
    for name, text in units.items():
        (tmp_path / name).write_text(text)
    for name in (facts.GPU_DRIVER_UNIT, facts.DCGM_EXPORTER_UNIT, "vpn-" + facts.DCGM_EXPORTER_UNIT):
        proc = subprocess.run([SYSTEMD_ANALYZE, "verify", str(tmp_path / name)], capture_output=True, text=True, timeout=60)
        lines = (proc.stdout + proc.stderr).splitlines()
        assert proc.returncode == 0 and not [line for line in lines if name in line], lines
    assert str(double) in units[facts.DCGM_EXPORTER_UNIT] and f"ExecStart={facts.DCGM_EXPORTER_BIN} " in gpu.exporter_service(IP)
    text = gpu.driver_service(580)
    assert f"ExecStart={facts.HOST_PYTHON} -I {facts.GPU_DRIVER_BIN}\n" in text
    assert "RemainAfterExit=yes\n" in text and "WantedBy=multi-user.target\n" in text


# --- the program under the mock harness ----------------------------------------------------------


def gpu_stack(branch: int | None = None, dcgm_version: str | None = None) -> dict:
    cfg = copy.deepcopy(stack_config("test"))
    cfg["nina:supernode"] = {"gpu_flavor": "reservation:abc"}
    orgs = cfg["nina:organisations"]
    cloud = next(o for o in orgs if o["placement"] == "cloud")
    cloud["gpu"] = True
    cfg["nina:hosts"] = [{"name": "gateway", "roles": ["bastion"]}, {"name": "monitor", "roles": ["monitoring"]}]
    gpu_cfg = {"driver_branch": branch, "dcgm_version": dcgm_version}
    if any(v is not None for v in gpu_cfg.values()):
        cfg["nina:gpu"] = {k: v for k, v in gpu_cfg.items() if v is not None}
    return cfg


def gpu_deliveries(run) -> dict[str, dict]:
    return {r.name: json.loads(payload_of(r.inputs["stdin"])) for r in run.of_type(REMOTE_COMMAND) if r.name.endswith("-gpu-install")}


def gpu_steps(run) -> set[str]:
    """Each GPU host's delivery command and the two steps that follow it."""
    return {f"{n.removesuffix('-install')}-{step}" for n in gpu_deliveries(run) for step in ("install", "reboot", "ready")}


def commands(run) -> dict[str, Registration]:
    return {r.name: r for r in run.of_type(REMOTE_COMMAND)}


@pytest.fixture(scope="module")
def branch_change():
    return before_and_after(gpu_stack(), gpu_stack(570), "test")


def test_only_gpu_supernodes_get_the_driver_delivery(branch_change):
    before, _after = branch_change
    deliveries = gpu_deliveries(before)
    gpu_hosts = {r.name for r in before.of_type(INSTANCE) if r.name.startswith("supernode-")}
    assert len(deliveries) == 1
    (name,) = deliveries
    host = name.removesuffix("-gpu-install")
    assert host in gpu_hosts
    plan_ip = next(
        r.inputs["fixedIps"][0]["ipAddress"] for r in before.of_type("openstack:networking/port:Port") if r.name == f"{host}-port"
    )
    exporter = next(f for f in deliveries[name]["files"] if f["path"] == EXPORTER)
    assert f"--address {plan_ip}:{facts.DCGM_EXPORTER_PORT} " in exporter["content"]
    conf = next(f for f in deliveries[name]["files"] if f["path"] == facts.GPU_DRIVER_CONF)
    assert json.loads(conf["content"])["branch"] == facts.GPU_DRIVER_BRANCH
    # Without a GPU organisation: no such delivery.
    plain = run_program(stack_config("test"))
    assert plain.error is None and gpu_deliveries(plain) == {}


def test_a_new_driver_branch_replaces_no_vm_and_re_runs_only_the_gpu_delivery_and_its_steps(branch_change):
    before, after = branch_change
    instances_unchanged(before, after)
    gone, added, changed = changed_names(before, after)
    assert not gone and not added
    assert changed == gpu_steps(before), changed
    (payload,) = gpu_deliveries(after).values()
    conf = next(f for f in payload["files"] if f["path"] == facts.GPU_DRIVER_CONF)
    assert json.loads(conf["content"]) == {"branch": 570, "dcgm_version": None, "packages": gpu.driver_packages(570)}


def test_user_data_of_a_gpu_supernode_holds_nothing_of_the_driver(branch_change):
    before, _after = branch_change
    for name, text in before.user_data().items():
        assert "nvidia" not in text.lower(), name
        assert facts.GPU_DRIVER_UNIT not in text, name


def test_dcgm_port_is_open_only_from_the_monitoring_host(branch_change):
    before, _after = branch_change
    rules = [r for r in before.of_type(RULE) if r.inputs["portRangeMin"] == facts.DCGM_EXPORTER_PORT]
    assert [r.name for r in rules] == [f"monitoring->gpu-tcp-{facts.DCGM_EXPORTER_PORT}"]
    assert rules[0].inputs["remoteGroupId"] == "sg-monitoring-id" and not rules[0].inputs.get("remoteIpPrefix")


def test_a_dcgm_pin_changes_only_the_gpu_delivery_and_its_steps_and_pins_dcgm(branch_change):
    before, _after = branch_change
    after = run_program(gpu_stack(dcgm_version="1:4.5.2-1"))
    assert after.error is None, after.error
    instances_unchanged(before, after)
    gone, added, changed = changed_names(before, after)
    assert not gone and not added
    assert changed == gpu_steps(before), changed
    (payload,) = gpu_deliveries(after).values()
    conf = gpu_driver.parse_config(next(f for f in payload["files"] if f["path"] == facts.GPU_DRIVER_CONF)["content"])
    assert conf.dcgm_version == "1:4.5.2-1" and "datacenter-gpu-manager-4-core=1:4.5.2-1" in conf.packages
    # Unpinned (the default): the packages float.
    (payload,) = gpu_deliveries(before).values()
    conf = gpu_driver.parse_config(next(f for f in payload["files"] if f["path"] == facts.GPU_DRIVER_CONF)["content"])
    assert conf.dcgm_version is None and not any("=" in p for p in conf.packages)


# --- the reboot pulumi waits for (`<host>-gpu-reboot`, `<host>-gpu-ready`) ------------------------


def test_gpu_hosts_get_the_reboot_and_ready_steps_after_their_delivery(branch_change):
    before, _after = branch_change
    cmds = commands(before)
    (install,) = gpu_deliveries(before)
    name = install.removesuffix("-install")
    host = name.removesuffix("-gpu")
    assert {n for n in cmds if n.startswith(f"{host}-gpu")} == {install, f"{name}-reboot", f"{name}-ready"}
    reboot, ready = cmds[f"{name}-reboot"], cmds[f"{name}-ready"]
    # The reboot step after the delivery's command; the ready step after the reboot step.
    assert cmds[install].urn in reboot.dependencies and reboot.urn in ready.dependencies
    assert reboot.parent == ready.parent == cmds[install].parent  # under the `<host>-gpu` delivery
    # Each behind the delivery guard, then the host program's step (the launcher nina-gpu-driver).
    guard = render.bootstrap_guard()
    assert reboot.inputs["create"] == f"{guard}\nsudo {facts.GPU_DRIVER_BIN} reboot"
    assert ready.inputs["create"] == f"{guard}\nsudo {facts.GPU_DRIVER_BIN} ready"
    # The reboot step's report (its stdout; the mocks' is empty) is the ready step's stdin.
    assert ready.inputs.get("stdin", "") == reboot.outputs.get("stdout", "") == ""
    # Both re-run exactly when the delivery does: its VM and its revision (command and bundle).
    instance = next(r for r in before.of_type(INSTANCE) if r.name == host)
    revision = render.delivery_revision(cmds[install].inputs["create"], cmds[install].inputs["stdin"])
    assert reboot.inputs["triggers"] == ready.inputs["triggers"] == [f"{instance.name}-id", revision]
    assert cmds[install].inputs["triggers"] == [f"{instance.name}-id"]
    # The ready step redials for a reboot's length; the bastion (up throughout) and the rest as before.
    assert ready.inputs["connection"]["dialErrorLimit"] == gpu.reboot_dial_error_limit() > 100
    assert ready.inputs["connection"]["proxy"]["dialErrorLimit"] == 30
    assert reboot.inputs["connection"]["dialErrorLimit"] == cmds[install].inputs["connection"]["dialErrorLimit"] == 30
    assert {k: v for k, v in ready.inputs["connection"].items() if k != "dialErrorLimit"} == {
        k: v for k, v in reboot.inputs["connection"].items() if k != "dialErrorLimit"
    }


def test_hosts_without_a_gpu_get_no_reboot_steps(branch_change):
    before, _after = branch_change
    gpu_names = {n.removesuffix("-install") for n in gpu_deliveries(before)}
    steps = {n for n in commands(before) if n.endswith(("-reboot", "-ready"))}
    assert steps == {f"{n}-{s}" for n in gpu_names for s in ("reboot", "ready")}
    plain = run_program(stack_config("test"))
    assert plain.error is None and not [n for n in commands(plain) if n.endswith(("-reboot", "-ready"))]


def test_a_change_that_does_not_re_run_the_gpu_delivery_does_not_reboot(branch_change):
    before, _after = branch_change
    cfg = gpu_stack()
    cfg["nina:monitoring"] = {**cfg.get("nina:monitoring", {}), "alerts": {"gpu_temperature_celsius": 80}}
    after = run_program(cfg)
    assert after.error is None, after.error
    _gone, _added, changed = changed_names(before, after)
    assert changed and not changed & gpu_steps(before), changed


def test_the_dial_budget_covers_the_reboot_wait():
    first, factor, cap = facts.PULUMI_DIAL_RETRY
    limit = gpu.reboot_dial_error_limit()
    waits = [min(first * factor**i, cap) for i in range(limit)]
    # pulumi-command gives up after `limit` failed dials, having waited between them:
    assert facts.GPU_REBOOT_WAIT_SECONDS <= sum(waits) < facts.GPU_REBOOT_WAIT_SECONDS + cap
    assert gpu.reboot_dial_error_limit(0) == 0 and gpu.reboot_dial_error_limit(1) < gpu.reboot_dial_error_limit(60)
