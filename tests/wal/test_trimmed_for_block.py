"""`wal.decoder.trimmed_for_block`: the record ingest stores for one of its
block references leaves out the other blocks' full-page images, and, for a heap
UPDATE's old page, the new page's data, and nothing else.

Checked by decoding the result: every header, the kept image, every block's
data but the dropped one and the main data come back as they were, the other
images are gone (and their HAS_IMAGE flags, and their image headers), and the
length dropped by exactly those bytes. That redo of the old page is unchanged is
the redo oracle's job (its stored mode goes through
`keyspace.relation.encode_record_delta`: tests/reconstruct/test_redo_oracle.py),
and that the batch path stores the same bytes is tests/ingest/test_batched.py.
"""

from __future__ import annotations

import struct

import pytest

from strata.keyspace.relation import stores_without_new_page_data
from strata.wal.decoder import decode_record, trimmed_for_block
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


def _assert_trimmed(orig: DecodedRecord, raw: bytes, block_id: int,
                    drop_data_of: int | None) -> None:
    out = trimmed_for_block(raw, block_id, drop_data_of)
    dropped = orig.block(drop_data_of) if drop_data_of is not None else None
    data_cut = len(dropped.data) if dropped is not None else 0
    images = [b for b in orig.blocks if b.image is not None and b.block_id != block_id]
    if not images and not data_cut:
        assert out is raw
        return
    got = decode_record(out, orig.lsn, orig.end_lsn)  # every PostgreSQL check
    # each cut image takes its bytes and its 5- or 7-byte header
    headers = sum(7 if b.image is not None and b.image.compressed
                  and b.image.bimg_info & BKPIMAGE_HAS_HOLE
                  else 5 for b in images)
    assert got.xl_tot_len == len(out) == len(raw) - data_cut - headers - sum(
        len(b.image.data) for b in images if b.image is not None)
    assert (got.xl_rmid, got.xl_info, got.xl_xid, got.xl_prev, got.main_data, got.origin,
            got.toplevel_xid) == (orig.xl_rmid, orig.xl_info, orig.xl_xid, orig.xl_prev,
                                  orig.main_data, orig.origin, orig.toplevel_xid)
    for g, o in zip(got.blocks, orig.blocks, strict=True):
        assert (g.block_id, g.rlocator, g.fork, g.blkno) == \
            (o.block_id, o.rlocator, o.fork, o.blkno)
        flags = o.fork_flags
        if o.block_id == block_id:
            assert g.image == o.image
        else:
            assert g.image is None
            flags &= ~BKPBLOCK_HAS_IMAGE
        if o.block_id == drop_data_of:
            assert g.data == b""
            flags &= ~BKPBLOCK_HAS_DATA
        else:
            assert g.data == o.data
        assert g.fork_flags == flags


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
@pytest.mark.parametrize("drop_data_of", [None, 0, 1, 2, 5])
@pytest.mark.parametrize("block_id", [0, 1, 2, 5])
def test_a_crafted_record_loses_other_images_and_one_blocks_data_and_nothing_else(
        block_id: int, drop_data_of: int | None) -> None:
    raw = _crafted()
    orig = decode_record(raw, 0x1000000, 0x1000000 + len(raw))
    assert orig.origin == 5 and orig.toplevel_xid == 4242 and len(orig.blocks) == 3
    assert [b.image is not None for b in orig.blocks] == [True, True, False]
    _assert_trimmed(orig, raw, block_id, drop_data_of)


@pytest.mark.unit
def test_a_record_with_no_other_image_and_nothing_to_drop_is_returned_as_is() -> None:
    data = b"only"
    body = (block_header(0, BKPBLOCK_HAS_DATA, len(data), blkno=3)
            + bytes([255, 4]) + data + b"main")  # XLR_BLOCK_ID_DATA_SHORT
    raw = record_bytes(10, 0x00, body)
    assert trimmed_for_block(raw, 0) is raw
    assert trimmed_for_block(raw, 0, 1) is raw


@pytest.mark.pg
def test_records_of_pgbench_lose_other_images_and_the_new_tuple_for_the_old_page(
        pgbench_wal: WalRun) -> None:
    two_pages = other_images = 0
    for rr in iter_raw_records(pgbench_wal.wal_dir, pgbench_wal.start):
        rec = decode_record(rr.raw, rr.lsn, rr.end_lsn)
        with_images = sum(b.image is not None for b in rec.blocks)
        old_page = stores_without_new_page_data(rec.xl_rmid, rec.xl_info, 1) \
            and rec.block(1) is not None
        if not old_page and not (with_images and len(rec.blocks) > 1):
            continue
        two_pages += old_page
        for b in rec.blocks:
            other_images += with_images - (b.image is not None) > 0
            drop = 0 if old_page and b.block_id == 1 else None
            _assert_trimmed(rec, rr.raw, b.block_id, drop)
    assert two_pages >= 100  # non-HOT updates: the accounts table is filled to 100 %
    assert other_images >= 100  # a page's first change after a checkpoint: its image
