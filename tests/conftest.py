"""Shared fixtures for the pprm test suite.

Kept deliberately small:

* ``insecure_params`` / ``ctx`` / ``keypair`` / ``key_id``: one CKKS context
  and key pair on the fast test-only set ``INSECURE-sealed-n1024``, shared by
  the whole session (building them is cheap, but SEAL contexts are not free
  and nothing mutates them).
* ``make_state``: a factory that creates a fresh state directory on the
  insecure set, for tests that need the node layer.
* ``scored_rows``: a factory for gallery rows with *prescribed* cosine scores
  against given probes, so that tests can put scores exactly where they want
  them (close to the threshold, or safely away from it).

A Hypothesis profile without deadlines is loaded, because SEAL calls have
latencies that vary with machine load and a deadline would make tests flaky,
not stricter.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tenseal.sealapi as seal
from hypothesis import HealthCheck, settings

from pprm.crypto import keys, params
from pprm.crypto.context import CkksContext
from pprm.matching.owner import GalleryOwner
from pprm.matching.templates import normalise_templates
from pprm.node.state import State
from tests.helpers import ScoredWorld

INSECURE = "INSECURE-sealed-n1024"

settings.register_profile(
    "pprm", deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile("pprm")


@pytest.fixture(scope="session")
def insecure_params() -> params.ParameterSet:
    """The test-only N=1024 parameter set (512 templates per block)."""
    return params.get(INSECURE, allow_insecure=True)


@pytest.fixture(scope="session")
def ctx(insecure_params: params.ParameterSet) -> CkksContext:
    """A CKKS context on the insecure set; holds no key."""
    return CkksContext(insecure_params)


@pytest.fixture(scope="session")
def keypair(ctx: CkksContext) -> tuple[seal.SecretKey, seal.PublicKey]:
    """``(secret_key, public_key)`` for :func:`ctx`, generated once per session."""
    return keys.generate(ctx)


@pytest.fixture(scope="session")
def key_id(ctx: CkksContext, keypair: tuple[seal.SecretKey, seal.PublicKey]) -> str:
    """Key id of :func:`keypair`'s public key."""
    return keys.key_id_of(keys.public_key_bytes(ctx, keypair[1]))


@pytest.fixture
def make_state() -> Callable[..., State]:
    """Factory ``make_state(tmp_path, name, **kw) -> State``.

    Creates the state in ``tmp_path / name`` via :meth:`State.init`, on
    ``INSECURE-sealed-n1024`` with ``allow_insecure=True`` unless ``kw``
    overrides ``params`` or ``allow_insecure``; other keywords (threshold, k,
    dim) are passed through.
    """

    def factory(base: Path | str, name: str, **kw: Any) -> State:
        kw.setdefault("params", INSECURE)
        kw.setdefault("allow_insecure", True)
        return State.init(str(Path(base) / name), name, **kw)

    return factory


def _rows_with_scores(probes: np.ndarray, scores: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Unit rows ``g_i`` with ``g_i . p_j = scores[i, j]`` for orthonormal probes ``p_j``.

    ``g_i = sum_j a_ij p_j + sqrt(1 - sum_j a_ij^2) u_i`` with ``u_i`` a random
    unit vector orthogonal to every probe.

    Args:
        probes: ``(m, d)`` orthonormal rows.
        scores: ``(n, m)`` prescribed scores, with row sums of squares < 1.
        rng: randomness for the orthogonal parts.

    Returns:
        ``(n, d)`` float64 unit rows.
    """
    p = np.asarray(probes, dtype=np.float64)
    a = np.asarray(scores, dtype=np.float64)
    assert np.allclose(p @ p.T, np.eye(p.shape[0]), atol=1e-12), "probes must be orthonormal"
    rest = 1.0 - (a * a).sum(axis=1)
    assert (rest > 0).all(), "prescribed scores leave no room for a unit row"
    u = rng.standard_normal((a.shape[0], p.shape[1]))
    u -= (u @ p.T) @ p
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    return a @ p + np.sqrt(rest)[:, None] * u


@pytest.fixture
def scored_rows() -> Callable[[np.ndarray, np.ndarray, np.random.Generator], np.ndarray]:
    """Factory ``scored_rows(probes, scores, rng)``; see :func:`_rows_with_scores`."""
    return _rows_with_scores


def orthonormal_probes(m: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """``m`` random orthonormal rows of dimension ``dim`` (float64)."""
    q, _ = np.linalg.qr(rng.standard_normal((dim, m)))
    return np.ascontiguousarray(q.T)


@pytest.fixture
def make_probes() -> Callable[[int, int, np.random.Generator], np.ndarray]:
    """Factory ``make_probes(m, dim, rng)``: ``m`` orthonormal probe rows."""
    return orthonormal_probes


@pytest.fixture
def make_world(tmp_path: Path, make_state: Callable[..., State]) -> Callable[..., ScoredWorld]:
    """Factory ``make_world(n_rows, dim, thresholds, seed, **state_kw) -> ScoredWorld``.

    Scores against probe ``j`` spread over ``thresholds[j] +- 0.05``, so about
    half of the pairs are hits and ~2% sit inside the 1e-3 margin.
    """

    def factory(n_rows: int, dim: int, thresholds: tuple[float, ...], seed: int, **kw: Any) -> ScoredWorld:
        state = make_state(tmp_path, "DE", dim=dim, **kw)
        sk = keys.load_secret_key(state.ctx, state.secret_key_path())
        gallery = state.gallery()
        owner = GalleryOwner(state.ctx, sk, gallery)
        rng = np.random.default_rng(seed)
        probes = orthonormal_probes(len(thresholds), dim, rng)
        a = np.stack([rng.uniform(t - 0.05, t + 0.05, n_rows) for t in thresholds], axis=1)
        templates = _rows_with_scores(probes, a, rng).astype(np.float32)
        ids = owner.enroll(templates, [f"DE-{i:05d}" for i in range(n_rows)])
        unit = normalise_templates(templates, dim)
        return ScoredWorld(state, sk, gallery, owner, probes.astype(np.float32),
                           dict(zip(ids, unit, strict=True)), dim)

    return factory
