"""RLWE-level noise flooding: a wide uniform polynomial added to c0.

After the responder's computation the result's noise is a function of its
gallery, and the requester holds the secret key: it could read that noise
off a decryption. Adding a polynomial with independent coefficients uniform
on ``[-2**k, 2**k)``, ``2**k`` far above the noise, makes the decryption's
distribution (statistically) independent of it (the smudging lemma): the
statistical distance per coefficient is at most ``B / 2**(k+1)`` for noise
coefficients bounded by ``B``.
"""

from __future__ import annotations

import os

import numpy as np

from pprm.matching.kernel_numpy import mulmod_pow2

__all__ = ["uniform_residues"]


def _mod_word(w: np.ndarray, q: int) -> np.ndarray:
    return w % np.uint64(q)


def _add_mod(a: np.ndarray, b: np.ndarray, q: int) -> np.ndarray:
    s = a + b  # both < q < 2**61: no wrap
    return np.where(s >= np.uint64(q), s - np.uint64(q), s)


def uniform_residues(bits: int, n: int, moduli: tuple[int, ...]) -> np.ndarray:
    """Residues of ``n`` integers uniform on ``[-2**bits, 2**bits)``, from ``os.urandom``.

    Args:
        bits: the flood width; at most 250.
        n: the number of coefficients.
        moduli: the primes (each below 2**61) to reduce by.

    Returns:
        ``uint64[L, n]``: the residues of one polynomial, in coefficient form.

    Warning:
        The randomness must come from a CSPRNG and never be reused: a known
        flood polynomial removes the flood.
    """
    words = (bits + 1 + 63) // 64
    raw = np.frombuffer(os.urandom(8 * words * n), dtype=np.uint64).reshape(words, n).copy()
    top_bits = bits + 1 - 64 * (words - 1)
    if top_bits < 64:
        raw[0] &= np.uint64((1 << top_bits) - 1)
    out = np.empty((len(moduli), n), dtype=np.uint64)
    for j, q in enumerate(moduli):
        # Horner over 64-bit words, most significant first: acc = acc*2**64 + w.
        acc = _mod_word(raw[0], q)
        for w in raw[1:]:
            acc = mulmod_pow2(mulmod_pow2(acc, 32, q), 32, q)
            acc = _add_mod(acc, _mod_word(w, q), q)
        # Shift [0, 2**(bits+1)) down to [-2**bits, 2**bits).
        off = np.uint64(pow(2, bits, q))
        out[j] = np.where(acc >= off, acc - off, acc + (np.uint64(q) - off))
    return out
