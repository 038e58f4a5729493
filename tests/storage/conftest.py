"""Storage test plugin: a test-only record kind and redo, small configs, stores.

Test redo ("append"): a page is its base (or b"" with will_init / no base) with every
record's bytes appended, oldest first. Storage must call it with exactly the right
base and records for reads to match the dict model.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from strata.key import Key
from strata.pagestore import PageStore
from strata.storage.config import StorageConfig
from strata.storage.values import PageImage, Tombstone, Value, WalRecord


def append_redo(key: Key, base: bytes | None, records: list[WalRecord]) -> bytes:
    if base is None and not records[0].will_init:
        # a chain with nothing under it: mark it so a wrong base is visible
        base = b"<none>"
    return (base or b"") + b"".join(r.data for r in records)


class Model:
    """The reference: key -> [(lsn, value)], read with the same rules and redo."""

    def __init__(self) -> None:
        self.data: dict[Key, dict[int, Value]] = {}

    def put(self, key: Key, lsn: int, value: Value) -> None:
        self.data.setdefault(key, {})[lsn] = value

    def get(self, key: Key, lsn: int) -> bytes | None:
        versions = sorted((item for item in self.data.get(key, {}).items() if item[0] <= lsn),
                          reverse=True)
        chain: list[Value] = []
        for _, v in versions:
            chain.append(v)
            if not isinstance(v, WalRecord) or v.will_init:
                break
        if not chain:
            return None
        oldest = chain[-1]
        base: bytes | None = None
        if isinstance(oldest, PageImage):
            base, recs = oldest.data, chain[-2::-1]
        elif isinstance(oldest, Tombstone):
            recs = chain[-2::-1]
        else:
            recs = chain[::-1]
        if not recs:
            return base
        assert all(isinstance(r, WalRecord) for r in recs)
        return append_redo(key, base, recs)  # type: ignore[arg-type]

    def scan(self, lsn: int, start: Key | None = None, end: Key | None = None) -> list[tuple[Key, bytes]]:
        out = []
        for k in sorted(self.data):
            if (start is not None and k < start) or (end is not None and k >= end):
                continue
            v = self.get(k, lsn)
            if v is not None:
                out.append((k, v))
        return out


def rk(blk: int, rel: int = 16384) -> Key:
    return Key.rel_block(1663, 5, rel, 0, blk)


TINY = StorageConfig(memtable_bytes=600, block_bytes=200, target_file_bytes=700,
                     l0_compaction_trigger=3, image_delta_threshold=2, cache_pages=64,
                     background_maintenance=False)


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return tmp_path / "layers"


@pytest.fixture
def open_store(store_dir: Path) -> Iterator[PageStore]:
    ps = PageStore.open(store_dir, append_redo, TINY, background=False)
    try:
        yield ps
    finally:
        ps.close()
