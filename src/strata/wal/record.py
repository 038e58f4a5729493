"""Decoded WAL records: the value objects every consumer of WAL shares.

Fed by `wal.decoder` (which parses raw record bytes into these); read by
ingest, reconstruct/redo and `strata waldump`. No I/O, no parsing here.

A record is identified by its start LSN (`lsn`) and ends at `end_lsn`
(PostgreSQL's EndRecPtr: the end of its last byte rounded up to MAXALIGN (8),
i.e. where the next record starts; for XLOG_SWITCH the next segment's start).
That is the value XLogInsert returns and redo stamps on pages (checked against
real page LSNs in tests/wal/test_against_pg.py). Pages are stamped with `end_lsn`.

`raw` is the complete record as written (XLogRecord header included, page
headers removed): storing it is enough to decode the record again later.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from strata.lsn import Lsn

# xl_info low nibble (generic flags)
XLR_INFO_MASK = 0x0F
XLR_RMGR_INFO_MASK = 0xF0
XLR_SPECIAL_REL_UPDATE = 0x01
XLR_CHECK_CONSISTENCY = 0x02

# block reference fork_flags
BKPBLOCK_FORK_MASK = 0x0F
BKPBLOCK_HAS_IMAGE = 0x10
BKPBLOCK_HAS_DATA = 0x20
BKPBLOCK_WILL_INIT = 0x40
BKPBLOCK_SAME_REL = 0x80

# bimg_info
BKPIMAGE_HAS_HOLE = 0x01
BKPIMAGE_APPLY = 0x02
BKPIMAGE_COMPRESS_PGLZ = 0x04
BKPIMAGE_COMPRESS_LZ4 = 0x08
BKPIMAGE_COMPRESS_ZSTD = 0x10
BKPIMAGE_COMPRESSED = BKPIMAGE_COMPRESS_PGLZ | BKPIMAGE_COMPRESS_LZ4 | BKPIMAGE_COMPRESS_ZSTD

XLR_MAX_BLOCK_ID = 32
XLR_BLOCK_ID_DATA_SHORT = 255
XLR_BLOCK_ID_DATA_LONG = 254
XLR_BLOCK_ID_ORIGIN = 253
XLR_BLOCK_ID_TOPLEVEL_XID = 252

SIZE_OF_XLOG_RECORD = 24


@dataclass(frozen=True, slots=True)
class RelFileLocator:
    spc: int  # tablespace oid
    db: int  # database oid (0 for shared relations)
    rel: int  # relfilenumber

    def __str__(self) -> str:
        return f"{self.spc}/{self.db}/{self.rel}"


@dataclass(frozen=True, slots=True)
class BlockImage:
    """A full-page image as stored in the record (possibly holed/compressed)."""

    data: bytes  # the stored bytes (compressed, or without the hole)
    bimg_info: int
    hole_offset: int
    hole_length: int

    @property
    def apply(self) -> bool:
        """BKPIMAGE_APPLY: redo must restore it (else: for verification only)."""
        return bool(self.bimg_info & BKPIMAGE_APPLY)

    @property
    def compressed(self) -> bool:
        return bool(self.bimg_info & BKPIMAGE_COMPRESSED)


@dataclass(frozen=True, slots=True)
class BlockRef:
    """One block reference of a record (`DecodedBkpBlock` in PostgreSQL)."""

    block_id: int
    rlocator: RelFileLocator
    fork: int
    blkno: int
    fork_flags: int
    image: BlockImage | None
    data: bytes  # the block's registered data ("" when none)

    @property
    def will_init(self) -> bool:
        return bool(self.fork_flags & BKPBLOCK_WILL_INIT)

    @property
    def has_image(self) -> bool:
        return self.image is not None

    @property
    def apply_image(self) -> bool:
        return self.image is not None and self.image.apply

    @property
    def has_data(self) -> bool:
        return bool(self.fork_flags & BKPBLOCK_HAS_DATA)


@dataclass(frozen=True, slots=True)
class DecodedRecord:
    """One WAL record, decoded down to block references and main data."""

    lsn: Lsn  # start of the record (ReadRecPtr)
    end_lsn: Lsn  # EndRecPtr: what redo stamps on pages
    xl_tot_len: int
    xl_xid: int
    xl_prev: Lsn
    xl_info: int
    xl_rmid: int
    xl_crc: int
    blocks: tuple[BlockRef, ...]
    main_data: bytes
    origin: int | None = None
    toplevel_xid: int | None = None
    raw: bytes = field(default=b"", repr=False)

    @property
    def info(self) -> int:
        """The rmgr-specific part of xl_info (high nibble)."""
        return self.xl_info & XLR_RMGR_INFO_MASK

    @property
    def check_consistency(self) -> bool:
        return bool(self.xl_info & XLR_CHECK_CONSISTENCY)

    def block(self, block_id: int) -> BlockRef | None:
        for b in self.blocks:
            if b.block_id == block_id:
                return b
        return None

    @property
    def main_len(self) -> int:
        return len(self.main_data)

    @property
    def fpi_len(self) -> int:
        """Bytes of full-page images as stored (pg_waldump's "FPI size")."""
        return sum(len(b.image.data) for b in self.blocks if b.image is not None)
