"""`strata waldump` end to end: text, JSON and --stats from a directory, and the
streaming source giving the same records as the files."""

from __future__ import annotations

import json

import pytest

from strata.cli.main import main
from strata.lsn import Lsn
from strata.runtime.cluster import Cluster
from strata.wal.segments import iter_records
from tests.wal.conftest import WalRun
from tests.wal.oracle import run_pg_waldump

pytestmark = pytest.mark.pg


def test_stats_output_is_pg_waldump_stats_record(
        pgbench_wal: WalRun, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["waldump", "--path", str(pgbench_wal.wal_dir), "--start",
                 str(pgbench_wal.start), "--stats"]) == 0
    ours = capsys.readouterr().out
    theirs = run_pg_waldump(pgbench_wal.wal_dir, pgbench_wal.start, None,
                            "--stats=record").stdout
    assert ours == theirs
    assert "Heap/INSERT" in ours and "Transaction/COMMIT" in ours


def test_text_lines_carry_pg_waldump_fields_and_end_of_wal_goes_to_stderr(
        pglz_wal: WalRun, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["waldump", "--path", str(pglz_wal.wal_dir), "--start", str(pglz_wal.start),
                 "--end", str(pglz_wal.end)]) == 0
    out = capsys.readouterr()
    lines = out.out.splitlines()
    theirs = [ln for ln in run_pg_waldump(pglz_wal.wal_dir, pglz_wal.start).stdout.splitlines()
              if ln.startswith("rmgr: ")]
    assert len(lines) >= 1000
    for mine, pg in zip(lines, theirs, strict=False):
        assert pg.startswith(mine.split(", blkref")[0])
    assert any(" FPW" in ln for ln in lines)
    assert out.err == ""  # --end was reached before the end of WAL


def test_json_lines_have_the_documented_fields(
        pgbench_wal: WalRun, capsys: pytest.CaptureFixture[str]) -> None:
    start = pgbench_wal.start
    recs = []
    for r in iter_records(pgbench_wal.wal_dir, start):
        recs.append(r)
        if len(recs) == 2000:
            break
    end = recs[-1].lsn
    assert main(["waldump", "--path", str(pgbench_wal.wal_dir), "--start", str(start),
                 "--end", str(end), "--json"]) == 0
    objs = [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]
    assert len(objs) == 1999
    for o, r in zip(objs, recs, strict=False):
        assert Lsn.parse(o["lsn"]) == r.lsn and Lsn.parse(o["end_lsn"]) == r.end_lsn
        assert Lsn.parse(o["prev"]) == r.xl_prev
        assert (o["xid"], o["total_len"], o["main_len"]) == (r.xl_xid, r.xl_tot_len, r.main_len)
        assert len(o["blocks"]) == len(r.blocks)
        for ob, b in zip(o["blocks"], r.blocks, strict=True):
            assert set(ob) >= {"spc", "db", "rel", "fork", "blk", "has_image", "apply_image",
                               "will_init", "data_len"}
            assert (ob["spc"], ob["db"], ob["rel"], ob["blk"]) == (
                b.rlocator.spc, b.rlocator.db, b.rlocator.rel, b.blkno)
            assert ob["has_image"] == b.has_image and ob["data_len"] == len(b.data)
    assert {o["rmgr"] for o in objs} >= {"Heap", "Btree", "Transaction"}


def test_streamed_source_gives_the_same_records_as_the_files(
        fresh_primary: Cluster, capsys: pytest.CaptureFixture[str]) -> None:
    c = fresh_primary
    start = Lsn.parse(c.sql("SELECT pg_current_wal_insert_lsn()::text")[0][0])
    c.sql("CREATE TABLE s (a int PRIMARY KEY, b text)")
    c.sql("INSERT INTO s SELECT g, md5(g::text) FROM generate_series(1, 3000) g")
    c.sql("CHECKPOINT")
    c.sql("UPDATE s SET b = 'u' WHERE a % 3 = 0")
    end = Lsn.parse(c.sql("SELECT pg_current_wal_insert_lsn()::text")[0][0])
    assert main(["waldump", "--source", c.dsn(), "--start", str(start), "--end", str(end),
                 "--json"]) == 0
    streamed = capsys.readouterr().out
    assert main(["waldump", "--path", str(c.wal_dir()), "--start", str(start), "--end",
                 str(end), "--json"]) == 0
    from_files = capsys.readouterr().out
    assert streamed == from_files
    assert len(streamed.splitlines()) > 3000
    # the temporary slot is gone
    assert c.sql("SELECT count(*) FROM pg_replication_slots")[0][0] == 0
