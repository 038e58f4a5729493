"""Typed main data of the Standby resource manager (rmgr id 8).

What it is: `StandbyLocks` (AccessExclusive locks held by transactions),
`RunningXacts` (a snapshot of running transactions: its `next_xid` advances
the cluster's next XID), `StandbyInvalidations`, and `parse`.
Layouts: storage/standbydefs.h and storage/lockdefs.h of the 18.6 headers.

Fed by: `DecodedRecord`. Feeds: `ingest.cluster_state`. No page effect.
Owns: nothing but parsing.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from strata.errors import UnsupportedRecordError, WalDecodeError
from strata.wal.record import DecodedRecord
from strata.wal.rmgr import (  # noqa: F401  (one table of ids and record types)
    RM_STANDBY_ID,
    XLOG_INVALIDATIONS,
    XLOG_RUNNING_XACTS,
    XLOG_STANDBY_LOCK,
)
from strata.wal.rmgr.xact import SIZE_OF_INVAL_MSG, InvalMessage

_I32 = struct.Struct("<i")
_LOCK = struct.Struct("<III")  # xid, dbOid, relOid
# xcnt, subxcnt, subxid_overflow, (pad), nextXid, oldestRunningXid, latestCompletedXid
_RUNNING = struct.Struct("<ii?3xIII")
_INVALS = struct.Struct("<II?3xi")  # dbId, tsId, relcacheInitFileInval, nmsgs


@dataclass(frozen=True, slots=True)
class StandbyLock:
    xid: int
    db_oid: int
    rel_oid: int


@dataclass(frozen=True, slots=True)
class StandbyLocks:
    locks: tuple[StandbyLock, ...]


@dataclass(frozen=True, slots=True)
class RunningXacts:
    subxid_overflow: bool
    next_xid: int
    oldest_running_xid: int
    latest_completed_xid: int
    xids: tuple[int, ...]  # top-level xids
    subxids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class StandbyInvalidations:
    db_id: int
    ts_id: int
    relcache_init_file_inval: bool
    msgs: tuple[InvalMessage, ...]


StandbyRecord = StandbyLocks | RunningXacts | StandbyInvalidations


def parse(record: DecodedRecord) -> StandbyRecord:
    """Raises: UnsupportedRecordError (unknown opcode), WalDecodeError (short data)."""
    info = record.info
    data = record.main_data
    try:
        if info == XLOG_STANDBY_LOCK:
            (n,) = _I32.unpack_from(data, 0)
            if n < 0:
                raise WalDecodeError(f"Standby LOCK at {record.lsn} lists {n} locks")
            return StandbyLocks(tuple(StandbyLock(*_LOCK.unpack_from(data, 4 + i * _LOCK.size))
                                      for i in range(n)))
        if info == XLOG_RUNNING_XACTS:
            xcnt, subxcnt, overflow, nxt, oldest, latest = _RUNNING.unpack_from(data, 0)
            if xcnt < 0 or subxcnt < 0:
                raise WalDecodeError(f"RUNNING_XACTS at {record.lsn} has negative counts")
            xids = struct.unpack_from(f"<{xcnt + subxcnt}I", data, _RUNNING.size)
            return RunningXacts(bool(overflow), nxt, oldest, latest, xids[:xcnt], xids[xcnt:])
        if info == XLOG_INVALIDATIONS:
            db_id, ts_id, init_inval, n = _INVALS.unpack_from(data, 0)
            if n < 0 or _INVALS.size + n * SIZE_OF_INVAL_MSG > len(data):
                raise WalDecodeError(f"Standby INVALIDATIONS at {record.lsn}: bad count {n}")
            msgs = tuple(
                InvalMessage(struct.unpack_from("<b", data, o)[0], bytes(data[o:o + SIZE_OF_INVAL_MSG]))
                for o in range(_INVALS.size, _INVALS.size + n * SIZE_OF_INVAL_MSG, SIZE_OF_INVAL_MSG))
            return StandbyInvalidations(db_id, ts_id, bool(init_inval), msgs)
    except struct.error as e:
        raise WalDecodeError(f"Standby record at {record.lsn} is truncated: {e}") from e
    raise UnsupportedRecordError("Standby", f"UNKNOWN ({info:#04x})", int(record.lsn))
