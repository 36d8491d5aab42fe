"""A state's long-term identity: Ed25519 signing and X25519 box keys (PyNaCl).

The private halves are held in :class:`Identity` and never appear in its
repr; :class:`PublicIdentity` is what peers learn from the public card.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import nacl.bindings
import nacl.exceptions
import nacl.public
import nacl.signing

from pprm.errors import AuthenticationError, StateError

__all__ = ["Identity", "PublicIdentity", "fingerprint", "verify_signature"]

_SIGN_DOMAIN = b"pprm/v1/sign\x00"
# Any non-zero scalar: multiplying a low-order point by it gives the identity,
# which libsodium's crypto_scalarmult refuses (all-zero output).
_PROBE_SCALAR = bytes([9] + [0] * 31)


def _check_verify_key(name: str, key: bytes) -> None:
    """Refuse an Ed25519 public key that is non-canonical, off the curve, or not in the prime-order subgroup.

    RFC 8032 leaves small- and mixed-order keys to policy ("acceptable" in
    Wycheproof); an honest key is never one, and with one the same signature
    can verify or not depending on the verifier's equation. pprm refuses them
    where a key is learned (a card), so every verifier in the federation agrees.
    """
    if not nacl.bindings.crypto_core_ed25519_is_valid_point(key):
        raise StateError(f"identity for {name!r} has a weak (small- or mixed-order) Ed25519 key")


def _check_box_key(name: str, key: bytes) -> None:
    """Refuse an X25519 public key of small order (the shared secret would be fixed)."""
    try:
        nacl.bindings.crypto_scalarmult(_PROBE_SCALAR, key)
    except (nacl.exceptions.RuntimeError, nacl.exceptions.CryptoError, ValueError):
        raise StateError(f"identity for {name!r} has a weak (small-order) X25519 key") from None


def verify_signature(verify_key: bytes, message: bytes, signature: bytes, who: str = "peer") -> None:
    """Check a raw Ed25519 signature (libsodium's strict verification).

    libsodium refuses non-canonical S (malleability), small-order and
    non-canonical public keys and R, and signatures of the wrong length;
    ``tests/crypto/test_wycheproof.py`` holds it to Wycheproof's verdicts.

    Args:
        verify_key: 32-byte Ed25519 public key.
        message: the signed bytes.
        signature: 64 bytes.
        who: name for the error message.

    Raises:
        AuthenticationError: the signature does not verify.
    """
    try:
        nacl.signing.VerifyKey(verify_key).verify(message, signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, nacl.exceptions.TypeError,
            ValueError, TypeError):
        raise AuthenticationError(f"signature from {who} does not verify") from None


def fingerprint(verify_key: bytes) -> bytes:
    """16-byte BLAKE2b fingerprint of an Ed25519 verify key (wire sender id)."""
    return hashlib.blake2b(verify_key, digest_size=16, person=b"pprm-identity").digest()


@dataclass(frozen=True)
class PublicIdentity:
    """A peer's public keys as learned from its card."""

    name: str
    verify_key: bytes
    box_key: bytes

    def __post_init__(self) -> None:
        if len(self.verify_key) != 32 or len(self.box_key) != 32:
            raise StateError(f"identity for {self.name!r} has malformed keys")
        _check_verify_key(self.name, self.verify_key)
        _check_box_key(self.name, self.box_key)

    @property
    def fingerprint(self) -> bytes:
        """Wire identifier of this identity."""
        return fingerprint(self.verify_key)

    def verify(self, message: bytes, signature: bytes) -> None:
        """Check an Ed25519 signature made with :meth:`Identity.sign`.

        Raises:
            AuthenticationError: the signature does not verify.
        """
        verify_signature(self.verify_key, _SIGN_DOMAIN + message, signature, self.name)


@dataclass(frozen=True)
class Identity:
    """A state's own identity, private keys included.

    Warning:
        Never serialise this object into a message; use :attr:`public`.
    """

    name: str
    signing_seed: bytes = field(repr=False)
    box_secret: bytes = field(repr=False)

    @classmethod
    def generate(cls, name: str) -> Identity:
        """Create fresh keys from the OS CSPRNG."""
        return cls(name, bytes(nacl.signing.SigningKey.generate()),
                   bytes(nacl.public.PrivateKey.generate()))

    @property
    def public(self) -> PublicIdentity:
        """The public half."""
        vk = bytes(nacl.signing.SigningKey(self.signing_seed).verify_key)
        bk = bytes(nacl.public.PrivateKey(self.box_secret).public_key)
        return PublicIdentity(self.name, vk, bk)

    def sign(self, message: bytes) -> bytes:
        """Ed25519 signature (64 bytes) over a domain-separated message."""
        return nacl.signing.SigningKey(self.signing_seed).sign(_SIGN_DOMAIN + message).signature

    def box_to(self, peer: PublicIdentity, plaintext: bytes, nonce: bytes | None = None) -> bytes:
        """Encrypt and authenticate ``plaintext`` from this state to ``peer`` (X25519 + XSalsa20-Poly1305).

        Args:
            peer: recipient.
            plaintext: bytes to protect.
            nonce: 24 bytes for known-answer tests only; random otherwise.
        """
        box = self._box(peer)
        return bytes(box.encrypt(plaintext, nonce))

    def _box(self, peer: PublicIdentity) -> nacl.public.Box:
        try:
            return nacl.public.Box(nacl.public.PrivateKey(self.box_secret), nacl.public.PublicKey(peer.box_key))
        except (nacl.exceptions.RuntimeError, nacl.exceptions.CryptoError, ValueError):
            raise AuthenticationError(f"no shared key with {peer.name}: its X25519 key is unusable") from None

    def unbox_from(self, peer: PublicIdentity, ciphertext: bytes) -> bytes:
        """Open a box that ``peer`` made for this state.

        Raises:
            AuthenticationError: wrong sender, wrong recipient or tampered bytes.
        """
        box = self._box(peer)
        try:
            return bytes(box.decrypt(ciphertext))
        except (nacl.exceptions.CryptoError, nacl.exceptions.ValueError, ValueError):
            raise AuthenticationError(f"boxed body from {peer.name} does not open") from None
