"""What the proxy and webhook images install, as a venv here: the tests run the real proxy, webhook
and CLI in it, so an import the images lack fails a test, not a pod.

The images run `pip install .`: the package and its dependencies, no extra. `image_distributions`
walks that closure through pyproject.toml and the installed metadata (as pip would, extras and
markers included); `linked_venv` makes a venv holding just those distributions, as links to this
venv's installed files (half a second, no index, no build).
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import tomllib
from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]


def image_distributions(extras: Iterable[str] = ()) -> set[str]:
    """The distributions (canonical names) `pip install '.[extras]'` brings, the package's own
    included; a dependency not installed here is left out (only a marker can exclude one)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    own = canonicalize_name(project["name"])
    wanted = [Requirement(f"{own}[{','.join(extras)}]" if extras else own)]
    done: set[tuple[str, str]] = set()  # (distribution, extra) already walked
    found: set[str] = set()
    while wanted:
        req = wanted.pop()
        name = canonicalize_name(req.name)
        for extra in ("", *sorted(req.extras)):
            if (name, extra) in done:
                continue
            done.add((name, extra))
            if name == own:  # pyproject, not the (maybe stale) metadata of an editable install
                lines = project["dependencies"] if not extra else project["optional-dependencies"][extra]
                found.add(own)
                wanted += [Requirement(line) for line in lines]
                continue
            try:
                requires = distribution(name).requires or []
            except PackageNotFoundError:
                continue
            found.add(name)
            for line in requires:
                sub = Requirement(line)
                if sub.marker is None or sub.marker.evaluate({"extra": extra}):
                    wanted.append(sub)
    return found


def linked_venv(target: Path, distributions: Iterable[str]) -> Path:
    """A venv at `target` whose site-packages links the installed files of `distributions` (and
    nothing else; the package itself is this checkout, by a .pth); returns its python."""
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", str(target)], check=True, timeout=60)
    (site,) = target.glob("lib/python3*/site-packages")
    ours = {Path(sysconfig.get_paths()[key]) for key in ("purelib", "platlib")}
    own = canonicalize_name(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["name"])
    for name in distributions:
        if canonicalize_name(name) == own:  # the code under test, as the editable install has it
            (site / "kubectl-mesh.pth").write_text(f"{REPO}\n")
            continue
        dist = distribution(name)
        for top in {Path(str(f)).parts[0] for f in dist.files or []} - {"..", "__pycache__"}:
            source = Path(str(dist.locate_file(top)))
            if source.parent in ours and source.exists() and not (site / top).exists():
                (site / top).symlink_to(source)
    return target / "bin" / "python"
