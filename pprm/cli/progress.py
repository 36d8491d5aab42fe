"""A dependency-free progress bar for long CLI steps, drawn on stderr.

The bar draws only when its stream is a terminal: piped or captured stderr
(scripts, CI, tests) gets no carriage returns or partial lines. Progress
callbacks in pprm take ``(done, total)``; :class:`ProgressBar` is one.
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


class ProgressBar:
    """``label [#####.....]  45%  450/1000`` redrawn in place.

    Args:
        label: what is being done, e.g. ``enrolling``.
        stream: where to draw; ``sys.stderr`` when None.
        width: characters inside the brackets.
        min_interval: seconds between redraws (the final one is always drawn).
        force: draw even when the stream is not a terminal (for tests).
    """

    def __init__(self, label: str, stream: TextIO | None = None, *, width: int = 30,
                 min_interval: float = 0.1, force: bool = False) -> None:
        self.label = label
        self.stream = sys.stderr if stream is None else stream
        self.width = width
        self.min_interval = min_interval
        self.enabled = force or _is_tty(self.stream)
        self._last_draw = 0.0
        self._drawn = 0  # length of the line on screen, 0 if none

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
        now = time.monotonic()
        finished = total > 0 and done >= total
        if not finished and self._drawn and now - self._last_draw < self.min_interval:
            return
        self._last_draw = now
        frac = min(max(done / total, 0.0), 1.0) if total > 0 else 0.0
        filled = round(frac * self.width)
        line = f"{self.label} [{'#' * filled}{'.' * (self.width - filled)}] {frac * 100:3.0f}%  {done}/{total}"
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
    """

    def __init__(self, stream: TextIO | None = None, *, force: bool = False) -> None:
        self.stream = sys.stderr if stream is None else stream
        self.force = force
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
            self._bar = ProgressBar(stage, self.stream, force=self.force)
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

