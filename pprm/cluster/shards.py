"""A set of shard actors, one per worker, and the two things done with them.

*Sync* makes every worker hold exactly the blocks placement gives it, in the
wanted version, moving only what changed. *Fan-out* sends a query to one
live owner per block and, when a worker is lost, retries its blocks on the
next owner; a block with no live owner left fails the whole call with
:class:`ClusterError`, so a result never silently misses part of the gallery.

Both profiles' coordinators (:mod:`pprm.cluster.sealed`,
:mod:`pprm.cluster.blind`) are built on this; they differ only in the shard
class, in what a block's payload is, and in what a query sends.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from pprm.cluster.blind_shard import BlindShardSpec
from pprm.cluster.connect import ClusterHandle
from pprm.cluster.placement import plan
from pprm.cluster.sealed_shard import SealedShardSpec
from pprm.errors import ClusterError, ParameterError

__all__ = ["ShardSet", "ShardSpec", "QUERY_TIMEOUT"]

Progress = Callable[[int, int], None]
# Seconds a worker may take for its part of one call before it counts as lost.
# A worker's part at 1M sealed templates on one core is about 1 s, a blind
# block about 0.1 s; 300 s also covers sending a 200 MB blind block. It is a
# backstop against a hung process: a dead one fails at once.
QUERY_TIMEOUT = 300.0
# Actor handles and futures come from distributed, which ships no type
# information: they are Any below, and so are the per-block results a shard
# method returns through them (each coordinator knows its own).
ShardSpec = SealedShardSpec | BlindShardSpec


class ShardSet:
    """Shard actors of one gallery on the workers of a cluster.

    Args:
        cluster: the connection.
        shard_class: the actor class (built on each worker with ``spec``).
        spec: public, picklable construction data for the shards.
        salt: placement salt (the gallery's key id).
        replicas: copies of each block.
        timeout: seconds per call on a worker.

    Raises:
        ParameterError: replicas < 1.
    """

    def __init__(self, cluster: ClusterHandle, shard_class: type, spec: ShardSpec, salt: str, *, replicas: int = 1,
                 timeout: float = QUERY_TIMEOUT) -> None:
        if replicas < 1:
            raise ParameterError("replicas must be at least 1")
        self.cluster = cluster
        self.shard_class = shard_class
        self.spec = spec
        self.salt = salt
        self.replicas = replicas
        self.timeout = timeout
        self.actors: dict[str, tuple[str, Any]] = {}  # worker name -> (address, actor)
        self.held: dict[str, dict[int, str]] = {}  # worker name -> block -> version tag
        self.plan: dict[int, list[str]] = {}
        self.last_sync: dict[str, int] = {}

    def call(self, worker: str, method: str, *args: Any) -> Any:
        """Start ``method(*args)`` on a worker's shard; returns its future.

        Every payload that reaches a worker goes through here.
        """
        _addr, actor = self.actors[worker]
        return getattr(actor, method)(*args)

    def wait(self, fut: Any, worker: str, what: str) -> Any:
        """A call's result; a lost worker is forgotten and raises ClusterError."""
        try:
            return fut.result(timeout=self.timeout)
        except ClusterError:
            raise
        except Exception as exc:  # a lost worker surfaces as OSError, RuntimeError, CommClosedError...
            self.forget(worker)
            raise ClusterError(f"worker {worker} was lost during {what} ({type(exc).__name__})") from None

    def forget(self, worker: str) -> None:
        """Drop a worker's actor and what it was known to hold."""
        self.actors.pop(worker, None)
        self.held.pop(worker, None)

    def refresh(self) -> None:
        """Match the actors to the live workers: new workers get a shard, restarted ones a fresh one."""
        live = self.cluster.workers()
        for name in list(self.actors):
            if name not in live or live[name] != self.actors[name][0]:
                self.forget(name)  # gone, or restarted (empty) at a new address
        for name, addr in live.items():
            if name not in self.actors:
                fut = self.cluster.client.submit(self.shard_class, self.spec, actor=True, workers=[addr],
                                                 allow_other_workers=False, pure=False)
                try:
                    self.actors[name] = (addr, fut.result(timeout=self.timeout))
                except Exception as exc:
                    raise ClusterError(f"cannot start a shard on worker {name} ({type(exc).__name__})") from None
                self.held[name] = {}
        if not self.actors:
            raise ClusterError("the cluster has no workers")

    def sync(self, versions: list[str], payload: Callable[[int], tuple[Any, ...]]) -> dict[str, int]:
        """Make each worker hold its blocks in the given versions.

        Args:
            versions: per block position, a tag naming its content (a block
                file name, a database version).
            payload: block position -> extra arguments of the shard's ``store``.

        Returns:
            ``{"sent", "dropped", "workers"}``.

        Raises:
            ClusterError: a worker was lost while receiving blocks; the next
                sync starts over from what each live worker holds.
        """
        self.refresh()
        self.plan = plan(len(versions), sorted(self.actors), self.replicas, self.salt)
        sent = dropped = 0
        for name in sorted(self.actors):
            held = self.held[name]
            want = {b: versions[b] for b, owners in self.plan.items() if name in owners}
            stale = [b for b, v in held.items() if want.get(b) != v]
            if stale:
                self.wait(self.call(name, "drop", stale), name, "a gallery sync")
                for b in stale:
                    held.pop(b)
                dropped += len(stale)
            for b, v in sorted(want.items()):
                if held.get(b) == v:
                    continue
                self.wait(self.call(name, "store", b, v, *payload(b)), name, "a gallery sync")
                held[b] = v
                sent += 1
        self.last_sync = {"sent": sent, "dropped": dropped, "workers": len(self.actors)}
        return self.last_sync

    def fan_out(self, versions: list[str], method: str, args: tuple[Any, ...],
                progress: Progress | None = None) -> dict[int, Any]:
        """Run ``method(wanted, *args)`` on one live owner per block; results per block.

        ``wanted`` is the worker's list of ``(block, version)``: a shard refuses
        a block it does not hold in that version rather than use a stale one.

        Raises:
            ClusterError: a block has no live owner left.
        """
        results: dict[int, Any] = {}
        tried: dict[int, set[str]] = {b: set() for b in range(len(versions))}
        todo = set(range(len(versions)))
        while todo:
            assignment: dict[str, list[int]] = {}
            for b in sorted(todo):
                live = [o for o in self.plan.get(b, []) if o in self.actors and o not in tried[b]]
                if not live:
                    raise ClusterError(f"block {b} has no live worker left (replicas={self.replicas}); the query "
                                       "is not answered")
                assignment.setdefault(live[0], []).append(b)
            futures = {name: self.call(name, method, [(b, versions[b]) for b in bs], *args)
                       for name, bs in assignment.items()}
            deadline = time.monotonic() + self.timeout
            for name, fut in futures.items():
                for b in assignment[name]:
                    tried[b].add(name)
                try:
                    part = fut.result(timeout=max(0.0, deadline - time.monotonic()))
                except ClusterError:
                    raise
                except Exception:  # lost or hung: its blocks go to the next owner in the next round
                    self.forget(name)
                    continue
                for b, res in zip(assignment[name], part, strict=True):
                    results[b] = res
                    todo.discard(b)
                if progress:
                    progress(len(results), len(versions))
        return results

    def describe(self) -> dict[str, dict[str, Any]]:
        """Per worker: what its shard reports."""
        return {name: self.wait(self.call(name, "describe"), name, "describe") for name in sorted(self.actors)}
