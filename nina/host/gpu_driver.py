"""nina-gpu-driver: Ubuntu's NVIDIA server driver on a cloud GPU SuperNode, installed and loaded,
and DCGM with its exporter running.

  nina-gpu-driver [--conf FILE]

Reads the branch and its packages from facts.GPU_DRIVER_CONF (`{"branch": 580, "packages":
["nvidia-driver-580-server", "nvidia-utils-580-server", <DCGM's>]}`, written by the host's
`<host>-gpu` delivery from nina:gpu.driver_branch), then:

0. makes sure NVIDIA's repository key is the keyring its apt source names
   (facts.NVIDIA_REPO_KEYRING): if that file is missing or holds another key, fetches
   facts.NVIDIA_REPO_KEY_URL over HTTPS and writes it only if gpg reports exactly the pinned
   fingerprint facts.NVIDIA_REPO_FINGERPRINT (else it fails and writes nothing);
1. installs the packages that dpkg does not list as installed (`apt-get install`; apt replaces
   another branch's driver, whose packages conflict with these);
2. asks the driver: `nvidia-smi -L` must list a GPU. Then it enables and starts DCGM's host
   engine (facts.DCGM_UNIT) and enables and restarts nina's exporter unit
   (facts.DCGM_EXPORTER_UNIT, which may have changed) and is done (exit 0);
3. otherwise, once per branch, schedules a reboot one minute later (`shutdown -r +1`), so that
   the kernel loads the new module: the delivery that started this step finishes first, and at
   boot the unit runs this program again. facts.GPU_DRIVER_MARKER holds the branch it rebooted
   for: a second failure for the same branch is reported (exit 1, the unit fails, the unit alert
   fires) and never reboots again, so there is no reboot loop. A reboot happens only when the
   driver was just installed or the system says one is required (facts.REBOOT_REQUIRED); a
   driver that is installed, not new and still not working is a failure for a human to look at.

Every step is one line on stderr (the unit's journal). Exit codes: 0 the driver answers, or a
reboot is scheduled; 1 the driver does not work (the message says why); 2 bad configuration.
A module of nina (nina.host): standard library and nina.facts only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import urllib.request
from dataclasses import dataclass

from nina import facts
from nina.host.failure import Failure, sayer

PROG = "nina-gpu-driver"
APT_TIMEOUT = 1800
SMI_TIMEOUT = 60
FETCH_TIMEOUT = 60
MAX_KEY_BYTES = 1 << 16

say = sayer(PROG)


@dataclass(frozen=True)
class Config:
    branch: int
    packages: tuple[str, ...]


def parse_config(text: str) -> Config:
    """The delivered configuration; Failure (code 2) if it is not what nina.gpu writes."""
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise Failure(f"the configuration is not JSON: {exc}", 2) from None
    if not isinstance(raw, dict) or set(raw) != {"branch", "packages"}:
        raise Failure('the configuration must be {"branch": N, "packages": [...]}', 2)
    branch, packages = raw["branch"], raw["packages"]
    if type(branch) is not int or branch not in facts.GPU_DRIVER_BRANCHES:
        raise Failure(f"branch {branch!r} is not one of {', '.join(map(str, facts.GPU_DRIVER_BRANCHES))}", 2)
    expected = packages_of(branch)
    if packages != expected:
        raise Failure(f"packages {packages!r} are not branch {branch}'s {expected}", 2)
    return Config(branch, tuple(expected))


def packages_of(branch: int) -> list[str]:
    """The driver's packages of `branch`, then DCGM's for its CUDA major version and the exporter."""
    cuda = facts.GPU_CUDA_MAJOR[branch]
    return [p.format(branch=branch) for p in facts.GPU_DRIVER_PACKAGES] + [p.format(cuda=cuda) for p in facts.DCGM_PACKAGES]


def _gpg(args: list[str], key: bytes) -> subprocess.CompletedProcess[bytes]:
    """gpg with `key` on stdin; Failure (one line) if gpg is missing or hangs."""
    try:
        return subprocess.run(["gpg", *args], input=key, capture_output=True, timeout=60, check=False)
    except FileNotFoundError:
        raise Failure("gpg is needed to check NVIDIA's repository key and is not installed: apt-get install gpg") from None
    except subprocess.TimeoutExpired:
        raise Failure("gpg did not answer within 60 s while checking NVIDIA's repository key") from None


def fingerprints(key: bytes) -> list[str]:
    """The primary keys' fingerprints in `key` (armored or binary OpenPGP), as gpg reads them,
    without importing it anywhere (a throwaway GNUPGHOME)."""
    with tempfile.TemporaryDirectory() as home:
        proc = _gpg(["--homedir", home, "--batch", "--with-colons", "--show-keys"], key)
    if proc.returncode != 0:
        return []
    found, primary = [], False
    for line in proc.stdout.decode("utf-8", "replace").splitlines():
        fields = line.split(":")
        if fields[0] in ("pub", "sub"):
            primary = fields[0] == "pub"
        elif fields[0] == "fpr" and primary and len(fields) > 9:
            found.append(fields[9].upper())
            primary = False
    return found


def dearmor(key: bytes) -> bytes:
    """`key` as a binary keyring (what apt's signed-by reads), by gpg --dearmor (binary stays binary)."""
    if not key.lstrip().startswith(b"-----BEGIN PGP"):
        return key
    with tempfile.TemporaryDirectory() as home:
        proc = _gpg(["--homedir", home, "--batch", "--dearmor"], key)
    if proc.returncode != 0 or not proc.stdout:
        raise Failure("gpg --dearmor could not read NVIDIA's repository key")
    return proc.stdout


class System:
    """What the program asks of the host (the tests give it a stand-in)."""

    def __init__(
        self, marker: str = facts.GPU_DRIVER_MARKER, reboot_required: str = facts.REBOOT_REQUIRED, keyring: str = facts.NVIDIA_REPO_KEYRING
    ) -> None:
        self.marker_path = marker
        self.reboot_required_path = reboot_required
        self.keyring_path = keyring

    def keyring(self) -> bytes | None:
        try:
            with open(self.keyring_path, "rb") as f:
                return f.read(MAX_KEY_BYTES + 1)
        except FileNotFoundError:
            return None

    def fetch_key(self) -> bytes:
        try:
            with urllib.request.urlopen(facts.NVIDIA_REPO_KEY_URL, timeout=FETCH_TIMEOUT) as response:
                data: bytes = response.read(MAX_KEY_BYTES + 1)
        except OSError as exc:
            raise Failure(f"cannot fetch NVIDIA's repository key {facts.NVIDIA_REPO_KEY_URL}: {exc}") from None
        if len(data) > MAX_KEY_BYTES:
            raise Failure(f"{facts.NVIDIA_REPO_KEY_URL} is larger than {MAX_KEY_BYTES} bytes: not a key")
        return data

    def write_keyring(self, data: bytes) -> None:
        _atomic_write(self.keyring_path, data)

    def start_monitoring(self) -> None:
        for argv in (
            ["systemctl", "enable", "--now", facts.DCGM_UNIT],
            ["systemctl", "enable", facts.DCGM_EXPORTER_UNIT],
            ["systemctl", "restart", facts.DCGM_EXPORTER_UNIT],
        ):
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
            if proc.returncode != 0:
                raise Failure(f"{' '.join(argv)} failed (exit {proc.returncode}): {proc.stderr.strip()}; see journalctl -u {argv[-1]}")

    def installed(self, package: str) -> bool:
        proc = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True, check=False)
        return proc.returncode == 0 and proc.stdout.strip() == "install ok installed"

    def install(self, packages: list[str]) -> None:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for argv in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", *packages]):
            proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=APT_TIMEOUT, check=False)
            if proc.returncode != 0:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
                raise Failure(f"{' '.join(argv)} failed (exit {proc.returncode}): {' | '.join(tail)}")

    def smi(self) -> tuple[int, str]:
        try:
            proc = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=SMI_TIMEOUT, check=False)
        except FileNotFoundError:
            return 127, "nvidia-smi not found"
        except subprocess.TimeoutExpired:
            return 124, f"nvidia-smi did not answer in {SMI_TIMEOUT} s"
        return proc.returncode, (proc.stdout + proc.stderr).strip()

    def reboot_required(self) -> bool:
        return os.path.exists(self.reboot_required_path)

    def marker(self) -> str | None:
        try:
            with open(self.marker_path, encoding="utf-8") as f:
                return f.read().strip()
        except FileNotFoundError:
            return None

    def set_marker(self, branch: int) -> None:
        _atomic_write(self.marker_path, f"{branch}\n".encode())

    def schedule_reboot(self, message: str) -> None:
        proc = subprocess.run(["shutdown", "-r", "+1", message], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise Failure(f"shutdown -r +1 failed (exit {proc.returncode}): {proc.stderr.strip()}")


def _atomic_write(path: str, data: bytes) -> None:
    """`path` holds `data` (0644, root's: the caller runs as root), or its old content on failure."""
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def ensure_repository_key(system: System, pinned: str = facts.NVIDIA_REPO_FINGERPRINT) -> str:
    """Step 0: the keyring holds exactly the pinned key (fetched if not); what was done, in one line."""
    present = system.keyring()
    if present is not None and fingerprints(present) == [pinned]:
        return f"NVIDIA's repository key {pinned} is in place"
    key = system.fetch_key()
    found = fingerprints(key)
    if found != [pinned]:
        shown = ", ".join(found) or "no OpenPGP key"
        raise Failure(f"{facts.NVIDIA_REPO_KEY_URL} holds {shown}, not the pinned {pinned}: refusing it (nothing written)")
    system.write_keyring(dearmor(key))
    return f"NVIDIA's repository key {pinned} written to {system.keyring_path}"


def gpus(output: str) -> list[str]:
    """The GPUs `nvidia-smi -L` lists (lines `GPU <n>: <name> (UUID: ...)`)."""
    return [line for line in output.splitlines() if re.match(r"^GPU [0-9]+: ", line)]


def ensure(conf: Config, system: System) -> str:
    """Installs and checks the driver (the module's steps 0-3); returns what it did, in one line."""
    say(ensure_repository_key(system))
    missing = [p for p in conf.packages if not system.installed(p)]
    if missing:
        say(f"installing {' '.join(missing)} (driver branch {conf.branch})")
        system.install(missing)
    rc, out = system.smi()
    found = gpus(out) if rc == 0 else []
    if found:
        system.start_monitoring()
        return (
            f"driver branch {conf.branch} loaded; {len(found)} GPU(s): {found[0]}; {facts.DCGM_UNIT} and {facts.DCGM_EXPORTER_UNIT} started"
        )
    first = out.splitlines()[0] if out else f"exit {rc}"
    why = f"nvidia-smi lists no GPU ({first})" if rc == 0 else f"nvidia-smi fails ({first})"
    if system.marker() == str(conf.branch):
        raise Failure(
            f"{why} after the reboot for driver branch {conf.branch}; not rebooting again. "
            f"Look at: dmesg | grep -i nvidia; lspci | grep -i nvidia (is a GPU passed to this VM?). "
            f"Once fixed, delete {system.marker_path} to allow one more reboot."
        )
    if not missing and not system.reboot_required():
        raise Failure(f"{why}, and no reboot is pending: the driver is installed but does not work; look at dmesg | grep -i nvidia")
    system.set_marker(conf.branch)
    system.schedule_reboot(f"{PROG}: loading the NVIDIA driver branch {conf.branch}")
    return f"{why}: rebooting in one minute to load driver branch {conf.branch} (once: {system.marker_path})"


def main(argv: list[str] | None = None, system: System | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description="Install and load the NVIDIA server driver (nina:gpu.driver_branch).")
    parser.add_argument("--conf", default=facts.GPU_DRIVER_CONF)
    args = parser.parse_args(argv)
    try:
        try:
            with open(args.conf, encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            raise Failure(f"cannot read {args.conf}: {exc.strerror}", 2) from None
        say(ensure(parse_config(text), system or System()))
    except Failure as exc:
        say(f"FAILED: {exc}")
        return exc.code
    return 0


if __name__ == "__main__":
    sys.exit(main())
