"""Power cuts, not kills, for the time map and its DDL log (timemap/FORMAT.md):
both files are written through `strata.durable` onto the fault-injecting file
system (tests/storage/faultfs.py), which loses every write and directory entry
not fsynced when the power goes. A fixed history of appends and syncs runs once
per cut point; after each cut the map reopens with every entry that a completed
`sync()` covered, in order, and nothing else (no torn or invented entry).

The same sweep with one fsync removed through a hook (not by editing code) must
find a cut point that loses a synced entry: that shows the sweep can see it."""

from __future__ import annotations

import contextlib
import gc as pygc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from strata import durable
from strata.lsn import Lsn
from strata.timemap.ddl import DdlChange, DdlEntry
from strata.timemap.timemap import EndKind, TimeMap, TxEnd
from tests.storage.faultfs import FaultFS, PowerCut

ROUNDS = 6
PER_ROUND = 5


def _tx(n: int) -> TxEnd:
    return TxEnd(Lsn(100 * n), Lsn(100 * n + 40), 1_000_000 * n, 700 + n,
                 EndKind.ABORT if n % 4 == 3 else EndKind.COMMIT, 0)


def _ddl(n: int) -> DdlEntry:
    change = DdlChange(f"CREATE TABLE public.t{n}", "CREATE", "TABLE", "public", f"t{n}",
                       (f"public.t{n}",), "postgres")
    return DdlEntry(Lsn(100 * n), Lsn(100 * n + 40), 1_000_000 * n, 700 + n, 5, "postgres",
                    (change,))


@contextlib.contextmanager
def _until_cut(d: Path, ffs: FaultFS) -> Iterator[None]:
    """Writes to `d` through `ffs` until its power cut (the block ends there), then
    the files as the cut left them."""
    d.mkdir(parents=True, exist_ok=True)
    ffs.track(d)
    with durable.using(ffs), contextlib.suppress(PowerCut):
        yield
    pygc.collect()  # no file object of the dead run may write after the restore
    ffs.restore()


def run_until_cut(d: Path, ffs: FaultFS, anchors: list[int] | None = None) -> list[int]:
    """Appends and syncs until the power cut (or the end); returns the entry
    numbers each completed sync made durable. With `anchors`, retention trims
    after every sync but the first, keeping from three entries back (each trim
    notes its kept entry there first)."""
    synced: list[int] = []
    with _until_cut(d, ffs):
        tm = TimeMap.open(d)
        n = 0
        for r in range(ROUNDS):
            for _ in range(PER_ROUND):
                n += 1
                tm.append(_tx(n))
                if n % 2 == 0:  # every other transaction did DDL
                    tm.ddl.append(_ddl(n))
            tm.sync()
            synced.append(n)
            if anchors is not None and r:
                anchors.append(n - 3)
                tm.trim_before(_tx(n - 3).end_lsn)
        tm.close()
    return synced


def check_recovered(d: Path, synced: list[int]) -> None:
    """Raises AssertionError if a synced entry is lost or a wrong one appears."""
    upto = synced[-1] if synced else 0
    tm = TimeMap.open(d)  # the writer's open: cuts any torn tail
    try:
        got = [e.start_lsn for e in tm.entries()]
        assert got == [Lsn(100 * n) for n in range(1, len(got) + 1)], "entries out of order"
        assert len(got) >= upto, f"synced entries lost: {len(got)} of {upto}"
        assert list(tm.entries()) == [_tx(n) for n in range(1, len(got) + 1)]
        ddl = [e.start_lsn for e in tm.ddl.entries()]
        assert ddl == [Lsn(100 * n) for n in range(2, 2 * len(ddl) + 1, 2)], "DDL out of order"
        assert len(ddl) >= upto // 2, f"synced DDL entries lost: {len(ddl)} of {upto // 2}"
    finally:
        tm.close()


def sweep(root: Path, skip_fsync: Callable[[Path], bool] = lambda p: False) -> list[str]:
    """Cut at every operation of the history; returns the failures found."""
    full = FaultFS()
    run_until_cut(root / "full", full)
    failures: list[str] = []
    for n in range(full.ops):
        ffs = FaultFS(cut_at=n, skip_fsync=skip_fsync)
        d = root / f"cut{n}"
        synced = run_until_cut(d, ffs)
        try:
            check_recovered(d, synced)
        except AssertionError as e:
            failures.append(f"cut at operation {n} ({ffs.log[-1:] if ffs.log else 'open'}): {e}")
    return failures


def test_power_cut_at_every_operation_keeps_what_sync_covered(tmp_path: Path) -> None:
    failures = sweep(tmp_path)
    assert not failures, "\n".join(failures[:5])


@pytest.mark.parametrize("missing", ["timemap.dat", "ddl.dat"])
def test_a_removed_fsync_is_caught(tmp_path: Path, missing: str) -> None:
    failures = sweep(tmp_path, lambda p: p.name == missing)
    assert failures, f"no cut point noticed the missing fsync of {missing}"


def test_a_missing_directory_fsync_at_creation_is_caught(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A new file's name is durable only after its directory is fsynced: without
    that, a cut after the first sync loses the whole (synced) file."""
    monkeypatch.setattr(FaultFS, "fsync_dir", lambda self, path: self.step("fsync_dir", path))
    assert sweep(tmp_path), "no cut point noticed the missing directory fsync"


def _trim_history(d: Path, ffs: FaultFS) -> tuple[list[int], list[int]]:
    """`run_until_cut` with trims: (synced entry numbers, the entry each trim kept)."""
    anchors: list[int] = []
    return run_until_cut(d, ffs, anchors), anchors


def test_a_power_cut_during_trimming_keeps_every_entry_from_the_trim_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Trimming (FORMAT.md, "Trimming") rewrites the header in place and then
    punches the trimmed blocks out: a cut at any operation leaves the old head or
    the new one, every synced entry from the last trim's anchor on, and nothing
    torn. (The model restores what was fsynced, holes included or not: the order
    header-then-punch is `TimeMap.trim_before`'s, read there.)"""
    from strata.timemap import timemap as tm_mod

    monkeypatch.setattr(tm_mod, "BLOCK_ENTRIES", 2)
    full = FaultFS()
    _trim_history(tmp_path / "full", full)
    trims = 0
    for cut in range(full.ops):
        d = tmp_path / f"cut{cut}"
        synced, anchors = _trim_history(d, FaultFS(cut_at=cut))
        tm = TimeMap.open(d)
        try:
            got = [int(e.start_lsn) // 100 for e in tm.entries()]
            assert got == list(range(got[0], got[0] + len(got))) if got else True, got
            assert not synced or (got and got[-1] >= synced[-1]), f"cut {cut}: synced lost"
            if anchors:
                assert got[0] <= anchors[-1], f"cut {cut}: trimmed past {anchors[-1]}"
            if got:
                assert (got[0] - 1) % 2 == 0, f"cut {cut}: head inside a block"
                trims += got[0] > 1
            assert list(tm.entries()) == [_tx(n) for n in got]
        finally:
            tm.close()
    assert trims > 10  # most cut points come after a trim that took effect
