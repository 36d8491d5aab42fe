"""CKKS key material: generation, storage and key ids.

The secret key is written only to its own file, created with mode 0600 before
SEAL writes to it, and loaded only by the roles that decrypt or encrypt
symmetrically (the key service). Public material carries a key id that binds
gallery ciphertexts to the key they were made under.

Complex-packing sets also need a conjugation key: Galois keys for the single
element 2N - 1 (docs/DESIGN.md section 9). They are public material (they let
anyone conjugate, not decrypt), made once from the secret key when a state is
created, and loaded by the matcher, which never opens the secret key.
"""

from __future__ import annotations

import hashlib
import os

import tenseal.sealapi as seal

from pprm.crypto.context import CkksContext, SealContext
from pprm.errors import StateError

__all__ = [
    "generate",
    "key_id_of",
    "save_secret_key",
    "load_secret_key",
    "public_key_bytes",
    "load_public_key",
    "conjugation_element",
    "conjugation_key_bytes",
    "load_conjugation_key",
]


def generate(ctx: CkksContext) -> tuple[seal.SecretKey, seal.PublicKey]:
    """Generate a fresh CKKS key pair for ``ctx``.

    Returns:
        ``(secret_key, public_key)``.
    """
    kg = seal.KeyGenerator(ctx.seal)
    pk = seal.PublicKey()
    kg.create_public_key(pk)
    return kg.secret_key(), pk


def public_key_bytes(ctx: CkksContext, pk: seal.PublicKey) -> bytes:
    """Serialise a public key (SEAL stream)."""
    return ctx.save_bytes(pk)


def key_id_of(public_key_blob: bytes, conjugation_key_blob: bytes = b"") -> str:
    """Key id: BLAKE2b-128 of the serialised public key (then the conjugation key, if any), hex.

    Covering the conjugation key binds it to the card: a swapped or stale
    ``galois.key`` no longer matches the key id peers and the gallery hold.

    Args:
        public_key_blob: bytes from :func:`public_key_bytes`.
        conjugation_key_blob: bytes from :func:`conjugation_key_bytes`, or
            empty for real packing (then the id is that of the public key alone).

    Returns:
        32 hex characters.
    """
    h = hashlib.blake2b(public_key_blob, digest_size=16, person=b"pprm-ckks-keyid")
    h.update(conjugation_key_blob)
    return h.hexdigest()


def load_public_key(ctx: CkksContext, path: str) -> seal.PublicKey:
    """Load a public key saved with :func:`public_key_bytes`.

    Raises:
        StateError: the file is missing or does not belong to ``ctx``.
    """
    pk = seal.PublicKey()
    try:
        pk.load(ctx.seal, path)
    except (RuntimeError, ValueError, OSError):
        raise StateError(f"CKKS public key at {path} is missing or invalid") from None
    return pk


def conjugation_element(ctx: CkksContext) -> int:
    """The Galois element of complex conjugation, 2N - 1 (not a rotation step)."""
    return 2 * ctx.n - 1


def conjugation_key_bytes(ctx: CkksContext, sk: seal.SecretKey) -> bytes:
    """Make the conjugation key for ``sk`` and serialise it (seeded, half size).

    Args:
        ctx: a context whose parameter set has a special prime.
        sk: the state's CKKS secret key (used here, never stored with the result).

    Returns:
        SEAL's stream of the Galois keys for element 2N - 1 only.

    Raises:
        StateError: the parameter set cannot switch keys (no special prime).
    """
    if not ctx.seal.using_keyswitching():
        raise StateError(f"{ctx.params.name} has no special prime, so no conjugation key")
    kg = seal.KeyGenerator(ctx.seal, sk)
    # create_galois_keys takes Galois elements, not rotation steps.
    return ctx.save_bytes(kg.create_galois_keys([conjugation_element(ctx)]))


def load_conjugation_key(ctx: CkksContext, path: str) -> seal.GaloisKeys:
    """Load the conjugation key saved from :func:`conjugation_key_bytes`.

    Raises:
        StateError: the file is missing, invalid for ``ctx``, or does not hold
            the conjugation element.
    """
    gk = seal.GaloisKeys()
    try:
        gk.load(ctx.seal, path)
    except (RuntimeError, ValueError, OSError):
        raise StateError(f"CKKS conjugation key at {path} is missing or invalid") from None
    if not gk.has_key(conjugation_element(ctx)):
        raise StateError(f"CKKS Galois keys at {path} hold no conjugation key")
    return gk


def save_secret_key(sk: seal.SecretKey, path: str) -> None:
    """Write the secret key to ``path`` atomically with mode 0600.

    Warning:
        The file is created 0600 *before* SEAL writes the key into it, so the
        key is never readable by others, even briefly.
    """
    tmp = f"{path}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    try:
        sk.save(tmp)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_secret_key(ctx: SealContext, path: str) -> seal.SecretKey:
    """Load the secret key from its own file.

    Raises:
        StateError: missing, unreadable, too permissive, or not valid for ``ctx``.
    """
    try:
        mode = os.stat(path).st_mode & 0o777
    except OSError:
        raise StateError("CKKS secret key file is missing") from None
    if mode & 0o077:
        raise StateError(f"CKKS secret key file has mode {mode:o}; it must be 0600")
    sk = seal.SecretKey()
    try:
        sk.load(ctx.seal, path)
    except (RuntimeError, ValueError, OSError):
        raise StateError("CKKS secret key file is invalid for this parameter set") from None
    return sk
