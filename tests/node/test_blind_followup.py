"""Blind step two: a follow-up carries the probe, and the responder resolves a handle only for a hit.

The responder never sees the requester's decryptions, so before this check a
requester could follow up any occupied slot of an answer ("step-two fishing").
Now the follow-up carries the requester's probe, boxed to the responder, and
the key service resolves the handle only if that probe, normalised as the
matcher normalises probes, scores at least the threshold against the record
in the slot (decrypted for the check, in memory). Otherwise: a signed
refusal (reason ``not-a-hit``), an audit entry ``refuse_followup`` without
any score, the follow-up counted against the answer's *k* and its id marked
used, and nothing else.

One module-wide network on the test-only sets (INSECURE-sealed-n1024 /
INSECURE-blind-n1024): AA asks, BB answers, CC is a third trusted state.
BB's gallery is 40 random unit templates (one block of 512 slots), so a noisy
copy of one template hits that template only. BB's *k* is 3.

The hostile requester is pprm's own :class:`Requester`, patched inside a test
(``monkeypatch``) to believe that an occupied non-hit slot was among its
candidates; it then builds the follow-up with its true probe, from its
outbox, as an honest one would.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest

from pprm.errors import (
    FollowUpRefusedError,
    MessageError,
    NotAHitError,
    ProbeNotKeptError,
    TokenError,
)
from pprm.matching.templates import normalise_probe
from pprm.node.keyservice import KeyService
from pprm.node.outbox import Outbox, SentBlindQuery
from pprm.node.requester import OpenedAnswer, Requester
from pprm.node.responder import Responder
from pprm.node.state import State
from pprm.protocol import canonical
from pprm.protocol.blind_messages import BlindFollowUpBody, make_handle
from pprm.protocol.envelope import _FRAME, Header, new_id, open_envelope, seal_envelope
from pprm.protocol.messages import RefusalBody
from tests.helpers import (
    INSECURE_BLIND,
    blind_followup_body,
    craft_blind_followup,
    leak_forms,
    new_state,
    plaintext_hits,
    snapshot,
    windows,
)

DIM = 512
TAU = 0.4
K_RESPONDER = 3
N = 40


# -- the network ----------------------------------------------------------------------

@dataclass
class Net:
    a: State
    b: State
    c: State
    templates: np.ndarray  # BB's gallery, float32 unit rows, in enrolment order
    refs: list[str]
    rng: np.random.Generator

    def mate(self, index: int) -> np.ndarray:
        """A noisy copy of BB's template ``index`` that hits that template only."""
        v = self.templates[index].astype(np.float64) + 0.3 * self.rng.standard_normal(DIM) / np.sqrt(DIM)
        probe = v / np.linalg.norm(v)
        assert plaintext_hits(self.templates, self.refs, probe, TAU) == {self.refs[index]}
        return probe


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Net:
    root = tmp_path_factory.mktemp("blind-followup")
    a = new_state(root / "AA", "AA", blind_params=INSECURE_BLIND)
    b = new_state(root / "BB", "BB", k=K_RESPONDER, blind_params=INSECURE_BLIND)
    c = new_state(root / "CC", "CC", blind_params=INSECURE_BLIND)
    for x in (a, b, c):
        for y in (a, b, c):
            if x is not y:
                x.trust(y.card_bytes)
    rng = np.random.default_rng(4711)
    raw = rng.standard_normal((N, DIM))
    templates = (raw / np.linalg.norm(raw, axis=1, keepdims=True)).astype(np.float32)
    refs = [f"BB-{i:05d}" for i in range(N)]
    KeyService(b).enroll(templates, refs)
    return Net(a, b, c, templates, refs, rng)


@dataclass
class Asked:
    """One answered blind query of AA to BB, opened by AA."""

    probe: np.ndarray
    answer: bytes
    opened: OpenedAnswer

    @property
    def qid(self) -> str:
        return self.opened.query_id

    @property
    def hit(self) -> str:
        (handle,) = self.opened.candidates
        return handle


def ask(net: Net, index: int, case: str) -> Asked:
    """AA's blind query with a mate of BB's record ``index``, answered by BB and opened by AA."""
    probe = net.mate(index)
    sent = Requester(net.a).prepare("BB", probe, case, "serious-crime", profile="blind")
    answer = Responder(net.b).answer(sent.query, announcements=sent.announcements)
    opened = Requester(net.a).open(answer)
    assert len(opened.candidates) == 1
    return Asked(probe, answer, opened)


def reference_of(b: State, query_id: str, handle: str) -> str:
    """The reference behind a handle, read from BB's secrets (tests only)."""
    rec = b.blind_store.answered(query_id)
    pos, slot = (int(x) for x in handle.split("-")[1:])
    rid = int(b.blind_store.layout(rec.version)[rec.order[pos], slot])
    return b.gallery().index.references[rid]


def non_hits(net: Net, asked: Asked) -> list[str]:
    """Handles of occupied slots of the answer whose records the probe does not hit."""
    rec = net.b.blind_store.answered(asked.qid)
    layout = net.b.blind_store.layout(rec.version)
    out = []
    for pos, blk in enumerate(rec.order):
        for slot, rid in enumerate(layout[blk]):
            handle = make_handle(pos, slot)
            if rid >= 0 and handle != asked.hit:
                out.append(handle)
    assert len(out) == N - 1
    return out


@contextlib.contextmanager
def fishing(monkeypatch: pytest.MonkeyPatch, *extra: str) -> Iterator[None]:
    """Patch AA's Requester into a hostile one that believes ``extra`` were among its candidates."""
    real = Requester._open_blind

    def believe(self: Requester, h: Header, body: object) -> OpenedAnswer:
        opened = real(self, h, body)  # type: ignore[arg-type]
        return dataclasses.replace(opened, candidates=(*opened.candidates, *extra))

    with monkeypatch.context() as m:
        m.setattr(Requester, "_open_blind", believe)
        yield


def changed(before: dict[str, bytes], after: dict[str, bytes]) -> list[str]:
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


@contextlib.contextmanager
def unchanged(*states: State) -> Iterator[None]:
    before = [snapshot(s.dir) for s in states]
    yield
    for s, b in zip(states, before, strict=True):
        assert changed(b, snapshot(s.dir)) == [], s.config.name


def events(st: State, event: str) -> list[dict[str, object]]:
    return [e["data"] for e in st.audit.entries() if e["event"] == event]


def unbox_followup(b: State, blob: bytes) -> tuple[Header, BlindFollowUpBody]:
    env = open_envelope(blob, lookup=b.lookup, me=b.config.name, params_digest=b.config.parameter_set.digest,
                        blind_digest=b.config.blind_parameter_set.digest)
    return env.header, BlindFollowUpBody.from_bytes(b.identity().unbox_from(env.sender, env.body))


def score_of(net: Net, probe: np.ndarray, reference: str) -> float:
    t = net.templates[net.refs.index(reference)].astype(np.float64)
    return float(t @ normalise_probe(probe, DIM).astype(np.float64))


# -- a genuine hit -------------------------------------------------------------------------

def test_a_follow_up_on_a_genuine_hit_carries_the_probe_and_resolves(net: Net) -> None:
    asked = ask(net, 3, "GENUINE")
    # AA keeps the normalised probe for its follow-ups, in its own outbox.
    rec = Requester(net.a).outbox()[asked.qid]
    assert isinstance(rec, SentBlindQuery) and rec.probe is not None
    kept = rec.probe_template()
    assert kept is not None and np.array_equal(kept, normalise_probe(asked.probe, DIM))
    fu = Requester(net.a).follow_up(asked.answer, asked.hit)
    # The follow-up carries exactly that probe, boxed to BB: not on the wire in clear.
    assert not [w for w in windows(kept.astype("<f4").tobytes(), 12, 128) if w in fu]
    header, body = unbox_followup(net.b, fu)
    assert (header.type, header.profile, header.in_reply_to) == ("followup", "blind", asked.qid)
    assert (body.query_id, body.token, body.dim) == (asked.qid, asked.hit, DIM)
    assert np.array_equal(body.probe, kept)
    assert Requester(net.a).outbox()[asked.qid].followups == (header.id,)  # type: ignore[union-attr]
    res = KeyService(net.b).resolve(fu)
    assert (res.reference, res.requester, res.query_id) == ("BB-00003", "AA", asked.qid)
    assert events(net.b, "resolve")[-1]["reference"] == "BB-00003"


# -- a hostile requester ---------------------------------------------------------------------

def test_a_hostile_requester_following_up_a_non_hit_with_its_true_probe_is_refused(
        net: Net, monkeypatch: pytest.MonkeyPatch) -> None:
    asked = ask(net, 5, "FISHING")
    target = non_hits(net, asked)[7]
    assert score_of(net, asked.probe, reference_of(net.b, asked.qid, target)) < TAU - 0.1
    with fishing(monkeypatch, target):
        fu = Requester(net.a).follow_up(asked.answer, target)
    header, _body = unbox_followup(net.b, fu)
    kid = net.b.blind_store.answered(asked.qid).key_id
    before = snapshot(net.b.dir)
    handed: list[bytes] = []
    with pytest.raises(NotAHitError) as info:
        KeyService(net.b).resolve(fu, sink=handed.append)
    err = info.value
    assert isinstance(err, TokenError)  # a typed PprmError the callers already handle
    assert (err.peer, err.query_id, err.followup_id) == ("AA", asked.qid, header.id)
    assert handed == [err.refusal]
    # Only the log, the replay cache and the answer's follow-up list changed.
    after = snapshot(net.b.dir)
    assert changed(before, after) == sorted(["audit.log", "audit.head", "state.db",
                                             f"blind/queries/{asked.qid}.json"])
    old, new = (json.loads(s[s.index(b"|") + 1:]) for s in (before[f"blind/queries/{asked.qid}.json"],
                                                             after[f"blind/queries/{asked.qid}.json"]))
    assert new == {**old, "followups": [*old["followups"], target]}
    # The audit entry names the refusal, never a score; no reference was resolved.
    entry = net.b.audit.entries()[-1]
    assert entry["event"] == "refuse_followup"
    refusal_header = Header.from_json(canonical.decode(
        err.refusal[_FRAME.size:_FRAME.size + _FRAME.unpack_from(err.refusal)[3]], "header"))
    assert entry["data"] == {"peer": "AA", "query_id": asked.qid, "followup_id": header.id,
                             "refusal_id": refusal_header.id, "reason": "not-a-hit", "profile": "blind",
                             "key_id": kid}
    assert not [e for e in events(net.b, "resolve") if e["query_id"] == asked.qid]
    # The key was not retired by the refusal: BB retires it when a follow-up resolves.
    assert json.loads(after[f"blind/keys/{kid}/meta.json"].split(b"|", 1)[1])["retired_by"] is None
    # The signed refusal is boxed to AA and says "not-a-hit", never by how much.
    score = score_of(net, asked.probe, reference_of(net.b, asked.qid, target))
    env = open_envelope(err.refusal, lookup=net.a.lookup, me="AA", params_digest="",
                        blind_digest=net.a.config.blind_parameter_set.digest)
    body = RefusalBody.from_bytes(net.a.identity().unbox_from(env.sender, env.body))
    assert (env.header.type, env.header.profile, env.header.in_reply_to) == ("refusal", "blind", header.id)
    assert (body.query_id, body.followup_id, body.reason) == (asked.qid, header.id, "not-a-hit")
    assert abs(score) < 1
    for text in (str(err), repr(err), body.message, json.dumps(entry["data"])):
        assert "score" not in text.lower()
        assert not re.search(r"0\.[0-9]{2}", text), text  # no value below one, in any rounding
    # A replay of the refused follow-up is a replay, and changes nothing.
    with unchanged(net.b), pytest.raises(MessageError, match="already"):
        KeyService(net.b).resolve(fu)
    # AA opens the refusal: recorded once, raised every time.
    with pytest.raises(FollowUpRefusedError) as refused:
        Requester(net.a).open(err.refusal)
    assert (refused.value.peer, refused.value.query_id, refused.value.followup_id, refused.value.reason) == (
        "BB", asked.qid, header.id, "not-a-hit")
    with unchanged(net.a), pytest.raises(FollowUpRefusedError):
        Requester(net.a).open_followup_refusal(err.refusal)
    assert events(net.a, "followup_refused") == [{"peer": "BB", "query_id": asked.qid, "followup_id": header.id,
                                                   "refusal_id": env.header.id, "reason": "not-a-hit",
                                                   "profile": "blind"}]
    # The genuine candidate is still resolved (and that retires the key at BB).
    assert KeyService(net.b).resolve(Requester(net.a).follow_up(asked.answer, asked.hit)).reference == "BB-00005"
    assert net.b.blind_store._key_meta(kid)["retired_by"] == asked.qid


def test_a_forged_probe_that_hits_the_record_resolves_it(net: Net) -> None:
    """A follow-up whose probe does hit the record behind the handle is resolved, whatever probe it searched with.

    This is intended. The check proves that the requester holds a face that
    matches the record: with the record's own template (or any face that
    clears the threshold against it) the requester could have searched and
    found it anyway. Step two reveals the probe to the responder only for a
    candidate the requester chose to pursue, and hands over the record the
    probe matches; what the check stops is following up records the
    requester holds no matching face for.
    """
    asked = ask(net, 9, "FORGED")
    target = non_hits(net, asked)[11]
    reference = reference_of(net.b, asked.qid, target)
    forged = net.templates[net.refs.index(reference)]
    assert score_of(net, asked.probe, reference) < TAU - 0.1 and score_of(net, forged, reference) > 0.99
    res = KeyService(net.b).resolve(craft_blind_followup(net.a, "BB", asked.qid, target, forged))
    assert res.reference == reference


def test_follow_ups_count_against_k_whether_refused_or_not(net: Net, monkeypatch: pytest.MonkeyPatch) -> None:
    asked = ask(net, 12, "COUNTED")
    fish = non_hits(net, asked)[:4]
    ks = KeyService(net.b)
    with fishing(monkeypatch, *fish):
        for handle in fish[:2]:
            with pytest.raises(NotAHitError):
                ks.resolve(Requester(net.a).follow_up(asked.answer, handle))
    # A refused handle stays used: not even a probe that hits its record resolves it now.
    reference = reference_of(net.b, asked.qid, fish[0])
    forged = net.templates[net.refs.index(reference)]
    with unchanged(net.b), pytest.raises(TokenError, match="already followed up"):
        ks.resolve(craft_blind_followup(net.a, "BB", asked.qid, fish[0], forged))
    # Two refused, then the genuine one: the third of BB's k = 3.
    assert ks.resolve(Requester(net.a).follow_up(asked.answer, asked.hit)).reference == "BB-00012"
    assert net.b.blind_store.answered(asked.qid).followups == [*fish[:2], asked.hit]
    for handle in fish[2:]:  # with or without a hitting probe, the answer is used up
        probe = net.templates[net.refs.index(reference_of(net.b, asked.qid, handle))]
        with unchanged(net.b), pytest.raises(TokenError, match=f"at most {K_RESPONDER}"):
            ks.resolve(craft_blind_followup(net.a, "BB", asked.qid, handle, probe))


def test_a_refusal_whose_hand_over_fails_records_nothing(net: Net, monkeypatch: pytest.MonkeyPatch) -> None:
    asked = ask(net, 14, "HAND-OVER")
    target = non_hits(net, asked)[0]
    with fishing(monkeypatch, target):
        fu = Requester(net.a).follow_up(asked.answer, target)

    def broken(_msg: bytes) -> None:
        raise OSError("disk full")

    with unchanged(net.b), pytest.raises(OSError, match="disk full"):
        KeyService(net.b).resolve(fu, sink=broken)
    with pytest.raises(NotAHitError):  # delivered again, it is refused and recorded
        KeyService(net.b).resolve(fu)
    assert events(net.b, "refuse_followup")[-1]["query_id"] == asked.qid


# -- malformed probes -----------------------------------------------------------------------------

def test_malformed_probe_fields_are_message_errors_and_change_nothing(net: Net) -> None:
    asked = ask(net, 16, "MALFORMED")
    qid, hit = asked.qid, asked.hit
    good = normalise_probe(asked.probe, DIM)
    nan, inf = good.copy(), good.copy()
    nan[3], inf[5] = np.nan, -np.inf
    bodies = {
        "wrong length": blind_followup_body(qid, hit, good, dim=DIM - 1),
        "other dimension": blind_followup_body(qid, hit, good[:256] / np.linalg.norm(good[:256])),
        "NaN": blind_followup_body(qid, hit, nan),
        "infinity": blind_followup_body(qid, hit, inf),
        "zero vector": blind_followup_body(qid, hit, np.zeros(DIM)),
        "float64 bytes": blind_followup_body(qid, hit, good.astype("<f8").tobytes(), dim=DIM),
        "dim as text": canonical.encode({"dim": str(DIM), "probe": canonical.b64(good.astype("<f4").tobytes()),
                                         "query_id": qid, "token": hit}),
        "probe as a list": canonical.encode({"dim": DIM, "probe": [float(x) for x in good[:4]],
                                             "query_id": qid, "token": hit}),
        "probe not base64": canonical.encode({"dim": 2, "probe": "!!!!!!!!!!!", "query_id": qid, "token": hit}),
        "no probe (older pprm)": canonical.encode({"query_id": qid, "token": hit}),
        "extra field": canonical.encode({"dim": DIM, "probe": canonical.b64(good.astype("<f4").tobytes()),
                                         "query_id": qid, "token": hit, "score": 1}),
    }
    ks = KeyService(net.b)
    for what, body in bodies.items():
        blob = craft_blind_followup(net.a, "BB", qid, hit, None, body=body)
        with unchanged(net.b), pytest.raises(MessageError):
            ks.resolve(blob)
            pytest.fail(what)
    # The honest follow-up still resolves.
    assert ks.resolve(Requester(net.a).follow_up(asked.answer, hit)).reference == "BB-00016"


# -- the probe stays where it belongs ---------------------------------------------------------------

def test_the_probe_never_appears_in_logs_or_the_responders_files(net: Net, monkeypatch: pytest.MonkeyPatch) -> None:
    asked = ask(net, 18, "NO-LEAK")
    target = non_hits(net, asked)[3]
    with fishing(monkeypatch, target):
        refused = Requester(net.a).follow_up(asked.answer, target)
    with pytest.raises(NotAHitError) as info:
        KeyService(net.b).resolve(refused)
    with pytest.raises(FollowUpRefusedError):
        Requester(net.a).open(info.value.refusal)
    assert KeyService(net.b).resolve(Requester(net.a).follow_up(asked.answer, asked.hit)).reference == "BB-00018"
    unit = normalise_probe(asked.probe, DIM)
    forms = [unit.astype("<f4").tobytes(), unit.astype("<f8").tobytes(), asked.probe.astype("<f8").tobytes(),
             asked.probe.astype("<f4").tobytes()]
    raw = [w for f in forms for w in windows(f, 12, 128)]
    text = [enc for w in raw for enc in leak_forms(w)]
    # BB keeps nothing of the probe, in any encoding, anywhere in its directory.
    files = snapshot(net.b.dir)
    small = {k: v for k, v in files.items() if len(v) < 1 << 20}
    assert not [k for k, v in files.items() if any(n in v for n in raw)]
    assert not [k for k, v in small.items() if any(n in v for n in text)]
    # AA: its audit log never; its outbox keeps the probe (its own data, 0600) for the follow-ups.
    mine = snapshot(net.a.dir)
    leaks = sorted(k for k, v in mine.items() if len(v) < 1 << 20 and any(n in v for n in raw + text))
    assert leaks == ["state.db"]
    assert os.stat(net.a.path("state.db")).st_mode & 0o777 == 0o600


def test_a_record_without_a_kept_probe_cannot_be_followed_up(net: Net) -> None:
    asked = ask(net, 20, "OLD-RECORD")
    # An outbox record as pprm wrote it before it kept probes.
    box = Outbox(net.a.path("outbox.json"))
    rec = box.get(asked.qid)
    assert isinstance(rec, SentBlindQuery) and rec.probe is not None
    box.put(dataclasses.replace(rec, probe=None))
    with unchanged(net.a), pytest.raises(ProbeNotKeptError, match="not kept"):
        Requester(net.a).follow_up(asked.answer, asked.hit)


def test_no_probe_is_kept_once_no_follow_up_can_follow(net: Net) -> None:
    impostor = net.rng.standard_normal(DIM)
    assert plaintext_hits(net.templates, net.refs, impostor, TAU) == set()
    req = Requester(net.a)
    sent = req.prepare("BB", impostor, "NO-HIT", "serious-crime", profile="blind")
    assert req.outbox()[sent.query_id].probe is not None  # type: ignore[union-attr]
    opened = req.open(Responder(net.b).answer(sent.query, announcements=sent.announcements))
    assert opened.candidates == ()
    assert req.outbox()[sent.query_id].probe is None  # type: ignore[union-attr]
    # An abandoned query drops it too.
    lost = req.prepare("BB", impostor, "LOST", "serious-crime", profile="blind")
    assert req.abandon(lost.query_id, "delivery failed") == lost.key_id
    assert req.outbox()[lost.query_id].probe is None  # type: ignore[union-attr]


# -- refusals of follow-ups are checked like answers -------------------------------------------------

def test_follow_up_refusals_are_checked_like_answers(net: Net, monkeypatch: pytest.MonkeyPatch) -> None:
    asked = ask(net, 22, "CHECKED")
    target = non_hits(net, asked)[5]
    with fishing(monkeypatch, target):
        fu = Requester(net.a).follow_up(asked.answer, target)
    fid = unbox_followup(net.b, fu)[0].id
    req = Requester(net.a)

    def refusal(sender: State, followup_id: str, query_id: str = asked.qid, re_: str | None = None) -> bytes:
        """A blind refusal of a follow-up, signed by ``sender`` and boxed to AA."""
        t = int(time.time())
        body = RefusalBody(query_id, "not-a-hit", "no", followup_id=followup_id).to_bytes()
        h = Header("refusal", sender.config.name, "AA", new_id(), t, t + 3600, sender.blind_ctx.params.digest,
                   "blind", re_ or followup_id)
        return seal_envelope(sender.identity(), h, sender.identity().box_to(sender.peer("AA").identity, body))

    with unchanged(net.a):
        with pytest.raises(MessageError, match="did not send"):
            req.open(refusal(net.c, fid))                      # from a state AA did not send it to
        with pytest.raises(MessageError, match="did not send"):
            req.open(refusal(net.b, "cd" * 16))                # a follow-up AA never sent
        with pytest.raises(MessageError, match="did not send"):
            req.open(refusal(net.b, fid, query_id="ab" * 16))  # naming another query
        with pytest.raises(MessageError, match="different follow-ups"):
            req.open(refusal(net.b, fid, re_="cd" * 16))       # body and header disagree
        with pytest.raises(MessageError, match="got a answer"):
            req.open_followup_refusal(asked.answer)            # an answer is not a refusal
    # The true refusal is accepted.
    with pytest.raises(NotAHitError) as info:
        KeyService(net.b).resolve(fu)
    with pytest.raises(FollowUpRefusedError):
        req.open_followup_refusal(info.value.refusal)
