"""A short soak in CI: concurrent requesters, every query accounted for (the full run is in bench/)."""

from __future__ import annotations

from pprm.bench.soak import run_soak
from tests.helpers import INSECURE_SEALED


def test_concurrent_queries_are_each_answered_once_and_logged(tmp_path) -> None:
    report = run_soak(queries=45, requesters=3, gallery=600, params=INSECURE_SEALED,
                      allow_insecure=True, workdir=str(tmp_path))
    assert report["errors"] == []
    assert report["answered"] == 45
    for key in ("lost", "answered_twice", "unlogged_at_responder", "unlogged_at_requester", "wrong"):
        assert report[key] == 0, key
    assert report["replay_refused"] is True and report["ok"] is True
    # 4 states' logs: 45 queries leave entries at both ends, and every log verifies.
    assert report["audit_entries_verified"] > 4 * 45 // 2


def test_concurrent_queries_over_http_are_each_answered_once_and_logged(tmp_path) -> None:
    report = run_soak(queries=45, requesters=3, gallery=600, params=INSECURE_SEALED,
                      allow_insecure=True, workdir=str(tmp_path), over_http=True)
    assert report["transport"] == "http"
    assert report["errors"] == []
    assert report["answered"] == 45
    for key in ("lost", "answered_twice", "unlogged_at_responder", "unlogged_at_requester", "wrong"):
        assert report[key] == 0, key
    assert report["replay_refused"] is True and report["ok"] is True
    assert report["latency_ms"]["p50"] <= report["latency_ms"]["p99"] <= report["latency_ms"]["max"]
