"""Answering a query: the responder side of step one.

The flow keeps the roles apart: the key service verifies the query, the
matcher (public material only) computes the masked encrypted result, the key
service decrypts it to capped candidate tokens, and the node signs and boxes
the answer. The probe exists only in memory for the duration of the call.

Between verifying and matching, the state's policy (:mod:`pprm.node.policy`)
decides: a query with a purpose not on the list, or over a quota, gets a
signed refusal instead of an answer, and is never matched.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from pprm.errors import KeyRotationError, MessageError
from pprm.matching.blind import BlindAnswer, BlindMatcher
from pprm.matching.diagonals import BlindDatabase
from pprm.matching.gallery import EncryptedGallery
from pprm.matching.sealed import MaskedResult
from pprm.node.blind_store import AnsweredQuery
from pprm.node.keyservice import KeyService
from pprm.node.policy import QuotaLedger, Refusal, decide
from pprm.node.state import State
from pprm.protocol.blind_messages import BlindAnswerBody, KeyAnnouncementBody
from pprm.protocol.envelope import Envelope, Header, new_id, seal_envelope
from pprm.protocol.messages import AnswerBody, RefusalBody

__all__ = ["BlindBackend", "Matcher", "Responder", "Response"]

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Response:
    """What :meth:`Responder.respond` handed over for one query.

    Attributes:
        message: the signed answer or refusal, boxed to the requester.
        peer: the requesting state.
        query_id: the query's id.
        profile: ``"sealed"`` or ``"blind"``.
        refused: None for an answer, else the refusal's reason code.
        reason: the refusal's human-readable line (None for an answer).
    """

    message: bytes = field(repr=False)
    peer: str
    query_id: str
    profile: str
    refused: str | None = None
    reason: str | None = None


class Matcher(Protocol):
    """What the responder needs of a sealed matcher (one process, or shards on a cluster)."""

    def match(self, probe: np.ndarray, threshold: float, progress: Progress | None = None) -> MaskedResult: ...


class BlindBackend(Protocol):
    """What the responder needs of a blind matcher held elsewhere (shards on a cluster)."""

    def answer_blind(self, probe: bytes, key_id: str, public_key: bytes, galois_keys: bytes,
                     tau: float) -> BlindAnswer: ...


class Responder:
    """Answers signed queries addressed to one state.

    Args:
        state: the responding state.
        matcher: the sealed matcher for a gallery view (default
            :meth:`State.matcher`, in this process); a sharded one
            (:mod:`pprm.cluster`) syncs the view to its workers first.
        blind: the blind matcher for a database and its gallery version
            (default: :class:`BlindMatcher` in this process); a sharded one
            syncs the database to its workers first.
    """

    def __init__(self, state: State, *, matcher: Callable[[EncryptedGallery], Matcher] | None = None,
                 blind: Callable[[BlindDatabase, str], BlindBackend] | None = None) -> None:
        self.state = state
        self.key_service = KeyService(state)
        self.quota = QuotaLedger(state.path("quota.json"))
        self._matcher = matcher if matcher is not None else state.matcher
        self._blind = blind

    def __repr__(self) -> str:
        return f"Responder({self.state.config.name})"

    def answer(self, query: bytes, *, sink: Callable[[bytes], None] | None = None,
               progress: Progress | None = None, now: float | None = None,
               announcements: Sequence[bytes] = ()) -> bytes:
        """Answer one query message, or refuse it by policy.

        Args:
            query: the signed query bytes.
            sink: called with the answer (or refusal) bytes before the query
                is marked used and logged; if it raises, nothing is recorded.
            progress: called with ``(blocks done, total)`` while matching.
            now: clock override for tests.
            announcements: blind profile: key announcements delivered with the
                query; they are accepted (cached, logged) only if the answer
                or refusal is handed over, in the same step.

        Returns:
            The signed answer, boxed to the requester; or, when this state's
            policy refuses the query (purpose not on the list, a quota used
            up), a signed refusal boxed to the requester. See :meth:`respond`
            to tell them apart.

        Raises:
            MessageError and subclasses, UnknownPeerError, ParameterError,
            TemplateError: the query is invalid; no state changes.
        """
        return self.respond(query, sink=sink, progress=progress, now=now, announcements=announcements).message

    def respond(self, query: bytes, *, sink: Callable[[bytes], None] | None = None,
                progress: Progress | None = None, now: float | None = None,
                announcements: Sequence[bytes] = ()) -> Response:
        """As :meth:`answer`, and say whether the message is an answer or a refusal.

        A refusal is recorded like an answer (the query id is marked used,
        so a replay is refused as a replay; an audit entry ``refuse``), but
        nothing is matched, no token is minted and no quota is used.

        Raises:
            As :meth:`answer`.
        """
        st = self.state
        t = time.time() if now is None else now
        # The envelope is verified (signature first) before its profile picks the path.
        if self.key_service.query_profile(query, t) == "blind":
            return self._answer_blind(query, sink, t, announcements)
        if announcements:
            raise MessageError("key announcements come only with blind-profile queries")
        with st.lock():
            vq = self.key_service.verify_query(query, t)
            qh = vq.envelope.header
            refusal = decide(st.config, self.quota, qh.sender, vq.body.case, vq.body.purpose, t)
            if refusal is not None:
                return self._refuse(vq.envelope, vq.body.case, vq.body.purpose, refusal, sink, t)
            # One view of the gallery for both roles: the matcher's public
            # material, and the index the key service maps hits through.
            gallery = st.gallery()
            result = self._matcher(gallery).match(vq.body.probe, st.config.threshold, progress)
            release = self.key_service.release(query, result, t, gallery)
            body = AnswerBody(qh.id, bool(release.tokens), release.tokens)
            ident = st.identity()
            header = Header("answer", st.config.name, qh.sender, new_id(), int(t),
                            int(t) + st.config.token_ttl, st.config.parameter_set.digest,
                            "sealed", qh.id)
            answer = seal_envelope(ident, header, ident.box_to(vq.envelope.sender, body.to_bytes()))
            if sink is not None:
                sink(answer)
            self.key_service.commit_release(release, header.id, t)
            self.quota.record(qh.sender, vq.body.case, t)
        return Response(answer, qh.sender, qh.id, "sealed")

    def _refuse(self, env: Envelope, case: str, purpose: str, refusal: Refusal,
                sink: Callable[[bytes], None] | None, t: float,
                announcements: Sequence[tuple[Envelope, KeyAnnouncementBody]] = ()) -> Response:
        """Sign and hand over a refusal, then record it (caller holds the state lock)."""
        st = self.state
        qh = env.header
        digest = st.config.blind_parameter_set.digest if qh.profile == "blind" else st.config.parameter_set.digest
        body = RefusalBody(qh.id, refusal.reason, refusal.message)
        ident = st.identity()
        header = Header("refusal", st.config.name, qh.sender, new_id(), int(t), int(t) + st.config.token_ttl,
                        digest, qh.profile, qh.id)
        msg = seal_envelope(ident, header, ident.box_to(env.sender, body.to_bytes()))
        if sink is not None:
            sink(msg)
        # Announced keys are public material, valid on their own: the
        # requester counts them as delivered, so they are kept.
        for ann_env, ann in announcements:
            self._commit_keys(ann_env, ann, t)
        st.audit.append("refuse", peer=qh.sender, query_id=qh.id, refusal_id=header.id, case=case,
                        purpose=purpose, reason=refusal.reason, profile=qh.profile)
        self.key_service.commit_seen(env, t)
        return Response(msg, qh.sender, qh.id, qh.profile, refusal.reason, refusal.message)

    def accept_keys(self, announcement: bytes, *, now: float | None = None) -> str:
        """Verify and cache a peer's blind-profile key announcement.

        Args:
            announcement: the signed ``keys`` message.
            now: clock override for tests.

        Returns:
            The key id.

        Raises:
            MessageError and subclasses: bad message or replay.
            KeyRotationError: the key id was announced before or does not
                match the key material.
            CiphertextError: the keys do not load.
        """
        st = self.state
        t = time.time() if now is None else now
        with st.lock():
            env, body = self.key_service.verify_announcement(announcement, t)
            st.blind_store.check_new_keys(env.header.sender, body, t)
            self._commit_keys(env, body, t)
        return body.key_id

    def _commit_keys(self, env: Envelope, body: KeyAnnouncementBody, t: float) -> None:
        st = self.state
        st.blind_store.store_keys(env.header.sender, body)
        st.audit.append("keys", peer=env.header.sender, key_id=body.key_id, expires=body.expires)
        self.key_service.commit_seen(env, t)

    def _answer_blind(self, query: bytes, sink: Callable[[bytes], None] | None, t: float,
                      announcements: Sequence[bytes]) -> Response:
        """Answer a blind-profile query: the probe stays encrypted under the requester's key."""
        st = self.state
        ks = self.key_service
        ctx = st.blind_ctx
        p = ctx.params
        with st.lock():
            pending = [ks.verify_announcement(a, t) for a in announcements]
            vq = ks.verify_blind_query(query, t)
            qh = vq.envelope.header
            fresh = {body.key_id: (env, body) for env, body in pending}
            if len(fresh) != len(pending):
                raise MessageError("the same key is announced twice")
            loaded = {body.key_id: st.blind_store.check_new_keys(env.header.sender, body, t)
                      for env, body in pending}
            if vq.body.key_id in loaded:
                if fresh[vq.body.key_id][0].header.sender != qh.sender:
                    raise KeyRotationError("this key was announced by another state")
                public_key, galois = loaded[vq.body.key_id]
            else:
                public_key, galois = st.blind_store.keys_for(vq.body.key_id, qh.sender, t)
            refusal = decide(st.config, self.quota, qh.sender, vq.body.case, vq.body.purpose, t)
            if refusal is not None:
                return self._refuse(vq.envelope, vq.body.case, vq.body.purpose, refusal, sink, t, pending)
            probe = ctx.load_seeded_ciphertext(vq.body.probe, scale=float(2**p.probe_scale_bits))
            gallery = st.gallery()
            version = gallery.version
            db = st.blind_store.database(version, ks.export_templates)
            if self._blind is None:
                result = BlindMatcher(ctx, db).answer(probe, public_key, galois, st.config.threshold)
            else:
                blobs = ((fresh[vq.body.key_id][1].public, fresh[vq.body.key_id][1].galois)
                         if vq.body.key_id in fresh else st.blind_store.key_blobs(vq.body.key_id))
                result = self._blind(db, version).answer_blind(vq.body.probe, vq.body.key_id, *blobs,
                                                               st.config.threshold)
            answer_body = BlindAnswerBody(qh.id, tuple(result.ciphertexts))
            ident = st.identity()
            header = Header("answer", st.config.name, qh.sender, new_id(), int(t), int(t) + st.config.token_ttl,
                            p.digest, "blind", qh.id)
            answer = seal_envelope(ident, header, ident.box_to(vq.envelope.sender, answer_body.to_bytes()))
            if sink is not None:
                sink(answer)
            for env, ann in pending:
                self._commit_keys(env, ann, t)
            # Logged before the query is marked used (see KeyService.commit_release).
            st.audit.append("answer", peer=qh.sender, query_id=qh.id, answer_id=header.id, case=vq.body.case,
                            purpose=vq.body.purpose, profile="blind", key_id=vq.body.key_id,
                            blocks=len(result.ciphertexts), gallery_size=db.size)
            st.blind_store.record_answer(AnsweredQuery(qh.id, qh.sender, vq.body.key_id, result.order, version,
                                                       int(t), []))
            ks.commit_seen(vq.envelope, t)
            self.quota.record(qh.sender, vq.body.case, t)
        return Response(answer, qh.sender, qh.id, "blind")
