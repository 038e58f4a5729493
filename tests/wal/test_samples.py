"""Real WAL bytes (tests/data/wal, made by tests/wal/make_samples.py) decoded
against what pg_waldump 18 said about the very same bytes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from strata.lsn import Lsn
from strata.wal.decoder import decode_record
from strata.wal.image import restore_page
from strata.wal.reader import WalReader
from tests.wal.oracle import OracleBlock, OracleRecord, ours_as_oracle

DATA = Path(__file__).resolve().parents[1] / "data" / "wal"
META: dict[str, dict[str, object]] = json.loads((DATA / "records.json").read_text())


def _lsn(v: object) -> Lsn:
    return Lsn(v) if isinstance(v, int) else Lsn.parse(str(v))


def _oracle(d: dict[str, object]) -> OracleRecord:
    blocks = tuple(OracleBlock(**{**b, "rel": tuple(b["rel"])})  # type: ignore[arg-type, dict-item]
                   for b in d["blocks"])  # type: ignore[attr-defined]
    return OracleRecord(**{**d, "lsn": _lsn(d["lsn"]),  # type: ignore[arg-type]
                           "prev": _lsn(d["prev"]), "blocks": blocks})


@pytest.mark.parametrize("name", sorted(META))
def test_sample_record_decodes_like_pg_waldump(name: str) -> None:
    meta = META[name]
    raw = (DATA / f"{name}.bin").read_bytes()
    rec = decode_record(raw, Lsn.parse(str(meta["lsn"])), Lsn.parse(str(meta["end_lsn"])))
    assert ours_as_oracle(rec) == _oracle(meta["pg_waldump"])  # type: ignore[arg-type]
    # payload bookkeeping: header + sub-headers + payloads add up to the record
    payload = sum(len(b.data) + (len(b.image.data) if b.image else 0) for b in rec.blocks)
    assert payload + rec.main_len < rec.xl_tot_len
    assert rec.raw == raw


@pytest.mark.parametrize("page", sorted(p.name for p in DATA.glob("*.page*")))
def test_sample_image_restores_to_pg_waldump_page(page: str) -> None:
    name, _, suffix = page.rpartition(".page")
    meta = META[name]
    rec = decode_record((DATA / f"{name}.bin").read_bytes(), Lsn.parse(str(meta["lsn"])),
                        Lsn.parse(str(meta["end_lsn"])))
    blk = rec.block(int(suffix))
    assert blk is not None and blk.image is not None
    assert restore_page(blk.image, lsn=rec.lsn) == (DATA / page).read_bytes()


def test_samples_cover_compressed_holed_multiblock_and_origin_records() -> None:
    names = set(META)
    assert any(n.endswith("_pglz") or "_pglz_" in n for n in names)
    assert any("_hole" in n for n in names)
    assert any("_manyblk" in n for n in names)
    rec = decode_record((DATA / "heap_insert_origin.bin").read_bytes(), Lsn(0), Lsn(0))
    assert rec.origin is not None and rec.origin > 0


def test_first_pages_of_a_real_segment_read_like_pg_waldump() -> None:
    expected = json.loads((DATA / "first_pages.json").read_text())
    data = (DATA / "first_pages.bin").read_bytes()
    start = Lsn.parse(expected["start"])
    reader = WalReader(start)
    reader.feed(data)
    got = []
    for raw in reader:  # stops (None) at the record cut by the end of the sample
        got.append(ours_as_oracle(decode_record(raw.raw, raw.lsn, raw.end_lsn)))
    assert got == [_oracle(d) for d in expected["records"]]
    assert len(got) >= 3
    assert reader.system_identifier is not None and reader.timeline == 1
