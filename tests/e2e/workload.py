"""The workload runner and database fingerprint of shared/workloads/README.md.

Steps are separated by ``-- @step NAME`` lines; statements are split with
pglast and sent one at a time in autocommit mode. After each step the runner
records the step's name, ``clock_timestamp()``, ``pg_current_wal_insert_lsn()``
and the fingerprint of the database.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pglast

# a copy of the project's shared workloads (../shared/workloads), so a clean clone
# runs every test by itself; tests/data/README.md says how to refresh it
WORKLOADS = Path(__file__).resolve().parents[1] / "data" / "workloads"
HISTORY_SQL = WORKLOADS / "history.sql"

_STEP = re.compile(r"^--\s*@step\s+(\S+)\s*$", re.M)

FINGERPRINT_RELATIONS = """
SELECT c.oid, n.nspname, c.relname, c.relkind
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'm', 'p')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
  AND n.nspname NOT LIKE 'pg_temp%'
ORDER BY n.nspname, c.relname
"""

COLUMNS = """
SELECT string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod), ', ' ORDER BY a.attnum)
FROM pg_attribute a WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped
"""

SEQUENCES = """
SELECT schemaname || '.' || sequencename, last_value, increment_by FROM pg_sequences
WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1
"""


def load_steps(path: Path) -> list[tuple[str, list[str]]]:
    text = path.read_text()
    parts = _STEP.split(text)
    steps = []
    for i in range(1, len(parts), 2):
        name, body = parts[i], parts[i + 1]
        stmts = [s.strip() for s in pglast.split(body) if s.strip()]
        steps.append((name, stmts))
    return steps


def fingerprint(conn: Any) -> dict[str, Any]:
    """Relations (qualified name -> (columns, md5 of rows in a stable order)) and
    sequences (name -> last_value)."""
    out: dict[str, Any] = {}
    with conn.cursor() as cur:
        cur.execute(FINGERPRINT_RELATIONS)
        rels = cur.fetchall()
        for oid, nsp, name, kind in rels:
            cur.execute(COLUMNS, (oid,))
            cols = cur.fetchone()[0]
            q = f'"{nsp}"."{name}"'
            if kind == "p":
                md5 = None  # partitioned parents hold no rows; their partitions are listed
            else:
                cur.execute(f"SELECT md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '')) "
                            f"FROM ONLY {q} t")
                md5 = cur.fetchone()[0]
            out[f"{nsp}.{name}"] = (cols, md5)
        cur.execute(SEQUENCES)
        out["__sequences__"] = [tuple(r) for r in cur.fetchall()]
    return out


# nextval() WAL-logs SEQ_LOG_VALS (32) values ahead of what it hands out
# (src/backend/commands/sequence.c), so any server rebuilt from WAL -- native
# PITR included -- sees last_value up to 32 increments past the live one.
SEQ_LOG_VALS = 32


def _sequences_match(live: list[tuple[Any, ...]], hist: list[tuple[Any, ...]], mode: str) -> bool:
    if [r[0] for r in live] != [r[0] for r in hist]:
        return False
    for (_, lv, inc), (_, hv, hinc) in zip(live, hist, strict=True):
        if inc != hinc:
            return False
        if lv is None or hv is None:
            if mode == "logged" and (lv is None) != (hv is None):
                return False
            if mode == "at_most" and hv is not None:
                return False
            continue
        ahead = (hv - lv) // inc
        if mode == "at_most":
            if ahead > 0:
                return False
        elif ahead < 0 or (mode == "logged" and ahead > SEQ_LOG_VALS):
            return False
    return True


def first_difference(live: dict[str, Any], hist: dict[str, Any], *,
                     sequences: str = "logged", exact_sequences: bool = False) -> str | None:
    """The first relation (or the sequence list) that differs, or None.

    `sequences` says how a historical sequence may differ from the live one
    (sequences are not transactional, and nextval() WAL-logs ahead):
    - "logged": up to SEQ_LOG_VALS increments ahead (a server rebuilt from WAL
      at the step's own LSN);
    - "at_least": not behind (a server that may include later nextval() WAL);
    - "at_most": not ahead: `hist` is strata by time T, `live` is native PITR
      with recovery_target_time = T, which also replays the next
      transaction's nextval() WAL written before its commit (strata's T
      resolves to the end of the last commit at or before T and leaves that
      out);
    - "exact": equal (against another server rebuilt from WAL: native PITR);
      `exact_sequences=True` is the same.
    """
    if exact_sequences:
        sequences = "exact"
    for k in sorted(set(live) | set(hist)):
        a, b = live.get(k), hist.get(k)
        if k == "__sequences__" and sequences != "exact" and a is not None and b is not None:
            if not _sequences_match(a, b, sequences):
                return f"sequences: live {a!r}, historical {b!r}"
            continue
        if a != b:
            return f"{k}: expected {a!r}, got {b!r}"
    return None


@dataclass(frozen=True)
class StepPoint:
    name: str
    time: Any  # datetime (timestamptz)
    lsn: str
    fingerprint: dict[str, Any]


def run_steps(conn: Any, steps: list[tuple[str, list[str]]]) -> list[StepPoint]:
    points = []
    for name, stmts in steps:
        with conn.cursor() as cur:
            for s in stmts:
                cur.execute(s)
            cur.execute("SELECT clock_timestamp(), pg_current_wal_insert_lsn()::text")
            ts, lsn = cur.fetchone()
        points.append(StepPoint(name, ts, lsn, fingerprint(conn)))
    return points
