"""`WalReader.read_batch`: the same records as `read_record` + `decode_record`,
and the compiled reader (strata.wal._walbatch) byte for byte the same batches
as the pure-Python one, on crafted WAL with random damage and on real WAL
(page and segment boundaries, XLOG_SWITCH, compressed images)."""

from __future__ import annotations

import random
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import google_crc32c
import pytest

from strata.errors import EndOfWal, WalDecodeError
from strata.lsn import Lsn
from strata.wal import batch as batch_mod
from strata.wal.batch import (
    RecordBatch,
    crc32c_rows,
    crc32c_rows_python,
)
from strata.wal.decoder import decode_record
from strata.wal.reader import WalReader
from strata.wal.record import DecodedRecord
from strata.wal.source import FileSource
from tests.wal.conftest import BoundaryRun, WalRun
from tests.wal.craft import WalBuilder, block_header, main_data_body, record_bytes

SEG = 1024 * 1024


@pytest.fixture(params=["compiled", "python"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Run a test with the compiled reader and with the pure-Python one."""
    if request.param == "compiled" and batch_mod._load_compiled() is None:
        pytest.fail("the compiled WAL reader is not built (python setup.py build_ext --inplace)")
    monkeypatch.setattr(batch_mod, "_COMPILED", False)
    if request.param == "python":
        monkeypatch.setenv("STRATA_PURE_PYTHON", "1")
    else:
        monkeypatch.delenv("STRATA_PURE_PYTHON", raising=False)
    yield request.param
    monkeypatch.setattr(batch_mod, "_COMPILED", False)


@dataclass
class Outcome:
    batches: list[RecordBatch]
    error: BaseException | None


def read_batches(reader: WalReader, chunks: list[bytes]) -> Outcome:
    out: list[RecordBatch] = []
    try:
        for c in chunks:
            reader.feed(c)
            while (b := reader.read_batch()) is not None:
                out.append(b)
    except (EndOfWal, WalDecodeError) as e:
        return Outcome(out, e)
    return Outcome(out, None)


def read_records(reader: WalReader, chunks: list[bytes]
                 ) -> tuple[list[DecodedRecord], BaseException | None]:
    out: list[DecodedRecord] = []
    try:
        for c in chunks:
            reader.feed(c)
            while (r := reader.read_record()) is not None:
                out.append(decode_record(r.raw, r.lsn, r.end_lsn))
    except (EndOfWal, WalDecodeError) as e:
        return out, e
    return out, None


def assert_batches_hold(batches: list[RecordBatch], records: list[DecodedRecord]) -> None:
    got = [b.record(i) for b in batches for i in range(len(b))]
    assert got == records
    for b in batches:
        for i in range(len(b)):
            rec = b.record(i)
            r = b.recs[i]
            assert (int(r["xid"]), int(r["rmid"]), int(r["info"])) == (
                rec.xl_xid, rec.xl_rmid, rec.xl_info)
            assert b.buf[int(r["main_off"]):int(r["main_off"]) + int(r["main_len"])] == \
                rec.main_data
            blks = b.blks[int(r["blk_first"]):int(r["blk_first"]) + int(r["nblocks"])]
            assert len(blks) == len(rec.blocks)
            for k, blk in zip(blks, rec.blocks, strict=True):
                assert (int(k["block_id"]), int(k["spc"]), int(k["db"]), int(k["rel"]),
                        int(k["fork"]), int(k["blkno"]), int(k["rec"])) == (
                    blk.block_id, blk.rlocator.spc, blk.rlocator.db, blk.rlocator.rel,
                    blk.fork, blk.blkno, i)
                assert b.buf[int(k["data_off"]):int(k["data_off"]) + int(k["data_len"])] == \
                    blk.data
                if blk.image is not None:
                    io, il = int(k["img_off"]), int(k["img_len"])
                    assert b.buf[io:io + il] == blk.image.data
                    assert (int(k["bimg_info"]), int(k["hole_offset"]),
                            int(k["hole_length"])) == (blk.image.bimg_info,
                                                       blk.image.hole_offset,
                                                       blk.image.hole_length)


def same_batches(a: list[RecordBatch], b: list[RecordBatch]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.buf == y.buf
        assert x.recs.tobytes() == y.recs.tobytes()
        assert x.blks.tobytes() == y.blks.tobytes()


# -- crafted WAL ----------------------------------------------------------------------------


def _crafted() -> tuple[WalBuilder, bytes]:
    """Records of every size with block references (images, SAME_REL, origin,
    top-level xid too), across pages and a segment boundary, then an
    XLOG_SWITCH and more records."""
    b = WalBuilder(SEG * 3, SEG)
    rnd = random.Random(7)
    for n in range(400):
        headers = b""
        payload = b""
        for blk in range(rnd.choice([0, 1, 1, 2, 3])):
            data = bytes(rnd.randrange(256) for _ in range(rnd.choice([0, 10, 60])))
            image = rnd.random() < 0.1
            img = bytes(rnd.randrange(256) for _ in range(8192 - 4000)) if image else b""
            same = blk > 0 and rnd.random() < 0.5
            flags = (0x20 if data else 0) | (0x10 if image else 0) | (0x80 if same else 0)
            headers += block_header(blk, flags, len(data),
                                    image=(len(img), 100, 0x03, None) if image else None,
                                    rloc=None if same else (1663, 5, 16384 + n % 3),
                                    blkno=rnd.randrange(100))
            payload += img + data
        if rnd.random() < 0.05:
            headers += bytes([253]) + struct.pack("<H", 7)
        if rnd.random() < 0.05:
            headers += bytes([252]) + struct.pack("<I", 650)
        main = bytes(rnd.randrange(256) for _ in range(rnd.choice([0, 5, 200, 300])))
        if main:
            headers += main_data_body(main)[:-len(main)]
        b.add(record_bytes(10, 0, headers + payload + main, xid=700 + n // 5))
        if n == 250:
            b.add(record_bytes(0, 0x40, b""), is_switch=True)
    return b, b.finish_page()


def test_a_crafted_wal_reads_the_same_as_record_by_record(mode: str) -> None:
    b, wal = _crafted()
    chunks = [wal[i:i + 5000] for i in range(0, len(wal), 5000)]
    records, err = read_records(WalReader(SEG * 3, SEG), chunks)
    got = read_batches(WalReader(SEG * 3, SEG), chunks)
    assert len(records) == len(b.lsns)
    assert isinstance(err, EndOfWal) and str(got.error) == str(err)  # the zeros after the last
    assert_batches_hold(got.batches, records)


def test_random_damage_stops_batches_where_records_stop(mode: str) -> None:
    _, clean = _crafted()
    rnd = random.Random(13)
    for _ in range(150):
        data = bytearray(clean)
        data[rnd.randrange(len(data))] ^= 1 << rnd.randrange(8)
        cut = rnd.randrange(1, 70000)
        chunks = [bytes(data[i:i + cut]) for i in range(0, len(data), cut)]
        records, err = read_records(WalReader(SEG * 3, SEG), chunks)
        got = read_batches(WalReader(SEG * 3, SEG), chunks)
        assert_batches_hold(got.batches, records)
        assert type(got.error) is type(err)
        assert str(got.error) == str(err)


def test_the_compiled_reader_writes_what_the_python_one_writes(monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    _, wal = _crafted()
    chunks = [wal[i:i + 7000] for i in range(0, len(wal), 7000)]
    monkeypatch.setattr(batch_mod, "_COMPILED", False)
    compiled = read_batches(WalReader(SEG * 3, SEG), chunks)
    monkeypatch.setattr(batch_mod, "_COMPILED", None)  # pure Python
    python = read_batches(WalReader(SEG * 3, SEG), chunks)
    same_batches(compiled.batches, python.batches)


def test_crc32c_rows_compiled_and_python_agree_with_google_crc32c() -> None:
    rnd = random.Random(4)
    data = bytes(rnd.randrange(256) for _ in range(36 * 500 + 7))  # 7 bytes of no row
    want = [google_crc32c.value(data[at:at + 32]) for at in range(0, 36 * 500, 36)]
    assert crc32c_rows_python(data, 36, 32).tolist() == want
    assert crc32c_rows(data, 36, 32).tolist() == want
    assert crc32c_rows(data[:35], 36, 32).tolist() == []
    if batch_mod.compiled_frame() is not None:
        from strata.wal import _walbatch  # type: ignore[attr-defined]

        with pytest.raises(ValueError, match="length <= stride"):
            _walbatch.crc32c_rows(data, 36, 37)


# -- real WAL -----------------------------------------------------------------------------


def _chunks(run: WalRun, chunk: int) -> list[bytes]:
    src = FileSource(run.wal_dir, run.start, chunk_size=chunk)
    return [c.data for c in iter(lambda: src.poll(0), None)]


@pytest.mark.pg
@pytest.mark.parametrize("name", ["pgbench_wal", "history_wal", "pglz_wal", "boundary_wal"])
def test_real_wal_batches_match_records_and_both_readers_agree(
        name: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    run: WalRun = request.getfixturevalue(name)
    seg = run.segment_size if isinstance(run, BoundaryRun) else 16 * SEG
    chunks = _chunks(run, 128 << 10)
    records, err = read_records(WalReader(run.start, seg), chunks)
    assert isinstance(err, EndOfWal) and len(records) > 100
    monkeypatch.setattr(batch_mod, "_COMPILED", False)
    compiled = read_batches(WalReader(run.start, seg), chunks)
    monkeypatch.setattr(batch_mod, "_COMPILED", None)
    python = read_batches(WalReader(run.start, seg), chunks)
    assert_batches_hold(compiled.batches, records)
    same_batches(compiled.batches, python.batches)
    assert str(compiled.error) == str(python.error) == str(err)
    assert compiled.batches[-1].end_lsn == Lsn(records[-1].end_lsn)
