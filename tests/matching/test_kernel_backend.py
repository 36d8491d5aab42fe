"""Choosing the kernel backend on first use: the environment, the self-check and its fallbacks.

Each test starts from an undecided process state (no backend chosen, no
self-check run) and puts the previous one back afterwards. Missing or broken
native builds are simulated by replacing ``kernel_native.available`` and
``kernel_selfcheck.native_passes_self_check``; the real self-check runs
against deliberately wrong kernels when the extension is built.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator

import numpy as np
import pytest

import pprm
from pprm.errors import BackendError, BackendWarning, PprmWarning
from pprm.matching import kernel, kernel_native, kernel_numpy, kernel_selfcheck

Q0 = 1152921504606830593
native_built = pytest.mark.skipif(not kernel_native.available(), reason="native kernel pprm._native_kernel not built")


@pytest.fixture
def undecided(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """No backend chosen yet and no backend variables set; restored after the test."""
    monkeypatch.setattr(kernel, "_native_ok", None)
    monkeypatch.setattr(kernel, "_selected", None)
    for var in ("PPRM_BACKEND", "PPRM_REQUIRE_NATIVE", "PPRM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    yield monkeypatch


def _native(monkeypatch: pytest.MonkeyPatch, *, built: bool, passes: bool) -> list[int]:
    """Pretend the native build is (or is not) there and passes (or fails) its self-check; count the checks."""
    runs: list[int] = []

    def check() -> bool:
        runs.append(1)
        return built and passes

    monkeypatch.setattr(kernel_native, "available", lambda: built)
    monkeypatch.setattr(kernel_selfcheck, "native_passes_self_check", check)
    return runs


def _choose() -> tuple[str | BackendError, list[str]]:
    """``kernel.backend()`` (or the error it raises) and the warnings it gave (each a BackendWarning)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            chosen: str | BackendError = kernel.backend()
        except BackendError as exc:
            chosen = exc
    given = [w for w in caught if issubclass(w.category, RuntimeWarning)]
    assert all(w.category is BackendWarning for w in given)
    return chosen, [str(w.message) for w in given]


FAILED = "pprm native kernel failed its self-check against numpy and SEAL; using numpy"
NOT_BUILT = "pprm native kernel is not built (no C compiler at install?); using the numpy kernel"


def test_a_passing_native_build_is_chosen_once(undecided: pytest.MonkeyPatch) -> None:
    runs = _native(undecided, built=True, passes=True)
    assert _choose() == ("native", [])
    assert kernel.available_backends() == ["native", "numpy"]
    assert kernel.backend() == kernel.BACKEND == pprm.BACKEND == pprm.backend() == "native"
    assert len(runs) == 1


@pytest.mark.parametrize(("env", "expected"), [("", "numpy"), ("numpy", "numpy"), (" NumPy ", "numpy")])
def test_a_failing_self_check_falls_back_to_numpy_with_a_warning(
    undecided: pytest.MonkeyPatch, env: str, expected: str
) -> None:
    _native(undecided, built=True, passes=False)
    undecided.setenv("PPRM_BACKEND", env)
    assert _choose() == (expected, [FAILED])
    assert kernel.available_backends() == ["numpy"]


def test_a_missing_build_falls_back_to_numpy_with_a_warning_unless_numpy_is_asked_for(
    undecided: pytest.MonkeyPatch,
) -> None:
    _native(undecided, built=False, passes=False)
    assert _choose() == ("numpy", [NOT_BUILT])
    undecided.setattr(kernel, "_native_ok", None)
    undecided.setattr(kernel, "_selected", None)
    undecided.setenv("PPRM_BACKEND", "numpy")
    assert _choose() == ("numpy", [])


@pytest.mark.parametrize("built", [False, True])
def test_require_native_makes_a_missing_or_failing_build_an_error(undecided: pytest.MonkeyPatch, built: bool) -> None:
    runs = _native(undecided, built=built, passes=False)
    undecided.setenv("PPRM_REQUIRE_NATIVE", "1")
    for env in ("", "numpy", "native"):
        undecided.setenv("PPRM_BACKEND", env)
        chosen, _ = _choose()
        assert isinstance(chosen, BackendError) and "PPRM_REQUIRE_NATIVE=1" in str(chosen)
    # Nothing is cached after an error, but the self-check itself ran once.
    assert kernel._selected is None and len(runs) == 1
    with pytest.raises(BackendError, match="PPRM_REQUIRE_NATIVE"):
        _ = kernel.BACKEND
    with pytest.raises(BackendError, match="PPRM_REQUIRE_NATIVE"):
        _ = pprm.BACKEND
    with pytest.raises(BackendError, match="PPRM_REQUIRE_NATIVE"):
        kernel.multiply_accumulate(np.zeros((1, 2, 1, 4), np.uint64), np.ones(1, np.int64), (Q0,))
    with pytest.raises(BackendError, match="PPRM_REQUIRE_NATIVE"):
        kernel.plain_mac(np.zeros((1, 1, 1, 4), np.uint64), np.zeros((1, 2, 1, 4), np.uint64), (Q0,))


def test_require_native_accepts_a_passing_build(undecided: pytest.MonkeyPatch) -> None:
    _native(undecided, built=True, passes=True)
    undecided.setenv("PPRM_REQUIRE_NATIVE", "1")
    undecided.setenv("PPRM_BACKEND", "numpy")
    assert _choose() == ("numpy", [])


@pytest.mark.parametrize(("built", "passes"), [(False, False), (True, False)])
def test_forcing_an_unavailable_backend_is_an_error(undecided: pytest.MonkeyPatch, built: bool, passes: bool) -> None:
    _native(undecided, built=built, passes=passes)
    for env in ("native", "cuda"):
        undecided.setenv("PPRM_BACKEND", env)
        chosen, _ = _choose()
        assert isinstance(chosen, BackendError)
        assert f"PPRM_BACKEND={env!r} is not available here (have: numpy)" in str(chosen)


def test_concurrent_first_use_runs_the_self_check_once(undecided: pytest.MonkeyPatch) -> None:
    runs: list[int] = []

    def slow_check() -> bool:
        runs.append(1)
        time.sleep(0.05)  # wide enough for every thread to arrive while the check runs
        return False

    undecided.setattr(kernel_native, "available", lambda: False)
    undecided.setattr(kernel_selfcheck, "native_passes_self_check", slow_check)
    undecided.setenv("PPRM_BACKEND", "numpy")
    results: list[str] = []
    start = threading.Barrier(8)

    def first_use() -> None:
        start.wait()
        results.append(kernel.backend())

    workers = [threading.Thread(target=first_use) for _ in range(8)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert results == ["numpy"] * 8 and len(runs) == 1


def test_dispatch_calls_the_chosen_backend(undecided: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    for module in (kernel_numpy, kernel_native):
        for name in ("multiply_accumulate", "plain_mac"):
            undecided.setattr(module, name, lambda *a, _m=module.__name__, _n=name: calls.append(f"{_m}.{_n}"))
    block, w = np.zeros((1, 2, 1, 4), np.uint64), np.ones(1, np.int64)
    pts, cts = np.zeros((1, 1, 1, 4), np.uint64), np.zeros((1, 2, 1, 4), np.uint64)
    for chosen in ("numpy", "native"):
        undecided.setattr(kernel, "_selected", chosen)
        kernel.multiply_accumulate(block, w, (Q0,))
        kernel.plain_mac(pts, cts, (Q0,))
    assert calls == [
        "pprm.matching.kernel_numpy.multiply_accumulate",
        "pprm.matching.kernel_numpy.plain_mac",
        "pprm.matching.kernel_native.multiply_accumulate",
        "pprm.matching.kernel_native.plain_mac",
    ]


def test_lazy_attributes() -> None:
    assert "BACKEND" in dir(kernel) and "BACKEND" in kernel.__all__ and "backend" in kernel.__all__
    assert "BACKEND" in pprm.__all__ and "backend" in pprm.__all__
    assert kernel.BACKEND == pprm.BACKEND == kernel.backend()
    with pytest.raises(AttributeError):
        _ = kernel.NO_SUCH_NAME  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        _ = pprm.NO_SUCH_NAME  # type: ignore[attr-defined]


# -- the real self-check ---------------------------------------------------------


@native_built
def test_the_real_self_check_passes_the_built_kernels() -> None:
    assert kernel_selfcheck.native_passes_self_check()


@native_built
@pytest.mark.parametrize("broken", ["multiply_accumulate", "plain_mac"])
@pytest.mark.parametrize("against", ["numpy", "seal"])
def test_a_wrong_native_kernel_fails_the_self_check_and_numpy_is_used(
    undecided: pytest.MonkeyPatch, broken: str, against: str
) -> None:
    right = getattr(kernel_native, broken)

    def off_by_one(*args: object, **kwargs: object) -> np.ndarray:
        out: np.ndarray = right(*args, **kwargs)
        flat = out.reshape(-1)
        flat[-1] = flat[-1] ^ np.uint64(1)
        return out

    undecided.setattr(kernel_native, broken, off_by_one)
    if against == "seal":
        # Only the SEAL comparison can notice: numpy agrees with whatever native returns.
        undecided.setattr(kernel_selfcheck, "native_matches_numpy", lambda seed=0: True)
    assert not kernel_selfcheck.native_passes_self_check()
    assert _choose() == ("numpy", [FAILED])


@native_built
def test_an_invalid_thread_count_stops_the_choice(undecided: pytest.MonkeyPatch) -> None:
    undecided.setenv("PPRM_THREADS", "two")
    with pytest.raises(BackendError, match="PPRM_THREADS"):
        kernel.backend()
    assert kernel._selected is None
    undecided.delenv("PPRM_THREADS")
    assert kernel.backend() == "native"


# -- the environment, end to end -------------------------------------------------


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("PPRM_BACKEND", "PPRM_REQUIRE_NATIVE", "PPRM_THREADS")}
    return subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True,
                          timeout=120, check=False)


def test_a_bad_backend_variable_fails_on_first_use_not_at_import() -> None:
    code = (
        "import pprm\n"
        "from pprm.errors import BackendError\n"
        "try:\n"
        "    pprm.BACKEND\n"
        "except BackendError as exc:\n"
        "    print('refused:', exc)\n"
    )
    done = _python(code, PPRM_BACKEND="cuda")
    assert done.returncode == 0, done.stderr
    assert "refused: PPRM_BACKEND='cuda' is not available here" in done.stdout


@pytest.mark.parametrize("forced", ["numpy", "native"])
def test_forced_backend_end_to_end(forced: str) -> None:
    if forced == "native" and "native" not in kernel.available_backends():
        pytest.skip("native kernel not built or failing its self-check")
    env = {"PPRM_BACKEND": forced} | ({"PPRM_REQUIRE_NATIVE": "1"} if forced == "native" else {})
    done = _python("import pprm; print(pprm.BACKEND)", **env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == forced


@pytest.mark.parametrize("require", ["", "1"])
def test_a_missing_build_end_to_end(require: str) -> None:
    # None in sys.modules makes "import pprm._native_kernel" fail as if it had never been built.
    code = (
        "import sys\n"
        "sys.modules['pprm._native_kernel'] = None\n"
        "import pprm\n"
        "print('imported')\n"
        "print(pprm.BACKEND)\n"
    )
    done = _python(code, PPRM_REQUIRE_NATIVE=require)
    assert done.stdout.startswith("imported\n")
    if require:
        assert done.returncode != 0
        assert "BackendError: PPRM_REQUIRE_NATIVE=1 but the native kernel is not built" in done.stderr
    else:
        assert done.returncode == 0, done.stderr
        assert done.stdout == "imported\nnumpy\n"
        # One line, no source line under it (warnings quote the calling line by default).
        assert done.stderr == f"pprm:0: BackendWarning: {NOT_BUILT}\n"


def test_the_fallback_warning_can_be_filtered_and_made_an_error(undecided: pytest.MonkeyPatch) -> None:
    _native(undecided, built=False, passes=False)
    assert issubclass(BackendWarning, PprmWarning) and issubclass(BackendWarning, RuntimeWarning)
    assert {"PprmWarning", "BackendWarning"} <= set(pprm.__all__)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PprmWarning)
        with pytest.raises(BackendWarning, match="not built"):
            kernel.backend()
    undecided.setattr(kernel, "_native_ok", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", category=BackendWarning)
        assert kernel.backend() == "numpy"
    assert caught == []


def test_a_failing_self_check_end_to_end_warns_in_one_line() -> None:
    code = (
        "from pprm.matching import kernel_native, kernel_selfcheck\n"
        "kernel_native.available = lambda: True\n"
        "kernel_selfcheck.native_passes_self_check = lambda: False\n"
        "import pprm\n"
        "print(pprm.BACKEND)\n"
    )
    done = _python(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "numpy\n"
    assert done.stderr == f"pprm:0: BackendWarning: {FAILED}\n"
