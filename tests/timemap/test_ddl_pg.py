"""The proof of `strata timeline --ddl`: a scripted history of DDL on a real
primary, ingested through `WalIngest` (import at a shutdown checkpoint, then
the WAL, in three runs: one cut with a transaction open across it, one
after catalogs were rewritten by VACUUM FULL), lists exactly
the scripted changes, each with its database, owner role, xid and commit LSN.

Oracles: the xid of each transaction comes from ``pg_current_xact_id()``
inside it (or, for CREATE/DROP DATABASE, which cannot run in a transaction
block, from the one commit pg_waldump shows between the LSNs around the
statement), its commit LSN from pg_waldump. ANALYZE, VACUUM and an
autovacuum run (waited for on pg_stat_user_tables) commit transactions the
time map flags as catalog changes; none of them may be listed.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from strata.cli.main import main
from strata.lsn import Lsn
from strata.runtime.cluster import Cluster
from strata.timemap.timemap import TimeMap
from tests.conftest import _scratch, make_cluster
from tests.timemap.history import HistoryHome, commit_lsns

pytestmark = pytest.mark.pg

Step = tuple[str, str, list[str]]  # database, SQL, the changes it must list

# Each entry runs in one transaction (in the named database) and must list
# exactly these changes (any order within the transaction).
SCRIPT: list[Step] = [
    ("postgres", "CREATE TABLE demo (id int PRIMARY KEY, name text)",
     ["CREATE TABLE public.demo", "CREATE INDEX public.demo_pkey ON public.demo"]),
    ("postgres", "INSERT INTO demo SELECT g, 'n' || g FROM generate_series(1, 2000) g", []),
    ("postgres", "ALTER TABLE demo ADD COLUMN email text",
     ["ALTER TABLE public.demo ADD COLUMN email"]),
    ("postgres", "ANALYZE demo", []),
    ("postgres", "ALTER TABLE demo RENAME TO customers",
     ["ALTER TABLE public.demo RENAME TO customers"]),
    ("postgres", "CREATE INDEX customers_email ON customers (email)",
     ["CREATE INDEX public.customers_email ON public.customers"]),
    ("postgres", "ALTER TABLE customers RENAME COLUMN email TO mail",
     ["ALTER TABLE public.customers RENAME COLUMN email TO mail"]),
    ("postgres", "CREATE SCHEMA sales", ["CREATE SCHEMA sales"]),
    ("postgres", "CREATE TABLE sales.orders (id serial, customer int)",
     ["CREATE SEQUENCE sales.orders_id_seq", "CREATE TABLE sales.orders"]),
    ("postgres", "CREATE VIEW sales.big AS SELECT * FROM sales.orders WHERE id > 10",
     ["CREATE VIEW sales.big"]),
    ("postgres", "CREATE FUNCTION sales.add_one(int) RETURNS int LANGUAGE sql AS 'SELECT $1 + 1'",
     ["CREATE FUNCTION sales.add_one"]),
    ("postgres", "CREATE ROLE analyst", ["CREATE ROLE analyst"]),
    # catalogs rewritten (new relfilenumbers: mapped, and from pg_class): DDL after
    # them is still seen
    ("postgres", "VACUUM FULL pg_class", []),
    ("postgres", "VACUUM FULL pg_namespace", []),
    ("postgres", "CREATE TABLE after_vacuum_full (a int)",
     ["CREATE TABLE public.after_vacuum_full"]),
    ("postgres", "CREATE SCHEMA reporting", ["CREATE SCHEMA reporting"]),
    ("postgres", "CREATE DATABASE olddb", ["CREATE DATABASE olddb"]),
    ("olddb", "CREATE TABLE t_old (a int)", ["CREATE TABLE public.t_old"]),
    ("postgres", "DROP DATABASE olddb", ["DROP DATABASE olddb"]),
    ("postgres", "CREATE TEMP TABLE scratch (a int)", []),  # temporary: hidden
    ("postgres", "TRUNCATE customers", ["TRUNCATE public.customers"]),
    ("postgres", "VACUUM customers", []),
    ("postgres", "DROP TABLE customers",
     ["DROP INDEX public.customers_email ON public.customers",
      "DROP INDEX public.demo_pkey ON public.customers", "DROP TABLE public.customers"]),
]
NO_BLOCK = ("CREATE DATABASE", "DROP DATABASE", "VACUUM")  # cannot run in a transaction block


@dataclass
class Ran:
    """What the scripted history did, per transaction: xid -> (database, changes)."""

    home: Path
    expected: dict[int, tuple[str, list[str]]] = field(default_factory=dict)
    commits: dict[int, Lsn] = field(default_factory=dict)
    quiet_xids: set[int] = field(default_factory=set)  # ANALYZE, VACUUM, autovacuum
    straddle_xid: int = 0
    cut: int = 0
    cut2: int = 0
    autovacuum_from: int = 0  # every commit at or after this LSN is autovacuum's


def _lsn(c: Cluster) -> Lsn:
    return Lsn.parse(c.sql("SELECT pg_current_wal_insert_lsn()::text")[0][0])


def _run_step(c: Cluster, db: str, sql: str) -> tuple[int | None, Lsn, Lsn]:
    """(xid if known, LSN before, LSN after)."""
    before = _lsn(c)
    if sql.startswith(NO_BLOCK):
        c.sql(sql, dbname=db)
        return None, before, _lsn(c)
    with c.connect(db, autocommit=False) as conn:
        conn.execute(sql)  # type: ignore[arg-type]
        xid = int(conn.execute("SELECT pg_current_xact_id()::text").fetchone()[0])
        conn.commit()
    return xid, before, _lsn(c)


@pytest.fixture(scope="module")
def ran() -> Iterator[Ran]:
    base = _scratch("ddl-")
    c = make_cluster(base / "primary", autovacuum="off")
    try:
        hist = HistoryHome.import_primary(c, base / "home")
        c.start()
        r = Ran(base / "home")
        ranges: list[tuple[Lsn, Lsn, str, list[str]]] = []
        for db, sql, changes in SCRIPT:
            xid, before, after = _run_step(c, db, sql)
            if xid is None:
                ranges.append((before, after, db, changes))
            elif changes:
                r.expected[xid] = (db, changes)
            elif sql.startswith("ANALYZE"):
                r.quiet_xids.add(xid)
        # a subtransaction rolled back, an aborted transaction: nothing of them
        with c.connect(autocommit=False) as conn:
            conn.execute("SAVEPOINT a")
            conn.execute("CREATE TABLE gone (a int)")
            conn.execute("ROLLBACK TO SAVEPOINT a")
            conn.execute("CREATE TABLE kept (a int)")
            xid = int(conn.execute("SELECT pg_current_xact_id()::text").fetchone()[0])
            conn.commit()
            r.expected[xid] = ("postgres", ["CREATE TABLE public.kept"])
            conn.execute("CREATE TABLE never (a int)")
            conn.rollback()
        # a transaction open across the cut between two ingest runs
        with c.connect(autocommit=False) as conn:
            conn.execute("CREATE TABLE before_cut (a int)")
            r.cut = _lsn(c)
            conn.execute("CREATE TABLE after_cut (a int)")
            r.straddle_xid = int(conn.execute("SELECT pg_current_xact_id()::text").fetchone()[0])
            conn.commit()
        # a restart, then DDL only in a catalog rewritten before it (pg_namespace,
        # VACUUM FULL above, not in a relation map): found at its commit
        r.cut2 = _lsn(c)
        xid, _, _ = _run_step(c, "postgres", "CREATE SCHEMA late_schema")
        assert xid is not None
        r.expected[xid] = ("postgres", ["CREATE SCHEMA late_schema"])
        # autovacuum: analyze and vacuum a table on their own
        c.sql("INSERT INTO sales.orders (customer) SELECT g FROM generate_series(1, 5000) g")
        r.autovacuum_from = _lsn(c)
        c.sql("ALTER SYSTEM SET autovacuum = on")
        c.sql("ALTER SYSTEM SET autovacuum_naptime = 1")
        c.sql("SELECT pg_reload_conf()")
        deadline = time.monotonic() + 120
        while not c.sql("SELECT last_autoanalyze IS NOT NULL FROM pg_stat_user_tables "
                        "WHERE relname = 'orders'")[0][0]:
            assert time.monotonic() < deadline, "autovacuum did not analyze sales.orders"
            time.sleep(0.2)
        c.sql("ALTER SYSTEM SET autovacuum = off")
        c.sql("SELECT pg_reload_conf()")
        c.sql("CHECKPOINT")
        c.stop()
        r.commits = commit_lsns(c, hist.start_lsn)
        for before, after, db, changes in ranges:
            inside = [x for x, lsn in r.commits.items() if before <= lsn < after]
            if changes:
                assert len(inside) == 1, (before, after, inside)
                r.expected[inside[0]] = (db, changes)
            else:
                r.quiet_xids.update(inside)
        hist.ingest(c, until=Lsn(r.cut))  # a daemon stop with the transaction open ...
        hist.ingest(c, until=Lsn(r.cut2))  # ... the restart from durable_lsn, another stop
        hist.ingest(c)
        yield r
    finally:
        c.stop("immediate")
        shutil.rmtree(base, ignore_errors=True)


def _cli(capsys: pytest.CaptureFixture[str], home: Path, *args: str) -> list[str]:
    capsys.readouterr()
    assert main(["timeline", "--home", str(home), *args]) == 0
    return capsys.readouterr().out.splitlines()


def _rows(lines: list[str]) -> list[tuple[str, Lsn, int, str, str, str]]:
    """(time, LSN, xid, database, role, change) per line of `--ddl` text."""
    out = []
    for line in lines[1:]:
        when, lsn, xid, db, role, change = line.split(maxsplit=5)
        out.append((when, Lsn.parse(lsn), int(xid), db, role, change))
    return out


def _by_xid(rows: list[tuple[str, Lsn, int, str, str, str]]) -> dict[int, list[str]]:
    got: dict[int, list[str]] = {}
    for _, _, xid, _, _, change in rows:
        got.setdefault(xid, []).append(change)
    return got


def test_ddl_lists_exactly_the_scripted_changes(ran: Ran, capsys: pytest.CaptureFixture[str]
                                                ) -> None:
    rows = _rows(_cli(capsys, ran.home, "--ddl"))
    straddle = [r for r in rows if r[2] == ran.straddle_xid]
    rows = [r for r in rows if r[2] != ran.straddle_xid]
    got = _by_xid(rows)
    assert {x: sorted(v) for x, v in got.items()} == \
        {x: sorted(ch) for x, (_, ch) in ran.expected.items()}
    for _, lsn, xid, db, role, _ in rows:
        assert lsn == ran.commits[xid], xid
        assert db == ran.expected[xid][0], xid
        assert role in ("postgres", "-"), role
    # in commit order
    assert [r[1] for r in rows] == sorted(r[1] for r in rows)
    # the transaction open across the restart: what came after, and a note
    assert straddle[0][5] == "CREATE TABLE public.after_cut"
    assert "began before ingest (re)started" in straddle[-1][5]
    assert len(straddle) == 2


def test_role_is_the_owner_and_roles_have_none(ran: Ran, capsys: pytest.CaptureFixture[str]
                                               ) -> None:
    rows = _rows(_cli(capsys, ran.home, "--ddl"))
    roles = {change: role for _, _, _, _, role, change in rows}
    assert roles["CREATE TABLE public.demo"] == "postgres"
    assert roles["DROP DATABASE olddb"] == "postgres"
    assert roles["CREATE ROLE analyst"] == "-"


def test_json_carries_the_same_changes(ran: Ran, capsys: pytest.CaptureFixture[str]) -> None:
    text = _by_xid(_rows(_cli(capsys, ran.home, "--ddl")))
    objs = [json.loads(line) for line in _cli(capsys, ran.home, "--ddl", "--json")]
    assert {o["xid"]: [c["statement"] for c in o["changes"]] for o in objs if o["changes"]} == \
        {x: [c for c in v if not c.startswith("(")] for x, v in text.items()}
    commit_starts = sorted(ran.commits.values())
    for o in objs:
        assert Lsn.parse(o["lsn"]) == ran.commits[o["xid"]]
        # the moment before: no commit between the end of the previous one and this one
        before = Lsn.parse(o["before_lsn"])
        assert before < Lsn.parse(o["lsn"])
        assert not [c for c in commit_starts if before <= c < Lsn.parse(o["lsn"])]
        assert o["kind"] == "commit"
        if o["xid"] in ran.expected:
            assert o["database"] == ran.expected[o["xid"]][0]
    drop = next(o for o in objs if any(c["statement"] == "DROP DATABASE olddb"
                                       for c in o["changes"]))
    assert drop["changes"] == [{"statement": "DROP DATABASE olddb", "action": "DROP",
                                "object": "DATABASE", "schema": "", "name": "olddb",
                                "relations": [], "role": "postgres", "temp": False}]
    straddle = next(o for o in objs if o["xid"] == ran.straddle_xid)
    assert "began before ingest (re)started" in straddle["note"]


def test_analyze_vacuum_and_autovacuum_are_not_ddl(ran: Ran,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    tm = TimeMap.open(ran.home / "timemap", readonly=True)
    try:
        flagged = {e.xid: e.start_lsn for e in tm.entries() if e.catalog_change}
    finally:
        tm.close()
    listed = {r[2] for r in _rows(_cli(capsys, ran.home, "--ddl"))}
    # ANALYZE (statistics), and autovacuum's transactions, changed catalogs ...
    assert ran.quiet_xids & set(flagged)
    assert any(lsn >= ran.autovacuum_from for lsn in flagged.values()), \
        "no autovacuum transaction in the time map"
    # ... and no catalog change but the scripted DDL is listed (temporary tables
    # are hidden, their churn included)
    assert listed == set(ran.expected) | {ran.straddle_xid}
    plain = [line.split() for line in _cli(capsys, ran.home)[1:]]
    marked = {int(p[2]) for p in plain if p[-1] == "(DDL)"}
    assert marked == set(ran.expected) | {ran.straddle_xid}


def test_filter_by_database(ran: Ran, capsys: pytest.CaptureFixture[str]) -> None:
    rows = _rows(_cli(capsys, ran.home, "--db", "olddb"))
    assert [(r[3], r[5]) for r in rows] == [
        ("postgres", "CREATE DATABASE olddb"), ("olddb", "CREATE TABLE public.t_old"),
        ("postgres", "DROP DATABASE olddb")]
    assert _rows(_cli(capsys, ran.home, "--db", "nosuchdb")) == []


def test_filter_by_relation(ran: Ran, capsys: pytest.CaptureFixture[str]) -> None:
    changes = [r[5] for r in _rows(_cli(capsys, ran.home, "--table", "customers"))]
    assert changes == [
        "ALTER TABLE public.demo RENAME TO customers",
        "CREATE INDEX public.customers_email ON public.customers",
        "ALTER TABLE public.customers RENAME COLUMN email TO mail",
        "TRUNCATE public.customers",
        "DROP INDEX public.customers_email ON public.customers",
        "DROP INDEX public.demo_pkey ON public.customers",
        "DROP TABLE public.customers"]
    demo = [r[5] for r in _rows(_cli(capsys, ran.home, "--table", "public.demo"))]
    assert demo == ["CREATE TABLE public.demo", "CREATE INDEX public.demo_pkey ON public.demo",
                    "ALTER TABLE public.demo ADD COLUMN email",
                    "ALTER TABLE public.demo RENAME TO customers"]
    both = _rows(_cli(capsys, ran.home, "--table", "orders", "--db", "postgres"))
    assert [r[5] for r in both] == ["CREATE TABLE sales.orders"]


def test_temporary_objects_only_when_asked(ran: Ran, capsys: pytest.CaptureFixture[str]) -> None:
    hidden = [r[5] for r in _rows(_cli(capsys, ran.home, "--ddl"))]
    shown = [r[5] for r in _rows(_cli(capsys, ran.home, "--ddl", "--temp"))]
    assert not any("scratch" in c for c in hidden)
    assert any(c.startswith("CREATE TABLE pg_temp_") and c.endswith(".scratch") for c in shown)
    assert any(c.startswith("DROP TABLE pg_temp_") and c.endswith(".scratch") for c in shown)
