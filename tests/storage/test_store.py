"""The whole store: watermarks, recovery, compaction, image layers, gc, tombstones,
cache and metrics, corruption at startup."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest

from strata.errors import CorruptionError, LsnOutOfRangeError, StrataError
from strata.key import KeyRange
from strata.pagestore import PageStore
from strata.storage.config import StorageConfig
from strata.storage.layermap import LayerMap
from strata.storage.manifest import Level, load_manifest
from strata.storage.naming import LayerName
from strata.storage.tools import verify_store
from strata.storage.values import TOMBSTONE, PageImage, WalRecord

from .conftest import TINY, Model, append_redo, rk


def fill(ps: PageStore, model: Model, start: int, n: int, keys: int = 10) -> int:
    lsn = start
    for i in range(n):
        lsn += 8
        k = rk(i % keys)
        v = PageImage(b"I%d" % lsn) if i % 9 == 0 else WalRecord(b"+%d" % lsn)
        ps.put(k, lsn, v)
        model.put(k, lsn, v)
        ps.advance(lsn)
    return lsn


def assert_matches(ps: PageStore, model: Model, lsns: list[int], keys: int = 10) -> None:
    for lsn in lsns:
        for k in range(keys):
            assert ps.get_page(rk(k), lsn) == model.get(rk(k), lsn), (k, lsn)
        assert list(ps.scan(KeyRange.everything(), lsn)) == model.scan(lsn)


def test_flush_makes_ingested_durable_and_survives_reopen(store_dir: Path) -> None:
    m = Model()
    ps = PageStore.open(store_dir, append_redo, TINY, background=False)
    last = fill(ps, m, 0, 50)
    assert ps.durable_lsn < last
    assert ps.flush() == last
    ps.close()
    ps = PageStore.open(store_dir, append_redo, TINY, background=False)
    try:
        assert ps.durable_lsn == last and ps.ingested_lsn == last
        assert_matches(ps, m, [8, 80, 200, last])
        assert verify_store(store_dir).ok
    finally:
        ps.close()


@pytest.mark.parametrize("background", [False, True])
def test_flush_soon_makes_everything_ingested_durable_without_waiting_for_it(
        store_dir: Path, background: bool) -> None:
    m = Model()
    ps = PageStore.open(store_dir, append_redo, TINY, background=background)
    try:
        last = fill(ps, m, 0, 20)
        assert ps.durable_lsn < last
        ps.flush_soon()  # the ingest pipeline's idle / periodic flush
        assert ps.wait_durable(last, timeout=10)
        flushes = ps.metrics().flushes
        ps.flush_soon()  # nothing left to flush: no new layer
        assert ps.durable_lsn == last and ps.metrics().flushes == flushes
        assert_matches(ps, m, [8, 80, last])
    finally:
        ps.close()


def test_unflushed_puts_are_gone_after_reopen_and_ingest_restarts_from_durable(store_dir: Path) -> None:
    cfg = StorageConfig(memtable_bytes=1 << 20, background_maintenance=False)
    ps = PageStore.open(store_dir, append_redo, cfg, background=False)
    ps.put(rk(1), 10, PageImage(b"a"))
    ps.advance(10)
    ps.flush()
    ps.put(rk(1), 20, PageImage(b"b"))
    ps.advance(20)
    ps.close()
    ps = PageStore.open(store_dir, append_redo, cfg, background=False)
    try:
        assert ps.durable_lsn == 10
        assert ps.get_page(rk(1), 30) == b"a"
        with pytest.raises(ValueError):
            ps.put(rk(1), 10, PageImage(b"again"))
        ps.put(rk(1), 20, PageImage(b"b"))  # re-ingested from the slot
        ps.advance(20)
        assert ps.get_page(rk(1), 20) == b"b"
    finally:
        ps.close()


def test_put_at_or_below_ingested_lsn_is_refused(open_store: PageStore) -> None:
    open_store.put(rk(1), 100, PageImage(b"x"))
    open_store.advance(100)
    with pytest.raises(ValueError, match="ingested_lsn"):
        open_store.put(rk(2), 100, PageImage(b"y"))
    with pytest.raises(ValueError):
        open_store.advance(50)


def test_recovery_deletes_tmp_and_unreferenced_layers_only(store_dir: Path) -> None:
    m = Model()
    ps = PageStore.open(store_dir, append_redo, TINY, background=False)
    fill(ps, m, 0, 30)
    ps.flush()
    ps.close()
    orphan = LayerName.delta(rk(0).to_bytes(), rk(5).to_bytes(), 1, 2).filename()
    (store_dir / orphan).write_bytes(b"half written")
    (store_dir / "layer-1-2-3.tmp").write_bytes(b"x")
    (store_dir / "MANIFEST.tmp").write_bytes(b"y")
    (store_dir / "notes.txt").write_text("user file")
    ps = PageStore.open(store_dir, append_redo, TINY, background=False)
    ps.close()
    names = set(os.listdir(store_dir))
    assert orphan not in names and "layer-1-2-3.tmp" not in names and "MANIFEST.tmp" not in names
    assert "notes.txt" in names


def test_second_writer_is_refused_while_store_is_open(open_store: PageStore, store_dir: Path) -> None:
    with pytest.raises(StrataError, match="open in another process"):
        PageStore.open(store_dir, append_redo, TINY, background=False)


def test_corrupt_layer_refuses_startup_naming_file_and_offset_with_advice(store_dir: Path) -> None:
    ps = PageStore.open(store_dir, append_redo, TINY, background=False)
    fill(ps, Model(), 0, 30)
    ps.flush()
    ps.close()
    victim = sorted(store_dir.glob("*.delta"))[0]
    data = bytearray(victim.read_bytes())
    data[-3] ^= 0xFF  # footer magic
    victim.write_bytes(bytes(data))
    with pytest.raises(CorruptionError) as ei:
        PageStore.open(store_dir, append_redo, TINY, background=False)
    msg = str(ei.value)
    assert victim.name in msg and "offset" in msg and "strata verify" in msg
    assert victim.exists(), "a damaged live layer must never be deleted"
    rep = verify_store(store_dir)
    assert not rep.ok and victim.name in rep.errors[0]


def test_missing_layer_refuses_startup(store_dir: Path) -> None:
    ps = PageStore.open(store_dir, append_redo, TINY, background=False)
    fill(ps, Model(), 0, 30)
    ps.flush()
    ps.close()
    sorted(store_dir.glob("*.delta"))[0].unlink()
    with pytest.raises(CorruptionError, match="missing"):
        PageStore.open(store_dir, append_redo, TINY, background=False)


def test_compaction_cuts_l1_by_key_and_never_changes_reads(open_store: PageStore) -> None:
    m = Model()
    last = fill(open_store, m, 0, 200)
    open_store.flush()
    lm: LayerMap = open_store.store.view().layer_map
    assert len(lm.l0()) >= 3
    probe = [8, 100, 400, 800, 1200, last]
    before = {(k, lsn): open_store.get_page(rk(k), lsn) for k in range(10) for lsn in probe}
    made = open_store.compact()
    assert len(made) >= 2
    lm = open_store.store.view().layer_map
    assert lm.l0() == []
    l1 = [la for la in lm.deltas if la.entry.level == Level.L1]
    assert len(l1) == len(made)
    # narrow, disjoint, contiguous key ranges, all covering the full LSN span
    ranges = sorted((la.name.key_start, la.name.key_end) for la in l1)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
    assert len({(la.name.lsn_start, la.name.lsn_end) for la in l1}) == 1
    open_store.store.cache.clear()
    assert {(k, lsn): open_store.get_page(rk(k), lsn) for k in range(10) for lsn in probe} == before
    assert_matches(open_store, m, probe)


def test_image_layers_bound_the_chain_and_keep_reads(open_store: PageStore) -> None:
    m = Model()
    last = fill(open_store, m, 0, 120)
    open_store.flush()
    open_store.store.cache.clear()
    before = open_store.metrics()
    open_store.get_page(rk(3), last)
    visited_before = open_store.metrics().layers_visited - before.layers_visited
    made = open_store.create_image_layers()
    assert made and all(n.is_image and n.image_lsn == last for n in made)
    open_store.store.cache.clear()
    before = open_store.metrics()
    open_store.get_page(rk(3), last)
    after = open_store.metrics()
    assert after.layers_visited - before.layers_visited == 1 < visited_before
    assert after.deltas_applied == before.deltas_applied
    assert_matches(open_store, m, [8, 300, last])
    assert open_store.create_image_layers() == []  # nothing above the images now


def test_gc_removes_history_below_horizon_and_reads_there_raise(open_store: PageStore) -> None:
    m = Model()
    compacted_to = fill(open_store, m, 0, 150)
    open_store.flush()
    open_store.compact()
    last = fill(open_store, m, int(open_store.ingested_lsn), 40)
    open_store.flush()
    # L1 layers span the whole compacted LSN range: only a horizon above it frees them
    horizon = compacted_to + 48
    files_before = len(open_store.store.view().layer_map.layers)
    removed = open_store.set_retention_lsn(horizon)
    assert removed
    assert open_store.retention_lsn == horizon
    lm = open_store.store.view().layer_map
    assert len(lm.layers) < files_before + 10
    assert all(not (la.name.lsn_end - 1 < horizon and not la.name.is_image) for la in lm.deltas)
    with pytest.raises(LsnOutOfRangeError, match="oldest readable LSN is 0/4E0") as ei:
        open_store.get_page(rk(1), horizon - 1)
    assert ei.value.nearest == horizon
    with pytest.raises(LsnOutOfRangeError):
        list(open_store.scan(KeyRange.everything(), 10))
    assert_matches(open_store, m, [horizon, horizon + 8, last])
    assert verify_store(open_store.store.directory).ok
    m2 = load_manifest(open_store.store.directory)
    assert m2 is not None and m2.retention_lsn == horizon


def test_tombstone_hides_dropped_relation_from_later_scans(open_store: PageStore) -> None:
    for blk in range(5):
        open_store.put(rk(blk, rel=700), 10, PageImage(b"p%d" % blk))
    open_store.put(rk(0, rel=701), 10, PageImage(b"other"))
    open_store.advance(10)
    open_store.flush()
    assert open_store.delete_range(KeyRange.relation(1663, 5, 700, 0), 20) == 5
    open_store.advance(20)
    rel = KeyRange.relation(1663, 5, 700, 0)
    assert [k.blk for k, _ in open_store.scan(rel, 19)] == [0, 1, 2, 3, 4]
    assert list(open_store.scan(rel, 20)) == []
    assert open_store.get_page(rk(2, rel=700), 25) is None
    assert open_store.get_page(rk(2, rel=700), 15) == b"p2"
    assert [k.rel for k, _ in open_store.scan(KeyRange.everything(), 30)] == [701]
    open_store.flush()
    open_store.compact()
    open_store.create_image_layers(threshold=0)
    assert list(open_store.scan(rel, 20)) == []
    assert [k.blk for k, _ in open_store.scan(rel, 10)] == [0, 1, 2, 3, 4]


def test_page_cache_hits_only_at_stable_lsns(open_store: PageStore) -> None:
    open_store.put(rk(1), 10, PageImage(b"a"))
    open_store.put(rk(1), 20, WalRecord(b"b"))
    open_store.advance(20)
    assert open_store.get_page(rk(1), 20) == b"ab"
    assert open_store.get_page(rk(1), 20) == b"ab"
    mt = open_store.metrics()
    assert mt.cache_hits == 1 and mt.deltas_applied == 1 and mt.redo_calls == 1
    open_store.get_page(rk(1), 30)  # above ingested_lsn: may still change, not cached
    open_store.put(rk(1), 30, WalRecord(b"c"))
    open_store.advance(30)
    assert open_store.get_page(rk(1), 30) == b"abc"


def test_background_worker_flushes_and_compacts_without_blocking_ingest(store_dir: Path) -> None:
    cfg = StorageConfig(memtable_bytes=2000, block_bytes=500, target_file_bytes=4000,
                        l0_compaction_trigger=3, image_delta_threshold=3, cache_pages=0)
    m = Model()
    ps = PageStore.open(store_dir, append_redo, cfg)
    try:
        last = fill(ps, m, 0, 600, keys=40)
        ps.flush()
        assert ps.durable_lsn == last
        assert ps.wait_durable(last, timeout=5)
        mt = ps.metrics()
        assert mt.flushes > 5
        assert_matches(ps, m, [8, 2000, last], keys=40)
    finally:
        ps.close()
    ps = PageStore.open(store_dir, append_redo, cfg)
    try:
        assert ps.metrics().compactions == 0  # fresh counters
        assert verify_store(store_dir).ok
        assert_matches(ps, m, [last], keys=40)
    finally:
        ps.close()


def test_delta_at_the_image_lsn_is_not_applied_twice(open_store: PageStore) -> None:
    for lsn, v in ((10, PageImage(b"I")), (20, WalRecord(b"+")), (30, WalRecord(b"-"))):
        open_store.put(rk(1), lsn, v)
        open_store.advance(lsn)
        open_store.flush()
    open_store.compact()  # one L1 over [1, 31): it straddles the image made next
    made = open_store.create_image_layers(lsn=20, threshold=0)  # already holds "+"
    assert [n.image_lsn for n in made] == [20]
    open_store.store.cache.clear()
    assert open_store.get_page(rk(1), 20) == b"I+"
    assert open_store.get_page(rk(1), 30) == b"I+-"
    assert list(open_store.scan(KeyRange.everything(), 20)) == [(rk(1), b"I+")]
    assert list(open_store.scan(KeyRange.everything(), 30)) == [(rk(1), b"I+-")]


def test_verify_flags_delta_layers_overlapping_in_key_and_lsn(store_dir: Path) -> None:
    from strata.storage.manifest import LayerEntry, commit_manifest

    ps = PageStore.open(store_dir, append_redo, TINY, background=False)
    fill(ps, Model(), 0, 30)
    ps.flush()
    ps.close()
    m = load_manifest(store_dir)
    assert m is not None and verify_store(store_dir).ok
    a = m.layers[0].name
    bogus = LayerName.delta(a.key_start, a.key_end, a.lsn_start, a.lsn_end + 1)
    commit_manifest(store_dir, m.edit(add=(LayerEntry(bogus, Level.L1, 1),)))
    rep = verify_store(store_dir)
    assert any("overlap in both key and LSN range" in e for e in rep.errors)


def test_worker_failure_stops_writes_loudly(store_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from strata.storage import flush
    from strata.storage.store import LayerStore

    def broken(store: LayerStore) -> bool:
        raise OSError(28, "No space left on device")

    cfg = StorageConfig(memtable_bytes=100, background_maintenance=False)
    ps = PageStore.open(store_dir, append_redo, cfg)
    try:
        monkeypatch.setattr(flush, "flush_one", broken)
        ps.put(rk(1), 10, PageImage(b"x" * 200))
        ps.advance(10)  # freezes; the worker's flush fails
        with pytest.raises(StrataError, match="No space left on device"):
            ps.wait_durable(10, timeout=5)
        with pytest.raises(StrataError, match="storage worker failed"):
            ps.put(rk(2), 20, PageImage(b"y"))
    finally:
        monkeypatch.undo()
        ps.close()


def test_reserved_key_kind_is_refused(open_store: PageStore) -> None:
    from strata.key import MAX_KEY

    with pytest.raises(ValueError, match="reserved"):
        open_store.put(MAX_KEY, 10, PageImage(b"x"))


def test_range_scan_streams_each_layer_once_not_one_lookup_per_key(open_store: PageStore) -> None:
    m = Model()
    last = fill(open_store, m, 0, 400, keys=100)
    open_store.flush()
    layers = len(open_store.store.view().layer_map.layers)
    assert layers >= 3
    before = open_store.metrics()
    got = list(open_store.scan(KeyRange.everything(), last))
    after = open_store.metrics()
    assert len(got) == 100 and got == m.scan(last)
    assert after.layers_visited - before.layers_visited <= layers
    assert after.gets == before.gets  # no per-key GetPage behind the scan


def test_flipped_block_byte_fails_reads_and_paranoid_open(store_dir: Path) -> None:
    ps = PageStore.open(store_dir, append_redo, TINY, background=False)
    m = Model()
    last = fill(ps, m, 0, 40)
    ps.flush()
    ps.close()
    victim = sorted(store_dir.glob("*.delta"))[0]
    data = bytearray(victim.read_bytes())
    data[80] ^= 0x01  # inside block 0
    victim.write_bytes(bytes(data))
    paranoid = StorageConfig(verify_on_open=True, background_maintenance=False)
    with pytest.raises(CorruptionError, match=f"{victim.name}: block 0 checksum mismatch at offset 72"):
        PageStore.open(store_dir, append_redo, paranoid, background=False)
    ps = PageStore.open(store_dir, append_redo, TINY, background=False)  # lazy checks
    try:
        with pytest.raises(CorruptionError, match="offset 72"):
            list(ps.scan(KeyRange.everything(), last))
    finally:
        ps.close()


def test_image_layers_leave_out_keys_whose_redo_fails(store_dir: Path) -> None:
    """A key redo cannot rebuild (an index AM with no redo yet) is left out of
    image layers: the others are imaged, the worker keeps going, and that key's
    reads still go through its own deltas (and still raise) instead of being lost."""
    from strata.errors import UnsupportedRecordError
    from strata.key import Key

    bad = rk(4)

    def redo(key: Key, base: bytes | None, records: list[WalRecord]) -> bytes:
        if key == bad and records:
            raise UnsupportedRecordError("Gin", "INSERT")
        return append_redo(key, base, records)

    ps = PageStore.open(store_dir, redo, TINY, background=False)
    try:
        m = Model()
        last = fill(ps, m, 0, 120)
        ps.flush()
        made = ps.create_image_layers()
        assert made
        layers = load_manifest(store_dir)
        assert layers is not None
        images = [e.name for e in layers.layers if e.level == Level.IMAGE]
        kb = bad.to_bytes()
        assert not any(n.key_start <= kb < n.key_end for n in images)
        assert any(n.key_start <= rk(3).to_bytes() < n.key_end for n in images)
        ps.store.cache.clear()
        for k in (0, 3, 5, 9):
            assert ps.get_page(rk(k), last) == m.get(rk(k), last)
        with pytest.raises(UnsupportedRecordError):
            ps.get_page(bad, last)
    finally:
        ps.close()


def test_a_bounded_stop_flush_wakes_the_worker_instead_of_waiting_for_its_poll(
        store_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`IngestPipeline.finish(flush_seconds)` (the 1 s stop of the ingest service) seals
    the memtable and must wake the flush worker: a worker left to notice the work on
    its own poll made a stop give up before its flush (CI, 2026-12-03). With the poll
    an hour long, only the wake-up can make the flush happen within the budget."""
    from types import SimpleNamespace

    from strata.ingest.pipeline import IngestPipeline
    from strata.lsn import Lsn

    class Idle:  # a stream that never connected: the save writes nothing
        system_id = None
        finished = True

    monkeypatch.setattr(PageStore, "WORKER_POLL", 3600.0)
    ps = PageStore.open(store_dir, append_redo, TINY, background=True)
    try:
        m, lsn = Model(), 0
        for _ in range(3):
            lsn = fill(ps, m, lsn, 12)
            p = IngestPipeline(Idle(), SimpleNamespace(store=ps, advance=ps.advance),  # type: ignore[arg-type]
                               start=Lsn(lsn), segment_size=1 << 24, slot="s",
                               receiver_file=tmp_path / "receiver.json")
            assert p.finish(flush_seconds=30)
            assert ps.durable_lsn == lsn
        assert_matches(ps, m, [8, lsn])
    finally:
        ps.close()


def test_a_scan_above_an_image_floor_skips_delta_blocks_wholly_below_it(
        store_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keys 0..19 change only before the image LSN, keys 20..39 only after; compaction
    puts both into L1s that straddle the image. A scan above it reads none of the L1
    blocks of keys 0..19 (their max LSN is at or below the floor), and answers as the
    model does."""
    from strata.storage.layerfile import LayerFile

    cfg = StorageConfig(memtable_bytes=1 << 20, block_bytes=150, target_file_bytes=1 << 20,
                        l0_compaction_trigger=1, image_delta_threshold=0, cache_pages=0,
                        background_maintenance=False)
    ps = PageStore.open(store_dir, append_redo, cfg, background=False)
    m = Model()
    try:
        def put(k: int, lsn: int, v: PageImage | WalRecord) -> None:
            ps.put(rk(k), lsn, v)
            m.put(rk(k), lsn, v)
            ps.advance(lsn)

        for k in range(40):
            put(k, 1 + k, PageImage(b"i" * 40))
        ps.flush()
        for k in range(20):
            put(k, 100 + k, WalRecord(b"a" * 40))
        floor = ps.flush()
        assert ps.create_image_layers(threshold=0)
        for k in range(20, 40):
            put(k, 200 + k, WalRecord(b"b" * 40))
        last = ps.flush()
        ps.compact()
        view = ps.store.view()
        l1 = [la for la in view.layer_map.layers if la.entry.level == Level.L1]
        assert l1 and all(la.name.lsn_start < floor < la.name.lsn_end for la in l1)
        read: list[tuple[str, int]] = []
        block_frames = LayerFile._block_frames
        monkeypatch.setattr(LayerFile, "_block_frames", lambda self, i, b=None: (
            read.append((self.name.filename(), i)) or block_frames(self, i, b)))
        for lsn in (floor, 230, last):
            read.clear()
            assert list(ps.scan(KeyRange.everything(), lsn)) == m.scan(lsn)
            for la in l1:
                low = {i for i, b in enumerate(la.file.blocks)
                       if b.last_key < rk(20).to_bytes()}
                assert low and not low & {i for f, i in read if f == la.name.filename()}
    finally:
        ps.close()


def _fixed_redo(key: object, base: bytes | None, records: list[WalRecord]) -> bytes:
    """A redo whose values are always 16 bytes: each record shifts its bytes in."""
    page = base if base is not None else bytes(16)
    for r in records:
        page = (page + r.data)[-16:]
    return page


def test_scan_pages_lays_out_what_scan_returns_by_block(store_dir: Path) -> None:
    """`scan_pages` (the lazy file system's reads): for every block range and LSN, the
    values `scan` gives, 16 bytes apart by block number, zeros for blocks without
    one (never written, or deleted); chains that are one image and chains with
    records, from memtables, L0s, L1s and image layers; ranges of up to
    `POINT_READS_MAX` blocks (read one key at a time) and longer ones."""
    import random

    rnd = random.Random(5)
    ps = PageStore.open(store_dir, _fixed_redo, TINY, background=False)
    try:
        lsn, marks = 0, []
        for step in range(400):
            lsn += 8
            blk = rnd.randrange(0, 30)
            r = rnd.random()
            v = (PageImage(rnd.randbytes(16)) if r < 0.3 else TOMBSTONE if r < 0.35
                 else WalRecord(rnd.randbytes(4), r < 0.45))
            ps.put(rk(blk), lsn, v)
            ps.advance(lsn)
            if step % 50 == 49:
                ps.flush()
                marks.append(lsn)
                if step % 100 == 99:
                    ps.compact()
                    ps.create_image_layers(threshold=0)
        marks.append(lsn)  # the last writes are still in the memtable
        for at in marks + [rnd.randrange(8, lsn) for _ in range(10)]:
            for a, n in ((0, 30), (0, 40), (5, 1), (7, 13), (29, 4), (31, 2), (3, 2),
                         (12, 3), (28, 3), (29, 1)):
                got = ps.scan_pages(rk(a), n, at, 16)
                want = bytearray(16 * n)
                for key, v in ps.scan(KeyRange(rk(a), rk(a + n)), at):
                    want[16 * (key.blk - a):16 * (key.blk - a + 1)] = v
                assert got == want, (a, n, at)
                # into a caller's buffer holding stale bytes: every byte overwritten
                into = bytearray(b"\xaa" * (16 * n + 32))
                view = memoryview(into)[16:16 + 16 * n]
                assert ps.scan_pages(rk(a), n, at, 16, view) is view
                assert into[16:16 + 16 * n] == want, (a, n, at)
                assert into[:16] == into[-16:] == b"\xaa" * 16
        with pytest.raises(ValueError, match="where 8 are laid out"):
            ps.scan_pages(rk(0), 30, lsn, 8)
        held = next(k.blk for k, _ in ps.scan(KeyRange(rk(0), rk(30)), lsn))
        with pytest.raises(ValueError, match="where 8 are laid out"):
            ps.scan_pages(rk(held), 1, lsn, 8)  # a point read checks it too
        with pytest.raises(ValueError, match="480 bytes given for 31 values"):
            ps.scan_pages(rk(0), 31, lsn, 16, bytearray(480))
    finally:
        ps.close()


def test_a_memtable_advance_seals_full_is_not_awaited_one_sealed_on_demand_is(
        store_dir: Path) -> None:
    """FrozenMemtable.awaited: only a flush someone waits for may take a second core
    (flush.cut_in_parts); one that filled up while ingest goes on may not."""
    ps = PageStore.open(store_dir, append_redo, TINY, background=False)
    try:
        store, lsn, full = ps.store, 0, None
        while full is None:
            lsn += 8
            store.put(rk(lsn % 5).to_bytes(), lsn, WalRecord(b"+%d" % lsn))
            full = store.advance(lsn)
        assert not full.awaited
        lsn += 8
        store.put(rk(1).to_bytes(), lsn, WalRecord(b"+"))
        store.advance(lsn)
        asked = store.freeze()
        assert asked is not None and asked.awaited
        assert [fm.awaited for fm in store.view().frozen] == [False, True]
    finally:
        ps.close()
