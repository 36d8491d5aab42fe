"""Bodies of the sealed-profile messages, and their strict encodings.

Every body is canonical JSON and, on the wire, boxed to the recipient: the
query carries the probe template, case reference and purpose (personal data),
the answer carries the hit flag and the candidate tokens, the follow-up the
token being asked about, the refusal (sent instead of an answer, in either
profile) why the responder's policy refused the query.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from pprm.errors import MessageError
from pprm.protocol import canonical

__all__ = ["QueryBody", "AnswerBody", "FollowUpBody", "RefusalBody", "REFUSAL_REASONS", "check_case_and_purpose",
           "MAX_CASE", "MAX_PURPOSE", "MAX_REFUSAL_MESSAGE"]

# Case references are file numbers; purposes are short phrases. The limits
# keep log lines bounded without constraining real use.
MAX_CASE = 64
MAX_PURPOSE = 200
# A refusal's human-readable line: one sentence, never a template or a score.
MAX_REFUSAL_MESSAGE = 300
# Why a responder refuses a well-formed query (the only codes on the wire):
# the purpose is not on its list, or the requester's rolling 24-hour quota
# for the case, or for all its queries, is used up.
REFUSAL_REASONS = ("purpose", "quota-case", "quota-peer")
# Candidate caps above this are refused by config validation anyway.
MAX_CANDIDATES = 1000
_HEX128 = re.compile(r"^[0-9a-f]{32}$")
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{16,256}$")


def _text(value: object, limit: int, what: str) -> str:
    if not isinstance(value, str) or not value or len(value) > limit or not value.isprintable():
        raise MessageError(f"{what} must be printable text of 1..{limit} characters")
    return value


def check_case_and_purpose(case: object, purpose: object) -> None:
    """Check a case reference and a purpose as every query body does.

    Raises:
        MessageError: either is empty, too long or not printable.
    """
    _text(case, MAX_CASE, "case reference")
    _text(purpose, MAX_PURPOSE, "purpose")


def _fields(obj: dict[str, object], names: set[str], what: str) -> None:
    if set(obj) != names:
        raise MessageError(f"{what} has unexpected fields")


@dataclass(frozen=True)
class QueryBody:
    """What a requester asks: the probe and why."""

    case: str
    purpose: str
    probe: np.ndarray = field(repr=False)

    def to_bytes(self) -> bytes:
        p = np.ascontiguousarray(self.probe, dtype="<f4")
        return canonical.encode({"case": self.case, "purpose": self.purpose, "dim": int(p.size),
                                 "probe": canonical.b64(p.tobytes())})

    @classmethod
    def from_bytes(cls, blob: bytes) -> QueryBody:
        obj = canonical.decode(blob, "query body")
        _fields(obj, {"case", "purpose", "dim", "probe"}, "query body")
        dim = obj["dim"]
        if type(dim) is not int or not 1 <= dim <= 4096:
            raise MessageError("query body has a bad dimension")
        raw = canonical.unb64(obj["probe"], "probe")
        if len(raw) != 4 * dim:
            raise MessageError("probe length does not match its dimension")
        probe = np.frombuffer(raw, dtype="<f4").astype(np.float32)
        return cls(_text(obj["case"], MAX_CASE, "case reference"),
                   _text(obj["purpose"], MAX_PURPOSE, "purpose"), probe)

    def __post_init__(self) -> None:
        check_case_and_purpose(self.case, self.purpose)


@dataclass(frozen=True)
class AnswerBody:
    """What the responder releases: hit or not, and at most k opaque tokens."""

    query_id: str
    hit: bool
    candidates: tuple[str, ...]

    def to_bytes(self) -> bytes:
        return canonical.encode({"query_id": self.query_id, "hit": self.hit,
                                 "candidates": list(self.candidates)})

    @classmethod
    def from_bytes(cls, blob: bytes) -> AnswerBody:
        obj = canonical.decode(blob, "answer body")
        _fields(obj, {"query_id", "hit", "candidates"}, "answer body")
        qid, hit, cands = obj["query_id"], obj["hit"], obj["candidates"]
        if not isinstance(qid, str) or not _HEX128.fullmatch(qid) or type(hit) is not bool:
            raise MessageError("answer body has a malformed field")
        if not isinstance(cands, list) or len(cands) > MAX_CANDIDATES:
            raise MessageError("answer body has a malformed candidate list")
        if any(not isinstance(t, str) or not _TOKEN.fullmatch(t) for t in cands):
            raise MessageError("answer body has a malformed token")
        if hit != bool(cands) or len(set(cands)) != len(cands):
            raise MessageError("answer body is inconsistent")
        return cls(qid, hit, tuple(cands))


@dataclass(frozen=True)
class FollowUpBody:
    """Step two: the requester asks for the record behind one token."""

    query_id: str
    token: str

    def to_bytes(self) -> bytes:
        return canonical.encode({"query_id": self.query_id, "token": self.token})

    @classmethod
    def from_bytes(cls, blob: bytes) -> FollowUpBody:
        obj = canonical.decode(blob, "follow-up body")
        _fields(obj, {"query_id", "token"}, "follow-up body")
        qid, tok = obj["query_id"], obj["token"]
        if not isinstance(qid, str) or not _HEX128.fullmatch(qid):
            raise MessageError("follow-up body has a malformed query id")
        if not isinstance(tok, str) or not _TOKEN.fullmatch(tok):
            raise MessageError("follow-up body has a malformed token")
        return cls(qid, tok)


@dataclass(frozen=True)
class RefusalBody:
    """Sent instead of an answer: the responder's policy refused the query.

    ``reason`` is one of :data:`REFUSAL_REASONS`; ``message`` is one line for
    the operator. Nothing about the gallery is in it: a refusal is decided
    before any matching.
    """

    query_id: str
    reason: str
    message: str

    def __post_init__(self) -> None:
        _refusal_fields(self.query_id, self.reason, self.message)

    def to_bytes(self) -> bytes:
        return canonical.encode({"query_id": self.query_id, "reason": self.reason, "message": self.message})

    @classmethod
    def from_bytes(cls, blob: bytes) -> RefusalBody:
        obj = canonical.decode(blob, "refusal body")
        _fields(obj, {"query_id", "reason", "message"}, "refusal body")
        qid, reason, message = obj["query_id"], obj["reason"], obj["message"]
        _refusal_fields(qid, reason, message)
        return cls(qid, reason, message)


def _refusal_fields(qid: object, reason: object, message: object) -> None:
    if not isinstance(qid, str) or not _HEX128.fullmatch(qid):
        raise MessageError("refusal body has a malformed query id")
    if reason not in REFUSAL_REASONS:
        raise MessageError("refusal body has an unknown reason")
    _text(message, MAX_REFUSAL_MESSAGE, "refusal message")
