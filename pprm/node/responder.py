"""Answering a query: the responder side of step one.

The flow keeps the roles apart: the key service verifies the query, the
matcher (public material only) computes the masked encrypted result, the key
service decrypts it to capped candidate tokens, and the node signs and boxes
the answer. The probe exists only in memory for the duration of the call.

A query's bytes are verified once, at the door (:meth:`KeyService.verify_incoming`:
signature first, then header checks and replay, then the box and the body);
from there on every step takes the verified object. The same holds for the
key announcements delivered with a blind query.

Between verifying and matching, the state's policy (:mod:`pprm.node.policy`)
decides: a query with a purpose not on the list, or over a quota, gets a
signed refusal instead of an answer, and is never matched.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pprm.errors import KeyRotationError, MessageError, ParameterError, PprmError
from pprm.matching.blind import AnnouncedKeys, BlindMatcher, BlindRequest
from pprm.matching.diagonals import BlindDatabase
from pprm.matching.gallery import EncryptedGallery
from pprm.matching.protocols import BlindMatching, SealedMatching
from pprm.matching.sealed import MaskedResult
from pprm.matching.templates import normalise_probe
from pprm.node.blind_store import AnsweredQuery
from pprm.node.keyservice import KeyService, VerifiedAnnouncement, VerifiedBlindQuery, VerifiedQuery
from pprm.node.policy import QuotaLedger, Refusal, decide
from pprm.node.remote_keys import RemoteKeyService
from pprm.node.split import front_pin
from pprm.node.state import State
from pprm.profile import Profile
from pprm.protocol.blind_messages import BlindAnswerBody
from pprm.protocol.envelope import Header, new_id, seal_envelope
from pprm.protocol.messages import AnswerBody, RefusalBody

__all__ = ["Responder", "Response", "SealedMatcherFactory", "BlindMatcherFactory", "blind_keys"]

log = logging.getLogger("pprm.responder")

Progress = Callable[[int, int], None]
# How a responder gets its matchers: one for a gallery view (sealed), one
# for a blind database and the gallery version it was built from.
SealedMatcherFactory = Callable[[EncryptedGallery], SealedMatching]
BlindMatcherFactory = Callable[[BlindDatabase, str], BlindMatching]


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
    profile: Profile
    refused: str | None = None
    reason: str | None = None


class Responder:
    """Answers signed queries addressed to one state.

    Args:
        state: the responding state.
        matcher: the sealed matcher for a gallery view (default
            :meth:`State.matcher`, in this process); a sharded one
            (:mod:`pprm.cluster`) syncs the view to its workers first.
        blind: the blind matcher for a database and its gallery version
            (default: :class:`~pprm.matching.blind.BlindMatcher` in this
            process); a sharded one syncs the database to its workers first.
            Both kinds meet :class:`~pprm.matching.protocols.SealedMatching`
            and :class:`~pprm.matching.protocols.BlindMatching`.
        key_service: a split state's key service (default: the one at the
            address recorded when the state was split; none for a
            self-contained state, whose secret keys are in this process).
    """

    def __init__(self, state: State, *, matcher: SealedMatcherFactory | None = None,
                 blind: BlindMatcherFactory | None = None, key_service: RemoteKeyService | None = None) -> None:
        state.check_policy()  # refuse a policy the audit log does not cover (a hand edit of state.json)
        self.state = state
        # The door (verification) is always here; the secret operations are
        # here too unless the state is split, then in its key service.
        self.key_service = KeyService(state)
        self.remote = key_service if key_service is not None else (
            RemoteKeyService(state) if front_pin(state.dir) is not None else None)
        self.quota = QuotaLedger(state.path("quota.json"))
        self._matcher: SealedMatcherFactory = matcher if matcher is not None else state.matcher
        self._blind: BlindMatcherFactory = blind if blind is not None else self._local_blind

    def _local_blind(self, database: BlindDatabase, version: str) -> BlindMatching:
        return BlindMatcher(self.state.blind_ctx, database)

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
            progress: called with ``(done, total)`` while matching: sealed,
                blocks; blind, templates (including loading or building the
                blind database first, when this process does not hold it).
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
        ks = self.key_service
        t = time.time() if now is None else now
        with st.lock():
            vq = ks.verify_incoming(query, t)
            if isinstance(vq, VerifiedBlindQuery):
                verified = [ks.verify_announcement(a, t) for a in announcements]
                if self.remote is not None:
                    return self._answer_blind_split(vq, query, verified, list(announcements), sink, t, progress)
                return self._answer_blind(vq, verified, sink, t, progress)
            if announcements:
                raise MessageError("key announcements come only with blind-profile queries")
            return self._answer_sealed(vq, query, sink, progress, t)

    def respond_many(self, queries: Sequence[bytes], *, sinks: Sequence[Callable[[bytes], None] | None] | None = None,
                     progress: Progress | None = None, now: float | None = None) -> list[Response | PprmError]:
        """Answer several queries, matching the sealed ones in one pass over the gallery.

        Each query is verified, decided by policy, answered or refused,
        handed over, logged and counted on its own, exactly as
        :meth:`respond` would; only the matching is shared: the sealed
        queries that pass the policy are matched together
        (:meth:`pprm.matching.sealed.SealedMatcher.match_many`: each reads
        the same blocks once, each gets its own fresh masks). Blind queries
        are answered one by one, as :meth:`respond` does. One query's failure
        or refusal does not affect the others.

        Args:
            queries: the signed query bytes (no key announcements: a blind
                query that brings some goes through :meth:`respond`).
            sinks: per query, called with its answer or refusal before it is
                recorded (as in :meth:`respond`); None for none.
            progress: called with ``(blocks done, total)`` during the shared pass.
            now: clock override for tests.

        Returns:
            Per query, in order, its :class:`Response`, or the
            :class:`~pprm.errors.PprmError` that stopped it (nothing was
            recorded for that query).

        Raises:
            ParameterError: ``sinks`` has a different length from ``queries``.
        """
        if sinks is None:
            sinks = [None] * len(queries)
        if len(sinks) != len(queries):
            raise ParameterError(f"{len(queries)} queries but {len(sinks)} sinks")
        st = self.state
        t = time.time() if now is None else now
        out: list[Response | PprmError | None] = [None] * len(queries)
        with st.lock():
            batch: list[tuple[int, VerifiedQuery]] = []
            for i, query in enumerate(queries):
                try:
                    vq = self.key_service.verify_incoming(query, t)
                    if isinstance(vq, VerifiedBlindQuery):
                        if self.remote is not None:
                            out[i] = self._answer_blind_split(vq, query, [], [], sinks[i], t)
                        else:
                            out[i] = self._answer_blind(vq, [], sinks[i], t)
                        continue
                    refusal = decide(st.config, self.quota, vq.envelope.header.sender, vq.body.case,
                                     vq.body.purpose, t)
                    if refusal is not None:
                        out[i] = self._refuse(vq, refusal, sinks[i], t)
                    else:
                        # A malformed probe fails its own query here, not the shared pass.
                        normalise_probe(vq.body.probe, st.config.dim)
                        batch.append((i, vq))
                except PprmError as exc:
                    out[i] = exc
            if batch:
                gallery = st.gallery()
                matcher = self._matcher(gallery)
                probes = [vq.body.probe for _, vq in batch]
                many = getattr(matcher, "match_many", None)  # a sharded matcher matches probe by probe
                try:
                    results = many(probes, st.config.threshold, progress) if many is not None else \
                        [matcher.match(p, st.config.threshold, progress) for p in probes]
                except PprmError as exc:  # nothing was decided or recorded for any of them
                    for i, _vq in batch:
                        out[i] = exc
                    results = []
                for (i, vq), result in zip(batch, results, strict=False):
                    try:
                        # Earlier queries of this batch may have used up a quota since the first look.
                        qh = vq.envelope.header
                        refusal = decide(st.config, self.quota, qh.sender, vq.body.case, vq.body.purpose, t)
                        if refusal is not None:
                            out[i] = self._refuse(vq, refusal, sinks[i], t)
                        else:
                            out[i] = self._release_sealed(vq, queries[i], result, gallery, sinks[i], t)
                    except PprmError as exc:
                        out[i] = exc
        return [r for r in out if r is not None]

    def _answer_sealed(self, vq: VerifiedQuery, query: bytes, sink: Callable[[bytes], None] | None,
                       progress: Progress | None, t: float) -> Response:
        """Answer a verified sealed-profile query (caller holds the state lock)."""
        st = self.state
        qh = vq.envelope.header
        refusal = decide(st.config, self.quota, qh.sender, vq.body.case, vq.body.purpose, t)
        if refusal is not None:
            return self._refuse(vq, refusal, sink, t)
        # One view of the gallery for both roles: the matcher's public
        # material, and the index the key service maps hits through.
        gallery = st.gallery()
        result = self._matcher(gallery).match(vq.body.probe, st.config.threshold, progress)
        return self._release_sealed(vq, query, result, gallery, sink, t)

    def _release_sealed(self, vq: VerifiedQuery, query: bytes, result: MaskedResult, gallery: EncryptedGallery,
                        sink: Callable[[bytes], None] | None, t: float) -> Response:
        """The key service's part of a sealed answer, then hand over and record (caller holds the state lock)."""
        qh = vq.envelope.header
        if self.remote is not None:
            return self._answer_split(vq, query, result, sink, t)
        release = self.key_service.release(vq, result, t, gallery)
        body = AnswerBody(qh.id, bool(release.tokens), release.tokens)
        answer, header = self._seal_answer(vq, body.to_bytes(), t)
        if sink is not None:
            sink(answer)
        self.key_service.commit_release(release, header.id, t)
        self.quota.record(qh.sender, vq.body.case, t)
        return Response(answer, qh.sender, qh.id, "sealed")

    def _answer_split(self, vq: VerifiedQuery, query: bytes, result: MaskedResult,
                      sink: Callable[[bytes], None] | None, t: float) -> Response:
        """The end of a sealed answer in a split state: the key service decides (caller holds the state lock).

        The key service verifies the query once more on its own, decrypts,
        and records its release before it replies; this side then hands
        over, logs, marks the query used and counts it, and only then
        confirms to the key service. A crash before the confirmation is
        answered, on redelivery, with the same tokens (the key service
        returns them without decrypting again).
        """
        st = self.state
        assert self.remote is not None
        qh = vq.envelope.header
        released = self.remote.release(query, result)
        body = AnswerBody(qh.id, bool(released.tokens), released.tokens)
        answer, header = self._seal_answer(vq, body.to_bytes(), t)
        if sink is not None:
            sink(answer)
        st.audit.append("answer", peer=qh.sender, query_id=qh.id, answer_id=header.id, case=vq.body.case,
                        purpose=vq.body.purpose, hits=released.hits, released=len(released.tokens))
        self.key_service.commit_seen(vq.envelope, t)
        self.quota.record(qh.sender, vq.body.case, t)
        # Handed over and recorded here: the query is a replay for this front
        # already, so the key service is told off the answering path.
        self.remote.commit_later(qh.sender, qh.id, header.id)
        return Response(answer, qh.sender, qh.id, "sealed")

    def _seal_answer(self, vq: VerifiedQuery | VerifiedBlindQuery, body: bytes, t: float) -> tuple[bytes, Header]:
        """An answer to ``vq``: its body boxed to the requester, under a header signed by this state."""
        st = self.state
        qh = vq.envelope.header
        digest = st.blind_ctx.params.digest if qh.profile == "blind" else st.config.parameter_set.digest
        header = Header("answer", st.config.name, qh.sender, new_id(), int(t), int(t) + st.config.token_ttl,
                        digest, qh.profile, qh.id)
        ident = st.identity()
        return seal_envelope(ident, header, ident.box_to(vq.envelope.sender, body)), header

    def _refuse(self, vq: VerifiedQuery | VerifiedBlindQuery, refusal: Refusal,
                sink: Callable[[bytes], None] | None, t: float,
                announcements: Sequence[VerifiedAnnouncement] = ()) -> Response:
        """Sign and hand over a refusal, then record it (caller holds the state lock)."""
        st = self.state
        env = vq.envelope
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
        for ann in announcements:
            self._commit_keys(ann, t)
        st.audit.append("refuse", peer=qh.sender, query_id=qh.id, refusal_id=header.id, case=vq.body.case,
                        purpose=vq.body.purpose, reason=refusal.reason, profile=qh.profile)
        self.key_service.commit_seen(env, t)
        return Response(msg, qh.sender, qh.id, qh.profile, refusal.reason, refusal.message)

    def _answer_blind_split(self, vq: VerifiedBlindQuery, query: bytes, announcements: Sequence[VerifiedAnnouncement],
                            blobs: Sequence[bytes], sink: Callable[[bytes], None] | None, t: float,
                            progress: Progress | None = None) -> Response:
        """Answer a verified blind-profile query through a split state's key service (caller holds the lock).

        The key service holds the blind database (the gallery in clear) and
        the announced keys: it verifies the query and the announcements once
        more on its own, matches, and records the answer and the keys before
        it replies; this side signs, hands over, logs and counts, then
        confirms. A crash before the confirmation is answered, on
        redelivery, with the same stored answer (never a second, freshly
        masked one).
        """
        st = self.state
        assert self.remote is not None
        qh = vq.envelope.header
        refusal = decide(st.config, self.quota, qh.sender, vq.body.case, vq.body.purpose, t)
        if refusal is not None:
            for blob in blobs:
                self.remote.accept_keys(blob)
            return self._refuse(vq, refusal, sink, t, announcements)
        # The key service matches; the link carries no progress, so the bar shows a start and an end.
        total = len(st.gallery())
        if progress is not None:
            progress(0, total)
        ciphertexts, meta = self.remote.blind_answer(query, blobs)
        if progress is not None:
            progress(total, total)
        answer, header = self._seal_answer(vq, BlindAnswerBody(qh.id, ciphertexts).to_bytes(), t)
        if sink is not None:
            sink(answer)
        for ann in announcements:
            self._commit_keys(ann, t)
        st.audit.append("answer", peer=qh.sender, query_id=qh.id, answer_id=header.id, case=vq.body.case,
                        purpose=vq.body.purpose, profile="blind", key_id=vq.body.key_id,
                        blocks=len(ciphertexts), gallery_size=int(meta.get("gallery_size", 0)))
        self.key_service.commit_seen(vq.envelope, t)
        self.quota.record(qh.sender, vq.body.case, t)
        self.remote.commit_later(qh.sender, qh.id, header.id)
        return Response(answer, qh.sender, qh.id, "blind")

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
            ann = self.key_service.verify_announcement(announcement, t)
            if self.remote is not None:
                self.remote.accept_keys(announcement)
            else:
                st.blind_store.check_new_keys(ann.envelope.header.sender, ann.body, t)
            self._commit_keys(ann, t)
        return ann.body.key_id

    def _commit_keys(self, ann: VerifiedAnnouncement, t: float) -> None:
        st = self.state
        sender = ann.envelope.header.sender
        # A split state's keys are kept by its key service (which matches with them).
        if self.remote is None:
            st.blind_store.store_keys(sender, ann.body)
        st.audit.append("keys", peer=sender, key_id=ann.body.key_id, expires=ann.body.expires)
        self.key_service.commit_seen(ann.envelope, t)

    def _answer_blind(self, vq: VerifiedBlindQuery, announcements: Sequence[VerifiedAnnouncement],
                      sink: Callable[[bytes], None] | None, t: float, progress: Progress | None = None) -> Response:
        """Answer a verified blind-profile query (caller holds the state lock).

        The probe stays encrypted under the requester's key. ``progress``
        counts templates over loading or building the blind database (when
        this process does not hold it yet) and matching
        (:meth:`~pprm.node.blind_store.BlindStore.answering`).
        """
        st = self.state
        ks = self.key_service
        qh = vq.envelope.header
        kid = vq.body.key_id
        keys = blind_keys(st, vq, announcements, t)
        refusal = decide(st.config, self.quota, qh.sender, vq.body.case, vq.body.purpose, t)
        if refusal is not None:
            return self._refuse(vq, refusal, sink, t, announcements)
        # Parsed before the database is loaded or built: a malformed probe changes nothing.
        request = BlindRequest.parse(st.blind_ctx, vq.body.probe, keys)
        # The version actually answered from is recorded: in a service it may be the previous one while
        # the current one is rebuilt, and follow-ups resolve through its layout.
        version, db, matching = st.blind_store.answering(st.gallery().version, ks.export_templates, progress)
        result = self._blind(db, version).answer_blind(request, st.config.threshold, matching)
        answer, header = self._seal_answer(vq, BlindAnswerBody(qh.id, tuple(result.ciphertexts)).to_bytes(), t)
        if sink is not None:
            sink(answer)
        for ann in announcements:
            self._commit_keys(ann, t)
        # Logged before the query is marked used (see KeyService.commit_release).
        st.audit.append("answer", peer=qh.sender, query_id=qh.id, answer_id=header.id, case=vq.body.case,
                        purpose=vq.body.purpose, profile="blind", key_id=kid,
                        blocks=len(result.ciphertexts), gallery_size=db.size)
        st.blind_store.record_answer(AnsweredQuery(qh.id, qh.sender, kid, result.order, version, int(t), []))
        ks.commit_seen(vq.envelope, t)
        self.quota.record(qh.sender, vq.body.case, t)
        return Response(answer, qh.sender, qh.id, "blind")


def blind_keys(state: State, vq: VerifiedBlindQuery, announcements: Sequence[VerifiedAnnouncement],
               t: float) -> AnnouncedKeys:
    """The announced keys a blind query names: announced with it, or before (nothing is stored).

    Args:
        state: the responding state (or a split state's key service), whose
            blind store holds the keys announced before.
        vq: the verified query.
        announcements: verified announcements delivered with it.
        t: the time.

    Returns:
        The keys, checked (:meth:`pprm.node.blind_store.BlindStore.check_new_keys`).

    Raises:
        MessageError: the same key announced twice.
        KeyRotationError: the query's key was announced by another state,
            or is retired or unknown.
        CiphertextError: an announced key does not load.
    """
    qh = vq.envelope.header
    kid = vq.body.key_id
    fresh = {ann.body.key_id: ann for ann in announcements}
    if len(fresh) != len(announcements):
        raise MessageError("the same key is announced twice")
    checked = {ann.body.key_id: state.blind_store.check_new_keys(ann.envelope.header.sender, ann.body, t)
               for ann in announcements}
    if kid in checked:
        if fresh[kid].envelope.header.sender != qh.sender:
            raise KeyRotationError("this key was announced by another state")
        return checked[kid]
    return state.blind_store.keys_for(kid, qh.sender, t)
