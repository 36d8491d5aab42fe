"""The encrypted gallery and its owner: append, removal, binding, atomicity, no plaintext at rest.

Everything runs State-free: a CKKS context, a key pair, an EncryptedGallery
in ``tmp_path`` and a GalleryOwner, on the insecure N=1024 set (512 slots
per block) with 32-dimensional templates to keep encryption cheap.

Tolerance: a decrypted component carries the noise of at most
MAX_ENCRYPTIONS_PER_BLOCK fresh symmetric encryptions at scale 2**24, measured
at ~6e-6 std (2.6e-5 max) for two at N=1024; ``TOL = 1e-4`` is ~16 standard
deviations and still below half a template-grid step (2**-13 = 1.2e-4), which
is what lets the owner round decrypted blocks back exactly.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
import tenseal.sealapi as seal

from pprm.crypto import params
from pprm.crypto.context import CkksContext
from pprm.errors import GalleryError, ParameterError, PprmError, StateError, TemplateError
from pprm.matching.gallery import GALLERY_MEMORY_ENV, MAX_ENCRYPTIONS_PER_BLOCK, EncryptedGallery, gallery_memory
from pprm.matching.owner import GalleryOwner
from pprm.matching.templates import normalise_templates

DIM = 32
TOL = 1e-4

Env = tuple[EncryptedGallery, GalleryOwner]


@pytest.fixture
def env(
        tmp_path: Path, sealed_ctx: CkksContext, sealed_keypair: tuple[seal.SecretKey, seal.PublicKey],
        sealed_key_id: str) -> Env:
    gallery = EncryptedGallery(str(tmp_path / "gallery"), sealed_ctx.params, sealed_key_id, DIM)
    return gallery, GalleryOwner(sealed_ctx, sealed_keypair[0], gallery)


def _templates(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def _refs(prefix: str, n: int) -> list[str]:
    return [f"{prefix}-{i:05d}" for i in range(n)]


def _grid(ctx: CkksContext, x: np.ndarray) -> np.ndarray:
    step = float(2**ctx.params.template_grid_bits)
    return np.rint(np.asarray(x, dtype=np.float64) * step) / step


def _decrypt_block(ctx: CkksContext, sk: seal.SecretKey, gallery: EncryptedGallery, b: int) -> np.ndarray:
    """Raw decrypted slot values of block ``b``, ``float64[DIM, slots]`` (no rounding)."""
    arr = gallery.block(b)
    out = np.empty((arr.shape[0], ctx.slots))
    dec = seal.Decryptor(ctx.seal, sk)
    pt = seal.Plaintext()
    for k in range(arr.shape[0]):
        dec.decrypt(ctx.from_residues(arr[k], float(2**ctx.params.gallery_scale_bits)), pt)
        out[k] = ctx.decode(pt)
    return out


def _snapshot(directory: Path) -> dict[str, bytes]:
    out = {}
    for root, _dirs, files in os.walk(directory):
        for f in files:
            p = os.path.join(root, f)
            out[os.path.relpath(p, directory)] = Path(p).read_bytes()
    return out


def _block_path(gallery: EncryptedGallery, b: int) -> Path:
    return Path(gallery.directory, "blocks", gallery.index.blocks[b].file)


def _expect_slots(ctx: CkksContext, values: np.ndarray, slots: dict[int, np.ndarray]) -> None:
    """Occupied slots decrypt to their grid-rounded templates; every other slot to ~0."""
    expected = np.zeros_like(values)
    for s, row in slots.items():
        expected[:, s] = _grid(ctx, row)
    assert np.abs(values - expected).max() < TOL


def test_enroll_then_append_leaves_other_blocks_untouched(
        env: Env, sealed_ctx: CkksContext, sealed_keypair: tuple[seal.SecretKey, seal.PublicKey]) -> None:
    gallery, owner = env
    first = _templates(sealed_ctx.slots + 10, 1)
    ids = owner.enroll(first, _refs("A", len(first)))
    assert ids == list(range(len(first)))
    assert len(gallery.index.blocks) == 2 and len(gallery) == len(first)
    full_file = gallery.index.blocks[0].file
    full_bytes = _block_path(gallery, 0).read_bytes()
    tail_file = gallery.index.blocks[1].file

    second = _templates(5, 2)
    new_ids = owner.enroll(second, _refs("B", 5))
    assert new_ids == list(range(len(first), len(first) + 5))
    # Block 0 (full) is neither rewritten nor renamed: same file, same bytes.
    assert gallery.index.blocks[0].file == full_file
    assert _block_path(gallery, 0).read_bytes() == full_bytes
    # Block 1 got a new version with the free slots 10..14 filled.
    blk = gallery.index.blocks[1]
    assert blk.file != tail_file and not (Path(gallery.directory) / "blocks" / tail_file).exists()
    assert blk.encryptions == 2
    assert blk.slots[:15].tolist() == list(range(sealed_ctx.slots, sealed_ctx.slots + 10)) + new_ids
    assert (blk.slots[15:] == -1).all()

    values = _decrypt_block(sealed_ctx, sealed_keypair[0], gallery, 1)
    want = {i: normalise_templates(first, DIM)[sealed_ctx.slots + i] for i in range(10)}
    want.update({10 + i: normalise_templates(second, DIM)[i] for i in range(5)})
    _expect_slots(sealed_ctx, values, want)
    # And the state survives a reopen.
    again = EncryptedGallery(gallery.directory, sealed_ctx.params, gallery.key_id, DIM)
    assert again.index.to_json() == gallery.index.to_json()


def test_block_takes_at_most_max_encryptions(
        env: Env, sealed_ctx: CkksContext, sealed_keypair: tuple[seal.SecretKey, seal.PublicKey]) -> None:
    gallery, owner = env
    rows = _templates(MAX_ENCRYPTIONS_PER_BLOCK + 1, 3)
    for i in range(MAX_ENCRYPTIONS_PER_BLOCK):
        owner.enroll(rows[i: i + 1], [f"R{i}"])
        assert len(gallery.index.blocks) == 1
        assert gallery.index.blocks[0].encryptions == i + 1
    # The block has free slots left, but one more encryption is not allowed.
    owner.enroll(rows[-1:], ["R-last"])
    assert len(gallery.index.blocks) == 2
    assert gallery.index.blocks[0].encryptions == MAX_ENCRYPTIONS_PER_BLOCK
    assert gallery.index.blocks[1].encryptions == 1
    assert gallery.index.blocks[1].slots[0] == MAX_ENCRYPTIONS_PER_BLOCK
    # The summed block still rounds back to exactly what was enrolled.
    values = _decrypt_block(sealed_ctx, sealed_keypair[0], gallery, 0)
    unit = normalise_templates(rows, DIM)
    _expect_slots(sealed_ctx, values, {i: unit[i] for i in range(MAX_ENCRYPTIONS_PER_BLOCK)})
    assert np.array_equal(_grid(sealed_ctx, values[:, :MAX_ENCRYPTIONS_PER_BLOCK]),
                          _grid(sealed_ctx, unit[:MAX_ENCRYPTIONS_PER_BLOCK].T))


def test_remove_zeroes_the_slot_and_frees_it(
        env: Env, sealed_ctx: CkksContext, sealed_keypair: tuple[seal.SecretKey, seal.PublicKey]) -> None:
    gallery, owner = env
    rows = _templates(20, 4)
    owner.enroll(rows[:12], _refs("A", 12))
    owner.enroll(rows[12:], _refs("B", 8))  # an appended block: 2 encryptions
    old_file = gallery.index.blocks[0].file
    assert gallery.index.blocks[0].encryptions == 2

    rid = owner.remove("A-00005")
    assert rid == 5
    blk = gallery.index.blocks[0]
    assert blk.slots[5] == -1 and 5 not in gallery.index.references
    assert "A-00005" not in gallery.index.references.values()
    with pytest.raises(GalleryError):
        gallery.index.record_of("A-00005")
    # The block was re-encrypted afresh: new file, old one gone, count reset.
    assert blk.file != old_file and not (Path(gallery.directory) / "blocks" / old_file).exists()
    assert blk.encryptions == 1

    values = _decrypt_block(sealed_ctx, sealed_keypair[0], gallery, 0)
    unit = normalise_templates(rows, DIM)
    keep = {i: unit[i] for i in range(20) if i != 5}
    _expect_slots(sealed_ctx, values, keep)  # slot 5 included: ~0 within TOL
    assert np.abs(values[:, 5]).max() < TOL

    # The freed slot is reused by the next enrolment.
    owner.enroll(_templates(1, 5), ["C-0"])
    assert gallery.index.blocks[0].slots[5] == 20
    assert gallery.index.references[20] == "C-0"


def test_removing_an_unknown_reference_changes_nothing(env: Env) -> None:
    gallery, owner = env
    owner.enroll(_templates(3, 6), _refs("A", 3))
    before = _snapshot(Path(gallery.directory))
    index_before = gallery.index.to_json()
    for ref in ("A-99999", "", "a-00000", "A-00001 "):
        with pytest.raises(GalleryError):
            owner.remove(ref)
    assert _snapshot(Path(gallery.directory)) == before
    assert gallery.index.to_json() == index_before
    # A reference that was removed is unknown from then on.
    owner.remove("A-00001")
    after = _snapshot(Path(gallery.directory))
    assert after != before
    with pytest.raises(GalleryError):
        owner.remove("A-00001")
    assert _snapshot(Path(gallery.directory)) == after


def test_failed_enrolment_changes_no_files(env: Env) -> None:
    gallery, owner = env
    owner.enroll(_templates(4, 7), _refs("A", 4))
    before = _snapshot(Path(gallery.directory))
    index_before = gallery.index.to_json()
    nan = _templates(3, 8)
    nan[1, 0] = np.nan
    bad_inputs = [
        (nan, _refs("B", 3)),
        (_templates(3, 8), ["B-1", "B-2", "B-1"]),
        (_templates(2, 8), ["B-1", "A-00002"]),
        (_templates(2, 8), ["B-1"]),
        (np.ones((2, DIM + 1), dtype=np.float32), ["B-1", "B-2"]),
        (np.zeros((1, DIM), dtype=np.float32), ["B-1"]),
        (np.ones((1, DIM), dtype=np.int64), ["B-1"]),
        (_templates(1, 8), ["bad\nref"]),
    ]
    for tpl, refs in bad_inputs:
        with pytest.raises(TemplateError):
            owner.enroll(tpl, refs)
    assert _snapshot(Path(gallery.directory)) == before
    assert gallery.index.to_json() == index_before


def test_an_enrolment_that_fails_after_writing_blocks_leaves_no_file(
        env: Env, sealed_ctx: CkksContext, monkeypatch: pytest.MonkeyPatch) -> None:
    # Blocks are written while the next is encrypted; a failure on a later
    # block must take the files already written with it.
    gallery, owner = env
    owner.enroll(_templates(4, 7), _refs("A", 4))
    before = _snapshot(Path(gallery.directory))
    index_before = gallery.index.to_json()
    real = owner._encrypt_columns
    calls: list[int] = []

    def fail_on_third(*args: object, **kwargs: object) -> np.ndarray:
        calls.append(1)
        if len(calls) == 3:
            raise MemoryError("simulated")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(owner, "_encrypt_columns", fail_on_third)
    n = 2 * sealed_ctx.templates_per_block + 1  # the free block, then two new ones
    with pytest.raises(MemoryError):
        owner.enroll(_templates(n, 9), _refs("B", n))
    assert len(calls) == 3
    assert _snapshot(Path(gallery.directory)) == before
    assert gallery.index.to_json() == index_before


def test_commit_takes_only_written_block_files(env: Env) -> None:
    gallery, owner = env
    owner.enroll(_templates(4, 7), _refs("A", 4))
    index = gallery.index.copy()
    with pytest.raises(GalleryError, match="not written"):
        gallery.commit(index, {0: "b-never-written.npy"})
    with pytest.raises(GalleryError, match="not written"):
        gallery.commit(index, {0: "../index.json"})
    with pytest.raises(GalleryError, match="references"):
        gallery.discard_block(gallery.index.blocks[0].file)
    name = gallery.write_block(gallery.block(0).copy())
    gallery.discard_block(name)
    assert not Path(gallery.directory, "blocks", name).exists()


def test_gallery_is_bound_to_key_params_and_dimension(env: Env, sealed_ctx: CkksContext, sealed_key_id: str) -> None:
    gallery, owner = env
    owner.enroll(_templates(2, 9), _refs("A", 2))
    d = gallery.directory
    EncryptedGallery(d, sealed_ctx.params, sealed_key_id, DIM)  # the right binding opens
    with pytest.raises(StateError, match="another CKKS key"):
        EncryptedGallery(d, sealed_ctx.params, "0" * 32, DIM)
    with pytest.raises(StateError, match="parameter set"):
        EncryptedGallery(d, params.get("pprm-sealed-n4096-v1"), sealed_key_id, DIM)
    with pytest.raises(StateError, match="dimension"):
        EncryptedGallery(d, sealed_ctx.params, sealed_key_id, DIM * 2)


def test_corrupt_index_and_blocks_are_refused(env: Env, sealed_ctx: CkksContext, sealed_key_id: str) -> None:
    gallery, owner = env
    owner.enroll(_templates(2, 10), _refs("A", 2))
    index = Path(gallery.directory, "index.json")
    good = index.read_bytes()
    index.write_text('{"format": "pprm-gallery/1"}')
    with pytest.raises(StateError):
        EncryptedGallery(gallery.directory, sealed_ctx.params, sealed_key_id, DIM)
    index.write_bytes(good)
    # A block file of the wrong shape, then a missing one.
    path = _block_path(gallery, 0)
    np.save(path, np.zeros((DIM, 2, 1, 8), dtype=np.uint64))
    with pytest.raises(GalleryError, match="shape"):
        EncryptedGallery(gallery.directory, sealed_ctx.params, sealed_key_id, DIM).block(0)
    path.unlink()
    with pytest.raises(GalleryError, match="missing"):
        EncryptedGallery(gallery.directory, sealed_ctx.params, sealed_key_id, DIM).block(0)


def test_no_plaintext_template_bytes_on_disk(env: Env, sealed_ctx: CkksContext) -> None:
    gallery, owner = env
    rows = _templates(6, 11)
    owner.enroll(rows, _refs("A", 6))
    unit = normalise_templates(rows, DIM)
    files = _snapshot(Path(gallery.directory))
    assert any(name.startswith("blocks") for name in files)
    # Every 16-byte run of float32 components (4 in a row), and every 8-byte
    # float64 component, of the input, the normalised and the grid-rounded
    # rows: a random ciphertext contains one by chance with probability ~2**-100.
    needles: set[bytes] = set()
    for form in (rows, unit, _grid(sealed_ctx, unit).astype(np.float32)):
        raw = np.ascontiguousarray(form, dtype="<f4").tobytes()
        needles.update(raw[i: i + 16] for i in range(0, len(raw) - 15, 4))
    for form64 in (unit.astype(np.float64), _grid(sealed_ctx, unit)):
        raw = np.ascontiguousarray(form64, dtype="<f8").tobytes()
        needles.update(raw[i: i + 8] for i in range(0, len(raw), 8) if raw[i: i + 8] != bytes(8))
    for name, blob in files.items():
        leaked = [n for n in needles if n in blob]
        assert not leaked, f"{name} contains template bytes"
    # The index holds references and slot numbers, never a fractional number.
    assert re.search(rb"\d\.\d", files["index.json"]) is None


def test_blocks_load_memory_mapped_read_only(env: Env, sealed_ctx: CkksContext, sealed_key_id: str) -> None:
    gallery, owner = env
    owner.enroll(_templates(3, 12), _refs("A", 3))
    fresh = EncryptedGallery(gallery.directory, sealed_ctx.params, sealed_key_id, DIM)
    arr = fresh.block(0)
    assert isinstance(arr, np.memmap)
    assert arr.shape == fresh.block_shape == (DIM, 2, 1, sealed_ctx.n) and arr.dtype == np.uint64
    assert not arr.flags.writeable
    assert fresh.block(0) is arr  # mapped once, then reused
    assert fresh.stored_bytes() >= arr.nbytes


def test_resident_blocks_hold_the_same_words_in_process_memory(
        env: Env, sealed_ctx: CkksContext, sealed_key_id: str, monkeypatch: pytest.MonkeyPatch) -> None:
    gallery, owner = env
    owner.enroll(_templates(600, 14), _refs("A", 600))  # two blocks at 512 slots
    mapped = [np.array(gallery.block(b)) for b in range(2)]
    monkeypatch.setenv(GALLERY_MEMORY_ENV, "resident")
    assert gallery_memory() == "resident"
    view = EncryptedGallery(gallery.directory, sealed_ctx.params, sealed_key_id, DIM)
    seen: list[tuple[int, int]] = []
    view.preload(lambda done, total: seen.append((done, total)))
    assert seen == [(1, 2), (2, 2)]
    for b in range(2):
        arr = view.block(b)
        assert not isinstance(arr, np.memmap) and not arr.flags.writeable
        assert np.array_equal(arr, mapped[b])
    # Other views of the process share the resident copy; back to mapped, files are mapped again.
    assert EncryptedGallery(gallery.directory, sealed_ctx.params, sealed_key_id, DIM).block(0) is view.block(0)
    monkeypatch.setenv(GALLERY_MEMORY_ENV, "mapped")
    assert isinstance(EncryptedGallery(gallery.directory, sealed_ctx.params, sealed_key_id, DIM).block(0), np.memmap)


def test_resident_blocks_are_checked_as_mapped_ones(
        env: Env, sealed_ctx: CkksContext, sealed_key_id: str, monkeypatch: pytest.MonkeyPatch) -> None:
    gallery, owner = env
    owner.enroll(_templates(2, 15), _refs("A", 2))
    monkeypatch.setenv(GALLERY_MEMORY_ENV, "resident")
    path = _block_path(gallery, 0)
    np.save(path, np.zeros((DIM, 2, 1, 8), dtype=np.uint64))
    with pytest.raises(GalleryError, match="shape"):
        EncryptedGallery(gallery.directory, sealed_ctx.params, sealed_key_id, DIM).block(0)
    path.write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(GalleryError, match="unreadable"):
        EncryptedGallery(gallery.directory, sealed_ctx.params, sealed_key_id, DIM).block(0)


@pytest.mark.parametrize("value", ["ram", "RESIDENTS", "1"])
def test_an_unknown_gallery_memory_mode_is_one_typed_line(
        env: Env, sealed_ctx: CkksContext, sealed_key_id: str, monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    gallery, owner = env
    owner.enroll(_templates(2, 16), _refs("A", 2))
    monkeypatch.setenv(GALLERY_MEMORY_ENV, value)
    with pytest.raises(ParameterError, match=GALLERY_MEMORY_ENV) as err:
        EncryptedGallery(gallery.directory, sealed_ctx.params, sealed_key_id, DIM).block(0)
    assert isinstance(err.value, PprmError) and "\n" not in str(err.value)
    monkeypatch.setenv(GALLERY_MEMORY_ENV, " Resident ")  # case and spaces do not matter
    assert gallery_memory() == "resident"


def test_views_share_their_maps_until_a_block_changes(env: Env, sealed_ctx: CkksContext,
                                                      sealed_key_id: str) -> None:
    from pprm.matching import gallery as gallery_module

    gallery, owner = env
    owner.enroll(_templates(3, 13), _refs("A", 3))

    def view() -> EncryptedGallery:
        return EncryptedGallery(gallery.directory, sealed_ctx.params, sealed_key_id, DIM)

    first = view().block(0)
    assert view().block(0) is first  # one mapping per block file for every view of the process
    old = os.path.abspath(_block_path(gallery, 0))
    assert old in gallery_module._shared_maps
    owner.remove("A-00001")  # re-encrypts block 0 into a new file
    later = view()
    assert old not in gallery_module._shared_maps  # the replaced file's map left the cache
    assert later.block(0) is not first
    assert np.array_equal(later.block(0), np.load(_block_path(later, 0)))
    # A file changed in place is mapped afresh and checked, never served from the cache.
    np.save(_block_path(later, 0), np.zeros((DIM, 2, 1, 8), dtype=np.uint64))
    with pytest.raises(GalleryError, match="shape"):
        view().block(0)


def test_references_live_in_one_switched_file_off_the_matcher_path(
        env: Env, sealed_ctx: CkksContext, sealed_key_id: str) -> None:
    gallery, owner = env
    owner.enroll(_templates(20, 9), _refs("R", 20))
    owner.remove("R-00003")
    root = Path(gallery.directory)
    refs_files = sorted(p.name for p in root.glob("refs-*.json"))
    # Exactly the file the index names survives; the superseded ones are gone.
    assert refs_files == [gallery.index.refs_file]
    # Opening the gallery reads the slot maps only; references load on demand.
    fresh = EncryptedGallery(gallery.directory, sealed_ctx.params, sealed_key_id, DIM)
    assert fresh.index._references is None
    assert len(fresh) == 19
    assert fresh.index._references is None
    assert "R-00003" not in fresh.index.references.values() and len(fresh.index.references) == 19
    # A damaged references file is a clear StateError, not a crash.
    (root / gallery.index.refs_file).write_text("{not json")
    broken = EncryptedGallery(gallery.directory, sealed_ctx.params, sealed_key_id, DIM)
    with pytest.raises(StateError, match="references"):
        _ = broken.index.references


def test_a_reopened_gallery_sees_every_commit_and_shares_no_writable_map(
        env: Env, sealed_ctx: CkksContext, sealed_key_id: str) -> None:
    # Opening a gallery reuses the parsed index while index.json is the same
    # file; every commit renames a new file over it.
    gallery, owner = env
    owner.enroll(_templates(4, 7), _refs("A", 4))
    first = EncryptedGallery(gallery.directory, sealed_ctx.params, sealed_key_id, DIM)
    again = EncryptedGallery(gallery.directory, sealed_ctx.params, sealed_key_id, DIM)
    assert again.version == first.version and len(again) == 4
    with pytest.raises(ValueError):
        again.index.blocks[0].slots[0] = 7  # shared maps are read-only
    owner.enroll(_templates(3, 8), _refs("B", 3))
    owner.remove("A-00001")
    after = EncryptedGallery(gallery.directory, sealed_ctx.params, sealed_key_id, DIM)
    assert after.version == gallery.version != first.version
    assert len(after) == 6 and len(first) == 4
    assert sorted(after.index.references.values()) == sorted(gallery.index.references.values())
