"""CkksContext: residue access through SEAL, and strict loading of outside ciphertexts."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tenseal.sealapi as seal
from hypothesis import given, settings
from hypothesis import strategies as st

from pprm.crypto import params
from pprm.crypto.context import CkksContext
from pprm.crypto.seal_stream import emit, parse
from pprm.errors import CiphertextError

SCALE = 2.0**24


def _encrypt(ctx: CkksContext, sk: seal.SecretKey, values: np.ndarray) -> seal.Ciphertext:
    ct = seal.Ciphertext(ctx.seal)
    seal.Encryptor(ctx.seal, sk).encrypt_symmetric(ctx.encode(values, 24), ct)
    return ct


def _decrypt(ctx: CkksContext, sk: seal.SecretKey, ct: seal.Ciphertext) -> np.ndarray:
    pt = seal.Plaintext()
    seal.Decryptor(ctx.seal, sk).decrypt(ct, pt)
    return ctx.decode(pt)


@pytest.fixture(scope="module")
def fresh(sealed_ctx: CkksContext,
          sealed_keypair: tuple[seal.SecretKey, seal.PublicKey]) -> tuple[np.ndarray, np.ndarray]:
    """Values and the residues of a fresh symmetric encryption of them."""
    values = np.random.default_rng(0).uniform(-1, 1, sealed_ctx.slots)
    return values, sealed_ctx.to_residues(_encrypt(sealed_ctx, sealed_keypair[0], values))


def test_residues_have_seal_layout(sealed_ctx: CkksContext, fresh: tuple[np.ndarray, np.ndarray]) -> None:
    _values, arr = fresh
    assert arr.dtype == np.uint64 and arr.shape == (2, 1, sealed_ctx.n)
    assert int(arr.max()) < sealed_ctx.moduli[0]
    assert arr[1].any(), "a fresh encryption has a non-zero c1"


def test_round_trip_is_bit_identical_and_decrypts(
        sealed_ctx: CkksContext, sealed_keypair: tuple[seal.SecretKey, seal.PublicKey],
        fresh: tuple[np.ndarray, np.ndarray]) -> None:
    values, arr = fresh
    ct = sealed_ctx.from_residues(arr, SCALE)
    assert ct.scale == SCALE and ct.is_ntt_form() and ct.parms_id() == list(sealed_ctx.parms_id)
    assert np.array_equal(sealed_ctx.to_residues(ct), arr)
    # Fresh symmetric noise at scale 2**24 is ~1e-5 per slot; 1e-4 tolerance.
    assert np.abs(_decrypt(sealed_ctx, sealed_keypair[0], ct) - values).max() < 1e-4


@settings(max_examples=25)
@given(seed=st.integers(0, 2**32 - 1), size=st.integers(2, 3), edge=st.sampled_from([None, 0, -1]))
def test_any_residues_below_q_round_trip(sealed_ctx: CkksContext, seed: int, size: int, edge: int | None) -> None:
    q = sealed_ctx.moduli[0]
    arr = np.random.default_rng(seed).integers(0, q, size=(size, 1, sealed_ctx.n), dtype=np.uint64)
    if edge is not None:
        arr[:, :, :: 7] = np.uint64(0 if edge == 0 else q - 1)
    assert np.array_equal(sealed_ctx.to_residues(sealed_ctx.from_residues(arr, SCALE)), arr)


def test_to_residues_refuses_another_level() -> None:
    # Built unvalidated on purpose: pprm's sets have a single level, so
    # another level needs a chain of data primes.
    chain = dataclasses.replace(params.get("pprm-sealed-n4096-v1"), coeff_modulus_bits=(40, 30, 30))
    ctx2 = CkksContext(chain)
    sk = seal.KeyGenerator(ctx2.seal).secret_key()
    ct = _encrypt(ctx2, sk, np.ones(4))
    assert ctx2.to_residues(ct).shape == (2, 2, 4096)
    ctx2.evaluator.mod_switch_to_next_inplace(ct)
    with pytest.raises(CiphertextError, match="expected level"):
        ctx2.to_residues(ct)


def test_load_ciphertext_accepts_its_own_ciphertexts(
        sealed_ctx: CkksContext, sealed_keypair: tuple[seal.SecretKey, seal.PublicKey],
        fresh: tuple[np.ndarray, np.ndarray]) -> None:
    values, arr = fresh
    for blob in (emit(sealed_ctx.meta(SCALE), arr), sealed_ctx.save_bytes(sealed_ctx.from_residues(arr, SCALE))):
        ct = sealed_ctx.load_ciphertext(blob, scale=SCALE)
        assert np.array_equal(sealed_ctx.to_residues(ct), arr)
        assert np.abs(_decrypt(sealed_ctx, sealed_keypair[0], ct) - values).max() < 1e-4


def _reject(ctx: CkksContext, blob: bytes, match: str, scale: float = SCALE, size: int = 2) -> None:
    with pytest.raises(CiphertextError, match=match):
        ctx.load_ciphertext(blob, scale=scale, size=size)


def test_load_ciphertext_rejects_wrong_parms_id(sealed_ctx: CkksContext, fresh: tuple[np.ndarray, np.ndarray]) -> None:
    arr = fresh[1]
    a, b, c, d = sealed_ctx.parms_id
    pid = (a ^ 1, b, c, d)
    _reject(sealed_ctx, emit(dataclasses.replace(sealed_ctx.meta(SCALE), parms_id=pid), arr), "parms_id")
    # A real ciphertext of another parameter set (other ring, other parms_id).
    other = CkksContext(params.get("pprm-sealed-n4096-v1"))
    sk = seal.KeyGenerator(other.seal).secret_key()
    _reject(sealed_ctx, other.save_bytes(_encrypt(other, sk, np.ones(3))), "parms_id")


def test_load_ciphertext_rejects_wrong_level(sealed_ctx: CkksContext, fresh: tuple[np.ndarray, np.ndarray]) -> None:
    arr2 = np.concatenate([fresh[1], fresh[1]], axis=1)  # [2, L=2, N] under our parms_id
    _reject(sealed_ctx, emit(dataclasses.replace(sealed_ctx.meta(SCALE), coeff_modulus_size=2), arr2), "level")


@pytest.mark.parametrize("scale", [2.0**23, 2.0**25, SCALE * (1 + 2**-52), 1.0])
def test_load_ciphertext_rejects_wrong_scale(sealed_ctx: CkksContext, fresh: tuple[np.ndarray, np.ndarray],
                                             scale: float) -> None:
    _reject(sealed_ctx, emit(sealed_ctx.meta(scale), fresh[1]), "scale")


def test_load_ciphertext_rejects_wrong_size(sealed_ctx: CkksContext, fresh: tuple[np.ndarray, np.ndarray]) -> None:
    arr3 = np.concatenate([fresh[1], fresh[1][1:]], axis=0)
    _reject(sealed_ctx, emit(sealed_ctx.meta(SCALE, size=3), arr3), "size")
    # ... and the caller's expectation is what counts.
    _reject(sealed_ctx, emit(sealed_ctx.meta(SCALE), fresh[1]), "size", size=3)


def test_load_ciphertext_rejects_wrong_ring_dimension(sealed_ctx: CkksContext,
                                                      fresh: tuple[np.ndarray, np.ndarray]) -> None:
    arr = np.concatenate([fresh[1], fresh[1]], axis=2)  # N = 2048 under our parms_id
    _reject(sealed_ctx, emit(dataclasses.replace(sealed_ctx.meta(SCALE), poly_modulus_degree=2 * sealed_ctx.n), arr),
            "ring dimension")


def test_load_ciphertext_rejects_coefficient_form(sealed_ctx: CkksContext,
                                                  fresh: tuple[np.ndarray, np.ndarray]) -> None:
    _reject(sealed_ctx, emit(dataclasses.replace(sealed_ctx.meta(SCALE), is_ntt_form=False), fresh[1]), "NTT")


@pytest.mark.parametrize(("poly", "offset"), [(0, 0), (1, 0), (0, 1), (1, 2**32)])
def test_load_ciphertext_rejects_residues_at_or_above_q(sealed_ctx: CkksContext, fresh: tuple[np.ndarray, np.ndarray],
                                                         poly: int, offset: int) -> None:
    arr = fresh[1].copy()
    arr[poly, 0, 17] = np.uint64(sealed_ctx.moduli[0] + offset)
    _reject(sealed_ctx, emit(sealed_ctx.meta(SCALE), arr), "exceed")


def test_load_ciphertext_rejects_transparent(sealed_ctx: CkksContext, fresh: tuple[np.ndarray, np.ndarray]) -> None:
    arr = fresh[1].copy()
    arr[1] = 0
    _reject(sealed_ctx, emit(sealed_ctx.meta(SCALE), arr), "transparent")
    # A size-3 ciphertext whose c1 and c2 are zero is transparent too.
    arr3 = np.zeros((3, 1, sealed_ctx.n), dtype=np.uint64)
    arr3[0] = fresh[1][0]
    _reject(sealed_ctx, emit(sealed_ctx.meta(SCALE, size=3), arr3), "transparent", size=3)


def test_load_ciphertext_rejects_garbage(sealed_ctx: CkksContext, fresh: tuple[np.ndarray, np.ndarray]) -> None:
    blob = emit(sealed_ctx.meta(SCALE), fresh[1])
    for bad in (b"", blob[:-1], blob + b"\x00", b"\x5e\xa1" + blob[2:40]):
        with pytest.raises(CiphertextError):
            sealed_ctx.load_ciphertext(bad, scale=SCALE)


def test_meta_matches_what_seal_writes(sealed_ctx: CkksContext, fresh: tuple[np.ndarray, np.ndarray]) -> None:
    meta, _arr = parse(sealed_ctx.save_bytes(sealed_ctx.from_residues(fresh[1], SCALE)))
    assert meta == sealed_ctx.meta(SCALE)


def test_encode_refuses_too_many_values(sealed_ctx: CkksContext) -> None:
    with pytest.raises(CiphertextError):
        sealed_ctx.encode(np.zeros(sealed_ctx.slots + 1), 24)
    with pytest.raises(CiphertextError):
        sealed_ctx.encode(np.zeros((2, 4)), 24)
