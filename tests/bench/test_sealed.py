"""The sealed benchmark behind ``pprm bench`` (pprm.bench.sealed), on a small insecure gallery.

Timings are only checked for being recorded, never for their values; the
byte figures are checked against what the parameter set implies, and the
encrypted decisions against plaintext truth.
"""

from __future__ import annotations

import copy
import json
import math
import os
from typing import Any

import numpy as np
import pytest
import tenseal

import pprm
from pprm.bench.sealed import TARGETS, Agreement, format_table, run_bench
from pprm.crypto import params as param_sets
from pprm.errors import ParameterError
from tests.helpers import INSECURE_SEALED

N = 600


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], list[str], str]:
    workdir = str(tmp_path_factory.mktemp("bench-work"))
    messages: list[str] = []
    result = run_bench(sizes=[N], params=INSECURE_SEALED, allow_insecure=True, repeats=1,
                       progress=messages.append, workdir=workdir)
    return result, messages, workdir


def test_result_is_json_ready_and_describes_the_machine(bench):
    result, _messages, _workdir = bench
    assert json.loads(json.dumps(result)) == result
    assert result["params"] == INSECURE_SEALED
    assert result["repeats"] == 1 and result["agreement_probes"] == 10
    m = result["machine"]
    assert m["cores"] == os.cpu_count()
    assert m["numpy"] == np.__version__
    assert m["tenseal"] == tenseal.__version__
    assert m["backend"] == pprm.BACKEND
    assert m["platform"] and m["python"]
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as fh:
            models = [ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")]
        if models:
            assert m["cpu"] == models[0]
    assert result["targets"] == TARGETS


def test_decisions_agree_with_plaintext_truth(bench):
    result, _messages, _workdir = bench
    (row,) = result["sizes"]
    a = row["agreement"]
    # The ten agreement probes and the sixteen of the batch (matched in one pass).
    assert a["probes"] == 10 + 16
    assert a["pairs"] == (10 + 16) * N
    assert a["decisive"] + a["within_margin"] == a["pairs"]
    assert a["disagreements"] == 0
    # The blended probes put pairs near tau, so the check is not won on easy pairs.
    assert a["near_threshold"] >= 5
    # Planted mates and blends produce hits; impostors alone would not.
    assert a["hits"] >= 3
    assert row["answers"]["checked"] >= 1
    assert row["answers"]["disagreements"] == 0
    assert result["agreement_total"] == a


def test_the_batch_is_timed_against_one_probe(bench):
    result, _messages, _workdir = bench
    (row,) = result["sizes"]
    b = row["batch"]
    assert result["batch"] == b["probes"] == 16
    assert b["per_probe_ms"] == pytest.approx((b["match_ms"] + b["decide_ms"]) / 16)
    assert b["per_probe_over_single"] == pytest.approx(b["per_probe_ms"] / b["single_ms"])
    assert b["single_ms"] > 0 and b["numpy_batched_per_probe_ms"] > 0


def test_byte_figures_follow_from_the_parameters(bench):
    result, _messages, _workdir = bench
    (row,) = result["sizes"]
    ps = param_sets.get(INSECURE_SEALED, allow_insecure=True)
    blocks = math.ceil(N / ps.templates_per_block)
    assert row["n"] == N and row["blocks"] == blocks and row["templates_per_block"] == ps.templates_per_block
    # One block: dim ciphertexts x 2 polynomials x L primes x N coefficients x 8 bytes.
    block_bytes = result["dim"] * 2 * ps.data_primes * ps.poly_modulus_degree * 8
    assert row["ram_bytes"] == blocks * block_bytes
    assert row["ram_bytes_per_template"] == pytest.approx(blocks * block_bytes / N)
    assert row["ram_bytes_per_slot"] == pytest.approx(block_bytes / ps.templates_per_block)
    # On disk: the residues plus .npy headers and the index, nothing else.
    assert row["ram_bytes"] < row["stored_bytes"] < row["ram_bytes"] + 64 * N + 4096 * blocks
    assert row["stored_bytes_per_template"] == pytest.approx(row["stored_bytes"] / N)
    # The query carries the float32 probe (base64 in a boxed body).
    assert row["query_bytes"] > 4 * result["dim"]
    assert row["answer_bytes"] > 0
    assert row["answer_candidates_hit"] >= 1
    assert row["answer_bytes_hit"] > row["answer_bytes"]


def test_timings_are_recorded_and_consistent(bench):
    result, _messages, _workdir = bench
    (row,) = result["sizes"]
    assert len(row["query_ms_runs"]) == 1
    assert row["query_ms"] == pytest.approx(float(np.median(row["query_ms_runs"])))
    for key in ("enroll_s", "query_ms", "matcher_ms", "decide_ms", "numpy_ms"):
        assert row[key] > 0, key
    assert row["us_per_template"] == pytest.approx(row["query_ms"] * 1e3 / N)
    assert row["ratio_to_numpy"] == pytest.approx(row["query_ms"] / row["numpy_ms"])
    assert 0 < row["numpy_min_ms"] <= row["numpy_ms"]


def test_progress_is_reported_and_scratch_states_are_removed(bench):
    _result, messages, workdir = bench
    assert any("enrolled" in msg for msg in messages)
    assert any("0 disagreements" in msg for msg in messages)
    assert os.listdir(workdir) == []


def test_format_table_shows_every_size_and_the_targets(bench):
    result, _messages, _workdir = bench
    text = format_table(result)
    assert INSECURE_SEALED in text
    assert "query ms" in text and "x numpy" in text and "RAM B/tpl" in text
    assert any(line.split()[:2] == ["600", "2"] for line in text.splitlines())
    assert "not measured (run with size 100,000)" in text
    assert "too few pairs to show" in text

    at_target = copy.deepcopy(result)
    at_target["machine"]["backend"] = "numpy"
    at_target["sizes"][0].update(n=100_000, query_ms=2500.0)
    at_target["agreement_total"]["decisive"] = 10**6
    text = format_table(at_target)
    assert "2,500 ms at 100,000 (met)" in text
    assert "1,000,000 pairs, 0 disagreements (met)" in text

    at_target["sizes"][0]["query_ms"] = 3500.0
    at_target["agreement_total"]["disagreements"] = 1
    text = format_table(at_target)
    assert "3,500 ms at 100,000 (NOT met)" in text
    assert "1 disagreements (NOT met)" in text

    # The query target is for the numpy path: a native-kernel run does not claim it.
    at_target["machine"]["backend"] = "native"
    text = format_table(at_target)
    assert "not shown, measured with the native kernel (rerun with PPRM_BACKEND=numpy)" in text
    assert "(met)" not in text.splitlines()[-2]


def test_agreement_counts_flips_only_outside_the_margin():
    tau, margin = 0.4, 1e-3
    scores = np.array([0.9, 0.4005, 0.3995, 0.41, 0.39, 0.0])
    truth = scores >= tau
    a = Agreement()
    a.add(scores, truth, tau, margin)
    assert (a.pairs, a.decisive, a.disagreements, a.within_margin, a.within_margin_flips) == (6, 4, 0, 2, 0)
    assert a.near_threshold == 2

    flipped = truth.copy()
    flipped[[1, 3]] = ~flipped[[1, 3]]  # one flip inside the margin, one outside
    b = Agreement()
    b.add(scores, flipped, tau, margin)
    assert b.disagreements == 1 and b.within_margin_flips == 1

    with pytest.raises(ValueError):
        b.add(scores, flipped[:3], tau, margin)


@pytest.mark.parametrize("bad", [
    {"params": INSECURE_SEALED, "allow_insecure": False},
    {"params": "no-such-set"},
    {"sizes": []},
    {"sizes": [0]},
    {"repeats": 0},
    {"agreement_probes": 0},
])
def test_refuses_bad_arguments(bad: dict[str, Any]) -> None:
    with pytest.raises(ParameterError):
        run_bench(**{"sizes": [N], "params": INSECURE_SEALED, "allow_insecure": True, **bad})
