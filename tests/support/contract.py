"""The keys every finding / violation JSON object has (DESIGN.md, "Contract")."""

CONTRACT_KEYS = frozenset(
    {
        "event_id",
        "rule_id",
        "category",
        "action",
        "pid",
        "process_name",
        "exe",
        "username",
        "reason",
        "detected_at",
        "policy_version",
    }
)
