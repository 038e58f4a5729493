"""The import contract of STYLE.md, checked on every module of src/strata.

Layers, lowest first; a module may import its own layer and the layers below,
never one above. Function-level imports count (they are imports all the
same), so no cycle can hide inside a function.

- storage never imports PostgreSQL knowledge (pg, wal, keyspace, ingest,
  reconstruct, historical, ...): only the bottom layer and itself;
- nothing imports upward;
- no cycles between modules (a package's ``__init__`` re-exporting its own
  submodules is not a cycle).

`test_the_checker_reports_a_wrong_way_import` shows the checker failing on a
tree that breaks the contract.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# top-level names under strata -> layer (modules named here by their first component)
LAYERS: dict[str, int] = {
    "errors": 0, "lsn": 0, "key": 0, "durable": 0, "config": 0, "progress": 0,
    "pg": 1,
    "storage": 2, "runtime": 2, "home": 2,
    "pagestore": 3, "wal": 3,
    "keyspace": 4,
    "reconstruct": 5, "timemap": 5,
    "ingest": 6,
    "historical": 7, "proxy": 7,
    "bootstrap": 8, "history_service": 8, "restore": 8, "status": 9,
    "daemon": 9, "supervisor": 9, "services": 9,
    "cli": 10,
}
# storage knows nothing of PostgreSQL: it imports only these
STORAGE_MAY_IMPORT = {"errors", "lsn", "key", "durable", "config", "progress", "storage"}


def _modules(src: Path, package: str) -> Iterator[tuple[str, Path]]:
    root = src / package
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(src).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), path


def _imports(path: Path, module: str, package: str, known: set[str]) -> Iterator[tuple[str, int]]:
    """(imported module under `package`, line) for every import in the file."""
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == package or a.name.startswith(package + "."):
                    yield a.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_pkg else module.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not (target == package or target.startswith(package + ".")):
                continue
            for a in node.names:
                sub = f"{target}.{a.name}"
                yield (sub if sub in known else target), node.lineno


def check_imports(src: Path, package: str = "strata",
                  layers: dict[str, int] = LAYERS) -> list[str]:
    """Every violation of the contract in `src/package`, as readable lines."""
    mods = dict(_modules(src, package))
    known = set(mods)
    problems: list[str] = []
    graph: dict[str, set[str]] = {m: set() for m in mods}

    def top(m: str) -> str:
        parts = m.split(".")
        return parts[1] if len(parts) > 1 else ""

    for mod, path in mods.items():
        if mod == package:
            continue
        mine = top(mod)
        if mine not in layers:
            problems.append(f"{mod}: not in the layer table (add it to LAYERS)")
            continue
        for target, line in _imports(path, mod, package, known):
            theirs = top(target)
            if not theirs or target == mod:
                continue
            if theirs not in layers:
                problems.append(f"{mod}:{line} imports {target}, which is not in the layer table")
                continue
            if mine == "storage" and theirs not in STORAGE_MAY_IMPORT:
                problems.append(f"{mod}:{line} imports {target}: storage knows nothing of "
                                "PostgreSQL")
            elif layers[theirs] > layers[mine]:
                problems.append(f"{mod}:{line} imports {target} upward "
                                f"(layer {layers[mine]} -> {layers[theirs]})")
            # a package re-exporting its own submodules is not a dependency cycle
            if not (path.name == "__init__.py" and target.startswith(mod + ".")):
                graph[mod].add(target if target in graph else target.rsplit(".", 1)[0])
    problems += [f"import cycle: {' -> '.join(c)}" for c in _cycles(graph)]
    return problems


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_src_follows_the_import_contract() -> None:
    problems = check_imports(SRC)
    assert problems == [], "\n".join(problems)


def test_the_checker_reports_a_wrong_way_import(tmp_path: Path) -> None:
    pkg = tmp_path / "strata"
    (pkg / "storage").mkdir(parents=True)
    (pkg / "wal").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "lsn.py").write_text("")
    (pkg / "storage" / "__init__.py").write_text("")
    (pkg / "wal" / "__init__.py").write_text("")
    # storage reaching for PostgreSQL knowledge, inside a function
    (pkg / "storage" / "store.py").write_text(
        "def f():\n    from strata.wal import reader\n    return reader\n")
    # a lower layer importing a higher one, and a cycle
    (pkg / "wal" / "reader.py").write_text("from strata.cli import main\n")
    (pkg / "cli").mkdir()
    (pkg / "cli" / "__init__.py").write_text("")
    (pkg / "cli" / "main.py").write_text("from strata.wal import reader\n")
    problems = check_imports(tmp_path)
    assert any("storage.store:2 imports strata.wal.reader: storage knows nothing" in p
               for p in problems), problems
    assert any("wal.reader:1 imports strata.cli.main upward" in p for p in problems), problems
    assert any(p.startswith("import cycle:") and "strata.cli.main" in p for p in problems), problems
    # and the same tree without the wrong-way imports is clean
    (pkg / "storage" / "store.py").write_text("from strata import lsn\n")
    (pkg / "wal" / "reader.py").write_text("")
    assert check_imports(tmp_path) == []
