"""Store entries as columns: what ingest has produced and not yet handed over.

What it is: `EntryColumns` (many entries: 18-byte keys as a ``V18`` array,
end LSNs, value kinds, and the values back to back with their offsets: the
form of the store's batch contract, storage/batch.py) and `PendingEntries`,
which collects them in WAL order and hands them to the store in one call.
Fed by: `ingest.walingest` (column runs from record batches, single puts from
the records it interprets one by one). Feeds: the page store
(`PageStore.put_batch` with one `EntryBatch`).
Owns: nothing durable (the WAL held by the slot is the log of what is pending).

Invariant: entries leave in the order they were added, which is WAL order, so
their LSNs never decrease (the batch contract's rule); a second entry at the
same (key, LSN) comes later and wins.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from strata.key import KEY_SIZE, Key
from strata.pagestore import PageStore
from strata.storage.batch import EntryBatch
from strata.storage.gather import gather
from strata.storage.values import ValueKind

KEY_DTYPE = np.dtype(f"V{KEY_SIZE}")
# Key.to_bytes as a packed numpy record (big-endian: byte order is key order)
KEY_FIELDS = np.dtype([("kind", "u1"), ("spc", ">u4"), ("db", ">u4"), ("rel", ">u4"),
                       ("fork", "u1"), ("blk", ">u4")])
assert KEY_FIELDS.itemsize == KEY_SIZE
_I64 = np.dtype(np.int64)


@dataclass(frozen=True, slots=True)
class EntryColumns:
    """Entries in put order: value i is ``data[offsets[i]:offsets[i + 1]]``."""

    keys: np.ndarray  # (n,) KEY_DTYPE
    lsns: np.ndarray  # (n,) int64, non-decreasing
    kinds: np.ndarray  # (n,) uint8, a storage ValueKind
    offsets: np.ndarray  # (n + 1,) int64
    data: bytes

    def __len__(self) -> int:
        return len(self.lsns)

    @classmethod
    def of(cls, keys: Sequence[bytes], lsns: Sequence[int], kinds: Sequence[int],
           values: Sequence[bytes]) -> EntryColumns:
        off = np.zeros(len(values) + 1, dtype=_I64)
        np.cumsum([len(v) for v in values], out=off[1:])
        return cls(np.frombuffer(b"".join(keys), dtype=KEY_DTYPE).copy() if keys
                   else np.empty(0, KEY_DTYPE), np.asarray(lsns, dtype=_I64),
                   np.asarray(kinds, dtype=np.uint8), off, b"".join(values))

    def entries(self) -> list[tuple[bytes, int, int, bytes]]:
        """(key bytes, lsn, kind, value) per entry (tests, the put adapter)."""
        raw = self.keys.tobytes()
        off = self.offsets.tolist()
        data = self.data
        return [(raw[KEY_SIZE * i:KEY_SIZE * (i + 1)], lsn, kind, data[off[i]:off[i + 1]])
                for i, (lsn, kind) in enumerate(zip(self.lsns.tolist(), self.kinds.tolist(),
                                                    strict=True))]

    def take(self, idx: np.ndarray) -> EntryColumns:
        """Entries `idx` of these, in that order."""
        idx = np.asarray(idx, dtype=_I64)
        starts = self.offsets[idx]
        lens = self.offsets[idx + 1] - starts
        off = np.zeros(len(idx) + 1, dtype=_I64)
        np.cumsum(lens, out=off[1:])
        data = gather((self.data,), np.zeros(len(idx), dtype=np.uint8), starts, lens)
        return EntryColumns(self.keys[idx], self.lsns[idx], self.kinds[idx], off, data)

    def insert(self, at: np.ndarray, other: EntryColumns) -> EntryColumns:
        """These entries with `other`'s entry k placed before entry ``at[k]`` of
        these (``at`` non-decreasing; equal positions keep `other`'s order)."""
        if not len(other):
            return self
        if not len(self):
            return other
        n, m = len(self), len(other)
        pos = at + np.arange(m)  # final positions of other's entries
        src = np.zeros(n + m, dtype=np.uint8)
        src[pos] = 1
        mine = np.flatnonzero(src == 0)
        keys = np.empty(n + m, dtype=KEY_DTYPE)
        lsns = np.empty(n + m, dtype=_I64)
        kinds = np.empty(n + m, dtype=np.uint8)
        starts = np.empty(n + m, dtype=_I64)
        for out, a, b in ((keys, self.keys, other.keys), (lsns, self.lsns, other.lsns),
                          (kinds, self.kinds, other.kinds), (starts, self.offsets[:-1],
                                                             other.offsets[:-1])):
            out[mine] = a
            out[pos] = b
        lens = np.empty(n + m, dtype=_I64)
        lens[mine] = np.diff(self.offsets)
        lens[pos] = np.diff(other.offsets)
        off = np.zeros(n + m + 1, dtype=_I64)
        np.cumsum(lens, out=off[1:])
        return EntryColumns(keys, lsns, kinds, off, gather((self.data, other.data), src, starts,
                                                           lens))


def concat(cols: Sequence[EntryColumns]) -> EntryColumns:
    cols = [c for c in cols if len(c)]
    if len(cols) == 1:
        return cols[0]
    if not cols:
        return EntryColumns.of([], [], [], [])
    bases = np.cumsum([0] + [len(c.data) for c in cols[:-1]])
    offsets = np.concatenate([c.offsets[:-1] + b for c, b in zip(cols, bases, strict=True)]
                             + [np.array([sum(len(c.data) for c in cols)], dtype=_I64)])
    return EntryColumns(np.concatenate([c.keys for c in cols]),
                        np.concatenate([c.lsns for c in cols]),
                        np.concatenate([c.kinds for c in cols]), offsets,
                        b"".join(c.data for c in cols))


def put_columns(store: PageStore, runs: Sequence[EntryColumns]) -> None:
    """Hand `runs` (in order) to the store as one `EntryBatch`; each run's values stay
    in their own buffer (not copied into one)."""
    runs = [c for c in runs if len(c)]
    if runs:
        store.put_batch(EntryBatch.concat([
            EntryBatch.from_offsets(c.keys, c.lsns, c.kinds, c.offsets, c.data) for c in runs]))


class PendingEntries:
    """Entries collected in WAL order until `flush` hands them to the store."""

    def __init__(self, store: PageStore) -> None:
        self.store = store
        self._runs: list[EntryColumns] = []
        # single puts since the last run, as plain lists (cheap to append)
        self._keys: list[bytes] = []
        self._lsns: list[int] = []
        self._kinds: list[int] = []
        self._values: list[bytes] = []
        self.count = 0  # entries put since creation

    def __len__(self) -> int:
        return sum(len(r) for r in self._runs) + len(self._lsns)

    def put(self, key: Key, lsn: int, kind: ValueKind | int, value: bytes) -> None:
        self._keys.append(key.to_bytes())
        self._lsns.append(lsn)
        self._kinds.append(int(kind))
        self._values.append(value)
        self.count += 1

    def _close_singles(self) -> None:
        if self._lsns:
            self._runs.append(EntryColumns.of(self._keys, self._lsns, self._kinds, self._values))
            self._keys, self._lsns, self._kinds, self._values = [], [], [], []

    def add(self, cols: EntryColumns) -> None:
        if len(cols):
            self._close_singles()
            self._runs.append(cols)
            self.count += len(cols)

    def flush(self) -> None:
        """Hand everything pending to the store (before the store is read, and
        before its watermark moves)."""
        self._close_singles()
        if self._runs:
            runs, self._runs = self._runs, []
            put_columns(self.store, runs)
