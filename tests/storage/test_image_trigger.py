"""The per-key delta count trigger of image creation (`image_record_threshold`).

A hot key can pile up thousands of deltas inside one or a few delta layers; the
layer-count trigger (`image_delta_threshold`) never fires then, and every cold read
of that key replays its whole chain. These tests check that the record trigger makes
an image over such a key, that reads are unchanged and stop replaying, that the
bound sums over layers (never under-counts), that short chains make no images, and
that the writer records the per-key maximum in the layer header (format v2).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from strata.errors import CorruptionError
from strata.key import Key, KeyRange
from strata.pagestore import PageStore
from strata.storage.config import StorageConfig
from strata.storage.layerfile import FORMAT_VERSION, HEADER, LayerFile, crc32c, write_layer
from strata.storage.manifest import Level, load_manifest
from strata.storage.naming import LayerName
from strata.storage.values import Entry, PageImage, WalRecord

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
        lsn = 0
        for _ in range(3):
            lsn = put_hot_and_cold(ps, m, lsn, hot=200, cold=2)
            ps.flush()
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
