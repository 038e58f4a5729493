"""Read-only inspection of a layer directory: verify, list, dump.

Fed by: the CLI (verify, ls-layers, dump-layer) and tests. Feeds: humans.
Owns: nothing; never writes or deletes (safe while a writer has the store open).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from strata.errors import CorruptionError
from strata.key import KEY_SIZE, Key
from strata.lsn import Lsn
from strata.storage.blockindex import BOUNDS_VERSION, HEAD_VERSION, index_entry
from strata.storage.blocks import head_size
from strata.storage.layerfile import (
    COLUMN_VERSION,
    FILTER_VERSION,
    FOOTER,
    HEADER,
    LSN_DELTA_VERSION,
    LayerFile,
)
from strata.storage.manifest import Level, Manifest, load_manifest
from strata.storage.naming import TMP_SUFFIX, is_layer_filename
from strata.storage.values import PageImage, Tombstone, WalRecord


@dataclass(slots=True)
class VerifyReport:
    manifest: Manifest | None = None
    layers_ok: int = 0
    entries: int = 0
    errors: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)  # .tmp / unreferenced: removed on open

    @property
    def ok(self) -> bool:
        return not self.errors


def verify_store(directory: Path) -> VerifyReport:
    """Check the manifest and every block/index/header checksum of every live layer.

    Safe while a writer runs: if the manifest changes during the check (compaction or
    gc removed a layer we were about to read), the check is repeated (up to 3 times)."""
    rep = _verify_once(directory)
    for _ in range(2):
        if rep.ok or rep.manifest is None:
            break
        try:
            now = load_manifest(directory)
        except CorruptionError:
            break
        if now is None or now.generation == rep.manifest.generation:
            break
        rep = _verify_once(directory)
    return rep


def _verify_once(directory: Path) -> VerifyReport:
    rep = VerifyReport()
    try:
        m = load_manifest(directory)
    except CorruptionError as e:
        rep.errors.append(str(e))
        return rep
    if m is None:
        rep.errors.append(f"no manifest in {directory} (not a layer store, or never committed)")
        return rep
    rep.manifest = m
    if m.retention_lsn > m.durable_lsn:
        rep.errors.append(f"manifest {directory}: retention_lsn {Lsn(m.retention_lsn)} above "
                          f"durable_lsn {Lsn(m.durable_lsn)}")
    deltas = sorted((le.name for le in m.layers if not le.name.is_image),
                    key=lambda n: n.lsn_start)
    for i, a in enumerate(deltas):  # FORMAT.md invariant 6
        for b in deltas[i + 1:]:
            if b.lsn_start >= a.lsn_end:
                break
            if a.key_start < b.key_end and b.key_start < a.key_end:
                rep.errors.append(f"manifest {directory}: delta layers {a} and {b} overlap in "
                                  "both key and LSN range")
    for le in m.layers:
        path = directory / le.name.filename()
        try:
            f = LayerFile(path)
            try:
                if f.size != le.size:
                    raise CorruptionError(f"layer file {path}: size {f.size} but the manifest "
                                          f"says {le.size} at offset 0")
                if f.name != le.name:
                    raise CorruptionError(f"layer file {path}: header says {f.name} at offset 16")
                rep.entries += f.verify()
                rep.layers_ok += 1
            finally:
                f.close()
        except CorruptionError as e:
            rep.errors.append(str(e))
    live = m.names()
    for fn in sorted(os.listdir(directory)):
        if fn.endswith(TMP_SUFFIX) or (is_layer_filename(fn) and fn not in live):
            rep.leftovers.append(fn)
    return rep


def _value_str(v: object, width: int = 16) -> str:
    if isinstance(v, PageImage):
        return f"image  len={len(v.data):<5} {v.data[:width].hex()}"
    if isinstance(v, WalRecord):
        kind = "record+init" if v.will_init else "record"
        return f"{kind:<6} len={len(v.data):<5} {v.data[:width].hex()}"
    if isinstance(v, Tombstone):
        return "tombstone"
    return repr(v)


def dump_layer(path: Path, max_entries: int | None = None) -> Iterator[str]:
    """Lines describing every part of a layer file (the FORMAT.md worked example)."""
    f = LayerFile(path)
    try:
        n = f.name
        yield f"file          {path.name}"
        yield f"size          {f.size} bytes"
        yield f"header        offset 0, {HEADER.size} bytes"
        yield f"  kind        {n.kind.name.lower()}"
        if f.version >= 2:  # v1 output unchanged (FORMAT.md worked example)
            yield f"  version     {f.version}, max_key_entries {f.max_key_entries()}"
        yield f"  key range   [{n.key_start.hex().upper()}, {n.key_end.hex().upper()})"
        if n.is_image:
            yield f"  lsn         {Lsn(n.image_lsn)}"
        else:
            yield f"  lsn range   [{Lsn(n.lsn_start)}, {Lsn(n.lsn_end)})"
        yield f"blocks        {len(f.blocks)}, entries {f.entry_count}"
        shown = 0
        for i, b in enumerate(f.blocks):
            yield (f"block {i:<4}    offset {b.offset}, {b.comp_len} bytes zstd -> {b.raw_len} raw, "
                   f"{b.entries} entries, crc32c {b.crc:08x}"
                   + (f", LSNs {Lsn(b.min_lsn)}..{Lsn(b.max_lsn)}"
                      if f.version >= BOUNDS_VERSION else ""))
            if f.version >= HEAD_VERSION and not b.head_len:
                yield "  frames      one (head_len 0)"
            elif f.version >= HEAD_VERSION:
                cut = head_size(b.entries)
                yield (f"  frames      head {b.head_len} bytes zstd -> {cut} raw, crc32c "
                       f"{b.head_crc:08x}; values {b.comp_len - b.head_len} bytes zstd -> "
                       f"{b.raw_len - cut} raw")
            if f.version >= COLUMN_VERSION:
                yield "  columns     " + column_layout(b.entries, b.raw_len,
                                                       f.version >= LSN_DELTA_VERSION)
            for e in f.read_block(i):
                if max_entries is not None and shown >= max_entries:
                    continue
                shown += 1
                yield f"  {Key.from_bytes(e.key)!s}  {Lsn(e.lsn)!s:<12} {_value_str(e.value)}"
        if f.version >= FILTER_VERSION:
            kf, (off, size) = f.key_filter(), f.filter_span
            yield (f"key filter    offset {off}, {size} bytes, {kf.words} words for "
                   f"{kf.keys} keys")
        entry = index_entry(f.version)
        yield (f"index         offset {f.index_offset}, {len(f.blocks) * entry.size} bytes "
               f"({entry.size} per block)")
        yield f"footer        offset {f.size - FOOTER.size}, {FOOTER.size} bytes"
        if max_entries is not None and shown < f.entry_count:
            yield f"({f.entry_count - shown} more entries not shown)"
    finally:
        f.close()


def column_layout(n: int, raw_len: int, lsn_deltas: bool = False) -> str:
    """Where each column of a column block of `n` entries starts (and its length);
    `lsn_deltas`: version 5, whose lsns column holds differences."""
    parts = [("n", 0, 4), ("keys", 4, KEY_SIZE * n),
             ("lsn_deltas" if lsn_deltas else "lsns", 4 + KEY_SIZE * n, 8 * n)]
    parts += [("kinds", parts[-1][1] + 8 * n, n)]
    parts += [("value_lens", parts[-1][1] + n, 4 * n)]
    vo = parts[-1][1] + 4 * n
    parts += [("values", vo, raw_len - vo)]
    return ", ".join(f"{name} @{off} ({size})" for name, off, size in parts)


def level_name(level: Level) -> str:
    return {Level.L0: "L0 delta", Level.L1: "L1 delta", Level.IMAGE: "image"}[level]


def bytes_by_key_prefix(directory: Path, prefix_len: int) -> dict[bytes, int]:
    """Stored bytes of the live layers per key prefix (the first `prefix_len` key
    bytes), at block granularity: each compressed block counts for the prefix of
    its first key (a block holding several prefixes is not split; blocks are
    `block_bytes`, 256 KiB by default, so the figures are exact to that grain).
    Reads only headers and block indexes. Returns {} when there is no store."""
    manifest = load_manifest(directory)
    if manifest is None:
        return {}
    out: dict[bytes, int] = {}
    for entry in manifest.layers:
        try:
            f = LayerFile(directory / entry.name.filename())
        except (OSError, CorruptionError):
            continue  # retired meanwhile (a writer runs): the next look has its successor
        try:
            for b in f.blocks:
                p = b.first_key[:prefix_len]
                out[p] = out.get(p, 0) + b.comp_len
        finally:
            f.close()
    return out
