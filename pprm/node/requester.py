"""The requesting side: build queries, open answers, ask follow-ups.

The requester keeps an outbox of the queries it sent (:mod:`pprm.node.outbox`),
so that it accepts an answer only from the state it asked, only for a query
it sent, and only one answer per query. A signed refusal in reply closes the
query the same way.

A blind query's probe stays in the outbox record (this state's own data, on
its own disk) until no follow-up can follow: a blind follow-up carries it,
boxed to the answering state, which resolves the handle only if the probe
clears its threshold against the record there, and otherwise answers with a
signed refusal (reason ``not-a-hit``) that :meth:`Requester.open` records and
raises as :class:`~pprm.errors.FollowUpRefusedError`.

A blind key pair serves one (peer, case) and is announced with the first
query made under it. When the peer never got that announcement (a lost
query file, a failed delivery) or no longer accepts the key, the key is
abandoned (:meth:`Requester.abandon`, :meth:`Requester.abandon_keys`, ``pprm
keys abandon``, or ``pprm ask`` on the peer's ``key`` error): its secret key
is deleted and the next query makes and announces a fresh one.
:meth:`Requester.blind_keys` lists the key pairs and the queries waiting on
them (``pprm keys list``).

A batch of probes (:meth:`Requester.query_many`) is one query per probe,
each made and recorded as a single one is; in the blind profile they share
the (peer, case) key, announced with the first of them.

Which profile a query to a peer uses is decided in one place,
:meth:`Requester.prepare`: the caller's choice, else the state's configured
profile for that peer. Every reply is verified once (signature first, then
the header, then the box and the body) and handed on as a verified object.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

import numpy as np

from pprm.crypto import blind_keys
from pprm.crypto.answer_codec import decode_answer
from pprm.errors import (
    FollowUpRefusedError,
    MessageError,
    ParameterError,
    PolicyError,
    PprmError,
    ProbeNotKeptError,
    RefusedError,
    ReplayError,
    TokenError,
)
from pprm.matching.blind import answer_scale
from pprm.matching.blind_client import decrypt_signs, encrypt_probe
from pprm.matching.templates import check_rows, normalise_probe
from pprm.node.blind_keyring import BlindKeyRecord
from pprm.node.outbox import Outbox, SentBlindQuery, SentSealedQuery
from pprm.node.state import State
from pprm.profile import Profile, parse_profile
from pprm.protocol.blind_messages import (
    BlindAnswerBody,
    BlindFollowUpBody,
    BlindQueryBody,
    KeyAnnouncementBody,
    make_handle,
)
from pprm.protocol.envelope import Envelope, Header, new_id, open_envelope, seal_envelope
from pprm.protocol.messages import AnswerBody, FollowUpBody, QueryBody, RefusalBody, check_case_and_purpose

__all__ = ["Requester", "OpenedAnswer", "OutgoingQuery", "OutgoingFollowUp", "QuerySink", "BatchSink", "ProbeQuery",
           "BlindKeyStatus", "ABANDONED"]

# Receives ``(announcement or None, query)`` before anything is recorded; if
# it raises, no key and no query are kept (the CLI writes both files here).
QuerySink = Callable[[bytes | None, bytes], None]
# As QuerySink, for one probe of a batch: ``(row, announcement or None, query)``.
BatchSink = Callable[[int, bytes | None, bytes], None]
# Called with ``(done, total)``.
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class OpenedAnswer:
    """What a requester learns from an answer: nothing about scores."""

    sender: str
    query_id: str
    hit: bool
    candidates: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        """The JSON form ``pprm open --json`` prints.

        Returns:
            ``{"from", "query_id", "hit", "candidates"}``.
        """
        return {"from": self.sender, "query_id": self.query_id, "hit": self.hit,
                "candidates": list(self.candidates)}


@dataclass(frozen=True)
class OutgoingQuery:
    """A signed query ready to be delivered, and what goes with it.

    Attributes:
        peer: the state it is addressed to.
        profile: the profile it was made in.
        query_id: its message id (the id its answer will reply to).
        query: the signed query message.
        announcement: blind profile: the signed key announcement to deliver
            with (before) the query when its key is new to the peer; else None.
        key_id: blind profile: the key pair the probe is encrypted under.
    """

    peer: str
    profile: Profile
    query_id: str
    query: bytes = field(repr=False)
    announcement: bytes | None = field(default=None, repr=False)
    key_id: str | None = None

    @property
    def announcements(self) -> list[bytes]:
        """The key announcements to deliver with the query (zero or one)."""
        return [] if self.announcement is None else [self.announcement]


@dataclass(frozen=True)
class ProbeQuery:
    """One probe of a batch (:meth:`Requester.query_many`): its query, or why it has none.

    Attributes:
        row: the probe's row in the batch, from 0.
        query: the signed query made for it (its own id, recorded on its
            own); None when ``error`` is set.
        error: why no query was made for this probe (nothing was recorded
            for it); None when ``query`` is set.
    """

    row: int
    query: OutgoingQuery | None = None
    error: PprmError | None = None

    @property
    def ok(self) -> bool:
        """Whether a query was made for this probe."""
        return self.query is not None


# The reason recorded for keys an operator abandons (keyring, audit log).
ABANDONED = "abandoned by the operator"


@dataclass(frozen=True)
class BlindKeyStatus:
    """One of this state's blind key pairs as a requester, and the queries that depend on it.

    Attributes:
        key_id: the key id.
        peer: the state it serves.
        case: the case it serves.
        created: when it was made, seconds since the epoch.
        expires: when its lifetime ends.
        retired: why it was retired (its secret key is deleted), or None.
        announced_with: the query whose delivery (or query file) carried its
            announcement; None when the outbox no longer says.
        confirmed: the peer answered a query under it, so it holds the key.
        pending: unexpired queries under it with no reply yet; a retired
            key's pending queries can no longer be opened.
    """

    key_id: str
    peer: str
    case: str
    created: int
    expires: int
    retired: str | None
    announced_with: str | None
    confirmed: bool
    pending: tuple[str, ...]

    def status(self, now: float) -> str:
        """Where the key stands at ``now``.

        Returns:
            ``live`` (the next query to its peer and case uses it),
            ``expired`` (its lifetime is over; retired at the next blind
            query) or ``retired``.
        """
        if self.retired is not None:
            return "retired"
        return "live" if self.expires > now else "expired"

    def to_json(self, now: float) -> dict[str, Any]:
        """The JSON form ``pprm keys list --json`` prints.

        Returns:
            ``{"key_id", "peer", "case", "created", "expires", "status", "retired", "announced_with",
            "confirmed", "pending"}``.
        """
        return {"key_id": self.key_id, "peer": self.peer, "case": self.case, "created": self.created,
                "expires": self.expires, "status": self.status(now), "retired": self.retired,
                "announced_with": self.announced_with, "confirmed": self.confirmed, "pending": list(self.pending)}


@dataclass(frozen=True)
class OutgoingFollowUp:
    """A signed follow-up ready to be delivered.

    Attributes:
        peer: the answering state it goes to.
        query_id: the query whose answer named the candidate.
        followup_id: the follow-up's message id.
        message: the signed follow-up, boxed to the peer.
    """

    peer: str
    query_id: str
    followup_id: str
    message: bytes = field(repr=False)


@dataclass(frozen=True)
class _Reply:
    """A reply whose envelope, box and body checked out (the outbox is not consulted yet)."""

    envelope: Envelope
    body: AnswerBody | BlindAnswerBody | RefusalBody


class Requester:
    """Queries peers on behalf of one state.

    Args:
        state: the requesting state.

    Raises:
        PolicyTamperedError: ``state.json`` holds a policy its audit log does
            not cover (a hand edit; change it with ``pprm policy set``).
    """

    def __init__(self, state: State) -> None:
        # Per-peer profiles and lifetimes decide what leaves this state (a
        # hand edit to "sealed" would send a probe in clear): only the audited policy.
        state.check_policy()
        self.state = state
        self._box = Outbox(state.path("outbox.json"))

    def __repr__(self) -> str:
        return f"Requester({self.state.config.name})"

    def outbox(self) -> dict[str, SentSealedQuery | SentBlindQuery]:
        """The queries this state sent, by query id, and what came back for each.

        Returns:
            Query id -> typed record (:mod:`pprm.node.outbox`).

        Raises:
            StateError: ``outbox.json`` is corrupt.
        """
        return self._box.load()

    def _check_purpose(self, case: str, purpose: str) -> None:
        """Fail fast on a purpose this state does not send queries for (nothing is recorded)."""
        check_case_and_purpose(case, purpose)
        allowed = self.state.config.purposes
        if purpose not in allowed:
            raise PolicyError(f"purpose {purpose!r} is not one of {self.state.config.name}'s purposes: "
                              f"{', '.join(allowed)}")

    # -- queries -------------------------------------------------------------
    def profile_for(self, peer: str, profile: str | None = None) -> Profile:
        """The profile a query to ``peer`` is made in: the rule :meth:`prepare` applies.

        Args:
            peer: the peer's state code.
            profile: the caller's choice (e.g. a command-line option), or None.

        Returns:
            ``profile`` when given, else the profile this state's configuration
            names for the peer (``"sealed"`` when it names none).

        Raises:
            ParameterError: ``profile`` is not a profile.
        """
        return self.state.config.profile_for(peer) if profile is None else parse_profile(profile)

    def prepare(self, peer: str, probe: np.ndarray, case: str, purpose: str, *, profile: str | None = None,
                now: float | None = None, sink: QuerySink | None = None) -> OutgoingQuery:
        """Build a signed query for ``peer`` in the profile that peer gets, and record it.

        The profile is ``profile`` when given, else the one this state's
        configuration names for the peer (:meth:`profile_for`, the one place
        that choice is made).

        Args:
            peer: the peer's state code (must be in the roster).
            probe: one template (the peer's dimension for sealed, the blind
                parameter set's for blind); normalised here.
            case: case reference (personal data: boxed).
            purpose: purpose of the search (boxed).
            profile: ``"sealed"`` or ``"blind"`` to override the configuration.
            now: clock override for tests.
            sink: called with ``(announcement or None, query)`` under the state
                lock, before the query (and a new key) is recorded; if it
                raises, nothing is kept. Lets a caller write its files first.

        Returns:
            The query, its id and profile, and the key announcement to deliver
            first when the blind key is new to the peer.

        Raises:
            ParameterError: ``profile`` is not a profile.
            UnknownPeerError: ``peer`` is not trusted.
            TemplateError: the probe is malformed.
            MessageError: case or purpose are empty or too long.
            PolicyError: the purpose is not on this state's list (the
                peer's list decides on arrival).

        Warning:
            In the sealed profile the probe is boxed to the peer and decrypted
            there: the peer's matcher sees it. The blind profile keeps it
            encrypted under this state's own key; configure it (``profiles``
            in ``state.json``) for peers that must not see probes. A blind
            query's normalised probe is kept in this state's outbox
            (``outbox.json``, 0600) for the follow-ups, which carry it boxed
            to the peer: the peer then sees the probe only for a candidate
            this state chose to pursue, whose record step two reveals anyway.
        """
        if self.profile_for(peer, profile) == "blind":
            return self._prepare_blind(peer, probe, case, purpose, now, sink)
        return self._prepare_sealed(peer, probe, case, purpose, now, sink)

    def query_many(self, peer: str, probes: np.ndarray, case: str, purpose: str, *, profile: str | None = None,
                   now: float | None = None, sink: BatchSink | None = None,
                   progress: Progress | None = None) -> list[ProbeQuery]:
        """One signed query per probe for ``peer``, each made and recorded as :meth:`prepare` makes one.

        Everything the probes share is checked first, and a bad batch
        changes nothing: the peer, the profile, case and purpose, the shape
        ``(N, d)`` and every row. Then each probe gets a query of its own: its
        own id and audit entry (``query``), its own outbox record, its own
        count against the peer's quotas and its own answer or refusal there.
        A probe whose query cannot be made (a :class:`~pprm.errors.PprmError`,
        e.g. from ``sink``) gets that error as its outcome, nothing is
        recorded for it, and the others go on; any other exception (a full
        disk) stops the batch, the probes before it keep their queries.

        In the blind profile the batch shares one key pair, as every query of
        a (peer, case) does: the first query made under a new key carries its
        announcement and the others name the key (see the Warning).

        Args:
            peer: the peer's state code (must be in the roster).
            probes: ``(N, d)`` templates, one per row (the peer's dimension
                for sealed, the blind parameter set's for blind); each row is
                normalised here.
            case: case reference, the same for every probe (boxed).
            purpose: purpose of the search (boxed).
            profile: ``"sealed"`` or ``"blind"`` to override the configuration.
            now: clock override for tests.
            sink: called with ``(row, announcement or None, query)`` for each
                probe, as :meth:`prepare`'s ``sink``: under the state lock,
                before that probe's query (and a new key) is recorded; if it
                raises, nothing is kept for that probe.
            progress: called with ``(probes done, N)``.

        Returns:
            One :class:`ProbeQuery` per row, in row order.

        Raises:
            ParameterError: ``profile`` is not a profile.
            UnknownPeerError: ``peer`` is not trusted.
            TemplateError: ``probes`` is not ``(N, d)`` with ``N >= 1``, or a
                row is malformed (the message names the first such row, from 0).
            MessageError: case or purpose are empty or too long.
            PolicyError: the purpose is not on this state's list.

        Warning:
            The sealed profile shows every probe to the peer, as :meth:`prepare`
            does. In the blind profile one key announcement serves the whole
            batch, by choice: the peer links the batch's queries anyway (each
            boxed body names the case), a key per probe would cost a key
            generation and 6.82 MB of upload per probe and hide nothing more,
            and on the path one announcement shows one key id once, where a
            key per probe would show N. Two consequences: the query carrying
            the announcement must reach the peer before the others (``pprm
            query --probes`` puts it in the first file; ``pprm ask --probes``
            asks that probe first); and a follow-up on one probe's answer
            retires the key, as it retires any key of a case (a follow-up
            reveals decrypted signs), after which this state opens no
            further answer under it and the peer answers no further query
            and follows up no other query under it. So open every answer of
            the batch before following up a candidate; to pursue another
            probe's candidates afterwards, query that probe again (the next
            query of the case makes a fresh key).
        """
        chosen = self.check_probes(peer, probes, case, purpose, profile=profile)
        rows = np.asarray(probes)
        out: list[ProbeQuery] = []
        for row in range(rows.shape[0]):
            row_sink = None if sink is None else _row_sink(sink, row)
            try:
                sent = self.prepare(peer, rows[row], case, purpose, profile=chosen, now=now, sink=row_sink)
            except PprmError as exc:
                out.append(ProbeQuery(row, error=exc))
            else:
                out.append(ProbeQuery(row, sent))
            if progress is not None:
                progress(row + 1, rows.shape[0])
        return out

    def check_probes(self, peer: str, probes: np.ndarray, case: str, purpose: str, *,
                     profile: str | None = None) -> Profile:
        """Check a batch as :meth:`query_many` does before it makes any query (changes nothing).

        Lets a caller that makes the batch's queries in several steps (``pprm
        ask --probes``) refuse a bad batch before anything is sent.

        Args:
            peer: the peer's state code.
            probes: ``(N, d)`` templates.
            case: case reference.
            purpose: purpose of the search.
            profile: ``"sealed"`` or ``"blind"`` to override the configuration.

        Returns:
            The profile the batch's queries to ``peer`` are made in.

        Raises:
            As :meth:`query_many`.
        """
        chosen = self.profile_for(peer, profile)
        st = self.state
        card = st.peer(peer)
        self._check_purpose(case, purpose)
        _check_probes(probes, st.config.blind_parameter_set.dim if chosen == "blind" else card.dim)
        return chosen

    def query(self, to: str, probe: np.ndarray, case: str, purpose: str,
              now: float | None = None) -> bytes:
        """Build a signed sealed-profile query for peer ``to`` (:meth:`prepare` with ``profile="sealed"``).

        Args:
            to: the peer's state code (must be in the roster).
            probe: one template of the peer's dimension; normalised here.
            case: case reference (personal data: boxed).
            purpose: purpose of the search (boxed).
            now: clock override for tests.

        Returns:
            The query message bytes.

        Raises:
            As :meth:`prepare`.

        Warning:
            In the sealed profile the probe is boxed to the peer and decrypted
            there: the peer's matcher sees it. Use the blind profile when that
            is not acceptable.
        """
        return self._prepare_sealed(to, probe, case, purpose, now, None).query

    def blind_query(self, to: str, probe: np.ndarray, case: str, purpose: str, now: float | None = None,
                    sink: QuerySink | None = None) -> tuple[bytes | None, bytes]:
        """Build a signed blind-profile query (:meth:`prepare` with ``profile="blind"``).

        The probe is encrypted under this state's own key pair for (peer,
        case); a fresh pair is made when there is none or the last one was
        retired (after a follow-up, or at the end of ``blind_key_ttl``).

        Args:
            to: the peer's state code (must be in the roster).
            probe: one template; normalised here.
            case: case reference (boxed).
            purpose: purpose of the search (boxed).
            now: clock override for tests.
            sink: as in :meth:`prepare`.

        Returns:
            ``(announcement, query)``: the announcement is None when the key
            was announced to this peer before; send it first otherwise.

        Raises:
            As :meth:`prepare`.
        """
        sent = self._prepare_blind(to, probe, case, purpose, now, sink)
        return sent.announcement, sent.query

    def _prepare_sealed(self, to: str, probe: np.ndarray, case: str, purpose: str, now: float | None,
                        sink: QuerySink | None) -> OutgoingQuery:
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
            if sink is not None:
                sink(None, msg)
            self._box.put(SentSealedQuery(query_id=header.id, peer=to, case=case, purpose=purpose, created=t,
                                          expires=header.expires))
            st.audit.append("query", peer=to, query_id=header.id, case=case, purpose=purpose)
        return OutgoingQuery(to, "sealed", header.id, msg)

    def _prepare_blind(self, to: str, probe: np.ndarray, case: str, purpose: str, now: float | None,
                       sink: QuerySink | None) -> OutgoingQuery:
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
                ann = KeyAnnouncementBody(kid, expires, pair.public_blob, pair.galois_blob, pair.relin_blob)
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
                ring.store(pair, to, case, t, st.config.blind_key_ttl, announced_with=header.id)
                st.audit.append("keys_created", peer=to, key_id=kid, case=case)
            # The normalised probe stays with the record: a follow-up must carry it.
            self._box.put(SentBlindQuery(query_id=header.id, peer=to, case=case, purpose=purpose, created=t,
                                         expires=header.expires, key_id=kid, probe=q.astype("<f4").tobytes()))
            st.audit.append("query", peer=to, query_id=header.id, case=case, purpose=purpose,
                            profile="blind", key_id=kid)
        return OutgoingQuery(to, "blind", header.id, msg, announcement, kid)

    def abandon(self, query_id: str, reason: str) -> str | None:
        """Give up on a blind query that may not have reached its peer: retire its key.

        A key is announced only with the first query that uses it. If that
        delivery failed, the peer may never have seen the key, and every later
        query under it would be refused as using an unknown key. Retiring it
        (its secret key is deleted) makes the next query to that peer and case
        announce a fresh one. No answer under the key can be opened any
        more, so no follow-up can follow: the kept probes of this query and
        of every other unanswered query under the key are dropped. Nothing
        happens for sealed queries, unknown ids, answered queries, or keys
        already retired.

        Args:
            query_id: the query's id (from this state's outbox).
            reason: recorded in the keyring and the audit log.

        Returns:
            The retired key id, or None.

        Warning:
            A fresh key, not the same announcement again, is the recovery:
            see :meth:`abandon_keys`.
        """
        st = self.state
        with st.lock():
            sent = self._box.get(query_id)
            if not isinstance(sent, SentBlindQuery) or sent.answer is not None:
                return None
            kid = sent.key_id
            entry = st.blind_keyring.entries().get(kid)
            if entry is None or entry["retired"] is not None:
                return None
            st.blind_keyring.retire(kid, reason)
            st.audit.append("keys_retired", peer=sent.peer, key_id=kid, query_id=query_id, reason=reason)
            self._drop_probes({kid})
        return kid

    def _drop_probes(self, key_ids: set[str]) -> None:
        """Drop the kept probes of the unanswered queries under retired keys (caller holds the lock).

        No answer under a retired key can be opened, so no follow-up can
        follow: the probes have no use left.
        """
        for sent in self._box.load().values():
            if (isinstance(sent, SentBlindQuery) and sent.key_id in key_ids and sent.answer is None
                    and sent.probe is not None):
                self._box.put(dataclasses.replace(sent, probe=None))

    # -- blind key pairs -----------------------------------------------------
    def _statuses(self, records: list[BlindKeyRecord], now: float) -> list[BlindKeyStatus]:
        """Each key record with what the outbox says about it."""
        by_key: dict[str, list[SentBlindQuery]] = {}
        for sent in self._box.load().values():
            if isinstance(sent, SentBlindQuery):
                by_key.setdefault(sent.key_id, []).append(sent)
        out = []
        for r in records:
            queries = sorted(by_key.get(r.key_id, []), key=lambda q: (q.created, q.query_id))
            # Every key is announced with the first query made under it.
            announced = r.announced_with if r.announced_with is not None else (
                queries[0].query_id if queries else None)
            out.append(BlindKeyStatus(
                r.key_id, r.peer, r.case, r.created, r.expires, r.retired, announced,
                # A refusal proves nothing: a split state may refuse by policy before it reads the key.
                confirmed=any(q.answer is not None and q.refused is None for q in queries),
                pending=tuple(q.query_id for q in queries if q.answer is None and q.expires > now)))
        return out

    def blind_keys(self, *, peer: str | None = None, case: str | None = None,
                   now: float | None = None) -> list[BlindKeyStatus]:
        """This state's blind key pairs as a requester, oldest first (changes nothing).

        Args:
            peer: only the keys serving this peer.
            case: only the keys serving this case.
            now: clock override for tests.

        Returns:
            One :class:`BlindKeyStatus` per key pair, retired ones included.

        Raises:
            UnknownPeerError: ``peer`` is not in the roster.
            StateError: ``blind-keys.json`` or ``outbox.json`` is corrupt.
        """
        if peer is not None:
            self.state.peer(peer)
        t = time.time() if now is None else now
        records = [r for r in self.state.blind_keyring.records()
                   if (peer is None or r.peer == peer) and (case is None or r.case == case)]
        return self._statuses(records, t)

    def abandon_keys(self, key_id: str | None = None, *, peer: str | None = None, case: str | None = None,
                     reason: str = ABANDONED, now: float | None = None) -> list[BlindKeyStatus]:
        """Retire blind key pairs so that the next query to their peer and case makes and announces a new key.

        The way out when a peer does not know a key (its announcement was
        lost, e.g. the separate ``.keys`` file of an older ``pprm query``, or
        the peer's store of announced keys was lost): the peer answers no
        query under it, and without this every later query of the case would
        keep naming it. Name one key by id, or every key not yet retired that
        serves ``peer`` and/or ``case``.

        Each key's secret key is deleted. Its pending queries (no reply yet)
        can no longer be opened: an answer to one that arrives later is
        refused by :meth:`open` (the key decrypts nothing more), and their
        kept probes are dropped, since no follow-up can follow. Answers
        already opened keep their candidates, and follow-ups on them still
        work (they carry the probe, not the key). Each retirement is logged
        (audit ``keys_retired``, with the number of pending queries).

        Args:
            key_id: one key, by id (not with ``peer`` or ``case``).
            peer: every key serving this peer (with ``case``: that case only).
            case: every key serving this case.
            reason: recorded in the keyring and the audit log.
            now: clock override for tests.

        Returns:
            The keys retired now, with the pending queries that can no longer
            be opened; empty when every key named was already retired.

        Raises:
            ParameterError: neither or both of ``key_id`` and ``peer``/``case``.
            KeyRotationError: no key pair has id ``key_id``; nothing changes.
            UnknownPeerError: ``peer`` is not in the roster; nothing changes.

        Warning:
            The recovery is a fresh key, never the same announcement sent
            again. An announcement is public material (signed, not boxed), so
            a router or anyone on the path who sees the same key id twice
            links the two deliveries to one case, while a fresh key's
            announcement is unlinkable to the old one by its contents (the
            peer links the queries of a case anyway: the case is in each
            query's boxed body, and so learns nothing new). Re-sending would
            also mean keeping the 4-7 MB announcement on disk, and a peer that
            did store the key would refuse it as announced twice. A fresh key
            costs one key generation and the same upload.
        """
        if key_id is not None and (peer is not None or case is not None):
            raise ParameterError("name one key by id, or keys by --peer/--case, not both")
        if key_id is None and peer is None and case is None:
            raise ParameterError("name a key by id, or keys by --peer and/or --case")
        st = self.state
        if peer is not None:
            st.peer(peer)
        t = time.time() if now is None else now
        with st.lock():
            ring = st.blind_keyring
            if key_id is not None:
                chosen = [ring.record(key_id)]
            else:
                chosen = [r for r in ring.records()
                          if (peer is None or r.peer == peer) and (case is None or r.case == case)]
            gone = self._statuses([r for r in chosen if r.retired is None], t)
            for k in gone:
                ring.retire(k.key_id, reason)
                st.audit.append("keys_retired", peer=k.peer, key_id=k.key_id, case=k.case, reason=reason,
                                pending=len(k.pending))
            self._drop_probes({k.key_id for k in gone})
        return [dataclasses.replace(k, retired=reason) for k in gone]

    # -- replies -------------------------------------------------------------
    def _verify_reply(self, blob: bytes, now: float | None, kinds: tuple[str, ...]) -> _Reply:
        """Verify a reply once: signature, header, type, then the box and the body."""
        st = self.state
        roster = st.roster()

        def digest_of(sender: str) -> str:
            return roster[sender].params_digest

        env = open_envelope(blob, lookup=st.lookup, me=st.config.name, params_digest=digest_of, now=now,
                            blind_digest=st.config.blind_parameter_set.digest)
        h = env.header
        if h.type not in kinds:
            raise MessageError(f"expected an answer, got a {h.type}")
        plain = st.identity().unbox_from(env.sender, env.body)
        body: AnswerBody | BlindAnswerBody | RefusalBody
        if h.type == "refusal":
            body = RefusalBody.from_bytes(plain)
        elif h.profile == "blind":
            body = BlindAnswerBody.from_bytes(plain)
        else:
            body = AnswerBody.from_bytes(plain)
        if isinstance(body, RefusalBody) and body.followup_id is not None:
            # A follow-up's refusal replies to the follow-up, and names its query too.
            if body.followup_id != h.in_reply_to:
                raise MessageError("refusal body and header name different follow-ups")
        elif body.query_id != h.in_reply_to:
            raise MessageError(f"{'refusal' if h.type == 'refusal' else 'answer'} body and header name "
                               "different queries")
        return _Reply(env, body)

    def _check_outbox(self, h: Header) -> SentSealedQuery | SentBlindQuery:
        sent = self._box.get(h.in_reply_to)
        if sent is None or sent.peer != h.sender:
            raise MessageError("answer is for a query this state did not send to that peer")
        if sent.profile != h.profile:
            raise MessageError("answer is in another profile than its query")
        if sent.answer not in (None, h.id):
            raise ReplayError("another answer to this query was already accepted")
        return sent

    def _record_refusal(self, h: Header, body: RefusalBody) -> NoReturn:
        """Record a peer's signed refusal as the reply to its query (or follow-up), then raise it."""
        if body.followup_id is not None:
            self._record_followup_refusal(h, body)
        st = self.state
        with st.lock():
            sent = self._check_outbox(h)
            if sent.answer is None:
                refused = dataclasses.replace(sent, answer=h.id, refused=body.reason)
                if isinstance(refused, SentBlindQuery):
                    refused = dataclasses.replace(refused, probe=None)  # no follow-up can follow
                self._box.put(refused)
                st.audit.append("refused", peer=h.sender, query_id=h.in_reply_to, refusal_id=h.id,
                                reason=body.reason, profile=h.profile)
        raise RefusedError(f"query {h.in_reply_to} to {h.sender} refused: {body.reason} ({body.message})",
                           peer=h.sender, query_id=h.in_reply_to, reason=body.reason)

    def _record_followup_refusal(self, h: Header, body: RefusalBody) -> NoReturn:
        """Record a peer's signed refusal of one of this state's blind follow-ups, then raise it."""
        st = self.state
        fid = body.followup_id
        assert fid is not None  # _record_refusal dispatches on it
        with st.lock():
            sent = self._box.get(body.query_id)
            if (not isinstance(sent, SentBlindQuery) or sent.peer != h.sender or h.profile != "blind"
                    or fid not in sent.followups):
                raise MessageError("refusal is for a follow-up this state did not send to that peer")
            if fid not in sent.followups_refused:
                self._box.put(dataclasses.replace(sent, followups_refused=(*sent.followups_refused, fid)))
                st.audit.append("followup_refused", peer=h.sender, query_id=body.query_id, followup_id=fid,
                                refusal_id=h.id, reason=body.reason, profile=h.profile)
        raise FollowUpRefusedError(f"follow-up {fid} on query {body.query_id} to {h.sender} refused: {body.reason} "
                                   f"({body.message})", peer=h.sender, query_id=body.query_id, reason=body.reason,
                                   followup_id=fid)

    def open_followup_refusal(self, blob: bytes, now: float | None = None) -> NoReturn:
        """Verify a peer's signed refusal of one of this state's follow-ups, record it, and raise it.

        What :meth:`open` does with such a refusal, for a caller that expects
        nothing else (the reply to a follow-up posted over HTTP).

        Args:
            blob: the signed refusal.
            now: clock override for tests.

        Raises:
            FollowUpRefusedError: always, once the refusal verified; it is
                recorded (outbox ``followups_refused``, audit
                ``followup_refused``) the first time.
            MessageError and subclasses: bad, tampered or misaddressed, not a
                refusal of a follow-up, or of one this state did not send.
            UnknownPeerError: the sender is not trusted.
        """
        reply = self._verify_reply(blob, now, ("refusal",))
        if not isinstance(reply.body, RefusalBody) or reply.body.followup_id is None:
            raise MessageError("expected the refusal of a follow-up")
        self._record_followup_refusal(reply.envelope.header, reply.body)

    def _open_blind(self, h: Header, body: BlindAnswerBody) -> OpenedAnswer:
        """Decrypt a blind answer to at most k candidate handles, once."""
        st = self.state
        with st.lock():
            sent = self._check_outbox(h)
            if not isinstance(sent, SentBlindQuery):  # _check_outbox compared the profiles
                raise MessageError("answer is in another profile than its query")
            if sent.answer == h.id and sent.candidates is not None:
                return OpenedAnswer(h.sender, h.in_reply_to, bool(sent.candidates), sent.candidates)
            ctx = st.blind_ctx
            sk = st.blind_keyring.secret_key(sent.key_id)
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
            # Without a candidate no follow-up can follow: the probe is not kept.
            self._box.put(dataclasses.replace(sent, answer=h.id, candidates=cands,
                                              probe=sent.probe if cands else None))
            st.audit.append("answer_received", peer=h.sender, query_id=h.in_reply_to, answer_id=h.id,
                            hit=bool(cands), candidates=len(cands), profile="blind")
        return OpenedAnswer(h.sender, h.in_reply_to, bool(cands), cands)

    def _accept(self, h: Header, body: AnswerBody) -> None:
        """Record the answer as the one accepted for its query (caller holds the lock)."""
        sent = self._box.get(h.in_reply_to)
        if sent is None:
            raise MessageError("answer is for a query this state did not send to that peer")
        if sent.answer not in (None, h.id):
            raise ReplayError("another answer to this query was already accepted")
        if sent.answer is None:
            self._box.put(dataclasses.replace(sent, answer=h.id))
            self.state.audit.append("answer_received", peer=h.sender, query_id=h.in_reply_to,
                                    answer_id=h.id, hit=body.hit, candidates=len(body.candidates))

    def _open_reply(self, reply: _Reply) -> OpenedAnswer:
        h, body = reply.envelope.header, reply.body
        if isinstance(body, RefusalBody):
            self._record_refusal(h, body)
        if isinstance(body, BlindAnswerBody):
            return self._open_blind(h, body)
        self._check_outbox(h)
        with self.state.lock():
            self._accept(h, body)
        return OpenedAnswer(h.sender, h.in_reply_to, body.hit, body.candidates)

    def open(self, answer: bytes, now: float | None = None) -> OpenedAnswer:
        """Verify and open an answer to one of our queries.

        Opening the same answer again returns the same result; a second,
        different answer to the same query is refused.

        Args:
            answer: the signed reply (an answer or a refusal).
            now: clock override for tests.

        Returns:
            Whether it is a hit, and the released tokens (sealed) or handles (blind).

        Raises:
            RefusedError: the reply is a signed refusal by the peer's policy;
                it is recorded (outbox, audit ``refused``) and closes the
                query. Opening it again raises it again.
            FollowUpRefusedError: the reply is a signed refusal of one of this
                state's blind follow-ups (reason ``not-a-hit``); it is
                recorded (outbox ``followups_refused``, audit
                ``followup_refused``) and raised, again on every opening.
            MessageError and subclasses: bad, tampered, misaddressed or expired.
            ReplayError: another answer to this query was already accepted.
            UnknownPeerError: the sender is not trusted.
        """
        return self._open_reply(self._verify_reply(answer, now, ("answer", "refusal")))

    # -- follow-ups ----------------------------------------------------------
    def follow_up(self, answer: bytes, token: str, now: float | None = None) -> bytes:
        """Ask the answering state for the record behind one released token.

        Args:
            answer: the answer message the token came in.
            token: one of its candidates.
            now: clock override for tests.

        Returns:
            The signed follow-up message, boxed to the peer. In the blind
            profile it carries the query's probe (kept in the outbox), and the
            key the probe was encrypted under is retired.

        Raises:
            TokenError: the token is not in that answer.
            ProbeNotKeptError: blind profile: the outbox does not hold the
                query's probe (a query recorded before pprm kept probes);
                nothing changes.
            MessageError and subclasses: the answer does not verify, or the
                message is a refusal (nothing can be followed up on it).

        Warning:
            A blind follow-up reveals the probe to the peer, boxed: the peer
            resolves the handle only if the probe clears its threshold
            against the record behind it. Follow up only candidates the case
            warrants pursuing; the record they name reaches this state
            through step two anyway.
        """
        return self._follow_up(self._verify_reply(answer, now, ("answer",)), token, now).message

    def prepare_follow_up(self, answer: bytes, token: str, *, now: float | None = None) -> OutgoingFollowUp:
        """As :meth:`follow_up`, and say where the follow-up goes; the reply is opened as :meth:`open` does.

        Args:
            answer: the signed reply the token came in.
            token: one of its candidates.
            now: clock override for tests.

        Returns:
            The follow-up, its peer, query and id.

        Raises:
            RefusedError: the reply is a signed refusal (recorded as by :meth:`open`;
                :class:`~pprm.errors.FollowUpRefusedError` for the refusal of a follow-up).
            TokenError, ProbeNotKeptError, MessageError and subclasses: as :meth:`follow_up`.
        """
        reply = self._verify_reply(answer, now, ("answer", "refusal"))
        if isinstance(reply.body, RefusalBody):
            self._record_refusal(reply.envelope.header, reply.body)
        return self._follow_up(reply, token, now)

    def _follow_up(self, reply: _Reply, token: str, now: float | None) -> OutgoingFollowUp:
        h, body = reply.envelope.header, reply.body
        if isinstance(body, BlindAnswerBody):
            return self._follow_up_blind(h, body, token, now)
        if not isinstance(body, AnswerBody):  # the callers dealt with refusals
            raise MessageError(f"expected an answer, got a {h.type}")
        self._check_outbox(h)
        if token not in body.candidates:
            raise TokenError("token is not among the candidates of this answer")
        st = self.state
        peer = st.peer(h.sender)
        t = int(time.time() if now is None else now)
        ident = st.identity()
        header = Header("followup", st.config.name, peer.name, new_id(), t, t + st.config.query_ttl,
                        peer.params_digest, "sealed", h.in_reply_to)
        fu = FollowUpBody(h.in_reply_to, token)
        msg = seal_envelope(ident, header, ident.box_to(peer.identity, fu.to_bytes()))
        with st.lock():
            self._accept(h, body)
            st.audit.append("followup", peer=peer.name, query_id=h.in_reply_to, followup_id=header.id)
        return OutgoingFollowUp(peer.name, h.in_reply_to, header.id, msg)

    def _follow_up_blind(self, h: Header, body: BlindAnswerBody, handle: str, now: float | None) -> OutgoingFollowUp:
        """Follow up one blind candidate with the query's probe, and retire the key it was found under."""
        st = self.state
        sent = self._check_outbox(h)
        if not isinstance(sent, SentBlindQuery):  # _check_outbox compared the profiles
            raise MessageError("answer is in another profile than its query")
        if sent.candidates is None and sent.probe is None:
            # Checked before the answer is opened (and recorded): an old record cannot be followed up.
            raise _probe_not_kept(h.in_reply_to)
        opened = self._open_blind(h, body)
        if handle not in opened.candidates:
            raise TokenError("handle is not among the candidates of this answer")
        peer = st.peer(h.sender)
        t = int(time.time() if now is None else now)
        ident = st.identity()
        header = Header("followup", st.config.name, peer.name, new_id(), t, t + st.config.query_ttl,
                        st.blind_ctx.params.digest, "blind", h.in_reply_to)
        with st.lock():
            current = self._box.get(h.in_reply_to)
            if not isinstance(current, SentBlindQuery):
                raise MessageError("answer is in another profile than its query")
            probe = current.probe_template()
            if probe is None:
                raise _probe_not_kept(h.in_reply_to)
            fu = BlindFollowUpBody(h.in_reply_to, handle, probe)
            msg = seal_envelope(ident, header, ident.box_to(peer.identity, fu.to_bytes()))
            # A follow-up reveals decrypted signs: the key never decrypts again.
            st.blind_keyring.retire(current.key_id, f"follow-up on {h.in_reply_to}")
            self._box.put(dataclasses.replace(current, followups=(*current.followups, header.id)))
            st.audit.append("followup", peer=peer.name, query_id=h.in_reply_to, followup_id=header.id,
                            profile="blind", key_id=current.key_id)
        return OutgoingFollowUp(peer.name, h.in_reply_to, header.id, msg)


def _check_probes(probes: np.ndarray, dim: int) -> None:
    """Refuse a batch of probes whose shape or any row is unusable, before any query is made.

    The row checks of a gallery's templates (:func:`~pprm.matching.templates.check_rows`,
    rows numbered from 0: ``probe row 2 is a zero vector``), made of all the
    probes at once.
    """
    check_rows(probes, dim, noun="probe")


def _row_sink(sink: BatchSink, row: int) -> QuerySink:
    """``sink`` for one row of a batch."""
    def one(announcement: bytes | None, query: bytes) -> None:
        sink(row, announcement, query)
    return one


def _probe_not_kept(query_id: str) -> ProbeNotKeptError:
    return ProbeNotKeptError(f"the probe of blind query {query_id} is not kept (recorded before pprm kept probes "
                             "for follow-ups, or dropped when the query was abandoned); a blind follow-up must "
                             "carry it: query again")
