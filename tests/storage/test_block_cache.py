"""The process's cache of decoded layer blocks (storage/cache.py `BlockCache`):
bounded by raw bytes, least recently used out first, and what range reads of a
layer file leave in it."""

from __future__ import annotations

from pathlib import Path

import pytest

from strata.storage import cache
from strata.storage.cache import BlockCache
from strata.storage.layerfile import LayerFile
from strata.storage.layerwriter import write_layer
from strata.storage.naming import LayerName
from strata.storage.values import Entry, WalRecord

from .conftest import rk


def test_blocks_go_least_recently_used_first_once_their_bytes_pass_the_limit() -> None:
    c = BlockCache(100)
    c.put("a", "A", 40)
    c.put("b", "B", 40)
    assert c.get("a") == "A"  # a is now the most recent
    c.put("c", "C", 40)  # 120 > 100: b goes, not a
    assert (c.get("a"), c.get("b"), c.get("c")) == ("A", None, "C")
    assert c.held_bytes == 80 and len(c) == 2
    c.put("d", "D", 101)  # above the limit: never held
    assert c.get("d") is None and c.held_bytes == 80
    c.put("a", "A2", 10)  # replaced, its bytes recounted
    assert c.get("a") == "A2" and c.held_bytes == 50
    c.resize(20)
    assert (c.get("c"), c.get("a"), c.held_bytes) == (None, "A2", 10)
    c.resize(0)
    assert len(c) == 0 and c.held_bytes == 0


def test_range_reads_share_edge_blocks_and_stay_within_the_bound(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Windows of a scan that cut blocks decode each edge block once while the cache
    holds it, and however many files and windows, the bytes held stay under the
    bound; the entries read are those of the file either way."""
    blocks = BlockCache(4000)
    monkeypatch.setattr(cache, "BLOCKS", blocks)
    from strata.storage import layerfile
    monkeypatch.setattr(layerfile, "BLOCKS", blocks)
    files = []
    for n in range(6):
        name = LayerName.delta(rk(0).to_bytes(), rk(400).to_bytes(), 10 * n + 1, 10 * n + 10)
        write_layer(tmp_path, name, [Entry(rk(k).to_bytes(), 10 * n + 5, WalRecord(b"x" * 30))
                                     for k in range(400)], block_bytes=1000, zstd_level=1)
        files.append(LayerFile(tmp_path / name.filename()))
    decoded: list[int] = []
    real = LayerFile._block_frames

    def counted(self: LayerFile, i: int, *a: object) -> tuple[bytes, bytes | None]:
        decoded.append(i)
        return real(self, i, *a)  # type: ignore[arg-type]

    monkeypatch.setattr(LayerFile, "_block_frames", counted)
    try:
        f = files[0]
        whole = f.batch_range(b"", b"\xff" * 19)
        decoded.clear()
        got = [f.batch_range(rk(a).to_bytes(), rk(a + 7).to_bytes()) for a in range(0, 400, 7)]
        assert [k for b in got for k in b.keys.tolist()] == whole.keys.tolist()
        # each window cuts at most one block at either edge; its right edge block is
        # its next window's left one, decoded once while the cache holds it
        assert len(decoded) == len(set(decoded)) == len(f.blocks)
        for f in files:  # many files' edge blocks: the bound holds
            for a in range(0, 400, 13):
                f.batch_range(rk(a).to_bytes(), rk(a + 13).to_bytes())
                assert blocks.held_bytes <= 4000
        assert len(blocks) > 1
    finally:
        for f in files:
            f.close()
