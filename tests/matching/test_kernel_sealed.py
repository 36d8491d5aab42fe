"""The multiply-accumulate kernel: exact against big integers and against SEAL's evaluator."""

from __future__ import annotations

import numpy as np
import pytest
import tenseal.sealapi as seal
from hypothesis import given, settings
from hypothesis import strategies as st

from pprm.crypto.context import CkksContext
from pprm.errors import BackendError
from pprm.matching import kernel, kernel_native, kernel_numpy, kernel_selfcheck
from pprm.matching.sealed import quantise_probe

# Real SEAL primes: the 60-bit prime of the sealed sets, plus smaller ones
# from other chains (all NTT-friendly, as SEAL makes them).
PRIMES_60 = tuple(m.value() for m in seal.CoeffModulus.Create(8192, [60, 60, 60]))
PRIMES_SMALL = tuple(m.value() for m in seal.CoeffModulus.Create(8192, [50, 40, 30]))
PRIMES = PRIMES_60 + PRIMES_SMALL
W = kernel.MAX_WEIGHT


def _reference(block: np.ndarray, weights: np.ndarray, moduli: tuple[int, ...]) -> np.ndarray:
    """``sum_k w_k * R_k mod q_j`` in Python integers (no overflow possible)."""
    d, size, lvl, n = block.shape
    out = np.empty((size, lvl, n), dtype=np.uint64)
    ws = [int(w) for w in weights]
    for s in range(size):
        for j, q in enumerate(moduli):
            cols = block[:, s, j, :].tolist()
            for c in range(n):
                out[s, j, c] = sum(ws[k] * cols[k][c] for k in range(d)) % q
    return out


@st.composite
def mac_cases(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    d = draw(st.integers(1, 300))
    moduli = tuple(draw(st.lists(st.sampled_from(PRIMES), min_size=1, max_size=2)))
    n = draw(st.sampled_from([1, 3, 8]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    weight = st.one_of(st.sampled_from([-W, W, 0, 1, -1, W - 1, -(W - 1)]), st.integers(-W, W))
    if draw(st.booleans()):
        weights = np.array(draw(st.lists(weight, min_size=d, max_size=d)), dtype=np.int64)
    else:
        # Whole vectors at one extreme stress the exactness bound the most.
        weights = np.full(d, draw(st.sampled_from([W, -W])), dtype=np.int64)
        weights[rng.random(d) < 0.1] = rng.integers(-W, W + 1)
    block = np.empty((d, 2, len(moduli), n), dtype=np.uint64)
    for j, q in enumerate(moduli):
        block[:, :, j, :] = rng.integers(0, q, size=(d, 2, n), dtype=np.uint64)
        mode = draw(st.sampled_from(["random", "max", "zero", "mixed"]))
        if mode == "max":
            block[:, :, j, :] = np.uint64(q - 1)
        elif mode == "zero":
            block[:, :, j, :] = 0
        elif mode == "mixed":
            pick = rng.random((d, 2, n))
            block[:, :, j, :][pick < 0.3] = np.uint64(q - 1)
            block[:, :, j, :][pick > 0.8] = 0
    return block, weights, moduli


@settings(max_examples=60)
@given(mac_cases())
def test_multiply_accumulate_is_exact(case: tuple[np.ndarray, np.ndarray, tuple[int, ...]]) -> None:
    block, weights, moduli = case
    got = kernel.multiply_accumulate(block, weights, moduli)
    assert got.dtype == np.uint64 and got.shape == block.shape[1:]
    assert np.array_equal(got, _reference(block, weights, moduli))


@pytest.mark.parametrize("d", [127, 128, 129, 256, 300, 513])
@pytest.mark.parametrize("sign", [1, -1])
def test_worst_case_magnitudes_across_group_boundaries(d: int, sign: int) -> None:
    # Every residue q-1 and every weight at +-2**16: the largest partial sums
    # the float64 GEMV can see; the group boundary (128 rows) is crossed.
    moduli = (PRIMES_60[0], PRIMES_SMALL[2])
    block = np.empty((d, 2, 2, 4), dtype=np.uint64)
    for j, q in enumerate(moduli):
        block[:, :, j, :] = np.uint64(q - 1)
    weights = np.full(d, sign * W, dtype=np.int64)
    assert np.array_equal(kernel.multiply_accumulate(block, weights, moduli), _reference(block, weights, moduli))


def test_accepts_read_only_memory_maps(tmp_path: object) -> None:
    rng = np.random.default_rng(3)
    q = PRIMES_60[0]
    block = rng.integers(0, q, size=(40, 2, 1, 16), dtype=np.uint64)
    path = f"{tmp_path}/b.npy"
    np.save(path, block)
    mapped = np.load(path, mmap_mode="r")
    w = rng.integers(-W, W + 1, size=40)
    assert np.array_equal(kernel.multiply_accumulate(mapped, w, (q,)), _reference(block, w, (q,)))


@settings(max_examples=200)
@given(q=st.sampled_from(PRIMES), bits=st.integers(0, 32), data=st.data())
def test_mulmod_pow2_is_exact(q: int, bits: int, data: st.DataObject) -> None:
    xs = data.draw(st.lists(st.one_of(st.integers(0, q - 1), st.sampled_from([0, 1, q - 1, q - 2, q // 2])),
                            min_size=1, max_size=64))
    got = kernel.mulmod_pow2(np.array(xs, dtype=np.uint64), bits, q)
    assert got.dtype == np.uint64
    assert [int(v) for v in got] == [(x << bits) % q for x in xs]


# -- rejections ---------------------------------------------------------------

def _ok_block(d: int = 4, lvl: int = 1) -> np.ndarray:
    return np.zeros((d, 2, lvl, 8), dtype=np.uint64)


@pytest.mark.parametrize("bad", [W + 1, -(W + 1), 2**40, -(2**63)])
def test_rejects_weights_beyond_16_bits(bad: int) -> None:
    w = np.array([0, 1, bad, 0], dtype=np.int64)
    with pytest.raises(BackendError, match="2\\*\\*16"):
        kernel.multiply_accumulate(_ok_block(), w, (PRIMES_60[0],))


def test_rejects_unsigned_weights_that_would_wrap() -> None:
    w = np.array([0, 1, 2**64 - 1, 0], dtype=np.uint64)  # would be -1 after a cast to int64
    with pytest.raises(BackendError):
        kernel.multiply_accumulate(_ok_block(), w, (PRIMES_60[0],))
    ok = np.array([0, 1, W, 0], dtype=np.uint64)
    assert kernel.multiply_accumulate(_ok_block(), ok, (PRIMES_60[0],)).shape == (2, 1, 8)


@pytest.mark.parametrize("dtype", [np.int64, np.uint32, np.float64, np.int32, np.object_])
def test_rejects_block_of_wrong_dtype(dtype: type[np.generic]) -> None:
    block = _ok_block().astype(dtype)
    with pytest.raises(BackendError):
        kernel.multiply_accumulate(block, np.zeros(4, dtype=np.int64), (PRIMES_60[0],))


@pytest.mark.parametrize("weights", [np.array([0.5, 1.0, 2.0, 3.0]), np.array([1.0, 0, 0, 0], dtype=np.float32),
                                     np.array([1, 0, 0, 0], dtype=np.complex128), np.array(["1", "0", "0", "0"])])
def test_rejects_weights_of_non_integer_dtype(weights: np.ndarray) -> None:
    # Casting 0.5 to 0 silently would compute the wrong score.
    with pytest.raises(BackendError):
        kernel.multiply_accumulate(_ok_block(), weights, (PRIMES_60[0],))


def test_rejects_inconsistent_shapes_and_moduli() -> None:
    q = PRIMES_60[0]
    w = np.zeros(4, dtype=np.int64)
    with pytest.raises(BackendError):
        kernel.multiply_accumulate(_ok_block()[0], w, (q,))  # 3-d block
    with pytest.raises(BackendError):
        kernel.multiply_accumulate(_ok_block(lvl=2), w, (q,))  # L != len(moduli)
    with pytest.raises(BackendError):
        kernel.multiply_accumulate(_ok_block(), np.zeros(5, dtype=np.int64), (q,))
    with pytest.raises(BackendError):
        kernel.multiply_accumulate(_ok_block(), np.zeros((4, 1), dtype=np.int64), (q,))
    with pytest.raises(BackendError):
        kernel.multiply_accumulate(_ok_block(), w, (1 << 60,))


# -- against SEAL's own evaluator ---------------------------------------------

def test_matches_seal_multiply_plain_add_chain(sealed_ctx: CkksContext,
                                               sealed_keypair: tuple[seal.SecretKey, seal.PublicKey]) -> None:
    """The kernel's residues equal SEAL's ``multiply_plain``/``add`` chain bit for bit.

    ``w_k`` is encoded as a constant at scale 1, i.e. the constant polynomial
    ``w_k`` (exact for integers), so SEAL computes exactly ``sum_k w_k C_k``
    in NTT form and there is nothing to tolerate: residues must be identical.
    The decrypted score is then compared with the float64 plaintext score;
    the tolerance 2e-4 is about ten standard deviations of the fresh
    encryption noise (~1.3e-5 per slot at scale 2**24) summed over a
    unit-norm probe, plus the probe quantisation error (<= 2**-16 per weight).
    """
    sk = sealed_keypair[0]
    rng = np.random.default_rng(11)
    d = 150  # crosses the 128-row group boundary
    gallery = rng.standard_normal((sealed_ctx.slots, d))
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    probe = rng.standard_normal(d)
    probe /= np.linalg.norm(probe)
    w = quantise_probe(probe, 15)
    w[0], w[1] = W, -W  # include both extremes
    enc = seal.Encryptor(sealed_ctx.seal, sk)
    cts = []
    for k in range(d):
        ct = seal.Ciphertext(sealed_ctx.seal)
        enc.encrypt_symmetric(sealed_ctx.encode(gallery[:, k], 24), ct)
        cts.append(ct)
    block = np.stack([sealed_ctx.to_residues(ct) for ct in cts])
    mine = kernel.multiply_accumulate(block, w, sealed_ctx.moduli)

    acc: seal.Ciphertext | None = None
    for k in range(d):
        if w[k] == 0:
            continue  # SEAL refuses to produce a transparent product
        pt = seal.Plaintext()
        sealed_ctx.encoder.encode(float(w[k]), sealed_ctx.parms_id, 1.0, pt)
        prod = seal.Ciphertext(sealed_ctx.seal)
        sealed_ctx.evaluator.multiply_plain(cts[k], pt, prod)
        if acc is None:
            acc = prod
        else:
            sealed_ctx.evaluator.add_inplace(acc, prod)
    assert acc is not None and acc.scale == 2.0**24
    assert np.array_equal(sealed_ctx.to_residues(acc), mine)

    pt = seal.Plaintext()
    seal.Decryptor(sealed_ctx.seal, sk).decrypt(sealed_ctx.from_residues(mine, 2.0**39), pt)
    scores = sealed_ctx.decode(pt)
    exact = gallery @ (w.astype(np.float64) / 2**15)
    assert np.abs(scores - exact).max() < 2e-4


def test_backend_selection() -> None:
    assert kernel.BACKEND in kernel.available_backends()
    assert "numpy" in kernel.available_backends()


def test_self_check_against_seal_accepts_both_kernels_and_catches_a_wrong_one() -> None:
    assert kernel_selfcheck.mac_agrees_with_seal(kernel_numpy.multiply_accumulate)
    if kernel_native.available():
        assert kernel_selfcheck.mac_agrees_with_seal(kernel_native.multiply_accumulate)

    def off_by_one(block: np.ndarray, w: np.ndarray, moduli: tuple[int, ...]) -> np.ndarray:
        out = kernel_numpy.multiply_accumulate(block, w, moduli)
        out[1, 0, 7] = (out[1, 0, 7] + np.uint64(1)) % np.uint64(moduli[0])
        return out

    assert not kernel_selfcheck.mac_agrees_with_seal(off_by_one)
