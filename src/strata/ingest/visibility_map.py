"""What ingest adds so that a stored visibility-map (VM) page is never more
visible than the primary's at the same LSN.

Why: a historical server trusts the VM (an index-only scan skips the heap for
an all-visible page), so a VM bit that the past still shows set after the
primary cleared it would hide rows. Block references already carry every VM
change that 18.6 logs (wal.rmgr.visibility); two things are left:

- a heap record that clears bits without naming the VM page (18.x minors
  before 18.6, or 18.6 when the bits were already clear): a tombstone for that
  VM page at the record's LSN, so the page reads as zeros (nothing known
  all-visible) until the next record that names it. Conservative: a plan may
  visit the heap where the primary would not, never the other way round.
  `implicit_clear_rows` is the vector test of a batch, `forgotten_vm_pages`
  the keys of one record;
- a truncation (Storage TRUNCATE with SMGR_TRUNCATE_VM): the VM's new length
  and, when the cut falls inside a page, that page with the bits of the cut
  heap blocks cleared (visibilitymap_prepare_truncate; with data checksums
  the primary also logs the page as a full-page image just before):
  `truncated_vm`.

Fed by `WalIngest` (both ingest paths). Pure; owns nothing.
"""

from __future__ import annotations

import numpy as np

from strata.ingest.batched import member
from strata.key import Key
from strata.pg.constants import ForkNumber
from strata.wal.batch import RecordBatch
from strata.wal.record import DecodedRecord
from strata.wal.rmgr.visibility import (
    CLEAR_FLAGS,
    HEAPBLOCKS_PER_BYTE,
    HEAPBLOCKS_PER_PAGE,
    VM_CONTENTS,
    cleared_vm_pages,
)

# CLEAR_FLAGS as lookup tables over rmid * 8 + (info & 0x70) >> 4
_FLAG_OFF = np.zeros(256 * 8, dtype=np.int64)
_FLAG_MASK = np.zeros(256 * 8, dtype=np.uint8)
for (_rmid, _op), (_off, _mask) in CLEAR_FLAGS.items():
    _FLAG_OFF[_rmid * 8 + (_op >> 4)] = _off
    _FLAG_MASK[_rmid * 8 + (_op >> 4)] = _mask


def implicit_clear_rows(batch: RecordBatch, lo: int, hi: int) -> list[int]:
    """Rows of records [lo, hi) of `batch` whose flags clear VM bits while none
    of their block references is a VM page. In order."""
    r = batch.recs[lo:hi]
    idx = r["rmid"].astype(np.int64) * 8 + ((r["info"] & 0x70) >> 4)
    mask = _FLAG_MASK[idx]
    cand = np.flatnonzero((mask != 0) & (r["main_len"] > _FLAG_OFF[idx]))
    if not len(cand):
        return []
    buf = np.frombuffer(batch.buf, dtype=np.uint8)
    flags = buf[r["main_off"][cand] + _FLAG_OFF[idx[cand]]] & mask[cand]
    cand = cand[flags != 0] + lo
    if not len(cand):
        return []
    recs = batch.recs
    a = int(recs["blk_first"][lo])
    b = int(recs["blk_first"][hi - 1]) + int(recs["nblocks"][hi - 1])
    blks = batch.blks[a:b]
    named = blks["rec"][blks["fork"] == ForkNumber.VM]
    return cand[~member(cand, named)].tolist()  # type: ignore[no-any-return]  # (named: ascending)


def forgotten_vm_pages(record: DecodedRecord) -> list[Key]:
    """The VM page keys `record` clears bits on (its heap relation's). Only for a
    record that names no VM page (`implicit_clear_rows`, `implicit_clears`)."""
    pages = cleared_vm_pages(record)
    if not pages:
        return []
    loc = record.blocks[0].rlocator
    return [Key.rel_block(loc.spc, loc.db, loc.rel, ForkNumber.VM, blk) for blk in pages]


def truncated_vm(heap_nblocks: int, vm_nblocks: int) -> tuple[int, int | None]:
    """(the VM's length after the heap is cut to `heap_nblocks`, the VM block
    whose bits past the cut must be cleared, or None): visibilitymap_prepare_truncate.
    The length never grows: a VM already that short keeps its length."""
    block = heap_nblocks // HEAPBLOCKS_PER_PAGE
    partial = heap_nblocks % HEAPBLOCKS_PER_PAGE != 0
    new_len = block + 1 if partial else block
    return min(new_len, vm_nblocks), (block if partial and block < vm_nblocks else None)


def cut_vm_page(page: bytes, heap_nblocks: int) -> bytes:
    """`page` (the VM block holding heap block `heap_nblocks`) with the bits of
    heap blocks `heap_nblocks` and after cleared; an all-zero page stays as is."""
    if not any(page):
        return page
    at = heap_nblocks % HEAPBLOCKS_PER_PAGE
    byte, bit = VM_CONTENTS + at // HEAPBLOCKS_PER_BYTE, (at % HEAPBLOCKS_PER_BYTE) * 2
    out = bytearray(page)
    out[byte] &= (1 << bit) - 1
    out[byte + 1:] = bytes(len(out) - byte - 1)
    return bytes(out)
