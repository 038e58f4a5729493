"""Raw on-page datums turned into PostgreSQL's binary wire format (typsend).

What it is: `TypeInfo` / `types_at` (what a server says about column types,
domains resolved to their base type) and `Datums.send(typid, raw)`, the
binary send format of a raw datum, so a server can take it back as a typed
parameter (binary Bind), evaluate a WHERE clause on it and print it with the
type's own output function: no value is ever formatted here.
Fed by: `restore.heappage` (raw datums), a historical server (types, enum
labels). Feeds: row history. Owns: the conversions below, one per send
function; any other type raises RestoreError naming it.

- fixed-width numbers, dates and times: the little-endian datum, byte order
  reversed (int2/4/8, oid, xid, float4/8, date, time, timestamp[tz], money);
  interval, timetz and point field by field;
- bool, "char", uuid, macaddr, text-like types and bytea: as stored; name up
  to its NUL;
- enum: its label (pg_enum);
- numeric: NumericShort / NumericLong (numeric.c) to numeric_send's layout;
- jsonb: the binary container (jsonb.h, jsonb_util.c) printed as JSON text,
  after jsonb_send's version byte 1;
- arrays: ArrayType (array.h) to array_send's layout, elements converted the
  same way.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

from strata.errors import RestoreError
from strata.restore.heappage import Attr, varlena, walk

_REVERSED = frozenset({"int2send", "int4send", "int8send", "oidsend", "xidsend", "xid8send",
                       "cidsend", "float4send", "float8send", "date_send", "time_send",
                       "timestamp_send", "timestamptz_send", "cash_send"})
_AS_STORED = frozenset({"boolsend", "charsend", "uuid_send", "macaddr_send", "macaddr8_send",
                        "textsend", "varcharsend", "bpcharsend", "byteasend", "json_send",
                        "xml_send", "unknownsend", "citext_send"})
_FIELDS = {"interval_send": (8, 4, 4), "timetz_send": (8, 4), "point_send": (8, 8)}
NUMERIC_NAN, NUMERIC_PINF, NUMERIC_NINF, NUMERIC_NEG = 0xC000, 0xD000, 0xF000, 0x4000

TYPES_SQL = """
WITH RECURSIVE b(orig, oid) AS (
  SELECT t.oid, t.oid FROM pg_catalog.pg_type t WHERE t.oid = ANY(%s)
  UNION SELECT b.orig, t.typbasetype FROM b JOIN pg_catalog.pg_type t ON t.oid = b.oid
  WHERE t.typtype = 'd')
SELECT b.orig, t.oid, t.typname::text, t.typsend::text, t.typelem, t.typlen, t.typalign::text,
       t.typbyval
FROM b JOIN pg_catalog.pg_type t ON t.oid = b.oid WHERE t.typtype <> 'd'
"""


@dataclass(frozen=True, slots=True)
class TypeInfo:
    oid: int  # the base type (domains resolved)
    name: str
    send: str
    elem: int
    typlen: int
    typalign: str
    typbyval: bool


def types_at(conn: Any, oids: set[int]) -> dict[int, TypeInfo]:
    """Type facts for `oids` and, recursively, their array element types."""
    out: dict[int, TypeInfo] = {}
    todo = set(oids)
    while todo:
        rows = conn.execute(TYPES_SQL, (sorted(todo),)).fetchall()
        for orig, oid, name, send, elem, typlen, typalign, byval in rows:
            out[orig] = TypeInfo(oid, name, send, elem, typlen, typalign, byval)
        todo = {t.elem for t in out.values() if t.elem and t.elem not in out}
    return out


def enums_at(conn: Any) -> dict[int, str]:
    return {int(o): str(label) for o, label in
            conn.execute("SELECT oid, enumlabel FROM pg_catalog.pg_enum").fetchall()}


# -- numeric ----------------------------------------------------------------------------


def numeric_parts(raw: bytes) -> tuple[int, int, int, list[int]]:
    """(sign, weight, dscale, base-10000 digits) of a stored numeric."""
    (h,) = struct.unpack_from("<H", raw, 0)
    if h & 0xC000 == 0xC000:
        return h & 0xF000, 0, 0, []
    if h & 0xC000 == 0x8000:  # NumericShort
        weight = h & 0x003F
        if h & 0x0040:
            weight |= ~0x003F
        sign = NUMERIC_NEG if h & 0x2000 else 0
        n = (len(raw) - 2) // 2
        return sign, weight, (h & 0x1F80) >> 7, list(struct.unpack_from(f"<{n}h", raw, 2))
    (weight,) = struct.unpack_from("<h", raw, 2)
    n = (len(raw) - 4) // 2
    return h & 0xC000, weight, h & 0x3FFF, list(struct.unpack_from(f"<{n}h", raw, 4))


def numeric_send(raw: bytes) -> bytes:
    sign, weight, dscale, digits = numeric_parts(raw)
    return struct.pack(f">hhHh{len(digits)}h", len(digits), weight, sign, dscale, *digits)


def numeric_text(raw: bytes) -> str:
    sign, weight, dscale, digits = numeric_parts(raw)
    special = {NUMERIC_NAN: "NaN", NUMERIC_PINF: "Infinity", NUMERIC_NINF: "-Infinity"}
    if sign in special:
        return special[sign]

    def dig(i: int) -> int:
        return digits[i] if 0 <= i < len(digits) else 0

    whole = (str(dig(0)) + "".join(f"{dig(i):04d}" for i in range(1, weight + 1))
             if weight >= 0 else "0")
    frac = "".join(f"{dig(i):04d}" for i in range(weight + 1, weight + 1 + (dscale + 3) // 4))
    text = whole + ("." + frac[:dscale] if dscale > 0 else "")
    return ("-" if sign == NUMERIC_NEG else "") + text


# -- jsonb ------------------------------------------------------------------------------

JB_CMASK, JB_FSCALAR, JB_FOBJECT = 0x0FFFFFFF, 0x10000000, 0x20000000
JENTRY_OFFLENMASK, JENTRY_TYPEMASK, JENTRY_HAS_OFF = 0x0FFFFFFF, 0x70000000, 0x80000000
JENTRY_STRING, JENTRY_NUMERIC, JENTRY_FALSE, JENTRY_TRUE, JENTRY_NULL, JENTRY_CONTAINER = (
    0x00000000, 0x10000000, 0x20000000, 0x30000000, 0x40000000, 0x50000000)


def _intalign(n: int) -> int:
    return (n + 3) & ~3


def jsonb_value(raw: bytes, start: int = 0) -> Any:
    """The JSON value of the container at `start` (numbers as exact text)."""
    (header,) = struct.unpack_from("<I", raw, start)
    count = header & JB_CMASK
    n = count * 2 if header & JB_FOBJECT else count
    children = struct.unpack_from(f"<{n}I", raw, start + 4)
    base = start + 4 + 4 * n
    items = []
    for i in range(n):
        off = 0
        for j in range(i - 1, -1, -1):
            off += children[j] & JENTRY_OFFLENMASK
            if children[j] & JENTRY_HAS_OFF:
                break
        ln = children[i] & JENTRY_OFFLENMASK
        if children[i] & JENTRY_HAS_OFF:
            ln -= off
        items.append(_jsonb_scalar(raw, base, off, ln, children[i] & JENTRY_TYPEMASK))
    if header & JB_FOBJECT:
        return dict(zip(items[:count], items[count:], strict=True))
    return items[0] if header & JB_FSCALAR else items


class _Number(str):
    """A JSON number kept as exact text."""


def _jsonb_scalar(raw: bytes, base: int, off: int, ln: int, kind: int) -> Any:
    if kind == JENTRY_STRING:
        return raw[base + off:base + off + ln].decode()
    if kind == JENTRY_NUMERIC:
        value, _ = varlena(raw, base + _intalign(off), None)
        return _Number(numeric_text(value))
    if kind in (JENTRY_FALSE, JENTRY_TRUE):
        return kind == JENTRY_TRUE
    if kind == JENTRY_NULL:
        return None
    return jsonb_value(raw, base + _intalign(off))


def json_text(v: Any) -> str:
    if isinstance(v, _Number):
        return str(v)
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)}: {json_text(x)}" for k, x in v.items()) + "}"
    if isinstance(v, list):
        return "[" + ", ".join(json_text(x) for x in v) + "]"
    return json.dumps(v)


# -- the conversion ---------------------------------------------------------------------


@dataclass
class Datums:
    types: dict[int, TypeInfo]
    enums: dict[int, str]

    def send(self, typid: int, raw: bytes, what: str = "") -> bytes:
        t = self.types.get(typid)
        if t is None:
            raise RestoreError(f"{what}: unknown type {typid}")
        name = t.send
        if name in _REVERSED:
            return raw[::-1]
        if name in _AS_STORED:
            return raw
        if name == "namesend":
            return raw.split(b"\0", 1)[0]
        if name in _FIELDS:
            out, pos = b"", 0
            for width in _FIELDS[name]:
                out += raw[pos:pos + width][::-1]
                pos += width
            return out
        if name == "enum_send":
            return self.enums[struct.unpack("<I", raw)[0]].encode()
        if name == "numeric_send":
            return numeric_send(raw)
        if name == "jsonb_send":
            return b"\x01" + json_text(jsonb_value(raw)).encode()
        if name == "array_send":
            return self._array(t, raw, what)
        raise RestoreError(f"{what}: values of type {t.name} cannot be read from pages by "
                           "strata history yet")

    def _array(self, t: TypeInfo, raw: bytes, what: str) -> bytes:
        # struct offsets count the 4-byte varlena header `raw` no longer has
        ndim, dataoffset, elemtype = struct.unpack_from("<iiI", raw, 0)
        dims = struct.unpack_from(f"<{ndim}i", raw, 12)
        lbounds = struct.unpack_from(f"<{ndim}i", raw, 12 + 4 * ndim)
        nitems = 1
        for d in dims:
            nitems *= d
        if ndim == 0:
            nitems = 0
        bitmap = 16 + 8 * ndim - 4

        def isnull(i: int) -> bool:
            return bool(dataoffset) and not raw[bitmap + (i >> 3)] & (1 << (i & 7))

        start = (dataoffset or (16 + 8 * ndim + 7) & ~7) - 4
        e = self.types[t.elem]
        values = walk(raw, start, [Attr(0, e.typlen, e.typalign, e.typbyval)] * nitems, isnull,
                      nitems, None, base=-4)
        out = struct.pack(">iiI", ndim, 1 if dataoffset else 0, elemtype)
        out += b"".join(struct.pack(">ii", d, lb) for d, lb in zip(dims, lbounds, strict=True))
        for v in values:
            if v is None:
                out += struct.pack(">i", -1)
            else:
                b = self.send(t.elem, v, what)
                out += struct.pack(">i", len(b)) + b
        return out
