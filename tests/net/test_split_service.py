"""A split state served as two processes: ``pprm serve DIR`` (the front) and ``pprm keyservice serve KEYDIR``.

Tried as an attacker who owns the serving host would: the front process's
memory and open files are read through /proc after it has answered and
resolved, looking for any window of the CKKS secret key (as SEAL holds it in
memory) or the token key. The same scan of the key service finds them, so
the scan itself is shown to work.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import zstandard

from pprm import synthetic
from pprm.crypto import keys
from pprm.net import Directory, ask, send_follow_up
from pprm.net.wire import pack_delivery
from pprm.node.requester import Requester
from pprm.node.split import split
from pprm.node.state import State
from tests.helpers import INSECURE_BLIND, Node, Proc, build_network, plaintext_hits, serve, spawn, wait_for

N = 300
PURPOSE = "serious-crime"


def _secret_key_words(keydir: str) -> bytes:
    """The CKKS secret key's residues as SEAL keeps them in memory (little-endian uint64, NTT form)."""
    st = State.open(keydir)
    sk = keys.load_secret_key(st.ctx, st.secret_key_path())
    fd, path = tempfile.mkstemp(dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    os.close(fd)
    try:
        sk.data().save(path)
        raw = Path(path).read_bytes()
    finally:
        os.unlink(path)
    # SEAL's stream: a 16-byte header, the body zstd-compressed when byte 5 says so; then the
    # plaintext's own fields (parms id, coeff count, scale, the dynamic array's size) before the words.
    body = zstandard.ZstdDecompressor().decompress(raw[16:], max_output_size=1 << 28) if raw[5] == 2 else raw[16:]
    return body[32 + 8 + 8 + 16 + 8:]


def _readable_memory(pid: int) -> Iterator[bytes]:
    """Every readable mapping of a live process (same user; /proc/PID/mem)."""
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            m = re.match(r"([0-9a-f]+)-([0-9a-f]+) (\S+)", line)
            if m is None or m.group(3)[0] != "r" or "[vvar]" in line or "[vsyscall]" in line:
                continue
            start, end = int(m.group(1), 16), int(m.group(2), 16)
            try:
                mem.seek(start)
                yield mem.read(end - start)
            except (OSError, ValueError, OverflowError):
                continue  # a mapping that cannot be read (guard pages, device memory)


def _found_in_memory(pid: int, needles: list[bytes]) -> int:
    """How many of ``needles`` occur anywhere in the process's memory."""
    found: set[int] = set()
    for region in _readable_memory(pid):
        for i, n in enumerate(needles):
            if i not in found and n in region:
                found.add(i)
    return len(found)


@pytest.fixture
def split_world(tmp_path: Path) -> Iterator[tuple[dict[str, Node], str, Proc, Proc]]:
    nodes = build_network(str(tmp_path), ("DE", "FR"), n=N, seed=21)
    short = tempfile.mkdtemp(prefix="pks-")
    keydir = os.path.join(short, "ks")
    split(nodes["FR"].state.dir, keydir)
    ks = spawn(["keyservice", "serve", keydir])
    front = serve(nodes["FR"].state.dir)
    try:
        yield nodes, keydir, ks, front
    finally:
        for p in (front, ks):
            p.stop()
        shutil.rmtree(short, ignore_errors=True)


def _ask_and_resolve(nodes: dict[str, Node], front: Proc, index: int, case: str) -> str:
    fr = nodes["FR"].gallery
    probe = synthetic.mate_probe(fr, index, seed=index)
    truth = plaintext_hits(fr.templates, fr.references, probe, nodes["FR"].state.config.threshold)
    assert truth == {fr.references[index]}
    directory = Directory({"FR": front.url})
    (out,) = ask(nodes["DE"].state, probe, ["FR"], case=case, purpose=PURPOSE, directory=directory, timeout=60)
    assert out.status == "hit" and len(out.candidates) == 1, out
    assert out.answer_path is not None
    ack = send_follow_up(nodes["DE"].state, Path(out.answer_path).read_bytes(), out.candidates[0], directory)
    assert ack["status"] == "resolved"
    return fr.references[index]


def test_the_serving_process_holds_no_secret_key(split_world: Any) -> None:
    nodes, keydir, ks, front = split_world
    ref = _ask_and_resolve(nodes, front, 17, "C-SPLIT-1")
    resolved = [e["data"]["reference"] for e in State.open(nodes["FR"].state.dir).audit.entries()
                if e["event"] == "resolve"]
    assert resolved == [ref]
    words = _secret_key_words(keydir)
    assert len(words) >= 8 * 1024
    step = len(words) // 12
    needles = [words[i:i + 32] for i in range(step // 2, len(words) - 32, step)]
    token_key = Path(keydir, "private", "token.key").read_bytes()
    assert len(needles) >= 10 and len(token_key) == 32
    # The front answered and resolved, and never held either key.
    assert _found_in_memory(front.popen.pid, needles) == 0
    assert _found_in_memory(front.popen.pid, [token_key]) == 0
    # The key service does (the scan works).
    assert _found_in_memory(ks.popen.pid, needles) >= len(needles) // 2
    assert _found_in_memory(ks.popen.pid, [token_key]) == 1
    # No open file of the front is in the key service's directory.
    fds = Path(f"/proc/{front.popen.pid}/fd")
    targets = [os.readlink(p) for p in fds.iterdir() if p.exists()]
    assert not [t for t in targets if t.startswith(keydir)], targets
    # Both audit logs verify.
    State.open(nodes["FR"].state.dir).audit.verify()
    State.open(keydir).audit.verify()


def test_front_killed_mid_query_then_restarted(split_world: Any) -> None:
    nodes, keydir, _ks, front = split_world
    fr_dir = nodes["FR"].state.dir
    de = Requester(nodes["DE"].state)
    backlog = [pack_delivery(de.query("FR", synthetic.impostor_probe(512, seed=200 + i), f"C-B-{i}", PURPOSE))
               for i in range(40)]
    with httpx.Client(trust_env=False) as http:
        for d in backlog:
            r = http.post(f"{front.url}/v1/queries", content=d, headers={"content-type": "application/octet-stream"})
            assert r.status_code == 202, r.text
    wait_for(lambda: any(e["event"] == "answer" for e in State.open(fr_dir).audit.entries()), what="first answer")
    front.kill()
    restarted = serve(fr_dir)
    try:
        inbox = Path(fr_dir, "net", "inbox")
        wait_for(lambda: not any(p.name.endswith(".delivery") for p in inbox.iterdir()), what="inbox drained",
                 timeout=120)
        answers = [e["data"]["query_id"] for e in State.open(fr_dir).audit.entries() if e["event"] == "answer"]
        assert len(answers) == len(set(answers)) == len(backlog)
        released = [e["data"]["query_id"] for e in State.open(keydir).audit.entries() if e["event"] == "release"]
        committed = [e["data"]["query_id"] for e in State.open(keydir).audit.entries() if e["event"] == "commit"]
        # The key service decrypted each query once; a release the front had not confirmed was handed again.
        assert len(released) == len(set(released)) == len(backlog)
        assert set(committed) <= set(released)
        _ask_and_resolve(nodes, restarted, 23, "C-SPLIT-2")
    finally:
        code, err = restarted.stop()
    assert code in (0, -15), err
    State.open(fr_dir).audit.verify()
    State.open(keydir).audit.verify()


def test_key_service_killed_mid_query_then_restarted(split_world: Any) -> None:
    nodes, keydir, ks, front = split_world
    fr_dir = nodes["FR"].state.dir
    de = Requester(nodes["DE"].state)
    backlog = [de.query("FR", synthetic.impostor_probe(512, seed=300 + i), f"C-K-{i}", PURPOSE) for i in range(30)]
    with httpx.Client(trust_env=False) as http:
        for q in backlog:
            r = http.post(f"{front.url}/v1/queries", content=pack_delivery(q),
                          headers={"content-type": "application/octet-stream"})
            assert r.status_code == 202, r.text
        wait_for(lambda: any(e["event"] == "release" for e in State.open(keydir).audit.entries()),
                 what="first release")
        ks.kill()
        # The front keeps serving; the deliveries wait for the key service.
        assert http.get(f"{front.url}/v1/health").status_code == 200
        restarted = spawn(["keyservice", "serve", keydir])
        try:
            inbox = Path(fr_dir, "net", "inbox")
            wait_for(lambda: not any(p.name.endswith(".delivery") for p in inbox.iterdir()), what="inbox drained",
                     timeout=120)
            answers = [e["data"]["query_id"] for e in State.open(fr_dir).audit.entries() if e["event"] == "answer"]
            # Every query answered, none twice; no failure was recorded for any.
            assert len(answers) == len(set(answers)) == len(backlog)
            assert not list(Path(fr_dir, "net").rglob("*.error.json"))
            released = [e["data"]["query_id"] for e in State.open(keydir).audit.entries() if e["event"] == "release"]
            assert set(released) == set(answers)
            _ask_and_resolve(nodes, front, 29, "C-SPLIT-3")
        finally:
            code, err = restarted.stop()
        assert code in (0, -15), err
    State.open(fr_dir).audit.verify()
    State.open(keydir).audit.verify()


def test_blind_profile_over_http_with_the_key_service_apart(tmp_path: Path) -> None:
    nodes = build_network(str(tmp_path), ("DE", "HU"), n=N, seed=31, blind_params=INSECURE_BLIND,
                          profiles={"HU": "blind"})
    short = tempfile.mkdtemp(prefix="pks-")
    keydir = os.path.join(short, "ks")
    split(nodes["HU"].state.dir, keydir)
    ks = spawn(["keyservice", "serve", keydir])
    front = serve(nodes["HU"].state.dir)
    try:
        hu = nodes["HU"].gallery
        probe = synthetic.mate_probe(hu, 42, seed=42)
        truth = plaintext_hits(hu.templates, hu.references, probe, nodes["HU"].state.config.threshold)
        assert truth == {hu.references[42]}
        directory = Directory({"HU": front.url})
        (out,) = ask(nodes["DE"].state, probe, ["HU"], case="C-BL", purpose=PURPOSE, directory=directory, timeout=60)
        assert out.status == "hit" and out.profile == "blind" and len(out.candidates) == 1, out
        assert out.answer_path is not None
        ack = send_follow_up(nodes["DE"].state, Path(out.answer_path).read_bytes(), out.candidates[0], directory)
        assert ack["status"] == "resolved"
        (o2,) = ask(nodes["DE"].state, synthetic.impostor_probe(512, seed=5), ["HU"], case="C-BL2", purpose=PURPOSE,
                    directory=directory, timeout=60)
        assert o2.status == "no hit"
        resolved = [e["data"]["reference"] for e in State.open(keydir).audit.entries() if e["event"] == "resolve"]
        assert resolved == [hu.references[42]]
        # The front never built or held the blind database.
        assert not Path(nodes["HU"].state.dir, "blind").exists()
    finally:
        front.stop()
        ks.stop()
    State.open(nodes["HU"].state.dir).audit.verify()
    State.open(keydir).audit.verify()
    shutil.rmtree(short, ignore_errors=True)
