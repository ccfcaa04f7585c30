"""Checks of keys that organisations bring themselves (CSRs, OpenSSH public keys)."""

from __future__ import annotations

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from nina import pem

# flwr 1.25 takes only NIST-curve EC keys for SuperNode authentication.
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
    text = line.strip()
    if "\n" in text or "\r" in text:
        raise KeyError_(
            "holds more than one line; send exactly one OpenSSH public key line (the .pub file of `ssh-keygen -t ecdsa -b 384`)"
        )
    fields = text.split()
    if fields and not fields[0].startswith(("ecdsa-sha2-", "ssh-", "sk-")):
        raise KeyError_(
            f"starts with {fields[0][:40]!r}, not a key type: authorized_keys options are not accepted; send the bare key line (type, key, comment)"
        )
    if not text.isascii() or not text.isprintable():
        raise KeyError_("contains characters that are not printable ASCII; send the .pub file as ssh-keygen wrote it")
    try:
        key = serialization.load_ssh_public_key(text.encode())
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise KeyError_("is not an OpenSSH public key line; send the .pub file of `ssh-keygen -t ecdsa -b 384`") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in SUPERNODE_KEY_CURVES:
        raise KeyError_("flwr 1.25 accepts only NIST-curve ECDSA keys for SuperNodes; use `ssh-keygen -t ecdsa -b 384`")
