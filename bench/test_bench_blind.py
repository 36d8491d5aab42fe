"""Benchmarks of the blind query: the responder's answer and the requester's query.

Run with ``pytest bench/test_bench_blind.py --benchmark-only`` (sizes from
``PPRM_BENCH_SIZES``, e.g. ``PPRM_BENCH_SIZES=10000`` for 10k only). The
galleries and their blind databases (diagonals) are built before anything is
timed; building the 100k one takes about a minute. Nothing here asserts a
time: figures go to pytest-benchmark's table, sizes and ratios to
``extra_info``. Correctness is checked on the side: every answer to a
planted mate must be a hit, and the follow-up of one must resolve to the
planted reference.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from pprm.bench.report import load_average, numpy_baseline_ms
from pprm.bench.setup import RESPONDER, BenchSetup
from pprm.crypto import blind_keys
from pprm.crypto.answer_codec import answer_bytes
from pprm.matching import kernel
from pprm.matching.blind import BlindMatcher
from pprm.matching.blind_client import encrypt_probe
from pprm.matching.templates import normalise_probe
from pprm.node.keyservice import KeyService
from pprm.node.requester import Requester
from pprm.node.responder import Responder
from pprm.synthetic import mate_probe


def _figures(blind: BenchSetup, params: str, median_s: float) -> dict[str, Any]:
    n = len(blind)
    st = blind.responder
    ctx = st.blind_ctx
    probe = normalise_probe(mate_probe(blind.gallery, 0, 999), ctx.params.dim)
    numpy_ms = numpy_baseline_ms(blind.templates, probe)
    db = st.blind_store.database(st.gallery().version, KeyService(st).export_templates)
    return {
        "params": params,
        "backend": kernel.backend(),
        "n": n,
        "blocks": db.blocks,
        "db_build_s": blind.database_seconds,
        "db_ram_bytes_per_template": db.nbytes / n,
        "us_per_template": median_s * 1e6 / n,
        "numpy_ms": numpy_ms,
        "ratio_to_numpy": median_s * 1e3 / numpy_ms,
        "answer_block_bytes": answer_bytes(ctx),
        "load_average": load_average(),
    }


def test_blind_answer(benchmark, blind, blind_bench_params, timed_answers):
    """Full responder path per blind query: verify, load keys, match, mask/flood/rescale, sign and box."""
    requester = Requester(blind.requester)
    responder = Responder(blind.responder)
    ks = KeyService(blind.responder)
    n = len(blind)
    case = f"BENCH-BLIND-{n}"
    counter = itertools.count()
    sent: list[tuple[int, bytes]] = []
    announcements: list[bytes] = []
    key_parts: dict[str, int] = {}

    def fresh_query() -> bytes:
        # All queries share one case, hence one key, announced once.
        i = next(counter)
        index = (i * 7919) % n
        ann, msg = requester.blind_query(RESPONDER, mate_probe(blind.gallery, index, i), case, "serious-crime")
        if ann is not None:
            _env, body = ks.verify_announcement(ann)  # read-only: sizes of the two parts
            key_parts.update(announcement_public_bytes=len(body.public), announcement_galois_bytes=len(body.galois),
                             announcement_relin_bytes=len(body.relin))
            responder.accept_keys(ann)
            announcements.append(ann)
        sent.append((index, msg))
        return msg

    answers, opened = timed_answers(requester, responder, fresh_query)
    # The follow-up retires the case's key: done once, last.
    index, _msg = sent[-1]
    followup = requester.follow_up(answers[-1], opened[-1].candidates[0])
    assert ks.resolve(followup).reference == blind.gallery.references[index]

    info = _figures(blind, blind_bench_params, benchmark.stats.stats.median)
    slots = info["blocks"] * blind.responder.blind_ctx.params.templates_per_block
    info.update(key_parts, query_bytes=len(sent[0][1]), announcement_bytes=len(announcements[0]),
                announcement_mb=len(announcements[0]) / 1e6, answer_bytes=len(answers[0]),
                answer_bytes_per_template=len(answers[0]) / n, answer_bytes_per_position=len(answers[0]) / slots,
                candidates=[len(o.candidates) for o in opened])
    benchmark.extra_info.update(info)


def test_blind_query(benchmark, blind, blind_bench_params, bench_rounds):
    """The requester's side of a query with an announced key: encrypt the probe, box, sign, record."""
    requester = Requester(blind.requester)
    probe = mate_probe(blind.gallery, 1, 1)
    announcement, _first = requester.blind_query(RESPONDER, probe, "BENCH-BLIND-Q", "serious-crime")
    assert announcement is not None

    def query() -> bytes:
        return requester.blind_query(RESPONDER, probe, "BENCH-BLIND-Q", "serious-crime")[1]

    msg = benchmark.pedantic(query, rounds=bench_rounds, warmup_rounds=1, iterations=1)
    benchmark.extra_info.update(params=blind_bench_params, backend=kernel.backend(), n=len(blind),
                                query_bytes=len(msg), announcement_bytes=len(announcement),
                                announcement_mb=len(announcement) / 1e6)


@pytest.mark.parametrize("checks", [True, False], ids=["checks", "no-checks"])
def test_blind_matcher_checks(benchmark, blind, blind_bench_params, bench_rounds, checks):
    """The matcher alone, with and without the malicious-requester checks (re-randomise, project, window norms).

    ``no-checks`` is a measurement-only configuration: the ratio of the two
    medians is what the checks cost (the target: at most 30% at 100k with
    the native kernel).
    """
    st = blind.responder
    ctx = st.blind_ctx
    p = ctx.params
    db = st.blind_store.database(st.gallery().version, KeyService(st).export_templates)
    pair = blind_keys.generate(ctx)
    keys = blind_keys.load_announced(ctx, pair.public_blob, pair.galois_blob, pair.relin_blob)
    probe = ctx.load_seeded_ciphertext(encrypt_probe(ctx, pair.secret_key, mate_probe(blind.gallery, 2, 2)),
                                       scale=float(2**p.probe_scale_bits))
    matcher = BlindMatcher(ctx, db, checks=checks)
    benchmark.pedantic(lambda: matcher.answer(probe, keys, 0.4), rounds=bench_rounds, warmup_rounds=1, iterations=1)
    benchmark.extra_info.update(params=blind_bench_params, backend=kernel.backend(), n=len(blind), checks=checks,
                                blocks=db.blocks, key_bytes=len(pair.public_blob) + len(pair.galois_blob)
                                + len(pair.relin_blob))
