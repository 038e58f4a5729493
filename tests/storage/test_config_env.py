"""Storage limits from the environment (`StorageConfig.from_env`, `STRATA_STORAGE`):
what every process `strata up` starts uses when it opens a store without a config."""

from __future__ import annotations

from pathlib import Path

import pytest

from strata.errors import ConfigError
from strata.storage.config import ENV_VAR, StorageConfig
from strata.storage.store import LayerStore

from .conftest import append_redo


def test_settings_of_every_type_are_read_and_given_values_win() -> None:
    cfg = StorageConfig.from_env(
        {ENV_VAR: " memtable_bytes=1000 , image_bytes_ratio=0.5,background_maintenance=off,"
                  "retention_lsn_distance=none,block_cache_bytes=0"},
        cache_pages=7, memtable_bytes=2000)
    assert (cfg.memtable_bytes, cfg.image_bytes_ratio, cfg.background_maintenance,
            cfg.retention_lsn_distance, cfg.block_cache_bytes, cfg.cache_pages) == (
        2000, 0.5, False, None, 0, 7)
    assert StorageConfig.from_env({}) == StorageConfig()
    assert StorageConfig.from_env({ENV_VAR: "retention_lsn_distance=5"}).retention_lsn_distance == 5


@pytest.mark.parametrize(("text", "says"), [
    ("memtable=1", "'memtable=1' is not name=value with a storage setting"),
    ("memtable_bytes", "'memtable_bytes' is not name=value"),
    ("memtable_bytes=lots", "memtable_bytes='lots' is not of type int"),
    ("verify_on_open=maybe", "verify_on_open='maybe' is not of type bool"),
    ("maintenance_nice=30",
     "STRATA_STORAGE='maintenance_nice=30': invalid storage config values: maintenance_nice"),
])
def test_a_bad_setting_is_refused_by_name(text: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        StorageConfig.from_env({ENV_VAR: text})


def test_a_store_opened_without_a_config_takes_the_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, "memtable_bytes=12345,block_bytes=4096")
    st = LayerStore.open(tmp_path / "s", append_redo)
    try:
        assert (st.config.memtable_bytes, st.config.block_bytes) == (12345, 4096)
    finally:
        st.close()
    monkeypatch.setenv(ENV_VAR, "memtable_bytes=-1")
    with pytest.raises(ConfigError, match="memtable_bytes"):
        LayerStore.open(tmp_path / "s", append_redo)
