"""Acting on block findings, inside rails no policy can switch off.

guard.py       processes never signalled (PID 1, kernel threads, the agent and its ancestors,
               session/display managers, sshd, package managers, a local list)
terminate.py   SIGTERM -> grace -> SIGKILL, or SIGSTOP; identity re-checked before each signal
circuit.py     circuit breaker on the breadth of stops (monitor mode for a window once tripped)
breakglass.py  a root-owned file that forces monitor mode while it exists
notify.py      telling the user why their app was stopped (best effort, never blocking)
"""

from endpoint_agent.enforce.breakglass import BreakGlass, BreakGlassState
from endpoint_agent.enforce.circuit import Admission, CircuitBreaker, CircuitState, StopTarget
from endpoint_agent.enforce.guard import Guard, Protection
from endpoint_agent.enforce.notify import (
    DesktopNotifier,
    LogOnlyNotifier,
    Notification,
    Notifier,
)
from endpoint_agent.enforce.terminate import (
    BlockAction,
    Enforcer,
    EnforceResult,
    PsutilEnforcer,
)

__all__ = [
    "Admission",
    "BlockAction",
    "BreakGlass",
    "BreakGlassState",
    "CircuitBreaker",
    "CircuitState",
    "DesktopNotifier",
    "EnforceResult",
    "Enforcer",
    "Guard",
    "LogOnlyNotifier",
    "Notification",
    "Notifier",
    "Protection",
    "PsutilEnforcer",
    "StopTarget",
]
