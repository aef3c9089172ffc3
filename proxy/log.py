"""One-line structured logs: `ts=… level=… event=… key=value …` on stderr.

Callers pass only addresses, statuses and error kinds: never bodies, headers or secrets.
"""

from __future__ import annotations

import sys
import time
from typing import Any

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}


class Logger:
    def __init__(self, level: str = "info") -> None:
        self.threshold = _LEVELS.get(level, 20)

    def enabled(self, level: str) -> bool:
        return _LEVELS[level] >= self.threshold

    def log(self, level: str, event: str, **fields: Any) -> None:
        if _LEVELS[level] < self.threshold:
            return
        now = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
        parts = [f"ts={stamp}", f"level={level}", f"event={event}"]
        parts.extend(f"{k}={_quote(v)}" for k, v in fields.items())
        try:
            sys.stderr.write(" ".join(parts) + "\n")
            sys.stderr.flush()
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


def _quote(value: Any) -> str:
    text = str(value)
    if not text or any(c in text for c in ' ="\n\t'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text
