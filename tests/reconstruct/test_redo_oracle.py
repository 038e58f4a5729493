"""Our redo against PostgreSQL's own pages (wal_consistency_checking = 'all').

Every block reference of every Heap/Heap2/Btree/Sequence/Generic record in
these workloads carries the server's page after the change; our redo of the
record, from the block's previous state, must equal it after masking. The
bar is zero mismatches, zero redo errors, and no unsupported record (every
index access method of 18.6 has redo).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable

import pytest

from strata.reconstruct import reconstruct
from strata.reconstruct.check import CheckReport, ConsistencyChecker, check_wal_dir
from strata.reconstruct.redo import RM_HEAP2_ID, RM_HEAP_ID, VISIBILITYMAP_FORKNUM
from strata.runtime.cluster import Cluster
from strata.wal.rmgr import XLOG_HEAP_LOCK
from strata.wal.rmgr import heap2 as h2
from strata.wal.segments import iter_records
from tests.e2e.workload import HISTORY_SQL

from .conftest import WalCapture, Workload, run_pgbench, run_sql

pytestmark = pytest.mark.pg


_db_counter = itertools.count()


def oracle(cap: WalCapture, allowed_unsupported: Iterable[str] = ()) -> CheckReport:
    """Check the capture twice; return the report of the first pass.

    Both passes are stricter than PostgreSQL's own check: VM bits of the touched
    heap blocks, and the WAL-logged t_infomask bits that heap_mask hides, are
    compared too. The first pass bases each record on the server's previous
    verification image (pinpoints the record at fault); the second chains our
    own redo results from each apply-image on, as GetPage@LSN does, so an error
    that only shows records later would be caught there; it redoes each block
    as the page store does (`stored`: through `reconstruct_value`, so heap and
    heap2 records go through the compiled chain where it is built).
    """
    args = (str(cap.wal_dir), cap.start, cap.end)
    chained = check_wal_dir(*args, strict_vm=True, strict_heap=True, chain=True, stored=True)
    assert_clean(chained, allowed_unsupported=allowed_unsupported)
    assert chained.total("blocks_checked") == chained.total("matches") + chained.total("upstream")
    return check_wal_dir(*args, strict_vm=True, strict_heap=True)


def assert_clean(rep: CheckReport, *, allowed_unsupported: Iterable[str] = (),
                 must_check: Iterable[str] = ()) -> None:
    """Zero mismatches/errors; only allowed rmgrs unsupported; listed types checked."""
    detail = "\n" + rep.format_table()
    if rep.first_mismatch is not None:
        detail += "\n" + rep.first_mismatch.describe()
    if rep.first_error is not None:
        detail += "\n" + rep.first_error.describe()
    assert rep.consistency_records > 0, detail
    assert rep.mismatches == 0, detail
    assert rep.errors == 0, detail
    assert rep.unsupported_rmgrs() <= set(allowed_unsupported), detail
    checked = {f"{rm}/{rt}" for (rm, rt), s in rep.stats.items() if s.matches > 0}
    missing = set(must_check) - checked
    assert not missing, f"never checked: {sorted(missing)}" + detail


def chain_equals_reference(cap: WalCapture, monkeypatch: pytest.MonkeyPatch,
                           fork: int | None = None, op: tuple[int, int] | None = None) -> int:
    """Replay the capture as the page store does, once through the compiled chain
    (`_pagec.redo_chain`) and once through the Python redo (its reference): every
    block's every state must be the same bytes. Returns: how many records the
    compiled chain applied itself (the rest fell back to Python), on pages of
    `fork` only when it is given, and of records of `op` (rmid, info & 0x70) only
    when that is given."""
    if reconstruct.compiled_chain is None:
        pytest.fail("the compiled page operations are not built (python setup.py build_ext --inplace)")
    compiled = reconstruct.compiled_chain
    applied = 0

    def counted(page: bytearray, deltas: list[bytes], lsns: list[int], start: int,
                *key: int) -> int:
        nonlocal applied
        i = int(compiled(page, deltas, lsns, start, *key))
        if fork is None or key[3] == fork:
            # a stored record delta: 16 bytes of LSNs, then the record (xl_info at
            # 16, xl_rmid at 17 of it)
            applied += sum(1 for d in deltas[start:i]
                           if op is None or (d[33], d[32] & 0x70) == op)
        return i

    def states(chain: object) -> list[tuple[object, bytes]]:
        monkeypatch.setattr(reconstruct, "compiled_chain", chain)
        checker = ConsistencyChecker(chain=True, stored=True)
        out: list[tuple[object, bytes]] = []
        for rec in iter_records(str(cap.wal_dir), cap.start, cap.end):
            checker.feed(rec)
            out.extend((k, checker.state[k]) for b in rec.blocks
                       if (k := (b.rlocator, b.fork, b.blkno)) in checker.state)
        return out

    ours, reference = states(counted), states(None)
    monkeypatch.setattr(reconstruct, "compiled_chain", compiled)
    assert len(ours) == len(reference) > 0
    bad = next((i for i, (a, b) in enumerate(zip(ours, reference, strict=True)) if a != b), None)
    assert bad is None, f"state {bad} of {len(ours)} differs: block {ours[bad][0]}"
    return applied


def in_new_db(body: Callable[[Cluster, str], None]) -> Workload:
    """A workload that runs `body(cluster, dbname)` in a database of its own."""

    def run(c: Cluster) -> None:
        db = f"redo_{next(_db_counter)}"
        c.sql(f"CREATE DATABASE {db}")
        body(c, db)

    return run


@pytest.mark.parametrize("impl", ["compiled", "python"])
def test_heap_dml_records_match_server_pages(wcc_capture: Callable[[Workload], WalCapture],
                                             impl: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both heap UPDATE redos (the compiled `_pagec.heap_update` and its Python
    reference) equal the server's pages; the compiled one took every UPDATE block
    itself (no fallback to the reference)."""
    from strata.reconstruct.redo import heap as heap_redo

    calls = {"compiled": 0, "python": 0}
    compiled, python = heap_redo._compiled_update, heap_redo._update_python
    if impl == "compiled":
        if compiled is None:
            pytest.fail("the compiled page operations are not built (python setup.py build_ext --inplace)")

        def counted(*args: object) -> bool:
            done = bool(compiled(*args))
            calls["compiled"] += done
            return done

        monkeypatch.setattr(heap_redo, "_compiled_update", counted)
    else:
        monkeypatch.setattr(heap_redo, "_compiled_update", None)

    def counted_python(*args: object) -> None:
        calls["python"] += 1
        python(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(heap_redo, "_update_python", counted_python)

    def body(c: Cluster, db: str) -> None:
        run_sql(c, """
            CREATE TABLE t (a int PRIMARY KEY, b text, c int);
            INSERT INTO t SELECT g, repeat('x', g % 50), g FROM generate_series(1, 3000) g;
            UPDATE t SET c = c + 1 WHERE a % 3 = 0;               -- HOT
            UPDATE t SET b = b || repeat('y', 40) WHERE a % 5 = 0; -- prefix/suffix, new pages
            UPDATE t SET a = a + 100000 WHERE a % 7 = 0;          -- non-HOT (key change)
            DELETE FROM t WHERE a % 11 = 0;
            SELECT count(*) FROM t;                                -- prune on access
            INSERT INTO t VALUES (1000000, 'conflict', 1) ON CONFLICT (a) DO NOTHING;
            INSERT INTO t VALUES (1000001, 'spec', 1) ON CONFLICT (a) DO UPDATE SET c = 0;
            INSERT INTO t VALUES (1000001, 'spec', 1) ON CONFLICT (a) DO UPDATE SET c = 7;
            ANALYZE t;                                             -- inplace update of pg_class
        """, dbname=db)

    if impl == "python":  # the stored pass below would take the compiled chain
        monkeypatch.setattr(reconstruct, "compiled_chain", None)
    cap = wcc_capture(in_new_db(body))
    rep = oracle(cap)
    assert_clean(rep, must_check=[
        "Heap/INSERT", "Heap/INSERT+INIT", "Heap/HOT_UPDATE", "Heap/UPDATE", "Heap/DELETE",
        "Heap/HEAP_CONFIRM", "Heap/INPLACE", "Heap2/PRUNE_ON_ACCESS"])
    if impl == "compiled":
        assert calls["compiled"] > 1000 and calls["python"] == 0, calls
        assert chain_equals_reference(cap, monkeypatch) > 5000
    else:
        assert calls["python"] > 1000 and calls["compiled"] == 0, calls


def test_vacuum_freeze_full_and_cluster_match(wcc_capture: Callable[[Workload], WalCapture],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    def body(c: Cluster, db: str) -> None:
        run_sql(c, """
            CREATE TABLE v (a int PRIMARY KEY, b text);
            INSERT INTO v SELECT g, md5(g::text) FROM generate_series(1, 5000) g;
            DELETE FROM v WHERE a % 4 = 0;
            UPDATE v SET b = b || 'u' WHERE a % 5 = 0;
            VACUUM v;
            VACUUM (FREEZE) v;
            UPDATE v SET b = 'after-freeze' WHERE a % 13 = 0;      -- clears all-visible
            DELETE FROM v WHERE a % 17 = 0;
            VACUUM v;
            VACUUM FULL v;
            CLUSTER v USING v_pkey;
            VACUUM (FREEZE) v;
        """, dbname=db)

    cap = wcc_capture(in_new_db(body))
    rep = oracle(cap)
    assert_clean(rep, must_check=[
        "Heap2/PRUNE_VACUUM_SCAN", "Heap2/PRUNE_VACUUM_CLEANUP", "Heap2/VISIBLE",
        "Heap/UPDATE", "Heap/DELETE"])
    # the checked prune records include freeze plans, redirects and truncation-only cleanup
    flags = [h2.XlHeapPrune.parse(r.main_data).flags
             for r in iter_records(cap.wal_dir, cap.start, cap.end)
             if r.xl_rmid == RM_HEAP2_ID and r.info & 0x70 in (0x10, 0x20, 0x30)]
    assert any(f & h2.XLHP_HAS_FREEZE_PLANS for f in flags)
    assert any(f & h2.XLHP_HAS_REDIRECTIONS for f in flags)
    assert any(not f & h2.XLHP_CLEANUP_LOCK and f & h2.XLHP_HAS_NOW_UNUSED_ITEMS for f in flags)
    assert chain_equals_reference(cap, monkeypatch) > 1000
    # visibility-map pages too: VISIBLE's sets and the UPDATE/DELETE clears after them
    assert chain_equals_reference(cap, monkeypatch, fork=VISIBILITYMAP_FORKNUM) > 20


def test_copy_and_copy_freeze_multi_insert_match(wcc_capture: Callable[[Workload], WalCapture],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """COPY's MULTI_INSERT (into fresh pages, into a page with rows, FREEZE) equals the
    server's pages, and every one of those records went through the compiled chain
    (a bulk load's pages are rebuilt in C, not in Python), equal to the reference."""
    def body(c: Cluster, db: str) -> None:
        rows = "".join(f"{i}\tline {i} {'z' * (i % 30)}\n" for i in range(1, 4001))
        with c.connect(db) as conn:
            conn.execute("CREATE TABLE cp (a int, b text)")
            with conn.cursor().copy("COPY cp FROM STDIN") as cp:
                cp.write(rows)
            conn.execute("INSERT INTO cp VALUES (0, 'single')")
            with conn.cursor().copy("COPY cp FROM STDIN") as cp:  # into non-empty pages
                cp.write(rows[:2000])
            with conn.transaction():
                conn.execute("CREATE TABLE cpf (a int, b text)")
                with conn.cursor().copy("COPY cpf FROM STDIN (FREEZE)") as cp:
                    cp.write(rows)
            conn.execute("UPDATE cpf SET b = 'x' WHERE a % 100 = 0")

    cap = wcc_capture(in_new_db(body))
    rep = oracle(cap)
    assert_clean(rep, must_check=["Heap2/MULTI_INSERT", "Heap2/MULTI_INSERT+INIT"])
    multi = (RM_HEAP2_ID, h2.XLOG_HEAP2_MULTI_INSERT)
    records = [r for r in iter_records(str(cap.wal_dir), cap.start, cap.end)
               if (r.xl_rmid, r.info & 0x70) == multi]
    assert any(not r.info & h2.XLOG_HEAP_INIT_PAGE for r in records)
    assert chain_equals_reference(cap, monkeypatch, fork=0, op=multi) >= len(records) > 50


def test_row_locks_from_several_sessions_match(wcc_capture: Callable[[Workload], WalCapture],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    def body(c: Cluster, db: str) -> None:
        run_sql(c, """
            CREATE TABLE lk (a int PRIMARY KEY, b text);
            INSERT INTO lk SELECT g, 'v' || g FROM generate_series(1, 500) g;
            VACUUM (FREEZE) lk;   -- all-frozen: locking clears the VM all-frozen bit
        """, dbname=db)
        with c.connect(db, autocommit=False) as s1, c.connect(db, autocommit=False) as s2:
            s1.execute("SELECT * FROM lk WHERE a <= 50 FOR SHARE")
            s2.execute("SELECT * FROM lk WHERE a <= 50 FOR SHARE")       # multixact
            s2.execute("SELECT * FROM lk WHERE a BETWEEN 51 AND 60 FOR KEY SHARE")
            s1.commit()
            s2.commit()
            s1.execute("UPDATE lk SET b = 'upd' WHERE a BETWEEN 100 AND 110")  # non-key
            s2.execute("SELECT * FROM lk WHERE a BETWEEN 100 AND 110 FOR KEY SHARE")
            s1.commit()
            s2.commit()
            s1.execute("SELECT * FROM lk WHERE a BETWEEN 200 AND 220 FOR UPDATE")
            s1.execute("SELECT * FROM lk WHERE a BETWEEN 221 AND 230 FOR NO KEY UPDATE")
            s1.rollback()

    cap = wcc_capture(in_new_db(body))
    rep = oracle(cap)
    assert_clean(rep, must_check=["Heap/LOCK", "Heap2/LOCK_UPDATED"])
    # the all-frozen bits LOCK clears on the VM page, through the compiled chain
    assert chain_equals_reference(cap, monkeypatch, fork=VISIBILITYMAP_FORKNUM) > 0
    # and the locked tuples on the heap pages (`_pagec_heap.c` heap_lock)
    assert chain_equals_reference(cap, monkeypatch, fork=0,  # main
                                  op=(RM_HEAP_ID, XLOG_HEAP_LOCK)) > 0


def test_subtransactions_and_prepared_transactions_match(
        wcc_capture: Callable[[Workload], WalCapture]) -> None:
    def body(c: Cluster, db: str) -> None:
        run_sql(c, """
            CREATE TABLE sx (a int, b text);
            BEGIN;
            INSERT INTO sx VALUES (1, 'top');
            SAVEPOINT s1; INSERT INTO sx VALUES (2, 'rolled back'); ROLLBACK TO SAVEPOINT s1;
            SAVEPOINT s2; INSERT INTO sx VALUES (3, 'kept'); UPDATE sx SET b = 'u' WHERE a = 1;
            RELEASE SAVEPOINT s2;
            COMMIT;
            DO $$ BEGIN FOR i IN 1..200 LOOP
              BEGIN INSERT INTO sx VALUES (i, 'exc'); IF i % 3 = 0 THEN RAISE EXCEPTION 'x'; END IF;
              EXCEPTION WHEN OTHERS THEN NULL; END;
            END LOOP; END $$;
            BEGIN; INSERT INTO sx VALUES (10, 'prepared'); DELETE FROM sx WHERE a = 3;
            PREPARE TRANSACTION 'p1';
            COMMIT PREPARED 'p1';
            BEGIN; UPDATE sx SET b = 'prep-rb' WHERE a < 50; PREPARE TRANSACTION 'p2';
            ROLLBACK PREPARED 'p2';
            SELECT count(*) FROM sx;
        """, dbname=db)

    rep = oracle(wcc_capture(in_new_db(body)))
    assert_clean(rep, must_check=["Heap/INSERT", "Heap/HOT_UPDATE", "Heap/DELETE"])


def test_sequences_generic_bloom_and_partition_moves_match(
        wcc_capture: Callable[[Workload], WalCapture]) -> None:
    def body(c: Cluster, db: str) -> None:
        run_sql(c, """
            CREATE SEQUENCE s1 START 100 INCREMENT 7;
            SELECT nextval('s1') FROM generate_series(1, 80);
            SELECT setval('s1', 5);
            CREATE TABLE ident (id int GENERATED ALWAYS AS IDENTITY, v text);
            INSERT INTO ident (v) SELECT 'v' || g FROM generate_series(1, 100) g;
            CREATE EXTENSION bloom;
            CREATE TABLE bl (a int, b int, c text);
            INSERT INTO bl SELECT g, g % 17, 'c' || g FROM generate_series(1, 2000) g;
            CREATE INDEX bl_idx ON bl USING bloom (a, b);
            INSERT INTO bl SELECT g, g % 5, 'd' || g FROM generate_series(1, 500) g;
            VACUUM bl;
            CREATE TABLE ev (id int, part int) PARTITION BY LIST (part);
            CREATE TABLE ev1 PARTITION OF ev FOR VALUES IN (1);
            CREATE TABLE ev2 PARTITION OF ev FOR VALUES IN (2);
            INSERT INTO ev SELECT g, 1 FROM generate_series(1, 300) g;
            UPDATE ev SET part = 2 WHERE id % 4 = 0;   -- cross-partition: delete with move flag
        """, dbname=db)

    rep = oracle(wcc_capture(in_new_db(body)))
    assert_clean(rep, must_check=["Sequence/LOG", "Generic/Generic", "Heap/DELETE"])


def test_create_database_both_strategies_match(wcc_capture: Callable[[Workload], WalCapture]) -> None:
    def body(c: Cluster) -> None:
        c.sql("CREATE DATABASE redo_wal_log STRATEGY wal_log")
        c.sql("CREATE DATABASE redo_file_copy STRATEGY file_copy")
        run_sql(c, "CREATE TABLE d (a int); INSERT INTO d SELECT generate_series(1, 300);",
                dbname="redo_wal_log")
        run_sql(c, "CREATE TABLE d (a int); INSERT INTO d SELECT generate_series(1, 300);",
                dbname="redo_file_copy")

    rep = oracle(wcc_capture(body))
    assert_clean(rep, must_check=["Heap/INSERT"])
    assert rep.stats[("XLOG", "FPI")].images > 0  # wal_log copies pages as FPIs


def test_history_workload_matches_with_every_index_am(
        wcc_capture: Callable[[Workload], WalCapture]) -> None:
    sql = HISTORY_SQL.read_text()
    rep = oracle(wcc_capture(in_new_db(lambda c, db: run_sql(c, sql, dbname=db))))
    assert_clean(rep, must_check=[
        "Heap/INSERT", "Heap/HOT_UPDATE", "Heap/UPDATE", "Heap/DELETE",
        "Heap2/MULTI_INSERT+INIT", "Sequence/LOG", "Btree/INSERT_LEAF", "Hash/INSERT",
        "BRIN/CREATE_INDEX", "Gin/UPDATE_META_PAGE"])


def test_pgbench_init_and_run_match(wcc_capture: Callable[[Workload], WalCapture],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    def body(c: Cluster, db: str) -> None:
        run_pgbench(c, "-i", "-s", "1", "-q", dbname=db)
        run_pgbench(c, "-c", "2", "-t", "300", "-n", dbname=db)

    cap = wcc_capture(in_new_db(body))
    rep = oracle(cap)
    assert_clean(rep, must_check=[
        "Heap/HOT_UPDATE", "Heap/INSERT", "Heap2/MULTI_INSERT+INIT", "Heap2/VISIBLE",
        "Btree/INSERT_LEAF"])
    assert chain_equals_reference(cap, monkeypatch) > 1000
    assert chain_equals_reference(cap, monkeypatch, fork=VISIBILITYMAP_FORKNUM) > 0
