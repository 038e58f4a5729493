"""Layer format 6's head frames: a block's keys, LSNs and kinds read without its
values (`LayerFile.block_heads`, the image trigger's chain count) are exactly those
of the whole block, over random layers, key ranges and LSN ranges; a damaged head
or values frame is caught by its own checksum; files before v6 give the same
answer from whole blocks."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from strata.errors import CorruptionError
from strata.storage.batch import EntryBatch
from strata.storage.blocks import (
    chain_in_columns,
    decode_columns,
    decode_many_columns,
    decode_many_heads,
    encode_columns,
    find_in_columns,
    head_size,
)
from strata.storage.layerfile import LayerFile
from strata.storage.layerwriter import write_layer
from strata.storage.naming import LayerName
from strata.storage.values import TOMBSTONE, Entry, PageImage, Value, WalRecord

from .conftest import rk
from .make_samples import sample_dir
from .test_batch import batch_of

PAST_EVERY_KEY = b"\xff" * 19


def _entries(rnd: random.Random, n: int) -> list[Entry]:
    out: list[Entry] = []
    for k in sorted(rnd.sample(range(60), rnd.randint(1, 12))):
        lsn = rnd.randint(1, 50)
        for _ in range(rnd.randint(1, n)):
            v: Value = rnd.choice([WalRecord(rnd.randbytes(rnd.randint(1, 90))),
                                   PageImage(rnd.randbytes(rnd.randint(1, 300))), TOMBSTONE])
            out.append(Entry(rk(k).to_bytes(), lsn, v))
            lsn += rnd.randint(1, 9)
    return out


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), block_bytes=st.sampled_from([40, 200, 1000, 1 << 16]))
def test_heads_are_the_whole_blocks_keys_lsns_and_kinds(tmp_path_factory: pytest.TempPathFactory,
                                                        seed: int, block_bytes: int) -> None:
    rnd = random.Random(seed)
    entries = _entries(rnd, 30)
    d = tmp_path_factory.mktemp("heads")
    name = LayerName.delta(rk(0).to_bytes(), rk(60).to_bytes(), 1, 1000)
    write_layer(d, name, entries, block_bytes=block_bytes, zstd_level=1)
    f = LayerFile(d / name.filename())
    try:
        assert f.version >= 6 and all(b.head_len > 0 for b in f.blocks)
        bounds = [b"", rk(0).to_bytes(), PAST_EVERY_KEY,
                  *(rk(rnd.randint(0, 61)).to_bytes() for _ in range(4))]
        for _ in range(12):
            a, z = sorted(rnd.sample(bounds, 2))
            lo, hi = sorted((rnd.randint(0, 400), rnd.randint(0, 400)))
            want = f.batch_range(a, z, lo, hi)
            got = f.block_heads(a, z, lo, hi)
            assert got.keys.tobytes() == want.keys.tobytes()
            assert got.lsns.tolist() == want.lsns.tolist()
            assert got.kinds.tolist() == want.kinds.tolist()
    finally:
        f.close()


def test_a_head_decodes_without_its_values() -> None:
    rows = [(rk(1), 5, WalRecord(b"ab")), (rk(1), 9, PageImage(b"x" * 50)), (rk(2), 7, TOMBSTONE)]
    raw = encode_columns(batch_of(rows))
    cut = head_size(3)
    h = decode_many_heads([raw[:cut], raw[:cut]], lsn_deltas=True)
    assert [bytes(k) for k in h.keys] == [rk(1).to_bytes(), rk(1).to_bytes(), rk(2).to_bytes()] * 2
    assert h.lsns.tolist() == [5, 9, 7] * 2  # running sums start again at each block
    assert h.kinds.tolist() == [1, 0, 3] * 2
    with pytest.raises(ValueError, match="does not hold"):
        decode_many_heads([raw], lsn_deltas=True)  # values left on: not a head
    with pytest.raises(ValueError, match="does not hold"):
        decode_many_heads([raw[:cut - 1]], lsn_deltas=True)


def _one_block_layer(d: Path) -> tuple[Path, int, int, int]:
    name = LayerName.delta(rk(0).to_bytes(), rk(9).to_bytes(), 1, 100)
    write_layer(d, name, [Entry(rk(k).to_bytes(), 10 + k, PageImage(bytes([k]) * 500))
                          for k in range(1, 8)], block_bytes=1 << 16, zstd_level=1)
    p = d / name.filename()
    f = LayerFile(p)
    b = f.blocks[0]
    f.close()
    return p, b.offset, b.head_len, b.comp_len


def _flip(p: Path, at: int) -> None:
    data = bytearray(p.read_bytes())
    data[at] ^= 0x40
    p.write_bytes(bytes(data))


def test_a_damaged_head_frame_fails_both_reads(tmp_path: Path) -> None:
    p, off, head_len, _ = _one_block_layer(tmp_path)
    _flip(p, off + head_len // 2)
    f = LayerFile(p)
    try:
        with pytest.raises(CorruptionError, match="block 0 head checksum mismatch"):
            f.block_heads(b"", PAST_EVERY_KEY)
        with pytest.raises(CorruptionError, match="block 0 checksum mismatch"):
            f.verify()
    finally:
        f.close()


def test_a_damaged_values_frame_fails_the_block_read_not_the_head_read(tmp_path: Path) -> None:
    p, off, head_len, comp_len = _one_block_layer(tmp_path)
    _flip(p, off + head_len + (comp_len - head_len) // 2)
    f = LayerFile(p)
    try:
        h = f.block_heads(b"", PAST_EVERY_KEY)  # its own CRC holds: the keys are right
        assert [bytes(k) for k in h.keys] == [rk(k).to_bytes() for k in range(1, 8)]
        with pytest.raises(CorruptionError, match="block 0 checksum mismatch"):
            f.verify()
    finally:
        f.close()


@pytest.mark.parametrize("old", [1, 3, 5])
def test_older_files_give_the_same_heads_from_whole_blocks(old: int) -> None:
    def heads(version: int) -> list[tuple[bytes, int, int]]:
        out = []
        for p in sorted(sample_dir(version).glob("*.delta")):
            f = LayerFile(p)
            try:
                h = f.block_heads(b"", PAST_EVERY_KEY)
                out += zip([bytes(k) for k in h.keys], h.lsns.tolist(), h.kinds.tolist(),
                           strict=True)
            finally:
                f.close()
        return out

    assert heads(old) == heads(6) and len(heads(6)) > 3


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_decoders_give_the_same_from_two_frames_as_from_one(seed: int) -> None:
    """A v6 block is decoded from its head and values as they come out of their two
    frames (never joined): every decoder gives what it gives on the joined bytes."""
    rnd = random.Random(seed)
    raws = [encode_columns(EntryBatch.from_entries(_entries(rnd, 6)))
            for _ in range(rnd.randint(1, 4))]
    heads = [r[:head_size(int.from_bytes(r[:4], "big"))] for r in raws]
    values = [r[len(h):] for r, h in zip(raws, heads, strict=True)]
    one = decode_many_columns(raws, True)
    two = decode_many_columns(heads, True, values)
    assert list(two.entries()) == list(one.entries())
    for r, h, v in zip(raws, heads, values, strict=True):
        assert list(decode_columns(h, True, v).entries()) == list(decode_columns(r, True).entries())
        for k in range(0, 61, 7):
            key = rk(k).to_bytes()
            lo, hi = sorted((rnd.randint(0, 300), rnd.randint(0, 300)))
            assert find_in_columns(h, key, lo, hi, True, v) == find_in_columns(r, key, lo, hi, True)
            assert chain_in_columns(h, key, lo, hi, True, v) == \
                chain_in_columns(r, key, lo, hi, True)
    with pytest.raises(ValueError, match="does not hold"):
        decode_columns(heads[0] + b"\0", True, values[0])  # a head is its columns exactly
    with pytest.raises(ValueError, match="tile"):
        decode_columns(heads[0], True, values[0] + b"x")


def test_one_frame_image_layers_still_read_their_heads(tmp_path: Path) -> None:
    # write_layer writes image layers in one frame a block, as image creation did
    # before it copied unchanged blocks (their files are still read)
    name = LayerName.image(rk(0).to_bytes(), rk(60).to_bytes(), 77)
    es = [Entry(rk(k).to_bytes(), 77, PageImage(bytes([k]) * 3000)) for k in range(50)]
    write_layer(tmp_path, name, es, block_bytes=1 << 14, zstd_level=1)
    f = LayerFile(tmp_path / name.filename())
    try:
        assert len(f.blocks) > 3 and all(b.head_len == 0 for b in f.blocks)
        h = f.block_heads(rk(7).to_bytes(), rk(30).to_bytes())
        assert [bytes(k) for k in h.keys] == [rk(k).to_bytes() for k in range(7, 30)]
        assert set(h.lsns.tolist()) == {77} and f.verify() == 50
    finally:
        f.close()


def test_verify_checks_the_head_frames_own_crc(tmp_path: Path) -> None:
    """An index whose head CRC is wrong (a writer bug: the index CRC still holds)
    fails verify, which a whole-block read alone would not notice."""
    from strata.storage.blockindex import INDEX_ENTRY
    from strata.storage.layerfile import FOOTER, crc32c

    p = _one_block_layer(tmp_path)[0]
    f = LayerFile(p)
    blk, index_off = f.blocks[0], f.index_offset
    f.close()
    data = p.read_bytes()
    index = INDEX_ENTRY.pack(*blk._replace(head_crc=blk.head_crc ^ 1))
    head = FOOTER.pack(index_off, len(index), 1, blk.entries, crc32c(index), 0, b"STRATAFT")
    foot = FOOTER.pack(index_off, len(index), 1, blk.entries, crc32c(index), crc32c(head[:28]),
                       b"STRATAFT")
    p.write_bytes(data[:index_off] + index + foot)
    f = LayerFile(p)
    try:
        assert len(f.batch_range(b"", PAST_EVERY_KEY)) == 7  # the block itself is sound
        with pytest.raises(CorruptionError, match="block 0 head checksum mismatch"):
            f.verify()
    finally:
        f.close()


@pytest.mark.parametrize("seed", range(8))
def test_a_point_read_decompresses_the_values_of_blocks_holding_its_key_only(
        tmp_path: Path, seed: int) -> None:
    """`get_chain` reads a v6 block's head frame first: a block whose key range spans
    the key but which holds no entry of it (most probes of an L1 by a point read:
    99.6 % on a 30-minute scale-100 store) never has its values decompressed, and a
    block that holds it gives the chain the whole block gives."""
    rnd = random.Random(seed)
    entries: list[Entry] = []
    for k in range(0, 60, 2):  # even keys only: every odd key lies inside some block
        lsn = rnd.randint(1, 20)
        for _ in range(rnd.randint(1, 6)):
            v: Value = rnd.choice([WalRecord(rnd.randbytes(rnd.randint(1, 90))),
                                   PageImage(rnd.randbytes(300)), TOMBSTONE])
            entries.append(Entry(rk(k).to_bytes(), lsn, v))
            lsn += rnd.randint(1, 9)
    name = LayerName.delta(rk(0).to_bytes(), rk(60).to_bytes(), 1, 1000)
    write_layer(tmp_path, name, entries, block_bytes=700, zstd_level=1)
    f = LayerFile(tmp_path / name.filename())
    whole: list[int] = []
    real = f._block_frames

    def counted(i: int, b: object = None, known_head: bytes | None = None,
                values_upto: int | None = None) -> tuple[bytes, bytes | None]:
        whole.append(i)
        return real(i, b, known_head, values_upto)  # type: ignore[arg-type]

    f._block_frames = counted  # type: ignore[method-assign]
    try:
        assert len(f.blocks) > 3
        for k in range(1, 60, 2):
            assert f.get_chain(rk(k).to_bytes(), 0, 1 << 40) == ([], False)
        assert whole == []  # heads alone
        for k in range(0, 60, 2):
            lo, hi = sorted((rnd.randint(0, 80), rnd.randint(0, 80)))
            mine = [e for e in entries if e.key == rk(k).to_bytes() and lo <= e.lsn < hi]
            ends = [i for i, e in enumerate(mine) if not isinstance(e.value, WalRecord)]
            want = (mine[ends[-1]:], True) if ends else (mine, False)
            assert f.get_chain(rk(k).to_bytes(), lo, hi) == want
        assert whole  # the blocks holding the keys were read whole
    finally:
        f.close()


@pytest.mark.parametrize("seed", range(4))
def test_a_point_read_early_in_a_block_decompresses_its_values_up_to_its_key(
        tmp_path: Path, seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """One block of incompressible page images over two zstd blocks: a key whose
    entries end in the first half of the values is read from a prefix of them, any
    other from the whole frame, and both give the chain the whole block gives."""
    from strata.storage import layerfile

    rnd = random.Random(seed)
    entries = [Entry(rk(k).to_bytes(), lsn, rnd.choice([
        PageImage(rnd.randbytes(4096)), WalRecord(rnd.randbytes(rnd.randint(1, 3000)))]))
        for k in range(48) for lsn in sorted(rnd.sample(range(1, 50), rnd.randint(1, 3)))]
    name = LayerName.delta(rk(0).to_bytes(), rk(48).to_bytes(), 1, 100)
    write_layer(tmp_path, name, entries, block_bytes=1 << 22, zstd_level=1)
    prefixes: list[int] = []
    real = layerfile._prefix
    monkeypatch.setattr(layerfile, "_prefix",
                        lambda d, frame, size: prefixes.append(size) or real(d, frame, size))
    f = LayerFile(tmp_path / name.filename())
    try:
        b = f.blocks[0]
        values = b.raw_len - (4 + 31 * b.entries)  # (a head: n, then 31 bytes an entry)
        assert len(f.blocks) == 1 and values > 128 * 1024
        half = values // 2
        through = 0
        for k in range(48):
            mine = [e for e in entries if e.key == rk(k).to_bytes()]
            through += sum(len(e.value.data) for e in mine)  # type: ignore[union-attr]
            ends = [i for i, e in enumerate(mine) if isinstance(e.value, PageImage)]
            prefixes.clear()
            assert f.get_chain(rk(k).to_bytes(), 0, 1 << 40) == (
                (mine[ends[-1]:], True) if ends else (mine, False))
            assert prefixes == ([through] if through <= half else [])
    finally:
        f.close()


def test_a_damaged_values_frame_fails_a_read_of_its_keys_not_a_miss(tmp_path: Path) -> None:
    name = LayerName.delta(rk(0).to_bytes(), rk(9).to_bytes(), 1, 100)
    write_layer(tmp_path, name, [Entry(rk(k).to_bytes(), 10 + k, PageImage(bytes([k]) * 500))
                                 for k in (1, 3, 5, 7)], block_bytes=1 << 16, zstd_level=1)
    p = tmp_path / name.filename()
    f = LayerFile(p)
    b = f.blocks[0]
    f.close()
    _flip(p, b.offset + b.head_len + (b.comp_len - b.head_len) // 2)
    f = LayerFile(p)
    try:
        assert len(f.blocks) == 1
        assert f.get_chain(rk(4).to_bytes(), 0, 1 << 40) == ([], False)  # inside, absent
        with pytest.raises(CorruptionError, match="block 0 checksum mismatch"):
            f.get_chain(rk(3).to_bytes(), 0, 1 << 40)
    finally:
        f.close()
