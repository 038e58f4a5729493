"""Pages a lazy file system rebuilt ahead of its reader, held as the windows they
were rebuilt in.

Fed by `lazyview.LazyView` (a window: the pages [first, end) of one fork, one
contiguous buffer, as a scan rebuilt them or a helper left them); read back by
the same view, a span of pages at a time. No I/O, no PostgreSQL knowledge.

Why windows and not one entry per page: a cold scan serves every page once,
so the per-page dictionary entry, its copy, and the join of a read's pages
were a tenth of the file system's CPU (py-spy, BENCHMARKS.md). A read that
lies inside one window is now one slice of its buffer.

Invariants:
- A window's buffer is never written while the cache holds it. bytes and
  bytearray given to `put` are kept as they are and belong to the cache from then
  on; a memoryview is copied, unless it is put with an `owner` (a helper's shared
  memory: no copy of 8 MB per window). Such a window borrows the owner's memory
  until `release(owner)`, which copies every window still borrowing it: the
  caller releases an owner before the memory is written again.
- A span handed out by `take` stays valid after its window leaves the cache; a
  span of borrowed memory, until its owner is released and written again (the
  caller uses such a span before that: `lazyview` replies with it at once).
- Pages are immutable at the view's LSN, so windows may overlap: any window
  holding a block holds the same bytes for it.
- A window leaves when every one of its pages was taken once (the kernel's page
  cache keeps what was served), or, oldest first, when the pages held exceed
  `max_pages`; the window just put always stays.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from collections.abc import Hashable

BLCKSZ = 8192

ForkId = tuple[int, int, int, int]  # (spc, db, rel, fork)


class _Window:
    __slots__ = ("buf", "end", "fid", "first", "owner", "seen", "unread")

    def __init__(self, fid: ForkId, first: int, buf: bytes | bytearray | memoryview,
                 owner: Hashable | None) -> None:
        self.fid = fid
        self.owner = owner
        self.first = first
        self.end = first + len(buf) // BLCKSZ
        self.buf = memoryview(buf)
        self.seen = bytearray(self.end - first)
        self.unread = self.end - first


class WindowCache:
    """See the module docstring."""

    def __init__(self, max_pages: int) -> None:
        self.max_pages = max_pages
        self.pages = 0  # pages held, over all windows (read or not)
        self._lru: OrderedDict[int, _Window] = OrderedDict()
        self._firsts: dict[ForkId, list[int]] = {}
        self._windows: dict[ForkId, list[_Window]] = {}
        self._borrowing: dict[Hashable, list[_Window]] = {}
        self._longest = 0

    def put(self, fid: ForkId, first: int, buf: bytes | bytearray | memoryview,
            owner: Hashable | None = None) -> None:
        """Blocks [first, first + len(buf) / BLCKSZ) of fork `fid`; a memoryview with an
        `owner` is borrowed, not copied (module docstring)."""
        if len(buf) % BLCKSZ:
            raise ValueError(f"a window of {len(buf)} bytes is not whole pages")
        if not len(buf):
            return
        if owner is None and isinstance(buf, memoryview):
            buf = bytes(buf)
        w = _Window(fid, first, buf, owner)
        if owner is not None:
            self._borrowing.setdefault(owner, []).append(w)
        firsts = self._firsts.setdefault(fid, [])
        i = bisect.bisect_right(firsts, first)
        firsts.insert(i, first)
        self._windows.setdefault(fid, []).insert(i, w)
        self._lru[id(w)] = w
        self.pages += w.end - w.first
        self._longest = max(self._longest, w.end - w.first)
        while self.pages > self.max_pages and len(self._lru) > 1:
            self._drop(next(iter(self._lru.values())))

    def release(self, owner: Hashable) -> int:
        """Copy every window still borrowing `owner`'s memory; returns how many."""
        windows = self._borrowing.pop(owner, [])
        for w in windows:
            w.buf = memoryview(bytes(w.buf))
            w.owner = None
        return len(windows)

    def holds(self, fid: ForkId, blk: int) -> bool:
        return self._find(fid, blk) is not None

    def take(self, fid: ForkId, blk: int, end: int) -> memoryview | None:
        """Pages [blk, min(end, e)) of the window [f, e) holding `blk`, marked as
        read; None when no window holds `blk`."""
        w = self._find(fid, blk)
        if w is None:
            return None
        stop = min(end, w.end)
        i, j = blk - w.first, stop - w.first
        w.unread -= (j - i) - w.seen.count(1, i, j)
        w.seen[i:j] = b"\x01" * (j - i)
        if w.unread == 0:
            self._drop(w)
        return w.buf[i * BLCKSZ:j * BLCKSZ]

    def _find(self, fid: ForkId, blk: int) -> _Window | None:
        firsts = self._firsts.get(fid)
        if not firsts:
            return None
        windows = self._windows[fid]
        i = bisect.bisect_right(firsts, blk) - 1
        while i >= 0 and firsts[i] > blk - self._longest:  # the newest of those holding it
            if windows[i].end > blk:
                return windows[i]
            i -= 1
        return None

    def _drop(self, w: _Window) -> None:
        del self._lru[id(w)]
        if w.owner is not None:
            borrowing = self._borrowing[w.owner]
            borrowing.remove(w)
            if not borrowing:
                del self._borrowing[w.owner]
        windows = self._windows[w.fid]
        i = windows.index(w)
        del windows[i]
        del self._firsts[w.fid][i]
        if not windows:
            del self._windows[w.fid], self._firsts[w.fid]
        self.pages -= w.end - w.first
