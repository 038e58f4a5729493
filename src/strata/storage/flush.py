"""Flush: the oldest frozen memtable becomes an L0 delta layer, and durable_lsn
moves to its end.

Fed by: the writer (PageStore.flush, its background flush worker). Feeds: new
L0 layers, for reads and compaction. Owns: the chain cut at flush
(FORMAT.md "Chains cut at flush", invariant 14): every
`flush_image_interval`-th delta of a key's unbroken chain is replaced by the
page it produces.
"""

from __future__ import annotations

import logging

import numpy as np

from strata.errors import RedoError, UnsupportedRecordError
from strata.key import Key
from strata.lsn import Lsn
from strata.progress import Laps
from strata.storage import commit
from strata.storage.batch import EntryBatch
from strata.storage.layerfile import LayerWriter
from strata.storage.layermap import ReadStats, read_key
from strata.storage.manifest import LayerEntry, Level
from strata.storage.naming import LayerName
from strata.storage.store import LayerStore
from strata.storage.values import ValueKind, WalRecord

log = logging.getLogger(__name__)

_IMAGE = int(ValueKind.PAGE_IMAGE)
_RECORD = int(ValueKind.WAL_RECORD)
_INIT = int(ValueKind.WAL_RECORD_INIT)


def cut_long_chains(store: LayerStore, b: EntryBatch) -> EntryBatch:
    """The rows of a frozen memtable's batch (sorted by (key, lsn)) with every
    `flush_image_interval`-th delta of a key's unbroken chain replaced by the page it
    produces (see StorageConfig.flush_image_interval).

    The cut rows are found column-wise: a key's pending-record count restarts at 0
    after an image or tombstone and at 1 with a will_init record, and a plain delta
    whose count reaches a multiple of the interval is cut. Only the cut rows cost
    Python work: the page is computed incrementally (the key's value just before
    its first delta here, read through the current view, which still holds this
    frozen memtable, plus the deltas since), so each delta is redone about once. A
    key redo cannot rebuild keeps its deltas.
    """
    k = store.config.flush_image_interval
    if k <= 0 or len(b) == 0:
        return b
    cuts, head, last = _cut_rows(b, k)
    if len(cuts) == 0:
        return b
    kinds = b.kinds
    view = store.view()
    stats = ReadStats()
    rows: list[int] = []
    pages: list[bytes] = []
    prev_cut = -1  # last cut row of the current stretch, or -1
    prev_page: bytes | None = None
    give_up_key = -1  # key start of a key redo failed for
    for p in cuts.tolist():
        h, r = int(head[p]), int(last[p])
        if h == give_up_key:
            continue
        key = Key.from_bytes(b.key_at(p))
        if prev_cut > r and prev_cut >= h:  # the stretch already had a cut: go on from it
            base, first = prev_page, prev_cut + 1
        elif r >= h and kinds[r] != _INIT:  # after an image (its value) or a tombstone
            base = b.value_at(r) if kinds[r] == _IMAGE else None
            first = r + 1
        elif r >= h:  # a will_init record starts the chain
            base, first = None, r
        else:  # nothing of this key below here: its value before the first delta
            base, first = None, h
        recs = list(map(WalRecord, b.values_in(first, p + 1),
                        (kinds[first:p + 1] == _INIT).tolist()))
        try:
            if r < h and prev_cut < h:
                base = read_key(view, key, int(b.lsns[h]) - 1, store.redo, stats)
            page = store.redo(key, base, recs)
        except (UnsupportedRecordError, RedoError):
            give_up_key = h  # keep this key's deltas as they are
            continue
        rows.append(p)
        pages.append(page)
        prev_cut, prev_page = p, page
    return b.with_values(np.array(rows, dtype=np.int64), _IMAGE, pages)


def _cut_rows(b: EntryBatch, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows to cut, each row's key start, each row's last chain restart at or before
    it in its key, or key start - 1) of a (key, lsn)-sorted batch."""
    n = len(b)
    ok, kinds = b.order_keys, b.kinds
    idx = np.arange(n)
    heads = np.flatnonzero(np.concatenate([[True], ok[1:] != ok[:-1]]))
    head = np.repeat(heads, np.diff(np.concatenate([heads, [n]])))
    last = np.maximum.accumulate(np.where(kinds != _RECORD, idx, -1))
    last = np.where(last >= head, last, head - 1)
    # pending records at each row: after an image or tombstone the count starts at 0,
    # with a will_init record at 1, and with nothing of the key below at 0 before it
    count = idx - last + ((last >= head) & (kinds[np.maximum(last, 0)] == _INIT))
    return np.flatnonzero((kinds == _RECORD) & (count % k == 0)), head, last


def flush_one(store: LayerStore) -> bool:
    """Flush the oldest frozen memtable to an L0 layer and commit. Returns: False if none."""
    with store.flush_lock:
        fm = store.oldest_frozen()
        if fm is None:
            return False
        laps = Laps()
        add: tuple[commit.NewLayer, ...] = ()
        span = fm.key_span
        if span is not None:
            name = LayerName.delta(span[0], Key.from_bytes(span[1]).next().to_bytes(),
                                   fm.lsn_start, fm.lsn_end)
            cfg = store.config
            w = LayerWriter(store.directory, block_bytes=cfg.block_bytes,
                            zstd_level=cfg.zstd_level, owner=store.role.value)
            try:
                batch = cut_long_chains(store, fm.batch)
                laps("cut")
                w.add_batch(batch)
            except BaseException:
                w.abort()
                raise
            sealed = w.seal(name)
            laps("write")
            add = (commit.NewLayer(LayerEntry(name, Level.L0, sealed.size), sealed),)
            store.count(flushes=1, bytes_flushed=sealed.size)
        commit.commit(store, commit.Edit("flush", add=add, durable_lsn=fm.lsn_end - 1),
                      drop_frozen=fm)
        laps("commit")
        log.info("flushed %d entries (%.1f MiB) through %s: %s", len(fm.batch),
                 fm.batch.nbytes() / 2**20, Lsn(fm.lsn_end - 1), laps)
        return True


def flush_frozen(store: LayerStore) -> None:
    """Flush every frozen memtable, oldest first."""
    while flush_one(store):
        pass
