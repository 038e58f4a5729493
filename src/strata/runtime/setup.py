"""``python -m strata.runtime.setup``: make the PostgreSQL 18 runtime ready.

Finds the binaries (copying them where the server user can run them when we
are root), creates the server OS user when missing, and says what it found.
"""

from __future__ import annotations

import sys

from strata.errors import StrataError
from strata.runtime.osuser import server_user
from strata.runtime.pgbin import find_pg_binaries


def main() -> int:
    try:
        bins = find_pg_binaries()
        user = server_user()
    except StrataError as e:
        print(f"strata: {e}", file=sys.stderr)
        return 1
    who = f"OS user {user.name!r}" if user else "the current user"
    print(f"PostgreSQL {bins.version} at {bins.bindir}; servers run as {who}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
