"""The bad-spec corpus: every file in tests/bad_specs must be refused with the diagnostic its header names.

Each corpus file starts with one or more header lines

    # expect: E201 7:24 unknown key 'epss'

giving the code, the 1-based LINE:COL and a substring of the message of the first diagnostic
(after sorting by position); further `# expect:` lines name diagnostics that must follow, in order.
Specs whose expected code is E110 (a bad file name) are run through `resnetc compile`, which is
where that check lives; every other spec goes through `resnetc check`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from resnetc import cli
from resnetc.core.errors import CODES

CORPUS = Path(__file__).parent / "bad_specs"
FILES = sorted(CORPUS.glob("*.yaml"))
MIN_CORPUS_SIZE = 60

_EXPECT = re.compile(r"# expect: (?P<code>E\d{3}) (?P<line>\d+):(?P<col>\d+) (?P<message>\S.*)")
_GUTTER = re.compile(r" *(?P<line>\d+) \| (?P<text>.*)")
_CARET = re.compile(r" *\| (?P<pad> *)\^")
# Commands that a code is raised by, where it is not `check`.
_COMPILE_ONLY = {"E110"}


@dataclass(frozen=True)
class Expected:
    code: str
    line: int
    col: int
    message: str


@dataclass(frozen=True)
class Reported:
    file: str
    line: int
    col: int
    code: str
    message: str
    index: int  # index of the header line in stderr's lines


def _raw_lines(path: Path) -> list[str]:
    return path.read_bytes().decode("utf-8", errors="replace").splitlines()


def expectations(path: Path) -> list[Expected]:
    """The `# expect:` header of a corpus file: the first line and those right after it."""
    found = []
    for number, line in enumerate(_raw_lines(path)):
        match = _EXPECT.fullmatch(line.rstrip())
        if match is None:
            assert number > 0, f"{path.name}: the first line must be '# expect: CODE LINE:COL MESSAGE'"
            assert not line.startswith("# expect"), f"{path.name}:{number + 1}: malformed expect line {line!r}"
            break
        found.append(Expected(match["code"], int(match["line"]), int(match["col"]), match["message"].strip()))
    return found


def _header(path: Path) -> re.Pattern[str]:
    return re.compile(re.escape(str(path)) + r":(?P<line>\d+):(?P<col>\d+): error\[(?P<code>E\d{3})\]: (?P<message>.*)")


def reported(stderr: str, path: Path) -> list[Reported]:
    """Every `FILE:LINE:COL: error[CODE]: MESSAGE` line of text output (any file, so stray locations show)."""
    any_file = re.compile(r"(?P<file>.+?):(?P<line>\d+):(?P<col>\d+): error\[(?P<code>E\d{3})\]: (?P<message>.*)")
    mine = _header(path)
    result = []
    for index, line in enumerate(stderr.splitlines()):
        match = mine.fullmatch(line) or any_file.fullmatch(line)
        if match is None:
            continue
        file = str(path) if match.re is mine else match["file"]
        result.append(Reported(file, int(match["line"]), int(match["col"]), match["code"], match["message"], index))
    return result


def _argv(path: Path, tmp_path: Path, extra: list[str]) -> list[str]:
    if any(item.code in _COMPILE_ONLY for item in expectations(path)):
        return ["compile", str(path), "--out", str(tmp_path / "out"), *extra]
    return ["check", str(path), *extra]


def _run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _describe(item: Reported | Expected) -> str:
    return f"{item.code} {item.line}:{item.col} {item.message}"


@pytest.mark.parametrize("path", [pytest.param(path, id=path.stem) for path in FILES])
def test_bad_spec(path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    expected = expectations(path)
    assert expected, f"{path.name} has no '# expect:' header"

    status, out, err = _run(capsys, _argv(path, tmp_path, []))
    assert "Traceback" not in err
    assert "internal error" not in err, err
    assert status == 2, f"expected exit 2 (bad input), got {status}\nstdout: {out}\nstderr: {err}"

    diagnostics = reported(err, path)
    assert diagnostics, f"no 'FILE:LINE:COL: error[CODE]: message' line on stderr:\n{err}"
    first, want = diagnostics[0], expected[0]
    shown = "\n".join(_describe(item) for item in diagnostics)
    assert first.file == str(path), f"the first diagnostic is located in {first.file}, not in the spec:\n{err}"
    assert (first.code, first.line, first.col) == (want.code, want.line, want.col), (
        f"expected {_describe(want)}, got:\n{shown}"
    )
    assert want.message in first.message, f"expected message containing {want.message!r}, got {first.message!r}"

    # Further expectations: present, in this order, after the first.
    position = 1
    for item in expected[1:]:
        while position < len(diagnostics) and (
            diagnostics[position].file,
            diagnostics[position].code,
            diagnostics[position].line,
            diagnostics[position].col,
        ) != (str(path), item.code, item.line, item.col):
            position += 1
        assert position < len(diagnostics), f"missing (in order) {_describe(item)}; got:\n{shown}"
        assert item.message in diagnostics[position].message, (
            f"expected message containing {item.message!r}, got {diagnostics[position].message!r}"
        )
        position += 1

    # The source line and a caret under the column follow the first diagnostic's header line.
    lines = err.splitlines()
    assert first.index + 2 < len(lines), f"no source line and caret after the diagnostic:\n{err}"
    gutter = _GUTTER.fullmatch(lines[first.index + 1])
    caret = _CARET.fullmatch(lines[first.index + 2])
    assert gutter is not None, f"expected ' LINE | source', got {lines[first.index + 1]!r}"
    assert caret is not None, f"expected a caret line, got {lines[first.index + 2]!r}"
    assert int(gutter["line"]) == first.line
    source = _raw_lines(path)
    if "\ufffd" not in "".join(source) and first.line <= len(source):  # a readable line, shown as written
        assert gutter["text"].split() == source[first.line - 1].split(), "the shown source line is not the file's"
    assert len(caret["pad"]) == first.col - 1, "the caret is not under the reported column"

    # The same first diagnostic in JSON.
    status, _, err = _run(capsys, _argv(path, tmp_path, ["--error-format", "json"]))
    assert status == 2
    assert "Traceback" not in err
    entries = json.loads(err)
    assert isinstance(entries, list) and entries, err
    head = entries[0]
    assert (head["file"], head["line"], head["col"], head["code"]) == (str(path), first.line, first.col, first.code)
    assert head["message"] == first.message

    if any(item.code in _COMPILE_ONLY for item in expected):
        out_dir = tmp_path / "out"
        assert not out_dir.exists() or not any(out_dir.iterdir()), "compile wrote files for a bad spec"


def test_corpus_is_large_enough() -> None:
    assert len(FILES) >= MIN_CORPUS_SIZE, f"only {len(FILES)} bad specs in {CORPUS}"


def test_corpus_codes_are_known() -> None:
    used = {item.code for path in FILES for item in expectations(path)}
    assert used, "no expectations found"
    unknown = sorted(used - set(CODES))
    assert not unknown, f"codes not in resnetc.core.errors.CODES: {unknown}"


def test_corpus_headers_are_well_formed() -> None:
    for path in FILES:
        first = _raw_lines(path)[0] if _raw_lines(path) else ""
        assert _EXPECT.fullmatch(first.rstrip()), f"{path.name}: first line {first!r} is not an expect header"


@pytest.mark.parametrize(
    "name", ["yaml_unclosed_flow_mapping", "unknown_key_in_conv", "add_channel_mismatch", "output_not_num_classes"]
)
def test_compile_bad_spec_writes_nothing(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    status, out, err = _run(capsys, ["compile", str(CORPUS / f"{name}.yaml"), "--out", str(out_dir), "--target", "all"])
    assert status == 2, f"stdout: {out}\nstderr: {err}"
    assert "Traceback" not in err
    assert "error[" in err
    assert list(out_dir.iterdir()) == []
