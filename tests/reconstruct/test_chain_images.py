"""Image deltas in the compiled chain (`_pagec.redo_chain`) against the Python
reference (`reconstruct._restore_image`, then the Python redo): the same page for
images with and without a hole, a new (all-zero) page, and a chain that goes on
after the image; a compressed image or one whose sizes do not fit is left to
Python (the chain stops before it, the page untouched)."""

from __future__ import annotations

import random

import pytest

from strata.errors import StrataError
from strata.key import Key
from strata.keyspace.relation import encode_image_delta
from strata.reconstruct import reconstruct
from strata.reconstruct.redo.page_ops import BLCKSZ, page_get_lsn
from strata.storage.values import WalRecord
from strata.wal.record import BlockImage

KEY = Key.rel_block(1663, 5, 16390, 0, 7)
BKPIMAGE_HAS_HOLE, BKPIMAGE_APPLY, BKPIMAGE_COMPRESS_PGLZ = 0x01, 0x02, 0x04


@pytest.fixture
def chain() -> object:
    if reconstruct.compiled_chain is None:
        pytest.fail("the compiled page operations are not built (python setup.py build_ext --inplace)")
    return reconstruct.compiled_chain


def _page(rnd: random.Random, lower: int, upper: int) -> bytes:
    page = bytearray(rnd.randbytes(BLCKSZ))
    page[12:14] = lower.to_bytes(2, "little")
    page[14:16] = upper.to_bytes(2, "little")
    page[lower:upper] = bytes(upper - lower)
    return bytes(page)


def _image_delta(page: bytes, hole: tuple[int, int] | None, lsn: int, info: int = 0) -> bytes:
    if hole is None:
        image = BlockImage(page, BKPIMAGE_APPLY | info, 0, 0)
    else:
        off, length = hole
        image = BlockImage(page[:off] + page[off + length:], BKPIMAGE_APPLY | BKPIMAGE_HAS_HOLE | info,
                           off, length)
    return encode_image_delta(lsn, lsn + 64, image)


def _both(monkeypatch: pytest.MonkeyPatch, chain: object, deltas: list[bytes],
          base: bytes | None) -> tuple[bytes, bytes]:
    recs = [WalRecord(d, will_init=True) for d in deltas]
    ours = reconstruct.reconstruct_value(KEY, base, recs)
    monkeypatch.setattr(reconstruct, "compiled_chain", None)
    ref = reconstruct.reconstruct_value(KEY, base, recs)
    monkeypatch.setattr(reconstruct, "compiled_chain", chain)
    return ours, ref


@pytest.mark.parametrize("seed", range(8))
def test_an_uncompressed_image_delta_restores_like_the_reference(
        seed: int, chain: object, monkeypatch: pytest.MonkeyPatch) -> None:
    rnd = random.Random(seed)
    lower = 24 + 4 * rnd.randrange(0, 200)
    upper = rnd.randrange(lower, BLCKSZ)
    page = _page(rnd, lower, upper)
    hole = (lower, upper - lower) if upper > lower and seed % 2 else None
    first = _image_delta(page, hole, lsn=0x1_0000_0000 * seed + 0x100)
    second = _image_delta(_page(rnd, 64, 4096), (64, 4032), lsn=0x1_0000_0000 * seed + 0x200)
    applied: list[int] = []

    def counted(pg: bytearray, ds: list[bytes], lsns: list[int], start: int, *key: int) -> int:
        i = int(chain(pg, ds, lsns, start, *key))  # type: ignore[operator]
        applied.append(i - start)
        return i

    for deltas, base in (([first], None), ([first], bytes(BLCKSZ)), ([first, second], None)):
        applied.clear()
        monkeypatch.setattr(reconstruct, "compiled_chain", counted)
        ours, ref = _both(monkeypatch, counted, deltas, base)
        assert ours == ref
        assert sum(applied) == len(deltas)  # the chain took every image itself
        assert page_get_lsn(ours) == 0x1_0000_0000 * seed + (0x240 if len(deltas) == 2 else 0x140)


def test_a_new_page_image_keeps_its_zero_lsn(chain: object, monkeypatch: pytest.MonkeyPatch) -> None:
    ours, ref = _both(monkeypatch, chain, [_image_delta(bytes(BLCKSZ), None, lsn=0x500)], None)
    assert ours == ref == bytes(BLCKSZ)


def test_compressed_and_misfit_images_are_left_to_python(chain: object) -> None:
    rnd = random.Random(9)
    page = _page(rnd, 100, 5000)
    compressed = _image_delta(page, (100, 4900), lsn=0x700, info=BKPIMAGE_COMPRESS_PGLZ)
    good = _image_delta(page, (100, 4900), lsn=0x700)
    misfit = good[:-1]  # one byte short of the page less its hole
    for bad in (compressed, misfit):
        before = bytearray(rnd.randbytes(BLCKSZ))
        work = bytearray(before)
        assert chain(work, [bad], [0x740], 0, KEY.spc, KEY.db,  # type: ignore[operator]
                     KEY.rel, KEY.fork, KEY.blk) == 0
        assert work == before
    with pytest.raises(StrataError):  # and Python says what is wrong with them
        reconstruct.reconstruct_value(KEY, None, [WalRecord(misfit, will_init=True)])
