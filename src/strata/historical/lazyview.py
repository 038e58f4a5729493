"""The relation files of a lazy data directory at LSN X, read page by page.

Fed by a `StoreView` over a `PageReader` (the store opened read-only in the
file system process) and the catalog version / segment size of the cluster.
Feeds `lazyfs` (names, sizes and bytes of every relation segment file). Owns
an in-memory cache of pages rebuilt ahead of the reader and not read yet (a
page read leaves it: the kernel's page cache keeps what was served); no file.

* The file list is `served.served_forks` of the REL_SIZE keys at X, cut into
  1 GB segments (`relseg_size` blocks) at the paths materialize would write.
* A read of blocks [a, b) of a fork is one `scan(KeyRange, X)` over
  [a, a + window): the window doubles while a file is read sequentially (up to
  `max_window` blocks) and is b - a otherwise, so a full scan is a few range
  scans, not one GetPage per page. Pages beyond the request wait in the cache.
* `prefetch_catalogs` rebuilds the system catalogs' pages in a thread while
  the server starts (its first connection reads many of them); it pauses
  while the server's own reads come in.
* Every non-new page gets its checksum (pg_control says checksums are on);
  pg_class / pg_index pages are patched first (`catalog_patch`).
* A block the store has no value for is a zero page (a hole), as in
  materialize. A relation with WAL of an index AM without redo
  (`store_view.NO_REDO_YET_RMGRS`, none left) yields zero pages from there
  on (its indexes are invalid, never read). Any other error of the store
  propagates (the file system answers EIO: never wrong data).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from strata.errors import UnsupportedRecordError
from strata.historical.catalog_patch import CatalogFacts, am_oids, patch_page
from strata.historical.materialize import database_dir
from strata.historical.served import ServedFork, facts_of, served_forks
from strata.historical.source import BLCKSZ, FORK_SUFFIX
from strata.historical.store_view import NO_REDO_YET_RMGRS, StoreView
from strata.key import Key, KeyRange
from strata.pg.checksum import set_checksums
from strata.pg.constants import ForkNumber

log = logging.getLogger(__name__)

_ZERO = bytes(BLCKSZ)
FIRST_NORMAL_OBJECT_ID = 16384  # relfilenumbers below: system catalogs of initdb
_TEMPLATE_DBS = (1, 4)  # template1, template0
_YIELD_SECONDS = 0.02  # prefetching pauses while the server read this recently


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


@dataclass
class _Stream:
    """Sequential-read detection for one fork."""

    next_blk: int = -1
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
    cache_pages: int = 8192  # at most 64 MB of pages rebuilt ahead and not read yet
    files: dict[str, SegmentFile] = field(default_factory=dict)
    _cache: OrderedDict[tuple[int, int, int, int, int], bytes] = field(default_factory=OrderedDict)
    _streams: dict[tuple[int, int, int, int], _Stream] = field(default_factory=dict)
    _facts: dict[tuple[int, int], CatalogFacts | None] = field(default_factory=dict)
    _unsupported: set[tuple[int, int, int, int]] = field(default_factory=set)

    def __post_init__(self) -> None:
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
    def read(self, path: str, offset: int, size: int) -> bytes:
        """Bytes [offset, offset + size) of the segment file at `path` (short at EOF)."""
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
                    if (f.spc, f.db, f.rel, f.fork, blk) not in self._cache:
                        try:
                            self._fill(f, blk, blk + n)
                        except Exception:  # the server's own read will report it
                            log.warning("prefetching %s failed", _path, exc_info=True)
                            break
                        done += n
        return done

    def _read(self, path: str, offset: int, size: int) -> bytes:
        sf = self.files[path]
        end = min(offset + size, sf.size)
        if offset >= end:
            return b""
        a, b = offset // BLCKSZ, -(-end // BLCKSZ)
        pages = self.pages(sf.fork, sf.first + a, b - a)
        data = b"".join(pages)
        lo = offset - a * BLCKSZ
        return data[lo:lo + end - offset]

    def pages(self, f: ServedFork, first: int, count: int) -> list[bytes]:
        """Blocks [first, first + count) of fork `f` (relation block numbers)."""
        fid = (f.spc, f.db, f.rel, f.fork)
        out: list[bytes] = []
        for blk in range(first, first + count):
            # a page served is in the kernel's page cache from now on (keep_cache):
            # ours only holds what was rebuilt ahead and not read yet
            page = self._cache.pop((*fid, blk), None)
            if page is None:
                self._fetch(f, blk, first + count)
                page = self._cache.pop((*fid, blk))
            out.append(page)
        st = self._streams.setdefault(fid, _Stream())
        st.next_blk = first + count
        return out

    def _fetch(self, f: ServedFork, blk: int, want_end: int) -> None:
        fid = (f.spc, f.db, f.rel, f.fork)
        st = self._streams.setdefault(fid, _Stream())
        if st.next_blk == blk:  # sequential: read further ahead each time
            st.window = min(self.max_window, max(2 * st.window, want_end - blk, 16))
        else:
            st.window = want_end - blk
        self._fill(f, blk, min(f.nblocks, max(want_end, blk + st.window)))

    def _fill(self, f: ServedFork, blk: int, end: int) -> None:
        fid = (f.spc, f.db, f.rel, f.fork)
        got = self._rebuild(f, blk, end)
        buf = bytearray(b"".join(got))
        set_checksums(buf, list(range(blk, end)))
        for i in range(end - blk):
            self._cache[(*fid, blk + i)] = bytes(buf[i * BLCKSZ:(i + 1) * BLCKSZ])
        while len(self._cache) > self.cache_pages:
            self._cache.popitem(last=False)

    def _rebuild(self, f: ServedFork, start: int, end: int) -> list[bytes]:
        pages = [_ZERO] * (end - start)
        fid = (f.spc, f.db, f.rel, f.from_fork)
        if fid not in self._unsupported:
            rng = KeyRange(Key.rel_block(*fid, start), Key.rel_block(*fid, end))
            try:
                for key, page in self.source.store.scan(rng, self.source.lsn):
                    pages[key.blk - start] = page
            except UnsupportedRecordError as e:
                if e.rmgr not in NO_REDO_YET_RMGRS:
                    raise  # a record no redo knows: EIO, never wrong data
                log.warning("relation %d/%d/%d fork %d at %s: %s; served as empty pages",
                            *fid, self.source.lsn, e)
                self._unsupported.add(fid)
                pages = [_ZERO] * (end - start)
        facts = self._facts_of(f.spc, f.db) if f.fork == ForkNumber.MAIN else None
        if facts is not None and facts.patches(f.rel):
            pages = [patch_page(facts, f.rel, p) for p in pages]
        return pages

    def _facts_of(self, spc: int, db: int) -> CatalogFacts | None:
        if (spc, db) not in self._facts:
            self._facts[(spc, db)] = facts_of(self.source, spc, db, self._am_oids)
        return self._facts[(spc, db)]
