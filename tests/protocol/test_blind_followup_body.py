"""The blind follow-up body (it carries the probe) and the refusal of a follow-up: exact and strict.

Wire format, pinned here. Until blind follow-ups carried the probe, a blind
follow-up used the sealed body ``{"query_id", "token"}``; that body is
unchanged, and still pinned as ``followup_body`` in
``tests/data/wire_vectors.json`` (checked by tests/protocol/test_envelope.py).
The blind one now adds ``dim`` and ``probe`` (the requester's probe as
little-endian float32 in canonical base64), so that the responder can check
that the probe clears its threshold against the record behind the handle;
a follow-up it refuses gets a refusal body with a ``followup_id``. Both are
new encodings, so they are pinned as known-answer vectors below (the vectors
file is regenerated only on a versioned change of the existing encodings).
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pprm.errors import MessageError
from pprm.protocol import canonical
from pprm.protocol.blind_messages import MAX_PROBE_DIM, BlindFollowUpBody, make_handle
from pprm.protocol.messages import FOLLOWUP_REFUSAL_REASONS, REFUSAL_REASONS, FollowUpBody, RefusalBody

QID = "ab" * 16
FID = "cd" * 16
HANDLE = "blind-000003-004711"
PROBE = np.array([0.5, -0.5, 0.25, -0.25, 0.125, -0.125, 0.0, 1.0], dtype=np.float32)


def _derive(label: str, n: int = 32) -> bytes:
    return hashlib.sha256(f"pprm-wire-vector/{label}".encode()).digest()[:n]


def _probe_field(values: np.ndarray) -> str:
    return canonical.b64(np.asarray(values).astype("<f4").tobytes())


# -- known answers ------------------------------------------------------------------------

def test_the_blind_follow_up_body_is_pinned() -> None:
    body = BlindFollowUpBody(_derive("blind-query-id", 16).hex(), HANDLE, PROBE)
    raw = body.to_bytes()
    assert raw == (b'{"dim":8,"probe":"AAAAPwAAAL8AAIA-AACAvgAAAD4AAAC-AAAAAAAAgD8",'
                   b'"query_id":"f62ef74f5c4b177fc5fe45869c09f3b4","token":"blind-000003-004711"}')
    assert hashlib.sha256(raw).hexdigest() == "fce9a2240995a3a868cd9870a7e3e21f554c518721e9741661e4afb6c6708602"
    back = BlindFollowUpBody.from_bytes(raw)
    assert (back.query_id, back.token, back.dim) == (body.query_id, HANDLE, 8)
    assert back.probe.dtype == np.float32 and np.array_equal(back.probe, PROBE)


def test_the_refusal_of_a_follow_up_is_pinned() -> None:
    body = RefusalBody(_derive("blind-query-id", 16).hex(), "not-a-hit", "not a hit",
                       followup_id=_derive("blind-followup-id", 16).hex())
    raw = body.to_bytes()
    assert raw == (b'{"followup_id":"25a4eac221f52c4756d45b819c25119c","message":"not a hit",'
                   b'"query_id":"f62ef74f5c4b177fc5fe45869c09f3b4","reason":"not-a-hit"}')
    assert hashlib.sha256(raw).hexdigest() == "a886806a30de182c9f2b577146b86287c3641cfe9e2e95a97b24372a5b79ac3f"
    assert RefusalBody.from_bytes(raw) == body and body.refused_id == body.followup_id
    # A query's refusal keeps its three fields, byte for byte.
    query_refusal = RefusalBody(QID, "purpose", "no")
    assert query_refusal.to_bytes() == b'{"message":"no","query_id":"' + QID.encode() + b'","reason":"purpose"}'
    assert query_refusal.refused_id == QID
    assert REFUSAL_REASONS == ("purpose", "quota-case", "quota-peer") and FOLLOWUP_REFUSAL_REASONS == ("not-a-hit",)


# -- round trips ----------------------------------------------------------------------------

FINITE = hnp.arrays(np.float32, st.integers(1, 600),
                    elements=st.floats(-4.0, 4.0, width=32, allow_nan=False, allow_infinity=False))


@settings(max_examples=100)
@given(probe=FINITE, pos=st.integers(0, 10**6 - 1), slot=st.integers(0, 10**6 - 1),
       qid=st.binary(min_size=16, max_size=16))
def test_property_round_trip(probe: np.ndarray, pos: int, slot: int, qid: bytes) -> None:
    if float(np.linalg.norm(probe.astype(np.float64))) < 1e-12:
        with pytest.raises(MessageError, match="zero"):
            BlindFollowUpBody(qid.hex(), make_handle(pos, slot), probe)
        return
    body = BlindFollowUpBody(qid.hex(), make_handle(pos, slot), probe)
    back = BlindFollowUpBody.from_bytes(body.to_bytes())
    assert (back.query_id, back.token) == (qid.hex(), make_handle(pos, slot))
    assert np.array_equal(back.probe, probe) and back.to_bytes() == body.to_bytes()


def test_the_probe_is_read_only_float32_and_not_in_the_repr() -> None:
    body = BlindFollowUpBody(QID, HANDLE, PROBE.astype(np.float64))
    assert body.probe.dtype == np.float32 and not body.probe.flags.writeable
    assert "probe" not in repr(body) and "0.5" not in repr(body)
    with pytest.raises(ValueError):
        body.probe[0] = 2.0


# -- strictness -----------------------------------------------------------------------------

GOOD: dict[str, Any] = {"dim": 8, "probe": _probe_field(PROBE), "query_id": QID, "token": HANDLE}


def _with_nan() -> np.ndarray:
    p = PROBE.copy()
    p[2] = np.nan
    return p


def _with_inf(sign: float) -> np.ndarray:
    p = PROBE.copy()
    p[1] = sign * np.inf
    return p


@pytest.mark.parametrize(("obj", "says"), [
    ({**GOOD, "dim": 9}, "length"),                                         # dim and probe disagree
    ({**GOOD, "dim": 7}, "length"),
    ({**GOOD, "dim": 0, "probe": ""}, "dimension"),
    ({**GOOD, "dim": MAX_PROBE_DIM + 1}, "dimension"),
    ({**GOOD, "dim": "8"}, "dimension"),                                    # wrong types
    ({**GOOD, "dim": 8.0}, "canonical|dimension"),
    ({**GOOD, "dim": True}, "dimension"),
    ({**GOOD, "probe": [0.5] * 8}, "base64"),
    ({**GOOD, "probe": None}, "base64"),
    ({**GOOD, "probe": _probe_field(PROBE) + "="}, "base64"),               # not canonical base64
    ({**GOOD, "probe": "!" * 43}, "base64"),
    ({**GOOD, "probe": canonical.b64(PROBE.astype("<f8").tobytes())}, "length"),  # float64 values
    ({**GOOD, "probe": _probe_field(_with_nan())}, "non-finite"),
    ({**GOOD, "probe": _probe_field(_with_inf(1.0))}, "non-finite"),
    ({**GOOD, "probe": _probe_field(_with_inf(-1.0))}, "non-finite"),
    ({**GOOD, "probe": _probe_field(np.zeros(8))}, "zero"),
    ({**GOOD, "query_id": "AB" * 16}, "query id"),
    ({**GOOD, "query_id": None}, "query id"),
    ({**GOOD, "token": "A" * 96}, "token"),                                 # a sealed token
    ({**GOOD, "token": HANDLE + "\n"}, "token"),
    ({**GOOD, "token": ["blind-000001-000001"]}, "token"),
    ({**GOOD, "score": 0.9}, "unexpected fields"),
    ({k: v for k, v in GOOD.items() if k != "dim"}, "unexpected fields"),
    ({"query_id": QID, "token": HANDLE}, "carries no probe"),               # as pprm wrote before
])
def test_malformed_bodies_are_message_errors(obj: dict[str, Any], says: str) -> None:
    with pytest.raises(MessageError, match=says):
        BlindFollowUpBody.from_bytes(canonical.encode(obj))


@pytest.mark.parametrize("blob", [b"", b"[]", b"{}", b"\xff", b'{"a":NaN}',
                                  b'{"dim": 8, "probe": "x", "query_id": "q", "token": "t"}'])
def test_garbage_is_a_message_error(blob: bytes) -> None:
    with pytest.raises(MessageError):
        BlindFollowUpBody.from_bytes(blob)


@pytest.mark.parametrize("probe", [
    np.ones(8, dtype=np.int64), np.ones((2, 4), dtype=np.float32), np.zeros(0, dtype=np.float32),
    np.full(8, 1e39), np.ones(MAX_PROBE_DIM + 1, dtype=np.float32), "probe",
])
def test_the_constructor_refuses_what_the_parser_refuses(probe: object) -> None:
    with pytest.raises(MessageError):
        BlindFollowUpBody(QID, HANDLE, probe)  # type: ignore[arg-type]


def test_a_sealed_follow_up_body_is_not_a_blind_one() -> None:
    sealed = FollowUpBody(QID, "A" * 96).to_bytes()
    with pytest.raises(MessageError):
        BlindFollowUpBody.from_bytes(sealed)
    blind = BlindFollowUpBody(QID, HANDLE, PROBE).to_bytes()
    with pytest.raises(MessageError, match="unexpected fields"):
        FollowUpBody.from_bytes(blind)


# -- the refusal of a follow-up ------------------------------------------------------------------

@pytest.mark.parametrize("obj", [
    {"query_id": QID, "followup_id": FID, "reason": "purpose", "message": "m"},  # a query's reason
    {"query_id": QID, "reason": "not-a-hit", "message": "m"},                    # a follow-up's reason, no id
    {"query_id": QID, "followup_id": FID.upper(), "reason": "not-a-hit", "message": "m"},
    {"query_id": QID, "followup_id": None, "reason": "not-a-hit", "message": "m"},
    {"query_id": QID, "followup_id": 7, "reason": "not-a-hit", "message": "m"},
    {"query_id": QID, "followup_id": FID, "reason": "not-a-hit", "message": "m", "score": 1},
    {"query_id": QID, "followup_id": FID, "reason": "not-a-hit", "message": "two\nlines"},
    {"followup_id": FID, "reason": "not-a-hit", "message": "m"},
])
def test_follow_up_refusals_are_strict(obj: dict[str, Any]) -> None:
    with pytest.raises(MessageError):
        RefusalBody.from_bytes(canonical.encode(obj))


def test_follow_up_refusals_are_checked_when_made() -> None:
    with pytest.raises(MessageError):
        RefusalBody(QID, "purpose", "m", followup_id=FID)
    with pytest.raises(MessageError):
        RefusalBody(QID, "not-a-hit", "m")
    with pytest.raises(MessageError):
        RefusalBody(QID, "not-a-hit", "m", followup_id="x")
