"""Putting messages into maildrops."""
