"""`kubectl mesh inject`'s pool of workers, attacked: workers killed mid-piece, nesting at the
depth where Python's stack gives out, pieces read again in the parent, odd streams, Ctrl-C while
the parent reads the rest itself.

Oracle, as in test_inject_pool.py: the same command in one process ($KUBECTL_MESH_INJECT_POOL=off),
whose stdout, stderr and exit status the pool's must be, byte for byte; and where it says more, the
error line itself (the document it names) or the bytes `DocumentChunks` gives back.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from kubectl_mesh import manifests
from kubectl_mesh.commands.transform import POOL_ENV
from tests.cli.test_inject_pool import TWO_CPUS, VENV_BIN, _alive, deployments, same_as_one_process
from tests.support.big_manifests import write_manifests


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _start_pooled(source: Path, chunk: int) -> subprocess.Popen[bytes]:
    """`kubectl-mesh inject SOURCE` with the pool forced, as a shell's foreground job (its own
    process group, SIGINT as by default)."""
    return subprocess.Popen(
        [str(VENV_BIN / "kubectl-mesh"), "inject", str(source)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
        env={**os.environ, POOL_ENV: f"1:{chunk}"},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip


def _workers(proc: subprocess.Popen[bytes], deadline: float) -> list[int]:
    while time.monotonic() < deadline:
        found = _children(proc.pid)
        if len(found) >= 2:
            return found
        time.sleep(0.001)
    raise AssertionError("no workers")


@pytest.fixture(scope="module")
def six_mb(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[bytes]]:
    """6 MB of dense manifests (about 90 pieces of 64 KB, a few seconds in the pool), and what one
    process makes of it."""
    source = tmp_path_factory.mktemp("big") / "in.yaml"
    write_manifests(source, 6_000_000, "dense")
    one = subprocess.run(
        [str(VENV_BIN / "kubectl-mesh"), "inject", str(source)],
        capture_output=True, timeout=120, env={**os.environ, POOL_ENV: "off"},
    )  # fmt: skip
    assert one.returncode == 0 and one.stdout.count(b"mesh-proxy") > 1000
    return source, one


@TWO_CPUS
@pytest.mark.slow
@pytest.mark.parametrize("after", [0.05, 0.4])
def test_workers_killed_mid_piece_leave_the_output_of_one_process(
    six_mb: tuple[Path, subprocess.CompletedProcess[bytes]], after: float
) -> None:
    """Every worker SIGKILLed (as the OOM killer does) while pieces are in flight: multiprocessing's
    Pool starts others but never answers the pieces the dead ones held, and the command waited for
    them for ever. Now the parent sees a worker gone and reads the rest itself: the YAML and the
    report are one process's (a piece already given out must not be read twice), in bounded time."""
    source, one = six_mb
    proc = _start_pooled(source, 65536)
    killed = _workers(proc, time.monotonic() + 20)
    time.sleep(after)
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    assert proc.poll() is None, "the run ended before its workers were killed: nothing was tested"
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError("the command hung after its workers were killed") from None
    assert proc.returncode == 0, err[-500:]
    assert err == one.stderr
    assert out == one.stdout


@TWO_CPUS
@pytest.mark.slow
def test_ctrl_c_while_the_parent_reads_the_rest_itself(
    six_mb: tuple[Path, subprocess.CompletedProcess[bytes]],
) -> None:
    """Workers killed, the parent reading the rest in one process, then Ctrl-C: exit 130, no
    traceback, stdout empty (the YAML waits for the end), no process left behind."""
    source, _ = six_mb
    proc = _start_pooled(source, 65536)
    killed = _workers(proc, time.monotonic() + 20)
    time.sleep(0.3)
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    time.sleep(0.5)  # the parent has seen them gone (it looks every 0.2 s) and reads on alone
    assert proc.poll() is None, "the run ended before Ctrl-C: nothing was tested"
    started = set(killed) | set(_children(proc.pid))  # with any the pool started in their place
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and b"Traceback" not in err, err[-500:]
    assert out == b""
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in started) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in started if _alive(pid)]  # no worker outlived the command


@TWO_CPUS
@pytest.mark.slow
def test_workers_killed_while_they_wait_for_work_leave_the_output_of_one_process(
    six_mb: tuple[Path, subprocess.CompletedProcess[bytes]],
) -> None:
    """Stdin gives 300 KB, the workers do it and wait for more; then they are killed, and the rest
    comes. A worker killed while it waits holds the lock of the queue the workers read their work
    from: the pool's new workers never get any, and Pool.terminate() waits for that lock too. The
    parent must still give one process's output, and end."""
    source, _ = six_mb
    data = source.read_bytes()[:2_000_000]
    data = data[: data.rindex(b"\n---\n") + 1]
    one = subprocess.run(
        [str(VENV_BIN / "kubectl-mesh"), "inject", "-"],
        input=data, capture_output=True, timeout=120, env={**os.environ, POOL_ENV: "off"},
    )  # fmt: skip
    proc = subprocess.Popen(
        [str(VENV_BIN / "kubectl-mesh"), "inject", "-"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, POOL_ENV: "1:20000"},
    )  # fmt: skip
    assert proc.stdin is not None
    proc.stdin.write(data[:300_000])
    proc.stdin.flush()
    workers = _workers(proc, time.monotonic() + 20)
    time.sleep(1.0)  # every piece sent is done: the workers wait for work
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    try:
        out, err = proc.communicate(data[300_000:], timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError("the command hung after its idle workers were killed") from None
    assert proc.returncode == 0, err[-500:]
    assert (out, err) == (one.stdout, one.stderr)


def test_a_piece_given_out_is_no_longer_pending() -> None:
    """Pure. `DocumentChunks.pending` is what the parent reads again, after the pieces in flight,
    when a worker failed: it must start where the last piece given out ended. It still held that
    piece while the caller worked on it, so the parent read it twice (documents written twice)."""
    text = deployments(0, 6).encode()
    for size in (1, 300, 10**6):
        stream = io.BytesIO(text)
        chunks = manifests.DocumentChunks(stream, size)
        given = b""
        for piece in chunks:
            given += piece
            assert given + chunks.pending + stream.read() == text, size
            stream.seek(len(given + chunks.pending))
        assert given == text and chunks.pending == b""


def _nested(depth: int, shape: str) -> str:
    if shape == "flow list":
        return "[" * depth + "x" + "]" * depth
    if shape == "flow map":
        return "{a: " * depth + "x" + "}" * depth
    pad = "  "  # under `  a:`, a sequence may stand at the key's column
    return (
        "\n" + "".join(pad + "  " * i + "- \n" for i in range(depth - 1)) + pad + "  " * (depth - 1) + "- x"
    )


def _deeper_and_deeper(start: int, stop: int, shape: str, alias: bool = False) -> str:
    """One ConfigMap per depth: `data.a` holds `depth` containers, so the document holds depth + 2."""
    head = "---\nkind: ConfigMap\nz: &z {k: v}\nzz: *z\n" if alias else "---\nkind: ConfigMap\n"
    return "".join(f"{head}data:\n  a: {_nested(d - 2, shape)}\n" for d in range(start, stop))


@TWO_CPUS
@pytest.mark.parametrize(("shape", "stop"), [("flow list", 520), ("flow map", 1000), ("block list", 520)])
def test_how_deep_a_document_may_nest_does_not_depend_on_who_reads_it(
    tmp_path: Path, shape: str, stop: int
) -> None:
    """Documents ever deeper, one by one: the first refused is the same in the pool and in one
    process. Python's recursion limit decided it before, and a worker's stack is not the parent's:
    lists 495 levels deep failed in one process and passed in the pool (maps 987). Now 256 levels
    (manifests.MAX_DEPTH) pass and 257 fail, wherever they are read."""
    path = tmp_path / "deep.yaml"
    start = manifests.MAX_DEPTH - 20
    path.write_text(deployments(0, 2) + _deeper_and_deeper(start, stop, shape))
    done = same_as_one_process([str(path)], chunk=1)
    assert done.returncode == 1 and done.stdout == b""
    first_refused = 2 + (manifests.MAX_DEPTH + 1 - start) + 1
    assert done.stderr.decode().endswith(
        f"document {first_refused} is nested too deeply to read (is it a Kubernetes object?)\n"
    ), done.stderr


@TWO_CPUS
@pytest.mark.parametrize("shape", ["flow list", "flow map"])
def test_a_document_with_aliases_is_held_to_the_same_depth(tmp_path: Path, shape: str) -> None:
    """An alias sends a document to PyYAML's constructor, and its writer takes three frames a
    level: the same limit holds there (checked on the composed nodes, without recursion)."""
    path = tmp_path / "deep.yaml"
    path.write_text(_deeper_and_deeper(manifests.MAX_DEPTH - 1, manifests.MAX_DEPTH + 1, shape, alias=True))
    done = same_as_one_process([str(path)], chunk=1)
    assert done.returncode == 0, done.stderr
    path.write_text(_deeper_and_deeper(manifests.MAX_DEPTH, manifests.MAX_DEPTH + 2, shape, alias=True))
    done = same_as_one_process([str(path)], chunk=1)
    assert done.returncode == 1 and done.stderr.decode().endswith(
        "document 2 is nested too deeply to read (is it a Kubernetes object?)\n"
    )


CM = "---\nkind: ConfigMap\n"
ODD = {
    "a tag on the marker line": "--- !!map\nkind: ConfigMap\ndata: {a: b}\n",
    "a tab after the marker": "---\t\nkind: ConfigMap\n",
    "root block scalars holding markers": "--- |\n  ---\n  x\n---\n--- >\n ---\n",
    "a double-quoted scalar over lines": CM + 'data: {a: "x\n  --- y\n  z"}\n',
    "a double-quoted scalar cut by a marker": CM + 'data: {a: "x\n---\n  z"}\n',
    "a %TAG holds for the next document only": "...\n%TAG !e! tag:yaml.org,2002:\n"
    + CM
    + "data: {a: !e!str 1}\n"
    + CM
    + "data: {a: !e!str 1}\n",
    "%YAML 2.0": "...\n%YAML 2.0\n" + CM,
    "a directive after a document without an end marker": "%YAML 1.1\n" + CM,
    "an alias to an anchor of another document": CM + "data: &a {x: y}\n" + CM + "data: *a\n",
    "a BOM before a later marker": "\ufeff" + CM,
    "NUL in a later piece": CM + "data: {a: x\0y}\n",
    "a 300 KB line of two-byte characters": CM + "data: {a: " + "\u00e9" * 150_000 + "}\n",
    "merge keys": "---\nbase: &b {image: x, name: app}\nkind: Pod\nmetadata: {name: p}\n"
    + "spec:\n  containers:\n  - <<: *b\n    name: c\n",
}  # between deployments(0, 2) and deployments(2, 2)
ODD["LF, CR LF and CR"] = deployments(4, 2).replace("\n", "\r")  # after CR LF ones, below
BAD_BYTES = {
    "a truncated UTF-8 sequence in a later piece": b"---\nkind: ConfigMap\ndata: {a: \xe2\x82}\n",
    "UTF-16 in a later piece": b"---\n" + "kind: x\n".encode("utf-16"),
}


@TWO_CPUS
@pytest.mark.parametrize("case", sorted(ODD) + sorted(BAD_BYTES))
def test_odd_streams_come_out_of_the_pool_as_out_of_one_process(tmp_path: Path, case: str) -> None:
    """Streams built to cut wrong (markers in scalars, directives, tags, BOMs, line ends, long lines
    of multi-byte characters) or to fail late (bytes that are not UTF-8, NUL): the same YAML, report,
    error line and status, cut at every document and at 300 bytes."""
    path = tmp_path / "in.yaml"
    if case in BAD_BYTES:
        path.write_bytes(deployments(0, 5).encode() + BAD_BYTES[case] + deployments(5, 3).encode())
    else:
        first = deployments(0, 2).replace("\n", "\r\n") if case == "LF, CR LF and CR" else deployments(0, 2)
        path.write_text(first + ODD[case] + deployments(2, 2), newline="")
    for chunk in (1, 300):
        done = same_as_one_process([str(path)], chunk)
        assert b"Traceback" not in done.stderr and len(done.stderr.splitlines()) >= 1


@TWO_CPUS
def test_a_namespace_named_empty_lends_its_labels_to_no_pod(tmp_path: Path) -> None:
    """A Namespace object with `name: ''` (which no API server accepts) was filed under "", the key
    a pod without a namespace is looked up by: that pod took its `restricted` level and was skipped.
    A pod without a namespace is decided without labels, in the pool as in one process."""
    path = tmp_path / "in.yaml"
    path.write_text(
        "---\nkind: Namespace\napiVersion: v1\nmetadata:\n  name: ''\n  labels:\n"
        "    pod-security.kubernetes.io/enforce: restricted\n"
        + deployments(0, 3)
        + "---\nkind: Pod\napiVersion: v1\nmetadata: {name: p}\nspec: {containers: [{name: a, image: b}]}\n"
    )
    for chunk in (1, 400):
        done = same_as_one_process([str(path)], chunk)
        assert done.returncode == 0
        assert done.stderr.decode().splitlines()[-1] == 'pod "p" injected'


@TWO_CPUS
@pytest.mark.slow
def test_a_reader_that_goes_away_ends_the_command_quietly(
    six_mb: tuple[Path, subprocess.CompletedProcess[bytes]],
) -> None:
    """`kubectl mesh inject big.yaml | head -1`: the YAML goes out once the input is read, after
    the workers are stopped; a reader gone by then ends the command quietly (status 0 as before,
    no traceback, no report after the broken pipe) and leaves no worker behind."""
    source, _ = six_mb
    proc = _start_pooled(source, 65536)
    workers = _workers(proc, time.monotonic() + 20)
    assert proc.stdout is not None
    assert proc.stdout.read(4) == b"---\n"  # the first bytes out: the workers are done by now
    seen = set(workers) | set(_children(proc.pid))
    proc.stdout.close()  # as `head -1` does once it has its line
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and err == b"", err[-500:]
    assert not [pid for pid in seen if _alive(pid)]


@TWO_CPUS
@pytest.mark.slow
def test_a_stopped_worker_is_given_up_on_and_the_output_is_one_process(
    six_mb: tuple[Path, subprocess.CompletedProcess[bytes]],
) -> None:
    """A worker SIGSTOPped mid-run (or stuck in a piece) answers nothing, and is not dead: the
    parent waited for its piece for ever. Each piece now has a deadline (here 2 s, through
    $KUBECTL_MESH_INJECT_POOL's third field; by default tens of seconds): past it the parent
    stops the pool, kills the workers and reads the rest itself. The YAML and report are one
    process's, within a bound, and no worker is left alive or stopped."""
    source, one = six_mb
    proc = subprocess.Popen(
        [str(VENV_BIN / "kubectl-mesh"), "inject", str(source)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, POOL_ENV: "1:65536:2"},
    )  # fmt: skip
    workers = _workers(proc, time.monotonic() + 20)
    time.sleep(0.3)
    os.kill(workers[0], signal.SIGSTOP)
    assert proc.poll() is None, "the run ended before its worker was stopped: nothing was tested"
    seen = set(workers)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        seen |= set(_children(proc.pid))
        proc.kill()
        proc.communicate()
        for pid in seen:
            os.kill(pid, signal.SIGKILL)
        raise AssertionError("the command hung on a stopped worker") from None
    assert proc.returncode == 0, err[-500:]
    assert err == one.stderr
    assert out == one.stdout
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in seen) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in seen if _alive(pid)]  # not alive, and so not stopped either


def _json_deeper_and_deeper(start: int, stop: int) -> str:
    """As `_deeper_and_deeper`, as a JSON stream: one ConfigMap per depth, `depth` containers."""
    return "".join(
        '{"kind": "ConfigMap", "data": {"a": ' + "[" * (d - 2) + "]" * (d - 2) + "}}\n"
        for d in range(start, stop)
    )


def test_json_inputs_are_held_to_the_depth_yaml_is(tmp_path: Path) -> None:
    """A JSON input is read whole by json, not by the YAML reader that counts depth: 400 levels
    passed where YAML refuses 257, and past about 990 it was Python's recursion limit that
    refused. Now the same rule: 256 pass, 257 fail, named as YAML names them; and 100,000 levels
    are one line, status 1, no traceback."""
    path = tmp_path / "deep.json"
    path.write_text(_json_deeper_and_deeper(manifests.MAX_DEPTH - 5, manifests.MAX_DEPTH + 1))
    assert same_as_one_process([str(path)], chunk=1).returncode == 0
    path.write_text(_json_deeper_and_deeper(manifests.MAX_DEPTH - 5, manifests.MAX_DEPTH + 400))
    done = same_as_one_process([str(path)], chunk=1)
    assert done.returncode == 1 and done.stdout == b""
    assert done.stderr.decode() == f"error: {manifests.too_deep(str(path), 7)}\n"
    path.write_text("[" * 100_000 + "]" * 100_000 + "\n")
    done = same_as_one_process([str(path)], chunk=1)
    assert done.returncode == 1 and done.stdout == b""
    assert done.stderr.decode() == f"error: {manifests.too_deep(str(path), 1)}\n"


def _pod_restoring(annotation: str, count: int = 2) -> str:
    """Injected pods (their proxy, their mark) whose restore annotation is `annotation`."""
    pod = (
        "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: p{n}\n  annotations:\n"
        "    kubectl-mesh.io/injected-by: kubectl-mesh/0\n    kubectl-mesh.io/restore: '{a}'\n"
        "spec:\n  containers:\n  - {{name: app, image: app}}\n  - {{name: mesh-proxy, image: proxy}}\n"
    )
    return "".join(pod.format(n=n, a=annotation) for n in range(count))


@TWO_CPUS
@pytest.mark.parametrize("depth", [manifests.MAX_DEPTH + 1, 986, 100_000])
def test_a_restore_annotation_nested_too_deeply_is_one_line_in_the_pool_as_in_one_process(
    tmp_path: Path, depth: int
) -> None:
    """`uninject` reads the restore annotation with json, which Python's recursion limit bounded:
    986 levels were read in one process and refused in the pool (its stack is deeper), and the
    error blamed the document. Now the annotation is held to the documents' 256 levels: past
    them, one line naming the file, the document and the annotation, status 1, no traceback, in
    the pool as in one process; at 256 it is read (a list, not a restore record: nothing to put
    back)."""
    path = tmp_path / "in.yaml"
    path.write_text(_pod_restoring("[" * manifests.MAX_DEPTH + "]" * manifests.MAX_DEPTH))
    done = same_as_one_process([str(path)], chunk=1, command="uninject")
    assert done.returncode == 0 and done.stderr == b'pod "p0" uninjected\npod "p1" uninjected\n'
    path.write_text(deployments(0, 2) + _pod_restoring("[" * depth + "]" * depth))
    done = same_as_one_process([str(path)], chunk=1, command="uninject")
    assert done.returncode == 1 and done.stdout == b""
    assert done.stderr.decode() == (
        f"error: {path}: document 3: its kubectl-mesh.io/restore annotation is nested too deeply to read "
        "(is it what kubectl mesh inject wrote?)\n"
    )
