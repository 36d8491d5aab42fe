"""Edge cases of the identity primitives (the kind Wycheproof collects), as far as PyNaCl exposes them.

The cases are written out here from the curves' published structure: the
small-order points of Curve25519 (the list libsodium refuses) and
non-canonical Ed25519 signatures. ``tests/crypto/test_wycheproof.py`` runs
Wycheproof's own vectors.
"""

from __future__ import annotations

import json

import pytest

from pprm.crypto import params
from pprm.crypto.identity import Identity, PublicIdentity, verify_signature
from pprm.errors import AuthenticationError, MessageError, StateError
from pprm.protocol import canonical
from pprm.protocol.card import make_card, parse_card

# Curve25519 points of small order (x-coordinates, little-endian), including
# the non-canonical encodings p - 1, p and p + 1.
SMALL_ORDER = [
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0100000000000000000000000000000000000000000000000000000000000000",
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
    "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
]
# The order of the Ed25519 base point.
L = 2**252 + 27742317777372353535851937790883648493
ME = Identity.generate("DE")


@pytest.mark.parametrize("point", SMALL_ORDER)
def test_small_order_x25519_keys_are_refused(point: str) -> None:
    with pytest.raises(StateError, match="small-order"):
        PublicIdentity("FR", bytes(ME.public.verify_key), bytes.fromhex(point))


@pytest.mark.parametrize("point", SMALL_ORDER[:3])
def test_a_card_with_a_small_order_box_key_is_refused(point: str) -> None:
    # A card validly self-signed over a weak box key: only the key check can refuse it.
    ps = params.get("pprm-sealed-n8192-v1")
    obj = json.loads(make_card(ME, ps.name, ps.digest, 512, "cd" * 16, 1_700_000_000))
    obj["box_key"] = point
    del obj["signature"]
    obj["signature"] = ME.sign(canonical.encode(obj)).hex()
    with pytest.raises(MessageError, match="malformed"):
        parse_card(canonical.encode(obj))


def test_non_canonical_signature_scalar_is_refused() -> None:
    msg = b"pprm edge case"
    sig = ME.sign(msg)
    ME.public.verify(msg, sig)
    s = int.from_bytes(sig[32:], "little")
    # S + L is the same point arithmetic mod L, but not canonical: must be refused (malleability).
    malleated = sig[:32] + (s + L).to_bytes(32, "little")
    with pytest.raises(AuthenticationError):
        ME.public.verify(msg, malleated)


@pytest.mark.parametrize("sig", [bytes(64), b"\x01" + bytes(63), bytes(32) + L.to_bytes(32, "little"),
                                 b"\xff" * 64, bytes(63)])
def test_degenerate_signatures_are_refused(sig: bytes) -> None:
    with pytest.raises(AuthenticationError):
        ME.public.verify(b"anything", sig)


def test_small_order_verify_key_is_refused_and_verifies_nothing() -> None:
    # The identity point as a verify key: a classic universal-forgery key. It is refused
    # as a peer's key, and the raw check refuses the forgeries anyway.
    key = bytes.fromhex(SMALL_ORDER[1])
    with pytest.raises(StateError, match="small- or mixed-order"):
        PublicIdentity("XX", key, bytes(ME.public.box_key))
    for sig in (bytes(64), key + bytes(32)):
        with pytest.raises(AuthenticationError):
            verify_signature(key, b"forged", sig)
