"""Responder-side state of the blind profile.

::

    DIR/blind/
      keys/KEY_ID/           a peer's announced key (public material)
        public.bin  galois.bin  relin.bin  meta.json   (peer, expiry, retired_by)
      queries/QUERY_ID.json  answered blind queries: peer, key id, block
                             order, database version, follow-ups so far
      db/VERSION/            the gallery's diagonals for one gallery version
        layout.sealed        slot -> record map and slot signs (SecretBox)
        block-K.sealed       diagonals of block K (SecretBox)
    DIR/private/blind.key    SecretBox key for the sealed files (0600)

The diagonals are an encoding of the plaintext gallery, so they are sealed
at rest with XSalsa20-Poly1305 (PyNaCl SecretBox); they are rebuilt only
when the gallery changes, under a fresh secret layout. When a rebuild
happens, the old version keeps only its layout, which follow-ups on older
answers still need.
"""

from __future__ import annotations

import io
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import nacl.exceptions
import nacl.secret
import numpy as np

from pprm._fs import atomic_write_bytes, atomic_write_json, read_json
from pprm.crypto import blind_keys
from pprm.crypto.context import BlindContext
from pprm.errors import GalleryError, KeyRotationError, StateError
from pprm.matching.blind import AnnouncedKeys
from pprm.matching.diagonals import BlindDatabase, build_database
from pprm.protocol.blind_messages import KeyAnnouncementBody

__all__ = ["BlindStore", "AnsweredQuery"]

Export = Callable[[], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class AnsweredQuery:
    """What the responder keeps about one answered blind query."""

    query_id: str
    peer: str
    key_id: str
    order: list[int]
    version: str
    answered: int
    followups: list[str]

    def to_json(self) -> dict[str, Any]:
        return {"peer": self.peer, "key_id": self.key_id, "order": self.order, "version": self.version,
                "answered": self.answered, "followups": self.followups}


class BlindStore:
    """The ``blind/`` directory of one state.

    Args:
        root: the state directory.
        ctx: the state's blind context.
        box_key: returns the 32-byte SecretBox key from ``private/blind.key``;
            called (and the key created) only when sealed files are used.
    """

    def __init__(self, root: str, ctx: BlindContext, box_key: Callable[[], bytes]) -> None:
        self.dir = os.path.join(root, "blind")
        self.ctx = ctx
        self._box_key = box_key
        self._secret_box: nacl.secret.SecretBox | None = None
        self._cache: tuple[str, BlindDatabase] | None = None
        # Announced keys by id (loaded at first use in this process); the
        # rules (peer, retirement, lifetime) are re-read from meta.json on
        # every use.
        self._keys: dict[str, AnnouncedKeys] = {}

    @property
    def _box(self) -> nacl.secret.SecretBox:
        if self._secret_box is None:
            self._secret_box = nacl.secret.SecretBox(self._box_key())
        return self._secret_box

    def __repr__(self) -> str:
        return f"BlindStore({self.dir!r})"

    def _path(self, *parts: str) -> str:
        return os.path.join(self.dir, *parts)

    # -- announced keys ------------------------------------------------
    def check_new_keys(self, peer: str, body: KeyAnnouncementBody, now: float) -> AnnouncedKeys:
        """Check a key announcement without storing it (nothing changes).

        Args:
            peer: the announcing state.
            body: the verified announcement.
            now: the current time.

        Returns:
            The keys, already loaded (loading is part of the check).

        Raises:
            KeyRotationError: the key id was announced before, does not match
                the key material, or has expired.
            CiphertextError: the key material does not load.
        """
        if blind_keys.key_id_of(self.ctx.params.digest, body.public, body.galois, body.relin) != body.key_id:
            raise KeyRotationError("announced key id does not match the key material")
        if os.path.exists(self._path("keys", body.key_id)):
            raise KeyRotationError("this key id was announced before; a key id is never reused")
        if body.expires < now:
            raise KeyRotationError("the announced key has already passed its lifetime")
        loaded = blind_keys.load_announced(self.ctx, body.public, body.galois, body.relin)
        return AnnouncedKeys(body.key_id, body.public, body.galois, body.relin, loaded)

    def store_keys(self, peer: str, body: KeyAnnouncementBody) -> None:
        """Cache a checked announcement (:meth:`check_new_keys`) by key id; caller holds the lock."""
        key_id, expires = body.key_id, body.expires
        final = self._path("keys", key_id)
        if os.path.exists(final):
            raise KeyRotationError("this key id was announced before; a key id is never reused")
        os.makedirs(self._path("keys"), exist_ok=True)
        tmp = f"{final}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        try:
            atomic_write_bytes(os.path.join(tmp, "public.bin"), body.public)
            atomic_write_bytes(os.path.join(tmp, "galois.bin"), body.galois)
            atomic_write_bytes(os.path.join(tmp, "relin.bin"), body.relin)
            atomic_write_json(os.path.join(tmp, "meta.json"), {"peer": peer, "expires": expires, "retired_by": None})
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _key_meta(self, key_id: str) -> dict[str, Any]:
        path = self._path("keys", key_id, "meta.json")
        if not os.path.exists(path):
            # The text reaches the requester too (over HTTP, as the "key" error): say what each side can do.
            raise KeyRotationError("unknown blind key id: its key announcement has not reached this state (it "
                                   "travels in the query file of the first query under the key, or in a separate "
                                   "file for `pprm answer --keys FILE`); if it is lost, the requesting state "
                                   "retires the key with `pprm keys abandon` and queries again")
        meta = read_json(path)
        if not isinstance(meta, dict):
            raise StateError("blind key metadata is corrupt")
        return meta

    def keys_for(self, key_id: str, peer: str, now: float) -> AnnouncedKeys:
        """A peer's usable key for a new query.

        Args:
            key_id: the key id the query names.
            peer: the querying state.
            now: the current time.

        Returns:
            The stored announcement's keys (cached in memory by key id).

        Raises:
            KeyRotationError: unknown, another peer's, expired, or retired.
        """
        meta = self._key_meta(key_id)
        if meta["peer"] != peer:
            raise KeyRotationError("this key was announced by another state")
        if meta["retired_by"] is not None:
            raise KeyRotationError("this key was retired after a follow-up; use a fresh key")
        if int(meta["expires"]) < now:
            raise KeyRotationError("this key has passed its lifetime; use a fresh key")
        if key_id not in self._keys:
            self._keys[key_id] = AnnouncedKeys(key_id, *self.key_blobs(key_id))
        return self._keys[key_id]

    def key_blobs(self, key_id: str) -> tuple[bytes, bytes, bytes]:
        """The stored public, Galois and relinearisation key blobs of an announced key (public material).

        Raises:
            KeyRotationError: unknown key id.
        """
        self._key_meta(key_id)
        with open(self._path("keys", key_id, "public.bin"), "rb") as fh:
            public = fh.read()
        with open(self._path("keys", key_id, "galois.bin"), "rb") as fh:
            galois = fh.read()
        with open(self._path("keys", key_id, "relin.bin"), "rb") as fh:
            relin = fh.read()
        return public, galois, relin

    def retire_for_followup(self, key_id: str, query_id: str) -> None:
        """Retire a key at its first follow-up; later follow-ups must be on the same query.

        Raises:
            KeyRotationError: the key was retired by a follow-up on another query.
        """
        meta = self._key_meta(key_id)
        if meta["retired_by"] not in (None, query_id):
            raise KeyRotationError("this key was retired after a follow-up on another query")
        if meta["retired_by"] is None:
            meta["retired_by"] = query_id
            atomic_write_json(self._path("keys", key_id, "meta.json"), meta)

    def check_followup(self, key_id: str, query_id: str) -> None:
        """Raise KeyRotationError if a follow-up on ``query_id`` must be refused (changes nothing)."""
        meta = self._key_meta(key_id)
        if meta["retired_by"] not in (None, query_id):
            raise KeyRotationError("this key was retired after a follow-up on another query")

    # -- answered queries ----------------------------------------------
    def record_answer(self, rec: AnsweredQuery) -> None:
        """Keep what a follow-up on this answer will need."""
        os.makedirs(self._path("queries"), exist_ok=True)
        atomic_write_json(self._path("queries", f"{rec.query_id}.json"), rec.to_json())

    def answered(self, query_id: str) -> AnsweredQuery:
        """The record of an answered blind query.

        Raises:
            GalleryError: no such answered query.
        """
        path = self._path("queries", f"{query_id}.json")
        if not os.path.exists(path):
            raise GalleryError("no blind answer was given for this query")
        obj = read_json(path)
        return AnsweredQuery(query_id, str(obj["peer"]), str(obj["key_id"]), [int(i) for i in obj["order"]],
                             str(obj["version"]), int(obj["answered"]), [str(f) for f in obj["followups"]])

    # -- the database ----------------------------------------------------
    def database(self, version: str, export: Export) -> BlindDatabase:
        """The diagonals for gallery ``version``: from memory, from the sealed store, or built.

        Args:
            version: the gallery version (:attr:`EncryptedGallery.version`).
            export: returns ``(record_ids, templates)`` of the current gallery
                (the key service decrypts them); called only to build.

        Returns:
            The database.
        """
        if self._cache is not None and self._cache[0] == version:
            return self._cache[1]
        vdir = self._path("db", version)
        if os.path.exists(os.path.join(vdir, "complete")):
            db = self._load(vdir)
        else:
            ids, templates = export()
            db = build_database(templates, self.ctx, record_ids=ids)
            self._save(vdir, db)
            self._prune(version)
        self._cache = (version, db)
        return db

    def layout(self, version: str) -> np.ndarray:
        """The slot -> record map of a database version (kept after rebuilds for follow-ups)."""
        path = self._path("db", version, "layout.sealed")
        if not os.path.exists(path):
            raise GalleryError("the gallery layout of this answer is gone")
        return self._open_arrays(path)["slot_record"]

    def _seal_arrays(self, **arrays: np.ndarray) -> bytes:
        buf = io.BytesIO()
        savez: Any = np.savez  # the stubs type **kwargs as allow_pickle
        savez(buf, **arrays)
        return bytes(self._box.encrypt(buf.getvalue()))

    def _open_arrays(self, path: str) -> dict[str, np.ndarray]:
        with open(path, "rb") as fh:
            blob = fh.read()
        try:
            plain = self._box.decrypt(blob)
        except nacl.exceptions.CryptoError:
            raise StateError(f"sealed blind file {os.path.basename(path)} fails authentication") from None
        with np.load(io.BytesIO(plain), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

    def _save(self, vdir: str, db: BlindDatabase) -> None:
        tmp = f"{vdir}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        try:
            atomic_write_bytes(os.path.join(tmp, "layout.sealed"),
                               self._seal_arrays(slot_record=db.slot_record, signs=db.signs))
            for k in range(db.blocks):
                atomic_write_bytes(os.path.join(tmp, f"block-{k}.sealed"), self._seal_arrays(d=db.diagonals[k]))
            atomic_write_bytes(os.path.join(tmp, "complete"), str(int(time.time())).encode())
            shutil.rmtree(vdir, ignore_errors=True)
            os.rename(tmp, vdir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _load(self, vdir: str) -> BlindDatabase:
        arrays = self._open_arrays(os.path.join(vdir, "layout.sealed"))
        slot_record, signs = arrays["slot_record"], arrays["signs"]
        p = self.ctx.params
        diag = np.empty((slot_record.shape[0], p.giant_steps, p.baby_steps, p.data_primes, self.ctx.n),
                        dtype=np.uint64)
        for k in range(diag.shape[0]):
            diag[k] = self._open_arrays(os.path.join(vdir, f"block-{k}.sealed"))["d"]
        return BlindDatabase(diag, slot_record, signs, p.name)

    def _prune(self, keep: str) -> None:
        """Drop the diagonals of older versions; keep their layouts for follow-ups."""
        root = self._path("db")
        for name in os.listdir(root):
            vdir = os.path.join(root, name)
            if name == keep or ".tmp-" in name or not os.path.isdir(vdir):
                continue
            for fname in os.listdir(vdir):
                if fname.startswith("block-") or fname == "complete":
                    os.unlink(os.path.join(vdir, fname))
