"""Exact CKKS encoding: SEAL's slot order, and agreement with SEAL's own encoder."""

from __future__ import annotations

import numpy as np
import pytest
import tenseal.sealapi as seal

from pprm.crypto import blind_params
from pprm.crypto.context import BlindContext
from pprm.crypto.encoding import coefficients_to_residues, encode_coefficients, slot_exponents
from pprm.errors import CiphertextError
from tests.helpers import centered_coefficients, plaintext_residues


@pytest.fixture(scope="module")
def bctx() -> BlindContext:
    return BlindContext(blind_params.get("INSECURE-blind-n1024", allow_insecure=True))


def _mine(ctx: BlindContext, values: np.ndarray, scale_bits: int) -> seal.Plaintext:
    coeffs = encode_coefficients(values, scale_bits, ctx.n)
    ntt = ctx.to_ntt(coefficients_to_residues(coeffs[None], ctx.moduli))[0]
    return ctx.plaintext_from_residues(ntt, float(2**scale_bits))


def test_slot_exponents_are_powers_of_three() -> None:
    t = slot_exponents(1024)
    assert t[0] == 1 and t[1] == 3 and t[2] == 9
    assert len(set(t.tolist())) == 512 and all(x % 2 == 1 for x in t)


@pytest.mark.parametrize("scale_bits", [30, 70, 150])
def test_seal_decodes_the_exact_encoding(bctx: BlindContext, scale_bits: int) -> None:
    # SEAL's own decoder must read back the values: this pins the slot order
    # (slot j at zeta**(3**j)) and the conjugate half.
    rng = np.random.default_rng(scale_bits)
    values = rng.normal(size=bctx.slots) + 1j * rng.normal(size=bctx.slots)
    got = bctx.decode_complex(_mine(bctx, values, scale_bits))
    assert np.abs(got - values).max() < 1e-6


def test_exact_encoding_is_within_rounding_of_seals(bctx: BlindContext) -> None:
    # At scale 2**40 both encoders round to the same integers up to SEAL's
    # float64 error (here: identical); at 2**70 and beyond SEAL's relative
    # error of about 1e-16 shows, which is why diagonals are encoded exactly.
    values = np.random.default_rng(3).uniform(-1, 1, bctx.slots)
    ours = _mine(bctx, values, 40)
    theirs = seal.Plaintext()
    bctx.encoder.encode(values.tolist(), bctx.parms_id, float(2**40), theirs)
    a, b = plaintext_residues(bctx, ours, 3), plaintext_residues(bctx, theirs, 3)
    diff = np.empty_like(a)
    for j, q in enumerate(bctx.moduli):
        diff[j] = np.where(a[j] >= b[j], a[j] - b[j], a[j] + (np.uint64(q) - b[j]))
    assert max(abs(c) for c in centered_coefficients(bctx, diff)) <= 2


def test_encoding_is_linear_and_exact_on_integers(bctx: BlindContext) -> None:
    # A constant c in every slot is the constant polynomial c * scale.
    coeffs = encode_coefficients(np.full(bctx.slots, 0.25), 20, bctx.n)
    assert coeffs[0] == 2**18 and not coeffs[1:].any()


def test_too_many_values_are_refused(bctx: BlindContext) -> None:
    with pytest.raises(CiphertextError, match="slots"):
        encode_coefficients(np.zeros(bctx.slots + 1), 20, bctx.n)


def test_residues_cover_large_coefficients(bctx: BlindContext) -> None:
    # Coefficients far above 2**64 (the e term is encoded at 2**163) reduce
    # exactly; 2**150 + 2**100 fits the 64-bit mantissa.
    big = np.array([np.ldexp(np.longdouble(1), 150) + np.ldexp(np.longdouble(1), 100),
                    -np.ldexp(np.longdouble(3), 120)])
    res = coefficients_to_residues(big, bctx.moduli)
    for j, q in enumerate(bctx.moduli):
        assert int(res[j, 0]) == (2**150 + 2**100) % q
        assert int(res[j, 1]) == (-3 * 2**120) % q
