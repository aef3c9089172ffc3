"""A pod's volumes as host directories, filled the way the kubelet fills them.

configMap, secret, emptyDir, downwardAPI and projected (serviceAccountToken minted through the
TokenRequest API, configMap, secret, downwardAPI) are supported; contents are written once at
pod start (no live updates). Anything else is a clear error for the pod's status.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

from lab.kube import ApiException, Kube, data, message

JSON = dict[str, Any]
DEFAULT_MODE = 0o644


class VolumeError(Exception):
    """Why a pod's volume cannot be made yet (the kubelet keeps such a pod Pending and retries)."""


def field_value(pod: JSON, path: str) -> str:
    """A downward API fieldRef (metadata.name, status.podIP, metadata.labels['x'], ...)."""
    meta, spec, status = pod["metadata"], pod.get("spec", {}), pod.get("status", {})
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
        "status.podIP": status.get("podIP", ""),
        "status.hostIP": status.get("hostIP", ""),
        "status.podIPs": status.get("podIP", ""),
        "status.hostIPs": status.get("hostIP", ""),
    }
    if path in simple:
        return str(simple[path])
    for kind in ("labels", "annotations"):
        mapping = meta.get(kind) or {}
        if path == f"metadata.{kind}":
            return "\n".join(f'{k}="{v}"' for k, v in sorted(mapping.items()))
        prefix = f"metadata.{kind}['"
        if path.startswith(prefix) and path.endswith("']"):
            return str(mapping.get(path[len(prefix) : -2], ""))
    raise VolumeError(f"unsupported fieldRef {path}")


def _object_data(kube: Kube, kind: str, namespace: str, name: str, optional: bool) -> dict[str, bytes] | None:
    read = kube.core.read_namespaced_config_map if kind == "configMap" else kube.core.read_namespaced_secret
    try:
        obj = data(read, name, namespace)
    except ApiException as err:
        if err.status == 404:
            if optional:
                return None
            raise VolumeError(f'{kind} "{name}" not found') from err
        raise
    contents: dict[str, bytes] = {}
    if kind == "configMap":
        contents.update({k: v.encode() for k, v in (obj.get("data") or {}).items()})
        contents.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
    else:
        contents.update({k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()})
    return contents


def _write(root: Path, rel: str, content: bytes, mode: int, fs_group: int | None) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    path.write_bytes(content)
    path.chmod(mode)
    if fs_group is not None:
        os.chown(path, 0, fs_group)


def _write_keys(
    root: Path, data: dict[str, bytes], source: JSON, mode: int, fs_group: int | None, what: str
) -> None:
    items = source.get("items")
    if not items:
        for key, value in data.items():
            _write(root, key, value, mode, fs_group)
        return
    for item in items:
        if item["key"] not in data:
            if source.get("optional"):
                continue
            raise VolumeError(f'key "{item["key"]}" not found in {what}')
        _write(root, item["path"], data[item["key"]], item.get("mode", mode), fs_group)


def _token(kube: Kube, pod: JSON, source: JSON) -> bytes:
    meta = pod["metadata"]
    sa = pod["spec"].get("serviceAccountName") or "default"
    spec: JSON = {
        "expirationSeconds": int(source.get("expirationSeconds", 3600)),
        "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "uid": meta["uid"]},
    }
    # No audience: none asked for, the API server's own (the client's model wants the list).
    spec["audiences"] = [source["audience"]] if source.get("audience") else []
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
    try:
        out = data(kube.core.create_namespaced_service_account_token, sa, meta["namespace"], body)
    except ApiException as err:
        raise VolumeError(f"token for service account {sa}: {message(err)}") from err
    return str(out["status"]["token"]).encode()


def materialize(kube: Kube, pod: JSON, volume: JSON, root: Path) -> None:
    """Create and fill one volume's directory `root`."""
    fs_group = (pod["spec"].get("securityContext") or {}).get("fsGroup")
    ns = pod["metadata"]["namespace"]
    root.mkdir(parents=True, exist_ok=True)
    if "emptyDir" in volume:
        root.chmod(0o777)
        return
    root.chmod(0o755)
    if "configMap" in volume or "secret" in volume:
        kind = "configMap" if "configMap" in volume else "secret"
        source = volume[kind]
        name = source.get("name") if kind == "configMap" else source.get("secretName")
        contents = _object_data(kube, kind, ns, str(name), bool(source.get("optional")))
        if contents is not None:
            _write_keys(
                root,
                contents,
                source,
                int(source.get("defaultMode", DEFAULT_MODE)),
                fs_group,
                f"{kind} {name}",
            )
        return
    if "downwardAPI" in volume:
        source = volume["downwardAPI"]
        mode = int(source.get("defaultMode", DEFAULT_MODE))
        for item in source.get("items", []):
            _write_downward(root, pod, item, mode, fs_group)
        return
    if "projected" in volume:
        mode = int(volume["projected"].get("defaultMode", DEFAULT_MODE))
        for src in volume["projected"].get("sources", []):
            if "serviceAccountToken" in src:
                tok = src["serviceAccountToken"]
                _write(root, tok["path"], _token(kube, pod, tok), mode, fs_group)
            elif "configMap" in src or "secret" in src:
                kind = "configMap" if "configMap" in src else "secret"
                contents = _object_data(kube, kind, ns, src[kind]["name"], bool(src[kind].get("optional")))
                if contents is not None:
                    _write_keys(root, contents, src[kind], mode, fs_group, f"{kind} {src[kind]['name']}")
            elif "downwardAPI" in src:
                for item in src["downwardAPI"].get("items", []):
                    _write_downward(root, pod, item, mode, fs_group)
            else:
                raise VolumeError(f"volume {volume['name']}: unsupported projected source {sorted(src)}")
        return
    kinds = sorted(set(volume) - {"name"})
    raise VolumeError(f"volume {volume['name']}: unsupported volume type {kinds} on the lab node")


def _write_downward(root: Path, pod: JSON, item: JSON, mode: int, fs_group: int | None) -> None:
    # resourceFieldRef: the lab has no resource accounting, "1" for any resource.
    value = field_value(pod, item["fieldRef"]["fieldPath"]) if "fieldRef" in item else "1"
    _write(root, item["path"], value.encode(), int(item.get("mode", mode)), fs_group)
