"""What never reaches a client: historical addresses and instance paths (no server)."""

from __future__ import annotations

from strata.proxy import messages as m
from strata.proxy.scrub import Scrubber, scrub_paths


def test_a_tcp_address_is_hidden_in_every_form() -> None:
    s = Scrubber("127.0.0.1", 54321)
    assert s.text("at 127.0.0.1:54321, port 54321 (host 127.0.0.1)") == (
        "at [hidden], port [hidden] (host [hidden])")
    assert s.text("154321 and 543210 are other numbers") == "154321 and 543210 are other numbers"


def test_a_socket_directory_and_any_socket_path_are_hidden() -> None:
    s = Scrubber("/run/strata/i1", 6000)
    assert s.text('socket "/run/strata/i1/.s.PGSQL.6000" in /run/strata/i1') == (
        'socket "[hidden]" in [hidden]')
    assert s.text("/var/run/postgresql/.s.PGSQL.5432") == "[hidden]"


def test_error_bodies_keep_their_codes_and_positions() -> None:
    s = Scrubber("/run/strata/i1", 6000)
    body = m.encode_error({"S": "ERROR", "V": "ERROR", "C": "P0001", "M": "on 6000",
                           "P": "6000"})[m.HEADER_SIZE:]
    assert m.parse_error_fields(s.body(body)) == {
        "S": "ERROR", "V": "ERROR", "C": "P0001", "M": "on [hidden]", "P": "6000"}
    clean = m.encode_error({"S": "ERROR", "C": "22012", "M": "division by zero"})[m.HEADER_SIZE:]
    assert s.body(clean) is clean


def test_paths_are_hidden_but_lsns_are_not() -> None:
    assert scrub_paths("creating /var/lib/strata/instances/0000/data failed at 0/16B3748") == (
        "creating [hidden] failed at 0/16B3748")
