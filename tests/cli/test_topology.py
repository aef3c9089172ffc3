"""The topologies' pure parts (kubectl_mesh.demo.topology: the definitions, the demo's plan, the
manifests) and their app (topoapp) on real loopback sockets: what each app answered and counted
is what its rule and its callees' answers say."""

from __future__ import annotations

import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from http.server import ThreadingHTTPServer

import pytest

from kubectl_mesh.contract import INJECT_LABEL, SKIP_INBOUND_PORTS_ANNOTATION
from kubectl_mesh.demo import topoapp
from kubectl_mesh.demo.plan import PORTS_PER_DEPLOYMENT, prometheus_config
from kubectl_mesh.demo.topology import CLIENT, ENTRY, TOPOLOGIES, build_plan, manifests, ports_needed
from lab.runtime import runtime_env


def test_each_topology_starts_callees_first_and_reaches_every_workload() -> None:
    for t in TOPOLOGIES.values():
        order = t.start_order()
        assert sorted(order) == sorted(t.names)
        if t.name != "cycle":
            for w in t.workloads:
                assert all(order.index(c) < order.index(w.name) for c in w.calls), (t.name, order)
        for name in t.names:
            path = t.path_to(name) if name != ENTRY else ()
            assert (path[-1:] or (ENTRY,))[0] == name
    assert TOPOLOGIES["depth3"].path_to("payments") == ("api", "orders", "payments")
    assert TOPOLOGIES["cycle"].path_to("ledger") == ("gateway", "ledger")
    assert [w.name for w in TOPOLOGIES["two-leaves"].workloads if w.fail_every] == ["search", "inventory"]


@pytest.mark.parametrize("name", list(TOPOLOGIES))
def test_the_demo_plan_wires_each_app_through_its_proxy_to_its_callees_proxies(name: str) -> None:
    t = TOPOLOGIES[name]
    ports = list(range(30000, 30000 + ports_needed(t)))
    plan = build_plan(t, ports, "/tmp/x", request_rate=3)
    assert [p.deployment for p in plan.pods] == [*t.start_order(), CLIENT]
    assert len(ports) == PORTS_PER_DEPLOYMENT * len(plan.pods) + 1 and plan.prometheus_port == ports[-1]
    inbound = {p.deployment: p.ports.inbound for p in plan.pods}
    for pod in plan.pods:
        env = pod.app.env
        assert env["http_proxy"] == f"http://127.0.0.1:{pod.ports.outbound}"
        calls = topoapp.parse_calls(env["CALLS"])
        expected = (ENTRY,) if pod.deployment == CLIENT else t.workload(pod.deployment).calls
        assert calls == {c: f"127.0.0.1:{inbound[c]}" for c in expected}
        argv = pod.proxy.argv
        assert argv[argv.index("--namespace") + 1] == name
        assert argv[argv.index("--inbound-forward") + 1].endswith(
            str(pod.ports.counters if pod.deployment == CLIENT else pod.ports.app)
        )
    assert f'"namespace": "{name}"' in prometheus_config(plan)
    with pytest.raises(ValueError, match="distinct ports"):
        build_plan(t, ports[:-1], "/tmp/x")


@pytest.mark.parametrize("name", list(TOPOLOGIES))
def test_the_manifests_are_valid_kubernetes_and_keep_the_counters_out_of_the_mesh(name: str) -> None:
    docs = manifests(TOPOLOGIES[name])
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    for doc in docs:
        kubernetes_validate.validate(doc, "1.30", strict=True)
    (namespace,) = [d for d in docs if d["kind"] == "Namespace"]
    assert namespace["metadata"] == {"name": name, "labels": {INJECT_LABEL: "enabled"}}
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    services = {d["metadata"]["name"] for d in docs if d["kind"] == "Service"}
    assert set(deployments) == {*TOPOLOGIES[name].names, CLIENT} and services == set(TOPOLOGIES[name].names)
    for d in deployments.values():
        template = d["spec"]["template"]
        (container,) = template["spec"]["containers"]
        env = {e["name"]: e["value"] for e in container["env"]}
        assert template["metadata"]["annotations"][SKIP_INBOUND_PORTS_ANNOTATION] == env["COUNTERS_PORT"]
        assert container["command"][:3] == ["python3", "-m", "kubectl_mesh.demo.topoapp"]
        assert all(
            address.split(":")[0] in services for address in topoapp.parse_calls(env["CALLS"]).values()
        )


# --- the app, on loopback ------------------------------------------------------------------


@pytest.fixture
def served() -> Iterator[list[ThreadingHTTPServer]]:
    servers: list[ThreadingHTTPServer] = []
    yield servers
    for server in servers:
        server.shutdown()
        server.server_close()


def _serve(app: topoapp.App, servers: list[ThreadingHTTPServer]) -> str:
    server = topoapp.serve(app, "127.0.0.1", 0)
    servers.append(server)
    return f"127.0.0.1:{server.server_address[1]}"


def test_failures_travel_up_and_each_app_counts_its_own(served: list[ThreadingHTTPServer]) -> None:
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    leaf = topoapp.App({}, fail_every=3, opener=direct)
    middle = topoapp.App({"leaf": _serve(leaf, served)}, opener=direct)
    client = topoapp.App({"middle": _serve(middle, served)}, opener=direct)
    client.drive(rate=200, stop=threading.Event(), requests=30)
    c, m, leaf_counts = client.counters.snapshot(), middle.counters.snapshot(), leaf.counters.snapshot()
    assert c["loops"] == 30 and c["sent"] == {"middle": {"requests": 30, "failed": 10}}
    assert (m["served"], m["failed"], m["own_failures"]) == (30, 10, 0)
    assert m["sent"] == {"leaf": {"requests": 30, "failed": 10}}
    assert (leaf_counts["served"], leaf_counts["failed"], leaf_counts["own_failures"]) == (30, 10, 10)


def test_a_cycle_stops_after_the_hop_limit(served: list[ThreadingHTTPServer]) -> None:
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    a, b = topoapp.App({}, opener=direct), topoapp.App({}, opener=direct)
    a.calls = {"b": _serve(b, served)}
    b.calls = {"a": _serve(a, served)}
    assert a.handle(0) == 200
    # a(0) → b(1) → a(2) → b(3) → a(4), which calls no one
    assert (a.counters.served, b.counters.served) == (3, 2)


def test_bad_settings_are_one_line_and_exit_1() -> None:
    for env, message in (
        ({"CALLS": "nope"}, "is not name=host:port"),
        ({"FAIL_EVERY": "x"}, "invalid literal"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "kubectl_mesh.demo.topoapp", "serve"],
            env=runtime_env(COUNTERS_PORT="0", PORT="0", **env), capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert done.returncode == 1 and message in done.stderr and len(done.stderr.splitlines()) == 1, (
            done.stderr
        )
    done = subprocess.run([sys.executable, "-m", "kubectl_mesh.demo.topoapp"], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.startswith("usage:")
