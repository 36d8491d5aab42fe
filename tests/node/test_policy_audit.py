"""Policy changes are audited: ``set_policy`` logs them, the signed audit head covers the policy
digest, and a hand edit of ``state.json`` is refused where the state starts answering and by
``AuditLog.check``; every bad value in ``state.json`` is a typed error naming its setting.

States are copied from one made per module (insecure test parameters), so each test is fast.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from pprm import synthetic
from pprm.errors import ParameterError, PolicyTamperedError, PprmError, StateError
from pprm.node import policy as policy_module
from pprm.node.audit import _HEAD_TAG, AuditLog, _head_message, _signed_message
from pprm.node.config import (
    MAX_QUOTA,
    POLICY_FIELDS,
    StateConfig,
    parse_policy_text,
    policy_digest,
    policy_text,
    policy_text_digest,
)
from pprm.node.keyservice import KeyService
from pprm.node.policy import set_policy, show_policy
from pprm.node.requester import Requester
from pprm.node.responder import Responder
from pprm.node.state import State
from pprm.protocol.canonical import encode
from tests.helpers import new_state, snapshot

# A valid new value for every policy setting (each differs from the default).
NEW_VALUES: dict[str, Any] = {
    "threshold": 0.5, "k": 20, "purposes": ["serious-crime", "child-abduction"], "quota_per_case": 5,
    "quota_per_peer": 50, "profiles": {"FR": "blind"}, "query_ttl": 120, "token_ttl": 7200,
    "blind_key_ttl": 600,
}
# Per setting: wrong types, then out-of-range values.
BAD_VALUES: dict[str, tuple[list[Any], list[Any]]] = {
    "threshold": (["0.4", True, None, [0.4]], [0.01, 0.96, 2.0, -1, math.nan, math.inf]),
    "k": (["ten", 2.5, True, None, "10"], [0, -1, 1001]),
    "purposes": (["serious-crime", None, 7, [1], {"a": 1}], [[], [""], [" padded"], ["a", "a"], ["x" * 201],
                                                             [f"p{i}" for i in range(65)]]),
    "quota_per_case": (["10", 2.5, False, None], [0, -5, MAX_QUOTA + 1]),
    "quota_per_peer": (["lots", 1.5, True, [1]], [0, MAX_QUOTA + 1]),
    "profiles": ([["FR"], "blind", None, 3], [{"FR": "open"}, {"fr": "blind"}, {"FR": None}]),
    "query_ttl": (["1h", 60.5, None], [59, 0, 7 * 24 * 3600 + 1]),
    "token_ttl": (["1d", [], 3600.0], [60, 31 * 24 * 3600 + 1]),
    "blind_key_ttl": ([None, "600", True], [10, 10**9]),
}


def _cases(kind: int) -> list[tuple[str, Any]]:
    return [(name, v) for name, values in BAD_VALUES.items() for v in values[kind]]


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("policy-template")
    st = new_state(root / "DE", "DE")
    with st.lock():  # the lock file exists from the start, so snapshots compare content only
        pass
    return root / "DE"


@pytest.fixture
def st(template: Path, tmp_path: Path) -> State:
    shutil.copytree(template, tmp_path / "DE")
    return State.open(str(tmp_path / "DE"))


def _state_json(st: State) -> dict[str, Any]:
    with open(st.path("state.json")) as fh:
        obj: dict[str, Any] = json.load(fh)
    return obj


def _hand_edit(st: State, **settings: Any) -> None:
    obj = _state_json(st)
    obj.update(settings)
    with open(st.path("state.json"), "w") as fh:
        json.dump(obj, fh)


def _head(st: State) -> dict[str, Any]:
    with open(st.audit.head_path, "rb") as fh:
        head: dict[str, Any] = json.loads(fh.read())
    return head


def _make_legacy(st: State) -> None:
    """Rewrite the state's log as one from before policies were audited: an unsigned init line."""
    os.unlink(st.audit.head_path)
    os.unlink(st.audit.path)
    AuditLog(st.audit.path).append("init", state=st.config.name, params=st.config.params, threshold_milli=400,
                                   k=10, dim=st.config.dim)


# -- the digest ------------------------------------------------------------------------------------

def test_the_digest_covers_exactly_the_policy_settings() -> None:
    base = StateConfig(name="DE")
    text = policy_text(base)
    assert policy_digest(base) == policy_text_digest(text) == hashlib.sha256(text.encode()).hexdigest()
    assert json.loads(text)["format"] == "pprm-policy/1"
    assert set(parse_policy_text(text)) == set(POLICY_FIELDS)
    digests = {policy_digest(base)}
    for name, value in NEW_VALUES.items():
        digests.add(policy_digest(StateConfig(name="DE", **{name: value})))
    assert len(digests) == 1 + len(NEW_VALUES)  # every setting counts
    # Identity and parameter choices are not policy; the order of profiles is not either.
    assert policy_digest(StateConfig(name="FR", dim=128)) == policy_digest(base)
    two = {"FR": "blind", "NL": "sealed"}
    assert (policy_digest(StateConfig(name="DE", profiles=dict(two)))  # type: ignore[arg-type]
            == policy_digest(StateConfig(name="DE", profiles=dict(reversed(two.items())))))  # type: ignore[arg-type]


def test_init_records_the_policy_under_the_signed_head(st: State) -> None:
    digest = policy_digest(st.config)
    init = st.audit.entries()[0]
    assert init["event"] == "init"
    assert init["data"]["policy_digest"] == digest and init["data"]["policy"] == policy_text(st.config)
    head = _head(st)
    assert head["policy"] == digest
    st.identity().public.verify(_head_message("DE", head["seq"], head["hash"], digest), bytes.fromhex(head["sig"]))
    assert st.audit.check().policy == digest
    assert st.check_policy() == digest


# -- set_policy --------------------------------------------------------------------------------------

def test_set_writes_an_audit_entry_then_state_json(st: State) -> None:
    before = policy_digest(st.config)
    change = set_policy(st, k=20, threshold=0.5)
    assert change.changed == {"threshold": (0.4, 0.5), "k": (10, 20)}
    assert change.previous == before and change.recorded and change.restored == ()
    entry = st.audit.entries()[-1]
    assert entry["event"] == "policy"
    data = entry["data"]
    assert data["changed"] == "threshold,k" and data["restored"] == ""
    assert (data["k_old"], data["k_new"], data["threshold_old"], data["threshold_new"]) == ("10", "20", "0.4", "0.5")
    assert data["previous_digest"] == before
    reopened = State.open(st.dir)
    assert (reopened.config.k, reopened.config.threshold) == (20, 0.5)
    assert data["policy_digest"] == change.digest == policy_digest(reopened.config) == _head(st)["policy"]
    assert st.config == reopened.config
    assert st.audit.check().policy == change.digest
    Responder(reopened)  # starts: the policy is the audited one
    assert show_policy(reopened).status == "audited"


@pytest.mark.parametrize("name", list(NEW_VALUES))
def test_set_covers_every_policy_setting(st: State, name: str) -> None:
    change = set_policy(st, **{name: NEW_VALUES[name]})
    assert list(change.changed) == [name]
    value = getattr(State.open(st.dir).config, name)
    assert (list(value) if name == "purposes" else value) == NEW_VALUES[name]
    assert st.audit.entries()[-1]["data"]["changed"] == name
    st.audit.check()


def test_profile_changes_touch_one_peer_each(st: State) -> None:
    set_policy(st, profile_changes={"FR": "blind", "NL": "blind"})
    set_policy(st, profile_changes={"FR": None, "PL": "sealed"})
    assert State.open(st.dir).config.profiles == {"NL": "blind", "PL": "sealed"}
    with pytest.raises(ParameterError, match="not both"):
        set_policy(st, profiles={}, profile_changes={"FR": "blind"})


def test_set_without_changes_writes_nothing(st: State) -> None:
    before = snapshot(st.dir)
    change = set_policy(st)
    assert not change.recorded and change.changed == {} and change.digest == policy_digest(st.config)
    assert snapshot(st.dir) == before


@pytest.mark.parametrize(("name", "value"), _cases(0) + _cases(1))
def test_set_with_a_bad_value_names_it_and_changes_nothing(st: State, name: str, value: Any) -> None:
    before = snapshot(st.dir)
    with pytest.raises(ParameterError, match=rf"^{name}\b") as err:
        set_policy(st, **{name: value})
    assert "\n" not in str(err.value)
    assert snapshot(st.dir) == before


@pytest.mark.parametrize(("name", "value"), [("name", "FR"), ("params", "x"), ("dim", 128), ("allow_insecure", False),
                                             ("blind_params", "x"), ("colour", "red")])
def test_only_policy_settings_can_be_set(st: State, name: str, value: Any) -> None:
    before = snapshot(st.dir)
    with pytest.raises(ParameterError, match=rf"'{name}' is not a policy setting"):
        set_policy(st, **{name: value})
    assert snapshot(st.dir) == before


# -- a hand edit ------------------------------------------------------------------------------------

def test_hand_edit_is_refused_at_start_up_and_changes_nothing(st: State) -> None:
    _hand_edit(st, k=1000, threshold=0.05)
    before = snapshot(st.dir)
    edited = State.open(st.dir)  # opening still works: info, audit and policy verbs need it
    assert edited.config.k == 1000
    with pytest.raises(PolicyTamperedError) as err:
        Responder(edited)
    assert isinstance(err.value, StateError)
    assert err.value.fields == ("threshold", "k")
    message = str(err.value)
    assert "\n" not in message and "threshold, k" in message and "pprm policy set" in message
    with pytest.raises(PolicyTamperedError):
        edited.check_policy()
    assert snapshot(st.dir) == before
    rep = show_policy(edited)
    assert (rep.status, rep.differs) == ("differs", ("threshold", "k"))


def test_audit_check_fails_on_a_hand_edit(st: State) -> None:
    st.audit.check()
    _hand_edit(st, purposes=["anything"])
    with pytest.raises(PolicyTamperedError, match="in purposes") as err:
        State.open(st.dir).audit.check()
    assert err.value.fields == ("purposes",)
    with pytest.raises(PolicyTamperedError):
        st.audit.verify()


def test_reformatting_state_json_is_not_a_change(st: State) -> None:
    obj = _state_json(st)
    with open(st.path("state.json"), "w") as fh:
        json.dump(dict(reversed(obj.items())), fh, indent=4)
    Responder(State.open(st.dir))
    st.audit.check()


def test_forging_the_policy_entry_too_is_still_refused(st: State) -> None:
    # Edit state.json and rewrite the init entry's policy to match: the
    # signed head still names the old digest, and the chain breaks.
    _hand_edit(st, k=1000)
    forged = State.open(st.dir)
    with open(st.audit.path, "rb") as fh:
        lines = fh.read().splitlines(keepends=True)
    entry = json.loads(lines[0])
    entry["data"].update(policy=policy_text(forged.config), policy_digest=policy_digest(forged.config))
    lines[0] = encode(entry) + b"\n"
    with open(st.audit.path, "wb") as fh:
        fh.write(b"".join(lines))
    with pytest.raises(PolicyTamperedError):
        Responder(forged)
    with pytest.raises(StateError, match=r"chain breaks at seq 0 \(line 1\)"):
        forged.audit.check()


def test_the_head_signature_covers_the_digest(st: State) -> None:
    head = _head(st)
    head["policy"] = policy_digest(StateConfig(name="DE", k=1000))
    with open(st.audit.head_path, "wb") as fh:
        fh.write(encode(head) + b"\n")
    for attempt in (lambda: Responder(State.open(st.dir)), st.audit.check):
        with pytest.raises(StateError, match="bad signature"):
            attempt()


def test_set_restores_a_hand_edit_and_names_it(st: State) -> None:
    _hand_edit(st, k=1000, threshold=0.05)
    change = set_policy(State.open(st.dir))
    assert change.changed == {} and change.restored == ("threshold", "k") and change.recorded
    data = st.audit.entries()[-1]["data"]
    assert (data["restored"], data["k_found"], data["threshold_found"]) == ("threshold,k", "1000", "0.05")
    assert (State.open(st.dir).config.k, State.open(st.dir).config.threshold) == (10, 0.4)
    Responder(State.open(st.dir))
    # Setting a value over a hand edit: the old value is the audited one.
    _hand_edit(st, k=1000)
    change = set_policy(State.open(st.dir), k=30)
    assert change.changed == {"k": (10, 30)} and change.restored == ("k",)
    Responder(State.open(st.dir))


def test_an_interrupted_set_is_refused_then_completed(st: State, monkeypatch: pytest.MonkeyPatch) -> None:
    # Logged first, then written: a crash in between leaves state.json behind the log.
    class Crash(Exception):
        pass

    def crash(*_a: object, **_k: object) -> None:
        raise Crash

    monkeypatch.setattr(policy_module, "atomic_write_json", crash)
    with pytest.raises(Crash):
        set_policy(st, k=25)
    monkeypatch.undo()
    assert _state_json(st)["k"] == 10 and st.audit.entries()[-1]["event"] == "policy"
    with pytest.raises(PolicyTamperedError, match="in k "):
        Responder(State.open(st.dir))
    change = set_policy(State.open(st.dir))
    assert change.restored == ("k",) and State.open(st.dir).config.k == 25
    Responder(State.open(st.dir))


def test_refused_then_answering_once_the_policy_is_restored(tmp_path: Path) -> None:
    de, fr = new_state(tmp_path / "DE", "DE"), new_state(tmp_path / "FR", "FR")
    de.trust(fr.card_bytes)
    fr.trust(de.card_bytes)
    gallery = synthetic.make_gallery(20, seed=3, prefix="FR")
    KeyService(fr).enroll(gallery.templates, gallery.references)
    query = Requester(de).query("FR", synthetic.mate_probe(gallery, 4, seed=1), "C-1", "serious-crime")
    _hand_edit(fr, k=1000, quota_per_peer=MAX_QUOTA)
    before = snapshot(fr.dir)
    with pytest.raises(PolicyTamperedError):
        Responder(State.open(fr.dir)).answer(query)
    assert snapshot(fr.dir) == before
    set_policy(State.open(fr.dir))
    assert Requester(de).open(Responder(State.open(fr.dir)).answer(query)).hit


# -- states from before policies were audited ---------------------------------------------------------

def test_a_state_without_a_recorded_policy_keeps_working(st: State) -> None:
    _make_legacy(st)
    legacy = State.open(st.dir)
    assert legacy.check_policy() is None and legacy.audit.check().policy is None
    assert show_policy(legacy).status == "unaudited"
    # No policy recorded: nothing to compare (documented), so an edit made
    # before the first `policy set` is accepted as found...
    _hand_edit(st, k=12)
    Responder(State.open(st.dir))
    change = set_policy(State.open(st.dir))
    assert change.recorded and change.previous is None and change.changed == {}
    assert st.audit.entries()[-1]["data"]["previous_digest"] is None
    assert _head(st)["policy"] == change.digest == policy_digest(State.open(st.dir).config)
    # ...and from then on it is protected.
    _hand_edit(st, k=13)
    with pytest.raises(PolicyTamperedError, match="in k "):
        Responder(State.open(st.dir))


def test_a_v1_head_is_still_read_and_replaced_at_the_next_append(st: State) -> None:
    # A head as written before it covered the policy: {state, seq, hash, sig} under the v1 tag.
    _make_legacy(st)
    with st.lock():
        st.audit.append("trust", peer="FR")
    head = _head(st)
    v1 = {k: head[k] for k in ("state", "seq", "hash")}
    v1["sig"] = st.identity().sign(_signed_message(_HEAD_TAG, "DE", head["seq"], head["hash"])).hex()
    with open(st.audit.head_path, "wb") as fh:
        fh.write(encode(v1) + b"\n")
    assert st.audit.check().head == head["seq"] and st.check_policy() is None
    set_policy(st, k=11)
    new_head = _head(st)
    assert set(new_head) == {"state", "seq", "hash", "policy", "sig"}
    assert new_head["policy"] == policy_digest(State.open(st.dir).config)
    assert st.audit.check().policy == new_head["policy"]


# -- bad values in state.json ---------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "value"), _cases(0), ids=lambda v: repr(v)[:20])
def test_a_wrong_type_in_state_json_names_the_setting(st: State, name: str, value: Any) -> None:
    _hand_edit(st, **{name: value})
    with pytest.raises(StateError, match=rf"^state\.json is invalid: {name}\b") as err:
        State.open(st.dir)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(("name", "value"), _cases(1), ids=lambda v: repr(v)[:20])
def test_an_out_of_range_value_in_state_json_names_the_setting(st: State, name: str, value: Any) -> None:
    _hand_edit(st, **{name: value})
    with pytest.raises(StateError, match=rf"^state\.json is invalid: {name}\b"):
        State.open(st.dir)


@pytest.mark.parametrize(("name", "value", "says"), [
    ("name", 7, "state name"), ("name", "de", "state name"), ("dim", "512", "dim"), ("dim", 8, "dim"),
    ("allow_insecure", "yes", "allow_insecure"), ("params", 5, "params"), ("params", "nope", "params"),
    ("blind_params", None, "blind_params"), ("blind_params", "nope", "blind_params"),
])
def test_bad_fixed_settings_in_state_json_name_the_setting(st: State, name: str, value: Any, says: str) -> None:
    _hand_edit(st, **{name: value})
    with pytest.raises(StateError, match=rf"^state\.json is invalid: {says}\b"):
        State.open(st.dir)


@pytest.mark.parametrize(("content", "says"), [
    ('{"format": "pprm-state/1", "name": "DE", "colour": "red"}', "unknown setting 'colour'"),
    ('{"format": "pprm-state/1"}', "no name"), ('["DE"]', "not a JSON object"), ('{"name": "DE"}', "format"),
    ("{" * 100_000, "corrupt"), ("not json", "corrupt"),
])
def test_a_malformed_state_json_is_a_state_error(st: State, content: str, says: str) -> None:
    with open(st.path("state.json"), "w") as fh:
        fh.write(content)
    with pytest.raises(StateError, match=says) as err:
        State.open(st.dir)
    assert isinstance(err.value, PprmError) and "\n" not in str(err.value)
