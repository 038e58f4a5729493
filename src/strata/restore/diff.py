"""What changed between two points: rows added, removed and changed per table,
and the DDL in between.

What it is: `diff(endpoint, at1, at2, db, table, changes) -> DiffResult`.
Both points are resolved once; a historical server at each answers. Rows are
read only from the heap blocks that changed in (LSN1, LSN2] (`ChangeSource`,
from the layer map), on both sides, with TID range scans, and matched by key
(`restore.tables`): the cost follows the pages that changed, not the table's
size. The DDL is the difference of pg_dump --schema-only at both points,
entry by entry.
Fed by: `cli/diff.py`. Feeds: `restore.diffout` (text, JSON, SQL).
Owns: the rules that keep the page-level diff exact:

- a row that changed has its old version on a page that changed (its xmax is
  set there) and its new version on a page that changed (it was written
  there): rows outside the changed pages are the same at both points;
- that holds unless a transaction running at LSN1 commits by LSN2 (its
  earlier writes become visible without their pages changing after LSN1):
  then pages are looked for from the first record of the oldest such
  transaction (the first LSN where the cluster's next xid passed it), or,
  if that is older than the history kept, every table is compared in full;
  the result says which;
- a table whose storage was rewritten (VACUUM FULL, CLUSTER, TRUNCATE,
  ALTER TABLE rewriting it: another relfilenode) is compared in full;
- columns are compared by name among those both points have with the same
  type; rows are matched by the key both points share, else compared whole
  (a multiset: duplicates count).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from strata.errors import ConfigError, RestoreError
from strata.lsn import Lsn
from strata.restore.endpoint import Endpoint, Point, pg_error, resolve_point
from strata.restore.pgdump import PgDump, pattern
from strata.restore.tables import (
    SequenceValue,
    TableInfo,
    foreign_keys_at,
    read_rows,
    sequences_at,
    tables_at,
)
from strata.timemap.timemap import EndKind

Row = tuple[str | None, ...]


class ChangeSource(Protocol):
    def changed_blocks(self, spc: int, db: int, filenode: int, after: Lsn,
                       upto: Lsn) -> list[int] | None:
        """Main-fork blocks of the relation with a change in (after, upto];
        None when that cannot be known (then the table is compared in full)."""
        ...

    def next_full_xid(self, lsn: Lsn) -> int | None:
        """The cluster's next transaction id (with epoch) at `lsn`, or None."""
        ...

    def xid_start(self, full_xid: int, upto: Lsn) -> Lsn | None:
        """An LSN at or before the first WAL record of `full_xid`, or None."""
        ...


@dataclass
class TableDiff:
    table: TableInfo  # as at the second point
    columns: list[str]
    key: tuple[str, ...]
    mode: str  # "changed pages" | "rewritten" | "full"
    pages: int | None  # blocks read on each side (None: all)
    rows_read: int = 0
    added: list[Row] = field(default_factory=list)  # rows at the second point
    removed: list[Row] = field(default_factory=list)  # rows at the first point
    changed: list[tuple[Row, Row]] = field(default_factory=list)  # (first, second)
    notes: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)

    def changed_columns(self, old: Row, new: Row) -> list[str]:
        return [c for c, a, b in zip(self.columns, old, new, strict=True) if a != b]


@dataclass(frozen=True, slots=True)
class DdlChange:
    change: str  # "added" | "removed" | "changed"
    what: str  # the pg_dump entry: TYPE schema.name
    before: tuple[str, ...]
    after: tuple[str, ...]


@dataclass
class DiffResult:
    database: str
    first: Point
    second: Point
    tables: list[TableDiff] = field(default_factory=list)
    only_first: list[TableInfo] = field(default_factory=list)  # dropped since
    only_second: list[TableInfo] = field(default_factory=list)  # created since
    ddl: list[DdlChange] = field(default_factory=list)
    # sequences at both points whose value differs: (first, second)
    sequences: list[tuple[SequenceValue, SequenceValue]] = field(default_factory=list)
    foreign_keys: set[tuple[int, int]] = field(default_factory=set)  # (child, parent) OIDs
    notes: list[str] = field(default_factory=list)


def compare_rows(columns: Sequence[str], key: Sequence[str], first: Iterable[Row],
                 second: Iterable[Row]) -> tuple[list[Row], list[Row], list[tuple[Row, Row]]]:
    """(added, removed, changed) between two sets of rows of `columns`."""
    if not key:
        a, b = Counter(first), Counter(second)
        return sorted((b - a).elements(), key=_order), sorted((a - b).elements(), key=_order), []
    idx = [list(columns).index(k) for k in key]
    old = {tuple(r[i] for i in idx): r for r in first}
    new = {tuple(r[i] for i in idx): r for r in second}
    added = [new[k] for k in sorted(new.keys() - old.keys(), key=_order)]
    removed = [old[k] for k in sorted(old.keys() - new.keys(), key=_order)]
    changed = [(old[k], new[k]) for k in sorted(old.keys() & new.keys(), key=_order)
               if old[k] != new[k]]
    return added, removed, changed


def _order(row: Row) -> tuple[tuple[int, str], ...]:
    return tuple((0, "") if v is None else (1, v) for v in row)


def diff_table(c1: Any, c2: Any, a: TableInfo, b: TableInfo,
               blocks: list[int] | None, mode: str) -> TableDiff:
    """Rows of one table (same OID at both points), read from `blocks` only
    unless None."""
    types = {c.name: c.type for c in b.columns}
    columns = [c.name for c in a.columns if types.get(c.name) == c.type]
    key = a.key if a.key == b.key and set(a.key) <= set(columns) else ()
    td = TableDiff(b, columns, key, mode, None if blocks is None else len(blocks))
    if len(columns) != len(a.columns) or len(columns) != len(b.columns):
        td.notes.append("its columns changed: only the columns both points have with the "
                        "same type are compared")
    if a.persistence == "u" or b.persistence == "u":
        td.notes.append("unlogged: its rows are not in history")
        return td
    if blocks == []:
        return td
    first = list(read_rows(c1, a, columns, blocks))
    second = list(read_rows(c2, b, columns, blocks))
    td.rows_read = len(first) + len(second)
    td.added, td.removed, td.changed = compare_rows(columns, key, first, second)
    return td


def xid_precedes(xid: int, next_full: int) -> bool:
    """TransactionIdPrecedes(xid, next xid): modulo 2^32, as PostgreSQL compares."""
    return ((xid - (next_full & 0xFFFFFFFF)) & 0xFFFFFFFF) >= 0x80000000


def full_xid(xid: int, next_full: int) -> int:
    """A 32-bit xid that precedes `next_full`, as a full one (its epoch)."""
    epoch = next_full >> 32
    if xid >= (next_full & 0xFFFFFFFF):
        epoch -= 1
    return (epoch << 32) | xid


def _spanning_commits(ep: Endpoint, changes: ChangeSource | None, p1: Point,
                      p2: Point) -> list[int]:
    """Full xids of transactions that committed in (p1, p2] and had xids
    before p1: their writes before p1 became visible after it."""
    nxt = changes.next_full_xid(p1.lsn) if changes is not None else None
    if nxt is None:
        return []
    tm = ep.timemap()
    try:
        ends = [e for e in tm.entries() if p1.lsn < e.end_lsn <= p2.lsn
                and e.kind in (EndKind.COMMIT, EndKind.COMMIT_PREPARED)]
    finally:
        tm.close()
    return sorted(full_xid(e.xid, nxt) for e in ends if xid_precedes(e.xid, nxt))


def _changes_since(changes: ChangeSource | None, spanning: list[int], p1: Point,
                   notes: list[str]) -> Lsn | None:
    """Where changed pages must be looked for from: the first point, or, when
    transactions running there committed later, the first record of the oldest
    of them (their earlier writes become visible without their pages changing
    after the first point). None: unknown (tables are compared in full)."""
    if changes is None:
        return None
    if not spanning:
        return p1.lsn
    start = changes.xid_start(spanning[0], p1.lsn)
    if start is None:
        notes.append(f"{len(spanning)} transaction(s) running at the first point committed by "
                     "the second, the oldest before the history kept: every table is compared "
                     "in full")
        return None
    notes.append(f"{len(spanning)} transaction(s) running at the first point committed by the "
                 f"second: pages changed since their first record (LSN {start}) are read")
    return Lsn(start - 1)


def _table_oid(c1: Any, c2: Any, name: str, p1: Point, p2: Point) -> int:
    for c in (c2, c1):
        try:
            oid = c.execute("SELECT pg_catalog.to_regclass(%s)::oid", (name,)).fetchone()[0]
        except Exception as e:
            raise ConfigError(f"--table {name!r}: {pg_error(e)}") from e
        if oid is not None:
            return int(oid)
    raise RestoreError(f"table {name} exists neither at {p1} nor at {p2}")


def diff(ep: Endpoint, at1: str, at2: str, db: str = "postgres", table: str | None = None,
         changes: ChangeSource | None = None) -> DiffResult:
    p1, p2 = resolve_point(ep, at1, db), resolve_point(ep, at2, db)
    if p2.lsn < p1.lsn:
        raise ConfigError(f"--from ({p1}) is later than --to ({p2})")
    res = DiffResult(db, p1, p2)
    with ep.connect(db, at=p1.lsn) as c1, ep.connect(db, at=p2.lsn) as c2:
        oid = _table_oid(c1, c2, table, p1, p2) if table else None
        t1 = {t.oid: t for t in tables_at(c1, oid)}
        t2 = {t.oid: t for t in tables_at(c2, oid)}
        res.only_first = [t1[o] for o in t1.keys() - t2.keys()]
        res.only_second = [t2[o] for o in t2.keys() - t1.keys()]
        since = _changes_since(changes, _spanning_commits(ep, changes, p1, p2), p1, res.notes)
        res.foreign_keys = foreign_keys_at(c1) | foreign_keys_at(c2)
        if not table:
            s1, s2 = sequences_at(c1), sequences_at(c2)
            res.sequences = [(s1[o], s2[o]) for o in sorted(s1.keys() & s2.keys())
                             if s1[o].last_value != s2[o].last_value]
        for o in sorted(t1.keys() & t2.keys(), key=lambda o: (t2[o].schema, t2[o].name)):
            a, b = t1[o], t2[o]
            blocks: list[int] | None = None
            mode = "full"
            if (a.filenode, a.spc, a.db) != (b.filenode, b.spc, b.db):
                mode = "rewritten"
            elif since is not None and changes is not None:
                blocks = changes.changed_blocks(b.spc, b.db, b.filenode, since, p2.lsn)
                mode = "changed pages" if blocks is not None else "full"
            res.tables.append(diff_table(c1, c2, a, b, blocks, mode))
    selection = ["--table", pattern(res.tables[0].table.schema, res.tables[0].table.name)] \
        if table and res.tables else []
    if not table or res.tables:
        res.ddl = ddl_diff(ep, db, p1, p2, selection)
    return res


def _schema_entries(ep: Endpoint, db: str, lsn: Lsn, selection: list[str]
                    ) -> dict[str, tuple[str, ...]]:
    out: dict[str, tuple[str, ...]] = {}
    with PgDump(ep, db, lsn, ["--schema-only", *selection]) as pd:
        for e in pd.entries():
            if e.header.type != "PREAMBLE":
                what = e.header.describe()
                out[what] = out.get(what, ()) + tuple(e.statements)
        pd.finish()
    return out


def ddl_diff(ep: Endpoint, db: str, p1: Point, p2: Point,
             selection: list[str]) -> list[DdlChange]:
    """The schema objects added, removed or changed between the points."""
    if p1.lsn == p2.lsn:
        return []
    a = _schema_entries(ep, db, p1.lsn, selection)
    b = _schema_entries(ep, db, p2.lsn, selection)
    out = []
    for what in sorted(a.keys() | b.keys()):
        before, after = a.get(what, ()), b.get(what, ())
        if before != after:
            change = "added" if not before else "removed" if not after else "changed"
            out.append(DdlChange(change, what, before, after))
    return out
