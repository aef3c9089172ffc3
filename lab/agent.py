"""The lab's node agent: kubelet, scheduler and kube-proxy for one node, in one process.

- registers the Node `lab-node` (Ready) and binds every pending pod to it;
- runs each bound pod with a `PodRunner` (pods.py), stops it when the pod is deleted, then
  removes the pod object (as the kubelet does after the grace period);
- keeps the host's Service DNAT rules and every pod's /etc/hosts in sync with Services and
  EndpointSlices (services.py);
- serves container logs (`kubectl logs`) and port-forward over WebSocket or SPDY/3.1
  (`pods/portforward`, `kubectl port-forward`; see portforward.py) to the API server on the
  bridge address.

Run by `lab up` as `python -m lab.agent <run dir>`. Each watch loop survives API errors (it
relists), and each pod fails alone.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import signal
import socket
import ssl
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from lab import network, portforward, services
from lab.config import API_PORT, BRIDGE_IP, KUBELET_PORT, NODE_NAME, POD_CIDR, run, versions
from lab.kube import ERRORS, MERGE_PATCH, ApiException, Kube, data, message, watch
from lab.pods import PodRunner, now_rfc3339

JSON = dict[str, Any]
log = logging.getLogger("lab.agent")


class IpAllocator:
    """Pod addresses from the pod range, never the bridge's, not reused while another pod has it."""

    def __init__(self) -> None:
        self.used: set[str] = set()
        self.next = int(BRIDGE_IP) + 1
        self.lock = threading.Lock()

    def allocate(self) -> str:
        with self.lock:
            first, last = int(POD_CIDR.network_address) + 2, int(POD_CIDR.broadcast_address) - 1
            for _ in range(last - first + 1):
                ip = str(ipaddress.ip_address(self.next))
                self.next = self.next + 1 if self.next < last else first
                if ip not in self.used:
                    self.used.add(ip)
                    return ip
        raise RuntimeError("pod range exhausted")

    def release(self, ip: str) -> None:
        with self.lock:
            self.used.discard(ip)


class Agent:
    def __init__(self, run_dir: Path) -> None:
        pki = run_dir / "pki"
        self.run_dir = run_dir
        self.kube = Kube.as_user(f"https://{BRIDGE_IP}:{API_PORT}", pki, "node-agent")
        self.ips = IpAllocator()
        self.runners: dict[str, PodRunner] = {}
        self.lock = threading.Lock()
        self.services_changed = threading.Event()
        self.services_changed.set()
        self.last_services: list[JSON] = []
        self.last_slices: list[JSON] = []

    # --- node -------------------------------------------------------------------------------
    def register_node(self) -> None:
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": NODE_NAME,
                "labels": {
                    "kubernetes.io/hostname": NODE_NAME,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                },
            },
            "spec": {"podCIDR": str(POD_CIDR), "podCIDRs": [str(POD_CIDR)]},
        }
        with contextlib.suppress(ApiException):
            data(self.kube.core.create_node, node)
        stamp = now_rfc3339()
        kube = versions()["KUBE_VERSION"]
        status = {
            "capacity": {"cpu": "2", "memory": "8Gi", "pods": "250", "ephemeral-storage": "20Gi"},
            "allocatable": {"cpu": "2", "memory": "8Gi", "pods": "250", "ephemeral-storage": "20Gi"},
            "addresses": [{"type": "InternalIP", "address": str(BRIDGE_IP)},
                          {"type": "Hostname", "address": NODE_NAME}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": KUBELET_PORT}},
            "nodeInfo": {
                "kubeletVersion": f"{kube}-lab", "kubeProxyVersion": f"{kube}-lab",
                "operatingSystem": "linux", "architecture": "amd64",
                "containerRuntimeVersion": "lab://processes", "osImage": "mesh lab node",
                "kernelVersion": "", "machineID": "", "systemUUID": "", "bootID": "",
            },
            "conditions": [
                {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "lab node is ready",
                 "lastHeartbeatTime": stamp, "lastTransitionTime": stamp},
            ],
        }  # fmt: skip
        data(self.kube.core.patch_node_status, NODE_NAME, {"status": status}, _content_type=MERGE_PATCH)

    # --- pods -------------------------------------------------------------------------------
    def on_pod(self, kind: str, pod: JSON) -> None:
        meta, spec = pod["metadata"], pod.get("spec", {})
        uid = meta["uid"]
        if kind == "DELETED":
            runner = self.runners.get(uid)
            if runner:
                runner.request_stop(0.5)
            return
        node = spec.get("nodeName")
        if not node:
            if spec.get("schedulerName", "default-scheduler") == "default-scheduler" and not meta.get(
                "deletionTimestamp"
            ):
                self.bind(pod)
            return
        if node != NODE_NAME:
            return
        with self.lock:
            runner = self.runners.get(uid)
            if runner is None and not meta.get("deletionTimestamp"):
                if pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
                    return
                runner = PodRunner(
                    self.kube, pod, self.ips.allocate(), self.run_dir, self.on_runner_gone, self.hosts_for
                )
                self.runners[uid] = runner
                runner.start()
                self.services_changed.set()
                return
        if runner is not None and meta.get("deletionTimestamp"):
            runner.request_stop(float(meta.get("deletionGracePeriodSeconds") or 0))
        elif runner is None and meta.get("deletionTimestamp"):
            self.finalize_delete(pod)

    def bind(self, pod: JSON) -> None:
        meta = pod["metadata"]
        body = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
            "target": {"apiVersion": "v1", "kind": "Node", "name": NODE_NAME},
        }
        try:
            data(self.kube.core.create_namespaced_pod_binding, meta["name"], meta["namespace"], body)
        except ApiException as err:
            if err.status not in (403, 404, 409):  # 403: its namespace is being deleted
                log.warning("binding %s/%s: %s", meta["namespace"], meta["name"], message(err))

    def on_runner_gone(self, runner: PodRunner) -> None:
        with self.lock:
            self.runners.pop(runner.uid, None)
        self.ips.release(runner.ip)
        self.services_changed.set()
        try:
            pod = data(self.kube.core.read_namespaced_pod, runner.name, runner.namespace)
        except ERRORS:
            return
        if pod["metadata"]["uid"] == runner.uid and pod["metadata"].get("deletionTimestamp"):
            self.finalize_delete(pod)

    def finalize_delete(self, pod: JSON) -> None:
        """The kubelet's last word on a deleted pod: its processes are gone, remove the object."""
        meta = pod["metadata"]
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
                "preconditions": {"uid": meta["uid"]}}  # fmt: skip
        with contextlib.suppress(ApiException):
            data(self.kube.core.delete_namespaced_pod, meta["name"], meta["namespace"], body=body)

    # --- list + watch -----------------------------------------------------------------------
    def informer(self, list_call: Callable[..., Any], handler: Callable[[str, JSON], None]) -> None:
        """List, then watch from the list's resourceVersion; relist on any error. Never returns."""
        while True:
            try:
                listing = data(list_call)
                for item in listing.get("items", []):
                    self._safe(handler, "ADDED", item)
                rv = listing["metadata"]["resourceVersion"]
                while True:
                    for event in watch(list_call, rv):
                        obj = event.get("object", {})
                        if event.get("type") == "ERROR":
                            raise ApiException(
                                status=int(obj.get("code", 500)), reason=str(obj.get("message"))
                            )
                        rv = obj.get("metadata", {}).get("resourceVersion", rv)
                        if event.get("type") != "BOOKMARK":
                            self._safe(handler, event["type"], obj)
            except Exception as err:
                log.info("watch %s: %s (relisting)", list_call.__name__, message(err))
                time.sleep(0.5)

    @staticmethod
    def _safe(handler: Callable[[str, JSON], None], kind: str, obj: JSON) -> None:
        try:
            handler(kind, obj)
        except Exception:
            log.exception("handling %s %s", kind, obj.get("metadata", {}).get("name"))

    # --- services (kube-proxy + DNS stand-in) -----------------------------------------------
    def service_syncer(self) -> None:
        last_rules, last_hosts = "", dict[str, str]()
        while True:
            self.services_changed.wait(30)
            time.sleep(0.05)  # let a burst of events settle into one sync
            self.services_changed.clear()
            try:
                svcs = data(self.kube.core.list_service_for_all_namespaces)["items"]
                slices = data(self.kube.discovery.list_endpoint_slice_for_all_namespaces)["items"]
                self.last_services, self.last_slices = svcs, slices
                rules = services.render_nat(services.service_ports(svcs, slices), network.nat_chains())
                if rules != last_rules:
                    run("iptables-restore", "-w", "5", "--noflush", input=rules)
                    last_rules = rules
                with self.lock:
                    runners = list(self.runners.values())
                hosts: dict[str, str] = {}
                for r in runners:
                    if not r.sandbox_ready:
                        continue
                    text = services.hosts_file(r.name, r.ip, r.namespace, svcs, slices)
                    hosts[r.uid] = text
                    if last_hosts.get(r.uid) != text:
                        _write_in_place(r.hosts_target(), text)
                last_hosts = hosts
            except Exception as err:
                log.warning("service sync: %s", err)
                last_rules = ""
                self.services_changed.set()
                time.sleep(1)

    def hosts_for(self, runner: PodRunner) -> str:
        return services.hosts_file(
            runner.name, runner.ip, runner.namespace, self.last_services, self.last_slices
        )

    def on_service_event(self, kind: str, obj: JSON) -> None:
        self.services_changed.set()


def _write_in_place(path: Path, text: str) -> None:
    """Rewrite without replacing the inode: it is bind-mounted over /etc/hosts in the pod."""
    with contextlib.suppress(FileNotFoundError), open(path, "r+") as fh:
        fh.seek(0)
        fh.write(text)
        fh.truncate()


class KubeletHandler(BaseHTTPRequestHandler):
    """The kubelet endpoints the API server calls: logs (`kubectl logs`) and port-forward."""

    agent: Agent
    PORT_FORWARD_IDLE_S = 600.0  # the kubelet's streaming idle timeout is 4 h; the lab's tests are short

    def _runner(self, ns: str, pod: str) -> PodRunner | None:
        with self.agent.lock:
            return next((r for r in self.agent.runners.values() if r.namespace == ns and r.name == pod), None)

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        parts = url.path.strip("/").split("/")
        if len(parts) == 3 and parts[0] == "portForward":
            self.port_forward(parts[1], parts[2], urllib.parse.parse_qs(url.query))
            return
        if len(parts) != 4 or parts[0] != "containerLogs":
            self.send_error(
                404, "only /containerLogs/<ns>/<pod>/<container> and /portForward/<ns>/<pod> are served"
            )
            return
        _, ns, pod, container = parts
        runner = self._runner(ns, pod)
        if runner is None:
            self.send_error(404, f"pod {ns}/{pod} is not running on {NODE_NAME}")
            return
        path = runner.log_dir / f"{container}.log"
        try:
            lines = path.read_bytes().splitlines(keepends=True)
        except OSError:
            self.send_error(404, f"no logs for container {container}")
            return
        query = urllib.parse.parse_qs(url.query)
        if "tailLines" in query:
            lines = lines[-int(query["tailLines"][0]) :] if int(query["tailLines"][0]) > 0 else []
        body = b"".join(lines)
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        if query.get("follow", ["false"])[0] != "true":
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_header("Connection", "close")  # -f: stream until the pod stops or the client leaves
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()
        with contextlib.suppress(OSError), open(path, "rb") as fh:
            fh.seek(0, 2)
            while not runner.stop_event.is_set():
                chunk = fh.read()
                if chunk:
                    self.wfile.write(chunk)
                    self.wfile.flush()
                else:
                    time.sleep(0.2)

    do_POST = do_GET  # the API server may forward the port-forward upgrade as a POST

    def port_forward(self, ns: str, pod: str, query: dict[str, list[str]]) -> None:
        """`/portForward/<ns>/<pod>`, upgraded to a WebSocket (`?ports=P`) or to SPDY/3.1 (each
        stream names its port): lab/portforward.py."""
        upgrade = self.headers.get("Upgrade", "").lower()
        try:
            if upgrade not in ("websocket", portforward.SPDY_UPGRADE.lower()):
                raise portforward.PortForwardError(400, "port-forward needs a WebSocket or SPDY/3.1 upgrade")
            runner = self._runner(ns, pod)
            if upgrade == "websocket":
                protocol = portforward.choose_protocol(self.headers.get("Sec-WebSocket-Protocol", ""))
                ports = portforward.parse_ports(query)
                answer = portforward.handshake_response(self.headers.get("Sec-WebSocket-Key", ""), protocol)
            else:
                answer = portforward.spdy_handshake_response(self.headers)
            if runner is None:
                raise portforward.PortForwardError(404, f"pod {ns}/{pod} is not running on {NODE_NAME}")
        except portforward.PortForwardError as exc:
            self.send_error(exc.status, str(exc))
            return
        sock = portforward.switch_protocols(self, answer)
        netns = f"/var/run/netns/{runner.netns}"

        def connect(port: int) -> socket.socket:
            return portforward.connect_in_netns(netns, port)

        if upgrade == "websocket":
            portforward.relay(sock, ports, connect, self.PORT_FORWARD_IDLE_S)
        else:
            portforward.spdy_relay(sock, connect, self.PORT_FORWARD_IDLE_S)

    def log_message(self, format: str, *args: Any) -> None:
        return


def serve_logs(agent: Agent, run_dir: Path) -> None:
    pki = run_dir / "pki"
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki / "ca.crt"))
    ctx.load_cert_chain(str(pki / "kubelet.crt"), str(pki / "kubelet.key"))
    ctx.verify_mode = ssl.CERT_REQUIRED  # only the API server (client cert from the lab CA)
    KubeletHandler.agent = agent
    server = ThreadingHTTPServer((str(BRIDGE_IP), KUBELET_PORT), KubeletHandler)
    server.daemon_threads = True
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    server.serve_forever()


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_dir = Path(argv[0])
    agent = Agent(run_dir)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    for attempt in range(100):
        try:
            agent.register_node()
            break
        except ERRORS as err:
            if attempt == 99:
                raise
            log.info("registering node: %s", message(err))
            time.sleep(0.2)
    threads = [
        threading.Thread(target=agent.service_syncer, name="services", daemon=True),
        threading.Thread(
            target=agent.informer,
            args=(agent.kube.core.list_service_for_all_namespaces, agent.on_service_event),
            daemon=True,
        ),
        threading.Thread(
            target=agent.informer,
            args=(agent.kube.discovery.list_endpoint_slice_for_all_namespaces, agent.on_service_event),
            daemon=True,
        ),
        threading.Thread(target=serve_logs, args=(agent, run_dir), name="logs", daemon=True),
    ]
    for t in threads:
        t.start()
    log.info("node %s registered; running pods", NODE_NAME)
    agent.informer(agent.kube.core.list_pod_for_all_namespaces, agent.on_pod)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
