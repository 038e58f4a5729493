"""Every invariant of every FORMAT.md names a test, and every test it names exists.

STYLE.md: each numbered invariant names the code that keeps it and the test
that checks it. This reads the invariant lists of src/strata/**/FORMAT.md (a
numbered list after an "Invariants" heading or line, or the rows of an
invariant table) and checks, for each invariant, that it names at least one
test (`test_name`, `file.py::test_name`, `test_file.py` or `tests/...py`),
and that each named test function and test file exists under tests/.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "strata"
TESTS = ROOT / "tests"

_HEADING = re.compile(r"^(#+\s.*Invariants.*|Invariants:?)\s*$")
_END = re.compile(r"^(#+\s|Sample|Version history)")
_ITEM = re.compile(r"^(\d+)\.\s|^\|\s*(\d+)\s*\|")
_FILE_TEST = re.compile(r"(?:(?P<file>[\w/]*test_\w+\.py))?::(?P<test>test_\w+)")
_TEST = re.compile(r"(?<![\w/.:])(?P<test>test_\w+)(?![\w.])")
_FILE = re.compile(r"(?P<file>(?:tests/)?[\w/]*test_\w+\.py)(?!::)")


def invariants(text: str) -> list[tuple[str, str]]:
    """(number, text) of every invariant in a FORMAT.md."""
    out: list[tuple[str, str]] = []
    inside = False
    for line in text.splitlines():
        if _HEADING.match(line.strip()):
            inside = True
            continue
        if inside and _END.match(line) and not _HEADING.match(line.strip()):
            inside = False
        if not inside:
            continue
        m = _ITEM.match(line.strip())
        if m:
            out.append((m.group(1) or m.group(2), line.strip()))
        elif out and line.startswith((" ", "\t")):
            num, body = out[-1]
            out[-1] = (num, body + " " + line.strip())
    return out


def _test_functions() -> dict[str, set[Path]]:
    """test function name -> the files defining it."""
    found: dict[str, set[Path]] = {}
    for path in TESTS.rglob("*.py"):
        # def test_x, or test_x = SomeMachine.TestCase (Hypothesis state machines)
        for m in re.finditer(r"^\s*(?:async\s+)?def (test_\w+)|^(test_\w+)\s*=", path.read_text(),
                             re.M):
            found.setdefault(m.group(1) or m.group(2), set()).add(path)
    return found


def _test_file(name: str, near: Path) -> Path | None:
    """`tests/x/test_y.py` from the root, or `test_y.py` in the tests mirroring
    the FORMAT.md's folder (else anywhere under tests/)."""
    if name.startswith("tests/"):
        p = ROOT / name
        return p if p.exists() else None
    mirror = TESTS / near.parent.relative_to(SRC) / name
    if mirror.exists():
        return mirror
    matches = sorted(TESTS.rglob(Path(name).name))
    return matches[0] if matches else None


def problems(fmt: Path, functions: dict[str, set[Path]]) -> list[str]:
    out: list[str] = []
    rel = fmt.relative_to(ROOT)
    items = invariants(fmt.read_text())
    if not items:
        out.append(f"{rel}: no invariant list found")
    for num, body in items:
        text = body.replace("`", " ")
        named = 0
        last_file: Path | None = None
        for m in _FILE_TEST.finditer(text):
            named += 1
            if m.group("file"):
                last_file = _test_file(m.group("file"), fmt)
                if last_file is None:
                    out.append(f"{rel} invariant {num}: no test file {m.group('file')}")
                    continue
            where = functions.get(m.group("test"), set())
            if not where or (last_file is not None and last_file not in where):
                out.append(f"{rel} invariant {num}: no test {m.group('test')}"
                           + (f" in {last_file.relative_to(ROOT)}" if last_file else ""))
        rest = _FILE_TEST.sub(" ", text)
        for m in _FILE.finditer(rest):
            named += 1
            if _test_file(m.group("file"), fmt) is None:
                out.append(f"{rel} invariant {num}: no test file {m.group('file')}")
        for m in _TEST.finditer(_FILE.sub(" ", rest)):
            named += 1
            if m.group("test") not in functions:
                out.append(f"{rel} invariant {num}: no test {m.group('test')}")
        if not named:
            out.append(f"{rel} invariant {num} names no test: {body[:80]}")
    return out


def test_every_invariant_names_tests_that_exist() -> None:
    functions = _test_functions()
    found = [p for fmt in sorted(SRC.rglob("FORMAT.md")) for p in problems(fmt, functions)]
    assert not found, "\n".join(found)


def test_the_checker_sees_a_missing_test_and_an_invariant_without_one(tmp_path: Path) -> None:
    fmt = SRC / "storage" / "FORMAT.md"  # any FORMAT.md path: only its text is replaced
    text = ("## Invariants\n\n1. Kept by `x` (`test_no_such_test_anywhere`).\n"
            "2. Named nothing at all.\n3. Fine (`test_the_checker_sees_a_missing_test_and_an_"
            "invariant_without_one`).\n\n## Next\n")
    assert [n for n, _ in invariants(text)] == ["1", "2", "3"]
    copy = tmp_path / "FORMAT.md"
    copy.write_text(text)
    found = problems_of_text(text, fmt)
    assert any("invariant 1: no test test_no_such_test_anywhere" in p for p in found), found
    assert any("invariant 2 names no test" in p for p in found), found
    assert not any("invariant 3" in p for p in found), found


def problems_of_text(text: str, where: Path) -> list[str]:
    """`problems` of `text` as if it were the FORMAT.md at `where`."""
    class _Fmt(type(where)):  # type: ignore[misc]
        def read_text(self, *a: object, **k: object) -> str:
            return text
    return problems(_Fmt(where), _test_functions())
