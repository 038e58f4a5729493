"""A workload that exercises every transam record type we rebuild state from,
and helpers to copy the SLRU / relation-map baseline of a stopped cluster.

Used by the pg-tier proof (test_rebuild_pg.py) and by make_samples.py, which
extracted the .bin samples under tests/data/transam/.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from strata.key import SlruKind
from strata.pg.constants import DEFAULTTABLESPACE_OID, GLOBALTABLESPACE_OID
from strata.pg.slru import SLRU_DIRS, parse_segment_file_name, segment_pages
from strata.runtime.cluster import Cluster
from strata.runtime.osuser import run_as_server

N_ROWS = 2200  # > 2,048 multixacts: the second offsets page gets a ZERO_OFF_PAGE
N_SUBXACTS = 33000  # > 32,768 xids: a CLOG ZEROPAGE, and a commit spanning two pg_xact pages


@dataclass
class Baseline:
    """SLRU pages and relation maps of a stopped cluster, and its control data."""

    pages: dict[tuple[SlruKind, int], bytes]
    relmaps: dict[tuple[int, int], bytes]
    controldata: str


def pg_controldata(cluster: Cluster) -> str:
    cp = run_as_server([cluster.bins.path("pg_controldata"), "-D", cluster.datadir])
    out = cp.stdout
    return out.decode() if isinstance(out, bytes) else str(out)


def read_baseline(datadir: Path, controldata: str) -> Baseline:
    pages: dict[tuple[SlruKind, int], bytes] = {}
    for kind, sub in SLRU_DIRS.items():
        d = datadir / sub
        for f in sorted(d.iterdir()):
            segno = parse_segment_file_name(f.name)
            for pageno, page in segment_pages(segno, f.read_bytes()):
                pages[(kind, pageno)] = page
    relmaps = {(GLOBALTABLESPACE_OID, 0): (datadir / "global" / "pg_filenode.map").read_bytes()}
    for dbdir in (datadir / "base").iterdir():
        m = dbdir / "pg_filenode.map"
        if re.fullmatch(r"\d+", dbdir.name) and m.exists():
            relmaps[(DEFAULTTABLESPACE_OID, int(dbdir.name))] = m.read_bytes()
    return Baseline(pages, relmaps, controldata)


def prepare(cluster: Cluster) -> None:
    """Schema for the workload (runs before the baseline checkpoint)."""
    cluster.sql("CREATE TABLE tx (id int PRIMARY KEY, v int)")
    cluster.sql(f"INSERT INTO tx SELECT g, 0 FROM generate_series(1, {N_ROWS}) g")
    cluster.sql("CREATE UNLOGGED TABLE sub (i int)")
    # A workload bug must fail, not hang (takes effect at the restart).
    cluster.sql("ALTER SYSTEM SET lock_timeout = '60s'")


def run(cluster: Cluster) -> None:
    """Commits, aborts, savepoints, exception blocks, 2PC, multixacts,
    VACUUM FULL of mapped catalogs, CREATE/DROP DATABASE with both strategies."""
    c = cluster.sql
    c("UPDATE tx SET v = v + 1 WHERE id <= 10")
    with cluster.connect(autocommit=False) as conn:  # aborted top-level transaction
        conn.execute("INSERT INTO tx VALUES (100001, 1)")
        conn.rollback()
    with cluster.connect(autocommit=False) as conn:  # savepoints
        conn.execute("INSERT INTO tx VALUES (100002, 1)")
        conn.execute("SAVEPOINT a")
        conn.execute("INSERT INTO tx VALUES (100003, 1)")
        conn.execute("ROLLBACK TO SAVEPOINT a")
        conn.execute("SAVEPOINT b")
        conn.execute("INSERT INTO tx VALUES (100004, 1)")
        conn.execute("RELEASE SAVEPOINT b")
        conn.commit()
    with cluster.connect(autocommit=False) as conn:  # an aborted tree with subxacts
        conn.execute("INSERT INTO tx VALUES (100005, 1)")
        conn.execute("SAVEPOINT a")  # released: the top-level ABORT lists it
        conn.execute("INSERT INTO tx VALUES (100006, 1)")
        conn.execute("RELEASE SAVEPOINT a")
        conn.execute("SAVEPOINT b")  # still open: aborted by an ABORT of its own
        conn.execute("INSERT INTO tx VALUES (100007, 1)")
        conn.rollback()
    # Many exception-block subtransactions: ASSIGNMENT records, a commit whose
    # subxacts span two pg_xact pages, a CLOG ZEROPAGE, and subxact aborts.
    c(f"""DO $$ BEGIN
          FOR i IN 1..{N_SUBXACTS} LOOP
            BEGIN
              INSERT INTO sub VALUES (i);
              IF i % 5000 = 0 THEN RAISE EXCEPTION 'boom %', i; END IF;
            EXCEPTION WHEN raise_exception THEN NULL;
            END;
          END LOOP; END $$""")
    # Two-phase commit: committed, rolled back, and one left prepared.
    # (They touch only rows of their own: the open one keeps its locks.)
    for n, (gid, end) in enumerate((("p_commit", "COMMIT PREPARED"),
                                    ("p_rollback", "ROLLBACK PREPARED"), ("p_open", None))):
        with cluster.connect(autocommit=False) as conn:
            conn.execute(f"INSERT INTO tx VALUES ({300000 + 2 * n}, 2)")
            conn.execute("SAVEPOINT s")
            conn.execute(f"INSERT INTO tx VALUES ({300001 + 2 * n}, 2)")
            conn.execute(f"PREPARE TRANSACTION '{gid}'")
        if end:
            c(f"{end} '{gid}'")
    # Multixacts: one session share-locks every row, another locks each row in
    # its own subtransaction, so every row gets a multixact of its own.
    with cluster.connect(autocommit=False) as a, cluster.connect(autocommit=False) as b:
        a.execute(f"SELECT id FROM tx WHERE id <= {N_ROWS} FOR SHARE")
        b.execute(f"""DO $$ BEGIN
              FOR i IN 1..{N_ROWS} LOOP
                BEGIN
                  PERFORM 1 FROM tx WHERE id = i FOR KEY SHARE;
                EXCEPTION WHEN raise_exception THEN NULL;
                END;
              END LOOP; END $$""")
        with cluster.connect(autocommit=False) as third:  # a 3-member multixact
            third.execute("SELECT id FROM tx WHERE id = 1 FOR SHARE")
            third.commit()
        a.commit()
        b.commit()
    c("VACUUM FULL pg_class")  # local relation map
    c("VACUUM FULL pg_database")  # shared relation map
    c("CREATE DATABASE d_wal STRATEGY wal_log")
    c("CREATE DATABASE d_copy STRATEGY file_copy")
    c("CREATE DATABASE d_gone STRATEGY file_copy")
    c("VACUUM FULL pg_class", dbname="d_copy")
    c("DROP DATABASE d_gone")
    c("SELECT pg_current_xact_id()")
