"""The key service: decrypts only for verified single-use queries, and logs what it does."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from pprm import synthetic
from pprm.errors import (
    AuthenticationError,
    GalleryError,
    MessageError,
    ParameterError,
    ReplayError,
    TemplateError,
    TokenError,
)
from pprm.matching.templates import normalise_probe
from pprm.node.keyservice import KeyService, VerifiedQuery
from pprm.node.requester import Requester
from pprm.node.responder import Responder
from pprm.protocol.envelope import Header, new_id, seal_envelope
from pprm.protocol.messages import AnswerBody, QueryBody
from tests.helpers import Node, build_network, craft, craft_followup, plaintext_hits, snapshot


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Node]:
    return build_network(str(tmp_path_factory.mktemp("ks")), ["DE", "FR"], n=200, seed=300)


def _query(net: dict[str, Node], index: int, **kw: object) -> tuple[bytes, np.ndarray]:
    probe = synthetic.mate_probe(net["FR"].gallery, index, seed=4)
    return Requester(net["DE"].state).query("FR", probe, "CASE-KS", "serious-crime", **kw), probe  # type: ignore[arg-type]


def test_verify_query_returns_the_boxed_body(net: dict[str, Node]) -> None:
    q, probe = _query(net, 1)
    vq = KeyService(net["FR"].state).verify_query(q)
    assert vq.envelope.header.type == "query"
    assert vq.envelope.header.sender == "DE"
    assert (vq.body.case, vq.body.purpose) == ("CASE-KS", "serious-crime")
    assert np.array_equal(vq.body.probe, normalise_probe(probe, 512))
    text = repr(vq)
    assert "DE" in text and "CASE-KS" not in text and "serious-crime" not in text
    assert repr(KeyService(net["FR"].state)) == "KeyService(FR)"


def test_verify_query_refuses_other_message_types(net: dict[str, Node]) -> None:
    de, fr = net["DE"].state, net["FR"].state
    ks = KeyService(fr)
    fu = craft_followup(de, "FR", "ab" * 16, "A" * 96)
    ans = craft(de, "FR", "answer", AnswerBody("ab" * 16, False, ()).to_bytes(), in_reply_to="ab" * 16)
    for blob in (fu, ans):
        with pytest.raises(MessageError, match="expected a query"):
            ks.verify_query(blob)
    q, _ = _query(net, 2)
    with pytest.raises(MessageError, match="expected a follow-up"):
        ks.resolve(q)


def test_verify_query_refuses_bad_bodies(net: dict[str, Node]) -> None:
    de, fr = net["DE"].state, net["FR"].state
    ks = KeyService(fr)
    good = QueryBody("C", "serious-crime", np.ones(512, np.float32)).to_bytes()
    # Signed and boxed by a trusted peer, but not a query body.
    with pytest.raises(MessageError):
        ks.verify_query(craft(de, "FR", "query", b'{"case":"C"}'))
    # Boxed with the wrong key: a correct signature does not make the box open.
    ident = de.identity()
    t = int(time.time())
    h = Header("query", "DE", "FR", new_id(), t, t + 600, fr.config.parameter_set.digest, "sealed", "")
    wrong_box = seal_envelope(ident, h, ident.box_to(ident.public, good))
    with pytest.raises(AuthenticationError):
        ks.verify_query(wrong_box)
    # Made for another parameter set (a downgrade attempt).
    with pytest.raises(ParameterError):
        ks.verify_query(craft(de, "FR", "query", good, params="0" * 64))


def test_wrong_dimension_probe_is_a_template_error(net: dict[str, Node]) -> None:
    de, fr = net["DE"].state, net["FR"].state
    before = snapshot(fr.dir)
    for probe in (np.ones(256, np.float32), np.full(512, np.nan, np.float32), np.zeros(512, np.float32)):
        q = craft(de, "FR", "query", QueryBody("C", "serious-crime", probe).to_bytes())
        with pytest.raises(TemplateError):
            Responder(fr).answer(q)
    assert snapshot(fr.dir) == before


def test_release_records_nothing_until_committed(net: dict[str, Node]) -> None:
    fr = net["FR"].state
    gal = net["FR"].gallery
    q, probe = _query(net, 3)
    ks = KeyService(fr)
    result = fr.matcher().match(probe, fr.config.threshold)
    before = snapshot(fr.dir)
    vq = ks.verify_query(q)
    rel = ks.release(vq, result)
    rel_again = ks.release(vq, result)
    assert snapshot(fr.dir) == before
    truth = plaintext_hits(gal.templates, gal.references, probe, fr.config.threshold)
    assert rel.hits == rel_again.hits == len(truth) == 1
    assert len(rel.tokens) == 1 and rel.tokens != rel_again.tokens  # fresh tokens every time
    with fr.lock():
        ks.commit_release(rel, "cd" * 16)
    entry = fr.audit.entries()[-1]
    assert entry["event"] == "answer"
    assert entry["data"]["answer_id"] == "cd" * 16 and entry["data"]["released"] == 1
    with pytest.raises(ReplayError):
        ks.release(vq, result)
    with pytest.raises(ReplayError):
        ks.verify_query(q)
    with pytest.raises(ReplayError), fr.lock():
        ks.commit_release(rel, "ef" * 16)


def test_release_verifies_the_query_itself(net: dict[str, Node]) -> None:
    fr = net["FR"].state
    q, probe = _query(net, 5)
    result = fr.matcher().match(probe, fr.config.threshold)
    bad = bytearray(q)
    bad[-1] ^= 1
    ks = KeyService(fr)
    with pytest.raises(AuthenticationError):
        ks.verify_query(bytes(bad))
    # A look-alike it did not issue: another key service's, a copy, or one made up around a real envelope.
    other = KeyService(fr).verify_query(q)
    mine = ks.verify_query(q)
    for fake in (other, dataclasses.replace(mine), VerifiedQuery(mine.envelope, mine.body)):
        with pytest.raises(AuthenticationError, match="not verified by this key service"):
            ks.release(fake, result)
    assert ks.release(mine, result).hits == 1


def test_tokens_expire_after_token_ttl(net: dict[str, Node]) -> None:
    de, fr = net["DE"].state, net["FR"].state
    t0 = time.time()
    q, _ = _query(net, 6, now=t0)
    answer = Responder(fr).answer(q, now=t0)
    opened = Requester(de).open(answer, now=t0)
    token = opened.candidates[0]
    ttl = fr.config.token_ttl
    ks = KeyService(fr)
    late = t0 + ttl + 600
    with pytest.raises(TokenError, match="expired"):
        ks.resolve(craft_followup(de, "FR", opened.query_id, token, now=late), now=late)
    just_in_time = t0 + ttl - 600
    res = ks.resolve(craft_followup(de, "FR", opened.query_id, token, now=just_in_time), now=just_in_time)
    assert res.reference == "FR-0000006"


def test_resolve_is_logged(net: dict[str, Node]) -> None:
    de, fr = net["DE"].state, net["FR"].state
    q, _ = _query(net, 7)
    answer = Responder(fr).answer(q)
    req = Requester(de)
    opened = req.open(answer)
    fu = req.follow_up(answer, opened.candidates[0])
    res = KeyService(fr).resolve(fu)
    entry = fr.audit.entries()[-1]
    assert entry["event"] == "resolve"
    assert entry["data"] == {"peer": "DE", "query_id": opened.query_id, "followup_id": res.followup_id,
                             "reference": "FR-0000007"}
    assert res.query_id == opened.query_id


def _refs(n: int) -> Iterator[str]:
    for i in range(n):
        yield f"G-{i}"


def test_refused_enrolments_and_removals_are_pprm_errors_and_change_nothing(tmp_path: Path) -> None:
    nodes = build_network(str(tmp_path), ["FR"], n=0, trust=False)
    fr = nodes["FR"].state
    ks = KeyService(fr)
    gal = synthetic.make_gallery(4, seed=2, prefix="Y")
    ks.enroll(gal.templates[:2], gal.references[:2])
    t = gal.templates[2:]
    before = snapshot(fr.dir)
    cases: list[tuple[object, str]] = [
        ([b"x", None], "reference at index 0 is bytes, not str"),
        (["Y-new", None], "reference at index 1 is NoneType, not str"),
        (["Y-new", 7], "reference at index 1 is int, not str"),
        (_refs(2), "references must be a list of strings, got generator"),
        ((r for r in ["a", "b"]), "references must be a list of strings, got generator"),
        ({"a", "b"}, "references must be a list of strings, got set"),
        ("ab", "references must be a list of strings, got one str"),
        (None, "references must be a list of strings, got NoneType"),
        (["only-one"], "2 templates but 1 references"),
        (["a", "b", "c"], "2 templates but 3 references"),
        (["a", " b"], "reference at index 1 (' b') has leading or trailing whitespace"),
        (["a", gal.references[0]], f"reference {gal.references[0]!r} is already enrolled (at index 1)"),
    ]
    for refs, says in cases:
        with pytest.raises(TemplateError) as info:
            ks.enroll(t, refs)  # type: ignore[arg-type]
        assert str(info.value) == says
    for bad in (None, b"Y-0000000", 3):
        with pytest.raises(TemplateError, match=rf"^the reference is {type(bad).__name__}, not str; nothing"):
            ks.remove(bad)  # type: ignore[arg-type]
    with pytest.raises(TemplateError, match="reference at index 0 is bytes, not str"):
        ks.remove_many([gal.references[0].encode()])  # type: ignore[list-item]
    assert snapshot(fr.dir) == before
    assert sorted(fr.gallery().index.references.values()) == sorted(gal.references[:2])


def test_enroll_and_remove(tmp_path: Path) -> None:
    nodes = build_network(str(tmp_path), ["FR"], n=0, trust=False)
    fr = nodes["FR"].state
    ks = KeyService(fr)
    gal = synthetic.make_gallery(30, seed=1, prefix="X")
    ids = ks.enroll(gal.templates[:20], gal.references[:20])
    assert len(ids) == 20 and len(fr.gallery()) == 20
    before = snapshot(fr.dir)
    with pytest.raises(TemplateError):
        ks.enroll(gal.templates[20:], gal.references[:10])  # duplicate references
    with pytest.raises(TemplateError):
        ks.enroll(np.zeros((2, 512), np.float32), ["Z1", "Z2"])
    with pytest.raises(GalleryError):
        ks.remove("NOT-THERE")
    assert snapshot(fr.dir) == before
    ks.remove(gal.references[3])
    assert len(fr.gallery()) == 19
    assert gal.references[3] not in fr.gallery().index.references.values()
    events = [(e["event"], {k: v for k, v in e["data"].items() if k != "gallery"})
              for e in fr.audit.entries()[1:]]
    assert events == [("enroll", {"count": 20, "total": 20}),
                      ("remove", {"reference": gal.references[3], "total": 19})]
    # Each change names the gallery version it produced; the last one is the current gallery.
    assert fr.audit.entries()[-1]["data"]["gallery"] == fr.gallery().version
