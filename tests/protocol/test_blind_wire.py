"""Known-answer vectors for the blind profile's wire format (tests/data/wire_vectors.json)."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from pprm.protocol.blind_messages import BlindAnswerBody, BlindQueryBody, KeyAnnouncementBody, parse_handle

VECTORS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", "wire_vectors.json")


def _derive(label: str, n: int = 32) -> bytes:
    return hashlib.sha256(f"pprm-wire-vector/{label}".encode()).digest()[:n]


def _vectors() -> dict[str, Any]:
    with open(VECTORS, encoding="ascii") as fh:
        return json.load(fh)["blind"]


def test_blind_bodies_are_pinned_and_parse_back() -> None:
    v = _vectors()
    keys = KeyAnnouncementBody.from_bytes(bytes.fromhex(v["keys_body_hex"]))
    assert keys.key_id == _derive("blind-key-id", 16).hex() and keys.expires == 1_700_086_400
    assert keys.public == _derive("public-key", 32) and keys.galois == _derive("galois-keys", 32)
    assert keys.relin == _derive("relin-key", 32)
    assert keys.to_bytes().hex() == v["keys_body_hex"]
    query = BlindQueryBody.from_bytes(bytes.fromhex(v["query_body_hex"]))
    assert query.probe == _derive("probe-ciphertext", 32) and query.key_id == keys.key_id
    assert query.to_bytes().hex() == v["query_body_hex"]
    answer = BlindAnswerBody.from_bytes(bytes.fromhex(v["answer_body_hex"]))
    assert answer.blocks == (_derive("answer-block-0", 24), _derive("answer-block-1", 24))
    assert answer.to_bytes().hex() == v["answer_body_hex"]
    # The framing itself: u32 BE JSON length, canonical JSON naming the part count.
    raw = bytes.fromhex(v["answer_body_hex"])
    hlen = int.from_bytes(raw[:4], "big")
    assert json.loads(raw[4:4 + hlen]) == {"parts": 2, "query_id": answer.query_id}


def test_blind_handle_and_header_are_pinned() -> None:
    v = _vectors()
    assert v["handle"] == "blind-000003-004711" and parse_handle(v["handle"]) == (3, 4711)
    header = json.loads(v["envelope"]["header_json"])
    assert header["profile"] == "blind" and header["type"] == "query"
