"""Fixtures for the sealed- and blind-profile benchmarks (pytest-benchmark).

The galleries are built once per module through :func:`pprm.cli.bench.build_setup`
(the same code as ``pprm bench``): two states, a synthetic gallery with planted
mates enrolled at the responder, and a requester trusted by it. The blind
profile's galleries are built the same way through
:func:`pprm.cli.bench_blind.build_blind_setup` (the code of ``pprm bench
--profile blind``), and their blind database (diagonals) is built before any
benchmark runs.

Environment:
    PPRM_BENCH_SIZES: comma-separated gallery sizes (default ``10000,100000``).
    PPRM_BENCH_PARAMS: parameter set (default ``pprm-sealed-n8192-v1``);
        ``INSECURE-*`` sets are accepted for quick smoke runs only.
    PPRM_BENCH_BLIND_PARAMS: blind parameter set (default
        ``pprm-blind-n16384-v1``); ``INSECURE-blind-n1024`` for smoke runs.
    PPRM_BENCH_ROUNDS: timed rounds of the full query (default 5).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from pprm.cli.bench import BenchSetup, build_setup
from pprm.cli.bench_blind import BlindSetup, build_blind_setup
from pprm.crypto.blind_params import DEFAULT_BLIND_PARAMS

SIZES = tuple(int(x) for x in os.environ.get("PPRM_BENCH_SIZES", "10000,100000").split(",") if x.strip())
PARAMS = os.environ.get("PPRM_BENCH_PARAMS", "pprm-sealed-n8192-v1")
BLIND_PARAMS = os.environ.get("PPRM_BENCH_BLIND_PARAMS", DEFAULT_BLIND_PARAMS)
ROUNDS = int(os.environ.get("PPRM_BENCH_ROUNDS", "5"))


def _size_id(n: int) -> str:
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "size" in metafunc.fixturenames:
        metafunc.parametrize("size", SIZES, ids=_size_id)


@pytest.fixture(scope="module")
def setups(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[int], BenchSetup]]:
    """Builds (once) and returns the benchmark setup of a gallery size; deletes them all at the end."""
    root = str(tmp_path_factory.mktemp("pprm-bench"))
    built: dict[int, BenchSetup] = {}

    def get(n: int) -> BenchSetup:
        if n not in built:
            built[n] = build_setup(n, PARAMS, allow_insecure=PARAMS.startswith("INSECURE"), root=root)
        return built[n]

    yield get
    for setup in built.values():
        setup.close()


@pytest.fixture(scope="session")
def bench_params() -> str:
    """The parameter set the galleries are built with."""
    return PARAMS


@pytest.fixture(scope="session")
def bench_rounds() -> int:
    """Timed rounds for the benchmarks that set them explicitly."""
    return ROUNDS


@pytest.fixture
def smallest(setups: Callable[[int], BenchSetup]) -> BenchSetup:
    """The setup of the smallest configured gallery size."""
    return setups(min(SIZES))


@pytest.fixture
def sealed(setups: Callable[[int], BenchSetup], size: int) -> BenchSetup:
    """The setup for the parametrised gallery ``size``."""
    return setups(size)


@pytest.fixture(scope="module")
def blind_setups(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[int], BlindSetup]]:
    """Builds (once) and returns the blind setup of a gallery size, database included; deletes them at the end."""
    root = str(tmp_path_factory.mktemp("pprm-bench-blind"))
    built: dict[int, BlindSetup] = {}

    def get(n: int) -> BlindSetup:
        if n not in built:
            setup = build_blind_setup(n, BLIND_PARAMS, allow_insecure=BLIND_PARAMS.startswith("INSECURE"), root=root)
            setup.build_database()  # records database_seconds on the setup
            built[n] = setup
        return built[n]

    yield get
    for setup in built.values():
        setup.close()


@pytest.fixture(scope="session")
def blind_bench_params() -> str:
    """The blind parameter set the blind galleries are built with."""
    return BLIND_PARAMS


@pytest.fixture
def blind(blind_setups: Callable[[int], BlindSetup], size: int) -> BlindSetup:
    """The blind setup for the parametrised gallery ``size`` (its database already built)."""
    return blind_setups(size)
