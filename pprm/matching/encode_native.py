"""The exact CKKS encoder of :mod:`pprm.crypto.encoding`, in C.

Building the blind database encodes every diagonal with
:func:`~pprm.crypto.encoding.encode_coefficients` and
:func:`~pprm.crypto.encoding.coefficients_to_residues`, a long-double FFT
that numpy runs slowly. :class:`NativeEncoder` computes the same residues in
C (``native/pprm_encode.c``), word for word: it performs the same x87
long-double operations on the same twiddle tables, which it takes from
:mod:`pprm.crypto.encoding` rather than recomputing
(tests/matching/test_encode_native.py compares the two paths). The C call
releases the GIL, so encoding threads run it in parallel.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from pprm.crypto import encoding
from pprm.errors import BackendError, CiphertextError, ParameterError
from pprm.matching import kernel, kernel_native
from pprm.matching.mask_kernel import NativeNtt

__all__ = ["NativeEncoder", "native_transforms"]

_LD_MANTISSA_BITS = 64
# ldexp saturates to infinity (or zero) long before 2**16: clamping scale_bits
# to this keeps it a C int without changing any result.
_SCALE_BITS_CLAMP = 1 << 16


class NativeEncoder:
    """Encodes slot values to CKKS residues exactly as the numpy path does, in C.

    Args:
        n: the ring dimension N, a power of two.
        moduli: the primes to reduce by, each in ``[2, 2**62)``.

    Raises:
        BackendError: the native extension is not built, predates the
            encoder, or numpy's long double is not C's 80-bit x87 one.
        ParameterError: ``n`` is not a power of two of at least 2, or a prime
            is out of range.
    """

    def __init__(self, n: int, moduli: tuple[int, ...]) -> None:
        self._ffi, self._lib = kernel_native.handles()
        if not hasattr(self._lib, "pprm_encode_residues"):
            raise BackendError("the native extension has no encoder: rebuild it (python setup.py build_ext --inplace)")
        # The C code reads numpy's long-double tables in place and computes in x87
        # extended precision; elsewhere the numpy path itself refuses to encode.
        ld = np.dtype(np.longdouble)
        if np.finfo(ld).nmant + 1 != _LD_MANTISSA_BITS or self._ffi.sizeof("long double") != ld.itemsize:
            raise BackendError("the native encoder needs the x87 80-bit long double (x86-64 Linux)")
        if n < 2 or n & (n - 1):
            raise ParameterError(f"the ring dimension must be a power of two >= 2, got {n}")
        if any(not 2 <= int(q) < 2**62 for q in moduli):
            raise ParameterError("the native encoder takes primes in [2, 2**62)")
        self.n = n
        self.moduli = tuple(int(q) for q in moduli)
        # encoding's own plan (cached there), so both paths multiply by the very same twiddles.
        idx, rev, stages, twist = encoding._plan(n)
        # The bit-reversal is an involution: slot j lands at rev[pos[j]] of the DFT's gathered input.
        self._place = np.ascontiguousarray(rev[idx], dtype=np.uint32)
        self._stages = np.ascontiguousarray(np.concatenate(stages), dtype=np.clongdouble).view(np.longdouble)
        self._twist = np.ascontiguousarray(twist, dtype=np.clongdouble).view(np.longdouble)
        self._q = np.array(self.moduli, dtype=np.uint64)
        self._views: list[Any] = [
            self._ffi.from_buffer(ctype, arr, require_writable=False)
            for ctype, arr in (("uint32_t[]", self._place), ("long double[]", self._stages),
                               ("long double[]", self._twist), ("uint64_t[]", self._q))
        ]

    def __repr__(self) -> str:
        return f"NativeEncoder(n={self.n}, primes={len(self.moduli)})"

    def residues(self, values: np.ndarray, scale_bits: int, *, out: np.ndarray | None = None) -> np.ndarray:
        """``coefficients_to_residues(encode_coefficients(values, scale_bits, n), moduli)``, in C.

        Args:
            values: ``[..., m]`` real or complex slot values, ``m <= N/2``,
                of a dtype complex128 holds (taken as complex128, as the
                numpy path takes them as clongdouble: both exactly);
                missing slots are zero.
            scale_bits: log2 of the encoding scale.
            out: where to write them (C-contiguous ``uint64[..., L, N]``);
                a new array when None. Blocks of diagonals are encoded
                straight into the block, without a temporary per batch.

        Returns:
            ``uint64[..., L, N]`` residues in ``[0, q_l)``, word for word the numpy path's
            (``out`` when given).

        Raises:
            CiphertextError: too many values, values of another dtype (long
                double, object), or a scaled coefficient that is not finite (a
                non-finite value, or a scale past long double's range).
            BackendError: the C encoder failed (out of memory).
        """
        raw = np.asarray(values)
        # A long-double input keeps bits in the numpy path that a complex128 copy would round off.
        if raw.ndim == 0 or not np.can_cast(raw.dtype, np.complex128):
            raise CiphertextError(f"values must be a [..., m] array that complex128 holds, got {raw.dtype} "
                                  f"of shape {list(raw.shape)}")
        vals = np.ascontiguousarray(raw, dtype=np.complex128)
        lead, m = vals.shape[:-1], vals.shape[-1]
        if m > self.n // 2:
            raise CiphertextError(f"cannot encode {m} values into {self.n // 2} slots")
        k = int(np.prod(lead, dtype=np.int64))
        shape = (*lead, len(self.moduli), self.n)
        if out is None:
            out = np.empty(shape, dtype=np.uint64)
        elif out.shape != shape or out.dtype != np.uint64 or not out.flags.c_contiguous or not out.flags.writeable:
            raise BackendError(f"out must be a writable C-contiguous uint64 array of shape {list(shape)}")
        place, stages, twist, q = self._views
        lib = self._lib
        rc = lib.pprm_encode_residues(
            self._ffi.from_buffer("double[]", vals.view(np.float64).reshape(-1), require_writable=False),
            k,
            m,
            max(-_SCALE_BITS_CLAMP, min(int(scale_bits), _SCALE_BITS_CLAMP)),
            place,
            stages,
            twist,
            q,
            len(self.moduli),
            self.n,
            self._ffi.from_buffer("uint64_t[]", out, require_writable=True),
        )
        if rc == lib.PPRM_ENCODE_ERANGE:
            raise CiphertextError(f"a coefficient scaled by 2**{scale_bits} is not finite: non-finite values "
                                  "or too large a scale")
        if rc != lib.PPRM_ENCODE_OK:
            reason = "out of memory" if rc == lib.PPRM_ENCODE_ENOMEM else "invalid arguments"
            raise BackendError(f"native encoding failed: {reason}")
        return out


@functools.lru_cache(maxsize=8)
def _transforms(n: int, moduli: tuple[int, ...]) -> tuple[NativeEncoder, NativeNtt]:
    return NativeEncoder(n, moduli), NativeNtt(n, moduli)


def native_transforms(n: int, moduli: tuple[int, ...]) -> tuple[NativeEncoder, NativeNtt] | None:
    """The C encoder and NTT for these primes on the native backend (cached), else None.

    Args:
        n: the ring dimension.
        moduli: the primes.

    Returns:
        ``(encoder, ntt)``, or None on the numpy backend, where callers use
        :mod:`pprm.crypto.encoding` and SEAL's NTT (the same words).
    """
    if kernel.backend() != "native":
        return None
    return _transforms(n, tuple(int(q) for q in moduli))
