"""Image creation builds the chains of a window in one `scan.WindowRedo.into` call
(`images._built_in_slots`) and leaves to the redo's `__call__` the chains `into`
does not build: values that are not a slot's size, keys redo fails for (left out
of the images), chains `into` leaves. The image layers it writes are the same
entries, byte for byte, as those written with a redo that has no `into` (one key at
a time). The real chains against the Python reference:
tests/reconstruct/test_window_redo.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from strata.errors import RedoError
from strata.key import Key
from strata.pagestore import PageStore
from strata.storage.config import StorageConfig
from strata.storage.scan import WindowRedo
from strata.storage.values import PageImage, WalRecord

from .conftest import rk
from .test_flush_window import SHORT, FixedRedo, _page, chain_strategy, value_of

CFG = StorageConfig(memtable_bytes=4 << 20, block_bytes=1 << 16, cache_pages=0,
                    background_maintenance=False, flush_image_interval=0)


class KeyByKey:
    """The same redo without `into`: image creation calls it one key at a time."""

    def __init__(self) -> None:
        self.inner = FixedRedo(set())

    def __call__(self, key: Key, base: bytes | None, records: list[WalRecord]) -> bytes:
        return self.inner(key, base, records)


assert not isinstance(KeyByKey(), WindowRedo)


def _fill(ps: PageStore, spec: list[tuple[int, str]]) -> int:
    lsn = 10
    for k in range(3):  # a page (SHORT: 5 bytes) and a record below the spec's rows
        img = b"short" if rk(k) == SHORT else _page(b"B%d" % k)
        for v in (PageImage(img), WalRecord(b"+")):
            lsn += 1
            ps.put(rk(k), lsn, v)
    for k, kind in spec:
        lsn += 1
        ps.put(rk(k), lsn, value_of(kind, lsn))
    ps.advance(lsn)
    ps.flush()
    return lsn


def _image_entries(ps: PageStore) -> list[tuple[bytes, int, int, bytes]]:
    out = []
    for la in ps.store.view().layer_map.images:
        b = la.file.batch_range(la.name.key_start, la.name.key_end, 0, 1 << 62)
        out += [(b.key_at(i), int(b.lsns[i]), int(b.kinds[i]), b.value_at(i))
                for i in range(len(b))]
    return sorted(out)


@settings(max_examples=50, deadline=None)
@given(spec=chain_strategy, leave=st.sets(st.integers(0, 3), max_size=3))
def test_images_built_in_one_call_are_the_images_built_key_by_key(
        tmp_path_factory: pytest.TempPathFactory, spec: list[tuple[int, str]],
        leave: set[int]) -> None:
    window = FixedRedo(leave)
    made = []
    for redo in (window, KeyByKey()):
        ps = PageStore.open(tmp_path_factory.mktemp("imgw"), redo, CFG, background=False)
        try:
            lsn = _fill(ps, spec)
            want: dict[int, bytes | str | None] = {}
            for k in range(3):
                try:
                    want[k] = ps.get_page(rk(k), lsn)
                except RedoError:
                    want[k] = "error"
            ps.create_image_layers(threshold=0)
            made.append(_image_entries(ps))
            for k in range(3):
                if want[k] != "error":
                    assert ps.get_page(rk(k), lsn) == want[k]
        finally:
            ps.close()
    assert made[0] == made[1]
    # each key is in the images exactly when it has a value there: BROKEN (rk(0))
    # only when it needs no redo (a lone image); SHORT's 32-byte value, built by
    # __call__, is
    keys = {Key.from_bytes(e[0]) for e in made[0]}
    assert keys == {rk(k) for k in range(3) if want[k] not in ("error", None)}


def test_a_page_chain_is_built_by_into_and_the_rest_by_call(store_dir: Path) -> None:
    redo = FixedRedo(set())
    ps = PageStore.open(store_dir, redo, CFG, background=False)
    try:
        _fill(ps, [(2, "rec"), (2, "rec")])
        built = redo.built
        ps.create_image_layers(threshold=0)
        # rk(2)'s page chain in the one call; SHORT's 5-byte page is not a slot's
        # size and BROKEN fails: both left to __call__ (BROKEN then left out)
        assert redo.built - built == 1
        keys = [Key.from_bytes(e[0]) for e in _image_entries(ps)]
        assert keys == [rk(1), rk(2)]
    finally:
        ps.close()
