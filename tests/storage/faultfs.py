"""A file system that knows what a power cut keeps (LevelDB's fault_injection_test
is the model), for the `strata.durable` seam.

Writes go to the real files (so the code under test reads what it wrote), and
the model keeps, per directory, the *durable* state: which names exist and
what each file held at its last fsync. A directory's entries (creations,
renames, unlinks) become durable only at an fsync of that directory; a file's
bytes only at an fsync of that file. `cut()` makes every later operation raise
`PowerCut` (the machine is off); `restore()` then rewrites the directories to
their durable state: files created or renamed in since the last directory
fsync disappear (or are back under their old name), unlinked ones come back,
and each file holds exactly what it held at its last fsync (nothing, if never).
Files opened in place (`open_in_place`) keep their durable content until an
fsync replaces it.

`skip_fsync(path) -> bool`: a hook that makes chosen fsyncs do nothing, to show
that a test notices a missing one.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from strata.durable import FileSystem, WritableFile


class PowerCut(Exception):
    """The machine lost power: this operation, and every later one, never happened."""


@dataclass(eq=False)
class Node:
    """A file's content as of its last fsync (None: never synced)."""

    synced: bytes | None = None


@dataclass
class _Dir:
    live: dict[str, Node] = field(default_factory=dict)
    durable: dict[str, Node] = field(default_factory=dict)


class FaultFile(WritableFile):
    def __init__(self, ffs: FaultFS, path: Path, node: Node, *, in_place: bool = False) -> None:
        super().__init__(path, in_place=in_place)
        self._ffs, self._node = ffs, node

    def write(self, data: bytes) -> None:
        self._ffs.step("write", self.path)
        super().write(data)

    def seek(self, offset: int) -> None:
        self._ffs.step("seek", self.path)
        super().seek(offset)

    def truncate(self, size: int) -> None:
        self._ffs.step("truncate", self.path)
        super().truncate(size)

    def fsync(self) -> None:
        self._ffs.step("fsync", self.path)
        super().fsync()
        if not self._ffs.skip_fsync(self.path):
            self._node.synced = self.path.read_bytes()



class FaultFS(FileSystem):
    """See module docstring. `track(directory)` first: its current files count as
    durable."""

    def __init__(self, cut_at: int | None = None,
                 skip_fsync: Callable[[Path], bool] = lambda p: False) -> None:
        self.cut_at = cut_at  # the operation number that never happens
        self.skip_fsync = skip_fsync
        self.ops = 0
        self.is_cut = False
        self.phase = ""  # what the code under test is doing (set by the test)
        self.cut_phase: str | None = None  # the phase the power cut hit
        self.log: list[tuple[str, str, str]] = []  # (operation, file name, phase) per step
        self._dirs: dict[Path, _Dir] = {}
        self._open: list[FaultFile] = []

    # -- bookkeeping -------------------------------------------------------------
    def track(self, directory: Path) -> None:
        d = _Dir()
        for p in directory.iterdir():
            if p.is_file():
                n = Node(p.read_bytes())
                d.live[p.name] = d.durable[p.name] = n
        self._dirs[Path(directory)] = d

    def _dir(self, path: Path) -> _Dir:
        d = self._dirs.get(Path(path).parent)
        if d is None:
            raise AssertionError(f"{path}: directory not tracked by the fault file system")
        return d

    def step(self, op: str, path: Path) -> None:
        """One operation is about to happen (or, at the cut, never does)."""
        if self.is_cut:
            raise PowerCut(f"{op} {path} after the power cut")
        if self.cut_at is not None and self.ops >= self.cut_at:
            self.is_cut = True
            self.cut_phase = self.phase
            raise PowerCut(f"power cut before {op} {Path(path).name} (operation {self.ops})")
        self.ops += 1
        self.log.append((op, Path(path).name, self.phase))

    # -- the seam ----------------------------------------------------------------
    def create(self, path: Path) -> WritableFile:
        self.step("create", path)
        node = Node()
        f = FaultFile(self, path, node)
        self._open.append(f)
        self._dir(path).live[Path(path).name] = node
        return f

    def open_in_place(self, path: Path) -> WritableFile:
        self.step("open", path)
        d = self._dir(path)
        node = d.live.get(Path(path).name)
        if node is None:  # created: a new directory entry, its content never synced
            node = d.live[Path(path).name] = Node()
        f = FaultFile(self, path, node, in_place=True)
        self._open.append(f)
        return f

    def rename(self, src: Path, dst: Path) -> None:
        self.step("rename", src)
        super().rename(src, dst)
        d = self._dir(src)
        d.live[Path(dst).name] = d.live.pop(Path(src).name)

    def unlink(self, path: Path) -> None:
        self.step("unlink", path)
        super().unlink(path)
        self._dir(path).live.pop(Path(path).name, None)

    def fsync_dir(self, path: Path) -> None:
        self.step("fsync_dir", path)
        super().fsync_dir(path)
        d = self._dirs.get(Path(path))
        if d is not None:
            d.durable = dict(d.live)

    def durable_bytes(self, path: Path) -> bytes | None:
        """What a power cut now would leave in `path` (None: no such file then)."""
        node = self._dir(path).durable.get(Path(path).name)
        return None if node is None else (node.synced or b"")

    # -- the power cut -------------------------------------------------------------
    def cut(self) -> None:
        self.is_cut = True

    def restore(self) -> None:
        """After `cut`: make every tracked directory what the disk would hold."""
        self.is_cut = True
        for f in self._open:  # their buffers reach the files now, not after the rewrite
            if not f.closed:
                f.close()
        for directory, d in self._dirs.items():
            for p in directory.iterdir():
                if p.is_file() and p.name not in d.durable:
                    os.unlink(p)
            for name, node in d.durable.items():
                (directory / name).write_bytes(node.synced or b"")
