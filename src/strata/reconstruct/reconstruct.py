"""The redo callback the page store is given: (Key, base, deltas) -> value.

What it is: the bridge between storage (which knows nothing of PostgreSQL and
calls `reconstruct_value(key, base, records)` with the newest image at or
below the read LSN and the deltas above it, oldest first) and the redo
engines: relation blocks go through `reconstruct.redo` (the delta is a whole
WAL record, format in `keyspace/FORMAT.md`), SLRU pages through
`reconstruct.slru`. Pure: no I/O.

Relation pages replay runs of heap/heap2 records in C (`_pagec.redo_chain`,
7-8x faster on a TPC-B history's pages: decoding and dispatch per record
were most of the Python cost), visibility-map pages included (the bits heap
records clear, VISIBLE's set), and so are full-page images stored as image
deltas (a lazy scan restores one for every page touched since the image
layer below it); everything else, and anything the C code
doubts, through the Python redo, its reference.

`reconstruct_value` is one `Reconstructor`: a storage `Redo` (one key's chain per
call) and a `scan.WindowRedo`, whose `into` builds every relation-page chain of a
scan window in one C call (`_pagec.redo_window`, straight into the caller's page
buffer: the lazy file system's reads and its helpers; the flush's chain cuts, on
base pages), and a CLOG page's run of commit statuses in a few numpy steps. In a
cold full scan at scale 100, 36 % of the pages have a chain (an image delta and
the records after it); the Python path spent ~10 us per such page around the C
redo itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from strata.errors import RedoError
from strata.key import KEY_SIZE, Key, KeyKind
from strata.keyspace.relation import decode_delta, decode_image_delta, is_image_delta
from strata.reconstruct.redo import redo_block_inplace
from strata.reconstruct.redo.page_ops import BLCKSZ, page_is_new, page_set_lsn, pagec
from strata.reconstruct.slru import ONE_SLOT, apply_one_slot_rows, apply_values
from strata.storage.values import ValueKind, WalRecord
from strata.wal.decoder import decode_record
from strata.wal.image import restore_page

if TYPE_CHECKING:
    from strata.storage.batch import EntryBatch


def _block_id(record_blocks: object, key: Key) -> int:
    for b in record_blocks:  # type: ignore[attr-defined]
        loc = b.rlocator
        if (loc.spc == key.spc and loc.db == key.db and loc.rel == key.rel
                and b.fork == key.fork and b.blkno == key.blk):
            return int(b.block_id)
    raise RedoError(f"stored WAL record does not reference block {key}")


def _restore_image(data: bytes) -> bytes:
    """An image delta's page, as redo restores an applied image (stamped with
    the record's end LSN unless the page is new)."""
    lsn, end, image = decode_image_delta(data)
    page = bytearray(restore_page(image, lsn=lsn))
    if not page_is_new(page):
        page_set_lsn(page, end)
    return bytes(page)


# The compiled chain (`_pagec.redo_chain`): None when the extension is not built, or
# when a test sets it to None to run the Python reference.
compiled_chain = None if pagec is None else pagec.redo_chain


def _redo_rel_block(key: Key, base: bytes | None, records: list[WalRecord]) -> bytes:
    """A relation page after `records`: runs of heap/heap2 records and uncompressed
    image deltas go through the compiled chain, which stops (page untouched) at the
    first record it does not take;
    that one goes through the Python redo (the reference, which raises every error
    with the record's LSN), and the chain resumes after it. A chain with no base
    that starts with a record initializing the page (a COPY's MULTI_INSERT+INIT)
    starts in C from a page of zeros, as PostgreSQL's redo does; if C does not
    take that record, Python starts from nothing as before."""
    chain = compiled_chain
    datas = [r.data for r in records]
    lsns = [r.lsn for r in records]
    n = len(datas)
    page: bytearray | None = None if base is None else bytearray(base)
    fresh = False  # page is zeros only for the chain's first record
    if page is None and chain is not None and n and is_image_delta(datas[0]):
        page = bytearray(BLCKSZ)  # the chain restores the image over it, or Python does
    elif page is None and chain is not None and n and records[0].will_init:
        page, fresh = bytearray(BLCKSZ), True
    i = 0
    while i < n:
        if chain is not None and page is not None and len(page) == BLCKSZ:
            i = chain(page, datas, lsns, i, key.spc, key.db, key.rel, key.fork, key.blk)
            if i == n:
                break
            if fresh and i == 0:
                page = None  # C left the first record: the reference starts it
        fresh = False
        d = datas[i]
        if is_image_delta(d):
            page = bytearray(_restore_image(d))
        else:
            lsn, end, raw = decode_delta(d, lsns[i])
            rec = decode_record(raw, lsn, end)
            page = redo_block_inplace(rec, _block_id(rec.blocks, key), page)
        i += 1
    if page is None:
        raise RedoError(f"no page for {key}")
    return bytes(page)


def _reconstruct(key: Key, base: bytes | None, records: list[WalRecord]) -> bytes:
    if key.kind == KeyKind.REL_BLOCK:
        return _redo_rel_block(key, base, records)
    if key.kind == KeyKind.SLRU_PAGE:
        cur = apply_values(base, [r.data for r in records])  # images: the bare page
        if cur is None:
            raise RedoError(f"no SLRU page for {key}")
        return cur
    if records:
        raise RedoError(f"key kind {key.kind} takes no deltas ({key})")
    if base is None:
        raise RedoError(f"no value for {key}")
    return base


class Reconstructor:
    """The store's redo (`reconstruct_value`, its one instance): a storage `Redo`, and a
    `scan.WindowRedo` whose `into` builds the relation-page chains of a scan window
    in C (`_pagec.redo_window`: the compiled chain's steps, with no Python object per
    page), leaving to `__call__` (the reference) every chain it does not finish."""

    __slots__ = ()

    def __call__(self, key: Key, base: bytes | None, records: list[WalRecord]) -> bytes:
        """Apply `records` (oldest first) on top of `base` for `key`.

        Raises: RedoError / UnsupportedRecordError from the redo engines.
        """
        return _reconstruct(key, base, records)

    def into(self, dst: memoryview | bytearray, width: int, batch: EntryBatch,
             first: np.ndarray, stop: np.ndarray, slots: np.ndarray,
             base: np.ndarray | None = None) -> np.ndarray:
        """`scan.WindowRedo.into`: True for each chain laid into `dst` in C; none when the
        compiled chain is not built (or a test switched it off to run the reference)."""
        done = np.zeros(len(first), dtype=np.uint8)
        if compiled_chain is None or pagec is None or not len(first):
            return done.view(bool)
        i64 = np.int64
        pagec.redo_window(
            dst, width, tuple(batch.bufs),
            None if batch.buf is None else np.ascontiguousarray(batch.buf, np.uint32),
            np.ascontiguousarray(batch.starts, i64), np.ascontiguousarray(batch.ends, i64),
            np.ascontiguousarray(batch.kinds, np.uint8), np.ascontiguousarray(batch.keys),
            np.ascontiguousarray(batch.lsns, i64),
            np.ascontiguousarray(first, i64), np.ascontiguousarray(stop, i64),
            np.ascontiguousarray(slots, i64), done,
            None if base is None else np.ascontiguousarray(base, i64))
        if width == BLCKSZ:
            _commit_runs_into(memoryview(dst), batch, first, stop, slots, base, done)
        return done.view(bool)


_SLRU = int(KeyKind.SLRU_PAGE)
_PAGE_IMAGE, _RECORD = int(ValueKind.PAGE_IMAGE), int(ValueKind.WAL_RECORD)


def _commit_runs_into(dst: memoryview, batch: EntryBatch, first: np.ndarray, stop: np.ndarray,
                      slots: np.ndarray, base: np.ndarray | None, done: np.ndarray) -> None:
    """The SLRU chains C left whose deltas are all one-xid status values (a CLOG
    page's run of commits: the flush cuts one every `flush_image_interval` commits),
    each in a few numpy steps (`slru.apply_one_slot_rows`, what `apply_values`
    does for such a run) on its image or base page in its slot; done[c] = 1 for
    each. Any other chain is left as it is."""
    key_kind = batch.keys.view(np.uint8).reshape(-1, KEY_SIZE)[:, 0]
    kinds, lengths = batch.kinds, batch.lengths
    for c in np.flatnonzero((done == 0) & (key_kind[first] == _SLRU)).tolist():
        a, z, s = int(first[c]), int(stop[c]), int(slots[c])
        bc = -1 if base is None else int(base[c])
        if bc == -1 and (kinds[a] != _PAGE_IMAGE or lengths[a] != BLCKSZ):
            continue  # no page to start from here: the reference decides
        if (bc >= 0 and bc != c and not done[bc]) or not (
                (kinds[a + (bc == -1):z] == _RECORD).all()
                and (lengths[a + (bc == -1):z] == ONE_SLOT).all()):
            continue
        page = np.frombuffer(dst[s * BLCKSZ:(s + 1) * BLCKSZ], dtype=np.uint8)
        rows = batch.slice(a + (bc == -1), z).values_joined()[0]
        run = np.frombuffer(rows, dtype=np.uint8).reshape(-1, ONE_SLOT)
        if bc == -1:
            page[:] = np.frombuffer(batch.value_at(a), dtype=np.uint8)
        elif bc != c:
            t = int(slots[bc])
            page[:] = np.frombuffer(dst[t * BLCKSZ:(t + 1) * BLCKSZ], dtype=np.uint8)
        done[c] = apply_one_slot_rows(page, run)  # False: another op, the slot is scratch


reconstruct_value = Reconstructor()
