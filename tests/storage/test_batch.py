"""The columnar data path: the EntryBatch contract, put_batch against put per entry
(same reads, byte-identical layer files), the memtable's sorted runs, v3 blocks, and
the column-wise chain cut at flush against the dict model."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from strata.errors import CorruptionError, RedoError
from strata.key import Key, KeyRange
from strata.pagestore import PageStore
from strata.storage.batch import KEY_DTYPE, KEY_ORDER, EntryBatch, key_array, key_order
from strata.storage.blocks import decode_columns, encode_columns
from strata.storage.config import StorageConfig
from strata.storage.layerfile import LayerFile
from strata.storage.layerwriter import LayerWriter
from strata.storage.memtable import Memtable
from strata.storage.naming import LayerName
from strata.storage.values import TOMBSTONE, Entry, PageImage, Value, WalRecord

from .conftest import Model, append_redo, rk

CFG = StorageConfig(memtable_bytes=1 << 20, block_bytes=300, cache_pages=0,
                    background_maintenance=False)
# keys whose bytes end in zeros (numpy S18 items would lose them)
ZERO_TAIL = [Key.rel_block(1663, 5, 16384, 0, 0), Key.rel_block(1663, 5, 16384, 0, 256),
             Key.cluster(0), Key.rel_size(1663, 5, 16384, 0)]


def batch_of(rows: list[tuple[Key, int, Value]]) -> EntryBatch:
    return EntryBatch.from_entries(Entry(k.to_bytes(), lsn, v) for k, lsn, v in rows)


def test_from_offsets_builds_the_documented_contract() -> None:
    keys = key_array([k.to_bytes() for k in ZERO_TAIL[:3]])
    b = EntryBatch.from_offsets(keys, np.array([10, 10, 11]), np.array([0, 1, 3], np.uint8),
                                np.array([0, 4, 6, 6]), b"pagerc")
    assert [e for e in b.entries()] == [
        Entry(ZERO_TAIL[0].to_bytes(), 10, PageImage(b"page")),
        Entry(ZERO_TAIL[1].to_bytes(), 10, WalRecord(b"rc")),
        Entry(ZERO_TAIL[2].to_bytes(), 11, TOMBSTONE)]
    assert b.key_at(2) == ZERO_TAIL[2].to_bytes() and len(b.key_at(2)) == 18


@pytest.mark.parametrize("what, build, message", [
    ("dtype", lambda k: (k.view("S18"), [1, 2], [0, 0], [0, 1, 2], b"ab"), "dtype V18"),
    ("lengths", lambda k: (k, [1], [0, 0], [0, 1, 2], b"ab"), "column lengths"),
    ("offsets", lambda k: (k, [1, 2], [0, 0], [0, 1, 3], b"ab"), "offsets"),
])
def test_from_offsets_refuses_malformed_columns(what: str, build, message: str) -> None:  # type: ignore[no-untyped-def]
    keys = key_array([rk(1).to_bytes(), rk(2).to_bytes()])
    k, lsns, kinds, offsets, data = build(keys)
    with pytest.raises(ValueError, match=message):
        EntryBatch.from_offsets(k, np.array(lsns), np.array(kinds, np.uint8),
                                np.array(offsets), data)


@pytest.mark.parametrize("rows, message", [
    ([(rk(1), 5, PageImage(b"x"))], "at or below ingested_lsn"),
    ([(rk(1), 20, PageImage(b"x")), (rk(2), 15, PageImage(b"y"))], "must not decrease"),
    ([(Key(0xFF), 20, PageImage(b"x"))], "reserved"),
])
def test_put_batch_refuses_rows_breaking_the_contract_and_puts_nothing(
        tmp_path: Path, rows: list[tuple[Key, int, Value]], message: str) -> None:
    with PageStore.open(tmp_path, append_redo, CFG, background=False) as ps:
        ps.put(rk(9), 10, PageImage(b"first"))
        ps.advance(10)
        with pytest.raises(ValueError, match=f"row .*{message}"):
            ps.put_batch(batch_of(rows))
        assert list(ps.scan(KeyRange.everything(), 30)) == [(rk(9), b"first")]


def test_put_batch_refuses_a_tombstone_with_a_value(tmp_path: Path) -> None:
    keys = key_array([rk(1).to_bytes()])
    b = EntryBatch.from_offsets(keys, np.array([20]), np.array([3], np.uint8),
                                np.array([0, 1]), b"x")
    with PageStore.open(tmp_path, append_redo, CFG, background=False) as ps, \
            pytest.raises(ValueError, match="tombstone with a value"):
        ps.put_batch(b)


rows_strategy = st.lists(
    st.tuples(st.integers(0, 5), st.integers(0, 2),
              st.sampled_from(["image", "rec", "init", "tomb"]), st.binary(max_size=40)),
    min_size=1, max_size=120)


def _rows(spec: list[tuple[int, int, str, bytes]]) -> list[tuple[Key, int, Value]]:
    out: list[tuple[Key, int, Value]] = []
    lsn = 100
    for key, step, kind, data in spec:
        lsn += step  # step 0: the same LSN again (and maybe the same key: last wins)
        v: Value = {"image": PageImage(data), "rec": WalRecord(data),
                    "init": WalRecord(data, True), "tomb": TOMBSTONE}[kind]
        out.append((ZERO_TAIL[key % 4] if key < 4 else rk(key), lsn, v))
    return out


@settings(max_examples=60, deadline=None)
@given(spec=rows_strategy, cut=st.integers(1, 5))
def test_put_batch_equals_put_per_entry_in_reads_and_layer_bytes(
        tmp_path_factory: pytest.TempPathFactory, spec: list[tuple[int, int, str, bytes]],
        cut: int) -> None:
    """put per entry (the reference) and put_batch in `cut` batches: the same reads at
    every LSN before and after the flush, and the same layer file, byte for byte."""
    rows = _rows(spec)
    model = Model()
    for k, lsn, v in rows:
        model.put(k, lsn, v)
    root = tmp_path_factory.mktemp("eq")
    a = PageStore.open(root / "a", append_redo, CFG, background=False)
    b = PageStore.open(root / "b", append_redo, CFG, background=False)
    try:
        for k, lsn, v in rows:
            a.put(k, lsn, v)
        step = max(1, len(rows) // cut)
        for i in range(0, len(rows), step):
            b.put_batch(batch_of(rows[i:i + step]))
        last = rows[-1][1]
        for ps in (a, b):
            ps.advance(last)
        lsns = sorted({lsn for _, lsn, _ in rows} | {99, last + 1})
        for ps in (a, b):
            for lsn in lsns:
                assert list(ps.scan(KeyRange.everything(), lsn)) == model.scan(lsn)
            ps.flush()
            for lsn in lsns:
                for k in {k for k, _, _ in rows}:
                    assert ps.get_page(k, lsn) == model.get(k, lsn), (k, lsn)
        fa = sorted((root / "a").glob("*.delta"))
        fb = sorted((root / "b").glob("*.delta"))
        assert [f.name for f in fa] == [f.name for f in fb]
        assert [f.read_bytes() for f in fa] == [f.read_bytes() for f in fb]
    finally:
        a.close()
        b.close()


@settings(max_examples=60, deadline=None)
@given(spec=rows_strategy, cuts=st.lists(st.integers(0, 120), max_size=6))
def test_a_batch_written_in_slices_is_the_file_written_whole(
        tmp_path_factory: pytest.TempPathFactory, spec: list[tuple[int, int, str, bytes]],
        cuts: list[int]) -> None:
    """`LayerWriter.add_batch` of consecutive slices of a sorted batch (the flush's
    parts, `flush.cut_in_parts`) writes the file `add_batch` of the whole batch
    writes, byte for byte: blocks continue across the slices."""
    b = batch_of(_rows(spec)).sorted()
    n = len(b)
    bounds = sorted({0, n, *(c for c in cuts if c < n)})
    name = LayerName.delta(b.key_at(0), Key.from_bytes(b.key_at(n - 1)).next().to_bytes(),
                           int(b.lsns.min()), int(b.lsns.max()) + 1)
    root = tmp_path_factory.mktemp("slices")
    files = []
    for sub, parts in (("whole", [b]), ("sliced", [b.slice(x, y) for x, y in
                                                   itertools.pairwise(bounds)])):
        (root / sub).mkdir()
        w = LayerWriter(root / sub, block_bytes=CFG.block_bytes, zstd_level=CFG.zstd_level)
        for part in parts:
            w.add_batch(part)
        files.append((root / sub / w.finish(name).name.filename()).read_bytes())
    assert files[0] == files[1]


def test_memtable_runs_keep_last_put_and_any_put_order() -> None:
    mt = Memtable()
    model: dict[tuple[bytes, int], Value] = {}
    rnd = np.random.default_rng(4)
    for i in range(400):
        k = rk(int(rnd.integers(0, 9))).to_bytes()
        lsn = int(rnd.integers(1, 60))  # any order, repeats
        v = PageImage(b"%d" % i)
        mt.put(k, lsn, v)
        model[(k, lsn)] = v
        if i % 37 == 0:  # reads between puts seal runs
            want = sorted((kk, ll) for kk, ll in model if kk == k)
            assert [(e.key, e.lsn) for e in mt.get(k, 0, 100)] == want
    got = [(e.key, e.lsn, e.value) for e in mt.scan(rk(0).to_bytes(), rk(99).to_bytes())]
    assert got == [(k, lsn, model[(k, lsn)]) for k, lsn in sorted(model)]
    fm, rest = mt.freeze(1, 30)
    assert [(e.key, e.lsn) for e in fm.batch.entries()] == sorted(x for x in model if x[1] < 30)
    assert len(rest) == sum(1 for x in model if x[1] >= 30)


@pytest.mark.parametrize("seed", range(12))
def test_key_order_equals_sorting_the_key_bytes(seed: int) -> None:
    """The three-integer-column sort against numpy's sort of the S18 view: keys that
    differ in any byte (or share whole columns, which it skips), with and without LSNs
    among equal keys, ties in row order."""
    rnd = np.random.default_rng(seed)
    n = int(rnd.integers(1, 4000))
    raw = np.zeros((n, 18), dtype=np.uint8)
    for col in rnd.choice(18, size=int(rnd.integers(1, 5)), replace=False):
        raw[:, col] = rnd.integers(0, int(rnd.choice([2, 3, 256])), n)  # few values: ties
    keys = raw.view(KEY_DTYPE).ravel()
    lsns = rnd.integers(0, 4, n)
    want = np.argsort(keys.view(KEY_ORDER), kind="stable")
    assert np.array_equal(key_order(keys), want)
    assert np.array_equal(key_order(keys.view(KEY_ORDER)), want)  # S18 keys too
    assert np.array_equal(key_order(keys, lsns),
                          np.lexsort((np.arange(n), lsns, keys.view(KEY_ORDER))))
    assert np.array_equal(key_order(keys[:0]), np.arange(0))


@pytest.mark.parametrize("lsn_ordered", [True, False])
def test_merged_runs_equal_sorting_them_together_and_the_last_put_wins(
        lsn_ordered: bool) -> None:
    """`EntryBatch.merged` of sorted runs (in LSN order, repeating the boundary LSN;
    or in any order) equals `concat(...).sorted()` and a model where the later put of
    a (key, lsn) wins."""
    rnd = np.random.default_rng(7 if lsn_ordered else 8)
    runs, model, lsn = [], {}, 1
    for r in range(6):
        rows = []
        for i in range(int(rnd.integers(1, 300))):
            if lsn_ordered:
                lsn += int(rnd.integers(0, 2))  # repeats, across runs too
            else:
                lsn = int(rnd.integers(1, 50))
            key = rk(int(rnd.integers(0, 7)))
            rows.append((key, lsn, PageImage(b"%d.%d" % (r, i))))
            model[(key.to_bytes(), lsn)] = rows[-1][2]
        runs.append(batch_of(rows).sorted())
    got = EntryBatch.merged(runs)
    assert [(e.key, e.lsn, e.value) for e in got.entries()] == \
        [(k, lsn, model[(k, lsn)]) for k, lsn in sorted(model)]
    again = EntryBatch.concat(runs).sorted()
    assert [(e.key, e.lsn) for e in again.entries()] == [(e.key, e.lsn) for e in got.entries()]


@pytest.mark.parametrize("lsn_deltas", [True, False], ids=["v5", "v3"])
def test_column_block_round_trips_and_rejects_malformed_columns(lsn_deltas: bool) -> None:
    b = batch_of([(ZERO_TAIL[0], 5, PageImage(b"abc")), (ZERO_TAIL[0], 6, WalRecord(b"d")),
                  (ZERO_TAIL[1], 5, TOMBSTONE)])
    raw = encode_columns(b, lsn_deltas)
    assert list(decode_columns(raw, lsn_deltas).entries()) == list(b.entries())
    # the lsns column: 5, 6, 5 as written (v3), or 5, then +1 and -1 (v5)
    assert np.frombuffer(raw, ">i8", 3, 4 + 18 * 3).tolist() == (
        [5, 1, -1] if lsn_deltas else [5, 6, 5])
    n = 3
    kinds_at, ends_at = 4 + 26 * n, 4 + 27 * n
    bad_kind = bytearray(raw)
    bad_kind[kinds_at] = 9
    with pytest.raises(ValueError, match="unknown value kind"):
        decode_columns(bytes(bad_kind), lsn_deltas)
    bad_len = bytearray(raw)
    bad_len[ends_at + 3] = 7  # the first value is 7 bytes long: too long for the block
    with pytest.raises(ValueError, match="tile"):
        decode_columns(bytes(bad_len), lsn_deltas)
    with pytest.raises(ValueError):
        decode_columns(raw[:-1], lsn_deltas)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.tuples(st.integers(0, 40), st.integers(1, 3),
                                   st.sampled_from(["image", "rec", "init", "tomb"]),
                                   st.binary(max_size=20)), max_size=12), min_size=2, max_size=8),
       st.booleans(), st.integers(0, 1 << 40))
def test_decoding_many_blocks_equals_decoding_each(
        blocks: list[list[tuple[int, int, str, bytes]]], lsn_deltas: bool, shift: int) -> None:
    """`decode_many_columns` gives the rows of every block, in order, with the values
    and LSNs each block holds (empty blocks too; with LSN deltas, each block's
    sums start again at its first row); a bad block in the run is refused as
    `decode_columns` refuses it."""
    from strata.storage.blocks import decode_many_columns

    raws = []
    want = []
    for spec in blocks:
        rows = sorted({(k, lsn + shift): v for k, lsn, v in _rows(spec)}.items())
        want += [(k.to_bytes(), lsn) for (k, lsn), _ in rows]
        raws.append(encode_columns(batch_of([(k, lsn, v) for (k, lsn), v in rows]), lsn_deltas))
    many = decode_many_columns(raws, lsn_deltas)
    assert [(e.key, e.lsn) for e in many.entries()] == want
    assert list(many.entries()) == [e for r in raws
                                    for e in decode_columns(r, lsn_deltas).entries()]
    nonempty = [i for i, r in enumerate(raws) if len(decode_columns(r, lsn_deltas))]
    if nonempty:
        i = nonempty[-1]
        bad = bytearray(raws[i])
        bad[4 + 26 * len(decode_columns(raws[i], lsn_deltas))] = 9  # the block's first kind
        with pytest.raises(ValueError, match="unknown value kind"):
            decode_many_columns([*raws[:i], bytes(bad), *raws[i + 1:]], lsn_deltas)
    with pytest.raises(ValueError):
        decode_many_columns([*raws[:-1], raws[-1] + b"x"], lsn_deltas)


def test_damaged_v3_columns_are_corruption_naming_the_block(tmp_path: Path) -> None:
    """A block whose CRC is right but whose columns are not (a writer bug, not bit rot):
    read whole, and its head alone (v6)."""
    import zstandard

    from strata.storage.blocks import head_size
    from strata.storage.layerfile import FOOTER, HEADER, INDEX_ENTRY, crc32c
    from strata.storage.layerwriter import write_layer
    from strata.storage.naming import LayerName

    name = LayerName.delta(rk(0).to_bytes(), rk(5).to_bytes(), 1, 100)
    write_layer(tmp_path, name, [Entry(rk(1).to_bytes(), 5, PageImage(b"abc"))],
                block_bytes=1000, zstd_level=1)
    p = tmp_path / name.filename()
    data = bytearray(p.read_bytes())
    f = LayerFile(p)
    blk = f.blocks[0]
    head_bytes, values = f._block_frames(0)
    raw = bytearray(head_bytes + (values or b""))
    fo, fl = f.filter_span
    section = bytes(data[fo:fo + fl])  # the key filter (v7), kept as written
    f.close()
    raw[4 + 26] = 7  # kind 7
    cut = head_size(1)
    zc = zstandard.ZstdCompressor()
    hc, vc = zc.compress(bytes(raw[:cut])), zc.compress(bytes(raw[cut:]))
    comp = hc + vc
    index_off = blk.offset + len(comp) + len(section)
    index = INDEX_ENTRY.pack(*blk._replace(comp_len=len(comp), entries=1, crc=crc32c(comp),
                                           head_len=len(hc), head_crc=crc32c(hc)))
    head = FOOTER.pack(index_off, len(index), 1, 1, crc32c(index), 0, b"STRATAFT")
    foot = FOOTER.pack(index_off, len(index), 1, 1, crc32c(index), crc32c(head[:28]),
                       b"STRATAFT")
    p.write_bytes(bytes(data[:HEADER.size]) + comp + section + index + foot)
    f = LayerFile(p)
    try:
        with pytest.raises(CorruptionError, match="block 0 undecodable: unknown value kind"):
            f.verify()
        with pytest.raises(CorruptionError, match=f"at offset {blk.offset}"):
            f.get(rk(1).to_bytes(), 0, 100)
        with pytest.raises(CorruptionError, match="block 0 head undecodable: unknown value kind"):
            f.block_heads(b"", b"\xff" * 19)
    finally:
        f.close()


chain_strategy = st.lists(st.tuples(st.integers(0, 2), st.sampled_from(
    ["rec"] * 8 + ["image", "init", "tomb"])), min_size=1, max_size=150)


@settings(max_examples=60, deadline=None)
@given(spec=chain_strategy, interval=st.integers(1, 6), before=st.booleans(),
       bad=st.booleans())
def test_flush_chain_cut_keeps_every_read_and_bounds_every_chain(
        tmp_path_factory: pytest.TempPathFactory, spec: list[tuple[int, str]], interval: int,
        before: bool, bad: bool) -> None:
    """Invariant 14 column-wise: after the flush no read replays more than `interval`
    deltas of a key redo can rebuild, and every read equals the dict model's (a key
    whose redo fails keeps its deltas, and still reads as before)."""
    broken = rk(2)

    def redo(key: Key, base: bytes | None, records: list[WalRecord]) -> bytes:
        if bad and key == broken:
            raise RedoError("no redo for this key")
        return append_redo(key, base, records)

    cfg = StorageConfig(memtable_bytes=1 << 20, block_bytes=256, cache_pages=0,
                        background_maintenance=False, flush_image_interval=interval)
    ps = PageStore.open(tmp_path_factory.mktemp("cut"), redo, cfg, background=False)
    model = Model()
    try:
        lsn = 10
        if before:  # part of each chain already in a layer: the cut reads its base
            for k in range(3):
                for v in (PageImage(b"B%d" % k), WalRecord(b"+")):
                    lsn += 1
                    ps.put(rk(k), lsn, v)
                    model.put(rk(k), lsn, v)
            ps.advance(lsn)
            ps.flush()
        for k, kind in spec:
            lsn += 1
            v: Value = {"rec": WalRecord(b"%d," % lsn), "image": PageImage(b"I%d|" % lsn),
                        "init": WalRecord(b"W%d|" % lsn, True), "tomb": TOMBSTONE}[kind]
            ps.put(rk(k), lsn, v)
            model.put(rk(k), lsn, v)
        ps.advance(lsn)
        ps.flush()
        for at in range(10, lsn + 1):
            for k in range(3):
                m0 = ps.metrics().deltas_applied
                try:
                    got = ps.get_page(rk(k), at)
                except RedoError:
                    assert bad and rk(k) == broken  # only the broken key can fail
                    continue
                assert got == model.get(rk(k), at), (k, at)
                if rk(k) != broken or not bad:
                    assert ps.metrics().deltas_applied - m0 <= interval + (1 if before else 0)
    finally:
        ps.close()


def test_keys_ending_in_zero_bytes_survive_every_path(tmp_path: Path) -> None:
    with PageStore.open(tmp_path, append_redo, CFG, background=False) as ps:
        rows = [(k, 10 + i, PageImage(b"v%d" % i)) for i, k in enumerate(ZERO_TAIL)]
        ps.put_batch(batch_of(rows))
        ps.advance(20)
        ps.flush()
        ps.compact()
        ps.create_image_layers(threshold=0)
        got = dict(ps.scan(KeyRange.everything(), 20))
        assert got == {k: v.data for k, _, v in rows}  # type: ignore[union-attr]
        assert all(ps.get_page(k, 20) == v.data for k, _, v in rows)  # type: ignore[union-attr]
    assert KEY_DTYPE.itemsize == 18


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=40), min_size=1, max_size=30), st.data())
def test_values_in_equals_value_at_per_row_with_one_buffer_or_several(
        values: list[bytes], data: st.DataObject) -> None:
    """`values_in` (the read and flush paths' per-chain values) is `value_at` row by
    row, also after `with_values` has put some rows in a buffer of their own."""
    rows = [(rk(1, i), 10 + i, WalRecord(v)) for i, v in enumerate(values)]
    b = batch_of(rows)
    n = len(b)
    cut = sorted(data.draw(st.sets(st.integers(0, n - 1))))
    if cut:
        b = b.with_values(np.array(cut, dtype=np.int64), 0,
                          [bytes([i % 256]) * (i % 9 + 1) for i in cut])
    a = data.draw(st.integers(0, n))
    z = data.draw(st.integers(a, n))
    assert b.values_in(a, z) == [b.value_at(i) for i in range(a, z)]
    assert b.values_in(0, n) == [b.value_at(i) for i in range(n)]
