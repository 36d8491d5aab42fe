"""The encrypted gallery store: dimension-major blocks of CKKS ciphertexts.

Block ``b`` holds up to ``params.templates_per_block`` templates. Ciphertext
``k`` of the block encrypts component ``k`` of every template in the block,
so a score is ``sum_k q_k * C_k`` with no rotations (docs/DESIGN.md section 3).

Slot layout. A block's slot map (:attr:`Block.slots`) has one entry per
template position ``j`` (record id, or -1 when free):

* real packing: N/2 positions; position ``j`` is CKKS slot ``j``.
* complex packing: N positions. Position ``j < N/2`` is the real part of
  CKKS slot ``j`` (the "A half"); position ``N/2 + j`` is the imaginary part
  of the same slot (the "B half"). A masked result carries two ciphertexts
  per block, A then B, each decoding (real parts) to the N/2 decisions of its
  half, so concatenating them gives the decisions in position order.
  :func:`pack_columns` and :func:`unpack_slots` are the only code that knows
  this mapping.

On disk (``gallery/``):

* ``index.json``: parameter set, key id, dimension, and per block its file,
  how many fresh encryptions were summed into it, and which record sits in
  each slot (int64, base64); plus the name of the references file.
* ``refs-<random>.json``: record id -> reference; read only by the owner and
  the key service, never on the matcher's path.
* ``blocks/b-<random>.npy``: ``uint64[d, 2, L, N]`` residues of the block's
  ciphertexts in NTT form, memory-mapped at query time (or, with
  ``PPRM_GALLERY_MEMORY=resident``, read once into the process's own memory:
  :func:`gallery_memory`).

A changed block is written to a new file before the index points at it, so a
crash leaves the old consistent gallery. No plaintext template is ever written.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import os
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from pprm._fs import atomic_save_npy, atomic_write_json, read_json
from pprm.crypto.params import ParameterSet
from pprm.errors import GalleryError, ParameterError, StateError

__all__ = ["Block", "GalleryIndex", "EncryptedGallery", "MAX_ENCRYPTIONS_PER_BLOCK", "GALLERY_MEMORY_ENV",
           "gallery_memory", "pack_columns", "unpack_slots"]

FORMAT = "pprm-gallery/1"
# Appending into a block adds a fresh encryption to it, which adds its noise
# to every slot. The owner must still be able to round a decrypted block back
# onto the template grid (see ParameterSet.template_grid_bits): with two noise
# terms the margin is 6.9 sigma. Removal re-encrypts from the rounded values,
# which resets the count to 1.
MAX_ENCRYPTIONS_PER_BLOCK = 2

# Memory maps of block files, shared by the gallery views of one process.
# Block files are written once and never changed (a new version is a new
# file), so a map stays valid as long as the file it was made from exists
# unchanged (same inode, size and modification time; anything else, such
# as a file damaged in place, is mapped afresh and checked again); a view
# per query then costs no new mapping, whose page faults over 8 GB (1M
# templates) cost about 150 ms per query. Entries of
# files that left the index are dropped when a view of that gallery opens.
_maps_lock = threading.Lock()
_shared_maps: dict[str, tuple[tuple[int, int, int], np.ndarray]] = {}

GALLERY_MEMORY_ENV = "PPRM_GALLERY_MEMORY"
_MEMORY_MODES = ("mapped", "resident")


def gallery_memory() -> str:
    """How this process holds block files: ``PPRM_GALLERY_MEMORY``, default ``"mapped"``.

    ``mapped``: each block file is memory-mapped read-only and its pages live
    in the page cache, shared with every process that maps it; nothing is
    read before a query needs it. ``resident``: each block is read once into
    the process's own memory (where the kernel gives large arrays huge
    pages), and the file's page-cache copy is dropped, so RAM per template is
    the same. The sealed kernel streams a resident block faster (measured
    apart on the 1M gallery of a 2-core VM: 2.3 ms a block against 3.1-3.5
    mapped, because 4 KiB pages of the page cache cost a TLB walk each; a
    whole 1M query gained 1-4%), at the price of reading the whole gallery
    before the first query (3-5 s per GB on that VM, whose first touch of
    memory is slow).

    Returns:
        ``"mapped"`` or ``"resident"``.

    Raises:
        ParameterError: the variable holds anything else.
    """
    raw = os.environ.get(GALLERY_MEMORY_ENV, "").strip().lower() or "mapped"
    if raw not in _MEMORY_MODES:
        raise ParameterError(f"{GALLERY_MEMORY_ENV}={raw!r}: expected one of {', '.join(_MEMORY_MODES)}")
    return raw


def _read_resident(path: str) -> np.ndarray:
    """The ``.npy`` file at ``path`` read into anonymous memory, read-only, its page cache dropped."""
    arr = np.load(path, allow_pickle=False)
    with contextlib.suppress(OSError, AttributeError):  # advice only; not every platform has it
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    arr.setflags(write=False)
    return arr


def pack_columns(columns: np.ndarray, params: ParameterSet) -> np.ndarray:
    """CKKS slot values for template values laid out by position.

    Args:
        columns: ``float64[..., templates_per_block]`` values by position.
        params: the parameter set (its packing decides the layout).

    Returns:
        ``[..., N/2]`` slot values: the same array for real packing; for
        complex packing ``columns[..., :N/2] + 1j * columns[..., N/2:]``.

    Raises:
        GalleryError: the last axis is not ``templates_per_block`` long.
    """
    if columns.shape[-1] != params.templates_per_block:
        raise GalleryError(f"expected {params.templates_per_block} positions, got {columns.shape[-1]}")
    if params.packing == "complex":
        h = params.slots
        return columns[..., :h] + 1j * columns[..., h:]
    return columns


def unpack_slots(values: np.ndarray, params: ParameterSet) -> np.ndarray:
    """Inverse of :func:`pack_columns`: decoded slot values back to positions.

    Args:
        values: ``[..., N/2]`` decoded slot values (complex, or real for real packing).
        params: the parameter set.

    Returns:
        ``float64[..., templates_per_block]``.
    """
    if params.packing == "complex":
        return np.concatenate([values.real, values.imag], axis=-1)
    return np.asarray(values.real, dtype=np.float64)


@dataclass
class Block:
    """One block: its residue file and slot occupancy (record id, or -1 when free)."""

    file: str
    encryptions: int
    slots: np.ndarray

    def free_slots(self) -> list[int]:
        return [int(i) for i in np.flatnonzero(self.slots < 0)]

    def occupancy(self) -> np.ndarray:
        return self.slots >= 0


def _slots_to_json(slots: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(slots, dtype="<i8").tobytes()).decode("ascii")


def _slots_from_json(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text, validate=True), dtype="<i8").astype(np.int64)


@dataclass
class GalleryIndex:
    """What the gallery holds, without the ciphertexts.

    The slot maps are all the matcher needs and load fast (binary in JSON);
    the references live in a separate file that only the owner and the key
    service read, on demand (:attr:`references`).
    """

    params: str
    params_digest: str
    key_id: str
    dim: int
    blocks: list[Block] = field(default_factory=list)
    next_id: int = 0
    refs_file: str = ""
    directory: str = ""
    _references: dict[int, str] | None = field(default=None, repr=False)

    @property
    def references(self) -> dict[int, str]:
        """Record id -> reference, loaded on first use."""
        if self._references is None:
            self._references = {}
            if self.refs_file:
                try:
                    obj = read_json(os.path.join(self.directory, self.refs_file))
                    self._references = {int(k): str(v) for k, v in obj.items()}
                except (OSError, ValueError, AttributeError):
                    raise StateError("gallery references are missing or corrupt") from None
        return self._references

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "params": self.params, "params_digest": self.params_digest,
            "key_id": self.key_id, "dim": self.dim, "next_id": self.next_id, "references": self.refs_file,
            "blocks": [{"file": b.file, "encryptions": b.encryptions, "slots": _slots_to_json(b.slots)}
                       for b in self.blocks],
        }

    @classmethod
    def from_json(cls, obj: Any, directory: str) -> GalleryIndex:
        try:
            if obj["format"] != FORMAT:
                raise StateError(f"gallery index has unknown format {obj['format']!r}")
            return cls(
                params=str(obj["params"]), params_digest=str(obj["params_digest"]),
                key_id=str(obj["key_id"]), dim=int(obj["dim"]), next_id=int(obj["next_id"]),
                blocks=[Block(str(b["file"]), int(b["encryptions"]), _slots_from_json(b["slots"]))
                        for b in obj["blocks"]],
                refs_file=str(obj["references"]), directory=directory,
            )
        except (KeyError, TypeError, ValueError, binascii.Error):
            raise StateError("gallery index is corrupt") from None

    def copy(self) -> GalleryIndex:
        """A deep copy, references included (loaded if needed)."""
        return GalleryIndex(self.params, self.params_digest, self.key_id, self.dim,
                            [Block(b.file, b.encryptions, b.slots.copy()) for b in self.blocks],
                            self.next_id, self.refs_file, self.directory, dict(self.references))

    def __len__(self) -> int:
        return sum(int(b.occupancy().sum()) for b in self.blocks)

    def locate(self, record_id: int) -> tuple[int, int]:
        """(block, slot) of a record."""
        for b, blk in enumerate(self.blocks):
            where = np.flatnonzero(blk.slots == record_id)
            if where.size:
                return b, int(where[0])
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


def index_version(index: GalleryIndex) -> str:
    """A digest of an index's JSON; every commit gives a new one (block files are new each time)."""
    blob = json.dumps(index.to_json(), sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


# Parsed indexes by path, with the identity of the file they were parsed
# from. A responder opens the gallery for every query, and parsing a 1M
# gallery's index (123 base64 slot maps) took 39 ms of a 500 ms query. A
# commit writes a new file and renames it over the old one, so a changed
# index always has a new identity. Cached indexes are shared, never edited:
# their slot maps are read-only, and every change works on a copy.
_indexes: dict[str, tuple[tuple[int, int, int, int], GalleryIndex]] = {}
_indexes_lock = threading.Lock()


def _read_index(path: str, directory: str) -> GalleryIndex:
    """The index at ``path``, parsed once per version of the file."""
    st = os.stat(path)
    key, ident = os.path.abspath(path), (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
    with _indexes_lock:
        hit = _indexes.get(key)
    if hit is not None and hit[0] == ident and hit[1].directory == directory:
        # The slot maps are shared; the references load afresh per gallery, as before.
        return replace(hit[1], blocks=list(hit[1].blocks), _references=None)
    try:
        raw = read_json(path)
    except ValueError:
        raise StateError("gallery index is corrupt") from None
    index = GalleryIndex.from_json(raw, directory)
    for blk in index.blocks:
        blk.slots.setflags(write=False)
    with _indexes_lock:
        _indexes[key] = (ident, replace(index, blocks=list(index.blocks)))
    return index


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
            self.index = _read_index(path, directory)
            if self.index.params_digest != params.digest or self.index.params != params.name:
                raise StateError("gallery was made under another parameter set; refusing it")
            if self.index.key_id != key_id:
                raise StateError("gallery was encrypted under another CKKS key; refusing it")
            if self.index.dim != dim:
                raise StateError("gallery dimension differs from the state's configuration")
            if any(b.slots.shape != (params.templates_per_block,) for b in self.index.blocks):
                raise StateError("gallery slot maps do not fit the parameter set's block size")
        else:
            self.index = GalleryIndex(params.name, params.digest, key_id, dim, directory=directory)
        self._maps: dict[str, np.ndarray] = {}
        blocks_dir = os.path.join(os.path.abspath(directory), "blocks") + os.sep
        live = {blocks_dir + b.file for b in self.index.blocks}
        with _maps_lock:
            for path in [p for p in _shared_maps if p.startswith(blocks_dir) and p not in live]:
                del _shared_maps[path]

    @property
    def version(self) -> str:
        """A digest of the index: it changes with every commit (block files are new each time)."""
        return index_version(self.index)

    @property
    def block_shape(self) -> tuple[int, int, int, int]:
        return (self.dim, 2, self.params.data_primes, self.params.poly_modulus_degree)

    def __len__(self) -> int:
        return len(self.index)

    def block(self, b: int) -> np.ndarray:
        """Residues of block ``b``, read-only: memory-mapped, or resident (:func:`gallery_memory`).

        Raises:
            GalleryError: the file is missing or has the wrong shape.
            ParameterError: ``PPRM_GALLERY_MEMORY`` is not a known mode.
        """
        name = self.index.blocks[b].file
        arr = self._maps.get(name)
        if arr is None:
            resident = gallery_memory() == "resident"
            path = os.path.join(os.path.abspath(self.directory), "blocks", name)
            try:
                st = os.stat(path)
                identity = (st.st_ino, st.st_size, st.st_mtime_ns)
                with _maps_lock:
                    shared = _shared_maps.get(path)
                if shared is not None and shared[0] == identity and isinstance(shared[1], np.memmap) != resident:
                    arr = shared[1]
                elif resident:
                    arr = _read_resident(path)
                else:
                    arr = np.load(path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError):
                raise GalleryError(f"gallery block {b} is missing or unreadable") from None
            if arr.shape != self.block_shape or arr.dtype != np.uint64:
                raise GalleryError(f"gallery block {b} has shape {arr.shape}, expected {self.block_shape}")
            with _maps_lock:
                _shared_maps[path] = (identity, arr)
            self._maps[name] = arr
        return arr

    def preload(self, progress: Callable[[int, int], None] | None = None) -> None:
        """Open every block now (resident: read them all), so the first query pays nothing extra.

        Args:
            progress: called with ``(done, total)`` blocks.

        Raises:
            GalleryError: a block file is missing or has the wrong shape.
            ParameterError: ``PPRM_GALLERY_MEMORY`` is not a known mode.
        """
        total = len(self.index.blocks)
        for b in range(total):
            self.block(b)
            if progress:
                progress(b + 1, total)

    def stored_bytes(self) -> int:
        """Bytes on disk for the blocks and the index."""
        total = 0
        for blk in self.index.blocks:
            total += os.path.getsize(os.path.join(self.directory, "blocks", blk.file))
        if self.index.refs_file:
            total += os.path.getsize(os.path.join(self.directory, self.index.refs_file))
        return total + os.path.getsize(os.path.join(self.directory, "index.json"))

    def write_block(self, arr: np.ndarray) -> str:
        """Write one block's residues to a fresh, durable file that nothing references yet.

        :meth:`commit` takes the returned name in place of the array, so a
        caller can write blocks while it computes the next ones. A file that
        no commit ever references is removed by the next commit.

        Args:
            arr: ``uint64`` residues of :attr:`block_shape`.

        Returns:
            The file's name under ``blocks/``.

        Raises:
            GalleryError: the array has the wrong shape or dtype.
        """
        if arr.shape != self.block_shape or arr.dtype != np.uint64:
            raise GalleryError("refusing to store a block of the wrong shape")
        blocks_dir = os.path.join(self.directory, "blocks")
        os.makedirs(blocks_dir, exist_ok=True)
        name = f"b-{uuid.uuid4().hex}.npy"
        atomic_save_npy(os.path.join(blocks_dir, name), arr)
        return name

    def discard_block(self, name: str) -> None:
        """Remove a file :meth:`write_block` wrote and no commit references (a change given up)."""
        if name in {blk.file for blk in self.index.blocks} or os.path.basename(name) != name:
            raise GalleryError("refusing to discard a block the gallery references")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.directory, "blocks", name))

    def commit(self, index: GalleryIndex, changed: Mapping[int, np.ndarray | str],
               before_switch: Callable[[str, int], None] | None = None) -> None:
        """Write changed blocks and the references to fresh files, then switch the index atomically.

        Args:
            index: the new index (a :meth:`GalleryIndex.copy` that was edited);
                blocks in ``changed`` get new file names here.
            changed: block number -> residues to store, or the name
                :meth:`write_block` returned for them.
            before_switch: called with the new index's :attr:`version` and
                record count once every new file is durable and just before
                the index switches to them (the write-ahead point: the owner
                logs the change here, so a crash can never leave a change
                without its log entry).

        Raises:
            GalleryError: a block of the wrong shape, or a name that is not a
                written block file.
        """
        blocks_dir = os.path.join(self.directory, "blocks")
        os.makedirs(blocks_dir, exist_ok=True)
        for b, arr in sorted(changed.items()):
            if isinstance(arr, str):
                if os.path.basename(arr) != arr or not os.path.isfile(os.path.join(blocks_dir, arr)):
                    raise GalleryError("commit names a block file that was not written")
                name = arr
            else:
                name = self.write_block(arr)
            index.blocks[b].file = name
        refs = {str(k): v for k, v in sorted(index.references.items())}
        index.refs_file = f"refs-{uuid.uuid4().hex}.json"
        index.directory = self.directory
        atomic_write_json(os.path.join(self.directory, index.refs_file), refs)
        if before_switch is not None:
            before_switch(index_version(index), len(index))
        atomic_write_json(os.path.join(self.directory, "index.json"), index.to_json())
        self.index = index
        # Only now are the old files unreferenced; a crash before this point
        # leaves the old index pointing at complete old files.
        live = {blk.file for blk in index.blocks}
        for name in os.listdir(blocks_dir):
            if name not in live:
                os.unlink(os.path.join(blocks_dir, name))
                self._maps.pop(name, None)
        for name in os.listdir(self.directory):
            if name.startswith("refs-") and name != index.refs_file:
                os.unlink(os.path.join(self.directory, name))
