"""nina-gpu-driver: Ubuntu's NVIDIA server driver on a cloud GPU SuperNode, installed and loaded,
and DCGM with its exporter running.

  nina-gpu-driver [--conf FILE] [install]   (the unit: at each delivery and each boot)
  nina-gpu-driver reboot                    (`<host>-gpu-reboot`, after the delivery)
  nina-gpu-driver ready < REBOOT-REPORT     (`<host>-gpu-ready`, after the reboot)

Reads the branch and its packages from facts.GPU_DRIVER_CONF (`{"branch": 580, "dcgm_version":
null, "packages": ["nvidia-driver-580-server", "nvidia-utils-580-server", <DCGM's>]}`, written by
the host's `<host>-gpu` delivery from nina:gpu.driver_branch and nina:gpu.dcgm_version; a pinned
DCGM package is `<name>=<version>`), then:

0. makes sure NVIDIA's repository key is the keyring its apt source names
   (facts.NVIDIA_REPO_KEYRING): if that file is missing or holds another key, fetches
   facts.NVIDIA_REPO_KEY_URL over HTTPS and writes it only if gpg reports exactly the pinned
   fingerprint facts.NVIDIA_REPO_FINGERPRINT (else it fails and writes nothing);
1. installs the packages that dpkg does not list as installed, or (a pinned one) not at its
   version (`apt-get install --allow-downgrades`; apt replaces another branch's driver, whose
   packages conflict with these; a new pin installs that version, up or down);
2. asks the driver: `nvidia-smi -L` must list a GPU. Then it enables and starts DCGM's host
   engine (facts.DCGM_UNIT) and enables and restarts nina's exporter unit
   (facts.DCGM_EXPORTER_UNIT, which may have changed) and is done (exit 0);
3. otherwise, once per branch, records a pending reboot for this boot (facts.GPU_REBOOT_PENDING,
   under /run: `{"boot_id": ..., "branch": N}`) and schedules the reboot one minute later (a
   transient timer, facts.GPU_REBOOT_UNIT: `shutdown -r +1` would write /run/nologin and refuse the
   automation user's next login), so that the kernel loads the new module: the delivery that started
   this step finishes first, and at boot the unit runs this program again. If nobody runs the
   `reboot` step, that timer reboots the host. facts.GPU_DRIVER_MARKER holds the branch it rebooted
   for: a second failure for the same branch is reported (exit 1, the unit fails, the unit alert
   fires) and never reboots again, so there is no reboot loop. A reboot happens only when the
   driver was just installed or the system says one is required (facts.REBOOT_REQUIRED); a
   driver that is installed, not new and still not working is a failure for a human to look at.

`reboot` (run by pulumi right after the delivery): only if the record is this boot's, schedules
the reboot facts.GPU_REBOOT_NOW_SECONDS later, cancels the one-minute timer, stops sshd listening
(ssh.socket and ssh.service; open sessions, this one included, survive), and prints
`rebooting from boot <boot id>` on stdout; with no record, or one of another boot, prints
`no reboot needed`. A record it cannot read is a failure (exit 1): it reboots nothing.

`ready` (run by pulumi once it can log in again) reads the `reboot` step's report on stdin; it
refuses (exit 1) while the boot id is still the one the report names (the host did not reboot),
waits at most facts.GPU_READY_WAIT_SECONDS for this boot's driver unit to finish (and DCGM's units
to start), and exits 0 only when `nvidia-smi -L` lists a GPU and DCGM's host engine and the
exporter are active; else exit 1 naming each thing missing and the journal to read.

Every step is one line on stderr (the unit's journal). Exit codes: 0 the driver answers, or a
reboot is scheduled; 1 the driver does not work (the message says why); 2 bad configuration or
a report on stdin that is not the `reboot` step's.
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
import time
import urllib.request
from dataclasses import dataclass

from nina import facts
from nina.host import common
from nina.host.failure import Failure, sayer

PROG = "nina-gpu-driver"
APT_TIMEOUT = 1800
SMI_TIMEOUT = 60
FETCH_TIMEOUT = 60
MAX_KEY_BYTES = 1 << 16
BOOT_ID_RE = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
NO_REBOOT = "no reboot needed"
REBOOTING = "rebooting from boot "
POLL_SECONDS = 5
MAX_RECORD_BYTES = 4096
# systemd's unit states in which a unit is on its way somewhere (an auto-restart loop is not).
TRANSITIONAL = ("activating", "deactivating", "reloading")

say = sayer(PROG)


@dataclass(frozen=True)
class Config:
    branch: int
    packages: tuple[str, ...]
    dcgm_version: str | None = None


def parse_config(text: str) -> Config:
    """The delivered configuration; Failure (code 2) if it is not what nina.gpu writes."""
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise Failure(f"the configuration is not JSON: {exc}", 2) from None
    if not isinstance(raw, dict) or set(raw) != {"branch", "dcgm_version", "packages"}:
        raise Failure('the configuration must be {"branch": N, "dcgm_version": null or "V", "packages": [...]}', 2)
    branch, packages, version = raw["branch"], raw["packages"], raw["dcgm_version"]
    if type(branch) is not int or branch not in facts.GPU_DRIVER_BRANCHES:
        raise Failure(f"branch {branch!r} is not one of {', '.join(map(str, facts.GPU_DRIVER_BRANCHES))}", 2)
    if version is not None and not (isinstance(version, str) and re.fullmatch(facts.DEBIAN_VERSION_PATTERN, version)):
        raise Failure(f"dcgm_version {version!r} is not a Debian package version (like 1:4.5.2-1)", 2)
    expected = packages_of(branch, version)
    if packages != expected:
        raise Failure(f"packages {packages!r} are not branch {branch}'s {expected}", 2)
    return Config(branch, tuple(expected), version)


def packages_of(branch: int, dcgm_version: str | None = None) -> list[str]:
    """The driver's packages of `branch`, then DCGM's for its CUDA major version (each
    `<name>=<dcgm_version>` when pinned) and the exporter."""
    cuda = facts.GPU_CUDA_MAJOR[branch]
    pinned = {p.format(cuda=cuda) for p in facts.DCGM_PINNED_PACKAGES} if dcgm_version is not None else set()
    dcgm = [p.format(cuda=cuda) for p in facts.DCGM_PACKAGES]
    return [p.format(branch=branch) for p in facts.GPU_DRIVER_PACKAGES] + [f"{p}={dcgm_version}" if p in pinned else p for p in dcgm]


def missing_packages(packages: tuple[str, ...], system: System) -> list[str]:
    """The packages (as the configuration spells them) not installed, or not at their pinned version."""
    missing = []
    for spec in packages:
        name, _, version = spec.partition("=")
        have = system.installed_version(name)
        if have is None or (version and have != version):
            missing.append(spec)
    return missing


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
        self,
        marker: str = facts.GPU_DRIVER_MARKER,
        reboot_required: str = facts.REBOOT_REQUIRED,
        keyring: str = facts.NVIDIA_REPO_KEYRING,
        pending: str = facts.GPU_REBOOT_PENDING,
        boot_id: str = facts.BOOT_ID,
    ) -> None:
        self.marker_path = marker
        self.reboot_required_path = reboot_required
        self.keyring_path = keyring
        self.pending_path = pending
        self.boot_id_path = boot_id

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

    def installed_version(self, package: str) -> str | None:
        """The version dpkg has installed of `package`, None if it is not installed."""
        try:
            return common.installed_version(package)
        except subprocess.TimeoutExpired:
            raise Failure(f"dpkg-query did not answer within 60 s about {package} (is another apt or dpkg run holding its lock?)") from None

    def install(self, packages: list[str]) -> None:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for argv in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", "--allow-downgrades", *packages]):
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

    def boot_id(self) -> str:
        try:
            with open(self.boot_id_path, encoding="ascii", errors="replace") as f:
                boot = f.read(100).strip()
        except OSError as exc:
            raise Failure(f"cannot read the boot id {self.boot_id_path}: {exc.strerror}") from None
        if not re.fullmatch(BOOT_ID_RE, boot):
            raise Failure(f"{self.boot_id_path} holds {boot[:40]!r}, not a boot id")
        return boot

    def pending(self) -> str | None:
        """The pending-reboot record's text, None if there is none."""
        try:
            with open(self.pending_path, encoding="utf-8", errors="replace") as f:
                return f.read(MAX_RECORD_BYTES + 1)
        except FileNotFoundError:
            return None

    def set_pending(self, record: str) -> None:
        _atomic_write(self.pending_path, record.encode())

    def _systemctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["systemctl", *args], capture_output=True, text=True, timeout=120, check=False)

    def _reboot_in(self, unit: str, seconds: int, message: str) -> None:
        # A leftover of the same name (an earlier schedule in this boot) would make systemd-run fail.
        self._systemctl("stop", f"{unit}.timer", f"{unit}.service")
        proc = subprocess.run(reboot_argv(unit, seconds, message), capture_output=True, text=True, timeout=120, check=False)
        if proc.returncode != 0:
            raise Failure(f"systemd-run --unit={unit} failed (exit {proc.returncode}): {proc.stderr.strip()}")

    def schedule_reboot(self, message: str) -> None:
        self._reboot_in(facts.GPU_REBOOT_UNIT, facts.GPU_REBOOT_DELAY_SECONDS, message)

    def reboot_now(self, message: str) -> None:
        self._reboot_in(facts.GPU_REBOOT_NOW_UNIT, facts.GPU_REBOOT_NOW_SECONDS, message)

    def cancel_scheduled_reboot(self) -> None:
        self._systemctl("stop", f"{facts.GPU_REBOOT_UNIT}.timer")  # gone already: nothing to cancel

    def stop_ssh(self) -> None:
        # Only the units this image has (an sshd without socket activation has no ssh.socket).
        units = [
            u
            for u in (facts.SSH_SOCKET, facts.SSH_UNIT)
            if self._systemctl("show", "--property=LoadState", "--value", u).stdout.strip() == "loaded"
        ]
        proc = self._systemctl("stop", *units) if units else None
        if proc is None or proc.returncode != 0:
            why = (
                f"exit {proc.returncode}: {proc.stderr.strip()}"
                if proc is not None
                else f"neither {facts.SSH_SOCKET} nor {facts.SSH_UNIT} is loaded"
            )
            raise Failure(f"systemctl stop {' '.join(units) or facts.SSH_UNIT} failed ({why})")

    def unit_state(self, unit: str) -> tuple[str, str]:
        """The unit's ActiveState and SubState (("unknown", "") if systemctl cannot say)."""
        proc = self._systemctl("show", "--property=ActiveState,SubState", unit)
        props = dict(line.partition("=")[::2] for line in proc.stdout.splitlines())
        return props.get("ActiveState") or "unknown", props.get("SubState", "")

    def booting(self) -> bool:
        return self._systemctl("is-system-running").stdout.strip() in ("initializing", "starting")

    def last_line(self, unit: str) -> str:
        proc = subprocess.run(
            ["journalctl", "-b", "-u", unit, "-n", "1", "-o", "cat", "--no-pager"], capture_output=True, text=True, timeout=60, check=False
        )
        return proc.stdout.strip()[-300:]

    def clock(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


def reboot_argv(unit: str, seconds: int, message: str) -> list[str]:
    """systemd-run's command line of a reboot `seconds` from now, as the transient timer `unit`."""
    argv = ["systemd-run", f"--unit={unit}", f"--on-active={seconds}", "--timer-property=AccuracySec=1s"]
    return [*argv, f"--description={message}", "/usr/bin/systemctl", "reboot"]


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
    missing = missing_packages(conf.packages, system)
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
    system.set_pending(json.dumps({"boot_id": system.boot_id(), "branch": conf.branch}, sort_keys=True) + "\n")
    system.schedule_reboot(f"{PROG}: loading the NVIDIA driver branch {conf.branch}")
    return f"{why}: rebooting in one minute to load driver branch {conf.branch} (once: {system.marker_path})"


def parse_pending(text: str, path: str) -> tuple[str, int]:
    """The pending-reboot record's boot id and branch; Failure naming `path` if it is not one."""
    fix = f"remove {path} if no driver install is under way, then run pulumi up again"
    try:
        raw = json.loads(text) if len(text) <= MAX_RECORD_BYTES else None
    except ValueError:
        raw = None
    if not isinstance(raw, dict) or set(raw) != {"boot_id", "branch"}:
        raise Failure(f'{path} is not a pending-reboot record (not {{"boot_id": ..., "branch": N}}): refusing to reboot; {fix}')
    boot, branch = raw["boot_id"], raw["branch"]
    if (
        not isinstance(boot, str)
        or not re.fullmatch(BOOT_ID_RE, boot)
        or type(branch) is not int
        or branch not in facts.GPU_DRIVER_BRANCHES
    ):
        raise Failure(f"{path} holds boot id {boot!r} and branch {branch!r}, not a record nina writes: refusing to reboot; {fix}")
    return boot, branch


def reboot(system: System) -> str:
    """The `reboot` step: its report (one line, the `ready` step's stdin)."""
    boot = system.boot_id()
    text = system.pending()
    if text is None:
        say(f"{NO_REBOOT}: no pending reboot recorded in {system.pending_path}")
        return NO_REBOOT
    recorded, branch = parse_pending(text, system.pending_path)
    if recorded != boot:
        say(f"{NO_REBOOT}: {system.pending_path} is from boot {recorded}, not this boot {boot} (ignored)")
        return NO_REBOOT
    # The near reboot first: whatever fails after it, the host still reboots.
    system.reboot_now(f"{PROG}: loading the NVIDIA driver branch {branch}")
    system.cancel_scheduled_reboot()
    system.stop_ssh()
    say(f"sshd stopped listening; rebooting in {facts.GPU_REBOOT_NOW_SECONDS} s to load driver branch {branch}")
    return REBOOTING + boot


def parse_report(text: str) -> str | None:
    """The boot id the `reboot` step rebooted from (None: it did not reboot); Failure (code 2) if
    `text` is not its report."""
    line = text.strip()
    if line == NO_REBOOT:
        return None
    if line.startswith(REBOOTING) and re.fullmatch(BOOT_ID_RE, line[len(REBOOTING) :]):
        return line[len(REBOOTING) :]
    shown = repr(line[:80]) if line else "nothing"
    raise Failure(f"stdin holds {shown}, not the reboot step's report ('{NO_REBOOT}' or '{REBOOTING}<boot id>')", 2)


def _waiting(state: tuple[str, str]) -> bool:
    return state[0] in TRANSITIONAL and state[1] != "auto-restart"


def ready(report: str, system: System, wait: float = facts.GPU_READY_WAIT_SECONDS) -> str:
    """The `ready` step: what is ready, in one line; Failure naming what is not."""
    before = parse_report(report)
    boot = system.boot_id()
    if before == boot:
        raise Failure(
            f"the host did not reboot: its boot id is still {boot}, the one the reboot step rebooted from; "
            f"look at: journalctl -b -u {facts.GPU_REBOOT_NOW_UNIT}.service; then run pulumi up again"
        )
    units = (facts.GPU_DRIVER_UNIT, facts.DCGM_UNIT, facts.DCGM_EXPORTER_UNIT)
    deadline = system.clock() + wait
    while True:
        states = {u: system.unit_state(u) for u in units}
        driver = states[facts.GPU_DRIVER_UNIT]
        settled = driver[0] in ("active", "failed") or (driver[0] == "inactive" and not system.booting())
        timed_out = system.clock() >= deadline
        if (settled and not any(_waiting(states[u]) for u in units[1:])) or timed_out:
            break
        system.sleep(POLL_SECONDS)
    missing = []
    for unit, (active, sub) in states.items():
        if active != "active":
            unsettled = _waiting((active, sub)) or (unit == facts.GPU_DRIVER_UNIT and not settled)
            late = f" after {wait:.0f} s" if timed_out and unsettled else ""
            said = system.last_line(unit) if unit == facts.GPU_DRIVER_UNIT else ""
            missing.append(f"{unit} is {active}{f' ({sub})' if sub else ''}{late}{f': {said}' if said else ''}")
    rc, out = system.smi()
    found = gpus(out) if rc == 0 else []
    if not found:
        first = out.splitlines()[0] if out else f"exit {rc}"
        missing.append(f"nvidia-smi lists no GPU ({first})")
    if missing:
        journals = " ".join(f"-u {u}" for u in units)
        raise Failure(f"not ready: {'; '.join(missing)}. Look at: journalctl -b {journals}")
    rebooted = f", rebooted from boot {before}" if before else ""
    return f"ready (boot {boot}{rebooted}): {len(found)} GPU(s): {found[0]}; {facts.DCGM_UNIT} and {facts.DCGM_EXPORTER_UNIT} active"


def main(argv: list[str] | None = None, system: System | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description="Install and load the NVIDIA server driver (nina:gpu.driver_branch).")
    parser.add_argument("--conf", default=facts.GPU_DRIVER_CONF)
    parser.add_argument("step", nargs="?", default="install", choices=("install", "reboot", "ready"))
    args = parser.parse_args(argv)
    system = system or System()
    try:
        if args.step == "reboot":
            print(reboot(system), flush=True)
            return 0
        if args.step == "ready":
            say(ready(sys.stdin.read(MAX_RECORD_BYTES), system))
            return 0
        try:
            with open(args.conf, encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            raise Failure(f"cannot read {args.conf}: {exc.strerror}", 2) from None
        say(ensure(parse_config(text), system))
    except Failure as exc:
        say(f"FAILED: {exc}")
        return exc.code
    return 0


if __name__ == "__main__":
    sys.exit(main())
