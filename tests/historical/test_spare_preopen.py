"""A spare file system process opens the store before its arguments come (once it
has waited a moment), and uses that open, refreshed, only for the same store."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("pyfuse3")

from strata.historical import lazyfs

pytestmark = pytest.mark.unit


class Reader:
    def __init__(self, where: Path) -> None:
        self.where = where
        self.refreshed = 0
        self.closed = False

    def refresh(self) -> bool:
        self.refreshed += 1
        return True

    def close(self) -> None:
        self.closed = True


def test_the_early_open_is_used_refreshed_for_the_same_store(tmp_path: Path) -> None:
    early = Reader(tmp_path)
    assert lazyfs._open_store(tmp_path, (tmp_path, early)) is early  # type: ignore[arg-type]
    assert early.refreshed == 1 and not early.closed


def test_another_store_is_opened_anew_and_the_early_open_closed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[Path] = []
    monkeypatch.setattr("strata.historical.reader.open_reader",
                        lambda d: opened.append(Path(d)) or Reader(Path(d)))
    early = Reader(tmp_path / "a")
    got: Any = lazyfs._open_store(tmp_path / "b", (tmp_path / "a", early))  # type: ignore[arg-type]
    assert early.closed and opened == [tmp_path / "b"] and got.where == tmp_path / "b"


def _stdin(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    r, w = os.pipe()
    os.write(w, data)
    if data:
        os.close(w)  # arguments already there
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.FileIO(r)))


def test_a_spare_opens_early_only_after_waiting(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lazyfs, "PREOPEN_AFTER", 0.01)
    monkeypatch.setattr("strata.historical.reader.open_reader", Reader)
    _stdin(monkeypatch, b"")  # nothing yet: the spare opens the store while it waits
    pre = lazyfs._preopen(["--wait-args", "--open", str(tmp_path)])
    assert pre is not None and pre[0] == tmp_path and isinstance(pre[1], Reader)
    _stdin(monkeypatch, b'["--store", "x"]\n')  # the arguments came first: no early open
    assert lazyfs._preopen(["--wait-args", "--open", str(tmp_path)]) is None
    assert lazyfs._preopen(["--wait-args"]) is None  # no store named


_PROBE = """
import io, os, sys
from strata.historical import lazyfs
lazyfs.PREOPEN_AFTER = 0.01
r, w = os.pipe()
if sys.argv[1] == "args-first":
    os.write(w, b'["--store", "x"]\\n')
sys.stdin = io.TextIOWrapper(io.FileIO(r))
lazyfs._preopen(["--wait-args"])
print("strata.reconstruct.redo.heap" in sys.modules)
"""


@pytest.mark.parametrize(("when", "imported"), [("waited", "True"), ("args-first", "False")])
def test_a_waiting_spare_imports_the_redo_modules(when: str, imported: str) -> None:
    """A first page rebuilt would import every rmgr's redo (~0.3 s of a first query):
    a spare that waited does it before its turn, one whose arguments came first not."""
    import subprocess

    out = subprocess.run([sys.executable, "-c", _PROBE, when], capture_output=True,
                         text=True, check=True, env={**os.environ})
    assert out.stdout.strip() == imported, out.stderr
