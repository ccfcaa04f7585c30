"""Playing the attacker: researchers' ClientApp and ServerApp code runs as `supernode` and
`superlink` (both in fl_system). Here real users of those names, in a real fl_system group, do
what such code could on a host laid out as the platform lays it out, and the real root-run
programs (a site kit's install.sh, nina-membership as sudo runs it) then run as root: what the
attacker planted never runs as root, nothing is written or changed through a planted link, and
each refusal is one line saying what was found and what to do.

Two layouts: today's (services' directories: /opt/python and /opt/flwr/<service> root's), where
the attacker cannot plant anything at all, and the one hosts and sites had before
(/opt/python 2775 root:fl_system, /opt/flwr/<service> owned by the service user), where the
attacker plants and the programs' own checks (nina.host.trust) must refuse.

Needs root (users, owners, running as root): skipped otherwise. The users and the group are
created only if missing, and removed again afterwards.
"""

from __future__ import annotations

import contextlib
import grp
import io
import json
import os
import pwd
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from nina import facts, kit, render, services

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("useradd"),
    reason="plays the service users against root: needs root (real users, owners, root-run programs) and useradd",
)

GROUP = facts.SYSTEM_GROUP
SUPERNODE = facts.SERVICE_USERS["supernode"]
SUPERLINK = facts.SERVICE_USERS["superlink"]
PUB = "ecdsa-sha2-nistp384 AAAAE2VjZHNhLXNoYTItbmlzdHAzODQAAAAIbmlzdHAzODQAAABhBAAA org-a\n"
# The directories hosts and site kits had before nina.host.trust (mode, owner, group); the rest as today.
LEGACY = {
    "/opt/python": (0o2775, "root", GROUP),
    facts.SUPERNODE_OPT: (0o755, SUPERNODE, GROUP),
    facts.SUPERLINK_OPT: (0o755, SUPERLINK, GROUP),
}


@pytest.fixture(scope="module")
def accounts() -> Iterator[None]:
    """fl_system, supernode and superlink as a host has them (created here if missing, removed after)."""
    made_group, made_users = False, []
    try:
        try:
            grp.getgrnam(GROUP)
        except KeyError:
            subprocess.run(["groupadd", "--system", GROUP], check=True)
            made_group = True
        for user in (SUPERNODE, SUPERLINK):
            try:
                pwd.getpwnam(user)
            except KeyError:
                locked = ["--system", "--shell", facts.SERVICE_SHELL, "--no-create-home", "--home-dir", "/nonexistent"]
                subprocess.run(["useradd", *locked, "--groups", GROUP, user], check=True)
                made_users.append(user)
        yield
    finally:
        for user in made_users:
            subprocess.run(["userdel", user], check=False)
        if made_group:
            subprocess.run(["groupdel", GROUP], check=False)


@pytest.fixture
def base(accounts) -> Iterator[Path]:
    """A root-owned 0755 directory the service users can traverse (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="nina-attacker-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def as_user(user: str, script: str) -> subprocess.CompletedProcess:
    """Run a shell script as `user` with the groups a host gives it (the attacker's code)."""
    return subprocess.run(
        ["/bin/sh", "-c", script],
        user=user,
        group=GROUP,
        extra_groups=[GROUP],
        cwd="/",
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )


def mkdir(path: Path, mode: int, owner: str, group: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, pwd.getpwnam(owner).pw_uid, grp.getgrnam(group).gr_gid)
    path.chmod(mode)


def host_tree(root: Path, roles: list[str], legacy: bool) -> None:
    """The directories of a host with `roles` under `root`, with their modes and owners (and,
    `legacy`, as they were before), and a root-made venv with a root-owned python and flwr."""
    for d in services.directories(services.for_roles(roles)):
        mode, owner, group = LEGACY.get(d.path, (d.mode, d.owner, d.group)) if legacy else (d.mode, d.owner, d.group)
        mkdir(root / d.path.lstrip("/"), mode, owner, group)
    venv_bin = root / facts.FLOWER_VENV.lstrip("/") / "bin"
    venv_bin.mkdir(parents=True, exist_ok=True)
    (venv_bin / "python").symlink_to(facts.HOST_PYTHON)
    # Like flwr's CLI, it writes into its FLWR_HOME; and it says it ran.
    flwr = f"""#!/bin/sh
touch {root.parent}/flwr-ran
mkdir -p "$FLWR_HOME" && echo used > "$FLWR_HOME/seen"
echo '{{"success": true, "node-id": 4242}}'
"""
    write(venv_bin / "flwr", flwr, 0o755)


def write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


def secret_dir(base: Path) -> Path:
    """A root-only directory, standing for /etc or /root: what a planted link points at."""
    secret = base / "secret"
    mkdir(secret, 0o700, "root", "root")
    write(secret / "shadow", "root's\n", 0o600)
    return secret


def snapshot(path: Path) -> dict[str, tuple[int, int, int, bytes]]:
    """Every entry under `path` (and itself): mode, owner, group, content."""
    out = {}
    for p in [path, *sorted(path.rglob("*"))]:
        st = p.lstat()
        out[str(p)] = (st.st_mode, st.st_uid, st.st_gid, p.read_bytes() if p.is_file() and not p.is_symlink() else b"")
    return out


def planted_program(marker: Path) -> str:
    """A program that leaves `marker` (in a root-only directory: only root can make it) when it runs."""
    return f'#!/bin/sh\ntouch {marker}\necho \'{{"success": true, "node-id": 1}}\'\n'


def plant_venv(user: str, root: Path, marker: Path) -> None:
    """As `user`: rename the venv away and put one in its place whose python, pip and flwr leave `marker`."""
    venv = root / facts.FLOWER_VENV.lstrip("/")
    program = planted_program(marker)
    script = f"""set -e
mv {venv} {venv}.orig
mkdir -p {venv}/bin
for p in python python3 pip flwr; do printf '%s' '{program}' > {venv}/bin/$p; chmod 755 {venv}/bin/$p; done
"""
    proc = as_user(user, script)
    assert proc.returncode == 0, f"the attacker could not plant the venv on the old layout: {proc.stderr}"
    assert (venv / "bin/python").stat().st_uid == pwd.getpwnam(user).pw_uid


def one_line_refusal(stderr: str, *needles: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if all(n in line for n in needles)]
    assert lines, f"no line with {needles} in:\n{stderr}"
    return lines[0]


# --- today's layout: nothing to plant -------------------------------------------------------


def test_service_users_can_write_only_their_own_state(base):
    """On the layout user-data and install.sh make, supernode and superlink can create entries
    only in their own state directories: not in /opt/python, not in the venv, not next to the
    run scripts, the admin project or the container files root writes."""
    root = base / "host"
    host_tree(root, ["superlink", "supernode"], legacy=False)
    dirs = [d.path for d in services.directories(services.for_roles(["superlink", "supernode"]))]
    dirs += [facts.FLOWER_VENV, f"{facts.FLOWER_VENV}/bin"]
    writable: dict[str, set[str]] = {}
    for user in (SUPERNODE, SUPERLINK):
        script = "".join(f"touch {root}{d}/.probe 2>/dev/null && echo {d}; " for d in dirs)
        writable[user] = set(as_user(user, script).stdout.split())
    assert writable == {
        SUPERNODE: {facts.SUPERNODE_FLWR_HOME, facts.SUPERNODE_DATA},
        SUPERLINK: {facts.SUPERLINK_STATE_DIR},
    }
    venv = root / facts.FLOWER_VENV.lstrip("/")
    for user in (SUPERNODE, SUPERLINK):
        tried = as_user(user, f"mv {venv} {venv}.x || ln -s /etc {root}{facts.SUPERNODE_CONTAINERS}")
        assert tried.returncode != 0 and venv.is_dir() and not (root / facts.SUPERNODE_CONTAINERS.lstrip("/")).exists()


# --- a site kit's install.sh ----------------------------------------------------------------


def extract(data: bytes, dest: Path) -> Path:
    mkdir(dest, 0o755, "root", "root")
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        tar.extractall(dest, filter="tar")
    (top,) = [p for p in dest.iterdir() if p.name.endswith("-sitekit")]
    return top


def install(kit_dir: Path, *args: str) -> subprocess.CompletedProcess:
    """The kit's install.sh as a site runs it: as root, with the platform key's fingerprint."""
    import outputs_fixture  # benchmarks/ is on sys.path (conftest's kit_fixture_module)

    from nina import pem

    fingerprint = pem.public_key_sha256(outputs_fixture.signing_key().public_key_pem)
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}  # as sudo leaves it
    argv = ["bash", str(kit_dir / "install.sh"), "--platform-key-sha256", fingerprint, *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.parametrize("planted", ["containers", "flwr-home"])
def test_install_sh_writes_and_chmods_nothing_through_a_planted_link(base, kit_archives, planted):
    """The old layout: /opt/flwr/supernode is supernode's, so its code plants a link there to a
    root-only directory (the container files' directory, or the SuperNode's new FLWR_HOME);
    `install.sh --root ... --containers` then refuses, and the directory it points at is untouched."""
    root = base / "host"
    host_tree(root, ["supernode"], legacy=True)
    secret = secret_dir(base)
    target = {"containers": facts.SUPERNODE_CONTAINERS, "flwr-home": facts.SUPERNODE_FLWR_HOME}[planted]
    if planted == "flwr-home":
        with contextlib.suppress(FileNotFoundError):  # not there yet on a host of the old layout
            (root / target.lstrip("/")).rmdir()
    link = root / target.lstrip("/")
    planted_ok = as_user(SUPERNODE, f"ln -s {secret} {link}")
    assert planted_ok.returncode == 0, planted_ok.stderr
    before = snapshot(secret)
    top = extract(kit_archives["hospital-a"], base / "kit")

    dry = install(top, "--root", str(root), "--containers", "--dry-run")
    assert snapshot(secret) == before
    real = install(top, "--root", str(root), "--containers")
    assert snapshot(secret) == before, "root wrote or changed something through the planted link"
    assert real.returncode != 0, real.stdout
    line = one_line_refusal(real.stderr, str(link), "symbolic link")
    assert "run install.sh again" in line or "run again" in line, line
    assert dry.returncode in (0, 1), dry.stderr
    assert "Traceback" not in dry.stderr


@pytest.fixture
def venv_kit(kit_built, base, monkeypatch) -> tuple[Path, Path]:
    """hospital-a's kit made for a host whose Flower venv lies under base/host (facts.FLOWER_VENV
    moved there while the kit is rendered), extracted: (kit directory, host root)."""
    root = base / "host"
    monkeypatch.setattr(facts, "FLOWER_VENV", str(root) + facts.FLOWER_VENV)
    data = kit.build_kit(kit.parse_outputs(kit_built.outputs), "hospital-a")
    monkeypatch.undo()
    return extract(data, base / "kit"), root


def test_install_sh_does_not_run_a_planted_venv_python(base, venv_kit):
    """The old layout: /opt/python is 2775 root:fl_system, so supernode's code renames the venv
    and plants its own bin/python and bin/pip. `install.sh --dry-run` (which used to ask the
    venv's python for flwr's version, as root) runs neither, and says why."""
    top, root = venv_kit
    host_tree(root, ["supernode"], legacy=True)
    marker = base / "ran-as-root"
    plant_venv(SUPERNODE, root, marker)
    dry = install(top, "--dry-run")
    assert not marker.exists(), "install.sh --dry-run ran the planted python as root"
    assert "Traceback" not in dry.stderr
    venv = root / facts.FLOWER_VENV.lstrip("/")
    # The first thing found on the way: the directory the attacker could write to.
    assert f"dry run: {venv}/bin/python is not run: {root}/opt/python is writable by group {GROUP}" in dry.stdout, dry.stdout + dry.stderr


# --- nina-membership, as `sudo nina-membership` runs it on the SuperLink host ----------------


def membership(root: Path, *args: str, stdin: str = "", cwd: str = "/") -> subprocess.CompletedProcess:
    """The real nina-membership (its launcher, with this checkout's nina.host) as root, with the
    SuperLink host's paths under `root`, as sudo runs it (a reset environment)."""
    launcher = write(root.parent / "nina-membership", render.membership_script(render.SOURCE_ROOT), 0o755)
    python = facts.HOST_PYTHON if os.path.exists(facts.HOST_PYTHON) else sys.executable
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "NINA_FLWR": f"{root}{facts.FLOWER_VENV}/bin/flwr",
        "NINA_MEMBERS_DIR": f"{root}{facts.SUPERLINK_MEMBERS_DIR}",
        "NINA_FLWR_HOME": f"{root}{facts.SUPERLINK_ADMIN_FLWR_HOME}",
        "NINA_CONTROL_WAIT": "0",
    }
    return subprocess.run([python, "-I", str(launcher), *args], input=stdin, env=env, cwd=cwd, capture_output=True, text=True, timeout=60)


def superlink_host(base: Path, legacy: bool) -> Path:
    root = base / "host"
    host_tree(root, ["superlink"], legacy)
    home = root / facts.SUPERLINK_ADMIN_FLWR_HOME.lstrip("/")
    write(home / facts.FLWR_CONFIG_FILE, render.admin_flwr_config("main"))
    return root


def test_nina_membership_works_on_todays_layout(base):
    """The control: with nothing planted, the checks let a root-owned flwr run."""
    root = superlink_host(base, legacy=False)
    proc = membership(root, "register", "org-a", stdin=PUB)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"slug": "org-a", "node-id": "4242", "changed": True}
    records = root / facts.SUPERLINK_MEMBERS_DIR.lstrip("/")
    assert (records / "org-a.node_id").read_text() == "4242\n" and (records / "org-a.node_id").stat().st_uid == 0


@pytest.mark.parametrize("command", ["register", "register-many"])
def test_nina_membership_does_not_run_a_planted_flwr(base, command):
    """The old layout: superlink's code renames the venv and plants bin/flwr (and bin/python, the
    interpreter register-many starts for a batch); `sudo nina-membership register` and
    `register-many` refuse without running either (they used to run them as root)."""
    root = superlink_host(base, legacy=True)
    marker = base / "ran-as-root"
    plant_venv(SUPERLINK, root, marker)
    if command == "register":
        proc = membership(root, "register", "org-a", stdin=PUB)
    else:
        proc = membership(root, "register-many", stdin=json.dumps({"org-a": PUB, "org-b": PUB.replace("org-a", "org-b")}))
    assert not marker.exists(), "nina-membership ran the planted flwr as root"
    assert proc.returncode == 1, proc.stdout + proc.stderr
    line = one_line_refusal(proc.stderr, "refused", f"{root}/opt/python is writable by group {GROUP}")
    assert "run again" in line


def test_nina_membership_writes_nothing_through_a_planted_link(base):
    """superlink owns its state volume's top directory, so its code can replace the members
    directory there with a link to a root-only directory. nina-membership refuses: nothing is
    written there, and flwr does not run. (flwr 1.31's CLI reads its connection from
    FLWR_HOME, which is root's alone under /var/lib/nina: no admin project in /opt/flwr any more.)"""
    root = superlink_host(base, legacy=False)
    secret = secret_dir(base)
    write(secret / "pyproject.toml", '[tool.flwr.federations.local]\naddress = "127.0.0.1:1"\n')
    link = root / facts.SUPERLINK_MEMBERS_DIR.lstrip("/")
    planted_ok = as_user(SUPERLINK, f"{{ [ ! -e {link} ] || mv {link} {link}.orig; }} && ln -s {secret} {link}")
    assert planted_ok.returncode == 0, planted_ok.stderr
    before = snapshot(secret)
    proc = membership(root, "register", "org-a", stdin=PUB)
    assert snapshot(secret) == before, "root wrote through the planted link"
    assert not (base / "flwr-ran").exists(), "root ran flwr with what the link points at"
    assert proc.returncode == 1, proc.stdout + proc.stderr
    line = one_line_refusal(proc.stderr, "refused", f"{link} is a symbolic link (to {secret})")
    assert "run again" in line


def test_nina_membership_keeps_the_cli_home_off_the_state_volume(base):
    """flwr's CLI home used to be on the state volume (state/admin-flwr-home), where superlink can
    put a link to a root-only directory for root's flwr to write into. It is root's alone now:
    what superlink plants at the old place is never used."""
    root = superlink_host(base, legacy=False)
    secret = secret_dir(base)
    old = root / facts.SUPERLINK_STATE_DIR.lstrip("/") / "admin-flwr-home"
    planted_ok = as_user(SUPERLINK, f"ln -s {secret} {old}")
    assert planted_ok.returncode == 0, planted_ok.stderr
    before = snapshot(secret)
    proc = membership(root, "register", "org-a", stdin=PUB)
    assert snapshot(secret) == before, "root's flwr wrote through the planted link"
    assert proc.returncode == 0, proc.stderr
    assert not facts.SUPERLINK_ADMIN_FLWR_HOME.startswith(facts.SUPERLINK_STATE_DIR + "/")


def test_nina_membership_imports_nothing_from_where_it_was_started(base):
    """register-many runs a Python flwr's commands forked from one interpreter it starts for the batch. An
    operator who runs `sudo nina-membership register-many` from a directory superlink owns (its
    state volume) must not have root import what superlink put there (a `json.py`)."""
    root = superlink_host(base, legacy=False)
    flwr = root / facts.FLOWER_VENV.lstrip("/") / "bin/flwr"
    python = facts.HOST_PYTHON if os.path.exists(facts.HOST_PYTHON) else sys.executable
    write(flwr, f"#!{python}\nimport json\nprint(json.dumps({{'success': True, 'node-id': 7}}))\n", 0o755)
    state = root / facts.SUPERLINK_STATE_DIR.lstrip("/")
    marker = base / "ran-as-root"
    planted = as_user(SUPERLINK, f'printf \'open("{marker}", "w")\\nfrom _json import *\\n\' > {state}/json.py')
    assert planted.returncode == 0, planted.stderr
    proc = membership(root, "register-many", stdin=json.dumps({"org-a": PUB}), cwd=str(state))
    assert not marker.exists(), "root imported superlink's json.py"
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[0]) == {"slug": "org-a", "node-id": "7", "changed": True}
