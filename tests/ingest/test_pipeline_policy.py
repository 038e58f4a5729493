"""`PublishPolicy`: when the ingest loop advances, flushes, saves and calls its
hooks. Pure code, driven by a fake clock."""

from __future__ import annotations

from strata.ingest.pipeline import Action, PublishConfig, PublishPolicy

CFG = PublishConfig(advance_interval=0.2, advance_bytes=1000, flush_interval=30.0,
                    save_interval=1.0, periodic_interval=1.0)


def policy() -> PublishPolicy:
    p = PublishPolicy.start(CFG, now=100.0)
    p.last_save = 100.0
    return p


def test_nothing_is_due_right_after_start() -> None:
    assert policy().decide(100.0, received=10, idle=False, processed=5, published=0,
                           durable=0) == Action.NONE


def test_a_busy_stream_advances_in_batches_by_time() -> None:
    p = policy()
    assert Action.ADVANCE not in p.decide(100.1, received=10, idle=False, processed=5,
                                          published=0, durable=0)
    assert Action.ADVANCE in p.decide(100.25, received=10, idle=False, processed=6,
                                      published=0, durable=0)
    # the batch window restarts after an advance
    assert Action.ADVANCE not in p.decide(100.3, received=10, idle=False, processed=7,
                                          published=6, durable=0)


def test_a_busy_stream_advances_after_enough_bytes() -> None:
    p = policy()
    assert Action.ADVANCE not in p.decide(100.01, received=600, idle=False, processed=5,
                                          published=0, durable=0)
    assert Action.ADVANCE in p.decide(100.02, received=600, idle=False, processed=6,
                                      published=0, durable=0)


def test_an_idle_stream_publishes_at_once_but_only_new_work() -> None:
    p = policy()
    assert Action.ADVANCE in p.decide(100.01, received=0, idle=True, processed=5, published=0,
                                      durable=0)
    assert Action.ADVANCE not in p.decide(100.02, received=0, idle=True, processed=5,
                                          published=5, durable=0)


def test_flush_only_when_due_and_something_is_not_durable() -> None:
    p = policy()
    assert Action.FLUSH not in p.decide(129.0, received=0, idle=True, processed=5, published=5,
                                        durable=0)
    assert Action.FLUSH not in p.decide(131.0, received=0, idle=True, processed=5, published=5,
                                        durable=5)
    assert Action.FLUSH in p.decide(131.5, received=0, idle=True, processed=9, published=9,
                                    durable=5)
    assert Action.FLUSH not in p.decide(132.0, received=0, idle=True, processed=12, published=12,
                                        durable=5)


def test_save_and_hooks_run_every_second() -> None:
    p = policy()
    act = p.decide(101.0, received=0, idle=True, processed=0, published=0, durable=0)
    assert Action.SAVE in act and Action.PERIODIC in act
    act = p.decide(101.5, received=0, idle=True, processed=0, published=0, durable=0)
    assert Action.SAVE not in act and Action.PERIODIC not in act
    act = p.decide(102.1, received=0, idle=True, processed=0, published=0, durable=0)
    assert Action.SAVE in act and Action.PERIODIC in act


def test_the_end_of_a_burst_is_flushed_once_after_a_quiet_second() -> None:
    p = policy()
    p.decide(100.1, received=500, idle=False, processed=5, published=0, durable=0)
    # busy, or idle for less than idle_flush_after: no flush
    assert Action.FLUSH not in p.decide(100.5, received=0, idle=True, processed=5, published=5,
                                        durable=0)
    assert Action.FLUSH in p.decide(101.2, received=0, idle=True, processed=5, published=5,
                                    durable=0)
    # the flush is under way: the same quiet spell does not ask again
    assert Action.FLUSH not in p.decide(101.5, received=0, idle=True, processed=5, published=5,
                                        durable=0)
    # new WAL, then quiet again: flushed again
    p.decide(102.0, received=100, idle=False, processed=7, published=5, durable=5)
    assert Action.FLUSH not in p.decide(102.5, received=0, idle=True, processed=7, published=7,
                                        durable=5)
    assert Action.FLUSH in p.decide(103.1, received=0, idle=True, processed=7, published=7,
                                    durable=5)


def test_a_quiet_stream_with_everything_durable_asks_no_flush() -> None:
    p = policy()
    p.decide(100.1, received=500, idle=False, processed=5, published=0, durable=5)
    assert Action.FLUSH not in p.decide(101.5, received=0, idle=True, processed=5, published=5,
                                        durable=5)


def test_a_stream_that_never_pauses_is_flushed_by_the_interval_only() -> None:
    p = policy()
    t, lsn = 100.0, 0
    flushes = []
    while t < 131.0:
        t, lsn = t + 0.1, lsn + 10
        if Action.FLUSH in p.decide(t, received=10, idle=False, processed=lsn, published=lsn,
                                    durable=0):
            flushes.append(round(t))
    assert flushes == [130]
