"""Fuzzing the protocol core with whole sessions (``make fuzz`` for a long run)."""
