"""Seen-message cache: each message id is accepted once per sender.

Ids are kept until their message expires (plus clock skew), after which the
expiry check rejects the message anyway, so the cache stays bounded.

The cache is the ``replay`` table of the state's database
(:mod:`pprm.protocol.statedb`), under the logical name its former JSON file
gives it: ``ReplayCache(DIR/replay.json)`` and, say, ``ReplayCache(DIR/other.json)``
share ``DIR/state.db`` and never see each other's ids. A ``replay.json`` left by an earlier pprm is
imported on first use and deleted.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Mapping

from pprm.errors import ReplayError, StateError
from pprm.protocol.envelope import CLOCK_SKEW
from pprm.protocol.statedb import Legacy, StateDB, locate

__all__ = ["ReplayCache"]

Seen = dict[str, dict[str, int]]


class ReplayCache:
    """A persistent per-sender set of message ids.

    Args:
        path: the cache's former JSON file (``DIR/replay.json``): the cache
            lives in ``DIR/state.db`` under the file's name without
            ``.json``, and that file, if it exists, is imported on first use.
            Callers hold the state lock around check-and-add.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        directory, self.name = locate(path)
        self._db = StateDB(directory)
        self._legacy = Legacy(path, self.name, self._parse, self._load)

    def __repr__(self) -> str:
        return f"ReplayCache({self.path!r})"

    def _parse(self, raw: bytes) -> Seen:
        try:
            data = json.loads(raw)
            seen = {str(s): {str(i): int(e) for i, e in ids.items()} for s, ids in data.items()}
            if any(not -(1 << 62) < e < 1 << 62 for ids in seen.values() for e in ids.values()):
                raise ValueError("expiry out of range")
            return seen
        except (ValueError, AttributeError, TypeError):
            raise StateError(f"{os.path.basename(self.path)} (replay cache) is corrupt") from None

    def _load(self, conn: sqlite3.Connection, seen: Seen) -> int:
        rows = ((self.name, s, i, e) for s, ids in seen.items() for i, e in ids.items())
        # The later expiry wins: an id is refused as long as either copy would refuse it.
        conn.executemany("INSERT INTO replay (cache, sender, msg_id, expires) VALUES (?, ?, ?, ?) "
                         "ON CONFLICT (cache, sender, msg_id) DO UPDATE SET expires = max(expires, excluded.expires)",
                         rows)
        return sum(len(ids) for ids in seen.values())

    def _seen(self, conn: sqlite3.Connection, sender: str, msg_id: str) -> bool:
        row = conn.execute("SELECT 1 FROM replay WHERE cache = ? AND sender = ? AND msg_id = ?",
                           (self.name, sender, msg_id)).fetchone()
        return row is not None

    def check(self, sender: str, msg_id: str) -> None:
        """Raise if ``msg_id`` from ``sender`` was already accepted.

        Args:
            sender: the sending state.
            msg_id: the message's id.

        Raises:
            ReplayError: seen before.
            StateError: the database (or a legacy ``replay.json``) is corrupt.
        """
        with self._db.read(self._legacy) as conn:
            if conn is not None and self._seen(conn, sender, msg_id):
                raise ReplayError(f"message {msg_id[:8]}... from {sender} was already processed")

    def add(self, sender: str, msg_id: str, expires: int, now: float) -> None:
        """Record ``msg_id`` and drop entries that can no longer be replayed, in one durable transaction.

        Args:
            sender: the sending state.
            msg_id: the message's id.
            expires: the message's expiry; the id is kept until ``expires + CLOCK_SKEW``.
            now: the time the message was handled (prunes ids whose message
                expired more than ``CLOCK_SKEW`` before it).

        Raises:
            ReplayError: seen before (nothing is written).
            StateError: the database is corrupt or unwritable.

        Warning:
            An id is forgotten once its message expired more than
            ``CLOCK_SKEW`` before ``now``: from then on the envelope's expiry
            check refuses the message, and only that check does. A verifier
            must check expiry with the same skew (``open_envelope`` does).
        """
        with self._db.write(self._legacy) as conn:
            if self._seen(conn, sender, msg_id):
                raise ReplayError(f"message {msg_id[:8]}... from {sender} was already processed")
            conn.execute("INSERT INTO replay (cache, sender, msg_id, expires) VALUES (?, ?, ?, ?)",
                         (self.name, sender, msg_id, int(expires)))
            conn.execute("DELETE FROM replay WHERE cache = ? AND expires < ?", (self.name, now - CLOCK_SKEW))

    def entries(self) -> Seen:
        """Every id kept, by sender: what ``replay.json`` held (O(entries); for copying and checking).

        Returns:
            Sender -> message id -> expiry.

        Raises:
            StateError: the database is corrupt.
        """
        out: Seen = {}
        with self._db.read(self._legacy) as conn:
            if conn is not None:
                for sender, msg_id, expires in conn.execute(
                        "SELECT sender, msg_id, expires FROM replay WHERE cache = ? ORDER BY sender, msg_id",
                        (self.name,)):
                    out.setdefault(sender, {})[msg_id] = expires
        return out

    def merge(self, seen: Mapping[str, Mapping[str, int]]) -> int:
        """Add ids in bulk, as a union (an id already kept keeps the later expiry); nothing is pruned.

        What a split or a join needs (both sides refuse what either had seen),
        and a fast way to fill a cache.

        Args:
            seen: sender -> message id -> expiry, as :meth:`entries` returns.

        Returns:
            How many ids were given.

        Raises:
            StateError: the database is corrupt or unwritable.
        """
        with self._db.write(self._legacy) as conn:
            return self._load(conn, {s: dict(ids) for s, ids in seen.items()})
