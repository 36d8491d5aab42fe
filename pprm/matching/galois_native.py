"""Rotations and conjugations of blind-profile ciphertexts in C, bit for bit SEAL's.

The blind responder rotates the requester's probe 63 times, its squared
window 70 times, and each block's partial products 7 times, all with the
requester's Galois keys. Through TenSEAL every one is a SEAL call that holds
the interpreter (about 3.6 ms at N = 16384 with three data primes) plus a
round trip through a file to reach the residues. :class:`NativeGalois`
applies the same automorphisms and SEAL's hybrid key switching in C
(``native/pprm_galois.c``) on residue arrays, without the interpreter lock,
so that independent chains run side by side; tests/matching/test_galois_native.py
checks every word against ``rotate_vector`` and ``complex_conjugate``.

Only public material is read: the requester's Galois keys.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

import numpy as np
import tenseal.sealapi as seal

from pprm.crypto import seal_stream
from pprm.crypto.context import BlindContext
from pprm.errors import BackendError, CiphertextError, ParameterError
from pprm.matching import kernel, kernel_native
from pprm.matching.mask_kernel import fill_table, galois_permutation, ntt_table

__all__ = ["NativeGalois", "fits", "galois_element", "native_galois"]


def galois_element(n: int, step: int) -> int:
    """SEAL's Galois element for a left rotation by ``step`` slots (``0 < step < n/2``): ``3**step mod 2n``."""
    if not 0 < step < n // 2:
        raise ParameterError(f"rotation step {step} outside (0, {n // 2})")
    return pow(3, step, 2 * n)


def fits(ctx: BlindContext) -> bool:
    """Whether ``pprm_apply_galois`` takes this key context: primes below 2**61, within a factor of two.

    Every set pprm ships has equal-size primes; another set is rotated by SEAL.
    """
    primes = [int(q) for q in ctx.key_moduli]
    return max(primes) < 2**61 and max(primes) < 2 * min(primes)


class NativeGalois:
    """A requester's Galois keys, laid out for ``pprm_apply_galois``.

    Args:
        ctx: the blind context the keys belong to.
        galois: the requester's Galois keys (already strictly loaded).

    Raises:
        BackendError: the native extension is not built.
        ParameterError: the key context has primes more than a factor of two
            apart, or a key is not a key-level key in NTT form.
    """

    def __init__(self, ctx: BlindContext, galois: seal.GaloisKeys) -> None:
        self._ffi, self._lib = kernel_native.handles()
        ffi = self._ffi
        primes = tuple(int(q) for q in ctx.key_moduli)
        n, digits = ctx.n, len(primes) - 1
        if not fits(ctx):
            raise ParameterError(f"{ctx.params.name}: the C automorphism needs primes within a factor of two")
        self.n, self.digits, self.moduli = n, digits, primes
        self._keep: list[Any] = []  # buffers the cffi structs point into
        tables = ffi.new("pprm_ntt_table[]", digits + 1)
        self._keep.append(tables)
        for i, q in enumerate(primes):
            fill_table(ffi, tables[i], ntt_table(q, n), self._keep)
        p = primes[-1]
        p_inv = np.array([pow(p, -1, q) for q in primes[:-1]], dtype=np.uint64)
        p_inv_shoup = np.array([(int(v) << 64) // q for v, q in zip(p_inv, primes, strict=False)], dtype=np.uint64)
        self._keys: dict[int, Any] = {}
        for elt in self._elements(ctx, galois):
            key = self._key_residues(ctx, galois, elt)
            shoup = np.empty_like(key)
            for j in range(digits):
                for c in range(2):
                    for m, q in enumerate(primes):
                        self._shoup_into(key[j, c, m], shoup[j, c, m], q)
            k = ffi.new("pprm_galois_key *")
            k.n, k.digits, k.tables = n, digits, tables
            k.perm = self._view("uint32_t[]", galois_permutation(n, elt))
            k.key = self._view("uint64_t[]", key)
            k.key_shoup = self._view("uint64_t[]", shoup)
            k.p_inv = self._view("uint64_t[]", p_inv)
            k.p_inv_shoup = self._view("uint64_t[]", p_inv_shoup)
            self._keys[elt] = k

    def __repr__(self) -> str:
        return f"NativeGalois(n={self.n}, elements={sorted(self._keys)})"

    @staticmethod
    def _elements(ctx: BlindContext, galois: seal.GaloisKeys) -> list[int]:
        # The blind profile's three elements (rotations by 1 and b1, conjugation),
        # whichever of them the keys hold.
        n = ctx.n
        wanted = [galois_element(n, 1), galois_element(n, ctx.params.baby_steps), 2 * n - 1]
        return [e for e in wanted if galois.has_key(e)]

    @staticmethod
    def _key_residues(ctx: BlindContext, galois: seal.GaloisKeys, elt: int) -> np.ndarray:
        parts = galois.key(elt)
        digits = len(ctx.key_moduli) - 1
        if len(parts) != digits:
            raise ParameterError(f"Galois key for element {elt} has {len(parts)} parts, expected {digits}")
        out = np.empty((digits, 2, digits + 1, ctx.n), dtype=np.uint64)
        for j, part in enumerate(parts):
            meta, res = seal_stream.parse(ctx.save_bytes(part))
            if not meta.is_ntt_form or res.shape != (2, digits + 1, ctx.n):
                raise ParameterError(f"Galois key for element {elt} is not a key-level key in NTT form")
            out[j] = res
        return out

    def _view(self, ctype: str, arr: np.ndarray) -> Any:
        v = self._ffi.from_buffer(ctype, arr, require_writable=False)
        self._keep.append((arr, v))
        return v

    def _shoup_into(self, w: np.ndarray, out: np.ndarray, q: int) -> None:
        rc = self._lib.pprm_shoup(self._ffi.from_buffer("uint64_t[]", w, require_writable=False),
                                  self._ffi.from_buffer("uint64_t[]", out, require_writable=True), w.size, q)
        if rc != self._lib.PPRM_MASK_OK:
            raise ParameterError("Galois key residues are not reduced")

    def has(self, elt: int) -> bool:
        """Whether the keys hold Galois element ``elt``."""
        return elt in self._keys

    def apply(self, residues: np.ndarray, elt: int) -> np.ndarray:
        """The automorphism ``elt`` of a ciphertext, switched back to the secret key.

        Args:
            residues: ``uint64[2, l, N]``, NTT form at the first ``l`` data primes.
            elt: a Galois element the keys hold.

        Returns:
            ``uint64[2, l, N]``, what SEAL's ``apply_galois`` gives, word for word.

        Raises:
            ParameterError: the keys do not hold ``elt``.
            BackendError: a word is not reduced, the level is out of range,
                or memory ran out.
            CiphertextError: the result is transparent (only a degenerate key
                gives one; SEAL refuses it too).
        """
        k = self._keys.get(elt)
        if k is None:
            raise ParameterError(f"the Galois keys do not hold element {elt}")
        src = np.ascontiguousarray(residues, dtype=np.uint64)
        if src.ndim != 3 or src.shape[0] != 2 or src.shape[2] != self.n:
            raise BackendError(f"apply_galois: expected [2, l, {self.n}] residues, got {src.shape}")
        out = np.empty_like(src)
        rc = self._lib.pprm_apply_galois(self._ffi.from_buffer("uint64_t[]", src, require_writable=False),
                                         src.shape[1], k, self._ffi.from_buffer("uint64_t[]", out,
                                                                                require_writable=True))
        if rc == self._lib.PPRM_GALOIS_TRANSPARENT:
            raise CiphertextError("the requester's keys or probe gave a degenerate ciphertext: "
                                  "result ciphertext is transparent")
        if rc != self._lib.PPRM_GALOIS_OK:
            reason = {self._lib.PPRM_GALOIS_ENOMEM: "out of memory"}.get(rc, "a word is not reduced or the level "
                                                                             "is out of range")
            raise BackendError(f"native Galois automorphism failed: {reason}")
        return out

    def rotate(self, residues: np.ndarray, step: int) -> np.ndarray:
        """:meth:`apply` for a left rotation by ``step`` slots (SEAL's ``rotate_vector``)."""
        return self.apply(residues, galois_element(self.n, step))

    def conjugate(self, residues: np.ndarray) -> np.ndarray:
        """:meth:`apply` for the complex conjugation (SEAL's ``complex_conjugate``)."""
        return self.apply(residues, 2 * self.n - 1)


_cache: weakref.WeakKeyDictionary[Any, NativeGalois] = weakref.WeakKeyDictionary()
_cache_lock = threading.Lock()


def native_galois(ctx: BlindContext, galois: seal.GaloisKeys) -> NativeGalois | None:
    """The :class:`NativeGalois` of a requester's Galois keys, built once per keys object.

    A key serves every query of its case, and laying it out costs about
    0.2 s at N = 16384, so the result is kept for as long as the SEAL object lives.

    Args:
        ctx: the blind context.
        galois: the requester's (strictly loaded) Galois keys.

    Returns:
        The native keys, or None on the numpy backend (SEAL then rotates).

    Raises:
        ParameterError: as :class:`NativeGalois`.
    """
    if kernel.backend() != "native" or not fits(ctx):
        return None
    with _cache_lock:
        hit = _cache.get(galois)
        if hit is None:
            hit = NativeGalois(ctx, galois)
            _cache[galois] = hit
        return hit
