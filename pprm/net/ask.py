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
    UnknownPeerError,
)
from pprm.net.client import PeerClient
from pprm.net.directory import Directory
from pprm.net.wire import MAX_WAIT, pack_delivery
from pprm.node.requester import OutgoingQuery, Requester
from pprm.node.state import State
from pprm.profile import Profile

__all__ = ["PeerOutcome", "ask", "ask_async", "send_follow_up", "STATUSES", "KEY_RETRY"]

# Every outcome is one of these; "error" covers a peer that answered outside
# the protocol (rejected delivery, tampered or misaddressed reply).
STATUSES = ("hit", "no hit", "refused", "unreachable", "timed out", "error")
# Outcomes after which the peer may not hold a blind query's key.
_FAILED = ("unreachable", "timed out", "error")
# The error code (pprm.net.wire) of a peer that cannot use the key a blind
# query names; the query is asked again once, under a fresh key.
KEY_RETRY = "key"
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
    """

    peer: str
    status: str
    query_id: str | None = None
    candidates: tuple[str, ...] = ()
    detail: str = ""
    seconds: float = 0.0
    answer_path: str | None = None
    profile: Profile | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON form ``pprm ask --json`` prints, one object per peer.

        Returns:
            ``{"peer", "status", "query_id", "candidates", "detail", "seconds", "answer", "profile"}``.
        """
        return {"peer": self.peer, "status": self.status, "query_id": self.query_id,
                "candidates": list(self.candidates), "detail": self.detail, "seconds": round(self.seconds, 3),
                "answer": self.answer_path, "profile": self.profile}


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


async def ask_async(state: State, probe: np.ndarray, peers: Sequence[str], *, case: str, purpose: str,
                    directory: Directory, timeout: float = 60.0, answers_dir: str | None = None,
                    http: httpx.AsyncClient | None = None) -> list[PeerOutcome]:
    """As :func:`ask`, in a running event loop."""
    req = Requester(state)
    ready, outcomes = _prepare(req, list(dict.fromkeys(peers)), probe, case, purpose)
    out_dir = answers_dir or state.path("answers")
    os.makedirs(out_dir, mode=0o700, exist_ok=True)
    opening = asyncio.Lock()
    me = state.config.name

    async def abandon(sent: OutgoingQuery, why: str) -> None:
        async with opening:
            await asyncio.to_thread(req.abandon, sent.query_id, f"query {sent.query_id}: {why}")

    async def one(client: httpx.AsyncClient, p: _Prepared) -> PeerOutcome:
        t0 = time.monotonic()
        result, code = await attempt(client, p, t0)
        sent = p.sent
        if sent.profile != "blind" or result.status not in _FAILED:
            return result
        # The peer may never have seen this case's key announcement: start a fresh key next time.
        await abandon(sent, result.status)
        if code != KEY_RETRY:
            return result
        # The peer cannot use the key (its announcement never arrived, or the
        # key is no longer accepted there): ask once more, within the same
        # deadline, under a fresh key whose announcement travels with the new query.
        try:
            async with opening:
                again = _prepared(await asyncio.to_thread(req.prepare, sent.peer, probe, case, purpose,
                                                          profile=sent.profile))
        except PprmError as exc:
            return dataclasses.replace(result, detail=f"{result.detail}; no new query could be made: {exc}")
        second, code = await attempt(client, again, t0)
        if second.status in _FAILED:
            await abandon(again.sent, second.status)
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

    async def attempt(client: httpx.AsyncClient, p: _Prepared, t0: float) -> tuple[PeerOutcome, str | None]:
        """Deliver one query and wait for its reply: the outcome, and the peer's error code if it sent one."""
        sent = p.sent
        deadline = t0 + timeout

        def outcome(status: str, detail: str = "", *, candidates: tuple[str, ...] = (),
                    answer_path: str | None = None) -> PeerOutcome:
            return PeerOutcome(sent.peer, status, sent.query_id, candidates=candidates, detail=detail,
                               seconds=time.monotonic() - t0, answer_path=answer_path, profile=sent.profile)

        try:
            peer = PeerClient(client, directory.base(sent.peer), sent.peer)
        except UnknownPeerError as exc:
            return outcome("error", str(exc)), None
        try:
            async with asyncio.timeout(max(deadline - time.monotonic(), 0.0)):
                await peer.deliver(p.delivery)
                reply = None
                while reply is None:
                    reply = await peer.answer(me, sent.query_id, wait=min(MAX_WAIT, deadline - time.monotonic()))
        except TimeoutError:
            return outcome("timed out", f"no answer within {timeout:g} s"), None
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
        path = os.path.join(out_dir, f"{sent.peer}-{sent.query_id}.answer")
        async with opening:
            try:
                opened = await asyncio.to_thread(req.open, reply)
            except RefusedError as exc:
                await asyncio.to_thread(atomic_write_bytes, path, reply)
                return outcome("refused", exc.reason, answer_path=path), None
            except PprmError as exc:
                return outcome("error", f"the reply failed verification: {exc}"), None
            await asyncio.to_thread(atomic_write_bytes, path, reply)
        return outcome("hit" if opened.hit else "no hit", candidates=opened.candidates, answer_path=path), None

    # trust_env=False: proxy variables must not reroute traffic between states.
    async with contextlib.nullcontext(http) if http is not None else httpx.AsyncClient(trust_env=False) as client:
        outcomes += await asyncio.gather(*(one(client, p) for p in ready))
    order = {peer: i for i, peer in enumerate(peers)}
    return sorted(outcomes, key=lambda o: order.get(o.peer, len(order)))


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
