"""Response bookkeeping of a backend, cancel keys and the SQLSTATE table (no server)."""

from __future__ import annotations

from typing import Any

from strata.errors import (
    InstanceError,
    LsnOutOfRangeError,
    ProtocolError,
    StrataError,
    UnsupportedRecordError,
)
from strata.proxy import messages as m
from strata.proxy import sqlstate
from strata.proxy.routing import Backend, CancelRegistry, CancelTarget, Expect
from strata.proxy.travel import raise_sql


def _backend() -> Backend:
    none: Any = None
    return Backend("live", "127.0.0.1", 5432, none, none, "postgres")


def _msg(raw: bytes) -> m.Message:
    (msg,) = m.Framer().feed(raw)
    return msg


ERROR = m.encode_error(m.error_fields("22012", "division by zero"))


def test_extended_error_drops_expectations_up_to_sync() -> None:
    be = _backend()
    for kind in "PBDE":
        be.push(Expect(kind))
    be.push(Expect("S"))
    assert be._account(_msg(m.PARSE_COMPLETE))
    assert be._account(_msg(m.BIND_COMPLETE))
    assert be._account(_msg(ERROR))
    assert be.skipping
    assert [e.kind for e in be.expect] == ["S"]
    assert be.will_answer()  # a Sync is pending: messages after it are answered
    assert be._account(_msg(m.encode_ready_for_query("I")))
    assert not be.skipping and not be.expect and be.status == "I"


def test_messages_sent_while_skipping_expect_no_answer() -> None:
    be = _backend()
    be.push(Expect("E"))
    be._account(_msg(ERROR))
    assert be.skipping and not be.will_answer()
    be.push(Expect("B"))  # skipped by the server: no expectation recorded
    assert not be.expect
    be.push(Expect("S"))
    assert [e.kind for e in be.expect] == ["S"]
    assert be.will_answer()


def test_error_inside_simple_query_marks_it_without_skipping() -> None:
    be = _backend()
    q = Expect("S")
    be.push(q)
    assert be._account(_msg(ERROR))
    assert q.errored and not be.skipping
    assert be._account(_msg(m.encode_ready_for_query("E")))
    assert be.status == "E"


def test_injected_parse_reply_is_swallowed_and_hidden_ready_reported() -> None:
    import asyncio

    async def run() -> tuple[str, bool]:
        be = _backend()
        be.push(Expect("P", swallow=True))
        be.push(Expect("B"))
        fut: asyncio.Future[tuple[str, bool]] = asyncio.get_running_loop().create_future()
        be.push(Expect("S", hide_ready=True, done=fut))
        assert not be._account(_msg(m.PARSE_COMPLETE))
        assert be._account(_msg(m.BIND_COMPLETE))
        assert not be._account(_msg(m.encode_ready_for_query("T")))
        return await fut

    assert asyncio.run(run()) == ("T", False)


def test_describe_answers_pop_only_describe_expectations() -> None:
    be = _backend()
    be.push(Expect("D"))
    be.push(Expect("E"))
    be._account(_msg(m.encode_parameter_description([23])))
    assert [e.kind for e in be.expect] == ["D", "E"]
    be._account(_msg(m.NO_DATA))
    assert [e.kind for e in be.expect] == ["E"]
    be._account(_msg(m.encode_data_row(["1"])))
    be._account(_msg(m.encode_command_complete("SELECT 1")))
    assert not be.expect


class _Target(CancelTarget):
    async def cancel(self) -> None:
        return None


def test_cancel_registry_needs_the_exact_secret() -> None:
    reg = CancelRegistry()
    t = _Target()
    pid, secret = reg.register(t, 32)
    assert len(secret) == 32
    assert reg.lookup(pid, secret) is t
    assert reg.lookup(pid, secret[:-1] + bytes([secret[-1] ^ 1])) is None
    assert reg.lookup(pid + 2, secret) is None
    reg.unregister(pid)
    assert reg.lookup(pid, secret) is None


def test_sqlstate_table_overrides_and_falls_back() -> None:
    assert sqlstate.sqlstate_for(LsnOutOfRangeError("x")) == "22023"
    assert sqlstate.sqlstate_for(InstanceError("x")) == "57P03"
    assert sqlstate.sqlstate_for(ProtocolError("x")) == "08P01"
    assert sqlstate.sqlstate_for(UnsupportedRecordError("heap", "X")) == "0A000"
    assert sqlstate.sqlstate_for(StrataError("x")) == "XX000"
    assert sqlstate.sqlstate_for(ConnectionRefusedError()) == "08006"
    assert sqlstate.sqlstate_for(ValueError()) == "XX000"


def test_raise_sql_hex_encodes_every_text() -> None:
    sql = raise_sql(m.error_fields("22007", "it's $$ bad", hint="O'Hint"))
    assert "it's" not in sql and "O'Hint" not in sql
    assert "ERRCODE = '22007'" in sql
    assert b"it's $$ bad".hex() in sql
