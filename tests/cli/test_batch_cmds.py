"""Batches on the command line: ``query --probes``, ``ask --probes`` (over HTTP) and ``remove --refs``.

On the sealed world of :mod:`tests.cli.worlds` (DE asks FR and NL), every
probe's outcome is compared with the plaintext truth; ``ask --probes`` runs
against services on loopback (in this process, :func:`tests.helpers.thread_server`),
once in the sealed profile and once in the blind one, where the probes to a
peer share one key. Refused inputs exit 1 with one ``pprm: error:`` line
and change nothing (:func:`tests.cli.worlds.refused`); options that do not
go together are usage errors (exit 2).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from pprm import synthetic
from pprm.cli.common import EXIT_PARTIAL
from pprm.cli.flow_cmds import query_file_name
from pprm.net.service import create_app
from pprm.node.outbox import Outbox
from pprm.node.state import State
from tests.cli.worlds import GALLERY, World, refused, truth
from tests.helpers import (
    INSECURE_BLIND,
    Node,
    build_network,
    cli,
    dead_url,
    ok,
    ok_json,
    plaintext_hits,
    snapshot,
    thread_server,
)

PURPOSE = "serious-crime"


@dataclass
class _Root:
    """The states' directory, for :func:`tests.cli.worlds.refused`."""

    root: Path


def _resolve_all(world: World, scratch: Path, answer: Path, candidates: list[str]) -> list[str]:
    refs = []
    for i, token in enumerate(candidates):
        f = scratch / f"{answer.stem}-f{i}.msg"
        ok("follow-up", world.dirs["DE"], answer, token, "--out", f)
        refs.append(ok_json("resolve", world.dirs["FR"], f)["reference"])
    return sorted(refs)


def test_query_probes_writes_one_query_per_probe(world: World, tmp_path: Path) -> None:
    g = world.galleries["FR"]
    probes = np.stack([synthetic.mate_probe(g, 3, seed=1), synthetic.impostor_probe(512, seed=2),
                       synthetic.mate_probe(g, 250, seed=3)])
    np.save(tmp_path / "probes.npy", probes)
    out = tmp_path / "queries"
    report = ok_json("query", world.dirs["DE"], "--probes", tmp_path / "probes.npy", "--to", "FR", "--case",
                     "C-BATCH", "--purpose", PURPOSE, "--out-dir", out)
    assert report["peer"] == "FR" and report["profile"] == "sealed" and Path(report["out_dir"]) == out
    items = report["queries"]
    assert [i["probe"] for i in items] == [0, 1, 2]
    assert [Path(i["out"]).name for i in items] == ["q-0000.msg", "q-0001.msg", "q-0002.msg"]
    assert len({i["query_id"] for i in items}) == 3
    assert sorted(os.listdir(out)) == ["q-0000.msg", "q-0001.msg", "q-0002.msg"]  # no temp file left
    for row, item in enumerate(items):
        answer = tmp_path / f"a-{row}.msg"
        ok("answer", world.dirs["FR"], item["out"], "--out", answer)
        opened = ok_json("open", world.dirs["DE"], answer)
        assert opened["query_id"] == item["query_id"]
        assert _resolve_all(world, tmp_path, answer, opened["candidates"]) == truth(g, probes[row])
    # The text form: one line per probe, rows from 0, then a summary.
    text = ok("query", world.dirs["DE"], "--probes", tmp_path / "probes.npy", "--to", "NL", "--case", "C-BATCH",
              "--purpose", PURPOSE, "--out-dir", tmp_path / "nl").out.splitlines()
    assert [line.split(":")[0] for line in text[:3]] == ["probe 0", "probe 1", "probe 2"]
    assert text[3].startswith("3 of 3 queries to NL written to")


def test_answer_queries_answers_a_directory_in_one_pass(world: World, tmp_path: Path) -> None:
    g = world.galleries["FR"]
    probes = np.stack([synthetic.mate_probe(g, 7, seed=11), synthetic.impostor_probe(512, seed=12),
                       synthetic.mate_probe(g, 120, seed=13), synthetic.mate_probe(g, 201, seed=14)])
    np.save(tmp_path / "probes.npy", probes)
    qdir, adir = tmp_path / "queries", tmp_path / "answers"
    made = ok_json("query", world.dirs["DE"], "--probes", tmp_path / "probes.npy", "--to", "FR", "--case",
                   "C-ANSWER-DIR", "--purpose", PURPOSE, "--out-dir", qdir)
    (qdir / "q-9999.msg").write_bytes(b"not a query")  # one broken file: only it fails
    r = cli("answer", world.dirs["FR"], "--queries", qdir, "--out-dir", adir, "--json")
    assert r.code == 1 and r.err.count("\n") == 1 and "q-9999.msg: not answered" in r.err
    body = json.loads(r.out)
    assert body["format"] == "pprm.answer.batch/1" and body["ok"] is False and body["error"]["code"] == "message"
    answers = body["answers"]
    assert [a["query_file"] for a in answers] == ["q-0000.msg", "q-0001.msg", "q-0002.msg", "q-0003.msg",
                                                  "q-9999.msg"]
    assert answers[-1]["out"] is None and answers[-1]["error"]["code"] == "message"
    assert sorted(os.listdir(adir)) == ["a-0000.msg", "a-0001.msg", "a-0002.msg", "a-0003.msg"]
    for row, (item, query) in enumerate(zip(answers[:4], made["queries"], strict=True)):
        assert item["query_id"] == query["query_id"] and item["peer"] == "DE" and item["refused"] is None
        opened = ok_json("open", world.dirs["DE"], item["out"])
        assert _resolve_all(world, tmp_path, Path(item["out"]), opened["candidates"]) == truth(g, probes[row])
    # Answered once: the same directory again is four replays and the broken file.
    again = cli("answer", world.dirs["FR"], "--queries", qdir, "--out-dir", tmp_path / "again", "--json")
    assert again.code == 1
    assert [a["error"]["code"] for a in json.loads(again.out)["answers"]] == ["replay"] * 4 + ["message"]


@pytest.mark.parametrize(("argv", "says"), [
    (["--queries", "d"], "--queries needs --out-dir"),
    (["q.msg", "--queries", "d", "--out-dir", "o"], "--queries answers a directory"),
    (["q.msg", "--out", "a.msg", "--out-dir", "o"], "--out-dir goes with --queries"),
    (["q.msg"], "give QUERY_FILE and --out"),
])
def test_answer_options_that_do_not_go_together(world: World, argv: list[str], says: str) -> None:
    r = cli("answer", world.dirs["FR"], *argv)
    assert r.code == 2 and says in r.err


def test_query_file_names_sort_as_rows_do() -> None:
    assert [query_file_name(r, 3) for r in (0, 2)] == ["q-0000.msg", "q-0002.msg"]
    assert [query_file_name(r, 10_001) for r in (0, 10_000)] == ["q-00000.msg", "q-10000.msg"]


@pytest.mark.parametrize("content, says", [
    (np.ones(512, np.float32), "shape (N, 512)"),
    (np.float32(1.0), "shape (N, 512)"),
    (np.ones((0, 512), np.float32), "no probes"),
    (np.ones((2, 256), np.float32), "shape (N, 512)"),
    (np.vstack([np.ones(512), np.full(512, np.inf)]).astype(np.float32), "probe row 1 has a non-finite value"),
    (b"", "not a valid .npy array"),
])
def test_query_probes_refuses_a_bad_file(world: World, tmp_path: Path, content: np.ndarray | np.float32 | bytes,
                                        says: str) -> None:
    path = tmp_path / "probes.npy"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        np.save(path, content)
    refused(world, tmp_path, "query", world.dirs["DE"], "--probes", path, "--to", "FR", "--case", "C",
            "--purpose", PURPOSE, "--out-dir", tmp_path / "out", says=says)
    assert not (tmp_path / "out").exists()


def test_query_probes_refuses_an_out_dir_holding_queries(world: World, tmp_path: Path) -> None:
    np.save(tmp_path / "probes.npy", np.eye(2, 512, dtype=np.float32))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "q-0000.msg").write_bytes(b"an earlier batch")
    refused(world, tmp_path, "query", world.dirs["DE"], "--probes", tmp_path / "probes.npy", "--to", "FR",
            "--case", "C", "--purpose", PURPOSE, "--out-dir", tmp_path / "out", says="already holds query files")


@pytest.mark.parametrize("argv, says", [
    (["--probe", "p.npy", "--probes", "ps.npy", "--out-dir", "d"], "--probe and --probes are mutually exclusive"),
    (["--probes", "ps.npy", "--out", "q.msg"], "not --out"),
    (["--probes", "ps.npy"], "--probes needs --out-dir"),
    (["--probes", "ps.npy", "--image", "a.png", "--models", "m", "--out-dir", "d"], "mutually exclusive"),
    (["--probes", "ps.npy", "--aligned", "--out-dir", "d"], "--probes and --image/--models/--aligned"),
    (["--probe", "p.npy", "--out-dir", "d"], "--out-dir goes with --probes"),
    (["--probe", "p.npy"], "required: --out"),
])
def test_query_probe_options_that_do_not_go_together(world: World, argv: list[str], says: str) -> None:
    before = snapshot(str(world.root))
    r = cli("query", world.dirs["DE"], *argv, "--to", "FR", "--case", "C", "--purpose", PURPOSE)
    assert r.code == 2 and r.out == "" and "usage: pprm query" in r.err and says in r.err, r.err
    assert snapshot(str(world.root)) == before


# -- remove --refs --------------------------------------------------------------------------

def test_remove_refs_removes_the_file_all_or_nothing(world: World, tmp_path: Path) -> None:
    nl = world.dirs["NL"]
    refs = tmp_path / "gone.txt"
    refs.write_text("NL-0000001\r\nNL-0000299\nNL-0000150\n", encoding="utf-8")
    assert ok_json("remove", nl, "--refs", refs) == {"format": "pprm.remove/1", "ok": True, "state": "NL", "removed": 3,
                                                     "references": ["NL-0000001", "NL-0000299", "NL-0000150"],
                                                     "total": GALLERY - 3}
    (entry,) = [e["data"] for e in State.open(str(nl)).audit.entries() if e["event"] == "remove"]
    assert entry["count"] == 3 and json.loads(entry["references"]) == ["NL-0000001", "NL-0000299", "NL-0000150"]
    assert "removed 1 reference(s) from NL" in ok("remove", nl, "--refs", _lines(tmp_path, "NL-0000002")).out
    # Each refusal names the line's index from 0 and changes nothing.
    refused(world, tmp_path, "remove", nl, "--refs", _lines(tmp_path, "NL-0000003", "NL-0000001"),
            says="'NL-0000001' is not enrolled (at index 1)")
    refused(world, tmp_path, "remove", nl, "--refs", _lines(tmp_path, "NL-0000004", "NL-0000005", "NL-0000004"),
            says="listed twice (at index 0 and 2)")
    (tmp_path / "empty.txt").write_bytes(b"")
    refused(world, tmp_path, "remove", nl, "--refs", tmp_path / "empty.txt", says="is empty")
    refused(world, tmp_path, "remove", nl, "--refs", tmp_path / "absent.txt", says="absent.txt")
    assert ok_json("info", nl)["gallery"] == GALLERY - 4


def _lines(where: Path, *refs: str) -> Path:
    path = where / f"refs-{len(list(where.iterdir()))}.txt"
    path.write_text("\n".join(refs) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("argv", [["NL-0000009", "--refs", "refs.txt"], []])
def test_remove_takes_one_reference_or_a_file(world: World, argv: list[str]) -> None:
    before = snapshot(str(world.root))
    r = cli("remove", world.dirs["NL"], *argv)
    assert r.code == 2 and r.out == "" and "usage: pprm remove" in r.err and "--refs FILE" in r.err
    assert snapshot(str(world.root)) == before


# -- ask --probes over HTTP -----------------------------------------------------------------

@pytest.fixture
def served(world: World, tmp_path: Path) -> Iterator[Path]:
    """FR and NL as services on loopback; yields the peers file."""
    with thread_server(create_app(str(world.dirs["FR"]))) as fr, thread_server(create_app(str(world.dirs["NL"]))) as nl:
        peers = tmp_path / "peers.json"
        peers.write_text(json.dumps({"FR": fr, "NL": nl}))
        yield peers


def test_ask_probes_reports_each_probe_and_peer(world: World, served: Path, tmp_path: Path) -> None:
    fr, nl = world.galleries["FR"], world.galleries["NL"]
    probes = np.stack([synthetic.mate_probe(fr, 20, seed=4), synthetic.mate_probe(nl, 30, seed=5)])
    np.save(tmp_path / "probes.npy", probes)
    r = ok("ask", world.dirs["DE"], "--probes", tmp_path / "probes.npy", "--to", "FR,NL", "--case", "C-ASK",
           "--purpose", PURPOSE, "--peers", served, "--json")
    out = json.loads(r.out)["outcomes"]
    assert [(o["probe"], o["peer"]) for o in out] == [(0, "FR"), (0, "NL"), (1, "FR"), (1, "NL")]
    assert len({o["query_id"] for o in out}) == 4
    assert [o["status"] for o in out] == ["hit", "no hit", "no hit", "hit"]
    assert truth(fr, probes[0]) == ["FR-0000020"] and truth(nl, probes[1]) == ["NL-0000030"]
    assert truth(nl, probes[0]) == [] and truth(fr, probes[1]) == []
    assert _resolve_all(world, tmp_path, Path(out[0]["answer"]), out[0]["candidates"]) == ["FR-0000020"]
    # The text form: one line per (probe, peer), rows from 0.
    lines = ok("ask", world.dirs["DE"], "--probes", tmp_path / "probes.npy", "--to", "NL", "--case", "C-ASK",
               "--purpose", PURPOSE, "--peers", served).out.splitlines()
    assert [line.split()[:4] for line in lines if line.startswith("probe")] == [["probe", "0", "NL", "no"],
                                                                             ["probe", "1", "NL", "hit"]]
    # Each outcome names its answer file; a hit's candidates follow it, numbered for follow-up --candidate.
    assert all(" answer " in line for line in lines if line.startswith("probe"))
    assert len(lines) == 3 and lines[2].startswith("    [1] ")


def test_ask_probe_options_and_bad_files(world: World, tmp_path: Path) -> None:
    np.save(tmp_path / "p.npy", np.ones(512, np.float32))
    common = ["--to", "FR", "--case", "C", "--purpose", PURPOSE, "--peers", tmp_path / "peers.json"]
    for argv in (["--probe", tmp_path / "p.npy", "--probes", tmp_path / "p.npy"], []):
        r = cli("ask", world.dirs["DE"], *argv, *common)
        assert r.code == 2 and r.out == "" and "usage: pprm ask" in r.err and "--probes" in r.err
    (tmp_path / "peers.json").write_text(json.dumps({"FR": dead_url()}))
    refused(world, tmp_path, "ask", world.dirs["DE"], "--probes", tmp_path / "p.npy", *common, says="got shape (512,)")
    np.save(tmp_path / "scalar.npy", np.float32(1.0))
    refused(world, tmp_path, "ask", world.dirs["DE"], "--probes", tmp_path / "scalar.npy", *common[:1], "XX",
            *common[2:], says="(N, d) array")


@pytest.fixture
def blind_net(tmp_path: Path) -> Iterator[tuple[dict[str, Node], Path]]:
    """DE asks HU in the blind profile; HU serves on loopback."""
    nodes = build_network(str(tmp_path / "w"), ("DE", "HU"), n=300, seed=41, blind_params=INSECURE_BLIND,
                          profiles={"HU": "blind"})
    with thread_server(create_app(nodes["HU"].state.dir)) as url:
        peers = tmp_path / "peers.json"
        peers.write_text(json.dumps({"HU": url}))
        yield nodes, peers


def test_ask_probes_blind_shares_one_key(blind_net: tuple[dict[str, Node], Path], tmp_path: Path) -> None:
    nodes, peers = blind_net
    hu = nodes["HU"].gallery
    probes = np.stack([synthetic.mate_probe(hu, 5, seed=1), synthetic.impostor_probe(512, seed=2),
                       synthetic.mate_probe(hu, 9, seed=3)])
    np.save(tmp_path / "probes.npy", probes)
    r = ok("ask", nodes["DE"].state.dir, "--probes", tmp_path / "probes.npy", "--to", "HU", "--case", "C-B",
           "--purpose", PURPOSE, "--peers", peers, "--json")
    out = json.loads(r.out)["outcomes"]
    assert [(o["probe"], o["status"], o["profile"]) for o in out] == [(0, "hit", "blind"), (1, "no hit", "blind"),
                                                                      (2, "hit", "blind")]
    assert [len(o["candidates"]) for o in out] == [1, 0, 1]
    de, hu_state = nodes["DE"].state, nodes["HU"].state
    # One key for the batch: created and announced once, accepted once, every query answered under it.
    assert [e["event"] for e in de.audit.entries()].count("keys_created") == 1
    hu_events = [e for e in hu_state.audit.entries() if e["event"] in ("keys", "answer")]
    assert [e["event"] for e in hu_events] == ["keys", "answer", "answer", "answer"]
    assert len({e["data"]["key_id"] for e in hu_events}) == 1
    # Probe 0 first, alone (it carried the key); the others after it, in any order.
    answered = [e["data"]["query_id"] for e in hu_events[1:]]
    assert answered[0] == out[0]["query_id"] and set(answered) == {o["query_id"] for o in out}


def test_ask_probes_blind_asks_no_further_probe_when_the_first_fails(blind_net: tuple[dict[str, Node], Path],
                                                                    tmp_path: Path) -> None:
    nodes, _peers = blind_net
    de = nodes["DE"].state
    peers = tmp_path / "dead.json"
    peers.write_text(json.dumps({"HU": dead_url()}))
    np.save(tmp_path / "probes.npy", np.eye(3, 512, dtype=np.float32))
    r = cli("ask", de.dir, "--probes", tmp_path / "probes.npy", "--to", "HU", "--case", "C-D", "--purpose",
            PURPOSE, "--peers", peers, "--json", "--timeout", "20")
    assert r.code == EXIT_PARTIAL
    report = json.loads(r.out)
    assert report["ok"] is False and report["error"]["code"] == "partial"
    out = report["outcomes"]
    assert [(o["probe"], o["status"]) for o in out] == [(0, "unreachable"), (1, "unreachable"), (2, "unreachable")]
    assert out[0]["query_id"] is not None and [o["query_id"] for o in out[1:]] == [None, None]
    assert all("not asked" in o["detail"] for o in out[1:])
    # Only probe 0's query was made; its key was retired, so the next batch announces a fresh one.
    box = Outbox(de.path("outbox.json")).load()
    assert list(box) == [out[0]["query_id"]]
    assert [e["event"] for e in de.audit.entries()].count("keys_retired") == 1


def test_query_probes_blind_announces_the_key_in_the_first_file(tmp_path: Path) -> None:
    nodes = build_network(str(tmp_path / "w"), ("DE", "HU"), n=300, seed=43, blind_params=INSECURE_BLIND)
    de, hu, g = nodes["DE"].state.dir, nodes["HU"].state.dir, nodes["HU"].gallery
    probes = np.stack([synthetic.mate_probe(g, 7, seed=1), synthetic.impostor_probe(512, seed=2)])
    np.save(tmp_path / "probes.npy", probes)
    report = ok_json("query", de, "--probes", tmp_path / "probes.npy", "--profile", "blind", "--to", "HU", "--case",
                     "C-F", "--purpose", PURPOSE, "--out-dir", tmp_path / "q")
    items = report["queries"]
    assert report["profile"] == "blind" and [i["announced"] for i in items] == [True, False]
    assert items[0]["key_id"] == items[1]["key_id"]
    # The second file names a key HU does not know yet: refused, nothing changes; then in order, both answered.
    refused(_Root(tmp_path / "w"), tmp_path / "q", "answer", hu, items[1]["out"], "--out", tmp_path / "a1.msg",
            says="key")
    ok("answer", hu, items[0]["out"], "--out", tmp_path / "a0.msg")
    ok("answer", hu, items[1]["out"], "--out", tmp_path / "a1.msg")
    hits = [ok_json("open", de, tmp_path / f"a{row}.msg")["candidates"] for row in (0, 1)]
    assert [len(h) for h in hits] == [1, 0]
    assert [len(plaintext_hits(g.templates, g.references, p, 0.4)) for p in probes] == [1, 0]
