"""The figure of ``pprm bench --plot FILE.png``: time per template against gallery size.

One log-log plot from one ``pprm.bench/1`` document (:mod:`pprm.bench.document`):
the sealed responder and the blind responder (median query) and plaintext
numpy float32 ``G @ q`` (fastest run, see
:func:`pprm.bench.document.per_template_series`), all measured in the same
run, in microseconds per template, with the machine in the title.

matplotlib is the optional ``plot`` extra. It is imported only when a figure
is drawn, never when this module is imported, so ``pprm bench`` without
``--plot`` does not need it; without it :func:`require_matplotlib` and
:func:`per_template_png` raise :class:`pprm.errors.MissingExtraError`.
"""

from __future__ import annotations

import importlib
import io
from collections.abc import Mapping
from typing import Any

from pprm.bench.document import NUMPY_SERIES, per_template_series
from pprm.errors import MissingExtraError

__all__ = ["require_matplotlib", "per_template_png", "figure_title"]

_GIB = 2**30
# Series name -> (legend label, marker); the colours follow matplotlib's default cycle.
_STYLE: dict[str, tuple[str, str]] = {
    "sealed": ("sealed, responder, median query", "o"),
    "blind": ("blind, responder, median query", "s"),
    NUMPY_SERIES: ("plaintext numpy float32 G @ q, fastest run", "^"),
}


def require_matplotlib() -> Any:
    """Import matplotlib, or say in one line how to install it.

    ``pprm bench --plot`` calls this before it starts measuring, so a
    missing extra is reported at once and not after minutes of benchmarking.

    Returns:
        The ``matplotlib`` module.

    Raises:
        MissingExtraError: matplotlib is not installed.
    """
    try:
        return importlib.import_module("matplotlib")
    except ImportError:
        raise MissingExtraError('the benchmark figure needs matplotlib, the optional plot extra: '
                                'pip install "pprm[plot]"') from None


def figure_title(document: Mapping[str, Any]) -> str:
    """The figure's title: what is plotted, then the machine and the run.

    Args:
        document: a ``pprm.bench/1`` document.

    Returns:
        Three lines: the subject; CPU, cores, RAM and kernel backend; the
        versions, the date and the range of the 1-minute load averages the
        run recorded.
    """
    m = document.get("machine", {})
    ram = m.get("ram_bytes")
    # The loads recorded at the start, before each size and at the end: the
    # range tells a quiet run from one that shared the machine.
    run_load = document.get("load_average") or {}
    loads = [v for v in (run_load.get("before"), run_load.get("after"),
                         *(r.get("load_average") for e in document.get("profiles", {}).values()
                           for r in e.get("sizes", [])))
             if isinstance(v, (int, float))]
    machine = [m.get("cpu") or "unknown CPU", f"{m.get('cores')} cores"]
    if ram:
        machine.append(f"{ram / _GIB:.0f} GiB RAM")
    machine.append(f"{m.get('backend')} kernel")
    run = [f"Python {m.get('python')}, numpy {m.get('numpy')}, TenSEAL {m.get('tenseal')}",
           f"{str(document.get('created', ''))[:10]} UTC"]
    if loads:
        low, high = f"{min(loads):.1f}", f"{max(loads):.1f}"
        run.append(f"load average {low}" if low == high else f"load average {low}-{high}")
    return "\n".join(["pprm bench: time per template against gallery size, d = 512", ", ".join(machine),
                      "; ".join(run)])


def per_template_png(document: Mapping[str, Any], *, dpi: int = 120) -> bytes:
    """Draw the figure of ``document`` as PNG bytes.

    Args:
        document: a ``pprm.bench/1`` document (from :func:`pprm.bench.document.build_document`
            or :func:`pprm.bench.document.load_document`).
        dpi: resolution of the PNG.

    Returns:
        The PNG file's bytes.

    Raises:
        MissingExtraError: matplotlib is not installed.
    """
    require_matplotlib()
    # The object-oriented API without pyplot: no global figure state, no GUI
    # backend chosen from the environment, nothing to close afterwards.
    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    fig = Figure(figsize=(8.0, 5.6), layout="constrained")
    ax = fig.add_subplot()
    params = {name: entry.get("params") for name, entry in document["profiles"].items()}
    series = per_template_series(document)
    for name, points in series.items():
        label, marker = _STYLE.get(name, (name, "o"))
        if params.get(name):
            label = f"{label} ({params[name]})"
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, marker=marker, label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    # Ticks at the measured sizes, written out, rather than powers of ten
    # that may fall between them.
    ax.xaxis.set_major_locator(FixedLocator(sorted({n for points in series.values() for n, _us in points})))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: f"{x:,.0f}"))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("gallery size n (templates)")
    ax.set_ylabel("time per template (µs): time of one query / n")
    ax.grid(True, which="major", alpha=0.5)
    ax.grid(True, which="minor", axis="y", alpha=0.15)
    ax.legend(loc="best", fontsize="small")
    ax.set_title(figure_title(document), fontsize="medium")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()
