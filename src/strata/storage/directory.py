"""Process-level guards of a layer directory: the one-writer lock and the
open-file budget.

Fed by: LayerStore.open / commits. Owns: the LOCK file (an exclusive flock,
released on close or process death).
"""

from __future__ import annotations

import fcntl
import logging
import resource
from pathlib import Path
from typing import BinaryIO

from strata.errors import StrataError

log = logging.getLogger(__name__)

LOCK_NAME = "LOCK"


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


def lock_directory(directory: Path) -> BinaryIO:
    """One writer per store: an exclusive flock on <dir>/LOCK, released on close or death.

    Raises: StrataError if another process has the store open."""
    f = open(directory / LOCK_NAME, "a+b")  # noqa: SIM115 - held for the store's lifetime
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as e:
        f.close()
        raise StrataError(f"layer store {directory} is open in another process "
                          f"(lock {directory / LOCK_NAME} is held)") from e
    return f
