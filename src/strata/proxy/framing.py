"""Framing of the PostgreSQL protocol v3, sans I/O: bytes in, messages out.

What it is: `Framer`, an incremental splitter of a typed message stream, and
`StartupFramer` / `decode_first_packet` for the untyped first packet (startup,
SSL/GSS/cancel request). Fed by: `proxy.machine`, `proxy.backend` and
`proxy.session`, with chunks of any size from sockets (a message may arrive in
many pieces, many messages in one piece). Feeds: them, `proxy.messages`
values. Owns: nothing but the buffered tails.
"""

from __future__ import annotations

import struct

from strata.errors import ProtocolError
from strata.proxy.messages import (
    CANCEL_REQUEST_CODE,
    GSSENC_REQUEST_CODE,
    MAX_CANCEL_KEY_LEN,
    MAX_MESSAGE_LEN,
    MAX_STARTUP_LEN,
    SSL_REQUEST_CODE,
    CancelRequest,
    FirstPacket,
    GSSENCRequest,
    Message,
    SSLRequest,
    StartupMessage,
    decode_str,
)

_U32 = struct.Struct("!I")
_LEN_CODE = struct.Struct("!II")  # untyped packet: length + code


class Framer:
    """Incremental splitter of a typed message stream.

    Invariant: `feed` accepts any split of the stream (one byte at a time
    included) and returns each complete message exactly once, in order;
    incomplete tails stay buffered.
    Raises: ProtocolError on a length word below 4 or above `max_len`.
    """

    __slots__ = ("_buf", "_max_len", "exact")

    def __init__(self, max_len: int = MAX_MESSAGE_LEN) -> None:
        self._buf = bytearray()
        self._max_len = max_len
        # True when the last `feed` got whole messages only (nothing carried in
        # or out): the chunk can then be relayed as is, without re-encoding.
        self.exact = False

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def take_buffered(self) -> bytes:
        """The incomplete tail held so far (the framer is empty afterwards)."""
        tail = bytes(self._buf)
        self._buf.clear()
        return tail

    def feed(self, data: bytes) -> list[Message]:
        carried = bool(self._buf)
        if carried:
            self._buf += data
            buf: bytes | bytearray = self._buf
        else:
            buf = data  # common case: parse the chunk itself, no copy
        out: list[Message] = []
        pos = 0
        n = len(buf)
        unpack = _U32.unpack_from
        while n - pos >= 5:
            (length,) = unpack(buf, pos + 1)
            if length < 4 or length > self._max_len:
                raise ProtocolError(
                    f"invalid message length {length} for message type {chr(buf[pos])!r}")
            end = pos + 1 + length
            if end > n:
                break
            out.append(Message(chr(buf[pos]), bytes(buf[pos + 5:end])))
            pos = end
        if carried:
            del self._buf[:pos]
        elif pos < n:
            self._buf += data[pos:]
        self.exact = not carried and pos == n
        return out


class StartupFramer:
    """Collects the untyped first packet (startup, SSL/GSS/cancel request).

    `feed` returns the decoded packet once complete, else None; bytes after it
    (a TLS ClientHello never follows in the same read, but a careless client
    may pipeline) are kept in `rest`.
    """

    __slots__ = ("_buf", "rest")

    def __init__(self) -> None:
        self._buf = bytearray()
        self.rest = b""

    def feed(self, data: bytes) -> FirstPacket | None:
        self._buf += data
        if len(self._buf) < 8:
            return None
        (length,) = _U32.unpack_from(self._buf, 0)
        if length < 8 or length > MAX_STARTUP_LEN:
            raise ProtocolError(f"invalid startup packet length {length}")
        if len(self._buf) < length:
            return None
        packet = bytes(self._buf[:length])
        self.rest = bytes(self._buf[length:])
        self._buf.clear()
        return decode_first_packet(packet)


def decode_first_packet(packet: bytes) -> FirstPacket:
    """Decode a whole untyped packet (length word included)."""
    length, code = _LEN_CODE.unpack_from(packet, 0)
    if length != len(packet):
        raise ProtocolError(f"startup packet length {length} but {len(packet)} bytes")
    if code == SSL_REQUEST_CODE:
        return SSLRequest()
    if code == GSSENC_REQUEST_CODE:
        return GSSENCRequest()
    if code == CANCEL_REQUEST_CODE:
        if length < 16 or length - 12 > MAX_CANCEL_KEY_LEN:
            raise ProtocolError(f"invalid cancel request length {length}")
        (pid,) = _U32.unpack_from(packet, 8)
        return CancelRequest(pid, packet[12:])
    if code >> 16 != 3:
        raise ProtocolError(f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}")
    parts = packet[8:].split(b"\x00")
    # body is name\0value\0...\0 : after splitting, the last two parts are empty
    if len(parts) < 2 or parts[-1] != b"" or parts[-2] != b"" or len(parts) % 2 != 0:
        raise ProtocolError("malformed startup packet: parameters not NUL-terminated pairs")
    items = parts[:-2]
    params = tuple((decode_str(items[i]), decode_str(items[i + 1])) for i in range(0, len(items), 2))
    return StartupMessage(code, params)
