"""Garbage in, clean stop out: random damage to WAL and to records never makes
the reader or decoder fail with anything but their documented errors."""

from __future__ import annotations

import contextlib
import random

from strata.errors import EndOfWal, WalDecodeError
from strata.lsn import Lsn
from strata.wal.decoder import decode_record
from strata.wal.reader import WalReader
from tests.wal.craft import WalBuilder, block_header, record_bytes

SEG = 1024 * 1024


def _wal() -> tuple[WalBuilder, bytes]:
    b = WalBuilder(SEG * 3, SEG)
    rnd = random.Random(5)
    for _ in range(40):
        b.add_main(bytes(rnd.randrange(256) for _ in range(rnd.choice([3, 300, 9000]))))
    return b, b.finish_page()


def test_random_byte_damage_stops_cleanly_and_returns_only_intact_records() -> None:
    b, clean = _wal()
    r0 = WalReader(SEG * 3, SEG)
    r0.feed(clean)
    intact = {rec.lsn: rec.raw for rec in r0.records()}
    rnd = random.Random(11)
    for _ in range(300):
        data = bytearray(clean)
        data[rnd.randrange(len(data))] ^= 1 << rnd.randrange(8)
        r = WalReader(SEG * 3, SEG)
        r.feed(bytes(data))
        got = list(r.records())  # must not raise anything
        assert r.end_of_wal is not None
        assert [rec.lsn for rec in got] == b.lsns[:len(got)]
        for rec in got:
            assert rec.raw == intact[rec.lsn]  # CRC-protected: damage never leaks through


def test_random_truncation_waits_for_more_bytes_instead_of_failing() -> None:
    b, clean = _wal()
    rnd = random.Random(12)
    for _ in range(100):
        cut = rnd.randrange(b.ends[-1] - SEG * 3)
        r = WalReader(SEG * 3, SEG)
        r.feed(clean[:cut])
        got = []
        while (rec := r.read_record()) is not None:
            got.append(rec.lsn)
        assert got == b.lsns[:len(got)]
        assert len(got) >= sum(1 for e in b.ends if e + 8192 <= SEG * 3 + cut)
        r.feed(clean[cut:])
        got += [x.lsn for x in r.records()]
        assert got == b.lsns


def test_random_record_bodies_raise_only_wal_decode_error() -> None:
    rnd = random.Random(13)
    real = (block_header(0, 0x30, 4, image=(8192, 0, 0x02, None), blkno=3) + bytes([255, 3])
            + bytes(8192) + b"data" + b"abc")
    decode_record(record_bytes(10, 0, real), Lsn(0), Lsn(0))
    for _ in range(2000):
        body = bytearray(real[:rnd.randrange(len(real) + 1)])
        for _ in range(rnd.randrange(4)):
            if body:
                body[rnd.randrange(len(body))] = rnd.randrange(256)
        with contextlib.suppress(WalDecodeError):
            decode_record(record_bytes(10, 0, bytes(body)), Lsn(0), Lsn(0))
    for _ in range(500):
        junk = bytes(rnd.randrange(256) for _ in range(rnd.randrange(64)))
        with contextlib.suppress(WalDecodeError):
            decode_record(record_bytes(10, 0, junk), Lsn(0), Lsn(0))


def test_end_of_wal_is_an_exception_type_callers_can_catch() -> None:
    r = WalReader(SEG * 3, SEG)
    r.feed(bytes(8192))
    try:
        r.read_record()
    except EndOfWal as e:
        assert e.lsn == SEG * 3 and "invalid magic number 0000" in e.reason
    else:  # pragma: no cover
        raise AssertionError("no EndOfWal")
