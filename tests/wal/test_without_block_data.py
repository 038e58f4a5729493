"""`wal.decoder.without_block_data`: what ingest stores for a heap UPDATE's old
page leaves out the new page's data, and nothing else.

Checked by decoding the result: every header, image and the main data come back
as they were, the one block's data is gone (and its HAS_DATA flag), and the
length dropped by exactly that data. That redo of the old page is unchanged is
the redo oracle's job (its stored mode goes through
`keyspace.relation.encode_record_delta`: tests/reconstruct/test_redo_oracle.py),
and that the batch path stores the same bytes is tests/ingest/test_batched.py.
"""

from __future__ import annotations

import struct

import pytest

from strata.keyspace.relation import stores_without_new_page_data
from strata.wal.decoder import decode_record, without_block_data
from strata.wal.record import (
    BKPBLOCK_HAS_DATA,
    BKPBLOCK_HAS_IMAGE,
    BKPBLOCK_SAME_REL,
    BKPIMAGE_APPLY,
    BKPIMAGE_HAS_HOLE,
    DecodedRecord,
)
from strata.wal.segments import iter_raw_records
from tests.wal.conftest import WalRun
from tests.wal.craft import block_header, record_bytes

_PGLZ = 0x04  # BKPIMAGE_COMPRESS_PGLZ


def _assert_without(orig: DecodedRecord, raw: bytes, block_id: int) -> None:
    out = without_block_data(raw, block_id)
    target = orig.block(block_id)
    if target is None or not target.data:
        assert out is raw
        return
    got = decode_record(out, orig.lsn, orig.end_lsn)  # every PostgreSQL check
    assert got.xl_tot_len == len(out) == len(raw) - len(target.data)
    assert (got.xl_rmid, got.xl_info, got.xl_xid, got.xl_prev, got.main_data, got.origin,
            got.toplevel_xid) == (orig.xl_rmid, orig.xl_info, orig.xl_xid, orig.xl_prev,
                                  orig.main_data, orig.origin, orig.toplevel_xid)
    for g, o in zip(got.blocks, orig.blocks, strict=True):
        assert (g.block_id, g.rlocator, g.fork, g.blkno, g.image) == \
            (o.block_id, o.rlocator, o.fork, o.blkno, o.image)
        if o.block_id == block_id:
            assert g.data == b"" and g.fork_flags == o.fork_flags & ~BKPBLOCK_HAS_DATA
        else:
            assert g.data == o.data and g.fork_flags == o.fork_flags


def _crafted() -> bytes:
    """Three block references: an uncompressed image with a hole and data; a
    SAME_REL pglz image with a hole (the 7-byte image header) and data; a SAME_REL
    block with data only; then an origin, a top-level xid and long main data."""
    img0 = bytes(range(200)) * 20  # 4,000 bytes: a hole of 4,192
    img1 = b"\x11" * 77
    data = [b"zero" * 3, b"one" * 5, b"two" * 7]
    main = bytes(range(256)) + b"main"
    hdrs = (
        block_header(0, BKPBLOCK_HAS_IMAGE | BKPBLOCK_HAS_DATA, len(data[0]),
                     image=(len(img0), 100, BKPIMAGE_HAS_HOLE | BKPIMAGE_APPLY, None), blkno=7)
        + block_header(1, BKPBLOCK_HAS_IMAGE | BKPBLOCK_HAS_DATA | BKPBLOCK_SAME_REL,
                       len(data[1]), image=(len(img1), 64, BKPIMAGE_HAS_HOLE | _PGLZ
                                            | BKPIMAGE_APPLY, 300), rloc=None, blkno=9)
        + block_header(2, BKPBLOCK_HAS_DATA | BKPBLOCK_SAME_REL, len(data[2]), rloc=None,
                       blkno=11)
        + bytes([253]) + struct.pack("<H", 5)       # XLR_BLOCK_ID_ORIGIN
        + bytes([252]) + struct.pack("<I", 4242)    # XLR_BLOCK_ID_TOPLEVEL_XID
        + bytes([254]) + struct.pack("<I", len(main)))  # XLR_BLOCK_ID_DATA_LONG
    body = hdrs + img0 + data[0] + img1 + data[1] + data[2] + main
    return record_bytes(10, 0x20, body, xid=4243)


@pytest.mark.unit
@pytest.mark.parametrize("block_id", [0, 1, 2, 5])
def test_a_crafted_record_loses_one_blocks_data_and_nothing_else(block_id: int) -> None:
    raw = _crafted()
    orig = decode_record(raw, 0x1000000, 0x1000000 + len(raw))
    assert orig.origin == 5 and orig.toplevel_xid == 4242 and len(orig.blocks) == 3
    _assert_without(orig, raw, block_id)


@pytest.mark.pg
def test_heap_updates_of_pgbench_lose_the_new_tuple_for_the_old_page(pgbench_wal: WalRun
                                                                      ) -> None:
    two_pages = 0
    for rr in iter_raw_records(pgbench_wal.wal_dir, pgbench_wal.start):
        rec = decode_record(rr.raw, rr.lsn, rr.end_lsn)
        if not stores_without_new_page_data(rec.xl_rmid, rec.xl_info, 1) \
                or rec.block(1) is None:
            continue
        two_pages += 1
        for b in rec.blocks:
            _assert_without(rec, rr.raw, b.block_id)
    assert two_pages >= 100  # non-HOT updates: the accounts table is filled to 100 %
