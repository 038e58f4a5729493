"""The flush's chain cuts built through a `scan.WindowRedo` (`flush.cut_long_chains`:
one `into` call for every cut, chains on a base page, `__call__` for what `into`
leaves): with a window redo over fixed-size pages that builds the chains it is given
as the compiled one would and leaves a random part of them, a key redo fails for
and a key whose base below is not a page, every read after the flush equals the
same read before it (from the memtable), and no read replays more than the
interval. The real chains against the Python reference:
tests/reconstruct/test_window_redo.py."""

from __future__ import annotations

import hashlib
import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from strata.errors import RedoError
from strata.key import Key
from strata.pagestore import PageStore
from strata.storage import flush
from strata.storage.batch import EntryBatch
from strata.storage.config import StorageConfig
from strata.storage.scan import SLOT_BYTES, WindowRedo
from strata.storage.values import TOMBSTONE, PageImage, Value, ValueKind, WalRecord

from .conftest import rk

W = SLOT_BYTES
IMAGE, RECORD, INIT, TOMB = (int(k) for k in ValueKind)
BROKEN = rk(0)  # sorts first: the chains after its skipped ones move up
SHORT = rk(1)  # its base below is not a slot's size: left out of the call


def _page(tag: bytes) -> bytes:
    return (tag + bytes(W))[:W]


def value_of(kind: str, lsn: int) -> Value:
    """The value a chain_strategy step puts at `lsn`."""
    return {"rec": WalRecord(b"%d," % lsn), "image": PageImage(_page(b"I%d" % lsn)),
            "init": WalRecord(b"W%d|" % lsn, True), "tomb": TOMBSTONE}[kind]


class FixedRedo:
    """Pages of `W` bytes: a record replaces the first 32 bytes with a hash of them and
    the record (order matters), a will_init record starts from zeros; a chain with no
    page and no will_init record raises, and so does every chain of BROKEN. `into`
    builds what `__call__` would, with `base`, except the chains `leave` names."""

    def __init__(self, leave: set[int]) -> None:
        self.leave = leave
        self.built = 0

    def __call__(self, key: Key, base: bytes | None, records: list[WalRecord]) -> bytes:
        if key == BROKEN:
            raise RedoError("no redo for this key")
        page = None if base is None else bytearray(base)
        for r in records:
            if r.will_init:
                page = bytearray(W)
            if page is None:
                raise RedoError("no page to start from")
            page[:32] = hashlib.sha256(bytes(page[:32]) + r.data).digest()
        assert page is not None
        return bytes(page)

    def into(self, dst: memoryview | bytearray, width: int, batch: EntryBatch,
             first: np.ndarray, stop: np.ndarray, slots: np.ndarray,
             base: np.ndarray | None = None) -> np.ndarray:
        assert width == W
        done = np.zeros(len(first), dtype=bool)
        for c in range(len(first)):
            a, z, s = int(first[c]), int(stop[c]), int(slots[c])
            bc = -1 if base is None else int(base[c])
            assert -1 <= bc <= c
            own = bytes(dst[s * W:(s + 1) * W])
            dst[s * W:(s + 1) * W] = b"\xee" * W  # what is left must not be read
            if c in self.leave or Key.from_bytes(batch.key_at(a)) == BROKEN:
                continue
            page: bytes | None
            if bc == c:
                page = own
            elif bc >= 0:
                if not done[bc]:
                    continue
                page = bytes(dst[int(slots[bc]) * W:(int(slots[bc]) + 1) * W])
            elif batch.kinds[a] == IMAGE:
                page, a = batch.value_at(a), a + 1
            else:
                page, a = None, a + (batch.kinds[a] == TOMB)
            kinds = batch.kinds[a:z]
            if bc >= 0 and not np.isin(kinds, (RECORD, INIT)).all():
                continue
            try:
                out = self(Key.from_bytes(batch.key_at(a if a < z else a - 1)), page, [
                    WalRecord(batch.value_at(i), batch.kinds[i] == INIT) for i in range(a, z)])
            except RedoError:
                continue
            if len(out) != W:  # not a page: as C, leave it
                continue
            dst[s * W:(s + 1) * W] = out
            done[c] = True
            self.built += 1
        return done


assert isinstance(FixedRedo(set()), WindowRedo)

chain_strategy = st.lists(st.tuples(st.integers(0, 2), st.sampled_from(
    ["rec"] * 8 + ["image", "init", "tomb"])), min_size=1, max_size=150)


@settings(max_examples=60, deadline=None)
@given(spec=chain_strategy, interval=st.integers(1, 6), before=st.booleans(),
       leave=st.sets(st.integers(0, 40), max_size=10))
def test_cuts_built_in_one_call_keep_every_read_and_bound_every_chain(
        tmp_path_factory: pytest.TempPathFactory, spec: list[tuple[int, str]], interval: int,
        before: bool, leave: set[int]) -> None:
    redo = FixedRedo(leave)
    cfg = StorageConfig(memtable_bytes=4 << 20, block_bytes=1 << 16, cache_pages=0,
                        background_maintenance=False, flush_image_interval=interval)
    ps = PageStore.open(tmp_path_factory.mktemp("cutw"), redo, cfg, background=False)
    try:
        lsn = 10
        if before:  # part of each chain already in a layer: the cut reads its base
            for k in range(3):
                img = b"short" if rk(k) == SHORT else _page(b"B%d" % k)
                for v in (PageImage(img), WalRecord(b"+")):
                    lsn += 1
                    ps.put(rk(k), lsn, v)
            ps.advance(lsn)
            ps.flush()
        for k, kind in spec:
            lsn += 1
            ps.put(rk(k), lsn, value_of(kind, lsn))
        ps.advance(lsn)

        def reads() -> dict[tuple[int, int], bytes | str | None]:
            out: dict[tuple[int, int], bytes | str | None] = {}
            for at in range(10, lsn + 1):
                for k in range(3):
                    try:
                        out[(k, at)] = ps.get_page(rk(k), at)
                    except RedoError:
                        out[(k, at)] = "error"
            return out

        want = reads()
        ps.flush()
        assert reads() == want
        for at in range(10, lsn + 1):
            for k in (1, 2):  # BROKEN keeps its deltas
                m0 = ps.metrics().deltas_applied
                if want[(k, at)] != "error":
                    ps.get_page(rk(k), at)
                    assert ps.metrics().deltas_applied - m0 <= interval + (1 if before else 0)
    finally:
        ps.close()


@settings(max_examples=40, deadline=None)
@given(spec=chain_strategy, interval=st.integers(1, 6), part_bytes=st.integers(1, 400),
       ahead=st.lists(st.booleans(), min_size=1))
def test_cut_in_parts_is_the_whole_cut_split_between_keys(
        tmp_path_factory: pytest.TempPathFactory, spec: list[tuple[int, str]], interval: int,
        part_bytes: int, ahead: list[bool]) -> None:
    """`flush.cut_in_parts` (a helper thread cuts the next part while the flush writes
    this one, when `ahead()` says so): its parts, joined, are `cut_long_chains` of the
    whole batch, and every part but the first begins with a key's first row."""
    cfg = StorageConfig(memtable_bytes=4 << 20, block_bytes=1 << 16, cache_pages=0,
                        background_maintenance=False, flush_image_interval=interval)
    ps = PageStore.open(tmp_path_factory.mktemp("cutp"), FixedRedo(set()), cfg,
                        background=False)
    try:
        lsn = 10
        for k, kind in spec:
            lsn += 1
            ps.put(rk(k + 1), lsn, value_of(kind, lsn))  # (not BROKEN: its cuts fail either way)
        ps.advance(lsn)
        fm = ps.store.freeze()
        assert fm is not None
        whole = flush.cut_long_chains(ps.store, fm.batch)
        answers = itertools.cycle(ahead)
        parts = list(flush.cut_in_parts(ps.store, fm.batch, part_bytes, lambda: next(answers)))
        keys = {k for k, _ in spec}
        assert 1 <= len(parts) <= len(keys)
        for before, after in itertools.pairwise(parts):
            assert before.key_at(len(before) - 1) != after.key_at(0)
        # parts of a byte each: one per key
        assert len(list(flush.cut_in_parts(ps.store, fm.batch, 1))) == len(keys)
        joined = EntryBatch.concat(parts)
        assert joined.keys.tobytes() == whole.keys.tobytes()
        assert joined.lsns.tolist() == whole.lsns.tolist()
        assert joined.kinds.tolist() == whole.kinds.tolist()
        assert joined.values_in(0, len(joined)) == whole.values_in(0, len(whole))
        assert (whole.kinds == IMAGE).sum() >= (fm.batch.kinds == IMAGE).sum()
    finally:
        ps.close()
