"""The sealed matcher, sharded over a Dask cluster.

:class:`ShardedMatcher` has the interface of
:class:`pprm.matching.sealed.SealedMatcher`
(:class:`~pprm.matching.protocols.SealedMatching`: ``match(probe, threshold)``
-> :class:`~pprm.matching.sealed.MaskedResult`), so the key service decrypts its
results exactly as a single process's: same block order, same ciphertexts
per block, same decisions.

Placement is rendezvous hashing (:mod:`pprm.cluster.placement`) of block
positions over worker names, with ``replicas`` copies of each block.
:meth:`ShardedMatcher.sync` makes the workers hold the current gallery
version: after an enrolment or a removal only the changed blocks travel,
each to its owners; after a worker joins or leaves only the blocks whose
owners changed travel. A query fans out to one live owner per block; if a
worker is lost mid-query its blocks are retried on another owner, and if a
block has no live owner left the query fails with :class:`ClusterError`:
never an answer computed on part of the gallery.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

from pprm.cluster.connect import ClusterHandle
from pprm.cluster.sealed_shard import SealedShard, SealedShardSpec
from pprm.cluster.shards import QUERY_TIMEOUT, ShardSet
from pprm.crypto import params as param_sets
from pprm.errors import ClusterError, ParameterError
from pprm.matching.gallery import EncryptedGallery
from pprm.matching.sealed import MaskedResult, quantise_probe
from pprm.matching.templates import normalise_probe

__all__ = ["ShardedMatcher"]

Progress = Callable[[int, int], None]


class ShardedMatcher:
    """A sealed gallery held by the workers of a Dask cluster.

    Args:
        cluster: the connection (:func:`pprm.cluster.connect.connect`).
        spec: public material (a state gives it with
            :meth:`pprm.node.state.State.sealed_shard_spec`, the conjugation
            key checked against its key id).
        replicas: copies of each block (1: a lost worker fails queries until
            the next sync; 2: queries go on).
        timeout: seconds a worker may take for its part of one call.
        salt: placement salt (default the gallery's CKKS key id).

    Raises:
        ParameterError: replicas < 1.
    """

    def __init__(self, cluster: ClusterHandle, spec: SealedShardSpec, *, replicas: int = 1,
                 timeout: float = QUERY_TIMEOUT, salt: str | None = None) -> None:
        self.spec = spec
        self.shards = ShardSet(cluster, SealedShard, spec, spec.key_id if salt is None else salt,
                               replicas=replicas, timeout=timeout)
        self._params = param_sets.get(spec.params, allow_insecure=spec.allow_insecure)
        self._gallery: EncryptedGallery | None = None

    def __repr__(self) -> str:
        return f"ShardedMatcher({self.spec.params}, {len(self.shards.actors)} workers, replicas={self.shards.replicas})"

    @property
    def cluster(self) -> ClusterHandle:
        """The cluster connection."""
        return self.shards.cluster

    def sync(self, gallery: EncryptedGallery) -> dict[str, int]:
        """Make the workers hold ``gallery``'s current version, moving as little as possible.

        A block's version is its file name: every commit writes changed blocks
        to new files, so after an enrolment or removal only those travel.

        Returns:
            ``{"sent": blocks sent, "dropped": copies dropped, "workers": n}``.

        Raises:
            ParameterError: a gallery of another parameter set or key.
            ClusterError: a worker was lost while receiving blocks.
        """
        if gallery.params.name != self.spec.params or gallery.key_id != self.spec.key_id:
            raise ParameterError("this gallery belongs to another parameter set or CKKS key")
        blocks = gallery.index.blocks

        def payload(b: int) -> tuple[bytes, np.ndarray]:
            with open(os.path.join(gallery.directory, "blocks", blocks[b].file), "rb") as fh:
                return fh.read(), blocks[b].slots

        report = self.shards.sync([b.file for b in blocks], payload)
        self._gallery = gallery
        return report

    def placement(self) -> dict[int, list[str]]:
        """Block -> owner worker names, as of the last sync."""
        return {b: list(o) for b, o in self.shards.plan.items()}

    def match(self, probe: np.ndarray, threshold: float, progress: Progress | None = None) -> MaskedResult:
        """As :meth:`pprm.matching.sealed.SealedMatcher.match`, over the shards.

        Raises:
            TemplateError: the probe is malformed.
            ParameterError: the threshold is outside (0, 1).
            ClusterError: no sync yet, or blocks lost with no live owner left.
        """
        gallery = self._gallery
        if gallery is None:
            raise ClusterError("the sharded gallery was never synced")
        if not 0.0 < threshold < 1.0:
            raise ParameterError("threshold must lie strictly between 0 and 1")
        w = quantise_probe(normalise_probe(probe, self.spec.dim), self._params.probe_scale_bits)
        blocks = gallery.index.blocks
        results = self.shards.fan_out([b.file for b in blocks], "match", (w, threshold), progress)
        cts = tuple(ct for b in range(len(blocks)) for ct in results[b])
        return MaskedResult(tuple(b.file for b in blocks), cts, float(2**self._params.result_scale_bits))

    def describe(self) -> dict[str, dict[str, Any]]:
        """Per worker: what its shard reports (pid, blocks, bytes, files, secret objects; JSON-like values)."""
        return self.shards.describe()
