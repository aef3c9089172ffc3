"""The injector: (pod, namespace, namespace labels, mesh config) -> decision and mutated pod.

Pure and I/O-free, shared by the admission webhook and `kubectl mesh inject`. The caller turns
the result into a JSONPatch with `make_patch(original, mutated)` (the RFC 6902 diff), never
with hand-built paths: hand-built patches are where injectors break (adding under a missing
annotations map, unescaped '/' in label keys, replacing whole arrays).

The input pod is never modified: the mutated pod shares untouched sub-objects with it, and
every level on the way to a change is copied.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jsonpatch

from kubectl_mesh import contract as c
from kubectl_mesh import nesting
from kubectl_mesh.errors import MeshError
from kubectl_mesh.inject import guards, shared
from kubectl_mesh.inject.config import MeshConfig, _plain
from kubectl_mesh.inject.podresources import with_mesh_share
from kubectl_mesh.portlist import NO_PORTS, PortList

__all__ = [
    "SKIP_REASONS",
    "Decision",
    "Workload",
    "inject_pod",
    "is_injected",
    "make_patch",
    "uninject_pod",
    "workload_of",
]

Pod = dict[str, Any]

XTABLES_LOCK_VOLUME = "mesh-init-xtables-lock"  # iptables' lock dir; the init step's rootfs is read-only
POD_TEMPLATE_HASH_LABEL = "pod-template-hash"

# Skip reasons: stable codes used as the `reason` metric label and in reports.
SKIP_SYSTEM_NAMESPACE = "system-namespace"
SKIP_ALREADY_INJECTED = "already-injected"
SKIP_OTHER_MESH = "other-mesh"
SKIP_INVALID_LABEL = "invalid-label"
SKIP_OPTED_OUT = "opted-out"
SKIP_NOT_OPTED_IN = "not-opted-in"
SKIP_HOST_NETWORK = "host-network"
SKIP_INVALID_ANNOTATION = "invalid-annotation"
SKIP_WINDOWS = "windows"
SKIP_PORT_CONFLICT = "port-conflict"
SKIP_PROXY_UID = "proxy-uid"
SKIP_POD_SECURITY = "pod-security"
SKIP_INVALID_RESOURCES = "invalid-resources"
SKIP_REASONS = (
    SKIP_SYSTEM_NAMESPACE,
    SKIP_ALREADY_INJECTED,
    SKIP_OTHER_MESH,
    SKIP_INVALID_LABEL,
    SKIP_OPTED_OUT,
    SKIP_NOT_OPTED_IN,
    SKIP_HOST_NETWORK,
    SKIP_INVALID_ANNOTATION,
    SKIP_WINDOWS,
    SKIP_PORT_CONFLICT,
    SKIP_PROXY_UID,
    SKIP_POD_SECURITY,
    SKIP_INVALID_RESOURCES,
)

_CRONJOB_JOB_NAME = re.compile(r"(.+)-([0-9]{8})")
_FIRST_SCHEDULED_MINUTE = 25_000_000  # 2017-07-14; 8 digits last until the year 2160
_OWNER_KINDS = {
    "StatefulSet": "statefulset",
    "DaemonSet": "daemonset",
    "Job": "job",
    "CronJob": "cronjob",
    "Deployment": "deployment",
    "ReplicationController": "replicationcontroller",
}


@dataclass(frozen=True)
class Workload:
    """The owning workload, as the proxy reports it (`MESH_WORKLOAD_KIND`/`_NAME`)."""

    kind: str  # one of contract.WORKLOAD_KINDS
    name: str


@dataclass(frozen=True)
class Decision:
    injected: bool
    pod: Pod  # the mutated pod when injected, else the input pod itself
    reason: str = ""  # a SKIP_* code when skipped
    message: str = ""  # one line for humans: why it was skipped
    warnings: tuple[str, ...] = ()  # one line each: injected, but something the user should know

    @property
    def skipped(self) -> bool:
        return not self.injected


def make_patch(original: Pod, mutated: Pod) -> list[dict[str, Any]]:
    """The RFC 6902 JSONPatch turning `original` into `mutated`, computed by `jsonpatch`.

    Two reductions keep the diff to what changed (~5x faster on a typical pod) without
    changing which operations and paths jsonpatch produces:
    - sub-objects the mutation did not touch are shared (the same object) by both pods, so they
      are left out of both sides (jsonpatch recurses into a dict that is a dict on both sides
      and never replaces it whole, so keys left out of both stay untouched);
    - objects that exist only in `mutated` (the added containers), and list items both sides
      hold, are diffed as opaque tokens and put back into the operations' values afterwards:
      jsonpatch would only copy and compare them.
    """
    tokens: dict[str, Any] = {"": _TOKEN_PREFIX + os.urandom(8).hex()}  # a nonce no pod can contain
    left, right = _reduce(original, mutated, tokens)
    patch = jsonpatch.make_patch(left, right)
    return [_untokenize(op, tokens) for op in patch]


_TOKEN_PREFIX = "\x00kubectl-mesh-opaque-"


def _reduce(a: Any, b: Any, tokens: dict[str, Any]) -> tuple[Any, Any]:
    if isinstance(a, dict) and isinstance(b, dict):
        left: dict[str, Any] = {}
        right: dict[str, Any] = {}
        for key, value in a.items():
            if key not in b:
                left[key] = value
            elif b[key] is not value:
                left[key], right[key] = _reduce(value, b[key], tokens)
        for key, value in b.items():
            if key not in a:
                right[key] = _opaque(value, tokens)
        return left, right
    if isinstance(a, list) and isinstance(b, list):
        # Items are compared by position: an item both lists hold (the same object) becomes one
        # token on both sides, an item only `b` holds its own token.
        shared: dict[int, Any] = {}
        left_items = []
        for x in a:
            shared[id(x)] = _opaque(x, tokens)
            left_items.append(shared[id(x)])
        return left_items, [shared[id(x)] if id(x) in shared else _opaque(x, tokens) for x in b]
    return a, b


def _opaque(value: Any, tokens: dict[str, Any]) -> Any:
    if not isinstance(value, dict | list) or not value:
        return value
    token = f"{tokens['']}-{len(tokens)}"
    tokens[token] = value
    return token


def _untokenize(value: Any, tokens: dict[str, Any]) -> Any:
    if isinstance(value, str):
        return tokens.get(value, value) if value and value.startswith(tokens[""]) else value
    if isinstance(value, dict):
        return {k: _untokenize(v, tokens) for k, v in value.items()}
    if isinstance(value, list):
        return [_untokenize(v, tokens) for v in value]
    return value


def is_injected(pod: Mapping[str, Any]) -> bool:
    """True when the pod already carries the proxy or the init step (by container name)."""
    names = guards.container_names(pod)
    return c.PROXY_CONTAINER_NAME in names or c.INIT_CONTAINER_NAME in names


def workload_of(pod: Mapping[str, Any]) -> Workload:
    """The workload owning a pod, from its controller ownerReference.

    A ReplicaSet named `<deployment>-<pod-template-hash>` belongs to a Deployment (the hash is
    the pod's `pod-template-hash` label). A Job named `<cronjob>-<8 digits>` belongs to a CronJob
    when the number is a plausible scheduled minute: the CronJob controller names its Jobs after
    the scheduled time in minutes since the epoch, and the pod names the CronJob nowhere else.
    Istio and Cilium take any 8-10 digits; requiring a minute after mid-2017 keeps a hand-made
    `backup-20250101` a Job (no API lookup: the injector stays pure). A pod without a known owner
    is its own workload.
    """
    meta = _mapping(pod.get("metadata"))
    owners = [o for o in meta.get("ownerReferences") or [] if isinstance(o, Mapping)]
    owner = next((o for o in owners if o.get("controller") is True), owners[0] if owners else None)
    if owner is not None and isinstance(owner.get("name"), str) and owner["name"]:
        kind, name = owner.get("kind"), owner["name"]
        if kind == "ReplicaSet":
            pod_hash = _mapping(meta.get("labels")).get(POD_TEMPLATE_HASH_LABEL)
            if isinstance(pod_hash, str) and pod_hash and name.endswith(f"-{pod_hash}"):
                return Workload("deployment", name[: -len(pod_hash) - 1])
            return Workload("replicaset", name)
        scheduled = _CRONJOB_JOB_NAME.fullmatch(name) if kind == "Job" else None
        if scheduled and int(scheduled.group(2)) >= _FIRST_SCHEDULED_MINUTE:
            return Workload("cronjob", scheduled.group(1))
        if kind in _OWNER_KINDS:
            return Workload(_OWNER_KINDS[kind], name)
    name = meta.get("name") or str(meta.get("generateName") or "").rstrip("-.") or "unknown"
    return Workload("pod", str(name))


def inject_pod(
    pod: Pod,
    namespace: str | None,
    namespace_labels: Mapping[str, str] | None,
    config: MeshConfig,
    *,
    workload: Workload | None = None,
    injected_by: str = "kubectl-mesh",
    explicit: bool = False,
) -> Decision:
    """Decide whether `pod` joins the mesh and, if so, return it with the proxy added.

    `namespace_labels` is what the caller knows of the namespace (None: nothing). Without them the
    opt-in is taken as vouched for (the webhook configuration's selectors only send opted-in
    pods); with them the opt-in labels are checked, unless `explicit` (`kubectl mesh inject` is
    an explicit request), and their Pod Security levels and other meshes' marks count either way.
    `workload` overrides the owner derived from ownerReferences (pod templates have none).
    """
    meta = _mapping(pod.get("metadata"))
    spec = _mapping(pod.get("spec"))
    labels = _mapping(meta.get("labels"))
    annotations = _mapping(meta.get("annotations"))

    never = c.NEVER_INJECT_NAMESPACES | {config.control_plane_namespace}
    if namespace in never:
        return _skip(pod, SKIP_SYSTEM_NAMESPACE, f"namespace {namespace} is never injected")
    if is_injected(pod):
        return _skip(pod, SKIP_ALREADY_INJECTED, "pod already has the mesh proxy")
    pod_opt = labels.get(c.INJECT_LABEL)
    if pod_opt is not None and pod_opt not in (c.INJECT_ENABLED, c.INJECT_DISABLED):
        return _skip(pod, SKIP_INVALID_LABEL, f"pod label {c.INJECT_LABEL}={pod_opt} is not enabled|disabled")
    if pod_opt == c.INJECT_DISABLED:
        return _skip(pod, SKIP_OPTED_OUT, f"pod label {c.INJECT_LABEL}=disabled")
    if namespace_labels is not None and not explicit:
        ns_opt = namespace_labels.get(c.INJECT_LABEL)
        if ns_opt is not None and ns_opt not in (c.INJECT_ENABLED, c.INJECT_DISABLED):
            return _skip(
                pod, SKIP_INVALID_LABEL, f"namespace label {c.INJECT_LABEL}={ns_opt} is not enabled|disabled"
            )
        if not (ns_opt == c.INJECT_ENABLED or (ns_opt is None and pod_opt == c.INJECT_ENABLED)):
            return _skip(pod, SKIP_NOT_OPTED_IN, f"neither namespace nor pod has {c.INJECT_LABEL}=enabled")
    reason = _refusal(pod, spec, namespace_labels)
    if reason is not None:
        return _skip(pod, *reason)

    try:
        ports = _ports_for(annotations, config)
    except ValueError as exc:
        return _skip(pod, SKIP_INVALID_ANNOTATION, str(exc))

    owner = workload or workload_of(pod)
    try:
        mutated = _mutate(pod, namespace, owner, ports, config, injected_by)
    except ValueError as exc:
        return _skip(pod, SKIP_INVALID_RESOURCES, f"spec.resources: {exc}")
    return Decision(True, mutated, warnings=tuple(guards.pod_security_warnings(namespace_labels)))


def _refusal(
    pod: Pod, spec: Mapping[str, Any], namespace_labels: Mapping[str, str] | None
) -> tuple[str, str] | None:
    """The first guard that refuses the pod: (skip reason, message), or None."""
    if spec.get("hostNetwork") is True:
        return SKIP_HOST_NETWORK, "pod uses hostNetwork"
    checks = (
        (SKIP_OTHER_MESH, lambda: guards.other_mesh(pod, namespace_labels)),
        (SKIP_WINDOWS, lambda: guards.windows(spec)),
        (SKIP_PORT_CONFLICT, lambda: guards.port_conflict(spec)),
        (SKIP_PROXY_UID, lambda: guards.proxy_uid(spec)),
        (SKIP_POD_SECURITY, lambda: guards.pod_security_refuses(namespace_labels)),
    )
    for reason, check in checks:
        message = check()
        if message is not None:
            return reason, message
    return None


def uninject_pod(pod: Pod) -> tuple[Pod, bool]:
    """Remove exactly what `inject_pod` added, and put back what it changed; (pod, whether changed).

    What the removal alone cannot tell (a map or list that was empty or null rather than absent,
    a template without metadata, the pod-level resources before the proxy's share) comes back
    from the restore annotation the injector left.
    """
    if not is_injected(pod) and not _has_mesh_metadata(pod):
        return pod, False
    meta = dict(_mapping(pod.get("metadata")))
    restore = _read_restore(_mapping(meta.get("annotations")).get(c.RESTORE_ANNOTATION))
    was = _mapping(restore.get("was"))
    labels = {k: v for k, v in _mapping(meta.get("labels")).items() if k not in _INJECTED_LABELS}
    annotations = {
        k: v for k, v in _mapping(meta.get("annotations")).items() if k not in _INJECTED_ANNOTATIONS
    }
    _put_back(meta, "labels", labels, was)
    _put_back(meta, "annotations", annotations, was)
    out = dict(pod)
    if meta or not ("metadata" in was or "metadata" in restore.get("absent", ())):
        out["metadata"] = meta
    elif "metadata" in was:
        out["metadata"] = was["metadata"]
    else:
        out.pop("metadata", None)

    spec = dict(_mapping(pod.get("spec")))
    lock_volumes = _lock_volumes(spec)
    mesh_names = {c.INIT_CONTAINER_NAME, c.PROXY_CONTAINER_NAME}
    inits = [x for x in _list(spec, "initContainers") if _name(x) not in mesh_names]
    containers = [x for x in _list(spec, "containers") if _name(x) != c.PROXY_CONTAINER_NAME]
    volumes = [v for v in _list(spec, "volumes") if _name(v) not in lock_volumes]
    _put_back(spec, "initContainers", inits, was)
    if "containers" in spec:
        spec["containers"] = containers
    _put_back(spec, "volumes", volumes, was)
    if "resources" in was:
        spec["resources"] = was["resources"]
    out["spec"] = spec
    return out, True


# --- the mutation ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Ports:
    inbound_ignore: str
    outbound_ignore: str
    opaque: str


_DEFAULT_INBOUND_IGNORE = PortList.of(c.DEFAULT_INBOUND_PORTS_TO_IGNORE)


def _ports_for(annotations: Mapping[str, Any], config: MeshConfig) -> _Ports:
    def annotation(key: str) -> PortList:
        value = annotations.get(key)
        if value is None:
            return NO_PORTS
        try:
            return PortList.parse(str(value))
        except ValueError as exc:
            raise ValueError(f"annotation {key}: {exc}") from None

    inbound = _DEFAULT_INBOUND_IGNORE | config.skip_inbound_ports
    inbound |= annotation(c.SKIP_INBOUND_PORTS_ANNOTATION)
    outbound = config.skip_outbound_ports | annotation(c.SKIP_OUTBOUND_PORTS_ANNOTATION)
    if c.OPAQUE_PORTS_ANNOTATION in annotations:
        opaque = annotation(c.OPAQUE_PORTS_ANNOTATION)
    else:
        opaque = config.opaque_ports
    return _Ports(str(inbound), str(outbound), str(opaque))


def _mutate(
    pod: Pod, namespace: str | None, owner: Workload, ports: _Ports, config: MeshConfig, injected_by: str
) -> Pod:
    out = dict(pod)
    restore: dict[str, Any] = {}
    meta = dict(_mapping(pod.get("metadata")))
    spec = dict(_mapping(pod.get("spec")))
    was = _shapes(meta, ("labels", "annotations")) | _shapes(spec, ("initContainers", "volumes"))
    if "metadata" not in pod:
        restore["absent"] = ["metadata"]
    elif not isinstance(pod["metadata"], Mapping):
        was["metadata"] = pod["metadata"]

    labels = dict(_mapping(meta.get("labels")))
    labels[c.PROXY_WORKLOAD_LABEL_PREFIX + owner.kind] = label_value(owner.name)
    labels[c.CONTROL_PLANE_NS_LABEL] = config.control_plane_namespace
    if namespace:
        labels[c.WORKLOAD_NS_LABEL] = label_value(namespace)
    annotations = dict(_mapping(meta.get("annotations")))
    annotations[c.PROXY_VERSION_ANNOTATION] = config.proxy_version
    annotations[c.INJECTED_BY_ANNOTATION] = injected_by

    user_inits = _list(spec, "initContainers")
    volumes = _list(spec, "volumes")
    lock = _free_volume_name({_name(v) for v in volumes})
    proxy = _proxy_container(owner, ports, config)
    init = shared.part(("init", config.identity, ports.inbound_ignore, ports.outbound_ignore, lock),
                       lambda: _init_container(ports, config, lock))  # fmt: skip
    if config.native_sidecar:
        spec["initContainers"] = [init, proxy, *user_inits]
    else:
        spec["initContainers"] = [init, *user_inits]
        spec["containers"] = [proxy, *_list(spec, "containers")]
    spec["volumes"] = [*volumes, shared.part(("volume", lock), lambda: {"name": lock, "emptyDir": {}})]
    pod_resources = spec.get("resources")
    if isinstance(pod_resources, Mapping) and pod_resources:
        grown = with_mesh_share(pod_resources, config.proxy_resources, config.init_resources)
        if grown != pod_resources:
            was["resources"] = pod_resources
            spec["resources"] = grown

    if was:
        restore["was"] = was
    if restore:
        annotations[c.RESTORE_ANNOTATION] = json.dumps(restore, separators=(",", ":"), sort_keys=True)
    meta["labels"] = labels
    meta["annotations"] = annotations
    out["metadata"] = meta
    out["spec"] = spec
    return out


def _shapes(obj: Mapping[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """The keys holding null or an empty map or list: uninject cannot tell them from absent."""
    return {key: obj[key] for key in keys if key in obj and obj[key] in (None, {}, [])}


def _free_volume_name(taken: set[Any]) -> str:
    """The xtables lock volume's name: the usual one, or the first `-<n>` the pod does not use."""
    name, n = XTABLES_LOCK_VOLUME, 0
    while name in taken:
        n += 1
        name = f"{XTABLES_LOCK_VOLUME}-{n}"
    return name


def _lock_volumes(spec: Mapping[str, Any]) -> set[str]:
    """The volumes mesh-init mounts: the ones the injector added."""
    names: set[str] = set()
    for container in _list(spec, "initContainers"):
        if _name(container) == c.INIT_CONTAINER_NAME:
            names |= {
                _name(m) for m in _mapping(container).get("volumeMounts") or [] if isinstance(_name(m), str)
            }
    return names


def _init_container(ports: _Ports, config: MeshConfig, lock_volume: str) -> dict[str, Any]:
    command = [
        "mesh-proxy", "init",
        "--proxy-uid", str(c.PROXY_UID),
        "--inbound-port", str(c.PROXY_INBOUND_PORT),
        "--outbound-port", str(c.PROXY_OUTBOUND_PORT),
        "--inbound-ports-to-ignore", ports.inbound_ignore,
    ]  # fmt: skip
    if ports.outbound_ignore:
        command += ["--outbound-ports-to-ignore", ports.outbound_ignore]
    if config.skip_subnets:
        command += ["--subnets-to-ignore", config.skip_subnets]
    return {
        "name": c.INIT_CONTAINER_NAME,
        "image": config.init_image_ref,
        "imagePullPolicy": config.image_pull_policy,
        "command": command,
        "resources": _plain(config.init_resources),
        "securityContext": {
            # Root only to write iptables rules; nothing else.
            "runAsUser": 0,
            "runAsNonRoot": False,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "privileged": False,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [{"name": lock_volume, "mountPath": "/run"}],
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def _field_env(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def _proxy_container(owner: Workload, ports: _Ports, config: MeshConfig) -> dict[str, Any]:
    """The proxy container: a new dict per pod, holding the parts every pod shares (`shared`)
    and the environment entries that name this pod's workload."""
    parts = shared.part(("proxy", config.identity), lambda: _proxy_parts(config))
    env = parts["env"]
    container = dict(parts["container"])
    container["env"] = [
        *env,
        shared.part(("env", c.ENV_WORKLOAD_KIND, owner.kind),
                    lambda: {"name": c.ENV_WORKLOAD_KIND, "value": owner.kind}),
        {"name": c.ENV_WORKLOAD_NAME, "value": owner.name},
        parts["log_level"],
        parts["log_format"],
        shared.part(("env", c.ENV_OPAQUE_PORTS, ports.opaque),
                    lambda: {"name": c.ENV_OPAQUE_PORTS, "value": ports.opaque}),
    ]  # fmt: skip
    return container


def _proxy_parts(config: MeshConfig) -> dict[str, Any]:
    """What every proxy container injected with `config` holds: its fields but `env` (a
    placeholder, for the order of the keys), and the environment entries that do not depend on
    the pod."""
    admin = {"path": "/ready", "port": c.PROXY_ADMIN_PORT}
    container: dict[str, Any] = {
        "name": c.PROXY_CONTAINER_NAME,
        "image": config.proxy_image_ref,
        "imagePullPolicy": config.image_pull_policy,
        "command": ["mesh-proxy", "run"],
        "env": None,  # per pod: `_proxy_container`
        "ports": [
            {"name": c.PROXY_PORT_NAME, "containerPort": c.PROXY_INBOUND_PORT, "protocol": "TCP"},
            {"name": c.ADMIN_PORT_NAME, "containerPort": c.PROXY_ADMIN_PORT, "protocol": "TCP"},
        ],
        "livenessProbe": {
            "httpGet": {"path": "/live", "port": c.PROXY_ADMIN_PORT},
            "periodSeconds": 10,
            "timeoutSeconds": 1,
            "failureThreshold": 3,
        },
        "readinessProbe": {
            "httpGet": dict(admin),
            "periodSeconds": 5,
            "timeoutSeconds": 1,
            "failureThreshold": 3,
        },
        "resources": _plain(config.proxy_resources),
        "securityContext": {
            "runAsUser": c.PROXY_UID,
            "runAsGroup": c.PROXY_UID,
            "runAsNonRoot": True,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if config.native_sidecar:
        # Restartable init container: starts before the app containers (which wait for the
        # startup probe) and does not keep a Job's pod alive after the app exits.
        container["restartPolicy"] = "Always"
        container["startupProbe"] = {
            "httpGet": dict(admin),
            "periodSeconds": 1,
            "timeoutSeconds": 1,
            "failureThreshold": 120,
        }
    else:
        container["livenessProbe"]["initialDelaySeconds"] = 10
    return {
        "container": container,
        "env": [
            _field_env(c.ENV_POD_NAME, "metadata.name"),
            _field_env(c.ENV_POD_NAMESPACE, "metadata.namespace"),
            _field_env(c.ENV_POD_IP, "status.podIP"),
            _field_env(c.ENV_SERVICE_ACCOUNT, "spec.serviceAccountName"),
        ],
        "log_level": {"name": c.ENV_LOG_LEVEL, "value": config.log_level},
        "log_format": {"name": c.ENV_LOG_FORMAT, "value": config.log_format},
    }


# --- helpers -------------------------------------------------------------------------------------

_INJECTED_LABELS = frozenset(
    {c.PROXY_WORKLOAD_LABEL_PREFIX + kind for kind in c.WORKLOAD_KINDS}
    | {c.CONTROL_PLANE_NS_LABEL, c.WORKLOAD_NS_LABEL}
)
_INJECTED_ANNOTATIONS = frozenset(
    {c.PROXY_VERSION_ANNOTATION, c.INJECTED_BY_ANNOTATION, c.RESTORE_ANNOTATION}
)


def _skip(pod: Pod, reason: str, message: str) -> Decision:
    return Decision(False, pod, reason, message)


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(spec: Mapping[str, Any], key: str) -> list[Any]:
    """A copy of spec[key]; a non-list there is a malformed pod, not something to guess about."""
    value = spec.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise TypeError(f"spec.{key} is not a list")
    return list(value)


def _name(obj: Any) -> Any:
    return obj.get("name") if isinstance(obj, Mapping) else None


def _has_mesh_metadata(pod: Mapping[str, Any]) -> bool:
    meta = _mapping(pod.get("metadata"))
    return bool(
        set(_mapping(meta.get("labels"))) & _INJECTED_LABELS
        or set(_mapping(meta.get("annotations"))) & _INJECTED_ANNOTATIONS
    )


def _put_back(
    obj: dict[str, Any], key: str, value: Mapping[str, Any] | list[Any], was: Mapping[str, Any]
) -> None:
    """Set `key` to what is left; when nothing is, to what the injector found (absent by default)."""
    if value:
        obj[key] = value
    elif key in was:
        obj[key] = was[key]
    else:
        obj.pop(key, None)


class RestoreError(MeshError):
    """A restore annotation that cannot be read safely (the caller says which object bears it)."""


def _read_restore(text: Any) -> dict[str, Any]:
    """The restore annotation's JSON; an unreadable one restores nothing (the default shapes).
    One nested more than documents may be (`nesting.MAX_DEPTH`) is an error, whatever the stack
    would have allowed: Python's recursion limit read 986 levels in one process and not in a
    worker of the pool."""
    try:
        value = json.loads(text) if isinstance(text, str) else {}
        too_deep = nesting.deeper_than(value, nesting.MAX_DEPTH)
    except RecursionError:  # far deeper than MAX_DEPTH, wherever the stack stands
        too_deep = True
    except ValueError:
        return {}
    if too_deep:
        raise RestoreError(
            f"its {c.RESTORE_ANNOTATION} annotation is nested too deeply to read "
            "(is it what kubectl mesh inject wrote?)"
        )
    return value if isinstance(value, dict) else {}


_LABEL_VALUE_JUNK = re.compile(r"[^A-Za-z0-9._-]+")
_LABEL_VALUE_ENDS = re.compile(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$")


def label_value(text: str) -> str:
    """A valid label value for a name: ASCII `[A-Za-z0-9._-]` only, <= 63 bytes, alphanumeric ends.

    Kubernetes object names already are; a name from a hand-written manifest (or a namespace
    the CLI was given) may not be, and one bad label value makes the API server refuse the pod.
    """
    value = _LABEL_VALUE_JUNK.sub("-", text)
    value = _LABEL_VALUE_ENDS.sub("", value)[:63]
    return _LABEL_VALUE_ENDS.sub("", value)
