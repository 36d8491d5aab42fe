"""csprng_bytes: a fresh ChaCha20 keystream per call, keyed from the OS."""

from __future__ import annotations

import os

import nacl.bindings
import numpy as np
import pytest

from pprm.crypto.csprng import csprng_bytes


def test_every_call_is_fresh() -> None:
    draws = [csprng_bytes(4096) for _ in range(8)]
    assert all(len(d) == 4096 for d in draws)
    assert len(set(draws)) == len(draws)


def test_the_stream_is_the_keystream_of_a_seed_from_the_os(monkeypatch: pytest.MonkeyPatch) -> None:
    seeds: list[bytes] = []
    real = os.urandom

    def recording(n: int) -> bytes:
        out = real(n)
        seeds.append(out)
        return out

    monkeypatch.setattr(os, "urandom", recording)
    out = csprng_bytes(1000)
    assert [len(s) for s in seeds] == [32]
    assert out == nacl.bindings.randombytes_buf_deterministic(1000, seeds[0])


def test_bytes_look_uniform() -> None:
    # 1 MiB: each byte value expected 4096 times; a chi-square far outside
    # its range (255 degrees of freedom, mean 255, sd 22.6) means a broken stream.
    counts = np.bincount(np.frombuffer(csprng_bytes(1 << 20), dtype=np.uint8), minlength=256)
    chi2 = float(((counts - 4096.0) ** 2 / 4096.0).sum())
    assert 120.0 < chi2 < 420.0
