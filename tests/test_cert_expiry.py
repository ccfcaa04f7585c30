"""nina-cert-expiry (nina.host.cert_expiry): certificate expiry as node exporter metrics.

Certificates the test makes (cryptography) with known notAfter, read by the program as the host
runs it (its launcher, the real openssl); the output read back with prometheus_client's parser,
checked with `promtool check metrics`, and served by the real node exporter's textfile collector
with the rendered arguments (scripts/bootstrap --test-tools installs promtool and node exporter).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import exporter
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from promtext import promtool_ok, samples
from systemd import needs_systemd_analyze, verify_text

from nina import facts, render
from nina.host import backups
from nina.rehearse import pick_ports

NODE_EXPORTER = shutil.which("prometheus-node-exporter") or ""
CA_NOT_AFTER = dt.datetime(2035, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
LEAF_NOT_AFTER = dt.datetime(2027, 6, 30, 23, 59, 59, tzinfo=dt.UTC)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "QCIF"), x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_cert(cn: str, not_after: dt.datetime) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
        .not_valid_after(not_after)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


class Host:
    """A host's certificate directories under a temporary root, and the program to run on them."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.certs = tmp / "etc" / "flwr" / "superlink" / "certs"
        self.live = tmp / "letsencrypt" / "live"
        self.archive = tmp / "letsencrypt" / "archive"
        self.out = tmp / "textfile"
        for d in (self.certs, self.live / "hub.example.org", self.archive / "hub.example.org", self.out):
            d.mkdir(parents=True, mode=0o755)
        self.launcher = tmp / "nina-cert-expiry"
        self.launcher.write_text(render.launcher("cert_expiry", render.SOURCE_ROOT).replace(facts.HOST_PYTHON, sys.executable, 1))
        self.launcher.chmod(0o755)

    def args(self) -> list[str]:
        return [
            "--cert",
            f"{self.certs}/*.crt",
            "--cert",
            f"{self.certs}/server.pem",
            "--cert",
            f"{self.live}/*/fullchain.pem",
            "--allow",
            str(self.certs),
            "--allow",
            str(self.live),
            "--allow",
            str(self.archive),
            "--textfile-dir",
            str(self.out),
        ]

    def run(self, *extra: str) -> tuple[subprocess.CompletedProcess, str]:
        proc = subprocess.run([str(self.launcher), *self.args(), *extra], capture_output=True, text=True, timeout=60)
        prom = self.out / facts.CERT_EXPIRY_FILE
        return proc, prom.read_text() if prom.exists() else ""


@pytest.fixture
def host(tmp_path) -> Host:
    h = Host(tmp_path)
    (h.certs / "ca.crt").write_text(make_cert("NINA Federated Learning local CA", CA_NOT_AFTER))
    (h.certs / "server.pem").write_text(make_cert('superlink "main"', LEAF_NOT_AFTER))
    # certbot's layout: live/<name>/fullchain.pem links to archive/<name>/fullchainN.pem (leaf first).
    chain = make_cert("hub.example.org", LEAF_NOT_AFTER - dt.timedelta(days=300)) + make_cert("R3", CA_NOT_AFTER)
    (h.archive / "hub.example.org" / "fullchain1.pem").write_text(chain)
    (h.live / "hub.example.org" / "fullchain.pem").symlink_to("../../archive/hub.example.org/fullchain1.pem")
    return h


def test_known_not_after_and_subjects(host):
    proc, text = host.run()
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    found = samples(text)
    fullchain = str(host.live / "hub.example.org" / "fullchain.pem")
    assert found["nina_certificate_expiry_timestamp_seconds"] == {
        frozenset(
            {("path", str(host.certs / "ca.crt")), ("subject", "CN=NINA Federated Learning local CA,O=QCIF")}
        ): CA_NOT_AFTER.timestamp(),
        frozenset({("path", str(host.certs / "server.pem")), ("subject", 'CN=superlink \\"main\\",O=QCIF')}): LEAF_NOT_AFTER.timestamp(),
        frozenset({("path", fullchain), ("subject", "CN=hub.example.org,O=QCIF")}): (LEAF_NOT_AFTER - dt.timedelta(days=300)).timestamp(),
    }
    assert set(found["nina_certificate_read_errors"].values()) == {0} and len(found["nina_certificate_read_errors"]) == 3
    # Sorted by path, integers, the file 0644 and nothing else left in the directory.
    paths = [line.split('path="')[1].split('"')[0] for line in text.splitlines() if line.startswith("nina_certificate_read_errors{")]
    assert paths == sorted(paths)
    assert f"}} {int(CA_NOT_AFTER.timestamp())}\n" in text
    assert (host.out / facts.CERT_EXPIRY_FILE).stat().st_mode & 0o777 == 0o644
    assert [p.name for p in host.out.iterdir()] == [facts.CERT_EXPIRY_FILE]
    promtool_ok(text)
    assert host.run()[1] == text  # deterministic


def test_bad_files_are_read_errors_not_crashes(host, tmp_path):
    (host.certs / "garbage.crt").write_bytes(b"\x00\x01 not a certificate \xff" * 50)
    (host.certs / "big.crt").write_bytes(b"A" * ((1 << 20) + 10))
    os.mkfifo(host.certs / "fifo.crt")  # would block a reader that waits for a writer
    outside = tmp_path / "outside.crt"
    outside.write_text(make_cert("outside", LEAF_NOT_AFTER))
    (host.certs / "escape.crt").symlink_to(outside)
    (host.live / "evil").mkdir()
    (host.live / "evil" / "fullchain.pem").symlink_to("/etc/passwd")
    start = time.monotonic()
    proc, text = host.run()
    took = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 5 and all(line.startswith("nina-cert-expiry: error: ") for line in lines), lines
    found = samples(text)
    errors = {dict(k)["path"]: v for k, v in found["nina_certificate_read_errors"].items()}
    bad = {"garbage.crt", "big.crt", "fifo.crt", "escape.crt"}
    assert {p: v for p, v in errors.items() if Path(p).name in bad} == {str(host.certs / n): 1 for n in bad}
    assert errors[str(host.live / "evil" / "fullchain.pem")] == 1
    assert errors[str(host.certs / "ca.crt")] == 0
    expiring = {dict(k)["path"] for k in found["nina_certificate_expiry_timestamp_seconds"]}
    assert not expiring & {str(host.certs / n) for n in bad}  # the link to a real certificate outside was not followed
    assert "lies outside the certificate directories (it leads to /etc/passwd)" in proc.stderr
    assert "is not a PEM certificate" in proc.stderr and "larger than" in proc.stderr and "not a regular file" in proc.stderr
    assert took < 30
    promtool_ok(text)


def test_a_directory_others_can_change_is_not_read(host):
    host.certs.chmod(0o757)
    try:
        proc, text = host.run()
    finally:
        host.certs.chmod(0o755)
    assert f"{host.certs} is writable by everyone" in proc.stderr
    errors = {Path(dict(k)["path"]).name: v for k, v in samples(text)["nina_certificate_read_errors"].items()}
    assert errors == {"ca.crt": 1, "server.pem": 1, "fullchain.pem": 0}


def test_no_certificates_and_bad_arguments(tmp_path):
    h = Host(tmp_path)
    proc, text = h.run()
    assert proc.returncode == 0 and text == ""
    proc = subprocess.run([str(h.launcher), "--cert", "relative/*.crt", "--stdout"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "is not an absolute path" in proc.stderr
    proc = subprocess.run([str(h.launcher), "--stdout", "--openssl", "/nonexistent/openssl", *h.args()[:2]], capture_output=True, text=True)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr


def test_the_default_paths_derive_from_the_facts():
    assert f"{facts.SUPERLINK_CERTS}/{facts.SERVER_CERT_FILE}" in facts.CERTIFICATE_PATHS
    assert f"{facts.LETSENCRYPT_LIVE}/*/fullchain.pem" in facts.CERTIFICATE_PATHS
    assert facts.LOCAL_CA_TRUST in facts.CERTIFICATE_PATHS and facts.PROXY_UPSTREAM_CA in facts.CERTIFICATE_PATHS
    assert facts.LETSENCRYPT_ARCHIVE in facts.CERTIFICATE_DIRS
    for pattern in facts.CERTIFICATE_PATHS:
        assert any(pattern.startswith(d + "/") for d in facts.CERTIFICATE_DIRS), pattern
    assert not any("key" in p.rsplit("/", 1)[-1] for p in facts.CERTIFICATE_PATHS)  # certificates only, never a key


def test_base_delivery_and_units():
    payload = json.loads(render.base_delivery("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPDEImfmeTlW3dqFjuqMjGoELhWvK0J/gdOCFqWrdsHY"))
    files = {f["path"]: f for f in payload["files"]}
    assert files[facts.CERT_EXPIRY_BIN]["content"] == render.launcher("cert_expiry")
    assert files[f"{facts.SYSTEMD_SYSTEM_DIR}/{facts.CERT_EXPIRY_SERVICE}"]["content"] == render.cert_expiry_service()
    assert files[f"{facts.SYSTEMD_SYSTEM_DIR}/{facts.CERT_EXPIRY_TIMER}"]["content"] == render.cert_expiry_timer()
    assert payload["restart"] == [facts.JOURNALD_UNIT, facts.NODE_EXPORTER_UNIT, facts.CERT_EXPIRY_TIMER]
    assert f"ExecStart={facts.HOST_PYTHON} -I {facts.CERT_EXPIRY_BIN}\n" in render.cert_expiry_service()
    assert f"OnCalendar={facts.CERT_EXPIRY_SCHEDULE}\n" in render.cert_expiry_timer()
    assert "nina/host/cert_expiry.py" in render.host_programs()


@needs_systemd_analyze
@pytest.mark.parametrize(
    "name, fn", [(facts.CERT_EXPIRY_SERVICE, render.cert_expiry_service), (facts.CERT_EXPIRY_TIMER, render.cert_expiry_timer)]
)
def test_systemd_analyze_verify(tmp_path, name, fn):
    assert verify_text(tmp_path, name, fn()) == []


def _node_exporter_args(textfile_dir: Path, port: int) -> list[str]:
    """The rendered ARGS of facts.NODE_EXPORTER_DEFAULTS, on a loopback port, reading the test's directory."""
    args = exporter.rendered_args()
    textfile = f"--collector.textfile.directory={facts.NODE_EXPORTER_TEXTFILE_DIR}"
    assert textfile in args and "--collector.textfile" in args
    out = []
    for arg in args:
        if arg == textfile:
            arg = f"--collector.textfile.directory={textfile_dir}"
        elif arg.startswith("--web.listen-address="):
            arg = f"--web.listen-address={facts.LOOPBACK}:{port}"
        elif arg == "--collector.systemd":
            continue  # no systemd bus in a test
        out.append(arg)
    return out


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.skipif(not NODE_EXPORTER, reason="prometheus-node-exporter missing (scripts/bootstrap --test-tools installs it)")
def test_node_exporter_serves_nina_files(host, tmp_path):
    """The real consumer: node exporter's textfile collector, with the rendered arguments, reads
    nina's files without a parse error and serves their series; the backup metrics' families stand
    in one file per thing backed up (nina.host.backups), merged by the collector."""
    assert host.run()[0].returncode == 0
    from test_federation_metrics import collect, flwr_like

    db = tmp_path / "state.db"
    flwr_like(db)
    members = tmp_path / "members"
    members.mkdir()
    (members / "org-a.node_id").write_text(f"{2**64 - 5}\n")
    fed = tmp_path / "fed"
    fed.mkdir()
    proc, _ = collect(fed, db, members, "main")
    assert proc.returncode == 0, proc.stderr
    shutil.copy(fed / "textfile" / facts.FEDERATION_METRICS_FILE, host.out / facts.FEDERATION_METRICS_FILE)
    for what, ok, newest in ((facts.SUPERLINK_BACKUP_WHAT, True, 1796613300), ("keycloakdb_server", False, None)):
        (host.out / facts.BACKUP_METRICS_FILE.format(what=what)).write_text(backups.exposition(what, ok, 1796613400, newest))
    (port,) = pick_ports((facts.NODE_EXPORTER_PORT + 1,))
    exporter = subprocess.Popen(
        [NODE_EXPORTER, "--collector.disable-defaults", *_node_exporter_args(host.out, port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://{facts.LOOPBACK}:{port}/metrics", timeout=5) as resp:
                    body = resp.read().decode()
                break
            except OSError:
                assert exporter.poll() is None and time.monotonic() < deadline, exporter.stderr.read() if exporter.stderr else ""
                time.sleep(0.2)
    finally:
        exporter.terminate()
        try:
            exporter.wait(timeout=10)
        except subprocess.TimeoutExpired:
            exporter.kill()
            exporter.wait()
    found = samples(body)
    assert found["node_textfile_scrape_error"] == {frozenset(): 0}
    assert len(found["nina_certificate_expiry_timestamp_seconds"]) == 3
    assert found["nina_federation_supernode_online"] == {frozenset({("organisation", "org-a"), ("tenancy", "main")}): 1}
    assert found["nina_federation_scrape_success"] == {frozenset({("tenancy", "main")}): 1}
    assert found["nina_backup_last_run_success"] == {
        frozenset({("what", "superlink-state")}): 1,
        frozenset({("what", "keycloakdb_server")}): 0,
    }
    assert found["nina_backup_last_success_timestamp_seconds"] == {frozenset({("what", "superlink-state")}): 1796613300}
