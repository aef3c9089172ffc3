"""The data of `kubectl mesh stat`: what is asked (StatRequest), what is known about the objects
(Workload), and what is shown (StatRow). Pure: no I/O, no heavy imports.

Parsing helpers here turn the user's words (`deploy`, `po/web-1`, `-t 1m`) into canonical values
and raise `StatInputError` (a ValueError) with a one-line message the CLI prints as is.

Kinds are canonical Kubernetes kinds in lower case, the same words the metrics use:
`deployment`, `pod`, `namespace`, `statefulset`, `daemonset`, `job`, `replicaset`. A request
of kind `all` covers every workload kind in `ALL_KINDS` (not namespaces).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from kubectl_mesh.contract import SCRAPE_INTERVAL
from kubectl_mesh.errors import MeshError


class StatInputError(MeshError):
    """Bad user input to `stat`: the message is one line, shown to the user as is."""


# Every accepted spelling -> canonical kind.
KIND_ALIASES: dict[str, str] = {}
for _canonical, _spellings in {
    "deployment": ("deploy", "deployment", "deployments"),
    "pod": ("po", "pod", "pods"),
    "namespace": ("ns", "namespace", "namespaces"),
    "statefulset": ("sts", "statefulset", "statefulsets"),
    "daemonset": ("ds", "daemonset", "daemonsets"),
    "job": ("job", "jobs"),
    "replicaset": ("rs", "replicaset", "replicasets"),
    "all": ("all",),
}.items():
    for _s in _spellings:
        KIND_ALIASES[_s] = _canonical

# The short names used to prefix rows when several kinds share one output (`deploy/web`).
SHORT_NAMES = {
    "deployment": "deploy",
    "pod": "po",
    "namespace": "ns",
    "statefulset": "sts",
    "daemonset": "ds",
    "job": "job",
    "replicaset": "rs",
}
# What `all` expands to, in the order its tables are printed (as linkerd's `stat all`).
ALL_KINDS = ("daemonset", "statefulset", "job", "deployment", "pod", "replicaset")
OUTPUT_FORMATS = ("table", "wide", "json", "yaml")

_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_DURATION_RE = re.compile(r"^(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?$")
_DURATION_UNITS = (365 * 86400, 7 * 86400, 86400, 3600, 60, 1, 0.001)


@dataclass(frozen=True)
class ResourceRef:
    """One object named by `--to`/`--from`: `deploy/web` in namespace `emojivoto`."""

    kind: str
    name: str
    namespace: str | None = None  # None for kind "namespace"


@dataclass(frozen=True)
class StatRequest:
    """What the user asked `stat` for, validated and canonical.

    `namespace` is the namespace the rows live in (ignored when `all_namespaces`);
    `to`/`from_` carry their own namespace (`--to-namespace`, default: `namespace`).
    """

    kind: str
    names: tuple[str, ...] = ()
    namespace: str = "default"
    all_namespaces: bool = False
    to: ResourceRef | None = None
    from_: ResourceRef | None = None
    window: str = "1m"
    unmeshed: bool = False
    output: str = "table"
    selector: str | None = None

    @property
    def window_seconds(self) -> float:
        return duration_seconds(self.window)

    @property
    def mode(self) -> str:
        """`inbound` (no filter), `to` or `from`."""
        if self.to is not None:
            return "to"
        if self.from_ is not None:
            return "from"
        return "inbound"

    def kinds(self) -> tuple[str, ...]:
        return ALL_KINDS if self.kind == "all" else (self.kind,)

    def for_kind(self, kind: str) -> StatRequest:
        """The same request for one concrete kind (names only apply to a single kind)."""
        return replace(self, kind=kind)


@dataclass(frozen=True)
class Workload:
    """A Kubernetes object that rows are about, and its pods: `meshed` of `running` pods carry
    the proxy. For a pod, running is 1 or 0; for a namespace, all its running pods count."""

    namespace: str
    kind: str
    name: str
    meshed: int
    running: int


@dataclass
class StatRow:
    """One row of the table. Every metric is None when unknown (no traffic): shown as `-` in a
    table and `null` in JSON/YAML, never as 0, NaN or an overflowed integer."""

    namespace: str
    kind: str
    name: str
    meshed: int | None = None  # meshed running pods; None when the object is not known to Kubernetes
    running: int | None = None
    success: float | None = None  # 0..1
    rps: float | None = None
    latency_ms_p50: float | None = None
    latency_ms_p95: float | None = None
    latency_ms_p99: float | None = None
    tcp_open_connections: float | None = None
    tcp_read_bytes_rate: float | None = None
    tcp_write_bytes_rate: float | None = None
    requests: int | None = field(default=None, repr=False)  # rounded count over the window

    def to_dict(self) -> dict[str, object]:
        return {
            "namespace": self.namespace,
            "kind": self.kind,
            "name": self.name,
            "meshed": self.meshed,
            "running": self.running,
            "success": self.success,
            "rps": self.rps,
            "latency_ms_p50": self.latency_ms_p50,
            "latency_ms_p95": self.latency_ms_p95,
            "latency_ms_p99": self.latency_ms_p99,
            "tcp_open_connections": self.tcp_open_connections,
            "tcp_read_bytes_rate": self.tcp_read_bytes_rate,
            "tcp_write_bytes_rate": self.tcp_write_bytes_rate,
        }


# --- parsing the user's words --------------------------------------------------------------


def canonical_kind(word: str) -> str:
    kind = KIND_ALIASES.get(word.lower())
    if kind is None:
        known = "deploy, po, ns, sts, ds, job, rs, all"
        raise StatInputError(f'unknown resource type "{word}"; expected one of: {known}')
    return kind


def check_name(name: str) -> str:
    if not _NAME_RE.match(name) or len(name) > 253:
        raise StatInputError(f'"{name}" is not a valid Kubernetes object name')
    return name


def parse_resources(words: list[str]) -> tuple[str, tuple[str, ...]]:
    """`TYPE`, `TYPE NAME…` or `TYPE/NAME…` -> (kind, names)."""
    if not words:
        raise StatInputError("name a resource type, e.g. `kubectl mesh stat deploy` (see --help)")
    if "/" in words[0]:
        kinds: set[str] = set()
        names: list[str] = []
        for word in words:
            kind_word, sep, name = word.partition("/")
            if not sep or not name:
                raise StatInputError(f'"{word}": mix of TYPE/NAME and plain names; use one form')
            kinds.add(canonical_kind(kind_word))
            names.append(check_name(name))
        if len(kinds) > 1:
            raise StatInputError("TYPE/NAME arguments must all be of one type")
        kind = kinds.pop()
    else:
        kind = canonical_kind(words[0])
        names = [check_name(n) for n in words[1:]]
    if kind == "all" and names:
        raise StatInputError('"all" takes no names')
    return kind, tuple(names)


def parse_ref(value: str, flag: str) -> tuple[str, str]:
    """`TYPE/NAME`, or a bare NAME meaning a deployment (Conduit's `--from web`)."""
    kind_word, sep, name = value.partition("/")
    if not sep:
        kind_word, name = "deploy", value
    kind = canonical_kind(kind_word)
    if kind == "all":
        raise StatInputError(f'{flag} takes one object (TYPE/NAME), not "all"')
    return kind, check_name(name)


def duration_seconds(text: str) -> float:
    match = _DURATION_RE.match(text)
    if not text or not match or not any(match.groups()):
        raise StatInputError(f'"{text}" is not a duration; use e.g. 30s, 1m, 10m, 1h')
    return sum(int(g) * unit for g, unit in zip(match.groups(), _DURATION_UNITS, strict=True) if g)


def build_request(
    *,
    resources: list[str],
    namespace: str,
    namespace_given: bool,
    all_namespaces: bool = False,
    to: str | None = None,
    to_namespace: str | None = None,
    from_: str | None = None,
    from_namespace: str | None = None,
    window: str = "1m",
    unmeshed: bool = False,
    output: str = "table",
    selector: str | None = None,
) -> StatRequest:
    """Validate the flags together (mutual exclusions, the time window) and build a request.

    `namespace` is the -n value or the context's namespace; `namespace_given` says whether the
    user typed -n (it conflicts with -A and with the namespace kind).
    """
    kind, names = parse_resources(resources)
    if to and from_:
        raise StatInputError("--to and --from cannot be used together")
    if to_namespace and from_namespace:
        raise StatInputError("--to-namespace and --from-namespace cannot be used together")
    if to_namespace and not to:
        raise StatInputError("--to-namespace needs --to")
    if from_namespace and not from_:
        raise StatInputError("--from-namespace needs --from")
    if all_namespaces and namespace_given:
        raise StatInputError("-A/--all-namespaces and -n/--namespace cannot be used together")
    if kind == "namespace" and namespace_given:
        raise StatInputError("-n/--namespace cannot be used with namespaces: they are not namespaced")
    if output not in OUTPUT_FORMATS:
        raise StatInputError(
            f'unknown output format "{output}"; expected one of: {", ".join(OUTPUT_FORMATS)}'
        )
    seconds = duration_seconds(window)
    scrape = duration_seconds(SCRAPE_INTERVAL)
    if seconds <= scrape:
        raise StatInputError(
            f"time window {window} must be longer than the {SCRAPE_INTERVAL} scrape interval "
            f"(Prometheus needs two samples in it); use e.g. -t 30s or -t 1m"
        )
    for value in (namespace, to_namespace, from_namespace):
        if value:
            check_name(value)

    def ref(value: str | None, ref_namespace: str | None, flag: str) -> ResourceRef | None:
        if value is None:
            return None
        ref_kind, ref_name = parse_ref(value, flag)
        if ref_kind == "namespace":
            if ref_namespace:
                raise StatInputError(f"{flag}-namespace cannot be used when {flag} is a namespace")
            return ResourceRef(kind="namespace", name=ref_name)
        return ResourceRef(kind=ref_kind, name=ref_name, namespace=ref_namespace or namespace)

    return StatRequest(
        kind=kind,
        names=names,
        namespace=namespace,
        all_namespaces=all_namespaces or kind == "namespace",
        to=ref(to, to_namespace, "--to"),
        from_=ref(from_, from_namespace, "--from"),
        window=window,
        unmeshed=unmeshed,
        output=output,
        selector=selector,
    )
