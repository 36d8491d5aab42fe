"""The sealed profile's per-block masks drawn in C, from the OS CSPRNG's words.

Masking a block with the C masker (:class:`pprm.matching.mask_kernel.NativeMasker`)
takes about 0.4 ms; drawing its masks in numpy took 0.7 ms more, all of it
holding the GIL, so the blocks of a query could not be masked on several
cores at once. :class:`NativeMaskDrawer` does the same steps in one C call
(``native/pprm_maskdraw.c``) that releases the GIL: the uniforms become
``r`` and ``e`` exactly as :func:`pprm.matching.mask.masks_from_uniform`
makes them, the cap of :func:`pprm.matching.mask.draw_block_masks` is
applied to the same words, and the polynomials are encoded as
:meth:`pprm.crypto.embedding.SlotTransform.encode_real` and
:meth:`~pprm.crypto.embedding.SlotTransform.encode_complex` encode them (to
within one per coefficient: the two FFTs round differently in the last
bits; tests/matching/test_mask_draw.py).

The words come from :func:`pprm.crypto.csprng.csprng_bytes` (ChaCha20 keyed
by the OS CSPRNG, computed without the GIL); the C code draws none of its own.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from pprm.crypto.csprng import csprng_bytes
from pprm.crypto.embedding import slot_transform
from pprm.crypto.encoding import bit_reversal
from pprm.crypto.params import ParameterSet
from pprm.errors import BackendError, ParameterError
from pprm.matching import kernel_native
from pprm.matching.decide_native import fft_table
from pprm.matching.mask import MAX_DRAWS

__all__ = ["NativeMaskDrawer"]


@lru_cache(maxsize=4)
def _tables(n: int) -> dict[str, np.ndarray]:
    """The slot placement, FFT twiddles and untwist factors of ring dimension ``n`` (read-only)."""
    h = n // 2
    t = slot_transform(n)
    untwist = np.exp(-1j * np.pi * np.arange(h) / n) / h
    arrays: dict[str, np.ndarray] = {
        "pos": np.ascontiguousarray(bit_reversal(h)[t.index], dtype=np.uint32),
        "conjugated": np.ascontiguousarray(t.conjugated, dtype=np.uint8),
        "fft_tw": fft_table(h),
        "untwist_re": np.ascontiguousarray(untwist.real), "untwist_im": np.ascontiguousarray(untwist.imag),
    }
    for arr in arrays.values():
        arr.setflags(write=False)
    return arrays


class NativeMaskDrawer:
    """Draws and encodes the masks of one sealed block (complex packing) in C.

    Args:
        params: a complex-packing sealed parameter set.
        q0: the data prime the noise polynomial is reduced by.
        rho_cap: the largest mean ``rho`` a block's draw may have
            (:attr:`pprm.crypto.masked_codec.MaskedLayout.rho_cap`).

    Raises:
        BackendError: the native extension is not built.
        ParameterError: the set does not pack two templates per slot.
    """

    def __init__(self, params: ParameterSet, q0: int, rho_cap: float) -> None:
        if params.packing != "complex":
            raise ParameterError("native mask drawing serves complex packing only")
        self._ffi, self._lib = kernel_native.handles()
        n = params.poly_modulus_degree
        h = n // 2
        self.n, self.h = n, h
        # Shared, read-only: a scorer (and so a drawer) is made per query.
        self._arrays = _tables(n)
        self._keep: list[Any] = []
        c = self._ffi.new("pprm_maskdraw_ctx *")
        c.h = h
        for name, arr in self._arrays.items():
            ctype = {"pos": "uint32_t[]", "conjugated": "uint8_t[]"}.get(name, "double[]")
            view = self._ffi.from_buffer(ctype, arr, require_writable=False)
            self._keep.append(view)
            setattr(c, name, view)
        c.log2_max = float(params.mask_log2_max)
        c.quarter_margin = params.decision_margin / 4.0
        c.rho_cap = float(rho_cap)
        c.mask_scale = float(2**params.mask_scale_bits)
        c.result_scale = float(2**params.result_scale_bits)
        c.q0 = int(q0)
        self._c = c

    def __repr__(self) -> str:
        return f"NativeMaskDrawer(n={self.n})"

    @property
    def ctx(self) -> Any:
        """The C context (``pprm_maskdraw_ctx *``), for :meth:`pprm.matching.mask_kernel.NativeMasker.mask_group`."""
        return self._c

    def fresh_words(self, blocks: int) -> np.ndarray:
        """Random words for ``blocks`` blocks' masks: ``uint64[blocks, 2N]``, each block's from its own seed.

        Each block's words come from their own seed (one call each: PyNaCl
        copies its output once more, which costs more than the keystream for
        large requests).
        """
        out = np.empty((blocks, 4 * self.h), dtype=np.uint64)
        for i in range(blocks):
            out[i] = np.frombuffer(csprng_bytes(32 * self.h), dtype=np.uint64)
        return out

    def from_words(self, words: np.ndarray, occupied: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """The block's masks from ``4 * N/2`` random words, or None when the draw exceeds the cap.

        Args:
            words: ``uint64[2N]``: the words for ``r_A``, ``e_A``, ``r_B``,
                ``e_B``, N/2 each.
            occupied: ``bool[N]``, half A then half B.

        Returns:
            ``(exact, noise)`` as :meth:`pprm.matching.sealed.BlockScorer._complex_masks`
            returns them, or None: the draw must be discarded.

        Raises:
            BackendError: wrong shapes, or a coefficient past 2**62.
        """
        w = np.ascontiguousarray(words, dtype=np.uint64)
        occ = np.ascontiguousarray(occupied, dtype=np.uint8)
        if w.shape != (4 * self.h,) or occ.shape != (self.n,):
            raise BackendError(f"expected {4 * self.h} words and {self.n} occupancy flags")
        exact = np.empty((2, self.n), dtype=np.int64)
        noise = np.empty(self.n, dtype=np.uint64)
        ffi = self._ffi
        rc = self._lib.pprm_masks_from_words(
            ffi.from_buffer("uint64_t[]", w, require_writable=False),
            ffi.from_buffer("uint8_t[]", occ, require_writable=False), self._c,
            ffi.from_buffer("int64_t[]", exact[0], require_writable=True),
            ffi.from_buffer("int64_t[]", exact[1], require_writable=True),
            ffi.from_buffer("uint64_t[]", noise, require_writable=True))
        if rc == self._lib.PPRM_MD_OVER_CAP:
            return None
        if rc != self._lib.PPRM_MD_OK:
            raise BackendError("native mask drawing failed: a coefficient would not fit below 2**62")
        return exact, noise

    def draw(self, occupied: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Fresh masks for one block, from :func:`~pprm.crypto.csprng.csprng_bytes`, redrawn while over the cap.

        Args:
            occupied: ``bool[N]``, half A then half B.

        Returns:
            ``(exact, noise)``: ``int64[2, N]`` and ``uint64[N]``.

        Raises:
            ParameterError: :data:`pprm.matching.mask.MAX_DRAWS` draws in a row exceed the cap.

        Warning:
            Every draw takes fresh words from a freshly seeded CSPRNG, and a refused
            draw is discarded, never reused (see
            :func:`pprm.matching.mask.draw_block_masks` for what the cap does
            to the distribution).
        """
        for _ in range(MAX_DRAWS):
            got = self.from_words(self.fresh_words(1)[0], occupied)
            if got is not None:
                return got
        raise ParameterError(f"masks exceeded their cap {float(self._c.rho_cap):.3g} in {MAX_DRAWS} draws in a row")
