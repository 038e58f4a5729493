"""Compaction: every L0 delta layer merged and re-cut into L1 delta layers with
narrow key ranges covering the L0s' whole LSN span.

Fed by: the maintenance worker / process and `strata compact`. Feeds: L1
layers (fewer files per read). Owns: the L0 -> L1 rule that keeps invariant 6
(delta layers covering one key have disjoint LSN ranges): the L0s merged are
all of them, and always newer than every L1.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from strata.storage import commit
from strata.storage.batch import ENTRY_OVERHEAD, EntryBatch
from strata.storage.layerwriter import LayerWriter
from strata.storage.manifest import LayerEntry, Level
from strata.storage.naming import LayerName
from strata.storage.scan import merged_windows
from strata.storage.store import LayerStore


def compact_l0(store: LayerStore, force: bool = False,
               progress: Callable[[int, int], None] | None = None) -> list[LayerName]:
    """Merge every L0 layer and re-cut into L1 layers of ~target_file_bytes with
    narrow key ranges covering the L0s' whole LSN span. Runs when at least
    l0_compaction_trigger L0s exist (or any, with `force`). `progress(done,
    total)`: entries merged so far, of all the L0s hold.

    Returns: the names of the new L1 layers. Raises: MaintenanceStopped (nothing
    committed, no file left) once a stop is requested; EditConflict if the L0s
    were compacted meanwhile.
    """
    with store.maint_lock:
        lm = store.view().layer_map
        l0s = lm.l0()
        cfg = store.config
        if not l0s or (len(l0s) < cfg.l0_compaction_trigger and not force):
            return []
        lsn_start = l0s[0].name.lsn_start
        lsn_end = l0s[-1].name.lsn_end
        ks = min(la.name.key_start for la in l0s)
        ke = max(la.name.key_end for la in l0s)
        existing = {la.name: la.entry.size for la in lm.layers}
        outputs: list[commit.NewLayer] = []

        def writer() -> LayerWriter:
            return LayerWriter(store.directory, block_bytes=cfg.block_bytes,
                               zstd_level=cfg.zstd_level, owner=store.role.value)

        w = writer()
        cur_start = ks
        total, merged = sum(la.file.entry_count for la in l0s), 0
        try:
            for b in merged_windows([la.file for la in l0s], ks, ke):
                store.checkpoint()
                merged += len(b)
                if progress is not None:
                    progress(merged, total)
                while len(b):
                    cut = file_cut(w, b, cfg.target_file_bytes)
                    if cut is None:
                        w.add_batch(b)
                        break
                    w.add_batch(b.slice(0, cut))
                    at = b.key_at(cut)
                    outputs.append(_finish_l1(w, cur_start, at, lsn_start, lsn_end, existing))
                    w, cur_start = writer(), at
                    b = b.slice(cut, len(b))
                    store.checkpoint()
            outputs.append(_finish_l1(w, cur_start, ke, lsn_start, lsn_end, existing))
            store.checkpoint()
        except BaseException:
            w.abort()
            commit.Edit("compact", add=tuple(outputs)).abort()
            raise
        commit.commit(store, commit.Edit("compact", add=tuple(outputs),
                                         remove=frozenset(la.name for la in l0s)))
        store.count(compactions=1, bytes_compacted=sum(o.entry.size for o in outputs))
        return [o.entry.name for o in outputs]


def file_cut(w: LayerWriter, b: EntryBatch, target: int) -> int | None:
    """The row of `b` before which the file `w` writes ends: the first row that finds
    `w` at `target` bytes or more and starts a new key (a key never spans two L1
    files). None: every row of `b` goes into `w`."""
    before = w.raw_bytes + np.concatenate([[0], np.cumsum(b.lengths + ENTRY_OVERHEAD)[:-1]])
    ok = b.order_keys
    new_key = np.empty(len(b), dtype=bool)
    new_key[0] = w.last_key is None or b.key_at(0) != w.last_key
    new_key[1:] = ok[1:] != ok[:-1]
    hit = np.flatnonzero((before >= target) & new_key)
    return int(hit[0]) if len(hit) else None


def _finish_l1(w: LayerWriter, ks: bytes, ke: bytes, ls: int, le: int,
               existing: dict[LayerName, int]) -> commit.NewLayer:
    name = LayerName.delta(ks, ke, ls, le)
    if name in existing:
        # One L0 re-cut into one file of the same ranges: identical entries, keep the file.
        w.abort()
        return commit.NewLayer(LayerEntry(name, Level.L1, existing[name]))
    sealed = w.seal(name)
    return commit.NewLayer(LayerEntry(name, Level.L1, sealed.size), sealed)
