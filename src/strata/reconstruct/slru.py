"""SLRU pages (pg_xact, pg_multixact/offsets, pg_multixact/members): layout,
page arithmetic, the page-value format, and applying values to pages.

What it is: pure functions over 8 KB SLRU pages with PostgreSQL 18's
semantics (src/backend/access/transam/clog.c, multixact.c, slru.c):

* pg_xact: 2 status bits per xid, 4 xids per byte (lowest bits first),
  32,768 xids per page.
* offsets: one little-endian uint32 member offset per multixact, 2,048 per page.
* members: groups of 20 bytes (4 flag bytes, then 4 xids); member ``i`` of a
  group has its status in flag byte ``i`` and its xid at ``4 + 4*i``. 409
  groups (1,636 members) per page; the last 12 bytes of a page are unused.
* Segments: 32 pages per file, named ``%04X`` of the segment number.
* Truncation follows SimpleLruTruncate / PerformMembersTruncation, including
  PostgreSQL's wraparound-aware "page precedes" rules.

Fed by: `ingest.transam` (which turns WAL records into page values) and the
import of a cluster's SLRU files. Feeds: reconstruct (SLRU page at an LSN) and
the historical data directory (segment files). Owns: the SLRU page-value
format below (stored as values under ``Key.slru_page``).

Page-value format, version 1 (all integers little-endian)::

    value := tag u8, body
    tag 0x01 IMAGE      body = the 8,192-byte page
    tag 0x02 DELTA      body = op*  (applied in order to the previous page;
                        a missing previous page reads as all zeros, as SLRU
                        reads do during recovery)
        op 0x01 XID_STATUS  status u8, count u16, count x slot u16
                            (slot = xid % 32768: set those xids' 2 status bits)
        op 0x02 PATCH       offset u16, length u16, length bytes
                            (overwrite bytes of the page)
    tag 0x03 TRUNCATED  body = empty: the page no longer exists

Tags and op codes are written to disk: never renumber.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum

from strata.errors import CorruptionError
from strata.key import SlruKind

BLCKSZ = 8192
SLRU_PAGES_PER_SEGMENT = 32
SEGMENT_SIZE = BLCKSZ * SLRU_PAGES_PER_SEGMENT
ZERO_PAGE = bytes(BLCKSZ)

FIRST_NORMAL_XID = 3
FIRST_MULTIXACT_ID = 1
MAX_MULTIXACT_OFFSET = 0xFFFFFFFF

# -- pg_xact ------------------------------------------------------------------------
CLOG_BITS_PER_XACT = 2
CLOG_XACTS_PER_BYTE = 4
CLOG_XACTS_PER_PAGE = BLCKSZ * CLOG_XACTS_PER_BYTE  # 32,768


class XidStatus(IntEnum):
    IN_PROGRESS = 0x00
    COMMITTED = 0x01
    ABORTED = 0x02
    SUB_COMMITTED = 0x03


def clog_page(xid: int) -> int:
    return xid // CLOG_XACTS_PER_PAGE


def clog_slot(xid: int) -> int:
    """Index of `xid` within its page."""
    return xid % CLOG_XACTS_PER_PAGE


def clog_get_status(page: bytes | bytearray, xid: int) -> XidStatus:
    slot = clog_slot(xid)
    return XidStatus((page[slot // CLOG_XACTS_PER_BYTE] >> ((slot % CLOG_XACTS_PER_BYTE) * 2)) & 3)


def clog_set_slot(page: bytearray, slot: int, status: int) -> None:
    byteno = slot // CLOG_XACTS_PER_BYTE
    shift = (slot % CLOG_XACTS_PER_BYTE) * CLOG_BITS_PER_XACT
    page[byteno] = (page[byteno] & ~(3 << shift) & 0xFF) | ((status & 3) << shift)


def clog_set_status(page: bytearray, xid: int, status: int) -> None:
    clog_set_slot(page, clog_slot(xid), status)


# -- pg_multixact/offsets ---------------------------------------------------------------
MULTIXACT_OFFSETS_PER_PAGE = BLCKSZ // 4  # 2,048
_U32 = struct.Struct("<I")


def offsets_page(multi: int) -> int:
    return multi // MULTIXACT_OFFSETS_PER_PAGE


def offsets_entry(multi: int) -> int:
    return multi % MULTIXACT_OFFSETS_PER_PAGE


def get_multixact_offset(page: bytes | bytearray, multi: int) -> int:
    return int(_U32.unpack_from(page, offsets_entry(multi) * 4)[0])


# -- pg_multixact/members ---------------------------------------------------------------
MULTIXACT_FLAGBYTES_PER_GROUP = 4
MULTIXACT_MEMBERS_PER_MEMBERGROUP = 4
MULTIXACT_MEMBERGROUP_SIZE = 4 * MULTIXACT_MEMBERS_PER_MEMBERGROUP + MULTIXACT_FLAGBYTES_PER_GROUP
MULTIXACT_MEMBERGROUPS_PER_PAGE = BLCKSZ // MULTIXACT_MEMBERGROUP_SIZE  # 409
MULTIXACT_MEMBERS_PER_PAGE = MULTIXACT_MEMBERGROUPS_PER_PAGE * MULTIXACT_MEMBERS_PER_MEMBERGROUP


def member_page(offset: int) -> int:
    return offset // MULTIXACT_MEMBERS_PER_PAGE


def member_flags_offset(offset: int) -> int:
    """Byte offset in its page of the flag word of the member's group."""
    group = offset // MULTIXACT_MEMBERS_PER_MEMBERGROUP
    return (group % MULTIXACT_MEMBERGROUPS_PER_PAGE) * MULTIXACT_MEMBERGROUP_SIZE


def member_status_offset(offset: int) -> int:
    """Byte offset of the member's status byte (one byte of the LE flag word)."""
    return member_flags_offset(offset) + offset % MULTIXACT_MEMBERS_PER_MEMBERGROUP


def member_xid_offset(offset: int) -> int:
    return (member_flags_offset(offset) + MULTIXACT_FLAGBYTES_PER_GROUP
            + (offset % MULTIXACT_MEMBERS_PER_MEMBERGROUP) * 4)


def get_multixact_member(page: bytes | bytearray, offset: int) -> tuple[int, int]:
    """(xid, status) of the member at `offset`."""
    return (int(_U32.unpack_from(page, member_xid_offset(offset))[0]),
            page[member_status_offset(offset)])


@dataclass(frozen=True, slots=True)
class SlruWrite:
    """Bytes to overwrite in one SLRU page."""

    kind: SlruKind
    pageno: int
    offset: int
    data: bytes


def multixact_create_writes(multi: int, moff: int,
                            members: Sequence[tuple[int, int]]) -> list[SlruWrite]:
    """What RecordNewMultiXact (18.x) writes for CREATE_ID, as byte patches.

    Sets `multi`'s offset, the *next* multixact's offset to the end of these
    members (skipping offset 0, as GetNewMultiXactId does), then each member's
    xid and status byte. Patches are in PostgreSQL's write order.
    """
    out: list[SlruWrite] = []
    out.append(SlruWrite(SlruKind.MULTIXACT_OFFSETS, offsets_page(multi),
                         offsets_entry(multi) * 4, _U32.pack(moff & 0xFFFFFFFF)))
    nxt = (multi + 1) & 0xFFFFFFFF
    if nxt < FIRST_MULTIXACT_ID:
        nxt = FIRST_MULTIXACT_ID
    next_offset = (moff + len(members)) & 0xFFFFFFFF
    if next_offset == 0:
        next_offset = 1
    out.append(SlruWrite(SlruKind.MULTIXACT_OFFSETS, offsets_page(nxt),
                         offsets_entry(nxt) * 4, _U32.pack(next_offset)))
    offset = moff
    for xid, status in members:
        page = member_page(offset)
        out.append(SlruWrite(SlruKind.MULTIXACT_MEMBERS, page, member_xid_offset(offset),
                             _U32.pack(xid)))
        out.append(SlruWrite(SlruKind.MULTIXACT_MEMBERS, page, member_status_offset(offset),
                             bytes([status & 0xFF])))
        offset = (offset + 1) & 0xFFFFFFFF
    return out


# -- "precedes" with wraparound (clog.c, multixact.c) -----------------------------------
def _int32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v & 0x80000000 else v


def transaction_id_precedes(id1: int, id2: int) -> bool:
    """TransactionIdPrecedes: modulo-2^32 unless either is a special xid."""
    if id1 < FIRST_NORMAL_XID or id2 < FIRST_NORMAL_XID:
        return id1 < id2
    return _int32(id1 - id2) < 0


def multixact_id_precedes(m1: int, m2: int) -> bool:
    return _int32(m1 - m2) < 0


def clog_page_precedes(page1: int, page2: int) -> bool:
    xid1 = (page1 * CLOG_XACTS_PER_PAGE + FIRST_NORMAL_XID + 1) & 0xFFFFFFFF
    xid2 = (page2 * CLOG_XACTS_PER_PAGE + FIRST_NORMAL_XID + 1) & 0xFFFFFFFF
    return (transaction_id_precedes(xid1, xid2)
            and transaction_id_precedes(xid1, (xid2 + CLOG_XACTS_PER_PAGE - 1) & 0xFFFFFFFF))


def offsets_page_precedes(page1: int, page2: int) -> bool:
    m1 = (page1 * MULTIXACT_OFFSETS_PER_PAGE + FIRST_MULTIXACT_ID + 1) & 0xFFFFFFFF
    m2 = (page2 * MULTIXACT_OFFSETS_PER_PAGE + FIRST_MULTIXACT_ID + 1) & 0xFFFFFFFF
    return (multixact_id_precedes(m1, m2)
            and multixact_id_precedes(m1, (m2 + MULTIXACT_OFFSETS_PER_PAGE - 1) & 0xFFFFFFFF))


def members_page_precedes(page1: int, page2: int) -> bool:
    o1 = (page1 * MULTIXACT_MEMBERS_PER_PAGE) & 0xFFFFFFFF
    o2 = (page2 * MULTIXACT_MEMBERS_PER_PAGE) & 0xFFFFFFFF
    return _int32(o1 - o2) < 0 and _int32(o1 - ((o2 + MULTIXACT_MEMBERS_PER_PAGE - 1) & 0xFFFFFFFF)) < 0


PAGE_PRECEDES = {
    SlruKind.XACT: clog_page_precedes,
    SlruKind.MULTIXACT_OFFSETS: offsets_page_precedes,
    SlruKind.MULTIXACT_MEMBERS: members_page_precedes,
}


def truncate_segments(kind: SlruKind, segments: Iterable[int], cutoff_page: int,
                      latest_page: int | None = None) -> list[int]:
    """Segments SimpleLruTruncate(cutoff_page) deletes, of those that exist.

    A segment goes when its first and last pages both precede the cutoff.
    When `latest_page` itself precedes the cutoff PostgreSQL refuses
    ("apparent wraparound") and nothing goes.
    """
    precedes = PAGE_PRECEDES[kind]
    if latest_page is not None and precedes(latest_page, cutoff_page):
        return []
    out = []
    for seg in sorted(set(segments)):
        first = seg * SLRU_PAGES_PER_SEGMENT
        if precedes(first, cutoff_page) and precedes(first + SLRU_PAGES_PER_SEGMENT - 1, cutoff_page):
            out.append(seg)
    return out


def offsets_truncate_cutoff_page(new_oldest_multi: int) -> int:
    """PerformOffsetsTruncation's cutoff: the page of PreviousMultiXactId(newOldest)."""
    prev = (new_oldest_multi - 1) & 0xFFFFFFFF
    if prev < FIRST_MULTIXACT_ID:
        prev = 0xFFFFFFFF
    return offsets_page(prev)


def members_truncate_segments(start_offset: int, end_offset: int) -> list[int]:
    """PerformMembersTruncation: segments from the start one up to (not including)
    the end one, wrapping after the last members segment."""
    max_segment = member_page(MAX_MULTIXACT_OFFSET) // SLRU_PAGES_PER_SEGMENT
    seg = member_page(start_offset) // SLRU_PAGES_PER_SEGMENT
    end = member_page(end_offset) // SLRU_PAGES_PER_SEGMENT
    out = []
    while seg != end:
        out.append(seg)
        seg = 0 if seg == max_segment else seg + 1
    return out


# -- segments and files ---------------------------------------------------------------
SLRU_DIRS = {
    SlruKind.XACT: "pg_xact",
    SlruKind.MULTIXACT_OFFSETS: "pg_multixact/offsets",
    SlruKind.MULTIXACT_MEMBERS: "pg_multixact/members",
}


def segment_of(pageno: int) -> int:
    return pageno // SLRU_PAGES_PER_SEGMENT


def segment_file_name(segno: int) -> str:
    """Short SLRU segment name (pg_xact and pg_multixact use 4+ hex digits)."""
    if not 0 <= segno <= 0xFFFFFF:
        raise ValueError(f"SLRU segment number out of range: {segno}")
    return f"{segno:04X}"


def parse_segment_file_name(name: str) -> int:
    if not 4 <= len(name) <= 6 or any(c not in "0123456789ABCDEF" for c in name):
        raise ValueError(f"not an SLRU segment file name: {name!r}")
    return int(name, 16)


def segment_pages(segno: int, data: bytes) -> Iterator[tuple[int, bytes]]:
    """(pageno, page) for every whole page of a segment file's contents."""
    if len(data) % BLCKSZ:
        raise CorruptionError(f"SLRU segment {segment_file_name(segno)} is {len(data)} bytes, "
                              f"not a multiple of {BLCKSZ}")
    base = segno * SLRU_PAGES_PER_SEGMENT
    for i in range(len(data) // BLCKSZ):
        yield base + i, data[i * BLCKSZ:(i + 1) * BLCKSZ]


def build_segments(pages: Mapping[int, bytes]) -> dict[int, bytes]:
    """Segment number -> file contents: each file runs up to its last present page,
    with absent pages before it written as zeros (SLRU files may have holes)."""
    by_seg: dict[int, dict[int, bytes]] = {}
    for pageno, page in pages.items():
        by_seg.setdefault(segment_of(pageno), {})[pageno % SLRU_PAGES_PER_SEGMENT] = page
    out = {}
    for seg, entries in by_seg.items():
        n = max(entries) + 1
        out[seg] = b"".join(entries.get(i, ZERO_PAGE) for i in range(n))
    return out


# -- the page-value format ------------------------------------------------------------------
TAG_IMAGE = 0x01
TAG_DELTA = 0x02
TAG_TRUNCATED = 0x03
OP_XID_STATUS = 0x01
OP_PATCH = 0x02
_OP_STATUS = struct.Struct("<BBH")
_OP_PATCH = struct.Struct("<BHH")
TRUNCATED_VALUE = bytes([TAG_TRUNCATED])


def image_value(page: bytes) -> bytes:
    if len(page) != BLCKSZ:
        raise ValueError(f"an SLRU page is {BLCKSZ} bytes, got {len(page)}")
    return bytes([TAG_IMAGE]) + bytes(page)


def xid_status_op(status: int, slots: Sequence[int]) -> bytes:
    out = bytearray()
    for i in range(0, len(slots), 0xFFFF):
        chunk = slots[i:i + 0xFFFF]
        out += _OP_STATUS.pack(OP_XID_STATUS, status, len(chunk))
        out += struct.pack(f"<{len(chunk)}H", *chunk)
    return bytes(out)


def patch_op(offset: int, data: bytes) -> bytes:
    if offset < 0 or offset + len(data) > BLCKSZ:
        raise ValueError(f"patch [{offset}, {offset + len(data)}) outside an SLRU page")
    return _OP_PATCH.pack(OP_PATCH, offset, len(data)) + data


def delta_value(ops: Iterable[bytes]) -> bytes:
    return bytes([TAG_DELTA]) + b"".join(ops)


def is_image_value(value: bytes) -> bool:
    """Whether `value` stands alone (image or truncation) or needs the page before it."""
    return bool(value) and value[0] in (TAG_IMAGE, TAG_TRUNCATED)


def apply_value(page: bytes | None, value: bytes) -> bytes | None:
    """The page after `value` (None: the page does not exist).

    Requires: `page` is the page before `value` (None if absent).
    Raises: CorruptionError on a malformed value.
    """
    if not value:
        raise CorruptionError("empty SLRU page value")
    tag = value[0]
    if tag == TAG_IMAGE:
        if len(value) != 1 + BLCKSZ:
            raise CorruptionError(f"SLRU image value of {len(value)} bytes")
        return bytes(value[1:])
    if tag == TAG_TRUNCATED:
        return None
    if tag != TAG_DELTA:
        raise CorruptionError(f"unknown SLRU value tag {tag:#04x}")
    buf = bytearray(page if page is not None else ZERO_PAGE)
    pos, end = 1, len(value)
    try:
        while pos < end:
            op = value[pos]
            if op == OP_XID_STATUS:
                _, status, n = _OP_STATUS.unpack_from(value, pos)
                pos += _OP_STATUS.size
                for slot in struct.unpack_from(f"<{n}H", value, pos):
                    clog_set_slot(buf, slot, status)
                pos += 2 * n
            elif op == OP_PATCH:
                _, off, n = _OP_PATCH.unpack_from(value, pos)
                pos += _OP_PATCH.size
                if off + n > BLCKSZ or pos + n > end:
                    raise CorruptionError(f"SLRU patch [{off}, {off + n}) out of bounds")
                buf[off:off + n] = value[pos:pos + n]
                pos += n
            else:
                raise CorruptionError(f"unknown SLRU delta op {op:#04x} at byte {pos}")
    except struct.error as e:
        raise CorruptionError(f"truncated SLRU delta value: {e}") from e
    return bytes(buf)


def reconstruct(values: Iterable[bytes], base: bytes | None = None) -> bytes | None:
    """Apply values oldest first to `base` (None: no page yet)."""
    page = base
    for v in values:
        page = apply_value(page, v)
    return page
