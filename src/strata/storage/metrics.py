"""Counters of one open store: puts, reads (read amplification), bytes written.

Fed by: LayerStore (under its metrics lock). Feeds: PageStore.metrics(), the
benchmark, `strata status`. Owns: nothing durable (counters restart at open).
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(slots=True)
class StoreMetrics:
    """Counters since open. Write amplification = (flushed + compacted + imaged) / put."""

    entries_put: int = 0
    bytes_put: int = 0
    gets: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    layers_visited: int = 0
    deltas_applied: int = 0
    redo_calls: int = 0
    flushes: int = 0
    bytes_flushed: int = 0
    compactions: int = 0
    bytes_compacted: int = 0
    image_layers_created: int = 0
    bytes_imaged: int = 0
    image_blocks_copied: int = 0  # image blocks copied whole into a newer image layer
    layers_removed: int = 0

    def snapshot(self) -> StoreMetrics:
        return replace(self)
