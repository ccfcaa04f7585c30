"""Keys and certificates made locally, in the formats the pulumi-tls resources produce.

Used where the real provider cannot run: the mock harness (so mocked stacks carry a real,
verifiable PKI), the offline rehearsal, and tests. Formats follow pulumi-tls (terraform-
provider-tls): ECDSA `private_key_pem` is SEC1 ("EC PRIVATE KEY"), `private_key_openssh` is
the OpenSSH format, `public_key_openssh` ends in a newline; certificates carry key usages
and extended key usages from `allowed_uses`, SANs from the request, and a random serial.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import ipaddress
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from nina import pem

CURVES: dict[str, type[ec.EllipticCurve]] = {"P224": ec.SECP224R1, "P256": ec.SECP256R1, "P384": ec.SECP384R1, "P521": ec.SECP521R1}
_ORDERS = {"P224": 2**224, "P256": 2**256, "P384": 2**384, "P521": 2**521}
# pulumi-tls subject argument names -> X.509 attribute OIDs
SUBJECT_FIELDS = {
    "common_name": NameOID.COMMON_NAME,
    "organization": NameOID.ORGANIZATION_NAME,
    "organizational_unit": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "country": NameOID.COUNTRY_NAME,
    "province": NameOID.STATE_OR_PROVINCE_NAME,
    "locality": NameOID.LOCALITY_NAME,
}
_KEY_USAGES = {
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
    "cert_signing",
    "crl_signing",
    "encipher_only",
    "decipher_only",
}
_EXT_USAGES = {
    "server_auth": ExtendedKeyUsageOID.SERVER_AUTH,
    "client_auth": ExtendedKeyUsageOID.CLIENT_AUTH,
    "code_signing": ExtendedKeyUsageOID.CODE_SIGNING,
    "email_protection": ExtendedKeyUsageOID.EMAIL_PROTECTION,
}


@dataclass(frozen=True)
class KeyPair:
    private_key_pem: str
    private_key_openssh: str
    public_key_openssh: str
    public_key_pem: str


def generate_key(algorithm: str = "ECDSA", curve: str = "P384", *, seed: bytes | None = None) -> KeyPair:
    """A new key (random, or derived from `seed` for reproducible tests)."""
    key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    if algorithm == "ED25519":
        key = ed25519.Ed25519PrivateKey.from_private_bytes(hashlib.sha256(seed).digest()) if seed else ed25519.Ed25519PrivateKey.generate()
        pem_format = serialization.PrivateFormat.PKCS8
    elif algorithm == "ECDSA":
        if seed:
            value = int.from_bytes(hashlib.sha512(seed).digest(), "big") % (_ORDERS[curve] - 1) + 1
            key = ec.derive_private_key(value, CURVES[curve]())
        else:
            key = ec.generate_private_key(CURVES[curve]())
        pem_format = serialization.PrivateFormat.TraditionalOpenSSL  # SEC1, as pulumi-tls
    elif algorithm == "RSA":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem_format = serialization.PrivateFormat.TraditionalOpenSSL
    else:
        raise ValueError(f"unsupported key algorithm {algorithm!r}")
    public = key.public_key()
    return KeyPair(
        private_key_pem=key.private_bytes(serialization.Encoding.PEM, pem_format, serialization.NoEncryption()).decode(),
        # Re-wrapped at 64 columns, as pulumi-tls (Go's encoding/pem) writes it (cryptography: 70).
        private_key_openssh=pem.openssh_private_key(
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()).decode()
        ),
        public_key_openssh=public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode() + "\n",
        public_key_pem=public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode(),
    )


def _load_key(pem: str):
    return serialization.load_pem_private_key(pem.encode(), password=None)


def _name(subject: Mapping[str, str]) -> x509.Name:
    return x509.Name([x509.NameAttribute(SUBJECT_FIELDS[k], v) for k, v in subject.items() if v and k in SUBJECT_FIELDS])


def _usages(builder: x509.CertificateBuilder, allowed_uses: Sequence[str], is_ca: bool) -> x509.CertificateBuilder:
    unknown = set(allowed_uses) - _KEY_USAGES - set(_EXT_USAGES)
    if unknown:
        raise ValueError(f"unknown allowed_uses {sorted(unknown)}")
    ku = {u: u in allowed_uses for u in _KEY_USAGES}
    builder = builder.add_extension(
        x509.KeyUsage(
            digital_signature=ku["digital_signature"],
            content_commitment=ku["content_commitment"],
            key_encipherment=ku["key_encipherment"],
            data_encipherment=ku["data_encipherment"],
            key_agreement=ku["key_agreement"],
            key_cert_sign=ku["cert_signing"],
            crl_sign=ku["crl_signing"],
            encipher_only=ku["encipher_only"],
            decipher_only=ku["decipher_only"],
        ),
        critical=True,
    )
    ext = [_EXT_USAGES[u] for u in allowed_uses if u in _EXT_USAGES]
    if ext:
        builder = builder.add_extension(x509.ExtendedKeyUsage(ext), critical=False)
    return builder.add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)


def _validity(validity_hours: int, now: dt.datetime | None) -> tuple[dt.datetime, dt.datetime]:
    start = (now or dt.datetime.now(dt.UTC)).replace(microsecond=0)
    return start, start + dt.timedelta(hours=validity_hours)


def self_signed_ca(
    key_pem: str,
    subject: Mapping[str, str],
    validity_hours: int,
    allowed_uses: Sequence[str] = ("cert_signing", "crl_signing", "digital_signature"),
    *,
    now: dt.datetime | None = None,
) -> str:
    key = _load_key(key_pem)
    start, end = _validity(validity_hours, now)
    name = _name(subject)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(secrets.randbits(127) | 1)
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    builder = _usages(builder, allowed_uses, is_ca=True)
    return builder.sign(key, _hash(key)).public_bytes(serialization.Encoding.PEM).decode()


def cert_request(key_pem: str, subject: Mapping[str, str], dns_names: Sequence[str] = (), ip_addresses: Sequence[str] = ()) -> str:
    key = _load_key(key_pem)
    builder = x509.CertificateSigningRequestBuilder().subject_name(_name(subject))
    sans = [x509.DNSName(n) for n in dns_names] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ip_addresses]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(key, _hash(key)).public_bytes(serialization.Encoding.PEM).decode()


def sign_certificate(
    csr_pem: str, ca_key_pem: str, ca_cert_pem: str, validity_hours: int, allowed_uses: Sequence[str], *, now: dt.datetime | None = None
) -> str:
    csr = x509.load_pem_x509_csr(csr_pem.encode())
    ca_key = _load_key(ca_key_pem)
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem.encode())
    start, end = _validity(validity_hours, now)
    builder = (
        x509.CertificateBuilder()
        .subject_name(csr.subject)
        .issuer_name(ca_cert.subject)
        .public_key(csr.public_key())
        .serial_number(secrets.randbits(127) | 1)
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    with contextlib.suppress(x509.ExtensionNotFound):
        builder = builder.add_extension(csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value, critical=False)
    builder = _usages(builder, allowed_uses, is_ca=False)
    return builder.sign(ca_key, _hash(ca_key)).public_bytes(serialization.Encoding.PEM).decode()


def _hash(key):
    return (
        None
        if isinstance(key, ed25519.Ed25519PrivateKey)
        else hashes.SHA384()
        if isinstance(key, ec.EllipticCurvePrivateKey)
        else hashes.SHA256()
    )


def fingerprint_sha256(cert_pem: str) -> str:
    """`AA:BB:...` as `openssl x509 -fingerprint -sha256` prints it."""
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    return ":".join(f"{b:02X}" for b in cert.fingerprint(hashes.SHA256()))
