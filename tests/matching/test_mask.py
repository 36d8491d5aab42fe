"""Per-slot masks: ranges, padding, freshness, distribution."""

from __future__ import annotations

import numpy as np
import pytest

from pprm.crypto import params
from pprm.matching.mask import csprng_uniform, draw_masks

PARAMS = [params.get(n, allow_insecure=True) for n in params.names(include_insecure=True)]


@pytest.mark.parametrize("ps", PARAMS, ids=lambda p: p.name)
def test_ranges_and_padding(ps: params.ParameterSet) -> None:
    occupied = np.random.default_rng(0).random(ps.slots) < 0.7
    m = draw_masks(occupied, ps)
    assert m.r.shape == m.e.shape == (ps.slots,)
    r, e = m.r[occupied], m.e[occupied]
    assert (r >= 1.0).all() and (r <= 2.0**ps.mask_log2_max).all()
    assert (np.abs(e) <= r * ps.decision_margin / 4).all()
    # Free slots: r = 1, e = -1, so they decrypt to about -tau - 1: a certain non-hit.
    assert (m.r[~occupied] == 1.0).all() and (m.e[~occupied] == -1.0).all()


def test_masked_sign_is_exact_beyond_the_margin() -> None:
    # In exact arithmetic, |e| <= r*margin/4 cannot flip r*(s - tau) when |s - tau| >= margin.
    ps = params.get(params.DEFAULT_PARAMS)
    occupied = np.ones(ps.slots, dtype=bool)
    m = draw_masks(occupied, ps)
    for delta in (ps.decision_margin, -ps.decision_margin, 0.5, -1.4):
        assert (np.sign(m.r * delta + m.e) == np.sign(delta)).all()


def test_draws_are_fresh() -> None:
    ps = params.get(params.DEFAULT_PARAMS)
    occupied = np.ones(ps.slots, dtype=bool)
    a, b = draw_masks(occupied, ps), draw_masks(occupied, ps)
    # No r repeats within a block or across two draws (53 random bits each).
    both = np.concatenate([a.r, b.r])
    assert np.unique(both).size == both.size
    assert not np.array_equal(a.e, b.e)


def test_r_is_log_uniform_and_e_is_centred() -> None:
    ps = params.get(params.DEFAULT_PARAMS)
    n = 4 * ps.slots
    m = draw_masks(np.ones(n, dtype=bool), ps)
    u = np.log2(m.r) / ps.mask_log2_max  # should be U[0, 1)
    # n = 16384 uniform draws: the quartiles' standard error is ~0.0034; 0.02 is ~6 sigma.
    assert np.allclose(np.quantile(u, [0.25, 0.5, 0.75]), [0.25, 0.5, 0.75], atol=0.02)
    v = m.e / (m.r * ps.decision_margin / 4)  # should be U[-1, 1)
    assert abs(float(v.mean())) < 0.03 and np.allclose(np.quantile(v, [0.25, 0.75]), [-0.5, 0.5], atol=0.04)


def test_csprng_uniform() -> None:
    x = csprng_uniform(100_000)
    assert x.dtype == np.float64 and x.shape == (100_000,)
    assert (x >= 0).all() and (x < 1).all()
    # Multiples of 2**-53 exactly (53 random bits).
    assert np.array_equal(np.floor(x * 2.0**53), x * 2.0**53)
    assert abs(float(x.mean()) - 0.5) < 0.005
    assert csprng_uniform(0).shape == (0,)
