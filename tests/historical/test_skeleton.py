"""Prepared data-directory skeletons: taken by a rename, refilled, removed at close."""

from __future__ import annotations

from pathlib import Path

from strata.historical.materialize import SKELETON
from strata.historical.skeleton import SKELETONS_DIR, SkeletonPool


def test_a_taken_skeleton_has_every_directory_and_our_config(tmp_path: Path) -> None:
    pool = SkeletonPool(tmp_path, size=2, settings={"work_mem": "'8MB'"})
    try:
        a = pool.take(tmp_path / "a")
        b = pool.take(tmp_path / "b")
        for d in (a, b):
            assert all((d / name).is_dir() for name in SKELETON)
            assert (d / "PG_VERSION").read_text() == "18\n"
            conf = (d / "postgresql.conf").read_text()
            assert "hot_standby = on" in conf and "work_mem = '8MB'" in conf
            assert (d.stat().st_mode & 0o777) == 0o700
        assert a != b
    finally:
        pool.close()
    assert not (tmp_path / SKELETONS_DIR).exists()
    assert (tmp_path / "a").is_dir()  # what was taken belongs to the taker
