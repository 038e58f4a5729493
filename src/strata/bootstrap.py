"""Bootstrap of history: a cleanly stopped data directory -> store images at its
checkpoint LSN.

History starts where strata starts: the embedded primary is imported page by
page at a clean shutdown checkpoint before users connect (DESIGN.md,
component 3). Fed by a `historical.source.DataDirSource`; feeds the page
store through `WalIngest` (so relation sizes and databases are tracked the
same way as for WAL). `import_history` is the one import path of both
modes (embedded: the primary's own data directory; attach: a base backup
made consistent): it writes ``history.json`` only once the import is durable,
so its absence means "import again".
"""

from __future__ import annotations

import logging
import shutil
import sys
from datetime import UTC, datetime

from strata.historical.source import DataDirSource
from strata.home import HomeLayout
from strata.home.files import HistoryInfo, write_json
from strata.ingest.transam import TransamIngest
from strata.ingest.walingest import WalIngest
from strata.key import Key, SlruKind
from strata.keyspace.cluster import control_template_key
from strata.keyspace.relation import STORED_FORKS
from strata.lsn import Lsn
from strata.pagestore import PageStore
from strata.pg.constants import GLOBALTABLESPACE_OID
from strata.pg.slru import parse_segment_file_name, segment_pages
from strata.progress import Progress, make_progress
from strata.reconstruct.reconstruct import reconstruct_value
from strata.storage.values import PageImage
from strata.timemap.timemap import TimeMap

log = logging.getLogger(__name__)


def import_datadir(source: DataDirSource, ingest: WalIngest,
                   progress: Progress | None = None, *, lsn: Lsn | None = None) -> Lsn:
    """Store every page, SLRU segment, relation map and control value of
    `source` at its checkpoint LSN (or at `lsn`: a base backup made consistent
    by recovery holds the primary's state at the backup's end LSN, while its
    own checkpoint lies on the copy's WAL). Returns that LSN (where history
    starts).

    Requires: `ingest.start_lsn` is that LSN and the store holds nothing above it.
    """
    lsn = source.lsn if lsn is None else lsn
    progress = progress or Progress()
    store = ingest.store
    pages = 0
    for spc, db in source.databases():
        if db != 0:
            ingest.note_database(spc, db, lsn)
    forks = [rf for rf in source.relations() if rf.fork in STORED_FORKS]
    progress.start(sum(rf.nblocks for rf in forks), "pages")
    for rf in forks:
        for blkno, page in source.pages(rf.spc, rf.db, rf.rel, rf.fork):
            store.put(Key.rel_block(rf.spc, rf.db, rf.rel, rf.fork, blkno), lsn, PageImage(page))
            pages += 1
            if pages % 256 == 0:
                progress.update(pages)
        ingest.note_relation(rf.spc, rf.db, rf.rel, rf.fork, rf.nblocks, lsn)
    progress.update(pages)
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
    store.put(Key.cluster(0), lsn, PageImage(source.control().to_bytes()))
    ingest.advance(lsn)
    log.info("imported %d pages at %s", pages, lsn)
    return lsn


def import_history(layout: HomeLayout, source: DataDirSource, *, mode: str,
                   lsn: Lsn | None = None, progress: Progress | None = None) -> HistoryInfo:
    """Start history in `layout` from `source` (at its checkpoint, or at `lsn`):
    every earlier store, time map and historical instance there is removed
    first; ``history.json`` is written last, after the import is durable.
    `progress`: where the import reports (default: stderr, a bar on a terminal).

    Requires: the primary does not change `source` meanwhile (stopped, or a copy).
    """
    shown = progress if progress is not None else make_progress(sys.stderr, "import")
    try:
        return _import_history(layout, source, mode, lsn, shown)
    finally:
        if progress is None:
            shown.close()


def _import_history(layout: HomeLayout, source: DataDirSource, mode: str, lsn: Lsn | None,
                    progress: Progress) -> HistoryInfo:
    for d in (layout.layers, layout.timemap, layout.instances):
        shutil.rmtree(d, ignore_errors=True)
    layout.receiver_file.unlink(missing_ok=True)
    at = source.lsn if lsn is None else lsn
    store = PageStore.open(layout.layers, reconstruct_value)
    timemap = TimeMap.open(layout.timemap, durable_lsn=store.durable_lsn)
    try:
        ingest = WalIngest(store, timemap, TransamIngest(source.control()), start_lsn=at)
        progress.stage(f"copying the pages of {source.datadir} at {at}")
        import_datadir(source, ingest, progress, lsn=at)
        progress.stage("making the import durable")
        store.flush()
        info = HistoryInfo(source.controlfile.system_identifier, at, datetime.now(UTC), mode)
        write_json(layout.history_file, info.to_json())
    finally:
        store.close()
        timemap.close()
    return info
