"""Message bodies: exact round trips and strict refusal of anything else."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pprm.errors import MessageError
from pprm.protocol.canonical import b64, encode
from pprm.protocol.messages import MAX_CASE, MAX_PURPOSE, AnswerBody, FollowUpBody, QueryBody

QID = "0123456789abcdef0123456789abcdef"
TOKEN_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
TOKENS = st.text(TOKEN_ALPHABET, min_size=16, max_size=256)
HEX128 = st.binary(min_size=16, max_size=16).map(bytes.hex)
PRINTABLE = st.characters(codec="utf-8").filter(str.isprintable)


def _text(limit: int) -> st.SearchStrategy[str]:
    return st.text(PRINTABLE, min_size=1, max_size=limit)


def _query_obj(**change: object) -> dict[str, Any]:
    probe = np.linspace(-1, 1, 8, dtype="<f4")
    obj: dict[str, Any] = {"case": "C-1", "purpose": "test", "dim": 8, "probe": b64(probe.tobytes())}
    obj.update(change)
    return obj


# -- query ------------------------------------------------------------------

@settings(max_examples=150)
@given(case=_text(MAX_CASE), purpose=_text(MAX_PURPOSE),
       probe=st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False), min_size=1, max_size=64))
def test_property_query_round_trip(case: str, purpose: str, probe: list[float]) -> None:
    arr = np.array(probe, dtype=np.float32)
    body = QueryBody(case, purpose, arr)
    blob = body.to_bytes()
    back = QueryBody.from_bytes(blob)
    assert (back.case, back.purpose) == (case, purpose)
    assert back.probe.dtype == np.float32
    assert back.probe.tobytes() == arr.tobytes()  # bit-exact, signed zeros included
    assert back.to_bytes() == blob


def test_query_probe_is_little_endian_float32_base64() -> None:
    probe = np.array([1.0, -2.0], dtype=">f8")  # any float array; sent as <f4
    obj = json.loads(QueryBody("C", "P", probe).to_bytes())
    assert obj["dim"] == 2
    assert obj["probe"] == b64(np.array([1.0, -2.0], dtype="<f4").tobytes())


@pytest.mark.parametrize("change", [
    {"extra": 1},
    {"dim": "8"}, {"dim": 8.0}, {"dim": True}, {"dim": 0}, {"dim": 4097}, {"dim": -8},
    {"dim": 7}, {"dim": 9},                                    # length mismatch
    {"probe": b64(b"\x00" * 31)},                              # not a whole number of floats
    {"probe": 5}, {"probe": None},
    {"probe": b64(np.zeros(8, "<f4").tobytes()) + "="},       # padded base64
    {"probe": b64(np.zeros(8, "<f4").tobytes()).replace("A", "+", 1)},
    {"case": ""}, {"case": "x" * (MAX_CASE + 1)}, {"case": "a\nb"}, {"case": "\x00"}, {"case": 1},
    {"purpose": ""}, {"purpose": "x" * (MAX_PURPOSE + 1)}, {"purpose": "tab\there"}, {"purpose": None},
])
def test_query_rejects(change: dict[str, Any]) -> None:
    with pytest.raises(MessageError):
        QueryBody.from_bytes(encode(_query_obj(**change)))


@pytest.mark.parametrize("missing", ["case", "purpose", "dim", "probe"])
def test_query_rejects_missing_field(missing: str) -> None:
    obj = _query_obj()
    del obj[missing]
    with pytest.raises(MessageError, match="unexpected fields"):
        QueryBody.from_bytes(encode(obj))


def test_query_rejects_non_canonical_bytes() -> None:
    blob = json.dumps(_query_obj(), sort_keys=True).encode()  # default separators have spaces
    with pytest.raises(MessageError):
        QueryBody.from_bytes(blob)
    assert QueryBody.from_bytes(encode(_query_obj())).case == "C-1"


def test_query_construction_validates_text() -> None:
    with pytest.raises(MessageError):
        QueryBody("", "purpose", np.zeros(4, np.float32))
    with pytest.raises(MessageError):
        QueryBody("case", "x" * (MAX_PURPOSE + 1), np.zeros(4, np.float32))


def test_query_repr_hides_probe() -> None:
    probe = np.full(4, 0.123456, np.float32)
    assert "0.123" not in repr(QueryBody("C", "P", probe))


# -- answer -----------------------------------------------------------------

@settings(max_examples=150)
@given(qid=HEX128, tokens=st.lists(TOKENS, max_size=12, unique=True))
def test_property_answer_round_trip(qid: str, tokens: list[str]) -> None:
    body = AnswerBody(qid, bool(tokens), tuple(tokens))
    back = AnswerBody.from_bytes(body.to_bytes())
    assert back == body


def _answer_obj(**change: object) -> dict[str, Any]:
    obj: dict[str, Any] = {"query_id": QID, "hit": True, "candidates": ["A" * 16, "B" * 16]}
    obj.update(change)
    return obj


@pytest.mark.parametrize("change", [
    {"extra": None},
    {"hit": False},                                   # flag says no hit, candidates say hit
    {"hit": True, "candidates": []},                  # flag says hit, no candidates
    {"hit": 1}, {"hit": "true"}, {"hit": None},
    {"candidates": ["A" * 16, "A" * 16]},             # duplicate token
    {"candidates": "A" * 16}, {"candidates": {"A" * 16: 1}}, {"candidates": None},
    {"candidates": ["A" * 15]},                       # too short
    {"candidates": ["A" * 257]},                      # too long
    {"candidates": ["A" * 15 + "+"]}, {"candidates": ["A" * 15 + "/"]}, {"candidates": ["A" * 15 + "="]},
    {"candidates": ["A" * 15 + " "]}, {"candidates": ["A" * 15 + "\u00e9"]}, {"candidates": [16]},
    {"candidates": [f"{i:016d}" for i in range(1001)]},  # beyond any allowed cap
    {"query_id": QID.upper()}, {"query_id": QID[:-1]}, {"query_id": QID + "0"}, {"query_id": 5},
])
def test_answer_rejects(change: dict[str, Any]) -> None:
    with pytest.raises(MessageError):
        AnswerBody.from_bytes(encode(_answer_obj(**change)))


def test_answer_without_hit_round_trips() -> None:
    blob = encode(_answer_obj(hit=False, candidates=[]))
    assert AnswerBody.from_bytes(blob) == AnswerBody(QID, False, ())


def test_answer_accepts_the_full_cap() -> None:
    cands = [f"{i:016d}" for i in range(1000)]
    assert len(AnswerBody.from_bytes(encode(_answer_obj(candidates=cands))).candidates) == 1000


@pytest.mark.parametrize("missing", ["query_id", "hit", "candidates"])
def test_answer_rejects_missing_field(missing: str) -> None:
    obj = _answer_obj()
    del obj[missing]
    with pytest.raises(MessageError):
        AnswerBody.from_bytes(encode(obj))


# -- follow-up --------------------------------------------------------------

@settings(max_examples=150)
@given(qid=HEX128, token=TOKENS)
def test_property_followup_round_trip(qid: str, token: str) -> None:
    body = FollowUpBody(qid, token)
    assert FollowUpBody.from_bytes(body.to_bytes()) == body


@pytest.mark.parametrize("obj", [
    {"query_id": QID, "token": "A" * 16, "extra": 1},
    {"query_id": QID},
    {"token": "A" * 16},
    {"query_id": QID, "token": "A" * 15},
    {"query_id": QID, "token": "A" * 15 + "+"},
    {"query_id": QID, "token": ["A" * 16]},
    {"query_id": QID, "token": None},
    {"query_id": "z" * 32, "token": "A" * 16},
    {"query_id": None, "token": "A" * 16},
])
def test_followup_rejects(obj: dict[str, Any]) -> None:
    with pytest.raises(MessageError):
        FollowUpBody.from_bytes(encode(obj))


@pytest.mark.parametrize("cls", [QueryBody, AnswerBody, FollowUpBody])
@pytest.mark.parametrize("blob", [b"", b"[]", b"{}", b"\xff", b'{"a":NaN}'])
def test_bodies_reject_garbage(cls: type[QueryBody | AnswerBody | FollowUpBody], blob: bytes) -> None:
    with pytest.raises(MessageError):
        cls.from_bytes(blob)
