"""A peer's share of a service's inbox, and its quota, checked at intake.

One trusted peer once filled the shared inbox with signed deliveries and every
other peer queued behind it (quotas were checked only by the worker). Here the
service runs in this process (``create_app`` on a loopback port) so a test can
hold its worker: the flood then stays queued, as it would behind a large
gallery or blind queries, and the limits at intake are what is left to stop it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from pprm import synthetic
from pprm.net.inbox import MIN_SHARE, Inbox, share_of
from pprm.net.service import MAX_PENDING, RETRY_QUOTA, RETRY_SHARE, create_app
from pprm.net.wire import pack_delivery, unpack_delivery
from pprm.node.policy import QuotaLedger
from pprm.node.requester import Requester
from pprm.node.responder import Responder
from tests.helpers import Node, build_network, snapshot, thread_server, wait_for

PURPOSE = "serious-crime"
OCT = {"content-type": "application/octet-stream"}


def _world(root: Path, **kw: Any) -> dict[str, Node]:
    # FR serves; DE and AT are its two trusted peers. Small galleries: matching is not what is tested.
    return build_network(str(root), ("DE", "FR", "AT"), n=20, **kw)


def _deliveries(node: Node, count: int, seed: int, case: str = "C-SHARE") -> list[bytes]:
    # One case each: a flood of one case would meet the per-case quota (100) at the worker first.
    req = Requester(node.state)
    return [pack_delivery(req.query("FR", synthetic.impostor_probe(512, seed=seed + i), f"{case}-{i}", PURPOSE))
            for i in range(count)]


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Open: the service's worker answers; cleared: it holds the next query until set again."""
    ev = threading.Event()
    ev.set()
    real = Responder.respond

    def held(self: Responder, *args: Any, **kwargs: Any) -> Any:
        assert ev.wait(60), "the test never released the worker"
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Responder, "respond", held)
    return ev


@contextlib.contextmanager
def _serving(node: Node, gate: threading.Event, **kw: Any) -> Iterator[str]:
    """FR's service for the duration of a block; the worker is released before it stops."""
    with thread_server(create_app(node.state.dir, **kw)) as url:
        try:
            yield url
        finally:
            gate.set()


def _post_all(url: str, deliveries: list[bytes], concurrency: int = 16) -> list[httpx.Response]:
    """Post deliveries with ``concurrency`` requests in flight at once, as a flooding peer would."""

    async def run() -> list[httpx.Response]:
        sem = asyncio.Semaphore(concurrency)
        async with httpx.AsyncClient(trust_env=False, timeout=30) as http:
            async def one(d: bytes) -> httpx.Response:
                async with sem:
                    return await http.post(f"{url}/v1/queries", content=d, headers=OCT)

            return list(await asyncio.gather(*(one(d) for d in deliveries)))

    return asyncio.run(run())


def _refused(r: httpx.Response, code: str, retry_after: int) -> None:
    assert r.status_code == 429, (r.status_code, r.text)
    err = r.json()["error"]
    assert err["code"] == code and "\n" not in err["message"], err
    assert r.headers["retry-after"] == str(retry_after)


def _pending(http: httpx.Client, url: str) -> int:
    return int(http.get(f"{url}/v1/health").json()["pending"])


def _answered(node: Node, sender: str) -> list[str]:
    node.state.audit.check()
    return [e["data"]["query_id"] for e in node.state.audit.entries()
            if e.get("event") == "answer" and e["data"]["peer"] == sender]


def test_the_share_rule():
    # An equal split among the roster; the shares of all peers fit the inbox.
    assert share_of(MAX_PENDING, 2) == 128 and share_of(MAX_PENDING, 26) == 9
    assert all(share_of(MAX_PENDING, n) * n <= MAX_PENDING for n in range(1, MAX_PENDING // MIN_SHARE + 1))
    # A long roster gets the floor; a lone peer may use everything; a small inbox keeps half for the others.
    assert share_of(MAX_PENDING, 100) == MIN_SHARE
    assert share_of(MAX_PENDING, 1) == share_of(MAX_PENDING, 0) == MAX_PENDING
    assert share_of(16, 2) == 8 and share_of(4, 2) == 2 and share_of(4, 40) == 2 and share_of(1, 3) == 1


def test_a_flood_from_one_peer_leaves_room_for_the_others(tmp_path, gate):
    nodes = _world(tmp_path)
    fr = nodes["FR"]
    share = share_of(MAX_PENDING, 2)
    flood = _deliveries(nodes["DE"], 300, seed=1000)
    others = _deliveries(nodes["AT"], 5, seed=2000, case="C-AT")
    with _serving(fr, gate) as url:
        gate.clear()
        t0 = time.monotonic()
        replies = _post_all(url, flood)
        # Exactly the share is taken, though 16 deliveries were in flight at once.
        accepted = [d for d, r in zip(flood, replies, strict=True) if r.status_code == 202]
        refused = [(d, r) for d, r in zip(flood, replies, strict=True) if r.status_code != 202]
        assert len(accepted) == share and len(refused) == 300 - share
        for _, r in refused:
            _refused(r, "inbox-share", RETRY_SHARE)
        assert time.monotonic() - t0 < 15
        # AT is not stuck behind DE's flood: its deliveries are taken while DE's wait.
        at_ids = []
        with httpx.Client(trust_env=False, timeout=60) as http:
            for d in others:
                r = http.post(f"{url}/v1/queries", content=d, headers=OCT)
                assert r.status_code == 202, r.text
                at_ids.append(r.json()["query_id"])
            assert _pending(http, url) == share + len(others)
            gate.set()
            # ...and answered.
            for qid in at_ids:
                r = http.get(f"{url}/v1/answers/AT/{qid}", params={"wait": "30"})
                assert r.status_code == 200, r.text
                assert not Requester(nodes["AT"].state).open(r.content).hit
            wait_for(lambda: _pending(http, url) == 0, what="the inbox drained")
            # A refused delivery left nothing behind: once there is room, the same bytes are taken.
            again = http.post(f"{url}/v1/queries", content=refused[0][0], headers=OCT)
            assert again.status_code == 202, again.text
            wait_for(lambda: _pending(http, url) == 0, what="the inbox drained")
    assert len(_answered(fr, "DE")) == share + 1 and len(_answered(fr, "AT")) == len(others)


def test_the_quota_at_intake_counts_answered_and_queued(tmp_path, gate):
    nodes = _world(tmp_path, quota_per_peer=4)
    fr = nodes["FR"]
    de = _deliveries(nodes["DE"], 5, seed=3000)
    with _serving(fr, gate) as url, httpx.Client(trust_env=False, timeout=60) as http:
        # Two of DE's queries answered...
        for d in de[:2]:
            qid = http.post(f"{url}/v1/queries", content=d, headers=OCT).json()["query_id"]
            assert http.get(f"{url}/v1/answers/DE/{qid}", params={"wait": "30"}).status_code == 200
        wait_for(lambda: _pending(http, url) == 0, what="the inbox drained")
        assert QuotaLedger(fr.state.path("quota.json")).usage("DE", "", time.time())[1] == 2
        # ...two waiting: 2 + 2 = 4 is the quota, so the fifth is refused before it is stored.
        gate.clear()
        assert [http.post(f"{url}/v1/queries", content=d, headers=OCT).status_code for d in de[2:4]] == [202, 202]
        r = http.post(f"{url}/v1/queries", content=de[4], headers=OCT)
        _refused(r, "quota-peer", RETRY_QUOTA)
        assert "2 answered, 2 waiting" in r.json()["error"]["message"]
        # The quota is DE's: AT's delivery is taken.
        at = _deliveries(nodes["AT"], 1, seed=4000, case="C-AT")[0]
        assert http.post(f"{url}/v1/queries", content=at, headers=OCT).status_code == 202
        gate.set()
        wait_for(lambda: _pending(http, url) == 0, what="the inbox drained")
        # Now all four are answered: refused again, on the answered ones alone.
        r = http.post(f"{url}/v1/queries", content=de[4], headers=OCT)
        _refused(r, "quota-peer", RETRY_QUOTA)
        assert "4 answered, 0 waiting" in r.json()["error"]["message"]
    assert len(_answered(fr, "DE")) == 4


@pytest.mark.parametrize("limit", ["inbox-share", "quota-peer"])
def test_a_refused_delivery_changes_nothing(tmp_path, gate, limit):
    # A 16-entry inbox gives each of the two peers 8; a quota of 3 binds first.
    nodes = _world(tmp_path, quota_per_peer=3 if limit == "quota-peer" else 100)
    fr = nodes["FR"]
    held = 3 if limit == "quota-peer" else 8
    de = _deliveries(nodes["DE"], held + 1, seed=5000)
    with _serving(fr, gate, capacity=16) as url, httpx.Client(trust_env=False, timeout=60) as http:
        gate.clear()
        for d in de[:held]:
            assert http.post(f"{url}/v1/queries", content=d, headers=OCT).status_code == 202
        # The worker holds the first delivery; nothing else writes to FR's directory now.
        before = snapshot(fr.state.dir)
        for _ in range(2):  # the same delivery twice: refused the same way both times, not as a replay
            _refused(http.post(f"{url}/v1/queries", content=de[held], headers=OCT), limit,
                     RETRY_QUOTA if limit == "quota-peer" else RETRY_SHARE)
        after = snapshot(fr.state.dir)
        # Inbox, replay cache, quota ledger and audit log, byte for byte.
        assert after == before
        assert any(k.startswith("net/inbox/DE.") for k in after)
        assert _pending(http, url) == held


def test_deliveries_left_by_a_previous_run_count_against_the_share(tmp_path, gate):
    nodes = _world(tmp_path)
    fr = nodes["FR"]
    de = _deliveries(nodes["DE"], 9, seed=6000)
    # A service stopped with eight of DE's deliveries still waiting (the verified bytes, as intake stores them).
    inbox = Inbox(fr.state.dir)
    for d in de[:8]:
        qid = nodes["DE"].state.header_of_own(unpack_delivery(d)[0], "FR").id
        inbox.accept("DE", qid, d)
    gate.clear()
    with _serving(fr, gate, capacity=16) as url, httpx.Client(trust_env=False, timeout=60) as http:
        assert _pending(http, url) == 8
        _refused(http.post(f"{url}/v1/queries", content=de[8], headers=OCT), "inbox-share", RETRY_SHARE)
        at = _deliveries(nodes["AT"], 1, seed=7000, case="C-AT")[0]
        assert http.post(f"{url}/v1/queries", content=at, headers=OCT).status_code == 202
        gate.set()
        wait_for(lambda: _pending(http, url) == 0, what="the inbox drained")
        assert http.post(f"{url}/v1/queries", content=de[8], headers=OCT).status_code == 202
        wait_for(lambda: _pending(http, url) == 0, what="the inbox drained")
    assert len(_answered(fr, "DE")) == 9
