"""Following the manifest cheaply: an idle poll reads the header alone, and a commit
builds on the manifest it holds unless another role committed since.

A maintenance process polls the manifest every `maintenance_poll_seconds` (0.2 s).
Before, each poll decoded the whole file: a 30-minute pgbench history at scale 100
leaves ~2,500 layers, and the idle maintenance process spent ~6 % of a core doing
it (BENCHMARKS.md, twenty-sixth session)."""

from __future__ import annotations

from pathlib import Path

import pytest

from strata.pagestore import PageStore
from strata.storage.config import StorageConfig
from strata.storage.maintenance import open_maintainer
from strata.storage.manifest import Manifest, committed_generation, load_manifest
from strata.storage.naming import MANIFEST_NAME
from strata.storage.values import PageImage, WalRecord

from .conftest import append_redo, rk

CFG = StorageConfig(memtable_bytes=1500, block_bytes=400, target_file_bytes=2500,
                    l0_compaction_trigger=2, image_delta_threshold=0, cache_pages=0,
                    background_maintenance=False)


def put_and_flush(ps: PageStore, lsn: int, n: int = 20) -> int:
    for i in range(n):
        lsn += 8
        blk = i % 7
        ps.put(rk(blk), lsn, PageImage(b"p%d" % lsn) if i < 7 else WalRecord(b"r%d" % lsn))
    ps.advance(lsn)
    ps.flush()
    return lsn


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many times a manifest file was decoded, counted as it happens."""
    calls: list[int] = []
    real = Manifest.decode.__func__  # type: ignore[attr-defined]

    def counting(cls: type[Manifest], data: bytes, path: Path | str = MANIFEST_NAME) -> Manifest:
        calls.append(1)
        return real(cls, data, path)  # type: ignore[no-any-return]

    monkeypatch.setattr(Manifest, "decode", classmethod(counting))
    return calls


def test_the_header_names_the_committed_generation(tmp_path: Path) -> None:
    d = tmp_path / "layers"
    assert committed_generation(d) is None  # no store
    with PageStore.open(d, append_redo, CFG, background=False) as ps:
        put_and_flush(ps, 0)
        m = load_manifest(d)
        assert m is not None and committed_generation(d) == m.generation > 0
    data = (d / MANIFEST_NAME).read_bytes()
    (d / MANIFEST_NAME).write_bytes(b"NOTMAGIC" + data[8:])
    assert committed_generation(d) is None  # a full load says what is wrong
    (d / MANIFEST_NAME).write_bytes(data[:20])
    assert committed_generation(d) is None


def test_an_idle_poll_decodes_nothing_and_a_commit_is_followed(tmp_path: Path,
                                                              decodes: list[int]) -> None:
    d = tmp_path / "layers"
    with PageStore.open(d, append_redo, CFG, background=False, maintenance=False) as ps:
        lsn = put_and_flush(ps, 0)
        reader = PageStore.open_readonly(d, append_redo, CFG)
        m = open_maintainer(d, append_redo, CFG)
        try:
            decodes.clear()
            for _ in range(50):
                assert not reader.refresh()
                assert not m.store.refresh()
            assert decodes == []  # the header alone, 100 times
            lsn = put_and_flush(ps, lsn)
            assert reader.refresh() and m.store.refresh()
            assert decodes  # a moved manifest is read whole
            gen = ps.store.manifest.generation
            assert reader.store.manifest.generation == m.store.manifest.generation == gen
            assert reader.get_page(rk(3), lsn) == ps.get_page(rk(3), lsn)
        finally:
            reader.close()
            m.store.close()


def test_a_commit_after_the_other_roles_commit_keeps_both(tmp_path: Path,
                                                           decodes: list[int]) -> None:
    """The writer's flush after the maintainer committed builds on the manifest on
    disk, not on the stale one it holds: no edit is lost."""
    d = tmp_path / "layers"
    with PageStore.open(d, append_redo, CFG, background=False, maintenance=False) as ps:
        lsn = 0
        for _ in range(3):
            lsn = put_and_flush(ps, lsn)
        before, want = lsn, {blk: ps.get_page(rk(blk), lsn) for blk in range(7)}
        m = open_maintainer(d, append_redo, CFG)
        try:
            while m.run_once():  # compaction (and images): commits the writer never saw
                pass
            done = {le.name for le in m.store.manifest.layers}
        finally:
            m.store.close()
        held = ps.store.manifest.generation
        decodes.clear()
        lsn = put_and_flush(ps, lsn)
        assert decodes  # its own manifest was stale: the one on disk was read
        on_disk = load_manifest(d)
        assert on_disk is not None and on_disk.generation > held + 1
        names = {le.name for le in on_disk.layers}
        assert done <= names  # the maintainer's layers are all still there
        assert len(names - done) == 1  # and the new L0
        decodes.clear()
        lsn2 = put_and_flush(ps, lsn)
        assert decodes == []  # nobody else committed: the held manifest was built on
        assert load_manifest(d).generation == on_disk.generation + 1  # type: ignore[union-attr]
    with PageStore.open(d, append_redo, CFG, background=False) as ps:
        for blk, v in want.items():
            assert ps.get_page(rk(blk), before) == v
        assert ps.get_page(rk(0), lsn2) is not None
