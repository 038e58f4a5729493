"""Redo throughput per index access method (hash, GIN, GiST, SP-GiST, BRIN), next to
PostgreSQL's own replay of the same WAL.

What it measures, for each access method in turn (a PostgreSQL 18 primary of
its own: checksums on, wal_consistency_checking off, autovacuum off):

1. a base backup, a CHECKPOINT, then a workload on that AM's indexes (inserts
   with splits and overflow pages, deletes, VACUUM; for BRIN also summarize and
   desummarize), so every block's first reference in the range carries an
   apply-image and every later one has a base;
2. our redo of that WAL range (`bench_redo.throughput`: decode, then
   `redo_blocks` with every block's latest page kept in a dict): records/s
   and MB/s of CPU time (time.process_time) for the whole range, and for the
   AM's own records alone (their redo time only);
3. PostgreSQL's replay of the same range (`bench_redo.pg_replay`: the base
   backup recovered to the range's end with restore_command; seconds between
   the "redo starts" and "recovery stopping" log lines, wall time).

Only the whole-range rows compare like with like (PostgreSQL's replay time
covers heap and index records together); the AM row says what share of our
time that AM's redo takes. Numbers are not recorded here: BENCHMARKS.md is
written by the lead on a quiet machine.

    python bench/bench_redo_am.py [--rows 100000] [--ams hash,gin,gist,spgist,brin]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench_redo import pg_replay, throughput
from strata.lsn import Lsn
from strata.runtime.cluster import Cluster
from strata.runtime.osuser import run_as_server
from strata.wal.segments import iter_raw_records

# {n}: --rows. Each workload runs in the postgres database of its own primary.
WORKLOADS: dict[str, tuple[str, str]] = {
    "hash": ("Hash", """
CREATE TABLE h (k int, pad int);
CREATE INDEX h_k ON h USING hash (k);
INSERT INTO h SELECT i, i FROM generate_series(1, {n}) i;
INSERT INTO h SELECT 7, i FROM generate_series(1, {n} / 20) i;
DELETE FROM h WHERE k % 3 = 0 OR (k = 7 AND pad % 5 <> 0);
VACUUM h;
INSERT INTO h SELECT i, i FROM generate_series({n} + 1, {n} + {n} / 4) i;
"""),
    "gist": ("Gist", """
CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE TABLE gp (id int, p point, b box, r int4range, t text);
CREATE INDEX gp_p ON gp USING gist (p);
CREATE INDEX gp_b ON gp USING gist (b);
CREATE INDEX gp_r ON gp USING gist (r);
CREATE INDEX gp_t ON gp USING gist (t gist_trgm_ops);
INSERT INTO gp SELECT i, point(i % 300, i / 300), box(point(i % 300, i / 300),
       point(i % 300 + 2, i / 300 + 2)), int4range(i, i + i % 50), md5(i::text)
  FROM generate_series(1, {n}) i;
DELETE FROM gp WHERE id % 3 = 0;
VACUUM gp;
INSERT INTO gp SELECT i, point(i % 300 + 0.5, i / 300), box(point(i % 300, i / 300),
       point(i % 300 + 1, i / 300 + 1)), int4range(i, i + 3), md5(i::text)
  FROM generate_series(1, {n} / 4) i;
"""),
    "gin": ("Gin", """
CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE TABLE gn (id int, tsv tsvector, j jsonb, a int[], t text);
CREATE INDEX gn_tsv ON gn USING gin (tsv) WITH (fastupdate = off);
CREATE INDEX gn_j ON gn USING gin (j jsonb_path_ops);
CREATE INDEX gn_a ON gn USING gin (a) WITH (fastupdate = on);
CREATE INDEX gn_t ON gn USING gin (t gin_trgm_ops);
INSERT INTO gn SELECT i, to_tsvector('simple', 'w' || i % 997 || ' w' || i % 101 || ' w' || i % 13),
       jsonb_build_object('k', i % 100, 'v', i % 7), ARRAY[i % 50, i % 77], md5(i::text)
  FROM generate_series(1, {n}) i;
DELETE FROM gn WHERE id % 3 = 0;
VACUUM gn;
INSERT INTO gn SELECT i, to_tsvector('simple', 'x' || i % 89), jsonb_build_object('k', i % 9),
       ARRAY[i % 5], md5((i * 7)::text) FROM generate_series(1, {n} / 4) i;
"""),
    "spgist": ("SPGist", """
CREATE TABLE sp (id int, p point, t text, a inet);
CREATE INDEX sp_p ON sp USING spgist (p);
CREATE INDEX sp_t ON sp USING spgist (t);
CREATE INDEX sp_a ON sp USING spgist (a inet_ops);
INSERT INTO sp SELECT i, point(i % 300, i / 300), md5(i::text),
       ('10.' || i % 256 || '.' || i / 256 % 256 || '.' || i % 7)::inet
  FROM generate_series(1, {n}) i;
DELETE FROM sp WHERE id % 3 = 0;
VACUUM sp;
INSERT INTO sp SELECT i, point(i % 300 + 0.5, i / 300), md5((i * 3)::text),
       ('10.9.' || i % 256 || '.1')::inet FROM generate_series(1, {n} / 4) i;
"""),
    "brin": ("BRIN", """
CREATE TABLE br (id int, v int, t text);
CREATE INDEX br_id ON br USING brin (id) WITH (pages_per_range = 4);
CREATE INDEX br_v ON br USING brin (v int4_minmax_multi_ops) WITH (pages_per_range = 4);
CREATE INDEX br_t ON br USING brin (t text_bloom_ops) WITH (pages_per_range = 4);
INSERT INTO br SELECT i, (i * 37) % 100000, md5(i::text) FROM generate_series(1, {n}) i;
SELECT brin_summarize_new_values('br_id'), brin_summarize_new_values('br_v'),
       brin_summarize_new_values('br_t');
UPDATE br SET v = v + 1 WHERE id % 50 = 0;
SELECT brin_desummarize_range('br_id', 0), brin_desummarize_range('br_v', 40);
INSERT INTO br SELECT i, i % 1000, md5(i::text) FROM generate_series({n} + 1, {n} + {n} / 4) i;
SELECT brin_summarize_new_values('br_id'), brin_summarize_new_values('br_v'),
       brin_summarize_new_values('br_t');
"""),
}


def _lsn(c: Cluster) -> Lsn:
    return Lsn.parse(str(c.sql("SELECT pg_current_wal_insert_lsn()")[0][0]))


def run_am(base: Path, sql: str) -> tuple[Cluster, Path, Lsn, Lsn]:
    """A primary, its base backup, and the WAL range [start, end) of `sql`."""
    c = Cluster(datadir=base / "data")
    c.initdb(settings={"wal_keep_size": "4GB", "max_wal_size": "4GB",
                       "checkpoint_timeout": "1h", "autovacuum": "off"})
    c.start()
    backup = base / "backup"
    run_as_server([c.bins.path("pg_basebackup"), "-D", backup, "-h", "127.0.0.1", "-p",
                   str(c.port), "-U", "postgres", "-X", "fetch", "-c", "fast"])
    c.sql("CHECKPOINT")
    start = _lsn(c)
    c.psql("-q", input=sql)
    c.sql("SELECT pg_logical_emit_message(false, 'bench', 'end')")
    end = _lsn(c)
    c.sql("CHECKPOINT")
    return c, backup, start, end


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--ams", default="hash,gin,gist,spgist,brin")
    args = ap.parse_args()
    ams = [a.strip() for a in args.ams.split(",") if a.strip()]
    unknown = set(ams) - set(WORKLOADS)
    if unknown:
        ap.error(f"unknown access methods {sorted(unknown)} (known: {', '.join(WORKLOADS)})")
    root = Path(os.environ.get("STRATA_TEST_ROOT", "/tmp/strata-tests"))
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)
    print("| AM | range | records | WAL MB | ours: decode+redo rec/s | ours: MB/s "
          "| ours: AM records | AM redo rec/s | AM share of redo time "
          "| PostgreSQL replay rec/s | PostgreSQL MB/s | records without base |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for am in ams:
        rmgr, sql = WORKLOADS[am]
        base = Path(tempfile.mkdtemp(prefix=f"bench-redo-{am}-", dir=root))
        os.chmod(base, 0o755)
        t0 = time.monotonic()
        c, backup, start, end = run_am(base, sql.format(n=args.rows))
        try:
            records, per_type, decode_s, redo_s, errors = throughput(c.wal_dir(), start, end)
            c.stop()
            pg_start, pg_secs = pg_replay(c, backup, end)
            pg_sizes = [len(r.raw) for r in iter_raw_records(c.wal_dir(), pg_start, end)]
        finally:
            c.stop()
            shutil.rmtree(base, ignore_errors=True)
        n = len(records)
        mb = sum(r.xl_tot_len for r in records) / 1e6
        am_n = sum(v[0] for k, v in per_type.items() if k.startswith(rmgr + "/"))
        am_s = sum(v[1] for k, v in per_type.items() if k.startswith(rmgr + "/"))
        pg_n, pg_mb = len(pg_sizes), sum(pg_sizes) / 1e6
        both = decode_s + redo_s
        print(f"| {am} | {start}..{end} | {n:,} | {mb:.1f} | {n / both:,.0f} | {mb / both:.1f} "
              f"| {am_n:,} | {am_n / am_s if am_s else 0:,.0f} | {am_s / redo_s:.0%} "
              f"| {pg_n / pg_secs:,.0f} | {pg_mb / pg_secs:.1f} | {errors} |", flush=True)
        print(f"<!-- {am}: setup + workload + replays took {time.monotonic() - t0:.0f} s; "
              f"PostgreSQL replayed {pg_start}..{end} in {pg_secs:.3f} s -->", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
