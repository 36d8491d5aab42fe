"""The encrypted gallery store: dimension-major blocks of CKKS ciphertexts.

Block ``b`` holds up to N/2 templates. Ciphertext ``k`` of the block encrypts
component ``k`` of every template in the block, one template per slot, so a
score is ``sum_k q_k * C_k`` with no rotations (DESIGN.md section 3).

On disk (``gallery/``):

* ``index.json``: parameter set, key id, dimension, and per block its file,
  how many fresh encryptions were summed into it, and which record sits in
  each slot; plus record id -> reference.
* ``blocks/b-<random>.npy``: ``uint64[d, 2, L, N]`` residues of the block's
  ciphertexts in NTT form, memory-mapped at query time.

A changed block is written to a new file before the index points at it, so a
crash leaves the old consistent gallery. No plaintext template is ever written.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pprm._fs import atomic_save_npy, atomic_write_json, read_json
from pprm.crypto.params import ParameterSet
from pprm.errors import GalleryError, StateError

__all__ = ["Block", "GalleryIndex", "EncryptedGallery", "MAX_ENCRYPTIONS_PER_BLOCK"]

FORMAT = "pprm-gallery/1"
# Appending into a block adds a fresh encryption to it, which adds its noise
# to every slot. The owner must still be able to round a decrypted block back
# onto the template grid (see ParameterSet.template_grid_bits): with two noise
# terms the margin is 6.9 sigma. Removal re-encrypts from the rounded values,
# which resets the count to 1.
MAX_ENCRYPTIONS_PER_BLOCK = 2


@dataclass
class Block:
    """One block: its residue file and slot occupancy (record id or -1)."""

    file: str
    encryptions: int
    slots: list[int]

    def free_slots(self) -> list[int]:
        return [i for i, r in enumerate(self.slots) if r < 0]

    def occupancy(self) -> np.ndarray:
        return np.asarray(self.slots, dtype=np.int64) >= 0


@dataclass
class GalleryIndex:
    """What the gallery holds, without the ciphertexts."""

    params: str
    params_digest: str
    key_id: str
    dim: int
    blocks: list[Block] = field(default_factory=list)
    references: dict[int, str] = field(default_factory=dict)
    next_id: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "params": self.params, "params_digest": self.params_digest,
            "key_id": self.key_id, "dim": self.dim, "next_id": self.next_id,
            "blocks": [{"file": b.file, "encryptions": b.encryptions, "slots": b.slots} for b in self.blocks],
            "references": {str(k): v for k, v in sorted(self.references.items())},
        }

    @classmethod
    def from_json(cls, obj: Any) -> GalleryIndex:
        try:
            if obj["format"] != FORMAT:
                raise StateError(f"gallery index has unknown format {obj['format']!r}")
            return cls(
                params=str(obj["params"]), params_digest=str(obj["params_digest"]),
                key_id=str(obj["key_id"]), dim=int(obj["dim"]), next_id=int(obj["next_id"]),
                blocks=[Block(str(b["file"]), int(b["encryptions"]), [int(s) for s in b["slots"]])
                        for b in obj["blocks"]],
                references={int(k): str(v) for k, v in obj["references"].items()},
            )
        except (KeyError, TypeError, ValueError):
            raise StateError("gallery index is corrupt") from None

    def copy(self) -> GalleryIndex:
        return GalleryIndex.from_json(self.to_json())

    def locate(self, record_id: int) -> tuple[int, int]:
        """(block, slot) of a record."""
        for b, blk in enumerate(self.blocks):
            if record_id in blk.slots:
                return b, blk.slots.index(record_id)
        raise GalleryError(f"record {record_id} has no slot")

    def record_of(self, reference: str) -> int:
        """Record id of a reference.

        Raises:
            GalleryError: the reference is not enrolled.
        """
        for rid, ref in self.references.items():
            if ref == reference:
                return rid
        raise GalleryError(f"reference {reference!r} is not enrolled")


class EncryptedGallery:
    """A gallery directory bound to one parameter set and one CKKS key id.

    Args:
        directory: the ``gallery/`` directory.
        params: the state's parameter set.
        key_id: the state's CKKS key id.

    Raises:
        StateError: the stored gallery belongs to other parameters or another key.
    """

    def __init__(self, directory: str, params: ParameterSet, key_id: str, dim: int) -> None:
        self.directory = directory
        self.params = params
        self.key_id = key_id
        self.dim = dim
        path = os.path.join(directory, "index.json")
        if os.path.exists(path):
            self.index = GalleryIndex.from_json(read_json(path))
            if self.index.params_digest != params.digest or self.index.params != params.name:
                raise StateError("gallery was made under another parameter set; refusing it")
            if self.index.key_id != key_id:
                raise StateError("gallery was encrypted under another CKKS key; refusing it")
            if self.index.dim != dim:
                raise StateError("gallery dimension differs from the state's configuration")
        else:
            self.index = GalleryIndex(params.name, params.digest, key_id, dim)
        self._maps: dict[str, np.ndarray] = {}

    @property
    def block_shape(self) -> tuple[int, int, int, int]:
        return (self.dim, 2, self.params.data_primes, self.params.poly_modulus_degree)

    def __len__(self) -> int:
        return len(self.index.references)

    def block(self, b: int) -> np.ndarray:
        """Residues of block ``b``, memory-mapped read-only.

        Raises:
            GalleryError: the file is missing or has the wrong shape.
        """
        name = self.index.blocks[b].file
        arr = self._maps.get(name)
        if arr is None:
            try:
                arr = np.load(os.path.join(self.directory, "blocks", name), mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError):
                raise GalleryError(f"gallery block {b} is missing or unreadable") from None
            if arr.shape != self.block_shape or arr.dtype != np.uint64:
                raise GalleryError(f"gallery block {b} has shape {arr.shape}, expected {self.block_shape}")
            self._maps[name] = arr
        return arr

    def stored_bytes(self) -> int:
        """Bytes on disk for the blocks and the index."""
        total = 0
        for blk in self.index.blocks:
            total += os.path.getsize(os.path.join(self.directory, "blocks", blk.file))
        return total + os.path.getsize(os.path.join(self.directory, "index.json"))

    def commit(self, index: GalleryIndex, changed: dict[int, np.ndarray]) -> None:
        """Write changed blocks to fresh files, then switch the index atomically.

        Args:
            index: the new index (blocks in ``changed`` get new file names here).
            changed: block number -> residues to store.
        """
        blocks_dir = os.path.join(self.directory, "blocks")
        os.makedirs(blocks_dir, exist_ok=True)
        for b, arr in sorted(changed.items()):
            if arr.shape != self.block_shape or arr.dtype != np.uint64:
                raise GalleryError("refusing to store a block of the wrong shape")
            name = f"b-{uuid.uuid4().hex}.npy"
            atomic_save_npy(os.path.join(blocks_dir, name), arr)
            index.blocks[b].file = name
        atomic_write_json(os.path.join(self.directory, "index.json"), index.to_json())
        self.index = index
        live = {blk.file for blk in index.blocks}
        for name in os.listdir(blocks_dir):
            if name not in live:
                os.unlink(os.path.join(blocks_dir, name))
                self._maps.pop(name, None)
