"""Mode resolution (lazy / materialize / auto) and the forks a data directory shows."""

from __future__ import annotations

import pytest

from strata.errors import ConfigError, IngestBehindError
from strata.historical import modes
from strata.historical.lazy import lazy_available
from strata.historical.modes import HistoricalMode, durable_through, resolve_mode, server_limits
from strata.historical.served import ServedFork, served_forks
from strata.historical.source import RelFile
from strata.lsn import Lsn


def test_auto_is_lazy_where_fuse_works_and_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(modes, "lazy_available", lambda: (True, "FUSE works here"))
    assert resolve_mode("auto") == (HistoricalMode.LAZY, "lazy (auto: FUSE works here)")
    assert resolve_mode("lazy")[0] is HistoricalMode.LAZY
    assert resolve_mode("materialize")[0] is HistoricalMode.MATERIALIZE


def test_auto_falls_back_to_materialize_and_lazy_is_refused_with_the_reason(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(modes, "lazy_available", lambda: (False, "/dev/fuse does not exist"))
    mode, why = resolve_mode(HistoricalMode.AUTO)
    assert mode is HistoricalMode.MATERIALIZE and "/dev/fuse does not exist" in why
    with pytest.raises(ConfigError, match="lazy is not possible here: /dev/fuse does not exist"):
        resolve_mode("lazy")
    with pytest.raises(ConfigError, match="unknown historical mode 'fast'"):
        resolve_mode("fast")


def test_detection_answers_with_a_reason() -> None:
    ok, why = lazy_available()
    assert isinstance(ok, bool) and why


def test_server_limits_follow_the_instance_settings() -> None:
    lim = server_limits({"max_connections": "20", "max_prepared_transactions": "0"})
    assert lim.max_connections == 20 and lim.max_prepared_xacts == 0
    assert lim.max_locks_per_xact == 64 and lim.max_worker_processes == 8


def test_served_forks_are_main_and_vm_and_an_unlogged_relation_shows_its_init_fork_as_main(
        ) -> None:
    rels = [RelFile(1663, 5, 100, 0, 10), RelFile(1663, 5, 100, 1, 3),
            RelFile(1663, 5, 100, 2, 1), RelFile(1663, 5, 200, 0, 4), RelFile(1663, 5, 200, 2, 1),
            RelFile(1663, 5, 200, 3, 1), RelFile(1663, 5, 201, 3, 0), RelFile(1664, 0, 1262, 0, 1)]
    assert served_forks(rels) == [
        ServedFork(1663, 5, 100, 0, 10, 0), ServedFork(1663, 5, 100, 2, 1, 2),  # FSM left out
        ServedFork(1663, 5, 200, 0, 1, 3),  # unlogged: its init fork, and no VM
        ServedFork(1663, 5, 201, 0, 0, 3), ServedFork(1664, 0, 1262, 0, 1, 0)]


class _Store:
    """Ingest reaches 100 after three looks; records flushes."""

    def __init__(self, stuck: bool = False) -> None:
        self.looks = 0
        self.stuck = stuck
        self.durable_lsn = Lsn(10)
        self.flushed: list[int] = []

    @property
    def ingested_lsn(self) -> Lsn:
        self.looks += 1
        return Lsn(50 if self.stuck or self.looks < 3 else 100)

    def flush(self, up_to: int) -> Lsn:
        self.flushed.append(up_to)
        self.durable_lsn = Lsn(up_to)
        return self.durable_lsn


def test_durable_through_waits_for_ingest_then_flushes_through_x() -> None:
    store = _Store()
    durable_through(store, timeout=30)(Lsn(80))  # type: ignore[arg-type]
    assert store.flushed == [80] and store.looks >= 3
    durable_through(store)(Lsn(80))  # type: ignore[arg-type]
    assert store.flushed == [80]  # already durable: no flush
    with pytest.raises(IngestBehindError, match="not yet at 0/50"):
        durable_through(_Store(stuck=True), timeout=0.05)(Lsn(80))  # type: ignore[arg-type]
