"""The key space: every codec round-trips, and the invariants of keyspace/FORMAT.md
hold when real WAL records (tests/data/wal, written by PostgreSQL 18.6) go
through ingest into a real store."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from strata.errors import RedoError, WalDecodeError
from strata.ingest.transam import TransamIngest
from strata.ingest.walingest import WalIngest
from strata.key import Key, KeyKind, KeyRange
from strata.keyspace.cluster import ClusterState, control_template_key
from strata.keyspace.relation import (
    STORED_FORKS,
    decode_delta,
    decode_image_delta,
    decode_rel_size,
    encode_delta,
    encode_image_delta,
    encode_record_delta,
    encode_rel_size,
    is_image_delta,
)
from strata.keyspace.slru import (
    TAG_DELTA,
    TRUNCATED_VALUE,
    delta_value,
    image_value,
    iter_ops,
    patch_op,
    slru_store_value,
    xid_status_op,
)
from strata.lsn import Lsn
from strata.pagestore import PageStore
from strata.pg.constants import BLCKSZ, ForkNumber
from strata.reconstruct.reconstruct import reconstruct_value
from strata.reconstruct.redo import redo_block
from strata.reconstruct.redo.page_ops import page_get_lsn, page_is_new
from strata.storage.values import TOMBSTONE, PageImage, Value, WalRecord
from strata.timemap.timemap import TimeMap
from strata.wal.decoder import decode_record
from strata.wal.record import DecodedRecord

WAL = Path(__file__).resolve().parents[1] / "data" / "wal"
TRANSAM = Path(__file__).resolve().parents[1] / "data" / "transam"


def sample_records() -> list[DecodedRecord]:
    """The sample records (one cluster's WAL, in LSN order, with gaps), but for
    CREATE DATABASE, which copies pages the gaps left out."""
    meta = json.loads((WAL / "records.json").read_text())
    recs = [decode_record((WAL / f"{name}.bin").read_bytes(), Lsn.parse(m["lsn"]),
                          Lsn.parse(m["end_lsn"])) for name, m in meta.items()
            if not name.startswith("database_")]
    return sorted(recs, key=lambda r: r.lsn)


class RecordingStore(PageStore):
    """A real store that also remembers every put, in order (single or batched)."""

    puts: list[tuple[Key, int, Value]]

    def put(self, key: Key, lsn: int, value: Value) -> None:
        self.puts.append((key, lsn, value))
        super().put(key, lsn, value)

    def put_batch(self, batch: Any) -> None:
        if hasattr(batch, "entries"):  # the store's columnar EntryBatch
            self.puts += [(Key.from_bytes(e.key), e.lsn, e.value) for e in batch.entries()]
            super().put_batch(batch)
        else:
            for key, lsn, value in batch:
                self.put(key, lsn, value)


@pytest.fixture
def ingest(tmp_path: Path) -> Iterator[WalIngest]:
    store = RecordingStore.open(tmp_path / "layers", reconstruct_value, background=False)
    store.puts = []
    timemap = TimeMap.open(tmp_path / "timemap")
    state = ClusterState.from_bytes((TRANSAM / "cluster_state_v1.bin").read_bytes())
    try:
        yield WalIngest(store, timemap, TransamIngest(state), start_lsn=Lsn(0))
    finally:
        store.close()
        timemap.close()


def test_codecs_round_trip() -> None:
    raw = bytes(range(200))
    value = encode_delta(0x1000028, 0x10000A0, raw)
    # version 5: start_lsn and end_lsn 0 (the entry's LSN is the end), end - start in
    # xl_prev's place, padding and xl_crc 0
    assert len(value) == 16 + len(raw) and value[:16] == bytes(16)
    assert value[24:32] == (0x10000A0 - 0x1000028).to_bytes(8, "little")
    assert value[34:40] == bytes(6) and value[40:] == raw[24:]
    kept = raw[:8] + bytes(8) + raw[16:18] + bytes(6) + raw[24:]
    assert decode_delta(value, 0x10000A0) == (Lsn(0x1000028), Lsn(0x10000A0), kept)
    with pytest.raises(WalDecodeError, match="ending at 0/10000A0: 30 bytes"):
        decode_delta(value[:30], 0x10000A0)  # a truncated delta names its record
    with pytest.raises(WalDecodeError, match="without its entry's LSN"):
        decode_delta(value, 0)  # a version 5 delta needs the LSN it is stored at
    # version 4 kept the end LSN in the value: the entry's LSN is not needed
    v4 = value[:8] + (0x10000A0).to_bytes(8, "little") + value[16:]
    assert decode_delta(v4, 0) == (Lsn(0x1000028), Lsn(0x10000A0), kept)
    for n in (0, 1, 131071, 0xFFFFFFFF):
        assert decode_rel_size(encode_rel_size(n)) == n
    state = ClusterState.from_bytes((TRANSAM / "cluster_state_v1.bin").read_bytes())
    assert ClusterState.from_bytes(state.to_bytes()) == state
    page = bytes([7]) * BLCKSZ
    assert slru_store_value(image_value(page)) == PageImage(page)
    assert slru_store_value(TRUNCATED_VALUE) is TOMBSTONE
    delta = delta_value([xid_status_op(1, [3, 4]), patch_op(100, b"ab")])
    assert delta[0] == TAG_DELTA and slru_store_value(delta) == WalRecord(delta)
    assert list(iter_ops(delta)) == [(1, 1, (3, 4)), (2, 100, b"ab")]
    assert control_template_key().kind == KeyKind.AUX


def test_ingest_puts_each_key_in_increasing_lsn_order(ingest: WalIngest) -> None:
    for rec in sample_records():
        ingest.ingest(rec)
    ingest.advance()
    puts = ingest.store.puts  # type: ignore[attr-defined]
    assert len(puts) > 50
    last: dict[Key, int] = {}
    for key, lsn, _ in puts:
        assert lsn > last.get(key, -1), f"{key} put at {Lsn(lsn)} after {Lsn(last[key])}"
        last[key] = lsn


def test_records_at_or_below_the_start_lsn_are_not_stored_again(ingest: WalIngest) -> None:
    recs = sample_records()
    half = len(recs) // 2
    for rec in recs[:half]:
        ingest.ingest(rec)
    ingest.advance()
    before = len(ingest.store.puts)  # type: ignore[attr-defined]
    # a restart re-reads WAL from where the store is (here: ingested up to the half)
    again = WalIngest(ingest.store, ingest.timemap, ingest.transam,
                      start_lsn=recs[half - 1].end_lsn)
    for rec in recs:
        again.ingest(rec)
    again.advance()
    new = ingest.store.puts[before:]  # type: ignore[attr-defined]
    assert new and min(lsn for _, lsn, _ in new) > recs[half - 1].end_lsn
    assert again.stats.records == len(recs) - half


def test_fsm_block_references_are_not_stored_and_vm_ones_are(ingest: WalIngest) -> None:
    recs = sample_records()
    other = [(r, b) for r in recs for b in r.blocks if b.fork not in STORED_FORKS]
    assert {b.fork for _, b in other} == {ForkNumber.FSM}
    vm = [(r, b) for r in recs for b in r.blocks if b.fork == ForkNumber.VM]
    assert vm  # the samples have both
    for rec in recs:
        ingest.ingest(rec)
    ingest.advance()
    stored = {k.fork for k, _, _ in ingest.store.puts  # type: ignore[attr-defined]
              if k.kind in (KeyKind.REL_BLOCK, KeyKind.REL_SIZE)}
    assert ForkNumber.FSM not in stored and ForkNumber.VM in stored
    for rec, b in other:
        loc = b.rlocator
        key = Key.rel_block(loc.spc, loc.db, loc.rel, b.fork, b.blkno)
        assert ingest.store.get_page(key, rec.end_lsn) is None
    for rec, b in vm:
        loc = b.rlocator
        key = Key.rel_block(loc.spc, loc.db, loc.rel, b.fork, b.blkno)
        assert ingest.store.get_page(key, rec.end_lsn) is not None


def test_a_delta_for_a_block_its_record_does_not_touch_is_refused(ingest: WalIngest) -> None:
    recs = sample_records()
    for rec in recs:
        ingest.ingest(rec)
    ingest.advance()
    deltas = [(k, lsn, v) for k, lsn, v in ingest.store.puts  # type: ignore[attr-defined]
              if k.kind == KeyKind.REL_BLOCK and isinstance(v, WalRecord) and not v.will_init]
    assert deltas
    key, lsn, value = deltas[0]
    _, _, raw = decode_delta(value.data, lsn)
    assert any(b.blkno == key.blk for b in decode_record(raw, Lsn(0), Lsn(0)).blocks)
    elsewhere = Key.rel_block(key.spc, key.db, key.rel, key.fork, key.blk + 1000)
    with pytest.raises(RedoError, match="does not reference"):
        reconstruct_value(elsewhere, bytes(BLCKSZ), [value._replace(lsn=lsn)])
    assert list(ingest.store.keys(KeyRange.kind(KeyKind.REL_SIZE), ingest.last_lsn or 0))


def _sample(name: str) -> DecodedRecord:
    meta = json.loads((WAL / "records.json").read_text())[name]
    return decode_record((WAL / f"{name}.bin").read_bytes(), Lsn.parse(meta["lsn"]),
                         Lsn.parse(meta["end_lsn"]))


def test_image_delta_codec_round_trips_and_is_told_from_a_record_delta() -> None:
    rec = _sample("xlog_fpi_pglz")
    image = rec.blocks[0].image
    assert image is not None
    value = encode_image_delta(rec.lsn, rec.end_lsn, image)
    assert is_image_delta(value) and not is_image_delta(encode_delta(rec.lsn, rec.end_lsn, rec.raw))
    assert decode_image_delta(value) == (rec.lsn, rec.end_lsn, image)
    with pytest.raises(ValueError, match="not a REL_BLOCK image delta"):
        decode_image_delta(encode_delta(rec.lsn, rec.end_lsn, rec.raw))


@pytest.mark.parametrize("name", sorted(p.stem for p in WAL.glob("*.page0")))
def test_an_image_delta_restores_to_the_page_redo_builds(name: str) -> None:
    rec = _sample(name)
    for blk in rec.blocks:
        if not blk.apply_image:
            continue
        assert blk.image is not None
        loc = blk.rlocator
        key = Key.rel_block(loc.spc, loc.db, loc.rel, blk.fork, blk.blkno)
        value = WalRecord(encode_image_delta(rec.lsn, rec.end_lsn, blk.image), will_init=True)
        page = reconstruct_value(key, None, [value])
        assert page == redo_block(rec, blk.block_id, None)
        assert page_get_lsn(page) == rec.end_lsn or page_is_new(page)


def test_a_record_delta_keeps_every_field_of_the_record_but_xl_prev_and_xl_crc() -> None:
    meta = json.loads((WAL / "records.json").read_text())
    assert len(meta) > 10
    for name in meta:
        rec = _sample(name)
        lsn, end, raw = decode_delta(encode_delta(rec.lsn, rec.end_lsn, rec.raw), rec.end_lsn)
        back = decode_record(raw, lsn, end)
        assert (back.lsn, back.end_lsn, back.xl_prev, back.xl_crc) == (
            rec.lsn, rec.end_lsn, Lsn(0), 0)
        assert (back.xl_tot_len, back.xl_xid, back.xl_info, back.xl_rmid, back.blocks,
                back.main_data) == (rec.xl_tot_len, rec.xl_xid, rec.xl_info, rec.xl_rmid,
                                    rec.blocks, rec.main_data), name


def test_stored_samples_of_every_version_still_read() -> None:
    data = WAL.parent / "keyspace"
    init = _sample("heap_insert_init")
    v1 = WalRecord((data / "rel_block_delta_v1.bin").read_bytes(), will_init=True)
    key = Key.rel_block(1663, 1, 2606, 0, 0)
    assert reconstruct_value(key, None, [v1]) == redo_block(init, 0, None)
    # version 4: the same record with xl_prev and xl_crc not kept
    v4 = WalRecord((data / "rel_block_delta_v4.bin").read_bytes(), will_init=True)
    assert v4.data != v1.data
    assert reconstruct_value(key, None, [v4]) == redo_block(init, 0, None)
    # version 5: nor the end LSN, which the entry's LSN gives
    v5 = WalRecord((data / "rel_block_delta_v5.bin").read_bytes(), True, init.end_lsn)
    assert v5.data == encode_delta(init.lsn, init.end_lsn, init.raw) != v4.data
    assert v5.data[8:16] == bytes(8) and v5.data[16:] == v4.data[16:]
    assert reconstruct_value(key, None, [v5]) == redo_block(init, 0, None)
    # version 6: without the other block references' images (a heap2 VISIBLE's heap
    # page, block 1, without the VM page's image, block 0)
    visible = _sample("heap2_visible_2blk")
    heap = visible.block(1)
    assert heap is not None and visible.block(0).image is not None  # type: ignore[union-attr]
    v6 = WalRecord((data / "rel_block_delta_v6.bin").read_bytes(), False, visible.end_lsn)
    whole = encode_delta(visible.lsn, visible.end_lsn, visible.raw)
    assert v6.data == encode_record_delta(visible, heap) and len(v6.data) < len(whole) - 8000
    lsn, end, raw = decode_delta(v6.data, visible.end_lsn)
    back = decode_record(raw, lsn, end)
    assert back.block(0).image is None and back.block(1) == heap  # type: ignore[union-attr]
    base = redo_block(init, 0, None)  # a heap page: VISIBLE sets its PD_ALL_VISIBLE
    heap_key = Key.rel_block(heap.rlocator.spc, heap.rlocator.db, heap.rlocator.rel,
                             heap.fork, heap.blkno)
    assert reconstruct_value(heap_key, base, [v6]) == redo_block(visible, 1, base) != base
    fpi = _sample("xlog_fpi_pglz")
    v2 = WalRecord((data / "rel_block_image_delta_v2.bin").read_bytes(), will_init=True)
    key = Key.rel_block(1663, 5, 16389, 0, 0)
    assert reconstruct_value(key, None, [v2]) == redo_block(fpi, 0, None)
    # an image delta starts a chain: later record deltas apply on top of it
    assert reconstruct_value(key, bytes(BLCKSZ), [v2]) == redo_block(fpi, 0, None)


def test_ingest_stores_applied_images_as_image_deltas(ingest: WalIngest) -> None:
    recs = sample_records()
    for rec in recs:
        ingest.ingest(rec)
    ingest.advance()
    images = {(rec.end_lsn, b.rlocator.rel, b.blkno) for rec in recs for b in rec.blocks
              if b.apply_image and b.fork in STORED_FORKS}
    stored = {(lsn, k.rel, k.blk) for k, lsn, v in ingest.store.puts  # type: ignore[attr-defined]
              if k.kind == KeyKind.REL_BLOCK and isinstance(v, WalRecord) and v.will_init
              and is_image_delta(v.data)}
    assert images and stored == images
