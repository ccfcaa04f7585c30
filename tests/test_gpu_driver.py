"""nina-gpu-driver (nina.host.gpu_driver): installs Ubuntu's NVIDIA server driver and reboots at
most once per branch. This machine has no GPU: `HostDouble` is a TEST DOUBLE of the host (dpkg,
apt-get, nvidia-smi, shutdown), with the program's real marker file in a temporary directory."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess

import pytest

from nina import facts, gpu, troubleshooting
from nina.host import gpu_driver
from nina.host.failure import Failure

GPU_LIST = "GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-8f6b1c2e-0000-0000-0000-000000000000)"
SMI_DOWN = "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."


class HostDouble(gpu_driver.System):
    """TEST DOUBLE: packages, nvidia-smi and the reboot are simulated; the marker is a real file."""

    def __init__(self, tmp_path, installed=(), smi=(9, SMI_DOWN), reboot_required=False, install_fails=False, served=None):
        super().__init__(
            marker=str(tmp_path / "lib/nina/gpu-driver-reboot"),
            reboot_required=str(tmp_path / "reboot-required"),
            keyring=str(tmp_path / "keyrings/nina-nvidia-cuda.gpg"),
            pending=str(tmp_path / "run/nina/gpu-reboot-pending"),
            boot_id=str(tmp_path / "boot_id"),
        )
        self.tmp_path = tmp_path
        (tmp_path / "boot_id").write_text(BOOT_1 + "\n")  # the real file's format; boot() changes it
        self.events: list[str] = []  # the reboot step's actions on the system, in order
        self.stop_ssh_fails = False
        # Each unit's states, returned one per ask (the last one stays); all active by default.
        self.states: dict[str, list[tuple[str, str]]] = {}
        self.still_booting = False
        self.now = 0.0
        self.served = served  # what the key's URL answers (None: not asked for in these tests)
        self.fetches = 0
        self.monitoring_started = 0
        self.packages: dict[str, str] = {}  # name -> installed version
        self._add(installed)
        self.smi_answer = smi
        self.reboots: list[str] = []
        self.installs: list[list[str]] = []
        self.install_fails = install_fails
        if reboot_required:
            (tmp_path / "reboot-required").write_text("*** System restart required ***\n")

    def _add(self, specs):
        for spec in specs:
            name, _, version = spec.partition("=")
            self.packages[name] = version or "1.0-1"

    def installed_version(self, package):
        return self.packages.get(package)

    def install(self, packages):
        if self.install_fails:
            raise Failure("apt-get install -y --no-install-recommends x failed (exit 100): E: Unable to locate package")
        self.installs.append(list(packages))
        self._add(packages)

    def smi(self):
        return self.smi_answer

    def schedule_reboot(self, message):
        self.reboots.append(message)

    def fetch_key(self):
        self.fetches += 1
        assert self.served is not None, "the key was fetched but the test serves none"
        return self.served

    def start_monitoring(self):
        self.monitoring_started += 1

    def reboot_now(self, message):
        self.events.append(f"reboot in 5 s: {message}")

    def cancel_scheduled_reboot(self):
        self.events.append("cancel the one-minute reboot")

    def stop_ssh(self):
        if self.stop_ssh_fails:
            raise Failure("systemctl stop ssh.socket ssh.service failed (exit 1): test")
        self.events.append("stop ssh")

    def boot(self, boot_id=None):
        """The reboot: a new boot id, and /run emptied (tmpfs)."""
        (self.tmp_path / "boot_id").write_text((boot_id or BOOT_2) + "\n")
        (self.tmp_path / "run/nina/gpu-reboot-pending").unlink(missing_ok=True)

    def unit_state(self, unit):
        states = self.states.get(unit, [("active", "exited" if unit == facts.GPU_DRIVER_UNIT else "running")])
        return states.pop(0) if len(states) > 1 else states[0]

    def booting(self):
        return self.still_booting

    def last_line(self, unit):
        return f"nina-gpu-driver: FAILED: nvidia-smi fails ({SMI_DOWN})" if unit == facts.GPU_DRIVER_UNIT else ""

    def clock(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


BOOT_1 = "55e7bba5-9a63-45bc-beb6-0bc6c1caff9d"
BOOT_2 = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
PINNED = "0" * 40  # what the tests pin instead of NVIDIA's fingerprint (their own key's, below)


@pytest.fixture(scope="module")
def test_key(tmp_path_factory) -> tuple[bytes, str]:
    """A throwaway OpenPGP key made by the real gpg, armored, and its fingerprint."""
    home = tmp_path_factory.mktemp("gnupg")
    home.chmod(0o700)
    gpg = ["gpg", "--homedir", str(home), "--batch", "--pinentry-mode", "loopback", "--passphrase", ""]
    subprocess.run(
        [*gpg, "--quick-gen-key", "nina test repository <test@example.invalid>", "ed25519", "sign", "never"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    armored = subprocess.run([*gpg, "--armor", "--export"], check=True, capture_output=True, timeout=60).stdout
    (fpr,) = gpu_driver.fingerprints(armored)
    return armored, fpr


@pytest.fixture(autouse=True)
def keyring_in_place(monkeypatch, request):
    """Most tests are about the driver: the repository key's step finds its keyring in place."""
    if "repository" not in request.node.name:
        monkeypatch.setattr(gpu_driver, "ensure_repository_key", lambda system: "NVIDIA's repository key is in place (test)")


def conf(branch: int = 580) -> gpu_driver.Config:
    return gpu_driver.parse_config(gpu.driver_conf(branch))


def test_a_fresh_host_installs_then_reboots_once_then_is_done(tmp_path):
    host = HostDouble(tmp_path)
    said = gpu_driver.ensure(conf(), host)
    assert host.installs == [gpu.driver_packages(580)]
    assert host.reboots == ["nina-gpu-driver: loading the NVIDIA driver branch 580"]
    assert host.monitoring_started == 0  # DCGM waits for a driver that answers
    assert "rebooting in one minute to load driver branch 580" in said
    assert (tmp_path / "lib/nina/gpu-driver-reboot").read_text() == "580\n"
    # The pending reboot is recorded for this boot, under /run.
    assert json.loads((tmp_path / "run/nina/gpu-reboot-pending").read_text()) == {"boot_id": BOOT_1, "branch": 580}
    # After the reboot the module is loaded: nothing installed, no reboot.
    host.smi_answer = (0, GPU_LIST)
    assert gpu_driver.ensure(conf(), host).startswith(f"driver branch 580 loaded; 1 GPU(s): {GPU_LIST}; nvidia-dcgm.service and")
    assert len(host.installs) == 1 and len(host.reboots) == 1
    assert host.monitoring_started == 1


def test_a_driver_that_still_fails_after_its_reboot_never_reboots_again(tmp_path):
    host = HostDouble(tmp_path, reboot_required=True)
    gpu_driver.ensure(conf(), host)
    for _boot in range(3):  # every later boot: the unit fails, the host stays up
        with pytest.raises(Failure, match="after the reboot for driver branch 580; not rebooting again"):
            gpu_driver.ensure(conf(), host)
    assert len(host.reboots) == 1


def test_a_new_branch_is_installed_and_gets_its_own_reboot(tmp_path):
    host = HostDouble(tmp_path, installed=set(gpu.driver_packages(580)), smi=(0, GPU_LIST))
    (tmp_path / "lib/nina").mkdir(parents=True)
    (tmp_path / "lib/nina/gpu-driver-reboot").write_text("580\n")
    host.smi_answer = (9, "Failed to initialize NVML: Driver/library version mismatch")
    gpu_driver.ensure(conf(570), host)
    assert host.installs == [["nvidia-driver-570-server", "nvidia-utils-570-server", "datacenter-gpu-manager-4-cuda12"]]
    assert len(host.reboots) == 1
    assert (tmp_path / "lib/nina/gpu-driver-reboot").read_text() == "570\n"


def test_an_installed_driver_that_fails_without_a_pending_reboot_is_a_failure(tmp_path):
    host = HostDouble(tmp_path, installed=set(gpu.driver_packages(580)))
    with pytest.raises(Failure, match="no reboot is pending"):
        gpu_driver.ensure(conf(), host)
    assert host.reboots == []
    assert not (tmp_path / "lib/nina/gpu-driver-reboot").exists()


def test_a_host_without_a_gpu_says_so(tmp_path):
    host = HostDouble(tmp_path, installed=set(gpu.driver_packages(580)), smi=(0, ""), reboot_required=True)
    gpu_driver.ensure(conf(), host)
    with pytest.raises(Failure, match="nvidia-smi lists no GPU"):
        gpu_driver.ensure(conf(), host)


def test_an_apt_failure_fails_the_step_without_a_reboot(tmp_path):
    host = HostDouble(tmp_path, install_fails=True)
    with pytest.raises(Failure, match="Unable to locate package"):
        gpu_driver.ensure(conf(), host)
    assert host.reboots == []


@pytest.mark.parametrize(
    "text",
    [
        "",
        "[]",
        json.dumps({"branch": 575, "packages": ["nvidia-driver-575-server", "nvidia-utils-575-server"]}),
        json.dumps({"branch": "580", "packages": ["nvidia-driver-580-server", "nvidia-utils-580-server"]}),
        json.dumps({"branch": 580, "packages": ["nvidia-driver-580-server", "curl"]}),
        json.dumps({"branch": 580, "packages": ["nvidia-driver-580-server", "nvidia-utils-580-server"], "x": 1}),
        # nina:gpu.dcgm_version reaches apt-get's argv: only a Debian version, matching the packages.
        json.dumps({"branch": 580, "dcgm_version": None, "packages": gpu.driver_packages(580)} | {"x": 1}),
        json.dumps({"branch": 580, "dcgm_version": "1:4.5.2-1 --yes", "packages": gpu.driver_packages(580)}),
        json.dumps({"branch": 580, "dcgm_version": 4, "packages": gpu.driver_packages(580)}),
        json.dumps({"branch": 580, "dcgm_version": "1:4.5.2-1", "packages": gpu.driver_packages(580)}),
        json.dumps({"branch": 580, "dcgm_version": None, "packages": gpu.driver_packages(580, "1:4.5.2-1")}),
        json.dumps({"branch": 580, "dcgm_version": "1:4.5.2-1", "packages": gpu.driver_packages(580, "1:4.5.3-1")}),
        json.dumps({"branch": 580, "packages": ["nvidia-driver-580-server; rm -rf /", "nvidia-utils-580-server"]}),
    ],
)
def test_a_configuration_nina_did_not_write_is_refused(text):
    with pytest.raises(Failure) as info:
        gpu_driver.parse_config(text)
    assert info.value.code == 2


def test_main_reports_each_step_in_one_line_and_exits_by_outcome(tmp_path, capsys):
    path = tmp_path / "gpu-driver.json"
    path.write_text(gpu.driver_conf(580))
    host = HostDouble(tmp_path, installed=set(gpu.driver_packages(580)), smi=(0, GPU_LIST))
    assert gpu_driver.main(["--conf", str(path)], host) == 0
    assert capsys.readouterr().err.endswith(
        f"nina-gpu-driver: driver branch 580 loaded; 1 GPU(s): {GPU_LIST}; {facts.DCGM_UNIT} and {facts.DCGM_EXPORTER_UNIT} started\n"
    )
    host.smi_answer = (9, SMI_DOWN)
    assert gpu_driver.main(["--conf", str(path)], host) == 1
    assert capsys.readouterr().err.splitlines()[-1].startswith("nina-gpu-driver: FAILED: nvidia-smi fails (NVIDIA-SMI has failed")
    assert gpu_driver.main(["--conf", str(tmp_path / "missing.json")], host) == 2


def test_the_real_system_reads_and_writes_its_marker(tmp_path):
    system = gpu_driver.System(marker=str(tmp_path / "var/lib/nina/m"), reboot_required=str(tmp_path / "rr"))
    assert system.marker() is None and not system.reboot_required()
    system.set_marker(580)
    assert system.marker() == "580"
    assert oct((tmp_path / "var/lib/nina/m").stat().st_mode & 0o777) == "0o644"
    # This machine has no NVIDIA driver: the real nvidia-smi is not found, and says so.
    rc, out = system.smi()
    assert rc != 0 and out


def test_facts_paths_are_the_defaults():
    system = gpu_driver.System()
    assert system.marker_path == facts.GPU_DRIVER_MARKER and system.reboot_required_path == facts.REBOOT_REQUIRED


# --- NVIDIA's repository key (real gpg, a throwaway key of the test's own) ----------------------


def test_repository_key_is_written_only_with_the_pinned_fingerprint(tmp_path, test_key):
    armored, fpr = test_key
    host = HostDouble(tmp_path, served=armored)
    said = gpu_driver.ensure_repository_key(host, pinned=fpr)
    assert said.endswith(f"written to {host.keyring_path}")
    keyring = (tmp_path / "keyrings/nina-nvidia-cuda.gpg").read_bytes()
    assert not keyring.startswith(b"-----BEGIN")  # dearmored: what apt's signed-by reads
    assert gpu_driver.fingerprints(keyring) == [fpr]
    # In place: not fetched again.
    assert gpu_driver.ensure_repository_key(host, pinned=fpr).endswith("is in place") and host.fetches == 1


def test_repository_key_with_another_fingerprint_is_refused_and_nothing_written(tmp_path, test_key):
    armored, fpr = test_key
    host = HostDouble(tmp_path, served=armored)
    with pytest.raises(Failure, match=f"holds {fpr}, not the pinned {facts.NVIDIA_REPO_FINGERPRINT}: refusing it"):
        gpu_driver.ensure_repository_key(host)
    assert not (tmp_path / "keyrings").exists()


@pytest.mark.parametrize(
    "served", [b"", b"<html>captive portal</html>", b"-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nAAAA\n-----END PGP PUBLIC KEY BLOCK-----\n"]
)
def test_repository_answers_that_are_no_key_are_refused(tmp_path, served):
    host = HostDouble(tmp_path, served=served)
    with pytest.raises(Failure, match="no OpenPGP key"):
        gpu_driver.ensure_repository_key(host)
    assert not (tmp_path / "keyrings").exists()


def test_repository_keyring_replaced_by_another_key_is_fetched_again(tmp_path, test_key):
    armored, fpr = test_key
    host = HostDouble(tmp_path, served=armored)
    (tmp_path / "keyrings").mkdir()
    (tmp_path / "keyrings/nina-nvidia-cuda.gpg").write_bytes(b"not a key")
    gpu_driver.ensure_repository_key(host, pinned=fpr)
    assert host.fetches == 1 and gpu_driver.fingerprints((tmp_path / "keyrings/nina-nvidia-cuda.gpg").read_bytes()) == [fpr]


def test_repository_key_step_comes_before_apt(tmp_path, test_key):
    armored, _fpr = test_key
    host = HostDouble(tmp_path, served=armored)
    with pytest.raises(Failure, match="refusing it"):
        gpu_driver.ensure(conf(), host)
    assert host.installs == [] and host.reboots == []


# --- DCGM pinned by nina:gpu.dcgm_version -----------------------------------------------------

PIN = "1:4.5.2-1"


def test_a_pinned_dcgm_is_installed_at_its_version_and_a_new_pin_reinstalls_only_dcgm(tmp_path):
    pinned = gpu_driver.parse_config(gpu.driver_conf(580, PIN))
    assert pinned.dcgm_version == PIN
    assert pinned.packages[2:4] == (f"datacenter-gpu-manager-4-core={PIN}", f"datacenter-gpu-manager-4-cuda13={PIN}")
    assert pinned.packages[4] == "datacenter-gpu-manager-exporter"  # its own version scheme: not pinned
    # The driver and the exporter are there; DCGM is at another version than the pin.
    host = HostDouble(tmp_path, installed=[*gpu.driver_packages(580), "datacenter-gpu-manager-4-core=1:4.6.0-1"], smi=(0, GPU_LIST))
    host.packages["datacenter-gpu-manager-4-cuda13"] = "1:4.6.0-1"
    gpu_driver.ensure(pinned, host)
    assert host.installs == [[f"datacenter-gpu-manager-4-core={PIN}", f"datacenter-gpu-manager-4-cuda13={PIN}"]]
    assert host.reboots == []  # DCGM is not the driver: no reboot
    # At its version: nothing to do. Unpinned again: any installed version will do.
    gpu_driver.ensure(pinned, host)
    gpu_driver.ensure(conf(580), host)
    assert len(host.installs) == 1


def test_the_real_install_allows_a_pin_to_go_down(monkeypatch, tmp_path):
    seen: list[list[str]] = []

    def run(argv, **kwargs):
        seen.append(list(argv))
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr(gpu_driver.subprocess, "run", run)
    gpu_driver.System().install([f"datacenter-gpu-manager-4-core={PIN}"])
    assert seen[-1] == ["apt-get", "install", "-y", "--no-install-recommends", "--allow-downgrades", f"datacenter-gpu-manager-4-core={PIN}"]


def test_the_real_system_reads_dpkgs_version(tmp_path):
    # dpkg-query is real on this machine: a package every Debian system has, and one that is absent.
    system = gpu_driver.System()
    version = system.installed_version("dpkg")
    assert version and re.fullmatch(facts.DEBIAN_VERSION_PATTERN, version), version
    assert system.installed_version("datacenter-gpu-manager-4-core-not-a-package") is None


# --- the reboot pulumi waits for: `reboot` and `ready` (<host>-gpu-reboot, <host>-gpu-ready) ----


def pending_reboot(tmp_path) -> HostDouble:
    """A fresh host right after its delivery: driver installed, reboot pending for this boot."""
    host = HostDouble(tmp_path)
    gpu_driver.ensure(conf(), host)
    assert host.reboots and host.events == []
    return host


def test_the_reboot_step_reboots_once_and_ready_waits_for_the_new_boot(tmp_path, capsys):
    host = pending_reboot(tmp_path)
    report = gpu_driver.reboot(host)
    assert report == f"rebooting from boot {BOOT_1}"
    # The near reboot first (whatever fails next, the host reboots), then the minute's cancelled, then sshd.
    assert host.events == [
        "reboot in 5 s: nina-gpu-driver: loading the NVIDIA driver branch 580",
        "cancel the one-minute reboot",
        "stop ssh",
    ]
    # Before the reboot happens, the ready step refuses (it reached the old boot).
    with pytest.raises(Failure, match=f"did not reboot: its boot id is still {BOOT_1}"):
        gpu_driver.ready(report, host)
    # The new boot: the boot-time unit is still running at first, then done; DCGM comes up.
    host.boot()
    host.smi_answer = (0, GPU_LIST)
    host.states[facts.GPU_DRIVER_UNIT] = [("activating", "start"), ("activating", "start"), ("active", "exited")]
    host.states[facts.DCGM_EXPORTER_UNIT] = [("inactive", "dead"), ("activating", "start"), ("active", "running")]
    said = gpu_driver.ready(report, host)
    assert said == (
        f"ready (boot {BOOT_2}, rebooted from boot {BOOT_1}): 1 GPU(s): {GPU_LIST}; {facts.DCGM_UNIT} and {facts.DCGM_EXPORTER_UNIT} active"
    )
    assert host.now == 2 * gpu_driver.POLL_SECONDS
    # A later run of the reboot step (a re-run of the delivery): no record in the new boot.
    assert gpu_driver.reboot(host) == "no reboot needed"
    assert len(host.events) == 3


def test_without_a_record_the_reboot_step_reboots_nothing(tmp_path, capsys):
    host = HostDouble(tmp_path, installed=gpu.driver_packages(580), smi=(0, GPU_LIST))
    gpu_driver.ensure(conf(), host)
    assert gpu_driver.reboot(host) == "no reboot needed" and host.events == []
    assert "no pending reboot recorded in" in capsys.readouterr().err
    assert gpu_driver.ready("no reboot needed\n", host).startswith(f"ready (boot {BOOT_1}): 1 GPU(s)")


def test_a_record_of_another_boot_is_ignored_with_one_line(tmp_path, capsys):
    host = pending_reboot(tmp_path)
    (tmp_path / "boot_id").write_text(BOOT_2 + "\n")  # /run kept across a boot (not tmpfs), or copied
    assert gpu_driver.reboot(host) == "no reboot needed" and host.events == []
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == (f"nina-gpu-driver: no reboot needed: {host.pending_path} is from boot {BOOT_1}, not this boot {BOOT_2} (ignored)")


@pytest.mark.parametrize(
    "record",
    [
        "",
        "reboot please",
        "[]",
        json.dumps({"boot_id": BOOT_1}),
        json.dumps({"boot_id": BOOT_1, "branch": 580, "then": "rm -rf /"}),
        json.dumps({"boot_id": BOOT_1.upper(), "branch": 580}),
        json.dumps({"boot_id": "../../etc/passwd", "branch": 580}),
        json.dumps({"boot_id": BOOT_1, "branch": "580"}),
        json.dumps({"boot_id": BOOT_1, "branch": 575}),
        json.dumps({"boot_id": BOOT_1, "branch": 580}) + " " * 5000,
    ],
)
def test_a_record_nina_did_not_write_reboots_nothing_and_says_so_in_one_line(tmp_path, record):
    host = HostDouble(tmp_path)
    (tmp_path / "run/nina").mkdir(parents=True)
    (tmp_path / "run/nina/gpu-reboot-pending").write_text(record)
    with pytest.raises(Failure) as info:
        gpu_driver.reboot(host)
    assert host.events == []
    msg = str(info.value)
    assert "\n" not in msg and host.pending_path in msg and "refusing to reboot" in msg and "run pulumi up again" in msg


def test_a_failure_after_the_near_reboot_still_reboots(tmp_path):
    host = pending_reboot(tmp_path)
    host.stop_ssh_fails = True
    with pytest.raises(Failure, match=re.escape("systemctl stop ssh.socket ssh.service failed")):
        gpu_driver.reboot(host)
    assert host.events[0].startswith("reboot in 5 s")


@pytest.mark.parametrize(
    "report",
    [
        "",
        "ok",
        "rebooting from boot ",
        "rebooting from boot ../../etc/passwd",
        f"rebooting from boot {BOOT_1.upper()}",
        f"rebooting from boot {BOOT_1}; reboot",
        "no reboot needed; rm -rf /",
        f"no reboot needed\nrebooting from boot {BOOT_1}",
    ],
)
def test_ready_refuses_a_report_that_is_not_the_reboot_steps(tmp_path, report):
    host = HostDouble(tmp_path, smi=(0, GPU_LIST))
    with pytest.raises(Failure, match="not the reboot step's report") as info:
        gpu_driver.ready(report, host)
    assert info.value.code == 2 and "\n" not in str(info.value)


def test_ready_names_a_failed_driver_unit_with_its_last_line_and_the_journal(tmp_path):
    host = pending_reboot(tmp_path)
    report = gpu_driver.reboot(host)
    host.boot()
    host.states[facts.GPU_DRIVER_UNIT] = [("failed", "failed")]
    host.states[facts.DCGM_UNIT] = [("inactive", "dead")]
    host.states[facts.DCGM_EXPORTER_UNIT] = [("inactive", "dead")]
    with pytest.raises(Failure) as info:
        gpu_driver.ready(report, host)
    msg = str(info.value)
    assert msg.startswith(
        f"not ready: {facts.GPU_DRIVER_UNIT} is failed (failed): nina-gpu-driver: FAILED: nvidia-smi fails ({SMI_DOWN}); "
        f"{facts.DCGM_UNIT} is inactive (dead); {facts.DCGM_EXPORTER_UNIT} is inactive (dead); nvidia-smi lists no GPU ("
    )
    assert msg.endswith(f"Look at: journalctl -b -u {facts.GPU_DRIVER_UNIT} -u {facts.DCGM_UNIT} -u {facts.DCGM_EXPORTER_UNIT}")
    assert host.now == 0  # a failed unit is final: no waiting


def test_ready_waits_a_bounded_time_for_the_boot_time_unit(tmp_path):
    host = pending_reboot(tmp_path)
    report = gpu_driver.reboot(host)
    host.boot()
    host.states[facts.GPU_DRIVER_UNIT] = [("activating", "start")]  # apt never ends
    with pytest.raises(Failure, match=f"{facts.GPU_DRIVER_UNIT} is activating \\(start\\) after 900 s"):
        gpu_driver.ready(report, host)
    assert facts.GPU_READY_WAIT_SECONDS <= host.now < facts.GPU_READY_WAIT_SECONDS + gpu_driver.POLL_SECONDS


def test_ready_waits_while_the_system_boots_then_names_a_unit_that_never_ran(tmp_path):
    host = HostDouble(tmp_path, smi=(0, GPU_LIST))
    host.states[facts.GPU_DRIVER_UNIT] = [("inactive", "dead")]
    host.still_booting = True
    with pytest.raises(Failure, match=f"not ready: {facts.GPU_DRIVER_UNIT} is inactive \\(dead\\) after 900 s"):
        gpu_driver.ready("no reboot needed", host, wait=900)
    host.still_booting, host.now = False, 0.0
    with pytest.raises(Failure, match=f"not ready: {facts.GPU_DRIVER_UNIT} is inactive \\(dead\\): nina-gpu-driver"):
        gpu_driver.ready("no reboot needed", host)
    assert host.now == 0


def test_ready_does_not_wait_for_an_exporter_in_a_restart_loop(tmp_path):
    host = HostDouble(tmp_path, smi=(0, GPU_LIST))
    host.states[facts.DCGM_EXPORTER_UNIT] = [("activating", "auto-restart")]
    with pytest.raises(Failure, match=f"not ready: {facts.DCGM_EXPORTER_UNIT} is activating \\(auto-restart\\). Look at"):
        gpu_driver.ready("no reboot needed", host)
    assert host.now == 0


def test_ready_without_a_gpu_says_so(tmp_path):
    host = HostDouble(tmp_path, smi=(0, ""))
    with pytest.raises(Failure, match="not ready: nvidia-smi lists no GPU \\(exit 0\\)"):
        gpu_driver.ready("no reboot needed", host)


def test_main_reboot_prints_its_report_on_stdout_and_ready_reads_it_on_stdin(tmp_path, capsys, monkeypatch):
    host = pending_reboot(tmp_path)
    capsys.readouterr()
    assert gpu_driver.main(["reboot"], host) == 0
    out = capsys.readouterr().out
    assert out == f"rebooting from boot {BOOT_1}\n"  # stdout is the report alone: the next step's stdin
    host.boot()
    host.smi_answer = (0, GPU_LIST)
    monkeypatch.setattr(gpu_driver.sys, "stdin", io.StringIO(out))
    assert gpu_driver.main(["ready"], host) == 0
    assert capsys.readouterr().err.startswith(f"nina-gpu-driver: ready (boot {BOOT_2}, rebooted from boot {BOOT_1})")
    monkeypatch.setattr(gpu_driver.sys, "stdin", io.StringIO(out))
    host.boot(BOOT_1)
    assert gpu_driver.main(["ready"], host) == 1
    monkeypatch.setattr(gpu_driver.sys, "stdin", io.StringIO("garbage"))
    assert gpu_driver.main(["ready"], host) == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith("nina-gpu-driver: FAILED: stdin holds 'garbage', not the reboot step's")


@pytest.mark.parametrize("content", [None, "", "not-a-boot-id", BOOT_1.upper(), BOOT_1 + "0"])
def test_a_boot_id_that_cannot_be_read_is_one_line(tmp_path, content):
    path = tmp_path / "boot_id"
    if content is not None:
        path.write_text(content + "\n")
    with pytest.raises(Failure, match=f"{path}"):
        gpu_driver.System(boot_id=str(path)).boot_id()


def test_the_real_system_reads_the_boot_id_and_its_record(tmp_path):
    system = gpu_driver.System(pending=str(tmp_path / "run/nina/p"))
    assert re.fullmatch(gpu_driver.BOOT_ID_RE, system.boot_id())  # this machine's real boot id
    assert system.pending() is None
    system.set_pending('{"boot_id": "x", "branch": 580}\n')
    assert system.pending() == '{"boot_id": "x", "branch": 580}\n'
    assert gpu_driver.System().pending_path == facts.GPU_REBOOT_PENDING and facts.GPU_REBOOT_PENDING.startswith(
        "/run/"
    )  # a reboot clears it
    # No systemd as PID 1 on this machine: systemctl cannot say, and the state says so.
    if _no_systemd():
        assert system.unit_state(facts.GPU_DRIVER_UNIT) == ("unknown", "")


class SmiFromPath(HostDouble):
    """TEST DOUBLE of the host, except nvidia-smi: the real System.smi runs whatever `nvidia-smi`
    is first on PATH (here a test double script that answers as nvidia-smi does without a GPU)."""

    smi = gpu_driver.System.smi


@pytest.mark.troubleshooting("gpu-not-ready")
def test_ready_on_a_host_whose_gpu_does_not_come_up_fails_in_one_line(tmp_path, capsys, monkeypatch):
    doubles = tmp_path / "test-doubles"
    doubles.mkdir()
    smi = doubles / "nvidia-smi"
    smi.write_text("#!/bin/sh\n# TEST DOUBLE of nvidia-smi on a VM without a GPU\necho 'No devices were found'\nexit 6\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{doubles}:{os.environ['PATH']}")
    host = SmiFromPath(tmp_path)
    row = troubleshooting.row("gpu-not-ready")
    monkeypatch.setattr(gpu_driver.sys, "stdin", io.StringIO("no reboot needed\n"))
    assert gpu_driver.main(["ready"], host) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and troubleshooting.fill(row.symptom, {}) in err, err
    assert "nvidia-smi lists no GPU (No devices were found)" in err
    assert f"journalctl -b -u {facts.GPU_DRIVER_UNIT} -u {facts.DCGM_UNIT} -u {facts.DCGM_EXPORTER_UNIT}" in err
    check = subprocess.run(["sh", "-c", troubleshooting.fill(row.check, {})], capture_output=True, text=True, timeout=30)
    assert "No devices were found" in check.stdout and "No devices were found" in row.shows


def _no_systemd() -> bool:
    if not (shutil.which("systemctl") and shutil.which("systemd-run")):
        return False
    return subprocess.run(["systemctl", "is-system-running"], capture_output=True, text=True).stdout.strip() == "offline"


@pytest.mark.skipif(
    not _no_systemd(),
    reason="only where no systemd runs: elsewhere the real systemd-run would schedule a real reboot",
)
def test_the_real_systemd_run_parses_the_reboot_command_line():
    # systemd-run parses its whole command line before it connects to the manager: here (no
    # systemd as PID 1) it gets as far as the connection, so every option was accepted.
    for unit, seconds in (
        (facts.GPU_REBOOT_UNIT, facts.GPU_REBOOT_DELAY_SECONDS),
        (facts.GPU_REBOOT_NOW_UNIT, facts.GPU_REBOOT_NOW_SECONDS),
    ):
        argv = gpu_driver.reboot_argv(unit, seconds, "nina-gpu-driver: loading the NVIDIA driver branch 580")
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        assert proc.returncode != 0 and "connect to bus" in proc.stderr, proc.stderr
    bad = subprocess.run([*argv[:1], "--on-actve=5", *argv[2:]], capture_output=True, text=True, timeout=30)
    assert "connect to bus" not in bad.stderr and bad.returncode != 0  # a wrong option is refused before that


class SystemctlDouble(gpu_driver.System):
    """The real System with a TEST DOUBLE of systemctl: units it says are loaded, every call recorded."""

    def __init__(self, loaded):
        super().__init__()
        self.loaded = set(loaded)
        self.calls: list[tuple[str, ...]] = []

    def _systemctl(self, *args):
        self.calls.append(args)
        if args[0] == "show":
            return subprocess.CompletedProcess(args, 0, "loaded\n" if args[-1] in self.loaded else "not-found\n", "")
        return subprocess.CompletedProcess(args, 0, "", "")


@pytest.mark.parametrize(
    ("loaded", "stopped"),
    [((facts.SSH_SOCKET, facts.SSH_UNIT), (facts.SSH_SOCKET, facts.SSH_UNIT)), ((facts.SSH_UNIT,), (facts.SSH_UNIT,))],
)
def test_stopping_sshd_stops_the_units_the_image_has(loaded, stopped):
    system = SystemctlDouble(loaded)
    system.stop_ssh()
    assert system.calls[-1] == ("stop", *stopped)


def test_a_host_without_sshd_units_fails_to_stop_it_in_one_line():
    system = SystemctlDouble(())
    with pytest.raises(Failure, match=f"neither {facts.SSH_SOCKET} nor {facts.SSH_UNIT} is loaded"):
        system.stop_ssh()
    assert all(call[0] == "show" for call in system.calls)


def test_repository_key_on_a_host_without_gpg_fails_in_one_line_and_writes_nothing(tmp_path, test_key, monkeypatch, capsys):
    # nina declares no gpg package for the GPU host: on an image without it, checking NVIDIA's key
    # raised FileNotFoundError out of root's unit as a traceback.
    armored, fpr = test_key
    host = HostDouble(tmp_path, served=armored)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(Failure, match=r"gpg .*apt-get install gpg"):
        gpu_driver.ensure_repository_key(host, pinned=fpr)
    assert not (tmp_path / "keyrings/nina-nvidia-cuda.gpg").exists()
