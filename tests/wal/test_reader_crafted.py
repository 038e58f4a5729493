"""WalReader on crafted WAL: page framing corner cases and every end-of-WAL rule."""

from __future__ import annotations

import random
import struct

import pytest

from strata.errors import EndOfWal
from strata.lsn import Lsn
from strata.pg.constants import BLCKSZ
from strata.wal.decoder import decode_record
from strata.wal.reader import RawRecord, WalReader
from tests.wal.craft import WalBuilder, main_data_body, record_bytes

SEG = 1024 * 1024
START = 0x1000000


def read_all(data: bytes, start: int = START, seg: int = SEG, **kw: object) -> tuple[
        list[RawRecord], EndOfWal | None]:
    r = WalReader(start, seg, **kw)  # type: ignore[arg-type]
    r.feed(data)
    out = []
    try:
        for rec in r:
            out.append(rec)
    except EndOfWal as e:
        return out, e
    return out, None


def fill_to_offset(b: WalBuilder, page_offset: int) -> None:
    """Add one filler record so that the next record starts at `page_offset` of a page."""
    cur = (b.pos + 7) & ~7
    if cur % BLCKSZ == 0:
        cur += 40 if cur % b.segment_size == 0 else 24
    target = cur - cur % BLCKSZ + page_offset
    if target < cur + 32:
        target += BLCKSZ
    # data bytes between cur and target, not counting the page headers in between
    room = target - cur
    page = cur - cur % BLCKSZ + BLCKSZ
    while page < target:
        room -= 40 if page % b.segment_size == 0 else 24
        page += BLCKSZ
    data_len = room - 26 if room - 26 < 256 else room - 29
    b.add(record_bytes(21, 0, main_data_body(b"f" * data_len)))
    assert (b.pos + 7) & ~7 == target, (hex(b.pos), hex(target))


def test_records_on_one_page_come_back_whole_with_aligned_end() -> None:
    b = WalBuilder(START, SEG)
    payloads = [b"a" * 10, b"b" * 3, b"c" * 100]
    for p in payloads:
        b.add_main(p)
    recs, eow = read_all(b.finish_page())
    assert [r.lsn for r in recs] == b.lsns
    assert [r.end_lsn for r in recs] == b.ends
    assert recs[0].lsn == START + 40  # after the long page header
    assert all(r.end_lsn % 8 == 0 for r in recs)
    assert recs[0].end_lsn == Lsn(START + 40 + ((24 + 2 + 10 + 7) & ~7))
    assert [decode_record(r.raw, r.lsn, r.end_lsn).main_data for r in recs] == payloads
    assert eow is not None and "invalid record length" in eow.reason
    assert eow.lsn == b.ends[-1]


def test_record_header_split_across_pages_is_reassembled() -> None:
    b = WalBuilder(START, SEG)
    b.add_main(b"x")
    fill_to_offset(b, BLCKSZ - 8)  # only xl_tot_len + xl_xid fit on the page
    lsn = b.add_main(b"split-header payload", xid=77)
    b.add_main(b"after")
    recs, _ = read_all(b.finish_page())
    split = next(r for r in recs if r.lsn == lsn)
    assert split.lsn % BLCKSZ == BLCKSZ - 8
    rec = decode_record(split.raw, split.lsn, split.end_lsn)
    assert rec.main_data == b"split-header payload" and rec.xl_xid == 77
    # 8 bytes on the first page, a 24-byte page header, the remaining 38 bytes
    assert split.end_lsn == ((lsn + 8 + 24 + (len(split.raw) - 8)) + 7) & ~7
    assert recs[-1].lsn == b.lsns[-1]


def test_record_spanning_many_pages_and_a_segment_boundary() -> None:
    b = WalBuilder(START, SEG)
    b.add_main(b"first")
    fill_to_offset(b, 4000)
    while b.pos < START + SEG - 3 * BLCKSZ:
        b.add_main(b"z" * 5000)
    big = bytes(random.Random(1).randrange(256) for _ in range(50_000))
    lsn = b.add_main(big)
    after = b.add_main(b"after the big one")
    data = b.finish_page()
    recs, _ = read_all(data)
    got: dict[int, RawRecord] = {r.lsn: r for r in recs}
    assert lsn < START + SEG < got[lsn].end_lsn
    assert decode_record(got[lsn].raw, lsn, got[lsn].end_lsn).main_data == big
    assert after in got


@pytest.mark.parametrize("chunk", [1, 7, 8192, 100_000])
def test_feeding_in_any_chunks_gives_the_same_records(chunk: int) -> None:
    b = WalBuilder(START, SEG)
    rnd = random.Random(chunk)
    for _ in range(60):
        b.add_main(bytes(rnd.randrange(256) for _ in range(rnd.choice([1, 50, 3000, 9000]))))
    data = b.finish_page()
    whole, _ = read_all(data)
    r = WalReader(START, SEG)
    got: list[RawRecord] = []
    with pytest.raises(EndOfWal):
        for i in range(0, len(data), chunk):
            r.feed(data[i:i + chunk])
            got.extend(r)
        got.extend(r)
    assert got == whole
    assert len(whole) == 60


def test_xlog_switch_jumps_to_the_next_segment() -> None:
    b = WalBuilder(START, SEG)
    b.add_main(b"before")
    sw = b.add(record_bytes(0, 0x40, b""), is_switch=True)
    nxt = b.add_main(b"in the next segment")
    recs, _ = read_all(b.finish_page())
    assert [r.lsn for r in recs] == [b.lsns[0], sw, nxt]
    assert recs[1].end_lsn == START + SEG
    assert nxt == START + SEG + 40


def test_start_at_a_page_starting_with_a_continuation_skips_it() -> None:
    b = WalBuilder(START, SEG)
    b.add_main(b"a" * 20_000)  # covers pages 0..2
    following = b.add_main(b"next")
    data = b.finish_page()
    for page in (1, 2):
        page_lsn = START + page * BLCKSZ
        recs, _ = read_all(data[page * BLCKSZ:], start=page_lsn)
        assert recs[0].lsn == following, page


def test_start_in_the_middle_of_a_segment_at_a_record_start() -> None:
    b = WalBuilder(START, SEG)
    for i in range(20):
        b.add_main(bytes([i]) * 700)
    data = b.finish_page()
    k = 13
    lsn = b.lsns[k]
    recs, _ = read_all(data[lsn - START:], start=lsn)
    assert [r.lsn for r in recs] == b.lsns[k:]
    assert recs[0].raw == read_all(data)[0][k].raw


def test_overwritten_contrecord_is_dropped_and_reading_goes_on() -> None:
    b = WalBuilder(START, SEG)
    a = b.add_main(b"complete")
    fill_to_offset(b, BLCKSZ - 200)
    last_good = b.lsns[-1]
    # a record that would continue on the next page, but the crash cut it there
    cut = record_bytes(21, 0, main_data_body(b"q" * 1000), prev=last_good)
    cut_lsn = (b.pos + 7) & ~7
    b.pos = cut_lsn
    b._put(cut[:200])
    next_page = cut_lsn + 200
    assert next_page % BLCKSZ == 0
    b.page_flags[next_page] = 0x0008  # XLP_FIRST_IS_OVERWRITE_CONTRECORD
    b.prev = last_good
    over = b.add(record_bytes(0, 0xD0, main_data_body(struct.pack("<Qq", cut_lsn, 0))))
    tail = b.add_main(b"life goes on")
    r = WalReader(START, SEG)
    r.feed(b.finish_page())
    got = list(r.records())
    assert [x.lsn for x in got][-3:] == [last_good, over, tail]
    assert cut_lsn not in [x.lsn for x in got]
    assert r.overwritten_lsn == cut_lsn
    assert got[0].lsn == a


# -- end of WAL: each stops cleanly, naming the record that failed -----------------
def _two_records() -> tuple[WalBuilder, bytearray]:
    b = WalBuilder(START, SEG)
    b.add_main(b"one")
    b.add_main(b"two" * 10)
    return b, bytearray(b.finish_page())


def test_zero_length_ends_wal() -> None:
    b, data = _two_records()
    recs, eow = read_all(bytes(data))
    assert len(recs) == 2 and eow is not None
    assert eow.lsn == b.ends[-1]
    assert eow.reason == f"invalid record length at {Lsn(b.ends[-1])}: expected at least 24, got 0"


def test_short_length_ends_wal() -> None:
    b, data = _two_records()
    struct.pack_into("<I", data, b.lsns[1] - START, 10)
    recs, eow = read_all(bytes(data))
    assert len(recs) == 1 and eow is not None and eow.lsn == b.lsns[1]
    assert "expected at least 24, got 10" in eow.reason


def test_flipped_payload_byte_fails_crc_and_ends_wal() -> None:
    b, data = _two_records()
    data[b.lsns[1] - START + 30] ^= 0x01
    recs, eow = read_all(bytes(data))
    assert len(recs) == 1 and eow is not None and eow.lsn == b.lsns[1]
    assert eow.reason == f"incorrect resource manager data checksum in record at {Lsn(b.lsns[1])}"


def test_wrong_prev_link_ends_wal() -> None:
    b, data = _two_records()
    struct.pack_into("<Q", data, b.lsns[1] - START + 8, 0x1234)
    recs, eow = read_all(bytes(data))
    assert len(recs) == 1 and eow is not None and "incorrect prev-link" in eow.reason


def test_first_record_after_random_start_must_point_backwards() -> None:
    b = WalBuilder(START, SEG)
    b.add_main(b"x")
    bad = record_bytes(21, 0, main_data_body(b"y"), prev=START + SEG)
    lsn = b.add(bad, fix_prev=False)
    data = b.finish_page()
    _, eow = read_all(data[lsn - START:], start=lsn)
    assert eow is not None and eow.lsn == lsn and "incorrect prev-link" in eow.reason


def test_invalid_rmgr_id_ends_wal() -> None:
    b = WalBuilder(START, SEG)
    b.add_main(b"x")
    lsn = b.add(record_bytes(50, 0, main_data_body(b"y")))
    recs, eow = read_all(b.finish_page())
    assert len(recs) == 1 and eow is not None and eow.lsn == lsn
    assert eow.reason == f"invalid resource manager ID 50 at {Lsn(lsn)}"


def _spanning() -> tuple[WalBuilder, bytearray, int]:
    b = WalBuilder(START, SEG)
    b.add_main(b"x")
    lsn = b.add_main(b"s" * 10_000)
    return b, bytearray(b.finish_page()), lsn


def test_bad_magic_on_a_continuation_page_ends_wal_at_the_record() -> None:
    _, data, lsn = _spanning()
    data[BLCKSZ:BLCKSZ + 2] = b"\0\0"
    recs, eow = read_all(bytes(data))
    assert len(recs) == 1 and eow is not None and eow.lsn == lsn
    assert eow.reason.startswith("invalid magic number 0000")


def test_missing_contrecord_flag_ends_wal() -> None:
    _, data, lsn = _spanning()
    struct.pack_into("<H", data, BLCKSZ + 2, 0)
    _, eow = read_all(bytes(data))
    assert eow is not None and eow.lsn == lsn and "there is no contrecord flag" in eow.reason


def test_wrong_contrecord_length_ends_wal() -> None:
    _, data, lsn = _spanning()
    struct.pack_into("<I", data, BLCKSZ + 16, 5)
    _, eow = read_all(bytes(data))
    assert eow is not None and eow.lsn == lsn and "invalid contrecord length 5" in eow.reason


def test_recycled_page_with_old_address_ends_wal() -> None:
    _, data, lsn = _spanning()
    struct.pack_into("<Q", data, BLCKSZ + 8, START - SEG + BLCKSZ)
    _, eow = read_all(bytes(data))
    assert eow is not None and eow.lsn == lsn and eow.reason.startswith("unexpected pageaddr")


def test_segment_start_without_long_header_ends_wal() -> None:
    b = WalBuilder(START, SEG)
    b.add_main(b"x")
    data = bytearray(b.finish_page())
    struct.pack_into("<H", data, 2, 0)
    recs, eow = read_all(bytes(data))
    assert recs == [] and eow is not None and eow.reason.startswith("invalid info bits 0000")


def test_other_system_identifier_ends_wal() -> None:
    b = WalBuilder(START, SEG)
    b.add_main(b"x")
    _, eow = read_all(b.finish_page(), system_identifier=42)
    assert eow is not None and "different database system" in eow.reason


def test_timeline_going_backwards_ends_wal() -> None:
    _, data, lsn = _spanning()
    struct.pack_into("<H", data, 4, 2)  # first page on timeline 2, the next on 1
    _, eow = read_all(bytes(data))
    assert eow is not None and eow.lsn == lsn
    assert eow.reason.startswith("out-of-sequence timeline ID 1 (after 2)")


def test_end_of_wal_is_sticky_and_more_bytes_do_not_revive_it() -> None:
    _b, data = _two_records()
    r = WalReader(START, SEG)
    r.feed(bytes(data))
    assert len(list(r.records())) == 2
    assert r.end_of_wal is not None
    r.feed(bytes(BLCKSZ))
    with pytest.raises(EndOfWal) as ei:
        r.read_record()
    assert ei.value is r.end_of_wal


def test_incomplete_bytes_wait_for_more_instead_of_ending() -> None:
    b, data, lsn = _spanning()
    r = WalReader(START, SEG)
    r.feed(bytes(data[:BLCKSZ + 100]))
    assert [x.lsn for x in r][:1] == [b.lsns[0]]
    assert r.read_record() is None and r.end_of_wal is None
    r.feed(bytes(data[BLCKSZ + 100:]))
    rec = r.read_record()
    assert rec is not None and rec.lsn == lsn
