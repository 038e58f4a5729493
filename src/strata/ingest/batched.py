"""The columnar half of WAL ingest: what a run of records does to relation
blocks, sizes and database directories, computed with numpy over a
`RecordBatch` instead of record by record.

What it is: pure functions over the block-reference rows of records
``[lo, hi)`` of a batch, each the vector form of one step of
`WalIngest.ingest` (walingest.py), which stays the reference:

- `block_entries`: one REL_BLOCK entry per block reference of a stored fork:
  an image delta for an applied full-page image (unless redo changes the
  page after restoring it, `keyspace.relation.image_needs_record`), else the
  record itself as a delta (WAL_RECORD_INIT when the block is initialised or
  restored) without the other blocks' images (`wal.decoder.trimmed_for_block`;
  a heap UPDATE's old page also without the new tuple,
  `keyspace.relation.stores_without_new_page_data`);
- `size_growth`: the REL_SIZE puts of forks that grow (a block past the known
  end), given the sizes before the run, which it updates;
- `new_databases`: the first block of a database history does not know yet;
- `plain_commits`, `commit_times`: which commits only end their transaction,
  and when (`WalIngest._plain_events` takes runs of them together);
- `walk_events`, `heap_rows_in`: which records `WalIngest` walks in order,
  and which may touch a catalog.

Requires (the caller's split keeps it): no record in the run shrinks or
drops a relation or a database, and nothing reads the store in between, so
sizes only grow along the run. Fed by `WalIngest.ingest_batch`. Feeds it
entry columns (`ingest.entries`). Owns nothing.
"""

from __future__ import annotations

import numpy as np

from strata.ingest.entries import KEY_DTYPE, KEY_FIELDS, EntryColumns
from strata.key import KeyKind
from strata.keyspace.relation import (
    AFTER_IMAGE_BLOCKS,
    COMPACT_RECORD_HEADER,
    IMAGE_DELTA_HEADER_SIZE,
    STORED_FORKS,
)
from strata.storage.gather import gather
from strata.storage.values import ValueKind
from strata.wal.batch import LSN_HEADER, RecordBatch
from strata.wal.record import (
    BKPBLOCK_HAS_DATA,
    BKPBLOCK_HAS_IMAGE,
    BKPBLOCK_SAME_REL,
    BKPBLOCK_WILL_INIT,
    BKPIMAGE_APPLY,
    BKPIMAGE_COMPRESSED,
    BKPIMAGE_HAS_HOLE,
    XLR_RMGR_INFO_MASK,
)
from strata.wal.rmgr import (
    RM_HEAP2_ID,
    RM_HEAP_ID,
    RM_XACT_ID,
    XLOG_HEAP_OPMASK,
    XLOG_HEAP_UPDATE,
    XLOG_XACT_COMMIT,
    XLOG_XACT_HAS_INFO,
    XLOG_XACT_OPMASK,
)

RelFork = tuple[int, int, int, int]
_I64 = np.dtype(np.int64)
_HDR = LSN_HEADER.size  # 16
_IMAGE_HDR = IMAGE_DELTA_HEADER_SIZE  # keyspace image delta header (26)
_STORED = np.zeros(256, dtype=bool)  # fork number -> stored?
_STORED[[int(f) for f in STORED_FORKS]] = True
# the part of an image delta between its LSNs and the image (keyspace image_delta_tail)
_TAIL = np.dtype([("marker", "<u4"), ("bimg_info", "u1"), ("reserved", "u1"),
                  ("hole_offset", "<u2"), ("hole_length", "<u2")])
assert _TAIL.itemsize == _IMAGE_HDR - _HDR
_XINFO_PARTS = (1 << 9) - 1  # xact.h XACT_XINFO_HAS_DBINFO .. HAS_DROPPED_STATS
# a record delta's first 40 bytes (keyspace COMPACT_RECORD_HEADER: start_lsn and
# end_lsn 0, the XLogRecord header with end - start for xl_prev, padding and xl_crc
# 0), built as five u64 words
_WORD = np.dtype("<u8")
_W8, _W32 = np.uint64(8), np.uint64(32)
_HEAD_SIZE = COMPACT_RECORD_HEADER.size
assert _WORD.itemsize * 5 == _HEAD_SIZE
_REC_HDR = _HEAD_SIZE - _HDR  # SizeOfXLogRecord (24)
# what a record delta changes in the header of a block it cuts the image or data
# of: fork_flags and data_length (`_record_pieces`)
_SIDE = np.dtype([("flags", "u1"), ("dlen", "<u2")])
_GROUP_STRIDE = 1 << 33  # above any block count + 1: keeps groups apart in one cummax


def _needs_record(rmid: np.ndarray, info: np.ndarray, block_id: np.ndarray) -> np.ndarray:
    """Per block row: is its applied image stored as the record
    (`keyspace.relation.image_needs_record`)?"""
    out = np.zeros(len(rmid), dtype=bool)
    for r, i, b in AFTER_IMAGE_BLOCKS:
        out |= (rmid == r) & ((info & XLR_RMGR_INFO_MASK) == i) & (block_id == b)
    return out


def stored_blocks(batch: RecordBatch, lo: int, hi: int) -> np.ndarray:
    """Block rows of records [lo, hi) whose fork is stored, in record order."""
    recs = batch.recs
    if lo >= hi:
        return batch.blks[:0]
    a = int(recs["blk_first"][lo])
    b = int(recs["blk_first"][hi - 1]) + int(recs["nblocks"][hi - 1])
    k = batch.blks[a:b]
    keep = _STORED[k["fork"]]
    return k if keep.all() else k[keep]


def _old_pages(batch: RecordBatch, k: np.ndarray, image: np.ndarray) -> np.ndarray:
    """Per row of `k`: the old page of a two-page heap UPDATE whose new page has
    data, stored as a record (`keyspace.relation.stores_without_new_page_data`)."""
    recs = batch.recs
    rec = k["rec"]
    old = ((recs["rmid"][rec] == RM_HEAP_ID) & (k["block_id"] == 1) & ~image
           & ((recs["info"][rec] & XLOG_HEAP_OPMASK) == XLOG_HEAP_UPDATE))
    if old.any():
        b0 = batch.blks[recs["blk_first"][rec[old]]]  # headers come in block id order
        old[old] = (b0["block_id"] == 0) & (b0["data_len"] > 0)
    return old


def _record_pieces(batch: RecordBatch, rec: np.ndarray, fork_flags: np.ndarray,
                   block_id: np.ndarray, old: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, bytes, np.ndarray]:
    """(source, start, length, source 1, pieces per delta) of the pieces of the
    record deltas of the block references (`rec`, `fork_flags`, `block_id`: the
    columns of their block rows, in record order; source 0 is buf, 1 the
    returned bytes): the vector form of `wal.decoder.trimmed_for_block`. Each
    delta is its `_record_heads` header (xl_tot_len lowered by what is cut),
    then: the record after its header, when nothing is cut; an `old` row (a
    heap UPDATE's old page) whose record has no image on another block, the
    four pieces of `_place_old_pages`; a record with an image on another block,
    the pieces of `_place_cuts` (the second form is the third's result for those
    rows in fewer numpy steps: a non-HOT UPDATE writes one per record)."""
    recs = batch.recs
    n = len(rec)
    off = recs["off"][rec]
    tot = recs["tot_len"][rec].astype(_I64)
    heads = _record_heads(batch, rec)
    cutting = _with_other_images(batch, rec, fork_flags)
    if not old.any() and cutting is None:
        src = np.zeros(2 * n, dtype=np.uint8)
        src[0::2] = 1
        starts = np.empty(2 * n, dtype=_I64)
        lens = np.empty(2 * n, dtype=_I64)
        starts[0::2], lens[0::2] = np.arange(n, dtype=_I64) * _HEAD_SIZE, _HEAD_SIZE
        starts[1::2], lens[1::2] = off + _REC_HDR, tot - _REC_HDR
        return src, starts, lens, heads.tobytes(), np.full(n, 2, dtype=_I64)
    plain_old = old if cutting is None else old & ~cutting
    pieces = np.where(plain_old, 5, 2)
    if cutting is not None:
        ev_row, ev_pos, ev_end, ev_patch, side_cut = _cuts(batch, rec, block_id, old,
                                                           np.flatnonzero(cutting))
        pieces += np.bincount(ev_row, weights=1 + ev_patch, minlength=n).astype(_I64)
        heads[:, 2] -= np.bincount(ev_row, weights=ev_end - ev_pos
                                   - ev_patch * _SIDE.itemsize, minlength=n).astype(_WORD)
    first, src, starts, lens = _piece_arrays(pieces)
    src[first], starts[first], lens[first] = 1, np.arange(n, dtype=_I64) * _HEAD_SIZE, \
        _HEAD_SIZE
    # the record after its header (what the rows cut below overwrite)
    starts[first + 1], lens[first + 1] = off + _REC_HDR, tot - _REC_HDR
    b0 = batch.blks[recs["blk_first"][rec[plain_old]]]
    heads[plain_old, 2] -= b0["data_len"].astype(_WORD)  # xl_tot_len, the low half
    side = _place_old_pages((src, starts, lens), first[plain_old], off[plain_old],
                            off[plain_old] + tot[plain_old], b0, n * _HEAD_SIZE)
    if cutting is None:
        return src, starts, lens, heads.tobytes() + side.tobytes(), pieces
    rows = np.flatnonzero(cutting)
    _place_cuts((src, starts, lens), first[rows] + 1, off[rows] + _REC_HDR, off[rows] + tot[rows],
                (ev_row, ev_pos, ev_end, ev_patch), n * _HEAD_SIZE + side.nbytes)
    return src, starts, lens, heads.tobytes() + side.tobytes() + side_cut.tobytes(), pieces


def _piece_arrays(pieces: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For rows of `pieces[i]` pieces each: (each row's first piece, then the
    pieces' source (zeros), start and length arrays, to be filled)."""
    first = np.zeros(len(pieces), dtype=_I64)
    np.cumsum(pieces[:-1], out=first[1:])
    total = int(pieces.sum())
    return (first, np.zeros(total, dtype=np.uint8), np.empty(total, dtype=_I64),
            np.empty(total, dtype=_I64))


def _place_old_pages(out: tuple[np.ndarray, np.ndarray, np.ndarray], first: np.ndarray,
                     o: np.ndarray, end: np.ndarray, b0: np.ndarray, side_at: int
                     ) -> np.ndarray:
    """Fill the four pieces after the head of old pages' deltas (`out`: source,
    start, length; their heads at `first`; records at [`o`, `end`) in buf; `b0`
    their block 0 rows): block 0's id; its fork_flags without HAS_DATA and
    data_length 0 (source 1 from `side_at` on, returned); the rest of block 0's
    header and the other headers; what follows block 0's data."""
    src, starts, lens = out
    d0, n0 = b0["data_off"], b0["data_len"].astype(_I64)
    side = np.zeros(len(first), dtype=_SIDE)
    side["flags"] = b0["fork_flags"] & ~np.uint8(BKPBLOCK_HAS_DATA)
    starts[first + 1], lens[first + 1] = o + _REC_HDR, 1
    src[first + 2], starts[first + 2], lens[first + 2] = \
        1, side_at + np.arange(len(first), dtype=_I64) * _SIDE.itemsize, _SIDE.itemsize
    starts[first + 3], lens[first + 3] = o + 28, d0 - (o + 28)
    starts[first + 4], lens[first + 4] = d0 + n0, end - (d0 + n0)
    return side


def _record_heads(batch: RecordBatch, rec: np.ndarray) -> np.ndarray:
    """The 40-byte `COMPACT_RECORD_HEADER` of each record `rec`, as five
    little-endian u64 words (ten times faster than filling a packed structured
    array): 0, 0 (the end LSN is the entry's), xl_tot_len | xl_xid << 32,
    end - start, xl_info | xl_rmid << 8 (padding and xl_crc 0)."""
    recs = batch.recs
    heads = np.zeros((len(rec), 5), dtype=_WORD)
    heads[:, 2] = recs["tot_len"][rec].astype(_WORD) | (recs["xid"][rec].astype(_WORD) << _W32)
    heads[:, 3] = recs["end_lsn"][rec] - recs["lsn"][rec]
    heads[:, 4] = recs["info"][rec].astype(_WORD) | (recs["rmid"][rec].astype(_WORD) << _W8)
    return heads


def _place_cuts(out: tuple[np.ndarray, np.ndarray, np.ndarray], at: np.ndarray,
                body: np.ndarray, end: np.ndarray,
                events: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
                patch_at: int) -> None:
    """Fill the pieces (`out`: source, start, length) of the cut deltas, whose
    pieces after the head start at `at`, whose records' bodies span [`body`,
    `end`) in buf (one row each, in order), from their `events` (`_cuts`: row
    in the delta numbering, start, end, has 3 bytes; sorted by row then
    position; every such row has one at least): each event is the kept range
    before it (from the previous event's end, or the body's start) and then its
    3 bytes, source 1 from `patch_at` on, in event order; after the last, the
    rest of the record."""
    src, starts, lens = out
    ev_row, ev_pos, ev_end, ev_patch = events
    change = np.ones(len(ev_row), dtype=bool)  # a row's first event
    change[1:] = ev_row[1:] != ev_row[:-1]
    group = np.cumsum(change) - 1  # which cut delta each event belongs to
    per = 1 + ev_patch.astype(_I64)
    before = np.cumsum(per) - per
    first = np.flatnonzero(change)
    k = at[group] + before - before[first][group]
    prev_end = np.where(change, body[group], np.roll(ev_end, 1))
    starts[k], lens[k] = prev_end, ev_pos - prev_end
    p = k[ev_patch] + 1
    src[p] = 1
    starts[p] = patch_at + np.arange(len(p), dtype=_I64) * _SIDE.itemsize
    lens[p] = _SIDE.itemsize
    last_ev = np.r_[first[1:], len(ev_row)] - 1
    tail = ev_end[last_ev]
    last = k[last_ev] + per[last_ev]
    starts[last], lens[last] = tail, end - tail


def _with_other_images(batch: RecordBatch, rec: np.ndarray, fork_flags: np.ndarray
                       ) -> np.ndarray | None:
    """Per block reference (of record `rec`, with `fork_flags`; in record order):
    does its record hold a full-page image of another block? None when no
    reference's does."""
    if not len(rec):
        return None
    recs = batch.recs
    lo = int(recs["blk_first"][rec[0]])
    hi = int(recs["blk_first"][rec[-1]]) + int(recs["nblocks"][rec[-1]])
    with_image = np.flatnonzero(batch.blks["fork_flags"][lo:hi] & np.uint8(BKPBLOCK_HAS_IMAGE))
    if not len(with_image):
        return None
    r0 = int(rec[0])
    images = np.bincount(batch.blks["rec"][with_image + lo] - r0,
                         minlength=int(rec[-1]) - r0 + 1)  # per record
    out = images[rec - r0] > ((fork_flags & np.uint8(BKPBLOCK_HAS_IMAGE)) != 0)
    return out if out.any() else None


def _cuts(batch: RecordBatch, delta_rec: np.ndarray, delta_block: np.ndarray,
          old: np.ndarray, rows: np.ndarray
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The cut events of deltas `rows` (of the block references of records
    `delta_rec` with ids `delta_block`; `_record_pieces`), sorted by row then
    position: (row, start, end of what is dropped, has 3 bytes of replacement,
    those bytes in event order)."""
    recs = batch.recs
    rec = delta_rec[rows]
    nblk = recs["nblocks"][rec].astype(_I64)
    group = np.zeros(len(rows), dtype=_I64)
    np.cumsum(nblk[:-1], out=group[1:])
    pair_row = np.repeat(rows, nblk)
    idx = np.repeat(recs["blk_first"][rec].astype(_I64) - group, nblk) \
        + np.arange(int(nblk.sum()), dtype=_I64)
    b = batch.blks[idx]
    flags = b["fork_flags"]
    has = (flags & np.uint8(BKPBLOCK_HAS_IMAGE)) != 0
    ihl = np.where(has, np.where(((b["bimg_info"] & np.uint8(BKPIMAGE_COMPRESSED)) != 0)
                                 & ((b["bimg_info"] & np.uint8(BKPIMAGE_HAS_HOLE)) != 0), 7, 5),
                   0)
    hlen = 8 + ihl + np.where((flags & np.uint8(BKPBLOCK_SAME_REL)) != 0, 0, 12)
    excl = np.cumsum(hlen) - hlen  # headers are back to back after the record header
    hdr = recs["off"][delta_rec[pair_row]] + _REC_HDR + excl - np.repeat(excl[group], nblk)
    cut = has & (b["block_id"] != delta_block[pair_row])
    drop = old[pair_row] & (b["block_id"] == 0)
    inc = np.flatnonzero(cut | drop)  # in row order, blocks in record order
    cut, drop, b, ihl, hdr = cut[inc], drop[inc], b[inc], ihl[inc], hdr[inc]
    row = pair_row[inc]
    m = len(inc)
    # per row, its c header events (one per edited block), then its c payload events
    c = np.bincount(row, minlength=len(delta_rec))
    first = np.zeros(len(delta_rec), dtype=_I64)
    np.cumsum(c[:-1], out=first[1:])
    h = first[row] + np.arange(m, dtype=_I64)  # 2 * first[row] + rank in the row
    p = h + c[row]
    out_row = np.empty(2 * m, dtype=_I64)
    pos = np.empty(2 * m, dtype=_I64)
    stop = np.empty(2 * m, dtype=_I64)
    patch = np.zeros(2 * m, dtype=bool)
    out_row[h] = out_row[p] = row
    pos[h], stop[h], patch[h] = hdr + 1, hdr + 4 + np.where(cut, ihl, 0), True
    pos[p] = np.where(cut, b["img_off"], b["data_off"])
    stop[p] = np.where(drop, b["data_off"] + b["data_len"], b["img_off"] + b["img_len"])
    side = np.zeros(m, dtype=_SIDE)  # in header event order
    side["flags"] = (b["fork_flags"] & ~np.where(cut, np.uint8(BKPBLOCK_HAS_IMAGE), np.uint8(0))
                     & ~np.where(drop, np.uint8(BKPBLOCK_HAS_DATA), np.uint8(0)))
    side["dlen"] = np.where(drop, 0, b["data_len"])
    return out_row, pos, stop, patch, side


def block_entries(batch: RecordBatch, k: np.ndarray) -> EntryColumns:
    """The REL_BLOCK entries of block rows `k` (in row order, at their record's
    end LSN)."""
    n = len(k)
    recs = batch.recs
    rec = k["rec"]
    keys = np.zeros(n, dtype=KEY_FIELDS)
    keys["kind"] = KeyKind.REL_BLOCK
    keys["spc"] = k["spc"]
    keys["db"] = k["db"]
    keys["rel"] = k["rel"]
    keys["fork"] = k["fork"]
    keys["blk"] = k["blkno"]
    flags = k["fork_flags"]
    applied = ((flags & BKPBLOCK_HAS_IMAGE) != 0) & ((k["bimg_info"] & BKPIMAGE_APPLY) != 0)
    image = applied & ~_needs_record(recs["rmid"][rec], recs["info"][rec], k["block_id"])
    kinds = np.where(applied | ((flags & BKPBLOCK_WILL_INIT) != 0),
                     np.uint8(ValueKind.WAL_RECORD_INIT), np.uint8(ValueKind.WAL_RECORD))
    old = _old_pages(batch, k, image) if n else np.zeros(0, dtype=bool)
    # a record delta is the pieces of `_record_pieces`; an image delta three: the LSN
    # header, its 10-byte tail, the image as stored
    any_image = bool(image.any())
    rest = ~image if any_image else slice(None)  # a slice: views, not copies
    rsrc, rstarts, rlens, side, rpieces = _record_pieces(
        batch, rec[rest], flags[rest], k["block_id"][rest], old[rest])
    if not any_image:
        return _columns(keys, recs["end_lsn"][rec], kinds, rpieces, rlens,
                        gather((batch.buf, side), rsrc, rstarts, rlens))
    pieces = np.full(n, 3, dtype=_I64)
    pieces[~image] = rpieces
    first, src, starts, plens = _piece_arrays(pieces)
    rec_at = np.ones(len(src), dtype=bool)  # the pieces that are record deltas'
    at = first[image]
    rec_at[np.concatenate([at, at + 1, at + 2])] = False
    src[rec_at], starts[rec_at], plens[rec_at] = rsrc, rstarts, rlens
    tails = np.zeros(len(at), dtype=_TAIL)
    tails["bimg_info"] = k["bimg_info"][image]
    tails["hole_offset"] = k["hole_offset"][image]
    tails["hole_length"] = k["hole_length"][image]
    starts[at], plens[at] = recs["off"][rec[image]] - _HDR, _HDR
    src[at + 1] = 2
    starts[at + 1], plens[at + 1] = np.arange(len(at), dtype=_I64) * _TAIL.itemsize, \
        _TAIL.itemsize
    starts[at + 2], plens[at + 2] = k["img_off"][image], k["img_len"][image]
    return _columns(keys, recs["end_lsn"][rec], kinds, pieces, plens,
                    gather((batch.buf, side, tails.tobytes()), src, starts, plens))


def _columns(keys: np.ndarray, lsns: np.ndarray, kinds: np.ndarray, pieces: np.ndarray,
             plens: np.ndarray, data: bytes) -> EntryColumns:
    """Entry columns whose row i is `pieces[i]` consecutive pieces of `data`."""
    ends = np.cumsum(plens)
    last = np.cumsum(pieces) - 1  # each row's last piece
    offsets = np.zeros(len(keys) + 1, dtype=_I64)
    offsets[1:] = ends[last] if len(last) else ends[:0]
    return EntryColumns(keys.view(KEY_DTYPE), lsns, kinds, offsets, data)


def changes(*cols: np.ndarray) -> np.ndarray:
    """Per row of equal-length columns: whether it differs from the row before in
    any of them (row 0: True). (np.r_ costs ~10 us a call; this a few.)"""
    n = len(cols[0])
    out = np.empty(n, dtype=bool)
    if n:
        out[0] = True
        np.not_equal(cols[0][1:], cols[0][:-1], out=out[1:])
        for c in cols[1:]:
            out[1:] |= c[1:] != c[:-1]
    return out


def member(x: np.ndarray, ascending: np.ndarray) -> np.ndarray:
    """``np.isin(x, ascending)`` for a sorted `ascending`, by binary search (np.isin
    has a fixed cost of ~30 us a call, and ingest calls it per batch)."""
    if not len(ascending):
        return np.zeros(len(x), dtype=bool)
    i = np.searchsorted(ascending, x)
    np.minimum(i, len(ascending) - 1, out=i)
    return ascending[i] == x  # type: ignore[no-any-return]


def size_growth(k: np.ndarray, sizes: dict[RelFork, int]) -> list[tuple[int, RelFork, int]]:
    """(record row, fork, new length) for each record that lengthens a fork: a
    block past the fork's known end (the longest of the record's blocks counts).
    Updates `sizes`. In record order (forks of one record in key order)."""
    if not len(k):
        return []
    a = (k["spc"].astype(np.uint64) << np.uint64(32)) | k["db"]
    b = (k["rel"].astype(np.uint64) << np.uint64(8)) | k["fork"]
    rec = k["rec"].astype(_I64)
    order = np.lexsort((rec, b, a))
    a, b, rec = a[order], b[order], rec[order]
    val = k["blkno"][order].astype(_I64) + 1
    new_fork = changes(a, b)
    first = np.flatnonzero(new_fork | changes(rec))
    m = np.maximum.reduceat(val, first)  # per (fork, record): its longest block + 1
    gg = (np.cumsum(new_fork) - 1)[first]  # fork number of each (fork, record)
    rr = rec[first]
    heads = np.flatnonzero(new_fork)
    forks: list[RelFork] = [(x >> 32, x & 0xFFFFFFFF, y >> 8, y & 0xFF)
                            for x, y in zip(a[heads].tolist(), b[heads].tolist(), strict=True)]
    before = np.array([sizes.get(f, -1) for f in forks], dtype=_I64)
    run = np.maximum.accumulate(m + gg * _GROUP_STRIDE) - gg * _GROUP_STRIDE
    prev = np.empty_like(run)
    prev[1:] = run[:-1]
    prev[changes(gg)] = -1  # a fork's first record: nothing before
    grow = m > np.maximum(prev, before[gg])
    out: list[tuple[int, RelFork, int]] = []
    for r, gi, nb in zip(rr[grow].tolist(), gg[grow].tolist(), m[grow].tolist(), strict=True):
        out.append((r, forks[gi], nb))
        sizes[forks[gi]] = nb  # a fork's records come in order: the last one wins
    out.sort(key=lambda e: e[0])
    return out


def new_databases(k: np.ndarray, known: set[tuple[int, int]]) -> list[tuple[int, int, int]]:
    """(record row, spc, db) of the first block of each database not in `known`
    (db 0, the shared catalogs, is no database). In record order."""
    db = k["db"]
    some = db != 0
    if not some.any():
        return []
    pairs = ((k["spc"].astype(np.uint64) << np.uint64(32)) | db)[some]
    uniq, first = np.unique(pairs, return_index=True)
    rec = k["rec"][some]
    out = [(int(rec[i]), p >> 32, p & 0xFFFFFFFF)
           for p, i in zip(uniq.tolist(), first.tolist(), strict=True)
           if (p >> 32, p & 0xFFFFFFFF) not in known]
    out.sort()
    return out


def plain_commits(batch: RecordBatch, rows: list[int]) -> set[int]:
    """The rows among `rows` that are plain commits: a COMMIT record without block
    references, origin or top-level xid whose main data is the commit time and at
    most an xinfo word with none of the parts (subtransactions, relations,
    invalidations, two-phase, ...). Such a commit only ends its one transaction:
    a time map entry, a CLOG status, perhaps the next XID (`_plain_events`)."""
    if not rows:
        return set()
    idx = np.array(rows, dtype=np.int64)
    sub = batch.recs[idx]
    info, main_len = sub["info"], sub["main_len"]
    cand = ((sub["rmid"] == RM_XACT_ID) & ((info & XLOG_XACT_OPMASK) == XLOG_XACT_COMMIT)
            & (sub["nblocks"] == 0) & (sub["flags"] == 0))
    has_info = (info & XLOG_XACT_HAS_INFO) != 0
    ok = cand & ~has_info & (main_len == 8)
    with_info = np.flatnonzero(cand & has_info & (main_len == 12))
    if len(with_info):
        raw = np.frombuffer(batch.buf, dtype=np.uint8)
        at = sub["main_off"][with_info] + 8
        xinfo = (raw[at].astype(np.uint32) | (raw[at + 1].astype(np.uint32) << 8)
                 | (raw[at + 2].astype(np.uint32) << 16) | (raw[at + 3].astype(np.uint32) << 24))
        ok[with_info[(xinfo & _XINFO_PARTS) == 0]] = True
    return set(idx[ok].tolist())


def commit_times(batch: RecordBatch, rows: np.ndarray) -> np.ndarray:
    """The xact_time (the first 8 bytes of xl_xact_commit) of the commit records
    `rows`, as int64."""
    raw = np.frombuffer(batch.buf, dtype=np.uint8)
    at = batch.recs["main_off"][rows].astype(_I64)[:, None] + np.arange(8)
    return raw[at].copy().view("<i8").reshape(-1)


def walk_events(batch: RecordBatch, lo: int, hi: int, inside: list[int]
                ) -> tuple[np.ndarray, np.ndarray]:
    """The rows of records [lo, hi) that `WalIngest._walk_run` walks, in WAL order:
    the interpreted ones (`inside`, ascending) and the first record of each
    transaction id among the others (xid >= 3: what may move the next XID); and
    per row, whether it is an interpreted one."""
    xids = batch.recs["xid"][lo:hi]
    plain = np.ones(hi - lo, dtype=bool)
    plain[np.asarray(inside, dtype=np.int64) - lo] = False
    cand = np.flatnonzero(plain & (xids >= 3))  # 0-2: never a next XID
    _, first = np.unique(xids[cand], return_index=True)
    events = np.sort(np.concatenate([np.asarray(inside, dtype=np.int64),
                                     cand[first].astype(np.int64) + lo]))
    return events, ~plain[events - lo]


def heap_rows_in(batch: RecordBatch, rels: set[int] | frozenset[int]) -> np.ndarray:
    """Rows of the Heap/Heap2 records of `batch` whose first block is in one of
    relfilenumbers `rels` (ascending)."""
    recs = batch.recs
    rmid = recs["rmid"]
    heap = np.flatnonzero(((rmid == RM_HEAP_ID) | (rmid == RM_HEAP2_ID)) & (recs["nblocks"] > 0))
    first_rel = batch.blks["rel"][recs["blk_first"][heap]]
    return heap[member(first_rel, np.sort(np.fromiter(rels, dtype=np.uint32, count=len(rels))))]
