"""Site kits (nina.kit, `nina kit export`): layout and modes, isolation between organisations,
determinism, one source with the cloud SuperNodes, the installer run for real (--dry-run,
--root, tampered kits, keys kept by the organisation), shellcheck, README, the CLI, and
validation of the stack outputs (every problem is a KitError naming its JSON path).

The stack (conftest `kit_built`, from benchmarks/outputs_fixture.py) has a real ECDSA P-384
PKI: tenancy `main` with hospital-a and hospital-b on premise, cloud-lab in the cloud and
hospital-own on premise keeping its own keys; tenancy `beta` with beta-clinic on premise.
"""

from __future__ import annotations

import copy
import grp
import hashlib
import io
import json
import os
import pwd
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nina import cli, environments, facts, kit, pem, render, services, troubleshooting, vpn
from nina.plan import Member

REPO = Path(__file__).resolve().parent.parent
SHELLCHECK = shutil.which("shellcheck") or ""  # "" when missing (the tests skip)
ONPREM = ["hospital-a", "hospital-b", "hospital-own", "beta-clinic"]
GPU_ONPREM = ["hospital-b"]  # the fixture's on-premise organisation with gpu: true
ALL = sorted([*ONPREM, "cloud-lab"])
# The cloud hosts' installer (nina-install-files and what it imports), and the payloads it installs.
INSTALLER_FILES = {
    "installer/nina/__init__.py": 0o644,
    "installer/nina/facts.py": 0o644,
    "installer/nina/host/__init__.py": 0o644,
    "installer/nina/host/install_files.py": 0o644,
    "installer/nina/host/trust.py": 0o644,
    "installer/nina/host/env_sync.py": 0o644,  # nina-env-sync: install.sh makes the venv hold the lock
}
CONTAINER_FILES = {
    "containers/Dockerfile.cpu": 0o644,
    "containers/Dockerfile.cuda": 0o644,
    "containers/build.sh": 0o755,
    "containers/flower_env.lock": 0o644,  # the tenancy's training environment, which both images install
    "containers/run-docker.sh": 0o755,
    "containers/run-docker-gpu.sh": 0o755,
    "containers/run-podman.sh": 0o755,
    "containers/run-podman-gpu.sh": 0o755,
}


def expected_files(slug: str, onprem: bool, own_keys: bool) -> dict[str, int]:
    """The kit's files and modes, written out by hand from the brief (not derived from nina.kit)."""
    files = {
        "README.md": 0o644,
        "SHA256SUMS": 0o644,
        "SHA256SUMS.sig": 0o644,
        "platform-key.pem": 0o644,
        "install.sh": 0o755,
        **INSTALLER_FILES,
        "payloads/exporter.json": 0o600,
        "payloads/supernode.json": 0o600,
        "payloads/supernode-systemd.json": 0o600,
        "payloads/containers.json": 0o600,
        **CONTAINER_FILES,
        "etc/default/prometheus-node-exporter": 0o644,
        "etc/flwr/supernode/supernode.conf": 0o644,
        "etc/flwr/supernode/certs/ca.crt": 0o644,
        "etc/flwr/supernode/certs/client_credentials.pub": 0o644,
        "opt/flwr/supernode/run_supernode.sh": 0o755,
        "opt/flwr/supernode/supernode.service": 0o644,
        # The tenancy's training environment lock, for the venv (and in CONTAINER_FILES for build.sh).
        "opt/python/flower_env.lock": 0o644,
    }
    if not own_keys:
        files["etc/flwr/supernode/certs/client_credentials"] = 0o600
    if onprem:
        files.update(
            {
                "payloads/vpn.json": 0o600,
                "etc/openvpn/client/client.conf": 0o644,
                "etc/openvpn/clientcerts/ca.crt": 0o644,
                f"etc/openvpn/clientcerts/issued/{slug}.crt": 0o644,
                "etc/openvpn/clientcerts/private/tls-crypt-v2.key": 0o600,
                # The node exporter on the tunnel address only, after the VPN client.
                "etc/systemd/system/prometheus-node-exporter.service.d/nina-vpn.conf": 0o644,
            }
        )
        if not own_keys:
            files[f"etc/openvpn/clientcerts/private/{slug}.key"] = 0o600
        if slug in GPU_ONPREM:
            # The DCGM exporter on the tunnel address only, started where the site installed DCGM.
            files["etc/systemd/system/nina-dcgm-exporter.service"] = 0o644
    return files


def members(data: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return tar.getmembers()


def contents(data: bytes) -> dict[str, bytes]:
    """path inside the kit's top directory -> bytes, for every regular file."""
    out = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for m in tar.getmembers():
            if m.isfile():
                member = tar.extractfile(m)
                assert member is not None
                out[m.name.split("/", 1)[1]] = member.read()
    return out


def extract(data: bytes, dest: Path) -> Path:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        tar.extractall(dest, filter="tar")
    (top,) = [p for p in dest.iterdir() if p.name.endswith("-sitekit")]
    return top


def platform_fingerprint() -> str:
    """The SHA-256 of the fixture's platform signing key: what the operators tell a site by phone."""
    import outputs_fixture  # benchmarks/ is on sys.path (conftest's kit_fixture_module)

    return pem.public_key_sha256(outputs_fixture.signing_key().public_key_pem)


def install(kit_dir: Path, *args: str, env: dict | None = None, fingerprint: str | None = "") -> subprocess.CompletedProcess:
    """install.sh with the platform key's fingerprint, as a site runs it (`fingerprint=None`: without one)."""
    given = [] if fingerprint is None else ["--platform-key-sha256", fingerprint or platform_fingerprint()]
    return subprocess.run(["bash", str(kit_dir / "install.sh"), *given, *args], capture_output=True, text=True, timeout=60, env=env)


def tree_digest(root: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(root)): (p.stat().st_mode, p.read_bytes() if p.is_file() else b"") for p in sorted(root.rglob("*"))}


# --- layout ----------------------------------------------------------------------------------


@pytest.mark.parametrize("slug", ALL)
def test_exact_members_and_modes(kit_archives, slug):
    entries = members(kit_archives[slug])
    top = f"{slug}-sitekit"
    files = {m.name.removeprefix(top + "/"): stat.S_IMODE(m.mode) for m in entries if m.isfile()}
    onprem, own = slug in ONPREM, slug == "hospital-own"
    assert files == expected_files(slug, onprem, own)
    # Only regular files and directories; every directory is a parent of a file, with its mode.
    assert all(m.isfile() or m.isdir() for m in entries)
    dirs = {m.name: stat.S_IMODE(m.mode) for m in entries if m.isdir()}
    parents = {top} | {f"{top}/" + "/".join(p.split("/")[:i]) for p in files for i in range(1, p.count("/") + 1)}
    assert set(dirs) == parents
    private = {top, f"{top}/etc/flwr/supernode/certs", f"{top}/etc/openvpn/clientcerts/private", f"{top}/payloads"}
    assert {d: (0o700 if d in private else 0o755) for d in dirs} == dirs
    # Owners, times and order are fixed.
    assert {(m.uid, m.gid, m.uname, m.gname, m.mtime) for m in entries} == {(0, 0, "root", "root", 0)}
    names = [m.name for m in entries]
    assert names == sorted(names, key=lambda n: n.split("/"))
    assert all(n == top or n.startswith(top + "/") for n in names)


def test_gzip_header_has_no_time_and_no_name(kit_archives):
    for data in kit_archives.values():
        assert data[:3] == b"\x1f\x8b\x08"
        assert data[3] & 0x08 == 0, "FNAME flag set"
        assert data[4:8] == b"\0\0\0\0", "gzip mtime not zero"


def test_sha256sums_cover_every_other_file(kit_archives, tmp_path):
    for slug, data in kit_archives.items():
        files = contents(data)
        lines = files["SHA256SUMS"].decode().splitlines()
        listed = {line[66:]: line[:64] for line in lines}
        assert [line[66:] for line in lines] == sorted(listed)
        assert all(line[64:66] == "  " for line in lines)
        assert listed == {p: hashlib.sha256(b).hexdigest() for p, b in files.items() if p not in ("SHA256SUMS", "SHA256SUMS.sig")}
        top = extract(data, tmp_path / slug)
        subprocess.run(["sha256sum", "--check", "--strict", "--quiet", "SHA256SUMS"], cwd=top, check=True)


# --- nothing of another organisation ---------------------------------------------------------


def _pem_bodies(pem: str) -> list[str]:
    """The base64 lines of a PEM/OpenSSH block, long enough to be unique."""
    return [line for line in pem.splitlines() if len(line) >= 40 and "-----" not in line]


def foreign_markers(outputs: dict, slug: str) -> list[str]:
    """Strings that belong to other organisations, other tenancies, or no kit at all."""
    tenancy = next(t for t, v in outputs["tenancies"].items() if slug in v["organisations"])
    own = outputs["tenancies"][tenancy]["organisations"][slug]
    # Certificates from one CA share lines (issuer, validity): only the others' own lines count.
    # Private keys of one format share their structural lines: the same goes for those.
    shared = {
        line
        for pem in (
            outputs["ca_cert_pem"],
            own["vpn_client_cert_pem"] or "",
            outputs["supernode_private_keys"].get(slug, ""),
            outputs["vpn_client_private_keys"].get(slug, ""),
        )
        for line in _pem_bodies(pem)
    }
    markers = []
    for t_name, t in outputs["tenancies"].items():
        for other, org in t["organisations"].items():
            if other == slug:
                continue
            markers += [other, org["display_name"]]
            cert_lines = [line for line in _pem_bodies(org["vpn_client_cert_pem"] or "") if line not in shared]
            assert cert_lines or not org["vpn_client_cert_pem"]
            markers += cert_lines
            markers.append(org["supernode_public_key_openssh"].split()[1])
            if org["vpn_address"]:
                markers.append(re.escape(org["vpn_address"]) + r"(?![0-9])")
        if t_name != tenancy:
            markers += [t["superlink"]["internal_ip"], t["superlink"]["host"]]
            if t["vpn"]:
                markers += [t["vpn"]["public_ip"], t["vpn"]["host"], t["vpn"]["pool_cidr"].rsplit(".", 1)[0] + "."]
    # Every other organisation's keys, its tls-crypt-v2 key too: no kit holds a key of another site.
    for name in ("supernode_private_keys", "vpn_client_private_keys", "vpn_tls_crypt_v2_keys"):
        for other, key_pem in outputs[name].items():
            if other != slug:
                markers += [line for line in _pem_bodies(key_pem) if line not in shared]
    markers += [line for line in _pem_bodies(outputs["ops_ssh_private_key"]) if line not in shared]
    markers += _pem_bodies(outputs["platform_signing_private_key_pem"])  # signs kits, is in none
    markers += list(outputs["database_passwords"].values())
    return markers


@pytest.mark.parametrize("slug", ALL)
def test_nothing_of_other_organisations_inside(kit_archives, kit_built, slug):
    outputs = kit_built.outputs
    markers = foreign_markers(outputs, slug)
    assert len(markers) > 20
    files = contents(kit_archives[slug])
    for path, data in files.items():
        text = data.decode(errors="replace")  # SHA256SUMS.sig is binary (DER)
        for marker in markers:
            pattern = marker if marker.endswith("(?![0-9])") else re.escape(marker)
            assert not re.search(pattern, path), f"{slug}: {path} is named after {marker!r}"
            assert not re.search(pattern, text), f"{slug}: {path} holds {marker!r}"
    # ... while its own things are there.
    org = next(t["organisations"][slug] for t in outputs["tenancies"].values() if slug in t["organisations"])
    assert files["etc/flwr/supernode/certs/client_credentials.pub"].decode() == org["supernode_public_key_openssh"]
    if slug in ONPREM:
        assert files[f"etc/openvpn/clientcerts/issued/{slug}.crt"].decode() == org["vpn_client_cert_pem"]
        assert org["vpn_address"] in files["README.md"].decode()


def test_organisation_keeping_its_keys_gets_no_private_key(kit_archives, kit_built):
    files = contents(kit_archives["hospital-own"])
    for path, data in files.items():
        assert b"PRIVATE KEY-----" not in data, path
    held = kit_built.held["hospital-own"]
    assert set(held) == {"vpn_key_pem", "supernode_key_openssh"}
    for key_pem in held.values():
        for body in _pem_bodies(key_pem):
            assert all(body.encode() not in data for data in files.values())
    # ... but its own tls-crypt-v2 key (a control-channel key nina makes: it needs the server key).
    tc = files["etc/openvpn/clientcerts/private/tls-crypt-v2.key"].decode()
    assert tc == kit_built.outputs["vpn_tls_crypt_v2_keys"]["hospital-own"] and tc.startswith(
        "-----BEGIN OpenVPN tls-crypt-v2 client key-----"
    )


# --- determinism and export ------------------------------------------------------------------


def test_builds_are_byte_identical(kit_built, kit_archives):
    again = json.loads(json.dumps(kit_built.outputs))  # as the CLI reads it
    for slug, data in kit_archives.items():
        assert kit.build_kit(again, slug) == data


def test_export_kits_writes_0600_files_identical_across_runs(kit_built, kit_archives, tmp_path):
    old = os.umask(0)  # the mode must not depend on the umask
    try:
        first = kit.export_kits(kit_built.outputs, None, tmp_path / "a")
        (tmp_path / "b").mkdir()
        stale = tmp_path / "b" / "hospital-a-sitekit.tar.gz"
        stale.write_bytes(b"old")
        stale.chmod(0o644)
        second = kit.export_kits(kit_built.outputs, ["hospital-a", "cloud-lab", "hospital-a"], tmp_path / "b")
    finally:
        os.umask(old)
    assert [p.name for p in first] == [f"{s}-sitekit.tar.gz" for s in ALL]
    assert [p.name for p in second] == ["hospital-a-sitekit.tar.gz", "cloud-lab-sitekit.tar.gz"]
    for path in first + second:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert path.read_bytes() == kit_archives[path.name.removesuffix("-sitekit.tar.gz")]
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o700
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["cloud-lab-sitekit.tar.gz", "hospital-a-sitekit.tar.gz"]


def test_export_writes_nothing_when_one_kit_fails(kit_outputs, tmp_path):
    kit_outputs["supernode_private_keys"]["hospital-b"] = kit_outputs["supernode_private_keys"]["hospital-a"]
    with pytest.raises(kit.KitError, match=r"supernode_private_keys\.hospital-b: does not belong to"):
        kit.export_kits(kit_outputs, None, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(kit.UnknownOrganisation, match="known slugs: beta-clinic, cloud-lab, hospital-a"):
        kit.export_kits(kit_outputs, ["hospital-a", "nope"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --- one source with the cloud SuperNodes ------------------------------------------------------


@pytest.mark.parametrize("slug", ["hospital-a", "cloud-lab", "beta-clinic"])
def test_files_are_those_nina_render_and_nina_vpn_produce(kit_archives, kit_built, slug):
    outputs = kit_built.outputs
    tname, t = next((n, t) for n, t in outputs["tenancies"].items() if slug in t["organisations"])
    o = t["organisations"][slug]
    member = Member(tname, slug, o["display_name"], o["placement"], o["partition_id"], o["gpu"], vpn_address=o["vpn_address"])
    files = contents(kit_archives[slug])
    fleet = f"{t['superlink']['internal_ip']}:{facts.SUPERLINK_FLEET_PORT}"
    assert files["etc/flwr/supernode/supernode.conf"] == render.supernode_conf(member, fleet).encode()
    assert files["opt/flwr/supernode/run_supernode.sh"] == render.run_supernode_sh().encode()
    assert files["opt/flwr/supernode/supernode.service"] == render.supernode_service().encode()
    # The node exporter: on premise on the tunnel address only (the hospital's network never reaches it).
    exporter = files["etc/default/prometheus-node-exporter"].decode()
    if o["placement"] == "onprem":
        assert f"--web.listen-address={o['vpn_address']}:{facts.NODE_EXPORTER_PORT} " in exporter
        assert exporter == render.node_exporter_defaults(o["vpn_address"])
    else:
        assert exporter == render.node_exporter_defaults()
    # The very payload a cloud SuperNode gets over SSH carries the same files.
    payload = json.loads(
        render.supernode_delivery(
            member,
            t["superlink"]["fleet_address"],
            outputs["ca_cert_pem"],
            outputs["supernode_private_keys"][slug],
            o["supernode_public_key_openssh"],
            environments.read_lock(environments.DEFAULT),
        )
    )
    # The cloud host runs nina-env-sync as a unit of its own; install.sh runs the kit's copy itself (step 5).
    env_sync = {facts.ENV_SYNC_BIN, f"{facts.SYSTEMD_SYSTEM_DIR}/{facts.ENV_SYNC_SERVICE}"}
    not_in_kit = {facts.LOCAL_CA_TRUST, *env_sync}
    delivered = {f["path"].lstrip("/"): (f["content"].encode(), f["mode"]) for f in payload["files"] if f["path"] not in not_in_kit}
    # The kit carries the unit beside the run script; install.sh puts it where the delivery does.
    unit = f"{facts.SYSTEMD_SYSTEM_DIR}/{facts.SUPERNODE_UNIT}".lstrip("/")
    in_kit = {p: f"{facts.SUPERNODE_OPT}/{facts.SUPERNODE_UNIT}".lstrip("/") if p == unit else p for p in delivered}
    assert unit in delivered and set(in_kit.values()) <= set(files)
    assert {p: files[in_kit[p]] for p in delivered} == {p: c for p, (c, _) in delivered.items()}
    # install.sh installs them with the cloud hosts' installer (the same program), from payloads
    # whose entries are the cloud delivery's: paths, contents, modes and owners.
    programs = {**render.installer_programs(), "nina/host/env_sync.py": render.host_programs()["nina/host/env_sync.py"]}
    assert {f"installer/{rel}": src.encode() for rel, src in programs.items()} == {
        p: c for p, c in files.items() if p.startswith("installer/")
    }
    assert render.installer_programs()["nina/host/install_files.py"] == render.host_programs()["nina/host/install_files.py"]
    kit_entries = [e for name in ("supernode", "supernode-systemd") for e in json.loads(files[f"payloads/{name}.json"])["files"]]
    cloud_entries = [e for e in payload["files"] if e["path"] not in not_in_kit]
    assert sorted(kit_entries, key=lambda e: e["path"]) == sorted(cloud_entries, key=lambda e: e["path"])
    assert json.loads(files["payloads/supernode.json"])["restart"] == []  # install.sh starts the services itself
    if o["placement"] == "onprem":
        v = t["vpn"]
        assert (
            files["etc/openvpn/client/client.conf"]
            == vpn.client_conf(slug, v["server_name"], v["public_ip"], v["udp_port"], v["tcp_port"]).encode()
        )
        for key, path in vpn.client_certs_paths(slug).items():
            assert path.lstrip("/") in files, key
        tc = f"tls-crypt-v2 {facts.OPENVPN_CLIENT_CERTS}/private/{facts.OPENVPN_TLS_CRYPT_V2_CLIENT_FILE}\n"
        assert tc.encode() in files["etc/openvpn/client/client.conf"] and b"tls-auth" not in files["etc/openvpn/client/client.conf"]
        assert (
            files[f"etc/openvpn/clientcerts/private/{facts.OPENVPN_TLS_CRYPT_V2_CLIENT_FILE}"]
            == outputs["vpn_tls_crypt_v2_keys"][slug].encode()
        )


# --- install.sh, run for real ------------------------------------------------------------------


def dest_of(path: str) -> str | None:
    if path in ("README.md", "SHA256SUMS", "SHA256SUMS.sig", "platform-key.pem", "install.sh") or path.startswith(
        ("installer/", "payloads/")
    ):
        return None
    if path == "opt/flwr/supernode/supernode.service":
        return "/etc/systemd/system/supernode.service"
    if path.startswith("containers/"):
        return "/opt/flwr/supernode/containers/" + path.split("/", 1)[1]
    return "/" + path


INSTALLED_DIRS = {
    "/etc/flwr": 0o755,
    "/etc/flwr/supernode": 0o750,
    "/etc/flwr/supernode/certs": 0o750,
    "/opt/flwr": 0o755,
    "/opt/flwr/supernode": 0o755,
    "/media/data": 0o750,
}


def test_dry_run_prints_every_action_and_touches_nothing(kit_archives, tmp_path):
    top = extract(kit_archives["hospital-a"], tmp_path / "kit")
    before = tree_digest(top)
    root = tmp_path / "root"
    proc = install(top, "--dry-run", "--root", str(root))
    assert proc.returncode == 0, proc.stderr
    assert not root.exists()
    assert tree_digest(top) == before
    out = proc.stdout
    assert f"all {len(expected_files('hospital-a', True, False)) - 2} files match SHA256SUMS" in out
    for path, mode in expected_files("hospital-a", True, False).items():
        dest = dest_of(path)
        if dest and not path.startswith("containers/"):  # nina-install-files names each file as on the host
            assert re.search(rf"^would write {re.escape(dest)} \(mode {mode:04o}, \S+:\S+\)$", out, re.M), path
    for d, mode in INSTALLED_DIRS.items():
        assert re.search(rf"\[dry-run\] install -d -m 0?{mode:o}( -o \S+ -g \S+)? {re.escape(str(root) + d)}\n", out), d
    assert "skipped: --root: group fl_system and user supernode are not created" in out
    assert "skipped: --root: systemd is left alone (units: openvpn-client@client.service, supernode.service" in out
    assert "dry run finished: nothing was changed" in out
    # A dry run on the real host (not root here or not) also changes nothing and names each step.
    proc = install(top, "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "would write /etc/openvpn/clientcerts/private/hospital-a.key (mode 0600, root:root)" in proc.stdout
    assert "[dry-run] systemctl enable openvpn-client@client.service" in proc.stdout
    assert tree_digest(top) == before


@pytest.mark.parametrize("slug", ALL)
@pytest.mark.parametrize("containers", [False, True], ids=["systemd", "containers"])
def test_dry_run_of_every_kit(kit_archives, tmp_path, slug, containers):
    top = extract(kit_archives[slug], tmp_path / "kit")
    root = tmp_path / "root"
    proc = install(top, "--dry-run", "--root", str(root), *(["--containers"] if containers else []))
    assert not root.exists()
    if slug == "hospital-own":  # its keys are not under root: it says so and would stop before services
        assert proc.returncode == 3, proc.stdout + proc.stderr
        assert "(dry run) install.sh would stop here, before starting any service" in proc.stderr
    else:
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "dry run finished: nothing was changed" in proc.stdout
    assert ("/opt/flwr/supernode/containers/build.sh" in proc.stdout) == containers
    assert ("/etc/systemd/system/supernode.service" in proc.stdout) != containers
    assert ("openvpn" in proc.stdout) == (slug in ONPREM)


@pytest.mark.parametrize("slug", ["hospital-a", "cloud-lab"])
def test_root_install_puts_files_in_place_with_modes_and_is_idempotent(kit_archives, tmp_path, slug):
    top = extract(kit_archives[slug], tmp_path / "kit")
    root = tmp_path / "root"
    proc = install(top, "--root", str(root))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    files = contents(kit_archives[slug])
    expected = {
        dest_of(p): m for p, m in expected_files(slug, slug in ONPREM, False).items() if dest_of(p) and not p.startswith("containers/")
    }
    installed = {"/" + str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode) for p in root.rglob("*") if p.is_file()}
    assert installed == expected
    for path in files:
        dest = dest_of(path)
        if dest is not None and dest in expected:
            assert (root / dest.lstrip("/")).read_bytes() == files[path]
    for d, mode in INSTALLED_DIRS.items():
        assert stat.S_IMODE((root / d.lstrip("/")).stat().st_mode) == mode, d
    assert stat.S_IMODE((root / "opt/python").stat().st_mode) == 0o755  # root's alone (tests/test_attacker.py)
    if slug in ONPREM:
        assert stat.S_IMODE((root / "etc/openvpn/clientcerts/private").stat().st_mode) == 0o700
    if os.geteuid() == 0:
        # Owners are given only where the user exists on this machine (CI has no `supernode`).
        key = root / "etc/flwr/supernode/certs/client_credentials"
        try:
            want = pwd.getpwnam("supernode").pw_uid
            grp.getgrnam("fl_system")
        except KeyError:
            want = 0
        assert key.stat().st_uid == want
    # Again: nothing to do. A file changed on the host is put back, and a loosened mode fixed.
    again = install(top, "--root", str(root))
    assert again.returncode == 0 and f"done: 0 file(s) installed or updated, {len(expected)} unchanged" in again.stdout
    (root / "etc/flwr/supernode/supernode.conf").write_text("edited\n")
    (root / "etc/flwr/supernode/certs/client_credentials").chmod(0o644)
    fixed = install(top, "--root", str(root))  # both rewritten, as nina-install-files does on the cloud hosts
    assert fixed.returncode == 0 and "done: 2 file(s) installed or updated" in fixed.stdout
    assert (root / "etc/flwr/supernode/supernode.conf").read_bytes() == files["etc/flwr/supernode/supernode.conf"]
    assert stat.S_IMODE((root / "etc/flwr/supernode/certs/client_credentials").stat().st_mode) == 0o600


def test_root_install_with_containers(kit_archives, tmp_path):
    top = extract(kit_archives["hospital-b"], tmp_path / "kit")
    root = tmp_path / "root"
    proc = install(top, "--containers", "--root", str(root))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    installed = {"/" + str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode) for p in root.rglob("*") if p.is_file()}
    assert {p: m for p, m in installed.items() if p.startswith("/opt/flwr/supernode/containers/")} == {
        dest_of(p): m for p, m in CONTAINER_FILES.items()
    }
    assert "/etc/systemd/system/supernode.service" not in installed
    assert "/opt/flwr/supernode/run_supernode.sh" in installed  # the image build copies it
    assert "/etc/flwr/supernode/certs/client_credentials" in installed
    assert not (root / "opt/python").exists()


def _cloud_supernode_bootstrap(render_plans, render_volume_ids) -> tuple[set[tuple[str, str, str, str]], list[str], list[str]]:
    """(directories as (path, mode, owner, group), packages, users) of a cloud SuperNode VM's user-data."""
    import yaml

    from cloudinit.userdata import user_data

    plan = render_plans["test"]
    host = next(h for h in plan.hosts if h.roles == ("supernode",))
    doc = yaml.safe_load(user_data(plan, host, render_volume_ids(host)))
    dirs: set[tuple[str, str, str, str]] = set()
    for step in doc["runcmd"]:
        words = step.split() if isinstance(step, str) else step
        if words[:2] == ["install", "-d"]:
            mode, owner, group, paths = words[3], words[5], words[7], list(words[8:])
            dirs |= {(p, mode, owner, group) for p in paths}
    users = [u["name"] for u in doc["users"] if u != "default"]
    return dirs, doc["packages"], users


@pytest.mark.parametrize("slug", ["hospital-a", "cloud-lab"])
@pytest.mark.parametrize("containers", [False, True], ids=["systemd", "containers"])
def test_layout_users_and_packages_are_those_of_a_supernode_host(kit_archives, tmp_path, render_plans, render_volume_ids, slug, containers):
    """What install.sh sets up besides files comes from nina.services: a cloud SuperNode VM's
    directories (modes, owners), packages and users, plus the VPN client's on premise; with
    --containers, without the venv's."""
    cloud_dirs, cloud_packages, cloud_users = _cloud_supernode_bootstrap(render_plans, render_volume_ids)
    host = services.for_roles(["supernode"]) + ([services.vpn.CLIENT] if slug in ONPREM else [])
    assert host == services.site_kit(slug in ONPREM)
    client = services.vpn.CLIENT if slug in ONPREM else services.Service("none", "")
    venv_dirs = {d.path for d in services.VENV_DIRECTORIES} if containers else set()
    venv_packages = set(services.VENV_PACKAGES) if containers else set()
    want_dirs = {d for d in cloud_dirs if d[0] not in venv_dirs} | {(d.path, f"{d.mode:04o}", d.owner, d.group) for d in client.directories}
    want_packages = sorted({p for p in cloud_packages if p not in venv_packages} | set(client.packages))
    assert cloud_users == [u.name for u in services.users(host)] == ["supernode"]

    top = extract(kit_archives[slug], tmp_path / "kit")
    mode = ["--containers"] if containers else []
    # On this host's real paths (a dry run changes nothing): every directory with mode and owners.
    dry = install(top, "--dry-run", *mode)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    made = set(re.findall(r"^\[dry-run\] install -d -m (\d+) -o (\S+) -g (\S+) (\S+)$", dry.stdout, re.M))
    assert {(p, m, o, g) for m, o, g, p in made} == {d for d in want_dirs if not os.path.exists(d[0])}
    for user in cloud_users:
        assert (
            f"[dry-run] useradd --system --shell /bin/false --home-dir /opt/flwr/{user} --no-create-home --groups fl_system {user}"
            in dry.stdout
        ) == (not _user_exists(user))
    # Under --root: the modes for real, and the whole package list.
    root = tmp_path / "root"
    proc = install(top, "--root", str(root), *mode)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert {p: f"{stat.S_IMODE((root / p.lstrip('/')).stat().st_mode):04o}" for p, *_ in want_dirs} == {p: m for p, m, *_ in want_dirs}
    skipped = re.search(r"skipped: --root: packages are not installed \((.*)\)", proc.stdout)
    assert skipped is not None and skipped.group(1).split() == want_packages


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def test_organisation_keys_must_be_in_place_before_services(kit_archives, kit_built, kit_outputs, tmp_path):
    top = extract(kit_archives["hospital-own"], tmp_path / "kit")
    root = tmp_path / "root"
    first = install(top, "--root", str(root))
    assert first.returncode == 3
    assert f"{root}/etc/flwr/supernode/certs/client_credentials" in first.stderr
    assert f"{root}/etc/openvpn/clientcerts/private/hospital-own.key" in first.stderr
    assert "systemd is left alone" not in first.stdout  # stopped before the services step
    assert (root / "etc/flwr/supernode/supernode.conf").is_file()  # the rest is installed
    held = kit_built.held["hospital-own"]
    sn_key = root / "etc/flwr/supernode/certs/client_credentials"
    vpn_key = root / "etc/openvpn/clientcerts/private/hospital-own.key"
    sn_key.write_text(held["supernode_key_openssh"])
    vpn_key.write_text(held["vpn_key_pem"])
    sn_key.chmod(0o644)
    second = install(top, "--root", str(root))
    assert second.returncode == 0, second.stdout + second.stderr
    assert stat.S_IMODE(sn_key.stat().st_mode) == 0o600
    if shutil.which("ssh-keygen") and shutil.which("openssl"):
        assert "client_credentials is present and matches" in second.stdout
        assert "hospital-own.key is present and matches" in second.stdout
        vpn_key.write_text(kit_outputs["vpn_client_private_keys"]["hospital-a"])  # someone else's key
        wrong = install(top, "--root", str(root))
        assert wrong.returncode == 3 and "does not belong to etc/openvpn/clientcerts/issued/hospital-own.crt" in wrong.stderr


@pytest.mark.parametrize("slug", ["hospital-a", "cloud-lab"])
def test_payloads_carry_exactly_the_files_that_have_a_place(kit_archives, slug):
    """Each kit file that install.sh puts on the host is in exactly one payload, byte for byte."""
    files = contents(kit_archives[slug])
    entries = [(name, e) for name in files if name.startswith("payloads/") for e in json.loads(files[name])["files"]]
    placed = {dest: (files[p], mode) for p, mode in expected_files(slug, slug in ONPREM, False).items() if (dest := dest_of(p))}
    assert sorted(e["path"] for _, e in entries) == sorted(placed)
    for name, e in entries:
        assert (e["content"].encode(), e["mode"]) == placed[e["path"]], e["path"]
        assert name == "payloads/containers.json" if e["path"].startswith(facts.SUPERNODE_CONTAINERS + "/") else True


def test_install_runs_the_kit_installer_with_the_system_python_only(kit_archives, tmp_path):
    """install.sh runs as root: neither a python3 earlier in PATH nor PYTHONPATH/PYTHONHOME, nor a
    bytecode cache, has a say in how the files are installed, and it writes nothing into the kit."""
    top = extract(kit_archives["cloud-lab"], tmp_path / "kit")
    trap = tmp_path / "trap"
    marker = tmp_path / "trapped"
    (trap / "nina" / "host").mkdir(parents=True)
    for init in ("nina/__init__.py", "nina/host/__init__.py"):
        (trap / init).write_text("")
    (trap / "nina/host/install_files.py").write_text(f"open({str(marker)!r}, 'w').write('module')\n")
    (trap / "python3").write_text(f"#!/bin/sh\necho path > {marker}\nexit 1\n")
    (trap / "python3").chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{trap}:{os.environ['PATH']}",
        "PYTHONPATH": str(trap),
        "PYTHONHOME": str(trap),
        "NINA_SYSTEMCTL": f"{trap / 'python3'}",  # the installer's test hook must not run anything either
    }
    before = tree_digest(top)
    root = tmp_path / "root"
    proc = install(top, "--root", str(root), env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not marker.exists()
    assert (root / "etc/flwr/supernode/supernode.conf").is_file()
    assert tree_digest(top) == before  # no __pycache__ in installer/


def test_a_kit_others_can_write_to_is_refused(kit_archives, tmp_path):
    top = extract(kit_archives["cloud-lab"], tmp_path / "kit")
    (top / "installer/nina/host").chmod(0o777)
    root = tmp_path / "root"
    proc = install(top, "--root", str(root))
    assert proc.returncode == 2 and "users other than its owner can change" in proc.stderr and "installer/nina/host" in proc.stderr
    assert not root.exists()


# --- the kit's signature ------------------------------------------------------------------------


def forge(top: Path, victim: str, *, resign_with: str | None = None) -> None:
    """What an attacker who changes a kit does: change a file, rewrite SHA256SUMS to match, and
    (`resign_with`: a private key PEM) replace the platform key and the signature with their own."""
    target = top / victim
    target.write_bytes(target.read_bytes() + b"\n# changed\n")
    lines = []
    for line in (top / "SHA256SUMS").read_text().splitlines():
        path = line[66:]
        lines.append(f"{hashlib.sha256((top / path).read_bytes()).hexdigest()}  {path}" if path != "platform-key.pem" else line)
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = serialization.load_pem_private_key(resign_with.encode(), None) if resign_with is not None else None
    if key is not None:
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        (top / "platform-key.pem").write_bytes(public)
        lines = [f"{hashlib.sha256(public).hexdigest()}  platform-key.pem" if ln.endswith("  platform-key.pem") else ln for ln in lines]
    sums = "".join(line + "\n" for line in lines).encode()
    (top / "SHA256SUMS").write_bytes(sums)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        (top / "SHA256SUMS.sig").write_bytes(key.sign(sums, ec.ECDSA(hashes.SHA384())))
    assert subprocess.run(["sha256sum", "--check", "--strict", "--quiet", "SHA256SUMS"], cwd=top).returncode == 0


def test_the_signature_is_the_platform_keys_over_sha256sums(kit_archives, kit_built):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    public_pem = kit_built.outputs["platform_signing_key"]["public_key_pem"]
    public = serialization.load_pem_public_key(public_pem.encode())
    assert isinstance(public, ec.EllipticCurvePublicKey)
    for data in kit_archives.values():
        files = contents(data)
        assert files["platform-key.pem"].decode() == public_pem
        public.verify(files["SHA256SUMS.sig"], files["SHA256SUMS"], ec.ECDSA(hashes.SHA384()))  # raises if not
    assert kit_built.outputs["platform_signing_key"]["sha256"] == platform_fingerprint()


@pytest.mark.parametrize("victim", ["install.sh", "etc/flwr/supernode/certs/ca.crt", "installer/nina/host/install_files.py"])
def test_a_kit_with_a_rewritten_sha256sums_is_refused(kit_archives, tmp_path, victim):
    """The attacker changes a file and rewrites SHA256SUMS to match: the signature no longer
    verifies, and install.sh refuses before anything (a changed install.sh proves nothing,
    which is why the README's manual check exists: test_the_readme_manual_check_...)."""
    top = extract(kit_archives["hospital-a"], tmp_path / "kit")
    forge(top, victim)
    root = tmp_path / "root"
    proc = install(top, "--root", str(root))
    if victim != "install.sh":
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "SHA256SUMS is not signed by the platform key" in proc.stderr and "nothing was changed" in proc.stderr
    assert not root.exists()


def test_a_kit_signed_with_another_key_is_refused(kit_archives, kit_fixture_module, tmp_path):
    top = extract(kit_archives["hospital-a"], tmp_path / "kit")
    attacker = kit_fixture_module.signing_key("attacker").private_key_pem
    forge(top, "etc/openvpn/client/client.conf", resign_with=attacker)
    root = tmp_path / "root"
    proc = install(top, "--root", str(root))
    assert proc.returncode == 2 and "not " + platform_fingerprint() + " as you were told" in proc.stderr, proc.stderr
    assert not root.exists()
    # ... also when the site checks against its own copy of the genuine key
    genuine = tmp_path / "platform-key.pem"
    genuine.write_bytes(contents(kit_archives["hospital-a"])["platform-key.pem"])
    proc = install(top, "--platform-key", str(genuine), "--root", str(root), fingerprint=None)
    assert proc.returncode == 2 and "SHA256SUMS is not signed by the platform key" in proc.stderr, proc.stderr
    assert not root.exists()


def test_install_needs_the_platform_fingerprint_from_the_site(kit_archives, tmp_path):
    top = extract(kit_archives["cloud-lab"], tmp_path / "kit")
    root = tmp_path / "root"
    for args in (("--root", str(root)), ("--dry-run", "--root", str(root))):
        proc = install(top, *args, fingerprint=None)
        assert proc.returncode == 2, proc.stderr
        assert "the kit's signature cannot be checked" in proc.stderr and "--platform-key-sha256 HEX" in proc.stderr
        assert "nothing was changed" in proc.stderr
    wrong = hashlib.sha256(b"not the key").hexdigest()
    proc = install(top, "--root", str(root), fingerprint=wrong)
    assert proc.returncode == 2 and f"not {wrong} as you were told" in proc.stderr, proc.stderr
    assert install(top, "--root", str(root), fingerprint="12:34").returncode == 64
    assert not root.exists()
    # As read out on the phone: capitals and colons are fine.
    spoken = ":".join(platform_fingerprint()[i : i + 2] for i in range(0, 64, 2)).upper()
    proc = install(top, "--dry-run", "--root", str(root), fingerprint=spoken)
    assert proc.returncode == 0 and "SHA256SUMS is signed by the platform key " + platform_fingerprint() in proc.stdout, proc.stderr
    # A copy of the key the site kept works too.
    kept = tmp_path / "kept.pem"
    kept.write_bytes((top / "platform-key.pem").read_bytes())
    proc = install(top, "--platform-key", str(kept), "--dry-run", "--root", str(root), fingerprint=None)
    assert proc.returncode == 0, proc.stderr


def _manual_check(kit_archives, slug: str, tmp_path: Path, fingerprint: str, archive: bytes | None = None) -> subprocess.CompletedProcess:
    """Section 1's commands of the README, run as written (standard tools only, nothing from the kit)."""
    readme = contents(kit_archives[slug])["README.md"].decode()
    commands = readme_block(readme, "1.", 0)
    assert "fp=FINGERPRINT-YOU-WERE-TOLD\n" in commands and "./" not in commands  # runs nothing of the kit
    home = tmp_path / "home"
    home.mkdir(parents=True)
    (home / f"{slug}-sitekit.tar.gz").write_bytes(archive if archive is not None else kit_archives[slug])
    env = {"PATH": os.environ["PATH"], "HOME": str(home)}
    script = commands.replace("FINGERPRINT-YOU-WERE-TOLD", fingerprint)
    return subprocess.run(["bash", "-c", script], cwd=home, env=env, capture_output=True, text=True, timeout=60)


def _repack(top: Path) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        tar.add(top, arcname=top.name)
    return raw.getvalue()


def test_the_readme_manual_check_verifies_a_good_kit_and_rejects_a_forged_one(kit_archives, kit_fixture_module, tmp_path):
    good = _manual_check(kit_archives, "hospital-a", tmp_path / "good", platform_fingerprint())
    assert good.stdout.splitlines() == ["platform key: OK", "Verified OK", "files: OK"], good
    # SHA256SUMS rewritten to match a changed install.sh: the signature fails.
    top = extract(kit_archives["hospital-a"], tmp_path / "forged")
    forge(top, "install.sh")
    bad = _manual_check(kit_archives, "hospital-a", tmp_path / "bad", platform_fingerprint(), _repack(top))
    assert "platform key: OK" in bad.stdout and "signature: WRONG, STOP" in bad.stdout and "Verified OK" not in bad.stdout, bad
    # Re-signed with the attacker's own key: the fingerprint the site was told does not match.
    top = extract(kit_archives["hospital-a"], tmp_path / "resigned")
    forge(top, "install.sh", resign_with=kit_fixture_module.signing_key("attacker").private_key_pem)
    bad = _manual_check(kit_archives, "hospital-a", tmp_path / "bad2", platform_fingerprint(), _repack(top))
    assert "platform key: WRONG, STOP" in bad.stdout, bad
    # A wrong fingerprint (someone else's key) is caught by the first line.
    bad = _manual_check(kit_archives, "hospital-a", tmp_path / "bad3", hashlib.sha256(b"x").hexdigest())
    assert bad.stdout.splitlines()[0] == "platform key: WRONG, STOP", bad


def _tampered_cases() -> list[str]:
    return sorted(expected_files("hospital-a", True, False))


@pytest.mark.parametrize("victim", _tampered_cases())
def test_a_changed_byte_anywhere_makes_install_refuse_before_anything(kit_archives, tmp_path, victim):
    top = extract(kit_archives["hospital-a"], tmp_path / "kit")
    target = top / victim
    data = bytearray(target.read_bytes() or b"\0")  # an empty file gets a byte
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    root = tmp_path / "root"
    proc = install(top, "--root", str(root))
    assert proc.returncode != 0
    if victim != "install.sh":  # a broken install.sh may fail any way, but must still not install
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "REFUSED" in proc.stderr and "nothing was changed" in proc.stderr
        assert proc.stdout.strip() == "" or "match SHA256SUMS" not in proc.stdout
    assert not root.exists()


@pytest.mark.parametrize("change", ["add", "remove", "symlink", "sums-line"])
def test_added_or_missing_files_make_install_refuse(kit_archives, tmp_path, change):
    top = extract(kit_archives["hospital-a"], tmp_path / "kit")
    if change == "add":
        (top / "etc/flwr/supernode/certs/extra.key").write_text("x")
    elif change == "remove":
        (top / "etc/openvpn/clientcerts/private/tls-crypt-v2.key").unlink()
    elif change == "symlink":
        (top / "etc/flwr/supernode/link").symlink_to("/etc/passwd")
    else:  # a SHA256SUMS line pointing outside the kit
        with (top / "SHA256SUMS").open("a") as fh:
            fh.write(hashlib.sha256(b"").hexdigest() + "  ../outside\n")
    root = tmp_path / "root"
    proc = install(top, "--root", str(root))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "REFUSED" in proc.stderr
    assert not root.exists()
    if change == "add":
        assert "added: etc/flwr/supernode/certs/extra.key;" in proc.stderr
    if change == "remove":
        assert "missing: etc/openvpn/clientcerts/private/tls-crypt-v2.key)" in proc.stderr


def test_install_usage_errors(kit_archives, tmp_path):
    top = extract(kit_archives["cloud-lab"], tmp_path / "kit")
    assert install(top, "--bogus").returncode == 64
    assert install(top, "--root").returncode == 64
    (tmp_path / "to-slash").symlink_to("/")
    for this_host in ("/", "/.", "//", "/tmp/..", str(tmp_path / "to-slash"), "--root=/./"):
        args = (this_host,) if this_host.startswith("--") else ("--root", this_host)
        refused = install(top, "--dry-run", *args)
        assert refused.returncode == 64, (this_host, refused.stdout, refused.stderr)
        assert "--root / is this host" in refused.stderr, refused.stderr
    helped = install(top, "--help")
    assert helped.returncode == 0 and "--containers" in helped.stdout
    if os.geteuid() != 0:
        assert install(top).returncode == 1


def test_every_shell_script_parses_and_passes_shellcheck(kit_archives, tmp_path):
    scripts: dict[bytes, str] = {}
    for slug, data in kit_archives.items():
        for path, body in contents(data).items():
            if path.endswith(".sh"):
                assert body.startswith(b"#!/bin/bash\n"), path
                scripts.setdefault(body, f"{slug}/{path}")
    assert len(scripts) >= 20  # install.sh and the run scripts differ per kit
    files = []
    for body, name in scripts.items():
        f = tmp_path / name.replace("/", "__")
        f.write_bytes(body)
        files.append(str(f))
        subprocess.run(["bash", "-n", str(f)], check=True)
    if not SHELLCHECK:
        pytest.skip("shellcheck missing (scripts/bootstrap --test-tools installs it)")
    proc = subprocess.run([SHELLCHECK, "--shell=bash", "--severity=style", *files], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def test_the_cuda_images_base_follows_the_locks_cuda_wheels(kit_outputs):
    """Without CUDA wheels in the lock (the built-in environment), the CUDA image keeps CUDA's
    runtime and cuDNN image; with them, CUDA's base image of their major; an unknown major is
    refused, naming the tenancy's lock."""
    files = {f.path: f.content for f in kit.kit_files(kit_outputs, "hospital-b")}
    assert f"ARG BASE_IMAGE={kit.BASE_IMAGES['cuda']}\n".encode() in files["containers/Dockerfile.cuda"]
    env = kit_outputs["tenancies"]["main"]["environment"]
    for runtime, major in (("nvidia-cuda-runtime-cu12==12.8.90", 12), ("nvidia-cuda-runtime==13.2.86", 13)):
        env["lock"] = environments.read_lock(environments.DEFAULT) + runtime + " \\\n    --hash=sha256:" + "0" * 64 + "\n"
        files = {f.path: f.content for f in kit.kit_files(kit_outputs, "hospital-b")}
        assert f"ARG BASE_IMAGE={kit.CUDA_WHEELS_BASE_IMAGES[major]}\n".encode() in files["containers/Dockerfile.cuda"]
        assert f"ARG BASE_IMAGE={kit.BASE_IMAGES['cpu']}\n".encode() in files["containers/Dockerfile.cpu"]
    env["lock"] = environments.read_lock(environments.DEFAULT) + "nvidia-cuda-runtime==99.0.1 \\\n    --hash=sha256:" + "0" * 64 + "\n"
    with pytest.raises(kit.KitError, match=r"tenancies\.main.*environment\.lock.*CUDA 99 runtime wheels"):
        kit.kit_files(kit_outputs, "hospital-b")


def test_container_files_follow_the_manual(kit_archives):
    files = contents(kit_archives["hospital-b"])
    for variant in ("cpu", "cuda"):
        docker = files[f"containers/Dockerfile.{variant}"].decode()
        # The tenancy's training environment, whole and hash-checked (tests/test_environments.py compares it).
        assert f"--require-hashes --no-deps -r {facts.FLOWER_ENV_LOCK}" in docker and "EXTRA_PIP_PACKAGES" not in docker
        assert not re.search(r"tensorflow|torch", docker.split("ARG BASE_IMAGE")[1]), "no training libraries but the lock's"
        assert 'VOLUME ["/etc/flwr/supernode"]' in docker and 'VOLUME ["/media/data"]' in docker
        assert "\nUSER supernode\n" in docker and docker.rstrip().endswith('ENTRYPOINT ["bash", "run_supernode.sh"]')
    for name in ("run-docker.sh", "run-podman.sh", "run-docker-gpu.sh", "run-podman-gpu.sh"):
        script = files[f"containers/{name}"].decode()
        assert "--network host" in script
        assert '--mount "type=bind,src=$conf_dir,dst=/etc/flwr/supernode,readonly"' in script
        assert '--mount "type=bind,src=$data_dir,dst=/media/data$data_opts"' in script
        assert "data_dir=${SUPERNODE_DATA_DIR:-/media/data}" in script
    assert '--gpus "$gpus"' in files["containers/run-docker-gpu.sh"].decode()
    assert '--device "nvidia.com/gpu=$gpus"' in files["containers/run-podman-gpu.sh"].decode()
    assert "--gpus" not in files["containers/run-docker.sh"].decode()


# --- README ------------------------------------------------------------------------------------


def test_readme_for_on_premise_organisation(kit_archives, kit_built):
    outputs = kit_built.outputs
    readme = contents(kit_archives["hospital-a"])["README.md"].decode()
    ca = x509.load_pem_x509_certificate(outputs["ca_cert_pem"].encode())
    fingerprint = ":".join(f"{b:02X}" for b in ca.fingerprint(hashes.SHA256()))
    assert f"sha256 Fingerprint={fingerprint}" in readme
    assert 'openssl x509 -in "$ca" | cmp - "$ca" && openssl x509 -in "$ca" -noout -fingerprint -sha256' in readme
    assert "Hospital A (Brisbane)" in readme and "`hospital-a`" in readme and "tenancy `main`" in readme
    assert "| 203.0.113.7 | UDP 1194 |" in readme and "| 203.0.113.7 | TCP 443 |" in readme
    assert "**nothing inbound**" in readme
    assert "systemctl status openvpn-client@client" in readme
    assert "ip addr show tap0" in readme and "inet 192.168.99.10/24" in readme
    assert "ping -c 3 192.168.99.1 " in readme
    assert "systemctl status supernode" in readme and "journalctl -u supernode -f" in readme
    assert "/media/data" in readme and "re-issued kit" in readme
    assert "contact the NINA platform operators (QCIF)".lower() in readme.lower()
    assert 'install.sh --platform-key-sha256 "$fp" --containers' in readme and "training environment" in readme
    assert "EXTRA_PIP_PACKAGES" not in readme
    for path in expected_files("hospital-a", True, False):
        assert f"`{path}`" in readme, path


def readme_block(readme: str, section: str, index: int = 0) -> str:
    """The `index`-th ```sh block of the README section whose heading starts with `section`."""
    part = readme.split(f"\n## {section}", 1)[1].split("\n## ", 1)[0]
    return part.split("```sh\n")[1 + index].split("```", 1)[0]


@pytest.mark.parametrize("slug", ["hospital-a", "cloud-lab"])
def test_readme_ca_check_covers_the_whole_file(kit_archives, kit_built, tmp_path, slug):
    """The README's CA check, run as written: one fingerprint line for the kit as exported; a key
    or a second CA certificate appended to either copy of the CA file makes it fail."""
    readme = contents(kit_archives[slug])["README.md"].decode()
    commands = readme_block(readme, "1.", 1)
    ca = x509.load_pem_x509_certificate(kit_built.outputs["ca_cert_pem"].encode())
    fingerprint = ":".join(f"{b:02X}" for b in ca.fingerprint(hashes.SHA256()))

    def run(kit: Path) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "-euo", "pipefail", "-c", commands], cwd=kit, capture_output=True, text=True, timeout=30)

    good = run(extract(kit_archives[slug], tmp_path / "good"))
    assert good.returncode == 0 and good.stdout.lower() == f"sha256 fingerprint={fingerprint}\n".lower(), good
    other_ca = kit_built.outputs["ca_cert_pem"].replace("A", "B")  # any second block
    files = ["etc/flwr/supernode/certs/ca.crt"] + (["etc/openvpn/clientcerts/ca.crt"] if slug == "hospital-a" else [])
    key = kit_built.outputs["vpn_client_private_keys"]["hospital-a"]
    for i, rel in enumerate(files):
        for j, extra in enumerate([key, other_ca]):
            top = extract(kit_archives[slug], tmp_path / f"bad-{i}-{j}")
            with (top / rel).open("a") as fh:
                fh.write(extra)
            bad = run(top)
            assert bad.returncode != 0, (rel, bad)


def test_readme_for_cloud_and_own_key_organisations(kit_archives):
    cloud = contents(kit_archives["cloud-lab"])["README.md"].decode()
    assert "None via the VPN" in cloud and "UDP 1194" not in cloud and "openvpn-client" not in cloud
    assert "in the NINA cloud" in cloud
    own = contents(kit_archives["hospital-own"])["README.md"].decode()
    assert "Keys your organisation keeps itself" in own
    assert "`/etc/flwr/supernode/certs/client_credentials`" in own
    assert "`/etc/openvpn/clientcerts/private/hospital-own.key`" in own
    assert "the SuperNode's private key" not in own.split("## 1.")[0]


@pytest.mark.parametrize("slug", ["hospital-a", "cloud-lab"])
def test_readme_troubleshooting_table_has_the_site_rows_with_this_kits_values(kit_archives, kit_built, slug):
    readme = contents(kit_archives[slug])["README.md"].decode()
    section = readme.split(". Troubleshooting\n", 1)[1].split("\n## ", 1)[0]
    tenancy = next(t for t in kit_built.outputs["tenancies"].values() if slug in t["organisations"])
    fleet = tenancy["superlink"]["fleet_address"]
    host, _, port = fleet.rpartition(":")
    onprem = slug == "hospital-a"
    expected = troubleshooting.table(troubleshooting.SITE, {"slug": slug, "superlink_host": host, "fleet_port": port}, vpn=onprem)
    assert expected in section
    for row in troubleshooting.rows(troubleshooting.SITE):
        assert (f"`{row.symptom}`" in section) == (onprem or not row.vpn), row.id
    if onprem:
        assert f"openssl x509 -noout -fingerprint -sha256 -in /etc/openvpn/clientcerts/issued/{slug}.crt" in section
    assert f"openssl s_client -connect {fleet} -CAfile /etc/flwr/supernode/certs/ca.crt -verify_ip {host}" in section
    assert "<" + "slug>" not in section and "{" not in section
    assert not any(r.symptom in section for r in troubleshooting.rows(troubleshooting.OPERATOR) if "nina-vpn-verify" in r.symptom)


# --- CLI -----------------------------------------------------------------------------------------


def run_cli(*args: str, stdin: bytes | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nina.cli", *args], input=stdin, capture_output=True, timeout=120, cwd=REPO, env=env)


def test_cli_exports_from_file_and_stdin(kit_built, kit_archives, tmp_path):
    doc = tmp_path / "outputs.json"
    doc.write_text(json.dumps(kit_built.outputs))
    code = cli.main(["kit", "export", "--outputs", str(doc), "--org", "hospital-a", "--org", "cloud-lab", "--out", str(tmp_path / "a")])
    assert code == 0
    proc = run_cli("kit", "export", "--outputs", "-", "--all", "--out", str(tmp_path / "b"), stdin=json.dumps(kit_built.outputs).encode())
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.decode().splitlines()
    assert len(lines) == len(ALL)
    for line, slug in zip(lines, ALL, strict=False):
        digest, path = line.split("  ")
        assert Path(path) == tmp_path / "b" / f"{slug}-sitekit.tar.gz"
        assert digest == hashlib.sha256(kit_archives[slug]).hexdigest() == hashlib.sha256(Path(path).read_bytes()).hexdigest()
        assert stat.S_IMODE(Path(path).stat().st_mode) == 0o600
    assert f"signed with the platform key {platform_fingerprint()}:" in proc.stderr.decode()
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["cloud-lab-sitekit.tar.gz", "hospital-a-sitekit.tar.gz"]


def test_cli_with_stack_runs_pulumi(kit_built, tmp_path):
    fake = tmp_path / "bin" / "pulumi"
    fake.parent.mkdir()
    doc = tmp_path / "outputs.json"
    doc.write_text(json.dumps(kit_built.outputs))
    fake.write_text(
        f'#!/bin/bash\n[ "$*" = "stack output --json --show-secrets --stack=uat" ] || {{ echo "error: bad args $*" >&2; exit 255; }}\ncat {doc}\n'
    )
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake.parent}:/usr/bin:/bin"}
    ok = run_cli("kit", "export", "--stack", "uat", "--org", "beta-clinic", "--out", str(tmp_path / "o"), env=env)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.decode().endswith("beta-clinic-sitekit.tar.gz\n")
    bad = run_cli("kit", "export", "--stack", "prod", "--all", "--out", str(tmp_path / "o"), env=env)
    assert bad.returncode == 2
    assert (
        bad.stderr.decode()
        == "nina kit export: `pulumi stack output` of stack prod failed (exit 255): error: bad args stack output --json --show-secrets --stack=prod\n"
    )


def test_cli_errors(kit_built, tmp_path, capsys, monkeypatch):
    out = str(tmp_path / "o")
    doc = tmp_path / "outputs.json"
    doc.write_text(json.dumps(kit_built.outputs))

    def err(*args):
        code = cli.main(["kit", "export", *args])
        return code, capsys.readouterr().err

    code, msg = err("--outputs", str(doc), "--org", "nope", "--out", out)
    assert code == 2
    assert msg == "nina kit export: organisation 'nope': not in the stack outputs; known slugs: " + ", ".join(ALL) + "\n"
    bad = tmp_path / "bad.json"
    bad.write_text('{"environment": "uat",')
    code, msg = err("--outputs", str(bad), "--all", "--out", out)
    assert code == 2 and msg.count("\n") == 1 and msg.startswith(f"nina kit export: {bad}: not valid JSON (line 1")
    code, msg = err("--outputs", str(tmp_path / "missing.json"), "--all", "--out", out)
    assert code == 2 and "no such file" in msg and msg.count("\n") == 1
    broken = copy.deepcopy(kit_built.outputs)
    del broken["tenancies"]["main"]["organisations"]["hospital-b"]["partition_id"]
    doc.write_text(json.dumps(broken))
    code, msg = err("--outputs", str(doc), "--all", "--out", out)
    assert code == 2
    assert msg == f"nina kit export: {doc}: tenancies.main.organisations.hospital-b.partition_id: missing; expected an integer\n"
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    code, msg = err("--stack", "uat", "--all", "--out", out)
    assert code == 2 and "not on PATH" in msg and "--outputs -" in msg and msg.count("\n") == 1
    assert cli.main(["kit", "export", "--outputs", str(doc), "--org", "a", "--all", "--out", out]) == 2
    assert cli.main(["kit", "export", "--stack", "x", "--outputs", str(doc), "--all", "--out", out]) == 2
    assert cli.main(["kit", "export", "--outputs", str(doc), "--all"]) == 2
    assert not Path(out).exists()


# --- validation of the outputs -------------------------------------------------------------------


def _org(doc, slug="hospital-a", tenancy="main"):
    return doc["tenancies"][tenancy]["organisations"][slug]


MUTATIONS = {
    "missing-field": (
        lambda d: _org(d).pop("partition_id"),
        "tenancies.main.organisations.hospital-a.partition_id: missing; expected an integer",
    ),
    "wrong-type": (
        lambda d: _org(d).__setitem__("partition_id", "0"),
        "tenancies.main.organisations.hospital-a.partition_id: is a string; expected an integer",
    ),
    "bool-not-int": (
        lambda d: _org(d).__setitem__("partition_id", True),
        "tenancies.main.organisations.hospital-a.partition_id: is a boolean; expected an integer",
    ),
    "count-from-an-older-version": (
        lambda d: _org(d).__setitem__("num_partitions", 4),
        "tenancies.main.organisations.hospital-a.num_partitions: unknown key; the outputs of this program have no such key",
    ),
    "gpu": (
        lambda d: _org(d).__setitem__("gpu", "yes"),
        "tenancies.main.organisations.hospital-a.gpu: is a string; expected true or false",
    ),
    "partition-negative": (
        lambda d: _org(d).__setitem__("partition_id", -1),
        "tenancies.main.organisations.hospital-a.partition_id: -1 must be 0 or more",
    ),
    "partition-shared": (
        lambda d: _org(d, "hospital-b").__setitem__("partition_id", _org(d)["partition_id"]),
        "tenancies.main.organisations.hospital-b.partition_id: 0 is also the partition id of 'hospital-a'; partition ids are unique",
    ),
    "placement": (
        lambda d: _org(d).__setitem__("placement", "moon"),
        "tenancies.main.organisations.hospital-a.placement: 'moon' is neither",
    ),
    "port": (
        lambda d: d["tenancies"]["main"]["vpn"].__setitem__("udp_port", 70000),
        "tenancies.main.vpn.udp_port: 70000 is not a TCP/UDP port",
    ),
    "ip": (
        lambda d: d["tenancies"]["main"]["vpn"].__setitem__("public_ip", "example"),
        "tenancies.main.vpn.public_ip: 'example' is not an IPv4 address",
    ),
    "fleet": (
        lambda d: d["tenancies"]["beta"]["superlink"].__setitem__("fleet_address", "10.0.0.1"),
        "tenancies.beta.superlink.fleet_address: '10.0.0.1' is not an address",
    ),
    "vpn-null": (
        lambda d: d["tenancies"]["beta"].__setitem__("vpn", None),
        "tenancies.beta.vpn: is null, but organisation 'beta-clinic' is on premise",
    ),
    "vpn-address-outside": (
        lambda d: _org(d).__setitem__("vpn_address", "10.9.9.9"),
        "tenancies.main.organisations.hospital-a.vpn_address: 10.9.9.9 is outside the tenancy's VPN pool",
    ),
    "route": (
        lambda d: d["tenancies"]["main"]["vpn"].__setitem__("routes", ["10.200.0.0/24"]),
        "tenancies.main.vpn.routes: no route covers the SuperLink's internal IP 10.110.0.40",
    ),
    "ca": (
        lambda d: d.__setitem__("ca_cert_pem", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
        "ca_cert_pem: is not a readable X.509 certificate",
    ),
    "hidden-secrets": (
        lambda d: d.__setitem__("supernode_private_keys", "[secret]"),
        "supernode_private_keys: is hidden ('[secret]'); export the outputs with `pulumi stack output --json --show-secrets`",
    ),
    "missing-key": (
        lambda d: d["supernode_private_keys"].pop("hospital-a"),
        "supernode_private_keys.hospital-a: missing; the kit of 'hospital-a' needs it",
    ),
    "missing-map": (
        lambda d: d.pop("vpn_tls_crypt_v2_keys"),
        "vpn_tls_crypt_v2_keys: missing; expected an object; export the whole document with `pulumi stack output --json --show-secrets`",
    ),
    "held-but-present": (
        lambda d: d["vpn_client_private_keys"].__setitem__("hospital-own", d["vpn_client_private_keys"]["hospital-a"]),
        "vpn_client_private_keys.hospital-own: present, but tenancies.main.organisations.hospital-own.keys_held_by_organisation.vpn is true",
    ),
    "public-key": (
        lambda d: _org(d).__setitem__(
            "supernode_public_key_openssh", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
        ),
        "tenancies.main.organisations.hospital-a.supernode_public_key_openssh: flwr accepts only NIST-curve ECDSA keys",
    ),
    "duplicate-slug": (
        lambda d: d["tenancies"]["beta"]["organisations"].__setitem__("hospital-a", _org(d)),
        "tenancies.beta.organisations.hospital-a: slug also used in tenancy 'main'",
    ),
    "top-level": (lambda d: d.__setitem__("tenancies", []), "tenancies: is a list; expected an object"),
}


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_bad_outputs_give_one_error_naming_the_json_path(kit_outputs, name):
    mutate, message = MUTATIONS[name]
    mutate(kit_outputs)
    with pytest.raises(kit.KitError) as info:
        kit.export_kits(kit_outputs, None, "/nonexistent/never-written")
    assert len(info.value.problems) == 1, info.value.message()
    assert info.value.message().startswith(message), info.value.message()


CRYPTO_MUTATIONS = {
    "swapped-supernode-key": (
        lambda d, b: d["supernode_private_keys"].__setitem__("hospital-a", d["supernode_private_keys"]["hospital-b"]),
        "hospital-a",
        "supernode_private_keys.hospital-a: does not belong to tenancies.main.organisations.hospital-a.supernode_public_key_openssh",
    ),
    "pem-not-openssh": (
        lambda d, b: d["supernode_private_keys"].__setitem__("hospital-a", d["vpn_client_private_keys"]["hospital-a"]),
        "hospital-a",
        "supernode_private_keys.hospital-a: is a PEM block 'EC PRIVATE KEY'; expected one unencrypted OpenSSH private key",
    ),
    "swapped-vpn-key": (
        lambda d, b: d["vpn_client_private_keys"].__setitem__("hospital-a", d["vpn_client_private_keys"]["hospital-b"]),
        "hospital-a",
        "vpn_client_private_keys.hospital-a: does not belong to tenancies.main.organisations.hospital-a.vpn_client_cert_pem",
    ),
    "wrong-cn": (
        lambda d, b: _org(d).__setitem__("vpn_client_cert_pem", _org(d, "hospital-b")["vpn_client_cert_pem"]),
        "hospital-a",
        "tenancies.main.organisations.hospital-a.vpn_client_cert_pem: has common name 'hospital-b'",
    ),
    "other-ca": (
        lambda d, b: d.__setitem__("ca_cert_pem", b.other_ca),
        "hospital-a",
        "tenancies.main.organisations.hospital-a.vpn_client_cert_pem: is not signed by ca_cert_pem",
    ),
    "tls-crypt-v2": (
        lambda d, b: d["vpn_tls_crypt_v2_keys"].__setitem__(
            "hospital-a", "-----BEGIN OpenVPN tls-crypt-v2 client key-----\nabcd\n-----END OpenVPN tls-crypt-v2 client key-----\n"
        ),
        "hospital-a",
        "vpn_tls_crypt_v2_keys.hospital-a: tls-crypt-v2 client key is not a key and a wrapped key",
    ),
    "tls-crypt-v2-missing": (
        lambda d, b: d["vpn_tls_crypt_v2_keys"].pop("hospital-a"),
        "hospital-a",
        "vpn_tls_crypt_v2_keys.hospital-a: missing; the kit of 'hospital-a' needs its own tls-crypt-v2 key",
    ),
}


@pytest.mark.parametrize("name", sorted(CRYPTO_MUTATIONS))
def test_keys_and_certificates_are_checked_against_each_other(kit_outputs, kit_fixture_module, name):
    mutate, slug, message = CRYPTO_MUTATIONS[name]

    class Extra:
        other_ca = kit_fixture_module.ca("other")[1]

    mutate(kit_outputs, Extra)
    with pytest.raises(kit.KitError) as info:
        kit.build_kit(kit_outputs, slug)
    assert info.value.message().startswith(message), info.value.message()


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, (*prefix, i))


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 70000) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(st.text(max_size=4), inner, max_size=2),
    max_leaves=4,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_damage_is_a_kit_error_never_a_traceback(kit_built, data):
    doc = copy.deepcopy(kit_built.outputs)
    paths = [p for p in _paths(doc) if p]
    path = data.draw(st.sampled_from(paths))
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    if isinstance(parent, dict) and data.draw(st.booleans()):
        del parent[path[-1]]
    else:
        parent[path[-1]] = data.draw(JSON_VALUES)
    slugs = [s for s in ALL if data.draw(st.booleans())] or ["hospital-own"]
    try:
        parsed = kit.parse_outputs(doc)
        for slug in slugs:
            kit.build_kit(parsed, slug)
    except kit.KitError as exc:
        assert exc.problems and all(isinstance(p, str) and m for p, m in exc.problems)
        assert "Traceback" not in exc.message()


# --- GPU sites and readiness (install.sh --check, run-*-gpu.sh) -------------------------------
# The scripts call the real nvidia-smi, nvidia-ctk, docker, podman, timedatectl and ip. This
# machine has no GPU, so the tests put TEST DOUBLES of those commands first on the PATH: each is a
# script in a directory named `test-doubles` that logs its arguments and answers as the real tool does.

GPU_LIST = "GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-8f6b1c2e-0000-0000-0000-000000000000)\n"
SMI_DOWN = "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. Make sure that the latest NVIDIA driver is installed and running.\n"


def make_doubles(tmp_path: Path, **tools: tuple[int, str]) -> tuple[Path, Path]:
    """A `test-doubles` directory with one stand-in per tool (exit status, output) and the log
    where each writes `tool args...`; returns (directory, log)."""
    doubles = tmp_path / "test-doubles"
    doubles.mkdir()
    log = tmp_path / "test-doubles.log"
    log.write_text("")
    for tool, (status, output) in tools.items():
        f = doubles / tool
        f.write_text(
            f'#!/bin/bash\n# TEST DOUBLE of {tool} (tests/test_kit.py)\necho "{tool} $*" >>{shlex.quote(str(log))}\nprintf %s {shlex.quote(output)}\nexit {status}\n'
        )
        f.chmod(0o755)
    return doubles, log


def tunnel_up(top: Path) -> tuple[int, str]:
    """What `ip -4 -o addr show dev tap0` prints once the kit's VPN client is up."""
    address = re.search(r"expect (\S+)\)", (top / "install.sh").read_text())
    assert address, "install.sh names the organisation's VPN address"
    return 0, f"7: tap0    inet {address.group(1)}/24 brd 192.168.99.255 scope global tap0\n"


def with_doubles(doubles: Path) -> dict[str, str]:
    return {**os.environ, "PATH": f"{doubles}:{os.environ['PATH']}"}


def ubuntu_root(tmp_path: Path, release: str = facts.UBUNTU_RELEASE) -> Path:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/os-release").write_text(f'PRETTY_NAME="Ubuntu {release} LTS"\nNAME="Ubuntu"\nVERSION_ID="{release}"\nID=ubuntu\n')
    return root


def check_lines(out: str) -> dict[str, str]:
    """install.sh --check's report: what -> status."""
    found = {}
    for line in out.splitlines():
        m = re.match(r"^install\.sh: (OK|MISSING|FAILED) +([^:]+): ", line)
        if m:
            found[m.group(2)] = m.group(1)
    return found


def test_check_of_a_ready_gpu_site_changes_nothing(kit_archives, tmp_path):
    top = extract(kit_archives["hospital-b"], tmp_path / "kit")
    root = ubuntu_root(tmp_path)
    doubles, log = make_doubles(tmp_path, **{"nvidia-smi": (0, GPU_LIST), "timedatectl": (0, "yes\n"), "ip": tunnel_up(top)})
    before = tree_digest(tmp_path / "kit"), tree_digest(root), tree_digest(doubles)
    proc = install(top, "--check", "--root", str(root), env=with_doubles(doubles), fingerprint=None)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert check_lines(proc.stdout) == {
        "OS": "OK",
        "python3": "OK",
        "openssl": "OK",
        "NVIDIA driver": "OK",
        "GPU visible": "OK",
        "VPN": "OK",
        "time sync": "OK",
    }, proc.stdout
    assert "1 GPU(s): GPU 0: NVIDIA A100" in proc.stdout
    assert "this site is ready for the kit of hospital-b (systemd mode)" in proc.stdout
    # Read only: the tools were asked, never told to change anything; no file anywhere changed.
    assert sorted(log.read_text().splitlines()) == [
        "ip -4 -o addr show dev tap0",
        "nvidia-smi -L",
        "timedatectl show -p NTPSynchronized --value",
    ]
    assert (tree_digest(tmp_path / "kit"), tree_digest(root), tree_digest(doubles)) == before


def test_check_of_an_unready_site_names_each_problem_and_its_fix(kit_archives, tmp_path):
    top = extract(kit_archives["hospital-b"], tmp_path / "kit")
    root = ubuntu_root(tmp_path, "22.04")
    # nvidia-smi is not on this machine: the real PATH is searched after the doubles.
    assert shutil.which("nvidia-smi") is None, "this test expects a machine without the NVIDIA driver"
    doubles, _log = make_doubles(tmp_path, timedatectl=(0, "no\n"), ip=(1, ""))
    before = tree_digest(tmp_path / "kit"), tree_digest(root)
    # In a network namespace of its own (no route anywhere): this machine's egress proxy would
    # otherwise accept any TCP connection, the VPN server's too.
    unshare = shutil.which("unshare")
    if unshare is None or subprocess.run([unshare, "--net", "true"], capture_output=True).returncode != 0:
        pytest.skip("needs unshare --net (root) to cut the network")
    proc = subprocess.run(
        [unshare, "--net", "bash", str(top / "install.sh"), "--check", "--root", str(root)],
        capture_output=True,
        text=True,
        timeout=60,
        env=with_doubles(doubles),
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = check_lines(proc.stdout)
    assert lines["OS"] == "FAILED" and "Ubuntu 22.04 LTS: this kit is written and tested for Ubuntu 24.04" in proc.stdout
    assert lines["NVIDIA driver"] == "MISSING"
    assert "sudo apt-get install nvidia-driver-580-server nvidia-utils-580-server, then reboot" in proc.stdout
    assert lines["GPU visible"] == "MISSING"
    # No route to the VPN server's address: the TCP probe fails (or gives up after facts.VPN_PROBE_SECONDS).
    assert lines["VPN server reachable"] == "FAILED"
    assert "allow outbound UDP 1194 and TCP 443 to 203.0.113.7" in proc.stdout
    assert lines["time sync"] == "FAILED" and "sudo timedatectl set-ntp true" in proc.stdout
    assert "this site is not ready" in proc.stdout
    assert (tree_digest(tmp_path / "kit"), tree_digest(root)) == before


def test_check_says_when_the_driver_is_installed_but_not_loaded(kit_archives, tmp_path):
    top = extract(kit_archives["hospital-b"], tmp_path / "kit")
    doubles, _log = make_doubles(tmp_path, **{"nvidia-smi": (9, SMI_DOWN), "timedatectl": (0, "yes\n"), "ip": tunnel_up(top)})
    proc = install(top, "--check", "--root", str(ubuntu_root(tmp_path)), env=with_doubles(doubles), fingerprint=None)
    assert proc.returncode == 1
    lines = check_lines(proc.stdout)
    assert lines["NVIDIA driver"] == "FAILED" and lines["GPU visible"] == "FAILED"
    assert "nvidia-smi fails (NVIDIA-SMI has failed because it couldn't communicate" in proc.stdout
    assert "reboot after installing or upgrading the driver" in proc.stdout


@pytest.mark.parametrize(
    ("tools", "expected"),
    [
        ({}, {"container engine": "MISSING"}),
        ({"docker": (0, "")}, {"container engine": "OK", "NVIDIA Container Toolkit": "MISSING"}),
        (
            {"docker": (0, ""), "nvidia-ctk": (0, ""), "nvidia-container-runtime-hook": (0, "")},
            {"container engine": "OK", "NVIDIA Container Toolkit": "OK"},
        ),
        ({"podman": (0, ""), "nvidia-ctk": (0, "")}, {"container engine": "OK", "NVIDIA CDI spec": "MISSING"}),
    ],
    ids=["no-engine", "docker-no-toolkit", "docker-ready", "podman-no-cdi-spec"],
)
def test_check_in_container_mode_asks_for_the_engine_and_toolkit(kit_archives, tmp_path, tools, expected):
    top = extract(kit_archives["hospital-b"], tmp_path / "kit")
    doubles, _log = make_doubles(tmp_path, **{"nvidia-smi": (0, GPU_LIST), "timedatectl": (0, "yes\n"), "ip": tunnel_up(top), **tools})
    env = with_doubles(doubles)
    # The machine's own docker or podman would answer too: only the doubles' directory and the basics.
    env["PATH"] = f"{doubles}:{tmp_path / 'bin'}"
    (tmp_path / "bin").mkdir()
    for tool in ("bash", "grep", "cat", "realpath", "timeout", "tr", "basename", "dirname", "openssl", "printf", "sed", "head"):
        found = shutil.which(tool)
        if found:
            (tmp_path / "bin" / tool).symlink_to(found)
    if any(os.path.exists(spec) for spec in facts.NVIDIA_CDI_SPECS):
        pytest.skip("this machine has an NVIDIA CDI spec")
    proc = subprocess.run(
        [shutil.which("bash") or "/bin/bash", str(top / "install.sh"), "--check", "--containers", "--root", str(ubuntu_root(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    lines = check_lines(proc.stdout)
    for what, status in expected.items():
        assert lines.get(what) == status, proc.stdout + proc.stderr
    assert proc.returncode == (0 if all(s == "OK" for s in lines.values()) else 1), proc.stdout


def test_cpu_site_check_asks_nothing_of_a_gpu(kit_archives, tmp_path):
    top = extract(kit_archives["cloud-lab"], tmp_path / "kit")
    doubles, _log = make_doubles(tmp_path, timedatectl=(0, "yes\n"))
    proc = install(top, "--check", "--root", str(ubuntu_root(tmp_path)), env=with_doubles(doubles), fingerprint=None)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert set(check_lines(proc.stdout)) == {"OS", "python3", "openssl", "time sync"}
    assert "nvidia" not in (top / "install.sh").read_text().lower()


@pytest.mark.parametrize("engine", ["docker", "podman"])
def test_gpu_run_script_starts_nothing_without_driver_or_toolkit(kit_archives, tmp_path, engine):
    top = extract(kit_archives["hospital-b"], tmp_path / "kit")
    conf, data = tmp_path / "conf", tmp_path / "data"
    conf.mkdir()
    data.mkdir()
    (conf / "supernode.conf").write_text("")
    script = top / "containers" / f"run-{engine}-gpu.sh"
    env_base = {"SUPERNODE_CONF_DIR": str(conf), "SUPERNODE_DATA_DIR": str(data)}

    # No driver (this machine has none), no toolkit: the engine is never called.
    doubles, log = make_doubles(tmp_path, **{engine: (0, "")})
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=30, env={**with_doubles(doubles), **env_base})
    assert proc.returncode == 1
    assert f"run-{engine}-gpu.sh: MISSING: NVIDIA driver: nvidia-smi not found" in proc.stderr
    assert "MISSING: NVIDIA Container Toolkit: nvidia-ctk" in proc.stderr
    assert "nothing was started" in proc.stderr
    assert log.read_text() == ""

    # The driver and the toolkit in place: it runs the container with the GPUs.
    shutil.rmtree(doubles)
    ready = {"nvidia-smi": (0, GPU_LIST), engine: (0, ""), "nvidia-ctk": (0, ""), "nvidia-container-runtime-hook": (0, "")}
    doubles, log = make_doubles(tmp_path, **ready)
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=30, env={**with_doubles(doubles), **env_base})
    if engine == "podman":  # the CDI spec is a file of this machine, which has none
        assert proc.returncode == 1 and "MISSING: NVIDIA CDI spec: none of /etc/cdi/nvidia.yaml" in proc.stderr
        assert all(not line.startswith("podman") for line in log.read_text().splitlines())
    else:
        assert proc.returncode == 0, proc.stderr
        calls = log.read_text().splitlines()
        assert calls[0] == "nvidia-smi -L"
        assert any(c.startswith("docker run --detach") and "--gpus all" in c for c in calls), calls


def test_gpu_site_install_stops_before_services_without_a_driver(kit_archives, tmp_path):
    top = extract(kit_archives["hospital-b"], tmp_path / "kit")
    proc = install(top, "--dry-run")
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert "MISSING NVIDIA driver" in proc.stdout
    assert "(dry run) install.sh would stop here, before starting any service" in proc.stderr
    assert "systemctl enable" not in proc.stdout
    doubles, _log = make_doubles(tmp_path, **{"nvidia-smi": (0, GPU_LIST)})
    proc = install(top, "--dry-run", env=with_doubles(doubles))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[dry-run] systemctl enable supernode.service" in proc.stdout


def test_onprem_gpu_kit_carries_the_dcgm_exporter_on_its_vpn_address_only(kit_archives, kit_built, tmp_path):
    files = contents(kit_archives["hospital-b"])
    unit = files["etc/systemd/system/nina-dcgm-exporter.service"].decode()
    (o,) = [o for t in kit_built.outputs["tenancies"].values() for s, o in t["organisations"].items() if s == "hospital-b"]
    assert f"--address {o['vpn_address']}:{facts.DCGM_EXPORTER_PORT} " in unit
    assert f"After={facts.DCGM_UNIT} {facts.OPENVPN_CLIENT_UNIT} " in unit and "StartLimitIntervalSec=0\n" in unit
    for slug in ("hospital-a", "cloud-lab", "beta-clinic"):
        assert "etc/systemd/system/nina-dcgm-exporter.service" not in contents(kit_archives[slug])
    # Where DCGM is not installed (this machine), install.sh leaves the exporter off and says so.
    top = extract(kit_archives["hospital-b"], tmp_path / "kit")
    doubles, _log = make_doubles(tmp_path, **{"nvidia-smi": (0, GPU_LIST)})
    proc = install(top, "--dry-run", env=with_doubles(doubles))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "DCGM is not installed: nina-dcgm-exporter.service stays off" in proc.stdout
    assert "systemctl enable nina-dcgm-exporter.service" not in proc.stdout


# --- root and PATH: what install.sh runs by name must come from directories only root can change


@pytest.mark.skipif(os.geteuid() != 0, reason="only root's PATH is checked (run the tests as root)")
@pytest.mark.parametrize(
    "how",
    ["world-writable", "user-owned", "sticky", "link-to-writable", "link-in-writable", "empty-entry", "relative", "missing-under-writable"],
)
def test_root_refuses_a_path_that_others_can_plant_programs_in(kit_archives, tmp_path, how):
    # Careless operator: `su` without `-`, `sudo -E`, or sudo's env_keep carries a user's PATH into
    # root's; a `timedatectl` (or openssl, systemctl, nvidia-smi...) planted there ran as root
    # (checked: install.sh --check ran it as uid 0 before this check).
    top = extract(kit_archives["hospital-b"], tmp_path / "kit")
    planted = tmp_path / "planted"
    planted.mkdir()
    marker = tmp_path / "ran-as-root"
    tool = f'#!/bin/sh\necho "$(id -u)" > {shlex.quote(str(marker))}\necho yes\n'
    entry = str(planted)
    if how == "world-writable":
        planted.chmod(0o777)
    elif how == "user-owned":
        os.chown(planted, 65534, 65534)
    elif how == "sticky":
        planted.chmod(0o1777)  # others cannot rename what is there, but they can add a file of their own
    elif how == "link-to-writable":
        planted.chmod(0o777)
        (tmp_path / "link").symlink_to(planted)
        entry = str(tmp_path / "link")
    elif how == "empty-entry":
        entry = ""  # the current directory
    elif how == "relative":
        entry = "planted"
    elif how == "link-in-writable":
        planted.chmod(0o777)
        (planted / "bin").symlink_to("/usr/bin")  # root's directory, through a link anyone can replace
        entry = str(planted / "bin")
    elif how == "missing-under-writable":
        planted.chmod(0o777)
        entry = str(planted / "bin")  # not there yet: anyone can create it
    (planted / "timedatectl").write_text(tool)
    (planted / "timedatectl").chmod(0o755)
    env = {**os.environ, "PATH": f"{entry}:{os.environ['PATH']}"}
    proc = subprocess.run(["bash", str(top / "install.sh"), "--check"], capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    assert proc.returncode == 1 and not marker.exists(), (proc.stdout, proc.stderr)
    assert "install.sh: ERROR: refusing to run as root with this PATH" in proc.stderr and proc.stdout == "", proc.stderr
    assert "sudo" in proc.stderr  # the fix: sudo's secure_path
    # The installing run refuses the same way, before it reads a file.
    proc = install(top, env=env)
    assert proc.returncode == 1 and not marker.exists() and "refusing to run as root with this PATH" in proc.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="only root's PATH is checked (run the tests as root)")
def test_root_runs_with_a_path_of_root_only_directories(kit_archives, tmp_path):
    top = extract(kit_archives["hospital-b"], tmp_path / "kit")
    doubles, log = make_doubles(tmp_path, timedatectl=(0, "yes\n"))
    doubles.chmod(0o755)
    proc = install(top, "--check", "--root", str(ubuntu_root(tmp_path)), env=with_doubles(doubles), fingerprint=None)
    assert "refusing" not in proc.stderr and check_lines(proc.stdout)["time sync"] == "OK", proc.stderr
    assert "timedatectl show" in log.read_text()
