"""Soak run: many queries from several requesters against one state, then an account of every one.

Several requesting states, one thread each, send sealed-profile queries to
one responding state in process, through the public API exactly as
deployments would (:class:`~pprm.node.requester.Requester`,
:class:`~pprm.node.responder.Responder`), each thread with its own view of
the responder's directory, so the state lock, the replay cache, the audit
log and the outboxes are exercised under contention. Afterwards every query
is accounted for from the files alone:

* lost: sent (in a requester's outbox) but without an accepted answer;
* answered twice: more than one ``answer`` entry for one query id in the
  responder's audit log, or a replayed query that was not refused;
* unlogged: an answer without its ``answer`` entry at the responder or its
  ``answer_received`` entry at the requester;
* wrong: a planted mate that was not a hit, or an impostor that was;
* every audit log still verifies.

With ``over_http=True`` the responder is a separate ``pprm serve`` process
on a loopback port and each requester posts deliveries and long-polls for
answers over HTTP (:class:`pprm.net.client.PeerClient`); the account is the
same, and the replay is refused by the service with a ``replay`` error.

Used by ``bench/test_bench_soak.py`` (1,000 queries, reported with the
throughput) and ``tests/bench/test_soak.py`` (a short run in CI).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from pprm.crypto import params as param_sets
from pprm.errors import RemoteError, ReplayError
from pprm.node.keyservice import KeyService
from pprm.node.requester import Requester
from pprm.node.responder import Responder
from pprm.node.state import State
from pprm.synthetic import impostor_probe, make_gallery, mate_probe

__all__ = ["run_soak"]

_RESPONDER = "RESP"
# Queries per case: far under the default quota per case (100 per day).
_PER_CASE = 50
_PURPOSE = "serious-crime"


def _account(resp: State, reqs: list[State], sent: dict[str, tuple[str, bool, bool]]) -> dict[str, Any]:
    answers = Counter(e["data"]["query_id"] for e in resp.audit.entries() if e["event"] == "answer")
    received: Counter[str] = Counter()
    lost = 0
    for st in reqs:
        received.update(e["data"]["query_id"] for e in st.audit.entries() if e["event"] == "answer_received")
        lost += sum(1 for sent in Requester(st).outbox().values() if sent.answer is None)
    wrong = sum(1 for _qid, (_who, mate, hit) in sent.items() if mate != hit)
    return {
        "lost": lost,
        "answered_twice": sum(1 for n in answers.values() if n > 1),
        "unlogged_at_responder": sum(1 for qid in sent if answers[qid] == 0),
        "unlogged_at_requester": sum(1 for qid in sent if received[qid] == 0),
        "wrong": wrong,
        "audit_entries_verified": resp.audit.verify() + sum(st.audit.verify() for st in reqs),
    }


@contextmanager
def _service(directory: str) -> Iterator[str]:
    """``pprm serve DIR`` as a separate process on a free loopback port; yields its URL."""
    # The deployed command itself, run as a program: nothing here imports the CLI.
    proc = subprocess.Popen([sys.executable, "-m", "pprm.cli.main", "serve", directory, "--port", "0"],  # noqa: S603 - our own interpreter and module
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if "listening on" not in line:
            raise RuntimeError(f"pprm serve did not start: {proc.communicate()[1].strip()[-300:]}")
        yield line.split()[-1]
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)


Transport = tuple[Callable[[str, bytes], bytes], Callable[[bytes], bool], Callable[[], None]]


def _local_exchange(directory: str) -> Transport:
    """Per-thread in-process transport, same shape as :func:`_http_exchange`."""
    # Each thread has its own view of the responder: its own SEAL context
    # and key service, the same files and lock.
    responder = Responder(State.open(directory))

    def refused(query: bytes) -> bool:
        try:
            responder.answer(query)
        except ReplayError:
            return True
        return False

    return (lambda _me, q: responder.answer(q)), refused, (lambda: None)


def _http_exchange(url: str) -> Transport:
    """Per-thread HTTP transport: (exchange(me, query) -> reply, replay_refused(query), close)."""
    import httpx

    from pprm.net.client import PeerClient
    from pprm.net.wire import pack_delivery

    loop = asyncio.new_event_loop()
    http = httpx.AsyncClient(trust_env=False)
    peer = PeerClient(http, url, _RESPONDER)

    async def exchange(me: str, query: bytes) -> bytes:
        qid = await peer.deliver(pack_delivery(query))
        reply = None
        while reply is None:
            reply = await peer.answer(me, qid)
        return reply

    def refused(query: bytes) -> bool:
        try:
            loop.run_until_complete(peer.deliver(pack_delivery(query)))
        except RemoteError as exc:
            return exc.code == "replay"
        return False

    def close() -> None:
        loop.run_until_complete(http.aclose())
        loop.close()

    return (lambda me, q: loop.run_until_complete(exchange(me, q))), refused, close


def run_soak(queries: int = 1000, requesters: int = 3, gallery: int = 10_000, *,
             params: str = param_sets.DEFAULT_PARAMS, allow_insecure: bool = False, seed: int = 0,
             workdir: str | None = None, over_http: bool = False) -> dict[str, Any]:
    """Run the soak and account for every query.

    Args:
        queries: total queries, spread round-robin over the requesters.
        requesters: requesting states, one thread each.
        gallery: synthetic templates enrolled at the responder.
        params: sealed parameter set of all states.
        allow_insecure: accept ``INSECURE*`` sets (tests only).
        seed: seed of the synthetic gallery and probes.
        workdir: where the scratch states go (removed afterwards).
        over_http: run the responder as a ``pprm serve`` process and send
            every query over HTTP on loopback.

    Returns:
        A JSON-ready report: settings, ``seconds``, ``queries_per_s``,
        latency percentiles (ms), the account (``lost``, ``answered_twice``,
        ``unlogged_at_responder``, ``unlogged_at_requester``, ``wrong``),
        ``replay_refused`` and ``ok``.
    """
    root = tempfile.mkdtemp(prefix="pprm-soak-", dir=workdir)
    try:
        return _run(root, queries, requesters, gallery, params, allow_insecure, seed, over_http)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _run(root: str, queries: int, requesters: int, gallery: int, params: str, allow_insecure: bool, seed: int,
         over_http: bool) -> dict[str, Any]:
    kw: dict[str, Any] = {"params": params, "allow_insecure": allow_insecure}
    resp = State.init(os.path.join(root, _RESPONDER), _RESPONDER, **kw)
    reqs = [State.init(os.path.join(root, f"REQ{i}"), f"REQ{i}", **kw) for i in range(requesters)]
    for st in reqs:
        st.trust(resp.card_bytes)
        resp.trust(st.card_bytes)
    g = make_gallery(gallery, seed=seed, prefix=_RESPONDER)
    KeyService(resp).enroll(g.templates, g.references)

    sent: dict[str, tuple[str, bool, bool]] = {}
    latencies: list[float] = []
    errors: list[BaseException] = []
    guard = threading.Lock()
    last_query: list[bytes] = []
    replay_refused: list[bool] = []

    def worker(i: int, url: str | None) -> None:
        try:
            me = State.open(reqs[i].dir)
            requester = Requester(me)
            exchange, refused, close = _local_exchange(resp.dir) if url is None else _http_exchange(url)
            try:
                for k in range(i, queries, requesters):
                    mate = k % 2 == 0
                    probe = (mate_probe(g, (k * 7919) % gallery, seed * 1_000_003 + k) if mate
                             else impostor_probe(g.templates.shape[1], seed * 1_000_003 + k))
                    t = time.perf_counter()
                    msg = requester.query(_RESPONDER, probe, case=f"SOAK-{i}-{k // (_PER_CASE * requesters)}",
                                          purpose=_PURPOSE)
                    opened = requester.open(exchange(me.config.name, msg))
                    dt = time.perf_counter() - t
                    with guard:
                        sent[opened.query_id] = (me.config.name, mate, opened.hit)
                        latencies.append(dt)
                        last_query[:] = [msg]
                if i == 0 and last_query:
                    replay_refused.append(refused(last_query[0]))
            finally:
                close()
        except BaseException as exc:  # reported in the account below, never lost
            with guard:
                errors.append(exc)

    def drive(url: str | None) -> float:
        started = time.perf_counter()
        threads = [threading.Thread(target=worker, args=(i, url), name=f"soak-{i}") for i in range(requesters)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        return time.perf_counter() - started

    if over_http:
        with _service(resp.dir) as url:
            seconds = drive(url)
    else:
        seconds = drive(None)
    account = _account(resp, reqs, sent)
    ok = (not errors and len(sent) == queries and replay_refused == [True]
          and not any(account[k] for k in ("lost", "answered_twice", "unlogged_at_responder",
                                          "unlogged_at_requester", "wrong")))
    lat = sorted(latencies) or [0.0]
    return {
        "queries": queries, "requesters": requesters, "gallery": gallery, "params": params,
        "transport": "http" if over_http else "in-process",
        "answered": len(sent), "errors": [f"{type(e).__name__}: {e}" for e in errors][:5],
        "seconds": seconds, "queries_per_s": len(sent) / seconds if seconds else 0.0,
        "latency_ms": {"p50": 1e3 * statistics.median(lat), "p95": 1e3 * float(np.percentile(lat, 95)),
                       "p99": 1e3 * float(np.percentile(lat, 99)), "max": 1e3 * lat[-1]},
        **account, "replay_refused": replay_refused == [True], "ok": ok,
    }
