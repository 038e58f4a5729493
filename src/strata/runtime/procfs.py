"""What /proc says about a process: alive or not, and the CPU it has used.

What it is: `process_alive(pid)` and `cpu_seconds(pid)`, both read from
`/proc/PID/stat` (Linux), the one place strata parses that file.
Owns: nothing; no state.
"""

from __future__ import annotations

import os

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (field 3, the state,
    first), or None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_alive(pid: int) -> bool:
    """True while `pid` runs (a zombie awaiting its reaper counts as exited)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    fields = _stat_fields(pid)
    return fields is not None and bool(fields) and fields[0] != "Z"


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds `pid` has used (its own, not its children's), or
    None when it is gone."""
    fields = _stat_fields(pid)
    if fields is None or len(fields) < 13:
        return None
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
