"""A split state's front talking to its key service (:mod:`pprm.node.keyservice_host`).

:class:`RemoteKeyService` offers the front what it needs of the secret keys:
release a query's tokens from its masked answer, commit the answer, resolve
a follow-up, enrol, remove. Each call is one signed, boxed request over the
link (:mod:`pprm.node.keylink`), checked on both ends against the keys pinned
at split time. A refusal comes back as the same typed error the key service
raised (a replay as :class:`~pprm.errors.ReplayError`, and so on).

:func:`key_service_for` gives whichever the state needs: the in-process
:class:`~pprm.node.keyservice.KeyService` for a self-contained directory, a
:class:`RemoteKeyService` for a split one.
"""

from __future__ import annotations

import atexit
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from pprm import errors
from pprm.errors import KeyServiceUnavailableError, MessageError, NetworkError, NotAHitError, PprmError, StateError
from pprm.matching.sealed import MaskedResult
from pprm.matching.templates import reference_list
from pprm.node import keylink
from pprm.node.blind_store import Prepared
from pprm.node.keyservice import KeyService, Resolution
from pprm.node.split import FrontPin, front_pin
from pprm.node.state import State
from pprm.protocol.envelope import Header, seal_envelope
from pprm.protocol.messages import RefusalBody

__all__ = ["RemoteKeyService", "key_service_for", "remote_key_service", "Released"]

log = logging.getLogger("pprm.keyservice")

Progress = Callable[[int, int], None]

# The errors a key service may name, rebuilt here with their message.
_SIMPLE = {cls.__name__: cls for cls in (
    errors.ParameterError, errors.TemplateError, errors.CiphertextError, errors.StateError, errors.GalleryError,
    errors.UnknownPeerError, errors.MessageError, errors.AuthenticationError, errors.RecipientError,
    errors.ReplayError, errors.ExpiredError, errors.KeyRotationError, errors.TokenError, errors.PolicyError,
    errors.BackendError)}


class Released(tuple[tuple[str, ...], int, bool]):
    """``(tokens, hits, repeat)`` of a release; ``repeat`` when the key service had released it before."""

    @property
    def tokens(self) -> tuple[str, ...]:
        return self[0]

    @property
    def hits(self) -> int:
        return self[1]

    @property
    def repeat(self) -> bool:
        return self[2]


class RemoteKeyService:
    """The key service of a split state, seen from its front.

    Args:
        state: the front's state directory (split).
        address: where the key service listens (default: the address
            recorded at split time).

    Raises:
        StateError: the directory is not split.
    """

    def __init__(self, state: State, address: str | None = None) -> None:
        pin = front_pin(state.dir)
        if pin is None:
            raise StateError(f"{state.config.name} is not split: it has no key service to call")
        self.state = state
        self.pin: FrontPin = pin
        self.address = address or pin.address
        keylink.parse_address(self.address)
        self._commits: queue.Queue[tuple[str, str, str]] = queue.Queue()
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"RemoteKeyService({self.state.config.name}, {self.address!r})"

    def call(self, op: str, meta: dict[str, object] | None = None, blobs: Sequence[bytes] = ()) -> keylink.Payload:
        """One request, one response.

        Returns:
            The response payload (``op == "ok"``).

        Raises:
            KeyServiceUnavailableError: the key service cannot be reached or hung up.
            AuthenticationError: the response is not signed by the pinned key service.
            MessageError: the response does not answer this request.
            PprmError subclasses: the key service refused the request.
        """
        ident = self.state.identity()
        req = keylink.Payload(op, keylink.new_nonce(), int(time.time()), dict(meta or {}), tuple(blobs))
        frame = keylink.seal_frame(keylink.REQUEST, req, ident, self.pin.keyservice)
        try:
            sock = keylink.connect(self.address)
            try:
                try:
                    keylink.send_frame(sock, frame)
                except OSError as exc:
                    raise NetworkError(f"it hung up: {exc.strerror or exc}") from None
                reply = keylink.recv_frame(sock)
            finally:
                sock.close()
        except NetworkError as exc:
            raise KeyServiceUnavailableError(f"key service at {self.address}: {exc}") from None
        resp = keylink.open_frame(reply, keylink.RESPONSE, ident, self.pin.keyservice)
        if resp.nonce != req.nonce:
            raise MessageError("the key service's response answers another request")
        if resp.op == "error":
            raise _rebuild(resp.meta)
        if resp.op != "ok":
            raise MessageError("the key service's response is malformed")
        return resp

    def hello(self) -> dict[str, object]:
        """The key service's state code, CKKS key id and gallery version."""
        return dict(self.call("hello").meta)

    def release(self, query: bytes, result: MaskedResult) -> Released:
        """Have the key service verify ``query`` and decide its masked answer.

        Args:
            query: the signed query bytes, as the requester sent them.
            result: the matcher's masked result on the current gallery.

        Returns:
            The tokens (at most ``k``), the number of hits, and whether the
            key service had released them before (the front crashed before
            committing).

        Raises:
            As :meth:`call`: ReplayError, PolicyError, GalleryError,
            CiphertextError, MessageError from the key service.
        """
        meta = {"blocks": list(result.blocks), "scale": result.scale}
        resp = self.call("release", meta, (query, *result.ciphertexts))
        try:
            tokens = tuple(str(t) for t in resp.meta["tokens"])
            return Released((tokens, int(resp.meta["hits"]), bool(resp.meta["repeat"])))
        except (KeyError, TypeError, ValueError):
            raise MessageError("the key service's release is malformed") from None

    def blind_answer(self, query: bytes, announcements: Sequence[bytes]) -> tuple[tuple[bytes, ...], dict[str, Any]]:
        """Have the key service verify and answer a blind-profile query (it holds the blind database).

        Args:
            query: the signed blind query, as the requester sent it.
            announcements: key announcements delivered with it.

        Returns:
            The answer's ciphertexts (under the requester's key) and the
            key service's note of them (``gallery_size``, ``repeat``).

        Raises:
            As :meth:`call`.
        """
        resp = self.call("blind_answer", {}, (query, *announcements))
        return resp.blobs, dict(resp.meta)

    def accept_keys(self, announcement: bytes) -> str:
        """Have the key service verify and keep a blind-profile key announcement.

        Returns:
            The key id.
        """
        return str(self.call("accept_keys", {}, (announcement,)).meta["key_id"])

    def commit(self, peer: str, query_id: str, answer_id: str) -> None:
        """Tell the key service the answer to a released query was handed over (and wait for it)."""
        self.call("commit", {"peer": peer, "query_id": query_id, "answer_id": answer_id})

    def commit_later(self, peer: str, query_id: str, answer_id: str) -> None:
        """As :meth:`commit`, off the answering path: a background thread sends it.

        Nothing depends on when the confirmation arrives: until it does, the
        key service would answer a repeat of the query with what it kept
        (the same tokens, nothing decrypted), and this front refuses the
        repeat as a replay anyway. A confirmation that never arrives (the
        process ends first, the key service is down) leaves the kept tokens
        until the query expires. :meth:`flush` waits for those queued.
        """
        with self._lock:
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._send_commits, name="pprm-keyservice-commit",
                                                daemon=True)
                self._worker.start()
                atexit.register(self.flush)
        self._commits.put((peer, query_id, answer_id))

    def flush(self, timeout: float = 10.0) -> None:
        """Wait (up to ``timeout`` seconds) until every queued confirmation was sent or given up."""
        deadline = time.monotonic() + timeout
        while self._commits.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.005)

    def _send_commits(self) -> None:
        while True:
            peer, query_id, answer_id = self._commits.get()
            try:
                self.commit(peer, query_id, answer_id)
            except PprmError as exc:
                log.warning("key service did not take the confirmation of %s: %s", query_id, exc)
            finally:
                self._commits.task_done()

    def enroll(self, templates: np.ndarray, references: Sequence[str],
               progress: Progress | None = None) -> list[int]:
        """Enrol templates through the key service (it encrypts and writes the gallery).

        Args:
            templates: ``float[n, dim]``.
            references: one per template.
            progress: called once, when the key service has finished.

        Returns:
            The new record ids.

        Raises:
            TemplateError: bad templates or references (nothing is stored).
        """
        refs = reference_list(references)  # never str(): b"x" is not the reference "b'x'"
        arr = np.ascontiguousarray(np.asarray(templates, dtype="<f4"))
        if arr.ndim != 2:
            raise errors.TemplateError("templates must be a 2-d array")
        resp = self.call("enroll", {"references": refs, "shape": list(arr.shape)}, (arr.tobytes(),))
        if progress is not None:
            progress(len(refs), len(refs))
        return [int(i) for i in resp.meta["ids"]]

    def remove(self, reference: str) -> None:
        """Remove one record through the key service (it re-encrypts the block).

        Args:
            reference: an enrolled reference.

        Raises:
            TemplateError: ``reference`` is not a string (nothing is sent).
            GalleryError: it is not enrolled; nothing changes.
            As :meth:`call`.
        """
        if not isinstance(reference, str):
            raise errors.TemplateError(f"the reference is {type(reference).__name__}, not str; nothing was removed")
        self.call("remove", {"reference": reference})

    def remove_many(self, references: Sequence[str], progress: Progress | None = None) -> int:
        """Remove several records through the key service, all or nothing (:meth:`KeyService.remove_many`).

        Args:
            references: enrolled references, each at most once.
            progress: called once, when the key service has finished.

        Returns:
            How many records were removed.

        Raises:
            GalleryError: a reference is not enrolled or listed twice; nothing changes.
            As :meth:`call`.
        """
        refs = reference_list(references)
        if not refs:
            return 0
        resp = self.call("remove_many", {"references": refs})
        try:
            removed = int(resp.meta["removed"])
        except (KeyError, TypeError, ValueError):
            raise MessageError("the key service's removal report is malformed") from None
        if progress is not None:
            progress(len(refs), len(refs))
        return removed

    def prepare(self, progress: Progress | None = None) -> Prepared:
        """Have the key service build (or refresh) the blind database now; it holds it in memory after.

        A no-op when the database of the current gallery version is there
        already. The key service answers nothing else while it builds (one
        request at a time).

        Args:
            progress: called twice: ``(0, templates)`` before the request
                (the gallery size as this front reads it) and ``(templates,
                templates)`` once the key service has finished; the link
                carries no progress in between.

        Returns:
            What the key service found or built.

        Raises:
            As :meth:`call`; MessageError: a malformed report.
        """
        if progress is not None:
            progress(0, len(self.state.gallery()))
        meta = self.call("prepare").meta
        try:
            done = Prepared(str(meta["version"]), int(meta["templates"]), int(meta["blocks"]), bool(meta["built"]),
                            float(meta["seconds"]))
        except (KeyError, TypeError, ValueError):
            raise MessageError("the key service's report on the blind database is malformed") from None
        if progress is not None:
            progress(done.templates, done.templates)
        return done

    def resolve(self, blob: bytes, now: float | None = None, *,
                sink: Callable[[bytes], None] | None = None) -> Resolution:
        """Resolve a follow-up at the key service; log it here too.

        Args:
            blob: the signed follow-up.
            now: ignored (the key service uses its own clock); kept so that
                both key services share one signature.
            sink: receives the signed refusal of a blind follow-up that is not a hit.

        Returns:
            The resolution.

        Raises:
            NotAHitError: as :meth:`KeyService.resolve`; the refusal is signed here.
            As :meth:`KeyService.resolve` otherwise.
        """
        st = self.state
        resp = self.call("resolve", {}, (blob,))
        miss = resp.meta.get("not_a_hit")
        if isinstance(miss, dict):
            msg = self._refusal(blob, miss)
            if sink is not None:
                sink(msg)
            with st.lock():
                st.audit.append("refuse_followup", peer=miss["peer"], query_id=miss["query_id"],
                                followup_id=miss["followup_id"], refusal_id=miss["refusal_id"], reason="not-a-hit",
                                profile="blind")
            raise NotAHitError(str(miss["message"]), peer=str(miss["peer"]), query_id=str(miss["query_id"]),
                               followup_id=str(miss["followup_id"]), refusal=msg, refusal_id=str(miss["refusal_id"]))
        try:
            res = Resolution(str(resp.meta["reference"]), str(resp.meta["requester"]), str(resp.meta["query_id"]),
                             str(resp.meta["followup_id"]))
        except KeyError:
            raise MessageError("the key service's resolution is malformed") from None
        with st.lock():
            st.audit.append("resolve", peer=res.requester, query_id=res.query_id, followup_id=res.followup_id,
                            reference=res.reference)
        return res

    def _refusal(self, followup: bytes, miss: dict[str, object]) -> bytes:
        """The signed refusal of a blind follow-up the key service found not a hit."""
        st = self.state
        requester = st.peer(str(miss["peer"]))
        t = int(time.time())
        body = RefusalBody(str(miss["query_id"]), "not-a-hit", "the follow-up's probe does not clear the threshold "
                           "against the record behind this candidate", followup_id=str(miss["followup_id"]))
        header = Header("refusal", st.config.name, requester.name, str(miss["refusal_id"]), t,
                        t + st.config.token_ttl, st.blind_ctx.params.digest, "blind", str(miss["followup_id"]))
        ident = st.identity()
        return seal_envelope(ident, header, ident.box_to(requester.identity, body.to_bytes()))


def _rebuild(meta: dict[str, object]) -> PprmError:
    code = str(meta.get("code", ""))
    message = str(meta.get("message", "the key service refused the request"))[:1000]
    if code == "RefusedError":
        return errors.RefusedError(message, peer=str(meta.get("peer", "")), query_id=str(meta.get("query_id", "")),
                                   reason=str(meta.get("reason", "")))
    cls = _SIMPLE.get(code)
    if cls is None:
        return errors.PprmError(f"key service: {message}")
    return cls(message)


def remote_key_service(state: State, address: str | None = None) -> RemoteKeyService | None:
    """A split state's key service, or None for a self-contained state.

    Raises:
        StateError: an address for a state that is not split.
    """
    if front_pin(state.dir) is not None:
        return RemoteKeyService(state, address)
    if address is not None:
        raise StateError(f"{state.config.name} is not split; it needs no --key-service")
    return None


def key_service_for(state: State, address: str | None = None) -> KeyService | RemoteKeyService:
    """The key service of a state: in this process, or its own process for a split state.

    Args:
        state: the state.
        address: a split state's key-service address (default: recorded at split).

    Returns:
        A :class:`KeyService` or a :class:`RemoteKeyService`; both offer
        ``enroll``, ``remove``, ``remove_many`` and ``resolve`` with one signature.

    Raises:
        StateError: an address for a state that is not split.
        PolicyTamperedError: ``state.json`` holds a policy its audit log does not cover.
    """
    # k and the token lifetime bound what a resolution releases: only the audited policy.
    state.check_policy()
    if front_pin(state.dir) is not None:
        return RemoteKeyService(state, address)
    if address is not None:
        raise StateError(f"{state.config.name} is not split; it needs no --key-service")
    return KeyService(state)
