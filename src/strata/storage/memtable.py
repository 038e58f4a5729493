"""The in-memory layer: recent entries not yet in a layer file, as columnar batches.

Fed by: PageStore.put / put_batch (one writer). Feeds: reads (newest data), and,
once frozen, flush to an L0 delta layer. Owns: nothing durable: it has no log of
its own; after a crash ingest re-puts everything above durable_lsn from WAL.

Puts are appended as they come (a batch as is, single puts gathered by a
BatchBuilder) and sorted only when something reads or freezes the memtable:
then the unsorted part becomes a sorted run (`batch.key_order`; rows come in
LSN order), and runs are merged so that each is at least twice the size of the
next newer one (a handful of runs, each entry re-sorted O(log n) times).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np

from strata.storage.batch import ENTRY_OVERHEAD, BatchBuilder, EntryBatch, kind_and_data
from strata.storage.values import Entry, Value


class Memtable:
    """Mutable; its owner checks `size_bytes` against the freeze threshold.

    Invariant: a read sees every put before it; of two puts at the same (key, lsn)
    the later one wins. Thread-safe: one writer, many readers.
    """

    def __init__(self, runs: list[EntryBatch] | None = None) -> None:
        self._lock = threading.Lock()
        self._runs: list[EntryBatch] = runs or []  # sorted, one row per (key, lsn); oldest first
        self._pending: list[EntryBatch] = []  # batches put since the last seal, in order
        self._single = BatchBuilder()
        self.size_bytes = sum(r.nbytes() for r in self._runs)
        self.entry_count = sum(len(r) for r in self._runs)
        self.max_lsn = max((int(r.lsns.max()) for r in self._runs if len(r)), default=-1)

    def put(self, key: bytes, lsn: int, value: Value) -> None:
        self.put_raw(key, lsn, *kind_and_data(value))

    def put_raw(self, key: bytes, lsn: int, kind: int, data: bytes) -> None:
        """One entry, its value as (ValueKind, data)."""
        with self._lock:
            self._single.add_raw(key, lsn, kind, data)
            self.size_bytes += ENTRY_OVERHEAD + len(data)
            self.entry_count += 1
            if lsn > self.max_lsn:
                self.max_lsn = lsn

    def put_batch(self, batch: EntryBatch) -> None:
        """Requires: the batch contract (batch.py); checked by the caller."""
        if not len(batch):
            return
        with self._lock:
            if len(self._single):  # keep put order: single puts first
                self._pending.append(self._single.build())
                self._single = BatchBuilder()
            self._pending.append(batch)
            self.size_bytes += batch.nbytes()
            self.entry_count += len(batch)
            self.max_lsn = max(self.max_lsn, int(batch.lsns[-1]))

    def __len__(self) -> int:
        return self.entry_count

    def _runs_now(self) -> list[EntryBatch]:
        """The sorted runs, after sorting what was put since the last call."""
        with self._lock:
            if len(self._single):
                self._pending.append(self._single.build())
                self._single = BatchBuilder()
            if self._pending:
                runs = self._runs
                runs.append(EntryBatch.concat(self._pending).sorted())
                self._pending = []
                while len(runs) >= 2 and 2 * len(runs[-1]) >= len(runs[-2]):
                    newer = runs.pop()
                    runs.append(EntryBatch.merged([runs.pop(), newer]))
            return list(self._runs)

    def get(self, key: bytes, lo: int, hi: int) -> list[Entry]:
        """Versions of `key` with lo <= lsn < hi, oldest first."""
        found: dict[int, Entry] = {}
        for run in self._runs_now():  # oldest first: a newer run's entry wins
            for i in _rows_between(run, key, lo, hi):
                found[int(run.lsns[i])] = run.entry_at(i)
        return [found[lsn] for lsn in sorted(found)]

    def batch_range(self, start: bytes, end: bytes, lo: int = 0,
                    hi: int = 1 << 63) -> EntryBatch:
        """Entries in [start, end) x [lo, hi), sorted by (key, lsn) (a snapshot)."""
        parts = [r.select(start, end, lo, hi) for r in self._runs_now()]
        parts = [p for p in parts if len(p)]
        if len(parts) <= 1:
            return parts[0] if parts else EntryBatch.empty()
        return EntryBatch.merged(parts)

    def scan(self, start: bytes, end: bytes, lo: int = 0, hi: int = 1 << 63) -> Iterator[Entry]:
        """Entries in [start, end) x [lo, hi), in (key, lsn) order (a snapshot)."""
        return self.batch_range(start, end, lo, hi).entries()

    def freeze(self, lsn_start: int, lsn_end: int, *, awaited: bool = False
               ) -> tuple[FrozenMemtable, Memtable]:
        """Seal the entries below `lsn_end` as the LSN range [lsn_start, lsn_end)
        (`awaited`: see FrozenMemtable).

        Requires: no entry below `lsn_start`; the caller stops putting into this object.
        Returns: the frozen part and a new memtable with the entries at or above lsn_end.
        """
        runs = self._runs_now()
        every = EntryBatch.merged(runs)
        if len(every) and int(every.lsns.min()) < lsn_start:
            raise ValueError(f"entry at {int(every.lsns.min()):X} below frozen range start "
                             f"{lsn_start:X}")
        below = every.lsns < lsn_end
        frozen = every.take(below) if not below.all() else every
        rest = every.take(~below)
        return (FrozenMemtable(frozen, lsn_start, lsn_end, awaited=awaited),
                Memtable([rest] if len(rest) else None))


class FrozenMemtable:
    """An immutable memtable awaiting flush: one batch sorted by (key, lsn). Safe for
    many readers."""

    def __init__(self, batch: EntryBatch, lsn_start: int, lsn_end: int, *,
                 awaited: bool = False) -> None:
        self.batch = batch
        self.lsn_start = lsn_start
        self.lsn_end = lsn_end
        self.size_bytes = batch.nbytes()
        # sealed on demand (a flush someone waits for), not because it filled up while
        # ingest went on: its flush may take a second core (flush.cut_in_parts)
        self.awaited = awaited

    def __len__(self) -> int:
        return len(self.batch)

    def get(self, key: bytes, lo: int, hi: int) -> list[Entry]:
        return [self.batch.entry_at(i) for i in _rows_between(self.batch, key, lo, hi)]

    def batch_range(self, start: bytes, end: bytes, lo: int = 0,
                    hi: int = 1 << 63) -> EntryBatch:
        return self.batch.select(start, end, lo, hi)

    def scan(self, start: bytes, end: bytes, lo: int = 0, hi: int = 1 << 63) -> Iterator[Entry]:
        return self.batch_range(start, end, lo, hi).entries()

    @property
    def key_span(self) -> tuple[bytes, bytes] | None:
        """(smallest key, largest key) or None when empty."""
        if not len(self.batch):
            return None
        return self.batch.key_at(0), self.batch.key_at(len(self.batch) - 1)


def _rows_between(b: EntryBatch, key: bytes, lo: int, hi: int) -> list[int]:
    """Rows of a (key, lsn)-sorted batch holding `key` with lo <= lsn < hi (a hot
    key has thousands of rows: no Python step for those outside)."""
    a, z = b.key_rows(key)
    lsns = b.lsns[a:z]
    return (np.flatnonzero((lsns >= lo) & (lsns < hi)) + a).tolist()  # type: ignore[no-any-return]
