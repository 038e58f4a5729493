"""State at intermediate LSNs against native PITR (the oracle for "at any LSN").

A clean copy of the baseline cluster recovers with ``recovery_target_lsn = X``
(inclusive, then promote, autovacuum off) from the workload's WAL and is
stopped cleanly: its pg_xact, pg_multixact, relation maps and pg_controldata
are then what PostgreSQL itself rebuilt at X. Our puts for the records up to
and including the one at X, applied to the imported baseline, must give the
same bytes and values. Targets: in the middle of the multixact phase (two
transactions still open), right after the commit whose 33,000 subxacts span
two pg_xact pages, and after the file-copy CREATE DATABASE.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from strata.ingest.cluster_state import cluster_state_from_pg_controldata, parse_pg_controldata
from strata.ingest.transam import import_baseline
from strata.key import Key, KeyKind, SlruKind
from strata.keyspace.cluster import ClusterState
from strata.lsn import Lsn
from strata.reconstruct.slru import apply_value
from strata.runtime.cluster import Cluster
from strata.wal.record import DecodedRecord
from strata.wal.segments import iter_records
from tests.conftest import _scratch, make_cluster
from tests.transam import workload

pytestmark = pytest.mark.pg


@dataclass
class History:
    base: Path
    backup: Path
    wal_dir: Path
    records: list[DecodedRecord]
    puts: list[list[tuple[Key, bytes]]]  # per record
    import_puts: list[tuple[Key, bytes]]
    states: list[ClusterState]  # after each record


@pytest.fixture(scope="module")
def history() -> Iterator[History]:
    base = _scratch("transam-pitr-")
    c = make_cluster(base / "primary")
    try:
        workload.prepare(c)
        c.sql("CHECKPOINT")
        c.stop()
        controldata = workload.pg_controldata(c)
        ckpt = Lsn.parse(parse_pg_controldata(controldata)["Latest checkpoint location"])
        backup = base / "backup"
        subprocess.run(["cp", "-a", str(c.datadir), str(backup)], check=True)
        ingest, import_puts = import_baseline(c.datadir, controldata)
        c.start()
        workload.run(c)
        c.stop()
        records = [r for r in iter_records(c.wal_dir(), ckpt) if r.lsn != ckpt]
        puts, states = [], []
        for r in records:
            puts.append(ingest.puts(r))
            assert ingest.cluster_state is not None
            states.append(ingest.cluster_state)
        yield History(base, backup, c.wal_dir(), records, puts, import_puts, states)
    finally:
        c.stop("immediate")
        shutil.rmtree(base, ignore_errors=True)


def _target(h: History, which: str) -> int:
    """Index of the record to stop after."""
    recs = h.records
    if which == "mid_multixact":
        creates = [i for i, r in enumerate(recs) if (r.xl_rmid, r.info) == (6, 0x20)]
        return creates[len(creates) // 2]
    if which == "big_subxact_commit":
        commits = [i for i, r in enumerate(recs) if r.xl_rmid == 1 and r.info & 0x70 == 0
                   and len(r.main_data) > 100_000]
        return commits[0]
    assert which == "after_file_copy_db"
    return next(i for i, r in enumerate(recs) if (r.xl_rmid, r.info) == (4, 0x00))


def _rebuild(h: History, upto: int) -> tuple[dict[tuple[SlruKind, int], bytes],
                                             dict[tuple[int, int], bytes]]:
    pages: dict[tuple[SlruKind, int], bytes] = {}
    relmaps: dict[tuple[int, int], bytes] = {}
    for key, value in h.import_puts + [p for ps in h.puts[:upto + 1] for p in ps]:
        if key.kind == KeyKind.SLRU_PAGE:
            pk = (SlruKind(key.rel), key.blk)
            page = apply_value(pages.get(pk), value)
            if page is None:
                pages.pop(pk, None)
            else:
                pages[pk] = page
        elif key.kind == KeyKind.RELMAP:
            if value:
                relmaps[(key.spc, key.db)] = value
            else:
                relmaps.pop((key.spc, key.db), None)
    return pages, relmaps


def _pitr(h: History, target: DecodedRecord, name: str) -> tuple[workload.Baseline, Cluster]:
    d = h.base / f"pitr-{name}"
    d.mkdir()
    d.chmod(0o755)
    datadir = d / "data"
    subprocess.run(["cp", "-a", str(h.backup), str(datadir)], check=True)
    for seg in h.wal_dir.iterdir():
        if seg.is_file() and len(seg.name) == 24:
            subprocess.run(["cp", "-a", str(seg), str(datadir / "pg_wal" / seg.name)], check=True)
    c = Cluster(datadir=datadir)
    c.configure({"recovery_target_lsn": f"'{target.lsn}'", "recovery_target_inclusive": "on",
                 "recovery_target_action": "promote", "restore_command": "'false'",
                 "autovacuum": "off"})
    (datadir / "recovery.signal").touch()
    subprocess.run(["chown", "--reference", str(datadir), str(datadir / "recovery.signal")],
                   check=True)
    try:
        c.start(timeout=120)  # returns once read-only connections are accepted
        deadline = time.monotonic() + 120
        while c.sql("SELECT pg_is_in_recovery()") != [(False,)]:  # wait for the promotion
            assert time.monotonic() < deadline, c.log_tail()
            time.sleep(0.1)
        c.stop()
    finally:
        c.stop("immediate")
    assert f"recovery stopping after WAL location (LSN) \"{target.lsn}\"" in c.log_tail(200)
    return workload.read_baseline(datadir, workload.pg_controldata(c)), c


@pytest.mark.parametrize("which", ["mid_multixact", "big_subxact_commit", "after_file_copy_db"])
def test_state_at_lsn_equals_native_pitr(history: History, which: str) -> None:
    i = _target(history, which)
    pitr, _ = _pitr(history, history.records[i], which)
    pages, relmaps = _rebuild(history, i)
    for kind in SlruKind:
        theirs = {p: v for (k, p), v in pitr.pages.items() if k == kind}
        ours = {p: v for (k, p), v in pages.items() if k == kind}
        assert set(ours) == set(theirs), kind.name
        for pageno, page in theirs.items():
            assert ours[pageno] == page, f"{kind.name} page {pageno} at {which}"
    assert relmaps == pitr.relmaps
    expect = cluster_state_from_pg_controldata(pitr.controldata)
    got = history.states[i]
    assert (got.next_full_xid, got.next_multi, got.next_multi_offset) == (
        expect.next_full_xid, expect.next_multi, expect.next_multi_offset)
    assert (got.oldest_xid, got.oldest_multi) == (expect.oldest_xid, expect.oldest_multi)
    assert got.next_oid >= expect.next_oid
