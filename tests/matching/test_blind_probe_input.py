"""A blind query's probe ciphertext comes from another state: malformed ones are refused, typed."""

from __future__ import annotations

import numpy as np
import pytest
import tenseal.sealapi as seal

from pprm.crypto import blind_keys
from pprm.crypto.context import BlindContext
from pprm.errors import CiphertextError
from pprm.matching.blind_client import encrypt_probe


@pytest.fixture(scope="module")
def world(blind_ctx: BlindContext,
          blind_keypair: blind_keys.BlindKeyPair) -> tuple[BlindContext, blind_keys.BlindKeyPair, bytes, float]:
    blob = encrypt_probe(blind_ctx, blind_keypair.secret_key, np.ones(blind_ctx.params.dim))
    return blind_ctx, blind_keypair, blob, float(2**blind_ctx.params.probe_scale_bits)


def test_the_genuine_probe_loads(world) -> None:
    ctx, _pair, blob, scale = world
    ct = ctx.load_seeded_ciphertext(blob, scale=scale)
    assert ct.size() == 2 and ct.coeff_modulus_size() == ctx.params.data_primes


def test_wrong_scale_is_refused(world) -> None:
    ctx, _pair, blob, scale = world
    with pytest.raises(CiphertextError, match="scale"):
        ctx.load_seeded_ciphertext(blob, scale=scale * 2)


def test_wrong_level_and_size_are_refused(world) -> None:
    ctx, _pair, blob, scale = world
    ct = ctx.load_seeded_ciphertext(blob, scale=scale)
    lower = seal.Ciphertext(ctx.seal)
    ctx.evaluator.mod_switch_to_next(ct, lower)
    with pytest.raises(CiphertextError, match="level"):
        ctx.load_seeded_ciphertext(ctx.save_bytes(lower), scale=scale)
    squared = seal.Ciphertext(ctx.seal)
    ctx.evaluator.square(ct, squared)  # size 3
    with pytest.raises(CiphertextError, match="size"):
        ctx.load_seeded_ciphertext(ctx.save_bytes(squared), scale=squared.scale)


def test_transparent_ciphertext_is_refused(world) -> None:
    ctx, _pair, blob, scale = world
    res = ctx.to_residues(ctx.load_seeded_ciphertext(blob, scale=scale))
    res[1] = 0
    with pytest.raises(CiphertextError, match="transparent"):
        ctx.load_seeded_ciphertext(ctx.save_bytes(ctx.from_residues(res, scale)), scale=scale)


@pytest.mark.parametrize("mangle", ["empty", "truncated", "garbage", "flipped-header", "oversized"])
def test_malformed_bytes_are_refused(world, mangle: str) -> None:
    ctx, _pair, blob, scale = world
    bad = {"empty": b"", "truncated": blob[: len(blob) // 2], "garbage": bytes(range(256)) * 40,
           "flipped-header": bytes([blob[0] ^ 0xFF]) + blob[1:], "oversized": b"\0" * (65 << 20)}[mangle]
    with pytest.raises(CiphertextError):
        ctx.load_seeded_ciphertext(bad, scale=scale)
