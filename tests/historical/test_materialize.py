"""materialize() against an in-memory ClusterView (no server needed)."""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from strata.errors import CorruptionError, InstanceError
from strata.historical.controlfile import control_crc, parse_control
from strata.historical.materialize import SKELETON, materialize
from strata.historical.source import RelFile
from strata.key import SlruKind
from strata.keyspace.cluster import ClusterState
from strata.lsn import Lsn
from strata.pg.checksum import checksum_page_py
from strata.pg.constants import BLCKSZ

SAMPLE = Path(__file__).parent / "data" / "pg_control_18.bin"
SEGBLOCKS = 4  # tiny 'relseg_size' so segment splitting is exercised with a few pages


def _template(relseg_size: int = SEGBLOCKS) -> bytes:
    buf = bytearray(SAMPLE.read_bytes())
    struct.pack_into("<I", buf, 220, relseg_size)
    struct.pack_into("<I", buf, 292, control_crc(buf))
    return bytes(buf)


def _page(tag: int) -> bytes:
    """A non-new page (pd_lower/pd_upper set) whose content says `tag`."""
    p = bytearray(BLCKSZ)
    struct.pack_into("<HH", p, 12, 24, 8000)
    p[100:104] = tag.to_bytes(4, "little")
    return bytes(p)


class FakeSource:
    def __init__(self, rels: dict[tuple[int, int, int, int], tuple[int, list[int]]],
                 *, template: bytes | None = None) -> None:
        self.rels = rels  # key -> (nblocks, blocks present)
        self.template = template or _template()
        self.order_broken = False

    @property
    def lsn(self) -> Lsn:
        return Lsn(0x3000000)

    def databases(self) -> list[tuple[int, int]]:
        return [(1664, 0), (1663, 5), (16500, 5)]

    def relations(self) -> Iterator[RelFile]:
        for (spc, db, rel, fork), (n, _) in sorted(self.rels.items()):
            yield RelFile(spc, db, rel, fork, n)

    def pages(self, spc: int, db: int, rel: int, fork: int) -> Iterator[tuple[int, bytes]]:
        blocks = self.rels[(spc, db, rel, fork)][1]
        if self.order_broken:
            blocks = list(reversed(blocks))
        for b in blocks:
            yield b, _page(rel * 1000 + b)

    def slru_segments(self, kind: SlruKind) -> Iterator[tuple[str, bytes]]:
        yield "0000", bytes([int(kind) + 1]) * 8192

    def relmap(self, spc: int, db: int) -> bytes | None:
        return None if spc == 16500 else f"map {spc}/{db}".encode()

    def control(self) -> ClusterState:
        return parse_control(self.template).cluster_state()

    def control_template(self) -> bytes:
        return self.template


def _block(path: Path, blkno: int) -> bytes:
    with path.open("rb") as f:
        f.seek(blkno * BLCKSZ)
        return f.read(BLCKSZ)


def test_materialize_writes_true_lengths_holes_segments_and_valid_checksums(tmp_path: Path) -> None:
    src = FakeSource({
        (1663, 5, 16384, 0): (10, [0, 1, 2, 5, 6]),  # 3 segments, pages 3,4,7..9 missing
        (1663, 5, 16384, 1): (3, [0, 1, 2]),          # fsm: left out
        (1663, 5, 16384, 2): (1, [0]),                # vm: written
        (1663, 5, 16390, 3): (1, [0]),                # init fork of an unlogged table
        (1663, 5, 16391, 0): (0, []),                 # empty relation: empty file
        (1664, 0, 1262, 0): (1, [0]),
        (16500, 5, 16400, 0): (2, [0, 1]),            # in a tablespace
    })
    seen: list[tuple[int, int]] = []
    d = tmp_path / "data"
    m = materialize(src, d, progress=lambda done, total: seen.append((done, total)))
    base = d / "base" / "5"
    sizes = [os.path.getsize(base / n) for n in ("16384", "16384.1", "16384.2")]
    assert sizes == [4 * BLCKSZ, 4 * BLCKSZ, 2 * BLCKSZ]
    assert not (base / "16384_fsm").exists()
    assert os.path.getsize(base / "16384_vm") == BLCKSZ
    assert os.path.getsize(base / "16390_init") == BLCKSZ
    assert os.path.getsize(base / "16391") == 0
    # block 5 lives in segment 1 at offset 1; its checksum uses the relation block number
    p5 = _block(base / "16384.1", 1)
    assert p5[100:104] == (16384 * 1000 + 5).to_bytes(4, "little")
    assert struct.unpack_from("<H", p5, 8)[0] == checksum_page_py(p5, 5)
    assert _block(base / "16384", 3) == bytes(BLCKSZ)  # missing inside: zero page
    assert _block(base / "16384.2", 1) == bytes(BLCKSZ)  # padded tail
    # tablespace: a relative symlink to a directory inside the data directory
    link = d / "pg_tblspc" / "16500"
    assert link.is_symlink() and not os.readlink(link).startswith("/")
    assert (link / "PG_18_202506291" / "5" / "16400").stat().st_size == 2 * BLCKSZ
    assert (d / "base" / "5" / "pg_filenode.map").read_bytes() == b"map 1663/5"
    assert (d / "global" / "pg_filenode.map").read_bytes() == b"map 1664/0"
    assert (d / "PG_VERSION").read_text() == "18\n" and (base / "PG_VERSION").exists()
    assert (d / "pg_xact" / "0000").read_bytes()[:1] == b"\x01"
    assert (d / "pg_multixact" / "members" / "0000").read_bytes()[:1] == b"\x03"
    assert all((d / s).is_dir() for s in SKELETON)
    assert parse_control((d / "global" / "pg_control").read_bytes()).data_checksum_version == 1
    assert "hot_standby = on" in (d / "postgresql.conf").read_text()
    assert m.pages == 10 + 1 + 1 + 0 + 1 + 2 and seen[-1] == (m.pages, m.pages)


def test_materialize_with_checksums_disabled_keeps_pages_as_given(tmp_path: Path) -> None:
    src = FakeSource({(1663, 5, 16384, 0): (1, [0])})
    d = tmp_path / "data"
    m = materialize(src, d, checksums="disable")
    assert not m.checksums
    assert _block(d / "base" / "5" / "16384", 0) == _page(16384 * 1000)
    assert parse_control((d / "global" / "pg_control").read_bytes()).data_checksum_version == 0


def test_materialize_refuses_pages_out_of_order_and_removes_the_partial_dir(tmp_path: Path) -> None:
    src = FakeSource({(1663, 5, 16384, 0): (3, [0, 1, 2])})
    src.order_broken = True
    with pytest.raises(CorruptionError, match="ascending"):
        materialize(src, tmp_path / "data")
    assert not (tmp_path / "data").exists()


def test_materialize_refuses_a_nonempty_target_and_a_corrupt_template(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x").write_text("")
    with pytest.raises(InstanceError, match="not empty"):
        materialize(FakeSource({}), tmp_path / "data")
    bad = bytearray(_template())
    bad[50] ^= 1
    with pytest.raises(CorruptionError):
        materialize(FakeSource({}, template=bytes(bad)), tmp_path / "other")
    assert not (tmp_path / "other").exists()


def test_slru_pages_group_into_32_page_segments_with_zero_gaps() -> None:
    from strata.historical.source import slru_segments_from_pages

    pages = [(0, b"\x01" * BLCKSZ), (2, b"\x02" * BLCKSZ), (33, b"\x03" * BLCKSZ)]
    segs = dict(slru_segments_from_pages(iter(pages)))
    assert list(segs) == ["0000", "0001"]
    assert len(segs["0000"]) == 3 * BLCKSZ and segs["0000"][BLCKSZ:2 * BLCKSZ] == bytes(BLCKSZ)
    assert segs["0000"][2 * BLCKSZ:] == b"\x02" * BLCKSZ
    assert segs["0001"] == bytes(BLCKSZ) + b"\x03" * BLCKSZ
    with pytest.raises(CorruptionError):
        list(slru_segments_from_pages(iter([(3, b"\0" * BLCKSZ), (1, b"\0" * BLCKSZ)])))
