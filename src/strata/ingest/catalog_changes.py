"""What one transaction's catalog row changes mean, as DDL statements.

What it is: `describe(changes, names)`, which turns the rows a committed
transaction inserted, updated and deleted in pg_class, pg_attribute,
pg_namespace, pg_database, pg_authid, pg_proc, pg_index and pg_extension
into `DdlChange` values ("CREATE TABLE public.demo", "ALTER TABLE public.demo
ADD COLUMN email", "DROP DATABASE olddb", ...). Pure: no I/O, no state.

Rules:
- Net effect per object (the row's oid; (attrelid, attnum) for columns): an
  object created and dropped in the same transaction (a transient heap of a
  table rewrite, ON COMMIT DROP temporary tables) says nothing; one created
  and then updated is a creation of its last version.
- Implied objects are not listed: TOAST tables and their indexes, system
  columns, the columns of a relation created or dropped in the transaction,
  functions and relations an extension created or dropped with it.
- A changed relfilenode of a table is TRUNCATE unless a transient heap
  ``pg_temp_<oid>`` shows a rewrite (VACUUM FULL, CLUSTER, ALTER TABLE);
  new storage of an index (REINDEX) is maintenance, not listed.
- In-place updates (VACUUM/ANALYZE statistics, relfrozenxid, DROP DATABASE's
  invalid marker) never reach this module (`strata.ingest.catalog`).
- Names are resolved first from the transaction's own rows (a schema
  created in it), then through `names` (the catalog as of the commit).

Fed by: `strata.ingest.catalog.CatalogTracker` at a commit. Feeds: the DDL
log (`strata.timemap.ddl`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from strata.pg import catalog as pgc
from strata.pg.catalog import Row
from strata.timemap.ddl import DdlChange

_PLAIN_IDENT = re.compile(r"^[a-z_][a-z0-9_$]*$")


@dataclass(frozen=True, slots=True)
class RowChange:
    """One catalog row written by a transaction: `old` None for an insert,
    `new` None for a delete, both for an update."""

    lsn: int
    catalog: int  # the catalog's OID (pg_class 1259, ...)
    old: Row | None
    new: Row | None


@dataclass(frozen=True, slots=True)
class RelInfo:
    """What a pg_class row says about a relation, for names and kinds."""

    name: str
    namespace: int
    kind: str
    persistence: str
    owner: int

    @classmethod
    def from_row(cls, row: Row) -> RelInfo:
        return cls(str(row["relname"]), _int(row["relnamespace"]), str(row["relkind"]),
                   str(row["relpersistence"]), _int(row["relowner"]))


class Names(Protocol):
    """The catalog of the transaction's database as of its commit."""

    def relation(self, oid: int) -> RelInfo | None: ...
    def namespace(self, oid: int) -> str | None: ...
    def role(self, oid: int) -> str | None: ...
    def type_name(self, oid: int) -> str | None: ...


def quote_ident(name: str) -> str:
    """PostgreSQL's quote_ident, minus the keyword list: lower-case plain
    names stay bare, anything else is double-quoted."""
    if _PLAIN_IDENT.match(name):
        return name
    return '"' + name.replace('"', '""') + '"'


def qualified(schema: str, name: str) -> str:
    return f"{quote_ident(schema)}.{quote_ident(name)}" if schema else quote_ident(name)


def _int(v: object) -> int:
    assert isinstance(v, int), v
    return v


def _is_temp_schema(nsp: str) -> bool:
    return nsp.startswith(("pg_temp_", "pg_toast_temp_"))


@dataclass(slots=True)
class _Obj:
    catalog: int
    key: object
    first_old: Row | None
    last_new: Row | None
    lsn: int
    any_row: Row  # the first version seen (kept when created and dropped here)


def object_key(catalog: int, row: Row) -> object:
    """What identifies a catalog row across its versions."""
    if catalog == pgc.ATTRIBUTE_RELATION_ID:
        return (row["attrelid"], row["attnum"])
    if catalog == pgc.INDEX_RELATION_ID:
        return row["indexrelid"]
    return row["oid"]


def _net(changes: list[RowChange]) -> list[_Obj]:
    objs: dict[tuple[int, object], _Obj] = {}
    for ch in changes:
        row = ch.new if ch.new is not None else ch.old
        assert row is not None
        k = (ch.catalog, object_key(ch.catalog, row))
        o = objs.get(k)
        if o is None:
            objs[k] = _Obj(ch.catalog, k[1], ch.old, ch.new, ch.lsn, row)
        else:
            o.last_new = ch.new
    return sorted(objs.values(), key=lambda o: o.lsn)


class _Describer:
    """One transaction's description; see `describe`."""

    def __init__(self, objs: list[_Obj], names: Names) -> None:
        self.objs = objs
        self.names = names
        self.out: list[DdlChange] = []
        self._seen: set[str] = set()
        self.rels: dict[int, _Obj] = {}
        self.nsps: dict[int, _Obj] = {}
        self.index_table: dict[int, int] = {}
        self.ext_schemas: set[int] = set()
        for o in objs:
            row = o.last_new or o.first_old or o.any_row
            if o.catalog == pgc.RELATION_RELATION_ID:
                self.rels[_int(o.key)] = o
            elif o.catalog == pgc.NAMESPACE_RELATION_ID:
                self.nsps[_int(o.key)] = o
            elif o.catalog == pgc.INDEX_RELATION_ID:
                self.index_table[_int(row["indexrelid"])] = _int(row["indrelid"])
            elif o.catalog == pgc.EXTENSION_RELATION_ID and (o.first_old is None) != (
                    o.last_new is None):
                self.ext_schemas.add(_int(row["extnamespace"]))

    # -- names ---------------------------------------------------------------------
    def rel(self, oid: int, *, old: bool = False) -> RelInfo | None:
        o = self.rels.get(oid)
        if o is not None:
            row = (o.first_old or o.last_new) if old else (o.last_new or o.first_old)
            assert row is not None
            return RelInfo.from_row(row)
        return self.names.relation(oid)

    def nsp(self, oid: int) -> str:
        o = self.nsps.get(oid)
        if o is not None:
            row = o.last_new or o.first_old
            assert row is not None
            return str(row["nspname"])
        return self.names.namespace(oid) or str(oid)

    def role(self, oid: object) -> str:
        return self.names.role(_int(oid)) or str(oid)

    def qrel(self, info: RelInfo) -> str:
        return qualified(self.nsp(info.namespace), info.name)

    def created_or_dropped(self, rel_oid: int) -> bool:
        o = self.rels.get(rel_oid)
        return o is not None and (o.first_old is None or o.last_new is None)

    # -- output --------------------------------------------------------------------
    def emit(self, statement: str, action: str, obj: str, schema: str, name: str, *,
             relations: tuple[str, ...] = (), role: str = "", temp: bool = False) -> None:
        if statement in self._seen:
            return
        self._seen.add(statement)
        self.out.append(DdlChange(statement, action, obj, schema, name, relations, role, temp))

    def run(self) -> list[DdlChange]:
        handlers: dict[int, Callable[[_Obj], None]] = {
            pgc.RELATION_RELATION_ID: self.relation,
            pgc.ATTRIBUTE_RELATION_ID: self.attribute,
            pgc.NAMESPACE_RELATION_ID: self.namespace,
            pgc.DATABASE_RELATION_ID: self.database,
            pgc.AUTHID_RELATION_ID: self.authid,
            pgc.PROCEDURE_RELATION_ID: self.proc,
            pgc.EXTENSION_RELATION_ID: self.extension,
        }
        for o in self.objs:
            if o.first_old is None and o.last_new is None:
                continue  # created and dropped in this transaction
            fn = handlers.get(o.catalog)
            if fn is not None:
                fn(o)
        return self.out

    # -- pg_class ------------------------------------------------------------------
    def relation(self, o: _Obj) -> None:
        oid = _int(o.key)
        row = o.last_new or o.first_old
        assert row is not None
        info = RelInfo.from_row(row)
        nsp = self.nsp(info.namespace)
        if info.kind == pgc.RELKIND_TOASTVALUE or nsp == "pg_toast" or nsp.startswith(
                "pg_toast_temp_"):
            return  # TOAST tables and their indexes come with their table
        obj = pgc.RELKIND_OBJECT.get(info.kind, "RELATION")
        temp = info.persistence == pgc.RELPERSISTENCE_TEMP or _is_temp_schema(nsp)
        if (o.first_old is None or o.last_new is None) and info.namespace in self.ext_schemas:
            return  # an extension's member
        q = qualified(nsp, info.name)
        if o.first_old is None or o.last_new is None:
            verb = "CREATE" if o.first_old is None else "DROP"
            rels: tuple[str, ...] = (q,)
            stmt = f"{verb} {obj} {q}"
            if info.kind in (pgc.RELKIND_INDEX, pgc.RELKIND_PARTITIONED_INDEX):
                table = self.index_table.get(oid)
                tinfo = self.rel(table, old=verb == "DROP") if table is not None else None
                if tinfo is not None:
                    stmt += f" ON {self.qrel(tinfo)}"
                    rels = (q, self.qrel(tinfo))
            self.emit(stmt, verb, obj, nsp, info.name, relations=rels,
                      role=self.role(info.owner), temp=temp)
            return
        self._alter_relation(oid, o.first_old, o.last_new, obj, temp)

    def _alter_relation(self, oid: int, old: Row, new: Row, obj: str, temp: bool) -> None:
        before, after = RelInfo.from_row(old), RelInfo.from_row(new)
        onsp = self.nsp(before.namespace)
        q = qualified(onsp, before.name)
        role = self.role(after.owner)

        def alter(detail: str, *extra: str) -> None:
            self.emit(f"ALTER {obj} {q} {detail}", "ALTER", obj, onsp, before.name,
                      relations=(q, *extra), role=role, temp=temp)

        if before.name != after.name:
            alter(f"RENAME TO {quote_ident(after.name)}", qualified(onsp, after.name))
        if before.namespace != after.namespace:
            nn = self.nsp(after.namespace)
            alter(f"SET SCHEMA {quote_ident(nn)}", qualified(nn, after.name))
        if before.owner != after.owner:
            alter(f"OWNER TO {quote_ident(role)}")
        if old["reltablespace"] != new["reltablespace"]:
            alter("SET TABLESPACE")
        elif before.persistence != after.persistence:
            alter("SET UNLOGGED" if after.persistence == "u" else "SET LOGGED")
        elif (after.kind == pgc.RELKIND_RELATION and old["relfilenode"] != new["relfilenode"]
              and not self._rewritten(oid)):
            self.emit(f"TRUNCATE {q}", "TRUNCATE", obj, onsp, before.name, relations=(q,),
                      role=role, temp=temp)
        if old["relacl"] != new["relacl"]:
            self.emit(f"GRANT/REVOKE ON {obj} {q}", "GRANT/REVOKE", obj, onsp, before.name,
                      relations=(q,), role=role, temp=temp)
        if old["reloptions"] != new["reloptions"]:
            alter("SET (storage parameters)")
        other = [label for col, label in _CLASS_FLAGS if old[col] != new[col]]
        if other:
            alter(f"({', '.join(other)})")

    def _rewritten(self, oid: int) -> bool:
        """make_new_heap's transient heap ``pg_temp_<oid>`` was made here: the
        new relfilenode is a rewrite (VACUUM FULL, CLUSTER, ALTER TABLE)."""
        transient = f"pg_temp_{oid}"
        return any(o.any_row["relname"] == transient for o in self.rels.values())

    # -- pg_attribute --------------------------------------------------------------
    def attribute(self, o: _Obj) -> None:
        row = o.last_new or o.first_old
        assert row is not None
        relid, attnum = _int(row["attrelid"]), _int(row["attnum"])
        if attnum <= 0 or self.created_or_dropped(relid):
            return
        info = self.rel(relid)
        if info is None or info.kind == pgc.RELKIND_TOASTVALUE or info.kind in (
                pgc.RELKIND_INDEX, pgc.RELKIND_PARTITIONED_INDEX):
            return
        obj = pgc.RELKIND_OBJECT.get(info.kind, "TABLE")
        nsp = self.nsp(info.namespace)
        q = qualified(nsp, info.name)
        temp = info.persistence == pgc.RELPERSISTENCE_TEMP or _is_temp_schema(nsp)
        role = self.role(info.owner)
        word = "ATTRIBUTE" if info.kind == pgc.RELKIND_COMPOSITE_TYPE else "COLUMN"

        def alter(detail: str) -> None:
            if info.kind in (pgc.RELKIND_VIEW, pgc.RELKIND_MATVIEW):
                self.emit(f"CREATE OR REPLACE {obj} {q}", "CREATE OR REPLACE", obj, nsp,
                          info.name, relations=(q,), role=role, temp=temp)
                return
            self.emit(f"ALTER {obj} {q} {detail}", "ALTER", obj, nsp, info.name,
                      relations=(q,), role=role, temp=temp)

        old, new = o.first_old, o.last_new
        if old is None:
            assert new is not None
            alter(f"ADD {word} {quote_ident(str(new['attname']))}")
            return
        if new is None:
            alter(f"DROP {word} {quote_ident(str(old['attname']))}")
            return
        name = quote_ident(str(old["attname"]))
        if new["attisdropped"] and not old["attisdropped"]:
            alter(f"DROP {word} {name}")
            return
        if old["attname"] != new["attname"]:
            alter(f"RENAME {word} {name} TO {quote_ident(str(new['attname']))}")
        if old["atttypid"] != new["atttypid"]:
            tname = self.names.type_name(_int(new["atttypid"])) or f"oid {new['atttypid']}"
            alter(f"ALTER {word} {name} TYPE {tname}")
        if old["attnotnull"] != new["attnotnull"]:
            alter(f"ALTER {word} {name} {'SET' if new['attnotnull'] else 'DROP'} NOT NULL")
        if old["atthasdef"] != new["atthasdef"]:
            alter(f"ALTER {word} {name} {'SET' if new['atthasdef'] else 'DROP'} DEFAULT")
        if old["attidentity"] != new["attidentity"]:
            alter(f"ALTER {word} {name} {'ADD' if new['attidentity'] != chr(0) else 'DROP'} "
                  "IDENTITY")

    # -- schemas, databases, roles, functions, extensions -----------------------------
    def _simple(self, o: _Obj, obj: str, name_col: str, *, owner_col: str | None,
                acl_col: str | None, schema: str = "", other: tuple[tuple[str, str], ...] = (),
                temp: bool = False, replace_on_change: bool = False) -> None:
        old, new = o.first_old, o.last_new
        row = new or old
        assert row is not None
        role = self.role(row[owner_col]) if owner_col else ""
        cur = str((old or row)[name_col])
        q = qualified(schema, cur)
        if old is None or new is None:
            verb = "CREATE" if old is None else "DROP"
            self.emit(f"{verb} {obj} {q}", verb, obj, schema, cur, role=role, temp=temp)
            return
        specific = False
        if old[name_col] != new[name_col]:
            specific = True
            self.emit(f"ALTER {obj} {q} RENAME TO {quote_ident(str(new[name_col]))}", "ALTER",
                      obj, schema, cur, role=role, temp=temp)
        if owner_col and old[owner_col] != new[owner_col]:
            specific = True
            self.emit(f"ALTER {obj} {q} OWNER TO {quote_ident(role)}", "ALTER", obj, schema,
                      cur, role=role, temp=temp)
        if acl_col and old[acl_col] != new[acl_col]:
            specific = True
            self.emit(f"GRANT/REVOKE ON {obj} {q}", "GRANT/REVOKE", obj, schema, cur, role=role,
                      temp=temp)
        changed = [label for col, label in other if old[col] != new[col]]
        if changed:
            self.emit(f"ALTER {obj} {q} ({', '.join(changed)})", "ALTER", obj, schema, cur,
                      role=role, temp=temp)
        elif replace_on_change and not specific and old != new:
            self.emit(f"CREATE OR REPLACE {obj} {q}", "CREATE OR REPLACE", obj, schema, cur,
                      role=role, temp=temp)

    def namespace(self, o: _Obj) -> None:
        row = o.last_new or o.first_old
        assert row is not None
        self._simple(o, "SCHEMA", "nspname", owner_col="nspowner", acl_col="nspacl",
                     temp=_is_temp_schema(str(row["nspname"])))

    def database(self, o: _Obj) -> None:
        self._simple(o, "DATABASE", "datname", owner_col="datdba", acl_col="datacl",
                     other=_DATABASE_FLAGS)

    def authid(self, o: _Obj) -> None:
        self._simple(o, "ROLE", "rolname", owner_col=None, acl_col=None, other=_ROLE_FLAGS)

    def proc(self, o: _Obj) -> None:
        row = o.last_new or o.first_old
        assert row is not None
        nsp_oid = _int(row["pronamespace"])
        if (o.first_old is None or o.last_new is None) and nsp_oid in self.ext_schemas:
            return
        obj = pgc.PROKIND_OBJECT.get(str(row["prokind"]), "FUNCTION")
        if o.first_old is not None and o.last_new is not None and \
                o.first_old["pronamespace"] != o.last_new["pronamespace"]:
            nn = self.nsp(_int(o.last_new["pronamespace"]))
            q = qualified(self.nsp(_int(o.first_old["pronamespace"])), str(o.first_old["proname"]))
            self.emit(f"ALTER {obj} {q} SET SCHEMA {quote_ident(nn)}", "ALTER", obj,
                      self.nsp(nsp_oid), str(row["proname"]), role=self.role(row["proowner"]))
            return
        self._simple(o, obj, "proname", owner_col="proowner", acl_col="proacl",
                     schema=self.nsp(nsp_oid), replace_on_change=True)

    def extension(self, o: _Obj) -> None:
        self._simple(o, "EXTENSION", "extname", owner_col="extowner", acl_col=None,
                     replace_on_change=False, other=())


# pg_class columns whose change is an ALTER without a more specific statement
_CLASS_FLAGS = (
    ("relchecks", "check constraints"), ("relhastriggers", "triggers"), ("relhasrules", "rules"),
    ("relrowsecurity", "row level security"), ("relforcerowsecurity", "force row level security"),
    ("relreplident", "replica identity"), ("relispartition", "partition attached or detached"),
    ("relkind", "kind"), ("relam", "access method"), ("reloftype", "OF type"),
    ("relpartbound", "partition bound"),
)
_DATABASE_FLAGS = (
    ("datistemplate", "IS_TEMPLATE"), ("datallowconn", "ALLOW_CONNECTIONS"),
    ("dattablespace", "TABLESPACE"),
)
_ROLE_FLAGS = (
    ("rolsuper", "SUPERUSER"), ("rolinherit", "INHERIT"), ("rolcreaterole", "CREATEROLE"),
    ("rolcreatedb", "CREATEDB"), ("rolcanlogin", "LOGIN"), ("rolreplication", "REPLICATION"),
    ("rolbypassrls", "BYPASSRLS"), ("rolconnlimit", "CONNECTION LIMIT"),
    ("rolpassword", "PASSWORD"), ("rolvaliduntil", "VALID UNTIL"),
)


def describe(changes: list[RowChange], names: Names) -> list[DdlChange]:
    """The statements `changes` (one transaction's catalog rows, in WAL order)
    amount to, in the order their first row was written."""
    return _Describer(_net(changes), names).run()
