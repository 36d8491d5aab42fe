"""Responder-side state of the blind profile.

::

    DIR/blind/
      keys/KEY_ID/           a peer's announced key (public material)
        public.bin  galois.bin  relin.bin  meta.json   (peer, expiry, retired_by)
      queries/QUERY_ID.json  answered blind queries: peer, key id, block
                             order, database version, follow-ups so far
    DIR/private/blind.key    SecretBox key for the sealed layout (0600)
    DIR/private/blind-db/VERSION/   the diagonals of one gallery version (0700)
        layout.sealed        position -> record map, signs and each block's
                             digest (SecretBox)
        block-K.npy          diagonals of block K, memory-mapped when loaded
        complete             written last, inside a temporary directory that
                             is then renamed to VERSION

The diagonals are an encoding of the plaintext gallery, so they live in
``private/`` with the secret keys: a backup or copy that leaves out
``private/`` holds no template. They are not encrypted there, so that a
restart maps them instead of decrypting them (the state's CKKS secret key in
the same directory decrypts the gallery anyway).

A gallery change rebuilds only the blocks it touched. Each block remembers
its records and a digest of their templates; a rebuild keeps every block
whose records are all still enrolled and unchanged (hard-linked into the new
version), drops removed records from theirs, puts new records into the
blocks that change anyway (then those with room, then new blocks), and
encodes only the changed blocks, each under a fresh secret permutation and
fresh signs. When a rebuild happens, the old version keeps only its layout,
which follow-ups on older answers still need. Versions written by earlier
releases (``DIR/blind/db/VERSION/``, sealed blocks) are never loaded again:
the first use rebuilds, and only their layouts are kept.

The database of the current gallery version is made in one of three ways:
inside the first blind answer that needs it (:meth:`BlindStore.database`),
ahead of time (:meth:`BlindStore.prepare`, ``pprm prepare``), or in the
background of a long-running process (:class:`BlindRebuilder`, ``pprm
serve``), which meanwhile answers from the version it holds in memory
(:meth:`BlindStore.answering`). Every long step reports ``(templates done,
templates)``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import secrets
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, NamedTuple

import nacl.exceptions
import nacl.secret
import numpy as np

from pprm._fs import atomic_write_bytes, atomic_write_json, read_json
from pprm.crypto import blind_keys
from pprm.crypto.context import BlindContext
from pprm.errors import GalleryError, KeyRotationError, PprmError, StateError
from pprm.matching.blind import AnnouncedKeys
from pprm.matching.diagonals import BlindDatabase, BlockScratch, build_block
from pprm.protocol.blind_messages import KeyAnnouncementBody

__all__ = ["BlindStore", "AnsweredQuery", "BlindRebuilder", "InUse", "Prepared"]

log = logging.getLogger("pprm.blind")

Export = Callable[[], tuple[np.ndarray, np.ndarray]]
Progress = Callable[[int, int], None]
Lock = Callable[[], AbstractContextManager[object]]

# How one progress bar is shared between the steps of a long call, from
# times measured with pprm-blind-n16384-complex-v3 (16,384 templates per
# block, 2 cores): a build encodes for about 6 s and writes 0.2 s per block; a
# load maps the files (milliseconds), and the first answer reads them.
_ENCODE_SHARE = 0.95  # of a build: encoding (the rest: writing)
_BUILD_SHARE = 0.9  # of an answer that must build the database first
_LOAD_SHARE = 0.1  # of an answer that must map it from the store first


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


@dataclass(frozen=True)
class Prepared:
    """What :meth:`BlindStore.prepare` found or did.

    Attributes:
        version: the gallery version the database belongs to.
        templates: templates in it.
        blocks: its blocks (answer ciphertexts per query).
        built: True if it was built by this call, False if it was there already.
        seconds: wall time of the call.
        reused: blocks of the previous version kept as they were (a build
            encodes only ``blocks - reused``).
    """

    version: str
    templates: int
    blocks: int
    built: bool
    seconds: float
    reused: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "templates": self.templates, "blocks": self.blocks, "built": self.built,
                "reused": self.reused, "seconds": round(self.seconds, 3)}


@dataclass
class _OldBlock:
    """A block of the previous version that a rebuild may keep: its index there and its layout."""

    index: int
    slot_record: np.ndarray
    signs: np.ndarray


@dataclass
class _Block:
    """One block of a version being built: its records, their digest, and the old block it reuses (if any)."""

    records: list[int]
    digest: bytes
    source: tuple[str, _OldBlock] | None


class _Layout(NamedTuple):
    slot_record: np.ndarray
    signs: np.ndarray
    digests: np.ndarray


def _digest(records: list[int], row_of: dict[int, int], templates: np.ndarray) -> bytes:
    """SHA-256 over a block's record ids and templates, in record order (what decides whether it is unchanged)."""
    ordered = sorted(records)
    h = hashlib.sha256(np.asarray(ordered, dtype="<i8").tobytes())
    if ordered:
        # + 0.0 turns -0.0 into 0.0: a decryption may give either for the same grid value.
        h.update(np.ascontiguousarray(templates[[row_of[r] for r in ordered]] + 0.0, dtype="<f8").tobytes())
    return h.digest()


def _save_block(path: str, diagonals: np.ndarray) -> None:
    """Write one block's diagonals as ``.npy`` (0600), flushed to disk; the directory is renamed into place later."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        np.save(fh, diagonals, allow_pickle=False)
        fh.flush()
        os.fsync(fh.fileno())


def _link_or_copy(src: str, dst: str) -> None:
    """Share an unchanged block's file with the new version (a copy where hard links are not possible)."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
        os.chmod(dst, 0o600)


def _offset(progress: Progress, before: int, total: int) -> Progress:
    """A block's own ``(done, count)`` as ``(before + done, total)``."""

    def report(done: int, _count: int) -> None:
        progress(before + done, total)

    return report


class InUse(NamedTuple):
    """The database a blind answer is computed on (:meth:`BlindStore.answering`).

    Attributes:
        version: its gallery version: the one the answer must record, since
            follow-ups resolve through this version's layout.
        database: the diagonals.
        progress: for the matcher, ``(blocks done, blocks)``, reported on as
            templates; None when the caller gave none.
    """

    version: str
    database: BlindDatabase
    progress: Progress | None


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
        self.db_dir = os.path.join(root, "private", "blind-db")
        self.ctx = ctx
        self._box_key = box_key
        self._secret_box: nacl.secret.SecretBox | None = None
        # The one database this process holds (version, diagonals); replaced
        # whole, never changed in place, so a thread that read it keeps a
        # consistent pair.
        self._cache: tuple[str, BlindDatabase] | None = None
        # Set while a long-running process keeps the database current in the
        # background (BlindRebuilder.start): answers then never wait for a rebuild.
        self.rebuilder: BlindRebuilder | None = None
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

    def _db(self, *parts: str) -> str:
        return os.path.join(self.db_dir, *parts)

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
    @property
    def in_memory(self) -> str | None:
        """The gallery version whose database this process holds, or None."""
        cached = self._cache
        return None if cached is None else cached[0]

    def complete(self, version: str) -> bool:
        """Whether the store holds the whole database of ``version``."""
        return os.path.exists(self._db(version, "complete"))

    def database(self, version: str, export: Export, *, progress: Progress | None = None) -> BlindDatabase:
        """The diagonals for gallery ``version``: from memory, mapped from the store, or built (caller holds the lock).

        Args:
            version: the gallery version (:attr:`EncryptedGallery.version`).
            export: returns ``(record_ids, templates)`` of the current gallery
                (the key service decrypts them); called only to build.
            progress: called with ``(templates done, templates)`` while it
                loads or builds; once, with ``(templates, templates)``, when
                the database is in memory already.

        Returns:
            The database (kept in memory for the next call in this process).

        Raises:
            StateError: the sealed layout fails authentication, or a block file is missing or malformed.

        Warning:
            The database is the gallery in clear, encoded: it stays in this
            process's memory, and on disk only under ``DIR/private/blind-db/``
            (``KEYDIR`` for a split state), beside the secret keys.
        """
        cached = self._cache
        if cached is not None and cached[0] == version:
            _finished(progress, cached[1].size)
            return cached[1]
        vdir = self._db(version)
        if self.complete(version):
            db = self._load(vdir, progress)
        else:
            ids, templates = export()
            db, tmp, _reused = self._build(vdir, ids, templates, progress)
            if self._publish(tmp, vdir):
                self._prune(version)
            else:  # published meanwhile by a process that did not take the lock: the layout on disk wins
                shutil.rmtree(tmp, ignore_errors=True)
                db = self._load(vdir)
        self._cache = (version, db)
        return db

    def answering(self, version: str, export: Export, progress: Progress | None = None) -> InUse:
        """The database a blind query is answered from (caller holds the lock).

        In a process without a :attr:`rebuilder` (``pprm answer``), it is the
        database of ``version``, loaded or built first if need be
        (:meth:`database`). In a process with one (``pprm serve``), an answer
        never waits for a rebuild: while the database of ``version`` is not
        in memory yet, the query is answered from the version that is, and
        the rebuilder is told to catch up. Only when this process holds no
        database at all is it loaded or built here.

        Args:
            version: the current gallery version.
            export: as :meth:`database`.
            progress: called with ``(templates done, templates)`` over the
                whole answer: loading or building the database (most of the
                bar, when it happens), then matching, block by block, through
                :attr:`InUse.progress`, which the caller hands to the matcher.

        Returns:
            The version answered from (record it with the answer), the
            database and the matcher's progress callback.

        Raises:
            As :meth:`database`.

        Warning:
            An answer from the previous version may name a record removed
            since (its follow-up is then refused: resolution goes through the
            current gallery) and misses records enrolled since, for as long
            as the rebuild takes.
        """
        cached = self._cache
        rebuilder = self.rebuilder
        if cached is not None and (cached[0] == version or rebuilder is not None):
            if cached[0] != version and rebuilder is not None:
                rebuilder.kick()
            return InUse(cached[0], cached[1], _blocks_as_templates(progress, cached[1].size, 0.0))
        complete = self.complete(version)
        if rebuilder is not None and not complete:
            log.warning("building the blind database of gallery version %s before answering ('pprm prepare DIR' "
                        "builds it ahead of time)", version[:12])
        share = _LOAD_SHARE if complete else _BUILD_SHARE
        db = self.database(version, export, progress=_span(progress, 0.0, share))
        return InUse(version, db, _blocks_as_templates(progress, db.size, share))

    def prepare(self, lock: Lock, version_of: Callable[[], str], export: Export, *,
                progress: Progress | None = None, keep: bool = False) -> Prepared:
        """Build the database of the current gallery version now, unless it is there already.

        The state lock is taken only to read the gallery (version and
        export) and to publish the result; encoding, sealing and writing run
        without it, so a service on the same directory keeps answering. If
        the gallery changes meanwhile, the database of the new version is
        built instead; if another process publishes the same version first,
        its database is the one kept (its layout is the one on disk, which
        follow-ups read).

        Args:
            lock: the state lock (:meth:`pprm.node.state.State.lock`); the
                caller must not hold it.
            version_of: the current gallery version (called under the lock).
            export: as :meth:`database` (called under the lock).
            progress: called with ``(templates done, templates)`` while it
                builds (or loads, with ``keep``); once with ``(templates,
                templates)`` when there is nothing to do.
            keep: also hold the database in this process's memory (a key
                service or a service, which answer from it next); without
                it, a database already in the store is only looked at.

        Returns:
            What was found or built.

        Raises:
            StateError: the sealed layout fails authentication, or a block file is missing or malformed.

        Warning:
            Building decrypts the whole gallery (``export``) in this
            process's memory; the database is written only under ``private/``.
        """
        t0 = time.monotonic()
        while True:
            ids = templates = None
            with lock():
                version = version_of()
                vdir = self._db(version)
                cached = self._cache
                if cached is not None and cached[0] == version:
                    return _prepared(version, cached[1].slot_record, False, t0, progress)
                complete = self.complete(version)
                if complete and not keep:
                    return _prepared(version, self._layout_of(vdir), False, t0, progress)
                if not complete:
                    ids, templates = export()
            if ids is None or templates is None:
                db = self._load_or_retry(lock, version_of, version, vdir, progress)
                if db is None:
                    continue
                self._cache = (version, db)
                return _prepared(version, db.slot_record, False, t0, None)
            db, tmp, reused = self._build(vdir, ids, templates, progress)
            del ids, templates
            with lock():
                current = version_of() == version
                published = current and self._publish(tmp, vdir)
                if published:
                    self._prune(version)
                else:
                    shutil.rmtree(tmp, ignore_errors=True)
            if not published:
                continue  # the gallery changed, or another process was first: look again
            if keep:
                self._cache = (version, db)
            return Prepared(version, db.size, db.blocks, True, time.monotonic() - t0, reused)

    def newest_complete(self) -> str | None:
        """The most recently completed version in the store (older ones keep only their layout)."""
        root = self._db()
        best: tuple[int, str] | None = None
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(root):
                marker = os.path.join(root, name, "complete")
                if ".tmp-" in name or not os.path.exists(marker):
                    continue
                stamp = os.stat(marker).st_mtime_ns
                if best is None or stamp > best[0]:
                    best = (stamp, name)
        return None if best is None else best[1]

    def _load_or_retry(self, lock: Lock, version_of: Callable[[], str], version: str, vdir: str,
                       progress: Progress | None) -> BlindDatabase | None:
        """Load a complete version without the lock; None if it was pruned meanwhile (the gallery changed)."""
        try:
            return self._load(vdir, progress)
        except (OSError, StateError):
            with lock():
                if version_of() == version and self.complete(version):
                    raise
            return None

    def layout(self, version: str) -> np.ndarray:
        """The slot -> record map of a database version (kept after rebuilds for follow-ups)."""
        path = self._db(version, "layout.sealed")
        if not os.path.exists(path):
            path = self._path("db", version, "layout.sealed")  # written by an earlier release
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

    def _layout_of(self, vdir: str) -> np.ndarray:
        return self._open_arrays(os.path.join(vdir, "layout.sealed"))["slot_record"]

    def _build(self, vdir: str, ids: np.ndarray, templates: np.ndarray,
               progress: Progress | None) -> tuple[BlindDatabase, str, int]:
        """Write the database of a gallery to a fresh temporary directory beside ``vdir``, block by block.

        Blocks of the newest complete version whose records are all still
        enrolled, with the same templates, and get no new record are
        hard-linked; the others are encoded afresh (see the module docstring).

        Returns:
            The database (memory-mapped from the temporary directory), the
            directory (see :meth:`_publish`) and the number of blocks reused.
        """
        per_block = self.ctx.params.templates_per_block
        row_of = {int(r): k for k, r in enumerate(ids.tolist())}
        plan = self._plan(row_of, templates, per_block)
        tmp = f"{vdir}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        os.makedirs(tmp, mode=0o700)
        n = len(row_of)
        encode = _span(progress, 0.0, _ENCODE_SHARE)
        if encode is not None:
            encode(0, n)
        try:
            records: list[np.ndarray] = []
            signs: list[np.ndarray] = []
            digests: list[bytes] = []
            done = reused = 0
            paths: list[str] = []
            # A block's file is written (and fsynced) on a helper thread while
            # the next block is encoded; at most one write is pending, so at
            # most two blocks of diagonals are in memory.
            cores = max(1, os.cpu_count() or 1)
            # Two block buffers, taken in turn: the one being written is never
            # the one being encoded (a write is awaited before the next is
            # submitted), and fresh memory per block cost about a second per
            # GB in page faults on the test VMs.
            buffers: list[np.ndarray] = []
            scratch: BlockScratch | None = None
            encoded = 0
            with ThreadPoolExecutor(max_workers=cores, thread_name_prefix="pprm-encode") as pool, \
                    ThreadPoolExecutor(max_workers=1, thread_name_prefix="pprm-write") as writer:
                pending: Future[None] | None = None
                for k, block in enumerate(plan):
                    path = os.path.join(tmp, f"block-{k}.npy")
                    if block.source is not None:
                        src_dir, src = block.source
                        try:
                            _link_or_copy(os.path.join(src_dir, f"block-{src.index}.npy"), path)
                        except FileNotFoundError:  # pruned meanwhile by a process that published a newer version
                            block.source = None
                    if block.source is not None:
                        rec, sg = block.source[1].slot_record, block.source[1].signs
                        reused += 1
                    else:
                        rows = np.asarray([row_of[r] for r in block.records], dtype=np.int64)
                        step = None if encode is None else _offset(encode, done, n)
                        if len(buffers) < 2:
                            buffers.append(np.empty(self._block_shape(), dtype=np.uint64))
                        scratch = scratch or BlockScratch(self.ctx)
                        diag, rec, sg = build_block(templates[rows], self.ctx, record_ids=ids[rows], pool=pool,
                                                    progress=step, out=buffers[encoded % 2], scratch=scratch)
                        encoded += 1
                        if pending is not None:
                            pending.result()
                        pending = writer.submit(_save_block, path, diag)
                        del diag
                    paths.append(path)
                    records.append(rec)
                    signs.append(sg)
                    digests.append(block.digest)
                    done += len(block.records)
                    if encode is not None:
                        encode(done, n)
                if pending is not None:
                    pending.result()
            blocks = [np.load(path, mmap_mode="r") for path in paths]
            digest_arr = np.frombuffer(b"".join(digests), dtype=np.uint8).reshape(len(plan), -1)
            atomic_write_bytes(os.path.join(tmp, "layout.sealed"),
                               self._seal_arrays(slot_record=np.stack(records), signs=np.stack(signs),
                                                 digests=digest_arr))
            atomic_write_bytes(os.path.join(tmp, "complete"), str(int(time.time())).encode())
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _finished(progress, n)
        db = BlindDatabase(blocks, np.stack(records), np.stack(signs), self.ctx.params.name)
        return db, tmp, reused

    def _plan(self, row_of: dict[int, int], templates: np.ndarray, per_block: int) -> list[_Block]:
        """Which records go in which block, and which blocks of the newest version can be kept as they are."""
        previous = self._previous()
        placed: set[int] = set()
        plan: list[_Block] = []
        if previous is not None:
            src_dir, old = previous
            for k in range(old.slot_record.shape[0]):
                rec = old.slot_record[k]
                had = [int(r) for r in rec[rec >= 0]]
                keep = [r for r in had if r in row_of]
                placed.update(keep)
                digest = _digest(keep, row_of, templates)
                same = len(keep) == len(had) and digest == bytes(old.digests[k])
                source = (src_dir, _OldBlock(k, rec, old.signs[k])) if same else None
                plan.append(_Block(keep, digest, source))
        new = [r for r in row_of if r not in placed]
        # New records go where a block is re-encoded anyway, then into the blocks with the most room
        # (so that a few new records touch one block), then into new blocks.
        for block in sorted(plan, key=lambda b: (b.source is not None, len(b.records))):
            if not new:
                break
            room = per_block - len(block.records)
            if room > 0:
                block.records.extend(new[:room])
                del new[:room]
                block.source = None
        for start in range(0, len(new), per_block):
            plan.append(_Block(new[start:start + per_block], b"", None))
        plan = [b for b in plan if b.records] or [_Block([], b"", None)]
        for block in plan:
            if block.source is None:
                block.digest = _digest(block.records, row_of, templates)
        return plan

    def _previous(self) -> tuple[str, _Layout] | None:
        """The newest complete version's directory and layout, if there is one with digests to trust."""
        newest = self.newest_complete()
        if newest is None:
            return None
        vdir = self._db(newest)
        try:
            arrays = self._open_arrays(os.path.join(vdir, "layout.sealed"))
        except (OSError, StateError):
            return None
        if "digests" not in arrays or arrays["slot_record"].shape[1:] != (self.ctx.params.templates_per_block,):
            return None
        return vdir, _Layout(arrays["slot_record"], arrays["signs"], arrays["digests"])

    def _publish(self, tmp: str, vdir: str) -> bool:
        """Rename a written version into place (caller holds the lock); False if it is there already."""
        if os.path.exists(os.path.join(vdir, "complete")):
            return False
        shutil.rmtree(vdir, ignore_errors=True)  # a leftover without its blocks
        os.rename(tmp, vdir)
        return True

    def _block_shape(self) -> tuple[int, int, int, int]:
        """One block's diagonals: ``[g2, b1, L, N]``."""
        p = self.ctx.params
        return (p.giant_steps, p.baby_steps, p.data_primes, self.ctx.n)

    def _load(self, vdir: str, progress: Progress | None = None) -> BlindDatabase:
        """Map a complete version's blocks (nothing is read until a query touches them)."""
        arrays = self._open_arrays(os.path.join(vdir, "layout.sealed"))
        slot_record, signs = arrays["slot_record"], arrays["signs"]
        size = int((slot_record >= 0).sum())
        if progress is not None:
            progress(0, size)
        shape = self._block_shape()
        blocks = []
        for k in range(slot_record.shape[0]):
            try:
                arr = np.load(os.path.join(vdir, f"block-{k}.npy"), mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError):
                raise StateError(f"blind database block {k} of version {os.path.basename(vdir)[:12]} "
                                 f"is missing or unreadable") from None
            if arr.shape != shape or arr.dtype != np.uint64:
                raise StateError(f"blind database block {k} has shape {arr.shape}, expected {shape}")
            blocks.append(arr)
        _finished(progress, size)
        return BlindDatabase(blocks, slot_record, signs, self.ctx.params.name)

    def _prune(self, keep: str) -> None:
        """Drop the diagonals of older versions; keep their layouts for follow-ups.

        A version another process (or thread) answers from stays in its
        memory; only its files go (a mapped file stays readable until unmapped). Temporary directories of processes
        that no longer run (killed while writing) are deleted.
        """
        root = self._db()
        legacy = self._path("db")
        for name in os.listdir(legacy) if os.path.isdir(legacy) else ():
            # An earlier release's sealed blocks: never loaded again; the layout stays for follow-ups.
            vdir = os.path.join(legacy, name)
            if ".tmp-" in name:
                if not _writer_alive(name):
                    shutil.rmtree(vdir, ignore_errors=True)
                continue
            for fname in os.listdir(vdir) if os.path.isdir(vdir) else ():
                if fname.startswith("block-") or fname == "complete":
                    os.unlink(os.path.join(vdir, fname))
        for name in os.listdir(root):
            vdir = os.path.join(root, name)
            if ".tmp-" in name:
                if not _writer_alive(name):
                    shutil.rmtree(vdir, ignore_errors=True)
                continue
            if name == keep or not os.path.isdir(vdir):
                continue
            for fname in os.listdir(vdir):
                if fname.startswith("block-") or fname == "complete":
                    os.unlink(os.path.join(vdir, fname))


class BlindRebuilder:
    """Keeps a store's database current in a background thread, for a long-running process (``pprm serve``).

    Once the store holds a database in memory (or, at start, finds one
    in the store, which it maps), the rebuilder watches the gallery:
    after a change it builds the new version's database in the background
    (:meth:`BlindStore.prepare`, which takes the state lock only to read the
    gallery and to publish), while :meth:`BlindStore.answering` keeps
    answering from the version in memory; the new version replaces it when
    it is whole. A process that never answered a blind query and finds
    nothing sealed builds nothing.

    Args:
        store: the store to keep current; :meth:`start` attaches the
            rebuilder to it.
        lock: the state lock.
        version_of: the current gallery version.
        export: returns ``(record_ids, templates)`` of the current gallery.
        probe: cheap to call; its value changes when the gallery may have
            (``os.stat`` of the gallery index). Polled every ``interval``
            seconds; without it, only :meth:`kick` starts a rebuild.
        interval: seconds between polls.

    Warning:
        While it rebuilds, the process holds two versions of the database in
        memory (each the gallery in clear, encoded): the one it answers from
        and the one it builds. The previous version's sealed blocks are
        deleted once the new one is published; its layout stays, for
        follow-ups on the answers it gave.
    """

    def __init__(self, store: BlindStore, lock: Lock, version_of: Callable[[], str], export: Export, *,
                 probe: Callable[[], object] | None = None, interval: float = 1.0) -> None:
        self.store = store
        self._lock = lock
        self._version_of = version_of
        self._export = export
        self._probe = probe
        self.interval = interval
        self._kick = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"BlindRebuilder({self.store.dir!r}, in_memory={self.store.in_memory})"

    def start(self) -> None:
        """Attach to the store and start the thread (it first maps what is in the store, if anything)."""
        self.store.rebuilder = self
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="pprm-blind-rebuild", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        """Detach and stop watching; a build under way finishes in its daemon thread, or ends with the process.

        A temporary directory a killed build leaves is deleted by the next
        publication (:meth:`BlindStore._prune`).
        """
        if self.store.rebuilder is self:
            self.store.rebuilder = None
        self._stop.set()
        self._kick.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def kick(self) -> None:
        """Look at the gallery now rather than at the next poll."""
        self._kick.set()

    def _run(self) -> None:
        seen: object = None
        kicked = True  # the first round looks at once
        while not self._stop.is_set():
            probe = self._probe() if self._probe is not None else None
            if kicked or probe != seen:
                seen = probe
                try:
                    self.refresh()
                except (PprmError, OSError, ValueError, MemoryError) as exc:
                    # The thread must outlive a failed round: the next change (or kick) tries again.
                    if self._stop.is_set():
                        return  # stopped mid-build: the directory may be going away
                    log.warning("blind database: the background rebuild failed (%s); answers keep coming from "
                                "version %s", exc, (self.store.in_memory or "none")[:12])
            kicked = self._kick.wait(self.interval)
            self._kick.clear()

    def refresh(self, *, stale: bool = True) -> str | None:
        """Bring the database in memory to the current gallery version (blocking; the thread calls it).

        Args:
            stale: with no database in memory and only an older version
                sealed, load that one first to answer from while the current
                one builds (a process that answers through
                :meth:`BlindStore.answering`); without it, only build.

        Returns:
            The version now in memory, or None when there is nothing to keep
            current (no database in memory and none sealed).

        Raises:
            StateError: the sealed layout fails authentication, or a block file is missing or malformed.
        """
        store = self.store
        current, newest = True, None
        with self._lock():
            # Looked at under the lock: an answer may be loading or building the database right now.
            if store.in_memory is None:
                current = store.complete(self._version_of())
                newest = None if current else store.newest_complete()
        if not current:
            if newest is None:
                return None
            if stale and store.in_memory is None:
                # Warm start from the last version sealed (the gallery changed
                # while no service ran): answer from it while the current one builds.
                db = store._load(store._db(newest))
                if store.in_memory is None:
                    store._cache = (newest, db)
                    log.warning("blind database: answering from gallery version %s while the current one builds",
                                newest[:12])
        before = store.in_memory
        t0 = time.monotonic()
        done = store.prepare(self._lock, self._version_of, self._export, keep=True)
        if done.version != before:
            log.warning("blind database of gallery version %s (%d templates) %s in the background in %.1f s",
                        done.version[:12], done.templates, "built" if done.built else "loaded", time.monotonic() - t0)
        return done.version


def _writer_alive(name: str) -> bool:
    """Whether the process that writes temporary directory ``VERSION.tmp-PID[-R]`` still runs."""
    try:
        pid = int(name.rsplit(".tmp-", 1)[1].split("-")[0])
    except ValueError:
        return True  # not a name this module makes: leave it
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _finished(progress: Progress | None, total: int) -> None:
    if progress is not None:
        progress(total, total)


def _prepared(version: str, slot_record: np.ndarray, built: bool, t0: float, progress: Progress | None) -> Prepared:
    size = int((slot_record >= 0).sum())
    _finished(progress, size)
    return Prepared(version, size, int(slot_record.shape[0]), built, time.monotonic() - t0)


def _mark(total: int, share: float) -> int:
    return total if share >= 1.0 else int(total * share)


def _span(progress: Progress | None, start: float, end: float) -> Progress | None:
    """One step of a longer call: its ``(done, total)`` reported as the part ``[start, end]`` of the whole bar.

    Both count the same templates, so the bar's total never changes; the
    marks are whole templates, computed alike for the end of one step and
    the start of the next, so the reports stay monotone.
    """
    if progress is None:
        return None

    def report(done: int, total: int) -> None:
        if total <= 0:
            progress(0, 0)
            return
        lo, hi = _mark(total, start), _mark(total, end)
        progress(lo + (hi - lo) * min(max(done, 0), total) // total, total)

    return report


def _blocks_as_templates(progress: Progress | None, size: int, start: float) -> Progress | None:
    """The matcher's ``(blocks done, blocks)`` as templates, from ``start`` of the bar to its end."""
    part = _span(progress, start, 1.0)
    if part is None:
        return None
    part(0, size)

    def report(done: int, blocks: int) -> None:
        part(size * done // blocks if blocks > 0 else size, size)

    return report
