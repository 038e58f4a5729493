"""EntryBatch: many store entries as columns, the unit of the columnar data path.

Fed by: ingest (`PageStore.put_batch`), single puts (gathered by the memtable),
layer blocks being read. Feeds: the memtable, flush, compaction merges, image
creation and range scans, which sort, merge and slice batches with numpy
instead of handling one Python object per entry. Owns: the batch contract.

Contract (what `PageStore.put_batch` accepts; `EntryBatch.from_offsets` builds it):

- `keys`: numpy array, shape (n,), dtype `V18` (`KEY_DTYPE`): each item is the 18
  bytes of `Key.to_bytes()`; byte order is key order. (Not `S18`: numpy strips
  trailing NUL bytes when an `S` item is read, and keys often end in zero bytes.
  The store views keys as `S18` only to sort and search, where the padding rule
  keeps bytewise order.) The first byte (key kind) must not be 0xFF (reserved).
- `lsns`: shape (n,), an integer dtype (stored as int64): each entry's record END
  LSN, 0 <= lsn < 2**63, every one above the store's ingested_lsn, and
  **non-decreasing** along the batch (WAL order; keys may come in any order).
- `kinds`: shape (n,), uint8, a `ValueKind`: 0 page image, 1 WAL record, 2 WAL
  record with will_init (builds the page from nothing: the chain stops there),
  3 tombstone (the key stops existing at that LSN; its value must be empty).
- `offsets`: shape (n + 1,), integer, non-decreasing, offsets[0] == 0 and
  offsets[n] == len(data): entry i's value is data[offsets[i]:offsets[i + 1]].
- `data`: bytes (or bytes-like): the values, back to back.
- Same (key, lsn) more than once, in one batch or across puts: the LAST one put
  wins (as a second `put` at the same key and LSN replaces the first).

Internally a batch also exists in other orders (sorted by (key, lsn)): rows carry
`starts`/`ends` into shared value buffers, so sorting, slicing or joining batches
moves only the columns; the values are gathered once, when a layer block is
encoded.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from strata.key import KEY_SIZE
from strata.storage.gather import gather
from strata.storage.values import (
    ENTRY_HEADER,
    Entry,
    PageImage,
    Tombstone,
    Value,
    ValueKind,
    WalRecord,
    make_value,
)

KEY_DTYPE = np.dtype(f"V{KEY_SIZE}")
KEY_ORDER = np.dtype(f"S{KEY_SIZE}")  # a view for sorting and searching only
LSN_LIMIT = 1 << 63
# bytes an entry counts for memtable size and block cuts (its v2 row encoding)
ENTRY_OVERHEAD = ENTRY_HEADER.size
_I64 = np.dtype(np.int64)
_KIND_OF_IMAGE = int(ValueKind.PAGE_IMAGE)
_KIND_OF_RECORD = int(ValueKind.WAL_RECORD)
_KIND_OF_INIT = int(ValueKind.WAL_RECORD_INIT)
_KIND_OF_TOMBSTONE = int(ValueKind.TOMBSTONE)


def key_array(keys: Sequence[bytes]) -> np.ndarray:
    """18-byte keys -> a `KEY_DTYPE` array."""
    return np.frombuffer(b"".join(keys), dtype=KEY_DTYPE) if keys else \
        np.empty(0, dtype=KEY_DTYPE)


# A key's 18 bytes as three big-endian integers: sorting them, least significant
# first, orders keys bytewise (as their `S18` view does), several times faster.
_KEY_PARTS = np.dtype([("hi", ">u8"), ("mid", ">u8"), ("lo", ">u2")])


def key_order(keys: np.ndarray, lsns: np.ndarray | None = None) -> np.ndarray:
    """The stable sort order of 18-byte keys (`KEY_DTYPE` or `KEY_ORDER`) by their
    bytes, and among equal keys by `lsns` when given; ties keep row order.

    Equal to ``np.argsort(keys.view(KEY_ORDER), kind="stable")`` (with `lsns`:
    ``np.lexsort((np.arange(n), lsns, keys.view(KEY_ORDER)))``; tests/storage/
    test_batch.py checks both): the key as three integer columns, each sorted stably
    (numpy's radix and tim sorts), least significant first. A column that is the same
    in every row (the key kind, tablespace and database, mostly) is skipped."""
    n = len(keys)
    parts = np.ascontiguousarray(keys).view(KEY_DTYPE).view(_KEY_PARTS)
    cols = [] if lsns is None else [lsns]
    for name, native in (("lo", np.uint16), ("mid", np.uint64), ("hi", np.uint64)):
        c = parts[name].astype(native)
        if n and c[0] == c[-1] and bool((c == c[0]).all()):
            continue
        cols.append(c)
    if not cols:
        return np.arange(n)
    order = np.argsort(cols[0], kind="stable")
    for c in cols[1:]:
        order = order[np.argsort(c[order], kind="stable")]
    return order


@dataclass(frozen=True, slots=True)
class EntryBatch:
    """Entries as columns (module docstring). Immutable by convention: no method
    changes an array in place. Values live in one or more buffers: row i's value is
    bufs[buf[i]][starts[i]:ends[i]] (`buf` None: every row in bufs[0]), so joining
    batches never copies values."""

    keys: np.ndarray  # (n,) KEY_DTYPE
    lsns: np.ndarray  # (n,) int64
    kinds: np.ndarray  # (n,) uint8
    starts: np.ndarray  # (n,) int64
    ends: np.ndarray  # (n,) int64
    bufs: tuple[bytes, ...]
    buf: np.ndarray | None = None  # (n,) uint32: which buffer holds the row's value

    # -- construction --------------------------------------------------------------
    @classmethod
    def from_offsets(cls, keys: np.ndarray, lsns: np.ndarray, kinds: np.ndarray,
                     offsets: np.ndarray, data: bytes) -> EntryBatch:
        """The contract's form (module docstring); shapes and dtypes are checked here,
        the rest by `check` (PageStore.put_batch calls it).

        Raises: ValueError naming what is wrong."""
        n = len(keys)
        if keys.dtype != KEY_DTYPE:
            raise ValueError(f"keys must be dtype V18 (18-byte keys), not {keys.dtype.str}")
        if len(lsns) != n or len(kinds) != n or len(offsets) != n + 1:
            raise ValueError(f"column lengths differ: {n} keys, {len(lsns)} lsns, "
                             f"{len(kinds)} kinds, {len(offsets)} offsets (want n + 1)")
        off = np.asarray(offsets, dtype=_I64)
        if off[0] != 0 or off[-1] != len(data) or (n and np.any(off[1:] < off[:-1])):
            raise ValueError(f"offsets must rise from 0 to len(data) = {len(data)}")
        return cls(keys, np.asarray(lsns, dtype=_I64), np.asarray(kinds, dtype=np.uint8),
                   off[:-1], off[1:], (bytes(data),))

    @classmethod
    def empty(cls) -> EntryBatch:
        z = np.empty(0, dtype=_I64)
        return cls(np.empty(0, dtype=KEY_DTYPE), z, np.empty(0, dtype=np.uint8), z, z, (b"",))

    @classmethod
    def from_entries(cls, entries: Iterable[Entry]) -> EntryBatch:
        """Entries (key bytes, lsn, Value) in the order given."""
        b = BatchBuilder()
        for e in entries:
            b.add(e.key, e.lsn, e.value)
        return b.build()

    @classmethod
    def concat(cls, batches: Sequence[EntryBatch]) -> EntryBatch:
        """The rows of every batch, in order (their value buffers are shared, not copied)."""
        batches = [b for b in batches if len(b)]
        if not batches:
            return cls.empty()
        if len(batches) == 1:
            return batches[0]
        bufs: list[bytes] = []
        ids = []
        for b in batches:
            base = len(bufs)
            bufs.extend(b.bufs)
            ids.append(np.full(len(b), base, np.uint32) if b.buf is None else b.buf + base)
        return cls(np.concatenate([b.keys for b in batches]),
                   np.concatenate([b.lsns for b in batches]),
                   np.concatenate([b.kinds for b in batches]),
                   np.concatenate([b.starts for b in batches]),
                   np.concatenate([b.ends for b in batches]),
                   tuple(bufs), np.concatenate(ids).astype(np.uint32, copy=False))

    def with_lsn(self, lsn: int) -> EntryBatch:
        """The same rows, every one at `lsn` (image layers)."""
        return EntryBatch(self.keys, np.full(len(self), lsn, dtype=_I64), self.kinds,
                          self.starts, self.ends, self.bufs, self.buf)

    def with_values(self, rows: np.ndarray, kind: int, values: Sequence[bytes]) -> EntryBatch:
        """The same rows, rows `rows` holding `values` (of `kind`) instead."""
        if len(rows) == 0:
            return self
        lens = np.array([len(v) for v in values], dtype=_I64)
        new_ends = np.cumsum(lens)
        kinds, starts, ends = self.kinds.copy(), self.starts.copy(), self.ends.copy()
        buf = self.buf.copy() if self.buf is not None else np.zeros(len(self), np.uint32)
        kinds[rows] = kind
        starts[rows] = new_ends - lens
        ends[rows] = new_ends
        buf[rows] = len(self.bufs)
        return EntryBatch(self.keys, self.lsns, kinds, starts, ends,
                          (*self.bufs, b"".join(values)), buf)

    # -- inspection ----------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.lsns)

    @property
    def order_keys(self) -> np.ndarray:
        """The keys as `S18`, for comparisons, sorting and searching (never read items)."""
        return self.keys.view(KEY_ORDER)

    @property
    def lengths(self) -> np.ndarray:
        return self.ends - self.starts

    def nbytes(self) -> int:
        """What these entries count for memtable size and block cuts."""
        return int(self.lengths.sum()) + ENTRY_OVERHEAD * len(self)

    def key_at(self, i: int) -> bytes:
        return bytes(self.keys[i].tobytes())

    def value_at(self, i: int) -> bytes:
        data = self.bufs[0] if self.buf is None else self.bufs[int(self.buf[i])]
        return data[int(self.starts[i]):int(self.ends[i])]

    def values_in(self, a: int, z: int) -> list[bytes]:
        """The values of rows [a, z), in row order (one slice each, no per-row numpy)."""
        starts, ends = self.starts[a:z].tolist(), self.ends[a:z].tolist()
        if self.buf is None:
            data = self.bufs[0]
            return [data[s:e] for s, e in zip(starts, ends, strict=True)]
        bufs = self.bufs
        return [bufs[k][s:e] for k, s, e in zip(self.buf[a:z].tolist(), starts, ends, strict=True)]

    def entry_at(self, i: int) -> Entry:
        return Entry(self.key_at(i), int(self.lsns[i]),
                     make_value(int(self.kinds[i]), self.value_at(i)))

    def _values(self) -> Iterator[bytes]:
        bufs = [memoryview(b) for b in self.bufs]
        which = [0] * len(self) if self.buf is None else self.buf.tolist()
        for k, s, e in zip(which, self.starts.tolist(), self.ends.tolist(), strict=True):
            yield bufs[k][s:e]

    def entries(self) -> Iterator[Entry]:
        raw = self.keys.tobytes()
        for i, (lsn, kind, v) in enumerate(zip(self.lsns.tolist(), self.kinds.tolist(),
                                               self._values(), strict=True)):
            yield Entry(raw[KEY_SIZE * i:KEY_SIZE * (i + 1)], lsn, make_value(kind, bytes(v)))

    def values_joined(self) -> tuple[bytes, np.ndarray]:
        """The values in row order, back to back, and each one's end offset in it."""
        ends = np.cumsum(self.lengths, dtype=_I64)
        if len(self) == 0:
            return b"", ends
        if self.buf is None or not np.any(self.buf != self.buf[0]):
            s, e = int(self.starts[0]), int(self.ends[-1])
            if e - s == int(ends[-1]) and np.all(self.starts[1:] == self.ends[:-1]):
                data = self.bufs[0 if self.buf is None else int(self.buf[0])]
                return data[s:e], ends  # already contiguous and in order
        which = np.zeros(len(self), dtype=np.uint32) if self.buf is None else self.buf
        return gather(self.bufs, which, self.starts, self.lengths), ends

    # -- row selection ---------------------------------------------------------------
    def take(self, idx: np.ndarray) -> EntryBatch:
        """Rows `idx` (indices or a boolean mask), sharing this batch's buffers."""
        if idx.dtype == np.bool_:
            idx = np.flatnonzero(idx)
        # np.take: ~3x faster than indexing for the V18 keys
        return EntryBatch(np.take(self.keys, idx), np.take(self.lsns, idx),
                          np.take(self.kinds, idx), np.take(self.starts, idx),
                          np.take(self.ends, idx), self.bufs,
                          None if self.buf is None else np.take(self.buf, idx))

    def slice(self, a: int, b: int) -> EntryBatch:
        return EntryBatch(self.keys[a:b], self.lsns[a:b], self.kinds[a:b], self.starts[a:b],
                          self.ends[a:b], self.bufs, None if self.buf is None else self.buf[a:b])

    def sorted(self) -> EntryBatch:
        """Sorted by (key, lsn), one row per (key, lsn): the last one in row order wins."""
        n = len(self)
        if n < 2:
            return self
        lsn_ordered = bool(np.all(self.lsns[1:] >= self.lsns[:-1]))
        # rows in LSN order: a stable sort by key leaves each key's rows in LSN order
        return self.take(key_order(self.keys, None if lsn_ordered else self.lsns))._deduped()

    @classmethod
    def merged(cls, runs: Sequence[EntryBatch]) -> EntryBatch:
        """`concat(runs).sorted()` for runs each sorted by (key, lsn), given in put
        order. When every run's LSNs are at or above the previous run's, a stable
        sort by key alone is enough (timsort and radix sorts both gain from it)."""
        runs = [r for r in runs if len(r)]
        if len(runs) <= 1:
            return runs[0] if runs else cls.empty()
        lsn_ordered = all(int(a.lsns.max()) <= int(b.lsns.min()) for a, b in itertools.pairwise(runs))
        every = cls.concat(runs)
        return every.take(key_order(every.keys, None if lsn_ordered else every.lsns))._deduped()

    def _deduped(self) -> EntryBatch:
        """A (key, lsn)-sorted batch without the earlier row of each repeated (key, lsn)."""
        lsn = self.lsns
        same = np.flatnonzero(lsn[1:] == lsn[:-1])
        if len(same):
            k = self.order_keys
            same = same[k[same] == k[same + 1]]  # row i repeats row i + 1
        if not len(same):
            return self
        keep = np.ones(len(self), dtype=bool)
        keep[same] = False
        return self.take(keep)

    def key_slice(self, start: bytes, end: bytes) -> tuple[int, int]:
        """Rows [a, b) of a key-sorted batch with start <= key < end."""
        ok = self.order_keys
        return (int(np.searchsorted(ok, start, "left")), int(np.searchsorted(ok, end, "left")))

    def key_rows(self, key: bytes) -> tuple[int, int]:
        """Rows [a, b) of a key-sorted batch holding `key`."""
        ok = self.order_keys
        return (int(np.searchsorted(ok, key, "left")), int(np.searchsorted(ok, key, "right")))

    def select(self, start: bytes, end: bytes, lo: int, hi: int) -> EntryBatch:
        """Rows of a key-sorted batch with start <= key < end and lo <= lsn < hi."""
        a, b = self.key_slice(start, end)
        part = self.slice(a, b)
        if len(part) and (lo > int(part.lsns.min()) or hi <= int(part.lsns.max())):
            part = part.take((part.lsns >= lo) & (part.lsns < hi))
        return part

    def check(self, after_lsn: int) -> None:
        """The contract's value rules (module docstring), for a batch from outside.

        Raises: ValueError naming the first offending row."""
        n = len(self)
        if n == 0:
            return
        lsn = self.lsns

        def fail(mask: np.ndarray, what: str) -> ValueError:
            i = int(np.argmax(mask))
            return ValueError(f"batch row {i} (key {self.key_at(i).hex()}, LSN {int(lsn[i]):X}): "
                              f"{what}")

        if (bad := lsn <= after_lsn).any():
            raise fail(bad, f"at or below ingested_lsn {after_lsn:X}")
        if (bad := lsn >= LSN_LIMIT).any():
            raise fail(bad, "LSN beyond 2**63")
        if n > 1 and (bad := np.concatenate([[False], lsn[1:] < lsn[:-1]])).any():
            raise fail(bad, "LSN below the row before it (LSNs must not decrease)")
        if (bad := self.kinds > _KIND_OF_TOMBSTONE).any():
            raise fail(bad, "unknown value kind")
        if (bad := (self.kinds == _KIND_OF_TOMBSTONE) & (self.lengths != 0)).any():
            raise fail(bad, "tombstone with a value")
        first = np.ascontiguousarray(self.keys).view(np.uint8)[::KEY_SIZE]
        if (bad := first == 0xFF).any():
            raise fail(bad, "key kind 0xFF is reserved")


def kind_and_data(value: Value) -> tuple[int, bytes]:
    """A Value as (ValueKind, data). Raises: TypeError for anything else."""
    if isinstance(value, PageImage):
        return _KIND_OF_IMAGE, value.data
    if isinstance(value, WalRecord):
        return (_KIND_OF_INIT if value.will_init else _KIND_OF_RECORD), value.data
    if isinstance(value, Tombstone):
        return _KIND_OF_TOMBSTONE, b""
    raise TypeError(f"not a storage value: {value!r}")


class KeyRuns:
    """The longest run of rows over key-sorted batches given in order (a run may
    cross batches). With `chains`: runs of one key's records (kinds 1 and 2; a
    will_init record starts a new run, an image or a tombstone ends one): the most
    deltas one read can replay from these rows (layer v3 `max_key_entries`).
    Without: runs of one key's entries (v2 `max_key_entries`)."""

    def __init__(self, chains: bool) -> None:
        self.chains = chains
        self.best = 0
        self._last_key: bytes | None = None
        self._run = 0  # length of the run the last row belongs to (0: not in one)

    def add(self, b: EntryBatch) -> None:
        n = len(b)
        if n == 0:
            return
        ok, kinds = b.order_keys, b.kinds
        if self.chains:
            rec = (kinds == _KIND_OF_RECORD) | (kinds == _KIND_OF_INIT)
            extends = kinds == _KIND_OF_RECORD
        else:
            rec = extends = np.ones(n, dtype=bool)
        same = np.empty(n, dtype=bool)
        same[0] = self._last_key == b.key_at(0)
        same[1:] = ok[1:] == ok[:-1]
        prev = np.empty(n, dtype=bool)
        prev[0] = self._run > 0
        prev[1:] = rec[:-1]
        cont = rec & same & prev & extends
        ids = np.cumsum(rec & ~cont)  # run number of each row (0: the carried run)
        lens = np.bincount(ids[rec], minlength=int(ids[-1]) + 1)
        lens[0] += self._run if cont[0] else 0
        self.best = max(self.best, int(lens.max()))
        self._run = int(lens[ids[-1]]) if rec[-1] else 0
        self._last_key = b.key_at(n - 1)

    def end(self, last_key: bytes) -> None:
        """Rows that are no run's (images) were added, the last of key `last_key`."""
        self._run = 0
        self._last_key = last_key


class BatchBuilder:
    """Collects entries one at a time (single puts, tools) into an EntryBatch."""

    __slots__ = ("_data", "_keys", "_kinds", "_lsns", "_offsets", "nbytes")

    def __init__(self) -> None:
        self._keys: list[bytes] = []
        self._lsns: list[int] = []
        self._kinds: list[int] = []
        self._offsets: list[int] = [0]
        self._data: list[bytes] = []
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self._lsns)

    def add(self, key: bytes, lsn: int, value: Value) -> None:
        kind, data = kind_and_data(value)
        self.add_raw(key, lsn, kind, data)

    def add_raw(self, key: bytes, lsn: int, kind: int, data: bytes) -> None:
        self._keys.append(key)
        self._lsns.append(lsn)
        self._kinds.append(kind)
        self._data.append(data)
        self._offsets.append(self._offsets[-1] + len(data))
        self.nbytes += ENTRY_OVERHEAD + len(data)

    def build(self) -> EntryBatch:
        if not self._lsns:
            return EntryBatch.empty()
        off = np.array(self._offsets, dtype=_I64)
        return EntryBatch(key_array(self._keys), np.array(self._lsns, dtype=_I64),
                          np.array(self._kinds, dtype=np.uint8), off[:-1], off[1:],
                          (b"".join(self._data),))

