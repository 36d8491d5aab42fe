"""A split state: the front answers with its key service in another directory (and process).

Tried as an attacker would: the front's directory after a split, a front
that hands the key service made-up queries, replays, over-quota queries and
masked answers that do not belong to the query, and a client with its own
keys that is not the pinned front. Each refusal is a typed error and leaves
the key-service directory byte for byte as it was.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pprm import synthetic
from pprm._fs import atomic_write_json
from pprm.crypto.identity import Identity
from pprm.crypto.masked_codec import masked_layout
from pprm.errors import (
    AuthenticationError,
    CiphertextError,
    GalleryError,
    MessageError,
    ParameterError,
    PolicyError,
    PolicyTamperedError,
    ReplayError,
    StateError,
)
from pprm.matching.sealed import MaskedResult
from pprm.node import keylink
from pprm.node.keyservice import KeyService
from pprm.node.keyservice_host import KeyServiceHost, serve
from pprm.node.remote_keys import RemoteKeyService, key_service_for
from pprm.node.requester import Requester
from pprm.node.responder import Responder
from pprm.node.split import SECRET_FILES, front_pin, join, split
from pprm.node.state import State
from tests.helpers import (
    INSECURE_BLIND,
    build_network,
    leak_forms,
    new_state,
    occurs_in,
    plaintext_hits,
    snapshot,
    windows,
)


@dataclass
class Split:
    """A requester DE and a responder FR whose key service runs in a thread."""

    de: State
    fr: State
    keydir: str
    address: str
    gallery: synthetic.SyntheticGallery
    secret_key: bytes
    token_key: bytes


def _short_dir() -> str:
    # Unix socket paths are limited to about 100 bytes; pytest's tmp paths can be longer.
    return tempfile.mkdtemp(prefix="pks-")


@contextlib.contextmanager
def key_service_thread(keydir: str, address: str | None = None) -> Iterator[None]:
    """Serve KEYDIR's key service from a thread of this process for the duration of the block."""
    stop, ready = threading.Event(), threading.Event()
    t = threading.Thread(target=serve, args=(keydir, address), kwargs={"ready": lambda _a: ready.set(),
                                                                       "stop": stop.is_set}, daemon=True)
    t.start()
    assert ready.wait(20)
    # The key service warms its blind database in a thread of its own, which takes the state lock
    # (creating KEYDIR/.lock): let it finish, so that tests comparing KEYDIR snapshots see only their own change.
    deadline = time.monotonic() + 20
    while any(x.name == "pprm-blind-warm" for x in threading.enumerate()):
        assert time.monotonic() < deadline, "the blind warm-up thread did not finish"
        time.sleep(0.01)
    try:
        yield
    finally:
        stop.set()
        t.join(10)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[Split]:
    nodes = build_network(str(tmp_path), ("DE", "FR"), n=600, seed=7, quota_per_case=3)
    fr = nodes["FR"].state
    sk = Path(fr.secret_key_path()).read_bytes()
    tk = fr.token_key()
    short = _short_dir()
    keydir = os.path.join(short, "ks")
    split(fr.dir, keydir)
    try:
        with key_service_thread(keydir):
            yield Split(nodes["DE"].state, State.open(fr.dir), keydir, os.path.join(keydir, "keyservice.sock"),
                        nodes["FR"].gallery, sk, tk)
    finally:
        shutil.rmtree(short, ignore_errors=True)


def test_split_leaves_no_secret_in_the_front_directory(world: Split) -> None:
    fr = world.fr
    for rel in SECRET_FILES:
        assert not os.path.exists(fr.path(*rel.split("/"))), rel
        assert os.stat(os.path.join(world.keydir, *rel.split("/"))).st_mode & 0o077 == 0
    assert not os.path.exists(fr.path("blind"))
    files = snapshot(fr.dir)
    needles = [*windows(world.secret_key, 32, 97, skip=64), *leak_forms(world.token_key)]
    assert occurs_in(needles, files) == []
    # The check finds them where they are.
    assert occurs_in(needles, snapshot(world.keydir))
    with pytest.raises(StateError, match="split"):
        KeyService(fr).enroll(world.gallery.templates[:1], ["X"])


def test_split_front_answers_exactly_the_plaintext_hits(world: Split) -> None:
    g = world.gallery
    probe = synthetic.mate_probe(g, 5, seed=1)
    q = Requester(world.de).query("FR", probe, "CASE-1", "serious-crime")
    responder = Responder(world.fr)
    answer = responder.answer(q)
    assert responder.remote is not None
    responder.remote.flush()  # the confirmation goes off the answering path
    opened = Requester(world.de).open(answer)
    keys = key_service_for(world.fr)
    assert isinstance(keys, RemoteKeyService)
    refs = {keys.resolve(Requester(world.de).follow_up(answer, tok)).reference for tok in opened.candidates}
    assert refs == plaintext_hits(g.templates, g.references, probe, world.fr.config.threshold)
    assert refs
    # Both logs: the front's answer and resolution, the key service's release, commit and resolution.
    front = [e["event"] for e in world.fr.audit.entries()]
    ks = [e["event"] for e in State.open(world.keydir).audit.entries()]
    assert front.count("answer") == 1 and front.count("resolve") == len(refs)
    assert ks.count("release") == 1 and ks.count("commit") == 1 and ks.count("resolve") == len(refs)
    world.fr.audit.verify()
    State.open(world.keydir).audit.verify()


def test_enrol_and_remove_go_through_the_key_service(world: Split) -> None:
    keys = key_service_for(world.fr)
    extra = synthetic.make_gallery(3, dim=512, seed=99, prefix="NEW")
    ids = keys.enroll(extra.templates, extra.references)
    assert len(ids) == 3 and len(world.fr.gallery()) == 603
    keys.remove(extra.references[1])
    assert len(world.fr.gallery()) == 602
    with pytest.raises(GalleryError):
        keys.remove(extra.references[1])
    probe = synthetic.mate_probe(extra, 2, seed=3)
    q = Requester(world.de).query("FR", probe, "CASE-2", "serious-crime")
    opened = Requester(world.de).open(Responder(world.fr).answer(q))
    assert opened.hit


def _release_args(world: Split, case: str = "CASE-R") -> tuple[bytes, MaskedResult]:
    probe = synthetic.mate_probe(world.gallery, 9, seed=4)
    q = Requester(world.de).query("FR", probe, case, "serious-crime")
    vq = KeyService(world.fr).verify_query(q)
    return q, world.fr.matcher().match(vq.body.probe, world.fr.config.threshold)


def test_repeat_before_commit_gives_the_same_tokens_and_decrypts_nothing(world: Split) -> None:
    remote = RemoteKeyService(world.fr)
    q, result = _release_args(world)
    first = remote.release(q, result)
    # A front that crashed re-matches (fresh masks) and asks again.
    _, again = _release_args(world)
    second = remote.release(q, again)
    assert second.tokens == first.tokens and second.repeat and not first.repeat
    ks_log = [e["event"] for e in State.open(world.keydir).audit.entries()]
    assert ks_log.count("release") == 1


def test_key_service_refusals_change_nothing(world: Split) -> None:
    remote = RemoteKeyService(world.fr)
    q, result = _release_args(world)
    remote.release(q, result)
    remote.commit("DE", KeyService(world.fr).verify_query(q).envelope.header.id, "a" * 32)
    before = snapshot(world.keydir)

    # A request without a valid query: garbage, a tampered one, one for another state.
    with pytest.raises(MessageError):
        remote.release(b"not a query", result)
    tampered = bytearray(q)
    tampered[-5] ^= 1
    with pytest.raises(MessageError):
        remote.release(bytes(tampered), result)
    # A replay of the committed query, with a fresh masked answer.
    with pytest.raises(ReplayError):
        remote.release(q, result)
    # Masked answers that do not belong to the query's gallery or parameters.
    q2, r2 = _release_args(world, "CASE-S")
    with pytest.raises(CiphertextError):
        remote.release(q2, MaskedResult(r2.blocks, r2.ciphertexts[:-1], r2.scale))
    with pytest.raises(CiphertextError):
        remote.release(q2, MaskedResult(r2.blocks, r2.ciphertexts, r2.scale * 2))
    with pytest.raises(GalleryError):
        remote.release(q2, MaskedResult(tuple(reversed(r2.blocks)), r2.ciphertexts, r2.scale))
    with pytest.raises(CiphertextError):
        remote.release(q2, MaskedResult(r2.blocks, tuple(b[:-7] for b in r2.ciphertexts), r2.scale))
    # A transparent answer of the front's making (c1 = 0: its c0 would be read as the decryption,
    # so the front would choose which records get tokens). On the native backend the key service
    # decides in C, which must refuse it as the numpy path does.
    lay = masked_layout(world.fr.ctx.params, world.fr.ctx.moduli[0])
    low = np.uint64((1 << lay.c0_bits) - 1)
    chosen = tuple((np.frombuffer(b, "<u8") & low).astype("<u8").tobytes() for b in r2.ciphertexts)
    with pytest.raises(CiphertextError, match="transparent"):
        remote.release(q2, MaskedResult(r2.blocks, chosen, r2.scale))
    assert snapshot(world.keydir) == before


def test_over_quota_query_is_refused_by_the_key_service_itself(world: Split) -> None:
    remote = RemoteKeyService(world.fr)
    for _ in range(3):  # quota_per_case = 3
        q, r = _release_args(world, "CASE-Q")
        remote.release(q, r)
    q, r = _release_args(world, "CASE-Q")
    before = snapshot(world.keydir)
    with pytest.raises(PolicyError, match="quota-case"):
        remote.release(q, r)
    assert snapshot(world.keydir) == before


def test_only_the_pinned_front_is_answered(world: Split) -> None:
    host = KeyServiceHost(world.keydir)
    pin = front_pin(world.fr.dir)
    assert pin is not None
    front = world.fr.identity()
    mallory = Identity("FR", Identity.generate("FR").signing_seed, front.box_secret)
    before = snapshot(world.keydir)
    req = keylink.Payload("hello", keylink.new_nonce(), keylink.now(), {})
    for signer in (mallory, Identity.generate("FR")):
        reply = host.handle(keylink.seal_frame(keylink.REQUEST, req, signer, pin.keyservice))
        resp = keylink.open_frame(reply, keylink.RESPONSE, front, pin.keyservice)
        assert resp.op == "error" and resp.meta["code"] == "AuthenticationError"
    # A genuine frame, tampered, or replayed after it succeeded once.
    frame = keylink.seal_frame(keylink.REQUEST, req, front, pin.keyservice)
    bad = bytearray(frame)
    bad[-1] ^= 1
    resp = keylink.open_frame(host.handle(bytes(bad)), keylink.RESPONSE, front, pin.keyservice)
    assert resp.meta["code"] == "AuthenticationError"
    assert snapshot(world.keydir) == before
    assert keylink.open_frame(host.handle(frame), keylink.RESPONSE, front, pin.keyservice).op == "ok"
    resp = keylink.open_frame(host.handle(frame), keylink.RESPONSE, front, pin.keyservice)
    assert resp.meta["code"] == "ReplayError"
    # A frame made before this key service started (captured before a restart) is refused too.
    old = keylink.Payload("hello", keylink.new_nonce(), keylink.now() - 5, {})
    host = KeyServiceHost(world.keydir, now=lambda: keylink.now() + 3)
    reply = host.handle(keylink.seal_frame(keylink.REQUEST, old, front, pin.keyservice))
    assert keylink.open_frame(reply, keylink.RESPONSE, front, pin.keyservice).meta["code"] == "MessageError"
    # A response from anyone but the pinned key service is not accepted by the front.
    forged = keylink.seal_frame(keylink.RESPONSE, req, Identity.generate("KS"), front.public)
    with pytest.raises(AuthenticationError):
        keylink.open_frame(forged, keylink.RESPONSE, front, pin.keyservice)


def test_join_brings_the_secrets_back(world: Split, tmp_path: Path) -> None:
    g = world.gallery
    probe = synthetic.mate_probe(g, 11, seed=5)
    q = Requester(world.de).query("FR", probe, "CASE-J", "serious-crime")
    Responder(world.fr).answer(q)
    with pytest.raises(StateError, match="running"):
        join(world.fr.dir, world.keydir)


def test_split_then_join_round_trip(tmp_path: Path) -> None:
    nodes = build_network(str(tmp_path), ("DE", "FR"), n=300, seed=8)
    fr = nodes["FR"].state
    sk = Path(fr.secret_key_path()).read_bytes()
    keydir = os.path.join(_short_dir(), "ks")
    split(fr.dir, keydir)
    assert split(fr.dir, keydir).keyservice == front_pin(fr.dir).keyservice  # type: ignore[union-attr]
    join(fr.dir, keydir)
    assert Path(fr.secret_key_path()).read_bytes() == sk
    assert front_pin(fr.dir) is None and not os.path.exists(keydir)
    g = nodes["FR"].gallery
    probe = synthetic.mate_probe(g, 1, seed=6)
    q = Requester(nodes["DE"].state).query("FR", probe, "CASE-K", "serious-crime")
    opened = Requester(nodes["DE"].state).open(Responder(State.open(fr.dir)).answer(q))
    assert opened.hit
    events = [e["event"] for e in State.open(fr.dir).audit.entries()]
    assert events.count("split") == 1 and events.count("join") == 1
    State.open(fr.dir).audit.verify()
    np.testing.assert_equal(len(State.open(fr.dir).gallery()), 300)


@pytest.fixture
def blind_world(tmp_path: Path) -> Iterator[tuple[State, State, str, list[str], np.ndarray]]:
    de = new_state(tmp_path / "DE", "DE", blind_params=INSECURE_BLIND)
    fr = new_state(tmp_path / "FR", "FR", blind_params=INSECURE_BLIND)
    de.trust(fr.card_bytes)
    fr.trust(de.card_bytes)
    rng = np.random.default_rng(17)
    raw = rng.standard_normal((300, 512))
    templates = (raw / np.linalg.norm(raw, axis=1, keepdims=True)).astype(np.float32)
    refs = [f"FR-{i:05d}" for i in range(300)]
    KeyService(fr).enroll(templates, refs)
    short = _short_dir()
    keydir = os.path.join(short, "ks")
    split(fr.dir, keydir)
    try:
        with key_service_thread(keydir):
            yield de, State.open(fr.dir), keydir, refs, templates
    finally:
        shutil.rmtree(short, ignore_errors=True)


def test_split_blind_flow_matches_the_plaintext(blind_world: Any) -> None:
    de, fr, keydir, refs, templates = blind_world
    rng = np.random.default_rng(3)
    for i, index in enumerate((7, 250)):
        v = templates[index].astype(np.float64) + 0.3 * rng.standard_normal(512) / np.sqrt(512)
        probe = v / np.linalg.norm(v)
        assert plaintext_hits(templates, refs, probe, fr.config.threshold) == {refs[index]}
        sent = Requester(de).prepare("FR", probe, f"CASE-B{i}", "serious-crime", profile="blind")
        # A follow-up retires the key, so each query here announces a new one with it.
        assert sent.announcements
        answer = Responder(fr).answer(sent.query, announcements=sent.announcements)
        opened = Requester(de).open(answer)
        assert len(opened.candidates) == 1
        res = key_service_for(fr).resolve(Requester(de).follow_up(answer, opened.candidates[0]))
        assert res.reference == refs[index]
        with pytest.raises(ReplayError):
            Responder(fr).answer(sent.query)
    # The blind database and the announced keys are in the key service's directory only.
    assert not os.path.exists(fr.path("blind")) and not os.path.exists(fr.path("private", "blind.key"))
    assert os.listdir(os.path.join(keydir, "blind"))
    ks = [e["event"] for e in State.open(keydir).audit.entries()]
    assert ks.count("release") == 2 and ks.count("keys") == 2 and ks.count("resolve") == 2
    # The one decryption of the whole gallery (to build the blind database) is logged too.
    assert ks.count("export") == 1
    fr.audit.verify()
    State.open(keydir).audit.verify()


def test_a_hand_edit_of_the_key_services_policy_is_refused_at_start(tmp_path: Path) -> None:
    nodes = build_network(str(tmp_path), ("DE", "FR"), n=0)
    keydir = os.path.join(_short_dir(), "ks")
    split(nodes["FR"].state.dir, keydir)
    KeyServiceHost(keydir)
    path = os.path.join(keydir, "state.json")
    obj = json.loads(Path(path).read_text())
    obj["k"] = 1000
    Path(path).write_text(json.dumps(obj))
    with pytest.raises(PolicyTamperedError, match="k"):
        KeyServiceHost(keydir)
    shutil.rmtree(os.path.dirname(keydir))


@pytest.mark.parametrize("stage", ["keydir-built", "pin-written"])
def test_an_interrupted_split_loses_nothing_and_finishes_when_run_again(tmp_path: Path, stage: str,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    nodes = build_network(str(tmp_path), ("DE", "FR"), n=300, seed=12)
    fr = nodes["FR"].state
    sk, tk = Path(fr.secret_key_path()).read_bytes(), fr.token_key()
    keydir = os.path.join(_short_dir(), "ks")

    class Crash(Exception):
        pass

    import pprm.node.split as split_module

    if stage == "keydir-built":
        # KEYDIR complete and renamed into place, DIR not yet a front.
        monkeypatch.setattr(split_module, "atomic_write_json", _fail_on_pin(atomic_write_json, Crash))
    else:
        # DIR is a front, its secrets not yet deleted.
        monkeypatch.setattr(split_module, "_delete_secrets", _raise(Crash))
    with pytest.raises(Crash):
        split(fr.dir, keydir)
    monkeypatch.undo()
    # Nothing lost: the secrets are whole in DIR or KEYDIR (here: both).
    assert Path(fr.secret_key_path()).read_bytes() == sk
    assert Path(keydir, "private", "ckks-secret.key").read_bytes() == sk
    split(fr.dir, keydir)
    assert not os.path.exists(fr.secret_key_path())
    assert Path(keydir, "private", "token.key").read_bytes() == tk
    assert [e["event"] for e in State.open(fr.dir).audit.entries()].count("split") == 1
    # And it answers, split.
    with key_service_thread(keydir):
        probe = synthetic.mate_probe(nodes["FR"].gallery, 3, seed=3)
        q = Requester(nodes["DE"].state).query("FR", probe, "CASE-I", "serious-crime")
        assert Requester(nodes["DE"].state).open(Responder(State.open(fr.dir)).answer(q)).hit
    shutil.rmtree(os.path.dirname(keydir), ignore_errors=True)


def _fail_on_pin(real: Any, exc: type[Exception]) -> Any:
    def write(path: str, obj: Any, mode: int = 0o600) -> None:
        if path.endswith("keyservice.json") and isinstance(obj, dict) and obj.get("role") == "front":
            raise exc("crash before the pin")
        real(path, obj, mode=mode)
    return write


def _raise(exc: type[Exception]) -> Any:
    def delete(*_a: Any, **_k: Any) -> None:
        raise exc("crash before the secrets are deleted")
    return delete


def test_the_key_service_on_a_loopback_port(tmp_path: Path) -> None:
    import socket

    nodes = build_network(str(tmp_path), ("DE", "FR"), n=300, seed=13)
    fr = nodes["FR"].state
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"127.0.0.1:{port}"
    keydir = os.path.join(_short_dir(), "ks")
    split(fr.dir, keydir, address=address)
    assert front_pin(fr.dir).address == address  # type: ignore[union-attr]
    with key_service_thread(keydir, address):
        probe = synthetic.mate_probe(nodes["FR"].gallery, 5, seed=5)
        q = Requester(nodes["DE"].state).query("FR", probe, "CASE-T", "serious-crime")
        assert Requester(nodes["DE"].state).open(Responder(State.open(fr.dir)).answer(q)).hit
        with pytest.raises(ParameterError, match="loopback"):
            RemoteKeyService(State.open(fr.dir), "10.0.0.1:9")
    shutil.rmtree(os.path.dirname(keydir), ignore_errors=True)
