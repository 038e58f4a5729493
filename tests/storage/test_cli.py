"""strata dump-layer / verify / ls-layers / compact / gc on a real store."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from strata.cli import compact as cli_compact
from strata.cli import gc as cli_gc
from strata.cli.main import main
from strata.pagestore import PageStore
from strata.storage.layerfile import open_layer
from strata.storage.manifest import Level, load_manifest

from .conftest import TINY, Model, append_redo, rk
from .make_samples import SAMPLE_DIR
from .test_store import fill


@pytest.fixture
def home(tmp_path: Path) -> Path:
    ps = PageStore.open(tmp_path / "layers", append_redo, TINY, background=False)
    fill(ps, Model(), 0, 120)
    ps.flush()
    ps.close()
    return tmp_path


def test_dump_layer_prints_header_blocks_entries_index_footer(capsys: pytest.CaptureFixture[str]) -> None:
    f = sorted(SAMPLE_DIR.glob("*.delta"))[0]
    assert main(["dump-layer", str(f)]) == 0
    out = capsys.readouterr().out
    for part in ("header        offset 0, 72 bytes", "kind        delta", "block 0 ", "index ",
                 "footer ", "record+init", "image  len=64"):
        assert part in out


def test_verify_passes_then_fails_on_a_flipped_byte(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", "--home", str(home)]) == 0
    assert "verify OK" in capsys.readouterr().out
    victim = sorted((home / "layers").glob("*.delta"))[1]
    data = bytearray(victim.read_bytes())
    data[80] ^= 0x10
    victim.write_bytes(bytes(data))
    assert main(["verify", "--home", str(home)]) == 1
    out = capsys.readouterr().out
    assert "CORRUPT" in out and victim.name in out and "checksum mismatch at offset" in out


def test_ls_layers_lists_kind_ranges_and_sizes(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ls-layers", "--home", str(home)]) == 0
    out = capsys.readouterr().out
    m = load_manifest(home / "layers")
    assert m is not None
    assert out.count("L0 delta") == len(m.layers)
    assert f"{len(m.layers)} layers" in out and "durable_lsn 0/3C0" in out


def test_compaction_reports_its_progress_in_entries_merged(home: Path) -> None:
    before = load_manifest(home / "layers")
    assert before is not None and {le.level for le in before.layers} == {Level.L0}
    entries = sum(open_layer(home / "layers" / le.name.filename()).entry_count
                  for le in before.layers)
    seen: list[tuple[int, int]] = []
    with PageStore.open(home / "layers", append_redo, TINY, background=False) as ps:
        ps.compact(force=True, progress=lambda done, total: seen.append((done, total)))
    assert seen and seen[-1] == (entries, entries)  # every L0 entry merged, none twice
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_compact_and_gc_commands_rewrite_the_store(home: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compact", "--home", str(home)]) == 0
    assert "compact: merging the L0 layers" in capsys.readouterr().err  # lines: no terminal
    m = load_manifest(home / "layers")
    assert m is not None and {le.level for le in m.layers} == {Level.L1}
    # image creation at the horizon needs redo: give the CLI the test redo
    monkeypatch.setattr(cli_compact, "reconstruct_value", append_redo)
    monkeypatch.setattr(cli_gc, "reconstruct_value", append_redo)
    assert main(["compact", "--home", str(home), "--images", "--threshold", "0"]) == 0
    assert "image layers written at 0/3C0" in capsys.readouterr().out
    assert main(["gc", "--home", str(home), "--horizon", "0/3C0"]) == 0
    out = capsys.readouterr().out
    assert "retention_lsn 0/3C0" in out and "removed" in out
    m = load_manifest(home / "layers")
    assert m is not None and {le.level for le in m.layers} == {Level.IMAGE}
    ps = PageStore.open(home / "layers", append_redo, TINY, background=False)
    try:
        assert ps.get_page(rk(3), 0x3C0) is not None
    finally:
        ps.close()


@pytest.mark.parametrize("command", ["verify", "ls-layers", "compact", "gc"])
def test_a_home_without_a_store_says_no_store_here(tmp_path: Path, command: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main([command, "--home", str(tmp_path / "empty")]) == 1
    err = capsys.readouterr().err
    assert "no store here" in err and "CORRUPT" not in err


def test_gc_without_a_horizon_is_a_readable_error(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["gc", "--home", str(home)]) == 1
    assert "--horizon" in capsys.readouterr().err


def test_verify_on_the_committed_sample_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copytree(SAMPLE_DIR, tmp_path / "layers")
    assert main(["verify", "--home", str(tmp_path)]) == 0
