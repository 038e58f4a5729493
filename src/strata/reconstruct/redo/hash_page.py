"""Hash index page layout of PostgreSQL 18 (access/hash.h) and the page
initialisers of hashpage.c / hashovfl.c / hashutil.c, in our own Python.

What it is: the hash-specific layer above `page_ops`: the special-space
opaque (HashPageOpaqueData), the metapage (HashMetaPageData), the bitmap
page, and `init_metapage` / `init_bucket_page` / `init_bitmap_page` /
`init_unused_page`, which redo needs byte for byte. Fed by
`reconstruct.redo.hash`; feeds nothing else. Owns no state.

Layouts (little-endian; offsets from the page start):

- HashPageOpaqueData at pd_special (16 bytes): hasho_prevblkno u32,
  hasho_nextblkno u32, hasho_bucket u32, hasho_flag u16, hasho_page_id u16
  (0xFF80).
- HashMetaPageData at PageGetContents (24): magic u32, version u32,
  ntuples float8 (@32), ffactor u16, bsize u16, bmsize u16, bmshift u16,
  maxbucket u32 (@48), highmask, lowmask, ovflpoint, firstfree, nmaps,
  procid (u32 each), spares u32[98] (@76), mapp u32[1024] (@468); sizeof is
  4544 (8-aligned), so pd_lower = 4568.
- Bitmap page: u32 words at PageGetContents; pd_lower = 24 + bmsize.
"""

from __future__ import annotations

import struct

from strata.errors import RedoError
from strata.pg.constants import BLCKSZ
from strata.pg.structs import U16, U32
from strata.reconstruct.redo import page_ops
from strata.reconstruct.redo.page_ops import maxalign

SIZE_OF_HASH_PAGE_OPAQUE = 16
_OPAQUE = struct.Struct("<IIIHH")
_F64 = struct.Struct("<d")

LH_UNUSED_PAGE = 0
LH_OVERFLOW_PAGE = 1 << 0
LH_BUCKET_PAGE = 1 << 1
LH_BITMAP_PAGE = 1 << 2
LH_META_PAGE = 1 << 3
LH_BUCKET_BEING_POPULATED = 1 << 4
LH_BUCKET_BEING_SPLIT = 1 << 5
LH_BUCKET_NEEDS_SPLIT_CLEANUP = 1 << 6
LH_PAGE_HAS_DEAD_TUPLES = 1 << 7
LH_PAGE_TYPE = LH_OVERFLOW_PAGE | LH_BUCKET_PAGE | LH_BITMAP_PAGE | LH_META_PAGE

HASHO_PAGE_ID = 0xFF80
HASH_METAPAGE = 0
HASH_MAGIC = 0x6440640
HASH_VERSION = 4
INVALID_BLOCK_NUMBER = 0xFFFFFFFF
INVALID_BUCKET = 0xFFFFFFFF

HASH_MAX_BITMAPS = min(BLCKSZ // 8, 1024)
HASH_SPLITPOINT_PHASE_BITS = 2
HASH_SPLITPOINT_PHASES_PER_GRP = 1 << HASH_SPLITPOINT_PHASE_BITS
HASH_SPLITPOINT_PHASE_MASK = HASH_SPLITPOINT_PHASES_PER_GRP - 1
HASH_SPLITPOINT_GROUPS_WITH_ONE_PHASE = 10
HASH_MAX_SPLITPOINT_GROUP = 32
HASH_MAX_SPLITPOINTS = ((HASH_MAX_SPLITPOINT_GROUP - HASH_SPLITPOINT_GROUPS_WITH_ONE_PHASE)
                        * HASH_SPLITPOINT_PHASES_PER_GRP + HASH_SPLITPOINT_GROUPS_WITH_ONE_PHASE)
BYTE_TO_BIT = 3

CONTENTS = maxalign(page_ops.SIZE_OF_PAGE_HEADER)  # PageGetContents
# HashMetaPageData field offsets from the page start
META_NTUPLES = CONTENTS + 8
META_MAXBUCKET = CONTENTS + 24
META_HIGHMASK = CONTENTS + 28
META_LOWMASK = CONTENTS + 32
META_OVFLPOINT = CONTENTS + 36
META_FIRSTFREE = CONTENTS + 40
META_NMAPS = CONTENTS + 44
META_SPARES = CONTENTS + 52
META_MAPP = META_SPARES + 4 * HASH_MAX_SPLITPOINTS
SIZE_OF_HASH_META_PAGE_DATA = maxalign(META_MAPP + 4 * HASH_MAX_BITMAPS - CONTENTS)
_META_HEAD = struct.Struct("<IIdHHHHIIIIIII")


# -- opaque -----------------------------------------------------------------------

def _opaque_pos(page: bytes | bytearray) -> int:
    special = page_ops.get_special(page)
    if special + SIZE_OF_HASH_PAGE_OPAQUE > BLCKSZ:
        raise RedoError(f"hash page has special space at {special}: too small for its opaque")
    return special


def get_opaque(page: bytes | bytearray) -> tuple[int, int, int, int, int]:
    """(hasho_prevblkno, hasho_nextblkno, hasho_bucket, hasho_flag, hasho_page_id)."""
    return _OPAQUE.unpack_from(page, _opaque_pos(page))  # type: ignore[return-value]


def set_opaque(page: bytearray, prev: int, next_: int, bucket: int, flag: int) -> None:
    _OPAQUE.pack_into(page, _opaque_pos(page), prev, next_, bucket, flag, HASHO_PAGE_ID)


def get_flag(page: bytes | bytearray) -> int:
    return int(U16.unpack_from(page, _opaque_pos(page) + 12)[0])


def set_flag(page: bytearray, flag: int) -> None:
    U16.pack_into(page, _opaque_pos(page) + 12, flag & 0xFFFF)


def set_prevblkno(page: bytearray, blkno: int) -> None:
    U32.pack_into(page, _opaque_pos(page), blkno)


def set_nextblkno(page: bytearray, blkno: int) -> None:
    U32.pack_into(page, _opaque_pos(page) + 4, blkno)


# -- metapage fields ----------------------------------------------------------------

def get_u32(page: bytes | bytearray, pos: int) -> int:
    return int(U32.unpack_from(page, pos)[0])


def set_u32(page: bytearray, pos: int, value: int) -> None:
    U32.pack_into(page, pos, value & 0xFFFFFFFF)


def get_ntuples(page: bytes | bytearray) -> float:
    return float(_F64.unpack_from(page, META_NTUPLES)[0])


def set_ntuples(page: bytearray, value: float) -> None:
    _F64.pack_into(page, META_NTUPLES, value)


def spares_pos(index: int) -> int:
    if not 0 <= index < HASH_MAX_SPLITPOINTS:
        raise RedoError(f"hash splitpoint {index} out of range")
    return META_SPARES + 4 * index


def mapp_pos(index: int) -> int:
    if not 0 <= index < HASH_MAX_BITMAPS:
        raise RedoError(f"hash bitmap page number {index} out of range")
    return META_MAPP + 4 * index


# -- hashutil.c ---------------------------------------------------------------------

def _ceil_log2(n: int) -> int:
    """pg_ceil_log2_32."""
    return 0 if n < 2 else (n - 1).bit_length()


def spareindex(num_bucket: int) -> int:
    """_hash_spareindex."""
    group = _ceil_log2(num_bucket)
    if group < HASH_SPLITPOINT_GROUPS_WITH_ONE_PHASE:
        return group
    phases = HASH_SPLITPOINT_GROUPS_WITH_ONE_PHASE
    phases += (group - HASH_SPLITPOINT_GROUPS_WITH_ONE_PHASE) << HASH_SPLITPOINT_PHASE_BITS
    phases += (((num_bucket - 1) >> (group - (HASH_SPLITPOINT_PHASE_BITS + 1)))
               & HASH_SPLITPOINT_PHASE_MASK)
    return phases


def get_totalbuckets(splitpoint_phase: int) -> int:
    """_hash_get_totalbuckets."""
    if splitpoint_phase < HASH_SPLITPOINT_GROUPS_WITH_ONE_PHASE:
        return 1 << splitpoint_phase
    group = HASH_SPLITPOINT_GROUPS_WITH_ONE_PHASE + (
        (splitpoint_phase - HASH_SPLITPOINT_GROUPS_WITH_ONE_PHASE) >> HASH_SPLITPOINT_PHASE_BITS)
    total = 1 << (group - 1)
    phases = ((splitpoint_phase - HASH_SPLITPOINT_GROUPS_WITH_ONE_PHASE)
              & HASH_SPLITPOINT_PHASE_MASK) + 1
    return total + ((1 << (group - 1)) >> HASH_SPLITPOINT_PHASE_BITS) * phases


# -- page initialisers ------------------------------------------------------------

def pageinit(page: bytearray) -> None:
    """_hash_pageinit."""
    page_ops.page_init(page, SIZE_OF_HASH_PAGE_OPAQUE)


def init_bucket_page(page: bytearray, max_bucket: int, num_bucket: int, flag: int) -> None:
    """_hash_initbuf(initpage = true)."""
    pageinit(page)
    set_opaque(page, max_bucket, INVALID_BLOCK_NUMBER, num_bucket, flag)


def init_unused_page(page: bytearray) -> None:
    """A freed overflow page as _hash_freeovflpage leaves it."""
    pageinit(page)
    set_opaque(page, INVALID_BLOCK_NUMBER, INVALID_BLOCK_NUMBER, INVALID_BUCKET, LH_UNUSED_PAGE)


def init_bitmap_page(page: bytearray, bmsize: int) -> None:
    """_hash_initbitmapbuffer(initpage = true): every bit set (all pages free)."""
    if CONTENTS + bmsize > BLCKSZ - SIZE_OF_HASH_PAGE_OPAQUE:
        raise RedoError(f"hash bitmap size {bmsize} does not fit a page")
    pageinit(page)
    set_opaque(page, INVALID_BLOCK_NUMBER, INVALID_BLOCK_NUMBER, INVALID_BUCKET, LH_BITMAP_PAGE)
    page[CONTENTS:CONTENTS + bmsize] = b"\xff" * bmsize
    page_ops.set_lower(page, CONTENTS + bmsize)


def init_metapage(page: bytearray, num_tuples: float, procid: int, ffactor: int) -> None:
    """_hash_init_metabuffer(initpage = true)."""
    if ffactor <= 0:
        raise RedoError(f"hash metapage with fill factor {ffactor}")
    dnumbuckets = num_tuples / ffactor
    if dnumbuckets <= 2.0:
        num_buckets = 2
    elif dnumbuckets >= float(0x40000000):
        num_buckets = 0x40000000
    else:
        num_buckets = get_totalbuckets(spareindex(int(dnumbuckets)))
    spare_index = spareindex(num_buckets)
    pageinit(page)
    set_opaque(page, INVALID_BLOCK_NUMBER, INVALID_BLOCK_NUMBER, INVALID_BUCKET, LH_META_PAGE)
    bsize = BLCKSZ - (CONTENTS + maxalign(SIZE_OF_HASH_PAGE_OPAQUE))  # HashGetMaxBitmapSize
    lshift = bsize.bit_length() - 1  # pg_leftmost_one_pos32
    highmask = (1 << (num_buckets + 1 - 1).bit_length()) - 1  # pg_nextpower2_32(n + 1) - 1
    _META_HEAD.pack_into(page, CONTENTS, HASH_MAGIC, HASH_VERSION, 0.0, ffactor, bsize,
                         1 << lshift, lshift + BYTE_TO_BIT, num_buckets - 1, highmask,
                         highmask >> 1, spare_index, 0, 0, procid)
    set_u32(page, spares_pos(spare_index), 1)
    page_ops.set_lower(page, CONTENTS + SIZE_OF_HASH_META_PAGE_DATA)


def bitmap_bit(page: bytearray, bit: int, value: bool) -> None:
    """SETBIT / CLRBIT on a bitmap page's u32 words."""
    pos = CONTENTS + 4 * (bit // 32)
    if bit < 0 or pos + 4 > page_ops.get_special(page):
        raise RedoError(f"hash bitmap bit {bit} outside the page")
    word = get_u32(page, pos)
    mask = 1 << (bit % 32)
    set_u32(page, pos, word | mask if value else word & ~mask)
