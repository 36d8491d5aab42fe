"""The packed answer encoding: sizes, fidelity of the rounding, and strict decoding.

A blind answer block is a ciphertext at q0 whose coefficients lose their low
``answer_drop_bits`` (12) bits before they travel (pprm.crypto.answer_codec).
Rounding c0 and c1 by at most 2**11 each changes the decryption
``c0 + c1*s`` by ``d0 + d1*s``. With s ternary, every coefficient of
``d1*s`` is a sum of at most N terms of size at most 2**11, and a slot value
is an evaluation at a root of unity divided by the scale, so each slot moves
by at most ``(N + N*N) * 2**11 / scale``: about 2.4e-4 at N=1024 and scale
2**43. That is the guaranteed tolerance asserted below; the typical error is
far smaller (random signs: about 2**-23.6 standard deviation per slot at
N=1024), and the test checks that too with a wide margin.
"""

from __future__ import annotations

import numpy as np
import pytest
import tenseal.sealapi as seal
from hypothesis import given, settings
from hypothesis import strategies as st

from pprm.crypto import blind_keys
from pprm.crypto.answer_codec import answer_bytes, decode_answer, encode_answer
from pprm.crypto.context import BlindContext
from pprm.crypto.encoding import coefficients_to_residues, encode_coefficients
from pprm.errors import CiphertextError
from pprm.matching.blind import BlindMatcher, answer_scale
from pprm.matching.blind_client import decrypt_signs, decrypt_values, encrypt_probe
from pprm.matching.diagonals import build_database


def kept_bytes(ctx: BlindContext) -> int:
    return (ctx.params.coeff_modulus_bits[0] - ctx.params.answer_drop_bits) // 8


def rounding_bound(ctx: BlindContext) -> float:
    """Largest possible slot change from rounding c0 and c1 (see the module docstring)."""
    n, half = ctx.n, 2 ** (ctx.params.answer_drop_bits - 1)
    return (n + n * n) * half / answer_scale(ctx)


def at_q0(ctx: BlindContext, pair: blind_keys.BlindKeyPair, values: np.ndarray) -> seal.Ciphertext:
    """Encrypt ``values`` at the top level and scale, then rescale to q0 as BlindMatcher.hide does."""
    p = ctx.params
    slots = values[:p.slots] + 1j * values[p.slots:] if p.complex_packing else values  # positions -> slots
    coeffs = encode_coefficients(np.asarray(slots)[None], p.top_scale_bits, ctx.n)
    pt = ctx.plaintext_from_residues(ctx.to_ntt(coefficients_to_residues(coeffs, ctx.moduli))[0],
                                     float(2**p.top_scale_bits))
    ct = seal.Ciphertext(ctx.seal)
    seal.Encryptor(ctx.seal, pair.secret_key).encrypt_symmetric(pt, ct)
    for _ in range(p.data_primes - 1):
        ctx.evaluator.rescale_to_next_inplace(ct)
    return ct


@pytest.fixture(scope="module")
def sample(blind_ctx: BlindContext, blind_keypair: blind_keys.BlindKeyPair) -> tuple[np.ndarray, seal.Ciphertext]:
    # The masked values r*(s - tau) + e of an answer lie within +-2**14.
    values = np.random.default_rng(1).uniform(-2.0**13, 2.0**13, blind_ctx.params.templates_per_block)
    return values, at_q0(blind_ctx, blind_keypair, values)


def test_answer_size(blind_ctx: BlindContext) -> None:
    # 48 of q0's 60 bits kept: 6 bytes per coefficient, two polynomials.
    assert kept_bytes(blind_ctx) == 6
    assert answer_bytes(blind_ctx) == 2 * blind_ctx.n * 6 == 12288


def test_rescaled_scale_is_the_protocol_scale(blind_ctx: BlindContext,
                                              sample: tuple[np.ndarray, seal.Ciphertext]) -> None:
    # decode_answer is given the scale by the protocol, not by the sender: it must be SEAL's, bit for bit.
    _, ct = sample
    assert ct.scale == answer_scale(blind_ctx)
    assert tuple(ct.parms_id()) == blind_ctx.levels[1]


def test_round_trip_decrypts_within_the_rounding_bound(
        blind_ctx: BlindContext, blind_keypair: blind_keys.BlindKeyPair,
        sample: tuple[np.ndarray, seal.Ciphertext]) -> None:
    values, ct = sample
    before = blind_ctx.save_bytes(ct)
    blob = encode_answer(blind_ctx, ct)
    assert len(blob) == answer_bytes(blind_ctx)
    assert blind_ctx.save_bytes(ct) == before  # the input ciphertext is not modified
    back = decode_answer(blind_ctx, blob, answer_scale(blind_ctx))
    assert tuple(back.parms_id()) == blind_ctx.levels[1] and back.size() == 2 and back.is_ntt_form()
    exact = decrypt_values(blind_ctx, blind_keypair.secret_key, ct)
    packed = decrypt_values(blind_ctx, blind_keypair.secret_key, back)
    err = float(np.max(np.abs(packed - exact)))
    bound = rounding_bound(blind_ctx)
    assert bound < 3e-4
    assert err <= bound
    # Typical error: about 2**-21.7 measured for the worst of 512 slots; 2**-16 leaves a factor 40.
    assert err <= 2.0**-16
    # And both are the encrypted values up to the (tiny) encryption and encoding noise.
    assert np.max(np.abs(exact - values)) < 1e-6
    assert np.array_equal(packed > 0, values > 0)


def test_encoding_a_decoded_block_is_the_identity(blind_ctx: BlindContext,
                                                  sample: tuple[np.ndarray, seal.Ciphertext]) -> None:
    blob = encode_answer(blind_ctx, sample[1])
    assert encode_answer(blind_ctx, decode_answer(blind_ctx, blob, answer_scale(blind_ctx))) == blob


def _pack(ctx: BlindContext, packed: np.ndarray) -> bytes:
    """``uint64[2, N]`` kept values -> the wire bytes (little-endian, ``kept_bytes`` each)."""
    k = kept_bytes(ctx)
    return packed.astype("<u8").view(np.uint8).reshape(-1, 8)[:, :k].tobytes()


def _max_packed(ctx: BlindContext) -> int:
    """The largest kept value whose coefficient ``value << drop`` is still below q0."""
    return (ctx.moduli[0] - 1) >> ctx.params.answer_drop_bits


@settings(max_examples=25)
@given(seed=st.integers(0, 2**32 - 1))
def test_property_any_valid_block_survives_decode_and_encode(blind_ctx: BlindContext, seed: int) -> None:
    # Any coefficient vector in range, with a non-zero c1, is a valid block,
    # and the codec maps it to itself (decoding is exact, re-rounding is a no-op).
    rng = np.random.default_rng(seed)
    packed = rng.integers(0, _max_packed(blind_ctx), size=(2, blind_ctx.n), endpoint=True, dtype=np.uint64)
    packed[1, rng.integers(blind_ctx.n)] |= np.uint64(1)
    blob = _pack(blind_ctx, packed)
    assert encode_answer(blind_ctx, decode_answer(blind_ctx, blob, answer_scale(blind_ctx))) == blob


def test_largest_coefficient_below_q0_is_accepted(blind_ctx: BlindContext) -> None:
    packed = np.ones((2, blind_ctx.n), dtype=np.uint64)
    packed[0, 5] = packed[1, 7] = _max_packed(blind_ctx)
    blob = _pack(blind_ctx, packed)
    assert encode_answer(blind_ctx, decode_answer(blind_ctx, blob, answer_scale(blind_ctx))) == blob


@pytest.mark.parametrize("where", [(0, 0), (0, 1023), (1, 0), (1, 512)])
def test_coefficient_at_or_above_q0_is_refused(blind_ctx: BlindContext, where: tuple[int, int]) -> None:
    for value in (_max_packed(blind_ctx) + 1, 2**48 - 1):  # the first value >= q0 after the shift, and all ones
        packed = np.ones((2, blind_ctx.n), dtype=np.uint64)
        packed[where] = value
        with pytest.raises(CiphertextError, match="outside"):
            decode_answer(blind_ctx, _pack(blind_ctx, packed), answer_scale(blind_ctx))


def test_transparent_block_is_refused(blind_ctx: BlindContext, sample: tuple[np.ndarray, seal.Ciphertext]) -> None:
    # With c1 = 0 the block is no ciphertext at all, just c0 in the clear: a
    # responder that skipped the re-randomisation must not be silently accepted.
    blob = encode_answer(blind_ctx, sample[1])
    half = len(blob) // 2
    with pytest.raises(CiphertextError, match="transparent"):
        decode_answer(blind_ctx, blob[:half] + bytes(half), answer_scale(blind_ctx))
    # c0 = 0 with a non-zero c1 is a legitimate (if unlikely) ciphertext.
    decode_answer(blind_ctx, bytes(half) + blob[half:], answer_scale(blind_ctx))


@pytest.mark.parametrize("delta", [-1, 1, -6, 6])  # a byte, or a whole coefficient, too few or too many
def test_wrong_length_is_refused(blind_ctx: BlindContext, sample: tuple[np.ndarray, seal.Ciphertext],
                                 delta: int) -> None:
    blob = encode_answer(blind_ctx, sample[1])
    bad = blob[:delta] if delta < 0 else blob + b"\x01" * delta
    with pytest.raises(CiphertextError, match="bytes"):
        decode_answer(blind_ctx, bad, answer_scale(blind_ctx))


@pytest.mark.parametrize("blob", [b"", b"\x01" * 12287, b"\x01" * 24576])
def test_other_lengths_are_refused(blind_ctx: BlindContext, blob: bytes) -> None:
    with pytest.raises(CiphertextError):
        decode_answer(blind_ctx, blob, answer_scale(blind_ctx))


def test_real_matcher_answer(blind_ctx: BlindContext, blind_keypair: blind_keys.BlindKeyPair,
                             blind_announced: blind_keys.EvaluationKeys) -> None:
    """A block from BlindMatcher itself: the right size, a fixed point of the codec, the right signs."""
    rng = np.random.default_rng(7)
    g = rng.standard_normal((8, blind_ctx.params.dim))
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    db = build_database(g, blind_ctx)
    probe = blind_ctx.load_seeded_ciphertext(encrypt_probe(blind_ctx, blind_keypair.secret_key, g[3]),
                                             scale=float(2**blind_ctx.params.probe_scale_bits))
    keys = blind_announced
    result = BlindMatcher(blind_ctx, db).answer(probe, keys, 0.4)
    assert len(result.ciphertexts) == 1 and result.order == [0]
    blob = result.ciphertexts[0]
    assert len(blob) == answer_bytes(blind_ctx)
    ct = decode_answer(blind_ctx, blob, answer_scale(blind_ctx))
    assert encode_answer(blind_ctx, ct) == blob
    signs = decrypt_signs(blind_ctx, blind_keypair.secret_key, ct)
    # Only the slot holding template 3 (score 1) clears tau = 0.4; the other
    # templates score about 0 +- 0.13 and empty slots score exactly 0.
    assert np.flatnonzero(signs).tolist() == np.flatnonzero(db.slot_record[0] == 3).tolist()
