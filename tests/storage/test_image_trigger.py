"""The per-key delta count trigger of image creation (`image_record_threshold`).

A hot key can pile up thousands of deltas inside one or a few delta layers; the
layer-count trigger (`image_delta_threshold`) never fires then, and every cold read
of that key replays its whole chain. These tests check that the record trigger makes
an image over such a key, that reads are unchanged and stop replaying, that the
bound sums over layers (never under-counts), that short chains make no images, and
that the writer records the per-key maximum in the layer header (format v2).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

from strata.errors import CorruptionError
from strata.key import Key, KeyRange
from strata.pagestore import PageStore
from strata.storage import images as images_mod
from strata.storage.config import StorageConfig
from strata.storage.layerfile import FORMAT_VERSION, HEADER, LayerFile, crc32c
from strata.storage.layerwriter import write_layer
from strata.storage.manifest import Level, load_manifest
from strata.storage.naming import LayerName
from strata.storage.values import Entry, PageImage, Value, WalRecord

from .conftest import Model, append_redo, rk

# One big memtable per flush (each flush = one L0 layer), no cache (metrics count
# every read), nothing in the background unless a test asks for it.
BIG = StorageConfig(memtable_bytes=64 << 20, cache_pages=0, background_maintenance=False, flush_image_interval=0,
                    image_delta_threshold=3, image_record_threshold=512)

HOT = rk(0)


def put_hot_and_cold(ps: PageStore, model: Model, lsn: int, hot: int, cold: int,
                     cold_keys: int = 8) -> int:
    """`hot` delta records on HOT and `cold` on each of `cold_keys` other keys (each
    key starting from a page image if it has none yet); returns the last LSN."""
    for k, n in [(HOT, hot)] + [(rk(i), cold) for i in range(1, cold_keys + 1)]:
        if k not in model.data:
            lsn += 8
            base = PageImage(b"base%d|" % k.blk)
            ps.put(k, lsn, base)
            model.put(k, lsn, base)
        for _ in range(n):
            lsn += 8
            rec = WalRecord(b"+%x" % lsn)
            ps.put(k, lsn, rec)
            model.put(k, lsn, rec)
    ps.advance(lsn)
    return lsn


def hot_layers(ps: PageStore, model: Model, layers: int, hot: int, cold: int) -> int:
    """`layers` flushed layers of `put_hot_and_cold`; returns the last LSN."""
    lsn = 0
    for _ in range(layers):
        lsn = put_hot_and_cold(ps, model, lsn, hot=hot, cold=cold)
        ps.flush()
    return lsn


def deltas_applied_by_get(ps: PageStore, key: Key, lsn: int) -> tuple[bytes | None, int]:
    before = ps.metrics().deltas_applied
    v = ps.get_page(key, lsn)
    return v, ps.metrics().deltas_applied - before


def images(ps: PageStore) -> list[LayerName]:
    return [la.name for la in ps.store.view().layer_map.images]


def test_hot_key_with_2000_deltas_in_one_layer_gets_an_image_and_stops_replaying(
        store_dir: Path) -> None:
    m = Model()
    with PageStore.open(store_dir, append_redo, BIG, background=False) as ps:
        last = put_hot_and_cold(ps, m, 0, hot=2000, cold=3)
        ps.flush()
        lm = ps.store.view().layer_map
        assert len(lm.deltas) == 1  # one layer: the layer-count trigger cannot fire
        assert lm.deltas[0].file.max_key_entries() == 2000  # the base image ends no run
        before, applied = deltas_applied_by_get(ps, HOT, last)
        assert before == m.get(HOT, last) and applied == 2000

        made = ps.create_image_layers()

        assert made and all(n.is_image and n.image_lsn == last for n in made)
        assert any(n.key_start <= HOT.to_bytes() < n.key_end for n in made)
        after, applied = deltas_applied_by_get(ps, HOT, last)
        assert after == before and applied == 0
        for lsn in (8, 800, 8000, last - 8, last):  # history below the image unchanged
            for k in [HOT] + [rk(i) for i in range(1, 9)]:
                assert ps.get_page(k, lsn) == m.get(k, lsn), (k, lsn)
        assert list(ps.scan(KeyRange.everything(), last)) == m.scan(last)
        assert ps.create_image_layers() == []  # the image is the floor now


def test_same_store_with_a_higher_record_threshold_makes_no_image(store_dir: Path) -> None:
    cfg = StorageConfig(memtable_bytes=64 << 20, cache_pages=0, background_maintenance=False, flush_image_interval=0,
                        image_delta_threshold=3, image_record_threshold=5000)
    with PageStore.open(store_dir, append_redo, cfg, background=False) as ps:
        put_hot_and_cold(ps, Model(), 0, hot=2000, cold=3)
        ps.flush()
        assert ps.create_image_layers() == [] and images(ps) == []
        # the explicit argument overrides the config
        assert ps.create_image_layers(record_threshold=1999) != []


def test_short_chains_in_few_layers_make_no_images(store_dir: Path) -> None:
    m = Model()
    with PageStore.open(store_dir, append_redo, BIG, background=False) as ps:
        lsn = 0
        for _ in range(3):  # three layers (not more than image_delta_threshold)
            lsn = put_hot_and_cold(ps, m, lsn, hot=20, cold=5, cold_keys=30)
            ps.flush()
        assert len(ps.store.view().layer_map.deltas) == 3
        assert ps.create_image_layers() == [] and images(ps) == []
        assert ps.get_page(HOT, lsn) == m.get(HOT, lsn)


def test_chain_spread_over_layers_is_summed_so_it_still_triggers(store_dir: Path) -> None:
    """200 + 200 + 200 hot records in three layers: no layer alone passes 512, the
    layer count (3) does not pass 3, the sum does."""
    m = Model()
    with PageStore.open(store_dir, append_redo, BIG, background=False) as ps:
        lsn = hot_layers(ps, m, 3, hot=200, cold=2)
        lm = ps.store.view().layer_map
        assert len(lm.deltas) == 3 and max(d.file.max_key_entries() for d in lm.deltas) <= 201
        made = ps.create_image_layers()
        assert any(n.key_start <= HOT.to_bytes() < n.key_end for n in made)
        v, applied = deltas_applied_by_get(ps, HOT, lsn)
        assert v == m.get(HOT, lsn) and applied == 0


def test_entries_above_the_image_floor_are_what_counts(store_dir: Path) -> None:
    """Once imaged, only layers above the image count: 300 more hot records (below
    512) make no new image; 300 after that (600 above the floor) do."""
    m = Model()
    with PageStore.open(store_dir, append_redo, BIG, background=False) as ps:
        lsn = put_hot_and_cold(ps, m, 0, hot=1000, cold=1)
        ps.flush()
        assert ps.create_image_layers()
        lsn = put_hot_and_cold(ps, m, lsn, hot=300, cold=1)
        ps.flush()
        assert ps.create_image_layers() == []
        lsn = put_hot_and_cold(ps, m, lsn, hot=300, cold=1)
        ps.flush()
        made = ps.create_image_layers()
        assert made and all(n.image_lsn == lsn for n in made)
        v, applied = deltas_applied_by_get(ps, HOT, lsn)
        assert v == m.get(HOT, lsn) and applied == 0


def test_compacted_l1_keeps_the_count_and_triggers(store_dir: Path) -> None:
    m = Model()
    with PageStore.open(store_dir, append_redo, BIG, background=False) as ps:
        lsn = 0
        for _ in range(2):
            lsn = put_hot_and_cold(ps, m, lsn, hot=400, cold=2)
            ps.flush()
        ps.compact()
        lm = ps.store.view().layer_map
        assert [d.entry.level for d in lm.deltas] == [Level.L1]
        assert lm.deltas[0].file.max_key_entries() == 800
        assert ps.create_image_layers()
        v, applied = deltas_applied_by_get(ps, HOT, lsn)
        assert v == m.get(HOT, lsn) and applied == 0


def test_background_maintenance_makes_the_image_by_itself(store_dir: Path) -> None:
    cfg = StorageConfig(memtable_bytes=64 << 20, cache_pages=0, background_maintenance=True, flush_image_interval=0,
                        image_delta_threshold=3, image_record_threshold=512)
    m = Model()
    with PageStore.open(store_dir, append_redo, cfg, background=True) as ps:
        last = put_hot_and_cold(ps, m, 0, hot=1000, cold=2)
        ps.flush()
        assert ps.wait_maintenance(timeout=60)
        man = load_manifest(store_dir)
        assert man is not None
        imgs = [le.name for le in man.layers if le.level == Level.IMAGE]
        assert any(n.image_lsn == last and n.key_start <= HOT.to_bytes() < n.key_end
                   for n in imgs)
        v, applied = deltas_applied_by_get(ps, HOT, last)
        assert v == m.get(HOT, last) and applied == 0


def test_writer_records_the_longest_run_of_one_key_in_the_header(tmp_path: Path) -> None:
    runs = {rk(0): 3, rk(1): 7, rk(2): 1, rk(3): 5}
    entries = []
    lsn = 0
    for k in sorted(runs):
        for _ in range(runs[k]):
            lsn += 1
            entries.append(Entry(k.to_bytes(), lsn, WalRecord(b"x" * 50)))
    name = LayerName.delta(rk(0).to_bytes(), rk(4).to_bytes(), 1, lsn + 1)
    # small blocks: runs cross block boundaries
    w = write_layer(tmp_path, name, entries, block_bytes=100, zstd_level=1)
    assert w.max_key_entries == 7
    f = LayerFile(tmp_path / name.filename())
    try:
        assert f.version == FORMAT_VERSION and len(f.blocks) > 3
        assert f.max_key_entries() == 7
        assert f._count_max_key_entries() == 7  # the v1 fallback agrees with the header
    finally:
        f.close()


def test_verify_flags_a_header_max_key_entries_that_disagrees_with_the_entries(
        tmp_path: Path) -> None:
    entries = [Entry(rk(0).to_bytes(), lsn, WalRecord(b"r")) for lsn in range(1, 6)]
    name = LayerName.delta(rk(0).to_bytes(), rk(1).to_bytes(), 1, 6)
    write_layer(tmp_path, name, entries, block_bytes=64, zstd_level=1)
    path = tmp_path / name.filename()
    data = bytearray(path.read_bytes())
    fields = list(HEADER.unpack_from(data))
    assert fields[4] == 5
    fields[4], fields[-1] = 2, 0  # claim 2, re-seal the header checksum
    fields[-1] = crc32c(HEADER.pack(*fields)[:-4])
    data[: HEADER.size] = HEADER.pack(*fields)
    path.write_bytes(bytes(data))
    f = LayerFile(path)
    try:
        assert f.max_key_entries() == 2  # opens fine: the header is self-consistent
        with pytest.raises(CorruptionError, match="max_key_entries 2 but a key has 5"):
            f.verify()
    finally:
        f.close()


def test_flush_cuts_a_hot_keys_chain_so_no_read_replays_more_than_the_interval(
        tmp_path: Path) -> None:
    """flush_image_interval: 2,000 deltas of one key between two flushes; after
    the flush no read at any LSN applies more than `interval` deltas, and every
    read returns what the model (and the store before the flush) returns."""
    interval = 64
    cfg = StorageConfig(memtable_bytes=64 << 20, cache_pages=0, background_maintenance=False,
                        flush_image_interval=interval)
    ps = PageStore.open(tmp_path / "layers", append_redo, cfg, background=False)
    try:
        m = Model()
        hot = rk(1)
        m.put(hot, 10, PageImage(b"base"))
        ps.put(hot, 10, PageImage(b"base"))
        lsn = 10
        for i in range(2000):
            lsn += 1
            v = WalRecord(b"%d," % i)
            m.put(hot, lsn, v)
            ps.put(hot, lsn, v)
        ps.advance(lsn)
        before = {at: ps.get_page(hot, at) for at in (10, 11, 500, 1337, lsn)}
        ps.flush()
        for at, value in before.items():
            assert value == m.get(hot, at)
            b = ps.metrics()
            assert ps.get_page(hot, at) == value
            assert ps.metrics().deltas_applied - b.deltas_applied <= interval
    finally:
        ps.close()


def test_a_chain_cut_at_flush_does_not_look_long_to_the_image_trigger(tmp_path: Path) -> None:
    """v3 counts runs of records, so 2,000 updates of one page, cut by flush every 128
    deltas, count as at most 128 (not 2,001 entries): no image layer is rewritten for
    a chain no read replays, and reads still replay at most the interval."""
    cfg = StorageConfig(memtable_bytes=64 << 20, cache_pages=0, background_maintenance=False,
                        flush_image_interval=128, image_delta_threshold=3,
                        image_record_threshold=512)
    m = Model()
    with PageStore.open(tmp_path / "layers", append_redo, cfg, background=False) as ps:
        last = put_hot_and_cold(ps, m, 0, hot=2000, cold=3)
        ps.flush()
        assert ps.store.view().layer_map.deltas[0].file.max_key_entries() <= 128
        assert ps.create_image_layers() == []
        for lsn in (8, 4000, 8000, last):
            v, applied = deltas_applied_by_get(ps, HOT, lsn)
            assert v == m.get(HOT, lsn) and applied <= 128


def test_by_default_a_page_cut_at_flush_never_looks_long_to_the_image_trigger(
        tmp_path: Path) -> None:
    """The default interval and threshold together: the cut count restarts with each
    flush, so a hot page's chain can be one layer's tail after its last cut and the
    next layer's head before its first (2 x (interval - 1) deltas). Rule 1 must not
    image a partition for that (each flush would rewrite the hot pages' images), and
    a read still replays no more than the threshold."""
    cfg = StorageConfig(memtable_bytes=64 << 20, cache_pages=0, background_maintenance=False)
    k = cfg.flush_image_interval
    m = Model()
    with PageStore.open(tmp_path / "layers", append_redo, cfg, background=False) as ps:
        lsn = put_hot_and_cold(ps, m, 0, hot=2 * k - 1, cold=3)
        ps.flush()
        lsn = put_hot_and_cold(ps, m, lsn, hot=k - 1, cold=3)
        ps.flush()
        lm = ps.store.view().layer_map
        assert images_mod.longest_chain(lm.deltas, b"", b"\xff" * 18, -1, lsn) == 2 * (k - 1)
        assert ps.create_image_layers() == []
        v, applied = deltas_applied_by_get(ps, HOT, lsn)
        assert v == m.get(HOT, lsn) and applied == 2 * (k - 1) <= cfg.image_record_threshold


def test_record_runs_restart_at_will_init_and_end_at_images_and_tombstones(
        tmp_path: Path) -> None:
    from strata.storage.values import TOMBSTONE

    k = rk(0).to_bytes()
    vals = [WalRecord(b"a"), WalRecord(b"b"), WalRecord(b"i", True), WalRecord(b"c"),
            WalRecord(b"d"), WalRecord(b"e"), PageImage(b"p"), WalRecord(b"f"), TOMBSTONE,
            WalRecord(b"g"), WalRecord(b"h")]
    entries = [Entry(k, lsn + 1, v) for lsn, v in enumerate(vals)]
    name = LayerName.delta(rk(0).to_bytes(), rk(1).to_bytes(), 1, len(vals) + 1)
    w = write_layer(tmp_path, name, entries, block_bytes=40, zstd_level=1)
    assert w.max_key_entries == 4  # i c d e
    f = LayerFile(tmp_path / name.filename())
    try:
        assert f.verify() == len(vals) and f._count_max_key_entries() == 4
    finally:
        f.close()


# ---- the byte rule and the cap (FORMAT.md section 7a, rules 2 and 3) ----

BYTES = StorageConfig(memtable_bytes=64 << 20, cache_pages=0, background_maintenance=False,
                      flush_image_interval=0, image_delta_threshold=3,
                      image_record_threshold=512, image_bytes_ratio=1.0, image_layer_cap=12)


def _imaged_base(ps: PageStore, m: Model, keys: int, page: int) -> int:
    """`keys` keys with an incompressible `page`-byte image each, flushed and imaged
    (the floor); returns the LSN."""
    lsn = 0
    for i in range(keys):
        lsn += 8
        v = PageImage(os.urandom(page))
        ps.put(rk(i), lsn, v)
        m.put(rk(i), lsn, v)
    ps.advance(lsn)
    ps.flush()
    assert ps.create_image_layers(threshold=0)
    return lsn


def _layer(ps: PageStore, m: Model, lsn: int, keys: Iterable[int],
           value: Callable[[], Value]) -> int:
    """One flushed delta layer: a `value()` on each key, 8 LSNs apart; the last LSN."""
    for i in keys:
        lsn += 8
        v = value()
        ps.put(rk(i), lsn, v)
        m.put(rk(i), lsn, v)
    ps.advance(lsn)
    ps.flush()
    return lsn


def _delta_layer(ps: PageStore, m: Model, lsn: int, keys: Iterable[int], size: int) -> int:
    """One flushed delta layer: a `size`-byte incompressible record on each key."""
    return _layer(ps, m, lsn, keys, lambda: WalRecord(os.urandom(size)))


def test_deltas_smaller_than_the_image_make_no_image_until_they_outweigh_it(
        store_dir: Path) -> None:
    m = Model()
    with PageStore.open(store_dir, append_redo, BYTES, background=False) as ps:
        lsn = _imaged_base(ps, m, keys=64, page=2000)  # ~128 KB of image blocks
        floor_images = images(ps)
        for _ in range(5):  # five layers (> 3) of ~3 KB each: far below the image
            lsn = _delta_layer(ps, m, lsn, range(0, 64, 8), 400)
        assert ps.create_image_layers() == [] and images(ps) == floor_images
        # the count rule alone would have made them (what --threshold asks for)
        lm = ps.store.view().layer_map
        assert len([d for d in lm.deltas if d.name.lsn_end - 1 > floor_images[0].image_lsn]) == 5
        while True:  # heavier layers until the deltas hold the image's bytes
            lsn = _delta_layer(ps, m, lsn, range(64), 1500)
            lm = ps.store.view().layer_map
            a, z = rk(0).to_bytes(), rk(64).to_bytes()  # the block bytes of the keys
            img = sum(images_mod.block_bytes(la, a, z) for la in lm.images)
            dlt = sum(images_mod.block_bytes(la, a, z) for la in lm.deltas
                      if la.name.lsn_end - 1 > floor_images[0].image_lsn)
            made = ps.create_image_layers()
            if dlt >= img:
                break
            assert made == [], (dlt, img)
        assert made and all(n.image_lsn == lsn for n in made)
        for at in (8, lsn - 8, lsn):
            for i in range(64):
                assert ps.get_page(rk(i), at) == m.get(rk(i), at), (i, at)


def test_more_layers_than_the_cap_make_images_however_small(store_dir: Path) -> None:
    m = Model()
    with PageStore.open(store_dir, append_redo, BYTES, background=False) as ps:
        lsn = _imaged_base(ps, m, keys=64, page=2000)
        for _ in range(12):  # 12 tiny layers: not past the cap
            lsn = _delta_layer(ps, m, lsn, range(0, 64, 16), 50)
        assert ps.create_image_layers() == []
        lsn = _delta_layer(ps, m, lsn, range(0, 64, 16), 50)  # the 13th
        made = ps.create_image_layers()
        assert made and all(n.image_lsn == lsn for n in made)
        for i in range(64):
            v, applied = deltas_applied_by_get(ps, rk(i), lsn)
            assert v == m.get(rk(i), lsn) and applied == 0


def test_an_explicit_threshold_is_the_count_rule_alone(store_dir: Path) -> None:
    m = Model()
    with PageStore.open(store_dir, append_redo, BYTES, background=False) as ps:
        lsn = _imaged_base(ps, m, keys=64, page=2000)
        for _ in range(4):
            lsn = _delta_layer(ps, m, lsn, range(0, 64, 8), 100)
        assert ps.create_image_layers() == []  # the policy: the bytes are not there
        assert ps.create_image_layers(threshold=3)  # strata compact --threshold 3


def test_ratio_zero_is_the_layer_count_rule(store_dir: Path) -> None:
    cfg = dataclasses.replace(BYTES, image_bytes_ratio=0.0)
    m = Model()
    with PageStore.open(store_dir, append_redo, cfg, background=False) as ps:
        lsn = _imaged_base(ps, m, keys=64, page=2000)
        for _ in range(3):
            lsn = _delta_layer(ps, m, lsn, range(0, 64, 8), 100)
        assert ps.create_image_layers() == []
        lsn = _delta_layer(ps, m, lsn, range(0, 64, 8), 100)
        assert ps.create_image_layers()


def test_block_bytes_sums_the_blocks_that_may_hold_the_range(tmp_path: Path) -> None:
    from strata.storage.layermap import Layer
    from strata.storage.manifest import LayerEntry

    entries = [Entry(rk(i).to_bytes(), 10 + i, WalRecord(os.urandom(300))) for i in range(40)]
    name = LayerName.delta(rk(0).to_bytes(), rk(40).to_bytes(), 10, 60)
    write_layer(tmp_path, name, entries, block_bytes=1000, zstd_level=1)
    f = LayerFile(tmp_path / name.filename())
    la = Layer(LayerEntry(name, Level.L0, f.size), f)
    try:
        assert len(f.blocks) > 5
        everything = sum(b.comp_len for b in f.blocks)
        assert images_mod.block_bytes(la, rk(0).to_bytes(), rk(40).to_bytes()) == everything
        assert images_mod.block_bytes(la, rk(40).to_bytes(), rk(50).to_bytes()) == 0
        for lo, hi in [(0, 1), (3, 17), (20, 40), (39, 40)]:
            a, z = rk(lo).to_bytes(), rk(hi).to_bytes()
            want = sum(b.comp_len for b in f.blocks if b.first_key < z and a <= b.last_key)
            assert images_mod.block_bytes(la, a, z) == want > 0, (lo, hi)
    finally:
        f.close()


# ---- rule 1 counted exactly once the header bound says "maybe" ----

def test_maxima_of_different_keys_do_not_add_up_to_an_image(store_dir: Path) -> None:
    """300 records on one key in one layer, 300 on another key in the next: the header
    bound says 600 (> 512), no key has more than 300, so no image."""
    m = Model()
    with PageStore.open(store_dir, append_redo, BIG, background=False) as ps:
        lsn = 0
        for k in (rk(1), rk(2)):
            for i in range(301):
                lsn += 8
                v: PageImage | WalRecord = PageImage(b"base") if i == 0 else WalRecord(b"+")
                ps.put(k, lsn, v)
                m.put(k, lsn, v)
            ps.advance(lsn)
            ps.flush()
        lm = ps.store.view().layer_map
        assert sum(d.file.max_key_entries() for d in lm.deltas) > 512
        assert images_mod.longest_chain(lm.deltas, b"", b"\xff" * 18, -1, lsn) == 300
        assert ps.create_image_layers() == []
        # one more layer with 300 records on key 2: its chain is 600 now
        for _ in range(300):
            lsn += 8
            ps.put(rk(2), lsn, WalRecord(b"+"))
            m.put(rk(2), lsn, WalRecord(b"+"))
        ps.advance(lsn)
        ps.flush()
        assert ps.create_image_layers()
        assert ps.get_page(rk(2), lsn) == m.get(rk(2), lsn)


def test_a_partition_away_from_the_hot_key_is_bounded_by_the_block_index(
        store_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The header's maximum is the hot key's 600 records, but the cold keys' blocks
    hold a few entries each: over a range of cold keys the index bounds every chain
    below the threshold, so that range is not due and no block is read to count it;
    over the hot key's range the exact count still runs and images it."""
    m = Model()
    cfg = dataclasses.replace(BIG, block_bytes=512)
    with PageStore.open(store_dir, append_redo, cfg, background=False) as ps:
        lsn = put_hot_and_cold(ps, m, 0, hot=600, cold=2, cold_keys=60)
        ps.flush()
        lm = ps.store.view().layer_map
        (d,) = lm.deltas
        assert d.file.max_key_entries() == 600
        cold = (rk(1).to_bytes(), rk(61).to_bytes())
        assert images_mod.chain_bound(lm.deltas, 512, *cold) < 64
        assert images_mod.chain_bound(lm.deltas, 512, HOT.to_bytes(), rk(1).to_bytes()) > 512
        rule = images_mod.ImageRule(layers=3, records=512, bytes_ratio=1.0, cap=12)

        def no_count(*args: object) -> int:
            raise AssertionError("counted exactly")

        with monkeypatch.context() as mp:
            mp.setattr(images_mod, "longest_chain", no_count)
            assert not images_mod.images_due(lm, *cold, -1, lsn, rule)
        assert images_mod.images_due(lm, HOT.to_bytes(), rk(1).to_bytes(), -1, lsn, rule)
        assert ps.create_image_layers()
        assert ps.get_page(HOT, lsn) == m.get(HOT, lsn)


def test_more_layers_than_the_cap_are_due_without_an_exact_count(
        store_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A backlog of layers above the floor, each with a hot key's 200 records (the
    bound says "maybe" to rule 1): rule 3 says "due" from the layers' number alone,
    so no layer is read to count chains, and the images it makes read the same."""
    m = Model()
    cfg = dataclasses.replace(BIG, image_layer_cap=4)
    with PageStore.open(store_dir, append_redo, cfg, background=False) as ps:
        lsn = hot_layers(ps, m, 5, hot=200, cold=1)
        lm = ps.store.view().layer_map
        assert len(lm.deltas) == 5
        whole = (b"", b"\xff" * 19)
        assert images_mod.chain_bound(lm.deltas, 512, *whole) > 512

        def no_count(*args: object) -> int:
            raise AssertionError("counted exactly")

        with monkeypatch.context() as mp:
            mp.setattr(images_mod, "longest_chain", no_count)
            assert ps.create_image_layers()
        for k in [HOT, rk(1), rk(8)]:
            assert ps.get_page(k, lsn) == m.get(k, lsn)


def test_a_chain_an_image_ends_in_a_newer_layer_does_not_count(store_dir: Path) -> None:
    m = Model()
    with PageStore.open(store_dir, append_redo, BIG, background=False) as ps:
        lsn = put_hot_and_cold(ps, m, 0, hot=400, cold=1)
        ps.flush()
        for v in [WalRecord(b"+")] * 300 + [PageImage(b"cut")] + [WalRecord(b"+")] * 10:
            lsn += 8
            ps.put(HOT, lsn, v)
            m.put(HOT, lsn, v)
        ps.advance(lsn)
        ps.flush()
        lm = ps.store.view().layer_map
        assert sum(d.file.max_key_entries() for d in lm.deltas) > 512  # 400 + 300
        assert images_mod.longest_chain(lm.deltas, b"", b"\xff" * 18, -1, lsn) == 10
        assert ps.create_image_layers() == []


@pytest.mark.parametrize("seed", range(12))
def test_longest_chain_equals_a_replay_count_per_key(tmp_path: Path, seed: int,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Random layers (kinds, keys, LSN windows); the count equals, per key, the
    entries in (floor, at] from its newest image/tombstone (excluded) or will_init
    record (included) on, maximised over keys. Layers are read in windows of a few
    blocks, so keys straddle windows."""
    import random

    from strata.storage.layermap import Layer
    from strata.storage.manifest import LayerEntry
    from strata.storage.values import TOMBSTONE

    rnd = random.Random(seed)
    monkeypatch.setattr(images_mod, "_TAIL_WINDOW_BYTES", rnd.choice([1, 60, 250, 4 << 20]))
    keys = [rk(i) for i in range(rnd.randint(1, 6))]
    per_layer = rnd.randint(1, 5)
    layers, every = [], []
    lsn = 0
    for _ in range(per_layer):
        entries = []
        lo = lsn + 1
        for _ in range(rnd.randint(1, 80)):
            lsn += 1
            k = rnd.choice(keys)
            v = rnd.choices([WalRecord(b"r"), WalRecord(b"i", True), PageImage(b"p"), TOMBSTONE],
                            weights=[20, 2, 2, 1])[0]
            entries.append(Entry(k.to_bytes(), lsn, v))
        entries.sort(key=lambda e: (e.key, e.lsn))
        name = LayerName.delta(rk(0).to_bytes(), rk(7).to_bytes(), lo, lsn + 1)
        write_layer(tmp_path, name, entries, block_bytes=rnd.choice([40, 200, 4096]),
                    zstd_level=1)
        f = LayerFile(tmp_path / name.filename())
        layers.append(Layer(LayerEntry(name, Level.L0, f.size), f))
        every += entries

    def replay_count(floor: int, at: int, lo: int = 0, hi: int = 7) -> int:
        want = 0
        for k in keys[lo:hi]:
            chain = 0
            for e in sorted((e for e in every if e.key == k.to_bytes() and floor < e.lsn <= at),
                            key=lambda e: e.lsn, reverse=True):
                if isinstance(e.value, PageImage) or e.value is TOMBSTONE:
                    break
                chain += 1
                if isinstance(e.value, WalRecord) and e.value.will_init:
                    break
            want = max(want, chain)
        return want

    try:
        rnd.shuffle(layers)
        # several counts over the same layers: later ones take the layers they hold
        # whole from the cache of earlier counts (`images._TAILS`), and still agree
        cached = len(images_mod._TAILS._held)
        for i in range(6):  # the first over every LSN: every layer is taken whole
            floor = -1 if i == 0 else rnd.randint(-1, lsn // 2)
            at = lsn if i == 0 else rnd.choice([lsn, rnd.randint(max(floor, 0), lsn)])
            got = images_mod.longest_chain(layers, rk(0).to_bytes(), rk(7).to_bytes(), floor, at)
            assert got == replay_count(floor, at)
            # a partition of the keys: the layers' tails held whole, sliced to it
            lo = rnd.randint(0, len(keys) - 1)
            hi = rnd.randint(lo + 1, len(keys))
            got = images_mod.longest_chain(layers, rk(lo).to_bytes(), rk(hi).to_bytes(), floor, at)
            assert got == replay_count(floor, at, lo, hi)
        assert len(images_mod._TAILS._held) > cached
    finally:
        for la in layers:
            la.file.close()


def test_image_partitions_are_disjoint_pieces_of_the_l1_ranges(tmp_path: Path) -> None:
    """Two compactions cut their L1s at different keys: the partitions are the pieces
    between every cut that some L1 covers, disjoint (a gap no L1 covers is none)."""
    from strata.storage.layermap import Layer, LayerMap
    from strata.storage.manifest import LayerEntry

    def l1(a: int, z: int, lo: int, hi: int) -> Layer:
        name = LayerName.delta(rk(a).to_bytes(), rk(z).to_bytes(), lo, hi)
        return Layer(LayerEntry(name, Level.L1, 0), None)  # type: ignore[arg-type]

    lm = LayerMap((l1(0, 10, 1, 100), l1(10, 30, 1, 100),  # first compaction
                   l1(0, 5, 100, 200), l1(5, 20, 100, 200),  # second
                   l1(40, 50, 200, 300)))
    got = images_mod.image_partitions(lm)
    assert got == [(rk(a).to_bytes(), rk(z).to_bytes())
                   for a, z in [(0, 5), (5, 10), (10, 20), (20, 30), (40, 50)]]


def test_neighbouring_due_partitions_make_one_image_layer_and_reads_stay_the_same(
        store_dir: Path) -> None:
    """Partitions that are due and touch are imaged into one layer (cut at the file
    target), not one file each; a partition apart from them gets its own, and one
    that is not due none."""
    m = Model()
    with PageStore.open(store_dir, append_redo, BYTES, background=False) as ps:
        lsn = _imaged_base(ps, m, keys=64, page=200)
        floor = images(ps)
        for _ in range(4):  # > 3 layers, far heavier than the images: every part is due
            lsn = _delta_layer(ps, m, lsn, range(0, 48), 1500)
        lsn = _delta_layer(ps, m, lsn, range(56, 64), 1500)
        parts = [(rk(a).to_bytes(), rk(z).to_bytes())
                 for a, z in [(0, 8), (8, 16), (16, 32), (32, 48), (48, 56), (56, 64)]]
        made = images_mod.create_image_layers(ps.store, threshold=3, ranges=parts)
        assert sorted((n.key_start, n.key_end) for n in made) == [
            (rk(0).to_bytes(), rk(48).to_bytes())]  # [48, 56) and [56, 64): 1 layer above
        assert all(n.image_lsn == lsn for n in made)
        for _ in range(4):  # now [0, 8) and [56, 64) are due, with nothing due between
            lsn = _delta_layer(ps, m, lsn, range(0, 8), 1500)
            lsn = _delta_layer(ps, m, lsn, range(56, 64), 1500)
        made = images_mod.create_image_layers(ps.store, threshold=3, ranges=parts)
        assert sorted((n.key_start, n.key_end) for n in made) == [
            (rk(0).to_bytes(), rk(8).to_bytes()), (rk(56).to_bytes(), rk(64).to_bytes())]
        assert len(images(ps)) == len(floor) + 3
        for at in (8, lsn - 8 * 24, lsn):
            for i in range(64):
                assert ps.get_page(rk(i), at) == m.get(rk(i), at), (i, at)


def _image_layer(ps: PageStore, m: Model, lsn: int, keys: range, page: int) -> int:
    """One flushed delta layer: an incompressible `page`-byte page image on each key
    (what a CREATE INDEX writes: every page of the new index as a full-page image)."""
    return _layer(ps, m, lsn, keys, lambda: PageImage(os.urandom(page)))


def test_layers_of_page_images_alone_make_no_image_until_a_record_comes(
        store_dir: Path) -> None:
    """A new index: five layers (> 3) of full-page images and no image layer below
    them (rule 2 would compare their bytes with 0). An image of them would repeat the
    same pages and save a read nothing, so none is made; the first record on one of
    the keys makes the range due; the layer cap (rule 3) still bounds the fan-in."""
    m = Model()
    with PageStore.open(store_dir, append_redo, BYTES, background=False) as ps:
        lsn = 0
        for _ in range(5):
            lsn = _image_layer(ps, m, lsn, range(64), 500)
        lm = ps.store.view().layer_map
        whole = (rk(0).to_bytes(), rk(64).to_bytes())
        rule = images_mod.ImageRule(layers=3, records=1024, bytes_ratio=1.0, cap=12)
        assert len(lm.deltas) == 5
        assert images_mod.replays_nothing(list(lm.deltas), *whole, -1, lsn)
        assert not images_mod.images_due(lm, *whole, -1, lsn, rule)
        assert ps.create_image_layers() == [] and images(ps) == []
        # the cap still holds: more than `cap` such layers are due
        assert images_mod.images_due(lm, *whole, -1, lsn, dataclasses.replace(rule, cap=4))
        lsn = _delta_layer(ps, m, lsn, range(7, 8), 50)  # one record, on key 7
        lm = ps.store.view().layer_map
        assert not images_mod.replays_nothing(list(lm.deltas), *whole, -1, lsn)
        made = ps.create_image_layers()
        assert made and all(n.image_lsn == lsn for n in made)
        for at in (8, 64 * 8 + 8, lsn - 8, lsn):
            for i in range(64):
                assert ps.get_page(rk(i), at) == m.get(rk(i), at), (i, at)


def test_layers_that_only_span_a_partition_are_not_its_bytes_but_count_for_the_cap(
        store_dir: Path) -> None:
    """An idle range (keys 100-109, a small image) between two busy ones: layers with
    keys on both sides span it by name, and one block of each does, but none holds
    its keys. With one small record on one of its keys, those blocks' bytes would
    outweigh its image (the old count imaged it by rule 2), but only the record's
    layer counts: it is not due. Past the cap it is (rule 3: a point read there
    probes each of those layers' block index); four layers with its keys are
    rule 2's count again."""
    m = Model()
    cfg = dataclasses.replace(BYTES, block_bytes=2048)
    with PageStore.open(store_dir, append_redo, cfg, background=False) as ps:
        lsn = _image_layer(ps, m, 0, range(100, 110), 40)
        assert ps.create_image_layers(threshold=0)
        floor = lsn
        for _ in range(10):
            lsn = _delta_layer(ps, m, lsn, [*range(0, 10), *range(300, 310)], 300)
        lm = ps.store.view().layer_map
        idle = (rk(100).to_bytes(), rk(110).to_bytes())
        spanning = [d for d in lm.deltas if d.name.key_start < idle[1]
                    and idle[0] < d.name.key_end and d.name.lsn_end - 1 > floor]
        assert len(spanning) == 10
        assert all(len(d.file.blocks_in(*idle)) == 1 for d in spanning)
        assert not any(images_mod.holds_keys(d, *idle) for d in spanning)
        img = sum(images_mod.block_bytes(la, *idle) for la in lm.images)
        assert sum(images_mod.block_bytes(d, *idle) for d in spanning) > 3 * img
        lsn = _delta_layer(ps, m, lsn, range(105, 106), 20)  # the 11th layer: a record
        lm = ps.store.view().layer_map
        rule = images_mod.ImageRule(layers=3, records=1024, bytes_ratio=1.0, cap=12)
        assert not images_mod.images_due(lm, *idle, floor, lsn, rule)
        assert images_mod.images_due(lm, *idle, floor, lsn, dataclasses.replace(rule, cap=10))
        for _ in range(3):  # four layers with records on one of its keys
            lsn = _delta_layer(ps, m, lsn, range(105, 106), 300)
        lm = ps.store.view().layer_map
        assert [images_mod.holds_keys(d, *idle) for d in lm.deltas
                if d.name.lsn_end - 1 > floor].count(True) == 4
        no_cap = dataclasses.replace(rule, cap=0)
        assert images_mod.images_due(lm, *idle, floor, lsn, no_cap)
        for i in (0, 105, 305):
            assert ps.get_page(rk(i), lsn) == m.get(rk(i), lsn)


def test_page_images_above_an_image_still_count_for_rule_2(store_dir: Path) -> None:
    """Waves of page images over an imaged table (hint bits after checkpoints write
    them with no record) still make it due by bytes: only a range no image covers
    yet (a new index) waits for a record."""
    m = Model()
    with PageStore.open(store_dir, append_redo, BYTES, background=False) as ps:
        lsn = _imaged_base(ps, m, keys=64, page=2000)
        floor = lsn
        for _ in range(4):  # four layers (> 3), each as many bytes as the image
            lsn = _image_layer(ps, m, lsn, range(64), 2000)
        lm = ps.store.view().layer_map
        whole = (rk(0).to_bytes(), rk(64).to_bytes())
        above = [d for d in lm.deltas if d.name.lsn_end - 1 > floor]
        assert len(above) == 4
        assert images_mod.replays_nothing(above, *whole, floor, lsn)
        rule = images_mod.ImageRule(layers=3, records=1024, bytes_ratio=1.0, cap=12)
        assert images_mod.images_due(lm, *whole, floor, lsn, rule)
        made = ps.create_image_layers()
        assert made and all(n.image_lsn == lsn for n in made)
        for at in (floor, lsn - 8, lsn):
            for i in range(64):
                assert ps.get_page(rk(i), at) == m.get(rk(i), at), (i, at)
