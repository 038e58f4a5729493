"""A diff as text, as JSON, or as a SQL script that turns the second point's
data back into the first's.

What it is: `render_text`, `render_json` and `render_sql` over a
`restore.diff.DiffResult`.
Fed by: `cli/diff.py`. Feeds: stdout. Owns: the JSON shape and the script's
rules:

- one transaction; rows added since are deleted (referencing tables first),
  rows changed since get their first values back (only the changed columns),
  rows removed since are inserted again (referenced tables first);
  sequences get their value at the first point back;
- rows are found by key (``k = 'v'``), or, without a key, one row whose
  every column prints as the old row's does (``format('%s', c)``);
- values are string literals of the text the server printed, so every type
  reads back exactly; generated columns are never written and identity
  columns are written with OVERRIDING SYSTEM VALUE;
- what data cannot undo is a comment: DDL between the points, tables
  dropped since (``strata restore --table`` brings one back) or created
  since, materialized views, unlogged tables.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from strata.restore.diff import DiffResult, Row, TableDiff
from strata.restore.script import quote_ident
from strata.restore.tables import TableInfo


def literal(v: str | None) -> str:
    return "NULL" if v is None else "'" + v.replace("'", "''") + "'"


def _key_text(td: TableDiff, row: Row) -> str:
    cols = td.key or tuple(td.columns)
    return ", ".join(f"{c}={row[td.columns.index(c)]!s}" for c in cols)


# -- text -------------------------------------------------------------------------------


def render_text(res: DiffResult) -> str:
    out = [f"diff of database {res.database}", f"  from {res.first}", f"  to   {res.second}"]
    for n in res.notes:
        out.append(f"note: {n}")
    if res.ddl:
        out.append("DDL:")
        sign = {"added": "+", "removed": "-", "changed": "~"}
        out += [f"  {sign[d.change]} {d.what}" for d in res.ddl]
    for t in res.only_first:
        out.append(f"table {t.display}: dropped since")
    for t in res.only_second:
        out.append(f"table {t.display}: created since")
    for td in res.tables:
        pages = "all pages" if td.pages is None else f"{td.pages} changed page(s)"
        if not td and not td.notes:
            continue
        out.append(f"table {td.table.display} ({td.mode}, {pages} read): {len(td.added)} added, "
                   f"{len(td.removed)} removed, {len(td.changed)} changed")
        out += [f"  note: {n}" for n in td.notes]
        out += [f"  + {_key_text(td, r)}" for r in td.added]
        out += [f"  - {_key_text(td, r)}" for r in td.removed]
        out += [f"  ~ {_key_text(td, new)}: {', '.join(td.changed_columns(old, new))}"
                for old, new in td.changed]
    for a, b in res.sequences:
        out.append(f"sequence {a.schema}.{a.name}: {a.last_value} -> {b.last_value}")
    return "\n".join(out) + "\n"


# -- JSON -------------------------------------------------------------------------------


def _point(p: Any) -> dict[str, Any]:
    return {"lsn": str(p.lsn), "description": str(p)}


def _row(td: TableDiff, row: Row) -> dict[str, str | None]:
    return dict(zip(td.columns, row, strict=True))


def _table_json(td: TableDiff) -> dict[str, Any]:
    def key(row: Row) -> dict[str, str | None]:
        return {c: row[td.columns.index(c)] for c in td.key} if td.key else _row(td, row)

    return {
        "table": td.table.display, "mode": td.mode, "pages": td.pages, "key": list(td.key),
        "rows_read": td.rows_read, "notes": td.notes,
        "added": [{"key": key(r), "row": _row(td, r)} for r in td.added],
        "removed": [{"key": key(r), "row": _row(td, r)} for r in td.removed],
        "changed": [{"key": key(new), "columns": {c: [old[td.columns.index(c)],
                                                      new[td.columns.index(c)]]
                                                  for c in td.changed_columns(old, new)}}
                    for old, new in td.changed],
    }


def render_json(res: DiffResult) -> str:
    doc = {
        "database": res.database, "from": _point(res.first), "to": _point(res.second),
        "notes": res.notes,
        "ddl": [{"change": d.change, "object": d.what, "before": list(d.before),
                 "after": list(d.after)} for d in res.ddl],
        "dropped_tables": [t.display for t in res.only_first],
        "created_tables": [t.display for t in res.only_second],
        "tables": [_table_json(td) for td in res.tables if td or td.notes],
        "sequences": [{"sequence": f"{a.schema}.{a.name}", "from": a.last_value,
                       "to": b.last_value} for a, b in res.sequences],
    }
    return json.dumps(doc, indent=2) + "\n"


# -- SQL --------------------------------------------------------------------------------


def _fk_order(res: DiffResult) -> list[TableDiff]:
    """Tables with referenced ones first (a cycle keeps its given order)."""
    by_oid = {td.table.oid: td for td in res.tables}
    done: list[TableDiff] = []
    seen: set[int] = set()

    def visit(oid: int, path: set[int]) -> None:
        if oid in seen or oid in path or oid not in by_oid:
            return
        path.add(oid)
        for child, parent in sorted(res.foreign_keys):
            if child == oid:
                visit(parent, path)
        seen.add(oid)
        done.append(by_oid[oid])

    for td in res.tables:
        visit(td.table.oid, set())
    return done


def _where(td: TableDiff, row: Row) -> str:
    if td.key:
        return " AND ".join(f"{quote_ident(c)} = {literal(row[td.columns.index(c)])}"
                            for c in td.key)
    parts = [f"{quote_ident(c)} IS NULL" if v is None
             else f"pg_catalog.format('%s', {quote_ident(c)}) = {literal(v)}"
             for c, v in zip(td.columns, row, strict=True)]
    t = td.table.qname
    return (f"ctid = (SELECT ctid FROM ONLY {t} WHERE {' AND '.join(parts) or 'true'} "
            "LIMIT 1)")


def _writable(t: TableInfo, columns: list[str]) -> list[str]:
    gen = {c.name for c in t.columns if c.generated}
    return [c for c in columns if c not in gen]


def _table_sql(td: TableDiff, phase: str) -> Iterator[str]:
    t = td.table
    if phase == "delete":
        for r in td.added:
            yield f"DELETE FROM ONLY {t.qname} WHERE {_where(td, r)};"
    elif phase == "update":
        always = {c.name for c in t.columns if c.identity == "a"}
        writable = set(_writable(t, td.columns))
        for old, new in td.changed:
            cols = [c for c in td.changed_columns(old, new) if c in writable]
            skipped = [c for c in cols if c in always]
            cols = [c for c in cols if c not in always]
            if skipped:
                yield f"-- {t.display} {_key_text(td, new)}: identity column(s) {skipped} cannot be set"
            if cols:
                sets = ", ".join(f"{quote_ident(c)} = {literal(old[td.columns.index(c)])}"
                                 for c in cols)
                yield f"UPDATE ONLY {t.qname} SET {sets} WHERE {_where(td, new)};"
    else:
        cols = _writable(t, td.columns)
        over = " OVERRIDING SYSTEM VALUE" if any(c.identity for c in t.columns) else ""
        names = ", ".join(quote_ident(c) for c in cols)
        for r in td.removed:
            vals = ", ".join(literal(r[td.columns.index(c)]) for c in cols)
            yield f"INSERT INTO {t.qname} ({names}){over} VALUES ({vals});"


def render_sql(res: DiffResult) -> str:
    out = [f"-- strata diff: turns the data of database {res.database} at {res.second}",
           f"-- back into its data at {res.first}",
           "SET standard_conforming_strings = on;", "BEGIN;"]
    out += [f"-- DDL {d.change} since: {d.what} (not undone by this script)" for d in res.ddl]
    out += [f"-- table {t.display} was dropped since: strata restore --table {t.display} "
            f"--at '{res.first.lsn}'" for t in res.only_first]
    out += [f"-- table {t.display} was created since (left as it is)" for t in res.only_second]
    ordered = _fk_order(res)
    for td in ordered:
        out += [f"-- {td.table.display}: {n}" for n in td.notes]
    scripted = [td for td in ordered if td.table.relkind == "r"]
    out += [f"-- materialized view {td.table.display} differs: REFRESH it when its tables are "
            "back" for td in ordered if td.table.relkind != "r" and td]
    for td in reversed(scripted):
        out += list(_table_sql(td, "delete"))
    for td in scripted:
        out += list(_table_sql(td, "update"))
    for td in scripted:
        out += list(_table_sql(td, "insert"))
    for a, _ in res.sequences:
        out.append(f"SELECT pg_catalog.setval({literal(a.qname)}, {a.last_value}, true);"
                   if a.last_value is not None else f"ALTER SEQUENCE {a.qname} RESTART;")
    out.append("COMMIT;")
    return "\n".join(out) + "\n"
