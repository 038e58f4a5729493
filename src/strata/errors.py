"""The one error hierarchy of pgStrata.

Bottom layer: imports nothing from strata. Every error a user can cause or
see derives from `StrataError`. Messages name the object concerned (file and
offset, LSN, relation); causes are chained with ``raise ... from``. The proxy
maps these classes to SQLSTATEs in one table (`proxy/sqlstate.py`); each class
carries its default SQLSTATE here so that table has a single source.
"""

from __future__ import annotations


class StrataError(Exception):
    """Base of every pgStrata error."""

    sqlstate: str = "XX000"  # internal_error


class ConfigError(StrataError):
    """Bad configuration or command-line input."""

    sqlstate = "22023"  # invalid_parameter_value


class CorruptionError(StrataError):
    """A file on disk does not match its format: bad magic, checksum, length."""

    sqlstate = "XX001"  # data_corrupted


class WalError(StrataError):
    """WAL could not be read or decoded."""

    sqlstate = "XX001"


class WalDecodeError(WalError):
    """A record (or page header) at a named LSN is malformed."""


class EndOfWal(WalError):
    """Valid WAL ends here; `lsn` is where and `reason` says why (not an error
    in itself: a reader stops cleanly on it)."""

    def __init__(self, lsn: int, reason: str) -> None:
        from strata.lsn import Lsn

        self.lsn = Lsn(lsn)
        self.reason = reason
        super().__init__(f"end of WAL at {self.lsn}: {reason}")


class WalSourceError(WalError):
    """The WAL source failed: slot missing, WAL removed, server unreachable."""

    sqlstate = "58030"  # io_error


class UnsupportedRecordError(StrataError):
    """A WAL record type we cannot redo. Loud: never skipped silently."""

    sqlstate = "0A000"  # feature_not_supported

    def __init__(self, rmgr: str, record_type: str, lsn: int | None = None) -> None:
        from strata.lsn import Lsn

        self.rmgr = rmgr
        self.record_type = record_type
        self.lsn = Lsn(lsn) if lsn is not None else None
        where = f" at {self.lsn}" if self.lsn is not None else ""
        super().__init__(f"no redo for {rmgr}/{record_type}{where}")


class RedoError(StrataError):
    """Redo of a record failed (a page in a state the record cannot apply to)."""


class LsnOutOfRangeError(StrataError):
    """An LSN or time outside the history that can be read."""

    sqlstate = "22008"  # datetime_field_overflow is for times; see proxy table

    def __init__(self, message: str, *, nearest: object | None = None) -> None:
        self.nearest = nearest
        super().__init__(message)


class IngestBehindError(LsnOutOfRangeError):
    """A point that exists but is not ingested yet (ingest lags the primary):
    a transient condition, the same request succeeds once ingest catches up."""

    sqlstate = "55000"  # object_not_in_prerequisite_state


class InstanceError(StrataError):
    """A PostgreSQL server (primary or historical) failed to start or stopped."""

    sqlstate = "57P03"  # cannot_connect_now


class ProtocolError(StrataError):
    """A wire-protocol message we could not understand."""

    sqlstate = "08P01"  # protocol_violation


class RestoreError(StrataError):
    """Bringing the past back (restore, attach-past, diff, history) failed; for a
    restore nothing was changed in the present (its transaction rolled back)."""

    sqlstate = "55000"  # object_not_in_prerequisite_state


class RuntimeSetupError(StrataError):
    """PostgreSQL binaries missing, wrong major version, or OS user problems."""
