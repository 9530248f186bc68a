"""Maildrops: the contract (``base``) and its backends (Maildir, in-memory)."""
