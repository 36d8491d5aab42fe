"""The ``pprm`` command line, end to end.

Three states (DE, FR, NL) are created, exchange cards and enrol galleries
through the CLI itself (``main(argv)`` in-process, plus real subprocess calls
of the installed ``pprm`` script). Every encrypted outcome is compared with
the plaintext truth: the references whose float64 score between the
normalised float32 probe and template is at least the threshold, with test
data chosen so that no score lies within the 1e-3 decision margin.

Every refused input must exit 1 with exactly one ``pprm: error:`` line on
stderr, nothing on stdout, no traceback, and leave every state directory and
the message directory byte-for-byte (and mode-for-mode) unchanged, with no
output file created.
"""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import pprm.cli.main as cli_main
from pprm import synthetic
from pprm.cli.progress import ProgressBar, StagedProgress
from pprm.crypto import params as param_sets
from pprm.errors import ReplayError
from pprm.matching.templates import normalise_probe, normalise_templates
from pprm.node.keyservice import KeyService
from pprm.node.state import State
from pprm.protocol.card import make_card
from tests.helpers import INSECURE, cli, ok, ok_json, snapshot

DIM = 512
TAU = 0.4
MARGIN = 1e-3
NAMES = ("DE", "FR", "NL")
GALLERY = 300
OPEN_KEYS = {"from", "query_id", "hit", "candidates"}



def pprm_script() -> str:
    script = Path(sys.executable).with_name("pprm")
    found = str(script) if script.exists() else shutil.which("pprm")
    assert found, "the pprm console script is not installed"
    return found


def truth(gallery: synthetic.SyntheticGallery, probe: np.ndarray, removed: frozenset[str] = frozenset()) -> list[str]:
    """Plaintext ground truth: refs with exact float64 score >= tau (margin checked)."""
    g = normalise_templates(gallery.templates, DIM).astype(np.float64)
    s = g @ normalise_probe(probe, DIM).astype(np.float64)
    assert np.min(np.abs(s - TAU)) >= MARGIN, "test data has a score inside the decision margin"
    return sorted(r for r, v in zip(gallery.references, s, strict=True) if v >= TAU and r not in removed)


@dataclass
class World:
    root: Path
    dirs: dict[str, Path]
    cards: dict[str, Path]
    init: dict[str, dict[str, object]]
    galleries: dict[str, synthetic.SyntheticGallery]


def write_gallery(where: Path, gallery: synthetic.SyntheticGallery, newline: str = "\n") -> tuple[Path, Path]:
    tpl, refs = where / f"{gallery.references[0][:2]}-templates.npy", where / f"{gallery.references[0][:2]}.txt"
    np.save(tpl, gallery.templates)
    refs.write_text(newline.join(gallery.references) + newline, encoding="utf-8")
    return tpl, refs


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    """DE, FR, NL initialised, mutually trusted and (FR, NL) enrolled, all via the CLI."""
    root = tmp_path_factory.mktemp("cli")
    dirs = {n: root / n for n in NAMES}
    infos: dict[str, dict[str, object]] = {}
    for n, d in dirs.items():
        r = ok("init", d, "--name", n, "--params", INSECURE, "--allow-insecure", "--json")
        infos[n] = json.loads(r.out)
        assert "insecure" in r.err  # the warning, on stderr only
    cards = {}
    for n, d in dirs.items():
        r = ok("card", d)
        assert r.out.encode() == (d / "card.json").read_bytes()
        cards[n] = root / f"{n}.card"
        cards[n].write_text(r.out)
    for a in NAMES:
        for b in NAMES:
            if a != b:
                info = ok_json("trust", dirs[a], cards[b])
                assert info["name"] == b and info["fingerprint"] == infos[b]["fingerprint"]
    galleries = {"FR": synthetic.make_gallery(GALLERY, dim=DIM, seed=21, prefix="FR"),
                 "NL": synthetic.make_gallery(GALLERY, dim=DIM, seed=22, prefix="NL")}
    for n, g in galleries.items():
        # NL's list uses CRLF line ends, as written on Windows desks.
        tpl, refs = write_gallery(root, g, "\r\n" if n == "NL" else "\n")
        assert ok_json("enroll", dirs[n], "--templates", tpl, "--refs", refs) == {"enrolled": GALLERY,
                                                                                  "total": GALLERY}
    return World(root, dirs, cards, infos, galleries)


def test_init_prints_public_identity_only(world: World) -> None:
    de = world.init["DE"]
    assert set(de) == {"name", "dir", "params", "params_digest", "blind_params", "profiles", "threshold", "k", "dim",
                       "purposes", "fingerprint", "key_id"}
    assert de["purposes"] == ["serious-crime", "missing-person", "unidentified-remains"]
    st = State.open(str(world.dirs["DE"]))
    assert de["fingerprint"] == st.card.identity.fingerprint.hex()
    assert de["key_id"] == st.key_id and de["params"] == INSECURE
    text = json.dumps(world.init)
    for f in ("identity.key", "token.key"):
        secret = (world.dirs["DE"] / "private" / f).read_bytes()
        for i in range(0, len(secret) - 8, 8):  # no 8-byte window of a secret, in hex
            assert secret[i:i + 8].hex() not in text


def test_info_reports_settings_gallery_and_roster(world: World) -> None:
    info = ok_json("info", world.dirs["NL"])
    assert info["name"] == "NL" and info["params"] == INSECURE
    assert info["threshold"] == TAU and info["k"] == 10 and info["dim"] == DIM
    assert info["gallery"] >= 1 and info["roster"] == ["DE", "FR"]
    assert info["backend"] in ("numpy", "native")
    text = ok("info", world.dirs["NL"]).out
    assert "roster       DE, FR" in text


def test_end_to_end_query_answer_follow_up_resolve_remove(world: World, tmp_path: Path) -> None:
    de, fr = world.dirs["DE"], world.dirs["FR"]
    g = world.galleries["FR"]
    probe = synthetic.mate_probe(g, 7, seed=1)
    np.save(tmp_path / "p.npy", probe)
    expected = truth(g, probe)
    assert expected == ["FR-0000007"]

    q = ok_json("query", de, "--probe", tmp_path / "p.npy", "--to", "FR", "--case", "CASE-1",
                "--purpose", "serious-crime", "--out", tmp_path / "q.msg")
    assert q["to"] == "FR" and Path(q["out"]) == tmp_path / "q.msg"
    # The responder step runs as a real process of the installed script.
    proc = subprocess.run([pprm_script(), "answer", str(fr), str(tmp_path / "q.msg"), "--out",
                           str(tmp_path / "a.msg"), "--json"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # not a terminal: no progress bar
    assert json.loads(proc.stdout)["query_id"] == q["query_id"]
    assert sorted(os.listdir(tmp_path)) == ["a.msg", "p.npy", "q.msg"]  # no temp file left

    opened = ok_json("open", de, tmp_path / "a.msg")
    assert set(opened) == OPEN_KEYS  # exactly these: nothing about scores
    assert opened["from"] == "FR" and opened["query_id"] == q["query_id"]
    assert opened["hit"] is True and len(opened["candidates"]) == len(expected)
    assert "score" not in ok("open", de, tmp_path / "a.msg").out.lower()

    learned = []
    for i, tok in enumerate(opened["candidates"]):
        f = tmp_path / f"f{i}.msg"
        ok("follow-up", de, tmp_path / "a.msg", tok, "--out", f)
        res = ok_json("resolve", fr, f)
        assert set(res) == {"reference"}
        learned.append(res["reference"])
    assert sorted(learned) == expected

    assert ok_json("remove", fr, "FR-0000007") == {"removed": "FR-0000007", "total": GALLERY - 1}
    assert truth(g, probe, removed=frozenset({"FR-0000007"})) == []
    ok("query", de, "--probe", tmp_path / "p.npy", "--to", "FR", "--case", "CASE-1",
       "--purpose", "serious-crime", "--out", tmp_path / "q2.msg")
    ok("answer", fr, tmp_path / "q2.msg", "--out", tmp_path / "a2.msg")
    again = ok_json("open", de, tmp_path / "a2.msg")
    assert again["hit"] is False and again["candidates"] == []

    # The responder's log holds the release and the resolution, and verifies.
    entries = ok_json("audit", "show", fr)
    events = [e["event"] for e in entries]
    assert events.count("answer") >= 2 and "resolve" in events and "remove" in events
    assert all(not {"score", "scores", "probe", "template"} & set(e["data"]) for e in entries)
    checkpoints = sum(e["event"] == "checkpoint" for e in entries)
    assert checkpoints >= 1
    assert ok_json("audit", "verify", fr) == {"entries": len(entries), "ok": True, "checkpoints": checkpoints,
                                              "head": len(entries) - 1, "unsigned": 0}


@pytest.mark.parametrize("kind", ["mate", "impostor"])
def test_probe_of_shape_1_by_d_and_impostors(world: World, tmp_path: Path, kind: str) -> None:
    g = world.galleries["NL"]
    probe = synthetic.mate_probe(g, 11, seed=2) if kind == "mate" else synthetic.impostor_probe(DIM, 5)
    np.save(tmp_path / "p.npy", probe[None, :])  # (1, d)
    expected = truth(g, probe)
    assert expected == (["NL-0000011"] if kind == "mate" else [])
    ok("query", world.dirs["FR"], "--probe", tmp_path / "p.npy", "--to", "NL", "--case", "C-2",
       "--purpose", "serious-crime", "--out", tmp_path / "q.msg")
    ok("answer", world.dirs["NL"], tmp_path / "q.msg", "--out", tmp_path / "a.msg")
    opened = ok_json("open", world.dirs["FR"], tmp_path / "a.msg")
    learned = []
    for tok in opened["candidates"]:
        ok("follow-up", world.dirs["FR"], tmp_path / "a.msg", tok, "--out", tmp_path / "f.msg")
        learned.append(ok_json("resolve", world.dirs["NL"], tmp_path / "f.msg")["reference"])
    assert opened["hit"] is bool(expected) and sorted(learned) == expected


# -- refused inputs ----------------------------------------------------------------

def refused(world: World, scratch: Path, *argv: object, says: str = "") -> str:
    """Run a command that must fail cleanly and change nothing; return its error line."""
    roots = [world.root, scratch]
    before = [snapshot(str(r)) for r in roots]
    r = cli(*argv)
    after = [snapshot(str(r)) for r in roots]
    assert r.code == 1, r
    assert r.out == ""
    assert r.err.endswith("\n") and r.err.count("\n") == 1, r.err
    assert r.err.startswith("pprm: error: ") and "Traceback" not in r.err
    for b, a in zip(before, after, strict=True):
        changed = sorted(k for k in b.keys() | a.keys() if b.get(k) != a.get(k))
        assert changed == [], changed
    assert says.lower() in r.err.lower(), r.err
    return r.err


def make_query(world: World, scratch: Path, sender: str, to: str, name: str = "q.msg") -> Path:
    g = world.galleries.get(to) or world.galleries["FR"]
    np.save(scratch / "probe.npy", synthetic.mate_probe(g, 3, seed=9))
    ok("query", world.dirs[sender], "--probe", scratch / "probe.npy", "--to", to, "--case", "C-9",
       "--purpose", "serious-crime", "--out", scratch / name)
    return scratch / name


def test_enroll_refuses_wrong_dimension(world: World, tmp_path: Path) -> None:
    np.save(tmp_path / "t.npy", np.ones((2, DIM - 1), np.float32))
    (tmp_path / "r.txt").write_text("X-1\nX-2\n")
    refused(world, tmp_path, "enroll", world.dirs["FR"], "--templates", tmp_path / "t.npy", "--refs",
            tmp_path / "r.txt", says="shape")


def test_enroll_refuses_nan(world: World, tmp_path: Path) -> None:
    t = synthetic.make_gallery(3, dim=DIM, seed=5).templates.copy()
    t[1, 17] = np.nan
    np.save(tmp_path / "t.npy", t)
    (tmp_path / "r.txt").write_text("X-1\nX-2\nX-3\n")
    refused(world, tmp_path, "enroll", world.dirs["FR"], "--templates", tmp_path / "t.npy", "--refs",
            tmp_path / "r.txt", says="non-finite")


@pytest.mark.parametrize(("refs", "says"), [
    ("X-1\nX-1\n", "twice"),            # duplicate within the file
    ("X-1\nNL-0000002\n", "already"),   # duplicate against the gallery
    ("X-1\n\n", "blank"),               # blank line (two refs for two rows otherwise)
    ("X-1\n", "references"),            # count mismatch
    ("", "empty"),
])
def test_enroll_refuses_bad_references(world: World, tmp_path: Path, refs: str, says: str) -> None:
    np.save(tmp_path / "t.npy", synthetic.make_gallery(2, dim=DIM, seed=6).templates)
    (tmp_path / "r.txt").write_text(refs)
    refused(world, tmp_path, "enroll", world.dirs["NL"], "--templates", tmp_path / "t.npy", "--refs",
            tmp_path / "r.txt", says=says)


@pytest.mark.parametrize("content", ["garbage", "truncated", "pickle", "npz"])
def test_enroll_refuses_malformed_npy(world: World, tmp_path: Path, content: str) -> None:
    path = tmp_path / "t.npy"
    if content == "garbage":
        path.write_bytes(b"this is not numpy")
    elif content == "truncated":
        np.save(path, np.ones((2, DIM), np.float32))
        path.write_bytes(path.read_bytes()[:-7])
    elif content == "pickle":
        np.save(path, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    else:
        with open(path, "wb") as fh:
            np.savez(fh, a=np.ones((2, DIM)))
    (tmp_path / "r.txt").write_text("X-1\nX-2\n")
    refused(world, tmp_path, "enroll", world.dirs["NL"], "--templates", path, "--refs", tmp_path / "r.txt",
            says="npy")


def test_query_refuses_wrong_probe_dimension_and_unknown_peer(world: World, tmp_path: Path) -> None:
    np.save(tmp_path / "p.npy", np.ones(DIM // 2, np.float32))
    refused(world, tmp_path, "query", world.dirs["DE"], "--probe", tmp_path / "p.npy", "--to", "FR",
            "--case", "C", "--purpose", "serious-crime", "--out", tmp_path / "q.msg", says=f"dimension {DIM}")
    np.save(tmp_path / "p.npy", np.ones(DIM, np.float32))
    refused(world, tmp_path, "query", world.dirs["DE"], "--probe", tmp_path / "p.npy", "--to", "PL",
            "--case", "C", "--purpose", "serious-crime", "--out", tmp_path / "q.msg", says="not in the roster")


def test_query_into_missing_directory_changes_nothing(world: World, tmp_path: Path) -> None:
    np.save(tmp_path / "p.npy", np.ones(DIM, np.float32))
    # The output is prepared before the query is recorded in the outbox.
    refused(world, tmp_path, "query", world.dirs["DE"], "--probe", tmp_path / "p.npy", "--to", "FR",
            "--case", "C", "--purpose", "serious-crime", "--out", tmp_path / "no" / "q.msg", says="no such file")


def test_answer_refuses_missing_input(world: World, tmp_path: Path) -> None:
    refused(world, tmp_path, "answer", world.dirs["FR"], tmp_path / "absent.msg", "--out", tmp_path / "a.msg",
            says="absent.msg")


@pytest.mark.parametrize("where", ["fingerprint", "length", "header", "body", "signature"])
def test_answer_refuses_flipped_byte(world: World, tmp_path: Path, where: str) -> None:
    q = make_query(world, tmp_path, "DE", "FR")
    blob = bytearray(q.read_bytes())
    pos = {"fingerprint": 10, "length": 27, "header": 40, "body": len(blob) // 2, "signature": len(blob) - 3}[where]
    blob[pos] ^= 0x01
    q.write_bytes(bytes(blob))
    refused(world, tmp_path, "answer", world.dirs["FR"], q, "--out", tmp_path / "a.msg")


def test_answer_refuses_message_for_another_recipient(world: World, tmp_path: Path) -> None:
    q = make_query(world, tmp_path, "DE", "FR")
    refused(world, tmp_path, "answer", world.dirs["NL"], q, "--out", tmp_path / "a.msg", says="addressed to FR")


def test_answer_refuses_replayed_query(world: World, tmp_path: Path) -> None:
    q = make_query(world, tmp_path, "DE", "FR")
    ok("answer", world.dirs["FR"], q, "--out", tmp_path / "a1.msg")
    refused(world, tmp_path, "answer", world.dirs["FR"], q, "--out", tmp_path / "a2.msg", says="already processed")


def test_answer_failing_after_the_write_leaves_no_file_and_no_state(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    q = make_query(world, tmp_path, "DE", "FR")

    def raced(*args: object, **kwargs: object) -> None:
        raise ReplayError("query was answered meanwhile")

    # The answer bytes have gone to the sink; recording the release then fails.
    monkeypatch.setattr(KeyService, "commit_release", raced)
    refused(world, tmp_path, "answer", world.dirs["FR"], q, "--out", tmp_path / "a.msg", says="meanwhile")
    monkeypatch.undo()
    ok("answer", world.dirs["FR"], q, "--out", tmp_path / "a.msg")  # nothing was recorded: it still works


def test_answer_whose_output_cannot_be_written_changes_nothing(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    q = make_query(world, tmp_path, "DE", "FR")

    def disk_full(self: object, data: bytes) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(cli_main._AtomicOutput, "write", disk_full)
    refused(world, tmp_path, "answer", world.dirs["FR"], q, "--out", tmp_path / "a.msg", says="no space")
    monkeypatch.undo()
    ok("answer", world.dirs["FR"], q, "--out", tmp_path / "a.msg")


def test_answer_refuses_untrusted_sender(world: World, tmp_path: Path) -> None:
    pl = tmp_path / "PL"
    ok("init", pl, "--name", "PL", "--params", INSECURE, "--allow-insecure")
    ok("trust", pl, world.cards["FR"])  # PL trusts FR, FR does not trust PL
    np.save(tmp_path / "p.npy", np.ones(DIM, np.float32))
    ok("query", pl, "--probe", tmp_path / "p.npy", "--to", "FR", "--case", "C", "--purpose", "serious-crime",
       "--out", tmp_path / "q.msg")
    refused(world, tmp_path, "answer", world.dirs["FR"], tmp_path / "q.msg", "--out", tmp_path / "a.msg",
            says="not in the roster")


def forged_card(world: World, name: str, params: str, digest: str) -> bytes:
    """``name``'s card, validly self-signed, announcing other parameters."""
    st = State.open(str(world.dirs[name]))
    return make_card(st.identity(), params, digest, DIM, st.key_id, st.card.created)


def test_trust_refuses_card_with_mismatched_parameter_digest(world: World, tmp_path: Path) -> None:
    other = param_sets.get("pprm-sealed-n4096-v1")
    (tmp_path / "fr.card").write_bytes(forged_card(world, "FR", INSECURE, other.digest))
    refused(world, tmp_path, "trust", world.dirs["DE"], tmp_path / "fr.card", says="digest")


def test_trust_refuses_insecure_card_in_a_production_state(world: World, tmp_path: Path) -> None:
    prod = tmp_path / "AT"
    ok("init", prod, "--name", "AT", "--params", "pprm-sealed-n4096-v1")
    refused(world, tmp_path, "trust", prod, world.cards["FR"], says="insecure")


def test_answer_refuses_query_made_for_another_parameter_set(world: World, tmp_path: Path) -> None:
    # HU holds a card of FR announcing n4096 (say, a stale one); FR runs n1024.
    other = param_sets.get("pprm-sealed-n4096-v1")
    (tmp_path / "fr.card").write_bytes(forged_card(world, "FR", other.name, other.digest))
    hu = tmp_path / "HU"
    ok("init", hu, "--name", "HU", "--params", INSECURE, "--allow-insecure")
    ok("trust", hu, tmp_path / "fr.card")
    ok("card", hu)
    (tmp_path / "hu.card").write_bytes((hu / "card.json").read_bytes())
    np.save(tmp_path / "p.npy", np.ones(DIM, np.float32))
    ok("query", hu, "--probe", tmp_path / "p.npy", "--to", "FR", "--case", "C", "--purpose", "serious-crime",
       "--out", tmp_path / "q.msg")
    fr_copy = tmp_path / "FR-copy"  # keep the shared FR's roster as it is
    shutil.copytree(world.dirs["FR"], fr_copy)
    ok("trust", fr_copy, tmp_path / "hu.card")
    refused(world, tmp_path, "answer", fr_copy, tmp_path / "q.msg", "--out", tmp_path / "a.msg",
            says="parameter set")


def test_open_and_follow_up_refuse_bad_answers(world: World, tmp_path: Path) -> None:
    q = make_query(world, tmp_path, "DE", "FR")
    ok("answer", world.dirs["FR"], q, "--out", tmp_path / "a.msg")
    blob = bytearray((tmp_path / "a.msg").read_bytes())
    blob[60] ^= 0x40
    (tmp_path / "bad.msg").write_bytes(bytes(blob))
    refused(world, tmp_path, "open", world.dirs["DE"], tmp_path / "bad.msg")
    refused(world, tmp_path, "open", world.dirs["NL"], tmp_path / "a.msg", says="addressed to DE")
    ok("open", world.dirs["DE"], tmp_path / "a.msg")
    refused(world, tmp_path, "follow-up", world.dirs["DE"], tmp_path / "a.msg", "A" * 40,
            "--out", tmp_path / "f.msg", says="token")


def test_resolve_refuses_replayed_follow_up(world: World, tmp_path: Path) -> None:
    g = world.galleries["NL"]
    probe = synthetic.mate_probe(g, 20, seed=3)
    assert truth(g, probe) == ["NL-0000020"]
    np.save(tmp_path / "p.npy", probe)
    ok("query", world.dirs["DE"], "--probe", tmp_path / "p.npy", "--to", "NL", "--case", "C",
       "--purpose", "serious-crime", "--out", tmp_path / "q.msg")
    ok("answer", world.dirs["NL"], tmp_path / "q.msg", "--out", tmp_path / "a.msg")
    tok = ok_json("open", world.dirs["DE"], tmp_path / "a.msg")["candidates"][0]
    ok("follow-up", world.dirs["DE"], tmp_path / "a.msg", tok, "--out", tmp_path / "f.msg")
    assert ok_json("resolve", world.dirs["NL"], tmp_path / "f.msg") == {"reference": "NL-0000020"}
    refused(world, tmp_path, "resolve", world.dirs["NL"], tmp_path / "f.msg", says="already processed")


def test_audit_verify_reports_a_broken_chain(world: World, tmp_path: Path) -> None:
    copy = tmp_path / "DE"
    shutil.copytree(world.dirs["DE"], copy)
    lines = (copy / "audit.log").read_bytes().splitlines(keepends=True)
    assert len(lines) >= 3
    (copy / "audit.log").write_bytes(b"".join(lines[:1] + lines[2:]))  # delete an entry
    refused(world, tmp_path, "audit", "verify", copy, says="chain breaks at line 2")


def test_unknown_state_directory_is_one_line(world: World, tmp_path: Path) -> None:
    refused(world, tmp_path, "info", tmp_path / "nothing", says="not a pprm state directory")


def test_real_subprocess_error_is_one_line_without_traceback(world: World, tmp_path: Path) -> None:
    before = snapshot(str(world.root))
    proc = subprocess.run([pprm_script(), "answer", str(world.dirs["FR"]), str(world.cards["DE"]), "--out",
                           str(tmp_path / "a.msg")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("pprm: error: ")
    assert snapshot(str(world.root)) == before and not (tmp_path / "a.msg").exists()


@pytest.mark.parametrize("argv", [
    [],
    ["answer", "dir", "q.msg"],                      # missing --out
    ["init", "dir"],                                 # missing --name
    ["bench", "--sizes", "10,x"],
    ["demo", "--states", "1"],
    ["frobnicate"],
])
def test_usage_errors_exit_2(argv: list[str]) -> None:
    r = cli(*argv)
    assert r.code == 2 and r.out == "" and "usage:" in r.err


# -- progress bar ----------------------------------------------------------------------

class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_draws_only_on_a_terminal() -> None:
    plain = io.StringIO()
    bar = ProgressBar("enrolling", plain)
    assert bar.callback is None
    bar(5, 10)
    bar.close()
    assert plain.getvalue() == ""

    tty = _Tty()
    with ProgressBar("enrolling", tty, min_interval=0.0) as bar:
        assert bar.callback is bar
        bar(5, 10)
        assert tty.getvalue().endswith("enrolling [###############...............]  50%  5/10")
        bar(10, 10)
        assert "100%  10/10" in tty.getvalue()
    assert tty.getvalue().endswith("\r")  # erased on close, cursor at line start
    assert "\n" not in tty.getvalue()


def test_staged_progress_starts_a_bar_per_stage() -> None:
    tty = _Tty()
    with StagedProgress(tty) as staged:
        staged("enrolling DE", 1, 2)
        staged("enrolling FR", 2, 2)
    text = tty.getvalue()
    assert text.index("enrolling DE") < text.index("enrolling FR")
    assert StagedProgress(io.StringIO()).enabled is False
