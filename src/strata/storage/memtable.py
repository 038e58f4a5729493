"""The in-memory layer: recent entries not yet in a layer file.

Fed by: PageStore.put (one writer). Feeds: reads (newest data), and, once
frozen, flush to an L0 delta layer. Owns: nothing durable: it has no log of
its own; after a crash ingest re-puts everything above durable_lsn from WAL.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterator

from strata.storage.values import Entry, Value, entry_size


class Memtable:
    """Mutable, bounded by `size_bytes` checks done by its owner.

    Invariant: per key, versions are kept in increasing LSN order; a second put at
    the same (key, lsn) replaces the first. Thread-safe: one writer, many readers.
    """

    def __init__(self) -> None:
        self._data: dict[bytes, list[tuple[int, Value]]] = {}
        self._lock = threading.Lock()
        self.size_bytes = 0
        self.entry_count = 0
        self.max_lsn = -1

    def put(self, key: bytes, lsn: int, value: Value) -> None:
        size = entry_size(value)
        with self._lock:
            versions = self._data.get(key)
            if versions is None:
                self._data[key] = [(lsn, value)]
            elif versions[-1][0] < lsn:
                versions.append((lsn, value))
            else:
                i = bisect.bisect_left(versions, lsn, key=lambda v: v[0])
                if i < len(versions) and versions[i][0] == lsn:
                    self.size_bytes -= entry_size(versions[i][1])
                    self.entry_count -= 1
                    versions[i] = (lsn, value)
                else:
                    versions.insert(i, (lsn, value))
            self.size_bytes += size
            self.entry_count += 1
            if lsn > self.max_lsn:
                self.max_lsn = lsn

    def __len__(self) -> int:
        return self.entry_count

    def get(self, key: bytes, lo: int, hi: int) -> list[Entry]:
        """Versions of `key` with lo <= lsn < hi, oldest first."""
        with self._lock:
            versions = self._data.get(key)
            if not versions:
                return []
            return [Entry(key, lsn, v) for lsn, v in versions if lo <= lsn < hi]

    def scan(self, start: bytes, end: bytes, lo: int = 0, hi: int = 1 << 64) -> Iterator[Entry]:
        """Entries in [start, end) x [lo, hi), in (key, lsn) order (a snapshot)."""
        with self._lock:
            keys = sorted(k for k in self._data if start <= k < end)
            snap = [(k, list(self._data[k])) for k in keys]
        for k, versions in snap:
            for lsn, v in versions:
                if lo <= lsn < hi:
                    yield Entry(k, lsn, v)

    def freeze(self, lsn_start: int, lsn_end: int) -> tuple[FrozenMemtable, Memtable]:
        """Seal the entries below `lsn_end` as the LSN range [lsn_start, lsn_end).

        Requires: no entry below `lsn_start`; the caller stops putting into this object.
        Returns: the frozen part and a new memtable with the entries at or above lsn_end.
        """
        rest = Memtable()
        with self._lock:
            items = sorted(self._data.items())
        entries: list[Entry] = []
        for k, versions in items:
            for lsn, v in versions:
                if lsn < lsn_start:
                    raise ValueError(f"entry at {lsn:X} below frozen range start {lsn_start:X}")
                if lsn < lsn_end:
                    entries.append(Entry(k, lsn, v))
                else:
                    rest.put(k, lsn, v)
        return FrozenMemtable(entries, lsn_start, lsn_end, self.size_bytes - rest.size_bytes), rest


class FrozenMemtable:
    """An immutable, sorted memtable awaiting flush. Safe for many readers."""

    def __init__(self, entries: list[Entry], lsn_start: int, lsn_end: int, size_bytes: int) -> None:
        self.entries = entries
        self.lsn_start = lsn_start
        self.lsn_end = lsn_end
        self.size_bytes = size_bytes
        self._positions = [(e.key, e.lsn) for e in entries]

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, key: bytes, lo: int, hi: int) -> list[Entry]:
        i = bisect.bisect_left(self._positions, (key, lo))
        out: list[Entry] = []
        while i < len(self.entries):
            e = self.entries[i]
            if e.key != key or e.lsn >= hi:
                break
            out.append(e)
            i += 1
        return out

    def scan(self, start: bytes, end: bytes, lo: int = 0, hi: int = 1 << 64) -> Iterator[Entry]:
        i = bisect.bisect_left(self._positions, (start, 0))
        entries = self.entries
        while i < len(entries):
            e = entries[i]
            if e.key >= end:
                break
            if lo <= e.lsn < hi:
                yield e
            i += 1

    @property
    def key_span(self) -> tuple[bytes, bytes] | None:
        """(smallest key, largest key) or None when empty."""
        if not self.entries:
            return None
        return self.entries[0].key, self.entries[-1].key
