"""The blind database sharded over a local Dask cluster of worker processes.

Decisions are compared with the single-process blind matcher and with the
plaintext truth, through the requester's own decryption.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from pprm import synthetic
from pprm.cluster import BlindShardSpec, ShardedBlindMatcher, connect
from pprm.errors import ClusterError
from pprm.node.keyservice import KeyService
from pprm.node.requester import Requester
from pprm.node.responder import Responder
from tests.cluster.support import kill_after_dispatch, spread_salt
from tests.helpers import INSECURE_BLIND, new_state, plaintext_hits, wait_for

pytest.importorskip("distributed")

N = 2500  # three blocks of 1024 templates


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("blind-cluster")
    de = new_state(root / "DE", "DE", blind_params=INSECURE_BLIND, profiles={"FR": "blind"})
    fr = new_state(root / "FR", "FR", blind_params=INSECURE_BLIND, profiles={"FR": "blind"})
    gallery = synthetic.make_gallery(N, seed=21, prefix="FR")
    KeyService(fr).enroll(gallery.templates, gallery.references)
    de.trust(fr.card_bytes)
    fr.trust(de.card_bytes)
    with connect("local:2") as handle:
        yield de, fr, gallery, handle


def _ask(de, fr, probe, case, blind=None):
    req = Requester(de)
    announcement, query = req.blind_query("FR", probe, case, "serious-crime")
    answer = Responder(fr, blind=blind).answer(query, announcements=[announcement] if announcement else [])
    opened = req.open(answer)
    refs = [KeyService(fr).resolve(req.follow_up(answer, h)).reference for h in opened.candidates]
    return opened, refs


def test_sharded_blind_answers_equal_one_process_and_the_truth(world):
    de, fr, gallery, handle = world
    sharded = ShardedBlindMatcher(handle, BlindShardSpec(INSECURE_BLIND, True), spread_salt(3))
    synced: list[dict[str, Any]] = []

    def blind(db, version):
        synced.append(sharded.sync(db, version))
        return sharded

    for i, index in enumerate((5, 700, 1399)):
        probe = synthetic.mate_probe(gallery, index, seed=i)
        truth = plaintext_hits(gallery.templates, gallery.references, probe, fr.config.threshold)
        assert truth == {gallery.references[index]}
        opened, refs = _ask(de, fr, probe, f"C-B{i}", blind)
        local, local_refs = _ask(de, fr, probe, f"C-L{i}")
        assert opened.hit and set(refs) == truth == set(local_refs)
        assert len(opened.candidates) == len(local.candidates)
    opened, refs = _ask(de, fr, synthetic.impostor_probe(512, seed=4), "C-B9", blind)
    assert not opened.hit and refs == []
    # The first query sent the three blocks; later ones on the same version sent nothing.
    assert synced[0]["sent"] == 3 and all(s["sent"] == 0 for s in synced[1:])
    infos = sharded.describe()
    assert sorted(b for i in infos.values() for b in i["blocks"]) == [0, 1, 2]
    assert all(i["blocks"] for i in infos.values()) and all(i["pid"] != os.getpid() for i in infos.values())


def test_a_gallery_change_resends_the_new_database(world):
    de, fr, _gallery, handle = world
    sharded = ShardedBlindMatcher(handle, BlindShardSpec(INSECURE_BLIND, True), fr.key_id)
    reports: list[dict[str, Any]] = []

    def blind(db, version):
        reports.append(sharded.sync(db, version))
        return sharded

    _ask(de, fr, synthetic.impostor_probe(512, seed=5), "C-G1", blind)
    extra = synthetic.make_gallery(3, seed=99, prefix="NEW")
    KeyService(fr).enroll(extra.templates, extra.references)
    _opened, refs = _ask(de, fr, synthetic.mate_probe(extra, 1, seed=1), "C-G2", blind)
    assert refs == [extra.references[1]]
    # A new version has a fresh secret layout: every block is sent again, the old copies dropped.
    assert reports[1]["sent"] == 3 and reports[1]["dropped"] == 3


def test_a_worker_lost_mid_blind_query_fails_cleanly(world, monkeypatch):
    de, fr, gallery, handle = world
    sharded = ShardedBlindMatcher(handle, BlindShardSpec(INSECURE_BLIND, True), spread_salt(3))
    db = fr.blind_store.database(fr.gallery().version, KeyService(fr).export_templates)
    sharded.sync(db, fr.gallery().version)
    pids = {w: d["pid"] for w, d in sharded.describe().items()}
    killed = kill_after_dispatch(monkeypatch, pids, "answer")
    req = Requester(de)
    announcement, query = req.blind_query("FR", synthetic.mate_probe(gallery, 5, seed=1), "C-K", "serious-crime")
    before = [e for e in fr.audit.entries() if e["event"] == "answer"]
    with pytest.raises(ClusterError, match="no live worker"):
        Responder(fr, blind=lambda d, v: sharded).answer(query, announcements=[announcement] if announcement else [])
    assert killed
    # Nothing was answered or logged; the same query can be answered once the cluster heals.
    assert [e for e in fr.audit.entries() if e["event"] == "answer"] == before
    monkeypatch.undo()


    wait_for(lambda: set(handle.workers()) == {"0", "1"}, timeout=60, what="the nanny's restart")

    def healed(d, v):
        sharded.sync(d, v)
        return sharded

    answer = Responder(fr, blind=healed).answer(query, announcements=[announcement] if announcement else [])
    assert req.open(answer).hit
