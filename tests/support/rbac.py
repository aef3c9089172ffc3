"""Identities with just the permissions a test gives them, in a lab namespace: a ServiceAccount,
its Role and RoleBinding, and a short-lived token to act as it (through the `kubernetes`
package or a kubeconfig for kubectl). For the tests of who may port-forward (and so tap)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from lab.kube import data

Rule = dict[str, list[str]]
READ_PODS: Rule = {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}
READ_DEPLOYMENTS: Rule = {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "list"]}
PORT_FORWARD: Rule = {"apiGroups": [""], "resources": ["pods/portforward"], "verbs": ["create", "get"]}


def account(namespace: str, name: str, *rules: Rule) -> list[dict[str, Any]]:
    """ServiceAccount `name`, allowed `rules` in `namespace` (none: the account alone)."""
    meta = {"name": name, "namespace": namespace}
    objects: list[dict[str, Any]] = [{"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta}]
    if rules:
        rbac = "rbac.authorization.k8s.io/v1"
        objects += [
            {"apiVersion": rbac, "kind": "Role", "metadata": meta, "rules": list(rules)},
            {"apiVersion": rbac, "kind": "RoleBinding", "metadata": meta,
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
             "subjects": [{"kind": "ServiceAccount", **meta}]},
        ]  # fmt: skip
    return objects


def accounts_yaml(*objects: list[dict[str, Any]]) -> str:
    """Several `account(...)`s as one manifest, for `lab.apply`."""
    return yaml.safe_dump_all([o for group in objects for o in group])


def token(lab: Any, namespace: str, service_account: str) -> str:
    """A 10-minute token of the ServiceAccount (the TokenRequest API)."""
    request = {"spec": {"expirationSeconds": 600}}
    answer = data(lab.kube.core.create_namespaced_service_account_token, service_account, namespace, request)
    return str(answer["status"]["token"])


def kubeconfig_for(lab: Any, namespace: str, service_account: str, path: Path) -> Path:
    """A kubeconfig at `path` that acts as the ServiceAccount on the lab's API server."""
    cluster = yaml.safe_load(lab.kubeconfig.read_text())["clusters"][0]
    context = {"cluster": cluster["name"], "user": service_account, "namespace": namespace}
    config = {
        "apiVersion": "v1", "kind": "Config", "clusters": [cluster],
        "users": [{"name": service_account, "user": {"token": token(lab, namespace, service_account)}}],
        "contexts": [{"name": service_account, "context": context}],
        "current-context": service_account,
    }  # fmt: skip
    path.write_text(yaml.safe_dump(config))
    return path
