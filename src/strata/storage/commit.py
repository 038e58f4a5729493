"""The manifest commit protocol, in one place, for edits from two processes.

Fed by: every verb that changes the set of live layers or a watermark: the
writer's flush (add an L0, raise durable_lsn) and the maintainer's
compact_l0 (replace L0s by L1s), create_image_layers (add images) and gc
(raise retention_lsn, remove layers). Feeds: the MANIFEST on disk and the
committing store's read view. Owns: the order of a commit (FORMAT.md
section 5) and the validation of an edit against the manifest it applies to.

One commit, under the COMMIT flock (directory.CommitLock):

1. read the newest MANIFEST on disk (the other process may have committed
   since this one last looked) and validate the edit against it; a conflict
   deletes the edit's new files and raises `EditConflict` (nothing changed);
2. rename the edit's sealed temporary layer files to their names, fsync dir;
3. write the edited manifest (generation + 1): MANIFEST.tmp, fsync, rename
   over MANIFEST, fsync dir. This rename is the single commit point;
4. unlink the files the edit removed (no manifest names them any more; a
   reader that opened them keeps reading them, one that did not re-reads the
   manifest: invariant 15), fsync dir;
5. open the layers the newest manifest adds (this edit's and the other
   process's) and make it what this process's reads see.

`crash_point(name)` is called at each step (`<verb>:renamed` before the manifest
edit, `<verb>:committed` after it, `retire:unlinked-one` per unlinked file) so
crash tests can die exactly there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

from strata import durable
from strata.errors import StrataError
from strata.lsn import Lsn
from strata.storage.layerwriter import SealedLayer
from strata.storage.manifest import (
    LayerEntry,
    Manifest,
    commit_manifest,
    committed_generation,
    load_manifest,
)
from strata.storage.memtable import FrozenMemtable
from strata.storage.naming import LayerName
from strata.storage.store import LayerStore


def _no_crash_point(point: str) -> None:
    return None


# Test hook (see module docstring).
crash_point: Callable[[str], None] = _no_crash_point


class EditConflict(StrataError):
    """An edit no longer applies to the newest manifest (e.g. a compaction input was
    removed meanwhile). Nothing was committed; the edit's new files are deleted."""


@dataclass(frozen=True, slots=True)
class NewLayer:
    """A layer an edit adds: its manifest entry and, unless the file is already in
    place under its name, the sealed temporary file the commit renames."""

    entry: LayerEntry
    sealed: SealedLayer | None = None


@dataclass(frozen=True, slots=True)
class Edit:
    """One manifest edit. `verb` names it in crash points and errors."""

    verb: str
    add: tuple[NewLayer, ...] = ()
    remove: frozenset[LayerName] = frozenset()
    durable_lsn: int | None = None
    retention_lsn: int | None = None

    def abort(self) -> None:
        """Delete the edit's sealed temporary files (it will never be committed)."""
        for nl in self.add:
            if nl.sealed is not None:
                with contextlib.suppress(FileNotFoundError):
                    durable.fs().unlink(nl.sealed.tmp)


def validate(edit: Edit, m: Manifest) -> None:
    """Raises: EditConflict if `edit` does not apply to `m`: a layer it removes is not
    live, a watermark would go back (or retention above durable), an image would lie
    outside [retention_lsn, durable_lsn], or a new delta layer would overlap a live
    one in both key and LSN range (invariant 6)."""
    def conflict(what: str) -> EditConflict:
        return EditConflict(f"{edit.verb} no longer applies to manifest generation "
                            f"{m.generation}: {what}")

    live = {le.name for le in m.layers}
    gone = sorted(n for n in edit.remove if n not in live)
    if gone:
        raise conflict(f"layer {gone[0]} is no longer live")
    durable = m.durable_lsn if edit.durable_lsn is None else edit.durable_lsn
    retention = m.retention_lsn if edit.retention_lsn is None else edit.retention_lsn
    if durable < m.durable_lsn or retention < m.retention_lsn:
        raise conflict(f"durable_lsn {Lsn(durable)} / retention_lsn {Lsn(retention)} would go "
                       f"back from {Lsn(m.durable_lsn)} / {Lsn(m.retention_lsn)}")
    if retention > durable:
        raise conflict(f"retention_lsn {Lsn(retention)} above durable_lsn {Lsn(durable)}")
    added = {nl.entry.name for nl in edit.add}
    staying = [n for n in live if not n.is_image and n not in edit.remove and n not in added]
    for name in added:
        if name.is_image:
            if not retention <= name.image_lsn <= durable:
                raise conflict(f"image layer {name} outside [{Lsn(retention)}, {Lsn(durable)}]")
            continue
        for o in staying:
            if (o.key_start < name.key_end and name.key_start < o.key_end
                    and o.lsn_start < name.lsn_end and name.lsn_start < o.lsn_end):
                raise conflict(f"delta layer {name} overlaps live {o} in key and LSN range")


def commit(store: LayerStore, edit: Edit,
           drop_frozen: FrozenMemtable | None = None) -> Manifest:
    """Commit `edit` (module docstring) and make the result what `store`'s reads see.

    Raises: EditConflict (nothing changed, the edit's files deleted); OSError from
    the file system (the edit may or may not be committed: the next open recovers)."""
    lock = store.commit_lock
    if lock is None:
        edit.abort()
        raise StrataError(f"layer store {store.directory} is open read-only")
    d = store.directory
    with lock.held():
        try:
            # the one we hold, unless another role or process committed since
            held = store.manifest
            m = held if committed_generation(d) == held.generation else load_manifest(d)
            if m is None:
                raise StrataError(f"layer store {d}: the manifest is gone")
            validate(edit, m)
        except BaseException:
            edit.abort()
            raise
        sealed = [nl.sealed for nl in edit.add if nl.sealed is not None]
        try:
            for s in sealed:
                durable.fs().rename(s.tmp, d / s.name.filename())
        except BaseException:
            edit.abort()
            raise
        if sealed:
            durable.fs().fsync_dir(d)
        crash_point(f"{edit.verb}:renamed")
        new = m.edit(add=tuple(nl.entry for nl in edit.add), remove=tuple(edit.remove),
                     durable_lsn=edit.durable_lsn, retention_lsn=edit.retention_lsn)
        commit_manifest(d, new)
        crash_point(f"{edit.verb}:committed")
        _retire(store, new, edit.remove)
        store.install(new, store.open_layers(new), drop_frozen)
        return new


def _retire(store: LayerStore, m: Manifest, remove: frozenset[LayerName]) -> None:
    """Unlink files of layers `m` (committed) no longer names."""
    live = m.names()
    n = 0
    for name in sorted(remove):
        fn = name.filename()
        if fn in live:
            continue
        with contextlib.suppress(FileNotFoundError):
            durable.fs().unlink(store.directory / fn)
        n += 1
        crash_point("retire:unlinked-one")
    if n:
        durable.fs().fsync_dir(store.directory)
        store.count(layers_removed=n)
