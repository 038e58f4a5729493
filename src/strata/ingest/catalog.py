"""DDL at ingest: catalog rows decoded from WAL, one DDL log entry per commit.

What it is: `CatalogTracker`, the rare path of ingest that watches the
system catalogs which say what a DDL statement did (pg_class, pg_attribute,
pg_namespace, pg_index, pg_proc, pg_extension per database; pg_database and
pg_authid shared). Fed by `WalIngest`:

- `observe(record)` for a Heap/Heap2 record whose first block's
  relfilenumber is in `relfilenumbers` (the pre-filter ingest tests inline,
  so ordinary records cost one set lookup and nothing else);
- `transaction_end(record, parsed)` for every commit and abort.

Feeds the DDL log (`strata.timemap.ddl`, beside the time map) through
`strata.ingest.catalog_changes.describe`.

How a row is read: WAL of a catalog (wal_level=replica) carries new tuples
but deletes name only a TID, updates may share a prefix/suffix with the old
version, and any record may carry a full-page image instead. So the tracker
keeps the catalog pages it touched (an LRU of `cache_pages`), applies every
record on them with our own redo (`reconstruct.redo`), and reads old
tuples from the page before the record and new ones from the page after.
A page not in the cache is read from the store at the record's start LSN
(every record ending at or before it), which holds everything ingested so far.

Which relfilenumbers are catalogs: mapped catalogs from the relation maps
(``Key.relmap``: every database's at `start_lsn`, for the pre-filter), the
others from pg_class rows; both read when a database is first seen, with
the names needed to print statements (relations, schemas; roles and
databases from the shared catalogs). Committed changes keep names and
relfilenumbers current. A catalog rewritten by VACUUM FULL or CLUSTER is
followed through its transient heap ``pg_temp_<oid>`` (whose storage it
takes at the swap, before the relation map update at commit names it), and
re-read at that commit. Should a transaction still write a catalog file the
pre-filter did not know (an unmapped catalog rewritten before a restart),
its rows are recovered at its commit from the file's pages (the versions its
xids inserted or deleted).

Rows are grouped by the xid in the record (subtransactions included) until
their commit (entry written) or abort (dropped); those of a transaction that
never ends (the primary crashed mid-DDL) stay until ingest restarts. In-place updates (VACUUM
and ANALYZE statistics, relfrozenxid, DROP DATABASE's invalid marker) are
applied to the pages but are never DDL.

Never fails ingest: a record that cannot be decoded marks its transaction's
entry with a note (and is logged), and its pages leave the cache.
A transaction whose xid precedes the next xid at `start_lsn` began before
ingest (re)started: its earlier rows were not seen, and its entry says so.
"""

from __future__ import annotations

import logging
import struct
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field

import google_crc32c

from strata.errors import StrataError
from strata.ingest.catalog_changes import RelInfo, RowChange, describe, object_key
from strata.key import Key, KeyKind, KeyRange
from strata.lsn import Lsn
from strata.pagestore import PageStore
from strata.pg import catalog as pgc
from strata.pg.constants import GLOBALTABLESPACE_OID, ForkNumber
from strata.pg.transam import xid_precedes
from strata.reconstruct.redo import page_ops, redo_block_inplace
from strata.timemap.ddl import DdlEntry, DdlLog
from strata.wal.record import DecodedRecord, RelFileLocator
from strata.wal.rmgr import RM_HEAP2_ID, RM_HEAP_ID
from strata.wal.rmgr import heap as heap_rmgr
from strata.wal.rmgr import heap2 as heap2_rmgr
from strata.wal.rmgr import xact as xact_rmgr
from strata.wal.rmgr.relmap import RelMapFile

log = logging.getLogger(__name__)

# catalogs whose rows are decoded into changes (pg_type is only read for names)
TRACKED = frozenset({
    pgc.RELATION_RELATION_ID, pgc.ATTRIBUTE_RELATION_ID, pgc.NAMESPACE_RELATION_ID,
    pgc.INDEX_RELATION_ID, pgc.PROCEDURE_RELATION_ID, pgc.EXTENSION_RELATION_ID,
    pgc.DATABASE_RELATION_ID, pgc.AUTHID_RELATION_ID,
})
_PER_DB_MAPPED = (pgc.RELATION_RELATION_ID, pgc.ATTRIBUTE_RELATION_ID,
                  pgc.PROCEDURE_RELATION_ID, pgc.TYPE_RELATION_ID)
_PER_DB_UNMAPPED = (pgc.NAMESPACE_RELATION_ID, pgc.INDEX_RELATION_ID, pgc.EXTENSION_RELATION_ID)
_SHARED = (pgc.DATABASE_RELATION_ID, pgc.AUTHID_RELATION_ID)
# columns a pending row keeps (the rest is dropped to bound memory; None: all)
_KEEP: dict[int, frozenset[str] | None] = {
    pgc.ATTRIBUTE_RELATION_ID: frozenset({"attrelid", "attname", "atttypid", "attnum",
                                          "attnotnull", "atthasdef", "attidentity",
                                          "attisdropped"}),
    pgc.INDEX_RELATION_ID: frozenset({"indexrelid", "indrelid"}),
}
_OPMASK = heap_rmgr.XLOG_HEAP_OPMASK
_HEAP_INSERT = heap_rmgr.XLOG_HEAP_INSERT
_HEAP_DELETE = heap_rmgr.XLOG_HEAP_DELETE
_HEAP_UPDATES = (heap_rmgr.XLOG_HEAP_UPDATE, heap_rmgr.XLOG_HEAP_HOT_UPDATE)

PageKey = tuple[int, int, int, int]  # spc, db, relfilenumber, blkno


@dataclass
class _DbCatalog:
    """One database's catalogs (db 0: the shared ones) as the tracker knows them."""

    spc: int
    db: int
    filenodes: dict[int, int] = field(default_factory=dict)  # relfilenumber -> catalog oid
    relations: dict[int, RelInfo] = field(default_factory=dict)
    namespaces: dict[int, str] = field(default_factory=dict)
    roles: dict[int, str] = field(default_factory=dict)  # shared only
    databases: dict[int, tuple[str, int]] = field(default_factory=dict)  # shared: name, spc
    failed: str = ""  # why this database's catalogs cannot be read ("" when they can)

    def filenode_of(self, catalog: int) -> int | None:
        """The newest relfilenumber known for `catalog`."""
        for fn, cat in reversed(self.filenodes.items()):
            if cat == catalog:
                return fn
        return None


class CatalogTracker:
    """See the module docstring. One per `WalIngest`; not thread-safe."""

    def __init__(self, store: PageStore, ddl_log: DdlLog, *, start_lsn: Lsn,
                 start_next_xid: int | None, cache_pages: int = 512) -> None:
        self.store = store
        self.ddl_log = ddl_log
        self.start_lsn = Lsn(start_lsn)
        self.start_next_xid = start_next_xid
        self.cache_pages = cache_pages
        # The pre-filter: relfilenumbers that may be a tracked catalog in some
        # database (a catalog's relfilenumber is its oid until it is rewritten).
        self.relfilenumbers: set[int] = set(TRACKED)
        self._dbs: dict[int, _DbCatalog] = {}
        self._pages: OrderedDict[PageKey, bytearray] = OrderedDict()
        self._pending: dict[int, list[RowChange]] = {}
        self._broken: dict[int, str] = {}
        self._note_mapped_catalogs()

    @property
    def waiting(self) -> bool:
        """Whether some transaction's catalog rows (or failures) wait for its end
        (`transaction_end` may then read the store)."""
        return bool(self._pending or self._broken)

    def _note_mapped_catalogs(self) -> None:
        """Add every database's mapped catalog relfilenumbers (from the relation
        maps at `start_lsn`) to the pre-filter: a catalog rewritten before a
        restart is seen from its first record on. (Unmapped catalogs are
        learned from pg_class when their database is first read.)"""
        try:
            for key, data in self.store.scan(KeyRange.kind(KeyKind.RELMAP), self.start_lsn):
                relmap = RelMapFile.from_bytes(data)
                for oid in (_SHARED if key.db == 0 else _PER_DB_MAPPED):
                    fn = relmap.filenumber(oid)
                    if fn and oid in TRACKED:
                        self.relfilenumbers.add(fn)
        except (StrataError, ValueError) as e:
            log.warning("DDL decoding: the relation maps at %s could not be read: %s",
                        self.start_lsn, e)

    # -- records on catalog pages ---------------------------------------------------
    def observe(self, record: DecodedRecord) -> None:
        """Apply a Heap/Heap2 record on a (possible) catalog relation; keep the
        rows it wrote for its transaction's commit."""
        loc = record.blocks[0].rlocator
        try:
            cat = self._catalog_db(loc.spc, loc.db, record.lsn)
            catalog = cat.filenodes.get(loc.rel)
            if catalog is None or catalog not in TRACKED:
                return
            changes = self._apply(record, loc, catalog)
        except (StrataError, ValueError, struct.error, KeyError) as e:
            self._fail(record, loc, e)
            return
        if changes and record.xl_xid:
            self._pending.setdefault(record.xl_xid, []).extend(changes)
            if catalog == pgc.RELATION_RELATION_ID:
                self._note_catalog_rewrite(loc.db, changes)

    def _note_catalog_rewrite(self, db: int, changes: list[RowChange]) -> None:
        """VACUUM FULL or CLUSTER of a mapped catalog: its transient heap
        ``pg_temp_<catalog oid>`` gets the catalog's new storage at the swap,
        and the same transaction goes on writing that catalog there before the
        relation map update (at commit) names it: track it from now on."""
        for ch in changes:
            if ch.old is not None or ch.new is None:
                continue
            name = str(ch.new["relname"])
            oid = int(name[8:]) if name.startswith("pg_temp_") and name[8:].isdigit() else 0
            if oid in TRACKED and oid in pgc.MAPPED_CATALOGS:
                cat = self._dbs.get(0 if oid in pgc.SHARED_CATALOGS else db)
                fn = _int(ch.new["relfilenode"]) or _int(ch.new["oid"])
                if cat is not None:
                    cat.filenodes[fn] = oid
                    self.relfilenumbers.add(fn)

    def _fail(self, record: DecodedRecord, loc: RelFileLocator, e: Exception) -> None:
        why = f"catalog record at {record.lsn} not decoded: {e}"
        if record.xl_xid and record.xl_xid not in self._broken:
            log.warning("DDL decoding: %s", why)
            self._broken[record.xl_xid] = why
        for blk in record.blocks:
            self._pages.pop((loc.spc, loc.db, loc.rel, blk.blkno), None)

    def _page(self, key: PageKey, lsn: Lsn) -> bytearray | None:
        page = self._pages.get(key)
        if page is not None:
            self._pages.move_to_end(key)
            return page
        data = self.store.get_page(Key.rel_block(key[0], key[1], key[2], ForkNumber.MAIN, key[3]),
                                   lsn)
        return bytearray(data) if data is not None else None

    def _keep(self, key: PageKey, page: bytearray) -> None:
        self._pages[key] = page
        self._pages.move_to_end(key)
        while len(self._pages) > self.cache_pages:
            self._pages.popitem(last=False)

    def _apply(self, record: DecodedRecord, loc: RelFileLocator, catalog: int
               ) -> list[RowChange]:
        """Redo `record` on the cached pages; the rows it inserted, updated or
        deleted (in-place updates and locks write none)."""
        rmid, op = record.xl_rmid, record.info & _OPMASK
        old_at: tuple[int, int] | None = None  # (block id, offnum) of a deleted/updated row
        upd: heap_rmgr.XlHeapUpdate | None = None
        if rmid == RM_HEAP_ID and op == _HEAP_DELETE:
            old_at = (0, heap_rmgr.XlHeapDelete.parse(record.main_data).offnum)
        elif rmid == RM_HEAP_ID and op in _HEAP_UPDATES:
            upd = heap_rmgr.XlHeapUpdate.parse(record.main_data)
            old_blk = heap_rmgr.HEAP_UPDATE_BLKREF_HEAP_OLD
            ob = record.block(old_blk)
            old_at = (old_blk if ob is not None and ob.fork == ForkNumber.MAIN else 0,
                      upd.old_offnum)
        old_tuple: bytes | None = None
        after: dict[int, bytearray] = {}
        for blk in record.blocks:
            if blk.fork != ForkNumber.MAIN or blk.rlocator != loc:
                continue
            key = (loc.spc, loc.db, loc.rel, blk.blkno)
            need_before = not blk.apply_image or (old_at is not None and old_at[0] == blk.block_id)
            page = self._page(key, record.lsn) if need_before else None
            if old_at is not None and old_at[0] == blk.block_id:
                if page is None:
                    raise ValueError(f"block {blk.blkno} of {loc} is not in the store")
                old_tuple = _tuple(page, old_at[1])
            self._pages.pop(key, None)  # redo may leave it half-done if it raises
            page = redo_block_inplace(record, blk.block_id, page)
            self._keep(key, page)
            after[blk.block_id] = page
        layout = pgc.LAYOUTS[catalog]
        new_tuples: list[bytes] = []
        if rmid == RM_HEAP_ID and op == _HEAP_INSERT:
            new_tuples = [_tuple(after[0], heap_rmgr.XlHeapInsert.parse(record.main_data).offnum)]
        elif rmid == RM_HEAP_ID and upd is not None:
            new_tuples = [_tuple(after[0], upd.new_offnum)]
        elif rmid == RM_HEAP2_ID and op == heap2_rmgr.XLOG_HEAP2_MULTI_INSERT:
            init = bool(record.info & heap2_rmgr.XLOG_HEAP_INIT_PAGE)
            mi = heap2_rmgr.XlHeapMultiInsert.parse(record.main_data, init)
            offsets = mi.offsets if not init else tuple(range(1, mi.ntuples + 1))
            new_tuples = [_tuple(after[0], off) for off in offsets]
        out: list[RowChange] = []
        old_row = _row(catalog, old_tuple, layout) if old_tuple is not None else None
        if not new_tuples and old_row is not None:
            out.append(RowChange(record.lsn, catalog, old_row, None))
        for i, t in enumerate(new_tuples):
            out.append(RowChange(record.lsn, catalog, old_row if i == 0 else None,
                                 _row(catalog, t, layout)))
        if catalog == pgc.ATTRIBUTE_RELATION_ID:  # system columns never say anything
            out = [c for c in out if _int((c.new or c.old or {}).get("attnum")) > 0]
        return out

    # -- knowing the catalogs of a database ------------------------------------------
    def _catalog_db(self, spc: int, db: int, lsn: Lsn) -> _DbCatalog:
        cat = self._dbs.get(db)
        if cat is None:
            cat = self._load_db(spc, db, lsn)
            self._dbs[db] = cat
        if cat.failed:
            raise ValueError(cat.failed)
        return cat

    def _load_db(self, spc: int, db: int, lsn: Lsn) -> _DbCatalog:
        """Read a database's catalog relfilenumbers and names at `lsn` (db 0:
        the shared catalogs: roles and databases)."""
        cat = _DbCatalog(spc, db)
        try:
            relmap = self.store.get_page(Key.relmap(spc, db), lsn)
            mapped = RelMapFile.from_bytes(relmap) if relmap else None
            for oid in (_SHARED if db == 0 else _PER_DB_MAPPED):
                fn = mapped.filenumber(oid) if mapped is not None else None
                cat.filenodes[fn if fn else oid] = oid
            if db == 0:
                for row in self._scan(cat, pgc.AUTHID_RELATION_ID, lsn):
                    cat.roles[_int(row["oid"])] = str(row["rolname"])
                for row in self._scan(cat, pgc.DATABASE_RELATION_ID, lsn):
                    cat.databases[_int(row["oid"])] = (str(row["datname"]),
                                                       _int(row["dattablespace"]))
            else:
                for row in self._scan(cat, pgc.RELATION_RELATION_ID, lsn):
                    oid = _int(row["oid"])
                    cat.relations[oid] = RelInfo.from_row(row)
                    if oid in _PER_DB_UNMAPPED:
                        cat.filenodes[_int(row["relfilenode"]) or oid] = oid
                for row in self._scan(cat, pgc.NAMESPACE_RELATION_ID, lsn):
                    cat.namespaces[_int(row["oid"])] = str(row["nspname"])
        except (StrataError, ValueError, struct.error, KeyError) as e:
            cat.failed = f"the catalogs of database {db} could not be read at {lsn}: {e}"
            log.warning("DDL decoding: %s", cat.failed)
        self.relfilenumbers.update(fn for fn, c in cat.filenodes.items() if c in TRACKED)
        return cat

    def _scan(self, cat: _DbCatalog, catalog: int, lsn: Lsn) -> Iterator[pgc.Row]:
        """The current version of every row of `catalog` at `lsn` (per oid, a
        version no transaction deleted is preferred; uncommitted rows count)."""
        fn = cat.filenode_of(catalog)
        if fn is None:
            return
        layout = pgc.LAYOUTS[catalog]
        best: dict[object, tuple[bool, pgc.Row]] = {}
        rng = KeyRange.relation(cat.spc, cat.db, fn, ForkNumber.MAIN)
        for key in self.store.keys(rng, lsn):
            page = self._pages.get((cat.spc, cat.db, fn, key.blk))
            data = page if page is not None else self.store.get_page(key, lsn)
            if data is None:
                continue
            for tup in _tuples(data):
                deleted = pgc.TupleHeader.parse(tup).xmax_is_live_deleter
                row = pgc.deform(tup, layout)
                prev = best.get(row["oid"])
                if prev is None or (prev[0] and not deleted):
                    best[row["oid"]] = (deleted, row)
        for _, row in best.values():
            yield row

    def _type_name(self, cat: _DbCatalog, oid: int, lsn: Lsn) -> str | None:
        for row in self._scan(cat, pgc.TYPE_RELATION_ID, lsn):
            if row["oid"] == oid:
                nsp = cat.namespaces.get(_int(row["typnamespace"]), "")
                name = str(row["typname"])
                return name if nsp in ("pg_catalog", "") else f"{nsp}.{name}"
        return None

    # -- transaction ends ---------------------------------------------------------
    def transaction_end(self, record: DecodedRecord,
                        rec: xact_rmgr.XactCommit | xact_rmgr.XactAbort) -> None:
        """A commit writes its transaction's DDL entry; an abort drops its rows."""
        catalog_change = isinstance(rec, xact_rmgr.XactCommit) and bool(rec.xinfo & xact_rmgr.XACT_XINFO_HAS_INVALS)
        if not self._pending and not self._broken and not catalog_change:
            return  # the ordinary case: nothing to do
        changes: list[RowChange] = []
        notes: list[str] = []
        for x in rec.all_xids:
            changes.extend(self._pending.pop(x, ()))
            if x in self._broken:
                notes.append(self._broken.pop(x))
        if not isinstance(rec, xact_rmgr.XactCommit):
            return
        for loc in rec.rels:
            if loc.rel in self.relfilenumbers:
                self._catalog_dropped(loc, record.lsn)
        if not changes and not notes and not catalog_change:
            return
        if self.start_next_xid is not None and xid_precedes(rec.xid, self.start_next_xid):
            notes.append(f"the transaction began before ingest (re)started at {self.start_lsn}; "
                         "its catalog changes before that point are not listed")
        changes.sort(key=lambda c: c.lsn)
        self._write_entry(record, rec, changes, notes)

    def _write_entry(self, record: DecodedRecord, rec: xact_rmgr.XactCommit,
                     changes: list[RowChange], notes: list[str]) -> None:
        shared = self._shared(record.lsn)
        dbname, dbspc = shared.databases.get(rec.db_id, (str(rec.db_id), rec.ts_id))
        cat = self._dbs.get(rec.db_id)
        if cat is None:  # (db 0: a commit without dbinfo; shared rows only)
            known = set(self.relfilenumbers)
            cat = self._dbs[rec.db_id] = self._load_db(rec.ts_id or dbspc, rec.db_id, record.lsn)
            missed = {fn: c for fn, c in cat.filenodes.items() if c in TRACKED and fn not in known}
            if missed:  # a catalog rewritten before ingest (re)started, learned only now
                try:
                    changes = changes + self._recover(cat, missed, set(rec.all_xids), record.lsn)
                except (StrataError, ValueError, struct.error, KeyError) as e:
                    notes.append(f"catalog changes in {sorted(missed)} of database {dbname} "
                                 f"not decoded: {e}")
        if cat.failed and changes:
            notes.append(cat.failed)
        ddl = describe(changes, _Names(self, cat, shared, record.lsn))
        self._remember(cat, shared, changes)
        if ddl or notes:
            self.ddl_log.append(DdlEntry(record.lsn, record.end_lsn, rec.xact_time, rec.xid,
                                         rec.db_id, dbname, tuple(ddl), "; ".join(notes)))

    def _recover(self, cat: _DbCatalog, missed: dict[int, int], xids: set[int], lsn: Lsn
                 ) -> list[RowChange]:
        """The rows a committing transaction wrote in catalog files the
        pre-filter did not know yet: the versions it inserted (xmin) and deleted
        (xmax) as its commit finds them on their pages."""
        out: list[RowChange] = []
        for fn, catalog in missed.items():
            layout = pgc.LAYOUTS[catalog]
            old: dict[object, pgc.Row] = {}
            new: dict[object, pgc.Row] = {}
            rng = KeyRange.relation(cat.spc, cat.db, fn, ForkNumber.MAIN)
            for key in self.store.keys(rng, lsn):
                page = self.store.get_page(key, lsn)
                for tup in _tuples(page or b""):
                    h = pgc.TupleHeader.parse(tup)
                    made, gone = h.xmin in xids, h.xmax in xids and h.xmax_is_live_deleter
                    if made != gone:  # (both: an intermediate version)
                        row = _row(catalog, tup, layout)
                        (new if made else old)[object_key(catalog, row)] = row
            out += [RowChange(lsn, catalog, old.get(k), new.get(k)) for k in old.keys() | new.keys()]
        return out

    def _shared(self, lsn: Lsn) -> _DbCatalog:
        cat = self._dbs.get(0)
        if cat is None:
            cat = self._dbs[0] = self._load_db(GLOBALTABLESPACE_OID, 0, lsn)
        return cat

    def _remember(self, cat: _DbCatalog, shared: _DbCatalog, changes: list[RowChange]) -> None:
        """Committed rows keep the name maps (and catalog relfilenumbers) current."""
        for ch in changes:
            row = ch.new if ch.new is not None else ch.old
            assert row is not None
            if ch.catalog == pgc.RELATION_RELATION_ID:
                oid = _int(row["oid"])
                if ch.new is None:
                    cat.relations.pop(oid, None)
                else:
                    cat.relations[oid] = RelInfo.from_row(ch.new)
                    if oid in _PER_DB_UNMAPPED and ch.new["relfilenode"]:
                        fn = _int(ch.new["relfilenode"])
                        cat.filenodes[fn] = oid
                        self.relfilenumbers.add(fn)
            elif ch.catalog == pgc.NAMESPACE_RELATION_ID:
                _put(cat.namespaces, _int(row["oid"]), ch.new and str(ch.new["nspname"]))
            elif ch.catalog == pgc.AUTHID_RELATION_ID:
                _put(shared.roles, _int(row["oid"]), ch.new and str(ch.new["rolname"]))
            elif ch.catalog == pgc.DATABASE_RELATION_ID:
                oid = _int(row["oid"])
                _put(shared.databases, oid, ch.new and (str(ch.new["datname"]),
                                                        _int(ch.new["dattablespace"])))
                if ch.new is None:
                    self._forget_db(oid)

    def _forget_db(self, db: int) -> None:
        self._dbs.pop(db, None)
        for key in [k for k in self._pages if k[1] == db]:
            del self._pages[key]

    def _catalog_dropped(self, loc: RelFileLocator, lsn: Lsn) -> None:
        """A commit dropped a relfilenumber that may be a catalog's (VACUUM FULL
        or CLUSTER of a catalog): forget its pages and re-read that database's
        catalogs now, from the new relation map and pg_class, so the pre-filter
        knows the new relfilenumber before the next record on it."""
        for key in [k for k in self._pages if k[:3] == (loc.spc, loc.db, loc.rel)]:
            del self._pages[key]
        cat = self._dbs.get(loc.db)
        if cat is not None and loc.rel in cat.filenodes:
            self._dbs[loc.db] = self._load_db(cat.spc, loc.db, lsn)


class _Names:
    """`catalog_changes.Names` over a database's tracked catalogs at `lsn`."""

    def __init__(self, tracker: CatalogTracker, cat: _DbCatalog, shared: _DbCatalog,
                 lsn: Lsn) -> None:
        self._t = tracker
        self._cat = cat
        self._shared = shared
        self._lsn = lsn

    def relation(self, oid: int) -> RelInfo | None:
        return self._cat.relations.get(oid)

    def namespace(self, oid: int) -> str | None:
        return self._cat.namespaces.get(oid)

    def role(self, oid: int) -> str | None:
        return self._shared.roles.get(oid)

    def type_name(self, oid: int) -> str | None:
        try:
            return self._t._type_name(self._cat, oid, self._lsn)
        except (StrataError, ValueError, struct.error):
            return None


def _put(d: dict, key: int, value: object) -> None:  # type: ignore[type-arg]
    if value is None:
        d.pop(key, None)
    else:
        d[key] = value


def _int(v: object) -> int:
    return v if isinstance(v, int) else 0


def _tuple(page: bytes | bytearray, offnum: int) -> bytes:
    """The tuple at line pointer `offnum` (1-based). Raises: ValueError if
    there is none."""
    if not 1 <= offnum <= page_ops.page_get_max_offset(page):
        raise ValueError(f"no line pointer {offnum} on the page")
    off, flags, length = page_ops.item_id(page, offnum)
    if flags != page_ops.LP_NORMAL:
        raise ValueError(f"line pointer {offnum} is not a tuple (flags {flags})")
    return bytes(page[off:off + length])


def _tuples(page: bytes | bytearray) -> Iterator[bytes]:
    if len(page) < page_ops.BLCKSZ or page_ops.page_is_new(page):
        return
    for offnum in range(1, page_ops.page_get_max_offset(page) + 1):
        off, flags, length = page_ops.item_id(page, offnum)
        if flags == page_ops.LP_NORMAL:
            yield bytes(page[off:off + length])


def _row(catalog: int, tup: bytes, layout: pgc.Layout) -> pgc.Row:
    """A pending row: the columns the description reads, varlenas as a CRC
    (enough to tell a change)."""
    row = pgc.deform(tup, layout)
    keep = _KEEP.get(catalog)
    return {k: (google_crc32c.value(v) if isinstance(v, bytes) else v)
            for k, v in row.items() if keep is None or k in keep}
