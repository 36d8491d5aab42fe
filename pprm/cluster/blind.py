"""The blind-profile matcher, sharded over a Dask cluster.

The owner's node builds (or loads) the blind database as in one process
(:meth:`pprm.node.blind_store.BlindStore.database`) and
:meth:`ShardedBlindMatcher.sync` sends each block's diagonals and slot signs
to its owners. A query sends the requester's probe and keys to every worker
that owns a block; each computes its blocks' answer ciphertexts (fresh masks
and flood per block, as in one process) and the coordinator puts them in a
fresh secret block order. The result is a :class:`~pprm.matching.blind.BlindAnswer`
exactly like :class:`~pprm.matching.blind.BlindMatcher`'s.

Warning:
    The diagonals are the gallery in pre-encoded plaintext. Unlike sealed
    shards, blind shards must stay on machines inside the owner's trusted
    cluster. Shards hold blocks by database version, so after a gallery change
    the whole blind database travels again, its unchanged blocks too (only the
    changed ones have a fresh secret layout; see :mod:`pprm.node.blind_store`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from pprm.cluster.blind_shard import BlindShard, BlindShardSpec
from pprm.cluster.connect import ClusterHandle
from pprm.cluster.shards import QUERY_TIMEOUT, ShardSet
from pprm.errors import ClusterError, ParameterError
from pprm.matching.blind import BlindAnswer, BlindRequest
from pprm.matching.diagonals import BlindDatabase, secret_permutation

__all__ = ["ShardedBlindMatcher"]

Progress = Callable[[int, int], None]


class ShardedBlindMatcher:
    """A blind database held by the workers of a Dask cluster.

    Args:
        cluster: the connection.
        spec: the blind parameter set.
        salt: placement salt (e.g. the state's key id).
        replicas: copies of each block.
        timeout: seconds a worker may take for its part of one call.
    """

    def __init__(self, cluster: ClusterHandle, spec: BlindShardSpec, salt: str, *, replicas: int = 1,
                 timeout: float = QUERY_TIMEOUT) -> None:
        self.spec = spec
        self.shards = ShardSet(cluster, BlindShard, spec, salt, replicas=replicas, timeout=timeout)
        self._versions: list[str] | None = None

    def __repr__(self) -> str:
        return f"ShardedBlindMatcher({self.spec.params}, {len(self.shards.actors)} workers)"

    def sync(self, database: BlindDatabase, version: str) -> dict[str, int]:
        """Make the workers hold ``database`` (the blind database of gallery ``version``).

        Returns:
            ``{"sent", "dropped", "workers"}``.

        Raises:
            ParameterError: a database of another parameter set.
            ClusterError: a worker was lost while receiving blocks.
        """
        if database.params_name != self.spec.params:
            raise ParameterError("the blind database was built for another parameter set")
        versions = [version] * database.blocks

        def payload(b: int) -> tuple[np.ndarray, np.ndarray]:
            return np.ascontiguousarray(database.diagonals[b]), database.signs[b]

        report = self.shards.sync(versions, payload)
        self._versions = versions
        return report

    def answer_blind(self, request: BlindRequest, tau: float, progress: Progress | None = None) -> BlindAnswer:
        """Evaluate one blind query over the shards (the :class:`~pprm.matching.protocols.BlindMatching` interface).

        Args:
            request: the probe (parsed by whoever built the request, so a
                malformed one never reaches a worker, where its error would
                look like a lost worker) and the requester's announced keys;
                the workers get the bytes and parse both again.
            tau: the threshold.
            progress: called with ``(blocks done, total)``.

        Returns:
            The answer, blocks in a fresh random order.

        Raises:
            ClusterError: no sync yet, or blocks lost with no live owner left.

        Warning:
            The block order is drawn here from the CSPRNG, per query, and kept
            only in the returned answer (the node records it for step two).
        """
        if self._versions is None:
            raise ClusterError("the sharded blind database was never synced")
        keys = request.keys
        results = self.shards.fan_out(self._versions, "answer", (request.probe, keys.key_id, keys.public, keys.galois,
                                                                 keys.relin, tau), progress)
        order = [int(i) for i in secret_permutation(len(self._versions))]
        return BlindAnswer([results[b] for b in order], order)

    def describe(self) -> dict[str, dict[str, Any]]:
        """Per worker: what its shard reports (pid, blocks, bytes, files, secret objects; JSON-like values)."""
        return self.shards.describe()
