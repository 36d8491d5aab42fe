"""The CKKS canonical embedding in float64, batched, in SEAL's slot order.

A real polynomial ``m`` mod ``X**N + 1`` is determined by its values at the
N/2 roots ``omega**(4k + 1)``, ``omega = exp(i*pi/N)``, ``k < N/2`` (the other
N/2 odd powers are their conjugates). Writing
``u_n = (m_n + i*m_{n+N/2}) * omega**n`` for ``n < N/2`` folds the length-N
twisted transform into one complex FFT of length N/2:
``m(omega**(4k+1)) = sum_n u_n * exp(2*pi*i*k*n/(N/2))``, because
``omega**((4k+1)*N/2) = i``. This module calls that vector the *spectrum*
(index ``k``); evaluating is a ring homomorphism, so the spectrum of a
product mod ``X**N + 1`` is the product of the spectra.

SEAL's slot ``j`` is ``m(zeta**(3**j mod 2N))``, ``zeta = omega``
(:func:`pprm.crypto.encoding.slot_exponents`, checked against SEAL's encoder
by a test): every exponent ``t = 3**j mod 2N`` is either ``4k + 1`` (slot j is
spectrum entry k) or ``4k + 3``, the conjugate of spectrum entry
``(2N - t - 1) / 4``. :class:`SlotTransform` holds that map.

:mod:`pprm.crypto.encoding` computes the same embedding in 80-bit precision
for the blind profile's diagonals; this one is float64 and vectorised over
many polynomials at once, for the sealed profile's masks and for the key
service's decisions, where float64 is ample (see the callers' budgets).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from pprm.crypto.encoding import slot_exponents
from pprm.errors import CiphertextError

__all__ = ["SlotTransform", "slot_transform"]


class SlotTransform:
    """Canonical embedding of real polynomials mod ``X**N + 1``, float64, over the last axis.

    Args:
        n: the ring dimension N (a power of two, at least 4).

    Raises:
        CiphertextError: ``n`` is not a power of two of at least 4.
    """

    def __init__(self, n: int) -> None:
        if n < 4 or n & (n - 1):
            raise CiphertextError(f"ring dimension {n} is not a power of two >= 4")
        self.n = n
        self.half = n // 2
        k = np.arange(self.half)
        self._twist = np.exp(1j * np.pi * k / n)
        self._untwist = np.conj(self._twist)
        t = slot_exponents(n)
        up = t % 4 == 1
        # Slot j -> spectrum index, and whether the slot is that entry's conjugate.
        self.index = np.where(up, (t - 1) // 4, (2 * n - t - 1) // 4).astype(np.int64)
        self.conjugated = ~up
        self.index.flags.writeable = False
        self.conjugated.flags.writeable = False
        # +1 where a slot's imaginary part is the spectrum's, -1 where it is negated.
        self.imag_sign = np.where(up, 1.0, -1.0)

    def spectrum(self, coeffs: np.ndarray) -> np.ndarray:
        """Values at ``omega**(4k + 1)``, ``k < N/2``, of real polynomials.

        Args:
            coeffs: ``float64[..., N]`` coefficients.

        Returns:
            ``complex128[..., N/2]``.
        """
        h = self.half
        u = np.empty((*coeffs.shape[:-1], h), dtype=np.complex128)
        u.real = coeffs[..., :h]
        u.imag = coeffs[..., h:]
        u *= self._twist
        return np.fft.ifft(u, axis=-1, norm="forward")

    def coefficients(self, spectrum: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`spectrum`: the real polynomials with these values.

        Args:
            spectrum: ``complex128[..., N/2]``.

        Returns:
            ``float64[..., N]`` coefficients (not rounded).
        """
        u = np.fft.fft(spectrum, axis=-1, norm="forward") * self._untwist
        return np.concatenate([u.real, u.imag], axis=-1)

    def to_slots(self, spectrum: np.ndarray) -> np.ndarray:
        """SEAL's slot values (slot order) from a spectrum.

        Args:
            spectrum: ``complex128[..., N/2]``.

        Returns:
            ``complex128[..., N/2]``: slot ``j`` as SEAL's decoder would give it.
        """
        s = np.asarray(spectrum)[..., self.index].astype(np.complex128, copy=False)
        # In place: one array the size of the input, not three.
        s.imag *= self.imag_sign
        return s

    def from_slots(self, slots: np.ndarray) -> np.ndarray:
        """The spectrum of SEAL slot values (inverse of :meth:`to_slots`).

        Args:
            slots: ``complex128[..., N/2]`` (or real) values in slot order.

        Returns:
            ``complex128[..., N/2]``.
        """
        vals = np.asarray(slots, dtype=np.complex128)
        out = np.empty_like(vals)
        out[..., self.index] = np.where(self.conjugated, np.conj(vals), vals)
        return out

    def encode_real(self, values: np.ndarray, scale_bits: int) -> np.ndarray:
        """Integer polynomials whose slots are *exactly* real, near ``values * 2**scale_bits``.

        A polynomial has real values at every slot exactly when
        ``m(X) = m(X**-1)``, i.e. ``m_{N-k} = -m_k`` for ``0 < k < N`` and
        ``m_{N/2} = 0``. SEAL's float64 encoder rounds a computed polynomial
        that is antisymmetric only up to float error, so its slots carry
        imaginary parts of about ``2**-scale_bits`` wherever a coefficient sat
        near a half. Here the coefficients ``k < N/2`` are computed and
        rounded, and the others are their exact negations.

        Args:
            values: ``float64[..., N/2]`` real slot values in SEAL's order.
            scale_bits: log2 of the encoding scale.

        Returns:
            ``int64[..., N]`` coefficients; the encoding error in every slot
            is real, about ``sqrt(N/12) * 2**-scale_bits`` (std).

        Raises:
            CiphertextError: the last axis is not N/2 long, or a value is not finite.
        """
        vals = np.asarray(values, dtype=np.float64)
        self._check(vals)
        coeffs = self.coefficients(self.from_slots(vals)) * float(2**scale_bits)
        h = self.half
        out = np.empty(coeffs.shape, dtype=np.int64)
        out[..., :h] = np.rint(coeffs[..., :h]).astype(np.int64)
        out[..., h] = 0
        # m_{N-k} = -m_k for 0 < k < N/2 (indices N/2 + 1 .. N - 1).
        out[..., h + 1:] = -out[..., h - 1:0:-1]
        return out

    def encode_complex(self, values: np.ndarray, scale_bits: int) -> np.ndarray:
        """Integer polynomials near ``values * 2**scale_bits`` (complex slots), rounded.

        Args:
            values: ``complex128[..., N/2]`` (or real) slot values in SEAL's order.
            scale_bits: log2 of the encoding scale; the scaled coefficients
                must stay below 2**62 in magnitude.

        Returns:
            ``int64[..., N]`` coefficients.

        Raises:
            CiphertextError: the last axis is not N/2 long, a value is not
                finite, or a coefficient would not fit in int64.
        """
        vals = np.asarray(values, dtype=np.complex128)
        self._check(vals)
        coeffs = np.rint(self.coefficients(self.from_slots(vals)) * float(2**scale_bits))
        if coeffs.size and float(np.abs(coeffs).max()) >= 2.0**62:
            raise CiphertextError("encoded coefficients exceed 2**62")
        return coeffs.astype(np.int64)

    def _check(self, vals: np.ndarray) -> None:
        if vals.ndim == 0 or vals.shape[-1] != self.half:
            raise CiphertextError(f"expected {self.half} slot values, got shape {vals.shape}")
        if not np.isfinite(vals).all():
            raise CiphertextError("slot values must be finite")


@lru_cache(maxsize=8)
def slot_transform(n: int) -> SlotTransform:
    """The (cached, immutable) :class:`SlotTransform` of ring dimension ``n``."""
    return SlotTransform(n)
