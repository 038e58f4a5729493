"""Tunable limits of the layer store.

Fed by: callers of `PageStore.open` (the services build one: the maintenance
service from ``--retention``; tools and benchmarks their own), and the
``STRATA_STORAGE`` environment variable (`StorageConfig.from_env`: what a store
opened without a config uses, in every process `strata up` starts). Feeds: every
storage module. Owns: the defaults.
All sizes are bytes unless the name says otherwise.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from strata.errors import ConfigError

ENV_VAR = "STRATA_STORAGE"


@dataclass(frozen=True, slots=True)
class StorageConfig:
    """Limits of one store; validated on construction."""

    # Active memtable is frozen (at the next `advance`) once it holds this many bytes.
    memtable_bytes: int = 64 * 1024 * 1024
    # Frozen memtables waiting for flush before `advance` blocks (backpressure).
    max_frozen_memtables: int = 4
    # Uncompressed bytes of entries per compressed block in a layer file. 256 KiB
    # (64 KiB before the thirty-second session): per block, zstd builds its tables
    # and a reader decodes a block's columns, so bigger blocks cost less CPU per
    # byte to write, compact, image and scan, and compress better; a point read
    # decompresses a bigger block. Replaying pgbench -i -s 100 + 160k TPC-B at
    # 64-MiB steps: compaction -17 %, image creation -15 %, flush -10 %, layer
    # bytes -8 %, cold scans of pgbench_accounts -17 %; a cold GetPage ~+130 us
    # (~+50 %; a lazy server's first row of a small table did not move; BENCHMARKS.md,
    # thirty-second session). Every reader takes any size.
    block_bytes: int = 256 * 1024
    # zstd level for layer blocks (1 = fastest; the write path is CPU-bound in Python).
    zstd_level: int = 1
    # Reconstructed pages kept in the GetPage LRU cache.
    cache_pages: int = 4096
    # Raw bytes of decoded layer blocks kept at the edges of range reads, for the
    # process (cache.BLOCKS: one per process, the last store opened sets it).
    block_cache_bytes: int = 32 * 1024 * 1024
    # compact_l0 runs once this many L0 layers exist.
    l0_compaction_trigger: int = 4
    # L1 delta / image layer files are cut at about this many (uncompressed) bytes.
    target_file_bytes: int = 128 * 1024 * 1024
    # An image layer is created over a key range when more than this many delta
    # layers sit above its newest image.
    image_delta_threshold: int = 3
    # ... or when some key of the range may have more than this many delta entries
    # above its newest image (bounded by summing each delta layer's max_key_entries,
    # its longest run of one key's records,
    # FORMAT.md section 3): a hot page whose deltas sit in a few big layers would
    # otherwise replay its whole chain on every cold read. Twice
    # flush_image_interval: a hot page's cut chain (at most the interval in each
    # flush, so the tail of one layer and the head of the next) never triggers it.
    image_record_threshold: int = 1024
    # ... but past image_delta_threshold layers, images are made only once the
    # deltas above the floor (their blocks in the range) hold this many times the
    # bytes of the floor's images there: image layers then add at most 1/ratio of
    # the delta bytes (FORMAT.md section 7a; 0.5 and 2 measured there, not kept).
    # 0: the layer count alone.
    image_bytes_ratio: float = 1.0
    # ... or once more than this many delta layers are above the floor, whatever
    # their bytes (a read's fan-in stays bounded). 0: no cap.
    image_layer_cap: int = 12
    # While flushing, a key's delta chain is cut every this many deltas: the
    # delta at that point is replaced by the page it produces (a PageImage at
    # the same LSN: the same value for every read at or above it), so a read
    # replays at most this many of one flush's records (plus an older layer's
    # tail after its last cut), even for a page updated thousands of times
    # between two flushes. 0: off. Each cut is a page image (~2.5 KiB compressed
    # for pgbench's tellers page, where a record is ~14 B): 256 made them 8 % of
    # a TPC-B history's layer bytes; 512 records replay in 1-2 ms (BENCHMARKS.md,
    # twenty-fifth session).
    flush_image_interval: int = 512
    # Keep this much LSN history behind durable_lsn (None: keep everything).
    retention_lsn_distance: int | None = None
    # The background worker runs compaction / image creation / gc by itself.
    background_maintenance: bool = True
    # Share of one core the maintenance thread (in-process worker or maintenance
    # process) may use, per second of wall time; it sleeps off any excess
    # (maintenance.py, policy 5). 1.0: unpaced.
    maintenance_cpu_fraction: float = 0.5
    # ... and this share while other processes keep at least
    # maintenance_busy_host_share of the machine's CPUs busy (a loaded primary: what
    # maintenance takes then, it takes from the primary's transactions, nice value or
    # not; FORMAT.md 7b policy 6), unless l0_backlog L0 layers wait for compaction.
    maintenance_busy_cpu_fraction: float = 0.15
    maintenance_busy_host_share: float = 0.5
    l0_backlog: int = 12
    # The maintenance process's scheduling priority (a nice value the supervisor adds
    # to its own when it starts the process): background work yields the CPU to
    # ingest, the proxy, historical servers and the primary (FORMAT.md 7b policy 7). 0: none.
    maintenance_nice: int = 10
    # How often an idle maintenance process looks for a new manifest.
    maintenance_poll_seconds: float = 0.2
    # Check every block's CRC when the store opens (reads a whole store; header, footer
    # and index are always checked on open and each block before it is used).
    verify_on_open: bool = False

    def __post_init__(self) -> None:
        checks = {
            "memtable_bytes": self.memtable_bytes >= 1,
            "max_frozen_memtables": self.max_frozen_memtables >= 1,
            "block_bytes": self.block_bytes >= 1,
            "zstd_level": 1 <= self.zstd_level <= 22,
            "cache_pages": self.cache_pages >= 0,
            "block_cache_bytes": self.block_cache_bytes >= 0,
            "l0_compaction_trigger": self.l0_compaction_trigger >= 1,
            "target_file_bytes": self.target_file_bytes >= 1,
            "image_delta_threshold": self.image_delta_threshold >= 0,
            "image_record_threshold": self.image_record_threshold >= 0,
            "image_bytes_ratio": self.image_bytes_ratio >= 0,
            "image_layer_cap": self.image_layer_cap >= 0,
            "flush_image_interval": self.flush_image_interval >= 0,
            "maintenance_cpu_fraction": 0 < self.maintenance_cpu_fraction <= 1,
            "maintenance_busy_cpu_fraction": 0 < self.maintenance_busy_cpu_fraction <= 1,
            "maintenance_busy_host_share": 0 <= self.maintenance_busy_host_share <= 1,
            "l0_backlog": self.l0_backlog >= 1,
            "maintenance_poll_seconds": self.maintenance_poll_seconds > 0,
            "maintenance_nice": 0 <= self.maintenance_nice <= 19,
            "retention_lsn_distance": self.retention_lsn_distance is None
            or self.retention_lsn_distance >= 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(f"invalid storage config values: {', '.join(bad)} ({self!r})")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **given: Any) -> StorageConfig:
        """The defaults, then `STRATA_STORAGE` ("name=value,...", any field, e.g.
        ``memtable_bytes=33554432,block_cache_bytes=8388608``), then `given`.

        Raises: ConfigError naming a field that is not one, or a value that is not
        of its type or out of its range."""
        text = (os.environ if environ is None else environ).get(ENV_VAR, "").strip()
        types = {f.name: str(f.type) for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for item in filter(None, (p.strip() for p in text.split(","))):
            name, eq, raw = (s.strip() for s in item.partition("="))
            if not eq or name not in types:
                raise ConfigError(f"{ENV_VAR}: {item!r} is not name=value with a storage "
                                  f"setting ({', '.join(sorted(types))})")
            values[name] = _parse(name, types[name], raw)
        try:
            return cls(**(values | given))
        except ConfigError as e:
            if not values:
                raise
            raise ConfigError(f"{ENV_VAR}={text!r}: {e}") from None


def _parse(name: str, kind: str, raw: str) -> Any:
    """`raw` as field `name` of type `kind` (its annotation) wants it."""
    try:
        if kind == "bool":
            if raw.lower() not in ("true", "false", "1", "0", "on", "off"):
                raise ValueError(raw)
            return raw.lower() in ("true", "1", "on")
        if kind.startswith("int") and kind.endswith("None") and raw.lower() == "none":
            return None
        return float(raw) if kind == "float" else int(raw)
    except ValueError:
        raise ConfigError(f"{ENV_VAR}: {name}={raw!r} is not of type {kind}") from None
