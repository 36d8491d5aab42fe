"""The batched multiply-accumulates over RNS residues, and backend selection.

Both profiles spend their time in ``S = sum_k w_k * C_k (mod q)``: integer
weights times the residues of ``d`` ciphertexts. The blind profile's
baby-step/giant-step matrix-vector product also needs plaintexts times
ciphertexts, ``out[g, s] = sum_b P[g, b] * C[b, s] (mod q)``, coefficient by
coefficient in NTT form (:func:`plain_mac`). This module holds the pure numpy
implementations. The native ones (:mod:`pprm.matching._native`, cffi C
kernels that setup.py builds when a compiler is present) have the same
signatures; they are chosen when they load and pass bit-for-bit self-checks
against the numpy paths and against SEAL's own evaluator. :data:`BACKEND`
names the active backend, and ``PPRM_BACKEND=numpy`` forces the numpy paths.

The numpy paths are exact. In :func:`multiply_accumulate` each residue
(< 2**60) is split into two 30-bit limbs; with ``|w_k| <= 2**16`` a product
is below 2**46, so a float64 GEMV over :data:`GROUP` rows sums at most 2**53
in magnitude and every partial sum is an exactly representable integer
whatever order BLAS adds in. Group sums are added in int64 and reduced mod q
once per output coefficient. :func:`plain_mac` splits both operands into
30-bit limbs and sums the four limb products in uint64 (see
:func:`_plain_mac_numpy`).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from pprm.errors import BackendError
from pprm.matching import _native
from pprm.matching.mac_args import MAX_WEIGHT, PLAIN_RANGE_ERROR, check_mac_args, check_plain_mac_args

__all__ = ["BACKEND", "MAX_WEIGHT", "multiply_accumulate", "plain_mac", "mulmod_pow2", "available_backends"]

LIMB_BITS = 30
_LIMB_MASK = np.uint64((1 << LIMB_BITS) - 1)
# 128 rows * 2**16 * 2**30 = 2**53: partial sums stay exact in float64.
GROUP = 128
# plain_mac: b values per uint64 limb-product sum; 16 * (2**30 - 1)**2 < 2**64.
PLAIN_CHUNK = 16


_native_ok: bool | None = None


def available_backends() -> list[str]:
    """Backends that can run on this machine, fastest first."""
    global _native_ok
    if _native_ok is None:
        # Built, loadable, and bit-identical to the numpy paths and to SEAL's own
        # evaluator; checked once per process.
        _native_ok = (
            _native.available()
            and _native.self_check()
            and _agrees_with_seal(_native.multiply_accumulate)
            and _plain_agrees_with_seal(_native.plain_mac)
        )
        if _native.available() and not _native_ok:
            warnings.warn("pprm native kernel failed its self-check against numpy and SEAL; using numpy",
                          RuntimeWarning, stacklevel=2)
        if not _native.available() and os.environ.get("PPRM_BACKEND", "").strip().lower() != "numpy":
            warnings.warn("pprm native kernel is not built (no C compiler at install?); using the numpy kernel",
                          RuntimeWarning, stacklevel=2)
    return ["native", "numpy"] if _native_ok else ["numpy"]


def _agrees_with_seal(mac: Callable[[np.ndarray, np.ndarray, tuple[int, ...]], np.ndarray]) -> bool:
    """Does ``mac`` reproduce SEAL's ``multiply_plain`` + ``add`` chain bit for bit on a small case?

    A weight encoded as a CKKS constant at scale 1 is the constant polynomial
    ``w``, so SEAL's chain computes exactly ``sum_k w_k C_k`` in NTT form.
    """
    import tenseal.sealapi as seal

    from pprm.crypto import params as param_sets
    from pprm.crypto.context import CkksContext

    ctx = CkksContext(param_sets.get("INSECURE-sealed-n1024", allow_insecure=True))
    enc = seal.Encryptor(ctx.seal, seal.KeyGenerator(ctx.seal).secret_key())
    weights = np.array([MAX_WEIGHT, -MAX_WEIGHT, 12345], dtype=np.int64)
    values = np.random.default_rng(5).uniform(-1.0, 1.0, (weights.size, ctx.slots))
    cts, acc = [], None
    for k, w in enumerate(weights):
        ct = seal.Ciphertext(ctx.seal)
        enc.encrypt_symmetric(ctx.encode(values[k], 24), ct)
        cts.append(ct)
        pt = seal.Plaintext()
        ctx.encoder.encode(float(w), ctx.parms_id, 1.0, pt)
        prod = seal.Ciphertext(ctx.seal)
        ctx.evaluator.multiply_plain(ct, pt, prod)
        if acc is None:
            acc = prod
        else:
            ctx.evaluator.add_inplace(acc, prod)
    block = np.stack([ctx.to_residues(ct) for ct in cts])
    return acc is not None and bool(np.array_equal(mac(block, weights, ctx.moduli), ctx.to_residues(acc)))


def _plaintext_residues(pt: Any, primes: int, n: int) -> np.ndarray:
    """Copy an NTT-form SEAL plaintext's residues out as ``uint64[L, N]``.

    sealapi offers a plaintext's words one at a time (``Plaintext.data(i)``);
    SEAL keeps a CKKS plaintext in NTT form as L rows of N words, prime by
    prime, which is the layout :func:`plain_mac` takes. Fine for checks; far
    too slow (one Python call per word) for real plaintexts.

    Args:
        pt: a ``tenseal.sealapi.Plaintext`` in NTT form at a level with ``primes`` primes.
        primes: L.
        n: the ring dimension N.

    Returns:
        A fresh ``uint64[primes, n]`` array.

    Raises:
        BackendError: the plaintext is not in NTT form or holds a different number of words.
    """
    if not pt.is_ntt_form() or pt.coeff_count() != primes * n:
        raise BackendError(f"plaintext is not an NTT-form plaintext of {primes} x {n} words")
    words = np.fromiter((pt.data(i) for i in range(primes * n)), dtype=np.uint64, count=primes * n)
    return words.reshape(primes, n)


def _plain_agrees_with_seal(mac: Callable[[np.ndarray, np.ndarray, tuple[int, ...]], np.ndarray]) -> bool:
    """Does ``mac`` (a ``plain_mac``) reproduce SEAL's ``multiply_plain`` + ``add`` chain bit for bit?

    Three ciphertexts (fresh, symmetric) and two rows of three plaintexts of
    random slot values; SEAL sums ``multiply_plain(C_b, P_gb)`` over b for
    each g, in NTT form, which is exactly what ``plain_mac`` computes.
    """
    import tenseal.sealapi as seal

    from pprm.crypto import params as param_sets
    from pprm.crypto.context import CkksContext

    ctx = CkksContext(param_sets.get("INSECURE-sealed-n1024", allow_insecure=True))
    enc = seal.Encryptor(ctx.seal, seal.KeyGenerator(ctx.seal).secret_key())
    rng = np.random.default_rng(6)
    g_count, b_count = 2, 3
    cts = []
    for _ in range(b_count):
        ct = seal.Ciphertext(ctx.seal)
        enc.encrypt_symmetric(ctx.encode(rng.uniform(-1.0, 1.0, ctx.slots), 24), ct)
        cts.append(ct)
    # Scale 2**24 * 2**20 stays below the 60-bit modulus, as multiply_plain requires.
    pts = [[ctx.encode(rng.uniform(-1.0, 1.0, ctx.slots), 20) for _ in range(b_count)] for _ in range(g_count)]
    nl = len(ctx.moduli)
    try:
        got = mac(
            np.stack([np.stack([_plaintext_residues(pt, nl, ctx.n) for pt in row]) for row in pts]),
            np.stack([ctx.to_residues(ct) for ct in cts]),
            ctx.moduli,
        )
    except BackendError:
        return False  # e.g. a broken kernel that misreads valid residues as out of range
    for g in range(g_count):
        acc = seal.Ciphertext(ctx.seal)
        ctx.evaluator.multiply_plain(cts[0], pts[g][0], acc)
        for b in range(1, b_count):
            prod = seal.Ciphertext(ctx.seal)
            ctx.evaluator.multiply_plain(cts[b], pts[g][b], prod)
            ctx.evaluator.add_inplace(acc, prod)
        if not np.array_equal(got[g], ctx.to_residues(acc)):
            return False
    return True


def _select() -> str:
    wanted = os.environ.get("PPRM_BACKEND", "").strip().lower()
    have = available_backends()
    # CI sets PPRM_REQUIRE_NATIVE=1 so that a silently missing build fails loudly.
    if os.environ.get("PPRM_REQUIRE_NATIVE") == "1" and "native" not in have:
        raise BackendError("PPRM_REQUIRE_NATIVE=1 but the native kernel is not built or failed its self-check")
    if wanted and wanted not in have:
        raise BackendError(f"PPRM_BACKEND={wanted!r} is not available here (have: {', '.join(have)})")
    return wanted or have[0]


def mulmod_pow2(x: np.ndarray, bits: int, q: int) -> np.ndarray:
    """``(x * 2**bits) mod q`` for uint64 ``x < q < 2**61`` and ``bits <= 32``.

    The quotient is estimated in float64 (off by at most one) and the
    remainder computed with wrapping uint64 arithmetic, then corrected.
    """
    xq = x.astype(np.uint64)
    quo = np.floor(xq.astype(np.float64) * float(2**bits) / float(q)).astype(np.uint64)
    r = ((xq << np.uint64(bits)) - quo * np.uint64(q)).view(np.int64)
    qi = np.int64(q)
    r = np.where(r < 0, r + qi, r)
    r = np.where(r >= qi, r - qi, r)
    return r.view(np.uint64)


def _mac_numpy(block: np.ndarray, weights: np.ndarray, moduli: tuple[int, ...]) -> np.ndarray:
    d = block.shape[0]
    out_shape = block.shape[1:]
    flat = block.reshape(d, -1)
    acc_lo = np.zeros(flat.shape[1], dtype=np.int64)
    acc_hi = np.zeros(flat.shape[1], dtype=np.int64)
    for start in range(0, d, GROUP):
        rows = flat[start:start + GROUP]
        wf = weights[start:start + GROUP].astype(np.float64)
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


def _plain_mac_numpy(pts: np.ndarray, cts: np.ndarray, moduli: tuple[int, ...]) -> np.ndarray:
    """:func:`plain_mac` in numpy, exact for any moduli below 2**60 (arguments already checked).

    Both operands are split into 30-bit limbs, ``x = x0 + 2**30 x1``, so
    ``x y = x0 y0 + 2**30 (x0 y1 + x1 y0) + 2**60 x1 y1`` with four limb
    products below 2**60. Each is summed in uint64 over :data:`PLAIN_CHUNK`
    values of b (below 2**64), the chunk sums are folded into four wide limbs
    (:func:`_fold_limb_sums`), and the total, below 2**128, is reduced mod q
    once per output coefficient by Horner's rule with :func:`mulmod_pow2`.
    Vectorised over s, l and n; the loop is over g and b.

    Args:
        pts: ``uint64[G, B, L, N]`` plaintext residues.
        cts: ``uint64[B, S, L, N]`` ciphertext residues.
        moduli: the L moduli.

    Returns:
        ``uint64[G, S, L, N]``: the residues of the G sums.

    Raises:
        BackendError: a residue is not below its prime's modulus (checked per
            g, before it is used; the limb bounds need it).
    """
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


def plain_mac(pts: np.ndarray, cts: np.ndarray, moduli: tuple[int, ...]) -> np.ndarray:
    """Plaintexts times ciphertexts, summed: ``out[g, s] = sum_b pts[g, b] * cts[b, s] mod q_l``, exactly.

    Coefficient by coefficient, as SEAL's ``multiply_plain`` + ``add`` chain
    computes it on NTT-form residues: ``out[g, s, l, n] = (sum_b
    pts[g, b, l, n] * cts[b, s, l, n]) mod moduli[l]``. The blind profile's
    baby-step/giant-step matrix-vector product runs on it.

    Args:
        pts: ``uint64[G, B, L, N]``, C-contiguous, the residues of ``G * B``
            NTT-form plaintexts (may be a read-only ``np.memmap``; it is read once).
        cts: ``uint64[B, S, L, N]``, C-contiguous, the residues of ``B``
            NTT-form ciphertexts of ``S`` polynomials (normally 2).
        moduli: the L primes, each in ``[2, 2**60)``; every residue of prime
            row l must be below ``moduli[l]``.

    Returns:
        ``uint64[G, S, L, N]``: the residues of the G sums, each in ``[0, q_l)``.

    Raises:
        BackendError: a dtype, shape, layout, ``B > 256`` or modulus the
            kernels cannot compute exactly, or a residue not below its modulus.
    """
    check_plain_mac_args(pts, cts, moduli)
    if BACKEND == "native":
        return _native.plain_mac(pts, cts, moduli)
    return _plain_mac_numpy(pts, cts, moduli)


def multiply_accumulate(block: np.ndarray, weights: np.ndarray, moduli: tuple[int, ...]) -> np.ndarray:
    """Compute ``sum_k weights[k] * block[k] mod q_j`` exactly.

    Args:
        block: ``uint64[d, size, L, N]`` residues of ``d`` ciphertexts (may be
            a read-only memory map).
        weights: ``int64[d]`` with ``|w| <= 2**16``.
        moduli: the L primes, each below 2**60.

    Returns:
        ``uint64[size, L, N]``: the residues of the linear combination.

    Raises:
        BackendError: shapes or ranges the kernel cannot compute exactly.
    """
    w = check_mac_args(block, weights, moduli)
    if BACKEND == "native":
        return _native.multiply_accumulate(block, w, moduli)
    if block.shape[0] == 0:
        # The empty sum; _mac_numpy cannot reshape a zero-row block.
        return np.zeros(block.shape[1:], dtype=np.uint64)
    return _mac_numpy(block, w, moduli)


# Selected last: the native self-check compares against _mac_numpy and _plain_mac_numpy, defined above.
BACKEND = _select()
