"""The parts the injector shares between pods (`kubectl_mesh.inject.shared`), and the YAML writer
that writes each one's text once and copies it after (`manifests._Block`).

Oracle: the same injected objects with every shared part copied out (`unshared`: a fresh dict or
list per pod, as the injector built them before it shared any), written by the same writer, which
then never meets a shared part and writes every node itself. The two must be the same bytes: over
the corpus (in this process, and through `kubectl-mesh inject` in one process and in the forced
pool of workers), over generated pods (several in one List document, both sidecar layouts, PyYAML's
emitter too), and for pods whose injected parts differ (each keeps its own values, read back).
"""

from __future__ import annotations

import gc
import io
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from kubectl_mesh import contract as c
from kubectl_mesh import manifests
from kubectl_mesh.commands.inject import INJECTED_BY
from kubectl_mesh.commands.transform import POOL_ENV, Outcome, Target, transform_documents
from kubectl_mesh.inject import MeshConfig, inject_pod, shared
from kubectl_mesh.inject.shared import is_shared
from tests.cli.test_inject_pool import TWO_CPUS

VENV_BIN = Path(sys.executable).parent
CORPUS = Path(__file__).resolve().parents[1] / "corpus"
LOCK = "mesh-init-xtables-lock"


def unshared(value: Any, memo: dict[int, Any] | None = None) -> Any:
    """`value` with every shared part (and everything in it) copied out, a new copy at each
    place it stands; the input's own containers stay one object each where they were one (YAML
    aliases read from the input stay aliases)."""
    memo = {} if memo is None else memo
    if isinstance(value, dict | list):
        if is_shared(value):
            return _copy(value)
        if id(value) in memo:
            return memo[id(value)]
        if isinstance(value, dict):
            items = {k: unshared(v, memo) for k, v in value.items()}
            copied: Any = value if all(items[k] is v for k, v in value.items()) else items
        else:
            new = [unshared(v, memo) for v in value]
            copied = value if all(a is b for a, b in zip(new, value, strict=True)) else new
        memo[id(value)] = copied
        return copied
    return value


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def dumped(document: Any) -> str:
    out = io.StringIO()
    manifests.dump_document(document, out)
    return out.getvalue()


def injected(pod: dict[str, Any], config: MeshConfig, kind: str = "deployment", name: str = "web") -> Any:
    from kubectl_mesh.inject import Workload

    decision = inject_pod(pod, "shop", None, config, workload=Workload(kind, name), explicit=True)
    assert decision.injected, decision.message
    return decision.pod


def injected_alone(pod: dict[str, Any], config: MeshConfig, kind: str, name: str) -> Any:
    """`injected` with nothing shared: every part built for this pod alone, as before sharing."""
    kept, limit = shared._parts, shared.LIMIT
    shared._parts, shared.LIMIT = {}, 0  # no part found, none kept: each built by its builder
    try:
        alone = injected(pod, config, kind, name)
    finally:
        shared._parts, shared.LIMIT = kept, limit
    assert not any(is_shared(x) for x in alone["spec"]["initContainers"])
    return alone


def assert_written_as_unshared(document: Any) -> str:
    text = dumped(document)
    assert text == dumped(unshared(document))
    return text


def test_pods_injected_with_one_config_share_their_constant_parts_and_nothing_of_their_own() -> None:
    """The init container, the lock volume and the proxy's probes, security context and fixed
    environment entries are one object for every pod (what the writer's cache is keyed by);
    the proxy container, its environment list and the workload's name entry are each pod's own."""
    config = MeshConfig()
    pods = [injected({"spec": {"containers": [{"name": "app", "image": "a"}]}}, config, name=n) for n in "ab"]
    (init_a, proxy_a), (init_b, proxy_b) = (p["spec"]["initContainers"] for p in pods)
    assert init_a is init_b and is_shared(init_a)
    assert pods[0]["spec"]["volumes"][0] is pods[1]["spec"]["volumes"][0]
    for key in ("securityContext", "livenessProbe", "readinessProbe", "startupProbe", "resources", "ports"):
        assert proxy_a[key] is proxy_b[key] and is_shared(proxy_a[key]), key
    assert proxy_a is not proxy_b and proxy_a["env"] is not proxy_b["env"]
    assert not is_shared(proxy_a) and not is_shared(proxy_a["env"])
    name_a, name_b = (
        next(e for e in p["env"] if e["name"] == c.ENV_WORKLOAD_NAME) for p in (proxy_a, proxy_b)
    )
    assert (name_a["value"], name_b["value"]) == ("a", "b") and not is_shared(name_a)
    assert proxy_a["env"][0] is proxy_b["env"][0]  # MESH_POD_NAME's fieldRef: the same for all


def test_a_part_dropped_from_the_registry_never_lends_its_address_to_another_object(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A registry swapped out (as the limit test below does) drops its parts; their addresses must
    not then make fresh objects pass for shared, or the writer copies a part's cached text in their
    place (the CI rehearsal's corpus dry run: an emptyDir written with the proxy's cpu and memory)."""
    monkeypatch.setattr(shared, "_parts", {})
    pod = injected({"spec": {"containers": [{"name": "app", "image": "a"}]}}, MeshConfig(), name="x")
    assert is_shared(pod["spec"]["initContainers"][0])
    del pod
    monkeypatch.undo()  # the swapped-in registry and the parts only it held are gone
    gc.collect()
    fresh: list[Any] = [{} for _ in range(20_000)] + [[] for _ in range(20_000)]
    fresh += [{"k": i} for i in range(20_000)]
    assert not [x for x in fresh if is_shared(x)]
    volume = {"name": "scratch", "emptyDir": {}}
    expected = "---\nspec:\n  volumes:\n  - name: scratch\n    emptyDir: {}\n"
    assert dumped({"spec": {"volumes": [volume]}}) == expected


def test_a_shared_part_edited_in_place_is_caught() -> None:
    """The suite's own guard (tests/conftest.py asserts `shared.changed()` is empty at the end of
    every session): an in-place edit of a part that every later pod would carry is reported."""
    pod = injected({"spec": {"containers": [{"name": "app", "image": "a"}]}}, MeshConfig(), name="x")
    probe = pod["spec"]["initContainers"][1]["livenessProbe"]  # the proxy, a native sidecar
    assert is_shared(probe) and shared.changed() == []
    saved = dict(probe)
    probe["periodSeconds"] = 999  # what a careless caller might do to "its" pod
    try:
        assert shared.changed() != []
    finally:
        probe.clear()
        probe.update(saved)
    assert shared.changed() == []


def _inject_action(config: MeshConfig, plain: bool) -> Callable[[dict[str, Any], Target], Outcome]:
    def action(pod: dict[str, Any], target: Target) -> Outcome:
        decision = inject_pod(
            pod, target.namespace, target.namespace_labels, config,
            workload=target.workload, injected_by=INJECTED_BY, explicit=True,
        )  # fmt: skip
        out = unshared(decision.pod) if plain else decision.pod
        return Outcome(out, None if decision.injected else decision.message, decision.warnings)

    return action


def _corpus_files() -> list[Path]:
    files = sorted(p for p in CORPUS.rglob("*") if p.suffix in (".yaml", ".yml", ".json"))
    assert len(files) > 100
    return files


def _written_in_process(paths: list[str], plain: bool) -> str:
    """What `kubectl mesh inject PATHS` writes in one process, by this process's writer."""
    out, report, namespaces = io.StringIO(), [], {}  # type: ignore[var-annotated]
    action = _inject_action(MeshConfig(), plain)
    for source in manifests.open_sources(paths, sys.stdin):
        documents = manifests.iter_documents(source)
        transform_documents(source.name, documents, action, "injected", report, namespaces, out)
    return out.getvalue()


def test_the_corpus_injected_is_written_as_with_nothing_shared() -> None:
    """Every corpus file, document by document: the shared parts' cached text is what writing
    them node by node gives, and the whole directory's output too (caches warm from file to file)."""
    for path in _corpus_files():
        cached = _written_in_process([str(path)], plain=False)
        assert cached == _written_in_process([str(path)], plain=True), path
    whole = _written_in_process([str(CORPUS)], plain=False)
    assert whole == _written_in_process([str(CORPUS)], plain=True)
    assert whole.count("name: mesh-proxy\n") > 100


@TWO_CPUS
@pytest.mark.parametrize("pool", ["off", "1:3000"], ids=["one-process", "pool"])
def test_kubectl_mesh_inject_writes_the_corpus_as_the_plain_writer(tmp_path: Path, pool: str) -> None:
    """`kubectl-mesh inject` over the corpus as one stream, in one process and in the forced pool
    (pieces of 3 KB, so each worker's cache starts cold and warms on its own pieces): stdout is
    what the plain writer gives in this process."""
    files = [p for p in _corpus_files() if p.suffix != ".json"]
    stream = tmp_path / "all.yaml"
    stream.write_bytes(b"".join(b"---\n" + p.read_bytes().rstrip(b"\n") + b"\n" for p in files))
    done = subprocess.run(
        [str(VENV_BIN / "kubectl-mesh"), "inject", str(stream)],
        capture_output=True, timeout=120, env={**os.environ, POOL_ENV: pool},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.decode() == _written_in_process([str(stream)], plain=True)
    assert done.stdout.count(b"name: mesh-proxy\n") > 100


_names = st.text(alphabet="ab-.x_Z9 ", min_size=1, max_size=12)
_ports = st.sampled_from(["", "80", "8080,9090", "1-100", "25,3306"])


@st.composite
def _pods(draw: st.DrawFn) -> dict[str, Any]:
    annotations: dict[str, Any] = {}
    for key in (c.OPAQUE_PORTS_ANNOTATION, c.SKIP_INBOUND_PORTS_ANNOTATION, c.SKIP_OUTBOUND_PORTS_ANNOTATION):
        if draw(st.booleans()):
            annotations[key] = draw(_ports)
    volumes = [
        {"name": n, "emptyDir": {}}
        for n in draw(st.lists(st.sampled_from([LOCK, f"{LOCK}-1", "data"]), unique=True))
    ]
    spec: dict[str, Any] = {"containers": [{"name": "app", "image": draw(_names)}]}
    if volumes or draw(st.booleans()):
        spec["volumes"] = volumes
    if draw(st.booleans()):
        spec["initContainers"] = [{"name": "setup", "image": "busybox", "command": ["true"]}]
    pod: dict[str, Any] = {"spec": spec}
    if annotations or draw(st.booleans()):
        pod["metadata"] = {"annotations": annotations, "labels": {"app": draw(_names)}}
    return pod


_CONFIGS = [
    MeshConfig(),
    MeshConfig(native_sidecar=False),
    MeshConfig(log_level="debug", proxy_version="9.9"),
]


@settings(max_examples=200, deadline=None)
@given(
    pods=st.lists(
        st.tuples(_pods(), _names, st.sampled_from(["deployment", "pod", "job"])), min_size=1, max_size=4
    ),
    config=st.sampled_from(_CONFIGS),
    indent=st.integers(0, 3),
    through_pyyaml=st.booleans(),
)
def test_generated_pods_are_written_as_with_nothing_shared(
    pods: list[tuple[dict[str, Any], str, str]], config: MeshConfig, indent: int, through_pyyaml: bool
) -> None:
    """Each pod injected with shared parts is the pod injected alone (every part its own); and
    several of them in one List document (the same shared parts more than once in it),
    nested `indent` levels deeper, by the fast writer or (a key too long for it) by PyYAML's
    emitter: the same bytes as with nothing shared, and never an anchor (`&id001`)."""
    specs = [injected(pod, config, kind, name)["spec"] for pod, name, kind in pods]
    assert specs == [injected_alone(pod, config, kind, name)["spec"] for pod, name, kind in pods]
    items: list[Any] = [{"kind": "Pod", "spec": spec} for spec in specs]
    document: dict[str, Any] = {"kind": "List", "items": items}
    for _ in range(indent):
        document = {"items": [document]}
    if through_pyyaml:
        document["k" * 200] = "forces PyYAML's emitter"
    text = assert_written_as_unshared(document)
    assert "&id" not in text and "*id" not in text
    assert text.count("name: mesh-init\n") == len(pods)


def test_two_pods_whose_injected_parts_differ_keep_their_own() -> None:
    """Pods with their own workload, opaque ports, skipped ports and lock volume name, in one
    document and in turns across documents (each writing after the other warmed the cache):
    read back, each pod's proxy and init step carry its own values, none of the other's."""
    config = MeshConfig()
    plain = {"spec": {"containers": [{"name": "app", "image": "a"}]}}
    odd = {
        "metadata": {
            "annotations": {c.OPAQUE_PORTS_ANNOTATION: "7000", c.SKIP_INBOUND_PORTS_ANNOTATION: "9000"}
        },
        "spec": {"containers": [{"name": "app", "image": "b"}], "volumes": [{"name": LOCK, "emptyDir": {}}]},
    }
    taken = {
        "spec": {"containers": [{"name": "app", "image": "c"}], "volumes": [{"name": LOCK, "emptyDir": {}}]}
    }
    default_opaque = "25,587,3306,4444,5432,6379,9300,11211"
    expected = {  # MESH_OPAQUE_PORTS, mesh-init's --inbound-ports-to-ignore, its lock volume
        "first": (default_opaque, "4190,4191", LOCK),
        "second": ("7000", "4190,4191,9000", f"{LOCK}-1"),
        "third": (default_opaque, "4190,4191", f"{LOCK}-1"),  # the first's ports, not its volume
    }
    pods = [
        injected(plain, config, name="first"),
        injected(odd, config, "statefulset", "second"),
        injected(taken, config, name="third"),
    ]
    every = {"kind": "List", "items": [{"kind": "Pod", "spec": p["spec"]} for p in pods]}
    texts = [assert_written_as_unshared(every)]
    for order in (pods, pods[::-1]):
        texts.append("".join(assert_written_as_unshared({"kind": "Pod", "spec": p["spec"]}) for p in order))
    for text in texts:
        specs = [doc["spec"] for doc in yaml.safe_load_all(text) if doc.get("kind") == "Pod"]
        specs += [item["spec"] for doc in yaml.safe_load_all(text) for item in doc.get("items", [])]
        assert len(specs) == 3
        for spec in specs:
            init, proxy = spec["initContainers"][:2]
            env = {e["name"]: e.get("value") for e in proxy["env"]}
            who = env[c.ENV_WORKLOAD_NAME]
            opaque, inbound, lock = expected[who]
            assert env[c.ENV_WORKLOAD_KIND] == ("statefulset" if who == "second" else "deployment")
            assert env[c.ENV_OPAQUE_PORTS] == opaque
            command = init["command"]
            assert command[command.index("--inbound-ports-to-ignore") + 1] == inbound
            assert init["volumeMounts"] == [{"name": lock, "mountPath": "/run"}]
            assert spec["volumes"][-1] == {"name": lock, "emptyDir": {}}


def test_beyond_the_limit_parts_are_built_per_pod_and_written_the_same(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the registry full, `part` builds a fresh object for each pod (none is marked shared,
    so none is cached by identity), and the YAML is still what nothing shared gives."""
    monkeypatch.setattr(shared, "_parts", {})
    monkeypatch.setattr(shared, "LIMIT", 2)  # the proxy's parts and its kind's env entry
    config = MeshConfig(log_level="debug")
    pods = [injected({"spec": {"containers": [{"name": "app", "image": n}]}}, config, name=n) for n in "abc"]
    inits = [p["spec"]["initContainers"][0] for p in pods]
    assert inits[0] == inits[1] == inits[2] and inits[0] is not inits[1] and not is_shared(inits[0])
    assert pods[0]["spec"]["volumes"][0] is not pods[1]["spec"]["volumes"][0]
    assert (
        pods[0]["spec"]["initContainers"][1]["securityContext"]
        is pods[1]["spec"]["initContainers"][1]["securityContext"]
    )
    text = assert_written_as_unshared(
        {"kind": "List", "items": [{"kind": "Pod", "spec": p["spec"]} for p in pods]}
    )
    assert text.count("name: mesh-init\n") == 3 and "&id" not in text
