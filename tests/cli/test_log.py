"""kubectl_mesh.log: the proxy's and the webhook's one line per event, logfmt or JSON lines."""

from __future__ import annotations

import io
import json
import logging
import sys

import pytest

from kubectl_mesh.contract import LOG_FORMATS, LOG_LEVELS
from kubectl_mesh.log import Formatter, Logger, format_from_env, level_name, render

NOW = 1_700_000_000.25  # 2023-11-14T22:13:20.250Z


def test_logfmt_line() -> None:
    line = render("info", "ready", {"inbound": "0.0.0.0:4143", "drained": True, "n": 3}, "logfmt", NOW)
    assert line == "ts=2023-11-14T22:13:20.250Z level=info event=ready inbound=0.0.0.0:4143 drained=True n=3"


def test_logfmt_quotes_and_escapes_so_one_event_stays_one_line() -> None:
    line = render(
        "error", "x", {"a": 'say "hi"', "b": "", "c": "one\ntwo\r\tthree\x1b", "d": "a=b"}, "logfmt", NOW
    )
    assert "\n" not in line and "\r" not in line and "\x1b" not in line
    assert line.endswith(r'a="say \"hi\"" b="" c="one\ntwo\r\tthree\u001b" d="a=b"')


def test_json_line_has_the_same_keys_in_the_same_order() -> None:
    line = render("warning", "bad_request", {"status": 400, "reason": "x\ny", "ok": False}, "json", NOW)
    record = json.loads(line)
    assert list(record) == ["ts", "level", "event", "status", "reason", "ok"]
    assert record == {
        "ts": "2023-11-14T22:13:20.250Z", "level": "warning", "event": "bad_request",
        "status": 400, "reason": "x\ny", "ok": False,
    }  # fmt: skip
    assert "\n" not in line
    # a field cannot overwrite ts, level or event
    assert json.loads(render("info", "e", {"level": "error"}, "json", NOW))["level"] == "info"


def test_logger_threshold_and_format() -> None:
    out = io.StringIO()
    log = Logger("warning", "json", stream=out)
    log.info("quiet")
    log.debug("quiet")
    log.warning("loud", peer="10.0.0.1:80")
    log.error("louder")
    events = [json.loads(line)["event"] for line in out.getvalue().splitlines()]
    assert events == ["loud", "louder"]
    assert log.enabled("error") and not log.enabled("info")
    with pytest.raises(ValueError, match="log format must be one of logfmt, json"):
        Logger("info", "xml")


def test_levels_and_formats_are_the_contract() -> None:
    assert LOG_LEVELS == ("debug", "info", "warning", "error") and LOG_FORMATS == ("logfmt", "json")
    names = [
        level_name(n) for n in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL)
    ]
    assert names == ["debug", "info", "warning", "error", "error"]


def test_format_from_env() -> None:
    assert format_from_env({}) == "logfmt" and format_from_env({"MESH_LOG_FORMAT": ""}) == "logfmt"
    assert format_from_env({"MESH_LOG_FORMAT": "JSON"}) == "json"
    with pytest.raises(ValueError, match=r"^MESH_LOG_FORMAT must be one of logfmt, json, got 'xml'$"):
        format_from_env({"MESH_LOG_FORMAT": "xml"})


@pytest.mark.parametrize("log_format", LOG_FORMATS)
def test_stdlib_records_render_the_same_way(log_format: str) -> None:
    """gunicorn's and Flask's `logging` lines: level, `event=log`, the logger and the message."""
    record = logging.LogRecord(
        "gunicorn.error", logging.CRITICAL, __file__, 1, "Booting worker %s", (7,), None
    )
    record.created = NOW
    line = Formatter(log_format).format(record)
    expected = render(
        "error", "log", {"logger": "gunicorn.error", "msg": "Booting worker 7"}, log_format, NOW
    )
    assert line == expected
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = logging.LogRecord("webhook", logging.ERROR, __file__, 1, "Exception", (), sys.exc_info())
    line = Formatter(log_format).format(record)
    assert "\n" not in line and "Traceback (most recent call last):" in line and "RuntimeError: boom" in line
