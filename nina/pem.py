"""Strict PEM: exactly one block of the expected kind per field, written back canonically.

Every certificate, key and CSR that nina reads from the stack config or outputs goes through
one of the functions below. Each parses the text as exactly one PEM block (nothing before or
after it but blank space, no second block, no PEM headers, strict base64), parses the DER
inside with cryptography, and returns the canonical text: the block re-encoded with 64-column
base64 lines and one final newline, as OpenSSL (`openssl x509`, `openssl pkey`) and pulumi-tls
(Go's encoding/pem) write it. So a kit's `ca.crt` is byte for byte what `openssl x509 -in ca.crt`
prints, which is what the kit README's check compares.

Why: a certificate field with a private key appended would put that key into a world-readable
file of every kit; a second CA certificate appended to the CA field would be trusted by the
SuperNode and OpenVPN while a fingerprint check of the file looks at the first one only.

Each function raises `PemError` (a ValueError) with what is wrong and what to do; callers put
the field's key in front. Pure: cryptography only.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

_BEGIN_RE = re.compile(r"-----BEGIN ([^-\n]*)-----")
_BLOCK_RE = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----\n([A-Za-z0-9+/=\n]*?)\n?-----END ([A-Z0-9 ]+)-----")
_PRIVATE = ("PRIVATE KEY", "EC PRIVATE KEY", "RSA PRIVATE KEY", "ENCRYPTED PRIVATE KEY", "OPENSSH PRIVATE KEY", "DSA PRIVATE KEY")
WIDTH = 64


class PemError(ValueError):
    """A PEM field is not exactly one block of the expected kind."""


def _labels(text: str) -> list[str]:
    return [m.group(1) for m in _BEGIN_RE.finditer(text)]


def block(text: str, labels: tuple[str, ...], what: str) -> tuple[str, bytes]:
    """(label, DER) of the one PEM block `text` holds, whose label must be one of `labels`."""
    expected = " or ".join(f"'-----BEGIN {label}-----'" for label in labels)
    text = text.replace("\r\n", "\n")
    found = _labels(text)
    if not found:
        raise PemError(f"holds no PEM block; expected {what}: one {expected} block")
    if len(found) > 1:
        private = [label for label in found if label in _PRIVATE and label not in labels]
        extra = (
            f"; a private key ({private[0]}) is appended, which would be copied into a world-readable file: remove it"
            if private
            else "; remove every block but the one expected"
        )
        raise PemError(f"holds {len(found)} PEM blocks ({', '.join(found)}); expected exactly one: {what}{extra}")
    label = found[0]
    if label not in labels:
        raise PemError(f"is a PEM block '{label}'; expected {what}: a {expected} block")
    stripped = text.strip()
    match = _BLOCK_RE.fullmatch(stripped)
    if match is None or match.group(3) != label:
        start = stripped.find("-----BEGIN ")
        end = stripped.find(f"-----END {label}-----")
        if start > 0 or (end >= 0 and not stripped.endswith(f"-----END {label}-----")):
            raise PemError(f"holds text outside its PEM block; expected {what} alone (only the block, from BEGIN to END)")
        raise PemError(f"is not a well-formed PEM block (headers, a missing END line or characters that are not base64); expected {what}")
    try:
        der = base64.b64decode(match.group(2).replace("\n", ""), validate=True)
    except (binascii.Error, ValueError):
        raise PemError(f"its PEM block is not valid base64; expected {what}") from None
    if not der:
        raise PemError(f"its PEM block is empty; expected {what}")
    return label, der


def encode(label: str, der: bytes) -> str:
    """The canonical PEM text of `der`: 64-column base64 lines, one final newline."""
    body = base64.b64encode(der).decode()
    lines = [body[i : i + WIDTH] for i in range(0, len(body), WIDTH)]
    return f"-----BEGIN {label}-----\n" + "".join(line + "\n" for line in lines) + f"-----END {label}-----\n"


_ERRORS = (ValueError, TypeError, UnsupportedAlgorithm)


def certificate(text: str) -> str:
    """One X.509 certificate, canonical."""
    _, der = block(text, ("CERTIFICATE",), "one X.509 certificate")
    try:
        cert = x509.load_der_x509_certificate(der)
    except _ERRORS:
        raise PemError("is not a readable X.509 certificate (its DER does not parse)") from None
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def load_certificate(text: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(certificate(text).encode())


def csr(text: str) -> str:
    """One certificate signing request, canonical."""
    _, der = block(text, ("CERTIFICATE REQUEST",), "one certificate signing request")
    try:
        request = x509.load_der_x509_csr(der)
    except _ERRORS:
        raise PemError("is not a readable certificate signing request (its DER does not parse)") from None
    return request.public_bytes(serialization.Encoding.PEM).decode()


def private_key(text: str) -> str:
    """One unencrypted PEM private key (SEC1 'EC PRIVATE KEY' as pulumi-tls writes it, PKCS#8 or PKCS#1), canonical."""
    label, der = block(text, ("EC PRIVATE KEY", "PRIVATE KEY", "RSA PRIVATE KEY"), "one unencrypted PEM private key")
    try:
        serialization.load_der_private_key(der, password=None)
    except _ERRORS as exc:
        raise PemError(f"is not a readable unencrypted private key ({exc})") from None
    return encode(label, der)


def openssh_private_key(text: str) -> str:
    """One unencrypted OpenSSH private key, canonical (the block re-wrapped; re-serialising would
    draw a new random check value, and kits must be byte-identical across exports)."""
    label, der = block(text, ("OPENSSH PRIVATE KEY",), "one unencrypted OpenSSH private key")
    canonical = encode(label, der)
    try:
        serialization.load_ssh_private_key(canonical.encode(), password=None)
    except _ERRORS as exc:
        raise PemError(f"is not a readable unencrypted OpenSSH private key ({exc})") from None
    return canonical


def public_key(text: str) -> str:
    """One SubjectPublicKeyInfo public key ('PUBLIC KEY'), canonical."""
    _, der = block(text, ("PUBLIC KEY",), "one PEM public key")
    try:
        key = serialization.load_der_public_key(der)
    except _ERRORS as exc:
        raise PemError(f"is not a readable public key ({exc})") from None
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def public_key_sha256(public_pem: str) -> str:
    """The SHA-256 of a public key's DER SubjectPublicKeyInfo, lower-case hex: what
    `openssl pkey -pubin -in KEY -outform DER | sha256sum` prints."""
    key = serialization.load_pem_public_key(public_key(public_pem).encode())
    return hashlib.sha256(key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).hexdigest()


def is_p384(public_pem: str) -> bool:
    key = serialization.load_pem_public_key(public_key(public_pem).encode())
    return isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP384R1)
