"""Writes the sample store of the current format version under
tests/data/storage/v<FORMAT_VERSION>/layers (same history for every version).

Run once per format version: `python -m tests.storage.make_samples`. The files are
committed; test_samples.py reads every version's, so a reader change that breaks old
files fails. Never regenerate an older version's directory.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from strata.key import Key
from strata.pagestore import PageStore
from strata.storage.config import StorageConfig
from strata.storage.directory import LOCK_NAMES
from strata.storage.layerfile import FORMAT_VERSION
from strata.storage.values import TOMBSTONE, PageImage, Value, WalRecord

SAMPLES_ROOT = Path(__file__).resolve().parents[1] / "data" / "storage"
# Layer format versions with a committed sample store (v1 also backs FORMAT.md's worked example).
SAMPLE_VERSIONS = (1, 2, 3, 4, 5, 6, 7)
SAMPLE_DIR = SAMPLES_ROOT / "v1" / "layers"


def sample_dir(version: int) -> Path:
    return SAMPLES_ROOT / f"v{version}" / "layers"


def sample_history() -> list[tuple[Key, int, Value]]:
    """The puts behind the sample: relation 16384 blocks 0..3, and a dropped relation."""
    out: list[tuple[Key, int, Value]] = []
    for blk in range(4):
        out.append((Key.rel_block(1663, 5, 16384, 0, blk), 0x100 + blk * 8,
                    PageImage(bytes([blk]) * 64)))
    out.append((Key.rel_size(1663, 5, 16384, 0), 0x120, PageImage((4).to_bytes(4, "big"))))
    out.append((Key.rel_block(1663, 5, 16385, 0, 0), 0x128, WalRecord(b"init", True)))
    for i in range(3):
        out.append((Key.rel_block(1663, 5, 16384, 0, 1), 0x200 + i * 8, WalRecord(b"+%d" % i)))
    out.append((Key.rel_block(1663, 5, 16385, 0, 0), 0x300, TOMBSTONE))
    return out


def sample_redo(key: Key, base: bytes | None, records: list[WalRecord]) -> bytes:
    return (base or b"") + b"".join(r.data for r in records)


def main() -> None:
    out = sample_dir(FORMAT_VERSION)
    if out.exists():
        shutil.rmtree(out)
    cfg = StorageConfig(memtable_bytes=1 << 20, block_bytes=128, background_maintenance=False)
    ps = PageStore.open(out, sample_redo, cfg, background=False)
    hist = sample_history()
    for key, lsn, v in hist[:6]:
        ps.put(key, lsn, v)
    ps.advance(0x1FF)
    ps.flush()
    ps.create_image_layers(threshold=0)
    for key, lsn, v in hist[6:]:
        ps.put(key, lsn, v)
    ps.advance(0x300)
    ps.flush()
    ps.close()
    for name in LOCK_NAMES:
        (out / name).unlink()


if __name__ == "__main__":
    main()
