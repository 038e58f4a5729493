"""Every version of some rows between two points, with the commit that made it.

What it is: `history(endpoint, table, where, at1, at2, db, pages) ->
HistoryResult`. The versions visible at the first point come from its
historical server (``SELECT ... WHERE <where>``); every version written
after it comes from the heap pages that changed in between: each page is
read at each LSN it changed at (`restore.changes`), its tuples decoded
(`restore.heappage`), their values turned into typed binary parameters
(`restore.datums`) and the WHERE clause evaluated on them by the second
point's server, which also prints them. Commits come from the time map
(top-level transactions) or pg_xact in the store (subtransactions).
Fed by: `cli/history.py`. Feeds: its output. Owns: the version rules:

- a version is a tuple (block, item, xmin); it lives from its xmin's commit
  to its xmax's commit (a deleting or updating xmax: not a lock; for a
  multixact, its updating member);
- only versions created after the first point, or visible at it, count; a
  version of an aborted or still running transaction never does;
- only pages that changed between the points are read, each at the LSNs of
  its changes; the table must keep its storage in between (a rewrite by
  VACUUM FULL, CLUSTER or TRUNCATE ends what can be followed: give a later
  --from);
- an out-of-line (TOAST) value is read where the first or the second point
  still has it; otherwise the version shows it as NULL with a note.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from strata.errors import ConfigError, RestoreError
from strata.key import SlruKind
from strata.lsn import Lsn
from strata.pg.slru import XidStatus, clog_get_status, clog_page
from strata.restore.datums import Datums, enums_at, types_at
from strata.restore.endpoint import Endpoint, Point, pg_error, resolve_point
from strata.restore.heappage import (
    HEAP_XMAX_IS_MULTI,
    Attr,
    HeapTuple,
    Missing,
    Toasted,
    attributes,
    heap_tuples,
)
from strata.restore.script import quote_ident
from strata.restore.tables import TableInfo, tables_at, text_rows
from strata.timemap.timemap import EndKind, TimeMap

MAX_PARAMS = 60000


class PageSource(Protocol):
    def changed_pages(self, spc: int, db: int, filenode: int, after: Lsn,
                      upto: Lsn) -> dict[int, list[int]]: ...

    def page(self, spc: int, db: int, filenode: int, blk: int, lsn: Lsn) -> bytes | None: ...

    def slru_changes(self, slru: int, pageno: int, upto: Lsn) -> list[int]: ...

    def slru_page(self, slru: int, pageno: int, lsn: Lsn) -> bytes | None: ...


@dataclass(frozen=True, slots=True)
class Commit:
    xid: int  # the transaction in the tuple (a subtransaction's own xid)
    lsn: Lsn | None  # end of the commit record; None: before history
    time: datetime | None
    top_xid: int | None = None

    def __str__(self) -> str:
        if self.lsn is None:
            return f"xid {self.xid} (committed before history starts)"
        sub = f" (in transaction {self.top_xid})" if self.top_xid not in (None, self.xid) else ""
        when = self.time.isoformat() if self.time else "?"
        return f"xid {self.xid}{sub} at {when} (LSN {self.lsn})"


@dataclass
class Version:
    ctid: tuple[int, int]
    xmin: int
    values: tuple[str | None, ...]
    created: Commit | None  # None: visible at the first point, made before it
    ended: Commit | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class HistoryResult:
    table: TableInfo
    where: str
    first: Point
    second: Point
    columns: list[str]
    versions: list[Version] = field(default_factory=list)
    pages_read: int = 0
    notes: list[str] = field(default_factory=list)


class Commits:
    """xid -> its commit, from the time map, else from pg_xact in the store."""

    def __init__(self, timemap: TimeMap, pages: PageSource | None, upto: Lsn) -> None:
        self.upto = upto
        self.pages = pages
        self.by_xid: dict[int, Any] = {}
        self.by_end: dict[int, Any] = {}
        for e in timemap.entries():
            if e.end_lsn <= upto:
                self.by_xid[e.xid] = e
                self.by_end[int(e.end_lsn)] = e
        self.cache: dict[int, Commit | None] = {}

    def of(self, xid: int) -> Commit | None:
        """The commit of `xid` at or before `upto`; None if it did not commit."""
        if xid not in self.cache:
            self.cache[xid] = self._lookup(xid)
        return self.cache[xid]

    def _lookup(self, xid: int) -> Commit | None:
        if xid == 2:  # FrozenTransactionId
            return Commit(xid, None, None)
        e = self.by_xid.get(xid)
        if e is not None:
            ok = e.kind in (EndKind.COMMIT, EndKind.COMMIT_PREPARED)
            return Commit(xid, e.end_lsn, e.time, e.xid) if ok else None
        if self.pages is None:
            return None
        return self._from_clog(xid)

    def _from_clog(self, xid: int) -> Commit | None:
        """The first change of xid's pg_xact page after which it reads committed."""
        assert self.pages is not None
        pageno = clog_page(xid)
        lsns = self.pages.slru_changes(SlruKind.XACT, pageno, self.upto)

        def committed(i: int) -> bool:
            page = self.pages.slru_page(SlruKind.XACT, pageno, Lsn(lsns[i]))  # type: ignore[union-attr]
            return page is not None and clog_get_status(page, xid) == XidStatus.COMMITTED

        if not lsns or not committed(len(lsns) - 1):
            return None
        i = bisect.bisect_left(range(len(lsns)), True, key=committed)
        if i == 0:
            before = self.pages.slru_page(SlruKind.XACT, pageno, Lsn(lsns[0] - 1))
            if before is None or clog_get_status(before, xid) == XidStatus.COMMITTED:
                return Commit(xid, None, None)  # committed before the page's first change
        e = self.by_end.get(lsns[i])
        return Commit(xid, Lsn(lsns[i]), e.time if e else None, e.xid if e else None)


ATTRS_SQL = """
SELECT a.attnum, a.attname, a.attlen, a.attalign::text, a.attbyval, a.attisdropped, a.atttypid,
       CASE WHEN a.atthasmissing THEN (a.attmissingval::text::text[])[1] END
FROM pg_catalog.pg_attribute a WHERE a.attrelid = %s AND a.attnum > 0 ORDER BY a.attnum
"""


@dataclass
class Layout:
    """How to read the table's tuples and print its columns (as at the second point)."""

    attrs: list[Attr]
    columns: list[tuple[int, str, int, str | None]]  # (index in attrs, name, type, missing)
    datums: Datums


def layout_at(conn: Any, table: TableInfo) -> Layout:
    rows = conn.execute(ATTRS_SQL, (table.oid,)).fetchall()
    attrs = [Attr(r[0], r[2], r[3], r[4]) for r in rows]
    columns = [(i, r[1], int(r[6]), r[7]) for i, r in enumerate(rows) if not r[5]]
    types = types_at(conn, {t for _, _, t, _ in columns})
    return Layout(attrs, columns, Datums(types, enums_at(conn)))


def sql_toast(conns: Sequence[Any]) -> Callable[[int, int], bytes | None]:
    """Fetch an out-of-line value's chunks from the first server that still has it."""
    names: dict[int, str] = {}

    def fetch(toastrelid: int, valueid: int) -> bytes | None:
        for c in conns:
            if toastrelid not in names:
                row = c.execute("SELECT pg_catalog.quote_ident(n.nspname) || '.' || "
                                "pg_catalog.quote_ident(r.relname) FROM pg_catalog.pg_class r "
                                "JOIN pg_catalog.pg_namespace n ON n.oid = r.relnamespace "
                                "WHERE r.oid = %s", (toastrelid,)).fetchone()
                if row is None:
                    continue
                names[toastrelid] = row[0]
            chunks = c.execute(f"SELECT chunk_data FROM {names[toastrelid]} WHERE chunk_id = %s "
                               "ORDER BY chunk_seq", (valueid,)).fetchall()
            if chunks:
                return b"".join(bytes(ch[0]) for ch in chunks)
        return None

    return fetch


def evaluate(conn: Any, lay: Layout, rows: list[list[bytes | None]], where: str,
             table: str) -> dict[int, tuple[str | None, ...]]:
    """Index -> printed values of the decoded rows that satisfy `where`, by the
    server on `conn` (the rows travel as typed binary parameters)."""
    per = len(lay.columns) + 1
    out: dict[int, tuple[str | None, ...]] = {}
    names = ", ".join(quote_ident(n) for _, n, _, _ in lay.columns)
    batch = max(1, MAX_PARAMS // per)
    for b0 in range(0, len(rows), batch):
        chunk = rows[b0:b0 + batch]
        params: list[bytes | None] = []
        types: list[int] = []
        formats: list[int] = []
        tuples = []
        for j, raw in enumerate(chunk):
            base = len(params)
            params.append(str(b0 + j).encode())
            types.append(23)
            formats.append(0)
            for i, name, typ, missing in lay.columns:
                v = raw[i]
                types.append(typ)
                if isinstance(v, Missing) and missing is not None:
                    params.append(missing.encode())  # text: the type's input reads it
                    formats.append(0)
                elif v is None or isinstance(v, Missing | Toasted):
                    params.append(None)
                    formats.append(1)
                else:
                    params.append(lay.datums.send(typ, v, f"{table}.{name}"))
                    formats.append(1)
            tuples.append("(" + ", ".join(f"${base + k + 1}" for k in range(per)) + ")")
        sql = (f"SELECT \"__strata_i\", {names} FROM (VALUES {', '.join(tuples)}) AS "
               f"v(\"__strata_i\", {names}) WHERE {where}")
        res = conn.pgconn.exec_params(sql.encode(), params, types, formats, 0)
        if res.error_message:
            raise RestoreError(f"evaluating --where on {table}: "
                               f"{res.error_message.decode(errors='replace').strip()}")
        for i in range(res.ntuples):
            vals = [res.get_value(i, k) for k in range(res.nfields)]
            out[int(bytes(vals[0]).decode())] = tuple(
                None if v is None else bytes(v).decode() for v in vals[1:])
    return out


def _page_versions(pages: PageSource, t: TableInfo, p1: Point, p2: Point
                   ) -> tuple[dict[tuple[int, int, int], HeapTuple], int]:
    """The newest sight of every tuple on the pages that changed in (p1, p2],
    each page read at each LSN it changed at; and how many pages were read."""
    seen: dict[tuple[int, int, int], HeapTuple] = {}
    n = 0
    changed = pages.changed_pages(t.spc, t.db, t.filenode, p1.lsn, p2.lsn)
    for blk in sorted(changed):
        for lsn in changed[blk]:
            page = pages.page(t.spc, t.db, t.filenode, blk, Lsn(lsn))
            n += 1
            for tup in heap_tuples(page) if page is not None else ():
                seen[(blk, tup.offnum, tup.xmin)] = tup
    return seen, n


def _updater(c2: Any, tup: HeapTuple) -> int | None:
    """The transaction that deleted or updated `tup` (a multixact's updating member)."""
    if not tup.xmax_updates:
        return None
    if not tup.infomask & HEAP_XMAX_IS_MULTI:
        return tup.xmax
    rows = c2.execute("SELECT xid::text FROM pg_catalog.pg_get_multixact_members(%s::xid) "
                      "WHERE mode IN ('nokeyupd', 'upd')", (str(tup.xmax),)).fetchall()
    return int(rows[0][0]) if rows else None


def _table(c: Any, name: str) -> TableInfo | None:
    try:
        oid = c.execute("SELECT pg_catalog.to_regclass(%s)::oid", (name,)).fetchone()[0]
    except Exception as e:
        raise ConfigError(f"table {name!r}: {pg_error(e)}") from e
    return None if oid is None else tables_at(c, int(oid))[0]


def _start_versions(c1: Any, t: TableInfo, names: list[str], where: str) -> list[Version]:
    cols = ", ".join(quote_ident(n) for n in names)
    try:
        cur = c1.execute(f"SELECT ctid::text, xmin::text, {cols} FROM ONLY {t.qname} "
                         f"WHERE {where}")
    except Exception as e:
        raise RestoreError(f"evaluating --where on {t.display}: {pg_error(e)}") from e
    out = []
    for row in text_rows(cur):
        blk, off = (int(x) for x in str(row[0]).strip("()").split(","))
        out.append(Version((blk, off), int(str(row[1])), tuple(row[2:]), None))
    return out


def history(ep: Endpoint, table: str, where: str, at1: str, at2: str, db: str = "postgres",
            pages: PageSource | None = None) -> HistoryResult:
    p1, p2 = resolve_point(ep, at1, db), resolve_point(ep, at2, db)
    if p2.lsn < p1.lsn:
        raise ConfigError(f"--from ({p1}) is later than --to ({p2})")
    if pages is None:
        raise RestoreError("row history reads the layer store, which this build cannot read "
                           "while strata up runs")
    with ep.connect(db, at=p1.lsn) as c1, ep.connect(db, at=p2.lsn) as c2:
        t1, t2 = _table(c1, table), _table(c2, table)
        if t1 is None or t2 is None:
            raise RestoreError(f"table {table} must exist at {p1} and at {p2}")
        if (t1.oid, t1.filenode) != (t2.oid, t2.filenode):
            raise RestoreError(f"{t2.display} was rewritten or replaced between the points "
                               "(another relfilenode): give a --from after that")
        lay = layout_at(c2, t2)
        res = HistoryResult(t2, where, p1, p2, [n for _, n, _, _ in lay.columns])
        res.versions = _start_versions(c1, t1, res.columns, where)
        seen, res.pages_read = _page_versions(pages, t2, p1, p2)
        tm = ep.timemap()
        try:
            commits = Commits(tm, pages, p2.lsn)
            _versions_after(res, seen, commits, lay, c1, c2)
        finally:
            tm.close()
    return res


def _versions_after(res: HistoryResult, seen: dict[tuple[int, int, int], HeapTuple],
                    commits: Commits, lay: Layout, c1: Any, c2: Any) -> None:
    """Add the versions made after the first point; set every version's commits."""
    start = {(v.ctid[0], v.ctid[1], v.xmin) for v in res.versions}
    for v in res.versions:
        v.created = commits.of(v.xmin)
    new: list[tuple[tuple[int, int, int], HeapTuple, Commit]] = []
    for key, tup in seen.items():
        c = commits.of(tup.xmin) if key not in start else None
        if c is not None and c.lsn is not None and c.lsn > res.first.lsn:
            new.append((key, tup, c))
    toast = sql_toast([c1, c2])
    raw = [attributes(tup, lay.attrs, toast) for _, tup, _ in new]
    matched = evaluate(c2, lay, raw, res.where, res.table.display)
    for i, values in matched.items():
        (blk, off, xmin), tup, c = new[i]
        v = Version((blk, off), xmin, values, c)
        if any(isinstance(x, Toasted) for x in raw[i]):
            v.notes.append("an out-of-line value is no longer stored at either point: NULL")
        res.versions.append(v)
    for v in res.versions:
        tup2 = seen.get((v.ctid[0], v.ctid[1], v.xmin))
        updater = _updater(c2, tup2) if tup2 is not None else None
        if updater is not None:
            v.ended = commits.of(updater)
    res.versions.sort(key=lambda v: (v.created.lsn or 0) if v.created else 0)
