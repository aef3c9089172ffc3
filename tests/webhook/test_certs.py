"""kubectl_mesh.install.certs: a CA and a serving certificate that a TLS client really accepts."""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path

from cryptography import x509

from kubectl_mesh.install.certs import generate_ca, generate_serving_cert, generate_webhook_certs


def test_bundle_names_the_service_and_is_signed_by_the_ca() -> None:
    bundle = generate_webhook_certs(extra_dns_names=["localhost"], ip_addresses=["127.0.0.1"])
    cert = x509.load_pem_x509_certificate(bundle.cert_pem)
    ca = x509.load_pem_x509_certificate(bundle.ca_cert_pem)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "mesh-webhook.mesh-system.svc" in sans.get_values_for_type(x509.DNSName)
    assert "localhost" in sans.get_values_for_type(x509.DNSName)
    assert cert.issuer == ca.subject
    cert.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True


def test_a_tls_client_verifying_the_ca_completes_a_handshake(tmp_path: Path) -> None:
    ca_cert, ca_key = generate_ca()
    cert, key = generate_serving_cert(ca_cert, ca_key, ["mesh-webhook.mesh-system.svc"], ["127.0.0.1"])
    (tmp_path / "tls.crt").write_bytes(cert)
    (tmp_path / "tls.key").write_bytes(key)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")
    client_ctx = ssl.create_default_context(cadata=ca_cert.decode())

    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def serve() -> None:
            conn, _ = listener.accept()
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(b"ok")

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            client_ctx.wrap_socket(raw, server_hostname="mesh-webhook.mesh-system.svc") as tls,
        ):
            assert tls.recv(2) == b"ok"
        thread.join(5)
