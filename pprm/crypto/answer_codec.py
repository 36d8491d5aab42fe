"""Compact encoding of blind-profile answer ciphertexts.

An answer block is a ciphertext at the first prime q0 (60 bits). SEAL's own
stream stores 8 bytes per coefficient and cannot compress uniformly random
residues, so the responder sends the coefficient form with the low
``answer_drop_bits`` rounded off, in whole bytes: 6 bytes per coefficient,
24 bytes per template for the N=16384 set. Rounding a public ciphertext is a
deterministic function of it, so it reveals nothing the ciphertext did not;
the error it adds (times the ternary secret) is about 100 times below the
flood (see :mod:`pprm.crypto.blind_params`).

Rounding must happen in coefficient form: an error that is small in the NTT
domain is not small in the coefficient domain.
"""

from __future__ import annotations

import numpy as np
import tenseal.sealapi as seal

from pprm.crypto.context import BlindContext
from pprm.errors import CiphertextError

__all__ = ["encode_answer", "decode_answer", "answer_bytes"]


def _kept_bytes(ctx: BlindContext) -> int:
    return (ctx.params.coeff_modulus_bits[0] - ctx.params.answer_drop_bits) // 8


def answer_bytes(ctx: BlindContext) -> int:
    """The exact size of one encoded answer block."""
    return 2 * ctx.n * _kept_bytes(ctx)


def encode_answer(ctx: BlindContext, ct: seal.Ciphertext) -> bytes:
    """Round and pack an answer ciphertext at q0 (NTT form; it is not modified).

    Args:
        ctx: the blind context.
        ct: a size-2 ciphertext at the last level (one prime).

    Returns:
        :func:`answer_bytes` bytes.
    """
    coeff = seal.Ciphertext(ctx.seal)
    ctx.evaluator.transform_from_ntt(ct, coeff)
    res = ctx.to_residues(coeff, 1)[:, 0, :]
    t = ctx.params.answer_drop_bits
    q0 = ctx.moduli[0]
    rounded = (res + np.uint64(1 << t >> 1)) >> np.uint64(t) if t else res
    # round(x / 2**t) can reach ceil(q0 / 2**t), which is q0 itself: fold it to 0.
    rounded = np.where(rounded >= np.uint64(-(-q0 >> t)), np.uint64(0), rounded)
    raw = rounded.astype("<u8").view(np.uint8).reshape(-1, 8)[:, : _kept_bytes(ctx)]
    return raw.tobytes()


def decode_answer(ctx: BlindContext, blob: bytes, scale: float) -> seal.Ciphertext:
    """Rebuild an answer ciphertext (NTT form) from its packed bytes.

    Args:
        ctx: the blind context.
        blob: bytes from :func:`encode_answer`.
        scale: the answer scale the protocol fixes.

    Returns:
        The ciphertext at q0.

    Raises:
        CiphertextError: wrong length, or a value outside ``[0, q0)``.
    """
    k = _kept_bytes(ctx)
    if len(blob) != answer_bytes(ctx):
        raise CiphertextError(f"answer block must be {answer_bytes(ctx)} bytes, got {len(blob)}")
    raw = np.zeros((2 * ctx.n, 8), dtype=np.uint8)
    raw[:, :k] = np.frombuffer(blob, dtype=np.uint8).reshape(-1, k)
    vals = raw.view("<u8").reshape(2, ctx.n).astype(np.uint64) << np.uint64(ctx.params.answer_drop_bits)
    q0 = ctx.moduli[0]
    if int(vals.max()) >= q0:
        raise CiphertextError("answer block has a coefficient outside [0, q0)")
    if not vals[1].any():
        raise CiphertextError("answer block is transparent")
    ct = ctx.from_residues(vals[:, None, :], scale, ntt=False)
    ctx.evaluator.transform_to_ntt_inplace(ct)
    return ct
