"""The relation files a historical data directory shows, in both modes.

Fed by a `ClusterView` (its `relations()` and `pages()`). Feeds
`materialize` (through `ServedView`, a `ClusterView` itself) and the lazy
file system (`served_forks`, `facts_of`). Owns no file.

What is served, per relation fork the source lists:
  * main and visibility-map forks (free-space-map forks are left out: only
    inserts read them). The VM at X is the primary's, or less visible where
    ingest could not know better (ingest/visibility_map.py): an index-only
    scan in the past skips the heap where the primary's would;
  * an unlogged relation (it has an init fork; its contents are never in WAL)
    gets a main fork that is a copy of its init fork, as PostgreSQL makes one
    at the end of recovery: an empty table, a fresh unlogged index or
    sequence. The init fork itself is not shown: a hot standby's startup
    (ResetUnloggedRelations, cleanup) would delete the main fork of every
    relation that has one;
  * pages of each database's pg_class and pg_index patched by
    `catalog_patch` (unlogged -> permanent; indexes of AMs without redo
    invalid).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple

from strata.historical.catalog_patch import (
    PG_CLASS_OID,
    CatalogFacts,
    am_oids,
    patch_page,
    read_facts,
    relmap_lookup,
)
from strata.historical.source import ClusterView, RelFile
from strata.key import SlruKind
from strata.keyspace.cluster import ClusterState
from strata.lsn import Lsn
from strata.pg.constants import GLOBALTABLESPACE_OID, ForkNumber


class ServedFork(NamedTuple):
    """One fork file of the data directory; its pages are those of `from_fork`."""

    spc: int
    db: int
    rel: int
    fork: int
    nblocks: int
    from_fork: int


def served_forks(relations: Iterable[RelFile]) -> list[ServedFork]:
    """Main and visibility-map forks; for an unlogged relation (one with an init
    fork) the main fork is its init fork's copy, and neither its init fork nor
    its VM is shown (its VM describes contents the past does not have).
    Sorted by key."""
    out: dict[tuple[int, int, int, int], ServedFork] = {}
    unlogged: set[tuple[int, int, int]] = set()
    for r in relations:
        rel = (r.spc, r.db, r.rel)
        if r.fork == ForkNumber.INIT:
            unlogged.add(rel)
            out[(*rel, ForkNumber.MAIN)] = ServedFork(*rel, ForkNumber.MAIN, r.nblocks,
                                                      ForkNumber.INIT)
        elif r.fork in (ForkNumber.MAIN, ForkNumber.VM) and rel not in unlogged:
            out[(*rel, r.fork)] = ServedFork(*rel, r.fork, r.nblocks, r.fork)
    return [out[k] for k in sorted(out) if k[:3] not in unlogged or k[3] == ForkNumber.MAIN]


def facts_of(source: ClusterView, spc: int, db: int, invalid_am_oids: Sequence[int]
             ) -> CatalogFacts | None:
    """The catalog facts of the database whose relation map is in (spc, db), read
    from its pg_class pages; None for global/ or a directory without a map."""
    if spc == GLOBALTABLESPACE_OID:
        return None
    relmap = source.relmap(spc, db)
    pg_class = relmap_lookup(relmap, PG_CLASS_OID) if relmap is not None else None
    if pg_class is None:
        return None
    pages = (page for _blk, page in source.pages(spc, db, pg_class, ForkNumber.MAIN))
    return read_facts(pg_class, pages, invalid_am_oids)


class ServedView:
    """`source` as a historical data directory shows it (see the module docstring)."""

    def __init__(self, source: ClusterView, invalid_index_ams: Sequence[str] = ()) -> None:
        self.inner = source
        self.invalid_am_oids = am_oids(invalid_index_ams)
        self._facts: dict[tuple[int, int], CatalogFacts | None] = {}
        self._from: dict[tuple[int, int, int, int], int] = {}

    def facts(self, spc: int, db: int) -> CatalogFacts | None:
        if (spc, db) not in self._facts:
            self._facts[(spc, db)] = facts_of(self.inner, spc, db, self.invalid_am_oids)
        return self._facts[(spc, db)]

    @property
    def indexes_marked_invalid(self) -> int:
        return sum(len(f.invalid_indexes) for f in self._facts.values() if f is not None)

    @property
    def lsn(self) -> Lsn:
        return self.inner.lsn

    def databases(self) -> list[tuple[int, int]]:
        return self.inner.databases()

    def relations(self) -> Iterator[RelFile]:
        for f in served_forks(self.inner.relations()):
            self.serve_from(f.spc, f.db, f.rel, f.fork, f.from_fork)
            yield RelFile(f.spc, f.db, f.rel, f.fork, f.nblocks)

    def serve_from(self, spc: int, db: int, rel: int, fork: int, from_fork: int) -> None:
        """Serve fork `fork` with the pages of `from_fork` (what `relations` set up)."""
        self._from[(spc, db, rel, fork)] = from_fork

    def pages(self, spc: int, db: int, rel: int, fork: int, start: int = 0,
              end: int | None = None) -> Iterator[tuple[int, bytes]]:
        """Pages of a served fork; blocks [start, end) when given (the inner
        source must then accept them too, as `StoreView` does)."""
        from_fork = self._from.get((spc, db, rel, fork), fork)
        facts = self.facts(spc, db)
        inner = self.inner.pages(spc, db, rel, from_fork) if (start, end) == (0, None) else \
            self.inner.pages(spc, db, rel, from_fork, start, end)  # type: ignore[call-arg]
        for blk, page in inner:
            if facts is not None and fork == ForkNumber.MAIN and facts.patches(rel):
                page = patch_page(facts, rel, page)
            yield blk, page

    def slru_segments(self, kind: SlruKind) -> Iterator[tuple[str, bytes]]:
        return self.inner.slru_segments(kind)

    def relmap(self, spc: int, db: int) -> bytes | None:
        return self.inner.relmap(spc, db)

    def control(self) -> ClusterState:
        return self.inner.control()

    def control_template(self) -> bytes:
        return self.inner.control_template()
