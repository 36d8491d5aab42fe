"""Requester-side key pairs of the blind profile, with their rotation rules.

::

    DIR/blind-keys.json          key id -> peer, case, created, expires, retired
    DIR/private/blind/KEY_ID.sk  the secret key (0600), deleted at retirement

A key pair serves one (peer, case) pair. It is retired after the first
follow-up sent under it (a follow-up reveals decrypted signs, so the key must
never decrypt a crafted ciphertext again) and when its lifetime
(``blind_key_ttl``) ends. Retiring deletes the secret key: answers that
arrive later cannot be decrypted at all.
"""

from __future__ import annotations

import os
from typing import Any

import tenseal.sealapi as seal

from pprm._fs import atomic_write_json, read_json
from pprm.crypto import blind_keys, keys
from pprm.crypto.context import BlindContext
from pprm.errors import KeyRotationError, StateError

__all__ = ["BlindKeyring"]


class BlindKeyring:
    """The blind-profile key pairs of one requesting state.

    Args:
        root: the state directory.
        ctx: the state's blind context.
    """

    def __init__(self, root: str, ctx: BlindContext) -> None:
        self.root = root
        self.ctx = ctx
        self._index = os.path.join(root, "blind-keys.json")
        self._private = os.path.join(root, "private", "blind")

    def __repr__(self) -> str:
        return f"BlindKeyring({self.root!r})"

    def entries(self) -> dict[str, dict[str, Any]]:
        """All key records by key id (public metadata only)."""
        if not os.path.exists(self._index):
            return {}
        data = read_json(self._index)
        if not isinstance(data, dict):
            raise StateError("blind-keys.json is corrupt")
        return data

    def active(self, peer: str, case: str, now: float) -> str | None:
        """The usable key id for (peer, case), or None."""
        for kid, e in self.entries().items():
            if e["peer"] == peer and e["case"] == case and e["retired"] is None and e["expires"] > now:
                return kid
        return None

    def retire_expired(self, now: float) -> list[str]:
        """Retire (and delete the secret keys of) every key past its lifetime; caller holds the lock.

        Returns:
            The key ids retired now.
        """
        gone = [kid for kid, e in self.entries().items() if e["retired"] is None and e["expires"] <= now]
        for kid in gone:
            self.retire(kid, "lifetime ended")
        return gone

    def store(self, pair: blind_keys.BlindKeyPair, peer: str, case: str, now: float, ttl: int) -> None:
        """Keep a fresh key pair (from :func:`pprm.crypto.blind_keys.generate`) for (peer, case).

        The secret key is saved 0600; the caller holds the state lock.
        """
        os.makedirs(self._private, mode=0o700, exist_ok=True)
        keys.save_secret_key(pair.secret_key, os.path.join(self._private, f"{pair.key_id}.sk"))
        data = self.entries()
        data[pair.key_id] = {"peer": peer, "case": case, "created": int(now), "expires": int(now) + ttl,
                             "retired": None}
        atomic_write_json(self._index, data)

    def expires(self, key_id: str) -> int:
        """When a key's lifetime ends."""
        return int(self.entries()[key_id]["expires"])

    def secret_key(self, key_id: str) -> seal.SecretKey:
        """The secret key of a live key pair.

        Raises:
            KeyRotationError: the key is unknown or retired (its secret key is gone).
        """
        e = self.entries().get(key_id)
        if e is None:
            raise KeyRotationError("unknown blind key id")
        if e["retired"] is not None:
            raise KeyRotationError(f"blind key was retired ({e['retired']}); it decrypts nothing more")
        return keys.load_secret_key(self.ctx, os.path.join(self._private, f"{key_id}.sk"))

    def retire(self, key_id: str, reason: str) -> None:
        """Retire a key and delete its secret key (caller holds the state lock)."""
        data = self.entries()
        if key_id not in data or data[key_id]["retired"] is not None:
            return
        data[key_id]["retired"] = reason
        atomic_write_json(self._index, data)
        path = os.path.join(self._private, f"{key_id}.sk")
        if os.path.exists(path):
            os.unlink(path)
