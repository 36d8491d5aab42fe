"""Outputs and errors of the command: one JSON vocabulary (docs/JSON.md), errors as JSON, audit times and seqs,
candidates by number, answer paths, temp-file names, a closed stdout, usage errors, outputs that are inputs.

Everything runs in-process on the sealed world of :mod:`tests.cli.worlds`, except the closed-stdout test,
which needs a real process and a real pipe.
"""

from __future__ import annotations

import argparse
import errno
import inspect
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import pprm.errors
from pprm import _fs, synthetic
from pprm.cli import common, report
from pprm.cli.main import build_parser
from pprm.net import wire
from pprm.net.service import create_app
from pprm.node.state import State
from tests.cli.worlds import World, pprm_script, refused, truth
from tests.helpers import cli, ok, ok_json, snapshot, thread_server

ROOT = Path(__file__).resolve().parents[2]
JSON_MD = ROOT / "docs" / "JSON.md"
PURPOSE = "serious-crime"


def _query_and_answer(world: World, tmp_path: Path, ref: int = 7) -> tuple[Path, Path, list[str]]:
    g = world.galleries["FR"]
    probe = synthetic.mate_probe(g, ref, seed=1)
    np.save(tmp_path / "p.npy", probe)
    ok("query", world.dirs["DE"], "--probe", tmp_path / "p.npy", "--to", "FR", "--case", "C-OUT", "--purpose",
       PURPOSE, "--out", tmp_path / "q.msg")
    ok("answer", world.dirs["FR"], tmp_path / "q.msg", "--out", tmp_path / "a.msg")
    return tmp_path / "q.msg", tmp_path / "a.msg", truth(g, probe)


def _json_verbs(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...],
                                                                                             argparse.ArgumentParser]]:
    """Every (sub-)verb's parser, with its path (``("audit", "verify")``)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name), sub
                yield from _json_verbs(sub, (*path, name))


# -- 1. one vocabulary ----------------------------------------------------------------------------

def test_every_json_verb_has_a_format_tag_and_docs_json_documents_each_one() -> None:
    tags = set()
    for path, sub in _json_verbs(build_parser()):
        if any(a.dest == "json" for a in sub._actions):
            tag = sub.get_default("json_format")
            assert tag == report.format_tag(*path) and tag in report.FORMATS, path
            tags.add(tag)
    assert tags | {report.ERROR, report.QUERY_BATCH, report.ANSWER_BATCH} == set(report.FORMATS)
    text = JSON_MD.read_text(encoding="utf-8")
    documented = set(re.findall(r"\bpprm\.[a-z.-]+/\d+", text))
    assert documented == set(report.FORMATS)
    headed = set(re.findall(r"^### (pprm\.[a-z.-]+/\d+)", text, re.M)) | set(
        re.findall(r"^### pprm\.[a-z.-]+/\d+ and (pprm\.[a-z.-]+/\d+)", text, re.M))
    assert headed == set(report.FORMATS) - {report.ERROR}
    for _cls, code in report.ERROR_CODES:
        assert f"| `{code}` |" in text, code


def test_the_flow_speaks_one_vocabulary(world: World, tmp_path: Path) -> None:
    de, fr = world.dirs["DE"], world.dirs["FR"]
    g = world.galleries["FR"]
    np.save(tmp_path / "p.npy", synthetic.mate_probe(g, 7, seed=1))
    q = ok_json("query", de, "--probe", tmp_path / "p.npy", "--to", "FR", "--case", "C-V", "--purpose", PURPOSE,
                "--out", tmp_path / "q.msg")
    a = ok_json("answer", fr, tmp_path / "q.msg", "--out", tmp_path / "a.msg")
    o = ok_json("open", de, tmp_path / "a.msg")
    f = ok_json("follow-up", de, tmp_path / "a.msg", o["candidates"][0], "--out", tmp_path / "f.msg")
    r = ok_json("resolve", fr, tmp_path / "f.msg")
    outputs = {"query": q, "answer": a, "open": o, "follow-up": f, "resolve": r}
    for verb, out in outputs.items():
        assert list(out)[:2] == ["format", "ok"] and out["ok"] is True and "error" not in out, verb
        assert out["format"] == f"pprm.{verb}/1"
        # The state it runs in, the other one, the profile: the same names in every verb.
        assert out["profile"] == "sealed" and out["query_id"] == q["query_id"], verb
        assert (out["state"], out["peer"]) == (("DE", "FR") if verb in ("query", "open", "follow-up")
                                               else ("FR", "DE")), verb
        assert not {"from", "to", "name"} & set(out), verb
    assert f["followup_id"] == r["followup_id"] and r["reference"] == "FR-0000007"
    # resolve --json holds what its text says (reference, requester, query) and more.
    assert {"reference", "peer", "query_id", "followup_id", "profile"} <= set(r)


# -- 2. failures under --json ---------------------------------------------------------------------

def _failed_json(r: Any, code: str, exit_code: int = 1) -> dict[str, Any]:
    assert r.code == exit_code, r
    out = json.loads(r.out)
    assert out == {"format": "pprm.error/1", "ok": False, "error": out["error"]}
    assert out["error"]["code"] == code and "\n" not in out["error"]["message"]
    return dict(out["error"])


def test_a_failure_under_json_prints_the_error_object_and_the_same_line(world: World, tmp_path: Path) -> None:
    before = snapshot(str(world.root))
    r = cli("answer", world.dirs["FR"], world.cards["DE"], "--out", tmp_path / "a.msg", "--json")
    error = _failed_json(r, "message")
    assert r.err == f"pprm: error: {error['message']}\n"
    assert snapshot(str(world.root)) == before and not (tmp_path / "a.msg").exists()
    # An OSError: the file named, code "os".
    r = cli("open", world.dirs["DE"], tmp_path / "absent.msg", "--json")
    assert "absent.msg" in _failed_json(r, "os")["message"]
    # Not a state directory.
    _failed_json(cli("info", tmp_path / "nowhere", "--json"), "state")
    # A usage error once --json is among the arguments: exit 2, code "usage", argparse's usage on stderr.
    r = cli("answer", world.dirs["FR"], tmp_path / "q.msg", "--json")
    assert "--out" in _failed_json(r, "usage", 2)["message"] and "usage: pprm answer" in r.err
    # Without --json, stdout stays empty.
    r = cli("answer", world.dirs["FR"], world.cards["DE"], "--out", tmp_path / "a.msg")
    assert r.code == 1 and r.out == ""


def test_a_refusal_under_json_carries_its_detail(world: World, tmp_path: Path) -> None:
    np.save(tmp_path / "p.npy", synthetic.impostor_probe(512, seed=3))
    ok("query", world.dirs["DE"], "--probe", tmp_path / "p.npy", "--to", "FR", "--case", "C-R", "--purpose", PURPOSE,
       "--out", tmp_path / "q.msg")
    fr = State.open(str(world.dirs["FR"]))
    saved = (Path(fr.dir) / "state.json").read_bytes()
    try:
        ok("policy", "set", world.dirs["FR"], "--purposes", "missing-person")
        ok("answer", world.dirs["FR"], tmp_path / "q.msg", "--out", tmp_path / "r.msg")
    finally:
        ok("policy", "set", world.dirs["FR"], "--purposes", "serious-crime,missing-person,unidentified-remains")
    assert json.loads(saved)["purposes"] == json.loads((Path(fr.dir) / "state.json").read_bytes())["purposes"]
    error = _failed_json(cli("open", world.dirs["DE"], tmp_path / "r.msg", "--json"), "refused")
    assert error["detail"]["reason"] == "purpose" and error["detail"]["peer"] == "FR"


def test_an_interrupt_under_json(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(State, "open", interrupted)
    r = cli("info", tmp_path, "--json")
    assert _failed_json(r, "interrupted", 130)["message"] == "interrupted"
    assert r.err == "pprm: interrupted\n"


def _code_of_class(cls: type[BaseException]) -> str:
    return next(code for c, code in report.ERROR_CODES if issubclass(cls, c))


def test_every_error_class_has_a_code_of_its_own() -> None:
    exported = [getattr(pprm.errors, name) for name in pprm.errors.__all__]
    classes = [c for c in exported if inspect.isclass(c) and issubclass(c, pprm.errors.PprmError)]
    assert len(classes) >= 32 and all(issubclass(c, (pprm.errors.PprmError, Warning)) for c in exported)
    for cls in classes:
        code = _code_of_class(cls)
        assert code != report.FALLBACK_CODE or cls is pprm.errors.PprmError, cls
    # Each class sits before every class it derives from (most specific first).
    order = [c for c, _code in report.ERROR_CODES]
    for i, entry in enumerate(order):
        assert not any(issubclass(entry, earlier) and entry is not earlier for earlier in order[:i]), entry
    # The classes the HTTP services code carry the same code here (NotAHitError has its own).
    for cls in classes:
        wired = next((code for c, code, _status in wire._CODES if issubclass(cls, c)), None)
        if wired is not None and not issubclass(cls, pprm.errors.NotAHitError):
            assert _code_of_class(cls) == wired, cls
    assert report.error_code(pprm.errors.ReplayError("x")) == wire.status_of(pprm.errors.ReplayError("x"))[1]
    assert report.error_code(OSError(errno.ENOENT, "gone", "f")) == "os"


# -- 3, 5. audit verify: ok false, and seqs ------------------------------------------------------------

def test_audit_verify_json_is_not_ok_when_the_log_is_broken(world: World, tmp_path: Path) -> None:
    copy = tmp_path / "FR"
    shutil.copytree(world.dirs["FR"], copy)
    lines = (copy / "audit.log").read_bytes().splitlines(keepends=True)
    lines[3] = lines[3].replace(b'"time":', b'"time":1', 1)
    (copy / "audit.log").write_bytes(b"".join(lines))
    r = cli("audit", "verify", copy, "--json")
    assert r.code == 1
    out = json.loads(r.out)
    assert (out["format"], out["ok"], out["error"]["code"]) == ("pprm.audit.verify/1", False, "state")
    assert out["logs"] == [{"log": "FR", "ok": False, "error": out["error"]}]
    assert r.err == f"pprm: error: {out['error']['message']}\n"
    # The broken entry is named by the seq audit show prints for it (and by its line).
    assert "chain breaks at seq 3 (line 4)" in out["error"]["message"]
    shown = ok("audit", "show", copy).out.splitlines()
    assert shown[3].split()[0] == "3"
    assert json.loads(ok("audit", "show", copy, "--json").out)["entries"][3]["seq"] == 3
    # Text mode: the same line, nothing on stdout.
    refused(world, tmp_path, "audit", "verify", copy, says="seq 3 (line 4)")
    good = ok_json("audit", "verify", world.dirs["FR"])
    assert good["ok"] is True and good["logs"][0]["ok"] is True


def test_audit_verify_text_names_the_head_by_seq(world: World) -> None:
    out = ok("audit", "verify", world.dirs["FR"]).out
    n = len(ok_json("audit", "show", world.dirs["FR"])["entries"])
    assert f"signed head at seq {n - 1}" in out and "line" not in out


# -- 4. audit show: ISO 8601 UTC -------------------------------------------------------------------

def test_audit_show_prints_iso_times(world: World) -> None:
    iso = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"
    for line in ok("audit", "show", world.dirs["NL"]).out.splitlines():
        assert re.fullmatch(rf"\s*\d+  {iso}  .*", line), line
    entries = ok_json("audit", "show", world.dirs["NL"])["entries"]
    raw = [json.loads(x) for x in (world.dirs["NL"] / "audit.log").read_bytes().splitlines()]
    for e, r in zip(entries, raw, strict=True):
        assert re.fullmatch(iso, e["time"]) and e["epoch"] == r["time"]
        assert e["time"] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(r["time"]))


# -- 6, 7. ask prints the answer paths; a candidate by its number --------------------------------------

def test_open_numbers_the_candidates_and_follow_up_takes_the_number(world: World, tmp_path: Path) -> None:
    _q, answer, expected = _query_and_answer(world, tmp_path, ref=12)
    assert expected == ["FR-0000012"]
    text = ok("open", world.dirs["DE"], answer).out.splitlines()
    token = ok_json("open", world.dirs["DE"], answer)["candidates"][0]
    assert text[1] == f"  [1] {token}" and "--candidate N" in text[2]
    f = ok_json("follow-up", world.dirs["DE"], answer, "--candidate", "1", "--out", tmp_path / "f.msg")
    assert (f["candidate"], f["index"], f["sent"]) == (token, 1, False)
    assert ok_json("resolve", world.dirs["FR"], tmp_path / "f.msg")["reference"] == "FR-0000012"
    # A number beyond the candidates: one line, exit 1, nothing written.
    refused(world, tmp_path, "follow-up", world.dirs["DE"], answer, "--candidate", "2", "--out", tmp_path / "g.msg",
            says="has 1 candidate(s), numbered from 1")
    # A token and a number, or neither: usage errors; 0 is not a number.
    for argv in ([token, "--candidate", "1"], [], ["--candidate", "0"]):
        r = cli("follow-up", world.dirs["DE"], answer, *argv, "--out", tmp_path / "g.msg")
        assert r.code == 2 and r.out == "" and not (tmp_path / "g.msg").exists(), r


@pytest.fixture
def served(world: World, tmp_path: Path) -> Iterator[Path]:
    """FR as a service on loopback, in this process; yields the peers file."""
    with thread_server(create_app(str(world.dirs["FR"]))) as fr:
        peers = tmp_path / "peers.json"
        peers.write_text(json.dumps({"FR": fr}))
        yield peers


def test_ask_prints_each_answer_path_and_numbered_candidates(world: World, served: Path, tmp_path: Path) -> None:
    g = world.galleries["FR"]
    np.save(tmp_path / "p.npy", synthetic.mate_probe(g, 40, seed=2))
    lines = ok("ask", world.dirs["DE"], "--probe", tmp_path / "p.npy", "--to", "FR", "--case", "C-ASK1",
               "--purpose", PURPOSE, "--peers", served, "--answers", tmp_path / "answers").out.splitlines()
    assert lines[0].startswith("FR  hit") and len(lines) == 2
    path = lines[0].split("  answer ")[1].strip()
    assert Path(path).is_file() and Path(path).parent == tmp_path / "answers"
    assert re.fullmatch(r"    \[1\] \S+", lines[1])
    # What follow-up needs: the path ask printed and the number beside the candidate.
    sent = ok_json("follow-up", world.dirs["DE"], path, "--candidate", "1", "--peers", served)
    assert (sent["format"], sent["status"], sent["peer"], sent["index"]) == ("pprm.follow-up/1", "resolved", "FR", 1)
    assert sent["candidate"] == lines[1].split()[1]


# -- 8. no temporary names in errors -----------------------------------------------------------------

def test_output_errors_name_the_file_given_not_the_temporary_one(world: World, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    np.save(tmp_path / "p.npy", synthetic.impostor_probe(512, seed=4))
    argv = ("query", world.dirs["DE"], "--probe", tmp_path / "p.npy", "--to", "FR", "--case", "C-T", "--purpose",
            PURPOSE, "--out", tmp_path / "q.msg")
    real_mkstemp, real_replace = tempfile.mkstemp, os.replace

    def no_room(*args: Any, **kwargs: Any) -> tuple[int, str]:
        # What mkstemp raises in a directory it may not write: the name it tried.
        tried = f"{kwargs.get('prefix')}rgaanidi{kwargs.get('suffix')}"
        raise PermissionError(errno.EACCES, "Permission denied", os.path.join(str(kwargs.get("dir")), tried))

    def cross_device(src: Any, dst: Any) -> None:
        if str(src).endswith(".part") or os.path.basename(str(src)).startswith(".tmp-"):
            raise OSError(errno.EXDEV, "Invalid cross-device link", str(src), str(dst))
        real_replace(src, dst)

    for patch, target in ((no_room, (tempfile, "mkstemp")), (cross_device, (os, "replace"))):
        with monkeypatch.context() as m:
            m.setattr(*target, patch)
            err = refused(world, tmp_path, *argv, says=f"{tmp_path / 'q.msg'}: ")
            assert ".part" not in err and "rgaanidi" not in err and ".q.msg." not in err, err
            r = cli(*argv, "--json")
            message = json.loads(r.out)["error"]["message"]
            assert r.code == 1 and ".part" not in message and str(tmp_path / "q.msg") in message
    assert tempfile.mkstemp is real_mkstemp
    # The state files' writer too.
    with monkeypatch.context() as m:
        m.setattr(os, "replace", cross_device)
        with pytest.raises(OSError) as caught:
            _fs.atomic_write_bytes(str(tmp_path / "state.bin"), b"x")
    assert caught.value.filename == str(tmp_path / "state.bin") and ".tmp-" not in str(caught.value)
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]


def test_atomic_output_names_the_target_when_writing_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(_fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with common.AtomicOutput(str(tmp_path / "a.msg")) as out:
        monkeypatch.setattr(os, "fsync", full)
        with pytest.raises(OSError) as caught:
            out.write(b"data")
    assert caught.value.filename == str(tmp_path / "a.msg") and caught.value.errno == errno.ENOSPC
    assert os.listdir(tmp_path) == []


# -- 9. a closed stdout --------------------------------------------------------------------------------

def test_a_closed_stdout_exits_quietly(world: World) -> None:
    # The reader is gone before pprm writes anything (as `pprm audit show DIR | head -1` once head exits).
    proc = subprocess.Popen([pprm_script(), "audit", "show", str(world.dirs["FR"])], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(timeout=120) == common.EXIT_OK
    assert err == b"", err


# -- 10. demo --states out of range ------------------------------------------------------------------

def test_demo_with_too_many_states_is_a_usage_error() -> None:
    r = cli("demo", "--states", "20")
    assert r.code == 2 and r.out == "" and "usage: pprm demo" in r.err
    assert r.err.splitlines()[-1] == "pprm demo: error: argument --states: must be from 2 to 12"
    assert "must be from 2 to 12" in _failed_json(cli("demo", "--states", "20", "--json"), "usage", 2)["message"]


# -- 11. an output that is an input --------------------------------------------------------------------

def test_an_output_file_that_is_an_input_is_refused(world: World, tmp_path: Path) -> None:
    q, a, _t = _query_and_answer(world, tmp_path, ref=21)
    token = ok_json("open", world.dirs["DE"], a)["candidates"][0]
    os.symlink(q, tmp_path / "link.msg")
    np.save(tmp_path / "p2.npy", synthetic.impostor_probe(512, seed=6))
    cases = [
        ("answer", world.dirs["FR"], q, "--out", q),
        ("answer", world.dirs["FR"], q, "--out", tmp_path / "link.msg"),        # the same file by another name
        ("answer", world.dirs["FR"], f"{tmp_path}/./q.msg", "--out", q),
        ("answer", world.dirs["FR"], q, "--keys", a, "--out", a),
        ("follow-up", world.dirs["DE"], a, token, "--out", a),
        ("resolve", world.dirs["FR"], a, "--refusal-out", a),
        ("query", world.dirs["DE"], "--probe", tmp_path / "p2.npy", "--to", "FR", "--case", "C-S", "--purpose",
         PURPOSE, "--out", tmp_path / "p2.npy"),
    ]
    for argv in cases:
        before = snapshot(str(tmp_path)), snapshot(str(world.root))
        r = cli(*argv)
        assert r.code == 2 and r.out == "", r
        assert "is the input" in r.err.splitlines()[-1] and r.err.count("pprm: error") == 0, r.err
        assert (snapshot(str(tmp_path)), snapshot(str(world.root))) == before, argv
    # Another file passes the check (and then meets the replay cache: q.msg was answered).
    assert cli("answer", world.dirs["FR"], q, "--out", tmp_path / "a2.msg").code == 1


def test_same_file() -> None:
    assert common.same_file("/tmp/x", "/tmp/../tmp/x")
    assert not common.same_file("-", "-") and not common.same_file("/tmp/x", "/tmp/y")
