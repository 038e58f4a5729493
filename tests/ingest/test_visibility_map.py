"""Visibility-map pages in the store are never more visible than the primary's.

* WAL of 18.x minors before 18.6 clears VM bits without naming the VM page.
  Simulated here on real 18.6 WAL (pgbench): the VM block references of the
  records that clear bits are turned into FSM references (a fork the store
  does not keep) in the raw record bytes. Ingest must store a tombstone for
  each such VM page, the record path and the batch path alike, and every VM
  page read at any LSN must have no bit set that the unpatched history's page
  lacks at that LSN.
* Truncation: the VM's new length and the cut page (visibilitymap_prepare_truncate).

The VM against native PITR, through a historical server:
tests/e2e/test_visibility_map_history.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from strata.ingest import visibility_map
from strata.ingest.transam import TransamIngest
from strata.ingest.walingest import WalIngest
from strata.key import Key, KeyKind, KeyRange
from strata.lsn import Lsn
from strata.pagestore import PageStore
from strata.pg.constants import BLCKSZ, ForkNumber
from strata.reconstruct.reconstruct import reconstruct_value
from strata.storage.values import Tombstone
from strata.timemap.timemap import TimeMap
from strata.wal.batch import BatchBuilder
from strata.wal.record import (
    BKPBLOCK_FORK_MASK,
    BKPBLOCK_HAS_IMAGE,
    BKPBLOCK_SAME_REL,
    BKPIMAGE_COMPRESSED,
    BKPIMAGE_HAS_HOLE,
    SIZE_OF_XLOG_RECORD,
    XLR_MAX_BLOCK_ID,
    DecodedRecord,
)
from strata.wal.rmgr import RM_HEAP2_ID, RM_HEAP_ID
from strata.wal.rmgr.visibility import (
    CLEAR_FLAGS,
    HEAPBLOCKS_PER_PAGE,
    VM_CONTENTS,
    names_vm_page,
    visibility_clears,
    vm_location,
)
from strata.wal.segments import iter_records
from tests.ingest.test_batched import _state, assert_same, ingest_with
from tests.wal.conftest import WalRun, pgbench_wal, wal_scratch  # noqa: F401  (fixtures)

# -- truncation (pure) ----------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize(("heap", "vm", "expect"), [
    (0, 3, (0, None)),                                   # heap emptied: no VM left
    (HEAPBLOCKS_PER_PAGE, 3, (1, None)),                 # cut on a page boundary
    (HEAPBLOCKS_PER_PAGE + 5, 3, (2, 1)),                # inside page 1: it is cut
    (5, 1, (1, 0)),
    (2 * HEAPBLOCKS_PER_PAGE + 5, 2, (2, None)),         # the VM is shorter already
])
def test_truncation_gives_the_vm_length_and_the_page_to_cut(
        heap: int, vm: int, expect: tuple[int, int | None]) -> None:
    assert visibility_map.truncated_vm(heap, vm) == expect


@pytest.mark.unit
def test_a_cut_page_keeps_the_bits_of_blocks_before_the_cut_only() -> None:
    page = bytes(VM_CONTENTS) + b"\xff" * (BLCKSZ - VM_CONTENTS)
    for cut in (0, 1, 3, 4, 5, 1000, HEAPBLOCKS_PER_PAGE - 1):
        out = visibility_map.cut_vm_page(page, cut)
        assert out[:VM_CONTENTS] == page[:VM_CONTENTS]
        for blk in (0, 1, 2, 3, 4, 5, 6, 999, 1000, 1001, HEAPBLOCKS_PER_PAGE - 1):
            _, byte, off = vm_location(blk)
            bits = (out[VM_CONTENTS + byte] >> off) & 3
            assert bits == (3 if blk < cut else 0), (cut, blk)
    assert visibility_map.cut_vm_page(bytes(BLCKSZ), 7) == bytes(BLCKSZ)


# -- WAL of an older minor (simulated) ----------------------------------------------------


def _block_headers(raw: bytes) -> Iterator[tuple[int, int]]:
    """(offset of fork_flags, fork_flags) of each block header of a raw record."""
    at = SIZE_OF_XLOG_RECORD
    while at < len(raw) and raw[at] <= XLR_MAX_BLOCK_ID:
        flags = raw[at + 1]
        yield at + 1, flags
        at += 4  # id, fork_flags, data_length
        if flags & BKPBLOCK_HAS_IMAGE:
            bimg_info = raw[at + 4]
            at += 5
            if bimg_info & BKPIMAGE_HAS_HOLE and bimg_info & BKPIMAGE_COMPRESSED:
                at += 2
        if not flags & BKPBLOCK_SAME_REL:
            at += 12
        at += 4  # block number


def as_older_minor(raw: bytes) -> bytes:
    """`raw` as an 18.x minor before 18.6 writes it, near enough: a record that
    clears VM bits names no VM page (its VM references become FSM ones)."""
    rmid, info = raw[17], raw[16]
    if (rmid, info & 0x70) not in CLEAR_FLAGS or rmid not in (RM_HEAP_ID, RM_HEAP2_ID):
        return raw
    out = bytearray(raw)
    for at, flags in _block_headers(raw):
        if flags & BKPBLOCK_FORK_MASK == ForkNumber.VM:
            out[at] = (flags & ~BKPBLOCK_FORK_MASK) | ForkNumber.FSM
    return bytes(out)


def _patched(run: WalRun) -> list[tuple[bytes, Lsn, Lsn]]:
    return [(as_older_minor(r.raw), r.lsn, r.end_lsn) for r in iter_records(run.wal_dir, run.start)]


def _one_by_one(recs: list[tuple[bytes, Lsn, Lsn]]) -> Callable[[WalIngest], None]:
    def feed(ing: WalIngest) -> None:
        for raw, lsn, end in recs:
            b = BatchBuilder()
            b.add(raw, lsn, end)
            ing.ingest(b.build().record(0))
    return feed


def _in_batches(recs: list[tuple[bytes, Lsn, Lsn]], size: int) -> Callable[[WalIngest], None]:
    def feed(ing: WalIngest) -> None:
        for i in range(0, len(recs), size):
            b = BatchBuilder()
            for raw, lsn, end in recs[i:i + size]:
                b.add(raw, lsn, end)
            ing.ingest_batch(b.build())
    return feed


def _decoded(recs: list[tuple[bytes, Lsn, Lsn]]) -> list[DecodedRecord]:
    out = []
    for raw, lsn, end in recs:
        b = BatchBuilder()
        b.add(raw, lsn, end)
        out.append(b.build().record(0))
    return out


@pytest.mark.pg
def test_clears_that_name_no_vm_page_store_tombstones_on_both_paths(
        pgbench_wal: WalRun, tmp_path: Path) -> None:  # noqa: F811
    recs = _patched(pgbench_wal)
    implicit = [r for r in _decoded(recs) if visibility_clears(r) and not names_vm_page(r)]
    assert len(implicit) > 100  # pgbench's updates of all-visible pages
    a = ingest_with(tmp_path / "a", pgbench_wal.start, _one_by_one(recs))
    b = ingest_with(tmp_path / "b", pgbench_wal.start, _in_batches(recs, 500))
    assert_same(a, b)
    tombs = {(k, lsn) for k, lsn, v in a.puts if isinstance(v, Tombstone)
             and k.kind == KeyKind.REL_BLOCK and k.fork == ForkNumber.VM}
    want = set()
    for r in implicit:
        loc = r.blocks[0].rlocator
        for heap_blk, _ in visibility_clears(r):
            want.add((Key.rel_block(loc.spc, loc.db, loc.rel, ForkNumber.VM,
                                    heap_blk // HEAPBLOCKS_PER_PAGE), r.end_lsn))
    assert tombs == want


def _store(tmp: Path, start: Lsn, feed: Callable[[WalIngest], None]) -> PageStore:
    store = PageStore.open(tmp / "layers", reconstruct_value, background=False)
    timemap = TimeMap.open(tmp / "timemap")
    try:
        ing = WalIngest(store, timemap, TransamIngest(_state()), start_lsn=start)
        feed(ing)
        ing.advance()
    finally:
        timemap.close()
    return store


def _bits(page: bytes | None) -> int:
    return int.from_bytes(page[VM_CONTENTS:], "little") if page is not None else 0


@pytest.mark.pg
def test_without_vm_references_no_vm_page_is_ever_more_visible_than_the_primarys(
        pgbench_wal: WalRun, tmp_path: Path) -> None:  # noqa: F811
    run = pgbench_wal
    real_recs = [(r.raw, r.lsn, r.end_lsn) for r in iter_records(run.wal_dir, run.start)]
    real = _store(tmp_path / "real", run.start, _in_batches(real_recs, 500))
    old = _store(tmp_path / "old", run.start, _in_batches(_patched(run), 500))
    try:
        end = real_recs[-1][2]
        vm_keys = [k for k in real.keys(KeyRange.kind(KeyKind.REL_BLOCK), end)
                   if k.fork == ForkNumber.VM]
        assert vm_keys
        lsns = [end_lsn for _, _, end_lsn in real_recs[::max(1, len(real_recs) // 60)]] + [end]
        fewer = 0
        for lsn in lsns:
            for key in vm_keys:
                mine, theirs = _bits(old.get_page(key, lsn)), _bits(real.get_page(key, lsn))
                assert mine & ~theirs == 0, f"{key} at {lsn}: bits the primary had cleared"
                fewer += mine != theirs
        assert any(_bits(real.get_page(k, lsns[len(lsns) // 2])) for k in vm_keys)
        assert fewer  # the tombstones did something
    finally:
        real.close()
        old.close()


