"""`strata.pg.catalog.deform` against PostgreSQL itself: every row of the
catalogs the DDL tracker decodes, cut from the server's own pages
(pageinspect's ``get_raw_page``), must decode to what ``SELECT`` returns for
that ctid: fixed-size columns equal, variable-length ones NULL exactly when
SQL says NULL, and text payloads equal.

The rows include the shapes that move offsets: NULL bitmaps (relacl,
reloptions, proconfig), short and 4-byte varlena headers, 4-byte aclitem[]
aligned after unaligned text, a long function body and a password."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from strata.pg import catalog as pgc
from strata.reconstruct.redo import page_ops
from strata.runtime.cluster import Cluster
from tests.conftest import _scratch, make_cluster

pytestmark = pytest.mark.pg

CATALOGS = ["pg_class", "pg_attribute", "pg_namespace", "pg_database", "pg_authid",
            "pg_index", "pg_proc", "pg_type", "pg_extension"]
TEXT_COLUMNS = {"prosrc", "datcollate", "datctype", "rolpassword"}


@pytest.fixture(scope="module")
def primary() -> Iterator[Cluster]:
    import shutil

    base = _scratch("catrows-")
    c = make_cluster(base / "primary")
    try:
        for sql in [
            "CREATE EXTENSION pageinspect",
            "CREATE SCHEMA s AUTHORIZATION postgres",
            "CREATE ROLE r LOGIN PASSWORD 'secret' VALID UNTIL '2030-01-01'",
            "CREATE TABLE s.t (id int PRIMARY KEY, a text, b numeric(10,2) NOT NULL DEFAULT 1) "
            "WITH (fillfactor = 70)",
            "GRANT SELECT ON s.t TO r",
            "GRANT USAGE ON SCHEMA s TO r",
            "ALTER TABLE s.t DROP COLUMN a",
            "CREATE INDEX t_b ON s.t (b) WHERE b > 0",
            "CREATE FUNCTION s.f(x int) RETURNS int LANGUAGE plpgsql SET search_path = s AS $$"
            + "BEGIN RETURN x + 1; END; -- " + "x" * 3000 + "\n$$",
            "GRANT ALL ON DATABASE postgres TO r",
            "CREATE DATABASE other",
        ]:
            c.sql(sql)
        # acl arrays long enough for a 4-byte header: aligned (typalign d) after text
        for i in range(12):
            c.sql(f"CREATE ROLE g{i}")
            c.sql(f"GRANT CONNECT ON DATABASE other TO g{i}")
            c.sql(f"GRANT EXECUTE ON FUNCTION s.f(int) TO g{i}")
        yield c
    finally:
        c.stop("immediate")
        shutil.rmtree(base, ignore_errors=True)


def _payload(raw: bytes) -> bytes | None:
    """The data of an inline, uncompressed varlena (None otherwise)."""
    b0 = raw[0]
    if b0 == 0x01:
        return None  # TOAST pointer
    if b0 & 0x01:
        return raw[1:]
    if b0 & 0x03 == 0x02:
        return None  # compressed
    return raw[4:]


@pytest.mark.parametrize("catalog", CATALOGS)
def test_rows_decode_as_postgres_reads_them(primary: Cluster, catalog: str) -> None:
    layout = pgc.LAYOUTS[next(o for o, n in pgc.CATALOG_NAMES.items() if n == catalog)]
    # xid and regproc columns as numbers, as the tuple holds them
    cols = [f"{name}::text::bigint" if name.endswith(("frozenxid", "minmxid"))
            else f"{name}::oid" if name == "prosupport" else name for name, _ in layout]
    nblocks = primary.sql(f"SELECT pg_relation_size('{catalog}') / 8192")[0][0]
    var = [name for name, t in layout if t.typlen == -1]
    sizes = [f"pg_column_size({name})" for name in var]  # stored size, header included
    with primary.connect() as conn:
        sql_rows = {str(r[0]): r[1:] for r in conn.execute(
            f"SELECT ctid::text, {', '.join(cols + sizes)} FROM {catalog}").fetchall()}
        checked = 0
        for blk in range(nblocks):
            page = conn.execute("SELECT get_raw_page(%s, %s)", (catalog, blk)).fetchone()[0]
            for off in range(1, page_ops.page_get_max_offset(page) + 1):
                want = sql_rows.get(f"({blk},{off})")
                if want is None:
                    continue  # dead, redirected or not visible
                lp_off, flags, length = page_ops.item_id(page, off)
                assert flags == page_ops.LP_NORMAL
                row = pgc.deform(bytes(page[lp_off:lp_off + length]), layout)
                size_of = dict(zip(var, want[len(layout):], strict=True))
                for (name, t), value in zip(layout, want[:len(layout)], strict=True):
                    got = row[name]
                    if t.typlen == -1:
                        assert (got is None) == (value is None), (catalog, blk, off, name)
                        if isinstance(got, bytes) and got[0] != 0x01:  # not a TOAST pointer
                            assert len(got) == size_of[name], (catalog, blk, off, name)
                        if name in TEXT_COLUMNS and isinstance(got, bytes):
                            data = _payload(got)
                            if data is not None:
                                assert data.decode() == value, (catalog, name)
                    elif t.kind == "char":
                        assert got == (value or "\x00"), (catalog, blk, off, name, got, value)
                    elif t.kind == "i64":
                        continue  # rolvaliduntil is a timestamptz; its NULL-ness is above
                    else:
                        assert got == value, (catalog, blk, off, name, got, value)
                checked += 1
    assert checked == len(sql_rows)
