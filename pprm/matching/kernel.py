"""The batched multiply-accumulate over RNS residues, and backend selection.

Both profiles spend their time in ``S = sum_k w_k * C_k (mod q)``: integer
weights times the residues of ``d`` ciphertexts. This module holds the pure
numpy implementation. The native one (:mod:`pprm.matching._native`, a cffi
C kernel that setup.py builds when a compiler is present) has the same
signature; it is chosen when it loads and passes a bit-for-bit self-check
against the numpy path. :data:`BACKEND` names the active one, and
``PPRM_BACKEND=numpy`` forces the numpy path.

The numpy path is exact. Each residue (< 2**60) is split into two 30-bit
limbs; with ``|w_k| <= 2**16`` a product is below 2**46, so a float64 GEMV
over :data:`GROUP` rows sums at most 2**53 in magnitude and every partial sum
is an exactly representable integer whatever order BLAS adds in. Group sums
are added in int64 and reduced mod q once per output coefficient.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable

import numpy as np

from pprm.errors import BackendError
from pprm.matching import _native
from pprm.matching.mac_args import MAX_WEIGHT, check_mac_args

__all__ = ["BACKEND", "MAX_WEIGHT", "multiply_accumulate", "mulmod_pow2", "available_backends"]

LIMB_BITS = 30
_LIMB_MASK = np.uint64((1 << LIMB_BITS) - 1)
# 128 rows * 2**16 * 2**30 = 2**53: partial sums stay exact in float64.
GROUP = 128


_native_ok: bool | None = None


def available_backends() -> list[str]:
    """Backends that can run on this machine, fastest first."""
    global _native_ok
    if _native_ok is None:
        # Built, loadable, and bit-identical to the numpy path and to SEAL's own
        # evaluator; checked once per process.
        _native_ok = _native.available() and _native.self_check() and _agrees_with_seal(_native.multiply_accumulate)
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


# Selected last: the native self-check compares against _mac_numpy, defined above.
BACKEND = _select()
