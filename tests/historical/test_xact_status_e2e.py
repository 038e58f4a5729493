"""A historical server keeps the commit status of a long history in memory.

A standby with data checksums (PostgreSQL 18's default) sets hint bits only in its
buffers and never writes them (no WAL in recovery), so every scan of a table whose
tuples were written in the history looks up every tuple's transaction in pg_xact
again. With PostgreSQL's default pg_xact buffers for our 32MB shared_buffers (16
pages, the status of 0.5M transactions), a history of more transactions than that
read in random order evicted pages on nearly every lookup: after 5 minutes of
pgbench a warm count(*) took 7-14 s instead of 0.1 s, each miss a read through the
file system. This test builds a history of 600k transactions (subtransactions, so
it is quick) whose tuples lie in random transaction order, and checks, with
PostgreSQL's own SLRU counters, that a second scan reads no pg_xact page.
"""

from __future__ import annotations

import os
import shutil

import pytest

from strata.historical.modes import make_factory
from strata.historical.reader import open_reader
from strata.lsn import Lsn
from tests.conftest import _scratch, make_cluster
from tests.store_import import import_stopped, ingest_through

ROWS = 600_000  # > 16 pg_xact pages of 32,768 transactions each


@pytest.mark.e2e
def test_a_second_scan_reads_no_pg_xact_page() -> None:
    root = _scratch("xact-")
    primary = make_cluster(root / "primary", autovacuum="off")
    try:
        imp = import_stopped(primary, root)
        with primary.connect() as conn:
            conn.autocommit = True
            conn.execute("CREATE TABLE spread (id int PRIMARY KEY, v int) WITH (fillfactor = 50)")
            conn.execute(f"INSERT INTO spread SELECT g, 0 FROM generate_series(1, {ROWS}) g")
            conn.execute("VACUUM FREEZE spread")
            # every row updated by its own subtransaction, in random order: HOT
            # updates on the same page, so the tuples of a page belong to
            # transactions spread over the whole history
            conn.execute(f"""DO $$ DECLARE i int; BEGIN
                FOR i IN SELECT g FROM generate_series(1, {ROWS}) g ORDER BY random() LOOP
                    BEGIN UPDATE spread SET v = 1 WHERE id = i;
                    EXCEPTION WHEN others THEN RAISE; END;
                END LOOP; END $$""")
            row = conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
            assert row is not None
            end = Lsn.parse(row[0])
        primary.stop()
        ingest_through(imp.ingest, primary.wal_dir(), imp.start, end)
        imp.store.close(flush=True)
        imp.timemap.close()
        reader = open_reader(root / "layers")
        mode = os.environ.get("STRATA_TEST_HISTORICAL", "auto")
        factory = make_factory(reader, root / "layers", mode=mode,
                               instances_root=root / "instances", workers=1)
        try:
            inst = factory(end, root / "instances" / "scan")
            try:
                def transaction_pages_read() -> int:
                    return int(inst.sql("SELECT blks_read FROM pg_stat_slru "
                                        "WHERE name = 'transaction'")[0][0])

                assert inst.sql("SELECT count(*), sum(v) FROM spread") == [(ROWS, ROWS)]
                first = transaction_pages_read()
                assert first >= ROWS // 32768  # the history's pages, read once
                assert inst.sql("SELECT count(*), sum(v) FROM spread") == [(ROWS, ROWS)]
                assert transaction_pages_read() == first
            finally:
                inst.remove()
        finally:
            factory.close()
            reader.close()
    finally:
        primary.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)
