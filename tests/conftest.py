"""Shared fixtures for the pprm test suite.

Kept deliberately small; the plain functions they use live in
``tests/helpers.py``. Contexts and keys are session-scoped: building them is
not free (a production blind key set is several megabytes of Galois keys),
and nothing mutates them. A test that needs keys of its own (fresh ids, a
keyring that retires them) generates them itself.

Sealed profile, on the test-only set ``INSECURE-sealed-n1024``
(:data:`tests.helpers.INSECURE_SEALED`):

* ``sealed_params`` / ``sealed_ctx`` / ``sealed_keypair`` / ``sealed_key_id``.

Blind profile, on the test-only set ``INSECURE-blind-n1024-complex-v3``
(:data:`tests.helpers.INSECURE_BLIND`):

* ``blind_params`` / ``blind_ctx`` / ``blind_keypair`` (the requester's side)
  / ``blind_announced`` (the responder's side: the public and Galois keys
  loaded from the pair's announcement);
* ``blind_prod_ctx`` / ``blind_prod_keypair`` / ``blind_prod_announced``: the
  same on the production set ``pprm-blind-n16384-complex-v3``
  (:data:`tests.helpers.PROD_BLIND`), for the noise, fidelity and privacy
  measurements that only mean something there.

Worlds:

* ``make_world``: a state whose gallery scores near chosen thresholds
  (:class:`tests.helpers.ScoredWorld`).

A Hypothesis profile without deadlines is loaded, because SEAL calls have
latencies that vary with machine load and a deadline would make tests flaky,
not stricter.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tenseal.sealapi as seal
from hypothesis import HealthCheck, settings

from pprm.crypto import blind_keys, keys, params
from pprm.crypto import blind_params as blind_param_sets
from pprm.crypto.context import BlindContext, CkksContext
from pprm.matching.owner import GalleryOwner
from pprm.matching.templates import normalise_templates
from tests.helpers import (
    INSECURE_BLIND,
    INSECURE_SEALED,
    PROD_BLIND,
    ScoredWorld,
    new_state,
    orthonormal_probes,
    rows_with_scores,
)

settings.register_profile(
    "pprm", deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile("pprm")


# -- sealed profile --------------------------------------------------------------

@pytest.fixture(scope="session")
def sealed_params() -> params.ParameterSet:
    """The test-only sealed set ``INSECURE-sealed-n1024`` (512 templates per block)."""
    return params.get(INSECURE_SEALED, allow_insecure=True)


@pytest.fixture(scope="session")
def sealed_ctx(sealed_params: params.ParameterSet) -> CkksContext:
    """A CKKS context on :func:`sealed_params`; holds no key."""
    return CkksContext(sealed_params)


@pytest.fixture(scope="session")
def sealed_keypair(sealed_ctx: CkksContext) -> tuple[seal.SecretKey, seal.PublicKey]:
    """``(secret_key, public_key)`` for :func:`sealed_ctx`, generated once per session."""
    return keys.generate(sealed_ctx)


@pytest.fixture(scope="session")
def sealed_key_id(sealed_ctx: CkksContext, sealed_keypair: tuple[seal.SecretKey, seal.PublicKey]) -> str:
    """Key id of :func:`sealed_keypair`'s public key."""
    return keys.key_id_of(keys.public_key_bytes(sealed_ctx, sealed_keypair[1]))


# -- blind profile ---------------------------------------------------------------

def _announced(ctx: BlindContext, pair: blind_keys.BlindKeyPair) -> blind_keys.EvaluationKeys:
    return blind_keys.load_announced(ctx, pair.public_blob, pair.galois_blob, pair.relin_blob)


@pytest.fixture(scope="session")
def blind_params() -> blind_param_sets.BlindParameterSet:
    """The test-only blind set ``INSECURE-blind-n1024-complex-v3`` (1024 templates per block)."""
    return blind_param_sets.get(INSECURE_BLIND, allow_insecure=True)


@pytest.fixture(scope="session")
def blind_ctx(blind_params: blind_param_sets.BlindParameterSet) -> BlindContext:
    """A blind-profile context on :func:`blind_params`; holds no key."""
    return BlindContext(blind_params)


@pytest.fixture(scope="session")
def blind_keypair(blind_ctx: BlindContext) -> blind_keys.BlindKeyPair:
    """A requester's key pair for :func:`blind_ctx`, generated once per session."""
    return blind_keys.generate(blind_ctx)


@pytest.fixture(scope="session")
def blind_announced(blind_ctx: BlindContext,
                    blind_keypair: blind_keys.BlindKeyPair) -> blind_keys.EvaluationKeys:
    """The evaluation keys as a responder loads them from :func:`blind_keypair`'s announcement."""
    return _announced(blind_ctx, blind_keypair)


@functools.cache
def blind_setup(name: str) -> tuple[BlindContext, blind_keys.BlindKeyPair, blind_keys.EvaluationKeys]:
    """A context, a requester's key pair and its announced keys for the blind set ``name``, once per session."""
    ctx = BlindContext(blind_param_sets.get(name, allow_insecure=True))
    pair = blind_keys.generate(ctx)
    return ctx, pair, _announced(ctx, pair)


@pytest.fixture(scope="session")
def blind_prod_ctx() -> BlindContext:
    """A blind-profile context on the production set ``pprm-blind-n16384-complex-v3``."""
    return BlindContext(blind_param_sets.get(PROD_BLIND))


@pytest.fixture(scope="session")
def blind_prod_keypair(blind_prod_ctx: BlindContext) -> blind_keys.BlindKeyPair:
    """A requester's key pair for :func:`blind_prod_ctx`, generated once per session."""
    return blind_keys.generate(blind_prod_ctx)


@pytest.fixture(scope="session")
def blind_prod_announced(blind_prod_ctx: BlindContext,
                         blind_prod_keypair: blind_keys.BlindKeyPair) -> blind_keys.EvaluationKeys:
    """The evaluation keys loaded from :func:`blind_prod_keypair`'s announcement."""
    return _announced(blind_prod_ctx, blind_prod_keypair)


# -- worlds ----------------------------------------------------------------------

@pytest.fixture
def make_world(tmp_path: Path) -> Callable[..., ScoredWorld]:
    """Factory ``make_world(n_rows, dim, thresholds, seed, **state_kw) -> ScoredWorld``.

    The state lives in ``tmp_path / "DE"`` (:func:`tests.helpers.new_state`,
    ``state_kw`` passed on). Scores against probe ``j`` spread over
    ``thresholds[j] +- 0.05``, so about half of the pairs are hits and ~2% sit
    inside the 1e-3 margin.
    """

    def factory(n_rows: int, dim: int, thresholds: tuple[float, ...], seed: int, **kw: Any) -> ScoredWorld:
        state = new_state(tmp_path / "DE", "DE", dim=dim, **kw)
        sk = keys.load_secret_key(state.ctx, state.secret_key_path())
        gallery = state.gallery()
        owner = GalleryOwner(state.ctx, sk, gallery)
        rng = np.random.default_rng(seed)
        probes = orthonormal_probes(len(thresholds), dim, rng)
        a = np.stack([rng.uniform(t - 0.05, t + 0.05, n_rows) for t in thresholds], axis=1)
        templates = rows_with_scores(probes, a, rng).astype(np.float32)
        ids = owner.enroll(templates, [f"DE-{i:05d}" for i in range(n_rows)])
        unit = normalise_templates(templates, dim)
        return ScoredWorld(state, sk, gallery, owner, probes.astype(np.float32),
                           dict(zip(ids, unit, strict=True)), dim)

    return factory
