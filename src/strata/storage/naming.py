"""Layer file names: the ONE module that formats and parses them.

Fed by: the layer writer, manifest, recovery and the CLI. Owns: the naming
scheme (hex, zero-padded, sortable; see FORMAT.md "File naming")::

    <key_start>-<key_end>__<lsn_start>-<lsn_end>.delta   (LSN range half-open)
    <key_start>-<key_end>__<lsn>.image

Keys are 36 hex digits (18 bytes), LSNs 16 hex digits; upper case.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import IntEnum

from strata.key import Key, KeyRange
from strata.lsn import Lsn, LsnRange

MANIFEST_NAME = "MANIFEST"
TMP_SUFFIX = ".tmp"


class LayerKind(IntEnum):
    """Written to disk (layer header, manifest): never renumber."""

    DELTA = 1
    IMAGE = 2


_NAME_RE = re.compile(
    r"^(?P<ks>[0-9A-F]{36})-(?P<ke>[0-9A-F]{36})__"
    r"(?:(?P<ls>[0-9A-F]{16})-(?P<le>[0-9A-F]{16})\.delta|(?P<il>[0-9A-F]{16})\.image)$"
)


@dataclass(frozen=True, slots=True, order=True)
class LayerName:
    """What a layer file's name says: kind, key range and LSN range.

    Image layers hold one LSN `lsn`; their `lsn_range` is ``[lsn, lsn+1)``."""

    kind: LayerKind
    key_start: bytes
    key_end: bytes
    lsn_start: int
    lsn_end: int

    @property
    def key_range(self) -> KeyRange:
        return KeyRange(Key.from_bytes(self.key_start), Key.from_bytes(self.key_end))

    @property
    def lsn_range(self) -> LsnRange:
        return LsnRange(Lsn(self.lsn_start), Lsn(self.lsn_end))

    @property
    def image_lsn(self) -> int:
        return self.lsn_start

    @property
    def is_image(self) -> bool:
        return self.kind == LayerKind.IMAGE

    def filename(self) -> str:
        ks, ke = self.key_start.hex().upper(), self.key_end.hex().upper()
        if self.kind == LayerKind.IMAGE:
            return f"{ks}-{ke}__{self.lsn_start:016X}.image"
        return f"{ks}-{ke}__{self.lsn_start:016X}-{self.lsn_end:016X}.delta"

    def __str__(self) -> str:
        return self.filename()

    @classmethod
    def delta(cls, key_start: bytes, key_end: bytes, lsn_start: int, lsn_end: int) -> LayerName:
        return cls(LayerKind.DELTA, key_start, key_end, lsn_start, lsn_end)

    @classmethod
    def image(cls, key_start: bytes, key_end: bytes, lsn: int) -> LayerName:
        return cls(LayerKind.IMAGE, key_start, key_end, lsn, lsn + 1)

    @classmethod
    def parse(cls, filename: str) -> LayerName:
        """Raises: ValueError when `filename` is not a layer file name."""
        m = _NAME_RE.match(filename)
        if m is None:
            raise ValueError(f"not a layer file name: {filename!r}")
        ks, ke = bytes.fromhex(m["ks"]), bytes.fromhex(m["ke"])
        if m["il"] is not None:
            return cls.image(ks, ke, int(m["il"], 16))
        return cls.delta(ks, ke, int(m["ls"], 16), int(m["le"], 16))


def is_layer_filename(filename: str) -> bool:
    return _NAME_RE.match(filename) is not None
