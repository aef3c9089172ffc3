"""The webhook's log lines: `kubectl_mesh.log`'s format, the same as the proxy's.

Level from `$MESH_WEBHOOK_LOG_LEVEL` (gunicorn's too; `critical` counts as error), format from
`$MESH_LOG_FORMAT` (logfmt or json; `gunicorn_conf` refuses another value before it starts).
The webhook's own events go through `logger()`; what gunicorn and Flask log through the
standard `logging` module is rendered by `kubectl_mesh.log.Formatter` (`stdlib_handler()`).
Lines carry the pod's namespace, name and uid, never the AdmissionReview's body.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Mapping

from kubectl_mesh.contract import LOG_LEVELS
from kubectl_mesh.errors import MeshError
from kubectl_mesh.log import Formatter, Logger, format_from_env

ENV_WEBHOOK_LOG_LEVEL = "MESH_WEBHOOK_LOG_LEVEL"


class LogLevelError(MeshError, ValueError):
    """A `$MESH_WEBHOOK_LOG_LEVEL` that neither gunicorn nor the webhook knows: one line at start."""


def level_from_env(environ: Mapping[str, str] | None = None) -> str:
    """The webhook's level (`critical`, gunicorn's name, counts as error); LogLevelError on another."""
    env = os.environ if environ is None else environ
    level = env.get(ENV_WEBHOOK_LOG_LEVEL, "").strip().lower() or "info"
    level = "error" if level == "critical" else level
    if level not in LOG_LEVELS:
        raise LogLevelError(
            f"{ENV_WEBHOOK_LOG_LEVEL}={env.get(ENV_WEBHOOK_LOG_LEVEL)!r} is not a log level: "
            f"one of {', '.join((*LOG_LEVELS, 'critical'))}"
        )
    return level


@functools.cache
def logger() -> Logger:
    """The process's logger, made at its first line from the environment."""
    return Logger(level_from_env(), format_from_env())


def stdlib_handler() -> logging.Handler:
    """A stderr handler writing the mesh's lines, for loggers of the `logging` module."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(Formatter(format_from_env()))
    return handler
