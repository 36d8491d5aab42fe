"""A state is a directory.

::

    DIR/
      state.json            configuration (threshold, parameter set, k, ...)
      card.json             public card (self-signed)
      ckks/public.key       CKKS public key (key id = BLAKE2b of these bytes)
      ckks/galois.key       conjugation key (complex-packing sets only; public)
      private/              mode 0700; every file mode 0600
        identity.key        Ed25519 seed | X25519 secret
        ckks-secret.key     CKKS secret key (its own file)
        token.key           key for candidate tokens
        blind.key           SecretBox key for the blind database's sealed layouts
        blind-db/           the blind database's diagonals (memory-mapped .npy)
        blind/KEY_ID.sk     this state's blind-profile secret keys (as requester)
      roster/CODE.card      trusted peers' cards
      gallery/              encrypted gallery (pprm.matching.gallery)
      blind/                blind profile, responder side (pprm.node.blind_store)
      blind-keys.json       blind profile, requester side (pprm.node.blind_keyring)
      audit.log             hash-chained audit log
      state.db              SQLite (pprm.protocol.statedb), 0600: seen message ids
                            (replay), queries answered per requesting state in the
                            last 24 h (quota), queries this state sent and their
                            answers (outbox)

Roles get only what they need: :meth:`State.matcher` builds the matcher
from public material and never opens ``private/``.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from functools import cached_property
from typing import TYPE_CHECKING

import tenseal.sealapi as seal

from pprm._fs import atomic_write_bytes, atomic_write_json, locked
from pprm.crypto import keys
from pprm.crypto.context import BlindContext, CkksContext
from pprm.crypto.identity import Identity, PublicIdentity
from pprm.errors import ParameterError, StateError, UnknownPeerError
from pprm.matching.gallery import EncryptedGallery
from pprm.matching.sealed import SealedMatcher
from pprm.node.audit import AuditLog
from pprm.node.blind_keyring import BlindKeyring
from pprm.node.blind_store import BlindStore
from pprm.node.config import StateConfig, policy_digest, policy_text, read_state_config
from pprm.protocol.card import Card, make_card, parse_card
from pprm.protocol.envelope import Header, open_envelope

if TYPE_CHECKING:
    from pprm.cluster.blind_shard import BlindShardSpec
    from pprm.cluster.sealed_shard import SealedShardSpec

__all__ = ["State"]

_PRIVATE_FILES = ("identity.key", "ckks-secret.key", "token.key")


def _write_private(path: str, data: bytes) -> None:
    atomic_write_bytes(path, data, mode=0o600)


def _read_private(path: str) -> bytes:
    try:
        if os.stat(path).st_mode & 0o077:
            raise StateError(f"{os.path.basename(path)} is readable by others; it must be mode 0600")
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        raise StateError(f"private file {os.path.basename(path)} is missing") from None


class State:
    """An opened state directory.

    Use :meth:`init` to create one and :meth:`open` to load one.
    """

    def __init__(self, directory: str, config: StateConfig) -> None:
        self.dir = os.path.abspath(directory)
        self.config = config

    def __repr__(self) -> str:
        return f"State({self.config.name!r}, {self.dir!r})"

    # -- paths ---------------------------------------------------------
    def path(self, *parts: str) -> str:
        return os.path.join(self.dir, *parts)

    # -- creation ------------------------------------------------------
    @classmethod
    def init(cls, directory: str, name: str, *, threshold: float = 0.4, params: str | None = None,
             k: int = 10, dim: int = 512, allow_insecure: bool = False, blind_params: str | None = None,
             profiles: Mapping[str, str] | None = None, purposes: Sequence[str] | None = None,
             quota_per_case: int | None = None, quota_per_peer: int | None = None) -> State:
        """Create a new state directory with fresh keys.

        Args:
            directory: must not exist, or be empty.
            name: the state code.
            threshold: decision threshold.
            params: parameter set name (default ``pprm-sealed-n8192-complex-v1``).
            k: candidate cap.
            dim: template dimension.
            allow_insecure: accept ``INSECURE*`` sets (tests only).
            blind_params: blind-profile parameter set name (default
                ``pprm-blind-n16384-v2``).
            profiles: per-peer default query profile (``"sealed"`` or
                ``"blind"``; checked here like every other setting).
            purposes: the purposes this state answers and queries for
                (default :data:`pprm.node.config.DEFAULT_PURPOSES`).
            quota_per_case: queries answered per requesting state and case
                in 24 hours (default 100).
            quota_per_peer: queries answered per requesting state in 24
                hours (default 2000).

        Returns:
            The opened state.

        Raises:
            StateError: the directory exists and is not empty.
            ParameterError: a setting of the wrong type or out of range, or
                an insecure parameter set without ``allow_insecure``; the
                message names the setting (``threshold must be a number
                between 0.05 and 0.95``). Nothing is created.
        """
        kwargs: dict[str, object] = {} if params is None else {"params": params}
        if blind_params is not None:
            kwargs["blind_params"] = blind_params
        # Copied here (dict, tuple) so the config owns them; a wrong type must be a
        # ParameterError naming the setting, not the TypeError the copy would raise.
        if profiles is not None:
            if not isinstance(profiles, Mapping):
                raise ParameterError("profiles must map state codes to 'sealed' or 'blind'")
            kwargs["profiles"] = dict(profiles)
        if purposes is not None:
            if isinstance(purposes, (str, bytes)) or not isinstance(purposes, Sequence):
                raise ParameterError("purposes must be a list of strings")
            kwargs["purposes"] = tuple(purposes)
        if quota_per_case is not None:
            kwargs["quota_per_case"] = quota_per_case
        if quota_per_peer is not None:
            kwargs["quota_per_peer"] = quota_per_peer
        config = StateConfig(name=name, threshold=threshold, k=k, dim=dim,
                             allow_insecure=allow_insecure, **kwargs)  # type: ignore[arg-type]
        directory = os.path.abspath(directory)
        if os.path.exists(directory) and os.listdir(directory):
            raise StateError(f"{directory} exists and is not empty")
        # Build everything in a sibling temp dir, then rename: a failed init
        # leaves nothing behind.
        parent = os.path.dirname(directory)
        os.makedirs(parent, exist_ok=True)
        tmp = os.path.join(parent, f".{os.path.basename(directory)}.init-{os.getpid()}")
        try:
            os.makedirs(tmp)
            for sub in ("ckks", "roster", "gallery"):
                os.makedirs(os.path.join(tmp, sub))
            os.makedirs(os.path.join(tmp, "private"), mode=0o700)
            os.chmod(os.path.join(tmp, "private"), 0o700)
            ident = Identity.generate(name)
            _write_private(os.path.join(tmp, "private", "identity.key"), ident.signing_seed + ident.box_secret)
            _write_private(os.path.join(tmp, "private", "token.key"), os.urandom(32))
            ctx = CkksContext(config.parameter_set)
            sk, pk = keys.generate(ctx)
            keys.save_secret_key(sk, os.path.join(tmp, "private", "ckks-secret.key"))
            pk_blob = keys.public_key_bytes(ctx, pk)
            atomic_write_bytes(os.path.join(tmp, "ckks", "public.key"), pk_blob, mode=0o644)
            ps = config.parameter_set
            gk_blob = b""
            if ps.packing == "complex":
                # Public: the matcher de-interleaves with it and never needs sk.
                gk_blob = keys.conjugation_key_bytes(ctx, sk)
                atomic_write_bytes(os.path.join(tmp, "ckks", "galois.key"), gk_blob, mode=0o644)
            card = make_card(ident, ps.name, ps.digest, dim, keys.key_id_of(pk_blob, gk_blob), int(time.time()))
            atomic_write_bytes(os.path.join(tmp, "card.json"), card, mode=0o644)
            atomic_write_json(os.path.join(tmp, "state.json"), config.to_json())
            # Signed from the first line, with the policy: the signed head
            # covers the policy digest from the start, so a hand edit of
            # state.json is refused (check_policy) even before any peer is trusted.
            AuditLog(os.path.join(tmp, "audit.log"), signer=ident.sign, public=ident.public).append(
                "init", state=name, params=ps.name, threshold_milli=round(config.threshold * 1000),
                k=config.k, dim=config.dim, policy=policy_text(config), policy_digest=policy_digest(config))
            if os.path.exists(directory):
                os.rmdir(directory)
            os.rename(tmp, directory)
        except BaseException:
            import shutil
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return cls.open(directory)

    @classmethod
    def open(cls, directory: str) -> State:
        """Open an existing state directory.

        Opening does not compare the policy with the audited one: roles that
        act on the policy call :meth:`check_policy` (the responder does, at
        construction).

        Raises:
            StateError: not a state directory, or its config is corrupt or
                holds an invalid setting (the message names it:
                ``state.json is invalid: k must be an integer ...``).
        """
        path = os.path.join(directory, "state.json")
        if not os.path.isfile(path):
            raise StateError(f"{directory} is not a pprm state directory (no state.json)")
        return cls(directory, read_state_config(path))

    def check_policy(self) -> str | None:
        """Refuse to act on a policy that is not the audited one.

        Compares the digest of this state's policy (as read from
        ``state.json``) with the digest the signed audit head covers: one
        signature check, no scan of the log.

        Returns:
            The audited policy digest; None for a state whose log records no
            policy yet (created before policies were recorded; see
            :meth:`pprm.node.audit.AuditLog.check_policy`).

        Raises:
            PolicyTamperedError: ``state.json`` was edited by hand (or a
                ``pprm policy set`` was cut short); the message names the
                settings that differ and says that ``pprm policy set`` is
                the way to change the policy.
            StateError: the signed head cannot be read or verified.
        """
        return self.audit.check_policy(self.config)

    # -- shared material -------------------------------------------------
    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive lock for read-modify-write of this state's files."""
        with locked(self.dir):
            yield

    @cached_property
    def audit(self) -> AuditLog:
        """The audit log, signed with this state's identity (audit.head beside it).

        The log gets a signer that reads the identity key for each signature
        and drops it again, and the public half to check signatures.
        """
        def sign(message: bytes) -> bytes:
            return self.identity().sign(message)

        return AuditLog(self.path("audit.log"), signer=sign, public=self.identity().public)

    @cached_property
    def ctx(self) -> CkksContext:
        return CkksContext(self.config.parameter_set)

    @cached_property
    def blind_ctx(self) -> BlindContext:
        return BlindContext(self.config.blind_parameter_set)

    @cached_property
    def blind_store(self) -> BlindStore:
        """Responder-side blind-profile state; the database is cached in memory."""
        return BlindStore(self.dir, self.blind_ctx, self._blind_box_key)

    @cached_property
    def blind_keyring(self) -> BlindKeyring:
        """Requester-side blind-profile key pairs."""
        return BlindKeyring(self.dir, self.blind_ctx)

    def _blind_box_key(self) -> bytes:
        path = self.path("private", "blind.key")
        if not os.path.exists(path):
            # Create-if-absent without the state lock (callers may hold it):
            # write a temp file, then link it into place; link fails if another
            # process won the race, and then its key is the one.
            tmp = f"{path}.tmp-{os.getpid()}"
            _write_private(tmp, os.urandom(32))
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
            os.unlink(tmp)
        raw = _read_private(path)
        if len(raw) != 32:
            raise StateError("blind sealing key file is malformed")
        return raw

    @property
    def card_bytes(self) -> bytes:
        """This state's public card."""
        with open(self.path("card.json"), "rb") as fh:
            return fh.read()

    @cached_property
    def card(self) -> Card:
        return parse_card(self.card_bytes, allow_insecure=self.config.allow_insecure)

    @property
    def key_id(self) -> str:
        return self.card.key_id

    def gallery(self) -> EncryptedGallery:
        """The encrypted gallery (public material only)."""
        return EncryptedGallery(self.path("gallery"), self.config.parameter_set, self.key_id,
                                self.config.dim)

    def _conjugation_key_bytes(self) -> bytes | None:
        """The conjugation key file's bytes, once checked against the card's key id; None for real packing."""
        if self.config.parameter_set.packing != "complex":
            return None
        try:
            with open(self.path("ckks", "public.key"), "rb") as fh:
                pk_blob = fh.read()
            with open(self.path("ckks", "galois.key"), "rb") as fh:
                gk_blob = fh.read()
        except OSError:
            raise StateError("CKKS public key or conjugation key file is missing") from None
        if keys.key_id_of(pk_blob, gk_blob) != self.key_id:
            raise StateError("conjugation key does not belong to this state's CKKS key id; refusing it")
        return gk_blob

    def conjugation_key(self) -> seal.GaloisKeys | None:
        """The public conjugation key for complex packing, or None for real packing.

        Returns:
            The loaded Galois keys (conjugation element only), or None.

        Raises:
            StateError: a complex-packing state whose key file is missing,
                invalid, or not the one the card's key id covers.
        """
        if self._conjugation_key_bytes() is None:
            return None
        return keys.load_conjugation_key(self.ctx, self.path("ckks", "galois.key"))

    def sealed_shard_spec(self) -> SealedShardSpec:
        """What shards of this state's sealed gallery are built from (public material only).

        Returns:
            The spec: parameter set, dimension, CKKS key id and, for complex
            packing, the conjugation key bytes, checked against the key id
            exactly as :meth:`conjugation_key` checks them.

        Raises:
            StateError: as :meth:`conjugation_key`.
        """
        # Imported here: pprm.cluster is an optional layer that importing pprm must not load.
        from pprm.cluster.sealed_shard import SealedShardSpec

        cfg = self.config
        conj = self._conjugation_key_bytes()
        return SealedShardSpec(cfg.params, cfg.allow_insecure, cfg.dim, self.key_id, conj or b"")

    def blind_shard_spec(self) -> BlindShardSpec:
        """What shards of this state's blind database are built from.

        Returns:
            The spec: the blind parameter set.

        Warning:
            Blind shards hold the gallery's plaintext encoding: give this spec
            only to workers inside the owner's trusted cluster.
        """
        from pprm.cluster.blind_shard import BlindShardSpec

        cfg = self.config
        return BlindShardSpec(cfg.blind_params, cfg.allow_insecure)

    def matcher(self, gallery: EncryptedGallery | None = None) -> SealedMatcher:
        """The matcher role: public material only, it cannot decrypt.

        Args:
            gallery: a gallery view to match on (default: a fresh one).

        Returns:
            The matcher, with the conjugation key when the set needs it.
        """
        return SealedMatcher(self.ctx, self.gallery() if gallery is None else gallery, self.conjugation_key())

    def identity(self) -> Identity:
        """This state's identity keys (private)."""
        raw = _read_private(self.path("private", "identity.key"))
        if len(raw) != 64:
            raise StateError("identity key file is malformed")
        return Identity(self.config.name, raw[:32], raw[32:])

    def token_key(self) -> bytes:
        """Key for candidate tokens (private)."""
        raw = _read_private(self.path("private", "token.key"))
        if len(raw) != 32:
            raise StateError("token key file is malformed")
        return raw

    def secret_key_path(self) -> str:
        return self.path("private", "ckks-secret.key")

    # -- roster ----------------------------------------------------------
    def roster(self) -> dict[str, Card]:
        """Trusted peers by name."""
        out: dict[str, Card] = {}
        rdir = self.path("roster")
        for fname in sorted(os.listdir(rdir)):
            if fname.endswith(".card"):
                with open(os.path.join(rdir, fname), "rb") as fh:
                    card = parse_card(fh.read(), allow_insecure=self.config.allow_insecure)
                out[card.name] = card
        return out

    def peer(self, name: str) -> Card:
        """A trusted peer's card.

        Raises:
            UnknownPeerError: not in the roster.
        """
        card = self.roster().get(name)
        if card is None:
            raise UnknownPeerError(f"{name} is not in the roster of {self.config.name}")
        return card

    def header_of_own(self, blob: bytes, recipient: str) -> Header:
        """The header of a message this state signed for ``recipient``, checked against its own card.

        Raises:
            MessageError and subclasses: the bytes are not such a message.
            UnknownPeerError: ``recipient`` is not in the roster (sealed profile).
        """
        me = self.card.identity
        env = open_envelope(blob, lookup=lambda fpr: me if fpr == me.fingerprint else None, me=recipient,
                            params_digest=lambda _sender: self.peer(recipient).params_digest,
                            blind_digest=self.config.blind_parameter_set.digest)
        return env.header

    def lookup(self, fingerprint: bytes) -> PublicIdentity | None:
        """Roster identity with this wire fingerprint, or None."""
        for card in self.roster().values():
            if card.identity.fingerprint == fingerprint:
                return card.identity
        return None

    def trust(self, card_bytes: bytes | bytearray | memoryview) -> Card:
        """Add (or refresh) a peer's card in the roster.

        Args:
            card_bytes: as printed by ``pprm card`` (bytes; a ``str`` is
                refused, as :func:`~pprm.protocol.card.parse_card` says).

        Returns:
            The verified card.

        Raises:
            MessageError, AuthenticationError, ParameterError: invalid card
                (not bytes, not a card, a bad signature, a parameter set this
                state does not allow). Nothing changes.
            StateError: the card is this state's own, or it would replace a
                peer's keys with different ones.
        """
        card = parse_card(card_bytes, allow_insecure=self.config.allow_insecure)
        card_bytes = bytes(card_bytes)  # parse_card accepted it: bytes, bytearray or memoryview
        if card.name == self.config.name:
            raise StateError("a state cannot trust its own card")
        with self.lock():
            existing = self.roster().get(card.name)
            if existing and existing.identity.verify_key != card.identity.verify_key:
                raise StateError(f"{card.name} is already trusted with other keys; remove it first")
            atomic_write_bytes(self.path("roster", f"{card.name}.card"), card_bytes, mode=0o644)
            self.audit.append("trust", peer=card.name, fingerprint=card.identity.fingerprint.hex(),
                              params=card.params)
        return card
