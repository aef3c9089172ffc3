"""Services as kube-proxy's iptables mode makes them, and the names pods resolve: pure functions.

Input: Services and EndpointSlices as the API server returns them (dicts). Output: an
`iptables-restore --noflush` script for the nat table, and /etc/hosts lines per pod namespace.
No I/O here, so the translation is testable without root.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from lab.config import CHAIN_PREFIX, CLUSTER_DOMAIN, HAIRPIN_MARK

SERVICES_CHAIN = f"{CHAIN_PREFIX}SERVICES"
JSON = dict[str, Any]


@dataclass(frozen=True)
class Backend:
    ip: str
    port: int


@dataclass(frozen=True)
class ServicePort:
    namespace: str
    name: str
    port_name: str
    protocol: str
    cluster_ip: str
    port: int
    backends: tuple[Backend, ...]


def _chain(kind: str, *parts: object) -> str:
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()[:16].upper()
    return f"{CHAIN_PREFIX}{kind}-{digest}"


def ready_backends(service: JSON, slices: Iterable[JSON]) -> dict[str, list[Backend]]:
    """Service port name -> ready backends, from the EndpointSlices of that Service."""
    meta = service["metadata"]
    out: dict[str, list[Backend]] = {}
    for sl in slices:
        smeta = sl.get("metadata", {})
        if smeta.get("namespace") != meta["namespace"]:
            continue
        if smeta.get("labels", {}).get("kubernetes.io/service-name") != meta["name"]:
            continue
        if sl.get("addressType", "IPv4") != "IPv4":
            continue
        for port in sl.get("ports") or []:
            if port.get("port") is None:
                continue
            for ep in sl.get("endpoints") or []:
                if ep.get("conditions", {}).get("ready") is False:
                    continue
                for ip in ep.get("addresses", []):
                    backend = Backend(ip, int(port["port"]))
                    bucket = out.setdefault(port.get("name") or "", [])
                    if backend not in bucket:
                        bucket.append(backend)
    for bucket in out.values():
        bucket.sort(key=lambda b: (tuple(int(x) for x in b.ip.split(".")), b.port))
    return out


def service_ports(services: Iterable[JSON], slices: list[JSON]) -> list[ServicePort]:
    """Every (Service, port) with a ClusterIP, joined with its ready backends."""
    out: list[ServicePort] = []
    for svc in services:
        spec = svc.get("spec", {})
        ip = spec.get("clusterIP")
        if not ip or ip == "None" or spec.get("type") == "ExternalName":
            continue
        backends = ready_backends(svc, slices)
        for port in spec.get("ports") or []:
            out.append(
                ServicePort(
                    namespace=svc["metadata"]["namespace"],
                    name=svc["metadata"]["name"],
                    port_name=port.get("name") or "",
                    protocol=(port.get("protocol") or "TCP").lower(),
                    cluster_ip=ip,
                    port=int(port["port"]),
                    backends=tuple(backends.get(port.get("name") or "", [])),
                )
            )
    out.sort(key=lambda p: (p.namespace, p.name, p.port, p.protocol))
    return out


def render_nat(ports: list[ServicePort], existing_chains: Iterable[str]) -> str:
    """The nat table's service chains, for `iptables-restore --noflush` (one atomic swap).

    Like kube-proxy: SERVICES matches ClusterIP:port and jumps to a per-service chain that picks
    a backend at random (probability 1/n, 1/(n-1), ...); each backend chain marks hairpin traffic
    (a pod reaching itself through its Service) for masquerade and DNATs to ip:targetPort. A
    ClusterIP without ready backends has no rule: the filter table rejects it.
    """
    lines = ["*nat", f":{SERVICES_CHAIN} - [0:0]"]
    rules: list[str] = []
    wanted: set[str] = {SERVICES_CHAIN}
    for sp in ports:
        if not sp.backends:
            continue
        svc_chain = _chain("SVC", sp.namespace, sp.name, sp.port_name, sp.protocol)
        wanted.add(svc_chain)
        comment = f"{sp.namespace}/{sp.name}:{sp.port_name or sp.port}"
        rules.append(
            f"-A {SERVICES_CHAIN} -d {sp.cluster_ip}/32 -p {sp.protocol} -m {sp.protocol} "
            f'--dport {sp.port} -m comment --comment "{comment}" -j {svc_chain}'
        )
        n = len(sp.backends)
        for i, backend in enumerate(sp.backends):
            sep_chain = _chain(
                "SEP", sp.namespace, sp.name, sp.port_name, sp.protocol, backend.ip, backend.port
            )
            wanted.add(sep_chain)
            if i < n - 1:
                probability = f"--probability {1 / (n - i):.10f}"
                rules.append(f"-A {svc_chain} -m statistic --mode random {probability} -j {sep_chain}")
            else:
                rules.append(f"-A {svc_chain} -j {sep_chain}")
            rules.append(f"-A {sep_chain} -s {backend.ip}/32 -j MARK --set-xmark {HAIRPIN_MARK}")
            rules.append(
                f"-A {sep_chain} -p {sp.protocol} -m {sp.protocol} -j DNAT "
                f"--to-destination {backend.ip}:{backend.port}"
            )
    managed = {c for c in existing_chains if c.startswith((f"{CHAIN_PREFIX}SVC-", f"{CHAIN_PREFIX}SEP-"))}
    stale = sorted(managed - wanted)
    lines += [f":{c} - [0:0]" for c in sorted(wanted - {SERVICES_CHAIN}) + stale]
    lines += rules
    lines += [f"-X {c}" for c in stale]
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def service_names(namespace: str, name: str, pod_namespace: str) -> list[str]:
    """The names a pod in `pod_namespace` resolves for a Service (short name only in its own ns)."""
    fq = f"{name}.{namespace}.svc"
    names = [f"{fq}.{CLUSTER_DOMAIN}", fq, f"{name}.{namespace}"]
    if namespace == pod_namespace:
        names.append(name)
    return names


def hosts_file(
    pod_name: str, pod_ip: str, pod_namespace: str, services: Iterable[JSON], slices: list[JSON]
) -> str:
    """/etc/hosts for one pod: itself, then every Service (headless: each ready endpoint)."""
    lines = [
        "# Written by the mesh lab node agent (a stand-in for cluster DNS).",
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        f"{pod_ip}\t{pod_name}",
    ]
    for svc in sorted(services, key=lambda s: (s["metadata"]["namespace"], s["metadata"]["name"])):
        meta, spec = svc["metadata"], svc.get("spec", {})
        names = " ".join(service_names(meta["namespace"], meta["name"], pod_namespace))
        ip = spec.get("clusterIP")
        if spec.get("type") == "ExternalName":
            continue
        if ip and ip != "None":
            lines.append(f"{ip}\t{names}")
            continue
        seen: set[str] = set()
        for backends in ready_backends(svc, slices).values():
            for b in backends:
                if b.ip not in seen:
                    seen.add(b.ip)
                    lines.append(f"{b.ip}\t{names}")
    return "\n".join(lines) + "\n"
