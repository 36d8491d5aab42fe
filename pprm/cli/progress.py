"""Progress bars for long CLI steps: tqdm on stderr, on a terminal only.

Progress callbacks in pprm take ``(done, total)``; the library stays free of
any bar and of tqdm. :class:`ProgressBar` adapts that callback to tqdm, so a
step shows what it counts, the rate and the time left::

    building the blind database  64%|#########     | 1280/2000 templates [00:08<00:04, 160templates/s]

Two rules the CLI tests hold it to: nothing at all is written when stderr
is not a terminal (scripts, CI and tests get no carriage returns or partial
lines), and the bar is erased on close, so the result line starts clean.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import TracebackType
from typing import NoReturn, TextIO

from tqdm import tqdm

__all__ = ["ProgressBar", "StagedProgress"]

Progress = Callable[[int, int], None]


def _is_tty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or file-less streams
        return False


class ProgressBar:
    """A tqdm bar fed by ``(done, total)`` reports, redrawn in place.

    The rate is the steady average since the first report (tqdm with
    ``smoothing=0``), and the time left is the units left at that rate. A
    report with a new total, or fewer units done than the last one, starts
    a fresh run of the bar.

    Args:
        label: what is being done, e.g. ``enrolling``.
        stream: where to draw; ``sys.stderr`` when None.
        min_interval: seconds between redraws (the final one is always drawn).
        force: draw even when the stream is not a terminal (for tests).
        unit: what is counted, e.g. ``templates``; ``it`` when empty.
    """

    def __init__(self, label: str, stream: TextIO | None = None, *, min_interval: float = 0.1,
                 force: bool = False, unit: str = "") -> None:
        self.label = label
        self.stream = sys.stderr if stream is None else stream
        self.min_interval = min_interval
        self.unit = unit
        self.enabled = force or _is_tty(self.stream)
        self._bar: tqdm[NoReturn] | None = None  # a bar over no iterable

    def __repr__(self) -> str:
        return f"ProgressBar({self.label!r}, enabled={self.enabled})"

    @property
    def callback(self) -> Progress | None:
        """This bar if it draws, else None (so callers skip the calls entirely)."""
        return self if self.enabled else None

    def __call__(self, done: int, total: int) -> None:
        """Report ``done`` of ``total`` units.

        Args:
            done: units finished so far.
            total: all units; a non-positive total draws a bar with no end.
        """
        if not self.enabled:
            return
        bar = self._bar
        if bar is None or done < bar.n or (total if total > 0 else None) != bar.total:
            self.close()
            bar = self._bar = tqdm(
                total=total if total > 0 else None, initial=done, desc=self.label,
                unit=f" {self.unit}" if self.unit else "it", file=self.stream, leave=False,
                ascii=True, smoothing=0, mininterval=self.min_interval, dynamic_ncols=False,
                ncols=100,
            )
            return
        bar.update(done - bar.n)
        if total > 0 and done >= total and bar.last_print_n != bar.n:
            bar.refresh()  # the final count is always drawn, whatever min_interval says

    def close(self) -> None:
        """Erase the bar so later output starts on a clean line."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class StagedProgress:
    """One bar per named stage: ``progress(stage, done, total)``.

    A new stage name erases the previous bar and starts a fresh one.

    Args:
        stream: where to draw; ``sys.stderr`` when None.
        force: draw even when the stream is not a terminal (for tests).
        unit: what every stage counts (shown after the counts).
    """

    def __init__(self, stream: TextIO | None = None, *, force: bool = False, unit: str = "") -> None:
        self.stream = sys.stderr if stream is None else stream
        self.force = force
        self.unit = unit
        self._bar: ProgressBar | None = None

    def __repr__(self) -> str:
        return f"StagedProgress(stage={self._bar.label if self._bar else None!r})"

    @property
    def enabled(self) -> bool:
        """Whether anything will be drawn."""
        return self.force or _is_tty(self.stream)

    def __call__(self, stage: str, done: int, total: int) -> None:
        """Report progress of ``stage``.

        Args:
            stage: label of the current step.
            done: units finished in this step.
            total: units in this step.
        """
        if self._bar is None or self._bar.label != stage:
            self.close()
            self._bar = ProgressBar(stage, self.stream, force=self.force, unit=self.unit)
        self._bar(done, total)

    def close(self) -> None:
        """Erase the current bar, if any."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> StagedProgress:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
