"""Argument checks shared by every multiply-accumulate backend.

Both kernels are exact only inside these bounds: ``|w| <= 2**16``, moduli
below 2**60 and at most 2**16 ciphertexts (the numpy path's float64 groups
and the native path's 128-bit accumulators are sized for them).
"""

from __future__ import annotations

import numpy as np

from pprm.errors import BackendError

__all__ = ["MAX_WEIGHT", "MAX_MODULUS", "MAX_D", "check_mac_args"]

MAX_WEIGHT = 1 << 16
MAX_MODULUS = 1 << 60
MAX_D = 1 << 16


def check_mac_args(block: np.ndarray, weights: np.ndarray, moduli: tuple[int, ...]) -> np.ndarray:
    """Validate a multiply-accumulate call and return the weights as int64.

    Raises:
        BackendError: a shape, dtype or range the kernels cannot compute exactly.
    """
    if block.ndim != 4 or block.dtype != np.uint64 or block.shape[2] != len(moduli):
        raise BackendError(f"block must be uint64[d, size, L, N] with L={len(moduli)}")
    raw = np.asarray(weights)
    # Casting float weights to int64 would silently truncate them.
    if raw.dtype.kind not in "iu":
        raise BackendError(f"weights must be integers, got {raw.dtype}")
    if raw.shape != (block.shape[0],):
        raise BackendError("one weight per ciphertext is required")
    # Compare min and max before casting: abs(-2**63) wraps negative, and
    # large uint64 values wrap when cast to int64.
    if raw.size and (int(raw.max()) > MAX_WEIGHT or int(raw.min()) < -MAX_WEIGHT):
        raise BackendError("weights exceed 2**16 and cannot be accumulated exactly")
    if block.shape[0] > MAX_D or any(q >= MAX_MODULUS for q in moduli):
        raise BackendError("dimension or modulus too large for exact accumulation")
    if any(q <= 0 for q in moduli):
        raise BackendError("moduli must be positive")
    return np.ascontiguousarray(raw, dtype=np.int64)
