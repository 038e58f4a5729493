"""The shutdown checkpoint a historical server starts from: pg_control at X and
the WAL segment that holds the checkpoint record (what pg_resetwal writes).

Fed by the cluster's pg_control template (`SnapshotSource.control_template`),
the cluster values at X (`ControlValues`) and the server settings of the
instance. Feeds `skeleton` / `instance` (lazy mode, and materialize mode when
asked to skip `pg_resetwal` and the normal start/stop). Owns no file: it
returns bytes, the caller writes them.

What pg_resetwal does (src/bin/pg_resetwal/pg_resetwal.c, RewriteControlFile
and WriteEmptyXLOG) and what we do differently:
  * a new WAL segment after every page LSN (the one after X's segment); its
    first page has a long header and one XLOG_CHECKPOINT_SHUTDOWN record at
    offset 40 (SizeOfXLogLongPHD), xl_prev 0, CRC-32C over the data then the
    header up to xl_crc;
  * pg_control: state DB_SHUTDOWNED, checkPoint = redo = that record, the
    values at X in checkPointCopy, no backup or minimum recovery point,
    unloggedLSN FirstNormalUnloggedLSN;
  * pg_resetwal always writes wal_level=minimal (a hot standby refuses it, so
    it needs one normal start/stop): we write wal_level=replica, and
    MaxConnections / max_worker_processes / max_wal_senders /
    max_prepared_xacts / max_locks_per_xact no higher than the instance's own
    settings (a hot standby refuses to start below the primary's values).
Offsets are those of ControlFileData (see `controlfile`).
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass

import google_crc32c

from strata.historical.controlfile import DB_SHUTDOWNED, control_crc, parse_control
from strata.historical.source import ControlValues
from strata.lsn import Lsn
from strata.wal.reader import (
    RM_XLOG_ID,
    SIZE_OF_LONG_PHD,
    SIZE_OF_XLOG_RECORD,
    XLOG_BLCKSZ,
    XLOG_PAGE_MAGIC,
    XLP_LONG_HEADER,
)

XLOG_CHECKPOINT_SHUTDOWN = 0x00
XLR_BLOCK_ID_DATA_SHORT = 255
WAL_LEVEL_REPLICA = 1
FIRST_NORMAL_UNLOGGED_LSN = 1000
INVALID_TRANSACTION_ID = 0

# ControlFileData offsets (x86-64 / aarch64), see controlfile.py
_OFF_STATE = 16
_OFF_TIME = 24
_OFF_CHECKPOINT = 32
_OFF_CHECKPOINT_COPY = 40
_OFF_UNLOGGED_LSN = 128
_OFF_RECOVERY = 136  # minRecoveryPoint, minRecoveryPointTLI, backupStart/End, backupEndRequired
_RECOVERY = struct.Struct("<QI4xQQ?3x")
_OFF_SETTINGS = 172  # wal_level .. track_commit_timestamp
_SETTINGS = struct.Struct("<i?3xiiiii?3x")
_OFF_CRC = 292

# CheckPoint (88 bytes): redo, ThisTimeLineID, PrevTimeLineID, fullPageWrites, wal_level,
# nextXid, nextOid, nextMulti, nextMultiOffset, oldestXid, oldestXidDB, oldestMulti,
# oldestMultiDB, time, oldestCommitTsXid, newestCommitTsXid, oldestActiveXid
_CHECKPOINT = struct.Struct("<QII?3xiQIIIIIII4xqIII4x")
_PAGE_HDR = struct.Struct("<HHIQI4xQII")  # XLogLongPageHeaderData
_REC_HDR = struct.Struct("<IIQBB2xI")  # XLogRecord
_U32 = struct.Struct("<I")
_I64 = struct.Struct("<q")
_U64 = struct.Struct("<Q")


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """The settings a hot standby compares with pg_control's (ours must not be lower)."""

    max_connections: int = 20
    max_worker_processes: int = 8
    max_wal_senders: int = 0
    max_prepared_xacts: int = 0
    max_locks_per_xact: int = 64


@dataclass(frozen=True, slots=True)
class StartupFiles:
    """pg_control and the WAL segment (name, first page; the rest is zeros)."""

    pg_control: bytes
    wal_name: str
    wal_first_page: bytes
    wal_segment_size: int
    checkpoint: Lsn


def wal_file_name(timeline: int, lsn: int, segment_size: int) -> str:
    """The WAL segment file name holding `lsn` (XLogFileName)."""
    segno = lsn // segment_size
    per_id = 0x1_0000_0000 // segment_size
    return f"{timeline:08X}{segno // per_id:08X}{segno % per_id:08X}"


def _checkpoint_record(cp: bytes) -> bytes:
    body = bytes([XLR_BLOCK_ID_DATA_SHORT, len(cp)]) + cp
    tot_len = SIZE_OF_XLOG_RECORD + len(body)
    head = _REC_HDR.pack(tot_len, INVALID_TRANSACTION_ID, 0, XLOG_CHECKPOINT_SHUTDOWN,
                         RM_XLOG_ID, 0)
    crc = google_crc32c.extend(google_crc32c.value(body), head[:20])
    return head[:20] + _U32.pack(crc) + body


def startup_files(template: bytes, values: ControlValues, lsn: Lsn, *,
                  limits: ServerLimits | None = None, now: int | None = None) -> StartupFiles:
    """pg_control at `lsn` and its checkpoint segment, from the cluster's template.

    Requires: `template` parses (checked); `values` are the cluster values at `lsn`.
    The checkpoint is in the segment after `lsn`'s, so every page LSN is below it.
    """
    cf = parse_control(template)
    limits = limits or ServerLimits()
    seg = cf.xlog_seg_size
    seg_start = (int(lsn) // seg + 1) * seg
    redo = seg_start + SIZE_OF_LONG_PHD
    stamp = int(time.time()) if now is None else now
    cp = _CHECKPOINT.pack(
        redo, cf.timeline, cf.timeline, True, WAL_LEVEL_REPLICA, values.next_full_xid,
        values.next_oid, values.next_multi, values.next_multi_offset, values.oldest_xid,
        values.oldest_xid_db, values.oldest_multi, values.oldest_multi_db, stamp,
        INVALID_TRANSACTION_ID, INVALID_TRANSACTION_ID, INVALID_TRANSACTION_ID)
    page = bytearray(XLOG_BLCKSZ)
    _PAGE_HDR.pack_into(page, 0, XLOG_PAGE_MAGIC, XLP_LONG_HEADER, cf.timeline, seg_start, 0,
                        cf.system_identifier, seg, XLOG_BLCKSZ)
    rec = _checkpoint_record(cp)
    page[SIZE_OF_LONG_PHD:SIZE_OF_LONG_PHD + len(rec)] = rec

    buf = bytearray(template)
    _U32.pack_into(buf, _OFF_STATE, DB_SHUTDOWNED)
    _I64.pack_into(buf, _OFF_TIME, stamp)
    _U64.pack_into(buf, _OFF_CHECKPOINT, redo)
    buf[_OFF_CHECKPOINT_COPY:_OFF_CHECKPOINT_COPY + _CHECKPOINT.size] = cp
    _U64.pack_into(buf, _OFF_UNLOGGED_LSN, FIRST_NORMAL_UNLOGGED_LSN)
    _RECOVERY.pack_into(buf, _OFF_RECOVERY, 0, 0, 0, 0, False)
    _SETTINGS.pack_into(buf, _OFF_SETTINGS, WAL_LEVEL_REPLICA, False, limits.max_connections,
                        limits.max_worker_processes, limits.max_wal_senders,
                        limits.max_prepared_xacts, limits.max_locks_per_xact, False)
    _U32.pack_into(buf, _OFF_CRC, control_crc(buf))
    return StartupFiles(bytes(buf), wal_file_name(cf.timeline, seg_start, seg), bytes(page), seg,
                        Lsn(redo))
