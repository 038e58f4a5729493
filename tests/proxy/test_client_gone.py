"""A client that goes away without Terminate (killed, even inside COPY FROM)
ends its server session: the proxy sees the end of its stream and closes the
backend, so no transaction is left open on the primary."""

from __future__ import annotations

import socket
import time

import pytest

from strata.proxy import framing
from strata.proxy import messages as m
from tests.proxy.conftest import ProxyEnv

pytestmark = [pytest.mark.e2e, pytest.mark.pg]


def _sessions(env: ProxyEnv, app: str) -> int:
    with env.live.connect() as conn:
        return int(conn.execute("SELECT count(*) FROM pg_stat_activity "
                                "WHERE application_name = %s", [app]).fetchone()[0])


def _until_tag(sock: socket.socket, framer: framing.Framer, tag: str) -> None:
    while True:
        chunk = sock.recv(65536)
        assert chunk, "the proxy closed the connection"
        if any(x.tag == tag for x in framer.feed(chunk)):
            return


@pytest.mark.parametrize("inside_copy", [True, False])
def test_a_vanished_client_ends_its_server_session(env: ProxyEnv, inside_copy: bool) -> None:
    app = f"vanishing-{inside_copy}"
    sock = socket.create_connection(("127.0.0.1", env.port), timeout=20)
    framer = framing.Framer()
    sock.sendall(m.StartupMessage(m.PROTOCOL_3_0, (("user", "postgres"), ("database", "postgres"),
                                                   ("application_name", app))).encode())
    _until_tag(sock, framer, "Z")
    sock.sendall(m.encode_query("BEGIN; CREATE TEMP TABLE gone_c (a int)"))
    _until_tag(sock, framer, "Z")
    if inside_copy:
        sock.sendall(m.encode_query("COPY gone_c FROM STDIN"))
        _until_tag(sock, framer, "G")
        sock.sendall(m.Message("d", b"1\n2\n").encode())
    assert _sessions(env, app) == 1
    sock.close()  # no Terminate: the process died
    deadline = time.monotonic() + 30
    while _sessions(env, app):
        assert time.monotonic() < deadline, "the server session outlived its client"
        time.sleep(0.02)
