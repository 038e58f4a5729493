"""Reading the page store from a process that does not own it.

What historical compute needs of the store is small: GetPage@LSN, range scans
and key listings at an LSN (`PageReader`). Fed by a layer store directory
(written by the ingest process). Feeds the lazy file system process, and
materialize workers. Owns nothing on disk: it never writes, locks or deletes.

`open_reader` uses `PageStore.open_readonly` (a manifest snapshot, safe while
the writer and maintenance change the store) when the storage package has it.
Until then it loads the last committed manifest itself, without the writer's
lock: safe while no writer runs, or while nothing the snapshot names is
deleted (tests open it after the writer closed it).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from strata.errors import CorruptionError
from strata.key import Key, KeyRange
from strata.pagestore import PageStore


class PageReader(Protocol):
    """The read side of `PageStore`."""

    def get_page(self, key: Key, lsn: int) -> bytes | None: ...

    def scan(self, key_range: KeyRange, lsn: int) -> Iterator[tuple[Key, bytes]]: ...

    def keys(self, key_range: KeyRange, lsn: int) -> Iterator[Key]: ...


def open_reader(directory: Path | str) -> PageStore:
    """A read-only view of the store in `directory` (the caller closes it).

    Raises: CorruptionError when there is no committed manifest or a layer is damaged.
    """
    from strata.reconstruct.reconstruct import reconstruct_value

    opener = getattr(PageStore, "open_readonly", None)
    if opener is not None:
        return opener(Path(directory), reconstruct_value)  # type: ignore[no-any-return]
    return _snapshot_open(Path(directory))


def _snapshot_open(directory: Path) -> PageStore:
    from strata.reconstruct.reconstruct import reconstruct_value
    from strata.storage.config import StorageConfig
    from strata.storage.layerfile import open_layer
    from strata.storage.layermap import Layer
    from strata.storage.manifest import load_manifest
    from strata.storage.store import LayerStore

    manifest = load_manifest(directory)
    if manifest is None:
        raise CorruptionError(f"{directory} has no committed manifest: not a layer store")
    layers = []
    try:
        for le in manifest.layers:
            layers.append(Layer(le, open_layer(directory / le.name.filename())))
    except BaseException:
        for la in layers:
            la.file.close()
        raise
    store = LayerStore(directory, reconstruct_value, StorageConfig(), manifest, layers)
    return PageStore(store, background=False)
