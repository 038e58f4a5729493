"""`strata diff` end to end against a scripted history with known changes, and
its --sql script applied to a copy of the database at T2 (made by `strata
restore --database`) gives back T1's fingerprint."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import pytest

from strata.runtime.pgbin import find_pg_binaries
from tests.e2e.restore_helpers import Strata, start_strata, store_readable
from tests.e2e.workload import fingerprint, first_difference

pytestmark = pytest.mark.e2e

BEFORE = """
CREATE TABLE customers (id int PRIMARY KEY, name text, city text)
  WITH (autovacuum_enabled = off);
INSERT INTO customers SELECT i, 'c' || i, 'city ' || (i % 5) FROM generate_series(1, 500) i;
CREATE TABLE orders (id serial PRIMARY KEY, customer int REFERENCES customers, amount numeric,
                     note text, doubled numeric GENERATED ALWAYS AS (amount * 2) STORED)
  WITH (autovacuum_enabled = off);
INSERT INTO orders (customer, amount, note)
  SELECT 1 + i % 500, i * 1.25, CASE WHEN i % 9 = 0 THEN NULL ELSE 'n' || i END
  FROM generate_series(1, 3000) i;
CREATE TABLE events (kind text, payload jsonb) WITH (autovacuum_enabled = off);
INSERT INTO events SELECT 'k' || (i % 3), jsonb_build_object('i', i % 10)
  FROM generate_series(1, 400) i;
"""
CHANGES = """
INSERT INTO customers VALUES (501, 'new one', 'x'), (502, 'it''s new', NULL);
UPDATE customers SET city = 'moved', name = 'renamed' WHERE id = 7;
UPDATE customers SET city = NULL WHERE id = 8;
DELETE FROM orders WHERE customer = 9;
DELETE FROM customers WHERE id = 9;
INSERT INTO orders (customer, amount, note) VALUES (501, 10, 'first'), (502, 20, E'tab\\there');
UPDATE orders SET amount = amount + 100 WHERE id IN (100, 2000);
UPDATE orders SET note = NULL WHERE id = 1500;
DELETE FROM events WHERE ctid = (SELECT ctid FROM events WHERE kind = 'k1' LIMIT 1);
INSERT INTO events VALUES ('k1', '{"i": 1}'), ('k1', '{"i": 1}'), (NULL, NULL);
"""


@pytest.fixture(scope="module")
def strata() -> Iterator[Strata]:
    from tests.conftest import _scratch

    # layers flushed every second: the diff reads them as soon as they are durable
    yield from start_strata(_scratch("diff-"), "--flush-interval", "1")


def _run(s: Strata, sql: str, db: str) -> None:
    import pglast

    with s.connect(db) as c:
        for stmt in pglast.split(sql):
            c.execute(stmt)


def test_diff_of_a_scripted_history_and_its_sql_undo(strata: Strata) -> None:
    with strata.connect() as c:
        c.execute("CREATE DATABASE shop")
    _run(strata, BEFORE, "shop")
    with strata.connect("shop") as c:
        then = fingerprint(c)
    _, t1 = strata.point()
    _run(strata, CHANGES, "shop")
    _, t2 = strata.point()

    res = strata.cli("diff", "--from", t1, "--to", t2, "--db", "shop", "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    tables = {t["table"]: t for t in doc["tables"]}
    cust = tables["public.customers"]
    # only the pages that changed were read, on both sides (autovacuum is off for
    # these tables: an ANALYZE running across T1 would widen what is read)
    with strata.connect("shop") as c:
        pages = c.execute("SELECT pg_relation_size('orders') / 8192").fetchone()[0]
    if store_readable():
        assert tables["public.orders"]["mode"] == "changed pages", doc["notes"]
        assert tables["public.orders"]["pages"] < pages / 2, doc["notes"]
    else:  # this build cannot read the layers while strata up writes them
        assert tables["public.orders"]["mode"] == "full"
    assert [a["key"] for a in cust["added"]] == [{"id": "501"}, {"id": "502"}]
    assert [r["key"] for r in cust["removed"]] == [{"id": "9"}]
    assert cust["changed"] == [
        {"key": {"id": "7"}, "columns": {"name": ["c7", "renamed"], "city": ["city 2", "moved"]}},
        {"key": {"id": "8"}, "columns": {"city": ["city 3", None]}}]
    orders = tables["public.orders"]
    assert len(orders["removed"]) == 6 and len(orders["added"]) == 2
    assert {tuple(c["columns"]) for c in orders["changed"]} == {("amount", "doubled"), ("note",)}
    ev = tables["public.events"]
    # one ('k1', {"i": 1}) deleted and two inserted: as multisets, one more of it
    assert ev["key"] == [] and ev["removed"] == []
    assert [a["row"] for a in ev["added"]] == [{"kind": None, "payload": None},
                                               {"kind": "k1", "payload": '{"i": 1}'}]
    assert doc["ddl"] == []
    # orders_id_seq moved by 2, inside the 32 values nextval() WAL-logs ahead:
    # both points see the same logged value
    assert doc["sequences"] == []

    text = strata.cli("diff", "--from", t1, "--to", t2, "--db", "shop", "--table", "customers")
    assert text.returncode == 0, text.stderr
    assert "table public.customers" in text.stdout and "orders" not in text.stdout

    script = strata.cli("diff", "--from", t1, "--to", t2, "--db", "shop", "--sql")
    assert script.returncode == 0, script.stderr
    copy = strata.cli("restore", "--database", "shop", "--at", t2, "--as", "shop_t2")
    assert copy.returncode == 0, copy.stderr
    applied = subprocess.run([str(find_pg_binaries().path("psql")), "-X", "-q", "-v",
                              "ON_ERROR_STOP=1", "-d",
                              strata.dsn.replace("dbname=postgres", "dbname=shop_t2")],
                             input=script.stdout, capture_output=True, text=True, timeout=120)
    assert applied.returncode == 0, applied.stderr
    with strata.connect("shop_t2") as c:
        assert first_difference(then, fingerprint(c)) is None


def test_ddl_between_two_points(strata: Strata) -> None:
    _run(strata, "CREATE TABLE ddl_a (id int PRIMARY KEY, v text); "
                 "INSERT INTO ddl_a VALUES (1, 'x')", "postgres")
    _, t1 = strata.point()
    _run(strata, "ALTER TABLE ddl_a ADD COLUMN w int DEFAULT 5; CREATE INDEX ddl_a_v ON ddl_a (v); "
                 "CREATE TABLE ddl_b (x int); UPDATE ddl_a SET v = 'y'", "postgres")
    _, t2 = strata.point()
    res = strata.cli("diff", "--from", t1, "--to", t2, "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    ddl = {(d["change"], d["object"]) for d in doc["ddl"]}
    assert {("changed", "TABLE public.ddl_a"), ("added", "INDEX public.ddl_a_v"),
            ("added", "TABLE public.ddl_b")} <= ddl
    assert doc["created_tables"] == ["public.ddl_b"]
    a = next(t for t in doc["tables"] if t["table"] == "public.ddl_a")
    assert a["changed"] == [{"key": {"id": "1"}, "columns": {"v": ["x", "y"]}}]
    assert any("columns changed" in n for n in a["notes"])
    back = strata.cli("diff", "--from", t2, "--to", t1)
    assert back.returncode == 1 and "later than" in back.stderr


def test_a_transaction_spanning_the_first_point(strata: Strata) -> None:
    """A row written before T1 by a transaction that commits after it: its page
    does not change after T1, yet the row appears between T1 and T2."""
    _run(strata, "CREATE TABLE span (id int PRIMARY KEY, v text); "
                 "INSERT INTO span SELECT i, 'v' FROM generate_series(1, 2000) i", "postgres")
    with strata.connect() as long_tx:
        long_tx.execute("BEGIN")
        long_tx.execute("INSERT INTO span VALUES (-1, 'early')")
        long_tx.execute("UPDATE span SET v = 'changed early' WHERE id = 1")
        _, t1 = strata.point()
        _run(strata, "UPDATE span SET v = 'later' WHERE id = 2000", "postgres")
        long_tx.execute("COMMIT")
    _, t2 = strata.point()
    res = strata.cli("diff", "--from", t1, "--to", t2, "--table", "span", "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    (t,) = doc["tables"]
    assert [a["key"] for a in t["added"]] == [{"id": "-1"}]
    assert [c["key"] for c in t["changed"]] == [{"id": "1"}, {"id": "2000"}]
    if store_readable():
        assert t["mode"] == "changed pages"
        assert any("running at the first point committed" in n for n in doc["notes"])
    else:
        assert t["mode"] == "full"
