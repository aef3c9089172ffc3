"""The webhook's own API access (the `kubernetes` package): namespace labels, and Events on owners.

Neither ever stands in an admission's way. `NamespaceCache.labels()` answers from memory: a list
and a watch of namespaces kept by a background thread; a namespace it does not know (not synced
yet, or too new for the watch) costs one GET of at most FETCH_TIMEOUT_S; when that fails too (API
server slow or down) it is None, the pod is admitted with what is known, and no GET is tried for
FETCH_PAUSE_S. The name is the caller's word: one that cannot be a namespace costs no GET, and a
worker makes at most FETCH_RATE_PER_S GETs a second.
`EventRecorder.record()` only puts a notice on a bounded queue (full: dropped and counted); a
background thread turns notices into core/v1 Events on the pod's owner (Pod → ReplicaSet →
Deployment, through ownerReferences and one `get`), as Linkerd's `InjectionSkipped`, so that the
warning reaches whoever owns the workload instead of the ReplicaSet controller.

Floods are bounded: an Event's name is derived from (owner, reason, message), so every worker and
replica adds to the same Event's `count` (create; on AlreadyExists, get and patch); each worker
writes a given Event at most once per `min_interval_s`, counting repeats in between and adding them
with the next write. Under gunicorn's gevent workers both threads are greenlets.
RBAC (the chart's ClusterRole `kubectl-mesh-webhook`): get/list/watch namespaces, get replicasets,
create/get/patch events.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from kubectl_mesh.contract import EVENT_INJECTION_SKIPPED, EVENT_POD_SECURITY, NAMESPACE_NAME_PATTERN
from kubectl_mesh.log import Logger
from kubectl_mesh.ratelimit import TokenBucket
from webhook.admission import RESULT_ERROR, AdmissionRequest, Outcome

REQUEST_TIMEOUT_S = 5.0
FETCH_TIMEOUT_S = 0.5  # a namespace the cache does not know yet: one GET (a healthy server takes ms)
FETCH_PAUSE_S = 30.0  # after a failed GET, none for this long: a hung API server costs one admission 0.5 s
MAX_FETCHES = 8  # GETs in flight per worker; beyond, the admission goes on with what is known
# GETs a second per worker (as many at once): the namespace is the caller's word, and a caller naming
# random ones made one GET per admission (300/s). Legitimate misses are rare: a worker before its
# first list, a namespace created a moment before its first pod.
FETCH_RATE_PER_S = 20.0
WATCH_SECONDS = 240  # a watch is renewed this often (a relist after an error or a 410 Gone)
COMPONENT = "kubectl-mesh-webhook"
MAX_MESSAGE = 1024  # events.k8s.io's limit on a note; kept for core/v1 Events too
POD_SECURITY_MARKERS = ("Pod Security", "pod-security.kubernetes.io")

JSON = dict[str, Any]


def api_client() -> Any:
    """A `kubernetes.client.ApiClient`: in-cluster (the pod's service account token), else the
    kubeconfig named by $KUBECONFIG; None when there is neither (no API access: no cache, no Events)."""
    from kubernetes import client, config

    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:
        path = os.environ.get("KUBECONFIG", "")
        if not path:
            return None
        config.load_kube_config(config_file=path, client_configuration=configuration)
    configuration.retries = False  # a failed call is retried by our loops, never inside a request
    return client.ApiClient(configuration)


def _errors() -> tuple[type[BaseException], ...]:
    import urllib3
    from kubernetes.client.exceptions import ApiException

    return (ApiException, urllib3.exceptions.HTTPError, OSError, ValueError)


def _data(
    call: Callable[..., Any], *args: Any, request_timeout_s: float = REQUEST_TIMEOUT_S, **kwargs: Any
) -> JSON:
    """A typed API method's answer as the API server's JSON (no model round-trip)."""
    resp = call(*args, _preload_content=False, _request_timeout=request_timeout_s, **kwargs)
    raw = resp.data
    return dict(json.loads(raw)) if raw else {}


def _status(err: BaseException) -> int | None:
    status = getattr(err, "status", None)
    return status if isinstance(status, int) else None


def _message(err: BaseException) -> str:
    body = getattr(err, "body", None)
    if isinstance(body, str | bytes):
        with contextlib.suppress(ValueError, AttributeError):
            return f"HTTP {_status(err)}: {json.loads(body).get('message')}"
    return f"{type(err).__name__}: {err}"


# --- namespaces -------------------------------------------------------------------------------


class NamespaceCache:
    """Labels of every namespace, from a list and a watch; `labels()` reads memory, and waits for
    the network (one GET, at most FETCH_TIMEOUT_S) only for a namespace it does not know."""

    def __init__(self, api: Any, log: Logger, *, backoff_max_s: float = 30.0) -> None:
        self._api = api
        self._log = log
        self._labels: dict[str, dict[str, str]] = {}
        self._synced = threading.Event()
        self._backoff_max_s = backoff_max_s
        self._stop = threading.Event()
        self._fetches = threading.BoundedSemaphore(MAX_FETCHES)
        self._fetch_paused_until = 0.0
        self._fetch_rate = TokenBucket(FETCH_RATE_PER_S, FETCH_RATE_PER_S, time.monotonic())

    def labels(self, namespace: str | None) -> Mapping[str, str] | None:
        """The namespace's labels: from memory, else (not synced yet, or a namespace created a
        moment ago that the watch has not brought) one bounded GET. Without them, mesh-init would
        go into a namespace whose Pod Security level refuses it, and the API server would refuse
        the pod. None when the GET fails too: admit with what is known."""
        if not namespace:
            return None
        known = self._labels.get(namespace)
        return known if known is not None else self._fetch(namespace)

    def _fetch(self, namespace: str) -> Mapping[str, str] | None:
        # The name is the caller's word (/mutate is open to the cluster unless the chart is given
        # the API server's CIDRs): one the API server refuses (400, or 403 for a path such as
        # `kube-system/secrets`) would pause every GET, and a path would read another object.
        if not re.fullmatch(NAMESPACE_NAME_PATTERN, namespace):
            return None
        now = time.monotonic()
        if now < self._fetch_paused_until or not self._fetch_rate.take(now):
            return None
        if not self._fetches.acquire(blocking=False):
            self._fetch_rate.give_back()
            return None
        try:
            from kubernetes import client

            core = client.CoreV1Api(self._api)
            answer = _data(core.read_namespace, namespace, request_timeout_s=FETCH_TIMEOUT_S)
            meta = answer.get("metadata") or {}
            labels = dict(meta.get("labels") or {})
        except _errors() as err:
            if _status(err) != 404:
                self._fetch_paused_until = time.monotonic() + FETCH_PAUSE_S
                self._log.warning(
                    "namespace_fetch_failed", namespace=namespace, error=_message(err), pause_s=FETCH_PAUSE_S
                )
            return None
        finally:
            self._fetches.release()
        return self._labels.setdefault(namespace, labels)  # the watch's newer word wins

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    def wait_synced(self, timeout: float) -> bool:
        return self._synced.wait(timeout)

    def start(self) -> NamespaceCache:
        threading.Thread(target=self._run, name="mesh-namespace-cache", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        from kubernetes import client

        core = client.CoreV1Api(self._api)
        backoff = 1.0
        while not self._stop.is_set():
            try:
                version = self._list(core)
                backoff = 1.0
                for event in self._watch(core, version):
                    self._apply(event)
            except _errors() as err:
                self._log.warning("namespace_cache_error", error=_message(err), retry_s=backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self._backoff_max_s)

    def _list(self, core: Any) -> str:
        answer = _data(core.list_namespace)
        self._labels = {
            str(item["metadata"]["name"]): dict(item["metadata"].get("labels") or {})
            for item in answer.get("items") or []
        }
        self._synced.set()
        return str((answer.get("metadata") or {}).get("resourceVersion") or "")

    def _watch(self, core: Any, version: str) -> Iterator[JSON]:
        from kubernetes.watch.watch import iter_resp_lines

        resp = core.list_namespace(
            watch=True,
            resource_version=version,
            allow_watch_bookmarks=True,
            timeout_seconds=WATCH_SECONDS,
            _preload_content=False,
            _request_timeout=(REQUEST_TIMEOUT_S, WATCH_SECONDS + 30),
        )
        try:
            for line in iter_resp_lines(resp):
                if line.strip():
                    yield dict(json.loads(line))
        finally:
            resp.release_conn()

    def _apply(self, event: JSON) -> None:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":  # 410 Gone: the version is too old; relist
            raise ValueError(f"watch ended: {obj.get('message') or obj}")
        meta = obj.get("metadata") or {}
        name = meta.get("name")
        if not name or kind == "BOOKMARK":
            return
        if kind == "DELETED":
            self._labels.pop(name, None)
        else:
            self._labels[name] = dict(meta.get("labels") or {})


# --- events -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Notice:
    """What one admission has to tell the workload's owner."""

    namespace: str
    pod: str  # the pod's name, or its generateName when the API server has not named it yet
    owners: tuple[Mapping[str, Any], ...]  # the pod's ownerReferences
    reason: str  # EVENT_*
    message: str


def notices_for(req: AdmissionRequest, outcome: Outcome) -> list[Notice]:
    """The Events an admission calls for (pure): an injector error (the pod was admitted without
    the proxy), and each Pod Security warning the answer carries."""
    namespace = req.namespace
    if not namespace:
        return []
    obj = req.request.get("object")
    meta = obj.get("metadata") if isinstance(obj, Mapping) else None
    refs = meta.get("ownerReferences") if isinstance(meta, Mapping) else None
    owners = tuple(r for r in refs or () if isinstance(r, Mapping)) if isinstance(refs, list) else ()
    pod = req.pod_name
    out = []
    if outcome.result == RESULT_ERROR:
        kind = outcome.error.strip().rsplit("\n", 1)[-1].split(":", 1)[0] or "error"
        # No admission uid in it: the same failure of the same owner is one Event, counted.
        message = (
            f"pod {pod} admitted without the mesh proxy: injector error ({kind}); "
            "see the mesh-webhook log (event=injection_failed)"
        )
        out.append(Notice(namespace, pod, owners, EVENT_INJECTION_SKIPPED, message))
    warnings = (outcome.review.get("response") or {}).get("warnings") or []
    for warning in warnings:
        if any(marker in warning for marker in POD_SECURITY_MARKERS):
            out.append(Notice(namespace, pod, owners, EVENT_POD_SECURITY, f"pod {pod}: {warning}"))
    return out


@dataclass(frozen=True)
class Target:
    """The object an Event is about (`involvedObject`)."""

    api_version: str
    kind: str
    name: str
    uid: str = ""


def controller_of(owners: tuple[Mapping[str, Any], ...] | list[Any]) -> Target | None:
    """The controlling ownerReference (else the first one), as a Target."""
    refs = [r for r in owners if isinstance(r, Mapping) and r.get("kind") and r.get("name")]
    if not refs:
        return None
    ref = next((r for r in refs if r.get("controller")), refs[0])
    return Target(str(ref.get("apiVersion", "")), str(ref["kind"]), str(ref["name"]), str(ref.get("uid", "")))


def event_name(namespace: str, target: Target, reason: str, message: str) -> str:
    """One name per (owner, reason, message): every worker and replica counts into the same Event."""
    digest = hashlib.sha256("\0".join((namespace, target.kind, target.name, reason, message)).encode())
    return f"{target.name[:200]}.{digest.hexdigest()[:16]}"


def _timestamp(now: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))


def event_body(namespace: str, target: Target, notice: Notice, count: int, now: float, instance: str) -> JSON:
    """A core/v1 Event (type Warning) about `target`."""
    involved = {
        "apiVersion": target.api_version,
        "kind": target.kind,
        "name": target.name,
        "namespace": namespace,
    }
    if target.uid:
        involved["uid"] = target.uid
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "name": event_name(namespace, target, notice.reason, notice.message),
            "namespace": namespace,
        },
        "involvedObject": involved,
        "reason": notice.reason,
        "message": notice.message[:MAX_MESSAGE],
        "type": "Warning",
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": instance,
        "firstTimestamp": _timestamp(now),
        "lastTimestamp": _timestamp(now),
        "count": count,
    }


@dataclass
class _Seen:
    last_write: float
    pending: int = 0
    notice: Notice | None = None
    target: Target | None = None


class EventRecorder:
    """Records Notices as Events from a background thread; `record()` never blocks.

    `on_result(reason, result)` is told of each notice's fate (`recorded`, `merged` into a later
    write, `dropped` when the queue is full, `failed`), for the webhook's metrics."""

    def __init__(
        self,
        api: Any,
        log: Logger,
        *,
        instance: str = "",
        queue_size: int = 256,
        min_interval_s: float = 10.0,
        max_keys: int = 1024,
        on_result: Callable[[str, str], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._api = api
        self._log = log
        self._instance = instance or os.environ.get("HOSTNAME", "") or f"pid-{os.getpid()}"
        self._queue: queue.Queue[Notice] = queue.Queue(maxsize=queue_size)
        self._min_interval_s = min_interval_s
        self._max_keys = max_keys
        self._seen: OrderedDict[tuple[str, str, str, str, str], _Seen] = OrderedDict()
        self._owners: OrderedDict[tuple[str, str, str], Target] = OrderedDict()  # ReplicaSet -> its owner
        self._on_result = on_result or (lambda reason, result: None)
        self._clock = clock
        self._stop = threading.Event()

    def record(self, notice: Notice) -> bool:
        """Queue `notice`; False (and counted as dropped) when the queue is full."""
        try:
            self._queue.put_nowait(notice)
        except queue.Full:
            self._on_result(notice.reason, "dropped")
            return False
        return True

    def start(self) -> EventRecorder:
        threading.Thread(target=self._run, name="mesh-event-recorder", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        from kubernetes import client

        core, apps = client.CoreV1Api(self._api), client.AppsV1Api(self._api)
        while not self._stop.is_set():
            try:
                notice = self._queue.get(timeout=self._min_interval_s / 2)
            except queue.Empty:
                self._flush_due(core)
                continue
            try:
                self._handle(core, apps, notice)
            except Exception as err:  # never let one notice end the recorder
                self._on_result(notice.reason, "failed")
                self._log.warning(
                    "event_failed", namespace=notice.namespace, reason=notice.reason, error=_message(err)
                )
            self._flush_due(core)

    def _handle(self, core: Any, apps: Any, notice: Notice) -> None:
        target = self._target(apps, notice)
        key = (notice.namespace, target.kind, target.name, notice.reason, notice.message)
        now = self._clock()
        seen = self._seen.get(key)
        if seen is not None and now - seen.last_write < self._min_interval_s:
            seen.pending += 1
            seen.notice, seen.target = notice, target
            self._on_result(notice.reason, "merged")
            return
        self._write(core, notice, target, 1)
        self._remember(key, _Seen(now))

    def _flush_due(self, core: Any) -> None:
        now = self._clock()
        for seen in list(self._seen.values()):
            if seen.pending and seen.notice and seen.target and now - seen.last_write >= self._min_interval_s:
                count, seen.pending, seen.last_write = seen.pending, 0, now
                try:
                    self._write(core, seen.notice, seen.target, count)
                except Exception as err:
                    self._log.warning("event_failed", namespace=seen.notice.namespace, error=_message(err))

    def _remember(self, key: tuple[str, str, str, str, str], seen: _Seen) -> None:
        self._seen[key] = seen
        self._seen.move_to_end(key)
        while len(self._seen) > self._max_keys:
            self._seen.popitem(last=False)

    def _write(self, core: Any, notice: Notice, target: Target, count: int) -> None:
        """Create the Event, or add `count` to the one another worker or replica made."""
        from kubernetes.client.exceptions import ApiException

        now = self._clock()
        body = event_body(notice.namespace, target, notice, count, now, self._instance)
        name = body["metadata"]["name"]
        try:
            _data(core.create_namespaced_event, notice.namespace, body)
        except ApiException as err:
            if err.status != 409:
                raise
            current = _data(core.read_namespaced_event, name, notice.namespace)
            patch = {"count": int(current.get("count") or 1) + count, "lastTimestamp": _timestamp(now)}
            _data(core.patch_namespaced_event, name, notice.namespace, patch)
        self._on_result(notice.reason, "recorded")

    def _target(self, apps: Any, notice: Notice) -> Target:
        """The pod's owner; a ReplicaSet's own controller (a Deployment) when it has one."""
        owner = controller_of(notice.owners)
        if owner is None:
            return Target("v1", "Pod", notice.pod)
        if owner.kind != "ReplicaSet":
            return owner
        key = (notice.namespace, owner.name, owner.uid)
        cached = self._owners.get(key)
        if cached is not None:
            return cached
        try:
            rs = _data(apps.read_namespaced_replica_set, owner.name, notice.namespace)
        except _errors() as err:
            if _status(err) not in (403, 404):
                raise
            return owner  # not readable: the ReplicaSet itself is the best owner known
        found = controller_of(list((rs.get("metadata") or {}).get("ownerReferences") or [])) or owner
        self._owners[key] = found
        while len(self._owners) > self._max_keys:
            self._owners.popitem(last=False)
        return found


# --- the app's hook ---------------------------------------------------------------------------


class KubeAccess:
    """What the app uses: the namespace cache and the event recorder, or neither without API access."""

    def __init__(self, log: Logger, namespaces: NamespaceCache | None, events: EventRecorder | None) -> None:
        self.log = log
        self.namespaces = namespaces
        self.events = events

    def namespace_labels(self, namespace: str | None) -> Mapping[str, str] | None:
        return self.namespaces.labels(namespace) if self.namespaces is not None else None

    def after_review(self, req: AdmissionRequest, outcome: Outcome) -> None:
        """Queue the Events this admission calls for; never blocks, never raises."""
        if self.events is None:
            return
        try:
            for notice in notices_for(req, outcome):
                self.events.record(notice)
        except Exception as err:  # a malformed request must not cost the admission its answer
            self.log.warning("event_notice_failed", uid=req.uid, error=f"{type(err).__name__}: {err}")


def start(log: Logger, on_event: Callable[[str, str], None] | None = None) -> KubeAccess:
    """Connect and start both background threads, or a KubeAccess that does nothing when the
    webhook has no API access (no service account token, no $KUBECONFIG)."""
    try:
        api = api_client()
    except Exception as err:  # a broken kubeconfig must not stop the webhook: it still injects
        log.warning("kube_access_disabled", error=f"{type(err).__name__}: {err}")
        return KubeAccess(log, None, None)
    if api is None:
        log.info("kube_access_disabled", why="no service account token and no KUBECONFIG")
        return KubeAccess(log, None, None)
    return KubeAccess(
        log, NamespaceCache(api, log).start(), EventRecorder(api, log, on_result=on_event).start()
    )
