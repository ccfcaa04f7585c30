"""The JupyterHub host's docker steps (nina.host.hub_docker), run in-process against a real dockerd.

The daemon is Debian's docker.io, started for the module in its own network and mount namespace
(`unshare -n -m`: its bridges and mounts never touch this machine's), on a private socket, data
root and exec root under the test's directory, with the vfs storage driver and without its
default bridge or iptables rules (`--bridge=none --iptables=false`: the per-tenancy networks are
what is tested, not docker's NAT). A registry (Debian's docker-registry) runs on loopback in the
same namespace, so the image step really pulls: its image is a busybox made here (`docker import`
of busybox-static), pushed to that registry and removed locally before the pull. No network
beyond the namespace's loopback is used.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

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
    ({"context": "/etc/jupyterhub/builds/main/other-notebook"}, "builds[0].context"),  # not its image's
    ({"tenancy": 7}, "builds[0] must be"),
]


@pytest.mark.parametrize(("change", "said"), HOSTILE_BUILDS)
def test_a_hostile_build_entry_is_refused_in_one_line_before_docker_runs(tmp_path, monkeypatch, capsys, change, said):
    monkeypatch.setenv("NINA_DOCKER", "/bin/false")
    good = {
        "tenancy": "main",
        "base": "quay.io/jupyter/scipy-notebook",
        "image": "nina-notebook/main/scipy-notebook:0123456789ab",
        "context": "/etc/jupyterhub/builds/main/scipy-notebook",
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
