"""Bootstrap of history: a cleanly stopped data directory -> store images at its
checkpoint LSN.

History starts where strata starts: the embedded primary is imported page by
page at a clean shutdown checkpoint before users connect (DESIGN.md,
component 3). Fed by a `historical.source.DataDirSource`; feeds the page
store through `WalIngest` (so relation sizes and databases are tracked the
same way as for WAL). Owns the AUX key that keeps the imported pg_control
(the template every historical instance's control file is made from).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from strata.historical.source import DataDirSource
from strata.ingest.walingest import WalIngest
from strata.key import Key, KeyKind, SlruKind
from strata.keyspace.cluster import ClusterState
from strata.keyspace.relation import STORED_FORKS
from strata.lsn import Lsn
from strata.pg.constants import GLOBALTABLESPACE_OID
from strata.pg.slru import parse_segment_file_name, segment_pages
from strata.storage.values import PageImage

log = logging.getLogger(__name__)

AUX_CONTROL_TEMPLATE = 0  # Key(AUX, rel=0): the imported pg_control bytes


def control_template_key() -> Key:
    return Key(KeyKind.AUX, 0, 0, AUX_CONTROL_TEMPLATE, 0, 0)


def cluster_state_of(source: DataDirSource) -> ClusterState:
    """The control values of the imported cluster, at its checkpoint."""
    cf = source.controlfile
    return ClusterState(
        lsn=cf.checkpoint, next_full_xid=cf.next_full_xid, next_oid=cf.next_oid,
        next_multi=cf.next_multi, next_multi_offset=cf.next_multi_offset,
        oldest_xid=cf.oldest_xid, oldest_xid_db=cf.oldest_xid_db, oldest_multi=cf.oldest_multi,
        oldest_multi_db=cf.oldest_multi_db, timeline=cf.timeline,
        wal_segment_size=cf.xlog_seg_size, checkpoint_redo=cf.redo,
        char_signed=cf.default_char_signedness,
    )


def import_datadir(source: DataDirSource, ingest: WalIngest,
                   progress: Callable[[int], None] | None = None, *, lsn: Lsn | None = None
                   ) -> Lsn:
    """Store every page, SLRU segment, relation map and control value of
    `source` at its checkpoint LSN (or at `lsn`: a base backup made consistent
    by recovery holds the primary's state at the backup's end LSN, while its
    own checkpoint lies on the copy's WAL). Returns that LSN (where history
    starts).

    Requires: `ingest.start_lsn` is that LSN and the store holds nothing above it.
    """
    lsn = source.lsn if lsn is None else lsn
    store = ingest.store
    pages = 0
    for spc, db in source.databases():
        if db != 0:
            ingest.note_database(spc, db, lsn)
    for rf in source.relations():
        if rf.fork not in STORED_FORKS:
            continue
        for blkno, page in source.pages(rf.spc, rf.db, rf.rel, rf.fork):
            store.put(Key.rel_block(rf.spc, rf.db, rf.rel, rf.fork, blkno), lsn, PageImage(page))
            pages += 1
            if progress is not None and pages % 1024 == 0:
                progress(pages)
        ingest.note_relation(rf.spc, rf.db, rf.rel, rf.fork, rf.nblocks, lsn)
    for kind in SlruKind:
        for name, data in source.slru_segments(kind):
            segno = parse_segment_file_name(name)
            for pageno, page in segment_pages(segno, data):
                store.put(Key.slru_page(kind, pageno), lsn, PageImage(page))
                ingest.transam.note_existing_page(kind, pageno)
    for spc, db in [(GLOBALTABLESPACE_OID, 0), *source.databases()]:
        relmap = source.relmap(spc, db)
        if relmap:
            store.put(Key.relmap(spc, db), lsn, PageImage(relmap))
            ingest.transam.note_relmap(spc, db, relmap)
    store.put(control_template_key(), lsn, PageImage(source.control_template()))
    store.put(Key.cluster(0), lsn, PageImage(cluster_state_of(source).to_bytes()))
    ingest.advance(lsn)
    log.info("imported %d pages at %s", pages, lsn)
    return lsn
