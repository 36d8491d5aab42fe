"""Exact noise measurement for blind-profile ciphertexts (test helper).

The noise of a ciphertext is the largest coefficient of (decryption - the
exact encoding of the values it should hold), computed with integer CRT, so
bounds like 2**-50 of the scale are measured, not estimated in float64.
"""

from __future__ import annotations

import math
import os
import tempfile

import numpy as np
import tenseal.sealapi as seal
import zstandard

from pprm.crypto.context import BlindContext
from pprm.crypto.encoding import coefficients_to_residues, encode_coefficients


def plaintext_residues(ctx: BlindContext, pt: seal.Plaintext, primes: int) -> np.ndarray:
    fd, path = tempfile.mkstemp(dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    os.close(fd)
    try:
        pt.save(path)
        with open(path, "rb") as fh:
            raw = fh.read()
    finally:
        os.unlink(path)
    body = zstandard.ZstdDecompressor().decompress(raw[16:], max_output_size=1 << 28) if raw[5] == 2 else raw[16:]
    off = 32 + 8 + 8 + 16 + 8
    return np.frombuffer(body, dtype="<u8", offset=off).astype(np.uint64).reshape(primes, ctx.n)


def centered_coefficients(ctx: BlindContext, ntt_residues: np.ndarray) -> list[int]:
    """CRT-lift NTT residues ``[L, N]`` to centered integer coefficients."""
    primes = ntt_residues.shape[0]
    if not ntt_residues.any():
        return [0] * ctx.n
    ct = ctx.from_residues(np.stack([ntt_residues, ntt_residues]), 1.0)
    ctx.evaluator.transform_from_ntt_inplace(ct)
    from pprm.crypto import seal_stream

    _meta, res = seal_stream.parse(ctx.save_bytes(ct))
    coeffs = res[0]
    moduli = ctx.moduli[:primes]
    big_q = 1
    for q in moduli:
        big_q *= q
    out = []
    parts = [(big_q // q) * pow(big_q // q, -1, q) for q in moduli]
    cols = [coeffs[j].tolist() for j in range(primes)]
    for k in range(ctx.n):
        v = sum(cols[j][k] * parts[j] for j in range(primes)) % big_q
        out.append(v - big_q if v > big_q // 2 else v)
    return out


def noise_bits(ctx: BlindContext, secret_key: seal.SecretKey, ct: seal.Ciphertext,
               values: np.ndarray, scale_bits: int) -> float:
    """log2 of the largest noise coefficient of ``ct`` against exact ``values`` at ``2**scale_bits``."""
    primes = ct.coeff_modulus_size()
    pt = seal.Plaintext()
    seal.Decryptor(ctx.seal, secret_key).decrypt(ct, pt)
    dec = plaintext_residues(ctx, pt, primes)
    ideal = coefficients_to_residues(encode_coefficients(values, scale_bits, ctx.n)[None], ctx.moduli[:primes])
    ideal = ctx.to_ntt(ideal)[0]
    diff = np.empty_like(dec)
    for j, q in enumerate(ctx.moduli[:primes]):
        diff[j] = np.where(dec[j] >= ideal[j], dec[j] - ideal[j], dec[j] + (np.uint64(q) - ideal[j]))
    worst = max(abs(c) for c in centered_coefficients(ctx, diff))
    return math.log2(max(worst, 1))


def masked_noise_bits(ctx: BlindContext, secret_key: seal.SecretKey, matcher: object, probe_ct: seal.Ciphertext,
                      galois: seal.GaloisKeys, scores: np.ndarray, signs: np.ndarray, tau: float,
                      r: np.ndarray) -> float:
    """Noise of block 0's masked value before the flood, against the exact ring product.

    The ideal is ``NTT(exact u*(s - tau)) * NTT(R)``: the exact encoding of the
    signed, shifted scores times the integer mask polynomial actually used,
    so what remains is the computation's own noise (encryption, rotations,
    rounding of the diagonals), multiplied by the mask.
    """
    from pprm.matching import kernel
    from pprm.matching.blind import BlindMatcher

    assert isinstance(matcher, BlindMatcher)
    p = ctx.params
    baby = matcher._baby_steps(probe_ct, galois)
    inner = kernel.plain_mac(matcher.db.diagonals[0], baby, ctx.moduli)
    score = matcher._giant_steps(inner, galois)
    masked = matcher.mask(score, signs, tau, r, np.zeros_like(r))
    ct = ctx.from_residues(masked, float(2**p.top_scale_bits))
    pt = seal.Plaintext()
    seal.Decryptor(ctx.seal, secret_key).decrypt(ct, pt)
    dec = plaintext_residues(ctx, pt, p.data_primes)
    shifted = (signs * (scores - np.longdouble(tau))).astype(np.longdouble)
    st = ctx.to_ntt(coefficients_to_residues(encode_coefficients(shifted[None], p.score_scale_bits, ctx.n),
                                             ctx.moduli))[0]
    rr = ctx.to_ntt(coefficients_to_residues(encode_coefficients((signs * r)[None], p.mask_scale_bits, ctx.n),
                                             ctx.moduli))[0]
    ideal = kernel.plain_mac(rr[None, None], np.stack([st, st])[None], ctx.moduli)[0, 0]
    diff = np.empty_like(dec)
    for j, q in enumerate(ctx.moduli):
        diff[j] = np.where(dec[j] >= ideal[j], dec[j] - ideal[j], dec[j] + (np.uint64(q) - ideal[j]))
    worst = max(abs(c) for c in centered_coefficients(ctx, diff))
    return math.log2(max(worst, 1))
