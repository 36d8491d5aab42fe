"""End to end through the Python API: three states, planted mates, and every refusal.

Encrypted answers are compared with plaintext ground truth: the references a
requester obtains through follow-up and resolve must be exactly the gallery
references whose plaintext cosine score clears the threshold (test data keeps
every score at least 2e-3 away from the threshold, where decisions are exact).
"""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path

import numpy as np
import pytest

from pprm import synthetic
from pprm.errors import (
    ExpiredError,
    GalleryError,
    MessageError,
    RecipientError,
    ReplayError,
    StateError,
    TokenError,
    UnknownPeerError,
)
from pprm.node.keyservice import KeyService
from pprm.node.requester import Requester
from pprm.node.responder import Responder
from pprm.protocol.canonical import b64, unb64
from pprm.protocol.envelope import CLOCK_SKEW
from pprm.protocol.messages import AnswerBody
from tests.helpers import (
    Node,
    build_network,
    craft,
    craft_followup,
    new_state,
    plaintext_hits,
    resolve_all,
    snapshot,
)

NAMES = ("DE", "FR", "NL")


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Node]:
    """Three mutually trusting states with 600-template galleries (two blocks each)."""
    return build_network(str(tmp_path_factory.mktemp("net")), NAMES, n=600, seed=100)


def _ask(net: dict[str, Node], a: str, b: str, probe: np.ndarray, **kw: object) -> tuple[bytes, bytes]:
    q = Requester(net[a].state).query(b, probe, f"CASE-{a}-{b}", "serious-crime", **kw)  # type: ignore[arg-type]
    return q, Responder(net[b].state).answer(q)


def _mate(net: dict[str, Node], b: str, index: int, seed: int = 0) -> np.ndarray:
    return synthetic.mate_probe(net[b].gallery, index, seed)


# -- the main flow ------------------------------------------------------------

def test_every_requester_queries_every_responder(net: dict[str, Node]) -> None:
    for i, (a, b) in enumerate(itertools.permutations(NAMES, 2)):
        gal = net[b].gallery
        tau = net[b].state.config.threshold
        index = 37 * i + 11
        mate = synthetic.mate_probe(gal, index, seed=i)
        impostor = synthetic.impostor_probe(512, seed=1000 + i)
        for probe, planted in ((mate, {gal.references[index]}), (impostor, set())):
            truth = plaintext_hits(gal.templates, gal.references, probe, tau)
            assert truth == planted  # the data are what the test claims
            _q, answer = _ask(net, a, b, probe)
            opened = Requester(net[a].state).open(answer)
            assert opened.sender == b
            assert opened.hit is bool(truth)
            assert len(opened.candidates) == len(truth)
            refs = resolve_all(net[a].state, KeyService(net[b].state), answer, opened.candidates)
            assert set(refs) == truth
            assert opened.to_json() == {"from": b, "query_id": opened.query_id, "hit": bool(truth),
                                        "candidates": list(opened.candidates)}
    for node in net.values():
        assert node.state.audit.verify() > 0


def test_candidate_cap_releases_exactly_k_true_hits(tmp_path: Path) -> None:
    nodes = build_network(str(tmp_path), ["DE", "FR"], n=0, k=3)
    fr = nodes["FR"].state
    gal = synthetic.make_gallery(600, seed=7, prefix="FR")
    templates = gal.templates.copy()
    # Eight more templates of identity 5: with it, nine genuine matches.
    rng = np.random.default_rng(99)
    dup_rows = list(range(100, 108))
    templates[dup_rows] = synthetic.samples_of(np.repeat(gal.centres[5:6], len(dup_rows), axis=0), rng)
    KeyService(fr).enroll(templates, gal.references)
    probe = synthetic.mate_probe(gal, 5, seed=1)
    truth = plaintext_hits(templates, gal.references, probe, fr.config.threshold)
    assert truth == {gal.references[i] for i in [5, *dup_rows]}

    req, ks = Requester(nodes["DE"].state), KeyService(fr)
    for _ in range(2):
        answer = Responder(fr).answer(req.query("FR", probe, "CASE-K", "serious-crime"))
        opened = req.open(answer)
        assert opened.hit and len(opened.candidates) == 3
        refs = resolve_all(nodes["DE"].state, ks, answer, opened.candidates)
        assert len(set(refs)) == 3
        assert set(refs) <= truth
    logged = [e["data"] for e in fr.audit.entries() if e["event"] == "answer"]
    assert [(d["hits"], d["released"]) for d in logged] == [(9, 3), (9, 3)]


def test_opening_an_answer_twice_gives_the_same_result(net: dict[str, Node]) -> None:
    _q, answer = _ask(net, "DE", "FR", _mate(net, "FR", 4))
    req = Requester(net["DE"].state)
    first = req.open(answer)
    before = snapshot(net["DE"].state.dir)
    assert req.open(answer) == first
    assert snapshot(net["DE"].state.dir) == before


# -- replay, addressing, time -------------------------------------------------

def test_replayed_query_changes_nothing(net: dict[str, Node]) -> None:
    q, _answer = _ask(net, "DE", "FR", _mate(net, "FR", 8))
    fr = net["FR"].state
    before = snapshot(fr.dir)
    with pytest.raises(ReplayError):
        Responder(fr).answer(q)
    with pytest.raises(ReplayError):
        KeyService(fr).verify_query(q)
    assert snapshot(fr.dir) == before


def test_query_for_another_recipient_is_refused(net: dict[str, Node]) -> None:
    q = Requester(net["DE"].state).query("FR", _mate(net, "FR", 9), "C", "serious-crime")
    nl = net["NL"].state
    before = snapshot(nl.dir)
    with pytest.raises(RecipientError):
        Responder(nl).answer(q)
    assert snapshot(nl.dir) == before
    # The intended recipient still answers it.
    assert Requester(net["DE"].state).open(Responder(net["FR"].state).answer(q)).hit


def test_expired_and_future_queries_are_refused(net: dict[str, Node]) -> None:
    de, fr = net["DE"].state, net["FR"].state
    t = time.time()
    q = Requester(de).query("FR", _mate(net, "FR", 10), "C", "serious-crime", now=t)
    late = t + de.config.query_ttl + CLOCK_SKEW + 5
    q_future = Requester(de).query("FR", _mate(net, "FR", 10), "C", "serious-crime", now=t + 3 * CLOCK_SKEW)
    before = snapshot(fr.dir)
    with pytest.raises(ExpiredError):
        Responder(fr).answer(q, now=late)
    with pytest.raises(ExpiredError):
        Responder(fr).answer(q_future, now=t)
    assert snapshot(fr.dir) == before
    # Within its window the same query is fine.
    assert Requester(de).open(Responder(fr).answer(q, now=t + 60)).hit


# -- follow-ups -------------------------------------------------------------

def test_followup_with_foreign_or_altered_tokens(net: dict[str, Node]) -> None:
    de, fr = net["DE"].state, net["FR"].state
    _q1, a1 = _ask(net, "DE", "FR", _mate(net, "FR", 20))
    _q2, a2 = _ask(net, "DE", "FR", _mate(net, "FR", 21))
    req, ks = Requester(de), KeyService(fr)
    o1, o2 = req.open(a1), req.open(a2)
    (t1,), (t2,) = o1.candidates, o2.candidates

    # The requester itself refuses to send a token that is not in the answer.
    with pytest.raises(TokenError):
        req.follow_up(a1, t2)

    raw = bytearray(unb64(t1[2:], "t"))  # strip the "T1" format tag
    raw[30] ^= 0x01
    altered = "T1" + b64(bytes(raw))
    # A token released to NL for the same record, presented by DE.
    qn = Requester(net["NL"].state).query("FR", _mate(net, "FR", 20), "C", "serious-crime")
    tn = Requester(net["NL"].state).open(Responder(fr).answer(qn)).candidates[0]

    before = snapshot(fr.dir)
    for fu in (
        craft_followup(de, "FR", o1.query_id, t2),       # token of another answer
        craft_followup(de, "FR", o2.query_id, t1),       # right token, other query id
        craft_followup(de, "FR", o1.query_id, altered),  # altered token
        craft_followup(de, "FR", o1.query_id, tn),       # token released to NL
    ):
        with pytest.raises(TokenError):
            ks.resolve(fu)
    assert snapshot(fr.dir) == before
    # The genuine pairing still resolves.
    assert ks.resolve(craft_followup(de, "FR", o1.query_id, t1)).reference == "FR-0000020"


def test_followup_replay_is_refused(net: dict[str, Node]) -> None:
    de, fr = net["DE"].state, net["FR"].state
    _q, answer = _ask(net, "DE", "FR", _mate(net, "FR", 30))
    req, ks = Requester(de), KeyService(fr)
    fu = req.follow_up(answer, req.open(answer).candidates[0])
    res = ks.resolve(fu)
    assert res.reference == "FR-0000030" and res.requester == "DE"
    before = snapshot(fr.dir)
    with pytest.raises(ReplayError):
        ks.resolve(fu)
    assert snapshot(fr.dir) == before
    # A fresh follow-up for the same token is a new request, and is logged.
    assert ks.resolve(req.follow_up(answer, req.open(answer).candidates[0])).reference == "FR-0000030"


def test_followup_to_another_state_is_refused(net: dict[str, Node]) -> None:
    _q, answer = _ask(net, "DE", "FR", _mate(net, "FR", 31))
    req = Requester(net["DE"].state)
    fu = req.follow_up(answer, req.open(answer).candidates[0])
    with pytest.raises(RecipientError):
        KeyService(net["NL"].state).resolve(fu)


def test_resolve_after_removal_is_a_gallery_error(tmp_path: Path) -> None:
    nodes = build_network(str(tmp_path), ["DE", "FR"], n=60, seed=5)
    de, fr = nodes["DE"].state, nodes["FR"].state
    req, ks = Requester(de), KeyService(fr)
    probe = synthetic.mate_probe(nodes["FR"].gallery, 12, 0)
    answer = Responder(fr).answer(req.query("FR", probe, "C", "serious-crime"))
    token = req.open(answer).candidates[0]
    ks.remove("FR-0000012")
    fu = req.follow_up(answer, token)
    with pytest.raises(GalleryError):
        ks.resolve(fu)
    # And a new query no longer finds the removed record.
    again = req.open(Responder(fr).answer(req.query("FR", synthetic.mate_probe(nodes["FR"].gallery, 12, 0),
                                                    "C", "serious-crime")))
    assert not again.hit


# -- answers ------------------------------------------------------------------

def test_second_different_answer_is_refused(net: dict[str, Node]) -> None:
    de, fr = net["DE"].state, net["FR"].state
    q = Requester(de).query("FR", _mate(net, "FR", 40), "C", "serious-crime")
    captured: list[bytes] = []

    def grab_then_fail(blob: bytes) -> None:
        captured.append(blob)
        raise OSError("disk full")

    with pytest.raises(OSError):
        Responder(fr).answer(q, sink=grab_then_fail)
    second = Responder(fr).answer(q)
    first = captured[0]
    assert first != second
    req = Requester(de)
    accepted = req.open(first)
    before = snapshot(de.dir)
    with pytest.raises(ReplayError):
        req.open(second)
    with pytest.raises(ReplayError):
        req.follow_up(second, req.open(first).candidates[0])
    assert snapshot(de.dir) == before
    assert req.open(first) == accepted


def test_answer_from_a_peer_we_did_not_ask_is_refused(net: dict[str, Node]) -> None:
    de, nl = net["DE"].state, net["NL"].state
    _q, answer = _ask(net, "DE", "FR", _mate(net, "FR", 41))
    qid = Requester(de).open(answer).query_id
    # NL (trusted, correctly signed) answers DE's query to FR.
    bogus = craft(nl, "DE", "answer", AnswerBody(qid, False, ()).to_bytes(), in_reply_to=qid)
    # ... and a query DE never sent at all.
    unsent = craft(nl, "DE", "answer", AnswerBody("ab" * 16, False, ()).to_bytes(), in_reply_to="ab" * 16)
    before = snapshot(de.dir)
    for blob in (bogus, unsent):
        with pytest.raises(MessageError, match="did not send"):
            Requester(de).open(blob)
    assert snapshot(de.dir) == before


def test_state_that_trusts_nobody_refuses_everything(tmp_path: Path) -> None:
    nodes = build_network(str(tmp_path), ["DE"], n=40, seed=3)
    de = nodes["DE"].state
    lone = new_state(str(tmp_path / "PL"), "PL")
    de.trust(lone.card_bytes)  # DE can address PL; PL knows nobody
    probe = synthetic.impostor_probe(512, seed=1)
    q = Requester(de).query("PL", probe, "C", "serious-crime")
    answer_to_pl = craft(de, "PL", "answer", AnswerBody("cd" * 16, False, ()).to_bytes(), in_reply_to="cd" * 16)
    fu_to_pl = craft_followup(de, "PL", "cd" * 16, "A" * 96)
    with lone.lock():  # the (empty) lock file appears on first use; it holds no state
        pass
    before = snapshot(lone.dir)
    with pytest.raises(UnknownPeerError):
        Responder(lone).answer(q)
    with pytest.raises(UnknownPeerError):
        KeyService(lone).verify_query(q)
    with pytest.raises(UnknownPeerError):
        Requester(lone).open(answer_to_pl)
    with pytest.raises(UnknownPeerError):
        KeyService(lone).resolve(fu_to_pl)
    with pytest.raises(UnknownPeerError):
        Requester(lone).query("DE", probe, "C", "serious-crime")
    with pytest.raises(UnknownPeerError):
        lone.peer("DE")
    assert snapshot(lone.dir) == before


def test_failing_sink_leaves_no_trace(net: dict[str, Node]) -> None:
    de, fr = net["DE"].state, net["FR"].state
    q = Requester(de).query("FR", _mate(net, "FR", 50), "C", "serious-crime")
    before = snapshot(fr.dir)

    def broken(_blob: bytes) -> None:
        raise RuntimeError("cannot write the answer")

    with pytest.raises(RuntimeError):
        Responder(fr).answer(q, sink=broken)
    assert snapshot(fr.dir) == before
    written: list[bytes] = []
    answer = Responder(fr).answer(q, sink=written.append)
    assert written == [answer]
    opened = Requester(de).open(answer)
    assert resolve_all(de, KeyService(fr), answer, opened.candidates) == ["FR-0000050"]


# -- roles --------------------------------------------------------------------

def test_matcher_works_without_private_directory(tmp_path: Path) -> None:
    nodes = build_network(str(tmp_path), ["DE", "FR"], n=600, seed=11)
    de, fr = nodes["DE"].state, nodes["FR"].state
    gal = nodes["FR"].gallery
    probe = synthetic.mate_probe(gal, 321, seed=2)
    truth = plaintext_hits(gal.templates, gal.references, probe, fr.config.threshold)
    q = Requester(de).query("FR", probe, "C", "serious-crime")
    os.rename(fr.path("private"), fr.path("private.away"))
    try:
        matcher_view = type(fr).open(fr.dir)
        with pytest.raises(StateError):
            matcher_view.identity()
        with pytest.raises(StateError):
            # The secret key is read on first use (a front verifies with the same class, without it).
            KeyService(matcher_view).export_templates()
        result = matcher_view.matcher().match(probe, fr.config.threshold)
    finally:
        os.rename(fr.path("private.away"), fr.path("private"))
    assert len(result.ciphertexts) == len(fr.gallery().index.blocks) == 2
    ks = KeyService(fr)
    release = ks.release(ks.verify_query(q), result)
    assert release.hits == len(truth) == 1
    qid = release.query.envelope.header.id
    refs = {KeyService(fr).resolve(craft_followup(de, "FR", qid, t)).reference for t in release.tokens}
    assert refs == truth
