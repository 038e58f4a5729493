"""WAL segment file names (xlog_internal.h XLogFileName / XLogFromFileName).

Fed by: nothing. Feeds: the WAL segment source, historical data directories
(the segment a control file points at), tests. Pure.
"""

from __future__ import annotations

import re

_SEGMENT_RE = re.compile(r"^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})(\.partial)?$")


def segments_per_xlogid(segment_size: int) -> int:
    """XLogSegmentsPerXLogId: segments per 4 GB of LSN space."""
    return 0x100000000 // segment_size


def segment_file_name(tli: int, segno: int, segment_size: int) -> str:
    """XLogFileName: TLI, then the segment number split into log and seg."""
    per = segments_per_xlogid(segment_size)
    return f"{tli:08X}{segno // per:08X}{segno % per:08X}"


def parse_segment_file_name(name: str, segment_size: int) -> tuple[int, int] | None:
    """(timeline, segno) for a segment file name (``.partial`` allowed), else None."""
    m = _SEGMENT_RE.match(name)
    if m is None:
        return None
    per = segments_per_xlogid(segment_size)
    return int(m.group(1), 16), int(m.group(2), 16) * per + int(m.group(3), 16)
