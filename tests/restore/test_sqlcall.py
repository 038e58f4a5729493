"""CALL strata.restore_*(...) parsed with PostgreSQL's grammar into a restore request."""

from __future__ import annotations

from pathlib import Path

import pglast
import pytest

from strata.errors import ConfigError
from strata.restore.plan import Kind, Request
from strata.restore.sqlcall import parse_call


def _parse(sql: str) -> Request | None:
    return parse_call(pglast.parse_sql(sql)[0].stmt, "shopdb")


def test_positional_and_named_arguments() -> None:
    assert _parse("CALL strata.restore_table('public.orders', '2026-12-01 10:00')") == \
        Request(Kind.TABLE, "public.orders", "2026-12-01 10:00", "shopdb")
    assert _parse("call STRATA.restore_table('o', '0/16B3748', as_name => 'o_then', "
                  "db => 'other')") == Request(Kind.TABLE, "o", "0/16B3748", "other", "o_then")
    assert _parse("CALL strata.restore_schema('s', at => '0/1', replace => true)") == \
        Request(Kind.SCHEMA, "s", "0/1", "shopdb", None, True)
    assert _parse("CALL strata.restore_database(name => 'crm', at => 'yesterday', "
                  "as_name => NULL)") == Request(Kind.DATABASE, "crm", "yesterday", "shopdb")
    assert _parse("CALL strata.restore_table('o', '0/1'::text, replace => false)") == \
        Request(Kind.TABLE, "o", "0/1", "shopdb")


@pytest.mark.parametrize("sql", ["CALL other.restore_table('a', 'b')", "CALL restore_table('a')",
                                 "CALL strata.something('a')", "SELECT strata.restore_table('a')",
                                 "SET strata.travel_lsn = '0/1'"])
def test_other_statements_are_not_ours(sql: str) -> None:
    assert _parse(sql) is None


@pytest.mark.parametrize(("sql", "message"), [
    ("CALL strata.restore_table('a')", "needs a name and a point"),
    ("CALL strata.restore_table('a', now()::text)", "arguments must be constants"),
    ("CALL strata.restore_database('a', '0/1', replace => true)", "has no parameter 'replace'"),
    ("CALL strata.restore_table('a', '0/1', 'x', true, 'db', 'extra')", "too many"),
    ("CALL strata.restore_table(name => 'a', '0/1')", "misplaced"),
])
def test_wrong_arguments_are_named(sql: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _parse(sql)


def test_run_sql_refuses_what_is_not_a_restore_call() -> None:
    from strata.restore.endpoint import Endpoint
    from strata.restore.sqlcall import run_sql

    ep = Endpoint("127.0.0.1", 1, "postgres", Path("/nonexistent"))
    for sql in ("SELECT 1", "CALL strata.restore_table('a', '0/1'); SELECT 1", "CALL x("):
        with pytest.raises(ConfigError):
            run_sql(sql, "db", "role", print, ep)
