"""The lab's access to its own API server: the `kubernetes` package, with the lab's certificates.

Each part of the lab talks as its own identity from the lab's PKI (admin, node agent), so a
`Kube` is built from the server URL and one certificate/key pair, not from a kubeconfig.

The node agent and the bootstrap work on plain JSON, exactly as the API server sends it: `data()`
calls a typed API method without its model round-trip (`_preload_content=False`), so no field the
client's models lack is dropped and no pod event pays for a model. `watch()` streams a list
method's watch events the same way. Errors: `ApiException` (`.status`, `message()` for one line);
`ERRORS` is everything a call can raise, for the loops that retry.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

JSON = dict[str, Any]
TIMEOUT = 15.0  # seconds, per request
MERGE_PATCH = "application/merge-patch+json"
# What a call to the API server raises: its answer, or the transport's (refused, reset, timeout).
ERRORS: tuple[type[Exception], ...] = (ApiException, urllib3.exceptions.HTTPError, OSError)

__all__ = ["ERRORS", "JSON", "MERGE_PATCH", "ApiException", "Kube", "data", "message", "watch"]


class Kube:
    """The typed API groups the lab uses, over one connection pool, as one identity."""

    def __init__(self, server: str, ca: Path, cert: Path, key: Path, pool: int = 32) -> None:
        config = client.Configuration(host=server)
        config.ssl_ca_cert = str(ca)
        config.cert_file = str(cert)
        config.key_file = str(key)
        # The node agent: a watch per informer held open, plus a thread per pod reporting status.
        config.connection_pool_maxsize = pool
        self.api_client = client.ApiClient(config)
        self.core = client.CoreV1Api(self.api_client)
        self.discovery = client.DiscoveryV1Api(self.api_client)
        self.rbac = client.RbacAuthorizationV1Api(self.api_client)
        self.admission = client.AdmissionregistrationV1Api(self.api_client)

    @classmethod
    def as_user(cls, server: str, pki_dir: Path, user: str) -> Kube:
        """The identity `user` of the lab's PKI (`<user>.crt`/`.key` beside `ca.crt`)."""
        return cls(server, pki_dir / "ca.crt", pki_dir / f"{user}.crt", pki_dir / f"{user}.key")


def data(call: Callable[..., Any], *args: Any, timeout: float = TIMEOUT, **kwargs: Any) -> JSON:
    """`call(*args, **kwargs)` (a typed API method) answered as the API server's JSON."""
    resp = call(*args, _preload_content=False, _request_timeout=timeout, **kwargs)
    raw = resp.data
    return dict(json.loads(raw)) if raw else {}


def watch(list_call: Callable[..., Any], resource_version: str, timeout_seconds: int = 240) -> Iterator[JSON]:
    """Watch events (dicts with type/object) after `resource_version`, on a connection of its own."""
    resp = list_call(
        watch=True,
        resource_version=resource_version,
        allow_watch_bookmarks=True,
        timeout_seconds=timeout_seconds,
        _preload_content=False,
        _request_timeout=timeout_seconds + 30,
    )
    try:
        for line in iter_resp_lines(resp):
            if line.strip():
                yield dict(json.loads(line))
    finally:
        resp.close()
        resp.release_conn()


def message(err: BaseException) -> str:
    """One line: `HTTP 404: pods "x" not found` (the API server's own message when it sent one);
    any other error as its repr."""
    if not isinstance(err, ApiException):
        return repr(err)
    text = err.body or ""
    with contextlib.suppress(ValueError, AttributeError):  # not JSON, or not a Status object
        text = str(json.loads(text).get("message") or text)
    return f"HTTP {err.status}: {text.strip() or err.reason}"
