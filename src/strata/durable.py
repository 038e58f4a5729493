"""The file-I/O seam for files that must survive a crash: create and write (or
open in place, append, truncate), fsync, rename, fsync of a directory, unlink.

Bottom layer: imports nothing from strata. Fed by: the layer store (layer files,
manifest commits, recovery's clean-up), the time map and DDL log (append-only
files), the home's JSON files (`home.files.write_json`). Feeds: the operating
system, or, in tests, a file system that models what a power cut keeps
(tests/storage/faultfs.py: writes not fsynced and directory entries not fsynced
are lost). Owns: nothing on disk.

Reads do not go through the seam: they see the real files.

Use: `durable.fs().create(path)` etc. Tests swap the implementation with
`with durable.using(other): ...` (process-wide: the store's threads see it too).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


class WritableFile:
    """A file being written: created empty (or truncated), or, `in_place`, opened
    with its content kept (created empty, mode 0600, if missing)."""

    def __init__(self, path: Path, *, in_place: bool = False) -> None:
        self.path = Path(path)
        if in_place:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            self._f: BinaryIO = os.fdopen(fd, "r+b")
        else:
            self._f = open(path, "wb")  # noqa: SIM115 - closed by close()

    def write(self, data: bytes) -> None:
        self._f.write(data)

    def seek(self, offset: int) -> None:
        self._f.seek(offset)

    def truncate(self, size: int) -> None:
        """Cut (or extend with zeros) the file to `size` bytes; durable after `fsync`."""
        self._f.truncate(size)

    def fsync(self) -> None:
        """Everything written so far is on stable storage once this returns."""
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()

    @property
    def closed(self) -> bool:
        return self._f.closed


class FileSystem:
    """The real file system."""

    def create(self, path: Path) -> WritableFile:
        return WritableFile(path)

    def open_in_place(self, path: Path) -> WritableFile:
        """`path` opened for writing with its content kept, created empty if missing
        (that creation, like `create`'s, is durable only after `fsync_dir`)."""
        return WritableFile(path, in_place=True)

    def rename(self, src: Path, dst: Path) -> None:
        """Atomic replace of `dst`; durable only after `fsync_dir` of its directory."""
        os.rename(src, dst)

    def unlink(self, path: Path) -> None:
        """Raises: FileNotFoundError. Durable only after `fsync_dir`."""
        os.unlink(path)

    def fsync_dir(self, path: Path) -> None:
        """Every entry of directory `path` (creations, renames, unlinks) is durable."""
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def write_durably(self, path: Path, data: bytes, tmp: Path) -> None:
        """Replace `path` by `data` atomically and durably: `tmp` written, fsynced,
        renamed over `path`, directory fsynced (a crash leaves the old or the new)."""
        f = self.create(tmp)
        try:
            f.write(data)
            f.fsync()
        finally:
            f.close()
        self.rename(tmp, path)
        self.fsync_dir(path.parent)


class AppendFile:
    """An append-only file with a header, kept through the seam (the time map and
    its DDL log): opened at the end of its good prefix (what follows is cut), a
    header written first when it has none, the directory fsynced when the file is
    new; appends are durable once `sync` returned.

    Not thread-safe: its owner serialises calls."""

    def __init__(self, f: WritableFile, end: int) -> None:
        self._f = f
        self._unsynced = 0
        self._end = end  # where the next append goes

    @classmethod
    def open(cls, path: Path, header: bytes, good: int) -> AppendFile:
        """`path` cut to its first `good` bytes (0: no valid header: one is written)."""
        created = not path.exists()
        f = fs().open_in_place(path)
        if good < len(header):
            f.seek(0)
            f.write(header)
            good = len(header)
        f.truncate(good)
        f.seek(good)
        f.fsync()
        if created:
            fs().fsync_dir(path.parent)
        return cls(f, good)

    def append(self, data: bytes) -> None:
        self._f.write(data)
        self._unsynced += 1
        self._end += len(data)

    def rewrite_header(self, header: bytes) -> None:
        """Replace the header (its first len(header) bytes) in place and make it,
        with every append so far, durable. A power cut before it returns leaves
        the old header or the new one (one sector: written whole)."""
        self._f.seek(0)
        self._f.write(header)
        self._f.seek(self._end)
        self._f.fsync()
        self._unsynced = 0

    def sync(self) -> None:
        """Every append so far is durable once this returns."""
        if self._unsynced:
            self._f.fsync()
            self._unsynced = 0

    def close(self) -> None:
        self._f.fsync()
        self._f.close()


_current: FileSystem = FileSystem()


def fs() -> FileSystem:
    """The file system in use (the real one unless a test swapped it)."""
    return _current


@contextlib.contextmanager
def using(other: FileSystem) -> Iterator[FileSystem]:
    """Use `other` for every durable write until the block ends."""
    global _current
    before, _current = _current, other
    try:
        yield other
    finally:
        _current = before
