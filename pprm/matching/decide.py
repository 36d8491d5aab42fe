"""Sealed profile, key-service side: decrypt masked results to hit slots.

Only masked results reach the decryptor: each slot holds ``r*(s - tau) + e``
(``2*r*(s - tau) + e`` with complex packing, half A in the real and half B
in the imaginary part) with an unknown positive ``r``, so the sign is all
the key service learns.

The masked ciphertexts arrive packed (:mod:`pprm.crypto.masked_codec`), and
are decrypted and decoded with numpy FFTs over blocks of ciphertexts at
once, on every core this process may use (``PPRM_THREADS`` overrides, as
for the native kernel): no SEAL stream is parsed and SEAL's decoder is not
called per ciphertext.
"""

from __future__ import annotations

import os

import numpy as np
import tenseal.sealapi as seal

from pprm.crypto.context import CkksContext
from pprm.crypto.masked_codec import CIPHERTEXTS_PER_BLOCK, MaskedDecryptor
from pprm.errors import CiphertextError, GalleryError
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
            (:class:`pprm.crypto.masked_codec.MaskedDecryptor`).
    """

    def __init__(self, ctx: CkksContext, secret_key: seal.SecretKey, gallery: EncryptedGallery,
                 threads: int | None = None) -> None:
        self.ctx = ctx
        self.gallery = gallery
        self._decryptor = seal.Decryptor(ctx.seal, secret_key)
        self._opener = MaskedDecryptor(ctx, self._decryptor, decide_threads() if threads is None else threads)

    @property
    def threads(self) -> int:
        """Threads the decryption runs on."""
        return self._opener.threads

    def __repr__(self) -> str:
        return f"SealedDecider({self.ctx.params.name})"

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
        positive = self._opener.signs(result.ciphertexts)
        out: list[int] = []
        for b, blk in enumerate(blocks):
            slots = np.asarray(blk.slots, dtype=np.int64)
            out.extend(slots[positive[b] & (slots >= 0)].tolist())
        return out
