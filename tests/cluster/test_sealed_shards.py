"""The sealed gallery sharded over a local Dask cluster of worker processes.

Every comparison is against the single-process matcher and the plaintext
truth, decrypted by the state's own key service.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from pprm import synthetic
from pprm.cluster import ShardedMatcher, connect, moves, owners, plan
from pprm.cluster.host import secret_objects
from pprm.cluster.shards import ShardSet
from pprm.errors import ClusterError, ParameterError
from pprm.matching.decide import SealedDecider
from pprm.node.keyservice import KeyService
from pprm.node.requester import Requester
from pprm.node.responder import Responder
from tests.cluster.support import kill_after_dispatch, spread_salt
from tests.helpers import INSECURE_SEALED, INSECURE_SEALED_COMPLEX, Node, new_state, plaintext_hits, wait_for

pytest.importorskip("distributed")

N = 2600  # 6 blocks of 512 on the test-only set: enough for every worker to hold several


@pytest.fixture(scope="module")
def cluster():
    with connect("local:2") as handle:
        yield handle


def _state(root: Path, name: str = "FR", n: int = N, params: str = INSECURE_SEALED):
    de = new_state(root / "DE", "DE", params=params)
    st = new_state(root / name, name, params=params)
    gallery = synthetic.make_gallery(n, seed=11, prefix=name)
    KeyService(st).enroll(gallery.templates, gallery.references)
    de.trust(st.card_bytes)
    st.trust(de.card_bytes)
    return de, Node(st, gallery)


def _decider(st):
    sk = KeyService(st)._sk  # the key service's own secret key: decisions as the node makes them
    return SealedDecider(st.ctx, sk, st.gallery())


def _probes(gallery, count: int = 6):
    mates = [synthetic.mate_probe(gallery, i * 97 % len(gallery.references), seed=i) for i in range(count // 2)]
    return mates + [synthetic.impostor_probe(512, seed=100 + i) for i in range(count - count // 2)]


def _hits(st, result):
    refs = st.gallery().index.references
    return {refs[r] for r in _decider(st).hits(result)}


@pytest.mark.parametrize("params", [INSECURE_SEALED, INSECURE_SEALED_COMPLEX])
def test_sharded_answers_equal_the_single_process_and_the_truth(cluster, tmp_path, params):
    _de, node = _state(tmp_path, params=params)
    st, g = node.state, node.gallery
    blocks = len(st.gallery().index.blocks)
    sharded = ShardedMatcher(cluster, st.sealed_shard_spec(), salt=spread_salt(blocks))
    report = sharded.sync(st.gallery())
    assert report["workers"] == 2 and report["sent"] == blocks
    held = {w: d["blocks"] for w, d in sharded.describe().items()}
    assert all(held.values()), "every worker holds part of the gallery"
    assert sorted(b for bs in held.values() for b in bs) == list(range(len(st.gallery().index.blocks)))
    single = st.matcher()
    for probe in _probes(g):
        a, b = sharded.match(probe, st.config.threshold), single.match(probe, st.config.threshold)
        # Same answer format: same blocks, same number of ciphertexts, each at the scale the key service expects.
        assert a.blocks == b.blocks and len(a.ciphertexts) == len(b.ciphertexts) and a.scale == b.scale
        truth = plaintext_hits(g.templates, g.references, probe, st.config.threshold)
        assert _hits(st, a) == _hits(st, b) == truth


def test_a_query_through_the_responder_on_the_cluster(cluster, tmp_path):
    de, node = _state(tmp_path)
    st, g = node.state, node.gallery
    sharded = ShardedMatcher(cluster, st.sealed_shard_spec())

    def matcher(gallery):
        sharded.sync(gallery)
        return sharded

    probe = synthetic.mate_probe(g, 1234, seed=5)
    answer = Responder(st, matcher=matcher).answer(Requester(de).query("FR", probe, "C-1", "serious-crime"))
    opened = Requester(de).open(answer)
    assert opened.hit and len(opened.candidates) == 1
    follow = Requester(de).follow_up(answer, opened.candidates[0])
    assert KeyService(st).resolve(follow).reference == g.references[1234]


def test_no_secret_key_reaches_a_worker(cluster, tmp_path, monkeypatch):
    _de, node = _state(tmp_path, params=INSECURE_SEALED_COMPLEX)
    st = node.state
    sk = Path(st.secret_key_path()).read_bytes()
    windows = [sk[i:i + 48] for i in range(64, len(sk) - 48, max(48, (len(sk) - 112) // 12))]
    assert len(windows) >= 8
    sent: list[bytes] = []
    original = ShardSet.call

    def recording(self, worker, method, *args):
        sent.append(pickle.dumps((method, args)))
        return original(self, worker, method, *args)

    monkeypatch.setattr(ShardSet, "call", recording)
    spec = st.sealed_shard_spec()
    sharded = ShardedMatcher(cluster, spec)
    sharded.sync(st.gallery())
    sharded.match(synthetic.impostor_probe(512, seed=1), 0.4)
    sent.append(pickle.dumps(spec))
    assert len(sent) > 3
    for blob in sent:
        assert not any(w in blob for w in windows), "secret key bytes in a payload to a worker"
    # On the workers: no SEAL secret-key object, and only blocks and the public conjugation key on disk.
    infos = sharded.describe().values()
    for info in infos:
        assert info["secret_objects"] == []
        assert info["pid"] != os.getpid()
        assert "conjugation.key" in info["files"]
        assert all(f == "conjugation.key" or f.endswith(".npy") for f in info["files"])
    assert sum(len(i["blocks"]) for i in infos) == len(st.gallery().index.blocks)
    # The same check does find secrets where they are: in this process, the key service's.
    assert "Decryptor" in secret_objects(_decider(st))


def test_enrolment_and_removal_reach_only_the_owners_of_changed_blocks(cluster, tmp_path):
    _de, node = _state(tmp_path)
    st, g = node.state, node.gallery
    sharded = ShardedMatcher(cluster, st.sealed_shard_spec())
    sharded.sync(st.gallery())
    before = {w: d["blocks"] for w, d in sharded.describe().items()}
    files_before = [b.file for b in st.gallery().index.blocks]
    extra = synthetic.make_gallery(700, seed=77, prefix="NEW")
    KeyService(st).enroll(extra.templates, extra.references)  # fills the last block, then a new one
    after_enroll = st.gallery().index.blocks
    changed = [b for b, blk in enumerate(after_enroll) if b >= len(files_before) or blk.file != files_before[b]]
    report = sharded.sync(st.gallery())
    assert report["sent"] == len(changed) and 0 < len(changed) < len(after_enroll)
    now = {w: d["blocks"] for w, d in sharded.describe().items()}
    names = sorted(now)
    for b in changed:  # each changed block sits exactly on its owner
        assert [w for w in names if b in now[w]] == owners(b, names, 1, st.key_id)
    for w in names:  # and nothing else moved
        assert set(before[w]) <= set(now[w])
    KeyService(st).remove(g.references[3])
    report = sharded.sync(st.gallery())
    assert report["sent"] == 1 and report["dropped"] == 1
    probe = synthetic.mate_probe(g, 3, seed=1)
    assert _hits(st, sharded.match(probe, 0.4)) == set()
    probe = synthetic.mate_probe(extra, 650, seed=1)
    assert _hits(st, sharded.match(probe, 0.4)) == {extra.references[650]}


def test_rebalancing_when_a_worker_joins_moves_only_its_blocks(tmp_path):
    _de, node = _state(tmp_path)
    st, g = node.state, node.gallery
    blocks = len(st.gallery().index.blocks)
    # A salt under which the third worker wins some blocks (with six blocks it can win none).
    salt = next(f"r{i}" for i in range(100) if plan(blocks, ["0", "1"], 1, f"r{i}") != plan(blocks, ["0", "1", "2"], 1,
                                                                                            f"r{i}"))
    with connect("local:2") as handle:
        sharded = ShardedMatcher(handle, st.sealed_shard_spec(), salt=salt)
        sharded.sync(st.gallery())
        old = sharded.placement()
        handle.local.scale(3)
        handle.client.wait_for_workers(3, timeout=60)
        report = sharded.sync(st.gallery())
        new = sharded.placement()
        moved = moves(old, new)
        # Rendezvous hashing: a block moves only if the new worker now wins it.
        assert moved and all(gain == {"2"} and len(lose) == 1 for gain, lose in moved.values())
        assert new == plan(blocks, ["0", "1", "2"], 1, salt)
        assert report["sent"] == len(moved) == report["dropped"]
        assert {w: d["blocks"] for w, d in sharded.describe().items()}["2"] == sorted(moved)
        probe = synthetic.mate_probe(g, 2000, seed=3)
        assert _hits(st, sharded.match(probe, 0.4)) == {g.references[2000]}


@pytest.mark.parametrize("replicas", [1, 2])
def test_a_worker_lost_mid_query(tmp_path, monkeypatch, replicas):
    _de, node = _state(tmp_path)
    st, g = node.state, node.gallery
    probe = synthetic.mate_probe(g, 2000, seed=3)
    with connect("local:2") as handle:
        sharded = ShardedMatcher(handle, st.sealed_shard_spec(), replicas=replicas)
        sharded.sync(st.gallery())
        pids = {w: d["pid"] for w, d in sharded.describe().items()}
        victim = kill_after_dispatch(monkeypatch, pids, "match")
        if replicas == 1:
            # Its blocks have no other copy: the query fails, it is never answered on part of the gallery.
            with pytest.raises(ClusterError, match="no live worker"):
                sharded.match(probe, 0.4)
        else:
            # Every block has a second copy: the lost worker's part is recomputed there.
            result = sharded.match(probe, 0.4)
            assert _hits(st, result) == {g.references[2000]}
            assert len(result.blocks) == len(st.gallery().index.blocks)
        assert victim
        monkeypatch.undo()
        # The nanny restarts the worker under the same name; the next sync refills it, and queries work.
        wait_for(lambda: set(handle.workers()) == {"0", "1"}, timeout=60, what="the nanny's restart")
        sharded.sync(st.gallery())
        assert _hits(st, sharded.match(probe, 0.4)) == {g.references[2000]}


def test_placement_is_stable_and_validated():
    names = ["0", "1", "2"]
    p1 = plan(40, names, 2, "k")
    assert p1 == plan(40, list(reversed(names)), 2, "k")
    assert all(len(set(o)) == 2 for o in p1.values())
    assert {o[0] for o in p1.values()} == set(names)  # everyone is primary for something
    with pytest.raises(ParameterError):
        owners(0, [], 1)
    with pytest.raises(ParameterError):
        owners(0, names, 0)


def test_a_gallery_of_another_key_is_refused(cluster, tmp_path):
    _de, a = _state(tmp_path / "a")
    _de2, b = _state(tmp_path / "b")
    sharded = ShardedMatcher(cluster, a.state.sealed_shard_spec())
    with pytest.raises(ParameterError):
        sharded.sync(b.state.gallery())
    with pytest.raises(ClusterError, match="never synced"):
        sharded.match(np.ones(512, dtype=np.float32), 0.4)


def test_pprm_serve_on_a_cluster(tmp_path):
    from pprm.net import Directory, ask
    from tests.helpers import spawn

    de, node = _state(tmp_path)
    proc = spawn(["serve", node.state.dir, "--port", "0", "--cluster", "local:2"], timeout=120)
    try:
        probe = synthetic.mate_probe(node.gallery, 2222, seed=9)
        (o,) = ask(de, probe, ["FR"], case="C-CL", purpose="serious-crime", directory=Directory({"FR": proc.url}))
        assert o.status == "hit" and len(o.candidates) == 1
        (o,) = ask(de, synthetic.impostor_probe(512, seed=9), ["FR"], case="C-CL", purpose="serious-crime",
                   directory=Directory({"FR": proc.url}))
        assert o.status == "no hit"
    finally:
        code, err = proc.stop()
    assert code in (0, -15), err
    assert "sharded over 2 workers" in err


def test_pprm_serve_on_a_cluster_with_its_key_service_apart(tmp_path):
    """The split layout: the front shards the sealed gallery over the cluster, the key service decides."""
    import shutil
    import tempfile

    from pprm.net import Directory, ask, send_follow_up
    from pprm.node.split import split
    from tests.helpers import spawn

    de, node = _state(tmp_path)
    short = tempfile.mkdtemp(prefix="pks-")
    keydir = f"{short}/ks"
    split(node.state.dir, keydir)
    ks = spawn(["keyservice", "serve", keydir])
    proc = spawn(["serve", node.state.dir, "--port", "0", "--cluster", "local:2"], timeout=120)
    try:
        probe = synthetic.mate_probe(node.gallery, 1234, seed=4)
        directory = Directory({"FR": proc.url})
        (o,) = ask(de, probe, ["FR"], case="C-CL-S", purpose="serious-crime", directory=directory)
        assert o.status == "hit" and len(o.candidates) == 1
        assert o.answer_path is not None
        ack = send_follow_up(de, Path(o.answer_path).read_bytes(), o.candidates[0], directory)
        assert ack["status"] == "resolved"
        resolved = [e["data"]["reference"] for e in node.state.audit.entries() if e["event"] == "resolve"]
        assert resolved == [node.gallery.references[1234]]
    finally:
        code, err = proc.stop()
        ks.stop()
        shutil.rmtree(short, ignore_errors=True)
    assert code in (0, -15), err
    assert "sharded over 2 workers" in err
