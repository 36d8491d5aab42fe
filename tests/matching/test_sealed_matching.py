"""Sealed matching end to end at the matching layer: SealedMatcher + SealedDecider.

The matcher runs from public material only; the decider (key service side)
turns masked results into hits. Encrypted decisions are compared with
plaintext cosine decisions on the same float32 templates and probes.
"""

from __future__ import annotations

import dataclasses
import gc
import shutil
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tenseal.sealapi as seal

from pprm.crypto import keys
from pprm.errors import CiphertextError, GalleryError, StateError
from pprm.matching.decide import SealedDecider
from pprm.matching.sealed import MaskedResult, SealedMatcher
from pprm.node.state import State
from tests.helpers import ScoredWorld, new_state
from tests.matching.masked_support import masked_values

DIM = 64
THRESHOLDS = (0.3, 0.4, 0.5)
N_ROWS = 700  # one full block of 512 and a partial one with free slots
SECRET_TYPES = (seal.SecretKey, seal.Decryptor, seal.Encryptor, seal.KeyGenerator)


@pytest.fixture
def world(make_world: Callable[..., ScoredWorld]) -> ScoredWorld:
    return make_world(N_ROWS, DIM, THRESHOLDS, seed=2024)


def _check_against_plaintext(world: ScoredWorld, hits: list[int], probe: np.ndarray, tau: float) -> int:
    """Assert hits == plaintext decisions wherever |s - tau| >= margin; return pairs checked."""
    margin = world.state.config.parameter_set.decision_margin
    got = set(hits)
    assert len(got) == len(hits), "a record is reported twice"
    assert got <= set(world.rows), "a hit names no enrolled record"
    checked = 0
    for rid, s in world.scores(probe).items():
        if abs(s - tau) >= margin:
            checked += 1
            assert (rid in got) == (s >= tau), f"record {rid}: s - tau = {s - tau:+.5f}"
    return checked


def test_hits_equal_plaintext_decisions(world: ScoredWorld) -> None:
    matcher = world.state.matcher()
    decider = SealedDecider(world.state.ctx, world.secret_key, world.gallery)
    checked = 0
    for probe, tau in zip(world.probes, THRESHOLDS, strict=True):
        result = matcher.match(probe, tau)
        assert len(result.ciphertexts) == len(world.gallery.index.blocks) == 2
        hits = decider.hits(result)
        assert 0.3 * N_ROWS < len(hits) < 0.7 * N_ROWS
        checked += _check_against_plaintext(world, hits, probe, tau)
    assert checked > 0.95 * N_ROWS * len(THRESHOLDS)


def test_progress_is_reported_per_block(world: ScoredWorld) -> None:
    calls: list[tuple[int, int]] = []
    world.state.matcher().match(world.probes[0], 0.4, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(1, 2), (2, 2)]


def _decrypt_result(world: ScoredWorld, result: MaskedResult) -> list[np.ndarray]:
    return masked_values(world.state.ctx, world.secret_key, result)


def test_free_and_removed_slots_never_hit(world: ScoredWorld) -> None:
    # Enrol the probe itself (score 1.0), check it hits, then remove it.
    probe = world.probes[0]
    (twin,) = world.owner.enroll(probe[None, :], ["TWIN"])
    b, slot = world.gallery.index.locate(twin)
    matcher = SealedMatcher(world.state.ctx, world.gallery)
    decider = SealedDecider(world.state.ctx, world.secret_key, world.gallery)
    assert twin in decider.hits(matcher.match(probe, 0.05))
    world.owner.remove("TWIN")

    tau = 0.05  # so low that almost every occupied slot is a hit
    result = matcher.match(probe, tau)
    hits = decider.hits(result)
    assert twin not in hits
    _check_against_plaintext(world, hits, probe, tau)
    # The mask itself makes free slots negative (not just the decider's
    # occupancy filter): r = 1, e = -1 gives about -tau - 1. Tolerance 0.1 is
    # ~4 standard deviations of r's encoding error at scale 2**10.
    values = _decrypt_result(world, result)
    free_checked = 0
    for blk, vals in zip(world.gallery.index.blocks, values, strict=True):
        free = ~blk.occupancy()
        free_checked += int(free.sum())
        assert (np.abs(vals[free] - (-tau - 1.0)) < 0.1).all()
    assert free_checked == 2 * world.state.ctx.slots - N_ROWS
    assert not world.gallery.index.blocks[b].occupancy()[slot]
    assert values[b][slot] < -1.0 + 0.1


def _reachable(root: object) -> Iterator[object]:
    """Every object reachable from ``root`` through instances and containers.

    Classes, modules and functions are not followed: they lead to the whole
    interpreter, and a key stored on one would have to be put there by an
    instance anyway.
    """
    seen: set[int] = set()
    stack = [root]
    stop = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.CodeType)
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        yield obj
        if not isinstance(obj, stop):
            stack.extend(gc.get_referents(obj))


def _secrets_in(root: object, sk_bytes: bytes) -> list[str]:
    found = []
    for obj in _reachable(root):
        if isinstance(obj, SECRET_TYPES):
            found.append(type(obj).__name__)
        elif isinstance(obj, bytes | bytearray) and len(obj) >= 64 and (sk_bytes in obj or obj in sk_bytes):
            found.append("secret key bytes")
    return found


def test_matcher_holds_no_secret_and_needs_no_private_dir(world: ScoredWorld, tmp_path: Path) -> None:
    sk_bytes = Path(world.state.secret_key_path()).read_bytes()
    # The walk does find secrets where they are (so an empty result means something).
    assert "Decryptor" in _secrets_in(SealedDecider(world.state.ctx, world.secret_key, world.gallery), sk_bytes)
    assert {"Encryptor", "Decryptor"} <= set(_secrets_in(world.owner, sk_bytes))
    holder: dict[str, Any] = {"k": [sk_bytes + b"x"]}
    assert _secrets_in(holder, sk_bytes) == ["secret key bytes"]

    private = Path(world.state.dir, "private")
    vault = tmp_path / "vault"
    shutil.move(private, vault)
    try:
        opened = State.open(world.state.dir)
        matcher = opened.matcher()
        with pytest.raises(StateError):
            keys.load_secret_key(opened.ctx, opened.secret_key_path())
        results = [matcher.match(p, t) for p, t in zip(world.probes, THRESHOLDS, strict=True)]
        assert _secrets_in(matcher, sk_bytes) == []
        assert not private.exists()
    finally:
        shutil.move(vault, private)
    decider = SealedDecider(world.state.ctx, world.secret_key, world.gallery)
    for result, probe, tau in zip(results, world.probes, THRESHOLDS, strict=True):
        _check_against_plaintext(world, decider.hits(result), probe, tau)


def test_decider_rejects_results_on_an_older_gallery(world: ScoredWorld) -> None:
    matcher = world.state.matcher()
    decider = SealedDecider(world.state.ctx, world.secret_key, world.gallery)
    result = matcher.match(world.probes[0], 0.4)
    world.owner.enroll(np.ones((1, DIM), dtype=np.float32), ["LATE"])  # rewrites the last block
    with pytest.raises(GalleryError):
        decider.hits(result)
    # A decider on a freshly opened gallery sees the same new version.
    with pytest.raises(GalleryError):
        SealedDecider(world.state.ctx, world.secret_key, world.state.gallery()).hits(result)
    # A matcher snapshots the gallery index when built; a fresh one is current.
    result = world.state.matcher().match(world.probes[0], 0.4)
    decider.hits(result)
    world.owner.remove("DE-00003")
    with pytest.raises(GalleryError):
        decider.hits(result)


def test_decider_rejects_wrong_scale(world: ScoredWorld) -> None:
    decider = SealedDecider(world.state.ctx, world.secret_key, world.gallery)
    result = world.state.matcher().match(world.probes[1], 0.4)
    for scale in (result.scale * 2, result.scale / 2, 2.0**39):
        with pytest.raises(CiphertextError, match="scale"):
            decider.hits(dataclasses.replace(result, scale=scale))
    # Packed ciphertexts carry no header: a truncated or padded one is refused by its length.
    for forged in (result.ciphertexts[0][:-8], result.ciphertexts[0] + bytes(8), b""):
        with pytest.raises(CiphertextError, match="bytes"):
            decider.hits(dataclasses.replace(result, ciphertexts=(forged, *result.ciphertexts[1:])))


@pytest.mark.parametrize("tau", [0.0, -0.2, 1.0, 1.5])
def test_matcher_refuses_a_threshold_outside_the_unit_interval(tau: float, tmp_path) -> None:
    from pprm.errors import ParameterError

    st = new_state(tmp_path / "s", "FR", dim=16)
    with pytest.raises(ParameterError, match="threshold"):
        st.matcher().match(np.ones(16, dtype=np.float32), tau)
