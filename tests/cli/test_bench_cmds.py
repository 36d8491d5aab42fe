"""``pprm bench`` (pprm.cli.bench_cmds): a thin verb over pprm.bench, on the insecure N=1024 sets.

Besides the tables and ``--json`` of one profile: ``--out`` (the
``pprm.bench/1`` document of both profiles), ``--plot`` (the PNG figure) and
``--plot --from`` (the figure of an earlier document), and the one-line error
when matplotlib, the ``plot`` extra, is missing.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest

import pprm
from pprm.bench import document
from pprm.bench.document import FORMAT, ROW_KEYS
from pprm.cli.main import main
from tests.helpers import INSECURE_BLIND, INSECURE_SEALED

N = 600
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
INSECURE = ("--params", INSECURE_SEALED, "--blind-params", INSECURE_BLIND, "--allow-insecure", "--repeats", "1")


def _run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["bench", *argv])
    return code, out.getvalue(), err.getvalue()


def _one_error_line(code: int, out: str, err: str) -> str:
    assert code == 1 and out == "" and err.startswith("pprm: error: ") and err.count("\n") == 1, (code, out, err)
    return err


def test_blind_profile_prints_json() -> None:
    code, out, err = _run("--profile", "blind", "--sizes", str(N), "--params", INSECURE_BLIND, "--allow-insecure",
                          "--repeats", "1", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["format"] == FORMAT and data["ok"] is True and set(data["profiles"]) == {"blind"}
    # The benchmark's own result, whole, inside the document.
    result = data["profiles"]["blind"]["result"]
    assert result["profile"] == "blind" and result["params"] == INSECURE_BLIND and result["correct"] is True


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
    _one_error_line(code, out, err)


# -- --out and --plot: one run of both profiles --------------------------------------------------

@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], str]:
    """``pprm bench --out --plot --json`` at 600 templates: the directory, the printed document, stderr."""
    d = tmp_path_factory.mktemp("bench-out")
    code, out, err = _run("--sizes", str(N), *INSECURE, "--out", str(d / "bench.json"),
                          "--plot", str(d / "bench.png"), "--json")
    assert code == 0, err
    return d, json.loads(out), err


def test_out_writes_one_tagged_document_of_both_profiles(both: tuple[Path, dict[str, Any], str]) -> None:
    d, printed, err = both
    assert err == ""
    assert sorted(os.listdir(d)) == ["bench.json", "bench.png"]  # no temporary file left behind
    doc = json.loads((d / "bench.json").read_text())
    # --json prints the document --out writes, as every --json output: tagged, with "ok".
    assert printed["ok"] is True and {k: v for k, v in printed.items() if k != "ok"} == doc
    assert doc["format"] == FORMAT == "pprm.bench/1"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", doc["created"])
    m = doc["machine"]
    assert m["cores"] == os.cpu_count() and m["ram_bytes"] > 0 and m["backend"] == pprm.BACKEND
    assert m["python"] and m["numpy"] and m["tenseal"] and "cpu" in m
    assert set(doc["load_average"]) == {"before", "after"}
    assert set(doc["profiles"]) == {"sealed", "blind"}
    assert doc["profiles"]["sealed"]["params"] == INSECURE_SEALED
    assert doc["profiles"]["blind"]["params"] == INSECURE_BLIND


@pytest.mark.parametrize("profile", ["sealed", "blind"])
def test_rows_are_positive_and_consistent(both: tuple[Path, dict[str, Any], str], profile: str) -> None:
    entry = both[1]["profiles"][profile]
    assert entry["repeats"] == 1
    (row,) = entry["sizes"]
    assert tuple(sorted(row)) == tuple(sorted(ROW_KEYS))
    assert row["n"] == N
    for key in ("responder_ms", "per_template_us", "numpy_ms", "numpy_per_template_us", "numpy_min_ms",
                "numpy_min_per_template_us", "ratio_to_numpy", "query_bytes", "response_bytes"):
        assert row[key] > 0, key
    assert row["per_template_us"] == pytest.approx(row["responder_ms"] * 1e3 / N)
    assert row["numpy_per_template_us"] == pytest.approx(row["numpy_ms"] * 1e3 / N)
    assert row["numpy_min_per_template_us"] == pytest.approx(row["numpy_min_ms"] * 1e3 / N)
    assert row["numpy_min_ms"] <= row["numpy_ms"]
    assert row["ratio_to_numpy"] == pytest.approx(row["responder_ms"] / row["numpy_ms"])
    assert row["responder_ms"] == pytest.approx(row["responder_ms_runs"][0])
    # Every figure is the benchmark's own, which the document carries whole.
    (raw,) = entry["result"]["sizes"]
    assert row["responder_ms"] == raw["query_ms" if profile == "sealed" else "responder_ms"]
    assert row["numpy_ms"] == raw["numpy_ms"] and row["numpy_min_ms"] == raw["numpy_min_ms"]
    assert row["response_bytes"] == raw["answer_bytes"]
    if profile == "sealed":
        assert row["key_bytes"] is None  # a sealed requester sends no keys
    else:
        assert row["key_bytes"] == raw["announcement_bytes"] > 0


def test_plot_is_a_png(both: tuple[Path, dict[str, Any], str]) -> None:
    data = (both[0] / "bench.png").read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 1000


def test_plot_from_an_earlier_document(both: tuple[Path, dict[str, Any], str], tmp_path: Path) -> None:
    code, out, err = _run("--plot", str(tmp_path / "again.png"), "--from", str(both[0] / "bench.json"))
    assert code == 0 and err == "", err
    assert "again.png" in out
    assert (tmp_path / "again.png").read_bytes().startswith(PNG_MAGIC)


def test_one_profile_to_a_file_prints_its_table(tmp_path: Path) -> None:
    code, out, err = _run("--profile", "sealed", "--sizes", str(N), "--params", INSECURE_SEALED,
                          "--allow-insecure", "--repeats", "1", "--out", str(tmp_path / "s.json"))
    assert code == 0, err
    assert out.startswith(f"pprm bench: {INSECURE_SEALED}") and f"wrote {tmp_path / 's.json'}" in out
    doc = json.loads((tmp_path / "s.json").read_text())
    assert set(doc["profiles"]) == {"sealed"}


# -- usage and errors ------------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [
    ("--from", "x.json"),  # --from needs --plot
    ("--plot", "x.png", "--from", "x.json", "--sizes", "600"),  # --from does not run
    ("--plot", "x.png", "--from", "x.json", "--out", "y.json"),
    ("--sizes", "600", "--blind-sizes", "600"),  # one profile: no blind-only options
    ("--profile", "blind", "--blind-params", INSECURE_BLIND),
])
def test_options_that_do_not_go_together(argv: tuple[str, ...]) -> None:
    code, out, err = _run(*argv)
    assert code == 2 and out == "" and "usage:" in err


def test_from_refuses_what_is_not_a_bench_document(tmp_path: Path) -> None:
    for name, content in (("not.json", "{"), ("other.json", '{"format": "pprm-bench/1"}'),
                          ("empty.json", '{"format": "pprm.bench/1", "profiles": {}}')):
        (tmp_path / name).write_text(content)
        err = _one_error_line(*_run("--plot", str(tmp_path / "x.png"), "--from", str(tmp_path / name)))
        assert name in err
    assert not (tmp_path / "x.png").exists()


def test_a_missing_plot_extra_is_one_line_before_any_measuring(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules makes `import matplotlib` fail as if it were not installed.
    monkeypatch.setitem(sys.modules, "matplotlib", None)

    def must_not_run(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the benchmark ran although the figure cannot be drawn")

    monkeypatch.setattr(document, "run_document", must_not_run)
    err = _one_error_line(*_run("--sizes", str(N), *INSECURE, "--out", str(tmp_path / "b.json"),
                                "--plot", str(tmp_path / "b.png")))
    assert err == 'pprm: error: the benchmark figure needs matplotlib, the optional plot extra: ' \
                  'pip install "pprm[plot]"\n'
    assert os.listdir(tmp_path) == []
    err = _one_error_line(*_run("--plot", str(tmp_path / "b.png"), "--from", str(tmp_path / "none.json")))
    assert 'pip install "pprm[plot]"' in err
