"""SLRU page arithmetic, the page-value format and truncation rules."""

from __future__ import annotations

import pytest

from strata.errors import CorruptionError
from strata.key import SlruKind
from strata.keyspace.slru import (
    TRUNCATED_VALUE,
    delta_value,
    image_value,
    is_image_value,
    patch_op,
    xid_status_op,
)
from strata.pg.constants import BLCKSZ
from strata.pg.slru import (
    CLOG_XACTS_PER_PAGE,
    MULTIXACT_MEMBERGROUPS_PER_PAGE,
    MULTIXACT_MEMBERS_PER_PAGE,
    SLRU_PAGES_PER_SEGMENT,
    ZERO_PAGE,
    XidStatus,
    build_segments,
    clog_get_status,
    clog_page,
    clog_page_precedes,
    clog_set_status,
    clog_slot,
    get_multixact_member,
    get_multixact_offset,
    member_flags_offset,
    member_page,
    member_status_offset,
    member_xid_offset,
    members_truncate_segments,
    multixact_create_writes,
    offsets_truncate_cutoff_page,
    parse_segment_file_name,
    segment_file_name,
    segment_pages,
    truncate_segments,
)
from strata.reconstruct.slru import apply_value, reconstruct


def test_clog_status_bits_are_two_per_xid_lowest_first() -> None:
    page = bytearray(BLCKSZ)
    clog_set_status(page, 4, XidStatus.COMMITTED)  # slot 4: byte 1, bits 0-1
    clog_set_status(page, 7, XidStatus.ABORTED)  # slot 7: byte 1, bits 6-7
    assert page[1] == 0b1000_0001
    assert clog_get_status(page, 4) == XidStatus.COMMITTED
    assert clog_get_status(page, 5) == XidStatus.IN_PROGRESS
    clog_set_status(page, 4, XidStatus.ABORTED)  # overwrite, not OR
    assert page[1] == 0b1000_0010


def test_clog_page_and_slot_of_xid() -> None:
    assert CLOG_XACTS_PER_PAGE == 32768
    assert clog_page(32767) == 0 and clog_page(32768) == 1
    assert clog_slot(32768 + 5) == 5


def test_multixact_member_layout_follows_membergroups() -> None:
    assert MULTIXACT_MEMBERGROUPS_PER_PAGE == 409
    assert MULTIXACT_MEMBERS_PER_PAGE == 1636
    # member 5: group 1 (bytes 20..39), second member of it
    assert member_flags_offset(5) == 20
    assert member_status_offset(5) == 21
    assert member_xid_offset(5) == 20 + 4 + 4
    # first member of page 1
    assert member_page(1636) == 1 and member_xid_offset(1636) == 4


def test_multixact_create_writes_set_offsets_of_this_and_next_multi_and_members() -> None:
    writes = multixact_create_writes(7, 11, [(1000, 1), (1001, 0)])
    pages: dict[tuple[SlruKind, int], bytes | None] = {}
    for w in writes:
        key = (w.kind, w.pageno)
        pages[key] = apply_value(pages.get(key), delta_value([patch_op(w.offset, w.data)]))
    off = pages[(SlruKind.MULTIXACT_OFFSETS, 0)]
    mem = pages[(SlruKind.MULTIXACT_MEMBERS, 0)]
    assert off is not None and mem is not None
    assert get_multixact_offset(off, 7) == 11
    assert get_multixact_offset(off, 8) == 13
    assert get_multixact_member(mem, 11) == (1000, 1)
    assert get_multixact_member(mem, 12) == (1001, 0)


def test_next_offset_skips_zero_and_next_multi_skips_invalid() -> None:
    writes = multixact_create_writes(0xFFFFFFFF, 0xFFFFFFFF, [(5, 1)])
    nxt = writes[1]
    assert nxt.pageno == 0 and nxt.offset == 4  # multi 1 (0 is invalid)
    assert nxt.data == (1).to_bytes(4, "little")  # offset 0 is skipped


def test_multixact_create_crossing_into_next_offsets_page_touches_it() -> None:
    writes = multixact_create_writes(2047, 100, [(5, 1)])
    assert {(w.kind, w.pageno) for w in writes if w.kind == SlruKind.MULTIXACT_OFFSETS} == {
        (SlruKind.MULTIXACT_OFFSETS, 0), (SlruKind.MULTIXACT_OFFSETS, 1)}


def test_values_round_trip_and_apply_in_order() -> None:
    image = bytearray(BLCKSZ)
    image[0] = 0xFF
    page = reconstruct([
        image_value(bytes(image)),
        delta_value([xid_status_op(XidStatus.COMMITTED, [4, 5]),
                          patch_op(100, b"\x01\x02")]),
    ])
    assert page is not None and page[0] == 0xFF and page[1] == 0b0101 and page[100:102] == b"\x01\x02"
    assert apply_value(page, TRUNCATED_VALUE) is None
    # a delta on a missing page starts from zeros, as SLRU reads in recovery do
    fresh = apply_value(None, delta_value([xid_status_op(2, [0])]))
    assert fresh is not None and fresh[0] == 2 and len(fresh) == BLCKSZ
    assert is_image_value(TRUNCATED_VALUE) and not is_image_value(b"\x02")


def test_xid_status_op_splits_more_than_65535_slots() -> None:
    slots = list(range(32768)) * 3  # 98,304 entries
    page = apply_value(None, delta_value([xid_status_op(1, slots)]))
    assert page == bytes([0b01010101]) * BLCKSZ


@pytest.mark.parametrize("bad", [b"", b"\x09", b"\x01" + bytes(10), b"\x02\x07", b"\x02\x02\x00\x20\x10\x00",
                                 b"\x02\x01\x01\x05\x00\x00"])
def test_malformed_values_raise_corruption(bad: bytes) -> None:
    with pytest.raises(CorruptionError):
        apply_value(None, bad)


def test_clog_truncate_removes_only_segments_wholly_before_cutoff() -> None:
    # cutoff page 70 lies in segment 2: segments 0 and 1 go, 2 and 3 stay
    assert truncate_segments(SlruKind.XACT, [0, 1, 2, 3], 70) == [0, 1]
    # refuses on apparent wraparound (latest page before the cutoff)
    assert truncate_segments(SlruKind.XACT, [0, 1, 2, 3], 70, latest_page=10) == []


def test_clog_page_precedes_wraps_around() -> None:
    last_page = 0xFFFFFFFF // CLOG_XACTS_PER_PAGE
    assert clog_page_precedes(1, 2)
    assert not clog_page_precedes(2, 1)
    assert clog_page_precedes(last_page, 1)  # just before wraparound precedes page 1


def test_members_truncation_walks_segments_with_wraparound() -> None:
    per_seg = MULTIXACT_MEMBERS_PER_PAGE * SLRU_PAGES_PER_SEGMENT
    assert members_truncate_segments(0, 2 * per_seg + 5) == [0, 1]
    assert members_truncate_segments(5, 7) == []
    max_seg = member_page(0xFFFFFFFF) // SLRU_PAGES_PER_SEGMENT
    assert members_truncate_segments(max_seg * per_seg, per_seg) == [max_seg, 0]


def test_offsets_truncate_cutoff_is_the_page_of_the_previous_multi() -> None:
    assert offsets_truncate_cutoff_page(2049) == 1
    assert offsets_truncate_cutoff_page(2048) == 0
    assert offsets_truncate_cutoff_page(1) == 0xFFFFFFFF // 2048


def test_segment_files_name_and_split_pages() -> None:
    assert segment_file_name(0) == "0000" and segment_file_name(0x1A) == "001A"
    assert parse_segment_file_name("001A") == 0x1A
    built = build_segments({0: b"\x01" * BLCKSZ, 2: b"\x02" * BLCKSZ, 33: ZERO_PAGE})
    assert set(built) == {0, 1} and len(built[0]) == 3 * BLCKSZ
    assert built[0][BLCKSZ:2 * BLCKSZ] == ZERO_PAGE  # hole
    assert dict(segment_pages(1, built[1])) == {32: ZERO_PAGE, 33: ZERO_PAGE}
    with pytest.raises(CorruptionError):
        list(segment_pages(0, b"x" * 100))
