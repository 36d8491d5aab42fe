"""The flood is sized from a noise bound: measure the noise and check the bound holds.

``noise_bits_below_scale`` in the blind parameter set claims that the
computation noise before the flood (largest coefficient of decryption minus
the exact ring product) stays below ``2**(top - noise_bits_below_scale)`` for
any gallery and any probe, with the mask at its largest in every slot (the
worst case: the noise is multiplied by the mask). The flood's width follows
from it, so these measurements guard circuit privacy, on the production set.
"""

from __future__ import annotations

import numpy as np
import pytest
import tenseal.sealapi as seal

from pprm.crypto import blind_keys, blind_params
from pprm.crypto.context import BlindContext
from pprm.matching.blind import BlindMatcher
from pprm.matching.blind_client import encrypt_probe, unit_probe
from pprm.matching.diagonals import build_database
from tests.conftest import blind_setup
from tests.helpers import PROD_BLIND, PROD_BLIND_REAL, masked_noise_bits, noise_bits

TAU = 0.4
# How far one key pair's noise may pass the sizing bound (see the test).
NOISE_TAIL_BITS = 0.5


@pytest.fixture(scope="module", params=[PROD_BLIND_REAL, PROD_BLIND])
def world(request: pytest.FixtureRequest) -> tuple[BlindContext, blind_keys.BlindKeyPair, blind_keys.EvaluationKeys]:
    """A production set with one template per slot, and with two."""
    return blind_setup(request.param)


def _gallery(kind: str, q: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "random":
        g = rng.normal(size=(n, q.size))
    elif kind == "probe":
        # Every template equal to the probe: the most structured gallery
        # measured (constant diagonals, every score 1).
        g = np.tile(q, (n, 1))
    else:  # "constant": every component equal
        g = np.ones((n, q.size))
    return g / np.linalg.norm(g, axis=1, keepdims=True)


@pytest.mark.parametrize("kind", ["random", "probe", "constant"])
def test_masked_noise_stays_under_the_bound(world, kind: str) -> None:
    ctx, pair, keys = world
    p = ctx.params
    rng = np.random.default_rng(11)
    # The probe exactly as the client encodes it (normalising is not idempotent
    # to the last bit, so the raw probe is what goes to encrypt_probe).
    raw = rng.normal(size=p.dim)
    q = unit_probe(raw, p.dim)
    g = _gallery(kind, q, p.templates_per_block, rng)
    db = build_database(g, ctx)
    matcher = BlindMatcher(ctx, db)
    probe_ct = ctx.load_seeded_ciphertext(encrypt_probe(ctx, pair.secret_key, raw),
                                          scale=float(2**p.probe_scale_bits))
    rows = db.slot_record[0]
    scores = np.zeros(p.templates_per_block, dtype=np.longdouble)
    scores[rows >= 0] = np.einsum("ij,j->i", g[rows[rows >= 0]].astype(np.longdouble), q)
    r_max = np.full(p.templates_per_block, float(2**p.mask_log2_max))
    bits = masked_noise_bits(ctx, pair.secret_key, matcher, probe_ct, keys, scores, db.signs[0], TAU, r_max)
    bound = p.top_scale_bits - p.noise_bits_below_scale
    # The noise depends on the requester's fresh key pair and encryption. Over
    # fresh keys (2-core VM): random 2**107.4-108.3 (10 keys), every template
    # equal to the probe 2**112.4-112.8 (20), all components equal
    # 2**110.1-113.13 (53; one above 2**113). With complex packing (5 keys
    # each): random 2**108.9-109.0, equal to the probe 2**109.6-109.8, all
    # components equal 2**109.0-111.7 (two independent signs per slot break
    # up the structured galleries' coherence further). The bound is where the flood was
    # sized, not a hard ceiling: the tolerance keeps the flood's std (2**143.2)
    # at least 2**29.7 times the noise, and a sample beyond it fails here.
    assert bits <= bound + NOISE_TAIL_BITS, f"noise 2**{bits:.2f} exceeds the flood's bound 2**{bound}"


def test_fresh_probe_noise_is_small(world) -> None:
    # A symmetric fresh encryption: noise of a few units (sigma 3.2 per coefficient).
    ctx, pair, _keys = world
    p = ctx.params
    raw = np.random.default_rng(2).normal(size=p.dim)
    ct = ctx.load_seeded_ciphertext(encrypt_probe(ctx, pair.secret_key, raw), scale=float(2**p.probe_scale_bits))
    replicated = np.tile(unit_probe(raw, p.dim), p.slots // p.dim).astype(np.longdouble)
    assert noise_bits(ctx, pair.secret_key, ct, replicated, p.probe_scale_bits) < 6


@pytest.mark.parametrize("name", [PROD_BLIND_REAL, PROD_BLIND])
def test_flood_width_follows_the_bound(name: str) -> None:
    p = blind_params.get(name)
    # uniform on [-2**k, 2**k): std 2**k / sqrt(3) >= 2**30 * 2**(top - noise bits)
    assert 2.0 ** p.flood_bits / 3**0.5 >= 2.0 ** (30 + p.top_scale_bits - p.noise_bits_below_scale)
    # and in the slots (std sqrt(N/2) per coefficient std, relative to the scale)
    # it stays an order of magnitude under the decision margin at r = 1.
    slot_std = (p.poly_modulus_degree / 2) ** 0.5 * 2.0 ** p.flood_bits / 3**0.5 / 2.0 ** p.top_scale_bits
    assert slot_std * 8 < p.decision_margin * 7 / 8


# An honest probe's window norms, as the responder computes them one level
# down: measured within 2**-21.4 of 1 (production set, 2-core VM). The
# threshold term -r*tau/2*(W - 1) then moves an honest decision by less than
# tau * 2**-20, a thousand times under the decision margin.
WINDOW_NORM_BOUND_BITS = -19


def test_honest_window_norms_are_one(world) -> None:
    ctx, pair, keys = world
    p = ctx.params
    raw = np.random.default_rng(5).normal(size=p.dim)
    probe_ct = ctx.load_seeded_ciphertext(encrypt_probe(ctx, pair.secret_key, raw), scale=float(2**p.probe_scale_bits))
    db = build_database(np.eye(p.dim)[:1], ctx)
    prepared = BlindMatcher(ctx, db).prepare(probe_ct, keys)
    assert prepared.norm_gap is not None
    gap_ct = ctx.from_residues(prepared.norm_gap, prepared.norm_scale)
    pt = seal.Plaintext()
    seal.Decryptor(ctx.seal, pair.secret_key).decrypt(gap_ct, pt)
    gap = np.asarray(ctx.encoder.decode_complex(pt))
    assert np.abs(gap).max() < 2.0**WINDOW_NORM_BOUND_BITS
    assert p.decision_margin / 1000 > 2.0**WINDOW_NORM_BOUND_BITS * 0.5
