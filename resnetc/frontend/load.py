"""From a spec file to a validated `LoadedSpec`, or a `SpecError` naming every problem's place."""

from __future__ import annotations

import hashlib
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from resnetc import ops
from resnetc.core.errors import Diagnostic, Location, SpecError, did_you_mean
from resnetc.core.source import Path as DocPath
from resnetc.core.source import SourceMap, spelling
from resnetc.frontend.models import BlockDef, Library, Spec
from resnetc.frontend.shipped import resolve
from resnetc.frontend.yaml_source import MAX_SPEC_BYTES, read_yaml

LIBRARY_FILE = "blocks.yaml"
# Read only when a spec names a block the core library lacks: timm's YAML takes a third of a second to parse.
# One file per timm model file, in the order `resnetc blocks` lists them.
EXTRA_LIBRARIES = ("timm.yaml", "timm_resnetv2.yaml", "timm_sknet.yaml", "timm_resnest.yaml", "timm_res2net.yaml")


@dataclass(frozen=True)
class Located:
    """A block definition and where it was written, so later errors can point into it."""

    block: BlockDef
    source: SourceMap
    path: DocPath  # path of the block inside its document, e.g. ("blocks", "basic")


class LibraryBlocks(Mapping[str, "Located"]):
    """The blocks a spec can use: its own, over the library's. The core library is read at once; the larger
    ones (timm's) only when a name is not found otherwise, or when every name is asked for."""

    def __init__(self, own: dict[str, Located]) -> None:
        self._own = own
        self._extra: dict[str, Located] = {}  # the extra files read so far, in EXTRA_LIBRARIES' order
        self._unread = list(EXTRA_LIBRARIES)
        self._blocks = _library_blocks(LIBRARY_FILE) | own

    def _read_next(self) -> None:
        self._extra |= _library_blocks(self._unread.pop(0))
        self._blocks = _library_blocks(LIBRARY_FILE) | self._extra | self._own

    def _everything(self) -> dict[str, Located]:
        while self._unread:
            self._read_next()
        return self._blocks

    def __getitem__(self, name: str) -> Located:
        # A spec's own blocks and blocks.yaml win; the extra files are read one at a time until the name is found,
        # so a resnet.py spec never parses Res2Net's file.
        while name not in self._blocks and self._unread:
            self._read_next()
        return self._blocks[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._everything())

    def __len__(self) -> int:
        return len(self._everything())


def library() -> dict[str, Located]:
    """Every library block (blocks.yaml, then timm's), by name, in the files' order: what `resnetc blocks`
    lists and docs/blocks.md documents."""
    found: dict[str, Located] = {}
    for file_name in (LIBRARY_FILE, *EXTRA_LIBRARIES):
        found |= _library_blocks(file_name)
    return found


def _library_blocks(file_name: str) -> dict[str, Located]:
    library, source = _library(file_name)
    return {name: Located(block, source, ("blocks", name)) for name, block in library.blocks.items()}


@dataclass(frozen=True)
class LoadedSpec:
    spec: Spec
    source: SourceMap
    stem: str  # the file name without `.yaml`: names the outputs
    file_name: str  # the file name only: no folders reach generated files
    sha256: str
    blocks: Mapping[str, Located]  # the library's blocks, overridden by the spec's own


def _message(error: dict[str, Any]) -> str:
    message = error["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        if message.startswith(prefix):
            message = message[len(prefix) :]
    if error["type"] == "extra_forbidden":
        return f"unknown key '{error['loc'][-1]}'"
    if error["type"] == "missing":
        return f"missing required key '{error['loc'][-1]}'"
    if error["type"] == "union_tag_invalid":
        tag = error.get("ctx", {}).get("tag")
        expected = error.get("ctx", {}).get("expected_tags", "")
        return f"unknown op '{tag}'; expected one of {expected}"
    if error["type"] == "union_tag_not_found":
        return "a layer needs an 'op' key"
    if error["type"] == "literal_error":
        return f"{message}, got {spelling(error['input'])}"
    if (
        error["type"].endswith("_type")
        and error["type"] != "int_or_expression_type"
        and not isinstance(error["input"], (dict, list))
    ):
        return f"{message}, got {spelling(error['input'])} ({_type_name(error['input'])})"
    return message


def _type_name(value: Any) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", type(None): "null"}.get(
        type(value), type(value).__name__
    )


def _document_path(data: Any, loc: tuple[Any, ...]) -> DocPath:
    """pydantic's `loc` may hold union tags and validator names: keep only real document keys."""
    path: list[str | int] = []
    node = data
    for segment in loc:
        if isinstance(node, dict) and segment in node:
            path.append(segment)
            node = node[segment]
        elif isinstance(node, list) and isinstance(segment, int) and 0 <= segment < len(node):
            path.append(segment)
            node = node[segment]
        elif isinstance(node, dict) and isinstance(segment, str) and segment not in node and segment == loc[-1]:
            path.append(segment)  # a key that should exist: locate its parent
    return tuple(path)


def _help(item: dict[str, Any], model: type[BaseModel], data: Any, path: DocPath) -> str | None:
    """A likely fix: the closest known op, or the closest allowed key."""
    if item["type"] == "union_tag_invalid":
        return did_you_mean(str(item.get("ctx", {}).get("tag")), ops.spec_op_names())
    if item["type"] == "extra_forbidden":
        parent = data
        for segment in path[:-1]:
            parent = parent[segment]
        allowed = _allowed_keys(model, parent, len(path) - 1, path)
        return did_you_mean(str(path[-1]), allowed) if allowed else None
    return None


def _allowed_keys(model: type[BaseModel], parent: Any, depth: int, path: DocPath) -> list[str]:
    """The keys a mapping may have: from the layer model its `op` selects, or the top-level model."""
    if isinstance(parent, dict) and parent.get("op") in ops.spec_op_names():
        fields = ops.get(parent["op"]).fields
        assert fields is not None
        return [field.alias or name for name, field in fields.model_fields.items()]
    if depth == 0:
        return [field.alias or name for name, field in model.model_fields.items()]
    if len(path) == 3 and path[0] == "blocks":
        return list(BlockDef.model_fields)
    return []


_CODES_BY_TYPE = {
    "extra_forbidden": "E201",
    "missing": "E202",
    "union_tag_invalid": "E203",
    "union_tag_not_found": "E202",
    "quoted_number": "E200",
}


def _diagnostics(error: ValidationError, data: Any, source: SourceMap, model: type[BaseModel]) -> list[Diagnostic]:
    diagnostics = []
    for item in error.errors(include_url=False):
        path = _document_path(data, tuple(item["loc"]))
        if item["type"] == "union_tag_invalid" and isinstance(data, dict):
            path = (*path, "op")  # blame the op's value, not the whole layer
        if item["type"] == "extra_forbidden":
            where = source.key(path)
        elif item["type"] == "missing":
            where = source.value(path[:-1])
        else:
            where = source.value(path)
        code = _CODES_BY_TYPE.get(item["type"], "E200" if item["type"].endswith("_type") else "E204")
        diagnostics.append(Diagnostic(where, _message(item), code, _help(item, model, data, path)))
    return diagnostics


def _validate(model: type[BaseModel], data: Any, source: SourceMap) -> Any:
    if not isinstance(data, dict):
        raise SpecError.at(source.value(()), "the top level of a spec must be a mapping of keys to values", "E108")
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise SpecError(_diagnostics(error, data, source, model)) from None


@cache  # one entry per library file
def _library(file_name: str = LIBRARY_FILE) -> tuple[Library, SourceMap]:
    text = resources.files("resnetc.library").joinpath(file_name).read_text(encoding="utf-8")
    data, source = read_yaml(text, f"<resnetc library>/{file_name}")
    return _validate(Library, data, source), source


def load_spec_text(text: str, path: str = "<spec>") -> LoadedSpec:
    """Validate spec text; `path` is used in messages and (by its file name) in outputs."""
    data, source = read_yaml(text, path)
    spec: Spec = _validate(Spec, data, source)
    own = {name: Located(block, source, ("blocks", name)) for name, block in spec.blocks.items()}
    blocks = LibraryBlocks(own)
    # The file name reaches generated files (a docstring, ONNX metadata): keep it printable text.
    file_name = "".join(c if c.isprintable() and not 0xD800 <= ord(c) <= 0xDFFF else "?" for c in Path(path).name)
    return LoadedSpec(
        spec=spec,
        source=source,
        stem=Path(file_name).stem,
        file_name=file_name,
        sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
        blocks=blocks,
    )


def _not_regular(mode: int) -> str | None:
    kinds = {
        stat.S_ISDIR: "folder",
        stat.S_ISFIFO: "FIFO",
        stat.S_ISCHR: "character device",
        stat.S_ISBLK: "block device",
        stat.S_ISSOCK: "socket",
    }
    return next((kind for test, kind in kinds.items() if test(mode)), None)


def load_spec(path: str | Path) -> LoadedSpec:
    """Read and validate a spec file, or a shipped spec by name (`resnet50`, `timm/resnet50d`)."""
    if str(path) == "":
        raise SpecError.at(Location("<spec>", 1, 1), "the spec path is empty", "E109")
    path = resolve(path)
    try:
        kind = _not_regular(path.stat().st_mode)  # before opening: opening a FIFO blocks until a writer comes
        if kind is not None:
            raise SpecError.at(
                Location(str(path), 1, 1), f"cannot read spec: it is a {kind}, not a regular file", "E109"
            )
        with path.open("rb") as handle:  # at most one byte past the cap: a huge file ends at once
            raw = handle.read(MAX_SPEC_BYTES + 1)
    except OSError as error:
        raise SpecError.at(Location(str(path), 1, 1), f"cannot read spec: {error.strerror or error}", "E109") from None
    if len(raw) > MAX_SPEC_BYTES:
        raise SpecError.at(Location(str(path), 1, 1), f"spec file is larger than {MAX_SPEC_BYTES // 1024} KiB", "E106")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        before = raw[: error.start]
        line, col = before.count(b"\n") + 1, error.start - (before.rfind(b"\n") + 1) + 1
        raise SpecError.at(
            Location(str(path), line, col), f"spec is not UTF-8 text (byte 0x{raw[error.start]:02x})", "E109"
        ) from None
    return load_spec_text(text, str(path))
