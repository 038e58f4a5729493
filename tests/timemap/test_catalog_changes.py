"""`describe`: catalog row changes of one transaction -> statements, on
hand-made rows (the pg-tier proof, test_ddl_pg.py, runs real ones)."""

from __future__ import annotations

from strata.ingest.catalog_changes import RelInfo, RowChange, describe, quote_ident
from strata.pg import catalog as pgc

PUBLIC, SALES, TOAST = 2200, 17000, 99
NSP = {PUBLIC: "public", SALES: "sales", TOAST: "pg_toast", 11: "pg_catalog"}
ROLES = {10: "postgres", 20: "alice"}


class Names:
    def __init__(self, rels: dict[int, RelInfo] | None = None) -> None:
        self.rels = rels or {}

    def relation(self, oid: int) -> RelInfo | None:
        return self.rels.get(oid)

    def namespace(self, oid: int) -> str | None:
        return NSP.get(oid)

    def role(self, oid: int) -> str | None:
        return ROLES.get(oid)

    def type_name(self, oid: int) -> str | None:
        return {25: "text", 1043: "varchar"}.get(oid)


def cls(oid: int, name: str, kind: str = "r", nsp: int = PUBLIC, **kw: object) -> pgc.Row:
    row: pgc.Row = {"oid": oid, "relname": name, "relnamespace": nsp, "relowner": 10,
                    "relkind": kind, "relpersistence": "p", "relfilenode": oid,
                    "reltablespace": 0, "relacl": None, "reloptions": None, "relchecks": 0,
                    "relhastriggers": False, "relhasrules": False, "relrowsecurity": False,
                    "relforcerowsecurity": False, "relispartition": False,
                    "relreplident": "d", "relam": 2, "reloftype": 0, "relpartbound": None}
    row.update(kw)
    return row


def att(rel: int, num: int, name: str, **kw: object) -> pgc.Row:
    row: pgc.Row = {"attrelid": rel, "attnum": num, "attname": name, "atttypid": 25,
                    "attnotnull": False, "atthasdef": False, "attidentity": "\x00",
                    "attisdropped": False}
    row.update(kw)
    return row


def ins(cat: int, row: pgc.Row, lsn: int = 0) -> RowChange:
    return RowChange(lsn, cat, None, row)


def dele(cat: int, row: pgc.Row, lsn: int = 0) -> RowChange:
    return RowChange(lsn, cat, row, None)


def upd(cat: int, old: pgc.Row, new: pgc.Row, lsn: int = 0) -> RowChange:
    return RowChange(lsn, cat, old, new)


C, A, IDX, N = (pgc.RELATION_RELATION_ID, pgc.ATTRIBUTE_RELATION_ID, pgc.INDEX_RELATION_ID,
                pgc.NAMESPACE_RELATION_ID)


def stmts(changes: list[RowChange], names: Names | None = None) -> list[str]:
    return [c.statement for c in describe(changes, names or Names())]


def test_create_table_lists_relations_not_toast_or_columns() -> None:
    got = describe([ins(C, cls(16384, "demo"), 1), ins(A, att(16384, 1, "id"), 2),
                    ins(C, cls(16387, "pg_toast_16384", "t", TOAST), 3),
                    ins(C, cls(16388, "pg_toast_16384_index", "i", TOAST), 4),
                    ins(C, cls(16389, "demo_pkey", "i"), 5),
                    ins(IDX, {"indexrelid": 16389, "indrelid": 16384}, 6),
                    upd(C, cls(16384, "demo"), cls(16384, "demo", relchecks=0), 7)], Names())
    assert [c.statement for c in got] == ["CREATE TABLE public.demo",
                                         "CREATE INDEX public.demo_pkey ON public.demo"]
    assert got[1].relations == ("public.demo_pkey", "public.demo")
    assert got[0].role == "postgres" and not got[0].temp


def test_created_and_dropped_in_one_transaction_says_nothing() -> None:
    assert stmts([ins(C, cls(16384, "t", relpersistence="t")), dele(C, cls(16384, "t"))]) == []


def test_rename_set_schema_owner_and_grant() -> None:
    old = cls(16384, "demo")
    assert stmts([upd(C, old, cls(16384, "customers"))]) == [
        "ALTER TABLE public.demo RENAME TO customers"]
    assert stmts([upd(C, old, cls(16384, "demo", relnamespace=SALES))]) == [
        "ALTER TABLE public.demo SET SCHEMA sales"]
    assert stmts([upd(C, old, cls(16384, "demo", relowner=20))]) == [
        "ALTER TABLE public.demo OWNER TO alice"]
    assert stmts([upd(C, old, cls(16384, "demo", relacl=1234))]) == [
        "GRANT/REVOKE ON TABLE public.demo"]


def test_new_relfilenode_is_truncate_unless_a_transient_heap_shows_a_rewrite() -> None:
    old, new = cls(16384, "demo"), cls(16384, "demo", relfilenode=16500)
    assert stmts([upd(C, old, new)]) == ["TRUNCATE public.demo"]
    transient = cls(16500, "pg_temp_16384")
    assert stmts([ins(C, transient), upd(C, old, new), dele(C, transient)]) == []
    idx = cls(16389, "demo_pkey", "i")
    assert stmts([upd(C, idx, cls(16389, "demo_pkey", "i", relfilenode=16600))]) == []


def test_columns_of_an_existing_table() -> None:
    names = Names({16384: RelInfo("demo", PUBLIC, "r", "p", 10)})
    email = att(16384, 3, "email")
    assert stmts([ins(A, email)], names) == ["ALTER TABLE public.demo ADD COLUMN email"]
    assert stmts([upd(A, email, att(16384, 3, "mail"))], names) == [
        "ALTER TABLE public.demo RENAME COLUMN email TO mail"]
    dropped = att(16384, 3, "........pg.dropped.3........", attisdropped=True)
    assert stmts([upd(A, email, dropped)], names) == ["ALTER TABLE public.demo DROP COLUMN email"]
    assert stmts([upd(A, email, att(16384, 3, "email", atttypid=1043, attnotnull=True))],
                 names) == ["ALTER TABLE public.demo ALTER COLUMN email TYPE varchar",
                            "ALTER TABLE public.demo ALTER COLUMN email SET NOT NULL"]
    assert stmts([ins(A, att(16384, -1, "ctid"))], names) == []  # system columns


def test_quoted_names_and_temporary_schemas() -> None:
    assert quote_ident("demo") == "demo" and quote_ident("Demo") == '"Demo"'
    assert quote_ident('a "b"') == '"a ""b"""'
    got = describe([ins(N, {"oid": 30000, "nspname": "pg_temp_3", "nspowner": 10,
                            "nspacl": None}),
                    ins(C, cls(30001, "My Table", nsp=30000, relpersistence="t"))], Names())
    assert [(c.statement, c.temp) for c in got] == [("CREATE SCHEMA pg_temp_3", True),
                                                    ('CREATE TABLE pg_temp_3."My Table"', True)]


def test_schema_database_role_function_extension() -> None:
    nsp = {"oid": 30000, "nspname": "s1", "nspowner": 10, "nspacl": None}
    assert stmts([upd(N, nsp, {**nsp, "nspname": "s2"})]) == ["ALTER SCHEMA s1 RENAME TO s2"]
    db = {"oid": 16400, "datname": "olddb", "datdba": 10, "datacl": None,
          "datistemplate": False, "datallowconn": True, "dattablespace": 1663}
    got = describe([dele(pgc.DATABASE_RELATION_ID, db)], Names())
    assert [(c.statement, c.object_type, c.name, c.role) for c in got] == [
        ("DROP DATABASE olddb", "DATABASE", "olddb", "postgres")]
    assert stmts([upd(pgc.DATABASE_RELATION_ID, db, {**db, "datallowconn": False})]) == [
        "ALTER DATABASE olddb (ALLOW_CONNECTIONS)"]
    role = {"oid": 30, "rolname": "r1", "rolsuper": False, "rolinherit": True,
            "rolcreaterole": False, "rolcreatedb": False, "rolcanlogin": False,
            "rolreplication": False, "rolbypassrls": False, "rolconnlimit": -1,
            "rolpassword": None, "rolvaliduntil": None}
    assert stmts([upd(pgc.AUTHID_RELATION_ID, role, {**role, "rolpassword": 77})]) == [
        "ALTER ROLE r1 (PASSWORD)"]
    fn = {"oid": 40000, "proname": "f", "pronamespace": PUBLIC, "proowner": 10,
          "prokind": "f", "proacl": None, "prosrc": 1}
    assert stmts([upd(pgc.PROCEDURE_RELATION_ID, fn, {**fn, "prosrc": 2})]) == [
        "CREATE OR REPLACE FUNCTION public.f"]
    ext = {"oid": 50000, "extname": "pg_trgm", "extowner": 10, "extnamespace": PUBLIC}
    assert stmts([ins(pgc.EXTENSION_RELATION_ID, ext, 1),
                  ins(pgc.PROCEDURE_RELATION_ID, {**fn, "oid": 40001}, 2),
                  ins(C, cls(16390, "other", nsp=SALES), 3)]) == [
        "CREATE EXTENSION pg_trgm", "CREATE TABLE sales.other"]
