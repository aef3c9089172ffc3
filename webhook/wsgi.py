"""The WSGI entry point gunicorn serves: `gunicorn -c python:webhook.gunicorn_conf webhook.wsgi:app`."""

from __future__ import annotations

import sys

from kubectl_mesh.inject import MeshConfigError
from webhook.app import create_app

try:
    app = create_app()
except MeshConfigError as exc:
    # One line, then exit: gunicorn stops (the worker cannot boot) instead of serving defaults.
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(3)  # gunicorn's "worker failed to boot" code: the arbiter halts
