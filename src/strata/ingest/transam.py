"""Record -> store puts for the non-page state of a cluster: pg_xact,
pg_multixact, relation maps and the control values.

What it is: `TransamIngest`, a small stateful translator. For every WAL record
(in WAL order) `puts(record)` returns the ``(Key, value)`` pairs to store at
the record's end LSN:

====================================  ===========================================
record                                puts
====================================  ===========================================
Transaction COMMIT / COMMIT_PREPARED  ``Key.slru_page(XACT, page)``: DELTA setting
                                      the xid and its subxacts to committed
Transaction ABORT / ABORT_PREPARED    same, aborted (a subxact abort names its subxid)
Transaction PREPARE, ASSIGNMENT,      nothing (pg_xact stays "in progress")
INVALIDATION
CLOG ZEROPAGE                         IMAGE of a zero page
CLOG TRUNCATE                         TRUNCATED for every known page of each
                                      removed segment
MultiXact ZERO_OFF_PAGE/ZERO_MEM_PAGE IMAGE of a zero page (offsets page skipped if
                                      CREATE_ID already pre-initialised it)
MultiXact CREATE_ID                   DELTA patches of offsets and members pages
MultiXact TRUNCATE_ID                 TRUNCATED for the removed segments' pages
RelMap UPDATE                         ``Key.relmap(tsid, dbid)``: the 524-byte file
Database CREATE_FILE_COPY             ``Key.relmap(spc, db)``: a copy of the
                                      template database's map (when that
                                      tablespace directory of it has one)
Database DROP                         ``Key.relmap(spc, db)``: b"" (no map any more)
any record moving a control value     ``Key.cluster(0)``: `ClusterState.to_bytes()`
====================================  ===========================================

SLRU values use the page-value format of `strata.reconstruct.slru` (IMAGE,
DELTA, TRUNCATED); `apply_value` turns the values of a key, oldest first,
into the page. A relation-map value is the whole file (b"" = removed).

State kept here, and why: the multixact "pre-initialised offsets page" and
"latest offsets page" of multixact.c (18.x replays CREATE_ID records of older
minors by zeroing the next page itself); the set of SLRU pages known to exist
(a truncation must name the pages it removes); the current relation maps (a
file-copy CREATE DATABASE copies the template's map, which is in no record).
`note_existing_page` / `note_relmap` load that state from an import baseline
(or a store) before the first record; `import_baseline(datadir, controldata)`
does it for a cleanly stopped cluster and returns the puts that start its
history (an IMAGE per SLRU page, every relation map, the control values).

Fed by: `DecodedRecord` in WAL order and the import baseline. Feeds: the
ingest pipeline, which stores the puts (storage knows nothing of their
meaning). Owns: nothing on disk; the value formats belong to
`reconstruct.slru` and `ingest.cluster_state`.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from strata.ingest.cluster_state import ClusterStateTracker, cluster_state_from_pg_controldata
from strata.ingest.entries import KEY_DTYPE, EntryColumns
from strata.key import Key, SlruKind
from strata.keyspace.cluster import ClusterState
from strata.keyspace.slru import TRUNCATED_VALUE, delta_value, image_value, patch_op, xid_status_op
from strata.lsn import Lsn
from strata.pg.constants import DEFAULTTABLESPACE_OID, GLOBALTABLESPACE_OID
from strata.pg.rmgrids import RM_CLOG_ID, RM_DBASE_ID, RM_MULTIXACT_ID, RM_RELMAP_ID, RM_XACT_ID
from strata.pg.slru import (
    CLOG_XACTS_PER_PAGE,
    SLRU_DIRS,
    SLRU_PAGES_PER_SEGMENT,
    ZERO_PAGE,
    XidStatus,
    clog_page,
    clog_slot,
    members_truncate_segments,
    multixact_create_writes,
    offsets_page,
    offsets_truncate_cutoff_page,
    parse_segment_file_name,
    segment_of,
    segment_pages,
    truncate_segments,
)
from strata.storage.values import ValueKind
from strata.wal.record import DecodedRecord
from strata.wal.rmgr import clog as clog_rmgr
from strata.wal.rmgr import dbase as dbase_rmgr
from strata.wal.rmgr import multixact as mx_rmgr
from strata.wal.rmgr import relmap as relmap_rmgr
from strata.wal.rmgr import xact as xact_rmgr

Put = tuple[Key, bytes]

ZERO_PAGE_VALUE = image_value(ZERO_PAGE)
REMOVED_RELMAP = b""
# a plain commit's CLOG value (`plain_events`): the delta of one slot, its u16 at the end
_COMMIT_PROTO = delta_value([xid_status_op(XidStatus.COMMITTED, [0])])
_COMMIT_SLOT_AT = len(_COMMIT_PROTO) - 2
_CONTROL_KEY = Key.cluster(0).to_bytes()


class TransamIngest:
    """Turns records into SLRU, relation-map and cluster-state puts.

    Requires: records in WAL order, each once, starting right after the point
    the baseline (noted pages and maps, `initial_state`) describes.
    """

    def __init__(self, initial_state: ClusterState | None = None) -> None:
        self._pages: dict[SlruKind, set[int]] = {k: set() for k in SlruKind}
        self._relmaps: dict[tuple[int, int], bytes] = {}
        self._tracker = ClusterStateTracker(initial_state) if initial_state is not None else None
        # multixact.c's offsets latest_page_number; StartupMultiXact sets it from nextMulti.
        self._latest_offsets_page: int | None = (
            offsets_page(initial_state.next_multi) if initial_state is not None else None)
        self._pre_initialized_offsets_page = -1

    # -- baseline ---------------------------------------------------------------------
    def note_existing_page(self, kind: SlruKind, pageno: int) -> None:
        self._pages[kind].add(pageno)

    def note_relmap(self, spc: int, db: int, data: bytes) -> None:
        self._relmaps[(spc, db)] = bytes(data)

    @property
    def cluster_state(self) -> ClusterState | None:
        return self._tracker.state if self._tracker is not None else None

    def relmap(self, spc: int, db: int) -> bytes | None:
        return self._relmaps.get((spc, db))

    def existing_pages(self, kind: SlruKind) -> frozenset[int]:
        return frozenset(self._pages[kind])

    # -- records ----------------------------------------------------------------------
    def puts(self, record: DecodedRecord) -> list[Put]:
        """The puts for one record, to be stored at `record.end_lsn`.

        Raises: UnsupportedRecordError / WalDecodeError from the parsers.
        """
        rmid = record.xl_rmid
        out: list[Put]
        parsed: object | None = None
        if rmid == RM_XACT_ID:
            parsed = xact_rmgr.parse(record)
            out = self._xact(parsed)
        elif rmid == RM_CLOG_ID:
            out = self._clog(record)
        elif rmid == RM_MULTIXACT_ID:
            parsed = mx_rmgr.parse(record)
            out = self._multixact(parsed)
        elif rmid == RM_RELMAP_ID:
            upd = relmap_rmgr.parse(record)
            self._relmaps[(upd.tsid, upd.dbid)] = upd.data
            out = [(Key.relmap(upd.tsid, upd.dbid), upd.data)]
        elif rmid == RM_DBASE_ID:
            out = self._dbase(record)
        else:
            out = []
        if self._tracker is not None and self._tracker.apply(record, parsed):
            out.append((Key.cluster(0), self._tracker.value()))
        return out

    def advance_xid(self, xid: int, end_lsn: Lsn) -> bytes | None:
        """What `puts` does for a record that only carries `xid` (no record ingest
        interprets): the control values if they change (their new bytes), else None."""
        if self._tracker is None or not self._tracker.advance_xid(xid, end_lsn):
            return None
        return self._tracker.value()

    def commit_puts(self, xid: int, end_lsn: Lsn) -> list[Put]:
        """`puts` of a plain commit of `xid` (no subtransactions, relations,
        invalidations or two-phase: `batched.plain_commits`) ending at `end_lsn`,
        without its record: its CLOG status, and the control values if the commit
        moves the next XID (as `ClusterStateTracker.apply` does for it)."""
        out = self._status_puts((xid,), XidStatus.COMMITTED)
        if self._tracker is not None and self._tracker.advance_xid(xid, end_lsn):
            out.append((Key.cluster(0), self._tracker.value()))
        return out

    def plain_events(self, xids: list[int], ends: list[int], commit: np.ndarray
                     ) -> tuple[np.ndarray, EntryColumns]:
        """For each event i in order: `commit_puts(xids[i], ends[i])` where
        `commit[i]`, else `advance_xid(xids[i], ends[i])`; their puts as columns (in
        event order, and within one as those calls order them: the CLOG status,
        then the control values; each at its event's end LSN, SLRU values in their
        stored form) and the event of each. Same puts and state as the calls one by
        one (tests/ingest/test_batched.py)."""
        ends_a = np.asarray(ends, dtype=np.int64)
        ci = np.flatnonzero(commit)
        cx = np.asarray(xids, dtype=np.int64)[ci]
        pages, inverse = np.unique(cx // CLOG_XACTS_PER_PAGE, return_inverse=True)
        self._pages[SlruKind.XACT].update(pages.tolist())
        page_keys = np.frombuffer(b"".join(Key.slru_page(SlruKind.XACT, p).to_bytes()
                                           for p in pages.tolist()), dtype=KEY_DTYPE)
        clog = np.tile(np.frombuffer(_COMMIT_PROTO, dtype=np.uint8), (len(ci), 1))
        clog[:, _COMMIT_SLOT_AT:] = (cx % CLOG_XACTS_PER_PAGE).astype("<u2").view(
            np.uint8).reshape(-1, 2)
        if self._tracker is not None:
            moved_l, nexts = self._tracker.advance_xids(xids, ends)
            moved = np.asarray(moved_l, dtype=np.int64)
            control = self._tracker.values_at(ends_a[moved], np.asarray(nexts, dtype=np.uint64))
        else:
            moved, control = np.empty(0, dtype=np.int64), np.empty((0, 0), dtype=np.uint8)
        nc, nm = len(ci), len(moved)
        event = np.concatenate([ci, moved])
        lens = np.concatenate([np.full(nc, clog.shape[1], dtype=np.int64),
                               np.full(nm, control.shape[1], dtype=np.int64)])
        off = np.zeros(nc + nm + 1, dtype=np.int64)
        np.cumsum(lens, out=off[1:])
        keys = np.concatenate([page_keys[inverse] if nc else np.empty(0, dtype=KEY_DTYPE),
                               np.repeat(np.frombuffer(_CONTROL_KEY, dtype=KEY_DTYPE), nm)])
        kinds = np.concatenate([np.full(nc, int(ValueKind.WAL_RECORD), dtype=np.uint8),
                                np.full(nm, int(ValueKind.PAGE_IMAGE), dtype=np.uint8)])
        cols = EntryColumns(keys, ends_a[event], kinds, off, clog.tobytes() + control.tobytes())
        order = np.lexsort((np.repeat([0, 1], [nc, nm]), event))  # by event: CLOG first
        return event[order], cols.take(order)

    def note_lsn(self, end_lsn: Lsn) -> None:
        """Records up to `end_lsn` have been seen (`advance_xid` skips repeated xids)."""
        if self._tracker is not None:
            self._tracker.note_lsn(end_lsn)

    def _xact(self, rec: xact_rmgr.XactRecord) -> list[Put]:
        if isinstance(rec, xact_rmgr.XactCommit):
            return self._status_puts(rec.all_xids, XidStatus.COMMITTED)
        if isinstance(rec, xact_rmgr.XactAbort):
            return self._status_puts(rec.all_xids, XidStatus.ABORTED)
        return []  # PREPARE / ASSIGNMENT / INVALIDATION touch no page

    def _status_puts(self, xids: Iterable[int], status: int) -> list[Put]:
        by_page: dict[int, list[int]] = defaultdict(list)
        for xid in xids:
            by_page[clog_page(xid)].append(clog_slot(xid))
        out = []
        for pageno, slots in sorted(by_page.items()):
            self._pages[SlruKind.XACT].add(pageno)
            out.append((Key.slru_page(SlruKind.XACT, pageno),
                        delta_value([xid_status_op(status, slots)])))
        return out

    def _clog(self, record: DecodedRecord) -> list[Put]:
        rec = clog_rmgr.parse(record)
        if isinstance(rec, clog_rmgr.ClogZeroPage):
            self._pages[SlruKind.XACT].add(rec.pageno)
            return [(Key.slru_page(SlruKind.XACT, rec.pageno), ZERO_PAGE_VALUE)]
        segs = truncate_segments(SlruKind.XACT, self._segments(SlruKind.XACT), rec.pageno)
        return self._drop_segments(SlruKind.XACT, segs)

    def _multixact(self, rec: mx_rmgr.MultiXactRecord) -> list[Put]:
        if isinstance(rec, mx_rmgr.MultiXactZeroPage):
            if rec.members:
                self._pages[SlruKind.MULTIXACT_MEMBERS].add(rec.pageno)
                return [(Key.slru_page(SlruKind.MULTIXACT_MEMBERS, rec.pageno), ZERO_PAGE_VALUE)]
            skip = self._pre_initialized_offsets_page == rec.pageno
            self._pre_initialized_offsets_page = -1
            if skip:
                return []
            self._latest_offsets_page = rec.pageno
            self._pages[SlruKind.MULTIXACT_OFFSETS].add(rec.pageno)
            return [(Key.slru_page(SlruKind.MULTIXACT_OFFSETS, rec.pageno), ZERO_PAGE_VALUE)]
        if isinstance(rec, mx_rmgr.MultiXactCreate):
            return self._create_multixact(rec)
        # TRUNCATE_ID: members first, then offsets (multixact_redo's order)
        out = self._drop_segments(SlruKind.MULTIXACT_MEMBERS, [
            s for s in members_truncate_segments(rec.start_trunc_memb, rec.end_trunc_memb)
            if s in self._segments(SlruKind.MULTIXACT_MEMBERS)])
        cutoff = offsets_truncate_cutoff_page(rec.end_trunc_off)
        segs = truncate_segments(SlruKind.MULTIXACT_OFFSETS,
                                      self._segments(SlruKind.MULTIXACT_OFFSETS), cutoff,
                                      self._latest_offsets_page)
        return out + self._drop_segments(SlruKind.MULTIXACT_OFFSETS, segs)

    def _create_multixact(self, rec: mx_rmgr.MultiXactCreate) -> list[Put]:
        out: list[Put] = []
        self._pre_initialized_offsets_page = -1
        page = offsets_page(rec.mid)
        nxt = (rec.mid + 1) & 0xFFFFFFFF or 1
        next_page = offsets_page(nxt)
        if next_page != page and self._latest_offsets_page == page:
            # WAL of an older 18.x minor: RecordNewMultiXact zeroes the next page itself.
            out.append((Key.slru_page(SlruKind.MULTIXACT_OFFSETS, next_page), ZERO_PAGE_VALUE))
            self._pages[SlruKind.MULTIXACT_OFFSETS].add(next_page)
            self._latest_offsets_page = next_page
            self._pre_initialized_offsets_page = next_page
        writes = multixact_create_writes(rec.mid, rec.moff,
                                              [(m.xid, m.status) for m in rec.members])
        ops: dict[tuple[SlruKind, int], list[bytes]] = {}
        for w in writes:
            ops.setdefault((w.kind, w.pageno), []).append(patch_op(w.offset, w.data))
        for (kind, pageno), page_ops in ops.items():
            self._pages[kind].add(pageno)
            out.append((Key.slru_page(kind, pageno), delta_value(page_ops)))
        return out

    def _dbase(self, record: DecodedRecord) -> list[Put]:
        rec = dbase_rmgr.parse(record)
        if isinstance(rec, dbase_rmgr.DbaseCreateFileCopy):
            # dbase_redo copies the template's directory in this tablespace; it
            # holds a pg_filenode.map only if it is the template's default one
            # (one record per tablespace the template has files in).
            src = self._relmaps.get((rec.src_tablespace_id, rec.src_db_id))
            if src is None:
                return []
            self._relmaps[(rec.tablespace_id, rec.db_id)] = src
            return [(Key.relmap(rec.tablespace_id, rec.db_id), src)]
        if isinstance(rec, dbase_rmgr.DbaseDrop):
            out = []
            for spc in rec.tablespace_ids:
                if self._relmaps.pop((spc, rec.db_id), None) is not None:
                    out.append((Key.relmap(spc, rec.db_id), REMOVED_RELMAP))
            return out
        return []  # CREATE_WAL_LOG: the map arrives as a RelMap UPDATE

    # -- helpers ----------------------------------------------------------------------
    def _segments(self, kind: SlruKind) -> set[int]:
        return {segment_of(p) for p in self._pages[kind]}

    def _drop_segments(self, kind: SlruKind, segments: Iterable[int]) -> list[Put]:
        out = []
        for seg in segments:
            first = seg * SLRU_PAGES_PER_SEGMENT
            for pageno in sorted(p for p in self._pages[kind]
                                 if first <= p < first + SLRU_PAGES_PER_SEGMENT):
                self._pages[kind].discard(pageno)
                out.append((Key.slru_page(kind, pageno), TRUNCATED_VALUE))
        return out


def import_baseline(datadir: Path | str, controldata: str,
                    end_lsn: Lsn | None = None) -> tuple[TransamIngest, list[Put]]:
    """Read the SLRU pages, relation maps and control values of a cleanly
    stopped cluster: the puts that start its history, and a `TransamIngest`
    primed to continue from the WAL after its shutdown checkpoint.

    `controldata` is the ``pg_controldata`` output of that cluster; `end_lsn`
    (default: its latest checkpoint location) is the state's LSN, normally the
    end of the shutdown checkpoint record. Relation maps are read from
    global/, base/<db>/ and pg_tblspc/<spc>/PG_18_*/<db>/ (a database whose
    default tablespace is not pg_default keeps its map there).
    Raises: CorruptionError for an SLRU file that is not whole pages; ValueError
    for incomplete pg_controldata output.
    """
    datadir = Path(datadir)
    state = cluster_state_from_pg_controldata(controldata, lsn=end_lsn)
    ing = TransamIngest(state)
    puts: list[Put] = []
    for kind, sub in SLRU_DIRS.items():
        d = datadir / sub
        for f in sorted(d.iterdir()) if d.is_dir() else ():
            segno = parse_segment_file_name(f.name)
            for pageno, page in segment_pages(segno, f.read_bytes()):
                ing.note_existing_page(kind, pageno)
                puts.append((Key.slru_page(kind, pageno), image_value(page)))
    maps = [(GLOBALTABLESPACE_OID, 0, datadir / "global" / "pg_filenode.map")]
    db_dirs = [(DEFAULTTABLESPACE_OID, datadir / "base")]
    tblspc = datadir / "pg_tblspc"
    for link in sorted(tblspc.iterdir()) if tblspc.is_dir() else ():
        if re.fullmatch(r"\d+", link.name):
            # <location>/PG_18_<catalog version>/<db oid>/
            db_dirs += [(int(link.name), v) for v in sorted(link.glob("PG_18_*")) if v.is_dir()]
    for spc, parent in db_dirs:
        for dbdir in sorted(parent.iterdir()) if parent.is_dir() else ():
            if re.fullmatch(r"\d+", dbdir.name) and (dbdir / "pg_filenode.map").exists():
                maps.append((spc, int(dbdir.name), dbdir / "pg_filenode.map"))
    for spc, db, path in maps:
        data = path.read_bytes()
        relmap_rmgr.RelMapFile.from_bytes(data)  # validate before we store it
        ing.note_relmap(spc, db, data)
        puts.append((Key.relmap(spc, db), data))
    puts.append((Key.cluster(0), state.to_bytes()))
    return ing, puts


