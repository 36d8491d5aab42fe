"""The signed envelope: a pinned wire format and exhaustive tamper rejection."""

from __future__ import annotations

import hashlib
import json
import os
import struct
from typing import Any

import nacl.signing
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pprm.crypto.identity import Identity, PublicIdentity, fingerprint
from pprm.errors import (
    AuthenticationError,
    ExpiredError,
    MessageError,
    ParameterError,
    RecipientError,
    UnknownPeerError,
)
from pprm.protocol import canonical, envelope
from pprm.protocol.card import make_card
from pprm.protocol.envelope import (
    CLOCK_SKEW,
    MAX_BODY,
    MAX_HEADER,
    MAX_LIFETIME,
    MESSAGE_TYPES,
    Header,
    open_envelope,
    seal_envelope,
)
from pprm.protocol.messages import AnswerBody, FollowUpBody, QueryBody
from tests.helpers import PARAMS_HEX, fixed_identity, header, lookup_for

VECTORS_PATH = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", "wire_vectors.json")
FRAME = struct.Struct(">4sB16sII")
SIG = 64

DE = fixed_identity("DE")
FR = fixed_identity("FR")
LOOKUP = lookup_for(DE.public, FR.public)
# Every error open_envelope may raise for hostile bytes (AuthenticationError,
# RecipientError, ExpiredError and ReplayError are MessageErrors).
REJECTIONS = (MessageError, UnknownPeerError, ParameterError)


def _open(blob: bytes | bytearray | memoryview, **kw: object) -> envelope.Envelope:
    args: dict[str, object] = {"lookup": LOOKUP, "me": "FR", "params_digest": PARAMS_HEX,
                               "now": 1_700_000_000}
    args.update(kw)
    return open_envelope(blob, **args)  # type: ignore[arg-type]


def _small() -> bytes:
    return seal_envelope(DE, header(), b"sixteen byte bod")


def _resign(ident: Identity, frame: bytes) -> bytes:
    return frame + ident.sign(frame)


def _frame(hb: bytes, body: bytes, ident: Identity = DE, *, magic: bytes = b"PPRM", version: int = 1,
           hlen: int | None = None, blen: int | None = None) -> bytes:
    return FRAME.pack(magic, version, ident.public.fingerprint, len(hb) if hlen is None else hlen,
                      len(body) if blen is None else blen) + hb + body


# -- known-answer vectors -------------------------------------------------

@pytest.fixture(scope="module")
def vectors() -> dict[str, Any]:
    with open(VECTORS_PATH, encoding="ascii") as fh:
        return json.load(fh)


def _vector_identity(vectors: dict[str, Any], name: str) -> Identity:
    v = vectors["identities"][name]
    return Identity(name, bytes.fromhex(v["signing_seed"]), bytes.fromhex(v["box_secret"]))


def test_vector_identities_derive_pinned_public_keys(vectors: dict[str, Any]) -> None:
    for name in ("DE", "FR"):
        pub = _vector_identity(vectors, name).public
        v = vectors["identities"][name]
        assert pub.verify_key.hex() == v["verify_key"]
        assert pub.box_key.hex() == v["box_key"]
        assert pub.fingerprint.hex() == v["fingerprint"]
        # The fingerprint is personalised BLAKE2b-128 of the verify key.
        assert fingerprint(pub.verify_key) == hashlib.blake2b(
            pub.verify_key, digest_size=16, person=b"pprm-identity").digest()


def test_vector_bodies_are_pinned(vectors: dict[str, Any]) -> None:
    q = vectors["query_body"]
    probe = np.frombuffer(bytes.fromhex(q["probe_f32le"]), dtype="<f4")
    assert QueryBody(q["case"], q["purpose"], probe).to_bytes().decode() == q["canonical"]
    a = vectors["answer_body"]
    assert AnswerBody(a["query_id"], a["hit"], tuple(a["candidates"])).to_bytes().decode() == a["canonical"]
    f = vectors["followup_body"]
    assert FollowUpBody(f["query_id"], f["token"]).to_bytes().decode() == f["canonical"]
    # And each pinned encoding parses back to the same values.
    back = QueryBody.from_bytes(q["canonical"].encode())
    assert (back.case, back.purpose) == (q["case"], q["purpose"])
    assert back.probe.tobytes() == probe.tobytes()
    assert AnswerBody.from_bytes(a["canonical"].encode()).candidates == tuple(a["candidates"])
    assert FollowUpBody.from_bytes(f["canonical"].encode()).token == f["token"]


def test_vector_box_is_pinned_and_opens(vectors: dict[str, Any]) -> None:
    b = vectors["box"]
    sender, recipient = _vector_identity(vectors, b["sender"]), _vector_identity(vectors, b["recipient"])
    plaintext = vectors["query_body"]["canonical"].encode()
    boxed = sender.box_to(recipient.public, plaintext, nonce=bytes.fromhex(b["nonce"]))
    assert len(boxed) == b["length"]
    assert hashlib.sha256(boxed).hexdigest() == b["sha256"]
    assert boxed.hex() == b["hex"]
    # Layout: 24-byte nonce, then 16-byte Poly1305 tag + ciphertext.
    assert boxed[:24].hex() == b["nonce"]
    assert len(boxed) == 24 + 16 + len(plaintext)
    assert recipient.unbox_from(sender.public, boxed) == plaintext
    # A third party (or the recipient pretending another sender) cannot open it.
    other = fixed_identity("NL")
    with pytest.raises(AuthenticationError):
        other.unbox_from(sender.public, boxed)
    with pytest.raises(AuthenticationError):
        recipient.unbox_from(other.public, boxed)


def test_vector_envelope_is_pinned(vectors: dict[str, Any]) -> None:
    e = vectors["envelope"]
    signer = _vector_identity(vectors, e["signer"])
    hdr = Header(**e["header"])
    body = bytes.fromhex(vectors["box"]["hex"])
    wire = seal_envelope(signer, hdr, body)
    assert len(wire) == e["length"]
    assert hashlib.sha256(wire).hexdigest() == e["sha256"]

    # Decode the frame by hand, independently of the library.
    magic, version, fpr, hlen, blen = FRAME.unpack_from(wire)
    assert (magic, version) == (b"PPRM", 1)
    assert fpr.hex() == vectors["identities"][e["signer"]]["fingerprint"]
    hb = wire[FRAME.size:FRAME.size + hlen]
    assert hb.decode() == e["header_json"]
    assert wire[FRAME.size + hlen:FRAME.size + hlen + blen] == body
    assert len(wire) == FRAME.size + hlen + blen + SIG
    # Plain Ed25519 over a domain prefix and every byte before the signature.
    vk = nacl.signing.VerifyKey(bytes.fromhex(vectors["identities"][e["signer"]]["verify_key"]))
    vk.verify(b"pprm/v1/sign\x00" + wire[:-SIG], wire[-SIG:])

    env = open_envelope(wire, lookup=lookup_for(signer.public), me=hdr.recipient, params_digest=hdr.params,
                        now=hdr.created)
    assert env.header == hdr
    assert env.body == body
    assert env.sender == signer.public


def test_vector_card_is_pinned(vectors: dict[str, Any]) -> None:
    c = vectors["card"]
    card = make_card(_vector_identity(vectors, c["signer"]), c["params"], c["params_digest"], c["dim"],
                     c["key_id"], c["created"])
    assert card.decode() == c["text"]
    assert hashlib.sha256(card).hexdigest() == c["sha256"]


def test_vector_generator_is_deterministic(vectors: dict[str, Any]) -> None:
    # The generator must reproduce the stored file exactly from the library.
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "make_wire_vectors", os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", "make_wire_vectors.py"))
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    with open(VECTORS_PATH, encoding="ascii") as fh:
        assert mod.render(mod.build()) == fh.read()


# -- round trip -----------------------------------------------------------

def test_round_trip_small_message() -> None:
    env = _open(_small())
    assert env.header == header()
    assert env.body == b"sixteen byte bod"
    assert env.sender == DE.public


def test_accepts_bytearray_and_memoryview() -> None:
    m = _small()
    assert _open(bytearray(m)).body == _open(memoryview(m)).body == b"sixteen byte bod"


# -- tampering --------------------------------------------------------------

def test_every_single_byte_flip_is_rejected() -> None:
    m = _small()
    failures = []
    for pos in range(len(m)):
        for mask in (0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80, 0xFF):
            bad = bytearray(m)
            bad[pos] ^= mask
            try:
                _open(bytes(bad))
            except REJECTIONS as exc:
                # Where in the frame the flip landed decides the error.
                if pos < 5:
                    ok = type(exc) is MessageError
                elif pos < 21:
                    ok = type(exc) is UnknownPeerError
                elif pos < FRAME.size:
                    ok = type(exc) is MessageError  # lengths no longer add up
                else:
                    ok = type(exc) is AuthenticationError  # header, body or signature
                if not ok:
                    failures.append((pos, mask, type(exc).__name__))
            except Exception as exc:  # any other type is a failure too
                failures.append((pos, mask, type(exc).__name__))
            else:
                failures.append((pos, mask, "accepted"))
    assert failures == []


def test_every_truncation_is_rejected() -> None:
    m = _small()
    for n in range(len(m)):
        with pytest.raises(MessageError, match="truncated") as info:
            _open(m[:n])
        assert type(info.value) is MessageError


def test_trailing_bytes_are_rejected() -> None:
    m = _small()
    for extra in (b"\x00", b"PPRM", m):
        with pytest.raises(MessageError, match="trailing"):
            _open(m + extra)


@pytest.mark.parametrize(("hlen", "blen"), [
    (MAX_HEADER + 1, 16), (0xFFFFFFFF, 16), (None, MAX_BODY + 1), (None, 0xFFFFFFFF),
])
def test_oversized_length_fields_are_rejected(hlen: int | None, blen: int) -> None:
    hb = json.dumps(header().to_json(), sort_keys=True, separators=(",", ":")).encode()
    blob = _resign(DE, _frame(hb, b"sixteen byte bod", hlen=hlen, blen=blen))
    with pytest.raises(MessageError, match="oversized"):
        _open(blob)


def test_body_limit_is_the_callers() -> None:
    m = seal_envelope(DE, header(), b"x" * 100)
    assert _open(m, max_body=100).body == b"x" * 100
    with pytest.raises(MessageError, match="oversized"):
        _open(m, max_body=99)


def test_wrong_magic_and_version_are_rejected() -> None:
    hb = json.dumps(header().to_json(), sort_keys=True, separators=(",", ":")).encode()
    # Properly signed, so only the framing check can refuse them.
    with pytest.raises(MessageError, match="not a pprm message"):
        _open(_resign(DE, _frame(hb, b"b" * 16, magic=b"PPRN")))
    for version in (0, 2, 255):
        with pytest.raises(MessageError, match="version"):
            _open(_resign(DE, _frame(hb, b"b" * 16, version=version)))


def test_unknown_sender_is_rejected() -> None:
    with pytest.raises(UnknownPeerError):
        _open(_small(), lookup=lookup_for(FR.public))
    # Same name, other keys: still unknown (the roster is keyed by key).
    with pytest.raises(UnknownPeerError):
        _open(_small(), lookup=lookup_for(fixed_identity("DE", "impostor").public))


def test_signature_by_other_key_is_rejected() -> None:
    # An impostor claims DE's fingerprint in the frame but signs with its own key.
    impostor = fixed_identity("DE", "impostor")
    m = _small()
    forged = m[:-SIG] + impostor.sign(m[:-SIG])
    with pytest.raises(AuthenticationError):
        _open(forged)


def test_wrong_recipient_is_rejected() -> None:
    with pytest.raises(RecipientError):
        _open(_small(), me="NL")


def test_validity_window() -> None:
    h = header()
    m = _small()
    assert _open(m, now=h.expires + CLOCK_SKEW).header == h
    assert _open(m, now=h.created - CLOCK_SKEW).header == h
    with pytest.raises(ExpiredError):
        _open(m, now=h.expires + CLOCK_SKEW + 1)
    with pytest.raises(ExpiredError):
        _open(m, now=h.created - CLOCK_SKEW - 1)


def test_real_clock_is_used_without_now() -> None:
    # The fixed header is from 2023 and lives an hour: expired by the real clock.
    with pytest.raises(ExpiredError):
        open_envelope(_small(), lookup=LOOKUP, me="FR", params_digest=PARAMS_HEX)


@pytest.mark.parametrize("lifetime", [MAX_LIFETIME + 1, 0, -1])
def test_implausible_lifetime_is_rejected(lifetime: int) -> None:
    h = header(expires=1_700_000_000 + lifetime)
    m = seal_envelope(DE, h, b"body")
    with pytest.raises(MessageError, match="lifetime") as info:
        _open(m)
    assert type(info.value) is MessageError


def test_longest_lifetime_is_accepted() -> None:
    h = header(expires=1_700_000_000 + MAX_LIFETIME)
    assert _open(seal_envelope(DE, h, b"body")).header == h


def test_parameter_digest_mismatch_is_rejected() -> None:
    with pytest.raises(ParameterError):
        _open(_small(), params_digest="0" * 64)
    seen = []

    def per_sender(name: str) -> str:
        seen.append(name)
        return "f" * 64

    with pytest.raises(ParameterError):
        _open(_small(), params_digest=per_sender)
    assert seen == ["DE"]
    assert _open(_small(), params_digest=lambda name: PARAMS_HEX).header.sender == "DE"


def test_header_sender_must_match_signing_key() -> None:
    # DE's keys under the name FR: the signature is good, the claim is not.
    masquerade = Identity("FR", DE.signing_seed, DE.box_secret)
    m = seal_envelope(masquerade, header(sender="FR", recipient="NL"), b"body")
    with pytest.raises(MessageError, match="does not match the signing key"):
        _open(m, me="NL")


def test_seal_refuses_foreign_sender_and_oversize(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(MessageError, match="sender"):
        seal_envelope(FR, header(), b"body")
    with pytest.raises(MessageError, match="too large"):
        seal_envelope(DE, header(type="q" * MAX_HEADER), b"body")
    monkeypatch.setattr(envelope, "MAX_BODY", 10)
    with pytest.raises(MessageError, match="too large"):
        seal_envelope(DE, header(), b"x" * 11)


def test_signature_is_checked_before_the_header_is_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    parsed = []
    real = canonical.decode

    def spy(blob: bytes, what: str) -> dict[str, Any]:
        parsed.append(what)
        return real(blob, what)

    monkeypatch.setattr(canonical, "decode", spy)  # the module envelope reads it from
    m = bytearray(_small())
    m[FRAME.size + 2] ^= 1
    with pytest.raises(AuthenticationError):
        _open(bytes(m))
    assert parsed == []
    _open(_small())
    assert parsed == ["message header"]


@pytest.mark.parametrize("hb", [
    b'{"v": 1}',  # not canonical
    b"[]",
    b"\xff\xfe",
])
def test_signed_garbage_header_is_rejected(hb: bytes) -> None:
    with pytest.raises(MessageError) as info:
        _open(_resign(DE, _frame(hb, b"body")))
    assert not isinstance(info.value, AuthenticationError)


@pytest.mark.parametrize("change", [
    {"v": 2}, {"extra": 1}, {"type": "hello"}, {"type": "Query"}, {"from": "de"}, {"to": "F"},
    {"id": "0" * 31}, {"id": "G" * 32}, {"created": "1700000000"}, {"created": 1.5}, {"expires": True},
    {"params": "0" * 63}, {"params": "A" * 64}, {"profile": "open"}, {"re": "xyz"}, {"re": None},
])
def test_signed_header_with_malformed_field_is_rejected(change: dict[str, Any]) -> None:
    obj = header().to_json()
    obj.update(change)
    hb = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    with pytest.raises(MessageError, match="header") as info:
        _open(_resign(DE, _frame(hb, b"body")))
    assert type(info.value) is MessageError


def test_header_missing_field_is_rejected() -> None:
    obj = header().to_json()
    del obj["re"]
    hb = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    with pytest.raises(MessageError, match="unexpected fields"):
        _open(_resign(DE, _frame(hb, b"body")))


# -- properties -----------------------------------------------------------

NAMES = st.from_regex(r"[A-Z][A-Z0-9-]{1,15}", fullmatch=True)
HEX128 = st.binary(min_size=16, max_size=16).map(bytes.hex)


@st.composite
def headers(draw: st.DrawFn) -> Header:
    created = draw(st.integers(0, 2**40))
    return Header(
        type=draw(st.sampled_from(MESSAGE_TYPES)), sender=draw(NAMES), recipient=draw(NAMES),
        id=draw(HEX128), created=created, expires=created + draw(st.integers(1, MAX_LIFETIME)),
        params=draw(st.binary(min_size=32, max_size=32).map(bytes.hex)), profile="sealed",
        in_reply_to=draw(st.one_of(st.just(""), HEX128)),
    )


def _named(name: str) -> Identity:
    return Identity(name, DE.signing_seed, DE.box_secret)


def _open_as(blob: bytes, h: Header, pub: PublicIdentity) -> envelope.Envelope:
    return open_envelope(blob, lookup=lookup_for(pub), me=h.recipient, params_digest=h.params,
                         now=h.created)


PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPS
@given(h=headers(), body=st.binary(max_size=512))
def test_property_round_trip(h: Header, body: bytes) -> None:
    ident = _named(h.sender)
    env = _open_as(seal_envelope(ident, h, body), h, ident.public)
    assert env.header == h
    assert env.body == body
    assert env.sender == ident.public


@PROPS
@given(h=headers(), body=st.binary(max_size=256), data=st.data())
def test_property_mutations_never_open(h: Header, body: bytes, data: st.DataObject) -> None:
    ident = _named(h.sender)
    blob = seal_envelope(ident, h, body)
    kind = data.draw(st.sampled_from(["flip", "insert", "delete"]))
    bad = bytearray(blob)
    if kind == "flip":
        positions = data.draw(st.sets(st.integers(0, len(blob) - 1), min_size=1, max_size=8))
        for pos in positions:
            bad[pos] ^= data.draw(st.integers(1, 255))
    elif kind == "insert":
        pos = data.draw(st.integers(0, len(blob)))
        bad[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
    else:
        pos = data.draw(st.integers(0, len(blob) - 1))
        bad[pos:pos + data.draw(st.integers(1, 8))] = b""
    assert bytes(bad) != blob
    with pytest.raises(REJECTIONS):
        _open_as(bytes(bad), h, ident.public)
