"""Sealed profile, public side: encrypted, masked threshold scores.

:class:`SealedMatcher` holds the parameter set and the encrypted gallery,
never a secret key, so it cannot decrypt anything it computes (it has no
decryptor and the secret key file is never opened on this path).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import tenseal.sealapi as seal

from pprm.crypto.context import CkksContext
from pprm.matching import kernel
from pprm.matching.gallery import EncryptedGallery
from pprm.matching.mask import draw_masks
from pprm.matching.templates import normalise_probe

__all__ = ["MaskedResult", "SealedMatcher", "quantise_probe"]

Progress = Callable[[int, int], None]


def quantise_probe(probe: np.ndarray, probe_scale_bits: int) -> np.ndarray:
    """Integer weights ``round(q_k * 2**bits)`` of a unit-norm probe (int64)."""
    return np.rint(probe.astype(np.float64) * float(2**probe_scale_bits)).astype(np.int64)


@dataclass(frozen=True)
class MaskedResult:
    """Encrypted ``r*(s - tau) + e`` for every block, ready for the key service.

    Attributes:
        blocks: block files (versions) the result was computed on, in order.
        ciphertexts: one SEAL ciphertext stream per block.
        scale: the scale the key service must find on every ciphertext.
    """

    blocks: tuple[str, ...]
    ciphertexts: tuple[bytes, ...]
    scale: float

    def __repr__(self) -> str:
        return f"MaskedResult(blocks={len(self.blocks)})"


class SealedMatcher:
    """Computes masked encrypted threshold results over a sealed gallery.

    Args:
        ctx: the state's CKKS context (no keys).
        gallery: the encrypted gallery.
    """

    def __init__(self, ctx: CkksContext, gallery: EncryptedGallery) -> None:
        self.ctx = ctx
        self.gallery = gallery

    def match(self, probe: np.ndarray, threshold: float, progress: Progress | None = None) -> MaskedResult:
        """Score ``probe`` against every template, encrypted, then mask the threshold test.

        Args:
            probe: one template of the gallery's dimension (normalised here).
            threshold: tau in (0, 1).
            progress: called with ``(done, total)`` blocks.

        Returns:
            The masked result; slots with ``s >= tau + margin`` decrypt
            positive, slots with ``s <= tau - margin`` and free slots negative.

        Raises:
            TemplateError: the probe is malformed.
        """
        p = self.ctx.params
        q = normalise_probe(probe, self.gallery.dim)
        w = quantise_probe(q, p.probe_scale_bits)
        tau = self.ctx.encode_constant(threshold, p.gallery_scale_bits + p.probe_scale_bits)
        files, cts = [], []
        blocks = self.gallery.index.blocks
        if not blocks:
            return MaskedResult((), (), float(2**p.result_scale_bits))

        def mac(b: int) -> np.ndarray:
            return kernel.multiply_accumulate(self.gallery.block(b), w, self.ctx.moduli)

        # The kernel releases the GIL; masking holds it in SEAL. Computing block
        # b+1 in a worker while block b is masked overlaps the two.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="pprm-mac") as pool:
            pending = pool.submit(mac, 0)
            for b, blk in enumerate(blocks):
                residues = pending.result()
                if b + 1 < len(blocks):
                    pending = pool.submit(mac, b + 1)
                files.append(blk.file)
                cts.append(self._mask(residues, tau, blk.occupancy()))
                if progress:
                    progress(b + 1, len(blocks))
        return MaskedResult(tuple(files), tuple(cts), float(2**p.result_scale_bits))

    def _mask(self, residues: np.ndarray, tau: seal.Plaintext, occupied: np.ndarray) -> bytes:
        """Turn the score ciphertext of one block into ``r*(s - tau) + e``, serialised."""
        p = self.ctx.params
        ev = self.ctx.evaluator
        score_bits = p.gallery_scale_bits + p.probe_scale_bits
        ct = self.ctx.from_residues(residues, float(2**score_bits))
        ev.sub_plain_inplace(ct, tau)
        masks = draw_masks(occupied, p)
        ev.multiply_plain_inplace(ct, self.ctx.encode(masks.r, p.mask_scale_bits))
        ev.add_plain_inplace(ct, self.ctx.encode(masks.e, p.result_scale_bits))
        return self.ctx.save_bytes(ct)
