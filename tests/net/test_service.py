"""States as HTTP services on loopback: the end-to-end flow, faults, and bad requests.

Every service here is a real ``pprm serve`` process on a free loopback port,
so a test can SIGKILL one mid-query and start it again on the same directory.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pprm import synthetic
from pprm.net import Directory, PeerOutcome, ask, send_follow_up
from pprm.net.wire import MAX_DELIVERY, MAX_FOLLOWUP, pack_delivery
from pprm.node.requester import Requester
from tests.helpers import (
    INSECURE_BLIND,
    Node,
    build_network,
    dead_url,
    plaintext_hits,
    route,
    serve,
    spawn,
    thread_server,
    wait_for,
)

N = 300
PURPOSE = "serious-crime"


def _world(root: Path, names: tuple[str, ...] = ("DE", "FR", "HU"), **kw: Any) -> dict[str, Node]:
    # Every state asks HU in the blind profile (the probe stays encrypted under the asker's key).
    return build_network(str(root), names, n=N, blind_params=INSECURE_BLIND, profiles={"HU": "blind"}, **kw)


def _answer(outcome: PeerOutcome) -> bytes:
    """The signed reply an outcome saved (the peer replied, so there is one)."""
    assert outcome.answer_path is not None
    return Path(outcome.answer_path).read_bytes()


def _entries(nodes: dict[str, Node], name: str, event: str) -> list[dict[str, Any]]:
    st = nodes[name].state
    st.audit.check()
    return [e for e in st.audit.entries() if e.get("event") == event]


@pytest.fixture
def world(tmp_path):
    nodes = _world(tmp_path)
    assert nodes["DE"].state.config.profile_for("HU") == "blind"
    procs = {name: serve(nodes[name].state.dir) for name in ("FR", "HU")}
    yield nodes, procs
    for p in procs.values():
        p.stop()


def test_ask_sealed_and_blind_over_http_then_follow_up(world):
    nodes, procs = world
    de = nodes["DE"].state
    fr, hu = nodes["FR"].gallery, nodes["HU"].gallery
    directory = Directory({k: p.url for k, p in procs.items()})
    # A mate of FR-record 17 that is also a mate of nobody at HU.
    probe = synthetic.mate_probe(fr, 17, seed=3)
    truth_fr = plaintext_hits(fr.templates, fr.references, probe, nodes["FR"].state.config.threshold)
    truth_hu = plaintext_hits(hu.templates, hu.references, probe, nodes["HU"].state.config.threshold)
    assert truth_fr == {fr.references[17]} and truth_hu == set()

    out = {o.peer: o for o in ask(de, probe, ["FR", "HU"], case="C-NET-1", purpose=PURPOSE, directory=directory,
                                  timeout=60)}
    assert out["FR"].status == "hit" and len(out["FR"].candidates) == 1 and out["FR"].profile == "sealed"
    assert out["HU"].status == "no hit" and out["HU"].profile == "blind"
    # Step two over HTTP: FR resolves the token and logs the reference; the requester gets an ack only.
    answer = _answer(out["FR"])
    ack = send_follow_up(de, answer, out["FR"].candidates[0], directory)
    assert ack["status"] == "resolved" and ack["query_id"] == out["FR"].query_id
    assert fr.references[17] not in json.dumps(ack)
    resolved = [e["data"]["reference"] for e in _entries(nodes, "FR", "resolve")]
    assert resolved == [fr.references[17]]
    # The same follow-up message again is a replay.
    message = Requester(de).follow_up(answer, out["FR"].candidates[0])
    with httpx.Client(trust_env=False) as http:
        assert http.post(f"{procs['FR'].url}/v1/followups", content=message, headers=OCT).status_code == 200
        _error(http.post(f"{procs['FR'].url}/v1/followups", content=message, headers=OCT), 409, "replay")


def test_blind_hit_over_http(world):
    nodes, procs = world
    hu = nodes["HU"].gallery
    probe = synthetic.mate_probe(hu, 5, seed=4)
    assert plaintext_hits(hu.templates, hu.references, probe, 0.4) == {hu.references[5]}
    (o,) = ask(nodes["DE"].state, probe, ["HU"], case="C-NET-2", purpose=PURPOSE,
               directory=Directory({"HU": procs["HU"].url}))
    assert o.status == "hit" and o.profile == "blind" and len(o.candidates) == 1
    send_follow_up(nodes["DE"].state, _answer(o), o.candidates[0],
                   Directory({"HU": procs["HU"].url}))
    assert [e["data"]["reference"] for e in _entries(nodes, "HU", "resolve")] == [hu.references[5]]


def test_refusal_by_policy_is_reported_as_refused(tmp_path):
    nodes = _world(tmp_path, ("DE", "FR"), quota_per_case=1)
    with _serving(nodes, "FR") as url:
        probe = synthetic.impostor_probe(512, seed=1)
        first = ask(nodes["DE"].state, probe, ["FR"], case="C-Q", purpose=PURPOSE, directory=Directory({"FR": url}))
        second = ask(nodes["DE"].state, probe, ["FR"], case="C-Q", purpose=PURPOSE, directory=Directory({"FR": url}))
    assert first[0].status == "no hit"
    assert second[0].status == "refused" and second[0].detail == "quota-case"


class _serving:
    """``with _serving(nodes, 'FR') as url``: a service for the duration of a block."""

    def __init__(self, nodes: dict[str, Node], name: str) -> None:
        self.proc = serve(nodes[name].state.dir)

    def __enter__(self) -> str:
        return self.proc.url

    def __exit__(self, *exc: object) -> None:
        code, err = self.proc.stop()
        assert code in (0, -15), err


def test_slow_and_dead_peers_do_not_block_the_others(world):
    nodes, procs = world

    async def slow(request: Request) -> Response:
        await request.body()
        await asyncio.sleep(30)  # take the delivery, then never answer in time
        return Response(b"")

    app = Starlette(routes=[Route("/v1/queries", slow, methods=["POST"])])
    probe = synthetic.mate_probe(nodes["FR"].gallery, 17, seed=3)
    with thread_server(app) as slow_url:
        # HU's address points at the slow server: its delivery is swallowed.
        directory = Directory({"FR": procs["FR"].url, "HU": slow_url})
        t0 = time.monotonic()
        out = {o.peer: o for o in ask(nodes["DE"].state, probe, ["FR", "HU"], case="C-SLOW", purpose=PURPOSE,
                                      directory=directory, timeout=3)}
        elapsed = time.monotonic() - t0
    assert out["FR"].status == "hit" and out["FR"].seconds < 3
    assert out["HU"].status == "timed out"
    assert elapsed < 10
    dead = Directory({"FR": procs["FR"].url, "HU": dead_url()})
    out = {o.peer: o for o in ask(nodes["DE"].state, probe, ["FR", "HU"], case="C-DEAD", purpose=PURPOSE,
                                  directory=dead, timeout=10)}
    assert out["FR"].status == "hit" and out["HU"].status == "unreachable"


def test_unknown_peer_and_missing_address_are_reported_per_peer(world):
    nodes, procs = world
    probe = synthetic.impostor_probe(512, seed=9)
    out = {o.peer: o for o in ask(nodes["DE"].state, probe, ["FR", "XX", "HU"], case="C-U", purpose=PURPOSE,
                                  directory=Directory({"FR": procs["FR"].url}), timeout=20)}
    assert out["FR"].status == "no hit"
    assert out["XX"].status == "error" and "roster" in out["XX"].detail
    assert out["HU"].status == "error" and "no address" in out["HU"].detail


def test_peer_killed_mid_query_then_restarted(tmp_path):
    nodes = _world(tmp_path, ("DE", "FR", "AT"))
    fr_dir = nodes["FR"].state.dir
    proc = serve(fr_dir)
    probe = synthetic.mate_probe(nodes["FR"].gallery, 17, seed=3)
    # AT keeps FR's worker busy, so DE's query waits in FR's inbox while DE long-polls.
    at = Requester(nodes["AT"].state)
    backlog = [pack_delivery(at.query("FR", synthetic.impostor_probe(512, seed=100 + i), f"C-AT-{i}", PURPOSE))
               for i in range(60)]
    with httpx.Client(trust_env=False) as http:
        for d in backlog:
            r = http.post(f"{proc.url}/v1/queries", content=d, headers={"content-type": "application/octet-stream"})
            assert r.status_code == 202, r.text
    result: list[PeerOutcome] = []
    asker = threading.Thread(target=lambda: result.extend(
        ask(nodes["DE"].state, probe, ["FR"], case="C-KILL", purpose=PURPOSE, directory=Directory({"FR": proc.url}),
            timeout=60)))
    asker.start()
    inbox = Path(fr_dir, "net", "inbox")
    wait_for(lambda: any(p.name.startswith("DE.") for p in inbox.iterdir()), what="DE's delivery at FR")
    proc.kill()
    asker.join(30)
    (o,) = result
    assert o.status == "unreachable", o
    # Nothing half-written: the audit log verifies, every stored file is whole.
    nodes["FR"].state.audit.check()
    answered_before = {e["data"]["query_id"] for e in _entries(nodes, "FR", "answer")}
    # Restart: the accepted deliveries are answered, none twice, DE's included.
    proc = serve(fr_dir)
    try:
        with httpx.Client(trust_env=False) as http:
            r = http.get(f"{proc.url}/v1/answers/DE/{o.query_id}", params={"wait": "30"})
            assert r.status_code == 200, r.text
            opened = Requester(nodes["DE"].state).open(r.content)
            assert opened.hit and len(opened.candidates) == 1
            wait_for(lambda: not any(p.name.endswith(".delivery") for p in inbox.iterdir()), what="inbox drained")
            answers = [e["data"]["query_id"] for e in _entries(nodes, "FR", "answer")]
            assert len(answers) == len(set(answers)) == len(backlog) + 1
            assert answered_before <= set(answers)
            # The replay cache survived: a delivery answered before the crash is refused.
            r = http.post(f"{proc.url}/v1/queries", content=backlog[0],
                          headers={"content-type": "application/octet-stream"})
            assert r.status_code == 409 and r.json()["error"]["code"] == "replay"
    finally:
        code, err = proc.stop()
    assert code in (0, -15), err
    nodes["FR"].state.audit.check()
    assert not [p for p in Path(fr_dir).rglob(".tmp-*")], "a temp file was left behind"


def test_router_forwards_without_keys(tmp_path, world):
    nodes, procs = world
    empty = tmp_path / "router-cwd"
    empty.mkdir()
    router = route({k: p.url for k, p in procs.items()}, str(empty / "peers.json"))
    try:
        probe = synthetic.mate_probe(nodes["FR"].gallery, 17, seed=3)
        out = {o.peer: o for o in ask(nodes["DE"].state, probe, ["FR", "HU"], case="C-R", purpose=PURPOSE,
                                      directory=Directory(router=router.url))}
        assert out["FR"].status == "hit" and out["HU"].status == "no hit"
        ack = send_follow_up(nodes["DE"].state, _answer(out["FR"]), out["FR"].candidates[0],
                             Directory(router=router.url))
        assert ack["status"] == "resolved"
        # The router knows addresses only: its directory holds nothing but the peers file.
        assert sorted(os.listdir(empty)) == ["peers.json"]
        with httpx.Client(trust_env=False) as http:
            assert http.get(f"{router.url}/route/XX/v1/card").json()["error"]["code"] == "unknown-peer"
            assert http.get(f"{router.url}/route/FR/v1/../../etc").status_code == 404
    finally:
        router.stop()


def _flipping(app, *, requests: bool, responses: bool):
    """ASGI middleware: a malicious router that flips one byte in message bodies."""

    async def wrapped(scope, receive, send):
        if scope["type"] != "http":
            return await app(scope, receive, send)

        async def recv():
            msg = await receive()
            if requests and msg["type"] == "http.request" and len(msg.get("body", b"")) > 200:
                body = bytearray(msg["body"])
                body[len(body) // 2] ^= 0x01
                msg = {**msg, "body": bytes(body)}
            return msg

        async def snd(msg):
            if responses and msg["type"] == "http.response.body" and len(msg.get("body", b"")) > 200:
                body = bytearray(msg["body"])
                body[len(body) // 2] ^= 0x01
                msg = {**msg, "body": bytes(body)}
            await send(msg)

        return await app(scope, recv, snd)

    return wrapped


@pytest.mark.parametrize("direction", ["request", "response"])
def test_router_altering_a_byte_is_detected(world, direction):
    from pprm.net.router import create_router_app

    nodes, procs = world
    app = _flipping(create_router_app({"FR": procs["FR"].url}), requests=direction == "request",
                    responses=direction == "response")
    probe = synthetic.mate_probe(nodes["FR"].gallery, 17, seed=3)
    before = len(_entries(nodes, "FR", "answer"))
    with thread_server(app) as url:
        (o,) = ask(nodes["DE"].state, probe, ["FR"], case=f"C-T-{direction}", purpose=PURPOSE,
                   directory=Directory(router=url), timeout=30)
    assert o.status == "error"
    if direction == "request":
        # FR refused the altered delivery at intake: nothing was matched or logged.
        assert "authentication" in o.detail or "message" in o.detail
        assert len(_entries(nodes, "FR", "answer")) == before
    else:
        # FR answered, the altered answer failed DE's signature check.
        assert "verification" in o.detail
        assert len(_entries(nodes, "FR", "answer")) == before + 1


# -- bad requests ---------------------------------------------------------------

OCT = {"content-type": "application/octet-stream"}


def _error(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert body["error"]["code"] == code and "\n" not in body["error"]["message"]


def test_malformed_and_oversized_requests_change_nothing(world):
    nodes, procs = world
    url = procs["FR"].url
    fr = nodes["FR"].state
    audit_before = Path(fr.dir, "audit.log").read_bytes()
    good = pack_delivery(Requester(nodes["DE"].state).query("FR", synthetic.impostor_probe(512, seed=2),
                                                          "C-BAD", PURPOSE))
    with httpx.Client(trust_env=False, timeout=30) as http:
        _error(http.post(f"{url}/v1/queries", content=b"x" * (MAX_DELIVERY + 1), headers=OCT), 413, "too-large")

        def stream():
            chunk = b"y" * (1 << 20)
            for _ in range(MAX_DELIVERY // len(chunk) + 2):
                yield chunk

        _error(http.post(f"{url}/v1/queries", content=stream(), headers=OCT), 413, "too-large")
        _error(http.post(f"{url}/v1/followups", content=b"z" * (MAX_FOLLOWUP + 1), headers=OCT), 413, "too-large")
        _error(http.post(f"{url}/v1/queries", content=good, headers={"content-type": "application/json"}),
               415, "media-type")
        _error(http.post(f"{url}/v1/queries", content=b"", headers=OCT), 400, "message")
        _error(http.post(f"{url}/v1/queries", content=b"garbage" * 10, headers=OCT), 400, "message")
        _error(http.post(f"{url}/v1/queries", content=good[:-1], headers=OCT), 400, "message")
        _error(http.post(f"{url}/v1/queries", content=good + b"\0", headers=OCT), 400, "message")
        flipped = bytearray(good)
        flipped[len(flipped) // 2] ^= 0x40
        _error(http.post(f"{url}/v1/queries", content=bytes(flipped), headers=OCT), 401, "authentication")
        # A query addressed to HU, sent to FR.
        to_hu = pack_delivery(Requester(nodes["DE"].state).query("HU", synthetic.impostor_probe(512, seed=2),
                                                                 "C-BAD", PURPOSE))
        _error(http.post(f"{url}/v1/queries", content=to_hu, headers=OCT), 421, "recipient")
        _error(http.post(f"{url}/v1/followups", content=b"nonsense", headers=OCT), 400, "message")
        _error(http.get(f"{url}/v1/nowhere"), 404, "not-found")
        _error(http.delete(f"{url}/v1/queries"), 405, "method")
        _error(http.get(f"{url}/v1/answers/DE/not-an-id"), 404, "not-found")
        _error(http.get(f"{url}/v1/answers/DE/{'0' * 32}"), 404, "not-found")
        _error(http.get(f"{url}/v1/answers/DE/{'0' * 32}", params={"wait": "soon"}), 400, "message")
        # The server is still fine, and the good query is still unanswered and acceptable.
        assert http.get(f"{url}/v1/health").json()["ok"] is True
        assert Path(fr.dir, "audit.log").read_bytes() == audit_before
        assert not list(Path(fr.dir, "net", "inbox").iterdir())
        r = http.post(f"{url}/v1/queries", content=good, headers=OCT)
        assert r.status_code == 202
        _error(http.post(f"{url}/v1/queries", content=good, headers=OCT), 409, "replay")


def test_card_is_served_and_verifies(world):
    from pprm.protocol.card import parse_card

    nodes, procs = world
    with httpx.Client(trust_env=False) as http:
        r = http.get(f"{procs['FR'].url}/v1/card")
    assert r.status_code == 200 and r.content == nodes["FR"].state.card_bytes
    assert parse_card(r.content, allow_insecure=True).name == "FR"


def test_a_second_service_on_one_directory_is_refused(world):
    nodes, _procs = world
    with pytest.raises(RuntimeError, match="another pprm serve is running"):
        spawn(["serve", nodes["FR"].state.dir, "--port", "0"], timeout=30)


def test_service_log_names_no_case_and_no_reference(tmp_path):
    nodes = _world(tmp_path, ("DE", "FR"))
    proc = spawn(["serve", nodes["FR"].state.dir, "--port", "0", "--log-level", "info"])
    probe = synthetic.mate_probe(nodes["FR"].gallery, 17, seed=3)
    directory = Directory({"FR": proc.url})
    (o,) = ask(nodes["DE"].state, probe, ["FR"], case="C-LOG-7731", purpose=PURPOSE, directory=directory)
    send_follow_up(nodes["DE"].state, _answer(o), o.candidates[0], directory)
    code, err = proc.stop()
    assert code in (0, -15)
    assert o.query_id is not None and o.query_id in err and "resolved" in err  # it does log, at info level
    assert "C-LOG-7731" not in err and nodes["FR"].gallery.references[17] not in err


def test_a_service_with_a_resident_gallery_reads_it_first_and_answers_the_same(tmp_path):
    nodes = _world(tmp_path, ("DE", "FR"))
    fr = nodes["FR"].gallery
    proc = spawn(["serve", nodes["FR"].state.dir, "--port", "0", "--gallery-memory", "resident"])
    try:
        for record in (17, 3):
            probe = synthetic.mate_probe(fr, record, seed=5)
            truth = plaintext_hits(fr.templates, fr.references, probe, nodes["FR"].state.config.threshold)
            assert truth == {fr.references[record]}
            (o,) = ask(nodes["DE"].state, probe, ["FR"], case=f"C-RES-{record}", purpose=PURPOSE,
                       directory=Directory({"FR": proc.url}))
            assert o.status == "hit" and o.profile == "sealed" and len(o.candidates) == 1
    finally:
        code, _err = proc.stop()
    assert code in (0, -15)
    with pytest.raises(RuntimeError, match="invalid choice"):
        spawn(["serve", nodes["FR"].state.dir, "--port", "0", "--gallery-memory", "ram"], timeout=30)


def test_a_failed_blind_delivery_does_not_strand_the_key(world):
    nodes, procs = world
    de = nodes["DE"].state
    hu = nodes["HU"].gallery
    probe = synthetic.mate_probe(hu, 9, seed=2)
    # The first blind query of a case carries its key announcement; here it never arrives.
    (lost,) = ask(de, probe, ["HU"], case="C-STRAND", purpose=PURPOSE, directory=Directory({"HU": dead_url()}),
                  timeout=10)
    assert lost.status == "unreachable"
    retired = [e for e in de.audit.entries() if e["event"] == "keys_retired"]
    assert [e["data"]["query_id"] for e in retired] == [lost.query_id]
    # The next query of the same case announces a fresh key, and is answered.
    (o,) = ask(de, probe, ["HU"], case="C-STRAND", purpose=PURPOSE, directory=Directory({"HU": procs["HU"].url}))
    assert o.status == "hit", o.detail


# -- blind step two: a follow-up must prove its hit -------------------------------------------

def test_a_blind_follow_up_that_is_not_a_hit_gets_a_signed_refusal_over_http(tmp_path, monkeypatch):
    import dataclasses

    from pprm.errors import FollowUpRefusedError, MessageError
    from pprm.matching.templates import normalise_probe
    from pprm.net.service import create_app
    from pprm.protocol.blind_messages import make_handle
    from tests.helpers import craft_blind_followup

    nodes = _world(tmp_path, ("DE", "HU"))
    de, hu = nodes["DE"].state, nodes["HU"]
    probe = synthetic.mate_probe(hu.gallery, 5, seed=4)
    assert plaintext_hits(hu.gallery.templates, hu.gallery.references, probe, 0.4) == {hu.gallery.references[5]}
    with thread_server(create_app(hu.state.dir)) as url:
        directory = Directory({"HU": url})
        (o,) = ask(de, probe, ["HU"], case="C-NET-FISH", purpose=PURPOSE, directory=directory)
        assert o.status == "hit" and o.profile == "blind" and o.query_id is not None
        qid = o.query_id
        (hit,) = o.candidates
        rec = hu.state.blind_store.answered(qid)
        layout = hu.state.blind_store.layout(rec.version)
        occupied = [make_handle(pos, slot) for pos, blk in enumerate(rec.order)
                    for slot, rid in enumerate(layout[blk]) if rid >= 0 and make_handle(pos, slot) != hit]
        # DE's own Requester, patched in this test only, believes a non-hit slot was a candidate.
        real = Requester._open_blind

        def believe(self, h, body):
            opened = real(self, h, body)
            return dataclasses.replace(opened, candidates=(*opened.candidates, occupied[0]))

        with monkeypatch.context() as m:
            m.setattr(Requester, "_open_blind", believe)
            with pytest.raises(FollowUpRefusedError) as info:
                send_follow_up(de, _answer(o), occupied[0], directory)
        assert (info.value.peer, info.value.query_id, info.value.reason) == ("HU", o.query_id, "not-a-hit")
        # On the wire: 200 and the signed refusal as octets, like a refused query's reply.
        crafted = craft_blind_followup(de, "HU", qid, occupied[1], normalise_probe(probe, 512))
        with httpx.Client(trust_env=False) as http:
            r = http.post(f"{url}/v1/followups", content=crafted, headers=OCT)
        assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
        with pytest.raises(MessageError, match="did not send"):  # DE never sent that one itself
            Requester(de).open_followup_refusal(r.content)
        # The genuine candidate resolves.
        assert send_follow_up(de, _answer(o), hit, directory)["status"] == "resolved"
    refusals = _entries(nodes, "HU", "refuse_followup")
    assert [e["data"]["reason"] for e in refusals] == ["not-a-hit", "not-a-hit"]
    assert [e["data"]["reference"] for e in _entries(nodes, "HU", "resolve")] == [hu.gallery.references[5]]
    assert [e["data"]["followup_id"] for e in _entries(nodes, "DE", "followup_refused")] == [
        info.value.followup_id]
    assert hu.state.blind_store.answered(qid).followups == [*occupied[:2], hit]
