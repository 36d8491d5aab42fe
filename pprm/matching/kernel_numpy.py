"""The pure numpy multiply-accumulate kernels: exact, portable, and the reference for the native ones.

Both profiles spend their time in ``S = sum_k w_k * C_k (mod q)``: integer
weights times the residues of ``d`` ciphertexts (:func:`multiply_accumulate`).
The blind profile's baby-step/giant-step matrix-vector product also needs
plaintexts times ciphertexts, ``out[g, s] = sum_b P[g, b] * C[b, s] (mod q)``,
coefficient by coefficient in NTT form (:func:`plain_mac`).
:mod:`pprm.matching.kernel_native` has the same functions with the same
arguments and results; :mod:`pprm.matching.kernel` chooses between them.

Both are exact. In :func:`multiply_accumulate` each residue (< 2**60) is
split into two 30-bit limbs; with ``|w_k| <= 2**16`` a product is below
2**46, so a float64 GEMV over :data:`GROUP` rows sums at most 2**53 in
magnitude and every partial sum is an exactly representable integer whatever
order BLAS adds in. Group sums are added in int64 and reduced mod q once per
output coefficient. :func:`plain_mac` splits both operands into 30-bit limbs
and sums the four limb products in uint64 (see :func:`plain_mac`).
"""

from __future__ import annotations

import numpy as np

from pprm.errors import BackendError
from pprm.matching.mac_args import PLAIN_RANGE_ERROR, check_mac_args, check_plain_mac_args

__all__ = ["LIMB_BITS", "GROUP", "PLAIN_CHUNK", "multiply_accumulate", "plain_mac", "mulmod_pow2"]

LIMB_BITS = 30
_LIMB_MASK = np.uint64((1 << LIMB_BITS) - 1)
# 128 rows * 2**16 * 2**30 = 2**53: partial sums stay exact in float64.
GROUP = 128
# plain_mac: b values per uint64 limb-product sum; 16 * (2**30 - 1)**2 < 2**64.
PLAIN_CHUNK = 16


def mulmod_pow2(x: np.ndarray, bits: int, q: int) -> np.ndarray:
    """``(x * 2**bits) mod q`` for uint64 ``x < q < 2**61`` and ``bits <= 32``.

    The quotient is estimated in float64 (off by at most one) and the
    remainder computed with wrapping uint64 arithmetic, then corrected.

    Args:
        x: residues below ``q`` (any integer dtype; read as uint64).
        bits: the power of two to multiply by, at most 32.
        q: the modulus, below 2**61.

    Returns:
        A fresh uint64 array of the same shape, each value in ``[0, q)``.
    """
    xq = x.astype(np.uint64)
    quo = np.floor(xq.astype(np.float64) * float(2**bits) / float(q)).astype(np.uint64)
    r = ((xq << np.uint64(bits)) - quo * np.uint64(q)).view(np.int64)
    qi = np.int64(q)
    r = np.where(r < 0, r + qi, r)
    r = np.where(r >= qi, r - qi, r)
    return r.view(np.uint64)


def multiply_accumulate(block: np.ndarray, weights: np.ndarray, moduli: tuple[int, ...]) -> np.ndarray:
    """Compute ``sum_k weights[k] * block[k] mod q_j`` exactly, in numpy.

    Same contract as :func:`pprm.matching.kernel.multiply_accumulate`.

    Args:
        block: ``uint64[d, size, L, N]`` residues of ``d`` ciphertexts (may be
            a read-only memory map).
        weights: ``int64[d]`` (any integer dtype) with ``|w| <= 2**16``.
        moduli: the L primes, each below 2**60.

    Returns:
        ``uint64[size, L, N]``: the residues of the linear combination, each in ``[0, q_j)``.

    Raises:
        BackendError: shapes or ranges the kernel cannot compute exactly
            (:func:`~pprm.matching.mac_args.check_mac_args`).
    """
    w = check_mac_args(block, weights, moduli)
    if block.shape[0] == 0:
        # The empty sum; the grouped GEMV cannot reshape a zero-row block.
        return np.zeros(block.shape[1:], dtype=np.uint64)
    d = block.shape[0]
    out_shape = block.shape[1:]
    flat = block.reshape(d, -1)
    acc_lo = np.zeros(flat.shape[1], dtype=np.int64)
    acc_hi = np.zeros(flat.shape[1], dtype=np.int64)
    for start in range(0, d, GROUP):
        rows = flat[start:start + GROUP]
        wf = w[start:start + GROUP].astype(np.float64)
        acc_lo += (wf @ (rows & _LIMB_MASK).astype(np.float64)).astype(np.int64)
        acc_hi += (wf @ (rows >> np.uint64(LIMB_BITS)).astype(np.float64)).astype(np.int64)
    # out_shape is [size, L, N]: reduce each prime's rows by its own modulus.
    lo = acc_lo.reshape(out_shape)
    hi = acc_hi.reshape(out_shape)
    res = np.empty(out_shape, dtype=np.uint64)
    for j, q in enumerate(moduli):
        qi = np.int64(q)
        h = mulmod_pow2((hi[:, j, :] % qi).view(np.uint64), LIMB_BITS, q).view(np.int64)
        s = h + lo[:, j, :] % qi
        res[:, j, :] = np.where(s >= qi, s - qi, s).view(np.uint64)
    return res


def _fold_limb_sums(wide: np.ndarray, lanes: np.ndarray) -> None:
    """Add limb-product sums ``lanes = [A0, A01, A10, A11]`` into ``wide = [W0, W1, W2, W3]``.

    ``A0 + 2**30 (A01 + A10) + 2**60 A11`` is cut at every 30th bit and the
    pieces are added by weight: ``W_k`` has weight ``2**(30 k)``. Each W gains
    less than 2**35 per call, so 16 calls (b <= 256) keep it below 2**39.
    """
    a0, a01, a10, a11 = lanes
    shift = np.uint64(LIMB_BITS)
    wide[0] += a0 & _LIMB_MASK
    wide[1] += (a0 >> shift) + (a01 & _LIMB_MASK) + (a10 & _LIMB_MASK)
    wide[2] += (a01 >> shift) + (a10 >> shift) + (a11 & _LIMB_MASK)
    wide[3] += a11 >> shift


def plain_mac(pts: np.ndarray, cts: np.ndarray, moduli: tuple[int, ...]) -> np.ndarray:
    """Compute ``out[g, s] = sum_b pts[g, b] * cts[b, s] mod q_l`` exactly, in numpy.

    Same contract as :func:`pprm.matching.kernel.plain_mac`. Both operands
    are split into 30-bit limbs, ``x = x0 + 2**30 x1``, so ``x y = x0 y0 +
    2**30 (x0 y1 + x1 y0) + 2**60 x1 y1`` with four limb products below
    2**60. Each is summed in uint64 over :data:`PLAIN_CHUNK` values of b
    (below 2**64), the chunk sums are folded into four wide limbs
    (:func:`_fold_limb_sums`), and the total, below 2**128, is reduced mod q
    once per output coefficient by Horner's rule with :func:`mulmod_pow2`.
    Vectorised over s, l and n; the loop is over g and b.

    Args:
        pts: ``uint64[G, B, L, N]`` plaintext residues in NTT form,
            C-contiguous (may be a read-only memory map).
        cts: ``uint64[B, S, L, N]`` ciphertext residues in NTT form, C-contiguous.
        moduli: the L primes, each in ``[2, 2**60)``.

    Returns:
        ``uint64[G, S, L, N]``: the residues of the G sums, each in ``[0, q_l)``.

    Raises:
        BackendError: an argument fails
            :func:`~pprm.matching.mac_args.check_plain_mac_args`, or a residue
            is not below its modulus (checked per g, before it is used; the
            limb bounds need it).
    """
    check_plain_mac_args(pts, cts, moduli)
    g_count, b_count, nprimes, n = pts.shape
    size = cts.shape[1]
    out = np.zeros((g_count, size, nprimes, n), dtype=np.uint64)
    if out.size == 0 or b_count == 0:
        return out  # no coefficients, or the empty sum
    q = np.asarray(moduli, dtype=np.uint64)
    if bool((cts.max(axis=(0, 1, 3)) >= q).any()):
        raise BackendError(PLAIN_RANGE_ERROR)
    shift = np.uint64(LIMB_BITS)
    # [B, 2, S, L, N]: the low and high limbs of every cts residue, so that one
    # multiply makes two limb products.
    c_limbs = np.stack([cts & _LIMB_MASK, cts >> shift], axis=1)
    prod = np.empty((2, size, nprimes, n), dtype=np.uint64)
    for g in range(g_count):
        p = pts[g]
        if bool((p.max(axis=(0, 2)) >= q).any()):
            raise BackendError(PLAIN_RANGE_ERROR)
        p_lo, p_hi = p & _LIMB_MASK, p >> shift
        wide = np.zeros((4, size, nprimes, n), dtype=np.uint64)
        lanes = np.empty_like(wide)  # A0, A01, A10, A11
        for b0 in range(0, b_count, PLAIN_CHUNK):
            lanes.fill(0)
            for b in range(b0, min(b0 + PLAIN_CHUNK, b_count)):
                np.multiply(p_lo[b], c_limbs[b], out=prod)
                lanes[0:2] += prod
                np.multiply(p_hi[b], c_limbs[b], out=prod)
                lanes[2:4] += prod
            _fold_limb_sums(wide, lanes)
        for j, qj in enumerate(moduli):
            # Horner: ((W3 * 2**30 + W2) * 2**30 + W1) * 2**30 + W0, mod q at every step.
            qi = np.uint64(qj)
            r = wide[3, :, j] % qi
            for k in (2, 1, 0):
                r = mulmod_pow2(r, LIMB_BITS, int(qj)) + wide[k, :, j] % qi
                r = np.where(r >= qi, r - qi, r)
            out[g, :, j] = r
    return out
