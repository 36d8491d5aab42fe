"""Blind-profile message bodies: exact round trips and strict refusal of anything else.

A blind body is ``u32 json length | canonical JSON | (u32 part length | part)*``
with the JSON naming the part count (pprm.protocol.blind_messages). The
parser is the first thing a peer's bytes meet after the signature and box, so
every malformed framing must be a MessageError, never an IndexError or a
silently short read.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pprm.errors import MessageError
from pprm.protocol.blind_messages import (
    MAX_BLOCKS,
    BlindAnswerBody,
    BlindQueryBody,
    KeyAnnouncementBody,
    make_handle,
    pack_parts,
    parse_handle,
    unpack_parts,
)
from pprm.protocol.canonical import encode
from pprm.protocol.messages import MAX_CASE, MAX_PURPOSE

KID = "0123456789abcdef0123456789abcdef"
QID = "fedcba9876543210fedcba9876543210"
HEX128 = st.binary(min_size=16, max_size=16).map(bytes.hex)
PRINTABLE = st.characters(codec="utf-8").filter(str.isprintable)
NONEMPTY = st.binary(min_size=1, max_size=96)
META = st.dictionaries(st.text(max_size=12).filter(lambda k: k != "parts"),
                       st.one_of(st.text(max_size=24), st.integers()), max_size=6)
PARTS = st.lists(st.binary(max_size=64), max_size=8)


def _text(limit: int) -> st.SearchStrategy[str]:
    return st.text(PRINTABLE, min_size=1, max_size=limit)


def raw(meta: dict[str, object], parts: list[bytes]) -> bytes:
    """A body framed by hand: ``meta`` is encoded as given (its "parts" is not filled in)."""
    head = encode(meta)
    return b"".join([struct.pack(">I", len(head)), head,
                     *(struct.pack(">I", len(p)) + p for p in parts)])


# -- framing ------------------------------------------------------------------

@settings(max_examples=200)
@given(meta=META, parts=PARTS)
def test_property_pack_unpack_round_trip(meta: dict[str, object], parts: list[bytes]) -> None:
    blob = pack_parts(meta, parts)
    back_meta, back_parts = unpack_parts(blob, "body")
    assert back_meta == meta and back_parts == parts
    assert pack_parts(back_meta, back_parts) == blob  # one encoding per value


def test_pack_counts_the_parts_itself() -> None:
    # A caller's own "parts" entry cannot disagree with what follows.
    blob = pack_parts({"parts": 7}, [b"a"])
    assert unpack_parts(blob, "body") == ({}, [b"a"])


def test_every_proper_prefix_is_truncated() -> None:
    blob = pack_parts({"key_id": KID, "n": 3}, [b"xy", b"", b"z" * 5])
    for cut in range(len(blob)):
        with pytest.raises(MessageError):
            unpack_parts(blob[:cut], "body")
    assert unpack_parts(blob, "body")[1] == [b"xy", b"", b"zzzzz"]


@settings(max_examples=150)
@given(meta=META, parts=PARTS.filter(bool), data=st.data())
def test_property_any_proper_prefix_is_refused(meta: dict[str, object], parts: list[bytes],
                                               data: st.DataObject) -> None:
    blob = pack_parts(meta, parts)
    cut = data.draw(st.integers(0, len(blob) - 1))
    with pytest.raises(MessageError):
        unpack_parts(blob[:cut], "body")


@settings(max_examples=150)
@given(meta=META, parts=PARTS, tail=st.binary(min_size=1, max_size=16))
def test_property_trailing_bytes_are_refused(meta: dict[str, object], parts: list[bytes], tail: bytes) -> None:
    with pytest.raises(MessageError):
        unpack_parts(pack_parts(meta, parts) + tail, "body")


def test_trailing_bytes_message() -> None:
    with pytest.raises(MessageError, match="trailing"):
        unpack_parts(pack_parts({}, [b"a"]) + b"\x00", "body")


@pytest.mark.parametrize(("count", "parts", "why"), [
    (2, [b"a"], "truncated"),          # announces more parts than follow
    (0, [b"a"], "trailing"),           # announces fewer
    (1, [], "truncated"),
    (-1, [], "part count"),
    (MAX_BLOCKS + 1, [], "part count"),
    ("1", [b"a"], "part count"),
    (True, [b"a"], "part count"),      # a bool is not a count
    (1.5, [b"a"], "part count"),
    (None, [], "part count"),
])
def test_wrong_part_counts(count: object, parts: list[bytes], why: str) -> None:
    with pytest.raises(MessageError, match=why):
        unpack_parts(raw({"parts": count}, parts), "body")


def test_missing_part_count() -> None:
    with pytest.raises(MessageError, match="part count"):
        unpack_parts(raw({"key_id": KID}, []), "body")


@pytest.mark.parametrize("blob", [
    b"",
    b"\x00\x00\x00",                                   # shorter than the length field
    b"\xff\xff\xff\xff{}",                             # JSON length beyond the end
    struct.pack(">I", 2) + b"[]",                      # JSON, but not an object
    struct.pack(">I", 12) + b'{"parts": 0}',           # not canonical (a space)
    struct.pack(">I", 11) + b'{"parts":0}' + struct.pack(">I", 0),   # a part the count does not name
    struct.pack(">I", 11) + b'{"parts":1}' + b"\x00\x00\x00\x05abcd",  # part shorter than its length
])
def test_malformed_framing(blob: bytes) -> None:
    with pytest.raises(MessageError):
        unpack_parts(blob, "body")


def test_maximal_part_count_is_accepted() -> None:
    meta, parts = unpack_parts(pack_parts({}, [b""] * MAX_BLOCKS), "body")
    assert meta == {} and len(parts) == MAX_BLOCKS


# -- key announcement -----------------------------------------------------------

@settings(max_examples=100)
@given(kid=HEX128, expires=st.integers(1, 2**63), public=NONEMPTY, galois=NONEMPTY, relin=NONEMPTY)
def test_property_announcement_round_trip(kid: str, expires: int, public: bytes, galois: bytes,
                                          relin: bytes) -> None:
    body = KeyAnnouncementBody(kid, expires, public, galois, relin)
    blob = body.to_bytes()
    assert KeyAnnouncementBody.from_bytes(blob) == body
    assert KeyAnnouncementBody.from_bytes(blob).to_bytes() == blob


def _ann(meta: dict[str, object] | None = None, parts: list[bytes] | None = None) -> bytes:
    m: dict[str, object] = {"key_id": KID, "expires": 1_700_000_000}
    m.update(meta or {})
    return pack_parts(m, [b"pk", b"gk", b"rk"] if parts is None else parts)


@pytest.mark.parametrize("blob", [
    _ann({"key_id": KID.upper()}), _ann({"key_id": KID[:-1]}), _ann({"key_id": KID + "0"}),
    _ann({"key_id": "g" * 32}), _ann({"key_id": 5}), _ann({"key_id": None}),
    _ann({"expires": 0}), _ann({"expires": -1}), _ann({"expires": "5"}), _ann({"expires": True}),
    _ann({"expires": 1.5}),
    _ann(parts=[b"pk"]), _ann(parts=[b"pk", b"gk"]),           # no relinearisation key
    _ann(parts=[b"pk", b"gk", b"rk", b"x"]), _ann(parts=[]),
    _ann(parts=[b"", b"gk", b"rk"]), _ann(parts=[b"pk", b"", b"rk"]), _ann(parts=[b"pk", b"gk", b""]),  # empty
    _ann({"extra": 1}),
    pack_parts({"key_id": KID}, [b"pk", b"gk", b"rk"]),         # missing expiry
    pack_parts({"expires": 5}, [b"pk", b"gk", b"rk"]),          # missing key id
])
def test_announcement_rejects(blob: bytes) -> None:
    with pytest.raises(MessageError):
        KeyAnnouncementBody.from_bytes(blob)


def test_announcement_repr_hides_key_material() -> None:
    text = repr(KeyAnnouncementBody(KID, 5, b"PUBLIC-BLOB", b"GALOIS-BLOB", b"RELIN-BLOB"))
    assert KID in text and "PUBLIC" not in text and "GALOIS" not in text and "RELIN" not in text


# -- blind query ----------------------------------------------------------------

@settings(max_examples=100)
@given(case=_text(MAX_CASE), purpose=_text(MAX_PURPOSE), kid=HEX128, probe=NONEMPTY)
def test_property_blind_query_round_trip(case: str, purpose: str, kid: str, probe: bytes) -> None:
    body = BlindQueryBody(case, purpose, kid, probe)
    blob = body.to_bytes()
    assert BlindQueryBody.from_bytes(blob) == body
    assert BlindQueryBody.from_bytes(blob).to_bytes() == blob


def _bq(meta: dict[str, object] | None = None, parts: list[bytes] | None = None) -> bytes:
    m: dict[str, object] = {"case": "C-1", "purpose": "test", "key_id": KID}
    m.update(meta or {})
    return pack_parts(m, [b"ciphertext"] if parts is None else parts)


@pytest.mark.parametrize("blob", [
    _bq({"case": ""}), _bq({"case": "x" * (MAX_CASE + 1)}), _bq({"case": "a\nb"}), _bq({"case": 1}),
    _bq({"purpose": ""}), _bq({"purpose": "x" * (MAX_PURPOSE + 1)}), _bq({"purpose": "tab\there"}),
    _bq({"purpose": None}),
    _bq({"key_id": KID.upper()}), _bq({"key_id": KID[:-2]}), _bq({"key_id": ""}),
    _bq(parts=[]), _bq(parts=[b""]), _bq(parts=[b"ct", b"ct"]),
    _bq({"extra": "x"}),
    pack_parts({"case": "C", "purpose": "P"}, [b"ct"]),
])
def test_blind_query_rejects(blob: bytes) -> None:
    with pytest.raises(MessageError):
        BlindQueryBody.from_bytes(blob)


@pytest.mark.parametrize(("case", "purpose", "kid"), [
    ("", "P", KID), ("C", "", KID), ("C\n", "P", KID), ("C", "x" * (MAX_PURPOSE + 1), KID), ("C", "P", "abc"),
])
def test_blind_query_construction_validates(case: str, purpose: str, kid: str) -> None:
    with pytest.raises(MessageError):
        BlindQueryBody(case, purpose, kid, b"ct")


def test_blind_query_repr_hides_probe_and_text() -> None:
    text = repr(BlindQueryBody("C", "P", KID, b"SECRET-PROBE"))
    assert "SECRET-PROBE" not in text


# -- blind answer ---------------------------------------------------------------

@settings(max_examples=100)
@given(qid=HEX128, size=st.integers(1, 64), count=st.integers(1, 6), data=st.data())
def test_property_blind_answer_round_trip(qid: str, size: int, count: int, data: st.DataObject) -> None:
    blocks = tuple(data.draw(st.binary(min_size=size, max_size=size)) for _ in range(count))
    body = BlindAnswerBody(qid, blocks)
    assert BlindAnswerBody.from_bytes(body.to_bytes()) == body


@pytest.mark.parametrize("blob", [
    pack_parts({"query_id": QID}, []),                       # no block
    pack_parts({"query_id": QID}, [b"abc", b"ab"]),          # blocks of unequal size
    pack_parts({"query_id": QID}, [b"abc", b"abc", b"abcd"]),
    pack_parts({"query_id": QID.upper()}, [b"abc"]),
    pack_parts({"query_id": QID[:-1]}, [b"abc"]),
    pack_parts({"query_id": 7}, [b"abc"]),
    pack_parts({"query_id": QID, "hit": True}, [b"abc"]),    # extra field
    pack_parts({}, [b"abc"]),
])
def test_blind_answer_rejects(blob: bytes) -> None:
    with pytest.raises(MessageError):
        BlindAnswerBody.from_bytes(blob)


# -- handles --------------------------------------------------------------------

@settings(max_examples=200)
@given(position=st.integers(0, 10**6 - 1), slot=st.integers(0, 10**6 - 1))
def test_property_handle_round_trip(position: int, slot: int) -> None:
    handle = make_handle(position, slot)
    assert len(handle) == len("blind-000000-000000")
    assert parse_handle(handle) == (position, slot)


@pytest.mark.parametrize(("position", "slot"), [(-1, 0), (0, -1), (10**6, 0), (0, 10**6)])
def test_make_handle_rejects_out_of_range(position: int, slot: int) -> None:
    with pytest.raises(MessageError):
        make_handle(position, slot)


@pytest.mark.parametrize("handle", [
    "", "blind-", "blind-1-2", "blind-0000001-000002", "blind-000001-0000002", "BLIND-000001-000002",
    "blind-00000a-000002", "blind_000001_000002", " blind-000001-000002", "blind-000001-000002 ",
    "blind-000001-000002-000003", "blind-\u0661\u0660\u0660\u0660\u0660\u0660-000002",  # Arabic-Indic digits
    "A" * 96, None, 5, b"blind-000001-000002",
])
def test_parse_handle_rejects(handle: object) -> None:
    with pytest.raises(MessageError):
        parse_handle(handle)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["handle", "key_id", "query_id"])
def test_a_trailing_newline_is_refused(value: str) -> None:
    """``re.match`` with ``$`` also matches before a final newline; ids and handles must match in full."""
    with pytest.raises(MessageError):
        if value == "handle":
            parse_handle("blind-000001-000002\n")
        elif value == "key_id":
            BlindQueryBody.from_bytes(_bq({"key_id": KID + "\n"}))
        else:
            BlindAnswerBody.from_bytes(pack_parts({"query_id": QID + "\n"}, [b"a"]))
