"""`make demo`: the whole story on one machine (see __main__.py)."""
