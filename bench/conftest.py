"""Fixtures for the sealed- and blind-profile benchmarks (pytest-benchmark).

The galleries are built once per module through
:func:`pprm.bench.setup.build_setup`, the code ``pprm bench`` runs: two
states, a synthetic gallery with planted mates enrolled at the responder, and
a requester trusted by it. The blind profile's galleries are built the same
way with the blind parameter set, and their blind database (diagonals) is
built before any benchmark runs.

Environment:
    PPRM_BENCH_SIZES: comma-separated gallery sizes (default ``10000,100000``).
    PPRM_BENCH_PARAMS: parameter set (default ``pprm-sealed-n8192-v1``);
        ``INSECURE-*`` sets are accepted for quick smoke runs only.
    PPRM_BENCH_BLIND_PARAMS: blind parameter set (default
        ``pprm-blind-n16384-v2``); ``INSECURE-blind-n1024-v2`` for smoke runs.
    PPRM_BENCH_ROUNDS: timed rounds of the full query (default 5).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from pprm.bench.setup import BenchSetup, build_setup
from pprm.crypto.blind_params import DEFAULT_BLIND_PARAMS
from pprm.node.requester import OpenedAnswer, Requester
from pprm.node.responder import Responder
from pprm.profile import Profile

SIZES = tuple(int(x) for x in os.environ.get("PPRM_BENCH_SIZES", "10000,100000").split(",") if x.strip())
PARAMS = os.environ.get("PPRM_BENCH_PARAMS", "pprm-sealed-n8192-v1")
BLIND_PARAMS = os.environ.get("PPRM_BENCH_BLIND_PARAMS", DEFAULT_BLIND_PARAMS)
ROUNDS = int(os.environ.get("PPRM_BENCH_ROUNDS", "5"))

Answers = Callable[[Requester, Responder, Callable[[], bytes]], tuple[list[bytes], list[OpenedAnswer]]]


def _size_id(n: int) -> str:
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "size" in metafunc.fixturenames:
        metafunc.parametrize("size", SIZES, ids=_size_id)


def _built(tmp_path_factory: pytest.TempPathFactory, profile: Profile,
           params: str) -> Iterator[Callable[[int], BenchSetup]]:
    """Builds (once per size) and returns the setups of one profile; deletes them all at the end."""
    root = str(tmp_path_factory.mktemp(f"pprm-bench-{profile}"))
    built: dict[int, BenchSetup] = {}

    def get(n: int) -> BenchSetup:
        if n not in built:
            setup = build_setup(n, params, profile=profile, allow_insecure=params.startswith("INSECURE"), root=root)
            if profile == "blind":
                setup.build_database()  # records database_seconds on the setup
            built[n] = setup
        return built[n]

    yield get
    for setup in built.values():
        setup.close()


@pytest.fixture(scope="module")
def setups(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[int], BenchSetup]]:
    """The sealed setup of a gallery size, built once."""
    yield from _built(tmp_path_factory, "sealed", PARAMS)


@pytest.fixture(scope="module")
def blind_setups(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[int], BenchSetup]]:
    """The blind setup of a gallery size, its database included, built once."""
    yield from _built(tmp_path_factory, "blind", BLIND_PARAMS)


@pytest.fixture(scope="session")
def bench_params() -> str:
    """The parameter set the galleries are built with."""
    return PARAMS


@pytest.fixture(scope="session")
def blind_bench_params() -> str:
    """The blind parameter set the blind galleries are built with."""
    return BLIND_PARAMS


@pytest.fixture(scope="session")
def bench_rounds() -> int:
    """Timed rounds for the benchmarks that set them explicitly."""
    return ROUNDS


@pytest.fixture
def smallest(setups: Callable[[int], BenchSetup]) -> BenchSetup:
    """The sealed setup of the smallest configured gallery size."""
    return setups(min(SIZES))


@pytest.fixture
def sealed(setups: Callable[[int], BenchSetup], size: int) -> BenchSetup:
    """The sealed setup for the parametrised gallery ``size``."""
    return setups(size)


@pytest.fixture
def blind(blind_setups: Callable[[int], BenchSetup], size: int) -> BenchSetup:
    """The blind setup for the parametrised gallery ``size`` (its database already built)."""
    return blind_setups(size)


@pytest.fixture
def timed_answers(benchmark, bench_rounds: int) -> Answers:
    """Times the responder's answer to a fresh query per round; every answer must be a hit.

    Call it with the requester, the responder and a function making the next
    query (every round needs its own: answered queries are refused as
    replays); it returns the answers and their openings, in round order.
    """
    def run(requester: Requester, responder: Responder,
            fresh_query: Callable[[], bytes]) -> tuple[list[bytes], list[OpenedAnswer]]:
        answers: list[bytes] = []

        def answer(msg: bytes) -> None:
            answers.append(responder.answer(msg))

        benchmark.pedantic(answer, setup=lambda: ((fresh_query(),), {}), rounds=bench_rounds, warmup_rounds=1,
                           iterations=1)
        opened = [requester.open(a) for a in answers]
        assert all(o.hit for o in opened), "a planted mate was missed"
        return answers, opened

    return run
