"""Progress: plain lines when the output is not a terminal, a rich bar when it is."""

from __future__ import annotations

import io
import re

from strata.restore.progress import BarProgress, LineProgress, make_progress


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_lines_name_stages_and_tables_and_rate_limit_data() -> None:
    out = io.StringIO()
    p = make_progress(out)
    assert isinstance(p, LineProgress)
    p.interval = 3600.0  # no periodic line during this test
    p.stage("copying x")
    p.start_data(10 << 20)
    for _ in range(100):
        p.data("public.t", 1 << 16)
    p.table_done("public.t", 1000, 100 << 16)
    p.close()
    assert out.getvalue().splitlines() == ["restore: copying x",
                                           "restore: copied public.t (1000 rows, 6.2 MB)"]
    p.interval = 0.0
    p.data("public.t", 1)
    assert out.getvalue().splitlines()[-1] == "restore: copying public.t: 6.3 MB of ~10.0 MB"


def test_a_terminal_gets_a_bar_that_survives_a_low_estimate() -> None:
    out = _Tty()
    p = make_progress(out)
    assert isinstance(p, BarProgress)
    p.stage("copying")
    p.start_data(100)
    p.data("public.t", 1000)  # more than estimated: the total grows
    p.table_done("public.t", 3, 1000)
    p.close()
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())
    assert "restore: copied public.t (3 rows, 1000 B)" in plain
