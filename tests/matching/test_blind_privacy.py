"""Blind profile: what the requester's decryption can and cannot tell apart.

* Circuit privacy: two different galleries that give the same decisions (here
  even the same scores: B is A reflected through the probe) produce answers
  whose decrypted non-hit values the two-sample KS test cannot separate.
* Re-randomisation: the answer differs from the same computation, with the
  same masks, without the encryption of zero and the flood.
* Unlinkability: the block order is fresh per query, and the slot layout is
  fresh per rebuild.
"""

from __future__ import annotations

import numpy as np
import pytest

from pprm.crypto import blind_keys
from pprm.crypto.answer_codec import decode_answer, encode_answer
from pprm.crypto.context import BlindContext
from pprm.matching import kernel
from pprm.matching.blind import BlindMatcher, answer_scale
from pprm.matching.blind_client import decrypt_values, encrypt_probe
from pprm.matching.diagonals import BlindDatabase, build_database
from pprm.matching.templates import normalise_probe
from tests.conftest import blind_setup
from tests.helpers import INSECURE_BLIND, INSECURE_BLIND_REAL, PROD_BLIND, PROD_BLIND_REAL, ks_2samp

TAU = 0.4


# Every test here runs on both packings: the fixtures of tests/conftest.py are
# overridden with one pair of sets (production, test) per packing.
@pytest.fixture(scope="module", params=[(PROD_BLIND_REAL, INSECURE_BLIND_REAL), (PROD_BLIND, INSECURE_BLIND)],
                ids=["real", "complex"])
def _sets(request: pytest.FixtureRequest) -> tuple[str, str]:
    names: tuple[str, str] = request.param
    return names


@pytest.fixture(scope="module")
def _prod_set(_sets: tuple[str, str]) -> tuple[BlindContext, blind_keys.BlindKeyPair, blind_keys.EvaluationKeys]:
    return blind_setup(_sets[0])


@pytest.fixture(scope="module")
def _blind_set(_sets: tuple[str, str]) -> tuple[BlindContext, blind_keys.BlindKeyPair, blind_keys.EvaluationKeys]:
    return blind_setup(_sets[1])

@pytest.fixture(scope="module")
def blind_ctx(_blind_set: tuple[BlindContext, blind_keys.BlindKeyPair, blind_keys.EvaluationKeys]) -> BlindContext:
    return _blind_set[0]


@pytest.fixture(scope="module")
def blind_keypair(_blind_set: tuple[BlindContext, blind_keys.BlindKeyPair, blind_keys.EvaluationKeys],
                    ) -> blind_keys.BlindKeyPair:
    return _blind_set[1]


@pytest.fixture(scope="module")
def blind_announced(_blind_set: tuple[BlindContext, blind_keys.BlindKeyPair, blind_keys.EvaluationKeys],
                      ) -> blind_keys.EvaluationKeys:
    return _blind_set[2]

@pytest.fixture(scope="module")
def blind_prod_ctx(_prod_set: tuple[BlindContext, blind_keys.BlindKeyPair, blind_keys.EvaluationKeys]) -> BlindContext:
    return _prod_set[0]


@pytest.fixture(scope="module")
def blind_prod_keypair(_prod_set: tuple[BlindContext, blind_keys.BlindKeyPair, blind_keys.EvaluationKeys],
                    ) -> blind_keys.BlindKeyPair:
    return _prod_set[1]


@pytest.fixture(scope="module")
def blind_prod_announced(_prod_set: tuple[BlindContext, blind_keys.BlindKeyPair, blind_keys.EvaluationKeys],
                      ) -> blind_keys.EvaluationKeys:
    return _prod_set[2]


def _values_by_record(ctx: BlindContext, db: BlindDatabase, pair: blind_keys.BlindKeyPair,
                      keys: blind_keys.EvaluationKeys, q: np.ndarray) -> np.ndarray:
    p = ctx.params
    ct = ctx.load_seeded_ciphertext(encrypt_probe(ctx, pair.secret_key, q), scale=float(2**p.probe_scale_bits))
    answer = BlindMatcher(ctx, db).answer(ct, keys, TAU)
    out = np.full(db.size, np.nan)
    for pos, blk in enumerate(answer.order):
        vals = decrypt_values(ctx, pair.secret_key, decode_answer(ctx, answer.ciphertexts[pos], answer_scale(ctx)))
        rows = db.slot_record[blk]
        out[rows[rows >= 0]] = vals[rows >= 0]
    return out


def test_same_decisions_give_indistinguishable_answers(
        blind_prod_ctx: BlindContext, blind_prod_keypair: blind_keys.BlindKeyPair,
        blind_prod_announced: blind_keys.EvaluationKeys) -> None:
    p = blind_prod_ctx.params
    if not p.complex_packing and kernel.backend() == "numpy":
        # The backends compute the same words (tests/matching/test_kernel_*.py); the numpy
        # backend's run keeps this statistical replication to the default set, for time.
        pytest.skip("one template per slot: replicated on the native backend only")
    rng = np.random.default_rng(77)
    q = normalise_probe(rng.normal(size=p.dim), p.dim).astype(np.float64)
    a = rng.normal(size=(p.templates_per_block, p.dim))
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    a[:40] = 0.7 * q + 0.714 * a[:40]  # a few genuine hits
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    # Reflection through q: same score for every template, different templates.
    b = 2.0 * (a @ q)[:, None] * q[None, :] / (q @ q) - a
    assert np.abs(a @ q - b @ q).max() < 1e-12 and np.abs(a - b).max() > 0.1
    keys = blind_prod_announced
    db_a, db_b = build_database(a, blind_prod_ctx), build_database(b, blind_prod_ctx)
    s = a @ q
    non_hit = s < TAU
    # Under the null hypothesis a KS p-value is uniform: one comparison would
    # fail p > 0.01 once in a hundred runs. Three independent pairs of answers
    # (fresh encryptions, fresh masks and floods) and their median p keep the
    # test's power against a real difference and make a false alarm rare
    # (about 3e-4).
    pvals = []
    for _ in range(3):
        va = _values_by_record(blind_prod_ctx, db_a, blind_prod_keypair, keys, q)
        vb = _values_by_record(blind_prod_ctx, db_b, blind_prod_keypair, keys, q)
        assert ((va > 0) == (s > TAU)).all() and ((vb > 0) == (s > TAU)).all()
        pvals.append(ks_2samp(va[non_hit], vb[non_hit])[1])
    print(f"\nKS over {int(non_hit.sum())} non-hits per gallery, three pairs: p = "
          + ", ".join(f"{p:.3f}" for p in pvals))
    assert sorted(pvals)[1] > 0.01, f"KS p-values {pvals}: the answers tell the galleries apart"


def test_rerandomised_answer_differs_from_the_bare_computation(
        blind_ctx: BlindContext, blind_keypair: blind_keys.BlindKeyPair,
        blind_announced: blind_keys.EvaluationKeys) -> None:
    p = blind_ctx.params
    rng = np.random.default_rng(5)
    g = rng.normal(size=(p.templates_per_block, p.dim))
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    db = build_database(g, blind_ctx)
    keys = blind_announced
    matcher = BlindMatcher(blind_ctx, db)
    q = normalise_probe(rng.normal(size=p.dim), p.dim).astype(np.float64)
    ct = blind_ctx.load_seeded_ciphertext(encrypt_probe(blind_ctx, blind_keypair.secret_key, q),
                                          scale=float(2**p.probe_scale_bits))
    prepared = matcher.prepare(ct, keys)
    score = matcher._giant_steps(kernel.plain_mac(db.diagonals[0], prepared.baby, blind_ctx.moduli), keys.galois)
    masks = matcher.draw_masks()
    combined, scale = matcher.fold_norms(matcher.mask(score, db.signs[0], TAU, masks, keys.galois), TAU, masks,
                                         prepared)
    hidden = matcher.hide(combined, scale, keys.public)
    bare_ct = blind_ctx.from_residues(combined, scale)
    for _ in range(p.data_primes - 2):
        blind_ctx.evaluator.rescale_to_next_inplace(bare_ct)
    bare = encode_answer(blind_ctx, bare_ct)
    assert len(bare) == len(hidden)
    half = len(bare) // 2
    # Both halves change: c1 through the encryption of zero, c0 through it and the flood.
    assert bare[:half] != hidden[:half] and bare[half:] != hidden[half:]
    # ... while the decisions are the same.
    a_scale = answer_scale(blind_ctx)
    v_h = decrypt_values(blind_ctx, blind_keypair.secret_key, decode_answer(blind_ctx, hidden, a_scale))
    v_b = decrypt_values(blind_ctx, blind_keypair.secret_key, decode_answer(blind_ctx, bare, a_scale))
    assert ((v_h > 0) == (v_b > 0)).all()
    # Twice the same computation and masks, hidden twice: never the same bytes.
    assert matcher.hide(combined, scale, keys.public) != hidden


def test_block_order_is_fresh_per_query_and_layout_per_rebuild(
        blind_ctx: BlindContext, blind_keypair: blind_keys.BlindKeyPair,
        blind_announced: blind_keys.EvaluationKeys) -> None:
    p = blind_ctx.params
    rng = np.random.default_rng(9)
    g = rng.normal(size=(6 * p.templates_per_block - 17, p.dim))
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    db1, db2 = build_database(g, blind_ctx), build_database(g, blind_ctx)
    assert db1.blocks == 6 and db1.size == g.shape[0]
    assert not np.array_equal(db1.slot_record, db2.slot_record)
    assert not np.array_equal(db1.signs, db2.signs)
    assert sorted(db1.slot_record[db1.slot_record >= 0].tolist()) == list(range(g.shape[0]))
    keys = blind_announced
    q = normalise_probe(rng.normal(size=p.dim), p.dim).astype(np.float64)
    matcher = BlindMatcher(blind_ctx, db1)
    orders = []
    for _ in range(3):
        ct = blind_ctx.load_seeded_ciphertext(encrypt_probe(blind_ctx, blind_keypair.secret_key, q),
                                              scale=float(2**p.probe_scale_bits))
        orders.append(tuple(matcher.answer(ct, keys, TAU).order))
    assert all(sorted(o) == list(range(6)) for o in orders)
    assert len(set(orders)) > 1


def test_threshold_outside_the_exact_range_is_refused(
        blind_ctx: BlindContext, blind_keypair: blind_keys.BlindKeyPair,
        blind_announced: blind_keys.EvaluationKeys) -> None:
    db = build_database(np.eye(4, blind_ctx.params.dim), blind_ctx)
    keys = blind_announced
    probe = encrypt_probe(blind_ctx, blind_keypair.secret_key, np.ones(blind_ctx.params.dim))
    ct = blind_ctx.load_seeded_ciphertext(probe, scale=float(2**blind_ctx.params.probe_scale_bits))
    from pprm.errors import ParameterError

    for tau in (0.0, 0.001, 1.0, 1.5):
        with pytest.raises(ParameterError, match="threshold"):
            BlindMatcher(blind_ctx, db).answer(ct, keys, tau)
