"""Argument checks shared by every multiply-accumulate backend.

Both kernels are exact only inside these bounds: ``|w| <= 2**16``, moduli
below 2**60 and at most 2**16 ciphertexts (the numpy path's float64 groups
and the native path's 128-bit accumulators are sized for them).

The plaintext-times-ciphertext kernel (``plain_mac``) has its own bounds:
moduli in ``[2, 2**60)``, residues below their modulus and at most
:data:`MAX_PLAIN_B` products per output coefficient, so that the sum of
products (each below 2**120) stays below 2**128.
"""

from __future__ import annotations

import numpy as np

from pprm.errors import BackendError

__all__ = [
    "MAX_WEIGHT",
    "MAX_MODULUS",
    "MAX_D",
    "MAX_PLAIN_B",
    "MIN_PLAIN_MODULUS",
    "PLAIN_RANGE_ERROR",
    "check_mac_args",
    "check_plain_mac_args",
]

MAX_WEIGHT = 1 << 16
MAX_MODULUS = 1 << 60
MAX_D = 1 << 16
MAX_PLAIN_B = 256
MIN_PLAIN_MODULUS = 2
# Raised by both plain_mac backends when a residue is not below its modulus;
# they find out while reading the residues (a separate pass would cost as much
# as the product itself), so it is not one of check_plain_mac_args' checks.
PLAIN_RANGE_ERROR = "plain_mac: a pts or cts residue is not below its prime's modulus"


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


def check_plain_mac_args(pts: np.ndarray, cts: np.ndarray, moduli: tuple[int, ...]) -> tuple[int, int, int, int, int]:
    """Validate a ``plain_mac`` call without reading the residues, and return its dimensions.

    Args:
        pts: ``uint64[G, B, L, N]``, C-contiguous (an ``np.memmap`` is fine).
        cts: ``uint64[B, S, L, N]``, C-contiguous.
        moduli: the L moduli, integers in ``[2, 2**60)``.

    Returns:
        ``(G, B, S, L, N)``.

    Raises:
        BackendError: a dtype, shape, layout, ``B`` or modulus the kernels
            cannot compute exactly. Non-contiguous arrays are refused rather
            than copied: pts is ~128 MiB in real use, and a silent copy would
            double the memory traffic the kernel is built to avoid.
    """
    for name, arr, dims in (("pts", pts, "G, B, L, N"), ("cts", cts, "B, S, L, N")):
        if not isinstance(arr, np.ndarray) or arr.ndim != 4 or arr.dtype != np.uint64:
            raise BackendError(f"plain_mac: {name} must be a native-endian uint64[{dims}] array")
        if not (arr.flags.c_contiguous and arr.flags.aligned):
            raise BackendError(f"plain_mac: {name} must be C-contiguous and aligned (it is not copied)")
    g, b, nl, n = pts.shape
    if cts.shape[0] != b or cts.shape[2:] != (nl, n):
        raise BackendError(f"plain_mac: cts{list(cts.shape)} does not match pts{list(pts.shape)}: "
                           f"need [B, S, L, N] = [{b}, S, {nl}, {n}]")
    if len(moduli) != nl:
        raise BackendError(f"plain_mac: {len(moduli)} moduli given for L={nl} primes")
    if b > MAX_PLAIN_B:
        raise BackendError(f"plain_mac: B={b} products per coefficient exceed {MAX_PLAIN_B} (the 128-bit bound)")
    for q in moduli:
        # bool is an int, and a float modulus would be truncated somewhere.
        if isinstance(q, bool) or not isinstance(q, int | np.integer) or not MIN_PLAIN_MODULUS <= q < MAX_MODULUS:
            raise BackendError(f"plain_mac: modulus {q!r} is not an integer in [2, 2**60)")
    return g, b, cts.shape[1], nl, n
