"""Asking many peers at once over HTTP, and reporting per peer.

Queries are built first, one after another (they change this state's outbox
and audit log). Then every peer is asked concurrently, each under its own
deadline: a slow or dead peer costs its own entry, never the others'. Each
reply is opened (signature first) as soon as it arrives; opening is
serialised, since it writes to this state's directory.

A blind query that is not answered retires its key
(:meth:`~pprm.node.requester.Requester.abandon`), since the peer may never
have seen its announcement. When the peer says it cannot use the key (the
``key`` error: it never got the announcement, or no longer accepts the key),
the peer is asked once more, within the same deadline, with a fresh key and
its announcement (:data:`KEY_RETRY`; why a fresh key and not the same
announcement again: :meth:`~pprm.node.requester.Requester.abandon_keys`).

:func:`ask_many` asks every peer with every probe of a batch, one query per
(probe, peer), each with its own outcome. A batch is checked whole before
anything is sent. Sealed queries go out at once, at most
:data:`IN_FLIGHT` per peer, so that a batch stays within the share of a
peer's inbox any sender is granted. The blind queries to one peer share one
key (:meth:`~pprm.node.requester.Requester.query_many`), so probe 0 is asked
first, alone, with the key's announcement when the key is new, under the
rules above; once the peer answered or refused it (it then holds the key),
the other probes' queries are made and asked. If probe 0 could not be asked
to the end, the others are not asked (nothing is recorded for them), and
their outcomes say so. A failure of a later probe retires nothing, since the
peer holds the key the others use.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np

from pprm._fs import atomic_write_bytes
from pprm.errors import (
    NetworkError,
    NetworkTimeoutError,
    PprmError,
    RefusedError,
    RemoteError,
    TemplateError,
    UnknownPeerError,
)
from pprm.net.client import PeerClient
from pprm.net.directory import Directory
from pprm.net.wire import MAX_WAIT, pack_delivery
from pprm.node.requester import OutgoingQuery, ProbeQuery, Requester
from pprm.node.state import State
from pprm.profile import Profile

__all__ = ["PeerOutcome", "ask", "ask_async", "ask_many", "ask_many_async", "send_follow_up", "STATUSES", "KEY_RETRY",
           "IN_FLIGHT"]

# Every outcome is one of these; "error" covers a peer that answered outside
# the protocol (rejected delivery, tampered or misaddressed reply).
STATUSES = ("hit", "no hit", "refused", "unreachable", "timed out", "error")
# Outcomes after which the peer may not hold a blind query's key.
_FAILED = ("unreachable", "timed out", "error")
# The error code (pprm.net.wire) of a peer that cannot use the key a blind
# query names; the query is asked again once, under a fresh key.
KEY_RETRY = "key"
# Queries of one batch waiting at one peer at a time: within the smallest
# share of an inbox a sender is granted (pprm.net.inbox.MIN_SHARE), and the
# peer answers one at a time anyway.
IN_FLIGHT = 4
# Router error codes that describe the hop behind it, not the router itself.
_ROUTER_UNREACHABLE = {"unreachable"}
_ROUTER_TIMEOUT = {"timeout"}


@dataclass(frozen=True)
class PeerOutcome:
    """What asking one peer gave.

    Attributes:
        peer: the peer's state code.
        status: one of :data:`STATUSES`.
        query_id: the query's id (None if no query could be built).
        candidates: released tokens (sealed) or handles (blind); empty unless a hit.
        detail: one line explaining a refusal or failure.
        seconds: wall time from sending to the outcome.
        answer_path: where the signed reply was saved (for ``pprm follow-up``).
        profile: ``sealed`` or ``blind``.
        probe: the probe's row in a batch (:func:`ask_many`), from 0; None
            for :func:`ask`.
    """

    peer: str
    status: str
    query_id: str | None = None
    candidates: tuple[str, ...] = ()
    detail: str = ""
    seconds: float = 0.0
    answer_path: str | None = None
    profile: Profile | None = None
    probe: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON form ``pprm ask --json`` prints, one object per peer (per probe and peer for a batch).

        Returns:
            ``{"peer", "status", "query_id", "candidates", "detail", "seconds", "answer", "profile"}``,
            and ``"probe"`` (the row) for an outcome of a batch.
        """
        out = {"peer": self.peer, "status": self.status, "query_id": self.query_id,
               "candidates": list(self.candidates), "detail": self.detail, "seconds": round(self.seconds, 3),
               "answer": self.answer_path, "profile": self.profile}
        if self.probe is not None:
            out["probe"] = self.probe
        return out


@dataclass(frozen=True)
class _Prepared:
    sent: OutgoingQuery
    delivery: bytes


def _code_line(detail: str, limit: int = 80) -> str:
    """The start of a peer's error line, for a report that goes on."""
    return detail if len(detail) <= limit else detail[:limit].rsplit(" ", 1)[0] + " ..."


def _prepared(sent: OutgoingQuery) -> _Prepared:
    return _Prepared(sent, pack_delivery(sent.query, sent.announcements))


def _prepare(req: Requester, peers: Sequence[str], probe: np.ndarray, case: str,
             purpose: str) -> tuple[list[_Prepared], list[PeerOutcome]]:
    """Build every query in its peer's profile; errors that concern one peer become that peer's outcome."""
    ready: list[_Prepared] = []
    failed: list[PeerOutcome] = []
    for peer in peers:
        try:
            sent = req.prepare(peer, probe, case, purpose)
        except UnknownPeerError as exc:
            failed.append(PeerOutcome(peer, "error", detail=str(exc)))
            continue
        ready.append(_prepared(sent))
    return ready, failed


class _Asking:
    """What asking peers needs, for one call: the requester, where replies go, and the lock on opening them."""

    def __init__(self, state: State, case: str, purpose: str, directory: Directory, timeout: float,
                 answers_dir: str | None) -> None:
        self.req = Requester(state)
        self.case = case
        self.purpose = purpose
        self.directory = directory
        self.timeout = timeout
        self.out_dir = answers_dir or state.path("answers")
        # Opening a reply and making a query write to this state's directory: one at a time.
        self.opening = asyncio.Lock()
        self.me = state.config.name

    async def abandon(self, sent: OutgoingQuery, why: str) -> None:
        async with self.opening:
            await asyncio.to_thread(self.req.abandon, sent.query_id, f"query {sent.query_id}: {why}")

    async def one(self, client: httpx.AsyncClient, p: _Prepared, probe: np.ndarray,
                  row: int | None = None) -> PeerOutcome:
        """Ask one query to the end; a blind one the peer may not hold the key of is retired, or asked again."""
        t0 = time.monotonic()
        result, code = await self.attempt(client, p, t0, row)
        sent = p.sent
        if sent.profile != "blind" or result.status not in _FAILED:
            return result
        # The peer may never have seen this case's key announcement: start a fresh key next time.
        await self.abandon(sent, result.status)
        if code != KEY_RETRY:
            return result
        # The peer cannot use the key (its announcement never arrived, or the
        # key is no longer accepted there): ask once more, within the same
        # deadline, under a fresh key whose announcement travels with the new query.
        try:
            async with self.opening:
                again = _prepared(await asyncio.to_thread(self.req.prepare, sent.peer, probe, self.case,
                                                          self.purpose, profile=sent.profile))
        except PprmError as exc:
            return dataclasses.replace(result, detail=f"{result.detail}; no new query could be made: {exc}")
        second, code = await self.attempt(client, again, t0, row)
        if second.status in _FAILED:
            await self.abandon(again.sent, second.status)
            if code == KEY_RETRY:
                return dataclasses.replace(second, detail=(
                    f"{second.detail}; refused again under a new key sent with its announcement: the peer's "
                    "store of announced keys may be damaged; ask its operator, then ask again (the next query "
                    "makes another key)"))
            return dataclasses.replace(second, detail=(
                f"{second.detail} (query {again.sent.query_id}, asked again under a new key after: "
                f"{result.detail})"))
        if second.status == "refused":
            return second  # the detail of a refusal is its reason code
        return dataclasses.replace(second, detail=(
            f"the peer could not use the key of query {sent.query_id} ({_code_line(result.detail)}): asked again "
            "under a new key, announced with this query"))

    async def attempt(self, client: httpx.AsyncClient, p: _Prepared, t0: float,
                      row: int | None = None) -> tuple[PeerOutcome, str | None]:
        """Deliver one query and wait for its reply: the outcome, and the peer's error code if it sent one."""
        sent = p.sent
        deadline = t0 + self.timeout

        def outcome(status: str, detail: str = "", *, candidates: tuple[str, ...] = (),
                    answer_path: str | None = None) -> PeerOutcome:
            return PeerOutcome(sent.peer, status, sent.query_id, candidates=candidates, detail=detail,
                               seconds=time.monotonic() - t0, answer_path=answer_path, profile=sent.profile,
                               probe=row)

        try:
            peer = PeerClient(client, self.directory.base(sent.peer), sent.peer)
        except UnknownPeerError as exc:
            return outcome("error", str(exc)), None
        try:
            async with asyncio.timeout(max(deadline - time.monotonic(), 0.0)):
                await peer.deliver(p.delivery)
                reply = None
                while reply is None:
                    reply = await peer.answer(self.me, sent.query_id,
                                              wait=min(MAX_WAIT, deadline - time.monotonic()))
        except TimeoutError:
            return outcome("timed out", f"no answer within {self.timeout:g} s"), None
        except NetworkTimeoutError as exc:
            return outcome("timed out", str(exc)), None
        except NetworkError as exc:
            return outcome("unreachable", str(exc)), None
        except RemoteError as exc:
            if exc.code in _ROUTER_UNREACHABLE:
                return outcome("unreachable", str(exc)), exc.code
            if exc.code in _ROUTER_TIMEOUT:
                return outcome("timed out", str(exc)), exc.code
            return outcome("error", str(exc)), exc.code
        path = os.path.join(self.out_dir, f"{sent.peer}-{sent.query_id}.answer")
        async with self.opening:
            try:
                opened = await asyncio.to_thread(self.req.open, reply)
            except RefusedError as exc:
                await asyncio.to_thread(atomic_write_bytes, path, reply)
                return outcome("refused", exc.reason, answer_path=path), None
            except PprmError as exc:
                return outcome("error", f"the reply failed verification: {exc}"), None
            await asyncio.to_thread(atomic_write_bytes, path, reply)
        return outcome("hit" if opened.hit else "no hit", candidates=opened.candidates, answer_path=path), None


async def ask_async(state: State, probe: np.ndarray, peers: Sequence[str], *, case: str, purpose: str,
                    directory: Directory, timeout: float = 60.0, answers_dir: str | None = None,
                    http: httpx.AsyncClient | None = None) -> list[PeerOutcome]:
    """As :func:`ask`, in a running event loop."""
    asking = _Asking(state, case, purpose, directory, timeout, answers_dir)
    ready, outcomes = _prepare(asking.req, list(dict.fromkeys(peers)), probe, case, purpose)
    os.makedirs(asking.out_dir, mode=0o700, exist_ok=True)
    # trust_env=False: proxy variables must not reroute traffic between states.
    async with contextlib.nullcontext(http) if http is not None else httpx.AsyncClient(trust_env=False) as client:
        outcomes += await asyncio.gather(*(asking.one(client, p, probe) for p in ready))
    order = {peer: i for i, peer in enumerate(peers)}
    return sorted(outcomes, key=lambda o: order.get(o.peer, len(order)))


async def ask_many_async(state: State, probes: np.ndarray, peers: Sequence[str], *, case: str, purpose: str,
                         directory: Directory, timeout: float = 60.0, answers_dir: str | None = None,
                         http: httpx.AsyncClient | None = None) -> list[PeerOutcome]:
    """As :func:`ask_many`, in a running event loop."""
    asking = _Asking(state, case, purpose, directory, timeout, answers_dir)
    req = asking.req
    rows = np.asarray(probes)
    if rows.ndim != 2 or rows.shape[0] == 0:
        # Before any peer is looked at: an outcome per (probe, peer) needs rows to count.
        raise TemplateError(f"probes must be an (N, d) array with N >= 1, one probe per row; got shape {rows.shape}")
    peers = list(dict.fromkeys(peers))
    outcomes: list[PeerOutcome] = []
    # The whole batch is checked for every peer before anything is made or sent.
    profiles: dict[str, Profile] = {}
    for peer in peers:
        try:
            profiles[peer] = req.check_probes(peer, rows, case, purpose)
        except UnknownPeerError as exc:
            outcomes += [PeerOutcome(peer, "error", detail=str(exc), probe=row) for row in range(len(rows))]
    # Sealed: every query now. Blind: probe 0's now, the others once the peer holds the key.
    made = {peer: req.query_many(peer, rows if profile == "sealed" else rows[:1], case, purpose, profile=profile)
            for peer, profile in profiles.items()}
    os.makedirs(asking.out_dir, mode=0o700, exist_ok=True)

    async def bounded(client: httpx.AsyncClient, gate: asyncio.Semaphore, peer: str, profile: Profile, row: int,
                      pq: ProbeQuery) -> PeerOutcome:
        if pq.query is None:
            return PeerOutcome(peer, "error", detail=f"no query was made: {pq.error}", profile=profile, probe=row)
        async with gate:
            if profile == "blind":
                # A later probe's failure says nothing about the key the peer holds: nothing is retired.
                return (await asking.attempt(client, _prepared(pq.query), time.monotonic(), row))[0]
            return await asking.one(client, _prepared(pq.query), rows[row], row)

    async def per_peer(client: httpx.AsyncClient, peer: str, profile: Profile) -> list[PeerOutcome]:
        gate = asyncio.Semaphore(IN_FLIGHT)
        first = made[peer]
        if profile == "sealed":
            return list(await asyncio.gather(*(bounded(client, gate, peer, profile, r.row, r) for r in first)))
        head = first[0]
        if head.query is None:
            lead = PeerOutcome(peer, "error", detail=f"no query was made: {head.error}", profile=profile, probe=0)
        else:
            lead = await asking.one(client, _prepared(head.query), rows[0], 0)
        if lead.status in _FAILED:
            return [lead, *(PeerOutcome(peer, lead.status, detail=(
                f"not asked: the batch's key goes to {peer} with probe 0's query, which failed "
                f"({_code_line(lead.detail)})"), profile=profile, probe=row) for row in range(1, len(rows)))]
        async with asking.opening:
            rest = await asyncio.to_thread(req.query_many, peer, rows[1:], case, purpose, profile=profile)
        later = await asyncio.gather(*(bounded(client, gate, peer, profile, r.row + 1, r) for r in rest))
        return [lead, *later]

    async with contextlib.nullcontext(http) if http is not None else httpx.AsyncClient(trust_env=False) as client:
        for group in await asyncio.gather(*(per_peer(client, peer, profile) for peer, profile in profiles.items())):
            outcomes += group
    order = {peer: i for i, peer in enumerate(peers)}
    return sorted(outcomes, key=lambda o: (o.probe or 0, order.get(o.peer, len(order))))


def ask(state: State, probe: np.ndarray, peers: Sequence[str], *, case: str, purpose: str,
        directory: Directory, timeout: float = 60.0, answers_dir: str | None = None) -> list[PeerOutcome]:
    """Query several peers over HTTP concurrently and report per peer.

    Args:
        state: the requesting state.
        probe: one template of the peers' dimension.
        peers: state codes to ask (each must be in the roster).
        case: case reference.
        purpose: one of this state's purposes.
        directory: how to reach each peer.
        timeout: seconds allowed per peer, from sending to the opened reply.
        answers_dir: where signed replies are saved (default ``DIR/answers``).

    Returns:
        One :class:`PeerOutcome` per peer, in the order asked.

    Raises:
        TemplateError, PolicyError, ParameterError: the probe, case or
            purpose is unacceptable; nothing was sent.
    """
    return asyncio.run(ask_async(state, probe, peers, case=case, purpose=purpose, directory=directory,
                                 timeout=timeout, answers_dir=answers_dir))


def ask_many(state: State, probes: np.ndarray, peers: Sequence[str], *, case: str, purpose: str,
             directory: Directory, timeout: float = 60.0, answers_dir: str | None = None) -> list[PeerOutcome]:
    """Ask several peers with every probe of a batch over HTTP, one query per (probe, peer).

    Each query has its own id, deadline, answer and outcome: one probe's
    refusal, error or timeout does not change another's (except that in the
    blind profile the probes to a peer wait for probe 0's query, which
    carries their shared key; see the module docstring).

    Args:
        state: the requesting state.
        probes: ``(N, d)`` templates, one probe per row.
        peers: state codes to ask (each must be in the roster).
        case: case reference, the same for every probe.
        purpose: one of this state's purposes.
        directory: how to reach each peer.
        timeout: seconds allowed per query, from sending to the opened reply.
        answers_dir: where signed replies are saved (default ``DIR/answers``).

    Returns:
        One :class:`PeerOutcome` per (probe, peer), its ``probe`` the row
        (from 0), ordered by row and then as the peers were named.

    Raises:
        TemplateError, PolicyError, ParameterError, MessageError: the probes
            (shape, a row: named from 0), case or purpose are unacceptable;
            nothing was sent.

    Warning:
        The blind queries to one peer share one key (see
        :meth:`~pprm.node.requester.Requester.query_many`): a follow-up on
        one of their answers retires it, after which the peer follows up no
        other query of the batch; ask a probe again to pursue its candidates.
    """
    return asyncio.run(ask_many_async(state, probes, peers, case=case, purpose=purpose, directory=directory,
                                      timeout=timeout, answers_dir=answers_dir))


def send_follow_up(state: State, answer: bytes, token: str, directory: Directory,
                   timeout: float = 60.0) -> dict[str, str]:
    """Build a follow-up for one candidate and deliver it over HTTP.

    Args:
        state: the requesting state.
        answer: the signed answer the candidate came in.
        token: a released token (sealed) or handle (blind).
        directory: how to reach the peer.
        timeout: seconds allowed.

    Returns:
        The peer's acknowledgement; the record follows through the logged
        human step two, not in this reply.

    Raises:
        As :meth:`Requester.prepare_follow_up` (a refusal raises RefusedError);
        FollowUpRefusedError: the peer refused a blind follow-up whose probe
            does not hit the record (signed refusal, verified and recorded by
            :meth:`Requester.open_followup_refusal`);
        NetworkError, NetworkTimeoutError, RemoteError.
    """
    # One verification of the answer: opening it and building the follow-up are one step.
    requester = Requester(state)
    fu = requester.prepare_follow_up(answer, token)

    async def post() -> dict[str, str] | bytes:
        async with httpx.AsyncClient(trust_env=False) as client:
            try:
                async with asyncio.timeout(timeout):
                    return await PeerClient(client, directory.base(fu.peer), fu.peer).follow_up(fu.message)
            except TimeoutError:
                raise NetworkTimeoutError(f"{fu.peer} did not answer in time") from None

    reply = asyncio.run(post())
    if isinstance(reply, bytes):
        requester.open_followup_refusal(reply)
    return reply
