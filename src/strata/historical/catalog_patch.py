"""Catalog pages as a historical server must see them: two in-place patches.

Fed by the pages of each database's pg_class (found through its relation map)
and pg_index, as the lazy file system serves them or `materialize` writes
them. Feeds those pages back patched (their checksums are set afterwards, as
for every page). Owns no file.

1. Indexes of access methods without redo (hash, GiST, GIN, SP-GiST, BRIN)
   get ``pg_index.indisvalid = false``: the planner never uses them, so queries
   answer by other plans (their pages may be zeros). Materialize mode did this
   with an UPDATE during a normal start; patching the page needs no start.
2. Unlogged relations (``relpersistence = 'u'``) become permanent ('p') in
   pg_class: a hot standby refuses to read an unlogged relation ("cannot
   access temporary or unlogged relations during recovery"). Their contents
   are never in WAL; their init fork is. The data directory shows the main
   fork as a copy of the init fork (what PostgreSQL's ResetUnloggedRelations
   does at the end of recovery), so an unlogged table reads as empty, an
   unlogged sequence at its start value.

Every tuple version is patched (live, dead or from the future of a snapshot):
the patched fields only ever make a historical server more conservative, so
visibility checks are unnecessary. Column offsets are PostgreSQL 18's
(pg_class.h, pg_index.h); all columns up to those patched are fixed-width and
NOT NULL, so they sit at fixed offsets from t_hoff.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

from strata.reconstruct.redo.page_ops import (
    LP_NORMAL,
    item_id,
    page_get_max_offset,
    page_is_new,
)

PG_CLASS_OID = 1259
PG_INDEX_OID = 2610
# pg_am.dat: fixed OIDs of the built-in index access methods
INDEX_AM_OIDS: dict[str, int] = {"btree": 403, "hash": 405, "gist": 783, "gin": 2742,
                                 "spgist": 4000, "brin": 3580}

_T_HOFF = 22  # HeapTupleHeaderData.t_hoff
# pg_class column offsets from the start of the tuple data
_CLASS_OID = 0
_CLASS_RELAM = 84
_CLASS_RELFILENODE = 88
_CLASS_RELPERSISTENCE = 118
_CLASS_RELKIND = 119
_CLASS_MIN_LEN = 120
# pg_index column offsets
_INDEX_INDEXRELID = 0
_INDEX_INDISVALID = 18
_INDEX_MIN_LEN = 19

RELPERSISTENCE_UNLOGGED = ord("u")
RELPERSISTENCE_PERMANENT = ord("p")
_U32 = struct.Struct("<I")
_RELMAP_HEAD = struct.Struct("<ii")  # magic, num_mappings
RELMAP_MAGIC = 0x592717
_RELMAP_ENTRY = struct.Struct("<II")


def relmap_lookup(relmap: bytes, oid: int) -> int | None:
    """The relfilenumber a pg_filenode.map gives a mapped catalog `oid`, or None."""
    if len(relmap) < _RELMAP_HEAD.size:
        return None
    magic, n = _RELMAP_HEAD.unpack_from(relmap, 0)
    if magic != RELMAP_MAGIC:
        return None
    for i in range(min(n, 64)):
        mapoid, filenumber = _RELMAP_ENTRY.unpack_from(relmap, 8 + i * 8)
        if mapoid == oid:
            return int(filenumber)
    return None


def _tuples(page: bytes | bytearray, min_len: int) -> Iterable[int]:
    """Offsets of the data of every normal heap tuple at least `min_len` bytes long."""
    if page_is_new(page):
        return
    for off in range(1, page_get_max_offset(page) + 1):
        lp_off, flags, lp_len = item_id(page, off)
        if flags != LP_NORMAL or lp_off + lp_len > len(page) or lp_len <= _T_HOFF:
            continue
        data = lp_off + page[lp_off + _T_HOFF]
        if data + min_len <= lp_off + lp_len:
            yield data


@dataclass
class CatalogFacts:
    """What the patches of one database need, read from its pg_class."""

    pg_class: int  # relfilenumber of pg_class
    pg_index: set[int] = field(default_factory=set)  # relfilenumbers pg_index has had
    invalid_indexes: set[int] = field(default_factory=set)  # index OIDs to mark invalid
    unlogged: set[int] = field(default_factory=set)  # relfilenumbers of unlogged relations

    def patches(self, rel: int) -> bool:
        return rel == self.pg_class or rel in self.pg_index


def read_facts(pg_class_rel: int, pages: Iterable[bytes], invalid_am_oids: Iterable[int]
               ) -> CatalogFacts:
    """Scan pg_class pages (all tuple versions) for the facts the patches use."""
    ams = set(invalid_am_oids)
    facts = CatalogFacts(pg_class=pg_class_rel)
    for page in pages:
        for d in _tuples(page, _CLASS_MIN_LEN):
            oid = _U32.unpack_from(page, d + _CLASS_OID)[0]
            filenode = _U32.unpack_from(page, d + _CLASS_RELFILENODE)[0]
            if oid == PG_INDEX_OID and filenode:
                facts.pg_index.add(filenode)
            if page[d + _CLASS_RELKIND] in (ord("i"), ord("I")) and \
                    _U32.unpack_from(page, d + _CLASS_RELAM)[0] in ams:
                facts.invalid_indexes.add(oid)
            if page[d + _CLASS_RELPERSISTENCE] == RELPERSISTENCE_UNLOGGED and filenode:
                facts.unlogged.add(filenode)
    return facts


def patch_page(facts: CatalogFacts, rel: int, page: bytes) -> bytes:
    """`page` of relation `rel` with the patches applied (the same object if none applies)."""
    if rel == facts.pg_class:
        out = bytearray(page)
        changed = False
        for d in _tuples(page, _CLASS_MIN_LEN):
            if out[d + _CLASS_RELPERSISTENCE] == RELPERSISTENCE_UNLOGGED:
                out[d + _CLASS_RELPERSISTENCE] = RELPERSISTENCE_PERMANENT
                changed = True
        return bytes(out) if changed else page
    if rel in facts.pg_index and facts.invalid_indexes:
        out = bytearray(page)
        changed = False
        for d in _tuples(page, _INDEX_MIN_LEN):
            if _U32.unpack_from(page, d + _INDEX_INDEXRELID)[0] in facts.invalid_indexes and \
                    out[d + _INDEX_INDISVALID]:
                out[d + _INDEX_INDISVALID] = 0
                changed = True
        return bytes(out) if changed else page
    return page


def am_oids(names: Iterable[str]) -> list[int]:
    """OIDs of the named index access methods (ValueError for an unknown name)."""
    out = []
    for n in names:
        if n not in INDEX_AM_OIDS:
            raise ValueError(f"unknown index access method {n!r} (known: {sorted(INDEX_AM_OIDS)})")
        out.append(INDEX_AM_OIDS[n])
    return out
