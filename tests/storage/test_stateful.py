"""Model-based test: put / advance / flush / compact_l0 / create_image_layers / gc /
reopen interleaved with reads at random LSNs, against the dict model, with the
test-only "append" record kind and redo."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from strata.errors import LsnOutOfRangeError
from strata.key import KeyRange
from strata.pagestore import PageStore
from strata.storage import flush
from strata.storage.config import StorageConfig
from strata.storage.layermap import ReadStats, read_key
from strata.storage.tools import verify_store
from strata.storage.values import TOMBSTONE, PageImage, Value, WalRecord

from .conftest import Model, append_redo, rk

CFG = StorageConfig(memtable_bytes=300, block_bytes=120, target_file_bytes=400,
                    l0_compaction_trigger=2, image_delta_threshold=1, cache_pages=16,
                    background_maintenance=False)

values = st.one_of(
    st.builds(lambda n: PageImage(b"I%d." % n), st.integers(0, 999)),
    st.builds(lambda n: WalRecord(b"+%d" % n), st.integers(0, 999)),
    st.builds(lambda n: WalRecord(b"W%d." % n, True), st.integers(0, 999)),
    st.just(TOMBSTONE),
)


class StoreMachine(RuleBasedStateMachine):
    @initialize()
    def setup(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="strata-stateful-"))
        self.ps = PageStore.open(self.dir / "layers", append_redo, CFG, background=False)
        self.model = Model()
        self.lsn = 0  # LSN of the record being put (advance not yet called for it)
        self.ingested = 0

    def teardown(self) -> None:
        if hasattr(self, "ps"):
            self.ps.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    @rule(step=st.integers(1, 40), keys=st.lists(st.integers(0, 7), min_size=1, max_size=3,
                                                 unique=True), vals=st.lists(values, min_size=3,
                                                                             max_size=3))
    def put(self, step: int, keys: list[int], vals: list[Value]) -> None:
        self.lsn = max(self.lsn, self.ingested) + step
        for k, v in zip(keys, vals, strict=False):
            self.ps.put(rk(k), self.lsn, v)
            self.model.put(rk(k), self.lsn, v)

    @precondition(lambda self: self.lsn >= self.ps.retention_lsn)
    @rule(step=st.integers(1, 20), lo=st.integers(0, 7), width=st.integers(1, 8))
    def delete_range(self, step: int, lo: int, width: int) -> None:
        """A relation drop: tombstones for every key present just before."""
        self.lsn = max(self.lsn, self.ingested) + step
        kr = KeyRange(rk(lo), rk(lo + width))
        present = [k for k, _ in self.model.scan(self.lsn - 1, kr.start, kr.end)]
        assert self.ps.delete_range(kr, self.lsn) == len(present)
        for k in present:
            self.model.put(k, self.lsn, TOMBSTONE)

    @rule()
    def advance(self) -> None:
        self.ingested = max(self.ingested, self.lsn)
        self.ps.advance(self.ingested)

    @rule()
    def freeze(self) -> None:
        """Seal the memtable but leave it unflushed: reads must see frozen memtables."""
        self.advance()
        self.ps.store.freeze()

    @rule()
    def flush_one(self) -> None:
        before = int(self.ps.durable_lsn)
        flush.flush_one(self.ps.store)
        assert self.ps.durable_lsn >= before

    @rule()
    def flush(self) -> None:
        self.advance()
        self.ps.flush()
        assert self.ps.durable_lsn == self.ingested

    @rule()
    def compact_l0(self) -> None:
        self.ps.compact(force=True)

    @rule(threshold=st.sampled_from([0, 0, 1, 3]))
    def create_image_layers(self, threshold: int) -> None:
        self.ps.create_image_layers(threshold=threshold)

    @precondition(lambda self: self.ps.durable_lsn > self.ps.retention_lsn)
    @rule(frac=st.floats(0, 1))
    def gc(self, frac: float) -> None:
        r, d = int(self.ps.retention_lsn), int(self.ps.durable_lsn)
        self.ps.set_retention_lsn(r + int((d - r) * frac))

    @rule()
    def reopen(self) -> None:
        """A restart: unflushed puts are lost; ingest re-starts from durable_lsn."""
        durable = int(self.ps.durable_lsn)
        self.ps.close()
        self.ps = PageStore.open(self.dir / "layers", append_redo, CFG, background=False)
        assert self.ps.durable_lsn == durable
        for versions in self.model.data.values():
            for lsn in [x for x in versions if x > durable]:
                del versions[lsn]
        self.lsn = self.ingested = durable

    @rule(key=st.integers(0, 8), frac=st.floats(0, 1.1))
    def get_page(self, key: int, frac: float) -> None:
        r = int(self.ps.retention_lsn)
        lsn = r + int((self.lsn + 5 - r) * frac)
        assert self.ps.get_page(rk(key), lsn) == self.model.get(rk(key), lsn)

    @rule(frac=st.floats(0, 1.1), lo=st.integers(0, 8), width=st.integers(0, 9))
    def scan(self, frac: float, lo: int, width: int) -> None:
        r = int(self.ps.retention_lsn)
        lsn = r + int((self.lsn + 5 - r) * frac)
        kr = KeyRange(rk(lo), rk(lo + width))
        assert list(self.ps.scan(kr, lsn)) == self.model.scan(lsn, kr.start, kr.end)

    @precondition(lambda self: self.ps.retention_lsn > 0)
    @rule(key=st.integers(0, 7))
    def read_below_retention_raises(self, key: int) -> None:
        with pytest.raises(LsnOutOfRangeError):
            self.ps.get_page(rk(key), int(self.ps.retention_lsn) - 1)

    @invariant()
    def watermarks_ordered(self) -> None:
        if hasattr(self, "ps"):
            assert self.ps.retention_lsn <= self.ps.durable_lsn <= self.ps.ingested_lsn

    @invariant()
    def every_key_reads_right_at_the_watermarks(self) -> None:
        """After every step: all keys at retention/durable/ingested/latest, through the
        cache and around it, and one full scan."""
        if not hasattr(self, "ps"):
            return
        r, d = int(self.ps.retention_lsn), int(self.ps.durable_lsn)
        view = self.ps.store.view()
        for lsn in {r, (r + d) // 2, d, int(self.ps.ingested_lsn), self.lsn}:
            for k in range(8):
                want = self.model.get(rk(k), lsn)
                assert read_key(view, rk(k), lsn, append_redo, ReadStats()) == want, (k, lsn)
                assert self.ps.get_page(rk(k), lsn) == want, (k, lsn)
        assert list(self.ps.scan(KeyRange.everything(), d)) == self.model.scan(d)


StoreMachine.TestCase.settings = settings(
    max_examples=100, stateful_step_count=50, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
test_store_matches_model = StoreMachine.TestCase


def test_stateful_store_leaves_verifiable_files(tmp_path: Path) -> None:
    """A fixed run through every operation, then full verification of the files."""
    ps = PageStore.open(tmp_path, append_redo, CFG, background=False)
    model = Model()
    lsn = 0
    for i in range(80):
        lsn += 8
        ps.put(rk(i % 6), lsn, WalRecord(b"+%d" % i, will_init=i % 10 == 0))
        model.put(rk(i % 6), lsn, WalRecord(b"+%d" % i, will_init=i % 10 == 0))
        ps.advance(lsn)
        if i % 13 == 12:
            ps.flush()
        if i % 29 == 28:
            ps.compact()
            ps.create_image_layers(threshold=0)
            ps.set_retention_lsn(int(ps.durable_lsn) // 2)
    ps.flush()
    assert verify_store(tmp_path).ok
    for k in range(6):
        assert ps.get_page(rk(k), lsn) == model.get(rk(k), lsn)
    ps.close()
