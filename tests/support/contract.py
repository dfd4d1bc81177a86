"""The keys every finding / violation JSON object has: the contract's own list, not a copy."""

from endpoint_contract.events import VIOLATION_KEYS, WIRE_KEYS

CONTRACT_KEYS = VIOLATION_KEYS

__all__ = ["CONTRACT_KEYS", "WIRE_KEYS"]
