"""Checks of keys that organisations bring themselves (CSRs, OpenSSH public keys)."""

from __future__ import annotations

import base64
import hashlib

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import SSHPublicKeyTypes
from cryptography.x509.oid import NameOID

from nina import pem

# flwr (1.25 to 1.31 at least) takes only NIST-curve EC keys for SuperNode authentication.
SUPERNODE_KEY_CURVES = ("secp256r1", "secp384r1", "secp521r1")


class KeyError_(ValueError):
    """A supplied key or CSR is unusable; the message says why and what to send instead."""


def check_csr(text: str, slug: str) -> x509.CertificateSigningRequest:
    """The organisation's CSR: exactly one 'CERTIFICATE REQUEST' block and nothing else (nina.pem)."""
    try:
        csr = x509.load_pem_x509_csr(pem.csr(text).encode())
    except pem.PemError as exc:
        if "-----BEGIN" not in text:
            raise KeyError_(
                "is not a PEM certificate signing request; send the output of "
                f"`openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-384 -nodes -keyout {slug}.key -subj /CN={slug}`"
            ) from None
        raise KeyError_(
            f"{exc}; paste only the CSR file, from its BEGIN to its END line (`openssl req -in {slug}.csr -noout -text` shows what it holds)"
        ) from None
    except ValueError:
        raise KeyError_(
            "is not a PEM certificate signing request; send the output of "
            f"`openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-384 -nodes -keyout {slug}.key -subj /CN={slug}`"
        ) from None
    if not csr.is_signature_valid:
        raise KeyError_("the CSR's signature does not verify; ask the organisation for a fresh CSR")
    cns = [a.value for a in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if cns != [slug]:
        raise KeyError_(
            f"the CSR's common name is {cns[0] if cns else 'missing'!r}; it must be the organisation slug {slug!r} (the VPN pins addresses by CN)"
        )
    key = csr.public_key()
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < 2048:
        raise KeyError_(f"the CSR's RSA key has {key.key_size} bits; use RSA 2048+ or EC P-384")
    if not isinstance(key, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey)):
        raise KeyError_("the CSR's key must be EC (P-256/P-384) or RSA 2048+")
    return csr


def check_openssh_public_key(line: str) -> None:
    """An organisation's SuperNode public key: one bare OpenSSH line of a NIST-curve ECDSA key."""
    key = load_openssh_public_key(line, "ssh-keygen -t ecdsa -b 384")
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in SUPERNODE_KEY_CURVES:
        raise KeyError_("flwr accepts only NIST-curve ECDSA keys for SuperNodes; use `ssh-keygen -t ecdsa -b 384`")


def load_openssh_public_key(line: str, keygen: str) -> SSHPublicKeyTypes:
    """One bare OpenSSH public key line (type, key, comment): no authorized_keys options, one
    line, printable ASCII. `keygen` is the command the messages suggest."""
    text = line.strip()
    if "\n" in text or "\r" in text:
        raise KeyError_(f"holds more than one line; send exactly one OpenSSH public key line (the .pub file of `{keygen}`)")
    fields = text.split()
    if fields and not fields[0].startswith(("ecdsa-sha2-", "ssh-", "sk-")):
        raise KeyError_(
            f"starts with {fields[0][:40]!r}, not a key type: authorized_keys options are not accepted; send the bare key line (type, key, comment)"
        )
    if not text.isascii() or not text.isprintable():
        raise KeyError_("contains characters that are not printable ASCII; send the .pub file as ssh-keygen wrote it")
    try:
        return serialization.load_ssh_public_key(text.encode())
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise KeyError_(f"is not an OpenSSH public key line; send the .pub file of `{keygen}`") from None


# Operators' login keys: what `ssh-keygen` makes today, nothing weaker.
OPERATOR_KEYGEN = "ssh-keygen -t ed25519"
MIN_OPERATOR_RSA_BITS = 3072
OPERATOR_KEY_TYPES = ("ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521")


def operator_authorized_key(line: str) -> str:
    """An operator's SSH public key (ed25519, RSA of 3072 bits or more, or NIST-curve ECDSA),
    as its canonical `type base64` (no comment, no options); KeyError_ says what to send instead."""
    kind = (line.split() or [""])[0]
    if kind.startswith(("ssh-", "sk-", "ecdsa-sha2-")) and kind not in OPERATOR_KEY_TYPES:
        # Before parsing: DSA keys make cryptography warn, security-key types it cannot read.
        raise KeyError_(f"is a {kind[:40]} key; use ed25519, RSA of {MIN_OPERATOR_RSA_BITS} bits or more, or ECDSA: `{OPERATOR_KEYGEN}`")
    key = load_openssh_public_key(line, OPERATOR_KEYGEN)
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_OPERATOR_RSA_BITS:
            raise KeyError_(
                f"is an RSA key of {key.key_size} bits; use RSA of {MIN_OPERATOR_RSA_BITS} bits or more, or better `{OPERATOR_KEYGEN}`"
            )
    elif isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in SUPERNODE_KEY_CURVES:
            raise KeyError_(f"is an ECDSA key on curve {key.curve.name}; use P-256/384/521 or `{OPERATOR_KEYGEN}`")
    elif not isinstance(key, ed25519.Ed25519PublicKey):
        raise KeyError_(f"is not an ed25519, RSA or ECDSA key; send the .pub file of `{OPERATOR_KEYGEN}`")
    return key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def openssh_fingerprint(line: str) -> str:
    """`SHA256:...` of an OpenSSH public key line, as `ssh-keygen -lf` and sshd's log print it."""
    blob = base64.b64decode(line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
