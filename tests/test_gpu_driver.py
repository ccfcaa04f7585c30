"""nina-gpu-driver (nina.host.gpu_driver): installs Ubuntu's NVIDIA server driver and reboots at
most once per branch. This machine has no GPU: `HostDouble` is a TEST DOUBLE of the host (dpkg,
apt-get, nvidia-smi, shutdown), with the program's real marker file in a temporary directory."""

from __future__ import annotations

import json
import subprocess

import pytest

from nina import facts, gpu
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
        )
        self.served = served  # what the key's URL answers (None: not asked for in these tests)
        self.fetches = 0
        self.monitoring_started = 0
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

    def fetch_key(self):
        self.fetches += 1
        assert self.served is not None, "the key was fetched but the test serves none"
        return self.served

    def start_monitoring(self):
        self.monitoring_started += 1


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


def test_repository_key_on_a_host_without_gpg_fails_in_one_line_and_writes_nothing(tmp_path, test_key, monkeypatch, capsys):
    # nina declares no gpg package for the GPU host: on an image without it, checking NVIDIA's key
    # raised FileNotFoundError out of root's unit as a traceback.
    armored, fpr = test_key
    host = HostDouble(tmp_path, served=armored)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(Failure, match=r"gpg .*apt-get install gpg"):
        gpu_driver.ensure_repository_key(host, pinned=fpr)
    assert not (tmp_path / "keyrings/nina-nvidia-cuda.gpg").exists()
