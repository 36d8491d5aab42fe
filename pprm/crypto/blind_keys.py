"""Blind profile: the requester's CKKS key pairs, and their public announcement.

A requester uses a fresh key pair per case by default and retires it after
every follow-up (a follow-up reveals decrypted signs, so the key must not
decrypt anything crafted afterwards; docs/DESIGN.md section 4, trap 2) and after a
configurable lifetime. What travels, once per key, in a signed announcement:

- the public key, as SEAL's seeded symmetric encryption of zero at the key
  level (half the size of SEAL's ``PublicKey``, which cannot be saved seeded;
  the two are the same object: SEAL generates a public key exactly so);
- the Galois keys for rotations by 1 and by b1 only (seeded).

The key id is a hash over the parameter digest and both blobs, so a
responder that caches keys by id can never confuse two keys.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass

import tenseal.sealapi as seal

from pprm.crypto.context import BlindContext
from pprm.errors import CiphertextError

__all__ = ["BlindKeyPair", "generate", "key_id_of", "galois_elements", "load_announced", "MAX_KEY_BYTES"]

# The N=16384 set's keys are about 3.7 MB; anything claiming far more is
# refused before SEAL parses it.
MAX_KEY_BYTES = 16 << 20


def galois_elements(ctx: BlindContext) -> list[int]:
    """SEAL Galois elements for rotations by 1 and by b1 (``3**step mod 2N``)."""
    m = 2 * ctx.n
    return [pow(3, 1, m), pow(3, ctx.params.baby_steps, m)]


def key_id_of(params_digest: str, public_blob: bytes, galois_blob: bytes) -> str:
    """The id of an announced key: 32 hex digits of SHA-256 over its parts."""
    h = hashlib.sha256(b"pprm/blind-key/v1\x00")
    for part in (params_digest.encode(), public_blob, galois_blob):
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()[:32]


@dataclass(frozen=True, repr=False)
class BlindKeyPair:
    """A requester's key pair for the blind profile.

    Attributes:
        secret_key: the SEAL secret key (never serialised into a message).
        public_blob: seeded encryption of zero at the key level (the public key).
        galois_blob: seeded Galois keys for steps 1 and b1.
        key_id: :func:`key_id_of` the above.
    """

    secret_key: seal.SecretKey
    public_blob: bytes
    galois_blob: bytes
    key_id: str

    def __repr__(self) -> str:
        return f"BlindKeyPair(key_id={self.key_id})"


def generate(ctx: BlindContext) -> BlindKeyPair:
    """A fresh key pair and its announcement blobs.

    Args:
        ctx: the blind context.

    Returns:
        The key pair.
    """
    kg = seal.KeyGenerator(ctx.seal)
    sk = kg.secret_key()
    enc = seal.Encryptor(ctx.seal, sk)
    public_blob = ctx.save_bytes(enc.encrypt_zero_symmetric(list(ctx.key_parms_id)))
    galois_blob = ctx.save_bytes(kg.create_galois_keys(galois_elements(ctx)))
    return BlindKeyPair(sk, public_blob, galois_blob, key_id_of(ctx.params.digest, public_blob, galois_blob))


def _load(ctx: BlindContext, obj: seal.PublicKey | seal.GaloisKeys, blob: bytes, what: str) -> None:
    if not blob or len(blob) > MAX_KEY_BYTES:
        raise CiphertextError(f"announced {what} is empty or oversized")
    fd, path = tempfile.mkstemp(dir=ctx._dir)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(blob)
        obj.load(ctx.seal, path)
    except (RuntimeError, ValueError) as exc:
        raise CiphertextError(f"announced {what} is invalid: {str(exc).splitlines()[0][:100]}") from None
    finally:
        os.unlink(path)


def load_announced(ctx: BlindContext, public_blob: bytes, galois_blob: bytes) -> tuple[seal.PublicKey, seal.GaloisKeys]:
    """Strictly load a peer's announced keys (responder side).

    Args:
        ctx: the blind context of the announced parameter set.
        public_blob: the announced public key.
        galois_blob: the announced Galois keys.

    Returns:
        SEAL objects ready for :class:`pprm.matching.blind.BlindMatcher`.

    Raises:
        CiphertextError: SEAL rejects a blob, the public key is not at the
            key level, or the Galois keys are not exactly steps 1 and b1.
    """
    pk = seal.PublicKey()
    _load(ctx, pk, public_blob, "public key")
    if tuple(pk.parms_id()) != ctx.key_parms_id:
        raise CiphertextError("announced public key is not at the key level")
    gk = seal.GaloisKeys()
    _load(ctx, gk, galois_blob, "Galois keys")
    wanted = galois_elements(ctx)
    if gk.size() != len(wanted) or not all(gk.has_key(e) for e in wanted):
        raise CiphertextError("announced Galois keys are not exactly the rotations by 1 and b1")
    return pk, gk
