"""The manifest commit protocol, in one place.

Fed by: every verb that changes the set of live layers or a watermark (flush,
compact_l0, create_image_layers, gc). Feeds: the MANIFEST on disk and the
store's in-memory view (`LayerStore.install`). Owns: the order of a commit
(FORMAT.md section 5): layer files already written, fsynced and renamed; the
manifest edit (MANIFEST.tmp, fsync, rename, fsync dir) is the single commit
point; only then do readers see the change; files the edit removed are
unlinked after it.

`crash_point(name)` is called at each step (`<verb>:renamed` before the manifest
edit, `<verb>:committed` after it, `retire:unlinked-one` per unlinked file) so
crash tests can die exactly there.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet

from strata.storage.layerfile import fsync_dir
from strata.storage.layermap import Layer
from strata.storage.manifest import commit_manifest
from strata.storage.memtable import FrozenMemtable
from strata.storage.naming import LayerName
from strata.storage.store import LayerStore


def _no_crash_point(point: str) -> None:
    return None


# Test hook (see module docstring).
crash_point: Callable[[str], None] = _no_crash_point


def commit(store: LayerStore, point: str, *, add: Sequence[Layer] = (),
           remove: AbstractSet[LayerName] = frozenset(),
           durable_lsn: int | None = None, retention_lsn: int | None = None,
           drop_frozen: FrozenMemtable | None = None) -> list[Layer]:
    """One manifest edit: computed from the current manifest, committed (the single
    commit point), then published to readers. Returns: layers no longer live."""
    with store.commit_lock:
        crash_point(f"{point}:renamed")
        m = store.manifest.edit(add=tuple(la.entry for la in add), remove=tuple(remove),
                                durable_lsn=durable_lsn, retention_lsn=retention_lsn)
        commit_manifest(store.directory, m)
        crash_point(f"{point}:committed")
        return store.install(m, add, set(remove), drop_frozen)


def retire(store: LayerStore, gone: list[Layer]) -> None:
    """Unlink files of layers no longer in the (already committed) manifest."""
    live = store.manifest.names()
    for la in gone:
        fn = la.name.filename()
        if fn in live:
            continue
        with contextlib.suppress(FileNotFoundError):
            os.unlink(store.directory / fn)
        crash_point("retire:unlinked-one")
    if gone:
        fsync_dir(store.directory)
        store.count(layers_removed=len(gone))
