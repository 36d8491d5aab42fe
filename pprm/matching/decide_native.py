"""The key service's decisions in C: packed masked ciphertexts to slot signs, on pthreads.

:meth:`pprm.crypto.masked_codec.MaskedDecryptor.signs` decrypts the packed
masked ciphertexts of a query with numpy: 19-23 ms for the 123 ciphertexts of
a 1M gallery at N = 8192, and 14-20 ms on two threads (the GIL, and a
dozen elementwise passes over temporaries around its three FFTs a
ciphertext). :class:`NativeSigns` computes the same thing in one C call
(``native/pprm_decide.c``) that releases the GIL and splits the ciphertexts
over ``threads`` pthreads: measured 4.8 ms on one thread and 2.7 ms on two
for those 123 ciphertexts, and :meth:`pprm.matching.decide.SealedDecider.hits`
5.5 and 3.4 ms against 19.7 and 13.6 ms on the numpy path in the same run
(2-core Xeon, AVX-512).

The results are numpy's: the same float64 steps, with FFTs that round
differently only in the last bits, so the slot values agree to below one
output unit (at most 0.5 measured at N = 8192) and a sign can differ only
where the value is within that of zero, inside the decision margin (the argument is at the top of
``native/pprm_decide.c``; tests/matching/test_decide_native.py measures it).

:class:`pprm.matching.decide.SealedDecider` uses this path when the kernel
backend is ``"native"`` (:func:`pprm.matching.kernel.backend`).
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from pprm.crypto.embedding import slot_transform
from pprm.crypto.encoding import bit_reversal
from pprm.crypto.masked_codec import MaskedDecryptor, refuse_transparent, unpack_masked
from pprm.errors import BackendError, CiphertextError, ParameterError
from pprm.matching import kernel_native

__all__ = ["NativeSigns", "native_fft", "fft_table"]


@lru_cache(maxsize=4)
def fft_table(h: int) -> np.ndarray:
    """The C FFT's twiddles of length ``h`` (read-only; shared with the mask drawing).

    Raises:
        BackendError: the native extension is not built, or its table call fails.
        ParameterError: ``h`` is not a power of two the C FFT takes.
    """
    ffi, lib = kernel_native.handles()
    size = int(lib.pprm_fft_table_len(h))
    if size == 0:
        raise ParameterError(f"FFT length {h} is not a power of two in [2, {int(lib.PPRM_FFT_MAX)}]")
    table = np.empty(size, dtype=np.float64)
    if lib.pprm_fft_tables(h, ffi.from_buffer("double[]", table, require_writable=True)) != lib.PPRM_DECIDE_OK:
        raise BackendError(f"native FFT tables of length {h} failed")
    table.setflags(write=False)
    return table


@lru_cache(maxsize=4)
def _tables(n: int) -> dict[str, np.ndarray]:
    """The public tables of ring dimension ``n``: twists, slot map, bit reversal (read-only)."""
    h = n // 2
    t = slot_transform(n)
    rev = bit_reversal(h)
    # The same expression as SlotTransform's twist; 1/h is a power of two, so
    # folding it into the untwist rounds exactly as numpy's fft(norm="forward").
    twist = np.exp(1j * np.pi * np.arange(h) / n)
    untwist = np.conj(twist) / h
    arrays: dict[str, np.ndarray] = {
        "twist_re": np.ascontiguousarray(twist.real), "twist_im": np.ascontiguousarray(twist.imag),
        "untwist_re": np.ascontiguousarray(untwist.real), "untwist_im": np.ascontiguousarray(untwist.imag),
        # The last FFT leaves the spectrum bit-reversed: slot j reads entry index[j] there.
        "pos": np.ascontiguousarray(rev[t.index], dtype=np.uint32),
        "conjugated": np.ascontiguousarray(t.conjugated, dtype=np.uint8),
        "rev": rev,
    }
    for arr in arrays.values():
        arr.setflags(write=False)
    return arrays


def _wipe(*arrays: np.ndarray) -> None:
    for arr in arrays:
        arr.fill(0.0)


def native_fft(values: np.ndarray, inverse: bool = False) -> np.ndarray:
    """The C FFT of one vector, unnormalised both ways, natural order (for tests).

    Args:
        values: ``complex128[h]``, h a power of two in ``[2, 16384]``.
        inverse: ``sum x_n exp(+2 pi i k n / h)`` (numpy's ``ifft(norm="forward")``)
            instead of ``exp(-...)`` (``fft(norm="backward")``).

    Returns:
        ``complex128[h]``.

    Raises:
        BackendError: the native extension is not built.
        ParameterError: ``h`` is not a supported length.
    """
    x = np.asarray(values, dtype=np.complex128)
    if x.ndim != 1:
        raise ParameterError(f"expected one vector, got shape {x.shape}")
    h = x.shape[0]
    if h < 2 or h & (h - 1):
        raise ParameterError(f"FFT length {h} is not a power of two")
    ffi, lib = kernel_native.handles()
    table = fft_table(h)
    re, im = np.ascontiguousarray(x.real), np.ascontiguousarray(x.imag)
    rc = lib.pprm_fft(ffi.from_buffer("double[]", re, require_writable=True),
                      ffi.from_buffer("double[]", im, require_writable=True), h,
                      ffi.from_buffer("double[]", table, require_writable=False), int(inverse))
    if rc != lib.PPRM_DECIDE_OK:
        raise BackendError(f"native FFT failed (code {rc})")
    out: np.ndarray = re + 1j * im
    return out


class NativeSigns:
    """:meth:`MaskedDecryptor.signs` and :meth:`~MaskedDecryptor.values` in C, on pthreads.

    Args:
        opener: the numpy decryptor, which has read and checked the key.
        threads: pthreads per call (default: the opener's thread count).

    Raises:
        BackendError: the native extension is not built.
        ParameterError: ``threads`` is not a positive integer.

    Warning:
        The object keeps a copy of the key's spectrum (bit-reversed, the
        order the C code reads it in) as long as it lives: it is as secret as
        the key. It is zeroed by :meth:`close`, or when the object is
        collected, and never appears in a repr or a message.
    """

    def __init__(self, opener: MaskedDecryptor, threads: int | None = None) -> None:
        want = opener.threads if threads is None else threads
        if isinstance(want, bool) or not isinstance(want, int | np.integer) or want < 1:
            raise ParameterError(f"decision threads must be a positive integer, got {want!r}")
        self.threads = int(want)
        self._ffi, self._lib = kernel_native.handles()
        layout, packing, _t, key = opener._native_parts()
        self.layout = layout
        self.packing = packing
        n = layout.n
        h = n // 2
        self._per_block = n if packing == "complex" else h
        tables = _tables(n)
        rev = tables["rev"]
        # Copies of our own, so that they can be wiped however the opener lives on.
        self._key_re = np.ascontiguousarray(key.real[rev])
        self._key_im = np.ascontiguousarray(key.imag[rev])
        self._wiper = weakref.finalize(self, _wipe, self._key_re, self._key_im)
        ffi = self._ffi
        keep: list[Any] = []

        def view(ctype: str, arr: np.ndarray) -> Any:
            v = ffi.from_buffer(ctype, arr, require_writable=False)
            keep.append(v)
            return v

        c = ffi.new("pprm_decide_ctx *")
        c.h = h
        c.fft_tw = view("double[]", fft_table(h))
        for name in ("twist_re", "twist_im", "untwist_re", "untwist_im"):
            setattr(c, name, view("double[]", tables[name]))
        c.key_re = view("double[]", self._key_re)
        c.key_im = view("double[]", self._key_im)
        c.pos = view("uint32_t[]", tables["pos"])
        c.conjugated = view("uint8_t[]", tables["conjugated"])
        c.c0_bits = layout.c0_bits
        c.c1_bits = layout.c1_bits
        c.complex_packing = int(packing == "complex")
        self._keep = keep
        self._c = c

    def __repr__(self) -> str:
        return f"NativeSigns(N={self.layout.n}, threads={self.threads})"

    def close(self) -> None:
        """Zero the key copy; later calls raise :class:`BackendError`."""
        self._wiper()

    def _words(self, words_or_blobs: np.ndarray | Sequence[bytes]) -> np.ndarray:
        # Transparent ciphertexts are refused by the C pass (it reads every
        # word anyway), which saves numpy's pass over them.
        if not isinstance(words_or_blobs, np.ndarray):
            return unpack_masked(self.layout, words_or_blobs, check_transparent=False)
        words = words_or_blobs
        if words.dtype != np.uint64 or words.ndim != 2 or words.shape[1] != self.layout.n:
            raise CiphertextError(f"expected uint64[count, {self.layout.n}] masked words, "
                                  f"got {words.dtype}{words.shape}")
        return np.ascontiguousarray(words)

    def _run(self, words: np.ndarray, signs: np.ndarray | None, values: np.ndarray | None) -> None:
        if not self._wiper.alive:
            raise BackendError("this NativeSigns was closed")
        ffi, lib = self._ffi, self._lib
        null = ffi.NULL
        rc = lib.pprm_decide(
            ffi.from_buffer("uint64_t[]", words, require_writable=False), len(words), self._c,
            null if signs is None else ffi.from_buffer("uint8_t[]", signs, require_writable=True),
            null if values is None else ffi.from_buffer("double[]", values, require_writable=True),
            self.threads)
        if rc == lib.PPRM_DECIDE_TRANSPARENT:
            refuse_transparent(self.layout, words)  # names the first one
        if rc != lib.PPRM_DECIDE_OK:
            raise BackendError(f"native decisions failed (code {rc})")

    def signs(self, words_or_blobs: np.ndarray | Sequence[bytes]) -> np.ndarray:
        """Which positions of each block decrypt positive, as :meth:`MaskedDecryptor.signs`.

        Args:
            words_or_blobs: one packed ciphertext per block, as bytes, or
                their words (``uint64[count, N]``, as :func:`unpack_masked` reads them).

        Returns:
            ``bool[count, templates_per_block]`` in position order.

        Raises:
            CiphertextError: as :func:`pprm.crypto.masked_codec.unpack_masked`
                (malformed or transparent), or words of the wrong type or shape.
            BackendError: the object was closed, or the C call failed.
        """
        words = self._words(words_or_blobs)
        out = np.zeros((len(words), self._per_block), dtype=np.uint8)
        if len(words):
            self._run(words, out, None)
        return out.view(bool)

    def values(self, words_or_blobs: np.ndarray | Sequence[bytes]) -> np.ndarray:
        """The decrypted masked values, as :meth:`MaskedDecryptor.values` (for tests and measurements).

        Args:
            words_or_blobs: as for :meth:`signs`.

        Returns:
            ``complex128[count, N/2]`` in slot order, in units of the masked value.

        Raises:
            CiphertextError: as for :meth:`signs`.
            BackendError: the object was closed, or the C call failed.
        """
        words = self._words(words_or_blobs)
        out = np.zeros((len(words), self.layout.n // 2), dtype=np.complex128)
        if len(words):
            self._run(words, None, out.view(np.float64))
        out /= self.layout.value_scale
        return out
