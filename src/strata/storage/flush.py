"""Flush: the oldest frozen memtable becomes an L0 delta layer, and durable_lsn
moves to its end.

Fed by: the writer (PageStore.flush, its background flush worker). Feeds: new
L0 layers, for reads and compaction. Owns: the chain cut at flush
(FORMAT.md "Chains cut at flush", invariant 14): every
`flush_image_interval`-th delta of a key's unbroken chain is replaced by the
page it produces.
"""

from __future__ import annotations

from collections.abc import Iterator

from strata.errors import RedoError, UnsupportedRecordError
from strata.key import Key
from strata.storage import commit
from strata.storage.layerfile import LayerWriter, add_all
from strata.storage.layermap import ReadStats, read_key
from strata.storage.manifest import LayerEntry, Level
from strata.storage.naming import LayerName
from strata.storage.store import LayerStore
from strata.storage.values import Entry, PageImage, Tombstone, WalRecord


def cut_long_chains(store: LayerStore, entries: list[Entry]) -> Iterator[Entry]:
    """The entries of a frozen memtable, in order, with every
    `flush_image_interval`-th delta of a key's unbroken chain replaced by the
    page it produces (see StorageConfig.flush_image_interval).

    The page is computed incrementally: the key's value just before its first
    delta here (read through the current view, which still holds this frozen
    memtable) plus the deltas since, so each delta is redone about once. A key
    redo cannot rebuild keeps its deltas.
    """
    k = store.config.flush_image_interval
    if k <= 0:
        yield from entries
        return
    view = store.view()
    stats = ReadStats()
    cur: bytes | None = None
    base: bytes | None = None
    base_known = False
    give_up = False
    pending: list[WalRecord] = []
    pending_start = 0  # LSN of the first delta in `pending` when base is unknown
    for e in entries:
        if e.key != cur:
            cur, base, base_known, give_up, pending = e.key, None, False, False, []
        v = e.value
        if give_up:
            pass
        elif isinstance(v, PageImage):
            base, base_known, pending = v.data, True, []
        elif isinstance(v, Tombstone):
            base, base_known, pending = None, True, []
        elif v.will_init:
            base, base_known, pending = None, True, [v]
        else:
            if not pending:
                pending_start = e.lsn
            pending.append(v)
            if len(pending) >= k:
                key = Key.from_bytes(e.key)
                try:
                    if not base_known:
                        base = read_key(view, key, pending_start - 1, store.redo, stats)
                    page = store.redo(key, base, pending)
                except (UnsupportedRecordError, RedoError):
                    give_up = True  # keep this key's deltas as they are
                else:
                    base, base_known, pending = page, True, []
                    yield Entry(e.key, e.lsn, PageImage(page))
                    continue
        yield e


def flush_one(store: LayerStore) -> bool:
    """Flush the oldest frozen memtable to an L0 layer and commit. Returns: False if none."""
    with store.flush_lock:
        fm = store.oldest_frozen()
        if fm is None:
            return False
        add: tuple[commit.NewLayer, ...] = ()
        span = fm.key_span
        if span is not None:
            name = LayerName.delta(span[0], Key.from_bytes(span[1]).next().to_bytes(),
                                   fm.lsn_start, fm.lsn_end)
            cfg = store.config
            w = LayerWriter(store.directory, block_bytes=cfg.block_bytes,
                            zstd_level=cfg.zstd_level, owner=store.role.value)
            sealed = add_all(w, name, cut_long_chains(store, fm.entries)).seal(name)
            add = (commit.NewLayer(LayerEntry(name, Level.L0, sealed.size), sealed),)
            store.count(flushes=1, bytes_flushed=sealed.size)
        commit.commit(store, commit.Edit("flush", add=add, durable_lsn=fm.lsn_end - 1),
                      drop_frozen=fm)
        return True


def flush_frozen(store: LayerStore) -> None:
    """Flush every frozen memtable, oldest first."""
    while flush_one(store):
        pass
