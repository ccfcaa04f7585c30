"""Training environments: one definition per environment, one committed lock each (issue 13).

An environment is flwr (facts.FLWR_VERSION) and a few exactly pinned packages, for the CPU or the
CUDA variant of the kit's image. `nina env lock` resolves it with uv for the hosts' Python and
platform (facts.ENV_PYTHON_VERSION, facts.ENV_PYTHON_PLATFORM) from PyPI files uploaded before the
environment's `exclude_newer`, with every file's hash, into `environments/<name>.lock`: a
requirements file that `pip install --require-hashes --no-deps -r` installs as it is. Its first
lines (`header`) restate the definition, so `nina config check` refuses a lock that no longer
matches its definition without the network; `nina env lock --check` resolves again and refuses a
lock whose bytes differ.

Everything here is pure except `resolve` (runs uv) and `read_lock` (reads the committed file).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from nina import facts
from nina.host import env_sync

REPO_ROOT = Path(__file__).resolve().parent.parent
LOCK_DIR = REPO_ROOT / facts.ENV_LOCK_DIR
# An exact pin: a PyPI project name, `==`, a version (no extras, markers, URLs or wildcards).
PIN_RE = re.compile(r"([A-Za-z0-9](?:[A-Za-z0-9._-]{0,98}[A-Za-z0-9])?)==([0-9][A-Za-z0-9.+!-]{0,63})\Z")
# The lock's first words, and its header's line of the definition's pins (nina.outputs reads it back).
HEADER_START = "# nina-fl training environment"
REQUIREMENTS_PREFIX = "# requirements: "
EXCLUDE_NEWER_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z\Z")


class LockError(Exception):
    """A lock cannot be made, read or used; the message names the environment and the fix."""


canonical = env_sync.canonical  # PEP 503's normalised project name (what pip and importlib.metadata compare)


def parse_pin(pin: str) -> tuple[str, str]:
    """(canonical name, version) of an exact pin, or ValueError saying how to write one."""
    m = PIN_RE.match(pin) if isinstance(pin, str) else None
    if m is None:
        raise ValueError(f"{pin!r} is not an exact pin; write name==version, like 'scikit-learn==1.7.2' (no extras, markers or ranges)")
    return canonical(m.group(1)), m.group(2)


@dataclass(frozen=True)
class Environment:
    """A training environment's definition (config `nina:training_environments`, or the built-in one)."""

    name: str
    variant: str = "cpu"
    packages: tuple[str, ...] = ()  # exact pins, without flwr (that is facts.FLWR_VERSION)
    exclude_newer: str = facts.ENV_EXCLUDE_NEWER

    def __post_init__(self) -> None:
        if self.variant not in facts.ENV_VARIANTS:
            raise ValueError(f"environment {self.name!r}: variant {self.variant!r} is not one of {', '.join(facts.ENV_VARIANTS)}")
        names = [parse_pin(p)[0] for p in self.packages]
        if "flwr" in names:
            raise ValueError(f"environment {self.name!r}: flwr is nina:flower.version, not a package of the environment")
        if len(set(names)) != len(names):
            raise ValueError(f"environment {self.name!r}: a package is listed twice")
        if not EXCLUDE_NEWER_RE.match(self.exclude_newer):
            raise ValueError(f"environment {self.name!r}: exclude_newer {self.exclude_newer!r} is not like {facts.ENV_EXCLUDE_NEWER!r}")

    def requirements(self) -> tuple[str, ...]:
        """flwr and the packages, sorted by canonical name: the input of the resolution."""
        pins = [f"flwr=={facts.FLWR_VERSION}", *self.packages]
        return tuple(sorted(pins, key=lambda p: parse_pin(p)[0]))

    def pins(self) -> dict[str, str]:
        """canonical name -> version of what the definition states (flwr included)."""
        return dict(parse_pin(p) for p in self.requirements())

    @property
    def lock_file(self) -> str:
        return f"{self.name}{facts.ENV_LOCK_SUFFIX}"


DEFAULT = Environment(facts.ENV_DEFAULT, "cpu", facts.ENV_DEFAULT_PACKAGES)


def header(env: Environment) -> str:
    """The lock's first lines: the whole definition, so that a changed definition is a stale lock."""
    return (
        f"{HEADER_START} {env.name!r}: variant {env.variant}, "
        f"CPython {facts.ENV_PYTHON_VERSION} on {facts.ENV_PYTHON_PLATFORM}\n"
        f"{REQUIREMENTS_PREFIX}{' '.join(env.requirements())}\n"
        f"# resolved by `nina env lock {env.name}` with uv from PyPI files uploaded before {env.exclude_newer}; do not edit\n"
    )


def lock_fix(env: Environment) -> str:
    return f"run `nina env lock {env.name}` (it needs PyPI) and commit {facts.ENV_LOCK_DIR}/{env.lock_file}"


def uv_argv(env: Environment, uv: str) -> list[str]:
    """uv's resolution of `env` for the hosts (requirements on stdin, the lock's body on stdout)."""
    return [
        uv,
        "pip",
        "compile",
        "--quiet",
        "--no-header",
        "--no-python-downloads",
        "--no-config",
        "--generate-hashes",
        "--python-version",
        facts.ENV_PYTHON_VERSION,
        "--python-platform",
        facts.ENV_PYTHON_PLATFORM,
        "--exclude-newer",
        env.exclude_newer,
        "--index-url",
        "https://pypi.org/simple",
        "-",
    ]


def find_uv() -> str:
    """The uv of this venv (pyproject's test extra pins it), else one on PATH."""
    here = Path(sys.executable).parent / "uv"
    found = str(here) if here.exists() else shutil.which("uv")
    if found is None:
        raise LockError("uv is not installed in this venv or on PATH; run scripts/bootstrap (it installs the pinned uv)")
    return found


def resolve(env: Environment, uv: str | None = None, timeout: float = 300) -> str:
    """The lock of `env`: `header` and uv's hashed requirements. Needs PyPI."""
    cmd = uv_argv(env, uv or find_uv())
    run_env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never"}
    try:
        proc = subprocess.run(
            cmd, input="".join(p + "\n" for p in env.requirements()), capture_output=True, text=True, timeout=timeout, env=run_env
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LockError(f"environment {env.name!r}: uv did not run ({exc})") from None
    if proc.returncode != 0:
        said = " | ".join(line.strip() for line in proc.stderr.splitlines() if line.strip())[-600:]
        raise LockError(f"environment {env.name!r}: uv could not resolve {' '.join(env.requirements())}: {said}")
    text = header(env) + proc.stdout
    problem = body_problem(env, text)
    if problem:
        raise LockError(f"environment {env.name!r}: uv's resolution {problem}")
    return text


def parse(text: str) -> dict[str, str]:
    """canonical name -> version of every requirement of a lock (the hosts' parser, nina-env-sync's)."""
    try:
        return env_sync.parse_lock(text)
    except ValueError as exc:
        raise LockError(str(exc)) from None


def body_problem(env: Environment, text: str) -> str | None:
    """Why `text` is not a usable lock of `env` (None: it is): its header, its pins, its hashes."""
    if not text.startswith(header(env)):
        return "does not match the environment's definition (its header states another)"
    try:
        pins = parse(text)
    except LockError as exc:
        return str(exc)
    for name, version in env.pins().items():
        if pins.get(name) != version:
            return f"has {name} {pins.get(name, '(none)')}, the definition pins {version}"
    requirements = sum(1 for line in text.splitlines() if line and line[0] not in " #\t-")
    hashed = len(re.findall(r"==\S+ \\\n(?:    --hash=sha256:[0-9a-f]{64}(?: \\)?\n)+", text))
    if hashed != requirements:
        return "has a requirement without sha256 hashes (pip --require-hashes would refuse it)"
    return None


def lock_differences(lock: dict[str, str], distributions: list[str], limit: int = facts.ENV_DIFFERENCES_LISTED) -> list[str]:
    """How a node's whole installed set (the validation app's `distributions`, `name==version`
    each) differs from its tenancy's whole lock: a package missing, extra (besides what the lock
    deliberately keeps: env_sync.KEPT) or at another version, named with both versions, sorted;
    at most `limit` of them, then "and N more". Names compare canonically (`Foo_Bar` is `foo-bar`)."""
    have: dict[str, str] = {}
    for item in distributions:
        name, sep, version = str(item).partition("==")
        if not sep or not name:
            raise ValueError(f"reported distribution {str(item)[:80]!r} is not name==version")
        have.setdefault(canonical(name), version)
    found = env_sync.differences({canonical(n): v for n, v in lock.items()}, have)
    if len(found) > limit:
        return [*found[:limit], f"and {len(found) - limit} more"]
    return found


# The CUDA runtime wheel a CUDA lock holds: `nvidia-cuda-runtime-cu12` (CUDA 12 builds) or, from
# CUDA 13 on, `nvidia-cuda-runtime` whose version's major is CUDA's.
CUDA_RUNTIME_RE = re.compile(r"nvidia-cuda-runtime(?:-cu([0-9]{2}))?\Z")


def cuda_major(pins: dict[str, str]) -> int | None:
    """The CUDA major version of the runtime wheels a lock installs (None: it installs none)."""
    for name, version in sorted(pins.items()):
        m = CUDA_RUNTIME_RE.match(canonical(name))
        if m:
            major = m.group(1) or version.split(".", 1)[0]
            return int(major) if major.isdigit() else None
    return None


def lock_path(env: Environment, lock_dir: Path | None = None) -> Path:
    return (LOCK_DIR if lock_dir is None else lock_dir) / env.lock_file


def read_lock(env: Environment, lock_dir: Path | None = None) -> str:
    """The committed lock of `env`, checked against its definition (no network)."""
    path = lock_path(env, lock_dir)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LockError(f"environment {env.name!r} has no lock {facts.ENV_LOCK_DIR}/{env.lock_file}; {lock_fix(env)}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise LockError(f"environment {env.name!r}: {facts.ENV_LOCK_DIR}/{env.lock_file} cannot be read ({exc}); {lock_fix(env)}") from None
    problem = body_problem(env, text)
    if problem:
        raise LockError(f"environment {env.name!r}: {facts.ENV_LOCK_DIR}/{env.lock_file} {problem}; {lock_fix(env)}")
    return text


def pip_install_argv(python: str, lock: str) -> list[str]:
    """Installing a lock as it is: every file checked against its hash, nothing else pulled in."""
    return [python, "-I", "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--require-hashes", "--no-deps", "-r", lock]
