"""Precompiled little-endian scalar structs, one of each (PostgreSQL writes host
order; we support little-endian hosts: x86-64 and aarch64).

Fed by: nothing. Feeds: every module that packs or unpacks PostgreSQL integers
(pages, WAL records, control files). Record- or page-specific layouts stay
with the module that owns that layout.
"""

from __future__ import annotations

import struct

U8 = struct.Struct("<B")
U16 = struct.Struct("<H")
U32 = struct.Struct("<I")
U64 = struct.Struct("<Q")
I16 = struct.Struct("<h")
I32 = struct.Struct("<i")
I64 = struct.Struct("<q")
