"""Reading and writing Kubernetes manifests: files, directories and stdin; YAML and JSON streams.

**Scalars mean what they mean to kubectl.** kubectl reads YAML with sigs.k8s.io/yaml, whose
go-yaml resolves a plain (unquoted) scalar by its own rules: YAML 1.2's core schema (`0o17`,
`0x1F`, `1e3`, `~`, `null`, `.inf`) plus YAML 1.1's `yes|no|on|off|y|n` booleans, leading-zero
octal (`010` is 8), `0b101` and `_` between digits; but no base 60 (`12:30` stays text), no `=`
value, and timestamps stay text. PyYAML's defaults (YAML 1.1) read `12:30` as 750 and refuse
`key: =`, so both the loader and the dumper here resolve plain scalars with `plain_scalar`, a
port of those rules. On output, a string is quoted whenever kubectl, YAML 1.1 or YAML 1.2 could
read it as anything but that string, so `inject`'s output means to kubectl what its input meant.

**Streams, document by document, on libyaml.** The C parser and emitter (PyYAML's `CParser`,
`CEmitter`, when PyYAML was built with libyaml; the pure-Python ones otherwise, as in the Krew
zipapp) with the Python-side resolver above. `iter_documents` yields one document at a time
from the open file, so memory follows the largest document, not the input.

Errors name the file and line (`app.yaml:12:3: mapping values are not allowed here`) and, for
nesting too deep to read, the document; nothing here writes to stdout. Parsing follows what
`kubectl apply -f` accepts: multi-document YAML, one or more concatenated JSON objects, `List`
kinds (handled by callers).
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any, ClassVar, Protocol

import yaml
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

from kubectl_mesh import nesting
from kubectl_mesh.errors import MeshError
from kubectl_mesh.inject.shared import IDS as _SHARED_IDS
from kubectl_mesh.inject.shared import is_shared

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
STDIN_NAME = "<stdin>"
_TAG = "tag:yaml.org,2002:"
STR, INT, FLOAT, BOOL, NULL, MERGE = (_TAG + t for t in ("str", "int", "float", "bool", "null", "merge"))
_SEQ, _MAP = _TAG + "seq", _TAG + "map"


class ManifestError(MeshError):
    """Unreadable or unparsable input; the message starts with the file (and line)."""


# --- kubectl's plain scalars (sigs.k8s.io/yaml's go-yaml v2 `resolve`), pure -------------------

_KEYWORDS: dict[str, tuple[str, Any]] = {
    **{w: (BOOL, True) for w in ("y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON")},
    **{w: (BOOL, False) for w in ("n", "N", "no", "No", "NO", "false", "False", "FALSE")},
    **{w: (BOOL, False) for w in ("off", "Off", "OFF")},
    **{w: (NULL, None) for w in ("", "~", "null", "Null", "NULL")},
    **{w: (FLOAT, math.nan) for w in (".nan", ".NaN", ".NAN")},
    **{w: (FLOAT, math.inf) for w in (".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF")},
    **{w: (FLOAT, -math.inf) for w in ("-.inf", "-.Inf", "-.INF")},
    "<<": (MERGE, "<<"),
}
_NUMERIC_START = frozenset("+-0123456789")
_GO_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?\Z")
_DOT_FLOAT = re.compile(r"\.[0-9]+([eE][-+]?[0-9]+)?\Z")
_DIGITS = {2: frozenset("01"), 8: frozenset("01234567"), 10: frozenset("0123456789"),
           16: frozenset("0123456789abcdefABCDEF")}  # fmt: skip
_PREFIXES = {"b": 2, "B": 2, "o": 8, "O": 8, "x": 16, "X": 16}
_INT64 = (-(2**63), 2**63 - 1)
_UINT64_MAX = 2**64 - 1


def _go_int(text: str) -> tuple[int, bool] | None:
    """Go's strconv.ParseInt(text, 0, ·) without the range check: (value, signed) or None."""
    signed = text[:1] in ("+", "-")
    body = text[1:] if signed else text
    base = 10
    if len(body) > 1 and body[0] == "0":
        base = _PREFIXES.get(body[1], 8)
        body = body[2:] if body[1] in _PREFIXES else body[1:]
    if not body or not _DIGITS[base].issuperset(body):
        return None
    value = int(body, base)
    return (-value if text[0] == "-" else value), signed


def plain_scalar(text: str) -> tuple[str, Any]:
    """(tag, value) of an unquoted scalar as kubectl reads it (see `_plain_scalar`); short texts,
    which repeat (keys, names, small numbers), are looked up in a bounded cache."""
    return _plain_scalar_cached(text) if len(text) <= 64 else _plain_scalar(text)


def _plain_scalar(text: str) -> tuple[str, Any]:
    """(tag, value) of an unquoted scalar as kubectl reads it: a port of go-yaml v2's `resolve`
    (timestamps are text, as sigs.k8s.io/yaml gives them to kubectl)."""
    first = text[:1]
    if first.isalpha() and first not in "yYnNtTfFoO":
        return STR, text  # the common case: a name, an image, a path
    keyword = _KEYWORDS.get(text)
    if keyword is not None:
        return keyword
    if first == ".":
        return (FLOAT, float(text)) if _DOT_FLOAT.match(text) else (STR, text)
    if first not in _NUMERIC_START:
        return STR, text
    plain = text.replace("_", "")
    parsed = _go_int(plain) if plain else None
    if parsed is not None:
        value, signed = parsed
        if _INT64[0] <= value <= _INT64[1] or (not signed and 0 <= value <= _UINT64_MAX):
            return INT, value
    if _GO_FLOAT.match(plain):
        return FLOAT, float(plain)
    if parsed is not None and not parsed[1] and plain[:2] != "0b":
        return INT, parsed[0]  # beyond 64 bits: go-yaml's big.Int
    return STR, text


_YAML11 = yaml.resolver.Resolver()  # PyYAML's defaults: how YAML 1.1 tools read a plain scalar


@functools.lru_cache(maxsize=16384)
def _plain_scalar_cached(text: str) -> tuple[str, Any]:
    return _plain_scalar(text)


@functools.lru_cache(maxsize=16384)
def ambiguous(text: str) -> bool:
    """Whether a plain `text` could be read as anything but this string, by kubectl (go-yaml),
    YAML 1.1 (`12:30`, `=`, dates) or YAML 1.2 (whose core schema kubectl's rules cover)."""
    if plain_scalar(text)[0] != STR:
        return True
    return _YAML11.resolve(ScalarNode, text, (True, False)) != STR


class KubectlResolver(yaml.resolver.BaseResolver):
    """Plain scalars resolved by `plain_scalar` (loader), and, when dumping, a string that is
    `ambiguous` marked as not implicitly a string, so that the emitter quotes it."""

    dumping = False

    # No path resolvers here: the composer calls these for every node, so they do nothing.
    def descend_resolver(self, current_node: Any, current_index: Any) -> None:
        pass

    def ascend_resolver(self) -> None:
        pass

    def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
        if kind is ScalarNode:
            if not implicit[0]:
                return STR
            first = value[:1]
            if first.isalpha() and first not in "yYnNtTfFoO" and not self.dumping:
                return STR  # the common case, without a call
            tag = plain_scalar(value)[0]
            if self.dumping and tag == STR and _YAML11.resolve(ScalarNode, value, (True, False)) != STR:
                return _TAG + "yaml11"  # a tag no node has: the string is written quoted
            return tag
        return _SEQ if kind is SequenceNode else _MAP


class _Constructor(yaml.constructor.SafeConstructor):
    """SafeConstructor whose int, float, bool and null follow `plain_scalar`; `<<` outside a
    mapping key is the string "<<" (as kubectl)."""

    def construct_kubectl_scalar(self, node: Any) -> Any:
        value = self.construct_scalar(node)
        tag, result = plain_scalar(value)
        if tag == INT and node.tag == FLOAT:  # `!!float 1`, as go-yaml
            return float(result)
        if tag != node.tag:
            raise yaml.constructor.ConstructorError(
                None, None, f"{value!r} is not a valid {node.tag.rsplit(':', 1)[-1]}", node.start_mark
            )
        return result


for _tag in (INT, FLOAT, BOOL, NULL, MERGE):
    _Constructor.add_constructor(_tag, _Constructor.construct_kubectl_scalar)  # type: ignore[type-var]


_cyaml: Any
try:  # libyaml's parser and emitter, when PyYAML was built with it
    from yaml import _yaml as _cyaml
except ImportError:
    _cyaml = None
_CParser: Any = getattr(_cyaml, "CParser", None)
_CEmitter: Any = getattr(_cyaml, "CEmitter", None)
WITH_LIBYAML = _CParser is not None and _CEmitter is not None

if _CParser is not None:

    class Loader(_CParser, _Constructor, KubectlResolver):
        """libyaml's parser, kubectl's scalars; safe (no Python objects)."""

        def __init__(self, stream: Any) -> None:
            _CParser.__init__(self, stream)
            _Constructor.__init__(self)
            KubectlResolver.__init__(self)

else:

    class Loader(  # type: ignore[no-redef]
        yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser, yaml.composer.Composer,
        _Constructor, KubectlResolver,
    ):  # fmt: skip
        """The pure-Python parser (no libyaml here), kubectl's scalars; safe."""

        def __init__(self, stream: Any) -> None:
            yaml.reader.Reader.__init__(self, stream)
            yaml.scanner.Scanner.__init__(self)
            yaml.parser.Parser.__init__(self)
            yaml.composer.Composer.__init__(self)
            _Constructor.__init__(self)
            KubectlResolver.__init__(self)


class _Representer(yaml.representer.SafeRepresenter):
    """Multi-line strings as literal blocks (readable ConfigMaps and scripts)."""

    def represent_str(self, data: str) -> Any:
        if "\n" in data and not re.search(r"[ \t]\n|\n[ \t]*\n\s*$|^\s|[\x00-\x08\x0b-\x1f\x7f]", data):
            return self.represent_scalar(STR, data, style="|")
        return self.represent_scalar(STR, data)

    def represent_int(self, data: int) -> Any:
        return self.represent_scalar(INT, _int_text(data))

    def ignore_aliases(self, data: Any) -> bool:
        # A part the injector shares between pods is written out in each, as a copy would be.
        return is_shared(data) or bool(super().ignore_aliases(data))


def _int_text(value: int) -> str:
    """An int as kubectl reads it back: beyond 64 bits in decimal it would be a float, in hex it
    stays an integer (go-yaml's big.Int; only a non-decimal input gives one)."""
    return hex(value) if value > _UINT64_MAX else str(value)


_Representer.add_representer(str, _Representer.represent_str)
_Representer.add_representer(int, _Representer.represent_int)

_DUMP_OPTIONS: dict[str, Any] = {
    "default_flow_style": False,
    "allow_unicode": True,
    "width": 10_000,
    "explicit_start": True,
    "sort_keys": False,
}

if _CEmitter is not None:

    class Dumper(_CEmitter, _Representer, KubectlResolver):
        """libyaml's emitter; a string kubectl could misread is quoted."""

        dumping = True

        def __init__(self, stream: Any, **kwargs: Any) -> None:
            sort_keys = kwargs.pop("sort_keys", True)
            default_style = kwargs.pop("default_style", None)
            default_flow_style = kwargs.pop("default_flow_style", False)
            _CEmitter.__init__(self, stream, **kwargs)
            _Representer.__init__(
                self, default_style=default_style, default_flow_style=default_flow_style, sort_keys=sort_keys
            )
            KubectlResolver.__init__(self)

else:

    class Dumper(  # type: ignore[no-redef]
        yaml.emitter.Emitter, yaml.serializer.Serializer, _Representer, KubectlResolver
    ):
        """The pure-Python emitter (no libyaml here); a string kubectl could misread is quoted."""

        dumping = True

        def __init__(self, stream: Any, **kwargs: Any) -> None:
            sort_keys = kwargs.pop("sort_keys", True)
            default_style = kwargs.pop("default_style", None)
            default_flow_style = kwargs.pop("default_flow_style", False)
            yaml.emitter.Emitter.__init__(
                self, stream, canonical=kwargs.get("canonical"), indent=kwargs.get("indent"),
                width=kwargs.get("width"), allow_unicode=kwargs.get("allow_unicode"),
                line_break=kwargs.get("line_break"),
            )  # fmt: skip
            yaml.serializer.Serializer.__init__(
                self, encoding=kwargs.get("encoding"), explicit_start=kwargs.get("explicit_start"),
                explicit_end=kwargs.get("explicit_end"), version=kwargs.get("version"),
                tags=kwargs.get("tags"),
            )  # fmt: skip
            _Representer.__init__(
                self, default_style=default_style, default_flow_style=default_flow_style, sort_keys=sort_keys
            )
            KubectlResolver.__init__(self)


# --- input ---------------------------------------------------------------------------------------


class ByteReader(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


@dataclass(frozen=True)
class Source:
    name: str  # a path, or "<stdin>"
    stream: ByteReader


def open_sources(paths: Sequence[str], stdin: IO[Any]) -> Iterator[Source]:
    """Every input, opened one at a time as it is reached: '-' is stdin (its bytes when it has
    them); directories are walked for *.yaml|*.yml|*.json. Each file is closed once the next one
    is asked for."""
    if paths.count("-") > 1:
        raise ManifestError("-: stdin can be read only once")
    for path in paths:
        if path == "-":
            yield Source(STDIN_NAME, getattr(stdin, "buffer", None) or _Encoded(stdin))
        elif os.path.isdir(path):
            found = list(_manifest_files(path))
            if not found:
                raise ManifestError(f"{path}: no *.yaml, *.yml or *.json files in this directory")
            for name in found:
                with _open(name) as fh:
                    yield Source(name, fh)
        else:
            with _open(path) as fh:
                yield Source(path, fh)


def iter_documents(source: Source) -> Iterator[tuple[int, Any]]:
    """(number, object) of every non-empty document, in order, numbered from 1 as they stand in
    the stream. YAML is read document by document; a JSON stream (input starting with `{` or
    `[`) is read whole. ManifestError names the file and line, or the document."""
    head = peek(source.stream)
    if head.lstrip(_BLANK)[:1] in (b"{", b"["):
        text = _decode(source.name, head + source.stream.read())
        try:
            docs = list(_json_stream(source.name, text))  # all or nothing: it may be flow YAML
            yield from docs
            return
        except json.JSONDecodeError as exc:
            if source.name.endswith(".json"):
                raise ManifestError(f"{source.name}:{exc.lineno}:{exc.colno}: {exc.msg}") from None
            # Flow-style YAML also starts with '{': let the YAML parser judge (and report).
        yield from _non_empty(yaml_documents(source.name, text))
        return
    yield from _non_empty(yaml_documents(source.name, Prefixed(head, source.stream)))


def _non_empty(documents: Iterable[tuple[int, Any]]) -> Iterator[tuple[int, Any]]:
    return ((number, doc) for number, doc in documents if doc is not None)


def yaml_documents(
    name: str, stream: Any, first_line: int = 0, first_number: int = 0, first_byte: int = 0
) -> Iterator[tuple[int, Any]]:
    """(number, object) of every YAML document of `stream`, empty ones (None) included, so that
    a caller reading a stream in pieces (`DocumentChunks`) can count them. `first_line`,
    `first_number` and `first_byte` are the lines, documents and bytes before `stream` in the
    file: errors then name the line, document or byte of the whole file."""
    loader = Loader(stream)
    number = first_number
    try:
        while loader.check_node():
            number += 1
            try:
                node = loader.get_node()
                try:
                    doc = _build(node, set(), 1)
                except _Unsupported:  # tags, merge keys, aliases: PyYAML's constructor
                    if _deeper_than(node, MAX_DEPTH):
                        raise RecursionError from None
                    doc = loader.construct_document(node)
            except RecursionError:
                raise ManifestError(too_deep(name, number)) from None
            yield number, doc
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{name}:{first_line + mark.line + 1}:{mark.column + 1}" if mark else name
        problem = exc.problem or exc.context or "invalid YAML"
        if "maximum nesting depth" in problem:  # libyaml's own limit (1000 levels)
            raise ManifestError(too_deep(where, max(number, first_number + 1))) from None
        raise ManifestError(f"{where}: {problem}") from None
    except yaml.YAMLError as exc:  # e.g. a ReaderError: not UTF-8
        if isinstance(exc, yaml.reader.ReaderError):
            exc.position += first_byte
        raise ManifestError(f"{name}: {' '.join(str(exc).split())}") from None
    finally:
        loader.dispose()


# The containers a document may nest: `nesting.MAX_DEPTH` (256), counted as it is read, so that
# where a document is read (one process, or a worker of `kubectl mesh inject`'s pool, whose stack
# is deeper) never decides whether it is read: Python's recursion limit would.
MAX_DEPTH = nesting.MAX_DEPTH

# A line that starts a document: `---` at column 0, then a blank or the line's end. libyaml takes
# it as a document start wherever it stands (a block scalar ends at column 0, a plain scalar at a
# document marker, a quoted scalar or a flow collection cut there is an error).
_DOCUMENT_START = re.compile(rb"^---(?=[ \t\r\n]|\Z)", re.MULTILINE)
_DIRECTIVE = re.compile(rb"^%", re.MULTILINE)
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


class DocumentChunks:
    """The bytes of a YAML stream in pieces of about `size` bytes, each cut just before a line
    that starts a document (`---`), so that each piece read alone gives the documents the whole
    stream gives there (what `kubectl mesh inject` hands to its worker processes). Never cut
    between directives (`%YAML`, `%TAG`) and the document they belong to. A stream libyaml reads
    as UTF-16 (a BOM) or that is not YAML at all is the caller's to exclude (`chunkable`).

    `pending` holds the bytes read but not yet given out: with `stream`, the rest of the input."""

    def __init__(self, stream: ByteReader, size: int) -> None:
        self.stream, self.size = stream, size
        self._buffer, self._start = b"", 0  # read, and given out up to _start

    @property
    def pending(self) -> bytes:
        return self._buffer[self._start :]

    def __iter__(self) -> Iterator[bytes]:
        # A piece leaves `pending` before it is given out: a caller that stops at a piece (a
        # worker failed) and reads `pending` for the rest must not get that piece twice.
        ended = False
        while True:
            cut = safe_cut(self._buffer, self._start + self.size, self._start)
            if cut:
                piece, self._start = self._buffer[self._start : cut], cut
                yield piece
            elif ended:
                if self._start < len(self._buffer):
                    piece, self._buffer, self._start = self.pending, b"", 0
                    yield piece
                return
            else:  # no cut yet: read as much again (a long document costs linear time, not square)
                block = self.stream.read(max(self.size, len(self._buffer) - self._start))
                ended = not block
                self._buffer, self._start = self.pending + block, 0


def safe_cut(data: bytes, at_least: int, start: int = 0) -> int:
    """The first offset at or after `at_least` where `data` (read from `start`, the end of the
    last piece or the stream's start) can be cut: the start of a `---` line with no directive
    since the previous `---` line (a directive belongs to the document after it). 0: none."""
    previous = start
    for match in _DOCUMENT_START.finditer(data, start + 1):
        cut = match.start()
        if cut >= at_least and not _DIRECTIVE.search(data, previous, cut):
            return cut
        previous = cut
    return 0


def chunkable(head: bytes) -> bool:
    """Whether a stream starting with `head` may be cut by `DocumentChunks`: YAML (not a JSON
    stream), read as UTF-8 (no UTF-16 BOM), by libyaml."""
    return WITH_LIBYAML and not head.startswith(_UTF16_BOMS) and head.lstrip(_BLANK)[:1] not in (b"{", b"[")


def line_breaks(data: bytes) -> int:
    """The lines libyaml counts in `data`: LF, CR LF, a lone CR, and NEL, LS and PS (UTF-8)."""
    lines = data.count(b"\n")
    if b"\r" in data:
        lines += data.count(b"\r") - data.count(b"\r\n")
    if b"\xc2\x85" in data or b"\xe2\x80" in data:
        lines += data.count(b"\xc2\x85") + data.count(b"\xe2\x80\xa8") + data.count(b"\xe2\x80\xa9")
    return lines


_RESOLVED = frozenset((INT, FLOAT, BOOL, NULL))


def _build(node: Any, seen: set[int], depth: int) -> Any:
    """The Python value of a composed node of plain data, directly: PyYAML's constructor costs
    two thirds of the reading time. Anything else (explicit tags that disagree with the text,
    merge keys, aliases: a node met twice) raises _Unsupported, for the constructor to do.
    `depth`: the containers from the root to `node`; beyond `MAX_DEPTH`, RecursionError."""
    kind = type(node)
    if kind is ScalarNode:
        tag = node.tag
        if tag == STR:
            return node.value
        if tag in _RESOLVED:
            resolved, value = plain_scalar(node.value)
            if resolved == tag:
                return value
        raise _Unsupported
    if id(node) in seen:
        raise _Unsupported  # an alias: the constructor shares the object, as YAML means
    if depth > MAX_DEPTH:
        raise RecursionError  # as Python's own would, but at a depth that is not the caller's
    seen.add(id(node))
    depth += 1
    if kind is MappingNode and node.tag == _MAP:
        mapping = {}
        for key_node, value_node in node.value:
            if type(key_node) is not ScalarNode or key_node.tag == MERGE:
                raise _Unsupported
            key = key_node.value if key_node.tag == STR else _build(key_node, seen, depth)
            if type(value_node) is ScalarNode and value_node.tag == STR:
                mapping[key] = value_node.value
            else:
                mapping[key] = _build(value_node, seen, depth)
        return mapping
    if kind is SequenceNode and node.tag == _SEQ:
        return [_build(item, seen, depth) for item in node.value]
    raise _Unsupported


def _deeper_than(root: Any, limit: int) -> bool:
    """Whether the value of a composed node nests more than `limit` containers, through aliases
    (a node reached again deeper is walked again: at most `limit` times each). Iterative: the
    document PyYAML's constructor is about to build may be too deep for recursion."""
    deepest: dict[int, int] = {}
    stack = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        if type(node) is ScalarNode or deepest.get(id(node), 0) >= depth:
            continue
        if depth > limit:
            return True
        deepest[id(node)] = depth
        if type(node) is MappingNode:
            stack.extend((part, depth + 1) for pair in node.value for part in pair)
        else:
            stack.extend((item, depth + 1) for item in node.value)
    return False


def too_deep(where: str, number: int) -> str:
    """The one-line error for a document nested deeper than can be read or written."""
    return f"{where}: document {number} is nested too deeply to read (is it a Kubernetes object?)"


# --- output --------------------------------------------------------------------------------------


def dump_document(document: Any, out: IO[str]) -> None:
    """One YAML document (`---` first), keys in their original order, written to `out`.

    A mapping of plain data (what every manifest is) is written by `_Block`, in the layout
    PyYAML's emitter gives, about four times faster than PyYAML's representer and emitter;
    anything else (a tag, bytes, a key too long to be implicit) goes through PyYAML."""
    if type(document) is dict:
        try:
            out.write(_Block.document(document))
            return
        except _Unsupported:
            pass
    yaml.dump(document, out, Dumper=Dumper, **_DUMP_OPTIONS)


class _Unsupported(MeshError):
    """A value the fast paths (`_build`, `_Block`) leave to PyYAML; caught in this module. A
    MeshError like every error here, so that if one ever escaped it would still be one line."""

    def __init__(self) -> None:
        super().__init__("a YAML value kubectl-mesh could not handle")


_PLAIN = re.compile(r"(?:[A-Za-z0-9_/.(]|-(?=[^ ]))[A-Za-z0-9_./@+=,()%*:;~$| -]*\Z")
_AMBIGUOUS_START = frozenset("yYnNtTfFoO~-+0123456789.<=")
# YAML's printable characters, less the line breaks U+0085, U+2028, U+2029 and the BOM.
_PRINTABLE = re.compile(
    "[\x20-\x7e\xa0-\u2027\u202a-\ud7ff\ue000-\ufefe\uff00-\ufffd\U00010000-\U0010fffe]*\\Z"
)
_NO_LITERAL = re.compile(r"[ \t]\n|\n[ \t]*\n\s*$|^\s")


class _Block:
    """Block-style YAML of plain data (dict, list, str, int, float, bool, None): mappings
    indented by two, sequences in a mapping not indented (PyYAML's defaults); a string plain
    unless kubectl, YAML 1.1 or YAML 1.2 could read it otherwise (`ambiguous`), else single-
    quoted, or a literal block when it spans lines, or double-quoted (JSON's escapes, which are
    YAML's too). A container met twice (YAML aliases, read by PyYAML's constructor) is left to
    PyYAML, which writes an anchor instead of copying it out again and again."""

    _texts: ClassVar[dict[str, str]] = {}  # short one-line strings (keys, names) -> their YAML; bounded
    # (id, column) of a part the injector shares between pods (`inject.shared`: kept alive, never
    # changed) -> its YAML at that column, first line indented: written once, copied after.
    _shared: ClassVar[dict[tuple[int, int], str]] = {}

    def __init__(self) -> None:
        self.seen: set[int] = set()
        self.out: list[str] = []

    @classmethod
    def document(cls, doc: dict[Any, Any]) -> str:
        writer = cls()
        writer.out.append("---\n")
        if doc:
            writer._mapping(doc, 0, "")
        else:
            writer.out.append("{}\n")
        if len(cls._texts) > 50_000:
            cls._texts.clear()
        return "".join(writer.out)

    def _enter(self, container: Any) -> None:
        if id(container) in self.seen:
            raise _Unsupported
        self.seen.add(id(container))

    def _mapping(self, mapping: dict[Any, Any], col: int, lead: str) -> None:
        self._enter(mapping)
        out, texts, shared_ids = self.out, self._texts, _SHARED_IDS
        pad = " " * col
        for key, value in mapping.items():
            key_text = texts.get(key) if type(key) is str else None
            if key_text is None:
                key_text = self._key(key)
            head = f"{lead or pad}{key_text}:"
            lead = ""
            kind = type(value)
            if kind is str:
                text = texts.get(value)
                out.append(f"{head} {text if text is not None else self._string(value, col + 2)}\n")
            elif kind is dict:
                if not value:
                    out.append(head + " {}\n")
                elif id(value) in shared_ids:
                    out.append(head + "\n" + self._shared_text(value, col + 2))
                else:
                    out.append(head + "\n")
                    self._mapping(value, col + 2, "")
            elif kind is list:
                if value and id(value) in shared_ids:
                    out.append(head + "\n" + self._shared_text(value, col))
                elif value:
                    out.append(head + "\n")
                    self._sequence(value, col, "")  # not indented under its key
                else:
                    out.append(head + " []\n")
            else:
                out.append(f"{head} {self._scalar(value, col + 2)}\n")

    def _sequence(self, items: list[Any], col: int, lead: str) -> None:
        self._enter(items)
        out, shared_ids = self.out, _SHARED_IDS
        pad = " " * col
        for value in items:
            head = f"{lead or pad}- "
            lead = ""
            kind = type(value)
            if (kind is dict or kind is list) and value and id(value) in shared_ids:
                out.append(head + self._shared_text(value, col + 2)[col + 2 :])
            elif kind is dict and value:
                self._mapping(value, col + 2, head)
            elif kind is list and value:
                self._sequence(value, col + 2, head)
            elif kind is dict:
                out.append(head + "{}\n")
            elif kind is list:
                out.append(head + "[]\n")
            else:
                out.append(f"{head}{self._scalar(value, col + 2)}\n")

    @classmethod
    def _shared_text(cls, value: dict[Any, Any] | list[Any], col: int) -> str:
        """A shared part's YAML at `col` (its first line indented too: a caller putting it after
        `- ` replaces the indentation), from the cache or written by a writer of its own (whose
        `seen` is its own: the part may stand in this document more than once)."""
        text = cls._shared.get((id(value), col))
        if text is None:
            writer = cls()
            if isinstance(value, dict):
                writer._mapping(value, col, "")
            else:
                writer._sequence(value, col, "")
            text = "".join(writer.out)
            if len(cls._shared) < 4096:
                cls._shared[id(value), col] = text
        return text

    @staticmethod
    def _key(key: Any) -> str:
        if type(key) is str and len(key) < 128 and "\n" not in key:
            return _Block._string(key, 0)
        if key is None or type(key) in (bool, int, float):
            return _Block._scalar(key, 0)
        raise _Unsupported  # a long or multi-line key: PyYAML writes it as `? key`

    @staticmethod
    def _scalar(value: Any, indent: int) -> str:
        kind = type(value)
        if kind is str:
            return _Block._string(value, indent)
        if value is None:
            return "null"
        if kind is bool:
            return "true" if value else "false"
        if kind is int:
            return _int_text(value)
        if kind is float:
            if value != value:
                return ".nan"
            if value in (math.inf, -math.inf):
                return ".inf" if value > 0 else "-.inf"
            text = repr(value).lower()
            return text.replace("e", ".0e", 1) if "." not in text and "e" in text else text
        raise _Unsupported

    @staticmethod
    def _string(text: str, indent: int) -> str:
        if len(text) <= 64 and "\n" not in text:
            result = _Block._any_string(text, 0)
            _Block._texts[text] = result
            return result
        return _Block._any_string(text, indent)

    @staticmethod
    def _any_string(text: str, indent: int) -> str:
        if (
            _PLAIN.match(text)
            and text[-1] not in " :"
            and ": " not in text
            and (text[0] not in _AMBIGUOUS_START or not ambiguous(text))
        ):
            return text
        if "\n" in text:
            if not _PRINTABLE.match(text.replace("\n", "")):
                raise _Unsupported
            if _NO_LITERAL.search(text):
                return json.dumps(text, ensure_ascii=False)
            body, chomp = (text[:-1], "") if text.endswith("\n") else (text, "-")
            pad = " " * indent
            return f"|{chomp}\n" + "\n".join(pad + line if line else "" for line in body.split("\n"))
        if not _PRINTABLE.match(text):
            raise _Unsupported
        return "'" + text.replace("'", "''") + "'"


def dump_yaml(documents: Iterable[Any]) -> str:
    """A multi-document YAML stream, keys in their original order."""
    return str(yaml.dump_all(list(documents), Dumper=Dumper, **_DUMP_OPTIONS))


# --- helpers -------------------------------------------------------------------------------------


class _Encoded:
    """A text stream read as UTF-8 bytes (a stdin replaced by a StringIO has no `buffer`)."""

    def __init__(self, text: IO[str]) -> None:
        self.text = text
        self.name = getattr(text, "name", STDIN_NAME)

    def read(self, size: int = -1) -> bytes:
        return self.text.read(size).encode()


class Prefixed:
    """A byte stream with some bytes already read put back in front (stdin cannot seek)."""

    def __init__(self, head: bytes, rest: ByteReader) -> None:
        self.head, self.rest = head, rest
        self.name = getattr(rest, "name", "<file>")

    def read(self, size: int = -1) -> bytes:
        if self.head:
            chunk, self.head = self.head, b""
            return chunk
        return self.rest.read(size)


_BLANK = b" \t\r\n\xef\xbb\xbf"  # whitespace and the bytes of a UTF-8 BOM


def peek(stream: ByteReader) -> bytes:
    """The input's first bytes, through leading whitespace and a BOM, to tell JSON from YAML."""
    head = b""
    while True:
        chunk = stream.read(65536)
        head += chunk
        if not chunk or head.lstrip(_BLANK):
            return head


def _decode(name: str, data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ManifestError(f"{name}: not UTF-8 text") from None


def _manifest_files(directory: str) -> Iterable[str]:
    for root, dirs, files in os.walk(directory):
        dirs.sort()
        for name in sorted(files):
            if name.endswith(MANIFEST_SUFFIXES):
                yield os.path.join(root, name)


def _open(path: str) -> IO[bytes]:
    try:
        return open(path, "rb")
    except OSError as exc:
        raise ManifestError(f"{path}: {exc.strerror or exc}") from None


def _json_stream(name: str, text: str) -> Iterator[tuple[int, Any]]:
    """(number, object) of each JSON value of a stream of concatenated JSON values."""
    decoder = json.JSONDecoder()
    pos, end, number = 0, len(text), 0
    while True:
        while pos < end and text[pos].isspace():
            pos += 1
        if pos >= end:
            return
        number += 1
        start = pos
        try:
            doc, pos = decoder.raw_decode(text, pos)
        except RecursionError:  # far deeper than MAX_DEPTH, wherever the stack stands
            raise ManifestError(too_deep(name, number)) from None
        # The rule YAML documents are held to. A value with no more brackets than that cannot
        # nest deeper (counted in C: most documents are never walked).
        if text.count("[", start, pos) + text.count("{", start, pos) > MAX_DEPTH and nesting.deeper_than(
            doc, MAX_DEPTH
        ):
            raise ManifestError(too_deep(name, number))
        yield number, doc
