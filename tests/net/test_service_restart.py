"""A service killed between logging an answer and marking its query used does not answer it twice.

The worker hands the reply over (stores it), logs the answer, then marks the
query used. The kill is simulated at the last step; the next start finds a
stored reply and a logged answer for a query that is not yet a replay, and
settles it instead of answering again.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from pprm import synthetic
from pprm.net.inbox import Inbox
from pprm.net.service import StateService
from pprm.net.wire import pack_delivery
from pprm.node.keyservice import KeyService
from pprm.node.requester import Requester
from pprm.node.responder import Responder
from pprm.node.state import State
from pprm.protocol.replay import ReplayCache
from tests.helpers import build_network


def answer_backlog(directory: str, inbox: Inbox, *, timeout: float = 60) -> None:
    """Start the state's service, let its worker answer the stored deliveries, stop it."""
    loop = asyncio.new_event_loop()
    svc = StateService(directory)
    try:
        svc.start(loop)
        deadline = time.monotonic() + timeout
        while inbox.pending() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        svc.stop()
        loop.close()


class Killed(Exception):
    """Stands for SIGKILL at one precise point."""


def test_an_answer_logged_but_not_marked_used_is_not_answered_again(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    nodes = build_network(str(tmp_path), ("DE", "FR"), n=300, seed=41)
    fr = nodes["FR"].state
    probe = synthetic.mate_probe(nodes["FR"].gallery, 9, seed=9)
    query = Requester(nodes["DE"].state).query("FR", probe, "C-R", "serious-crime")
    qid = KeyService(fr).query_header(query).id
    inbox = Inbox(fr.dir)
    inbox.accept("DE", qid, pack_delivery(query))

    def killed(*_a: object, **_k: object) -> None:
        raise Killed

    # The last step of an answer: the query id into the replay cache (after the audit entry).
    monkeypatch.setattr(ReplayCache, "add", killed)
    with pytest.raises(Killed):
        Responder(State.open(fr.dir)).respond(query, sink=lambda msg: inbox.write_reply("DE", qid, msg))
    monkeypatch.undo()
    reply = inbox.reply("DE", qid)
    assert reply is not None
    events = [e["event"] for e in State.open(fr.dir).audit.entries()]
    assert events.count("answer") == 1

    answer_backlog(fr.dir, inbox, timeout=30)
    assert inbox.pending() == []
    # Not answered again: one logged answer, the reply handed over before the kill, and now a replay.
    events = [e["event"] for e in State.open(fr.dir).audit.entries()]
    assert events.count("answer") == 1
    assert inbox.reply("DE", qid) == reply
    assert Requester(nodes["DE"].state).open(reply).hit
    with pytest.raises(Exception, match="already"):
        KeyService(State.open(fr.dir)).verify_query(query)
    State.open(fr.dir).audit.verify()
