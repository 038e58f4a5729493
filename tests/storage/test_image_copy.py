"""Image creation copies whole the blocks of an older image layer whose keys did not
change (`scan.unchanged_blocks`, `LayerWriter.copy_image_block`).

A new image layer over a partition holds every key at its LSN. Where a block of the
floor image holds keys none of which has an entry above it, its values are already
those at the new LSN: the block's values frame is written again as it is on disk,
and only its head (whose LSN column says the new LSN) is compressed again. These
tests check that unchanged blocks are copied and changed ones are not, that every
key reads the same through the new images as the model says, and that the files
made so verify (CRCs, order, ranges, index bounds) like any other.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest

from strata.errors import CorruptionError
from strata.key import Key, KeyRange
from strata.pagestore import PageStore
from strata.storage import images as images_mod
from strata.storage.config import StorageConfig
from strata.storage.layerfile import LayerFile
from strata.storage.layerwriter import LayerWriter
from strata.storage.values import PageImage, WalRecord

from .conftest import Model, append_redo, rk

CFG = StorageConfig(memtable_bytes=64 << 20, block_bytes=16 << 10, cache_pages=0,
                    background_maintenance=False, flush_image_interval=0)
PAGES = 400


def page(blk: int, version: int) -> PageImage:
    """A page-sized, compressible, distinct image."""
    rnd = random.Random(blk * 1000 + version)
    body = bytes(rnd.randrange(8) for _ in range(512)) * 16
    return PageImage(b"%d/%d|" % (blk, version) + body[: 8192 - 16])


def put(ps: PageStore, m: Model, lsn: int, values: list[tuple[int, PageImage | WalRecord]]
        ) -> int:
    """Each (block, value) at the next LSN (8 apart) in the store and the model;
    returns the last LSN, advanced to."""
    for blk, v in values:
        lsn += 8
        ps.put(rk(blk), lsn, v)
        m.put(rk(blk), lsn, v)
    ps.advance(lsn)
    return lsn


def image_files(ps: PageStore, lsn: int) -> list[LayerFile]:
    return [la.file for la in ps.store.view().layer_map.images if la.name.image_lsn == lsn]


def test_unchanged_blocks_are_copied_and_read_back_at_the_new_lsn(store_dir: Path) -> None:
    m = Model()
    ps = PageStore.open(store_dir, append_redo, CFG, background=False)
    try:
        lsn = put(ps, m, 0, [(blk, page(blk, 0)) for blk in range(PAGES)])
        ps.flush()
        first = ps.durable_lsn
        ps.create_image_layers(threshold=0)
        assert ps.metrics().image_blocks_copied == 0  # nothing to copy from yet
        old = image_files(ps, first)
        blocks = sum(len(f.blocks) for f in old)
        assert blocks > 10 and all(b.head_len for f in old for b in f.blocks)
        # change a few pages: a record on three, a new image on one
        changed = {7, 150, 151, 333}
        lsn = put(ps, m, lsn, [(blk, WalRecord(b"+%d" % blk) if blk != 150 else page(blk, 1))
                               for blk in sorted(changed)])
        ps.flush()
        second = ps.durable_lsn
        ps.create_image_layers(threshold=0)
        new = image_files(ps, second)
        assert new
        # a block is copied unless it holds a changed key
        touched = {i for f in old for i, b in enumerate(f.blocks)
                   if any(b.first_key <= rk(c).to_bytes() <= b.last_key for c in changed)}
        assert 0 < len(touched) < blocks
        assert ps.metrics().image_blocks_copied == blocks - len(touched)
        for f in new:
            assert f.verify() > 0
            assert all(int(b.lsns.min()) == int(b.lsns.max()) == second
                       for b in (f.block_batch(i) for i in range(len(f.blocks))))
        keys = [Key.from_bytes(bytes(k)) for f in new for i in range(len(f.blocks))
                for k in f.block_batch(i).keys]
        assert keys == [rk(b) for b in range(PAGES)]
        for blk in range(PAGES):
            for at in (first, second):
                assert ps.get_page(rk(blk), at) == m.get(rk(blk), at), (blk, at)
    finally:
        ps.close()
    # and again from disk, through the image layers alone
    ps = PageStore.open(store_dir, append_redo, CFG, background=False)
    try:
        assert list(ps.scan(KeyRange(rk(0), rk(PAGES)), second)) == m.scan(second)
    finally:
        ps.close()


def test_under_a_newer_partial_image_its_blocks_are_copied_not_the_older_ones(
        store_dir: Path) -> None:
    """An image layer at a newer LSN over part of the range: there the keys' floor
    is the newer image, so its blocks are copied (and the older image's blocks under
    it never are, nor its rows kept); elsewhere the older image's blocks are."""
    m = Model()
    cfg = dataclasses.replace(CFG, block_bytes=8 << 10)
    ps = PageStore.open(store_dir, append_redo, cfg, background=False)
    try:
        lsn = put(ps, m, 0, [(blk, page(blk, 0)) for blk in range(64)])
        ps.flush()
        first = ps.durable_lsn
        ps.create_image_layers(threshold=0)
        lsn = put(ps, m, lsn, [(20, page(20, 1))])
        ps.flush()
        mid = ps.durable_lsn
        images_mod.make_images(ps.store, rk(16).to_bytes(), rk(24).to_bytes(), mid)
        copied = ps.metrics().image_blocks_copied
        assert copied > 0  # the pages around the change
        lsn = put(ps, m, lsn, [(40, page(40, 1))])
        ps.flush()
        top = ps.durable_lsn
        (older,), (newer,) = image_files(ps, first), image_files(ps, mid)
        lo, hi, at40 = rk(16).to_bytes(), rk(24).to_bytes(), rk(40).to_bytes()
        expect = len(newer.blocks) + sum(
            1 for b in older.blocks
            if (b.last_key < lo or b.first_key >= hi)
            and not b.first_key <= at40 <= b.last_key)
        ps.create_image_layers(threshold=0)
        assert ps.metrics().image_blocks_copied - copied == expect
        for blk in range(64):
            assert ps.get_page(rk(blk), top) == m.get(rk(blk), top), blk
        for f in image_files(ps, top):
            f.verify()
    finally:
        ps.close()


def test_copy_image_block_refuses_what_is_not_an_image_block(store_dir: Path) -> None:
    store_dir.mkdir(parents=True)
    ps = PageStore.open(store_dir, append_redo, CFG, background=False)
    try:
        for blk in range(20):
            ps.put(rk(blk), 8 + blk, page(blk, 0))
        ps.put(rk(3), 100, WalRecord(b"+"))
        ps.advance(100)
        ps.flush()
        delta = next(la.file for la in ps.store.view().layer_map.deltas)
        with pytest.raises(ValueError, match="not an image block"):
            delta.image_block_parts(0)
        ps.create_image_layers(threshold=0)
        img = next(la.file for la in ps.store.view().layer_map.images)
        head, values = img.image_block_parts(0)
        w = LayerWriter(store_dir, block_bytes=CFG.block_bytes, zstd_level=1)
        try:
            w.copy_image_block(head, values, 500)
            with pytest.raises(ValueError, match="out of order"):
                w.copy_image_block(head, values, 500)
            dhead = delta._head(0, delta.blocks[0])
            with pytest.raises(ValueError, match="not the head of an image block"):
                w.copy_image_block(dhead, b"", 600)
        finally:
            w.abort()
        one = LayerWriter(store_dir, block_bytes=CFG.block_bytes, zstd_level=1,
                          head_frames=False)
        try:
            with pytest.raises(ValueError, match="not the head of an image block"):
                one.copy_image_block(head, values, 500)
        finally:
            one.abort()
    finally:
        ps.close()


def test_entries_below_the_floor_in_a_layer_across_it_do_not_stop_a_copy(
        store_dir: Path) -> None:
    """One delta layer holds every page's first image and, later, a few changes; an
    image made at an LSN between the two is the floor of the next: the layer's rows
    at or below that floor change nothing, only the later ones do."""
    m = Model()
    ps = PageStore.open(store_dir, append_redo, CFG, background=False)
    try:
        mid = put(ps, m, 0, [(blk, page(blk, 0)) for blk in range(PAGES)])
        lsn = put(ps, m, mid, [(blk, WalRecord(b"+%d" % blk)) for blk in (5, 300)])
        ps.flush()
        ps.create_image_layers(lsn=mid, threshold=0)
        (old,) = image_files(ps, mid)
        ps.create_image_layers(threshold=0)
        changed = [rk(5).to_bytes(), rk(300).to_bytes()]
        expect = sum(1 for b in old.blocks
                     if not any(b.first_key <= k <= b.last_key for k in changed))
        assert expect > 10
        assert ps.metrics().image_blocks_copied == expect
        for blk in range(PAGES):
            assert ps.get_page(rk(blk), lsn) == m.get(rk(blk), lsn), blk
    finally:
        ps.close()


def test_a_damaged_block_is_not_copied_silently(store_dir: Path) -> None:
    """A copy checks the block's CRC first: a flipped byte in an unchanged block's
    values frame fails the image with CorruptionError naming the file, and no image
    layer at the new LSN is published."""
    m = Model()
    ps = PageStore.open(store_dir, append_redo, CFG, background=False)
    try:
        put(ps, m, 0, [(blk, page(blk, 0)) for blk in range(PAGES)])
        ps.flush()
        first = ps.durable_lsn
        ps.create_image_layers(threshold=0)
        (old,) = image_files(ps, first)
        b = old.blocks[0]
        with open(old.path, "r+b") as f:
            f.seek(b.offset + b.head_len + 5)
            byte = f.read(1)
            f.seek(b.offset + b.head_len + 5)
            f.write(bytes([byte[0] ^ 0xFF]))
        put(ps, m, 10_000, [(PAGES - 1, WalRecord(b"+"))])
        ps.flush()
        with pytest.raises(CorruptionError, match=old.path.name):
            ps.create_image_layers(threshold=0)
        assert image_files(ps, ps.durable_lsn) == []
    finally:
        ps.close()
