"""Every long call reports ``(done, total)``: monotone, total = templates, ending at ``(total, total)``.

The long calls are enrolment, building the blind database (and loading it
from the sealed store), ``BlindStore.prepare`` (here and through a split
state's key service) and a blind answer, which counts the database it
loads or builds first on the same bar. The blind answers are checked
against the plaintext truth too, so a progress callback cannot have changed
what is computed. The sets are the test-only ones: 512 templates per sealed
block and 1024 per blind block, so 1,400 templates make two blind blocks.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from pprm import synthetic
from pprm.matching.diagonals import build_database
from pprm.node.keyservice import KeyService
from pprm.node.keyservice_host import serve
from pprm.node.remote_keys import RemoteKeyService
from pprm.node.requester import Requester
from pprm.node.responder import Responder
from pprm.node.split import split
from pprm.node.state import State
from tests.helpers import INSECURE_BLIND, Node, build_network, new_state, plaintext_hits, snapshot

N = 1400  # two blind blocks of 1024
PURPOSE = "serious-crime"


class Recorder:
    """A progress callback that keeps every report."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def __call__(self, done: int, total: int) -> None:
        self.calls.append((done, total))

    def check(self, total: int, *, at_least: int = 1) -> None:
        """Monotone, one total (the template count), within bounds, ending at (total, total)."""
        assert len(self.calls) >= at_least, self.calls
        assert {t for _, t in self.calls} == {total}, self.calls
        dones = [d for d, _ in self.calls]
        assert dones == sorted(dones), self.calls
        assert dones[0] >= 0 and dones[-1] == total, self.calls


@pytest.fixture
def world(tmp_path: Path) -> dict[str, Node]:
    # AA asks BB in the blind profile; BB holds N templates.
    return build_network(str(tmp_path), ("AA", "BB"), n=N, seed=41, blind_params=INSECURE_BLIND,
                         profiles={"BB": "blind"})


def test_enrolment_counts_templates_not_ciphertexts(tmp_path: Path) -> None:
    st = new_state(tmp_path / "SS", "SS")
    ks = KeyService(st)
    g = synthetic.make_gallery(300 + 500, dim=st.config.dim, seed=2, prefix="SS")
    first = Recorder()
    ks.enroll(g.templates[:300], g.references[:300], progress=first)
    first.check(300, at_least=3)
    # 212 fill the first block's free slots (a fresh encryption added to it), 288 open a second block:
    # two blocks of 512 ciphertexts each, reported as the 500 templates they hold.
    second = Recorder()
    ks.enroll(g.templates[300:], g.references[300:], progress=second)
    second.check(500, at_least=2 * 512 // 32)
    assert len(st.gallery()) == 800


def test_building_the_diagonals_counts_templates_within_a_block(world: dict[str, Node]) -> None:
    bb = world["BB"].state
    _ids, templates = KeyService(bb).export_templates()
    rec = Recorder()
    db = build_database(templates, bb.blind_ctx, progress=rec)
    assert db.blocks == 2 and db.size == N
    # A report per batch of 64 of the 512 diagonals, so a one-block gallery moves too.
    rec.check(N, at_least=2 * 512 // 64 + 1)
    empty = Recorder()
    build_database(np.zeros((0, bb.config.dim)), bb.blind_ctx, progress=empty)
    empty.check(0)


def test_prepare_builds_loads_and_is_a_no_op_when_current(world: dict[str, Node]) -> None:
    bb = world["BB"].state
    ks = KeyService(bb)
    store = bb.blind_store
    version = bb.gallery().version

    built = Recorder()
    done = store.prepare(bb.lock, lambda: bb.gallery().version, ks.export_templates, progress=built)
    assert (done.version, done.templates, done.blocks, done.built) == (version, N, 2, True)
    built.check(N, at_least=10)
    assert store.complete(version) and store.in_memory is None  # sealed, not kept without keep=True

    before = snapshot(bb.path("private", "blind-db"))
    again = Recorder()
    done = store.prepare(bb.lock, lambda: bb.gallery().version, ks.export_templates, progress=again)
    assert done.built is False and done.templates == N and again.calls == [(N, N)]
    assert snapshot(bb.path("private", "blind-db")) == before  # nothing rebuilt, nothing rewritten

    loaded = Recorder()
    with bb.lock():
        db = store.database(version, ks.export_templates, progress=loaded)
    assert db.size == N and store.in_memory == version
    loaded.check(N, at_least=2)  # (0, N), then (N, N): mapping the blocks reads nothing yet
    cached = Recorder()
    with bb.lock():
        assert store.database(version, ks.export_templates, progress=cached) is db
    assert cached.calls == [(N, N)]


def _blind_query(world: dict[str, Node], index: int, case: str) -> tuple[bytes, list[bytes], set[str]]:
    g = world["BB"].gallery
    probe = synthetic.mate_probe(g, index, seed=index)
    truth = plaintext_hits(g.templates, g.references, probe, world["BB"].state.config.threshold)
    assert truth == {g.references[index]}
    sent = Requester(world["AA"].state).prepare("BB", probe, case, PURPOSE, profile="blind")
    return sent.query, sent.announcements, truth


def _answer(world: dict[str, Node], responder: Responder, index: int, case: str) -> Recorder:
    query, announcements, truth = _blind_query(world, index, case)
    rec = Recorder()
    res = responder.respond(query, announcements=announcements, progress=rec)
    assert res.profile == "blind" and res.refused is None
    opened = Requester(world["AA"].state).open(res.message)
    assert opened.hit and len(opened.candidates) == len(truth)
    return rec


def test_a_blind_answer_counts_the_database_and_the_matching_on_one_bar(world: dict[str, Node]) -> None:
    bb = world["BB"].state
    # Built inside the answer (nothing sealed yet): the build is most of the bar, then the two blocks.
    first = _answer(world, Responder(bb), 3, "C-P1")
    first.check(N, at_least=10)
    assert bb.blind_store.complete(bb.gallery().version)
    # A fresh process loads the sealed database, on the same bar.
    fresh = Responder(State.open(bb.dir))
    loaded = _answer(world, fresh, 4, "C-P2")
    loaded.check(N, at_least=5)
    # Held in memory: matching only, block by block.
    held = _answer(world, fresh, 5, "C-P3")
    held.check(N, at_least=3)
    assert held.calls[0] == (0, N)


@pytest.fixture
def split_world(tmp_path: Path) -> Iterator[tuple[dict[str, Node], str]]:
    nodes = build_network(str(tmp_path), ("AA", "BB"), n=N, seed=43, blind_params=INSECURE_BLIND,
                          profiles={"BB": "blind"})
    short = tempfile.mkdtemp(prefix="pks-")  # unix socket paths are short
    keydir = os.path.join(short, "ks")
    split(nodes["BB"].state.dir, keydir)
    stop, ready = threading.Event(), threading.Event()
    t = threading.Thread(target=serve, args=(keydir,), kwargs={"ready": lambda _a: ready.set(), "stop": stop.is_set},
                         daemon=True)
    t.start()
    assert ready.wait(20)
    nodes["BB"] = Node(State.open(nodes["BB"].state.dir), nodes["BB"].gallery)
    try:
        yield nodes, keydir
    finally:
        stop.set()
        t.join(10)
        shutil.rmtree(short, ignore_errors=True)


def test_prepare_through_a_split_states_key_service(split_world: tuple[dict[str, Node], str]) -> None:
    nodes, keydir = split_world
    front = nodes["BB"].state
    remote = RemoteKeyService(front)
    rec = Recorder()
    done = remote.prepare(progress=rec)
    version = front.gallery().version
    assert (done.version, done.templates, done.blocks, done.built) == (version, N, 2, True)
    assert rec.calls == [(0, N), (N, N)]  # the link carries a start and an end, nothing between
    assert os.path.exists(os.path.join(keydir, "private", "blind-db", version, "complete"))
    assert not os.path.exists(front.path("blind"))  # the database is the key service's, never the front's
    again = Recorder()
    assert remote.prepare(progress=again).built is False
    again.check(N)
    # The key service answers from the database it prepared; the front's bar has a start and an end.
    query, announcements, truth = _blind_query(nodes, 6, "C-S1")
    answering = Recorder()
    answer = Responder(front).answer(query, announcements=announcements, progress=answering)
    assert answering.calls == [(0, N), (N, N)]
    opened = Requester(nodes["AA"].state).open(answer)
    assert opened.hit and len(opened.candidates) == len(truth)
