"""The lazy data directory at LSN X: a FUSE file system in a process of its own.

    python -m strata.historical.lazyfs --store DIR --lsn X --overlay DIR --mount DIR
        [--invalid-index-ams hash,gin,...] [--log FILE] [--helpers N]
    python -m strata.historical.lazyfs --wait-args [--for DIR] [--open STORE]
        (a spare: the arguments above arrive later as one JSON list on stdin, its
        imports already done, the redo modules too once it has waited
        PREOPEN_AFTER s; with --open, STORE then opened read-only as well, and
        refreshed when its turn comes)

"ok" (or "error: ...") on stdout once the mount is there (or failed).

Fed by the page store (opened read-only here: `reader.open_reader`) and an
overlay directory that `lazy` prepared with every small file at X (skeleton,
config, pg_control, the checkpoint segment, relation maps, SLRU segments).
Feeds the historical PostgreSQL server that runs on the mount point. Owns the
mount until it is unmounted (`lazy.LazyMount.unmount`, or `fusermount3 -u`:
the process then exits).

The tree is the overlay directory plus the relation segment files of
`lazyview.LazyView`, which exist only here:
  * reads of a relation file are pages rebuilt at X on first read (readahead
    through range scans; the kernel keeps what it read in its page cache,
    across opens, also after the file was written: writes pass through it);
  * writes never reach the store: a written relation file is copied up block
    by block into the overlay (a sparse file plus the set of its blocks that
    are there); a deleted one is hidden; every other file lives in the
    overlay, created with the owner of the calling process (the server user);
  * a store error while rebuilding a page answers EIO (PostgreSQL: "could
    not read blocks ..."), never a wrong page;
  * long sequential windows are rebuilt by this process and `--helpers`
    forked helper processes together (`lazyview.LazyView.start_helpers`),
    which also run ahead of a sequential reader and leave their pages in
    memory shared with this process: they die with this process.
Binding: pyfuse3 (see `strata.historical.lazy` for why).
"""

from __future__ import annotations

import argparse
import errno
import functools
import json
import logging
import os
import stat
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import pyfuse3
import trio

from strata.historical.lazyview import LazyView, default_helpers
from strata.historical.source import BLCKSZ
from strata.runtime.fdwait import wait_ready

if TYPE_CHECKING:
    from strata.pagestore import StoreReader

log = logging.getLogger("strata.lazyfs")

FSNAME = "strata-lazy"
SUBTYPE = "strata"  # mounts show as type fuse.strata (`lazy.cleanup_mounts` looks for it)
VIRTUAL_TIMEOUT = 300.0  # relation files change only through us
OVERLAY_TIMEOUT = 1.0
_VFH_BASE = 1 << 40  # file handles of relation files (below: overlay fds)

P = ParamSpec("P")
T = TypeVar("T")


def _errors(fn: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """OSError -> its errno; any other failure -> EIO (logged): the kernel gets an error
    code, never a half-done answer."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from e
        except Exception as e:
            log.exception("%s failed", fn.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from e

    return wrapper


@dataclass
class _Cow:
    """A relation file the server wrote: its size and the blocks now in the overlay."""

    size: int
    blocks: set[int] = field(default_factory=set)


class LazyFS(pyfuse3.Operations):  # type: ignore[misc]
    def __init__(self, view: LazyView, overlay: Path) -> None:
        super().__init__()
        self.view = view
        self.overlay = overlay
        st = overlay.stat()
        self.owner = (st.st_uid, st.st_gid)
        self.mtime_ns = st.st_mtime_ns
        self._paths: dict[int, str] = {pyfuse3.ROOT_INODE: ""}
        self._inodes: dict[str, int] = {"": pyfuse3.ROOT_INODE}
        self._next_inode = pyfuse3.ROOT_INODE + 1
        self._virtual_names: dict[str, set[str]] = {}
        for p in view.files:
            d, _, name = p.rpartition("/")
            self._virtual_names.setdefault(d, set()).add(name)
        self._hidden: set[str] = set()
        self._cow: dict[str, _Cow] = {}
        self._vfh: dict[int, str] = {}
        self._next_vfh = _VFH_BASE

    # -- paths and attributes ---------------------------------------------------------
    def _inode(self, path: str) -> int:
        ino = self._inodes.get(path)
        if ino is None:
            ino = self._inodes[path] = self._next_inode
            self._paths[ino] = path
            self._next_inode += 1
        return ino

    def _path(self, inode: int) -> str:
        try:
            return self._paths[inode]
        except KeyError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None

    @staticmethod
    def _join(parent: str, name: bytes) -> str:
        n = os.fsdecode(name)
        return f"{parent}/{n}" if parent else n

    def _real(self, path: str) -> Path:
        return self.overlay / path if path else self.overlay

    def _is_virtual(self, path: str) -> bool:
        return path in self.view.files and path not in self._hidden

    def _attr(self, path: str) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        if self._is_virtual(path):
            a.st_ino = self._inode(path)
            cow = self._cow.get(path)
            size = cow.size if cow is not None else self.view.files[path].size
            a.st_mode = stat.S_IFREG | 0o600
            a.st_nlink = 1
            a.st_uid, a.st_gid = self.owner
            a.st_size = size
            a.st_blocks = -(-size // 512)
            a.st_blksize = BLCKSZ
            a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = self.mtime_ns
            a.attr_timeout = a.entry_timeout = VIRTUAL_TIMEOUT
            return a
        st = os.lstat(self._real(path))  # FileNotFoundError: no inode for it
        a.st_ino = self._inode(path)
        for f in ("st_mode", "st_nlink", "st_uid", "st_gid", "st_rdev", "st_size", "st_blocks",
                  "st_blksize", "st_atime_ns", "st_mtime_ns", "st_ctime_ns"):
            setattr(a, f, getattr(st, f))
        a.attr_timeout = a.entry_timeout = OVERLAY_TIMEOUT
        return a

    # -- lookups and directories ------------------------------------------------------
    @_errors
    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> Any:
        path = self._join(self._path(parent_inode), name)
        if name == b".":
            path = self._path(parent_inode)
        elif name == b"..":
            path = self._path(parent_inode).rpartition("/")[0]
        return self._attr(path)

    @_errors
    async def getattr(self, inode: int, ctx: Any = None) -> Any:
        return self._attr(self._path(inode))

    @_errors
    async def readlink(self, inode: int, ctx: Any) -> bytes:
        return os.fsencode(os.readlink(self._real(self._path(inode))))

    @_errors
    async def opendir(self, inode: int, ctx: Any) -> int:
        return inode

    @_errors
    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        path = self._path(fh)
        names = set(os.listdir(self._real(path)))
        names |= {n for n in self._virtual_names.get(path, ()) if self._is_virtual(
            self._join(path, os.fsencode(n)))}
        for i, n in enumerate(sorted(names)[start_id:], start=start_id):
            child = self._join(path, os.fsencode(n))
            try:
                attr = self._attr(child)
            except FileNotFoundError:
                continue
            if not pyfuse3.readdir_reply(token, os.fsencode(n), attr, i + 1):
                break

    async def releasedir(self, fh: int) -> None:
        return None

    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        return None

    async def forget(self, inode_list: Any) -> None:
        return None  # inodes stay (one per path ever seen: a data directory's worth)

    @_errors
    async def statfs(self, ctx: Any) -> Any:
        sv = os.statvfs(self.overlay)
        out = pyfuse3.StatvfsData()
        for f in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files",
                  "f_ffree", "f_favail", "f_namemax"):
            setattr(out, f, getattr(sv, f))
        return out

    # -- changing the tree (overlay only) ---------------------------------------------
    def _chown(self, path: Path, ctx: Any) -> None:
        os.chown(path, ctx.uid, ctx.gid, follow_symlinks=False)

    @_errors
    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Any) -> Any:
        path = self._join(self._path(parent_inode), name)
        os.mkdir(self._real(path), mode & 0o7777)
        self._chown(self._real(path), ctx)
        return self._attr(path)

    @_errors
    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        path = self._join(self._path(parent_inode), name)
        if any(self._is_virtual(self._join(path, os.fsencode(n)))
               for n in self._virtual_names.get(path, ())):
            raise pyfuse3.FUSEError(errno.ENOTEMPTY)
        os.rmdir(self._real(path))

    @_errors
    async def symlink(self, parent_inode: int, name: bytes, target: bytes, ctx: Any) -> Any:
        path = self._join(self._path(parent_inode), name)
        os.symlink(target, self._real(path))
        self._chown(self._real(path), ctx)
        return self._attr(path)

    @_errors
    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        path = self._join(self._path(parent_inode), name)
        if self._is_virtual(path):
            self._hidden.add(path)
            if self._cow.pop(path, None) is not None:
                os.unlink(self._real(path))
            return
        os.unlink(self._real(path))

    @_errors
    async def rename(self, parent_old: int, name_old: bytes, parent_new: int, name_new: bytes,
                     flags: int, ctx: Any) -> None:
        old = self._join(self._path(parent_old), name_old)
        new = self._join(self._path(parent_new), name_new)
        if self._is_virtual(old) or self._is_virtual(new):
            raise pyfuse3.FUSEError(errno.EPERM)  # PostgreSQL never renames relation files
        os.rename(self._real(old), self._real(new))
        for p in [p for p in self._inodes if p == old or p.startswith(old + "/")]:
            ino = self._inodes.pop(p)
            moved = new + p[len(old):]
            stale = self._inodes.pop(moved, None)
            if stale is not None:
                self._paths.pop(stale, None)
            self._inodes[moved] = ino
            self._paths[ino] = moved

    @_errors
    async def setattr(self, inode: int, attr: Any, fields: Any, fh: int | None, ctx: Any) -> Any:
        path = self._path(inode)
        if self._is_virtual(path):
            if fields.update_size:
                self._truncate_virtual(path, attr.st_size)
            return self._attr(path)  # mode, owner and times of relation files are fixed
        real = self._real(path)
        if fields.update_size:
            os.truncate(real, attr.st_size)
        if fields.update_mode:
            os.chmod(real, stat.S_IMODE(attr.st_mode))
        if fields.update_uid or fields.update_gid:
            st = os.lstat(real)
            os.chown(real, attr.st_uid if fields.update_uid else st.st_uid,
                     attr.st_gid if fields.update_gid else st.st_gid, follow_symlinks=False)
        if fields.update_atime or fields.update_mtime:
            st = os.lstat(real)
            os.utime(real, ns=(attr.st_atime_ns if fields.update_atime else st.st_atime_ns,
                               attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns),
                     follow_symlinks=False)
        return self._attr(path)

    # -- files ------------------------------------------------------------------------
    @_errors
    async def open(self, inode: int, flags: int, ctx: Any) -> Any:
        path = self._path(inode)
        if self._is_virtual(path):
            fh = self._next_vfh
            self._next_vfh += 1
            self._vfh[fh] = path
            if flags & os.O_TRUNC:
                self._truncate_virtual(path, 0)
            # keep_cache even once copied up: every write reaches us through this mount,
            # so the kernel's cached pages are what we would serve; without it every
            # open (a parallel worker's) would drop the cache of the whole file, and a
            # relation the server wrote hint bits to would be rebuilt on every scan
            return pyfuse3.FileInfo(fh=fh, keep_cache=True)
        return pyfuse3.FileInfo(fh=os.open(self._real(path), flags & ~os.O_CREAT))

    @_errors
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: Any
                     ) -> Any:
        path = self._join(self._path(parent_inode), name)
        if self._is_virtual(path):
            raise pyfuse3.FUSEError(errno.EEXIST)
        fd = os.open(self._real(path), flags | os.O_CREAT, mode & 0o7777)
        os.fchown(fd, ctx.uid, ctx.gid)
        return pyfuse3.FileInfo(fh=fd), self._attr(path)

    @_errors
    async def read(self, fh: int, off: int, size: int) -> bytes | memoryview:  # type: ignore[override]
        # (pyfuse3 replies with any contiguous buffer: a view of the cache, no copy)
        path = self._vfh.get(fh)
        if path is None:
            return os.pread(fh, size, off)
        cow = self._cow.get(path)
        if cow is None:
            return self.view.read(path, off, size)
        return self._read_cow(path, cow, off, size)

    @_errors
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        path = self._vfh.get(fh)
        if path is None:
            return os.pwrite(fh, buf, off)
        cow = self._copy_up(path)
        first, last = off // BLCKSZ, (off + len(buf) - 1) // BLCKSZ
        real = self._real(path)
        with open(real, "r+b") as f:
            for blk in range(first, last + 1):
                if blk not in cow.blocks and blk * BLCKSZ < cow.size:
                    # a partial write of a block not copied yet: bring the rest first
                    f.seek(blk * BLCKSZ)
                    f.write(self.view.read(path, blk * BLCKSZ, BLCKSZ))
            f.seek(off)
            f.write(buf)
        cow.blocks.update(range(first, last + 1))
        cow.size = max(cow.size, off + len(buf))
        return len(buf)

    async def flush(self, fh: int) -> None:
        return None

    async def fsync(self, fh: int, datasync: bool) -> None:
        return None  # the overlay is rebuilt, never recovered

    @_errors
    async def release(self, fh: int) -> None:
        if self._vfh.pop(fh, None) is None:
            os.close(fh)

    # -- copy-on-write of relation files ----------------------------------------------
    def _copy_up(self, path: str) -> _Cow:
        cow = self._cow.get(path)
        if cow is None:
            size = self.view.files[path].size
            fd = os.open(self._real(path), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.fchown(fd, *self.owner)
                os.ftruncate(fd, size)  # sparse: blocks not in `blocks` come from the store
            finally:
                os.close(fd)
            cow = self._cow[path] = _Cow(size)
        return cow

    def _truncate_virtual(self, path: str, size: int) -> None:
        cow = self._copy_up(path)
        os.truncate(self._real(path), size)
        cow.size = size
        cow.blocks = {b for b in cow.blocks if b * BLCKSZ < size}

    def _read_cow(self, path: str, cow: _Cow, off: int, size: int) -> bytes:
        end = min(off + size, cow.size)
        out = bytearray()
        with open(self._real(path), "rb") as f:
            pos = off
            while pos < end:
                blk = pos // BLCKSZ
                stop = min(end, (blk + 1) * BLCKSZ)
                if blk in cow.blocks:
                    f.seek(pos)
                    out += f.read(stop - pos)
                elif pos < self.view.files[path].size:
                    out += bytes(self.view.read(path, pos, stop - pos)).ljust(stop - pos, b"\0")
                else:
                    out += bytes(stop - pos)
                pos = stop
        return bytes(out)


def _prefetch(view: LazyView) -> None:
    t0 = time.perf_counter()
    n = view.prefetch_catalogs()
    log.info("prefetched %d catalog pages in %.2f s", n, time.perf_counter() - t0)


PREOPEN_AFTER = 2.0  # s a spare waits for its arguments before it opens the store


def _preopen(argv: list[str]) -> tuple[Path, StoreReader] | None:
    """A spare's early work once it has waited PREOPEN_AFTER s for its arguments: the
    redo modules imported (the first page rebuilt would import them: ~0.3 s of a
    first query) and the store named by ``--open`` opened. Returns that open (None
    without one, when the arguments came first, or when the open fails: the open
    after the arguments then reports the error)."""
    from strata.historical.reader import open_reader
    from strata.reconstruct.redo import registered_rmgrs

    ready, _ = wait_ready([sys.stdin], timeout=PREOPEN_AFTER)
    if ready:
        return None
    registered_rmgrs()  # imports every rmgr's redo
    if "--open" not in argv:
        return None
    store_dir = Path(argv[argv.index("--open") + 1])
    try:
        return store_dir, open_reader(store_dir)
    except Exception:  # the open after the arguments reports it
        return None


def _parse(argv: list[str]) -> argparse.Namespace:
    from strata.lsn import Lsn

    ap = argparse.ArgumentParser(prog="python -m strata.historical.lazyfs",
                                 description="serve a lazy data directory at an LSN over FUSE")
    ap.add_argument("--store", required=True, type=Path)
    ap.add_argument("--lsn", required=True, type=Lsn.parse)
    ap.add_argument("--overlay", required=True, type=Path)
    ap.add_argument("--mount", required=True, type=Path)
    ap.add_argument("--invalid-index-ams", default="")
    ap.add_argument("--log", type=Path, default=None)
    ap.add_argument("--helpers", type=int, default=None,
                    help="readahead helper processes (default: one per core beyond the "
                         "first, at most 3; 0: none)")
    return ap.parse_args(argv)


def _open_store(store_dir: Path, pre: tuple[Path, StoreReader] | None) -> StoreReader:
    """The spare's early open when it is of this store (refreshed to the newest
    manifest: X is durable there, the caller saw to it), else a new open."""
    from strata.historical.reader import open_reader

    if pre is not None and pre[0] == store_dir:
        pre[1].refresh()
        return pre[1]
    if pre is not None:
        pre[1].close()
    return open_reader(store_dir)


def main(argv: list[str] | None = None) -> None:
    from strata.historical.controlfile import parse_control
    from strata.historical.store_view import StoreView

    argv = sys.argv[1:] if argv is None else argv
    pre: tuple[Path, StoreReader] | None = None
    if argv[:1] == ["--wait-args"]:
        # (a `--for DIR` after it only names, in the command line, whose spare it is)
        pre = _preopen(argv)
        line = sys.stdin.readline()
        if not line:
            if pre is not None:
                pre[1].close()
            return  # the parent went away before using this spare
        argv = json.loads(line)
    args = _parse(argv)
    if args.log is not None:  # tracebacks of the process itself go there too
        fd = os.open(args.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 2)
        os.close(fd)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s [%(process)d] %(levelname)s %(message)s")
    answered = False

    def ready(msg: str) -> None:
        nonlocal answered
        if not answered:
            answered = True
            sys.stdout.write(msg + "\n")
            sys.stdout.flush()
            sys.stdout.close()

    view: LazyView | None = None
    try:
        store = _open_store(args.store, pre)
        source = StoreView(store, args.lsn)
        cf = parse_control(source.control_template())
        view = LazyView(source, cf.catalog_version_dir, cf.relseg_size,
                        tuple(a for a in args.invalid_index_ams.split(",") if a))
        # forked before the FUSE session and any thread: they inherit neither
        view.start_helpers(default_helpers() if args.helpers is None else args.helpers)
        fs = LazyFS(view, args.overlay)
        options = set(pyfuse3.default_options) | {
            f"fsname={FSNAME}", f"subtype={SUBTYPE}", "allow_other", "default_permissions"}
        pyfuse3.init(fs, str(args.mount), options)
    except BaseException as e:
        if view is not None:
            view.close_helpers()
        log.exception("lazy file system at %s did not start", args.lsn)
        ready(f"error: {e}")
        sys.exit(1)
    log.info("serving %d relation files at %s on %s", len(view.files), args.lsn, args.mount)
    ready("ok")
    threading.Thread(target=_prefetch, args=(view,), name="prefetch", daemon=True).start()
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=False)
        view.close_helpers()
        store.close()


if __name__ == "__main__":
    main()
