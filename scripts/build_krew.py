#!/usr/bin/env python3
"""`make krew`: build the Krew release of `kubectl mesh`.

    dist/kubectl-mesh.tar.gz   kubectl-mesh (a zipapp: only python3 >= 3.11 needed), LICENSE and
                               kubectl_complete-mesh (kubectl's plugin completion, kubectl >= 1.26)
    dist/krew-manifest.yaml    krew-manifest.yaml with this archive's version, URI and sha256

kubectl completes `kubectl mesh …` with `kubectl_complete-mesh` found on PATH. Krew links only
a plugin's one `bin` into $KREW_ROOT/bin, so the archive ships it as a script that calls the
linked `kubectl-mesh` (version-independent: a copy keeps working across `krew upgrade`), and the
manifest's caveats give the one command that copies it next to that link.

The zipapp holds the whole `kubectl_mesh` package (the injector `inject` uses is
`kubectl_mesh.inject`; `kubectl_mesh` never imports `webhook` or `proxy`, an import-linter contract
of `make lint`) and the pure-Python dependencies the CLI imports, copied from the
installed environment (the versions the tests ran against): tabulate, PyYAML (its C accelerator
dropped: PyYAML falls back to pure Python), jsonpatch, jsonpointer. No C extension goes in; the
build fails if one would. The `kubernetes` package is not vendored: no command imports it (the CLI
speaks to the API server through kubectl_mesh.kube), and its current releases need pydantic-core,
a C extension. Commands that need a C extension (e.g. `install`'s cryptography, `demo`'s gevent
and, for emojivoto, grpcio of the `demo` extra) say so in one line when run from the zipapp.

Usage: scripts/build_krew.py [--out dist] [--uri URL]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import py_compile
import shutil
import sys
import tarfile
import tempfile
import zipapp
from importlib.metadata import distribution
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from kubectl_mesh import __version__  # noqa: E402

# Distributions vendored into the zipapp (pure Python; see the module docstring).
VENDORED = ("tabulate", "PyYAML", "jsonpatch", "jsonpointer", "wsproto", "h11")
# The part of this repository in the zipapp: the CLI's package, whole.
OWN_PACKAGE = "kubectl_mesh"
DEFAULT_URI = "https://github.com/kubectl-mesh/kubectl-mesh/releases/download/v{version}/kubectl-mesh.tar.gz"
ARCHIVE_NAME = "kubectl-mesh.tar.gz"
COMPLETION_NAME = "kubectl_complete-mesh"
COMPLETION_SCRIPT = """\
#!/bin/sh
# kubectl's completion of `kubectl mesh` (kubectl >= 1.26) runs kubectl_complete-mesh from PATH.
exec kubectl-mesh __complete "$@"
"""
REPRODUCIBLE_MTIME = 315532800  # 1980-01-01, the oldest time a zip can hold

MAIN = """\
import sys

if sys.version_info < (3, 11):
    sys.stderr.write(
        "error: kubectl-mesh needs Python 3.11 or newer; python3 here is %d.%d\\n" % sys.version_info[:2]
    )
    sys.exit(1)

from kubectl_mesh.cli import main

sys.exit(main())
"""


def copy_tree(source: Path, target: Path) -> None:
    for path in sorted(source.rglob("*")):
        if "__pycache__" in path.parts or path.suffix in (".pyc", ".so") or path.is_dir():
            continue
        dest = target / path.relative_to(source.parent)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest)


def vendor(name: str, target: Path) -> list[str]:
    """Copy an installed distribution's files (but C extensions and scripts) into `target`."""
    dist = distribution(name)
    dropped = []
    for file in dist.files or []:
        rel = str(file)
        if rel.startswith("..") or "__pycache__" in rel or rel.endswith(".pyc"):
            continue
        if rel.endswith((".so", ".pyd", ".dylib")):
            dropped.append(rel)
            continue
        source = Path(str(dist.locate_file(file)))
        if source.is_file():
            dest = target / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, dest)
    return dropped


def compile_tree(root: Path) -> None:
    """Byte-code next to each module (zipimport reads `mod.pyc` beside `mod.py`), hash-based so
    that zip timestamps do not matter; other Python versions ignore it and use the source."""
    for source in sorted(root.rglob("*.py")):
        py_compile.compile(
            str(source),
            cfile=str(source) + "c",
            dfile=str(source.relative_to(root)),
            doraise=True,
            invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
        )


def build_zipapp(work: Path) -> Path:
    src = work / "src"
    src.mkdir()
    copy_tree(REPO / OWN_PACKAGE, src)
    for name in VENDORED:
        for dropped in vendor(name, src):
            print(f"  {name}: left out C extension {dropped} (pure-Python fallback)")
    leftovers = [p for p in src.rglob("*") if p.suffix in (".so", ".pyd", ".dylib")]
    if leftovers:
        raise SystemExit(f"error: C extensions would ship: {leftovers}")
    (src / "__main__.py").write_text(MAIN)
    compile_tree(src)
    target = work / "kubectl-mesh"
    # Deterministic: files in sorted order (zipapp sorts), fixed timestamps.
    for path in src.rglob("*"):
        os.utime(path, (REPRODUCIBLE_MTIME, REPRODUCIBLE_MTIME))
    zipapp.create_archive(src, target, interpreter="/usr/bin/env python3", compressed=True)
    target.chmod(0o755)
    return target


def build_archive(zipapp_path: Path, out: Path) -> Path:
    archive = out / ARCHIVE_NAME
    completion = zipapp_path.parent / COMPLETION_NAME
    completion.write_text(COMPLETION_SCRIPT)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        for path, mode in ((zipapp_path, 0o755), (completion, 0o755), (REPO / "LICENSE", 0o644)):
            info = tar.gettarinfo(str(path), arcname=path.name)
            info.mode, info.mtime = mode, REPRODUCIBLE_MTIME
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with path.open("rb") as fh:
                tar.addfile(info, fh)
    archive.write_bytes(buffer.getvalue())
    return archive


def write_manifest(digest: str, out: Path, uri: str) -> Path:
    """The manifest for the archive whose sha256 is `digest` (hashed once, in main)."""
    manifest = yaml.safe_load((REPO / "krew-manifest.yaml").read_text())
    manifest["spec"]["version"] = f"v{__version__}"
    for platform in manifest["spec"]["platforms"]:
        platform["uri"] = uri.format(version=__version__)
        platform["sha256"] = digest
    target = out / "krew-manifest.yaml"
    target.write_text(yaml.safe_dump(manifest, sort_keys=False, width=100))
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(REPO / "dist"), help="output directory (default: dist/)")
    parser.add_argument(
        "--uri", default=DEFAULT_URI, help="download URI in the manifest ({version} is filled in)"
    )
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kubectl-mesh-krew-") as tmp:
        app = build_zipapp(Path(tmp))
        shutil.copyfile(app, out / "kubectl-mesh")
        (out / "kubectl-mesh").chmod(0o755)
        archive = build_archive(app, out)
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    manifest = write_manifest(digest, out, args.uri)
    size_kib = archive.stat().st_size / 1024
    print(f"built {archive} ({size_kib:.0f} KiB) and {manifest}")
    print(f"sha256 {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
