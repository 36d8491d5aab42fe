"""The key service: the only role of a state that holds the CKKS secret key.

It enrols and removes templates (symmetric encryption), decrypts *masked*
results only when they are bound to a valid, unexpired, single-use signed
query from a trusted peer, releases at most ``k`` candidates as opaque
per-query tokens, resolves a token only for the state it was released to,
and logs every release and resolution. A blind-profile handle is resolved
only if the probe the follow-up carries clears the threshold against the
record behind it; otherwise the follow-up gets a signed refusal
(:class:`~pprm.errors.NotAHitError` carries it to the caller).

It is also the door for incoming messages: :meth:`KeyService.verify_incoming`
checks a query once (signature first, then the header, replay, and only
then the box and the body) and returns a :class:`VerifiedQuery` or
:class:`VerifiedBlindQuery`. Everything after the door takes that object,
never the bytes again; :meth:`KeyService.release` accepts only objects this
key service issued, so a caller cannot hand it a query it made up.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import secrets
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, NoReturn, TypeVar

import numpy as np
import tenseal.sealapi as seal

from pprm.crypto import keys
from pprm.errors import (
    AuthenticationError,
    GalleryError,
    MessageError,
    NotAHitError,
    StateError,
    TemplateError,
    TokenError,
)
from pprm.matching.decide import SealedDecider
from pprm.matching.gallery import EncryptedGallery
from pprm.matching.owner import GalleryOwner
from pprm.matching.sealed import MaskedResult
from pprm.matching.templates import normalise_probe, reference_list
from pprm.node.blind_store import AnsweredQuery
from pprm.node.state import State
from pprm.profile import Profile
from pprm.protocol.blind_messages import BlindFollowUpBody, BlindQueryBody, KeyAnnouncementBody, parse_handle
from pprm.protocol.envelope import Envelope, Header, new_id, open_envelope, seal_envelope
from pprm.protocol.messages import FollowUpBody, QueryBody, RefusalBody
from pprm.protocol.replay import ReplayCache
from pprm.protocol.tokens import TokenMinter

__all__ = ["KeyService", "VerifiedQuery", "VerifiedBlindQuery", "VerifiedAnnouncement", "Release", "Resolution"]

Progress = Callable[[int, int], None]


# eq=False: a verified query is compared by identity, which is what lets
# the key service recognise the objects it issued (see KeyService.release).
@dataclass(frozen=True, eq=False)
class VerifiedQuery:
    """A sealed-profile query whose envelope, box and body all checked out.

    Attributes:
        envelope: the verified envelope (header, sender; the body still boxed).
        body: the unboxed, parsed query body.
    """

    envelope: Envelope
    body: QueryBody

    @property
    def profile(self) -> Profile:
        """Always ``"sealed"``."""
        return "sealed"

    def __repr__(self) -> str:
        h = self.envelope.header
        return f"VerifiedQuery(from={h.sender}, id={h.id})"


@dataclass(frozen=True, eq=False)
class VerifiedBlindQuery:
    """A blind-profile query whose envelope, box and body all checked out.

    Attributes:
        envelope: the verified envelope.
        body: the unboxed, parsed blind query body (the probe is still a
            ciphertext; it is parsed when the matcher gets it).
    """

    envelope: Envelope
    body: BlindQueryBody

    @property
    def profile(self) -> Profile:
        """Always ``"blind"``."""
        return "blind"

    def __repr__(self) -> str:
        h = self.envelope.header
        return f"VerifiedBlindQuery(from={h.sender}, id={h.id}, key={self.body.key_id})"


_Verified = TypeVar("_Verified", VerifiedQuery, VerifiedBlindQuery)


class VerifiedAnnouncement(NamedTuple):
    """A blind-profile key announcement whose envelope and body checked out (signed, not boxed).

    Attributes:
        envelope: the verified envelope.
        body: the parsed announcement (public key material).
    """

    envelope: Envelope
    body: KeyAnnouncementBody


@dataclass(frozen=True)
class Release:
    """What the key service lets out for one query."""

    query: VerifiedQuery
    hits: int
    tokens: tuple[str, ...]


@dataclass(frozen=True)
class Resolution:
    """A resolved follow-up."""

    reference: str
    requester: str
    query_id: str
    followup_id: str


class KeyService:
    """Secret-key operations of one state.

    Args:
        state: the state; its private files are read here and only here.
        messages: sign the refusal of a blind follow-up that is not a hit
            with the state's identity (the default). A key service of a split
            state (:mod:`pprm.node.keyservice_host`) does not hold the
            state's signing key: it records the refusal, and its front signs
            it (:class:`~pprm.errors.NotAHitError` then carries no message,
            only ``refusal_id``).

    The secret key and the token key are read on first use, not here: the
    same class verifies incoming messages (public material and the box key
    only) in a front that has no secret keys at all.
    """

    def __init__(self, state: State, *, messages: bool = True) -> None:
        self.state = state
        self._messages = messages
        self._replay = ReplayCache(state.path("replay.json"))
        # The verified queries this key service handed out; weak, so a query
        # dropped by its caller is forgotten here too.
        self._issued: weakref.WeakSet[VerifiedQuery | VerifiedBlindQuery] = weakref.WeakSet()

    def __repr__(self) -> str:
        return f"KeyService({self.state.config.name})"

    @functools.cached_property
    def _sk(self) -> seal.SecretKey:
        return keys.load_secret_key(self.state.ctx, self._secret_path())

    @functools.cached_property
    def _minter(self) -> TokenMinter:
        self._secret_path()
        return TokenMinter(self.state.token_key())

    def _secret_path(self) -> str:
        path = self.state.secret_key_path()
        if not os.path.exists(path) and os.path.exists(self.state.path("keyservice.json")):
            raise StateError(f"{self.state.config.name} is split: its secret keys are in its key service, "
                             "not here; use the key service (--key-service ADDR)")
        return path

    # -- gallery ownership -------------------------------------------------
    def enroll(self, templates: np.ndarray, references: Sequence[str],
               progress: Progress | None = None) -> list[int]:
        """Encrypt and store templates; see :meth:`GalleryOwner.enroll`.

        The audit entry is written when the new blocks are durable and just
        before the gallery index switches to them (write-ahead), and carries
        the new gallery version: a crash can leave an entry whose change did
        not take effect (:meth:`reconcile` marks it ``aborted``), never a
        change without an entry.

        Args:
            templates: ``(N, dim)`` floats.
            references: one reference (``str``) per row, in a list or other
                sequence; not a generator.
            progress: as :meth:`GalleryOwner.enroll`.

        Returns:
            The new record ids.

        Raises:
            TemplateError: bad templates or references: not a sequence of
                strings, not one per row, invalid or duplicate (nothing is
                stored, nothing is logged).
        """
        # Before the lock and the log: a generator or a bytes reference is refused with nothing touched.
        refs = reference_list(references)
        with self.state.lock():
            self._reconcile()
            owner = GalleryOwner(self.state.ctx, self._sk, self.state.gallery())

            def log(version: str, total: int) -> None:
                self.state.audit.append("enroll", count=len(refs), total=total, gallery=version)

            return owner.enroll(templates, refs, progress, before_switch=log)

    def remove(self, reference: str) -> None:
        """Remove one record from the gallery; see :meth:`GalleryOwner.remove`.

        Logged write-ahead, as :meth:`enroll`.

        Args:
            reference: an enrolled reference.

        Raises:
            TemplateError: ``reference`` is not a string (nothing changes).
            GalleryError: unknown reference (nothing changes).
        """
        if not isinstance(reference, str):
            raise TemplateError(f"the reference is {type(reference).__name__}, not str; nothing was removed")
        with self.state.lock():
            self._reconcile()
            owner = GalleryOwner(self.state.ctx, self._sk, self.state.gallery())

            def log(version: str, total: int) -> None:
                self.state.audit.append("remove", reference=reference, total=total, gallery=version)

            owner.remove(reference, before_switch=log)

    def remove_many(self, references: Sequence[str], progress: Progress | None = None) -> int:
        """Remove several records at once; see :meth:`GalleryOwner.remove_many`.

        Each block that loses records is decrypted, rounded and re-encrypted
        once, however many of its records go. The call is all or nothing: the
        new blocks are durable before the index switches to all of them at
        once, and one audit entry (``remove``, with ``count`` and the
        ``references`` as a JSON array) is written write-ahead, as for
        :meth:`enroll`, so a crash leaves the gallery before the call or the
        gallery after it, and the log says which.

        Args:
            references: enrolled references, each at most once.
            progress: called with ``(blocks re-encrypted, blocks to re-encrypt)``.

        Returns:
            How many records were removed (``len(references)``; 0 for an
            empty list, which changes and logs nothing).

        Raises:
            TemplateError: ``references`` is not a sequence of strings (the
                message names the first item that is not, by index); nothing
                changes.
            GalleryError: a reference is not enrolled or is listed twice (the
                message names the first one and its index, from 0); nothing
                changes.

        Warning:
            One unknown reference refuses the whole call, by choice: a removal
            list that does not match the gallery (a typo, another state's
            list, records removed before) needs an operator's look, and a
            record that must be erased is never silently left in. Since the
            call is all or nothing, running it again after a crash is safe:
            either nothing was removed, or everything was and the log says so.
        """
        refs = reference_list(references)
        if not refs:
            return 0
        with self.state.lock():
            self._reconcile()
            owner = GalleryOwner(self.state.ctx, self._sk, self.state.gallery())

            def log(version: str, total: int) -> None:
                # One entry for one index switch: the write-ahead rule of _reconcile holds unchanged.
                self.state.audit.append("remove", count=len(refs), references=json.dumps(refs, ensure_ascii=False),
                                        total=total, gallery=version)

            return len(owner.remove_many(refs, before_switch=log, progress=progress))

    def reconcile(self) -> str | None:
        """Mark an interrupted gallery change in the log, if the last one did not take effect.

        Returns:
            The event (``enroll`` or ``remove``) that was marked ``aborted``, or None.
        """
        with self.state.lock():
            return self._reconcile()

    def _reconcile(self) -> str | None:
        last = None
        for e in self.state.audit.entries():
            if e["event"] in ("enroll", "remove", "aborted") and "gallery" in e["data"]:
                last = e
        current = self.state.gallery().version
        if last is None or last["event"] == "aborted" or last["data"]["gallery"] == current:
            return None
        # The process died between logging the change and switching the index:
        # the gallery is the one before the change.
        self.state.audit.append("aborted", change=last["event"], seq=last["seq"], gallery=current)
        return str(last["event"])

    def export_templates(self) -> tuple[np.ndarray, np.ndarray]:
        """Decrypt the whole gallery to build the blind profile's diagonals (memory only).

        Every export is logged (``export``, with the gallery version and the
        number of records): it is the one decryption of the whole gallery.

        Warning:
            The result is the plaintext gallery; see :meth:`GalleryOwner.export_templates`.
        """
        sk = self._sk
        gallery = self.state.gallery()
        # Logged before the decryption: a crash may leave a logged export that did not finish, never the reverse.
        self.state.audit.append("export", gallery=gallery.version, records=len(gallery), purpose="blind-database")
        return GalleryOwner(self.state.ctx, sk, gallery).export_templates()

    # -- step one ----------------------------------------------------------
    def verify_incoming(self, blob: bytes, now: float | None = None) -> VerifiedQuery | VerifiedBlindQuery:
        """Verify a query of either profile end to end, once: the door for query bytes.

        In order: framing, the sender's signature, then the header (type,
        recipient, time, parameters), the replay cache, and only then the box
        and the body. Nothing is recorded (see :meth:`commit_release` and
        :meth:`commit_seen`).

        Args:
            blob: the signed query message.
            now: clock override for tests.

        Returns:
            A :class:`VerifiedQuery` or :class:`VerifiedBlindQuery`, as the
            signed header's profile says.

        Raises:
            MessageError and subclasses: bad framing, signature, recipient,
                expiry, replay or body.
            UnknownPeerError: the sender is not trusted.
            ParameterError: made for another parameter set.
        """
        return self._verify(blob, now, None)

    def verify_query(self, blob: bytes, now: float | None = None) -> VerifiedQuery:
        """Verify a sealed-profile query message end to end (signature before parsing).

        Args:
            blob: the signed query message.
            now: clock override for tests.

        Returns:
            The verified query.

        Raises:
            As :meth:`verify_incoming`; MessageError also for a blind-profile query.
        """
        vq = self._verify(blob, now, "sealed")
        assert isinstance(vq, VerifiedQuery)  # _open refused any other profile
        return vq

    def verify_blind_query(self, blob: bytes, now: float | None = None) -> VerifiedBlindQuery:
        """Verify a blind-profile query message end to end (signature before parsing).

        Args:
            blob: the signed query message.
            now: clock override for tests.

        Returns:
            The verified query.

        Raises:
            As :meth:`verify_incoming`; MessageError also for a sealed-profile query.
        """
        vq = self._verify(blob, now, "blind")
        assert isinstance(vq, VerifiedBlindQuery)  # _open refused any other profile
        return vq

    def query_header(self, blob: bytes, now: float | None = None) -> Header:
        """Verify a query's envelope (signature, recipient, time, parameters, replay) without unboxing it.

        Changes nothing: a network service uses it to refuse a bad delivery
        at intake, before it is stored; answering the stored delivery later
        verifies it again, since it comes back from disk.

        Args:
            blob: the signed query message.
            now: clock override for tests.

        Returns:
            The verified header.

        Raises:
            As :meth:`verify_incoming`, except body errors.
        """
        return self._envelope(blob, "query", now, None).header

    def verify_announcement(self, blob: bytes, now: float | None = None) -> VerifiedAnnouncement:
        """Verify a blind-profile key announcement (signed, not boxed: public material).

        Args:
            blob: the signed ``keys`` message.
            now: clock override for tests.

        Returns:
            The verified announcement (a named tuple ``(envelope, body)``).

        Raises:
            As :meth:`verify_incoming`.
        """
        env = self._envelope(blob, "keys", now, "blind")
        return VerifiedAnnouncement(env, KeyAnnouncementBody.from_bytes(env.body))

    def _verify(self, blob: bytes, now: float | None, profile: Profile | None) -> VerifiedQuery | VerifiedBlindQuery:
        # The one path of every query: signature, header, replay, then box and body.
        env, plain = self._open(blob, "query", now, profile)
        if env.header.profile == "blind":
            return self._issue(VerifiedBlindQuery(env, BlindQueryBody.from_bytes(plain)))
        return self._issue(VerifiedQuery(env, QueryBody.from_bytes(plain)))

    def _issue(self, vq: _Verified) -> _Verified:
        self._issued.add(vq)
        return vq

    def _envelope(self, blob: bytes, kind: str, now: float | None, profile: Profile | None) -> Envelope:
        st = self.state
        env = open_envelope(blob, lookup=st.lookup, me=st.config.name,
                            params_digest=st.config.parameter_set.digest, now=now,
                            blind_digest=st.config.blind_parameter_set.digest)
        if env.header.type != kind:
            label = {"followup": "follow-up", "keys": "key announcement"}.get(kind, kind)
            raise MessageError(f"expected a {label}, got a {env.header.type}")
        if profile is not None and env.header.profile != profile:
            raise MessageError(f"expected a {profile}-profile message, got a {env.header.profile}-profile one")
        self._replay.check(env.header.sender, env.header.id)
        return env

    def _open(self, blob: bytes, kind: str, now: float | None, profile: Profile | None) -> tuple[Envelope, bytes]:
        """Verify an incoming message of type ``kind`` that was not seen before; unbox its body."""
        env = self._envelope(blob, kind, now, profile)
        return env, self.state.identity().unbox_from(env.sender, env.body)

    def commit_seen(self, env: Envelope, now: float) -> None:
        """Mark a verified message as used (caller holds the state lock).

        Args:
            env: the verified envelope of a query or key announcement.
            now: the time the message was handled.
        """
        self._replay.add(env.header.sender, env.header.id, env.header.expires, now)

    def commit_seen_id(self, sender: str, msg_id: str, expires: int, now: float) -> None:
        """Mark a message id from ``sender`` used, by id (caller holds the state lock).

        Args:
            sender: the requesting state.
            msg_id: the message's id.
            expires: the message's expiry (the id is kept until then).
            now: the time it was handled.

        Raises:
            ReplayError: the id was used already.
        """
        self._replay.add(sender, msg_id, expires, now)

    def release(self, query: VerifiedQuery, result: MaskedResult, now: float | None = None,
                gallery: EncryptedGallery | None = None) -> Release:
        """Decrypt a masked result and pick at most ``k`` candidates.

        Nothing is recorded; call :meth:`commit_release` once the answer has
        been handed over.

        Args:
            query: the verified query the result answers, as this key service
                returned it from :meth:`verify_incoming` or :meth:`verify_query`.
            result: the matcher's masked result on the current gallery.
            now: clock override for tests.
            gallery: the gallery view the matcher used (saves reloading its
                index); the decider still checks the result against it.

        Returns:
            The release (tokens are fresh and per query).

        Raises:
            AuthenticationError: ``query`` was not verified by this key service.
            ReplayError: the query was answered since it was verified.
            CiphertextError: the result does not match the gallery or parameters.

        Warning:
            The key service decrypts only for queries it verified itself: it
            trusts no caller to have checked the signature, so an object it
            did not issue is refused even if it looks verified. When more
            than ``k`` candidates clear the threshold, ``k`` of them are
            chosen uniformly at random; the key service cannot rank them
            because it only ever sees signs.
        """
        if not isinstance(query, VerifiedQuery) or query not in self._issued:
            raise AuthenticationError("this query was not verified by this key service")
        h = query.envelope.header
        self._replay.check(h.sender, h.id)
        decider = SealedDecider(self.state.ctx, self._sk, gallery or self.state.gallery())
        try:
            hits = decider.hits(result)
        finally:
            decider.close()  # wipes the C path's copy of the key's embedding now, not at collection
        chosen = list(hits)
        if len(chosen) > self.state.config.k:
            chosen = [chosen[i] for i in sorted(_sample(len(chosen), self.state.config.k))]
        issued = int(time.time() if now is None else now)
        fpr = query.envelope.sender.fingerprint
        tokens = tuple(self._minter.mint(fpr, h.id, rid, issued) for rid in chosen)
        return Release(query, len(hits), tokens)

    def commit_release(self, release: Release, answer_id: str, now: float | None = None) -> None:
        """Mark the query used and log the release (caller holds the state lock).

        Args:
            release: from :meth:`release`.
            answer_id: the id of the answer that carried the tokens.
            now: clock override for tests.

        Raises:
            ReplayError: the query was answered meanwhile.
        """
        h = release.query.envelope.header
        t = time.time() if now is None else now
        # Log first, then mark used: a crash in between leaves a logged answer
        # (a replay would then be answered, and logged, once more), never an
        # answer that was handed over and not logged.
        self._replay.check(h.sender, h.id)
        self.state.audit.append(
            "answer", peer=h.sender, query_id=h.id, answer_id=answer_id, case=release.query.body.case,
            purpose=release.query.body.purpose, hits=release.hits, released=len(release.tokens))
        self._replay.add(h.sender, h.id, h.expires, t)

    # -- step two ----------------------------------------------------------
    def resolve(self, blob: bytes, now: float | None = None, *,
                sink: Callable[[bytes], None] | None = None) -> Resolution:
        """Resolve a follow-up's token or handle to its reference, and log it: the door for follow-up bytes.

        The follow-up is verified once, signature first, under the state lock.
        A blind-profile follow-up carries the requester's probe: its handle is
        resolved only if that probe clears this state's threshold against the
        record behind it, and refused with a signed refusal otherwise
        (:meth:`_resolve_blind`).

        Args:
            blob: the signed follow-up message.
            now: clock override for tests.
            sink: receives the signed refusal of a blind follow-up that is not
                a hit, before anything is recorded; if it raises, nothing is
                recorded and the follow-up can be delivered again.

        Returns:
            The resolution (the reference stays with this state's examiner).

        Raises:
            NotAHitError: blind profile: the probe does not clear the
                threshold against the record behind the handle. The signed
                refusal (reason ``not-a-hit``, boxed to the requester) was
                handed to ``sink``, logged (``refuse_followup``), counted
                against the answer's ``k`` and the follow-up's id marked
                used; the error carries the refusal. Nothing is resolved.
            MessageError and subclasses: bad message (a blind one without a
                probe, or with a malformed one or one of another dimension),
                replay, expiry.
            TokenError: a token not released to this requester for this query,
                altered, or older than ``token_ttl``; a handle of an answer
                given to another state, outside the answer, followed up
                before, or beyond the answer's ``k`` follow-ups.
            KeyRotationError: blind profile: the key was retired by a
                follow-up on another query.
            GalleryError: the record was removed since (blind: or the handle
                names an empty slot, or an answer this state never gave).
        """
        st = self.state
        t = time.time() if now is None else now
        with st.lock():
            # A follow-up names its profile in the header; either is accepted here.
            env, plain = self._open(blob, "followup", t, None)
            if env.header.profile == "blind":
                return self._resolve_blind(env, BlindFollowUpBody.from_bytes(plain), t, sink)
            body = FollowUpBody.from_bytes(plain)
            content = self._minter.open(env.sender.fingerprint, body.token)
            if content.query_id != body.query_id:
                raise TokenError("token belongs to another query")
            if content.issued + st.config.token_ttl < t:
                raise TokenError("token has expired")
            reference = st.gallery().index.references.get(content.record_id)
            if reference is None:
                raise GalleryError("the record behind this token is no longer in the gallery")
            st.audit.append("resolve", peer=env.header.sender, query_id=body.query_id,
                            followup_id=env.header.id, reference=reference)
            self._replay.add(env.header.sender, env.header.id, env.header.expires, t)
        return Resolution(reference, env.header.sender, body.query_id, env.header.id)

    def _resolve_blind(self, env: Envelope, body: BlindFollowUpBody, t: float,
                       sink: Callable[[bytes], None] | None) -> Resolution:
        """Resolve a blind-profile handle whose record the follow-up's probe hits (caller holds the state lock).

        Every check of the handle comes first, and changes nothing: the probe
        has this profile's dimension; the answer was given to this peer,
        within ``token_ttl``; the handle was not followed up before and the
        answer has had fewer than ``k`` follow-ups; the key was not retired by
        a follow-up on another query; the handle points inside the answer at
        an occupied slot whose record is still enrolled. Then the probe is
        scored against that record (:meth:`_clears_threshold`): at or above
        the threshold the handle is resolved as before (key retired, handle
        counted, ``resolve`` logged); below it the follow-up is refused
        (:meth:`_refuse_followup`).

        Raises:
            NotAHitError: the probe does not clear the threshold.
            As :meth:`resolve`.

        Warning:
            The responder never sees the requester's decryptions; the probe
            is what proves the hit. A follow-up on an occupied slot that did
            not hit (fishing) is refused, logged, and costs one of the
            answer's ``k`` follow-ups. A requester holding any face that
            clears the threshold against the record (not only the probe it
            searched with) still resolves it: it then holds a matching face
            already, and reveals it to this state. Scores within the blind
            matcher's decision margin of the threshold may have been reported
            as hits; they are decided here exactly, so such a candidate below
            the threshold is refused. The score exists only in memory here.
        """
        st = self.state
        store = st.blind_store
        dim = st.blind_ctx.params.dim
        if body.dim != dim:
            raise MessageError(f"the follow-up's probe must have dimension {dim}")
        position, slot = parse_handle(body.token)
        rec = store.answered(body.query_id)
        if rec.peer != env.header.sender:
            raise TokenError("this answer was given to another state")
        if rec.answered + st.config.token_ttl < t:
            raise TokenError("the answer's candidates have expired")
        if body.token in rec.followups:
            raise TokenError("this candidate was already followed up")
        if len(rec.followups) >= st.config.k:
            raise TokenError(f"at most {st.config.k} candidates of one answer can be followed up")
        store.check_followup(rec.key_id, rec.query_id)
        layout = store.layout(rec.version)
        if not (0 <= position < len(rec.order) and 0 <= slot < layout.shape[1]):
            raise TokenError("the handle points outside the answer")
        record_id = int(layout[rec.order[position], slot])
        reference = st.gallery().index.references.get(record_id) if record_id >= 0 else None
        if reference is None:
            raise GalleryError("there is no record behind this candidate (empty slot or removed since)")
        if not self._clears_threshold(body.probe, record_id):
            self._refuse_followup(env, body, rec, t, sink)
        store.retire_for_followup(rec.key_id, rec.query_id)
        store.record_answer(dataclasses.replace(rec, followups=[*rec.followups, body.token]))
        st.audit.append("resolve", peer=env.header.sender, query_id=body.query_id, followup_id=env.header.id,
                        reference=reference, profile="blind", key_id=rec.key_id)
        self._replay.add(env.header.sender, env.header.id, env.header.expires, t)
        return Resolution(reference, env.header.sender, body.query_id, env.header.id)

    def _clears_threshold(self, probe: np.ndarray, record_id: int) -> bool:
        """Whether ``probe`` scores at least the threshold against record ``record_id`` (the matcher's rule).

        The probe is normalised as every matcher normalises probes
        (:func:`~pprm.matching.templates.normalise_probe`: a float32 unit
        vector), and its float64 inner product with the record's template as
        enrolled (unit length, on the parameter set's grid: the values the
        blind database encodes, so the cosine up to that rounding) is compared
        with this state's configured threshold.

        Args:
            probe: the follow-up's probe.
            record_id: an enrolled record.

        Returns:
            True for a hit.

        Raises:
            MessageError: the probe cannot be normalised.
            GalleryError: the record has no slot.

        Warning:
            The score never leaves this method: it is not returned, logged,
            or put into an exception or a message.
        """
        st = self.state
        try:
            unit = normalise_probe(probe, st.blind_ctx.params.dim).astype(np.float64)
        except TemplateError:
            raise MessageError("the follow-up's probe is not a usable template") from None
        return bool(float(self._record_template(record_id) @ unit) >= st.config.threshold)

    def _record_template(self, record_id: int) -> np.ndarray:
        """Decrypt one record's template, exactly as enrolled (memory only).

        Only the record's block is decrypted (one ciphertext per component)
        and its slot kept: the same grid values :meth:`export_templates`
        gives for the record, from which the blind database is built.

        Args:
            record_id: an enrolled record.

        Returns:
            ``float64[dim]``.

        Raises:
            GalleryError: the record has no slot.

        Warning:
            The result is a plaintext template; callers must not write,
            log or send it.
        """
        gallery = self.state.gallery()
        block, slot = gallery.index.locate(record_id)
        owner = GalleryOwner(self.state.ctx, self._sk, gallery)
        # The owner's exact decryption (noise rounded off to the enrolment grid),
        # the one export_templates uses.
        return owner.decrypt_record(block, slot)

    def _refuse_followup(self, env: Envelope, body: BlindFollowUpBody, rec: AnsweredQuery, t: float,
                         sink: Callable[[bytes], None] | None) -> NoReturn:
        """Refuse a blind follow-up that is not a hit: hand over a signed refusal, record it, raise (lock held).

        What changes: the audit log gets ``refuse_followup`` (peer, query id,
        follow-up id, refusal id, reason, profile, key id: no score, no
        handle's record); the answer's record in ``blind/queries/`` lists the
        handle, so it counts against ``k`` and cannot be followed up again
        with another probe; the replay cache marks the follow-up's id used.
        What does not: nothing is resolved and no reference is logged; the
        requester's key is not retired here (a resolution retires it; the
        requester retired it on its side when it sent the follow-up); no
        quota is used; gallery, database and announced keys are untouched.

        Order: handed over (``sink``), logged, counted, marked used. A crash
        in between leaves a logged refusal whose follow-up can be delivered
        once more (refused and logged again), never an unlogged one.

        Raises:
            NotAHitError: always, carrying the signed refusal.
        """
        st = self.state
        h = env.header
        reason = "not-a-hit"
        refusal = RefusalBody(body.query_id, reason, "the follow-up's probe does not clear the threshold against "
                              "the record behind this candidate", followup_id=h.id)
        header = Header("refusal", st.config.name, h.sender, new_id(), int(t), int(t) + st.config.token_ttl,
                        st.blind_ctx.params.digest, "blind", h.id)
        msg = b""
        if self._messages:
            ident = st.identity()
            msg = seal_envelope(ident, header, ident.box_to(env.sender, refusal.to_bytes()))
        if sink is not None:
            sink(msg)
        st.audit.append("refuse_followup", peer=h.sender, query_id=body.query_id, followup_id=h.id,
                        refusal_id=header.id, reason=reason, profile="blind", key_id=rec.key_id)
        st.blind_store.record_answer(dataclasses.replace(rec, followups=[*rec.followups, body.token]))
        self._replay.add(h.sender, h.id, h.expires, t)
        raise NotAHitError(f"follow-up {h.id} from {h.sender} on query {body.query_id} refused ({reason}): its "
                           "probe does not clear the threshold against the record behind the candidate",
                           peer=h.sender, query_id=body.query_id, followup_id=h.id, refusal=msg,
                           refusal_id=header.id)


def _sample(n: int, k: int) -> set[int]:
    """k distinct indices out of n, from the OS CSPRNG."""
    chosen: set[int] = set()
    while len(chosen) < k:
        chosen.add(secrets.randbelow(n))
    return chosen
