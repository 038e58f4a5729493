"""SLRU truncation against the real server: CLOG TRUNCATE and MultiXact
TRUNCATE_ID remove whole segments, new segments start with ZEROPAGE /
ZERO_OFF_PAGE / ZERO_MEM_PAGE, and the oldest XID / multixact move.

To reach segment boundaries cheaply the cluster is first moved with
``pg_resetwal`` to just below them (next XID 1,048,000 < 1,048,576 = one
pg_xact segment; next multixact 65,000 < 65,536; next member offset 52,000 <
52,352), with zero-filled segment files as pg_resetwal's documentation asks.
Then a few hundred xids and multixacts cross the boundaries and VACUUM FREEZE
of every database (template0 included) lets the server truncate.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from strata.ingest.cluster_state import cluster_state_from_pg_controldata, parse_pg_controldata
from strata.ingest.transam import import_baseline
from strata.key import Key, KeyKind, SlruKind
from strata.keyspace.cluster import ClusterState
from strata.lsn import Lsn
from strata.pg.slru import SEGMENT_SIZE, SLRU_DIRS, segment_file_name
from strata.reconstruct.slru import apply_value
from strata.runtime.osuser import give_to_server_user, run_as_server
from strata.wal.record import DecodedRecord
from strata.wal.segments import iter_records
from tests.conftest import _scratch, make_cluster
from tests.transam import workload

pytestmark = pytest.mark.pg

N = 700


@dataclass
class Truncated:
    baseline: workload.Baseline
    final: workload.Baseline
    pages: dict[tuple[SlruKind, int], bytes]
    state: ClusterState
    records: list[DecodedRecord]
    before_ckpt: ClusterState


@pytest.fixture(scope="module")
def truncated() -> Iterator[Truncated]:
    base = _scratch("transam-trunc-")
    c = make_cluster(base / "primary")
    try:
        c.sql("CREATE TABLE m (id int PRIMARY KEY)")
        c.sql(f"INSERT INTO m SELECT generate_series(1, {N})")
        c.stop()
        run_as_server([c.bins.path("pg_resetwal"), "-x", "1048000", "-m", "65000,65000",
                       "-O", "52000", "-D", c.datadir])
        for sub in SLRU_DIRS.values():
            f = c.datadir / sub / segment_file_name(0)
            data = f.read_bytes() if f.exists() else b""
            f.write_bytes(data + bytes(SEGMENT_SIZE - len(data)))
            give_to_server_user(f, recursive=False, mode=0o600)
        c.start()
        c.stop()  # a clean shutdown checkpoint: the import baseline
        baseline = workload.read_baseline(c.datadir, workload.pg_controldata(c))
        ckpt = Lsn.parse(parse_pg_controldata(baseline.controldata)["Latest checkpoint location"])
        ingest, puts = import_baseline(c.datadir, baseline.controldata)
        c.start()
        c.sql("CREATE TABLE x (i int)")
        c.sql(f"""DO $$ BEGIN FOR i IN 1..{N} LOOP
                    BEGIN INSERT INTO x VALUES (i);
                    EXCEPTION WHEN raise_exception THEN NULL; END;
                  END LOOP; END $$""")
        with c.connect(autocommit=False) as a, c.connect(autocommit=False) as b:
            a.execute("SELECT id FROM m FOR SHARE")
            b.execute(f"""DO $$ BEGIN FOR i IN 1..{N} LOOP
                            BEGIN PERFORM 1 FROM m WHERE id = i FOR KEY SHARE;
                            EXCEPTION WHEN raise_exception THEN NULL; END;
                          END LOOP; END $$""")
            a.commit()
            b.commit()
        c.sql("ALTER DATABASE template0 ALLOW_CONNECTIONS true")
        for db in ("template0", "template1", "postgres"):
            with c.connect(db) as conn:
                conn.execute("SET vacuum_freeze_min_age = 0")
                conn.execute("SET vacuum_multixact_freeze_min_age = 0")
                conn.execute("VACUUM FREEZE")
        c.sql("ALTER DATABASE template0 ALLOW_CONNECTIONS false")
        c.stop()
        final = workload.read_baseline(c.datadir, workload.pg_controldata(c))

        pages: dict[tuple[SlruKind, int], bytes] = {}
        records = [r for r in iter_records(c.wal_dir(), ckpt) if r.lsn != ckpt]
        all_puts = list(puts)
        for r in records:
            if r is records[-1]:  # the final shutdown checkpoint
                before_ckpt = ingest.cluster_state
            all_puts += ingest.puts(r)
        for key, value in all_puts:
            if key.kind == KeyKind.SLRU_PAGE:
                pk = (SlruKind(key.rel), key.blk)
                page = apply_value(pages.get(pk), value)
                if page is None:
                    pages.pop(pk, None)
                else:
                    pages[pk] = page
        state = ingest.cluster_state
        assert state is not None
        assert before_ckpt is not None
        yield Truncated(baseline, final, pages, state, records, before_ckpt)
    finally:
        c.stop("immediate")
        shutil.rmtree(base, ignore_errors=True)


def test_server_truncated_and_started_new_segments(truncated: Truncated) -> None:
    types = {(r.xl_rmid, r.info) for r in truncated.records}
    assert {(3, 0x00), (3, 0x10), (6, 0x00), (6, 0x10), (6, 0x30)} <= types
    assert all(p >= 32 for _, p in truncated.final.pages)  # segment 0000 is gone everywhere
    assert {k for k, p in truncated.baseline.pages if p < 32} == set(SlruKind)


@pytest.mark.parametrize("kind", list(SlruKind))
def test_rebuilt_pages_after_truncation_equal_the_primary(truncated: Truncated, kind: SlruKind) -> None:
    primary = {p: v for (k, p), v in truncated.final.pages.items() if k == kind}
    ours = {p: v for (k, p), v in truncated.pages.items() if k == kind}
    assert set(ours) == set(primary) and primary
    for pageno, page in primary.items():
        assert ours[pageno] == page, f"{kind.name} page {pageno}"


def test_oldest_xid_and_multixact_follow_the_truncation(truncated: Truncated) -> None:
    expect = cluster_state_from_pg_controldata(truncated.final.controldata)
    got = truncated.state
    assert (got.oldest_xid, got.oldest_xid_db) == (expect.oldest_xid, expect.oldest_xid_db)
    assert (got.oldest_multi, got.oldest_multi_db) == (expect.oldest_multi, expect.oldest_multi_db)
    assert (got.next_full_xid, got.next_multi, got.next_multi_offset) == (
        expect.next_full_xid, expect.next_multi, expect.next_multi_offset)
    assert expect.oldest_xid > 1_048_576 and expect.oldest_multi > 65_536
    assert Key.cluster(0).kind == KeyKind.CLUSTER


def test_multixact_truncation_record_alone_moves_the_oldest_multixact(truncated: Truncated) -> None:
    expect = cluster_state_from_pg_controldata(truncated.final.controldata)
    got = truncated.before_ckpt  # without the final checkpoint's help
    assert (got.oldest_multi, got.oldest_multi_db) == (expect.oldest_multi, expect.oldest_multi_db)
    assert (got.next_full_xid, got.next_multi, got.next_multi_offset) == (
        expect.next_full_xid, expect.next_multi, expect.next_multi_offset)
