"""What every benchmark records and prints: the machine, the plaintext baseline, table cells.

The sealed and the blind benchmarks (:mod:`pprm.bench.sealed`,
:mod:`pprm.bench.blind`) describe the machine the same way, time the same
plaintext reference (numpy float32 ``G @ q``; docs/DESIGN.md section 8 asks for
the ratio to it in every benchmark) and render their results as the same
kind of right-aligned table, with ``-`` for a figure that was not measured.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import tenseal

from pprm import __version__
from pprm.matching import kernel

__all__ = [
    "Progress",
    "Column",
    "machine_info",
    "ram_bytes",
    "load_average",
    "utc_timestamp",
    "median_ms",
    "numpy_baseline_ms",
    "numpy_baseline_runs_ms",
    "fmt_cell",
    "row_cells",
    "header_lines",
    "table_lines",
    "verdict",
]

# One-line status messages of a long benchmark (stderr on a terminal in the CLI).
Progress = Callable[[str], None]
# A table column: header, key in a result row, format spec of the value.
Column = tuple[str, str, str]


def machine_info() -> dict[str, Any]:
    """What the figures were measured on.

    Returns:
        platform, python, cpu model (from ``/proc/cpuinfo`` when present, else
        None), cores (``os.cpu_count()``), ``ram_bytes`` (physical memory,
        None where the platform does not say), numpy, tenseal and pprm
        versions, and the active kernel backend.
    """
    cpu: str | None = None
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        cpu = None
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu or platform.processor() or None,
        "cores": os.cpu_count(),
        "ram_bytes": ram_bytes(),
        "numpy": np.__version__,
        "tenseal": tenseal.__version__,
        "pprm": __version__,
        "backend": kernel.backend(),
    }


def ram_bytes() -> int | None:
    """The machine's physical memory.

    Returns:
        Page size times physical pages (``os.sysconf``), or None where the
        platform has neither.
    """
    try:
        pages, page = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None
    return pages * page if pages > 0 and page > 0 else None


def load_average() -> float | None:
    """The 1-minute load average, None where the platform has none.

    Other work on the machine skews every figure, so each benchmark records
    the load it ran under.

    Returns:
        ``os.getloadavg()[0]``, or None.
    """
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def utc_timestamp() -> str:
    """The current time as ``YYYY-MM-DDTHH:MM:SSZ`` (a result's ``created``).

    Returns:
        The timestamp, UTC, to the second.
    """
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def median_ms(seconds: Iterable[float]) -> float:
    """The median of durations given in seconds, in milliseconds.

    Args:
        seconds: at least one duration.

    Returns:
        The median times 1000.

    Raises:
        statistics.StatisticsError: no durations.
    """
    return statistics.median(seconds) * 1e3


def numpy_baseline_runs_ms(templates: np.ndarray, probe: np.ndarray, *, min_runs: int = 20,
                           max_runs: int = 500, budget_s: float = 1.0) -> list[float]:
    """Every timed run of plaintext float32 ``G @ q``, in milliseconds, after one untimed warm-up.

    Args:
        templates: ``(n, d)`` gallery.
        probe: ``(d,)`` probe.
        min_runs: always time at least this many runs.
        max_runs: never more than this many.
        budget_s: stop after this much time once ``min_runs`` are done.

    Returns:
        The durations, in the order they were timed.
    """
    g = np.ascontiguousarray(templates, dtype=np.float32)
    q = np.ascontiguousarray(probe, dtype=np.float32)
    g @ q  # warm caches and BLAS threads
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_runs and (len(times) < min_runs or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        g @ q
        times.append(time.perf_counter() - t0)
    return [t * 1e3 for t in times]


def numpy_baseline_ms(templates: np.ndarray, probe: np.ndarray, *, min_runs: int = 20,
                      max_runs: int = 500, budget_s: float = 1.0) -> float:
    """Median milliseconds of plaintext float32 ``G @ q`` (the reference of docs/DESIGN.md section 8).

    Args:
        templates: ``(n, d)`` gallery.
        probe: ``(d,)`` probe.
        min_runs: always time at least this many runs.
        max_runs: never more than this many.
        budget_s: stop after this much time once ``min_runs`` are done.

    Returns:
        The median over the runs of :func:`numpy_baseline_runs_ms`, in milliseconds.
    """
    return statistics.median(numpy_baseline_runs_ms(templates, probe, min_runs=min_runs, max_runs=max_runs,
                                                    budget_s=budget_s))


def fmt_cell(value: Any, spec: str) -> str:
    """One table cell.

    Args:
        value: the figure, or None when it was not measured.
        spec: its format spec, e.g. ``",.0f"``.

    Returns:
        ``format(value, spec)``, or ``-`` for None.
    """
    return "-" if value is None else format(value, spec)


def row_cells(row: Mapping[str, Any], columns: Iterable[Column]) -> list[str]:
    """The cells of one result row, one per column.

    Args:
        row: a result row (one gallery size).
        columns: ``(header, key, spec)`` per column; a missing key is ``-``.

    Returns:
        The formatted cells, in column order.
    """
    return [fmt_cell(row.get(key), spec) for _header, key, spec in columns]


def header_lines(title: str, machine: Mapping[str, Any], backend: str | None) -> list[str]:
    """The first lines of a benchmark table: what ran, and on which machine.

    Args:
        title: the first line.
        machine: as returned by :func:`machine_info`.
        backend: the kernel backend the figures were measured with.

    Returns:
        The title, the machine line and an empty line.
    """
    return [title,
            f"machine: {machine.get('cpu') or 'unknown cpu'}, {machine.get('cores')} cores, backend {backend}, "
            f"numpy {machine.get('numpy')}, tenseal {machine.get('tenseal')}, {machine.get('platform')}",
            ""]


def table_lines(headers: list[str], table: list[list[str]]) -> list[str]:
    """Right-aligned columns, one line per row, headers first.

    Args:
        headers: the column headers.
        table: the rows, each with one cell per header.

    Returns:
        The header line and one line per row.

    Raises:
        IndexError: a row has fewer cells than there are headers.
        ValueError: a row has more.
    """
    widths = [max(len(h), *(len(r[i]) for r in table)) for i, h in enumerate(headers)]
    return ["  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True)),
            *("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in table)]


def verdict(meets: bool | None) -> str:
    """How a table reports a target.

    Args:
        meets: whether the figure meets the target; None when it was not measured.

    Returns:
        ``met``, ``NOT met`` or ``-``.
    """
    return "-" if meets is None else ("met" if meets else "NOT met")
