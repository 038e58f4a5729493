"""The session state machine without I/O: feed bytes, assert the bytes out (no server)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from strata.errors import ProtocolError
from strata.proxy import framing
from strata.proxy import messages as m
from strata.proxy.machine import (
    TERMINATE,
    Action,
    ClientMachine,
    Expect,
    ServerState,
)
from strata.proxy.scrub import Scrubber
from strata.proxy.statements import Kind

ERROR = m.encode_error(m.error_fields("22012", "division by zero"))
SELECT_REPLY = b"".join([
    m.encode_row_description([m.Column("v")]), m.encode_data_row(["live"]),
    m.encode_command_complete("SELECT 1"), m.encode_ready_for_query("I")])


def _pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    out, pos, i = [], 0, 0
    while pos < len(data):
        n = cuts[i % len(cuts)]
        out.append(data[pos:pos + n])
        pos += n
        i += 1
    return out


# -- server -> client -----------------------------------------------------------------------
def test_a_plain_response_is_passed_on_as_the_same_chunk() -> None:
    srv = ServerState()
    srv.push("S")
    assert srv.feed(SELECT_REPLY) is SELECT_REPLY
    assert srv.idle and srv.status == "I"


def test_extended_error_drops_expectations_up_to_sync() -> None:
    srv = ServerState()
    for kind in "PBDE":
        srv.push(kind)
    srv.push("S")
    srv.feed(m.PARSE_COMPLETE + m.BIND_COMPLETE + ERROR)
    assert srv.skipping
    assert [e.kind for e in srv.expect] == ["S"]
    assert srv.will_answer()  # a Sync is pending: messages after it are answered
    srv.feed(m.encode_ready_for_query("I"))
    assert not srv.skipping and srv.idle and srv.status == "I"


def test_messages_sent_while_skipping_expect_no_answer() -> None:
    srv = ServerState()
    srv.push("E")
    srv.feed(ERROR)
    assert srv.skipping and not srv.will_answer()
    srv.push("B")  # skipped by the server: no expectation recorded
    assert srv.idle
    srv.push("S")
    assert [e.kind for e in srv.expect] == ["S"]
    assert srv.will_answer()


def test_error_inside_a_hidden_simple_query_is_reported_without_skipping() -> None:
    srv = ServerState()
    seen: list[tuple[str, bool]] = []
    srv.push(Expect("S", hide_ready=True, done=lambda status, err: seen.append((status, err))))
    out = srv.feed(ERROR + m.encode_ready_for_query("E"))
    assert out == ERROR  # ReadyForQuery hidden from the client
    assert seen == [("E", True)] and not srv.skipping and srv.status == "E"


def test_injected_parse_reply_is_swallowed() -> None:
    srv = ServerState()
    srv.push(Expect("P", swallow=True))
    srv.push("B")
    srv.push("S")
    out = srv.feed(m.PARSE_COMPLETE + m.BIND_COMPLETE + m.encode_ready_for_query("T"))
    assert out == m.BIND_COMPLETE + m.encode_ready_for_query("T")
    assert srv.special == 0 and srv.idle and srv.status == "T"


def test_describe_answers_pop_only_describe_expectations() -> None:
    srv = ServerState()
    srv.push("D")
    srv.push("E")
    srv.feed(m.encode_parameter_description([23]))
    assert [e.kind for e in srv.expect] == ["D", "E"]
    srv.feed(m.NO_DATA)
    assert [e.kind for e in srv.expect] == ["E"]
    srv.feed(m.encode_data_row(["1"]) + m.encode_command_complete("SELECT 1"))
    assert srv.idle


def test_internal_queries_take_every_message() -> None:
    srv = ServerState()
    got: list[m.Message] = []
    srv.internal = got.append
    assert srv.feed(SELECT_REPLY) == b""
    assert [x.tag for x in got] == ["T", "D", "C", "Z"]


def test_historical_errors_and_notices_are_scrubbed() -> None:
    srv = ServerState(scrub=Scrubber("/tmp/inst/sock", 54321).body)
    notice = m.encode_notice(m.error_fields("00000", "listening on /tmp/inst/sock/.s.PGSQL.54321",
                                            severity="NOTICE"))
    error = m.encode_error(m.error_fields("P0001", "port 54321 in /tmp/inst/sock",
                                          hint="see 54321"))
    srv.push("S")
    out = srv.feed(notice + SELECT_REPLY[:-6] + error + m.encode_ready_for_query("I"))
    assert b"54321" not in out and b"/tmp/inst" not in out
    msgs = framing.Framer().feed(out)
    assert [x.tag for x in msgs] == ["N", "T", "D", "C", "E", "Z"]
    assert m.parse_error_fields(msgs[4].body) == {
        "S": "ERROR", "V": "ERROR", "C": "P0001", "M": "port [hidden] in [hidden]",
        "H": "see [hidden]"}


def _server_stream() -> bytes:
    big = "x" * 3000
    return b"".join([
        m.PARSE_COMPLETE, m.BIND_COMPLETE, m.encode_row_description([m.Column("a")]),
        *(m.encode_data_row([big if i % 3 == 0 else str(i)]) for i in range(12)),
        m.encode_command_complete("SELECT 12"), m.encode_ready_for_query("T"),
        m.encode_notice(m.error_fields("00000", "hello", severity="NOTICE")),
        ERROR, m.encode_ready_for_query("E"),
        m.encode_data_row(["after"]), m.encode_command_complete("SELECT 1"),
        m.encode_ready_for_query("I"),
    ])


def _expectations(srv: ServerState) -> None:
    for kind in ("P", "B", "D", "E", "S", "S", "S"):
        srv.push(kind)


@given(st.lists(st.integers(min_value=1, max_value=5000), min_size=1, max_size=50))
def test_any_split_of_the_server_stream_gives_the_same_bytes_and_books(cuts: list[int]) -> None:
    stream = _server_stream()
    whole = ServerState()
    _expectations(whole)
    assert whole.feed(stream) == stream
    split = ServerState()
    _expectations(split)
    assert b"".join(split.feed(p) for p in _pieces(stream, cuts)) == stream
    assert (split.idle, split.status, split.skipping) == (whole.idle, whole.status, False)
    assert whole.idle and whole.status == "I"


def test_a_bad_server_length_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        ServerState().feed(b"Z\x00\x00\x00\x02I")


# -- client -> server -----------------------------------------------------------------------
def _client() -> tuple[ClientMachine, ServerState]:
    srv = ServerState()
    return ClientMachine(srv), srv


def test_a_plain_query_is_forwarded_as_the_same_chunk() -> None:
    cm, srv = _client()
    q = m.encode_query("SELECT abalance FROM pgbench_accounts WHERE aid = 1")
    out, action = cm.feed(q)
    assert out is q and action is None
    assert [e.kind for e in srv.expect] == ["S"]


def test_a_strata_query_stops_the_relay_and_the_rest_waits() -> None:
    cm, srv = _client()
    q1, q3 = m.encode_query("SELECT 1"), m.encode_query("SELECT 3")
    out, action = cm.feed(q1 + m.encode_query("SELECT 2; SET strata.travel_lsn = '0/1'") + q3)
    assert out == q1
    assert action is not None and action.tag == "Q"
    assert [s.kind for s in action.statements] == [Kind.RELAY, Kind.SET_LSN]
    assert action.statements[1].value == "0/1"
    assert len(srv.expect) == 1  # only q1's
    out, action = cm.feed(b"")
    assert out == q3 and action is None


def test_a_bad_strata_value_is_an_action_with_the_error() -> None:
    cm, _ = _client()
    _, action = cm.feed(m.encode_query("SET strata.travel_wait = 'soon'"))
    assert action is not None and action.error is not None and "travel_wait" in action.error
    out, action = cm.feed(m.encode_query("SET strata.travel_wait = '5s'"))
    assert action is None and out  # a good value is the server's to keep


def test_strata_statements_in_the_extended_protocol_are_actions() -> None:
    cm, srv = _client()
    msgs = [m.encode_parse("s", "SHOW strata.travel_lsn"), m.encode_bind("p", "s"),
            m.encode_describe("P", "p"), m.encode_execute("p"), m.encode_close("S", "s"),
            m.encode_sync()]
    out, a = cm.feed(b"".join(msgs))
    assert out == b"" and a == Action("P", name=b"s", statement=a.statement)
    assert a.statement is not None and a.statement.kind is Kind.SHOW_LSN
    cm.strata_stmts[b"s"] = a.statement  # what the session does once it answered
    out, a = cm.feed(b"")
    assert out == b"" and a is not None and (a.tag, a.name) == ("B", b"p")
    assert a.statement is not None
    cm.strata_portals[b"p"] = a.statement
    tags = []
    for _ in range(3):
        out, a = cm.feed(b"")
        assert out == b"" and a is not None
        tags.append((a.tag, a.target))
    assert tags == [("D", "P"), ("E", ""), ("C", "S")]
    out, a = cm.feed(b"")
    assert out == m.encode_sync() and a is None
    assert [e.kind for e in srv.expect] == ["S"]


def test_set_config_of_a_strata_setting_is_an_action() -> None:
    cm, _ = _client()
    _, a = cm.feed(m.encode_parse("", "SELECT set_config('strata.travel_time', $1, false)"))
    assert a is not None and a.statement is not None and a.statement.kind is Kind.SET_CONFIG


def test_a_statement_prepared_elsewhere_is_prepared_again_and_its_reply_swallowed() -> None:
    cm, live = _client()
    parse = m.encode_parse("s1", "SELECT v FROM t")
    cm.feed(parse + m.encode_sync())
    live.feed(m.PARSE_COMPLETE + m.encode_ready_for_query("I"))
    hist = ServerState()
    cm.switch(hist)  # the session moved to another server
    bind = m.encode_bind("", "s1") + m.encode_execute("") + m.encode_sync()
    out, a = cm.feed(bind)
    assert a is None and out == parse + bind
    reply = m.BIND_COMPLETE + m.encode_command_complete("SELECT 1") + m.encode_ready_for_query("I")
    assert hist.feed(m.PARSE_COMPLETE + reply) == reply
    out, _ = cm.feed(bind)  # prepared there now: nothing injected
    assert out is bind


def test_copy_data_passes_through_even_when_split() -> None:
    cm, _ = _client()
    data = m.encode_copy_data(b"y" * 10000)
    pieces = [data[:7], data[7:4000], data[4000:]]
    outs = [cm.feed(p) for p in pieces]
    assert [o for o, _ in outs] == pieces  # nothing held back, nothing copied together
    assert cm.feed(data[:3]) == (b"", None)  # only an incomplete length word waits
    assert cm.feed(data[3:]) == (data, None)
    out, a = cm.feed(m.encode_copy_done())
    assert out == m.encode_copy_done() and a is None


def test_terminate_is_an_action() -> None:
    cm, _ = _client()
    assert cm.feed(m.encode_terminate()) == (b"", TERMINATE)


def test_a_bad_client_length_is_a_protocol_error() -> None:
    cm, _ = _client()
    with pytest.raises(ProtocolError):
        cm.feed(b"Q\x00\x00\x00\x01")


def _client_stream() -> bytes:
    return b"".join([
        m.encode_query("SELECT 1"),
        m.encode_parse("a", "SELECT $1::int", [23]), m.encode_bind("", "a", ["7"]),
        m.encode_describe("P", ""), m.encode_execute(""), m.encode_flush(), m.encode_sync(),
        m.encode_copy_data(b"z" * 5000), m.encode_copy_done(),
        m.encode_query("SELECT 'reset' AS discard"), m.encode_close("S", "a"), m.encode_sync(),
    ])


@given(st.lists(st.integers(min_value=1, max_value=6000), min_size=1, max_size=50))
def test_any_split_of_the_client_stream_is_relayed_whole(cuts: list[int]) -> None:
    stream = _client_stream()
    whole, wsrv = _client()
    out, a = whole.feed(stream)
    assert out == stream and a is None
    split, ssrv = _client()
    got = []
    for p in _pieces(stream, cuts):
        out, a = split.feed(p)
        assert a is None
        got.append(out)
    assert b"".join(got) == stream
    assert [e.kind for e in ssrv.expect] == [e.kind for e in wsrv.expect] == list("SPBDESSCS")


def test_bind_names_are_read_only_once_the_session_has_moved() -> None:
    cm, live = _client()
    parse = m.encode_parse("s1", "SELECT 1")
    cm.feed(parse)
    cm.switch(live)  # the same server: nothing moved
    assert not cm.moved
    bad_names = b"B\x00\x00\x00\x06xx"  # not NUL-terminated: only a name reader would mind
    assert cm.feed(bad_names) == (bad_names, None)
    cm.switch(ServerState())
    assert cm.moved
    with pytest.raises(ProtocolError):
        cm.feed(bad_names)
