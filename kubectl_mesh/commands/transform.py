"""Apply a pod action (inject, uninject) to every pod template of manifests, in input order.

`transform_files` reads each input document by document, hands each object's pod template to
the action, and writes the result as YAML. The YAML goes to stdout only once every input has been
read (a bad one leaves stdout empty; it waits in a temporary file, not in memory), the per-object
report to stderr.

**Large inputs use the idle cores.** A YAML input of at least `POOL_THRESHOLD` bytes is cut at
document starts (`manifests.DocumentChunks`) into pieces of about `CHUNK_BYTES`, which a pool of
forked worker processes (one per CPU while the load average leaves room, `idle_workers`) reads,
transforms and writes; the results are taken in input
order, at most `2 × workers + 1` pieces in flight (memory stays bounded however large the input).
What a piece gives does not depend on where it was cut, so the output is the one a single process
writes. Two things need the input's order, and get it:
- Namespaces met earlier in the input decide how later pods are injected. A worker gets the
  namespaces known when its piece was sent and records which it looked up; a piece that looked one
  up which an earlier piece, still in flight then, has since defined otherwise is done again here.
- Errors: a piece that fails in a worker is read again here, with the rest of the input behind it,
  by the single-process reader that numbers lines and documents from the start of the file. So an
  error is the very line a single process prints (or, were a cut ever wrong, the output still is).
  A worker that dies (killed, or by the OOM killer) fails the pieces in flight alike: the pool
  would never answer the one it held, so the parent, seeing the pool replace a worker, reads them
  and the rest itself. So does a piece past its deadline (`piece_deadline`, far beyond what a
  healthy worker takes): its worker is stopped or stuck, alive, and would never be replaced.
A smaller input, a busy machine, one CPU (the affinity's, capped by a container's CPU quota),
JSON, UTF-16 or the pure-Python parser: one process, as before.
"""

from __future__ import annotations

import io
import math
import os
import sys
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, Protocol, TextIO

from kubectl_mesh.errors import MeshError

if TYPE_CHECKING:
    from multiprocessing.pool import ApplyResult, Pool

    from kubectl_mesh.inject import Workload
    from kubectl_mesh.manifests import Source

# kind -> path from the object to its pod template ([] for a Pod: the object is the pod).
TEMPLATE_PATHS: dict[str, tuple[str, ...]] = {
    "Pod": (),
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "ReplicationController": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
}

# Below this many bytes an input is done in this process: forking and feeding workers would
# cost more than it saves (measured: bench/README.md, "bench-inject").
POOL_THRESHOLD = 4_000_000
CHUNK_BYTES = 256 * 1024
# Tests set "THRESHOLD:CHUNK" (bytes) to drive the pool with small inputs, "THRESHOLD:CHUNK:SECONDS"
# to give each piece that deadline instead of `piece_deadline`'s; "off": never.
POOL_ENV = "KUBECTL_MESH_INJECT_POOL"
# How often the parent, waiting for a piece, looks whether a worker died (its piece is then lost).
WORKER_CHECK_SECONDS = 0.2
# How long a piece may take once the parent waits for it (`piece_deadline`): no healthy worker
# comes near it. A worker does about 4.5 MB of dense YAML per CPU-second (0.06 s for 256 KiB);
# 10 s plus 100 s per MiB is 35 s for a 256 KiB piece, over 500 times that, room for a machine
# loaded many times over, and it grows with a piece made long by one long document.
DEADLINE_BASE_SECONDS = 10.0
DEADLINE_SECONDS_PER_MIB = 100.0
STOP_SECONDS = 5.0  # Pool.terminate() takes milliseconds, unless a dead worker holds its lock


@dataclass(frozen=True)
class Target:
    """Where a pod template sits: its namespace, the labels of that namespace when the input
    holds the Namespace object (else None: unknown, no cluster call), and the workload."""

    namespace: str | None
    namespace_labels: Mapping[str, str] | None
    workload: Workload | None


@dataclass(frozen=True)
class Outcome:
    """A transformed pod, or the skip reason; plus warnings for the report."""

    pod: dict[str, Any]
    skipped: str | None = None
    warnings: tuple[str, ...] = ()


# (pod or template, where it sits) -> what became of it
PodAction = Callable[[dict[str, Any], Target], Outcome]


class Report(Protocol):
    """Where the per-object lines go: a list, or `_ReportFile`."""

    def append(self, line: str, /) -> None: ...

    def extend(self, lines: Iterable[str], /) -> None: ...


class _ReportFile:
    """The report of a run, one line per object, kept in a temporary file until the YAML is out:
    a line per document held in memory would grow with the input (12 MB for 50 MB of YAML)."""

    def __init__(self, file: IO[str]) -> None:
        self.file = file
        self.empty = True

    def append(self, line: str) -> None:
        self.file.write(line + "\n")
        self.empty = False

    def extend(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.append(line)

    def print_to(self, err: TextIO) -> None:
        import shutil

        if not self.empty:
            self.file.seek(0)
            shutil.copyfileobj(self.file, err)


def transform_files(paths: list[str], action: PodAction, done: str) -> int:
    """Apply `action` to every pod template of every input, in order (module docstring); the
    YAML to stdout once every input has been read, the report to stderr."""
    import tempfile  # here, not at the top: `kubectl mesh --help` imports every command

    from kubectl_mesh import manifests

    with (
        tempfile.TemporaryFile(prefix="kubectl-mesh-") as raw,
        tempfile.TemporaryFile("w+", encoding="utf-8", prefix="kubectl-mesh-report-") as report,
    ):
        out = io.TextIOWrapper(raw, encoding="utf-8")
        run = _Run(action, done, out, _ReportFile(report))
        try:
            for source in manifests.open_sources(paths, sys.stdin):  # a ManifestError is a MeshError
                run.source(source)
        finally:
            run.close()
        out.flush()
        raw.flush()
        if hasattr(sys.stdout, "buffer"):  # bytes to bytes: no decoding and encoding again
            sys.stdout.flush()
            _copy_out(raw, sys.stdout.buffer)
        else:
            raw.seek(0)
            sys.stdout.write(raw.read().decode())
        out.detach()  # `raw` is closed by its own `with`
        sys.stdout.flush()
        run.report.print_to(sys.stderr)
    return 0


def _copy_out(raw: IO[bytes], out: IO[bytes]) -> None:
    """The temporary file to stdout: by sendfile(2) where it can (no copy through this process:
    the output of a large input is four times its size), else by reads and writes."""
    import shutil

    size = raw.tell()
    sent = 0
    try:
        target = out.fileno()
        while sent < size:
            done = os.sendfile(target, raw.fileno(), sent, min(size - sent, 1 << 30))
            if not done:
                break
            sent += done
    except (OSError, ValueError, io.UnsupportedOperation):
        if sent:  # part of it went out: sendfile is not to blame, the output is
            raise
    if sent < size:
        raw.seek(sent)
        shutil.copyfileobj(raw, out, 1 << 20)


def transform_documents(
    name: str,
    documents: Iterable[tuple[int, Any]],
    action: PodAction,
    done: str,
    report: Report,
    namespaces: dict[str, dict[str, str]],
    out: IO[str],
) -> int:
    """Transform and write each (number, document) in turn (None: an empty document, counted);
    `namespaces` learns every Namespace object met. Returns the last document number seen."""
    from kubectl_mesh import manifests

    number = 0
    for number, doc in documents:
        if doc is None:
            continue
        if not isinstance(doc, dict):
            raise MeshError(f"{name}: document {number} is not a Kubernetes object")
        namespaces.update(namespace_labels([doc]))
        try:
            transformed = transform_object(doc, action, done, report, namespaces)
        except RecursionError:
            raise MeshError(manifests.too_deep(name, number)) from None
        except MeshError as exc:  # about one object (the action's): say where it stands
            raise MeshError(f"{name}: document {number}: {exc.message}", exc.hint) from None
        try:
            manifests.dump_document(transformed, out)
        except RecursionError:
            raise MeshError(manifests.too_deep(name, number)) from None
    return number


def namespace_labels(docs: list[Any]) -> dict[str, dict[str, str]]:
    """The labels of every Namespace object in the input (in Lists too), by name."""
    found: dict[str, dict[str, str]] = {}
    for doc in docs:
        if not isinstance(doc, dict):
            continue
        items = doc.get("items")
        if str(doc.get("kind", "")).endswith("List") and isinstance(items, list):
            found.update(namespace_labels(items))
        elif doc.get("kind") == "Namespace" and isinstance(doc.get("metadata"), dict):
            meta = doc["metadata"]
            labels = meta.get("labels")
            if isinstance(meta.get("name"), str) and meta["name"]:  # "" would stand for "no namespace"
                found[meta["name"]] = {
                    str(k): str(v) for k, v in (labels if isinstance(labels, dict) else {}).items()
                }
    return found


def transform_object(
    obj: dict[str, Any],
    action: PodAction,
    done: str,
    report: Report,
    namespaces: Mapping[str, Mapping[str, str]] | None = None,
) -> dict[str, Any]:
    """One object (or List) with `action` applied to its pod template; appends report lines."""
    if namespaces is None:
        namespaces = {}
    kind = obj.get("kind")
    items = obj.get("items")
    if isinstance(kind, str) and kind.endswith("List") and isinstance(items, list):
        new_items = [
            transform_object(item, action, done, report, namespaces) if isinstance(item, dict) else item
            for item in items
        ]
        return {**obj, "items": new_items}
    raw_meta = obj.get("metadata")
    meta: dict[str, Any] = raw_meta if isinstance(raw_meta, dict) else {}
    name = meta.get("name") or meta.get("generateName") or "<unnamed>"
    label = f'{str(kind or "object").lower()} "{name}"'
    if not isinstance(kind, str) or kind not in TEMPLATE_PATHS:
        report.append(f"{label} skipped: not a workload")
        return obj
    path = TEMPLATE_PATHS[kind]
    template = _get(obj, path)
    if not isinstance(template, dict):
        report.append(f"{label} skipped: no pod template")
        return obj
    from kubectl_mesh.inject import Workload

    namespace = meta.get("namespace") if isinstance(meta.get("namespace"), str) else None
    workload = None if kind == "Pod" else Workload(kind.lower(), str(name))
    outcome = action(template, Target(namespace, namespaces.get(namespace or ""), workload))
    report.extend(f"{label} warning: {warning}" for warning in outcome.warnings)
    if outcome.skipped is not None:
        report.append(f"{label} skipped: {outcome.skipped}")
        return obj
    report.append(f"{label} {done}")
    return _set(obj, path, outcome.pod)


def _get(obj: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def _set(obj: dict[str, Any], path: tuple[str, ...], value: dict[str, Any]) -> dict[str, Any]:
    """A copy of `obj` with `value` at `path`, copying only the dicts on the way."""
    if not path:
        return value
    return {**obj, path[0]: _set(obj[path[0]], path[1:], value)}


# --- one piece of a large input (in a worker, or here when it must be done again) -------------


class _Recorded(dict[str, dict[str, str]]):
    """The namespaces a piece starts from; records each lookup of one the piece did not define
    itself (name -> the labels it was given), which the parent checks against the input's order."""

    def __init__(self, known: Mapping[str, dict[str, str]]) -> None:
        super().__init__(known)
        self.defined: dict[str, dict[str, str]] = {}
        self.looked_up: dict[str, dict[str, str] | None] = {}

    def update(self, other: Any = (), /, **kwargs: Any) -> None:
        new = dict(other, **kwargs)
        self.defined.update(new)
        super().update(new)

    def get(self, key: str, default: Any = None) -> Any:
        if key not in self.defined and key not in self.looked_up:
            self.looked_up[key] = super().get(key)
        return super().get(key, default)


@dataclass
class _Piece:
    """What a piece gave: its YAML, report lines, documents counted, namespaces defined and
    looked up; or `failed` (the parent reads it again to say why)."""

    output: bytes = b""
    report: list[str] = field(default_factory=list)
    documents: int = 0
    defined: dict[str, dict[str, str]] = field(default_factory=dict)
    looked_up: dict[str, dict[str, str] | None] = field(default_factory=dict)
    failed: bool = False


_worker: tuple[PodAction, str] | None = None  # the action and report word, set in each worker


class _Forks:
    """The forks this process has made since it first started a pool (`os.register_at_fork`):
    after its first workers, a pool forks only to replace one that died."""

    made = 0
    counting = False

    @classmethod
    def count(cls) -> None:
        cls.made += 1


def _start_worker(action: PodAction, done: str, parent: int) -> None:
    """Runs first in each forked worker: Ctrl-C is the parent's to handle, and a worker goes when
    its parent does. SIGINT came blocked from the parent (`_Run._pool`), so a Ctrl-C before this
    line stays pending, and ignoring it discards it: no worker prints a traceback."""
    import signal

    from kubectl_mesh.procs import die_with_parent

    global _worker
    _worker = (action, done)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    die_with_parent()
    if os.getppid() != parent:  # the parent went before the line above: nobody would tell us
        os._exit(0)


def _work(name: str, data: bytes, known: dict[str, dict[str, str]]) -> _Piece:
    assert _worker is not None
    return _do_piece(name, data, known, *_worker)


def _do_piece(
    name: str, data: bytes, known: Mapping[str, dict[str, str]], action: PodAction, done: str
) -> _Piece:
    from kubectl_mesh import manifests

    namespaces = _Recorded(known)
    piece = _Piece()
    out = io.StringIO()
    try:
        piece.documents = transform_documents(
            name, manifests.yaml_documents(name, data), action, done, piece.report, namespaces, out
        )
    except Exception:  # whatever it is, the parent reads the piece again and reports it so
        return _Piece(failed=True)
    piece.output = out.getvalue().encode()
    piece.defined, piece.looked_up = namespaces.defined, namespaces.looked_up
    return piece


# --- the run over every input ------------------------------------------------------------------


class _Run:
    """One `transform_files`: the output, the report, the namespaces met so far, and the pool of
    workers, started for the first large input and shared by the others."""

    def __init__(self, action: PodAction, done: str, out: TextIO, report: _ReportFile) -> None:
        self.action, self.done = action, done
        self.out, self.report = out, report
        self.namespaces: dict[str, dict[str, str]] = {}
        self.pool: Pool | None = None
        self.forks_before = 0  # the forks this process had made before the pool forked its workers
        self.lost = False  # a worker died: the pool cannot be stopped as usual
        threshold, self.chunk, forced, self.deadline = _pool_sizes()
        cpus = _cpus()
        self.workers = cpus if forced else idle_workers(cpus, os.getloadavg()[0])
        self.threshold = threshold if self.workers > 1 else None

    def source(self, source: Source) -> None:
        from kubectl_mesh import manifests

        head = manifests.peek(source.stream)
        if self.threshold is not None and manifests.chunkable(head):
            if (_file_size(source.stream) or 0) >= self.threshold:
                self._pool()  # forked before more is read: the workers need not share it
            while len(head) < self.threshold:
                block = source.stream.read(self.threshold)
                if not block:
                    break
                head += block
            if len(head) >= self.threshold:
                self._pooled(source.name, manifests.Prefixed(head, source.stream))
                return
        documents = manifests.iter_documents(
            manifests.Source(source.name, manifests.Prefixed(head, source.stream))
        )
        transform_documents(
            source.name, documents, self.action, self.done, self.report, self.namespaces, self.out
        )

    def _pooled(self, name: str, stream: Any) -> None:
        from kubectl_mesh import manifests

        pool = self._pool()
        chunks = manifests.DocumentChunks(stream, self.chunk)
        in_flight: deque[_InFlight] = deque()
        lines = documents = offset = 0
        try:
            for data in chunks:
                work = pool.apply_async(_work, (name, data, dict(self.namespaces)))
                in_flight.append(_InFlight(data, lines, offset, work))
                lines += manifests.line_breaks(data)
                offset += len(data)
                while len(in_flight) > 2 * self.workers:
                    documents = self._take(name, in_flight, documents)
            while in_flight:
                documents = self._take(name, in_flight, documents)
        except _Failed:
            self.close()
            rest = b"".join(piece.data for piece in in_flight) + chunks.pending
            first = in_flight[0]
            again = manifests.yaml_documents(
                name, manifests.Prefixed(rest, stream), first.line, documents, first.offset
            )
            transform_documents(name, again, self.action, self.done, self.report, self.namespaces, self.out)

    def _take(self, name: str, in_flight: deque[_InFlight], documents: int) -> int:
        """Write the oldest piece in flight; returns the documents counted so far."""
        oldest = in_flight[0]
        piece = self._result(oldest.work, self.deadline or piece_deadline(len(oldest.data)))
        if not piece.failed and any(self.namespaces.get(ns) != seen for ns, seen in piece.looked_up.items()):
            # done again here, with the namespaces as the input's order has them
            piece = _do_piece(name, oldest.data, self.namespaces, self.action, self.done)
        if piece.failed:
            raise _Failed  # the piece stays in flight: it is read again
        in_flight.popleft()
        self.out.flush()
        self.out.buffer.write(piece.output)
        self.report.extend(piece.report)
        self.namespaces.update(piece.defined)
        return documents + piece.documents

    def _result(self, work: ApplyResult[_Piece], seconds: float) -> _Piece:
        """A piece's result, or failed (to be read again here) when a worker has died since the
        last look (killed, or by the OOM killer: multiprocessing's Pool starts another, but never
        answers the piece the dead one held), or when the piece is not done `seconds` after the
        parent began to wait for it (a worker stopped, or stuck in the piece: alive, so never
        replaced). Either way waiting on would hang the command; the workers are then killed."""
        import time

        # The oldest piece in flight: a worker has it, or takes it at the latest now.
        deadline = time.monotonic() + seconds
        while not work.ready():
            work.wait(min(WORKER_CHECK_SECONDS, max(0.0, deadline - time.monotonic())))
            if not work.ready() and (self._lost_a_worker() or time.monotonic() >= deadline):
                self.lost = True
                return _Piece(failed=True)
        try:
            return work.get()
        except Exception:  # e.g. a result that could not be sent: read again here, as a failure
            return _Piece(failed=True)

    def _lost_a_worker(self) -> bool:
        """Whether the pool forked a worker in place of one: its workers only ever end with it
        (no `maxtasksperchild`), so a worker replaced is one that died, maybe with a piece. Told
        by the forks this process made, not by which workers are alive: one that died before this
        could look would otherwise be missed, and its replacement taken for it."""
        return _Forks.made > self.forks_before + self.workers

    def _pool(self) -> Pool:
        if self.pool is None:
            import gc
            import multiprocessing

            sys.stdout.flush()  # nothing buffered here may be written again by a worker
            sys.stderr.flush()
            gc.freeze()  # the objects the workers inherit: never collected, so never copied
            if not _Forks.counting:
                os.register_at_fork(after_in_parent=_Forks.count)
                _Forks.counting = True
            self.forks_before, self.lost = _Forks.made, False  # a pool for a later input starts afresh
            import signal

            context = multiprocessing.get_context("fork")  # the action is a closure: inherited, not pickled
            # Blocked while the workers fork, and in the pool's threads, which fork any replacement:
            # a Ctrl-C then waits in the parent for the line after, and is discarded in a worker.
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
            try:
                self.pool = context.Pool(
                    self.workers, initializer=_start_worker, initargs=(self.action, self.done, os.getpid())
                )
            finally:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        return self.pool

    def close(self) -> None:
        """Stop the workers at once: a piece still in one is of no use any more."""
        if self.pool is None:
            return
        import multiprocessing
        import threading

        pool, self.pool = self.pool, None
        # Pool.terminate() first takes the lock of the queue the workers read work from, which a
        # worker killed while it waited for work holds for ever. So it runs in a thread of its
        # own (it stops the pool's threads before it waits), given a moment unless a worker is
        # known to have died; if it is still waiting, every worker is killed and the command
        # goes on (multiprocessing reaps them at exit).
        stopping = threading.Thread(target=pool.terminate, name="pool-terminate", daemon=True)
        stopping.start()
        stopping.join(0 if self.lost or self._lost_a_worker() else STOP_SECONDS)
        if stopping.is_alive():
            for worker in multiprocessing.active_children():
                worker.kill()
        else:
            pool.join()


class _Failed(MeshError):
    """A piece failed in its worker; caught in `_Run._pooled`, which reads it again (a MeshError
    like every error class here, so that if one ever escaped it would still be one line)."""

    def __init__(self) -> None:
        super().__init__("a piece of the input failed in a worker")


@dataclass(frozen=True)
class _InFlight:
    """A piece sent to a worker: its bytes, and the lines and bytes before it in its file."""

    data: bytes
    line: int
    offset: int
    work: ApplyResult[_Piece]


def _file_size(stream: Any) -> int | None:
    """The size of a regular file (None for a pipe, a terminal, a stream without a descriptor)."""
    import stat

    try:
        info = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None
    return info.st_size if stat.S_ISREG(info.st_mode) else None


def _cpus() -> int:
    from kubectl_mesh.cpuquota import cpus_allowed

    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return cpus_allowed(affinity)


def idle_workers(cpus: int, load: float) -> int:
    """How many workers the machine has room for: all its CPUs when the 1-minute load average
    (which does not count this process yet) is at most their number, fewer above it, one at
    `cpus + 1` and beyond (`make -l` judges the load alike). Measured on the shared 2-core machine
    (bench/README.md): with other work at a load of about 1.5-3, two workers beat one process
    (10 MB dense, 5 of 6 turns, best 1.99 s against 2.77); at 4.5-5.5 they were slower (20 MB:
    8.4 s against 6.0, 13.5 against 8.6) and cost 20-25% more CPU."""
    return min(cpus, max(1, math.floor(cpus - load) + 2))


def piece_deadline(size: int) -> float:
    """Seconds a piece of `size` bytes may take once the parent waits for it (see
    `DEADLINE_BASE_SECONDS`): past it, its worker is taken for stopped or stuck."""
    return DEADLINE_BASE_SECONDS + DEADLINE_SECONDS_PER_MIB * size / (1 << 20)


def _pool_sizes() -> tuple[int | None, int, bool, float | None]:
    """(threshold or None for never, piece size, whether the pool is forced whatever the load,
    a piece's deadline in seconds or None for `piece_deadline`'s): the defaults, or
    $KUBECTL_MESH_INJECT_POOL."""
    setting = os.environ.get(POOL_ENV, "")
    if setting == "off":
        return None, CHUNK_BYTES, False, None
    parts = setting.split(":")
    threshold, chunk, seconds = [*parts, "", ""][:3]
    try:
        if len(parts) > 3 or (seconds and not float(seconds) > 0):
            raise ValueError
        sizes = (int(threshold) if threshold else POOL_THRESHOLD), (int(chunk) if chunk else CHUNK_BYTES)
        return sizes[0], sizes[1], bool(setting), float(seconds) if seconds else None
    except ValueError:
        raise MeshError(
            f"${POOL_ENV} must be THRESHOLD:CHUNK in bytes (and :SECONDS a piece may take), or off; "
            f"not {setting!r}"
        ) from None
