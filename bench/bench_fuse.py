"""Benchmark FUSE bindings for the lazy historical data directory.

    python bench/bench_fuse.py [--bindings pyfuse3,mfusepy,llfuse] [--mib 64] [--threads 4]

Each binding serves, from its own process (as `strata.historical.lazyfs` does),
one virtual file of `--mib` MiB held in memory, opened with direct_io so every
read reaches the file system (no kernel page cache). The parent then measures:
  * sequential reads of 8 KB (one PostgreSQL page per request) and of 128 KB
    (the kernel's largest FUSE read, what readahead turns a seq scan into):
    MiB/s and microseconds per request;
  * per-request overhead without data: `os.stat` (lookup + getattr, attribute
    cache off);
  * concurrency: `--threads` threads doing random 8 KB reads at once, with a
    served read that also burns ~50 us of Python CPU (as a page rebuild does):
    requests/s in total, against one thread.
Needs root (or a user allowed to mount FUSE) and /dev/fuse. Prints a markdown
table; the lead copies numbers to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import random
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

FILE_NAME = "data"
BURN_US = 50  # simulated page-rebuild CPU per read, for the concurrency test


def _content(size: int) -> bytes:
    block = bytes(range(256)) * 32  # 8 KB
    return block * (size // len(block))


def _burn(us: int) -> None:
    end = time.perf_counter() + us / 1e6
    while time.perf_counter() < end:
        pass


# -- servers (run in the child process) ------------------------------------------------
def serve_pyfuse3(mnt: str, data: bytes, ready: int, burn: bool) -> None:
    import pyfuse3
    import trio

    class Ops(pyfuse3.Operations):
        def _attr(self, ino: int) -> pyfuse3.EntryAttributes:
            a = pyfuse3.EntryAttributes()
            a.st_ino = ino
            a.st_mode = (stat.S_IFDIR | 0o755) if ino == pyfuse3.ROOT_INODE else (stat.S_IFREG | 0o644)
            a.st_size = 0 if ino == pyfuse3.ROOT_INODE else len(data)
            a.attr_timeout = a.entry_timeout = 0
            return a

        async def getattr(self, inode, ctx=None):  # type: ignore[no-untyped-def]
            return self._attr(inode)

        async def lookup(self, parent, name, ctx=None):  # type: ignore[no-untyped-def]
            if name.decode() != FILE_NAME:
                raise pyfuse3.FUSEError(errno.ENOENT)
            return self._attr(2)

        async def open(self, inode, flags, ctx):  # type: ignore[no-untyped-def]
            return pyfuse3.FileInfo(fh=inode, direct_io=True)

        async def read(self, fh, off, size):  # type: ignore[no-untyped-def]
            if burn:
                _burn(BURN_US)
            return data[off:off + size]

    pyfuse3.init(Ops(), mnt, {"fsname=benchfuse", "allow_other"})
    os.write(ready, b"1")
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=False)


def serve_llfuse(mnt: str, data: bytes, ready: int, burn: bool) -> None:
    import llfuse

    class Ops(llfuse.Operations):
        def _attr(self, ino: int) -> llfuse.EntryAttributes:
            a = llfuse.EntryAttributes()
            a.st_ino = ino
            a.st_mode = (stat.S_IFDIR | 0o755) if ino == llfuse.ROOT_INODE else (stat.S_IFREG | 0o644)
            a.st_size = 0 if ino == llfuse.ROOT_INODE else len(data)
            a.attr_timeout = a.entry_timeout = 0
            return a

        def getattr(self, inode, ctx=None):  # type: ignore[no-untyped-def]
            return self._attr(inode)

        def lookup(self, parent, name, ctx=None):  # type: ignore[no-untyped-def]
            if name.decode() != FILE_NAME:
                raise llfuse.FUSEError(errno.ENOENT)
            return self._attr(2)

        def open(self, inode, flags, ctx):  # type: ignore[no-untyped-def]
            return inode

        def read(self, fh, off, size):  # type: ignore[no-untyped-def]
            if burn:
                _burn(BURN_US)
            return data[off:off + size]

    # libfuse 2's low-level API has no per-open direct_io: the client evicts the
    # page cache (POSIX_FADV_DONTNEED) before every pass instead
    llfuse.init(Ops(), mnt, ["fsname=benchfuse", "allow_other"])
    os.write(ready, b"1")
    try:
        llfuse.main(workers=8)
    finally:
        llfuse.close(unmount=False)


def serve_mfusepy(mnt: str, data: bytes, ready: int, burn: bool) -> None:
    import mfusepy

    class Ops(mfusepy.Operations):
        def init(self, path):  # type: ignore[no-untyped-def]
            os.write(ready, b"1")

        def getattr(self, path, fh=None):  # type: ignore[no-untyped-def]
            if path == "/":
                return {"st_mode": stat.S_IFDIR | 0o755, "st_nlink": 2}
            if path == "/" + FILE_NAME:
                return {"st_mode": stat.S_IFREG | 0o644, "st_nlink": 1, "st_size": len(data)}
            raise mfusepy.FuseOSError(errno.ENOENT)

        def readdir(self, path, fh):  # type: ignore[no-untyped-def]
            return [".", "..", FILE_NAME]

        def open(self, path, flags):  # type: ignore[no-untyped-def]
            return 0

        def read(self, path, size, offset, fh):  # type: ignore[no-untyped-def]
            if burn:
                _burn(BURN_US)
            return data[offset:offset + size]

    mfusepy.FUSE(Ops(), mnt, foreground=True, nothreads=False, allow_other=True,
                 direct_io=True, attr_timeout=0, entry_timeout=0, fsname="benchfuse")


SERVERS: dict[str, Callable[[str, bytes, int, bool], None]] = {
    "pyfuse3": serve_pyfuse3, "mfusepy": serve_mfusepy, "llfuse": serve_llfuse}


# -- client (the parent) ---------------------------------------------------------------
@contextlib.contextmanager
def mounted(binding: str, size: int, burn: bool) -> Iterator[Path]:
    mnt = Path(tempfile.mkdtemp(prefix="benchfuse-"))
    r, w = os.pipe()
    proc = subprocess.Popen([sys.executable, __file__, "--serve", binding, str(mnt), str(size),
                             "1" if burn else "0", str(w)], pass_fds=(w,))
    os.close(w)
    try:
        if os.read(r, 1) != b"1":
            raise RuntimeError(f"{binding}: the file system did not start")
        yield mnt
    finally:
        os.close(r)
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False, capture_output=True)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(mnt, ignore_errors=True)


def _uncached(fd: int) -> None:
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def seq_read(path: Path, chunk: int) -> tuple[float, float]:
    fd = os.open(path, os.O_RDONLY)
    try:
        _uncached(fd)
        n = 0
        t0 = time.perf_counter()
        off = 0
        while True:
            b = os.pread(fd, chunk, off)
            if not b:
                break
            off += len(b)
            n += 1
        dt = time.perf_counter() - t0
    finally:
        os.close(fd)
    return off / dt / 2**20, dt / n * 1e6


def stat_overhead(path: Path, n: int = 3000) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        os.stat(path)
    return (time.perf_counter() - t0) / n * 1e6


def random_reads(path: Path, threads: int, per_thread: int) -> float:
    size = path.stat().st_size
    pages = size // 8192
    start = threading.Barrier(threads + 1)

    def work(seed: int) -> None:
        rnd = random.Random(seed)
        fd = os.open(path, os.O_RDONLY)
        try:
            _uncached(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
            start.wait()
            for _ in range(per_thread):
                os.pread(fd, 8192, rnd.randrange(pages) * 8192)
        finally:
            os.close(fd)

    ts = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in ts:
        t.join()
    return threads * per_thread / (time.perf_counter() - t0)


def bench(binding: str, mib: int, threads: int) -> dict[str, float]:
    size = mib << 20
    out: dict[str, float] = {}
    with mounted(binding, size, burn=False) as mnt:
        f = mnt / FILE_NAME
        out["8K MiB/s"], out["8K us/req"] = seq_read(f, 8192)
        out["128K MiB/s"], out["128K us/req"] = seq_read(f, 128 << 10)
        out["stat us"] = stat_overhead(f)
    with mounted(binding, size, burn=True) as mnt:
        f = mnt / FILE_NAME
        one = random_reads(f, 1, 4000)
        many = random_reads(f, threads, 4000 // threads)
        out["rand 1T req/s"], out[f"rand {threads}T req/s"] = one, many
    return out


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        binding, mnt, size, burn, ready = sys.argv[2:7]
        SERVERS[binding](mnt, _content(int(size)), int(ready), burn == "1")
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bindings", default="pyfuse3,mfusepy,llfuse")
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--threads", type=int, default=4)
    args = ap.parse_args()
    rows = []
    for b in args.bindings.split(","):
        try:
            __import__(b)
        except ImportError as e:
            print(f"{b}: not installed ({e})", file=sys.stderr)
            continue
        rows.append((b, bench(b, args.mib, args.threads)))
    if not rows:
        sys.exit("no binding could be measured")
    cols = list(rows[0][1])
    print("| binding | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for b, r in rows:
        print(f"| {b} | " + " | ".join(f"{r[c]:,.1f}" for c in cols) + " |")


if __name__ == "__main__":
    main()
