"""The sealed masks drawn in C (native/pprm_maskdraw.c) and a group masked in one call (pprm_mask_group.c).

The C drawer turns the same random words into the same masks as the numpy
path (:func:`pprm.matching.mask.masks_from_uniform`, then
:meth:`~pprm.crypto.embedding.SlotTransform.encode_real` /
``encode_complex``). Its FFT rounds differently in the last bits from numpy's,
so a rounded coefficient may differ by one where the exact value sat within
float error of a half; the tests bound that (at most one, and rarely) and
check exactly what the masking's security rests on: the mask polynomials are
exactly antisymmetric (real in every slot), the noise is reduced, a draw
over the cap is refused. The group call must give, word for word, what the
single-block steps give on the same words.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pprm.crypto import params
from pprm.crypto.context import CkksContext
from pprm.crypto.csprng import csprng_bytes
from pprm.crypto.embedding import slot_transform
from pprm.crypto.masked_codec import encode_masked, masked_layout
from pprm.errors import BackendError
from pprm.matching import kernel_native
from pprm.matching.mask import masks_from_uniform, uniform_from_words
from pprm.matching.mask_draw_native import NativeMaskDrawer
from pprm.matching.mask_kernel import NativeMasker
from tests.helpers import INSECURE_SEALED_COMPLEX
from tests.matching.test_mask_kernel import _world

pytestmark = pytest.mark.skipif(not kernel_native.available(), reason="native extension not built")

PRODUCTION = "pprm-sealed-n8192-complex-v1"
# Share of coefficients that may differ by one between the two FFTs. The
# mask polynomials are small integers (scale 2**9), where float error almost
# never reaches a tie; the noise polynomial's coefficients reach 2**44 (scale
# 2**48), where the FFTs' last-bit differences are a few units in 2**8 of a
# coefficient and flip a rounding now and then (measured: 118 of 491,520
# coefficients at N = 8192, 4 of 1,024 at N = 1024). Either rounding is a
# valid encoding: the error budget counts half a unit per coefficient.
MAX_DIFFERING_MASK = 1e-3
MAX_DIFFERING_NOISE = 2e-2


def _drawer(name: str) -> tuple[params.ParameterSet, int, NativeMaskDrawer]:
    ps = params.get(name, allow_insecure=True)
    q0 = CkksContext(ps).moduli[0]
    return ps, q0, NativeMaskDrawer(ps, q0, masked_layout(ps, q0).rho_cap)


def _reference(ps: params.ParameterSet, q0: int, words: np.ndarray,
               occupied: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The numpy path's ``(exact, noise)`` from the same words."""
    h = ps.slots
    u = uniform_from_words(words)
    ma = masks_from_uniform(u[:h], u[h:2 * h], occupied[:h], ps)
    mb = masks_from_uniform(u[2 * h:3 * h], u[3 * h:], occupied[h:], ps)
    t = slot_transform(ps.poly_modulus_degree)
    exact = t.encode_real(np.stack([ma.r + mb.r, ma.r - mb.r]), ps.mask_scale_bits)
    noise = t.encode_complex(ma.e + 1j * mb.e, ps.result_scale_bits) % np.int64(q0)
    return exact, noise.astype(np.uint64)


@pytest.fixture(scope="module", params=[INSECURE_SEALED_COMPLEX, PRODUCTION])
def drawer(request: pytest.FixtureRequest) -> tuple[params.ParameterSet, int, NativeMaskDrawer]:
    return _drawer(request.param)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), free=st.floats(0.0, 1.0))
def test_the_c_masks_are_the_numpy_masks(drawer: tuple[params.ParameterSet, int, NativeMaskDrawer], seed: int,
                                          free: float) -> None:
    ps, q0, d = drawer
    n, h = ps.poly_modulus_degree, ps.slots
    rng = np.random.default_rng(seed)
    words = rng.integers(0, 2**64, size=4 * h, dtype=np.uint64)
    occupied = rng.random(n) >= free
    got = d.from_words(words, occupied)
    assert got is not None
    exact, noise = got
    want_exact, want_noise = _reference(ps, q0, words, occupied)
    diff = np.abs(exact - want_exact)
    nd = np.abs(noise.astype(np.int64) - want_noise.astype(np.int64))
    nd = np.minimum(nd, q0 - nd)
    assert int(diff.max()) <= 1 and int(nd.max()) <= 1
    assert np.count_nonzero(diff) <= MAX_DIFFERING_MASK * 2 * n
    assert np.count_nonzero(nd) <= MAX_DIFFERING_NOISE * n
    # What the separation of the two halves rests on: exactly real slots.
    assert (exact[:, h] == 0).all()
    assert np.array_equal(exact[:, h + 1:], -exact[:, h - 1:0:-1])
    assert int(noise.max()) < q0


def test_a_free_block_gets_r_one_and_e_minus_one(drawer: tuple[params.ParameterSet, int, NativeMaskDrawer]) -> None:
    ps, q0, d = drawer
    words = np.random.default_rng(1).integers(0, 2**64, size=4 * ps.slots, dtype=np.uint64)
    got = d.from_words(words, np.zeros(ps.poly_modulus_degree, dtype=bool))
    assert got is not None
    exact, noise = got
    t = slot_transform(ps.poly_modulus_degree)
    # a = r_A + r_B = 2 in every slot, b = r_A - r_B = 0; e = -1 - i.
    assert np.array_equal(exact, t.encode_real(np.stack([np.full(ps.slots, 2.0), np.zeros(ps.slots)]),
                                               ps.mask_scale_bits))
    want = t.encode_complex(np.full(ps.slots, -1.0 - 1.0j), ps.result_scale_bits) % np.int64(q0)
    assert np.array_equal(noise, want.astype(np.uint64))


def test_a_draw_over_the_cap_is_refused(drawer: tuple[params.ParameterSet, int, NativeMaskDrawer]) -> None:
    ps, _q0, d = drawer
    # Every uniform just below 1: r = 2**8 everywhere, rho = 362 on average.
    words = np.full(4 * ps.slots, np.uint64(2**64 - 1))
    assert d.from_words(words, np.ones(ps.poly_modulus_degree, dtype=bool)) is None


def test_malformed_inputs_are_refused(drawer: tuple[params.ParameterSet, int, NativeMaskDrawer]) -> None:
    ps, _q0, d = drawer
    with pytest.raises(BackendError):
        d.from_words(np.zeros(4 * ps.slots - 1, dtype=np.uint64), np.ones(ps.poly_modulus_degree, dtype=bool))
    with pytest.raises(BackendError):
        d.from_words(np.zeros(4 * ps.slots, dtype=np.uint64), np.ones(ps.poly_modulus_degree + 1, dtype=bool))


def test_draws_are_fresh() -> None:
    a, b = csprng_bytes(4096), csprng_bytes(4096)
    assert len(a) == len(b) == 4096 and a != b
    _ps, _q0, d = _drawer(INSECURE_SEALED_COMPLEX)
    occupied = np.ones(d.n, dtype=bool)
    assert not np.array_equal(d.draw(occupied)[0], d.draw(occupied)[0])


@pytest.mark.parametrize("name", [INSECURE_SEALED_COMPLEX, PRODUCTION])
def test_a_group_masks_as_the_single_block_steps_do(name: str) -> None:
    ctx, gk, _sk = _world(name)
    ps = ctx.params
    n, h = ctx.n, ps.slots
    q0 = ctx.moduli[0]
    lay = masked_layout(ps, q0)
    d = NativeMaskDrawer(ps, q0, lay.rho_cap)
    m = NativeMasker(ctx, gk)
    rng = np.random.default_rng(7)
    g = 5
    cts = rng.integers(0, q0, size=(g, 2, n), dtype=np.uint64)
    tau = rng.integers(0, q0, size=n, dtype=np.uint64)
    words = rng.integers(0, 2**64, size=(g, 4 * h), dtype=np.uint64)
    words[3] = np.uint64(2**64 - 1)  # this block's masks are over the cap
    occupied = rng.random((g, n)) < 0.9
    occupied[1] = False
    packed, redraw = m.mask_group(cts, tau, words, occupied, d, lay)
    assert redraw.tolist() == [False, False, False, True, False]
    for i in range(g):
        if redraw[i]:
            continue
        got = d.from_words(words[i], occupied[i])
        assert got is not None
        exact, noise = got
        single = encode_masked(lay, m.mask(cts[i], tau, exact[0], exact[1], noise))
        assert packed[i].astype("<u8").tobytes() == single


def test_a_group_refuses_unreduced_scores() -> None:
    ctx, gk, _sk = _world(INSECURE_SEALED_COMPLEX)
    ps = ctx.params
    lay = masked_layout(ps, ctx.moduli[0])
    d = NativeMaskDrawer(ps, ctx.moduli[0], lay.rho_cap)
    cts = np.full((2, 2, ctx.n), np.uint64(ctx.moduli[0]))
    with pytest.raises(BackendError):
        NativeMasker(ctx, gk).mask_group(cts, np.zeros(ctx.n, np.uint64), d.fresh_words(2),
                                         np.ones((2, ctx.n), dtype=bool), d, lay)
