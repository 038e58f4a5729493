"""Diff results compared and rendered: rows by key or as multisets, text, JSON,
and the SQL script (literals, order of tables, what it leaves as comments)."""

from __future__ import annotations

import json

from strata.lsn import Lsn
from strata.restore.diff import DiffResult, TableDiff, compare_rows
from strata.restore.diffout import literal, render_json, render_sql, render_text
from strata.restore.endpoint import Point
from strata.restore.tables import Column, SequenceValue, TableInfo, block_runs


def test_compare_rows_by_key_and_as_multisets() -> None:
    cols = ["k", "v"]
    first = [("1", "a"), ("2", "b"), ("3", None)]
    second = [("1", "a"), ("2", "B"), ("4", "d")]
    assert compare_rows(cols, ["k"], first, second) == \
        ([("4", "d")], [("3", None)], [(("2", "b"), ("2", "B"))])
    bag1 = [("1", "x"), ("1", "x"), ("2", None)]
    bag2 = [("1", "x"), ("2", None), ("2", None)]
    assert compare_rows(cols, [], bag1, bag2) == ([("2", None)], [("1", "x")], [])


def test_block_runs() -> None:
    assert block_runs([5, 1, 2, 3, 9, 10, 2]) == [(1, 4), (5, 6), (9, 11)]
    assert block_runs([]) == []


def _table(oid: int, name: str, key: tuple[str, ...], *cols: Column) -> TableInfo:
    return TableInfo(oid, "public", name, "r", oid, 1663, 5, "p", cols, key)


def _result() -> DiffResult:
    parent = _table(1, "parent", ("id",), Column("id", "integer", "", "a"),
                    Column("name", "text", "", ""))
    child = _table(2, "child", (), Column("p", "integer", "", ""),
                   Column("g", "integer", "s", ""), Column("note", "text", "", ""))
    res = DiffResult("db", Point(Lsn(0x100), "LSN 0/100"), Point(Lsn(0x200), "LSN 0/200"))
    tp = TableDiff(parent, ["id", "name"], ("id",), "changed pages", 2)
    tp.added, tp.removed = [("3", "new")], [("2", "it's")]
    tp.changed = [(("1", "old"), ("1", "renamed"))]
    tc = TableDiff(child, ["p", "g", "note"], (), "full", None)
    tc.added, tc.removed = [("3", "6", None)], [("2", "4", "a\\b")]
    res.tables = [tc, tp]  # the child first: the script must order by foreign keys
    res.foreign_keys = {(2, 1)}
    res.sequences = [(SequenceValue(9, "public", "s", "41"), SequenceValue(9, "public", "s", "99"))]
    return res


def test_sql_script_orders_by_foreign_keys_and_quotes_exactly() -> None:
    lines = render_sql(_result()).splitlines()
    body = [ln for ln in lines if not ln.startswith("--")]
    assert body[:2] == ["SET standard_conforming_strings = on;", "BEGIN;"]
    assert body[2:] == [
        'DELETE FROM ONLY "public"."child" WHERE ctid = (SELECT ctid FROM ONLY "public"."child" '
        "WHERE pg_catalog.format('%s', \"p\") = '3' AND pg_catalog.format('%s', \"g\") = '6' AND "
        '"note" IS NULL LIMIT 1);',
        'DELETE FROM ONLY "public"."parent" WHERE "id" = \'3\';',
        'UPDATE ONLY "public"."parent" SET "name" = \'old\' WHERE "id" = \'1\';',
        'INSERT INTO "public"."parent" ("id", "name") OVERRIDING SYSTEM VALUE VALUES '
        "('2', 'it''s');",
        'INSERT INTO "public"."child" ("p", "note") VALUES (\'2\', \'a\\b\');',
        "SELECT pg_catalog.setval('\"public\".\"s\"', 41, true);",
        "COMMIT;",
    ]


def test_text_and_json_say_the_same() -> None:
    res = _result()
    text = render_text(res)
    assert "table public.parent (changed pages, 2 changed page(s) read): 1 added, 1 removed, " \
        "1 changed" in text
    assert "  ~ id=1: name" in text and "  + id=3" in text
    assert "sequence public.s: 41 -> 99" in text
    doc = json.loads(render_json(res))
    parent = next(t for t in doc["tables"] if t["table"] == "public.parent")
    assert parent["changed"] == [{"key": {"id": "1"}, "columns": {"name": ["old", "renamed"]}}]
    assert parent["removed"] == [{"key": {"id": "2"}, "row": {"id": "2", "name": "it's"}}]
    child = next(t for t in doc["tables"] if t["table"] == "public.child")
    assert child["added"][0]["key"] == {"p": "3", "g": "6", "note": None}
    assert doc["from"]["lsn"] == "0/100" and doc["sequences"][0]["to"] == "99"


def test_literal() -> None:
    assert literal(None) == "NULL"
    assert literal("a'b\\c") == "'a''b\\c'"


def test_xids_before_the_next_one_across_an_epoch() -> None:
    from strata.restore.diff import full_xid, xid_precedes

    nxt = (3 << 32) | 100
    assert xid_precedes(99, nxt) and xid_precedes(0xFFFFFFF0, nxt)
    assert not xid_precedes(100, nxt) and not xid_precedes(101, nxt)
    assert full_xid(99, nxt) == (3 << 32) | 99
    assert full_xid(0xFFFFFFF0, nxt) == (2 << 32) | 0xFFFFFFF0
