"""The proxy end to end, against two plain PostgreSQL 18 clusters: "live" (the
primary) and a read-only "historical" one whose table t holds 'history'
instead of 'live'. Clients: psycopg 3 (extended protocol, prepared statements,
pipeline mode) and the bundled psql (simple protocol)."""

from __future__ import annotations

import socket
import struct
import subprocess
import time
from pathlib import Path

import psycopg
import pytest
from psycopg import errors

from strata.errors import InstanceError
from strata.proxy import framing
from strata.proxy import messages as m
from strata.proxy.server import ProxyConfig, ProxyThread
from tests.proxy.conftest import (
    ALICE_PASSWORD,
    ProxyEnv,
    cancel_while_sleeping,
    connect,
    notices,
    psql,
    value,
)

pytestmark = [pytest.mark.e2e, pytest.mark.pg]

PAST = "2020-01-01 00:00:00+00"


# -- relaying ---------------------------------------------------------------------------------
def test_plain_queries_reach_the_primary(env: ProxyEnv) -> None:
    with connect(env) as conn:
        assert value(conn) == "live"
        port = conn.execute("SELECT current_setting('port')").fetchone()
        assert port is not None and int(port[0]) == env.live.port


def test_ssl_request_is_answered_n(env: ProxyEnv) -> None:
    with socket.create_connection(("127.0.0.1", env.port), timeout=10) as s:
        s.sendall(struct.pack("!II", 8, 80877103))
        assert s.recv(1) == b"N"
        s.sendall(struct.pack("!II", 8, 80877104))  # GSSENCRequest
        assert s.recv(1) == b"N"


def test_sslmode_require_is_refused_without_certificate(env: ProxyEnv) -> None:
    with pytest.raises(psycopg.OperationalError, match="SSL"):
        psycopg.connect(env.dsn(sslmode="require"))


def test_password_auth_is_relayed_with_scram(env: ProxyEnv) -> None:
    with psycopg.connect(env.dsn(user="alice", password=ALICE_PASSWORD)) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("alice",)
        method = conn.info.pgconn.used_password
        assert method
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(env.dsn(user="alice", password="wrong"))
    out = psql(env, "SELECT current_user", user="alice", password=ALICE_PASSWORD)
    assert out.stdout.strip() == "alice"


def test_pipeline_and_prepared_statements_are_relayed(env: ProxyEnv) -> None:
    with connect(env) as conn:
        with conn.pipeline():
            curs = [conn.execute("SELECT %s::int + 1", [i], prepare=True) for i in range(20)]
        assert [c.fetchone() for c in curs] == [(i + 1,) for i in range(20)]
        with pytest.raises(errors.DivisionByZero), conn.pipeline():
            conn.execute("SELECT 1/0")
            conn.execute("SELECT 2")
        assert conn.execute("SELECT 3").fetchone() == (3,)


# -- travelling -------------------------------------------------------------------------------
def test_set_travel_time_switches_to_history_and_reset_returns(env: ProxyEnv) -> None:
    with connect(env) as conn:
        said = notices(conn)
        conn.execute(f"SET strata.travel_time = '{PAST}'")
        assert value(conn) == "history"
        assert said and "LSN 0/3000028" in said[-1] and "xid 742" in said[-1]
        row = conn.execute("SHOW strata.travel_time").fetchone()
        assert row == ("2020-01-01 00:00:00+00", "0/3000028")
        assert conn.execute("SHOW strata.travel_lsn").fetchone() == ("", "0/3000028")
        conn.execute("RESET strata.travel_time")
        assert value(conn) == "live"
        assert "present" in said[-1]
        assert conn.execute("SHOW strata.travel_time").fetchone() == ("", None)


def test_timestamp_is_parsed_with_session_timezone(env: ProxyEnv) -> None:
    with connect(env) as conn:
        conn.execute("SET TimeZone = 'Asia/Tokyo'")
        conn.execute("SET strata.travel_time TO '2020-01-01 09:00'")
        kind, args = env.history.calls[-2]
        assert kind == "time"
        when, literal, tz = args  # type: ignore[misc]
        assert when.isoformat() == "2020-01-01T00:00:00+00:00"
        assert (literal, tz) == ("2020-01-01 09:00", "Asia/Tokyo")
        # the session setting came along to the historical server
        assert conn.execute("SHOW TimeZone").fetchone() == ("Asia/Tokyo",)
        assert conn.execute("SELECT current_setting('port')").fetchone() == (str(env.hist.port),)


def test_settings_changed_in_history_follow_back_to_present(env: ProxyEnv) -> None:
    with connect(env) as conn:
        conn.execute("SET strata.travel_lsn = '0/3000000'")
        conn.execute("SET application_name = 'from-the-past'")
        conn.execute("RESET strata.travel_lsn")
        assert conn.execute("SHOW application_name").fetchone() == ("from-the-past",)
        assert conn.execute("SELECT current_setting('port')").fetchone() == (str(env.live.port),)


def test_rolled_back_set_does_not_follow(env: ProxyEnv) -> None:
    with connect(env) as conn:
        conn.execute("BEGIN")
        conn.execute("SET work_mem = '7MB'")
        conn.execute("ROLLBACK")
        conn.execute("SET strata.travel_lsn = '0/3000000'")
        assert conn.execute("SHOW work_mem").fetchone() == ("4MB",)


def test_psql_multi_statement_string_switches_mid_string(env: ProxyEnv) -> None:
    out = psql(env, "SELECT v FROM t; SET strata.travel_lsn = '0/3000000'; SELECT v FROM t; "
                    "SHOW strata.travel_lsn; RESET strata.travel_lsn; SELECT v FROM t")
    # psql prints every result of the string, command tags included, as it would directly
    assert out.stdout.split() == ["live", "SET", "history", "0/3000000|0/3000000", "RESET", "live"]
    assert "session is now at LSN 0/3000000" in out.stderr


def test_multi_statement_string_stops_at_first_error(env: ProxyEnv) -> None:
    out = psql(env, "SET strata.travel_lsn = '0/3000000'; SELECT 1/0; SHOW strata.travel_lsn",
               check=False)
    assert out.returncode != 0
    assert "division by zero" in out.stderr
    assert "0/3000000|" not in out.stdout


def test_writes_in_history_get_read_only_error(env: ProxyEnv) -> None:
    with connect(env) as conn:
        conn.execute("SET strata.travel_lsn = '0/3000000'")
        with pytest.raises(errors.ReadOnlySqlTransaction) as ei:
            conn.execute("INSERT INTO t VALUES ('x')")
        assert ei.value.sqlstate == "25006"
        assert value(conn) == "history"


def test_unparsable_time_is_22007_and_session_stays_usable(env: ProxyEnv) -> None:
    with connect(env) as conn:
        with pytest.raises(errors.InvalidDatetimeFormat):
            conn.execute("SET strata.travel_time = 'not a time'")
        assert value(conn) == "live"
    out = psql(env, "SET strata.travel_time = 'yesterday-ish'", check=False)
    assert "invalid input syntax for type timestamp with time zone" in out.stderr


def test_time_in_future_names_nearest_point(env: ProxyEnv) -> None:
    with connect(env) as conn:
        with pytest.raises(errors.InvalidParameterValue) as ei:
            conn.execute("SET strata.travel_time = '2999-01-01'")
        assert "in the future" in str(ei.value)
        assert ei.value.diag.message_hint and "nearest valid point" in ei.value.diag.message_hint
        with pytest.raises(errors.InvalidParameterValue) as ei2:
            conn.execute("SET strata.travel_lsn = '1F/0'")
        assert ei2.value.diag.message_hint == "the nearest valid point is F/0"
        with pytest.raises(errors.InvalidTextRepresentation):
            conn.execute("SET strata.travel_lsn = 'nope'")
        assert value(conn) == "live"


def test_set_inside_transaction_block_is_25001_and_aborts_it(env: ProxyEnv) -> None:
    with connect(env, autocommit=False) as conn:
        conn.execute("SELECT 1")
        with pytest.raises(errors.ActiveSqlTransaction):
            conn.execute("SET strata.travel_lsn = '0/3000000'")
        with pytest.raises(errors.InFailedSqlTransaction):
            conn.execute("SELECT 1")
        conn.rollback()
        assert value(conn) == "live"
    out = psql(env, "BEGIN; SET strata.travel_lsn = '0/3000000'; COMMIT", check=False)
    assert "inside a transaction block" in out.stderr


def test_set_local_is_rejected(env: ProxyEnv) -> None:
    with connect(env) as conn, pytest.raises(errors.FeatureNotSupported):
        conn.execute("SET LOCAL strata.travel_time = '2020-01-01'")


def test_role_without_privilege_gets_42501(env: ProxyEnv) -> None:
    with connect(env, user="bob") as conn:
        with pytest.raises(errors.InsufficientPrivilege) as ei:
            conn.execute("SET strata.travel_lsn = '0/3000000'")
        assert "strata_time_travel" in (ei.value.diag.message_hint or "")
        assert value(conn) == "live"
    with connect(env, user="carol") as conn:  # a member of strata_time_travel
        conn.execute("SET strata.travel_lsn = '0/3000000'")
        assert value(conn) == "history"
        assert conn.execute("SELECT current_user").fetchone() == ("carol",)


def test_password_user_travels_without_proxy_knowing_password(env: ProxyEnv) -> None:
    with psycopg.connect(env.dsn(user="alice", password=ALICE_PASSWORD), autocommit=True) as conn:
        conn.execute("SET strata.travel_lsn = '0/3000000'")
        assert value(conn) == "history"
        assert conn.execute("SELECT session_user").fetchone() == ("alice",)


def test_reset_all_and_discard_all_return_to_present(env: ProxyEnv) -> None:
    with connect(env) as conn:
        conn.execute("SET strata.travel_lsn = '0/3000000'")
        conn.execute("RESET ALL")
        assert value(conn) == "live"
        conn.execute("SET strata.travel_lsn = '0/3000000'")
        conn.execute("DISCARD ALL")
        assert value(conn) == "live"
    assert psql(env, "SET strata.travel_lsn = '0/3000000'; DISCARD ALL; SELECT v FROM t"
                ).stdout.split() == ["SET", "DISCARD", "ALL", "live"]


def test_prepared_statement_follows_the_session_into_history(env: ProxyEnv) -> None:
    with connect(env) as conn:
        for _ in range(3):
            assert conn.execute("SELECT v FROM t", prepare=True).fetchone() == ("live",)
        conn.execute("SET strata.travel_lsn = '0/3000000'")
        assert conn.execute("SELECT v FROM t", prepare=True).fetchone() == ("history",)
        conn.execute("RESET strata.travel_lsn")
        assert conn.execute("SELECT v FROM t", prepare=True).fetchone() == ("live",)


def test_travel_in_pipeline_routes_later_queries(env: ProxyEnv) -> None:
    with connect(env) as conn:
        with conn.pipeline():
            a = conn.execute("SELECT v FROM t")
            conn.execute("SET strata.travel_lsn = '0/3000000'")
            b = conn.execute("SELECT v FROM t")
            c = conn.execute("SHOW strata.travel_lsn")
        assert a.fetchone() == ("live",)
        assert b.fetchone() == ("history",)
        assert c.fetchone() == ("0/3000000", "0/3000000")
        with pytest.raises(errors.InvalidDatetimeFormat), conn.pipeline():
            conn.execute("SET strata.travel_time = 'garbage'")
            conn.execute("SELECT v FROM t")
        assert value(conn) == "history"


def test_startup_option_starts_in_the_past(env: ProxyEnv) -> None:
    opts = {"options": f"-c strata.travel_time={PAST.replace(' ', chr(92) + ' ')}"}
    with psycopg.connect(env.dsn(), autocommit=True, **opts) as conn:
        assert value(conn) == "history"
        assert conn.execute("SHOW strata.travel_time").fetchone() == (PAST, "0/3000028")


def test_startup_option_reaches_a_dropped_database(env: ProxyEnv) -> None:
    with psycopg.connect(env.dsn("gone"), autocommit=True,
                         options="-c strata.travel_lsn=0/3000000 -c work_mem=5MB") as conn:
        assert value(conn) == "gone-history"
        assert conn.execute("SHOW work_mem").fetchone() == ("5MB",)
        with pytest.raises(errors.ObjectNotInPrerequisiteState):
            conn.execute("RESET strata.travel_lsn")
        assert value(conn) == "gone-history"


def test_startup_option_without_privilege_is_fatal(env: ProxyEnv) -> None:
    with pytest.raises(psycopg.OperationalError, match="permission denied"):
        psycopg.connect(env.dsn(user="bob"), options="-c strata.travel_lsn=0/3000000")


def test_cancel_reaches_live_and_historical_servers(env: ProxyEnv) -> None:
    with connect(env) as conn:
        cancel_while_sleeping(conn)
        assert value(conn) == "live"
        conn.execute("SET strata.travel_lsn = '0/3000000'")
        cancel_while_sleeping(conn)
        assert value(conn) == "history"


def test_protocol_3_2_session_with_long_cancel_key(env: ProxyEnv) -> None:
    with psycopg.connect(env.dsn(max_protocol_version="3.2"), autocommit=True) as conn:
        assert conn.info.pgconn.full_protocol_version == 30002
        cancel_while_sleeping(conn)
        conn.execute("SET strata.travel_lsn = '0/3000000'")
        cancel_while_sleeping(conn)
        assert value(conn) == "history"


class RawClient:
    """A hand-written frontend that sends its bytes one at a time."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.framer = framing.Framer()
        self.pending: list[m.Message] = []

    def send_slowly(self, data: bytes) -> None:
        for i in range(len(data)):
            self.sock.sendall(data[i:i + 1])

    def until_ready(self) -> list[m.Message]:
        got: list[m.Message] = []
        while True:
            while not self.pending:
                chunk = self.sock.recv(65536)
                assert chunk, "proxy closed the connection"
                self.pending.extend(self.framer.feed(chunk))
            msg = self.pending.pop(0)
            got.append(msg)
            if msg.tag == "Z":
                return got

    def close(self) -> None:
        self.sock.sendall(m.encode_terminate())
        self.sock.close()


def test_client_bytes_arriving_one_at_a_time_are_reassembled(env: ProxyEnv) -> None:
    c = RawClient(env.port)
    try:
        c.send_slowly(m.StartupMessage(m.PROTOCOL_3_0, (("user", "postgres"),
                                                         ("database", "postgres"))).encode())
        startup = c.until_ready()
        keys = [x for x in startup if x.tag == "K"]
        assert len(keys) == 1 and len(m.parse_backend_key_data(keys[0].body)[1]) == 4
        c.send_slowly(m.encode_query("SET strata.travel_lsn = '0/3000000'; SELECT v FROM t"))
        got = c.until_ready()
        assert [x.tag for x in got] == ["N", "C", "T", "D", "C", "Z"]
        assert m.parse_data_row(got[3].body) == [b"history"]
        # extended protocol, pipelined, one byte at a time
        c.send_slowly(b"".join([
            m.encode_parse("", "SHOW strata.travel_lsn"), m.encode_bind("", ""),
            m.encode_describe("P", ""), m.encode_execute(""),
            m.encode_parse("s", "SELECT v FROM t"), m.encode_bind("", "s"),
            m.encode_execute(""), m.encode_sync()]))
        got = c.until_ready()
        assert [x.tag for x in got] == ["1", "2", "T", "D", "C", "1", "2", "D", "C", "Z"]
        assert m.parse_data_row(got[3].body) == [b"0/3000000", b"0/3000000"]
        assert m.parse_data_row(got[7].body) == [b"history"]
        assert m.parse_ready_for_query(got[-1].body) == "I"
    finally:
        c.close()


def test_extended_batch_after_an_error_skips_strata_statements(env: ProxyEnv) -> None:
    c = RawClient(env.port)
    try:
        c.sock.sendall(m.StartupMessage(m.PROTOCOL_3_0, (("user", "postgres"),)).encode())
        c.until_ready()
        c.sock.sendall(b"".join([
            m.encode_parse("", "SELECT 1/(0 * random())::int"), m.encode_bind("", ""),
            m.encode_execute(""),
            m.encode_parse("", "SET strata.travel_lsn = '0/3000000'"), m.encode_bind("", ""),
            m.encode_execute(""), m.encode_sync(),
            m.encode_query("SELECT v FROM t")]))
        got = c.until_ready()
        assert [x.tag for x in got] == ["1", "2", "E", "Z"]
        got = c.until_ready()
        assert m.parse_data_row(got[1].body) == [b"live"]
    finally:
        c.close()


def test_tls_is_offered_when_a_certificate_is_configured(env: ProxyEnv, scratch_dir: Path) -> None:
    cert, key = scratch_dir / "cert.pem", scratch_dir / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    config = ProxyConfig(primary_host="127.0.0.1", primary_port=env.live.port,
                         tls_cert=cert, tls_key=key)
    with ProxyThread(config, env.history) as proxy:
        dsn = f"host=127.0.0.1 port={proxy.port} dbname=postgres user=postgres sslmode=require"
        with psycopg.connect(dsn, autocommit=True) as conn:
            assert conn.info.pgconn.ssl_in_use
            conn.execute("SET strata.travel_lsn = '0/3000000'")
            assert value(conn) == "history"


def test_travelling_again_moves_between_points(env: ProxyEnv) -> None:
    with connect(env) as conn:
        said = notices(conn)
        conn.execute("SET strata.travel_lsn = '0/3000000'")
        conn.execute("SET work_mem = '6MB'")
        conn.execute(f"SET strata.travel_time = '{PAST}'")
        assert "LSN 0/3000028" in said[-1]
        assert conn.execute("SHOW strata.travel_lsn").fetchone() == ("", "0/3000028")
        assert conn.execute("SHOW work_mem").fetchone() == ("6MB",)
        assert value(conn) == "history"
        conn.execute("RESET strata.travel_time")
        assert value(conn) == "live"
        assert conn.execute("SHOW work_mem").fetchone() == ("6MB",)


def test_provider_policy_can_refuse_time_travel(env: ProxyEnv,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(env.history, "may_time_travel", lambda user: user != "postgres")
    with connect(env) as conn:
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("SET strata.travel_lsn = '0/3000000'")
        assert value(conn) == "live"


def test_show_when_in_the_present_answers_empty_setting(env: ProxyEnv) -> None:
    assert psql(env, "SHOW strata.travel_time").stdout.strip() == "|"
    with connect(env) as conn:
        cur = conn.execute("SHOW strata.travel_lsn")
        assert cur.description is not None
        assert [d.name for d in cur.description] == ["strata.travel_lsn", "lsn"]
        assert cur.fetchone() == ("", None)


def test_copy_in_and_out_are_relayed(env: ProxyEnv) -> None:
    with connect(env) as conn:
        conn.execute("CREATE TEMP TABLE c (a int, b text)")
        with conn.cursor().copy("COPY c FROM STDIN") as copy:
            for i in range(1000):
                copy.write_row((i, f"row {i}"))
        assert conn.execute("SELECT count(*), sum(a) FROM c").fetchone() == (1000, 499500)
        with conn.cursor().copy("COPY c TO STDOUT") as copy:
            rows = list(copy.rows())
        assert len(rows) == 1000
        conn.execute("SET strata.travel_lsn = '0/3000000'")
        with conn.cursor().copy("COPY t TO STDOUT") as copy:
            assert [tuple(r) for r in copy.rows()] == [("history",)]


def test_large_result_to_a_slow_reader_arrives_whole(env: ProxyEnv) -> None:
    c = RawClient(env.port)
    try:
        c.sock.sendall(m.StartupMessage(m.PROTOCOL_3_0, (("user", "postgres"),
                                                         ("application_name", "slow-reader"),
                                                         )).encode())
        c.until_ready()
        c.sock.sendall(m.encode_query(
            "SELECT i, repeat('x', 1000) FROM generate_series(1, 20000) i"))
        # We read nothing: the proxy's buffer to us fills up and it must stop reading
        # from the server, whose backend then waits to write to its client.
        deadline = time.monotonic() + 60
        with env.live.connect() as conn:
            while not conn.execute("SELECT count(*) FROM pg_stat_activity WHERE "
                                   "application_name = 'slow-reader' AND "
                                   "wait_event = 'ClientWrite'").fetchone()[0]:
                assert time.monotonic() < deadline, "the server was never paused"
                time.sleep(0.01)
        got = c.until_ready()
        rows = [m.parse_data_row(x.body) for x in got if x.tag == "D"]
        assert len(rows) == 20000
        assert [int(r[0] or b"0") for r in rows[:3]] == [1, 2, 3]
        assert rows[-1][0] == b"20000" and rows[-1][1] == b"x" * 1000
        assert m.parse_command_complete(got[-2].body) == "SELECT 20000"
    finally:
        c.close()


def test_set_in_a_historical_transaction_block_aborts_it_there(env: ProxyEnv) -> None:
    out = psql(env, "SET strata.travel_lsn = '0/3000000'; BEGIN; SELECT v FROM t; "
                    "SET strata.travel_lsn = '0/2000000'", check=False)
    assert "inside a transaction block" in out.stderr
    with connect(env, autocommit=False) as conn:
        conn.autocommit = True
        conn.execute("SET strata.travel_lsn = '0/3000000'")
        conn.autocommit = False
        assert value(conn) == "history"
        with pytest.raises(errors.ActiveSqlTransaction):
            conn.execute("RESET strata.travel_lsn")
        with pytest.raises(errors.InFailedSqlTransaction):
            conn.execute("SELECT 1")
        conn.rollback()
        assert value(conn) == "history"


def test_historical_server_failure_is_57p03_and_session_stays(env: ProxyEnv,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(point: object, dbname: str) -> tuple[str, int]:
        raise InstanceError("historical instance at 0/3000000 failed to start")

    monkeypatch.setattr(env.history, "server_for", broken)
    with connect(env) as conn:
        with pytest.raises(errors.CannotConnectNow) as ei:
            conn.execute("SET strata.travel_lsn = '0/3000000'")
        assert "failed to start" in str(ei.value)
        assert value(conn) == "live"


def test_unreachable_historical_server_is_an_error_not_a_hang(env: ProxyEnv,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from strata.runtime.cluster import free_port

    port = free_port()
    monkeypatch.setattr(env.history, "server_for", lambda point, dbname: ("127.0.0.1", port))
    with connect(env) as conn:
        with pytest.raises(psycopg.errors.ConnectionFailure):
            conn.execute("SET strata.travel_lsn = '0/3000000'")
        assert value(conn) == "live"


def test_pipelined_simple_queries_around_a_switch_keep_their_order(env: ProxyEnv) -> None:
    c = RawClient(env.port)
    try:
        c.sock.sendall(m.StartupMessage(m.PROTOCOL_3_0, (("user", "postgres"),)).encode())
        c.until_ready()
        queries = [f"SELECT v || '-{i}' FROM t" for i in range(30)]
        queries[10] = "SET strata.travel_lsn = '0/3000000'"
        queries[20] = "RESET strata.travel_lsn"
        c.sock.sendall(b"".join(m.encode_query(q) for q in queries))
        values = []
        for _ in range(30):
            got = c.until_ready()
            rows = [m.parse_data_row(x.body) for x in got if x.tag == "D"]
            values.append(rows[0][0].decode() if rows and rows[0][0] else None)
        expect = ([f"live-{i}" for i in range(10)] + [None]
                  + [f"history-{i}" for i in range(11, 20)] + [None]
                  + [f"live-{i}" for i in range(21, 30)])
        assert values == expect
    finally:
        c.close()


def test_large_copy_from_client_is_relayed_whole(env: ProxyEnv) -> None:
    with connect(env) as conn:
        conn.execute("CREATE TEMP TABLE big (a int, b text)")
        payload = "y" * 200
        with conn.cursor().copy("COPY big FROM STDIN") as copy:
            for i in range(50000):
                copy.write_row((i, payload))
        assert conn.execute("SELECT count(*), sum(a), min(length(b)) FROM big").fetchone() == (
            50000, 1249975000, 200)


@pytest.mark.parametrize("where", ["tcp", "socket"])
def test_a_primary_that_is_gone_is_named_with_sqlstate_57p03(
        env: ProxyEnv, scratch_dir: Path, where: str) -> None:
    """The proxy relays to a primary over TCP or its unix socket (as `strata up` does
    for its embedded one); when nothing answers there, the client is told where
    (a socket by its port, not its directory) and why, with 57P03."""
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    host = "127.0.0.1" if where == "tcp" else str(scratch_dir)
    with ProxyThread(ProxyConfig(primary_host=host, primary_port=port), env.history) as proxy:
        c = RawClient(proxy.port)
        try:
            c.sock.sendall(m.StartupMessage(m.PROTOCOL_3_0, (("user", "postgres"),
                                                             ("database", "postgres"))).encode())
            while not c.pending:
                chunk = c.sock.recv(65536)
                assert chunk, "proxy closed the connection without a word"
                c.pending.extend(c.framer.feed(chunk))
        finally:
            c.sock.close()
    assert c.pending[0].tag == "E"
    fields = m.parse_error_fields(c.pending[0].body)
    assert (fields["S"], fields["C"]) == ("FATAL", "57P03")
    text = fields["M"]
    assert text.startswith("the primary server is not reachable at ")
    if where == "tcp":
        assert text.endswith(f"127.0.0.1:{port}: Connection refused")
    else:
        assert text.endswith(f"its unix socket (port {port}): No such file or directory")
        assert str(scratch_dir) not in text
