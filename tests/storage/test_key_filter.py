"""The v7 key filter: no false negatives by either write path, few false positives,
a point read of a key it rules out reads no block, damage is reported."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from strata.errors import CorruptionError
from strata.key import MAX_KEY, MIN_KEY
from strata.storage import layerfile
from strata.storage.batch import KEY_DTYPE, EntryBatch
from strata.storage.keyfilter import (
    SECTION_CRC,
    KeyFilter,
    build_section,
    key_hash,
    key_hashes,
)
from strata.storage.layerfile import FILTER_VERSION, FOOTER, FORMAT_VERSION, LayerFile, crc32c
from strata.storage.layerwriter import LayerWriter, write_layer
from strata.storage.naming import LayerName
from strata.storage.values import Entry, PageImage, WalRecord

from .conftest import rk

pytestmark = pytest.mark.unit


def _random_keys(n: int, seed: int) -> list[bytes]:
    rnd = random.Random(seed)
    return [bytes([rnd.randrange(0xFF)]) + rnd.randbytes(17) for _ in range(n)]


def test_the_hash_of_one_key_is_the_hash_of_a_column() -> None:
    keys = _random_keys(2000, 1) + [rk(b).to_bytes() for b in range(2000)]
    col = np.frombuffer(b"".join(keys), dtype=KEY_DTYPE)
    assert key_hashes(col).tolist() == [key_hash(k) for k in keys]
    assert len(set(key_hashes(col).tolist())) == len(keys)  # no collision among these


@pytest.mark.parametrize("n", [0, 1, 7, 64, 5000])
def test_a_filter_holds_every_key_it_was_built_from_and_few_others(n: int) -> None:
    keys = sorted(set(_random_keys(n, n)))
    f = KeyFilter.parse(build_section(key_hashes(np.frombuffer(b"".join(keys), KEY_DTYPE))
                                      if keys else np.zeros(0, np.uint64)))
    assert (f.keys, f.words) == (len(keys), -(-len(keys) * 10 // 64))
    assert all(f.may_hold(k) for k in keys)
    others = [k for k in _random_keys(20000, n + 1) if k not in set(keys)]
    passed = sum(f.may_hold(k) for k in others) / len(others)
    assert passed < (0.03 if n >= 64 else 0.3)
    if n == 0:
        assert passed == 0


def test_block_keys_are_mostly_ruled_out_between_present_ones() -> None:
    """Keys a point read probes in earnest: blocks of one relation, present every
    third block, probed at the blocks in between."""
    present = [rk(b).to_bytes() for b in range(0, 30000, 3)]
    f = KeyFilter.parse(build_section(key_hashes(np.frombuffer(b"".join(present), KEY_DTYPE))))
    assert all(f.may_hold(k) for k in present)
    absent = [rk(b).to_bytes() for b in range(30000) if b % 3]
    assert sum(f.may_hold(k) for k in absent) / len(absent) < 0.03


def _delta_entries(blocks: range, per_key: int) -> list[Entry]:
    return [Entry(rk(b).to_bytes(), 100 + j, WalRecord(b"r%d.%d" % (b, j)))
            for b in blocks for j in range(per_key)]


@pytest.mark.parametrize("one_by_one", [False, True])
def test_the_writer_filters_every_key_of_its_blocks(tmp_path: Path, one_by_one: bool) -> None:
    """Keys whose entries straddle block boundaries, both add paths; the layer is
    v7 and verify rebuilds the same filter."""
    es = _delta_entries(range(0, 900, 2), 7)
    name = LayerName.delta(MIN_KEY.to_bytes(), MAX_KEY.to_bytes(), 100, 200)
    w = LayerWriter(tmp_path, block_bytes=300, zstd_level=1)
    if one_by_one:
        for e in es:
            w.add(e)
    else:
        for a in range(0, len(es), 333):  # several batches, cut inside a key's entries
            w.add_batch(EntryBatch.from_entries(es[a:a + 333]))
    w.finish(name)
    f = LayerFile(tmp_path / name.filename())
    assert f.version == FORMAT_VERSION == FILTER_VERSION
    assert len(f.blocks) > 20
    assert f.key_filter().keys == 450
    assert all(f.may_hold(rk(b).to_bytes()) for b in range(0, 900, 2))
    assert f.verify() == len(es)


def test_copied_image_blocks_are_in_the_new_layers_filter(tmp_path: Path) -> None:
    name = LayerName.image(MIN_KEY.to_bytes(), MAX_KEY.to_bytes(), 50)
    w = LayerWriter(tmp_path, block_bytes=400, zstd_level=1, head_frames=True)
    for b in range(300):
        w.add(Entry(rk(b).to_bytes(), 50, PageImage(bytes([b % 251]) * 40)))
    w.finish(name)
    old = LayerFile(tmp_path / name.filename())
    new_name = LayerName.image(MIN_KEY.to_bytes(), MAX_KEY.to_bytes(), 60)
    w = LayerWriter(tmp_path, block_bytes=400, zstd_level=1, head_frames=True)
    for i in range(len(old.blocks)):
        w.copy_image_block(*old.image_block_parts(i), 60)
    w.add(Entry(rk(1000).to_bytes(), 60, PageImage(b"new")))
    w.finish(new_name)
    f = LayerFile(tmp_path / new_name.filename())
    assert f.key_filter().keys == 301
    assert all(f.may_hold(rk(b).to_bytes()) for b in [*range(300), 1000])
    assert f.verify() == 301


def _counted_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The offsets of every pread a layer file makes from now on."""
    reads: list[int] = []
    real = layerfile.os.pread

    def counting(fd: int, n: int, off: int) -> bytes:
        reads.append(off)
        return real(fd, n, off)

    monkeypatch.setattr(layerfile.os, "pread", counting)
    return reads


def test_a_point_read_of_a_key_ruled_out_reads_no_block(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    es = _delta_entries(range(0, 6000, 3), 2)
    f = LayerFile(_written(tmp_path, es, 2000)[0])
    f.may_hold(rk(0).to_bytes())  # the filter's own read, once
    reads = _counted_reads(monkeypatch)
    probed = 0
    for b in range(6000):
        if b % 3 == 0:
            continue
        before = len(reads)
        assert f.get_chain(rk(b).to_bytes(), 0, 1 << 63) == ([], False)
        assert f.get(rk(b).to_bytes(), 0, 1 << 63) == []
        probed += len(reads) > before
    assert probed / 4000 < 0.03
    # present keys still read their entries
    for b in range(0, 6000, 300):
        want = [e for e in es if e.key == rk(b).to_bytes()]
        assert f.get(rk(b).to_bytes(), 0, 1 << 63) == want


def test_without_the_filter_the_same_probes_read_blocks(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The test above can fail: with `may_hold` always yes, the probes read."""
    f = LayerFile(_written(tmp_path, _delta_entries(range(0, 600, 3), 2), 2000)[0])
    monkeypatch.setattr(LayerFile, "may_hold", lambda self, key: True)
    reads = _counted_reads(monkeypatch)
    for b in range(1, 600, 3):
        assert f.get_chain(rk(b).to_bytes(), 0, 1 << 63) == ([], False)
    assert len(reads) >= 180  # of 200 probes: all but those between two blocks


def _written(tmp_path: Path, es: list[Entry], block_bytes: int = 500) -> tuple[Path, int, int]:
    """A delta layer of `es`: its path and its key filter's offset and size."""
    name = LayerName.delta(MIN_KEY.to_bytes(), MAX_KEY.to_bytes(), 100, 200)
    write_layer(tmp_path, name, es, block_bytes=block_bytes, zstd_level=1)
    p = tmp_path / name.filename()
    f = LayerFile(p)
    off, size = f.filter_span
    f.close()
    return p, off, size


def _filter_damaged(tmp_path: Path, how: str) -> LayerFile:
    p, off, size = _written(tmp_path, _delta_entries(range(0, 300, 2), 3))
    data = bytearray(p.read_bytes())
    if how == "bit":
        data[off + 20] ^= 0x10
    else:  # every bit clear, the CRC made again: only verify can tell
        import google_crc32c
        data[off + 16:off + size - 4] = bytes(size - 20)
        data[off + size - 4:off + size] = SECTION_CRC.pack(
            int(google_crc32c.value(bytes(data[off:off + size - 4]))))
    p.write_bytes(bytes(data))
    return LayerFile(p)


def test_a_damaged_filter_is_reported_naming_the_file_and_offset(tmp_path: Path) -> None:
    f = _filter_damaged(tmp_path, "bit")  # opens: the filter is read on first use
    off = f.filter_span[0]
    with pytest.raises(CorruptionError, match=f"key filter unreadable: checksum mismatch "
                                              f"at offset {off}"):
        f.get_chain(rk(2).to_bytes(), 0, 1 << 63)
    with pytest.raises(CorruptionError, match=f.path.name):
        f.verify()


def test_verify_finds_a_filter_that_rules_out_present_keys(tmp_path: Path) -> None:
    f = _filter_damaged(tmp_path, "cleared")
    assert not f.may_hold(rk(2).to_bytes())  # a wrong answer, with a valid CRC
    with pytest.raises(CorruptionError, match="key filter is not the one the layer's keys make"):
        f.verify()


def test_a_v7_layer_without_room_for_its_filter_does_not_open(tmp_path: Path) -> None:
    """The blocks must end at least a filter's 20 bytes before the index."""
    p, off, size = _written(tmp_path, _delta_entries(range(0, 30, 2), 1))
    data = p.read_bytes()
    # the section cut out, the footer made to point at the index where it now is
    foot = list(FOOTER.unpack(data[-FOOTER.size:]))
    foot[0] -= size
    head = FOOTER.pack(*foot)
    foot[5] = crc32c(head[:28])
    p.write_bytes(data[:off] + data[off + size:-FOOTER.size] + FOOTER.pack(*foot))
    with pytest.raises(CorruptionError, match="index does not account for every block"):
        LayerFile(p)
