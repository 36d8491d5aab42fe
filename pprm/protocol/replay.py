"""Seen-message cache: each message id is accepted once per sender.

Ids are kept until their message expires (plus clock skew), after which the
expiry check rejects the message anyway, so the cache stays bounded.
"""

from __future__ import annotations

import os

from pprm._fs import atomic_write_json, read_json
from pprm.errors import ReplayError, StateError
from pprm.protocol.envelope import CLOCK_SKEW

__all__ = ["ReplayCache"]


class ReplayCache:
    """A persistent per-sender set of message ids.

    Args:
        path: JSON file; callers hold the state lock around check-and-add.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def _load(self) -> dict[str, dict[str, int]]:
        if not os.path.exists(self.path):
            return {}
        try:
            data = read_json(self.path)
            return {str(s): {str(i): int(e) for i, e in ids.items()} for s, ids in data.items()}
        except (ValueError, AttributeError, TypeError):
            raise StateError("replay cache is corrupt") from None

    def check(self, sender: str, msg_id: str) -> None:
        """Raise if ``msg_id`` from ``sender`` was already accepted.

        Raises:
            ReplayError: seen before.
        """
        if msg_id in self._load().get(sender, {}):
            raise ReplayError(f"message {msg_id[:8]}... from {sender} was already processed")

    def add(self, sender: str, msg_id: str, expires: int, now: float) -> None:
        """Record ``msg_id`` and drop entries that can no longer be replayed.

        Raises:
            ReplayError: seen before.
        """
        data = self._load()
        ids = data.setdefault(sender, {})
        if msg_id in ids:
            raise ReplayError(f"message {msg_id[:8]}... from {sender} was already processed")
        ids[msg_id] = expires
        horizon = now - CLOCK_SKEW
        pruned = {s: {i: e for i, e in v.items() if e >= horizon} for s, v in data.items()}
        atomic_write_json(self.path, {s: v for s, v in pruned.items() if v})
