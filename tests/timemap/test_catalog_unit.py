"""Unit tests of the catalog row deformer's rare shapes (NULLs among fixed
columns, short rows, truncation) and of the tracker's promise never to fail
ingest (the pg-tier tests run the common shapes on real rows)."""

from __future__ import annotations

import struct
from collections.abc import Iterator

import pytest

from strata.ingest.catalog import CatalogTracker
from strata.key import Key, KeyRange
from strata.lsn import Lsn
from strata.pg import catalog as pgc
from strata.timemap.ddl import DdlLog
from strata.wal.record import BlockRef, DecodedRecord, RelFileLocator
from strata.wal.rmgr import RM_HEAP_ID
from strata.wal.rmgr import xact as xact_rmgr
from strata.wal.rmgr.heap import XLOG_HEAP_DELETE

LAYOUT: pgc.Layout = (("a", pgc.OID), ("b", pgc.NAME), ("c", pgc.INT2), ("d", pgc.VARLENA),
                      ("e", pgc.BOOL), ("f", pgc.INT4))


def _tuple(data: bytes, natts: int, nulls: set[int] = frozenset()) -> bytes:  # type: ignore[assignment]
    bitmap = b""
    infomask = 0x0002
    if nulls:
        infomask |= pgc.HEAP_HASNULL
        bits = sum(1 << i for i in range(natts) if i not in nulls)
        bitmap = bits.to_bytes((natts + 7) // 8, "little")
    hoff = (pgc.SIZEOF_HEAP_TUPLE_HEADER + len(bitmap) + 7) & ~7
    head = struct.pack("<IIIHHHHHB", 700, 0, 0, 0, 0, 1, natts, infomask, hoff) + bitmap
    return head + b"\x00" * (hoff - len(head)) + data


def _name(s: str) -> bytes:
    return s.encode().ljust(64, b"\x00")


def test_fixed_columns_then_a_short_varlena_and_more() -> None:
    # a@0 b@4..68 c@68 d (1-byte header, unaligned) @70 e@73 f (aligned 4) @76
    data = struct.pack("<I", 42) + _name("demo") + struct.pack("<h", -3) + b"\x09abc" + b"\x01" \
        + b"\x00" + struct.pack("<i", 9)
    row = pgc.deform(_tuple(data, 6), LAYOUT)
    assert row == {"a": 42, "b": "demo", "c": -3, "d": b"\x09abc", "e": True, "f": 9}


def test_nulls_among_fixed_columns_take_the_slow_path() -> None:
    # a@0, b NULL (no bytes), c@4, d@6 (3 bytes), e@9, f aligned to 12
    data = struct.pack("<I", 42) + struct.pack("<h", 5) + b"\x07ab" + b"\x00" + b"\x00\x00" \
        + struct.pack("<i", 7)
    row = pgc.deform(_tuple(data, 6, {1}), LAYOUT)
    assert row == {"a": 42, "b": None, "c": 5, "d": b"\x07ab", "e": False, "f": 7}


def test_columns_past_natts_are_null_and_a_4_byte_varlena_is_aligned() -> None:
    body = b"x" * 200
    varlena = struct.pack("<I", (len(body) + 4) << 2) + body
    data = struct.pack("<I", 1) + _name("n") + struct.pack("<h", 2) + b"\x00\x00" + varlena
    row = pgc.deform(_tuple(data, 4), LAYOUT)
    assert row["d"] == varlena and row["e"] is None and row["f"] is None


def test_truncated_tuples_are_errors() -> None:
    data = struct.pack("<I", 42) + _name("demo") + struct.pack("<h", -3) + b"\x7f"
    with pytest.raises(ValueError, match="overruns"):
        pgc.deform(_tuple(data, 6), LAYOUT)
    with pytest.raises(ValueError, match="shorter than its header"):
        pgc.deform(b"\x00" * 10, LAYOUT)


class EmptyStore:
    """A store with no pages: every catalog page read misses."""

    def get_page(self, key: Key, lsn: int) -> bytes | None:
        return None

    def keys(self, key_range: KeyRange, lsn: int) -> Iterator[Key]:
        return iter(())

    def scan(self, key_range: KeyRange, lsn: int) -> Iterator[tuple[Key, bytes]]:
        return iter(())


def test_an_undecodable_catalog_record_marks_its_transaction_and_ingest_goes_on() -> None:
    log = DdlLog(None)
    t = CatalogTracker(EmptyStore(), log, start_lsn=Lsn(0x100),  # type: ignore[arg-type]
                       start_next_xid=700)
    loc = RelFileLocator(1663, 5, pgc.RELATION_RELATION_ID)
    assert loc.rel in t.relfilenumbers
    delete = DecodedRecord(Lsn(0x1000), Lsn(0x1040), 54, 750, Lsn(0xF00), XLOG_HEAP_DELETE,
                           RM_HEAP_ID, 0, (BlockRef(0, loc, 0, 3, 0, None, b""),),
                           struct.pack("<IHBB", 750, 7, 0, 0))
    t.observe(delete)  # the page is nowhere: no exception
    commit = xact_rmgr.XactCommit(750, False, 1_000_000, xact_rmgr.XACT_XINFO_HAS_INVALS, 5,
                                  1663, (), (), (), (), 0, "", 0, 0)
    t.transaction_end(DecodedRecord(Lsn(0x2000), Lsn(0x2040), 40, 750, Lsn(0x1040), 0x80, 1, 0,
                                    (), b""), commit)
    (entry,) = log.entries()
    assert entry.xid == 750 and entry.changes == ()
    assert "catalog record at 0/1000 not decoded" in entry.note
    assert "block 3" in entry.note


def test_a_transaction_from_before_the_restart_is_marked() -> None:
    log = DdlLog(None)
    t = CatalogTracker(EmptyStore(), log, start_lsn=Lsn(0x100),  # type: ignore[arg-type]
                       start_next_xid=800)
    commit = xact_rmgr.XactCommit(790, False, 1_000_000, xact_rmgr.XACT_XINFO_HAS_INVALS, 5,
                                  1663, (), (), (), (), 0, "", 0, 0)
    t.transaction_end(DecodedRecord(Lsn(0x2000), Lsn(0x2040), 40, 790, Lsn(0x1040), 0x80, 1, 0,
                                    (), b""), commit)
    (entry,) = log.entries()
    assert "began before ingest (re)started at 0/100" in entry.note
    # a later transaction with invalidations but no catalog rows (ANALYZE) writes nothing
    later = xact_rmgr.XactCommit(801, False, 2_000_000, xact_rmgr.XACT_XINFO_HAS_INVALS, 5,
                                 1663, (), (), (), (), 0, "", 0, 0)
    t.transaction_end(DecodedRecord(Lsn(0x3000), Lsn(0x3040), 40, 801, Lsn(0x2040), 0x80, 1, 0,
                                    (), b""), later)
    assert len(log) == 1
