"""Reading pg_dump's plain script as entries, and renaming names in statements."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from strata.errors import RestoreError
from strata.restore.script import Dump, Renamer, split_qualified, split_statements

SCRIPT = r"""--
-- PostgreSQL database dump
--

\restrict abc123

SET statement_timeout = 0;
SELECT pg_catalog.set_config('search_path', '', false);

--
-- Name: s; Type: SCHEMA; Schema: -; Owner: postgres
--

CREATE SCHEMA "s";


ALTER SCHEMA "s" OWNER TO "postgres";

--
-- Name: f(); Type: FUNCTION; Schema: s; Owner: postgres
--

CREATE FUNCTION "s"."f"() RETURNS integer
    LANGUAGE "sql"
    AS $$ select 1; -- not a boundary
$$;

--
-- Name: t; Type: TABLE; Schema: s; Owner: alice
--

CREATE TABLE "s"."t" (
    "id" integer NOT NULL,
    "note" "text" DEFAULT 'a;b'::"text"
);

--
-- Data for Name: t; Type: TABLE DATA; Schema: s; Owner: alice
--

COPY "s"."t" ("id", "note") FROM stdin;
1	back\\slash
2	\\.
3	--
4	\N
\.


--
-- Data for Name: e; Type: TABLE DATA; Schema: s; Owner: alice
--

COPY "s"."e" ("id") FROM stdin;
\.


--
-- Name: TABLE "t"; Type: COMMENT; Schema: s; Owner: alice
--

COMMENT ON TABLE "s"."t" IS 'the "s"."t" table; really';

--
-- PostgreSQL database dump complete
--

\unrestrict abc123

"""


def chunks(data: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]


def read_all(data: bytes, size: int) -> tuple[list[tuple[str, list[str], bytes | None]], bool]:
    dump = Dump(chunks(data, size))
    out = []
    for e in dump.entries():
        body = b"".join(e.data) if e.data is not None else None
        out.append((e.header.describe(), [e.copy] if e.copy else e.statements, body))
    return out, dump.complete


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 7, 64, 1 << 20])
def test_entries_and_copy_data_do_not_depend_on_chunk_boundaries(size: int) -> None:
    got, complete = read_all(SCRIPT.encode(), size)
    assert complete
    assert [g[0] for g in got] == ["PREAMBLE ", "SCHEMA s", "FUNCTION s.f()", "TABLE s.t",
                                   "TABLE DATA s.t", "TABLE DATA s.e", "COMMENT s.TABLE \"t\""]
    assert got[0][1] == ["SET statement_timeout = 0",
                         "SELECT pg_catalog.set_config('search_path', '', false)"]
    assert got[1][1] == ['CREATE SCHEMA "s"', 'ALTER SCHEMA "s" OWNER TO "postgres"']
    assert len(got[2][1]) == 1 and got[2][1][0].endswith("$$")
    assert got[4][1] == ['COPY "s"."t" ("id", "note") FROM stdin']
    assert got[4][2] == b"1\tback\\\\slash\n2\t\\\\.\n3\t--\n4\t\\N\n"
    assert got[5][2] == b""
    assert got[6][1] == ["COMMENT ON TABLE \"s\".\"t\" IS 'the \"s\".\"t\" table; really'"]


def test_a_script_without_its_trailer_is_incomplete() -> None:
    text = SCRIPT[:SCRIPT.index("-- PostgreSQL database dump complete")]
    _, complete = read_all(text.encode(), 4096)
    assert not complete


def test_a_script_cut_inside_copy_data_raises() -> None:
    text = SCRIPT[:SCRIPT.index("3\t--")]
    with pytest.raises(RestoreError, match=r"ended inside the data of TABLE DATA s\.t"):
        read_all(text.encode(), 16)


def test_unconsumed_copy_data_is_skipped() -> None:
    dump = Dump(chunks(SCRIPT.encode(), 5))
    kinds = [e.header.type for e in dump.entries()]  # never touches e.data
    assert kinds.count("TABLE DATA") == 2 and kinds[-1] == "COMMENT"
    assert dump.complete


def test_split_statements_drops_comments_and_semicolons() -> None:
    assert split_statements("-- x\nSELECT 1;\n/* y */ SELECT ';';\n") == ["SELECT 1",
                                                                         "SELECT ';'"]
    assert split_statements("-- only a comment\n") == []


def test_split_qualified() -> None:
    assert split_qualified('"A"."b.c"') == ["A", "b.c"]
    assert split_qualified('Abc.x') == ["abc", "x"]
    assert split_qualified('"a""b".c') == ['a"b', "c"]


def test_renamer_relations_and_their_sequences() -> None:
    r = Renamer(relations={("public", "orders"): ("tmp", "orders"),
                           ("public", "orders_id_seq"): ("tmp", "orders_id_seq")})
    assert r.rename('CREATE TABLE "public"."orders" ("id" integer)') == \
        'CREATE TABLE "tmp"."orders" ("id" integer)'
    assert r.rename("ALTER TABLE ONLY \"public\".\"orders\" ALTER COLUMN \"id\" SET DEFAULT "
                    "\"nextval\"('\"public\".\"orders_id_seq\"'::\"regclass\")") == \
        "ALTER TABLE ONLY \"tmp\".\"orders\" ALTER COLUMN \"id\" SET DEFAULT " \
        "\"nextval\"('\"tmp\".\"orders_id_seq\"'::\"regclass\")"
    assert r.rename("SELECT pg_catalog.setval('\"public\".\"orders_id_seq\"', 3, true)") == \
        "SELECT pg_catalog.setval('\"tmp\".\"orders_id_seq\"', 3, true)"
    assert r.rename('ALTER SEQUENCE "public"."orders_id_seq" OWNED BY "public"."orders"."id"') \
        == 'ALTER SEQUENCE "tmp"."orders_id_seq" OWNED BY "tmp"."orders"."id"'
    # other tables, string literals and comments keep their names
    fk = 'ALTER TABLE ONLY "public"."orders" ADD CONSTRAINT "c" FOREIGN KEY ("x") ' \
         'REFERENCES "public"."customers"("id")'
    assert r.rename(fk) == fk.replace('"public"."orders"', '"tmp"."orders"')
    comment = "COMMENT ON COLUMN \"public\".\"x\".\"y\" IS 'see public.orders'"
    assert r.rename(comment) == comment
    assert r.rename("SELECT 'public.orders'::text") == "SELECT 'public.orders'::text"


def test_renamer_schema_everywhere_but_bodies() -> None:
    r = Renamer(schemas={"s": "s_old"})
    assert r.rename('CREATE SCHEMA "s"') == 'CREATE SCHEMA "s_old"'
    assert r.rename('GRANT USAGE ON SCHEMA "s" TO "bob"') == 'GRANT USAGE ON SCHEMA "s_old" TO "bob"'
    assert r.rename('CREATE VIEW "s"."v" AS SELECT "t"."id" FROM "s"."t" "t"') == \
        'CREATE VIEW "s_old"."v" AS SELECT "t"."id" FROM "s_old"."t" "t"'
    body = 'CREATE FUNCTION "s"."f"() RETURNS int AS $$ select * from s.t $$ LANGUAGE sql'
    assert r.rename(body) == body.replace('"s"."f"', '"s_old"."f"')
    assert r.rename('SET search_path = "public"') == 'SET search_path = "public"'
    assert r.rename("SELECT pg_catalog.setval('s.q', 1, true)") == \
        "SELECT pg_catalog.setval('\"s_old\".\"q\"', 1, true)"


def test_renamer_databases() -> None:
    r = Renamer(databases={"shop": "strata_restore_1"})
    assert r.rename("CREATE DATABASE \"shop\" WITH TEMPLATE = template0 ENCODING = 'UTF8'") == \
        "CREATE DATABASE \"strata_restore_1\" WITH TEMPLATE = template0 ENCODING = 'UTF8'"
    assert r.rename('ALTER DATABASE "shop" OWNER TO "postgres"') == \
        'ALTER DATABASE "strata_restore_1" OWNER TO "postgres"'
    assert r.rename("COMMENT ON DATABASE \"shop\" IS 'shop'") == \
        "COMMENT ON DATABASE \"strata_restore_1\" IS 'shop'"
    assert not Renamer()
    assert Renamer().rename('SELECT "shop"') == 'SELECT "shop"'
