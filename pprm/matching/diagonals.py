"""Blind profile, responder's database: the gallery as pre-encoded plaintext diagonals.

Halevi-Shoup diagonals with baby-step/giant-step (docs/DESIGN.md section 3): the
probe ``q`` (d components) is replicated across the N/2 slots, so a rotation
by ``i`` gives ``q[(j + i) mod d]`` in slot ``j``. With ``D_i[j] = G[j, (i + j)
mod d]`` for the N/2 templates ``G[j]`` of a block, ``sum_i D_i * rot_i(q)``
holds ``<G_j, q>`` in slot ``j``. Writing ``i = g*b1 + b``, the responder
computes ``sum_g rot_{g*b1}(sum_b D'_{g,b} * rot_b(q))`` with
``D'_{g,b} = rot_{-g*b1}(D_{g*b1+b})``: b1 - 1 probe rotations per query and
g2 - 1 rotations per block, with Galois keys for steps 1 and b1 only.

Templates sit in slots through a secret random permutation drawn afresh
every time the diagonals are rebuilt, so slot positions tell the requester
nothing it could link across rebuilds. Each slot also carries a secret random
sign ``u_j``: the diagonals hold ``u_j * G[j]``, the product holds ``u_j * s_j``,
and the matcher multiplies by ``u_j * r_j`` (``u_j**2 = 1``). Without the signs, a
gallery of identical templates makes every diagonal a constant polynomial,
and the probe noise at the fixed points of the rotations adds up coherently:
measured 3.7 bits more noise than a random gallery, which the flood would
have to cover at the cost of decision precision. With them every gallery
behaves like a random one. Each diagonal is encoded exactly
(:mod:`pprm.crypto.encoding`) and stored as SEAL NTT residues, so a query is
one multiply-accumulate pass of :func:`pprm.matching.kernel.plain_mac`.

Warning:
    The diagonals are an encoding of the plaintext gallery. They are kept in
    the memory of the process that answers blind queries (the state's own,
    or its key service's when the state is split; while ``pprm serve``
    rebuilds them after a gallery change, the previous version too); on
    disk they exist only sealed (see :mod:`pprm.node.blind_store`).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from pprm.crypto.context import BlindContext
from pprm.crypto.encoding import coefficients_to_residues, encode_coefficients
from pprm.errors import ParameterError, TemplateError
from pprm.matching.encode_native import NativeEncoder, native_transforms
from pprm.matching.mask_kernel import NativeNtt

__all__ = ["BlindDatabase", "BlockScratch", "build_block", "build_database", "secret_permutation"]

Progress = Callable[[int, int], None]

# Diagonals encoded per batch: bounds the long-double work arrays (~0.5 GB).
_ENCODE_BATCH = 64


def secret_permutation(n: int) -> np.ndarray:
    """A uniformly random permutation of ``range(n)`` from the OS CSPRNG."""
    perm = np.arange(n, dtype=np.int64)
    for i in range(n - 1, 0, -1):
        j = secrets.randbelow(i + 1)
        perm[i], perm[j] = perm[j], perm[i]
    return perm


@dataclass(frozen=True)
class BlindDatabase:
    """A gallery laid out for the blind product.

    Attributes:
        diagonals: per block, ``uint64[g2, b1, L, N]`` NTT residues of
            ``D'_{g,b}``: one array ``[blocks, ...]``, or a sequence of
            per-block arrays (memory-mapped from the store's files).
        slot_record: ``int64[blocks, templates_per_block]``: the row of the
            source gallery at each position, or -1 for an empty one (its
            diagonal entries are 0). Position ``j < N/2`` is the real part of
            slot ``j``; with complex packing position ``N/2 + j`` is its
            imaginary part.
        signs: ``float64[blocks, templates_per_block]`` of +1/-1: the secret
            signs, one per position.
        params_name: the blind parameter set the diagonals belong to.
    """

    diagonals: np.ndarray | Sequence[np.ndarray]
    slot_record: np.ndarray
    signs: np.ndarray
    params_name: str

    @property
    def blocks(self) -> int:
        """Number of blocks (answer ciphertexts per query)."""
        return len(self.diagonals)

    @property
    def nbytes(self) -> int:
        """Bytes of diagonals (in memory, or mapped from disk)."""
        return sum(int(d.nbytes) for d in self.diagonals)

    @property
    def size(self) -> int:
        """Number of templates."""
        return int((self.slot_record >= 0).sum())

    def __repr__(self) -> str:
        return f"BlindDatabase({self.params_name}, {self.size} templates, {self.blocks} blocks)"


def block_diagonals(block: np.ndarray, baby: int, out: np.ndarray | None = None) -> np.ndarray:
    """The rotated diagonals ``D'_{g,b}`` of one block as slot values.

    Args:
        block: ``float64[N/2, d]`` templates in slot order (zero rows for
            empty slots).
        baby: b1.
        out: where to write them (e.g. the real or imaginary part of a
            complex array); a new array when None.

    Returns:
        ``float64[g2, b1, N/2]`` (``out`` when given).
    """
    slots, d = block.shape
    j = np.arange(slots)
    if out is None:
        out = np.empty((d // baby, baby, slots), dtype=np.float64)
    for g in range(d // baby):
        shift = g * baby
        # D'_{g,b}[j] = D_{g*b1+b}[(j - g*b1) mod slots] and D_i[j] = G[j, (i + j) mod d].
        src = (j - shift) % slots
        for b in range(baby):
            i = shift + b
            out[g, b] = block[src, (i + src) % d]
    return out


def _encode_block(ctx: BlindContext, values: np.ndarray, out: np.ndarray, pool: ThreadPoolExecutor,
                  step: Callable[[int], None] | None = None) -> None:
    """Encode one block's ``[d, N/2]`` diagonal values into ``out`` (``[d, L, N]`` NTT residues).

    ``step`` is called with the number of diagonals encoded so far, after each batch.
    """
    p = ctx.params
    moduli = ctx.moduli[:p.data_primes]
    ntt, encoder = _native(ctx)

    def encode(start: int) -> np.ndarray | None:
        batch = values[start:start + _ENCODE_BATCH]
        if encoder is None or ntt is None:
            return coefficients_to_residues(encode_coefficients(batch, p.diagonal_scale_bits, ctx.n), moduli)
        # Straight into the block: fresh memory costs more than the copy on some VMs.
        dst = out[start:start + _ENCODE_BATCH]
        ntt.forward(encoder.residues(batch, p.diagonal_scale_bits, out=dst), in_place=True)
        return None

    # The long-double FFTs (numpy's or the C encoder's) and the native NTT
    # release the GIL: batches are encoded on every core. SEAL's NTT (the
    # numpy backend's) holds it and runs here as each batch is ready.
    starts = range(0, values.shape[0], _ENCODE_BATCH)
    for start, residues in zip(starts, pool.map(encode, starts), strict=True):
        if residues is not None:
            out[start:start + _ENCODE_BATCH] = ctx.to_ntt(residues)
        if step is not None:
            step(min(start + _ENCODE_BATCH, values.shape[0]))


def _native(ctx: BlindContext) -> tuple[NativeNtt | None, NativeEncoder | None]:
    """The C NTT and encoder for this context's data primes on the native backend, else None (numpy and SEAL).

    Both give the numpy path's words exactly (tests/matching/test_mask_kernel.py and
    tests/matching/test_encode_native.py), so the database is the same either way.
    """
    native = native_transforms(ctx.n, tuple(int(q) for q in ctx.moduli[:ctx.params.data_primes]))
    return (None, None) if native is None else (native[1], native[0])


def _block_steps(progress: Progress, before: int, count: int, dim: int, total: int) -> Callable[[int], None]:
    """Diagonals encoded in one block (of ``dim``), reported as templates: ``count`` of them, after ``before``."""

    def step(encoded: int) -> None:
        progress(before + count * encoded // dim, total)

    return step


def _check_rows(templates: np.ndarray, record_ids: np.ndarray | None, dim: int) -> tuple[np.ndarray, np.ndarray]:
    g = np.asarray(templates, dtype=np.float64)
    if g.ndim != 2 or g.shape[1] != dim:
        raise TemplateError(f"templates must be [n, {dim}], got {list(g.shape)}")
    ids = np.arange(g.shape[0], dtype=np.int64) if record_ids is None else np.asarray(record_ids, dtype=np.int64)
    if ids.shape != (g.shape[0],):
        raise TemplateError("record_ids must give one id per template")
    return g, ids


def _random_signs(n: int) -> np.ndarray:
    bits = np.unpackbits(np.frombuffer(secrets.token_bytes(n // 8 + 1), dtype=np.uint8))
    return 1.0 - 2.0 * bits[:n].astype(np.float64)


class BlockScratch:
    """The work arrays of :func:`build_block` (128 MB at N = 16384), kept from one block to the next.

    A database build encodes block after block; fresh arrays per block cost
    more in page faults than the arithmetic on some VMs. One build, one
    scratch: it is not for concurrent calls.

    Args:
        ctx: the blind context the blocks are encoded for.
    """

    def __init__(self, ctx: BlindContext) -> None:
        p = ctx.params
        self.rows = np.empty((p.templates_per_block, p.dim), dtype=np.float64)
        self.values = np.empty((p.giant_steps, p.baby_steps, p.slots),
                               dtype=np.complex128 if p.complex_packing else np.float64)

    def __repr__(self) -> str:
        return f"BlockScratch({self.rows.shape[0]} positions)"


def _encode_rows(ctx: BlindContext, g: np.ndarray, slot_row: np.ndarray, signs: np.ndarray, out: np.ndarray,
                 pool: ThreadPoolExecutor, step: Callable[[int], None] | None,
                 scratch: BlockScratch | None = None) -> None:
    """Encode the block whose position k holds row ``slot_row[k]`` of ``g`` (-1: empty) into ``out``."""
    p = ctx.params
    slots = p.slots
    work = scratch if scratch is not None else BlockScratch(ctx)
    rows, values = work.rows, work.values
    rows.fill(0.0)
    filled = np.flatnonzero(slot_row >= 0)
    if filled.size == g.shape[0]:  # every row of g is in this block: scattered from g itself, no gathered copy
        at = np.empty(g.shape[0], dtype=np.int64)
        at[slot_row[filled]] = filled
        rows[at] = g
    else:
        rows[filled] = g[slot_row[filled]]
    rows *= signs[:, None]  # empty positions stay zero
    if p.complex_packing:
        # Position slots + j sits in the imaginary part of slot j (filled in place: these are 64 MB arrays).
        block_diagonals(rows[:slots], p.baby_steps, out=values.real)
        block_diagonals(rows[slots:], p.baby_steps, out=values.imag)
    else:
        block_diagonals(rows[:slots], p.baby_steps, out=values)
    _encode_block(ctx, values.reshape(p.dim, slots), out.reshape(p.dim, p.data_primes, ctx.n), pool, step)


def build_block(templates: np.ndarray, ctx: BlindContext, *, record_ids: np.ndarray | None = None,
                pool: ThreadPoolExecutor | None = None, progress: Progress | None = None,
                out: np.ndarray | None = None,
                scratch: BlockScratch | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One block of diagonals for up to ``templates_per_block`` templates, under a fresh secret layout.

    A database that changes a block at a time (:mod:`pprm.node.blind_store`)
    rebuilds only that block with this; its other blocks keep theirs.

    Args:
        templates: ``float[n, d]`` unit-norm templates, ``n <= templates_per_block``.
        ctx: the blind context.
        record_ids: ``int64[n]`` record id of each row (default: the row number).
        pool: threads to encode on (default: a pool of one per core, for this call).
        progress: called with ``(templates done, n)`` as the diagonals are encoded.
        out: a C-contiguous ``uint64[g2, b1, L, N]`` array to encode into
            (every word is overwritten); a new one when None. A database
            build alternates two, so that it does not fault in 200 MB of
            fresh memory per block.
        scratch: work arrays kept from an earlier call (:class:`BlockScratch`).

    Returns:
        ``(diagonals uint64[g2, b1, L, N], slot_record int64[templates_per_block],
        signs float64[templates_per_block])``, as one block of :class:`BlindDatabase`
        (the diagonals are ``out`` when given).

    Raises:
        TemplateError: wrong dimension, or more templates than a block holds.
        ParameterError: ``out`` has another shape or layout.
    """
    p = ctx.params
    g, ids = _check_rows(templates, record_ids, p.dim)
    per_block = p.templates_per_block
    if g.shape[0] > per_block:
        raise TemplateError(f"a block holds at most {per_block} templates, got {g.shape[0]}")
    positions = secret_permutation(per_block)
    slot_row = np.full(per_block, -1, dtype=np.int64)
    slot_row[positions[: g.shape[0]]] = np.arange(g.shape[0])
    signs = _random_signs(per_block)
    shape = (p.giant_steps, p.baby_steps, p.data_primes, ctx.n)
    if out is None:
        diag = np.empty(shape, dtype=np.uint64)
    elif out.shape != shape or out.dtype != np.uint64 or not out.flags.c_contiguous or not out.flags.writeable:
        raise ParameterError(f"out must be a writable C-contiguous uint64 array of shape {list(shape)}")
    else:
        diag = out
    n = g.shape[0]
    step = None if progress is None else _block_steps(progress, 0, n, p.dim, n)
    if pool is None:
        with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1), thread_name_prefix="pprm-encode") as own:
            _encode_rows(ctx, g, slot_row, signs, diag, own, step, scratch)
    else:
        _encode_rows(ctx, g, slot_row, signs, diag, pool, step, scratch)
    slot_record = np.where(slot_row >= 0, ids[np.maximum(slot_row, 0)] if ids.size else -1, -1)
    return diag, slot_record, signs


def build_database(templates: np.ndarray, ctx: BlindContext, *, record_ids: np.ndarray | None = None,
                   progress: Progress | None = None) -> BlindDatabase:
    """Lay out, encode and NTT-transform a gallery's diagonals.

    Args:
        templates: ``float[n, d]`` unit-norm templates.
        ctx: the blind context.
        record_ids: ``int64[n]`` record id of each row (default: the row number).
        progress: called with ``(templates done, templates)``: at the start,
            then after every batch of diagonals, a block's templates counting
            as done in proportion to its diagonals encoded (a block is the
            unit of work, and one block is all of a gallery of up to
            ``templates_per_block``); the last call is ``(n, n)``.

    Returns:
        The database, under a fresh secret layout over all its positions.

    Raises:
        TemplateError: wrong dimension.
    """
    p = ctx.params
    g, ids = _check_rows(templates, record_ids, p.dim)
    per_block = p.templates_per_block
    blocks = max(1, -(-g.shape[0] // per_block))
    positions = secret_permutation(blocks * per_block)
    slot_row = np.full(blocks * per_block, -1, dtype=np.int64)
    slot_row[positions[: g.shape[0]]] = np.arange(g.shape[0])
    slot_row = slot_row.reshape(blocks, per_block)
    signs = _random_signs(blocks * per_block).reshape(blocks, per_block)
    diag = np.empty((blocks, p.giant_steps, p.baby_steps, p.data_primes, ctx.n), dtype=np.uint64)
    n = g.shape[0]
    if progress is not None:
        progress(0, n)
    done = 0
    scratch = BlockScratch(ctx)
    with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1), thread_name_prefix="pprm-encode") as pool:
        for blk in range(blocks):
            count = int((slot_row[blk] >= 0).sum())
            step = None if progress is None else _block_steps(progress, done, count, p.dim, n)
            _encode_rows(ctx, g, slot_row[blk], signs[blk], diag[blk], pool, step, scratch)
            done += count
    slot_record = np.where(slot_row >= 0, ids[np.maximum(slot_row, 0)] if ids.size else -1, -1)
    return BlindDatabase(diag, slot_record, signs, p.name)
