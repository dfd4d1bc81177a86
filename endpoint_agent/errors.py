"""Every failure the agent reports, in one tree.

    AgentError                      base; carries a one-line, user-facing message
    ├── PolicyError                 a policy cannot be used (the branch shared with the server and admin
    │   │                           tool: defined in endpoint_contract/errors.py, re-exported here)
    │   ├── PolicyLoadError         file missing, a directory, too large, unreadable, not YAML
    │   ├── PolicyValidationError   YAML parsed but a rule or field is wrong (names file, rule, field)
    │   └── PolicySignatureError    envelope unsigned, tampered, or signed by an unknown key
    ├── SettingsError               a flag, env var or config-file key is invalid (names the key)
    ├── CollectError                the snapshot could not be taken at all (single processes never raise)
    ├── StoreError                  the local SQLite store failed (disk full, corrupt, locked)
    └── ServerError                 talking to the policy/report server failed
        ├── ServerUnavailable       network error, timeout, 5xx, 429 (retry later; may carry retry_after)
        └── ServerRejected          4xx: the server refused the request (bad key, bad payload)

Library exceptions (psutil, yaml, sqlite3, httpx) are translated into these at the module that
touches the library; nothing above that module sees a foreign exception.
"""

from __future__ import annotations

from endpoint_contract.errors import EndpointError as AgentError
from endpoint_contract.errors import (
    PolicyError,
    PolicyLoadError,
    PolicySignatureError,
    PolicyValidationError,
)


class SettingsError(AgentError):
    pass


class CollectError(AgentError):
    pass


class StoreError(AgentError):
    pass


class ServerError(AgentError):
    pass


class ServerUnavailable(ServerError):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ServerRejected(ServerError):
    def __init__(self, message: str, status_code: int = 400) -> None:
        super().__init__(message)
        self.status_code = status_code


__all__ = [
    "AgentError",
    "CollectError",
    "PolicyError",
    "PolicyLoadError",
    "PolicySignatureError",
    "PolicyValidationError",
    "ServerError",
    "ServerRejected",
    "ServerUnavailable",
    "SettingsError",
    "StoreError",
]
