"""The wal_consistency_checking oracle: our redo versus PostgreSQL's own pages.

What it is: with `wal_consistency_checking = 'all'` every record of a
maskable rmgr (XLR_CHECK_CONSISTENCY) carries, for every block it touched, the
page image after the change (an image without BKPIMAGE_APPLY). This module
replays a stream of decoded records through `redo_block`, keeps the latest
known state of every block, and for every verification image compares our
result with the image after both are masked by the rmgr's mask function, as
verifyBackupPageConsistency (xlogrecovery.c) does:

- apply-images are restored, never compared (they would compare with
  themselves);
- a block whose replayed page LSN is already past the record's end LSN is
  skipped;
- a block that differs only where PostgreSQL's own redo differs from its
  primary (a registered known difference, e.g. GiST's F_TUPLES_DELETED) is
  counted as `upstream`, apart from matches and mismatches;
- the previous state of a block is the last image (apply or verification)
  seen for it, or our own redo result when the record had no image; a block
  with neither (first seen inside the range, no WILL_INIT) cannot be checked
  and is counted as `no_base`. With `chain=True` our own redo result stays
  the base even when a verification image was there (only apply-images
  reset it), as GetPage@LSN chains deltas: errors would then accumulate.
  With `stored=True` each block is redone as the page store redoes it: the
  REL_BLOCK delta ingest stores (an applied image as an image delta unless
  `image_needs_record`, else the record) through `reconstruct_value`, i.e. through
  the compiled heap/heap2 chain (`_pagec.redo_chain`: heap pages, their
  visibility-map pages, uncompressed image deltas) where it is built.

A record whose rmgr or record type has no redo is counted as unsupported,
loudly; callers decide which rmgrs must be supported.

Fed by decoded records (`strata.wal.segments.iter_records`); feeds
`strata redo-check` and the oracle tests. Owns only in-memory state.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from strata.errors import RedoError, StrataError, UnsupportedRecordError
from strata.key import Key
from strata.keyspace.relation import delta_form, encode_image_delta, encode_record_delta
from strata.lsn import Lsn
from strata.reconstruct.mask import heap_mask_strict, known_difference, masked
from strata.reconstruct.reconstruct import reconstruct_value
from strata.reconstruct.redo import (
    RM_HEAP2_ID,
    RM_HEAP_ID,
    VISIBILITYMAP_FORKNUM,
    page_ops,
    record_type_name,
    redo_block,
    restore_image,
    rmgr_name,
)
from strata.reconstruct.redo.heap import VM_CONTENTS, vm_location
from strata.storage.values import WalRecord
from strata.wal.record import BlockRef, DecodedRecord, RelFileLocator

BlockKey = tuple[RelFileLocator, int, int]


@dataclass
class TypeStats:
    """Counters for one rmgr/record type."""

    records: int = 0
    blocks_checked: int = 0
    matches: int = 0
    mismatches: int = 0
    skipped_lsn: int = 0  # replayed page already past the record (PostgreSQL skips too)
    no_base: int = 0  # no previous state known: cannot check
    images: int = 0  # apply-images restored
    unsupported: int = 0  # records without redo
    errors: int = 0  # RedoError on a block whose previous state was known
    # blocks that differ only where PostgreSQL's own redo differs from its primary
    # (its own standby fails the check there too; mask.register_known_difference)
    upstream: int = 0


@dataclass(frozen=True, slots=True)
class Mismatch:
    lsn: Lsn
    rmgr: str
    record_type: str
    block_id: int
    rlocator: RelFileLocator
    fork: int
    blkno: int
    offset: int  # first differing byte of the masked pages (-1 for a redo error)
    detail: str  # hex diff, or the error message

    def describe(self) -> str:
        where = (f"{self.rmgr}/{self.record_type} at {self.lsn} block {self.block_id} "
                 f"(rel {self.rlocator} fork {self.fork} blk {self.blkno})")
        if self.offset < 0:
            return f"redo error in {where}: {self.detail}"
        return f"mismatch in {where}, first difference at page offset {self.offset}:\n{self.detail}"


@dataclass
class CheckReport:
    stats: dict[tuple[str, str], TypeStats] = field(default_factory=dict)
    first_mismatch: Mismatch | None = None
    first_error: Mismatch | None = None
    start: Lsn | None = None
    end: Lsn | None = None
    records: int = 0
    consistency_records: int = 0  # records flagged XLR_CHECK_CONSISTENCY

    def stat(self, rmgr: str, rtype: str) -> TypeStats:
        key = (rmgr, rtype)
        st = self.stats.get(key)
        if st is None:
            st = self.stats[key] = TypeStats()
        return st

    def total(self, name: str) -> int:
        return sum(getattr(s, name) for s in self.stats.values())

    @property
    def mismatches(self) -> int:
        return self.total("mismatches")

    @property
    def errors(self) -> int:
        return self.total("errors")

    def unsupported_rmgrs(self) -> set[str]:
        return {rm for (rm, _t), s in self.stats.items() if s.unsupported}

    def unsupported_types(self) -> set[tuple[str, str]]:
        return {k for k, s in self.stats.items() if s.unsupported}

    def format_table(self) -> str:
        cols = ("records", "blocks_checked", "matches", "mismatches", "skipped_lsn",
                "no_base", "images", "unsupported", "errors", "upstream")
        heads = ("records", "checked", "match", "MISMATCH", "lsn-skip", "no-base", "images",
                 "UNSUPPORTED", "errors", "upstream")
        rows = [(f"{rm}/{rt}", *(str(getattr(s, c)) for c in cols))
                for (rm, rt), s in sorted(self.stats.items())]
        rows.append(("TOTAL", *(str(self.total(c)) for c in cols)))
        widths = [max(len(r[i]) for r in [("rmgr/type", *heads), *rows])
                  for i in range(len(cols) + 1)]

        def line(r: tuple[str, ...]) -> str:
            return "  ".join(v.ljust(widths[0]) if i == 0 else v.rjust(widths[i])
                             for i, v in enumerate(r))

        out = [line(("rmgr/type", *heads)), line(tuple("-" * w for w in widths)),
               *(line(r) for r in rows)]
        return "\n".join(out)


def hex_diff(a: bytes, b: bytes, *, context: int = 32, max_ranges: int = 4) -> tuple[int, str]:
    """(first differing offset, a readable diff of up to `max_ranges` ranges)."""
    diffs = [i for i in range(min(len(a), len(b))) if a[i] != b[i]]
    if not diffs:
        return -1, ""
    ranges: list[tuple[int, int]] = []
    for i in diffs:
        if ranges and i <= ranges[-1][1] + context:
            ranges[-1] = (ranges[-1][0], i)
        else:
            ranges.append((i, i))
    lines = [f"{len(diffs)} differing bytes in {len(ranges)} range(s)"]
    for lo, hi in ranges[:max_ranges]:
        start = max(0, (lo - 8) & ~15)
        stop = min(len(a), ((hi + 16) & ~15) + 16)
        lines.append(f"  bytes {lo}..{hi}:")
        for row in range(start, stop, 16):
            ra, rb = a[row:row + 16], b[row:row + 16]
            mark = " " if ra == rb else "*"
            lines.append(f"  {mark}{row:04x} ours   {ra.hex(' ')}")
            if ra != rb:
                lines.append(f"  {mark}{row:04x} server {rb.hex(' ')}")
    return diffs[0], "\n".join(lines)


class ConsistencyChecker:
    """Feed records in WAL order with `feed`; read `report` at any time."""

    def __init__(self, *, strict_vm: bool = False, strict_heap: bool = False,
                 chain: bool = False, stored: bool = False) -> None:
        """`strict_vm`: on visibility-map pages, compare the bits of the heap
        blocks each record references. PostgreSQL's heap_mask masks a VM
        page's whole map as "unused space", so its own check cannot see VM
        bits; this can. `strict_heap`: heap pages masked with
        `heap_mask_strict`, which also compares the WAL-logged t_infomask
        bits that heap_mask hides."""
        self.state: dict[BlockKey, bytes] = {}
        self.report = CheckReport()
        self.strict_vm = strict_vm
        self.strict_heap = strict_heap
        # chain: keep our own redo result as the block's next base (what GetPage@LSN does)
        # instead of the server's verification image, so errors would accumulate
        self.chain = chain
        # stored: redo as the page store does (reconstruct_value on the stored delta)
        self.stored = stored

    def run(self, records: Iterable[DecodedRecord]) -> CheckReport:
        for rec in records:
            self.feed(rec)
        return self.report

    def feed(self, record: DecodedRecord) -> None:
        rep = self.report
        if rep.start is None:
            rep.start = record.lsn
        rep.end = record.end_lsn
        rep.records += 1
        if record.check_consistency:
            rep.consistency_records += 1
        rm = rmgr_name(record.xl_rmid)
        rt = record_type_name(record)
        st = rep.stat(rm, rt)
        st.records += 1
        unsupported = False
        for block in record.blocks:
            if not self._block(record, block, rm, rt, st):
                unsupported = True
        if unsupported:
            st.unsupported += 1

    def _block(self, record: DecodedRecord, block: BlockRef, rm: str, rt: str,
               st: TypeStats) -> bool:
        """Process one block; False if its record type has no redo."""
        key: BlockKey = (block.rlocator, block.fork, block.blkno)
        if block.apply_image:
            self.state[key] = self._redo(record, block, None)
            st.images += 1
            return True
        prev = self.state.get(key)
        verify = block.image is not None
        result: bytes | None = None
        supported = True
        try:
            result = self._redo(record, block, prev)
        except UnsupportedRecordError:
            supported = False
        except RedoError as e:
            if prev is None and not block.will_init:
                st.no_base += 1
            else:
                st.errors += 1
                if self.report.first_error is None:
                    self.report.first_error = Mismatch(
                        record.lsn, rm, rt, block.block_id, block.rlocator, block.fork,
                        block.blkno, -1, str(e))
        if verify:
            image = restore_image(block, record.lsn)
            if result is not None:
                self._compare(record, block, result, bytes(image), rm, rt, st)
            if self.chain and result is not None:
                self.state[key] = result
            else:
                # The server's page after the change is the best base for the next record.
                if not page_ops.page_is_new(image):
                    page_ops.page_set_lsn(image, record.end_lsn)
                self.state[key] = bytes(image)
        elif result is not None:
            self.state[key] = result
        else:
            self.state.pop(key, None)
        return supported

    def _redo(self, record: DecodedRecord, block: BlockRef, prev: bytes | None) -> bytes:
        if not self.stored:
            return redo_block(record, block.block_id, prev)
        loc = block.rlocator
        key = Key.rel_block(loc.spc, loc.db, loc.rel, block.fork, block.blkno)
        as_image, init = delta_form(record, block)
        if as_image:
            assert block.image is not None
            data = encode_image_delta(record.lsn, record.end_lsn, block.image)
        else:
            data = encode_record_delta(record, block)
        return reconstruct_value(key, prev, [WalRecord(data, init, record.end_lsn)])

    def _compare(self, record: DecodedRecord, block: BlockRef, ours: bytes, server: bytes,
                 rm: str, rt: str, st: TypeStats) -> None:
        if page_ops.page_get_lsn(ours) > record.end_lsn:
            st.skipped_lsn += 1
            return
        st.blocks_checked += 1
        if self.strict_vm and block.fork == VISIBILITYMAP_FORKNUM:
            self._compare_vm_bits(record, block, ours, server, rm, rt, st)
            return
        try:
            if self.strict_heap and record.xl_rmid in (RM_HEAP_ID, RM_HEAP2_ID):
                a, b = bytearray(ours), bytearray(server)
                heap_mask_strict(a, block.blkno)
                heap_mask_strict(b, block.blkno)
            else:
                a = masked(record.xl_rmid, ours, block.blkno)
                b = masked(record.xl_rmid, server, block.blkno)
        except StrataError as e:
            a, b = bytearray(ours), bytearray(server)
            if a == b:
                st.matches += 1
                return
            st.mismatches += 1
            self._note_mismatch(record, block, rm, rt, -1, f"masking failed: {e}")
            return
        if a == b:
            st.matches += 1
            return
        known = known_difference(record.xl_rmid)
        if known is not None and known(record, block, bytes(a), bytes(b)):
            st.upstream += 1
            return
        st.mismatches += 1
        off, diff = hex_diff(bytes(a), bytes(b))
        self._note_mismatch(record, block, rm, rt, off, diff)

    def _compare_vm_bits(self, record: DecodedRecord, block: BlockRef, ours: bytes,
                         server: bytes, rm: str, rt: str, st: TypeStats) -> None:
        """Compare the VM bits of the heap blocks this record references.

        Only those bits: the rest of a VM page can legitimately differ,
        because PostgreSQL logs VM pages copied by CREATE DATABASE (wal_log)
        as standard-layout FPIs whose "hole" is the whole map, so a replayed
        VM page starts from zeros where the primary's has bits set.
        """
        for b in record.blocks:
            if b.fork != 0 or b.rlocator != block.rlocator:
                continue
            mapblock, mapbyte, mapoff = vm_location(b.blkno)
            if mapblock != block.blkno:
                continue
            pos = VM_CONTENTS + mapbyte
            mine, theirs = (ours[pos] >> mapoff) & 3, (server[pos] >> mapoff) & 3
            if mine != theirs:
                st.mismatches += 1
                self._note_mismatch(record, block, rm, rt, pos,
                                    f"VM bits of heap block {b.blkno}: ours {mine:02b}, "
                                    f"server {theirs:02b}")
                return
        st.matches += 1

    def _note_mismatch(self, record: DecodedRecord, block: BlockRef, rm: str, rt: str,
                       off: int, detail: str) -> None:
        if self.report.first_mismatch is None:
            self.report.first_mismatch = Mismatch(record.lsn, rm, rt, block.block_id,
                                                  block.rlocator, block.fork, block.blkno,
                                                  off, detail)


def check_records(records: Iterable[DecodedRecord], *, strict_vm: bool = False,
                  strict_heap: bool = False, chain: bool = False,
                  stored: bool = False) -> CheckReport:
    """Run the oracle over `records` (in WAL order)."""
    return ConsistencyChecker(strict_vm=strict_vm, strict_heap=strict_heap, chain=chain,
                              stored=stored).run(records)


def check_wal_dir(wal_dir: str, start: Lsn | None = None, end: Lsn | None = None, *,
                  strict_vm: bool = False, strict_heap: bool = False,
                  chain: bool = False, stored: bool = False) -> CheckReport:
    """Run the oracle over the WAL segment files of `wal_dir`, records in [start, end)."""
    from strata.wal.segments import iter_records

    return check_records(iter_records(wal_dir, start, end), strict_vm=strict_vm,
                         strict_heap=strict_heap, chain=chain, stored=stored)
