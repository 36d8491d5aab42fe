"""The command reference (pprm.cli.reference) and docs/CLI.md, which is its output."""

from __future__ import annotations

from pathlib import Path

import pytest

from pprm.cli.common import EXIT_CODES
from pprm.cli.main import VERB_ORDER
from pprm.cli.reference import render

CLI_MD = Path(__file__).resolve().parents[2] / "docs" / "CLI.md"
REGENERATE = "python -m pprm.cli.reference > docs/CLI.md"


def test_docs_cli_md_is_current() -> None:
    assert CLI_MD.exists(), f"docs/CLI.md is missing: run `{REGENERATE}`"
    assert CLI_MD.read_text(encoding="utf-8") == render(), f"docs/CLI.md is out of date: run `{REGENERATE}`"


def test_rendering_does_not_follow_the_terminal_width(monkeypatch: pytest.MonkeyPatch) -> None:
    wide = render()
    monkeypatch.setenv("COLUMNS", "40")
    assert render() == wide


def test_every_verb_sub_verb_and_exit_code_is_documented() -> None:
    text = render()
    for verb in VERB_ORDER:
        assert f"\n## pprm {verb}\n" in text, verb
        assert f"usage: pprm {verb} " in text, verb
    assert "\n### pprm audit verify\n" in text and "\n### pprm audit show\n" in text
    for e in EXIT_CODES:
        assert f"\n| {e.code} | {e.name} | " in text
    # Defaults and required options are shown.
    assert "| `--threshold THRESHOLD` | decision threshold (default 0.4) | `0.4` |" in text
    assert "| `--sizes SIZES` | gallery sizes (default 10000,100000) | `10000,100000` |" in text
    assert "| `--name NAME` | state code, e.g. DE | required |" in text
