"""The policy file format (pydantic v2 models): what an administrator writes.

Models are frozen and forbid unknown fields, so a typo is an error instead of a rule that
silently never matches. Values are validated here once (globs, regexes, CIDRs, ports); the
compiled form lives in `compile.py`.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum
from typing import Annotated

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError

from endpoint_agent.policy.fields import (
    Domains,
    HttpUrl,
    NameGlobs,
    Networks,
    PathGlobs,
    Ports,
    Regexes,
    RuleId,
    Sha256s,
    Text,
    Texts,
    _as_lower_list,
    _false_is_off,
)
from endpoint_agent.types import Direction, Enforce, RuleAction
from endpoint_contract.vocabulary import Mode, Severity

UNAPPROVED_RULE_ID = "unapproved-app"
P2P_MAX_SCORE = 9  # all signals of policy/p2p.py at once
P2P_MAX_WINDOW_SCANS = 20  # collect.behaviour.MAX_WINDOW_SCANS
DEFAULT_MESSAGE = "This application is not allowed on company machines by the acceptable-use policy."


class UnapprovedAction(StrEnum):
    OFF = "off"
    REPORT = "report"
    BLOCK = "block"


class Protocol(StrEnum):
    TCP = "tcp"
    UDP = "udp"


class Specificity(IntEnum):
    """How precisely a rule names an executable; the most specific matching rule wins."""

    GENERAL = 1  # name, cmdline, user, parent, network
    PATH = 2
    SHA256 = 3


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_PROCESS_KEYS = ("name", "path", "sha256", "cmdline", "user", "parent")
_NETWORK_KEYS = (
    "remote_port",
    "remote_address",
    "local_port",
    "protocol",
    "direction",
    "p2p",
    "domain",
    "domain_list",
)
# What a connection rule's nftables statement can express besides the remote end.
_CONNECTION_PROCESS_KEYS = frozenset({"user"})


class ProcessConditions(_Model):
    """All given keys must hold (AND); a list means any of its values (OR)."""

    name: NameGlobs | None = Field(
        default=None,
        description="Glob, case-insensitive, on the process name or the basename of its executable.",
    )
    path: PathGlobs | None = Field(default=None, description="Glob on the executable path ('*' crosses '/').")
    sha256: Sha256s | None = Field(
        default=None, description="SHA-256 of the executable file (64 hex digits)."
    )
    cmdline: Regexes | None = Field(
        default=None, description="Regex searched in the space-joined command line."
    )
    user: Texts | None = Field(default=None, description="Exact user name owning the process.")
    parent: NameGlobs | None = Field(
        default=None, description="Glob, case-insensitive, on the parent process name."
    )

    @model_validator(mode="after")
    def _not_empty(self) -> ProcessConditions:
        if all(getattr(self, key) is None for key in _PROCESS_KEYS):
            raise ValueError(f"is empty; give at least one of {', '.join(_PROCESS_KEYS)}")
        return self

    @property
    def specificity(self) -> Specificity:
        if self.sha256 is not None:
            return Specificity.SHA256
        if self.path is not None:
            return Specificity.PATH
        return Specificity.GENERAL


def _enum_schema(values: list[str]) -> WithJsonSchema:
    item = {"type": "string", "enum": values}
    return WithJsonSchema({"anyOf": [item, {"type": "array", "items": item, "minItems": 1}]})


Protocols = Annotated[
    tuple[Protocol, ...], BeforeValidator(_as_lower_list), _enum_schema([p.value for p in Protocol])
]
Directions = Annotated[
    tuple[Direction, ...], BeforeValidator(_as_lower_list), _enum_schema([d.value for d in Direction])
]


class P2PConditions(_Model):
    """Peer-to-peer behaviour over the last scans (collect.behaviour; signals in policies/README.md)."""

    min_score: StrictInt = Field(
        default=3, ge=1, le=P2P_MAX_SCORE, description="Points of P2P evidence needed (of 9)."
    )
    min_peers: StrictInt = Field(
        default=8, ge=1, description="Distinct remote peers (addresses on non-service high ports) needed."
    )
    window_scans: StrictInt = Field(
        default=3, ge=1, le=P2P_MAX_WINDOW_SCANS, description="Scans the behaviour is accumulated over."
    )


class NetworkConditions(_Model):
    """Matched per connection of a process; all given keys must hold (AND)."""

    remote_port: Ports | None = Field(default=None, description="Remote port or range 'low-high'.")
    remote_address: Networks | None = Field(default=None, description="Remote IPv4/IPv6 address or CIDR.")
    local_port: Ports | None = Field(default=None, description="Local port or range (e.g. a listening port).")
    protocol: Protocols | None = Field(default=None, description="tcp or udp.")
    direction: Directions | None = Field(default=None, description="outbound, inbound or listen.")
    p2p: P2PConditions | None = Field(
        default=None,
        description="The process behaves like a peer-to-peer client (scored); other keys pick the socket.",
    )
    domain: Domains | None = Field(
        default=None,
        description="Domain the remote end was resolved from (or the DNS query's name): exact or '*.suffix'.",
    )
    domain_list: Texts | None = Field(
        default=None, description="Names of `domain_lists` of the policy; any of their domains matches."
    )

    @model_validator(mode="after")
    def _not_empty(self) -> NetworkConditions:
        if all(getattr(self, key) is None for key in _NETWORK_KEYS):
            raise ValueError(f"is empty; give at least one of {', '.join(_NETWORK_KEYS)}")
        return self

    @property
    def has_domains(self) -> bool:
        return self.domain is not None or self.domain_list is not None

    @property
    def domain_only(self) -> bool:
        """Only domain keys (and protocol/direction): the rule can be judged on a DNS query alone."""
        return self.has_domains and all(
            getattr(self, key) is None for key in ("remote_port", "remote_address", "local_port", "p2p")
        )

    @property
    def has_connection_keys(self) -> bool:
        """Whether a connection must match (anything besides `p2p` given)."""
        return any(getattr(self, key) is not None for key in _NETWORK_KEYS if key != "p2p")


class Rule(_Model):
    id: RuleId = Field(description="Unique id, [A-Za-z0-9_.:-]+; reported with every finding.")
    description: str | None = None
    category: Text | None = Field(
        default=None, description="Free text: p2p, remote-access, ... (defaults.category)."
    )
    action: RuleAction = Field(description="allow | report | block.")
    enabled: StrictBool = True
    severity: Severity | None = Field(
        default=None, description="low | medium | high | critical; falls back to defaults.severity."
    )
    message: Text | None = Field(
        default=None, description="Shown to the user; falls back to defaults.message."
    )
    help_url: HttpUrl | None = Field(
        default=None, description="Shown to the user; falls back to defaults.help_url."
    )
    process: ProcessConditions | None = None
    network: NetworkConditions | None = None
    unless: ProcessConditions | None = Field(
        default=None, description="A process matching this is never matched."
    )
    enforce: Enforce = Field(
        default=Enforce.PROCESS,
        description="process: stop the program (default); connection: refuse its connections (block rules).",
    )

    @model_validator(mode="after")
    def _connection_enforcement(self) -> Rule:
        if self.enforce is not Enforce.CONNECTION:
            return self
        if self.action is not RuleAction.BLOCK:
            raise ValueError("`enforce: connection` is only for `action: block` rules")
        net = self.network
        if net is None or not (net.has_domains or net.remote_address or net.remote_port):
            raise ValueError(
                "`enforce: connection` needs `network` with domain, domain_list, remote_address "
                "or remote_port"
            )
        if net.p2p is not None or net.local_port is not None:
            raise ValueError("`enforce: connection` cannot use `p2p` or `local_port`")
        if net.direction is not None and set(net.direction) != {Direction.OUTBOUND}:
            raise ValueError(
                "`enforce: connection` refuses outbound connections; direction may only be outbound"
            )
        extra = [k for k in _PROCESS_KEYS if self.process and getattr(self.process, k) is not None]
        if any(k not in _CONNECTION_PROCESS_KEYS for k in extra) or self.unless is not None:
            raise ValueError(
                "`enforce: connection` is applied machine-wide or per user: `process` may only give `user`, "
                "and `unless` is not allowed"
            )
        return self

    @model_validator(mode="after")
    def _has_conditions(self) -> Rule:
        if self.process is None and self.network is None:
            raise ValueError("has no conditions; give `process`, `network` or both")
        if self.action is RuleAction.ALLOW and self.network is not None:
            raise ValueError(
                "an allow rule approves processes and cannot have `network`; "
                "to exempt connections use `unless` on the rule that matches them"
            )
        if self.id == UNAPPROVED_RULE_ID:
            raise ValueError(f"rule id {UNAPPROVED_RULE_ID!r} is reserved for the unapproved-apps check")
        return self

    @property
    def specificity(self) -> Specificity:
        return self.process.specificity if self.process else Specificity.GENERAL


class Defaults(_Model):
    message: Text = Field(default=DEFAULT_MESSAGE, description="Message for rules without one.")
    help_url: HttpUrl | None = Field(default=None, description="Help link for rules without one.")
    category: Text = Field(default="uncategorized", description="Category for rules without one.")
    severity: Severity = Field(default=Severity.MEDIUM, description="Severity for rules without one.")


UnapprovedActionField = Annotated[UnapprovedAction, BeforeValidator(_false_is_off)]


class Unapproved(_Model):
    """Processes of interactive users that no allow rule approves."""

    action: UnapprovedActionField = Field(default=UnapprovedAction.OFF, description="off | report | block.")
    category: Text = "unapproved"
    severity: Severity | None = Field(default=None, description="Falls back to defaults.severity.")
    min_uid: StrictInt = Field(
        default=1000, ge=0, description="Only processes with uid >= min_uid are in scope."
    )
    exclude_users: tuple[Text, ...] = Field(
        default=(), description="Users whose processes are never flagged."
    )
    trust_package_manager: StrictBool = Field(
        default=True, description="Executables owned by a system package count as approved."
    )
    message: Text | None = None
    help_url: HttpUrl | None = None


class Policy(_Model):
    name: Text
    version: StrictInt = Field(ge=1, description="Increases with every published change.")
    mode: Mode = Mode.MONITOR
    description: str | None = None
    defaults: Defaults = Field(default_factory=Defaults)
    unapproved: Unapproved = Field(default_factory=Unapproved)
    rules: tuple[Rule, ...] = ()
    domain_lists: dict[RuleId, Domains] = Field(
        default_factory=dict,
        description="Named domain lists (categories) for `network.domain_list`; a policy file may give "
        "`{file: NAME}` instead of a list (resolved next to the policy when it is loaded or signed).",
    )

    @model_validator(mode="after")
    def _unique_ids(self) -> Policy:
        problems = duplicate_rule_ids([rule.id for rule in self.rules])
        if problems:
            raise PydanticCustomError("duplicate_rule_id", "; ".join(message for _, message in problems))
        return self

    @model_validator(mode="after")
    def _known_domain_lists(self) -> Policy:
        for rule in self.rules:
            for name in (rule.network.domain_list or ()) if rule.network else ():
                if name not in self.domain_lists:
                    known = ", ".join(sorted(self.domain_lists)) or "none"
                    raise PydanticCustomError(
                        "unknown_domain_list",
                        "rule {rule}: network.domain_list {name} is not in domain_lists (known: {known})",
                        {"rule": rule.id, "name": repr(name), "known": known},
                    )
        return self

    def rule_domains(self, rule: Rule) -> tuple[str, ...]:
        """Every domain pattern of a rule: its own and those of the lists it names."""
        net = rule.network
        if net is None:
            return ()
        out = list(net.domain or ())
        for name in net.domain_list or ():
            out.extend(self.domain_lists.get(name, ()))
        return tuple(dict.fromkeys(out))


def duplicate_rule_ids(ids: list[object]) -> list[tuple[int, str]]:
    """(index, message) for every rule whose id an earlier rule already uses."""
    seen: dict[object, int] = {}
    out: list[tuple[int, str]] = []
    for index, rule_id in enumerate(ids):
        if not isinstance(rule_id, str):
            continue
        if rule_id in seen:
            out.append((index, f"duplicate rule id {rule_id!r}, first used by rules[{seen[rule_id]}]"))
        else:
            seen[rule_id] = index
    return out


__all__ = [
    "DEFAULT_MESSAGE",
    "UNAPPROVED_RULE_ID",
    "Defaults",
    "Enforce",
    "Mode",
    "NetworkConditions",
    "P2PConditions",
    "Policy",
    "ProcessConditions",
    "Protocol",
    "Rule",
    "Severity",
    "Specificity",
    "Unapproved",
    "UnapprovedAction",
]
