"""Fixtures for the sealed-profile benchmarks (pytest-benchmark).

The galleries are built once per module through :func:`pprm.cli.bench.build_setup`
(the same code as ``pprm bench``): two states, a synthetic gallery with planted
mates enrolled at the responder, and a requester trusted by it.

Environment:
    PPRM_BENCH_SIZES: comma-separated gallery sizes (default ``10000,100000``).
    PPRM_BENCH_PARAMS: parameter set (default ``pprm-sealed-n8192-v1``);
        ``INSECURE-*`` sets are accepted for quick smoke runs only.
    PPRM_BENCH_ROUNDS: timed rounds of the full query (default 5).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from pprm.cli.bench import BenchSetup, build_setup

SIZES = tuple(int(x) for x in os.environ.get("PPRM_BENCH_SIZES", "10000,100000").split(",") if x.strip())
PARAMS = os.environ.get("PPRM_BENCH_PARAMS", "pprm-sealed-n8192-v1")
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
