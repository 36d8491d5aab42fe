"""The ``pprm.bench/1`` document and its figure (pprm.bench.document, pprm.bench.plot), on made-up results.

A real run of both profiles goes through ``pprm bench --out --plot`` in
tests/cli/test_bench_cmds.py; here the rows are checked against results
whose figures are known, so every derived value can be compared exactly.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pprm.bench.document import (
    FORMAT,
    NUMPY_SERIES,
    ROW_KEYS,
    ProfileRun,
    build_document,
    document_bytes,
    load_document,
    per_template_series,
    profile_rows,
    run_document,
)
from pprm.bench.plot import figure_title, per_template_png, require_matplotlib
from pprm.errors import MissingExtraError, ParameterError


def _sealed(*rows: tuple[int, float, float]) -> dict[str, Any]:
    """A sealed result with (n, query_ms, numpy_ms) per size, the fastest numpy run half the median."""
    return {"params": "S", "repeats": 3, "sizes": [
        {"n": n, "query_ms": q, "query_ms_runs": [q, q, q], "numpy_ms": np_ms, "numpy_min_ms": np_ms / 2,
         "ratio_to_numpy": q / np_ms, "query_bytes": 3000, "answer_bytes": 484, "load_average": 0.5}
        for n, q, np_ms in rows]}


def _blind(*rows: tuple[int, float, float]) -> dict[str, Any]:
    """A blind result with (n, responder_ms, numpy_ms) per size, the fastest numpy run half the median."""
    return {"params": "B", "repeats": 3, "sizes": [
        {"n": n, "responder_ms": r, "responder_ms_runs": [r], "numpy_ms": np_ms, "numpy_min_ms": np_ms / 2,
         "ratio_to_numpy": r / np_ms, "query_bytes": 390_000, "answer_bytes": 25.6 * n,
         "announcement_bytes": 6_800_000, "load_average": None}
        for n, r, np_ms in rows]}


@pytest.fixture
def doc() -> dict[str, Any]:
    # Blind first: the document orders the profiles itself.
    return build_document({"blind": _blind((1000, 800.0, 0.02), (10_000, 900.0, 0.5)),
                           "sealed": _sealed((1000, 20.0, 0.01), (10_000, 40.0, 0.6))},
                          load_before=1.5, load_after=1.7)


def test_rows_come_from_the_results(doc: dict[str, Any]) -> None:
    assert doc["format"] == FORMAT and list(doc["profiles"]) == ["sealed", "blind"]
    assert doc["load_average"] == {"before": 1.5, "after": 1.7}
    assert {"cpu", "cores", "ram_bytes", "python", "numpy", "tenseal", "backend"} <= set(doc["machine"])
    sealed, blind = doc["profiles"]["sealed"], doc["profiles"]["blind"]
    assert sealed["params"] == "S" and sealed["repeats"] == 3 and sealed["result"]["sizes"][0]["query_ms"] == 20.0
    first = sealed["sizes"][0]
    assert list(first) == list(ROW_KEYS)
    assert first == {"n": 1000, "responder_ms": 20.0, "responder_ms_runs": [20.0, 20.0, 20.0],
                     "per_template_us": 20.0, "numpy_ms": 0.01, "numpy_per_template_us": pytest.approx(0.01),
                     "numpy_min_ms": 0.005, "numpy_min_per_template_us": pytest.approx(0.005),
                     "ratio_to_numpy": pytest.approx(2000.0), "query_bytes": 3000, "response_bytes": 484,
                     "key_bytes": None, "load_average": 0.5}
    b = blind["sizes"][1]
    assert b["per_template_us"] == pytest.approx(90.0) and b["key_bytes"] == 6_800_000
    assert b["response_bytes"] == pytest.approx(256_000.0)
    assert json.loads(document_bytes(doc)) == doc


def test_series_sealed_blind_then_the_faster_plaintext(doc: dict[str, Any]) -> None:
    series = per_template_series(doc)
    assert list(series) == ["sealed", "blind", NUMPY_SERIES]
    assert series["sealed"] == [(1000, 20.0), (10_000, 4.0)]
    assert series["blind"] == [(1000, 800.0), (10_000, 90.0)]
    # The fastest run of G @ q; both profiles timed it at each size, and the faster of the two is plotted.
    sizes, us = zip(*series[NUMPY_SERIES], strict=True)
    assert sizes == (1000, 10_000) and us == pytest.approx((0.005, 0.025))


def test_load_document_round_trip_and_refusals(doc: dict[str, Any], tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    good.write_bytes(document_bytes(doc))
    assert load_document(str(good)) == json.loads(document_bytes(doc))
    broken = dict(doc, profiles={"sealed": {"sizes": [{"n": 1000, "per_template_us": 0}]}})
    for name, content in (("bin.json", b"\xff\xfe"), ("text.json", b"not json"), ("list.json", b"[]"),
                          ("tag.json", b'{"format": "pprm-bench/1"}'),
                          ("unknown.json", json.dumps(dict(doc, profiles={"open": {}})).encode()),
                          ("zero.json", json.dumps(broken).encode())):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ParameterError, match=name):
            load_document(str(tmp_path / name))


def test_build_and_run_refuse_nothing_to_do() -> None:
    with pytest.raises(ParameterError):
        build_document({})
    with pytest.raises(ParameterError):
        build_document({"open": _sealed((1, 1.0, 1.0))})  # type: ignore[dict-item]
    with pytest.raises(ParameterError):
        run_document([])
    twice = ProfileRun("sealed", (600,), "S")
    with pytest.raises(ParameterError):
        run_document([twice, twice])


def test_profile_rows_needs_the_profiles_figures() -> None:
    with pytest.raises(KeyError):
        profile_rows("blind", _sealed((1000, 1.0, 1.0)))


def test_the_figure_is_a_png_titled_with_the_machine(doc: dict[str, Any]) -> None:
    title = figure_title(doc)
    m = doc["machine"]
    assert title.count("\n") == 2 and f"{m['cores']} cores" in title and "load average 0.5-1.7" in title
    assert doc["created"][:10] in title
    assert per_template_png(doc).startswith(b"\x89PNG\r\n\x1a\n")


def test_without_matplotlib_one_line_names_the_extra(doc: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    for draw in (require_matplotlib, lambda: per_template_png(doc)):
        with pytest.raises(MissingExtraError, match=r'pip install "pprm\[plot\]"') as info:
            draw()
        assert "\n" not in str(info.value) and isinstance(info.value, ImportError)


def test_importing_the_figure_module_does_not_import_matplotlib() -> None:
    # pprm bench imports pprm.bench.plot only with --plot, and even then
    # matplotlib only when the figure is drawn.
    code = "import sys, pprm.bench.plot; sys.exit('matplotlib' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
