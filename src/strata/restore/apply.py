"""Applying pg_dump's entries to the present, inside the caller's transaction.

What it is: `Applier`, which runs the statements and COPY data of `Entry`
values (from `restore.script`) on one psycopg connection of the primary,
renaming names on the way (`Renamer`), and `Outcome`, what it did and what it
had to leave out.
Fed by: `restore.restore` (an open transaction, the dump's entries).
Feeds: the present (SQL, COPY data), the progress display, the report.
Owns: which statements are essential and which optional:

- essential: everything that makes the object itself (tables, columns,
  defaults, identity and generated columns, sequences and their values,
  indexes, primary/unique/check constraints, data). Its failure raises
  `RestoreError`; the caller rolls the whole transaction back.
- optional: what may depend on things the present no longer has (a role,
  a function, another table, an extension): foreign keys, triggers,
  comments, grants, policies, rules, ``OWNER TO``, publications,
  extensions, database settings. Each runs inside a savepoint; a failure
  rolls back to it and is reported (`Skipped`, with PostgreSQL's message)
  while the rest goes on.

Never commits: the caller owns the transaction.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from strata.errors import RestoreError
from strata.progress import Progress, human_bytes
from strata.restore.endpoint import pg_error
from strata.restore.script import Entry, Renamer, TocHeader

OPTIONAL_TYPES = frozenset({
    "FK CONSTRAINT", "TRIGGER", "EVENT TRIGGER", "COMMENT", "ACL", "DEFAULT ACL", "POLICY",
    "ROW SECURITY", "RULE", "SECURITY LABEL", "PUBLICATION", "PUBLICATION TABLE",
    "PUBLICATION TABLES IN SCHEMA", "SUBSCRIPTION", "SUBSCRIPTION TABLE", "EXTENSION",
    "DATABASE PROPERTIES",
})
_OWNER = re.compile(r"^ALTER\b.*\bOWNER TO\b", re.S | re.I)
_SAVEPOINT = "strata_restore_optional"


@dataclass(frozen=True, slots=True)
class Skipped:
    """Something that could not come back: `what` (the dump's entry), the
    statement's first line, and PostgreSQL's reason."""

    what: str
    statement: str
    why: str

    def __str__(self) -> str:
        return f"{self.what}: {self.why}\n      ({self.statement})"


@dataclass(slots=True)
class Outcome:
    entries: int = 0
    tables: int = 0
    rows: int = 0
    data_bytes: int = 0
    skipped: list[Skipped] = field(default_factory=list)


def _head(sql: str) -> str:
    line = sql.strip().splitlines()[0] if sql.strip() else ""
    return line if len(line) <= 100 else line[:97] + "..."


def _data_name(h: TocHeader) -> str:
    return f"{h.schema}.{h.name}" if h.schema not in ("", "-") else h.name


class Applier:
    """Runs entries on `conn` (psycopg, in a transaction the caller owns)."""

    def __init__(self, conn: Any, renamer: Renamer | None = None,
                 progress: Progress | None = None) -> None:
        self.conn = conn
        self.renamer = renamer or Renamer()
        self.progress = progress or Progress()
        self.outcome = Outcome()

    def apply(self, entries: Iterable[Entry]) -> Outcome:
        for e in entries:
            self.apply_entry(e)
        return self.outcome

    def apply_entry(self, e: Entry) -> None:
        self.outcome.entries += 1
        if e.copy is not None:
            self._copy(e)
            return
        for sql in e.statements:
            self.statement(e.header, sql)

    def statement(self, header: TocHeader, sql: str, *, optional: bool | None = None) -> bool:
        """Run one statement (renamed). Returns False when an optional one was
        skipped. Raises: RestoreError when an essential one fails."""
        sql = self.renamer.rename(sql)
        if optional is None:
            optional = header.type in OPTIONAL_TYPES or _OWNER.match(sql) is not None
        if optional:
            return self._optional(header, sql)
        try:
            self.conn.execute(sql)
        except Exception as e:
            if not _is_pg_error(e):
                raise
            raise RestoreError(f"{header.describe()} could not be restored: {pg_error(e)}\n"
                               f"  statement: {_head(sql)}") from e
        return True

    def _optional(self, header: TocHeader, sql: str) -> bool:
        self.conn.execute(f"SAVEPOINT {_SAVEPOINT}")
        try:
            self.conn.execute(sql)
        except Exception as e:
            if not _is_pg_error(e):
                raise
            self.conn.execute(f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}")
            self.outcome.skipped.append(Skipped(header.describe(), _head(sql), pg_error(e)))
            return False
        self.conn.execute(f"RELEASE SAVEPOINT {_SAVEPOINT}")
        return True

    def _copy(self, e: Entry) -> None:
        assert e.copy is not None and e.data is not None
        sql = self.renamer.rename(e.copy)
        what = _data_name(e.header)
        n = 0
        try:
            with self.conn.cursor() as cur:
                with cur.copy(sql) as cp:
                    for chunk in e.data:
                        cp.write(chunk)
                        n += len(chunk)
                        self.progress.advance(len(chunk), f"copying {what}")
                rows = max(cur.rowcount, 0)
        except Exception as ex:
            if not _is_pg_error(ex):
                raise
            raise RestoreError(f"the data of {what} could not be restored: {pg_error(ex)}") \
                from ex
        self.outcome.tables += 1
        self.outcome.rows += rows
        self.outcome.data_bytes += n
        self.progress.note(f"copied {what} ({rows} rows, {human_bytes(n)})")


def _is_pg_error(e: BaseException) -> bool:
    """A statement's failure reported by the server (the session goes on), not
    a lost connection or a server shutting down."""
    import psycopg

    code = getattr(e, "sqlstate", None) or ""
    return isinstance(e, psycopg.Error) and bool(code) and not code.startswith(("08", "57"))
