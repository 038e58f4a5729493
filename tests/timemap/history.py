"""A strata home built from a real primary through the ingest path, for tests.

What it is: `HistoryHome`, which imports a cleanly stopped primary the way
``strata up`` does (`bootstrap.import_history` at its shutdown checkpoint),
then, after the primary ran a workload and stopped again, ingests the WAL
written since (segment files, in order) through `WalIngest` into the same
store and time map, in one or more runs (a run ends as a daemon stop does:
advance, flush, close; the next resumes from durable_lsn).
`commit_lsns` reads every commit record's xid and LSN with pg_waldump, the
oracle no one here wrote.

Fed by: tests. Feeds: `strata timeline --home`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from strata.bootstrap import import_history
from strata.historical.source import DataDirSource
from strata.home import HomeLayout
from strata.ingest.transam import TransamIngest
from strata.ingest.walingest import WalIngest
from strata.key import Key
from strata.keyspace.cluster import ClusterState
from strata.lsn import Lsn
from strata.pagestore import PageStore
from strata.reconstruct.reconstruct import reconstruct_value
from strata.runtime.cluster import Cluster
from strata.runtime.osuser import run_as_server
from strata.timemap.timemap import TimeMap
from strata.wal.segments import iter_records

_COMMIT = re.compile(r"rmgr: Transaction .*tx:\s+(\d+), lsn: ([0-9A-F]+/[0-9A-F]+),.*desc: COMMIT ")


@dataclass
class HistoryHome:
    home: Path
    start_lsn: Lsn

    @classmethod
    def import_primary(cls, cluster: Cluster, home: Path) -> HistoryHome:
        """CHECKPOINT, stop `cluster` and import it as history's start, the way
        ``strata up`` does (the caller starts it again)."""
        cluster.sql("CHECKPOINT")
        cluster.stop()
        info = import_history(HomeLayout(home), DataDirSource(cluster.datadir), mode="embedded")
        return cls(home, info.start_lsn)

    def ingest(self, cluster: Cluster, *, until: Lsn | None = None) -> Lsn:
        """Ingest the WAL of the (stopped) `cluster` after what is durable, up
        to the record starting at `until` (exclusive; default: all). Returns
        the new durable LSN."""
        store, tm = _open(self.home)
        try:
            durable = Lsn(max(store.durable_lsn, self.start_lsn))
            state = store.get_page(Key.cluster(0), durable)
            assert state is not None
            ingest = WalIngest(store, tm, TransamIngest(ClusterState.from_bytes(state)),
                               start_lsn=durable)
            ingest.load_state(durable)
            for rec in iter_records(cluster.wal_dir(), durable, end=until):
                ingest.ingest(rec)
            ingest.advance()
            store.flush()
            return store.durable_lsn
        finally:
            store.close()
            tm.close()


def _open(home: Path) -> tuple[PageStore, TimeMap]:
    layout = HomeLayout(home)
    store = PageStore.open(layout.layers, reconstruct_value)
    return store, TimeMap.open(layout.timemap, durable_lsn=store.durable_lsn)


def commit_lsns(cluster: Cluster, start: Lsn) -> dict[int, Lsn]:
    """xid -> start LSN of its COMMIT record, from pg_waldump over the WAL
    after `start` (the cluster is stopped)."""
    cp = run_as_server([cluster.bins.path("pg_waldump"), "-p", str(cluster.wal_dir()),
                        "-s", str(start), "-r", "Transaction"], check=False)
    out = cp.stdout.decode() if isinstance(cp.stdout, bytes) else str(cp.stdout)
    return {int(m.group(1)): Lsn.parse(m.group(2))
            for m in (_COMMIT.search(line) for line in out.splitlines()) if m}
