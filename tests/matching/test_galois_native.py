"""The C Galois automorphisms (native/pprm_galois.c) give SEAL's words exactly.

Rotations by 1 and b1 and the conjugation, at every level of a blind set,
are compared with SEAL's ``rotate_vector`` and ``complex_conjugate`` on the
same ciphertexts: both sides are integer arithmetic modulo each prime, so
any difference is a bug. Then the refusals: a transparent result (which
SEAL refuses as well), words that are not reduced, a missing element.
"""

from __future__ import annotations

import numpy as np
import pytest
import tenseal.sealapi as seal
from hypothesis import given, settings
from hypothesis import strategies as st

from pprm.crypto import blind_keys
from pprm.crypto.context import BlindContext
from pprm.errors import BackendError, CiphertextError, ParameterError
from pprm.matching import kernel_native
from pprm.matching.galois_native import NativeGalois, fits, galois_element
from pprm.matching.mask_kernel import conjugation_permutation, galois_permutation
from tests.conftest import blind_setup
from tests.helpers import INSECURE_BLIND

pytestmark = pytest.mark.skipif(not kernel_native.available(), reason="native extension not built")

PRODUCTION = "pprm-blind-n16384-complex-v3"


def _random_ct(ctx: BlindContext, level: int, rng: np.random.Generator) -> np.ndarray:
    return np.stack([np.stack([rng.integers(0, q, ctx.n, dtype=np.uint64) for q in ctx.moduli[:level]])
                     for _ in range(2)])


def _seal_apply(ctx: BlindContext, keys: blind_keys.EvaluationKeys, res: np.ndarray, step: int) -> np.ndarray:
    ct = ctx.from_residues(res, 2.0**40)
    if step == 0:
        out = ctx.conjugate(ct, keys.galois)
    else:
        out = seal.Ciphertext(ctx.seal)
        ctx.evaluator.rotate_vector(ct, step, keys.galois, out)
    return ctx.to_residues(out, res.shape[1])


def _native_apply(gal: NativeGalois, res: np.ndarray, step: int) -> np.ndarray:
    return gal.conjugate(res) if step == 0 else gal.rotate(res, step)


@pytest.mark.parametrize("name", [INSECURE_BLIND, PRODUCTION])
def test_every_element_at_every_level_is_seals(name: str) -> None:
    ctx, _pair, keys = blind_setup(name)
    assert fits(ctx)
    gal = NativeGalois(ctx, keys.galois)
    rng = np.random.default_rng(0x6A1)
    for level in range(ctx.params.data_primes, 0, -1):
        res = _random_ct(ctx, level, rng)
        for step in (1, ctx.params.baby_steps, 0):
            got = _native_apply(gal, res, step)
            want = _seal_apply(ctx, keys, res, step)
            assert got.shape == want.shape == res.shape
            assert np.array_equal(got, want), (level, step)


@settings(max_examples=25)
@given(seed=st.integers(0, 2**32 - 1), level=st.integers(1, 3), which=st.sampled_from(["rot1", "rotb1", "conj"]))
def test_random_ciphertexts_match_seal(seed: int, level: int, which: str) -> None:
    ctx, _pair, keys = blind_setup(INSECURE_BLIND)
    gal = NativeGalois(ctx, keys.galois)
    level = min(level, ctx.params.data_primes)
    step = {"rot1": 1, "rotb1": ctx.params.baby_steps, "conj": 0}[which]
    res = _random_ct(ctx, level, np.random.default_rng(seed))
    assert np.array_equal(_native_apply(gal, res, step), _seal_apply(ctx, keys, res, step))


def test_a_chain_of_rotations_stays_seals() -> None:
    """Five rotations by one in a row, each fed the last one's output, are SEAL's at every step."""
    ctx, _pair, keys = blind_setup(INSECURE_BLIND)
    gal = NativeGalois(ctx, keys.galois)
    res = _random_ct(ctx, ctx.params.data_primes, np.random.default_rng(3))
    seal_res = res
    for _ in range(5):
        res = gal.rotate(res, 1)
        seal_res = _seal_apply(ctx, keys, seal_res, 1)
        assert np.array_equal(res, seal_res)


def test_a_transparent_result_is_refused_as_seal_refuses_it() -> None:
    ctx, _pair, keys = blind_setup(INSECURE_BLIND)
    gal = NativeGalois(ctx, keys.galois)
    res = _random_ct(ctx, ctx.params.data_primes, np.random.default_rng(4))
    res[1] = 0  # c1 = 0: the key switch of zero is zero
    with pytest.raises(CiphertextError, match="transparent"):
        gal.rotate(res, 1)
    with pytest.raises((RuntimeError, ValueError)):
        _seal_apply(ctx, keys, res, 1)


def test_unreduced_words_bad_shapes_and_missing_elements_are_refused() -> None:
    ctx, _pair, keys = blind_setup(INSECURE_BLIND)
    gal = NativeGalois(ctx, keys.galois)
    res = _random_ct(ctx, ctx.params.data_primes, np.random.default_rng(5))
    bad = res.copy()
    bad[0, 1, 7] = np.uint64(ctx.moduli[1])
    with pytest.raises(BackendError, match="not reduced"):
        gal.rotate(bad, 1)
    with pytest.raises(BackendError, match="expected"):
        gal.rotate(res[:, :, :-1], 1)
    with pytest.raises(BackendError):
        gal.rotate(np.zeros((2, ctx.params.data_primes + 1, ctx.n), dtype=np.uint64), 1)
    assert not gal.has(galois_element(ctx.n, 2))
    with pytest.raises(ParameterError, match="do not hold"):
        gal.rotate(res, 2)
    with pytest.raises(ParameterError):
        galois_element(ctx.n, ctx.n // 2)


def test_the_permutation_is_the_conjugation_at_2n_minus_1() -> None:
    n = 1024
    assert np.array_equal(galois_permutation(n, 2 * n - 1), conjugation_permutation(n))
    for elt in (3, galois_element(n, 64), 2 * n - 1):
        assert sorted(galois_permutation(n, elt).tolist()) == list(range(n))
    with pytest.raises(ParameterError):
        galois_permutation(n, 4)
    with pytest.raises(ParameterError):
        galois_permutation(n, 2 * n + 1)


def test_repr_names_no_key_material() -> None:
    ctx, _pair, keys = blind_setup(INSECURE_BLIND)
    text = repr(NativeGalois(ctx, keys.galois))
    assert text.startswith("NativeGalois(") and len(text) < 80


def test_an_attackers_rigged_keys_rotate_in_c_exactly_as_in_seal() -> None:
    """Galois keys of another secret key (THREAT_MODEL 1.5, "The same keys in C"): C and SEAL agree word for word.

    So whatever the SEAL-path argument says about rigged keys holds for the C path too.
    """
    ctx, attacker, _keys = blind_setup(INSECURE_BLIND)
    other = blind_keys.generate(ctx)
    rigged = blind_keys.load_announced(ctx, attacker.public_blob, other.galois_blob, other.relin_blob)
    gal = NativeGalois(ctx, rigged.galois)
    rng = np.random.default_rng(11)
    for level in range(ctx.params.data_primes, 0, -1):
        res = _random_ct(ctx, level, rng)
        for step in (1, ctx.params.baby_steps, 0):
            assert np.array_equal(_native_apply(gal, res, step), _seal_apply(ctx, rigged, res, step))


def test_the_matcher_applies_an_attackers_keys_through_c_on_the_native_backend(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An answer to the attacker's own probe and rigged keys goes through the C automorphisms, not around them."""
    from pprm import synthetic
    from pprm.matching import kernel
    from pprm.matching.blind import BlindMatcher
    from pprm.matching.blind_client import encrypt_probe
    from pprm.matching.diagonals import build_database

    ctx, attacker, _keys = blind_setup(INSECURE_BLIND)
    other = blind_keys.generate(ctx)
    rigged = blind_keys.load_announced(ctx, attacker.public_blob, other.galois_blob, other.relin_blob)
    gallery = synthetic.make_gallery(200, dim=ctx.params.dim, seed=5, prefix="GA").templates
    db = build_database(gallery, ctx)
    probe = ctx.load_seeded_ciphertext(encrypt_probe(ctx, attacker.secret_key, 10.0 * gallery[0]),
                                       scale=float(2**ctx.params.probe_scale_bits))
    calls: list[int] = []
    original = NativeGalois.apply

    def counted(self: NativeGalois, residues: np.ndarray, elt: int) -> np.ndarray:
        calls.append(elt)
        return original(self, residues, elt)

    monkeypatch.setattr(NativeGalois, "apply", counted)
    answer = BlindMatcher(ctx, db).answer(probe, rigged, 0.4)
    assert len(answer.ciphertexts) == db.blocks
    if kernel.backend() == "native":
        p = ctx.params
        # 63 baby steps, 63 + 7 window rotations, and g2 - 1 giant steps per block at least.
        assert len(calls) >= (p.baby_steps - 1) * 2 + (p.giant_steps - 1) * (1 + db.blocks)
        assert {galois_element(ctx.n, 1), galois_element(ctx.n, p.baby_steps), 2 * ctx.n - 1} <= set(calls)
    else:
        assert calls == []
