"""The migration tests reuse the fetcher tests' private Dovecot (``tests/fetch``)."""

from __future__ import annotations

from tests.fetch.test_dovecot import dovecot as dovecot

__all__ = ["dovecot"]
