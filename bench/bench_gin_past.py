"""Benchmark a GIN full-text query in the past against the same query live.

    python bench/bench_gin_past.py [--rows 1000000] [--late-rows 20000] [--runs 7]

Run as root from the project root. It starts a throw-away PostgreSQL 18
primary, stops it cleanly and imports it into a page store (history starts
there), then:

 1. builds ``docs(id, body text, tsv tsvector)`` with ``--rows`` rows (words
    drawn from a 5,000-word vocabulary, about 12 per row) and a GIN index on
    ``tsv`` (``CREATE INDEX``: logged as whole pages), ANALYZE;
 2. inserts ``--late-rows`` more rows through the index (fast update: the
    pending list, flushed into the tree when it passes its limit), so the
    historical index is also rebuilt by GIN redo, not only from images;
 3. ingests the WAL into the store, materialises a historical server at the
    end LSN (as `HistoryService` does; timed) and starts it (timed);
 4. runs each query ``--runs`` times on the live primary and on the
    historical server (same state, warm caches after one untimed run) and
    prints the median and min per side, checking that both return the same
    rows and that both plans use the GIN index (Bitmap Index Scan on docs_tsv).

Queries: a two-word AND match (count; one row in 5,000 matches), the same
kind ranked with ts_rank (top 10), and a prefix match (count). Results go to stdout as a
markdown table; nothing is written elsewhere. Everything started is stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from strata.bootstrap import import_datadir
from strata.historical.instance import start_instance
from strata.historical.materialize import materialize
from strata.historical.modes import UNSUPPORTED_INDEX_AMS
from strata.historical.source import DataDirSource
from strata.historical.store_view import StoreView
from strata.ingest.transam import TransamIngest
from strata.ingest.walingest import WalIngest
from strata.lsn import Lsn
from strata.pagestore import PageStore
from strata.reconstruct.reconstruct import reconstruct_value
from strata.runtime.cluster import Cluster
from strata.timemap.timemap import TimeMap
from strata.wal.segments import iter_records

WORDS = 5000
DOC = ("SELECT i, string_agg('w' || ((i::bigint * 7919 + k * 104729) % {words})::text, ' ') "
       "FROM generate_series({lo}, {hi}) i, generate_series(1, 12) k GROUP BY i")
BUILD = """
CREATE TABLE docs (id int PRIMARY KEY, body text, tsv tsvector) WITH (autovacuum_enabled = off);
INSERT INTO docs (id, body) {docs};
UPDATE docs SET tsv = to_tsvector('simple', body);
VACUUM docs;
CREATE INDEX docs_tsv ON docs USING gin (tsv) WITH (gin_pending_list_limit = 256);
ANALYZE docs;
"""
LATE = """
INSERT INTO docs (id, body, tsv) SELECT id, body, to_tsvector('simple', body) FROM ({docs}) s(id, body);
ANALYZE docs;
"""


def word(i: int, k: int) -> str:
    """The k-th word of row i (as DOC generates it)."""
    return f"w{(i * 7919 + k * 104729) % WORDS}"


# Word pairs that occur together: rows i, i + WORDS, i + 2 * WORDS, ...
QUERIES = {
    "two-word AND (count)":
        f"SELECT count(*) FROM docs WHERE tsv @@ to_tsquery('simple', '{word(1, 1)} & {word(1, 2)}')",
    "ranked top 10":
        f"SELECT id, ts_rank(tsv, q) AS r FROM docs, "
        f"to_tsquery('simple', '{word(2, 3)} & {word(2, 7)}') q "
        "WHERE tsv @@ q ORDER BY r DESC, id LIMIT 10",
    "prefix (count)": "SELECT count(*) FROM docs WHERE tsv @@ to_tsquery('simple', 'w499:*')",
}


def _lsn(c: Cluster) -> Lsn:
    return Lsn.parse(c.sql("SELECT pg_current_wal_insert_lsn()")[0][0])


def _plan_uses_gin(conn: Any, query: str) -> bool:
    (doc,) = conn.execute(f"EXPLAIN (COSTS OFF, FORMAT JSON) {query}").fetchone()
    plan = json.dumps(json.loads(doc) if isinstance(doc, str) else doc)
    return '"Index Name": "docs_tsv"' in plan


def _time_queries(conn: Any, runs: int) -> tuple[dict[str, list[float]], dict[str, Any]]:
    times: dict[str, list[float]] = {}
    rows: dict[str, Any] = {}
    for name, q in QUERIES.items():
        if not _plan_uses_gin(conn, q):
            raise SystemExit(f"{name}: the plan does not use docs_tsv")
        rows[name] = conn.execute(q).fetchall()  # warm-up, untimed
        for _ in range(runs):
            t0 = time.perf_counter()
            conn.execute(q).fetchall()
            times.setdefault(name, []).append(time.perf_counter() - t0)
    return times, rows


def build(root: Path, rows: int, late_rows: int
          ) -> tuple[Cluster, PageStore, Lsn, Lsn, dict[str, float]]:
    """The primary (running, workload done), the store holding its history, the
    LSN history starts at and the end LSN."""
    timings: dict[str, float] = {}
    c = Cluster(datadir=root / "primary" / "data")
    c.initdb(settings={"autovacuum": "off", "max_wal_size": "4GB", "wal_keep_size": "8GB",
                       "shared_buffers": "256MB", "maintenance_work_mem": "256MB"})
    c.start()
    c.stop()
    source = DataDirSource(c.datadir)
    store = PageStore.open(root / "layers", reconstruct_value)
    ingest = WalIngest(store, TimeMap.open(root / "timemap"),
                       TransamIngest(source.control()), start_lsn=source.lsn)
    start = import_datadir(source, ingest)
    c.start()
    t0 = time.perf_counter()
    c.psql("-q", input=BUILD.format(docs=DOC.format(words=WORDS, lo=1, hi=rows)))
    c.psql("-q", input=LATE.format(docs=DOC.format(words=WORDS, lo=rows + 1, hi=rows + late_rows)))
    timings["load + index build + late inserts (live)"] = time.perf_counter() - t0
    end = _lsn(c)
    c.sql("CHECKPOINT")  # every record up to `end` is in the segment files
    t0 = time.perf_counter()
    for rec in iter_records(c.wal_dir(), start, end):
        ingest.ingest(rec)
    ingest.advance()
    timings["ingest WAL into the store"] = time.perf_counter() - t0
    assert ingest.last_lsn is not None
    return c, store, start, Lsn(ingest.last_lsn), timings


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--late-rows", type=int, default=20_000)
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-gin-past-", dir="/tmp"))
    os.chmod(root, 0o755)
    primary: Cluster | None = None
    store: PageStore | None = None
    inst = None
    try:
        primary, store, start, end, timings = build(root, args.rows, args.late_rows)
        t0 = time.perf_counter()
        mat = materialize(StoreView(store, end), root / "hist" / "data")
        timings["materialize at the end LSN"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        inst = start_instance(mat, invalid_index_ams=UNSUPPORTED_INDEX_AMS)
        timings["start the historical server"] = time.perf_counter() - t0
        with primary.connect() as conn:
            live, live_rows = _time_queries(conn, args.runs)
        with inst.connect() as conn:
            past, past_rows = _time_queries(conn, args.runs)
        for name in QUERIES:
            if live_rows[name] != past_rows[name]:
                raise SystemExit(f"{name}: the past answers differently from the live primary")
        print(f"\ndocs: {args.rows:,} rows + {args.late_rows:,} late rows; WAL "
              f"{(end - start) / 2**20:,.0f} MiB; {mat.pages:,} pages materialised\n")
        print("| step | seconds |\n|---|---|")
        for k, v in timings.items():
            print(f"| {k} | {v:.1f} |")
        print(f"\n| query ({args.runs} runs) | rows | live median | live min | past median "
              "| past min | past / live |")
        print("|---|---|---|---|---|---|---|")
        for name in QUERIES:
            lm, pm = statistics.median(live[name]), statistics.median(past[name])
            n = live_rows[name][0][0] if name.endswith("(count)") else len(live_rows[name])
            print(f"| {name} | {n} | {lm * 1e3:.2f} ms | {min(live[name]) * 1e3:.2f} ms | "
                  f"{pm * 1e3:.2f} ms | {min(past[name]) * 1e3:.2f} ms | {pm / lm:.2f} |")
    finally:
        if inst is not None:
            inst.remove()
        if store is not None:
            store.close()
        if primary is not None:
            primary.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
