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
from strata.storage.layerfile import LayerWriter
from strata.storage.manifest import LayerEntry, Level
from strata.storage.naming import LayerName
from strata.storage.store import LayerStore


def compact_l0(store: LayerStore, force: bool = False) -> list[LayerName]:
    """Merge every L0 layer and re-cut into L1 layers of ~target_file_bytes with
    narrow key ranges covering the L0s' whole LSN span. Runs when at least
    l0_compaction_trigger L0s exist (or any, with `force`).

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
        merged = heapq.merge(*(la.file.scan(ks, ke) for la in l0s),
                             key=lambda e: (e.key, e.lsn))
        existing = {la.name: la.entry.size for la in lm.layers}
        outputs: list[commit.NewLayer] = []

        def writer() -> LayerWriter:
            return LayerWriter(store.directory, block_bytes=cfg.block_bytes,
                               zstd_level=cfg.zstd_level, owner=store.role.value)

        w = writer()
        cur_start = ks
        try:
            for i, e in enumerate(merged):
                if i % CHECK_EVERY == 0:
                    store.checkpoint()
                if w.raw_bytes >= cfg.target_file_bytes and e.key != w.last_key:
                    outputs.append(_finish_l1(w, cur_start, e.key, lsn_start, lsn_end, existing))
                    w = writer()
                    cur_start = e.key
                w.add(e)
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


# entries merged between two checkpoints (stop requests, CPU pacing)
CHECK_EVERY = 256


def _finish_l1(w: LayerWriter, ks: bytes, ke: bytes, ls: int, le: int,
               existing: dict[LayerName, int]) -> commit.NewLayer:
    name = LayerName.delta(ks, ke, ls, le)
    if name in existing:
        # One L0 re-cut into one file of the same ranges: identical entries, keep the file.
        w.abort()
        return commit.NewLayer(LayerEntry(name, Level.L1, existing[name]))
    sealed = w.seal(name)
    return commit.NewLayer(LayerEntry(name, Level.L1, sealed.size), sealed)
