"""The manifest: the set of live layers and the store's watermarks.

Fed by: flush, compaction, image creation, gc (each commits one edit).
Feeds: PageStore.open (recovery), verify, ls-layers. Owns: the MANIFEST file
format (FORMAT.md) and the commit point: write MANIFEST.tmp, fsync, rename over
MANIFEST, fsync the directory. A layer file is live iff the manifest names it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field, replace
from enum import IntEnum
from pathlib import Path

from strata import durable
from strata.errors import CorruptionError
from strata.storage.layerfile import crc32c
from strata.storage.naming import MANIFEST_NAME, TMP_SUFFIX, LayerKind, LayerName

MANIFEST_MAGIC = b"STRATAMF"
MANIFEST_VERSION = 1
SUPPORTED_MANIFEST_VERSIONS = (1,)

# magic 8s | version u16 | reserved u16 | generation u64 | durable_lsn u64 |
# retention_lsn u64 | layer count u32
MANIFEST_HEADER = struct.Struct(">8sHHQQQI")
# level u8 | kind u8 | key_start 18s | key_end 18s | lsn_start u64 | lsn_end u64 | file size u64
MANIFEST_LAYER = struct.Struct(">BB18s18sQQQ")
MANIFEST_CRC = struct.Struct(">I")
assert (MANIFEST_HEADER.size, MANIFEST_LAYER.size) == (40, 62)


class Level(IntEnum):
    """Written to disk: never renumber."""

    L0 = 0  # delta layer from one flush: every key of an LSN range
    L1 = 1  # delta layer from compaction: a narrow key range, a long LSN range
    IMAGE = 2


@dataclass(frozen=True, slots=True)
class LayerEntry:
    name: LayerName
    level: Level
    size: int


@dataclass(frozen=True, slots=True)
class Manifest:
    generation: int = 0
    durable_lsn: int = 0
    retention_lsn: int = 0
    layers: tuple[LayerEntry, ...] = field(default_factory=tuple)

    def encode(self) -> bytes:
        parts = [MANIFEST_HEADER.pack(MANIFEST_MAGIC, MANIFEST_VERSION, 0, self.generation,
                                      self.durable_lsn, self.retention_lsn, len(self.layers))]
        for le in sorted(self.layers, key=lambda x: x.name):
            n = le.name
            parts.append(MANIFEST_LAYER.pack(le.level, n.kind, n.key_start, n.key_end,
                                             n.lsn_start, n.lsn_end, le.size))
        body = b"".join(parts)
        return body + MANIFEST_CRC.pack(crc32c(body))

    @classmethod
    def decode(cls, data: bytes, path: Path | str = MANIFEST_NAME) -> Manifest:
        """Raises: CorruptionError naming `path` and the offset."""
        def fail(off: int, what: str) -> CorruptionError:
            return CorruptionError(f"manifest {path}: {what} at offset {off}")

        if len(data) < MANIFEST_HEADER.size + MANIFEST_CRC.size:
            raise fail(0, f"file is {len(data)} bytes, shorter than header + checksum")
        magic, version, _res, gen, durable, retention, n = MANIFEST_HEADER.unpack_from(data)
        if magic != MANIFEST_MAGIC:
            raise fail(0, f"bad magic {magic!r}")
        if version not in SUPPORTED_MANIFEST_VERSIONS:
            raise fail(8, f"unsupported manifest version {version}")
        want = MANIFEST_HEADER.size + n * MANIFEST_LAYER.size + MANIFEST_CRC.size
        if len(data) != want:
            raise fail(min(len(data), want), f"length {len(data)} != {want} for {n} layers")
        (crc,) = MANIFEST_CRC.unpack_from(data, want - 4)
        if crc32c(data[: want - 4]) != crc:
            raise fail(want - 4, "checksum mismatch")
        layers = []
        for i in range(n):
            off = MANIFEST_HEADER.size + i * MANIFEST_LAYER.size
            level, kind, ks, ke, ls, le, size = MANIFEST_LAYER.unpack_from(data, off)
            try:
                name = LayerName(LayerKind(kind), ks, ke, ls, le)
                layers.append(LayerEntry(name, Level(level), size))
            except ValueError as e:
                raise fail(off, f"layer {i}: bad level/kind ({e})") from e
        return cls(gen, durable, retention, tuple(layers))

    def edit(self, *, add: tuple[LayerEntry, ...] = (), remove: tuple[LayerName, ...] = (),
             durable_lsn: int | None = None, retention_lsn: int | None = None) -> Manifest:
        """A new manifest (generation + 1); `add` wins over `remove` for the same name."""
        added = {le.name for le in add}
        gone = set(remove) - added
        layers = tuple(le for le in self.layers if le.name not in gone and le.name not in added)
        return replace(
            self, generation=self.generation + 1, layers=layers + tuple(add),
            durable_lsn=self.durable_lsn if durable_lsn is None else durable_lsn,
            retention_lsn=self.retention_lsn if retention_lsn is None else retention_lsn,
        )

    def names(self) -> set[str]:
        return {le.name.filename() for le in self.layers}


def layer_summary(manifest: Manifest) -> dict[str, dict[str, int]]:
    """Live layers per level name (L0, L1, IMAGE): {"count": n, "bytes": b}."""
    out: dict[str, dict[str, int]] = {}
    for le in manifest.layers:
        d = out.setdefault(le.level.name, {"count": 0, "bytes": 0})
        d["count"] += 1
        d["bytes"] += le.size
    return out


def load_manifest(directory: Path) -> Manifest | None:
    """The committed manifest, or None if the directory has never committed one."""
    path = directory / MANIFEST_NAME
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    return Manifest.decode(data, path)


def committed_generation(directory: Path) -> int | None:
    """The generation in the committed manifest's header, from its first bytes alone;
    None if there is no manifest or its header is not one (a full load then says why).

    Cheap whatever the layer count: a follower compares it with the generation it
    holds and decodes the whole file only when they differ. The file is only ever
    replaced whole (rename), and a generation is committed once, so an equal number
    means the same manifest."""
    try:
        with open(directory / MANIFEST_NAME, "rb") as f:
            head = f.read(MANIFEST_HEADER.size)
    except FileNotFoundError:
        return None
    if len(head) < MANIFEST_HEADER.size:
        return None
    magic, version, _res, gen, _durable, _retention, _n = MANIFEST_HEADER.unpack(head)
    if magic != MANIFEST_MAGIC or version not in SUPPORTED_MANIFEST_VERSIONS:
        return None
    return int(gen)


def commit_manifest(directory: Path, manifest: Manifest) -> None:
    """The single commit point: .tmp, fsync, rename, fsync dir."""
    durable.fs().write_durably(directory / MANIFEST_NAME, manifest.encode(),
                               directory / (MANIFEST_NAME + TMP_SUFFIX))
