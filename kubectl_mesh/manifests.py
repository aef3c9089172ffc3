"""Reading and writing Kubernetes manifests: files, directories and stdin; YAML and JSON streams.

Errors name the file and line (`app.yaml:12: mapping values are not allowed here`), so a user
can fix the input; nothing here writes to stdout. Parsing follows what `kubectl apply -f` accepts:
multi-document YAML, one or more concatenated JSON objects, `List` kinds (handled by callers).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

import yaml

from kubectl_mesh.errors import MeshError

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
STDIN_NAME = "<stdin>"


class ManifestError(MeshError):
    """Unreadable or unparsable input; the message starts with the file (and line)."""


@dataclass(frozen=True)
class Source:
    name: str  # a path, or "<stdin>"
    text: str


class _Loader(yaml.SafeLoader):
    """SafeLoader that keeps timestamps as strings: a date in an annotation must stay text."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


class _Dumper(yaml.SafeDumper):
    """Block style; multi-line strings as literal blocks (readable ConfigMaps and scripts)."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    if "\n" in value and not re.search(r"[ \t]\n|\n[ \t]*\n\s*$|^\s|[\x00-\x08\x0b-\x1f\x7f]", value):
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", value)


_Dumper.add_representer(str, _represent_str)


def read_sources(paths: Sequence[str], stdin: TextIO) -> list[Source]:
    """The text of every input: '-' is stdin; directories are walked for *.yaml|*.yml|*.json."""
    sources: list[Source] = []
    used_stdin = False
    for path in paths:
        if path == "-":
            if used_stdin:
                raise ManifestError("-: stdin can be read only once")
            used_stdin = True
            sources.append(Source(STDIN_NAME, stdin.read()))
        elif os.path.isdir(path):
            found = list(_manifest_files(path))
            if not found:
                raise ManifestError(f"{path}: no *.yaml, *.yml or *.json files in this directory")
            sources.extend(_read_file(f) for f in found)
        else:
            sources.append(_read_file(path))
    return sources


def parse_documents(source: Source) -> list[Any]:
    """Every non-empty document of a source, in order; ManifestError names file and line."""
    text = source.text
    if text.lstrip().startswith(("{", "[")):
        try:
            return _json_stream(text)
        except json.JSONDecodeError as exc:
            if source.name.endswith(".json"):
                raise ManifestError(f"{source.name}:{exc.lineno}:{exc.colno}: {exc.msg}") from None
            # Flow-style YAML also starts with '{': let the YAML parser judge (and report).
    try:
        return [doc for doc in yaml.load_all(text, Loader=_Loader) if doc is not None]  # a SafeLoader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source.name}:{mark.line + 1}:{mark.column + 1}" if mark else source.name
        problem = exc.problem or exc.context or "invalid YAML"
        raise ManifestError(f"{where}: {problem}") from None
    except yaml.YAMLError as exc:
        raise ManifestError(f"{source.name}: {' '.join(str(exc).split())}") from None


def dump_yaml(documents: Iterable[Any]) -> str:
    """A multi-document YAML stream, keys in their original order."""
    return yaml.dump_all(
        list(documents),
        Dumper=_Dumper,
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=True,
        width=10_000,
        explicit_start=True,
    )


def _manifest_files(directory: str) -> Iterable[str]:
    for root, dirs, files in os.walk(directory):
        dirs.sort()
        for name in sorted(files):
            if name.endswith(MANIFEST_SUFFIXES):
                yield os.path.join(root, name)


def _read_file(path: str) -> Source:
    try:
        with open(path, encoding="utf-8") as fh:
            return Source(path, fh.read())
    except UnicodeDecodeError:
        raise ManifestError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise ManifestError(f"{path}: {exc.strerror or exc}") from None


def _json_stream(text: str) -> list[Any]:
    decoder = json.JSONDecoder()
    docs: list[Any] = []
    pos, end = 0, len(text)
    while True:
        while pos < end and text[pos].isspace():
            pos += 1
        if pos >= end:
            return docs
        doc, pos = decoder.raw_decode(text, pos)
        docs.append(doc)
