"""Per-account memory of unique ids: SQLite in WAL mode with ``synchronous = FULL``.

One row per UIDL the server has listed: when this machine first saw it (for
``delete_after_days``), when it was delivered and under which local name, whether a DELE
is owed (``delete_pending``: sent or to be sent, not yet committed by QUIT ``+OK``), and when
the deletion was committed. Every method is one transaction, and with ``synchronous =
FULL`` a transaction is on disk when the method returns: the session relies on this to
journal a delivery before it sends DELE.

Rows whose UIDL is absent from a complete listing are kept for ``grace`` seconds before
they are forgotten, so a server that briefly hides messages does not cause re-downloads.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from postoffice.durable import fsync_directory

if TYPE_CHECKING:
    from postoffice.fetch.fingerprint import Fingerprint

__all__ = ["Delivery", "Entry", "Journal", "journal_path"]

FORGET_AFTER = 30 * 86400.0
_ROWS_PER_INSERT = 100  # 900 parameters: under the 999 older SQLite versions allow

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    uidl TEXT PRIMARY KEY,
    first_seen REAL NOT NULL,
    delivered_at REAL,
    local_name TEXT,
    size INTEGER,
    delete_pending INTEGER NOT NULL DEFAULT 0,
    deleted_at REAL,
    gone_since REAL,
    header_hash TEXT,
    message_id TEXT,
    date TEXT
) WITHOUT ROWID;
"""
_ADDED_COLUMNS = {"header_hash": "TEXT", "message_id": "TEXT", "date": "TEXT"}


@dataclass(frozen=True, slots=True, kw_only=True)
class Entry:
    uidl: str
    first_seen: float
    delivered_at: float | None
    local_name: str | None
    delete_pending: bool
    deleted_at: float | None
    gone_since: float | None = None
    """When a complete listing first lacked this id (None while the server has it)."""

    @property
    def delivered(self) -> bool:
        return self.delivered_at is not None


Delivery = tuple[str, str, int, "Fingerprint | None"]
"""(uidl, local name, size, fingerprint) of one delivered message."""


def _fingerprint_columns(fingerprint: Fingerprint | None) -> tuple[str | None, ...]:
    if fingerprint is None:
        return (None, None, None)
    return (fingerprint.header_hash, fingerprint.message_id, fingerprint.date)


def journal_path(state_dir: Path, account: str) -> Path:
    return state_dir / f"{account}.journal.sqlite3"


class Journal:
    """The UIDL journal of one account. Not thread-safe: use from one task at a time.

    The database is opened (and created) by the first call that uses it, not by the
    constructor: the session's first call runs in a worker thread while the server is
    asked (opening takes a few milliseconds, and an fsync of the folder when it is new).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._connection: sqlite3.Connection | None = None

    @property
    def _db(self) -> sqlite3.Connection:
        if self._connection is None:
            self._connection = self._open(self.path)
        return self._connection

    @staticmethod
    def _open(path: Path) -> sqlite3.Connection:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        created = not path.exists()
        # isolation_level=None: we issue BEGIN/COMMIT ourselves. check_same_thread=False:
        # the session calls us through asyncio.to_thread, one call at a time.
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = FULL")  # fsync the WAL at every commit
            db.execute("PRAGMA busy_timeout = 10000")  # someone reading it with sqlite3
            db.executescript(_SCHEMA)
            columns = {row[1] for row in db.execute("PRAGMA table_info(messages)")}
            for column, kind in _ADDED_COLUMNS.items():
                if column not in columns:  # a journal written before fingerprints existed
                    db.execute(f"ALTER TABLE messages ADD COLUMN {column} {kind}")
            if created:
                fsync_directory(path.parent)  # the new file's name must survive a crash too
        except BaseException:
            db.close()
            raise
        return db

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed (durably) on leaving, rolled back on an error."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _write(self, sql: str, rows: Iterable[tuple[object, ...]]) -> None:
        with self._transaction() as db:
            db.executemany(sql, rows)

    def entries(self) -> dict[str, Entry]:
        rows = self._db.execute(
            "SELECT uidl, first_seen, delivered_at, local_name, delete_pending, deleted_at, "
            "gone_since FROM messages"
        )
        return {
            row[0]: Entry(
                uidl=row[0],
                first_seen=row[1],
                delivered_at=row[2],
                local_name=row[3],
                delete_pending=bool(row[4]),
                deleted_at=row[5],
                gone_since=row[6],
            )
            for row in rows
        }

    def record_listing(self, present: Iterable[str], now: float, *, complete: bool) -> None:
        """Note every listed UIDL's first sighting; after a ``complete`` listing, age out
        rows the server no longer has, and settle DELEs the server did commit."""
        listed = list(present)
        with self._transaction() as db:
            db.executemany(
                "INSERT INTO messages (uidl, first_seen) VALUES (?, ?) "
                "ON CONFLICT (uidl) DO UPDATE SET gone_since = NULL",
                [(uidl, now) for uidl in listed],
            )
            if complete:
                db.execute("CREATE TEMP TABLE IF NOT EXISTS listed (uidl TEXT PRIMARY KEY)")
                db.execute("DELETE FROM listed")
                db.executemany("INSERT OR IGNORE INTO listed VALUES (?)", [(u,) for u in listed])
                absent = "uidl NOT IN (SELECT uidl FROM listed)"
                # A DELE whose QUIT +OK we never saw, yet the message is gone: it committed.
                db.execute(
                    f"UPDATE messages SET delete_pending = 0, deleted_at = ? "  # noqa: S608
                    f"WHERE delete_pending = 1 AND {absent}",
                    (now,),
                )
                db.execute(
                    f"UPDATE messages SET gone_since = ? WHERE gone_since IS NULL AND {absent}",  # noqa: S608
                    (now,),
                )
                db.execute("DELETE FROM messages WHERE gone_since < ?", (now - FORGET_AFTER,))

    def record_delivered(
        self, uidl: str, *, local_name: str, size: int, now: float, delete: bool
    ) -> None:
        """The message is durable locally; with ``delete`` a DELE is owed from now on."""
        self.record_delivered_many([(uidl, local_name, size, None)], now=now, delete=delete)

    def record_delivered_many(
        self, deliveries: Iterable[Delivery], *, now: float, delete: bool
    ) -> None:
        """``record_delivered`` for (uidl, local name, size, fingerprint) tuples, in one
        transaction."""
        rows = [
            (uidl, now, now, name, size, int(delete), *_fingerprint_columns(fingerprint))
            for uidl, name, size, fingerprint in deliveries
        ]
        # Many rows per statement: each step lets go of the GIL and waits to take it back,
        # behind the event loop, when called from the group commit's thread.
        chunks = [
            rows[start : start + _ROWS_PER_INSERT]
            for start in range(0, len(rows), _ROWS_PER_INSERT)
        ]
        with self._transaction() as db:
            for chunk in chunks:
                values = ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?)"] * len(chunk))
                db.execute(
                    "INSERT INTO messages (uidl, first_seen, delivered_at, local_name, size, "  # noqa: S608
                    f"delete_pending, header_hash, message_id, date) VALUES {values} "
                    "ON CONFLICT (uidl) DO UPDATE SET delivered_at = excluded.delivered_at, "
                    "local_name = excluded.local_name, size = excluded.size, "
                    "delete_pending = excluded.delete_pending, "
                    "header_hash = excluded.header_hash, "
                    "message_id = excluded.message_id, date = excluded.date",
                    [value for row in chunk for value in row],
                )

    def fingerprints(
        self,
    ) -> tuple[dict[str, str], dict[tuple[str, str | None, int], str]]:
        """Local names of delivered messages by header hash, and by (Message-ID, Date,
        size)."""
        by_hash: dict[str, str] = {}
        by_fields: dict[tuple[str, str | None, int], str] = {}
        rows = self._db.execute(
            "SELECT local_name, header_hash, message_id, date, size FROM messages "
            "WHERE delivered_at IS NOT NULL AND header_hash IS NOT NULL"
        )
        for name, header_hash, message_id, date, size in rows:
            by_hash.setdefault(header_hash, name)
            if message_id:
                by_fields.setdefault((message_id, date, size), name)
        return by_hash, by_fields

    def mark_delete_pending(self, uidls: Iterable[str]) -> None:
        """A DELE is owed for these (expired in keep mode, or oversize to be deleted)."""
        self._write("UPDATE messages SET delete_pending = 1 WHERE uidl = ?", [(u,) for u in uidls])

    def record_deleted(self, uidls: Iterable[str], now: float) -> None:
        """QUIT was answered ``+OK``: these deletions are committed on the server."""
        deleted = list(uidls)
        with self._transaction() as db:
            # A hundred rows per statement, as in record_delivered_many.
            for start in range(0, len(deleted), _ROWS_PER_INSERT):
                chunk = deleted[start : start + _ROWS_PER_INSERT]
                marks = ", ".join(["?"] * len(chunk))
                db.execute(
                    "UPDATE messages SET delete_pending = 0, deleted_at = ? "  # noqa: S608
                    f"WHERE uidl IN ({marks})",
                    (now, *chunk),
                )

    def import_delivered(self, uids: Mapping[str, float | None], now: float) -> None:
        """Record ids another fetcher already fetched, keeping the earliest first-seen."""
        self._write(
            "INSERT INTO messages (uidl, first_seen, delivered_at, local_name) "
            "VALUES (?, ?, ?, '(imported)') ON CONFLICT (uidl) DO UPDATE SET "
            "first_seen = MIN(first_seen, excluded.first_seen), "
            "delivered_at = COALESCE(delivered_at, excluded.delivered_at), "
            "local_name = COALESCE(local_name, excluded.local_name)",
            [(uid, now if seen is None else min(seen, now), now) for uid, seen in uids.items()],
        )

    def adopt(self, delivered: Mapping[str, str], now: float) -> None:
        """Record deliveries found on disk but missing here (a crash before the journal)."""
        self._write(
            "UPDATE messages SET delivered_at = ?, local_name = ? WHERE uidl = ? "
            "AND delivered_at IS NULL",
            [(now, name, uidl) for uidl, name in delivered.items()],
        )
