"""The float64 canonical embedding (pprm.crypto.embedding) against SEAL's encoder and exact arithmetic."""

from __future__ import annotations

import numpy as np
import pytest
import tenseal.sealapi as seal

from pprm.crypto import params
from pprm.crypto.context import CkksContext
from pprm.crypto.embedding import SlotTransform, slot_transform
from pprm.errors import CiphertextError
from tests.helpers import INSECURE_SEALED_COMPLEX

PRODUCTION = "pprm-sealed-n8192-complex-v1"


@pytest.fixture(scope="module", params=[INSECURE_SEALED_COMPLEX, PRODUCTION])
def ctx(request: pytest.FixtureRequest) -> CkksContext:
    return CkksContext(params.get(request.param, allow_insecure=True))


def _plaintext(ctx: CkksContext, coeffs: np.ndarray, scale_bits: int) -> seal.Plaintext:
    res = (np.asarray(coeffs, dtype=np.int64) % np.int64(ctx.moduli[0])).astype(np.uint64)
    return ctx.plaintext_from_residues(ctx.to_ntt(res[None, None, :])[0], float(2**scale_bits))


def _negacyclic(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact product mod X**N + 1 of two int64 polynomials (products and sums below 2**63)."""
    n = a.size
    full = np.convolve(a, b)
    out = full[:n].copy()
    out[: n - 1] -= full[n:]
    return out


def test_slot_order_and_conjugation_match_seals_decoder(ctx: CkksContext) -> None:
    t = slot_transform(ctx.n)
    rng = np.random.default_rng(1)
    m = rng.integers(-1000, 1000, ctx.n)
    seal_slots = ctx.decode_complex(_plaintext(ctx, m, 0))
    ours = t.to_slots(t.spectrum(m.astype(np.float64)))
    assert np.abs(ours - seal_slots).max() < 1e-6
    # Both kinds of slot occur: t = 3**j is 1 or 3 mod 4 in turn.
    assert t.conjugated.any() and (~t.conjugated).any()
    assert np.allclose(t.from_slots(t.to_slots(t.spectrum(m.astype(np.float64)))), t.spectrum(m.astype(np.float64)))


def test_spectrum_round_trips_and_is_a_ring_homomorphism(ctx: CkksContext) -> None:
    t = slot_transform(ctx.n)
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3, ctx.n))
    assert np.abs(t.coefficients(t.spectrum(x)) - x).max() < 1e-9
    # The decider's product: a centred 36-bit polynomial times a ternary key,
    # exact to far below the one output unit its budget allows (_FFT_SLACK).
    a = rng.integers(-(1 << 35), 1 << 35, ctx.n)
    s = rng.integers(-1, 2, ctx.n)
    exact = _negacyclic(a, s)
    approx = t.coefficients(t.spectrum(a.astype(np.float64)) * t.spectrum(s.astype(np.float64)))
    assert np.abs(approx - exact).max() < 0.01


def test_encode_real_gives_exactly_real_slots_that_seal_reproduces(ctx: CkksContext) -> None:
    t = slot_transform(ctx.n)
    rng = np.random.default_rng(3)
    h = ctx.n // 2
    for _ in range(10):
        ra, rb = np.exp2(rng.random(h) * 8), np.exp2(rng.random(h) * 8)
        exact = t.encode_real(np.stack([ra + rb, ra - rb]), 9)
        assert exact.dtype == np.int64
        # m_{N-k} = -m_k and m_{N/2} = 0: real in every slot, exactly.
        assert np.array_equal(exact[:, ctx.n // 2 + 1:], -exact[:, ctx.n // 2 - 1:0:-1])
        assert not exact[:, ctx.n // 2].any()
        for poly, want in zip(exact, (ra + rb, ra - rb), strict=True):
            mine = ctx.decode_complex(_plaintext(ctx, poly, 9))
            assert np.abs(mine.imag).max() < 1e-9
            # The encoding error is real and small (std sqrt(N/12) / 2**9).
            assert np.abs(mine.real - want).max() < 8 * np.sqrt(ctx.n / 12) / 2**9
            # Handed these polynomials' own slot values, SEAL's encoder rounds
            # back to the very same integers (what the matcher relies on).
            values = t.to_slots(t.spectrum(poly.astype(np.float64))).real / 2**9
            theirs = ctx.decode_complex(ctx.encode(values, 9))
            assert np.abs(theirs - mine).max() < 1e-9


def test_encode_complex_matches_seal(ctx: CkksContext) -> None:
    t = slot_transform(ctx.n)
    rng = np.random.default_rng(4)
    v = rng.normal(size=ctx.n // 2) + 1j * rng.normal(size=ctx.n // 2)
    got = ctx.decode_complex(_plaintext(ctx, t.encode_complex(v, 40), 40))
    assert np.abs(got - v).max() < 1e-9
    with pytest.raises(CiphertextError, match="2\\*\\*62"):
        t.encode_complex(v, 70)


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(CiphertextError):
        SlotTransform(1000)
    t = slot_transform(1024)
    with pytest.raises(CiphertextError, match="slot values"):
        t.encode_real(np.ones(10), 9)
    with pytest.raises(CiphertextError, match="finite"):
        t.encode_real(np.full(512, np.nan), 9)
    with pytest.raises(CiphertextError, match="slot values"):
        t.encode_complex(np.array(1.0), 9)
