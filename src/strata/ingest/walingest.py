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

Per record:

- block references of the main and init forks: an image with BKPIMAGE_APPLY
  becomes a `PageImage` (restored, stamped with the end LSN like redo does);
  any other reference stores the record itself as a `WalRecord` delta
  (`will_init` when the block is initialised). Visibility-map and FSM forks
  are not stored: a read-only historical server does not need them
  (wal-census 5.2).
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
  block's relfilenumber of Heap/Heap2 records) keeps every other record off
  that path; transaction ends tell it to write or drop a transaction's DDL.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from strata.errors import RedoError
from strata.ingest.catalog import CatalogTracker
from strata.ingest.transam import TransamIngest
from strata.key import Key, KeyKind, KeyRange, SlruKind
from strata.keyspace.relation import (
    DB_DIR_PRESENT,
    STORED_FORKS,
    decode_rel_size,
    encode_delta,
    encode_rel_size,
)
from strata.keyspace.slru import slru_store_value
from strata.lsn import Lsn
from strata.pagestore import PageStore
from strata.pg.constants import ForkNumber
from strata.reconstruct.redo import redo_block
from strata.storage.values import TOMBSTONE, PageImage, Value, WalRecord
from strata.timeline.timemap import FLAG_CATALOG_CHANGE, EndKind, TimeMap, TxEnd
from strata.wal.record import DecodedRecord
from strata.wal.rmgr import RM_DBASE_ID, RM_HEAP2_ID, RM_HEAP_ID, RM_SMGR_ID, RM_XACT_ID
from strata.wal.rmgr import dbase as dbase_rmgr
from strata.wal.rmgr import storage as smgr_rmgr
from strata.wal.rmgr import xact as xact_rmgr

log = logging.getLogger(__name__)

RelFork = tuple[int, int, int, int]  # spc, db, rel, fork


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
        state = transam.cluster_state
        self.catalog = CatalogTracker(store, timemap.ddl, start_lsn=start_lsn,
                                      start_next_xid=state.next_xid if state else None)

    # -- state from the store (restart) ------------------------------------------------
    def load_state(self, lsn: Lsn) -> None:
        """Read relation sizes, databases, relmaps and SLRU page sets at `lsn`."""
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
    def _put(self, key: Key, lsn: Lsn, value: Value) -> None:
        self.store.put(key, lsn, value)
        self.stats.puts += 1

    def note_relation(self, spc: int, db: int, rel: int, fork: int, nblocks: int, lsn: Lsn) -> None:
        """Set a relation fork's size (import and Storage records)."""
        self._sizes[(spc, db, rel, fork)] = nblocks
        self._put(Key.rel_size(spc, db, rel, fork), lsn, PageImage(encode_rel_size(nblocks)))

    def note_database(self, spc: int, db: int, lsn: Lsn) -> None:
        if (spc, db) not in self._dbs:
            self._dbs.add((spc, db))
            self._put(Key.db_dir(spc, db), lsn, PageImage(DB_DIR_PRESENT))

    def _drop_relation(self, spc: int, db: int, rel: int, lsn: Lsn) -> None:
        for fork in range(4):
            if self._sizes.pop((spc, db, rel, fork), None) is not None:
                self._put(Key.rel_size(spc, db, rel, fork), lsn, TOMBSTONE)
            self.store.delete_range(KeyRange.relation(spc, db, rel, fork), lsn)

    def _truncate(self, spc: int, db: int, rel: int, fork: int, nblocks: int, lsn: Lsn) -> None:
        old = self._sizes.get((spc, db, rel, fork))
        if old is not None and old > nblocks:
            self.store.delete_range(KeyRange(Key.rel_block(spc, db, rel, fork, nblocks),
                                             Key.rel_block(spc, db, rel, fork + 1, 0)), lsn)
        self.note_relation(spc, db, rel, fork, nblocks, lsn)

    # -- the record loop ---------------------------------------------------------------
    def ingest(self, record: DecodedRecord) -> None:
        """Store everything `record` changes, at its end LSN.

        Records ending at or below `start_lsn` were stored before (a restart
        re-reads WAL from the slot) and are skipped. Call `advance` after a
        batch to publish it (readers see puts at once; `advance` moves the
        ingested watermark and lets the store freeze and flush).
        """
        lsn = record.end_lsn
        if lsn <= self.start_lsn:
            return
        self.stats.records += 1
        self.stats.wal_bytes += record.xl_tot_len
        delta: bytes | None = None
        grown: dict[RelFork, int] = {}  # one REL_SIZE put per fork and record
        for blk in record.blocks:
            if blk.fork not in STORED_FORKS:
                continue
            loc = blk.rlocator
            key = Key.rel_block(loc.spc, loc.db, loc.rel, blk.fork, blk.blkno)
            if blk.apply_image:
                # the image as redo restores it (stamped with the end LSN)
                self._put(key, lsn, PageImage(redo_block(record, blk.block_id, None)))
            else:
                if delta is None:
                    delta = encode_delta(record.lsn, record.end_lsn, record.raw)
                self._put(key, lsn, WalRecord(delta, will_init=blk.will_init))
            rf = (loc.spc, loc.db, loc.rel, blk.fork)
            if max(self._sizes.get(rf, -1), grown.get(rf, -1)) < blk.blkno + 1:
                grown[rf] = blk.blkno + 1
            if (loc.spc, loc.db) not in self._dbs and loc.db != 0:
                self.note_database(loc.spc, loc.db, lsn)
        for (spc, db, rel, fork), nblocks in grown.items():
            self.note_relation(spc, db, rel, fork, nblocks, lsn)
        rmid = record.xl_rmid
        if rmid == RM_SMGR_ID:
            self._smgr(record, lsn)
        elif rmid == RM_DBASE_ID:
            self._dbase_before(record, lsn)
        elif rmid == RM_XACT_ID:
            self._xact(record, lsn)
        elif rmid in (RM_HEAP_ID, RM_HEAP2_ID) and record.blocks and \
                record.blocks[0].rlocator.rel in self.catalog.relfilenumbers:
            self.catalog.observe(record)  # rare: a system catalog page (DDL)
        for key, value in self.transam.puts(record):
            self._put(key, lsn, slru_store_value(value) if key.kind == KeyKind.SLRU_PAGE
                      else (PageImage(value) if value else TOMBSTONE))
        self.last_lsn = lsn

    def advance(self, lsn: Lsn | None = None) -> None:
        """Publish everything ingested up to `lsn` (default: the last record).

        The time map is synced first, so that once the store makes `lsn`
        durable, every transaction end at or below it is durable too
        (timeline/FORMAT.md, invariant 2).
        """
        target = self.last_lsn if lsn is None else lsn
        if target is None:
            return
        self.timemap.sync()
        self.store.advance(target)

    def ingest_many(self, records: Iterable[DecodedRecord]) -> None:
        for r in records:
            self.ingest(r)
        self.advance()

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
        rels = sorted(k for k in self._sizes if k[0] == src_spc and k[1] == src_db)
        for (_, _, rel, fork) in rels:
            nblocks = self._sizes[(src_spc, src_db, rel, fork)]
            for key, page in self.store.scan(KeyRange.relation(src_spc, src_db, rel, fork), before):
                if key.blk < nblocks:
                    self._put(Key.rel_block(spc, db, rel, fork, key.blk), lsn, PageImage(page))
            self.note_relation(spc, db, rel, fork, nblocks, lsn)

    def _drop_database(self, spc: int, db: int, lsn: Lsn) -> None:
        for (s, d, rel, fork) in [k for k in self._sizes if k[0] == spc and k[1] == db]:
            del self._sizes[(s, d, rel, fork)]
            self._put(Key.rel_size(s, d, rel, fork), lsn, TOMBSTONE)
        self.store.delete_range(KeyRange(Key.rel_block(spc, db, 0, 0, 0),
                                         Key.rel_block(spc, db + 1, 0, 0, 0)) if db < 0xFFFFFFFF
                                else KeyRange(Key.rel_block(spc, db, 0, 0, 0),
                                              Key.rel_block(spc + 1, 0, 0, 0, 0)), lsn)
        if (spc, db) in self._dbs:
            self._dbs.discard((spc, db))
            self._put(Key.db_dir(spc, db), lsn, TOMBSTONE)

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
            self.catalog.transaction_end(record, rec)
