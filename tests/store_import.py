"""A store imported from a test primary, for tests that build history in-process
(no `strata up`): the primary is stopped, its data directory imported into a new
store under a root, and started again; WAL the primary writes afterwards is
ingested from its pg_wal. Touches only the paths it is given."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from strata.bootstrap import import_datadir
from strata.historical.source import DataDirSource
from strata.ingest.transam import TransamIngest
from strata.ingest.walingest import WalIngest
from strata.lsn import Lsn
from strata.pagestore import PageStore
from strata.reconstruct.reconstruct import reconstruct_value
from strata.runtime.cluster import Cluster
from strata.timemap.timemap import TimeMap
from strata.wal.segments import iter_records


@dataclass
class Imported:
    store: PageStore  # the writer, opened on root/layers
    timemap: TimeMap  # root/timemap
    ingest: WalIngest
    start: Lsn  # the LSN history starts at (the import)


def import_stopped(primary: Cluster, root: Path) -> Imported:
    """Stop `primary`, import its data directory into a new store at root/layers
    (time map at root/timemap), and start it again."""
    primary.stop()
    source = DataDirSource(primary.datadir)
    store = PageStore.open(root / "layers", reconstruct_value)
    timemap = TimeMap.open(root / "timemap")
    ingest = WalIngest(store, timemap, TransamIngest(source.control()), start_lsn=source.lsn)
    start = import_datadir(source, ingest)
    primary.start()
    return Imported(store, timemap, ingest, start)


def ingest_through(ingest: WalIngest, wal_dir: Path, start: Lsn, end: Lsn) -> None:
    """Ingest the WAL in `wal_dir` from `start` through `end`: every record that
    begins before `end` and the first one at or after it (so what is published
    reaches past `end` even when `end` lies just after a page header), then
    publish it."""
    for rec in iter_records(wal_dir, start):
        ingest.ingest(rec)
        if rec.lsn >= end:
            break
    ingest.advance()
