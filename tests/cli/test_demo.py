"""``pprm demo``: several states end to end, every outcome checked against plaintext truth.

The demo computes the truth itself; these tests check its report from the
outside (learned references equal the truth, or a k-subset of it when the
truth exceeds the cap; planted mates are in the truth, impostors are not),
that the comparison rule really rejects wrong outcomes, and that a
disagreement turns into exit code 3.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import pytest

import pprm.cli.demo as demo
from pprm.cli.main import main
from tests.helpers import INSECURE_BLIND, INSECURE_SEALED

STATES = 3
GALLERY = 600


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    """One demo run on the fast parameter set, as its --json report."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["demo", "--states", str(STATES), "--gallery", str(GALLERY), "--params", INSECURE_SEALED, "--json"])
    assert code == 0
    return json.loads(out.getvalue())


def test_demo_learned_equals_truth_for_every_query(report: dict[str, Any]) -> None:
    k = report["k"]
    queries = report["queries"]
    assert report["ok"] is True and report["params"] == INSECURE_SEALED
    # Per ordered pair: a sealed mate, a sealed impostor, and a blind mate.
    assert len(queries) == 3 * STATES * (STATES - 1)
    pairs = {(q["requester"], q["responder"]) for q in queries}
    assert len(pairs) == STATES * (STATES - 1)  # every state queried every other one
    assert {q["profile"] for q in queries} == {"sealed", "blind"}
    assert report["blind_params"] == INSECURE_BLIND
    for q in queries:
        assert q["dont_care"] == []  # the fixed seed keeps every score out of the margin
        truth, learned = q["truth"], q["learned"]
        if len(truth) <= k:
            assert learned == truth, q
        else:
            assert len(learned) == k and set(learned) < set(truth), q
        # No candidate is within the decision margin, so no blind follow-up is refused as not a hit.
        assert q["refused"] == 0 and q["candidates"] == len(learned) and q["hit"] is bool(learned)
        if q["probe"] == "mate":
            assert q["planted"] and set(q["planted"]) <= set(truth), q
        else:
            assert q["planted"] == [] and truth == [], q
        assert q["ok"] is True and q["reason"] is None


def test_demo_exercises_duplicates_and_the_cap(report: dict[str, Any]) -> None:
    k = report["k"]
    queries = report["queries"]
    assert any("also enrolled at" in q["note"] and q["learned"] for q in queries)
    capped = [q for q in queries if len(q["truth"]) > k]
    assert capped and all(len(q["learned"]) == k for q in capped)
    # The cap holds in the blind profile too, where the requester applies it.
    assert any(q["profile"] == "blind" for q in capped)
    # Each state's gallery is its own: no reference is learned from another state.
    for q in queries:
        assert all(ref.startswith(q["responder"] + "-") for ref in q["learned"])


def test_demo_report_is_score_free_and_readable(report: dict[str, Any]) -> None:
    def keys(obj: Any) -> set[str]:
        if isinstance(obj, dict):
            return set(obj) | set().union(*(keys(v) for v in obj.values()))
        if isinstance(obj, list):
            return set().union(*(keys(v) for v in obj)) if obj else set()
        return set()

    assert not {k for k in keys(report) if "score" in k.lower()}
    text = demo.format_report(report)
    n = len(report["queries"])
    assert f"{n} queries: {n} OK, 0 MISMATCH" in text
    assert "MISMATCH:" not in text and "(cap)" in text
    assert "no decision was within 0.001 of the threshold" in text


def test_format_report_marks_mismatches_and_dont_cares(report: dict[str, Any]) -> None:
    bad = json.loads(json.dumps(report))
    q = bad["queries"][0]
    q["ok"], q["reason"], q["dont_care"] = False, "missed 1 reference(s) above the threshold", ["X-1"]
    bad["summary"].update(ok=bad["summary"]["queries"] - 1, mismatches=1, dont_care=1)
    text = demo.format_report(bad)
    assert "MISMATCH: missed 1 reference(s) above the threshold" in text
    assert "1 decision(s) within 0.001 of the threshold were treated as don't care" in text


@pytest.mark.parametrize(("truth", "dont_care", "learned", "k", "verdict"), [
    (["A"], [], ["A"], 10, None),
    ([], [], [], 10, None),
    (["A", "B"], [], ["A"], 10, "missed"),
    (["A"], [], ["A", "B"], 10, "below the threshold"),
    ([], [], ["A"], 10, "below the threshold"),
    (["A", "B", "C"], [], ["A", "C"], 2, None),          # capped: any k of the truth
    (["A", "B", "C"], [], ["A"], 2, "missed"),           # capped but fewer than k released
    (["A", "B", "C"], [], ["A", "B", "C"], 2, "cap"),    # over the cap
    (["A"], [], ["A", "A"], 10, "twice"),
    (["A", "B"], ["B"], ["A"], 10, None),                # B at the threshold: either way
    (["A"], ["B"], ["A", "B"], 10, None),                # B just under: either way
    (["A", "B"], ["B"], ["B"], 10, "missed"),            # A is sure and was missed
])
def test_judge(truth: list[str], dont_care: list[str], learned: list[str], k: int, verdict: str | None) -> None:
    got = demo.judge(truth, dont_care, learned, k)
    if verdict is None:
        assert got is None
    else:
        assert got is not None and verdict in got


def test_demo_exits_3_on_disagreement(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # Stand in for a broken pipeline: the check itself flags every query.
    monkeypatch.setattr(demo, "judge", lambda *args: "forced disagreement")
    code = main(["demo", "--states", "2", "--gallery", "16", "--params", INSECURE_SEALED])
    out = capsys.readouterr().out
    assert code == 3
    assert "MISMATCH: forced disagreement" in out and "6 queries: 0 OK, 6 MISMATCH" in out


def test_demo_keeps_states_in_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "demo"
    assert main(["demo", "--states", "2", "--gallery", "16", "--params", INSECURE_SEALED, "--dir", str(target)]) == 0
    capsys.readouterr()
    assert main(["info", str(target / "FR"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["roster"] == ["DE"] and info["gallery"] == 16 + 2
    assert main(["audit", "verify", str(target / "DE")]) == 0
    # A second run into the same, now non-empty, directory is refused cleanly.
    assert main(["demo", "--states", "2", "--gallery", "16", "--params", INSECURE_SEALED, "--dir", str(target)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("pprm: error: ") and err.count("\n") == 1


def test_demo_refuses_unknown_parameter_set(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--params", "no-such-set"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("pprm: error: unknown parameter set") and err.count("\n") == 1
