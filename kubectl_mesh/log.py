"""One log format for the proxy and the webhook: one line per event on stderr, logfmt or JSON lines.

    ts=2025-01-31T12:00:00.123Z level=info event=started inbound=0.0.0.0:4143
    {"ts":"2025-01-31T12:00:00.123Z","level":"info","event":"started","inbound":"0.0.0.0:4143"}

`ts` (UTC, milliseconds), `level` (contract.LOG_LEVELS), `event` (a snake_case name), then the
event's fields in the order given. The format is `$MESH_LOG_FORMAT` (`logfmt`, the default, or
`json`); `mesh-proxy run --log-format` overrides it. `Logger` is what the proxy and the webhook
write with; `Formatter` renders records of the standard `logging` module (gunicorn's own lines)
the same way, as `event=log logger=<name> msg=<message>`.

Callers pass only addresses, names, statuses and error kinds: never bodies, headers or secrets.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

from kubectl_mesh.contract import ENV_LOG_FORMAT, LOG_FORMATS, LOG_LEVELS
from kubectl_mesh.errors import MeshError

LEVELS = dict(zip(LOG_LEVELS, (10, 20, 30, 40), strict=True))


class LogFormatError(MeshError, ValueError):
    """A log format that is not one of LOG_FORMATS: the proxy and the webhook print it in one line."""


def check_format(log_format: str, source: str = "log format") -> str:
    """`log_format` if it is one of LOG_FORMATS; else LogFormatError naming `source` and the choices."""
    if log_format not in LOG_FORMATS:
        raise LogFormatError(f"{source} must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}")
    return log_format


def format_from_env(environ: Mapping[str, str] | None = None) -> str:
    """The format `$MESH_LOG_FORMAT` names (logfmt when unset or empty); LogFormatError on another."""
    env = os.environ if environ is None else environ
    return check_format(env.get(ENV_LOG_FORMAT, "").strip().lower() or "logfmt", ENV_LOG_FORMAT)


def timestamp(now: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"


def render(level: str, event: str, fields: Mapping[str, Any], log_format: str, now: float) -> str:
    """One line (without its newline) in `log_format`."""
    if log_format == "json":
        record: dict[str, Any] = {"ts": timestamp(now), "level": level, "event": event}
        for key, value in fields.items():
            record.setdefault(key, _json_value(value))
        return json.dumps(record, ensure_ascii=False, separators=(",", ":"))
    parts = [f"ts={timestamp(now)}", f"level={level}", f"event={_quote(event)}"]
    parts.extend(f"{k}={_quote(v)}" for k, v in fields.items())
    return " ".join(parts)


class Logger:
    """Writes `render`'s lines to `stream` (stderr) from `level` up; never raises on a closed stream."""

    def __init__(self, level: str = "info", log_format: str = "logfmt", stream: TextIO | None = None) -> None:
        self.threshold = LEVELS.get(level, 20)
        self.format = check_format(log_format)
        self.stream = stream

    def enabled(self, level: str) -> bool:
        return LEVELS[level] >= self.threshold

    def log(self, level: str, event: str, **fields: Any) -> None:
        if LEVELS[level] < self.threshold:
            return
        line = render(level, event, fields, self.format, time.time())
        stream = self.stream or sys.stderr
        try:
            stream.write(line + "\n")
            stream.flush()
        except (OSError, ValueError):
            pass

    def debug(self, event: str, **fields: Any) -> None:
        if self.threshold <= 10:
            self.log("debug", event, **fields)

    def info(self, event: str, **fields: Any) -> None:
        self.log("info", event, **fields)

    def warning(self, event: str, **fields: Any) -> None:
        self.log("warning", event, **fields)

    def error(self, event: str, **fields: Any) -> None:
        self.log("error", event, **fields)


def level_name(levelno: int) -> str:
    """A `logging` level as one of LOG_LEVELS (CRITICAL counts as error)."""
    if levelno >= logging.ERROR:
        return "error"
    if levelno >= logging.WARNING:
        return "warning"
    return "info" if levelno >= logging.INFO else "debug"


class Formatter(logging.Formatter):
    """A `logging.Formatter` writing the mesh's lines: for libraries that log through `logging`."""

    def __init__(self, log_format: str = "logfmt") -> None:
        super().__init__()
        self.log_format = check_format(log_format)

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {"logger": record.name, "msg": record.getMessage()}
        if record.exc_info:
            fields["exception"] = self.formatException(record.exc_info)
        return render(level_name(record.levelno), "log", fields, self.log_format, record.created)


def _json_value(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _quote(value: Any) -> str:
    """A logfmt value: bare when it is printable without blanks, `=` or quotes; else quoted, with
    backslash escapes for quotes, backslashes and control characters (one event, one line)."""
    text = str(value)
    if text and text.isprintable() and not any(c in text for c in ' ="'):
        return text
    return (
        '"' + "".join(_ESCAPES.get(c) or (c if c.isprintable() else f"\\u{ord(c):04x}") for c in text) + '"'
    )
