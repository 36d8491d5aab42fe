"""The shared parts of every benchmark's report (pprm.bench.report)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from pprm.bench import report
from pprm.matching import kernel


def test_cells_columns_and_verdicts() -> None:
    assert report.fmt_cell(None, ",") == "-" and report.fmt_cell(12345, ",") == "12,345"
    assert report.fmt_cell(0.5, ".2f") == "0.50"
    row = {"n": 600, "query_ms": 12.345}
    columns = [("n", "n", ","), ("q", "query_ms", ".1f"), ("x", "missing", "d")]
    assert report.row_cells(row, columns) == ["600", "12.3", "-"]
    assert report.table_lines(["n", "query ms"], [["600", "12.3"], ["100,000", "-"]]) == [
        "      n  query ms",
        "    600      12.3",
        "100,000         -",
    ]
    with pytest.raises(IndexError):
        report.table_lines(["a", "b"], [["1"]])
    with pytest.raises(ValueError):
        report.table_lines(["a"], [["1", "2"]])
    assert [report.verdict(v) for v in (True, False, None)] == ["met", "NOT met", "-"]


def test_header_names_the_machine_and_the_backend() -> None:
    machine = report.machine_info()
    assert machine["backend"] == kernel.backend() and machine["cores"]
    title, line, blank = report.header_lines("pprm bench: x", machine, "numpy")
    assert title == "pprm bench: x" and blank == ""
    assert line.startswith("machine: ") and "backend numpy" in line and f"{machine['cores']} cores" in line


def test_times_and_stamps() -> None:
    assert report.median_ms([0.001, 0.003, 0.002]) == pytest.approx(2.0)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", report.utc_timestamp())
    load = report.load_average()
    assert load is None or load >= 0
    g = np.ones((64, 8), dtype=np.float32)
    assert report.numpy_baseline_ms(g, np.ones(8, dtype=np.float32), min_runs=3, max_runs=3) > 0
    runs = report.numpy_baseline_runs_ms(g, np.ones(8, dtype=np.float32), min_runs=5, max_runs=5)
    assert len(runs) == 5 and all(t > 0 for t in runs)
