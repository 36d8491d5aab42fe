"""A blind-profile shard: some blocks of the owner's diagonals, and their part of a query.

Warning:
    The diagonals are the owner's gallery in pre-encoded plaintext: a worker
    holding them holds (part of) the gallery. Blind shards must run only on
    machines inside the owner's trusted cluster. The requester's keys and
    probe that reach a worker are public or encrypted material.
"""

from __future__ import annotations

import collections
import os
import tempfile
from dataclasses import dataclass
from typing import Any

import numpy as np

from pprm.cluster.host import local_directory, secret_objects, worker
from pprm.crypto import blind_keys
from pprm.crypto import blind_params as blind_param_sets
from pprm.crypto.context import BlindContext
from pprm.errors import ClusterError, KeyRotationError
from pprm.matching.blind import BlindEvaluator

__all__ = ["BlindShardSpec", "BlindShard"]

# Requesters' keys kept loaded per shard: a key serves the queries of one
# case, which come in bursts; 8 keys are 30 MB at N=16384.
KEY_CACHE = 8


@dataclass(frozen=True)
class BlindShardSpec:
    """What a blind shard is built from.

    Attributes:
        params: the blind parameter set's name.
        allow_insecure: accept an ``INSECURE*`` set (tests).
    """

    params: str
    allow_insecure: bool


class BlindShard:
    """A worker's blocks of one blind database (run as a Dask actor).

    Args:
        spec: the parameter set.
        directory: where blocks are stored (default: the worker's scratch space).
    """

    def __init__(self, spec: BlindShardSpec, directory: str | None = None) -> None:
        self.spec = spec
        ps = blind_param_sets.get(spec.params, allow_insecure=spec.allow_insecure)
        self._ctx = BlindContext(ps)
        self._eval = BlindEvaluator(self._ctx)
        self._dir = directory or tempfile.mkdtemp(prefix="pprm-blind-shard-", dir=local_directory())
        self._shape = (ps.giant_steps, ps.baby_steps, ps.data_primes, self._ctx.n)
        self._blocks: dict[int, tuple[str, np.ndarray, np.ndarray]] = {}
        self._keys: collections.OrderedDict[str, blind_keys.EvaluationKeys] = collections.OrderedDict()

    def __repr__(self) -> str:
        return f"BlindShard({self.spec.params}, {len(self._blocks)} blocks)"

    def _path(self, block: int) -> str:
        return os.path.join(self._dir, f"{block:06d}.npy")

    def store(self, block: int, version: str, diagonals: np.ndarray, signs: np.ndarray) -> None:
        """Keep block ``block`` of database ``version`` (diagonals memory-mapped from local disk).

        Raises:
            ClusterError: the arrays do not have this parameter set's shape.
        """
        diagonals = np.asarray(diagonals)
        if diagonals.shape != self._shape or diagonals.dtype != np.uint64:
            raise ClusterError(f"blind block {block} has shape {diagonals.shape}, expected {self._shape}")
        signs = np.asarray(signs, dtype=np.float64)
        if signs.shape != (self._ctx.params.templates_per_block,) or not np.all(np.abs(signs) == 1.0):
            raise ClusterError(f"blind block {block} has malformed slot signs")
        self.drop([block])
        path = self._path(block)
        tmp = f"{path}.tmp"
        with open(tmp, "wb") as fh:
            np.save(fh, diagonals, allow_pickle=False)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
        self._blocks[block] = (version, np.load(path, mmap_mode="r", allow_pickle=False), signs)

    def drop(self, blocks: list[int]) -> None:
        """Forget blocks (their files are deleted)."""
        for b in blocks:
            if self._blocks.pop(b, None) is not None and os.path.exists(self._path(b)):
                os.unlink(self._path(b))

    def holdings(self) -> dict[int, str]:
        """Block position -> database version, for every block held."""
        return {b: v for b, (v, _d, _s) in self._blocks.items()}

    def _keys_for(self, key_id: str, public_blob: bytes, galois_blob: bytes,
                  relin_blob: bytes) -> blind_keys.EvaluationKeys:
        if key_id not in self._keys:
            if blind_keys.key_id_of(self._ctx.params.digest, public_blob, galois_blob, relin_blob) != key_id:
                raise KeyRotationError("the key material does not match its key id")
            self._keys[key_id] = blind_keys.load_announced(self._ctx, public_blob, galois_blob, relin_blob)
            while len(self._keys) > KEY_CACHE:
                self._keys.popitem(last=False)
        self._keys.move_to_end(key_id)
        return self._keys[key_id]

    def answer(self, wanted: list[tuple[int, str]], probe_blob: bytes, key_id: str, public_blob: bytes,
               galois_blob: bytes, relin_blob: bytes, tau: float) -> list[bytes]:
        """Answer blocks for the ``wanted`` ``(block, version)`` pairs, in that order.

        Raises:
            ClusterError: a block is not held in that version.
            KeyRotationError, CiphertextError: keys or probe do not load.
        """
        for b, v in wanted:
            held = self._blocks.get(b)
            if held is None or held[0] != v:
                raise ClusterError(f"this worker does not hold blind block {b} in the version asked for")
        keys = self._keys_for(key_id, public_blob, galois_blob, relin_blob)
        p = self._ctx.params
        probe = self._ctx.load_seeded_ciphertext(probe_blob, scale=float(2**p.probe_scale_bits))
        return self._eval.evaluate(probe, keys, float(tau),
                                   [(self._blocks[b][1], self._blocks[b][2]) for b, _v in wanted])

    def describe(self) -> dict[str, Any]:
        """What this shard holds, which process it runs in, and any secret-key object it can reach."""
        return {"pid": os.getpid(), "blocks": sorted(self._blocks), "directory": self._dir,
                "bytes": sum(d.nbytes + s.nbytes for _v, d, s in self._blocks.values()),
                "files": sorted(os.listdir(self._dir)), "secret_objects": secret_objects(self, worker())}
