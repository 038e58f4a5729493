"""Restore from SQL in a live session through the proxy: ``CALL
strata.restore_table(...)`` (extended protocol from psycopg, simple protocol
from psql), progress and report as notices, refused inside a transaction
block and for roles that may not time travel."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import psycopg
import pytest

from strata.runtime.pgbin import find_pg_binaries
from tests.e2e.restore_helpers import Strata, start_strata
from tests.e2e.workload import fingerprint

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def strata() -> Iterator[Strata]:
    from tests.conftest import _scratch

    yield from start_strata(_scratch("restore-sql-"))


def _proxy(s: Strata, **extra: str) -> str:
    dsn = s.up.proxy_dsn()
    passfile = psycopg.conninfo.conninfo_to_dict(s.dsn).get("passfile")
    params = {"passfile": str(passfile)} if passfile else {}
    return psycopg.conninfo.make_conninfo(dsn, **{**params, **extra})


def test_call_restore_through_the_proxy(strata: Strata) -> None:
    with strata.connect() as c:
        c.execute("CREATE TABLE sales (id int PRIMARY KEY, amount numeric, note text)")
        c.execute("INSERT INTO sales SELECT i, i * 2.5, 'n' || i FROM generate_series(1, 300) i")
        then = fingerprint(c)["public.sales"]
    _, lsn = strata.point()
    with strata.connect() as c:
        c.execute("DROP TABLE sales")
    strata.sync()

    notices: list[str] = []
    with psycopg.connect(_proxy(strata), autocommit=True) as c:
        c.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        cur = c.execute(f"CALL strata.restore_table('public.sales', '{lsn}')")
        assert cur.statusmessage == "CALL"
        assert fingerprint(c)["public.sales"] == then
        with pytest.raises(psycopg.errors.ActiveSqlTransaction), c.transaction():
            c.execute(f"CALL strata.restore_table('public.sales', '{lsn}', "
                      "as_name => 'sales_then')")
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="no parameter 'nope'"):
            c.execute(f"CALL strata.restore_table('public.sales', '{lsn}', nope => 1)")
        with pytest.raises(psycopg.Error, match="exists in the present"):
            c.execute(f"CALL strata.restore_table('public.sales', '{lsn}')")
    assert any("strata restore: copied public.sales (300 rows" in n for n in notices)
    assert any(n.startswith("restored table public.sales as it was at LSN") for n in notices)

    # psql: the simple protocol, next to the live table
    out = subprocess.run([str(find_pg_binaries().path("psql")), "-X", "-v", "ON_ERROR_STOP=1",
                          "-d", _proxy(strata), "-c",
                          f"CALL strata.restore_table('sales', '{lsn}', as_name => 'sales_then')"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "CALL" in out.stdout and 'as "public"."sales_then"' in out.stderr
    with strata.connect() as c:
        assert fingerprint(c)["public.sales_then"] == then


def test_roles_that_may_not_time_travel_are_refused(strata: Strata) -> None:
    with strata.connect() as c:
        c.execute("CREATE ROLE plain LOGIN PASSWORD 'plain-pw'")
    dsn = _proxy(strata, user="plain", password="plain-pw", passfile="/dev/null")
    with psycopg.connect(dsn, autocommit=True) as c, pytest.raises(
            psycopg.errors.InsufficientPrivilege,
            match=r"permission denied to call strata\.restore_table"):
        c.execute("CALL strata.restore_table('x', '0/1')")
