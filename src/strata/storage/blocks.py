"""Block encodings of layer files: the decompressed bytes of one block.

Fed by: LayerWriter (encode, the newest layout only) and LayerFile (decode,
every version). Feeds: reads (point lookups inside a block, whole blocks as
EntryBatch). Owns: the block layouts (FORMAT.md section 3):

- rows (layer versions 1 and 2): entries back to back, each
  `key 18 | lsn u64 | kind u8 | data_len u32 | data`;
- columns (versions 3 and 4): `n u32 | keys 18n | lsns 8n (u64) | kinds n |
  value_lens 4n (u32, each value's length) | values` (lengths, not offsets:
  they repeat, so they compress);
- columns with LSN deltas (version 5): the same, but lsns holds the first
  entry's LSN and then each entry's LSN minus the one before (i64): a key's
  versions are close together, so the deltas compress (`lsn_deltas=True`).
  Version 6 decompresses to the same bytes: its head (`n` to `value_lens`,
  `head_size(n)` bytes) and its values are two frames on disk (layerfile.py),
  and `decode_many_heads` decodes heads alone.

All integers big-endian. Decoders raise ValueError on malformed bytes (the
caller names file, block and offset).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from strata.key import KEY_SIZE
from strata.storage.batch import KEY_DTYPE, KEY_ORDER, BatchBuilder, EntryBatch
from strata.storage.values import ENTRY_HEADER, Entry, ValueKind, make_value

N_FIELD = struct.Struct(">I")
_TOMBSTONE = int(ValueKind.TOMBSTONE)  # (an IntEnum attribute costs a lookup per use)
_RECORD = int(ValueKind.WAL_RECORD)  # the one kind that does not end a chain
_LSN_MAX = (1 << 63) - 1


def encode_columns(b: EntryBatch, lsn_deltas: bool = True) -> bytes:
    """A column block (version 5 with `lsn_deltas`, else 3) holding the rows of `b`
    (in order)."""
    return encode_many_columns(b, [len(b)], lsn_deltas)[0]


def encode_many_columns(b: EntryBatch, ends: Sequence[int],
                        lsn_deltas: bool = True) -> list[bytes]:
    """The column blocks of rows [ends[i - 1], ends[i]) of `b` (the first from row 0),
    each column converted once for them all (a flush writes ~1,500 blocks); with
    `lsn_deltas` (version 5) each block's LSNs are its first and then differences."""
    values, vends = b.values_joined()
    voff = [0, *vends.tolist()]
    keys = memoryview(b.keys.tobytes())
    col = b.lsns.astype(np.int64)
    if lsn_deltas and len(col):
        d = col.copy()
        d[1:] -= col[:-1]
        firsts = np.array([0, *ends[:-1]], dtype=np.int64)
        firsts = firsts[firsts < len(col)]
        d[firsts] = col[firsts]
        col = d
    lsns = memoryview(col.astype(">i8").tobytes())
    kinds = memoryview(b.kinds.tobytes())
    lens = memoryview(b.lengths.astype(">u4").tobytes())
    vals = memoryview(values)
    out = []
    s = 0
    for e in ends:
        out.append(b"".join((N_FIELD.pack(e - s), keys[KEY_SIZE * s:KEY_SIZE * e],
                             lsns[8 * s:8 * e], kinds[s:e], lens[4 * s:4 * e],
                             vals[voff[s]:voff[e]])))
        s = e
    return out


def _column_offsets(n: int) -> tuple[int, int, int, int]:
    """Offsets of lsns, kinds, value_lens and values in a column block of n entries."""
    lo = 4 + KEY_SIZE * n
    ko = lo + 8 * n
    eo = ko + n
    return lo, ko, eo, eo + 4 * n


def head_size(n: int) -> int:
    """Bytes of a column block of `n` entries before its values (n, keys, lsns, kinds,
    value_lens): the head frame of a version 6 block."""
    return 4 + (KEY_SIZE + 13) * n


def _row_lsns(raw: bytes, offset: int, a: int, b: int, lsn_deltas: bool) -> np.ndarray:
    """The LSNs of rows [a, b) of a column block whose lsns column is at `offset`, as
    int64 (differences, version 5: summed over every row from the first)."""
    if not lsn_deltas:
        return np.frombuffer(raw, dtype=">u8", count=b - a, offset=offset + 8 * a).astype(
            np.int64)
    col = np.frombuffer(raw, dtype=">i8", count=b, offset=offset).astype(np.int64)
    np.cumsum(col, out=col)
    return col[a:]


def _values_of(raw: bytes, n: int, values: bytes | None) -> tuple[bytes, int]:
    """Where a column block's values are: (`raw`, the offset after its head) for a
    whole block, (`values`, 0) when `raw` is a head alone and `values` the rest (a
    version 6 block's two frames, decoded without joining them).
    Raises: ValueError if `raw` cannot be that."""
    vo = head_size(n)
    if values is None:
        if vo > len(raw):
            raise ValueError(f"block of {len(raw)} bytes cannot hold {n} entries")
        return raw, vo
    if vo != len(raw):
        raise ValueError(f"block head of {len(raw)} bytes does not hold {n} entries' columns")
    return values, 0


def decode_columns(raw: bytes, lsn_deltas: bool, values: bytes | None = None) -> EntryBatch:
    """A column block (version 5 with `lsn_deltas`, else 3 or 4) as a batch; with
    `values`, `raw` is the block's head and `values` the rest (version 6's frames).
    Raises: ValueError if `raw` is not a well-formed column block."""
    if len(raw) < 4:
        raise ValueError("block shorter than its entry count")
    (n,) = N_FIELD.unpack_from(raw, 0)
    lo, ko, eo, _ = _column_offsets(n)
    vals, vo = _values_of(raw, n, values)
    if n == 0:
        if vo != len(vals):
            raise ValueError("bytes after an empty block")
        return EntryBatch.empty()
    # (few numpy calls: a scan decodes every block, and image blocks hold ~8 pages)
    lens = np.frombuffer(raw, dtype=">u4", count=n, offset=eo).astype(np.int64)
    ends = np.cumsum(lens)
    ends += vo
    if int(ends[-1]) != len(vals):
        raise ValueError("value lengths do not tile the values area")
    kinds = np.frombuffer(raw, dtype=np.uint8, count=n, offset=ko)
    if int(kinds.max()) >= _TOMBSTONE:  # (rare: one reduction decides the usual case)
        bad = (kinds > _TOMBSTONE) | ((kinds == _TOMBSTONE) & (lens != 0))
        if bad.any():
            i = int(bad.argmax())
            raise ValueError(f"unknown value kind {int(kinds[i])}" if kinds[i] > _TOMBSTONE
                             else "tombstone with a payload")
    return EntryBatch(np.frombuffer(raw, dtype=KEY_DTYPE, count=n, offset=4),
                      _row_lsns(raw, lo, 0, n, lsn_deltas), kinds, ends - lens, ends, (vals,))


def decode_many_columns(raws: Sequence[bytes], lsn_deltas: bool,
                        values: Sequence[bytes] | None = None) -> EntryBatch:
    """The entries of several column blocks, in order, as one batch: what concatenating
    `decode_columns` of each gives, with a fixed number of numpy calls whatever
    the number of blocks (a scan reads ~8 pages per image block). The small
    columns (31 bytes an entry) are joined; the values stay in their blocks.
    With `values`, each of `raws` is a block's head and `values[i]` the rest.

    Raises: ValueError if a block is malformed (`decode_columns` of that block
    names what is wrong)."""
    vals = values if values is not None else [None] * len(raws)
    if len(raws) == 1:
        return decode_columns(raws[0], lsn_deltas, vals[0])
    ns = [N_FIELD.unpack_from(r, 0)[0] if len(r) >= 4 else -1 for r in raws]
    cols: list[list[bytes]] = [[], [], [], []]
    for r, v, n in zip(raws, vals, ns, strict=True):
        lo, ko, eo, vo = _column_offsets(n)
        if n < 0 or (vo > len(r) if v is None else vo != len(r)):
            decode_columns(r, lsn_deltas, v)  # raises, naming what is wrong
            raise ValueError("malformed block")
        cols[0].append(r[4:lo])
        cols[1].append(r[lo:ko])
        cols[2].append(r[ko:eo])
        cols[3].append(r[eo:vo])
    count = np.array(ns, dtype=np.int64)
    if not count.any():
        for r, v in zip(raws, vals, strict=True):
            decode_columns(r, lsn_deltas, v)  # empty blocks: bytes after one raise
        return EntryBatch.empty()
    lens = np.frombuffer(b"".join(cols[3]), dtype=">u4").astype(np.int64)
    kinds = np.frombuffer(b"".join(cols[2]), dtype=np.uint8)
    which = np.repeat(np.arange(len(raws), dtype=np.uint32), count)
    csum = np.cumsum(lens)
    firsts = np.cumsum(count) - count  # each block's first row
    before = csum - lens  # value bytes of the rows before, all blocks
    base = np.zeros(len(raws), dtype=np.int64)
    some = count > 0
    base[some] = before[firsts[some]]
    # where each block's values begin: after its head (head_size), or at 0 in values
    values_at = 4 + (KEY_SIZE + 13) * count if values is None else np.zeros_like(count)
    starts = before - base[which] + values_at[which]
    ends = starts + lens
    buffers = tuple(raws) if values is None else tuple(values)
    sizes = np.array([len(r) for r in buffers], dtype=np.int64)
    used = np.zeros(len(raws), dtype=np.int64)
    used[some] = ends[firsts[some] + count[some] - 1]
    used[~some] = values_at[~some]
    bad_kind = int(kinds.max()) >= _TOMBSTONE and bool(
        np.any((kinds > _TOMBSTONE) | ((kinds == _TOMBSTONE) & (lens != 0))))
    if bad_kind or np.any(used != sizes):
        for r, v in zip(raws, vals, strict=True):
            decode_columns(r, lsn_deltas, v)  # raises for the first bad block
        raise ValueError("malformed block")
    lsns = _joined_lsns(b"".join(cols[1]), count, which, lsn_deltas)
    return EntryBatch(np.frombuffer(b"".join(cols[0]), dtype=KEY_DTYPE), lsns,
                      kinds, starts, ends, buffers, which)


def _joined_lsns(col: bytes, count: np.ndarray, which: np.ndarray,
                 lsn_deltas: bool) -> np.ndarray:
    """The LSNs of the rows of several blocks from their lsns columns joined (`count`
    rows each; `which`: each row's block), as int64."""
    lsns = np.frombuffer(col, dtype=">i8" if lsn_deltas else ">u8").astype(np.int64)
    if lsn_deltas:  # running sums that start again at each block's first row
        np.cumsum(lsns, out=lsns)
        firsts = np.cumsum(count) - count
        some = count > 0
        at = firsts[some]
        restart = np.zeros(len(count), dtype=np.int64)
        restart[some] = np.where(at > 0, lsns[np.maximum(at - 1, 0)], 0)
        lsns -= restart[which]
    return lsns


class HeadColumns(NamedTuple):
    """The key, LSN and kind of each row of one or more blocks, in order."""

    keys: np.ndarray  # KEY_DTYPE
    lsns: np.ndarray  # int64
    kinds: np.ndarray  # uint8

    def order_keys(self) -> np.ndarray:
        return self.keys.view(KEY_ORDER)


def decode_many_heads(heads: Sequence[bytes], lsn_deltas: bool) -> HeadColumns:
    """The rows of several blocks from their heads alone (each exactly `head_size(n)`
    bytes: a version 6 head frame decompressed), without their values. Raises:
    ValueError if a head is malformed (its size, a kind, a tombstone's length)."""
    ns: list[int] = []
    cols: list[list[bytes]] = [[], [], [], []]
    for h in heads:
        n = N_FIELD.unpack_from(h, 0)[0] if len(h) >= 4 else -1
        if n < 0 or len(h) != head_size(n):
            raise ValueError(f"block head of {len(h)} bytes does not hold "
                             f"{max(n, 0)} entries' columns")
        lo, ko, eo, _ = _column_offsets(n)
        ns.append(n)
        cols[0].append(h[4:lo])
        cols[1].append(h[lo:ko])
        cols[2].append(h[ko:eo])
        cols[3].append(h[eo:])
    count = np.array(ns, dtype=np.int64)
    kinds = np.frombuffer(b"".join(cols[2]), dtype=np.uint8)
    if len(kinds) and int(kinds.max()) >= _TOMBSTONE:
        lens = np.frombuffer(b"".join(cols[3]), dtype=">u4")
        bad = (kinds > _TOMBSTONE) | ((kinds == _TOMBSTONE) & (lens != 0))
        if bad.any():
            i = int(bad.argmax())
            raise ValueError(f"unknown value kind {int(kinds[i])}" if kinds[i] > _TOMBSTONE
                             else "tombstone with a payload")
    which = np.repeat(np.arange(len(ns), dtype=np.uint32), count)
    return HeadColumns(np.frombuffer(b"".join(cols[0]), dtype=KEY_DTYPE),
                       _joined_lsns(b"".join(cols[1]), count, which, lsn_deltas), kinds)


def values_through(head: bytes, key: bytes) -> int | None:
    """Of the column block whose head is `head`: None if it has no entry of `key` (one
    binary search of its keys column), else how many bytes of its values run up to
    the end of `key`'s last entry (a point read needs no value after them).
    Raises: ValueError if `head` is shorter than its columns."""
    (n,) = N_FIELD.unpack_from(head, 0)
    if head_size(n) > len(head):
        raise ValueError(f"block head of {len(head)} bytes cannot hold {n} entries")
    keys = np.frombuffer(head, dtype=KEY_ORDER, count=n, offset=4)
    a = int(keys.searchsorted(key))
    if a == n or head[4 + KEY_SIZE * a:4 + KEY_SIZE * (a + 1)] != key:
        return None
    b = int(keys.searchsorted(key, side="right"))
    return int(np.frombuffer(head, dtype=">u4", count=b, offset=_column_offsets(n)[2])
               .sum(dtype=np.int64))


def find_in_columns(raw: bytes, key: bytes, lo: int, hi: int,
                    lsn_deltas: bool, values: bytes | None = None) -> list[Entry]:
    """Entries of `key` with lo <= lsn < hi in a column block (with `values`: its head,
    and `values` the rest), oldest first, decoding only those rows (GetPage's hot
    path: one binary search, then plain bytes and struct). Raises: ValueError if
    malformed."""
    (n,) = N_FIELD.unpack_from(raw, 0)
    lsn_off, ko, eo, _ = _column_offsets(n)
    vals, vo = _values_of(raw, n, values)
    a = int(np.frombuffer(raw, dtype=KEY_ORDER, count=n, offset=4).searchsorted(key))
    out: list[Entry] = []
    if a == n or raw[4 + KEY_SIZE * a:4 + KEY_SIZE * (a + 1)] != key:
        return out
    b = a + 1
    while b < n and raw.startswith(key, 4 + KEY_SIZE * b):
        b += 1
    start = vo + (int(np.frombuffer(raw, dtype=">u4", count=a, offset=eo).sum(dtype=np.int64))
                  if a else 0)
    lsns = _row_lsns(raw, lsn_off, a, b, lsn_deltas).tolist()
    for j in range(a, b):
        (n_j,) = N_FIELD.unpack_from(raw, eo + 4 * j)
        end = start + n_j
        lsn = lsns[j - a]
        if end > len(vals):
            raise ValueError(f"value {j} runs outside the block")
        if lo <= lsn < hi:
            out.append(Entry(key, lsn, make_value(raw[ko + j], vals[start:end])))
        start = end
    return out


def chain_in_columns(raw: bytes, key: bytes, lo: int, hi: int, lsn_deltas: bool,
                     values: bytes | None = None) -> tuple[list[Entry], bool]:
    """The newest part of `key`'s chain in a column block: its entries with lo <= lsn < hi
    from the newest chain end (image, will_init record, tombstone) on, oldest first,
    and whether a chain end is among them (False: every such entry, and older blocks
    or layers hold the rest). Only those rows are decoded: a key with thousands of
    images (the control values, one per transaction) costs one, not thousands.
    With `values`, `raw` is the block's head and `values` the rest.
    Raises: ValueError if malformed."""
    (n,) = N_FIELD.unpack_from(raw, 0)
    lsn_off, ko, eo, _ = _column_offsets(n)
    vals, vo = _values_of(raw, n, values)
    keys = np.frombuffer(raw, dtype=KEY_ORDER, count=n, offset=4)
    a = int(keys.searchsorted(key))
    if a == n or raw[4 + KEY_SIZE * a:4 + KEY_SIZE * (a + 1)] != key:
        return [], False
    b = int(keys.searchsorted(key, side="right"))
    lsns = _row_lsns(raw, lsn_off, a, b, lsn_deltas)
    sel = np.flatnonzero((lsns >= max(lo, 0)) & (lsns < min(hi, _LSN_MAX)))
    if not len(sel):
        return [], False
    kinds = np.frombuffer(raw, dtype=np.uint8, count=b - a, offset=ko + a)
    ends = sel[kinds[sel] != _RECORD]
    first = int(ends[-1]) if len(ends) else int(sel[0])
    take = sel[sel >= first]
    lens = np.frombuffer(raw, dtype=">u4", count=b, offset=eo).astype(np.int64)
    stops = vo + np.cumsum(lens)
    if int(stops[-1]) > len(vals):
        raise ValueError("a value runs outside the block")
    out = []
    for j in (take + a).tolist():
        end = int(stops[j])
        out.append(Entry(key, int(lsns[j - a]),
                         make_value(raw[ko + j], vals[end - int(lens[j]):end])))
    return out, len(ends) > 0


def decode_rows(raw: bytes) -> EntryBatch:
    """A v1/v2 block as a batch. Raises: ValueError if malformed."""
    b = BatchBuilder()
    pos, end = 0, len(raw)
    unpack = ENTRY_HEADER.unpack_from
    hsize = ENTRY_HEADER.size
    while pos < end:
        if end - pos < hsize:
            raise ValueError(f"entry header cut short at block offset {pos}")
        key, lsn, kind, n = unpack(raw, pos)
        pos += hsize
        if end - pos < n:
            raise ValueError(f"entry data cut short at block offset {pos}")
        if kind > ValueKind.TOMBSTONE:
            raise ValueError(f"unknown value kind {kind}")
        if kind == ValueKind.TOMBSTONE and n:
            raise ValueError("tombstone with a payload")
        b.add_raw(key, lsn, kind, raw[pos:pos + n])
        pos += n
    return b.build()


def find_in_rows(raw: bytes, key: bytes, lo: int, hi: int) -> list[Entry]:
    """Entries of `key` in a v1/v2 block, walking entry headers only."""
    out: list[Entry] = []
    pos, end = 0, len(raw)
    hsize = ENTRY_HEADER.size
    unpack = ENTRY_HEADER.unpack_from
    try:
        while pos < end:
            k, lsn, kind, n = unpack(raw, pos)
            if k > key:
                break  # sorted: nothing further
            if k == key and lo <= lsn < hi:
                out.append(Entry(k, lsn, make_value(kind, raw[pos + hsize:pos + hsize + n])))
            pos += hsize + n
    except struct.error as e:
        raise ValueError(str(e)) from e
    if pos > end:
        raise ValueError("entry runs past the end of the block")
    return out
