"""`StoreView`: the `ClusterView` over the page store at LSN X.

Maps the key space directly (see `historical.source`): databases from DB_DIR
keys, relation forks and their lengths from REL_SIZE keys, pages from one
streaming `scan(KeyRange.relation(...), X)` per fork (never one lookup per
page), SLRU segments from SLRU_PAGE keys, relation maps from RELMAP keys, the
control values from the CLUSTER key, the pg_control template from the AUX key
written at import. Fed by the page store; feeds `materialize`. Read-only.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from strata.errors import LsnOutOfRangeError, UnsupportedRecordError
from strata.historical.reader import PageReader
from strata.historical.source import RelFile, slru_segments_from_pages
from strata.key import Key, KeyKind, KeyRange, SlruKind
from strata.keyspace.cluster import ClusterState, control_template_key
from strata.keyspace.relation import decode_rel_size
from strata.lsn import Lsn
from strata.pg.constants import BLCKSZ, GLOBALTABLESPACE_OID

log = logging.getLogger(__name__)

_ZERO = bytes(BLCKSZ)
# Resource managers of the index AMs whose WAL has no redo yet (the AMs of
# historical.modes.UNSUPPORTED_INDEX_AMS): their relations are served as empty
# pages and their indexes marked invalid. None is left (every index AM of 18.6
# has redo), so an UnsupportedRecordError (a record type we do not know, e.g.
# WAL of a newer PostgreSQL) is a true error: it fails the read instead of
# serving empty pages of an index the planner would trust.
NO_REDO_YET_RMGRS: frozenset[str] = frozenset()


class StoreView:
    """A consistent view of the cluster at `lsn` (every record ending at or before it)."""

    def __init__(self, store: PageReader, lsn: Lsn) -> None:
        self.store = store
        self._lsn = Lsn(lsn)
        self._cluster: ClusterState | None = None
        self.unsupported: list[tuple[int, int, int, int, str]] = []

    @property
    def lsn(self) -> Lsn:
        return self._lsn

    def databases(self) -> list[tuple[int, int]]:
        dbs = [(k.spc, k.db) for k in self.store.keys(KeyRange.kind(KeyKind.DB_DIR), self._lsn)]
        return [(GLOBALTABLESPACE_OID, 0), *dbs]

    def relations(self) -> Iterator[RelFile]:
        for key, data in self.store.scan(KeyRange.kind(KeyKind.REL_SIZE), self._lsn):
            yield RelFile(key.spc, key.db, key.rel, key.fork, decode_rel_size(data))

    def pages(self, spc: int, db: int, rel: int, fork: int, start: int = 0,
              end: int | None = None) -> Iterator[tuple[int, bytes]]:
        """Pages of one fork (blocks [start, end) when given), streaming. A relation
        whose WAL has records of an access method with no redo yet
        (`NO_REDO_YET_RMGRS`) cannot be rebuilt: its remaining pages are written
        as new (all-zero) pages, it is listed in `unsupported`, and the instance
        marks such indexes invalid so the planner never reads them.
        Raises: UnsupportedRecordError for a record of any other rmgr."""
        size = self.store.get_page(Key.rel_size(spc, db, rel, fork), self._lsn)
        nblocks = decode_rel_size(size) if size is not None else 0
        if end is not None:
            nblocks = min(nblocks, end)
        if nblocks <= start:
            return
        next_blk = start
        rng = KeyRange(Key.rel_block(spc, db, rel, fork, start),
                       Key.rel_block(spc, db, rel, fork, nblocks))
        try:
            for key, page in self.store.scan(rng, self._lsn):
                if key.blk >= nblocks:
                    return
                yield key.blk, page
                next_blk = key.blk + 1
        except UnsupportedRecordError as e:
            if e.rmgr not in NO_REDO_YET_RMGRS:
                log.error("relation %d/%d/%d fork %d at %s cannot be rebuilt: %s",
                          spc, db, rel, fork, self._lsn, e)
                raise
            log.warning("relation %d/%d/%d fork %d at %s: %s; served as empty pages",
                        spc, db, rel, fork, self._lsn, e)
            self.unsupported.append((spc, db, rel, fork, str(e)))
            for blk in range(next_blk, nblocks):
                yield blk, _ZERO

    def slru_segments(self, kind: SlruKind) -> Iterator[tuple[str, bytes]]:
        rng = KeyRange(Key.slru_page(kind, 0), Key.slru_page(kind + 1, 0))
        return slru_segments_from_pages(
            (k.blk, page) for k, page in self.store.scan(rng, self._lsn))

    def relmap(self, spc: int, db: int) -> bytes | None:
        return self.store.get_page(Key.relmap(spc, db), self._lsn)

    def cluster_state(self) -> ClusterState:
        if self._cluster is None:
            data = self.store.get_page(Key.cluster(0), self._lsn)
            if data is None:
                raise LsnOutOfRangeError(f"no cluster values at {self._lsn}: before history starts")
            self._cluster = ClusterState.from_bytes(data)
        return self._cluster

    def control(self) -> ClusterState:
        return self.cluster_state()

    def control_template(self) -> bytes:
        data = self.store.get_page(control_template_key(), self._lsn)
        if data is None:
            raise LsnOutOfRangeError(f"no pg_control template at {self._lsn}: before history starts")
        return data
