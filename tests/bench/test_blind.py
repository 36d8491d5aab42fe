"""Smoke test of the blind-profile benchmark behind ``pprm bench --profile blind`` (pprm.bench.blind).

On the insecure N=1024 set with 600 templates (two blocks): the result must be
JSON-ready with the documented keys, the correctness checks must pass, and
the table must render. Timings are only checked for being recorded.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

import pprm
from pprm.bench.blind import BLIND_TARGETS, format_blind_table, run_blind_bench
from pprm.bench.setup import INSECURE_SEALED
from pprm.crypto.answer_codec import answer_bytes
from pprm.crypto.context import BlindContext
from pprm.errors import ParameterError
from tests.helpers import INSECURE_BLIND

N = 600

SIZE_KEYS = {
    "n", "blocks", "templates_per_block", "enroll_s", "db_build_s", "db_export_s", "db_load_s", "db_ram_bytes",
    "db_ram_bytes_per_template", "keygen_ms", "first_query_ms", "accept_keys_ms", "first_answer_ms", "query_ms",
    "responder_ms", "open_ms", "total_ms", "query_ms_runs", "responder_ms_runs", "open_ms_runs", "total_ms_runs",
    "us_per_template", "numpy_ms", "ratio_to_numpy", "total_ratio_to_numpy", "query_bytes",
    "query_ciphertext_bytes", "query_ciphertexts", "announcement_bytes", "announcement_public_bytes",
    "announcement_galois_bytes", "announcement_mb", "answer_bytes", "answer_block_bytes",
    "answer_bytes_per_template", "answer_bytes_per_position", "load_average", "correct", "announcement_relin_bytes",
    "matcher_checks_ms", "matcher_no_checks_ms", "checks_overhead", "checks_pct", "numpy_min_ms",
    "db_build_to_enroll", "db_map_s", "db_rebuild_one_s", "db_rebuild_reused_blocks",
}


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    workdir = str(tmp_path_factory.mktemp("bench-blind"))
    return run_blind_bench([N], params=INSECURE_BLIND, repeats=1, allow_insecure=True, workdir=workdir)


def test_result_has_the_documented_keys_and_passes_its_checks(result: dict[str, Any]) -> None:
    assert json.loads(json.dumps(result)) == result
    assert {"format", "profile", "created", "params", "sealed_params", "threshold", "dim", "decision_margin",
            "repeats", "backend", "machine", "sizes", "correct", "targets", "kernel"} <= set(result)
    kern = result["kernel"]["backends"]
    assert "numpy" in kern and ("native" in kern) == (pprm.BACKEND == "native")
    assert all(k["ms_per_block"] > 0 and k["gmac_per_s"] > 0 for k in kern.values())
    assert result["profile"] == "blind" and result["params"] == INSECURE_BLIND
    assert result["sealed_params"] == INSECURE_SEALED
    assert result["backend"] == pprm.BACKEND == result["machine"]["backend"]
    assert result["correct"] is True
    (row,) = result["sizes"]
    assert set(row) >= SIZE_KEYS
    c = row["correct"]
    assert c["mate_hit"] is True and c["mate_resolved"] is True and c["impostor_no_hit"] is True
    assert c["mate_candidates"] == 1
    for key in ("db_build_s", "keygen_ms", "accept_keys_ms", "first_answer_ms", "query_ms", "responder_ms",
                "open_ms", "total_ms", "numpy_ms"):
        assert row[key] > 0, key
    assert row["total_ms"] >= row["responder_ms"]
    assert 0 < row["numpy_min_ms"] <= row["numpy_ms"]
    assert len(row["responder_ms_runs"]) == 1
    assert row["matcher_checks_ms"] > 0 and row["matcher_no_checks_ms"] > 0
    assert row["checks_overhead"] == pytest.approx(row["matcher_checks_ms"] / row["matcher_no_checks_ms"] - 1)


def test_byte_figures_follow_from_the_parameters(result: dict[str, Any], blind_ctx: BlindContext) -> None:
    (row,) = result["sizes"]
    blocks = -(-N // blind_ctx.params.templates_per_block)
    assert row["blocks"] == blocks
    assert row["answer_block_bytes"] == answer_bytes(blind_ctx)
    # The answer message is its blocks plus a small envelope.
    assert blocks * answer_bytes(blind_ctx) < row["answer_bytes"] < blocks * answer_bytes(blind_ctx) + 2048
    assert row["answer_bytes_per_template"] == pytest.approx(row["answer_bytes"] / N)
    positions = blocks * blind_ctx.params.templates_per_block
    assert row["answer_bytes_per_position"] == pytest.approx(row["answer_bytes"] / positions)
    assert row["db_ram_bytes_per_template"] == pytest.approx(row["db_ram_bytes"] / N)
    # One ciphertext per query, plus a small envelope.
    assert row["query_ciphertexts"] == 1
    assert row["query_ciphertext_bytes"] < row["query_bytes"] < row["query_ciphertext_bytes"] + 2048
    assert row["announcement_bytes"] > (row["announcement_public_bytes"] + row["announcement_galois_bytes"]
                                        + row["announcement_relin_bytes"])
    assert row["announcement_mb"] == pytest.approx(row["announcement_bytes"] / 1e6)


def test_targets_block(result: dict[str, Any]) -> None:
    t = result["targets"]
    assert set(t) == {"query", "upload", "answer", "checks", "size"}
    assert t["size"]["ram"] is None and t["size"]["at_n"] == 100_000  # RAM, x numpy and build ratio at 100k only
    assert t["query"]["meets"] is None and t["query"]["at_n"] == BLIND_TARGETS["query_ms_at_n"]
    assert t["checks"]["meets"] is None and t["checks"]["overhead"] is None  # measured at 100k only
    assert t["upload"]["meets"] is True  # the N=1024 keys are far below 7 MB
    (size,) = t["answer"]["sizes"]
    assert size["meets"] is (size["bytes_per_position"] <= 13.0)
    assert t["answer"]["meets"] is size["meets"]


def test_format_blind_table_renders(result: dict[str, Any]) -> None:
    text = format_blind_table(result)
    assert INSECURE_BLIND in text and "600" in text
    assert "target: blind 100k x 512 query" in text and "not measured" in text
    assert "target: answer <= 13 bytes per template position" in text
    assert "target: the malicious-requester checks add <= 30%" in text
    assert "target: diagonals in RAM <= 14 KB per template" in text
    assert "correctness: ok" in text and "WRONG" not in text


@pytest.mark.parametrize("bad", [
    {"allow_insecure": False},  # an insecure set needs permission
    {"sizes": []},
    {"sizes": [0]},
    {"repeats": 0},
])
def test_refuses_bad_arguments(bad: dict[str, Any]) -> None:
    with pytest.raises(ParameterError):
        run_blind_bench(**{"sizes": [N], "params": INSECURE_BLIND, "allow_insecure": True, **bad})
