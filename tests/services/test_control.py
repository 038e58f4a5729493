"""The control channel: requests answered, errors reported, a dead service told apart."""

from __future__ import annotations

import stat
import threading
from pathlib import Path
from typing import Any

import pytest

from strata.errors import StrataError
from strata.services.control import ControlClient, ControlError, ControlServer


def test_requests_are_answered_and_errors_come_back_as_control_errors(tmp_path: Path) -> None:
    gate = threading.Event()

    def echo(req: dict[str, Any]) -> dict[str, Any]:
        return {"got": req["x"] * 2}

    def boom(req: dict[str, Any]) -> dict[str, Any]:
        raise StrataError("no such thing")

    def slow(req: dict[str, Any]) -> dict[str, Any]:
        gate.wait(5)
        return {}

    path = tmp_path / "run" / "svc.sock"
    server = ControlServer(path, {"echo": echo, "boom": boom, "slow": slow})
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600  # only this OS user may ask
        client = ControlClient(path)
        assert client.request("echo", x=21)["got"] == 42
        with pytest.raises(ControlError, match="boom failed: no such thing"):
            client.request("boom")
        with pytest.raises(ControlError, match="unknown control request"):
            client.request("nope")
        with pytest.raises(ControlError, match="no answer"):
            client.request("slow", timeout=0.2)  # the caller's timeout bounds its wait
        gate.set()
        assert client.request("echo", x=1)["got"] == 2  # and the server carries on
    finally:
        server.close()
    assert not path.exists()
    with pytest.raises(ControlError, match="no answer"):
        ControlClient(path).request("echo", x=1)
