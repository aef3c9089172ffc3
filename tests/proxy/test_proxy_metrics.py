"""The metrics collector: names, labels present only when known, buckets, bounded cardinality."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from kubectl_mesh.contract import LATENCY_BUCKETS_MS
from proxy.admin import admin_app
from proxy.identity import peer_labels
from proxy.metrics import (
    AUTHORITY_MAX,
    CHUNK_LINES,
    STATUS_CODES_PER_ROUTE,
    MeshMetrics,
    authority_label,
    fold_authority,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _samples(metrics: MeshMetrics) -> dict[str, list[tuple[dict[str, str], float]]]:
    text = metrics.render()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


def test_labels_only_when_known_and_classification() -> None:
    m = MeshMetrics()
    dst = peer_labels("dst", b"shop/deployment/web/web-1")
    m.response("outbound", "web.shop:80", dst, 200, "", 3.0)
    m.response("outbound", "web.shop:80", dst, 503, "", 7.0)
    m.response("outbound", "other:80", (), 502, "connect_refused", 1.0)
    s = _samples(m)
    requests = {tuple(sorted(labels)): value for labels, value in s["request_total"]}
    assert requests == {
        ("authority", "direction", "dst_deployment", "dst_namespace", "dst_pod"): 2,
        ("authority", "direction"): 1,
    }
    responses = {
        (lb.get("status_code"), lb["classification"], lb.get("error")): v for lb, v in s["response_total"]
    }
    assert responses == {
        ("200", "success", None): 1,
        ("503", "failure", None): 1,
        ("502", "failure", "connect_refused"): 1,
    }


def test_latency_histogram_uses_linkerd_buckets() -> None:
    m = MeshMetrics()
    for ms in (0.4, 1.0, 1.5, 45.0, 60000.0):
        m.response("inbound", "a", (), 200, "", ms)
    s = _samples(m)
    buckets = {lb["le"]: v for lb, v in s["response_latency_ms_bucket"]}
    assert list(buckets) == [*(str(b) for b in LATENCY_BUCKETS_MS), "+Inf"]
    assert buckets["1"] == 2 and buckets["2"] == 3 and buckets["50"] == 4 and buckets["+Inf"] == 5
    assert s["response_latency_ms_count"][0][1] == 5
    assert abs(s["response_latency_ms_sum"][0][1] - 60047.9) < 1e-6


def test_tcp_series() -> None:
    m = MeshMetrics()
    series = m.tcp_series("inbound", "src", "10.0.0.1:80")
    m.tcp_open(series)
    series.read += 100
    series.written += 50
    s = _samples(m)
    assert s["tcp_open_total"] == [({"direction": "inbound", "peer": "src", "authority": "10.0.0.1:80"}, 1)]
    assert s["tcp_open_connections"][0][1] == 1
    assert s["tcp_read_bytes_total"][0][1] == 100 and s["tcp_write_bytes_total"][0][1] == 50
    m.tcp_close(series)
    assert _samples(m)["tcp_open_connections"][0][1] == 0


def test_open_h2_streams_are_four_fixed_series_present_at_zero() -> None:
    """Four series whatever the traffic (direction x peer), at 0 before any stream: a dashboard
    reads 0, not "no data", and the scrape grows by a fixed 355 bytes at most."""
    m = MeshMetrics()
    s = _samples(m)["h2_open_streams"]
    assert s == [({"direction": d, "peer": p}, 0) for d in ("inbound", "outbound") for p in ("src", "dst")]
    m.h2_streams[("outbound", "dst")] += 3
    assert ({"direction": "outbound", "peer": "dst"}, 3) in _samples(m)["h2_open_streams"]


def test_a_connection_joins_its_peer_series_once_known_and_counters_never_go_down() -> None:
    m = MeshMetrics()
    peer = peer_labels("src", b"front/deployment/vote/vote-1")
    before = _samples(m)
    pending = m.tcp_connection("inbound", "src", "10.0.0.1:80", wait_for_peer=True)
    pending.read += 300  # the first request head, read before it named the client
    assert _samples(m) == before, "a connection whose peer is unknown is not rendered yet"
    series = m.tcp_attach(pending, peer)
    series.written += 40
    s = _samples(m)
    labels = {"direction": "inbound", "peer": "src", "authority": "10.0.0.1:80"}
    labels |= {"src_namespace": "front", "src_deployment": "vote", "src_pod": "vote-1"}
    assert s["tcp_open_total"] == [(labels, 1)] and s["tcp_open_connections"] == [(labels, 1)]
    assert s["tcp_read_bytes_total"] == [(labels, 300)] and s["tcp_write_bytes_total"] == [(labels, 40)]
    # A second connection from an unknown peer lands in the unlabelled series; both close.
    anonymous = m.tcp_attach(m.tcp_connection("inbound", "src", "10.0.0.1:80", wait_for_peer=True), ())
    m.tcp_close(series)
    m.tcp_close(anonymous)
    after = _samples(m)
    assert sorted(v for _, v in after["tcp_open_total"]) == [1, 1]
    assert [v for _, v in after["tcp_open_connections"]] == [0, 0]
    assert after["tcp_read_bytes_total"][0][1] == 300, "bytes stay counted after the close"


def test_idle_series_are_evicted_but_open_connections_stay() -> None:
    clock = Clock()
    m = MeshMetrics(idle_seconds=600, clock=clock)
    m.response("inbound", "old", (), 200, "", 1.0)
    open_conn = m.tcp_series("inbound", "src", "busy")
    m.tcp_open(open_conn)
    clock.now += 601
    m.response("inbound", "new", (), 200, "", 1.0)
    s = _samples(m)
    assert [lb["authority"] for lb, _ in s["request_total"]] == ["new"]
    assert [lb["authority"] for lb, _ in s["tcp_open_connections"]] == ["busy"], "an open connection stays"


def test_series_count_is_capped() -> None:
    clock = Clock()
    m = MeshMetrics(max_series=100, clock=clock)
    for i in range(1000):
        clock.now += 0.001
        m.response("inbound", f"host-{i}", (), 200, "", 1.0)
    assert len(m.routes) <= 100
    assert ("inbound", "host-999", ()) in m.routes, "the newest series is kept; the least recently used go"


def test_label_values_are_escaped() -> None:
    m = MeshMetrics()
    odd = 'we"ird\\host\nname'
    m.response("inbound", odd, (), 200, "", 1.0)
    [(labels, value)] = _samples(m)["request_total"]
    assert labels["authority"] == odd and value == 1


def test_render_is_fast_enough_for_the_series_cap() -> None:
    """A scrape runs on the proxy's only thread: the largest allowed set must render quickly."""
    import time

    m = MeshMetrics(max_series=2000)
    for i in range(2000):
        m.response("inbound", f"host-{i}:80", (("src_namespace", "ns"), ("src_pod", f"p{i}")), 200, "", 1.0)
    start = time.process_time()
    text = m.render()
    elapsed = time.process_time() - start
    assert text.count("\nrequest_total{") == 2000
    assert elapsed < 0.25, f"render of 2000 series took {elapsed:.3f} s of CPU"


# --- Bounded label values, status fan-out and scrape size (issue 10, defect 5) -----------------
ERRORS = (  # the proxy's `error` label values (docs/architecture.md, "Metric labels and cardinality")
    "connect_refused", "connect_timeout", "connect_error", "resolve_error", "timeout", "reset",
    "bad_response", "loop", "client_gone", "client_timeout", "proxy_error",
)  # fmt: skip
# gRPC responses add a response_total line per grpc_status (never with an error label).
GRPC_STATUSES = (*(str(code) for code in range(17)), "other")
# The worst case of one scrape at the default cap (docs/architecture.md, "Metric labels and
# cardinality"): 2000 x 69,552 B of HTTP + 2000 x 5,725 B of TCP + 703 B of HELP/TYPE + 355 B of
# h2_open_streams (its four fixed series), plus the process metrics (~2 KB).
WORST_CASE_SCRAPE_BYTES = 150_561_000
INJECTED_MEMORY_LIMIT_KIB = 256 * 1024  # the injector's default limits.memory (256Mi)


def _longest_name(tag: str, i: int) -> str:
    """A distinct DNS-1123 subdomain of 253 characters, the longest a peer label can carry."""
    return f"{tag}{i:06d}-".ljust(252, "a") + "z"


def _longest_peer(prefix: str, i: int) -> tuple[tuple[str, str], ...]:
    value = f"{_longest_name('n', i)}/statefulset/{_longest_name('w', i)}/{_longest_name('p', i)}"
    labels = peer_labels(prefix, value.encode())
    assert labels, "identity.py accepts 253 characters for namespace, name and pod"
    return labels


def _samples_of(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


def fill_worst_case(m: MeshMetrics) -> None:
    """Every series the cap allows, each as large as a series can be: HTTP histograms on routes of
    one status code each (the most lines per histogram: its route's request_total, 28 histogram
    lines, and a response_total for the status alone, with each error and with each grpc_status),
    then as many TCP series;
    all labels at their longest, outbound (`direction="outbound"`, the longer value); counters of
    20 digits (2^64) and latency sums of 24 characters (the longest float repr)."""
    big = 10**19
    for i in range(m.max_series):
        authority, peer = authority_label(f"h{i:06d}-".ljust(253, "a").encode()), _longest_peer("dst", i)
        for error in ("", *ERRORS):
            m.response("outbound", authority, peer, 504, error, 1.0)
        for grpc_status in GRPC_STATUSES:
            m.response("outbound", authority, peer, 504, "", 1.0, grpc_status)
    for route in m.routes.values():
        route.requests = big
        for rkey in route.responses:
            route.responses[rkey] = big
        for hist in route.latency.values():
            hist[:] = [big] + [0] * (len(hist) - 3) + [-1.2345678901234567e-300, big]
    for i in range(m.max_series):
        series = m.tcp_series("outbound", "dst", "h".ljust(AUTHORITY_MAX, "a"), _longest_peer("dst", i))
        series.opens = series.closes = series.open = series.read = series.written = big
    for key in m.h2_streams:
        m.h2_streams[key] = big


def test_a_long_authority_folds_to_a_bounded_distinct_label() -> None:
    raw = b"A" * 30_000
    label = authority_label(raw)
    assert re.fullmatch(r"a{236}~[0-9a-f]{16}", label), label
    assert len(label) == AUTHORITY_MAX
    assert authority_label(raw) == label, "deterministic: the caller may memoise it"
    assert authority_label(raw.lower()) == label, "case-insensitive, as short values are"
    # Values that differ only past the kept prefix still get distinct labels.
    labels = {authority_label(raw + b"%d" % i) for i in range(2000)}
    assert len(labels) == 2000 and label not in labels
    assert {len(v) for v in labels} == {AUTHORITY_MAX}
    # The 254th byte is the first that folds.
    assert authority_label(b"x" * 253) == "x" * 253
    assert len(authority_label(b"x" * 254)) == AUTHORITY_MAX and authority_label(b"x" * 254) != "x" * 253


def test_an_ordinary_authority_is_only_lowercased() -> None:
    for raw in (b"Web.Shop.svc.cluster.local:8080", b"10.0.0.1:80", b"[::1]:4143", b"a-b_c~d", b""):
        assert authority_label(raw) == raw.decode().lower()


def test_control_characters_quotes_and_bytes_above_ascii_never_reach_the_exposition() -> None:
    """Every byte value in a Host gives a plain label (printable ASCII, nothing to escape), distinct
    per byte but for case; the exposition has one line per sample and parses (prometheus_client
    and, when installed, promtool)."""
    m = MeshMetrics()
    for byte in range(256):
        label = authority_label(b"host-" + bytes([byte]) + b"-x")
        assert len(label) <= AUTHORITY_MAX and label.isascii() and label.isprintable(), repr(label)
        assert '"' not in label and "\\" not in label
        m.response("inbound", label, (), 200, "", 1.0)
    lowercased = {bytes([byte]).decode("latin-1").lower() for byte in range(256)}
    assert len(m.routes) == len(lowercased) == 200, "distinct bytes stay distinct (but for case)"
    text = m.render()
    assert len(text.splitlines()) == text.count("\n"), "no line break but \\n (\\r, \\x85, ... )"
    assert len(_samples_of(text)["request_total"]) == 200
    promtool = shutil.which("promtool")
    if promtool:
        result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
        problems = set((result.stdout + result.stderr).strip().splitlines())
        assert problems <= {"response_latency_ms metric names should not contain abbreviated units"}, problems


def test_metrics_fold_a_long_authority_even_when_the_caller_did_not() -> None:
    m = MeshMetrics()
    long = "x" * 30_000
    m.response("inbound", long, (), 200, "", 1.0)
    m.response("inbound", long, (), 200, "", 1.0)
    series = m.tcp_series("inbound", "src", long)
    assert [key[1] for key in m.routes] == [authority_label(long.encode())]
    assert series.labels["authority"] == authority_label(long.encode())
    assert _samples(m)["request_total"] == [({"direction": "inbound", "authority": fold_authority(long)}, 2)]


def test_invalid_status_codes_share_one_bucket_counted_as_failures() -> None:
    m = MeshMetrics()
    for status in (0, 42, 99, 600, 999, 12345, -1):
        m.response("inbound", "a", (), status, "", 2.0)
    m.response("inbound", "a", (), 100, "", 2.0)
    m.response("inbound", "a", (), 599, "", 2.0)
    s = _samples(m)
    responses = {(lb.get("status_code"), lb["classification"]): v for lb, v in s["response_total"]}
    assert responses == {(None, "failure"): 7, ("100", "success"): 1, ("599", "failure"): 1}
    counts = {lb.get("status_code"): v for lb, v in s["response_latency_ms_count"]}
    assert counts == {None: 7, "100": 1, "599": 1}
    assert m.histograms == 3


def test_a_route_has_its_own_series_for_at_most_eight_status_codes() -> None:
    m = MeshMetrics()
    statuses = [200, 201, 204, 301, 302, 304, 400, 401, 403, 404, 409, 429, 500, 502, 503, 504]
    for status in statuses * 2:
        m.response("outbound", "api:80", (), status, "", 1.0)
    m.response("outbound", "api:80", (), 504, "timeout", 1.0)
    s = _samples(m)
    own = statuses[:STATUS_CODES_PER_ROUTE]
    counts = {lb.get("status_code"): v for lb, v in s["response_latency_ms_count"]}
    assert counts == {**{str(code): 2 for code in own}, None: 2 * 8 + 1}
    rows = s["response_total"]
    responses = {(lb.get("status_code"), lb["classification"], lb.get("error")): v for lb, v in rows}
    assert responses == {
        **{(str(code), "success", None): 2 for code in own},
        (None, "success", None): 2 * 4,  # 403 404 409 429: folded, still successes
        (None, "failure", None): 2 * 4,  # 500 502 503 504: folded, still failures
        (None, "failure", "timeout"): 1,
    }
    assert sum(v for _, v in s["request_total"]) == 33
    assert m.histograms == STATUS_CODES_PER_ROUTE + 1
    # Another route has its own eight.
    m.response("outbound", "other:80", (), 503, "", 1.0)
    assert m.routes[("outbound", "other:80", ())].latency.keys() == {503}


def test_the_series_cap_counts_latency_histograms_and_drops_least_recently_used_routes() -> None:
    clock = Clock()
    m = MeshMetrics(max_series=10, clock=clock)
    for name, codes in (("a", 3), ("b", 2), ("c", 4), ("d", 1)):  # 10 histograms
        clock.now += 1
        for status in (200, 404, 503, 504)[:codes]:
            m.response("inbound", name, (), status, "", 1.0)
    assert m.histograms == 10 and len(m.routes) == 4
    clock.now += 1
    m.response("inbound", "e", (), 200, "", 1.0)  # full: the least recently used route goes
    assert [key[1] for key in m.routes] == ["b", "c", "d", "e"] and m.histograms == 7 + 1
    # Many routes with three status codes each: the histograms, not the routes, stay within the cap.
    m = MeshMetrics(max_series=100, clock=clock)
    for i in range(200):
        clock.now += 0.001
        for status in (200, 404, 503):
            m.response("inbound", f"host-{i}", (), status, "", 1.0)
        assert m.histograms == sum(len(r.latency) for r in m.routes.values()) <= 100
    assert len(m.routes) <= 34 and ("inbound", "host-199", ()) in m.routes


def test_the_route_being_counted_is_never_the_one_dropped() -> None:
    m = MeshMetrics(max_series=5)
    for status in range(200, 220):
        m.response("inbound", "solo", (), status, "", 1.0)
    [route] = m.routes.values()
    assert m.histograms == len(route.latency) == STATUS_CODES_PER_ROUTE + 1 and route.requests == 20


def _reference_render(m: MeshMetrics) -> str:
    """The exposition as one string, written as before streaming (frozen here for comparison)."""
    routes = list(m.routes.values())
    out = ["# HELP request_total Requests the proxy forwarded, by peer.\n# TYPE request_total counter\n"]
    out += [f"request_total{{{r.text}}} {r.requests}\n" for r in routes]
    out.append(
        "# HELP response_total Responses, by status, classification and error.\n"
        "# TYPE response_total counter\n"
    )
    for r in routes:
        for (status, classification, error, grpc_status), count in r.responses.items():
            extra = f',classification="{classification}"'
            if status:
                extra += f',status_code="{status}"'
            if error:
                extra += f',error="{error}"'
            if grpc_status:
                extra += f',grpc_status="{grpc_status}"'
            out.append(f"response_total{{{r.text}{extra}}} {count}\n")
    out.append(
        "# HELP response_latency_ms Time to response headers, in milliseconds.\n"
        "# TYPE response_latency_ms histogram\n"
    )
    for r in routes:
        for status, hist in r.latency.items():
            base = f'{r.text},status_code="{status}"' if status else r.text
            cumulative = 0
            for le, bucket in zip([*map(str, LATENCY_BUCKETS_MS), "+Inf"], hist[:-2], strict=True):
                cumulative += int(bucket)
                out.append(f'response_latency_ms_bucket{{{base},le="{le}"}} {cumulative}\n')
            out.append(f"response_latency_ms_sum{{{base}}} {hist[-2]!r}\n")
            out.append(f"response_latency_ms_count{{{base}}} {int(hist[-1])}\n")
    for name, doc, kind, attr in (
        ("tcp_open_total", "Connections opened.", "counter", "opens"),
        ("tcp_close_total", "Connections closed.", "counter", "closes"),
        ("tcp_open_connections", "Connections open now.", "gauge", "open"),
        ("tcp_read_bytes_total", "Bytes read from peers.", "counter", "read"),
        ("tcp_write_bytes_total", "Bytes written to peers.", "counter", "written"),
    ):
        out.append(f"# HELP {name} {doc}\n# TYPE {name} {kind}\n")
        out += [f"{name}{{{t.text}}} {getattr(t, attr)}\n" for t in m.tcp.values()]
    out.append("# HELP h2_open_streams HTTP/2 streams open now.\n# TYPE h2_open_streams gauge\n")
    out += [f'h2_open_streams{{direction="{d}",peer="{p}"}} {n}\n' for (d, p), n in m.h2_streams.items()]
    return "".join(out)


def test_the_streamed_exposition_is_the_same_text_in_bounded_chunks() -> None:
    m = MeshMetrics()
    src = peer_labels("src", b"front/deployment/vote/vote-1")
    for i in range(1500):
        for status, error, ms in ((200, "", 1.5), (503, "", 20.0), (502, "connect_refused", 0.3)):
            if i % (1 + status % 7) == 0:
                direction = "inbound" if i % 2 else "outbound"
                m.response(direction, f"host-{i}:80", src if i % 3 else (), status, error, ms)
    for i in range(1200):
        series = m.tcp_series("inbound", "src", f"10.0.{i // 256}.{i % 256}:80", src if i % 2 else ())
        m.tcp_open(series)
        series.read += i
    chunks = list(m.render_chunks())
    text = "".join(chunks)
    assert text == _reference_render(m) == m.render()
    assert len(chunks) > 10 and all(c.endswith("\n") for c in chunks)
    longest_route = max(1 + len(r.responses) + 28 * len(r.latency) for r in m.routes.values())
    assert max(c.count("\n") for c in chunks) <= CHUNK_LINES + longest_route + 2
    families = {f.name for f in text_string_to_metric_families(text)}
    assert families == {
        "request", "response", "response_latency_ms", "tcp_open", "tcp_close", "tcp_open_connections",
        "tcp_read_bytes", "tcp_write_bytes", "h2_open_streams",
    }  # fmt: skip


def test_the_admin_app_streams_metrics_and_answers_head_without_a_body() -> None:
    class Stub:
        metrics = MeshMetrics()
        ready = True

    Stub.metrics.response("inbound", "a:80", (), 200, "", 1.0)
    app = admin_app(Stub())  # type: ignore[arg-type]
    seen: list[Any] = []

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        seen.append((status, dict(headers)))

    body = app({"REQUEST_METHOD": "GET", "PATH_INFO": "/metrics"}, start_response)
    assert not isinstance(body, list), "streamed, not built whole"
    text = b"".join(body).decode()
    assert seen[-1][0] == "200 OK" and "Content-Length" not in seen[-1][1]
    assert text.startswith(Stub.metrics.render()) and "process_start_time_seconds" in text
    assert list(app({"REQUEST_METHOD": "HEAD", "PATH_INFO": "/metrics"}, start_response)) == []
    assert list(app({"REQUEST_METHOD": "HEAD", "PATH_INFO": "/live"}, start_response)) == []
    assert seen[-1] == ("200 OK", {"Content-Type": "text/plain", "Content-Length": "5"})


def test_the_worst_case_scrape_at_the_cap_is_the_documented_size_in_small_chunks() -> None:
    """docs/architecture.md states this size; a scrape of it holds one chunk at a time."""
    m = MeshMetrics()  # the default cap: 2000 HTTP histograms and 2000 TCP series
    fill_worst_case(m)
    assert (len(m.routes), m.histograms, len(m.tcp)) == (2000, 2000, 2000)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        total = biggest = 0
        for chunk in m.render_chunks():
            data = chunk.encode()
            total += len(data)
            biggest = max(biggest, len(data))
            del chunk, data
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert total == 2000 * 69_552 + 2000 * 5_725 + 703 + 355  # the numbers in docs/architecture.md
    assert total + 4_096 <= WORST_CASE_SCRAPE_BYTES < total * 1.001, "the process metrics are < 4 KiB"
    assert biggest < 1_000_000, "a chunk is CHUNK_LINES lines plus one route's (~1.2 KB each)"
    assert peak < 8 * 1024 * 1024, f"a 150 MB scrape held {peak / 2**20:.1f} MiB at once"


# --- The same bounds in real processes ----------------------------------------------------------
def _status_kib(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak) of a process, in KiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            out[name] = int(value.split()[0])
    return out


def _one_request(port: int, host: str, src: str, status: int) -> bytes:
    """One request on its own connection (so each client identity gets its own TCP series)."""
    head = f"GET /status?code={status} HTTP/1.1\r\nHost: {host}\r\nx-mesh-src: {src}\r\n"
    head += "Connection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head.encode("latin-1"))
        data = b""
        while piece := s.recv(65536):
            data += piece
    return data


def _scrape(port: int) -> tuple[int, bytes, float]:
    """GET /metrics, read as it streams; (bytes, the last 64 KiB, seconds)."""
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(b"GET /metrics HTTP/1.0\r\nHost: admin\r\n\r\n")  # HTTP/1.0: the body ends at close
        total, tail = 0, b""
        while piece := s.recv(1 << 20):
            total += len(piece)
            tail = (tail + piece)[-65536:]
    return total, tail, time.monotonic() - start


@pytest.mark.slow
def test_a_real_proxy_at_the_series_cap_with_the_longest_labels(tmp_path: Path) -> None:
    """Filled through real requests: 1999 clients, each with its own connection, the longest
    authority a label keeps (253) and the longest identity identity.py accepts (253-character
    namespace, statefulset name and pod), so 2000 TCP series (1999 clients and the upstream) and
    2000 latency histograms (1999 routes, one with a second status code): every series the default
    cap allows. The scrape stays under the documented worst case (which also counts a response_total
    for every error kind on every histogram, and 20-digit counters), and RSS far under the 256 MiB
    the injector sets."""
    from tests.proxy.proxy_backends import AppServer
    from tests.support.proxy_process import SERVER_ID, start_proxy

    app = AppServer()
    proxy = start_proxy(tmp_path, "--inbound-forward", f"127.0.0.1:{app.port}", identity=SERVER_ID)
    try:
        started = time.monotonic()

        def client(i: int) -> None:
            host = f"h{i:06d}-".ljust(AUTHORITY_MAX, "a")
            src = f"{_longest_name('n', i)}/statefulset/{_longest_name('w', i)}/{_longest_name('p', i)}"
            for status in (503, 200) if i == 0 else (503,):
                assert _one_request(proxy.inbound, host, src, status).startswith(b"HTTP/1.1 %d" % status)

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(client, range(1999)))
        fill_seconds = time.monotonic() - started
        before = _status_kib(proxy.process.pid)
        size, tail, scrape_seconds = _scrape(proxy.admin)
        after = _status_kib(proxy.process.pid)
        text = proxy.exposition()
        s = _samples_of(text)
        assert len(s["request_total"]) == 1999
        assert len(s["response_latency_ms_count"]) == 2000, "every histogram the cap allows"
        assert len(s["tcp_open_total"]) == 2000, "every TCP series the cap allows"
        assert {len(lb["authority"]) for lb, _ in s["request_total"]} == {AUTHORITY_MAX}
        assert {len(lb["src_pod"]) for lb, _ in s["request_total"]} == {253}
        print(
            f"\nfill {fill_seconds:.1f} s; scrape {size / 1e6:.1f} MB in {scrape_seconds:.2f} s; "
            f"RSS {before['VmRSS'] / 1024:.1f} MiB before, {after['VmRSS'] / 1024:.1f} MiB after; "
            f"peak {after['VmHWM'] / 1024:.1f} MiB"
        )
        assert b"process_start_time_seconds" in tail
        assert size <= WORST_CASE_SCRAPE_BYTES
        assert after["VmHWM"] < INJECTED_MEMORY_LIMIT_KIB // 2, after
    finally:
        proxy.stop()
        app.stop()


_WORST_CASE_ADMIN = """
import sys
sys.path[:0] = {paths!r}
import gevent
from proxy.admin import serve_admin
from proxy.metrics import MeshMetrics
from tests.proxy.test_proxy_metrics import fill_worst_case

class Stub:
    ready = True
    metrics = MeshMetrics()

fill_worst_case(Stub.metrics)
serve_admin(Stub(), ("127.0.0.1", {port}))
print("ready", flush=True)
gevent.wait()
"""


@pytest.mark.slow
def test_the_worst_case_scrape_streams_from_the_admin_server_in_bounded_memory(tmp_path: Path) -> None:
    """The documented worst case (every series at the cap, the longest labels, a response_total for
    every error kind, 20-digit counters), built directly in a MeshMetrics (real requests cannot
    give one status every error kind) and scraped from the real admin server (gevent's WSGI server,
    admin.py's app) in its own process. The child also imports pytest and this module (~10 MiB
    more than a proxy needs)."""
    from kubectl_mesh.procs import free_ports, spawn
    from lab.runtime import runtime_env

    (port,) = free_ports(1)
    here = Path(__file__).resolve().parent
    script = _WORST_CASE_ADMIN.format(paths=[str(here.parent.parent)], port=port)
    child = spawn(
        "worst-case admin server", [sys.executable, "-c", script], tmp_path / "admin.log", env=runtime_env()
    )
    try:
        child.wait_ready(lambda: "ready" in child.log().splitlines(), timeout=120, tail=40)
        filled = _status_kib(child.pid)
        size, tail, seconds = _scrape(port)
        after = _status_kib(child.pid)
        print(
            f"\nscrape {size:,} B in {seconds:.2f} s; RSS {filled['VmRSS'] / 1024:.1f} MiB filled, "
            f"{after['VmRSS'] / 1024:.1f} MiB after; peak {after['VmHWM'] / 1024:.1f} MiB"
        )
        assert tail.endswith(b"\n") and b"process_start_time_seconds" in tail
        assert WORST_CASE_SCRAPE_BYTES * 0.999 < size <= WORST_CASE_SCRAPE_BYTES
        assert after["VmHWM"] - filled["VmHWM"] < 16 * 1024, "the scrape itself adds little"
        assert after["VmHWM"] < INJECTED_MEMORY_LIMIT_KIB // 2, after
    finally:
        child.stop(grace=0)


@pytest.mark.slow
def test_distinct_30_kb_hosts_make_a_small_scrape(tmp_path: Path) -> None:
    """The issue's case: 200 requests with distinct 30 KB Host values made one scrape 180 MB and
    the proxy's RSS 400 MB. Now each authority is a 253-character label."""
    from tests.proxy.proxy_backends import AppServer
    from tests.support.proxy_process import SERVER_ID, start_proxy

    app = AppServer()
    proxy = start_proxy(tmp_path, "--inbound-forward", f"127.0.0.1:{app.port}", identity=SERVER_ID)
    try:

        def client(i: int) -> None:
            host = f"{i:04d}".ljust(30_000, "X")
            assert _one_request(proxy.inbound, host, "", 200).startswith(b"HTTP/1.1 200")

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(client, range(200)))
        size, _, _ = _scrape(proxy.admin)
        s = _samples_of(proxy.exposition())
        authorities = {lb["authority"] for lb, _ in s["request_total"]}
        assert authorities == {authority_label(f"{i:04d}".ljust(30_000, "X").encode()) for i in range(200)}
        assert size < 3_000_000, size  # 200 routes of ~10 KB (was 180 MB)
        assert proxy.rss_kib() < 96 * 1024
    finally:
        proxy.stop()
        app.stop()
