"""Galleries beyond one machine: shards on the workers of a Dask cluster.

Layering: ``pprm.cluster`` sits on :mod:`pprm.matching`; the node, the
network service and the CLI may hand a sharded matcher to the responder.
The cluster never sees a state: the node builds the shard specs
(:meth:`pprm.node.state.State.sealed_shard_spec`,
:meth:`~pprm.node.state.State.blind_shard_spec`) from checked public material.
Dask is imported only when a cluster is connected (``pip install "pprm[cluster]"``).

- :mod:`pprm.cluster.placement`: rendezvous hashing of blocks over workers.
- :mod:`pprm.cluster.connect`: ``tcp://`` scheduler or ``local:N`` processes.
- :mod:`pprm.cluster.shards`: sync and fan-out with failover, for both profiles.
- :mod:`pprm.cluster.sealed_shard`, :mod:`pprm.cluster.sealed`: the sealed profile.
- :mod:`pprm.cluster.blind_shard`, :mod:`pprm.cluster.blind`: the blind profile
  (its shards hold the gallery's plaintext encoding: trusted machines only).
"""

from __future__ import annotations

from pprm.cluster.blind import ShardedBlindMatcher
from pprm.cluster.blind_shard import BlindShard, BlindShardSpec
from pprm.cluster.connect import ClusterHandle, connect
from pprm.cluster.placement import moves, owners, plan
from pprm.cluster.sealed import ShardedMatcher
from pprm.cluster.sealed_shard import SealedShard, SealedShardSpec

__all__ = ["BlindShard", "BlindShardSpec", "ClusterHandle", "ShardedBlindMatcher", "ShardedMatcher", "SealedShard",
           "SealedShardSpec", "connect", "moves", "owners", "plan"]
