"""The webhook under real gunicorn (gevent workers) over TLS with a test CA, called over HTTPS."""

from __future__ import annotations

import base64
import contextlib
import copy
import http.client
import json
import os
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from tests.support.webhook_server import GUNICORN, REPO, WebhookServer, write_certs
from tests.webhook.test_admission import POD, admission_review
from tests.webhook.webhook_testlib import validate_pod

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebhookServer]:
    with WebhookServer(tmp_path_factory.mktemp("webhook"), workers=2) as srv:
        srv.initial_workers = srv.worker_pids()  # type: ignore[attr-defined]
        yield srv


def metric_samples(srv: WebhookServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, headers, body = srv.metrics_request()
    assert status == 200 and headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def admissions(samples: dict[Any, float], result: str, reason: str = "") -> float:
    return samples.get(("mesh_webhook_admissions_total", (("reason", reason), ("result", result))), 0.0)


def test_injects_over_https_and_counts_it(server: WebhookServer) -> None:
    before = metric_samples(server)
    status, answer = server.mutate(admission_review(uid="uid-inject"))
    assert status == 200
    resp = answer["response"]
    assert resp["uid"] == "uid-inject" and resp["allowed"] is True and resp["patchType"] == "JSONPatch"
    patched = jsonpatch.apply_patch(copy.deepcopy(POD), json.loads(base64.b64decode(resp["patch"])))
    validate_pod(patched)
    assert patched["spec"]["initContainers"][1]["name"] == "mesh-proxy"
    after = metric_samples(server)
    assert admissions(after, "injected") == admissions(before, "injected") + 1
    latency = ("mesh_webhook_admission_duration_seconds_count", ())
    assert after[latency] >= before.get(latency, 0) + 1


def test_skip_is_explained_in_warnings_and_counted_by_reason(server: WebhookServer) -> None:
    pod = copy.deepcopy(POD)
    pod["metadata"]["labels"]["kubectl-mesh.io/inject"] = "disabled"
    before = metric_samples(server)
    status, answer = server.mutate(admission_review(pod, uid="uid-skip"))
    assert status == 200 and answer["response"]["allowed"] is True and "patch" not in answer["response"]
    assert answer["response"]["warnings"] == [
        "kubectl-mesh: pod not injected: pod label kubectl-mesh.io/inject=disabled"
    ]
    after = metric_samples(server)
    assert admissions(after, "skipped", "opted-out") == admissions(before, "skipped", "opted-out") + 1


def test_internal_error_fails_open_and_is_counted(server: WebhookServer) -> None:
    pod = copy.deepcopy(POD)
    pod["spec"]["initContainers"] = {"not": "a list"}
    before = metric_samples(server)
    status, answer = server.mutate(admission_review(pod, uid="uid-error"))
    assert (
        status == 200 and answer["response"]["allowed"] is True and answer["response"]["uid"] == "uid-error"
    )
    assert "admitted without the mesh proxy" in answer["response"]["warnings"][0]
    assert admissions(metric_samples(server), "error") == admissions(before, "error") + 1
    lines = [line for line in server.log_path.read_text().splitlines() if "event=injection_failed" in line]
    assert len(lines) == 1, "one line per event, the traceback escaped into it"
    assert (
        lines[0].startswith("ts=") and " level=error " in lines[0] and " pod=emojivoto/web-7f9-" in lines[0]
    )
    assert "uid=uid-error" in lines[0] and "Traceback (most recent call last):\\n" in lines[0]


@pytest.mark.parametrize(
    ("body", "ctype", "status"),
    [
        (b"{}", "text/plain", 415),
        (b"not json", "application/json", 400),
        (
            b'{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{}}',
            "application/json",
            400,
        ),
    ],
)  # a body over the limit: 413 before it is read, then closed (test_webhook_limits.py)
def test_bad_requests_get_documented_4xx(server: WebhookServer, body: bytes, ctype: str, status: int) -> None:
    got, headers, answer = server.request("POST", "/mutate", body, {"Content-Type": ctype})
    assert got == status
    assert headers["content-type"] == "application/json"
    assert json.loads(answer)["error"]  # a one-line reason


def _chunked(server: WebhookServer, body: bytes) -> tuple[int, dict[str, Any]]:
    conn = server.connect()
    pieces = (body[i : i + 65536] for i in range(0, len(body), 65536))
    conn.request(
        "POST", "/mutate", body=pieces, headers={"Content-Type": "application/json"}, encode_chunked=True
    )
    resp = conn.getresponse()
    answer = json.loads(resp.read())
    conn.close()
    return resp.status, answer


def test_chunked_bodies_are_read_and_limited(server: WebhookServer) -> None:
    status, answer = _chunked(server, json.dumps(admission_review(uid="uid-chunked")).encode())
    assert status == 200 and answer["response"]["uid"] == "uid-chunked" and "patch" in answer["response"]
    status, answer = _chunked(server, b" " * (5 * 1024 * 1024))
    assert status == 413 and "larger than" in answer["error"]


def test_health_endpoints(server: WebhookServer) -> None:
    assert server.request("GET", "/healthz")[0] == 200
    status, _, body = server.request("GET", "/readyz")
    assert status == 200 and json.loads(body)["status"] == "ready"


def test_metrics_are_served_on_their_own_port_and_mutate_is_not(server: WebhookServer) -> None:
    """Two ports, two jobs: the NetworkPolicy admits the API server to one, Prometheus to the other."""
    before = metric_samples(server)
    # The metrics port: plain HTTP, GET /metrics only; /mutate, the probes, any other path: 404.
    review = json.dumps(admission_review(uid="uid-metrics-port")).encode()
    conn = http.client.HTTPConnection("127.0.0.1", server.metrics_port, timeout=10)
    try:
        conn.request("POST", "/mutate", body=review, headers={"Content-Type": "application/json"})
        answer = conn.getresponse()
        status, body = answer.status, answer.read()
    finally:
        conn.close()
    assert (status, json.loads(body)) == (404, {"error": "not found"})
    for path in ("/healthz", "/readyz", "/"):
        status, headers, body = server.metrics_request("GET", path)
        assert (status, headers["content-type"], json.loads(body)) == (
            404,
            "application/json",
            {"error": "not found"},
        )
    status, headers, body = server.metrics_request("POST", "/metrics")
    assert (status, headers["allow"], json.loads(body)["error"]) == (405, "GET", "method not allowed")
    # No admission was answered there: the admission counters did not move.
    after = metric_samples(server)
    for result in ("injected", "skipped", "error"):
        assert admissions(after, result) == admissions(before, result)
    # The admission port (TLS): /metrics is not there; /mutate is, and counts on the metrics port.
    status, headers, body = server.request("GET", "/metrics")
    assert status == 404 and headers["content-type"] == "application/json" and "error" in json.loads(body)
    assert server.mutate(admission_review(uid="uid-admission-port"))[0] == 200
    assert admissions(metric_samples(server), "injected") == admissions(after, "injected") + 1
    # And each port speaks only its own protocol: no TLS on the metrics port.
    with pytest.raises(ssl.SSLError):
        tls = http.client.HTTPSConnection(
            "127.0.0.1", server.metrics_port, context=server.client_context(), timeout=10
        )
        try:
            tls.request("GET", "/metrics")
        finally:
            tls.close()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_tls_below_1_2_is_refused(server: WebhookServer) -> None:
    ctx = server.client_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1
    ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    with contextlib.suppress(ssl.SSLError):
        ctx.set_ciphers("ALL:@SECLEVEL=0")
    with pytest.raises(ssl.SSLError, match="ALERT_PROTOCOL_VERSION"):  # the server's alert, not ours
        server.request("GET", "/healthz", conn=server.connect(context=ctx))
    ctx12 = server.client_context()
    ctx12.maximum_version = ssl.TLSVersion.TLSv1_2
    assert server.request("GET", "/healthz", conn=server.connect(context=ctx12))[0] == 200


def test_plain_http_and_untrusted_clients_do_not_hurt_the_server(
    server: WebhookServer, tmp_path: Path
) -> None:
    import socket

    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
        raw.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        with contextlib.suppress(ConnectionError):
            raw.recv(100)  # the server answers with a TLS alert, or resets
    other_ca = write_certs(tmp_path / "other")
    with pytest.raises(ssl.SSLCertVerificationError):
        server.request("GET", "/healthz", conn=server.connect(other_ca))
    assert server.request("GET", "/healthz")[0] == 200


# --- property-based: malformed bodies never produce a 5xx or kill a worker -----------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)


def _mangled_review(draw: st.DrawFn) -> bytes:
    review = admission_review(uid=draw(st.text(min_size=1, max_size=12)))
    request = review["request"]
    for key in draw(st.lists(st.sampled_from(sorted(request)), max_size=4)):
        request[key] = draw(json_values)
    obj = draw(st.sampled_from(["keep", "junk", "spec-junk", "meta-junk"]))
    if obj == "junk":
        request["object"] = draw(json_values)
    elif obj == "spec-junk" and isinstance(request.get("object"), dict):
        request["object"] = {**POD, "spec": draw(json_values)}
    elif obj == "meta-junk" and isinstance(request.get("object"), dict):
        request["object"] = {**POD, "metadata": draw(json_values)}
    if draw(st.booleans()):
        review[draw(st.sampled_from(["apiVersion", "kind", "request"]))] = draw(json_values)
    return json.dumps(review).encode()


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["bytes", "json", "review"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    return _mangled_review(draw)


content_types = st.sampled_from(
    [
        "application/json",
        "application/json; charset=utf-8",
        "text/plain",
        "",
        "application/xml",
        "APPLICATION/JSON",
    ]
)


@pytest.fixture(scope="module")
def conn_holder(server: WebhookServer) -> dict[str, Any]:
    return {"conn": server.connect()}


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=bodies(), ctype=content_types, method=st.sampled_from(["POST", "POST", "POST", "PUT", "GET"]))
def test_malformed_bodies_only_get_documented_answers(
    server: WebhookServer, conn_holder: dict[str, Any], body: bytes, ctype: str, method: str
) -> None:
    headers = {"Content-Type": ctype} if ctype else {}
    try:
        status, _, answer = server.request(method, "/mutate", body, headers, conn=conn_holder["conn"])
    except (ConnectionError, OSError):  # keep-alive connection closed by the server: retry once, fresh
        conn_holder["conn"] = server.connect()
        status, _, answer = server.request(method, "/mutate", body, headers, conn=conn_holder["conn"])
    assert status in (200, 400, 405, 413, 415), (status, answer[:300])
    data = json.loads(answer)
    if status == 200:
        resp = data["response"]
        assert resp["allowed"] is True
        assert resp["uid"] == json.loads(body)["request"]["uid"]
    else:
        assert isinstance(data["error"], str) and "\n" not in data["error"]


def test_workers_survive_the_malformed_bodies(server: WebhookServer) -> None:
    """After everything above (the property test included): the same workers, still healthy."""
    assert len(server.initial_workers) == 2  # type: ignore[attr-defined]
    for _ in range(10):
        assert server.request("GET", "/healthz")[0] == 200
    assert server.worker_pids() == server.initial_workers  # type: ignore[attr-defined]
    assert _only_injector_tracebacks(server), server.log_path.read_text()[-3000:]


def _only_injector_tracebacks(server: WebhookServer) -> bool:
    """Every traceback in the log belongs to a logged, fail-open injector error."""
    text = server.log_path.read_text()
    return text.count("Traceback") == text.count("event=injection_failed")


# --- lifecycle: certificate reload, bad config ----------------------------------------------------------


def test_renewed_certificate_is_served_without_restart(tmp_path: Path) -> None:
    with WebhookServer(tmp_path, workers=1) as srv:
        old_ca = tmp_path / "old-ca.crt"
        old_ca.write_bytes(srv.ca_file.read_bytes())
        pids = srv.worker_pids()
        new_ca = write_certs(srv.tls_dir)  # a different CA, written over the same paths atomically
        deadline = time.monotonic() + 15
        while True:
            try:
                status = srv.request("GET", "/healthz", conn=srv.connect(new_ca))[0]
                break
            except ssl.SSLCertVerificationError:
                assert time.monotonic() < deadline, "new certificate not served within 15 s"
                time.sleep(0.3)
        assert status == 200
        with pytest.raises(ssl.SSLCertVerificationError):
            srv.request("GET", "/healthz", conn=srv.connect(old_ca))
        assert srv.worker_pids() == pids  # no restart needed
        # A broken pair (key of another cert) is ignored: the current certificate stays in use.
        (srv.tls_dir / "tls.key").write_bytes(
            b"-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n"
        )
        time.sleep(1.5)
        assert srv.request("GET", "/healthz", conn=srv.connect(new_ca))[0] == 200
        assert "not usable yet" in srv.log_path.read_text()


def start_and_fail(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """gunicorn started as the image starts it, expected to stop at once: its exit and output."""
    return subprocess.run(
        [GUNICORN, "-c", "python:webhook.gunicorn_conf", "webhook.wsgi:app"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_bad_config_stops_the_server_with_one_line(tmp_path: Path) -> None:
    srv = WebhookServer(tmp_path, workers=1, config={"proxyImge": "typo"})
    result = start_and_fail(srv.env)
    assert result.returncode != 0
    assert "error: mesh config" in result.stderr and "unknown mesh config key(s): proxyImge" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_tls_files_stop_the_server(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("MESH_TLS_CERT", "MESH_TLS_KEY")}
    result = start_and_fail(env)
    assert result.returncode != 0 and "MESH_TLS_CERT and MESH_TLS_KEY" in result.stderr


@pytest.mark.parametrize(
    ("var", "value"),
    [("MESH_WEBHOOK_WORKERS", "x"), ("MESH_WEBHOOK_WORKERS", "0"), ("MESH_WEBHOOK_KEEPALIVE", "-1"),
     ("MESH_LOG_FORMAT", "xml"), ("MESH_WEBHOOK_LOG_LEVEL", "loud")],
)  # fmt: skip
def test_a_bad_variable_stops_the_server_with_one_line_naming_it(
    tmp_path: Path, var: str, value: str
) -> None:
    """Before any worker: `error: <the variable>...`, exit non-zero; never a traceback, never a
    master with no worker (0 workers listened and answered nothing)."""
    srv = WebhookServer(tmp_path, workers=1)
    srv.env[var] = value
    result = start_and_fail(srv.env)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {var}"), line


@pytest.mark.parametrize("bind", ["9995", "0.0.0.0:http", "0.0.0.0:70000", "same"])
def test_a_bad_metrics_bind_stops_the_server_with_one_line(tmp_path: Path, bind: str) -> None:
    srv = WebhookServer(tmp_path, workers=1)
    srv.env["MESH_WEBHOOK_METRICS_BIND"] = srv.env["MESH_WEBHOOK_BIND"] if bind == "same" else bind
    result = start_and_fail(srv.env)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: MESH_WEBHOOK_") and "MESH_WEBHOOK_METRICS_BIND" in line
