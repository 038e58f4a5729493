"""`strata restore` end to end on the real primary: a dropped table, one restored
next to or over the live one, a schema, a dropped database; and what could not
come back. The oracles are PostgreSQL's: the workload fingerprint (rows as text,
columns, sequences) and pg_dump --schema-only of the object (its definition:
indexes, constraints, triggers, comments, owner, grants, identity, defaults)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.restore_helpers import Strata, start_strata
from tests.e2e.workload import fingerprint, first_difference

pytestmark = pytest.mark.e2e

SHOP = """
DO $$BEGIN CREATE ROLE shop_owner; EXCEPTION WHEN duplicate_object THEN NULL; END$$;
DO $$BEGIN CREATE ROLE shop_reader; EXCEPTION WHEN duplicate_object THEN NULL; END$$;
CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL);
INSERT INTO customers SELECT i, 'customer ' || i FROM generate_series(1, 20) i;
CREATE FUNCTION orders_touch() RETURNS trigger LANGUAGE plpgsql AS
  $$BEGIN NEW.note := coalesce(NEW.note, 'touched'); RETURN NEW; END$$;
CREATE TABLE orders (
  id serial PRIMARY KEY,
  customer int NOT NULL REFERENCES customers,
  note text DEFAULT 'new' CHECK (note <> ''),
  amount numeric(10, 2),
  doubled numeric GENERATED ALWAYS AS (amount * 2) STORED,
  ref int GENERATED ALWAYS AS IDENTITY (START WITH 100),
  body text,
  UNIQUE (customer, ref));
CREATE INDEX orders_note_idx ON orders (note) WHERE note IS NOT NULL;
CREATE INDEX orders_lower_idx ON orders (lower(left(body, 20)));
CREATE TRIGGER orders_touch BEFORE INSERT ON orders FOR EACH ROW EXECUTE FUNCTION orders_touch();
COMMENT ON TABLE orders IS 'orders; with a comment';
COMMENT ON COLUMN orders.note IS 'a note';
ALTER TABLE orders OWNER TO shop_owner;
GRANT SELECT ON orders TO shop_reader;
INSERT INTO orders (customer, note, amount, body)
  SELECT 1 + i % 20, CASE WHEN i % 3 = 0 THEN NULL ELSE 'n' || i END, i * 1.5,
         CASE WHEN i % 10 = 0 THEN (SELECT string_agg(md5(random()::text || j), '')
                                     FROM generate_series(1, 400) j)
              ELSE 'short ' || i END
  FROM generate_series(1, 300) i;
DELETE FROM orders WHERE id % 7 = 0;
UPDATE orders SET amount = amount + 1 WHERE id % 5 = 0;
"""


@pytest.fixture(scope="module")
def strata(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Strata]:
    from tests.conftest import _scratch

    yield from start_strata(_scratch("restore-"))


def _run_sql(s: Strata, sql: str, db: str = "postgres") -> None:
    import pglast

    with s.connect(db) as c:
        for stmt in pglast.split(sql):
            c.execute(stmt)


def test_dropped_table_comes_back_as_it_was(strata: Strata) -> None:
    _run_sql(strata, SHOP)
    with strata.connect() as c:
        before = fingerprint(c)
        toasted = c.execute("SELECT count(*) FROM orders WHERE pg_column_size(body) > 2000"
                            ).fetchone()[0]
    assert toasted > 0
    definition = strata.schema_dump("postgres", "-t", "public.orders")
    when, _ = strata.point()
    with strata.connect() as c:
        c.execute("INSERT INTO orders (customer, amount) VALUES (1, 1)")  # after the point
        c.execute("DROP TABLE orders")
    strata.sync()

    res = strata.cli("restore", "--table", "public.orders", "--at", when)
    assert res.returncode == 0, res.stderr
    assert "restored table public.orders as it was at LSN" in res.stdout
    assert "could not come back" not in res.stdout, res.stdout
    with strata.connect() as c:
        assert first_difference(before, fingerprint(c)) is None
        # identity and sequences go on from their value at the point
        c.execute("INSERT INTO orders (customer, amount) VALUES (2, 2)")
    assert strata.schema_dump("postgres", "-t", "public.orders") == definition


def test_restore_next_to_the_live_table_with_as(strata: Strata) -> None:
    with strata.connect() as c:
        if c.execute("SELECT to_regclass('public.orders') IS NULL").fetchone()[0]:
            pytest.skip("needs test_dropped_table_comes_back_as_it_was")
        then = fingerprint(c)["public.orders"]
    _, lsn = strata.point()
    with strata.connect() as c:
        c.execute("UPDATE orders SET note = 'changed' WHERE id < 50")
        live = fingerprint(c)["public.orders"]
    strata.sync()
    res = strata.cli("restore", "--table", "orders", "--at", lsn, "--as", "orders_then")
    assert res.returncode == 0, res.stderr
    assert 'as "public"."orders_then"' in res.stdout
    with strata.connect() as c:
        fp = fingerprint(c)
        assert fp["public.orders_then"] == then
        assert fp["public.orders"] == live
        idx = {r[0] for r in c.execute("SELECT indexname FROM pg_indexes WHERE tablename = "
                                       "'orders_then'")}
        assert idx == {"orders_then_pkey", "orders_then_customer_ref_key",
                       "orders_then_note_idx", "orders_then_lower_idx"}
        seq = c.execute("SELECT pg_get_serial_sequence('orders_then', 'id')").fetchone()[0]
        assert seq == "public.orders_then_id_seq"
        assert c.execute("SELECT count(*) FROM pg_namespace WHERE nspname LIKE "
                         "'strata_restore_%'").fetchone()[0] == 0


def test_replace_swaps_the_live_table_in_one_transaction(strata: Strata) -> None:
    _run_sql(strata, """
CREATE TABLE parents (id int PRIMARY KEY, v text);
CREATE TABLE kids (id int PRIMARY KEY, parent int REFERENCES parents);
INSERT INTO parents SELECT i, 'v' || i FROM generate_series(1, 10) i;
INSERT INTO kids SELECT i, i FROM generate_series(1, 5) i;
""")
    with strata.connect() as c:
        then = fingerprint(c)["public.parents"]
    _, lsn = strata.point()
    with strata.connect() as c:
        c.execute("UPDATE parents SET v = 'bad'")
        c.execute("DELETE FROM parents WHERE id > 5")
    strata.sync()
    res = strata.cli("restore", "--table", "parents", "--at", lsn)
    assert res.returncode == 1 and "--replace" in res.stderr
    res = strata.cli("restore", "--table", "parents", "--at", lsn, "--replace")
    assert res.returncode == 0, res.stderr
    with strata.connect() as c:
        assert fingerprint(c)["public.parents"] == then
        # the foreign key of kids was added back and points at the restored table
        ref = c.execute("SELECT confrelid::regclass::text FROM pg_constraint "
                        "WHERE conrelid = 'kids'::regclass AND contype = 'f'").fetchone()
        assert ref == ("parents",)


def test_what_could_not_come_back_is_reported(strata: Strata) -> None:
    _run_sql(strata, """
CREATE ROLE gone_owner;
CREATE TABLE anchor (id int PRIMARY KEY);
INSERT INTO anchor VALUES (1);
CREATE FUNCTION audit_fn() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NEW; END$$;
CREATE TABLE audited (id int PRIMARY KEY, a int REFERENCES anchor);
CREATE TRIGGER audited_t BEFORE UPDATE ON audited FOR EACH ROW EXECUTE FUNCTION audit_fn();
ALTER TABLE audited OWNER TO gone_owner;
INSERT INTO audited VALUES (1, 1), (2, NULL);
""")
    _, lsn = strata.point()
    _run_sql(strata, """
DROP TABLE audited;
DROP TABLE anchor;
DROP FUNCTION audit_fn();
DROP ROLE gone_owner;
""")
    strata.sync()
    res = strata.cli("restore", "--table", "audited", "--at", lsn)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "could not come back:" in out
    assert 'role "gone_owner" does not exist' in out
    assert "FK CONSTRAINT public.audited audited_a_fkey" in out
    assert 'relation "public.anchor" does not exist' in out
    assert "TRIGGER public.audited audited_t" in out
    assert "audit_fn() does not exist" in out
    with strata.connect() as c:
        assert c.execute("SELECT count(*) FROM audited").fetchone()[0] == 2


def test_schema_comes_back_and_next_to_itself(strata: Strata) -> None:
    _run_sql(strata, """
CREATE SCHEMA shop;
CREATE TYPE shop.mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN shop.positive AS int CHECK (VALUE > 0);
CREATE TABLE shop.items (id serial PRIMARY KEY, m shop.mood, qty shop.positive, tags text[]);
CREATE TABLE shop.lines (item int REFERENCES shop.items, n int);
CREATE VIEW shop.summary AS SELECT m, sum(qty) AS total FROM shop.items GROUP BY m;
CREATE MATERIALIZED VIEW shop.mv AS SELECT count(*) AS n FROM shop.items;
CREATE FUNCTION shop.total() RETURNS bigint LANGUAGE sql AS $$SELECT sum(qty) FROM shop.items$$;
INSERT INTO shop.items (m, qty, tags) SELECT 'ok', i, ARRAY['a', 'b"c'] FROM generate_series(1, 50) i;
INSERT INTO shop.lines SELECT i, i FROM generate_series(1, 50) i;
REFRESH MATERIALIZED VIEW shop.mv;
""")
    with strata.connect() as c:
        before = fingerprint(c)
    definition = strata.schema_dump("postgres", "-n", "shop")
    when, _ = strata.point()
    _run_sql(strata, "DROP SCHEMA shop CASCADE")
    strata.sync()
    res = strata.cli("restore", "--schema", "shop", "--at", when)
    assert res.returncode == 0, res.stderr
    with strata.connect() as c:
        assert first_difference(before, fingerprint(c)) is None
    assert strata.schema_dump("postgres", "-n", "shop") == definition

    res = strata.cli("restore", "--schema", "shop", "--at", when, "--as", "shop_then")
    assert res.returncode == 0, res.stderr
    assert "function bodies are restored as written" in res.stdout
    with strata.connect() as c:
        fp = fingerprint(c)
        for name in ("items", "lines", "mv"):
            assert fp[f"shop_then.{name}"][1] == before[f"shop.{name}"][1]
        assert c.execute("SELECT count(*) FROM shop_then.summary").fetchone()[0] == 1


def test_a_failure_half_way_leaves_nothing(strata: Strata) -> None:
    # kit's index calls a function of another schema, dropped since: the index
    # fails after the data was copied, and everything rolls back
    _run_sql(strata, """
CREATE SCHEMA kit;
CREATE SCHEMA kit_fns;
CREATE FUNCTION kit_fns.twice(int) RETURNS int IMMUTABLE LANGUAGE sql AS 'SELECT $1 * 2';
CREATE TABLE kit.a (id int PRIMARY KEY);
INSERT INTO kit.a SELECT generate_series(1, 1000);
CREATE INDEX a_twice ON kit.a (kit_fns.twice(id));
""")
    _, lsn = strata.point()
    _run_sql(strata, "DROP SCHEMA kit CASCADE; DROP SCHEMA kit_fns CASCADE")
    strata.sync()
    res = strata.cli("restore", "--schema", "kit", "--at", lsn)
    assert res.returncode == 1
    assert "copied kit.a (1000 rows" in res.stderr
    assert "INDEX kit.a_twice could not be restored" in res.stderr
    assert 'schema "kit_fns" does not exist' in res.stderr
    with strata.connect() as c:
        assert c.execute("SELECT count(*) FROM pg_namespace WHERE nspname = 'kit'"
                         ).fetchone()[0] == 0


def test_dropped_database_comes_back(strata: Strata) -> None:
    with strata.connect() as c:
        c.execute("CREATE DATABASE crm")
    _run_sql(strata, SHOP + "COMMENT ON DATABASE crm IS 'the crm';", db="crm")
    with strata.connect("crm") as c:
        before = fingerprint(c)
    definition = strata.schema_dump("crm")
    when, _ = strata.point()
    with strata.connect() as c:
        c.execute("DROP DATABASE crm")
    strata.sync()
    res = strata.cli("restore", "--database", "crm", "--at", when)
    assert res.returncode == 0, res.stderr
    with strata.connect("crm") as c:
        assert first_difference(before, fingerprint(c)) is None
        assert c.execute("SELECT shobj_description(oid, 'pg_database') FROM pg_database "
                         "WHERE datname = 'crm'").fetchone()[0] == "the crm"
    assert strata.schema_dump("crm") == definition
    res = strata.cli("restore", "--database", "crm", "--at", when)
    assert res.returncode == 1 and "exists in the present" in res.stderr
    res = strata.cli("restore", "--database", "crm", "--at", when, "--as", "crm_copy")
    assert res.returncode == 0, res.stderr
    with strata.connect("crm_copy") as c:
        assert first_difference(before, fingerprint(c)) is None
        assert c.execute("SELECT count(*) FROM pg_database WHERE datname LIKE "
                         "'strata_restore_%'").fetchone()[0] == 0


def test_clear_errors(strata: Strata) -> None:
    _, lsn = strata.point()
    res = strata.cli("restore", "--table", "no_such_table", "--at", lsn)
    assert res.returncode == 1
    assert "table no_such_table did not exist at" in res.stderr
    res = strata.cli("restore", "--table", "x", "--at", "2999-01-01 00:00+00")
    assert res.returncode == 1 and "in the future" in res.stderr
    res = strata.cli("restore", "--database", "nope", "--at", lsn)
    assert res.returncode == 1 and "nope" in res.stderr
    res = strata.cli("restore", "--database", "postgres", "--at", lsn, "--replace")
    assert res.returncode == 1 and "--replace does not apply" in res.stderr


def test_the_sql_form_acts_as_the_session_role(strata: Strata) -> None:
    from strata.errors import RestoreError
    from strata.restore.endpoint import Endpoint
    from strata.restore.plan import Kind, Request
    from strata.restore.sqlcall import SqlRestorer, run_call

    _run_sql(strata, """
CREATE ROLE clerk LOGIN;
GRANT strata_time_travel TO clerk;
GRANT CREATE ON SCHEMA public TO clerk;
CREATE TABLE ledger (id int PRIMARY KEY, v text);
INSERT INTO ledger SELECT i, 'v' || i FROM generate_series(1, 10) i;
GRANT SELECT ON ledger TO clerk;
CREATE TABLE vault (secret text);
INSERT INTO vault VALUES ('gold');
""")
    _, lsn = strata.point()
    _run_sql(strata, "DROP TABLE ledger; DROP TABLE vault")
    strata.sync()
    daemon = Endpoint.of_home(strata.home)
    restorer = SqlRestorer(strata.home, lambda: daemon.port, daemon.user, daemon.passfile)
    notices: list[str] = []
    lines = restorer(f"CALL strata.restore_table('public.ledger', '{lsn}')", "postgres",
                     "clerk", notices.append)
    assert lines[0].startswith("restored table public.ledger as it was at LSN")
    assert any("copied public.ledger (10 rows" in n for n in notices)
    # the present's rules are clerk's: the table is clerk's, the old owner's
    # OWNER TO is reported as not come back
    assert any('must be able to SET ROLE "postgres"' in ln or "permission denied" in ln
               for ln in lines), lines
    with strata.connect() as c:
        assert c.execute("SELECT tableowner FROM pg_tables WHERE tablename = 'ledger'"
                         ).fetchone() == ("clerk",)
    # the past's rules are clerk's too: it could not read vault then
    with pytest.raises(RestoreError, match="permission denied for table vault"):
        run_call(Request(Kind.TABLE, "public.vault", lsn), daemon, "clerk", notices.append)
    with strata.connect() as c:
        assert c.execute("SELECT to_regclass('public.vault')").fetchone() == (None,)


def test_odd_names_and_data_come_back(strata: Strata) -> None:
    _run_sql(strata, r"""
CREATE SCHEMA "Odd Schema";
CREATE TABLE "Odd Schema"."Wei;rd.Table" ("sp ace" int PRIMARY KEY, "Ünï" text,
  "x;y" text DEFAULT 'a;b');
CREATE INDEX "Wei;rd.Table_idx" ON "Odd Schema"."Wei;rd.Table" ("Ünï");
INSERT INTO "Odd Schema"."Wei;rd.Table" VALUES
  (1, E'tab\there\nnew line \\ back', E'\\.'), (2, '', NULL), (3, 'é☃', '--');
""")
    with strata.connect() as c:
        then = fingerprint(c)['Odd Schema.Wei;rd.Table']
    _, lsn = strata.point()
    # unquoted, a dot separates schema and name, as in SQL
    res = strata.cli("restore", "--table", '"Odd Schema"."Wei;rd.Table"', "--at", lsn,
                     "--as", 'Wei;rd.Then')
    assert res.returncode == 1 and "schema wei;rd (of --as Wei;rd.Then)" in res.stderr
    res = strata.cli("restore", "--table", '"Odd Schema"."Wei;rd.Table"', "--at", lsn,
                     "--as", '"Wei;rd.Then"')
    assert res.returncode == 0, res.stderr
    res = strata.cli("restore", "--schema", "Odd Schema", "--at", lsn, "--as", "Odd Copy")
    assert res.returncode == 0, res.stderr
    with strata.connect() as c:
        fp = fingerprint(c)
        assert fp['Odd Schema.Wei;rd.Then'] == then
        assert fp['Odd Copy.Wei;rd.Table'] == then
        idx = {r[0] for r in c.execute("SELECT indexname FROM pg_indexes WHERE schemaname = "
                                       "'Odd Schema'")}
        assert 'Wei;rd.Then_idx' in idx and 'Wei;rd.Table_idx' in idx
