"""timemap/FORMAT.md invariant 2: the store's watermark moves only once the time
map is durable up to it. `WalIngest.advance` keeps it (the pipeline publishes
through it); a probe store checks, at every `advance` of its watermark, what a
power cut would keep of ``timemap.dat`` at that moment (the fault-injecting
file system's durable state): every transaction end at or below the new
watermark must be there. A second test moves the watermark first and shows the
probe catches it."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from strata import durable
from strata.ingest.transam import TransamIngest
from strata.ingest.walingest import WalIngest
from strata.keyspace.cluster import ClusterState
from strata.lsn import Lsn
from strata.pagestore import PageStore
from strata.reconstruct.reconstruct import reconstruct_value
from strata.timemap.timemap import TimeMap
from tests.keyspace.test_keyspace import TRANSAM, sample_records
from tests.storage.faultfs import FaultFS


class ProbeStore:
    """The real store, with a check before its watermark moves."""

    def __init__(self, store: PageStore, ffs: FaultFS, timemap: TimeMap, scratch: Path) -> None:
        self._store, self._ffs, self._timemap, self._scratch = store, ffs, timemap, scratch
        self.checked = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def advance(self, lsn: int) -> None:
        kept = self._ffs.durable_bytes(self._timemap_path) or b""
        snap = self._scratch / f"power-cut-{self.checked}"
        snap.mkdir()
        (snap / "timemap.dat").write_bytes(kept)
        durable_ends = {e.start_lsn for e in TimeMap.open(snap, readonly=True).entries()}
        shutil.rmtree(snap)
        due = [e.start_lsn for e in self._timemap.entries() if e.end_lsn <= lsn]
        missing = [str(s) for s in due if s not in durable_ends]
        assert not missing, (f"the watermark moves to {Lsn(lsn)} while the transaction "
                             f"ends at {missing} are not durable in the time map")
        self.checked += 1
        self._store.advance(lsn)

    @property
    def _timemap_path(self) -> Path:
        assert self._timemap._path is not None
        return self._timemap._path


@pytest.fixture
def probed(tmp_path: Path) -> Iterator[tuple[WalIngest, ProbeStore]]:
    layers, tmdir, scratch = tmp_path / "layers", tmp_path / "timemap", tmp_path / "scratch"
    for d in (layers, tmdir, scratch):
        d.mkdir()
    ffs = FaultFS()
    ffs.track(layers)
    ffs.track(tmdir)
    with durable.using(ffs):
        store = PageStore.open(layers, reconstruct_value, background=False)
        timemap = TimeMap.open(tmdir)
        probe = ProbeStore(store, ffs, timemap, scratch)
        state = ClusterState.from_bytes((TRANSAM / "cluster_state_v1.bin").read_bytes())
        try:
            yield WalIngest(probe, timemap, TransamIngest(state),  # type: ignore[arg-type]
                            start_lsn=Lsn(0)), probe
        finally:
            store.close()
            timemap.close()


def _ingest_all(ingest: WalIngest) -> int:
    """Every sample record, publishing after each and flushing now and then;
    returns how many of them ended a transaction."""
    ends = 0
    for i, rec in enumerate(sample_records()):
        ingest.ingest(rec)
        ends += rec.xl_rmid == 1 and rec.xl_info & 0x70 in (0x00, 0x20)  # COMMIT / ABORT
        ingest.advance()
        if i % 7 == 6:
            ingest.store.flush()
    return ends


def test_the_watermark_moves_only_over_a_durable_time_map(
        probed: tuple[WalIngest, ProbeStore]) -> None:
    ingest, probe = probed
    assert _ingest_all(ingest) >= 2 and len(ingest.timemap) >= 2
    assert probe.checked >= len(sample_records())


def test_the_probe_catches_a_watermark_moved_before_the_sync(
        probed: tuple[WalIngest, ProbeStore], monkeypatch: pytest.MonkeyPatch) -> None:
    def advance_in_the_wrong_order(self: WalIngest, lsn: Lsn | None = None) -> None:
        self._pending.flush()
        target = self.last_lsn if lsn is None else lsn
        if target is not None:
            self.store.advance(target)
            self.timemap.sync()

    monkeypatch.setattr(WalIngest, "advance", advance_in_the_wrong_order)
    with pytest.raises(AssertionError, match="not durable in the time map"):
        _ingest_all(probed[0])
