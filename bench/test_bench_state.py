"""Benchmark: a requester's query costs the same with an empty history and with a million entries.

Run with ``pytest bench/test_bench_state.py --benchmark-only``. Two requesting
states trust one responder (the insecure sealed set: the query's own
cryptography is small, so the state's bookkeeping is a large share of the
time). One of them gets ``PPRM_BENCH_HISTORY`` entries (default 1,000,000)
in its outbox and as many in its replay cache, written in bulk through the
stores (:meth:`pprm.node.outbox.Outbox.put_many`,
:meth:`pprm.protocol.replay.ReplayCache.merge`); all of them are live, so
nothing is pruned while the benchmark runs.

Each round times one :meth:`~pprm.node.requester.Requester.query` on the
state with the history (pytest-benchmark's figure) and, just before it, one
on the empty state (timed here), so that both see the same load on the
machine. ``extra_info`` records both medians and their ratio
(history / empty); the test checks that they differ by at most 10%. Both
queries write the audit log, the audit head and the outbox durably (an
fsync each), which dominate the time.

Environment:
    PPRM_BENCH_HISTORY: entries in the outbox and in the replay cache
        (default 1,000,000).
    PPRM_BENCH_STATE_ROUNDS: timed rounds (default 41).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sqlite3
import statistics
import time
from collections.abc import Iterator

import pytest

from pprm.bench.report import load_average
from pprm.node.outbox import Outbox, SentSealedQuery
from pprm.node.requester import Requester
from pprm.node.state import State
from pprm.protocol.replay import ReplayCache
from pprm.synthetic import impostor_probe

HISTORY = int(os.environ.get("PPRM_BENCH_HISTORY", "1000000"))
ROUNDS = int(os.environ.get("PPRM_BENCH_STATE_ROUNDS", "41"))
WARMUP = 3
PARAMS = "INSECURE-sealed-n1024"
# The bound the benchmark checks: the history may cost at most this much.
MAX_RATIO = 1.10
_CHUNK = 100_000


def _history(now: int, start: int, stop: int) -> Iterator[SentSealedQuery]:
    for i in range(start, stop):
        yield SentSealedQuery(query_id=f"{i:032x}", peer="RESPONDER", case=f"H-{i % 997}", purpose="serious-crime",
                              created=now - 3600, expires=now, answer=None if i % 2 else f"{i:032x}"[::-1])


def _fill(state: State, entries: int) -> None:
    """Write ``entries`` live outbox records and replay ids, in bulk, in chunks of 100k per transaction."""
    now = int(time.time())
    box, replay = Outbox(state.path("outbox.json")), ReplayCache(state.path("replay.json"))
    for start in range(0, entries, _CHUNK):
        stop = min(entries, start + _CHUNK)
        box.put_many(_history(now, start, stop))
        replay.merge({"RESPONDER": {f"{i:032x}": now + 3600 for i in range(start, stop)}})


@pytest.fixture(scope="module")
def states(tmp_path_factory: pytest.TempPathFactory) -> tuple[State, State]:
    """(empty requester, requester with the history), both trusted by and trusting one responder."""
    root = tmp_path_factory.mktemp("pprm-bench-state")
    responder = State.init(str(root / "RESPONDER"), "RESPONDER", params=PARAMS, allow_insecure=True)
    out = []
    for name in ("EMPTY", "HISTORY"):
        st = State.init(str(root / name), name, params=PARAMS, allow_insecure=True)
        st.trust(responder.card_bytes)
        responder.trust(st.card_bytes)
        out.append(st)
    _fill(out[1], HISTORY)
    return out[0], out[1]


def test_requester_query_with_history(benchmark, states: tuple[State, State]) -> None:
    """Requester.query (sign, box, outbox, audit) with an empty history and with HISTORY entries."""
    empty, full = states
    req_empty, req_full = Requester(empty), Requester(full)
    probe = impostor_probe(512, seed=3)
    counter = itertools.count()
    empty_times: list[float] = []

    def query_empty() -> tuple[tuple[()], dict[str, object]]:
        i = next(counter)
        start = time.perf_counter()
        req_empty.query("RESPONDER", probe, case=f"B-{i}", purpose="serious-crime")
        empty_times.append(time.perf_counter() - start)
        return (), {}

    def query_full() -> None:
        req_full.query("RESPONDER", probe, case=f"B-{next(counter)}", purpose="serious-crime")

    benchmark.pedantic(query_full, setup=query_empty, rounds=ROUNDS, warmup_rounds=WARMUP, iterations=1)
    full_median = benchmark.stats.stats.median
    empty_median = statistics.median(empty_times[-ROUNDS:])  # the setup runs for the warm-up rounds too
    ratio = full_median / empty_median
    db = full.path("state.db")
    with contextlib.closing(sqlite3.connect(db)) as conn:
        outbox_rows = conn.execute("SELECT count(*) FROM outbox").fetchone()[0]
        replay_rows = conn.execute("SELECT count(*) FROM replay").fetchone()[0]
    # Every history entry is still there: nothing was pruned while timing.
    assert outbox_rows == HISTORY + ROUNDS + WARMUP and replay_rows == HISTORY
    benchmark.extra_info.update({
        "history": HISTORY,
        "outbox_rows": outbox_rows,
        "replay_rows": replay_rows,
        "median_empty_s": empty_median,
        "median_history_s": full_median,
        "ratio": ratio,
        "state_db_bytes": os.path.getsize(db),
        "load_average": load_average(),
    })
    assert ratio <= MAX_RATIO, f"a history of {HISTORY} entries costs {ratio:.3f}x the empty state's query"
