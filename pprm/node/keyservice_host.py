"""The key service of a split state, as its own process: ``pprm keyservice serve KEYDIR``.

It holds what the front must not (:mod:`pprm.node.split`): the CKKS secret
key, the token key and the blind profile's plaintext database. It answers
only its front (:mod:`pprm.node.keylink`: signed, boxed frames, pinned keys)
and only these operations:

``release``
    Decide a sealed query's masked answer. The request carries the
    requester-signed query itself; the key service verifies it on its own
    (signature first, recipient, expiry, parameters, its own replay cache,
    then the box), applies its own copy of the policy (purposes, quotas),
    checks that the masked answer belongs to its gallery (block versions,
    count, scale), decrypts, and releases at most ``k`` tokens. It records
    the release (audit ``release``, its quota ledger) before replying, and
    keeps the tokens until the front confirms the answer was handed over
    (``commit``): asked again for the same query before that, after a crash
    on either side, it returns the same tokens without decrypting anything,
    so nothing is answered twice; after ``commit`` the query is a replay.
``commit``
    Mark a released query answered (its id joins the replay cache).
``resolve``
    Resolve a follow-up's token or handle (verified here, signature first),
    or record a blind follow-up that is not a hit; the front signs the
    refusal, since the key service does not hold the state's signing key.
``enroll``, ``remove``, ``remove_many``
    Gallery changes (encrypt; decrypt, round and re-encrypt a block; for
    ``remove_many``, each changed block once, all or nothing).
``hello``
    The state's code, key id and gallery version, to check a pairing.
``prepare``
    Build (or refresh, after a gallery change) the blind database now and
    hold it in memory, instead of inside the next blind answer; a no-op
    when it is current (``pprm prepare DIR`` on the front). At start,
    :func:`serve` also loads (or, after a gallery change, rebuilds) a
    database sealed before, in a background thread, while it answers.

So a compromised front cannot make it decrypt anything but the masked
answer of a genuine, unreplayed, in-quota query, and learns from that at
most ``k`` opaque tokens (and their number). Every decryption is in the key
service's own hash-chained audit log, signed with its own key.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from pprm._fs import atomic_write_bytes, atomic_write_json, read_json
from pprm.errors import (
    GalleryError,
    MessageError,
    NetworkError,
    NotAHitError,
    PolicyError,
    PprmError,
    ReplayError,
    StateError,
)
from pprm.matching.blind import BlindMatcher, BlindRequest
from pprm.matching.gallery import EncryptedGallery
from pprm.matching.sealed import MaskedResult
from pprm.node import keylink
from pprm.node.blind_store import AnsweredQuery, BlindRebuilder
from pprm.node.keyservice import KeyService
from pprm.node.policy import QuotaLedger, decide
from pprm.node.responder import blind_keys
from pprm.node.split import DEFAULT_SOCKET, KeyServicePin, keyservice_pin
from pprm.node.state import State

__all__ = ["KeyServiceHost", "KeyDirState", "serve"]

log = logging.getLogger("pprm.keyservice")

Handler = Callable[[keylink.Payload, float], tuple[dict[str, Any], tuple[bytes, ...]]]


class KeyDirState(State):
    """A key-service directory opened as a state: secrets here, the gallery where the pin says."""

    pin: KeyServicePin

    @classmethod
    def open_keydir(cls, keydir: str) -> KeyDirState:
        """Open a key-service directory.

        Raises:
            StateError: not a key-service directory.
        """
        pin = keyservice_pin(keydir)
        st = State.open(keydir)
        out = cls(st.dir, st.config)
        out.pin = pin
        return out

    def gallery(self) -> EncryptedGallery:
        """The gallery this key service writes (in the front's directory, or a share of it)."""
        return EncryptedGallery(self.pin.gallery, self.config.parameter_set, self.key_id, self.config.dim)


class _Outcomes:
    """Releases handed to the front and not yet committed, by requester and query id (KEYDIR/outcomes.json)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._dir = os.path.splitext(path)[0]

    def _load(self) -> dict[str, dict[str, Any]]:
        if not os.path.exists(self.path):
            return {}
        try:
            data = read_json(self.path)
            if not isinstance(data, dict):
                raise TypeError
            return data
        except (ValueError, TypeError):
            raise StateError("outcomes.json is corrupt") from None

    def get(self, sender: str, qid: str) -> dict[str, Any] | None:
        found = self._load().get(f"{sender}/{qid}")
        return found if isinstance(found, dict) else None

    def put(self, sender: str, qid: str, value: dict[str, Any], now: float, blobs: tuple[bytes, ...] = ()) -> None:
        """Keep an outcome (and its binary parts, in a file of their own) until the query expires."""
        data = self._load()
        for key in [k for k, v in data.items() if int(v.get("expires", 0)) < now]:
            self._unlink(data.pop(key))
        if blobs:
            name = f"{secrets.token_hex(16)}.bin"
            os.makedirs(self._dir, mode=0o700, exist_ok=True)
            head = b"".join(len(b).to_bytes(8, "big") for b in blobs)
            atomic_write_bytes(os.path.join(self._dir, name), len(blobs).to_bytes(4, "big") + head + b"".join(blobs))
            value = {**value, "file": name}
        data[f"{sender}/{qid}"] = value
        atomic_write_json(self.path, data)

    def blobs(self, value: dict[str, Any]) -> tuple[bytes, ...]:
        """The binary parts kept with an outcome.

        Raises:
            StateError: the file is missing or damaged.
        """
        try:
            with open(os.path.join(self._dir, str(value["file"])), "rb") as fh:
                raw = fh.read()
            n = int.from_bytes(raw[:4], "big")
            sizes = [int.from_bytes(raw[4 + 8 * i:12 + 8 * i], "big") for i in range(n)]
            at, out = 4 + 8 * n, []
            for size in sizes:
                out.append(raw[at:at + size])
                at += size
            if at != len(raw):
                raise ValueError
            return tuple(out)
        except (OSError, KeyError, ValueError):
            raise StateError("a kept answer of the key service is missing or damaged") from None

    def drop(self, sender: str, qid: str) -> None:
        data = self._load()
        value = data.pop(f"{sender}/{qid}", None)
        if value is not None:
            atomic_write_json(self.path, data)
            self._unlink(value)

    def _unlink(self, value: dict[str, Any]) -> None:
        if "file" in value:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self._dir, str(value["file"])))


class KeyServiceHost:
    """The key service's request handler (transport-free; :func:`serve` puts it on a socket).

    Args:
        keydir: the key-service directory.
        now: clock, for tests.

    Raises:
        StateError: not a key-service directory, or its gallery is missing.
        PolicyTamperedError: KEYDIR/state.json differs from the policy its
            audit log covers (change it with ``pprm policy set KEYDIR``).
    """

    def __init__(self, keydir: str, *, now: Callable[[], float] = time.time) -> None:
        self.state = KeyDirState.open_keydir(keydir)
        self.state.check_policy()
        self.pin = self.state.pin
        self._ident = self.state.identity()
        self._clock = now
        self.keys = KeyService(self.state, messages=False)
        self.quota = QuotaLedger(self.state.path("quota.json"))
        # Request nonces are kept in memory only: a request is refused if it
        # is over MAX_AGE old or was made before this process started, so a
        # frame captured before a restart cannot be replayed after it, and
        # nothing is written per request for the link itself.
        self._started = int(now())
        self._seen: dict[str, float] = {}
        self._outcomes = _Outcomes(self.state.path("outcomes.json"))
        if not os.path.isdir(self.pin.gallery):
            raise StateError(f"the gallery directory {self.pin.gallery} is not reachable from the key service")
        self._ops: dict[str, Handler] = {
            "hello": self._hello, "release": self._release, "commit": self._commit, "resolve": self._resolve,
            "enroll": self._enroll, "remove": self._remove, "remove_many": self._remove_many,
            "blind_answer": self._blind_answer,
            "accept_keys": self._accept_keys, "prepare": self._prepare,
        }

    def __repr__(self) -> str:
        return f"KeyServiceHost({self.state.config.name})"

    def handle(self, frame: bytes) -> bytes:
        """Answer one request frame with one response frame.

        A frame that is not signed by the pinned front is answered with an
        error (boxed to the front, so its sender cannot even read it), and
        changes nothing; so is any refused request.
        """
        t = self._clock()
        nonce = "0" * 32
        try:
            req = keylink.open_frame(frame, keylink.REQUEST, self._ident, self.pin.front)
            nonce = req.nonce
            keylink.check_fresh(req, t)
            if req.time < self._started:
                raise MessageError("key-service request made before this key service started; send it again")
            if req.nonce in self._seen:
                raise ReplayError("key-service request replayed")
            handler = self._ops.get(req.op)
            if handler is None:
                raise MessageError(f"unknown key-service operation {req.op[:32]!r}")
            meta, blobs = handler(req, t)
            # Recorded only once the request succeeded: a refused one changed nothing.
            self._seen = {n: e for n, e in self._seen.items() if e >= t}
            self._seen[req.nonce] = t + 2 * keylink.MAX_AGE
            out = keylink.Payload("ok", nonce, int(t), meta, blobs)
        except PprmError as exc:
            log.info("refused: %s: %s", type(exc).__name__, exc)
            out = keylink.Payload("error", nonce, int(t), _error_meta(exc))
        return keylink.seal_frame(keylink.RESPONSE, out, self._ident, self.pin.front)

    # -- operations ------------------------------------------------------
    def _hello(self, req: keylink.Payload, t: float) -> tuple[dict[str, Any], tuple[bytes, ...]]:
        return {"state": self.state.config.name, "key_id": self.state.key_id,
                "gallery": self.state.gallery().version}, ()

    def _release(self, req: keylink.Payload, t: float) -> tuple[dict[str, Any], tuple[bytes, ...]]:
        if not req.blobs:
            raise MessageError("a release needs the query")
        st = self.state
        with st.lock():
            vq = self.keys.verify_query(req.blobs[0], t)
            h = vq.envelope.header
            stored = self._outcomes.get(h.sender, h.id)
            if stored is not None:
                # Asked again before the front confirmed the answer (a crash):
                # the same tokens, nothing decrypted.
                return {"tokens": stored["tokens"], "hits": stored["hits"], "repeat": True}, ()
            refusal = decide(st.config, self.quota, h.sender, vq.body.case, vq.body.purpose, t)
            if refusal is not None:
                raise PolicyError(f"the key service refuses query {h.id} from {h.sender} ({refusal.reason}): "
                                  f"{refusal.message}")
            try:
                blocks, scale = req.meta["blocks"], req.meta["scale"]
                if not isinstance(blocks, list) or not all(isinstance(b, str) for b in blocks):
                    raise TypeError
                result = MaskedResult(tuple(blocks), req.blobs[1:], float(scale))
            except (KeyError, TypeError, ValueError):
                raise MessageError("a release needs the masked answer's blocks and scale") from None
            release = self.keys.release(vq, result, t)
            # Logged before it is kept or handed over: a crash may leave a
            # logged release that was never answered, never the reverse.
            st.audit.append("release", peer=h.sender, query_id=h.id, case=vq.body.case, purpose=vq.body.purpose,
                            hits=release.hits, released=len(release.tokens))
            self._outcomes.put(h.sender, h.id, {"tokens": list(release.tokens), "hits": release.hits,
                                                "expires": h.expires}, t)
            self.quota.record(h.sender, vq.body.case, t)
        return {"tokens": list(release.tokens), "hits": release.hits, "repeat": False}, ()

    def _blind_answer(self, req: keylink.Payload, t: float) -> tuple[dict[str, Any], tuple[bytes, ...]]:
        if not req.blobs:
            raise MessageError("a blind answer needs the query")
        st = self.state
        with st.lock():
            vq = self.keys.verify_blind_query(req.blobs[0], t)
            anns = [self.keys.verify_announcement(b, t) for b in req.blobs[1:]]
            h = vq.envelope.header
            stored = self._outcomes.get(h.sender, h.id)
            if stored is not None:
                # The same answer again (the front crashed before confirming):
                # a second, freshly masked answer to one query is never made.
                return {**stored["meta"], "repeat": True}, self._outcomes.blobs(stored)
            refusal = decide(st.config, self.quota, h.sender, vq.body.case, vq.body.purpose, t)
            if refusal is not None:
                raise PolicyError(f"the key service refuses query {h.id} from {h.sender} ({refusal.reason}): "
                                  f"{refusal.message}")
            keys = blind_keys(st, vq, anns, t)
            # Parsed before the database is loaded or built: a malformed probe changes nothing.
            request = BlindRequest.parse(st.blind_ctx, vq.body.probe, keys)
            version = st.gallery().version
            db = st.blind_store.database(version, self.keys.export_templates)
            result = BlindMatcher(st.blind_ctx, db).answer_blind(request, st.config.threshold)
            for ann in anns:
                st.blind_store.store_keys(ann.envelope.header.sender, ann.body)
                st.audit.append("keys", peer=ann.envelope.header.sender, key_id=ann.body.key_id,
                                expires=ann.body.expires)
                self.keys.commit_seen(ann.envelope, t)
            meta = {"gallery_size": db.size, "key_id": vq.body.key_id}
            st.audit.append("release", peer=h.sender, query_id=h.id, case=vq.body.case, purpose=vq.body.purpose,
                            profile="blind", key_id=vq.body.key_id, blocks=len(result.ciphertexts),
                            gallery_size=db.size)
            st.blind_store.record_answer(AnsweredQuery(h.id, h.sender, vq.body.key_id, result.order, version,
                                                       int(t), []))
            self._outcomes.put(h.sender, h.id, {"meta": meta, "expires": h.expires}, t,
                               blobs=tuple(result.ciphertexts))
            self.quota.record(h.sender, vq.body.case, t)
        return {**meta, "repeat": False}, tuple(result.ciphertexts)

    def _accept_keys(self, req: keylink.Payload, t: float) -> tuple[dict[str, Any], tuple[bytes, ...]]:
        if len(req.blobs) != 1:
            raise MessageError("a key announcement is one message")
        st = self.state
        with st.lock():
            ann = self.keys.verify_announcement(req.blobs[0], t)
            sender = ann.envelope.header.sender
            st.blind_store.check_new_keys(sender, ann.body, t)
            st.blind_store.store_keys(sender, ann.body)
            st.audit.append("keys", peer=sender, key_id=ann.body.key_id, expires=ann.body.expires)
            self.keys.commit_seen(ann.envelope, t)
        return {"key_id": ann.body.key_id}, ()

    def _commit(self, req: keylink.Payload, t: float) -> tuple[dict[str, Any], tuple[bytes, ...]]:
        try:
            sender, qid, answer_id = (str(req.meta[k]) for k in ("peer", "query_id", "answer_id"))
        except KeyError:
            raise MessageError("a commit names the peer, the query and the answer") from None
        with self.state.lock():
            stored = self._outcomes.get(sender, qid)
            if stored is None:
                raise GalleryError(f"nothing was released for query {qid[:8]}... from {sender}")
            self.state.audit.append("commit", peer=sender, query_id=qid, answer_id=answer_id)
            self.keys.commit_seen_id(sender, qid, int(stored["expires"]), t)
            self._outcomes.drop(sender, qid)
        return {}, ()

    def _resolve(self, req: keylink.Payload, t: float) -> tuple[dict[str, Any], tuple[bytes, ...]]:
        if len(req.blobs) != 1:
            raise MessageError("a resolve carries one follow-up")
        try:
            res = self.keys.resolve(req.blobs[0], t)
        except NotAHitError as exc:
            return {"not_a_hit": {"peer": exc.peer, "query_id": exc.query_id, "followup_id": exc.followup_id,
                                  "refusal_id": exc.refusal_id, "message": str(exc)}}, ()
        return {"reference": res.reference, "requester": res.requester, "query_id": res.query_id,
                "followup_id": res.followup_id}, ()

    def _enroll(self, req: keylink.Payload, t: float) -> tuple[dict[str, Any], tuple[bytes, ...]]:
        try:
            refs = req.meta["references"]
            rows, cols = (int(x) for x in req.meta["shape"])
            if not isinstance(refs, list) or len(req.blobs) != 1 or len(req.blobs[0]) != rows * cols * 4:
                raise ValueError
            templates = np.frombuffer(req.blobs[0], dtype="<f4").reshape(rows, cols)
        except (KeyError, TypeError, ValueError):
            raise MessageError("an enrolment carries float32 templates, their shape and references") from None
        ids = self.keys.enroll(templates, refs)
        return {"ids": ids}, ()

    def _remove(self, req: keylink.Payload, t: float) -> tuple[dict[str, Any], tuple[bytes, ...]]:
        ref = req.meta.get("reference")
        if not isinstance(ref, str):
            raise MessageError("a removal names the reference")
        self.keys.remove(ref)
        return {}, ()

    def _remove_many(self, req: keylink.Payload, t: float) -> tuple[dict[str, Any], tuple[bytes, ...]]:
        refs = req.meta.get("references")
        if not isinstance(refs, list) or not all(isinstance(r, str) for r in refs):
            raise MessageError("a removal of several records names them as a list of references")
        return {"removed": self.keys.remove_many(refs)}, ()

    def _prepare(self, req: keylink.Payload, t: float) -> tuple[dict[str, Any], tuple[bytes, ...]]:
        st = self.state
        # Takes the lock itself, only to read the gallery and to publish.
        done = st.blind_store.prepare(st.lock, lambda: st.gallery().version, self.keys.export_templates, keep=True)
        log.info("blind database of gallery version %s: %s", done.version[:12], "built" if done.built else "current")
        return done.to_json(), ()


def _warm_blind(host: KeyServiceHost) -> None:
    """Hold the blind database in memory if one was sealed before (rebuilt if the gallery changed since).

    A key service that never answered a blind query (nothing sealed) builds nothing.
    """
    st = host.state
    try:
        BlindRebuilder(st.blind_store, st.lock, lambda: st.gallery().version, host.keys.export_templates).refresh(
            stale=False)
    except (PprmError, OSError) as exc:
        log.warning("blind database not loaded at start (the next blind answer will): %s", exc)


def _error_meta(exc: PprmError) -> dict[str, Any]:
    meta: dict[str, Any] = {"code": type(exc).__name__, "message": str(exc)}
    for attr in ("peer", "query_id", "reason", "followup_id"):
        if hasattr(exc, attr):
            meta[attr] = str(getattr(exc, attr))
    return meta


def serve(keydir: str, address: str | None = None, *, ready: Callable[[str], None] | None = None,
          stop: Callable[[], bool] | None = None) -> None:
    """Serve a key service until interrupted (or ``stop()`` says so).

    One request at a time: every operation takes the key directory's lock
    anyway, and the only client is the front.

    Args:
        keydir: the key-service directory.
        address: a unix socket path (default ``KEYDIR/keyservice.sock``,
            mode 0600) or a loopback ``host:port``.
        ready: called with the address once it listens.
        stop: polled about once a second; True ends the loop.

    Raises:
        StateError: another key service runs on KEYDIR.
        NetworkError: the address is taken.
    """
    host = KeyServiceHost(keydir)
    address = address or os.path.join(host.state.dir, DEFAULT_SOCKET)
    lock_fd = os.open(host.state.path(".serve.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StateError(f"another key service is running on {keydir}") from None
        family, where = keylink.parse_address(address)
        if family == "unix":
            assert isinstance(where, str)
            keylink.remove_stale_socket(where)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            old = os.umask(0o177)
            try:
                sock.bind(where)
            finally:
                os.umask(old)
        else:
            assert isinstance(where, tuple)
            sock = socket.socket(socket.AF_INET6 if ":" in where[0] else socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(where)
            except OSError as exc:
                sock.close()
                raise NetworkError(f"cannot listen on {address}: {exc.strerror or exc}") from None
        sock.listen(16)
        sock.settimeout(1.0)
        log.info("key service of %s listening on %s", host.state.config.name, address)
        # Off the request loop: a blind answer arriving meanwhile builds or loads on its own (the store publishes once).
        threading.Thread(target=_warm_blind, args=(host,), name="pprm-blind-warm", daemon=True).start()
        if ready is not None:
            ready(address)
        try:
            while not (stop is not None and stop()):
                try:
                    conn, _ = sock.accept()
                except TimeoutError:
                    continue
                with conn:
                    conn.settimeout(keylink.IO_TIMEOUT)
                    try:
                        frame = keylink.recv_frame(conn)
                        keylink.send_frame(conn, host.handle(frame))
                    except (NetworkError, MessageError, OSError) as exc:
                        log.info("connection dropped: %s", exc)
        finally:
            sock.close()
            if family == "unix":
                assert isinstance(where, str)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(where)
    finally:
        os.close(lock_fd)
