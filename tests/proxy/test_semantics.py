"""Session semantics a user relies on (issue 11), through the real proxy against
the two clusters of conftest: the ingest wait and its setting, set_config and
current_setting, roles and databases that did not exist yet, addresses that
never reach a client, SET ... TO DEFAULT, times in the session's TimeZone and
DateStyle, and historical servers on unix sockets."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from psycopg import errors

from strata.lsn import Lsn
from strata.proxy.history import ResolvedPoint
from strata.proxy.server import ProxyConfig, ProxyThread
from tests.proxy.conftest import (
    OLDEST_TIME,
    ProxyEnv,
    cancel_while_sleeping,
    connect,
    notices,
    psql,
    value,
)

pytestmark = [pytest.mark.e2e, pytest.mark.pg]

PAST = "2020-01-01 00:00:00+00"


def one(conn: psycopg.Connection[Any], sql: str, *args: object) -> Any:
    row = conn.execute(sql, args or None).fetchone()
    assert row is not None
    return row[0]


def shown(conn: psycopg.Connection[Any], name: str) -> tuple[Any, Any]:
    """(SHOW's first column, current_setting) of one setting."""
    return one(conn, f"SHOW {name}"), one(conn, f"SELECT current_setting('{name}')")


def waiting(said: list[str]) -> list[str]:
    return [n for n in said if n.startswith("strata: waiting for ingest")]


# -- item 7: SET ... TO DEFAULT -------------------------------------------------------------
def test_set_to_default_answers_set_as_postgresql_does(env: ProxyEnv) -> None:
    with connect(env) as conn:
        assert conn.execute("SET work_mem TO DEFAULT").statusmessage == "SET"  # the oracle
        conn.execute("SET strata.travel_lsn = '0/3000000'")
        assert conn.execute("SET strata.travel_lsn TO DEFAULT").statusmessage == "SET"
        assert value(conn) == "live"
        conn.execute(f"SET strata.travel_time = '{PAST}'")
        assert conn.execute("SET strata.travel_time = DEFAULT").statusmessage == "SET"
        assert conn.execute("RESET strata.travel_time").statusmessage == "RESET"
        assert value(conn) == "live"
    assert psql(env, "SET strata.travel_time TO DEFAULT").stdout.split() == ["SET"]


# -- item 5: set_config and current_setting ----------------------------------------------------
def test_set_config_of_a_strata_setting_is_refused_with_a_hint(env: ProxyEnv) -> None:
    with connect(env) as conn:
        for name in ("strata.travel_time", "STRATA.travel_lsn", "strata.travel_wait"):
            with pytest.raises(errors.FeatureNotSupported) as ei:
                conn.execute(f"SELECT set_config('{name}', '0/3000000', false)")
            assert "use SET" in (ei.value.diag.message_hint or "")
        with pytest.raises(errors.FeatureNotSupported):  # extended protocol, prepared
            conn.execute("SELECT pg_catalog.set_config('strata.travel_time', %s, false)",
                         [PAST], prepare=True)
        assert value(conn) == "live"
        assert shown(conn, "strata.travel_time") == ("", "")
        # other settings are the server's business, as before
        assert one(conn, "SELECT set_config('work_mem', '5MB', false)") == "5MB"


def test_current_setting_agrees_with_show(env: ProxyEnv) -> None:
    with connect(env) as conn:
        assert shown(conn, "strata.travel_time") == ("", "")
        assert shown(conn, "strata.travel_lsn") == ("", "")
        conn.execute(f"SET strata.travel_time = '{PAST}'")
        assert shown(conn, "strata.travel_time") == (PAST, PAST)
        assert shown(conn, "strata.travel_lsn") == ("", "")
        conn.execute("SET strata.travel_lsn = '0/3000000'")
        assert shown(conn, "strata.travel_lsn") == ("0/3000000", "0/3000000")
        assert shown(conn, "strata.travel_time") == ("", "")
        conn.execute("RESET strata.travel_lsn")
        assert shown(conn, "strata.travel_lsn") == ("", "")
    out = psql(env, "SET strata.travel_lsn = '0/3000000'; "
                    "SELECT current_setting('strata.travel_lsn'); SHOW strata.travel_lsn")
    assert out.stdout.split() == ["SET", "0/3000000", "0/3000000|0/3000000"]


# -- item 4: waiting for ingest ----------------------------------------------------------------
def test_travel_wait_is_a_session_setting(env: ProxyEnv) -> None:
    with connect(env) as conn:
        assert one(conn, "SHOW strata.travel_wait") == "30s"
        conn.execute("SET strata.travel_wait = '2s'")
        assert shown(conn, "strata.travel_wait") == ("2s", "2s")
        with pytest.raises(errors.InvalidParameterValue, match="travel_wait"):
            conn.execute("SET strata.travel_wait = 'soon'")
        assert one(conn, "SHOW strata.travel_wait") == "2s"
        conn.execute("RESET strata.travel_wait")
        assert one(conn, "SHOW strata.travel_wait") == "30s"
        conn.autocommit = False
        conn.execute("SET LOCAL strata.travel_wait = 1")
        assert one(conn, "SHOW strata.travel_wait") == "1"
        conn.rollback()
        conn.autocommit = True
        assert one(conn, "SHOW strata.travel_wait") == "30s"
        # it follows the session into the past and back
        conn.execute("SET strata.travel_wait = '7s'")
        conn.execute("SET strata.travel_lsn = '0/3000000'")
        assert one(conn, "SHOW strata.travel_wait") == "7s"
        conn.execute("RESET strata.travel_lsn")
        assert one(conn, "SHOW strata.travel_wait") == "7s"
    with psycopg.connect(env.dsn(), options="-c strata.travel_wait=0", autocommit=True) as conn:
        assert one(conn, "SHOW strata.travel_wait") == "0"
        conn.execute("RESET ALL")
        assert one(conn, "SHOW strata.travel_wait") == "0"
    with pytest.raises(psycopg.OperationalError, match="travel_wait"):
        psycopg.connect(env.dsn(), options="-c strata.travel_wait=later")


def test_set_waits_for_ingest_and_says_how_far_it_is(env: ProxyEnv,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(env.history, "behind", 3)
    with connect(env) as conn:
        said = notices(conn)
        conn.execute("SET strata.travel_lsn = '0/3000000'")
        assert waiting(said) == [
            "strata: waiting for ingest to reach LSN 0/3000000: ingest at 0/100, "
            "the primary at 0/F000000, estimating the time to go",
            "strata: waiting for ingest to reach LSN 0/3000000: ingest at 0/101, "
            "the primary at 0/F000000, ~2 s to go",
            "strata: waiting for ingest to reach LSN 0/3000000: ingest at 0/102, "
            "the primary at 0/F000000, ~1 s to go"]
        assert said[-1].startswith("strata: session is now at LSN 0/3000000")
        assert value(conn) == "history"


def test_travel_wait_bounds_the_wait(env: ProxyEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(env.history, "behind", 5)
    with connect(env) as conn:
        said = notices(conn)
        conn.execute("SET strata.travel_wait = 0")
        with pytest.raises(errors.ObjectNotInPrerequisiteState, match="not ingested yet"):
            conn.execute("SET strata.travel_lsn = '0/3000000'")
        assert waiting(said) == []  # 0: fails at once
        conn.execute("SET strata.travel_wait = '2s'")
        with pytest.raises(errors.ObjectNotInPrerequisiteState):
            conn.execute(f"SET strata.travel_time = '{PAST}'")
        assert len(waiting(said)) == 2
        assert value(conn) == "live"
        conn.execute("SET strata.travel_wait = '1min'")
        conn.execute(f"SET strata.travel_time = '{PAST}'")
        assert value(conn) == "history"


# -- item 6: roles and databases that did not exist yet; no address reaches the client -------
def test_a_role_created_after_the_target_gets_a_clear_error(
        env: ProxyEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    env.live.sql("CREATE ROLE newcomer LOGIN SUPERUSER")
    env.live.sql("CREATE ROLE newbie LOGIN IN ROLE strata_time_travel")
    try:
        xmin = int(env.live.sql("SELECT xmin::text FROM pg_authid WHERE rolname = 'newcomer'")[0][0])
        created = datetime(2021, 6, 1, 12, 0, tzinfo=UTC)
        monkeypatch.setitem(env.history.commits, xmin, ResolvedPoint(Lsn(0x5000000), xmin, created))
        with connect(env, user="newcomer") as conn:
            conn.execute("SET TimeZone = 'Asia/Tokyo'")
            with pytest.raises(errors.InvalidParameterValue) as ei:
                conn.execute("SET strata.travel_lsn = '0/3000000'")
            assert ei.value.diag.message_primary == 'role "newcomer" did not exist at LSN 0/3000000'
            assert ei.value.diag.message_hint == (
                'role "newcomer" exists from LSN 0/5000000 on (committed at 2021-06-01 21:00:00+09)')
            assert value(conn) == "live"
        with connect(env, user="newbie") as conn:  # may not read pg_authid: no point known
            with pytest.raises(errors.InvalidParameterValue) as ei:
                conn.execute(f"SET strata.travel_time = '{PAST}'")
            assert ei.value.diag.message_primary == (
                f'role "newbie" did not exist at {PAST} (LSN 0/3000028)')
            assert str(env.hist.port) not in str(ei.value)
            assert value(conn) == "live"
    finally:
        env.live.sql("DROP ROLE newcomer")
        env.live.sql("DROP ROLE newbie")


def test_a_database_created_after_the_target_gets_a_clear_error(
        env: ProxyEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    env.live.sql("CREATE DATABASE fresh")
    try:
        xmin = int(env.live.sql("SELECT xmin::text FROM pg_database WHERE datname = 'fresh'")[0][0])
        monkeypatch.setitem(env.history.commits, xmin,
                            ResolvedPoint(Lsn(0x6000000), xmin, datetime(2022, 1, 1, tzinfo=UTC)))
        with connect(env, dbname="fresh") as conn:
            with pytest.raises(errors.InvalidParameterValue) as ei:
                conn.execute("SET strata.travel_lsn = '0/3000000'")
            assert ei.value.diag.message_primary == (
                'database "fresh" did not exist at LSN 0/3000000')
            assert (ei.value.diag.message_hint or "").startswith(
                'database "fresh" exists from LSN 0/6000000 on')
    finally:
        env.live.sql("DROP DATABASE fresh WITH (FORCE)")


# where the server listens: its TCP address or its socket directory, and its port
RAISE_ADDRESS = """DO $$DECLARE
  here text := coalesce(host(inet_server_addr()), current_setting('unix_socket_directories'));
BEGIN
  RAISE NOTICE 'notice from %:%', here, current_setting('port')
    USING DETAIL = current_setting('unix_socket_directories') || '/.s.PGSQL.'
                   || current_setting('port');
  RAISE EXCEPTION 'error from %:%', here, current_setting('port')
    USING HINT = 'port ' || current_setting('port');
END$$"""


def _texts(diag: Any) -> str:
    return " ".join(str(getattr(diag, f) or "") for f in (
        "message_primary", "message_detail", "message_hint", "context"))


def _no_address_reaches_the_client(env: ProxyEnv, hidden: list[str]) -> None:
    with connect(env) as conn:
        got: list[str] = []
        conn.add_notice_handler(lambda d: got.append(_texts(d)))
        conn.execute("SET strata.travel_lsn = '0/3000000'")
        with pytest.raises(errors.RaiseException) as ei:
            conn.execute(RAISE_ADDRESS)
        texts = [*got, _texts(ei.value.diag)]
        assert texts[-2].startswith("notice from [hidden]")
        assert texts[-1].startswith("error from [hidden]")
        for t in texts:
            for word in hidden:
                assert word not in t, (word, t)
        assert value(conn) == "history"


def test_no_historical_address_reaches_the_client_over_tcp(env: ProxyEnv) -> None:
    _no_address_reaches_the_client(env, ["127.0.0.1", str(env.hist.port), ".s.PGSQL"])


def test_connection_failures_do_not_name_the_historical_server(
        env: ProxyEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    from strata.runtime.cluster import free_port

    port = free_port()
    monkeypatch.setattr(env.history, "port", port)
    with connect(env) as conn:
        with pytest.raises(errors.ConnectionFailure) as ei:
            conn.execute("SET strata.travel_lsn = '0/3000000'")
        assert "cannot connect to the historical server at LSN 0/3000000" in str(ei.value)
        assert str(port) not in str(ei.value) and "127.0.0.1" not in str(ei.value)
    monkeypatch.setattr(env.history, "host", "/nonexistent/strata-sockets")
    with connect(env) as conn:
        with pytest.raises(errors.ConnectionFailure) as ei:
            conn.execute("SET strata.travel_lsn = '0/3000000'")
        assert "strata-sockets" not in str(ei.value) and str(port) not in str(ei.value)


# -- item 13: historical servers (and the primary) on unix sockets ---------------------------
def test_historical_server_on_a_unix_socket(env: ProxyEnv,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    sockets = str(env.hist.socket_dir)
    monkeypatch.setattr(env.history, "host", sockets)
    with connect(env) as conn:
        conn.execute("SET strata.travel_lsn = '0/3000000'")
        assert value(conn) == "history"
        assert one(conn, "SELECT inet_server_addr()") is None  # not TCP
        cancel_while_sleeping(conn)  # the cancel request goes to the socket too
        assert value(conn) == "history"
    _no_address_reaches_the_client(env, [sockets, str(env.hist.port)])


def test_primary_on_a_unix_socket(env: ProxyEnv) -> None:
    config = ProxyConfig(primary_host=str(env.live.socket_dir), primary_port=env.live.port)
    with ProxyThread(config, env.history) as proxy:
        dsn = f"host=127.0.0.1 port={proxy.port} dbname=postgres user=postgres"
        with psycopg.connect(dsn, autocommit=True) as conn:
            assert value(conn) == "live"
            assert one(conn, "SELECT inet_server_addr()") is None
            cancel_while_sleeping(conn)
            conn.execute("SET strata.travel_lsn = '0/3000000'")
            assert value(conn) == "history"


# -- item 8: times in the session's TimeZone and DateStyle ----------------------------------
def test_times_are_shown_in_the_session_timezone_and_datestyle(env: ProxyEnv) -> None:
    with connect(env) as conn:
        said = notices(conn)
        conn.execute("SET TimeZone = 'Asia/Tokyo'")
        conn.execute("SET DateStyle = 'SQL, DMY'")

        def as_shown(t: datetime) -> str:  # the session's own server formats it
            return str(one(conn, "SELECT %s::timestamptz::text", t.isoformat()))

        target = as_shown(datetime(2020, 1, 1, tzinfo=UTC))
        assert target == "01/01/2020 09:00:00 JST"
        conn.execute("SET strata.travel_time = '2020-01-01 00:00:00+00'")
        assert said[-1] == ("strata: session is now at LSN 0/3000028 (01/01/2020 09:00:00 JST); "
                            f"last commit included: xid 742 at {target}")
        assert shown(conn, "strata.travel_time") == (target, target)
        conn.execute("SET strata.travel_lsn = '0/3000000'")
        commit = as_shown(datetime(2026, 4, 6, 10, 0, tzinfo=UTC))
        assert said[-1].endswith(f"last commit included: xid 741 at {commit}")
        with pytest.raises(errors.InvalidParameterValue) as ei:
            conn.execute("SET strata.travel_time = '1990-01-01 00:00+00'")
        assert ei.value.diag.message_hint == f"the nearest valid point is {as_shown(OLDEST_TIME)}"
