"""The stderr progress bar (pprm.cli.progress): drawn on a terminal only."""

from __future__ import annotations

import io

from pprm.cli.progress import ProgressBar, StagedProgress


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_draws_only_on_a_terminal() -> None:
    plain = io.StringIO()
    bar = ProgressBar("enrolling", plain)
    assert bar.callback is None
    bar(5, 10)
    bar.close()
    assert plain.getvalue() == ""

    tty = _Tty()
    with ProgressBar("enrolling", tty, min_interval=0.0) as bar:
        assert bar.callback is bar
        bar(5, 10)
        assert tty.getvalue().endswith("enrolling [###############...............]  50%  5/10")
        bar(10, 10)
        assert "100%  10/10" in tty.getvalue()
    assert tty.getvalue().endswith("\r")  # erased on close, cursor at line start
    assert "\n" not in tty.getvalue()


def test_staged_progress_starts_a_bar_per_stage() -> None:
    tty = _Tty()
    with StagedProgress(tty) as staged:
        staged("enrolling DE", 1, 2)
        staged("enrolling FR", 2, 2)
    text = tty.getvalue()
    assert text.index("enrolling DE") < text.index("enrolling FR")
    assert StagedProgress(io.StringIO()).enabled is False


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_bar_shows_the_unit_the_rate_and_the_time_left() -> None:
    tty, clock = _Tty(), _Clock()
    with ProgressBar("building the blind database", tty, min_interval=0.0, unit="templates", clock=clock) as bar:
        bar(0, 2000)
        assert tty.getvalue().endswith("  0%  0/2000 templates")  # nothing measured yet: no rate, no ETA
        clock.now += 4.0
        bar(500, 2000)
        assert tty.getvalue().endswith(" 25%  500/2000 templates  125/s  ETA 0:12")
        clock.now += 8.0
        bar(1500, 2000)
        assert tty.getvalue().endswith(" 75%  1500/2000 templates  125/s  ETA 0:04")
        clock.now += 4.5
        bar(2000, 2000)
        # At the end: the time it took, not an ETA (padded over the longer line before it).
        assert tty.getvalue().rstrip(" ").endswith("100%  2000/2000 templates  121/s  in 0:16")
    assert tty.getvalue().endswith("\r") and "\n" not in tty.getvalue()


def test_progress_bar_rates_below_ten_and_long_etas() -> None:
    tty, clock = _Tty(), _Clock()
    bar = ProgressBar("enrolling", tty, min_interval=0.0, clock=clock)
    bar(0, 100_000)
    clock.now += 10.0
    bar(25, 100_000)
    assert tty.getvalue().endswith("  2.5/s  ETA 11:06:30")
    bar.close()
    # Nothing at all off a terminal, whatever is reported.
    plain = io.StringIO()
    quiet = ProgressBar("enrolling", plain, unit="templates", clock=clock)
    for done in (0, 50, 100):
        quiet(done, 100)
    quiet.close()
    assert plain.getvalue() == ""
