"""nina-gpu-driver: Ubuntu's NVIDIA server driver on a cloud GPU SuperNode, installed and loaded.

  nina-gpu-driver [--conf FILE]

Reads the branch and its packages from facts.GPU_DRIVER_CONF (`{"branch": 580, "packages":
["nvidia-driver-580-server", "nvidia-utils-580-server"]}`, written by the host's `<host>-gpu`
delivery from nina:gpu.driver_branch), then:

1. installs the packages that dpkg does not list as installed (`apt-get install`; apt replaces
   another branch's driver, whose packages conflict with these);
2. asks the driver: `nvidia-smi -L` must list a GPU. Then it is done (exit 0);
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
from dataclasses import dataclass

from nina import facts
from nina.host.failure import Failure, sayer

PROG = "nina-gpu-driver"
APT_TIMEOUT = 1800
SMI_TIMEOUT = 60

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
    expected = [p.format(branch=branch) for p in facts.GPU_DRIVER_PACKAGES]
    if packages != expected:
        raise Failure(f"packages {packages!r} are not branch {branch}'s {expected}", 2)
    return Config(branch, tuple(expected))


class System:
    """What the program asks of the host (the tests give it a stand-in)."""

    def __init__(self, marker: str = facts.GPU_DRIVER_MARKER, reboot_required: str = facts.REBOOT_REQUIRED) -> None:
        self.marker_path = marker
        self.reboot_required_path = reboot_required

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
        os.makedirs(os.path.dirname(self.marker_path), mode=0o755, exist_ok=True)
        tmp = f"{self.marker_path}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(f"{branch}\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, self.marker_path)

    def schedule_reboot(self, message: str) -> None:
        proc = subprocess.run(["shutdown", "-r", "+1", message], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise Failure(f"shutdown -r +1 failed (exit {proc.returncode}): {proc.stderr.strip()}")


def gpus(output: str) -> list[str]:
    """The GPUs `nvidia-smi -L` lists (lines `GPU <n>: <name> (UUID: ...)`)."""
    return [line for line in output.splitlines() if re.match(r"^GPU [0-9]+: ", line)]


def ensure(conf: Config, system: System) -> str:
    """Installs and checks the driver (the module's steps 1-3); returns what it did, in one line."""
    missing = [p for p in conf.packages if not system.installed(p)]
    if missing:
        say(f"installing {' '.join(missing)} (driver branch {conf.branch})")
        system.install(missing)
    rc, out = system.smi()
    found = gpus(out) if rc == 0 else []
    if found:
        return f"driver branch {conf.branch} loaded; {len(found)} GPU(s): {found[0]}"
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
