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
