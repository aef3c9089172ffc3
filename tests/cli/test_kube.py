"""kubectl_mesh.kube: kubeconfig resolution like kubectl's, and the small API client's requests
(to a real HTTP server on loopback: what it sends is what the API server would get)."""

from __future__ import annotations

import base64
import http.server
import json
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from kubectl_mesh.kube import KubeClient, KubeError, load_config


def write(path: Path, doc: dict[str, Any]) -> Path:
    path.write_text(json.dumps(doc))
    return path


def config(
    server: str, user: dict[str, Any], namespace: str | None = None, name: str = "ctx"
) -> dict[str, Any]:
    context: dict[str, Any] = {"cluster": "c", "user": "u"}
    if namespace:
        context["namespace"] = namespace
    return {
        "clusters": [{"name": "c", "cluster": {"server": server}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": name, "context": context}],
        "current-context": name,
    }


def test_context_namespace_and_default(tmp_path: Path) -> None:
    path = write(tmp_path / "a", config("https://x:6443/", {"token": "t"}, namespace="shop"))
    cfg = load_config(str(path))
    assert (cfg.server, cfg.namespace, cfg.namespace_from_context, cfg.token) == (
        "https://x:6443",
        "shop",
        True,
        "t",
    )
    path = write(tmp_path / "b", config("https://x", {"token": "t"}))
    assert load_config(str(path)).namespace == "default"


def test_kubeconfig_env_merges_files_first_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = write(tmp_path / "first", {**config("https://one", {"token": "1"}), "current-context": "ctx"})
    second = config("https://two", {"token": "2"}, name="other")
    second["contexts"].append(
        {"name": "ctx", "context": {"cluster": "c", "user": "u", "namespace": "ignored"}}
    )
    write(tmp_path / "second", second)
    monkeypatch.setenv("KUBECONFIG", f"{first}:{tmp_path / 'second'}")
    assert load_config().server == "https://one"
    other = load_config(context="other")
    assert other.context == "other" and other.server == "https://one"  # cluster "c" of the first file


def test_files_relative_to_the_kubeconfig_and_data_fields(tmp_path: Path) -> None:
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "ca.pem").write_bytes(b"CA")
    (tmp_path / "token").write_text("from-file\n")
    doc = config("https://x", {"tokenFile": "token", "client-key-data": base64.b64encode(b"KEY").decode()})
    doc["clusters"][0]["cluster"]["certificate-authority"] = "certs/ca.pem"
    cfg = load_config(str(write(tmp_path / "cfg", doc)))
    assert (cfg.ca_data, cfg.token, cfg.client_key_data) == (b"CA", "from-file", b"KEY")


@pytest.mark.parametrize(
    ("doc", "context", "message"),
    [
        ({"clusters": []}, None, "has no current context"),
        (config("https://x", {}), "nope", 'context "nope" is not in'),
        ({**config("https://x", {}), "clusters": []}, None, 'names cluster "c", which is not in'),
        (config("", {}), None, "has no server"),
    ],
)
def test_bad_kubeconfigs(tmp_path: Path, doc: dict[str, Any], context: str | None, message: str) -> None:
    with pytest.raises(KubeError, match=message):
        load_config(str(write(tmp_path / "cfg", doc)), context)


class Recorder(http.server.BaseHTTPRequestHandler):
    seen: ClassVar[list[dict[str, Any]]] = []

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        auth = self.headers.get("Authorization")
        Recorder.seen.append({"method": self.command, "path": self.path, "auth": auth, "body": body})
        status, payload = (
            (404, {"kind": "Status", "message": 'deployments "x" not found', "reason": "NotFound"})
            if ("/missing" in self.path)
            else (200, {"kind": "Thing", "items": []})
        )
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture()
def api() -> Iterator[str]:
    Recorder.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_requests_carry_the_token_and_parameters(tmp_path: Path, api: str) -> None:
    client = KubeClient(
        load_config(str(write(tmp_path / "cfg", config(api + "/prefix", {"token": "s3cret"}))))
    )
    assert client.get_json("/api/v1/pods", {"labelSelector": "app=web"}) == {"kind": "Thing", "items": []}
    client.post_json("/apis/x", {"a": 1})
    assert Recorder.seen[0]["path"] == "/prefix/api/v1/pods?labelSelector=app%3Dweb"
    assert Recorder.seen[0]["auth"] == "Bearer s3cret"
    assert Recorder.seen[1]["method"] == "POST" and json.loads(Recorder.seen[1]["body"]) == {"a": 1}
    with pytest.raises(KubeError, match='deployments "x" not found') as err:
        client.get_json("/missing")
    assert err.value.status == 404


def test_exec_credential_plugin_and_basic_auth(tmp_path: Path, api: str) -> None:
    plugin = tmp_path / "cred"
    plugin.write_text(
        "#!/bin/sh\n"
        'echo "{\\"apiVersion\\":\\"client.authentication.k8s.io/v1\\",\\"kind\\":\\"ExecCredential\\",'
        '\\"status\\":{\\"token\\":\\"exec-$EXTRA\\"}}"\n'
    )
    plugin.chmod(plugin.stat().st_mode | stat.S_IEXEC)
    user = {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": str(plugin),
                     "env": [{"name": "EXTRA", "value": "ok"}]}}  # fmt: skip
    KubeClient(load_config(str(write(tmp_path / "a", config(api, user))))).get_json("/version")
    assert Recorder.seen[-1]["auth"] == "Bearer exec-ok"
    basic = {"username": "ann", "password": "pw"}
    KubeClient(load_config(str(write(tmp_path / "b", config(api, basic))))).get_json("/version")
    assert Recorder.seen[-1]["auth"] == "Basic " + base64.b64encode(b"ann:pw").decode()


def test_unreachable_server_is_one_line(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = KubeClient(load_config(str(write(tmp_path / "cfg", config(f"http://127.0.0.1:{port}", {})))))
    with pytest.raises(KubeError, match="cannot reach the Kubernetes API server") as err:
        client.get_json("/version")
    assert "\n" not in str(err.value)


# --- the kubernetes package's own loader as the oracle ------------------------------------------
# kube.py re-implements kubeconfig resolution so that `stat` does not pay the kubernetes package's
# import (docs/architecture.md). These tests resolve the same kubeconfigs with both and compare
# what a request would use: server, namespace, CA, TLS settings, proxy, token and client
# certificate. Where the package differs from kubectl (client-go), kubectl is the oracle.


def pem_pair(common_name: str, dns: str | None = None) -> tuple[bytes, bytes]:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    )
    if dns:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(dns)]), critical=False)
    cert = builder.sign(key, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


CA_PEM, _ = pem_pair("lab-ca")
CLIENT_CERT, CLIENT_KEY = pem_pair("ann")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def resolved_by_kube_py(paths: list[Path], context: str | None) -> dict[str, Any]:
    import os
    from unittest import mock

    from kubectl_mesh.kube import credentials

    with mock.patch.dict(os.environ, {"KUBECONFIG": os.pathsep.join(map(str, paths))}):
        cfg = load_config(None, context)  # $KUBECONFIG, merged as kubectl merges it
    creds = credentials(cfg)
    auth = None
    if creds.token:
        auth = f"Bearer {creds.token}"
    elif creds.basic:
        auth = "Basic " + b64(":".join(creds.basic).encode())
    return {
        "server": cfg.server,
        "namespace": cfg.namespace,
        "ca": cfg.ca_data,
        "insecure": cfg.insecure,
        "tls_server_name": cfg.tls_server_name,
        "proxy": cfg.proxy_url,
        "auth": auth,
        "cert": creds.client_cert_data,
        "key": creds.client_key_data,
    }


def resolved_by_kubernetes(paths: list[Path], context: str | None) -> dict[str, Any]:
    from kubernetes import client
    from kubernetes.config.kube_config import KubeConfigLoader, KubeConfigMerger

    merged = KubeConfigMerger(":".join(map(str, paths)))
    loader = KubeConfigLoader(merged.config, active_context=context, config_base_path=None)
    cfg = client.Configuration()
    loader.load_and_set(cfg)

    def read(path: str | None) -> bytes | None:
        return Path(path).read_bytes() if path else None

    auth = cfg.api_key.get("BearerToken")
    if auth and auth.startswith("Bearer "):
        auth = "Bearer " + auth.removeprefix("Bearer ").strip()  # client-go trims a tokenFile; this does not
    return {
        "server": cfg.host,
        "namespace": loader.current_context["context"].get("namespace") or "default",
        "ca": read(cfg.ssl_ca_cert),
        "insecure": not cfg.verify_ssl,
        "tls_server_name": cfg.tls_server_name,
        "proxy": cfg.proxy,
        "auth": auth,
        "cert": read(cfg.cert_file),
        "key": read(cfg.key_file),
    }


def plugin(tmp_path: Path, name: str, status: dict[str, Any]) -> Path:
    """A tiny exec credential plugin: prints an ExecCredential; $SUFFIX (from the kubeconfig's env)
    and its first argument end up in the token, to prove both were passed."""
    script = tmp_path / name
    doc = json.dumps(
        {"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential", "status": status}
    )
    script.write_text(
        "#!/usr/bin/env python3\nimport os, sys\n"
        f"doc = {doc!r}\n"
        "suffix = os.environ.get('SUFFIX', '') + (sys.argv[1] if len(sys.argv) > 1 else '')\n"
        "print(doc.replace('@', suffix))\n"
    )
    script.chmod(0o755)
    return script


def kubeconfig(
    clusters: dict[str, Any], users: dict[str, Any], contexts: dict[str, Any], current: str | None
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": n, "cluster": c} for n, c in clusters.items()],
        "users": [{"name": n, "user": u} for n, u in users.items()],
        "contexts": [{"name": n, "context": c} for n, c in contexts.items()],
    }
    if current:
        doc["current-context"] = current
    return doc


def cases(tmp_path: Path) -> dict[str, tuple[dict[str, Any], str | None]]:
    (tmp_path / "pki").mkdir(exist_ok=True)
    (tmp_path / "pki" / "ca.crt").write_bytes(CA_PEM)
    (tmp_path / "pki" / "ann.crt").write_bytes(CLIENT_CERT)
    (tmp_path / "pki" / "ann.key").write_bytes(CLIENT_KEY)
    (tmp_path / "token").write_text("from-a-file\n")
    token_plugin = plugin(tmp_path, "token-plugin", {"token": "exec-@"})
    cert_plugin = plugin(
        tmp_path,
        "cert-plugin",
        {"clientCertificateData": CLIENT_CERT.decode(), "clientKeyData": CLIENT_KEY.decode()},
    )
    tls = {"server": "https://10.0.0.1:6443/", "certificate-authority-data": b64(CA_PEM)}
    plain = {"token": "s3cret"}
    return {
        "inline CA, token and a namespace": (
            kubeconfig(
                {"c": tls}, {"u": plain}, {"x": {"cluster": "c", "user": "u", "namespace": "shop"}}, "x"
            ),
            None,
        ),
        "no namespace is default": (
            kubeconfig({"c": tls}, {"u": plain}, {"x": {"cluster": "c", "user": "u"}}, "x"),
            None,
        ),
        "files relative to the kubeconfig, and a token file": (
            kubeconfig(
                {"c": {"server": "https://api:6443", "certificate-authority": "pki/ca.crt"}},
                {
                    "u": {
                        "client-certificate": "pki/ann.crt",
                        "client-key": "pki/ann.key",
                        "tokenFile": "token",
                    }
                },
                {"x": {"cluster": "c", "user": "u"}},
                "x",
            ),
            None,
        ),
        "absolute file paths": (
            kubeconfig(
                {
                    "c": {
                        "server": "https://api:6443",
                        "certificate-authority": str(tmp_path / "pki" / "ca.crt"),
                    }
                },
                {
                    "u": {
                        "client-certificate": str(tmp_path / "pki/ann.crt"),
                        "client-key": str(tmp_path / "pki/ann.key"),
                    }
                },
                {"x": {"cluster": "c", "user": "u"}},
                "x",
            ),
            None,
        ),
        "inline client certificate and key": (
            kubeconfig(
                {"c": tls},
                {"u": {"client-certificate-data": b64(CLIENT_CERT), "client-key-data": b64(CLIENT_KEY)}},
                {"x": {"cluster": "c", "user": "u"}},
                "x",
            ),
            None,
        ),
        "a token beats a token file": (
            kubeconfig(
                {"c": tls},
                {"u": {"token": "inline", "tokenFile": "token"}},
                {"x": {"cluster": "c", "user": "u"}},
                "x",
            ),
            None,
        ),
        "insecure, tls-server-name and proxy-url": (
            kubeconfig(
                {
                    "c": {
                        "server": "https://10.0.0.1",
                        "insecure-skip-tls-verify": True,
                        "tls-server-name": "api.internal",
                        "proxy-url": "http://proxy.corp:3128",
                    }
                },
                {"u": plain},
                {"x": {"cluster": "c", "user": "u"}},
                "x",
            ),
            None,
        ),
        "exec plugin token, with env and args": (
            kubeconfig(
                {"c": tls},
                {
                    "u": {
                        "exec": {
                            "apiVersion": "client.authentication.k8s.io/v1",
                            "command": str(token_plugin),
                            "args": ["-arg"],
                            "env": [{"name": "SUFFIX", "value": "env"}],
                        }
                    }
                },
                {"x": {"cluster": "c", "user": "u"}},
                "x",
            ),
            None,
        ),
        "exec plugin by a relative path": (
            kubeconfig(
                {"c": tls},
                {
                    "u": {
                        "exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": "./token-plugin"}
                    }
                },
                {"x": {"cluster": "c", "user": "u"}},
                "x",
            ),
            None,
        ),
        "exec plugin client certificate": (
            kubeconfig(
                {"c": tls},
                {
                    "u": {
                        "exec": {
                            "apiVersion": "client.authentication.k8s.io/v1",
                            "command": str(cert_plugin),
                            "provideClusterInfo": True,
                        }
                    }
                },
                {"x": {"cluster": "c", "user": "u"}},
                "x",
            ),
            None,
        ),
        "a token in the kubeconfig beats the exec plugin": (
            kubeconfig(
                {"c": tls},
                {
                    "u": {
                        "token": "static",
                        "exec": {
                            "apiVersion": "client.authentication.k8s.io/v1",
                            "command": str(token_plugin),
                        },
                    }
                },
                {"x": {"cluster": "c", "user": "u"}},
                "x",
            ),
            None,
        ),
        "basic auth": (
            kubeconfig(
                {"c": tls},
                {"u": {"username": "ann", "password": "pw"}},
                {"x": {"cluster": "c", "user": "u"}},
                "x",
            ),
            None,
        ),
        "--context picks another cluster, user and namespace": (
            kubeconfig(
                {
                    "c": tls,
                    "other": {"server": "https://other:443", "certificate-authority-data": b64(CLIENT_CERT)},
                },
                {"u": plain, "v": {"token": "vee"}},
                {
                    "x": {"cluster": "c", "user": "u"},
                    "y": {"cluster": "other", "user": "v", "namespace": "ops"},
                },
                "x",
            ),
            "y",
        ),
        "a context without a user": (
            kubeconfig({"c": {"server": "https://api:6443"}}, {}, {"x": {"cluster": "c"}}, "x"),
            None,
        ),
    }


def test_kube_py_resolves_like_the_kubernetes_package(tmp_path: Path) -> None:
    """Every case resolves the same with both loaders (pure: nothing is sent to a server)."""
    all_cases = cases(tmp_path)
    assert len(all_cases) == 14
    for number, (case, (doc, context)) in enumerate(all_cases.items()):
        path = write(tmp_path / f"kubeconfig-{number}", doc)
        ours, theirs = resolved_by_kube_py([path], context), resolved_by_kubernetes([path], context)
        assert ours == theirs, case
        assert ours["server"].startswith("https://"), case  # so that the package read CA and certificates


def test_the_exec_plugin_saw_env_args_and_the_cluster(tmp_path: Path) -> None:
    doc, _ = cases(tmp_path)["exec plugin token, with env and args"]
    assert resolved_by_kube_py([write(tmp_path / "cfg", doc)], None)["auth"] == "Bearer exec-env-arg"
    info = tmp_path / "info-plugin"
    info.write_text(
        "#!/bin/sh\n"
        "printf '%s' '"
        '{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential","status":{"token":"ok"}}'
        "'\n"
        f'printf "%s" "$KUBERNETES_EXEC_INFO" > {tmp_path}/seen.json\n'
    )
    info.chmod(0o755)
    exec_spec = {
        "apiVersion": "client.authentication.k8s.io/v1",
        "command": str(info),
        "provideClusterInfo": True,
    }
    cluster = {
        "server": "https://api:6443",
        "tls-server-name": "api.internal",
        "certificate-authority-data": b64(CA_PEM),
    }
    resolved_by_kube_py(
        [
            write(
                tmp_path / "cfg2",
                kubeconfig(
                    {"c": cluster}, {"u": {"exec": exec_spec}}, {"x": {"cluster": "c", "user": "u"}}, "x"
                ),
            )
        ],
        None,
    )
    seen = json.loads((tmp_path / "seen.json").read_text())
    assert seen["spec"]["interactive"] is False
    assert seen["spec"]["cluster"] == {k: v for k, v in cluster.items()}


def test_merged_kubeconfigs_named_items_first_wins_like_both(tmp_path: Path) -> None:
    first = kubeconfig(
        {"c": {"server": "https://one"}}, {"u": {"token": "1"}}, {"x": {"cluster": "c", "user": "u"}}, "x"
    )
    second = kubeconfig(
        {"c": {"server": "https://two"}, "d": {"server": "https://dee"}},
        {"u": {"token": "2"}},
        {
            "x": {"cluster": "d", "user": "u", "namespace": "ignored"},
            "y": {"cluster": "d", "user": "u", "namespace": "why"},
        },
        None,
    )
    paths = [write(tmp_path / "first", first), write(tmp_path / "second", second)]
    for context in ("x", "y"):
        assert resolved_by_kube_py(paths, context) == resolved_by_kubernetes(paths, context)


def test_merged_current_context_first_file_wins_like_kubectl(tmp_path: Path) -> None:
    """The kubernetes package takes the *last* file's current-context; kubectl (client-go) the
    first file's that sets one, and so does kube.py: here kubectl is the oracle."""
    import os
    import shutil
    import subprocess

    first = kubeconfig(
        {"c": {"server": "https://one"}}, {"u": {"token": "1"}}, {"x": {"cluster": "c", "user": "u"}}, "x"
    )
    second = kubeconfig(
        {"d": {"server": "https://two"}}, {"v": {"token": "2"}}, {"y": {"cluster": "d", "user": "v"}}, "y"
    )
    paths = [write(tmp_path / "first", first), write(tmp_path / "second", second)]
    assert resolved_by_kube_py(paths, None)["server"] == "https://one"
    assert resolved_by_kubernetes(paths, None)["server"] == "https://two"  # the package's known difference
    if shutil.which("kubectl") is None:
        pytest.skip("no kubectl to compare with")
    done = subprocess.run(
        ["kubectl", "config", "view", "--minify", "-o", "json"],
        env={**os.environ, "KUBECONFIG": ":".join(map(str, paths))},
        capture_output=True,
        text=True,
        check=True,
    )
    view = json.loads(done.stdout)
    assert view["current-context"] == "x" and view["clusters"][0]["cluster"]["server"] == "https://one"


# --- what the client does with tls-server-name and proxy-url -------------------------------------


class ConnectProxy(threading.Thread):
    """An HTTP proxy for CONNECT only: records each target and relays the bytes both ways."""

    def __init__(self) -> None:
        import socket

        super().__init__(daemon=True)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.targets: list[str] = []

    def run(self) -> None:
        import socket

        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            head = b""
            while b"\r\n\r\n" not in head:
                head += client.recv(4096)
            target = head.split(b" ")[1].decode()
            self.targets.append(target)
            port = target.rsplit(":", 1)[1]
            upstream = socket.create_connection(("127.0.0.1", int(port)))
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self.pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def pipe(src: Any, dst: Any) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            dst.close()


def test_tls_server_name_through_a_proxy_url_tunnel(tmp_path: Path) -> None:
    import ssl

    cert, key = pem_pair("api.internal", dns="api.internal")
    (tmp_path / "tls.crt").write_bytes(cert)
    (tmp_path / "tls.key").write_bytes(key)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")
    Recorder.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    proxy = ConnectProxy()
    proxy.start()
    try:
        port = server.server_address[1]
        cluster = {"server": f"https://127.0.0.1:{port}", "certificate-authority-data": b64(cert)}
        named = {**cluster, "tls-server-name": "api.internal", "proxy-url": f"http://127.0.0.1:{proxy.port}"}
        doc = kubeconfig(
            {"plain": cluster, "named": named},
            {"u": {"token": "t"}},
            {"plain": {"cluster": "plain", "user": "u"}, "named": {"cluster": "named", "user": "u"}},
            "named",
        )
        path = write(tmp_path / "cfg", doc)
        assert KubeClient(load_config(str(path))).get_json("/version") == {"kind": "Thing", "items": []}
        assert proxy.targets == [f"127.0.0.1:{port}"] and Recorder.seen[-1]["auth"] == "Bearer t"
        # Without tls-server-name the certificate (for api.internal) does not match 127.0.0.1.
        with pytest.raises(KubeError, match="cannot reach the Kubernetes API server"):
            KubeClient(load_config(str(path), "plain")).get_json("/version")
    finally:
        server.shutdown()
        server.server_close()
        proxy.listener.close()


def test_http_server_through_a_proxy_url_sends_absolute_form(tmp_path: Path, api: str) -> None:
    doc = config("http://api.internal:8080/base", {"token": "t"})
    doc["clusters"][0]["cluster"]["proxy-url"] = "http://ann:pw@" + api.removeprefix("http://")
    KubeClient(load_config(str(write(tmp_path / "cfg", doc)))).get_json("/version")
    assert Recorder.seen[-1]["path"] == "http://api.internal:8080/base/version"


def test_unsupported_proxy_schemes_are_one_line(tmp_path: Path) -> None:
    doc = config("https://api", {"token": "t"})
    doc["clusters"][0]["cluster"]["proxy-url"] = "socks5://127.0.0.1:1080"
    with pytest.raises(KubeError, match="http:// proxies only"):
        KubeClient(load_config(str(write(tmp_path / "cfg", doc))))


def _malformed(doc_edit: str) -> dict[str, Any]:
    doc = config("https://127.0.0.1:1", {"token": "t"})
    cluster = doc["clusters"][0]
    if doc_edit == "bad-base64":
        cluster["cluster"]["certificate-authority-data"] = "not*base64"
    elif doc_edit == "ca-not-pem":
        cluster["cluster"]["certificate-authority-data"] = base64.b64encode(b"not a PEM\n").decode()
    elif doc_edit == "cluster-without-name":
        del cluster["name"]
    elif doc_edit == "user-cert-bad-base64":
        doc["users"][0]["user"] = {"client-certificate-data": "%%%", "client-key-data": "%%%"}
    elif doc_edit == "context-not-a-mapping":
        doc["contexts"][0]["context"] = "ctx"
    return doc


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        ("bad-base64", 'cluster "c": certificate-authority-data is not valid base64'),
        ("ca-not-pem", 'cluster "c": certificate-authority-data is not a PEM certificate'),
        ("cluster-without-name", "clusters[0] has no name"),
        ("user-cert-bad-base64", 'user "u": client-certificate-data is not valid base64'),
        ("context-not-a-mapping", 'contexts[0] ("ctx"): context is not a mapping'),
    ],
)
def test_malformed_kubeconfigs_name_the_file_and_the_field(tmp_path: Path, edit: str, field: str) -> None:
    """Refused by kubectl (the oracle; the kubernetes package too, where it checks), and by
    `kubectl mesh` in one line naming the file and the field, not `error: KeyError: 'name'`."""
    import subprocess
    import sys

    path = write(tmp_path / "kubeconfig", _malformed(edit))
    kubectl = subprocess.run(
        ["/usr/bin/kubectl", "get", "ns", "--request-timeout=2s", "--kubeconfig", str(path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert kubectl.returncode != 0
    if edit != "context-not-a-mapping":  # kubectl's own words for the first four
        assert ("base64" in kubectl.stderr) == ("base64" in field), kubectl.stderr
    if edit in ("bad-base64", "cluster-without-name"):
        import kubernetes.config

        with pytest.raises(Exception, match=r"base64|name"):
            kubernetes.config.load_kube_config(str(path))
    mesh = Path(sys.executable).parent / "kubectl-mesh"
    done = subprocess.run(
        [str(mesh), "stat", "deploy", "--kubeconfig", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert done.stderr == f"error: kubeconfig {path}: {field}" + done.stderr.split(field, 1)[1]
    assert done.stderr.count("\n") == 1, done.stderr


def test_an_unreadable_kubeconfig_is_one_line_naming_it(tmp_path: Path) -> None:
    """A kubeconfig in a directory the user may not enter (e.g. /root/.kube as another user), or a
    file it may not read: one line naming the file, as kubectl's "permission denied", from the CLI."""
    import os
    import subprocess
    import sys

    from lab.runtime import runtime_env

    private = tmp_path / "private"
    private.mkdir()
    (private / "config").write_text("apiVersion: v1\nkind: Config\n")
    private.chmod(0o700)
    unreadable = tmp_path / "unreadable"
    unreadable.write_text("apiVersion: v1\n")
    unreadable.chmod(0)
    tmp_path.chmod(0o755)
    drop = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if os.geteuid() == 0 else []
    for path in (private / "config", unreadable):
        done = subprocess.run(
            [*drop, sys.executable, "-m", "kubectl_mesh", "stat", "deploy", "--kubeconfig", str(path)],
            capture_output=True, text=True, env=runtime_env(), timeout=60,
        )  # fmt: skip
        assert done.returncode == 1, done
        assert done.stderr == f"error: cannot read kubeconfig {path}: Permission denied\n", done.stderr
