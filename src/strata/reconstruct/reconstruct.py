"""The redo callback the page store is given: (Key, base, deltas) -> value.

What it is: the bridge between storage (which knows nothing of PostgreSQL and
calls `reconstruct_value(key, base, records)` with the newest image at or
below the read LSN and the deltas above it, oldest first) and the redo
engines: relation blocks go through `reconstruct.redo` (the delta is a whole
WAL record, format in `keyspace/FORMAT.md`), SLRU pages through
`reconstruct.slru`. Pure: no I/O.
"""

from __future__ import annotations

from strata.errors import RedoError
from strata.key import Key, KeyKind
from strata.keyspace.relation import decode_delta, decode_image_delta, is_image_delta
from strata.reconstruct.redo import redo_block
from strata.reconstruct.redo.page_ops import page_is_new, page_set_lsn
from strata.reconstruct.slru import apply_value
from strata.storage.values import WalRecord
from strata.wal.decoder import decode_record
from strata.wal.image import restore_page


def _block_id(record_blocks: object, key: Key) -> int:
    for b in record_blocks:  # type: ignore[attr-defined]
        loc = b.rlocator
        if (loc.spc == key.spc and loc.db == key.db and loc.rel == key.rel
                and b.fork == key.fork and b.blkno == key.blk):
            return int(b.block_id)
    raise RedoError(f"stored WAL record does not reference block {key}")


def _restore_image(data: bytes) -> bytes:
    """An image delta's page, as redo restores an applied image (stamped with
    the record's end LSN unless the page is new)."""
    lsn, end, image = decode_image_delta(data)
    page = bytearray(restore_page(image, lsn=lsn))
    if not page_is_new(page):
        page_set_lsn(page, end)
    return bytes(page)


def reconstruct_value(key: Key, base: bytes | None, records: list[WalRecord]) -> bytes:
    """Apply `records` (oldest first) on top of `base` for `key`.

    Raises: RedoError / UnsupportedRecordError from the redo engines.
    """
    if key.kind == KeyKind.REL_BLOCK:

        page: bytes | None = base
        for r in records:
            if is_image_delta(r.data):
                page = _restore_image(r.data)
                continue
            lsn, end, raw = decode_delta(r.data)
            rec = decode_record(raw, lsn, end)
            page = redo_block(rec, _block_id(rec.blocks, key), page)
        if page is None:
            raise RedoError(f"no page for {key}")
        return page
    if key.kind == KeyKind.SLRU_PAGE:
        cur: bytes | None = base  # images are stored as the bare page
        for r in records:
            cur = apply_value(cur, r.data)
        if cur is None:
            raise RedoError(f"no SLRU page for {key}")
        return cur
    if records:
        raise RedoError(f"key kind {key.kind} takes no deltas ({key})")
    if base is None:
        raise RedoError(f"no value for {key}")
    return base
