"""SLRU pages (pg_xact, pg_multixact/offsets, pg_multixact/members): layout,
page arithmetic, the page-value format, and applying values to pages.

What it is: PostgreSQL knowledge, no I/O: pure functions over 8 KB SLRU pages with PostgreSQL 18's
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

The page-value format (tags, ops) is `strata.keyspace.slru`'s (keyspace/FORMAT.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum

from strata.errors import CorruptionError
from strata.key import SlruKind
from strata.pg.constants import BLCKSZ, FIRST_MULTIXACT_ID, FIRST_NORMAL_XID
from strata.pg.structs import U32
from strata.pg.transam import multi_precedes, xid_precedes

SLRU_PAGES_PER_SEGMENT = 32
SEGMENT_SIZE = BLCKSZ * SLRU_PAGES_PER_SEGMENT
ZERO_PAGE = bytes(BLCKSZ)

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


def offsets_page(multi: int) -> int:
    return multi // MULTIXACT_OFFSETS_PER_PAGE


def offsets_entry(multi: int) -> int:
    return multi % MULTIXACT_OFFSETS_PER_PAGE


def get_multixact_offset(page: bytes | bytearray, multi: int) -> int:
    return int(U32.unpack_from(page, offsets_entry(multi) * 4)[0])


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
    return (int(U32.unpack_from(page, member_xid_offset(offset))[0]),
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
                         offsets_entry(multi) * 4, U32.pack(moff & 0xFFFFFFFF)))
    nxt = (multi + 1) & 0xFFFFFFFF
    if nxt < FIRST_MULTIXACT_ID:
        nxt = FIRST_MULTIXACT_ID
    next_offset = (moff + len(members)) & 0xFFFFFFFF
    if next_offset == 0:
        next_offset = 1
    out.append(SlruWrite(SlruKind.MULTIXACT_OFFSETS, offsets_page(nxt),
                         offsets_entry(nxt) * 4, U32.pack(next_offset)))
    offset = moff
    for xid, status in members:
        page = member_page(offset)
        out.append(SlruWrite(SlruKind.MULTIXACT_MEMBERS, page, member_xid_offset(offset),
                             U32.pack(xid)))
        out.append(SlruWrite(SlruKind.MULTIXACT_MEMBERS, page, member_status_offset(offset),
                             bytes([status & 0xFF])))
        offset = (offset + 1) & 0xFFFFFFFF
    return out


# -- "precedes" with wraparound (clog.c, multixact.c) -----------------------------------
def clog_page_precedes(page1: int, page2: int) -> bool:
    xid1 = (page1 * CLOG_XACTS_PER_PAGE + FIRST_NORMAL_XID + 1) & 0xFFFFFFFF
    xid2 = (page2 * CLOG_XACTS_PER_PAGE + FIRST_NORMAL_XID + 1) & 0xFFFFFFFF
    return (xid_precedes(xid1, xid2)
            and xid_precedes(xid1, (xid2 + CLOG_XACTS_PER_PAGE - 1) & 0xFFFFFFFF))


def offsets_page_precedes(page1: int, page2: int) -> bool:
    m1 = (page1 * MULTIXACT_OFFSETS_PER_PAGE + FIRST_MULTIXACT_ID + 1) & 0xFFFFFFFF
    m2 = (page2 * MULTIXACT_OFFSETS_PER_PAGE + FIRST_MULTIXACT_ID + 1) & 0xFFFFFFFF
    return (multi_precedes(m1, m2)
            and multi_precedes(m1, (m2 + MULTIXACT_OFFSETS_PER_PAGE - 1) & 0xFFFFFFFF))


def members_page_precedes(page1: int, page2: int) -> bool:
    o1 = (page1 * MULTIXACT_MEMBERS_PER_PAGE) & 0xFFFFFFFF
    o2 = (page2 * MULTIXACT_MEMBERS_PER_PAGE) & 0xFFFFFFFF
    return (multi_precedes(o1, o2)
            and multi_precedes(o1, (o2 + MULTIXACT_MEMBERS_PER_PAGE - 1) & 0xFFFFFFFF))


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
