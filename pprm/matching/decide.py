"""Sealed profile, key-service side: decrypt masked results to hit slots.

Only masked results reach the decryptor: each slot holds ``r*(s - tau) + e``
(``2*r*(s - tau) + e`` with complex packing, half A in the real and half B
in the imaginary part) with an unknown positive ``r``, so the sign is all
the key service learns.

The masked ciphertexts arrive packed (:mod:`pprm.crypto.masked_codec`), and
are decrypted and decoded with float64 FFTs, on every core this process may
use (``PPRM_THREADS`` overrides, as for the native kernel): in one C call
on pthreads (:class:`pprm.matching.decide_native.NativeSigns`) when the
kernel backend is ``"native"``, else with numpy over blocks of ciphertexts
at once (:class:`pprm.crypto.masked_codec.MaskedDecryptor`). Both give the
same decisions. No SEAL stream is parsed and SEAL's decoder is not called
per ciphertext.
"""

from __future__ import annotations

import os

import numpy as np
import tenseal.sealapi as seal

from pprm.crypto.context import CkksContext
from pprm.crypto.masked_codec import CIPHERTEXTS_PER_BLOCK, MaskedDecryptor
from pprm.errors import CiphertextError, GalleryError
from pprm.matching import kernel
from pprm.matching.decide_native import NativeSigns
from pprm.matching.gallery import EncryptedGallery
from pprm.matching.kernel_native import default_threads
from pprm.matching.sealed import MaskedResult

__all__ = ["SealedDecider", "decide_threads"]


def decide_threads() -> int:
    """Threads the decider uses: ``PPRM_THREADS`` if set and positive, else every usable core.

    Raises:
        BackendError: ``PPRM_THREADS`` is set but is not a non-negative integer.
    """
    wanted = default_threads()
    if wanted > 0:
        return wanted
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


class SealedDecider:
    """Turns a :class:`MaskedResult` into the record ids that cleared the threshold.

    Args:
        ctx: the CKKS context.
        secret_key: the state's CKKS secret key.
        gallery: the gallery the result must have been computed on.
        threads: decryption threads (default :func:`decide_threads`).

    Raises:
        BackendError: the key does not fit the masked encoding's budget
            (:class:`pprm.crypto.masked_codec.MaskedDecryptor`), or the
            backend is forced to one that is not available
            (:func:`pprm.matching.kernel.backend`).

    Warning:
        The decider holds the key's embedding (in the numpy decryptor and,
        on the native backend, a copy for the C code that is zeroed when
        the decider is closed (:meth:`close`) or collected).
    """

    def __init__(self, ctx: CkksContext, secret_key: seal.SecretKey, gallery: EncryptedGallery,
                 threads: int | None = None) -> None:
        self.ctx = ctx
        self.gallery = gallery
        self._decryptor = seal.Decryptor(ctx.seal, secret_key)
        self._opener = MaskedDecryptor(ctx, self._decryptor, decide_threads() if threads is None else threads)
        # The backend's choice (made once per process, with its self-check)
        # decides the path, as for every other kernel.
        self._native = NativeSigns(self._opener) if kernel.backend() == "native" else None

    @property
    def threads(self) -> int:
        """Threads the decryption runs on."""
        return self._opener.threads

    @property
    def native(self) -> bool:
        """Whether the decisions run in C (:class:`~pprm.matching.decide_native.NativeSigns`)."""
        return self._native is not None

    def __repr__(self) -> str:
        return f"SealedDecider({self.ctx.params.name})"

    def close(self) -> None:
        """Zero the C path's copy of the key's embedding (the decider must not be used afterwards)."""
        if self._native is not None:
            self._native.close()

    def hits(self, result: MaskedResult) -> list[int]:
        """Record ids whose masked value decrypts positive.

        Args:
            result: from :meth:`SealedMatcher.match` on the current gallery.

        Returns:
            Record ids in gallery order.

        Raises:
            GalleryError: the result was computed on another gallery version.
            CiphertextError: a ciphertext is malformed or truncated, there
                are not as many as blocks, or the scale is wrong.
        """
        p = self.ctx.params
        blocks = self.gallery.index.blocks
        if result.blocks != tuple(b.file for b in blocks):
            raise GalleryError("masked result does not match the current gallery; match again")
        if len(result.ciphertexts) != CIPHERTEXTS_PER_BLOCK * len(blocks):
            raise CiphertextError("masked result has the wrong number of ciphertexts")
        if result.scale != float(2**p.result_scale_bits):
            raise CiphertextError("masked result has the wrong scale")
        opener = self._native if self._native is not None else self._opener
        positive = np.ascontiguousarray(opener.signs(result.ciphertexts))
        # Only the blocks with a positive position are visited, in gallery
        # order (block by block, position by position); free positions (slot
        # -1) are dropped. Most blocks have none: finding those 8 bytes at a
        # time is 1.5 ms faster at 1M than np.nonzero over every position.
        width = positive.shape[1]
        wide = positive.view(np.uint64) if width % 8 == 0 else positive
        out: list[int] = []
        for b in np.flatnonzero(wide.any(axis=1)).tolist():
            slots = np.asarray(blocks[b].slots, dtype=np.int64)[positive[b]]
            out.extend(slots[slots >= 0].tolist())
        return out
