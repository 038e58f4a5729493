"""The lazy file system's cache of windows (historical/pagecache.py) against a
model: a dictionary of the pages put and not read yet. Random windows (some
overlapping), random spans taken, and a budget small enough to evict."""

from __future__ import annotations

import random

import pytest

from strata.historical.pagecache import BLCKSZ, WindowCache

FID = (1663, 5, 16384, 0)


def _page(fid: tuple[int, int, int, int], blk: int) -> bytes:
    """A page whose bytes say which block of which fork it is."""
    return (fid[2] * 1_000_003 + fid[3] * 7 + blk).to_bytes(8, "little") * (BLCKSZ // 8)


def _window(fid: tuple[int, int, int, int], first: int, n: int) -> bytearray:
    return bytearray().join(_page(fid, b) for b in range(first, first + n))


def test_a_span_inside_one_window_is_its_pages_and_a_fully_read_window_leaves() -> None:
    c = WindowCache(max_pages=100)
    c.put(FID, 10, _window(FID, 10, 8))
    span = c.take(FID, 12, 15)
    assert span is not None and bytes(span) == b"".join(_page(FID, b) for b in range(12, 15))
    assert c.take(FID, 9, 12) is None  # block 9 was never put
    tail = c.take(FID, 15, 40)  # a span stops at its window's end
    assert tail is not None and len(tail) == 3 * BLCKSZ
    assert c.pages == 8 and c.holds(FID, 10)
    c.take(FID, 10, 12)  # the last unread pages: the window leaves
    assert c.pages == 0 and not c.holds(FID, 10)
    assert bytes(span) == b"".join(_page(FID, b) for b in range(12, 15))  # still valid


def test_the_oldest_window_leaves_first_but_never_the_one_just_put() -> None:
    c = WindowCache(max_pages=10)
    c.put(FID, 0, _window(FID, 0, 6))
    c.put(FID, 100, _window(FID, 100, 6))  # 12 > 10: the first goes
    assert not c.holds(FID, 0) and c.holds(FID, 100) and c.pages == 6
    c.put(FID, 200, _window(FID, 200, 30))  # alone above the budget: it stays
    assert c.holds(FID, 200) and not c.holds(FID, 100) and c.pages == 30


def test_a_memoryview_is_copied_and_a_window_that_is_not_whole_pages_is_refused() -> None:
    c = WindowCache(max_pages=10)
    shared = bytearray(_window(FID, 0, 2))
    c.put(FID, 0, memoryview(shared))
    shared[:] = bytes(len(shared))  # the helper's memory is reused
    span = c.take(FID, 0, 2)
    assert span is not None and bytes(span) == _window(FID, 0, 2)
    with pytest.raises(ValueError, match="not whole pages"):
        c.put(FID, 0, b"x" * (BLCKSZ + 1))


def test_a_borrowed_window_is_not_copied_until_its_owner_is_released() -> None:
    """A memoryview put with an owner is the window itself (a write to it shows);
    `release` copies every window still borrowing it (later writes do not show),
    and a window that left the cache is no longer the owner's to copy."""
    c = WindowCache(max_pages=4)
    shared = bytearray(_window(FID, 0, 4))
    c.put(FID, 0, memoryview(shared)[:2 * BLCKSZ], owner="slot1")
    c.put(FID, 2, memoryview(shared)[2 * BLCKSZ:], owner="slot1")
    shared[:8] = b"borrowed"
    first = c.take(FID, 0, 1)
    assert first is not None and bytes(first[:8]) == b"borrowed"  # no copy was made
    c.take(FID, 1, 2)  # window [0, 2) fully read: it leaves
    assert c.release("slot1") == 1  # only window [2, 4) was still borrowing
    assert c.release("slot1") == 0
    shared[2 * BLCKSZ:] = bytes(2 * BLCKSZ)  # the owner writes its memory again
    span = c.take(FID, 2, 4)
    assert span is not None and bytes(span) == _window(FID, 2, 2)
    c.put(FID, 0, memoryview(shared)[:BLCKSZ], owner="slot2")
    c.put(FID, 10, _window(FID, 10, 4))  # over budget: the borrowed one leaves
    assert not c.holds(FID, 0) and c.release("slot2") == 0


@pytest.mark.parametrize("seed", range(6))
def test_random_windows_and_spans_match_a_model(seed: int) -> None:
    rnd = random.Random(seed)
    forks = [FID, (1663, 5, 16384, 1), (1663, 5, 16390, 0)]
    c = WindowCache(max_pages=rnd.choice([20, 64, 1000]))
    held: dict[tuple[tuple[int, int, int, int], int], int] = {}  # page -> window serial
    for serial in range(400):
        fid = rnd.choice(forks)
        if rnd.random() < 0.4:
            first, n = rnd.randrange(0, 120), rnd.randrange(1, 24)
            c.put(fid, first, _window(fid, first, n))
            held.update({(fid, b): serial for b in range(first, first + n)})
            continue
        blk = rnd.randrange(0, 140)
        span = c.take(fid, blk, blk + rnd.randrange(1, 30))
        if span is None:
            continue  # never put, evicted, or read whole: the model cannot say which
        assert (fid, blk) in held, "a page that was never put"
        n = len(span) // BLCKSZ
        assert bytes(span) == b"".join(_page(fid, b) for b in range(blk, blk + n))
        assert c.pages == sum(w.end - w.first for w in c._lru.values())  # the accounting
    assert c.pages <= max(c.max_pages, 24)
