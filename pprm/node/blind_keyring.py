"""Requester-side key pairs of the blind profile, with their rotation rules.

::

    DIR/blind-keys.json          key id -> peer, case, created, expires, retired
                                 [, announced_with]
    DIR/private/blind/KEY_ID.sk  the secret key (0600), deleted at retirement

A key pair serves one (peer, case) pair. It is retired after the first
follow-up sent under it (a follow-up reveals decrypted signs, so the key must
never decrypt a crafted ciphertext again), when its lifetime
(``blind_key_ttl``) ends, and when the operator or ``pprm ask`` abandons it
because the peer does not know it (:meth:`pprm.node.requester.Requester.abandon_keys`).
Retiring deletes the secret key: answers that arrive later cannot be
decrypted at all.

``announced_with`` is the id of the query whose delivery (or query file)
carried the key's announcement: every key is announced with the first query
made under it. Records written before pprm kept it have none.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import tenseal.sealapi as seal

from pprm._fs import atomic_write_json, read_json
from pprm.crypto import blind_keys, keys
from pprm.crypto.context import BlindContext
from pprm.errors import KeyRotationError, StateError

__all__ = ["BlindKeyring", "BlindKeyRecord"]


@dataclass(frozen=True)
class BlindKeyRecord:
    """One key pair's public metadata, as ``blind-keys.json`` keeps it.

    Attributes:
        key_id: the key id (a hash of the public key material).
        peer: the state the key serves.
        case: the case it serves.
        created: when it was made, seconds since the epoch.
        expires: when its lifetime ends.
        retired: why it was retired, or None while it is live.
        announced_with: the query whose delivery carried its announcement
            (None in records from before pprm kept it).
    """

    key_id: str
    peer: str
    case: str
    created: int
    expires: int
    retired: str | None
    announced_with: str | None = None

    def live(self, now: float) -> bool:
        """Whether a query made at ``now`` would use this key (not retired, lifetime not over)."""
        return self.retired is None and self.expires > now


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

    def records(self) -> list[BlindKeyRecord]:
        """Every key pair's metadata, oldest first.

        Raises:
            StateError: ``blind-keys.json`` is corrupt.
        """
        out = []
        for kid, e in self.entries().items():
            try:
                announced = e.get("announced_with")
                out.append(BlindKeyRecord(kid, str(e["peer"]), str(e["case"]), int(e["created"]),
                                          int(e["expires"]), None if e["retired"] is None else str(e["retired"]),
                                          None if announced is None else str(announced)))
            except (KeyError, TypeError, ValueError, AttributeError):
                raise StateError("blind-keys.json is corrupt") from None
        return sorted(out, key=lambda r: (r.created, r.key_id))

    def record(self, key_id: str) -> BlindKeyRecord:
        """One key pair's metadata.

        Raises:
            KeyRotationError: no key pair has that id.
        """
        for r in self.records():
            if r.key_id == key_id:
                return r
        raise KeyRotationError(f"no blind key {key_id!r} in this state: `pprm keys list` shows its keys")

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

    def store(self, pair: blind_keys.BlindKeyPair, peer: str, case: str, now: float, ttl: int,
              announced_with: str | None = None) -> None:
        """Keep a fresh key pair (from :func:`pprm.crypto.blind_keys.generate`) for (peer, case).

        The secret key is saved 0600; the caller holds the state lock.

        Args:
            pair: the key pair.
            peer: the state it serves.
            case: the case it serves.
            now: its creation time.
            ttl: its lifetime in seconds.
            announced_with: the query whose delivery carries its announcement.
        """
        os.makedirs(self._private, mode=0o700, exist_ok=True)
        keys.save_secret_key(pair.secret_key, os.path.join(self._private, f"{pair.key_id}.sk"))
        data = self.entries()
        data[pair.key_id] = {"peer": peer, "case": case, "created": int(now), "expires": int(now) + ttl,
                             "retired": None}
        if announced_with is not None:
            data[pair.key_id]["announced_with"] = announced_with
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
            raise KeyRotationError("unknown blind key id (not in blind-keys.json; `pprm keys list` shows this "
                                   "state's keys)")
        if e["retired"] is not None:
            raise KeyRotationError(f"blind key was retired ({e['retired']}); it decrypts nothing more: query "
                                   "again (the next blind query to that peer and case makes and announces a "
                                   "new key)")
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
