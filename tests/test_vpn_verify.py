"""nina-vpn-verify (nina.host.vpn_verify), in-process: what OpenVPN hands it, honest and hostile.

The real OpenVPN runs it in test_vpn_tunnel.py (a removed organisation and a replaced kit
refused, the current kit admitted); here every refusal path is driven directly, as an attacker
holding a kit, or a careless operator's allow directory, would drive it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nina import facts, render, tlscrypt
from nina.host import vpn_verify

DIGEST = "ab" * 32
KEY_ID = "0123456789abcdef" * 2


@pytest.fixture
def allow(tmp_path: Path) -> Path:
    d = tmp_path / "allowed"
    d.mkdir()
    (d / "metro-north").write_text(vpn_verify.allow_entry("metro-north", ":".join([DIGEST[i : i + 2] for i in range(0, 64, 2)]), KEY_ID))
    return d


def metadata_env(tmp_path: Path, data: bytes, kind: str = "0") -> dict[str, str]:
    path = tmp_path / "metadata"
    path.write_bytes(data)
    return {"metadata_type": kind, "metadata_file": str(path)}


def run(args: list[str], env: dict[str, str], capsys) -> tuple[int, str]:
    rc = vpn_verify.main(args, env)
    return rc, capsys.readouterr().err


def test_allow_entry_is_normalised_and_refuses_bad_fields():
    text = vpn_verify.allow_entry("metro-north", DIGEST.upper(), KEY_ID)
    assert f"cert-sha256 {DIGEST}\ntls-crypt-v2 {KEY_ID}\n" in text and text.endswith("\n")
    for bad in (("../etc", DIGEST, KEY_ID), ("metro-north", "ab" * 31, KEY_ID), ("metro-north", DIGEST, "xyz"), ("a\nb", DIGEST, KEY_ID)):
        with pytest.raises(ValueError):
            vpn_verify.allow_entry(*bad)


def test_current_tls_crypt_v2_key_is_admitted(allow, tmp_path, capsys):
    env = metadata_env(tmp_path, vpn_verify.metadata("metro-north", KEY_ID))
    assert run(["tls-crypt-v2", str(allow)], env, capsys) == (0, "nina-vpn-verify: metro-north: current tls-crypt-v2 key\n")


def test_metadata_of_a_real_client_key_round_trips():
    server = tlscrypt.server_key(os.urandom(tlscrypt.SERVER_KEY_BYTES))
    key = tlscrypt.client_key(server, os.urandom(tlscrypt.CLIENT_KEY_BYTES), "metro-north")
    _, meta = tlscrypt.unwrap(server, key)
    assert meta[0] == vpn_verify.METADATA_TYPE_USER
    assert vpn_verify.parse_metadata(meta[1:]) == ("metro-north", tlscrypt.client_key_id(key))


@pytest.mark.parametrize(
    ("data", "kind", "why"),
    [
        (vpn_verify.metadata("metro-north", "f" * 32), "0", "is not its current key"),  # a replaced kit's key
        (vpn_verify.metadata("gold-coast", KEY_ID), "0", "gold-coast is not admitted"),  # removed / never admitted
        (b"\x00\x00\x00\x00\x65\x4a\x1b\x2c", "1", "of type '1'"),  # openvpn's default timestamp metadata
        (b"nina-fl ../../etc/passwd " + KEY_ID.encode(), "0", "names no organisation slug"),
        (b"nina-fl metro-north " + KEY_ID.encode() + b" extra", "0", "is not `nina-fl <slug> <key id>`"),
        (b"nina-fl metro-north\n" + KEY_ID.encode(), "0", "is not `nina-fl <slug> <key id>`"),
        (b"nina-fl \xff\xfe " + KEY_ID.encode(), "0", "is not `nina-fl <slug> <key id>`"),
        (b"something else", "0", "is not nina-fl's"),
        (b"nina-fl " + b"a" * 5000, "0", "larger than"),
        (b"", "0", "is not nina-fl's"),
    ],
)
def test_other_tls_crypt_v2_keys_are_refused(allow, tmp_path, capsys, data, kind, why):
    rc, err = run(["tls-crypt-v2", str(allow)], metadata_env(tmp_path, data, kind), capsys)
    assert rc == 1 and err.startswith("nina-vpn-verify: refused: ") and why in err and err.count("\n") == 1, err


def test_tls_verify_admits_the_current_certificate_only(allow, capsys):
    colons = ":".join(DIGEST[i : i + 2] for i in range(0, 64, 2))
    ok = {"X509_0_CN": "metro-north", "tls_digest_sha256_0": colons.upper()}
    assert run(["tls-verify", str(allow), "0", "CN=metro-north"], ok, capsys) == (0, "nina-vpn-verify: metro-north: current certificate\n")
    # The CA above it is OpenVPN's own check (--ca): accepted here without a word.
    assert run(["tls-verify", str(allow), "1", "CN=NINA CA, O=QCIF"], {}, capsys) == (0, "")
    for env, why in (
        ({**ok, "tls_digest_sha256_0": "cd" * 32}, "is not its current certificate"),  # a replaced kit's certificate
        ({**ok, "X509_0_CN": "gold-coast"}, "gold-coast is not admitted"),
        ({**ok, "X509_0_CN": "../allowed/metro-north"}, "is not an organisation slug"),
        ({**ok, "X509_0_CN": ""}, "is not an organisation slug"),
        ({"X509_0_CN": "metro-north"}, "no tls_digest_sha256_0"),
    ):
        rc, err = run(["tls-verify", str(allow), "0", "CN=x"], env, capsys)
        assert rc == 1 and why in err, (env, err)
    rc, err = run(["tls-verify", str(allow), "zero", "CN=x"], ok, capsys)
    assert rc == 1 and "depth" in err


def test_a_broken_allow_directory_refuses_everyone(tmp_path, capsys):
    env = {"X509_0_CN": "metro-north", "tls_digest_sha256_0": DIGEST}
    d = tmp_path / "allowed"
    d.mkdir()
    cases = {
        "two cert lines": f"cert-sha256 {DIGEST}\ncert-sha256 {DIGEST}\ntls-crypt-v2 {KEY_ID}\n",
        "no key line": f"cert-sha256 {DIGEST}\n",
        "an unknown line": f"cert-sha256 {DIGEST}\ntls-crypt-v2 {KEY_ID}\nallow everyone\n",
        "not ASCII": f"cert-sha256 {DIGEST}\ntls-crypt-v2 {KEY_ID}\n# \u00e9\n",
        "too large": f"cert-sha256 {DIGEST}\ntls-crypt-v2 {KEY_ID}\n" + "#" * 5000 + "\n",
    }
    for name, text in cases.items():
        (d / "metro-north").write_text(text)
        rc, err = run(["tls-verify", str(d), "0", "CN=metro-north"], env, capsys)
        assert rc == 1 and "refused" in err, (name, err)
    # A link planted in place of the entry is not followed, nor is a linked directory.
    (d / "metro-north").unlink()
    good = tmp_path / "elsewhere"
    good.write_text(vpn_verify.allow_entry("metro-north", DIGEST, KEY_ID))
    (d / "metro-north").symlink_to(good)
    rc, err = run(["tls-verify", str(d), "0", "CN=metro-north"], env, capsys)
    assert rc == 1 and "cannot read" in err, err
    (tmp_path / "linked").symlink_to(d)
    rc, err = run(["tls-verify", str(tmp_path / "linked"), "0", "CN=metro-north"], env, capsys)
    assert rc == 1 and "cannot open the allow directory" in err, err
    rc, err = run(["tls-verify", str(tmp_path / "missing"), "0", "CN=metro-north"], env, capsys)
    assert rc == 1 and "cannot open the allow directory" in err, err


def test_usage_errors_exit_2(allow, capsys):
    for args in ([], ["tls-crypt-v2"], ["tls-verify", str(allow), "0"], ["admit", str(allow)]):
        rc, err = run(args, {}, capsys)
        assert rc == 2 and err.startswith("usage: nina-vpn-verify"), args


def test_the_launcher_runs_it_as_openvpn_does(allow, tmp_path):
    """The delivered launcher (here pointing at this checkout) with OpenVPN's arguments and
    environment: exit status and one line on stderr, nothing on stdout."""
    launcher = tmp_path / "nina-vpn-verify"
    launcher.write_text(render.launcher("vpn_verify", render.SOURCE_ROOT).replace(facts.HOST_PYTHON, sys.executable, 1))
    launcher.chmod(0o755)
    env = {"PATH": os.environ.get("PATH", ""), **metadata_env(tmp_path, vpn_verify.metadata("metro-north", KEY_ID))}
    ok = subprocess.run([str(launcher), "tls-crypt-v2", str(allow)], env=env, capture_output=True, text=True, timeout=30)
    assert (ok.returncode, ok.stdout) == (0, "") and "current tls-crypt-v2 key" in ok.stderr
    env = {**env, **metadata_env(tmp_path, vpn_verify.metadata("metro-north", "e" * 32))}
    bad = subprocess.run([str(launcher), "tls-crypt-v2", str(allow)], env=env, capture_output=True, text=True, timeout=30)
    assert (bad.returncode, bad.stdout) == (1, "") and "refused" in bad.stderr
