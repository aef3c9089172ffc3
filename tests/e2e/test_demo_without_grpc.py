"""grpcio and protobuf are the `demo` extra, not dependencies: `kubectl mesh demo` in an environment
without them says in one line how to install them, and the topologies (plain HTTP/1.1) need neither.

The environment is real: a venv holding what `pip install kubectl-mesh` installs, without the
extra (tests/support/image_env.py: links to this venv's files, half a second, not a pip install),
and the real command, run as a process.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from kubectl_mesh.demo.prometheus import INSTALL_HINT
from lab.runtime import runtime_env
from tests.support.image_env import image_distributions, linked_venv


@pytest.fixture(scope="module")
def python_without_grpc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The python of a venv holding what `pip install kubectl-mesh` installs: no demo extra."""
    return linked_venv(tmp_path_factory.mktemp("venv-without-grpc"), image_distributions())


def run(python: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(python), *args], cwd=cwd, env=runtime_env(), capture_output=True, text=True, timeout=60
    )


def test_the_venv_has_the_package_but_not_grpc(python_without_grpc: Path, tmp_path: Path) -> None:
    """The other tests mean something only if grpc is really missing there and the rest is not."""
    done = run(python_without_grpc, "-c", "import gevent, h2, kubectl_mesh.demo.runner, proxy", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    for module in ("grpc", "google.protobuf"):
        done = run(python_without_grpc, "-c", f"import {module}", cwd=tmp_path)
        assert done.returncode == 1 and "ModuleNotFoundError" in done.stderr, (module, done.stderr)


def test_demo_without_grpcio_says_in_one_line_how_to_install_it(
    python_without_grpc: Path, tmp_path: Path
) -> None:
    done = run(python_without_grpc, "-m", "kubectl_mesh", "demo", "--once", cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith("error: ") and "grpc, google.protobuf" in done.stderr
    assert done.stderr.rstrip().endswith("install them: pip install 'kubectl-mesh[demo]'"), done.stderr


def test_a_topology_demo_needs_no_grpcio(python_without_grpc: Path, tmp_path: Path) -> None:
    """It gets past the modules to the next prerequisite, the Prometheus binary (named missing)."""
    missing = tmp_path / "no-prometheus"
    args = ("-m", "kubectl_mesh", "demo", "--once", "--topology", "depth3", "--prometheus", str(missing))
    done = run(python_without_grpc, *args, cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    expected = f"error: {missing} not found: the demo needs a real Prometheus; install it: {INSTALL_HINT}\n"
    assert done.stderr == expected, done.stderr
