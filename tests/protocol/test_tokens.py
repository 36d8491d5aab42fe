"""Candidate tokens: open only for their issuer and requester, unlinkable, unforgeable."""

from __future__ import annotations

import hashlib

import nacl.secret
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pprm.errors import TokenError
from pprm.protocol.canonical import b64, unb64
from pprm.protocol.messages import AnswerBody, FollowUpBody
from pprm.protocol.tokens import TokenContent, TokenMinter

KEY = hashlib.sha256(b"pprm-test/token-key").digest()
OTHER_KEY = hashlib.sha256(b"pprm-test/other-token-key").digest()
REQ_A = hashlib.blake2b(b"A", digest_size=16).digest()
REQ_B = hashlib.blake2b(b"B", digest_size=16).digest()
QID = "00112233445566778899aabbccddeeff"
ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


@settings(max_examples=100)
@given(qid=st.binary(min_size=16, max_size=16).map(bytes.hex), rid=st.integers(0, 2**64 - 1),
       issued=st.integers(0, 2**64 - 1), fpr=st.binary(min_size=16, max_size=16))
def test_property_round_trip(qid: str, rid: int, issued: int, fpr: bytes) -> None:
    m = TokenMinter(KEY)
    tok = m.mint(fpr, qid, rid, issued)
    assert m.open(fpr, tok) == TokenContent(qid, rid, issued)


def test_token_fits_the_message_formats() -> None:
    tok = TokenMinter(KEY).mint(REQ_A, QID, 7, 1_700_000_000)
    assert AnswerBody.from_bytes(AnswerBody(QID, True, (tok,)).to_bytes()).candidates == (tok,)
    assert FollowUpBody.from_bytes(FollowUpBody(QID, tok).to_bytes()).token == tok


def test_token_for_a_does_not_open_for_b() -> None:
    m = TokenMinter(KEY)
    tok = m.mint(REQ_A, QID, 7, 1)
    with pytest.raises(TokenError):
        m.open(REQ_B, tok)
    assert m.open(REQ_A, tok).record_id == 7


def test_wrong_key_fails() -> None:
    tok = TokenMinter(KEY).mint(REQ_A, QID, 7, 1)
    with pytest.raises(TokenError):
        TokenMinter(OTHER_KEY).open(REQ_A, tok)


def test_two_mints_of_one_record_are_unlinkable() -> None:
    m = TokenMinter(KEY)
    toks = {m.mint(REQ_A, QID, 7, 1) for _ in range(20)}
    assert len(toks) == 20
    raws = [unb64(t[2:], "t") for t in toks]
    # Not even a common prefix (the nonce leads) or common ciphertext bytes.
    assert len({r[:24] for r in raws}) == 20
    assert len({r[24:] for r in raws}) == 20
    # All of them still open to the same content.
    assert {m.open(REQ_A, t) for t in toks} == {TokenContent(QID, 7, 1)}


def test_every_altered_character_fails() -> None:
    m = TokenMinter(KEY)
    tok = m.mint(REQ_A, QID, 7, 1)
    for i, ch in enumerate(tok):
        for repl in (ALPHABET[(ALPHABET.index(ch) + 1) % 64], ALPHABET[(ALPHABET.index(ch) + 33) % 64]):
            bad = tok[:i] + repl + tok[i + 1:]
            with pytest.raises(TokenError):
                m.open(REQ_A, bad)


def test_every_flipped_byte_fails() -> None:
    m = TokenMinter(KEY)
    raw = unb64(m.mint(REQ_A, QID, 7, 1)[2:], "t")
    for i in range(len(raw)):
        bad = bytearray(raw)
        bad[i] ^= 0x01
        with pytest.raises(TokenError):
            m.open(REQ_A, "T1" + b64(bytes(bad)))


@pytest.mark.parametrize("bad", ["", "A", "AAAA", "!" * 96, "A" * 95, None, 5])
def test_garbage_tokens_fail(bad: object) -> None:
    with pytest.raises(TokenError):
        TokenMinter(KEY).open(REQ_A, bad)  # type: ignore[arg-type]


def test_truncated_and_extended_tokens_fail() -> None:
    m = TokenMinter(KEY)
    raw = unb64(m.mint(REQ_A, QID, 7, 1)[2:], "t")
    for n in range(len(raw)):
        with pytest.raises(TokenError):
            m.open(REQ_A, "T1" + b64(raw[:n]))
    with pytest.raises(TokenError):
        m.open(REQ_A, "T1" + b64(raw + b"\x00"))


def test_valid_box_with_wrong_payload_length_fails() -> None:
    # Something our key did encrypt, but not a token payload.
    m = TokenMinter(KEY)
    k = hashlib.blake2b(REQ_A, key=KEY, digest_size=32, person=b"pprm-token-key").digest()
    forged = "T1" + b64(bytes(nacl.secret.SecretBox(k).encrypt(b"short")))
    with pytest.raises(TokenError, match="malformed"):
        m.open(REQ_A, forged)


@pytest.mark.parametrize("key", [b"", b"\x00" * 31, b"\x00" * 33])
def test_key_must_be_32_bytes(key: bytes) -> None:
    with pytest.raises(TokenError):
        TokenMinter(key)


def test_repr_hides_the_key() -> None:
    text = repr(TokenMinter(KEY))
    assert KEY.hex() not in text
    assert b64(KEY) not in text
    assert "hidden" in text


def test_tokens_carry_a_format_tag_and_never_look_like_options() -> None:
    m = TokenMinter(KEY)
    toks = [m.mint(REQ_A, QID, i, 1) for i in range(200)]
    assert all(t.startswith("T1") for t in toks)
    with pytest.raises(TokenError, match="unknown format"):
        m.open(REQ_A, toks[0][2:])
