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
- A window's buffer is never written after `put` (a memoryview given to `put`,
  such as a helper's shared memory, is copied; bytes and bytearray are kept as
  they are and belong to the cache from then on). A span handed out by `take`
  stays valid after its window leaves the cache.
- Pages are immutable at the view's LSN, so windows may overlap: any window
  holding a block holds the same bytes for it.
- A window leaves when every one of its pages was taken once (the kernel's page
  cache keeps what was served), or, oldest first, when the pages held exceed
  `max_pages`; the window just put always stays.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict

BLCKSZ = 8192

ForkId = tuple[int, int, int, int]  # (spc, db, rel, fork)


class _Window:
    __slots__ = ("buf", "end", "fid", "first", "seen", "unread")

    def __init__(self, fid: ForkId, first: int, buf: bytes | bytearray) -> None:
        self.fid = fid
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
        self._longest = 0

    def put(self, fid: ForkId, first: int, buf: bytes | bytearray | memoryview) -> None:
        """Blocks [first, first + len(buf) / BLCKSZ) of fork `fid`."""
        if len(buf) % BLCKSZ:
            raise ValueError(f"a window of {len(buf)} bytes is not whole pages")
        if not len(buf):
            return
        w = _Window(fid, first, bytes(buf) if isinstance(buf, memoryview) else buf)
        firsts = self._firsts.setdefault(fid, [])
        i = bisect.bisect_right(firsts, first)
        firsts.insert(i, first)
        self._windows.setdefault(fid, []).insert(i, w)
        self._lru[id(w)] = w
        self.pages += w.end - w.first
        self._longest = max(self._longest, w.end - w.first)
        while self.pages > self.max_pages and len(self._lru) > 1:
            self._drop(next(iter(self._lru.values())))

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
        windows = self._windows[w.fid]
        i = windows.index(w)
        del windows[i]
        del self._firsts[w.fid][i]
        if not windows:
            del self._windows[w.fid], self._firsts[w.fid]
        self.pages -= w.end - w.first
