"""The native masking (native/pprm_mask.c) gives SEAL's words exactly.

Each step is compared with SEAL itself on the same inputs: the NTT tables
(against SEAL's own NTT), the conjugation with its key switch (against
``Evaluator.complex_conjugate``), and the whole per-block masking (against
the SEAL path of :class:`~pprm.matching.sealed.BlockScorer`, which the numpy
backend runs), with the same fresh masks. Equality is bit for bit: both
sides are integer arithmetic mod q0 and P, so any difference is a bug.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest
import tenseal.sealapi as seal
from hypothesis import given, settings
from hypothesis import strategies as st

from pprm.crypto import keys, params
from pprm.crypto.context import CkksContext
from pprm.crypto.masked_codec import masked_layout
from pprm.errors import BackendError, ParameterError
from pprm.matching import kernel_native
from pprm.matching.mask_kernel import NativeMasker, conjugation_permutation, ntt_table
from pprm.matching.sealed import BlockScorer
from tests.helpers import INSECURE_SEALED_COMPLEX

pytestmark = pytest.mark.skipif(not kernel_native.available(), reason="native extension not built")

PRODUCTION = "pprm-sealed-n8192-complex-v1"


def _world(name: str) -> tuple[CkksContext, seal.GaloisKeys, seal.SecretKey]:
    ctx = CkksContext(params.get(name, allow_insecure=True))
    sk = seal.KeyGenerator(ctx.seal).secret_key()
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "galois.key")
        with open(path, "wb") as fh:
            fh.write(keys.conjugation_key_bytes(ctx, sk))
        gk = keys.load_conjugation_key(ctx, path)
    return ctx, gk, sk


@pytest.fixture(scope="module")
def small() -> tuple[CkksContext, seal.GaloisKeys, seal.SecretKey]:
    return _world(INSECURE_SEALED_COMPLEX)


@pytest.fixture(scope="module")
def production() -> tuple[CkksContext, seal.GaloisKeys, seal.SecretKey]:
    return _world(PRODUCTION)


def _residues(ctx: CkksContext, seed: int, size: int = 2) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, ctx.moduli[0], size=(size, 1, ctx.n), dtype=np.uint64)


@pytest.mark.parametrize("world", ["small", "production"])
def test_ntt_is_seals_ntt_and_inverts(world: str, request: pytest.FixtureRequest) -> None:
    ctx, gk, _ = request.getfixturevalue(world)
    m = NativeMasker(ctx, gk)
    polys = _residues(ctx, 1, size=3)
    theirs = ctx.to_ntt(polys)
    for i in range(3):
        ours = m.ntt(polys[i, 0])
        assert np.array_equal(ours, theirs[i, 0])
        assert np.array_equal(m.ntt(ours, inverse=True), polys[i, 0])


def test_tables_follow_seals_definitions(small: tuple[CkksContext, seal.GaloisKeys, seal.SecretKey]) -> None:
    ctx, _, _ = small
    q, n = ctx.moduli[0], ctx.n
    t = ntt_table(q, n)
    psi = int(t.roots[1 << (n.bit_length() - 2)])  # bitrev(1) sits at N/2
    assert pow(psi, n, q) == q - 1  # a primitive 2N-th root ...
    assert psi == min(pow(psi, k, q) for k in range(1, 2 * n, 2))  # ... and the smallest one
    perm = conjugation_permutation(n)
    assert sorted(perm.tolist()) == list(range(n))  # a permutation, and an involution:
    assert np.array_equal(perm[perm], np.arange(n))


@pytest.mark.parametrize("world", ["small", "production"])
def test_conjugation_is_bit_exact(world: str, request: pytest.FixtureRequest) -> None:
    ctx, gk, _ = request.getfixturevalue(world)
    m = NativeMasker(ctx, gk)
    res = _residues(ctx, 2)
    theirs = ctx.to_residues(ctx.conjugate(ctx.from_residues(res, 2.0**39), gk))
    # a = 0, b = 1: the masking returns exactly conj(S), out of the NTT domain.
    one = np.zeros(ctx.n, dtype=np.int64)
    one[0] = 1
    ours = m.mask(res[:, 0, :], np.zeros(ctx.n, np.uint64), np.zeros(ctx.n, np.int64), one,
                  np.zeros(ctx.n, np.uint64))
    assert np.array_equal(ours, np.stack([m.ntt(theirs[i, 0], inverse=True) for i in range(2)]))


def _both_paths(ctx: CkksContext, gk: seal.GaloisKeys, res: np.ndarray,
                occupied: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sc = BlockScorer(ctx, gk)
    assert sc._native is not None or os.environ.get("PPRM_BACKEND") == "numpy"
    native = NativeMasker(ctx, gk)
    p = ctx.params
    tau = ctx.encode_constant(complex(0.4, 0.4), p.gallery_scale_bits + p.probe_scale_bits)
    tau_ntt = sc._plaintext_residues(tau)
    exact, noise = sc._complex_masks(occupied, masked_layout(p, ctx.moduli[0]).rho_cap)
    return (native.mask(res[:, 0, :], tau_ntt, exact[0], exact[1], noise),
            sc._mask_complex_seal(res, tau, exact, noise))


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), used=st.integers(0, 1024))
def test_masking_equals_the_seal_path(small: tuple[CkksContext, seal.GaloisKeys, seal.SecretKey], seed: int,
                                      used: int) -> None:
    ctx, gk, _ = small
    occupied = np.zeros(ctx.n, dtype=bool)
    occupied[np.random.default_rng(seed).permutation(ctx.n)[:used]] = True
    ours, seals = _both_paths(ctx, gk, _residues(ctx, seed), occupied)
    assert np.array_equal(ours, seals)


def test_masking_equals_the_seal_path_at_production_size(
        production: tuple[CkksContext, seal.GaloisKeys, seal.SecretKey]) -> None:
    ctx, gk, _ = production
    occupied = np.ones(ctx.n, dtype=bool)
    occupied[5000:] = False
    ours, seals = _both_paths(ctx, gk, _residues(ctx, 3), occupied)
    assert np.array_equal(ours, seals)


def test_unreduced_or_oversized_inputs_are_refused(
        small: tuple[CkksContext, seal.GaloisKeys, seal.SecretKey]) -> None:
    ctx, gk, _ = small
    m = NativeMasker(ctx, gk)
    n, q0 = ctx.n, ctx.moduli[0]
    ct = _residues(ctx, 4)[:, 0, :]
    zero_u, zero_i = np.zeros(n, np.uint64), np.zeros(n, np.int64)
    bad_ct = ct.copy()
    bad_ct[1, 7] = q0
    with pytest.raises(BackendError, match="not reduced"):
        m.mask(bad_ct, zero_u, zero_i, zero_i, zero_u)
    big = zero_i.copy()
    big[3] = q0 // 2
    with pytest.raises(BackendError, match="not reduced"):
        m.mask(ct, zero_u, big, zero_i, zero_u)
    with pytest.raises(BackendError, match="not reduced"):
        m.ntt(np.full(n, q0, dtype=np.uint64))


def test_a_real_packing_context_is_refused() -> None:
    ctx = CkksContext(params.get("INSECURE-sealed-n1024", allow_insecure=True))
    _, gk, _ = _world(INSECURE_SEALED_COMPLEX)
    with pytest.raises(ParameterError, match="complex packing"):
        NativeMasker(ctx, gk)


def test_the_self_check_catches_a_wrong_masking(monkeypatch: pytest.MonkeyPatch) -> None:
    from pprm.matching import kernel_selfcheck

    assert kernel_selfcheck.masking_agrees_with_seal(seed=5)
    real = NativeMasker.mask

    def off_by_one(self: NativeMasker, *args: np.ndarray) -> np.ndarray:
        out = real(self, *args)
        out[1, 17] = (out[1, 17] + np.uint64(1)) % np.uint64(self.q0)
        return out

    monkeypatch.setattr(NativeMasker, "mask", off_by_one)
    assert not kernel_selfcheck.masking_agrees_with_seal(seed=5)


@pytest.mark.parametrize("fill", ["top", "one", "alternating"])
def test_extreme_words_mask_like_seal(small: tuple[CkksContext, seal.GaloisKeys, seal.SecretKey], fill: str) -> None:
    # The lazy transforms keep words up to 8q between layers; words at q - 1
    # everywhere (or 1, or alternating with 0) are where a range slip would
    # show. (All zero is not a case: SEAL refuses a transparent ciphertext.)
    ctx, gk, _ = small
    q0 = ctx.moduli[0]
    res = np.ones((2, 1, ctx.n), dtype=np.uint64)
    if fill == "alternating":
        res[:] = 0
    if fill == "top":
        res[:] = q0 - 1
    elif fill == "alternating":
        res[:, :, ::2] = q0 - 1
    ours, seals = _both_paths(ctx, gk, res, np.ones(ctx.n, dtype=bool))
    assert np.array_equal(ours, seals)
    m = NativeMasker(ctx, gk)
    top = np.full(ctx.n, q0 - 1, dtype=np.uint64)
    assert np.array_equal(m.ntt(top), ctx.to_ntt(top[None, None])[0, 0])
    assert np.array_equal(m.ntt(m.ntt(top), inverse=True), top)


@pytest.mark.parametrize("name", ["pprm-blind-n16384-complex-v3", "INSECURE-blind-n1024-complex-v3"])
def test_native_ntt_is_seals_for_the_blind_primes(name: str) -> None:
    # The blind database's diagonals go through NativeNtt on the native backend: it must give SEAL's words.
    from pprm.crypto import blind_params
    from pprm.crypto.context import BlindContext
    from pprm.matching.mask_kernel import NativeNtt

    ctx = BlindContext(blind_params.get(name, allow_insecure=True))
    rng = np.random.default_rng(3)
    polys = np.stack([np.stack([rng.integers(0, q, ctx.n, dtype=np.uint64) for q in ctx.moduli]) for _ in range(3)])
    polys[0, :, :4] = [[q - 1] * 4 for q in ctx.moduli]  # the largest words
    ntt = NativeNtt(ctx.n, tuple(ctx.moduli))
    assert np.array_equal(ntt.forward(polys), ctx.to_ntt(polys))
    assert np.array_equal(ntt.forward(polys[:, :2]), ctx.to_ntt(polys[:, :2]))  # one level down
    bad = polys.copy()
    bad[1, 2, 5] = ctx.moduli[2]
    with pytest.raises(BackendError, match="not reduced"):
        ntt.forward(bad)
    # In place: the same words, in the array given.
    inplace = polys.copy()
    assert ntt.forward(inplace, in_place=True) is inplace
    assert np.array_equal(inplace, ctx.to_ntt(polys))
    with pytest.raises(BackendError, match="in-place"):
        ntt.forward(polys[:, ::-1], in_place=True)
    frozen = polys.copy()
    frozen.setflags(write=False)
    with pytest.raises(BackendError, match="in-place"):
        ntt.forward(frozen, in_place=True)
