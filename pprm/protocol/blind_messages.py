"""Bodies of the blind-profile messages, and their strict binary encodings.

Blind bodies carry ciphertexts and keys of several hundred kB to a few MB, so
they are not JSON with base64 (a third larger): a body is a canonical JSON
part followed by length-prefixed binary parts::

    json length u32 BE | canonical JSON | (part length u32 BE | part)*

The JSON names how many parts follow; nothing may trail the last one.

- ``keys``: a requester's key announcement (public material, signed, not boxed).
- ``query`` (profile blind): case, purpose, key id, and the encrypted probe (boxed).
- ``answer`` (profile blind): one packed ciphertext per gallery block (boxed).

A follow-up names a candidate by a handle ``blind-<position>-<slot>`` (the
answer block and the slot in it); only the responder can map it to a record,
through the secret layout and the per-query block order it kept.

- ``followup`` (profile blind): the handle, its query id and the requester's
  probe (boxed), canonical JSON like the sealed bodies (:class:`BlindFollowUpBody`).
  The responder resolves the handle only if that probe clears its threshold
  against the record in the slot; otherwise it sends a signed refusal
  (:class:`pprm.protocol.messages.RefusalBody`, reason ``not-a-hit``).
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field

import numpy as np

from pprm.errors import MessageError
from pprm.protocol import canonical
from pprm.protocol.messages import MAX_CASE, MAX_PURPOSE

__all__ = ["KeyAnnouncementBody", "BlindQueryBody", "BlindAnswerBody", "BlindFollowUpBody", "pack_parts",
           "unpack_parts", "make_handle", "parse_handle", "MAX_BLOCKS", "MAX_PROBE_DIM"]

_LEN = struct.Struct(">I")
_HEX128 = re.compile(r"^[0-9a-f]{32}$")
_HANDLE = re.compile(r"^blind-([0-9]{6})-([0-9]{6})$")
# 3*10**7 templates at 8192 per block is 3663 blocks; the envelope's 64 MiB
# body limit stops far earlier, this only bounds the JSON.
MAX_BLOCKS = 4096
# A blind follow-up's probe has the blind set's dimension (512 for every set
# so far); the parser bounds it as the sealed query body does, and the key
# service checks the exact dimension.
MAX_PROBE_DIM = 4096


def pack_parts(meta: dict[str, object], parts: list[bytes]) -> bytes:
    """Encode a JSON object and binary parts (see the module docstring)."""
    head = canonical.encode({**meta, "parts": len(parts)})
    out = [_LEN.pack(len(head)), head]
    for part in parts:
        out.append(_LEN.pack(len(part)))
        out.append(part)
    return b"".join(out)


def unpack_parts(blob: bytes, what: str) -> tuple[dict[str, object], list[bytes]]:
    """Strict inverse of :func:`pack_parts`.

    Raises:
        MessageError: truncated, trailing bytes, or a part count that disagrees.
    """
    view = memoryview(blob)
    if len(view) < _LEN.size:
        raise MessageError(f"{what} is truncated")
    (hlen,) = _LEN.unpack_from(view)
    off = _LEN.size + hlen
    if off > len(view):
        raise MessageError(f"{what} is truncated")
    meta = canonical.decode(bytes(view[_LEN.size:off]), what)
    count = meta.pop("parts", None)
    if type(count) is not int or not 0 <= count <= MAX_BLOCKS:
        raise MessageError(f"{what} has a malformed part count")
    parts = []
    for _ in range(count):
        if off + _LEN.size > len(view):
            raise MessageError(f"{what} is truncated")
        (plen,) = _LEN.unpack_from(view, off)
        off += _LEN.size
        if off + plen > len(view):
            raise MessageError(f"{what} is truncated")
        parts.append(bytes(view[off:off + plen]))
        off += plen
    if off != len(view):
        raise MessageError(f"{what} has trailing bytes")
    return meta, parts


def _fields(obj: dict[str, object], names: set[str], what: str) -> None:
    if set(obj) != names:
        raise MessageError(f"{what} has unexpected fields")


def _text(value: object, limit: int, what: str) -> str:
    if not isinstance(value, str) or not value or len(value) > limit or not value.isprintable():
        raise MessageError(f"{what} must be printable text of 1..{limit} characters")
    return value


def _key_id(value: object) -> str:
    if not isinstance(value, str) or not _HEX128.fullmatch(value):
        raise MessageError("key id must be 32 hex digits")
    return value


@dataclass(frozen=True)
class KeyAnnouncementBody:
    """A requester's public key material for one blind key id: public key, Galois keys, relinearisation key."""

    key_id: str
    expires: int
    public: bytes = field(repr=False)
    galois: bytes = field(repr=False)
    relin: bytes = field(repr=False)

    def to_bytes(self) -> bytes:
        return pack_parts({"key_id": self.key_id, "expires": self.expires}, [self.public, self.galois, self.relin])

    @classmethod
    def from_bytes(cls, blob: bytes) -> KeyAnnouncementBody:
        meta, parts = unpack_parts(blob, "key announcement")
        _fields(meta, {"key_id", "expires"}, "key announcement")
        if len(parts) != 3 or not all(parts):
            raise MessageError("key announcement must carry a public key, Galois keys and a relinearisation key")
        expires = meta["expires"]
        if type(expires) is not int or expires <= 0:
            raise MessageError("key announcement has a malformed expiry")
        return cls(_key_id(meta["key_id"]), expires, parts[0], parts[1], parts[2])


@dataclass(frozen=True)
class BlindQueryBody:
    """A blind query: why, under which key, and the encrypted probe."""

    case: str
    purpose: str
    key_id: str
    probe: bytes = field(repr=False)

    def __post_init__(self) -> None:
        _text(self.case, MAX_CASE, "case reference")
        _text(self.purpose, MAX_PURPOSE, "purpose")
        _key_id(self.key_id)

    def to_bytes(self) -> bytes:
        return pack_parts({"case": self.case, "purpose": self.purpose, "key_id": self.key_id}, [self.probe])

    @classmethod
    def from_bytes(cls, blob: bytes) -> BlindQueryBody:
        meta, parts = unpack_parts(blob, "blind query body")
        _fields(meta, {"case", "purpose", "key_id"}, "blind query body")
        if len(parts) != 1 or not parts[0]:
            raise MessageError("blind query body must carry one ciphertext")
        return cls(_text(meta["case"], MAX_CASE, "case reference"),
                   _text(meta["purpose"], MAX_PURPOSE, "purpose"), _key_id(meta["key_id"]), parts[0])


@dataclass(frozen=True)
class BlindAnswerBody:
    """A blind answer: one packed ciphertext per gallery block, in a per-query order."""

    query_id: str
    blocks: tuple[bytes, ...] = field(repr=False)

    def to_bytes(self) -> bytes:
        return pack_parts({"query_id": self.query_id}, list(self.blocks))

    @classmethod
    def from_bytes(cls, blob: bytes) -> BlindAnswerBody:
        meta, parts = unpack_parts(blob, "blind answer body")
        _fields(meta, {"query_id"}, "blind answer body")
        qid = meta["query_id"]
        if not isinstance(qid, str) or not _HEX128.fullmatch(qid):
            raise MessageError("blind answer body has a malformed query id")
        if not parts or len({len(p) for p in parts}) != 1 or not parts[0]:
            raise MessageError("blind answer body must carry non-empty blocks of one size")
        return cls(qid, tuple(parts))


def _followup_probe(value: object) -> np.ndarray:
    """A blind follow-up's probe as read-only float32[dim]: finite, not zero, 1..MAX_PROBE_DIM long."""
    arr = np.asarray(value)
    if arr.ndim != 1 or not 1 <= arr.size <= MAX_PROBE_DIM or not np.issubdtype(arr.dtype, np.floating):
        raise MessageError(f"a follow-up's probe must be 1 to {MAX_PROBE_DIM} floating-point values")
    with np.errstate(over="ignore", invalid="ignore"):  # a value beyond float32 becomes inf, refused below
        p = np.array(arr, dtype=np.float32)
    if not np.isfinite(p).all():
        raise MessageError("a follow-up's probe has a non-finite value")
    if float(np.linalg.norm(p.astype(np.float64))) < 1e-12:
        raise MessageError("a follow-up's probe is a zero vector")
    p.setflags(write=False)
    return p


@dataclass(frozen=True, eq=False)
class BlindFollowUpBody:
    """Step two, blind profile: the handle, and the probe the requester searched with.

    Canonical JSON, boxed to the responder::

        {"dim": D, "probe": base64url(D float32 little-endian), "query_id": ID, "token": HANDLE}

    The probe travels as the requester normalised it (float32, exactly as
    in the sealed query body); the responder normalises it again as its
    matcher normalises probes.

    Attributes:
        query_id: the query whose answer named the handle.
        token: the handle ``blind-PPPPPP-SSSSSS``.
        probe: float32[dim], finite and not zero (read-only; not in the repr).

    Raises:
        MessageError: a malformed field: a query id that is not 32 hex digits,
            a token that is not a blind handle, a probe that is not 1 to
            :data:`MAX_PROBE_DIM` finite float32 values (not all zero) in
            canonical base64 matching ``dim``, or a body without a probe
            (as pprm wrote before blind follow-ups carried one).

    Warning:
        The probe is the requester's biometric data. It goes only to the
        state whose answer named the handle, boxed, and only for a candidate
        the requester chose to pursue, whose record step two reveals to it
        anyway; the responder uses it in memory to check that the record
        behind the handle clears its threshold, and never stores or logs it.
        Equality is by identity (``eq=False``): compare fields explicitly.
    """

    query_id: str
    token: str
    probe: np.ndarray = field(repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.query_id, str) or not _HEX128.fullmatch(self.query_id):
            raise MessageError("blind follow-up body has a malformed query id")
        if not isinstance(self.token, str) or not _HANDLE.fullmatch(self.token):
            raise MessageError("blind follow-up body has a malformed token (not a blind-profile handle)")
        object.__setattr__(self, "probe", _followup_probe(self.probe))

    @property
    def dim(self) -> int:
        """The probe's dimension."""
        return int(self.probe.size)

    def to_bytes(self) -> bytes:
        return canonical.encode({"dim": self.dim, "probe": canonical.b64(self.probe.astype("<f4").tobytes()),
                                 "query_id": self.query_id, "token": self.token})

    @classmethod
    def from_bytes(cls, blob: bytes) -> BlindFollowUpBody:
        obj = canonical.decode(blob, "blind follow-up body")
        if set(obj) == {"query_id", "token"}:
            raise MessageError("blind follow-up body carries no probe; a blind handle is resolved only "
                               "against the probe that found it")
        _fields(obj, {"dim", "probe", "query_id", "token"}, "blind follow-up body")
        dim = obj["dim"]
        if type(dim) is not int or not 1 <= dim <= MAX_PROBE_DIM:
            raise MessageError("blind follow-up body has a bad dimension")
        raw = canonical.unb64(obj["probe"], "follow-up probe")
        if len(raw) != 4 * dim:
            raise MessageError("follow-up probe length does not match its dimension")
        return cls(obj["query_id"], obj["token"], np.frombuffer(raw, dtype="<f4").astype(np.float32))

def make_handle(position: int, slot: int) -> str:
    """The follow-up handle of slot ``slot`` in answer block ``position``."""
    if not (0 <= position < 10**6 and 0 <= slot < 10**6):
        raise MessageError("candidate position out of range")
    return f"blind-{position:06d}-{slot:06d}"


def parse_handle(handle: str) -> tuple[int, int]:
    """Inverse of :func:`make_handle`.

    Raises:
        MessageError: not a blind handle.
    """
    m = _HANDLE.fullmatch(handle) if isinstance(handle, str) else None
    if m is None:
        raise MessageError("not a blind-profile candidate handle")
    return int(m.group(1)), int(m.group(2))
