"""Soak benchmarks: 1,000 sealed queries from concurrent requesters against one state.

``test_soak`` runs in process (3 requesters); ``test_soak_http`` runs the
state as a separate ``pprm serve`` process and 4 requesters post and
long-poll over HTTP on loopback. Both report throughput and latency
(p50, p95, p99) in ``extra_info``; asserts only the account
(no query lost, answered twice, left unlogged or wrongly decided), never a
time. Environment: ``PPRM_SOAK_QUERIES`` (default 1000), ``PPRM_SOAK_GALLERY``
(default 10000), ``PPRM_BENCH_PARAMS`` (default the library's sealed set).
"""

from __future__ import annotations

import os

from pprm.bench.soak import run_soak
from pprm.crypto import params as param_sets


def test_soak(benchmark):
    params = os.environ.get("PPRM_BENCH_PARAMS", param_sets.DEFAULT_PARAMS)
    queries = int(os.environ.get("PPRM_SOAK_QUERIES", "1000"))
    gallery = int(os.environ.get("PPRM_SOAK_GALLERY", "10000"))
    report = benchmark.pedantic(run_soak, kwargs={"queries": queries, "requesters": 3, "gallery": gallery,
                                                  "params": params, "allow_insecure": params.startswith("INSECURE")},
                                rounds=1, iterations=1)
    benchmark.extra_info.update(report)
    assert report["ok"], report


def test_soak_http(benchmark):
    params = os.environ.get("PPRM_BENCH_PARAMS", param_sets.DEFAULT_PARAMS)
    queries = int(os.environ.get("PPRM_SOAK_QUERIES", "1000"))
    gallery = int(os.environ.get("PPRM_SOAK_GALLERY", "10000"))
    report = benchmark.pedantic(run_soak, kwargs={"queries": queries, "requesters": 4, "gallery": gallery,
                                                  "params": params, "allow_insecure": params.startswith("INSECURE"),
                                                  "over_http": True},
                                rounds=1, iterations=1)
    benchmark.extra_info.update(report)
    assert report["ok"], report
