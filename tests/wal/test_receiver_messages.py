"""Unit tests of the replication protocol messages and the receiver's stream
bookkeeping (no server)."""

from __future__ import annotations

import struct

import pytest

from strata.errors import ProtocolError, WalSourceError
from strata.lsn import Lsn
from strata.wal.receiver import WalReceiver
from strata.wal.replication import replication_conninfo
from strata.wal.replication_messages import (
    PrimaryKeepalive,
    SlotInfo,
    StandbyStatusUpdate,
    SystemIdentity,
    XLogData,
    encode_keepalive,
    encode_xlogdata,
    parse_server_message,
    parse_timeline_history,
    split_xlogdata,
    switchpoint_of,
    timeline_of_lsn,
)


def test_xlogdata_round_trips_and_is_big_endian() -> None:
    msg = XLogData(Lsn.parse("1/2000028"), Lsn.parse("1/3000000"), 123456789, b"\x01\x02\x03")
    wire = encode_xlogdata(msg)
    assert wire[:1] == b"w"
    assert wire[1:9] == struct.pack(">Q", 0x1_0200_0028)
    assert parse_server_message(wire) == msg
    assert msg.data_end == Lsn.parse("1/200002B")


def test_keepalive_round_trips_with_reply_flag() -> None:
    for flag in (False, True):
        msg = PrimaryKeepalive(Lsn.parse("0/16B3748"), 42, flag)
        assert parse_server_message(encode_keepalive(msg)) == msg


def test_standby_status_update_layout_matches_walreceiver() -> None:
    upd = StandbyStatusUpdate(Lsn(0x30), Lsn(0x20), Lsn(0x10), 7, True)
    wire = upd.encode()
    # 'r', write, flush, apply (int64 each), sendTime int64, replyRequested byte
    assert wire == b"r" + struct.pack(">QQQqB", 0x30, 0x20, 0x10, 7, 1)
    assert len(wire) == 34
    assert StandbyStatusUpdate.decode(wire) == upd


@pytest.mark.parametrize("buf", [b"", b"z1234", b"w" + b"\0" * 10, b"k" + b"\0" * 5])
def test_malformed_server_messages_raise_protocol_error(buf: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_server_message(buf)


def test_identify_system_row_is_parsed() -> None:
    ident = SystemIdentity.from_row([b"7312345678901234567", b"3", b"0/16B3748", None])
    assert ident == SystemIdentity(7312345678901234567, 3, Lsn.parse("0/16B3748"), None)


def test_read_replication_slot_row_for_missing_and_logical_slots() -> None:
    assert SlotInfo.from_row("s", [None, None, None]) is None
    info = SlotInfo.from_row("s", [b"physical", b"0/3000000", b"1"])
    assert info == SlotInfo("s", Lsn.parse("0/3000000"), 1)
    with pytest.raises(WalSourceError, match="logical slot"):
        SlotInfo.from_row("s", [b"logical", b"0/3000000", b"1"])


def test_timeline_history_picks_the_timeline_of_a_position() -> None:
    history = parse_timeline_history(
        "1\t0/3000000\tno recovery target specified\n\n2\t0/50000A0\tbefore 2000-01-01\n"
    )
    assert [e.tli for e in history] == [1, 2]
    assert timeline_of_lsn(history, 3, Lsn.parse("0/2FFFFFF")) == 1
    assert timeline_of_lsn(history, 3, Lsn.parse("0/3000000")) == 2
    assert timeline_of_lsn(history, 3, Lsn.parse("0/50000A0")) == 3
    assert switchpoint_of(history, 1) == Lsn.parse("0/3000000")
    assert switchpoint_of(history, 3) is None


def test_timeline_history_rejects_garbage_and_disorder() -> None:
    with pytest.raises(WalSourceError, match="line 1"):
        parse_timeline_history("one\t0/1\tx\n")
    with pytest.raises(WalSourceError, match="not ascending"):
        parse_timeline_history("2\t0/5000000\tx\n1\t0/3000000\ty\n")


def test_replication_conninfo_accepts_uri_and_keywords() -> None:
    kv = replication_conninfo("host=127.0.0.1 port=5 user=u")
    assert "replication=true" in kv and "application_name=strata" in kv
    uri = replication_conninfo("postgresql://u@127.0.0.1:5/db?application_name=mine")
    assert "replication=true" in uri and "application_name=mine" in uri


def _receiver(start: str) -> WalReceiver:
    return WalReceiver("host=127.0.0.1 port=1", "strata", Lsn.parse(start))


def test_receiver_trims_overlap_so_the_stream_stays_contiguous() -> None:
    rx = _receiver("0/1000")
    try:
        assert rx._accept(0x1000, 0x2000, b"A" * 16) == b"A" * 16
        assert rx.server_wal_end == Lsn(0x2000)
        # A resent range after a reconnect: wholly old, then partly old.
        assert rx._accept(0x1000, 0, b"A" * 16) is None
        assert rx._accept(0x1008, 0, b"A" * 8 + b"B" * 8) == b"B" * 8
        assert rx.received_lsn == Lsn(0x1018) and rx.server_wal_end == Lsn(0x2000)
    finally:
        rx.close()


def test_receiver_refuses_a_gap_in_the_stream() -> None:
    rx = _receiver("0/1000")
    try:
        with pytest.raises(WalSourceError, match="gap"):
            rx._accept(0x1010, 0, b"x")
    finally:
        rx.close()


def test_split_xlogdata_is_what_the_parser_reads_and_nothing_else() -> None:
    msg = XLogData(Lsn(0x1000), Lsn(0x2000), 42, b"wal bytes")
    wire = encode_xlogdata(msg)
    start, end, data = split_xlogdata(wire)  # type: ignore[misc]
    parsed = parse_server_message(wire)
    assert isinstance(parsed, XLogData)
    assert (start, end, bytes(data)) == (parsed.data_start, parsed.wal_end, parsed.data)
    assert split_xlogdata(encode_keepalive(PrimaryKeepalive(Lsn(1), 0, False))) is None
    assert split_xlogdata(wire[:20]) is None  # too short: the parser raises for it
    with pytest.raises(ProtocolError):
        parse_server_message(wire[:20])


def test_report_never_moves_backwards_and_checks_order() -> None:
    rx = _receiver("0/1000")
    try:
        rx.report(0x2000, 0x1800)
        rx.report(0x1900, 0x1100)  # stale report from a slow thread
        assert (rx._rep_write, rx._rep_flush) == (Lsn(0x2000), Lsn(0x1800))
        with pytest.raises(ValueError):
            rx.report(0x1000, 0x2000)
    finally:
        rx.close()


def test_invalid_slot_names_are_rejected_before_connecting() -> None:
    with pytest.raises(WalSourceError, match="invalid replication slot name"):
        WalReceiver("host=127.0.0.1", 'x"; DROP', 0)


def test_stopped_receiver_polls_none_without_connecting() -> None:
    rx = _receiver("0/1000")
    rx.stop()
    assert rx.poll(5) is None
    assert rx.finished
    rx.close()
