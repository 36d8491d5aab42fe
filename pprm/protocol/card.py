"""The public card: what a state publishes so peers can trust it.

A card names the state, carries its Ed25519 verify key and X25519 box key,
its parameter set (name and digest), template dimension and CKKS key id, and
is self-signed, which proves possession of the signing key. It contains no
secret: a test checks the bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pprm.crypto import params as param_sets
from pprm.crypto.identity import Identity, PublicIdentity
from pprm.errors import MessageError, ParameterError, StateError
from pprm.protocol import canonical

__all__ = ["Card", "make_card", "parse_card", "CARD_FORMAT"]

CARD_FORMAT = "pprm-card/1"
_NAME = re.compile(r"^[A-Z][A-Z0-9-]{1,15}$")
_MAX_CARD = 4096


@dataclass(frozen=True)
class Card:
    """A verified public card."""

    identity: PublicIdentity
    params: str
    params_digest: str
    dim: int
    key_id: str
    created: int

    @property
    def name(self) -> str:
        return self.identity.name


def _unsigned(card: Card) -> dict[str, Any]:
    return {"format": CARD_FORMAT, "name": card.name, "verify_key": card.identity.verify_key.hex(),
            "box_key": card.identity.box_key.hex(), "params": card.params,
            "params_digest": card.params_digest, "dim": card.dim, "key_id": card.key_id,
            "created": card.created}


def make_card(identity: Identity, params: str, params_digest: str, dim: int, key_id: str,
              created: int) -> bytes:
    """Build and self-sign a card.

    Returns:
        Canonical JSON bytes (with a trailing newline for terminals).
    """
    card = Card(identity.public, params, params_digest, dim, key_id, created)
    body = _unsigned(card)
    body["signature"] = identity.sign(canonical.encode(body)).hex()
    return canonical.encode(body) + b"\n"


def parse_card(blob: bytes | bytearray | memoryview, *, allow_insecure: bool = False) -> Card:
    """Verify a card's self-signature and that its parameters are allowed.

    Args:
        blob: card bytes as printed by ``pprm card`` (``bytes``,
            ``bytearray`` or ``memoryview``).
        allow_insecure: accept ``INSECURE*`` parameter sets (tests only).

    Returns:
        The card.

    Raises:
        MessageError: not bytes (a ``str`` too: a card is signed bytes, and
            decoding is the caller's choice to make), or a malformed card.
        AuthenticationError: the self-signature does not verify.
        ParameterError: the parameter set is unknown, insecure or its digest
            does not match (downgrade attempt).
    """
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        hint = "; read the card file in binary mode, or encode the text as UTF-8" if isinstance(blob, str) else ""
        raise MessageError(f"a card must be bytes, got {type(blob).__name__}{hint}")
    blob = bytes(blob)
    if len(blob) > _MAX_CARD:
        raise MessageError("card is oversized")
    obj = canonical.decode(blob.rstrip(b"\n"), "card")
    want = {"format", "name", "verify_key", "box_key", "params", "params_digest", "dim", "key_id",
            "created", "signature"}
    if set(obj) != want or obj["format"] != CARD_FORMAT:
        raise MessageError("card has unexpected fields or format")
    try:
        name = obj["name"]
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ValueError
        ident = PublicIdentity(name, bytes.fromhex(obj["verify_key"]), bytes.fromhex(obj["box_key"]))
        sig = bytes.fromhex(obj["signature"])
        dim, created, key_id = obj["dim"], obj["created"], obj["key_id"]
        if type(dim) is not int or not 1 <= dim <= 4096 or type(created) is not int:
            raise ValueError
        if not isinstance(key_id, str) or len(key_id) != 32:
            raise ValueError
    # StateError: PublicIdentity refuses keys that are not 32 bytes long.
    except (TypeError, ValueError, AttributeError, StateError):
        raise MessageError("card has a malformed field") from None
    unsigned = dict(obj)
    del unsigned["signature"]
    ident.verify(canonical.encode(unsigned), sig)
    ps = param_sets.get(str(obj["params"]), allow_insecure=allow_insecure)
    if ps.digest != obj["params_digest"]:
        raise ParameterError(f"card of {name} claims a different digest for {ps.name}")
    return Card(ident, ps.name, ps.digest, dim, key_id, created)
