"""What never reaches a client: where the historical servers are.

What it is: `Scrubber`, which hides a historical server's address (its host
and port, or its socket directory and socket path) in texts, and
`scrub_paths`, which hides absolute file-system paths (instance directories
in the history provider's errors).
Fed by: `proxy.travel` (one scrubber per historical connection, and the
texts of the errors the proxy reports about historical servers).
Feeds: `machine.ServerState.scrub` (every ErrorResponse/NoticeResponse a
historical server sends the client) and the proxy's own errors.
Owns: the rule: clients only ever reach historical servers through the
proxy, so nothing in what they receive may tell where those servers listen
(or where their files are) — the same whether the text comes from the
server, from the history provider or from the proxy itself.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from strata.proxy import messages as m
from strata.proxy.backend import socket_path

HIDDEN = "[hidden]"
# An absolute path of two or more components (a socket, a data directory);
# "0/16B3748" (an LSN) is not one: a path starts after a space, quote or '('.
_PATH = re.compile(r"(?<![\w./])/(?:[\w.+@-]+/)+[\w.+@-]*")


_NOT_TEXT = frozenset("CSVPpL")
# Any PostgreSQL socket path, whatever the server (its directory alone is only
# known, and hidden, for the server the proxy reaches by that socket).
_ANY_SOCKET = r"[^\s'\"]*/\.s\.PGSQL\.\d+"


def scrub_paths(text: str) -> str:
    """`text` with absolute paths hidden (for errors of the history provider,
    which may name instance directories)."""
    return _PATH.sub(HIDDEN, text)


class Scrubber:
    """Hides one server's address in texts and in error/notice bodies."""

    def __init__(self, host: str, port: int) -> None:
        words = []
        path = socket_path(host, port)
        if path is not None:
            words += [path, host.rstrip("/")]
        else:
            words += [f"{host}:{port}", f"[{host}]:{port}", host]
        alternatives = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
        self._rx = re.compile(rf"{_ANY_SOCKET}|{alternatives}|(?<!\d){port}(?!\d)")

    def text(self, s: str) -> str:
        return self._rx.sub(HIDDEN, s)

    def fields(self, fields: Mapping[str, str]) -> dict[str, str]:
        """Every text field scrubbed (not the SQLSTATE, severities, positions, line)."""
        return {k: v if k in _NOT_TEXT else self.text(v) for k, v in fields.items()}

    def body(self, body: bytes) -> bytes:
        """An ErrorResponse/NoticeResponse body, scrubbed (the same object when
        nothing had to change)."""
        fields = m.parse_error_fields(body)
        clean = self.fields(fields)
        if clean == fields:
            return body
        return m.encode_error(clean)[m.HEADER_SIZE:]
