"""A self-signed CA and a serving certificate for the webhook, as PEM bytes.

Used by `kubectl mesh install` (the API server must trust the webhook: the CA goes into the
MutatingWebhookConfiguration's `caBundle`, the pair into the webhook's Secret), by the tests'
webhook server and by `make bench-webhook`. Pure apart from reading the clock and the OS random
source: no files are written.
ECDSA P-256 keys: small, and the TLS handshake is cheap for the API server and for us.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kubectl_mesh.contract import CONTROL_PLANE_NAMESPACE, WEBHOOK_SERVICE


@dataclass(frozen=True)
class CertBundle:
    """PEM-encoded CA certificate/key and the serving certificate/key it signed."""

    ca_cert_pem: bytes
    ca_key_pem: bytes
    cert_pem: bytes
    key_pem: bytes


def service_dns_names(service: str = WEBHOOK_SERVICE, namespace: str = CONTROL_PLANE_NAMESPACE) -> list[str]:
    """The names the API server may use to reach a Service (it uses `<svc>.<ns>.svc`)."""
    return [
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
    ]


def generate_ca(
    common_name: str = "kubectl-mesh webhook CA",
    valid_days: int = 3650,
    now: dt.datetime | None = None,
) -> tuple[bytes, bytes]:
    """A new self-signed CA: (certificate PEM, private key PEM)."""
    start = (now or dt.datetime.now(dt.UTC)) - dt.timedelta(minutes=5)  # tolerate clock skew
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _cert_pem(cert), _key_pem(key)


def generate_serving_cert(
    ca_cert_pem: bytes,
    ca_key_pem: bytes,
    dns_names: Sequence[str],
    ip_addresses: Sequence[str] = (),
    valid_days: int = 365,
    now: dt.datetime | None = None,
) -> tuple[bytes, bytes]:
    """A serving certificate signed by the CA for the given names/IPs: (cert PEM, key PEM)."""
    if not dns_names and not ip_addresses:
        raise ValueError("a serving certificate needs at least one DNS name or IP address")
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError("the CA key must be an EC private key (as generate_ca makes)")
    start = (now or dt.datetime.now(dt.UTC)) - dt.timedelta(minutes=5)
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
    common_name = dns_names[0] if dns_names else ip_addresses[0]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return _cert_pem(cert), _key_pem(key)


def generate_webhook_certs(
    service: str = WEBHOOK_SERVICE,
    namespace: str = CONTROL_PLANE_NAMESPACE,
    extra_dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
    valid_days: int = 365,
) -> CertBundle:
    """A fresh CA and a serving certificate for the webhook Service (plus any extra names/IPs)."""
    ca_cert, ca_key = generate_ca(valid_days=max(valid_days, 3650))
    names = [*service_dns_names(service, namespace), *extra_dns_names]
    cert, key = generate_serving_cert(ca_cert, ca_key, names, ip_addresses, valid_days=valid_days)
    return CertBundle(ca_cert, ca_key, cert, key)


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
