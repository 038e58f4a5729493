"""Durable, append-only time map and PostgreSQL's recovery_target_time rule.

Each entry records one transaction-end record: its start LSN, end LSN,
timestamp (PostgreSQL TimestampTz: microseconds since 2000-01-01 UTC), xid,
kind (commit, abort, commit prepared, abort prepared) and flags (catalog
change: the transaction carried invalidations or dropped relations).

Resolution (`resolve_time`): a time T resolves to the **end of the last
commit (or abort) record before the first commit or abort later than T, in
WAL order**. Transactional visibility is exactly what PostgreSQL's
``recovery_target_time = T`` (inclusive; xlogrecovery.c,
``recoveryStopsBefore``) shows: recovery stops before that first later
commit, and every transaction end before it is in. What the end of the last
commit leaves out is the non-transactional WAL written after it (the next
transaction's nextval() batches, DROP DATABASE's in-place invalidation,
relfrozenxid updates...), which would otherwise leak the future into the
past. The answer is stable: the same T always gives the same LSN once a
commit later than T exists. With no commit before that first later one, T
resolves to where history starts. Commit timestamps are not monotonic in WAL
order, so this is a scan in LSN order, never a bisection on time alone; an
index of running maxima makes it logarithmic (`_prefix_max`).

File format: see FORMAT.md beside this module (``timemap.dat``). The time
map also owns the DDL log (``ddl.dat``, `strata.timemap.ddl`): `open`,
`sync` and `close` act on both, so one durable LSN covers both files.

Invariants:
  1. Entries are appended in strictly increasing start-LSN order (`append`).
  2. An entry is durable once `sync()` returned; `WalIngest.advance` calls
     it before the store's watermark moves, so every transaction end at or
     below durable_lsn is in the file. Writes go through `strata.durable`
     (a power cut keeps exactly what was synced: tests/timemap/test_timemap_faults.py).
  3. On open, a torn or corrupt tail is cut at the last valid entry, and
     entries whose end LSN is above the given durable LSN are dropped (ingest
     re-reads that WAL from the slot and appends them again).
  4. Retention trims whole blocks from the front (`trim_before`): the header's
     head block is made durable first, then the blocks before it are punched
     out of the file. A trimmed block is never read again; every search at or
     after the LSN trimmed to answers as before (FORMAT.md, "Trimming").
"""

from __future__ import annotations

import ctypes
import datetime as dt
import logging
import os
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import BinaryIO

import google_crc32c
import numpy as np

from strata import durable
from strata.errors import CorruptionError, LsnOutOfRangeError
from strata.lsn import Lsn
from strata.pg.timestamp import datetime_to_timestamptz, timestamptz_to_datetime
from strata.timemap.ddl import DdlLog
from strata.wal.batch import crc32c_rows

MAGIC = b"STRTMAP\x00"
VERSION = 2  # 1 is read too: its reserved field (0) is version 2's head block
_HEADER = struct.Struct("<8sII")  # magic, version, head block (version 1: reserved, 0)
_ENTRY = struct.Struct("<QQqIBBH")  # start, end, ts, xid, kind, flags, reserved
_CRC = struct.Struct("<I")
ENTRY_SIZE = _ENTRY.size + _CRC.size  # 36
log = logging.getLogger(__name__)


class EndKind(IntEnum):
    """Written to disk: never renumber."""

    COMMIT = 0
    ABORT = 1
    COMMIT_PREPARED = 2
    ABORT_PREPARED = 3


FLAG_CATALOG_CHANGE = 0x01


@dataclass(frozen=True, slots=True)
class TxEnd:
    start_lsn: Lsn
    end_lsn: Lsn
    timestamp: int  # TimestampTz
    xid: int
    kind: EndKind
    flags: int = 0

    @property
    def time(self) -> dt.datetime:
        return timestamptz_to_datetime(self.timestamp)

    @property
    def catalog_change(self) -> bool:
        return bool(self.flags & FLAG_CATALOG_CHANGE)

    def encode(self) -> bytes:
        body = _ENTRY.pack(self.start_lsn, self.end_lsn, self.timestamp, self.xid, self.kind,
                           self.flags, 0)
        return body + _CRC.pack(google_crc32c.value(body))


@dataclass(frozen=True, slots=True)
class TimeResolution:
    """Where a time T lands in the time map.

    `lsn`: the state holds every record ending at or before it (the end of
    `last_commit`, or history's start when there is none).
    `last_commit`: the last transaction end (commit or abort) included, if any.
    `next_commit`: the first transaction end later than T, in WAL order; None
    when none is known yet (then a later-ingested commit could still be at or
    before T: the caller decides whether ingest has seen enough).
    """

    lsn: Lsn
    last_commit: TxEnd | None
    next_commit: TxEnd | None


# one time map entry as stored (the file's 36 bytes: body, then its CRC)
ENTRY_DTYPE = np.dtype([("start", "<u8"), ("end", "<u8"), ("ts", "<i8"), ("xid", "<u4"),
                        ("kind", "u1"), ("flags", "u1"), ("reserved", "<u2"), ("crc", "<u4")])
assert ENTRY_DTYPE.itemsize == ENTRY_SIZE
BLOCK_ENTRIES = 4096  # entries per block of the in-memory index (147 KiB of the file)
_CACHED_BLOCKS = 8  # sealed blocks kept after a search read them
_NO_TIME = -(1 << 63)  # the running maximum of a trimmed block never loaded


def _read_head(f: BinaryIO, path: Path) -> int | None:
    """The head block of the file open as `f` (None: no whole header yet).

    Raises: CorruptionError for another file or an unknown version."""
    f.seek(0)
    data = f.read(_HEADER.size)
    if len(data) < _HEADER.size:
        return None
    magic, version, head = _HEADER.unpack_from(data, 0)
    if magic != MAGIC:
        raise CorruptionError(f"{path}: bad magic at offset 0 (not a time map)")
    if version not in (1, VERSION) or (version == 1 and head):
        raise CorruptionError(f"{path}: unsupported time map version {version}")
    return int(head)


_FALLOC_FL_KEEP_SIZE, _FALLOC_FL_PUNCH_HOLE = 0x01, 0x02
_libc: ctypes.CDLL | None = None


def _punch_hole(path: Path | None, offset: int, length: int) -> None:
    """Give the file's bytes [offset, offset + length) back to the file system
    (they read as zeros; the size stays). Where the file system cannot, the
    bytes stay: only space, never content, depends on it."""
    global _libc
    if path is None or length <= 0:
        return
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(path, os.O_WRONLY)
    except OSError:
        return
    try:
        if _libc.fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE,
                           ctypes.c_long(offset), ctypes.c_long(length)) != 0:
            log.debug("time map: no hole punched in %s (errno %d)", path, ctypes.get_errno())
    finally:
        os.close(fd)


def _tx_end(rows: np.ndarray, i: int) -> TxEnd:
    """Row `i` of an ENTRY_DTYPE array as a TxEnd."""
    s, e, ts, xid, kind, flags, _ = _ENTRY.unpack_from(rows.data, i * ENTRY_SIZE)
    return TxEnd(Lsn(s), Lsn(e), ts, xid, EndKind(kind), flags)


class TimeMap:
    """Index over the durable append-only file. Thread-safe.

    Memory stays small however long the history: entries are held as the file
    holds them (`ENTRY_DTYPE` rows) in blocks of `BLOCK_ENTRIES`. Only the newest,
    unsealed block (`_tail`) and the sealed blocks not yet synced (`_unsynced`;
    a map without a file keeps all) stay in memory, with two numbers per sealed
    block: its first start LSN and the running maximum of timestamps at its end.
    A search finds its block from those and reads that one block from the file
    (`_block`, a small cache of them)."""

    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._reset()
        self._file: durable.AppendFile | None = None
        # what the catalog-changing transactions did (ddl.dat): opened, synced
        # and closed with this file, so one durable LSN covers both
        self.ddl = DdlLog(None)

    def _reset(self) -> None:
        """No entry loaded (callers hold the lock, or own the map)."""
        self._tail = np.zeros(BLOCK_ENTRIES, dtype=ENTRY_DTYPE)  # the unsealed block, ...
        self._n_tail = 0  # ... in its first _n_tail rows
        self._sealed = 0  # blocks before the tail
        self._firsts = np.zeros(0, dtype=np.uint64)  # per sealed block: its first start LSN
        self._maxima = np.zeros(0, dtype=np.int64)  # ... the running max of timestamps at its end
        self._kept: dict[int, np.ndarray] = {}  # sealed blocks held in memory (not in the file yet)
        self._cache: dict[int, np.ndarray] = {}  # sealed blocks read back from the file
        self._last_start = -1  # start LSN of the last entry (-1: none)
        self._read_off = 0  # file offset after the last entry loaded
        self._head = 0  # blocks before it are trimmed (header field, FORMAT.md)

    # -- persistence -----------------------------------------------------------------
    @classmethod
    def open(cls, directory: Path, *, durable_lsn: Lsn | None = None,
             readonly: bool = False) -> TimeMap:
        """Load (or create) ``<directory>/timemap.dat``; cut a torn tail and
        entries above `durable_lsn` (Invariant 3). With `readonly` (a reader
        beside the running writer) nothing is written and a partial tail is
        just not loaded."""
        if not readonly:
            directory.mkdir(parents=True, exist_ok=True)
        path = directory / "timemap.dat"
        tm = cls(path)
        tm.ddl = DdlLog.open(directory / "ddl.dat", durable_lsn=durable_lsn, readonly=readonly)
        good_len = tm._load(durable_lsn)
        if readonly:
            return tm
        has_header = path.exists() and path.stat().st_size >= _HEADER.size
        tm._file = durable.AppendFile.open(path, _HEADER.pack(MAGIC, VERSION, 0),
                                           good_len if has_header else 0)
        return tm

    def _load(self, durable_lsn: Lsn | None = None) -> int:
        """Add the valid entries of the file from `_read_off` on (stopping at a
        torn tail, or above `durable_lsn`), a block's worth at a time; returns
        the offset after the last one."""
        path = self._path
        assert path is not None
        try:
            f = path.open("rb")
        except FileNotFoundError:
            return _HEADER.size
        with f:
            head = _read_head(f, path)
            if head is None:
                return _HEADER.size
            if self._read_off == 0:
                self._read_off = _HEADER.size
            self._trimmed(head)
            f.seek(self._read_off)
            while data := f.read(BLOCK_ENTRIES * ENTRY_SIZE):
                rows = np.frombuffer(data, dtype=ENTRY_DTYPE, count=len(data) // ENTRY_SIZE)
                # a torn tail: everything after the last good entry is dropped
                bad = np.flatnonzero(crc32c_rows(data, ENTRY_SIZE, _ENTRY.size) != rows["crc"])
                good = int(bad[0]) if len(bad) else len(rows)
                if durable_lsn is not None:
                    above = np.flatnonzero(rows["end"][:good] > durable_lsn)
                    good = int(above[0]) if len(above) else good
                self._extend(rows[:good])
                self._read_off += good * ENTRY_SIZE
                if good < len(rows) or len(data) % ENTRY_SIZE:
                    break
        return self._read_off

    def _trimmed(self, head: int) -> None:
        """Blocks before `head` are trimmed (callers hold the lock, or own the map):
        a map that has not loaded them skips them; one that has keeps their first
        LSN and maximum, and forgets their rows."""
        if head <= self._head:
            return
        if self._sealed < head:  # not all loaded (a reader far behind): start at the head
            self._reset()
            self._firsts = np.zeros(head, dtype=np.uint64)
            self._maxima = np.full(head, _NO_TIME, dtype=np.int64)
            self._sealed = head
            self._read_off = _HEADER.size + head * BLOCK_ENTRIES * ENTRY_SIZE
        self._head = head
        for b in [b for b in self._cache if b < head]:
            del self._cache[b]

    def trim_before(self, lsn: Lsn) -> int:
        """Retention (Invariant 4): drop the blocks that only hold entries no search
        at or after `lsn` (and its time) can need: every block before the one
        holding the last entry ending at or before `lsn`, as far as their
        timestamps are all at or before that entry's. Writer only; the blocks must
        be in the file (`sync` first: an unsynced one stays). Returns the head
        block now."""
        with self._lock:
            if self._file is None:
                raise ValueError("trim_before needs the writer's time map")
            at = self._last_index_at_or_before(lsn)
            if at is None:
                return self._head
            block, e = at // BLOCK_ENTRIES, self._row(at)
            head = min(block, int(np.searchsorted(self._maxima, e.timestamp, side="right")),
                       min(self._kept, default=self._sealed))
            if head <= self._head:
                return self._head
            self._file.rewrite_header(_HEADER.pack(MAGIC, VERSION, head))
            # from the header on, not from the old head: a trim smaller than a
            # file-system block frees nothing alone
            _punch_hole(self._path, _HEADER.size, head * BLOCK_ENTRIES * ENTRY_SIZE)
            self._trimmed(head)
            return head

    def _extend(self, rows: np.ndarray) -> None:
        """Add `rows` (ENTRY_DTYPE, ascending start LSNs), skipping those at or
        below the last start LSN (re-ingested duplicates); seals each block that
        fills."""
        if len(rows) and int(rows["start"][0]) <= self._last_start:
            rows = rows[rows["start"] > self._last_start]
        k = len(rows)
        if k > 1 and not (rows["start"][1:] > rows["start"][:-1]).all():
            raise ValueError("time map entries must ascend by start LSN")
        if not k:
            return
        self._last_start = int(rows["start"][-1])
        while len(rows):
            take = min(len(rows), BLOCK_ENTRIES - self._n_tail)
            self._tail[self._n_tail:self._n_tail + take] = rows[:take]
            self._n_tail += take
            rows = rows[take:]
            if self._n_tail == BLOCK_ENTRIES:
                block = self._tail.copy()
                top = int(block["ts"].max())
                if len(self._maxima):
                    top = max(top, int(self._maxima[-1]))
                self._firsts = np.append(self._firsts, block["start"][0])
                self._maxima = np.append(self._maxima, top)
                # a writer's sealed block is in memory until a sync put it in the file
                # (a reader's came from the file; a map without one keeps everything)
                if self._path is None or self._file is not None:
                    self._kept[self._sealed] = block
                self._sealed += 1
                self._n_tail = 0

    def refresh(self) -> int:
        """For a read-only map beside the running writer: load the entries appended
        since it was opened or last refreshed. Returns how many more it holds.

        A file the writer cut shorter (it drops a torn tail, or entries above its
        durable LSN, when it opens) is read again from the start: the entries it
        appends again describe the same WAL, so what this map holds stays true."""
        if self._path is None or self._file is not None:
            return 0
        with self._lock:
            before = self._count()
            try:
                size = self._path.stat().st_size
            except FileNotFoundError:
                return 0
            if size < self._read_off:
                self._reset()  # all of it again
            self._load()  # the header again, too: the writer may have trimmed
            return max(0, self._count() - before)

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
        self.ddl.close()

    def sync(self) -> None:
        """Make every appended entry durable (Invariant 2), DDL log included."""
        self.ddl.sync()
        with self._lock:
            if self._file is not None:
                self._file.sync()
                self._kept.clear()  # in the file now: read back when needed

    # -- writing ---------------------------------------------------------------------
    def append(self, e: TxEnd) -> None:
        """Add an entry (Invariant 1); an entry at or below the last start LSN
        is a re-ingested duplicate and is ignored."""
        with self._lock:
            if e.start_lsn <= self._last_start:
                return
            raw = e.encode()
            self._extend(np.frombuffer(raw, dtype=ENTRY_DTYPE))
            if self._file is not None:
                self._file.append(raw)

    def append_many(self, start: np.ndarray, end: np.ndarray, ts: np.ndarray,
                    xid: np.ndarray, kind: int | np.ndarray, flags: int | np.ndarray = 0
                    ) -> None:
        """`append` of one entry per element (columns of equal length, start LSNs
        strictly ascending): the same bytes and the same duplicate rule."""
        n = len(start)
        if not n:
            return
        rows = np.zeros(n, dtype=ENTRY_DTYPE)
        rows["start"], rows["end"], rows["ts"] = start, end, ts
        rows["xid"], rows["kind"], rows["flags"] = xid, kind, flags
        rows["crc"] = crc32c_rows(rows.tobytes(), ENTRY_SIZE, _ENTRY.size)
        with self._lock:
            last = self._last_start
            if int(rows["start"][0]) <= last:
                rows = rows[rows["start"] > last]
            self._extend(rows)
            if self._file is not None and len(rows):
                self._file.append(rows.tobytes())

    # -- reading ---------------------------------------------------------------------
    def _count(self) -> int:
        return self._sealed * BLOCK_ENTRIES + self._n_tail

    def _block(self, b: int) -> np.ndarray:
        """The rows of block `b` (the tail when b == the sealed count); callers hold
        the lock.

        Raises: LsnOutOfRangeError for a block retention trimmed (also when a
        reader finds it so in the file before its next `refresh`);
        CorruptionError for a block read back that fails its CRCs."""
        if b < self._head:
            raise self._trimmed_error()
        if b == self._sealed:
            return self._tail[:self._n_tail]
        kept = self._kept.get(b)
        if kept is not None:
            return kept
        cached = self._cache.get(b)
        if cached is None:
            assert self._path is not None
            with self._path.open("rb") as f:
                f.seek(_HEADER.size + b * BLOCK_ENTRIES * ENTRY_SIZE)
                data = f.read(BLOCK_ENTRIES * ENTRY_SIZE)
                if len(data) == BLOCK_ENTRIES * ENTRY_SIZE and (crc32c_rows(
                        data, ENTRY_SIZE, _ENTRY.size) != np.frombuffer(
                        data, dtype=ENTRY_DTYPE)["crc"]).any():
                    # the writer trimmed it since this map last read the header (its
                    # bytes are a hole now), or it is damaged
                    head = _read_head(f, self._path)
                    if head is not None and head > b:
                        self._trimmed(head)
                        raise self._trimmed_error()
                    raise CorruptionError(f"{self._path}: block {b} of the time map fails "
                                          "its CRCs")
            if len(data) != BLOCK_ENTRIES * ENTRY_SIZE:
                raise CorruptionError(f"{self._path}: block {b} of the time map is short")
            cached = np.frombuffer(data, dtype=ENTRY_DTYPE)
            if len(self._cache) >= _CACHED_BLOCKS:
                self._cache.pop(next(iter(self._cache)))
            self._cache[b] = cached
        return cached

    def _trimmed_error(self) -> LsnOutOfRangeError:
        held = f" before LSN {Lsn(int(self._firsts[self._head]))}" \
            if self._head < self._sealed else ""
        return LsnOutOfRangeError(f"time map entries{held} were removed by retention")

    def _row(self, i: int) -> TxEnd:
        """Entry `i` (holding the lock)."""
        return _tx_end(self._block(i // BLOCK_ENTRIES), i % BLOCK_ENTRIES)

    def __len__(self) -> int:
        """Entries held (retention's trimmed ones not counted)."""
        with self._lock:
            return self._count() - self._head * BLOCK_ENTRIES

    def _blocks(self) -> Iterator[np.ndarray]:
        """Every block in order, the tail as it is now last (a snapshot of it)."""
        with self._lock:
            sealed, tail = self._sealed, self._tail[:self._n_tail].copy()
        for b in range(self._head, sealed):
            with self._lock:
                if b < self._head:  # trimmed meanwhile
                    continue
                rows = self._block(b)
            yield rows
        yield tail

    def entries(self, start: dt.datetime | None = None, end: dt.datetime | None = None
                ) -> Iterator[TxEnd]:
        lo = datetime_to_timestamptz(start) if start is not None else None
        hi = datetime_to_timestamptz(end) if end is not None else None
        for rows in self._blocks():
            keep = np.ones(len(rows), dtype=bool)
            if lo is not None:
                keep &= rows["ts"] >= lo
            if hi is not None:
                keep &= rows["ts"] <= hi
            for i in np.flatnonzero(keep).tolist():
                yield _tx_end(rows, i)

    def last(self) -> TxEnd | None:
        with self._lock:
            n = self._count()
            return self._row(n - 1) if n else None

    def first(self) -> TxEnd | None:
        """The oldest entry held (retention may have trimmed older ones)."""
        with self._lock:
            i = self._head * BLOCK_ENTRIES
            return self._row(i) if self._count() > i else None

    def last_at_or_before(self, lsn: Lsn) -> TxEnd | None:
        """The last transaction end whose record ends at or before `lsn` (None
        also when retention trimmed it)."""
        with self._lock:
            i = self._last_index_at_or_before(lsn)
            return self._row(i) if i is not None else None

    def _last_index_at_or_before(self, lsn: Lsn) -> int | None:
        """Index of `last_at_or_before`'s entry (holding the lock)."""
        b = self._sealed
        if not self._n_tail or int(self._tail["start"][0]) > lsn:
            b = int(np.searchsorted(self._firsts, int(lsn), side="right")) - 1
        if b < self._head:
            return None
        rows = self._block(b)
        i = b * BLOCK_ENTRIES + int(np.searchsorted(rows["start"], int(lsn), side="right")) - 1
        floor = self._head * BLOCK_ENTRIES
        while i >= floor and self._row(i).end_lsn > lsn:
            i -= 1
        return i if i >= floor else None

    def last_commit_of_xid(self, xid: int) -> TxEnd | None:
        """The last COMMIT or COMMIT_PREPARED entry of `xid`, or None."""
        found = None
        for rows in self._blocks():
            hit = np.flatnonzero((rows["xid"] == xid) & np.isin(
                rows["kind"], (EndKind.COMMIT, EndKind.COMMIT_PREPARED)))
            if len(hit):
                found = _tx_end(rows, int(hit[-1]))
        return found

    def resolve_time(self, ts: int, *, history_start: Lsn,
                     history_start_time: int | None) -> TimeResolution:
        """Where time `ts` lands (module docstring: the end of the last commit
        before the first commit later than `ts`).

        Requires: entries cover every transaction end from `history_start` on.
        Raises: LsnOutOfRangeError when `ts` is before history starts.
        """
        if history_start_time is not None and ts < history_start_time:
            raise LsnOutOfRangeError(
                f"time {timestamptz_to_datetime(ts).isoformat()} is before history starts "
                f"({timestamptz_to_datetime(history_start_time).isoformat()}, LSN {history_start})",
                nearest=timestamptz_to_datetime(history_start_time),
            )
        with self._lock:
            # first entry (in LSN order) whose timestamp > ts: the first index where the
            # running maximum exceeds ts; its block from the blocks' maxima, then in it
            b = int(np.searchsorted(self._maxima, ts, side="right"))
            rows = self._block(b)
            before = int(self._maxima[b - 1]) if b else -(1 << 63)
            running = np.maximum.accumulate(np.maximum(rows["ts"].astype(np.int64), before))
            i = b * BLOCK_ENTRIES + int(np.searchsorted(running, ts, side="right"))
            included = self._row(i - 1) if i > 0 else None
            following = self._row(i) if i < self._count() else None
        lsn = included.end_lsn if included is not None else history_start
        return TimeResolution(Lsn(max(lsn, history_start)), included, following)
