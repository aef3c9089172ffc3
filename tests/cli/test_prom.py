"""kubectl_mesh.prom: the one Prometheus client, over a URL and over the API server's service
proxy (both against a loopback HTTP server that answers like Prometheus), and its parser."""

from __future__ import annotations

import http.server
import json
import math
import socket
import threading
from collections.abc import Iterator
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

import pytest

from kubectl_mesh.kube import KubeClient, KubeConfig
from kubectl_mesh.prom import (
    SERVICE_PROXY_PATH,
    URL_HINT,
    PrometheusClient,
    PrometheusError,
    connect,
    parse_matrix,
    parse_vector,
)


def answer(result: Any, result_type: str = "vector") -> bytes:
    return json.dumps({"status": "success", "data": {"resultType": result_type, "result": result}}).encode()


def sample(value: Any, **labels: str) -> dict[str, Any]:
    return {"metric": labels, "value": [1700000000.0, value]}


def test_vector_and_scalar() -> None:
    rows = parse_vector(answer([sample("1.5", pod="a"), sample("0", pod="b")]), "here")
    assert rows == [({"pod": "a"}, 1.5), ({"pod": "b"}, 0.0)]
    assert parse_vector(answer([1700000000.0, "2"], "scalar"), "here") == [({}, 2.0)]


def test_prometheus_nan_and_infinities_stay_what_they_are() -> None:
    rows = parse_vector(answer([sample("NaN"), sample("+Inf"), sample("-Inf")]), "here")
    values = [value for _, value in rows]
    assert math.isnan(values[0]) and values[1:] == [math.inf, -math.inf]


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        # A value Prometheus never writes is a broken answer, not "no data": it raises.
        (answer([sample("lots")]), "not a number: 'lots'"),
        (answer([sample(1.5)]), "not a string"),
        (answer([{"metric": {}}]), "did not answer an instant vector"),
        (answer([{"metric": {}, "values": [[1, "1"]]}], "matrix"), "did not answer an instant vector"),
        (answer("text", "string"), "did not answer an instant vector"),
        (b"<html>gateway</html>", "did not answer with Prometheus JSON"),
        (json.dumps({"status": "error", "error": "parse error at char 3"}).encode(), "parse error at char 3"),
    ],
)
def test_bad_answers_raise(payload: bytes, message: str) -> None:
    with pytest.raises(PrometheusError, match=message):
        parse_vector(payload, "here")


def test_matrix_gives_each_series_samples_with_their_instants() -> None:
    series = [{"metric": {"pod": "a"}, "values": [[1700000000.123, "1"], [1700000002.123, "NaN"]]}]
    assert parse_matrix(answer(series, "matrix"), "here")[0][0] == {"pod": "a"}
    ((_, samples),) = parse_matrix(answer(series, "matrix"), "here")
    assert samples[0] == (1700000000.123, 1.0) and samples[1][0] == 1700000002.123
    assert math.isnan(samples[1][1])


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (answer([sample("1")]), "did not answer a range vector"),  # an instant vector is no window
        (answer([{"metric": {}, "values": [["soon", "1"]]}], "matrix"), "did not answer a range vector"),
        (answer([{"metric": {}, "values": [[1, "lots"]]}], "matrix"), "not a number: 'lots'"),
        (json.dumps({"status": "error", "error": "bad range"}).encode(), "bad range"),
    ],
)
def test_bad_matrix_answers_raise(payload: bytes, message: str) -> None:
    with pytest.raises(PrometheusError, match=message):
        parse_matrix(payload, "here")


class FakePrometheus(http.server.BaseHTTPRequestHandler):
    """Answers /api/v1/query (directly, or under the service proxy's path) and records it."""

    seen: ClassVar[list[dict[str, Any]]] = []
    status: ClassVar[int] = 200
    body: ClassVar[bytes] = b""

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        FakePrometheus.seen.append({"path": parts.path, "params": parse_qs(parts.query)})
        self.send_response(FakePrometheus.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(FakePrometheus.body)))
        self.end_headers()
        self.wfile.write(FakePrometheus.body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture()
def server() -> Iterator[str]:
    FakePrometheus.seen, FakePrometheus.status = [], 200
    FakePrometheus.body = answer([sample("3", deployment="web")])
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakePrometheus)
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_query_over_a_url_now_and_at_a_time(server: str) -> None:
    client = PrometheusClient(url=server + "/")
    assert client.query("up") == [({"deployment": "web"}, 3.0)]
    assert client.query("up", at=1700000000.5) == [({"deployment": "web"}, 3.0)]
    first, second = FakePrometheus.seen
    assert first == {"path": "/api/v1/query", "params": {"query": ["up"]}}
    assert second["params"] == {"query": ["up"], "time": ["1700000000.500"]}


def test_a_loopback_url_never_goes_through_the_environments_proxy(
    server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.delenv("no_proxy", raising=False)
    assert PrometheusClient(url=server).query("up")[0][1] == 3.0


def test_query_through_the_api_servers_service_proxy(server: str) -> None:
    kube = KubeClient(KubeConfig(server=server, context="lab"))
    client = PrometheusClient(kube=kube)
    assert client.query("up", at=5) == [({"deployment": "web"}, 3.0)]
    assert FakePrometheus.seen[0]["path"] == SERVICE_PROXY_PATH + "/api/v1/query"
    assert FakePrometheus.seen[0]["params"]["time"] == ["5.000"]
    assert client.where == server + SERVICE_PROXY_PATH


@pytest.mark.parametrize(
    ("status", "message", "hint"),
    [
        (
            404,
            "the mesh's Prometheus (service prometheus in mesh-system) was not found",
            "kubectl mesh check",
        ),
        (503, "the mesh's Prometheus has no ready pod (no endpoints)", "logs deploy/prometheus"),
        (403, "forbids its service proxy to you (no endpoints)", "port-forward svc/prometheus 9090"),
        (500, "did not answer through the API server (HTTP 500: no endpoints)", "port-forward"),
    ],
)
def test_service_proxy_failures_say_what_to_do(server: str, status: int, message: str, hint: str) -> None:
    FakePrometheus.status, FakePrometheus.body = status, json.dumps({"message": "no endpoints"}).encode()
    client = PrometheusClient(kube=KubeClient(KubeConfig(server=server, context="lab")))
    with pytest.raises(PrometheusError) as err:
        client.query("up")
    assert message in err.value.message, err.value.message
    assert hint in err.value.hint


def test_unreachable_api_server_is_a_prometheus_error() -> None:
    kube = KubeClient(KubeConfig(server=f"http://127.0.0.1:{closed_port()}", context="lab"))
    with pytest.raises(PrometheusError, match="cannot reach the Kubernetes API server"):
        PrometheusClient(kube=kube).query("up")


def test_unreachable_url_carries_the_callers_hint() -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(PrometheusError, match=f"cannot reach Prometheus at {url}") as err:
        PrometheusClient(url=url, url_hint="try another").query("up")
    assert err.value.hint == "try another"
    with pytest.raises(PrometheusError) as err:
        PrometheusClient(url=url).query("up")  # the demo's: it made the URL, no flag to name
    assert err.value.hint == ""


def test_connect_picks_the_transport(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_kube() -> KubeClient:
        raise AssertionError("the service proxy is not needed with a URL")

    monkeypatch.setenv("MESH_PROMETHEUS_URL", "http://from-env:9090")
    assert connect(server, no_kube).url == server  # the flag wins
    client = connect(None, no_kube)
    assert (client.url, client.url_hint) == ("http://from-env:9090", URL_HINT)
    monkeypatch.delenv("MESH_PROMETHEUS_URL")
    kube = KubeClient(KubeConfig(server=server, context="lab"))
    assert connect(None, lambda: kube).kube is kube
    with pytest.raises(PrometheusError, match="must start with http:// or https://"):
        connect("prometheus:9090", no_kube)
