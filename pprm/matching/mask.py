"""Per-slot masks for the threshold test (docs/DESIGN.md section 4).

The matcher turns an encrypted score ``s`` into ``r * (s - tau) + e`` with a
fresh, independent, positive ``r`` per slot and small slot noise ``e``, so
the decryptor learns the sign and nothing it could invert to the score.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol

import numpy as np

__all__ = ["Masks", "MaskParams", "draw_masks", "csprng_uniform"]

# A free or removed slot decrypts to about r*(0 - tau) + e; forcing r = 1 and
# e = -1 puts it more than one unit below zero: a certain non-hit.
_PADDING_R = 1.0
_PADDING_E = -1.0


def csprng_uniform(n: int) -> np.ndarray:
    """``n`` uniform floats in [0, 1) with 53 random bits each, from ``os.urandom``."""
    raw = np.frombuffer(os.urandom(8 * n), dtype=np.uint64)
    return (raw >> np.uint64(11)).astype(np.float64) * 2.0**-53


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
    r = np.exp2(csprng_uniform(n) * params.mask_log2_max)
    e = (2.0 * csprng_uniform(n) - 1.0) * r * (params.decision_margin / 4.0)
    r = np.where(occupied, r, _PADDING_R)
    e = np.where(occupied, e, _PADDING_E)
    return Masks(r, e)
