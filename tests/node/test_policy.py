"""Policy in the state config: purposes, quotas, and signed refusals.

AA asks, BB answers, CC is a third trusted state. AA may send for a purpose
("traffic-offence") that BB's default list does not hold, so that BB's own
list is what decides on arrival. Quotas are set small in BB where a test
needs them. Everything runs on the INSECURE sets; every refusal is checked
to leave the refusing side as docs/DESIGN.md section 12 describes (replay cache and audit entry,
no answer, no token, no quota used, no matching).
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pprm import synthetic
from pprm.errors import (
    AuthenticationError,
    MessageError,
    ParameterError,
    PolicyError,
    RefusedError,
    ReplayError,
    StateError,
)
from pprm.node.config import DEFAULT_PURPOSES, MAX_QUOTA, QUOTA_WINDOW, StateConfig
from pprm.node.keyservice import KeyService
from pprm.node.outbox import Outbox
from pprm.node.policy import QuotaLedger
from pprm.node.requester import Requester
from pprm.node.responder import Responder
from pprm.node.state import State
from pprm.protocol import canonical
from pprm.protocol.envelope import _FRAME, MESSAGE_TYPES, Header, open_envelope
from pprm.protocol.messages import MAX_REFUSAL_MESSAGE, REFUSAL_REASONS, AnswerBody, RefusalBody
from tests.helpers import INSECURE_BLIND, INSECURE_SEALED, craft, new_state, ok, ok_json, snapshot
from tests.helpers import cli as run_cli

T0 = 1_800_000_000
EXTRA = "traffic-offence"  # on AA's list only
AA_PURPOSES = (*DEFAULT_PURPOSES, EXTRA)
N = 24


def new(base: Path, name: str, **kw: Any) -> State:
    kw.setdefault("blind_params", INSECURE_BLIND)
    return new_state(base / name, name, **kw)


def world(base: Path, **bb: Any) -> tuple[State, State, State, synthetic.SyntheticGallery]:
    """AA (requester, with an extra purpose), BB (responder, ``bb`` settings), CC; all trust each other."""
    a = new(base, "AA", purposes=AA_PURPOSES)
    b = new(base, "BB", **bb)
    c = new(base, "CC", purposes=AA_PURPOSES)
    for x in (a, b, c):
        for y in (a, b, c):
            if x is not y:
                x.trust(y.card_bytes)
    gal = synthetic.make_gallery(N, dim=512, seed=77, prefix="BB")
    KeyService(b).enroll(gal.templates, gal.references)
    return a, b, c, gal


def header_of(blob: bytes) -> Header:
    """A message's header, read without verification (tests only)."""
    _magic, _v, _fpr, hlen, _blen = _FRAME.unpack_from(blob)
    return Header.from_json(canonical.decode(blob[_FRAME.size:_FRAME.size + hlen], "header"))


def events(st: State, name: str) -> list[dict[str, Any]]:
    return [e["data"] for e in st.audit.entries() if e.get("event") == name]


def quota_file(st: State) -> dict[str, list[list[Any]]]:
    """The quota ledger's rows (DIR/state.db), in the shape quota.json had."""
    return {peer: [[when, case] for when, case in rows]
            for peer, rows in QuotaLedger(st.path("quota.json")).entries().items()}


def sent(st: State, query_id: str) -> dict[str, Any]:
    """The requester's outbox record of a query, as the JSON object outbox.json held."""
    rec = Outbox(st.path("outbox.json")).get(query_id)
    assert rec is not None
    return rec.to_json()


# -- configuration --------------------------------------------------------------------

def test_defaults_are_the_pruem_purposes_and_generous_quotas() -> None:
    c = StateConfig(name="AA")
    assert c.purposes == ("serious-crime", "missing-person", "unidentified-remains") == DEFAULT_PURPOSES
    assert (c.quota_per_case, c.quota_per_peer, c.k, c.blind_key_ttl) == (100, 2000, 10, 24 * 3600)
    assert QUOTA_WINDOW == 24 * 3600
    # A list (as in state.json) is kept as a tuple.
    assert StateConfig(name="AA", purposes=["a", "b"]).purposes == ("a", "b")  # type: ignore[arg-type]


@pytest.mark.parametrize("kw", [
    {"purposes": ()}, {"purposes": []}, {"purposes": "serious-crime"}, {"purposes": ("a", "a")},
    {"purposes": ("",)}, {"purposes": ("tab\there",)}, {"purposes": (" padded",)}, {"purposes": ("x" * 201,)},
    {"purposes": (1,)}, {"purposes": None}, {"purposes": tuple(f"p{i}" for i in range(65))},
    {"quota_per_case": 0}, {"quota_per_peer": 0}, {"quota_per_case": -1}, {"quota_per_case": MAX_QUOTA + 1},
    {"quota_per_peer": 2.5}, {"quota_per_case": True}, {"quota_per_peer": "10"},
])
def test_config_validation(kw: dict[str, Any]) -> None:
    with pytest.raises(ParameterError):
        StateConfig(name="AA", **kw)


def test_config_edges_are_accepted() -> None:
    c = StateConfig(name="AA", purposes=("x" * 200, "Schwere Straftat (§ 1)"), quota_per_case=1,
                    quota_per_peer=MAX_QUOTA)
    assert c.purposes[1] == "Schwere Straftat (§ 1)"


def test_older_state_json_loads_with_the_defaults(tmp_path: Path) -> None:
    st = new(tmp_path, "AA", purposes=("missing-person",), quota_per_case=3, quota_per_peer=4)
    with open(st.path("state.json")) as fh:
        obj = json.load(fh)
    assert (obj["purposes"], obj["quota_per_case"], obj["quota_per_peer"]) == (["missing-person"], 3, 4)
    assert State.open(st.dir).config == st.config
    for key in ("purposes", "quota_per_case", "quota_per_peer"):
        del obj[key]
    with open(st.path("state.json"), "w") as fh:
        json.dump(obj, fh)
    old = State.open(st.dir).config
    assert (old.purposes, old.quota_per_case, old.quota_per_peer) == (DEFAULT_PURPOSES, 100, 2000)
    obj["purposes"] = []
    with open(st.path("state.json"), "w") as fh:
        json.dump(obj, fh)
    with pytest.raises(StateError, match="purposes"):
        State.open(st.dir)


def test_cli_init_sets_purposes_and_info_shows_the_policy(tmp_path: Path) -> None:
    d = tmp_path / "AA"
    init = ok_json("init", d, "--name", "AA", "--params", INSECURE_SEALED, "--allow-insecure",
                   "--purpose", "serious-crime", "--purpose", "child-abduction")
    assert init["purposes"] == ["serious-crime", "child-abduction"]
    assert State.open(str(d)).config.purposes == ("serious-crime", "child-abduction")
    info = ok_json("info", d)
    assert (info["purposes"], info["quota_per_case"], info["quota_per_peer"]) == (
        ["serious-crime", "child-abduction"], 100, 2000)
    text = ok("info", d).out
    assert "purposes     serious-crime, child-abduction" in text
    assert "quotas       100 per case, 2000 per peer" in text
    assert "purposes     serious-crime, missing-person, unidentified-remains" in ok(
        "init", tmp_path / "BB", "--name", "BB", "--params", INSECURE_SEALED, "--allow-insecure").out
    bad = run_cli("init", tmp_path / "CC", "--name", "CC", "--params", INSECURE_SEALED, "--allow-insecure",
                  "--purpose", "x", "--purpose", "x")
    assert bad.code == 1 and "purposes must not repeat" in bad.err
    assert not (tmp_path / "CC").exists()


# -- the refusal message ----------------------------------------------------------------

def test_refusal_body_is_strict() -> None:
    qid = "ab" * 16
    body = RefusalBody(qid, "purpose", "BB answers only for the purposes serious-crime")
    assert RefusalBody.from_bytes(body.to_bytes()) == body
    assert "refusal" in MESSAGE_TYPES and REFUSAL_REASONS == ("purpose", "quota-case", "quota-peer")
    good = {"query_id": qid, "reason": "quota-case", "message": "m"}
    for bad in ({**good, "reason": "other"}, {**good, "reason": None}, {**good, "query_id": "AB" * 16},
                {**good, "message": ""}, {**good, "message": "two\nlines"},
                {**good, "message": "x" * (MAX_REFUSAL_MESSAGE + 1)}, {**good, "extra": 1},
                {k: v for k, v in good.items() if k != "message"}):
        with pytest.raises(MessageError):
            RefusalBody.from_bytes(canonical.encode(bad))
    with pytest.raises(MessageError):
        RefusalBody.from_bytes(json.dumps(good, indent=1).encode())  # not canonical
    with pytest.raises(MessageError):
        RefusalBody(qid, "nope", "m")


# -- purposes ---------------------------------------------------------------------------

def test_purpose_not_on_the_responders_list_gets_a_signed_refusal(tmp_path: Path) -> None:
    a, b, _c, gal = world(tmp_path)
    req, resp = Requester(a), Responder(b)
    q = req.query("BB", synthetic.mate_probe(gal, 3, 1), "CASE-P1", EXTRA, now=T0)
    handed: list[bytes] = []
    res = resp.respond(q, sink=handed.append, now=T0)
    assert (res.refused, res.peer, res.query_id, res.profile) == ("purpose", "AA", header_of(q).id, "sealed")
    assert res.reason is not None and "serious-crime" in res.reason
    assert handed == [res.message]
    # Signed by BB, addressed to AA, in reply to the query; the body is boxed to AA.
    env = open_envelope(res.message, lookup=a.lookup, me="AA", params_digest=a.peer("BB").params_digest,
                        now=T0, blind_digest=a.config.blind_parameter_set.digest)
    assert (env.header.type, env.header.sender, env.header.in_reply_to) == ("refusal", "BB", header_of(q).id)
    body = RefusalBody.from_bytes(a.identity().unbox_from(env.sender, env.body))
    assert (body.query_id, body.reason) == (header_of(q).id, "purpose")
    assert b"purpose" not in env.body
    # BB logged the refusal, matched nothing, released nothing, used no quota.
    assert events(b, "refuse") == [{"peer": "AA", "query_id": header_of(q).id, "refusal_id": env.header.id,
                                    "case": "CASE-P1", "purpose": EXTRA, "reason": "purpose",
                                    "profile": "sealed"}]
    assert events(b, "answer") == [] and quota_file(b) == {}
    # The query id is used: a replay is refused as a replay, and changes nothing.
    before = snapshot(b.dir)
    with pytest.raises(ReplayError):
        resp.answer(q, now=T0 + 1)
    assert snapshot(b.dir) == before
    # AA: PolicyError, one line with the reason; the query is closed in the outbox and the log.
    with pytest.raises(PolicyError) as info:
        req.open(res.message, now=T0 + 2)
    err = info.value
    assert isinstance(err, RefusedError) and (err.peer, err.query_id, err.reason) == ("BB", header_of(q).id, "purpose")
    assert "refused: purpose" in str(err) and "\n" not in str(err)
    entry = sent(a, header_of(q).id)
    assert (entry["answer"], entry["refused"]) == (env.header.id, "purpose")
    assert events(a, "refused") == [{"peer": "BB", "query_id": header_of(q).id, "refusal_id": env.header.id,
                                     "reason": "purpose", "profile": "sealed"}]
    # Opening it again raises again and records nothing more; no follow-up on a refusal.
    before = snapshot(a.dir)
    with pytest.raises(RefusedError):
        req.open(res.message, now=T0 + 3)
    with pytest.raises(MessageError, match="expected an answer"):
        req.follow_up(res.message, "x" * 20, now=T0 + 3)
    assert snapshot(a.dir) == before
    # An answer to the refused query, even one signed by BB, is not accepted any more.
    late = craft(b, "AA", "answer", AnswerBody(header_of(q).id, False, ()).to_bytes(),
                 in_reply_to=header_of(q).id, now=T0 + 4)
    with pytest.raises(ReplayError):
        req.open(late, now=T0 + 4)
    assert snapshot(a.dir) == before


def test_a_refusal_whose_hand_over_fails_records_nothing(tmp_path: Path) -> None:
    a, b, _c, gal = world(tmp_path)
    q = Requester(a).query("BB", synthetic.mate_probe(gal, 1, 1), "CASE-S", EXTRA)
    before = snapshot(b.dir)

    def broken(_msg: bytes) -> None:
        raise OSError("disk full")

    with pytest.raises(OSError):
        Responder(b).answer(q, sink=broken)
    assert snapshot(b.dir) == before
    assert Responder(b).respond(q).refused == "purpose"


def test_refusals_are_checked_like_answers(tmp_path: Path) -> None:
    a, b, c, gal = world(tmp_path)
    req = Requester(a)
    q = req.query("BB", synthetic.mate_probe(gal, 2, 1), "CASE-V", EXTRA, now=T0)
    qid = header_of(q).id
    body = RefusalBody(qid, "purpose", "no").to_bytes()
    before = snapshot(a.dir)
    # From a peer AA did not ask; for a query AA never sent; body and header disagreeing.
    with pytest.raises(MessageError, match="did not send"):
        req.open(craft(c, "AA", "refusal", body, in_reply_to=qid, now=T0), now=T0)
    with pytest.raises(MessageError, match="did not send"):
        req.open(craft(b, "AA", "refusal", RefusalBody("cd" * 16, "purpose", "no").to_bytes(),
                       in_reply_to="cd" * 16, now=T0), now=T0)
    with pytest.raises(MessageError, match="different queries"):
        req.open(craft(b, "AA", "refusal", RefusalBody("cd" * 16, "purpose", "no").to_bytes(),
                       in_reply_to=qid, now=T0), now=T0)
    with pytest.raises(MessageError):
        req.open(craft(b, "AA", "refusal", b'{"junk":1}', in_reply_to=qid, now=T0), now=T0)
    assert snapshot(a.dir) == before


def test_a_tampered_refusal_is_an_authentication_error(tmp_path: Path) -> None:
    a, b, _c, gal = world(tmp_path)
    req = Requester(a)
    q = req.query("BB", synthetic.mate_probe(gal, 4, 1), "CASE-T", EXTRA, now=T0)
    refusal = Responder(b).answer(q, now=T0)
    before = snapshot(a.dir)
    # Every byte after the frame: signed header, boxed body, signature.
    positions = sorted({*range(_FRAME.size, len(refusal), 3), len(refusal) - 1})
    for pos in positions:
        bad = bytearray(refusal)
        bad[pos] ^= 0x01
        with pytest.raises(AuthenticationError):
            req.open(bytes(bad), now=T0)
    assert snapshot(a.dir) == before
    with pytest.raises(RefusedError):
        req.open(refusal, now=T0)


# -- quotas -----------------------------------------------------------------------------

def test_quota_per_case_then_per_peer(tmp_path: Path) -> None:
    a, b, c, gal = world(tmp_path, quota_per_case=2, quota_per_peer=3)
    req, resp = Requester(a), Responder(b)
    probe = synthetic.mate_probe(gal, 5, 1)

    def ask(who: Requester, case: str, t: int) -> str | None:
        return resp.respond(who.query("BB", probe, case, "serious-crime", now=t), now=t).refused

    assert ask(req, "C-1", T0) is None
    assert ask(req, "C-1", T0 + 1) is None
    assert ask(req, "C-1", T0 + 2) == "quota-case"
    assert ask(req, "C-2", T0 + 3) is None  # another case still passes ...
    assert ask(req, "C-3", T0 + 4) == "quota-peer"  # ... until the peer quota
    assert ask(req, "C-2", T0 + 5) == "quota-peer"
    assert ask(Requester(c), "C-1", T0 + 6) is None  # quotas are per requesting state
    assert [e["reason"] for e in events(b, "refuse")] == ["quota-case", "quota-peer", "quota-peer"]
    assert len(events(b, "answer")) == 4
    # Only answered queries are counted, in an owner-only file.
    assert quota_file(b) == {"AA": [[T0, "C-1"], [T0 + 1, "C-1"], [T0 + 3, "C-2"]], "CC": [[T0 + 6, "C-1"]]}
    assert stat.S_IMODE(os.stat(b.path("state.db")).st_mode) == 0o600
    # The requester learns which quota, in one line.
    q = req.query("BB", probe, "C-1", "serious-crime", now=T0 + 7)
    with pytest.raises(RefusedError, match="refused: quota-case") as info:
        req.open(resp.answer(q, now=T0 + 7), now=T0 + 7)
    assert "2 queries per case" in str(info.value)


def test_quotas_count_a_rolling_24_hours(tmp_path: Path) -> None:
    a, b, _c, _gal = world(tmp_path, quota_per_case=2)
    req, resp = Requester(a), Responder(b)
    probe = synthetic.impostor_probe(512, 3)

    def ask(t: int) -> str | None:
        return resp.respond(req.query("BB", probe, "C-W", "serious-crime", now=t), now=t).refused

    assert ask(T0) is None
    assert ask(T0 + 3600) is None
    assert ask(T0 + 7200) == "quota-case"
    assert ask(T0 + QUOTA_WINDOW - 1) == "quota-case"  # the first is still inside the window
    assert ask(T0 + QUOTA_WINDOW) is None  # ... and now it has left it
    assert ask(T0 + QUOTA_WINDOW + 1) == "quota-case"
    # Pruned on write: the first query is gone from the file.
    assert quota_file(b) == {"AA": [[T0 + 3600, "C-W"], [T0 + QUOTA_WINDOW, "C-W"]]}
    assert ask(T0 + QUOTA_WINDOW + 3601) is None


def test_a_corrupt_quota_file_is_a_state_error(tmp_path: Path) -> None:
    a, b, _c, _gal = world(tmp_path)
    q = Requester(a).query("BB", synthetic.impostor_probe(512, 4), "C", "serious-crime")
    for content in ("{", "[]", '{"AA": [[1.5, "C"]]}', '{"AA": [[1, 2]]}', '{"AA": [1]}'):
        with open(b.path("quota.json"), "w") as fh:
            fh.write(content)
        with pytest.raises(StateError, match="quota"):
            Responder(b).answer(q)
    os.unlink(b.path("quota.json"))
    assert Responder(b).respond(q).refused is None


# -- the requester's own list -------------------------------------------------------------

def test_the_requester_fails_fast_on_a_purpose_not_on_its_list(tmp_path: Path) -> None:
    _a, b, _c, _gal = world(tmp_path)
    bb_req = Requester(b)  # BB has the default list
    probe = synthetic.impostor_probe(512, 5)
    before = snapshot(b.dir)
    with pytest.raises(PolicyError, match="not one of BB's purposes"):
        bb_req.query("AA", probe, "C", EXTRA)
    with pytest.raises(PolicyError):
        bb_req.query("AA", probe, "C", "Serious-Crime")  # exact strings
    with pytest.raises(PolicyError):
        bb_req.blind_query("AA", probe, "C", EXTRA)
    with pytest.raises(MessageError):  # malformed text stays a message error
        bb_req.query("AA", probe, "C", "")
    assert snapshot(b.dir) == before  # no query, no key, no log entry
    assert Requester(b).outbox() == {}


# -- the blind profile ---------------------------------------------------------------------

def test_blind_queries_are_refused_the_same_way_before_any_matching(tmp_path: Path) -> None:
    a, b, _c, gal = world(tmp_path, quota_per_case=1)
    req, resp = Requester(a), Responder(b)
    probe = synthetic.mate_probe(gal, 6, 1)
    ann, q = req.blind_query("BB", probe, "C-B", EXTRA, now=T0)
    assert ann is not None
    res = resp.respond(q, announcements=[ann], now=T0)
    assert (res.refused, res.profile) == ("purpose", "blind")
    h = header_of(res.message)
    assert (h.type, h.profile, h.params) == ("refusal", "blind", b.config.blind_parameter_set.digest)
    # No matching work: the blind database was never built, no answer was kept.
    assert not os.path.exists(b.path("private", "blind-db"))
    assert not os.path.exists(b.path("blind", "queries"))
    assert [e["reason"] for e in events(b, "refuse")] == ["purpose"]
    assert events(b, "answer") == [] and quota_file(b) == {}
    # The key announced with it is public material and was kept: AA's next query under it works.
    assert [e["key_id"] for e in events(b, "keys")] == [events(a, "keys_created")[0]["key_id"]]
    with pytest.raises(ReplayError):
        resp.answer(q, now=T0 + 1)
    with pytest.raises(RefusedError, match="refused: purpose"):
        req.open(res.message, now=T0 + 1)
    assert sent(a, h.in_reply_to)["refused"] == "purpose"

    ann2, q2 = req.blind_query("BB", probe, "C-B", "serious-crime", now=T0 + 2)
    assert ann2 is None  # the same key, already delivered
    answer = resp.answer(q2, now=T0 + 2)
    assert header_of(answer).type == "answer"
    assert req.open(answer, now=T0 + 2).hit
    assert os.path.isdir(b.path("private", "blind-db"))  # matching builds it: the check above means something
    # The case quota (1) is used up now.
    _ann3, q3 = req.blind_query("BB", probe, "C-B", "serious-crime", now=T0 + 3)
    res3 = resp.respond(q3, now=T0 + 3)
    assert (res3.refused, res3.profile) == ("quota-case", "blind")
    with pytest.raises(RefusedError, match="refused: quota-case"):
        req.open(res3.message, now=T0 + 3)


# -- the command line ---------------------------------------------------------------------

def test_cli_answer_writes_the_refusal_and_open_exits_1(tmp_path: Path) -> None:
    a, b, _c, gal = world(tmp_path / "w")
    np.save(tmp_path / "p.npy", synthetic.mate_probe(gal, 8, 1))
    common = ("--probe", tmp_path / "p.npy", "--to", "BB", "--case", "C-CLI")
    ok("query", a.dir, *common, "--purpose", EXTRA, "--out", tmp_path / "q.msg")
    rep = ok_json("answer", b.dir, tmp_path / "q.msg", "--out", tmp_path / "r.msg")
    assert rep["refused"] == "purpose" and (tmp_path / "r.msg").exists()
    text_rep = run_cli("answer", b.dir, tmp_path / "q.msg", "--out", tmp_path / "r2.msg")
    assert text_rep.code == 1 and "already processed" in text_rep.err  # a replay
    opened = run_cli("open", a.dir, tmp_path / "r.msg")
    assert opened.code == 1 and opened.out == ""
    assert opened.err.startswith("pprm: error: ") and "refused: purpose" in opened.err
    assert opened.err.count("\n") == 1
    # The same flow with an allowed purpose: an answer, "refused": null.
    ok("query", a.dir, *common, "--purpose", "serious-crime", "--out", tmp_path / "q2.msg")
    rep = ok_json("answer", b.dir, tmp_path / "q2.msg", "--out", tmp_path / "a.msg")
    assert rep["refused"] is None
    assert ok_json("open", a.dir, tmp_path / "a.msg")["hit"] is True
    # Text output says which it was; the requester's own list stops the query first.
    ok("query", a.dir, *common, "--purpose", EXTRA, "--out", tmp_path / "q3.msg")
    out = ok("answer", b.dir, tmp_path / "q3.msg", "--out", tmp_path / "r3.msg").out
    assert out.startswith("refusal (purpose) of query")
    bad = run_cli("query", b.dir, "--probe", tmp_path / "p.npy", "--to", "AA", "--case", "C",
                  "--purpose", EXTRA, "--out", tmp_path / "q4.msg")
    assert bad.code == 1 and "not one of BB's purposes" in bad.err and not (tmp_path / "q4.msg").exists()
