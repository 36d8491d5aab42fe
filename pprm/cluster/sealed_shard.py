"""A sealed-profile shard: the part of the gallery one worker holds, and its work.

This object lives on a Dask worker (as an actor). It is built from a
:class:`SealedShardSpec`, which carries public material only: the parameter
set's name, the gallery's dimension and CKKS key id, and the public
conjugation key. It receives ciphertext blocks, stores them in the worker's
local directory, memory-maps them, and keeps them until told to drop them.
It computes exactly what :class:`pprm.matching.sealed.SealedMatcher` computes
for its blocks (the same :class:`~pprm.matching.sealed.BlockScorer`), fresh
masks included, and returns packed masked ciphertexts, one per block
(:mod:`pprm.crypto.masked_codec`). It cannot decrypt: no secret key is ever
sent to it.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pprm._fs import atomic_write_bytes
from pprm.cluster.host import local_directory, secret_objects, worker
from pprm.crypto import keys
from pprm.crypto import params as param_sets
from pprm.crypto.context import CkksContext
from pprm.errors import ClusterError
from pprm.matching.sealed import BlockScorer

__all__ = ["SealedShardSpec", "SealedShard"]


@dataclass(frozen=True)
class SealedShardSpec:
    """Everything a sealed shard is built from; public by construction.

    Attributes:
        params: the sealed parameter set's name.
        allow_insecure: accept an ``INSECURE*`` set (tests).
        dim: template dimension.
        key_id: the gallery's CKKS key id (blocks are checked against it).
        conjugation_key: the public conjugation key (complex packing), or b"".
    """

    params: str
    allow_insecure: bool
    dim: int
    key_id: str
    conjugation_key: bytes = field(default=b"", repr=False)


class SealedShard:
    """A worker's blocks of one sealed gallery (run as a Dask actor).

    Args:
        spec: public material of the gallery.
        directory: where blocks are stored (default: a fresh directory in the
            worker's local scratch space).

    Raises:
        ParameterError: unknown or disallowed parameter set.
        StateError: the conjugation key does not load.
    """

    def __init__(self, spec: SealedShardSpec, directory: str | None = None) -> None:
        self.spec = spec
        ps = param_sets.get(spec.params, allow_insecure=spec.allow_insecure)
        self._ctx = CkksContext(ps)
        if directory is None:
            directory = tempfile.mkdtemp(prefix="pprm-shard-", dir=local_directory())
        self._dir = directory
        conj = None
        if ps.packing == "complex":
            path = os.path.join(directory, "conjugation.key")
            atomic_write_bytes(path, spec.conjugation_key, 0o644)
            conj = keys.load_conjugation_key(self._ctx, path)
        self._scorer = BlockScorer(self._ctx, conj)
        self._shape = (spec.dim, 2, ps.data_primes, ps.poly_modulus_degree)
        # block position -> (file name, memory-mapped residues, occupancy)
        self._blocks: dict[int, tuple[str, np.ndarray, np.ndarray]] = {}

    def __repr__(self) -> str:
        return f"SealedShard({self.spec.params}, {len(self._blocks)} blocks)"

    def store(self, block: int, file: str, data: bytes, slots: np.ndarray) -> None:
        """Keep block ``block`` (its .npy bytes and slot map), replacing any older version.

        Raises:
            ClusterError: the bytes are not a block of this gallery's shape.
        """
        path = os.path.join(self._dir, f"{block:06d}-{os.path.basename(file)}")
        atomic_write_bytes(path, data, 0o600)
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError):
            os.unlink(path)
            raise ClusterError(f"block {block} did not arrive intact") from None
        if arr.shape != self._shape or arr.dtype != np.uint64:
            os.unlink(path)
            raise ClusterError(f"block {block} has shape {arr.shape}, expected {self._shape}")
        self.drop([block])
        self._blocks[block] = (file, arr, np.asarray(slots) >= 0)

    def drop(self, blocks: list[int]) -> None:
        """Forget blocks (their files are deleted)."""
        for b in blocks:
            held = self._blocks.pop(b, None)
            if held is not None:
                path = os.path.join(self._dir, f"{b:06d}-{os.path.basename(held[0])}")
                del held
                if os.path.exists(path):
                    os.unlink(path)

    def holdings(self) -> dict[int, str]:
        """Block position -> block file name, for every block held."""
        return {b: f for b, (f, _a, _o) in self._blocks.items()}

    def match(self, wanted: list[tuple[int, str]], w: np.ndarray, threshold: float) -> list[list[bytes]]:
        """Masked results for the ``wanted`` blocks, in the order given.

        Args:
            wanted: ``(block position, block file)``: the file pins the
                gallery version, so a stale copy is refused, never used.
            w: the probe's integer weights.
            threshold: tau.

        Raises:
            ClusterError: a wanted block is not held in that version.
        """
        for b, f in wanted:
            held = self._blocks.get(b)
            if held is None or held[0] != f:
                raise ClusterError(f"this worker does not hold block {b} in the version asked for")
        blocks = [self._blocks[b] for b, _f in wanted]
        return self._scorer.run(len(blocks), lambda i: blocks[i][1], lambda i: blocks[i][2],
                                np.asarray(w, dtype=np.int64), float(threshold))

    def describe(self) -> dict[str, Any]:
        """What this shard holds, which process it runs in, and any secret-key object it can reach.

        ``secret_objects`` walks from this shard and from the Dask worker
        hosting it (its data, tasks and actors).
        """
        return {"pid": os.getpid(), "blocks": sorted(self._blocks), "directory": self._dir,
                "bytes": sum(a.nbytes for _f, a, _o in self._blocks.values()),
                "files": sorted(os.listdir(self._dir)), "secret_objects": secret_objects(self, worker())}
