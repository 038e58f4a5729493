"""Cancel keys, the SQLSTATE table and the proxy's own error raising (no server)."""

from __future__ import annotations

from strata.errors import (
    InstanceError,
    LsnOutOfRangeError,
    ProtocolError,
    StrataError,
    UnsupportedRecordError,
)
from strata.proxy import messages as m
from strata.proxy import sqlstate
from strata.proxy.cancel import CancelRegistry, CancelTarget
from strata.proxy.travel_sql import raise_sql


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
