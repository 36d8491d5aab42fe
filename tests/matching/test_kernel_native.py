"""The optional native multiply-accumulate kernel against the numpy path and a big-int reference.

Skipped when the extension is not built, unless ``PPRM_REQUIRE_NATIVE=1``
(then every test runs and a missing extension fails them).
"""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pprm.errors import BackendError
from pprm.matching import kernel, kernel_native, kernel_numpy, kernel_selfcheck

REQUIRED = os.environ.get("PPRM_REQUIRE_NATIVE") == "1"
if not kernel_native.available() and not REQUIRED:
    pytest.skip(
        "native kernel pprm._native_kernel is not built (install with a C compiler: pip install -e .)",
        allow_module_level=True,
    )

Q0 = 1152921504606830593  # the production 60-bit prime
Q1 = 1152921504606748673
QMAX = (1 << 60) - 1  # largest modulus the contract allows (need not be prime)
W = 1 << 16


def bigint_mac(block: np.ndarray, weights: np.ndarray, moduli: tuple[int, ...]) -> np.ndarray:
    """Exact reference in Python integers: sum_k w_k * x_k, then mod q_j."""
    d, size, nprimes, n = block.shape
    total = (weights.astype(object).reshape(d, 1, 1, 1) * block.astype(object)).sum(axis=0)
    if d == 0:
        total = np.zeros((size, nprimes, n), dtype=object)
    out = np.empty((size, nprimes, n), dtype=np.uint64)
    for j, q in enumerate(moduli):
        out[:, j, :] = np.array([int(v) % q for v in total[:, j, :].ravel()], dtype=object).reshape(size, n)
    return out


def random_case(
    rng: np.random.Generator, d: int, size: int, moduli: tuple[int, ...], n: int
) -> tuple[np.ndarray, np.ndarray]:
    q = np.asarray(moduli, dtype=np.uint64).reshape(1, 1, len(moduli), 1)
    block = rng.integers(0, 1 << 63, size=(d, size, len(moduli), n), dtype=np.uint64) % q
    weights = rng.integers(-W, W + 1, size=d, dtype=np.int64)
    return block, weights


def test_extension_loads_and_self_checks() -> None:
    assert kernel_native.available()
    assert kernel_selfcheck.native_matches_numpy()
    assert kernel_selfcheck.native_matches_numpy(seed=7)


@settings(max_examples=60, deadline=None)
@given(
    d=st.integers(1, 45),
    size=st.integers(1, 3),
    moduli=st.lists(st.integers(2, QMAX), min_size=1, max_size=3).map(tuple),
    n=st.integers(1, 70),
    threads=st.sampled_from([1, 2, 3]),
    seed=st.integers(0, 2**32 - 1),
)
def test_random_inputs_match_numpy_and_bigint(
    d: int, size: int, moduli: tuple[int, ...], n: int, threads: int, seed: int
) -> None:
    block, weights = random_case(np.random.default_rng(seed), d, size, moduli, n)
    got = kernel_native.multiply_accumulate(block, weights, moduli, threads=threads)
    assert got.dtype == np.uint64 and got.shape == (size, len(moduli), n)
    np.testing.assert_array_equal(got, kernel_numpy.multiply_accumulate(block, weights, moduli))
    np.testing.assert_array_equal(got, bigint_mac(block, weights, moduli))


@pytest.mark.parametrize("threads", [1, 2, 3, 0, 64])
def test_tiles_cross_rows_with_distinct_moduli(threads: int) -> None:
    # size*L*N = 2*3*300 = 1800 coefficients: 4 tiles of 512, each spanning two or three
    # rows, so a wrong modulus per row or a wrong tile split would show.
    moduli = (Q0, Q1, 998244353)
    block, weights = random_case(np.random.default_rng(3), 131, 2, moduli, 300)
    got = kernel_native.multiply_accumulate(block, weights, moduli, threads=threads)
    np.testing.assert_array_equal(got, bigint_mac(block, weights, moduli))
    np.testing.assert_array_equal(got, kernel.multiply_accumulate(block, weights, moduli))


@pytest.fixture(scope="module")
def threaded_case() -> tuple[np.ndarray, np.ndarray, tuple[int, ...], np.ndarray]:
    # The kernel starts a thread per 2**19 input words at most, so this case must be large
    # enough for three: 100 * 2 * 3 * 2731 = 1.6M words, 17 tiles, the last one of 2 words.
    moduli = (Q0, Q1, 998244353)
    block, weights = random_case(np.random.default_rng(21), 100, 2, moduli, 2731)
    return block, weights, moduli, bigint_mac(block, weights, moduli)


@pytest.mark.parametrize("threads", [1, 2, 3, 0, 64])
def test_threads_split_the_work_exactly(
    threaded_case: tuple[np.ndarray, np.ndarray, tuple[int, ...], np.ndarray], threads: int
) -> None:
    block, weights, moduli, expected = threaded_case
    got = kernel_native.multiply_accumulate(block, weights, moduli, threads=threads)
    np.testing.assert_array_equal(got, expected)
    # Through the C entry point with a poisoned output (2**64-1 is never a residue), so that a
    # coefficient no thread writes cannot pass by reusing a freed buffer holding the right value.
    ffi, lib = kernel_native._ffi, kernel_native._lib
    out = np.full(expected.shape, np.iinfo(np.uint64).max, dtype=np.uint64)
    row_moduli = np.tile(np.asarray(moduli, dtype=np.uint64), block.shape[1])
    rc = lib.pprm_mac_sealed(
        ffi.from_buffer("uint64_t[]", block),
        ffi.from_buffer("int64_t[]", weights),
        ffi.from_buffer("uint64_t[]", row_moduli),
        ffi.from_buffer("uint64_t[]", out),
        block.shape[0],
        block.shape[1] * block.shape[2],
        block.shape[3],
        threads,
    )
    assert rc == lib.PPRM_OK
    np.testing.assert_array_equal(out, expected)


def test_threaded_reference_agrees_with_numpy(
    threaded_case: tuple[np.ndarray, np.ndarray, tuple[int, ...], np.ndarray],
) -> None:
    block, weights, moduli, expected = threaded_case
    np.testing.assert_array_equal(kernel_numpy.multiply_accumulate(block, weights, moduli), expected)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_production_shape_matches_numpy(threads: int) -> None:
    # One n8192 block's geometry (size 2, one prime, N = 8192); d = 64 (1M words) is
    # shorter than production but enough for two threads.
    block, weights = random_case(np.random.default_rng(11), 64, 2, (Q0,), 8192)
    got = kernel_native.multiply_accumulate(block, weights, (Q0,), threads=threads)
    np.testing.assert_array_equal(got, kernel_numpy.multiply_accumulate(block, weights, (Q0,)))


@pytest.mark.parametrize("sign", [1, -1, 0])
def test_extremes_at_maximum_dimension(sign: int) -> None:
    # d = 2**16 rows of x = q-1 with |w| = 2**16: |sum| ~ 2**92, the largest the contract allows,
    # and more rows than one 64-bit partial chunk holds. sign=0 alternates +w and -w.
    q = QMAX
    d, n = 1 << 16, 5
    block = np.full((d, 1, 1, n), q - 1, dtype=np.uint64)
    if sign:
        weights = np.full(d, sign * W, dtype=np.int64)
    else:
        weights = np.where(np.arange(d) % 2 == 0, W, -W).astype(np.int64)
        weights[-1] = W  # an odd tail so that the sum is not zero
    expected = bigint_mac(block, weights, (q,))
    for threads in (1, 2):
        got = kernel_native.multiply_accumulate(block, weights, (q,), threads=threads)
        np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(got, kernel_numpy.multiply_accumulate(block, weights, (q,)))
    # Cross-check the reference itself: x = -1 mod q, so the sum is -sum(w) mod q.
    assert int(expected[0, 0, 0]) == (-int(weights.sum())) % q


def test_extremes_mixed_small() -> None:
    q = Q0
    block = np.full((3, 2, 1, 9), q - 1, dtype=np.uint64)
    block[1] = 0
    weights = np.array([W, -W, -W], dtype=np.int64)
    got = kernel_native.multiply_accumulate(block, weights, (q,), threads=2)
    np.testing.assert_array_equal(got, np.zeros((2, 1, 9), dtype=np.uint64))  # (W - W) * (q-1) = 0
    np.testing.assert_array_equal(got, kernel_numpy.multiply_accumulate(block, weights, (q,)))


def test_exact_for_any_uint64_residue() -> None:
    # The C kernel is exact for every uint64 input, not only residues below q.
    rng = np.random.default_rng(5)
    block = rng.integers(0, np.iinfo(np.uint64).max, size=(40, 2, 2, 33), dtype=np.uint64, endpoint=True)
    block[:3] = np.iinfo(np.uint64).max
    weights = rng.integers(-W, W + 1, size=40, dtype=np.int64)
    got = kernel_native.multiply_accumulate(block, weights, (Q0, 97), threads=3)
    np.testing.assert_array_equal(got, bigint_mac(block, weights, (Q0, 97)))


def test_empty_sum_and_empty_output() -> None:
    got = kernel_native.multiply_accumulate(np.zeros((0, 2, 1, 8), dtype=np.uint64), np.zeros(0, np.int64), (Q0,))
    np.testing.assert_array_equal(got, np.zeros((2, 1, 8), dtype=np.uint64))
    empty = kernel_native.multiply_accumulate(np.zeros((4, 2, 1, 0), dtype=np.uint64), np.ones(4, np.int64), (Q0,))
    assert empty.shape == (2, 1, 0)


def test_read_only_memmap_and_non_contiguous_input(tmp_path: object) -> None:
    moduli = (Q0, Q1)
    block, weights = random_case(np.random.default_rng(9), 17, 2, moduli, 600)
    path = os.path.join(str(tmp_path), "block.npy")
    np.save(path, block)
    mapped = np.load(path, mmap_mode="r")
    assert isinstance(mapped, np.memmap) and not mapped.flags.writeable
    expected = bigint_mac(block, weights, moduli)
    np.testing.assert_array_equal(kernel_native.multiply_accumulate(mapped, weights, moduli, threads=2), expected)
    frozen = block.copy()
    frozen.flags.writeable = False
    np.testing.assert_array_equal(kernel_native.multiply_accumulate(frozen, weights, moduli), expected)
    strided = block[:, :, :, ::3]
    np.testing.assert_array_equal(
        kernel_native.multiply_accumulate(strided, weights, moduli, threads=3), bigint_mac(strided, weights, moduli)
    )


def test_env_thread_count(monkeypatch: pytest.MonkeyPatch) -> None:
    block, weights = random_case(np.random.default_rng(4), 10, 2, (Q0,), 1000)
    expected = kernel_numpy.multiply_accumulate(block, weights, (Q0,))
    for value, threads in (("3", 3), ("0", 0), ("", 0)):
        monkeypatch.setenv("PPRM_THREADS", value)
        assert kernel_native.default_threads() == threads
        np.testing.assert_array_equal(kernel_native.multiply_accumulate(block, weights, (Q0,)), expected)
    for bad in ("two", "-1"):
        monkeypatch.setenv("PPRM_THREADS", bad)
        with pytest.raises(BackendError):
            kernel_native.multiply_accumulate(block, weights, (Q0,))


def test_concurrent_python_threads_agree() -> None:
    # Calls run with the GIL released; concurrent callers must not share state.
    moduli = (Q0, Q1)
    cases = [random_case(np.random.default_rng(s), 33, 2, moduli, 1500) for s in range(4)]
    expected = [kernel_numpy.multiply_accumulate(b, w, moduli) for b, w in cases]
    results: dict[int, list[np.ndarray]] = {}

    def work(i: int) -> None:
        results[i] = [kernel_native.multiply_accumulate(b, w, moduli, threads=2) for _ in range(3) for b, w in cases]

    workers = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    for i in range(3):
        for r, got in enumerate(results[i]):
            np.testing.assert_array_equal(got, expected[r % len(cases)])


# (name, block, weights, moduli, threads, rejected by the numpy path too)
BadCase = tuple[str, np.ndarray, object, tuple[int, ...], int | None, bool]


def _bad_inputs() -> list[BadCase]:
    ok = np.zeros((4, 2, 1, 8), dtype=np.uint64)
    w = np.ones(4, dtype=np.int64)
    big_d = (1 << 16) + 1
    return [
        ("3-d block", np.zeros((4, 2, 8), dtype=np.uint64), w, (Q0,), None, True),
        ("int64 block", ok.astype(np.int64), w, (Q0,), None, True),
        ("float block", ok.astype(np.float64), w, (Q0,), None, True),
        ("L mismatch", ok, w, (Q0, Q1), None, True),
        ("too few weights", ok, w[:3], (Q0,), None, True),
        ("2-d weights", ok, w.reshape(2, 2), (Q0,), None, True),
        ("float weights", ok, np.full(4, 1.5), (Q0,), None, True),
        ("weight 2**16+1", ok, np.array([1, 1, W + 1, 1]), (Q0,), None, True),
        ("weight -2**16-1", ok, np.array([1, 1, -W - 1, 1]), (Q0,), None, True),
        ("weight -2**63", ok, np.array([1, 1, np.iinfo(np.int64).min, 1]), (Q0,), None, True),
        ("uint64 weight 2**64-1", ok, np.array([1, 1, 2**64 - 1, 1], dtype=np.uint64), (Q0,), None, True),
        ("d > 2**16", np.zeros((big_d, 1, 1, 1), dtype=np.uint64), np.ones(big_d, np.int64), (Q0,), None, True),
        ("modulus 2**60", ok, w, (1 << 60,), None, True),
        # The native kernel also refuses what would divide by zero in C.
        ("modulus 0", ok, w, (0,), None, False),
        ("negative modulus", ok, w, (-5,), None, False),
        ("negative threads", ok, w, (Q0,), -1, False),
    ]


@pytest.mark.parametrize("case", _bad_inputs(), ids=lambda c: c[0])
def test_bad_input_raises_backend_error(case: BadCase) -> None:
    _, block, weights, moduli, threads, _numpy_too = case
    assert kernel_native.available()  # otherwise BackendError("not built") would pass this test vacuously
    with pytest.raises(BackendError):
        kernel_native.multiply_accumulate(block, weights, moduli, threads=threads)  # type: ignore[arg-type]


@pytest.mark.parametrize("case", [c for c in _bad_inputs() if c[5]], ids=lambda c: c[0])
def test_numpy_path_rejects_the_same_inputs(case: BadCase) -> None:
    # The checks mirror the numpy kernel's, which rejects the same cases, directly and through dispatch.
    _, block, weights, moduli, _threads, _numpy_too = case
    with pytest.raises(BackendError):
        kernel_numpy.multiply_accumulate(block, weights, moduli)  # type: ignore[arg-type]
    with pytest.raises(BackendError):
        kernel.multiply_accumulate(block, weights, moduli)  # type: ignore[arg-type]


def test_integer_weight_dtypes_are_accepted() -> None:
    block, weights = random_case(np.random.default_rng(8), 5, 2, (Q0,), 12)
    expected = bigint_mac(block, weights, (Q0,))
    for dtype in (np.int8, np.int16, np.int32, np.uint16, np.uint64):
        cast = np.clip(weights, np.iinfo(dtype).min, np.iinfo(dtype).max).astype(dtype)
        np.testing.assert_array_equal(
            kernel_native.multiply_accumulate(block, cast, (Q0,)), kernel.multiply_accumulate(block, cast, (Q0,))
        )
    np.testing.assert_array_equal(kernel_native.multiply_accumulate(block, weights.tolist(), (Q0,)), expected)


def test_c_entry_point_validates_its_own_arguments() -> None:
    # Defence in depth: the C function refuses what would make it inexact or divide by zero,
    # even when called without the Python wrapper's checks.
    ffi, lib = kernel_native._ffi, kernel_native._lib
    assert lib is not None
    out = np.zeros(4, dtype=np.uint64)

    def call(block: np.ndarray, weights: np.ndarray, moduli: np.ndarray) -> int:
        return int(
            lib.pprm_mac_sealed(
                ffi.from_buffer("uint64_t[]", block),
                ffi.from_buffer("int64_t[]", weights),
                ffi.from_buffer("uint64_t[]", moduli),
                ffi.from_buffer("uint64_t[]", out),
                block.shape[0],
                1,
                4,
                1,
            )
        )

    block = np.ones((3, 4), dtype=np.uint64)
    good_w, good_q = np.array([1, -W, W], dtype=np.int64), np.array([Q0], dtype=np.uint64)
    assert call(block, good_w, good_q) == lib.PPRM_OK
    np.testing.assert_array_equal(out, np.full(4, 1, dtype=np.uint64))
    assert call(block, np.array([1, W + 1, 0], dtype=np.int64), good_q) == lib.PPRM_EINVAL
    assert call(block, np.array([1, -W - 1, 0], dtype=np.int64), good_q) == lib.PPRM_EINVAL
    assert call(block, good_w, np.array([0], dtype=np.uint64)) == lib.PPRM_EINVAL
    assert call(block, good_w, np.array([1 << 60], dtype=np.uint64)) == lib.PPRM_EINVAL
    big = np.ones(((1 << 16) + 1, 4), dtype=np.uint64)
    assert call(big, np.ones((1 << 16) + 1, dtype=np.int64), good_q) == lib.PPRM_EINVAL
