"""The docs that show the tree stay true to it: README's layout table names what is there, and
docs/architecture.md's layers are the import-linter contract `make lint` enforces."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TICKED = re.compile(r"`([^`]+)`")


def table_after(text: str, header: str) -> list[list[str]]:
    """The cells of the markdown table whose header row is `header` (escaped pipes kept)."""
    lines = text.splitlines()
    start = lines.index(header) + 2  # the header and the --- row
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip("|"))])
    return rows


def tracked() -> list[str]:
    out = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    return out.splitlines()


def test_the_readme_layout_names_every_folder_and_only_what_exists() -> None:
    section = (REPO / "README.md").read_text().split("## Layout", 1)[1]
    named: set[str] = set()
    for path, _ in table_after(section, "| path | what |"):
        first, *rest = TICKED.findall(path)
        for token in (first, *rest):  # `kubectl_mesh/stat/`, `graph/`: the others beside the first
            here = (
                token
                if (REPO / token).exists()
                else str(Path(first).parent / token) + "/" * token.endswith("/")
            )
            assert (REPO / here).exists(), f"README's layout names {token}, which is not in the tree"
            named.add(here.rstrip("/"))
    files = tracked()
    folders = {f.split("/")[0] for f in files if "/" in f and not f.startswith(".")}
    packages = {
        "/".join(f.split("/")[:2]) for f in files if f.startswith("kubectl_mesh/") and f.count("/") >= 2
    }
    missing = sorted(
        d for d in folders | packages if d not in named and not any(n.startswith(d + "/") for n in named)
    )
    assert missing == [], f"README's layout table leaves out {missing}"


def contract_layers() -> list[tuple[frozenset[str], bool]]:
    """pyproject's layers contract of kubectl_mesh: (modules, independent) from the top down."""
    contracts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    (layers,) = [
        c["layers"] for c in contracts if c["type"] == "layers" and c["containers"] == ["kubectl_mesh"]
    ]
    return [(frozenset(re.split(r"\s*[|:]\s*", layer)), "|" in layer) for layer in layers]


def test_the_architecture_layers_are_the_contract() -> None:
    text = (REPO / "docs" / "architecture.md").read_text()
    documented = []
    for _, modules in table_after(text, "| layer | modules |"):
        names = frozenset(
            m.removesuffix(".py").rstrip("/") for m in TICKED.findall(re.sub(r"\([^)]*\)", "", modules))
        )
        documented.append((names, r"\|" in modules))
    assert documented == contract_layers()
