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
"""

from __future__ import annotations

import bisect
import datetime as dt
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

import google_crc32c

from strata import durable
from strata.errors import CorruptionError, LsnOutOfRangeError
from strata.lsn import Lsn
from strata.pg.timestamp import datetime_to_timestamptz, timestamptz_to_datetime
from strata.timemap.ddl import DdlLog

MAGIC = b"STRTMAP\x00"
VERSION = 1
_HEADER = struct.Struct("<8sII")  # magic, version, reserved
_ENTRY = struct.Struct("<QQqIBBH")  # start, end, ts, xid, kind, flags, reserved
_CRC = struct.Struct("<I")
ENTRY_SIZE = _ENTRY.size + _CRC.size  # 36


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


class TimeMap:
    """In-memory index over the durable append-only file. Thread-safe."""

    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._entries: list[TxEnd] = []
        self._starts: list[int] = []
        self._prefix_max: list[int] = []  # running max of timestamps, for time search
        self._file: durable.AppendFile | None = None
        self._read_off = 0  # file offset after the last entry loaded
        # what the catalog-changing transactions did (ddl.dat): opened, synced
        # and closed with this file, so one durable LSN covers both
        self.ddl = DdlLog(None)

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
        """Append the valid entries of the file from `_read_off` on (stopping at a
        torn tail, or above `durable_lsn`); returns the offset after the last one."""
        path = self._path
        assert path is not None
        try:
            with path.open("rb") as f:
                f.seek(self._read_off)
                data = f.read()
        except FileNotFoundError:
            return _HEADER.size
        off = 0
        if self._read_off == 0:
            if len(data) < _HEADER.size:
                return _HEADER.size
            magic, version, _ = _HEADER.unpack_from(data, 0)
            if magic != MAGIC:
                raise CorruptionError(f"{path}: bad magic at offset 0 (not a time map)")
            if version != VERSION:
                raise CorruptionError(f"{path}: unsupported time map version {version}")
            off = _HEADER.size
        while off + ENTRY_SIZE <= len(data):
            body = data[off:off + _ENTRY.size]
            (crc,) = _CRC.unpack_from(data, off + _ENTRY.size)
            if google_crc32c.value(body) != crc:
                break  # torn tail: everything after the last good entry is dropped
            s, e, ts, xid, kind, flags, _ = _ENTRY.unpack(body)
            if durable_lsn is not None and e > durable_lsn:
                break
            if not self._starts or s > self._starts[-1]:
                self._add(TxEnd(Lsn(s), Lsn(e), ts, xid, EndKind(kind), flags))
            off += ENTRY_SIZE
        self._read_off += off
        return self._read_off

    def refresh(self) -> int:
        """For a read-only map beside the running writer: load the entries appended
        since it was opened or last refreshed. Returns how many more it holds.

        A file the writer cut shorter (it drops a torn tail, or entries above its
        durable LSN, when it opens) is read again from the start: the entries it
        appends again describe the same WAL, so what this map holds stays true."""
        if self._path is None or self._file is not None:
            return 0
        with self._lock:
            before = len(self._entries)
            try:
                size = self._path.stat().st_size
            except FileNotFoundError:
                return 0
            if size < self._read_off:
                self._entries, self._starts, self._prefix_max = [], [], []
                self._read_off = 0
            self._load()
            return max(0, len(self._entries) - before)

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

    # -- writing ---------------------------------------------------------------------
    def _add(self, e: TxEnd) -> None:
        if self._starts and e.start_lsn <= self._starts[-1]:
            raise ValueError(f"time map entries must ascend: {e.start_lsn} after {Lsn(self._starts[-1])}")
        self._entries.append(e)
        self._starts.append(int(e.start_lsn))
        prev = self._prefix_max[-1] if self._prefix_max else -(1 << 63)
        self._prefix_max.append(max(prev, e.timestamp))

    def append(self, e: TxEnd) -> None:
        """Add an entry (Invariant 1); an entry at or below the last start LSN
        is a re-ingested duplicate and is ignored."""
        with self._lock:
            if self._starts and e.start_lsn <= self._starts[-1]:
                return
            self._add(e)
            if self._file is not None:
                self._file.append(e.encode())

    # -- reading ---------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._entries)

    def entries(self, start: dt.datetime | None = None, end: dt.datetime | None = None
                ) -> Iterator[TxEnd]:
        lo = datetime_to_timestamptz(start) if start else None
        hi = datetime_to_timestamptz(end) if end else None
        with self._lock:
            snapshot = list(self._entries)
        for e in snapshot:
            if (lo is None or e.timestamp >= lo) and (hi is None or e.timestamp <= hi):
                yield e

    def last(self) -> TxEnd | None:
        with self._lock:
            return self._entries[-1] if self._entries else None

    def first(self) -> TxEnd | None:
        with self._lock:
            return self._entries[0] if self._entries else None

    def last_at_or_before(self, lsn: Lsn) -> TxEnd | None:
        """The last transaction end whose record ends at or before `lsn`."""
        with self._lock:
            i = bisect.bisect_right(self._starts, int(lsn)) - 1
            while i >= 0 and self._entries[i].end_lsn > lsn:
                i -= 1
            return self._entries[i] if i >= 0 else None

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
            # running maximum exceeds ts
            i = bisect.bisect_right(self._prefix_max, ts)
            included = self._entries[i - 1] if i > 0 else None
            following = self._entries[i] if i < len(self._entries) else None
        lsn = included.end_lsn if included is not None else history_start
        return TimeResolution(Lsn(max(lsn, history_start)), included, following)
