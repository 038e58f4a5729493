"""Compaction: every L0 delta layer merged and re-cut into L1 delta layers with
narrow key ranges covering the L0s' whole LSN span.

Fed by: the maintenance worker / process and `strata compact`. Feeds: L1
layers (fewer files per read). Owns: the L0 -> L1 rule that keeps invariant 6
(delta layers covering one key have disjoint LSN ranges): the L0s merged are
all of them, and always newer than every L1.
"""

from __future__ import annotations

import heapq

from strata.storage import commit
from strata.storage.layerfile import LayerWriter, open_layer
from strata.storage.layermap import Layer
from strata.storage.manifest import LayerEntry, Level
from strata.storage.naming import LayerName
from strata.storage.store import LayerStore


def compact_l0(store: LayerStore, force: bool = False) -> list[LayerName]:
    """Merge every L0 layer and re-cut into L1 layers of ~target_file_bytes with
    narrow key ranges covering the L0s' whole LSN span. Runs when at least
    l0_compaction_trigger L0s exist (or any, with `force`).

    Returns: the names of the new L1 layers.
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
        merged = heapq.merge(*(la.file.scan(ks, ke) for la in l0s),
                             key=lambda e: (e.key, e.lsn))
        existing = {la.name for la in lm.layers}
        outputs: list[LayerEntry] = []
        w = LayerWriter(store.directory, block_bytes=cfg.block_bytes, zstd_level=cfg.zstd_level)
        cur_start = ks
        try:
            for e in merged:
                if w.raw_bytes >= cfg.target_file_bytes and e.key != w.last_key:
                    outputs.append(_finish_l1(store, w, cur_start, e.key, lsn_start, lsn_end,
                                              existing))
                    w = LayerWriter(store.directory, block_bytes=cfg.block_bytes,
                                    zstd_level=cfg.zstd_level)
                    cur_start = e.key
                w.add(e)
            outputs.append(_finish_l1(store, w, cur_start, ke, lsn_start, lsn_end, existing))
        except BaseException:
            w.abort()
            raise
        add = [Layer(le, open_layer(store.directory / le.name.filename())) for le in outputs]
        gone = commit.commit(store, "compact", add=add, remove={la.name for la in l0s})
        commit.retire(store, gone)
        store.count(compactions=1, bytes_compacted=sum(le.size for le in outputs))
        return [le.name for le in outputs]


def _finish_l1(store: LayerStore, w: LayerWriter, ks: bytes, ke: bytes, ls: int, le: int,
               existing: set[LayerName]) -> LayerEntry:
    name = LayerName.delta(ks, ke, ls, le)
    if name in existing:
        # One L0 re-cut into one file of the same ranges: identical entries, keep the file.
        w.abort()
        size = (store.directory / name.filename()).stat().st_size
        return LayerEntry(name, Level.L1, size)
    return LayerEntry(name, Level.L1, w.finish(name).size)
