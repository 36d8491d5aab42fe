"""Opaque candidate tokens: authenticated encryption of a record id.

A token is ``SecretBox(k_R).encrypt(query_id | record_id | issued)`` where
``k_R`` is derived from the responder's token key and the requester's
identity fingerprint. So a token

* reveals nothing (random nonce: the same record gives unrelated tokens in
  two queries, or twice in one),
* opens only for the state it was released to, and
* cannot be forged or altered.

The responder keeps no table: the token carries what it needs, and the
record id is checked against the live gallery when resolved, so a removed
record can no longer be resolved.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

import nacl.exceptions
import nacl.secret

from pprm.errors import TokenError
from pprm.protocol import canonical

__all__ = ["TokenMinter", "TokenContent"]

_PAYLOAD = struct.Struct(">16sQQ")  # query id, record id, issued (unix seconds)
# Version tag in front of the base64: names the format, and keeps a token from
# starting with "-", which a command line would take for an option.
_PREFIX = "T1"


@dataclass(frozen=True)
class TokenContent:
    """What a token says once opened by its issuer."""

    query_id: str
    record_id: int
    issued: int


class TokenMinter:
    """Mints and opens tokens under one state's token key.

    Args:
        key: 32 secret bytes kept in the state's private directory.
    """

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise TokenError("token key must be 32 bytes")
        self._key = key

    def __repr__(self) -> str:
        return "TokenMinter(<key hidden>)"

    def _box(self, requester_fingerprint: bytes) -> nacl.secret.SecretBox:
        k = hashlib.blake2b(requester_fingerprint, key=self._key, digest_size=32,
                            person=b"pprm-token-key").digest()
        return nacl.secret.SecretBox(k)

    def mint(self, requester_fingerprint: bytes, query_id: str, record_id: int, issued: int) -> str:
        """A fresh token for ``record_id``, openable only for this requester."""
        payload = _PAYLOAD.pack(bytes.fromhex(query_id), record_id, issued)
        return _PREFIX + canonical.b64(bytes(self._box(requester_fingerprint).encrypt(payload)))

    def open(self, requester_fingerprint: bytes, token: str) -> TokenContent:
        """Open a token presented by a requester.

        Raises:
            TokenError: the token was not minted by us for this requester, or
                was altered.
        """
        if not isinstance(token, str) or not token.startswith(_PREFIX):
            raise TokenError("token was not issued by pprm (unknown format)")
        try:
            raw = canonical.unb64(token[len(_PREFIX):], "token")
            payload = self._box(requester_fingerprint).decrypt(raw)
        except (nacl.exceptions.CryptoError, nacl.exceptions.ValueError, ValueError):
            raise TokenError("token was not issued to this state, or was altered") from None
        if len(payload) != _PAYLOAD.size:
            raise TokenError("token payload is malformed")
        qid, rid, issued = _PAYLOAD.unpack(payload)
        return TokenContent(qid.hex(), rid, issued)
