"""pg_control parsing/patching and pd_checksum, against bytes PostgreSQL 18 wrote.

data/pg_control_18.bin is the control file of a cleanly stopped PG 18.6 cluster
(initdb --data-checksums); pg_controldata printed the values asserted here.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from strata.errors import CorruptionError
from strata.historical.controlfile import parse_control, with_checksum_version
from strata.historical.instance import pg_resetwal_args
from strata.keyspace.cluster import ClusterState
from strata.lsn import Lsn
from strata.pg.checksum import checksum_page_py, checksum_pages, set_checksums
from strata.pg.constants import BLCKSZ

SAMPLE = Path(__file__).parent / "data" / "pg_control_18.bin"


def test_parse_control_reads_the_values_pg_controldata_printed() -> None:
    cf = parse_control(SAMPLE.read_bytes())
    assert cf.pg_control_version == 1800
    assert cf.catalog_version_no == 202506291
    assert cf.state == 1  # shut down
    assert str(cf.checkpoint) == "0/16EF508"
    assert cf.timeline == 1
    assert (cf.next_full_xid, cf.next_oid, cf.next_multi, cf.next_multi_offset) == (752, 12784, 1, 0)
    assert (cf.oldest_xid, cf.oldest_xid_db, cf.oldest_multi, cf.oldest_multi_db) == (744, 1, 1, 1)
    assert (cf.relseg_size, cf.xlog_seg_size, cf.data_checksum_version) == (131072, 16 << 20, 1)
    assert cf.default_char_signedness is True
    assert cf.catalog_version_dir == "PG_18_202506291"


def test_parse_control_rejects_a_flipped_byte() -> None:
    data = bytearray(SAMPLE.read_bytes())
    data[60] ^= 0x01  # inside the checkpoint copy
    with pytest.raises(CorruptionError, match="CRC"):
        parse_control(bytes(data))


def test_with_checksum_version_changes_only_that_field_and_keeps_the_crc_valid() -> None:
    data = SAMPLE.read_bytes()
    off = with_checksum_version(data, 0)
    assert parse_control(off).data_checksum_version == 0
    assert parse_control(with_checksum_version(off, 1)) == parse_control(data)
    diff = [i for i in range(len(data)) if data[i] != off[i]]
    assert all(252 <= i < 256 or 292 <= i < 296 for i in diff)


def test_pg_resetwal_args_split_the_full_xid_into_epoch_and_xid() -> None:
    v = ClusterState(lsn=Lsn(0x3000028), next_full_xid=(3 << 32) | 1000, next_oid=16384,
                     next_multi=12, next_multi_offset=23, oldest_xid=744, oldest_xid_db=1,
                     oldest_multi=1, oldest_multi_db=1)
    assert pg_resetwal_args(v) == ["-x", "1000", "-e", "3", "-u", "744", "-m", "12,1",
                                    "-O", "23", "-o", "16384"]


def _random_pages(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pages = rng.integers(0, 256, size=(n, BLCKSZ), dtype=np.uint8)
    pages[:, 14:16] = [0x00, 0x10]  # pd_upper != 0: not a new page
    return pages


def test_vectorised_checksum_equals_the_line_by_line_reference() -> None:
    pages = _random_pages(5, seed=7)
    blknos = [0, 1, 131071, 131072, 0xFFFFFFFE]
    got = checksum_pages(pages, blknos)
    want = [checksum_page_py(bytes(pages[i]), b) for i, b in enumerate(blknos)]
    assert [int(x) for x in got] == want
    # the stored pd_checksum is ignored by the computation
    pages2 = pages.copy()
    pages2[:, 8:10] = 0xAB
    assert list(checksum_pages(pages2, blknos)) == list(got)


def test_set_checksums_leaves_new_pages_alone_and_fills_the_others() -> None:
    pages = _random_pages(3, seed=3)
    pages[1] = 0  # a new (all-zero) page
    buf = bytearray(pages.tobytes())
    set_checksums(buf, [10, 11, 12])
    assert buf[BLCKSZ:2 * BLCKSZ] == bytes(BLCKSZ)
    for i in (0, 2):
        page = bytes(buf[i * BLCKSZ:(i + 1) * BLCKSZ])
        stored = struct.unpack_from("<H", page, 8)[0]
        assert stored == checksum_page_py(page, 10 + i)


def test_compiled_checksums_equal_the_numpy_reference_on_random_pages() -> None:
    """`page_ops.set_checksums` (compiled `_pagec.set_checksums`: what lazy file
    systems and materialize run) byte for byte against `checksum.set_checksums`:
    random pages, some new, any block numbers."""
    from strata.reconstruct.redo import page_ops

    if page_ops.pagec is None:
        pytest.fail("the compiled page operations are not built (python setup.py build_ext --inplace)")
    rng = np.random.default_rng(11)
    for n in (1, 7, 64):
        pages = _random_pages(n, seed=int(rng.integers(1 << 30)))
        pages[rng.random(n) < 0.2, 14:16] = 0  # pd_upper 0: new pages, left alone
        blknos = [int(b) for b in rng.integers(0, 1 << 32, size=n, dtype=np.uint64)]
        a, b = bytearray(pages.tobytes()), bytearray(pages.tobytes())
        page_ops.set_checksums(a, blknos)
        set_checksums(b, blknos)
        assert a == b
