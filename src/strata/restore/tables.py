"""Tables as a historical server shows them at a point: their catalog facts and
the rows of chosen heap blocks, every value as the server writes it (text).

What it is: `TableInfo` (identity by OID, storage location, columns, key
columns) read by `tables_at`, and `read_rows`, which fetches the visible rows
of a table, or only those on some blocks through TID range scans (``ctid >=
'(a,0)' AND ctid < '(b,0)'``: the server reads those pages only).
Fed by: connections to historical servers (`restore.endpoint`). Feeds: diff
and row history. Owns: which rows identify themselves by a key (the primary
key, else the replica identity index, else a unique index on NOT NULL columns
without expressions or predicate) and which are compared whole.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from strata.restore.script import qualified, quote_ident

MAX_RANGES = 200  # TID ranges per statement

TABLES_SQL = """
SELECT c.oid, n.nspname, c.relname, c.relkind::text,
       pg_catalog.pg_relation_filenode(c.oid),
       CASE WHEN c.reltablespace = 0 THEN d.dattablespace ELSE c.reltablespace END,
       d.oid, c.relpersistence::text
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_database d ON d.datname = pg_catalog.current_database()
WHERE c.relkind IN ('r', 'm')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
  AND n.nspname NOT LIKE 'pg_temp%%' AND n.nspname NOT LIKE 'pg_toast_temp%%'
  AND (%(oid)s::oid IS NULL OR c.oid = %(oid)s::oid)
ORDER BY n.nspname, c.relname
"""
COLUMNS_SQL = """
SELECT a.attrelid, a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod),
       a.attgenerated::text, a.attidentity::text
FROM pg_catalog.pg_attribute a
WHERE a.attrelid = ANY(%s) AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attrelid, a.attnum
"""
KEYS_SQL = """
SELECT DISTINCT ON (i.indrelid) i.indrelid,
       ARRAY(SELECT a.attname FROM pg_catalog.unnest(i.indkey::int2[]) WITH ORDINALITY k(n, o)
             JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.n
             ORDER BY k.o)
FROM pg_catalog.pg_index i
WHERE i.indrelid = ANY(%s) AND i.indisunique AND i.indisvalid AND i.indexprs IS NULL
  AND i.indpred IS NULL
  AND NOT EXISTS (SELECT 1 FROM pg_catalog.unnest(i.indkey::int2[]) k(n)
                  JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.n
                  WHERE NOT a.attnotnull)
ORDER BY i.indrelid, i.indisprimary DESC, i.indisreplident DESC, i.indexrelid
"""


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type: str
    generated: str  # '' | 's' (stored) | 'v' (virtual)
    identity: str  # '' | 'a' (always) | 'd' (by default)


@dataclass(frozen=True, slots=True)
class TableInfo:
    oid: int
    schema: str
    name: str
    relkind: str
    filenode: int
    spc: int
    db: int
    persistence: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]  # empty: rows are compared whole

    @property
    def qname(self) -> str:
        return qualified(self.schema, self.name)

    @property
    def display(self) -> str:
        return f"{self.schema}.{self.name}"


def text_rows(cur: Any) -> Iterator[tuple[str | None, ...]]:
    """The rows of an executed cursor, each value as the server wrote it."""
    res = cur.pgresult
    if res is None:
        return
    for i in range(res.ntuples):
        yield tuple(None if (v := res.get_value(i, j)) is None else bytes(v).decode()
                    for j in range(res.nfields))


def tables_at(conn: Any, oid: int | None = None) -> list[TableInfo]:
    """Every user table (or the one with `oid`) at the connection's point."""
    rows = conn.execute(TABLES_SQL, {"oid": oid}).fetchall()
    oids = [r[0] for r in rows]
    cols: dict[int, list[Column]] = {}
    for rel, name, typ, gen, ident in conn.execute(COLUMNS_SQL, (oids,)).fetchall():
        cols.setdefault(rel, []).append(Column(name, typ, gen, ident))
    keys = {r[0]: tuple(r[1]) for r in conn.execute(KEYS_SQL, (oids,)).fetchall()}
    return [TableInfo(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], tuple(cols.get(r[0], ())),
                      keys.get(r[0], ())) for r in rows]


def block_runs(blocks: Sequence[int]) -> list[tuple[int, int]]:
    """Sorted block numbers as half-open runs [a, b)."""
    runs: list[tuple[int, int]] = []
    for b in sorted(set(blocks)):
        if runs and runs[-1][1] == b:
            runs[-1] = (runs[-1][0], b + 1)
        else:
            runs.append((b, b + 1))
    return runs


def read_rows(conn: Any, table: TableInfo, columns: Sequence[str],
              blocks: Sequence[int] | None) -> Iterator[tuple[str | None, ...]]:
    """The visible rows of `table` (only those on `blocks` unless None), the
    values of `columns` in order."""
    cols = ", ".join(quote_ident(c) for c in columns) or "NULL"
    base = f"SELECT {cols} FROM ONLY {table.qname}"
    if blocks is None:
        yield from text_rows(conn.execute(base))
        return
    runs = block_runs(blocks)
    for i in range(0, len(runs), MAX_RANGES):
        parts = [f"{base} WHERE ctid >= '({a},0)'::pg_catalog.tid "
                 f"AND ctid < '({b},0)'::pg_catalog.tid" for a, b in runs[i:i + MAX_RANGES]]
        yield from text_rows(conn.execute(" UNION ALL ".join(parts)))


SEQUENCES_SQL = """
SELECT c.oid, n.nspname, c.relname, pg_catalog.pg_sequence_last_value(c.oid)::text
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'S' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg_temp%%' AND c.relpersistence <> 't'
"""
FOREIGN_KEYS_SQL = """
SELECT DISTINCT conrelid, confrelid FROM pg_catalog.pg_constraint
WHERE contype = 'f' AND conrelid <> confrelid
"""


@dataclass(frozen=True, slots=True)
class SequenceValue:
    oid: int
    schema: str
    name: str
    last_value: str | None  # None: not called since it was created or restarted

    @property
    def qname(self) -> str:
        return qualified(self.schema, self.name)


def sequences_at(conn: Any) -> dict[int, SequenceValue]:
    return {r[0]: SequenceValue(r[0], r[1], r[2], r[3])
            for r in conn.execute(SEQUENCES_SQL).fetchall()}


def foreign_keys_at(conn: Any) -> set[tuple[int, int]]:
    """(referencing table, referenced table) pairs."""
    return {(int(a), int(b)) for a, b in conn.execute(FOREIGN_KEYS_SQL).fetchall()}
