"""nina.localpki makes the PKI the pulumi-tls resources would: checked with openssl."""

from __future__ import annotations

import subprocess

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from nina import facts, localpki
from nina.keys import KeyError_, check_csr, check_openssh_public_key


@pytest.fixture(scope="module")
def ca():
    key = localpki.generate_key()
    cert = localpki.self_signed_ca(key.private_key_pem, facts.CA_SUBJECT, facts.CA_VALIDITY_HOURS, facts.CA_CERT_USES)
    return key, cert


def test_key_formats_match_pulumi_tls():
    key = localpki.generate_key("ECDSA", "P384")
    assert key.private_key_pem.startswith("-----BEGIN EC PRIVATE KEY-----")  # SEC1, as pulumi-tls
    assert key.private_key_openssh.startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert key.public_key_openssh.startswith("ecdsa-sha2-nistp384 ") and key.public_key_openssh.endswith("\n")
    a, b = localpki.generate_key(seed=b"x"), localpki.generate_key(seed=b"x")
    assert a.public_key_openssh == b.public_key_openssh and a.private_key_pem == b.private_key_pem


def test_server_certificate_verifies_with_openssl_and_has_the_sans(ca, tmp_path):
    ca_key, ca_cert = ca
    key = localpki.generate_key()
    csr = localpki.cert_request(
        key.private_key_pem,
        {"common_name": "superlink-main", "organization": facts.LEAF_ORGANIZATION},
        ["superlink-main", "localhost"],
        ["10.100.0.40", "127.0.0.1"],
    )
    cert = localpki.sign_certificate(csr, ca_key.private_key_pem, ca_cert, facts.LEAF_VALIDITY_HOURS, facts.SERVER_CERT_USES)
    (tmp_path / "ca.crt").write_text(ca_cert)
    (tmp_path / "server.pem").write_text(cert)
    result = subprocess.run(
        ["openssl", "verify", "-CAfile", tmp_path / "ca.crt", "-purpose", "sslserver", tmp_path / "server.pem"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    parsed = x509.load_pem_x509_certificate(cert.encode())
    sans = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) == {"superlink-main", "localhost"}
    assert {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)} == {"10.100.0.40", "127.0.0.1"}
    assert ExtendedKeyUsageOID.SERVER_AUTH in parsed.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    # A client certificate is not a server certificate.
    client = localpki.sign_certificate(
        localpki.cert_request(key.private_key_pem, {"common_name": "org-a"}), ca_key.private_key_pem, ca_cert, 24, facts.CLIENT_CERT_USES
    )
    (tmp_path / "client.pem").write_text(client)
    bad = subprocess.run(
        ["openssl", "verify", "-CAfile", tmp_path / "ca.crt", "-purpose", "sslserver", tmp_path / "client.pem"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0


def test_fingerprint_matches_openssl(ca, tmp_path):
    _, ca_cert = ca
    (tmp_path / "ca.crt").write_text(ca_cert)
    out = subprocess.run(
        ["openssl", "x509", "-noout", "-fingerprint", "-sha256", "-in", tmp_path / "ca.crt"], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip().split("=", 1)[1] == localpki.fingerprint_sha256(ca_cert)


def test_brought_csr_and_public_key_checks():
    key = localpki.generate_key()
    good = localpki.cert_request(key.private_key_pem, {"common_name": "metro-north"})
    check_csr(good, "metro-north")
    with pytest.raises(KeyError_, match="must be the organisation slug 'gold-coast'"):
        check_csr(good, "gold-coast")
    with pytest.raises(KeyError_, match="not a PEM certificate signing request"):
        check_csr("hello", "metro-north")
    check_openssh_public_key(key.public_key_openssh)
    ed = localpki.generate_key("ED25519")
    with pytest.raises(KeyError_, match="NIST-curve"):
        check_openssh_public_key(ed.public_key_openssh)
    with pytest.raises(KeyError_, match="not an OpenSSH public key"):
        check_openssh_public_key("ssh-rsa nonsense")
