"""Service child processes (services/process.py): what they inherit."""

from __future__ import annotations

import logging

import pytest

from strata.services.process import service_env


@pytest.mark.parametrize(("level", "user", "want"), [
    (logging.INFO, None, "INFO"),         # strata -v up: the services log info lines too
    (logging.DEBUG, None, "DEBUG"),       # strata -vv up
    (logging.WARNING, None, None),        # quiet by default: the services' own default
    (logging.INFO, "ERROR", "ERROR"),     # the user's STRATA_LOG_LEVEL wins
])
def test_services_log_at_the_supervisors_level_unless_told_otherwise(
        monkeypatch: pytest.MonkeyPatch, level: int, user: str | None, want: str | None) -> None:
    root = logging.getLogger()
    monkeypatch.setattr(root, "level", level)
    if user is None:
        monkeypatch.delenv("STRATA_LOG_LEVEL", raising=False)
    else:
        monkeypatch.setenv("STRATA_LOG_LEVEL", user)
    assert service_env().get("STRATA_LOG_LEVEL") == want
