"""Sealed profile, key-service side: decrypt masked results to hit slots.

Only masked results reach the decryptor: each slot holds ``r*(s - tau) + e``
(``2*r*(s - tau) + e`` with complex packing) with an unknown positive ``r``,
so the sign is all the key service learns.
"""

from __future__ import annotations

import numpy as np
import tenseal.sealapi as seal

from pprm.crypto.context import CkksContext
from pprm.errors import CiphertextError, GalleryError
from pprm.matching.gallery import EncryptedGallery
from pprm.matching.sealed import MaskedResult

__all__ = ["SealedDecider"]


class SealedDecider:
    """Turns a :class:`MaskedResult` into the record ids that cleared the threshold.

    Args:
        ctx: the CKKS context.
        secret_key: the state's CKKS secret key.
        gallery: the gallery the result must have been computed on.
    """

    def __init__(self, ctx: CkksContext, secret_key: seal.SecretKey, gallery: EncryptedGallery) -> None:
        self.ctx = ctx
        self.gallery = gallery
        self._decryptor = seal.Decryptor(ctx.seal, secret_key)

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
            CiphertextError: a ciphertext is malformed, at the wrong level or scale.
        """
        p = self.ctx.params
        blocks = self.gallery.index.blocks
        if result.blocks != tuple(b.file for b in blocks):
            raise GalleryError("masked result does not match the current gallery; match again")
        per = p.result_ciphertexts_per_block
        if len(result.ciphertexts) != per * len(blocks):
            raise CiphertextError("masked result has the wrong number of ciphertexts")
        if result.scale != float(2**p.result_scale_bits):
            raise CiphertextError("masked result has the wrong scale")
        out: list[int] = []
        pt = seal.Plaintext()
        for b, blk in enumerate(blocks):
            # Complex packing: ciphertext A then B, each real-valued for its
            # half of the positions (layout in pprm.matching.gallery).
            parts = []
            for blob in result.ciphertexts[per * b:per * (b + 1)]:
                ct = self.ctx.load_ciphertext(blob, scale=result.scale)
                self._decryptor.decrypt(ct, pt)
                parts.append(self.ctx.decode(pt))
            values = np.concatenate(parts)
            slots = np.asarray(blk.slots, dtype=np.int64)
            positive = (values > 0.0) & (slots >= 0)
            out.extend(int(r) for r in slots[positive])
        return out
