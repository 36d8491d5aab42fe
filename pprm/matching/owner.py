"""Sealed profile, owner side: enrolling into and removing from the gallery.

Encryption is symmetric under the owner's secret key (smaller noise than
public-key encryption, docs/DESIGN.md section 9), so these operations belong to
the key-service side of a state, never to the matcher. Plaintext templates
exist only in memory here.

Templates are enrolled rounded to the parameter set's grid
(``template_grid_bits``). Decryption noise is far below half a grid step, so
when a record is removed the owner decrypts the block, rounds every component
back to the exact enrolled value, zeroes the removed slot and encrypts afresh:
noise never accumulates, however many records a block loses over the years.

With complex packing a CKKS slot holds two templates (real and imaginary
parts; layout in :mod:`pprm.matching.gallery`): both parts carry the same
noise as a real slot, so the same grid argument holds for each.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np
import tenseal.sealapi as seal

from pprm.crypto.context import CkksContext
from pprm.crypto.embedding import slot_transform
from pprm.errors import GalleryError, TemplateError
from pprm.matching import kernel
from pprm.matching.gallery import (
    MAX_ENCRYPTIONS_PER_BLOCK,
    Block,
    EncryptedGallery,
    GalleryIndex,
    pack_columns,
    unpack_slots,
)
from pprm.matching.templates import normalise_templates, reference_list, shown_reference, validate_references

if TYPE_CHECKING:
    from pprm.matching.encrypt_native import NativeEncryptor

__all__ = ["GalleryOwner"]

Progress = Callable[[int, int], None]

# Ciphertexts decrypted and decoded at a time by the native export.
_DECODE_ROWS = 32


class GalleryOwner:
    """Encrypts templates into, and removes records from, an encrypted gallery.

    Args:
        ctx: the CKKS context.
        secret_key: the state's CKKS secret key.
        gallery: the gallery to change.
    """

    def __init__(self, ctx: CkksContext, secret_key: seal.SecretKey, gallery: EncryptedGallery) -> None:
        self.ctx = ctx
        self.gallery = gallery
        self._encryptor = seal.Encryptor(ctx.seal, secret_key)
        self._decryptor = seal.Decryptor(ctx.seal, secret_key)
        # Kept for the native encryptor, made on the first encryption that uses it.
        self._secret_key = secret_key
        self._native: NativeEncryptor | None = None

    def __repr__(self) -> str:
        return f"GalleryOwner({self.ctx.params.name}, records={len(self.gallery)})"

    def _native_encryptor(self) -> NativeEncryptor | None:
        """The C encryptor when the native backend serves this set (one data prime), else None."""
        p = self.ctx.params
        # kernel.backend() last: its first call runs the native self-check.
        if len(self.ctx.moduli) == 1 and p.packing in ("real", "complex") and kernel.backend() == "native":
            if self._native is None:
                # Imported here: enrolment and export are the only users, and `import pprm` stays lean.
                from pprm.matching.encrypt_native import NativeEncryptor

                self._native = NativeEncryptor(self.ctx, self._secret_key)
            return self._native
        return None

    def _encrypt_columns(self, columns: np.ndarray, progress: Progress | None = None,
                         done: int = 0, total: int = 0) -> np.ndarray:
        """Encrypt ``columns[k]`` (component k by position) into block residues.

        With the native backend and one data prime, the block is encrypted in
        C (:class:`~pprm.matching.encrypt_native.NativeEncryptor`, the same
        distribution as SEAL's ``encrypt_symmetric``); otherwise, one
        ciphertext at a time through SEAL. Either way ``progress`` is called
        every 32 ciphertexts and after the last one.
        """
        p = self.ctx.params
        native = self._native_encryptor()
        if native is not None:

            def rows_done(k: int) -> None:
                if progress:
                    progress(done + k, total)

            return native.encrypt_columns(columns, rows_done)
        out = np.empty(self.gallery.block_shape, dtype=np.uint64)
        ct = seal.Ciphertext(self.ctx.seal)
        slot_values = pack_columns(columns, p)
        for k in range(columns.shape[0]):
            self._encryptor.encrypt_symmetric(self.ctx.encode(slot_values[k], p.gallery_scale_bits), ct)
            out[k] = self.ctx.to_residues(ct)
            # Every 32 ciphertexts, and after the last one whatever the dimension.
            if progress and ((k + 1) % 32 == 0 or k + 1 == columns.shape[0]):
                progress(done + k + 1, total)
        return out

    def _grid(self, values: np.ndarray) -> np.ndarray:
        """``values`` (float64) rounded to the enrolment grid, in place."""
        step = float(2**self.ctx.params.template_grid_bits)
        values *= step
        np.rint(values, out=values)
        values /= step
        return values

    def decrypt_record(self, block: int, slot: int) -> np.ndarray:
        """One enrolled template, exactly as enrolled (its block decrypted in memory, its slot kept).

        Args:
            block: the record's block.
            slot: its slot in the block.

        Returns:
            ``float64[d]`` on the enrolment grid: the values the blind
            database is built from.

        Warning:
            The result is a plaintext template: callers must not write, log
            or send it.
        """
        return self._decrypt_block(block)[:, slot].copy()

    def _decrypt_block(self, b: int, out: np.ndarray | None = None) -> np.ndarray:
        """Enrolled values of block ``b`` as ``float64[d, templates_per_block]``, exactly (memory only).

        ``out``, when given, is overwritten and returned: the export decrypts
        every block into one buffer instead of faulting in fresh memory per block.

        With the native backend the ciphertexts are decrypted in C and
        decoded with the float64 embedding (:mod:`pprm.crypto.embedding`):
        the values are the enrolment grid's plus noise of about 1e-5, which
        the grid rounding removes, so both paths give the same values.
        """
        p = self.ctx.params
        arr = self.gallery.block(b)
        native = self._native_encryptor()
        if native is not None:
            t = slot_transform(self.ctx.n)
            if out is None:
                out = np.empty((arr.shape[0], p.templates_per_block), dtype=np.float64)
            # A few dozen ciphertexts at a time: the temporaries (a few MiB)
            # are reused from one chunk to the next instead of a fresh 32 MiB
            # array per step, which cost more in page faults than the work.
            for k0 in range(0, arr.shape[0], _DECODE_ROWS):
                coeffs = native.decrypt_coefficients(arr[k0:k0 + _DECODE_ROWS]).astype(np.float64)
                values = t.to_slots(t.spectrum(coeffs))
                values /= float(2**p.gallery_scale_bits)
                out[k0:k0 + _DECODE_ROWS] = unpack_slots(values if p.packing == "complex" else values.real, p)
            return self._grid(out)
        cols = np.empty((arr.shape[0], p.templates_per_block), dtype=np.float64) if out is None else out
        pt = seal.Plaintext()
        for k in range(arr.shape[0]):
            self._decryptor.decrypt(self.ctx.from_residues(arr[k], float(2**p.gallery_scale_bits)), pt)
            raw = self.ctx.decode_complex(pt) if p.packing == "complex" else self.ctx.decode(pt)
            cols[k] = unpack_slots(raw, p)
        return self._grid(cols)

    def enroll(self, templates: np.ndarray, references: Sequence[str],
               progress: Progress | None = None,
               before_switch: Callable[[str, int], None] | None = None) -> list[int]:
        """Validate, normalise, encrypt and store templates.

        New templates first fill free slots of blocks that can take another
        encryption (a fresh ciphertext added homomorphically: the existing
        content is not re-encrypted), then open new blocks.

        Args:
            templates: ``(N, dim)`` floats.
            references: one unique reference per row.
            progress: called with ``(templates done, templates)``: at the
                start, then every 32 ciphertexts, a block's templates counting
                as done in proportion to its components encrypted (one
                ciphertext per component, whatever the number of templates in
                the block); the last call, once everything is encrypted and
                before the last blocks are durable, is ``(N, N)``.
            before_switch: see :meth:`EncryptedGallery.commit`.

        Returns:
            The new record ids.

        Raises:
            TemplateError: bad shape, NaN, zero vector; references not a
                sequence of strings (:func:`~pprm.matching.templates.validate_references`),
                not one per row, invalid or duplicate. Nothing is written.
        """
        g = self.gallery
        # References first: checking them is cheap, and a generator must fail before any work.
        refs = reference_list(references)
        tpl = normalise_templates(templates, g.dim)  # float32; put on the grid block by block
        refs = validate_references(refs, tpl.shape[0], g.index.references.values())
        index = g.index.copy()
        slots = self.ctx.templates_per_block
        placements: dict[int, list[tuple[int, int]]] = {}  # block -> [(row, slot)]
        row = 0
        for b, blk in enumerate(index.blocks):
            if row >= len(refs):
                break
            if blk.encryptions >= MAX_ENCRYPTIONS_PER_BLOCK:
                continue
            free = blk.free_slots()
            if free:
                take = free[: len(refs) - row]
                placements[b] = [(row + i, s) for i, s in enumerate(take)]
                row += len(take)
        while row < len(refs):
            index.blocks.append(Block("", 0, np.full(slots, -1, dtype=np.int64)))
            b = len(index.blocks) - 1
            n = min(slots, len(refs) - row)
            placements[b] = [(row + i, i) for i in range(n)]
            row += n
        ids: list[int] = []
        total = len(refs)
        if progress is not None:
            progress(0, total)
        # Each block is written (and fsynced) on a helper thread while the
        # next one is encrypted: writing 64 MiB runs at the disk's pace once
        # the page cache's dirty limit is reached, which took as long as the
        # encryption itself. Nothing references the files until the commit.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="pprm-write") as writer:
            pending: dict[int, Future[str]] = {}
            try:
                self._enroll_blocks(placements, index, tpl, refs, ids, progress, total, writer, pending)
                changed = {b: f.result() for b, f in pending.items()}
            except BaseException:
                for f in pending.values():
                    with contextlib.suppress(BaseException):
                        g.discard_block(f.result())
                raise
        g.commit(index, changed, before_switch)
        return ids

    def _enroll_blocks(self, placements: dict[int, list[tuple[int, int]]], index: GalleryIndex, tpl: np.ndarray,
                       refs: list[str], ids: list[int], progress: Progress | None, total: int,
                       writer: ThreadPoolExecutor, pending: dict[int, Future[str]]) -> None:
        """Encrypt each placement's block and hand it to ``writer``; see :meth:`enroll`."""
        g = self.gallery
        slots = self.ctx.templates_per_block
        done = 0
        cols = np.empty((g.dim, slots), dtype=np.float64)  # reused: a fresh one per block costs page faults
        for b, items in sorted(placements.items()):
            blk = index.blocks[b]
            rows = np.fromiter((r for r, _ in items), dtype=np.int64, count=len(items))
            at = np.fromiter((s for _, s in items), dtype=np.int64, count=len(items))
            cols.fill(0.0)
            cols[:, at] = self._grid(tpl[rows].astype(np.float64)).T
            rids = list(range(index.next_id, index.next_id + len(items)))
            index.next_id += len(items)
            blk.slots[at] = rids
            index.references.update(zip(rids, (refs[r] for r in rows.tolist()), strict=True))
            ids.extend(rids)
            # Counted in templates: a block with few new templates costs as much as a full one.
            steps = None if progress is None else _template_steps(progress, done, len(items), g.dim, total)
            fresh = self._encrypt_columns(cols, steps, 0, g.dim)
            done += len(items)
            if blk.encryptions:
                # Add the fresh encryption to the stored block: slot-wise sum.
                old = g.block(b)
                for j, q in enumerate(self.ctx.moduli):
                    s_ = old[:, :, j, :] + fresh[:, :, j, :]  # < 2**61, no overflow
                    fresh[:, :, j, :] = np.where(s_ >= np.uint64(q), s_ - np.uint64(q), s_)
            blk.encryptions += 1
            pending[b] = writer.submit(g.write_block, fresh)

    def remove(self, reference: str, before_switch: Callable[[str, int], None] | None = None) -> int:
        """Remove one reference: its slot is zeroed and its block re-encrypted.

        Args:
            reference: an enrolled reference.
            before_switch: see :meth:`EncryptedGallery.commit`.

        Returns:
            The removed record id.

        Raises:
            TemplateError: ``reference`` is not a string.
            GalleryError: the reference is not enrolled.

        Warning:
            Removal decrypts the block in memory and re-encrypts it with fresh
            randomness, so the old ciphertext of the record is gone from the
            store, not just masked out. The other records of the block come
            back exactly (grid rounding), so their noise is reset, not grown.
        """
        if not isinstance(reference, str):
            raise TemplateError(f"the reference is {type(reference).__name__}, not str; nothing was removed")
        g = self.gallery
        index = g.index.copy()
        rid = index.record_of(reference)
        b, s = index.locate(rid)
        cols = self._decrypt_block(b)
        cols[:, s] = 0.0
        blk = index.blocks[b]
        blk.slots[s] = -1
        cols[:, ~blk.occupancy()] = 0.0
        del index.references[rid]
        blk.encryptions = 1
        g.commit(index, {b: self._encrypt_columns(cols)}, before_switch)
        return rid

    def remove_many(self, references: Sequence[str], before_switch: Callable[[str, int], None] | None = None,
                    progress: Progress | None = None) -> list[int]:
        """Remove several references at once: one decryption and re-encryption per block that loses a record.

        All or nothing: every new block is durable before the index switches,
        once, to all of them (:meth:`EncryptedGallery.commit`), so a crash
        leaves either the gallery before the call or the gallery after it.
        Each new block is staged in a scratch file beside the blocks (0600,
        ciphertext only) until the commit, so memory holds one block at a
        time however many blocks change; scratch files a crash leaves behind
        are deleted by the next commit, as any unreferenced block file is.

        Args:
            references: enrolled references, each at most once.
            before_switch: see :meth:`EncryptedGallery.commit`; called once.
            progress: called with ``(blocks re-encrypted, blocks to re-encrypt)``.

        Returns:
            The removed record ids, in the order of ``references`` (empty for
            an empty list: nothing changes).

        Raises:
            TemplateError: ``references`` is not a sequence of strings
                (:func:`~pprm.matching.templates.reference_list`). Nothing changes.
            GalleryError: a reference is not enrolled, or listed twice; the
                message names the first one and its index (from 0). Nothing
                changes.

        Warning:
            As :meth:`remove`: each changed block is decrypted in memory and
            encrypted afresh, so the removed records' old ciphertexts are gone
            from the store once the old block files are deleted after the switch.
        """
        g = self.gallery
        index = g.index.copy()
        rids = _record_ids(index.references, references)
        if not rids:
            return []
        wanted = np.asarray(rids, dtype=np.int64)
        groups = {b: np.flatnonzero(np.isin(blk.slots, wanted)) for b, blk in enumerate(index.blocks)}
        groups = {b: slots for b, slots in groups.items() if slots.size}
        blocks_dir = os.path.join(g.directory, "blocks")
        os.makedirs(blocks_dir, exist_ok=True)
        scratch: list[str] = []
        changed: dict[int, np.ndarray] = {}
        try:
            for done, (b, slots) in enumerate(sorted(groups.items()), start=1):
                cols = self._decrypt_block(b)
                blk = index.blocks[b]
                for rid in blk.slots[slots]:
                    del index.references[int(rid)]
                blk.slots[slots] = -1
                cols[:, ~blk.occupancy()] = 0.0
                blk.encryptions = 1
                fd, path = tempfile.mkstemp(prefix="tmp-", suffix=".npy", dir=blocks_dir)
                os.close(fd)
                scratch.append(path)
                staged = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint64, shape=g.block_shape)
                staged[...] = self._encrypt_columns(cols)
                staged.flush()
                changed[b] = staged
                if progress is not None:
                    progress(done, len(groups))
            g.commit(index, changed, before_switch)
        finally:
            changed.clear()
            for path in scratch:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
        return rids

    def export_templates(self) -> tuple[np.ndarray, np.ndarray]:
        """Decrypt every enrolled template, exactly (grid values), in memory.

        Returns:
            ``(record_ids int64[n], templates float64[n, d])`` in gallery order.

        Warning:
            This is the plaintext gallery. It exists to build the blind
            profile's diagonals (kept under ``private/`` at rest); callers must not
            write it anywhere.
        """
        blocks = self.gallery.index.blocks
        used = [blk.occupancy() for blk in blocks]
        total = sum(int(u.sum()) for u in used)
        # Filled in place: the plaintext gallery is the largest array here,
        # and a copy per block plus a concatenation touched it three times.
        ids = np.empty(total, dtype=np.int64)
        rows = np.empty((total, self.gallery.dim), dtype=np.float64)
        at = 0
        cols: np.ndarray | None = None
        for b, blk in enumerate(blocks):
            count = int(used[b].sum())
            if not count:
                continue
            cols = self._decrypt_block(b, cols)
            ids[at:at + count] = blk.slots[used[b]]
            rows[at:at + count] = cols.T if count == cols.shape[1] else cols[:, used[b]].T
            at += count
        return ids, rows


def _record_ids(enrolled: dict[int, str], references: Sequence[str]) -> list[int]:
    """The record id of each reference, or an error naming the first bad, unknown or repeated one (by index)."""
    by_ref = {ref: rid for rid, ref in enrolled.items()}
    first: dict[str, int] = {}
    out = []
    for i, ref in enumerate(reference_list(references)):
        rid = by_ref.get(ref)
        if rid is None:
            raise GalleryError(f"reference {shown_reference(ref)} is not enrolled (at index {i}); nothing was removed")
        if ref in first:
            raise GalleryError(f"reference {shown_reference(ref)} is listed twice (at index {first[ref]} and {i});"
                               " nothing was removed")
        first[ref] = i
        out.append(rid)
    return out


def _template_steps(progress: Progress, before: int, count: int, dim: int, total: int) -> Progress:
    """Ciphertexts of one block (``dim`` of them) reported as templates: ``count`` of them, after ``before``."""

    def step(encrypted: int, _of: int) -> None:
        progress(before + count * encrypted // dim, total)

    return step
