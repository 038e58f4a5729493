"""Guard of a temporary database being restored: drops it if the restore dies.

What it is: ``python -m strata.restore.guard CONNINFO DBNAME``, started by
`restore.restore` before it creates DBNAME, in its own session (a Ctrl-C to
the terminal's process group does not reach it). It reads its stdin until
end of file: the restore writes ``done`` when it finished or cleaned up
itself; any other end (the restore was killed, even with SIGKILL, and the
pipe closed) makes the guard drop DBNAME (``WITH (FORCE)``: the dying
restore's session may still be there).
Fed by: the restore process (a pipe). Feeds: the primary (one DROP
DATABASE). Owns: nothing but its one job; it exits after it.
"""

from __future__ import annotations

import signal
import sys
import time

DROP_ATTEMPTS = 20


def _drop(conninfo: str, dbname: str) -> None:
    import psycopg

    ident = '"' + dbname.replace('"', '""') + '"'
    for attempt in range(DROP_ATTEMPTS):
        try:
            with psycopg.connect(conninfo, autocommit=True) as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {ident} WITH (FORCE)")
            return
        except psycopg.Error as e:
            if attempt == DROP_ATTEMPTS - 1:
                print(f"strata restore guard: could not drop {dbname}: {e}", file=sys.stderr)
                return
            time.sleep(0.5)  # the primary or the proxy restarting: try again


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if len(argv) != 2:
        print("usage: python -m strata.restore.guard CONNINFO DBNAME", file=sys.stderr)
        return 2
    conninfo, dbname = argv
    said = sys.stdin.buffer.read()
    if said.strip() == b"done":
        return 0
    _drop(conninfo, dbname)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
