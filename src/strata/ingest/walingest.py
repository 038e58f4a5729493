"""WAL ingest: decoded records -> (Key, Lsn, Value) puts into the page store.

What it is: `WalIngest`, the one writer that turns every record, in WAL
order, into store entries, keeps relation sizes and database directories,
feeds the time map, and delegates pg_xact / pg_multixact / relation maps /
control values to `ingest.transam`. Fed by the daemon (records from the
receiver or segment files) and by the history import. Feeds the page store
and the time map. Owns the value formats of REL_BLOCK deltas, REL_SIZE and
DB_DIR (keyspace/FORMAT.md).

Every value is stored at the record's end LSN (`DecodedRecord.end_lsn`), as
PostgreSQL stamps pages.

Two paths, one meaning: `ingest(record)` takes one `DecodedRecord` (the
reference), and `ingest_batch(batch)` does the same with numpy over the
columns of a `wal.batch.RecordBatch` (`ingest.batched`): block references,
sizes and database directories of a run at once; the records that need
interpreting (Transaction, Storage, Database, CLOG, MultiXact, RelMap, XLOG
but full-page images, Standby, Tablespace) one by one through the reference,
in WAL order, but for plain commits (`plain_commits`: most of a TPC-B
stream), read from the columns together (`_plain_events`). Records whose
effect depends on the store or shrinks relations split the batch: what comes
before them reaches the store first. Both paths store the same entries
(tests/ingest/test_batched.py), collected in `PendingEntries` and handed
over in one columnar call (before the store is read, and at `advance`).

Per record:

- block references of the stored forks (main, visibility map, init): an
  image with BKPIMAGE_APPLY becomes an image delta (the image as WAL stores
  it, a chain start restored when the page is read: keyspace/FORMAT.md),
  unless redo changes the page after restoring it
  (`keyspace.relation.image_needs_record`: GiST's split completion); any
  other reference stores the record itself as a `WalRecord` delta (a chain
  start when the block is initialised or restored; a heap UPDATE's old page
  without the new tuple: `keyspace.relation.encode_record_delta`). The FSM fork is not
  stored: only inserts read it (wal-census 5.2).
- relation sizes: raised by every block reference past the known end
  (relation extension is not WAL-logged, so a block's first appearance is
  the size evidence), set by Storage CREATE / TRUNCATE, removed (tombstone)
  when a commit or abort drops the relation or its database is dropped.
- Database CREATE_FILE_COPY copies every page of the template database as of
  this LSN (file copy puts no page data in WAL); CREATE_WAL_LOG only creates
  the directory (pages follow as FPIs); DROP removes the database's keys.
- transaction ends go to the time map.
- records on the system catalogs that say what DDL did go to the catalog
  tracker (`ingest.catalog`): one pre-filter (a set lookup on the first
  block's relfilenumber of Heap/Heap2 records; a vector test per batch) keeps
  every other record off that path; transaction ends tell it to write or drop
  a transaction's DDL. The tracker reads the store, so such records split a
  batch like the others that do.
"""

from __future__ import annotations

import bisect
import logging
from dataclasses import dataclass

import numpy as np

from strata.errors import RedoError
from strata.ingest import batched, visibility_map
from strata.ingest.catalog import CatalogTracker
from strata.ingest.entries import EntryColumns, PendingEntries, concat
from strata.ingest.transam import TransamIngest
from strata.key import Key, KeyKind, KeyRange, SlruKind
from strata.keyspace.relation import (
    DB_DIR_PRESENT,
    STORED_FORKS,
    decode_rel_size,
    delta_form,
    encode_image_delta,
    encode_record_delta,
    encode_rel_size,
)
from strata.keyspace.slru import slru_store_value
from strata.lsn import Lsn
from strata.pagestore import PageStore
from strata.pg.constants import ForkNumber
from strata.storage.batch import kind_and_data
from strata.storage.values import ValueKind
from strata.timemap.timemap import FLAG_CATALOG_CHANGE, EndKind, TimeMap, TxEnd
from strata.wal.batch import RecordBatch
from strata.wal.record import DecodedRecord
from strata.wal.rmgr import (
    RM_CLOG_ID,
    RM_DBASE_ID,
    RM_HEAP2_ID,
    RM_HEAP_ID,
    RM_MULTIXACT_ID,
    RM_RELMAP_ID,
    RM_SMGR_ID,
    RM_STANDBY_ID,
    RM_TBLSPC_ID,
    RM_XACT_ID,
    RM_XLOG_ID,
    XLOG_FPI,
    XLOG_FPI_FOR_HINT,
    XLOG_XACT_ABORT,
    XLOG_XACT_ABORT_PREPARED,
    XLOG_XACT_COMMIT,
    XLOG_XACT_COMMIT_PREPARED,
    XLOG_XACT_HAS_INFO,
    XLOG_XACT_OPMASK,
)
from strata.wal.rmgr import dbase as dbase_rmgr
from strata.wal.rmgr import storage as smgr_rmgr
from strata.wal.rmgr import xact as xact_rmgr
from strata.wal.rmgr.visibility import names_vm_page

log = logging.getLogger(__name__)

RelFork = tuple[int, int, int, int]  # spc, db, rel, fork

# Records ingest interprets one at a time (everything else only references blocks).
_INTERPRETED = np.zeros(256, dtype=bool)  # rmid -> interpreted?
_INTERPRETED[[RM_XLOG_ID, RM_XACT_ID, RM_SMGR_ID, RM_CLOG_ID, RM_DBASE_ID, RM_TBLSPC_ID,
              RM_MULTIXACT_ID, RM_RELMAP_ID, RM_STANDBY_ID]] = True
_XLOG_IMAGE = np.zeros(256, dtype=bool)  # XLOG xl_info -> a full-page image record?
for _info in range(256):
    _XLOG_IMAGE[_info] = _info & 0xF0 in (XLOG_FPI, XLOG_FPI_FOR_HINT)
_XACT_ENDS = (XLOG_XACT_COMMIT, XLOG_XACT_ABORT, XLOG_XACT_COMMIT_PREPARED,
              XLOG_XACT_ABORT_PREPARED)
_XINFO_HAS_RELFILELOCATORS = 1 << 2  # xact.h XACT_XINFO_HAS_RELFILELOCATORS
_XINFO_HAS_INVALS = 1 << 3  # xact.h XACT_XINFO_HAS_INVALS
_KIND_IMAGE = int(ValueKind.PAGE_IMAGE)
_KIND_TOMBSTONE = int(ValueKind.TOMBSTONE)
_KIND_RECORD = int(ValueKind.WAL_RECORD)
_KIND_INIT = int(ValueKind.WAL_RECORD_INIT)


@dataclass
class IngestStats:
    records: int = 0
    wal_bytes: int = 0
    puts: int = 0


class WalIngest:
    """The single writer from WAL to the store. Not thread-safe: one thread."""

    def __init__(self, store: PageStore, timemap: TimeMap, transam: TransamIngest,
                 *, start_lsn: Lsn) -> None:
        self.store = store
        self.timemap = timemap
        self.transam = transam
        self.start_lsn = start_lsn  # records ending at or below it are already stored
        self.stats = IngestStats()
        self._sizes: dict[RelFork, int] = {}
        self._dbs: set[tuple[int, int]] = set()
        self.last_lsn: Lsn | None = None
        self._pending = PendingEntries(store)
        state = transam.cluster_state
        self.catalog = CatalogTracker(store, timemap.ddl, start_lsn=start_lsn,
                                      start_next_xid=state.next_xid if state else None)
        # while a batch run walks its interpreted records: their puts, by record row
        self._walk: list[tuple[int, bytes, int, bytes]] | None = None
        self._walk_row = 0
        # catalog record rows of the batch being ingested, for a set of catalogs
        self._hits: tuple[RecordBatch, frozenset[int], np.ndarray] | None = None
        # rows of the batch being ingested: plain commits (`plain_commits`, sorted), and
        # the other interpreted records (in order)
        self._plain_rows = np.empty(0, dtype=np.int64)
        self._other_rows: list[int] = []

    # -- state from the store (restart) ------------------------------------------------
    def load_state(self, lsn: Lsn) -> None:
        """Read relation sizes, databases, relmaps and SLRU page sets at `lsn`."""
        self._pending.flush()
        for key, data in self.store.scan(KeyRange.kind(KeyKind.REL_SIZE), lsn):
            self._sizes[(key.spc, key.db, key.rel, key.fork)] = decode_rel_size(data)
        for key, _ in self.store.scan(KeyRange.kind(KeyKind.DB_DIR), lsn):
            self._dbs.add((key.spc, key.db))
        for key, data in self.store.scan(KeyRange.kind(KeyKind.RELMAP), lsn):
            self.transam.note_relmap(key.spc, key.db, data)
        for key in self.store.keys(KeyRange.kind(KeyKind.SLRU_PAGE), lsn):
            self.transam.note_existing_page(SlruKind(key.rel), key.blk)

    def relation_sizes(self) -> dict[RelFork, int]:
        return dict(self._sizes)

    def databases(self) -> set[tuple[int, int]]:
        return set(self._dbs)

    # -- puts ------------------------------------------------------------------------
    def _put(self, key: Key, lsn: Lsn, kind: int, data: bytes) -> None:
        if self._walk is not None:
            self._walk.append((self._walk_row, key.to_bytes(), kind, data))
        else:
            self._pending.put(key, lsn, kind, data)
        self.stats.puts += 1

    def _read_store(self) -> PageStore:
        """The store, with everything ingested so far in it (before reading it)."""
        assert self._walk is None, "a record that reads the store must split the batch"
        self._pending.flush()
        return self.store

    def note_relation(self, spc: int, db: int, rel: int, fork: int, nblocks: int, lsn: Lsn) -> None:
        """Set a relation fork's size (import and Storage records)."""
        self._sizes[(spc, db, rel, fork)] = nblocks
        self._put(Key.rel_size(spc, db, rel, fork), lsn, _KIND_IMAGE, encode_rel_size(nblocks))

    def note_database(self, spc: int, db: int, lsn: Lsn) -> None:
        if (spc, db) not in self._dbs:
            self._dbs.add((spc, db))
            self._put(Key.db_dir(spc, db), lsn, _KIND_IMAGE, DB_DIR_PRESENT)

    def _drop_relation(self, spc: int, db: int, rel: int, lsn: Lsn) -> None:
        store = self._read_store()
        for fork in range(4):
            if self._sizes.pop((spc, db, rel, fork), None) is not None:
                self._put(Key.rel_size(spc, db, rel, fork), lsn, _KIND_TOMBSTONE, b"")
            store.delete_range(KeyRange.relation(spc, db, rel, fork), lsn)

    def _truncate(self, spc: int, db: int, rel: int, fork: int, nblocks: int, lsn: Lsn) -> None:
        old = self._sizes.get((spc, db, rel, fork))
        if old is not None and old > nblocks:
            self._read_store().delete_range(KeyRange(Key.rel_block(spc, db, rel, fork, nblocks),
                                                     Key.rel_block(spc, db, rel, fork + 1, 0)),
                                            lsn)
        self.note_relation(spc, db, rel, fork, nblocks, lsn)

    # -- one record at a time ------------------------------------------------------------
    def ingest(self, record: DecodedRecord) -> None:
        """Store everything `record` changes, at its end LSN.

        Records ending at or below `start_lsn` were stored before (a restart
        re-reads WAL from the slot) and are skipped. Call `advance` after a
        batch to publish it (it hands the entries to the store, moves the
        ingested watermark and lets the store freeze and flush).
        """
        lsn = record.end_lsn
        if lsn <= self.start_lsn:
            return
        self.stats.records += 1
        self.stats.wal_bytes += record.xl_tot_len
        self._blocks(record, lsn)
        self._interpret(record, lsn)
        self.last_lsn = lsn

    def _blocks(self, record: DecodedRecord, lsn: Lsn) -> None:
        """Block entries, fork sizes and database directories of `record`."""
        grown: dict[RelFork, int] = {}  # one REL_SIZE put per fork and record
        for blk in record.blocks:
            if blk.fork not in STORED_FORKS:
                continue
            loc = blk.rlocator
            key = Key.rel_block(loc.spc, loc.db, loc.rel, blk.fork, blk.blkno)
            as_image, init = delta_form(record, blk)
            if as_image:
                assert blk.image is not None
                # the image as WAL has it: restored when the page is read
                self._put(key, lsn, _KIND_INIT,
                          encode_image_delta(record.lsn, record.end_lsn, blk.image))
            else:
                self._put(key, lsn, _KIND_INIT if init else _KIND_RECORD,
                          encode_record_delta(record, blk))
            rf = (loc.spc, loc.db, loc.rel, blk.fork)
            if max(self._sizes.get(rf, -1), grown.get(rf, -1)) < blk.blkno + 1:
                grown[rf] = blk.blkno + 1
            if (loc.spc, loc.db) not in self._dbs and loc.db != 0:
                self.note_database(loc.spc, loc.db, lsn)
        for (spc, db, rel, fork), nblocks in grown.items():
            self.note_relation(spc, db, rel, fork, nblocks, lsn)
        if record.xl_rmid in (RM_HEAP_ID, RM_HEAP2_ID) and not names_vm_page(record):
            for key in visibility_map.forgotten_vm_pages(record):
                self._put(key, lsn, _KIND_TOMBSTONE, b"")

    def _interpret(self, record: DecodedRecord, lsn: Lsn) -> None:
        """What `record` means beyond its block references."""
        rmid = record.xl_rmid
        if rmid == RM_SMGR_ID:
            self._smgr(record, lsn)
        elif rmid == RM_DBASE_ID:
            self._dbase_before(record, lsn)
        elif rmid == RM_XACT_ID:
            self._xact(record, lsn)
        elif rmid in (RM_HEAP_ID, RM_HEAP2_ID) and record.blocks and \
                record.blocks[0].rlocator.rel in self.catalog.relfilenumbers:
            self._read_store()  # the tracker reads catalog pages from the store
            self.catalog.observe(record)  # rare: a system catalog page (DDL)
        self._transam_puts(self.transam.puts(record), lsn)

    def _transam_puts(self, puts: list[tuple[Key, bytes]], lsn: Lsn) -> None:
        for key, value in puts:
            if key.kind == KeyKind.SLRU_PAGE:
                self._put(key, lsn, *kind_and_data(slru_store_value(value)))
            else:
                self._put(key, lsn, _KIND_IMAGE if value else _KIND_TOMBSTONE, value)

    # -- a batch at a time -----------------------------------------------------------------
    def ingest_batch(self, batch: RecordBatch) -> None:
        """`ingest` every record of `batch`, in order, with the same entries."""
        recs = batch.recs
        n = len(recs)
        first = int(np.searchsorted(recs["end_lsn"], self.start_lsn, side="right"))
        if first >= n:
            return
        self.stats.records += n - first
        self.stats.wal_bytes += int(recs["tot_len"][first:].sum(dtype=np.int64))
        rmid = recs["rmid"]
        interp = _INTERPRETED[rmid] & ~((rmid == RM_XLOG_ID) & _XLOG_IMAGE[recs["info"]])
        rows = (np.flatnonzero(interp[first:]) + first).tolist()
        plain = batched.plain_commits(batch, rows)
        self._plain_rows = np.array(sorted(plain), dtype=np.int64)
        self._other_rows = [i for i in rows if i not in plain]
        decoded = {i: batch.record(i) for i in self._other_rows}
        lo = first
        while lo < n:
            at = self._next_split(batch, lo, rows, decoded)
            self._run(batch, lo, at, rows, decoded)
            if at < n:  # on its own, with everything before it in the store
                rec = decoded[at]
                self._pending.flush()
                self._blocks(rec, rec.end_lsn)
                self._interpret(rec, rec.end_lsn)
            lo = at + 1
        self._hits = None
        self.last_lsn = batch.end_lsn

    def _next_split(self, batch: RecordBatch, lo: int, rows: list[int],
                    decoded: dict[int, DecodedRecord]) -> int:
        """The first record at or after `lo` that must be ingested on its own
        (`decoded` gets it), or len(batch): an interpreted record (`rows`, in
        order) that reads the store, shrinks or drops relations or databases,
        or a Heap/Heap2 record on a catalog (the DDL tracker reads pages).
        Asked again after each such record: it may change the catalogs."""
        hits = self._catalog_hits(batch)
        j = int(np.searchsorted(hits, lo))
        cand = int(hits[j]) if j < len(hits) else len(batch)
        if cand < len(batch):
            decoded.setdefault(cand, batch.record(cand))
        # a plain transaction end splits only while the tracker waits: then the
        # first one does; the other interpreted records ask `_splits`
        if self.catalog.waiting:
            ends = self._plain_rows
            j = int(np.searchsorted(ends, lo))
            if j < len(ends) and ends[j] < cand:
                cand = int(ends[j])
                decoded.setdefault(cand, batch.record(cand))
        others = self._other_rows
        for i in others[bisect.bisect_left(others, lo):bisect.bisect_left(others, cand)]:
            if self._splits(decoded[i]):
                return i
        return cand

    def _run(self, batch: RecordBatch, lo: int, hi: int, rows: list[int],
             decoded: dict[int, DecodedRecord]) -> None:
        """Records [lo, hi), none of which `_splits`."""
        if lo >= hi:
            return
        recs = batch.recs
        k = batched.stored_blocks(batch, lo, hi)
        cols = batched.block_entries(batch, k)
        extra: list[tuple[int, bytes, int, bytes]] = []
        for row, spc, db in batched.new_databases(k, self._dbs):
            self._dbs.add((spc, db))
            extra.append((row, Key.db_dir(spc, db).to_bytes(), _KIND_IMAGE, DB_DIR_PRESENT))
        for row, (spc, db, rel, fork), nblocks in batched.size_growth(k, self._sizes):
            extra.append((row, Key.rel_size(spc, db, rel, fork).to_bytes(), _KIND_IMAGE,
                          encode_rel_size(nblocks)))
        for row in visibility_map.implicit_clear_rows(batch, lo, hi):
            extra += [(row, key.to_bytes(), _KIND_TOMBSTONE, b"")
                      for key in visibility_map.forgotten_vm_pages(batch.record(row))]
        extra.sort(key=lambda e: e[0])  # stable: per record, databases, sizes, VM pages
        self.stats.puts += len(cols) + len(extra)
        walk_rows, walk = self._walk_run(batch, lo, hi, rows, decoded)
        if extra or len(walk):
            ends = recs["end_lsn"]
            add_rows = np.concatenate([np.array([e[0] for e in extra], dtype=np.int64), walk_rows])
            add = concat([EntryColumns.of([e[1] for e in extra], [int(ends[e[0]]) for e in extra],
                                          [e[2] for e in extra], [e[3] for e in extra]), walk])
            order = np.argsort(add_rows, kind="stable")  # per record: the above, then the walk's
            at = np.searchsorted(k["rec"], add_rows[order], side="right")
            cols = cols.insert(at, add.take(order))
        self._pending.add(cols)

    def _walk_run(self, batch: RecordBatch, lo: int, hi: int, rows: list[int],
                  decoded: dict[int, DecodedRecord]) -> tuple[np.ndarray, EntryColumns]:
        """The puts, in WAL order, and the row of each, of the records of [lo, hi)
        ingest interprets and of the first record of each xid among the others
        (`batched.walk_events`: it may move the next XID). Plain commits (while
        the DDL tracker waits for no transaction) and first records are taken
        together (`_plain_events`); the others one at a time (`_interpret`)."""
        inside = rows[bisect.bisect_left(rows, lo):bisect.bisect_left(rows, hi)]
        events, interpreted = batched.walk_events(batch, lo, hi, inside)
        # interpreted rows that are plain commits go together unless the DDL tracker
        # waits (which only an interpreted record changes); the others never do
        done = np.sort(np.fromiter(decoded, dtype=np.int64, count=len(decoded)))
        commit = batched.member(events, self._plain_rows) & ~batched.member(events, done)
        ends = batch.recs["end_lsn"]
        pieces: list[tuple[np.ndarray, EntryColumns]] = []
        one_by_one: list[tuple[int, bytes, int, bytes]] = []
        together: list[np.ndarray] = []
        self._walk = one_by_one

        def take_in_order() -> None:
            if one_by_one:
                r, keys, kinds, data = zip(*one_by_one, strict=True)
                pieces.append((np.array(r, dtype=np.int64), EntryColumns.of(
                    keys, [int(ends[i]) for i in r], kinds, data)))
                one_by_one.clear()
            if together:
                pieces.append(self._plain_events(batch, np.concatenate(together)))
                together.clear()

        def interpret(row: int) -> None:
            if together:
                take_in_order()
            self._walk_row = row
            rec = decoded.get(row)
            self._interpret(rec if rec is not None else batch.record(row), Lsn(int(ends[row])))

        try:
            at = 0
            for m in [*np.flatnonzero(interpreted & ~commit).tolist(), len(events)]:
                seg, interp = events[at:m], interpreted[at:m]
                while len(seg):  # commits one at a time only while the tracker waits
                    k = int(np.argmax(interp)) if self.catalog.waiting and interp.any() \
                        else len(seg)
                    if k:
                        if one_by_one:
                            take_in_order()
                        together.append(seg[:k])
                    if k < len(seg):
                        interpret(int(seg[k]))
                        k += 1
                    seg, interp = seg[k:], interp[k:]
                if m < len(events):
                    interpret(int(events[m]))
                at = m + 1
            take_in_order()
        finally:
            self._walk = None
        self.transam.note_lsn(Lsn(int(ends[hi - 1])))
        return (np.concatenate([np.empty(0, dtype=np.int64)] + [p[0] for p in pieces]),
                concat([p[1] for p in pieces]))

    def _plain_events(self, batch: RecordBatch, rows: np.ndarray
                      ) -> tuple[np.ndarray, EntryColumns]:
        """`_interpret` of the plain commits among `rows` (those of XACT records)
        and `advance_xid` of the others (first records of an xid), in order: the
        commits' time map entries, CLOG statuses and the next XIDs, from the
        batch's columns. Returns the puts and the row of each."""
        recs = batch.recs
        commit = recs["rmid"][rows] == RM_XACT_ID
        ends = recs["end_lsn"][rows]
        xids = recs["xid"][rows]
        c = rows[commit]
        if len(c):
            self.timemap.append_many(recs["lsn"][c], ends[commit], batched.commit_times(batch, c),
                                     xids[commit], EndKind.COMMIT)
        event, cols = self.transam.plain_events(xids.tolist(), ends.tolist(), commit)
        self.stats.puts += len(cols)
        return rows[event], cols

    def _catalog_hits(self, batch: RecordBatch) -> np.ndarray:
        """Rows of Heap/Heap2 records of `batch` whose first block is in a
        (possible) catalog, for the catalogs known now (recomputed when they
        change, e.g. a catalog rewritten by VACUUM FULL)."""
        rels = self.catalog.relfilenumbers
        cached = self._hits
        if cached is not None and cached[0] is batch and cached[1] == rels:
            return cached[2]
        hits = batched.heap_rows_in(batch, rels)
        self._hits = (batch, frozenset(rels), hits)
        return hits

    def _splits(self, record: DecodedRecord) -> bool:
        """Whether interpreted `record` must be ingested on its own: it reads the
        store, or shrinks or drops relations or databases (over-approximated:
        any commit or abort that lists relations or invalidations)."""
        rmid = record.xl_rmid
        if rmid in (RM_SMGR_ID, RM_DBASE_ID):
            return True
        return rmid == RM_XACT_ID and self._xact_end_reads_store(record)

    def _xact_end_reads_store(self, record: DecodedRecord) -> bool:
        """Whether a transaction record may read the store or change sizes: a
        commit or abort dropping relations or carrying invalidations (the DDL
        tracker reads catalogs), or any end while the tracker holds a
        transaction's catalog rows."""
        if record.xl_info & XLOG_XACT_OPMASK not in _XACT_ENDS:
            return False
        if self.catalog.waiting:
            return True
        if not record.xl_info & XLOG_XACT_HAS_INFO or len(record.main_data) < 12:
            return False
        xinfo = int.from_bytes(record.main_data[8:12], "little")
        return bool(xinfo & (_XINFO_HAS_RELFILELOCATORS | _XINFO_HAS_INVALS))

    # -- publishing ------------------------------------------------------------------------
    def advance(self, lsn: Lsn | None = None) -> None:
        """Publish everything ingested up to `lsn` (default: the last record).

        The time map is synced first, so that once the store makes `lsn`
        durable, every transaction end at or below it is durable too
        (timemap/FORMAT.md, invariant 2).
        """
        target = self.last_lsn if lsn is None else lsn
        self._pending.flush()
        if target is None:
            return
        self.timemap.sync()
        self.store.advance(target)

    # -- interpreted records ---------------------------------------------------------------
    def _smgr(self, record: DecodedRecord, lsn: Lsn) -> None:
        rec = smgr_rmgr.parse(record)
        if isinstance(rec, smgr_rmgr.SmgrCreate):
            loc = rec.rlocator
            if (loc.spc, loc.db, loc.rel, rec.fork) not in self._sizes:
                self.note_relation(loc.spc, loc.db, loc.rel, rec.fork, 0, lsn)
            if loc.db != 0:
                self.note_database(loc.spc, loc.db, lsn)
        elif isinstance(rec, smgr_rmgr.SmgrTruncate):
            loc = rec.rlocator
            if rec.flags & smgr_rmgr.SMGR_TRUNCATE_HEAP:
                self._truncate(loc.spc, loc.db, loc.rel, ForkNumber.MAIN, rec.blkno, lsn)
            if rec.flags & smgr_rmgr.SMGR_TRUNCATE_VM:
                self._truncate_vm(loc.spc, loc.db, loc.rel, rec.blkno, lsn)

    def _truncate_vm(self, spc: int, db: int, rel: int, heap_nblocks: int, lsn: Lsn) -> None:
        """The VM of a heap cut to `heap_nblocks` (ingest/visibility_map.py)."""
        old = self._sizes.get((spc, db, rel, ForkNumber.VM))
        if old is None:
            return
        new_len, cut = visibility_map.truncated_vm(heap_nblocks, old)
        if cut is not None:
            key = Key.rel_block(spc, db, rel, ForkNumber.VM, cut)
            page = self._read_store().get_page(key, Lsn(lsn - 1))
            if page is not None:
                self._put(key, lsn, _KIND_IMAGE, visibility_map.cut_vm_page(page, heap_nblocks))
        if new_len < old:
            self._truncate(spc, db, rel, ForkNumber.VM, new_len, lsn)

    def _dbase_before(self, record: DecodedRecord, lsn: Lsn) -> None:
        rec = dbase_rmgr.parse(record)
        if isinstance(rec, dbase_rmgr.DbaseCreateFileCopy):
            self._copy_database(rec.src_tablespace_id, rec.src_db_id, rec.tablespace_id, rec.db_id,
                                lsn)
        elif isinstance(rec, dbase_rmgr.DbaseCreateWalLog):
            self.note_database(rec.tablespace_id, rec.db_id, lsn)
        elif isinstance(rec, dbase_rmgr.DbaseDrop):
            for spc in rec.tablespace_ids:
                self._drop_database(spc, rec.db_id, lsn)

    def _copy_database(self, src_spc: int, src_db: int, spc: int, db: int, lsn: Lsn) -> None:
        """CREATE DATABASE ... STRATEGY file_copy: the template's files as of `lsn`."""
        if (src_spc, src_db) not in self._dbs:
            raise RedoError(f"CREATE DATABASE at {lsn} copies database {src_spc}/{src_db}, "
                            "which history does not know")
        self.note_database(spc, db, lsn)
        # the template's state just before this record; its pages are read
        # through the store (memtable included), one relation at a time
        before = Lsn(lsn - 1)
        store = self._read_store()
        rels = sorted(k for k in self._sizes if k[0] == src_spc and k[1] == src_db)
        for (_, _, rel, fork) in rels:
            nblocks = self._sizes[(src_spc, src_db, rel, fork)]
            for key, page in store.scan(KeyRange.relation(src_spc, src_db, rel, fork), before):
                if key.blk < nblocks:
                    self._put(Key.rel_block(spc, db, rel, fork, key.blk), lsn, _KIND_IMAGE, page)
            self.note_relation(spc, db, rel, fork, nblocks, lsn)

    def _drop_database(self, spc: int, db: int, lsn: Lsn) -> None:
        for (s, d, rel, fork) in [k for k in self._sizes if k[0] == spc and k[1] == db]:
            del self._sizes[(s, d, rel, fork)]
            self._put(Key.rel_size(s, d, rel, fork), lsn, _KIND_TOMBSTONE, b"")
        self._read_store().delete_range(
            KeyRange(Key.rel_block(spc, db, 0, 0, 0), Key.rel_block(spc, db + 1, 0, 0, 0))
            if db < 0xFFFFFFFF else
            KeyRange(Key.rel_block(spc, db, 0, 0, 0), Key.rel_block(spc + 1, 0, 0, 0, 0)), lsn)
        if (spc, db) in self._dbs:
            self._dbs.discard((spc, db))
            self._put(Key.db_dir(spc, db), lsn, _KIND_TOMBSTONE, b"")

    def _xact(self, record: DecodedRecord, lsn: Lsn) -> None:
        rec = xact_rmgr.parse(record)
        if isinstance(rec, xact_rmgr.XactCommit | xact_rmgr.XactAbort):
            for loc in rec.rels:
                self._drop_relation(loc.spc, loc.db, loc.rel, lsn)
            commit = isinstance(rec, xact_rmgr.XactCommit)
            kind = ((EndKind.COMMIT_PREPARED if rec.prepared else EndKind.COMMIT) if commit
                    else (EndKind.ABORT_PREPARED if rec.prepared else EndKind.ABORT))
            catalog = bool(rec.rels) or bool(rec.xinfo & xact_rmgr.XACT_XINFO_HAS_INVALS)
            self.timemap.append(TxEnd(record.lsn, record.end_lsn, rec.xact_time, rec.xid, kind,
                                      FLAG_CATALOG_CHANGE if catalog else 0))
            if self._xact_end_reads_store(record):
                self._read_store()
            self.catalog.transaction_end(record, rec)

