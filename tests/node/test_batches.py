"""Batches: many probes in one call (Requester.query_many), many removals in one call (KeyService.remove_many).

Every probe of a batch is its own query: its own id, audit entry, quota
count, answer or refusal; each answer is compared with the plaintext truth
(:func:`tests.helpers.plaintext_hits`). A removal batch re-encrypts each
block that loses records once, gives the gallery removing one by one gives,
is all or nothing (an unknown reference changes nothing; a SIGKILL at a
random moment leaves the gallery before or after the call, and a log that
says which), and works through a split state's key service.

Galleries are small (600-1100 templates on the test-only sets, 512 per
block), so each test takes a few seconds at most.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from pprm import synthetic
from pprm.errors import (
    GalleryError,
    KeyRotationError,
    MessageError,
    PolicyError,
    RefusedError,
    TemplateError,
    UnknownPeerError,
)
from pprm.matching.owner import GalleryOwner
from pprm.node.keyservice import KeyService
from pprm.node.keyservice_host import serve
from pprm.node.outbox import SentBlindQuery
from pprm.node.remote_keys import RemoteKeyService, key_service_for
from pprm.node.requester import ProbeQuery, Requester
from pprm.node.responder import Responder
from pprm.node.split import split
from pprm.node.state import State
from pprm.protocol.blind_messages import parse_handle
from tests.helpers import INSECURE_BLIND, Node, build_network, new_state, plaintext_hits, resolve_all, snapshot
from tests.node.test_crash_safety import _check_consistent

PURPOSE = "serious-crime"


def _truth(node: Node, probe: np.ndarray) -> set[str]:
    g = node.gallery
    return plaintext_hits(g.templates, g.references, probe, node.state.config.threshold)


def _entries(st: State, event: str) -> list[dict[str, object]]:
    return [e["data"] for e in st.audit.entries() if e["event"] == event]


def _ids(results: list[ProbeQuery]) -> list[str]:
    out = []
    for r in results:
        assert r.query is not None, r.error
        out.append(r.query.query_id)
    return out


# -- query_many, sealed ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def sealed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Node]:
    # FR answers at most 4 queries per case: a batch of 6 crosses it midway.
    return build_network(str(tmp_path_factory.mktemp("batch-sealed")), ("DE", "FR"), n=600, seed=11,
                         quota_per_case=4)


def test_sealed_batch_each_probe_is_its_own_query(sealed: dict[str, Node]) -> None:
    de, fr, gal = sealed["DE"].state, sealed["FR"].state, sealed["FR"].gallery
    probes = np.stack([synthetic.mate_probe(gal, 5, seed=1), synthetic.impostor_probe(512, seed=2),
                       synthetic.mate_probe(gal, 300, seed=3), synthetic.mate_probe(gal, 599, seed=4),
                       synthetic.mate_probe(gal, 17, seed=5), synthetic.mate_probe(gal, 42, seed=6)])
    truths = [_truth(sealed["FR"], p) for p in probes]
    assert [len(t) for t in truths[:4]] == [1, 0, 1, 1]
    seen: list[tuple[int, int]] = []
    results = Requester(de).query_many("FR", probes, "C-BATCH", PURPOSE, progress=lambda d, t: seen.append((d, t)))
    assert [r.row for r in results] == list(range(6)) and all(r.ok for r in results)
    assert seen == [(i, 6) for i in range(1, 7)]
    ids = _ids(results)
    assert len(set(ids)) == 6
    # One audit line and one outbox record per probe, in row order.
    assert [e["query_id"] for e in _entries(de, "query")][-6:] == ids
    assert set(ids) <= set(Requester(de).outbox())

    responder = Responder(fr)
    answers = [responder.answer(r.query.query) for r in results if r.query is not None]
    # Quota counted per query: four answered, then signed refusals for rows 4 and 5.
    assert responder.quota.usage("DE", "C-BATCH", time.time())[0] == 4
    assert [e["query_id"] for e in _entries(fr, "answer")][-4:] == ids[:4]
    assert [(e["query_id"], e["reason"]) for e in _entries(fr, "refuse")][-2:] == [(i, "quota-case")
                                                                                  for i in ids[4:]]
    # A refusal opened first closes its own query only.
    for row in (4, 5):
        with pytest.raises(RefusedError) as exc:
            Requester(de).open(answers[row])
        assert exc.value.query_id == ids[row] and exc.value.reason == "quota-case"
    tokens: list[str] = []
    for row in range(4):
        opened = Requester(de).open(answers[row])
        assert opened.query_id == ids[row] and opened.hit == bool(truths[row])
        assert set(resolve_all(de, KeyService(fr), answers[row], opened.candidates)) == truths[row]
        tokens += opened.candidates
    assert len(tokens) == len(set(tokens)) == 3
    box = Requester(de).outbox()
    assert [box[i].refused for i in ids] == [None] * 4 + ["quota-case"] * 2


@pytest.mark.parametrize("probes, kind, says", [
    (np.ones(512, np.float32), TemplateError, "shape (N, 512)"),
    (np.ones((0, 512), np.float32), TemplateError, "no probes"),
    (np.ones((2, 511), np.float32), TemplateError, "shape (N, 512)"),
    (np.ones((3, 512), np.int32), TemplateError, "floating point"),
    (np.vstack([np.ones(512), np.full(512, np.nan)]).astype(np.float32), TemplateError, "probe row 1"),
    (np.vstack([np.ones((2, 512)), np.zeros((1, 512))]).astype(np.float32), TemplateError, "probe row 2 is a zero"),
])
def test_bad_batch_changes_nothing(sealed: dict[str, Node], probes: np.ndarray, kind: type[Exception],
                                   says: str) -> None:
    de = sealed["DE"].state
    before = snapshot(de.dir)
    with pytest.raises(kind, match=says.replace("(", r"\(").replace(")", r"\)")):
        Requester(de).query_many("FR", probes, "C-BAD", PURPOSE)
    assert snapshot(de.dir) == before


def test_batch_with_bad_arguments_changes_nothing(sealed: dict[str, Node]) -> None:
    de = sealed["DE"].state
    probes = np.ones((2, 512), np.float32)
    before = snapshot(de.dir)
    with pytest.raises(UnknownPeerError):
        Requester(de).query_many("XX", probes, "C-BAD", PURPOSE)
    with pytest.raises(PolicyError):
        Requester(de).query_many("FR", probes, "C-BAD", "curiosity")
    with pytest.raises(MessageError):
        Requester(de).query_many("FR", probes, "", PURPOSE)
    assert snapshot(de.dir) == before


def test_one_probe_failing_leaves_the_others(sealed: dict[str, Node]) -> None:
    de = sealed["DE"].state
    written: dict[int, bytes] = {}

    def sink(row: int, announcement: bytes | None, query: bytes) -> None:
        assert announcement is None
        if row == 1:
            raise GalleryError("this probe's file cannot be written")
        written[row] = query

    queries_before = len(_entries(de, "query"))
    results = Requester(de).query_many("FR", np.eye(3, 512, dtype=np.float32), "C-SINK", PURPOSE, sink=sink)
    assert [r.ok for r in results] == [True, False, True]
    assert isinstance(results[1].error, GalleryError) and results[1].query is None
    assert sorted(written) == [0, 2]
    assert [r.query.query for r in results if r.query is not None] == [written[0], written[2]]
    # Nothing is recorded for the probe whose sink failed.
    assert len(_entries(de, "query")) == queries_before + 2
    assert {r.query.query_id for r in results if r.query is not None} <= set(Requester(de).outbox())


# -- query_many, blind ----------------------------------------------------------------------

def test_respond_many_matches_once_and_answers_each_query_on_its_own(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from pprm.errors import PprmError, ReplayError
    from pprm.matching.sealed import SealedMatcher

    net = build_network(str(tmp_path), ("DE", "FR"), n=600, seed=12, quota_per_case=4)
    de, fr, gal = net["DE"].state, net["FR"].state, net["FR"].gallery
    probes = np.stack([synthetic.mate_probe(gal, 5, seed=1), synthetic.impostor_probe(512, seed=2),
                       synthetic.mate_probe(gal, 300, seed=3), synthetic.mate_probe(gal, 599, seed=4),
                       synthetic.mate_probe(gal, 17, seed=5), synthetic.mate_probe(gal, 42, seed=6)])
    truths = [_truth(net["FR"], p) for p in probes]
    results = Requester(de).query_many("FR", probes, "C-MANY", PURPOSE)
    ids = _ids(results)
    qs = [r.query.query for r in results if r.query is not None]
    passes: list[int] = []
    real_many = SealedMatcher.match_many

    def counted(self: SealedMatcher, probes: list[np.ndarray], *a: object, **kw: object) -> object:
        passes.append(len(probes))
        return real_many(self, probes, *a, **kw)  # type: ignore[arg-type]

    def no_single(*_a: object, **_kw: object) -> object:
        raise AssertionError("a batch must not match probe by probe")

    monkeypatch.setattr(SealedMatcher, "match_many", counted)
    monkeypatch.setattr(SealedMatcher, "match", no_single)
    handed: dict[int, bytes] = {}
    batch = [b"not a query", qs[0], qs[1], qs[2], qs[0], qs[3], qs[4], qs[5]]
    sinks = [lambda m, i=i: handed.__setitem__(i, m) for i in range(len(batch))]
    out = Responder(fr).respond_many(batch, sinks=sinks)
    # One pass over the gallery for the seven well-formed queries.
    assert passes == [7]
    assert isinstance(out[0], MessageError)
    assert isinstance(out[4], ReplayError)  # the same query twice: answered once
    answered = [out[i] for i in (1, 2, 3, 5)]
    refused = [out[i] for i in (6, 7)]
    assert all(not isinstance(r, PprmError) and r.refused is None for r in answered)
    assert all(not isinstance(r, PprmError) and r.refused == "quota-case" for r in refused)
    assert sorted(handed) == [1, 2, 3, 5, 6, 7]  # nothing handed over for the failures
    assert [e["query_id"] for e in _entries(fr, "answer")] == ids[:4]
    assert [e["query_id"] for e in _entries(fr, "refuse")] == ids[4:]
    for row, i in enumerate((1, 2, 3, 5)):
        opened = Requester(de).open(handed[i])
        assert opened.query_id == ids[row] and opened.hit == bool(truths[row])
        assert set(resolve_all(de, KeyService(fr), handed[i], opened.candidates)) == truths[row]


def test_respond_many_when_the_pass_fails_records_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pprm.errors import ClusterError
    from pprm.matching.sealed import SealedMatcher

    net = build_network(str(tmp_path), ("DE", "FR"), n=300, seed=13)
    de, fr = net["DE"].state, net["FR"].state
    probes = np.stack([synthetic.impostor_probe(512, seed=s) for s in (1, 2, 3)])
    qs = [r.query.query for r in Requester(de).query_many("FR", probes, "C-FAIL", PURPOSE) if r.query is not None]
    before = snapshot(fr.dir)

    def lost(*_a: object, **_kw: object) -> object:
        raise ClusterError("a shard lost its blocks")

    monkeypatch.setattr(SealedMatcher, "match_many", lost)
    handed: list[bytes] = []
    out = Responder(fr).respond_many(qs, sinks=[handed.append] * len(qs))
    assert all(isinstance(r, ClusterError) for r in out) and handed == []
    assert snapshot(fr.dir) == before  # nothing recorded: each query can be answered later
    monkeypatch.undo()
    later = Responder(fr).respond_many(qs)
    assert [getattr(r, "refused", "failed") for r in later] == [None, None, None]


def test_respond_many_a_malformed_probe_fails_only_its_query(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pprm.matching.templates import normalise_probe
    from pprm.node import responder as responder_module

    net = build_network(str(tmp_path), ("DE", "FR"), n=300, seed=14)
    de, fr = net["DE"].state, net["FR"].state
    probes = np.stack([synthetic.impostor_probe(512, seed=s) for s in (4, 5, 6)])
    qs = [r.query.query for r in Requester(de).query_many("FR", probes, "C-ODD", PURPOSE) if r.query is not None]
    real = normalise_probe
    bad = probes[1].astype(np.float32)

    def picky(probe: np.ndarray, dim: int) -> np.ndarray:
        # Stands for a probe the requester's own checks would never have let through.
        if np.allclose(np.asarray(probe, dtype=np.float32), bad / np.linalg.norm(bad), atol=1e-6):
            raise TemplateError("probe row 0 is a zero vector")
        return real(probe, dim)

    monkeypatch.setattr(responder_module, "normalise_probe", picky)
    out = Responder(fr).respond_many(qs)
    assert isinstance(out[1], TemplateError)
    assert [getattr(out[i], "refused", "failed") for i in (0, 2)] == [None, None]
    assert len(_entries(fr, "answer")) == 2


def test_respond_many_refuses_mallorys_bytes_and_answers_the_rest(tmp_path: Path) -> None:
    from pprm.errors import AuthenticationError, PprmError

    net = build_network(str(tmp_path / "net"), ("DE", "FR"), n=300, seed=15)
    de, fr = net["DE"].state, net["FR"].state
    # Mallory: a state of her own, with her own keys, that FR never trusted; she trusts FR's card.
    mallory = new_state(tmp_path / "MX", "MX")
    mallory.trust(fr.card_bytes)
    probe = synthetic.impostor_probe(512, seed=7)
    hers = Requester(mallory).query("FR", probe, "C-M", PURPOSE)
    good, victim = (r.query.query for r in Requester(de).query_many("FR", np.stack([probe, probe]), "C-V", PURPOSE)
                    if r.query is not None)
    flipped = bytearray(victim)
    flipped[len(flipped) // 2] ^= 0x01  # DE's query, one bit changed in transit
    before = _entries(fr, "answer")
    out = Responder(fr).respond_many([hers, bytes(flipped), good])
    assert isinstance(out[0], UnknownPeerError)
    assert isinstance(out[1], AuthenticationError)
    assert not isinstance(out[2], PprmError) and out[2].refused is None
    assert len(_entries(fr, "answer")) == len(before) + 1
    # The untouched original of the flipped query is still answerable: the forgery marked nothing used.
    (later,) = Responder(fr).respond_many([victim])
    assert not isinstance(later, PprmError) and later.refused is None


def _reference_of(b: State, query_id: str, handle: str) -> str:
    """The reference behind a blind handle, read from the responder's secrets (tests only)."""
    rec = b.blind_store.answered(query_id)
    pos, slot = parse_handle(handle)
    rid = int(b.blind_store.layout(rec.version)[rec.order[pos], slot])
    return b.gallery().index.references[rid]


def test_blind_batch_shares_one_key_and_answers_each_probe(tmp_path: Path) -> None:
    nodes = build_network(str(tmp_path), ("AA", "BB"), n=600, seed=21, blind_params=INSECURE_BLIND,
                          quota_per_case=3)
    aa, bb, gal = nodes["AA"].state, nodes["BB"].state, nodes["BB"].gallery
    probes = np.stack([synthetic.mate_probe(gal, 5, seed=1), synthetic.mate_probe(gal, 555, seed=2),
                       synthetic.impostor_probe(512, seed=3), synthetic.mate_probe(gal, 9, seed=4)])
    truths = [_truth(nodes["BB"], p) for p in probes]
    results = Requester(aa).query_many("BB", probes, "C-BLIND", PURPOSE, profile="blind")
    ids = _ids(results)
    sent = [r.query for r in results if r.query is not None]
    # One key for the batch, announced once, with the first query.
    assert [s.announcement is not None for s in sent] == [True, False, False, False]
    assert len({s.key_id for s in sent}) == 1 and all(s.profile == "blind" for s in sent)
    assert len(_entries(aa, "keys_created")) == 1
    assert [e["query_id"] for e in _entries(aa, "query")] == ids

    responder = Responder(bb)
    answers = [responder.answer(s.query, announcements=s.announcements) for s in sent]
    assert len(_entries(bb, "keys")) == 1
    assert [e["query_id"] for e in _entries(bb, "answer")] == ids[:3]
    assert [e["query_id"] for e in _entries(bb, "refuse")] == ids[3:]
    assert responder.quota.usage("AA", "C-BLIND", time.time())[0] == 3
    # The refusal of row 3, opened first, closes that query only.
    with pytest.raises(RefusedError):
        Requester(aa).open(answers[3])
    opened = [Requester(aa).open(a) for a in answers[:3]]
    for row, o in enumerate(opened):
        assert o.query_id == ids[row]
        assert {_reference_of(bb, ids[row], h) for h in o.candidates} == truths[row]
    # Step two for one probe: the handle resolves to the planted record.
    (handle,) = opened[0].candidates
    assert KeyService(bb).resolve(Requester(aa).follow_up(answers[0], handle)).reference == gal.references[5]
    # The cost of one key per batch: that follow-up retired it, so the peer follows up no other probe's answer.
    (other,) = opened[1].candidates
    with pytest.raises(KeyRotationError, match="retired after a follow-up on another query"):
        KeyService(bb).resolve(Requester(aa).follow_up(answers[1], other))
    box = Requester(aa).outbox()
    assert isinstance(box[ids[3]], SentBlindQuery) and box[ids[3]].refused == "quota-case"
    assert [box[i].refused for i in ids[:3]] == [None] * 3


# -- remove_many ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def enrolled(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A state with 1,100 records in three blocks (512, 512, 76), to copy per test."""
    root = tmp_path_factory.mktemp("remove-many")
    st = new_state(root / "DE", "DE")
    KeyService(st).enroll(np.random.default_rng(5).normal(size=(1100, 512)).astype(np.float32),
                          [f"R-{i:04d}" for i in range(1100)])
    return st.dir


def _copy(src: str, dst: Path) -> State:
    shutil.copytree(src, dst)
    return State.open(str(dst))


def test_remove_many_re_encrypts_each_changed_block_once(enrolled: str, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    batch, single = _copy(enrolled, tmp_path / "batch"), _copy(enrolled, tmp_path / "single")
    refs = ["R-0003", "R-1099", "R-0007", "R-0100", "R-1050", "R-0511"]  # blocks 0 and 2, none of block 1
    files = [blk.file for blk in batch.gallery().index.blocks]
    calls = {"decrypt": 0, "encrypt": 0}
    decrypt, encrypt = GalleryOwner._decrypt_block, GalleryOwner._encrypt_columns

    def counted_decrypt(self: GalleryOwner, b: int) -> np.ndarray:
        calls["decrypt"] += 1
        return decrypt(self, b)

    def counted_encrypt(self: GalleryOwner, columns: np.ndarray, *args: object, **kw: object) -> np.ndarray:
        calls["encrypt"] += 1
        return encrypt(self, columns, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(GalleryOwner, "_decrypt_block", counted_decrypt)
    monkeypatch.setattr(GalleryOwner, "_encrypt_columns", counted_encrypt)
    progress: list[tuple[int, int]] = []
    assert KeyService(batch).remove_many(refs, progress=lambda d, t: progress.append((d, t))) == 6
    assert calls == {"decrypt": 2, "encrypt": 2} and progress == [(1, 2), (2, 2)]
    monkeypatch.undo()
    after = [blk.file for blk in batch.gallery().index.blocks]
    assert [a != b for a, b in zip(files, after, strict=True)] == [True, False, True]
    # No scratch file is left beside the blocks.
    assert sorted(os.listdir(os.path.join(batch.gallery().directory, "blocks"))) == sorted(after)
    # One write-ahead entry for the call, naming its gallery version.
    (entry,) = _entries(batch, "remove")
    assert entry["count"] == 6 and json.loads(str(entry["references"])) == refs
    assert entry["gallery"] == batch.gallery().version and entry["total"] == 1094
    batch.audit.verify()

    ks = KeyService(single)
    for ref in refs:
        ks.remove(ref)
    got, want = batch.gallery().index, single.gallery().index
    assert got.references == want.references
    assert [b.slots.tolist() for b in got.blocks] == [b.slots.tolist() for b in want.blocks]
    ids_b, tpl_b = KeyService(batch).export_templates()
    ids_s, tpl_s = ks.export_templates()
    assert np.array_equal(ids_b, ids_s) and np.array_equal(tpl_b, tpl_s)
    assert not set(refs) & set(got.references.values())


@pytest.mark.parametrize("refs, error, says", [
    (["R-0001", "R-0002", "NOPE", "ALSO-NOPE"], GalleryError,
     "reference 'NOPE' is not enrolled (at index 2); nothing was removed"),
    (["R-0001", "R-0700", "R-0001"], GalleryError,
     "reference 'R-0001' is listed twice (at index 0 and 2); nothing was removed"),
    (["R-0001", b"R-0002"], TemplateError, "reference at index 1 is bytes, not str"),
    (["R-0001", None], TemplateError, "reference at index 1 is NoneType, not str"),
    (iter(["R-0001"]), TemplateError, "references must be a list of strings, got list_iterator"),
])
def test_remove_many_refuses_the_whole_call(enrolled: str, tmp_path: Path, refs: list[str],
                                            error: type[Exception], says: str) -> None:
    st = _copy(enrolled, tmp_path / "s")
    before = snapshot(st.dir)
    with pytest.raises(error) as info:
        KeyService(st).remove_many(refs)
    assert str(info.value) == says
    assert snapshot(st.dir) == before
    assert KeyService(st).remove_many([]) == 0
    assert snapshot(st.dir) == before


def test_remove_many_interrupted_after_its_log_entry_is_marked_aborted(enrolled: str, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import pprm.matching.gallery as gallery_module
    from pprm._fs import atomic_write_json as real

    st = _copy(enrolled, tmp_path / "s")
    version = st.gallery().version

    def no_index(path: str, obj: object) -> None:
        if os.path.basename(path) == "index.json":
            raise OSError("the process died here")
        real(path, obj)

    monkeypatch.setattr(gallery_module, "atomic_write_json", no_index)
    refs = ["R-0001", "R-0600", "R-1090"]
    with pytest.raises(OSError):
        KeyService(st).remove_many(refs)
    monkeypatch.undo()
    st = State.open(st.dir)
    assert st.gallery().version == version and set(refs) <= set(st.gallery().index.references.values())
    assert [e["event"] for e in st.audit.entries()][-1] == "remove"
    assert KeyService(st).reconcile() == "remove"
    assert _check_consistent(st.dir).gallery().version == version
    assert KeyService(st).remove_many(refs) == 3


CHILD = r"""
import sys
from pprm.node.keyservice import KeyService
from pprm.node.state import State

st = State.open(sys.argv[1])
ks = KeyService(st)
print("ready", flush=True)
while True:
    refs = sorted(st.gallery().index.references.values())
    # Every 7th reference: each batch changes every block.
    ks.remove_many(refs[::7][:40])
"""


@pytest.mark.parametrize("seed", [8, 9])
def test_killed_during_remove_many(enrolled: str, tmp_path: Path, seed: int) -> None:
    st = _copy(enrolled, tmp_path / "DE")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, st.dir], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == b"ready", (line, proc.stderr.read() if proc.stderr else b"")
    time.sleep(random.Random(seed).uniform(0.3, 2.5))
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    st = _check_consistent(st.dir)
    # All or nothing: a logged batch is gone whole; the one marked aborted is there whole.
    enrolled_now = set(st.gallery().index.references.values())
    entries = st.audit.entries()
    aborted = {e["data"]["seq"] for e in entries if e["event"] == "aborted"}
    batches = [e for e in entries if e["event"] == "remove"]
    for e in batches:
        refs = set(json.loads(e["data"]["references"]))
        assert not refs & enrolled_now if e["seq"] not in aborted else refs <= enrolled_now
    assert len(enrolled_now) == 1100 - 40 * sum(e["seq"] not in aborted for e in batches)
    KeyService(st).remove_many(sorted(enrolled_now)[:3])
    blocks = st.gallery().index.blocks
    assert sorted(os.listdir(os.path.join(st.gallery().directory, "blocks"))) == sorted(b.file for b in blocks)
    assert st.audit.check().unsigned == 0


# -- remove_many through a split state's key service ----------------------------------------

@dataclass
class SplitWorld:
    de: State
    fr: State
    keydir: str
    gallery: synthetic.SyntheticGallery


@pytest.fixture
def split_world(tmp_path: Path) -> Iterator[SplitWorld]:
    nodes = build_network(str(tmp_path), ("DE", "FR"), n=600, seed=31)
    fr = nodes["FR"]
    # Unix socket paths are limited to about 100 bytes; pytest's tmp paths can be longer.
    short = tempfile.mkdtemp(prefix="pks-")
    keydir = os.path.join(short, "ks")
    split(fr.state.dir, keydir)
    stop, ready = threading.Event(), threading.Event()
    t = threading.Thread(target=serve, args=(keydir,), kwargs={"ready": lambda _a: ready.set(), "stop": stop.is_set},
                         daemon=True)
    t.start()
    assert ready.wait(20)
    try:
        yield SplitWorld(nodes["DE"].state, State.open(fr.state.dir), keydir, fr.gallery)
    finally:
        stop.set()
        t.join(10)
        shutil.rmtree(short, ignore_errors=True)


def test_split_state_removes_many_through_its_key_service(split_world: SplitWorld) -> None:
    fr, gal = split_world.fr, split_world.gallery
    keys = key_service_for(fr)
    assert isinstance(keys, RemoteKeyService)
    refs = [gal.references[i] for i in (2, 300, 599)]
    assert keys.remove_many(refs) == 3
    assert len(fr.gallery()) == 597 and not set(refs) & set(fr.gallery().index.references.values())
    # The key service logged the call, write-ahead, as one entry.
    ks_state = State.open(split_world.keydir)
    (entry,) = _entries(ks_state, "remove")
    assert entry["count"] == 3 and json.loads(str(entry["references"])) == refs
    assert entry["gallery"] == fr.gallery().version
    # Unknown reference: the key service's typed error, and nothing changes on either side.
    before = snapshot(fr.dir), snapshot(split_world.keydir)
    with pytest.raises(GalleryError, match=r"reference 'NOPE' is not enrolled \(at index 1\)"):
        keys.remove_many([gal.references[3], "NOPE"])
    with pytest.raises(TemplateError, match="reference at index 1 is bytes, not str"):
        keys.remove_many([gal.references[3], b"NOPE"])  # type: ignore[list-item]
    with pytest.raises(TemplateError, match="the reference is NoneType, not str"):
        keys.remove(None)  # type: ignore[arg-type]
    with pytest.raises(TemplateError, match="reference at index 0 is bytes, not str"):
        keys.enroll(gal.templates[:2], [b"x", None])  # type: ignore[list-item]
    assert (snapshot(fr.dir), snapshot(split_world.keydir)) == before
    assert keys.remove_many([]) == 0
    # The front's matcher no longer finds a removed record; a kept one it still does.
    for index, hit in ((300, False), (3, True)):
        q = Requester(split_world.de).query("FR", synthetic.mate_probe(gal, index, seed=index), "C-SPLIT", PURPOSE)
        responder = Responder(fr)
        answer = responder.answer(q)
        assert responder.remote is not None
        responder.remote.flush()
        assert Requester(split_world.de).open(answer).hit is hit
