"""The errors of the shared formats; the agent's error tree (endpoint_agent/errors.py) grows from here.

    EndpointError                   base; carries a one-line, user-facing message
    └── PolicyError                 a policy cannot be used
        ├── PolicyLoadError         file missing, a directory, too large, unreadable, not YAML; a bad key file
        ├── PolicyValidationError   parsed but a rule or field is wrong (names file, rule, field)
        └── PolicySignatureError    envelope unsigned, tampered, or signed by an unknown key

They live here because the envelope (shared with the server and the admin tool) raises them.
"""

from __future__ import annotations


class EndpointError(Exception):
    """Base of all errors the agent and its tools report; `str(err)` is one line for a human."""


class PolicyError(EndpointError):
    pass


class PolicyLoadError(PolicyError):
    pass


class PolicyValidationError(PolicyError):
    def __init__(self, message: str, errors: list[str] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or [message]


class PolicySignatureError(PolicyError):
    pass


__all__ = ["EndpointError", "PolicyError", "PolicyLoadError", "PolicySignatureError", "PolicyValidationError"]
