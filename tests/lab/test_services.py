"""Services → iptables and /etc/hosts: the pure translation (no root needed)."""

from __future__ import annotations

from typing import Any

from lab.config import CHAIN_PREFIX
from lab.services import hosts_file, render_nat, service_ports


def service(name: str, ns: str, ip: str, ports: list[dict[str, Any]]) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": ns}, "spec": {"clusterIP": ip, "ports": ports}}


def endpoint_slice(
    svc: str, ns: str, port_name: str, port: int, eps: list[tuple[str, bool]]
) -> dict[str, Any]:
    return {
        "metadata": {"namespace": ns, "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4",
        "ports": [{"name": port_name, "port": port, "protocol": "TCP"}],
        "endpoints": [{"addresses": [ip], "conditions": {"ready": ready}} for ip, ready in eps],
    }


def test_ready_endpoints_get_random_dnat_with_target_ports() -> None:
    svcs = [service("web", "demo", "10.96.0.10", [{"name": "http", "port": 80, "targetPort": "http"}])]
    slices = [endpoint_slice("web", "demo", "http", 8080, [("10.244.0.3", True), ("10.244.0.2", True),
                                                           ("10.244.0.4", False)])]  # fmt: skip
    text = render_nat(service_ports(svcs, slices), [])
    assert "-d 10.96.0.10/32 -p tcp -m tcp --dport 80" in text
    assert "--to-destination 10.244.0.2:8080" in text and "--to-destination 10.244.0.3:8080" in text
    assert "10.244.0.4" not in text, "a not-ready endpoint gets no traffic"
    assert text.count("--probability 0.5") == 1, "two backends: the first with 1/2, the second the rest"
    assert "-s 10.244.0.2/32 -j MARK" in text, "hairpin traffic is marked for masquerade"
    assert text.startswith("*nat\n") and text.endswith("COMMIT\n")


def test_a_service_without_ready_endpoints_has_no_dnat() -> None:
    svcs = [service("web", "demo", "10.96.0.10", [{"name": "http", "port": 80}])]
    text = render_nat(service_ports(svcs, []), [])
    assert "10.96.0.10" not in text


def test_stale_chains_are_flushed_and_deleted() -> None:
    stale = f"{CHAIN_PREFIX}SVC-0123456789ABCDEF"
    text = render_nat([], [stale, f"{CHAIN_PREFIX}SERVICES", "KUBE-OTHER"])
    assert f":{stale} - [0:0]" in text and f"-X {stale}" in text
    assert "KUBE-OTHER" not in text


def test_hosts_names_services_like_cluster_dns() -> None:
    svcs = [
        service("web", "demo", "10.96.0.10", [{"port": 80}]),
        service("db", "other", "10.96.0.11", [{"port": 5432}]),
    ]
    text = hosts_file("client-1", "10.244.0.9", "demo", svcs, [])
    assert "10.244.0.9\tclient-1" in text
    assert "10.96.0.10\tweb.demo.svc.cluster.local web.demo.svc web.demo web\n" in text
    assert "10.96.0.11\tdb.other.svc.cluster.local db.other.svc db.other\n" in text, (
        "short names only in own ns"
    )


def test_headless_services_resolve_to_ready_endpoints() -> None:
    svcs = [service("db", "demo", "None", [{"name": "pg", "port": 5432}])]
    slices = [endpoint_slice("db", "demo", "pg", 5432, [("10.244.0.5", True), ("10.244.0.6", False)])]
    text = hosts_file("c", "10.244.0.9", "demo", svcs, slices)
    assert "10.244.0.5\tdb.demo.svc.cluster.local" in text and "10.244.0.6" not in text
