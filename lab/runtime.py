"""The environment for processes the lab and the tests start, including ones run as other UIDs.

/root is mode 700 and a CI clone may live below it, so a process run as the proxy's UID 2102
could not read the checkout. `runtime_env()` copies the three packages to a world-readable
directory (keyed by their content hash, so it is always the code under test) and puts it first
on PYTHONPATH; the interpreter and dependencies come from the venv, built from Debian's
python3 outside /root (see the Makefile).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("kubectl_mesh", "webhook", "proxy")
RUNTIME_ROOT = Path(os.environ.get("MESH_RUNTIME_ROOT", "/opt/kubectl-mesh/run"))
VENV_BIN = Path(sys.executable).parent


def _source_files() -> list[Path]:
    files: list[Path] = []
    for pkg in PACKAGES:
        files.extend(
            p for p in sorted((REPO / pkg).rglob("*")) if p.is_file() and "__pycache__" not in p.parts
        )
    return files


@cache
def runtime_pythonpath() -> Path:
    """A world-readable copy of the packages under test; returns its directory."""
    digest = hashlib.sha256()
    files = _source_files()
    for f in files:
        digest.update(str(f.relative_to(REPO)).encode())
        digest.update(f.read_bytes())
    target = RUNTIME_ROOT / digest.hexdigest()[:16]
    if not target.exists():
        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        for f in files:
            dest = tmp / f.relative_to(REPO)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, dest)
        for d in [tmp, *tmp.rglob("*")]:
            d.chmod(0o755 if d.is_dir() else 0o644)
        RUNTIME_ROOT.mkdir(parents=True, exist_ok=True)
        RUNTIME_ROOT.chmod(0o755)
        try:
            tmp.rename(target)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)  # another process won the race
    return target


def runtime_env(**extra: str) -> dict[str, str]:
    """Environment for a child process: venv first on PATH, code under test first on PYTHONPATH."""
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}:{env.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
    env["PYTHONPATH"] = str(runtime_pythonpath())
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra)
    return env


def is_root() -> bool:
    return os.geteuid() == 0


@cache
def helm_post_renderer() -> tuple[str, ...]:
    """helm flags (install, upgrade) that run the chart's pods with this checkout's code
    (`lab/post_render.py`): the node agent may have been started from another checkout."""
    import tempfile

    script = Path(tempfile.mkdtemp(prefix="mesh-post-render-")) / "post-render"
    script.write_text(
        f"#!/bin/sh\nPYTHONPATH={REPO} exec {sys.executable} -m lab.post_render {runtime_pythonpath()}\n"
    )
    script.chmod(0o755)
    return ("--post-renderer", str(script))
