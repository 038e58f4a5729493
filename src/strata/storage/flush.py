"""Flush: the oldest frozen memtable becomes an L0 delta layer, and durable_lsn
moves to its end.

Fed by: the writer (PageStore.flush, its background flush worker). Feeds: new
L0 layers, for reads and compaction. Owns: the chain cut at flush
(FORMAT.md "Chains cut at flush", invariant 14): every
`flush_image_interval`-th delta of a key's unbroken chain is replaced by the
page it produces.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Generator
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from strata.errors import RedoError, UnsupportedRecordError
from strata.key import Key
from strata.lsn import Lsn
from strata.progress import Laps
from strata.storage import commit
from strata.storage.batch import ENTRY_OVERHEAD, EntryBatch
from strata.storage.layermap import ReadStats, read_key
from strata.storage.layerwriter import LayerWriter
from strata.storage.manifest import LayerEntry, Level
from strata.storage.naming import LayerName
from strata.storage.scan import SLOT_BYTES, WindowRedo
from strata.storage.store import LayerStore
from strata.storage.values import ValueKind, WalRecord

log = logging.getLogger(__name__)

_IMAGE = int(ValueKind.PAGE_IMAGE)
_RECORD = int(ValueKind.WAL_RECORD)
_INIT = int(ValueKind.WAL_RECORD_INIT)
_TOMBSTONE = int(ValueKind.TOMBSTONE)


# A frozen memtable of more raw bytes than this is cut and written in parts of about
# this size, split between keys: while ingest is idle, a helper thread cuts the next
# part while the writer encodes and compresses this one (both mostly without the GIL).
CUT_PART_BYTES = 16 << 20
# ... for a memtable someone waits for (sealed on demand: the idle flush at the end of a
# burst, a flush through a point), or once ingest has put nothing for this long (s); a
# memtable that filled up while ingest goes on is cut whole in the flush thread, where
# a second thread would only take CPU from ingest
INGEST_IDLE = 0.05


def cut_long_chains(store: LayerStore, b: EntryBatch) -> EntryBatch:
    """The rows of a frozen memtable's batch (sorted by (key, lsn)) with every
    `flush_image_interval`-th delta of a key's unbroken chain replaced by the page it
    produces (see StorageConfig.flush_image_interval).

    The cut rows are found column-wise: a key's pending-record count restarts at 0
    after an image or tombstone and at 1 with a will_init record, and a plain delta
    whose count reaches a multiple of the interval is cut. Each cut's page is
    computed incrementally: from the key's previous cut in the same stretch (the
    rows from one restart of the key's chain to the next), else from the stretch's
    image, tombstone or will_init record, else from the key's value just before its
    first delta here (read through the current view, which still holds this frozen
    memtable), so each delta is redone about once. When the store's redo is a
    `scan.WindowRedo`, every cut is built in one `into` call (chains on a base page:
    `base`), and `__call__` builds only those it leaves. A stretch redo fails for
    keeps its deltas from there on. Memory: one `SLOT_BYTES` slot per cut (a 64 MiB
    memtable has at most a few thousand).
    """
    k = store.config.flush_image_interval
    if k <= 0 or len(b) == 0:
        return b
    cuts, head, last = _cut_rows(b, k)
    if len(cuts) == 0:
        return b
    first, base, stretch = _cut_chains(cuts, head, last)
    dst = bytearray(len(cuts) * SLOT_BYTES)
    pages, given_up = _read_bases(store, b, cuts, head, base, dst)
    done = _cuts_in_one_call(store, b, cuts, first, base, stretch, pages, dst,
                             np.isin(stretch, list(given_up)))
    for c in [c for c in pages if done[c]]:
        del pages[c]  # built in its slot: pages holds only what Python builds
    ok = _cuts_one_by_one(store, b, cuts, first, base, stretch, done, pages, dst, given_up)
    keep = np.flatnonzero(ok)
    return b.with_values(cuts[keep], _IMAGE, [
        pages[c] if c in pages else bytes(dst[c * SLOT_BYTES:(c + 1) * SLOT_BYTES])
        for c in keep.tolist()])


def _read_bases(store: LayerStore, b: EntryBatch, cuts: np.ndarray, head: np.ndarray,
                base: np.ndarray, dst: bytearray) -> tuple[dict[int, bytes], set[int]]:
    """The value below the batch of each chain based on its own slot, read through the
    current view (into its slot too when it fits one): ({chain: value}, the chains it
    could not be read for, each the start of its stretch). A chain with nothing below
    starts at its first row instead (base -1)."""
    view = store.view()
    stats = ReadStats()
    pages: dict[int, bytes] = {}
    given_up: set[int] = set()
    for c in np.flatnonzero(base == np.arange(len(cuts))).tolist():
        key, h = Key.from_bytes(b.key_at(int(cuts[c]))), int(head[cuts[c]])
        try:
            got = read_key(view, key, int(b.lsns[h]) - 1, store.redo, stats)
        except (UnsupportedRecordError, RedoError):
            given_up.add(c)  # keep this stretch's deltas as they are
            continue
        if got is None:
            base[c] = -1
        else:
            pages[c] = got
            if len(got) == SLOT_BYTES:
                dst[c * SLOT_BYTES:(c + 1) * SLOT_BYTES] = got
    return pages, given_up


def _cuts_one_by_one(store: LayerStore, b: EntryBatch, cuts: np.ndarray, first: np.ndarray,
                     base: np.ndarray, stretch: np.ndarray, done: np.ndarray,
                     pages: dict[int, bytes], dst: bytearray, given_up: set[int]
                     ) -> np.ndarray:
    """Which cuts have a page: those built in one call, and those the redo's `__call__`
    builds now (into `pages`), oldest first, each from its base. A stretch redo fails
    for (here or reading its base) keeps its deltas from there on."""
    kinds = b.kinds
    ok = np.zeros(len(cuts), dtype=bool)
    for c in range(len(cuts)):
        s = int(stretch[c])
        if s in given_up:
            continue
        if done[c]:
            ok[c] = True
            continue
        p, bc, f = int(cuts[c]), int(base[c]), int(first[c])
        if bc >= 0:  # this chain's slot, or the stretch's chain before (built)
            page_base: bytes | None = pages[bc] if bc in pages else bytes(
                dst[bc * SLOT_BYTES:(bc + 1) * SLOT_BYTES])
        elif kinds[f] == _IMAGE:
            page_base, f = b.value_at(f), f + 1
        else:
            page_base, f = None, f + (kinds[f] == _TOMBSTONE)
        recs = list(map(WalRecord, b.values_in(f, p + 1),
                        (kinds[f:p + 1] == _INIT).tolist(), b.lsns[f:p + 1].tolist()))
        try:
            pages[c] = store.redo(Key.from_bytes(b.key_at(p)), page_base, recs)
        except (UnsupportedRecordError, RedoError):
            given_up.add(s)
            continue
        ok[c] = True
    return ok


def _cut_chains(cuts: np.ndarray, head: np.ndarray, last: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(first row, base, stretch) of each cut's chain, `base` as `WindowRedo.into`
    takes it: after an earlier cut of the same stretch, rows from that cut's on its
    page (base: that chain); after a restart in the key (image, tombstone, will_init
    record), rows from the restart (base -1); with nothing of the key below, rows
    from the key's first, on the value read below the batch (base: the chain itself).
    `stretch`: the first chain of each chain's stretch."""
    m = len(cuts)
    h, r = head[cuts], last[cuts]
    prev = np.concatenate([[-1], cuts[:-1]])
    after_cut = (prev >= h) & (prev > r)
    idx = np.arange(m, dtype=np.int64)
    first = np.where(after_cut, prev + 1, np.where(r >= h, r, h)).astype(np.int64)
    base = np.where(after_cut, idx - 1, np.where(r >= h, -1, idx)).astype(np.int64)
    stretch = np.maximum.accumulate(np.where(after_cut, 0, idx))
    return first, base, stretch


def _cuts_in_one_call(store: LayerStore, b: EntryBatch, cuts: np.ndarray, first: np.ndarray,
                      base: np.ndarray, stretch: np.ndarray, pages: dict[int, bytes],
                      dst: bytearray, skip: np.ndarray) -> np.ndarray:
    """True for each cut chain the store's `WindowRedo` built into its slot of `dst`
    (none when the redo is not one). The stretches of chains `skip`s, or whose base
    read below is not a slot's size, are left out of the call."""
    m = len(cuts)
    if not isinstance(store.redo, WindowRedo):
        return np.zeros(m, dtype=bool)
    own = np.flatnonzero(base == np.arange(m))
    fit = ~skip
    fit[own] &= np.array([len(pages[c]) == SLOT_BYTES if c in pages else True
                          for c in own.tolist()], dtype=bool)
    sent = fit[stretch]
    sub = np.flatnonzero(sent)
    done = np.zeros(m, dtype=bool)
    if len(sub) == 0:
        return done
    pos = np.cumsum(sent) - 1  # each chain's place among those sent
    sub_base = np.where(base[sub] >= 0, pos[np.maximum(base[sub], 0)], -1)
    done[sub] = store.redo.into(memoryview(dst), SLOT_BYTES, b, first[sub], cuts[sub] + 1,
                                sub, sub_base)
    return done


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


def cut_in_parts(store: LayerStore, b: EntryBatch, part_bytes: int = CUT_PART_BYTES,
                 ahead: Callable[[], bool] = lambda: True
                 ) -> Generator[EntryBatch, None, None]:
    """`cut_long_chains(store, b)` as consecutive parts, in row order: `b` split between
    keys into parts of about `part_bytes` raw bytes. While the caller consumes a part,
    a helper thread cuts the next one if `ahead()` says so then (else the next part is
    cut when it is asked for). Chains never cross keys, so the parts' concatenation
    is what cutting `b` whole gives. A part cut ahead that the caller does not reach
    is finished (and dropped) before the generator closes."""
    bounds = _part_bounds(b, part_bytes)

    def cut(i: int) -> EntryBatch:
        return cut_long_chains(store, b.slice(bounds[i], bounds[i + 1]))

    with ThreadPoolExecutor(1, thread_name_prefix="strata-cut") as helper:
        nxt: Future[EntryBatch] | None = None
        for i in range(len(bounds) - 1):
            part = cut(i) if nxt is None else nxt.result()
            nxt = helper.submit(cut, i + 1) if i + 2 < len(bounds) and ahead() else None
            yield part


def _part_bounds(b: EntryBatch, part_bytes: int) -> list[int]:
    """Row bounds [0, ..., len(b)) of parts of about `part_bytes` raw bytes, each bound
    the first row of a key."""
    n = len(b)
    if n == 0:
        return [0]
    cum = np.cumsum(b.lengths + ENTRY_OVERHEAD)
    parts = int(cum[-1]) // part_bytes
    if parts < 2:
        return [0, n]
    ok = b.order_keys
    # the row holding each part's end, then the first row of the next key (the rows
    # are sorted by key: one binary search each, not a pass over every key)
    want = np.searchsorted(cum, np.arange(1, parts) * (int(cum[-1]) / parts))
    at = np.searchsorted(ok, ok[np.minimum(want, n - 1)], "right")
    return sorted({0, n, *(int(x) for x in at)})


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
                # the next part is cut beside this one's write while ingest is idle
                with contextlib.closing(cut_in_parts(store, fm.batch, ahead=lambda: (
                        fm.awaited or time.monotonic() - store.last_put >= INGEST_IDLE))
                        ) as parts:
                    for part in parts:
                        w.add_batch(part)
            except BaseException:
                w.abort()
                raise
            sealed = w.seal(name)
            laps("cut+write")
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
