"""Public cards: self-signed, downgrade-checked, and free of secrets."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from pprm.crypto import params as param_sets
from pprm.errors import AuthenticationError, MessageError, ParameterError, PprmError
from pprm.protocol.canonical import encode
from pprm.protocol.card import CARD_FORMAT, make_card, parse_card
from tests.helpers import INSECURE_SEALED, fixed_identity, leak_forms, new_state, windows

DE = fixed_identity("DE")
FR = fixed_identity("FR")
PROD = "pprm-sealed-n8192-v1"
OTHER = "pprm-sealed-n4096-v1"
KEY_ID = "0123456789abcdef0123456789abcdef"


def _card(name: str = PROD, digest: str | None = None, *, ident=DE, dim: int = 512) -> bytes:
    ps = param_sets.get(name, allow_insecure=True)
    return make_card(ident, ps.name, ps.digest if digest is None else digest, dim, KEY_ID, 1_700_000_000)


def _signed(obj: dict[str, Any], ident=DE) -> bytes:
    """Re-sign an edited card as ``ident`` (a self-consistent card)."""
    body = {k: v for k, v in obj.items() if k != "signature"}
    body["signature"] = ident.sign(encode(body)).hex()
    return encode(body)


def test_make_and_parse() -> None:
    blob = _card()
    assert blob.endswith(b"\n") and blob.count(b"\n") == 1
    card = parse_card(blob)
    assert card.name == "DE"
    assert card.identity == DE.public
    assert (card.params, card.params_digest) == (PROD, param_sets.get(PROD).digest)
    assert (card.dim, card.key_id, card.created) == (512, KEY_ID, 1_700_000_000)
    assert parse_card(blob.rstrip(b"\n")) == card
    assert json.loads(blob)["format"] == CARD_FORMAT


@pytest.mark.parametrize(("field", "value"), [
    ("name", "FR"),
    ("verify_key", FR.public.verify_key.hex()),
    ("box_key", FR.public.box_key.hex()),
    ("params", OTHER),
    ("params_digest", param_sets.get(OTHER).digest),
    ("dim", 256),
    ("key_id", "f" * 32),
    ("created", 1_700_000_001),
    ("signature", "00" * 64),
])
def test_tampered_field_fails_authentication(field: str, value: object) -> None:
    obj = json.loads(_card())
    assert obj[field] != value
    obj[field] = value
    with pytest.raises(AuthenticationError):
        parse_card(encode(obj))


def test_every_byte_flip_is_refused() -> None:
    blob = _card().rstrip(b"\n")
    accepted = []
    for i in range(len(blob)):
        bad = bytearray(blob)
        bad[i] ^= 0x01
        try:
            parse_card(bytes(bad))
        except (MessageError, ParameterError):
            pass
        except PprmError as exc:  # another PprmError type would be a wrong error class
            accepted.append((i, type(exc).__name__))
        else:
            accepted.append((i, "accepted"))
    assert accepted == []


def test_insecure_parameters_refused_unless_allowed() -> None:
    blob = _card(INSECURE_SEALED)
    with pytest.raises(ParameterError):
        parse_card(blob)
    assert parse_card(blob, allow_insecure=True).params == INSECURE_SEALED


def test_digest_mismatch_is_a_downgrade() -> None:
    # Validly self-signed, but the digest is not that of the named set.
    with pytest.raises(ParameterError):
        parse_card(_card(PROD, param_sets.get(OTHER).digest))
    with pytest.raises(ParameterError):
        parse_card(_card(PROD, "0" * 64))


def test_unknown_parameter_set_is_refused() -> None:
    obj = json.loads(_card())
    obj["params"] = "pprm-sealed-n2048-v0"
    with pytest.raises(ParameterError):
        parse_card(_signed(obj))


@pytest.mark.parametrize("change", [
    {"format": "pprm-card/2"},
    {"extra": 1},
    {"name": "de"}, {"name": "D"}, {"name": "D" * 17}, {"name": 5},
    {"verify_key": "zz" * 32}, {"verify_key": "00" * 31}, {"verify_key": "00" * 33}, {"verify_key": None},
    {"box_key": "00" * 31}, {"box_key": 7},
    {"signature": "not hex"},
    {"dim": 0}, {"dim": 4097}, {"dim": "512"}, {"dim": True}, {"dim": 512.5},
    {"created": "now"}, {"created": 1.5},
    {"key_id": "0" * 31}, {"key_id": 5},
])
def test_malformed_cards_are_message_errors(change: dict[str, Any]) -> None:
    obj = json.loads(_card())
    obj.update(change)
    with pytest.raises(MessageError) as info:
        parse_card(_signed(obj) if "signature" not in change else encode(obj))
    assert not isinstance(info.value, AuthenticationError)


@pytest.mark.parametrize("field", ["name", "verify_key", "signature", "format"])
def test_missing_field_is_refused(field: str) -> None:
    obj = json.loads(_card())
    del obj[field]
    with pytest.raises(MessageError):
        parse_card(encode(obj))


@pytest.mark.parametrize(("blob", "message"), [
    ("{}", "a card must be bytes, got str; read the card file in binary mode, or encode the text as UTF-8"),
    (_card().decode(), "a card must be bytes, got str; read the card file in binary mode, or encode the text as UTF-8"),
    (None, "a card must be bytes, got NoneType"),
    (5, "a card must be bytes, got int"),
    (["{}"], "a card must be bytes, got list"),
])
def test_a_card_that_is_not_bytes_is_a_message_error(blob: object, message: str) -> None:
    with pytest.raises(MessageError) as info:
        parse_card(blob)  # type: ignore[arg-type]
    assert str(info.value) == message


def test_bytes_like_cards_parse() -> None:
    card = parse_card(_card())
    assert parse_card(bytearray(_card())) == card == parse_card(memoryview(_card()))
    for blob in (bytearray(b"{}"), memoryview(b"not json")):
        with pytest.raises(MessageError):
            parse_card(blob)


def test_non_canonical_and_oversized_cards_are_refused() -> None:
    obj = json.loads(_card())
    with pytest.raises(MessageError):
        parse_card(json.dumps(obj, indent=1).encode())
    with pytest.raises(MessageError, match="oversized"):
        parse_card(_card() + b"\n" * 4096)


def test_card_holds_no_private_key_material(tmp_path: Path) -> None:
    st = new_state(str(tmp_path / "s"), "DE")
    card = st.card_bytes
    with open(st.path("card.json"), "rb") as fh:
        assert fh.read() == card
    parse_card(card, allow_insecure=True)

    needles: list[bytes] = []
    for fname in sorted(os.listdir(st.path("private"))):
        with open(st.path("private", fname), "rb") as fh:
            secret = fh.read()
        if fname == "ckks-secret.key":
            # Large and partly structured: look for every 24-byte window past
            # the SEAL header, raw and in every text encoding.
            for w in windows(secret, 24, 24, skip=16):
                needles.extend(leak_forms(w))
        elif fname == "identity.key":
            for part in (secret, secret[:32], secret[32:]):
                needles.extend(leak_forms(part))
        else:
            needles.extend(leak_forms(secret))
    ident = st.identity()
    needles.extend(leak_forms(ident.signing_seed) + leak_forms(ident.box_secret))
    assert len(needles) > 100
    assert [n for n in needles if n in card] == []

    keys = list(json.loads(card))
    assert [k for k in keys if re.search(r"secret|private|seed|token", k, re.I)] == []
    assert set(keys) == {"format", "name", "verify_key", "box_key", "params", "params_digest", "dim",
                         "key_id", "created", "signature"}
