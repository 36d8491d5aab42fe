"""``pprm policy show`` and ``pprm policy set`` (pprm.cli.policy_cmds), through the CLI.

Text and ``--json`` output (tagged ``pprm.policy.show/1`` and ``pprm.policy.set/1``), every setting
through its option, errors as one line with the exit codes other verbs use (1 for a refused value, 2
for a malformed option), nothing changed on an error; a hand edit of ``state.json`` reported by
``policy show``, failed by ``audit verify`` and refused by ``answer``; a bad value in ``state.json``
one line, no traceback.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from pprm.node.config import policy_digest
from pprm.node.state import State
from tests.helpers import INSECURE_SEALED, cli, ok, ok_json, snapshot

DEFAULTS = {"threshold": 0.4, "k": 10, "purposes": ["serious-crime", "missing-person", "unidentified-remains"],
            "quota_per_case": 100, "quota_per_peer": 2000, "profiles": {}, "query_ttl": 3600, "token_ttl": 604800,
            "blind_key_ttl": 86400}


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("policy-cli") / "DE"
    ok("init", d, "--name", "DE", "--params", INSECURE_SEALED, "--allow-insecure")
    (d / ".lock").touch()  # as a first `policy set` leaves it: snapshots then compare content only
    return d


@pytest.fixture
def state_dir(template: Path, tmp_path: Path) -> Path:
    shutil.copytree(template, tmp_path / "DE")
    return tmp_path / "DE"


def _refused(root: Path, *argv: object, code: int = 1, says: str = "") -> str:
    """Run a command that must fail with one line on stderr and change nothing under ``root``."""
    before = snapshot(str(root))
    r = cli(*argv)
    assert r.code == code, r
    if "--json" in argv:  # the error object on stdout, the same line on stderr
        failed = json.loads(r.out)
        assert failed["format"] == "pprm.error/1" and failed["ok"] is False
        assert code != 1 or r.err == f"pprm: error: {failed['error']['message']}\n"
    else:
        assert r.out == ""
    assert snapshot(str(root)) == before
    if code == 1:
        assert r.err.startswith("pprm: error: ") and r.err.count("\n") == 1, r.err
    assert "Traceback" not in r.err
    assert says.lower() in r.err.lower(), r.err
    return r.err


def _hand_edit(state_dir: Path, **settings: Any) -> None:
    obj = json.loads((state_dir / "state.json").read_text())
    obj.update(settings)
    (state_dir / "state.json").write_text(json.dumps(obj))


def test_show_text_and_json(state_dir: Path) -> None:
    shown = ok_json("policy", "show", state_dir)
    digest = policy_digest(State.open(str(state_dir)).config)
    assert shown == {"format": "pprm.policy.show/1", "ok": True, "state": "DE", "policy": DEFAULTS, "digest": digest,
                     "audited_digest": digest, "status": "audited", "differs": []}
    text = ok("policy", "show", state_dir).out
    assert text.startswith("policy of DE\n")
    assert "  k               10\n" in text and "  purposes        serious-crime, missing-person" in text
    assert f"digest  {digest}\n" in text and "status  the audited policy" in text


def test_set_every_setting_then_show(state_dir: Path) -> None:
    done = ok_json("policy", "set", state_dir, "--threshold", "0.5", "--k", "20", "--purposes", "serious-crime, a-b",
                   "--quota-per-case", "5", "--quota-per-peer", "50", "--profile", "FR=blind", "--profile",
                   "NL=sealed", "--query-ttl", "120", "--token-ttl", "7200", "--blind-key-ttl", "600")
    want = {"threshold": 0.5, "k": 20, "purposes": ["serious-crime", "a-b"], "quota_per_case": 5,
            "quota_per_peer": 50, "profiles": {"FR": "blind", "NL": "sealed"}, "query_ttl": 120, "token_ttl": 7200,
            "blind_key_ttl": 600}
    assert done["format"] == "pprm.policy.set/1" and done["state"] == "DE" and done["recorded"] is True
    assert done["policy"] == want and done["restored"] == []
    assert done["changed"] == {name: {"old": DEFAULTS[name], "new": want[name]} for name in want}
    config = State.open(str(state_dir)).config
    assert done["digest"] == policy_digest(config) and done["previous_digest"] != done["digest"]
    assert (config.k, config.purposes, config.profiles) == (20, ("serious-crime", "a-b"), want["profiles"])
    assert ok_json("policy", "show", state_dir)["status"] == "audited"
    entries = ok_json("audit", "show", state_dir)["entries"]
    assert entries[-1]["event"] == "policy" and entries[-1]["data"]["policy_digest"] == done["digest"]
    assert ok_json("audit", "verify", state_dir)["ok"] is True
    # One peer at a time; "default" drops the entry.
    again = ok_json("policy", "set", state_dir, "--profile", "FR=default")
    assert again["changed"] == {"profiles": {"old": want["profiles"], "new": {"NL": "sealed"}}}


def test_set_text(state_dir: Path) -> None:
    text = ok("policy", "set", state_dir, "--k", "12", "--profile", "FR=blind").out.splitlines()
    assert text[0] == "policy of DE changed and recorded in the audit log"
    assert text[1:3] == ["  k: 10 -> 12", "  profiles: (none: every peer sealed) -> FR=blind (other peers: sealed)"]
    assert text[3].startswith("digest  ")
    unchanged = ok("policy", "set", state_dir).out
    assert unchanged.startswith("policy of DE unchanged; nothing recorded\n")


@pytest.mark.parametrize(("argv", "says"), [
    (["--k", "0"], "k must be an integer between 1 and 1000"),
    (["--k", "1001"], "k must be an integer between 1 and 1000"),
    (["--threshold", "2"], "threshold must be a number between 0.05 and 0.95"),
    (["--threshold", "nan"], "threshold must be a number"),
    (["--purposes", ""], "purposes must each be"),
    (["--purposes", "a,a"], "purposes must not repeat"),
    (["--quota-per-case", "0"], "quota_per_case must be an integer"),
    (["--quota-per-peer", "-1"], "quota_per_peer must be an integer"),
    (["--profile", "fr=blind"], "profiles must map state codes"),
    (["--query-ttl", "5"], "query_ttl must be an integer"),
    (["--token-ttl", "60"], "token_ttl must be an integer"),
    (["--blind-key-ttl", "0"], "blind_key_ttl must be an integer"),
])
def test_a_refused_value_is_one_line_and_changes_nothing(state_dir: Path, argv: list[str], says: str) -> None:
    err = _refused(state_dir, "policy", "set", state_dir, *argv, says=says)
    assert err.startswith(f"pprm: error: {says}")
    # --json adds the error object on stdout; stderr and the exit code stay.
    _refused(state_dir, "policy", "set", state_dir, *argv, "--json", says=says)


@pytest.mark.parametrize("argv", [["--k", "ten"], ["--threshold", "x"], ["--profile", "FR=open"],
                                  ["--profile", "FR"], ["--token-ttl", "1h"], ["--name", "FR"]])
def test_a_malformed_option_is_a_usage_error(state_dir: Path, argv: list[str]) -> None:
    _refused(state_dir, "policy", "set", state_dir, *argv, code=2)


def test_not_a_state(tmp_path: Path) -> None:
    for verb in ("show", "set"):
        _refused(tmp_path, "policy", verb, tmp_path / "nowhere", says="not a pprm state directory")


def test_a_hand_edit_is_reported_failed_and_refused(state_dir: Path, tmp_path: Path) -> None:
    _hand_edit(state_dir, k=1000, threshold=0.05)
    shown = ok_json("policy", "show", state_dir)
    assert (shown["status"], shown["differs"]) == ("differs", ["threshold", "k"])
    assert shown["digest"] != shown["audited_digest"]
    assert "DIFFERS from the audited policy in threshold, k" in ok("policy", "show", state_dir).out
    _refused(state_dir, "audit", "verify", state_dir, says="policy differs from the audited one in threshold, k")
    (tmp_path / "q.msg").write_bytes(b"any query: the responder refuses to start before reading it")
    err = _refused(tmp_path, "answer", state_dir, tmp_path / "q.msg", "--out", tmp_path / "a.msg",
                   says="pprm policy set")
    assert "threshold, k" in err and not (tmp_path / "a.msg").exists()
    # `policy set` with no options writes the audited policy back, and says so.
    restored = ok_json("policy", "set", state_dir)
    assert restored["restored"] == ["threshold", "k"] and restored["changed"] == {}
    assert restored["policy"] == DEFAULTS
    assert ok_json("audit", "verify", state_dir)["ok"] is True


@pytest.mark.parametrize(("setting", "value", "says"), [
    ("k", "ten", "state.json is invalid: k must be an integer between 1 and 1000"),
    ("threshold", "0.4", "state.json is invalid: threshold must be a number"),
    ("purposes", "serious-crime", "state.json is invalid: purposes must be a list"),
    ("quota_per_peer", 0, "state.json is invalid: quota_per_peer must be an integer"),
    ("profiles", {"FR": "open"}, "state.json is invalid: profiles must map"),
    ("token_ttl", 1.5, "state.json is invalid: token_ttl must be an integer"),
])
def test_a_bad_value_in_state_json_is_one_line(state_dir: Path, setting: str, value: Any, says: str) -> None:
    _hand_edit(state_dir, **{setting: value})
    for argv in (["policy", "show"], ["policy", "set"], ["info"], ["audit", "verify"]):
        _refused(state_dir, *argv, state_dir, says=says)
