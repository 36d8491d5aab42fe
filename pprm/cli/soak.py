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

Used by ``bench/test_bench_soak.py`` (1,000 queries, reported with the
throughput) and ``tests/test_soak.py`` (a short run in CI).
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import threading
import time
from collections import Counter
from typing import Any

import numpy as np

from pprm.crypto import params as param_sets
from pprm.errors import ReplayError
from pprm.node.keyservice import KeyService
from pprm.node.requester import Requester
from pprm.node.responder import Responder
from pprm.node.state import State
from pprm.synthetic import impostor_probe, make_gallery, mate_probe

__all__ = ["run_soak"]

_RESPONDER = "RESP"
# Queries per case: far under the default quota per case (issue 5: 100 per day).
_PER_CASE = 50
_PURPOSE = "serious-crime"


def _account(resp: State, reqs: list[State], sent: dict[str, tuple[str, bool, bool]]) -> dict[str, Any]:
    answers = Counter(e["data"]["query_id"] for e in resp.audit.entries() if e["event"] == "answer")
    received: Counter[str] = Counter()
    lost = 0
    for st in reqs:
        received.update(e["data"]["query_id"] for e in st.audit.entries() if e["event"] == "answer_received")
        outbox = Requester(st)._outbox()
        lost += sum(1 for qid in outbox if outbox[qid]["answer"] is None)
    wrong = sum(1 for _qid, (_who, mate, hit) in sent.items() if mate != hit)
    return {
        "lost": lost,
        "answered_twice": sum(1 for n in answers.values() if n > 1),
        "unlogged_at_responder": sum(1 for qid in sent if answers[qid] == 0),
        "unlogged_at_requester": sum(1 for qid in sent if received[qid] == 0),
        "wrong": wrong,
        "audit_entries_verified": resp.audit.verify() + sum(st.audit.verify() for st in reqs),
    }


def run_soak(queries: int = 1000, requesters: int = 3, gallery: int = 10_000, *,
             params: str = param_sets.DEFAULT_PARAMS, allow_insecure: bool = False, seed: int = 0,
             workdir: str | None = None) -> dict[str, Any]:
    """Run the soak and account for every query.

    Args:
        queries: total queries, spread round-robin over the requesters.
        requesters: requesting states, one thread each.
        gallery: synthetic templates enrolled at the responder.
        params: sealed parameter set of all states.
        allow_insecure: accept ``INSECURE*`` sets (tests only).
        seed: seed of the synthetic gallery and probes.
        workdir: where the scratch states go (removed afterwards).

    Returns:
        A JSON-ready report: settings, ``seconds``, ``queries_per_s``,
        latency percentiles (ms), the account (``lost``, ``answered_twice``,
        ``unlogged_at_responder``, ``unlogged_at_requester``, ``wrong``),
        ``replay_refused`` and ``ok``.
    """
    root = tempfile.mkdtemp(prefix="pprm-soak-", dir=workdir)
    try:
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

        def worker(i: int) -> None:
            try:
                me = State.open(reqs[i].dir)
                requester = Requester(me)
                # Each thread has its own view of the responder: its own SEAL
                # context and key service, the same files and lock.
                responder = Responder(State.open(resp.dir))
                for k in range(i, queries, requesters):
                    mate = k % 2 == 0
                    probe = (mate_probe(g, (k * 7919) % gallery, seed * 1_000_003 + k) if mate
                             else impostor_probe(g.templates.shape[1], seed * 1_000_003 + k))
                    t = time.perf_counter()
                    msg = requester.query(_RESPONDER, probe, case=f"SOAK-{i}-{k // (_PER_CASE * requesters)}",
                                          purpose=_PURPOSE)
                    opened = requester.open(responder.answer(msg))
                    dt = time.perf_counter() - t
                    with guard:
                        sent[opened.query_id] = (me.config.name, mate, opened.hit)
                        latencies.append(dt)
                        last_query[:] = [msg]
            except BaseException as exc:  # reported in the account below, never lost
                with guard:
                    errors.append(exc)

        started = time.perf_counter()
        threads = [threading.Thread(target=worker, args=(i,), name=f"soak-{i}") for i in range(requesters)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        seconds = time.perf_counter() - started

        replay_refused = False
        if last_query:
            try:
                Responder(resp).answer(last_query[0])
            except ReplayError:
                replay_refused = True
        account = _account(resp, reqs, sent)
        ok = (not errors and len(sent) == queries and replay_refused
              and not any(account[k] for k in ("lost", "answered_twice", "unlogged_at_responder",
                                              "unlogged_at_requester", "wrong")))
        lat = sorted(latencies) or [0.0]
        return {
            "queries": queries, "requesters": requesters, "gallery": gallery, "params": params,
            "answered": len(sent), "errors": [f"{type(e).__name__}: {e}" for e in errors][:5],
            "seconds": seconds, "queries_per_s": len(sent) / seconds if seconds else 0.0,
            "latency_ms": {"p50": 1e3 * statistics.median(lat), "p95": 1e3 * float(np.percentile(lat, 95)),
                           "max": 1e3 * lat[-1]},
            **account, "replay_refused": replay_refused, "ok": ok,
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)
