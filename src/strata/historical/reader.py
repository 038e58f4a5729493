"""Reading the page store from a process that does not own it.

What historical compute needs of the store is small: GetPage@LSN, range scans
and key listings at an LSN (`PageReader`). Fed by a layer store directory
(written by the ingest process). Feeds the lazy file system process, and
materialize workers. Owns nothing on disk: it never writes, locks or deletes.

`open_reader` uses `PageStore.open_readonly` (a manifest snapshot, safe while
the writer and maintenance change the store; storage/FORMAT.md invariant 15).
"""

from __future__ import annotations

from pathlib import Path

from strata.pagestore import PageReader, PageStore, StoreReader

__all__ = ["PageReader", "open_reader"]


def open_reader(directory: Path | str) -> StoreReader:
    """A read-only view of the store in `directory` (the caller closes it).

    Raises: StrataError when there is no store; CorruptionError when a layer is damaged.
    """
    from strata.reconstruct.reconstruct import reconstruct_value

    return PageStore.open_readonly(Path(directory), reconstruct_value)
