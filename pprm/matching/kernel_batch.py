"""Several probes against one block in one pass: the batched multiply-accumulate.

A batch of B sealed queries needs ``S_b = sum_k W[b, k] * C_k (mod q)`` for
every probe b: the same 512 ciphertexts read once, B weight rows. That is a
GEMM, and a float64 GEMM is exact here:

* each residue (< 2**60) is split into two 30-bit limbs, ``x = hi * 2**30 + lo``;
* the weights of a unit-norm probe are ``w_k = round(q_k * 2**15)``, so
  ``sum_k |w_k| <= 2**15 * sum_k |q_k| + d/2 <= 2**15 * sqrt(d) + d/2``
  (Cauchy-Schwarz with ``||q|| = 1``): 741,711 for d = 512, below 2**20;
* every partial sum of ``w_k * limb_k``, in whatever order BLAS adds, is
  then below ``2**20 * 2**30 = 2**50 < 2**53`` in magnitude: an integer that
  float64 holds exactly. :data:`MAX_ROW_L1` (2**23) is the bound actually
  enforced, with the same margin argument (``2**23 * 2**30 = 2**53``).

So the limb sums come out of BLAS as exact integers, and reducing
``hi_sum * 2**30 + lo_sum`` mod q gives, bit for bit, the words of SEAL's
``multiply_plain`` + ``add`` chain (and of the single-probe kernels, which
tests/matching/test_kernel_batch.py compares it with). A weight row outside
the bound (not a unit-norm probe) is refused, not rounded.

The limbs are made per column tile (:data:`TILE` words of all d rows), so
the gallery is never stored split, and the tile stays in cache while BLAS
multiplies it by the B rows.

With the native backend (:func:`pprm.matching.kernel.backend`), the same sums
are computed in C instead
(:func:`pprm.matching.kernel_native.multiply_accumulate_many`, native/pprm_batch.c):
the same limbs and the same bound, float64 fused multiply-adds in registers,
the block read from memory once for all B probes, on the kernel's own
pthreads. That avoids the BLAS path's passes over tile temporaries and
OpenBLAS's spin-waiting threads, which collapse when another process holds a
core. The BLAS path stays the numpy backend's, and the two agree bit for bit
(tests/matching/test_kernel_batch.py, and the native self-check).
"""

from __future__ import annotations

import numpy as np

from pprm.errors import BackendError
from pprm.matching import kernel, kernel_native
from pprm.matching.kernel_native import MAX_ROW_L1, WORD_RANGE_ERROR
from pprm.matching.kernel_native import check_many_args as _check
from pprm.matching.kernel_numpy import LIMB_BITS, mulmod_pow2

__all__ = ["MAX_ROW_L1", "TILE", "multiply_accumulate_many"]

# MAX_ROW_L1 (2**23), sum_k |w_k| per row: MAX_ROW_L1 * (2**30 - 1) < 2**53, so
# every partial sum is exact. Defined, with the argument checks (_check), in
# kernel_native, which this module dispatches to and so cannot be imported by.

# Columns per tile: 512 rows x 1024 words x 8 B = 4 MB per limb array, which
# stays in a server's last-level cache next to the B x 1024 results.
TILE = 1024
_MASK = np.uint64((1 << LIMB_BITS) - 1)


def multiply_accumulate_many(block: np.ndarray, weights: np.ndarray, moduli: tuple[int, ...],
                             out: np.ndarray | None = None) -> np.ndarray:
    """``out[b] = sum_k weights[b, k] * block[k] mod q_j``, exactly, for every row b at once.

    Args:
        block: ``uint64[d, size, L, N]`` residues of ``d`` ciphertexts, each
            below its prime (may be a read-only memory map).
        weights: ``int64[B, d]``, every row with ``sum_k |w| <= 2**23``
            (the weights of any unit-norm probe at 2**15 qualify).
        moduli: the L primes, each below 2**60.
        out: where to write the result (``uint64[B, size, L, N]``,
            C-contiguous, writable, apart from ``block``), or None for a new
            array (:func:`pprm.matching.kernel_native.result_buffer`).

    Returns:
        ``uint64[B, size, L, N]``, each residue in ``[0, q_j)``: row b equals
        the single-probe kernel's result for ``weights[b]``; ``out`` when given.

    Raises:
        BackendError: a dtype, shape or modulus outside the contract, an
            ``out`` that does not fit, a weight row above the exactness bound, or a block word of 2**60
            or more; also what :func:`pprm.matching.kernel.backend` raises
            when it chooses the backend (e.g. an unavailable ``PPRM_BACKEND``).
    """
    w = _check(block, weights, moduli)
    if kernel.backend() == "native":
        return kernel_native.multiply_accumulate_many(block, w, moduli, out=out)
    if out is None:
        return _blas_many(block, w, moduli)
    buf = kernel_native.result_buffer(out, (w.shape[0], *block.shape[1:]), block)
    buf[...] = _blas_many(block, w, moduli)
    return buf


def _blas_many(block: np.ndarray, w: np.ndarray, moduli: tuple[int, ...]) -> np.ndarray:
    """The numpy backend's :func:`multiply_accumulate_many`: two float64 GEMMs per column tile.

    Args:
        block: ``uint64[d, size, L, N]``, checked by :func:`_check`.
        w: ``int64[B, d]`` as :func:`_check` returns it.
        moduli: the L primes.

    Returns:
        ``uint64[B, size, L, N]``, each residue in ``[0, q_j)``.

    Raises:
        BackendError: a block word of 2**60 or more (its high limb would not
            fit 30 bits, and the sums would no longer be exact).
    """
    d = block.shape[0]
    nb = w.shape[0]
    out_shape = (nb, *block.shape[1:])
    if nb == 0:
        return np.zeros(out_shape, dtype=np.uint64)
    if d == 0:
        return np.zeros(out_shape, dtype=np.uint64)
    flat = block.reshape(d, -1)
    m = flat.shape[1]
    wf = w.astype(np.float64)
    lo_i = np.empty((nb, m), dtype=np.int64)
    hi_i = np.empty((nb, m), dtype=np.int64)
    # One set of tile buffers for the whole block: fresh multi-megabyte
    # temporaries per tile cost a page fault per 4 KB, as much as the GEMM.
    # Operands and results stay contiguous, which numpy hands to BLAS; a
    # strided output would send it to a generic loop 30x slower.
    width = min(TILE, m)
    words = np.empty((d, width), dtype=np.uint64)
    lo = np.empty((d, width), dtype=np.float64)
    hi = np.empty((d, width), dtype=np.float64)
    acc = np.empty((nb, width), dtype=np.float64)
    for start in range(0, m, width):
        c = min(width, m - start)
        cols = flat[:, start:start + c]
        if c < width:  # the last, narrower tile: its own (small) buffers
            words, lo, hi, acc = (np.empty((d, c), np.uint64), np.empty((d, c)), np.empty((d, c)),
                                  np.empty((nb, c)))
        np.bitwise_and(cols, _MASK, out=words)
        np.copyto(lo, words, casting="unsafe")
        np.right_shift(cols, np.uint64(LIMB_BITS), out=words)
        if int(words.max()) >> LIMB_BITS:
            raise BackendError(WORD_RANGE_ERROR)
        np.copyto(hi, words, casting="unsafe")
        np.matmul(wf, lo, out=acc)
        np.copyto(lo_i[:, start:start + c], acc, casting="unsafe")
        np.matmul(wf, hi, out=acc)
        np.copyto(hi_i[:, start:start + c], acc, casting="unsafe")
    lo_i = lo_i.reshape(out_shape)
    hi_i = hi_i.reshape(out_shape)
    res = np.empty(out_shape, dtype=np.uint64)
    for j, q in enumerate(moduli):
        qi = np.int64(q)
        h = mulmod_pow2((hi_i[:, :, j, :] % qi).view(np.uint64), LIMB_BITS, int(q)).view(np.int64)
        s = h + lo_i[:, :, j, :] % qi
        res[:, :, j, :] = np.where(s >= qi, s - qi, s).view(np.uint64)
    return res
