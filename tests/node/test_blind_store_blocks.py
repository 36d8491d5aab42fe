"""The blind database changes a block at a time, and a restart maps it instead of rebuilding or decrypting it.

A gallery of 2,500 templates on the test set fills three blocks of 1,024.
After a removal, and after an enrolment, ``prepare`` re-encodes only the one
block the change touched, under a fresh secret layout; the others are the
previous version's files (the same inodes) with the same layout. Answers
from the rebuilt database agree with the plaintext truth. A store opened
afresh maps the files (``np.memmap``), writes nothing, and a missing block
file is one clear error that changes nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from pprm import synthetic
from pprm.crypto import blind_keys
from pprm.crypto.answer_codec import decode_answer
from pprm.errors import StateError
from pprm.matching.blind import BlindMatcher, answer_scale
from pprm.matching.blind_client import decrypt_signs, encrypt_probe
from pprm.matching.diagonals import BlindDatabase
from pprm.node.blind_store import Prepared
from pprm.node.keyservice import KeyService
from pprm.node.state import State
from tests.helpers import INSECURE_BLIND, new_state, snapshot

N = 2500  # three blocks of 1,024
TAU = 0.4


def _prepare(st: State) -> Prepared:
    ks = KeyService(st)
    return st.blind_store.prepare(st.lock, lambda: st.gallery().version, ks.export_templates)


def _database(st: State) -> BlindDatabase:
    ks = KeyService(st)
    with st.lock():
        return st.blind_store.database(st.gallery().version, ks.export_templates)


def _blocks(st: State, version: str) -> list[tuple[int, frozenset[int]]]:
    """(inode, records) of each block file of a version."""
    vdir = Path(st.path("private", "blind-db", version))
    layout = st.blind_store.layout(version)
    return [(os.stat(vdir / f"block-{k}.npy").st_ino, frozenset(int(r) for r in layout[k][layout[k] >= 0]))
            for k in range(layout.shape[0])]


def _decisions_agree(st: State, templates: np.ndarray, rids: np.ndarray, probe: np.ndarray) -> None:
    """One blind answer over the whole database against the plaintext truth, record by record."""
    ctx = st.blind_ctx
    pair = blind_keys.generate(ctx)
    keys = blind_keys.load_announced(ctx, pair.public_blob, pair.galois_blob, pair.relin_blob)
    db = _database(st)
    ct = ctx.load_seeded_ciphertext(encrypt_probe(ctx, pair.secret_key, probe),
                                    scale=float(2**ctx.params.probe_scale_bits))
    answer = BlindMatcher(ctx, db).answer(ct, keys, TAU)
    got: dict[int, bool] = {}
    for pos, blk in enumerate(answer.order):
        signs = decrypt_signs(ctx, pair.secret_key, decode_answer(ctx, answer.ciphertexts[pos], answer_scale(ctx)))
        rec = db.slot_record[blk]
        got.update((int(r), bool(v)) for r, v in zip(rec[rec >= 0], signs[rec >= 0], strict=True))
    q = probe / np.linalg.norm(probe)
    truth = {int(r): bool(s > TAU) for r, s in zip(rids, templates @ q, strict=True)}
    assert got == truth
    assert any(truth.values())


@pytest.fixture
def state(tmp_path: Path) -> tuple[State, synthetic.SyntheticGallery]:
    st = new_state(tmp_path / "BB", "BB", blind_params=INSECURE_BLIND)
    g = synthetic.make_gallery(N, dim=st.config.dim, seed=7, prefix="BB")
    KeyService(st).enroll(g.templates, g.references)
    return st, g


def test_a_change_rebuilds_only_the_block_it_touches(state: tuple[State, synthetic.SyntheticGallery]) -> None:
    st, g = state
    first = _prepare(st)
    assert (first.built, first.blocks, first.reused, first.templates) == (True, 3, 0, N)
    v1 = first.version
    before = _blocks(st, v1)

    # A removal: the removed record's block is re-encoded, the two others are kept as they were.
    gone = g.references[17]
    gone_id = next(rid for rid, ref in st.gallery().index.references.items() if ref == gone)
    KeyService(st).remove(gone)
    second = _prepare(st)
    assert (second.built, second.blocks, second.reused, second.templates) == (True, 3, 2, N - 1)
    after = _blocks(st, second.version)
    touched = [k for k, (_ino, recs) in enumerate(before) if gone_id in recs]
    assert len(touched) == 1
    for k in range(3):
        if k == touched[0]:
            assert after[k][1] == before[k][1] - {gone_id} and after[k][0] != before[k][0]
        else:
            assert after[k] == before[k]  # the same file (a hard link) and the same records
    old_layout, new_layout = st.blind_store.layout(v1), st.blind_store.layout(second.version)
    kept = [k for k in range(3) if k != touched[0]]
    assert all(np.array_equal(old_layout[k], new_layout[k]) for k in kept)
    # The rebuilt block gets a fresh secret layout: its positions are drawn again.
    t = touched[0]
    moved = [r for r in before[t][1] - {gone_id} if
             int(np.flatnonzero(old_layout[t] == r)[0]) != int(np.flatnonzero(new_layout[t] == r)[0])]
    assert len(moved) > 0.9 * len(before[t][1])
    # The old version keeps only its layout (follow-ups need it); its files go.
    assert sorted(os.listdir(st.path("private", "blind-db", v1))) == ["layout.sealed"]

    # An enrolment: the new records take room in one block; the others are kept.
    extra = synthetic.make_gallery(5, dim=st.config.dim, seed=8, prefix="XX")
    KeyService(st).enroll(extra.templates, extra.references)
    third = _prepare(st)
    assert (third.blocks, third.reused, third.templates) == (3, 2, N + 4)

    ids = np.array(sorted(st.gallery().index.references))
    by_ref = {ref: rid for rid, ref in st.gallery().index.references.items()}
    templates = np.concatenate([g.templates, extra.templates])
    refs = [*g.references, *extra.references]
    rows = [i for i, r in enumerate(refs) if r in by_ref]
    assert sorted(by_ref[refs[i]] for i in rows) == ids.tolist()
    for probe in (synthetic.mate_probe(g, 400, seed=1), synthetic.mate_probe(extra, 2, seed=2)):
        _decisions_agree(st, templates[rows], np.array([by_ref[refs[i]] for i in rows]), probe)


def test_a_restart_maps_the_blocks_and_writes_nothing(state: tuple[State, synthetic.SyntheticGallery]) -> None:
    st, _g = state
    assert _prepare(st).built
    before = snapshot(st.dir)
    fresh = State.open(st.dir)  # a new process's view: nothing in memory
    db = _database(fresh)
    assert db.blocks == 3 and all(isinstance(d, np.memmap) for d in db.diagonals)
    assert snapshot(st.dir) == before


def test_a_missing_block_file_is_one_clear_error(state: tuple[State, synthetic.SyntheticGallery]) -> None:
    st, _g = state
    version = _prepare(st).version
    os.unlink(st.path("private", "blind-db", version, "block-1.npy"))
    before = snapshot(st.dir)
    fresh = State.open(st.dir)
    with pytest.raises(StateError, match="block 1") as info:
        _database(fresh)
    assert "\n" not in str(info.value)
    assert snapshot(st.dir) == before


def test_a_kept_block_whose_file_vanished_is_encoded_again(state: tuple[State, synthetic.SyntheticGallery]) -> None:
    # Another process may publish a newer version and prune this one's files while a rebuild reads them.
    st, g = state
    v1 = _prepare(st).version
    before = _blocks(st, v1)
    gone_id = next(rid for rid, ref in st.gallery().index.references.items() if ref == g.references[3])
    untouched = next(k for k, (_ino, recs) in enumerate(before) if gone_id not in recs)
    os.unlink(st.path("private", "blind-db", v1, f"block-{untouched}.npy"))
    KeyService(st).remove(g.references[3])
    done = _prepare(st)
    assert (done.built, done.blocks, done.reused, done.templates) == (True, 3, 1, N - 1)
    after = _blocks(st, done.version)
    assert after[untouched][1] == before[untouched][1]
    # Encoded again, under a fresh layout (an inode number may be reused, a layout is not).
    old, new = st.blind_store.layout(v1)[untouched], st.blind_store.layout(done.version)[untouched]
    assert not np.array_equal(old, new)


def test_a_copy_without_private_holds_no_diagonal(state: tuple[State, synthetic.SyntheticGallery]) -> None:
    # The storage thief of THREAT_MODEL §3.10 who copies the state directory but not private/:
    # the diagonals are stored unencrypted (to be memory-mapped), so they must all be in private/.
    st, g = state
    version = _prepare(st).version
    block = np.load(st.path("private", "blind-db", version, "block-0.npy"))
    # Needles: stretches of the encoded diagonals, and of the templates as float64 and float32.
    needles = [block.reshape(-1)[i:i + 8].tobytes() for i in (0, 12_345, block.size // 2)]
    needles += [g.templates[i].astype(np.float64).tobytes()[:64] for i in (0, 100)]
    needles += [g.templates[i].astype(np.float32).tobytes()[:32] for i in (0, 100)]
    with open(st.path("private", "blind-db", version, "block-0.npy"), "rb") as fh:
        stored = fh.read()
    assert all(n in stored for n in needles[:3])  # the search finds diagonals where they are
    outside = []
    for root, dirs, files in os.walk(st.dir):
        dirs[:] = [d for d in dirs if os.path.join(root, d) != st.path("private")]
        outside += [os.path.join(root, f) for f in files]
    assert outside and not any(f.endswith(".npy") and "blind" in f for f in outside)
    for path in outside:
        with open(path, "rb") as fh:
            data = fh.read()
        assert not any(n in data for n in needles), path
    assert os.stat(st.path("private", "blind-db", version, "block-0.npy")).st_mode & 0o077 == 0


def test_a_block_encoded_into_a_given_buffer_overwrites_every_word() -> None:
    from pprm.crypto import blind_params
    from pprm.crypto.context import BlindContext
    from pprm.errors import ParameterError
    from pprm.matching.diagonals import build_block

    ctx = BlindContext(blind_params.get(INSECURE_BLIND, allow_insecure=True))
    p = ctx.params
    g = synthetic.make_gallery(300, dim=p.dim, seed=3, prefix="BU").templates
    shape = (p.giant_steps, p.baby_steps, p.data_primes, ctx.n)
    buf = np.full(shape, np.uint64(2**63), dtype=np.uint64)  # no residue is this large
    diag, rec, _signs = build_block(g, ctx, out=buf)
    assert diag is buf and (rec >= 0).sum() == 300
    assert all((buf[:, :, j] < np.uint64(q)).all() for j, q in enumerate(ctx.moduli[:p.data_primes]))
    with pytest.raises(ParameterError, match="out must be"):
        build_block(g, ctx, out=np.empty((*shape[:-1], ctx.n - 1), dtype=np.uint64))
