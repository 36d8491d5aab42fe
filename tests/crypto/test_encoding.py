"""Exact CKKS encoding: SEAL's slot order, and agreement with SEAL's own encoder."""

from __future__ import annotations

import numpy as np
import pytest
import tenseal.sealapi as seal

from pprm.crypto.context import BlindContext
from pprm.crypto.encoding import coefficients_to_residues, encode_coefficients, slot_exponents
from pprm.errors import CiphertextError
from tests.helpers import centered_coefficients, plaintext_residues


def _mine(ctx: BlindContext, values: np.ndarray, scale_bits: int) -> seal.Plaintext:
    coeffs = encode_coefficients(values, scale_bits, ctx.n)
    ntt = ctx.to_ntt(coefficients_to_residues(coeffs[None], ctx.moduli))[0]
    return ctx.plaintext_from_residues(ntt, float(2**scale_bits))


def test_slot_exponents_are_powers_of_three() -> None:
    t = slot_exponents(1024)
    assert t[0] == 1 and t[1] == 3 and t[2] == 9
    assert len(set(t.tolist())) == 512 and all(x % 2 == 1 for x in t)


@pytest.mark.parametrize("scale_bits", [30, 70, 150])
def test_seal_decodes_the_exact_encoding(blind_ctx: BlindContext, scale_bits: int) -> None:
    # SEAL's own decoder must read back the values: this pins the slot order
    # (slot j at zeta**(3**j)) and the conjugate half.
    rng = np.random.default_rng(scale_bits)
    values = rng.normal(size=blind_ctx.slots) + 1j * rng.normal(size=blind_ctx.slots)
    got = blind_ctx.decode_complex(_mine(blind_ctx, values, scale_bits))
    assert np.abs(got - values).max() < 1e-6


def test_exact_encoding_is_within_rounding_of_seals(blind_ctx: BlindContext) -> None:
    # At scale 2**40 both encoders round to the same integers up to SEAL's
    # float64 error (here: identical); at 2**70 and beyond SEAL's relative
    # error of about 1e-16 shows, which is why diagonals are encoded exactly.
    values = np.random.default_rng(3).uniform(-1, 1, blind_ctx.slots)
    ours = _mine(blind_ctx, values, 40)
    theirs = seal.Plaintext()
    blind_ctx.encoder.encode(values.tolist(), blind_ctx.parms_id, float(2**40), theirs)
    a, b = plaintext_residues(blind_ctx, ours, 3), plaintext_residues(blind_ctx, theirs, 3)
    diff = np.empty_like(a)
    for j, q in enumerate(blind_ctx.moduli):
        diff[j] = np.where(a[j] >= b[j], a[j] - b[j], a[j] + (np.uint64(q) - b[j]))
    assert max(abs(c) for c in centered_coefficients(blind_ctx, diff)) <= 2


def test_encoding_is_linear_and_exact_on_integers(blind_ctx: BlindContext) -> None:
    # A constant c in every slot is the constant polynomial c * scale.
    coeffs = encode_coefficients(np.full(blind_ctx.slots, 0.25), 20, blind_ctx.n)
    assert coeffs[0] == 2**18 and not coeffs[1:].any()


def test_too_many_values_are_refused(blind_ctx: BlindContext) -> None:
    with pytest.raises(CiphertextError, match="slots"):
        encode_coefficients(np.zeros(blind_ctx.slots + 1), 20, blind_ctx.n)


def test_residues_cover_large_coefficients(blind_ctx: BlindContext) -> None:
    # Coefficients far above 2**64 (the e term is encoded at 2**163) reduce
    # exactly; 2**150 + 2**100 fits the 64-bit mantissa.
    big = np.array([np.ldexp(np.longdouble(1), 150) + np.ldexp(np.longdouble(1), 100),
                    -np.ldexp(np.longdouble(3), 120)])
    res = coefficients_to_residues(big, blind_ctx.moduli)
    for j, q in enumerate(blind_ctx.moduli):
        assert int(res[j, 0]) == (2**150 + 2**100) % q
        assert int(res[j, 1]) == (-3 * 2**120) % q
