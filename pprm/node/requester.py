"""The requesting side: build queries, open answers, ask follow-ups.

The requester keeps an outbox of the queries it sent, so that it accepts an
answer only from the state it asked, only for a query it sent, and only one
answer per query. A signed refusal in reply closes the query the same way.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import numpy as np

from pprm._fs import atomic_write_json, read_json
from pprm.crypto import blind_keys
from pprm.crypto.answer_codec import decode_answer
from pprm.errors import MessageError, PolicyError, RefusedError, ReplayError, StateError, TokenError
from pprm.matching.blind import answer_scale
from pprm.matching.blind_client import decrypt_signs, encrypt_probe
from pprm.matching.templates import normalise_probe
from pprm.node.state import State
from pprm.protocol.blind_messages import BlindAnswerBody, BlindQueryBody, KeyAnnouncementBody, make_handle
from pprm.protocol.envelope import Envelope, Header, new_id, open_envelope, seal_envelope
from pprm.protocol.messages import AnswerBody, FollowUpBody, QueryBody, RefusalBody, check_case_and_purpose

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

    def _check_purpose(self, case: str, purpose: str) -> None:
        """Fail fast on a purpose this state does not send queries for (nothing is recorded)."""
        check_case_and_purpose(case, purpose)
        allowed = self.state.config.purposes
        if purpose not in allowed:
            raise PolicyError(f"purpose {purpose!r} is not one of {self.state.config.name}'s purposes: "
                              f"{', '.join(allowed)}")

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
            PolicyError: the purpose is not on this state's list (the
                peer's list decides on arrival).

        Warning:
            In the sealed profile the probe is boxed to the peer and decrypted
            there: the peer's matcher sees it. Use the blind profile when that
            is not acceptable.
        """
        st = self.state
        peer = st.peer(to)
        body = QueryBody(case, purpose, normalise_probe(probe, peer.dim))
        self._check_purpose(case, purpose)
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

    def blind_query(self, to: str, probe: np.ndarray, case: str, purpose: str, now: float | None = None,
                    sink: Callable[[bytes | None, bytes], None] | None = None) -> tuple[bytes | None, bytes]:
        """Build a signed blind-profile query (and a key announcement when the key is new).

        The probe is encrypted under this state's own key pair for (peer,
        case); a fresh pair is made when there is none or the last one was
        retired (after a follow-up, or at the end of ``blind_key_ttl``).

        Args:
            to: the peer's state code (must be in the roster).
            probe: one template; normalised here.
            case: case reference (boxed).
            purpose: purpose of the search (boxed).
            now: clock override for tests.
            sink: called with ``(announcement, query)`` before anything is
                recorded; if it raises, no key and no query are kept.

        Returns:
            ``(announcement, query)``: the announcement is None when the key
            was announced to this peer before; send it first otherwise.

        Raises:
            UnknownPeerError: ``to`` is not trusted.
            TemplateError: the probe is malformed.
            MessageError: case or purpose are empty or too long.
            PolicyError: the purpose is not on this state's list.
        """
        st = self.state
        peer = st.peer(to)
        self._check_purpose(case, purpose)
        ctx = st.blind_ctx
        t = int(time.time() if now is None else now)
        ident = st.identity()
        digest = ctx.params.digest
        q = normalise_probe(probe, ctx.params.dim)
        announcement = None
        with st.lock():
            ring = st.blind_keyring
            # Keys past their lifetime are retired here, at the next blind
            # query: their secret keys are deleted and decrypt nothing more.
            ring.retire_expired(t)
            kid = ring.active(to, case, t)
            pair = None
            if kid is None:
                pair = blind_keys.generate(ctx)
                kid, expires, sk = pair.key_id, t + st.config.blind_key_ttl, pair.secret_key
                ann = KeyAnnouncementBody(kid, expires, pair.public_blob, pair.galois_blob)
                header = Header("keys", st.config.name, to, new_id(), t, expires, digest, "blind", "")
                announcement = seal_envelope(ident, header, ann.to_bytes())
            else:
                sk = ring.secret_key(kid)
            body = BlindQueryBody(case, purpose, kid, encrypt_probe(ctx, sk, q))
            header = Header("query", st.config.name, to, new_id(), t, t + st.config.query_ttl, digest, "blind", "")
            msg = seal_envelope(ident, header, ident.box_to(peer.identity, body.to_bytes()))
            if sink is not None:
                sink(announcement, msg)
            if pair is not None:
                ring.store(pair, to, case, t, st.config.blind_key_ttl)
                st.audit.append("keys_created", peer=to, key_id=kid, case=case)
            box = self._outbox()
            box[header.id] = {"to": to, "case": case, "purpose": purpose, "created": t,
                              "expires": header.expires, "answer": None, "profile": "blind", "key_id": kid,
                              "candidates": None, "hits": None}
            atomic_write_json(self._outbox_path, box)
            st.audit.append("query", peer=to, query_id=header.id, case=case, purpose=purpose,
                            profile="blind", key_id=kid)
        return announcement, msg

    def abandon(self, query_id: str, reason: str) -> str | None:
        """Give up on a blind query that may not have reached its peer: retire its key.

        A key is announced only with the first query that uses it. If that
        delivery failed, the peer may never have seen the key, and every later
        query under it would be refused as using an unknown key. Retiring it
        (its secret key is deleted) makes the next query to that peer and case
        announce a fresh one. Nothing happens for sealed queries, unknown
        ids, or keys already retired.

        Args:
            query_id: the query's id (from this state's outbox).
            reason: recorded in the keyring and the audit log.

        Returns:
            The retired key id, or None.
        """
        st = self.state
        with st.lock():
            sent = self._outbox().get(query_id)
            if sent is None or sent.get("profile") != "blind" or sent.get("answer") is not None:
                return None
            kid = str(sent["key_id"])
            entry = st.blind_keyring.entries().get(kid)
            if entry is None or entry["retired"] is not None:
                return None
            st.blind_keyring.retire(kid, reason)
            st.audit.append("keys_retired", peer=sent["to"], key_id=kid, query_id=query_id, reason=reason)
        return kid

    def _verify_envelope(self, answer: bytes, now: float | None,
                         kinds: tuple[str, ...] = ("answer",)) -> Envelope:
        st = self.state
        roster = st.roster()

        def digest_of(sender: str) -> str:
            return roster[sender].params_digest

        env = open_envelope(answer, lookup=st.lookup, me=st.config.name, params_digest=digest_of, now=now,
                            blind_digest=st.config.blind_parameter_set.digest)
        if env.header.type not in kinds:
            raise MessageError(f"expected an answer, got a {env.header.type}")
        return env

    def _check_outbox(self, h: Header) -> dict[str, Any]:
        sent = self._outbox().get(h.in_reply_to)
        if sent is None or sent["to"] != h.sender:
            raise MessageError("answer is for a query this state did not send to that peer")
        if sent.get("profile", "sealed") != h.profile:
            raise MessageError("answer is in another profile than its query")
        if sent["answer"] not in (None, h.id):
            raise ReplayError("another answer to this query was already accepted")
        return sent

    def _open_refusal(self, env: Envelope) -> NoReturn:
        """Record a peer's signed refusal as the reply to its query, then raise it."""
        st = self.state
        h = env.header
        body = RefusalBody.from_bytes(st.identity().unbox_from(env.sender, env.body))
        if body.query_id != h.in_reply_to:
            raise MessageError("refusal body and header name different queries")
        with st.lock():
            self._check_outbox(h)
            box = self._outbox()
            entry = box[h.in_reply_to]
            if entry["answer"] is None:
                entry.update(answer=h.id, refused=body.reason)
                atomic_write_json(self._outbox_path, box)
                st.audit.append("refused", peer=h.sender, query_id=h.in_reply_to, refusal_id=h.id,
                                reason=body.reason, profile=h.profile)
        raise RefusedError(f"query {h.in_reply_to} to {h.sender} refused: {body.reason} ({body.message})",
                           peer=h.sender, query_id=h.in_reply_to, reason=body.reason)

    def _open_blind(self, env: Envelope, now: float | None) -> OpenedAnswer:
        """Decrypt a blind answer to at most k candidate handles, once."""
        st = self.state
        h = env.header
        body = BlindAnswerBody.from_bytes(st.identity().unbox_from(env.sender, env.body))
        if body.query_id != h.in_reply_to:
            raise MessageError("answer body and header name different queries")
        with st.lock():
            sent = self._check_outbox(h)
            if sent["answer"] == h.id and sent["candidates"] is not None:
                cands = tuple(sent["candidates"])
                return OpenedAnswer(h.sender, h.in_reply_to, bool(cands), cands)
            ctx = st.blind_ctx
            sk = st.blind_keyring.secret_key(sent["key_id"])
            scale = answer_scale(ctx)
            hits: list[tuple[int, int]] = []
            for pos, blob in enumerate(body.blocks):
                signs = decrypt_signs(ctx, sk, decode_answer(ctx, blob, scale))
                hits.extend((pos, int(j)) for j in np.flatnonzero(signs))
            if len(hits) > st.config.k:
                # The requester sees only signs: a uniform choice, never a ranking.
                pool = list(hits)
                hits = sorted(pool.pop(secrets.randbelow(len(pool))) for _ in range(st.config.k))
            cands = tuple(make_handle(pos, j) for pos, j in hits)
            box = self._outbox()
            entry = box[h.in_reply_to]
            entry.update(answer=h.id, candidates=list(cands))
            atomic_write_json(self._outbox_path, box)
            st.audit.append("answer_received", peer=h.sender, query_id=h.in_reply_to, answer_id=h.id,
                            hit=bool(cands), candidates=len(cands), profile="blind")
        return OpenedAnswer(h.sender, h.in_reply_to, bool(cands), cands)

    def _verify_answer(self, answer: bytes, now: float | None) -> tuple[Header, AnswerBody]:
        """Verify a sealed-profile answer and check it against the outbox; changes nothing."""
        st = self.state
        env = self._verify_envelope(answer, now)
        h = env.header
        if h.profile != "sealed":
            raise MessageError("expected a sealed-profile answer")
        body = AnswerBody.from_bytes(st.identity().unbox_from(env.sender, env.body))
        if body.query_id != h.in_reply_to:
            raise MessageError("answer body and header name different queries")
        self._check_outbox(h)
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
            RefusedError: the reply is a signed refusal by the peer's policy;
                it is recorded (outbox, audit ``refused``) and closes the
                query. Opening it again raises it again.
            MessageError and subclasses: bad, tampered, misaddressed or expired.
            ReplayError: another answer to this query was already accepted.
            UnknownPeerError: the sender is not trusted.
        """
        env = self._verify_envelope(answer, now, ("answer", "refusal"))
        if env.header.type == "refusal":
            self._open_refusal(env)
        if env.header.profile == "blind":
            return self._open_blind(env, now)
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
        if self._verify_envelope(answer, now).header.profile == "blind":
            return self._follow_up_blind(answer, token, now)
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

    def _follow_up_blind(self, answer: bytes, handle: str, now: float | None) -> bytes:
        """Follow up one blind candidate, and retire the key it was found under."""
        st = self.state
        opened = self.open(answer, now)
        if handle not in opened.candidates:
            raise TokenError("handle is not among the candidates of this answer")
        env = self._verify_envelope(answer, now)
        peer = st.peer(env.header.sender)
        t = int(time.time() if now is None else now)
        ident = st.identity()
        header = Header("followup", st.config.name, peer.name, new_id(), t, t + st.config.query_ttl,
                        st.blind_ctx.params.digest, "blind", env.header.in_reply_to)
        body = FollowUpBody(env.header.in_reply_to, handle)
        msg = seal_envelope(ident, header, ident.box_to(peer.identity, body.to_bytes()))
        with st.lock():
            kid = self._outbox()[env.header.in_reply_to]["key_id"]
            # A follow-up reveals decrypted signs: the key never decrypts again.
            st.blind_keyring.retire(kid, f"follow-up on {env.header.in_reply_to}")
            st.audit.append("followup", peer=peer.name, query_id=env.header.in_reply_to, followup_id=header.id,
                            profile="blind", key_id=kid)
        return msg
