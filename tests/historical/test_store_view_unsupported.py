"""StoreView when a page cannot be rebuilt: a record no redo knows is a true
error (never empty pages of an index the planner trusts); only the rmgrs of
index AMs without redo (none left in 18.6) are served as empty pages."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from strata.errors import UnsupportedRecordError
from strata.historical import store_view
from strata.historical.store_view import StoreView
from strata.key import Key, KeyRange
from strata.keyspace.relation import encode_rel_size
from strata.lsn import Lsn
from strata.pg.constants import BLCKSZ


class BrokenStore:
    """Three blocks; rebuilding the second raises UnsupportedRecordError(`rmgr`)."""

    def __init__(self, rmgr: str) -> None:
        self.rmgr = rmgr

    def get_page(self, key: Key, lsn: int) -> bytes | None:
        return encode_rel_size(3)

    def scan(self, rng: KeyRange, lsn: int) -> Iterator[tuple[Key, bytes]]:
        yield Key.rel_block(1663, 5, 16400, 0, 0), b"\x01" * BLCKSZ
        raise UnsupportedRecordError(self.rmgr, "UNKNOWN (f0)", 0x1000)


def test_a_record_no_redo_knows_fails_the_read() -> None:
    src = StoreView(BrokenStore("Gist"), Lsn(0x2000))  # type: ignore[arg-type]
    with pytest.raises(UnsupportedRecordError, match="no redo for Gist/UNKNOWN"):
        list(src.pages(1663, 5, 16400, 0))
    assert src.unsupported == []


def test_an_index_am_without_redo_is_served_as_empty_pages(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_view, "NO_REDO_YET_RMGRS", frozenset({"Gist"}))
    src = StoreView(BrokenStore("Gist"), Lsn(0x2000))  # type: ignore[arg-type]
    pages = list(src.pages(1663, 5, 16400, 0))
    assert [blk for blk, _ in pages] == [0, 1, 2]
    assert pages[0][1] == b"\x01" * BLCKSZ and pages[1][1] == pages[2][1] == bytes(BLCKSZ)
    assert [u[:4] for u in src.unsupported] == [(1663, 5, 16400, 0)]
