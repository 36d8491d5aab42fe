"""The requester: boxed signed queries, strict answer acceptance, follow-ups."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import numpy as np
import pytest

from pprm import synthetic
from pprm.errors import (
    AuthenticationError,
    ExpiredError,
    MessageError,
    StateError,
    TemplateError,
    TokenError,
    UnknownPeerError,
)
from pprm.matching.templates import normalise_probe
from pprm.node.keyservice import KeyService
from pprm.node.requester import Requester
from pprm.node.responder import Responder
from pprm.protocol.envelope import CLOCK_SKEW, open_envelope
from pprm.protocol.messages import MAX_CASE, AnswerBody, FollowUpBody, QueryBody
from tests.helpers import Node, build_network, craft, snapshot, windows


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Node]:
    return build_network(str(tmp_path_factory.mktemp("req")), ["DE", "FR", "NL"], n=100, seed=500)


def _probe(net: dict[str, Node], index: int) -> np.ndarray:
    return synthetic.mate_probe(net["FR"].gallery, index, seed=8)


def test_query_is_signed_boxed_and_recorded(net: dict[str, Node]) -> None:
    de, fr = net["DE"].state, net["FR"].state
    probe = _probe(net, 1)
    t = int(time.time())
    q = Requester(de).query("FR", probe, "CASE-R1", "serious-crime", now=t)
    env = open_envelope(q, lookup=fr.lookup, me="FR", params_digest=fr.config.parameter_set.digest, now=t)
    h = env.header
    assert (h.type, h.sender, h.recipient, h.in_reply_to) == ("query", "DE", "FR", "")
    assert (h.created, h.expires) == (t, t + de.config.query_ttl)
    assert h.params == fr.card.params_digest
    # Only FR can open the body, and it carries the normalised probe.
    body = QueryBody.from_bytes(fr.identity().unbox_from(env.sender, env.body))
    assert (body.case, body.purpose) == ("CASE-R1", "serious-crime")
    assert body.probe.tobytes() == normalise_probe(probe, 512).tobytes()
    # Nothing personal is on the wire in clear.
    for p in (np.asarray(probe, "<f4"), normalise_probe(probe, 512)):
        raw = p.tobytes()
        for needle in [raw, base64.urlsafe_b64encode(raw).rstrip(b"="), *windows(raw, 12, 128)]:
            assert needle not in q
    assert b"CASE-R1" not in q and b"serious-crime" not in q
    assert Requester(de).outbox()[h.id].to_json() == {"to": "FR", "case": "CASE-R1", "purpose": "serious-crime",
                                                      "created": t, "expires": t + de.config.query_ttl,
                                                      "answer": None}
    last = de.audit.entries()[-1]
    assert last["event"] == "query" and last["data"]["query_id"] == h.id


def test_refused_queries_change_nothing(net: dict[str, Node]) -> None:
    de = net["DE"].state
    req = Requester(de)
    with de.lock():
        pass
    before = snapshot(de.dir)
    good = _probe(net, 2)
    with pytest.raises(UnknownPeerError):
        req.query("PL", good, "C", "serious-crime")
    for probe in (np.ones(128, np.float32), np.zeros(512, np.float32), np.full(512, np.inf, np.float32),
                  np.ones((2, 512), np.float32), np.ones(512, np.int32)):
        with pytest.raises(TemplateError):
            req.query("FR", probe, "C", "serious-crime")
    for case, purpose in (("", "P"), ("C", ""), ("x" * (MAX_CASE + 1), "P"), ("C\n", "P")):
        with pytest.raises(MessageError):
            req.query("FR", good, case, purpose)
    assert snapshot(de.dir) == before


def test_answer_is_checked_before_it_is_accepted(net: dict[str, Node]) -> None:
    de, fr = net["DE"].state, net["FR"].state
    req = Requester(de)
    t = time.time()
    answer = Responder(fr).answer(req.query("FR", _probe(net, 3), "C", "serious-crime", now=t), now=t)
    before = snapshot(de.dir)
    bad = bytearray(answer)
    bad[len(bad) // 2] ^= 0x20
    with pytest.raises(AuthenticationError):
        req.open(bytes(bad))
    with pytest.raises(ExpiredError):
        req.open(answer, now=t + fr.config.token_ttl + CLOCK_SKEW + 1)
    with pytest.raises(MessageError):
        req.open(answer[:-1])
    # The answer is addressed to DE: NL may not open it.
    with pytest.raises(MessageError):
        Requester(net["NL"].state).open(answer)
    assert snapshot(de.dir) == before
    assert req.open(answer).hit


def test_malformed_answers_from_a_trusted_peer(net: dict[str, Node]) -> None:
    de, fr = net["DE"].state, net["FR"].state
    req = Requester(de)
    q = req.query("FR", _probe(net, 4), "C", "serious-crime")
    qid = open_envelope(q, lookup=fr.lookup, me="FR", params_digest=fr.config.parameter_set.digest).header.id
    before = snapshot(de.dir)
    cases = [
        # The body names another query than the header.
        (craft(fr, "DE", "answer", AnswerBody("ab" * 16, False, ()).to_bytes(), in_reply_to=qid), "different"),
        # A follow-up where an answer is expected.
        (craft(fr, "DE", "followup", FollowUpBody(qid, "A" * 16).to_bytes(), in_reply_to=qid), "expected an"),
        # Not an answer body at all.
        (craft(fr, "DE", "answer", b'{"hit":true}', in_reply_to=qid), "answer body"),
    ]
    for blob, why in cases:
        with pytest.raises(MessageError, match=why):
            req.open(blob)
    assert snapshot(de.dir) == before
    ok = craft(fr, "DE", "answer", AnswerBody(qid, False, ()).to_bytes(), in_reply_to=qid)
    assert req.open(ok).hit is False


def test_answer_is_recorded_once(net: dict[str, Node]) -> None:
    de, fr = net["DE"].state, net["FR"].state
    req = Requester(de)
    answer = Responder(fr).answer(req.query("FR", _probe(net, 5), "C", "serious-crime"))
    opened = req.open(answer)
    req.open(answer)
    received = [e for e in de.audit.entries() if e["event"] == "answer_received"
                and e["data"]["query_id"] == opened.query_id]
    assert len(received) == 1
    assert received[0]["data"]["hit"] is True and received[0]["data"]["candidates"] == 1
    assert req.outbox()[opened.query_id].answer == received[0]["data"]["answer_id"]


def test_follow_up_message(net: dict[str, Node]) -> None:
    de, fr = net["DE"].state, net["FR"].state
    req = Requester(de)
    answer = Responder(fr).answer(req.query("FR", _probe(net, 6), "C", "serious-crime"))
    opened = req.open(answer)
    with pytest.raises(TokenError):
        req.follow_up(answer, "B" * 96)
    fu = req.follow_up(answer, opened.candidates[0])
    env = open_envelope(fu, lookup=fr.lookup, me="FR", params_digest=fr.config.parameter_set.digest)
    assert (env.header.type, env.header.in_reply_to) == ("followup", opened.query_id)
    assert opened.candidates[0].encode() not in fu  # the token is boxed too
    body = FollowUpBody.from_bytes(fr.identity().unbox_from(env.sender, env.body))
    assert body == FollowUpBody(opened.query_id, opened.candidates[0])
    assert de.audit.entries()[-1]["data"]["followup_id"] == env.header.id
    assert KeyService(fr).resolve(fu).reference == "FR-0000006"


def test_corrupt_outbox_is_a_state_error(tmp_path: Path) -> None:
    nodes = build_network(str(tmp_path), ["DE", "FR"], n=20, seed=9)
    de, fr = nodes["DE"].state, nodes["FR"].state
    req = Requester(de)
    probe = synthetic.mate_probe(nodes["FR"].gallery, 1, 0)
    answer = Responder(fr).answer(req.query("FR", probe, "C", "serious-crime"))
    for content in ("{", "[]"):
        with open(de.path("outbox.json"), "w") as fh:
            fh.write(content)
        with pytest.raises(StateError):
            req.open(answer)
        with pytest.raises(StateError):
            req.query("FR", synthetic.impostor_probe(512, 1), "C", "serious-crime")
