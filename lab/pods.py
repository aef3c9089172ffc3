"""One pod on the lab node: its namespace, volumes, containers (as processes) and status.

A `PodRunner` owns one thread that does what the kubelet does for one pod: set up the sandbox
(network namespace, /etc/hosts), make the volumes, run init containers in order, start native
sidecars and wait for their startup probes, start the app containers, then supervise: restarts
with back-off, probes, status reports. Every failure is caught and reported in the pod's status;
nothing here may take the node agent down.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab import network
from lab.config import BRIDGE_IP, KUBERNETES_SERVICE_IP, LOG_DIR, NETNS_PREFIX, VETH_PREFIX, pod_bin_dir
from lab.kube import ERRORS, MERGE_PATCH, ApiException, Kube, data, message
from lab.probes import Probe
from lab.volumes import VolumeError, field_value, materialize

JSON = dict[str, Any]
LAUNCHER = Path(__file__).resolve().parent / "launch.py"
# A container spec the lab cannot run: a malformed field, or a reference the API server refused.
SPEC_ERRORS: tuple[type[Exception], ...] = (KeyError, TypeError, ValueError, *ERRORS)
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BACKOFF_START, BACKOFF_MAX = 1.0, 30.0
TICK = 0.2
log = logging.getLogger("lab.pods")


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class PodSetupError(Exception):
    """The pod cannot run (yet): reason and message go into the container's waiting state."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(value: str, env: dict[str, str]) -> str:
    """The kubelet's $(VAR) expansion in env values, command and args ($$ escapes)."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _VAR.sub(sub, value)


@dataclass
class Container:
    """A container's spec and what happened to it so far (the stuff of its ContainerStatus)."""

    spec: JSON
    kind: str  # init | sidecar | app
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    restart_count: int = 0
    state: JSON = field(default_factory=lambda: {"waiting": {"reason": "PodInitializing"}})
    last_state: JSON = field(default_factory=dict)
    started_at: float = 0.0
    backoff: float = BACKOFF_START
    next_start: float = 0.0
    probes: dict[str, Probe] = field(default_factory=dict)
    done: bool = False  # an init container that completed, or a container that will not restart

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def started(self) -> bool:
        if not self.running:
            return False
        startup = self.probes.get("startup")
        return startup is None or bool(startup.ever_succeeded)

    @property
    def ready(self) -> bool:
        if not self.started:
            return False
        readiness = self.probes.get("readiness")
        return readiness is None or readiness.result is True


class PodRunner:
    """Runs one pod until it is deleted; reports its status through the API."""

    def __init__(
        self,
        kube: Kube,
        pod: JSON,
        ip: str,
        run_dir: Path,
        on_gone: Any,
        hosts_text: Callable[[PodRunner], str],
    ) -> None:
        self.kube = kube
        self.pod = pod
        self.ip = ip
        meta = pod["metadata"]
        self.uid: str = meta["uid"]
        self.name: str = meta["name"]
        self.namespace: str = meta["namespace"]
        short = self.uid.replace("-", "")[:10]
        self.netns = f"{NETNS_PREFIX}{short}"
        self.veth = f"{VETH_PREFIX}{short}"
        self.dir = run_dir / "pods" / self.uid
        self.log_dir = LOG_DIR / "pods" / f"{self.namespace}_{self.name}_{self.uid[:8]}"
        self.mountpoints_file = run_dir / "created-mountpoints"
        self.on_gone = on_gone
        self.hosts_text = hosts_text  # the agent's current /etc/hosts for this pod (Services)
        self.stop_event = threading.Event()
        self.grace = float(pod["spec"].get("terminationGracePeriodSeconds", 30))
        self.start_time = now_rfc3339()
        self.phase = "Pending"
        self.initialized = False
        self.sandbox_ready = False
        self.pod_message: str | None = None
        self.pod_reason: str | None = None
        self.last_status: JSON | None = None
        self.last_conditions: list[JSON] = []
        self.report_retry_at = 0.0
        self.finished = False  # Succeeded or Failed: nothing restarts any more
        spec = pod["spec"]
        self.containers: list[Container] = []
        for c in spec.get("initContainers") or []:
            kind = "sidecar" if c.get("restartPolicy") == "Always" else "init"
            self.containers.append(Container(c, kind, self.log_dir / f"{c['name']}.log"))
        for c in spec.get("containers") or []:
            self.containers.append(Container(c, "app", self.log_dir / f"{c['name']}.log"))
        self.thread = threading.Thread(
            target=self._main, name=f"pod-{self.namespace}/{self.name}", daemon=True
        )

    # --- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        self.thread.start()

    def request_stop(self, grace: float | None = None) -> None:
        if grace is not None:
            self.grace = min(self.grace, grace)
        self.stop_event.set()

    def hosts_target(self) -> Path:
        return network.ETC_NETNS / self.netns / "hosts"

    def _main(self) -> None:
        try:
            self._run()
        except Exception as err:  # the agent must outlive any pod
            log.exception("pod %s/%s crashed the runner", self.namespace, self.name)
            self.pod_reason, self.pod_message = "NodeError", f"lab node: {err}"
            with contextlib.suppress(Exception):
                self._report()
        finally:
            for step in (self._stop_all, self._cleanup):
                try:
                    step()
                except Exception:
                    log.exception("pod %s/%s: %s", self.namespace, self.name, step.__name__)
            self.on_gone(self)

    def _run(self) -> None:
        self._setup_sandbox()
        self._report()
        while not self.stop_event.is_set():
            try:
                self._setup_volumes()
                break
            except (VolumeError, PodSetupError) as err:
                self._set_waiting_all("ContainerCreating", str(err))
                self._report()
            except ERRORS as err:  # the API server's answer or the transport's: try again
                log.warning("pod %s/%s volumes: %s", self.namespace, self.name, message(err))
            self.stop_event.wait(2.0)
        while not self.stop_event.is_set():
            self._tick()
            self._report()
            self.stop_event.wait(TICK)

    # --- sandbox and volumes ----------------------------------------------------------------
    def _setup_sandbox(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        etc = network.ETC_NETNS / self.netns
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "hosts").write_text(self.hosts_text(self))
        # No DNS server in the lab: names come from hosts (kept in sync by the service syncer);
        # anything else fails fast on loopback instead of reaching the host's resolver.
        (etc / "resolv.conf").write_text(
            f"nameserver 127.0.0.1\nsearch {self.namespace}.svc.cluster.local svc.cluster.local "
            "cluster.local\n"
            "options ndots:5 timeout:1 attempts:1\n"
        )
        network.create_pod_netns(self.netns, self.veth, self.ip)
        self.sandbox_ready = True
        self.pod.setdefault("status", {})["podIP"] = self.ip
        self.pod["status"]["hostIP"] = str(BRIDGE_IP)

    def _setup_volumes(self) -> None:
        vol_root = self.dir / "volumes"
        for vol in self.pod["spec"].get("volumes") or []:
            materialize(self.kube, self.pod, vol, vol_root / vol["name"])

    def _mounts(self, container: JSON) -> list[list[object]]:
        vol_root = self.dir / "volumes"
        names = {v["name"] for v in self.pod["spec"].get("volumes") or []}
        mounts: list[list[object]] = []
        for m in container.get("volumeMounts") or []:
            if m["name"] not in names:
                raise PodSetupError(
                    "CreateContainerConfigError", f"volume {m['name']} is not defined in the pod"
                )
            src = vol_root / m["name"]
            if m.get("subPath"):
                src = src / m["subPath"]
                if not src.exists():
                    src.mkdir(parents=True, mode=0o777)
            dst = Path(m["mountPath"])
            self._ensure_mountpoint(dst, is_dir=src.is_dir())
            mounts.append([str(src), str(dst), bool(m.get("readOnly"))])
        return mounts

    def _ensure_mountpoint(self, dst: Path, is_dir: bool) -> None:
        """Mount targets must exist on the host; record the ones the lab creates, for teardown."""
        created: list[Path] = []
        for parent in reversed([dst, *dst.parents] if is_dir else list(dst.parents)):
            if not parent.exists():
                parent.mkdir(mode=0o755)
                created.append(parent)
        if not is_dir and not dst.exists():
            dst.touch()
            created.append(dst)
        if created:
            with open(self.mountpoints_file, "a") as fh:
                fh.write("".join(f"{p}\n" for p in created))

    # --- environment ------------------------------------------------------------------------
    def _env(self, c: JSON) -> dict[str, str]:
        from lab.runtime import runtime_pythonpath  # the code under test, readable by any UID

        env: dict[str, str] = {
            # The venv (mesh-proxy, gunicorn), then the lab's binaries (upstream prometheus, helm).
            "PATH": f"{Path(sys.executable).parent}:{pod_bin_dir()}:{SYSTEM_PATH}",
            "PYTHONPATH": str(runtime_pythonpath()),
            "PYTHONDONTWRITEBYTECODE": "1",
            "HOSTNAME": self.name,
            "HOME": "/root" if self._uid(c)[0] in (None, 0) else "/",
            "KUBERNETES_SERVICE_HOST": str(KUBERNETES_SERVICE_IP),
            "KUBERNETES_SERVICE_PORT": "443",
            "KUBERNETES_SERVICE_PORT_HTTPS": "443",
            "KUBERNETES_PORT": f"tcp://{KUBERNETES_SERVICE_IP}:443",
            "KUBERNETES_PORT_443_TCP": f"tcp://{KUBERNETES_SERVICE_IP}:443",
            "KUBERNETES_PORT_443_TCP_PROTO": "tcp",
            "KUBERNETES_PORT_443_TCP_PORT": "443",
            "KUBERNETES_PORT_443_TCP_ADDR": str(KUBERNETES_SERVICE_IP),
        }
        for src in c.get("envFrom") or []:
            prefix = src.get("prefix", "")
            if "configMapRef" in src or "secretRef" in src:
                kind = "configMap" if "configMapRef" in src else "secret"
                ref = src["configMapRef" if kind == "configMap" else "secretRef"]
                data = self._ref_data(kind, ref["name"], bool(ref.get("optional")))
                env.update({prefix + k: v for k, v in data.items()})
        for e in c.get("env") or []:
            if "value" in e:
                env[e["name"]] = expand(str(e["value"]), env)
            elif "valueFrom" in e:
                value = self._value_from(e["valueFrom"], c)
                if value is not None:
                    env[e["name"]] = value
            else:
                env[e["name"]] = ""
        return env

    def _ref_data(self, kind: str, name: str, optional: bool) -> dict[str, str]:
        import base64

        core = self.kube.core
        read = core.read_namespaced_config_map if kind == "configMap" else core.read_namespaced_secret
        try:
            obj = data(read, name, self.namespace)
        except ApiException as err:
            if err.status == 404 and optional:
                return {}
            if err.status == 404:
                raise PodSetupError("CreateContainerConfigError", f'{kind} "{name}" not found') from err
            raise
        values = obj.get("data") or {}
        if kind == "secret":
            return {k: base64.b64decode(v).decode(errors="replace") for k, v in values.items()}
        return {k: str(v) for k, v in values.items()}

    def _value_from(self, src: JSON, c: JSON) -> str | None:
        if "fieldRef" in src:
            try:
                return field_value(self.pod, src["fieldRef"]["fieldPath"])
            except VolumeError as err:
                raise PodSetupError("CreateContainerConfigError", str(err)) from err
        for kind, key in (("configMap", "configMapKeyRef"), ("secret", "secretKeyRef")):
            if key in src:
                ref = src[key]
                data = self._ref_data(kind, ref["name"], bool(ref.get("optional")))
                if ref["key"] not in data:
                    if ref.get("optional"):
                        return None
                    raise PodSetupError(
                        "CreateContainerConfigError",
                        f'key "{ref["key"]}" not found in {kind} "{ref["name"]}"',
                    )
                return data[ref["key"]]
        if "resourceFieldRef" in src:
            return "1"  # no resource accounting on the lab node
        return None

    def _uid(self, c: JSON) -> tuple[int | None, int | None, list[int]]:
        pod_sc = self.pod["spec"].get("securityContext") or {}
        sc = c.get("securityContext") or {}
        uid = sc.get("runAsUser", pod_sc.get("runAsUser"))
        gid = sc.get("runAsGroup", pod_sc.get("runAsGroup"))
        groups = list(pod_sc.get("supplementalGroups") or [])
        if pod_sc.get("fsGroup") is not None:
            groups.append(int(pod_sc["fsGroup"]))
        return uid, gid, groups

    # --- containers -------------------------------------------------------------------------
    def _spawn_spec(self, c: JSON, argv_override: list[str] | None = None) -> JSON:
        """Everything the launcher needs; raises PodSetupError when the container cannot start."""
        command = list(c.get("command") or [])
        args = list(c.get("args") or [])
        if argv_override is None and not command:
            raise PodSetupError(
                "CreateContainerError",
                f"container {c['name']} has no command: the lab node runs processes, not images "
                f"({c.get('image', 'no image')}); give the container an explicit command/args",
            )
        env = self._env(c)
        argv = argv_override if argv_override is not None else [expand(a, env) for a in command + args]
        mounts = self._mounts(c)
        exe = self._resolve(argv[0], env["PATH"], mounts)
        if exe is None:
            raise PodSetupError(
                "CreateContainerError",
                f"container {c['name']}: executable {argv[0]!r} not found on the lab node "
                f"(image {c.get('image')})",
            )
        uid, gid, groups = self._uid(c)
        return {
            "mounts": mounts,
            "cwd": c.get("workingDir") or "/",
            "uid": uid,
            "gid": gid if gid is not None else (0 if uid is not None else None),
            "groups": groups,
            "argv": argv,
            "env": env,
        }

    @staticmethod
    def _resolve(exe: str, path: str, mounts: list[list[object]]) -> str | None:
        """Where the executable is, seen from the host (volume mounts translated back)."""
        if "/" in exe:
            candidate = exe
            for src, dst, _ in mounts:
                if exe.startswith(f"{dst}/"):
                    candidate = f"{src}{exe[len(str(dst)) :]}"
            return candidate if os.access(candidate, os.X_OK) else None
        return shutil.which(exe, path=path)

    def _launch(self, spec: JSON, log_path: Path, tag: str) -> subprocess.Popen[bytes]:
        spec_file = self.dir / f"{tag}.json"
        spec_file.write_text(json.dumps(spec))
        spec_file.chmod(0o600)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as out:
            return subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    self.netns,
                    "/usr/bin/python3",
                    "-I",
                    "-S",
                    str(LAUNCHER),
                    str(spec_file),
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _start(self, c: Container) -> None:
        try:
            try:
                spec = self._spawn_spec(c.spec)
            except SPEC_ERRORS as err:  # a spec the lab cannot run
                raise PodSetupError("CreateContainerConfigError", f"lab node: {message(err)}") from err
        except PodSetupError as err:
            c.state = {"waiting": {"reason": err.reason, "message": err.message}}
            if self._restart_policy() == "Never" and c.kind != "sidecar":
                terminated = {"exitCode": 128, "reason": "ContainerCannotRun", "message": err.message}
                c.state = {"terminated": {**terminated, "startedAt": None, "finishedAt": now_rfc3339()}}
                c.done = True
            else:
                c.next_start = time.monotonic() + 5.0
            return
        log.info("%s/%s: starting %s (restart %d)", self.namespace, self.name, c.name, c.restart_count)
        c.proc = self._launch(spec, c.log_path, f"{c.name}-{c.restart_count}")
        c.started_at = time.monotonic()
        c.state = {"running": {"startedAt": now_rfc3339()}}
        c.probes = {}
        for kind in ("startup", "readiness", "liveness"):
            probe_spec = c.spec.get(f"{kind}Probe")
            if probe_spec and (c.kind != "init"):
                c.probes[kind] = Probe(kind, probe_spec, c.spec, self._exec_runner(c.spec))

    def _exec_runner(self, c: JSON) -> Any:
        def run(command: list[str], timeout: float) -> int:
            spec = self._spawn_spec(c, argv_override=command)
            proc = self._launch(spec, self.log_dir / f"{c['name']}.probe.log", f"{c['name']}-probe")
            try:
                return proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(OSError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return -1

        return run

    def _restart_policy(self) -> str:
        return str(self.pod["spec"].get("restartPolicy") or "Always")

    def _should_restart(self, c: Container, code: int) -> bool:
        if c.kind == "sidecar":
            return True
        policy = self._restart_policy()
        if c.kind == "init":
            return code != 0 and policy != "Never"
        return policy == "Always" or (policy == "OnFailure" and code != 0)

    def _reap(self, c: Container, now: float) -> None:
        """A process exited: record it, schedule a restart with back-off or mark it done."""
        assert c.proc is not None
        code = c.proc.returncode
        code = 128 - code if code < 0 else code  # killed by signal N -> 128+N
        started = c.state.get("running", {}).get("startedAt")
        terminated = {
            "exitCode": code,
            "reason": "Completed" if code == 0 else "Error",
            "startedAt": started,
            "finishedAt": now_rfc3339(),
            "containerID": f"lab://{self.uid}/{c.name}/{c.restart_count}",
        }
        with contextlib.suppress(OSError):
            os.killpg(c.proc.pid, signal.SIGKILL)  # leftovers of the container's process group
        c.proc = None
        c.probes = {}
        if c.kind == "init" and code == 0:
            c.state, c.done = {"terminated": terminated}, True
            return
        if not self._should_restart(c, code) or self.stop_event.is_set() or self.finished:
            c.state, c.done = {"terminated": terminated}, True
            return
        if now - c.started_at > 60:
            c.backoff = BACKOFF_START
        c.last_state = {"terminated": terminated}
        c.restart_count += 1
        c.next_start = now + c.backoff
        c.state = {
            "waiting": {
                "reason": "CrashLoopBackOff",
                "message": f"back-off {c.backoff:.0f}s restarting failed container={c.name} pod={self.name}",
            }
        }
        c.backoff = min(c.backoff * 2, BACKOFF_MAX)

    def _tick(self) -> None:
        """One pass of the kubelet's sync loop for this pod."""
        now = time.monotonic()
        for c in self.containers:
            if c.proc is not None and c.proc.poll() is not None:
                self._reap(c, now)
        if not self.initialized:
            self.initialized = self._init_step(now)
        if self.initialized and not self.finished:
            for c in self.containers:
                # App containers, and sidecars that exited after initialization, (re)start.
                if c.kind in ("app", "sidecar") and c.proc is None and not c.done and now >= c.next_start:
                    self._start(c)
        self._probe(now)
        self.phase = self._phase()
        if self.phase in ("Succeeded", "Failed") and not self.finished:
            self.finished = True
            self._stop_sidecars()

    def _init_step(self, now: float) -> bool:
        """Init containers in order; a sidecar starts in its place and must be started to go on."""
        for c in self.containers:
            if c.kind == "app":
                return True
            if c.kind == "init" and c.done:
                if c.state.get("terminated", {}).get("exitCode", 0) != 0:
                    return False  # restartPolicy Never: failed for good
                continue
            if c.proc is None and not c.done and now >= c.next_start:
                self._start(c)
            if c.kind == "sidecar" and c.started:
                continue
            return False
        return True

    def _probe(self, now: float) -> None:
        for c in self.containers:
            if not c.running:
                continue
            startup = c.probes.get("startup")
            if startup and not startup.ever_succeeded:
                if startup.due(now) and startup.run(self.ip, now) is False:
                    self._kill(c, "startup probe failed: " + startup.message)
                continue
            for kind in ("readiness", "liveness"):
                probe = c.probes.get(kind)
                if probe and probe.due(now):
                    result = probe.run(self.ip, now)
                    if kind == "liveness" and result is False:
                        self._kill(c, "liveness probe failed: " + probe.message)
                        break

    def _kill(self, c: Container, why: str) -> None:
        log.info("%s/%s: killing %s: %s", self.namespace, self.name, c.name, why)
        if c.proc is not None:
            self._terminate([c], float(c.spec.get("terminationGracePeriodSeconds", 2)))

    def _phase(self) -> str:
        apps = [c for c in self.containers if c.kind == "app"]
        inits = [c for c in self.containers if c.kind == "init"]
        if any(c.done and c.state.get("terminated", {}).get("exitCode", 0) != 0 for c in inits):
            return "Failed"
        if not self.initialized:
            return "Pending"
        if apps and all(c.done for c in apps):
            codes = [c.state.get("terminated", {}).get("exitCode", 0) for c in apps]
            return "Succeeded" if all(code == 0 for code in codes) else "Failed"
        if any(c.running or c.restart_count > 0 or c.done for c in apps):
            return "Running"
        return "Pending"

    def _set_waiting_all(self, reason: str, message: str) -> None:
        for c in self.containers:
            if c.proc is None and not c.done:
                c.state = {"waiting": {"reason": reason, "message": message}}

    # --- stopping ---------------------------------------------------------------------------
    def _terminate(self, containers: list[Container], grace: float) -> None:
        procs = [c.proc for c in containers if c.proc is not None and c.proc.poll() is None]
        for p in procs:
            with contextlib.suppress(OSError):
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            time.sleep(0.05)
        for p in procs:
            with contextlib.suppress(OSError):
                os.killpg(p.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=2)

    def _stop_sidecars(self) -> None:
        sidecars = [c for c in self.containers if c.kind == "sidecar" and c.running]
        for c in reversed(sidecars):
            self._terminate([c], 2.0)
        for c in sidecars:
            if c.proc is not None:
                self._reap(c, time.monotonic())

    def _stop_all(self) -> None:
        """App containers first (grace period), then sidecars in reverse order, then anything left."""
        self.stop_event.set()
        self._terminate([c for c in self.containers if c.kind in ("app", "init")], self.grace)
        for c in reversed([c for c in self.containers if c.kind == "sidecar"]):
            self._terminate([c], min(self.grace, 5.0))

    def _cleanup(self) -> None:
        if self.sandbox_ready:
            network.delete_pod_netns(self.netns, self.veth)
        else:
            shutil.rmtree(network.ETC_NETNS / self.netns, ignore_errors=True)
        shutil.rmtree(self.dir, ignore_errors=True)

    # --- status -----------------------------------------------------------------------------
    def _container_status(self, c: Container) -> JSON:
        status: JSON = {
            "name": c.name,
            "image": c.spec.get("image", ""),
            "imageID": "",
            "ready": c.ready,
            "started": c.started,
            "restartCount": c.restart_count,
            "state": c.state,
            "lastState": c.last_state,
        }
        if c.proc is not None:
            status["containerID"] = f"lab://{self.uid}/{c.name}/{c.restart_count}"
        return status

    def status(self) -> JSON:
        apps = [c for c in self.containers if c.kind == "app"]
        sidecars = [c for c in self.containers if c.kind == "sidecar"]
        containers_ready = bool(apps) and all(c.ready for c in apps + sidecars)
        if self.phase in ("Succeeded", "Failed"):
            containers_ready = False

        def cond(kind: str, ok: bool, reason: str | None = None) -> JSON:
            out: JSON = {"type": kind, "status": "True" if ok else "False", "lastProbeTime": None}
            if reason and not ok:
                out["reason"] = reason
            return out

        status: JSON = {
            "phase": self.phase,
            "hostIP": str(BRIDGE_IP),
            "hostIPs": [{"ip": str(BRIDGE_IP)}],
            "podIP": self.ip if self.sandbox_ready else None,
            "podIPs": [{"ip": self.ip}] if self.sandbox_ready else None,
            "startTime": self.start_time,
            "conditions": [
                cond("PodReadyToStartContainers", self.sandbox_ready),
                cond("Initialized", self.initialized, "ContainersNotInitialized"),
                cond("Ready", containers_ready, "ContainersNotReady"),
                cond("ContainersReady", containers_ready, "ContainersNotReady"),
                cond("PodScheduled", True),
            ],
            "initContainerStatuses": [self._container_status(c) for c in self.containers if c.kind != "app"],
            "containerStatuses": [self._container_status(c) for c in apps],
            "reason": self.pod_reason,
            "message": self.pod_message,
        }
        return status

    def _report(self) -> None:
        """Send the status when it changed (transition times kept stable, as the kubelet does)."""
        status = self.status()
        if status == self.last_status or time.monotonic() < self.report_retry_at:
            return
        previous = {c["type"]: c for c in self.last_conditions}
        sent = json.loads(json.dumps(status))
        for c in sent["conditions"]:
            old = previous.get(c["type"])
            c["lastTransitionTime"] = (
                old["lastTransitionTime"] if old and old["status"] == c["status"] else now_rfc3339()
            )
        try:
            data(
                self.kube.core.patch_namespaced_pod_status,
                self.name,
                self.namespace,
                {"status": sent},
                _content_type=MERGE_PATCH,
            )
        except ERRORS as err:
            if isinstance(err, ApiException) and err.status == 404:
                self.stop_event.set()
                return
            log.warning("status of %s/%s: %s", self.namespace, self.name, message(err))
            self.report_retry_at = time.monotonic() + 2.0
            return
        self.last_status = status
        self.last_conditions = sent["conditions"]
