"""The wire contract shared by the agent, the server and the admin tool: one definition of each.

    errors       the policy-format errors (the root of the agent's error tree)
    timestamps   the one ISO 8601 UTC format every record and request uses
    envelope     the signed policy envelope (Ed25519): sign, verify, read keys

Written on one side, validated on the other. It depends only on the standard library, pydantic
and cryptography, and imports nothing of the agent, the server or the admin tool. Nothing heavy is
imported here: a standalone agent never loads cryptography (`envelope` does).
"""
