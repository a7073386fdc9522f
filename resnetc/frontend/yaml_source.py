"""A safe YAML reader that keeps where every key and value came from.

PyYAML's composer gives node positions; we build plain Python data from the nodes ourselves,
so that we decide the typing rules (YAML 1.2 core-like: `no` and `1e-5` are not surprises),
refuse what a spec never needs (aliases, anchors, custom tags, duplicate keys) and remember
a position for every path into the document.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from resnetc.core.errors import Diagnostic, Location, SpecError
from resnetc.core.source import Path, SourceMap

MAX_SPEC_BYTES = 256 * 1024
MAX_DEPTH = 32

# Plain (unquoted) scalars are typed by these patterns, as YAML 1.2's core schema does.
_INT = re.compile(r"[-+]?(0|[1-9][0-9]*)")
_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+\.[0-9]*|[0-9]+)([eE][-+]?[0-9]+)?")
_NULL = {"", "~", "null", "Null", "NULL"}
_TRUE = {"true", "True", "TRUE"}
_FALSE = {"false", "False", "FALSE"}
_PLAIN = "tag:resnetc,2026:plain"  # an untagged, unquoted scalar: typed by the patterns above
_STR = "tag:yaml.org,2002:str"
# Explicit `!!str` is honoured; other tags are refused (a spec never needs them, and `!!python/...` is an attack).
_ACCEPTED_TAGS = {"tag:yaml.org,2002:map", "tag:yaml.org,2002:seq", _STR, _PLAIN}
# Where PyYAML's "context" mark is the place to fix (the unclosed bracket or quote), not where it gave up.
_CONTEXT_FIRST = (
    "while parsing a flow mapping",
    "while parsing a flow sequence",
    "while scanning a quoted scalar",
    "while scanning a simple key",
)


def _resolve(self: yaml.resolver.BaseResolver, kind: type, value: str, implicit: tuple[bool, bool]) -> str:
    """Plain scalars stay untyped, so that we type them (and see explicit tags)."""
    if kind is yaml.ScalarNode and implicit[0]:
        return _PLAIN
    return yaml.resolver.Resolver.resolve(self, kind, value, implicit)


class _Loader(yaml.SafeLoader):
    resolve = _resolve


# libyaml's parser, where PyYAML has it: 50x faster (a spec in 0.3 ms instead of 17). Only well-formed text is
# read with it; anything it refuses is read again by the pure-Python parser, whose messages are the ones we
# locate and explain.
_FastLoader: type | None = None
if getattr(yaml, "__with_libyaml__", False):

    class _FastLoader(yaml.CSafeLoader):  # type: ignore[no-redef]
        resolve = _resolve


def _location(path: str, mark: yaml.Mark) -> Location:
    return Location(path, mark.line + 1, mark.column + 1)


class _ScalarError(ValueError):
    """A scalar that is well-formed YAML but no value a spec can hold."""


INT64 = 2**63  # every integer a spec holds fits the targets' int64 (ONNX attributes, torch sizes)


def _scalar(node: yaml.ScalarNode) -> Any:
    if node.tag == _STR:  # quoted, block or `!!str`: always text
        return node.value
    text = node.value
    if text in _NULL:
        return None
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    if _INT.fullmatch(text):
        if len(text.lstrip("+-")) > 19:  # checked before int(): Python refuses to convert 4,300+ digits
            raise _ScalarError(f"integer of {len(text.lstrip('+-'))} digits does not fit 64 bits")
        value = int(text)
        if not -INT64 <= value < INT64:
            raise _ScalarError(f"integer {value} does not fit 64 bits")
        return value
    if _FLOAT.fullmatch(text):
        return float(text)
    return text


class _Builder:
    def __init__(self, source: SourceMap) -> None:
        self.source = source
        self.problems: list[Diagnostic] = []

    def fail(self, mark: yaml.Mark, message: str, code: str) -> None:
        self.problems.append(Diagnostic(_location(self.source.path, mark), message, code))

    def build(self, node: yaml.Node, path: Path, depth: int = 0) -> Any:
        self.source.values[path] = _location(self.source.path, node.start_mark)
        if depth > MAX_DEPTH:
            self.fail(node.start_mark, f"the document nests deeper than {MAX_DEPTH} levels", "E105")
            return None
        if node.tag not in _ACCEPTED_TAGS:
            tag = node.tag.replace("tag:yaml.org,2002:", "!!")
            self.fail(node.start_mark, f"custom YAML tags are not allowed: {tag}", "E104")
            return None
        if isinstance(node, yaml.ScalarNode):
            if any(0xD800 <= ord(c) <= 0xDFFF for c in node.value):  # from a "\\ud800" escape: not text
                self.fail(node.start_mark, "a string holds a lone surrogate (an invalid \\u escape)", "E100")
                return None
            try:
                return _scalar(node)
            except _ScalarError as error:
                self.fail(node.start_mark, str(error), "E204")
                return None
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, i), depth + 1) for i, item in enumerate(node.value)]
        return self._mapping(node, path, depth)

    def _mapping(self, node: yaml.MappingNode, path: Path, depth: int) -> dict[str, Any]:
        result: dict[str, Any] = {}
        first_seen: dict[str, yaml.Mark] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                self.fail(key_node.start_mark, "a mapping key must be a plain name", "E103")
                continue
            # Keys are names: `0` and `true` stay the text that was written.
            key = key_node.value
            if key == "<<":
                self.fail(key_node.start_mark, "YAML merge keys (<<) are not allowed", "E101")
                continue
            if key in first_seen:
                earlier = _location(self.source.path, first_seen[key])
                self.fail(
                    key_node.start_mark,
                    f"duplicate key '{key}' (first defined at line {earlier.line}, column {earlier.col})",
                    "E102",
                )
                continue
            first_seen[key] = key_node.start_mark
            self.source.keys[(*path, key)] = _location(self.source.path, key_node.start_mark)
            result[key] = self.build(value_node, (*path, key), depth + 1)
        return result


def _scan_events(text: str, path: str, loader: type = _Loader) -> list[yaml.Mark]:
    """Refuse anchors and aliases (a small file could expand without bound; a spec never needs them)
    and documents nested deeper than MAX_DEPTH (composing them recurses once per level), and return where
    each document starts (its `---`, where written)."""
    problems = []
    starts = []
    depth = 0
    for event in yaml.parse(text, Loader=loader):  # PyYAML's parser is iterative; its composer recurses
        if isinstance(event, yaml.DocumentStartEvent):
            starts.append(event.start_mark)
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH + 1:  # refused before composing: a deep document would exhaust the stack
                problems.append(
                    Diagnostic(
                        _location(path, event.start_mark), f"the document nests deeper than {MAX_DEPTH} levels", "E105"
                    )
                )
                break
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
        if isinstance(event, yaml.AliasEvent):
            problems.append(
                Diagnostic(_location(path, event.start_mark), "YAML aliases (*name) are not allowed", "E101")
            )
        elif getattr(event, "anchor", None):
            problems.append(
                Diagnostic(_location(path, event.start_mark), "YAML anchors (&name) are not allowed", "E101")
            )
    if problems:
        raise SpecError(problems)
    return starts


def _syntax_error(error: yaml.YAMLError, path: str) -> SpecError:
    context = getattr(error, "context", None) or ""
    marks = [getattr(error, "problem_mark", None), getattr(error, "context_mark", None)]
    if context.startswith(_CONTEXT_FIRST):
        marks.reverse()
    mark = next((candidate for candidate in marks if candidate is not None), None)
    where = _location(path, mark) if mark is not None else Location(path, 1, 1)
    problem = getattr(error, "problem", None) or str(error)
    if "'\\t'" in problem or "\t" in problem:
        problem = "a tab cannot indent YAML; use spaces"
    message = f"invalid YAML: {problem}" + (f" ({context})" if context else "")
    return SpecError.at(where, message, "E100")


def _compose(text: str, path: str) -> tuple[list[yaml.Mark], list[yaml.Node]]:
    """Where each document starts, and its nodes: libyaml's where it reads the text, else PyYAML's (or its
    error, located)."""
    if _FastLoader is not None:
        try:
            return _scan_events(text, path, _FastLoader), list(yaml.compose_all(text, Loader=_FastLoader))
        except (yaml.YAMLError, ValueError):  # ill-formed, or a lone surrogate libyaml cannot encode
            pass
    try:
        return _scan_events(text, path), list(yaml.compose_all(text, Loader=_Loader))
    except yaml.YAMLError as error:
        raise _syntax_error(error, path) from None


def read_yaml(text: str, path: str) -> tuple[Any, SourceMap]:
    """Parse one YAML document into plain data and a map of its positions."""
    source = SourceMap(path, text)
    if len(text.encode("utf-8", "surrogatepass")) > MAX_SPEC_BYTES:
        raise SpecError.at(Location(path, 1, 1), f"spec file is larger than {MAX_SPEC_BYTES // 1024} KiB", "E106")
    starts, documents = _compose(text, path)
    if len(documents) > 1:
        raise SpecError.at(_location(path, starts[1]), "a spec file holds exactly one YAML document", "E107")
    if not documents or (isinstance(documents[0], yaml.ScalarNode) and documents[0].value == ""):
        raise SpecError.at(Location(path, 1, 1), "the spec file is empty", "E107")
    builder = _Builder(source)
    data = builder.build(documents[0], ())
    if builder.problems:
        raise SpecError(builder.problems)
    return data, source
