"""The relation files of a lazy data directory at LSN X, read page by page.

Fed by a `StoreView` over a `PageReader` (the store opened read-only in the
file system process) and the catalog version / segment size of the cluster.
Feeds `lazyfs` (names, sizes and bytes of every relation segment file). Owns
an in-memory cache of pages rebuilt ahead of the reader and not read yet
(`pagecache.WindowCache`: the windows as rebuilt; a window leaves once every
page of it was read, the kernel's page cache keeping what was served); no file.

* The file list is `served.served_forks` of the REL_SIZE keys at X, cut into
  1 GB segments (`relseg_size` blocks) at the paths materialize would write.
* A read of blocks [a, b) of a fork is one range scan at X over
  [a, a + window) (`scan_pages`: the pages back to back, a Python object only
  for a page whose chain has records): the window doubles while a file is read sequentially (up to
  `max_window` blocks) and is b - a otherwise, so a full scan is a few range
  scans, not one GetPage per page. Pages beyond the request wait in the cache.
  "Sequentially" means: the first block not in the cache lies within
  `SEQ_SLACK` blocks of the frontier of one of the fork's last `MAX_STREAMS`
  streams. A parallel sequential scan's processes take chunks of one file in
  turn and their reads arrive out of order: one stream, not a random reader.
  But a miss of one page more than `SPARSE_GAP` blocks past a stream's frontier
  is a sparse reader (an index scan's leaf or heap pages, in order, with gaps):
  that page alone is rebuilt, not the gap, and the stream starts again from it;
  one page past a smaller gap doubles the window from 2 blocks, not 16. (At
  scale 100, 300 primary-key lookups had read most of the index in windows
  ahead: 1.35 -> 1.00 s; 3,000 lookups 3.93 -> 3.54 s; BENCHMARKS.md,
  thirty-fifth session.)
* `prefetch_catalogs` rebuilds the system catalogs' pages in a thread while
  the server starts (its first connection reads many of them); it pauses
  while the server's own reads come in.
* Every non-new page gets its checksum (pg_control says checksums are on);
  pg_class / pg_index pages are patched first (`catalog_patch`).
* Readahead uses the other cores: `start_helpers(n)` forks n helper processes
  (before the file system starts: no thread, no FUSE descriptor is inherited)
  that share the view as it was at the fork (the store's open layer files, the
  LSN). A window of at least `SPLIT_MIN` blocks is cut into n + 1 parts: the
  helpers rebuild theirs (pages, patches, checksums) while this process
  rebuilds the first; a helper leaves its pages in memory shared with this
  process and says so over its pipe (where sending a page over the pipe cost
  ~10 us). Its memory has 1 + `AHEAD_SLOTS` slots of `max_window` pages: the
  part of a shared window goes to slot 0 and is copied at once; windows ahead
  (below) take the other slots in turn, and the cache borrows them without a
  copy (`pagecache`: at scale 300 the copy was 7 % of this process's CPU, the
  bound of a cold scan there) until the slot is handed out again, when what is
  left of its window is copied. So a `read` is valid until the view's next
  read. A helper that fails
  or dies is dropped and its part rebuilt here (so a store error is reported
  by this process, as without helpers); a helper exits when the pipe closes
  (this process gone, even by kill -9) and at `close_helpers`. Sharing pays
  only when pages are dear: a page sent over the pipe costs this process a few
  microseconds, which is most of what a page read from an image costs. So a
  window is shared only while the pages this process rebuilt itself lately
  cost at least `SPLIT_MIN_US` each (a moving average). Measured
  (BENCHMARKS.md, bench_lazy_scan): always sharing, a helper took a cold
  count(*) from 1.95 to 1.38 s at scale 10 (delta chains) but from 6.9 to
  9.3 s at scale 100 (mostly images); with this rule it is neutral at both.
* Helpers also run ahead of a sequential reader: once a stream's window has
  grown to `RUN_AHEAD_MIN` blocks, each window it reaches is handed whole to
  an idle helper as soon as the window before it is served (`_run_ahead`), so
  the helper rebuilds the next window while this process serves the current
  one and the server scans it; the reader's first miss in that window takes
  the helper's pages (`_collect`, waiting for them if they are not there
  yet). A window no reader reached is collected into the cache when its
  helper is wanted for another. If the helper fails, the window is rebuilt
  here (a store error is then reported by this process). The helper is given
  the window but its first `ahead_share`, which this process rebuilds when the
  reader reaches it: both cores rebuild, and the helper's head start hides its
  part. The share starts at half while pages are dear (`SPLIT_MIN_US`, as
  above), else at none, and follows the helper (`next_share`): it grows by
  `SHARE_STEP` (up to `MAX_SHARE`) each time the reader, its own part done,
  finds the helper's part not ready, and shrinks by as much each time it is
  ready. Both cores then stay busy: at scale 100 (BENCHMARKS.md, twelfth
  session) with whole windows to the helper, this process waited for it
  1.3 s during a cold scan and the helper for its next window 0.6 s; with the
  share, the scan's iowait fell from 1.4-1.6 s to 0.4-0.6 s.
* A block the store has no value for is a zero page (a hole), as in
  materialize. A relation with WAL of an index AM without redo
  (`store_view.NO_REDO_YET_RMGRS`, none left) yields zero pages from there
  on (its indexes are invalid, never read). Any other error of the store
  propagates (the file system answers EIO: never wrong data).
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import logging
import mmap
import multiprocessing
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

from strata.errors import UnsupportedRecordError
from strata.historical.catalog_patch import CatalogFacts, am_oids, patch_page
from strata.historical.materialize import database_dir
from strata.historical.pagecache import WindowCache
from strata.historical.served import ServedFork, facts_of, served_forks
from strata.historical.source import BLCKSZ, FORK_SUFFIX
from strata.historical.store_view import NO_REDO_YET_RMGRS, StoreView
from strata.key import Key
from strata.pg.constants import ForkNumber
from strata.reconstruct.redo.page_ops import set_checksums

log = logging.getLogger(__name__)

FIRST_NORMAL_OBJECT_ID = 16384  # relfilenumbers below: system catalogs of initdb
_TEMPLATE_DBS = (1, 4)  # template1, template0
_YIELD_SECONDS = 0.02  # prefetching pauses while the server read this recently
SPLIT_MIN = 64  # blocks: a window at least this long is shared with the helpers
SPLIT_MIN_US = 40.0  # us: ... while a page rebuilt here costs at least this (average)
RUN_AHEAD_MIN = 256  # blocks: a stream's window this long runs ahead on a helper
SHARE_STEP = 0.0625  # how far `ahead_share` moves after each window collected
MAX_SHARE = 0.75  # ... and the largest part of a window ahead this process keeps
AHEAD_SLOTS = 3  # windows ahead a helper's memory holds, borrowed by the cache
_COST_WEIGHT = 0.3  # weight of the newest window in that average
_PR_SET_PDEATHSIG = 1


def default_helpers() -> int:
    """Helper processes per lazy file system: $STRATA_LAZY_HELPERS if set, else one
    per core beyond the first, at most 3."""
    env = os.environ.get("STRATA_LAZY_HELPERS", "").strip()
    if env.isdigit():
        return int(env)
    return max(0, min(3, (os.cpu_count() or 1) - 1))


@dataclass(eq=False)
class _Helper:
    """One forked readahead helper: its pid, this process's end of its pipe, and the
    shared memory it leaves the pages it rebuilt in: 1 + `AHEAD_SLOTS` slots of
    `max_window` pages (slot 0 for the parts of a shared window, copied at once;
    the others in turn for windows ahead, which the cache borrows)."""

    pid: int
    conn: Connection
    shm: mmap.mmap
    next_slot: int = 0  # of the slots ahead, the one the next window ahead goes to


@dataclass
class _Ahead:
    """A window [first, end) of `fork` ahead of `stream`: a helper is rebuilding
    [mid, end); [first, mid) is rebuilt here when the reader gets there."""

    helper: _Helper
    fork: ServedFork
    first: int
    mid: int
    end: int
    stream: _Stream
    slot: int


@dataclass(frozen=True, slots=True)
class SegmentFile:
    """One relation segment file: blocks [first, first + nblocks) of `fork`."""

    fork: ServedFork
    segno: int
    first: int
    nblocks: int

    @property
    def size(self) -> int:
        return self.nblocks * BLCKSZ


SEQ_SLACK = 64  # blocks: a miss this close to a stream's frontier continues the stream
# ... but a miss of one page more than this past it is a sparse reader's (`LazyView._fetch`):
# a page read alone costs about what this many pages of a window do
SPARSE_GAP = 8
MAX_STREAMS = 8  # streams followed per fork


@dataclass
class _Stream:
    """One sequential reader of a fork: the end of the last window it had rebuilt
    (its frontier) and that window's length."""

    ahead: int = 0
    window: int = 0


@dataclass
class LazyView:
    """See the module docstring. `files` maps a path relative to the data directory
    to its segment file."""

    source: StoreView
    catver_dir: str
    segblocks: int
    invalid_index_ams: tuple[str, ...] = ()
    max_window: int = 1024  # blocks (8 MB) fetched by one scan at most
    cache_pages: int = 8192  # at most 64 MB of windows of pages rebuilt ahead
    files: dict[str, SegmentFile] = field(default_factory=dict)
    _streams: dict[tuple[int, int, int, int], list[_Stream]] = field(default_factory=dict)
    _facts: dict[tuple[int, int], CatalogFacts | None] = field(default_factory=dict)
    _unsupported: set[tuple[int, int, int, int]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._cache = WindowCache(self.cache_pages)
        self._helpers: list[_Helper] = []
        self._ahead: list[_Ahead] = []  # windows helpers rebuild ahead of streams
        self.helped_pages = 0  # pages the helpers rebuilt
        self.page_cost_us = SPLIT_MIN_US  # moving average of a page rebuilt here
        self.ahead_share: float | None = None  # of a window ahead rebuilt here (None: unset)
        self._am_oids = am_oids(self.invalid_index_ams)
        self._lock = threading.Lock()
        self._last_read = 0.0
        for f in served_forks(self.source.relations()):
            d = database_dir(Path(), f.spc, f.db, self.catver_dir)  # relative
            nsegs = max(1, -(-f.nblocks // self.segblocks))
            for seg in range(nsegs):
                first = seg * self.segblocks
                n = max(0, min(self.segblocks, f.nblocks - first))
                name = f"{f.rel}{FORK_SUFFIX[f.fork]}" + (f".{seg}" if seg else "")
                self.files[f"{d}/{name}"] = SegmentFile(f, seg, first, n)

    # -- reading ---------------------------------------------------------------------
    def read(self, path: str, offset: int, size: int) -> bytes | memoryview:
        """Bytes [offset, offset + size) of the segment file at `path` (short at EOF):
        a read within one cached window is a view of it, not a copy. Valid until
        this view's next read or fill (a view of a helper's memory is written
        again once its slot is handed out: `AHEAD_SLOTS`): use it at once (the
        file system replies with it) or copy it."""
        with self._lock:
            self._last_read = time.monotonic()
            return self._read(path, offset, size)

    def prefetch_catalogs(self, chunk: int = 16) -> int:
        """Rebuild the system catalogs' pages ahead (relfilenumber below 16384; shared
        catalogs first, then each database but the templates, newest first), a
        chunk at a time, so a new server's first connection finds them ready.
        Run in a thread while PostgreSQL starts. Returns: pages rebuilt."""
        def order(item: tuple[str, SegmentFile]) -> tuple[int, int]:
            f = item[1].fork
            return (0 if f.db == 0 else 1, -f.db)

        done = 0
        for _path, sf in sorted(self.files.items(), key=order):
            f = sf.fork
            if f.rel >= FIRST_NORMAL_OBJECT_ID or f.db in _TEMPLATE_DBS:
                continue
            for blk in range(sf.first, sf.first + sf.nblocks, chunk):
                n = min(chunk, sf.first + sf.nblocks - blk)
                while time.monotonic() - self._last_read < _YIELD_SECONDS:
                    time.sleep(_YIELD_SECONDS / 2)  # the server is reading: it goes first
                with self._lock:
                    if not self._cache.holds((f.spc, f.db, f.rel, f.fork), blk):
                        try:
                            self._fill(f, blk, blk + n)
                        except Exception:  # the server's own read will report it
                            log.warning("prefetching %s failed", _path, exc_info=True)
                            break
                        done += n
        return done

    def _read(self, path: str, offset: int, size: int) -> bytes | memoryview:
        sf = self.files[path]
        end = min(offset + size, sf.size)
        if offset >= end:
            return b""
        a, b = offset // BLCKSZ, -(-end // BLCKSZ)
        parts = self.pages(sf.fork, sf.first + a, sf.first + b)
        data = parts[0] if len(parts) == 1 else memoryview(b"".join(parts))
        lo = offset - a * BLCKSZ
        return data[lo:lo + end - offset]

    def pages(self, f: ServedFork, first: int, end: int) -> list[memoryview]:
        """Blocks [first, end) of fork `f` (relation block numbers), as spans of
        the cache's windows (rebuilt first where missing)."""
        fid = (f.spc, f.db, f.rel, f.fork)
        out: list[memoryview] = []
        blk = first
        while blk < end:
            span = self._cache.take(fid, blk, end)
            if span is None:
                # a fetch may hand a helper the memory a span taken so far lies in
                out = [memoryview(bytes(s)) if isinstance(s.obj, mmap.mmap) else s for s in out]
                self._fetch(f, blk, end)
                span = self._cache.take(fid, blk, end)
                if span is None:
                    raise RuntimeError(f"block {blk} of {fid} is not in the cache after its rebuild")
            out.append(span)
            blk += len(span) // BLCKSZ
        return out

    def _fetch(self, f: ServedFork, blk: int, want_end: int) -> None:
        st = self._collect(f, blk)
        if st is not None:  # a helper rebuilt it ahead: the stream goes on
            st.window = min(self.max_window, 2 * st.window)
        else:
            streams = self._streams.setdefault((f.spc, f.db, f.rel, f.fork), [])
            st = next((s for s in streams if abs(blk - s.ahead) <= SEQ_SLACK), None)
            if st is not None and want_end - blk == 1 and blk > st.ahead + SPARSE_GAP:
                # one page well past the frontier: a sparse reader (an index scan's
                # pages in order), not a scan: this page alone, the gap left, and
                # the stream starts again here (a scan's misses are the kernel's
                # multi-page readahead, or a page at the frontier)
                st.window, st.ahead = 1, blk
            elif st is not None:  # sequential: read further ahead each time
                # (from 16 blocks at once, but for one page past a small gap: doubling)
                least = 16 if blk <= st.ahead or want_end - blk > 1 else 2
                st.window = min(self.max_window, max(2 * st.window, want_end - blk, least))
            else:
                st = _Stream(window=want_end - blk)
                streams.append(st)
                del streams[:-MAX_STREAMS]
            # a miss just past the frontier: the blocks between are the stream's too
            start = st.ahead if 0 < st.ahead <= blk else blk
            end = min(f.nblocks, max(want_end, blk + st.window))
            st.ahead = max(st.ahead, end)
            self._fill(f, start, end)
        self._run_ahead(f, st)

    def _fill(self, f: ServedFork, blk: int, end: int) -> None:
        buf = self._built_shared(f, blk, end) if self._helpers else self._built(f, blk, end)
        self._keep(f, blk, buf)

    def _keep(self, f: ServedFork, blk: int, buf: bytes | bytearray | memoryview,
              owner: tuple[int, int] | None = None) -> None:
        """Pages `buf` (blocks from `blk` of `f`) into the cache, oldest out first
        (a bytearray is the cache's from now on; a memoryview is copied, but for one
        of a helper's slots ahead, `owner` (pid, slot): borrowed until the slot is
        handed out again)."""
        self._cache.put((f.spc, f.db, f.rel, f.fork), blk, buf, owner)

    # -- helpers running ahead of a stream (module docstring) --------------------------------
    def _run_ahead(self, f: ServedFork, st: _Stream) -> None:
        """Hand the window after `st`'s frontier to an idle helper (one collects
        the window its helper built that no reader reached, if none is idle)."""
        if not self._helpers or st.window < RUN_AHEAD_MIN or st.ahead >= f.nblocks:
            return
        idle = self._idle_helpers()
        if not idle:
            stale = self._ahead[0]
            if stale.stream is st:
                return  # this stream's next window is being built already
            self._collect(stale.fork, stale.first, reader=False)
            if stale.helper not in self._helpers:
                return
            idle = [stale.helper]
        h, a, b = idle[0], st.ahead, min(f.nblocks, st.ahead + st.window)
        # this process rebuilds the first part itself when the reader gets there,
        # while the helper (which started earlier) rebuilds the rest
        if self.ahead_share is None:
            self.ahead_share = 0.5 if self.page_cost_us >= SPLIT_MIN_US else 0.0
        m = a + int((b - a) * self.ahead_share)
        slot = 1 + h.next_slot
        h.next_slot = (h.next_slot + 1) % AHEAD_SLOTS
        self._cache.release((h.pid, slot))  # what is left of its last window: copied
        try:
            h.conn.send((f, m, b, slot))
        except OSError:
            self._drop_helper(h, "its pipe is closed")
            return
        self._ahead.append(_Ahead(h, f, a, m, b, st, slot))
        st.ahead = b

    def _idle_helpers(self) -> list[_Helper]:
        """The helpers not rebuilding a window ahead of a stream."""
        busy = [a.helper for a in self._ahead]
        return [h for h in self._helpers if h not in busy]

    def _collect(self, f: ServedFork, blk: int, reader: bool = True) -> _Stream | None:
        """The window a helper is rebuilding that holds block `blk` of `f`, into
        the cache (rebuilt here if the helper fails): its stream, or None. A
        `reader` waits for it: whether the helper kept up moves `ahead_share`."""
        ahead = next((a for a in self._ahead if a.fork == f and a.first <= blk < a.end), None)
        if ahead is None:
            return None
        self._ahead.remove(ahead)
        if ahead.first < ahead.mid:
            self._keep(f, ahead.first, self._built(f, ahead.first, ahead.mid))
        if reader and self.ahead_share is not None:
            with contextlib.suppress(OSError):
                self.ahead_share = next_share(self.ahead_share, ahead.helper.conn.poll())
        part = self._receive(ahead.helper, ahead.end - ahead.mid, ahead.slot)
        if part is None:
            self._keep(f, ahead.mid, self._built(f, ahead.mid, ahead.end))
        else:
            self._keep(f, ahead.mid, part, (ahead.helper.pid, ahead.slot))
        return ahead.stream

    def _receive(self, h: _Helper, pages: int, slot: int) -> memoryview | None:
        """The `pages` pages `h` was asked for (in `slot`), or None (`h` is dropped: it
        failed)."""
        try:
            reply = h.conn.recv_bytes()
        except (OSError, EOFError) as e:
            self._drop_helper(h, f"it is gone ({e!r})")
            return None
        if reply == b"+":
            self.helped_pages += pages
            at = slot * self.max_window * BLCKSZ
            return memoryview(h.shm)[at:at + pages * BLCKSZ]
        self._drop_helper(h, reply[1:].decode(errors="replace"))
        return None

    def _built(self, f: ServedFork, blk: int, end: int, out: memoryview | None = None
               ) -> bytearray | memoryview:
        """Blocks [blk, end) of `f` as served: rebuilt, patched, checksummed (into
        `out`, (end - blk) pages, when given)."""
        t0 = time.perf_counter()
        buf = self._rebuild(f, blk, end, out)
        set_checksums(buf, range(blk, end))
        if end > blk:
            us = (time.perf_counter() - t0) * 1e6 / (end - blk)
            self.page_cost_us += _COST_WEIGHT * (us - self.page_cost_us)
        return buf

    def _built_shared(self, f: ServedFork, blk: int, end: int) -> bytearray | memoryview:
        """`_built`, the work cut in parts between this process and the helpers."""
        n = end - blk
        if n < SPLIT_MIN or self.page_cost_us < SPLIT_MIN_US:
            return self._built(f, blk, end)
        helpers = self._idle_helpers()
        parts = len(helpers) + 1
        cuts = [blk + n * i // parts for i in range(parts + 1)]
        ranges = list(itertools.pairwise(cuts))
        asked: list[tuple[_Helper | None, int, int]] = []  # None: rebuilt here
        for h, (a, b) in zip(helpers, ranges[1:], strict=True):
            try:
                h.conn.send((f, a, b, 0))
                asked.append((h, a, b))
            except OSError:
                self._drop_helper(h, "its pipe is closed")
                asked.append((None, a, b))
        out = bytearray(n * BLCKSZ)
        dst = memoryview(out)
        self._built(f, *ranges[0], dst[:(ranges[0][1] - blk) * BLCKSZ])
        for helper, a, b in asked:
            at = dst[(a - blk) * BLCKSZ:(b - blk) * BLCKSZ]
            part = self._receive(helper, b - a, 0) if helper is not None else None
            if part is None:
                self._built(f, a, b, at)
            else:
                at[:] = part
        return out

    def start_helpers(self, n: int) -> int:
        """Fork `n` readahead helpers (module docstring). Call before any thread or
        the FUSE session starts. Returns: helpers running."""
        for _ in range(n):
            mine, theirs = multiprocessing.Pipe()
            shm = mmap.mmap(-1, (1 + AHEAD_SLOTS) * self.max_window * BLCKSZ)  # shared
            pid = os.fork()
            if pid == 0:  # the helper
                code = 1
                try:
                    mine.close()
                    for h in self._helpers:  # the pipes of helpers forked before
                        h.conn.close()
                        h.shm.close()
                    self._helpers = []
                    _detach_helper()
                    self._serve_helper(theirs, shm)
                    code = 0
                finally:
                    os._exit(code)
            theirs.close()
            self._helpers.append(_Helper(pid, mine, shm))
        return len(self._helpers)

    def _serve_helper(self, conn: Connection, shm: mmap.mmap) -> None:
        """A helper's loop, until the pipe closes: (fork, first, end, slot) in; the
        pages into that slot of `shm` and b"+" out, or b"-" and the error (the asker
        then rebuilds them). The asker reads a slot only between a b"+" and the
        request that hands it out again (`WindowCache.release` first), so this
        process writes it only while nobody reads it."""
        slot_bytes = self.max_window * BLCKSZ
        while True:
            try:
                f, a, b, slot = conn.recv()
            except (EOFError, OSError):
                return
            try:
                if (b - a) * BLCKSZ > slot_bytes or not 0 <= slot <= AHEAD_SLOTS:
                    raise ValueError(f"{b - a} pages do not fit slot {slot}")
                at = slot * slot_bytes
                self._built(f, a, b, memoryview(shm)[at:at + (b - a) * BLCKSZ])
                reply = b"+"
            except Exception as e:  # this process's caller rebuilds it and reports
                reply = b"-" + f"{type(e).__name__}: {e}".encode()
            try:
                conn.send_bytes(reply)
            except OSError:
                return

    def _drop_helper(self, h: _Helper, why: str) -> None:
        log.warning("readahead helper %d dropped (its part is rebuilt here): %s", h.pid, why)
        self._helpers.remove(h)
        self._ahead = [a for a in self._ahead if a.helper is not h]
        _end_helper(h)

    def close_helpers(self) -> None:
        """Stop every helper (its pipe closes; it exits) and reap it."""
        helpers, self._helpers = self._helpers, []
        self._ahead = []
        for h in helpers:
            _end_helper(h)

    def _rebuild(self, f: ServedFork, start: int, end: int, out: memoryview | None = None
                 ) -> bytearray | memoryview:
        """Blocks [start, end) of `f` rebuilt at X, back to back (not checksummed), into
        `out` ((end - start) pages) when given."""
        fid = (f.spc, f.db, f.rel, f.from_fork)
        pages: bytearray | memoryview = bytearray(0)
        if fid not in self._unsupported:
            try:
                pages = self.source.store.scan_pages(Key.rel_block(*fid, start), end - start,
                                                     self.source.lsn, BLCKSZ, out)
            except UnsupportedRecordError as e:
                if e.rmgr not in NO_REDO_YET_RMGRS:
                    raise  # a record no redo knows: EIO, never wrong data
                log.warning("relation %d/%d/%d fork %d at %s: %s; served as empty pages",
                            *fid, self.source.lsn, e)
                self._unsupported.add(fid)
        if fid in self._unsupported:  # zero pages
            if out is None:
                pages = bytearray((end - start) * BLCKSZ)
            else:
                out[:] = bytes(len(out))
                pages = out
        facts = self._facts_of(f.spc, f.db) if f.fork == ForkNumber.MAIN else None
        if facts is not None and facts.patches(f.rel):
            for i in range(end - start):
                at = slice(i * BLCKSZ, (i + 1) * BLCKSZ)
                pages[at] = patch_page(facts, f.rel, bytes(pages[at]))
        return pages

    def _facts_of(self, spc: int, db: int) -> CatalogFacts | None:
        if (spc, db) not in self._facts:
            self._facts[(spc, db)] = facts_of(self.source, spc, db, self._am_oids)
        return self._facts[(spc, db)]


def next_share(share: float, helper_ready: bool) -> float:
    """The part of the next window ahead this process rebuilds, after a reader
    found the helper's part of the last one ready (the helper waits: it gets
    more) or not (the reader waits: this process takes more)."""
    step = -SHARE_STEP if helper_ready else SHARE_STEP
    return min(MAX_SHARE, max(0.0, share + step))


def _detach_helper() -> None:
    """In a helper: stdin and stdout to /dev/null (stdout is the file system's
    "ready" pipe to its starter: it must see that pipe close with the file
    system), and SIGKILL when the file system process dies (Linux), on top of the
    pipe's EOF."""
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _end_helper(h: _Helper) -> None:
    with contextlib.suppress(OSError):
        h.conn.close()
    with contextlib.suppress(BufferError):  # a page view still alive: freed with it
        h.shm.close()
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(h.pid, os.WNOHANG)[0] != 0:
                return
        time.sleep(0.01)
    with contextlib.suppress(OSError):
        os.kill(h.pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(h.pid, 0)
