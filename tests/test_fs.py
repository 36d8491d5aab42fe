"""Atomic writes: a failure at any step keeps the old file and leaves no debris."""

from __future__ import annotations

import fcntl
import json
import os
import stat
import threading
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pytest

from pprm import _fs


class Boom(Exception):
    """The simulated crash."""


def _listing(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


def _fail(*_args: object, **_kw: object) -> None:
    raise Boom


def test_write_bytes_and_mode(tmp_path: Path) -> None:
    p = tmp_path / "f"
    _fs.atomic_write_bytes(str(p), b"one", mode=0o600)
    assert p.read_bytes() == b"one"
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    _fs.atomic_write_bytes(str(p), b"two", mode=0o644)
    assert p.read_bytes() == b"two"
    assert stat.S_IMODE(p.stat().st_mode) == 0o644
    # State files are private by default: they name cases and records.
    _fs.atomic_write_json(str(p), {"case": "C-1"})
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    assert _listing(tmp_path) == ["f"]


def test_mode_ignores_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        _fs.atomic_write_bytes(str(tmp_path / "f"), b"x", mode=0o644)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == 0o644


def test_json_round_trip(tmp_path: Path) -> None:
    p = tmp_path / "j.json"
    _fs.atomic_write_json(str(p), {"b": [1, 2], "a": "x"})
    assert p.read_text() == json.dumps({"a": "x", "b": [1, 2]}, sort_keys=True, indent=1) + "\n"
    assert _fs.read_json(str(p)) == {"a": "x", "b": [1, 2]}


def test_npy_round_trip_and_memory_map(tmp_path: Path) -> None:
    p = tmp_path / "a.npy"
    arr = np.arange(24, dtype=np.uint64).reshape(2, 3, 4)
    _fs.atomic_save_npy(str(p), arr)
    mm = np.load(p, mmap_mode="r")
    assert mm.dtype == np.uint64 and np.array_equal(mm, arr)


@pytest.mark.parametrize("target", ["os.replace", "os.fsync"])
@pytest.mark.parametrize("existing", [True, False])
def test_failure_keeps_old_content_and_leaves_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      target: str, existing: bool) -> None:
    p = tmp_path / "f"
    if existing:
        _fs.atomic_write_bytes(str(p), b"old content", mode=0o600)
    before = _listing(tmp_path)
    monkeypatch.setattr(f"pprm._fs.{target}", _fail)
    with pytest.raises(Boom):
        _fs.atomic_write_bytes(str(p), b"new content that never lands")
    monkeypatch.undo()
    assert _listing(tmp_path) == before
    if existing:
        assert p.read_bytes() == b"old content"
        assert stat.S_IMODE(p.stat().st_mode) == 0o600
    else:
        assert not p.exists()


def test_failure_in_the_middle_of_writing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # np.save writes part of the array, then the process "crashes".
    p = tmp_path / "a.npy"
    _fs.atomic_save_npy(str(p), np.zeros(1000, np.uint64))
    old = p.read_bytes()
    real_save = np.save

    def partial_save(fh: BinaryIO, arr: np.ndarray, allow_pickle: bool = False) -> None:
        real_save(fh, arr[: len(arr) // 2], allow_pickle=allow_pickle)
        fh.flush()
        raise Boom

    monkeypatch.setattr("pprm._fs.np.save", partial_save)
    with pytest.raises(Boom):
        _fs.atomic_save_npy(str(p), np.ones(1000, np.uint64))
    monkeypatch.undo()
    assert p.read_bytes() == old
    assert _listing(tmp_path) == ["a.npy"]


def test_interrupt_is_cleaned_up_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "f"
    _fs.atomic_write_bytes(str(p), b"old")

    def interrupt(*_a: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("pprm._fs.os.replace", interrupt)
    with pytest.raises(KeyboardInterrupt):
        _fs.atomic_write_bytes(str(p), b"new")
    monkeypatch.undo()
    assert p.read_bytes() == b"old"
    assert _listing(tmp_path) == ["f"]


def test_unserialisable_json_leaves_old_file(tmp_path: Path) -> None:
    p = tmp_path / "j.json"
    _fs.atomic_write_json(str(p), {"a": 1})
    with pytest.raises(TypeError):
        _fs.atomic_write_json(str(p), {"a": object()})
    assert _fs.read_json(str(p)) == {"a": 1}
    assert _listing(tmp_path) == ["j.json"]


def test_readers_never_see_a_partial_file(tmp_path: Path) -> None:
    # A reader racing many rewrites only ever sees one complete version.
    p = tmp_path / "f"
    versions = [bytes([i]) * 200_000 for i in range(20)]
    _fs.atomic_write_bytes(str(p), versions[0])
    seen: set[bytes] = set()
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            seen.add(p.read_bytes())

    t = threading.Thread(target=reader)
    t.start()
    try:
        for v in versions[1:]:
            _fs.atomic_write_bytes(str(p), v)
    finally:
        stop.set()
        t.join()
    assert seen <= set(versions)


def test_lock_is_exclusive(tmp_path: Path) -> None:
    with _fs.locked(str(tmp_path)):
        fd = os.open(tmp_path / ".lock", os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    fd = os.open(tmp_path / ".lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free again once released
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
    assert stat.S_IMODE((tmp_path / ".lock").stat().st_mode) == 0o600


def test_lock_is_released_on_error(tmp_path: Path) -> None:
    with pytest.raises(Boom), _fs.locked(str(tmp_path)):
        raise Boom
    with _fs.locked(str(tmp_path)):
        pass
