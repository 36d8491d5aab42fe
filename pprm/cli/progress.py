"""A dependency-free progress bar for long CLI steps, drawn on stderr.

The bar draws only when its stream is a terminal: piped or captured stderr
(scripts, CI, tests) gets no carriage returns or partial lines. Progress
callbacks in pprm take ``(done, total)``; :class:`ProgressBar` is one. It
shows the rate and the time left, measured from its first report::

    building the blind database [#########.....]  64%  1280/2000 templates  160/s  ETA 0:04

It is written here rather than taken from tqdm: the few lines it needs do
not justify another runtime dependency of every install, and this one keeps
the two rules the CLI tests hold it to (nothing at all off a terminal; the
line erased on close, so the result line starts clean).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import TextIO

__all__ = ["ProgressBar", "StagedProgress"]

Progress = Callable[[int, int], None]


def _is_tty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or file-less streams
        return False


def _clock(seconds: float) -> str:
    """``m:ss``, or ``h:mm:ss`` from an hour on."""
    s = max(0, round(seconds))
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def _rate(per_second: float) -> str:
    return f"{per_second:,.0f}/s" if per_second >= 10 else f"{per_second:.1f}/s"


class ProgressBar:
    """``label [#####.....]  45%  450/1000 templates  150/s  ETA 0:04`` redrawn in place.

    The rate is the units done since the first report over the time since
    then (a steady average, not the last step's); the ETA is the units left
    at that rate. Both appear once there is something to measure; the final
    line shows the elapsed time instead of the ETA.

    Args:
        label: what is being done, e.g. ``enrolling``.
        stream: where to draw; ``sys.stderr`` when None.
        width: characters inside the brackets.
        min_interval: seconds between redraws (the final one is always drawn).
        force: draw even when the stream is not a terminal (for tests).
        unit: what is counted, e.g. ``templates`` (shown after the counts).
        clock: monotonic seconds (for tests).
    """

    def __init__(self, label: str, stream: TextIO | None = None, *, width: int = 30,
                 min_interval: float = 0.1, force: bool = False, unit: str = "",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.label = label
        self.stream = sys.stderr if stream is None else stream
        self.width = width
        self.min_interval = min_interval
        self.unit = unit
        self.enabled = force or _is_tty(self.stream)
        self._clock = clock
        self._last_draw = 0.0
        self._drawn = 0  # length of the line on screen, 0 if none
        self._start: tuple[float, int] | None = None  # (time, done) of the first report

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
            total: all units; a non-positive total draws an empty bar.
        """
        if not self.enabled:
            return
        now = self._clock()
        if self._start is None or done < self._start[1]:  # first report, or a new run of the same bar
            self._start = (now, done)
        finished = total > 0 and done >= total
        if not finished and self._drawn and now - self._last_draw < self.min_interval:
            return
        self._last_draw = now
        frac = min(max(done / total, 0.0), 1.0) if total > 0 else 0.0
        filled = round(frac * self.width)
        counts = f"{done}/{total} {self.unit}".rstrip()
        line = f"{self.label} [{'#' * filled}{'.' * (self.width - filled)}] {frac * 100:3.0f}%  {counts}"
        elapsed = now - self._start[0]
        gained = done - self._start[1]
        if elapsed > 0 and gained > 0:
            per_second = gained / elapsed
            line += f"  {_rate(per_second)}"
            line += f"  in {_clock(elapsed)}" if finished else f"  ETA {_clock(max(total - done, 0) / per_second)}"
        # Pad over a longer previous line instead of relying on ANSI codes.
        pad = " " * max(0, self._drawn - len(line))
        self.stream.write("\r" + line + pad)
        self.stream.flush()
        self._drawn = len(line)

    def close(self) -> None:
        """Erase the bar so later output starts on a clean line."""
        if self.enabled and self._drawn:
            self.stream.write("\r" + " " * self._drawn + "\r")
            self.stream.flush()
            self._drawn = 0

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

