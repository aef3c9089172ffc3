"""YAML in and out as kubectl reads it (kubectl_mesh.manifests), through `kubectl mesh inject`.

Oracle: the real kubectl. For tricky plain scalars, kubectl's JSON of our output must equal
kubectl's JSON of our input (`kubectl create --dry-run=client -o json`, against the lab's API
server for discovery). Deep nesting: one line naming the file and the document. A large input:
streamed, memory not growing with it (peak RSS measured by the kernel, wait4).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubectl_mesh import manifests
from kubectl_mesh.commands.transform import POOL_ENV
from lab.pytest_plugin import Lab
from tests.support.big_manifests import run_inject, write_manifests

KUBECTL = "/usr/bin/kubectl"
VENV_BIN = Path(sys.executable).parent

# Plain scalars that YAML 1.1, YAML 1.2 and kubectl (go-yaml) read in different ways. `.inf`
# and `.nan` are left out: kubectl itself refuses them (JSON has no infinity).
TRICKY = [
    "12:30", "=", "yes", "on", "off", "y", "N", "0o17", "0O17", "0x1F", "-0x1F", "+0x1F", "1e3",
    "1E3", "~", "null", "NULL", "010", "0777", "012345678", "2024-01-01", "2001-12-14t21:59:43.10-05:00",
    "1_000", "0b101", "True", "1.", ".5", "-.5", "+12", "1:2:3", "0.1e+3", "1e", "<<",
    "1,000", "0.", "-0", "18446744073709551616", "9223372036854775807", "685.230_15e+03", "0x",
]  # fmt: skip


def tricky_manifest() -> str:
    data = "".join(f"  k{i}: {value}\n" for i, value in enumerate(TRICKY))
    keys = "".join(f"  {value}: key{i}\n" for i, value in enumerate(("n", "on", "010", "12:30", "=")))
    return (
        f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: tricky\ndata:\n{data}{keys}"
        "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  annotations:\n    at: 12:30\n    eq: =\n"
        "    date: 2024-01-01\nspec:\n  containers:\n  - name: app\n    image: app:1\n    command: [app]\n"
        "    env:\n    - {name: A, value: 12:30}\n    - {name: B, value: =}\n"
    )


def kubectl_json(lab: Lab, path: Path) -> list[Any]:
    done = subprocess.run(
        [KUBECTL, "create", "--dry-run=client", "--validate=false", "-o", "json", "-f", str(path)],
        # HOME: kubectl's discovery cache goes to the test's directory, not the working one
        env={"KUBECONFIG": str(lab.kubeconfig), "PATH": "/usr/bin:/bin", "HOME": str(path.parent)},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    decoder, text, docs, pos = json.JSONDecoder(), done.stdout, [], 0
    while text[pos:].strip():  # one JSON object per input document, one after the other
        doc, end = decoder.raw_decode(text[pos:].lstrip())
        pos = len(text) - len(text[pos:].lstrip()) + end
        docs.append(doc)
    return docs


@pytest.mark.lab
def test_output_means_to_kubectl_what_the_input_meant(lab: Lab, tmp_path: Path) -> None:
    source = tmp_path / "in.yaml"
    source.write_text(tricky_manifest())
    out = tmp_path / "out.yaml"
    with out.open("w") as fh:
        done = subprocess.run(
            [str(VENV_BIN / "kubectl-mesh"), "inject", str(source)],
            stdout=fh, stderr=subprocess.PIPE, text=True, timeout=60,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    before, after = kubectl_json(lab, source), kubectl_json(lab, out)
    assert after[0] == before[0]  # the ConfigMap, every tricky value and key
    assert before[0]["data"]["k0"] == "12:30" and before[0]["data"]["k2"] is True  # kubectl's own reading
    pod_before, pod_after = before[1], after[1]
    assert pod_before["metadata"]["annotations"]["at"] == "12:30"
    assert pod_after["metadata"]["annotations"]["at"] == "12:30"
    assert pod_after["metadata"]["annotations"]["eq"] == "="
    assert pod_after["metadata"]["annotations"]["date"] == "2024-01-01"
    app = next(c for c in pod_after["spec"]["containers"] if c["name"] == "app")
    assert app["env"] == pod_before["spec"]["containers"][0]["env"]
    assert "mesh-proxy" in json.dumps(pod_after["spec"])  # and it was injected


def test_plain_scalars_are_read_as_kubectl_reads_them() -> None:
    """Pure: the resolver's answers for the values kubectl was seen to give (see the lab test)."""
    expect = {
        "12:30": "12:30", "=": "=", "yes": True, "on": True, "N": False, "0o17": 15, "0x1F": 31,
        "-0x1F": -31, "1e3": 1000.0, "~": None, "010": 8, "012345678": 12345678.0, "1_000": 1000,
        "0b101": 5, "2024-01-01": "2024-01-01", "1.": 1.0, ".5": 0.5, "1e": "1e", "<<": "<<",
        "0x": "0x", "18446744073709551616": 1.8446744073709552e19,
    }  # fmt: skip
    text = "".join(f"k{i}: {value}\n" for i, value in enumerate(expect))
    (_, doc), *_ = manifests.iter_documents(manifests.Source("t.yaml", _bytes(text)))
    assert list(doc.values()) == list(expect.values())
    # and written back so that kubectl, YAML 1.1 and YAML 1.2 read the same
    for value in expect.values():
        written = manifests.dump_yaml([{"v": value}])
        (_, again), *_ = manifests.iter_documents(manifests.Source("o.yaml", _bytes(written)))
        assert again == {"v": value}, written
    written = manifests.dump_yaml([{"a": "12:30", "b": "=", "c": "yes"}])
    assert written == "---\na: '12:30'\nb: '='\nc: 'yes'\n"


def _bytes(text: str) -> Any:
    import io

    return io.BytesIO(text.encode())


def run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VENV_BIN / "kubectl-mesh"), *args], input=stdin, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    ("second", "name"),
    [
        ("a: " + "[" * 5000 + "]" * 5000 + "\n", "deep.yaml"),  # libyaml's own depth limit
        ("a:\n" + "".join("  " * i + "- \n" for i in range(1, 990)), "deep.yaml"),  # Python's, writing it
        ('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}", "deep.json"),  # Python's, reading JSON
    ],
)
def test_deep_nesting_names_the_file_and_the_document(tmp_path: Path, second: str, name: str) -> None:
    path = tmp_path / name
    first = '{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a"}}\n'
    path.write_text(first + second if name.endswith(".json") else "kind: Namespace\n---\n" + second)
    done = run_cli("inject", str(path))
    assert done.returncode == 1
    assert done.stdout == ""  # nothing half-written
    assert done.stderr.count("\n") == 1, done.stderr  # one line, no traceback
    assert done.stderr.startswith(f"error: {path}") and "document 2 is nested too deeply" in done.stderr


@pytest.mark.slow
def test_a_large_input_streams_in_bounded_memory(tmp_path: Path) -> None:
    """5 MB (the benchmark does 50): peak RSS grows by far less than the input over a 50 KB run;
    before streaming it was about 40 times the input (2.1 GB for 50 MB). One process (the pool,
    which an idle machine would start at 4 MB, has tests/cli/test_inject_pool.py)."""
    small, large, out = tmp_path / "small.yaml", tmp_path / "large.yaml", tmp_path / "out.yaml"
    write_manifests(small, 50_000)
    documents = write_manifests(large, 5_000_000)
    one_process = {POOL_ENV: "off"}
    base = run_inject(small, out, one_process)
    run = run_inject(large, out, one_process)
    assert run.returncode == 0, run.stderr_tail
    assert out.read_text().count("\n---\n") + 1 == documents  # every document written
    size = large.stat().st_size
    assert run.max_rss_bytes - base.max_rss_bytes < size, (run.max_rss_bytes, base.max_rss_bytes)
    assert run.max_rss_bytes < 3 * size + base.max_rss_bytes
    assert size / run.seconds > 0.3e6, f"{size / run.seconds / 1e6:.2f} MB/s"  # 337 s for 50 MB before


AWKWARD = [
    "", " ", "a\tb", "héllo", "x\ufeffy", "a\u2028b", "a\x85b", "tab\tin\nlines\n", "  lead\nx", "ok\nfine\n",
    "ok\nno newline", "trail \nx", "\x7f", "two\n\nblank\n\n", "- item", "key: value", "a #b", "#c", "'q'",
    '"d"', "x:", "[a]", "{a: 1}", "*alias", "&anchor", "!tag", "%dir", "@at", "`tick", "|pipe", ">fold",
    "?", "-", "---", "...", "12:30", "=", "<<", "~", "0o17", "1_000", "2024-01-01", ".5", "1e3", "NULL",
    "x" * 300, "😀 emoji", "-5m", "http://a:b/c",
]  # fmt: skip


def test_awkward_strings_and_values_come_back_as_they_were() -> None:
    import io

    doc = {
        "strings": AWKWARD,
        "as keys": {s: i for i, s in enumerate(AWKWARD) if "\n" not in s},
        "values": [None, True, False, 0, -1, 2**64, 1.5, -0.0, 1e16, math.inf, -math.inf, [], {}, [[]], [{}]],
        "nested": [[1, [2, [3]]], {"a": [{"b": {"c": []}}]}],
        True: "bool key",
        8: "int key",
        None: "null key",
    }
    out = io.StringIO()
    manifests.dump_document(doc, out)
    ((_, back),) = manifests.iter_documents(manifests.Source("o.yaml", io.BytesIO(out.getvalue().encode())))
    assert back == doc, out.getvalue()
    # and the same through PyYAML's own safe loader (YAML 1.1): the strings stay strings
    assert yaml.safe_load(out.getvalue())["strings"] == AWKWARD


def test_aliases_are_not_expanded_on_output(tmp_path: Path) -> None:
    """A billion-laughs document: written with anchors (as read), not copied out 10^9 times."""
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i, name in enumerate("bcdefghi"):
        prev = "a" if i == 0 else "bcdefghi"[i - 1]
        lines.append(f"{name}: &{name} [{', '.join(['*' + prev] * 9)}]")
    path = tmp_path / "laughs.yaml"
    path.write_text("kind: ConfigMap\n" + "\n".join(lines) + "\n")
    done = run_cli("inject", str(path))
    assert done.returncode == 0, done.stderr
    assert len(done.stdout) < 10_000 and "&" in done.stdout and "*" in done.stdout
