"""The command itself (pprm.cli.main): errors as exit codes, the verbs, the help.

Usage errors exit 2 with argparse's usage; an expected error is one
``pprm: error:`` line (also from the installed script, without traceback);
Ctrl-C is exit 130; ``pprm --help`` lists every exit code.
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

import pytest

from pprm.cli.common import EXIT_INTERRUPTED, EXIT_OK, exit_codes_epilog
from pprm.cli.main import VERB_ORDER, build_parser, main
from pprm.node.state import State
from tests.cli.worlds import World, pprm_script
from tests.helpers import cli, snapshot


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


def test_help_lists_every_verb_and_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == EXIT_OK
    out = capsys.readouterr().out
    listed = [line.split()[0] for line in out.splitlines() if line.startswith("    ") and not line.startswith("     ")]
    assert listed == list(VERB_ORDER)
    assert out.index("\n    init ") < out.index("\n    ask ")
    assert out.endswith(exit_codes_epilog() + "\n")


def test_every_verb_module_has_its_place_in_the_order() -> None:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert tuple(sub.choices) == VERB_ORDER


def test_an_interrupted_verb_exits_130(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                       tmp_path: Path) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(State, "open", interrupted)
    assert main(["info", str(tmp_path)]) == EXIT_INTERRUPTED == 130
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == "pprm: interrupted\n"
