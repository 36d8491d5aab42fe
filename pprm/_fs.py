"""Atomic file writes and an advisory lock for state directories.

Every write goes to a temporary file in the same directory, is flushed and
fsynced, and is then renamed over the target, so a reader (or a crash) sees
either the old file or the new one, never a mix. An error names the target,
never the temporary file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from typing import Any

import numpy as np

__all__ = ["atomic_write_bytes", "atomic_write_json", "atomic_save_npy", "read_json", "locked"]


def _fsync_dir(path: str) -> None:
    fd = os.open(os.path.dirname(os.path.abspath(path)) or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _naming(exc: OSError, path: str) -> OSError:
    """``exc`` naming ``path``, not the temporary file (a name nobody chose, gone once the write failed)."""
    if exc.errno is None:
        return exc
    return OSError(exc.errno, exc.strerror or os.strerror(exc.errno), path)


@contextlib.contextmanager
def _temp_beside(path: str, mode: int) -> Iterator[tuple[int, str]]:
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    except OSError as exc:
        raise _naming(exc, path) from None
    try:
        os.fchmod(fd, mode)
        yield fd, tmp
        os.replace(tmp, path)
        _fsync_dir(path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise _naming(exc, path) from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` atomically (temp file, fsync, rename).

    State files default to 0600: outboxes, key records, reference lists and
    logs name cases and records, which no other local user should read.
    """
    with _temp_beside(path, mode) as (fd, _tmp), os.fdopen(fd, "wb", closefd=True) as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def atomic_write_json(path: str, obj: Any, mode: int = 0o600) -> None:
    """Write ``obj`` as sorted, indented JSON atomically."""
    atomic_write_bytes(path, (json.dumps(obj, sort_keys=True, indent=1) + "\n").encode(), mode)


def atomic_save_npy(path: str, arr: np.ndarray) -> None:
    """Save an array as .npy atomically, so it can later be memory-mapped."""
    with _temp_beside(path, 0o644) as (fd, _tmp), os.fdopen(fd, "wb", closefd=True) as fh:
        np.save(fh, arr, allow_pickle=False)
        fh.flush()
        os.fsync(fh.fileno())


def read_json(path: str) -> Any:
    """Read a JSON file written by :func:`atomic_write_json`."""
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


@contextlib.contextmanager
def locked(directory: str) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``directory`` for a read-modify-write."""
    fd = os.open(os.path.join(directory, ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
