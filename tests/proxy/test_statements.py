"""Statement recognition with pglast: what the proxy acts on, what it relays."""

from __future__ import annotations

import pytest

from strata.proxy.statements import (
    BadTravelValue,
    Kind,
    classify_single,
    parse_duration,
    split_statements,
)


@pytest.mark.parametrize(("sql", "kind", "value"), [
    ("SET strata.travel_time = '2026-04-06 10:00+00'", Kind.SET_TIME, "2026-04-06 10:00+00"),
    ("set strata.travel_time to '2026-04-06'", Kind.SET_TIME, "2026-04-06"),
    ("SET SESSION strata.travel_time TO 'yesterday'", Kind.SET_TIME, "yesterday"),
    ("SET STRATA.TRAVEL_TIME = 'now'", Kind.SET_TIME, "now"),
    ("SET strata.travel_time = E'2026-04-06\\t10:00'", Kind.SET_TIME, "2026-04-06\t10:00"),
    ("SET strata.travel_time = $$it's 10:00$$", Kind.SET_TIME, "it's 10:00"),
    ("SET strata.travel_time = 'O''Clock'", Kind.SET_TIME, "O'Clock"),
    ("SET strata.travel_lsn = '0/16B3748'", Kind.SET_LSN, "0/16B3748"),
    ("/* hi */ SET strata.travel_lsn TO '1/0' -- trailing", Kind.SET_LSN, "1/0"),
    ("RESET strata.travel_time", Kind.RESET_TRAVEL, None),
    ("RESET strata.travel_lsn", Kind.RESET_TRAVEL, None),
    ("SET strata.travel_time TO DEFAULT", Kind.RESET_TRAVEL, None),
    ("SET LOCAL strata.travel_time = 'now'", Kind.SET_LOCAL_TRAVEL, None),
    ("RESET ALL", Kind.RESET_ALL, None),
    ("discard all", Kind.DISCARD_ALL, None),
    ("SHOW strata.travel_time", Kind.SHOW_TIME, None),
    ("show strata.travel_lsn", Kind.SHOW_LSN, None),
])
def test_strata_statements_are_recognised(sql: str, kind: Kind, value: str | None) -> None:
    st = classify_single(sql)
    assert st is not None
    assert st.kind is kind
    assert st.value == value


@pytest.mark.parametrize("sql", [
    "SELECT 1",
    "SELECT 'SET strata.travel_time = 1'",
    "SELECT reset, discard FROM t",
    "-- SET strata.travel_time = 'x'\nSELECT 1",
    "SET TimeZone = 'UTC'",
    "SET strata.other = 'x'",
    "RESET work_mem",
    "DISCARD PLANS",
    "SHOW TimeZone",
    "DO $$BEGIN PERFORM 'RESET ALL'; END$$",
    "SELEC strata",  # a syntax error: the server reports it
])
def test_other_statements_are_relayed_untouched(sql: str) -> None:
    assert split_statements(sql) is None
    assert classify_single(sql) is None


def test_multi_statement_string_is_cut_at_statement_boundaries() -> None:
    sql = ("SELECT 'é;' AS x; SET strata.travel_time TO '2026-04-06 10:00+00';"
           "  SELECT $q$;RESET ALL;$q$ ; show strata.travel_lsn;RESET strata.travel_time")
    stmts = split_statements(sql)
    assert stmts is not None
    assert [(s.kind, s.text) for s in stmts] == [
        (Kind.RELAY, "SELECT 'é;' AS x"),
        (Kind.SET_TIME, "SET strata.travel_time TO '2026-04-06 10:00+00'"),
        (Kind.RELAY, "SELECT $q$;RESET ALL;$q$"),
        (Kind.SHOW_LSN, "show strata.travel_lsn"),
        (Kind.RESET_TRAVEL, "RESET strata.travel_time"),
    ]


def test_parse_message_with_many_statements_is_left_to_the_server() -> None:
    assert classify_single("SET strata.travel_lsn = '0/1'; SELECT 1") is None


def test_travel_set_with_a_list_value_is_an_error() -> None:
    with pytest.raises(BadTravelValue):
        split_statements("SET strata.travel_time = 'a', 'b'")


def test_numeric_value_is_kept_as_text() -> None:
    st = classify_single("SET strata.travel_lsn = 0")
    assert st is not None and st.value == "0"


@pytest.mark.parametrize(("sql", "tag"), [
    ("SET strata.travel_time TO DEFAULT", "SET"),
    ("SET strata.travel_lsn = DEFAULT", "SET"),
    ("RESET strata.travel_time", "RESET"),
])
def test_returning_to_the_present_answers_the_tag_postgresql_would(sql: str, tag: str) -> None:
    st = classify_single(sql)
    assert st is not None and st.kind is Kind.RESET_TRAVEL and st.tag == tag


@pytest.mark.parametrize("sql", [
    "SELECT set_config('strata.travel_time', '2026-04-06', false)",
    "SELECT x, pg_catalog.SET_CONFIG('Strata.Travel_LSN', '0/1', true) FROM t",
    "SELECT 1 WHERE set_config('strata.travel_wait', '0', false) IS NOT NULL",
])
def test_set_config_of_a_strata_setting_is_ours(sql: str) -> None:
    st = classify_single(sql)
    assert st is not None and st.kind is Kind.SET_CONFIG


@pytest.mark.parametrize("sql", [
    "SELECT set_config('work_mem', '5MB', false)",
    "SELECT set_config(name, 'x', false) FROM strata_settings",  # not a constant: the server's
    "SET strata.travel_wait = '5s'", "SET LOCAL strata.travel_wait TO 0", "SHOW strata.travel_wait",
    "RESET strata.travel_wait", "SET strata.travel_wait TO DEFAULT",
])
def test_travel_wait_and_other_set_config_are_relayed(sql: str) -> None:
    assert split_statements(sql) is None


@pytest.mark.parametrize(("text", "seconds"), [
    ("30s", 30.0), ("0", 0.0), ("2", 2.0), ("500ms", 0.5), ("1.5 min", 90.0), ("1h", 3600.0),
    (" 250us ", 0.00025), ("1d", 86400.0),
])
def test_travel_wait_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "soon", "-1s", "5 sec", "1e3"])
def test_bad_travel_wait_values_are_refused(text: str) -> None:
    with pytest.raises(BadTravelValue, match=r"strata\.travel_wait"):
        parse_duration(text)
    if text:
        with pytest.raises(BadTravelValue):
            split_statements(f"SET strata.travel_wait = '{text}'")
