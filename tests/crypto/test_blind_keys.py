"""Blind-profile key pairs: fresh ids, strict loading of announced keys, and the requester's keyring.

A responder caches announced keys by id and evaluates with whatever loads,
so :func:`load_announced` must accept exactly pprm's public key (seed and
``b``; the responder expands ``a`` itself), the Galois keys for rotations by
1 and b1 and the conjugation, and one relinearisation key of this parameter
set, and nothing else; and the key id must bind every byte of the
announcement.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tenseal.sealapi as seal
from hypothesis import given, settings
from hypothesis import strategies as st

from pprm.crypto import blind_keys, keys
from pprm.crypto.context import BlindContext, CkksContext
from pprm.errors import CiphertextError, KeyRotationError
from pprm.node.blind_keyring import BlindKeyring
from tests.helpers import leak_forms, windows

T0 = 1_700_000_000


def other_context(ctx: BlindContext, **change: Any) -> BlindContext:
    """A blind context for a test-only variant of the set (not registered, never on the wire)."""
    return BlindContext(dataclasses.replace(ctx.params, name="INSECURE-blind-variant", **change))


def _load(ctx: BlindContext, pair: blind_keys.BlindKeyPair, **swap: bytes) -> blind_keys.EvaluationKeys:
    parts = {"public": pair.public_blob, "galois": pair.galois_blob, "relin": pair.relin_blob, **swap}
    return blind_keys.load_announced(ctx, parts["public"], parts["galois"], parts["relin"])


# -- generation and key ids ----------------------------------------------------

def test_generate_gives_fresh_keys(blind_ctx: BlindContext, blind_keypair: blind_keys.BlindKeyPair) -> None:
    more = [blind_keys.generate(blind_ctx) for _ in range(2)]
    pairs = [blind_keypair, *more]
    assert len({p.key_id for p in pairs}) == 3
    for blobs in ({p.public_blob for p in pairs}, {p.galois_blob for p in pairs}, {p.relin_blob for p in pairs}):
        assert len(blobs) == 3
    for p in pairs:
        assert len(p.key_id) == 32 and int(p.key_id, 16) >= 0
        assert p.key_id == blind_keys.key_id_of(blind_ctx.params.digest, p.public_blob, p.galois_blob, p.relin_blob)


def test_generated_pair_loads_and_its_public_key_encrypts_to_it(blind_ctx: BlindContext,
                                                                 blind_keypair: blind_keys.BlindKeyPair) -> None:
    ek = _load(blind_ctx, blind_keypair)
    assert tuple(ek.public.parms_id()) == blind_ctx.key_parms_id
    assert ek.galois.size() == 3 and all(ek.galois.has_key(e) for e in blind_keys.galois_elements(blind_ctx))
    assert ek.relin.size() == 1
    assert repr(ek) == "EvaluationKeys()"
    # An encryption of zero under the announced key decrypts, under the
    # requester's secret key, to a few units of noise: b = -a*s + e really
    # holds for the responder's own a.
    zero = seal.Ciphertext(blind_ctx.seal)
    seal.Encryptor(blind_ctx.seal, ek.public).encrypt_zero(zero)
    pt = seal.Plaintext()
    seal.Decryptor(blind_ctx.seal, blind_keypair.secret_key).decrypt(zero, pt)
    pt.scale = 2.0**40
    assert np.abs(np.asarray(blind_ctx.encoder.decode_double(pt))).max() < 1e-6


def test_galois_elements_are_rotations_by_1_and_b1_and_the_conjugation(blind_ctx: BlindContext) -> None:
    m = 2 * blind_ctx.n
    assert blind_keys.galois_elements(blind_ctx) == [3, pow(3, blind_ctx.params.baby_steps, m), m - 1]


def test_public_a_is_expanded_from_the_seed(blind_ctx: BlindContext, blind_keypair: blind_keys.BlindKeyPair) -> None:
    seed = blind_keypair.public_blob[len(blind_keys.PUBLIC_MAGIC):][:blind_keys.SEED_BYTES]
    a = blind_keys.expand_a(blind_ctx, seed)
    assert np.array_equal(a, blind_keys.expand_a(blind_ctx, seed))
    assert not np.array_equal(a, blind_keys.expand_a(blind_ctx, bytes(32)))
    # Uniform residues: the top bit of a 60-bit residue is set about half the
    # time (n = 4 * 1024 values; a 6-sigma binomial bound, false alarm 2e-9).
    for j, q in enumerate(blind_ctx.key_moduli):
        assert int(a[j].max()) < q
    top = sum(int((a[j] >= np.uint64(q // 2)).sum()) for j, q in enumerate(blind_ctx.key_moduli))
    n = a.size
    assert abs(top - n / 2) <= 6 * (n ** 0.5) / 2
    with pytest.raises(CiphertextError, match="seed"):
        blind_keys.expand_a(blind_ctx, bytes(31))


@settings(max_examples=100)
@given(public=st.binary(min_size=1, max_size=48), galois=st.binary(min_size=1, max_size=48),
       relin=st.binary(min_size=1, max_size=48), data=st.data())
def test_property_key_id_binds_every_part(public: bytes, galois: bytes, relin: bytes, data: st.DataObject) -> None:
    digest = "ab" * 32
    kid = blind_keys.key_id_of(digest, public, galois, relin)
    assert len(kid) == 32 and kid == kid.lower()

    def flipped(blob: bytes) -> bytes:
        i = data.draw(st.integers(0, len(blob) - 1))
        bit = data.draw(st.integers(0, 7))
        return blob[:i] + bytes([blob[i] ^ (1 << bit)]) + blob[i + 1:]

    assert blind_keys.key_id_of(digest, flipped(public), galois, relin) != kid
    assert blind_keys.key_id_of(digest, public, flipped(galois), relin) != kid
    assert blind_keys.key_id_of(digest, public, galois, flipped(relin)) != kid
    assert blind_keys.key_id_of("cd" * 32, public, galois, relin) != kid
    # Parts are length-prefixed: moving the boundary between them changes the id.
    joined = public + galois
    cut = data.draw(st.integers(0, len(joined)).filter(lambda c: c != len(public)))
    assert blind_keys.key_id_of(digest, joined[:cut], joined[cut:], relin) != kid
    # The blobs cannot be swapped either.
    if public != galois:
        assert blind_keys.key_id_of(digest, galois, public, relin) != kid


def test_key_id_changes_with_the_parameter_set(blind_ctx: BlindContext, blind_keypair: blind_keys.BlindKeyPair) -> None:
    other = other_context(blind_ctx, baby_steps=32)
    assert other.params.digest != blind_ctx.params.digest
    other_id = blind_keys.key_id_of(other.params.digest, blind_keypair.public_blob, blind_keypair.galois_blob,
                                    blind_keypair.relin_blob)
    assert other_id != blind_keypair.key_id


# -- strict loading --------------------------------------------------------------

def test_swapped_blobs_are_refused(blind_ctx: BlindContext, blind_keypair: blind_keys.BlindKeyPair) -> None:
    with pytest.raises(CiphertextError, match="public key"):
        _load(blind_ctx, blind_keypair, public=blind_keypair.galois_blob)
    with pytest.raises(CiphertextError, match="Galois"):
        _load(blind_ctx, blind_keypair, galois=blind_keypair.relin_blob)
    with pytest.raises(CiphertextError, match="relinearisation"):
        _load(blind_ctx, blind_keypair, relin=blind_keypair.galois_blob)


@settings(max_examples=20)
@given(data=st.data())
def test_property_truncated_blobs_are_refused(blind_ctx: BlindContext, blind_keypair: blind_keys.BlindKeyPair,
                                              data: st.DataObject) -> None:
    for part in ("public", "galois", "relin"):
        blob = getattr(blind_keypair, f"{part}_blob")
        cut = data.draw(st.integers(0, len(blob) - 1), label=f"{part} length")
        with pytest.raises(CiphertextError):
            _load(blind_ctx, blind_keypair, **{part: blob[:cut]})


def test_empty_and_oversized_blobs_are_refused_before_seal(blind_ctx: BlindContext,
                                                           blind_keypair: blind_keys.BlindKeyPair) -> None:
    huge = bytes(blind_keys.MAX_KEY_BYTES + 1)
    for part in ("galois", "relin"):
        for blob in (b"", huge):
            with pytest.raises(CiphertextError, match="empty or oversized"):
                _load(blind_ctx, blind_keypair, **{part: blob})
    for blob in (b"", huge):
        with pytest.raises(CiphertextError, match="public key must be"):
            _load(blind_ctx, blind_keypair, public=blob)


def test_degenerate_public_keys_are_refused(blind_ctx: BlindContext, blind_keypair: blind_keys.BlindKeyPair) -> None:
    head = blind_keypair.public_blob[:len(blind_keys.PUBLIC_MAGIC) + blind_keys.SEED_BYTES]
    body = np.frombuffer(blind_keypair.public_blob, dtype="<u8", offset=len(head)).copy()
    k = len(blind_ctx.key_moduli)
    zero_b = head + bytes(len(body) * 8)
    const_b = head + np.full_like(body, 7).tobytes()
    one_prime_zero = body.reshape(k, -1).copy()
    one_prime_zero[1] = 0
    too_big = body.reshape(k, -1).copy()
    too_big[0, 5] = blind_ctx.key_moduli[0]
    for blob, why in ((zero_b, "zero or constant"), (const_b, "zero or constant"),
                      (head + one_prime_zero.tobytes(), "zero or constant"),
                      (head + too_big.tobytes(), "outside its modulus"),
                      (b"XXXXXXXX" + blind_keypair.public_blob[8:], "pprm's format")):
        with pytest.raises(CiphertextError, match=why):
            _load(blind_ctx, blind_keypair, public=blob)


def test_seal_public_keys_are_refused(blind_ctx: BlindContext, blind_keypair: blind_keys.BlindKeyPair,
                                      sealed_ctx: CkksContext,
                                      sealed_keypair: tuple[seal.SecretKey, seal.PublicKey]) -> None:
    # SEAL's own public key (a chosen by whoever made it) is never accepted.
    pk = seal.PublicKey()
    seal.KeyGenerator(blind_ctx.seal, blind_keypair.secret_key).create_public_key(pk)
    for blob in (blind_ctx.save_bytes(pk), sealed_ctx.save_bytes(sealed_keypair[1])):
        with pytest.raises(CiphertextError, match="pprm's format"):
            _load(blind_ctx, blind_keypair, public=blob)


def test_keys_of_another_ring_are_refused(blind_ctx: BlindContext, blind_keypair: blind_keys.BlindKeyPair) -> None:
    # N = 2048 with the same primes' sizes: a different ring, every blob is refused.
    wide = blind_keys.generate(other_context(blind_ctx, poly_modulus_degree=2048))
    for part in ("public", "galois", "relin"):
        with pytest.raises(CiphertextError):
            _load(blind_ctx, blind_keypair, **{part: getattr(wide, f"{part}_blob")})


def test_galois_keys_of_a_set_with_other_baby_steps_are_refused(blind_ctx: BlindContext) -> None:
    # Same ring and primes, so SEAL loads the keys; only the rotation check can tell.
    b32 = blind_keys.generate(other_context(blind_ctx, baby_steps=32))
    with pytest.raises(CiphertextError, match="rotations"):
        blind_keys.load_announced(blind_ctx, b32.public_blob, b32.galois_blob, b32.relin_blob)


@pytest.mark.parametrize("elements", [
    [3, 2047],              # no step b1
    [pow(3, 64, 2048), 2047],  # no step 1
    [3, pow(3, 64, 2048)],  # no conjugation
    [9, pow(3, 64, 2048), 2047],  # step 2 instead of 1
    [3, pow(3, 64, 2048), 2047, 9],  # one rotation too many: the responder must not get more than it needs
])
def test_galois_keys_for_other_steps_are_refused(blind_ctx: BlindContext, blind_keypair: blind_keys.BlindKeyPair,
                                                 elements: list[int]) -> None:
    kg = seal.KeyGenerator(blind_ctx.seal, blind_keypair.secret_key)
    blob = blind_ctx.save_bytes(kg.create_galois_keys(elements))
    with pytest.raises(CiphertextError, match="rotations by 1 and b1"):
        _load(blind_ctx, blind_keypair, galois=blob)


# -- nothing secret in a repr ------------------------------------------------------

def _secret_bytes(pair: blind_keys.BlindKeyPair, where: Path) -> bytes:
    path = where / "sk.bin"
    keys.save_secret_key(pair.secret_key, str(path))
    return path.read_bytes()


def _assert_no_secret(text: str, secret: bytes) -> None:
    encoded = text.encode()
    needles = [f for w in windows(secret, 12, 64, skip=64) for f in leak_forms(w)]
    assert not [n for n in needles if n in encoded]


def test_key_pair_repr_is_short_and_holds_no_key(blind_keypair: blind_keys.BlindKeyPair, tmp_path: Path) -> None:
    text = repr(blind_keypair)
    assert text == f"BlindKeyPair(key_id={blind_keypair.key_id})"
    _assert_no_secret(text, _secret_bytes(blind_keypair, tmp_path))
    for blob in (blind_keypair.public_blob, blind_keypair.galois_blob, blind_keypair.relin_blob):
        assert blob[64:76].hex() not in text


# -- the requester's keyring --------------------------------------------------------

def test_keyring_stores_privately_and_retires_for_good(blind_ctx: BlindContext, tmp_path: Path) -> None:
    ring = BlindKeyring(str(tmp_path), blind_ctx)
    assert ring.entries() == {} and ring.active("BB", "C", T0) is None
    pair = blind_keys.generate(blind_ctx)
    ring.store(pair, "BB", "C", T0, 600)
    sk_path = tmp_path / "private" / "blind" / f"{pair.key_id}.sk"
    assert os.stat(sk_path).st_mode & 0o777 == 0o600
    assert os.stat(tmp_path / "private" / "blind").st_mode & 0o777 == 0o700
    assert ring.entries() == {pair.key_id: {"peer": "BB", "case": "C", "created": T0, "expires": T0 + 600,
                                            "retired": None}}
    # The key serves exactly (peer, case), until its lifetime ends.
    assert ring.active("BB", "C", T0 + 599) == pair.key_id
    assert ring.active("BB", "C", T0 + 600) is None
    assert ring.active("BB", "other", T0) is None and ring.active("CC", "C", T0) is None
    assert ring.expires(pair.key_id) == T0 + 600
    # The stored key is the pair's: it decrypts what the pair's key encrypted.
    ct = seal.Ciphertext(blind_ctx.seal)
    seal.Encryptor(blind_ctx.seal, pair.secret_key).encrypt_symmetric(blind_ctx.encode([0.75], 40), ct)
    pt = seal.Plaintext()
    seal.Decryptor(blind_ctx.seal, ring.secret_key(pair.key_id)).decrypt(ct, pt)
    assert abs(blind_ctx.decode(pt)[0] - 0.75) < 1e-6

    text = repr(ring)
    assert len(text) < 40 + len(str(tmp_path))
    _assert_no_secret(text, sk_path.read_bytes())

    ring.retire(pair.key_id, "follow-up on q")
    assert not sk_path.exists()
    assert ring.entries()[pair.key_id]["retired"] == "follow-up on q"
    assert ring.active("BB", "C", T0) is None
    with pytest.raises(KeyRotationError, match="retired"):
        ring.secret_key(pair.key_id)
    ring.retire(pair.key_id, "again")  # idempotent: the first reason stays
    assert ring.entries()[pair.key_id]["retired"] == "follow-up on q"
    with pytest.raises(KeyRotationError, match="unknown"):
        ring.secret_key("0" * 32)
