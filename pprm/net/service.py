"""A state as an HTTP service (Starlette on uvicorn).

Intake is cheap and concurrent: the delivery's envelopes are verified
(signature first, then recipient, time, parameters and replay; nothing is
unboxed), the sender's limits are checked (its share of the inbox, its
quota), and the delivery is stored durably before the 202. Everything that
changes the state (answering, accepting keys, resolving follow-ups) runs on
one worker thread, in arrival order, so the state directory sees the same
sequence of single steps as the file-based CLI, and matching never competes
with itself for the two cores.

The service holds the state's keys, like ``pprm answer`` does. It binds to
loopback unless told otherwise; see :mod:`pprm.net.router` for the relay.

It keeps the blind database in memory, and after a gallery change rebuilds
it in a background thread while the worker answers blind queries from the
previous version (:class:`~pprm.node.blind_store.BlindRebuilder`); a split
state's database is in its key service instead.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import logging
import os
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pprm.errors import (
    ClusterError,
    IntakeLimitError,
    KeyServiceUnavailableError,
    MessageError,
    NotAHitError,
    ParameterError,
    PprmError,
    ReplayError,
    StateError,
)
from pprm.matching.diagonals import BlindDatabase
from pprm.matching.gallery import EncryptedGallery
from pprm.matching.protocols import BlindMatching, SealedMatching
from pprm.net.body import read_body
from pprm.net.inbox import Failure, Inbox, share_of
from pprm.net.wire import (
    MAX_DELIVERY,
    MAX_FOLLOWUP,
    MAX_WAIT,
    OCTETS,
    QUERY_ID,
    STATE_CODE,
    error_body,
    status_of,
    unpack_delivery,
)
from pprm.node.blind_store import BlindRebuilder
from pprm.node.keyservice import KeyService
from pprm.node.remote_keys import key_service_for, remote_key_service
from pprm.node.responder import BlindMatcherFactory, Responder, SealedMatcherFactory
from pprm.node.state import State
from pprm.protocol.envelope import MAX_LIFETIME

if TYPE_CHECKING:
    from pprm.cluster import ShardedBlindMatcher, ShardedMatcher

__all__ = ["StateService", "create_app"]

log = logging.getLogger("pprm.net.service")

# Deliveries waiting for the worker beyond this are refused with a 503: a
# blind query at 100k takes 1.2 s, so 256 is minutes of work, and memory per
# waiting delivery is only its file name.
MAX_PENDING = 256
# A delivery whose split state's key service is unreachable is tried again
# after this many seconds (a restarted key service is back in about one).
KEY_SERVICE_RETRY = 2.0
# Queued queries the worker answers together: sealed ones share one pass over
# the gallery (Responder.respond_many). 16 is where the pass stops getting
# cheaper per probe at 1M templates (docs/PERFORMANCE.md), and a batch holds
# its queries' answers until the whole pass is done.
MAX_BATCH = 16
# Retry-After for a peer at its share of the inbox, seconds: the worker
# answers a delivery in 0.1-1.2 s, so a few seconds frees an entry.
RETRY_SHARE = 5
# Retry-After for a peer at its quota, seconds: a hint only. Entries leave
# the rolling 24-hour window one by one, and intake reads counts, not times.
RETRY_QUOTA = 600

# Seconds between looks at the gallery index for a change (a stat call):
# the blind database is then rebuilt in the background.
BLIND_POLL = 1.0

_T = TypeVar("_T")


@dataclass(frozen=True)
class _AnswerJob:
    """The worker's job of answering one stored delivery; the worker batches these."""

    service: Any
    sender: str
    qid: str

    def __call__(self) -> None:
        self.service._answer(self.sender, self.qid)


def _file_identity(path: str) -> tuple[int, int, int] | None:
    """What changes when a file is replaced (atomic writes rename a new file over it)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(code, message), status_code=status, headers=headers)


def _pprm_error(exc: PprmError) -> JSONResponse:
    status, code = status_of(exc)
    if status == 500:
        # Internal errors may name files of the state; the requester gets a code only.
        log.error("internal error: %s", exc)
        return _error(500, "internal", "the service could not process the request")
    return _error(status, code, str(exc))


class StateService:
    """One state's service: intake, the worker thread, and the replies on disk.

    Args:
        directory: the state directory (``pprm init``).
        now: clock override for tests.
        capacity: deliveries that may wait for the worker (default
            :data:`MAX_PENDING`); each trusted peer may hold
            :func:`pprm.net.inbox.share_of` of them.

    Raises:
        StateError: the directory is not a state, or another service runs on it.
        ParameterError: ``capacity`` is below 1.
    """

    def __init__(self, directory: str, *, now: Callable[[], float] = time.time,
                 matcher: SealedMatcherFactory | None = None, blind: BlindMatcherFactory | None = None,
                 capacity: int = MAX_PENDING, key_service: str | None = None) -> None:
        if type(capacity) is not int or capacity < 1:
            raise ParameterError("the inbox capacity must be a positive integer")
        self.state = State.open(directory)
        self._clock = now
        self._lock_fd = os.open(self.state.path(".serve.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise StateError(f"another pprm serve is running on {directory}") from None
        try:
            self.inbox = Inbox(self.state.dir)
            # Intake verifies with its own KeyService: read-only, so it can run
            # beside the worker. The worker verifies the stored delivery once more
            # when it answers it: the bytes come back from disk, maybe after a restart.
            self._intake = KeyService(State.open(directory))
            # A split state's secrets are in its key service (another process):
            # nothing in this process can decrypt.
            self._key_service = key_service
            self._responder = Responder(self.state, matcher=matcher, blind=blind,
                                        key_service=remote_key_service(self.state, key_service))
        except BaseException:
            # Refused at start (a hand-edited policy, a bad address): let go of the lock.
            os.close(self._lock_fd)
            raise
        self._jobs: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: dict[tuple[str, str], asyncio.Event] = {}
        # Deliveries stored and not yet answered, in all and per sender; both
        # change only under the intake lock, together with the inbox itself.
        self._capacity = capacity
        self._pending = 0
        self._queued: dict[str, int] = {}
        self._intake_lock = threading.Lock()
        # The blind database, in memory and kept current in the background
        # (none in a split state's front: its key service holds the database).
        self.rebuilder: BlindRebuilder | None = None
        if self._responder.remote is None:
            st = self.state
            index = st.path("gallery", "index.json")
            self.rebuilder = BlindRebuilder(st.blind_store, st.lock, lambda: st.gallery().version,
                                            self._responder.key_service.export_templates,
                                            probe=lambda: _file_identity(index), interval=BLIND_POLL)

    def __repr__(self) -> str:
        return f"StateService({self.state.config.name})"

    @property
    def name(self) -> str:
        """The state's code."""
        return self.state.config.name

    # -- lifecycle --------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the worker and queue the deliveries a previous run accepted."""
        self._loop = loop
        # Nothing writes here yet: temp files are leftovers of a killed run.
        self.inbox.prune(self._clock(), temps=True)
        pending = self._settle_logged(self.inbox.pending())
        # A previous run's deliveries count against their senders' shares too;
        # queued before the worker starts, they are answered in batches.
        with self._intake_lock:
            for sender, qid in pending:
                self._enqueue_answer(sender, qid)
        self._worker = threading.Thread(target=self._work, name=f"pprm-worker-{self.name}", daemon=True)
        self._worker.start()
        if self.rebuilder is not None:
            self.rebuilder.start()

    def _settle_logged(self, pending: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """Finish the deliveries a killed run answered and logged but did not mark used; return the others.

        The worker hands a reply over (writes it here), logs it, then marks
        the query used. A run killed between the last two steps leaves a
        stored reply and a logged answer for a query that is not yet a
        replay: answering it again would answer it twice. Its reply is the
        one already handed over, so it is only marked used and dropped from
        the inbox.
        """
        candidates = [(s, q) for s, q in pending if self.inbox.reply(s, q) is not None]
        if not candidates:
            return pending
        logged = {(e["data"].get("peer"), e["data"].get("query_id")) for e in self.state.audit.entries()
                  if e["event"] in ("answer", "refuse")}
        settled = set()
        with self.state.lock():
            for sender, qid in candidates:
                if (sender, qid) not in logged:
                    continue
                try:
                    query, _announcements = unpack_delivery(self.inbox.load(sender, qid))
                    expires = self._intake.query_header(query, self._clock()).expires
                except PprmError:
                    expires = int(self._clock()) + MAX_LIFETIME
                with contextlib.suppress(ReplayError):
                    self._intake.commit_seen_id(sender, qid, expires, self._clock())
                self.inbox.done(sender, qid)
                settled.add((sender, qid))
                log.warning("query %s from %s was answered and logged before a restart; not answered again",
                            qid, sender)
        return [p for p in pending if p not in settled]

    def stop(self) -> None:
        """Let the worker finish its current job and stop; queued deliveries stay on disk."""
        if self.rebuilder is not None:
            self.rebuilder.stop()
        if self._worker is not None:
            # Drop queued jobs: their deliveries are on disk and run at the next start.
            with contextlib.suppress(queue.Empty):
                while True:
                    self._jobs.get_nowait()
            self._jobs.put(None)
            self._worker.join()
            self._worker = None
        os.close(self._lock_fd)

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            if not isinstance(job, _AnswerJob):
                job()
                continue
            # Answer the queries already waiting together; other jobs run after, in order.
            batch, later = [job], []
            while len(batch) < MAX_BATCH:
                try:
                    nxt = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if isinstance(nxt, _AnswerJob):
                    batch.append(nxt)
                else:
                    later.append(nxt)
                    if nxt is None:
                        break
            if len(batch) == 1:
                self._answer(job.sender, job.qid)
            else:
                self._answer_batch([(j.sender, j.qid) for j in batch])
            for other in later:
                if other is None:
                    return
                other()

    # -- the worker's jobs ------------------------------------------------
    def _enqueue_answer(self, sender: str, qid: str) -> None:
        """Count a stored delivery and queue its answer (caller holds the intake lock)."""
        self._pending += 1
        self._queued[sender] = self._queued.get(sender, 0) + 1
        self._jobs.put(_AnswerJob(self, sender, qid))

    def _answer_batch(self, batch: list[tuple[str, str]]) -> None:
        """Answer several stored deliveries; the sealed ones share one pass over the gallery."""
        queries: list[tuple[str, str, bytes]] = []
        for sender, qid in batch:
            try:
                query, announcements = unpack_delivery(self.inbox.load(sender, qid))
            except PprmError:
                self._answer(sender, qid)  # reports the failure as a single answer would
                continue
            if announcements:
                self._answer(sender, qid)  # a blind query with keys to accept: on its own
            else:
                queries.append((sender, qid, query))
        if not queries:
            return
        sinks = [lambda msg, s=sender, q=qid: self.inbox.write_reply(s, q, msg) for sender, qid, _ in queries]
        try:
            outcomes: list[Any] = self._responder.respond_many([q for _, _, q in queries], sinks=sinks,
                                                               now=self._clock())
        except Exception:
            log.exception("a batch of %d queries failed", len(queries))
            outcomes = [None] * len(queries)
        for (sender, qid, _), res in zip(queries, outcomes, strict=True):
            self._settle(sender, qid, res)

    def _settle(self, sender: str, qid: str, res: Any) -> None:
        """Record one query's outcome from a batch as :meth:`_answer` records its own."""
        if isinstance(res, KeyServiceUnavailableError):
            log.warning("query %s from %s waits for the key service: %s", qid, sender, res)
            timer = threading.Timer(KEY_SERVICE_RETRY, lambda: self._jobs.put(_AnswerJob(self, sender, qid)))
            timer.daemon = True
            timer.start()
            return
        if isinstance(res, PprmError):
            status, code = status_of(res)
            message = str(res) if status != 500 else "the service could not answer this query"
            if status == 500:
                log.error("query %s from %s failed: %s", qid, sender, res)
            if self.inbox.reply(sender, qid) is None:
                self.inbox.write_failure(sender, qid, Failure((status, code, message)))
        elif res is None:
            if self.inbox.reply(sender, qid) is None:
                self.inbox.write_failure(sender, qid, Failure((500, "internal",
                                                               "the service could not answer this query")))
        else:
            log.info("%s query %s from %s: %s", res.profile, qid, sender,
                     "answered" if res.refused is None else f"refused ({res.refused})")
        self._finish(sender, qid)

    def _answer(self, sender: str, qid: str) -> None:
        waiting = False
        try:
            query, announcements = unpack_delivery(self.inbox.load(sender, qid))
            res = self._responder.respond(query, sink=lambda msg: self.inbox.write_reply(sender, qid, msg),
                                          announcements=announcements, now=self._clock())
            log.info("%s query %s from %s: %s", res.profile, qid, sender,
                     "answered" if res.refused is None else f"refused ({res.refused})")
        except KeyServiceUnavailableError as exc:
            # A split state's key service is down: nothing was decided, the
            # delivery stays stored and counted, and is tried again.
            waiting = True
            log.warning("query %s from %s waits for the key service: %s", qid, sender, exc)
            timer = threading.Timer(KEY_SERVICE_RETRY, lambda: self._jobs.put(_AnswerJob(self, sender, qid)))
            timer.daemon = True
            timer.start()
        except PprmError as exc:
            status, code = status_of(exc)
            message = str(exc) if status != 500 else "the service could not answer this query"
            if status == 500:
                log.error("query %s from %s failed: %s", qid, sender, exc)
            if self.inbox.reply(sender, qid) is None:
                self.inbox.write_failure(sender, qid, Failure((status, code, message)))
        except Exception:
            log.exception("query %s from %s failed", qid, sender)
            if self.inbox.reply(sender, qid) is None:
                self.inbox.write_failure(sender, qid, Failure((500, "internal",
                                                               "the service could not answer this query")))
        finally:
            if not waiting:
                self._finish(sender, qid)

    def _finish(self, sender: str, qid: str) -> None:
        """A delivery was answered, refused or failed: uncount it and wake its waiter."""
        self.inbox.done(sender, qid)
        with self._intake_lock:
            self._pending -= 1
            left = self._queued.get(sender, 1) - 1
            if left > 0:
                self._queued[sender] = left
            else:
                self._queued.pop(sender, None)
        self._wake(sender, qid)

    def _wake(self, sender: str, qid: str) -> None:
        loop = self._loop
        if loop is None:
            return

        def set_event() -> None:
            ev = self._waiters.get((sender, qid))
            if ev is not None:
                ev.set()

        with contextlib.suppress(RuntimeError):  # the loop closed during shutdown
            loop.call_soon_threadsafe(set_event)

    async def _on_worker(self, fn: Callable[[], _T]) -> _T:
        """Run ``fn`` on the worker thread, after the jobs queued before it."""
        fut: concurrent.futures.Future[_T] = concurrent.futures.Future()

        def job() -> None:
            if not fut.set_running_or_notify_cancel():
                return
            try:
                fut.set_result(fn())
            except BaseException as exc:
                fut.set_exception(exc)

        self._jobs.put(job)
        return await asyncio.wrap_future(fut)

    # -- intake -----------------------------------------------------------
    def _intake_check(self, delivery: bytes) -> tuple[str, str]:
        """Verify a delivery's envelopes, check its sender's limits, store and queue it.

        Returns:
            ``(sender, query id)``.

        Raises:
            MessageError and subclasses: the envelopes do not verify, or the
                delivery was accepted before (``ReplayError``).
            IntakeLimitError: the sender holds its share of the inbox, or its
                answered plus queued queries reach its quota.
            _Busy: the inbox is full.
        """
        query, announcements = unpack_delivery(delivery)
        t = self._clock()
        header = self._intake.query_header(query, t)
        for ann in announcements:
            if self._intake.verify_announcement(ann, t).envelope.header.sender != header.sender:
                raise MessageError("a delivery's key announcements must come from the query's sender")
        if announcements and header.profile != "blind":
            raise MessageError("key announcements come only with blind-profile queries")
        # Checks, store and count under one lock: two deliveries at once must
        # not both pass a limit that has room for one. The answer is queued
        # here too, not by the handler, so a request cancelled after the
        # store cannot leave a delivery counted and never answered.
        with self._intake_lock:
            if self.inbox.known(header.sender, header.id):
                raise ReplayError("this query was delivered before")
            self._check_limits(header.sender, t)
            if self._pending >= self._capacity:
                raise _Busy
            self.inbox.accept(header.sender, header.id, delivery)
            self._enqueue_answer(header.sender, header.id)
        return header.sender, header.id

    def _check_limits(self, sender: str, now: float) -> None:
        """Refuse a delivery its sender has no room for (caller holds the intake lock).

        Warning:
            Of the two quotas only the per-peer one is checked here: the
            case reference is inside the boxed body and intake unboxes
            nothing, so the per-case quota is still decided by the worker,
            which answers a query over it with a signed refusal
            (``quota-case``).

        Raises:
            IntakeLimitError: ``inbox-share`` or ``quota-peer``.
        """
        queued = self._queued.get(sender, 0)
        # The roster counted by file name, no card parsed: this runs for
        # every delivery under the intake lock.
        roster = self.state.path("roster")
        peers = sum(name.endswith(".card") for name in os.listdir(roster))
        share = share_of(self._capacity, peers)
        if queued >= share:
            raise IntakeLimitError(f"{sender} has {queued} queries waiting at {self.name}, its share of the "
                                   f"inbox; retry later", peer=sender, reason="inbox-share", retry_after=RETRY_SHARE)
        # The ledger keeps nothing in memory, so reading it beside the worker
        # is safe. Read under the intake lock, a query the worker has counted
        # in the ledger is still counted as queued until the worker takes the
        # lock: the sum can be one high for a moment, never low.
        _, answered = self._responder.quota.usage(sender, "", now)
        quota = self.state.config.quota_per_peer
        if answered + queued >= quota:
            raise IntakeLimitError(f"{self.name} answers at most {quota} queries from {sender} in 24 hours "
                                   f"({answered} answered, {queued} waiting); try again later",
                                   peer=sender, reason="quota-peer", retry_after=RETRY_QUOTA)

    # -- HTTP handlers ----------------------------------------------------
    async def card(self, request: Request) -> Response:
        return Response(self.state.card_bytes, media_type=OCTETS)

    async def health(self, request: Request) -> Response:
        return JSONResponse({"state": self.name, "ok": True, "pending": self._pending})

    async def post_query(self, request: Request) -> Response:
        body = await read_body(request, MAX_DELIVERY)
        if isinstance(body, Response):
            return body
        try:
            sender, qid = await asyncio.to_thread(self._intake_check, body)
        except _Busy:
            return _error(503, "busy", "too many queries are waiting; retry later", {"Retry-After": "5"})
        except IntakeLimitError as exc:
            log.info("delivery from %s refused at intake (%s)", exc.peer, exc.reason)
            return _error(429, exc.reason, str(exc), {"Retry-After": str(exc.retry_after)})
        except PprmError as exc:
            return _pprm_error(exc)
        return JSONResponse({"query_id": qid, "answer": f"/v1/answers/{sender}/{qid}"}, status_code=202)

    async def get_answer(self, request: Request) -> Response:
        sender = request.path_params["sender"]
        qid = request.path_params["query_id"]
        if not STATE_CODE.fullmatch(sender) or not QUERY_ID.fullmatch(qid):
            return _error(404, "not-found", "no such query")
        try:
            wait = min(max(float(request.query_params.get("wait", "0")), 0.0), MAX_WAIT)
        except ValueError:
            return _error(400, "message", "wait must be a number of seconds")
        deadline = time.monotonic() + wait
        while True:
            reply = self.inbox.reply(sender, qid)
            if reply is not None:
                return Response(reply, media_type=OCTETS)
            failure = self.inbox.failure(sender, qid)
            if failure is not None:
                return _error(failure.status, failure.code, failure.message)
            if not self.inbox.is_pending(sender, qid):
                return _error(404, "not-found", "no such query")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return JSONResponse({"status": "pending"}, status_code=202)
            ev = self._waiters.setdefault((sender, qid), asyncio.Event())
            try:
                await asyncio.wait_for(ev.wait(), timeout=remaining)
            except TimeoutError:
                pass
            finally:
                self._waiters.pop((sender, qid), None)

    async def post_followup(self, request: Request) -> Response:
        body = await read_body(request, MAX_FOLLOWUP)
        if isinstance(body, Response):
            return body
        key_service = key_service_for(self.state, self._key_service)
        try:
            res = await self._on_worker(lambda: key_service.resolve(body, self._clock()))
        except NotAHitError as exc:
            # A blind follow-up whose probe does not hit its record: refused,
            # logged and counted by the key service; the requester gets the
            # signed refusal, like the refusal of a query.
            log.info("follow-up %s from %s on query %s refused (not-a-hit)", exc.followup_id, exc.peer,
                     exc.query_id)
            return Response(exc.refusal, media_type=OCTETS)
        except PprmError as exc:
            return _pprm_error(exc)
        log.info("follow-up %s from %s on query %s resolved", res.followup_id, res.requester, res.query_id)
        # The reference stays here: the record follows through the human step two.
        return JSONResponse({"status": "resolved", "query_id": res.query_id, "followup_id": res.followup_id})


class _Busy(Exception):
    """The intake queue is full (internal signal; becomes a 503)."""


@dataclass
class _Shards:
    """The service's sharded matchers, set once the app's lifespan has connected to the cluster."""

    sealed: ShardedMatcher | None = None
    blind: ShardedBlindMatcher | None = None

    def sealed_matcher(self) -> ShardedMatcher:
        if self.sealed is None:
            raise ClusterError("the cluster is not connected yet")
        return self.sealed

    def blind_matcher(self) -> ShardedBlindMatcher:
        if self.blind is None:
            raise ClusterError("the cluster is not connected yet")
        return self.blind


def create_app(directory: str, *, now: Callable[[], float] = time.time, cluster: str | None = None,
               replicas: int = 1, capacity: int = MAX_PENDING, key_service: str | None = None) -> Starlette:
    """The ASGI application of one state's service.

    Args:
        directory: the state directory.
        now: clock override for tests.
        cluster: a Dask scheduler address (``tcp://...``) or ``local:N``: the
            sealed gallery (public material only) and the blind database
            (plaintext encoding: trusted workers only) are then sharded over
            its workers, synced before each query.
        replicas: copies of each gallery block on the cluster.
        capacity: deliveries that may wait for the worker; each trusted peer
            may hold its share of them (:func:`pprm.net.inbox.share_of`).
        key_service: a split state's key-service address (default: the one
            recorded at split time).

    Returns:
        A Starlette app; its lifespan starts and stops the worker thread (and
        connects to the cluster, and syncs the gallery to it).

    Raises:
        StateError: not a state directory, or another service runs on it.
        ParameterError: ``capacity`` is below 1.
    """
    shards = _Shards()

    def sharded(gallery: EncryptedGallery) -> SealedMatching:
        matcher = shards.sealed_matcher()
        matcher.sync(gallery)
        return matcher

    def sharded_blind(database: BlindDatabase, version: str) -> BlindMatching:
        blind = shards.blind_matcher()
        blind.sync(database, version)
        return blind

    svc = StateService(directory, now=now, matcher=sharded if cluster else None,
                       blind=sharded_blind if cluster else None, capacity=capacity, key_service=key_service)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if cluster:
            from pprm.cluster import ShardedBlindMatcher, ShardedMatcher, connect

            conn = await asyncio.to_thread(connect, cluster)
            st = svc.state
            shards.sealed = ShardedMatcher(conn, st.sealed_shard_spec(), replicas=replicas)
            # Blind shards hold the gallery's plaintext encoding: the trusted-cluster rule of docs/CLUSTER.md applies.
            shards.blind = ShardedBlindMatcher(conn, st.blind_shard_spec(), st.key_id, replicas=replicas)
            report = await asyncio.to_thread(shards.sealed.sync, st.gallery())
            log.warning("%s: sealed gallery sharded over %d workers at %s (%d blocks sent)", svc.name,
                        report["workers"], cluster, report["sent"])
        svc.start(asyncio.get_running_loop())
        try:
            yield
        finally:
            await asyncio.to_thread(svc.stop)
            if shards.sealed is not None:
                await asyncio.to_thread(shards.sealed.cluster.close)

    routes = [
        Route("/v1/card", svc.card, methods=["GET"]),
        Route("/v1/health", svc.health, methods=["GET"]),
        Route("/v1/queries", svc.post_query, methods=["POST"]),
        Route("/v1/answers/{sender}/{query_id}", svc.get_answer, methods=["GET"]),
        Route("/v1/followups", svc.post_followup, methods=["POST"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers=_HANDLERS)
    app.state.service = svc
    return app


async def _not_found(request: Request, exc: Exception) -> Response:
    return _error(404, "not-found", "no such route")


async def _bad_method(request: Request, exc: Exception) -> Response:
    return _error(405, "method", "method not allowed on this route")


async def _internal(request: Request, exc: Exception) -> Response:
    log.error("unhandled error on %s: %r", request.url.path, exc)
    return _error(500, "internal", "the service could not process the request")


_HANDLERS: dict[Any, Callable[[Request, Exception], Any]] = {404: _not_found, 405: _bad_method, 500: _internal}
