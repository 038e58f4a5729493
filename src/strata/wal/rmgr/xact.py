"""Typed main data of the Transaction resource manager (rmgr id 1).

What it is: frozen value objects for every PostgreSQL 18 ``XLOG_XACT_*``
record (COMMIT, PREPARE, ABORT, COMMIT_PREPARED, ABORT_PREPARED, ASSIGNMENT,
INVALIDATIONS) and `parse(record)`, which picks the right one. The commit and
abort layouts follow ``ParseCommitRecord`` / ``ParseAbortRecord``
(src/backend/access/rmgrdesc/xactdesc.c); struct layouts come from the 18.6
header access/xact.h (x86-64, little-endian, MAXALIGN 8).

Fed by: `DecodedRecord` from the WAL decoder. Feeds: `ingest.transam` (pg_xact
status bits, dropped relations), `ingest.cluster_state` (next XID) and the
time map (commit timestamps). Owns: nothing but parsing; no I/O.

Times (``TimestampTz``) are converted by `strata.pg.timestamp`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import datetime

from strata.errors import UnsupportedRecordError, WalDecodeError
from strata.pg.structs import U32
from strata.pg.timestamp import timestamptz_to_datetime
from strata.wal.record import DecodedRecord, RelFileLocator
from strata.wal.rmgr import (  # noqa: F401  (one table of ids and record types)
    RM_XACT_ID,
    XLOG_XACT_ABORT,
    XLOG_XACT_ABORT_PREPARED,
    XLOG_XACT_ASSIGNMENT,
    XLOG_XACT_COMMIT,
    XLOG_XACT_COMMIT_PREPARED,
    XLOG_XACT_HAS_INFO,
    XLOG_XACT_INVALIDATIONS,
    XLOG_XACT_OPMASK,
    XLOG_XACT_PREPARE,
)

XACT_XINFO_HAS_DBINFO = 1 << 0
XACT_XINFO_HAS_SUBXACTS = 1 << 1
XACT_XINFO_HAS_RELFILELOCATORS = 1 << 2
XACT_XINFO_HAS_INVALS = 1 << 3
XACT_XINFO_HAS_TWOPHASE = 1 << 4
XACT_XINFO_HAS_ORIGIN = 1 << 5
XACT_XINFO_HAS_AE_LOCKS = 1 << 6
XACT_XINFO_HAS_GID = 1 << 7
XACT_XINFO_HAS_DROPPED_STATS = 1 << 8

XACT_COMPLETION_APPLY_FEEDBACK = 1 << 29
XACT_COMPLETION_UPDATE_RELCACHE_FILE = 1 << 30
XACT_COMPLETION_FORCE_SYNC_COMMIT = 1 << 31

XACT_TYPE_NAMES = {
    XLOG_XACT_COMMIT: "COMMIT",
    XLOG_XACT_PREPARE: "PREPARE",
    XLOG_XACT_ABORT: "ABORT",
    XLOG_XACT_COMMIT_PREPARED: "COMMIT_PREPARED",
    XLOG_XACT_ABORT_PREPARED: "ABORT_PREPARED",
    XLOG_XACT_ASSIGNMENT: "ASSIGNMENT",
    XLOG_XACT_INVALIDATIONS: "INVALIDATION",
}

_I64 = struct.Struct("<q")
_I32 = struct.Struct("<i")
_XINFO = U32
_DBINFO = struct.Struct("<II")
_RLOC = struct.Struct("<III")  # RelFileLocator: spcOid, dbOid, relNumber
_STATS_ITEM = struct.Struct("<iIII")  # kind, dboid, objid_lo, objid_hi
_ORIGIN = struct.Struct("<Qq")  # origin_lsn, origin_timestamp (stored unaligned)
_ASSIGNMENT = struct.Struct("<Ii")  # xtop, nsubxacts
SIZE_OF_INVAL_MSG = 16  # sizeof(SharedInvalidationMessage)
# xl_xact_prepare: magic, total_len, xid, database, prepared_at, owner, nsubxacts,
# ncommitrels, nabortrels, ncommitstats, nabortstats, ninvalmsgs, initfileinval,
# (pad), gidlen, origin_lsn, origin_timestamp -> 72 bytes
_PREPARE = struct.Struct("<IIIIqIiiiiii?xHQq")
TWOPHASE_MAGIC = 0x57F94534


def _align8(n: int) -> int:
    return (n + 7) & ~7


@dataclass(frozen=True, slots=True)
class XactStatsItem:
    """xl_xact_stats_item: a pgstat entry to drop."""

    kind: int
    dboid: int
    objid: int


@dataclass(frozen=True, slots=True)
class InvalMessage:
    """One SharedInvalidationMessage (16 bytes); `id` says which kind."""

    id: int  # signed: >= 0 catcache id, -1 catalog, -2 relcache, -3 smgr, -4 relmap, -5 snapshot
    raw: bytes

    @property
    def db_id(self) -> int:
        return int(U32.unpack_from(self.raw, 4)[0])

    def describe(self) -> str:
        """What pg_waldump prints for it (standby_desc_invalidations)."""
        second = int(U32.unpack_from(self.raw, 8)[0])
        if self.id >= 0:
            return f"catcache {self.id}"
        return {
            -1: f"catalog {second}",
            -2: f"relcache {second}",
            -3: "smgr",
            -4: f"relmap db {self.db_id}",
            -5: f"snapshot {second}",
            -6: f"relsync {second}",
        }.get(self.id, f"unrecognized id {self.id}")


def _invals(data: bytes, off: int, n: int, lsn: int) -> tuple[tuple[InvalMessage, ...], int]:
    end = off + n * SIZE_OF_INVAL_MSG
    if n < 0 or end > len(data):
        raise WalDecodeError(f"invalidation array overruns main data at {_fmt(lsn)}")
    msgs = tuple(
        InvalMessage(struct.unpack_from("<b", data, o)[0], bytes(data[o:o + SIZE_OF_INVAL_MSG]))
        for o in range(off, end, SIZE_OF_INVAL_MSG)
    )
    return msgs, end


def _fmt(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:08X}"


def _xids(data: bytes, off: int, n: int, lsn: int) -> tuple[tuple[int, ...], int]:
    end = off + 4 * n
    if n < 0 or end > len(data):
        raise WalDecodeError(f"xid array of {n} overruns main data at {_fmt(lsn)}")
    return struct.unpack_from(f"<{n}I", data, off), end


def _rlocs(data: bytes, off: int, n: int, lsn: int) -> tuple[tuple[RelFileLocator, ...], int]:
    end = off + _RLOC.size * n
    if n < 0 or end > len(data):
        raise WalDecodeError(f"relfilelocator array of {n} overruns main data at {_fmt(lsn)}")
    return tuple(RelFileLocator(*_RLOC.unpack_from(data, o)) for o in range(off, end, _RLOC.size)), end


def _stats(data: bytes, off: int, n: int, lsn: int) -> tuple[tuple[XactStatsItem, ...], int]:
    end = off + _STATS_ITEM.size * n
    if n < 0 or end > len(data):
        raise WalDecodeError(f"stats item array of {n} overruns main data at {_fmt(lsn)}")
    items = []
    for o in range(off, end, _STATS_ITEM.size):
        kind, dboid, lo, hi = _STATS_ITEM.unpack_from(data, o)
        items.append(XactStatsItem(kind, dboid, (hi << 32) | lo))
    return tuple(items), end


@dataclass(frozen=True, slots=True)
class XactCommit:
    """COMMIT or COMMIT_PREPARED (xl_xact_commit + the xinfo sub-records)."""

    xid: int  # the committed top-level xid: twophase_xid for 2PC, else xl_xid
    prepared: bool  # COMMIT_PREPARED
    xact_time: int  # TimestampTz
    xinfo: int
    db_id: int
    ts_id: int
    subxacts: tuple[int, ...]
    rels: tuple[RelFileLocator, ...]  # relations dropped at commit
    stats: tuple[XactStatsItem, ...]
    invals: tuple[InvalMessage, ...]
    twophase_xid: int
    twophase_gid: str
    origin_lsn: int
    origin_timestamp: int

    @property
    def timestamp(self) -> datetime:
        return timestamptz_to_datetime(self.xact_time)

    @property
    def all_xids(self) -> tuple[int, ...]:
        return (self.xid, *self.subxacts)


@dataclass(frozen=True, slots=True)
class XactAbort:
    """ABORT or ABORT_PREPARED (xl_xact_abort + the xinfo sub-records).

    A rolled-back subtransaction writes an ABORT whose `xid` is the subxid.
    """

    xid: int
    prepared: bool
    xact_time: int
    xinfo: int
    db_id: int
    ts_id: int
    subxacts: tuple[int, ...]
    rels: tuple[RelFileLocator, ...]  # relations dropped at abort
    stats: tuple[XactStatsItem, ...]
    twophase_xid: int
    twophase_gid: str
    origin_lsn: int
    origin_timestamp: int

    @property
    def timestamp(self) -> datetime:
        return timestamptz_to_datetime(self.xact_time)

    @property
    def all_xids(self) -> tuple[int, ...]:
        return (self.xid, *self.subxacts)


@dataclass(frozen=True, slots=True)
class XactPrepare:
    """PREPARE: the two-phase state file as logged (xl_xact_prepare + arrays).

    pg_xact is not touched: the xid stays "in progress" until COMMIT/ABORT_PREPARED.
    """

    xid: int
    database: int
    prepared_at: int
    owner: int
    gid: str
    subxacts: tuple[int, ...]
    commit_rels: tuple[RelFileLocator, ...]
    abort_rels: tuple[RelFileLocator, ...]
    commit_stats: tuple[XactStatsItem, ...]
    abort_stats: tuple[XactStatsItem, ...]
    invals: tuple[InvalMessage, ...]
    initfileinval: bool
    origin_lsn: int
    origin_timestamp: int

    @property
    def timestamp(self) -> datetime:
        return timestamptz_to_datetime(self.prepared_at)


@dataclass(frozen=True, slots=True)
class XactAssignment:
    """ASSIGNMENT: subxids attached to their top-level xid (hot standby only)."""

    xtop: int
    xsub: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class XactInvalidations:
    """INVALIDATION (wal_level=logical): invalidation messages mid-transaction."""

    msgs: tuple[InvalMessage, ...]


XactRecord = XactCommit | XactAbort | XactPrepare | XactAssignment | XactInvalidations


def _parse_completion(record: DecodedRecord, *, commit: bool) -> XactCommit | XactAbort:
    data = record.main_data
    lsn = int(record.lsn)
    info = record.info
    if len(data) < 8:
        raise WalDecodeError(f"transaction record at {_fmt(lsn)} has {len(data)} bytes of main data")
    (xact_time,) = _I64.unpack_from(data, 0)
    off = 8
    xinfo = 0
    if info & XLOG_XACT_HAS_INFO:
        (xinfo,) = _XINFO.unpack_from(data, off)
        off += 4
    db_id = ts_id = 0
    if xinfo & XACT_XINFO_HAS_DBINFO:
        db_id, ts_id = _DBINFO.unpack_from(data, off)
        off += 8
    subxacts: tuple[int, ...] = ()
    if xinfo & XACT_XINFO_HAS_SUBXACTS:
        (n,) = _I32.unpack_from(data, off)
        subxacts, off = _xids(data, off + 4, n, lsn)
    rels: tuple[RelFileLocator, ...] = ()
    if xinfo & XACT_XINFO_HAS_RELFILELOCATORS:
        (n,) = _I32.unpack_from(data, off)
        rels, off = _rlocs(data, off + 4, n, lsn)
    stats: tuple[XactStatsItem, ...] = ()
    if xinfo & XACT_XINFO_HAS_DROPPED_STATS:
        (n,) = _I32.unpack_from(data, off)
        stats, off = _stats(data, off + 4, n, lsn)
    invals: tuple[InvalMessage, ...] = ()
    if commit and xinfo & XACT_XINFO_HAS_INVALS:
        (n,) = _I32.unpack_from(data, off)
        invals, off = _invals(data, off + 4, n, lsn)
    twophase_xid = 0
    gid = ""
    if xinfo & XACT_XINFO_HAS_TWOPHASE:
        (twophase_xid,) = U32.unpack_from(data, off)
        off += 4
        if xinfo & XACT_XINFO_HAS_GID:
            nul = data.find(b"\x00", off)
            if nul < 0:
                raise WalDecodeError(f"unterminated GID in transaction record at {_fmt(lsn)}")
            gid = data[off:nul].decode("utf-8", errors="replace")
            off = nul + 1
    origin_lsn = origin_ts = 0
    if xinfo & XACT_XINFO_HAS_ORIGIN:
        if off + _ORIGIN.size > len(data):
            raise WalDecodeError(f"origin overruns transaction record at {_fmt(lsn)}")
        origin_lsn, origin_ts = _ORIGIN.unpack_from(data, off)  # unaligned on purpose
        off += _ORIGIN.size
    if off > len(data):
        raise WalDecodeError(f"transaction record at {_fmt(lsn)} is shorter than its xinfo says")
    prepared = (info & XLOG_XACT_OPMASK) in (XLOG_XACT_COMMIT_PREPARED, XLOG_XACT_ABORT_PREPARED)
    xid = twophase_xid if xinfo & XACT_XINFO_HAS_TWOPHASE else record.xl_xid
    if commit:
        return XactCommit(xid, prepared, xact_time, xinfo, db_id, ts_id, subxacts, rels, stats,
                          invals, twophase_xid, gid, origin_lsn, origin_ts)
    return XactAbort(xid, prepared, xact_time, xinfo, db_id, ts_id, subxacts, rels, stats,
                     twophase_xid, gid, origin_lsn, origin_ts)


def _parse_prepare(record: DecodedRecord) -> XactPrepare:
    data = record.main_data
    lsn = int(record.lsn)
    if len(data) < _PREPARE.size:
        raise WalDecodeError(f"PREPARE record at {_fmt(lsn)} has {len(data)} bytes of main data")
    (magic, total_len, xid, database, prepared_at, owner, nsub, ncommit, nabort, ncstats,
     nastats, ninval, initfileinval, gidlen, origin_lsn, origin_ts) = _PREPARE.unpack_from(data, 0)
    if magic != TWOPHASE_MAGIC:
        raise WalDecodeError(f"PREPARE record at {_fmt(lsn)} has bad magic {magic:#x}")
    # The record is the two-phase state file without its trailing CRC-32C.
    if len(data) != total_len - 4:
        raise WalDecodeError(f"PREPARE record at {_fmt(lsn)} has {len(data)} bytes, its header "
                             f"says {total_len - 4}")
    off = _align8(_PREPARE.size)
    gid = data[off:off + gidlen].split(b"\x00", 1)[0].decode("utf-8", errors="replace")
    off += _align8(gidlen)
    subxacts, end = _xids(data, off, nsub, lsn)
    off = off + _align8(end - off)
    commit_rels, end = _rlocs(data, off, ncommit, lsn)
    off = off + _align8(end - off)
    abort_rels, end = _rlocs(data, off, nabort, lsn)
    off = off + _align8(end - off)
    commit_stats, end = _stats(data, off, ncstats, lsn)
    off = off + _align8(end - off)
    abort_stats, end = _stats(data, off, nastats, lsn)
    off = off + _align8(end - off)
    invals, _ = _invals(data, off, ninval, lsn)
    return XactPrepare(xid, database, prepared_at, owner, gid, subxacts, commit_rels, abort_rels,
                       commit_stats, abort_stats, invals, bool(initfileinval), origin_lsn, origin_ts)


def parse(record: DecodedRecord) -> XactRecord:
    """The typed main data of a Transaction record.

    Raises: UnsupportedRecordError for an unknown opcode; WalDecodeError when the
    main data is shorter than its own header says.
    """
    try:
        return _parse(record)
    except struct.error as e:
        raise WalDecodeError(f"Transaction record at {_fmt(int(record.lsn))} is truncated: {e}") from e


def _parse(record: DecodedRecord) -> XactRecord:
    op = record.info & XLOG_XACT_OPMASK
    if op in (XLOG_XACT_COMMIT, XLOG_XACT_COMMIT_PREPARED):
        return _parse_completion(record, commit=True)
    if op in (XLOG_XACT_ABORT, XLOG_XACT_ABORT_PREPARED):
        return _parse_completion(record, commit=False)
    if op == XLOG_XACT_PREPARE:
        return _parse_prepare(record)
    if op == XLOG_XACT_ASSIGNMENT:
        data = record.main_data
        xtop, n = _ASSIGNMENT.unpack_from(data, 0)
        xsub, _ = _xids(data, _ASSIGNMENT.size, n, int(record.lsn))
        return XactAssignment(xtop, xsub)
    if op == XLOG_XACT_INVALIDATIONS:
        # xl_xact_invals: int nmsgs, then the messages
        (n,) = _I32.unpack_from(record.main_data, 0)
        msgs, _ = _invals(record.main_data, 4, n, int(record.lsn))
        return XactInvalidations(msgs)
    raise UnsupportedRecordError("Transaction", f"UNKNOWN ({record.info:#04x})", int(record.lsn))
