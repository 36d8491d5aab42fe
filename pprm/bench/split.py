"""What a split costs: the sealed query in one process against the front plus a key service over a unix socket.

:func:`measure_split` times the full responder path (verify, match, decide,
mint, sign, box) on a benchmark setup in-process and split, alternately, in
the same run: a copy of the responder (gallery blocks hard-linked) is split
(:func:`pprm.node.split.split`) and its key service runs as its own
``pprm keyservice serve`` process, as deployed. The same requester sends
fresh queries to both; the answers to planted mates must be hits in both,
so a fast but wrong path cannot pass unnoticed. The setup is left as it was.
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
from typing import Any

from pprm.bench.setup import RESPONDER, BenchSetup
from pprm.errors import StateError
from pprm.matching import kernel
from pprm.node.remote_keys import RemoteKeyService
from pprm.node.requester import Requester
from pprm.node.responder import Responder
from pprm.node.split import split
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


def _copy_state(src: str, dst: str) -> None:
    """A second copy of a state directory; gallery blocks hard-linked (they are never written in place)."""
    blocks = os.path.join(src, "gallery", "blocks")

    def copy(a: str, b: str) -> object:
        if os.path.dirname(a) == blocks:
            os.link(a, b)
            return b
        return shutil.copy2(a, b)

    shutil.copytree(src, dst, copy_function=copy, ignore=shutil.ignore_patterns(".serve.lock", "net"))


def measure_split(setup: BenchSetup, rounds: int = 5) -> dict[str, Any]:
    """Median full sealed query in-process and split (key service over a unix socket), same run.

    The two layouts answer alternately (a second copy of the responder is
    split and served), so both see the same machine load.

    Args:
        setup: a sealed benchmark setup (left as it was).
        rounds: timed queries per layout.

    Returns:
        ``n``, ``in_process_ms``, ``split_ms``, ``overhead`` (split / in-process - 1),
        the per-round times, the bytes handed to the key service per query,
        and the backend.
    """
    st = setup.responder
    short = tempfile.mkdtemp(prefix="pks-")
    apart_dir = os.path.join(short, "front")
    keydir = os.path.join(short, "ks")
    proc = None
    try:
        _copy_state(st.dir, apart_dir)
        split(apart_dir, keydir)
        proc = start_key_service(keydir)
        front = State.open(apart_dir)
        layouts = {"in_process": Responder(State.open(st.dir)),
                   "split": Responder(front, key_service=RemoteKeyService(front))}
        requester = Requester(setup.requester)
        times: dict[str, list[float]] = {k: [] for k in layouts}
        for i in range(rounds + 1):
            for name, responder in layouts.items():
                index = (i * 7919 + 13 + len(name)) % len(setup)
                q = requester.query(RESPONDER, mate_probe(setup.gallery, index, i), case=f"{name}-{i}",
                                    purpose="serious-crime")
                t0 = time.perf_counter()
                a = responder.answer(q)
                dt = time.perf_counter() - t0
                if not requester.open(a).hit:
                    raise AssertionError("a planted mate was not a hit")
                if i:  # the first round warms caches (gallery maps, keys)
                    times[name].append(dt)
        masked = front.matcher().match(mate_probe(setup.gallery, 0, 0), front.config.threshold)
        handed = sum(len(c) for c in masked.ciphertexts)
    finally:
        if proc is not None:
            _stop(proc)
        shutil.rmtree(short, ignore_errors=True)
    lm, sm = statistics.median(times["in_process"]), statistics.median(times["split"])
    return {"n": len(setup), "backend": kernel.backend(), "in_process_ms": lm * 1e3, "split_ms": sm * 1e3,
            "overhead": sm / lm - 1.0, "in_process_rounds_ms": [x * 1e3 for x in times["in_process"]],
            "split_rounds_ms": [x * 1e3 for x in times["split"]], "key_service_bytes": handed,
            "key_service_bytes_per_template": handed / len(setup)}
