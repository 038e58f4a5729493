"""The one table from errors to SQLSTATE codes for everything the proxy reports.

What it is: `sqlstate_for(exc)` and the named codes the proxy uses itself.
Fed by: `proxy.session` when a provider call or a proxy check fails.
Feeds: the ErrorResponse the client receives.
Owns: the mapping. Each `StrataError` subclass carries a default `sqlstate`
(errors.py); `OVERRIDES` below wins where the proxy's view differs. Classes
are looked up along the MRO, so a new subclass inherits its parent's code.
"""

from __future__ import annotations

from strata.errors import (
    ConfigError,
    IngestBehindError,
    InstanceError,
    LsnOutOfRangeError,
    ProtocolError,
    StrataError,
)

# Codes the proxy raises on its own (names as in PostgreSQL's errcodes.txt).
SUCCESSFUL_COMPLETION = "00000"
INVALID_DATETIME_FORMAT = "22007"
INVALID_TEXT_REPRESENTATION = "22P02"
INVALID_PARAMETER_VALUE = "22023"
ACTIVE_SQL_TRANSACTION = "25001"
IN_FAILED_SQL_TRANSACTION = "25P02"
INSUFFICIENT_PRIVILEGE = "42501"
# Codes the proxy reads from historical servers refusing a session.
INVALID_AUTHORIZATION_SPECIFICATION = "28000"  # role "x" does not exist
INVALID_CATALOG_NAME = "3D000"  # database "x" does not exist
FEATURE_NOT_SUPPORTED = "0A000"
OBJECT_NOT_IN_PREREQUISITE_STATE = "55000"
CANNOT_CONNECT_NOW = "57P03"
CONNECTION_FAILURE = "08006"
PROTOCOL_VIOLATION = "08P01"
INTERNAL_ERROR = "XX000"

OVERRIDES: dict[type[BaseException], str] = {
    # A time or LSN outside the history is a bad value for the setting; 22008
    # (errors.py's default) would wrongly suggest a datetime overflow for LSNs.
    LsnOutOfRangeError: INVALID_PARAMETER_VALUE,
    # transient: the point exists, ingest has not reached it yet
    IngestBehindError: OBJECT_NOT_IN_PREREQUISITE_STATE,
    ConfigError: INVALID_PARAMETER_VALUE,
    InstanceError: CANNOT_CONNECT_NOW,
    ProtocolError: PROTOCOL_VIOLATION,
    ConnectionError: CONNECTION_FAILURE,
    OSError: CONNECTION_FAILURE,
}


def sqlstate_for(exc: BaseException) -> str:
    """The SQLSTATE for `exc`: an override along its MRO, else its own
    `sqlstate` attribute (StrataError), else XX000."""
    for cls in type(exc).__mro__:
        code = OVERRIDES.get(cls)
        if code is not None:
            return code
        if cls is StrataError:
            break
    if isinstance(exc, StrataError):
        return exc.sqlstate
    return INTERNAL_ERROR
