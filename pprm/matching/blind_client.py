"""Blind profile, requester side: encrypt the probe, read the signs of the answer.

The requester normalises its probe in float64 (not the float32 the plaintext
matchers use: the responder's window-norm term then moves an honest
decision by about 2**-52 of tau instead of 2**-24), encodes it exactly
(:mod:`pprm.crypto.encoding`), replicated across the N/2 slots, at scale
``2**probe_scale_bits``, and encrypts it symmetrically under its own secret
key; SEAL then saves the ciphertext seeded (half size). On the way back it
decrypts each block and keeps only the sign of each slot: values never
leave this module.

Warning:
    Every decryption is a potential oracle for the party that crafted the
    ciphertext (Li-Micciancio 2021). Decrypt only answers bound to your own
    fresh query, and rotate the key pair after any follow-up reveals
    decrypted signs (see :mod:`pprm.crypto.blind_keys`).
"""

from __future__ import annotations

import numpy as np
import tenseal.sealapi as seal

from pprm.crypto.context import BlindContext
from pprm.crypto.encoding import coefficients_to_residues, encode_coefficients
from pprm.matching.templates import normalise_probe

__all__ = ["encrypt_probe", "decrypt_signs", "decrypt_values", "unit_probe"]


def unit_probe(probe: np.ndarray, dim: int) -> np.ndarray:
    """The probe normalised to unit length in float64, for exact encoding.

    Args:
        probe: ``float[d]`` template.
        dim: the template dimension d.

    Returns:
        ``float64[d]`` with a squared norm within about 2**-52 of 1.

    Raises:
        TemplateError: wrong dimension, not finite, or zero.
    """
    normalise_probe(probe, dim)  # the checks; its float32 result is coarser than needed here
    x = np.asarray(probe, dtype=np.float64).reshape(dim)
    # Values with float64 mantissas keep the long-double encoder exact to
    # its last bits; wider (long double) inputs measured 5 bits more noise.
    return x / np.sqrt(np.dot(x, x))


def encrypt_probe(ctx: BlindContext, secret_key: seal.SecretKey, probe: np.ndarray) -> bytes:
    """Encrypt a probe for a blind query.

    Args:
        ctx: the blind context.
        secret_key: the requester's secret key for this query.
        probe: ``float[d]`` template; it is normalised to unit length.

    Returns:
        The seeded SEAL ciphertext stream (the only upload of a query).

    Raises:
        TemplateError: wrong dimension or not finite.
    """
    p = ctx.params
    q = unit_probe(probe, p.dim)
    replicated = np.tile(q, p.slots // p.dim)
    coeffs = encode_coefficients(replicated, p.probe_scale_bits, ctx.n)
    ntt = ctx.to_ntt(coefficients_to_residues(coeffs[None], ctx.moduli))[0]
    pt = ctx.plaintext_from_residues(ntt, float(2**p.probe_scale_bits))
    enc = seal.Encryptor(ctx.seal, secret_key)
    return ctx.save_bytes(enc.encrypt_symmetric(pt))


def decrypt_values(ctx: BlindContext, secret_key: seal.SecretKey, answer: seal.Ciphertext) -> np.ndarray:
    """Decrypt one answer block to its values by position (for tests and measurements only).

    Returns ``float64[templates_per_block]``: the slots' real parts, then
    with complex packing their imaginary parts.

    Warning:
        Decrypted values must never go into a message or a log; the protocol
        uses :func:`decrypt_signs`.
    """
    pt = seal.Plaintext()
    seal.Decryptor(ctx.seal, secret_key).decrypt(answer, pt)
    if ctx.params.complex_packing:
        # Position j is the real part of slot j, position N/2 + j its imaginary part.
        z = np.asarray(ctx.encoder.decode_complex(pt), dtype=np.complex128)
        return np.concatenate([z.real, z.imag])
    return np.asarray(ctx.encoder.decode_double(pt), dtype=np.float64)


def decrypt_signs(ctx: BlindContext, secret_key: seal.SecretKey, answer: seal.Ciphertext) -> np.ndarray:
    """Which slots of one answer block clear the threshold.

    Args:
        ctx: the blind context.
        secret_key: the key the query was encrypted under.
        answer: one answer ciphertext, strictly parsed at q0.

    Returns:
        ``bool[templates_per_block]`` by position: True where ``r*(s - tau) + e > 0``.
    """
    return decrypt_values(ctx, secret_key, answer) > 0.0
