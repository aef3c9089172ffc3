"""The control plane's objects from the chart snapshot: pure, no I/O but reading package data.

The snapshot (kubectl_mesh/data/chart-snapshot.json, made by the build step
`scripts/chart_snapshot.py` with real helm) is `helm template` of the chart with every value a
flag can set replaced by a token such as `__MESH_PROXY_IMAGE__`, and the generated certificates
replaced by tokens too. Rendering is then string substitution inside the objects' strings, plus
two things helm did that depend on those strings: dropping disabled components and the
`checksum/<configmap>` pod annotations.
Where a value goes is decided by the chart alone; tests/chart checks the result against helm.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kubectl_mesh.contract import WEBHOOK_TLS_SECRET
from kubectl_mesh.errors import MeshError

SNAPSHOT_RESOURCE = "chart-snapshot.json"
SNAPSHOT_FORMAT = 1
TOKEN_PATTERN = re.compile(r"__MESH_[A-Z_]+__")
COMPONENT_LABEL = "app.kubernetes.io/component"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "kubectl-mesh"
CHECKSUM_PREFIX = "checksum/"


class InstallError(MeshError):
    """A value the chart would reject; the message is one line for the user."""


@dataclass(frozen=True)
class Option:
    """A chart value that `kubectl mesh install` sets with a flag (a token in the snapshot)."""

    key: str  # dotted path in values.yaml
    token: str
    flag: str
    help: str


OPTIONS: tuple[Option, ...] = (
    Option("proxy.image.name", "__MESH_PROXY_IMAGE__", "--proxy-image", "proxy image repository, no tag"),
    Option("proxy.image.version", "__MESH_PROXY_VERSION__", "--proxy-version", "proxy image tag"),
    Option("proxy.logLevel", "__MESH_PROXY_LOG_LEVEL__", "--proxy-log-level", "proxy log level"),
    Option(
        "webhook.failurePolicy",
        "__MESH_WEBHOOK_FAILURE_POLICY__",
        "--webhook-failure-policy",
        "Ignore: pods start without a proxy while the webhook is down; Fail: they are refused",
    ),
    Option(
        "prometheus.retention",
        "__MESH_PROMETHEUS_RETENTION__",
        "--prometheus-retention",
        "how long Prometheus keeps samples, e.g. 6h, 2d",
    ),
    Option(
        "grafana.prometheusUrl",
        "__MESH_GRAFANA_PROMETHEUS_URL__",
        "--grafana-prometheus-url",
        "Grafana's datasource (needed with --no-prometheus)",
    ),
)

# values key -> the component label of the objects it renders.
TOGGLES: Mapping[str, str] = {"prometheus.enabled": "prometheus", "grafana.enabled": "grafana"}

# The webhook's certificates in the snapshot (base64 of PEM, as in a Secret's data).
TLS_CERT_TOKEN = "__MESH_TLS_CRT__"
TLS_KEY_TOKEN = "__MESH_TLS_KEY__"
CA_CERT_TOKEN = "__MESH_CA_CRT__"
TLS_SECRET = WEBHOOK_TLS_SECRET


@dataclass(frozen=True)
class Snapshot:
    """The chart as helm rendered it, with tokens; see the module docstring."""

    chart_version: str
    app_version: str
    defaults: Mapping[str, Any]  # values key -> default (OPTIONS, TOGGLES, cert validity)
    checks: Mapping[str, Mapping[str, Any]]  # values key -> {"pattern": ...} or {"enum": [...]}
    objects: list[dict[str, Any]]

    def to_json(self) -> str:
        data = {
            "format": SNAPSHOT_FORMAT,
            "chartVersion": self.chart_version,
            "appVersion": self.app_version,
            "defaults": dict(self.defaults),
            "checks": {k: dict(v) for k, v in self.checks.items()},
            "objects": self.objects,
        }
        return json.dumps(data, indent=1, sort_keys=False) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Snapshot:
        data = json.loads(text)
        if data.get("format") != SNAPSHOT_FORMAT:
            raise InstallError("the packaged chart snapshot has an unknown format: reinstall kubectl-mesh")
        return cls(
            chart_version=data["chartVersion"],
            app_version=data["appVersion"],
            defaults=data["defaults"],
            checks=data["checks"],
            objects=data["objects"],
        )


def load_snapshot() -> Snapshot:
    """The snapshot shipped in the package (kubectl_mesh/data)."""
    from importlib import resources  # not at import: `kubectl mesh --help` stays cheap

    try:
        text = resources.files("kubectl_mesh").joinpath("data", SNAPSHOT_RESOURCE).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InstallError(
            "the chart snapshot is missing from this kubectl-mesh: rebuild it with "
            "`python -m scripts.chart_snapshot` (from the checkout)"
        ) from None
    return Snapshot.from_json(text)


@dataclass(frozen=True)
class WebhookTLS:
    """PEM bytes of the webhook's CA certificate and its serving certificate and key."""

    ca_cert: bytes
    cert: bytes
    key: bytes

    @classmethod
    def from_secret_data(cls, data: Mapping[str, str]) -> WebhookTLS:
        """From a kubernetes.io/tls Secret's data (base64), as the chart's `lookup` reuses it."""
        return cls(*(base64.b64decode(data[k]) for k in ("ca.crt", "tls.crt", "tls.key")))


@dataclass
class Settings:
    """The values `kubectl mesh install` was asked for: overrides of the defaults."""

    values: dict[str, Any] = field(default_factory=dict)


def resolve(snapshot: Snapshot, settings: Settings) -> dict[str, Any]:
    """Defaults overlaid with the settings, validated as the chart's schema and templates would."""
    values = {**snapshot.defaults, **{k: v for k, v in settings.values.items() if v is not None}}
    for option in OPTIONS:
        value = values[option.key]
        if not isinstance(value, str):
            raise InstallError(f"{option.flag} must be text")
        _check(option, value, snapshot.checks.get(option.key, {}))
    own_prometheus = snapshot.defaults["grafana.prometheusUrl"]
    if (
        values["grafana.enabled"]
        and not values["prometheus.enabled"]
        and values["grafana.prometheusUrl"] == own_prometheus
    ):
        raise InstallError(
            "--no-prometheus with Grafana needs --grafana-prometheus-url (or add --no-grafana)"
        )
    return values


def _check(option: Option, value: str, check: Mapping[str, Any]) -> None:
    if "enum" in check and value not in check["enum"]:
        raise InstallError(f"{option.flag} {value!r}: must be one of {', '.join(check['enum'])}")
    if "pattern" in check and not re.search(check["pattern"], value):
        raise InstallError(f"{option.flag} {value!r}: not a valid value (must match {check['pattern']})")
    if TOKEN_PATTERN.search(value):
        raise InstallError(f"{option.flag} {value!r}: not a valid value")


def render(snapshot: Snapshot, settings: Settings, tls: WebhookTLS) -> list[dict[str, Any]]:
    """The objects `helm template` would give for these values (certificates are `tls`)."""
    values = resolve(snapshot, settings)
    disabled = {component for key, component in TOGGLES.items() if not values[key]}
    replacements = {option.token: values[option.key] for option in OPTIONS}
    replacements |= {
        TLS_CERT_TOKEN: _b64(tls.cert),
        TLS_KEY_TOKEN: _b64(tls.key),
        CA_CERT_TOKEN: _b64(tls.ca_cert),
    }
    # `_substitute` builds new dicts and lists, so the snapshot's objects are never modified.
    objects = [
        _substitute(obj, replacements)
        for obj in snapshot.objects
        if _labels(obj).get(COMPONENT_LABEL) not in disabled
    ]
    for obj in objects:
        _relabel(obj)
    update_checksums(objects)
    return objects


def update_checksums(objects: list[dict[str, Any]]) -> None:
    """Set each pod template's `checksum/<configmap>` as the chart computes it.

    The chart hashes the ConfigMap's data as Go's `toJson` writes it (sorted keys, HTML-safe
    escapes), so a changed setting rolls the pods that read it.
    """
    config_maps = {
        obj["metadata"]["name"]: obj.get("data", {}) for obj in objects if obj.get("kind") == "ConfigMap"
    }
    for obj in objects:
        template = obj.get("spec", {}).get("template", {})
        annotations = template.get("metadata", {}).get("annotations", {})
        for key in list(annotations):
            name = key.removeprefix(CHECKSUM_PREFIX)
            if key.startswith(CHECKSUM_PREFIX) and name in config_maps:
                annotations[key] = hashlib.sha256(go_json(config_maps[name]).encode()).hexdigest()


def go_json(value: Any) -> str:
    """JSON exactly as Go's encoding/json (and so helm's `toJson`) writes it."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(char, escaped)
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def delete_order(objects: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """References to every object, the webhook configuration first and the namespace last.

    The API server stops calling the webhook before the webhook goes away.
    """
    refs = [
        {
            "apiVersion": obj["apiVersion"],
            "kind": obj["kind"],
            "metadata": {k: v for k, v in obj["metadata"].items() if k in ("name", "namespace")},
        }
        for obj in objects
    ]
    return list(reversed(refs))


def to_yaml(objects: Iterable[Mapping[str, Any]], header: str = "") -> str:
    """YAML documents for `kubectl apply -f -`; multi-line strings as literal blocks."""
    from kubectl_mesh import manifests  # not at import: `kubectl mesh --help` stays cheap

    return header + manifests.dump_yaml(objects)


def _substitute(value: Any, replacements: Mapping[str, str]) -> Any:
    """A copy of `value` with the tokens in its strings replaced (new dicts and lists throughout)."""
    if isinstance(value, str):
        if "__MESH_" not in value:
            return value
        return TOKEN_PATTERN.sub(lambda m: _replacement(m.group(), replacements), value)
    if isinstance(value, dict):
        return {k: _substitute(v, replacements) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, replacements) for v in value]
    return value


def _replacement(token: str, replacements: Mapping[str, str]) -> str:
    if token not in replacements:  # a token the chart added without an Option: a bug, not a user error
        raise RuntimeError(f"chart snapshot token {token} has no value")
    return replacements[token]


def _labels(obj: Mapping[str, Any]) -> Mapping[str, str]:
    labels: Mapping[str, str] = obj.get("metadata", {}).get("labels") or {}
    return labels


def _relabel(obj: dict[str, Any]) -> None:
    """`app.kubernetes.io/managed-by` says who applied the objects: here not Helm."""
    for meta in (obj.get("metadata", {}), obj.get("spec", {}).get("template", {}).get("metadata", {})):
        labels = meta.get("labels") or {}
        if MANAGED_BY_LABEL in labels:
            labels[MANAGED_BY_LABEL] = MANAGED_BY


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
