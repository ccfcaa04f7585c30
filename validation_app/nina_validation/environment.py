"""What a node's training environment is (ClientApp) and whether it is its tenancy's (ServerApp).

The ServerApp's run config `environment` lists the tenancy's pins (`name==version,...`: flwr and
the environment's packages, from its lock; `nina rehearse` and `nina validate` pass them). Each
round it sends their names; each ClientApp reports the installed version of each (importlib.metadata,
"" when absent), its Python and whether a GPU is usable, saying how that was determined:
`torch.cuda.is_available()` when torch is installed, else `tensorflow`'s GPU devices, else only
whether `nvidia-smi -L` lists a GPU (a driver sees one, no installed framework can use it: not usable).
It also reports its whole installed set (`distributions`: every `name==version` its Python sees,
canonical names, sorted, one string each in a ConfigRecord list), which `nina validate` compares
with the tenancy's whole lock (nina.environments.lock_differences).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import platform
import re
import shutil
import subprocess
from typing import Any


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_pins(spec: str) -> dict[str, str]:
    """`name==version,...` -> canonical name -> version (empty spec: nothing to compare)."""
    pins = {}
    for item in spec.replace(" ", "").split(","):
        if not item:
            continue
        name, sep, version = item.partition("==")
        if not sep or not name or not version:
            raise ValueError(f"run config environment: {item!r} is not name==version")
        pins[canonical(name)] = version
    return pins


def installed_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return ""


def distributions() -> list[str]:
    """Every distribution this Python sees, `name==version` (canonical name, sorted). A name found
    twice on the path counts once, as importlib.metadata.version reads it: the first one."""
    seen: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            seen.setdefault(canonical(name), dist.version)
    return [f"{n}=={v}" for n, v in sorted(seen.items())]


def gpu() -> tuple[bool, str]:
    """(usable, how it was determined)."""
    if importlib.util.find_spec("torch") is not None:
        import torch  # type: ignore[import-not-found]  # only where an environment installs it

        usable = bool(torch.cuda.is_available())
        return usable, f"torch.cuda.is_available() is {usable}"
    if importlib.util.find_spec("tensorflow") is not None:
        import tensorflow as tf  # type: ignore[import-untyped]  # only where an environment installs it

        devices = tf.config.list_physical_devices("GPU")
        return bool(devices), f"tensorflow lists {len(devices)} GPU device(s)"
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False, "no torch or tensorflow installed, no nvidia-smi"
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return False, f"no torch or tensorflow installed; nvidia-smi -L failed ({exc})"
    count = sum(1 for line in out.splitlines() if line.startswith("GPU "))
    return False, f"no torch or tensorflow installed; nvidia-smi -L lists {count} GPU(s)"


def report(names: list[str]) -> dict[str, Any]:
    """This node's environment: Python, each named package's installed version, the GPU, and
    every installed distribution."""
    usable, how = gpu()
    versions = {canonical(n): installed_version(n) for n in sorted(names)}
    return {
        "python": platform.python_version(),
        "packages": ",".join(f"{n}=={v}" for n, v in versions.items()),
        "gpu-usable": usable,
        "gpu-how": how,
        "distributions": distributions(),
    }


def differences(expected: dict[str, str], packages: str) -> list[str]:
    """One phrase per package whose installed version is not the lock's (sorted)."""
    have = dict(item.partition("==")[::2] for item in packages.split(",") if item)
    found = []
    for name, want in sorted(expected.items()):
        got = have.get(name, "")
        if got != want:
            found.append(f"{name} {got or '(not installed)'} installed, the tenancy's lock has {want}")
    return found


# What a ClientApp's environment report holds, and the type of each ("distributions": optional).
REPORTED = {"python": str, "packages": str, "gpu-usable": bool, "gpu-how": str}


def judged(who: str, env: Any, expected: dict[str, str]) -> tuple[dict[str, Any] | None, list[str]]:
    """A node's environment report as the round line shows it (None: none usable) and its problems,
    each naming `who`: nothing reported, a key missing or of another type, or a package at another
    version than the tenancy's lock (`differences`)."""
    if env is None:
        return None, [f"{who} reported no environment (an old ClientApp?)"]
    bad = [k for k, kind in REPORTED.items() if not isinstance(env.get(k, None), kind)]
    dists = env.get("distributions", None)
    if dists is not None and not (isinstance(dists, list) and all(isinstance(d, str) for d in dists)):
        bad.append("distributions")
    if bad:
        return None, [f"{who} reported an incomplete environment ({', '.join(bad)} missing or not text/true-false)"]
    record = {k: env[k] for k in REPORTED}
    if dists is not None:
        record["distributions"] = list(dists)
    return record, [f"{who}: {d}" for d in differences(expected, env["packages"])]
