"""The shutdown checkpoint a historical server starts from: pg_control at X and
the WAL segment that holds the checkpoint record (what pg_resetwal writes).

Fed by the cluster's pg_control template (`ClusterView.control_template`),
the cluster values at X (a `keyspace.cluster.ClusterState`) and the
settings of the instance (`ServerLimits`: the historical server's own, not
the primary's). Feeds `modes` (both modes start this way: no `pg_resetwal`, no
normal start/stop). `write_startup_files` writes global/pg_control,
pg_wal/<segment> (sparse: its first page, then zeros) and standby.signal.

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

import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path

import google_crc32c

from strata.historical.controlfile import (
    DB_SHUTDOWNED,
    control_crc,
    parse_control,
    with_checksum_version,
)
from strata.keyspace.cluster import ClusterState
from strata.lsn import Lsn
from strata.pg.xlogfile import segment_file_name
from strata.runtime.osuser import give_to_server_user
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


def _checkpoint_record(cp: bytes) -> bytes:
    body = bytes([XLR_BLOCK_ID_DATA_SHORT, len(cp)]) + cp
    tot_len = SIZE_OF_XLOG_RECORD + len(body)
    head = _REC_HDR.pack(tot_len, INVALID_TRANSACTION_ID, 0, XLOG_CHECKPOINT_SHUTDOWN,
                         RM_XLOG_ID, 0)
    crc = google_crc32c.extend(google_crc32c.value(body), head[:20])
    return head[:20] + _U32.pack(crc) + body


def startup_files(template: bytes, values: ClusterState, lsn: Lsn, *,
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
    return StartupFiles(bytes(buf), segment_file_name(cf.timeline, seg_start // seg, seg), bytes(page), seg,
                        Lsn(redo))


def write_startup_files(datadir: Path, template: bytes, values: ClusterState, lsn: Lsn, *,
                        checksums: bool = True, limits: ServerLimits | None = None
                        ) -> StartupFiles:
    """Write pg_control at `lsn`, its checkpoint segment and standby.signal into
    `datadir` (owned by the server user, mode 0600): the directory is then ready
    for `instance.launch`. `checksums` sets data_checksum_version 1 (every page
    served carries a valid checksum) or 0."""
    sf = startup_files(with_checksum_version(template, 1 if checksums else 0), values, lsn,
                       limits=limits)
    files = {datadir / "global" / "pg_control": sf.pg_control,
             datadir / "standby.signal": b""}
    for path, data in files.items():
        path.write_bytes(data)
        give_to_server_user(path, recursive=False, mode=0o600)
    wal = datadir / "pg_wal" / sf.wal_name
    fd = os.open(wal, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, sf.wal_first_page)
        os.ftruncate(fd, sf.wal_segment_size)
    finally:
        os.close(fd)
    give_to_server_user(wal, recursive=False, mode=0o600)
    return sf
