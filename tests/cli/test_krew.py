"""The Krew release: `make krew`'s archive works where users get it, through the real krew.

- the zipapp runs `kubectl mesh version` (and `inject`, which needs the vendored PyYAML/jsonpatch
  and the injector) under a clean `python3 -I -S`: no site-packages, no environment;
- the archive holds kubectl-mesh and LICENSE and no C extension;
- `kubectl krew install --manifest --archive` into a temporary KREW_ROOT succeeds, `kubectl plugin
  list` shows kubectl-mesh, and `kubectl mesh version` runs from there;
- after the one command the manifest's caveats give, the real kubectl completes `kubectl mesh st`
  to `stat` (`kubectl __complete`, what kubectl's shell completion runs), through the shipped
  kubectl_complete-mesh;
- `validate-krew-manifest` (krew-index's CI tool) passes: it downloads the archive from the
  manifest's URI (served here on 127.0.0.1), checks the sha256, installs it, looks for LICENSE.

The krew binaries come from the lab's build (lab/build-binaries.sh); without them those
tests skip and say so.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import shutil
import subprocess
import sys
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from kubectl_mesh import __version__

REPO = Path(__file__).resolve().parents[2]
SYSTEM_PYTHON = "/usr/bin/python3"
KUBECTL = "/usr/bin/kubectl"
LAB_BIN = Path.home() / ".cache" / "kubectl-mesh" / "bin"

pytestmark = pytest.mark.slow

DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: web:1, command: [web], ports: [{containerPort: 8080}]}]
"""


def krew_bin_dir() -> Path:
    found = sorted(LAB_BIN.glob("*/kubectl-krew"))
    if not found or not (found[-1].parent / "validate-krew-manifest").exists():
        pytest.skip(f"krew not built yet: run lab/build-binaries.sh (looked in {LAB_BIN})")
    return found[-1].parent


@pytest.fixture(scope="module")
def served_dist(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """`scripts/build_krew.py` into a temp dir, served on 127.0.0.1 (the manifest's URI)."""
    out = tmp_path_factory.mktemp("dist")
    handler = functools.partial(_QuietHandler, directory=str(out))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        subprocess.run(
            [sys.executable, "scripts/build_krew.py", "--out", str(out), "--uri",
             f"{base}/kubectl-mesh.tar.gz"],
            cwd=REPO, check=True, capture_output=True, timeout=300,
        )  # fmt: skip
        yield out, base
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def clean_run(args: list[str], cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SYSTEM_PYTHON, "-I", "-S", *args],
        cwd=cwd,
        env={"PATH": "/usr/bin:/bin", "HOME": str(cwd)},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_zipapp_runs_under_a_clean_python(served_dist: tuple[Path, str], tmp_path: Path) -> None:
    dist, _ = served_dist
    done = clean_run([str(dist / "kubectl-mesh"), "version", "--client"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"Client version: v{__version__}"
    # inject needs the vendored PyYAML (pure fallback), jsonpatch and the injector
    done = clean_run([str(dist / "kubectl-mesh"), "inject", "-"], tmp_path, stdin=DEPLOYMENT)
    assert done.returncode == 0, done.stderr
    pod_spec = yaml.safe_load(done.stdout)["spec"]["template"]["spec"]
    names = [c["name"] for c in pod_spec.get("initContainers", []) + pod_spec["containers"]]
    assert "mesh-proxy" in names
    # a command that needs the cluster says so in one line, no traceback
    done = clean_run([str(dist / "kubectl-mesh"), "stat", "deploy", "--kubeconfig", "/nonexistent"], tmp_path)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "kubeconfig" in done.stderr


def test_archive_holds_the_zipapp_and_license_and_no_c_extension(served_dist: tuple[Path, str]) -> None:
    dist, _ = served_dist
    with tarfile.open(dist / "kubectl-mesh.tar.gz") as tar:
        assert sorted(tar.getnames()) == ["LICENSE", "kubectl-mesh", "kubectl_complete-mesh"]
        assert tar.getmember("kubectl-mesh").mode & 0o111
        assert tar.getmember("kubectl_complete-mesh").mode & 0o111
    with zipfile.ZipFile(dist / "kubectl-mesh") as app:
        names = app.namelist()
    assert "__main__.py" in names and "kubectl_mesh/inject/injector.py" in names
    assert not any(name.startswith(("webhook/", "proxy/")) for name in names), "kubectl_mesh, not webhook"
    # The chart snapshot's build step (it runs helm on the checkout's charts/) stays out of it.
    build_steps = [n for n in names if n.startswith("scripts/") or n.startswith("kubectl_mesh/install/snap")]
    assert build_steps == [] and "kubectl_mesh/install/manifest.py" in names, build_steps
    package = {str(p.relative_to(REPO)) for p in (REPO / "kubectl_mesh").rglob("*.py")}
    assert package <= set(names), sorted(package - set(names))
    assert not [n for n in names if n.endswith((".so", ".pyd", ".dylib"))]
    assert not [n for n in names if n.startswith(("gevent", "flask", "gunicorn", "prometheus_client"))]
    manifest = yaml.safe_load((dist / "krew-manifest.yaml").read_text())
    digest = hashlib.sha256((dist / "kubectl-mesh.tar.gz").read_bytes()).hexdigest()
    assert manifest["spec"]["platforms"][0]["sha256"] == digest
    assert manifest["spec"]["version"] == f"v{__version__}"


def test_krew_installs_it_and_kubectl_finds_it(served_dist: tuple[Path, str], tmp_path: Path) -> None:
    bin_dir = krew_bin_dir()
    dist, _ = served_dist
    krew_root = tmp_path / "krew"
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), "KREW_ROOT": str(krew_root)}
    done = subprocess.run(
        [KUBECTL, "krew", "install", f"--manifest={dist / 'krew-manifest.yaml'}",
         f"--archive={dist / 'kubectl-mesh.tar.gz'}"],
        env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Installed plugin: mesh" in done.stdout + done.stderr
    env["PATH"] = f"{krew_root / 'bin'}:{env['PATH']}"
    listed = subprocess.run([KUBECTL, "plugin", "list"], env=env, capture_output=True, text=True, timeout=60)
    assert str(krew_root / "bin" / "kubectl-mesh") in listed.stdout
    version = subprocess.run(
        [KUBECTL, "mesh", "version", "--client"], env=env, capture_output=True, text=True, timeout=60
    )
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"Client version: v{__version__}"
    licenses = list(krew_root.glob("store/mesh/*/LICENSE"))
    assert licenses, "LICENSE not installed"


def test_validate_krew_manifest_passes(served_dist: tuple[Path, str], tmp_path: Path) -> None:
    bin_dir = krew_bin_dir()
    dist, _ = served_dist
    manifest = tmp_path / "mesh.yaml"  # krew-index wants <plugin name>.yaml
    shutil.copyfile(dist / "krew-manifest.yaml", manifest)
    done = subprocess.run(
        [str(bin_dir / "validate-krew-manifest"), "-manifest", str(manifest)],
        env={"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path)},
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "installed fine" in done.stdout + done.stderr


def test_the_committed_manifest_is_the_release_template() -> None:
    """krew-manifest.yaml: the fields Krew and krew-index require, in their required forms."""
    manifest = yaml.safe_load((REPO / "krew-manifest.yaml").read_text())
    assert manifest["apiVersion"] == "krew.googlecontainertools.github.com/v1alpha2"
    assert manifest["kind"] == "Plugin" and manifest["metadata"]["name"] == "mesh"
    spec = manifest["spec"]
    assert spec["version"] == f"v{__version__}"
    assert "\n" not in spec["shortDescription"].strip()
    assert "python3" in spec["caveats"] and "3.11" in spec["caveats"]
    (platform,) = spec["platforms"]
    assert platform["selector"]["matchExpressions"] == [
        {"key": "os", "operator": "In", "values": ["linux", "darwin"]}
    ]
    assert platform["bin"] == "kubectl-mesh"
    assert {f["from"] for f in platform["files"]} == {"kubectl-mesh", "kubectl_complete-mesh", "LICENSE"}
    assert len(platform["sha256"]) == 64 and platform["sha256"] == platform["sha256"].lower()


@pytest.mark.parametrize("root", ["KREW_ROOT", "default"])
def test_kubectl_completes_the_krew_installed_plugin(
    served_dist: tuple[Path, str], tmp_path: Path, root: str
) -> None:
    """Both forms of the caveats' command: a KREW_ROOT of one's own, and krew's default ~/.krew."""
    bin_dir = krew_bin_dir()
    dist, _ = served_dist
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path)}
    if root == "KREW_ROOT":
        krew_root = tmp_path / "krew"
        env["KREW_ROOT"] = str(krew_root)
    else:
        krew_root = tmp_path / ".krew"
    done = subprocess.run(
        [KUBECTL, "krew", "install", f"--manifest={dist / 'krew-manifest.yaml'}",
         f"--archive={dist / 'kubectl-mesh.tar.gz'}"],
        env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    env["PATH"] = f"{krew_root / 'bin'}:{env['PATH']}"

    def complete(*words: str) -> list[str]:
        done = subprocess.run(
            [KUBECTL, "__complete", "mesh", *words], env=env, capture_output=True, text=True, timeout=60
        )
        return done.stdout.splitlines()

    assert "stat" not in complete("st")  # Krew links kubectl-mesh only: kubectl finds no completion
    caveats = yaml.safe_load((dist / "krew-manifest.yaml").read_text())["spec"]["caveats"]
    (step,) = [
        line.strip() for line in caveats.splitlines() if "kubectl_complete-mesh" in line and "install" in line
    ]
    assert step in done.stdout + done.stderr  # krew showed the caveats with that command
    copied = subprocess.run(["sh", "-c", step], env=env, capture_output=True, text=True, timeout=60)
    assert copied.returncode == 0, copied.stderr
    assert complete("st") == ["stat", ":4"]
    assert "deploy" in complete("stat", "")
    assert complete("--context", "x", "ver") == ["version", ":4"]
