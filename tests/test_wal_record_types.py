"""docs/wal-record-types.md against the code: every PostgreSQL 18 record type
listed once, each status what the redo dispatcher and ingest actually do, and
each cited proof an existing test."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from strata.errors import RedoError, UnsupportedRecordError
from strata.historical.store_view import NO_REDO_YET_RMGRS
from strata.ingest import cluster_state, transam, walingest
from strata.lsn import Lsn
from strata.reconstruct.redo import page_ops, redo_block
from strata.wal.record import (
    BKPBLOCK_HAS_IMAGE,
    BKPIMAGE_APPLY,
    BlockImage,
    BlockRef,
    DecodedRecord,
    RelFileLocator,
)
from strata.wal.rmgr import RM_MAX_BUILTIN_ID, RMGR_NAMES, record_types

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "wal-record-types.md"
STATUSES = {"redo", "image", "state", "not needed", "no redo yet"}
_PROOF = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")


@dataclass(frozen=True)
class Row:
    rmgr: str
    rtype: str
    info: int
    status: str
    what: str
    proof: str


def doc_rows() -> list[Row]:
    rows = []
    for line in DOC.read_text().splitlines():
        if not line.startswith("| ") or line.startswith("| rmgr |"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        assert len(cells) == 6, line
        rows.append(Row(cells[0], cells[1], int(cells[2], 16), cells[3], cells[4], cells[5]))
    return rows


ROWS = doc_rows()
RMIDS = {name: rmid for rmid, name in enumerate(RMGR_NAMES)}


def test_every_record_type_of_every_rmgr_is_listed_once() -> None:
    in_code = {(RMGR_NAMES[rmid], name, info) for rmid in range(RM_MAX_BUILTIN_ID + 1)
               for info, name in record_types(rmid).items()}
    in_doc = [(r.rmgr, r.rtype, r.info) for r in ROWS]
    assert len(in_doc) == len(set(in_doc)), "a record type is listed twice"
    assert set(in_doc) == in_code, (sorted(in_code - set(in_doc)), sorted(set(in_doc) - in_code))


def test_every_row_has_a_known_status_a_reason_and_a_proof_that_exists() -> None:
    for r in ROWS:
        assert r.status in STATUSES, r
        assert r.what, r
        m = _PROOF.search(r.proof)
        assert m, f"{r.rmgr}/{r.rtype}: no test cited"
        path = ROOT / m.group(1)
        assert path.is_file(), f"{r.rmgr}/{r.rtype}: {m.group(1)} does not exist"
        assert re.search(rf"^def {m.group(2)}\(", path.read_text(), re.M), (
            f"{r.rmgr}/{r.rtype}: {m.group(1)} has no test {m.group(2)}")


def _record(row: Row, block: BlockRef) -> DecodedRecord:
    return DecodedRecord(lsn=Lsn(0x1000000), end_lsn=Lsn(0x1000100), xl_tot_len=0, xl_xid=0,
                         xl_prev=Lsn(0), xl_info=row.info, xl_rmid=RMIDS[row.rmgr], xl_crc=0,
                         blocks=(block,), main_data=bytes(64))


def _block(image: BlockImage | None = None) -> BlockRef:
    return BlockRef(block_id=0, rlocator=RelFileLocator(1663, 5, 16384), fork=0, blkno=0,
                    fork_flags=BKPBLOCK_HAS_IMAGE if image else 0, image=image, data=b"")


def _dispatch(row: Row) -> str:
    """'unsupported' if the dispatcher has no redo for the type, 'no block' if
    the type's redo refuses any block, else 'handled' (garbage main data may
    still make it fail: what matters is that it is not unsupported)."""
    try:
        redo_block(_record(row, _block()), 0, page_ops.new_page(16))
    except UnsupportedRecordError:
        return "unsupported"
    except RedoError as e:
        return "no block" if "no block to redo" in str(e) else "handled"
    except Exception:
        return "handled"
    return "handled"


# rmgrs whose records ingest reads for non-page state
_INGEST_RMGRS = {getattr(m, name) for m in (walingest, transam, cluster_state)
                 for name in dir(m) if re.fullmatch(r"RM_\w+_ID", name)}


@pytest.mark.parametrize("row", ROWS, ids=[f"{r.rmgr}/{r.rtype}" for r in ROWS])
def test_statuses_agree_with_the_dispatcher(row: Row) -> None:
    outcome = _dispatch(row)
    if row.status == "redo":
        assert outcome == "handled", row
    elif row.status == "image":
        assert outcome == "handled", row
        page = page_ops.new_page(16)
        page[100:104] = b"\xde\xad\xbe\xef"
        image = BlockImage(bytes(page), BKPIMAGE_APPLY, 0, 0)
        out = redo_block(_record(row, _block(image)), 0, None)
        assert out[100:104] == b"\xde\xad\xbe\xef"
    elif row.status == "state":
        assert outcome == "unsupported", row
        assert RMIDS[row.rmgr] in _INGEST_RMGRS, f"ingest does not read {row.rmgr}"
    elif row.status == "not needed":
        assert outcome in ("unsupported", "no block"), row
    else:  # no redo yet
        assert outcome == "unsupported", row
        assert row.rmgr in NO_REDO_YET_RMGRS, row
