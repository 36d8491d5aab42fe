"""The numpy statistics used by the privacy tests behave like the textbook ones."""

from __future__ import annotations

import numpy as np

from tests.helpers import ks_2samp, spearman


def test_spearman_known_values() -> None:
    x = np.arange(100.0)
    assert abs(spearman(x, x**3) - 1.0) < 1e-12
    assert abs(spearman(x, -x) + 1.0) < 1e-12
    rng = np.random.default_rng(0)
    assert abs(spearman(rng.normal(size=20000), rng.normal(size=20000))) < 0.03


def test_ks_separates_and_accepts() -> None:
    rng = np.random.default_rng(1)
    _, p_same = ks_2samp(rng.normal(size=5000), rng.normal(size=5000))
    _, p_shift = ks_2samp(rng.normal(size=5000), rng.normal(0.1, 1.0, size=5000))
    assert p_same > 0.01 and p_shift < 1e-4
