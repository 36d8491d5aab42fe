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
