"""nina-gpu-driver (nina.host.gpu_driver): installs Ubuntu's NVIDIA server driver and reboots at
most once per branch. This machine has no GPU: `HostDouble` is a TEST DOUBLE of the host (dpkg,
apt-get, nvidia-smi, shutdown), with the program's real marker file in a temporary directory."""

from __future__ import annotations

import json

import pytest

from nina import facts, gpu
from nina.host import gpu_driver
from nina.host.failure import Failure

GPU_LIST = "GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-8f6b1c2e-0000-0000-0000-000000000000)"
SMI_DOWN = "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."


class HostDouble(gpu_driver.System):
    """TEST DOUBLE: packages, nvidia-smi and the reboot are simulated; the marker is a real file."""

    def __init__(self, tmp_path, installed=(), smi=(9, SMI_DOWN), reboot_required=False, install_fails=False):
        super().__init__(marker=str(tmp_path / "lib/nina/gpu-driver-reboot"), reboot_required=str(tmp_path / "reboot-required"))
        self.packages = set(installed)
        self.smi_answer = smi
        self.reboots: list[str] = []
        self.installs: list[list[str]] = []
        self.install_fails = install_fails
        if reboot_required:
            (tmp_path / "reboot-required").write_text("*** System restart required ***\n")

    def installed(self, package):
        return package in self.packages

    def install(self, packages):
        if self.install_fails:
            raise Failure("apt-get install -y --no-install-recommends x failed (exit 100): E: Unable to locate package")
        self.installs.append(list(packages))
        self.packages |= set(packages)

    def smi(self):
        return self.smi_answer

    def schedule_reboot(self, message):
        self.reboots.append(message)


def conf(branch: int = 580) -> gpu_driver.Config:
    return gpu_driver.parse_config(gpu.driver_conf(branch))


def test_a_fresh_host_installs_then_reboots_once_then_is_done(tmp_path):
    host = HostDouble(tmp_path)
    said = gpu_driver.ensure(conf(), host)
    assert host.installs == [["nvidia-driver-580-server", "nvidia-utils-580-server"]]
    assert host.reboots == ["nina-gpu-driver: loading the NVIDIA driver branch 580"]
    assert "rebooting in one minute to load driver branch 580" in said
    assert (tmp_path / "lib/nina/gpu-driver-reboot").read_text() == "580\n"
    # After the reboot the module is loaded: nothing installed, no reboot.
    host.smi_answer = (0, GPU_LIST)
    assert gpu_driver.ensure(conf(), host) == f"driver branch 580 loaded; 1 GPU(s): {GPU_LIST}"
    assert len(host.installs) == 1 and len(host.reboots) == 1


def test_a_driver_that_still_fails_after_its_reboot_never_reboots_again(tmp_path):
    host = HostDouble(tmp_path, reboot_required=True)
    gpu_driver.ensure(conf(), host)
    for _boot in range(3):  # every later boot: the unit fails, the host stays up
        with pytest.raises(Failure, match="after the reboot for driver branch 580; not rebooting again"):
            gpu_driver.ensure(conf(), host)
    assert len(host.reboots) == 1


def test_a_new_branch_is_installed_and_gets_its_own_reboot(tmp_path):
    host = HostDouble(tmp_path, installed={"nvidia-driver-580-server", "nvidia-utils-580-server"}, smi=(0, GPU_LIST))
    (tmp_path / "lib/nina").mkdir(parents=True)
    (tmp_path / "lib/nina/gpu-driver-reboot").write_text("580\n")
    host.smi_answer = (9, "Failed to initialize NVML: Driver/library version mismatch")
    gpu_driver.ensure(conf(570), host)
    assert host.installs == [["nvidia-driver-570-server", "nvidia-utils-570-server"]]
    assert len(host.reboots) == 1
    assert (tmp_path / "lib/nina/gpu-driver-reboot").read_text() == "570\n"


def test_an_installed_driver_that_fails_without_a_pending_reboot_is_a_failure(tmp_path):
    host = HostDouble(tmp_path, installed={"nvidia-driver-580-server", "nvidia-utils-580-server"})
    with pytest.raises(Failure, match="no reboot is pending"):
        gpu_driver.ensure(conf(), host)
    assert host.reboots == []
    assert not (tmp_path / "lib/nina/gpu-driver-reboot").exists()


def test_a_host_without_a_gpu_says_so(tmp_path):
    host = HostDouble(tmp_path, installed={"nvidia-driver-580-server", "nvidia-utils-580-server"}, smi=(0, ""), reboot_required=True)
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
        json.dumps({"branch": 580, "packages": ["nvidia-driver-580-server; rm -rf /", "nvidia-utils-580-server"]}),
    ],
)
def test_a_configuration_nina_did_not_write_is_refused(text):
    with pytest.raises(Failure) as info:
        gpu_driver.parse_config(text)
    assert info.value.code == 2


def test_main_reports_in_one_line_and_exits_by_outcome(tmp_path, capsys):
    path = tmp_path / "gpu-driver.json"
    path.write_text(gpu.driver_conf(580))
    host = HostDouble(tmp_path, installed={"nvidia-driver-580-server", "nvidia-utils-580-server"}, smi=(0, GPU_LIST))
    assert gpu_driver.main(["--conf", str(path)], host) == 0
    assert capsys.readouterr().err == f"nina-gpu-driver: driver branch 580 loaded; 1 GPU(s): {GPU_LIST}\n"
    host.smi_answer = (9, SMI_DOWN)
    assert gpu_driver.main(["--conf", str(path)], host) == 1
    assert capsys.readouterr().err.startswith("nina-gpu-driver: FAILED: nvidia-smi fails (NVIDIA-SMI has failed")
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
