"""What a split costs: the sealed query in one process against the front plus a key service over a unix socket.

:func:`measure_split` times the full responder path (verify, match, decide,
mint, sign, box) on a benchmark setup first in-process, then after splitting
the responder (:func:`pprm.node.split.split`) with its key service running as
its own ``pprm keyservice serve`` process, as deployed. The same requester
sends fresh queries to both; the answers to planted mates must be hits in
both, so a fast but wrong path cannot pass unnoticed. The split is undone at
the end (:func:`pprm.node.split.join`), leaving the setup as it was.
"""

from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from pprm.bench.setup import RESPONDER, BenchSetup
from pprm.errors import StateError
from pprm.matching import kernel
from pprm.node.remote_keys import RemoteKeyService
from pprm.node.requester import Requester
from pprm.node.responder import Responder
from pprm.node.split import join, split
from pprm.node.state import State
from pprm.synthetic import mate_probe

__all__ = ["measure_split", "start_key_service"]


def start_key_service(keydir: str, timeout: float = 60.0) -> subprocess.Popen[str]:
    """Start ``pprm keyservice serve KEYDIR`` and wait until it listens.

    Raises:
        StateError: it did not start.
    """
    # Our own interpreter and module, the directory made by the caller: no untrusted input.
    proc = subprocess.Popen([sys.executable, "-m", "pprm.cli.main", "keyservice", "serve", keydir],  # noqa: S603
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if "listening on" in line:
            return proc
        if not line:
            break
    proc.kill()
    raise StateError(f"the key service did not start: {proc.communicate()[1].strip()[-300:]}")


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _timed(setup: BenchSetup, answer: Callable[[bytes], bytes], rounds: int, tag: str) -> list[float]:
    """Seconds per full query (fresh mate probes; each answer must be a hit)."""
    requester = Requester(setup.requester)
    times = []
    for i in range(rounds + 1):
        index = (i * 7919 + 13) % len(setup)
        q = requester.query(RESPONDER, mate_probe(setup.gallery, index, i), case=f"{tag}-{i}",
                            purpose="serious-crime")
        t0 = time.perf_counter()
        a = answer(q)
        dt = time.perf_counter() - t0
        if not requester.open(a).hit:
            raise AssertionError("a planted mate was not a hit")
        if i:  # the first round warms caches (gallery maps, keys)
            times.append(dt)
    return times


def measure_split(setup: BenchSetup, rounds: int = 5) -> dict[str, Any]:
    """Median full sealed query in-process and split (key service over a unix socket), same run.

    Args:
        setup: a sealed benchmark setup (its responder is split and joined again).
        rounds: timed queries per layout.

    Returns:
        ``n``, ``in_process_ms``, ``split_ms``, ``overhead`` (split / in-process - 1),
        the per-round times, the bytes handed to the key service per query,
        and the backend.
    """
    st = setup.responder
    local = _timed(setup, Responder(State.open(st.dir)).answer, rounds, "LOCAL")
    short = tempfile.mkdtemp(prefix="pks-")
    keydir = os.path.join(short, "ks")
    proc = None
    try:
        split(st.dir, keydir)
        proc = start_key_service(keydir)
        front = State.open(st.dir)
        remote = RemoteKeyService(front)
        responder = Responder(front, key_service=remote)
        apart = _timed(setup, responder.answer, rounds, "SPLIT")
        masked = front.matcher().match(mate_probe(setup.gallery, 0, 0), front.config.threshold)
        handed = sum(len(c) for c in masked.ciphertexts)
    finally:
        if proc is not None:
            _stop(proc)
        if os.path.exists(keydir):
            join(st.dir, keydir)
        shutil.rmtree(short, ignore_errors=True)
    lm, sm = statistics.median(local), statistics.median(apart)
    return {"n": len(setup), "backend": kernel.backend(), "in_process_ms": lm * 1e3, "split_ms": sm * 1e3,
            "overhead": sm / lm - 1.0, "in_process_rounds_ms": [x * 1e3 for x in local],
            "split_rounds_ms": [x * 1e3 for x in apart], "key_service_bytes": handed,
            "key_service_bytes_per_template": handed / len(setup)}
