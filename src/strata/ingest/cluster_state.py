"""Cluster control values at an LSN (what pg_control holds) and how WAL moves them.

What it is:

* `ClusterState`: the values a historical data directory needs in its control
  file (next full XID, next OID, next multixact and member offset, oldest XID
  and multixact with their databases, timeline, WAL segment size, ...), the
  LSN they are valid at, and a versioned byte encoding for the store.
* `ClusterStateTracker`: applies WAL records one by one with the rules of
  PostgreSQL 18's redo (xlog_redo, xact_redo, multixact_redo, standby_redo
  and the "advance next XID past every record's xid" step of the redo loop).
* `ClusterState.from_pg_controldata`: the starting point, read from the
  output of ``pg_controldata`` of the imported cluster.
* `pg_resetwal_args`: the ``pg_resetwal`` switches that put a state into a
  control file (wal-census 5.3).

Fed by: decoded records (`DecodedRecord`) and the import baseline. Feeds:
`ingest.transam` (stores the state under ``Key.cluster(0)``) and historical
instances (pg_resetwal). Owns: the ClusterState encoding below.

Encoding (version 1; little-endian, 104 bytes; never reorder, append only with
a new version)::

    off size field
      0   4  magic b"STCS"
      4   2  version (1)
      6   2  flags: bit0 full_page_writes, bit1 wal_log_hints,
                    bit2 track_commit_timestamp, bit3 char signedness signed
      8   8  lsn (the state holds after every record ending at or before it)
     16   8  next_full_xid (epoch << 32 | xid)
     24   4  next_oid
     28   4  next_multi
     32   4  next_multi_offset
     36   4  oldest_xid
     40   4  oldest_xid_db
     44   4  oldest_multi
     48   4  oldest_multi_db
     52   4  oldest_commit_ts_xid
     56   4  newest_commit_ts_xid
     60   4  timeline
     64   4  prev_timeline
     68   4  wal_segment_size
     72   4  wal_level
     76   4  max_connections
     80   4  max_worker_processes
     84   4  max_wal_senders
     88   4  max_prepared_xacts
     92   4  max_locks_per_xact
     96   8  checkpoint_redo (redo LSN of the latest checkpoint seen)
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace

from strata.errors import CorruptionError
from strata.lsn import INVALID_LSN, Lsn
from strata.wal.record import DecodedRecord
from strata.wal.rmgr import multixact as mx_rmgr
from strata.wal.rmgr import standby as standby_rmgr
from strata.wal.rmgr import xact as xact_rmgr
from strata.wal.rmgr import xlog as xlog_rmgr

FIRST_NORMAL_XID = 3
FIRST_MULTIXACT_ID = 1
DEFAULT_WAL_SEGMENT_SIZE = 16 * 1024 * 1024

RM_XLOG_ID = 0
RM_XACT_ID = 1
RM_MULTIXACT_ID = 6
RM_STANDBY_ID = 8

_MAGIC = b"STCS"
_VERSION = 1
_ENCODING = struct.Struct("<4sHHQQIIIIIIIIIIIIIIIIIIQ")
ENCODED_SIZE = _ENCODING.size

_FLAG_FPW = 1
_FLAG_WAL_LOG_HINTS = 2
_FLAG_TRACK_COMMIT_TS = 4
_FLAG_CHAR_SIGNED = 8


def _int32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v & 0x80000000 else v


def xid_precedes(a: int, b: int) -> bool:
    """TransactionIdPrecedes."""
    if a < FIRST_NORMAL_XID or b < FIRST_NORMAL_XID:
        return a < b
    return _int32(a - b) < 0


def xid_follows_or_equals(a: int, b: int) -> bool:
    """TransactionIdFollowsOrEquals."""
    if a < FIRST_NORMAL_XID or b < FIRST_NORMAL_XID:
        return a >= b
    return _int32(a - b) >= 0


def multi_precedes(a: int, b: int) -> bool:
    """MultiXactIdPrecedes (and MultiXactOffsetPrecedes: same arithmetic)."""
    return _int32(a - b) < 0


def xid_advance(xid: int) -> int:
    """TransactionIdAdvance: +1, skipping the special xids 0..2 on wraparound."""
    xid = (xid + 1) & 0xFFFFFFFF
    return FIRST_NORMAL_XID if xid < FIRST_NORMAL_XID else xid


def xid_retreat(xid: int) -> int:
    """TransactionIdRetreat: -1, skipping the special xids."""
    xid = (xid - 1) & 0xFFFFFFFF
    while xid < FIRST_NORMAL_XID:
        xid = (xid - 1) & 0xFFFFFFFF
    return xid


@dataclass(frozen=True, slots=True)
class ClusterState:
    """The control values of a cluster as of `lsn`."""

    lsn: Lsn
    next_full_xid: int
    next_oid: int
    next_multi: int
    next_multi_offset: int
    oldest_xid: int
    oldest_xid_db: int
    oldest_multi: int
    oldest_multi_db: int
    oldest_commit_ts_xid: int = 0
    newest_commit_ts_xid: int = 0
    timeline: int = 1
    prev_timeline: int = 1
    wal_segment_size: int = DEFAULT_WAL_SEGMENT_SIZE
    wal_level: int = xlog_rmgr.WAL_LEVEL_REPLICA
    full_page_writes: bool = True
    wal_log_hints: bool = False
    track_commit_timestamp: bool = False
    max_connections: int = 100
    max_worker_processes: int = 8
    max_wal_senders: int = 10
    max_prepared_xacts: int = 0
    max_locks_per_xact: int = 64
    checkpoint_redo: Lsn = INVALID_LSN
    char_signed: bool = True

    @property
    def next_xid(self) -> int:
        return self.next_full_xid & 0xFFFFFFFF

    @property
    def next_xid_epoch(self) -> int:
        return self.next_full_xid >> 32

    # -- encoding --------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        flags = ((_FLAG_FPW if self.full_page_writes else 0)
                 | (_FLAG_WAL_LOG_HINTS if self.wal_log_hints else 0)
                 | (_FLAG_TRACK_COMMIT_TS if self.track_commit_timestamp else 0)
                 | (_FLAG_CHAR_SIGNED if self.char_signed else 0))
        return _ENCODING.pack(
            _MAGIC, _VERSION, flags, int(self.lsn), self.next_full_xid, self.next_oid,
            self.next_multi, self.next_multi_offset, self.oldest_xid, self.oldest_xid_db,
            self.oldest_multi, self.oldest_multi_db, self.oldest_commit_ts_xid,
            self.newest_commit_ts_xid, self.timeline, self.prev_timeline, self.wal_segment_size,
            self.wal_level, self.max_connections, self.max_worker_processes, self.max_wal_senders,
            self.max_prepared_xacts, self.max_locks_per_xact, int(self.checkpoint_redo))

    @classmethod
    def from_bytes(cls, data: bytes) -> ClusterState:
        """Raises: CorruptionError on a wrong magic, version or size."""
        if len(data) != ENCODED_SIZE or data[:4] != _MAGIC:
            raise CorruptionError(f"not a cluster state value ({len(data)} bytes, magic {data[:4]!r})")
        (_, version, flags, lsn, nfx, noid, nmulti, noff, oxid, oxdb, omulti, omdb, octs, ncts,
         tli, ptli, segsz, wal_level, maxconn, maxwork, maxsend, maxprep, maxlocks,
         redo) = _ENCODING.unpack(data)
        if version != _VERSION:
            raise CorruptionError(f"cluster state version {version} is not supported (know {_VERSION})")
        return cls(Lsn(lsn), nfx, noid, nmulti, noff, oxid, oxdb, omulti, omdb, octs, ncts, tli,
                   ptli, segsz, wal_level, bool(flags & _FLAG_FPW),
                   bool(flags & _FLAG_WAL_LOG_HINTS), bool(flags & _FLAG_TRACK_COMMIT_TS),
                   maxconn, maxwork, maxsend, maxprep, maxlocks, Lsn(redo),
                   bool(flags & _FLAG_CHAR_SIGNED))

    # -- starting points --------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, ckpt: xlog_rmgr.CheckPoint, lsn: Lsn, **rest: object) -> ClusterState:
        """The state a checkpoint record states (believed exactly, as at a shutdown one)."""
        return cls(lsn=lsn, next_full_xid=ckpt.next_full_xid, next_oid=ckpt.next_oid,
                   next_multi=ckpt.next_multi, next_multi_offset=ckpt.next_multi_offset,
                   oldest_xid=ckpt.oldest_xid, oldest_xid_db=ckpt.oldest_xid_db,
                   oldest_multi=ckpt.oldest_multi, oldest_multi_db=ckpt.oldest_multi_db,
                   oldest_commit_ts_xid=ckpt.oldest_commit_ts_xid,
                   newest_commit_ts_xid=ckpt.newest_commit_ts_xid, timeline=ckpt.this_timeline,
                   prev_timeline=ckpt.prev_timeline, wal_level=ckpt.wal_level,
                   full_page_writes=ckpt.full_page_writes, checkpoint_redo=ckpt.redo,
                   **rest)  # type: ignore[arg-type]

    @classmethod
    def from_pg_controldata(cls, text: str, *, lsn: Lsn | None = None) -> ClusterState:
        """Parse ``pg_controldata`` output (English messages).

        `lsn` defaults to the end of the latest checkpoint record's position as
        printed ("Latest checkpoint location"); pass the record's end LSN to be exact.
        Raises: ValueError naming the missing field.
        """
        fields = parse_pg_controldata(text)

        def get(name: str) -> str:
            try:
                return fields[name]
            except KeyError:
                raise ValueError(f"pg_controldata output lacks {name!r}") from None

        epoch, xid = get("Latest checkpoint's NextXID").split(":")
        return cls(
            lsn=lsn if lsn is not None else Lsn.parse(get("Latest checkpoint location")),
            next_full_xid=(int(epoch) << 32) | int(xid),
            next_oid=int(get("Latest checkpoint's NextOID")),
            next_multi=int(get("Latest checkpoint's NextMultiXactId")),
            next_multi_offset=int(get("Latest checkpoint's NextMultiOffset")),
            oldest_xid=int(get("Latest checkpoint's oldestXID")),
            oldest_xid_db=int(get("Latest checkpoint's oldestXID's DB")),
            oldest_multi=int(get("Latest checkpoint's oldestMultiXid")),
            oldest_multi_db=int(get("Latest checkpoint's oldestMulti's DB")),
            oldest_commit_ts_xid=int(get("Latest checkpoint's oldestCommitTsXid")),
            newest_commit_ts_xid=int(get("Latest checkpoint's newestCommitTsXid")),
            timeline=int(get("Latest checkpoint's TimeLineID")),
            prev_timeline=int(get("Latest checkpoint's PrevTimeLineID")),
            wal_segment_size=int(get("Bytes per WAL segment")),
            wal_level={v: k for k, v in xlog_rmgr.WAL_LEVEL_NAMES.items()}[get("wal_level setting")],
            full_page_writes=get("Latest checkpoint's full_page_writes") == "on",
            wal_log_hints=get("wal_log_hints setting") == "on",
            track_commit_timestamp=get("track_commit_timestamp setting") == "on",
            max_connections=int(get("max_connections setting")),
            max_worker_processes=int(get("max_worker_processes setting")),
            max_wal_senders=int(get("max_wal_senders setting")),
            max_prepared_xacts=int(get("max_prepared_xacts setting")),
            max_locks_per_xact=int(get("max_locks_per_xact setting")),
            checkpoint_redo=Lsn.parse(get("Latest checkpoint's REDO location")),
            char_signed=fields.get("Default char data signedness", "signed") == "signed",
        )


def parse_pg_controldata(text: str) -> dict[str, str]:
    """``pg_controldata`` output as {label: value} (label without the colon)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        # Labels may themselves contain no ':'; values may (e.g. NextXID "0:757").
        label, sep, value = line.partition(":")
        if sep:
            out[label.strip()] = value.strip()
    return out


class ClusterStateTracker:
    """Moves a `ClusterState` through WAL with PostgreSQL 18's redo rules.

    Requires: records are applied in WAL order, each exactly once, starting
    right after the point the initial state describes.
    """

    def __init__(self, initial: ClusterState) -> None:
        self._s = initial
        self._lsn = initial.lsn

    @property
    def state(self) -> ClusterState:
        if self._s.lsn != self._lsn:
            self._s = replace(self._s, lsn=self._lsn)
        return self._s

    def apply(self, record: DecodedRecord, parsed: object | None = None) -> bool:
        """Apply one record; returns whether any value other than `lsn` changed.

        `parsed` may pass the record's already parsed main data (from its rmgr's
        `parse`) to save parsing it twice.
        """
        # Hot path (every record of the stream): helpers return the very same
        # object when nothing changes, so most records cost an int comparison.
        before = self._s
        s = _advance_past_xid(before, record.xl_xid)
        rmid = record.xl_rmid
        if rmid == RM_XLOG_ID:
            s = self._xlog(s, record)
        elif rmid == RM_XACT_ID:
            s = self._xact(s, record, parsed)
        elif rmid == RM_MULTIXACT_ID:
            s = self._multixact(s, record, parsed)
        elif rmid == RM_STANDBY_ID and record.info == standby_rmgr.XLOG_RUNNING_XACTS:
            running = standby_rmgr.parse(record)
            assert isinstance(running, standby_rmgr.RunningXacts)
            # ProcArrayApplyRecoveryInfo: advance past nextXid - 1
            s = _advance_past_xid(s, xid_retreat(running.next_xid))
        self._lsn = record.end_lsn
        if s is before:
            return False
        self._s = s
        return s != replace(before, lsn=s.lsn)

    @staticmethod
    def _xlog(s: ClusterState, record: DecodedRecord) -> ClusterState:
        info = record.info
        if info not in (xlog_rmgr.XLOG_CHECKPOINT_SHUTDOWN, xlog_rmgr.XLOG_CHECKPOINT_ONLINE,
                        xlog_rmgr.XLOG_NEXTOID, xlog_rmgr.XLOG_PARAMETER_CHANGE,
                        xlog_rmgr.XLOG_FPW_CHANGE, xlog_rmgr.XLOG_END_OF_RECOVERY):
            return s
        rec = xlog_rmgr.parse(record)
        if isinstance(rec, xlog_rmgr.NextOid):
            return replace(s, next_oid=rec.next_oid)  # believed exactly
        if isinstance(rec, xlog_rmgr.CheckPoint):
            s = replace(s, timeline=rec.this_timeline, prev_timeline=rec.prev_timeline,
                        full_page_writes=rec.full_page_writes, wal_level=rec.wal_level,
                        checkpoint_redo=rec.redo, oldest_commit_ts_xid=rec.oldest_commit_ts_xid,
                        newest_commit_ts_xid=rec.newest_commit_ts_xid)
            if rec.shutdown:
                # A shutdown checkpoint's counters are believed exactly.
                s = replace(s, next_full_xid=rec.next_full_xid, next_oid=rec.next_oid,
                            next_multi=rec.next_multi, next_multi_offset=rec.next_multi_offset,
                            oldest_xid=rec.oldest_xid, oldest_xid_db=rec.oldest_xid_db)
            else:
                # Online: next XID and multixact counters are minimums; next OID ignored.
                nfx = max(s.next_full_xid, rec.next_full_xid)
                s = replace(s, next_full_xid=nfx)
                s = _advance_next_multi(s, rec.next_multi, rec.next_multi_offset)
                if xid_precedes(s.oldest_xid, rec.oldest_xid):
                    s = replace(s, oldest_xid=rec.oldest_xid, oldest_xid_db=rec.oldest_xid_db)
            if multi_precedes(s.oldest_multi, rec.oldest_multi):
                s = replace(s, oldest_multi=rec.oldest_multi, oldest_multi_db=rec.oldest_multi_db)
            return s
        if isinstance(rec, xlog_rmgr.ParameterChange):
            return replace(s, max_connections=rec.max_connections,
                           max_worker_processes=rec.max_worker_processes,
                           max_wal_senders=rec.max_wal_senders,
                           max_prepared_xacts=rec.max_prepared_xacts,
                           max_locks_per_xact=rec.max_locks_per_xact, wal_level=rec.wal_level,
                           wal_log_hints=rec.wal_log_hints,
                           track_commit_timestamp=rec.track_commit_timestamp)
        if isinstance(rec, xlog_rmgr.FpwChange):
            return replace(s, full_page_writes=rec.full_page_writes)
        if isinstance(rec, xlog_rmgr.EndOfRecovery):
            return replace(s, timeline=rec.this_timeline, prev_timeline=rec.prev_timeline,
                           wal_level=rec.wal_level)
        return s

    @staticmethod
    def _xact(s: ClusterState, record: DecodedRecord, parsed: object | None) -> ClusterState:
        op = record.info & xact_rmgr.XLOG_XACT_OPMASK
        if op == xact_rmgr.XLOG_XACT_INVALIDATIONS:
            return s
        rec = parsed if parsed is not None else xact_rmgr.parse(record)
        if isinstance(rec, xact_rmgr.XactCommit | xact_rmgr.XactAbort):
            xids: tuple[int, ...] = rec.all_xids
        elif isinstance(rec, xact_rmgr.XactPrepare):
            xids = (rec.xid, *rec.subxacts)
        elif isinstance(rec, xact_rmgr.XactAssignment):
            xids = (rec.xtop, *rec.xsub)
        else:
            return s
        # TransactionIdLatest + AdvanceNextFullTransactionIdPastXid
        latest = xids[0]
        for x in xids[1:]:
            if xid_precedes(latest, x):
                latest = x
        return _advance_past_xid(s, latest)

    @staticmethod
    def _multixact(s: ClusterState, record: DecodedRecord, parsed: object | None) -> ClusterState:
        info = record.info
        if info == mx_rmgr.XLOG_MULTIXACT_CREATE_ID:
            rec = parsed if parsed is not None else mx_rmgr.parse(record)
            assert isinstance(rec, mx_rmgr.MultiXactCreate)
            s = _advance_next_multi(s, (rec.mid + 1) & 0xFFFFFFFF,
                                    (rec.moff + len(rec.members)) & 0xFFFFFFFF)
            latest = record.xl_xid
            for m in rec.members:
                if xid_precedes(latest, m.xid):
                    latest = m.xid
            return _advance_past_xid(s, latest)
        if info == mx_rmgr.XLOG_MULTIXACT_TRUNCATE_ID:
            rec2 = parsed if parsed is not None else mx_rmgr.parse(record)
            assert isinstance(rec2, mx_rmgr.MultiXactTruncate)
            # SetMultiXactIdLimit(endTruncOff, oldestMultiDB)
            return replace(s, oldest_multi=rec2.end_trunc_off, oldest_multi_db=rec2.oldest_multi_db)
        return s


def _advance_past_xid(s: ClusterState, xid: int) -> ClusterState:
    """AdvanceNextFullTransactionIdPastXid (varsup.c)."""
    next_xid = s.next_xid
    if not xid_follows_or_equals(xid, next_xid):
        return s
    new = xid_advance(xid)
    epoch = s.next_xid_epoch
    if new < next_xid:
        epoch += 1
    return replace(s, next_full_xid=(epoch << 32) | new)


def _advance_next_multi(s: ClusterState, next_multi: int, next_offset: int) -> ClusterState:
    """MultiXactAdvanceNextMXact (multixact.c)."""
    if multi_precedes(s.next_multi, next_multi):
        s = replace(s, next_multi=next_multi)
    if multi_precedes(s.next_multi_offset, next_offset):
        s = replace(s, next_multi_offset=next_offset)
    return s


def wal_file_name(timeline: int, segno: int, wal_segment_size: int) -> str:
    """XLogFileName: TLI, then the segment number split into log and seg."""
    per_id = 0x100000000 // wal_segment_size
    return f"{timeline:08X}{segno // per_id:08X}{segno % per_id:08X}"


def pg_resetwal_args(state: ClusterState, *, next_wal_file: str | None = None,
                     commit_ts: bool = False) -> list[str]:
    """Switches for ``pg_resetwal`` that write `state` into a control file.

    `next_wal_file` defaults to the segment after the one holding `state.lsn`
    on the state's timeline (any segment after the old WAL will do).
    `commit_ts` adds ``-c`` (only when pg_commit_ts is rebuilt too).
    Raises: ValueError when a value is one pg_resetwal refuses.
    """
    if state.next_xid < FIRST_NORMAL_XID:
        raise ValueError(f"next XID {state.next_xid} is not a normal xid")
    if state.oldest_xid < FIRST_NORMAL_XID:
        raise ValueError(f"oldest XID {state.oldest_xid} is not a normal xid")
    if state.oldest_multi == 0 or state.next_multi == 0:
        raise ValueError("multixact ids must not be 0")
    if state.next_oid == 0:
        raise ValueError("next OID must not be 0")
    if next_wal_file is None:
        segno = int(state.lsn) // state.wal_segment_size + 1
        next_wal_file = wal_file_name(state.timeline, segno, state.wal_segment_size)
    args = [
        "-x", str(state.next_xid),
        "-e", str(state.next_xid_epoch),
        "-u", str(state.oldest_xid),
        "-m", f"{state.next_multi},{state.oldest_multi}",
        "-O", str(state.next_multi_offset),
        "-o", str(state.next_oid),
        "-l", next_wal_file,
    ]
    if commit_ts:
        args += ["-c", f"{state.oldest_commit_ts_xid},{state.newest_commit_ts_xid}"]
    return args
