"""Endpoint usage policy agent."""

__version__ = "0.1.0"
