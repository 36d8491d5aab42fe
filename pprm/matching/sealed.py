"""Sealed profile, public side: encrypted, masked threshold scores.

:class:`SealedMatcher` holds the parameter set and the encrypted gallery,
never a secret key, so it cannot decrypt anything it computes (it has no
decryptor and the secret key file is never opened on this path).

Real packing: per block, ``S = sum_k w_k C_k`` holds ``s_j`` in slot ``j``,
and the result is one ciphertext ``r*(S - tau) + e``.

Complex packing (docs/DESIGN.md section 9): slot ``j`` of ``S`` holds
``s_A + i*s_B`` for the two templates of the slot. The matcher subtracts
``tau + i*tau`` first, then de-interleaves with the public conjugation key:
``u = S + conj(S) = 2(s_A - tau)`` and ``v = conj(S) - S = -2i(s_B - tau)``.
The threshold goes in before the mask product, so the mask's encoding error
multiplies ``s - tau`` and cannot flip a sign. Then ``u * r_A + e_A`` (real
mask plaintext) and ``v * (i*r_B) + e_B`` (complex mask plaintext; the factor
``i`` makes the result ``2*r_B*(s_B - tau)``, real) are two ciphertexts, A
then B. ``r_A`` and ``r_B`` are drawn independently, so no two templates share
a mask. The halves stay in separate ciphertexts: in one ciphertext (B in the
imaginary part of A) the slot noise of B's half, about 1.2e-5 per part in
score units at N=8192, would be multiplied by ``r_B`` (up to 2**8) and land
in A's real part, where it would compete with ``2 * r_A * margin`` = 2e-3 at
``r_A = 1``; separately, each half's noise scales with its own mask.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import tenseal.sealapi as seal

from pprm.crypto.context import CkksContext
from pprm.errors import ParameterError
from pprm.matching import kernel
from pprm.matching.gallery import EncryptedGallery
from pprm.matching.mask import draw_masks
from pprm.matching.templates import normalise_probe

__all__ = ["BlockScorer", "MaskedResult", "SealedMatcher", "quantise_probe"]

Progress = Callable[[int, int], None]


def quantise_probe(probe: np.ndarray, probe_scale_bits: int) -> np.ndarray:
    """Integer weights ``round(q_k * 2**bits)`` of a unit-norm probe (int64)."""
    return np.rint(probe.astype(np.float64) * float(2**probe_scale_bits)).astype(np.int64)


@dataclass(frozen=True)
class MaskedResult:
    """Encrypted ``r*(s - tau) + e`` for every block, ready for the key service.

    Attributes:
        blocks: block files (versions) the result was computed on, in order.
        ciphertexts: SEAL ciphertext streams, ``result_ciphertexts_per_block``
            per block in block order (complex packing: half A, then half B).
        scale: the scale the key service must find on every ciphertext.
    """

    blocks: tuple[str, ...]
    ciphertexts: tuple[bytes, ...]
    scale: float

    def __repr__(self) -> str:
        return f"MaskedResult(blocks={len(self.blocks)})"


class BlockScorer:
    """The per-block work of the sealed matcher, independent of where the blocks live.

    :class:`SealedMatcher` runs it over a whole gallery; a shard of a cluster
    (:mod:`pprm.cluster`) runs it over the blocks it holds. Public material only.

    Args:
        ctx: the state's CKKS context (no keys).
        conjugation_key: public Galois keys for conjugation; required with
            complex packing, unused with real packing.

    Raises:
        ParameterError: complex packing without a conjugation key.
    """

    def __init__(self, ctx: CkksContext, conjugation_key: seal.GaloisKeys | None = None) -> None:
        self.ctx = ctx
        if ctx.params.packing == "complex" and conjugation_key is None:
            raise ParameterError(f"{ctx.params.name} packs two templates per slot and needs the conjugation key")
        self._conj_key = conjugation_key

    def weights(self, probe: np.ndarray, threshold: float, dim: int) -> np.ndarray:
        """The probe's integer weights, after checking the probe and the threshold.

        Raises:
            TemplateError: the probe is malformed.
            ParameterError: the threshold is outside (0, 1).
        """
        if not 0.0 < threshold < 1.0:
            raise ParameterError("threshold must lie strictly between 0 and 1")
        return quantise_probe(normalise_probe(probe, dim), self.ctx.params.probe_scale_bits)

    def run(self, count: int, residues: Callable[[int], np.ndarray], occupancy: Callable[[int], np.ndarray],
            w: np.ndarray, threshold: float, progress: Progress | None = None) -> list[list[bytes]]:
        """Masked results of ``count`` blocks: ``residues(b)`` and ``occupancy(b)`` give block ``b``.

        Returns:
            Per block, its ciphertexts (one with real packing, A and B with complex).
        """
        p = self.ctx.params
        # Complex packing subtracts tau from both parts of every slot at once.
        tau_value: float | complex = complex(threshold, threshold) if p.packing == "complex" else threshold
        tau = self.ctx.encode_constant(tau_value, p.gallery_scale_bits + p.probe_scale_bits)
        out: list[list[bytes]] = []
        if count == 0:
            return out

        def mac(b: int) -> np.ndarray:
            return kernel.multiply_accumulate(residues(b), w, self.ctx.moduli)

        # The kernel releases the GIL; masking holds it in SEAL. Computing block
        # b+1 in a worker while block b is masked overlaps the two.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="pprm-mac") as pool:
            pending = pool.submit(mac, 0)
            for b in range(count):
                res = pending.result()
                if b + 1 < count:
                    pending = pool.submit(mac, b + 1)
                out.append(self._mask(res, tau, occupancy(b)))
                if progress:
                    progress(b + 1, count)
        return out

    def _mask(self, residues: np.ndarray, tau: seal.Plaintext, occupied: np.ndarray) -> list[bytes]:
        """Turn the score ciphertext of one block into masked results, serialised.

        Returns:
            ``[r*(s - tau) + e]`` with real packing; ``[A, B]`` with complex
            packing, each holding ``2*r*(s - tau) + e`` for its half.
        """
        p = self.ctx.params
        ev = self.ctx.evaluator
        score_bits = p.gallery_scale_bits + p.probe_scale_bits
        ct = self.ctx.from_residues(residues, float(2**score_bits))
        ev.sub_plain_inplace(ct, tau)
        if p.packing != "complex":
            masks = draw_masks(occupied, p)
            ev.multiply_plain_inplace(ct, self.ctx.encode(masks.r, p.mask_scale_bits))
            ev.add_plain_inplace(ct, self.ctx.encode(masks.e, p.result_scale_bits))
            return [self.ctx.save_bytes(ct)]
        if self._conj_key is None:  # refused in __init__; kept for the type checker
            raise ParameterError("complex packing needs the conjugation key")
        h = p.slots
        conj = self.ctx.conjugate(ct, self._conj_key)
        u = seal.Ciphertext(self.ctx.seal)
        ev.add(ct, conj, u)  # 2(s_A - tau) in every slot
        ev.sub_inplace(conj, ct)  # -2i(s_B - tau)
        out = []
        # Independent draws per half: no two templates share r or e. Padding
        # positions get r = 1, e = -1: about -2*tau - 1, a certain non-hit.
        for half, (half_ct, factor) in enumerate(((u, 1.0), (conj, 1j))):
            masks = draw_masks(occupied[half * h:(half + 1) * h], p)
            # For B, i*r_B: (-2i)(s_B - tau) * i*r_B = 2*r_B*(s_B - tau), real.
            ev.multiply_plain_inplace(half_ct, self.ctx.encode(masks.r * factor, p.mask_scale_bits))
            ev.add_plain_inplace(half_ct, self.ctx.encode(masks.e, p.result_scale_bits))
            out.append(self.ctx.save_bytes(half_ct))
        return out


class SealedMatcher:
    """Computes masked encrypted threshold results over a sealed gallery.

    Args:
        ctx: the state's CKKS context (no keys).
        gallery: the encrypted gallery.
        conjugation_key: public Galois keys for conjugation (see
            :func:`pprm.crypto.keys.load_conjugation_key`); required with
            complex packing, unused with real packing.

    Raises:
        ParameterError: complex packing without a conjugation key.
    """

    def __init__(self, ctx: CkksContext, gallery: EncryptedGallery,
                 conjugation_key: seal.GaloisKeys | None = None) -> None:
        self.ctx = ctx
        self.gallery = gallery
        self.scorer = BlockScorer(ctx, conjugation_key)

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
            ParameterError: the threshold is outside (0, 1).
        """
        w = self.scorer.weights(probe, threshold, self.gallery.dim)
        blocks = self.gallery.index.blocks
        per_block = self.scorer.run(len(blocks), self.gallery.block, lambda b: blocks[b].occupancy(), w, threshold,
                                    progress)
        return MaskedResult(tuple(b.file for b in blocks), tuple(ct for cts in per_block for ct in cts),
                            float(2**self.ctx.params.result_scale_bits))
