"""Synthetic templates: determinism, unit norm, and the score statistics they promise."""

from __future__ import annotations

import numpy as np
import pytest

from pprm import synthetic


def test_equal_seeds_give_equal_galleries_and_probes() -> None:
    a = synthetic.make_gallery(50, dim=64, seed=7)
    b = synthetic.make_gallery(50, dim=64, seed=7)
    c = synthetic.make_gallery(50, dim=64, seed=8)
    assert np.array_equal(a.templates, b.templates) and a.references == b.references
    assert np.array_equal(a.centres, b.centres)
    assert not np.array_equal(a.templates, c.templates)
    assert np.array_equal(synthetic.mate_probe(a, 3, 1), synthetic.mate_probe(b, 3, 1))
    assert not np.array_equal(synthetic.mate_probe(a, 3, 1), synthetic.mate_probe(a, 3, 2))
    assert not np.array_equal(synthetic.mate_probe(a, 3, 1), synthetic.mate_probe(c, 3, 1))
    assert np.array_equal(synthetic.impostor_probe(64, 5), synthetic.impostor_probe(64, 5))
    assert not np.array_equal(synthetic.impostor_probe(64, 5), synthetic.impostor_probe(64, 6))


def test_references_follow_the_prefix() -> None:
    g = synthetic.make_gallery(5, dim=32, seed=1, prefix="FR")
    assert g.references == [f"FR-{i:07d}" for i in range(5)]
    assert len(g) == 5 and g.seed == 1


@pytest.mark.parametrize("dim", [128, 512])
def test_templates_are_unit_norm_float32(dim: int) -> None:
    g = synthetic.make_gallery(200, dim=dim, seed=2)
    probes = [synthetic.mate_probe(g, 0, 1), synthetic.impostor_probe(dim, 1)]
    for arr in (g.templates, *probes):
        assert arr.dtype == np.float32
        assert np.allclose(np.linalg.norm(np.atleast_2d(arr).astype(np.float64), axis=1), 1.0, atol=1e-6)
    assert g.templates.shape == (200, dim) and probes[0].shape == probes[1].shape == (dim,)


def test_genuine_scores() -> None:
    # The model gives 1/sqrt((1+v1)(1+v2)) in [0.53, 0.91] plus a cross term
    # c.(n1 + n2) of std up to ~0.06 at d = 512, so the tails spill a little:
    # measured over 20,000 pairs, 0.2% fall below 0.5 and the minimum is 0.43.
    g = synthetic.make_gallery(4000, dim=512, seed=3)
    s = np.array([float(synthetic.mate_probe(g, i, 9) @ g.templates[i]) for i in range(len(g))])
    assert s.max() < 0.92
    assert s.min() > 0.40
    assert np.mean((s >= 0.5) & (s <= 0.92)) > 0.99
    assert 0.64 < float(np.median(s)) < 0.71


def test_impostor_scores() -> None:
    # Independent directions in d = 512: mean 0, std 1/sqrt(512) = 0.0442.
    # 100 probes x 2000 templates; the standard error of the std estimate is
    # far below the +-0.002 tolerance, that of the mean below 3e-4.
    dim = 512
    g = synthetic.make_gallery(2000, dim=dim, seed=4)
    probes = np.stack([synthetic.impostor_probe(dim, i) for i in range(100)]).astype(np.float64)
    s = (probes @ g.templates.astype(np.float64).T).ravel()
    assert abs(float(s.mean())) < 0.001
    assert abs(float(s.std()) - 1 / np.sqrt(dim)) < 0.002
    # And mates of other identities score like impostors too.
    m = np.array([float(synthetic.mate_probe(g, i, 1) @ g.templates[(i + 1) % len(g)]) for i in range(500)])
    assert abs(float(m.mean())) < 0.01 and abs(float(m.std()) - 1 / np.sqrt(dim)) < 0.006


def test_samples_of_spread_genuine_noise_as_documented() -> None:
    rng = np.random.default_rng(0)
    centres = synthetic.unit_vectors(3000, 512, rng)
    x = synthetic.samples_of(centres, rng).astype(np.float64)
    # Each sample is normalise(c + n) with |n|^2 = v in [0.1, 0.9]: its score
    # with its own centre is about 1/sqrt(1 + v), in [0.72, 0.95], blurred by
    # c.n (std up to 0.042): measured min 0.674 and 1%/99% quantiles 0.709/0.950.
    cos = (x * centres).sum(axis=1)
    assert cos.min() > 0.62 and cos.max() < 0.98
    assert np.mean((cos > 0.70) & (cos < 0.96)) > 0.98
    assert np.allclose(np.linalg.norm(centres, axis=1), 1.0)
