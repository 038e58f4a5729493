"""pg_dump's plain-text script, read as entries; names in it renamed.

What it is: `Dump`, a streaming reader of the script pg_dump writes
(``--format=plain``) that yields one `Entry` per archive TOC entry (its
header, its SQL statements, or its COPY statement and data), and `Renamer`,
which rewrites qualified names in one statement token by token with
PostgreSQL's own scanner (pglast), so quoting, literals, dollar-quoted bodies
and comments are understood exactly as the server would.
Fed by: pg_dump's stdout (`restore.restore`). Feeds: `restore.apply`.
Owns: the reading rules below (they follow pg_backup_archiver.c).

Reading rules
- An entry starts at pg_dump's header comment, three lines::

      --
      -- Name: N; Type: T; Schema: S; Owner: O        (or "-- Data for Name: ...")
      --

  The text before the first header is the preamble (its SET statements).
- Lines starting with a backslash between statements are psql meta-commands
  (``\\restrict``, ``\\unrestrict``, ``\\connect``); they are dropped: the
  caller opens its own connections.
- In an entry, a line ``COPY ... FROM stdin;`` starts COPY text data, which
  ends at the line ``\\.``. No data line is ``\\.``: COPY text format escapes
  every backslash. Data is passed on in chunks, never parsed.
- Statements are split by the scanner; a statement keeps no trailing ``;``.
- The script is complete only if its last comment is pg_dump's "database
  dump complete" trailer (`Dump.complete`): a truncated script is never
  applied.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from pglast import parser

from strata.errors import RestoreError

_HEADER = re.compile(
    r"^-- (?P<data>Data for )?Name: (?P<name>.*); Type: (?P<type>[A-Z ]+?); "
    r"Schema: (?P<schema>.*?); Owner: (?P<owner>.*?)(?:; Tablespace: .*)?$")
_COPY = re.compile(r"^COPY .* FROM stdin;$")
_TRAILER = "-- PostgreSQL database dump complete"
_END_OF_DATA = b"\n\\.\n"


@dataclass(frozen=True, slots=True)
class TocHeader:
    """The header comment of one entry (``Schema``/``Owner`` are ``-`` or empty
    when the object has none)."""

    name: str
    type: str
    schema: str
    owner: str
    data: bool = False

    def describe(self) -> str:
        where = f"{self.schema}." if self.schema not in ("", "-") else ""
        return f"{self.type} {where}{self.name}"


PREAMBLE = TocHeader("", "PREAMBLE", "-", "")


@dataclass(slots=True)
class Entry:
    """One TOC entry: `statements` (SQL without trailing semicolons), or, for
    table data, `copy` (the COPY statement) and `data` (its text-format rows,
    in chunks; it must be consumed before the next entry is read)."""

    header: TocHeader
    statements: list[str] = field(default_factory=list)
    copy: str | None = None
    data: Iterator[bytes] | None = None


_COMMENTS = frozenset({"SQL_COMMENT", "C_COMMENT"})


def tokens(sql: str) -> list[parser.Token]:
    """PostgreSQL's scanner over `sql`, comments left out."""
    return [t for t in parser.scan(sql) if t.name not in _COMMENTS]


def split_statements(text: str) -> list[str]:
    """The statements of `text`, each without its leading comments or ``;``."""
    out = []
    for sl in parser.split(text, with_parser=False, only_slices=True):
        stmt = text[sl]
        toks = tokens(stmt)
        if toks:
            out.append(stmt[toks[0].start:].rstrip())
    return out


class _Stream:
    """Bytes from an iterator of chunks, read as lines or as COPY data."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._it = chunks
        self._buf = bytearray()
        self._eof = False

    def _fill(self) -> bool:
        if self._eof:
            return False
        for chunk in self._it:
            if chunk:
                self._buf += chunk
                return True
        self._eof = True
        return False

    def readline(self) -> str | None:
        """The next line with its newline (the last may lack one), None at the end."""
        start = 0
        while True:
            i = self._buf.find(b"\n", start)
            if i >= 0:
                line = bytes(self._buf[:i + 1])
                del self._buf[:i + 1]
                return line.decode("utf-8")
            start = len(self._buf)
            if not self._fill():
                if not self._buf:
                    return None
                line = bytes(self._buf)
                self._buf.clear()
                return line.decode("utf-8")

    def copy_data(self, what: str) -> Iterator[bytes]:
        """COPY text data up to its ``\\.`` line (consumed, not yielded)."""
        while len(self._buf) < 3 and self._fill():
            pass
        if self._buf.startswith(b"\\.\n"):
            del self._buf[:3]
            return
        while True:
            i = self._buf.find(_END_OF_DATA)
            if i >= 0:
                yield bytes(self._buf[:i + 1])
                del self._buf[:i + len(_END_OF_DATA)]
                return
            if len(self._buf) > 3:
                # keep a tail that may be the start of the end marker
                yield bytes(self._buf[:-3])
                del self._buf[:-3]
            if not self._fill():
                raise RestoreError(f"pg_dump's output ended inside the data of {what}")


class Dump:
    """The entries of one script, in order (`entries()`), and whether it was
    complete (`complete`, known once every entry was read)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._s = _Stream(chunks)
        self.complete = False

    def entries(self) -> Iterator[Entry]:
        s = self._s
        header = PREAMBLE
        text: list[str] = []
        pending: list[str] = []  # lookahead lines of a possible header
        while True:
            line = pending.pop(0) if pending else s.readline()
            if line is None:
                break
            stripped = line.rstrip("\n")
            if stripped == "--":
                nxt = s.readline()
                m = _HEADER.match(nxt.rstrip("\n")) if nxt is not None else None
                if m is None:
                    text.append(line)
                    if nxt is not None:
                        pending.append(nxt)
                    continue
                s.readline()  # the closing "--"
                stmts = split_statements("".join(text))
                if stmts:
                    yield Entry(header, stmts)
                header = TocHeader(m["name"], m["type"], m["schema"], m["owner"],
                                   data=m["data"] is not None)
                text = []
            elif stripped.startswith("\\"):
                continue  # a psql meta-command
            elif header.data and _COPY.match(stripped):
                stmts = split_statements("".join(text))
                text = []
                if stmts:
                    yield Entry(header, stmts)
                data = s.copy_data(header.describe())
                yield Entry(header, copy=stripped[:-1], data=data)
                for _ in data:  # whatever the consumer left
                    pass
            else:
                if stripped == _TRAILER:
                    self.complete = True
                text.append(line)
        stmts = split_statements("".join(text))
        if stmts:
            yield Entry(header, stmts)


# -- renaming --------------------------------------------------------------------


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def qualified(schema: str, name: str) -> str:
    return f"{quote_ident(schema)}.{quote_ident(name)}"


def _ident(sql: str, tok: parser.Token) -> str | None:
    """The name an identifier token denotes (None if the token is no name)."""
    text = sql[tok.start:tok.end + 1]
    if tok.name == "IDENT":
        if text.startswith('"'):
            return text[1:-1].replace('""', '"')
        if text[:2].lower() == "u&":
            return None
        return text.lower()
    if tok.kind != "NO_KEYWORD":
        return text.lower()
    return None


def split_qualified(text: str) -> list[str]:
    """``a."B".c`` -> ``['a', 'B', 'c']`` (unquoted parts folded to lower case)."""
    parts: list[str] = []
    cur, quoted, i = "", False, 0
    while i < len(text):
        ch = text[i]
        if ch == '"':
            if quoted and text[i + 1:i + 2] == '"':
                cur += '"'
                i += 1
            else:
                quoted = not quoted
        elif ch == "." and not quoted:
            parts.append(cur)
            cur = ""
        else:
            cur += ch if quoted else ch.lower()
        i += 1
    parts.append(cur)
    return parts


@dataclass(frozen=True)
class Renamer:
    """Maps names in statements: a relation (schema, name) to another, every
    object of a schema to another schema, a database to another name.

    Rewritten: qualified names ``s.n`` (the first two parts of longer ones),
    the name after the keywords SCHEMA and DATABASE, and the string literal
    of ``'s.n'::regclass`` and of ``setval('s.n', ...)``. Not rewritten: names
    inside function bodies and other string literals (comments stay exact).
    """

    relations: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)
    schemas: dict[str, str] = field(default_factory=dict)
    databases: dict[str, str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.relations or self.schemas or self.databases)

    def _map(self, schema: str, name: str) -> tuple[str, str] | None:
        hit = self.relations.get((schema, name))
        if hit is not None:
            return hit
        if schema in self.schemas:
            return self.schemas[schema], name
        return None

    def _literal(self, sql: str, tok: parser.Token) -> str | None:
        body = sql[tok.start:tok.end + 1]
        if not (body.startswith("'") and body.endswith("'")):
            return None
        parts = split_qualified(body[1:-1].replace("''", "'"))
        if len(parts) != 2:
            return None
        new = self._map(parts[0], parts[1])
        if new is None:
            return None
        return "'" + qualified(*new).replace("'", "''") + "'"

    def rename(self, sql: str) -> str:
        if not self:
            return sql
        toks = tokens(sql)
        edits: list[tuple[int, int, str]] = []
        for i, tok in enumerate(toks):
            prev = toks[i - 1].name if i > 0 else ""
            if tok.name in ("SCHEMA", "DATABASE") and i + 1 < len(toks):
                name = _ident(sql, toks[i + 1])
                table = self.schemas if tok.name == "SCHEMA" else self.databases
                if name is not None and name in table:
                    edits.append((toks[i + 1].start, toks[i + 1].end, quote_ident(table[name])))
            elif tok.name == "SCONST":
                nxt = toks[i + 1] if i + 1 < len(toks) else None
                is_regclass = (nxt is not None and nxt.name == "TYPECAST" and i + 2 < len(toks)
                               and _ident(sql, toks[i + 2]) == "regclass")
                is_setval = (i >= 2 and prev == "ASCII_40"
                             and _ident(sql, toks[i - 2]) == "setval")
                if is_regclass or is_setval:
                    lit = self._literal(sql, tok)
                    if lit is not None:
                        edits.append((tok.start, tok.end, lit))
            elif (prev != "ASCII_46" and i + 2 < len(toks) and toks[i + 1].name == "ASCII_46"):
                schema, name = _ident(sql, tok), _ident(sql, toks[i + 2])
                if schema is None or name is None:
                    continue
                new = self._map(schema, name)
                if new is not None:
                    edits.append((tok.start, tok.end, quote_ident(new[0])))
                    edits.append((toks[i + 2].start, toks[i + 2].end, quote_ident(new[1])))
        return _apply_edits(sql, edits)


def _apply_edits(sql: str, edits: list[tuple[int, int, str]]) -> str:
    out, pos = [], 0
    for start, end, text in sorted(edits):
        if start < pos:
            continue
        out.append(sql[pos:start])
        out.append(text)
        pos = end + 1
    out.append(sql[pos:])
    return "".join(out)
