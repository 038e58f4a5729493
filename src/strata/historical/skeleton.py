"""Prepared data-directory skeletons, so a new point only writes what depends on X.

Fed by nothing but the server settings. Feeds `modes` (a lazy instance's
overlay directory). Owns `<instances root>/.skeletons/`: up to `size`
directories, each with the empty directories PostgreSQL expects, PG_VERSION
and our configuration files (`materialize.write_skeleton`, `write_config`),
owned by the server user, mode 0700. `take` moves one into place (a rename)
and a background thread prepares the next.
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import threading
from collections.abc import Mapping
from pathlib import Path

from strata.historical.materialize import write_config, write_skeleton
from strata.runtime.osuser import give_to_server_user

log = logging.getLogger(__name__)

SKELETONS_DIR = ".skeletons"


def build_skeleton(path: Path, settings: Mapping[str, str] | None = None) -> Path:
    """A skeleton at `path` (which must not exist)."""
    write_skeleton(path)
    write_config(path, None, settings)
    give_to_server_user(path, recursive=True, mode=0o700)
    return path


class SkeletonPool:
    """See the module docstring. Thread-safe."""

    def __init__(self, instances_root: Path, *, size: int = 2,
                 settings: Mapping[str, str] | None = None) -> None:
        self.dir = Path(instances_root) / SKELETONS_DIR
        self.size = size
        self.settings = dict(settings or {})
        self._lock = threading.Lock()
        self._ready: list[Path] = []
        self._seq = itertools.count()
        self._refill: threading.Thread | None = None
        shutil.rmtree(self.dir, ignore_errors=True)  # leftovers of an earlier run
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o755)
        self._start_refill()

    def _build_one(self) -> Path:
        return build_skeleton(self.dir / f"s{os.getpid()}-{next(self._seq)}", self.settings)

    def _fill(self) -> None:
        try:
            while True:
                with self._lock:
                    if len(self._ready) >= self.size:
                        return
                path = self._build_one()
                with self._lock:
                    self._ready.append(path)
        except Exception:
            log.exception("preparing a data-directory skeleton failed")

    def _start_refill(self) -> None:
        with self._lock:
            if self._refill is not None and self._refill.is_alive():
                return
            self._refill = threading.Thread(target=self._fill, name="strata-skeletons",
                                            daemon=True)
            self._refill.start()

    def take(self, dest: Path) -> Path:
        """Move a prepared skeleton to `dest` (built on the spot when none is ready).

        Requires: `dest` does not exist and is on the same file system as the pool.
        """
        with self._lock:
            path = self._ready.pop() if self._ready else None
        if path is None:
            path = self._build_one()
        os.rename(path, dest)
        self._start_refill()
        return dest

    def close(self) -> None:
        t = self._refill
        if t is not None:
            t.join(timeout=30)
        shutil.rmtree(self.dir, ignore_errors=True)
