"""One suite, many implementations: memtable, frozen memtable, delta layer, image
layer and the whole store answer the same reads as a plain dict model."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from strata.key import MAX_KEY, MIN_KEY, Key, KeyRange
from strata.pagestore import PageStore
from strata.storage import scan as scan_mod
from strata.storage.batch import EntryBatch
from strata.storage.layerfile import LayerFile
from strata.storage.layermap import Layer, LayerMap, ReadStats, ReadView, read_key
from strata.storage.layerwriter import write_layer
from strata.storage.manifest import LayerEntry, Level
from strata.storage.memtable import Memtable
from strata.storage.naming import LayerName
from strata.storage.scan import scan_values
from strata.storage.values import TOMBSTONE, Entry, PageImage, Value, WalRecord

from .conftest import TINY, Model, append_redo, rk


def chains_dataset(seed: int = 7) -> list[tuple[Key, int, Value]]:
    rnd = random.Random(seed)
    out = []
    lsn = 16
    for _ in range(120):
        lsn += rnd.choice([1, 8, 24])
        for k in rnd.sample(range(12), rnd.randint(1, 3)):
            r = rnd.random()
            v: Value
            if r < 0.2:
                v = PageImage(b"I%d." % lsn)
            elif r < 0.3:
                v = WalRecord(b"W%d." % lsn, will_init=True)
            elif r < 0.36:
                v = TOMBSTONE
            else:
                v = WalRecord(b"+%d" % lsn)
            out.append((rk(k), lsn, v))
    return out


def snapshot_dataset() -> list[tuple[Key, int, Value]]:
    return [(rk(k), 500, PageImage(b"snap%d" % k)) for k in range(0, 30, 2)]


class Reader:
    def __init__(self, get: Callable[[Key, int], bytes | None],
                 scan: Callable[[KeyRange, int], list[tuple[Key, bytes]]]) -> None:
        self.get, self.scan = get, scan


def _view_reader(view: ReadView) -> Reader:
    return Reader(lambda k, lsn: read_key(view, k, lsn, append_redo, ReadStats()),
                  lambda r, lsn: list(scan_values(view, r.start.to_bytes(), r.end.to_bytes(), lsn,
                                                  append_redo, ReadStats())))


def as_memtable(data: list[tuple[Key, int, Value]], d: Path) -> Reader:
    mt = Memtable()
    for k, lsn, v in data:
        mt.put(k.to_bytes(), lsn, v)
    return _view_reader(ReadView(mt, (), LayerMap()))


def as_frozen(data: list[tuple[Key, int, Value]], d: Path) -> Reader:
    mt = Memtable()
    for k, lsn, v in data:
        mt.put(k.to_bytes(), lsn, v)
    fm, _ = mt.freeze(0, max(lsn for _, lsn, _ in data) + 1)
    return _view_reader(ReadView(Memtable(), (fm,), LayerMap()))


def _as_layer(data: list[tuple[Key, int, Value]], d: Path, image: bool) -> Reader:
    es = sorted(Entry(k.to_bytes(), lsn, v) for k, lsn, v in data)  # type: ignore[type-var]
    lsns = [e.lsn for e in es]
    if image:
        assert len(set(lsns)) == 1
        name = LayerName.image(MIN_KEY.to_bytes(), MAX_KEY.to_bytes(), lsns[0])
    else:
        name = LayerName.delta(MIN_KEY.to_bytes(), MAX_KEY.to_bytes(), 0, max(lsns) + 1)
    w = write_layer(d, name, es, block_bytes=120, zstd_level=1)
    layer = Layer(LayerEntry(name, Level.IMAGE if image else Level.L0, w.size),
                  LayerFile(d / name.filename()))
    return _view_reader(ReadView(Memtable(), (), LayerMap((layer,))))


def as_delta(data: list[tuple[Key, int, Value]], d: Path) -> Reader:
    return _as_layer(data, d, image=False)


def as_image(data: list[tuple[Key, int, Value]], d: Path) -> Reader:
    return _as_layer(data, d, image=True)


def as_store(data: list[tuple[Key, int, Value]], d: Path) -> Reader:
    ps = PageStore.open(d / "store", append_redo, TINY, background=False)
    by_lsn: dict[int, list[tuple[Key, Value]]] = {}
    for k, lsn, v in data:
        by_lsn.setdefault(lsn, []).append((k, v))
    for i, lsn in enumerate(sorted(by_lsn)):
        ps.put_batch(EntryBatch.from_entries(Entry(k.to_bytes(), lsn, v) for k, v in by_lsn[lsn]))
        ps.advance(lsn)
        if i % 17 == 16:
            ps.flush()
        if i % 40 == 39:
            ps.compact(force=True)
    ps.flush()
    ps.create_image_layers(threshold=0)
    # and some entries left in the active memtable
    return Reader(ps.get_page, lambda r, lsn: list(ps.scan(r, lsn)))


IMPLS = {"memtable": as_memtable, "frozen": as_frozen, "delta": as_delta, "image": as_image,
         "store": as_store}
CASES = [(impl, ds) for impl in IMPLS for ds in ("chains", "snapshot") if
         not (impl == "image" and ds == "chains")]


@pytest.fixture(params=CASES, ids=[f"{i}-{d}" for i, d in CASES])
def case(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Reader, Model, list[int]]]:
    impl, ds = request.param
    data = chains_dataset() if ds == "chains" else snapshot_dataset()
    model = Model()
    for k, lsn, v in data:
        model.put(k, lsn, v)
    lsns = sorted({lsn for _, lsn, _ in data})
    probe = sorted({0, lsns[0] - 1, *lsns, *(x + 1 for x in lsns[::7]), lsns[-1] + 100})
    yield IMPLS[impl](data, tmp_path), model, probe


def test_get_matches_model_at_every_lsn(case: tuple[Reader, Model, list[int]]) -> None:
    reader, model, probe = case
    keys = [rk(k) for k in range(32)]
    for lsn in probe:
        for k in keys:
            assert reader.get(k, lsn) == model.get(k, lsn), (k, lsn)


def test_full_scan_matches_model(case: tuple[Reader, Model, list[int]]) -> None:
    reader, model, probe = case
    for lsn in [*probe[::3], probe[-1]]:
        assert reader.scan(KeyRange.everything(), lsn) == model.scan(lsn)


def test_sub_range_scan_is_sorted_and_bounded(case: tuple[Reader, Model, list[int]]) -> None:
    reader, model, probe = case
    r = KeyRange(rk(3), rk(9))
    lsn = probe[-1]
    got = reader.scan(r, lsn)
    assert got == model.scan(lsn, r.start, r.end)
    assert [k for k, _ in got] == sorted(k for k, _ in got)


@pytest.mark.parametrize("window", [1, 150, 600])
@pytest.mark.parametrize("impl", ["delta", "store"])
def test_scans_cut_into_windows_of_any_size_match_the_model(
        impl: str, window: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Range reads (and the store's compactions and images) cut into windows of a few
    blocks, or of one each, read what the model says: each window's edge blocks are
    decoded whole and cut, and a block across windows is read in both."""
    monkeypatch.setattr(scan_mod, "WINDOW_BYTES", window)
    cut = [0]
    whole = scan_mod.windows

    def counted(*a: object, **kw: object) -> Iterator[tuple[bytes, bytes]]:
        for w in whole(*a, **kw):  # type: ignore[arg-type]
            cut[0] += 1
            yield w

    monkeypatch.setattr(scan_mod, "windows", counted)
    data = chains_dataset(seed=window)
    model = Model()
    for k, lsn, v in data:
        model.put(k, lsn, v)
    reader = IMPLS[impl](data, tmp_path)
    lsns = sorted({lsn for _, lsn, _ in data})
    cut[0] = 0
    for lsn in [*lsns[::9], lsns[-1] + 1]:
        assert reader.scan(KeyRange.everything(), lsn) == model.scan(lsn), lsn
        r = KeyRange(rk(2), rk(10))
        assert reader.scan(r, lsn) == model.scan(lsn, r.start, r.end), lsn
    assert cut[0] > 2 * len(lsns[::9])  # the scans were cut, several windows each


def test_unknown_key_reads_as_absent(case: tuple[Reader, Model, list[int]]) -> None:
    reader, _, probe = case
    assert reader.get(Key.rel_block(1663, 5, 99999, 0, 0), probe[-1]) is None
    assert reader.get(rk(0), 0) is None
