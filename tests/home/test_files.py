"""The home's JSON files (home/FORMAT.md): `write_json` through `strata.durable`
leaves, after a power cut at any of its operations, the old file or the new
one, whole, and once it returned, the new one."""

from __future__ import annotations

import gc as pygc
import json
from pathlib import Path

import pytest

from strata import durable
from strata.home.files import write_json
from tests.storage.faultfs import FaultFS, PowerCut

OLD = {"version": 1, "what": "old"}
NEW = {"version": 1, "what": "new", "more": list(range(50))}


def _replace_with_cut(d: Path, ffs: FaultFS) -> bool:
    """Write OLD, then NEW over it on `ffs`; True if NEW's write returned."""
    d.mkdir()
    write_json(d / "x.json", OLD)
    ffs.track(d)
    done = False
    with durable.using(ffs):
        try:
            write_json(d / "x.json", NEW)
            done = True
        except PowerCut:
            pass
    pygc.collect()
    ffs.restore()
    return done


def test_a_power_cut_leaves_the_old_or_the_new_file_whole(tmp_path: Path) -> None:
    full = FaultFS()
    assert _replace_with_cut(tmp_path / "full", full)
    assert full.ops >= 4  # create, write, fsync, rename, fsync of the directory
    for n in range(full.ops + 1):
        d = tmp_path / f"cut{n}"
        done = _replace_with_cut(d, FaultFS(cut_at=n))
        got = json.loads((d / "x.json").read_text())
        assert got in (OLD, NEW), (n, got)
        if done:
            assert got == NEW, f"cut at {n}: write_json returned, yet the old file came back"


@pytest.mark.parametrize("skip", ["fsync", "fsync_dir"])
def test_the_power_cut_check_sees_a_missing_fsync(tmp_path: Path, skip: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    if skip == "fsync_dir":
        monkeypatch.setattr(FaultFS, "fsync_dir", lambda self, p: self.step("fsync_dir", p))
        ffs = FaultFS(cut_at=10**6)
    else:
        ffs = FaultFS(cut_at=10**6, skip_fsync=lambda p: p.name == "x.json.tmp")
    assert _replace_with_cut(tmp_path / "d", ffs)
    ffs_after = json.loads((tmp_path / "d" / "x.json").read_text() or "null")
    assert ffs_after != NEW, "the lost fsync went unnoticed"
