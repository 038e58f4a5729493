"""PostgreSQL frontend/backend protocol v3 (3.0 and 3.2), sans I/O.

What it is: the message values (`Message`, the untyped first packets), parsers
for the fields the proxy looks at, and encoders for every message the proxy
itself writes; `proxy.framing` cuts byte streams into these messages.
Nothing here touches a socket; bytes in, values out, values in, bytes out.

Fed by: `proxy.machine`, `proxy.backend` and `proxy.session`, which get
chunks from sockets (of any size: a message may arrive in many pieces, many
messages in one piece) and frame or walk them.
Feeds: the session state machine (`Message` values) and the sockets (bytes
from the ``encode_*`` helpers).
Owns: the byte layout of the protocol (see PostgreSQL's
``src/backend/libpq/pqcomm.c``, ``src/include/libpq/pqcomm.h`` and the
"Message Formats" chapter of the documentation).

Strings on the wire are NUL-terminated in the client encoding; we decode
UTF-8 with ``surrogateescape`` so that any byte string round-trips.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from strata.errors import ProtocolError

# -- protocol constants -------------------------------------------------------------------
PROTOCOL_3_0 = 3 << 16
PROTOCOL_3_2 = (3 << 16) | 2
SSL_REQUEST_CODE = (1234 << 16) | 5679
GSSENC_REQUEST_CODE = (1234 << 16) | 5680
CANCEL_REQUEST_CODE = (1234 << 16) | 5678

# Largest message we accept (PostgreSQL's PQ_LARGE_MESSAGE_LIMIT is 1 GB - 1).
MAX_MESSAGE_LEN = (1 << 30) - 1
MAX_STARTUP_LEN = 10000  # PostgreSQL's MAX_STARTUP_PACKET_LENGTH
MAX_CANCEL_KEY_LEN = 256  # protocol 3.2: secret key up to 256 bytes

# Authentication request codes (AuthenticationXXX 'R' messages).
AUTH_OK = 0
AUTH_KERBEROS_V5 = 2
AUTH_CLEARTEXT_PASSWORD = 3
AUTH_MD5_PASSWORD = 5
AUTH_GSS = 7
AUTH_GSS_CONTINUE = 8
AUTH_SSPI = 9
AUTH_SASL = 10
AUTH_SASL_CONTINUE = 11
AUTH_SASL_FINAL = 12
# Requests the client answers with a PasswordMessage-family ('p') message.
AUTH_NEEDS_RESPONSE = frozenset(
    {AUTH_CLEARTEXT_PASSWORD, AUTH_MD5_PASSWORD, AUTH_GSS, AUTH_GSS_CONTINUE, AUTH_SSPI,
     AUTH_SASL, AUTH_SASL_CONTINUE}
)

TEXT_OID = 25

_I32 = struct.Struct("!i")
_U32 = struct.Struct("!I")
_I16 = struct.Struct("!h")
_HDR = struct.Struct("!cI")  # type byte + length (length counts itself)
_LEN_CODE = struct.Struct("!II")  # untyped packet: length + code
_CANCEL = struct.Struct("!III")  # length, code, pid (secret follows)
_FIELD = struct.Struct("!IhIhih")  # RowDescription field after the name
# The length word after a message's type byte, for the relay's walkers
# (`proxy.machine`), which read it with ``LENGTH_WORD.unpack_from``.
LENGTH_WORD = _U32
HEADER_SIZE = 5  # type byte + length word


def _cstr(s: str) -> bytes:
    return s.encode("utf-8", "surrogateescape") + b"\x00"


def decode_str(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")


# -- values ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Message:
    """One typed protocol message: `tag` is its type character, `body` the bytes
    after the length word."""

    tag: str
    body: bytes

    def encode(self) -> bytes:
        return _HDR.pack(self.tag.encode("latin-1"), len(self.body) + 4) + self.body


@dataclass(frozen=True, slots=True)
class StartupMessage:
    """The first packet of a session: protocol version and parameters."""

    protocol: int
    params: tuple[tuple[str, str], ...]

    @property
    def major(self) -> int:
        return self.protocol >> 16

    @property
    def minor(self) -> int:
        return self.protocol & 0xFFFF

    def get(self, name: str, default: str | None = None) -> str | None:
        for k, v in self.params:
            if k == name:
                return v
        return default

    def replace(self, updates: Mapping[str, str | None]) -> StartupMessage:
        """A copy with parameters set (value) or removed (None)."""
        out: list[tuple[str, str]] = []
        seen: set[str] = set()
        for k, v in self.params:
            if k in updates:
                seen.add(k)
                nv = updates[k]
                if nv is not None:
                    out.append((k, nv))
            else:
                out.append((k, v))
        for k, nv in updates.items():
            if k not in seen and nv is not None:
                out.append((k, nv))
        return StartupMessage(self.protocol, tuple(out))

    def encode(self) -> bytes:
        body = b"".join(_cstr(k) + _cstr(v) for k, v in self.params) + b"\x00"
        return _LEN_CODE.pack(len(body) + 8, self.protocol) + body


@dataclass(frozen=True, slots=True)
class SSLRequest:
    def encode(self) -> bytes:
        return _LEN_CODE.pack(8, SSL_REQUEST_CODE)


@dataclass(frozen=True, slots=True)
class GSSENCRequest:
    def encode(self) -> bytes:
        return _LEN_CODE.pack(8, GSSENC_REQUEST_CODE)


@dataclass(frozen=True, slots=True)
class CancelRequest:
    """Cancel the query of backend `pid`; `secret` is 4 bytes in protocol 3.0 and
    up to 256 bytes in 3.2."""

    pid: int
    secret: bytes

    def encode(self) -> bytes:
        return _CANCEL.pack(12 + len(self.secret), CANCEL_REQUEST_CODE, self.pid) + self.secret


FirstPacket = StartupMessage | SSLRequest | GSSENCRequest | CancelRequest


@dataclass(frozen=True, slots=True)
class Column:
    """A RowDescription field (text format unless said otherwise)."""

    name: str
    type_oid: int = TEXT_OID
    table_oid: int = 0
    attnum: int = 0
    type_size: int = -1
    type_mod: int = -1
    format: int = 0


def cstr_at(body: bytes, pos: int) -> tuple[bytes, int]:
    """The NUL-terminated string at `pos` of `body`, raw, and the position after it.

    Raises: ProtocolError if it is not terminated.
    """
    end = body.find(b"\x00", pos)
    if end < 0:
        raise ProtocolError("string not NUL-terminated")
    return body[pos:end], end + 1


# -- field readers --------------------------------------------------------------------------
class _Reader:
    __slots__ = ("b", "pos")

    def __init__(self, b: bytes) -> None:
        self.b = b
        self.pos = 0

    def cstr(self) -> str:
        end = self.b.find(b"\x00", self.pos)
        if end < 0:
            raise ProtocolError("string not NUL-terminated")
        s = decode_str(self.b[self.pos:end])
        self.pos = end + 1
        return s

    def i16(self) -> int:
        if self.pos + 2 > len(self.b):
            raise ProtocolError("message too short")
        (v,) = _I16.unpack_from(self.b, self.pos)
        self.pos += 2
        return int(v)

    def i32(self) -> int:
        if self.pos + 4 > len(self.b):
            raise ProtocolError("message too short")
        (v,) = _I32.unpack_from(self.b, self.pos)
        self.pos += 4
        return int(v)

    def u32(self) -> int:
        if self.pos + 4 > len(self.b):
            raise ProtocolError("message too short")
        (v,) = _U32.unpack_from(self.b, self.pos)
        self.pos += 4
        return int(v)

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.b):
            raise ProtocolError("message too short")
        v = self.b[self.pos:self.pos + n]
        self.pos += n
        return v


def parse_query(body: bytes) -> str:
    """Query ('Q'): the SQL text."""
    return _Reader(body).cstr()


@dataclass(frozen=True, slots=True)
class ParseMsg:
    name: str
    query: str
    param_types: tuple[int, ...]


def parse_parse(body: bytes) -> ParseMsg:
    r = _Reader(body)
    name = r.cstr()
    query = r.cstr()
    n = r.i16()
    return ParseMsg(name, query, tuple(r.u32() for _ in range(n)))


def parse_bind_names(body: bytes) -> tuple[str, str]:
    """Bind ('B'): (portal, statement); the rest is relayed untouched."""
    r = _Reader(body)
    return r.cstr(), r.cstr()


def parse_describe(body: bytes) -> tuple[str, str]:
    """Describe/Close ('D'/'C' from the client): (kind 'S'|'P', name)."""
    if not body:
        raise ProtocolError("empty Describe/Close message")
    kind = chr(body[0])
    if kind not in "SP":
        raise ProtocolError(f"Describe/Close kind {kind!r} is neither 'S' nor 'P'")
    r = _Reader(body)
    r.pos = 1
    return kind, r.cstr()


def parse_execute(body: bytes) -> tuple[str, int]:
    r = _Reader(body)
    return r.cstr(), r.i32()


def parse_error_fields(body: bytes) -> dict[str, str]:
    """ErrorResponse/NoticeResponse: field code -> value ('S', 'V', 'C', 'M', ...)."""
    fields: dict[str, str] = {}
    r = _Reader(body)
    while r.pos < len(body):
        code = chr(body[r.pos])
        r.pos += 1
        if code == "\x00":
            break
        fields[code] = r.cstr()
    return fields


def parse_authentication(body: bytes) -> tuple[int, bytes]:
    """Authentication ('R'): (request code, request-specific data)."""
    r = _Reader(body)
    return r.i32(), body[4:]


def parse_sasl_mechanisms(data: bytes) -> list[str]:
    return [decode_str(p) for p in data.split(b"\x00") if p]


def parse_parameter_status(body: bytes) -> tuple[str, str]:
    r = _Reader(body)
    return r.cstr(), r.cstr()


def parse_backend_key_data(body: bytes) -> tuple[int, bytes]:
    """BackendKeyData ('K'): (pid, secret); 3.2 secrets are 4..256 bytes."""
    if len(body) < 8 or len(body) - 4 > MAX_CANCEL_KEY_LEN:
        raise ProtocolError(f"invalid BackendKeyData length {len(body)}")
    (pid,) = _U32.unpack_from(body, 0)
    return pid, body[4:]


def parse_ready_for_query(body: bytes) -> str:
    if len(body) != 1 or body not in (b"I", b"T", b"E"):
        raise ProtocolError(f"invalid ReadyForQuery status {body!r}")
    return chr(body[0])


def parse_negotiate_protocol_version(body: bytes) -> tuple[int, list[str]]:
    """NegotiateProtocolVersion ('v'): (newest minor supported, unrecognized options)."""
    r = _Reader(body)
    minor = r.i32()
    n = r.i32()
    return minor, [r.cstr() for _ in range(n)]


def parse_row_description(body: bytes) -> list[Column]:
    r = _Reader(body)
    out: list[Column] = []
    for _ in range(r.i16()):
        name = r.cstr()
        table_oid, attnum, type_oid, size, mod, fmt = _FIELD.unpack(r.take(_FIELD.size))
        out.append(Column(name, type_oid, table_oid, attnum, size, mod, fmt))
    return out


def parse_data_row(body: bytes) -> list[bytes | None]:
    r = _Reader(body)
    out: list[bytes | None] = []
    for _ in range(r.i16()):
        n = r.i32()
        out.append(None if n < 0 else r.take(n))
    return out


def parse_command_complete(body: bytes) -> str:
    return _Reader(body).cstr()


# -- encoders -------------------------------------------------------------------------------
def _msg(tag: bytes, body: bytes) -> bytes:
    return _HDR.pack(tag, len(body) + 4) + body


def encode_query(sql: str) -> bytes:
    return _msg(b"Q", _cstr(sql))


def encode_parse(name: str, query: str, param_types: Sequence[int] = ()) -> bytes:
    body = _cstr(name) + _cstr(query) + _I16.pack(len(param_types))
    body += b"".join(_U32.pack(t) for t in param_types)
    return _msg(b"P", body)


def encode_bind(portal: str, statement: str, params: Sequence[str | None] = ()) -> bytes:
    """Bind with text parameters and text results."""
    parts = [_cstr(portal), _cstr(statement), _I16.pack(0), _I16.pack(len(params))]
    for p in params:
        if p is None:
            parts.append(_I32.pack(-1))
        else:
            b = p.encode("utf-8", "surrogateescape")
            parts.append(_I32.pack(len(b)) + b)
    parts.append(_I16.pack(0))
    return _msg(b"B", b"".join(parts))


def encode_describe(kind: str, name: str) -> bytes:
    return _msg(b"D", kind.encode("ascii") + _cstr(name))


def encode_execute(portal: str, max_rows: int = 0) -> bytes:
    return _msg(b"E", _cstr(portal) + _I32.pack(max_rows))


def encode_close(kind: str, name: str) -> bytes:
    return _msg(b"C", kind.encode("ascii") + _cstr(name))


def encode_sync() -> bytes:
    return b"S\x00\x00\x00\x04"


def encode_flush() -> bytes:
    return b"H\x00\x00\x00\x04"


def encode_terminate() -> bytes:
    return b"X\x00\x00\x00\x04"


def encode_password(data: bytes) -> bytes:
    """PasswordMessage / SASLInitialResponse / SASLResponse all use tag 'p'."""
    return _msg(b"p", data)


def encode_sasl_initial_response(mechanism: str, data: bytes | None) -> bytes:
    body = _cstr(mechanism) + (_I32.pack(-1) if data is None else _I32.pack(len(data)) + data)
    return _msg(b"p", body)


def encode_copy_data(data: bytes) -> bytes:
    return _msg(b"d", data)


def encode_copy_done() -> bytes:
    return b"c\x00\x00\x00\x04"


def encode_copy_fail(message: str) -> bytes:
    return _msg(b"f", _cstr(message))


def encode_authentication(code: int, data: bytes = b"") -> bytes:
    return _msg(b"R", _I32.pack(code) + data)


def encode_parameter_status(name: str, value: str) -> bytes:
    return _msg(b"S", _cstr(name) + _cstr(value))


def encode_backend_key_data(pid: int, secret: bytes) -> bytes:
    return _msg(b"K", _U32.pack(pid) + secret)


def encode_ready_for_query(status: str) -> bytes:
    return _msg(b"Z", status.encode("ascii"))


def encode_negotiate_protocol_version(minor: int, unrecognized: Sequence[str] = ()) -> bytes:
    body = _I32.pack(minor) + _I32.pack(len(unrecognized)) + b"".join(_cstr(o) for o in unrecognized)
    return _msg(b"v", body)


def _fields(fields: Mapping[str, str]) -> bytes:
    return b"".join(code.encode("ascii") + _cstr(v) for code, v in fields.items()) + b"\x00"


def encode_error(fields: Mapping[str, str]) -> bytes:
    return _msg(b"E", _fields(fields))


def encode_notice(fields: Mapping[str, str]) -> bytes:
    return _msg(b"N", _fields(fields))


def error_fields(sqlstate: str, message: str, *, severity: str = "ERROR",
                 detail: str | None = None, hint: str | None = None) -> dict[str, str]:
    """The field set of an ErrorResponse/NoticeResponse the proxy writes itself."""
    f = {"S": severity, "V": severity, "C": sqlstate, "M": message}
    if detail:
        f["D"] = detail
    if hint:
        f["H"] = hint
    return f


def encode_row_description(columns: Iterable[Column]) -> bytes:
    cols = list(columns)
    parts = [_I16.pack(len(cols))]
    for c in cols:
        parts.append(_cstr(c.name) + _FIELD.pack(c.table_oid, c.attnum, c.type_oid,
                                                 c.type_size, c.type_mod, c.format))
    return _msg(b"T", b"".join(parts))


def encode_data_row(values: Sequence[str | bytes | None]) -> bytes:
    parts = [_I16.pack(len(values))]
    for v in values:
        if v is None:
            parts.append(_I32.pack(-1))
        else:
            b = v if isinstance(v, bytes) else v.encode("utf-8", "surrogateescape")
            parts.append(_I32.pack(len(b)) + b)
    return _msg(b"D", b"".join(parts))


def encode_command_complete(tag: str) -> bytes:
    return _msg(b"C", _cstr(tag))


def encode_parameter_description(type_oids: Sequence[int] = ()) -> bytes:
    return _msg(b"t", _I16.pack(len(type_oids)) + b"".join(_U32.pack(t) for t in type_oids))


PARSE_COMPLETE = b"1\x00\x00\x00\x04"
BIND_COMPLETE = b"2\x00\x00\x00\x04"
CLOSE_COMPLETE = b"3\x00\x00\x00\x04"
NO_DATA = b"n\x00\x00\x00\x04"
EMPTY_QUERY_RESPONSE = b"I\x00\x00\x00\x04"
