"""Retention and garbage collection: retention_lsn rises to a horizon, and layers
no read at or above it can need are removed.

Fed by: the maintenance worker / process (a horizon from
`retention_lsn_distance`), PageStore.set_retention_lsn and `strata gc`.
Feeds: a smaller store; reads below retention_lsn then raise. Owns: the rule
of what may be removed (FORMAT.md invariant 8): a delta only when images in
[its newest LSN, horizon] cover its keys; an image only when newer images at
or below the horizon cover it.
"""

from __future__ import annotations

from strata.storage import commit
from strata.storage.images import floor_lsn, make_images
from strata.storage.layermap import LayerMap, covers
from strata.storage.naming import LayerName
from strata.storage.store import LayerStore


def horizon(store: LayerStore) -> int | None:
    """durable_lsn - retention_lsn_distance, or None when all history is kept."""
    d = store.config.retention_lsn_distance
    if d is None:
        return None
    return max(0, store.manifest.durable_lsn - d)


def gc(store: LayerStore, horizon_lsn: int | None = None,
       make_horizon_images: bool = True) -> list[LayerName]:
    """Raise retention_lsn to `horizon_lsn` (default durable_lsn - retention distance)
    and remove layers no read at or above it can need: deltas wholly at or below it
    whose keys images at [their newest LSN, horizon] cover, and images hidden by newer
    images at or below it. With `make_horizon_images`, first writes images at the
    horizon where deltas wholly below it are not yet covered.

    Returns: names of the removed layers. Reads below retention_lsn then raise
    LsnOutOfRangeError.
    """
    with store.maint_lock:
        h = horizon(store) if horizon_lsn is None else horizon_lsn
        if h is None:
            return []
        m = store.manifest
        h = min(h, m.durable_lsn)
        h = max(h, m.retention_lsn)
        if h > m.retention_lsn:
            store.checkpoint()
            commit.commit(store, commit.Edit("retention", retention_lsn=h))
        lm = store.view().layer_map
        if make_horizon_images:
            need: list[tuple[bytes, bytes]] = []
            for d in lm.deltas:
                n = d.name
                if n.lsn_end - 1 <= h and not covered(lm, n.key_start, n.key_end,
                                                      n.lsn_end - 1, h):
                    need.append((n.key_start, n.key_end))
            for s, e in merge_ranges(need):
                if floor_lsn(store.view().layer_map, s, e, h) < h:
                    make_images(store, s, e, h)
            lm = store.view().layer_map
        remove = removable(lm, h)
        if not remove:
            return []
        store.checkpoint()
        commit.commit(store, commit.Edit("gc", remove=frozenset(remove)))
        return sorted(remove)


def removable(lm: LayerMap, h: int) -> set[LayerName]:
    """Layers of `lm` that no read at or above `h` needs."""
    remove: set[LayerName] = set()
    for d in lm.deltas:
        n = d.name
        if n.lsn_end - 1 <= h and covered(lm, n.key_start, n.key_end, n.lsn_end - 1, h):
            remove.add(n)
    for im in lm.images:
        n = im.name
        if n.image_lsn < h and covered(lm, n.key_start, n.key_end, n.image_lsn + 1, h):
            remove.add(n)
    return remove


def covered(lm: LayerMap, start: bytes, end: bytes, lo: int, hi: int) -> bool:
    """True if image layers with LSN in [lo, hi] cover [start, end)."""
    ranges = [(im.name.key_start, im.name.key_end) for im in lm.images
              if lo <= im.name.image_lsn <= hi]
    return covers(start, end, ranges)


def merge_ranges(ranges: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    out: list[tuple[bytes, bytes]] = []
    for s, e in sorted(ranges):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out
