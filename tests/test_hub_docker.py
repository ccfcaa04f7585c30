"""The JupyterHub host's docker steps (nina.host.hub_docker), run in-process against a real dockerd.

The daemon is Debian's docker.io, started for the module in its own network and mount namespace
(`unshare -n -m`: its bridges and mounts never touch this machine's), on a private socket, data
root and exec root under the test's directory, with the vfs storage driver and without its
default bridge or iptables rules (`--bridge=none --iptables=false`: the per-tenancy networks are
what is tested, not docker's NAT). A registry (Debian's docker-registry) runs on loopback in the
same namespace, so the image step really pulls: its image is a busybox made here (`docker import`
of busybox-static), pushed to that registry and removed locally before the pull. No network
beyond the namespace's loopback is used.

The notebook-image builds use a base with Python: a Debian minbase with python3 and python3-venv
(debootstrap from this machine's archive, cached under NINA_HUBLAB_CACHE by recipe), imported
with the docker-stacks images' NB_UID and an index on the namespace's loopback (PIP_INDEX_URL: the
only thing that differs from production, where pip reaches PyPI). The index serves a wheel the
test builds; the lock names it with its sha256.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bootlab import _host_apt  # this machine's Debian suite and archive

from nina import facts, jupyterhub
from nina.host import hub_docker

DOCKERD = "/usr/sbin/dockerd"
DOCKER = "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else (shutil.which("docker") or "")
REGISTRY = shutil.which("docker-registry") or ""
BUSYBOX = "/bin/busybox"
REGISTRY_PORT = 5000


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root (dockerd)"
    for what, path in (("dockerd", DOCKERD), ("docker", DOCKER), ("docker-registry", REGISTRY), ("busybox-static", BUSYBOX)):
        if not path or not os.path.exists(path):
            return f"needs {what} (scripts/bootstrap --test-tools installs it)"
    if subprocess.run(["unshare", "-n", "-m", "true"], capture_output=True).returncode != 0:
        return "needs `unshare -n -m` (private network and mount namespaces)"
    return None


pytestmark = pytest.mark.skipif(_unavailable() is not None, reason=str(_unavailable()))


class DockerLab:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.sock = root / "docker.sock"
        self.cli = [DOCKER, "-H", f"unix://{self.sock}"]
        registry_conf = root / "registry.yml"
        registry_conf.write_text(
            f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {root / 'registry'}\nhttp:\n  addr: 127.0.0.1:{REGISTRY_PORT}\n"
        )
        dockerd = [
            DOCKERD,
            f"--data-root={root / 'data'}",
            f"--exec-root={root / 'exec'}",
            f"--pidfile={root / 'dockerd.pid'}",
            f"--host=unix://{self.sock}",
            "--bridge=none",
            "--iptables=false",
            "--ip6tables=false",
            "--storage-driver=vfs",
        ]
        script = (
            "ip link set lo up && "
            f"{shlex.join([REGISTRY, 'serve', str(registry_conf)])} >{root / 'registry.log'} 2>&1 & "
            f"exec {shlex.join(dockerd)} >{root / 'dockerd.log'} 2>&1"
        )
        # Its own session: the lab (the shell's registry and dockerd with its containerd) is one
        # process group, ended by this process's id at teardown.
        self.proc = subprocess.Popen(["unshare", "-n", "-m", "--propagation", "private", "sh", "-c", script], start_new_session=True)
        deadline = time.monotonic() + 60
        while self.run("version").returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"dockerd did not start: {(root / 'dockerd.log').read_text()[-2000:]}")
            time.sleep(0.3)

    def run(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.cli, *args], capture_output=True, text=True, check=check, timeout=120)

    def env(self) -> dict[str, str]:
        return {"NINA_DOCKER": shlex.join(self.cli)}

    def networks(self) -> dict[str, dict[str, Any]]:
        names = self.run("network", "ls", "--format", "{{.Name}}", check=True).stdout.split()
        return {n["Name"]: n for n in json.loads(self.run("network", "inspect", *names, check=True).stdout)}

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        # dockerd's containerd and the registry were in the group: make sure none is left.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[DockerLab]:
    root = tmp_path_factory.mktemp("dockerlab")
    lab = DockerLab(root)
    try:
        rootfs = root / "rootfs"
        (rootfs / "bin").mkdir(parents=True)
        shutil.copy(BUSYBOX, rootfs / "bin" / "busybox")
        for applet in ("sh", "sleep"):
            (rootfs / "bin" / applet).symlink_to("busybox")
        subprocess.run(["tar", "-C", str(rootfs), "-cf", str(root / "rootfs.tar"), "."], check=True)
        lab.run("import", str(root / "rootfs.tar"), "nina-test/busybox:1", check=True)
        yield lab
    finally:
        lab.close()


def plan_file(tmp_path: Path, tenancies: list[str], images: list[str] | None = None) -> str:
    path = tmp_path / "docker-plan.json"
    path.write_text(jupyterhub.docker_plan_json(tenancies, images or []))
    return str(path)


def run(lab: DockerLab, monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    for k, v in lab.env().items():
        monkeypatch.setenv(k, v)
    rc = hub_docker.main(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_networks_are_made_idempotently_and_stale_ones_removed_unless_in_use(lab, tmp_path, monkeypatch, capsys):
    # A network of someone else's (no nina label) is never touched.
    lab.run("network", "create", "other-net", check=True)
    plan = plan_file(tmp_path, ["main", "beta"])
    rc, out, err = run(lab, monkeypatch, capsys, "networks", plan)
    assert rc == 0, err
    nets = lab.networks()
    for t in ("main", "beta"):
        net = nets[jupyterhub.tenancy_network(t)]
        assert net["Driver"] == "bridge"
        assert net["Options"][hub_docker.BRIDGE_OPTION] == jupyterhub.tenancy_bridge(t)
        assert net["Labels"] == {facts.JUPYTERHUB_NETWORK_LABEL: t}
        assert f"created {jupyterhub.tenancy_network(t)}" in out
    # The Linux bridge has exactly the name the firewall matches (in the lab's network namespace).
    pid = (lab.root / "dockerd.pid").read_text().strip()
    links = subprocess.run(["nsenter", "-t", pid, "-n", "ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    assert f" {jupyterhub.tenancy_bridge('main')}: " in links and f" {jupyterhub.tenancy_bridge('beta')}: " in links

    # A second run changes nothing.
    ids = {n: nets[n]["Id"] for n in nets}
    rc, out, err = run(lab, monkeypatch, capsys, "networks", plan)
    assert rc == 0 and "created" not in out and "removed" not in out and out.count("unchanged") == 2, out + err
    assert {n: v["Id"] for n, v in lab.networks().items()} == ids

    # beta leaves the plan while a notebook still runs on its network: refused, naming the container.
    lab.run("run", "-d", "--name", "notebook-rita", "--network", "nina-beta", "nina-test/busybox:1", "sleep", "300", check=True)
    only_main = plan_file(tmp_path, ["main"])
    rc, out, err = run(lab, monkeypatch, capsys, "networks", only_main)
    assert rc == 1 and "nina-beta" in err and "notebook-rita" in err, err
    assert "nina-beta" in lab.networks() and "unchanged nina-main" in out
    # Once the notebook is gone, the stale network goes; the foreign one stays.
    lab.run("rm", "-f", "notebook-rita", check=True)
    rc, out, err = run(lab, monkeypatch, capsys, "networks", only_main)
    assert rc == 0 and "removed nina-beta" in out, err
    assert set(lab.networks()) >= {"nina-main", "other-net"} and "nina-beta" not in lab.networks()


def test_a_network_of_the_right_name_but_wrong_bridge_is_replaced(lab, tmp_path, monkeypatch, capsys):
    lab.run("network", "create", "-o", f"{hub_docker.BRIDGE_OPTION}=byhand0", "nina-gamma", check=True)
    rc, out, err = run(lab, monkeypatch, capsys, "networks", plan_file(tmp_path, ["main", "gamma"]))
    assert rc == 0 and "removed nina-gamma" in out and "created nina-gamma" in out, out + err
    assert lab.networks()["nina-gamma"]["Options"][hub_docker.BRIDGE_OPTION] == jupyterhub.tenancy_bridge("gamma")
    run(lab, monkeypatch, capsys, "networks", plan_file(tmp_path, ["main"]))


def test_images_are_pulled_and_a_failure_names_the_image(lab, tmp_path, monkeypatch, capsys):
    image = f"127.0.0.1:{REGISTRY_PORT}/nina-test/notebook:1"
    lab.run("tag", "nina-test/busybox:1", image, check=True)
    deadline = time.monotonic() + 30
    while (push := lab.run("push", image)).returncode != 0:
        assert time.monotonic() < deadline, push.stderr + (lab.root / "registry.log").read_text()[-2000:]
        time.sleep(0.5)
    lab.run("rmi", image, check=True)
    assert lab.run("image", "inspect", image).returncode != 0
    rc, out, err = run(lab, monkeypatch, capsys, "images", plan_file(tmp_path, ["main"], [image]))
    assert rc == 0 and f"pulled {image}" in out, err
    assert lab.run("image", "inspect", image).returncode == 0
    missing = f"127.0.0.1:{REGISTRY_PORT}/nina-test/absent:1"
    rc, out, err = run(lab, monkeypatch, capsys, "images", plan_file(tmp_path, ["main"], [missing, image]))
    assert rc == 1 and f"cannot pull notebook image {missing}" in err and f"pulled {image}" in out, out + err


def test_a_bad_plan_file_is_refused_before_docker_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NINA_DOCKER", "/bin/false")
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"networks": [{"tenancy": "main", "network": "nina-main", "bridge": "x" * 16}], "images": [], "builds": []}))
    assert hub_docker.main(["networks", str(path)]) == 2
    assert "networks[0].bridge" in capsys.readouterr().err
    assert hub_docker.main(["networks", str(tmp_path / "missing.json")]) == 2
    assert hub_docker.main(["bogus"]) == 2


HOSTILE_BUILDS = [
    (None, "builds[0] must be"),  # keys missing
    ({"tenancy": "gone"}, "builds[0].tenancy 'gone'"),
    ({"base": "quay.io/jupyter/other-notebook"}, "builds[0].base"),
    ({"image": "evil/main/scipy-notebook:0123456789ab"}, "builds[0].image"),
    ({"image": "nina-notebook/beta/scipy-notebook:0123456789ab"}, "builds[0].image"),  # another tenancy's name
    ({"image": "nina-notebook/main/scipy-notebook:latest"}, "builds[0].image"),
    ({"context": "/etc/jupyterhub/builds/main/../../../root"}, "builds[0].context"),
    ({"context": "/"}, "builds[0].context"),
    ({"context": "/etc/jupyterhub/builds/beta"}, "builds[0].context"),  # another tenancy's
    ({"dockerfile": "../../../../root/Dockerfile"}, "builds[0].dockerfile"),
    ({"dockerfile": "Dockerfile.other-notebook"}, "builds[0].dockerfile"),  # not its image's
    ({"tenancy": 7}, "builds[0] must be"),
]


@pytest.mark.parametrize(("change", "said"), HOSTILE_BUILDS)
def test_a_hostile_build_entry_is_refused_in_one_line_before_docker_runs(tmp_path, monkeypatch, capsys, change, said):
    monkeypatch.setenv("NINA_DOCKER", "/bin/false")
    good = {
        "tenancy": "main",
        "base": "quay.io/jupyter/scipy-notebook",
        "image": "nina-notebook/main/scipy-notebook:0123456789ab",
        "context": "/etc/jupyterhub/builds/main",
        "dockerfile": "Dockerfile.scipy-notebook",
    }
    build = {"tenancy": "main"} if change is None else {**good, **change}
    raw = json.loads(jupyterhub.docker_plan_json(["main", "beta"], [good["base"]]))
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({**raw, "builds": [good]}))
    assert hub_docker.load_plan(str(path))["builds"] == [good]
    path.write_text(json.dumps({**raw, "builds": [build]}))
    assert hub_docker.main(["images", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and said in err[0], err
    path.write_text(json.dumps({**raw, "builds": [good, good]}))
    assert hub_docker.main(["images", str(path)]) == 2
    assert "two builds share an image" in capsys.readouterr().err
    path.write_text(json.dumps({**raw, "builds": [good, {**good, "image": good["image"].replace("0123", "3210")}]}))
    assert hub_docker.main(["images", str(path)]) == 2
    assert "two builds share a Dockerfile" in capsys.readouterr().err
    path.write_text(json.dumps(raw | {"builds": None}))
    assert hub_docker.main(["images", str(path)]) == 2
    path.write_text(json.dumps({k: v for k, v in raw.items() if k != "builds"}))
    assert hub_docker.main(["images", str(path)]) == 2


def test_a_docker_that_answers_garbage_ends_in_one_line(tmp_path, monkeypatch, capsys):
    """`docker network inspect` printing something that is not its JSON (a wrapper, a broken
    install, another program of that name): one line naming the command, exit 1, no traceback."""
    fake = tmp_path / "docker"
    fake.write_text(
        '#!/bin/sh\ncase "$1 $2" in\n  "network ls") [ "$3" = --format ] && echo nina-main;;\n  *) echo "<html>not json</html>";;\nesac\n'
    )
    fake.chmod(0o755)
    monkeypatch.setenv("NINA_DOCKER", str(fake))
    path = tmp_path / "plan.json"
    path.write_text(
        json.dumps({"networks": [{"tenancy": "main", "network": "nina-main", "bridge": "nbr-0123456789"}], "images": [], "builds": []})
    )
    assert hub_docker.main(["networks", str(path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "docker network inspect" in err[0] and "JSON" in err[0], err


# --- the derived notebook images, really built ---------------------------------------------------

HUBLAB_CACHE = Path(os.environ.get("NINA_HUBLAB_CACHE", "/var/cache/nina-hublab"))
BASE_PACKAGES = ("python3", "python3-venv")
INDEX_PORT = 5001
NB_UID = "1000"


def python_rootfs() -> Path:
    """A Debian minbase with python3 and python3-venv as a tarball (built once per recipe, cached)."""
    suite, mirror = _host_apt()
    key = hashlib.sha256(json.dumps([1, suite, mirror, BASE_PACKAGES]).encode()).hexdigest()[:16]
    HUBLAB_CACHE.mkdir(parents=True, exist_ok=True)
    tarball = HUBLAB_CACHE / f"python-rootfs-{key}.tar"
    with open(HUBLAB_CACHE / "lock", "w") as lock:
        import fcntl

        fcntl.flock(lock, fcntl.LOCK_EX)
        if tarball.exists():
            return tarball
        tmp = HUBLAB_CACHE / f"build-{key}"
        shutil.rmtree(tmp, ignore_errors=True)
        subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", suite, str(tmp), mirror],
            check=True,
            capture_output=True,
            timeout=900,
        )
        subprocess.run(["chroot", str(tmp), "apt-get", "clean"], check=True, capture_output=True)
        subprocess.run(["tar", "-C", str(tmp), "-cf", f"{tarball}.part", "."], check=True)
        shutil.rmtree(tmp)
        os.rename(f"{tarball}.part", tarball)
        return tarball


def toy_wheel(directory: Path, version: str) -> Path:
    """A real wheel (PEP 427) of `nina-toy` with a module and a console script."""
    name = f"nina_toy-{version}-py3-none-any.whl"
    dist = f"nina_toy-{version}.dist-info"
    files = {
        "nina_toy.py": f"__version__ = {version!r}\n\ndef main():\n    print(__version__)\n",
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: nina-toy\nVersion: {version}\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: nina-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{dist}/entry_points.txt": "[console_scripts]\nnina-toy = nina_toy:main\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    record.append(f"{dist}/RECORD,,")
    out = directory / name
    with zipfile.ZipFile(out, "w") as zf:
        for path, text in files.items():
            zf.writestr(zipfile.ZipInfo(path, (2020, 1, 1, 0, 0, 0)), text)
        zf.writestr(zipfile.ZipInfo(f"{dist}/RECORD", (2020, 1, 1, 0, 0, 0)), "\n".join(record) + "\n")
    return out


def toy_lock(wheel: Path, version: str, digest: str | None = None) -> str:
    digest = digest or hashlib.sha256(wheel.read_bytes()).hexdigest()
    return f"# a test's lock\nnina-toy=={version} \\\n    --hash=sha256:{digest}\n"


@pytest.fixture(scope="module")
def python_base(lab, tmp_path_factory) -> Iterator[str]:
    """The base image, and a simple index of the toy wheels on the lab's loopback."""
    if not shutil.which("debootstrap"):
        pytest.skip("needs debootstrap (scripts/bootstrap --test-tools installs it)")
    index = tmp_path_factory.mktemp("index")
    project = index / "simple" / "nina-toy"
    project.mkdir(parents=True)
    for version in ("1.0", "2.0"):
        toy_wheel(project, version)
    # In the loopback registry, as the configured images are in theirs: the step pulls it, then builds.
    base = f"127.0.0.1:{REGISTRY_PORT}/nina-test/python-notebook:1"
    changes = [f"ENV NB_UID={NB_UID}", f"ENV PIP_INDEX_URL=http://127.0.0.1:{INDEX_PORT}/simple/", f"USER {NB_UID}"]
    lab.run("import", *(x for c in changes for x in ("--change", c)), str(python_rootfs()), base, check=True)
    deadline = time.monotonic() + 120
    while (push := lab.run("push", base)).returncode != 0:
        assert time.monotonic() < deadline, push.stderr
        time.sleep(0.5)
    pid = (lab.root / "dockerd.pid").read_text().strip()
    server = subprocess.Popen(
        [
            "nsenter",
            "-t",
            pid,
            "-n",
            sys.executable,
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            "--directory",
            str(index),
            str(INDEX_PORT),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield base
    finally:
        server.terminate()
        server.wait(timeout=30)


def build_plan(tmp_path: Path, base: str, lock: str) -> tuple[str, jupyterhub.NotebookBuild]:
    """A plan with the derived image of tenancy main, its context written under tmp_path."""
    tenancy = jupyterhub.TenancyAccess("main", "10.0.0.10:9093", "toy", lock)
    build = jupyterhub.notebook_build(tenancy, base)
    context = tmp_path / "builds" / build.tenancy
    context.mkdir(parents=True, exist_ok=True)
    for name, text in build.files:
        (context / name).write_text(text)
    plan = jupyterhub.docker_plan(["main"], [base], [build])
    plan["builds"][0]["context"] = str(context)
    path = tmp_path / "docker-plan.json"
    path.write_text(json.dumps(plan))
    return str(path), build


@pytest.mark.timeout(1200)
def test_a_tenancys_notebook_image_is_built_with_its_lock_and_rebuilt_only_when_it_changes(lab, python_base, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(hub_docker, "BUILDS_ROOT", str(tmp_path / "builds"))
    wheels = sorted((lab.root.parent).glob("index*/simple/nina-toy/*.whl"))
    v1 = next(w for w in wheels if "-1.0-" in w.name)
    v2 = next(w for w in wheels if "-2.0-" in w.name)
    plan, build = build_plan(tmp_path, python_base, toy_lock(v1, "1.0"))
    rc, out, err = run(lab, monkeypatch, capsys, "images", plan)
    assert rc == 0 and f"pulled {python_base}" in out and f"built {build.image}" in out, out + err
    labels = json.loads(lab.run("image", "inspect", "--format", "{{json .Config.Labels}}", build.image, check=True).stdout)
    assert labels == {facts.JUPYTERHUB_BUILD_LABEL: "main", facts.JUPYTERHUB_BUILD_BASE_LABEL: python_base}

    def inside(script: str) -> str:
        return lab.run("run", "--rm", "--network", "none", build.image, "sh", "-c", script, check=True).stdout.strip()

    # The venv holds exactly the lock's version; it is first on PATH; the container runs as the notebook user.
    env = facts.NOTEBOOK_ENV
    assert inside("id -u") == NB_UID
    assert inside("command -v python3; command -v nina-toy; nina-toy") == f"{env}/bin/python3\n{env}/bin/nina-toy\n1.0"
    said = inside("python3 -c 'import importlib.metadata as m, nina_toy; print(m.version(\"nina-toy\"), nina_toy.__file__)'")
    assert said.startswith("1.0 " + env + "/lib/python3") and said.endswith("/site-packages/nina_toy.py"), said
    kernel_path = f"{facts.NOTEBOOK_KERNELS_DIR}/{facts.NOTEBOOK_KERNEL_NAME}/kernel.json"
    assert json.loads(inside(f"cat {kernel_path}")) == json.loads(dict(build.files)["kernel.json"])
    assert inside(f"cat {facts.NOTEBOOK_ENV_LOCK}") == toy_lock(v1, "1.0").strip()

    # Again: unchanged, the same image.
    image_id = lab.run("image", "inspect", "--format", "{{.Id}}", build.image, check=True).stdout
    rc, out, err = run(lab, monkeypatch, capsys, "images", plan)
    assert rc == 0 and f"unchanged {build.image}" in out and "built" not in out, out + err
    assert lab.run("image", "inspect", "--format", "{{.Id}}", build.image, check=True).stdout == image_id

    # A new lock: a new tag, built; the old image goes unless a notebook still runs it.
    lab.run("run", "-d", "--name", "notebook-rita", "--network", "none", build.image, "sleep", "300", check=True)
    plan2, build2 = build_plan(tmp_path, python_base, toy_lock(v2, "2.0"))
    assert build2.image != build.image
    rc, out, err = run(lab, monkeypatch, capsys, "images", plan2)
    assert rc == 0 and f"built {build2.image}" in out and f"kept {build.image}" in out and "notebook-rita" in out, out + err
    lab.run("rm", "-f", "notebook-rita", check=True)
    rc, out, err = run(lab, monkeypatch, capsys, "images", plan2)
    assert rc == 0 and f"unchanged {build2.image}" in out and f"removed {build.image}" in out, out + err
    assert lab.run("image", "inspect", build.image).returncode != 0
    assert lab.run("run", "--rm", "--network", "none", build2.image, "nina-toy", check=True).stdout.strip() == "2.0"
    assert lab.run("image", "inspect", python_base).returncode == 0  # the base is not nina's build

    # A lock whose hash is not the wheel's: the build fails, saying so; nothing is tagged.
    plan3, build3 = build_plan(tmp_path, python_base, toy_lock(v2, "2.0", "0" * 64))
    rc, out, err = run(lab, monkeypatch, capsys, "images", plan3)
    assert rc == 1, out + err
    [line] = err.strip().splitlines()
    assert f"cannot build notebook image {build3.image} of tenancy main" in line and "DO NOT MATCH THE HASHES" in line, line
    assert lab.run("image", "inspect", build3.image).returncode != 0


def test_a_failed_build_is_named_by_pips_error_not_only_dockers_last_words():
    """What docker's legacy builder printed for a lock whose hash is not the wheel's (captured from
    the real build above): pip's error is on stdout, coloured; docker's last words on stderr."""
    stdout = (
        "Step 5/8 : RUN python3 -m venv ...\n ---> Running in 596bd13ef86c\nLooking in indexes: http://127.0.0.1:5001/simple/\n"
        "\x1b[91mERROR: THESE PACKAGES DO NOT MATCH THE HASHES FROM THE REQUIREMENTS FILE. If you have updated the package versions, "
        "please update the hashes.\n    nina-toy==2.0 from http://127.0.0.1:5001/simple/nina-toy/nina_toy-2.0-py3-none-any.whl "
        "(from -r /opt/nina/environment.lock (line 2)):\n        Expected sha256 00\n             Got        d7\n\n\x1b[0m"
    )
    stderr = "The command '/bin/sh -c python3 -m venv ...' returned a non-zero code: 1\n"
    said = hub_docker.build_failure(subprocess.CompletedProcess([], 1, stdout, stderr))
    assert said.startswith("ERROR: THESE PACKAGES DO NOT MATCH THE HASHES") and "nina-toy==2.0 from" in said, said
    assert said.endswith("returned a non-zero code: 1") and "\x1b" not in said and "\n" not in said
    # Nothing of pip's: docker's last words alone.
    assert (
        hub_docker.build_failure(subprocess.CompletedProcess([], 1, "Step 1/8 : FROM x\n", "pull access denied\n")) == "pull access denied"
    )


def test_every_image_name_the_config_accepts_gives_a_build_the_step_accepts(tmp_path):
    """The derived tag and context embed the configured image's name: any name nina.config lets
    through (distribution's grammar: `__`, runs of `-`, dots) must pass the step's own check."""
    from nina import config

    images = ["quay.io/a/my__lab--x.y:1", "registry.example:5000/x/y/z9@sha256:" + "a" * 64, "scipy-notebook"]
    for image in images:
        assert config.IMAGE_RE.match(image), image
    tenancy = jupyterhub.TenancyAccess("org-a1", "10.0.0.1:9093", "default", "nina-toy==1.0 \\\n    --hash=sha256:" + "0" * 64 + "\n")
    builds = [jupyterhub.notebook_build(tenancy, i) for i in images]
    path = tmp_path / "plan.json"
    path.write_text(jupyterhub.docker_plan_json(["org-a1"], images, builds))
    assert [b["image"] for b in hub_docker.load_plan(str(path))["builds"]] == [b.image for b in builds]
