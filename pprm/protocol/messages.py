"""Bodies of the sealed-profile messages, and their strict encodings.

Every body is canonical JSON and, on the wire, boxed to the recipient: the
query carries the probe template, case reference and purpose (personal data),
the answer carries the hit flag and the candidate tokens, the follow-up the
token being asked about, the refusal (sent instead of an answer, in either
profile) why the responder's policy refused the query. A refusal also answers
a blind-profile follow-up whose probe does not clear the threshold against
the record behind its handle (reason ``not-a-hit``; the blind follow-up body
is :class:`pprm.protocol.blind_messages.BlindFollowUpBody`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from pprm.errors import MessageError
from pprm.protocol import canonical

__all__ = ["QueryBody", "AnswerBody", "FollowUpBody", "RefusalBody", "REFUSAL_REASONS", "FOLLOWUP_REFUSAL_REASONS",
           "check_case_and_purpose", "MAX_CASE", "MAX_PURPOSE", "MAX_REFUSAL_MESSAGE"]

# Case references are file numbers; purposes are short phrases. The limits
# keep log lines bounded without constraining real use.
MAX_CASE = 64
MAX_PURPOSE = 200
# A refusal's human-readable line: one sentence, never a template or a score.
MAX_REFUSAL_MESSAGE = 300
# Why a responder refuses a well-formed query: the purpose is not on its
# list, or the requester's rolling 24-hour quota for the case, or for all its
# queries, is used up.
REFUSAL_REASONS = ("purpose", "quota-case", "quota-peer")
# Why a responder refuses a well-formed follow-up (blind profile): the probe
# it carries does not clear the threshold against the record behind the
# handle. These and REFUSAL_REASONS are the only codes on the wire.
FOLLOWUP_REFUSAL_REASONS = ("not-a-hit",)
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
    """Step two, sealed profile: the requester asks for the record behind one token.

    A blind-profile follow-up also carries the probe
    (:class:`pprm.protocol.blind_messages.BlindFollowUpBody`).
    """

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
    """Sent instead of an answer or a resolution: the responder refused a query or a follow-up.

    Two shapes, told apart by their exact fields:

    * a query refusal ``{"query_id", "reason", "message"}``: ``reason`` is one
      of :data:`REFUSAL_REASONS`; the header's ``re`` names the query. Nothing
      about the gallery is in it: it is decided before any matching.
    * a follow-up refusal ``{"query_id", "followup_id", "reason", "message"}``
      (blind profile): ``reason`` is one of :data:`FOLLOWUP_REFUSAL_REASONS`;
      the header's ``re`` names the follow-up, ``query_id`` the query whose
      answer named the handle. It says that the follow-up's probe does not
      clear the threshold against the record behind the handle, never by
      how much.

    ``message`` is one line for the operator.

    Raises:
        MessageError: a malformed field, or a reason that does not fit the shape.
    """

    query_id: str
    reason: str
    message: str
    followup_id: str | None = None

    def __post_init__(self) -> None:
        _refusal_fields(self.query_id, self.reason, self.message, self.followup_id)

    @property
    def refused_id(self) -> str:
        """The refused message's id, which the header's ``re`` names: the follow-up's, else the query's."""
        return self.query_id if self.followup_id is None else self.followup_id

    def to_bytes(self) -> bytes:
        obj = {"query_id": self.query_id, "reason": self.reason, "message": self.message}
        if self.followup_id is not None:
            obj["followup_id"] = self.followup_id
        return canonical.encode(obj)

    @classmethod
    def from_bytes(cls, blob: bytes) -> RefusalBody:
        obj = canonical.decode(blob, "refusal body")
        if set(obj) not in ({"query_id", "reason", "message"}, {"query_id", "followup_id", "reason", "message"}):
            raise MessageError("refusal body has unexpected fields")
        fid = obj.get("followup_id")
        if "followup_id" in obj and not isinstance(fid, str):
            raise MessageError("refusal body has a malformed follow-up id")
        _refusal_fields(obj["query_id"], obj["reason"], obj["message"], fid)
        return cls(obj["query_id"], obj["reason"], obj["message"], fid)


def _refusal_fields(qid: object, reason: object, message: object, followup_id: object) -> None:
    if not isinstance(qid, str) or not _HEX128.fullmatch(qid):
        raise MessageError("refusal body has a malformed query id")
    if followup_id is None:
        if reason not in REFUSAL_REASONS:
            raise MessageError("refusal body has an unknown reason")
    else:
        if not isinstance(followup_id, str) or not _HEX128.fullmatch(followup_id):
            raise MessageError("refusal body has a malformed follow-up id")
        if reason not in FOLLOWUP_REFUSAL_REASONS:
            raise MessageError("refusal body has an unknown reason for a follow-up")
    _text(message, MAX_REFUSAL_MESSAGE, "refusal message")
