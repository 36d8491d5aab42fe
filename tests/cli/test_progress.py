"""The stderr progress bar (pprm.cli.progress): tqdm, drawn on a terminal only."""

from __future__ import annotations

import io
import re

from pprm.cli.progress import ProgressBar, StagedProgress


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _frames(text: str) -> list[str]:
    """The bar's successive drawings (each starts with a carriage return)."""
    return [f.rstrip() for f in text.split("\r") if f.strip()]


def test_progress_bar_draws_only_on_a_terminal() -> None:
    plain = io.StringIO()
    bar = ProgressBar("enrolling", plain)
    assert bar.callback is None
    for done in (0, 5, 10):
        bar(done, 10)
    bar.close()
    assert plain.getvalue() == ""

    tty = _Tty()
    with ProgressBar("enrolling", tty, min_interval=0.0) as bar:
        assert bar.callback is bar
        bar(5, 10)
        assert re.search(r"enrolling: +50%\|#+[0-9]? *\| 5/10", _frames(tty.getvalue())[-1])
        bar(10, 10)
        assert re.search(r"100%\|#+\| 10/10", _frames(tty.getvalue())[-1])
    text = tty.getvalue()
    assert text.endswith("\r") and text.rsplit("\r", 2)[-2].strip() == ""  # erased on close
    assert "\n" not in text


def test_staged_progress_starts_a_bar_per_stage() -> None:
    tty = _Tty()
    with StagedProgress(tty) as staged:
        staged("enrolling DE", 1, 2)
        staged("enrolling FR", 2, 2)
    text = tty.getvalue()
    assert text.index("enrolling DE") < text.index("enrolling FR")
    assert "\n" not in text
    assert StagedProgress(io.StringIO()).enabled is False


def test_progress_bar_shows_the_unit_the_rate_and_the_time_left() -> None:
    tty = _Tty()
    with ProgressBar("building the blind database", tty, min_interval=0.0, unit="templates") as bar:
        bar(0, 2000)
        assert re.search(r"0/2000 \[00:00<\?, \? templates/s\]$", _frames(tty.getvalue())[-1])
        bar(500, 2000)
        last = _frames(tty.getvalue())[-1]
        # elapsed<remaining and the rate in templates per second
        assert re.search(r" 25%\|.*\| 500/2000 \[\d\d:\d\d<\d\d:\d\d, +[\d.]+ templates/s\]$", last), last
        bar(2000, 2000)
        assert "100%" in _frames(tty.getvalue())[-1]
    assert tty.getvalue().endswith("\r") and "\n" not in tty.getvalue()


def test_progress_bar_restarts_on_a_new_run_and_draws_the_end_despite_the_interval() -> None:
    tty = _Tty()
    bar = ProgressBar("enrolling", tty, min_interval=3600.0, unit="templates")
    bar(0, 100)
    bar(40, 100)  # inside the interval: not drawn
    assert " 40/100" not in tty.getvalue()
    bar(100, 100)  # the end always is
    assert "100/100" in _frames(tty.getvalue())[-1]
    bar(0, 7)  # a second run of the same bar starts over
    assert " 0/7" in _frames(tty.getvalue())[-1]
    bar.close()
    bar.close()  # twice is harmless
    assert tty.getvalue().endswith("\r")
