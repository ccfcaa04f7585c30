"""The local CA (replacing the manual's easy-rsa, section 4.1.2.2) and what it issues.

The CA key and certificate take no input from the stack config, so no config change can
re-mint them; `early_renewal_hours` makes `pulumi up` renew a certificate before it expires
(the CA certificate is re-signed with the same key, so issued leaves stay valid).
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_tls as tls

from nina import facts, pem
from nina.plan import Certificate


def _key(name: str, opts: pulumi.ResourceOptions) -> tls.PrivateKey:
    return tls.PrivateKey(name, algorithm=facts.KEY_ALGORITHM, ecdsa_curve=facts.KEY_CURVE, opts=opts)


@dataclass
class CertificateAuthorityArgs:
    protect: bool


class CertificateAuthority(pulumi.ComponentResource):
    cert_pem: pulumi.Output[str]

    def __init__(self, name: str, args: CertificateAuthorityArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("nina:pki:CertificateAuthority", name, None, opts)
        keep = pulumi.ResourceOptions(parent=self, protect=args.protect)
        self.key = _key("ca-key", keep)
        self.cert = tls.SelfSignedCert(
            "ca-cert",
            private_key_pem=self.key.private_key_pem,
            subject=tls.SelfSignedCertSubjectArgs(**facts.CA_SUBJECT),
            is_ca_certificate=True,
            validity_period_hours=facts.CA_VALIDITY_HOURS,
            early_renewal_hours=facts.CA_EARLY_RENEWAL_HOURS,
            allowed_uses=list(facts.CA_CERT_USES),
            opts=keep,
        )
        self.cert_pem = self.cert.cert_pem
        self.register_outputs({"cert_pem": self.cert_pem})


@dataclass
class LeafCertificateArgs:
    spec: Certificate
    ca: CertificateAuthority
    # An organisation that keeps its own key sends a CSR: sign it, hold no private key.
    csr_pem: str | None = None


class LeafCertificate(pulumi.ComponentResource):
    """A key and a certificate signed by the local CA with the SANs the plan lists."""

    cert_pem: pulumi.Output[str]
    private_key_pem: pulumi.Output[str] | None

    def __init__(self, name: str, args: LeafCertificateArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("nina:pki:LeafCertificate", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        spec = args.spec
        if args.csr_pem is not None:
            request: pulumi.Input[str] = args.csr_pem
            self.private_key_pem = None
        else:
            key = _key(f"{name}-key", child)
            request = tls.CertRequest(
                f"{name}-csr",
                private_key_pem=key.private_key_pem,
                subject=tls.CertRequestSubjectArgs(common_name=spec.common_name, organization=facts.LEAF_ORGANIZATION),
                dns_names=list(spec.dns_names),
                ip_addresses=list(spec.ip_addresses),
                opts=child,
            ).cert_request_pem
            self.private_key_pem = key.private_key_pem
        cert = tls.LocallySignedCert(
            f"{name}-cert",
            cert_request_pem=request,
            ca_private_key_pem=args.ca.key.private_key_pem,
            ca_cert_pem=args.ca.cert.cert_pem,
            validity_period_hours=facts.LEAF_VALIDITY_HOURS,
            early_renewal_hours=facts.LEAF_EARLY_RENEWAL_HOURS,
            allowed_uses=list(facts.SERVER_CERT_USES if spec.server else facts.CLIENT_CERT_USES),
            opts=child,
        )
        self.cert_pem = cert.cert_pem
        self.register_outputs({"cert_pem": self.cert_pem})


class SuperNodeKey(pulumi.ComponentResource):
    """A SuperNode's authentication key pair (ECDSA P-384; flwr takes only the OpenSSH format)."""

    private_key_openssh: pulumi.Output[str]
    public_key_openssh: pulumi.Output[str]

    def __init__(self, name: str, opts: pulumi.ResourceOptions | None = None):
        super().__init__("nina:pki:SuperNodeKey", name, None, opts)
        key = _key(f"{name}-auth", pulumi.ResourceOptions(parent=self))
        self.private_key_openssh = key.private_key_openssh
        self.public_key_openssh = key.public_key_openssh
        self.register_outputs({"public_key_openssh": self.public_key_openssh})


@dataclass
class SigningKeyArgs:
    protect: bool


class SigningKey(pulumi.ComponentResource):
    """The platform's kit-signing key (ECDSA P-384): `nina kit export` signs each kit's SHA256SUMS
    with it, and sites check the signature against its fingerprint, which they got out of band.
    Protected and without config input like the CA key: a new key would make every site's pinned
    fingerprint refuse the next kit."""

    public_key_pem: pulumi.Output[str]
    private_key_pem: pulumi.Output[str]
    sha256: pulumi.Output[str]

    def __init__(self, name: str, args: SigningKeyArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("nina:pki:SigningKey", name, None, opts)
        key = _key(f"{name}-key", pulumi.ResourceOptions(parent=self, protect=args.protect))
        self.public_key_pem = key.public_key_pem
        self.private_key_pem = key.private_key_pem
        self.sha256 = key.public_key_pem.apply(pem.public_key_sha256)
        self.register_outputs({"public_key_pem": self.public_key_pem, "sha256": self.sha256})
