"""The native encoder (native/pprm_encode.c) gives the numpy path's residues word for word.

Every test compares :class:`~pprm.matching.encode_native.NativeEncoder` with
``coefficients_to_residues(encode_coefficients(...))`` of
:mod:`pprm.crypto.encoding` on the same values. Both compute in x87 long
double from the same tables, so any differing word is a bug: a different
operation order, a lost rounding, or a wrong reduction. The cases cover the
blind profile's three scales (diagonal, probe, mask) at both ring sizes with
its primes, inputs shorter than N/2, coefficients that land exactly on a
half (np.rint rounds them to even), coefficients far above 2**64 (the
reduction's multi-word path), and random inputs drawn by Hypothesis.
"""

from __future__ import annotations

import types
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pprm.crypto import blind_params
from pprm.crypto.context import BlindContext
from pprm.crypto.encoding import coefficients_to_residues, encode_coefficients, slot_exponents
from pprm.errors import BackendError, CiphertextError, ParameterError
from pprm.matching import encode_native, kernel_native
from pprm.matching.encode_native import NativeEncoder
from tests.helpers import INSECURE_BLIND, PROD_BLIND

pytestmark = pytest.mark.skipif(not kernel_native.available(), reason="native extension not built")

SCALES = ("diagonal", "probe", "mask")  # 70, 82 and 11 bits in the v3 sets


@lru_cache(maxsize=2)
def _setup(name: str) -> tuple[blind_params.BlindParameterSet, int, tuple[int, ...]]:
    p = blind_params.get(name, allow_insecure=True)
    ctx = BlindContext(p)
    return p, ctx.n, tuple(int(q) for q in ctx.moduli)


@lru_cache(maxsize=4)
def _encoder(n: int, moduli: tuple[int, ...]) -> NativeEncoder:
    return NativeEncoder(n, moduli)


def _reference(values: np.ndarray, scale_bits: int, n: int, moduli: tuple[int, ...]) -> np.ndarray:
    return coefficients_to_residues(encode_coefficients(values, scale_bits, n), moduli)


def _assert_same(values: np.ndarray, scale_bits: int, n: int, moduli: tuple[int, ...]) -> np.ndarray:
    ours = _encoder(n, moduli).residues(values, scale_bits)
    theirs = _reference(values, scale_bits, n, moduli)
    assert ours.dtype == np.uint64 and ours.shape == theirs.shape
    assert np.array_equal(ours, theirs), f"{int((ours != theirs).sum())} words differ"
    return ours


def _random(rng: np.random.Generator, k: int, m: int, kind: str) -> np.ndarray:
    if kind == "real":
        return rng.uniform(-1.0, 1.0, size=(k, m))
    # Magnitudes up to 1, every phase.
    return rng.uniform(0.0, 1.0, size=(k, m)) * np.exp(2j * np.pi * rng.uniform(size=(k, m)))


def _ties(n: int, scale_bits: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Slot values of ``m(X) = (a + b X**(N/2)) / 2**(scale_bits + 1)`` for odd a, b.

    Both scaled coefficients are exact halves, a/2 and b/2: X**(N/2) at
    zeta**t is i**t, exactly +-i, so the values are exact and the FFT of
    these dyadic values is exact where it matters. Returns the values and the
    (a, b) pairs.
    """
    rot = np.where(slot_exponents(n) % 4 == 1, 1j, -1j)
    pairs = [(7, 5), (-7, -5), (9, -3), (1, -1), (-1, 3)]
    vals = np.stack([(a + b * rot) / 2.0 ** (scale_bits + 1) for a, b in pairs])
    return vals, pairs


@pytest.mark.parametrize("name,count", [(INSECURE_BLIND, 8), (PROD_BLIND, 2)])
@pytest.mark.parametrize("kind", ["real", "complex"])
@pytest.mark.parametrize("scale", SCALES)
def test_full_slots_match_numpy(name: str, count: int, kind: str, scale: str) -> None:
    p, n, moduli = _setup(name)
    scale_bits = getattr(p, f"{scale}_scale_bits")
    rng = np.random.default_rng([n, len(kind), scale_bits])
    _assert_same(_random(rng, count, n // 2, kind), scale_bits, n, moduli)


@pytest.mark.parametrize("name", [INSECURE_BLIND, PROD_BLIND])
@pytest.mark.parametrize("m", [0, 1, 100, -1])
def test_partial_slots_match_numpy(name: str, m: int) -> None:
    p, n, moduli = _setup(name)
    m = n // 2 - 1 if m < 0 else m
    rng = np.random.default_rng([n, m])
    _assert_same(_random(rng, 2, m, "complex"), p.diagonal_scale_bits, n, moduli)


@pytest.mark.parametrize("name", [INSECURE_BLIND, PROD_BLIND])
@pytest.mark.parametrize("scale", SCALES)
def test_exact_ties_round_to_even(name: str, scale: str) -> None:
    p, n, moduli = _setup(name)
    scale_bits = getattr(p, f"{scale}_scale_bits")
    vals, pairs = _ties(n, scale_bits)
    ours = _assert_same(vals, scale_bits, n, moduli)
    q = np.array(moduli, dtype=object)
    for row, (a, b) in zip(ours, pairs, strict=True):
        # Python's round() also rounds half to even: 7/2 -> 4, 5/2 -> 2, -3/2 -> -2.
        assert list(row[:, 0]) == list(round(a / 2) % q)
        assert list(row[:, n // 2]) == list(round(b / 2) % q)


@pytest.mark.parametrize("magnitude", [2.0**40, 2.0**60, 1e300])
def test_coefficients_far_above_2_64_match_numpy(magnitude: float) -> None:
    # Up to 2**1079 at the probe scale: the reduction shifts in many 64-bit words.
    p, n, moduli = _setup(INSECURE_BLIND)
    rng = np.random.default_rng(int(np.log2(magnitude)))
    _assert_same(magnitude * _random(rng, 3, n // 2, "complex"), p.probe_scale_bits, n, moduli)


def test_leading_axes_and_empty_batches() -> None:
    _, n, moduli = _setup(INSECURE_BLIND)
    rng = np.random.default_rng(5)
    assert _assert_same(_random(rng, 6, 40, "real").reshape(2, 3, 40), 70, n, moduli).shape == (2, 3, 3, n)
    assert _assert_same(_random(rng, 1, 40, "complex")[0], 70, n, moduli).shape == (3, n)
    assert _assert_same(np.zeros((0, 40)), 70, n, moduli).shape == (0, 3, n)


def test_encoding_into_a_given_array_gives_the_same_words() -> None:
    _, n, moduli = _setup(INSECURE_BLIND)
    values = _random(np.random.default_rng(8), 4, 60, "complex")
    want = _reference(values, 70, n, moduli)
    out = np.full((4, len(moduli), n), np.uint64(2**63), dtype=np.uint64)
    got = _encoder(n, moduli).residues(values, 70, out=out)
    assert got is out and np.array_equal(out, want)
    for bad in (np.empty((4, len(moduli), n - 1), dtype=np.uint64), np.empty((4, len(moduli), n), dtype=np.int64),
                np.empty((4, n, len(moduli)), dtype=np.uint64).transpose(0, 2, 1)):
        with pytest.raises(BackendError, match="out must be"):
            _encoder(n, moduli).residues(values, 70, out=bad)


def test_threads_give_the_sequential_words() -> None:
    # No state is shared between calls: batches encoded concurrently match one by one.
    _, n, moduli = _setup(INSECURE_BLIND)
    enc = _encoder(n, moduli)
    batches = [_random(np.random.default_rng(i), 4, n // 2, "complex") for i in range(8)]
    alone = [enc.residues(b, 70) for b in batches]
    with ThreadPoolExecutor(max_workers=4) as pool:
        together = list(pool.map(lambda b: enc.residues(b, 70), batches))
    assert all(np.array_equal(x, y) for x, y in zip(alone, together, strict=True))


_finite = st.floats(-(2.0**64), 2.0**64, allow_nan=False, allow_infinity=False)


@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_property_small_rings(data: st.DataObject) -> None:
    n = data.draw(st.sampled_from([2, 4, 64]), label="n")
    k = data.draw(st.integers(0, 3), label="k")
    m = data.draw(st.integers(0, n // 2), label="m")
    real = data.draw(arrays(np.float64, (k, m), elements=_finite), label="real")
    imag = data.draw(arrays(np.float64, (k, m), elements=_finite), label="imag")
    scale_bits = data.draw(st.integers(-8, 120), label="scale_bits")
    moduli = tuple(data.draw(st.lists(st.integers(2, 2**62 - 1), min_size=1, max_size=3), label="moduli"))
    _assert_same(real + 1j * imag, scale_bits, n, moduli)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), m=st.integers(0, 512), scale_bits=st.sampled_from([11, 70, 82, 0, 100]))
def test_property_insecure_blind_set(seed: int, m: int, scale_bits: int) -> None:
    _, n, moduli = _setup(INSECURE_BLIND)
    vals = _random(np.random.default_rng(seed), 2, m, "complex")
    _assert_same(vals, scale_bits, n, moduli)


def test_too_many_values_is_the_numpy_error() -> None:
    _, n, moduli = _setup(INSECURE_BLIND)
    vals = np.zeros((2, n // 2 + 1))
    with pytest.raises(CiphertextError) as numpy_err:
        encode_coefficients(vals, 70, n)
    with pytest.raises(CiphertextError) as native_err:
        _encoder(n, moduli).residues(vals, 70)
    assert str(native_err.value) == str(numpy_err.value)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_refused(bad: float) -> None:
    _, n, moduli = _setup(INSECURE_BLIND)
    vals = np.zeros((2, 10), dtype=np.complex128)
    vals[1, 3] = bad
    with pytest.raises(CiphertextError, match="not finite"):
        _encoder(n, moduli).residues(vals, 70)


def test_a_scale_past_long_double_is_refused() -> None:
    _, n, moduli = _setup(INSECURE_BLIND)
    with pytest.raises(CiphertextError, match="not finite"):
        _encoder(n, moduli).residues(np.ones((1, 4)), 20000)
    with pytest.raises(CiphertextError, match="not finite"):
        _encoder(n, moduli).residues(np.ones((1, 4)), 10**30)  # beyond a C int: clamped, still infinite


@pytest.mark.parametrize("values", [np.float64(0.5), np.zeros(4, dtype=np.longdouble), np.array(["x"])])
def test_values_complex128_cannot_hold_are_refused(values: np.ndarray) -> None:
    _, n, moduli = _setup(INSECURE_BLIND)
    with pytest.raises(CiphertextError, match="complex128"):
        _encoder(n, moduli).residues(values, 70)


@pytest.mark.parametrize("n,moduli", [(48, (97,)), (1, (97,)), (0, (97,)), (64, (1,)), (64, (97, 2**62))])
def test_bad_ring_or_primes_are_refused(n: int, moduli: tuple[int, ...]) -> None:
    with pytest.raises(ParameterError):
        NativeEncoder(n, moduli)


def test_an_extension_without_the_encoder_is_a_backend_error(monkeypatch: pytest.MonkeyPatch) -> None:
    ffi, _ = kernel_native.handles()
    monkeypatch.setattr(kernel_native, "handles", lambda: (ffi, types.SimpleNamespace()))
    with pytest.raises(BackendError, match="rebuild"):
        NativeEncoder(64, (97,))


def test_a_c_failure_is_a_backend_error(monkeypatch: pytest.MonkeyPatch) -> None:
    enc = NativeEncoder(64, (97,))
    _, lib = kernel_native.handles()
    fake = types.SimpleNamespace(PPRM_ENCODE_OK=lib.PPRM_ENCODE_OK, PPRM_ENCODE_ENOMEM=lib.PPRM_ENCODE_ENOMEM,
                                 PPRM_ENCODE_ERANGE=lib.PPRM_ENCODE_ERANGE,
                                 pprm_encode_residues=lambda *args: lib.PPRM_ENCODE_ENOMEM)
    monkeypatch.setattr(enc, "_lib", fake)
    with pytest.raises(BackendError, match="out of memory"):
        enc.residues(np.ones((1, 4)), 70)


def test_c_refuses_what_it_cannot_encode() -> None:
    # The wrapper never passes these; the C function still must not write out of bounds.
    ffi, lib = kernel_native.handles()
    n = 64
    enc = NativeEncoder(n, (97,))
    place, stages, twist, _ = enc._views
    vals = np.zeros((1, n // 2), dtype=np.complex128)
    out = np.zeros((1, 1, n), dtype=np.uint64)

    def call(m: int, moduli: list[int], size: int, where: object = place) -> int:
        return int(lib.pprm_encode_residues(ffi.from_buffer("double[]", vals.view(np.float64)), 1, m, 70, where,
                                            stages, twist, ffi.new("uint64_t[]", moduli), len(moduli), size,
                                            ffi.from_buffer("uint64_t[]", out)))

    assert call(n // 2, [97], n) == lib.PPRM_ENCODE_OK
    assert call(n // 2 + 1, [97], n) == lib.PPRM_ENCODE_EINVAL
    assert call(n // 2, [97], 48) == lib.PPRM_ENCODE_EINVAL
    assert call(n // 2, [1], n) == lib.PPRM_ENCODE_EINVAL
    assert call(n // 2, [2**62], n) == lib.PPRM_ENCODE_EINVAL
    bad_place = enc._place.copy()
    bad_place[1, 5] = n
    assert call(n // 2, [97], n, ffi.from_buffer("uint32_t[]", bad_place)) == lib.PPRM_ENCODE_EINVAL


def test_repr() -> None:
    assert repr(NativeEncoder(64, (97, 101))) == "NativeEncoder(n=64, primes=2)"
    assert encode_native.__all__ == ["NativeEncoder", "native_transforms"]


def test_the_blind_matchers_encodings_are_the_numpy_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    # pprm.matching.blind encodes masks, noise, tau and the fold's factors per block with the C
    # encoder and NTT on the native backend; the words must be the numpy and SEAL path's, exact-real
    # rows (the separating masks) included.
    from pprm.crypto import blind_params
    from pprm.crypto.context import BlindContext
    from pprm.matching import blind, encode_native

    ctx = BlindContext(blind_params.get("pprm-blind-n16384-complex-v3"))
    rng = np.random.default_rng(11)
    h = ctx.params.slots
    rows = [(rng.uniform(-2.0**13, 2.0**13, h), 11, True), (rng.uniform(1.0, 2.0**13, h), 11, True),
            (rng.normal(size=h) + 1j * rng.normal(size=h), 164, False), (0.4 * (1 + 1j) * np.ones(h), 153, False)]
    for primes in (3, 2):
        native = blind._encode_ntt(ctx, rows, primes)
        monkeypatch.setattr(blind, "native_transforms", lambda n, moduli: None)
        reference = blind._encode_ntt(ctx, rows, primes)
        monkeypatch.setattr(blind, "native_transforms", encode_native.native_transforms)
        assert native.shape == (4, primes, ctx.n) and np.array_equal(native, reference)
