"""Per-slot masks for the threshold test (docs/DESIGN.md section 4).

The matcher turns an encrypted score ``s`` into ``r * (s - tau) + e`` with a
fresh, independent, positive ``r`` per slot and small slot noise ``e``, so
the decryptor learns the sign and nothing it could invert to the score.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from pprm.errors import ParameterError

__all__ = ["Masks", "MaskParams", "draw_masks", "draw_block_masks", "masks_from_uniform", "csprng_uniform",
           "uniform_from_words", "MAX_DRAWS"]

# A free or removed slot decrypts to about r*(0 - tau) + e; forcing r = 1 and
# e = -1 puts it more than one unit below zero: a certain non-hit.
_PADDING_R = 1.0
_PADDING_E = -1.0
# draw_block_masks redraws only when the block's mean mask magnitude passes a
# cap set for a 2**-40 redraw rate (pprm.crypto.masked_codec); eight draws in
# a row past it mean the cap is wrong, not bad luck.
MAX_DRAWS = 8


def uniform_from_words(words: np.ndarray) -> np.ndarray:
    """Uniform floats in [0, 1) from random 64-bit words: the top 53 bits of each."""
    return (np.asarray(words, dtype=np.uint64) >> np.uint64(11)).astype(np.float64) * 2.0**-53


def csprng_uniform(n: int) -> np.ndarray:
    """``n`` uniform floats in [0, 1) with 53 random bits each, from ``os.urandom``."""
    return uniform_from_words(np.frombuffer(os.urandom(8 * n), dtype=np.uint64))


class MaskParams(Protocol):
    """What mask drawing needs from a parameter set of either profile."""

    @property
    def mask_log2_max(self) -> int: ...
    @property
    def decision_margin(self) -> float: ...


@dataclass(frozen=True)
class Masks:
    """Mask ``r`` and noise ``e`` for the slots of one block."""

    r: np.ndarray
    e: np.ndarray


def draw_masks(occupied: np.ndarray, params: MaskParams) -> Masks:
    """Draw masks for one block.

    Args:
        occupied: bool per slot; False slots become certain non-hits.
        params: gives the mask range and the decision margin.

    Returns:
        ``r`` log-uniform in [1, 2**mask_log2_max] and ``e`` uniform in
        ``[-r*margin/4, r*margin/4]`` for occupied slots.

    Warning:
        ``r`` and ``e`` must come from a CSPRNG and never be reused: a repeated
        mask across two slots or two queries reveals score differences.
        ``|e| <= r*margin/4`` keeps every decision with ``|s - tau| >= margin``
        exact even with r's encoding error (about 0.1 at worst for r = 1).
        With complex packing the mask is encoded at 2**9, so that error is
        about 0.2 at worst, but the masked value is ``2*r*(s - tau) + e``:
        the same ``e`` leaves even more room there.
    """
    n = occupied.size
    return masks_from_uniform(csprng_uniform(n), csprng_uniform(n), occupied, params)


def masks_from_uniform(u: np.ndarray, v: np.ndarray, occupied: np.ndarray, params: MaskParams) -> Masks:
    """The masks :func:`draw_masks` makes from the uniforms ``u`` (for r) and ``v`` (for e).

    Args:
        u: uniforms in [0, 1), one per slot.
        v: uniforms in [0, 1), one per slot.
        occupied: bool per slot.
        params: gives the mask range and the decision margin.

    Returns:
        ``r = 2**(u * mask_log2_max)``, ``e = (2v - 1) * r * margin / 4``;
        free slots get ``r = 1``, ``e = -1``.
    """
    r = np.exp2(u * params.mask_log2_max)
    e = (2.0 * v - 1.0) * r * (params.decision_margin / 4.0)
    return Masks(np.where(occupied, r, _PADDING_R), np.where(occupied, e, _PADDING_E))


def draw_block_masks(parts: Sequence[np.ndarray], params: MaskParams, cap: float) -> list[Masks]:
    """Draw masks for the parts of one block, redrawn together while they are too large on average.

    The compact masked encoding (:func:`pprm.crypto.masked_codec.masked_layout`)
    scales each decryption up as far as the masks allow; what bounds its
    coefficients is the mean over slots ``j`` of ``rho_j = sqrt(sum over
    parts of r[j]**2)``. The masks are redrawn while that mean exceeds ``cap``.

    Args:
        parts: occupancy of each part, slot by slot (one array with real
            packing; the A and B halves with complex packing), equal lengths.
        params: gives the mask range and the decision margin.
        cap: the largest mean ``rho`` the block's encoding allows
            (:attr:`pprm.crypto.masked_codec.MaskedLayout.rho_cap`).

    Returns:
        One :class:`Masks` per part, as :func:`draw_masks` draws them.

    Raises:
        ParameterError: :data:`MAX_DRAWS` draws in a row exceed the cap.

    Warning:
        Redrawing conditions the masks on ``mean(rho) <= cap``. The cap is set
        so that a draw exceeds it with probability at most 2**-40, so the
        masks' distribution moves by at most that much in statistical
        distance; every draw is fresh from the CSPRNG and discarded draws are
        never used.
    """
    for _ in range(MAX_DRAWS):
        masks = [draw_masks(o, params) for o in parts]
        rho = np.sqrt(np.sum([m.r * m.r for m in masks], axis=0))
        if float(rho.mean()) <= cap:
            return masks
    raise ParameterError(f"masks exceeded their cap {cap:.3g} in {MAX_DRAWS} draws in a row")
