"""The session's protocol state machine, without I/O: bytes in, bytes and actions out.

What it is:
- `ServerState`: what one server connection still owes the session (one
  `Expect` per forwarded client message), its transaction status, and which
  of its bytes reach the client. `feed(chunk)` returns the bytes to write to
  the client.
- `ClientMachine`: takes the client's bytes, classifies each message once,
  through one tag -> handler table, and returns the bytes to forward to the
  current server, or an `Action` when the proxy must answer a message itself
  (a strata statement, Terminate). The bytes after that message wait in the
  machine until the driver has run the action and feeds again.
Fed by: `proxy.session` and `proxy.backend`, with chunks as sockets deliver
them (of any size: a message may come in many pieces, many in one piece).
Feeds: the same, with bytes to write and `Action` values to run.
Owns: the relay rules, which do as little as the protocol allows:
- server -> client, the live fast path: a chunk is walked message by message
  (length words only; DataRows are stepped over, even across chunks, never
  buffered) to keep the expectations and the transaction status, and the
  chunk itself is written on. Anything else (the proxy's own queries,
  replies it must hide, historical servers whose errors are scrubbed, a
  partial message the proxy must read) goes through a `Framer`, message by
  message, until the stream is back at a message boundary;
- client -> server: every message is framed, but only Query and Parse
  bodies are looked at (`statements.maybe_ours`, then one pglast parse);
  Bind/Describe/Execute/Close only compare names when the client has strata
  statements prepared; CopyData and the like are stepped over, even when
  partial. A chunk whose messages are all relayed unchanged is forwarded
  as it came.

Expected responses, per forwarded client message: Parse -> '1', Bind -> '2',
Describe -> ('t') 'T'|'n', Execute -> ... 'C'|'I'|'s', Close -> '3',
Sync/Query/FunctionCall -> ... 'Z'. An ErrorResponse in extended mode ends
the failing message and makes the server skip every message up to the next
Sync: those expectations are dropped at once.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from strata.errors import ProtocolError
from strata.proxy import framing
from strata.proxy import messages as m
from strata.proxy.statements import (
    BadTravelValue,
    Kind,
    Statement,
    classify_single,
    maybe_ours,
    split_statements,
)

# Expectation kinds (one character each, mirroring the client message tags).
EXP_PARSE = "P"
EXP_BIND = "B"
EXP_DESCRIBE = "D"
EXP_EXECUTE = "E"
EXP_CLOSE = "C"
EXP_SYNC = "S"  # Sync, simple Query and FunctionCall: all end with ReadyForQuery
SYNC_LIKE = frozenset("SQF")

_unpack_len = m.LENGTH_WORD.unpack_from
_HDR = m.HEADER_SIZE
_D = ord("D")  # DataRow (server) / Describe (client)
_E = ord("E")
_N = ord("N")
_Z = ord("Z")


@dataclass(slots=True, eq=False)
class Expect:
    """A response the server owes us.

    `swallow`: the message was injected by the proxy (re-preparing a statement
    on another server); its reply is not shown to the client.
    `hide_ready`: for a proxy-issued simple Query inside a multi-statement
    string: ReadyForQuery is not forwarded but reported through `done`
    (status, whether an error came first).
    """

    kind: str
    swallow: bool = False
    hide_ready: bool = False
    errored: bool = False
    done: Callable[[str, bool], None] | None = None
    special: bool = field(init=False)  # not a plain reply to relay

    def __post_init__(self) -> None:
        self.special = self.swallow or self.hide_ready or self.done is not None


# The ordinary expectations, shared: they carry no state of their own.
_PLAIN = {k: Expect(k) for k in (EXP_PARSE, EXP_BIND, EXP_DESCRIBE, EXP_EXECUTE, EXP_CLOSE,
                                 EXP_SYNC)}
_SYNC = _PLAIN[EXP_SYNC]


class ServerState:
    """One server connection's side of the session (see the module docstring).

    `internal`, while set, receives every message instead of the client (the
    proxy's own queries). `scrub`, when set, rewrites the body of every
    ErrorResponse/NoticeResponse that reaches the client (historical servers).
    """

    def __init__(self, *, scrub: Callable[[bytes], bytes] | None = None) -> None:
        self.expect: deque[Expect] = deque()
        self.syncs_pending = 0
        self.special = 0  # expectations in `expect` with swallow/hide_ready/done
        # True after an extended-protocol error until the next ReadyForQuery:
        # the server ignores every message up to the next Sync.
        self.skipping = False
        self.unsynced = False  # extended messages sent since the last Sync
        self.status = "I"  # transaction status from the last ReadyForQuery
        # statement name -> the Parse body this server has prepared under it
        self.prepared: dict[bytes, bytes] = {}
        self.internal: Callable[[m.Message], None] | None = None
        self.scrub = scrub
        self._framer = framing.Framer()
        self._partial = False  # the framer holds part of a message
        self._skip = 0  # bytes of a DataRow still to pass through (fast path)
        # what each reply does to the books (ReadyForQuery apart: it has a body to read)
        h = self._on_complete
        self._handlers: dict[int, Callable[[], bool]] = {
            ord("1"): h, ord("2"): h, ord("3"): h,
            ord("T"): self._on_described, ord("n"): self._on_described,
            ord("C"): self._on_executed, ord("I"): self._on_executed,
            ord("s"): self._on_executed, _E: self._on_error,
        }

    # -- expectations ------------------------------------------------------------------
    @property
    def idle(self) -> bool:
        """The server answered everything sent to it."""
        return not self.expect

    def will_answer(self) -> bool:
        """Whether a message forwarded now gets a response (False while the
        server skips to the next Sync and no Sync has been sent yet)."""
        return not (self.skipping and self.syncs_pending == 0)

    def push(self, exp: Expect | str) -> None:
        """Record a response owed for a message sent now (a kind for the
        ordinary ones)."""
        e = _PLAIN[exp] if exp.__class__ is str else exp  # type: ignore[index]
        assert isinstance(e, Expect)
        if e.kind in SYNC_LIKE:
            self.syncs_pending += 1
        elif self.skipping and self.syncs_pending == 0:
            return  # the server skips it: no answer comes
        self.expect.append(e)
        if e.special:
            self.special += 1

    def push_sync(self) -> None:
        """`push(EXP_SYNC)` for the hot path (simple Query, Sync)."""
        self.syncs_pending += 1
        self.expect.append(_SYNC)

    def _pop(self) -> Expect | None:
        if not self.expect:
            return None
        e = self.expect.popleft()
        if e.kind in SYNC_LIKE:
            self.syncs_pending -= 1
        if e.special:
            self.special -= 1
        return e

    def reset(self) -> None:
        """The connection is gone: nothing is owed any more."""
        self.expect.clear()
        self.syncs_pending = self.special = 0

    # -- server messages ---------------------------------------------------------------
    def _on_complete(self) -> bool:  # ParseComplete, BindComplete, CloseComplete
        e = self._pop()
        return not (e is not None and e.swallow)

    def _on_described(self) -> bool:  # RowDescription, NoData
        if self.expect and self.expect[0].kind == EXP_DESCRIBE:
            self._pop()
        return True

    def _on_executed(self) -> bool:  # CommandComplete, EmptyQuery, PortalSuspended
        if self.expect and self.expect[0].kind == EXP_EXECUTE:
            self._pop()
        return True

    def _on_error(self) -> bool:
        exp = self.expect[0] if self.expect else None
        if exp is None or exp.kind in SYNC_LIKE:
            # inside a simple Query (or at Sync): no skipping follows
            if exp is not None and exp.special:
                exp.errored = True
        else:
            # extended protocol: the server now skips to the next Sync
            while self.expect and self.expect[0].kind not in SYNC_LIKE:
                self._pop()
            self.skipping = True
        return True

    def _on_ready(self, body: bytes) -> bool:
        if len(body) != 1 or body not in b"ITE":
            raise ProtocolError(f"invalid ReadyForQuery status {body!r}")
        exp = None
        while self.expect:
            e = self._pop()
            assert e is not None
            if e.kind in SYNC_LIKE:
                exp = e
                break
        self.status = chr(body[0])
        self.skipping = False
        if self.syncs_pending == 0:
            self.unsynced = False
        if exp is not None and exp.special:
            if exp.hide_ready:
                if exp.done is not None:
                    exp.done(self.status, exp.errored)
                return False
            return not exp.swallow
        return True

    # -- the relay ---------------------------------------------------------------------
    def feed(self, data: bytes) -> bytes:
        """Take a chunk from the server; returns the bytes for the client."""
        if self.internal is None and not self.special and self.scrub is None:
            if not self._partial:
                return self._walk(data)
        elif self._skip:
            # the rest of a DataRow that started on the fast path
            k = min(self._skip, len(data))
            self._skip -= k
            return data[:k] + self._frame(data[k:]) if k < len(data) else data
        return self._frame(data)

    def _walk(self, data: bytes) -> bytes:
        """The fast path: keep the books, pass the chunk on as it is.

        While the server answers a simple Query or a Sync (the first reply
        owed is sync-like), only ErrorResponse and ReadyForQuery change the
        books: the other replies are stepped over like DataRows.
        """
        n = len(data)
        pos = self._skip
        if pos >= n:
            self._skip = pos - n
            return data
        self._skip = 0
        handlers = self._handlers
        expect = self.expect
        sync_front = not expect or expect[0].kind in SYNC_LIKE
        while n - pos >= _HDR:
            tag = data[pos]
            (length,) = _unpack_len(data, pos + 1)
            if length < 4:
                raise ProtocolError(f"invalid message length {length} for message type {chr(tag)!r}")
            end = pos + 1 + length
            if tag == _D:
                if end > n:  # a DataRow continues in the next chunks
                    self._skip = end - n
                    return data
                pos = end
                continue
            if end > n:
                break
            if tag == _Z:
                self._on_ready(data[pos + _HDR:end])
                sync_front = not expect or expect[0].kind in SYNC_LIKE
            elif not sync_front or tag == _E:
                h = handlers.get(tag)
                if h is not None:
                    h()
                    sync_front = not expect or expect[0].kind in SYNC_LIKE
            pos = end
        if pos == n:
            return data
        # a partial message the books need: the framer holds it from here
        return data[:pos] + self._frame(data[pos:])

    def _frame(self, data: bytes) -> bytes:
        """Message by message: the proxy's own queries, hidden replies, scrubbing."""
        msgs = self._framer.feed(data)
        self._partial = self._framer.buffered > 0
        changed = not self._framer.exact
        out = bytearray()
        for msg in msgs:
            if self.internal is not None:
                self.internal(msg)
                changed = True
                continue
            tag = ord(msg.tag)
            if tag == _Z:
                keep = self._on_ready(msg.body)
            else:
                h = self._handlers.get(tag)
                keep = h() if h is not None else True
            if not keep:
                changed = True
                continue
            if self.scrub is not None and tag in (_E, _N):
                body = self.scrub(msg.body)
                if body != msg.body:
                    out += m.Message(msg.tag, body).encode()
                    changed = True
                    continue
            out += msg.encode()
        return bytes(out) if changed else data


@dataclass(frozen=True, slots=True)
class Action:
    """A client message the proxy answers itself, with what it was classified as.

    `tag`: the message type ('Q', 'P', 'B', 'D', 'E', 'C' or 'X');
    `name`: the statement (Parse, Describe/Close 'S') or portal name;
    `target`: 'S' or 'P' for Describe/Close;
    `statements`: a Query's statements in order; `statement`: the strata
    statement an extended message concerns; `error`: a Query whose strata
    SET has an unusable value.
    """

    tag: str
    name: bytes = b""
    target: str = ""
    statement: Statement | None = None
    statements: tuple[Statement, ...] = ()
    error: str | None = None


TERMINATE = Action("X")


class ClientMachine:
    """The client -> server direction of a session (see the module docstring).

    `server` is the state of the server the session talks to now; the driver
    switches it (`switch`). Statement names are kept as raw bytes.
    """

    def __init__(self, server: ServerState) -> None:
        self.server = server
        # the session has talked to another server: statements may need
        # preparing again where a Bind/Describe goes
        self.moved = False
        # statement name -> the Parse body the client prepared under it
        self.prepared: dict[bytes, bytes] = {}
        self.strata_stmts: dict[bytes, Statement] = {}
        self.strata_portals: dict[bytes, Statement] = {}
        self._held = bytearray()  # bytes not yet processed (after an action, a partial message)
        self._skip = 0  # bytes of a relayed message still to pass through
        self._inject = bytearray()  # proxy messages to send before the current one
        self._table: dict[int, Callable[[bytes], Action | None]] = {
            ord("Q"): self._query, ord("P"): self._parse, ord("B"): self._bind,
            ord("E"): self._execute, _D: self._describe, ord("C"): self._close,
            ord("S"): self._sync, ord("F"): self._sync, ord("X"): self._terminate,
        }

    def hold(self, data: bytes) -> None:
        """Keep client bytes that arrive while an action runs (for the next `feed`)."""
        self._held += data

    def feed(self, data: bytes) -> tuple[bytes, Action | None]:
        """Take client bytes (b"" to go on after an action).

        Returns: the bytes to write to the current server now, and the action
        the proxy must run next (None: everything was relayed). After an
        action, call `feed` again once it has run.
        Raises: ProtocolError on a malformed message.
        """
        if self._held:
            self._held += data
            data = bytes(self._held)
            self._held.clear()
        n = len(data)
        pos = min(self._skip, n)  # the rest of a relayed message passes through
        self._skip -= pos
        out: bytearray | None = None
        start = 0  # start of the run of bytes forwarded as they came
        table = self._table
        action: Action | None = None
        while n - pos >= _HDR:
            tag = data[pos]
            (length,) = _unpack_len(data, pos + 1)
            if length < 4 or length > m.MAX_MESSAGE_LEN:
                raise ProtocolError(
                    f"invalid message length {length} for message type {chr(tag)!r}")
            end = pos + 1 + length
            h = table.get(tag)
            if h is None:  # relayed, nothing owed: CopyData/Done/Fail, Flush
                if end > n:
                    self._skip = end - n
                    pos = n
                    break
                pos = end
                continue
            if end > n:
                break
            action = h(data[pos + _HDR:end])
            if self._inject:
                if out is None:
                    out = bytearray()
                out += data[start:pos]
                out += self._inject
                self._inject.clear()
                start = pos
            if action is not None:
                self._held += data[end:]  # waits until the action has run
                break
            pos = end
        if action is None and pos < n:
            self._held += data[pos:]  # an incomplete message
        if out is None:
            if start == 0 and pos == n:
                return data, action
            return data[start:pos], action
        out += data[start:pos]
        return bytes(out), action

    # -- the tag table: None relays the message, an Action stops for the proxy ---------
    def _query(self, body: bytes) -> Action | None:
        if maybe_ours(body):
            try:
                stmts = split_statements(m.parse_query(body))
            except BadTravelValue as e:
                return Action("Q", error=str(e))
            if stmts is not None:
                return Action("Q", statements=tuple(stmts))
        # a simple Query destroys the unnamed statement and portal
        srv = self.server
        if srv.prepared:
            srv.prepared.pop(b"", None)
        if self.prepared or self.strata_stmts or self.strata_portals:
            self.forget_unnamed()
        srv.push_sync()
        return None

    def _parse(self, body: bytes) -> Action | None:
        name, pos = m.cstr_at(body, 0)
        if maybe_ours(body):
            query, _ = m.cstr_at(body, pos)
            text = query.decode("utf-8", "surrogateescape")
            try:
                st = classify_single(text)
            except BadTravelValue as e:
                st = Statement(text, Kind.INVALID, value=str(e))
            if st is not None:
                return Action("P", name=name, statement=st)
        self.strata_stmts.pop(name, None)
        self.prepared[name] = body
        srv = self.server
        srv.prepared[name] = body
        srv.unsynced = True
        srv.push(EXP_PARSE)
        return None

    def _bind(self, body: bytes) -> Action | None:
        if self.strata_stmts or self.strata_portals or self.moved:
            portal, pos = m.cstr_at(body, 0)
            stmt, _ = m.cstr_at(body, pos)
            st = self.strata_stmts.get(stmt)
            if st is not None:
                return Action("B", name=portal, statement=st)
            self.strata_portals.pop(portal, None)
            self._ensure_prepared(stmt)
        # else: every statement is prepared where it was parsed; names need no reading
        srv = self.server
        srv.unsynced = True
        srv.push(EXP_BIND)
        return None

    def _execute(self, body: bytes) -> Action | None:
        if self.strata_portals:
            portal, _ = m.cstr_at(body, 0)
            st = self.strata_portals.get(portal)
            if st is not None:
                return Action("E", name=portal, statement=st)
        srv = self.server
        srv.unsynced = True
        srv.push(EXP_EXECUTE)
        return None

    def _target(self, body: bytes) -> tuple[str, bytes, dict[bytes, Statement]]:
        if not body or body[0] not in b"SP":
            raise ProtocolError(f"Describe/Close kind {body[:1]!r} is neither 'S' nor 'P'")
        target = chr(body[0])
        name, _ = m.cstr_at(body, 1)
        return target, name, self.strata_stmts if target == "S" else self.strata_portals

    def _describe(self, body: bytes) -> Action | None:
        target, name, ours = self._target(body)
        if ours and name in ours:
            return Action("D", name=name, target=target, statement=ours[name])
        if target == "S" and self.moved:
            self._ensure_prepared(name)
        srv = self.server
        srv.unsynced = True
        srv.push(EXP_DESCRIBE)
        return None

    def _close(self, body: bytes) -> Action | None:
        target, name, ours = self._target(body)
        if ours and name in ours:
            return Action("C", name=name, target=target, statement=ours[name])
        srv = self.server
        if target == "S":
            self.prepared.pop(name, None)
            srv.prepared.pop(name, None)
        srv.unsynced = True
        srv.push(EXP_CLOSE)
        return None

    def _sync(self, body: bytes) -> Action | None:  # Sync, FunctionCall: up to ReadyForQuery
        self.server.push_sync()
        return None

    def _terminate(self, body: bytes) -> Action | None:
        return TERMINATE

    # -- bookkeeping -----------------------------------------------------------------
    def switch(self, server: ServerState) -> None:
        """The session talks to `server` from now on."""
        if server is not self.server:
            self.moved = True
            self.server = server

    def forget_unnamed(self) -> None:
        self.server.prepared.pop(b"", None)
        self.prepared.pop(b"", None)
        if self.strata_stmts:
            self.strata_stmts.pop(b"", None)
        if self.strata_portals:
            self.strata_portals.pop(b"", None)

    def forget_all_prepared(self, *servers: ServerState) -> None:
        self.prepared.clear()
        self.strata_stmts.clear()
        self.strata_portals.clear()
        for srv in servers:
            srv.prepared.clear()

    def _ensure_prepared(self, name: bytes) -> None:
        """Prepare statement `name` on the current server if the client prepared
        it on another one (or differently); the server's replies are swallowed."""
        want = self.prepared.get(name)
        srv = self.server
        if want is None or srv.prepared.get(name) == want:
            return
        if name and name in srv.prepared:
            srv.push(Expect(EXP_CLOSE, swallow=True))
            self._inject += m.encode_close("S", name.decode("utf-8", "surrogateescape"))
        srv.push(Expect(EXP_PARSE, swallow=True))
        self._inject += m.Message("P", want).encode()
        srv.prepared[name] = want
        srv.unsynced = True
