"""Wire-protocol codec: round trips, fragmented input, malformed input."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from strata.errors import ProtocolError
from strata.proxy import framing
from strata.proxy import messages as m
from strata.proxy.options import extract_settings, join_options, split_options


def _frontend_stream() -> bytes:
    return b"".join([
        m.encode_query("SELECT 'é'; SELECT 2"),
        m.encode_parse("s1", "SELECT $1::int", [23]),
        m.encode_bind("p1", "s1", ["42", None]),
        m.encode_describe("P", "p1"),
        m.encode_execute("p1", 10),
        m.encode_close("S", "s1"),
        m.encode_flush(),
        m.encode_sync(),
        m.encode_copy_data(b"\x00\x01row"),
        m.encode_copy_done(),
        m.encode_copy_fail("stop"),
        m.encode_sasl_initial_response("SCRAM-SHA-256", b"n,,n=,r=abc"),
        m.encode_password(b"c=biws,r=abc,p=xyz"),
        m.encode_terminate(),
    ])


def test_framer_splits_a_stream_of_frontend_messages() -> None:
    msgs = framing.Framer().feed(_frontend_stream())
    assert [x.tag for x in msgs] == list("QPBDECHSdcfppX")
    assert m.parse_query(msgs[0].body) == "SELECT 'é'; SELECT 2"
    assert m.parse_parse(msgs[1].body) == m.ParseMsg("s1", "SELECT $1::int", (23,))
    assert m.parse_bind_names(msgs[2].body) == ("p1", "s1")
    assert m.parse_describe(msgs[3].body) == ("P", "p1")
    assert m.parse_execute(msgs[4].body) == ("p1", 10)
    assert m.parse_describe(msgs[5].body) == ("S", "s1")
    assert b"".join(x.encode() for x in msgs) == _frontend_stream()


@given(st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=200))
def test_framer_gives_the_same_messages_for_any_fragmentation(cuts: list[int]) -> None:
    stream = _frontend_stream()
    whole = framing.Framer().feed(stream)
    framer = framing.Framer()
    got: list[m.Message] = []
    pos = 0
    i = 0
    while pos < len(stream):
        n = cuts[i % len(cuts)]
        got.extend(framer.feed(stream[pos:pos + n]))
        pos += n
        i += 1
    assert got == whole
    assert framer.buffered == 0


def test_framer_one_byte_at_a_time_keeps_partial_tail() -> None:
    stream = m.encode_query("SELECT 1")
    framer = framing.Framer()
    for b in stream[:-1]:
        assert framer.feed(bytes([b])) == []
    assert framer.buffered == len(stream) - 1
    assert framer.feed(stream[-1:]) == [m.Message("Q", b"SELECT 1\x00")]


def test_framer_rejects_impossible_length() -> None:
    with pytest.raises(ProtocolError, match="invalid message length 3"):
        framing.Framer().feed(b"Q\x00\x00\x00\x03")
    with pytest.raises(ProtocolError):
        framing.Framer(max_len=100).feed(b"Q" + struct.pack("!I", 101))


def test_backend_messages_round_trip() -> None:
    cols = [m.Column("a"), m.Column("b", type_oid=23, table_oid=1259, attnum=2, type_size=4)]
    stream = b"".join([
        m.encode_authentication(m.AUTH_SASL, b"SCRAM-SHA-256\x00SCRAM-SHA-256-PLUS\x00\x00"),
        m.encode_parameter_status("TimeZone", "UTC"),
        m.encode_backend_key_data(1234, b"k" * 32),
        m.encode_negotiate_protocol_version(0, ["_pq_.x"]),
        m.encode_row_description(cols),
        m.encode_data_row(["x", None, b"\x00\xff"]),
        m.encode_command_complete("SELECT 1"),
        m.encode_error(m.error_fields("22007", "bad time", hint="try again")),
        m.encode_notice(m.error_fields("00000", "hello", severity="NOTICE")),
        m.encode_parameter_description([23, 25]),
        m.encode_ready_for_query("T"),
    ])
    msgs = framing.Framer().feed(stream)
    assert [x.tag for x in msgs] == list("RSKvTDCENtZ")
    code, data = m.parse_authentication(msgs[0].body)
    assert code == m.AUTH_SASL
    assert m.parse_sasl_mechanisms(data) == ["SCRAM-SHA-256", "SCRAM-SHA-256-PLUS"]
    assert m.parse_parameter_status(msgs[1].body) == ("TimeZone", "UTC")
    assert m.parse_backend_key_data(msgs[2].body) == (1234, b"k" * 32)
    assert m.parse_negotiate_protocol_version(msgs[3].body) == (0, ["_pq_.x"])
    assert m.parse_row_description(msgs[4].body) == cols
    assert m.parse_data_row(msgs[5].body) == [b"x", None, b"\x00\xff"]
    assert m.parse_command_complete(msgs[6].body) == "SELECT 1"
    assert m.parse_error_fields(msgs[7].body) == {
        "S": "ERROR", "V": "ERROR", "C": "22007", "M": "bad time", "H": "try again"}
    assert m.parse_error_fields(msgs[8].body)["S"] == "NOTICE"
    assert m.parse_ready_for_query(msgs[10].body) == "T"


def test_backend_key_data_accepts_long_keys_and_rejects_bad_lengths() -> None:
    assert m.parse_backend_key_data(struct.pack("!I", 7) + b"s" * 256) == (7, b"s" * 256)
    with pytest.raises(ProtocolError):
        m.parse_backend_key_data(struct.pack("!I", 7) + b"s" * 257)
    with pytest.raises(ProtocolError):
        m.parse_backend_key_data(b"\x00\x00\x00")


def test_ready_for_query_status_is_checked() -> None:
    with pytest.raises(ProtocolError):
        m.parse_ready_for_query(b"X")


def test_startup_message_round_trips_for_protocol_3_0_and_3_2() -> None:
    for proto in (m.PROTOCOL_3_0, m.PROTOCOL_3_2):
        s = m.StartupMessage(proto, (("user", "bob"), ("database", "db"), ("options", "-c a=b")))
        f = framing.StartupFramer()
        raw = s.encode()
        assert f.feed(raw[:5]) is None
        got = f.feed(raw[5:])
        assert got == s
        assert isinstance(got, m.StartupMessage) and got.minor == (proto & 0xFFFF)


def test_special_first_packets_decode() -> None:
    assert framing.decode_first_packet(m.SSLRequest().encode()) == m.SSLRequest()
    assert framing.decode_first_packet(m.GSSENCRequest().encode()) == m.GSSENCRequest()
    for secret in (b"abcd", b"x" * 32, b"y" * 256):
        c = m.CancelRequest(99, secret)
        assert framing.decode_first_packet(c.encode()) == c


def test_startup_framer_keeps_bytes_after_the_packet() -> None:
    f = framing.StartupFramer()
    pkt = f.feed(m.SSLRequest().encode() + b"extra")
    assert pkt == m.SSLRequest()
    assert f.rest == b"extra"


def test_malformed_startup_packets_are_rejected() -> None:
    with pytest.raises(ProtocolError, match="unsupported frontend protocol 2"):
        framing.decode_first_packet(struct.pack("!II", 8, 2 << 16))
    with pytest.raises(ProtocolError, match="not NUL-terminated"):
        framing.decode_first_packet(struct.pack("!II", 12, m.PROTOCOL_3_0) + b"user")
    with pytest.raises(ProtocolError):
        framing.StartupFramer().feed(struct.pack("!II", 100000, m.PROTOCOL_3_0))
    with pytest.raises(ProtocolError, match="cancel"):
        framing.decode_first_packet(struct.pack("!III", 12, m.CANCEL_REQUEST_CODE, 1))


def test_startup_replace_sets_and_removes_parameters() -> None:
    s = m.StartupMessage(m.PROTOCOL_3_0, (("user", "u"), ("options", "-c x=1")))
    r = s.replace({"options": None, "database": "postgres"})
    assert r.params == (("user", "u"), ("database", "postgres"))


@pytest.mark.parametrize(("options", "taken", "rest"), [
    ("-c strata.travel_time=2020-01-01", {"strata.travel_time": "2020-01-01"}, ""),
    ("-c work_mem=5MB -cstrata.travel_lsn=0/1 --geqo=off",
     {"strata.travel_lsn": "0/1"}, "-c work_mem=5MB --geqo=off"),
    (r"-c strata.travel_time=2020-01-01\ 10:00+02", {"strata.travel_time": "2020-01-01 10:00+02"}, ""),
    ("--strata.travel-time=now -c application_name=a\\ b",
     {"strata.travel_time": "now"}, "-c application_name=a\\ b"),
    ("-c search_path=x", {}, "-c search_path=x"),
])
def test_extract_settings_takes_strata_options_out(options: str, taken: dict[str, str],
                                                    rest: str) -> None:
    got, remaining = extract_settings(options, "strata.travel_")
    assert got == taken
    assert remaining == rest
    assert split_options(remaining) == split_options(rest)


def test_split_and_join_options_are_inverse() -> None:
    tokens = ["-c", "a=b c", "back\\slash", "x"]
    assert split_options(join_options(tokens)) == tokens
