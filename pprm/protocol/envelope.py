"""The signed message envelope (docs/DESIGN.md section 6).

Wire format, version 1::

    b"PPRM" | version u8 | sender fingerprint (16) | header length u32 BE |
    body length u32 BE | header (canonical JSON) | body | Ed25519 signature (64)

The signature covers every byte before it. :func:`open_envelope` checks the
framing, looks the sender up by fingerprint, and verifies the signature
before it parses a single header field; the body is returned still boxed.
"""

from __future__ import annotations

import os
import re
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pprm.crypto.identity import Identity, PublicIdentity
from pprm.errors import ExpiredError, MessageError, ParameterError, RecipientError, UnknownPeerError
from pprm.profile import PROFILES, Profile, is_profile
from pprm.protocol import canonical

__all__ = ["Header", "Envelope", "seal_envelope", "open_envelope", "MESSAGE_TYPES", "PROFILES",
           "MAX_HEADER", "MAX_BODY", "CLOCK_SKEW"]

MAGIC = b"PPRM"
VERSION = 1
_FRAME = struct.Struct(">4sB16sII")
_SIG = 64
# A header is a few hundred bytes; 4 KiB leaves room without inviting abuse.
MAX_HEADER = 4096
# Sealed-profile bodies are a few KiB, blind ones a few MB (about 24 bytes
# per gallery template in an answer); 64 MiB bounds what a peer can make us read.
MAX_BODY = 64 << 20
# Tolerated clock difference between states, seconds.
CLOCK_SKEW = 120
# A message may not claim to live longer than this, seconds: answers live as
# long as their tokens can be followed up (at most 31 days, see node.config).
MAX_LIFETIME = 31 * 24 * 3600
# Appending a type changes no existing encoding: the header carries the type
# as a string. A "refusal" replaces an answer when the responder's policy
# refuses a query, or a resolution when a blind follow-up's probe does not
# clear the threshold against its record (pprm.protocol.messages.RefusalBody).
MESSAGE_TYPES = ("query", "answer", "followup", "keys", "refusal")
_NAME = re.compile(r"^[A-Z][A-Z0-9-]{1,15}$")
_HEX128 = re.compile(r"^[0-9a-f]{32}$")
_HEX256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Header:
    """The signed header of a message."""

    type: str
    sender: str
    recipient: str
    id: str
    created: int
    expires: int
    params: str
    profile: Profile
    in_reply_to: str

    def to_json(self) -> dict[str, Any]:
        return {"v": VERSION, "type": self.type, "from": self.sender, "to": self.recipient,
                "id": self.id, "created": self.created, "expires": self.expires,
                "params": self.params, "profile": self.profile, "re": self.in_reply_to}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Header:
        want = {"v", "type", "from", "to", "id", "created", "expires", "params", "profile", "re"}
        if set(obj) != want or obj["v"] != VERSION:
            raise MessageError("message header has unexpected fields or version")
        profile = obj["profile"]
        ok = (
            obj["type"] in MESSAGE_TYPES
            and isinstance(obj["from"], str) and _NAME.fullmatch(obj["from"])
            and isinstance(obj["to"], str) and _NAME.fullmatch(obj["to"])
            and isinstance(obj["id"], str) and _HEX128.fullmatch(obj["id"])
            and type(obj["created"]) is int and type(obj["expires"]) is int
            and isinstance(obj["params"], str) and _HEX256.fullmatch(obj["params"])
            and isinstance(obj["re"], str) and (obj["re"] == "" or _HEX128.fullmatch(obj["re"]))
        )
        if not ok or not is_profile(profile):
            raise MessageError("message header has a malformed field")
        return cls(obj["type"], obj["from"], obj["to"], obj["id"], obj["created"], obj["expires"],
                   obj["params"], profile, obj["re"])


@dataclass(frozen=True)
class Envelope:
    """A verified message: the header, the sender, and the (still boxed) body."""

    header: Header
    sender: PublicIdentity
    body: bytes


def new_id() -> str:
    """A fresh 128-bit message id from the OS CSPRNG, hex."""
    return os.urandom(16).hex()


def seal_envelope(identity: Identity, header: Header, body: bytes) -> bytes:
    """Frame and sign a message.

    Args:
        identity: the sender (its name must be ``header.sender``).
        header: the header to sign.
        body: body bytes (boxed by the caller where they carry personal data).

    Returns:
        The wire bytes.

    Raises:
        MessageError: the header or body is too large, or the sender is wrong.
    """
    if header.sender != identity.name:
        raise MessageError("header sender is not the signing identity")
    hb = canonical.encode(header.to_json())
    if len(hb) > MAX_HEADER or len(body) > MAX_BODY:
        raise MessageError("message header or body is too large")
    frame = _FRAME.pack(MAGIC, VERSION, identity.public.fingerprint, len(hb), len(body)) + hb + body
    return frame + identity.sign(frame)


def open_envelope(
    blob: bytes,
    *,
    lookup: Callable[[bytes], PublicIdentity | None],
    me: str,
    params_digest: str | Callable[[str], str],
    now: float | None = None,
    max_body: int = MAX_BODY,
    blind_digest: str | None = None,
) -> Envelope:
    """Check framing, sender, signature, recipient, time and parameters.

    Args:
        blob: wire bytes.
        lookup: fingerprint -> trusted identity, or None if unknown.
        me: this state's name (the only acceptable recipient).
        params_digest: the digest a sealed-profile header must carry, or a
            function of the sender's name giving it.
        blind_digest: the digest a blind-profile header must carry; None
            refuses blind-profile messages.
        now: current time (seconds since the epoch) for tests.
        max_body: body size limit.

    Returns:
        The verified envelope; the body is not parsed.

    Raises:
        MessageError: truncated, oversized, trailing bytes, malformed header.
        UnknownPeerError: the sender is not in the roster.
        AuthenticationError: the signature does not verify.
        RecipientError: the message is for another state.
        ExpiredError: outside its validity window.
        ParameterError: the parameter digest does not match.
    """
    blob = bytes(blob)
    if len(blob) < _FRAME.size + _SIG:
        raise MessageError("message is truncated")
    magic, version, fpr, hlen, blen = _FRAME.unpack_from(blob)
    if magic != MAGIC:
        raise MessageError("not a pprm message")
    if version != VERSION:
        raise MessageError(f"unsupported message version {version}")
    if hlen > MAX_HEADER or blen > max_body:
        raise MessageError("message is oversized")
    total = _FRAME.size + hlen + blen + _SIG
    if len(blob) < total:
        raise MessageError("message is truncated")
    if len(blob) > total:
        raise MessageError("message has trailing bytes")
    sender = lookup(fpr)
    if sender is None:
        raise UnknownPeerError("message is signed by a state that is not in the roster")
    sender.verify(blob[:-_SIG], blob[-_SIG:])
    hstart = _FRAME.size
    header = Header.from_json(canonical.decode(blob[hstart:hstart + hlen], "message header"))
    if header.sender != sender.name:
        raise MessageError("header sender does not match the signing key")
    if header.recipient != me:
        raise RecipientError(f"message is addressed to {header.recipient}, not {me}")
    t = time.time() if now is None else now
    if header.created > t + CLOCK_SKEW or header.expires < t - CLOCK_SKEW:
        raise ExpiredError("message is expired or not yet valid")
    if header.expires <= header.created or header.expires - header.created > MAX_LIFETIME:
        raise MessageError("message has an implausible lifetime")
    if header.profile == "blind":
        want = blind_digest
    else:
        want = params_digest(header.sender) if callable(params_digest) else params_digest
    if want is None or header.params != want:
        raise ParameterError("message was made for another parameter set")
    return Envelope(header, sender, blob[hstart + hlen:-_SIG])
