"""Integration tests run the real endpoint-server (uvicorn, subprocess) on 127.0.0.1."""

from tests.support.server import live_server

__all__ = ["live_server"]
