"""Canonical JSON and strict base64: one encoding per value, everything else refused."""

from __future__ import annotations

import base64
import contextlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pprm.errors import MessageError
from pprm.protocol.canonical import b64, decode, encode, unb64

JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63),
                         st.text(max_size=20))
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=20)
JSON_OBJECTS = st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=6)


def test_encoding_is_sorted_compact_ascii() -> None:
    assert encode({"b": 1, "a": [True, None, "é"]}) == b'{"a":[true,null,"\\u00e9"],"b":1}'


@settings(max_examples=200)
@given(JSON_OBJECTS)
def test_property_decode_inverts_encode(obj: dict[str, Any]) -> None:
    blob = encode(obj)
    assert blob.isascii()
    assert decode(blob, "x") == obj


@pytest.mark.parametrize("blob", [
    b'{"a": 1}',             # white space after the colon
    b' {"a":1}',             # leading white space
    b'{"a":1}\n',            # trailing newline
    b'{"a":1,"b":2 }',
    b'{"b":1,"a":2}',        # keys out of order
    b'{"a":{"d":1,"c":2}}',  # nested keys out of order
    b'{"a":1,"a":1}',        # duplicate key
    b'{"a":"\\u0041"}',      # escape of a printable ASCII character
    b'{"a":"\\u00E9"}',      # upper-case hex escape
    b'{"a":"\\/"}',          # needless escape of a slash
    b'{"a":1E2}',            # exponent spelling
    b'{"a":1.50}',           # trailing zero
    b'{"a":01}',             # leading zero (not even JSON)
    b'{"a":-0}',             # negative zero integer
])
def test_non_canonical_spellings_are_rejected(blob: bytes) -> None:
    with pytest.raises(MessageError):
        decode(blob, "test")


def test_raw_non_ascii_is_rejected() -> None:
    # The canonical form escapes non-ASCII; raw UTF-8 is another spelling.
    assert decode(b'{"a":"\\u00e9"}', "t") == {"a": "é"}
    with pytest.raises(MessageError):
        decode('{"a":"é"}'.encode(), "t")
    with pytest.raises(MessageError):
        decode(b'{"a":"\xff"}', "t")


@pytest.mark.parametrize("blob", [
    b'{"a":NaN}', b'{"a":Infinity}', b'{"a":-Infinity}', b'{"a":1e400}', b'{"a":[NaN]}',
])
def test_non_finite_numbers_are_rejected(blob: bytes) -> None:
    with pytest.raises(MessageError):
        decode(blob, "test")


def test_non_finite_numbers_cannot_be_encoded() -> None:
    with pytest.raises(ValueError):
        encode({"a": float("nan")})


@pytest.mark.parametrize("blob", [b"", b"[]", b"1", b'"a"', b"null", b"{", b'{"a":1}{}', b"\x00"])
def test_non_objects_and_broken_json_are_rejected(blob: bytes) -> None:
    with pytest.raises(MessageError):
        decode(blob, "test")


def test_deep_nesting_is_rejected_cleanly() -> None:
    with pytest.raises(MessageError):
        decode(b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "test")


def test_error_names_what_was_decoded() -> None:
    with pytest.raises(MessageError, match="answer body"):
        decode(b"[]", "answer body")


# -- base64 -----------------------------------------------------------------

@settings(max_examples=200)
@given(st.binary(max_size=100))
def test_property_b64_round_trip(data: bytes) -> None:
    text = b64(data)
    assert "=" not in text
    assert set(text) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert unb64(text, "x") == data


def test_b64_is_url_safe_unpadded() -> None:
    assert b64(b"\xfb\xff") == "-_8"
    assert b64(b"") == ""
    assert unb64("-_8", "x") == b"\xfb\xff"


@pytest.mark.parametrize("text", [
    "QQ==",        # padding
    "QQ=",
    "QUI=",
    "+/8",         # standard alphabet
    "ab/c",
    "QR",          # non-zero unused bits: a second spelling of b"A"
    "QUJ",         # same for two bytes: canonical is "QUI"
    "A",           # impossible length
    "AAAAA",
    "Q Q",         # white space
    "QQ\n",
    "QQ!",         # characters outside any alphabet
    "QQ.",
    "é",
])
def test_b64_rejects_non_canonical_text(text: str) -> None:
    with pytest.raises(MessageError):
        unb64(text, "test")


@pytest.mark.parametrize("value", [None, b"QQ", 5, ["QQ"]])
def test_b64_rejects_non_strings(value: object) -> None:
    with pytest.raises(MessageError):
        unb64(value, "test")  # type: ignore[arg-type]


@settings(max_examples=200)
@given(st.binary(min_size=1, max_size=40), st.data())
def test_property_only_one_text_per_value(data: bytes, draw: st.DataObject) -> None:
    # Any other string that decodes (leniently) to the same bytes is refused.
    text = b64(data)
    variants = [
        base64.b64encode(data).decode(),
        base64.urlsafe_b64encode(data).decode(),
        text + "=",
        text + "==",
        " " + text,
    ]
    for v in variants:
        if v != text:
            with pytest.raises(MessageError):
                unb64(v, "x")
    # Changing the last character to another one of the alphabet either
    # changes the bytes or is refused: it never silently decodes to ``data``.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    c = draw.draw(st.sampled_from(alphabet.replace(text[-1], "")))
    other = text[:-1] + c
    with contextlib.suppress(MessageError):
        assert unb64(other, "x") != data
