"""The network verbs from the command line: serve, route, ask, follow-up over HTTP."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pprm import synthetic
from pprm.cli.common import EXIT_PARTIAL
from pprm.cli.main import main
from pprm.node.outbox import Outbox
from tests.helpers import build_network, dead_url, route, serve

PURPOSE = "serious-crime"


@pytest.fixture
def net(tmp_path):
    nodes = build_network(str(tmp_path / "w"), ("DE", "FR", "HU"), n=300)
    procs = {name: serve(nodes[name].state.dir) for name in ("FR", "HU")}
    peers = tmp_path / "peers.json"
    peers.write_text(json.dumps({k: p.url for k, p in procs.items()}))
    yield nodes, procs, peers, tmp_path
    for p in procs.values():
        p.stop()


def test_ask_json_then_follow_up_over_http(net, capsys):
    nodes, _procs, peers, tmp = net
    probe = tmp / "probe.npy"
    np.save(probe, synthetic.mate_probe(nodes["FR"].gallery, 17, seed=3))
    de = nodes["DE"].state.dir
    code = main(["ask", de, "--probe", str(probe), "--to", "FR,HU", "--case", "C-CLI", "--purpose", PURPOSE,
                 "--peers", str(peers), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["format"] == "pprm.ask/1" and out["ok"] is True
    by = {o["peer"]: o for o in out["outcomes"]}
    assert by["FR"]["status"] == "hit" and len(by["FR"]["candidates"]) == 1
    assert by["HU"]["status"] == "no hit" and by["HU"]["candidates"] == []
    assert Path(by["FR"]["answer"]).is_file()
    code = main(["follow-up", de, by["FR"]["answer"], by["FR"]["candidates"][0], "--peers", str(peers), "--json"])
    ack = json.loads(capsys.readouterr().out)
    assert code == 0 and ack["status"] == "resolved" and ack["query_id"] == by["FR"]["query_id"]
    assert (ack["format"], ack["peer"], ack["profile"], ack["sent"]) == ("pprm.follow-up/1", "FR", "sealed", True)


def test_ask_reports_an_unreachable_peer_and_exits_partial(net, capsys):
    nodes, procs, _peers, tmp = net
    peers = tmp / "peers-dead.json"
    peers.write_text(json.dumps({"FR": procs["FR"].url, "HU": dead_url()}))
    probe = tmp / "probe.npy"
    np.save(probe, synthetic.impostor_probe(512, seed=1))
    code = main(["ask", nodes["DE"].state.dir, "--probe", str(probe), "--to", "FR,HU", "--case", "C-CLI2",
                 "--purpose", PURPOSE, "--peers", str(peers), "--timeout", "20"])
    lines = capsys.readouterr().out.splitlines()
    assert code == EXIT_PARTIAL
    assert lines[0].startswith("FR  no hit") and lines[1].startswith("HU  unreachable")


def test_ask_through_the_router_command(net, capsys):
    nodes, procs, _peers, tmp = net
    router = route({k: p.url for k, p in procs.items()}, str(tmp / "router-peers.json"))
    try:
        probe = tmp / "probe.npy"
        np.save(probe, synthetic.mate_probe(nodes["HU"].gallery, 3, seed=8))
        code = main(["ask", nodes["DE"].state.dir, "--probe", str(probe), "--to", "FR,HU", "--case", "C-CLI3",
                     "--purpose", PURPOSE, "--router", router.url, "--json"])
        out = {o["peer"]: o["status"] for o in json.loads(capsys.readouterr().out)["outcomes"]}
    finally:
        router.stop()
    assert code == 0 and out == {"FR": "no hit", "HU": "hit"}


@pytest.mark.parametrize("argv, message", [
    (["--peers", "/nonexistent/peers.json"], "cannot read peers file"),
    ([], "say where the peers are"),
    (["--router", "ftp://example"], "not an http(s) address"),
])
def test_ask_argument_errors_are_one_line_and_send_nothing(net, capsys, argv, message):
    nodes, _procs, _peers, tmp = net
    probe = tmp / "probe.npy"
    np.save(probe, synthetic.impostor_probe(512, seed=1))
    outbox = Outbox(nodes["DE"].state.path("outbox.json"))
    before = outbox.load()
    code = main(["ask", nodes["DE"].state.dir, "--probe", str(probe), "--to", "FR", "--case", "C", "--purpose",
                 PURPOSE, *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and message in err[0]
    assert outbox.load() == before


def test_malformed_peers_file(tmp_path, capsys):
    bad = tmp_path / "peers.json"
    bad.write_text(json.dumps({"de": "http://127.0.0.1:1"}))
    code = main(["route", "--peers", str(bad), "--port", "0"])
    assert code == 1 and "bad entry" in capsys.readouterr().err


def test_follow_up_needs_a_destination(net, capsys):
    nodes, *_ = net
    code = main(["follow-up", nodes["DE"].state.dir, "/dev/null", "tok"])
    assert code == 1 and "--out FILE, or --peers" in capsys.readouterr().err


def test_the_http_stack_is_imported_only_by_the_network_verbs():
    code = ("import sys, pprm, pprm.cli.main as m; m.build_parser();"
            "print(sorted(k for k in ('starlette', 'uvicorn', 'httpx') if k in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
