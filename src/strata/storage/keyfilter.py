"""Per-layer key filters (layer format v7): which keys a layer file may hold.

Fed by: `LayerWriter` (the distinct keys of every block it writes, in key order).
Feeds: `LayerFile`'s point reads (`may_hold`, asked by `get_chain` and `get`),
which pass over a layer whose filter says a key is absent without reading any of
its blocks. Owns: the filter's hash, its bit layout and its section's bytes
(FORMAT.md section 3, "Key filter"). Touches no file itself.

Why: a point read (GetPage) walks down every delta layer whose key range holds
the key, and on a long history nearly every such probe is a miss (3,833 of
3,850 on a 30-minute scale-100 store; BENCHMARKS.md, twenty-sixth session): the
key lies between a block's first and last key but has no entry there, and the
read learns so only by decompressing the block's head.

The filter is a blocked Bloom filter of the layer's distinct keys:

* `key_hash`: a key's 18 bytes as three little-endian words w0 (bytes 0-7),
  w1 (bytes 8-15) and w2 (bytes 16-17), h = fmix(fmix(fmix(w0) ^ w1) ^ w2),
  where fmix is MurmurHash3's 64-bit finalizer. `key_hashes` is the same over a
  column of keys with numpy; a test holds the two equal.
* `words` = ceil(keys * `BITS_PER_KEY` / 64) 64-bit words (0 for a layer
  without entries). A key owns word ((h >> 32) * words) >> 32 and sets
  `PROBES` bits of it: bit (h >> 6i) & 63 for i = 0 .. PROBES - 1.
* A key is maybe present if all its bits are set in its word; absent otherwise
  (no false negatives; false positives ~1-2 % at 10 bits a key, which cost the
  probe the read made before).
"""

from __future__ import annotations

import struct
import sys
from array import array

import google_crc32c
import numpy as np

from strata.key import KEY_SIZE
from strata.storage.batch import KEY_ORDER

MAGIC = b"STRATAKF"
BITS_PER_KEY = 10
PROBES = 5  # bits a key sets, all in its one word
SECTION_HEAD = struct.Struct("<8sII")  # magic, words, keys
SECTION_CRC = struct.Struct("<I")  # CRC-32C of every byte of the section before it
MIN_SECTION = SECTION_HEAD.size + SECTION_CRC.size  # a filter of no words (no keys)

_M64 = (1 << 64) - 1
_C1, _C2 = 0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53


def _fmix(h: int) -> int:
    h ^= h >> 33
    h = (h * _C1) & _M64
    h ^= h >> 33
    h = (h * _C2) & _M64
    return h ^ (h >> 33)


def key_hash(key: bytes) -> int:
    """The filter's 64-bit hash of one key's 18 bytes (module docstring)."""
    w0 = int.from_bytes(key[0:8], "little")
    w1 = int.from_bytes(key[8:16], "little")
    w2 = int.from_bytes(key[16:18], "little")
    return _fmix(_fmix(_fmix(w0) ^ w1) ^ w2)


def _fmix_np(h: np.ndarray) -> np.ndarray:
    h ^= h >> np.uint64(33)
    h *= np.uint64(_C1)  # uint64 arrays wrap, as the & _M64 above
    h ^= h >> np.uint64(33)
    h *= np.uint64(_C2)
    h ^= h >> np.uint64(33)
    return h


def key_hashes(keys: np.ndarray) -> np.ndarray:
    """`key_hash` of each key of a column of 18-byte keys (dtype V18), as uint64."""
    n = len(keys)
    padded = np.zeros((n, 24), dtype=np.uint8)
    padded[:, :KEY_SIZE] = np.frombuffer(keys.tobytes(), dtype=np.uint8).reshape(n, KEY_SIZE)
    w = padded.view("<u8").astype(np.uint64)  # (n, 3): w0, w1, w2 (w2's top 6 bytes 0)
    h = _fmix_np(w[:, 0].copy())
    h = _fmix_np(h ^ w[:, 1])
    return _fmix_np(h ^ w[:, 2])


def distinct_key_hashes(keys: np.ndarray, before: bytes | None) -> np.ndarray:
    """`key_hashes` of the distinct keys of `keys`, a sorted column (dtype V18) whose
    first key may equal `before` (the last key of the column before it, or None):
    each key once, as a layer's filter counts them."""
    if not len(keys):
        return np.zeros(0, dtype=np.uint64)
    ok = keys.view(KEY_ORDER)
    new = np.ones(len(keys), dtype=bool)
    new[1:] = ok[1:] != ok[:-1]
    new[0] = before is None or keys[0].tobytes() != before
    return key_hashes(keys[new])


def _word_and_mask(h: np.ndarray, words: int) -> tuple[np.ndarray, np.ndarray]:
    idx = ((h >> np.uint64(32)) * np.uint64(words)) >> np.uint64(32)
    mask = np.zeros(len(h), dtype=np.uint64)
    for i in range(PROBES):
        mask |= np.uint64(1) << ((h >> np.uint64(6 * i)) & np.uint64(63))
    return idx, mask


def build_section(hashes: np.ndarray) -> bytes:
    """The filter section of a layer whose distinct keys have `hashes` (one per key)."""
    n = len(hashes)
    words = -(-n * BITS_PER_KEY // 64)
    bits = np.zeros(words, dtype=np.uint64)
    if n:
        idx, mask = _word_and_mask(hashes.astype(np.uint64, copy=False), words)
        np.bitwise_or.at(bits, idx, mask)
    body = SECTION_HEAD.pack(MAGIC, words, n) + bits.astype("<u8").tobytes()
    return body + SECTION_CRC.pack(int(google_crc32c.value(body)))


class KeyFilter:
    """A layer's filter, parsed from its section (`parse`): `may_hold(key)`."""

    __slots__ = ("_bits", "keys", "words")

    def __init__(self, bits: array[int], keys: int) -> None:
        self._bits = bits
        self.words = len(bits)
        self.keys = keys

    @classmethod
    def parse(cls, data: bytes) -> KeyFilter:
        """The filter in `data`, a whole section, its CRC checked. Raises: ValueError
        (what is wrong) if it is not one."""
        if len(data) < MIN_SECTION:
            raise ValueError(f"section of {len(data)} bytes is shorter than {MIN_SECTION}")
        (crc,) = SECTION_CRC.unpack_from(data, len(data) - SECTION_CRC.size)
        if int(google_crc32c.value(data[:-SECTION_CRC.size])) != crc:
            raise ValueError("checksum mismatch")
        magic, words, keys = SECTION_HEAD.unpack_from(data, 0)
        if magic != MAGIC:
            raise ValueError(f"bad filter magic {magic!r} (expected {MAGIC!r})")
        if len(data) != MIN_SECTION + 8 * words or words != -(-keys * BITS_PER_KEY // 64):
            raise ValueError(f"filter of {words} words for {keys} keys does not fill "
                             f"its {len(data)}-byte section")
        bits = array("Q", data[SECTION_HEAD.size:SECTION_HEAD.size + 8 * words])
        if sys.byteorder != "little":  # pragma: no cover - the words are little-endian
            bits.byteswap()
        return cls(bits, keys)

    def may_hold(self, key: bytes) -> bool:
        """False if the layer surely has no entry of `key`; True if it may."""
        if not self.words:
            return False
        if len(key) != KEY_SIZE:
            return True
        h = key_hash(key)
        mask = 0
        for i in range(PROBES):
            mask |= 1 << ((h >> (6 * i)) & 63)
        return self._bits[((h >> 32) * self.words) >> 32] & mask == mask
