"""How WAL moves the cluster control values (what pg_control holds).

What it is:

* `ClusterStateTracker`: applies WAL records one by one to a
  `keyspace.cluster.ClusterState` with the rules of PostgreSQL 18's redo
  (xlog_redo, xact_redo, multixact_redo, standby_redo and the "advance next
  XID past every record's xid" step of the redo loop).
* `cluster_state_from_pg_controldata`: a starting point, read from the
  output of ``pg_controldata`` of an imported cluster.

Fed by: decoded records (`DecodedRecord`) and the import baseline. Feeds:
`ingest.transam` (which stores the state under ``Key.cluster(0)``). Owns no
format: the value's encoding is `keyspace.cluster`'s.
"""

from __future__ import annotations

import struct
from dataclasses import replace

import numpy as np

from strata.keyspace.cluster import ClusterState
from strata.lsn import Lsn
from strata.pg.constants import FIRST_NORMAL_XID
from strata.pg.rmgrids import RM_MULTIXACT_ID, RM_STANDBY_ID, RM_XACT_ID, RM_XLOG_ID
from strata.pg.transam import (
    multi_precedes,
    xid_advance,
    xid_follows_or_equals,
    xid_precedes,
    xid_retreat,
)
from strata.wal.record import DecodedRecord
from strata.wal.rmgr import multixact as mx_rmgr
from strata.wal.rmgr import standby as standby_rmgr
from strata.wal.rmgr import xact as xact_rmgr
from strata.wal.rmgr import xlog as xlog_rmgr


def cluster_state_from_pg_controldata(text: str, *, lsn: Lsn | None = None) -> ClusterState:
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
    return ClusterState(
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


# where `ClusterState.to_bytes` puts lsn and next_full_xid (keyspace/cluster.py)
_LSN_AND_NEXT_XID = struct.Struct("<QQ")
_LSN_AT = 8


class ClusterStateTracker:
    """Moves a `ClusterState` through WAL with PostgreSQL 18's redo rules.

    Requires: records are applied in WAL order, each exactly once, starting
    right after the point the initial state describes.

    The hot path (a record of a new transaction id moves only the next XID, once
    per transaction of the stream) builds no ClusterState: `advance_xid` moves
    `_next_full_xid` and `value` encodes the state by patching those 16 bytes of
    the encoding of `_s` (every other field), which `state` and `apply` bring up
    to date first. `value()` == `state.to_bytes()` (tests/transam/test_cluster_state.py).
    """

    def __init__(self, initial: ClusterState) -> None:
        self._s = initial  # current but for lsn and next_full_xid
        self._lsn = initial.lsn
        self._next_full_xid = initial.next_full_xid
        self._encoded: bytes | None = None  # _s.to_bytes(), once asked for

    @property
    def state(self) -> ClusterState:
        s = self._s
        if s.lsn != self._lsn or s.next_full_xid != self._next_full_xid:
            self._s = replace(s, lsn=self._lsn, next_full_xid=self._next_full_xid)
            self._encoded = None
        return self._s

    def value(self) -> bytes:
        """`state.to_bytes()`, without building the state when only the LSN and
        the next XID moved."""
        if self._encoded is None:
            self._encoded = self._s.to_bytes()
        out = bytearray(self._encoded)
        _LSN_AND_NEXT_XID.pack_into(out, _LSN_AT, int(self._lsn), self._next_full_xid)
        return bytes(out)

    def apply(self, record: DecodedRecord, parsed: object | None = None) -> bool:
        """Apply one record; returns whether any value other than `lsn` changed.

        `parsed` may pass the record's already parsed main data (from its rmgr's
        `parse`) to save parsing it twice.
        """
        # Hot path (every record of the stream): helpers return the very same
        # object when nothing changes, so most records cost an int comparison.
        before = self._s  # its lsn may lag (`state` sets it); its next XID may not
        if before.next_full_xid != self._next_full_xid:
            before = self._s = replace(before, next_full_xid=self._next_full_xid)
            self._encoded = None
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
        self._s, self._encoded = s, None
        self._next_full_xid = s.next_full_xid
        return s != replace(before, lsn=s.lsn)

    def advance_xid(self, xid: int, end_lsn: Lsn) -> bool:
        """`apply` for a record of an rmgr without control values (heap, btree, ...)
        that carries `xid` and ends at `end_lsn`; returns whether a value changed."""
        self._lsn = end_lsn
        nfx = _next_full_xid_past(self._next_full_xid, xid)
        if nfx == self._next_full_xid:
            return False
        self._next_full_xid = nfx
        return True

    def advance_xids(self, xids: list[int], ends: list[int]) -> tuple[list[int], list[int]]:
        """`advance_xid(xids[i], ends[i])` for each i in order. Returns the indexes
        whose call changed the next XID, and the next full XID after each of them."""
        if ends:
            self._lsn = Lsn(ends[-1])
        nfx = self._next_full_xid
        nx = nfx & 0xFFFFFFFF
        x = np.asarray(xids, dtype=np.int64)
        if len(x) and nx >= FIRST_NORMAL_XID and int(x.min()) >= FIRST_NORMAL_XID:
            # the distance of each xid past the next XID as the batch starts; the next
            # XID then reaches max(distance + 1) so far (no wrap of the counter: else
            # the loop below, which skips the special xids as PostgreSQL does)
            d = (x - nx) & 0xFFFFFFFF
            d = np.where(d >= 1 << 31, d - (1 << 32), d)
            reach = np.maximum.accumulate(np.maximum(d + 1, 0))
            top = int(reach[-1])
            if int(np.abs(d).max()) < 1 << 30 and nx + top < 1 << 32:
                moved_at = np.flatnonzero(reach > np.concatenate([[0], reach[:-1]]))
                self._next_full_xid = (nfx & ~0xFFFFFFFF) | (nx + top)
                return moved_at.tolist(), ((nfx & ~0xFFFFFFFF) + nx + reach[moved_at]).tolist()
        moved: list[int] = []
        nexts: list[int] = []
        for i, xid in enumerate(xids):
            new = _next_full_xid_past(nfx, xid)
            if new != nfx:
                nfx = new
                moved.append(i)
                nexts.append(new)
        self._next_full_xid = nfx
        return moved, nexts

    def values_at(self, lsns: np.ndarray, next_full_xids: np.ndarray) -> np.ndarray:
        """`value()` as it would be with each (lsn, next full XID) in turn and every
        other field as now: one row of bytes each, (n, len(value())) uint8."""
        if self._encoded is None:
            self._encoded = self._s.to_bytes()
        base = np.frombuffer(self._encoded, dtype=np.uint8)
        out = np.tile(base, (len(lsns), 1))
        at = _LSN_AT
        out[:, at:at + 8] = np.asarray(lsns, dtype="<u8").view(np.uint8).reshape(-1, 8)
        out[:, at + 8:at + 16] = np.asarray(next_full_xids, dtype="<u8").view(np.uint8).reshape(-1, 8)
        return out

    def note_lsn(self, end_lsn: Lsn) -> None:
        """Records up to `end_lsn` were applied (some skipped: they changed nothing)."""
        self._lsn = end_lsn

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


def _next_full_xid_past(next_full_xid: int, xid: int) -> int:
    """AdvanceNextFullTransactionIdPastXid (varsup.c): the next full XID after `xid`
    was seen (`next_full_xid` itself when it does not move)."""
    next_xid = next_full_xid & 0xFFFFFFFF
    if not xid_follows_or_equals(xid, next_xid):
        return next_full_xid
    new = xid_advance(xid)
    epoch = next_full_xid >> 32
    if new < next_xid:
        epoch += 1
    return (epoch << 32) | new


def _advance_past_xid(s: ClusterState, xid: int) -> ClusterState:
    """`_next_full_xid_past` on a state: `s` itself when nothing moves."""
    nfx = _next_full_xid_past(s.next_full_xid, xid)
    return s if nfx == s.next_full_xid else replace(s, next_full_xid=nfx)


def _advance_next_multi(s: ClusterState, next_multi: int, next_offset: int) -> ClusterState:
    """MultiXactAdvanceNextMXact (multixact.c)."""
    if multi_precedes(s.next_multi, next_multi):
        s = replace(s, next_multi=next_multi)
    if multi_precedes(s.next_multi_offset, next_offset):
        s = replace(s, next_multi_offset=next_offset)
    return s
