"""The proof: pg_xact, pg_multixact, relation maps and control values rebuilt
from an import baseline plus WAL equal what the stopped primary wrote.

Flow: primary with a table -> CHECKPOINT, clean stop -> copy pg_xact,
pg_multixact and every pg_filenode.map (the expected baseline), note the
checkpoint, and `import_baseline` the stopped cluster -> start, run the
workload (tests/transam/workload.py) -> clean stop -> replay the WAL after the
baseline checkpoint through `TransamIngest`, applying every put with
`apply_value` -> compare with the primary's files and pg_controldata.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass, replace

import pytest

from strata.historical.instance import pg_resetwal_args
from strata.ingest.cluster_state import cluster_state_from_pg_controldata, parse_pg_controldata
from strata.ingest.transam import import_baseline
from strata.key import Key, KeyKind, SlruKind
from strata.keyspace.cluster import ClusterState
from strata.lsn import Lsn
from strata.pg.constants import GLOBALTABLESPACE_OID
from strata.pg.slru import XidStatus, clog_get_status, clog_page
from strata.pg.xlogfile import segment_file_name
from strata.reconstruct.slru import apply_value
from strata.runtime.cluster import Cluster
from strata.runtime.osuser import run_as_server
from strata.wal.record import DecodedRecord
from strata.wal.rmgr import xact
from strata.wal.segments import iter_records
from tests.conftest import _scratch, make_cluster
from tests.transam import workload

pytestmark = pytest.mark.pg

RM_XLOG_ID = 0
XLOG_CHECKPOINT_SHUTDOWN = 0x00


@dataclass
class Rebuilt:
    baseline: workload.Baseline
    final: workload.Baseline
    pages: dict[tuple[SlruKind, int], bytes]
    relmaps: dict[tuple[int, int], bytes]
    state: ClusterState
    state_before_shutdown_ckpt: ClusterState
    records: list[DecodedRecord]
    puts_by_kind: dict[int, int]
    wal_files: list[str]
    cluster: Cluster


@pytest.fixture(scope="module")
def rebuilt() -> Iterator[Rebuilt]:
    base = _scratch("transam-")
    cluster = make_cluster(base / "primary")
    try:
        workload.prepare(cluster)
        cluster.sql("CHECKPOINT")
        cluster.stop()
        baseline = workload.read_baseline(cluster.datadir, workload.pg_controldata(cluster))
        ckpt_lsn = Lsn.parse(parse_pg_controldata(baseline.controldata)["Latest checkpoint location"])
        ingest, import_puts = import_baseline(cluster.datadir, baseline.controldata)
        cluster.start()
        workload.run(cluster)
        cluster.stop()
        final = workload.read_baseline(cluster.datadir, workload.pg_controldata(cluster))
        final_ckpt = Lsn.parse(parse_pg_controldata(final.controldata)["Latest checkpoint location"])

        records = list(iter_records(cluster.wal_dir(), ckpt_lsn))
        assert records[0].lsn == ckpt_lsn and records[-1].lsn == final_ckpt
        assert (records[0].xl_rmid, records[0].info) == (RM_XLOG_ID, XLOG_CHECKPOINT_SHUTDOWN)
        records = records[1:]  # the baseline is the state at the end of its checkpoint
        pages: dict[tuple[SlruKind, int], bytes] = {}
        relmaps: dict[tuple[int, int], bytes] = {}
        _apply(import_puts, pages, relmaps)
        assert pages == baseline.pages and relmaps == baseline.relmaps
        before_shutdown: ClusterState | None = None
        puts_by_kind: dict[int, int] = {}
        for rec in records:
            if rec.lsn == final_ckpt:
                assert rec.xl_rmid == RM_XLOG_ID and rec.info == XLOG_CHECKPOINT_SHUTDOWN
                before_shutdown = ingest.cluster_state
            puts = ingest.puts(rec)
            for key, _ in puts:
                puts_by_kind[key.kind] = puts_by_kind.get(key.kind, 0) + 1
            _apply(puts, pages, relmaps)
            if any(k.kind == KeyKind.CLUSTER for k, _ in puts):
                assert ClusterState.from_bytes(dict(puts)[Key.cluster(0)]) == ingest.cluster_state
        state = ingest.cluster_state
        assert state is not None and before_shutdown is not None
        wal_files = sorted(p.name for p in cluster.wal_dir().iterdir() if len(p.name) == 24)
        yield Rebuilt(baseline, final, pages, relmaps, state, before_shutdown, records,
                      puts_by_kind, wal_files, cluster)
    finally:
        cluster.stop("immediate")
        shutil.rmtree(base, ignore_errors=True)


def _apply(puts: list[tuple[Key, bytes]], pages: dict[tuple[SlruKind, int], bytes],
           relmaps: dict[tuple[int, int], bytes]) -> None:
    """What a store plus reconstruct would do with the puts, in order."""
    for key, value in puts:
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
        else:
            assert key == Key.cluster(0)


def _record_types(r: Rebuilt) -> set[tuple[int, int]]:
    return {(rec.xl_rmid, rec.info & 0x70 if rec.xl_rmid == 1 else rec.info) for rec in r.records}


def test_workload_produced_the_record_types_under_test(rebuilt: Rebuilt) -> None:
    types = _record_types(rebuilt)
    for needed, name in [((1, 0x00), "COMMIT"), ((1, 0x20), "ABORT"), ((1, 0x10), "PREPARE"),
                         ((1, 0x30), "COMMIT_PREPARED"), ((1, 0x40), "ABORT_PREPARED"),
                         ((1, 0x50), "ASSIGNMENT"), ((3, 0x00), "CLOG ZEROPAGE"),
                         ((6, 0x00), "ZERO_OFF_PAGE"), ((6, 0x10), "ZERO_MEM_PAGE"),
                         ((6, 0x20), "CREATE_ID"), ((7, 0x00), "RELMAP UPDATE"),
                         ((4, 0x00), "CREATE_FILE_COPY"), ((4, 0x10), "CREATE_WAL_LOG"),
                         ((4, 0x20), "DBASE DROP"), ((8, 0x10), "RUNNING_XACTS")]:
        assert needed in types, f"workload wrote no {name} record"


def test_pg_xact_pages_equal_the_stopped_primary(rebuilt: Rebuilt) -> None:
    primary = {p: v for (k, p), v in rebuilt.final.pages.items() if k == SlruKind.XACT}
    ours = {p: v for (k, p), v in rebuilt.pages.items() if k == SlruKind.XACT}
    assert len(primary) >= 2, "the workload should reach a second pg_xact page"
    assert set(ours) == set(primary)
    for pageno in sorted(primary):
        assert ours[pageno] == primary[pageno], f"pg_xact page {pageno} differs"
    # and the rebuilt pages actually changed since the baseline
    assert any(ours[p] != rebuilt.baseline.pages.get((SlruKind.XACT, p)) for p in ours)


def test_prepared_transactions_read_as_their_outcome_or_in_progress(rebuilt: Rebuilt) -> None:
    gids = {}
    for r in rebuilt.records:
        if r.xl_rmid == 1 and r.info & 0x70 == xact.XLOG_XACT_PREPARE:
            rec = xact.parse(r)
            assert isinstance(rec, xact.XactPrepare)
            gids[rec.gid] = rec
    assert set(gids) == {"p_commit", "p_rollback", "p_open"}
    for gid, expect in (("p_commit", XidStatus.COMMITTED),
                        ("p_rollback", XidStatus.ABORTED),
                        ("p_open", XidStatus.IN_PROGRESS)):
        for x in (gids[gid].xid, *gids[gid].subxacts):
            page = rebuilt.pages[(SlruKind.XACT, clog_page(x))]
            assert clog_get_status(page, x) == expect, gid
        assert gids[gid].subxacts, "each prepared transaction had a subtransaction with an xid"


def test_multixact_offsets_and_members_equal_the_stopped_primary(rebuilt: Rebuilt) -> None:
    for kind in (SlruKind.MULTIXACT_OFFSETS, SlruKind.MULTIXACT_MEMBERS):
        primary = {p: v for (k, p), v in rebuilt.final.pages.items() if k == kind}
        ours = {p: v for (k, p), v in rebuilt.pages.items() if k == kind}
        assert len(primary) >= 2, f"the workload should reach a second {kind.name} page"
        assert set(ours) == set(primary)
        for pageno in sorted(primary):
            assert ours[pageno] == primary[pageno], f"{kind.name} page {pageno} differs"


def test_relation_maps_equal_the_stopped_primary(rebuilt: Rebuilt) -> None:
    assert rebuilt.relmaps == rebuilt.final.relmaps
    changed = [k for k, v in rebuilt.final.relmaps.items() if rebuilt.baseline.relmaps.get(k) != v]
    assert (GLOBALTABLESPACE_OID, 0) in changed  # VACUUM FULL pg_database
    assert len(changed) >= 4  # + postgres's map and the new databases


def test_cluster_state_equals_pg_controldata(rebuilt: Rebuilt) -> None:
    expect = cluster_state_from_pg_controldata(rebuilt.final.controldata)
    got = rebuilt.state
    assert replace(got, lsn=expect.lsn) == expect


def test_cluster_state_tracked_up_to_shutdown_checkpoint_matches_it(rebuilt: Rebuilt) -> None:
    """Without the final checkpoint's help: the values tracked from the records
    before it must equal what that checkpoint states (next OID: not below)."""
    expect = cluster_state_from_pg_controldata(rebuilt.final.controldata)
    got = rebuilt.state_before_shutdown_ckpt
    assert got.next_full_xid == expect.next_full_xid
    assert got.next_multi == expect.next_multi
    assert got.next_multi_offset == expect.next_multi_offset
    assert got.oldest_xid == expect.oldest_xid
    assert got.oldest_multi == expect.oldest_multi
    assert got.next_oid >= expect.next_oid
    start = cluster_state_from_pg_controldata(rebuilt.baseline.controldata)
    assert got.next_xid - start.next_xid > workload.N_SUBXACTS  # it really moved
    assert got.next_multi - start.next_multi > workload.N_ROWS


def _resetwal_args(s: ClusterState) -> list[str]:
    """What a historical instance passes to pg_resetwal for state `s`."""
    nxt = segment_file_name(s.timeline, int(s.lsn) // s.wal_segment_size + 1, s.wal_segment_size)
    return [*pg_resetwal_args(s), "-l", nxt]


def test_pg_resetwal_args_carry_the_rebuilt_values(rebuilt: Rebuilt) -> None:
    s = rebuilt.state
    args = _resetwal_args(s)
    assert args[args.index("-x") + 1] == str(s.next_xid)
    assert args[args.index("-e") + 1] == str(s.next_xid_epoch)
    assert args[args.index("-u") + 1] == str(s.oldest_xid)
    assert args[args.index("-m") + 1] == f"{s.next_multi},{s.oldest_multi}"
    assert args[args.index("-O") + 1] == str(s.next_multi_offset)
    assert args[args.index("-o") + 1] == str(s.next_oid)
    walfile = args[args.index("-l") + 1]
    last = segment_file_name(s.timeline, int(rebuilt.records[-1].end_lsn) // s.wal_segment_size,
                         s.wal_segment_size)
    assert last in rebuilt.wal_files
    assert walfile > last and walfile[:8] == last[:8]


def test_pg_resetwal_dry_run_accepts_the_args_and_would_set_our_values(rebuilt: Rebuilt) -> None:
    s = rebuilt.state
    args = _resetwal_args(s)
    cp = run_as_server([rebuilt.cluster.bins.path("pg_resetwal"), "-n", *args,
                        "-D", rebuilt.cluster.datadir], check=False)
    out = cp.stdout.decode() if isinstance(cp.stdout, bytes) else str(cp.stdout)
    assert cp.returncode == 0, cp.stderr
    changed = parse_pg_controldata(out.split("Values to be changed:")[1])
    assert changed["NextXID"] == str(s.next_xid)
    assert changed["NextXID epoch"] == str(s.next_xid_epoch)
    assert changed["OldestXID"] == str(s.oldest_xid)
    assert changed["NextMultiXactId"] == str(s.next_multi)
    assert changed["OldestMultiXid"] == str(s.oldest_multi)
    assert changed["NextMultiOffset"] == str(s.next_multi_offset)
    assert changed["NextOID"] == str(s.next_oid)
    # pg_resetwal moves past WAL segments still in pg_wal (here: preallocated ones)
    assert changed["First log segment after reset"] >= args[args.index("-l") + 1]
