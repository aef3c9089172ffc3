"""The mesh configuration the injector applies: images, resources, ports to skip, sidecar mode.

One frozen `MeshConfig`, read from a JSON object whose keys are camelCase like Helm values
(the chart renders `values.yaml` into a ConfigMap holding exactly these keys; the webhook reads
the file named by `$MESH_CONFIG`, `kubectl mesh inject --config` any file). Unknown keys are an
error, so a typo in the chart fails loudly at start-up instead of silently injecting defaults.
Pure apart from `load_config` and `read_config_file`.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kubectl_mesh import __version__
from kubectl_mesh.contract import CONTROL_PLANE_NAMESPACE, LOG_FORMATS, LOG_LEVELS, NAMESPACE_NAME_PATTERN
from kubectl_mesh.errors import MeshError
from kubectl_mesh.portlist import NO_PORTS, PortList
from kubectl_mesh.subnetlist import parse_subnets

ENV_MESH_CONFIG = "MESH_CONFIG"

DEFAULT_PROXY_IMAGE = "ghcr.io/kubectl-mesh/proxy"
# Server-speaks-first protocols (SMTP, MySQL, PostgreSQL, Redis, memcached, ...): protocol
# detection would wait for a request that never comes, so these are relayed as opaque TCP.
DEFAULT_OPAQUE_PORTS = PortList.parse("25,587,3306,4444,5432,6379,9300,11211")
PULL_POLICIES = ("Always", "IfNotPresent", "Never")

_QUANTITY = re.compile(r"^[+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+|[numkMGTPE]i?|Ki)?$")
_RESOURCE_NAMES = ("cpu", "memory", "ephemeral-storage")


class MeshConfigError(MeshError):
    """The configuration is unusable; the message names the key (and the file, when read from one)."""


def _default_proxy_resources() -> dict[str, dict[str, str]]:
    return {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "256Mi"}}


def _default_init_resources() -> dict[str, dict[str, str]]:
    return {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "128Mi"}}


@dataclass(frozen=True)
class MeshConfig:
    """What the injector adds to a pod. Ports and names are contracts (contract.py), not config."""

    proxy_image: str = DEFAULT_PROXY_IMAGE
    proxy_version: str = __version__
    init_image: str = ""  # empty: the proxy image (it carries `mesh-proxy init`)
    image_pull_policy: str = "IfNotPresent"
    proxy_resources: Mapping[str, Mapping[str, str]] = field(default_factory=_default_proxy_resources)
    init_resources: Mapping[str, Mapping[str, str]] = field(default_factory=_default_init_resources)
    log_level: str = "info"
    log_format: str = "logfmt"  # the proxy's MESH_LOG_FORMAT: one format with the webhook's
    native_sidecar: bool = True  # False for clusters older than 1.29: proxy as first container
    skip_inbound_ports: PortList = NO_PORTS  # added to 4190,4191 and the pod's annotation
    skip_outbound_ports: PortList = NO_PORTS  # added to the pod's annotation
    skip_subnets: str = ""  # CIDRs whose outbound traffic is never redirected
    opaque_ports: PortList = DEFAULT_OPAQUE_PORTS  # the pod's annotation replaces this default
    control_plane_namespace: str = CONTROL_PLANE_NAMESPACE

    @functools.cached_property
    def identity(self) -> str:
        """The config's content as one string: equal configs (their maps' key order included,
        which the pod's YAML shows) give equal ones. What the injector's shared parts are
        keyed by (`shared.part`); computed once per config object."""
        return repr(self)

    @property
    def proxy_image_ref(self) -> str:
        """`proxyImage:proxyVersion`, unless proxyImage already names a tag or digest."""
        return _with_tag(self.proxy_image, self.proxy_version)

    @property
    def init_image_ref(self) -> str:
        return _with_tag(self.init_image or self.proxy_image, self.proxy_version)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> MeshConfig:
        """Build from camelCase keys (the ConfigMap's JSON); raises MeshConfigError on a bad key/value."""
        if not isinstance(data, Mapping):
            raise MeshConfigError("mesh config must be a JSON object")
        unknown = sorted(set(data) - set(_KEYS))
        if unknown:
            raise MeshConfigError(f"unknown mesh config key(s): {', '.join(map(str, unknown))}")
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            attr, check = _KEYS[key]
            kwargs[attr] = check(key, value)
        return cls(**kwargs)

    def to_mapping(self) -> dict[str, Any]:
        """The camelCase JSON object `from_mapping` reads (what the chart's ConfigMap holds)."""
        return {key: _json_value(getattr(self, attr)) for key, (attr, _check) in _KEYS.items()}


def load_config(environ: Mapping[str, str] | None = None) -> MeshConfig:
    """Read the JSON file named by $MESH_CONFIG; defaults when the variable is unset or empty."""
    env = os.environ if environ is None else environ
    path = env.get(ENV_MESH_CONFIG, "")
    if not path:
        return MeshConfig()
    data = read_config_file(path, "mesh config")
    try:
        return MeshConfig.from_mapping(data)
    except MeshConfigError as exc:
        raise MeshConfigError(f"mesh config {path}: {exc}") from None


def read_config_file(path: str, what: str) -> Any:
    """The JSON in `path`; MeshConfigError says `cannot read <what> <path>` or `<what> <path> is not
    valid JSON`, so `load_config` and `kubectl mesh inject --config` report the same way."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except OSError as exc:
        raise MeshConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise MeshConfigError(f"{what} {path} is not valid JSON: {exc}") from None


# --- validation helpers -------------------------------------------------------------------------


def _with_tag(image: str, tag: str) -> str:
    last = image.rsplit("/", 1)[-1]
    if "@" in image or ":" in last or not tag:
        return image
    return f"{image}:{tag}"


def _json_value(value: Any) -> Any:
    """A config value as the ConfigMap's JSON holds it: port lists as their canonical text."""
    return str(value) if isinstance(value, PortList) else _plain(value)


def _plain(value: Any) -> Any:
    """Nested mappings as new plain dicts: a pod or JSON never shares the config's own."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _string(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise MeshConfigError(f"{key} must be a string")
    return value


def _nonempty(key: str, value: Any) -> str:
    if not _string(key, value).strip():
        raise MeshConfigError(f"{key} must not be empty")
    return value


def _bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise MeshConfigError(f"{key} must be true or false")
    return value


def _choice(options: tuple[str, ...]) -> Any:
    def check(key: str, value: Any) -> str:
        if value not in options:
            raise MeshConfigError(f"{key} must be one of {', '.join(options)}")
        return str(value)

    return check


def _ports(key: str, value: Any) -> PortList:
    if isinstance(value, list):
        value = ",".join(str(v) for v in value)
    try:
        return PortList.parse(_string(key, value))
    except ValueError as exc:
        raise MeshConfigError(f"{key}: {exc}") from None


def _subnets(key: str, value: Any) -> str:
    if isinstance(value, list):
        value = ",".join(str(v) for v in value)
    try:
        return ",".join(parse_subnets(_string(key, value)))
    except ValueError as exc:
        raise MeshConfigError(f"{key}: {exc}") from None


def _resources(key: str, value: Any) -> dict[str, dict[str, str]]:
    if not isinstance(value, Mapping) or set(value) - {"requests", "limits"}:
        raise MeshConfigError(f"{key} must be an object with 'requests' and/or 'limits'")
    out: dict[str, dict[str, str]] = {}
    for section, amounts in value.items():
        if not isinstance(amounts, Mapping):
            raise MeshConfigError(f"{key}.{section} must be an object")
        checked: dict[str, str] = {}
        for name, amount in amounts.items():
            if name not in _RESOURCE_NAMES:
                raise MeshConfigError(f"{key}.{section}: unknown resource {name!r}")
            text = str(amount) if isinstance(amount, int | float) and not isinstance(amount, bool) else amount
            if not isinstance(text, str) or not _QUANTITY.match(text):
                raise MeshConfigError(f"{key}.{section}.{name}: {amount!r} is not a Kubernetes quantity")
            checked[name] = text
        if checked:
            out[section] = checked
    return out


def _namespace(key: str, value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(NAMESPACE_NAME_PATTERN, value):
        raise MeshConfigError(f"{key} must be a namespace name")
    return value


# camelCase key -> (attribute, validator). The documented set (docs/architecture.md).
_KEYS: dict[str, tuple[str, Any]] = {
    "proxyImage": ("proxy_image", _nonempty),
    "proxyVersion": ("proxy_version", _string),
    "initImage": ("init_image", _string),
    "imagePullPolicy": ("image_pull_policy", _choice(PULL_POLICIES)),
    "proxyResources": ("proxy_resources", _resources),
    "initResources": ("init_resources", _resources),
    "logLevel": ("log_level", _choice(LOG_LEVELS)),
    "logFormat": ("log_format", _choice(LOG_FORMATS)),
    "nativeSidecar": ("native_sidecar", _bool),
    "skipInboundPorts": ("skip_inbound_ports", _ports),
    "skipOutboundPorts": ("skip_outbound_ports", _ports),
    "skipSubnets": ("skip_subnets", _subnets),
    "opaquePorts": ("opaque_ports", _ports),
    "controlPlaneNamespace": ("control_plane_namespace", _namespace),
}
