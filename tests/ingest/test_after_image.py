"""Applied images that redo changes after restoring them are stored as the record.

GiST's split completion (PAGE_UPDATE block 1, PAGE_SPLIT block 0: the left
child) sets the child's NSN to the record's own LSN and clears F_FOLLOW_RIGHT
even when the child comes from a full-page image, which was taken before the
record had an LSN and before the primary cleared the flag. Such an image is
taken when a checkpoint falls between a split and its completion. Stored as
an image delta, the page would come back with F_FOLLOW_RIGHT set and the old
NSN (both masked by gist_mask, so the consistency oracle cannot see it);
ingest stores the record instead, on both paths, and the page store's read
then equals redo. Crafted records, since the checkpoint timing cannot be
forced on a real server.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from strata.ingest.walingest import WalIngest
from strata.key import Key, KeyKind
from strata.keyspace.relation import image_needs_record, is_image_delta
from strata.lsn import Lsn
from strata.reconstruct.check import ConsistencyChecker
from strata.reconstruct.reconstruct import reconstruct_value
from strata.reconstruct.redo import gist as g
from strata.reconstruct.redo import page_ops, redo_block
from strata.storage.values import WalRecord
from strata.wal.batch import BatchBuilder
from strata.wal.record import DecodedRecord
from strata.wal.rmgr import RM_GIST_ID, RM_HASH_ID, XLOG_GIST_PAGE_SPLIT, XLOG_GIST_PAGE_UPDATE
from tests.ingest.test_batched import assert_same, ingest_with
from tests.wal.craft import block_header, record_bytes

RLOC = (1663, 5, 16500)
HAS_IMAGE, HAS_HOLE, APPLY = 0x10, 0x01, 0x02
OLD_NSN = 0x0100_0000


def _gist_page(flags: int, *, lsn: int, tuples: int) -> bytes:
    """A GiST page with `tuples` small index tuples, `flags`, the old NSN and a
    rightlink, as the primary's buffer holds it when the image is taken."""
    page = bytearray(page_ops.BLCKSZ)
    g.gist_init_page(page, flags)
    for i in range(tuples):
        tup = struct.pack("<IHH", 7 + i, 0, 16) + bytes(8)  # t_tid, t_info (size 16)
        assert page_ops.page_add_item(page, tup, i + 1) == i + 1
    g.set_nsn(page, OLD_NSN)
    g.set_rightlink(page, 9)
    page_ops.page_set_lsn(page, lsn)
    return bytes(page)


def _image(page: bytes) -> tuple[bytes, tuple[int, int, int, None]]:
    """The page as WAL stores an applied image with its hole left out."""
    lower, upper = page_ops.get_lower(page), page_ops.get_upper(page)
    data = page[:lower] + page[upper:]
    return data, (len(data), lower, HAS_HOLE | APPLY, None)


def _record(info: int, main: bytes, pages: list[tuple[int, bytes]]) -> bytes:
    """A GiST record whose block references (id = position) are all applied images."""
    heads, images = b"", b""
    for block_id, (blkno, page) in enumerate(pages):
        data, image = _image(page)
        heads += block_header(block_id, HAS_IMAGE, 0, image=image, rloc=RLOC, blkno=blkno)
        images += data
    return record_bytes(RM_GIST_ID, info, heads + bytes([255, len(main)]) + images + main)


LEFT_CHILD = _gist_page(g.F_LEAF | g.F_FOLLOW_RIGHT, lsn=0x0100_0200, tuples=3)
PARENT = _gist_page(0, lsn=0x0100_0100, tuples=2)
UPDATE = _record(XLOG_GIST_PAGE_UPDATE, struct.pack("<HH", 0, 0),
                 [(1, PARENT), (3, LEFT_CHILD)])  # block 0 the parent, 1 the left child
SPLIT = _record(XLOG_GIST_PAGE_SPLIT, struct.pack("<I4xQ?xH?3x", 9, OLD_NSN, False, 1, True),
                [(4, LEFT_CHILD), (1, _gist_page(0, lsn=0x0100_0300, tuples=1))])
LSNS = [(Lsn(0x0200_0028), Lsn(0x0200_0028 + ((len(UPDATE) + 7) & ~7))),
        (Lsn(0x0200_4028), Lsn(0x0200_4028 + ((len(SPLIT) + 7) & ~7)))]


def _decoded() -> list[DecodedRecord]:
    b = BatchBuilder()
    for raw, (lsn, end) in zip((UPDATE, SPLIT), LSNS, strict=True):
        b.add(raw, lsn, end)
    batch = b.build()
    return [batch.record(0), batch.record(1)]


def test_the_rule_names_gists_split_completion_only() -> None:
    assert image_needs_record(RM_GIST_ID, XLOG_GIST_PAGE_UPDATE, 1)
    assert image_needs_record(RM_GIST_ID, XLOG_GIST_PAGE_SPLIT | 0x02, 0)  # XLR flag bits
    assert not image_needs_record(RM_GIST_ID, XLOG_GIST_PAGE_UPDATE, 0)
    assert not image_needs_record(RM_GIST_ID, XLOG_GIST_PAGE_SPLIT, 1)
    # hash's after-image steps set flags the primary set before taking the image
    assert not image_needs_record(RM_HASH_ID, 0x60, 0)


def test_redo_finishes_the_left_child_after_restoring_it() -> None:
    """What the stored form must reproduce (gistRedoClearFollowRight on BLK_RESTORED)."""
    for rec, block_id in zip(_decoded(), (1, 0), strict=True):
        page = redo_block(rec, block_id, None)
        assert not g.get_flags(page) & g.F_FOLLOW_RIGHT
        assert g.get_nsn(page) == rec.end_lsn
        assert page_ops.page_get_lsn(page) == rec.end_lsn


def _one_by_one(ing: WalIngest) -> None:
    for rec in _decoded():
        ing.ingest(rec)


def _batched(ing: WalIngest) -> None:
    b = BatchBuilder()
    for raw, (lsn, end) in zip((UPDATE, SPLIT), LSNS, strict=True):
        b.add(raw, lsn, end)
    ing.ingest_batch(b.build())


@pytest.mark.parametrize("path", ["record", "batch"])
def test_ingest_stores_the_record_for_the_left_child_and_images_for_the_rest(
        tmp_path: Path, path: str) -> None:
    recs = _decoded()
    got = ingest_with(tmp_path / path, Lsn(0), _one_by_one if path == "record" else _batched)
    blocks = {(k.blk, lsn): v for k, lsn, v in got.puts if k.kind == KeyKind.REL_BLOCK}
    (u_end, s_end) = (LSNS[0][1], LSNS[1][1])
    assert set(blocks) == {(1, u_end), (3, u_end), (4, s_end), (1, s_end)}
    for (blk, lsn), value in blocks.items():
        assert isinstance(value, WalRecord) and value.will_init  # every one starts a chain
        left_child = (blk, lsn) in ((3, u_end), (4, s_end))
        assert is_image_delta(value.data) is not left_child
        rec = recs[0] if lsn == u_end else recs[1]
        block_id = next(b.block_id for b in rec.blocks if b.blkno == blk)
        key = Key.rel_block(*RLOC, 0, blk)
        # read as a read hands it to redo: at the LSN it is stored at (the record's end)
        assert reconstruct_value(key, None, [value._replace(lsn=lsn)]) == redo_block(
            rec, block_id, None)


def test_both_ingest_paths_store_the_same(tmp_path: Path) -> None:
    assert_same(ingest_with(tmp_path / "a", Lsn(0), _one_by_one),
                ingest_with(tmp_path / "b", Lsn(0), _batched))


def test_the_checkers_stored_mode_restores_as_ingest_stores() -> None:
    """check.py's stored mode goes through the forms ingest stores and ends where
    plain redo ends."""
    stored, plain = ConsistencyChecker(stored=True), ConsistencyChecker()
    stored.run(_decoded())
    plain.run(_decoded())
    assert stored.report.first_error is None
    assert stored.report.total("images") == 4
    assert len(stored.state) == 3 and stored.state == plain.state
