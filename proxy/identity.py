"""Workload identity: who this proxy speaks for, and how peers are named in headers and labels.

Pure. The value format is the contract's `<namespace>/<kind>/<name>/<pod>` (see
kubectl_mesh/contract.py, SRC_HEADER/DST_HEADER). A value that does not parse is treated as
absent: an unmeshed or misbehaving peer shows up with `authority` only, never with made-up labels.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from kubectl_mesh.contract import WORKLOAD_KINDS

# A Kubernetes name: DNS-1123 subdomain (namespaces and pods are stricter, this is the union).
_NAME = re.compile(rb"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?\Z")
_KINDS = frozenset(k.encode() for k in WORKLOAD_KINDS)

Labels = tuple[tuple[str, str], ...]
# The longest well-formed value: three 253-byte names, the longest kind and three slashes.
MAX_IDENTITY_BYTES = 3 * 253 + len("statefulset") + 3
NO_LABELS: Labels = ()


@dataclass(frozen=True)
class Identity:
    """The proxy's own pod, namespace and owning workload (from the downward API)."""

    namespace: str
    kind: str
    name: str
    pod: str

    def header_value(self) -> bytes:
        return f"{self.namespace}/{self.kind}/{self.name}/{self.pod}".encode()


def identity_from_parts(namespace: str, kind: str, name: str, pod: str) -> Identity | None:
    """The identity if every part is present and valid, else None (the proxy then sends no header)."""
    if not (namespace and kind and name and pod):
        return None
    value = f"{namespace}/{kind.lower()}/{name}/{pod}".encode()
    if parse_identity(value) is None:
        return None
    return Identity(namespace, kind.lower(), name, pod)


def parse_identity(value: bytes) -> tuple[str, str, str, str] | None:
    """`ns/kind/name/pod` → its four parts, or None when malformed."""
    parts = value.strip().split(b"/")
    if len(parts) != 4:
        return None
    ns, kind, name, pod = parts
    kind = kind.lower()
    if kind not in _KINDS:
        return None
    for part in (ns, name, pod):
        if not _NAME.match(part):
            return None
    return ns.decode(), kind.decode(), name.decode(), pod.decode()


def peer_labels(prefix: str, value: bytes | None) -> Labels:
    """Metric labels naming a peer, e.g. prefix "dst" → dst_namespace, dst_deployment, dst_pod."""
    if not value:
        return NO_LABELS
    parsed = parse_identity(value)
    if parsed is None:
        return NO_LABELS
    ns, kind, name, pod = parsed
    return ((f"{prefix}_namespace", ns), (f"{prefix}_{kind}", name), (f"{prefix}_pod", pod))


class PeerLabelCache:
    """Header value → labels, memoised: every request of a peer carries the same value.

    Only values that could be well formed are kept, so the memo stays small whatever peers send.
    """

    def __init__(self, prefix: str, max_entries: int = 4096) -> None:
        self._prefix = prefix
        self._max = max_entries
        self._cache: dict[bytes, Labels] = {}

    def get(self, value: bytes | None) -> Labels:
        if not value:
            return NO_LABELS
        labels = self._cache.get(value)
        if labels is None:
            labels = peer_labels(self._prefix, value)
            if len(value) > MAX_IDENTITY_BYTES:
                return labels
            if len(self._cache) >= self._max:
                self._cache.clear()
            self._cache[value] = labels
        return labels
