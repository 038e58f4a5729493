"""Process-level guards of a layer directory: the role locks, the commit lock and
the open-file budget.

Fed by: LayerStore.open and the commit protocol. Owns: three lock files, each
an empty file whose `flock` is the lock (released on close or process death,
so a killed process never leaves a lock behind):

- `LOCK`: exclusive for the life of the one writer (ingest);
- `MAINT`: exclusive for the life of the one maintainer (the maintenance
  process, or a writer that runs maintenance itself);
- `COMMIT`: exclusive for the duration of one manifest commit (and of
  recovery's clean-up), taken by the writer and the maintainer. Readers take
  no lock at all.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import resource
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from strata.errors import StrataError

log = logging.getLogger(__name__)

LOCK_NAME = "LOCK"
MAINT_LOCK_NAME = "MAINT"
COMMIT_LOCK_NAME = "COMMIT"
LOCK_NAMES = (LOCK_NAME, MAINT_LOCK_NAME, COMMIT_LOCK_NAME)


def ensure_fd_budget(layers: int) -> None:
    """Every live layer keeps one open descriptor (so a file removed by compaction or gc
    stays readable by views taken before): raise the soft RLIMIT_NOFILE towards the hard
    limit when the store needs more than it allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 2 * layers + 256
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(hard, want)
        if new > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            log.info("raised the open-file limit from %d to %d for %d layers", soft, new, layers)


def _flock_nb(path: Path) -> BinaryIO | None:
    """The file at `path`, exclusively flocked; None if another holder has it."""
    f = open(path, "a+b")  # noqa: SIM115 - held by the caller
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    return f


def lock_directory(directory: Path) -> BinaryIO:
    """One writer per store: an exclusive flock on <dir>/LOCK, released on close or death.

    Raises: StrataError if another process has the store open."""
    f = _flock_nb(directory / LOCK_NAME)
    if f is None:
        raise StrataError(f"layer store {directory} is open in another process "
                          f"(lock {directory / LOCK_NAME} is held)")
    return f


def lock_maintainer(directory: Path) -> BinaryIO:
    """One maintainer per store: an exclusive flock on <dir>/MAINT.

    Raises: StrataError if a maintenance process (or a writer running maintenance
    itself) already has it."""
    f = _flock_nb(directory / MAINT_LOCK_NAME)
    if f is None:
        raise StrataError(f"layer store {directory} already has a maintainer (lock "
                          f"{directory / MAINT_LOCK_NAME} is held: a maintenance process, or "
                          "a writer that runs compaction itself)")
    return f


def try_lock_maintainer(directory: Path) -> BinaryIO | None:
    """MAINT, exclusively flocked, or None if a maintainer holds it (recovery takes it
    for the moment it deletes the maintainer's leftovers)."""
    return _flock_nb(directory / MAINT_LOCK_NAME)


class CommitLock:
    """The COMMIT flock plus a thread lock (a flock does not exclude threads that
    share its descriptor). Held for one manifest commit."""

    def __init__(self, directory: Path) -> None:
        self._f: BinaryIO = open(directory / COMMIT_LOCK_NAME, "a+b")  # noqa: SIM115
        self._thread_lock = threading.Lock()

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        with self._thread_lock:
            fcntl.flock(self._f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._f.fileno(), fcntl.LOCK_UN)

    def close(self) -> None:
        self._f.close()
