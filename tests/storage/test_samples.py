"""Every format version's sample files (tests/data/storage/v<N>) stay readable."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from strata.key import Key, KeyRange
from strata.pagestore import PageStore
from strata.storage.layerfile import FORMAT_VERSION, LayerFile
from strata.storage.manifest import MANIFEST_VERSION, load_manifest
from strata.storage.tools import verify_store

from .make_samples import SAMPLE_VERSIONS, sample_dir, sample_history, sample_redo


def test_current_format_version_has_a_committed_sample() -> None:
    assert (FORMAT_VERSION, MANIFEST_VERSION) == (7, 1), "new version: add its sample dir"
    assert FORMAT_VERSION in SAMPLE_VERSIONS
    assert (sample_dir(FORMAT_VERSION) / "MANIFEST").is_file()


@pytest.mark.parametrize("version", SAMPLE_VERSIONS)
def test_samples_verify_and_hold_the_sample_history(version: int, tmp_path: Path) -> None:
    src = sample_dir(version)
    rep = verify_store(src)
    assert rep.ok and rep.layers_ok == 3 and rep.entries == 16
    m = load_manifest(src)
    assert m is not None and m.durable_lsn == 0x300
    for le in m.layers:
        f = LayerFile(src / le.name.filename())
        assert f.name == le.name and f.version == version
        # v2: from the header; v1: counted from the blocks. Same answer.
        # second delta layer: block 1's three records (+0 +1 +2); else one per key
        # (v3 counts record runs: an image layer has none)
        want = (0 if version >= 3 else 1) if le.name.is_image else \
            {0x200: 1, 0x301: 3}[le.name.lsn_end]
        assert f.max_key_entries() == want
        f.close()
    d = tmp_path / "layers"
    shutil.copytree(src, d)
    ps = PageStore.open(d, sample_redo, background=False)
    try:
        b1 = Key.rel_block(1663, 5, 16384, 0, 1)
        assert ps.get_page(b1, 0x1FF) == bytes([1]) * 64
        assert ps.get_page(b1, 0x210) == bytes([1]) * 64 + b"+0+1+2"
        assert ps.get_page(Key.rel_size(1663, 5, 16384, 0), 0x300) == (4).to_bytes(4, "big")
        dropped = Key.rel_block(1663, 5, 16385, 0, 0)
        assert ps.get_page(dropped, 0x2FF) == b"init"
        assert ps.get_page(dropped, 0x300) is None
        keys_at_end = [k for k, _ in ps.scan(KeyRange.everything(), 0x300)]
        assert dropped not in keys_at_end and len(keys_at_end) == 5
        assert {k for k, _, _ in sample_history()} == set(keys_at_end) | {dropped}
    finally:
        ps.close()


@pytest.mark.parametrize("version", [1, 3, 4, 6, 7])
def test_format_md_worked_example_is_what_dump_layer_prints(version: int) -> None:
    from strata.storage.tools import dump_layer

    doc = (Path(__file__).resolve().parents[2] / "src/strata/storage/FORMAT.md").read_text()
    f = sample_dir(version) / ("000000067F00000005000040000000000001-"
                               "000000067F00000005000040010000000001"
                               "__0000000000000200-0000000000000301.delta")
    lines = list(dump_layer(f))
    assert len(lines) > 10
    for line in lines:
        assert line in doc, f"FORMAT.md worked example is stale: {line!r}"
