"""Exact CKKS encoding in extended precision, in SEAL's slot order.

SEAL's ``CKKSEncoder`` computes the inverse canonical embedding in float64.
Its relative error (about 1e-16 per coefficient, partly systematic) adds up
over the 512 diagonals of a blind-profile inner product and costs two bits
of the precision the noise flood needs (docs/DESIGN.md section 9). This module
computes the same polynomial with an x87 80-bit ``numpy.longdouble`` FFT
(64-bit mantissa), rounds each coefficient to the nearest integer, and
reduces it modulo each prime. SEAL then only does the NTT (see
:meth:`pprm.crypto.context.CkksContext.to_ntt`), which is exact.

SEAL's slot ``j`` is the evaluation of the message polynomial at
``zeta**(3**j mod 2N)`` with ``zeta = exp(i*pi/N)``; the conjugate slots sit
at ``zeta**(-3**j)``. :func:`slot_exponents` gives that order, and a test
checks it against SEAL's own encoder.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from pprm.errors import CiphertextError

__all__ = ["slot_exponents", "encode_coefficients", "coefficients_to_residues", "bit_reversal"]

# pi to 36 digits; np.longdouble parses a decimal string at full precision.
_PI = np.longdouble("3.14159265358979323846264338327950288")
_LD_MANTISSA_BITS = 64


def _check_longdouble() -> None:
    # On platforms where long double is plain double (e.g. Windows, aarch64
    # macOS) the encoding would silently lose the precision it exists for.
    if np.finfo(np.longdouble).nmant + 1 < _LD_MANTISSA_BITS:
        raise CiphertextError("exact encoding needs an 80-bit long double (x86-64 Linux)")


@lru_cache(maxsize=8)
def slot_exponents(n: int) -> np.ndarray:
    """Odd exponents ``t_j = 3**j mod 2N`` of SEAL's slots ``j < N/2``.

    Args:
        n: the ring dimension N.

    Returns:
        ``int64[N/2]``; slot ``j`` is ``m(zeta**t_j)``.
    """
    m = 2 * n
    out = np.empty(n // 2, dtype=np.int64)
    g = 1
    for j in range(n // 2):
        out[j] = g
        g = (g * 3) % m
    out.flags.writeable = False
    return out


@lru_cache(maxsize=8)
def _plan(n: int) -> tuple[np.ndarray, np.ndarray, list[np.ndarray], np.ndarray]:
    t = slot_exponents(n)
    # Index u of the odd exponent t = 2u + 1 in the length-N transform.
    pos = (t - 1) // 2
    neg = (2 * n - t - 1) // 2
    # Twiddles exp(-2*pi*i*k/size) for each radix-2 stage, in longdouble.
    stages = []
    size = 2
    while size <= n:
        k = np.arange(size // 2, dtype=np.longdouble)
        ang = -2 * _PI * k / size
        stages.append((np.cos(ang) + 1j * np.sin(ang)).astype(np.clongdouble))
        size *= 2
    k = np.arange(n, dtype=np.longdouble)
    ang = -_PI * k / n
    twist = (np.cos(ang) + 1j * np.sin(ang)).astype(np.clongdouble)
    rev = bit_reversal(n)
    return np.stack([pos, neg]), rev, stages, twist


def bit_reversal(n: int) -> np.ndarray:
    """``int64[n]``: index ``k`` with its ``log2(n)`` bits reversed (``n`` a power of two)."""
    bits = n.bit_length() - 1
    idx = np.arange(n)
    rev = np.zeros(n, dtype=np.int64)
    for b in range(bits):
        rev |= ((idx >> b) & 1) << (bits - 1 - b)
    return rev


def _dft(x: np.ndarray, rev: np.ndarray, stages: list[np.ndarray]) -> np.ndarray:
    """``sum_u x[..., u] * exp(-2*pi*i*u*k/N)`` for every k, in longdouble."""
    a = x[..., rev]
    n = a.shape[-1]
    lead = a.shape[:-1]
    size = 2
    for w in stages:
        half = size // 2
        a = a.reshape(*lead, n // size, 2, half)
        even = a[..., 0, :]
        odd = a[..., 1, :] * w
        a = np.concatenate((even + odd, even - odd), axis=-1)
        size *= 2
    return a.reshape(*lead, n)


def encode_coefficients(values: np.ndarray, scale_bits: int, n: int) -> np.ndarray:
    """Round ``2**scale_bits * m`` where ``m`` is the message polynomial of ``values``.

    Args:
        values: ``[..., k]`` real or complex slot values, ``k <= N/2``;
            missing slots are zero.
        scale_bits: log2 of the encoding scale.
        n: the ring dimension N.

    Returns:
        ``longdouble[..., N]`` integer-valued coefficients.

    Raises:
        CiphertextError: too many values, or no 80-bit long double here.
    """
    _check_longdouble()
    vals = np.asarray(values)
    if vals.shape[-1] > n // 2:
        raise CiphertextError(f"cannot encode {vals.shape[-1]} values into {n // 2} slots")
    idx, rev, stages, twist = _plan(n)
    z = np.zeros((*vals.shape[:-1], n // 2), dtype=np.clongdouble)
    z[..., : vals.shape[-1]] = vals
    spectrum = np.zeros((*vals.shape[:-1], n), dtype=np.clongdouble)
    spectrum[..., idx[0]] = z
    spectrum[..., idx[1]] = np.conj(z)
    # m_k = (1/N) sum over odd t of m(zeta**t) * zeta**(-k*t); with t = 2u + 1
    # that is zeta**(-k) times a length-N DFT of the values indexed by u.
    coeffs = (_dft(spectrum, rev, stages) * twist).real
    scale = np.ldexp(np.longdouble(1.0), scale_bits) / n
    return np.rint(coeffs * scale)


def coefficients_to_residues(coeffs: np.ndarray, moduli: tuple[int, ...]) -> np.ndarray:
    """Reduce integer-valued longdouble coefficients modulo each prime.

    Args:
        coeffs: ``longdouble[..., N]`` integers (any magnitude a longdouble holds).
        moduli: the primes, each below 2**62.

    Returns:
        ``uint64[..., L, N]`` residues in ``[0, q)``.
    """
    out = np.empty((*coeffs.shape[:-1], len(moduli), coeffs.shape[-1]), dtype=np.uint64)
    for j, q in enumerate(moduli):
        # fmod is exact in IEEE arithmetic; the result has |r| < q < 2**62.
        r = np.fmod(coeffs, np.longdouble(q)).astype(np.int64)
        out[..., j, :] = np.where(r < 0, r + q, r).astype(np.uint64)
    return out
