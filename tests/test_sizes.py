"""Sizes (STYLE.md, issue 8's proof): no module in src/ over 600 lines, no function
over 60 lines, but for the functions listed below, each with its reason (they
mirror one PostgreSQL function step by step, so that a reader can follow the
two side by side; cutting them would hide that order).
A module past the limit splits along a noun; a long function into its steps."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "strata"
MODULE_LINES = 600
FUNCTION_LINES = 60

# "module.path:function" -> why it may be longer
LONG_FUNCTIONS: dict[str, str] = {
    "strata.wal.reader:WalReader.read_record":
        "XLogDecodeNextRecord (xlogreader.c): page headers, records crossing pages and "
        "segments, header and CRC checks in PostgreSQL's order",
    "strata.wal.decoder:decode_headers":
        "DecodeXLogRecord (xlogreader.c): the block-reference header loop, each check "
        "as PostgreSQL makes it",
}


def _module_name(path: Path, src: Path = SRC) -> str:
    rel = path.relative_to(src.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _functions(tree: ast.AST, prefix: str = "") -> list[tuple[str, int]]:
    """(qualified name, lines from `def` to its last line) of every function."""
    out: list[tuple[str, int]] = []
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            name = prefix + node.name
            assert node.end_lineno is not None
            out.append((name, node.end_lineno - node.lineno + 1))
            out += _functions(node, name + ".")
        elif isinstance(node, ast.ClassDef):
            out += _functions(node, prefix + node.name + ".")
    return out


def oversized(src: Path = SRC) -> tuple[list[str], list[str]]:
    """(modules over MODULE_LINES, functions over FUNCTION_LINES not allowed)."""
    modules: list[str] = []
    functions: list[str] = []
    for path in sorted(src.rglob("*.py")):
        text = path.read_text()
        lines = text.count("\n")
        module = _module_name(path, src)
        if lines > MODULE_LINES:
            modules.append(f"{module}: {lines} lines")
        for name, n in _functions(ast.parse(text, str(path))):
            key = f"{module}:{name}"
            if n > FUNCTION_LINES and key not in LONG_FUNCTIONS:
                functions.append(f"{key}: {n} lines")
    return modules, functions


def test_no_module_or_function_is_over_its_limit() -> None:
    modules, functions = oversized()
    assert not modules, "split along a noun:\n" + "\n".join(modules)
    assert not functions, "split into steps:\n" + "\n".join(functions)


def test_every_allowed_long_function_exists_and_is_long() -> None:
    """The allow-list names real functions that still need it."""
    found: dict[str, int] = {}
    for path in SRC.rglob("*.py"):
        module = _module_name(path)
        for name, n in _functions(ast.parse(path.read_text(), str(path))):
            found[f"{module}:{name}"] = n
    for key in LONG_FUNCTIONS:
        assert key in found, f"{key} is allowed to be long but does not exist"
        assert found[key] > FUNCTION_LINES, f"{key} is short now: take it off the list"


def test_the_check_sees_a_long_module_and_a_long_function(tmp_path: Path) -> None:
    pkg = tmp_path / "strata"
    pkg.mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(FUNCTION_LINES))
    (pkg / "big.py").write_text("def long():\n" + body + "\n" + "\n" * MODULE_LINES)
    (pkg / "small.py").write_text("def short():\n    return 1\n")
    modules, functions = oversized(pkg)
    assert [m.split(":")[0] for m in modules] == ["strata.big"]
    assert functions == [f"strata.big:long: {FUNCTION_LINES + 1} lines"]
