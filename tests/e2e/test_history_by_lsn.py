"""End to end without the proxy: import a stopped primary, ingest its WAL,
and rebuild the database at every workload step's LSN.

Oracle: the fingerprint the live primary had right after each step
(shared/workloads/README.md). A historical instance materialised from the
store at that LSN must give the same fingerprint.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from strata.bootstrap import cluster_state_of, import_datadir
from strata.historical.instance import start_instance
from strata.historical.materialize import materialize
from strata.historical.source import DataDirSource
from strata.historical.store_source import StoreSource
from strata.ingest.transam import TransamIngest
from strata.ingest.walingest import WalIngest
from strata.lsn import Lsn
from strata.pagestore import PageStore
from strata.reconstruct.reconstruct import reconstruct_value
from strata.runtime.cluster import Cluster
from strata.timeline.timemap import TimeMap
from strata.wal.segments import iter_records
from tests.conftest import make_cluster
from tests.e2e.workload import WORKLOADS, fingerprint, first_difference, load_steps, run_steps

UNSUPPORTED_INDEX_AMS = ("hash", "gin", "gist", "spgist", "brin")


@pytest.fixture
def primary(scratch_dir: Path) -> Iterator[Cluster]:
    c = make_cluster(scratch_dir / "primary", autovacuum="off")
    try:
        yield c
    finally:
        c.stop("immediate")


def _ingest_all(primary: Cluster, home: Path) -> tuple[PageStore, Lsn]:
    """Stop the primary cleanly, import it, and return the store + import LSN."""
    primary.stop()
    source = DataDirSource(primary.datadir)
    store = PageStore.open(home / "layers", reconstruct_value)
    timemap = TimeMap.open(home / "timemap")
    transam = TransamIngest(cluster_state_of(source))
    ingest = WalIngest(store, timemap, transam, start_lsn=source.lsn)
    lsn = import_datadir(source, ingest)
    return store, lsn


@pytest.mark.e2e
def test_every_history_step_reproduces_by_lsn(primary: Cluster, scratch_dir: Path) -> None:
    home = scratch_dir / "strata"
    home.mkdir()
    store, start = _ingest_all(primary, home)
    ingest_timemap = TimeMap(None)
    source0 = DataDirSource(primary.datadir)
    transam = TransamIngest(cluster_state_of(source0))
    ingest = WalIngest(store, ingest_timemap, transam, start_lsn=start)
    ingest.load_state(start)
    primary.start()
    steps = load_steps(WORKLOADS / "history.sql")
    with primary.connect() as conn:
        points = run_steps(conn, steps)
    primary.stop()  # all WAL on disk
    end = max(Lsn.parse(p.lsn) for p in points)
    for rec in iter_records(primary.wal_dir(), start):
        ingest.ingest(rec)
        if rec.lsn > end:
            break
    assert len(ingest_timemap) > len(steps)
    failures = []
    try:
        for i, p in enumerate(points):
            lsn = Lsn.parse(p.lsn)
            mat = materialize(StoreSource(store, lsn), scratch_dir / f"h{i}" / "data")
            inst = start_instance(mat, invalid_index_ams=UNSUPPORTED_INDEX_AMS)
            try:
                with inst.connect() as hconn:
                    got = fingerprint(hconn)
            finally:
                inst.stop()
                inst.remove()
            diff = first_difference(p.fingerprint, got)
            if diff:
                failures.append(f"step {p.name} at {lsn}: {diff}")
    finally:
        store.close()
    assert not failures, "\n".join(failures)
