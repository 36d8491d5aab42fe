"""A state service's intake queue and the replies it made, on disk.

A delivery is written to ``net/inbox/`` (temp file, fsync, rename) before the
service says 202, so an accepted query survives a crash or a restart and is
answered when the service comes back. The reply (answer or refusal) goes to
``net/served/`` through the responder's ``sink``, which runs before the query
is marked used and logged; only then is the inbox file removed. A crash at
any point leaves either the delivery (answered again at the next start; the
replay cache turns a second answer into an error record) or the reply.

Files are keyed by sender and query id: ids are chosen by requesters, so two
states could pick the same one, and neither may reach the other's reply.

Replies are signed and boxed to the requester; keeping them readable by
whoever knows the id leaks their size and timing, nothing more.

The inbox is shared by every peer, so no peer may fill it: :func:`share_of`
is how many waiting deliveries one peer may hold (the service counts them
and refuses the one beyond, see :mod:`pprm.net.service`).
"""

from __future__ import annotations

import contextlib
import os
import time

from pprm._fs import atomic_write_bytes, atomic_write_json, read_json
from pprm.errors import MessageError, StateError
from pprm.net.wire import QUERY_ID, STATE_CODE

__all__ = ["Inbox", "Failure", "MIN_SHARE", "share_of"]

# Replies are kept this long after they were made: answers expire with their
# tokens (token_ttl, default 7 days), so a later download serves no one.
KEEP_SECONDS = 8 * 24 * 3600

# The fewest waiting deliveries a peer may hold however long the roster is:
# `pprm ask` sends one delivery per peer per probe, and an investigation sends
# a few probes at once (several photos, several suspects). With the service's
# 256 entries the floor binds only beyond 32 peers; a Prüm state has 26.
MIN_SHARE = 8


def share_of(capacity: int, peers: int) -> int:
    """How many waiting deliveries one peer may hold in an inbox of ``capacity`` entries.

    The rule is ``max(MIN_SHARE, capacity // peers)``: an equal split of the
    inbox among the trusted peers, with a floor for long rosters; and, once
    there is more than one peer, never more than half the inbox, so a small
    inbox where the floor would give one peer everything still keeps room
    for the others.

    Warning:
        An equal split is what keeps one peer from locking the others out:
        the shares add up to at most ``capacity``, so however many
        deliveries one peer (or every peer but one) sends, the others' shares
        are still free for them. Only when ``peers * MIN_SHARE`` exceeds the
        capacity can the inbox fill before every peer reaches its share; the
        service then answers 503 ``busy`` as it did before shares. A peer's
        share costs it no throughput: the worker answers one delivery at a
        time whatever the queue holds, so a peer that keeps its share full
        loses nothing while it is alone, and the others wait behind at most
        its share, not behind everything it can send.

    Args:
        capacity: entries the inbox holds in all (at least 1).
        peers: trusted peers in the roster (0 counts as 1).

    Returns:
        The per-peer share, between 1 and ``capacity``.
    """
    share = max(MIN_SHARE, capacity // max(1, peers))
    if peers > 1:
        share = min(share, capacity // 2)
    return max(1, min(capacity, share))


class Failure(tuple[int, str, str]):
    """``(HTTP status, code, message)`` recorded for a delivery that failed."""

    __slots__ = ()

    @property
    def status(self) -> int:
        return self[0]

    @property
    def code(self) -> str:
        return self[1]

    @property
    def message(self) -> str:
        return self[2]


def _key(sender: str, query_id: str) -> str:
    if not STATE_CODE.fullmatch(sender) or not QUERY_ID.fullmatch(query_id):
        raise MessageError("malformed state code or query id")
    return f"{sender}.{query_id}"


class Inbox:
    """Deliveries waiting for an answer, and the replies made.

    Args:
        state_dir: the state directory; files live under ``net/``.
    """

    def __init__(self, state_dir: str) -> None:
        self._in = os.path.join(state_dir, "net", "inbox")
        self._out = os.path.join(state_dir, "net", "served")
        for d in (self._in, self._out):
            os.makedirs(d, mode=0o700, exist_ok=True)

    def __repr__(self) -> str:
        return f"Inbox({os.path.dirname(self._in)!r})"

    def _delivery(self, key: str) -> str:
        return os.path.join(self._in, key + ".delivery")

    def _reply(self, key: str) -> str:
        return os.path.join(self._out, key + ".msg")

    def _failure(self, key: str) -> str:
        return os.path.join(self._out, key + ".error.json")

    def known(self, sender: str, query_id: str) -> bool:
        """Whether this delivery was accepted before (pending, answered or failed)."""
        key = _key(sender, query_id)
        return any(os.path.exists(p) for p in (self._delivery(key), self._reply(key), self._failure(key)))

    def accept(self, sender: str, query_id: str, delivery: bytes) -> None:
        """Store a delivery durably (caller checked :meth:`known` under its own lock)."""
        atomic_write_bytes(self._delivery(_key(sender, query_id)), delivery)

    def pending(self) -> list[tuple[str, str]]:
        """``(sender, query_id)`` of stored deliveries without a reply, oldest first."""
        entries = []
        for name in os.listdir(self._in):
            if not name.endswith(".delivery") or name.startswith("."):
                continue
            key = name[: -len(".delivery")]
            sender, _, qid = key.partition(".")
            path = os.path.join(self._in, name)
            with contextlib.suppress(FileNotFoundError):
                entries.append((os.stat(path).st_mtime_ns, sender, qid))
        return [(s, q) for _, s, q in sorted(entries)]

    def load(self, sender: str, query_id: str) -> bytes:
        """The stored delivery's bytes."""
        with open(self._delivery(_key(sender, query_id)), "rb") as fh:
            return fh.read()

    def is_pending(self, sender: str, query_id: str) -> bool:
        """Whether the delivery is stored and not answered yet."""
        return os.path.exists(self._delivery(_key(sender, query_id)))

    def write_reply(self, sender: str, query_id: str, message: bytes) -> None:
        """Store the signed reply (the responder's sink: before the query is logged)."""
        atomic_write_bytes(self._reply(_key(sender, query_id)), message)

    def write_failure(self, sender: str, query_id: str, failure: Failure) -> None:
        """Record why a stored delivery could not be answered."""
        atomic_write_json(self._failure(_key(sender, query_id)),
                          {"status": failure.status, "code": failure.code, "message": failure.message})

    def done(self, sender: str, query_id: str) -> None:
        """Drop the delivery once its reply or failure is stored."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._delivery(_key(sender, query_id)))

    def reply(self, sender: str, query_id: str) -> bytes | None:
        """The stored reply, or None."""
        try:
            with open(self._reply(_key(sender, query_id)), "rb") as fh:
                return fh.read()
        except FileNotFoundError:
            return None

    def failure(self, sender: str, query_id: str) -> Failure | None:
        """The stored failure, or None."""
        path = self._failure(_key(sender, query_id))
        try:
            data = read_json(path)
        except FileNotFoundError:
            return None
        except (ValueError, OSError):
            raise StateError(f"{os.path.basename(path)} is corrupt") from None
        return Failure((int(data["status"]), str(data["code"]), str(data["message"])))

    def prune(self, now: float | None = None, keep: float = KEEP_SECONDS, temps: bool = False) -> int:
        """Delete replies and failures older than ``keep`` seconds.

        Args:
            now: clock override for tests.
            keep: age in seconds past which a reply is deleted.
            temps: also delete temp files, which only a process killed
                mid-write leaves; only safe while nothing else writes here.

        Returns:
            How many files were removed.
        """
        t = time.time() if now is None else now
        removed = 0
        for d in (self._out, self._in):
            for name in os.listdir(d):
                path = os.path.join(d, name)
                # Temp files are left only by a process killed mid-write.
                stale_tmp = temps and name.startswith(".tmp-")
                try:
                    old = os.stat(path).st_mtime + keep < t
                except FileNotFoundError:
                    continue
                if stale_tmp or (d == self._out and old and not name.startswith(".")):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
                        removed += 1
        return removed

