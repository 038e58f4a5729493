"""`serve` as the main of a process: it listens, says so, and stops on SIGTERM
or when its stop event is set (no server needed: no client connects)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading

from strata.proxy.server import ProxyConfig, serve

MAIN = """
from strata.proxy.server import ProxyConfig, serve
serve(ProxyConfig("127.0.0.1", 1), None, ready=lambda port: print(port, flush=True))
print("stopped", flush=True)
"""


def test_serve_runs_until_sigterm_as_a_process_main() -> None:
    proc = subprocess.Popen([sys.executable, "-c", MAIN], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        with socket.create_connection(("127.0.0.1", port), timeout=10):
            pass  # it listens
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert proc.stdout.read().strip() == "stopped"
    finally:
        proc.kill()
        proc.wait()


def test_serve_returns_when_its_stop_event_is_set() -> None:
    stop = threading.Event()
    ports: list[int] = []
    listening = threading.Event()

    def ready(port: int) -> None:
        ports.append(port)
        listening.set()

    t = threading.Thread(target=serve, args=(ProxyConfig("127.0.0.1", 1), None),
                         kwargs={"ready": ready, "stop": stop})
    t.start()
    assert listening.wait(30)
    stop.set()
    t.join(30)
    assert not t.is_alive()
    try:
        socket.create_connection(("127.0.0.1", ports[0]), timeout=5).close()
        refused = False
    except OSError:
        refused = True
    assert refused  # the listening socket is closed
