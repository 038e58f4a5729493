"""PostgreSQL 18 system catalog rows: layouts and the tuple deformer.

What it is: the column layouts of the catalogs whose rows say what a DDL
statement did (pg_class, pg_attribute, pg_namespace, pg_database, pg_authid,
pg_index, pg_proc, pg_type, pg_extension), as the 18.6 headers declare them
(include/server/catalog/pg_*.h: ``CATALOG(...) { ... } FormData_pg_*``), and
`deform`, which reads a heap tuple's columns the way ``heap_deform_tuple``
(access/common/heaptuple.c) does: the null bitmap, ``att_align_pointer``
alignment (a varlena whose first byte is not a pad byte is not aligned), and
``VARSIZE_ANY`` lengths (1-byte, 4-byte and external TOAST pointer headers).
Also the tuple-header fields visibility needs (htup_details.h).

A layout may be a prefix of the catalog's columns: every column's offset
depends only on the columns before it. Variable-length columns are returned
as their raw bytes (header included; a TOASTed value is its TOAST pointer),
enough to tell whether a value changed.

Fed by: tuples cut from catalog pages (`strata.ingest.catalog`). Feeds: the
DDL description (`strata.ingest.catalog_changes`). Owns no state, no I/O.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

FIRST_NORMAL_OBJECT_ID = 16384  # access/transam.h FirstNormalObjectId

# catalog/pg_*_d.h relation OIDs
TYPE_RELATION_ID = 1247
ATTRIBUTE_RELATION_ID = 1249
PROCEDURE_RELATION_ID = 1255
RELATION_RELATION_ID = 1259
AUTHID_RELATION_ID = 1260
DATABASE_RELATION_ID = 1262
INDEX_RELATION_ID = 2610
NAMESPACE_RELATION_ID = 2615
EXTENSION_RELATION_ID = 3079

CATALOG_NAMES = {
    TYPE_RELATION_ID: "pg_type", ATTRIBUTE_RELATION_ID: "pg_attribute",
    PROCEDURE_RELATION_ID: "pg_proc", RELATION_RELATION_ID: "pg_class",
    AUTHID_RELATION_ID: "pg_authid", DATABASE_RELATION_ID: "pg_database",
    INDEX_RELATION_ID: "pg_index", NAMESPACE_RELATION_ID: "pg_namespace",
    EXTENSION_RELATION_ID: "pg_extension",
}
SHARED_CATALOGS = frozenset({AUTHID_RELATION_ID, DATABASE_RELATION_ID})
# catalogs whose relfilenumber lives in the relation map (BKI_BOOTSTRAP or shared)
MAPPED_CATALOGS = frozenset({TYPE_RELATION_ID, ATTRIBUTE_RELATION_ID, PROCEDURE_RELATION_ID,
                             RELATION_RELATION_ID, AUTHID_RELATION_ID, DATABASE_RELATION_ID})

# pg_class.relkind (catalog/pg_class.h)
RELKIND_RELATION = "r"
RELKIND_INDEX = "i"
RELKIND_SEQUENCE = "S"
RELKIND_TOASTVALUE = "t"
RELKIND_VIEW = "v"
RELKIND_MATVIEW = "m"
RELKIND_COMPOSITE_TYPE = "c"
RELKIND_FOREIGN_TABLE = "f"
RELKIND_PARTITIONED_TABLE = "p"
RELKIND_PARTITIONED_INDEX = "I"
RELPERSISTENCE_TEMP = "t"
RELKIND_OBJECT = {
    RELKIND_RELATION: "TABLE", RELKIND_INDEX: "INDEX", RELKIND_SEQUENCE: "SEQUENCE",
    RELKIND_TOASTVALUE: "TOAST TABLE", RELKIND_VIEW: "VIEW", RELKIND_MATVIEW: "MATERIALIZED VIEW",
    RELKIND_COMPOSITE_TYPE: "TYPE", RELKIND_FOREIGN_TABLE: "FOREIGN TABLE",
    RELKIND_PARTITIONED_TABLE: "TABLE", RELKIND_PARTITIONED_INDEX: "INDEX",
}
# pg_proc.prokind
PROKIND_OBJECT = {"f": "FUNCTION", "p": "PROCEDURE", "a": "AGGREGATE", "w": "FUNCTION"}

# -- heap tuple header (access/htup_details.h) -------------------------------------
SIZEOF_HEAP_TUPLE_HEADER = 23  # offsetof(HeapTupleHeaderData, t_bits)
HEAP_HASNULL = 0x0001
HEAP_XMAX_KEYSHR_LOCK = 0x0010
HEAP_XMAX_EXCL_LOCK = 0x0040
HEAP_XMAX_LOCK_ONLY = 0x0080
HEAP_XMAX_INVALID = 0x0800
HEAP_XMAX_IS_MULTI = 0x1000
HEAP_LOCK_MASK = HEAP_XMAX_EXCL_LOCK | HEAP_XMAX_KEYSHR_LOCK
HEAP_NATTS_MASK = 0x07FF

_HEADER = struct.Struct("<IIIHHHHHB")  # xmin, xmax, field3, ctid(3 x u16), infomask2, infomask, hoff
_MASKS = struct.Struct("<HHB")  # t_infomask2, t_infomask, t_hoff at offset 18


@dataclass(frozen=True, slots=True)
class TupleHeader:
    xmin: int
    xmax: int
    infomask2: int
    infomask: int
    hoff: int

    @classmethod
    def parse(cls, tup: bytes | memoryview) -> TupleHeader:
        if len(tup) < SIZEOF_HEAP_TUPLE_HEADER:
            raise ValueError(f"heap tuple of {len(tup)} bytes is shorter than its header")
        xmin, xmax, _, _, _, _, im2, im, hoff = _HEADER.unpack_from(tup, 0)
        return cls(xmin, xmax, im2, im, hoff)

    @property
    def xmax_is_live_deleter(self) -> bool:
        """xmax names a transaction that deleted or updated the row (not a mere
        locker, not invalid): HEAP_XMAX_IS_LOCKED_ONLY and HEAP_XMAX_INVALID."""
        if self.xmax == 0 or self.infomask & HEAP_XMAX_INVALID:
            return False
        if self.infomask & HEAP_XMAX_LOCK_ONLY:
            return False
        return (self.infomask & (HEAP_XMAX_IS_MULTI | HEAP_LOCK_MASK)) != HEAP_XMAX_EXCL_LOCK


# -- column types ------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ColType:
    typlen: int  # -1: varlena
    align: int  # 1, 2, 4 or 8 (typalign c, s, i, d)
    kind: str  # how to decode a fixed-size value: u32 i32 i16 i64 f32 bool char name


OID = ColType(4, 4, "u32")
XID = OID
REGPROC = OID
INT4 = ColType(4, 4, "i32")
INT2 = ColType(2, 2, "i16")
FLOAT4 = ColType(4, 4, "f32")
BOOL = ColType(1, 1, "bool")
CHAR = ColType(1, 1, "char")
NAME = ColType(64, 1, "name")  # NAMEDATALEN 64, typalign c
TIMESTAMPTZ = ColType(8, 8, "i64")
VARLENA = ColType(-1, 4, "raw")  # text, pg_node_tree, int2vector, oidvector, text[], oid[]
VARLENA_D = ColType(-1, 8, "raw")  # aclitem[] and anyarray (typalign d)

_FIXED = {"u32": struct.Struct("<I"), "i32": struct.Struct("<i"), "i16": struct.Struct("<h"),
          "i64": struct.Struct("<q"), "f32": struct.Struct("<f")}

Column = tuple[str, ColType]
Layout = tuple[Column, ...]

PG_CLASS: Layout = (
    ("oid", OID), ("relname", NAME), ("relnamespace", OID), ("reltype", OID),
    ("reloftype", OID), ("relowner", OID), ("relam", OID), ("relfilenode", OID),
    ("reltablespace", OID), ("relpages", INT4), ("reltuples", FLOAT4), ("relallvisible", INT4),
    ("relallfrozen", INT4), ("reltoastrelid", OID), ("relhasindex", BOOL), ("relisshared", BOOL),
    ("relpersistence", CHAR), ("relkind", CHAR), ("relnatts", INT2), ("relchecks", INT2),
    ("relhasrules", BOOL), ("relhastriggers", BOOL), ("relhassubclass", BOOL),
    ("relrowsecurity", BOOL), ("relforcerowsecurity", BOOL), ("relispopulated", BOOL),
    ("relreplident", CHAR), ("relispartition", BOOL), ("relrewrite", OID),
    ("relfrozenxid", XID), ("relminmxid", XID),
    ("relacl", VARLENA_D), ("reloptions", VARLENA), ("relpartbound", VARLENA),
)
PG_ATTRIBUTE: Layout = (
    ("attrelid", OID), ("attname", NAME), ("atttypid", OID), ("attlen", INT2), ("attnum", INT2),
    ("atttypmod", INT4), ("attndims", INT2), ("attbyval", BOOL), ("attalign", CHAR),
    ("attstorage", CHAR), ("attcompression", CHAR), ("attnotnull", BOOL), ("atthasdef", BOOL),
    ("atthasmissing", BOOL), ("attidentity", CHAR), ("attgenerated", CHAR),
    ("attisdropped", BOOL), ("attislocal", BOOL), ("attinhcount", INT2), ("attcollation", OID),
)
PG_NAMESPACE: Layout = (
    ("oid", OID), ("nspname", NAME), ("nspowner", OID), ("nspacl", VARLENA_D),
)
PG_DATABASE: Layout = (
    ("oid", OID), ("datname", NAME), ("datdba", OID), ("encoding", INT4),
    ("datlocprovider", CHAR), ("datistemplate", BOOL), ("datallowconn", BOOL),
    ("dathasloginevt", BOOL), ("datconnlimit", INT4), ("datfrozenxid", XID),
    ("datminmxid", XID), ("dattablespace", OID), ("datcollate", VARLENA), ("datctype", VARLENA),
    ("datlocale", VARLENA), ("daticurules", VARLENA), ("datcollversion", VARLENA),
    ("datacl", VARLENA_D),
)
PG_AUTHID: Layout = (
    ("oid", OID), ("rolname", NAME), ("rolsuper", BOOL), ("rolinherit", BOOL),
    ("rolcreaterole", BOOL), ("rolcreatedb", BOOL), ("rolcanlogin", BOOL),
    ("rolreplication", BOOL), ("rolbypassrls", BOOL), ("rolconnlimit", INT4),
    ("rolpassword", VARLENA), ("rolvaliduntil", TIMESTAMPTZ),
)
PG_INDEX: Layout = (
    ("indexrelid", OID), ("indrelid", OID), ("indnatts", INT2), ("indnkeyatts", INT2),
    ("indisunique", BOOL), ("indnullsnotdistinct", BOOL), ("indisprimary", BOOL),
    ("indisexclusion", BOOL), ("indimmediate", BOOL), ("indisclustered", BOOL),
    ("indisvalid", BOOL), ("indcheckxmin", BOOL), ("indisready", BOOL), ("indislive", BOOL),
    ("indisreplident", BOOL),
)
PG_PROC: Layout = (
    ("oid", OID), ("proname", NAME), ("pronamespace", OID), ("proowner", OID),
    ("prolang", OID), ("procost", FLOAT4), ("prorows", FLOAT4), ("provariadic", OID),
    ("prosupport", REGPROC), ("prokind", CHAR), ("prosecdef", BOOL), ("proleakproof", BOOL),
    ("proisstrict", BOOL), ("proretset", BOOL), ("provolatile", CHAR), ("proparallel", CHAR),
    ("pronargs", INT2), ("pronargdefaults", INT2), ("prorettype", OID),
    ("proargtypes", VARLENA), ("proallargtypes", VARLENA), ("proargmodes", VARLENA),
    ("proargnames", VARLENA), ("proargdefaults", VARLENA), ("protrftypes", VARLENA),
    ("prosrc", VARLENA), ("probin", VARLENA), ("prosqlbody", VARLENA), ("proconfig", VARLENA),
    ("proacl", VARLENA_D),
)
PG_TYPE: Layout = (("oid", OID), ("typname", NAME), ("typnamespace", OID), ("typowner", OID))
PG_EXTENSION: Layout = (
    ("oid", OID), ("extname", NAME), ("extowner", OID), ("extnamespace", OID),
)

LAYOUTS: dict[int, Layout] = {
    RELATION_RELATION_ID: PG_CLASS, ATTRIBUTE_RELATION_ID: PG_ATTRIBUTE,
    NAMESPACE_RELATION_ID: PG_NAMESPACE, DATABASE_RELATION_ID: PG_DATABASE,
    AUTHID_RELATION_ID: PG_AUTHID, INDEX_RELATION_ID: PG_INDEX,
    PROCEDURE_RELATION_ID: PG_PROC, TYPE_RELATION_ID: PG_TYPE,
    EXTENSION_RELATION_ID: PG_EXTENSION,
}

Row = dict[str, object]


def _varsize_any(data: bytes | memoryview, off: int) -> int:
    """VARSIZE_ANY of the varlena at `off` (varatt.h, little-endian)."""
    b0 = data[off]
    if b0 == 0x01:  # VARATT_IS_1B_E: an external (TOAST) pointer
        tag = data[off + 1]
        return 2 + (16 if tag == 18 else 8)  # VARHDRSZ_EXTERNAL + VARTAG_SIZE
    if b0 & 0x01:  # VARATT_IS_1B: short header, total length in the high 7 bits
        return int(b0 >> 1)
    return int(_FIXED["u32"].unpack_from(data, off)[0] >> 2) & 0x3FFFFFFF


def _fixed_value(data: bytes | memoryview, off: int, t: ColType) -> object:
    if t.kind == "bool":
        return data[off] != 0
    if t.kind == "char":
        return chr(data[off])
    if t.kind == "name":
        return _name(bytes(data[off:off + 64]))
    return _FIXED[t.kind].unpack_from(data, off)[0]


def _name(raw: bytes) -> str:
    return raw.split(b"\x00", 1)[0].decode("utf-8", errors="replace")


_CODE = {"u32": "I", "i32": "i", "i16": "h", "i64": "q", "f32": "f", "bool": "?", "char": "c",
         "name": "64s"}


@dataclass(frozen=True, slots=True)
class _Compiled:
    """A layout's leading fixed-size columns as one struct (pad bytes where
    alignment puts them), so a row without NULLs among them is one unpack."""

    prefix: struct.Struct
    names: tuple[str, ...]
    posts: tuple[tuple[int, str], ...]  # (index, kind) of values needing conversion
    end: int  # data offset after the prefix
    mask: int  # null-bitmap bits of the prefix columns


_COMPILED: dict[int, tuple[Layout, _Compiled]] = {}


def _compiled(layout: Layout) -> _Compiled:
    """`_compile(layout)`, cached by identity (hashing a layout costs more
    than deforming a row)."""
    hit = _COMPILED.get(id(layout))
    if hit is None or hit[0] is not layout:
        hit = _COMPILED[id(layout)] = (layout, _compile(layout))
    return hit[1]


def _compile(layout: Layout) -> _Compiled:
    fmt, off, n = ["<"], 0, 0
    posts: list[tuple[int, str]] = []
    for _, t in layout:
        if t.typlen < 0:
            break
        pad = (-off) & (t.align - 1)
        fmt.append("x" * pad + _CODE[t.kind])
        off += pad + t.typlen
        if t.kind in ("name", "char"):
            posts.append((n, t.kind))
        n += 1
    return _Compiled(struct.Struct("".join(fmt)), tuple(name for name, _ in layout[:n]),
                     tuple(posts), off, (1 << n) - 1)


def deform(tup: bytes | memoryview, layout: Layout) -> Row:
    """The columns of `layout` in heap tuple `tup` (header included).

    A column past the tuple's natts is None (catalog rows carry no missing
    values); a NULL is None; a varlena is its raw bytes.
    Raises: ValueError if the tuple is shorter than its columns say.
    """
    if len(tup) < SIZEOF_HEAP_TUPLE_HEADER:
        raise ValueError(f"heap tuple of {len(tup)} bytes is shorter than its header")
    infomask2, infomask, hoff = _MASKS.unpack_from(tup, 18)
    natts = infomask2 & HEAP_NATTS_MASK
    data = memoryview(tup)[hoff:]
    c = _compiled(layout)
    n = len(c.names)
    bits = (int.from_bytes(tup[SIZEOF_HEAP_TUPLE_HEADER:hoff], "little")
            if infomask & HEAP_HASNULL else -1)
    if natts >= n and bits & c.mask == c.mask and c.end <= len(data):
        # the fast path: every leading fixed-size column is there and not NULL
        values = list(c.prefix.unpack_from(data, 0))
        for i, kind in c.posts:
            v = values[i]
            assert isinstance(v, bytes)
            values[i] = _name(v) if kind == "name" else chr(v[0])
        row: Row = dict(zip(c.names, values, strict=True))
        return _deform_rest(data, layout, row, n, c.end, natts, bits)
    return _deform_rest(data, layout, {}, 0, 0, natts, bits)


def _deform_rest(data: memoryview, layout: Layout, row: Row, first: int, off: int, natts: int,
                 bits: int) -> Row:
    """heap_deform_tuple from column `first` at data offset `off` (`bits`: the
    null bitmap, -1 when the tuple has none)."""
    end = len(data)
    for i in range(first, len(layout)):
        name, t = layout[i]
        if i >= natts or not bits >> i & 1:
            row[name] = None
            continue
        if t.typlen == -1:
            if off >= end:
                raise ValueError(f"column {name} starts past the tuple's end ({off} >= {end})")
            if data[off] == 0:  # att_align_pointer: a pad byte, so the value is aligned
                off = (off + t.align - 1) & ~(t.align - 1)
            size = _varsize_any(data, off)
            if size < 1 or off + size > end:
                raise ValueError(f"column {name}: varlena of {size} bytes at {off} overruns "
                                 f"the tuple ({end} bytes of data)")
            row[name] = bytes(data[off:off + size])
            off += size
        else:
            off = (off + t.align - 1) & ~(t.align - 1)
            if off + t.typlen > end:
                raise ValueError(f"column {name} at {off} overruns the tuple ({end} bytes of data)")
            row[name] = _fixed_value(data, off, t)
            off += t.typlen
    return row
