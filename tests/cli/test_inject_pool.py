"""`kubectl mesh inject` on a large input: cut at document starts, done by a pool of workers.

Oracle: the same command in one process ($KUBECTL_MESH_INJECT_POOL=off), which is how every input
was done before the pool: the pool's stdout, stderr and exit status must be those, byte for byte,
over the corpus and over inputs built to catch a wrong cut (directives, CR line ends, a quoted
scalar or a flow collection cut by `---`), an error in a later piece (its line and document
counted from the file's start), and Namespaces in flight while later pieces are done. Small
pieces (`1:CHUNK`: every input is cut, often at every document) make each case reach the pool.
Pure: `manifests.DocumentChunks` gives back every byte, cut only where a document starts.
"""

from __future__ import annotations

import io
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kubectl_mesh import manifests
from kubectl_mesh.commands.transform import CHUNK_BYTES, POOL_ENV, POOL_THRESHOLD, idle_workers
from kubectl_mesh.cpuquota import cgroup_v1_cpus, cgroup_v2_cpus, cpus_allowed, own_cgroups
from tests.support.big_manifests import run_inject, write_manifests

VENV_BIN = Path(sys.executable).parent
CORPUS = Path(__file__).resolve().parents[1] / "corpus"
CPUS = cpus_allowed(len(os.sched_getaffinity(0)))  # what the pool sees: the affinity and the quota
TWO_CPUS = pytest.mark.skipif(CPUS < 2, reason="the pool needs two CPUs")


def inject(
    args: list[str], pool: str, stdin: bytes | None = None, command: str = "inject"
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [str(VENV_BIN / "kubectl-mesh"), command, *args],
        input=stdin, capture_output=True, timeout=120, env={**os.environ, POOL_ENV: pool},
    )  # fmt: skip


def same_as_one_process(
    args: list[str], chunk: int, stdin: bytes | None = None, command: str = "inject"
) -> subprocess.CompletedProcess[bytes]:
    one = inject(args, "off", stdin, command)
    pooled = inject(args, f"1:{chunk}", stdin, command)
    assert pooled.returncode == one.returncode, pooled.stderr
    assert pooled.stderr == one.stderr
    assert pooled.stdout == one.stdout
    return pooled


@TWO_CPUS
def test_the_corpus_comes_out_of_the_pool_as_out_of_one_process(tmp_path: Path) -> None:
    """Every corpus file, and all of them as one stream: the same YAML and report."""
    files = sorted(p for p in CORPUS.rglob("*") if p.suffix in (".yaml", ".yml"))
    assert len(files) > 100
    done = same_as_one_process([str(CORPUS)], chunk=1)
    assert done.returncode == 0 and done.stdout.count(b"mesh-proxy") > 100
    stream = tmp_path / "all.yaml"
    stream.write_bytes(b"".join(b"---\n" + p.read_bytes().rstrip(b"\n") + b"\n" for p in files))
    for chunk in (1, 3000, 40_000):
        done = same_as_one_process([str(stream)], chunk)
        assert done.returncode == 0
    back = same_as_one_process(["-"], 3000, stdin=done.stdout, command="uninject")  # uninject too
    assert back.returncode == 0 and b"mesh-proxy" not in back.stdout


DEPLOYMENT = """\
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web-{n}, namespace: {ns}}}
spec:
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers: [{{name: app, image: "app:1", env: [{{name: T, value: 12:30}}]}}]
"""


def deployments(start: int, count: int, ns: str = "shop") -> str:
    return "".join(DEPLOYMENT.format(n=n, ns=ns) for n in range(start, start + count))


BAD_LATER = {
    "indentation": deployments(0, 6) + "---\nkind: Service\nmetadata:\n  name: x\n   labels: {a: b}\n",
    "crlf and a lone cr": (deployments(0, 3) + "---\nkind: ConfigMap\ndata: {a: b}\r\n\r\n")
    + deployments(3, 3).replace("\n", "\r\n")
    + "---\nkind: Service\nmetadata: {name: x\n",
    "nel and ls in strings": deployments(0, 3)
    + '---\nkind: ConfigMap\ndata: {a: "x\u0085y", b: "p\u2028q"}\n'
    + deployments(3, 3)
    + "---\nkind: [\n",
    "quote cut by a document start": deployments(0, 4) + "---\nkind: ConfigMap\ndata: {a: 'open\n---\nb: c\n",
    "flow cut by a document start": deployments(0, 4) + "---\nkind: ConfigMap\ndata: [a,\n---\nb: c\n",
    "a list, not an object": deployments(0, 5) + "---\n- a\n- b\n" + deployments(5, 2),
    "nested too deeply": deployments(0, 5) + "---\na: " + "[" * 5000 + "]" * 5000 + "\n",
    "not utf-8": deployments(0, 5) + "---\nkind: ConfigMap\ndata: {a: \xff}\n",
    "empty documents counted": deployments(0, 3) + "---\n---\n# c\n---\n" + deployments(3, 2) + "---\n7\n",
    "a bare document after an end marker (libyaml: YAML 1.1)": deployments(0, 2)
    + "...\nkind: ConfigMap\ndata: {a: b}\n"
    + deployments(2, 2),
    "a tab in the wrong place": deployments(0, 4) + "---\nkind: Pod\nmetadata:\n\tname: x\n",
}


@TWO_CPUS
@pytest.mark.parametrize("case", sorted(BAD_LATER))
def test_an_error_in_a_later_piece_is_the_line_one_process_prints(tmp_path: Path, case: str) -> None:
    path = tmp_path / "in.yaml"
    path.write_bytes(BAD_LATER[case].encode("utf-8", "surrogateescape").replace(b"\xc3\xbf", b"\xff"))
    for chunk in (1, 700):
        done = same_as_one_process([str(path)], chunk)
        assert done.returncode == 1 and done.stdout == b""
        (line,) = done.stderr.decode().splitlines()  # one line, no traceback
        assert line.startswith(f"error: {path}"), line
    # counted from the file's start, not the piece's
    assert EXPECTED.get(case, "") in line, line


EXPECTED = {
    "indentation": ":65:10: mapping values are not allowed in this context",
    "crlf and a lone cr": ":68:1: did not find expected ',' or '}'",
    "nel and ls in strings": ":68:1: did not find expected node content",
    "a list, not an object": ": document 6 is not a Kubernetes object",
    "nested too deeply": ":52:1003: document 6 is nested too deeply",
    "empty documents counted": ": document 9 is not a Kubernetes object",
}


@TWO_CPUS
def test_files_after_a_failed_piece_and_after_a_good_file_are_numbered_on_their_own(tmp_path: Path) -> None:
    """Several inputs through one pool: a good file, then a file failing in a later piece, named
    with its own line (the error ends the command, as in one process); and good files with stdin
    among them."""
    good, bad, after = tmp_path / "good.yaml", tmp_path / "bad.yaml", tmp_path / "after.yaml"
    good.write_text(deployments(0, 8))
    bad.write_text(BAD_LATER["indentation"])
    after.write_text(deployments(0, 2))
    done = same_as_one_process([str(good), str(bad), str(after)], 500)
    assert done.returncode == 1 and done.stdout == b""
    assert done.stderr.decode().strip() == f"error: {bad}{EXPECTED['indentation']}"
    done = same_as_one_process([str(good), str(after), "-"], 500, stdin=good.read_bytes())
    assert done.returncode == 0 and done.stdout.count(b"mesh-proxy") > 18


VALID_ODD = {
    "directives": deployments(0, 3) + "...\n%YAML 1.1\n---\n" + deployments(3, 1).removeprefix("---\n")
    + "...\n%TAG !e! tag:yaml.org,2002:\n---\nkind: ConfigMap\ndata: {a: !e!str 12:30}\n" + deployments(4, 2),
    "block scalars and comments at column 0": deployments(0, 2)
    + "---\nkind: ConfigMap\ndata:\n  s: |\n    ---\n    --- x\n# ---\n  t: >\n    a\n\n    b\n"
    + deployments(2, 2)
    + "--- # a comment on the marker\nkind: ConfigMap\n",
    "anchors per document": deployments(0, 1) + "---\nkind: ConfigMap\na: &x {k: v}\nb: *x\n"
    + "---\nkind: ConfigMap\na: &x [1]\nb: *x\n" + deployments(1, 1),
    "crlf": deployments(0, 4).replace("\n", "\r\n"),
    "no newline at the end": deployments(0, 3) + "---\nkind: ConfigMap",
    "a BOM": "\ufeff" + deployments(0, 3),
    "leading comments": "# header\n\n" + deployments(0, 3),
}  # fmt: skip


@TWO_CPUS
@pytest.mark.parametrize("case", sorted(VALID_ODD))
def test_odd_but_valid_streams_come_out_as_out_of_one_process(tmp_path: Path, case: str) -> None:
    path = tmp_path / "in.yaml"
    path.write_text(VALID_ODD[case], newline="")
    for chunk in (1, 500):
        done = same_as_one_process([str(path)], chunk)
        assert done.returncode == 0, done.stderr
    done = same_as_one_process(["-"], 1, stdin=path.read_bytes())  # stdin: read once, never again
    assert done.returncode == 0


@TWO_CPUS
def test_namespaces_met_in_flight_decide_later_pieces_as_in_one_process(tmp_path: Path) -> None:
    """A Namespace that enforces `restricted` (mesh-init cannot run there: the pod is skipped)
    arrives while the pieces after it are already in the workers, which did not know it yet; then
    the same namespace relaxed, and a List holding a Namespace. One process's answers hold."""
    restricted = "---\nkind: Namespace\napiVersion: v1\nmetadata:\n  name: shop\n  labels:\n"
    restricted += "    pod-security.kubernetes.io/enforce: restricted\n"
    relaxed = "---\nkind: Namespace\napiVersion: v1\nmetadata: {name: shop}\n"
    in_list = "---\nkind: List\napiVersion: v1\nitems:\n- {kind: Namespace, apiVersion: v1, metadata: "
    in_list += "{name: other, labels: {pod-security.kubernetes.io/enforce: baseline}}}\n"
    text = deployments(0, 3) + restricted + deployments(3, 12) + relaxed + deployments(15, 5)
    text += in_list + deployments(20, 5, ns="other")
    path = tmp_path / "in.yaml"
    path.write_text(text)
    for chunk in (1, 400, 2000):
        done = same_as_one_process([str(path)], chunk)
        report = done.stderr.decode().splitlines()
        assert [line.split()[2] for line in report if line.startswith("deployment")] == (
            ["injected"] * 3 + ["skipped:"] * 12 + ["injected"] * 5 + ["skipped:"] * 5
        ), report


def test_document_chunks_give_back_every_byte_cut_only_at_document_starts() -> None:
    """Pure: any reads, any piece size; never between a directive and its document."""
    text = (VALID_ODD["directives"] + VALID_ODD["block scalars and comments at column 0"]).encode()
    rng = random.Random(7)

    class Trickle(io.BytesIO):
        def read(self, size: int | None = -1, /) -> bytes:
            return super().read(min(size or 1, rng.randint(1, 50)) if size and size > 0 else size)

    for size in (1, 10, 100, 1000, 10**6):
        pieces = list(manifests.DocumentChunks(Trickle(text), size))
        assert b"".join(pieces) == text
        assert all(p.startswith(b"---") for p in pieces[1:])
        assert not any(p.rstrip(b"\n").endswith((b"%YAML 1.1", b"tag:yaml.org,2002:")) for p in pieces)
    assert manifests.line_breaks(b"a\r\nb\rc\nd\xc2\x85e\xe2\x80\xa8f\xe2\x80\xa9") == 6


@TWO_CPUS
@pytest.mark.slow
def test_a_small_input_pays_no_pool_and_a_large_one_uses_every_cpu(tmp_path: Path) -> None:
    """The threshold, with the load left out (forced: the shared machine is rarely idle)."""
    small, large, out = tmp_path / "small.yaml", tmp_path / "large.yaml", tmp_path / "out.yaml"
    write_manifests(small, POOL_THRESHOLD // 2, "dense")
    write_manifests(large, POOL_THRESHOLD + 1_000_000, "dense")
    forced = {POOL_ENV: f"{POOL_THRESHOLD}:{CHUNK_BYTES}"}
    run = run_inject(small, out, forced)
    assert run.returncode == 0 and run.processes == 1, run
    run = run_inject(large, out, forced)
    assert run.returncode == 0 and run.processes == 1 + CPUS, run
    assert out.read_bytes().count(b"\n---\n") + 1 == large.read_bytes().count(b"---\n")


def test_the_pool_takes_only_the_cpus_the_load_leaves_room_for() -> None:
    """Pure: every CPU up to a load of their number, then fewer; one process at load 3 and more on
    two CPUs (at 4.5-5.5 the pool was measured slower than one process)."""
    assert idle_workers(2, 0.0) == 2 and idle_workers(2, 1.5) == 2 and idle_workers(2, 2.0) == 2
    assert idle_workers(2, 2.1) == 1 and idle_workers(2, 5.5) == 1
    assert idle_workers(8, 0.0) == 8 and idle_workers(8, 7.5) == 2 and idle_workers(8, 3.0) == 7
    assert idle_workers(1, 0.0) == 1


def test_a_cpu_quota_is_read_from_the_cgroup_files_text() -> None:
    """Pure: cgroup v2's cpu.max and v1's cfs quota and period, as CPUs (rounded up: 1.5 CPUs
    of quota can keep two workers busy half the time each); None where there is no quota or the
    text is not one."""
    assert cgroup_v2_cpus("max 100000\n") is None
    assert cgroup_v2_cpus("100000 100000\n") == 1 and cgroup_v2_cpus("200000 100000\n") == 2
    assert cgroup_v2_cpus("150000 100000\n") == 2 and cgroup_v2_cpus("50000 100000") == 1
    assert cgroup_v2_cpus("1000 100000\n") == 1  # a hundredth of a CPU is still one worker
    for junk in ("", "max", "100000", "x 100000", "100000 0", "-5 100000", "1 2 3"):
        assert cgroup_v2_cpus(junk) is None, junk
    assert cgroup_v1_cpus("-1\n", "100000\n") is None
    assert cgroup_v1_cpus("100000\n", "100000\n") == 1 and cgroup_v1_cpus("250000\n", "100000\n") == 3
    assert cgroup_v1_cpus("x", "100000") is None and cgroup_v1_cpus("100000", "0") is None


def test_the_pool_takes_no_more_cpus_than_the_quota(tmp_path: Path) -> None:
    """A pod limited to 1 CPU (cgroup v2 or v1) gets no pool of 2 workers: CPUs are the
    affinity's, capped by the quota; a machine without cgroup files keeps the affinity's. The
    process's own cgroup is read first, the mount's top after (a container's own cgroup)."""
    assert cpus_allowed(4, tmp_path, "") == 4
    (tmp_path / "cpu.max").write_text("100000 100000\n")
    assert cpus_allowed(4, tmp_path, "") == 1
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cpus_allowed(4, tmp_path, "") == 4
    (tmp_path / "cpu.max").write_text("800000 100000\n")
    assert cpus_allowed(4, tmp_path, "") == 4
    (tmp_path / "system.slice" / "job").mkdir(parents=True)
    (tmp_path / "system.slice" / "job" / "cpu.max").write_text("100000 100000\n")
    assert cpus_allowed(4, tmp_path, "0::/system.slice/job\n") == 1
    assert cpus_allowed(4, tmp_path, "0::/elsewhere\n") == 4  # not below this mount: its top
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cpus_allowed(2, v1, "") == 1
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cpus_allowed(2, v1, "") == 2
    (v1 / "cpu" / "docker" / "c1").mkdir(parents=True)
    (v1 / "cpu" / "docker" / "c1" / "cpu.cfs_quota_us").write_text("50000\n")
    (v1 / "cpu" / "docker" / "c1" / "cpu.cfs_period_us").write_text("100000\n")
    assert cpus_allowed(2, v1, "5:memory:/x\n4:cpu,cpuacct:/docker/c1\n0::/\n") == 1


def test_the_process_cgroups_are_read_from_proc_self_cgroup() -> None:
    """Pure: /proc/self/cgroup's text as (v2 path, v1 cpu path)."""
    assert own_cgroups("0::/\n") == ("", None)
    assert own_cgroups("0::/kubepods/pod1/c2\n") == ("kubepods/pod1/c2", None)
    text = "9:memory:/a\n2:cpuacct:/b\n1:cpu,cpuacct:/docker/c1\n0::/\n"
    assert own_cgroups(text) == ("", "docker/c1")
    assert own_cgroups("") == ("", None)


def _workers_of(pid: int, deadline: float) -> list[int]:
    """The pool's workers the moment they are forked (polled until `deadline`): a signal sent
    then meets them before their first line has run, which is when one is hardest to take."""
    while time.monotonic() < deadline:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        if len(children) >= 2:
            return [int(c) for c in children]
        time.sleep(0.0005)
    raise AssertionError("no workers")


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@TWO_CPUS
@pytest.mark.slow
@pytest.mark.parametrize("attempt", range(3))  # the signal races the workers' start: one try in 8 lost it
@pytest.mark.parametrize("how", ["ctrl-c", "kill -9"])
def test_stopping_inject_stops_its_workers(tmp_path: Path, how: str, attempt: int) -> None:
    """Ctrl-C (SIGINT to the terminal's process group): exit 130, no traceback, stdout empty;
    kill -9 of the parent alone: the workers go too (PR_SET_PDEATHSIG)."""
    source = tmp_path / "in.yaml"
    write_manifests(source, 8_000_000, "dense")
    proc = subprocess.Popen(
        [str(VENV_BIN / "kubectl-mesh"), "inject", str(source)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
        env={**os.environ, POOL_ENV: "1:65536"},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as a shell's foreground job
    )  # fmt: skip
    workers = _workers_of(proc.pid, time.monotonic() + 20)
    if how == "ctrl-c":
        os.killpg(proc.pid, signal.SIGINT)
    else:
        proc.kill()
    out, err = proc.communicate(timeout=30)
    deadline = time.monotonic() + 10
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(w) for w in workers)
    assert out == b""  # the YAML waits for the end: nothing half-written
    if how == "ctrl-c":
        assert proc.returncode == 130 and b"Traceback" not in err, err[-500:]


@pytest.mark.parametrize("setting", ["1:x", "1:300:0", "1:300:-2", "1:300:nan", "1:300:2:9", "x"])
def test_a_bad_pool_setting_is_one_line(tmp_path: Path, setting: str) -> None:
    """$KUBECTL_MESH_INJECT_POOL is for tests and the bench, but a bad one is still one line and
    status 1, nothing on stdout; its deadline field (SECONDS) must be a positive number."""
    path = tmp_path / "in.yaml"
    path.write_text(deployments(0, 2))
    done = inject([str(path)], setting)
    assert done.returncode == 1 and done.stdout == b""
    assert done.stderr.decode() == (
        f"error: ${POOL_ENV} must be THRESHOLD:CHUNK in bytes (and :SECONDS a piece may take), or off; "
        f"not {setting!r}\n"
    )
    assert inject([str(path)], "1:300:0.5").returncode == 0
