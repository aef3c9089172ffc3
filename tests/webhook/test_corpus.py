"""The conformance corpus (tests/corpus, SOURCES.md): real manifests from public projects.

Over every file: `kubectl mesh inject` injects every workload or skips it with a known reason,
the webhook's JSON patch of each template gives the same pod, injecting twice is injecting once,
and `uninject` gives the input back exactly (byte for byte on the YAML the CLI writes, and
structurally equal to what was read: the CLI does not keep comments or quoting, so the bytes of
the file itself are not the reference). Then one server-side dry run (`kubectl create
--dry-run=server`, one call for the whole corpus) shows the lab's API server, PodSecurity
admission included, accepting every injected workload, with the proxy in it.
"""

from __future__ import annotations

import copy
import io
import json
import sys
from pathlib import Path
from typing import Any

import jsonpatch
import pytest

from kubectl_mesh import manifests
from kubectl_mesh.cli import main
from kubectl_mesh.commands.inject import TEMPLATE_PATHS
from kubectl_mesh.inject import SKIP_REASONS, MeshConfig, inject_pod, make_patch

CORPUS = Path(__file__).resolve().parents[1] / "corpus"
FILES = sorted(p for p in CORPUS.rglob("*") if p.suffix in (".yaml", ".yml", ".json") and p.is_file())
IDS = [str(p.relative_to(CORPUS)) for p in FILES]
# Kept for inject, idempotence and uninject-exact, but not served by today's API servers (SOURCES.md).
NOT_DRY_RUN = {"kubernetes-website/content/en/examples/application/job/cronjob.yaml"}


def run_cli(argv: list[str], stdin: str, capsys: pytest.CaptureFixture[str]) -> tuple[str, list[str]]:
    old = sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        code = main(argv)
    finally:
        sys.stdin = old
    out, err = capsys.readouterr()
    assert code == 0, err
    return out, err.splitlines()


def objects(docs: list[Any]) -> list[dict[str, Any]]:
    """Every object, Lists flattened."""
    out: list[dict[str, Any]] = []
    for doc in docs:
        items = doc.get("items") if isinstance(doc, dict) else None
        if isinstance(doc, dict) and str(doc.get("kind", "")).endswith("List") and isinstance(items, list):
            out.extend(objects(items))
        elif isinstance(doc, dict):
            out.append(doc)
    return out


def template(obj: dict[str, Any]) -> Any:
    for key in TEMPLATE_PATHS.get(str(obj.get("kind")), ("?",)):
        obj = obj.get(key) if isinstance(obj, dict) else None  # type: ignore[assignment]
    return obj


def test_the_corpus_is_large_and_every_file_has_its_source() -> None:
    sources = (CORPUS / "SOURCES.md").read_text()
    listed = {
        line.split("`")[1] for line in sources.splitlines() if line.startswith("| `") and "|" in line[3:]
    }
    excluded = {p for p in listed if not (CORPUS / p).exists()}
    assert len(FILES) >= 100
    assert set(IDS) <= listed, sorted(set(IDS) - listed)
    assert len(excluded) == 26  # the ones the API server refuses as they are, listed with the reason
    for project in ("kubernetes-examples", "istio", "linkerd2"):
        assert "Apache License" in (CORPUS / project / "LICENSE").read_text()
    kinds = {str(o.get("kind")) for p in FILES for o in objects(parse(p))}
    assert set(TEMPLATE_PATHS) <= kinds  # every workload kind is represented


def parse_text(name: str, text: str) -> list[Any]:
    """The documents the CLI reads from `text` (its own reader)."""
    return [
        doc for _number, doc in manifests.iter_documents(manifests.Source(name, io.BytesIO(text.encode())))
    ]


def parse(path: Path) -> list[Any]:
    return parse_text(str(path), path.read_text())


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_inject_idempotent_and_uninject_exact(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = path.read_text()
    as_written, _ = run_cli(["uninject", "-"], text, capsys)  # the CLI's YAML of the input, unchanged
    injected, report = run_cli(["inject", "-"], text, capsys)
    verdicts = [line.rsplit('" ', 1)[1] for line in report if '" warning: ' not in line]
    assert len(verdicts) == len(objects(parse(path)))  # one verdict per object
    assert all(v == "injected" or v.startswith("skipped: ") for v in verdicts), report
    twice, report2 = run_cli(["inject", "-"], injected, capsys)
    assert twice == injected
    assert not any(line.endswith('" injected') for line in report2)
    restored, _ = run_cli(["uninject", "-"], injected, capsys)
    assert restored == as_written
    assert parse_text("restored", restored) == parse(path)


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_the_webhook_patch_gives_the_injected_pod(path: Path) -> None:
    """The admission path: the JSON patch of each template, applied, is the injected template; every
    skip has a reason from the closed set."""
    for obj in objects(parse(path)):
        pod = template(obj)
        if not isinstance(pod, dict):
            continue
        before = copy.deepcopy(pod)
        decision = inject_pod(pod, obj.get("metadata", {}).get("namespace"), None, MeshConfig())
        assert pod == before
        if decision.skipped:
            assert decision.reason in SKIP_REASONS
            continue
        patch = make_patch(pod, decision.pod)
        assert jsonpatch.apply_patch(copy.deepcopy(pod), patch) == decision.pod


def injected_workloads(namespace: str, capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    """Every injected workload of the corpus, as `kubectl mesh inject` writes it, moved to `namespace`."""
    out = []
    for path, name in zip(FILES, IDS, strict=True):
        if name in NOT_DRY_RUN:
            continue
        injected, _ = run_cli(["inject", str(path)], "", capsys)
        for obj in objects(parse_text(name, injected)):
            pod = template(obj)
            if isinstance(pod, dict) and any(
                c.get("name") == "mesh-init" for c in pod.get("spec", {}).get("initContainers") or []
            ):
                obj.setdefault("metadata", {})["namespace"] = namespace
                out.append(obj)
    return out


def dry_run(lab: Any, namespace: str, objs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    """One `kubectl create --dry-run=server` of all `objs`: (the objects the server answered, stderr)."""
    import subprocess

    body = json.dumps({"apiVersion": "v1", "kind": "List", "items": objs})
    proc = subprocess.run(
        ["kubectl", "create", "--dry-run=server", "-n", namespace, "-o", "json", "-f", "-"],
        input=body,
        capture_output=True,
        text=True,
        env=lab.env(),
        timeout=120,
        check=False,
    )
    decoder, answered, pos = json.JSONDecoder(), [], 0
    text = proc.stdout
    while pos < len(text):
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos < len(text):
            obj, pos = decoder.raw_decode(text, pos)
            answered.append(obj)
    return answered, proc.stderr.strip()


@pytest.mark.lab
@pytest.mark.root
def test_the_api_server_accepts_every_injected_workload(
    lab: Any, lab_namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    objs = injected_workloads(lab_namespace, capsys)
    assert len(objs) >= 200
    answered, stderr = dry_run(lab, lab_namespace, objs)
    # The server warns about some of the manifests as they are (deprecated volume types, duplicate
    # port names among the app's containers); never about what the injector added.
    for line in stderr.splitlines():
        assert line.startswith("Warning: "), line
        assert "initContainers[0]" not in line and "initContainers[1]" not in line and "mesh-" not in line, (
            line
        )
    assert len(answered) == len(objs)
    for sent, got in zip(objs, answered, strict=True):
        assert got["kind"] == sent["kind"]
        names = [c["name"] for c in template(got)["spec"]["initContainers"]]
        assert names[:2] == ["mesh-init", "mesh-proxy"], (sent["kind"], sent["metadata"].get("name"))
