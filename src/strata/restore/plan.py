"""What a restore of a table or a schema will do, decided before anything is written.

What it is: `Request` (the command line), `Plan` (pg_dump's selection, the
renaming, the SQL run before and after the dump's entries, the size
estimate, notes for the report) and `plan_table` / `plan_schema`, which
read the past (the historical server at the point) and the present (the
primary, inside the restore's own transaction) to build it.
Fed by: `restore.restore`. Feeds: the same (it runs the plan).
Owns: the rules of restoring next to or over what exists:

- the object must exist at the point; in the present it must not, unless
  ``--as`` names a free name or ``--replace`` is given;
- ``--as`` for a table restores into a scratch schema created inside the
  transaction (so none of its names can clash), then renames the table and
  its indexes, sequences and partitions (a name that starts with the old
  table name gets the new one instead; a clash gets a number), moves them to
  the target schema and drops the scratch schema;
- ``--as`` for a schema renames the schema in every statement (names in
  function bodies are not rewritten: a note says so);
- ``--replace`` drops the live object first, in the same transaction: a
  table's foreign keys in other tables are dropped and added back after (a
  failure to add one back is reported); views or other objects outside that
  depend on it make the restore refuse, naming them;
- dependants at the point that are not part of the object (foreign keys of
  other tables, views) are named in the notes, with the SQL to recreate a
  foreign key.
"""

from __future__ import annotations

import enum
import secrets
from dataclasses import dataclass, field
from typing import Any

from strata.errors import ConfigError, RestoreError
from strata.restore.endpoint import Point, pg_error
from strata.restore.pgdump import pattern
from strata.restore.script import Renamer, qualified, quote_ident, split_qualified

NAMEDATALEN = 64


class Kind(enum.Enum):
    TABLE = "table"
    SCHEMA = "schema"
    DATABASE = "database"


@dataclass(frozen=True, slots=True)
class Request:
    kind: Kind
    name: str
    at: str
    db: str = "postgres"
    as_name: str | None = None
    replace: bool = False


@dataclass(frozen=True, slots=True)
class Step:
    """One statement of a plan; an optional one is reported when it fails."""

    sql: str
    what: str
    optional: bool = False


@dataclass(frozen=True, slots=True)
class Rel:
    oid: int
    schema: str
    name: str
    relkind: str
    size: int


@dataclass
class Plan:
    source: str  # the object's name at the point
    target: str  # its name in the present afterwards
    selection: list[str]
    renamer: Renamer = field(default_factory=Renamer)
    before: list[Step] = field(default_factory=list)
    after: list[Step] = field(default_factory=list)
    estimate: int = 0
    notes: list[str] = field(default_factory=list)


_RELKW = {"i": "INDEX", "I": "INDEX", "S": "SEQUENCE", "v": "VIEW", "m": "MATERIALIZED VIEW",
          "f": "FOREIGN TABLE"}
_TABLE_KINDS = ("r", "p", "m", "f", "v")

REL_SQL = """
SELECT c.oid, n.nspname, c.relname, c.relkind::text
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = pg_catalog.to_regclass(%s)
"""
# the table, its partitions, their indexes and the sequences their columns own
RELSET_SQL = """
WITH RECURSIVE tree(oid) AS (
  SELECT %(oid)s::oid
  UNION SELECT i.inhrelid FROM pg_catalog.pg_inherits i JOIN tree t ON i.inhparent = t.oid
  WHERE %(children)s)
SELECT c.oid, n.nspname, c.relname, c.relkind::text,
       CASE WHEN c.relkind IN ('r', 'm') THEN pg_catalog.pg_table_size(c.oid) ELSE 0 END
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid IN (SELECT oid FROM tree)
   OR c.oid IN (SELECT x.indexrelid FROM pg_catalog.pg_index x
                WHERE x.indrelid IN (SELECT oid FROM tree))
   OR (c.relkind = 'S' AND c.oid IN (
         SELECT d.objid FROM pg_catalog.pg_depend d
         WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
           AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
           AND d.refobjid IN (SELECT oid FROM tree) AND d.deptype IN ('a', 'i')))
ORDER BY c.oid
"""
# foreign keys of other tables that reference the set, and views over it
DEPENDANTS_SQL = """
SELECT 'fk', pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(t.relname),
       con.conname, pg_catalog.pg_get_constraintdef(con.oid)
FROM pg_catalog.pg_constraint con
JOIN pg_catalog.pg_class t ON t.oid = con.conrelid
JOIN pg_catalog.pg_namespace n ON n.oid = t.relnamespace
WHERE con.contype = 'f' AND con.confrelid = ANY(%(oids)s) AND NOT con.conrelid = ANY(%(oids)s)
UNION
SELECT 'view', pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(v.relname),
       NULL, NULL
FROM pg_catalog.pg_depend d
JOIN pg_catalog.pg_rewrite r ON r.oid = d.objid
JOIN pg_catalog.pg_class v ON v.oid = r.ev_class
JOIN pg_catalog.pg_namespace n ON n.oid = v.relnamespace
WHERE d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass
  AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
  AND d.refobjid = ANY(%(oids)s) AND NOT v.oid = ANY(%(oids)s)
ORDER BY 1, 2, 3
"""


def _fetch(conn: Any, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    try:
        return list(conn.execute(sql, params).fetchall())
    except Exception as e:
        if getattr(e, "sqlstate", None):
            raise RestoreError(pg_error(e)) from e
        raise


def _one(conn: Any, sql: str, params: Any = None) -> Any:
    rows = _fetch(conn, sql, params)
    return rows[0][0] if rows else None


def truncate_name(name: str, limit: int = NAMEDATALEN - 1) -> str:
    """`name` cut to PostgreSQL's identifier length in bytes (whole characters)."""
    b = name.encode()
    if len(b) <= limit:
        return name
    return b[:limit].decode("utf-8", "ignore")


def unique_name(base: str, taken: set[str]) -> str:
    """`base`, or `base` with the smallest number appended that is not taken."""
    if base not in taken:
        return base
    k = 1
    while True:
        suffix = str(k)
        cand = truncate_name(base, NAMEDATALEN - 1 - len(suffix)) + suffix
        if cand not in taken:
            return cand
        k += 1


def parse_as(as_name: str, default_schema: str) -> tuple[str, str]:
    parts = split_qualified(as_name)
    if len(parts) == 1 and parts[0]:
        return default_schema, parts[0]
    if len(parts) == 2 and all(parts):
        return parts[0], parts[1]
    raise ConfigError(f"--as {as_name!r}: give NAME or SCHEMA.NAME")


# -- tables -------------------------------------------------------------------------


def _past_table(past: Any, name: str, point: Point, db: str) -> tuple[Rel, list[Rel]]:
    try:
        row = past.execute(REL_SQL, (name,)).fetchone()
    except Exception as e:
        raise ConfigError(f"--table {name!r}: {pg_error(e)}") from e
    if row is None:
        raise RestoreError(f"table {name} did not exist at {point} in database {db}")
    main = Rel(row[0], row[1], row[2], row[3], 0)
    # from here on every name and definition read is schema-qualified
    past.execute("SELECT pg_catalog.set_config('search_path', '', false)")
    if main.relkind not in (*_TABLE_KINDS, "S"):
        raise ConfigError(f"{main.schema}.{main.name} is not a table, view or sequence")
    rows = _fetch(past, RELSET_SQL, {"oid": main.oid,
                                     "children": main.relkind == "p"})
    rels = [Rel(*r) for r in rows]
    return main, rels


def _dependant_notes(past: Any, present: Any, rels: list[Rel], target: str) -> list[str]:
    notes = []
    for kind, table, conname, cdef in _fetch(past, DEPENDANTS_SQL,
                                             {"oids": [r.oid for r in rels]}):
        if kind == "view":
            notes.append(f"view {table} depended on {target} at the point and was not "
                         "restored (restore its schema, or create it again)")
            continue
        live = _one(present, "SELECT pg_catalog.to_regclass(%s) IS NOT NULL", (table,))
        if live:
            notes.append(f"foreign key {conname} of {table} referenced {target} at the point; "
                         f"it is not restored (it belongs to {table}). To add it back: ALTER "
                         f"TABLE {table} ADD CONSTRAINT {quote_ident(conname)} {cdef}")
        else:
            notes.append(f"foreign key {conname} of {table} referenced {target} at the point; "
                         f"{table} no longer exists")
    return notes


def plan_table(req: Request, past: Any, present: Any, point: Point) -> Plan:
    main, rels = _past_table(past, req.name, point, req.db)
    source = qualified(main.schema, main.name)
    flag = "--table-and-children" if main.relkind == "p" else "--table"
    plan = Plan(source, source, [flag, pattern(main.schema, main.name)],
                estimate=sum(r.size for r in rels))
    live = _one(present, "SELECT pg_catalog.to_regclass(%s)::oid", (source,))
    if req.as_name is not None:
        _table_as(plan, req, present, main, rels)
        return plan
    if not _one(present, "SELECT count(*) FROM pg_catalog.pg_namespace WHERE nspname = %s",
                (main.schema,)):
        raise RestoreError(f"schema {main.schema} of {source} does not exist in the present: "
                           f"restore it with --schema {main.schema}, or use --as SCHEMA.NAME")
    if live is not None and not req.replace:
        raise RestoreError(f"{source} exists in the present: restore it next to it with "
                           "--as NEW_NAME, or over it with --replace")
    if live is not None:
        _table_replace(plan, present, live)
    else:
        plan.notes += _dependant_notes(past, present, rels, source)
    return plan


def _table_as(plan: Plan, req: Request, present: Any, main: Rel, rels: list[Rel]) -> None:
    assert req.as_name is not None
    if req.replace:
        raise ConfigError("--as and --replace exclude each other")
    ts, tn = parse_as(req.as_name, main.schema)
    target = qualified(ts, tn)
    if not _one(present, "SELECT count(*) FROM pg_catalog.pg_namespace WHERE nspname = %s",
                (ts,)):
        raise RestoreError(f"schema {ts} (of --as {req.as_name}) does not exist in the present")
    if _one(present, "SELECT pg_catalog.to_regclass(%s) IS NOT NULL", (target,)):
        raise RestoreError(f"{target} (--as) already exists in the present")
    scratch = f"strata_restore_{secrets.token_hex(4)}"
    plan.target = target
    plan.renamer = Renamer(relations={(r.schema, r.name): (scratch, r.name) for r in rels})
    plan.before.append(Step(f"CREATE SCHEMA {quote_ident(scratch)}", "scratch schema"))
    taken = {r[0] for r in _fetch(present, "SELECT c.relname FROM pg_catalog.pg_class c JOIN "
                                  "pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
                                  "WHERE n.nspname = %s", (ts,))}
    moves = []
    for r in rels:
        if r.name == main.name:
            new = tn
        elif r.name.startswith(main.name):
            new = unique_name(truncate_name(tn + r.name[len(main.name):]), taken)
        else:
            new = unique_name(r.name, taken)
        taken.add(new)
        kw = _RELKW.get(r.relkind, "TABLE")
        if new != r.name:
            plan.after.append(Step(f"ALTER {kw} {qualified(scratch, r.name)} RENAME TO "
                                   f"{quote_ident(new)}", f"rename {r.name} to {new}"))
            plan.notes.append(f"{r.schema}.{r.name} comes back as {ts}.{new}")
        # indexes and owned sequences move with their table
        if r.relkind in _TABLE_KINDS or (r.relkind == "S" and r.name == main.name):
            moves.append(Step(f"ALTER {kw} {qualified(scratch, new)} SET SCHEMA "
                              f"{quote_ident(ts)}", f"move {new} to {ts}"))
    plan.after += moves
    plan.after.append(Step(f"DROP SCHEMA {quote_ident(scratch)}", "drop the scratch schema"))


def _table_replace(plan: Plan, present: Any, live_oid: int) -> None:
    deps = _fetch(present, DEPENDANTS_SQL, {"oids": [live_oid]})
    views = [t for kind, t, _, _ in deps if kind == "view"]
    if views:
        raise RestoreError(f"--replace: {', '.join(views)} depend(s) on the live {plan.source}; "
                           "drop them first, or restore next to it with --as")
    for _, table, conname, cdef in deps:
        plan.before.append(Step(f"ALTER TABLE {table} DROP CONSTRAINT {quote_ident(conname)}",
                                f"foreign key {conname} of {table}"))
        plan.after.append(Step(f"ALTER TABLE {table} ADD CONSTRAINT {quote_ident(conname)} {cdef}",
                               f"foreign key {conname} of {table} (added back)", optional=True))
    plan.before.append(Step(f"DROP TABLE {plan.source}", f"drop the live {plan.source}"))


# -- schemas ------------------------------------------------------------------------

# objects outside schema %(nsp)s that depend on something inside it (conservative:
# an object whose schema cannot be told counts as outside)
OUTSIDE_DEPENDANTS_SQL = """
WITH inside(classid, objid) AS (
  SELECT 'pg_catalog.pg_class'::pg_catalog.regclass, oid FROM pg_catalog.pg_class
  WHERE relnamespace = %(nsp)s
  UNION ALL SELECT 'pg_catalog.pg_proc'::pg_catalog.regclass, oid FROM pg_catalog.pg_proc
  WHERE pronamespace = %(nsp)s
  UNION ALL SELECT 'pg_catalog.pg_type'::pg_catalog.regclass, oid FROM pg_catalog.pg_type
  WHERE typnamespace = %(nsp)s)
SELECT DISTINCT pg_catalog.pg_describe_object(d.classid, d.objid, 0)
FROM pg_catalog.pg_depend d JOIN inside i ON i.classid = d.refclassid AND i.objid = d.refobjid
WHERE d.deptype IN ('n', 'a') AND NOT EXISTS (
  SELECT 1 FROM inside o WHERE o.classid = d.classid AND o.objid = d.objid)
  AND coalesce(CASE d.classid
    WHEN 'pg_catalog.pg_rewrite'::pg_catalog.regclass THEN (SELECT c.relnamespace
      FROM pg_catalog.pg_rewrite r JOIN pg_catalog.pg_class c ON c.oid = r.ev_class
      WHERE r.oid = d.objid)
    WHEN 'pg_catalog.pg_constraint'::pg_catalog.regclass THEN (SELECT connamespace
      FROM pg_catalog.pg_constraint WHERE oid = d.objid)
    WHEN 'pg_catalog.pg_attrdef'::pg_catalog.regclass THEN (SELECT c.relnamespace
      FROM pg_catalog.pg_attrdef a JOIN pg_catalog.pg_class c ON c.oid = a.adrelid
      WHERE a.oid = d.objid)
    WHEN 'pg_catalog.pg_trigger'::pg_catalog.regclass THEN (SELECT c.relnamespace
      FROM pg_catalog.pg_trigger t JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
      WHERE t.oid = d.objid)
    WHEN 'pg_catalog.pg_policy'::pg_catalog.regclass THEN (SELECT c.relnamespace
      FROM pg_catalog.pg_policy p JOIN pg_catalog.pg_class c ON c.oid = p.polrelid
      WHERE p.oid = d.objid)
  END, 0) <> %(nsp)s
ORDER BY 1
"""


def plan_schema(req: Request, past: Any, present: Any, point: Point) -> Plan:
    name = req.name
    row = _fetch(past, "SELECT n.oid, (SELECT count(*) FROM pg_catalog.pg_proc p WHERE "
                 "p.pronamespace = n.oid), (SELECT coalesce(sum(pg_catalog.pg_table_size(c.oid)), "
                 "0) FROM pg_catalog.pg_class c WHERE c.relnamespace = n.oid AND c.relkind IN "
                 "('r', 'm')), (SELECT pg_catalog.string_agg(e.extname, ', ') FROM "
                 "pg_catalog.pg_extension e WHERE e.extnamespace = n.oid) "
                 "FROM pg_catalog.pg_namespace n WHERE n.nspname = %s", (name,))
    if not row:
        raise RestoreError(f"schema {name} did not exist at {point} in database {req.db}")
    _, functions, size, exts = row[0]
    plan = Plan(quote_ident(name), quote_ident(name), ["--schema", pattern(name)],
                estimate=int(size))
    if exts:
        plan.notes.append(f"extension(s) {exts} had their objects in schema {name}: they "
                          "come back only if the dump creates them (CREATE EXTENSION)")
    live = _one(present, "SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = %s",
                (req.as_name or name,))
    if req.as_name is not None:
        if req.replace:
            raise ConfigError("--as and --replace exclude each other")
        if live is not None:
            raise RestoreError(f"schema {req.as_name} (--as) already exists in the present")
        plan.target = quote_ident(req.as_name)
        plan.renamer = Renamer(schemas={name: req.as_name})
        if functions:
            plan.notes.append(f"function bodies are restored as written: a name in them that "
                              f"says {name}. still refers to schema {name}")
        return plan
    if live is not None and not req.replace:
        raise RestoreError(f"schema {name} exists in the present: restore it next to it with "
                           "--as NEW_NAME, or over it with --replace")
    if live is not None:
        outside = [r[0] for r in _fetch(present, OUTSIDE_DEPENDANTS_SQL, {"nsp": live})]
        if outside:
            raise RestoreError(f"--replace: objects outside schema {name} depend on it: "
                               f"{'; '.join(outside)}; drop them first, or use --as")
        plan.before.append(Step(f"DROP SCHEMA {quote_ident(name)} CASCADE",
                                f"drop the live schema {name}"))
    return plan
