"""The requesting side: build queries, open answers, ask follow-ups.

The requester keeps an outbox of the queries it sent, so that it accepts an
answer only from the state it asked, only for a query it sent, and only one
answer per query.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from pprm._fs import atomic_write_json, read_json
from pprm.errors import MessageError, ReplayError, StateError, TokenError
from pprm.matching.templates import normalise_probe
from pprm.node.state import State
from pprm.protocol.envelope import Header, new_id, open_envelope, seal_envelope
from pprm.protocol.messages import AnswerBody, FollowUpBody, QueryBody

__all__ = ["Requester", "OpenedAnswer"]


@dataclass(frozen=True)
class OpenedAnswer:
    """What a requester learns from an answer: nothing about scores."""

    sender: str
    query_id: str
    hit: bool
    candidates: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"from": self.sender, "query_id": self.query_id, "hit": self.hit,
                "candidates": list(self.candidates)}


class Requester:
    """Queries peers on behalf of one state.

    Args:
        state: the requesting state.
    """

    def __init__(self, state: State) -> None:
        self.state = state
        self._outbox_path = state.path("outbox.json")

    def __repr__(self) -> str:
        return f"Requester({self.state.config.name})"

    def _outbox(self) -> dict[str, dict[str, Any]]:
        if not os.path.exists(self._outbox_path):
            return {}
        try:
            data = read_json(self._outbox_path)
            if not isinstance(data, dict):
                raise ValueError
            return data
        except ValueError:
            raise StateError("outbox.json is corrupt") from None

    def query(self, to: str, probe: np.ndarray, case: str, purpose: str,
              now: float | None = None) -> bytes:
        """Build a signed query for peer ``to``.

        Args:
            to: the peer's state code (must be in the roster).
            probe: one template of the peer's dimension; normalised here.
            case: case reference (personal data: boxed).
            purpose: purpose of the search (boxed).
            now: clock override for tests.

        Returns:
            The query message bytes.

        Raises:
            UnknownPeerError: ``to`` is not trusted.
            TemplateError: the probe is malformed.
            MessageError: case or purpose are empty or too long.

        Warning:
            In the sealed profile the probe is boxed to the peer and decrypted
            there: the peer's matcher sees it. Use the blind profile when that
            is not acceptable.
        """
        st = self.state
        peer = st.peer(to)
        body = QueryBody(case, purpose, normalise_probe(probe, peer.dim))
        t = int(time.time() if now is None else now)
        ident = st.identity()
        header = Header("query", st.config.name, to, new_id(), t, t + st.config.query_ttl,
                        peer.params_digest, "sealed", "")
        msg = seal_envelope(ident, header, ident.box_to(peer.identity, body.to_bytes()))
        with st.lock():
            box = self._outbox()
            box[header.id] = {"to": to, "case": case, "purpose": purpose, "created": t,
                              "expires": header.expires, "answer": None}
            atomic_write_json(self._outbox_path, box)
            st.audit.append("query", peer=to, query_id=header.id, case=case, purpose=purpose)
        return msg

    def _verify_answer(self, answer: bytes, now: float | None) -> tuple[Header, AnswerBody]:
        """Verify an answer and check it against the outbox; changes nothing."""
        st = self.state
        roster = st.roster()

        def digest_of(sender: str) -> str:
            return roster[sender].params_digest

        env = open_envelope(answer, lookup=st.lookup, me=st.config.name, params_digest=digest_of, now=now)
        h = env.header
        if h.type != "answer":
            raise MessageError(f"expected an answer, got a {h.type}")
        body = AnswerBody.from_bytes(st.identity().unbox_from(env.sender, env.body))
        if body.query_id != h.in_reply_to:
            raise MessageError("answer body and header name different queries")
        sent = self._outbox().get(h.in_reply_to)
        if sent is None or sent["to"] != h.sender:
            raise MessageError("answer is for a query this state did not send to that peer")
        if sent["answer"] not in (None, h.id):
            raise ReplayError("another answer to this query was already accepted")
        return h, body

    def _accept(self, h: Header, body: AnswerBody) -> None:
        """Record the answer as the one accepted for its query (caller holds the lock)."""
        box = self._outbox()
        sent = box[h.in_reply_to]
        if sent["answer"] not in (None, h.id):
            raise ReplayError("another answer to this query was already accepted")
        if sent["answer"] is None:
            sent["answer"] = h.id
            atomic_write_json(self._outbox_path, box)
            self.state.audit.append("answer_received", peer=h.sender, query_id=h.in_reply_to,
                                    answer_id=h.id, hit=body.hit, candidates=len(body.candidates))

    def open(self, answer: bytes, now: float | None = None) -> OpenedAnswer:
        """Verify and open an answer to one of our queries.

        Opening the same answer again returns the same result; a second,
        different answer to the same query is refused.

        Raises:
            MessageError and subclasses: bad, tampered, misaddressed or expired.
            ReplayError: another answer to this query was already accepted.
            UnknownPeerError: the sender is not trusted.
        """
        h, body = self._verify_answer(answer, now)
        with self.state.lock():
            self._accept(h, body)
        return OpenedAnswer(h.sender, h.in_reply_to, body.hit, body.candidates)

    def follow_up(self, answer: bytes, token: str, now: float | None = None) -> bytes:
        """Ask the answering state for the record behind one released token.

        Args:
            answer: the answer message the token came in.
            token: one of its candidates.
            now: clock override for tests.

        Returns:
            The signed follow-up message, boxed to the peer.

        Raises:
            TokenError: the token is not in that answer.
            MessageError and subclasses: the answer does not verify.
        """
        ah, answer_body = self._verify_answer(answer, now)
        if token not in answer_body.candidates:
            raise TokenError("token is not among the candidates of this answer")
        st = self.state
        peer = st.peer(ah.sender)
        t = int(time.time() if now is None else now)
        ident = st.identity()
        header = Header("followup", st.config.name, peer.name, new_id(), t, t + st.config.query_ttl,
                        peer.params_digest, "sealed", ah.in_reply_to)
        body = FollowUpBody(ah.in_reply_to, token)
        msg = seal_envelope(ident, header, ident.box_to(peer.identity, body.to_bytes()))
        with st.lock():
            self._accept(ah, answer_body)
            st.audit.append("followup", peer=peer.name, query_id=ah.in_reply_to, followup_id=header.id)
        return msg
