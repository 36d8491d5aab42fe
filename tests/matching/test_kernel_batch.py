"""The batched multiply-accumulate is exact, and a batch decides like single queries.

:func:`pprm.matching.kernel_batch.multiply_accumulate_many` must give, for
every probe of the batch, the words the single-probe kernel and SEAL's
``multiply_plain`` + ``add`` chain give: compared word for word, on random
blocks, at the exactness bound's edge (every residue q - 1, weight rows
summing to exactly 2**23) and against SEAL. The native kernel
(:func:`pprm.matching.kernel_native.multiply_accumulate_many`) must give the
BLAS path's words exactly, for batch sizes around its 6-probe micro-kernel,
row counts around its 64-row panels and column counts around its
128-column strips (columns: components x primes x coefficients), and on the
real block shape. Then
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
from pprm.matching import kernel, kernel_batch, kernel_native, kernel_numpy
from pprm.matching.kernel_batch import MAX_ROW_L1, multiply_accumulate_many
from pprm.matching.kernel_selfcheck import mac_agrees_with_seal
from pprm.matching.sealed import quantise_probe
from pprm.synthetic import unit_vectors
from tests.helpers import INSECURE_SEALED, INSECURE_SEALED_COMPLEX, ScoredWorld
from tests.matching.masked_support import masked_values

Q60 = (1152921504606748673,)  # a 60-bit NTT prime (SEAL's CoeffModulus.Create(8192, [60]))
Q2 = (1152921504606830593, 1152921504606748673)  # two primes: row groups reduced by different moduli

native_only = pytest.mark.skipif(not kernel_native.available(), reason="native kernel pprm._native_kernel not built")


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
    lambda w: np.where(w == w.min(), np.iinfo(np.int64).min, w),  # -2**63, whose np.abs wraps
    lambda w: np.where(w == w.max(), 1 << 62, w),  # one weight that would overflow a row sum
    lambda w: np.abs(w).astype(np.uint64) + np.uint64(1 << 63),  # uint64 weights that wrap in int64
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


def _random_case(seed: int, d: int, n: int, batch: int, moduli: tuple[int, ...] = Q60) -> tuple[np.ndarray, np.ndarray]:
    """A block of residues below their primes and ``batch`` rows of unit-probe weights."""
    rng = np.random.default_rng(seed)
    q = np.asarray(moduli, dtype=np.uint64).reshape(1, 1, len(moduli), 1)
    block = rng.integers(0, 1 << 62, size=(d, 2, len(moduli), n), dtype=np.uint64) % q
    w = np.stack([quantise_probe(p, 15) for p in unit_vectors(batch, d, rng)])
    return block, w


def _single(block: np.ndarray, w: np.ndarray, moduli: tuple[int, ...]) -> np.ndarray:
    """Every row through the single-probe kernel of the active backend (weights within its 2**16)."""
    return np.stack([kernel.multiply_accumulate(block, row, moduli) for row in w])


@native_only
@pytest.mark.parametrize("batch", [1, 2, 7, 16, 33])
def test_native_equals_blas_and_the_single_probe_kernel(batch: int) -> None:
    # d = 130 rows and 2 x 2 x 40 = 160 columns: neither a whole number of
    # the native kernel's 64-row panels nor of its 128-column strips.
    block, w = _random_case(batch, 130, 40, batch, Q2)
    got = kernel_native.multiply_accumulate_many(block, w, Q2)
    assert got.shape == (batch, 2, 2, 40)
    assert np.array_equal(got, kernel_batch._blas_many(block, w, Q2))
    assert np.array_equal(got, _single(block, w, Q2))


@native_only
@pytest.mark.parametrize(("d", "n"), [(1, 8), (63, 64), (64, 40), (65, 8), (128, 65), (129, 40), (513, 33)])
def test_native_at_panel_and_strip_edges(d: int, n: int) -> None:
    block, w = _random_case(d + n, d, n, 7)
    got = kernel_native.multiply_accumulate_many(block, w, Q60)
    assert np.array_equal(got, kernel_batch._blas_many(block, w, Q60))
    assert np.array_equal(got, _single(block, w, Q60))


@native_only
def test_native_at_the_bound_edge() -> None:
    # Every residue q - 1; rows whose absolute sums are exactly 2**23: all
    # positive, all negative, alternating, and one weight carrying it all.
    q = Q60[0]
    d = 512
    block = np.full((d, 2, 1, 40), q - 1, dtype=np.uint64)
    per = MAX_ROW_L1 // d
    one = np.zeros(d, dtype=np.int64)
    one[7] = -MAX_ROW_L1
    rows = [np.full(d, per), np.full(d, -per), np.where(np.arange(d) % 2 == 0, per, -per), one]
    w = np.stack(rows).astype(np.int64)
    assert (np.abs(w).sum(axis=1) == MAX_ROW_L1).all()
    got = kernel_native.multiply_accumulate_many(block, w, Q60)
    assert np.array_equal(got, kernel_batch._blas_many(block, w, Q60))
    for b in range(len(rows)):
        assert np.array_equal(got[b], _exact(block, w[b], q))


@native_only
def test_native_equals_blas_on_the_real_shape() -> None:
    # One block as pprm stores it: 512 ciphertexts, 2 components, 1 prime, N = 8192.
    block, w = _random_case(8, 512, 8192, 5)
    got = kernel_native.multiply_accumulate_many(block, w, Q60)
    assert np.array_equal(got, kernel_batch._blas_many(block, w, Q60))
    assert np.array_equal(got[3], kernel.multiply_accumulate(block, w[3], Q60))


@native_only
def test_native_thread_counts_agree() -> None:
    block, w = _random_case(9, 200, 3000, 9, Q2)
    one = kernel_native.multiply_accumulate_many(block, w, Q2, threads=1)
    for threads in (0, 2, 3, 64):
        assert np.array_equal(kernel_native.multiply_accumulate_many(block, w, Q2, threads=threads), one)
    with pytest.raises(BackendError):
        kernel_native.multiply_accumulate_many(block, w, Q2, threads=-1)


@native_only
def test_native_reads_any_layout() -> None:
    # A non-contiguous block (copied first) and transposed weights (any integer dtype).
    block, w = _random_case(10, 64, 16, 3)
    wide = np.zeros((64, 2, 1, 32), dtype=np.uint64)
    wide[..., ::2] = block
    want = kernel_batch._blas_many(block, w, Q60)
    assert np.array_equal(kernel_native.multiply_accumulate_many(wide[..., ::2], w, Q60), want)
    transposed = np.asfortranarray(w.astype(np.int32))
    assert np.array_equal(kernel_native.multiply_accumulate_many(block, transposed, Q60), want)


@pytest.mark.parametrize("path", ["numpy", pytest.param("native", marks=native_only)])
def test_a_word_of_2_to_the_60_is_refused(path: str) -> None:
    # Its high limb would not fit 30 bits and the sums would stop being exact.
    block, w = _random_case(11, 20, 8, 2)
    block[13, 1, 0, 5] = np.uint64(1 << 60)
    with pytest.raises(BackendError, match="2\\*\\*60"):
        if path == "native":
            kernel_native.multiply_accumulate_many(block, w, Q60)
        else:
            kernel_batch._blas_many(block, w, Q60)


@native_only
@pytest.mark.parametrize("bad", [
    lambda w: w * 2**10,  # a row far above the exactness bound
    lambda w: np.where(w == w.min(), np.iinfo(np.int64).min, w),  # -2**63, whose np.abs wraps
    lambda w: np.where(w == w.max(), 1 << 62, w),  # one weight that would overflow a sum
    lambda w: w[:, :-1],  # one weight short
    lambda w: w.astype(np.float64),  # not integers
])
def test_native_refusals(bad: Callable[[np.ndarray], np.ndarray]) -> None:
    block, w = _random_case(12, 512, 8, 2)
    with pytest.raises(BackendError):
        kernel_native.multiply_accumulate_many(block, bad(w), Q60)
    with pytest.raises(BackendError):
        kernel_native.multiply_accumulate_many(block, w, (1 << 60,))


@native_only
def test_native_empty_batch_and_empty_block() -> None:
    block = np.zeros((3, 2, 1, 8), dtype=np.uint64)
    assert kernel_native.multiply_accumulate_many(block, np.zeros((0, 3), np.int64), Q60).shape == (0, 2, 1, 8)
    empty = np.zeros((0, 2, 1, 8), dtype=np.uint64)
    got = kernel_native.multiply_accumulate_many(empty, np.zeros((2, 0), np.int64), Q60)
    assert got.shape == (2, 2, 1, 8)
    assert not got.any()


@pytest.mark.parametrize("chosen", ["native", "numpy"])
def test_the_backend_chooses_the_path(monkeypatch: pytest.MonkeyPatch, chosen: str) -> None:
    calls: list[int] = []

    def spy(block: np.ndarray, w: np.ndarray, moduli: tuple[int, ...], out: np.ndarray | None = None) -> np.ndarray:
        calls.append(w.shape[0])
        return kernel_batch._blas_many(block, w, moduli)

    monkeypatch.setattr(kernel, "backend", lambda: chosen)
    monkeypatch.setattr(kernel_native, "multiply_accumulate_many", spy)
    block, w = _random_case(13, 16, 8, 3)
    assert np.array_equal(multiply_accumulate_many(block, w, Q60), kernel_batch._blas_many(block, w, Q60))
    assert calls == ([3] if chosen == "native" else [])


def test_the_self_check_covers_the_batched_kernel() -> None:
    from pprm.matching import kernel_selfcheck

    assert kernel_selfcheck.native_many_matches_numpy() == kernel_native.available()


@pytest.mark.parametrize("nb", [1, 3, 16])
def test_a_given_result_buffer_is_filled_and_returned(nb: int) -> None:
    block, w = _random_case(21, 64, 16, nb)
    want = kernel_batch._blas_many(block, w, Q60)
    buf = np.full(want.shape, np.uint64(2**63 + 5))  # stale words must all be overwritten
    got = multiply_accumulate_many(block, w, Q60, out=buf)
    assert got is buf and np.array_equal(buf, want)
    again = multiply_accumulate_many(block, w[::-1].copy(), Q60, out=buf)  # reused for another batch
    assert again is buf and np.array_equal(buf, kernel_batch._blas_many(block, w[::-1].copy(), Q60))


def test_a_result_buffer_that_does_not_fit_is_refused() -> None:
    block, w = _random_case(22, 16, 8, 2)
    shape = (2, *block.shape[1:])
    bad = [np.empty((3, *block.shape[1:]), dtype=np.uint64), np.empty(shape, dtype=np.int64),
           np.empty((shape[0] * 2, *shape[1:]), dtype=np.uint64)[::2]]
    ro = np.empty(shape, dtype=np.uint64)
    ro.flags.writeable = False
    for out in [*bad, ro]:
        with pytest.raises(BackendError, match="out must be"):
            multiply_accumulate_many(block, w, Q60, out=out)
    overlapping = np.empty((2 + block.shape[0], *block.shape[1:]), dtype=np.uint64)
    overlapping[2:] = block
    with pytest.raises(BackendError, match="overlap"):
        multiply_accumulate_many(overlapping[2:], w, Q60, out=overlapping[1:3])
    # Adjacent is not overlapping.
    got = multiply_accumulate_many(overlapping[2:], w, Q60, out=overlapping[:2])
    assert np.array_equal(got, kernel_batch._blas_many(block, w, Q60))


@native_only
@pytest.mark.parametrize("nb", [1, 6])  # the streaming path, then the panel path
@pytest.mark.parametrize("w", [1, -1, 3, -7, 2**23, -(2**23), 12345, -54321])
def test_native_reduction_at_half_quotients(w: int, nb: int) -> None:
    # d = 1: each output is w * x mod q. Words are chosen so that w * x / q
    # lands within a few units of k + 1/2, the ties of the vector
    # reduction's rounded quotient, for quotients across the whole range.
    q = Q60[0]
    words: set[int] = set()
    for k in [0, 1, 2, 1000, 2**20, abs(w) - 1]:
        centre = ((2 * k + 1) * q) // (2 * abs(w))
        words.update(x for x in range(centre - 3, centre + 4) if 0 <= x < q)
    words.update({0, 1, q - 1, q // 2, q // 2 + 1})
    xs = sorted(words)
    block = np.zeros((1, 2, 1, len(xs) + (-len(xs)) % 8 + 8), dtype=np.uint64)
    block[0, 0, 0, :len(xs)] = xs
    block[0, 1, 0, :len(xs)] = xs[::-1]
    weights = np.full((nb, 1), w, dtype=np.int64)
    got = kernel_native.multiply_accumulate_many(block, weights, Q60)
    want = _exact(block, weights[0], q)
    for row in got:
        assert np.array_equal(row, want)
