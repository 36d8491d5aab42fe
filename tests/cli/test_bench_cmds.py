"""``pprm bench`` (pprm.cli.bench_cmds): a thin verb over pprm.bench, on the insecure N=1024 sets."""

from __future__ import annotations

import contextlib
import io
import json

from pprm.cli.main import main
from tests.helpers import INSECURE_BLIND, INSECURE_SEALED

N = 600


def _run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["bench", *argv])
    return code, out.getvalue(), err.getvalue()


def test_blind_profile_prints_json() -> None:
    code, out, err = _run("--profile", "blind", "--sizes", str(N), "--params", INSECURE_BLIND, "--allow-insecure",
                          "--repeats", "1", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["profile"] == "blind" and data["params"] == INSECURE_BLIND and data["correct"] is True


def test_sealed_profile_prints_the_table() -> None:
    code, out, err = _run("--sizes", str(N), "--params", INSECURE_SEALED, "--allow-insecure", "--repeats", "1")
    assert code == 0, err
    assert err == ""  # not a terminal: no progress lines
    lines = out.splitlines()
    assert lines[0].startswith(f"pprm bench: {INSECURE_SEALED}, d=512, tau=0.4, median of 1 full queries")
    assert any(line.split()[:2] == ["600", "2"] for line in lines)
    assert "target: sealed 100k x 512 query" in out


def test_an_insecure_set_needs_permission() -> None:
    code, out, err = _run("--sizes", str(N), "--params", INSECURE_SEALED)
    assert code == 1 and out == "" and err.startswith("pprm: error: ") and err.count("\n") == 1
