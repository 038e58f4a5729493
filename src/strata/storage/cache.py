"""A bounded LRU cache of reconstructed pages, keyed by (key, lsn).

Fed by: GetPage@LSN misses. Feeds: GetPage@LSN hits. Owns: nothing durable.
Only results at LSNs at or below ingested_lsn are cached: those can never change
(layers are immutable and compaction/gc never change a read's result).
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from strata.key import Key


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
