"""The chains of a scan window built in one call (`Reconstructor.into`,
`_pagec.redo_window`) against the reference, `reconstruct_value` one chain at a
time: real PostgreSQL 18 heap records (tests/data/wal) on an image, after a
tombstone, from no page at all (a WILL_INIT record, an image delta); and each
chain C must leave to Python is left (False): a record with no page to start from
(Python raises), a compressed image delta, a key that is not a relation block, a
width that is not a page. A scan over the same rows (`scan.scan_dense`) lays out
what the reference does, slot for slot, stats included. Chains on a base page (the
flush's cuts), and runs of commit statuses on CLOG pages (numpy, not C)."""

from __future__ import annotations

from pathlib import Path

import lz4.block
import numpy as np
import pytest

from strata.errors import StrataError
from strata.key import Key
from strata.keyspace.relation import encode_delta, encode_image_delta
from strata.keyspace.slru import TAG_IMAGE, delta_value, xid_status_op
from strata.reconstruct import reconstruct
from strata.reconstruct.redo.page_ops import BLCKSZ
from strata.storage.batch import EntryBatch, key_array
from strata.storage.layermap import ReadStats
from strata.storage.scan import Chains, _redo_into
from strata.storage.values import ValueKind, WalRecord
from strata.wal.record import BKPIMAGE_APPLY, BKPIMAGE_COMPRESS_LZ4, BlockImage

DATA = Path(__file__).resolve().parents[1] / "data" / "wal"
KEY = Key.rel_block(1663, 1, 2606, 0, 0)  # the block the heap samples write
IMAGE, RECORD, INIT, TOMBSTONE = (int(k) for k in ValueKind)


# the LSN each record delta is stored at: its end, which a version 5 delta leaves to
# its entry (`_batch` stores it there, `_reference` hands it to the redo)
ENDS: dict[bytes, int] = {}


def _delta(name: str, lsn: int) -> bytes:
    d = encode_delta(lsn, lsn + 0x100, (DATA / f"{name}.bin").read_bytes())
    ENDS[d] = lsn + 0x100
    return d


INIT_REC = _delta("heap_insert_init", 0x10D27D0)
INSERT = _delta("heap_insert", 0x10D2BE8)
PAGE = reconstruct.reconstruct_value(KEY, None, [WalRecord(INIT_REC, True, ENDS[INIT_REC])])


def _image_delta(page: bytes, lsn: int, lz4_compressed: bool = False) -> bytes:
    if lz4_compressed:
        return encode_image_delta(lsn, lsn + 64, BlockImage(
            lz4.block.compress(page, store_size=False), BKPIMAGE_APPLY | BKPIMAGE_COMPRESS_LZ4,
            0, 0))
    return encode_image_delta(lsn, lsn + 64, BlockImage(page, BKPIMAGE_APPLY, 0, 0))


# (key, [(kind, value)], C builds it?)
CHAINS: list[tuple[Key, list[tuple[int, bytes]], bool]] = [
    (KEY, [(IMAGE, PAGE), (RECORD, INSERT)], True),
    (KEY, [(TOMBSTONE, b""), (INIT, INIT_REC), (RECORD, INSERT)], True),
    (KEY, [(INIT, INIT_REC), (RECORD, INSERT)], True),
    (KEY, [(RECORD, _image_delta(PAGE, 0x10D2000)), (RECORD, INSERT)], True),
    (KEY, [(RECORD, INSERT)], False),  # no page to start from: Python raises
    # VISIBLE on the heap page, which C would apply to any page, zeros included
    (Key.rel_block(1663, 1, 2619, 0, 0), [(RECORD, _delta("heap2_visible_2blk", 0x14626F8))],
     False),
    (KEY, [(IMAGE, PAGE), (RECORD, _image_delta(PAGE, 0x10D2000, lz4_compressed=True)),
           (RECORD, INSERT)], False),
    (Key.slru_page(0, 0), [(IMAGE, bytes(BLCKSZ)), (RECORD, bytes([TAG_IMAGE]) + PAGE)], False),
]


def _batch(chains: list[tuple[Key, list[tuple[int, bytes]], bool]]
           ) -> tuple[EntryBatch, np.ndarray, np.ndarray]:
    keys: list[bytes] = []
    kinds: list[int] = []
    values: list[bytes] = []
    first: list[int] = []
    for key, rows, _ in chains:
        first.append(len(keys))
        for kind, value in rows:
            keys.append(key.to_bytes())
            kinds.append(kind)
            values.append(value)
    offsets = np.cumsum([0] + [len(v) for v in values])
    lsns = np.array([ENDS.get(v, i + 1) for i, v in enumerate(values)], dtype=np.int64)
    b = EntryBatch.from_offsets(key_array(keys), lsns, np.array(kinds, np.uint8), offsets,
                                b"".join(values))
    starts = np.array(first, np.int64)
    return b, starts, np.append(starts[1:], len(keys))


def _reference(key: Key, rows: list[tuple[int, bytes]]) -> bytes:
    base = rows[0][1] if rows[0][0] == IMAGE else None
    rest = rows[1:] if rows[0][0] in (IMAGE, TOMBSTONE) else rows
    return reconstruct.reconstruct_value(key, base, [WalRecord(v, k == INIT, ENDS.get(v, 0))
                                                     for k, v in rest])


def test_into_builds_what_the_reference_builds_and_leaves_the_rest() -> None:
    b, first, stop = _batch(CHAINS)
    slots = np.arange(len(CHAINS), dtype=np.int64)[::-1].copy()  # any slot order
    dst = bytearray(b"\xaa" * (len(CHAINS) * BLCKSZ))
    done = reconstruct.reconstruct_value.into(memoryview(dst), BLCKSZ, b, first, stop, slots)
    assert done.tolist() == [want for _, _, want in CHAINS]
    for c, (key, rows, want) in enumerate(CHAINS):
        if want:
            got = dst[int(slots[c]) * BLCKSZ:][:BLCKSZ]
            assert got == _reference(key, rows), c
    for refused in CHAINS[4:6]:  # what C left to Python, Python refuses
        with pytest.raises(StrataError):
            _reference(*refused[:2])
    narrow = bytearray(len(CHAINS) * 16)
    assert not reconstruct.reconstruct_value.into(memoryview(narrow), 16, b, first, stop,
                                                  slots).any()


def test_into_checks_rows_and_slots() -> None:
    b, first, stop = _batch(CHAINS[:2])
    dst = memoryview(bytearray(2 * BLCKSZ))
    with pytest.raises(ValueError, match="slot"):
        reconstruct.reconstruct_value.into(dst, BLCKSZ, b, first, stop, np.array([0, 2]))
    with pytest.raises(ValueError, match="rows"):
        reconstruct.reconstruct_value.into(dst, BLCKSZ, b, first, stop + 1, np.array([0, 1]))


def test_a_window_of_chains_lays_out_what_the_reference_does() -> None:
    """`scan._redo_into` with the window path, against the same scan with the
    compiled chain off (Python for every chain); the chain Python refuses is left
    out of both."""
    ok = [c for c in CHAINS if c not in CHAINS[4:6] and c[0] == KEY] + [CHAINS[-1]]
    b, first, stop = _batch(ok)
    ch = Chains(b, first, stop)
    slots = np.arange(len(ok), dtype=np.int64)
    got, want = bytearray(b"\xaa" * (len(ok) * BLCKSZ)), bytearray(len(ok) * BLCKSZ)
    s1, s2 = ReadStats(), ReadStats()
    w1 = _redo_into(ch, np.arange(len(ok)), slots, memoryview(got), BLCKSZ,
                    reconstruct.reconstruct_value, s1)
    saved = reconstruct.compiled_chain
    reconstruct.compiled_chain = None
    try:
        w2 = _redo_into(ch, np.arange(len(ok)), slots, memoryview(want), BLCKSZ,
                        reconstruct.reconstruct_value, s2)
    finally:
        reconstruct.compiled_chain = saved
    assert sorted(w1) == sorted(w2) == list(range(len(ok)))
    assert got == want
    assert (s1.redo_calls, s1.deltas_applied) == (s2.redo_calls, s2.deltas_applied)


def test_chains_on_a_base_page_build_what_the_reference_builds() -> None:
    """`base` (the flush's chain cuts): a chain on the page its own slot already holds,
    one on the page an earlier chain built, and each chain C must leave: one based on
    a chain it left (a compressed image delta), one whose rows hold an image, and a
    base that is not an earlier chain (ValueError)."""
    rows: list[tuple[Key, list[tuple[int, bytes]], bool]] = [
        (KEY, [(RECORD, INSERT)], True),           # base: its slot holds PAGE
        (KEY, [(INIT, INIT_REC)], True),           # no base: from no page
        (KEY, [(RECORD, INSERT)], True),           # base: chain 1's page
        (KEY, [(RECORD, _image_delta(PAGE, 0x10D2000, lz4_compressed=True))], False),
        (KEY, [(RECORD, INSERT)], False),          # base: chain 3, which C left
        (KEY, [(IMAGE, PAGE), (RECORD, INSERT)], False),  # an image on a base
    ]
    b, first, stop = _batch(rows)
    base = np.array([0, -1, 1, -1, 3, 5], dtype=np.int64)
    slots = np.array([5, 4, 3, 2, 1, 0], dtype=np.int64)
    dst = bytearray(b"\xaa" * (len(rows) * BLCKSZ))
    for c in (0, 5):
        dst[int(slots[c]) * BLCKSZ:(int(slots[c]) + 1) * BLCKSZ] = PAGE
    done = reconstruct.reconstruct_value.into(memoryview(dst), BLCKSZ, b, first, stop, slots,
                                              base)
    assert done.tolist() == [want for _, _, want in rows]
    want = _reference(KEY, [(IMAGE, PAGE), (RECORD, INSERT)])
    assert want != PAGE
    assert dst[int(slots[0]) * BLCKSZ:][:BLCKSZ] == want
    assert dst[int(slots[1]) * BLCKSZ:][:BLCKSZ] == PAGE
    assert dst[int(slots[2]) * BLCKSZ:][:BLCKSZ] == want
    for bad in ([1, -1, 1, -1, 3, 5], [0, -2, 1, -1, 3, 5]):
        with pytest.raises(ValueError, match="base"):
            reconstruct.reconstruct_value.into(memoryview(dst), BLCKSZ, b, first, stop, slots,
                                               np.array(bad, dtype=np.int64))


def test_a_call_that_gives_up_the_gil_builds_and_refuses_alike() -> None:
    """Chains replaying 16,384 rows or more are built without the GIL (the flush's
    cuts beside ingest): the same pages as the reference, and a bad slot found
    meanwhile still raises once the GIL is back."""
    many = [CHAINS[0]] * 8200  # 16,400 rows
    b, first, stop = _batch(many)
    assert int((stop - first).sum()) >= 16384
    slots = np.arange(len(many), dtype=np.int64)
    dst = bytearray(len(many) * BLCKSZ)
    done = reconstruct.reconstruct_value.into(memoryview(dst), BLCKSZ, b, first, stop, slots)
    assert done.all()
    want = _reference(*CHAINS[0][:2])
    assert all(dst[c * BLCKSZ:(c + 1) * BLCKSZ] == want for c in range(len(many)))
    slots[-1] = len(many)  # past the buffer: found with the GIL given up
    with pytest.raises(ValueError, match="slot"):
        reconstruct.reconstruct_value.into(memoryview(dst), BLCKSZ, b, first, stop, slots)


CLOG = Key.slru_page(0, 0)


def _commits(slots: list[int], status: int = 1) -> list[tuple[int, bytes]]:
    return [(RECORD, delta_value([xid_status_op(status, [s])])) for s in slots]


def test_runs_of_commit_statuses_on_clog_pages_equal_the_reference() -> None:
    """SLRU chains of one-xid status values (the flush's cuts of CLOG pages): on an
    image, on a base in the slot, on an earlier chain's page, with a later status of
    the same xid winning; a chain with another op or no page to start from is left;
    with the compiled chain off nothing is built."""
    rng = np.random.default_rng(7)
    page0 = bytes(rng.integers(0, 256, BLCKSZ, dtype=np.uint8))
    runs = [_commits([int(x) for x in rng.integers(0, 32768, 40)]),
            _commits([5, 9, 5], 1) + _commits([5], 2),
            _commits([int(x) for x in rng.integers(0, 32768, 12)])]
    other = [(RECORD, delta_value([xid_status_op(1, [3, 4])]))]
    rows: list[tuple[Key, list[tuple[int, bytes]], bool]] = [
        (CLOG, [(IMAGE, page0), *runs[0]], True),  # on its image
        (CLOG, runs[1], True),                      # base: its slot holds page0
        (CLOG, runs[2], True),                      # base: chain 0's page
        (CLOG, other + runs[2], False),             # a two-slot op
        (CLOG, runs[2], False),                     # no page: the reference decides
    ]
    b, first, stop = _batch(rows)
    base = np.array([-1, 1, 0, 3, -1], dtype=np.int64)
    slots = np.array([4, 3, 2, 1, 0], dtype=np.int64)
    dst = bytearray(b"\xaa" * (len(rows) * BLCKSZ))
    for c in (1, 3):
        dst[int(slots[c]) * BLCKSZ:(int(slots[c]) + 1) * BLCKSZ] = page0
    done = reconstruct.reconstruct_value.into(memoryview(dst), BLCKSZ, b, first, stop, slots,
                                              base)
    assert done.tolist() == [want for _, _, want in rows]

    def ref(base_page: bytes, vals: list[tuple[int, bytes]]) -> bytes:
        return reconstruct.reconstruct_value(CLOG, base_page, [WalRecord(v) for _, v in vals])

    chain0 = ref(page0, runs[0])
    assert dst[int(slots[0]) * BLCKSZ:][:BLCKSZ] == chain0 != page0
    assert dst[int(slots[1]) * BLCKSZ:][:BLCKSZ] == ref(page0, runs[1])
    assert dst[int(slots[2]) * BLCKSZ:][:BLCKSZ] == ref(chain0, runs[2])
    saved = reconstruct.compiled_chain
    reconstruct.compiled_chain = None
    try:
        assert not reconstruct.reconstruct_value.into(memoryview(dst), BLCKSZ, b, first, stop,
                                                      slots, base).any()
    finally:
        reconstruct.compiled_chain = saved
