"""nina-jupyterhub-docker: the JupyterHub host's docker state, from the plan file its delivery writes.

  nina-jupyterhub-docker networks   each tenancy's notebook network, removing nina's stale ones
  nina-jupyterhub-docker images     pull every notebook image (manual 4.1.2.14), then build
                                    each tenancy's derived notebook images

The plan file (facts.JUPYTERHUB_DOCKER_PLAN, written by nina.jupyterhub.jupyterhub_delivery) is
{"networks": [{"tenancy", "network", "bridge"}, ...], "images": [image, ...],
 "builds": [{"tenancy", "base", "image", "context", "dockerfile"}, ...]}.

networks: each tenancy's network is a bridge network named `network` whose Linux bridge is named
`bridge` (com.docker.network.bridge.name: the name the hub host's firewall matches, exactly as
nina.jupyterhub.tenancy_bridge gives it) and labelled facts.JUPYTERHUB_NETWORK_LABEL=<tenancy>.
Idempotent: a network that is already so is left alone ("unchanged"); one of that name that is
not (another bridge name, driver or label: made by hand) is replaced when no container uses it.
A network with nina's label whose tenancy is no longer in the plan is removed when no container
uses it. A network still used is never touched: the run says which containers hold it and fails
(exit 1) after doing everything else; stop those notebooks (the hub's admin page) and deliver again.
Networks without nina's label are never removed.

images: `docker pull` of each image, in order; then each build: `docker build -f <dockerfile>` of
its tenancy's context (the delivery writes it under facts.JUPYTERHUB_BUILDS/<tenancy>: a
Dockerfile per image, the tenancy's lock, a kernelspec) in the host's network (pip reaches PyPI as the host does), tagged `image` and labelled
facts.JUPYTERHUB_BUILD_LABEL=<tenancy>, unless an image of that tag exists ("unchanged": the tag
is derived from the base reference and the context's content). Then every image with nina's
build label whose tag is not in the plan (an older lock, a tenancy or base gone) is removed unless
a container uses it (then it is kept, said, and removed by a later run). Every pull and build is
tried, then exit 1 naming each that failed, with docker's last words (for a build, pip's error
line too, e.g. a hash that does not match the lock).

Environment override (tests): NINA_DOCKER, the docker command (default `docker`), split like a
shell would. Exit codes: 0 ok, 1 a docker step failed or a network is in use, 2 bad plan file.
A module of nina (nina.host): standard library and nina.facts only.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from typing import Any

from nina import facts
from nina.host.failure import Failure, sayer

PROG = "nina-jupyterhub-docker"
say = sayer(PROG)
BRIDGE_OPTION = "com.docker.network.bridge.name"
# What the plan may hold (checked before anything runs): docker's network names, Linux interface
# names (at most 15 characters), tenancy slugs, image references.
NETWORK_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}\Z")
BRIDGE_RE = re.compile(r"^[a-zA-Z0-9_.-]{1,15}\Z")
IMAGE_RE = re.compile(r"^[a-z0-9][A-Za-z0-9._/:@-]{0,254}\Z")
TENANCY_RE = re.compile(facts.SLUG_PATTERN)
# A docker path component (the derived images' tenancy and image-name parts, nina.config's labels).
_COMPONENT = facts.DOCKER_PATH_COMPONENT_PATTERN
BUILD_IMAGE_RE = re.compile(
    rf"^{re.escape(facts.JUPYTERHUB_BUILD_REPO)}/({_COMPONENT})/({_COMPONENT}):[0-9a-f]{{{facts.JUPYTERHUB_BUILD_TAG_CHARS}}}\Z"
)
BUILDS_ROOT = facts.JUPYTERHUB_BUILDS  # where every build context must be (the tests' is elsewhere)
BUILD_KEYS = {"tenancy", "base", "image", "context", "dockerfile"}


def docker_command() -> list[str]:
    return shlex.split(os.environ.get("NINA_DOCKER", "docker"))


def docker(*args: str, capture: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = [*docker_command(), *args]
    try:
        return subprocess.run(cmd, capture_output=capture, text=True, stdin=subprocess.DEVNULL)
    except OSError as exc:
        raise Failure(f"cannot run {shlex.join(cmd)}: {exc.strerror}") from None


def last_words(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [line.strip() for line in (proc.stderr or proc.stdout or "").splitlines() if line.strip()]
    return lines[-1] if lines else f"exit {proc.returncode}"


def checked(proc: subprocess.CompletedProcess[str], what: str) -> str:
    if proc.returncode != 0:
        raise Failure(f"{what} failed: {last_words(proc)}")
    return proc.stdout


def load_plan(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            plan = json.load(fh)
    except FileNotFoundError:
        raise Failure(f"{path} does not exist (the hub's delivery writes it)", 2) from None
    except (OSError, ValueError) as exc:
        raise Failure(f"{path} cannot be read as JSON: {exc}", 2) from None
    if not isinstance(plan, dict) or set(plan) != {"networks", "images", "builds"}:
        raise Failure(f'{path}: expected an object with exactly "networks", "images" and "builds"', 2)
    networks, images, builds = plan["networks"], plan["images"], plan["builds"]
    if not isinstance(networks, list) or not isinstance(images, list) or not isinstance(builds, list):
        raise Failure(f'{path}: "networks", "images" and "builds" must be lists', 2)
    for i, n in enumerate(networks):
        if not isinstance(n, dict) or set(n) != {"tenancy", "network", "bridge"} or not all(isinstance(v, str) for v in n.values()):
            raise Failure(f"{path}: networks[{i}] must be {{tenancy, network, bridge}} (strings)", 2)
        for key, pattern in (("tenancy", TENANCY_RE), ("network", NETWORK_RE), ("bridge", BRIDGE_RE)):
            if not pattern.match(n[key]):
                raise Failure(f"{path}: networks[{i}].{key} {n[key]!r} is not a valid {key} name", 2)
    for key in ("tenancy", "network", "bridge"):
        values = [n[key] for n in networks]
        if len(set(values)) != len(values):
            raise Failure(f"{path}: two networks share a {key}", 2)
    for i, image in enumerate(images):
        if not isinstance(image, str) or not IMAGE_RE.match(image):
            raise Failure(f"{path}: images[{i}] {image!r} is not an image reference", 2)
    check_builds(path, builds, {n["tenancy"] for n in networks}, images)
    return plan


def check_builds(path: str, builds: list[Any], tenancies: set[str], images: list[str]) -> None:
    """The builds' entries: a tenancy of the plan, a base the step pulls, a tag and a context
    directory of nina's own forms, both naming that tenancy; no tag or context twice."""
    for i, b in enumerate(builds):
        if not isinstance(b, dict) or set(b) != BUILD_KEYS or not all(isinstance(v, str) for v in b.values()):
            raise Failure(f"{path}: builds[{i}] must be {{tenancy, base, image, context, dockerfile}} (strings)", 2)
        if b["tenancy"] not in tenancies:
            raise Failure(f"{path}: builds[{i}].tenancy {b['tenancy']!r} is not a tenancy of the plan's networks", 2)
        if b["base"] not in images:
            raise Failure(f"{path}: builds[{i}].base {b['base']!r} is not one of the plan's images", 2)
        image = BUILD_IMAGE_RE.match(b["image"])
        context = re.match(rf"^{re.escape(BUILDS_ROOT)}/({_COMPONENT})\Z", b["context"])
        if image is None or image.group(1) != b["tenancy"]:
            raise Failure(f"{path}: builds[{i}].image {b['image']!r} is not {facts.JUPYTERHUB_BUILD_REPO}/<tenancy>/<name>:<hex>", 2)
        if context is None or context.group(1) != b["tenancy"]:
            raise Failure(f"{path}: builds[{i}].context {b['context']!r} is not {BUILDS_ROOT}/<its tenancy>", 2)
        if b["dockerfile"] != f"{facts.JUPYTERHUB_BUILD_FILES['dockerfile']}.{image.group(2)}":
            raise Failure(f"{path}: builds[{i}].dockerfile {b['dockerfile']!r} is not the Dockerfile of its image's name", 2)
    images_built = [b["image"] for b in builds]
    if len(set(images_built)) != len(images_built):
        raise Failure(f"{path}: two builds share an image", 2)
    dockerfiles = [(b["context"], b["dockerfile"]) for b in builds]
    if len(set(dockerfiles)) != len(dockerfiles):
        raise Failure(f"{path}: two builds share a Dockerfile", 2)


def inspect_networks(names: list[str]) -> list[dict[str, Any]]:
    if not names:
        return []
    out = checked(docker("network", "inspect", *names), "docker network inspect")
    try:
        found = json.loads(out)
    except ValueError:
        raise Failure(f"docker network inspect answered something that is not JSON: {out.strip()[:80]!r}") from None
    if not isinstance(found, list) or not all(isinstance(n, dict) for n in found):
        raise Failure("docker network inspect answered JSON that is not a list of networks")
    return found


def nina_networks() -> list[dict[str, Any]]:
    """Every network with nina's label."""
    ids = checked(docker("network", "ls", "-q", "--no-trunc", "--filter", f"label={facts.JUPYTERHUB_NETWORK_LABEL}"), "docker network ls")
    return inspect_networks(ids.split())


def by_name(name: str) -> dict[str, Any] | None:
    names = checked(docker("network", "ls", "--format", "{{.Name}}"), "docker network ls").split()
    return inspect_networks([name])[0] if name in names else None


def holders(net: dict[str, Any]) -> list[str]:
    """Names of the containers attached to `net` (docker lists running ones)."""
    return sorted(str(c.get("Name") or cid[:12]) for cid, c in (net.get("Containers") or {}).items())


def is_wanted(net: dict[str, Any], want: dict[str, str]) -> bool:
    return (
        net.get("Driver") == "bridge"
        and (net.get("Options") or {}).get(BRIDGE_OPTION) == want["bridge"]
        and (net.get("Labels") or {}).get(facts.JUPYTERHUB_NETWORK_LABEL) == want["tenancy"]
    )


def remove(net: dict[str, Any], why: str) -> str | None:
    """Removes `net` unless a container uses it; returns the refusal, if any."""
    name = str(net.get("Name"))
    used = holders(net)
    if used:
        return (
            f"network {name} ({why}) is still used by container(s) {', '.join(used)}: stop them (the hub's admin page), then deliver again"
        )
    proc = docker("network", "rm", name)
    if proc.returncode != 0:
        return f"cannot remove network {name} ({why}): {last_words(proc)}"
    print(f"removed {name} ({why})", flush=True)
    return None


def create(want: dict[str, str]) -> None:
    checked(
        docker(
            "network",
            "create",
            "--driver",
            "bridge",
            "--opt",
            f"{BRIDGE_OPTION}={want['bridge']}",
            "--label",
            f"{facts.JUPYTERHUB_NETWORK_LABEL}={want['tenancy']}",
            want["network"],
        ),
        f"docker network create {want['network']}",
    )
    print(f"created {want['network']} (bridge {want['bridge']}, tenancy {want['tenancy']})", flush=True)


def networks(plan: dict[str, Any]) -> list[str]:
    """Make the plan's networks; returns the problems (networks in use, docker's refusals)."""
    problems: list[str] = []
    wanted = {n["network"]: n for n in plan["networks"]}
    for want in plan["networks"]:
        net = by_name(want["network"])
        if net is not None and is_wanted(net, want):
            print(f"unchanged {want['network']} (bridge {want['bridge']})", flush=True)
            continue
        if net is not None:
            why = remove(net, f"not the bridge {want['bridge']} of tenancy {want['tenancy']}")
            if why:
                problems.append(why)
                continue
        try:
            create(want)
        except Failure as exc:
            problems.append(str(exc))
    for net in nina_networks():
        if net.get("Name") not in wanted:
            tenancy = (net.get("Labels") or {}).get(facts.JUPYTERHUB_NETWORK_LABEL)
            why = remove(net, f"tenancy {tenancy} is no longer in the plan")
            if why:
                problems.append(why)
    return problems


def images(plan: dict[str, Any]) -> list[str]:
    """Pull every image, build every derived one, remove nina's stale builds; returns one problem
    per image that could not be pulled or built."""
    problems = []
    for image in plan["images"]:
        print(f"pulling {image}", flush=True)
        proc = docker("pull", "--quiet", image)
        if proc.returncode != 0:
            problems.append(f"cannot pull notebook image {image}: {last_words(proc)}")
        else:
            print(f"pulled {image}", flush=True)
    for b in plan["builds"]:
        problem = build(b)
        if problem:
            problems.append(problem)
    return problems + remove_stale_builds({b["image"] for b in plan["builds"]})


ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")  # docker's legacy builder colours a step's stderr


def build_failure(proc: subprocess.CompletedProcess[str]) -> str:
    """docker's last words, and before them pip's (or nina's own) error line and the line after it
    (pip names the package there) if the build printed one."""
    text = ANSI_RE.sub("", f"{proc.stdout or ''}\n{proc.stderr or ''}")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    said = [i for i, line in enumerate(lines) if line.startswith(("ERROR:", "nina:"))]
    last = last_words(proc)
    if not said:
        return last
    error = " ".join(lines[said[-1] : said[-1] + 2])
    return f"{error} | {last}"


def build(b: dict[str, str]) -> str | None:
    """Build one derived image unless its tag exists; returns the problem, if any."""
    if docker("image", "inspect", "--format", "{{.Id}}", b["image"]).returncode == 0:
        print(f"unchanged {b['image']} (tenancy {b['tenancy']}, from {b['base']})", flush=True)
        return None
    print(f"building {b['image']} (tenancy {b['tenancy']}, from {b['base']})", flush=True)
    proc = docker(
        "build",
        "--network",
        "host",
        "--label",
        f"{facts.JUPYTERHUB_BUILD_LABEL}={b['tenancy']}",
        "--label",
        f"{facts.JUPYTERHUB_BUILD_BASE_LABEL}={b['base']}",
        "--tag",
        b["image"],
        "--file",
        os.path.join(b["context"], b["dockerfile"]),
        b["context"],
    )
    if proc.returncode != 0:
        return f"cannot build notebook image {b['image']} of tenancy {b['tenancy']} from {b['base']}: {build_failure(proc)}"
    print(f"built {b['image']}", flush=True)
    return None


def remove_stale_builds(wanted: set[str]) -> list[str]:
    """Remove every image tag with nina's build label that the plan does not name, unless a
    container uses it (kept: a running notebook of an older lock; a later run removes it)."""
    problems = []
    listed = checked(
        docker("image", "ls", "--filter", f"label={facts.JUPYTERHUB_BUILD_LABEL}", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}"),
        "docker image ls",
    )
    for line in sorted(set(listed.splitlines())):
        ref, _, image_id = line.strip().partition(" ")
        if not ref or ref in wanted or ref.endswith(":<none>"):
            continue
        users = checked(docker("ps", "-a", "--filter", f"ancestor={image_id}", "--format", "{{.Names}}"), "docker ps").split()
        if users:
            print(f"kept {ref} (no longer in the plan, used by container(s) {', '.join(sorted(users))})", flush=True)
            continue
        proc = docker("rmi", ref)
        if proc.returncode != 0:
            problems.append(f"cannot remove stale notebook image {ref}: {last_words(proc)}")
        else:
            print(f"removed {ref} (no longer in the plan)", flush=True)
    return problems


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (1, 2) or args[0] not in ("networks", "images"):
        say(f"usage: {PROG} networks|images [plan file, default {facts.JUPYTERHUB_DOCKER_PLAN}]")
        return 2
    try:
        plan = load_plan(args[1] if len(args) == 2 else facts.JUPYTERHUB_DOCKER_PLAN)
        problems = networks(plan) if args[0] == "networks" else images(plan)
    except Failure as exc:
        say(f"error: {exc}")
        return exc.code
    for problem in problems:
        say(f"error: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
