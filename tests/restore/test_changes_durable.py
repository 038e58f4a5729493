"""A restore-family reader (diff, history) never reads above what its snapshot
holds: before a read at a point the writer has not flushed, it asks the writer
to flush through that point, then reads; without a writer it waits and then
fails with a message naming the point."""

from __future__ import annotations

import pytest

from strata.errors import RestoreError, StrataError
from strata.lsn import Lsn
from strata.restore.changes import StoreChanges

pytestmark = pytest.mark.unit


class Reader:
    """A read-only store snapshot: durable through `durable_lsn`; `published` is
    what a refresh would see (the writer's newest manifest)."""

    def __init__(self, durable: int) -> None:
        self.durable_lsn = Lsn(durable)
        self.published = Lsn(durable)
        self.reads: list[tuple[object, Lsn]] = []

    def refresh(self) -> None:
        self.durable_lsn = self.published

    def get_page(self, key: object, lsn: Lsn) -> bytes:
        assert lsn <= self.durable_lsn, "read above the snapshot"
        self.reads.append((key, lsn))
        return b"page"


def test_a_read_above_the_snapshot_asks_the_writer_to_flush_first() -> None:
    reader = Reader(100)
    asked: list[Lsn] = []

    def flush(lsn: Lsn) -> Lsn:
        asked.append(lsn)
        reader.published = lsn
        return lsn

    changes = StoreChanges(reader, flush, timeout=0.5)
    assert changes.page(1663, 5, 16384, 0, Lsn(500)) == b"page"
    assert asked == [Lsn(500)]
    assert changes.page(1663, 5, 16384, 0, Lsn(300)) == b"page"  # covered: no new request
    assert asked == [Lsn(500)]


def test_a_read_within_a_newer_manifest_only_refreshes() -> None:
    reader = Reader(100)
    reader.published = Lsn(900)
    changes = StoreChanges(reader, lambda lsn: pytest.fail("flush asked"), timeout=0.5)
    assert changes.slru_page(0, 0, Lsn(800)) == b"page"


def test_without_a_writer_the_read_fails_naming_the_point() -> None:
    reader = Reader(100)

    def flush(lsn: Lsn) -> Lsn:
        raise StrataError("no answer to 'flush'")

    changes = StoreChanges(reader, flush, timeout=0.2)
    with pytest.raises(RestoreError, match="0/1F4 is not in the layer store yet"):
        changes.page(1663, 5, 16384, 0, Lsn(500))
    assert reader.reads == []
