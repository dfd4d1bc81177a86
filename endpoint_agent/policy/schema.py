"""JSON Schema of the policy file, generated from the models.

    python -m endpoint_agent.policy.schema > policies/schema.json

A test fails when policies/schema.json differs from what this prints.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from endpoint_agent.policy.model import Policy

SCHEMA_ID = "https://endpoint-agent.invalid/policy.schema.json"


def policy_json_schema() -> dict[str, Any]:
    schema = Policy.model_json_schema(mode="validation")
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID, **schema}


def render_schema() -> str:
    return json.dumps(policy_json_schema(), indent=2, sort_keys=True) + "\n"


def main() -> int:
    sys.stdout.write(render_schema())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
