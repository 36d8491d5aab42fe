"""The batched multiply-accumulate is exact, and a batch decides like single queries.

:func:`pprm.matching.kernel_batch.multiply_accumulate_many` must give, for
every probe of the batch, the words the single-probe kernel and SEAL's
``multiply_plain`` + ``add`` chain give: compared word for word, on random
blocks, at the exactness bound's edge (every residue q - 1, weight rows
summing to exactly 2**23) and against SEAL. Then
:meth:`~pprm.matching.sealed.SealedMatcher.match_many` is checked end to end
against the plaintext truth, in both halves of complex packing, with fresh
masks per probe.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pprm.errors import BackendError
from pprm.matching import kernel_numpy
from pprm.matching.kernel_batch import MAX_ROW_L1, multiply_accumulate_many
from pprm.matching.kernel_selfcheck import mac_agrees_with_seal
from pprm.matching.sealed import quantise_probe
from pprm.synthetic import unit_vectors
from tests.helpers import INSECURE_SEALED, INSECURE_SEALED_COMPLEX, ScoredWorld
from tests.matching.masked_support import masked_values

Q60 = (1152921504606748673,)  # a 60-bit NTT prime (SEAL's CoeffModulus.Create(8192, [60]))


def _exact(block: np.ndarray, w: np.ndarray, q: int) -> np.ndarray:
    """The sum in Python integers: slow, obviously right."""
    flat = block.reshape(block.shape[0], -1)
    out = [sum(int(w[k]) * int(flat[k, j]) for k in range(flat.shape[0])) % q for j in range(flat.shape[1])]
    return np.array(out, dtype=np.uint64).reshape(block.shape[1:])


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), batch=st.integers(1, 9), d=st.integers(1, 600))
def test_each_row_equals_the_single_probe_kernel(seed: int, batch: int, d: int) -> None:
    rng = np.random.default_rng(seed)
    block = rng.integers(0, Q60[0], size=(d, 2, 1, 40), dtype=np.uint64)
    w = np.stack([quantise_probe(p, 15) for p in unit_vectors(batch, d, rng)])
    many = multiply_accumulate_many(block, w, Q60)
    for b in range(batch):
        assert np.array_equal(many[b], kernel_numpy.multiply_accumulate(block, w[b], Q60))


def test_the_bound_edge_is_exact() -> None:
    # Every residue q - 1 and rows whose absolute sum is exactly 2**23, all
    # one sign or alternating: the largest partial sums the bound allows.
    q = Q60[0]
    d = 512
    block = np.full((d, 1, 1, 8), q - 1, dtype=np.uint64)
    per = MAX_ROW_L1 // d
    rows = [np.full(d, per), np.full(d, -per), np.where(np.arange(d) % 2 == 0, per, -per)]
    w = np.stack(rows).astype(np.int64)
    assert int(np.abs(w).sum(axis=1).max()) == MAX_ROW_L1
    many = multiply_accumulate_many(block, w, Q60)
    for b in range(len(rows)):
        assert np.array_equal(many[b], _exact(block, w[b], q))


def test_unit_probes_are_far_inside_the_bound() -> None:
    # The L1 norm of a unit vector is largest when every component is equal:
    # sqrt(d). Quantised at 2**15 that is 2**15 * sqrt(512) + rounding.
    d = 512
    flat = np.full(d, 1.0 / math.sqrt(d))
    worst = int(np.abs(quantise_probe(flat, 15)).sum())
    assert worst <= 2**15 * math.sqrt(d) + d / 2 < 2**20 <= MAX_ROW_L1
    rng = np.random.default_rng(3)
    random_rows = np.stack([quantise_probe(p, 15) for p in unit_vectors(200, d, rng)])
    assert int(np.abs(random_rows).sum(axis=1).max()) < worst


def test_agrees_with_seal() -> None:
    def first_row(block: np.ndarray, w: np.ndarray, moduli: tuple[int, ...]) -> np.ndarray:
        return multiply_accumulate_many(block, np.stack([w, -w]), moduli)[0]

    assert mac_agrees_with_seal(first_row)


@pytest.mark.parametrize("bad", [
    lambda w: w * 2**10,  # a row far above the exactness bound
    lambda w: w[:, :-1],  # one weight short
    lambda w: w.astype(np.float64),  # not integers
    lambda w: w[0],  # one row, not a [B, d] array
])
def test_refusals(bad: Callable[[np.ndarray], np.ndarray]) -> None:
    rng = np.random.default_rng(4)
    block = rng.integers(0, Q60[0], size=(512, 2, 1, 8), dtype=np.uint64)
    w = np.stack([quantise_probe(p, 15) for p in unit_vectors(2, 512, rng)])
    with pytest.raises(BackendError):
        multiply_accumulate_many(block, bad(w), Q60)


def test_empty_batch_and_empty_block() -> None:
    block = np.zeros((3, 2, 1, 8), dtype=np.uint64)
    assert multiply_accumulate_many(block, np.zeros((0, 3), np.int64), Q60).shape == (0, 2, 1, 8)
    empty = np.zeros((0, 2, 1, 8), dtype=np.uint64)
    assert not multiply_accumulate_many(empty, np.zeros((2, 0), np.int64), Q60).any()


@pytest.mark.parametrize("params", [INSECURE_SEALED, INSECURE_SEALED_COMPLEX])
def test_match_many_decides_like_the_plaintext(make_world: Callable[..., ScoredWorld], params: str) -> None:
    thresholds = (0.35, 0.35, 0.35)
    world = make_world(1500, 64, thresholds, seed=11, params=params)
    matcher, decider = world.matcher(), world.decider()
    probes = [world.probes[0], world.probes[1], world.probes[2], world.probes[0]]
    results = matcher.match_many(probes, 0.35)
    assert len(results) == len(probes)
    margin = world.state.ctx.params.decision_margin
    for probe, result in zip(probes, results, strict=True):
        hits = set(decider.hits(result))
        scores = world.scores(probe)
        decisive = [rid for rid, s in scores.items() if abs(s - 0.35) >= margin]
        assert len(decisive) > 1000
        assert {rid for rid in decisive if scores[rid] >= 0.35} == {rid for rid in decisive if rid in hits}
    # The same probe twice in a batch: its own masks each time, never shared.
    first, again = (masked_values(world.state.ctx, world.secret_key, results[i]) for i in (0, 3))
    assert all(not np.allclose(a, b) for a, b in zip(first, again, strict=True))
