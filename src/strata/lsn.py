"""Log sequence numbers: the one type for a WAL position.

Bottom layer: imports nothing from strata. Every module that speaks of a WAL
position uses `Lsn`; ranges are `LsnRange`, always half-open ``[start, end)``.

`str(Lsn)` prints the way PostgreSQL 18 prints a ``pg_lsn`` (``0/16B3748``);
`Lsn.padded()` prints the way 18's ``pg_waldump`` prints record positions
(``0/016B3748``, low word zero-padded), so our output can be diffed against
it. `Lsn.parse` reads both forms.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Self

_LSN_RE = re.compile(r"^\s*([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})\s*$")

MAX_LSN_VALUE = (1 << 64) - 1


class Lsn(int):
    """A 64-bit WAL position. Immutable; compares and hashes as an int."""

    __slots__ = ()

    def __new__(cls, value: int = 0) -> Self:
        if not 0 <= int(value) <= MAX_LSN_VALUE:
            raise ValueError(f"LSN out of range: {value!r}")
        return super().__new__(cls, value)

    @classmethod
    def parse(cls, text: str) -> Lsn:
        """Read ``X/Y`` (hex, either case, padded or not).

        Raises: ValueError naming the text when it is not an LSN.
        """
        m = _LSN_RE.match(text)
        if m is None:
            raise ValueError(f"invalid LSN {text!r}: expected the form X/Y in hexadecimal")
        return cls((int(m.group(1), 16) << 32) | int(m.group(2), 16))

    def __str__(self) -> str:
        return f"{int(self) >> 32:X}/{int(self) & 0xFFFFFFFF:X}"

    def padded(self) -> str:
        """``%X/%08X``: pg_waldump's form for record positions."""
        return f"{int(self) >> 32:X}/{int(self) & 0xFFFFFFFF:08X}"

    def __repr__(self) -> str:
        return f"Lsn({self})"

    def __add__(self, other: int) -> Lsn:  # type: ignore[override]
        return Lsn(int(self) + int(other))

    def __sub__(self, other: int) -> int:  # type: ignore[override]
        return int(self) - int(other)

    def align(self, alignment: int = 8) -> Lsn:
        """Round up to a multiple of `alignment` (records start MAXALIGNed)."""
        return Lsn((int(self) + alignment - 1) & ~(alignment - 1))


INVALID_LSN = Lsn(0)
MAX_LSN = Lsn(MAX_LSN_VALUE)


@dataclass(frozen=True, slots=True)
class LsnRange:
    """Half-open range of LSNs ``[start, end)``."""

    start: Lsn
    end: Lsn

    def __post_init__(self) -> None:
        if self.end < self.start:
            raise ValueError(f"empty-negative LSN range [{self.start}, {self.end})")

    def __contains__(self, lsn: object) -> bool:
        return isinstance(lsn, int) and self.start <= lsn < self.end

    def __str__(self) -> str:
        return f"[{self.start}, {self.end})"
