"""The store's bounded in-memory caches: reconstructed pages (`PageCache`) and
decoded layer blocks at the edges of range reads (`BlockCache`).

Fed by: GetPage@LSN misses; `LayerFile.block_batch`. Feeds: GetPage@LSN hits;
range reads of the same block again. Owns: nothing durable.
Only page results at LSNs at or below ingested_lsn are cached: those can never
change (layers are immutable and compaction/gc never change a read's result).
A layer block never changes either: its key names the file by identity (device,
inode, mtime, size), not by name.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

from strata.key import Key
from strata.storage.batch import EntryBatch

V = TypeVar("V")


class PageCache:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._d: OrderedDict[tuple[Key, int], bytes | None] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Key, lsn: int) -> tuple[bool, bytes | None]:
        """Returns: (hit, value); value None means "key absent at lsn"."""
        with self._lock:
            try:
                v = self._d[(key, lsn)]
            except KeyError:
                return False, None
            self._d.move_to_end((key, lsn))
            return True, v

    def put(self, key: Key, lsn: int, value: bytes | None) -> None:
        if self.capacity <= 0:
            return
        with self._lock:
            self._d[(key, lsn)] = value
            self._d.move_to_end((key, lsn))
            while len(self._d) > self.capacity:
                self._d.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._d.clear()

    def __len__(self) -> int:
        return len(self._d)


class BlockCache(Generic[V]):
    """Decoded blocks, least recently used out first once their raw bytes pass
    `limit`. One per process (`BLOCKS`), shared by every open layer file: a range
    read decodes the blocks inside its range together and keeps the ones at its
    edges here, since the next window of a scan starts inside the same block of
    each layer it reads. Bounded, so the memory does not grow with the number of
    layers a long-lived process has read (before, each open file kept its last
    edge block: thousands of layers times a 256 KiB block)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._d: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> V | None:
        """The block held under `key`, or None."""
        with self._lock:
            hit = self._d.get(key)
            if hit is None:
                return None
            self._d.move_to_end(key)
            return hit[0]

    def put(self, key: Hashable, block: V, size: int) -> None:
        """Hold `block` (`size` raw bytes) under `key`; a block above the limit is not
        held."""
        with self._lock:
            old = self._d.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            if size > self.limit:
                return
            self._d[key] = (block, size)
            self._bytes += size
            while self._bytes > self.limit:
                _, (_, gone) = self._d.popitem(last=False)
                self._bytes -= gone

    def resize(self, limit: int) -> None:
        """A new bound; blocks beyond it go at once."""
        with self._lock:
            self.limit = limit
            while self._bytes > self.limit and self._d:
                _, (_, gone) = self._d.popitem(last=False)
                self._bytes -= gone

    @property
    def held_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._d)


# the process's block cache; `LayerStore` sets its bound (`StorageConfig.block_cache_bytes`)
BLOCKS: BlockCache[EntryBatch] = BlockCache(32 << 20)
