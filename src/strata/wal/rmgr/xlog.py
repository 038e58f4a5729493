"""Typed main data of the XLOG resource manager (rmgr id 0).

What it is: frozen value objects for the XLOG records that carry control
state (checkpoints, NEXTOID, PARAMETER_CHANGE, END_OF_RECOVERY, ...) and
`parse(record)`. FPI and FPI_FOR_HINT carry nothing but block images, so they
parse to `XlogFpi`; the images themselves are in `record.blocks`.
Layouts: catalog/pg_control.h (CheckPoint) and access/xlog_internal.h of the
18.6 headers (x86-64, little-endian).

Fed by: `DecodedRecord`. Feeds: `ingest.cluster_state` (control values at an
LSN), the time map (restore points), the WAL reader (SWITCH, OVERWRITE_CONTRECORD).
Owns: nothing but parsing.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import UTC, datetime

from strata.errors import UnsupportedRecordError, WalDecodeError
from strata.lsn import Lsn
from strata.pg.constants import (  # noqa: F401  (re-exported for parsers' users)
    WAL_LEVEL_LOGICAL,
    WAL_LEVEL_MINIMAL,
    WAL_LEVEL_NAMES,
    WAL_LEVEL_REPLICA,
)
from strata.pg.structs import U32, U64
from strata.pg.timestamp import timestamptz_to_datetime
from strata.wal.record import DecodedRecord
from strata.wal.rmgr import (  # noqa: F401  (one table of ids and record types)
    RM_XLOG_ID,
    XLOG_BACKUP_END,
    XLOG_CHECKPOINT_ONLINE,
    XLOG_CHECKPOINT_REDO,
    XLOG_CHECKPOINT_SHUTDOWN,
    XLOG_END_OF_RECOVERY,
    XLOG_FPI,
    XLOG_FPI_FOR_HINT,
    XLOG_FPW_CHANGE,
    XLOG_NEXTOID,
    XLOG_NOOP,
    XLOG_OVERWRITE_CONTRECORD,
    XLOG_PARAMETER_CHANGE,
    XLOG_RESTORE_POINT,
    XLOG_SWITCH,
)

# wal_level values (xlog.h WalLevel)

MAXFNAMELEN = 64

# CheckPoint (88 bytes): redo, ThisTimeLineID, PrevTimeLineID, fullPageWrites, (pad),
# wal_level, nextXid (FullTransactionId), nextOid, nextMulti, nextMultiOffset,
# oldestXid, oldestXidDB, oldestMulti, oldestMultiDB, (pad), time (pg_time_t),
# oldestCommitTsXid, newestCommitTsXid, oldestActiveXid, (pad)
_CHECKPOINT = struct.Struct("<QII?3xiQIIIIIII4xqIII4x")
SIZE_OF_CHECKPOINT = _CHECKPOINT.size
# xl_parameter_change: 6 ints + 2 bools (+2 pad)
_PARAMETER_CHANGE = struct.Struct("<iiiiii??2x")
_RESTORE_POINT = struct.Struct(f"<q{MAXFNAMELEN}s")
_END_OF_RECOVERY = struct.Struct("<qIIi4x")
_OVERWRITE_CONTRECORD = struct.Struct("<Qq")
_I32 = struct.Struct("<i")


@dataclass(frozen=True, slots=True)
class CheckPoint:
    """CHECKPOINT_SHUTDOWN / CHECKPOINT_ONLINE main data (struct CheckPoint)."""

    shutdown: bool
    redo: Lsn
    this_timeline: int
    prev_timeline: int
    full_page_writes: bool
    wal_level: int
    next_full_xid: int  # FullTransactionId: epoch << 32 | xid
    next_oid: int
    next_multi: int
    next_multi_offset: int
    oldest_xid: int
    oldest_xid_db: int
    oldest_multi: int
    oldest_multi_db: int
    time: int  # pg_time_t: seconds since the Unix epoch
    oldest_commit_ts_xid: int
    newest_commit_ts_xid: int
    oldest_active_xid: int

    @property
    def next_xid(self) -> int:
        return self.next_full_xid & 0xFFFFFFFF

    @property
    def next_xid_epoch(self) -> int:
        return self.next_full_xid >> 32

    @property
    def timestamp(self) -> datetime:
        return datetime.fromtimestamp(self.time, UTC)

    @classmethod
    def unpack(cls, data: bytes, *, shutdown: bool) -> CheckPoint:
        (redo, tli, prev, fpw, wal_level, nxid, noid, nmulti, noff, oxid, oxdb, omulti, omdb,
         t, octs, ncts, oact) = _CHECKPOINT.unpack_from(data, 0)
        return cls(shutdown, Lsn(redo), tli, prev, bool(fpw), wal_level, nxid, noid, nmulti, noff,
                   oxid, oxdb, omulti, omdb, t, octs, ncts, oact)


@dataclass(frozen=True, slots=True)
class NextOid:
    next_oid: int


@dataclass(frozen=True, slots=True)
class Noop:
    pass


@dataclass(frozen=True, slots=True)
class Switch:
    """XLOG_SWITCH: the rest of the segment is unused."""


@dataclass(frozen=True, slots=True)
class BackupEnd:
    start_lsn: Lsn  # the backup's start point


@dataclass(frozen=True, slots=True)
class ParameterChange:
    max_connections: int
    max_worker_processes: int
    max_wal_senders: int
    max_prepared_xacts: int
    max_locks_per_xact: int
    wal_level: int
    wal_log_hints: bool
    track_commit_timestamp: bool


@dataclass(frozen=True, slots=True)
class RestorePoint:
    rp_time: int  # TimestampTz
    name: str

    @property
    def timestamp(self) -> datetime:
        return timestamptz_to_datetime(self.rp_time)


@dataclass(frozen=True, slots=True)
class FpwChange:
    full_page_writes: bool


@dataclass(frozen=True, slots=True)
class EndOfRecovery:
    end_time: int  # TimestampTz
    this_timeline: int
    prev_timeline: int
    wal_level: int

    @property
    def timestamp(self) -> datetime:
        return timestamptz_to_datetime(self.end_time)


@dataclass(frozen=True, slots=True)
class OverwriteContrecord:
    overwritten_lsn: Lsn
    overwrite_time: int  # TimestampTz

    @property
    def timestamp(self) -> datetime:
        return timestamptz_to_datetime(self.overwrite_time)


@dataclass(frozen=True, slots=True)
class CheckpointRedo:
    """XLOG_CHECKPOINT_REDO: marks the redo point of an online checkpoint."""

    wal_level: int


@dataclass(frozen=True, slots=True)
class XlogFpi:
    """FPI / FPI_FOR_HINT: the block images are the record's block references."""

    for_hint: bool


XlogRecord = (CheckPoint | NextOid | Noop | Switch | BackupEnd | ParameterChange | RestorePoint
              | FpwChange | EndOfRecovery | OverwriteContrecord | CheckpointRedo | XlogFpi)


def parse(record: DecodedRecord) -> XlogRecord:
    """The typed main data of an XLOG record.

    Raises: UnsupportedRecordError for an unknown opcode (e.g. 0xC0, used only
    before PostgreSQL 12); WalDecodeError for truncated main data.
    """
    try:
        return _parse(record)
    except struct.error as e:
        raise WalDecodeError(f"XLOG record at {record.lsn} is truncated: {e}") from e


def _parse(record: DecodedRecord) -> XlogRecord:
    info = record.info
    data = record.main_data
    if info in (XLOG_CHECKPOINT_SHUTDOWN, XLOG_CHECKPOINT_ONLINE):
        return CheckPoint.unpack(data, shutdown=info == XLOG_CHECKPOINT_SHUTDOWN)
    if info == XLOG_NEXTOID:
        return NextOid(U32.unpack_from(data, 0)[0])
    if info == XLOG_NOOP:
        return Noop()
    if info == XLOG_SWITCH:
        return Switch()
    if info == XLOG_BACKUP_END:
        return BackupEnd(Lsn(U64.unpack_from(data, 0)[0]))
    if info == XLOG_PARAMETER_CHANGE:
        return ParameterChange(*_PARAMETER_CHANGE.unpack_from(data, 0))
    if info == XLOG_RESTORE_POINT:
        t, raw = _RESTORE_POINT.unpack_from(data, 0)
        return RestorePoint(t, raw.split(b"\x00", 1)[0].decode("utf-8", errors="replace"))
    if info == XLOG_FPW_CHANGE:
        return FpwChange(bool(data[0]) if data else _short(record))
    if info == XLOG_END_OF_RECOVERY:
        return EndOfRecovery(*_END_OF_RECOVERY.unpack_from(data, 0))
    if info == XLOG_OVERWRITE_CONTRECORD:
        lsn, t = _OVERWRITE_CONTRECORD.unpack_from(data, 0)
        return OverwriteContrecord(Lsn(lsn), t)
    if info == XLOG_CHECKPOINT_REDO:
        return CheckpointRedo(_I32.unpack_from(data, 0)[0])
    if info in (XLOG_FPI, XLOG_FPI_FOR_HINT):
        return XlogFpi(info == XLOG_FPI_FOR_HINT)
    raise UnsupportedRecordError("XLOG", f"UNKNOWN ({info:#04x})", int(record.lsn))


def _short(record: DecodedRecord) -> bool:
    raise WalDecodeError(f"XLOG record at {record.lsn} has no main data")
