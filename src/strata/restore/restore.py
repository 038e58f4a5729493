"""Restore a table, a schema or a whole database as it was at a point in history.

What it is: `restore(request, endpoint, progress) -> Result`. The point is
resolved once to an LSN; the object is planned against the past and the
present (`restore.plan`); pg_dump reads it from the historical server at that
LSN (`restore.pgdump`) while its entries are applied to the primary
(`restore.apply`) inside ONE transaction, committed only when the dump is
complete and every essential statement succeeded.
Fed by: `cli/restore.py` and the proxy's SQL interface. Feeds: the present
(the primary, through the proxy). Owns: the atomicity rules:

- table and schema: one transaction on the target database; any failure, a
  lost connection or a killed process rolls it back, so nothing is left;
- database: CREATE DATABASE cannot run in a transaction, so the database is
  created under a temporary name (``strata_restore_<hex>``), filled in one
  transaction, and renamed only after that committed. A guard process
  (`restore.guard`) started before CREATE DATABASE drops the temporary
  database when this process ends without saying it finished (killed,
  crashed); on an ordinary failure this process drops it itself;
- the past is only read (historical servers are read-only), and the primary
  is never stopped or restarted.
"""

from __future__ import annotations

import contextlib
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from strata.errors import ConfigError, RestoreError
from strata.lsn import Lsn
from strata.progress import Progress, human_bytes
from strata.restore.apply import Applier, Outcome
from strata.restore.endpoint import Endpoint, Point, pg_error, resolve_point
from strata.restore.pgdump import PgDump
from strata.restore.plan import Kind, Plan, Request, Step, plan_schema, plan_table
from strata.restore.script import Entry, Renamer, TocHeader, quote_ident

RENAME_WAIT = 30.0  # seconds to wait for our own backend to leave the new database


@dataclass
class Result:
    request: Request
    point: Point
    target: str
    database: str
    outcome: Outcome
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def report(res: Result) -> str:
    """What came back, what could not and why, and notes: the command's output."""
    o = res.outcome
    rate = o.data_bytes / res.seconds if res.seconds > 0 else 0.0
    lines = [f"restored {res.request.kind.value} {res.request.name} as it was at {res.point}",
             f"  into database {res.database} as {res.target}",
             f"  {o.tables} table(s), {o.rows} row(s), {human_bytes(o.data_bytes)} of data in "
             f"{res.seconds:.1f} s ({human_bytes(rate)}/s)"]
    if o.skipped:
        lines.append("could not come back:")
        lines += [f"  - {s}" for s in o.skipped]
    if res.notes:
        lines.append("notes:")
        lines += [f"  - {n}" for n in res.notes]
    return "\n".join(lines)



def _step_header(st: Step) -> TocHeader:
    return TocHeader(st.what, "STEP", "-", "")


def _rollback(conn: Any) -> None:
    with contextlib.suppress(Exception):
        conn.rollback()


def restore(req: Request, ep: Endpoint, progress: Progress | None = None) -> Result:
    """Bring `req`'s object back. Raises: RestoreError / ConfigError; then the
    present is as it was before."""
    progress = progress or Progress()
    t0 = time.monotonic()
    if req.kind is Kind.DATABASE:
        return _restore_database(req, ep, progress, t0)
    progress.stage(f"resolving {req.at}")
    point = resolve_point(ep, req.at, req.db)
    present = ep.connect(req.db, autocommit=False)
    try:
        # as in the dump's script: definitions read here are schema-qualified
        present.execute("SELECT pg_catalog.set_config('search_path', '', false)")
        with ep.connect(req.db, at=point.lsn) as past:
            progress.stage(f"planning the {req.kind.value} {req.name} at {point}")
            planner = plan_table if req.kind is Kind.TABLE else plan_schema
            plan = planner(req, past, present, point)
        outcome = _run(present, plan, ep, req.db, point, progress)
        progress.stage("committing")
        present.commit()
    except BaseException:
        _rollback(present)
        raise
    finally:
        present.close()
        progress.close()
    return Result(req, point, plan.target, req.db, outcome, plan.notes, time.monotonic() - t0)


def _run(present: Any, plan: Plan, ep: Endpoint, db: str, point: Point,
         progress: Progress) -> Outcome:
    applier = Applier(present, plan.renamer, progress)
    for st in plan.before:
        applier.statement(_step_header(st), st.sql, optional=st.optional)
    progress.stage(f"copying {plan.source} from {point}")
    progress.start(plan.estimate)
    with PgDump(ep, db, point.lsn, plan.selection) as pd:
        applier.apply(pd.entries())
        pd.finish()
    for st in plan.after:
        applier.statement(_step_header(st), st.sql, optional=st.optional)
    return applier.outcome


# -- whole databases ------------------------------------------------------------------


class Guard:
    """The guard process of a temporary database (see the module docstring)."""

    def __init__(self, ep: Endpoint, dbname: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "strata.restore.guard", ep.conninfo("postgres"), dbname],
            stdin=subprocess.PIPE, start_new_session=True)

    def release(self) -> None:
        """This process finished (or cleaned up itself): the guard exits doing nothing."""
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.write(b"done\n")
                self.proc.stdin.close()
        self.proc.wait(60)


def _database_exists(maint: Any, name: str) -> bool:
    return maint.execute("SELECT count(*) FROM pg_catalog.pg_database WHERE datname = %s",
                         (name,)).fetchone()[0] > 0


def _create_statement(entry: Entry, source: str) -> tuple[str, list[str]]:
    if entry.header.type != "DATABASE":
        raise RestoreError(f"pg_dump of database {source} did not start with its DATABASE "
                           f"entry (got {entry.header.describe()})")
    creates = [s for s in entry.statements if s.upper().startswith("CREATE DATABASE")]
    if len(creates) != 1:
        raise RestoreError(f"pg_dump of database {source}: no CREATE DATABASE statement")
    return creates[0], [s for s in entry.statements if s is not creates[0]]


def _restore_database(req: Request, ep: Endpoint, progress: Progress, t0: float) -> Result:
    if req.replace:
        raise ConfigError("--replace does not apply to --database: DROP DATABASE cannot run "
                          "inside a transaction; restore with --as NEW_NAME and swap names")
    source, final = req.name, req.as_name or req.name
    progress.stage(f"resolving {req.at}")
    point = database_point(ep, req.at, source)
    tmp = f"strata_restore_{secrets.token_hex(4)}"
    with ep.connect("postgres") as maint:
        if _database_exists(maint, final):
            raise RestoreError(f"database {final} exists in the present: restore it next to it "
                               "with --as NEW_NAME")
        guard = Guard(ep, tmp)
        try:
            outcome = _fill_database(ep, maint, source, tmp, point, progress)
            progress.stage(f"renaming {tmp} to {final}")
            _rename_database(maint, tmp, final)
        except BaseException:
            with contextlib.suppress(Exception):
                maint.execute(f"DROP DATABASE IF EXISTS {quote_ident(tmp)} WITH (FORCE)")
            raise
        finally:
            guard.release()
            progress.close()
    return Result(req, point, quote_ident(final), final, outcome, [], time.monotonic() - t0)


DATCONNLIMIT_INVALID_DB = -2  # pg_database.datconnlimit of a database being dropped
MAX_STEPS_BACK = 10


def database_point(ep: Endpoint, at: str, dbname: str) -> Point:
    """The point of `at` for database `dbname`, read from ``postgres`` (the
    database itself may not accept connections there).

    DROP DATABASE marks the database invalid in place before its commit, so a
    time just before the drop lands after that mark (recovery_target_time
    stops before the drop's commit record, not before its first record). Then
    the point moves back to the end of the last commit before it (the same
    transactional state), at most MAX_STEPS_BACK commits.
    Raises: RestoreError when the database did not exist or stays invalid.
    """
    point = resolve_point(ep, at, "postgres")
    tm = ep.timemap()
    try:
        for _ in range(MAX_STEPS_BACK):
            with ep.connect("postgres", at=point.lsn) as c:
                row = c.execute("SELECT datconnlimit FROM pg_catalog.pg_database "
                                "WHERE datname = %s", (dbname,)).fetchone()
            if row is None:
                raise RestoreError(f"database {dbname} did not exist at {point}")
            if row[0] != DATCONNLIMIT_INVALID_DB:
                return resolve_point(ep, str(point.lsn), dbname)
            prev = tm.last_at_or_before(Lsn(point.lsn - 1))
            if prev is None:
                break
            point = Point(prev.end_lsn, "")
    finally:
        tm.close()
    raise RestoreError(f"database {dbname} was being dropped (invalid) at {at} and at the "
                       f"{MAX_STEPS_BACK} commits before: give an earlier --at")


def _fill_database(ep: Endpoint, maint: Any, source: str, tmp: str, point: Point,
                   progress: Progress) -> Outcome:
    renamer = Renamer(databases={source: tmp})
    estimate = 0
    with ep.connect(source, at=point.lsn) as past:
        estimate = int(past.execute("SELECT pg_catalog.pg_database_size(current_database())")
                       .fetchone()[0])
    progress.stage(f"copying database {source} from {point}")
    progress.start(estimate)
    with PgDump(ep, source, point.lsn, ["--create"]) as pd:
        entries = pd.entries()
        preamble = next(entries)
        create, rest = _create_statement(next(entries), source)
        try:
            maint.execute(renamer.rename(create))
        except Exception as e:
            raise RestoreError(f"creating database {source} failed: {pg_error(e)}") from e
        conn = ep.connect(tmp, autocommit=False)
        try:
            applier = Applier(conn, renamer, progress)
            applier.apply_entry(preamble)
            for sql in rest:
                applier.statement(TocHeader(source, "DATABASE", "-", ""), sql)
            applier.apply(entries)
            pd.finish()
            progress.stage("committing")
            conn.commit()
        except BaseException:
            _rollback(conn)
            raise
        finally:
            conn.close()
    return applier.outcome


def _rename_database(maint: Any, tmp: str, final: str) -> None:
    """Rename once no session is left in `tmp` (ours ends asynchronously)."""
    deadline = time.monotonic() + RENAME_WAIT
    while True:
        try:
            maint.execute(f"ALTER DATABASE {quote_ident(tmp)} RENAME TO {quote_ident(final)}")
            return
        except Exception as e:
            if getattr(e, "sqlstate", None) != "55006" or time.monotonic() > deadline:
                raise RestoreError(f"renaming the restored database to {final} failed: "
                                   f"{pg_error(e)}") from e
        maint.execute("SELECT pg_catalog.pg_stat_clear_snapshot()")
        time.sleep(0.05)
