"""`tap`/`top` against broken inputs (adversarial review of #14): a demo state file that is not
one, a stream that fails in a way nobody planned for, and flags checked before anything else."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from kubectl_mesh.cli import main
from kubectl_mesh.tap.events import TapOptions
from kubectl_mesh.tap.stream import TapSession, TapTarget


@pytest.mark.parametrize(
    "doc",
    [
        '{"pid": 1, "namespace": "x", "taps": []}',
        '{"pid": 1, "namespace": "x", "taps": {"web": "p"}}',
        '{"pid": 1, "namespace": "x", "taps": {"web": ["p", 70000]}}',
    ],
)
def test_a_state_file_that_is_not_a_demos_is_named_in_one_line(
    doc: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import os

    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    (tmp_path / f"kubectl-mesh-demo-{os.getuid()}.json").write_text(doc)
    assert main(["tap", "--demo", "deploy/web"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "is not a demo's state file" in err, err


def test_bad_flags_are_named_before_looking_for_a_demo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))  # no demo runs
    assert main(["tap", "--demo", "deploy/web", "--max-rps", "lots"]) == 1
    assert "--max-rps must be a number" in capsys.readouterr().err


class _Broken:
    """A stream whose reads fail in a way the reader does not expect (a library's own error)."""

    def sendall(self, data: bytes) -> None:
        pass

    def recv(self) -> bytes:
        raise RuntimeError("wsproto: LocalProtocolError")

    def close(self) -> None:
        pass


def test_a_stream_failing_unexpectedly_ends_with_an_error_instead_of_hanging() -> None:
    session = TapSession([TapTarget("ns", "web-1")], lambda target: _Broken(), TapOptions())
    got: list[object] = []

    def consume() -> None:
        got.extend(session.events())

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    thread.join(5)
    session.close()
    assert not thread.is_alive(), "tap hangs forever once its only stream's reader died"
    [(_, event, error)] = got  # type: ignore[misc]
    assert event is None and "web-1" in str(error) and "LocalProtocolError" in str(error)


def test_top_judges_a_client_that_left_by_the_status_as_the_metrics_do() -> None:
    """A browser that cancels is not the callee failing: the metrics (proxy/metrics.classify) count
    `client_*` errors by their status alone, so `stat` says 100%; top must say the same."""
    from kubectl_mesh.tap.events import Stream
    from kubectl_mesh.tap.top import Top

    top = Top()
    stream = Stream(0, "web-1", {})
    req = {"type": "req", "proxy": "in", "src": "a/deployment/bot/bot-1", "dst": "a/deployment/web/web-1",
           "method": "GET", "path": "/"}  # fmt: skip
    for n, status, error in [
        (1, 200, "client_gone"),
        (2, 0, "client_timeout"),
        (3, 200, None),
        (4, 502, "reset"),
    ]:
        top.add(stream, {**req, "id": n})
        top.add(stream, {"type": "rsp", "id": n, "status": status, "latency_us": 10})
        top.add(stream, {"type": "end", "id": n, "error": error, "response_bytes": 0})
    [route] = top.rows()
    assert (route.count, route.ok) == (4, 3)
