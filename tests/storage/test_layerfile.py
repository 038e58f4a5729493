"""Layer file and manifest: round trip, and the truncation/corruption matrix."""

from __future__ import annotations

from pathlib import Path

import pytest

from strata.errors import CorruptionError
from strata.key import MAX_KEY, MIN_KEY
from strata.storage.layerfile import FOOTER, HEADER, LayerFile
from strata.storage.layerwriter import write_layer
from strata.storage.manifest import LayerEntry, Level, Manifest, commit_manifest, load_manifest
from strata.storage.naming import LayerName
from strata.storage.values import TOMBSTONE, Entry, PageImage, Value, WalRecord, ends_chain

from .conftest import rk


def sample_entries(n: int = 60) -> list[Entry]:
    out = []
    for i in range(n):
        k = rk(i // 3).to_bytes()
        lsn = 100 + i
        choices: list[Value] = [PageImage(bytes([i]) * 50), WalRecord(b"r%d" % i),
                                WalRecord(b"w%d" % i, True), TOMBSTONE]
        v = choices[i % 4]
        out.append(Entry(k, lsn, v))
    return out


def write_sample(d: Path, n: int = 60) -> tuple[Path, list[Entry]]:
    es = sample_entries(n)
    name = LayerName.delta(MIN_KEY.to_bytes(), MAX_KEY.to_bytes(), 100, 100 + n)
    write_layer(d, name, es, block_bytes=150, zstd_level=1)
    return d / name.filename(), es


def test_delta_layer_round_trips_every_entry(tmp_path: Path) -> None:
    p, es = write_sample(tmp_path)
    f = LayerFile(p)
    assert len(f.blocks) > 3
    assert list(f.scan(MIN_KEY.to_bytes(), MAX_KEY.to_bytes())) == es
    assert f.verify() == len(es)
    k = rk(4).to_bytes()
    assert f.get(k, 0, 1 << 64) == [e for e in es if e.key == k]
    assert f.get(k, 113, 114) == [e for e in es if e.key == k and e.lsn == 113]
    assert not list(p.parent.glob("*.tmp"))


def test_image_layer_rejects_non_image_values(tmp_path: Path) -> None:
    name = LayerName.image(MIN_KEY.to_bytes(), MAX_KEY.to_bytes(), 7)
    with pytest.raises(ValueError):
        write_layer(tmp_path, name, [Entry(rk(1).to_bytes(), 7, WalRecord(b"x"))],
                    block_bytes=100, zstd_level=1)
    assert list(tmp_path.iterdir()) == []


def test_writer_rejects_out_of_order_entries_and_leaves_no_tmp(tmp_path: Path) -> None:
    name = LayerName.delta(MIN_KEY.to_bytes(), MAX_KEY.to_bytes(), 0, 100)
    es = [Entry(rk(2).to_bytes(), 5, PageImage(b"a")), Entry(rk(1).to_bytes(), 5, PageImage(b"b"))]
    with pytest.raises(ValueError):
        write_layer(tmp_path, name, es, block_bytes=100, zstd_level=1)
    assert list(tmp_path.iterdir()) == []


def _damage(p: Path, mutate: str) -> None:
    data = bytearray(p.read_bytes())
    if mutate == "zero_length":
        data = bytearray()
    elif mutate == "partial_header":
        data = data[:40]
    elif mutate == "bad_magic":
        data[0:8] = b"NOTALAYR"
    elif mutate == "wrong_version":
        data[8:10] = (99).to_bytes(2, "big")
    elif mutate == "bad_header_checksum":
        data[20] ^= 0xFF
    elif mutate == "truncated_block":
        data = data[: HEADER.size + 30]
    elif mutate == "truncated_footer":
        data = data[:-5]
    elif mutate == "bad_index_checksum":
        data[-FOOTER.size - 10] ^= 0x01
    elif mutate == "bad_footer_checksum":
        data[-FOOTER.size + 2] ^= 0x01
    p.write_bytes(bytes(data))


@pytest.mark.parametrize("mutate", ["zero_length", "partial_header", "bad_magic", "wrong_version",
                                    "bad_header_checksum", "truncated_block", "truncated_footer",
                                    "bad_index_checksum", "bad_footer_checksum"])
def test_damaged_layer_raises_corruption_naming_file_and_offset(tmp_path: Path, mutate: str) -> None:
    p, _ = write_sample(tmp_path)
    _damage(p, mutate)
    with pytest.raises(CorruptionError) as ei:
        LayerFile(p).verify()
    msg = str(ei.value)
    assert p.name in msg and "offset" in msg
    if mutate == "wrong_version":
        assert "version 99" in msg


def test_bad_block_checksum_is_caught_on_read_with_block_offset(tmp_path: Path) -> None:
    p, es = write_sample(tmp_path)
    f = LayerFile(p)
    b = f.blocks[2]
    f.close()
    data = bytearray(p.read_bytes())
    data[b.offset + 3] ^= 0x40
    p.write_bytes(bytes(data))
    f = LayerFile(p)  # header, index, footer still fine
    with pytest.raises(CorruptionError, match=f"block 2 checksum mismatch at offset {b.offset}"):
        list(f.scan(MIN_KEY.to_bytes(), MAX_KEY.to_bytes()))
    with pytest.raises(CorruptionError, match=f"offset {b.offset}"):
        f.get(b.first_key, 0, 1 << 64)  # the point-read path checks it too
    # a range read decodes whole blocks together, from one read: the block is named
    with pytest.raises(CorruptionError, match=f"block 2 checksum mismatch at offset {b.offset}"):
        f.batch_range(MIN_KEY.to_bytes(), MAX_KEY.to_bytes())
    # blocks before it still read
    assert list(f.read_block(0)) == es[: f.blocks[0].entries]


@pytest.mark.parametrize("cut", [0, 1, 39, 71, 72, 100])
def test_every_truncation_point_is_detected(tmp_path: Path, cut: int) -> None:
    p, _ = write_sample(tmp_path)
    data = p.read_bytes()
    p.write_bytes(data[: min(cut, len(data) - 1)])
    with pytest.raises(CorruptionError):
        LayerFile(p)


def test_manifest_round_trips(tmp_path: Path) -> None:
    le = LayerEntry(LayerName.delta(MIN_KEY.to_bytes(), MAX_KEY.to_bytes(), 1, 9), Level.L0, 123)
    im = LayerEntry(LayerName.image(MIN_KEY.to_bytes(), MAX_KEY.to_bytes(), 8), Level.IMAGE, 77)
    m = Manifest().edit(add=(le, im), durable_lsn=8, retention_lsn=3)
    commit_manifest(tmp_path, m)
    back = load_manifest(tmp_path)
    assert back is not None
    assert (back.generation, back.durable_lsn, back.retention_lsn) == (1, 8, 3)
    assert set(back.layers) == {le, im}
    assert not (tmp_path / "MANIFEST.tmp").exists()


@pytest.mark.parametrize("mutate", ["zero_length", "partial_header", "bad_magic", "wrong_version",
                                    "bad_checksum", "truncated_entry"])
def test_damaged_manifest_raises_corruption(tmp_path: Path, mutate: str) -> None:
    le = LayerEntry(LayerName.delta(MIN_KEY.to_bytes(), MAX_KEY.to_bytes(), 1, 9), Level.L0, 123)
    commit_manifest(tmp_path, Manifest().edit(add=(le,), durable_lsn=8))
    p = tmp_path / "MANIFEST"
    data = bytearray(p.read_bytes())
    if mutate == "zero_length":
        data = bytearray()
    elif mutate == "partial_header":
        data = data[:20]
    elif mutate == "bad_magic":
        data[0] ^= 1
    elif mutate == "wrong_version":
        data[8:10] = (7).to_bytes(2, "big")
    elif mutate == "bad_checksum":
        data[45] ^= 1
    elif mutate == "truncated_entry":
        data = data[:60]
    p.write_bytes(bytes(data))
    with pytest.raises(CorruptionError, match="offset"):
        load_manifest(tmp_path)


def test_open_layer_returns_delta_or_image_layer_by_header(tmp_path: Path) -> None:
    from strata.storage.layerfile import DeltaLayer, ImageLayer, open_layer

    p, _ = write_sample(tmp_path)
    assert isinstance(open_layer(p), DeltaLayer)
    name = LayerName.image(MIN_KEY.to_bytes(), MAX_KEY.to_bytes(), 7)
    write_layer(tmp_path, name, [Entry(rk(1).to_bytes(), 7, PageImage(b"x"))],
                block_bytes=100, zstd_level=1)
    img = open_layer(tmp_path / name.filename())
    assert isinstance(img, ImageLayer) and img.get(rk(1).to_bytes(), 7, 8)[0].value == PageImage(b"x")


def _newest_chain(entries: list[Entry]) -> tuple[list[Entry], bool]:
    """The reference for get_chain: every entry from the newest chain end on."""
    ends = [i for i, e in enumerate(entries) if ends_chain(e.value)]
    return (entries[ends[-1]:], True) if ends else (entries, False)


@pytest.mark.parametrize("seed", range(6))
def test_get_chain_is_the_newest_part_of_get_and_decodes_no_older_rows(
        tmp_path: Path, seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    import random

    from strata.storage import blocks

    rnd = random.Random(seed)
    es: list[Entry] = []
    lsn = 100
    for k in range(8):  # keys with long runs that span blocks, of every kind mixed
        for _ in range(rnd.choice([1, 3, 40, 200])):
            lsn += 1
            v = rnd.choices([PageImage(b"i%d" % lsn), WalRecord(b"r%d" % lsn),
                             WalRecord(b"w%d" % lsn, True), TOMBSTONE], [2, 12, 1, 1])[0]
            es.append(Entry(rk(k).to_bytes(), lsn, v))
    es.sort(key=lambda e: (e.key, e.lsn))
    name = LayerName.delta(MIN_KEY.to_bytes(), MAX_KEY.to_bytes(), 100, lsn + 1)
    write_layer(tmp_path, name, es, block_bytes=300, zstd_level=1)
    f = LayerFile(tmp_path / name.filename())
    assert len(f.blocks) > 10
    made = []
    real = blocks.make_value
    monkeypatch.setattr(blocks, "make_value", lambda kind, data: made.append(1) or real(kind, data))
    for k in range(9):
        kb = rk(k).to_bytes()
        for lo, hi in [(0, 1 << 64), (150, 400), (lsn - 20, lsn + 1), (lsn + 5, lsn + 9)]:
            want = _newest_chain(f.get(kb, lo, hi))
            made.clear()
            got = f.get_chain(kb, lo, hi)
            assert got == want, (k, lo, hi)
            assert len(made) == len(got[0])  # rows below the chain end: never decoded


def test_reads_skip_blocks_wholly_outside_the_lsns_they_want(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """v4 index LSN bounds: key k's one entry is at LSN 100 + k, so a read below LSN 120
    needs only the blocks of keys 0..19, and returns what reading every block returns."""
    es = [Entry(rk(k).to_bytes(), 100 + k, WalRecord(b"r" * 40)) for k in range(40)]
    name = LayerName.delta(MIN_KEY.to_bytes(), MAX_KEY.to_bytes(), 100, 140)
    write_layer(tmp_path, name, es, block_bytes=150, zstd_level=1)
    f = LayerFile(tmp_path / name.filename())
    read: list[int] = []
    block_frames = LayerFile._block_frames
    monkeypatch.setattr(LayerFile, "_block_frames",
                        lambda self, i, b=None: read.append(i) or block_frames(self, i, b))
    try:
        assert f.version >= 4 and len(f.blocks) >= 10
        start, end = MIN_KEY.to_bytes(), MAX_KEY.to_bytes()
        got = list(f.batch_range(start, end, 0, 120).entries())
        assert got == [e for e in es if e.lsn < 120]
        assert 0 < len(set(read)) < len(f.blocks)
        assert all(f.blocks[i].min_lsn < 120 for i in read)
        read.clear()
        assert list(f.batch_range(start, end, 125, 1 << 63).entries()) == es[25:]
        assert all(f.blocks[i].max_lsn >= 125 for i in read)
        read.clear()
        late = rk(30).to_bytes()
        assert f.get(late, 0, 120) == [] and f.get_chain(late, 0, 120) == ([], False)
        assert read == []  # its block holds nothing below 120: never read
        assert f.get(late, 0, 131) == [es[30]]
        assert list(f.scan(start, end, 0, 110)) == es[:10]
    finally:
        f.close()
