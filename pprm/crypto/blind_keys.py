"""Blind profile: the requester's CKKS key pairs, and their public announcement.

A requester uses a fresh key pair per case by default and retires it after
every follow-up (a follow-up reveals decrypted signs, so the key must not
decrypt anything crafted afterwards; docs/DESIGN.md section 4, trap 2) and after a
configurable lifetime. What travels, once per key, in a signed announcement:

- the public key ``(b, a)`` with ``b = -a*s + e``, sent as a 32-byte seed and
  ``b`` only. The responder expands ``a`` from the seed itself
  (SHAKE-256, :func:`expand_a`), so ``a`` is uniform whatever the requester
  sends: the responder's encryptions of zero (``u*b + e0, u*a + e1``) then
  hide ``c1`` of everything it returns. A requester that could choose ``a``
  (zero, or a known multiple of ``P``) would read the responder's
  computation straight off ``c1``;
- the Galois keys for rotations by 1 and by b1, and for the conjugation (the
  responder's real projection), seeded;
- the relinearisation key (the responder squares the probe to check the
  norm of every slot's window), seeded.

The evaluation keys cannot be checked for honesty without the secret key.
They do not need to be: the responder re-randomises the probe with its own
encryption of zero before any key switch, so whatever a dishonest key adds
is multiplied by digits the requester cannot know, and lands in the window
norm too, where it turns the slot into a coin flip (docs/DESIGN.md section 4).
What is refused here is what would crash SEAL or void that argument: wrong
sizes, levels, element sets, and all-zero parts.

The key id is a hash over the parameter digest and all three blobs, so a
responder that caches keys by id can never confuse two keys.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass

import numpy as np
import tenseal.sealapi as seal

from pprm.crypto import seal_stream
from pprm.crypto.context import BlindContext
from pprm.errors import CiphertextError

__all__ = ["BlindKeyPair", "EvaluationKeys", "generate", "key_id_of", "galois_elements", "load_announced",
           "expand_a", "public_blob_bytes", "MAX_KEY_BYTES", "PUBLIC_MAGIC", "SEED_BYTES"]

# The N=16384 set's largest blob (three Galois keys) is about 4.7 MB;
# anything claiming far more is refused before SEAL parses it.
MAX_KEY_BYTES = 16 << 20

# Public key wire format: magic, seed, then b as little-endian uint64
# residues [key-level primes, N] in SEAL's NTT form.
PUBLIC_MAGIC = b"PPRMBPK1"
# 256-bit seeds, as SEAL's own seeded objects use (prng_seed_byte_count = 64
# there for Blake2xb; 32 bytes of SHAKE-256 input give 256-bit security).
SEED_BYTES = 32


def galois_elements(ctx: BlindContext) -> list[int]:
    """SEAL Galois elements the responder needs: rotations by 1 and b1 (``3**step mod 2N``), and conjugation (2N-1)."""
    m = 2 * ctx.n
    return [pow(3, 1, m), pow(3, ctx.params.baby_steps, m), m - 1]


def key_id_of(params_digest: str, public_blob: bytes, galois_blob: bytes, relin_blob: bytes) -> str:
    """The id of an announced key: 32 hex digits of SHA-256 over its parts."""
    h = hashlib.sha256(b"pprm/blind-key/v2\x00")
    for part in (params_digest.encode(), public_blob, galois_blob, relin_blob):
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()[:32]


def public_blob_bytes(ctx: BlindContext) -> int:
    """The exact size of an announced public key."""
    return len(PUBLIC_MAGIC) + SEED_BYTES + 8 * len(ctx.key_moduli) * ctx.n


def expand_a(ctx: BlindContext, seed: bytes) -> np.ndarray:
    """The uniform part ``a`` of a public key, from its seed (both sides run this).

    Args:
        ctx: the blind context.
        seed: the announced seed.

    Returns:
        ``uint64[K, N]``: ``a`` in NTT form at the key level (K primes,
        the special prime last); uniform in NTT form is uniform.
    """
    if len(seed) != SEED_BYTES:
        raise CiphertextError(f"public key seed must be {SEED_BYTES} bytes")
    out = np.empty((len(ctx.key_moduli), ctx.n), dtype=np.uint64)
    for j, q in enumerate(ctx.key_moduli):
        xof = hashlib.shake_256(b"pprm/blind-a/v1\x00" + ctx.params.digest.encode() + bytes([j]) + seed)
        # Rejection sampling below the largest multiple of q under 2**64:
        # each 64-bit word is kept with probability > 1 - 2**-3 for q < 2**61.
        limit = np.uint64((1 << 64) - (1 << 64) % q)
        got = np.empty(0, dtype=np.uint64)
        want = ctx.n
        length = 8 * (want + want // 4 + 64)
        while got.size < want:
            words = np.frombuffer(xof.digest(length), dtype="<u8").astype(np.uint64)
            got = words[words < limit][:want]
            length *= 2
        out[j] = got % np.uint64(q)
    return out


@dataclass(frozen=True, repr=False)
class BlindKeyPair:
    """A requester's key pair for the blind profile.

    Attributes:
        secret_key: the SEAL secret key (never serialised into a message).
        public_blob: the public key: seed and ``b`` (see the module docstring).
        galois_blob: seeded Galois keys for steps 1 and b1 and the conjugation.
        relin_blob: the seeded relinearisation key.
        key_id: :func:`key_id_of` the above.
    """

    secret_key: seal.SecretKey
    public_blob: bytes
    galois_blob: bytes
    relin_blob: bytes
    key_id: str

    def __repr__(self) -> str:
        return f"BlindKeyPair(key_id={self.key_id})"


def _secret_residues(ctx: BlindContext, sk: seal.SecretKey) -> np.ndarray:
    """The secret key's NTT residues at the key level, ``uint64[K, N]`` (requester side only)."""
    pt = sk.data()
    k = len(ctx.key_moduli)
    if pt.coeff_count() != k * ctx.n or not pt.is_ntt_form():
        raise CiphertextError("secret key has an unexpected layout")
    return np.array([pt[i] for i in range(k * ctx.n)], dtype=np.uint64).reshape(k, ctx.n)


def _public_b(ctx: BlindContext, sk: seal.SecretKey, a: np.ndarray) -> np.ndarray:
    """``b = -a*s + e`` in NTT form at the key level, with SEAL's own error sampling.

    SEAL's symmetric encryption of zero at the key level is ``(-a'*s + e', a')``
    for its own random ``a'``; then ``b = c0' + (a' - a)*s`` carries the same
    fresh error ``e'`` with our ``a``.
    """
    s = _secret_residues(ctx, sk)
    zero = seal.Ciphertext(ctx.seal)
    seal.Encryptor(ctx.seal, sk).encrypt_zero_symmetric(list(ctx.key_parms_id), zero)
    meta, res = seal_stream.parse(ctx.save_bytes(zero))
    if meta.parms_id != ctx.key_parms_id or not meta.is_ntt_form:
        raise CiphertextError("SEAL returned an encryption of zero at an unexpected level")
    b = np.empty_like(a)
    for j, q in enumerate(ctx.key_moduli):
        # 60-bit products need more than 64 bits; once per key, Python ints will do.
        diff = (res[1, j].astype(object) - a[j].astype(object)) % q
        b[j] = ((res[0, j].astype(object) + diff * s[j].astype(object)) % q).astype(np.uint64)
    return b


def generate(ctx: BlindContext) -> BlindKeyPair:
    """A fresh key pair and its announcement blobs.

    Args:
        ctx: the blind context.

    Returns:
        The key pair.
    """
    kg = seal.KeyGenerator(ctx.seal)
    sk = kg.secret_key()
    seed = os.urandom(SEED_BYTES)
    b = _public_b(ctx, sk, expand_a(ctx, seed))
    public_blob = PUBLIC_MAGIC + seed + b.astype("<u8").tobytes()
    galois_blob = ctx.save_bytes(kg.create_galois_keys(galois_elements(ctx)))
    relin_blob = ctx.save_bytes(kg.create_relin_keys())
    return BlindKeyPair(sk, public_blob, galois_blob, relin_blob,
                        key_id_of(ctx.params.digest, public_blob, galois_blob, relin_blob))


@dataclass(frozen=True, repr=False)
class EvaluationKeys:
    """A requester's announced keys as the responder uses them: checked, loaded, public.

    Attributes:
        public: the public key, ``a`` expanded by this side from the seed.
        galois: rotations by 1 and b1, and the conjugation.
        relin: the relinearisation key.
    """

    public: seal.PublicKey
    galois: seal.GaloisKeys
    relin: seal.RelinKeys

    def __repr__(self) -> str:
        return "EvaluationKeys()"


def _load(ctx: BlindContext, obj: seal.GaloisKeys | seal.RelinKeys | seal.PublicKey, blob: bytes, what: str) -> None:
    if not blob or len(blob) > MAX_KEY_BYTES:
        raise CiphertextError(f"announced {what} is empty or oversized")
    fd, path = tempfile.mkstemp(dir=ctx._dir)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(blob)
        obj.load(ctx.seal, path)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise CiphertextError(f"announced {what} is invalid: {str(exc).splitlines()[0][:100]}") from None
    finally:
        os.unlink(path)


def _check_nonzero_rows(res: np.ndarray, what: str) -> None:
    """Every polynomial of ``res`` (``[size, K, N]``) must be non-zero and non-constant modulo every prime."""
    lo, hi = res.min(axis=-1), res.max(axis=-1)
    if np.any(hi == 0) or np.any(lo == hi):
        raise CiphertextError(f"announced {what} has a zero or constant part")


def _check_switching_key(ctx: BlindContext, parts: list[seal.PublicKey], what: str) -> None:
    """One key-switching key: a size-2 key-level ciphertext per data prime, with no degenerate part."""
    if len(parts) != len(ctx.moduli):
        raise CiphertextError(f"announced {what} has {len(parts)} components, expected {len(ctx.moduli)}")
    for part in parts:
        meta, res = seal_stream.parse(ctx.save_bytes(part.data()))
        if (meta.parms_id != ctx.key_parms_id or meta.size != 2 or not meta.is_ntt_form
                or meta.coeff_modulus_size != len(ctx.key_moduli) or meta.poly_modulus_degree != ctx.n):
            raise CiphertextError(f"announced {what} is not a key-level switching key")
        _check_nonzero_rows(res, what)


def _load_public(ctx: BlindContext, blob: bytes) -> seal.PublicKey:
    if len(blob) != public_blob_bytes(ctx) or not blob.startswith(PUBLIC_MAGIC):
        raise CiphertextError(f"announced public key must be {public_blob_bytes(ctx)} bytes in pprm's format")
    seed = blob[len(PUBLIC_MAGIC):len(PUBLIC_MAGIC) + SEED_BYTES]
    k = len(ctx.key_moduli)
    b = np.frombuffer(blob, dtype="<u8", offset=len(PUBLIC_MAGIC) + SEED_BYTES).astype(np.uint64).reshape(k, ctx.n)
    for j, q in enumerate(ctx.key_moduli):
        if int(b[j].max()) >= q:
            raise CiphertextError("announced public key has a residue outside its modulus")
    res = np.stack([b, expand_a(ctx, seed)])
    _check_nonzero_rows(res, "public key")
    meta = seal_stream.CiphertextMeta(ctx.key_parms_id, True, 2, ctx.n, k, 1.0, 1, ctx.version)
    pk = seal.PublicKey()
    _load(ctx, pk, seal_stream.emit(meta, res), "public key")
    return pk


def load_announced(ctx: BlindContext, public_blob: bytes, galois_blob: bytes, relin_blob: bytes) -> EvaluationKeys:
    """Strictly load a peer's announced keys (responder side).

    Args:
        ctx: the blind context of the announced parameter set.
        public_blob: the announced public key (seed and ``b``).
        galois_blob: the announced Galois keys.
        relin_blob: the announced relinearisation key.

    Returns:
        The keys, ready for :class:`pprm.matching.blind.BlindMatcher`.

    Raises:
        CiphertextError: a blob is malformed or oversized; the public key is
            not in pprm's format or has a zero or constant part; the Galois
            keys are not exactly the rotations by 1 and b1 and the
            conjugation; a switching key has the wrong number of components,
            level or form, or a zero or constant part.

    Warning:
        ``a`` is always expanded here from the seed, never taken from the
        requester: the re-randomisation that hides the responder's
        computation rests on it being uniform.
    """
    pk = _load_public(ctx, public_blob)
    gk = seal.GaloisKeys()
    _load(ctx, gk, galois_blob, "Galois keys")
    wanted = galois_elements(ctx)
    if gk.size() != len(wanted) or not all(gk.has_key(e) for e in wanted):
        raise CiphertextError("announced Galois keys are not exactly the rotations by 1 and b1 and the conjugation")
    if tuple(gk.parms_id()) != ctx.key_parms_id:
        raise CiphertextError("announced Galois keys are not at the key level")
    table = gk.data()
    for e in wanted:
        _check_switching_key(ctx, table[seal.GaloisKeys.get_index(e)], "Galois keys")
    rk = seal.RelinKeys()
    _load(ctx, rk, relin_blob, "relinearisation key")
    if tuple(rk.parms_id()) != ctx.key_parms_id or rk.size() != 1 or len(rk.data()) < 1:
        raise CiphertextError("announced relinearisation key is not one key-level key")
    _check_switching_key(ctx, rk.data()[0], "relinearisation key")
    return EvaluationKeys(pk, gk, rk)
